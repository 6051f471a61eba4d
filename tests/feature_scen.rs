//! `softvi scen` on every map in tests/data/maps: scenario files are written here from an
//! independent Dijkstra (the data folder holds maps only). At alpha = 0 the length of the
//! path the solve's greedy policy takes must equal the optimal length within 1e-3; V itself
//! within 1e-3, or 5e-6 of the length for paths over 200 long: V is f32, and each sqrt(2)
//! step rounds the same way at a given magnitude, so its error grows with the length
//! (orz900d, ~2000 long: ~9e-3).

mod common;

use std::process::Command;

use common::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use softvi::Grid;

/// Writes a version-1 `.scen` with `goals` goals and `per_goal` starts each, optimal lengths
/// from `octile_dijkstra`; returns its path and the longest optimal length.
fn write_scen(
    dir: &std::path::Path,
    name: &str,
    goals: usize,
    per_goal: usize,
    seed: u64,
) -> (std::path::PathBuf, f64) {
    let map_path = maps_dir().join(name);
    let text = std::fs::read_to_string(&map_path).unwrap();
    let grid = Grid::load_movingai(&map_path).unwrap();
    let free: Vec<usize> = (0..grid.cells()).filter(|&c| grid.free[c]).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = String::from("version 1\n");
    let mut longest = 0.0f64;
    for _ in 0..goals {
        let goal = free[rng.random_range(0..free.len())];
        let (_, dist) = octile_dijkstra(&text, goal);
        let reachable: Vec<usize> = free
            .iter()
            .copied()
            .filter(|&c| dist[c].is_finite())
            .collect();
        for _ in 0..per_goal {
            let start = reachable[rng.random_range(0..reachable.len())];
            longest = longest.max(dist[start]);
            out += &format!(
                "0\t{name}\t{}\t{}\t{}\t{}\t{}\t{}\t{:.8}\n",
                grid.width,
                grid.height,
                start % grid.width,
                start / grid.width,
                goal % grid.width,
                goal / grid.width,
                dist[start]
            );
        }
    }
    let path = dir.join(format!("{name}.scen"));
    std::fs::write(&path, out).unwrap();
    (path, longest)
}

/// Runs `softvi scen` and returns (max |gap|, max |V gap|, tasks) from its summary line.
fn run_scen(map: &str, scen: &std::path::Path, extra: &[&str]) -> (f64, f64, usize) {
    let map_path = maps_dir().join(map);
    let mut args = vec![
        "scen",
        "--map",
        map_path.to_str().unwrap(),
        "--scen",
        scen.to_str().unwrap(),
        "--quiet",
    ];
    args.extend(extra);
    let o = Command::new(env!("CARGO_BIN_EXE_softvi"))
        .args(&args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{map}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let summary = stdout.lines().last().unwrap();
    eprintln!("{map}: {summary}");
    let field = |key: &str| -> String {
        let at = summary.find(key).unwrap_or_else(|| panic!("{summary}")) + key.len();
        summary[at..].split_whitespace().next().unwrap().to_owned()
    };
    (
        field("max |gap|").parse().unwrap(),
        field("max |V gap|").parse().unwrap(),
        field("tasks").parse().unwrap(),
    )
}

fn gpu_or_cpu() -> &'static str {
    if gpu().is_some() { "gpu" } else { "cpu" }
}

#[test]
fn scen_gaps_vanish_at_alpha_zero_on_every_map() {
    let dir = maps_dir();
    let tmp = tempfile::tempdir().unwrap();
    let mut maps: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".map"))
        .collect();
    maps.sort();
    assert!(
        maps.iter().any(|m| m == "orz900d.map"),
        "orz900d.map must be covered"
    );
    for (i, map) in maps.iter().enumerate() {
        let (scen, longest) = write_scen(tmp.path(), map, 2, 3, i as u64);
        let (gap, value_gap, tasks) = run_scen(map, &scen, &["--backend", gpu_or_cpu()]);
        assert_eq!(tasks, 2, "{map}");
        assert!(gap <= 1e-3, "{map}: max path gap {gap}");
        let bound = 1e-3f64.max(5e-6 * longest);
        assert!(
            value_gap <= bound,
            "{map}: max V gap {value_gap} > {bound} (longest path {longest})"
        );
    }
}

#[test]
fn scen_soft_values_sit_below_the_optimal_cost() {
    let tmp = tempfile::tempdir().unwrap();
    let (scen, _) = write_scen(tmp.path(), "den312d.map", 3, 4, 9);
    // gap = -V(start) - optimal < 0 for alpha > 0, and it shrinks with alpha.
    let (gap_hard, _, _) = run_scen("den312d.map", &scen, &["--backend", "cpu"]);
    let (gap_cool, _, _) = run_scen(
        "den312d.map",
        &scen,
        &["--backend", "cpu", "--alpha", "0.05"],
    );
    let (gap_warm, _, _) = run_scen(
        "den312d.map",
        &scen,
        &["--backend", "cpu", "--alpha", "0.1"],
    );
    assert!(gap_hard <= 1e-3);
    assert!(
        gap_cool > gap_hard && gap_warm > gap_cool,
        "{gap_hard} {gap_cool} {gap_warm}"
    );
}

#[test]
fn scen_errors_name_the_line() {
    let dir = maps_dir();
    let tmp = tempfile::tempdir().unwrap();
    let map = dir.join("maze-32-32-2.map");
    let bad = tmp.path().join("bad.scen");
    std::fs::write(&bad, "version 1\n0\tmaze-32-32-2.map\t32\t32\t1\t1\t3\n").unwrap();
    let wrong = tmp.path().join("wrong.scen");
    std::fs::write(&wrong, "version 1\n0\tx.map\t64\t64\t1\t1\t3\t3\t2.8\n").unwrap();
    for (file, expected) in [(&bad, "line 2"), (&wrong, "64x64 disagrees")] {
        let o = Command::new(env!("CARGO_BIN_EXE_softvi"))
            .args([
                "scen",
                "--map",
                map.to_str().unwrap(),
                "--scen",
                file.to_str().unwrap(),
                "--backend",
                "cpu",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(expected), "{err}");
    }
}
