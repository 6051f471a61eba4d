//! `softvi sample --behaviour` writing a dataset and `softvi qlearn` learning from it: the
//! files and summary, the library's result on both backends, and bad input refused with
//! nothing written.

mod common;

use common::cli::{SMALL_MAP, gpu_available, softvi, stderr, summary, write};
use softvi::io::npy;
use softvi::qlearn::{Dataset, qlearn};
use softvi::{CpuReference, Horizon, SolveOptions, keep_going};

#[test]
fn sample_writes_a_dataset_that_qlearn_learns_from_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let map = write(dir.path(), "small.map", SMALL_MAP.as_bytes());
    let samples = dir.path().join("samples");
    let grid = ["--map", &map, "--connectivity", "4"];
    let o = softvi(
        &[
            &["sample"][..],
            &grid,
            &["--goal", "4,3", "--slip", "0.2", "--behaviour", "uniform"],
            &[
                "--episodes",
                "300",
                "--steps",
                "30",
                "--seed",
                "1",
                "--json",
            ],
            &["--out", samples.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let s = summary(&samples);
    assert_eq!(s["behaviour"]["policy"], "uniform");
    // The map's 20 cells are the states, as states.npy labels them.
    let data = Dataset::load_npz(&samples.join("dataset.npz"), 20, 4).unwrap();
    assert_eq!((data.datasets, data.length), (1, 300 * 30));
    assert_eq!(s["transitions"][0], data.samples(0));
    // Uniform over 4 actions: every action is taken about equally often.
    let taken: Vec<usize> = (0..4)
        .map(|a| data.a.iter().filter(|&&x| x == a).count())
        .collect();
    let mean = data.samples(0) as f64 / 4.0;
    assert!(
        taken.iter().all(|&n| (n as f64 - mean).abs() < 0.1 * mean),
        "{taken:?}"
    );
    // Walls (cells 6, 7, 15) never appear; a done transition steps into the goal, cell 19.
    assert!(data.s.iter().all(|&c| ![6, 7, 15, 19].contains(&c)));
    for i in 0..data.length {
        assert_eq!(data.done[i], data.s_next[i] == 19, "entry {i}");
    }

    let options = SolveOptions {
        alpha: 0.5,
        gamma: 0.9,
        horizon: Horizon::Infinite {
            tol: 1e-6,
            max_iters: 100_000,
        },
        ..SolveOptions::default()
    };
    let library = qlearn(&mut CpuReference, &data, &options, &mut keep_going).unwrap();
    let mut backends = vec!["cpu"];
    if gpu_available() {
        backends.push("gpu");
    }
    for backend in backends {
        let out = dir.path().join(format!("learned-{backend}"));
        let o = softvi(
            &[
                &[
                    "qlearn",
                    "--data",
                    samples.join("dataset.npz").to_str().unwrap(),
                ][..],
                &grid,
                &["--alpha", "0.5", "--gamma", "0.9", "--tol", "1e-6"],
                &["--backend", backend, "--out", out.to_str().unwrap()],
            ]
            .concat(),
        );
        assert!(o.status.success(), "{backend}: {}", stderr(&o));
        let q = npy::read_float(&out.join("q.npy")).unwrap();
        let v = npy::read_float(&out.join("values.npy")).unwrap();
        let pi = npy::read_float(&out.join("policy.npy")).unwrap();
        assert_eq!(q.shape, [1, 4, 5, 4], "{backend}");
        assert_eq!(v.shape, [1, 4, 5]);
        assert_eq!(pi.shape, [1, 4, 5, 4]);
        // The CPU run is the library's computation itself; the GPU's f32 sweeps stay within
        // 1e-4 of it (|Q| < 10, a few ulps per backup over ~10 sweeps of memory).
        let tol = if backend == "cpu" { 0.0 } else { 1e-4 };
        for (i, (&x, &y)) in q.data.iter().zip(&library.q).enumerate() {
            assert!(
                (x.is_nan() && y.is_nan()) || (x - y).abs() <= tol,
                "{backend}: Q[{i}] {x} vs library {y}"
            );
        }
        // Walls and the goal have no data: NaN values and rows.
        for cell in [6, 7, 15, 19] {
            assert!(v.data[cell].is_nan(), "{backend}: cell {cell}");
            assert!(q.data[cell * 4..][..4].iter().all(|x| x.is_nan()));
        }
        let s = summary(&out);
        assert_eq!(s["softvi"]["command"], "qlearn");
        assert_eq!(s["samples"][0], data.samples(0));
        assert_eq!(s["unseen_pairs"][0], library.unseen_pairs[0]);
        assert_eq!(s["states_without_data"][0], 4);
        assert_eq!(s["status"], "converged");
        assert!(s["sweeps"].as_u64().unwrap() > 0);
        assert!(s["residual"].as_f64().unwrap() <= 1e-6);
    }
}

#[test]
fn sample_follows_the_soft_policy_at_its_own_temperature() {
    let dir = tempfile::tempdir().unwrap();
    let map = write(dir.path(), "small.map", SMALL_MAP.as_bytes());
    let out = dir.path().join("samples");
    let o = softvi(&[
        "sample",
        "--map",
        &map,
        "--goal",
        "4,3",
        "--alpha",
        "3",
        "--behaviour",
        "soft",
        "--alpha-behaviour",
        "0.05",
        "--episodes",
        "200",
        "--steps",
        "40",
        "--backend",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = summary(&out);
    assert_eq!(s["behaviour"]["alpha"], 0.05);
    assert_eq!(s["alpha"], 0.05, "the solve ran at --alpha-behaviour");
    // Near-greedy (alpha 0.05 against unit step costs): episodes from any cell of this 5 x 4
    // map reach the goal in at most 7 steps, none runs out of its 40 (a uniform walk would).
    let data = Dataset::load_npz(&out.join("dataset.npz"), 20, 8).unwrap();
    for episode in 0..200 {
        let steps = (0..40).filter(|&t| data.s[episode * 40 + t] != -1).count();
        assert!(steps <= 7, "episode {episode}: {steps} steps");
        assert!(
            steps >= 1 && data.done[episode * 40 + steps - 1],
            "episode {episode}"
        );
    }
}

#[test]
fn qlearn_refuses_bad_data_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let shape = [3];
    let npz = npy::encode_npz(&[
        ("s", npy::encode("<i8", &shape, &[0., 5., 1.])),
        ("a", npy::encode("<i8", &shape, &[0., 1., 1.])),
        ("r", npy::encode("<f4", &shape, &[0., 1., 1.])),
        ("s_next", npy::encode("<i8", &shape, &[1., 0., 0.])),
    ])
    .unwrap();
    let data = write(dir.path(), "bad.npz", &npz);
    let out = dir.path().join("out");
    let o = softvi(&[
        "qlearn",
        "--data",
        &data,
        "--states",
        "3",
        "--actions",
        "2",
        "--backend",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("bad.npz") && err.contains("s[1] = 5 is not a state (states = 3)"),
        "{err}"
    );
    assert!(!out.exists(), "a refused run leaves no folder");
    // --states without --actions, and --alpha-behaviour with a uniform behaviour.
    let o = softvi(&["qlearn", "--data", &data, "--states", "3", "--out", "x"]);
    assert!(
        !o.status.success() && stderr(&o).contains("--actions"),
        "{}",
        stderr(&o)
    );
    let map = write(dir.path(), "small.map", SMALL_MAP.as_bytes());
    let o = softvi(&[
        "sample",
        "--map",
        &map,
        "--goal",
        "4,3",
        "--behaviour",
        "uniform",
        "--alpha-behaviour",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--alpha-behaviour"), "{}", stderr(&o));
    assert!(!out.exists());
}

/// A one-dataset `.npz` of the transitions `(s, a, r, s_next)`, no `done`.
fn transitions(dir: &std::path::Path, name: &str, rows: &[(f64, f64, f64, f64)]) -> String {
    let shape = [rows.len()];
    let column = |k: usize| -> Vec<f64> { rows.iter().map(|r| [r.0, r.1, r.2, r.3][k]).collect() };
    let npz = npy::encode_npz(&[
        ("s", npy::encode("<i8", &shape, &column(0))),
        ("a", npy::encode("<i8", &shape, &column(1))),
        ("r", npy::encode("<f8", &shape, &column(2))),
        ("s_next", npy::encode("<i8", &shape, &column(3))),
    ])
    .unwrap();
    write(dir, name, &npz)
}

/// Data whose soft values have no finite fixed point, or that do not fit the solver, is
/// refused with a reason and nothing written (before: exit 0 and "converged" with V = -inf and
/// Q NaN on a seen pair, max_iters, "the solver returned no Q", "a softvi bug"): at gamma = 1
/// a self-loop of reward 1 with no done, two self-loops at r = -1 with alpha 5; samples on
/// walls of the --map (data of another maze); a reward past float32. A solve whose values
/// outgrow float32 reports the divergence (exit 3), as `solve` does.
#[test]
fn qlearn_refuses_data_without_a_finite_answer() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    let out = t.join("out");
    let run = |data: &str, extra: &[&str]| {
        let mut args = vec!["qlearn", "--data", data, "--backend", "cpu", "--quiet"];
        args.extend(["--out", out.to_str().unwrap()]);
        args.extend(extra);
        softvi(&args)
    };
    let refused = |data: &str, extra: &[&str], want: &str| {
        let o = run(data, extra);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {err}");
        assert!(err.contains(want), "wanted {want:?} in: {err}");
        assert!(!out.exists(), "a refused run leaves no folder");
    };
    let one_loop = transitions(t, "loop.npz", &[(0., 0., 1., 0.)]);
    let two_loops = transitions(t, "loops.npz", &[(0., 0., -1., 0.), (1., 0., -1., 1.)]);
    let no_end = "with gamma = 1 and no horizon, ";
    refused(
        &one_loop,
        &["--states", "1", "--actions", "1", "--gamma", "1"],
        no_end,
    );
    refused(
        &two_loops,
        &[
            "--states",
            "2",
            "--actions",
            "2",
            "--gamma",
            "1",
            "--alpha",
            "5",
        ],
        "2 state(s) with data reach no done transition",
    );
    // The same data with a discount, or a horizon, has a finite answer.
    for extra in [["--gamma", "0.5"], ["--horizon", "3"]] {
        let mut args = vec!["--states", "2", "--actions", "2", "--gamma", "1"];
        args.splice(4..6, extra);
        let o = run(&two_loops, &args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        std::fs::remove_dir_all(&out).unwrap();
    }
    // SMALL_MAP's cell X=1,Y=1 (state 6) is a wall.
    let map = write(t, "small.map", SMALL_MAP.as_bytes());
    let on_wall = transitions(t, "wall.npz", &[(0., 1., 0., 1.), (5., 1., 0., 6.)]);
    refused(
        &on_wall,
        &["--map", &map],
        "s_next[1] = 6 is the wall cell X=1,Y=1 of the map",
    );
    let huge = transitions(t, "huge.npz", &[(0., 0., 1e40, 1.), (1., 0., 0., 0.)]);
    refused(
        &huge,
        &["--states", "2", "--actions", "1"],
        "r[0] = 1e40 exceeds float32's range",
    );
    // 4e9 states (u32 indices hold them): the empirical MDP needs hundreds of GB, refused
    // before it is built (2^31 states aborted on allocation; 2^26 took 3.8 GB and 25 s).
    let o = run(&one_loop, &["--states", "4000000000", "--actions", "1"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the empirical MDP of 1 dataset(s) x 4000000000 states x 1 actions needs"),
        "{err}"
    );
    assert!(!out.exists());
    // 3e38 per step at gamma 0.99 sums past float32: diverged, exit 3, summary.json only.
    let big = transitions(t, "big.npz", &[(0., 0., 3e38, 1.), (1., 0., 3e38, 0.)]);
    let o = run(&big, &["--states", "2", "--actions", "1"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(!err.contains("returned no Q"), "{err}");
    assert_eq!(summary(&out)["status"], "diverged");
    assert!(!out.join("q.npy").exists());
}
