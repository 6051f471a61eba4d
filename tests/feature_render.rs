//! `softvi render` and `solve --png`: decode the PNG and check its size and the colours of
//! known cells (walls black, goals magenta, the lowest and highest values at the colormap's
//! ends), on every shared map.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use softvi::Grid;
use softvi::io::hash::file_hash;
use softvi::io::npy;
use softvi::render::{ARROW, GOAL, MAX_ARROW_SIDE, TRAJECTORY, WALL, viridis};

struct Png {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Png {
    fn read(path: &Path) -> Png {
        let bytes = std::fs::read(path).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        Png {
            width: info.width as usize,
            height: info.height as usize,
            rgb: buf,
        }
    }

    fn at(&self, x: usize, y: usize) -> [u8; 3] {
        let i = 3 * (y * self.width + x);
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    fn count(&self, c: [u8; 3]) -> usize {
        self.rgb.chunks_exact(3).filter(|p| *p == c).count()
    }
}

fn softvi(args: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_softvi"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Pixels per cell as render chooses them (maps up to 2048 cells on a side).
fn scale(grid: &Grid) -> usize {
    (1024 / grid.width.max(grid.height)).clamp(1, 16)
}

fn backend() -> &'static str {
    if gpu().is_some() { "gpu" } else { "cpu" }
}

/// Solves one goal on `map_args`, renders the value layer and checks the known colours.
fn check_value_picture(map_args: &[&str], grid: &Grid, goal: (usize, usize), dir: &Path) {
    let out = dir.join("solve");
    let png = dir.join("value.png");
    let goal_text = format!("{},{}", goal.0, goal.1);
    let mut args = vec![
        "solve",
        "--goal",
        &goal_text,
        "--alpha",
        "0.2",
        "--horizon",
        "40",
        "--backend",
        backend(),
    ];
    args.extend(map_args);
    args.extend([
        "--out",
        out.to_str().unwrap(),
        "--png",
        png.to_str().unwrap(),
    ]);
    softvi(&args);
    let picture = Png::read(&png);
    let s = scale(grid);
    assert_eq!(picture.width, (grid.width * s).max(160));
    assert_eq!(picture.height, grid.height * s + 8 + 16 + 4 + 14);
    let values = npy::read_float(&out.join("values.npy")).unwrap().data;
    let centre = |cell: usize| {
        picture.at(
            (cell % grid.width) * s + s / 2,
            (cell / grid.width) * s + s / 2,
        )
    };
    // empty-8-8 has no wall.
    if let Some(wall) = (0..grid.cells()).find(|&c| !grid.free[c]) {
        assert_eq!(centre(wall), WALL, "wall cell {wall}");
    }
    let goal_cell = goal.1 * grid.width + goal.0;
    assert_eq!(centre(goal_cell), GOAL);
    let free: Vec<usize> = (0..grid.cells())
        .filter(|&c| grid.free[c] && c != goal_cell && values[c].is_finite())
        .collect();
    let lowest = *free
        .iter()
        .min_by(|&&a, &&b| values[a].total_cmp(&values[b]))
        .unwrap();
    let highest = *free
        .iter()
        .max_by(|&&a, &&b| values[a].total_cmp(&values[b]))
        .unwrap();
    assert_eq!(centre(lowest), viridis(0.0), "lowest value cell {lowest}");
    assert_eq!(
        centre(highest),
        viridis(1.0),
        "highest value cell {highest}"
    );
}

#[test]
fn value_pictures_of_every_shared_map() {
    let dir = maps_dir();
    let tmp = tempfile::tempdir().unwrap();
    let mut maps: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "map"))
        .collect();
    maps.sort();
    for path in maps {
        let grid = Grid::load_movingai(&path).unwrap();
        let goal = (0..grid.cells())
            .find(|&c| grid.free[c])
            .map(|c| (c % grid.width, c / grid.width))
            .unwrap();
        eprintln!("render {}", path.display());
        check_value_picture(&["--map", path.to_str().unwrap()], &grid, goal, tmp.path());
    }
}

