//! `softvi solve --tasks I/N` and `softvi merge`: the shards of a batch merged give the whole
//! solve's folder bit for bit (the truth is the whole solve itself, run in one process);
//! merge refuses shards that do not fit together, naming why, and writes nothing.

mod common;

use std::path::{Path, PathBuf};

use common::cli::*;
use common::random_mdp;
use serde_json::Value;
use softvi::io::npy;
use softvi::world::shard::task_range;

/// 13 goals (not a multiple of 4) of a 23x17 maze, at different distances from most cells,
/// so that an infinite-horizon solve converges them at different sweeps.
const GOALS: &[&str] = &[
    "1,1", "21,15", "11,7", "3,1", "5,9", "21,1", "1,15", "13,13", "17,3", "9,15", "7,5", "19,9",
    "15,11",
];

fn grid_world() -> Vec<String> {
    let mut args: Vec<String> = ["--maze", "23x17", "--maze-seed", "4", "--slip", "0.1"]
        .map(String::from)
        .to_vec();
    for g in GOALS {
        args.extend(["--goal".into(), (*g).into()]);
    }
    args
}

/// Runs `softvi solve` with `args` into `out`; panics on failure.
fn solve(args: &[String], out: &Path) {
    let mut all: Vec<&str> = vec!["solve", "--quiet", "--out", out.to_str().unwrap()];
    all.extend(args.iter().map(String::as_str));
    let o = softvi(&all);
    assert!(o.status.success(), "solve {args:?}: {}", stderr(&o));
}

/// Runs `softvi merge --out out shards...`.
fn merge(out: &Path, shards: &[PathBuf]) -> std::process::Output {
    let mut all = vec!["merge", "--out", out.to_str().unwrap()];
    all.extend(shards.iter().map(|s| s.to_str().unwrap()));
    softvi(&all)
}

/// The summary without what a merge may set otherwise: timing and the list of shards.
fn comparable(mut s: Value) -> Value {
    let object = s.as_object_mut().unwrap();
    for key in ["seconds", "solve_seconds", "merged", "shard"] {
        object.remove(key);
    }
    s
}

/// Solves `world` whole and in `shards` shards (given to merge out of order), merges, and
/// checks that the merged folder equals the whole solve's: every array file byte for byte,
/// summary.json but its timing. Returns the whole solve's summary.
fn shards_merge_to_whole(world: &[String], shards: usize, tmp: &Path) -> Value {
    let whole = tmp.join("whole");
    solve(world, &whole);
    let dirs: Vec<PathBuf> = (0..shards).map(|i| tmp.join(format!("s{i}"))).collect();
    for (i, dir) in dirs.iter().enumerate() {
        let mut args = world.to_vec();
        args.extend(["--tasks".into(), format!("{i}/{shards}")]);
        solve(&args, dir);
        let s = summary(dir);
        let range = task_range(
            summary(&whole)["tasks"].as_u64().unwrap() as usize,
            i,
            shards,
        );
        assert_eq!(
            s["shard"]["tasks"],
            serde_json::json!([range.start, range.end])
        );
        assert_eq!(s["tasks"], range.len());
        assert_eq!(s["status"].as_array().unwrap().len(), range.len());
    }
    let merged = tmp.join("merged");
    let mut given = dirs.clone();
    given.reverse();
    let o = merge(&merged, &given);
    assert!(o.status.success(), "merge: {}", stderr(&o));
    let written = summary(&whole)["softvi"]["files"].clone();
    assert_eq!(summary(&merged)["softvi"]["files"], written);
    for name in written.as_array().unwrap() {
        let name = name.as_str().unwrap();
        if name == "summary.json" {
            continue;
        }
        let (a, b) = (
            std::fs::read(whole.join(name)).unwrap(),
            std::fs::read(merged.join(name)).unwrap(),
        );
        if a != b {
            let (x, y) = (npy::decode_f32(&a).unwrap(), npy::decode_f32(&b).unwrap());
            let first = (x.data.iter().zip(&y.data)).position(|(u, v)| u.to_bits() != v.to_bits());
            panic!(
                "{name}: merged differs from the whole solve (shapes {:?} / {:?}, first differing \
                 entry {first:?}); iterations whole {} merged {}",
                x.shape,
                y.shape,
                summary(&whole)["iterations"],
                summary(&merged)["iterations"]
            );
        }
    }
    let (w, m) = (summary(&whole), summary(&merged));
    for key in ["status", "iterations", "residual", "unreachable", "tasks"] {
        assert_eq!(m[key], w[key], "summary.json's {key}");
    }
    assert_eq!(comparable(m.clone()), comparable(w.clone()));
    assert_eq!(m["merged"]["shards"].as_array().unwrap().len(), shards);
    w
}

