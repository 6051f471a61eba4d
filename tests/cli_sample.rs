//! `softvi sample`: trajectory files of a good run, and a bad flag naming itself.

mod common;

use common::cli::*;
use softvi::io::npy;

/// `softvi sample` on a grid: int32 [B,N,T+1] cells and [B,N,T] actions, -1 after the goal,
/// moves between neighbouring free cells, one seed reproducing; bad flags name themselves.
#[test]
fn sample_writes_trajectories() {
    let tmp = tempfile::tempdir().unwrap();
    let map = write(tmp.path(), "small.map", SMALL_MAP.as_bytes());
    let run = |out: &str, seed: &str, extra: &[&str]| {
        let o = softvi(
            &[
                &[
                    "sample",
                    "--map",
                    &map,
                    "--goal",
                    "4,0",
                    "--goal",
                    "0,2",
                    "--alpha",
                    "0.3",
                    "--start",
                    "1,3",
                    "--episodes",
                    "40",
                    "--seed",
                    seed,
                    "--backend",
                    "cpu",
                    "--out",
                    out,
                ][..],
                extra,
            ]
            .concat(),
        );
        let states = tmp.path().join(out).join("states.npy");
        (o, states)
    };
    let out = tmp.path().join("a");
    let (o, states_path) = run(out.to_str().unwrap(), "5", &["--steps", "12"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&states_path).unwrap();
    let states = npy::decode(&bytes).unwrap();
    assert_eq!(states.shape, vec![2, 40, 13]);
    assert_eq!(states.dtype, "<i4");
    let actions = npy::decode(&std::fs::read(out.join("actions.npy")).unwrap()).unwrap();
    assert_eq!(actions.shape, vec![2, 40, 12]);
    let free = |c: f64| {
        c >= 0.0
            && SMALL_MAP
                .lines()
                .nth(4 + c as usize / 5)
                .unwrap()
                .as_bytes()[c as usize % 5]
                == b'.'
    };
    for (task, goal) in [(0usize, 4.0), (1, 10.0)] {
        for e in 0..40 {
            let row = &states.data[(task * 40 + e) * 13..][..13];
            assert_eq!(row[0], 16.0, "starts at X=1,Y=3");
            for t in 0..12 {
                let (here, next) = (row[t], row[t + 1]);
                if here == goal || here < 0.0 {
                    assert_eq!(next, -1.0, "stops after the goal");
                    assert_eq!(actions.data[(task * 40 + e) * 12 + t], -1.0);
                    continue;
                }
                assert!(free(here) && free(next), "free cells {here} -> {next}");
                let (dx, dy) = (
                    (here as i64 % 5 - next as i64 % 5).abs(),
                    (here as i64 / 5 - next as i64 / 5).abs(),
                );
                assert!(dx <= 1 && dy <= 1, "one move {here} -> {next}");
            }
        }
    }
    let again = tmp.path().join("b");
    let (o, again_path) = run(again.to_str().unwrap(), "5", &["--steps", "12"]);
    assert!(o.status.success());
    assert_eq!(
        std::fs::read(&again_path).unwrap(),
        bytes,
        "one seed, one result"
    );
    let (o, other_path) = run(again.to_str().unwrap(), "6", &["--steps", "12"]);
    assert!(o.status.success());
    assert_ne!(
        std::fs::read(&other_path).unwrap(),
        bytes,
        "another seed differs"
    );
    let bad = tmp.path().join("bad");
    let (o, _) = run(
        bad.to_str().unwrap(),
        "5",
        &["--horizon", "5", "--steps", "9"],
    );
    assert!(
        !o.status.success() && stderr(&o).contains("--steps 9"),
        "{}",
        stderr(&o)
    );
    assert!(!bad.exists());
}

/// Samples that cannot fit are refused before the solve (10^9 x 10^9 steps aborted trying to
/// allocate 4e18 bytes after it; a 10^9 horizon kept every policy step): exit 1, a message
/// naming the flags and the size, nothing written.
#[test]
fn oversized_samples_are_refused_before_solving() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut cases: Vec<(Vec<&str>, &str)> = vec![(
        vec!["--episodes", "1000000000", "--steps", "1000000000"],
        "1000000000 episodes (--episodes) x 1000000000 steps (--steps)",
    )];
    if softvi::engine::memory::available_bytes().is_some() {
        cases.push((vec!["--horizon", "1000000000"], "horizon 1000000000"));
    }
    for (args, expected) in cases {
        let mut full = vec![
            "sample",
            "--maze",
            "9x9",
            "--goal",
            "1,1",
            "--backend",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ];
        full.extend(&args);
        let o = softvi(&full);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(expected) && err.contains("needs"),
            "{args:?}: {err}"
        );
        assert!(!out.exists(), "{args:?} left {}", out.display());
    }
}