#[test]
fn policy_arrows_trajectories_and_entropy() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("solve");
    softvi(&[
        "solve",
        "--maze",
        "31x21",
        "--goal",
        "29,19",
        "--alpha",
        "0.3",
        "--gamma",
        "0.95",
        "--slip",
        "0.1",
        "--backend",
        backend(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let arrows = tmp.path().join("arrows.png");
    softvi(&[
        "render",
        "--from",
        out.to_str().unwrap(),
        "--layer",
        "policy",
        "--out",
        arrows.to_str().unwrap(),
    ]);
    let plain = tmp.path().join("plain.png");
    softvi(&[
        "render",
        "--from",
        out.to_str().unwrap(),
        "--out",
        plain.to_str().unwrap(),
    ]);
    // Arrows add white pixels over the value heatmap, trajectories orange ones.
    assert!(Png::read(&arrows).count(ARROW) > Png::read(&plain).count(ARROW) + 100);
    let paths = tmp.path().join("paths.png");
    softvi(&[
        "render",
        "--from",
        out.to_str().unwrap(),
        "--trajectories",
        "5",
        "--seed",
        "1",
        "--out",
        paths.to_str().unwrap(),
    ]);
    assert!(Png::read(&paths).count(TRAJECTORY) > 20);
    assert_eq!(Png::read(&plain).count(TRAJECTORY), 0);
    // Entropy: between 0 and log 8 nats; the picture has the same size as the value one.
    let entropy = tmp.path().join("entropy.png");
    softvi(&[
        "render",
        "--from",
        out.to_str().unwrap(),
        "--layer",
        "entropy",
        "--out",
        entropy.to_str().unwrap(),
    ]);
    let (e, v) = (Png::read(&entropy), Png::read(&plain));
    assert_eq!((e.width, e.height), (v.width, v.height));
}

/// Beyond MAX_ARROW_SIDE the policy layer is the entropy heatmap.
#[test]
fn large_policy_pictures_fall_back_to_entropy() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("solve");
    let side = format!("{0}x{0}", MAX_ARROW_SIDE + 3);
    softvi(&[
        "solve",
        "--maze",
        &side,
        "--goal",
        "1,1",
        "--horizon",
        "30",
        "--backend",
        backend(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let (policy, entropy) = (tmp.path().join("p.png"), tmp.path().join("e.png"));
    softvi(&[
        "render",
        "--from",
        out.to_str().unwrap(),
        "--layer",
        "policy",
        "--out",
        policy.to_str().unwrap(),
    ]);
    softvi(&[
        "render",
        "--from",
        out.to_str().unwrap(),
        "--layer",
        "entropy",
        "--out",
        entropy.to_str().unwrap(),
    ]);
    assert_eq!(Png::read(&policy).rgb, Png::read(&entropy).rgb);
}

#[test]
fn large_maps_are_downsampled() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = Grid::generate_maze(2101, 41, 0).unwrap();
    check_downsampled(&grid, tmp.path());
}

fn check_downsampled(grid: &Grid, dir: &Path) {
    let out = dir.join("solve");
    softvi(&[
        "solve",
        "--maze",
        "2101x41",
        "--goal",
        "1,1",
        "--horizon",
        "5",
        "--no-policy",
        "--backend",
        backend(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let png = dir.join("big.png");
    softvi(&[
        "render",
        "--from",
        out.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
    ]);
    let picture = Png::read(&png);
    // 2101 cells wide: 2 cells per pixel.
    assert_eq!(picture.width, grid.width.div_ceil(2));
    assert_eq!(picture.height, grid.height.div_ceil(2) + 8 + 16 + 4 + 14);
    assert_eq!(
        picture.at(0, 0),
        GOAL,
        "the block holding the goal shows it"
    );
}

#[test]
fn render_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("solve");
    softvi(&[
        "solve",
        "--maze",
        "21x11",
        "--goal",
        "1,1",
        "--backend",
        "cpu",
        "--no-policy",
        "--out",
        out.to_str().unwrap(),
    ]);
    for (args, expected) in [
        (vec!["--layer", "occupancy"], "occupancy.npy"),
        (vec!["--layer", "entropy"], "policy.npy"),
        (vec!["--task", "3"], "--task 3"),
    ] {
        let png = tmp.path().join("x.png");
        let mut full = vec![
            "render",
            "--from",
            out.to_str().unwrap(),
            "--out",
            png.to_str().unwrap(),
        ];
        full.extend(&args);
        let o = Command::new(env!("CARGO_BIN_EXE_softvi"))
            .args(&full)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(expected),
            "{args:?}: {err}"
        );
        assert!(!png.exists());
    }
}

/// A results folder whose fields or arrays render cannot draw fails at once, naming the file
/// and the field or cell, and writes no picture: a slip of 2 (it panicked), unknown actions,
/// goals off the map, policy entries of 1e30 (the arrows never finished), more trajectories
/// than a picture draws (they grew without bound).
#[test]
fn render_validates_what_it_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    softvi(&[
        "solve",
        "--maze",
        "21x11",
        "--goal",
        "1,1",
        "--slip",
        "0.1",
        "--backend",
        "cpu",
        "--out",
        good.to_str().unwrap(),
    ]);
    let summary = std::fs::read_to_string(good.join("summary.json")).unwrap();
    let policy = npy::read_float(&good.join("policy.npy")).unwrap();
    let broken = |name: &str, summary_text: &str, policy_data: &[f32]| {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(good.join("values.npy"), dir.join("values.npy")).unwrap();
        // The summary binds the arrays by hash: record the policy's, so that render's own
        // content checks are what refuses it.
        let bytes = npy::encode_f32(&policy.shape, policy_data);
        let mut summary: serde_json::Value = serde_json::from_str(summary_text).unwrap();
        summary["softvi"]["hashes"]["policy.npy"] = file_hash(&bytes).into();
        std::fs::write(dir.join("summary.json"), summary.to_string()).unwrap();
        std::fs::write(dir.join("policy.npy"), bytes).unwrap();
        dir
    };
    assert!(summary.contains("\"slip\": 0.1"));
    let mut huge = policy.data.clone();
    // The first free cell's row.
    let free_row = policy
        .data
        .chunks_exact(8)
        .position(|r| !r[0].is_nan())
        .unwrap();
    huge[free_row * 8] = 1e30;
    let cases = [
        (
            broken(
                "slip",
                &summary.replace("\"slip\": 0.1", "\"slip\": 2.0"),
                &policy.data,
            ),
            vec!["--trajectories", "3"],
            "world.slip is 2.0",
        ),
        (
            broken(
                "actions",
                &summary.replace("\"NE\"", "\"UP\""),
                &policy.data,
            ),
            vec![],
            "world.actions",
        ),
        (
            broken(
                "goals",
                &summary.replacen(
                    "\"goals\": [\n    [\n      [\n        1,",
                    "\"goals\": [\n    [\n      [\n        99,",
                    1,
                ),
                &policy.data,
            ),
            vec![],
            "goals[0][0]",
        ),
        (
            broken("huge", &summary, &huge),
            vec!["--layer", "policy"],
            "policy.npy) at X=",
        ),
        (
            good.clone(),
            vec!["--trajectories", "100000000"],
            "--trajectories 100000000",
        ),
    ];
    for (dir, args, expected) in cases {
        let png = tmp.path().join("x.png");
        let mut full = vec![
            "render",
            "--from",
            dir.to_str().unwrap(),
            "--out",
            png.to_str().unwrap(),
        ];
        full.extend(&args);
        let o = Command::new(env!("CARGO_BIN_EXE_softvi"))
            .args(&full)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(expected), "{expected}: {err}");
        assert!(!png.exists());
    }
}

/// `--step T` of a solve with `--horizon T --all-steps`: the values and the occupancy hold
/// `T + 1` steps and are drawn at step T; the policy holds `T` (`pi_0..pi_{T-1}`), so a layer
/// or trajectories that need it at step T are refused, saying there is no policy at the last
/// step, and nothing is written.
#[test]
fn render_draws_the_last_step_of_values_and_occupancy() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("solve");
    softvi(&[
        "solve",
        "--maze",
        "9x9",
        "--goal",
        "1,1",
        "--horizon",
        "3",
        "--all-steps",
        "--occupancy",
        "--backend",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    let cases: [(&[&str], Option<&str>); 7] = [
        (&["--step", "3"], None),
        (&["--step", "3", "--layer", "occupancy"], None),
        (&["--step", "2", "--layer", "policy"], None),
        (
            &["--step", "3", "--layer", "policy"],
            Some("no policy at the last step"),
        ),
        (
            &["--step", "3", "--layer", "entropy"],
            Some("no policy at the last step"),
        ),
        (
            &["--step", "3", "--trajectories", "2"],
            Some("no policy at the last step"),
        ),
        (&["--step", "4"], Some("values.npy holds 4 time steps")),
    ];
    for (i, (args, expected)) in cases.iter().enumerate() {
        let png = tmp.path().join(format!("step{i}.png"));
        let mut full = vec![
            "render",
            "--from",
            out.to_str().unwrap(),
            "--out",
            png.to_str().unwrap(),
        ];
        full.extend(*args);
        let o = Command::new(env!("CARGO_BIN_EXE_softvi"))
            .args(&full)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        match expected {
            None => {
                assert!(o.status.success(), "{args:?}: {err}");
                assert!(png.exists(), "{args:?}");
            }
            Some(message) => {
                assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
                assert!(err.contains(message), "{args:?}: {err}");
                assert!(!png.exists(), "{args:?}");
            }
        }
    }
}

/// Runs `softvi render` with `args`, expecting exit 1 and `expected` in stderr, and no picture.
fn render_refused(args: &[&str], png: &Path, expected: &str) {
    let o = Command::new(env!("CARGO_BIN_EXE_softvi"))
        .args(["render", "--out", png.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert!(err.contains(expected), "{expected}: {err}");
    assert!(!png.exists());
}

/// render reads a folder as its summary.json records it: an array rewritten after the summary
/// (another run writing it) is refused by its hash; a shard of `solve --tasks 1/2` draws the
/// tasks by the numbers the solve printed (1 and 2 of 0..3, not 0 and 1); a folder of another
/// command is named as such. Before, the first drew the rewritten values, the second drew task
/// 1 as task 2 (or refused 2), the third said "missing world.map" things.
#[test]
fn render_binds_files_to_the_summary_and_numbers_shard_tasks_globally() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let solve = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "solve",
            "--quiet",
            "--maze",
            "21x11",
            "--goal",
            "1,1",
            "--goal",
            "19,9",
            "--goal",
            "9,5",
            "--backend",
            "cpu",
            "--out",
        ];
        args.push(out.to_str().unwrap());
        args.extend(extra);
        softvi(&args);
    };
    let (whole, shard) = (t.join("whole"), t.join("shard"));
    solve(&whole, &[]);
    solve(&shard, &["--tasks", "1/2"]);
    let png = t.join("x.png");
    let from = |dir: &Path| dir.to_str().unwrap().to_owned();
    // Shard 1 of 2 of 3 tasks holds tasks 1..3: task 2 draws what the whole solve's task 2 does.
    for task in ["1", "2"] {
        let (a, b) = (
            t.join(format!("whole{task}.png")),
            t.join(format!("shard{task}.png")),
        );
        softvi(&[
            "render",
            "--from",
            &from(&whole),
            "--task",
            task,
            "--out",
            a.to_str().unwrap(),
        ]);
        softvi(&[
            "render",
            "--from",
            &from(&shard),
            "--task",
            task,
            "--out",
            b.to_str().unwrap(),
        ]);
        assert_eq!(
            std::fs::read(&a).unwrap(),
            std::fs::read(&b).unwrap(),
            "task {task}"
        );
    }
    render_refused(
        &["--from", &from(&shard), "--task", "0"],
        &png,
        "holds tasks 1..3",
    );
    render_refused(
        &["--from", &from(&shard), "--task", "3"],
        &png,
        "holds tasks 1..3",
    );
    // One free cell's value rewritten after the summary was written.
    let rewritten = t.join("rewritten");
    std::fs::create_dir(&rewritten).unwrap();
    for name in ["summary.json", "policy.npy", "values.npy"] {
        std::fs::copy(whole.join(name), rewritten.join(name)).unwrap();
    }
    let mut values = npy::read_float(&whole.join("values.npy")).unwrap();
    let free = values.data.iter().position(|v| v.is_finite()).unwrap();
    values.data[free] += 1.0;
    std::fs::write(
        rewritten.join("values.npy"),
        npy::encode_f32(&values.shape, &values.data),
    )
    .unwrap();
    render_refused(
        &["--from", &from(&rewritten)],
        &png,
        "does not match its summary.json",
    );
    let mut summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(whole.join("summary.json")).unwrap())
            .unwrap();
    summary["softvi"]["command"] = "qlearn".into();
    let other = t.join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("summary.json"), summary.to_string()).unwrap();
    render_refused(
        &["--from", &from(&other)],
        &png,
        "is the folder of `softvi qlearn`",
    );
}

/// A render whose write fails part-way (here a file size limit of 1 kB standing in for a full
/// disk) exits 1 and leaves neither the picture nor its hidden `.NAME.png.tmp-PID` file (it
/// was left behind).
#[test]
#[cfg(target_os = "linux")]
fn a_failed_render_leaves_no_temporary_file() {
    let tmp = tempfile::tempdir().unwrap();
    let solve = tmp.path().join("solve");
    softvi(&[
        "solve",
        "--quiet",
        "--maze",
        "21x11",
        "--goal",
        "1,1",
        "--backend",
        "cpu",
        "--out",
        solve.to_str().unwrap(),
    ]);
    let pictures = tmp.path().join("pictures");
    std::fs::create_dir(&pictures).unwrap();
    let png = pictures.join("v.png");
    // SIGXFSZ ignored: a write past the limit fails with EFBIG instead of killing softvi.
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f 2; exec '{}' render --from '{}' --out '{}'",
            env!("CARGO_BIN_EXE_softvi"),
            solve.display(),
            png.display()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot write"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&pictures).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