/// A per-task reward `[B,H,W]` for the 13 goals of the 23x17 maze (so each shard must take
/// its own tasks' rewards), in [-0.5, 0].
fn write_rewards(dir: &Path) -> String {
    let data: Vec<f32> = (0..13 * 17 * 23)
        .map(|i| -((i * 37 % 101) as f32) / 200.0)
        .collect();
    write(dir, "reward.npy", &npy::encode_f32(&[13, 17, 23], &data))
}

#[test]
fn grid_shards_merge_to_the_whole_solve_finite_horizon() {
    let tmp = tempfile::tempdir().unwrap();
    let mut world = grid_world();
    world.extend(["--horizon", "40", "--alpha", "0.3", "--q"].map(String::from));
    world.extend(["--reward".into(), write_rewards(tmp.path())]);
    shards_merge_to_whole(&world, 4, tmp.path());
}

#[test]
fn grid_shards_merge_to_the_whole_solve_on_the_gpu() {
    if !gpu_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut world = grid_world();
    world.extend(
        [
            "--horizon",
            "40",
            "--alpha",
            "0.3",
            "--q",
            "--backend",
            "gpu",
        ]
        .map(String::from),
    );
    shards_merge_to_whole(&world, 4, tmp.path());
}

/// Every step and the occupancy (the grid as an MDP over its free cells), finite horizon.
#[test]
fn grid_mdp_shards_merge_to_the_whole_solve() {
    let tmp = tempfile::tempdir().unwrap();
    let mut world = grid_world();
    world.extend(
        [
            "--horizon",
            "25",
            "--alpha",
            "0.5",
            "--all-steps",
            "--occupancy",
            "--start",
            "11,9",
        ]
        .map(String::from),
    );
    let w = shards_merge_to_whole(&world, 3, tmp.path());
    assert!(w["occupancy"].is_object());
}

/// Converged tasks must freeze at their own check for this to hold: the goals converge at
/// different sweeps, so a task's bits must not depend on which tasks share its batch.
#[test]
fn grid_shards_merge_to_the_whole_solve_infinite_horizon() {
    let mut backends = vec!["auto"];
    if gpu_available() {
        backends.push("gpu");
    }
    for backend in backends {
        let tmp = tempfile::tempdir().unwrap();
        let mut world = grid_world();
        world.extend(
            [
                "--gamma",
                "0.95",
                "--tol",
                "1e-6",
                "--alpha",
                "0.3",
                "--backend",
                backend,
            ]
            .map(String::from),
        );
        let w = shards_merge_to_whole(&world, 4, tmp.path());
        let mut sweeps: Vec<u64> = (w["iterations"].as_array().unwrap().iter())
            .map(|i| i.as_u64().unwrap())
            .collect();
        sweeps.dedup();
        assert!(
            sweeps.len() > 1,
            "{backend}: the tasks converge together: {sweeps:?}"
        );
    }
}

/// An `.npz` MDP of `tasks` tasks with seeded random transitions, rewards and terminals.
fn write_mdp(dir: &Path, name: &str, tasks: usize, seed: u64) -> String {
    write_mdp_edited(dir, name, tasks, seed, |_| {})
}

