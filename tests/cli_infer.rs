//! `softvi infer`: the posterior of a sampled walk, and bad trajectory lines naming file and line.

mod common;

use common::cli::*;
use softvi::io::npy;

/// `softvi infer`: a sampled walk towards one goal gives that goal the posterior, [K+1,B]
/// rows summing to 1, on both backends; bad trajectory lines name file and line.
#[test]
fn infer_names_the_goal_of_a_sampled_walk() {
    let tmp = tempfile::tempdir().unwrap();
    let world = [
        "--maze",
        "31x31",
        "--goal",
        "1,1",
        "--goal",
        "29,29",
        "--goal",
        "1,29",
        "--connectivity",
        "4",
        "--alpha",
        "0.1",
    ];
    let samples = tmp.path().join("samples");
    let o = softvi(
        &[
            &["sample"][..],
            &world,
            &[
                "--start",
                "15,15",
                "--episodes",
                "1",
                "--seed",
                "2",
                "--backend",
                "cpu",
            ],
            &["--out", samples.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let states = npy::decode(&std::fs::read(samples.join("states.npy")).unwrap()).unwrap();
    let actions = npy::decode(&std::fs::read(samples.join("actions.npy")).unwrap()).unwrap();
    let steps = actions.shape[2];
    for task in 0..3 {
        let mut lines = String::from("# X Y ACTION\n");
        for t in 0..=steps {
            let s = states.data[task * (steps + 1) + t];
            if s < 0.0 {
                break;
            }
            let a = actions.data.get(task * steps + t).copied().unwrap_or(-1.0);
            let action = if t < steps && a >= 0.0 {
                format!(" {a}")
            } else {
                String::new()
            };
            lines += &format!("{} {}{action}\n", s as usize % 31, s as usize / 31);
        }
        let walk = write(tmp.path(), "walk.txt", lines.as_bytes());
        for backend in ["cpu", "gpu"] {
            if backend == "gpu" && !gpu_available() {
                continue;
            }
            let out = tmp.path().join(format!("post-{task}-{backend}"));
            let o = softvi(
                &[
                    &["infer"][..],
                    &world,
                    &["--trajectory", &walk, "--backend", backend],
                    &["--out", out.to_str().unwrap()],
                ]
                .concat(),
            );
            assert!(o.status.success(), "{}", stderr(&o));
            let posterior = npy::read_float(&out.join("posterior.npy")).unwrap();
            assert_eq!(posterior.shape[1], 3);
            for row in posterior.data.chunks_exact(3) {
                let total: f32 = row.iter().sum();
                assert!((total - 1.0).abs() <= 1e-5);
            }
            assert_eq!(summary(&out)["most_probable_task"], task, "{backend}");
        }
    }
    let out = tmp.path().join("bad");
    for (text, message) in [
        ("15 15\n15 x\n", "walk.txt:2: Y \"x\""),
        ("15 15 N\n0 0 N\n", "walk.txt:2: X=0,Y=0 is blocked"),
        ("15 15 Q\n", "walk.txt:1: action \"Q\""),
        // A name of the 8-connected set on this 4-connected world: the world's names are said.
        (
            "15 15 NE\n",
            "walk.txt:1: action \"NE\" is not one of this world's actions (N, E, S, W)",
        ),
        // Cells as the user wrote them, not internal state numbers.
        (
            "15 15\n15 19\n",
            "step 0 (lines 1 to 2): no action moves X=15,Y=15 to X=15,Y=19",
        ),
    ] {
        let walk = write(tmp.path(), "walk.txt", text.as_bytes());
        let o = softvi(
            &[
                &["infer"][..],
                &world,
                &[
                    "--trajectory",
                    &walk,
                    "--backend",
                    "cpu",
                    "--out",
                    out.to_str().unwrap(),
                ],
            ]
            .concat(),
        );
        assert!(
            !o.status.success() && stderr(&o).contains(message),
            "{}",
            stderr(&o)
        );
        assert!(!out.exists());
    }
    // A bad prior is named as the prior, before any solve.
    let walk = write(tmp.path(), "walk.txt", b"15 15\n");
    let prior = write(
        tmp.path(),
        "prior.npy",
        &npy::encode_f32(&[3], &[0.5, -1.0, 0.5]),
    );
    let o = softvi(
        &[
            &["infer"][..],
            &world,
            &["--trajectory", &walk, "--prior", &prior, "--backend", "cpu"],
            &["--out", out.to_str().unwrap()],
        ]
        .concat(),
    );
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("--prior") && err.contains("prior.npy") && err.contains("task 1 is -1"),
        "{err}"
    );
    assert!(!err.contains("trajectory"), "{err}");
    assert!(!out.exists());
}
