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