/// [`write_mdp`] with `edit` applied to the MDP before it is written.
fn write_mdp_edited(
    dir: &Path,
    name: &str,
    tasks: usize,
    seed: u64,
    edit: impl FnOnce(&mut softvi::TabularMdp),
) -> String {
    let mut mdp = random_mdp(37, 3, tasks, true, seed);
    edit(&mut mdp);
    let (s, a, b) = (mdp.states, mdp.actions, mdp.tasks);
    let npz = npy::encode_npz(&[
        (
            "indptr",
            npy::encode(
                "<i8",
                &[s * a + 1],
                &mdp.csr()
                    .indptr
                    .iter()
                    .map(|&x| x as f64)
                    .collect::<Vec<_>>(),
            ),
        ),
        (
            "indices",
            npy::encode(
                "<i8",
                &[mdp.nonzeros()],
                &mdp.csr()
                    .indices
                    .iter()
                    .map(|&x| x as f64)
                    .collect::<Vec<_>>(),
            ),
        ),
        (
            "data",
            npy::encode("<f8", &[mdp.nonzeros()], &mdp.csr().probs),
        ),
        ("R", npy::encode("<f8", &[b, s, a], &mdp.reward)),
        (
            "terminal",
            npy::encode(
                "|b1",
                &[b, s],
                &mdp.terminal
                    .iter()
                    .map(|&t| t as u8 as f64)
                    .collect::<Vec<_>>(),
            ),
        ),
        (
            "terminal_value",
            npy::encode("<f8", &[b, s], &mdp.terminal_value),
        ),
    ])
    .unwrap();
    write(dir, name, &npz)
}

#[test]
fn mdp_shards_merge_to_the_whole_solve() {
    let tmp = tempfile::tempdir().unwrap();
    let mdp = write_mdp(tmp.path(), "mdp.npz", 11, 7);
    let world: Vec<String> = [
        "--mdp",
        &mdp,
        "--horizon",
        "30",
        "--alpha",
        "0.4",
        "--gamma",
        "0.97",
        "--q",
        "--occupancy",
    ]
    .map(String::from)
    .to_vec();
    shards_merge_to_whole(&world, 4, tmp.path());
    // Every shard alone is one task.
    let ones = tmp.path().join("ones");
    std::fs::create_dir(&ones).unwrap();
    shards_merge_to_whole(&world, 11, &ones);
}

/// As the grid's infinite horizon: converged tasks must freeze at their own check.
#[test]
fn mdp_shards_merge_to_the_whole_solve_infinite_horizon() {
    let tmp = tempfile::tempdir().unwrap();
    let mdp = write_mdp(tmp.path(), "mdp.npz", 11, 8);
    let world: Vec<String> = [
        "--mdp", &mdp, "--alpha", "0.4", "--gamma", "0.9", "--tol", "1e-6",
    ]
    .map(String::from)
    .to_vec();
    shards_merge_to_whole(&world, 4, tmp.path());
}

/// Modified policy iteration: each task freezes at its own improvement, so Slurm-style shards
/// merge to the whole solve's bits; the shards' per-task evaluation sweeps are joined.
#[test]
fn mdp_mpi_shards_merge_to_the_whole_solve() {
    let tmp = tempfile::tempdir().unwrap();
    let mdp = write_mdp(tmp.path(), "mdp.npz", 9, 12);
    for backend in ["native", "cpu"] {
        let dir = tmp.path().join(backend);
        std::fs::create_dir(&dir).unwrap();
        let world: Vec<String> = [
            "--mdp",
            &mdp,
            "--alpha",
            "0",
            "--gamma",
            "0.95",
            "--tol",
            "1e-5",
            "--method",
            "mpi",
            "--evaluations",
            "5",
            "--backend",
            backend,
        ]
        .map(String::from)
        .to_vec();
        let whole = shards_merge_to_whole(&world, 4, &dir);
        assert_eq!(whole["method"], "mpi");
        let iterations = whole["iterations"].as_array().unwrap();
        assert!(
            iterations.iter().any(|i| *i != iterations[0]),
            "{backend}: the tasks should stop at different improvements: {iterations:?}"
        );
        let sweeps: Vec<u64> = (whole["iterations"].as_array().unwrap().iter())
            .map(|i| 5 * (i.as_u64().unwrap() - 1))
            .collect();
        assert_eq!(whole["evaluation_sweeps"], serde_json::json!(sweeps));
        let merged = summary(&dir.join("merged"));
        assert_eq!(merged["evaluation_sweeps"], whole["evaluation_sweeps"]);
    }
}

