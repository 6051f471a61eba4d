//! `softvi irl`: weights learned from sampled demos, and mismatched inputs naming the flag.

mod common;

use common::cli::*;
use softvi::io::npy;

/// `softvi irl` round trip: demos sampled with a reward in the span of two features give back
/// weights near the true ones, theta.npy [1,K], reward.npy [1,H,W], a rising log-likelihood;
/// mismatched features or demos name the flag.
#[test]
fn irl_recovers_the_reward_behind_sampled_demos() {
    let tmp = tempfile::tempdir().unwrap();
    let map = write(tmp.path(), "small.map", SMALL_MAP.as_bytes());
    let (h, w) = (4, 5);
    let features: Vec<f32> = (0..h * w)
        .flat_map(|c| [(c % w) as f32 / 4.0, (c / w == 2) as u8 as f32])
        .collect();
    let features_path = tmp.path().join("features.npy");
    std::fs::write(&features_path, npy::encode_f32(&[h, w, 2], &features)).unwrap();
    let truth = [0.6f32, -0.8];
    let reward: Vec<f32> = features
        .chunks(2)
        .map(|f| f[0] * truth[0] + f[1] * truth[1])
        .collect();
    let reward_path = tmp.path().join("reward.npy");
    std::fs::write(&reward_path, npy::encode_f32(&[h, w], &reward)).unwrap();
    let world = [
        "--map",
        &map,
        "--goal",
        "4,0",
        "--connectivity",
        "4",
        "--stay",
        "--slip",
        "0.1",
    ];
    let demos = tmp.path().join("demos");
    let o = softvi(
        &[
            &["sample"][..],
            &world,
            &[
                "--reward",
                reward_path.to_str().unwrap(),
                "--alpha",
                "1",
                "--gamma",
                "1",
            ],
            &["--horizon", "8", "--episodes", "4000", "--backend", "cpu"],
            &["--out", demos.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let demos_states = demos.join("states.npy");
    let demos_actions = demos.join("actions.npy");
    for backend in ["cpu", "gpu"] {
        if backend == "gpu" && !gpu_available() {
            continue;
        }
        let out = tmp.path().join(format!("learned-{backend}"));
        let o = softvi(
            &[
                &["irl"][..],
                &world,
                &["--features", features_path.to_str().unwrap()],
                &["--demos", demos_states.to_str().unwrap()],
                &["--demo-actions", demos_actions.to_str().unwrap()],
                &[
                    "--iters",
                    "300",
                    "--tol",
                    "1e-3",
                    "--quiet",
                    "--backend",
                    backend,
                ],
                &["--out", out.to_str().unwrap()],
            ]
            .concat(),
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let theta = npy::read_float(&out.join("theta.npy")).unwrap();
        assert_eq!(theta.shape, vec![1, 2]);
        // 4000 demos of 8 steps pin the weights to a few hundredths.
        for (learned, true_weight) in theta.data.iter().zip(truth) {
            assert!(
                (learned - true_weight).abs() <= 0.1,
                "{backend}: theta {:?}",
                theta.data
            );
        }
        let reward = npy::read_float(&out.join("reward.npy")).unwrap();
        assert_eq!(reward.shape, vec![1, 4, 5]);
        assert!(reward.data[w + 1].is_nan(), "wall");
        let s = summary(&out);
        assert_eq!(s["converged"], true);
        let ll = s["log_likelihood"].as_array().unwrap();
        assert!(ll.last().unwrap()[0].as_f64() > ll[0][0].as_f64());
    }
    let out = tmp.path().join("bad");
    let bad_features = write(
        tmp.path(),
        "bad.npy",
        &npy::encode_f32(&[3, 5, 2], &[0.0; 30]),
    );
    for (flag, value, message) in [
        ("--features", bad_features.as_str(), "--features"),
        (
            "--demos",
            reward_path.to_str().unwrap(),
            "is not an integer type",
        ),
    ] {
        let mut args = vec!["irl"];
        args.extend(world);
        args.extend([
            "--demos",
            demos_states.to_str().unwrap(),
            "--features",
            features_path.to_str().unwrap(),
        ]);
        let i = args.iter().position(|a| *a == flag).unwrap();
        args[i + 1] = value;
        args.extend(["--backend", "cpu", "--out", out.to_str().unwrap()]);
        let o = softvi(&args);
        assert!(
            !o.status.success() && stderr(&o).contains(message),
            "{}",
            stderr(&o)
        );
        assert!(!out.exists());
    }
}

/// Demos the world cannot produce are refused before any solve, naming the file, episode and
/// step: a jump of two cells (log-likelihood -inf), an action that does not lead to the next
/// state, an action after an episode's end; so are a NaN `--tol` and a zero `--solve-tol`
/// (named as such, not as `--tol`). Nothing is written.
#[test]
fn irl_refuses_impossible_demos_and_bad_tolerances() {
    let tmp = tempfile::tempdir().unwrap();
    let map = write(tmp.path(), "small.map", SMALL_MAP.as_bytes());
    let features = write(
        tmp.path(),
        "features.npy",
        &npy::encode_f32(&[4, 5, 1], &[0.5; 20]),
    );
    // Row Y=2 of the map is free: cells 10..14 are X=0..4.
    let good_states = write(
        tmp.path(),
        "good.npy",
        &npy::encode_i32(&[2, 3], &[10, 11, 12, 12, 13, 14]),
    );
    let jump = write(
        tmp.path(),
        "jump.npy",
        &npy::encode_i32(&[2, 3], &[10, 11, 12, 12, 13, 11]),
    );
    // E = 1, W = 3 (4-connected: N, E, S, W, STAY).
    let wrong_action = write(
        tmp.path(),
        "wrong_action.npy",
        &npy::encode_i32(&[2, 2], &[1, 1, 1, 3]),
    );
    let ended = write(
        tmp.path(),
        "ended.npy",
        &npy::encode_i32(&[2, 3], &[10, -1, -1, 12, 13, 14]),
    );
    let after_end = write(
        tmp.path(),
        "after_end.npy",
        &npy::encode_i32(&[2, 2], &[1, 1, 1, 1]),
    );
    let out = tmp.path().join("out");
    let run = |demos: &str, extra: &[&str]| {
        softvi(
            &[
                &["irl", "--map", &map, "--goal", "4,0", "--connectivity", "4"][..],
                &["--stay", "--features", &features, "--demos", demos],
                &["--iters", "2", "--quiet", "--backend", "cpu"],
                &["--out", out.to_str().unwrap()],
                extra,
            ]
            .concat(),
        )
    };
    let o = run(&good_states, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_dir_all(&out).unwrap();
    let cases: [(&str, &[&str], &[&str]); 6] = [
        (
            &jump,
            &[],
            &["jump.npy", "episode 1, step 1", "no action moves"],
        ),
        (
            &good_states,
            &["--demo-actions", &wrong_action],
            &["wrong_action.npy", "episode 1, step 1", "action 3 (W)"],
        ),
        (
            &ended,
            &["--demo-actions", &after_end],
            &[
                "after_end.npy",
                "episode 0, step 1",
                "after the episode's end",
            ],
        ),
        (&good_states, &["--tol", "NaN"], &["--tol", "NaN"]),
        (
            &good_states,
            &["--discounted", "--gamma", "0.9", "--solve-tol", "0"],
            &["--solve-tol"],
        ),
        (&good_states, &["--tol=-1"], &["--tol -1"]),
    ];
    for (demos, extra, expected) in cases {
        let o = run(demos, extra);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {err}");
        for e in expected {
            assert!(err.contains(e), "{extra:?}: {e:?} in {err}");
        }
        assert!(!err.contains("(--tol)"), "{extra:?}: {err}");
        assert!(!out.exists(), "{extra:?}");
    }
}
