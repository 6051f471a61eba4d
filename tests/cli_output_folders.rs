//! Output folders of every command: softvi never deletes or overwrites a file it did not
//! write, a failed write keeps the previous result, two runs on one folder never mix, a
//! picture never replaces a result, and a command never writes into another command's folder.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::cli::*;
use softvi::io::npy;

/// Every file of `dir` (name, bytes), sorted by name.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let bytes = std::fs::read(e.path()).unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    files.sort();
    files
}

fn solve(out: &Path, extra: &[&str]) -> std::process::Output {
    let base = [
        "solve",
        "--maze",
        "9x9",
        "--goal",
        "1,1",
        "--backend",
        "cpu",
    ];
    softvi(&[&base[..], extra, &["--out", out.to_str().unwrap()]].concat())
}

/// Item 1: a non-empty folder without softvi's marker (also as `--out .`) is refused and left
/// untouched; `--force` writes into it, replacing only the files of the same names.
#[test]
fn a_folder_softvi_did_not_write_is_refused_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("p");
    std::fs::create_dir(&p).unwrap();
    write(&p, "occupancy.npy", b"data\n");
    write(&p, "summary.json", b"mine\n");
    let before = snapshot(&p);
    let o = solve(&p, &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("is not a softvi result folder") && stderr(&o).contains("--force"),
        "{}",
        stderr(&o)
    );
    assert_eq!(snapshot(&p), before);
    let o = Command::new(env!("CARGO_BIN_EXE_softvi"))
        .args([
            "solve",
            "--maze",
            "9x9",
            "--goal",
            "1,1",
            "--backend",
            "cpu",
        ])
        .args(["--out", "."])
        .current_dir(&p)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--out . is not empty"),
        "{}",
        stderr(&o)
    );
    assert_eq!(snapshot(&p), before);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);

    let o = solve(&p, &["--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(p.join("occupancy.npy")).unwrap(), b"data\n");
    let s = summary(&p);
    assert_eq!(s["softvi"]["command"], "solve");
    assert_eq!(
        s["softvi"]["files"],
        serde_json::json!(["values.npy", "policy.npy", "summary.json"])
    );
    // The user's occupancy.npy is still not softvi's: an --occupancy solve will not replace it.
    let o = solve(&p, &["--occupancy"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("occupancy.npy, which softvi did not write"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(p.join("occupancy.npy")).unwrap(), b"data\n");
    // `--out .` is written in place; the user's file is kept (still --force: it is still there).
    let o = Command::new(env!("CARGO_BIN_EXE_softvi"))
        .args([
            "solve",
            "--maze",
            "9x9",
            "--goal",
            "1,1",
            "--backend",
            "cpu",
        ])
        .args(["--no-policy", "--force", "--out", "."])
        .current_dir(&p)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!p.join("policy.npy").exists());
    assert_eq!(std::fs::read(p.join("occupancy.npy")).unwrap(), b"data\n");
}

/// Item 2: a run that cannot write its result (a folder where occupancy.npy goes) fails and
/// leaves the earlier result exactly as it was.
#[test]
fn a_failed_write_keeps_the_previous_result() {
    let tmp = tempfile::tempdir().unwrap();
    let rb2 = tmp.path().join("rb2");
    let o = solve(&rb2, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = snapshot(&rb2);
    std::fs::create_dir_all(rb2.join("occupancy.npy/x")).unwrap();
    let o = solve(&rb2, &["--occupancy", "--goal", "7,7"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("occupancy.npy is a folder"),
        "{}",
        stderr(&o)
    );
    assert!(rb2.join("occupancy.npy/x").is_dir());
    std::fs::remove_dir_all(rb2.join("occupancy.npy")).unwrap();
    assert_eq!(snapshot(&rb2), before);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

/// Item 3: two solves on one `--out` at once: each ends in success or fails at once naming
/// the folder, and the folder holds one run's summary and values; hidden staging folders of
/// killed runs are removed by the next run.
#[test]
fn concurrent_solves_on_one_folder_never_mix() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let out_s = out.to_str().unwrap();
    let goals = ["1,1", "29,29"];
    let cell = |goal: &str| {
        let (x, y) = goal.split_once(',').unwrap();
        y.parse::<usize>().unwrap() * 31 + x.parse::<usize>().unwrap()
    };
    for trial in 0..16 {
        if trial % 2 == 0 {
            let _ = std::fs::remove_dir_all(&out);
        }
        let children: Vec<_> = goals
            .iter()
            .map(|goal| {
                Command::new(env!("CARGO_BIN_EXE_softvi"))
                    .args([
                        "solve",
                        "--maze",
                        "31x31",
                        "--goal",
                        goal,
                        "--backend",
                        "cpu",
                    ])
                    .args(["--out", out_s])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut succeeded = 0;
        for child in children {
            let o = child.wait_with_output().unwrap();
            if o.status.success() {
                succeeded += 1;
            } else {
                let err = stderr(&o);
                assert!(
                    err.contains(&format!(
                        "--out {out_s} is being written by another softvi run"
                    )),
                    "trial {trial}: {err}"
                );
            }
        }
        assert!(succeeded >= 1, "trial {trial}: both runs failed");
        let s = summary(&out);
        let goal = s["goals"][0][0].clone();
        let goal = format!("{},{}", goal[0], goal[1]);
        let other = goals.iter().find(|g| **g != goal).unwrap();
        let values = npy::read_float(&out.join("values.npy")).unwrap();
        assert_eq!(values.data[cell(&goal)], 0.0, "trial {trial}: goal {goal}");
        assert!(
            values.data[cell(other)].abs() > 1.0,
            "trial {trial}: summary of goal {goal}, values of goal {other}"
        );
        let beside: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(
            beside.len(),
            1,
            "trial {trial}: files left beside the folder"
        );
    }
    // While another run holds the folder, a solve fails at once, before it computes (a
    // 1001x1001 solve would take minutes on the CPU), and the folder is left as it is.
    let before = snapshot(&out);
    let held = softvi::io::output::OutputFolder::claim(&out, "solve", &[], false).unwrap();
    let o = softvi(&[
        "solve",
        "--maze",
        "1001x1001",
        "--goal",
        "1,1",
        "--backend",
        "cpu",
        "--out",
        out_s,
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&format!(
            "--out {out_s} is being written by another softvi run (pid {})",
            std::process::id()
        )),
        "{}",
        stderr(&o)
    );
    drop(held);
    assert_eq!(snapshot(&out), before);
    // What a killed run leaves (a pid no process has) is removed by the next run.
    let stale = tmp.path().join(".out.softvi-tmp-999999999");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("values.npy"), b"half").unwrap();
    let o = solve(&out, &["--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stale.exists());
}

/// Item 4: `--png` may not replace an output file or a file that is not a picture, and a path
/// that cannot be written is refused before anything is computed or written.
#[test]
fn png_paths_are_checked_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let o5 = tmp.path().join("o5");
    let o = solve(&o5, &["--png", o5.join("values.npy").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("would overwrite values.npy"),
        "{}",
        stderr(&o)
    );
    assert!(!o5.exists());
    let o = solve(&o5, &["--png", o5.join("v.png").to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = snapshot(&o5);
    for name in ["values.npy", "summary.json", "policy.npy"] {
        let o = solve(&o5, &["--png", o5.join(name).to_str().unwrap()]);
        assert!(!o.status.success(), "--png {name} was accepted");
        assert!(stderr(&o).contains("would overwrite"), "{}", stderr(&o));
    }
    assert_eq!(snapshot(&o5), before);
    let o6 = tmp.path().join("o6");
    let notes = write(tmp.path(), "notes.txt", b"mine\n");
    for (png, expected) in [
        (
            "/nonexistent/dir/x.png",
            "the folder /nonexistent/dir does not exist",
        ),
        (tmp.path().to_str().unwrap(), "is a folder"),
        (&notes, "is not a PNG picture"),
    ] {
        let o = solve(&o6, &["--png", png]);
        assert!(!o.status.success(), "--png {png} was accepted");
        assert!(stderr(&o).contains(expected), "{}", stderr(&o));
        assert!(!o6.exists(), "--png {png}: the folder was written");
    }
    assert_eq!(std::fs::read(&notes).unwrap(), b"mine\n");
    // `render --out` is checked the same way before it draws.
    let o = softvi(&["render", "--from", o5.to_str().unwrap(), "--out", &notes]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("is not a PNG picture"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(&notes).unwrap(), b"mine\n");
}

/// Item 5: `sample`, `infer` and `irl` refuse a folder `solve` wrote (and `solve` theirs), so
/// `render` never draws one run over another; `--force` replaces the whole earlier result.
#[test]
fn a_command_refuses_another_commands_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let out_s = out.to_str().unwrap();
    let o = solve(&out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = snapshot(&out);
    let world = ["--maze", "9x9", "--goal", "1,1", "--backend", "cpu"];
    let walk = write(tmp.path(), "walk.txt", b"7 7\n7 5\n");
    let nowhere = tmp.path().join("none.npy");
    let nowhere = nowhere.to_str().unwrap();
    let commands: [Vec<&str>; 3] = [
        [&["sample"][..], &world, &["--episodes", "2"]].concat(),
        [&["infer"][..], &world, &["--trajectory", &walk]].concat(),
        vec![
            "irl",
            "--maze",
            "9x9",
            "--goal",
            "1,1",
            "--features",
            nowhere,
        ],
    ];
    for command in &commands {
        let extra: &[&str] = if command[0] == "irl" {
            &["--demos", nowhere, "--backend", "cpu"]
        } else {
            &[]
        };
        let o = softvi(&[&command[..], extra, &["--out", out_s]].concat());
        assert!(
            !o.status.success(),
            "{} wrote into a solve folder",
            command[0]
        );
        assert!(
            stderr(&o).contains(&format!(
                "holds the result of `softvi solve`; `softvi {}` will not mix",
                command[0]
            )),
            "{}",
            stderr(&o)
        );
        assert_eq!(snapshot(&out), before);
    }
    let sample = [&commands[0][..], &["--out", out_s, "--force"]].concat();
    let o = softvi(&sample);
    assert!(o.status.success(), "{}", stderr(&o));
    let names: Vec<String> = snapshot(&out).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["actions.npy", "dataset.npz", "states.npy", "summary.json"]
    );
    assert_eq!(summary(&out)["softvi"]["command"], "sample");
    let o = solve(&out, &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("holds the result of `softvi sample`"),
        "{}",
        stderr(&o)
    );
}