/// Each file of `dir` with its bytes, to show a refused merge touched nothing.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn merge_refuses_shards_that_do_not_fit_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let mut world = grid_world();
    world.extend(["--horizon", "20", "--alpha", "0.3"].map(String::from));
    let shard = |i: usize, n: usize, extra: &[&str], name: &str| {
        let mut args = world.clone();
        args.extend(["--tasks".into(), format!("{i}/{n}")]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let dir = t.join(name);
        solve(&args, &dir);
        dir
    };
    let s: Vec<PathBuf> = (0..4).map(|i| shard(i, 4, &[], &format!("s{i}"))).collect();
    // An existing --out (an earlier whole solve): it must stay as it is.
    let out = t.join("out");
    solve(&world, &out);
    let before = snapshot(&out);
    let fresh = t.join("fresh");
    let refused = |shards: &[PathBuf], wants: &[&str]| {
        for target in [&out, &fresh] {
            let o = merge(target, shards);
            let err = stderr(&o);
            assert!(!o.status.success(), "merged {shards:?}");
            for want in wants {
                assert!(err.contains(want), "wanted {want:?} in: {err}");
            }
        }
        assert_eq!(snapshot(&out), before, "a refused merge changed --out");
        assert!(!fresh.exists(), "a refused merge created --out");
    };
    let show = |p: &PathBuf| p.display().to_string();
    // Missing shard 2 (tasks 6..9 of 13), and the last two missing.
    refused(
        &[s[0].clone(), s[1].clone(), s[3].clone()],
        &["tasks 6..9 missing"],
    );
    refused(&[s[0].clone(), s[1].clone()], &["tasks 6..13 missing"]);
    // Shard 1 twice; shard 1 of 2 (tasks 6..13) over shards 2 and 3 of 4.
    refused(
        &[
            s[0].clone(),
            s[1].clone(),
            s[1].clone(),
            s[2].clone(),
            s[3].clone(),
        ],
        &[&format!(
            "tasks 3..6 in both {} and {}",
            show(&s[1]),
            show(&s[1])
        )],
    );
    let half = shard(1, 2, &[], "half");
    refused(
        &[
            s[0].clone(),
            s[1].clone(),
            s[2].clone(),
            s[3].clone(),
            half.clone(),
        ],
        &[&format!(
            "tasks 6..9 in both {} and {}",
            show(&s[2]),
            show(&half)
        )],
    );
    // Another world: shard 2 of a maze of another seed.
    let mut other = world.clone();
    other[3] = "9".into();
    let mut args = other.clone();
    args.extend(["--tasks".into(), "2/4".into()]);
    let foreign = t.join("foreign");
    solve(&args, &foreign);
    refused(
        &[s[0].clone(), s[1].clone(), foreign.clone(), s[3].clone()],
        &["different task batches", &show(&foreign)],
    );
    // Other settings: gamma.
    let hot = shard(2, 4, &["--gamma", "0.9"], "hot");
    refused(
        &[s[0].clone(), s[1].clone(), hot.clone(), s[3].clone()],
        &["gamma is 0.99 in the first, 0.9 in the second", &show(&hot)],
    );
    // Other outputs: --q in one shard only.
    let with_q = shard(2, 4, &["--q"], "with_q");
    refused(
        &[s[0].clone(), s[1].clone(), with_q.clone(), s[3].clone()],
        &["q.npy", &show(&with_q)],
    );
    // Not a solve folder: a folder of other files, a whole solve, a shard missing an array.
    let notes = t.join("notes");
    std::fs::create_dir(&notes).unwrap();
    std::fs::write(notes.join("readme.txt"), "mine").unwrap();
    refused(
        &[s[0].clone(), notes.clone()],
        &[&format!("{} is not a softvi result folder", show(&notes))],
    );
    let plain = t.join("plain");
    solve(&world, &plain);
    refused(
        &[s[0].clone(), plain.clone()],
        &[&format!(
            "{} is a solve of the whole batch, not a shard",
            show(&plain)
        )],
    );
    let broken = shard(3, 4, &[], "broken");
    std::fs::remove_file(broken.join("policy.npy")).unwrap();
    refused(
        &[s[0].clone(), s[1].clone(), s[2].clone(), broken.clone()],
        &["policy.npy", &show(&broken)],
    );
    // The shards that fit merge into the existing --out.
    let o = merge(&out, &s);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(out.join("values.npy")).unwrap(),
        before.iter().find(|f| f.0 == "values.npy").unwrap().1
    );
}

/// Solves `world` whole and as `shards` shards, all of which exit 3 (diverged) or 0, and
/// merges them: the merge exits 3, writes summary.json only, equal to the whole solve's.
fn diverged_shards_merge_to_whole(world: &[String], shards: usize, tmp: &Path) {
    let run = |extra: &[String], out: &Path| {
        let mut all: Vec<&str> = vec!["solve", "--quiet", "--out", out.to_str().unwrap()];
        all.extend(world.iter().chain(extra).map(String::as_str));
        softvi(&all)
    };
    let whole = tmp.join("whole");
    assert_eq!(run(&[], &whole).status.code(), Some(3));
    let dirs: Vec<PathBuf> = (0..shards).map(|i| tmp.join(format!("s{i}"))).collect();
    for (i, d) in dirs.iter().enumerate() {
        let o = run(&["--tasks".into(), format!("{i}/{shards}")], d);
        assert!(
            [Some(0), Some(3)].contains(&o.status.code()),
            "{}",
            stderr(&o)
        );
    }
    let merged = tmp.join("merged");
    let o = merge(&merged, &dirs);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("diverged"));
    assert!(!merged.join("values.npy").exists());
    assert_eq!(comparable(summary(&merged)), comparable(summary(&whole)));
}

#[test]
fn merge_of_diverged_shards_writes_the_summary_only_and_exits_as_the_solve() {
    let tmp = tempfile::tempdir().unwrap();
    let maze = [
        "--maze", "15x15", "--goal", "1,1", "--goal", "13,13", "--goal", "7,7",
    ];
    let world = |extra: &[&str]| -> Vec<String> {
        maze.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    // gamma 1, alpha 10: the entropy bonus outweighs the step costs, no task has a finite
    // value.
    let all = world(&["--gamma", "1", "--alpha", "10", "--backend", "cpu"]);
    diverged_shards_merge_to_whole(&all, 2, &tmp.path().join("all"));
    // Only task 2, in the second shard, diverges: its reward outweighs every step cost. The
    // first shard converged and wrote its arrays; the merge writes what the whole solve does.
    let mut reward = vec![0.0f32; 3 * 15 * 15];
    reward[2 * 15 * 15..].fill(3.0);
    let reward = write(
        tmp.path(),
        "reward.npy",
        &npy::encode_f32(&[3, 15, 15], &reward),
    );
    let mut one = world(&["--gamma", "1", "--alpha", "0.2", "--occupancy", "--reward"]);
    one.push(reward);
    diverged_shards_merge_to_whole(&one, 2, &tmp.path().join("one"));
    // A finite horizon with every step: task 2's values run past 1e30.
    let mut huge = vec![-1.0f32; 3 * 15 * 15];
    huge[2 * 15 * 15..].fill(1e29);
    let huge = write(
        tmp.path(),
        "huge.npy",
        &npy::encode_f32(&[3, 15, 15], &huge),
    );
    let mut steps = world(&["--horizon", "20", "--all-steps", "--q", "--reward"]);
    steps.push(huge);
    diverged_shards_merge_to_whole(&steps, 2, &tmp.path().join("steps"));
    // An --mdp batch whose last task's values run past 1e30 (reward 1e29, gamma 0.99).
    let npz = write_mdp_edited(tmp.path(), "diverging.npz", 5, 3, |mdp| {
        let per_task = mdp.states * mdp.actions;
        mdp.reward[4 * per_task..].fill(1e29);
    });
    let mdp: Vec<String> = ["--mdp", &npz, "--gamma", "0.99", "--occupancy"]
        .map(String::from)
        .to_vec();
    diverged_shards_merge_to_whole(&mdp, 3, &tmp.path().join("mdp"));
}

#[test]
fn bad_tasks_values_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    for (value, wants) in [
        ("4/4", "--tasks 4/4: shard index must be below 4"),
        ("1/0", "--tasks 1/0: the shard count must be at least 1"),
        ("x/2", "--tasks x/2: \"x\" is not a shard index"),
        ("-1/3", "--tasks -1/3: \"-1\" is not a shard index"),
        ("3", "--tasks 3: not of the form I/N"),
        ("1/14", "--tasks 1/14: 14 shards of a 13-task batch"),
    ] {
        let mut args: Vec<String> = ["solve", "--out", out.to_str().unwrap(), "--tasks", value]
            .map(String::from)
            .to_vec();
        args.extend(grid_world());
        let o = softvi(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(!o.status.success(), "--tasks {value} was accepted");
        assert!(
            stderr(&o).contains(wants),
            "--tasks {value}: {}",
            stderr(&o)
        );
        assert!(!out.exists(), "--tasks {value} wrote {}", out.display());
    }
    // --png draws task 0 of the whole batch: refused with --tasks.
    let o = softvi(&[
        "solve",
        "--maze",
        "9x9",
        "--goal",
        "1,1",
        "--tasks",
        "0/1",
        "--png",
        "v.png",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("--png"),
        "{}",
        stderr(&o)
    );
}

/// Copies the files of folder `from` into a new folder `to`.
fn copy_folder(from: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    to.to_path_buf()
}

/// Edits `dir/summary.json` with `edit`.
fn edit_summary(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let mut s = summary(dir);
    edit(&mut s);
    std::fs::write(dir.join("summary.json"), s.to_string()).unwrap();
}

/// Every file of a shard is bound to its summary.json by the hash the summary records, and
/// merge reads a shard under its lock: an array swapped in from another shard of the same
/// shape, or from a solve with another alpha (what a run rewriting the shard while merge read
/// it produced: summary alpha 0.5, policy of alpha 5), a summary without hashes, a shard
/// another run holds locked, a status softvi never writes and a shard index past the count
/// are all refused, naming the shard, and nothing is written. (Each merged with exit 0.)
#[test]
fn merge_checks_each_file_against_its_summary_and_honours_the_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let mut world = grid_world();
    world.extend(["--horizon", "20"].map(String::from));
    let shard = |i: usize, extra: &[&str], name: &str| {
        let mut args = world.clone();
        if extra.is_empty() {
            args.extend(["--alpha".into(), "0.5".into()]);
        }
        args.extend(["--tasks".into(), format!("{i}/4")]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let dir = t.join(name);
        solve(&args, &dir);
        dir
    };
    let s: Vec<PathBuf> = (0..4).map(|i| shard(i, &[], &format!("s{i}"))).collect();
    let hot = shard(0, &["--alpha", "5"], "hot");
    let fresh = t.join("fresh");
    let refused = |first: &Path, wants: &[&str]| {
        let shards = [
            first.to_path_buf(),
            s[1].clone(),
            s[2].clone(),
            s[3].clone(),
        ];
        let o = merge(&fresh, &shards);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "merged {first:?}: {err}");
        for want in wants {
            assert!(err.contains(want), "wanted {want:?} in: {err}");
        }
        assert!(!fresh.exists(), "a refused merge created --out");
    };
    let show = |p: &Path| p.display().to_string();
    // Shards 0 and 1 both hold 3 tasks: the same shape.
    let swapped = copy_folder(&s[0], &t.join("swapped"));
    std::fs::copy(s[1].join("values.npy"), swapped.join("values.npy")).unwrap();
    refused(
        &swapped,
        &[
            &show(&swapped.join("values.npy")),
            "does not match its summary.json",
        ],
    );
    let mixed = copy_folder(&s[0], &t.join("mixed"));
    std::fs::copy(hot.join("policy.npy"), mixed.join("policy.npy")).unwrap();
    refused(&mixed, &["policy.npy", "does not match its summary.json"]);
    let unbound = copy_folder(&s[0], &t.join("unbound"));
    edit_summary(&unbound, |v| {
        v["softvi"].as_object_mut().unwrap().remove("hashes");
    });
    refused(&unbound, &[&show(&unbound), "records no file hashes"]);
    let bogus = copy_folder(&s[0], &t.join("bogus"));
    edit_summary(&bogus, |v| v["status"][1] = "bogus".into());
    refused(&bogus, &[&show(&bogus), "status[1] is \"bogus\""]);
    let past = copy_folder(&s[0], &t.join("past"));
    edit_summary(&past, |v| {
        v["shard"]["index"] = 7.into();
        v["shard"]["count"] = 2.into();
    });
    refused(&past, &["shard.index 7 is not below its shard.count 2"]);
    // Another run holds shard 0's lock (as `solve --out s0` does while it writes).
    let lock = std::fs::File::create(t.join(".s0.softvi-lock")).unwrap();
    lock.lock().unwrap();
    refused(
        &s[0],
        &[&show(&s[0]), "being written by another softvi run"],
    );
    drop(lock);
    let o = merge(&fresh, &s);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Shards whose world file is the same map named differently — a copy, a symbolic link, a
/// path relative to another working directory (Slurm jobs run elsewhere) — merge: the
/// fingerprint compares the contents, not the spelling (before: "world.map.path is ... in the
/// first"). A map of other contents is still refused.
#[test]
fn merge_compares_the_world_by_content_not_by_path() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let map = write(t, "a.map", common::cli::SMALL_MAP.as_bytes());
    std::fs::copy(&map, t.join("copy.map")).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(t.join("a.map"), t.join("link.map")).unwrap();
    #[cfg(not(unix))]
    std::fs::copy(&map, t.join("link.map")).unwrap();
    let world = |map: &str| -> Vec<String> {
        [
            "--map",
            map,
            "--goal",
            "4,3",
            "--goal",
            "0,0",
            "--goal",
            "2,2",
            "--horizon",
            "9",
        ]
        .map(String::from)
        .to_vec()
    };
    // Shard 0 from inside t, by a relative path; 1 from a copy; 2 through a link.
    let s0 = t.join("s0");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_softvi"))
        .current_dir(t)
        .args(["solve", "--quiet", "--out", "s0", "--tasks", "0/3"])
        .args(world("a.map"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let mut shards = vec![s0];
    for (i, name) in [(1, "copy.map"), (2, "link.map")] {
        let mut args = world(t.join(name).to_str().unwrap());
        args.extend(["--tasks".into(), format!("{i}/3")]);
        let dir = t.join(format!("s{i}"));
        solve(&args, &dir);
        shards.push(dir);
    }
    let whole = t.join("whole");
    solve(&world(&map), &whole);
    let merged = t.join("merged");
    let o = merge(&merged, &shards);
    assert!(o.status.success(), "{}", stderr(&o));
    for name in ["values.npy", "policy.npy"] {
        assert_eq!(
            std::fs::read(merged.join(name)).unwrap(),
            std::fs::read(whole.join(name)).unwrap(),
            "{name}"
        );
    }
    // Other contents: one more wall.
    let other = write(
        t,
        "other.map",
        common::cli::SMALL_MAP
            .replace("@....\n", "@@...\n")
            .as_bytes(),
    );
    let mut args = world(&other);
    args.extend(["--tasks".into(), "2/3".into()]);
    let foreign = t.join("foreign");
    solve(&args, &foreign);
    let o = merge(
        &t.join("refused"),
        &[shards[0].clone(), shards[1].clone(), foreign],
    );
    assert!(
        stderr(&o).contains("different task batches"),
        "{}",
        stderr(&o)
    );
}
