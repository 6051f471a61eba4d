//! General MDPs from `.npz` files (`mdp::TabularMdp::load_npz`): dense and CSR transitions,
//! reward shapes, terminals and start distributions, and a clear error for each kind of bad
//! input. The files are written here as NumPy would (`np.savez`, `np.savez_compressed`).

use std::io::Write;
use std::path::{Path, PathBuf};

use softvi::io::npy::encode;
use softvi::world::mdp::TabularMdp;
use zip::write::SimpleFileOptions;

/// One array of an `.npz`: name, dtype, shape, data.
type Array<'a> = (&'a str, &'a str, Vec<usize>, Vec<f64>);

/// Writes `arrays` as an `.npz`.
fn write_npz(dir: &Path, name: &str, compressed: bool, arrays: &[Array]) -> PathBuf {
    let path = dir.join(name);
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let method = if compressed {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    for (array, dtype, shape, data) in arrays {
        zip.start_file(
            format!("{array}.npy"),
            SimpleFileOptions::default().compression_method(method),
        )
        .unwrap();
        zip.write_all(&encode(dtype, shape, data)).unwrap();
    }
    zip.finish().unwrap();
    path
}

/// 3 states, 2 actions: a = 0 moves right (s -> s+1, wrapping), a = 1 stays with 0.5 and
/// moves right with 0.5.
fn dense_p() -> Vec<f64> {
    let mut p = vec![0.0; 3 * 2 * 3];
    for s in 0..3 {
        p[(s * 2) * 3 + (s + 1) % 3] = 1.0;
        p[(s * 2 + 1) * 3 + s] = 0.5;
        p[(s * 2 + 1) * 3 + (s + 1) % 3] += 0.5;
    }
    p
}

#[test]
fn dense_transitions_become_csr() {
    let tmp = tempfile::tempdir().unwrap();
    for compressed in [false, true] {
        let path = write_npz(
            tmp.path(),
            "dense.npz",
            compressed,
            &[
                ("P", "<f8", vec![3, 2, 3], dense_p()),
                ("R", "<f4", vec![3], vec![1.0, 2.0, 3.0]),
                ("terminal", "|b1", vec![3], vec![0.0, 0.0, 1.0]),
            ],
        );
        let mdp = TabularMdp::load_npz(&path).unwrap();
        assert_eq!((mdp.states, mdp.actions, mdp.tasks), (3, 2, 1));
        assert_eq!(mdp.csr().indptr, vec![0, 1, 3, 4, 6, 7, 9]);
        assert_eq!(mdp.csr().indices[..3], [1, 0, 1]);
        assert_eq!(mdp.csr().probs[..3], [1.0, 0.5, 0.5]);
        // [S] rewards broadcast over actions; uniform start over non-terminal states.
        assert_eq!(mdp.reward, vec![1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
        assert_eq!(mdp.initial, vec![0.5, 0.5, 0.0]);
        assert_eq!(mdp.terminal, vec![false, false, true]);
    }
}

#[test]
fn csr_transitions_with_a_task_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write_npz(
        tmp.path(),
        "sparse.npz",
        false,
        &[
            (
                "indptr",
                "<i8",
                vec![7],
                vec![0.0, 1.0, 3.0, 4.0, 6.0, 7.0, 9.0],
            ),
            (
                "indices",
                "<i4",
                vec![9],
                vec![1.0, 0.0, 1.0, 2.0, 1.0, 2.0, 0.0, 2.0, 0.0],
            ),
            (
                "data",
                "<f4",
                vec![9],
                vec![1.0, 0.5, 0.5, 1.0, 0.5, 0.5, 1.0, 0.5, 0.5],
            ),
            (
                "R",
                "<f8",
                vec![2, 3, 2],
                (0..12).map(|x| x as f64).collect(),
            ),
            (
                "terminal",
                "|b1",
                vec![2, 3],
                vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0],
            ),
            ("terminal_value", "<f8", vec![3], vec![0.0, 0.0, 5.0]),
            ("initial", "<f8", vec![3], vec![1.0, 0.0, 0.0]),
        ],
    );
    let mdp = TabularMdp::load_npz(&path).unwrap();
    assert_eq!(
        (mdp.states, mdp.actions, mdp.tasks, mdp.nonzeros()),
        (3, 2, 2, 9)
    );
    assert_eq!(mdp.reward[6..], [6.0, 7.0, 8.0, 9.0, 10.0, 11.0]);
    assert_eq!(mdp.terminal[3..], [true, false, false]);
    assert_eq!(mdp.terminal_value, vec![0.0, 0.0, 5.0, 0.0, 0.0, 5.0]);
    assert_eq!(mdp.initial, vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
}

#[test]
fn bad_mdps_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let r = ("R", "<f8", vec![3], vec![0.0; 3]);
    let with_p = |p: Vec<f64>| vec![("P", "<f8", vec![3, 2, 3], p), r.clone()];
    let mut off = dense_p();
    off[7] = 0.4; // row (s=1, a=0) sums to 1.4
    let mut negative = dense_p();
    negative[3 * 3] = -0.5; // P(s'=0|s=1,a=1)
    negative[3 * 3 + 2] = 1.0;
    let mut nan = dense_p();
    nan[0] = f64::NAN;
    let mut empty = dense_p();
    empty[1] = 0.0; // row (s=0, a=0) has no entry
    let csr = |indices: Vec<f64>| {
        vec![
            (
                "indptr",
                "<i8",
                vec![7],
                vec![0.0, 1.0, 3.0, 4.0, 6.0, 7.0, 9.0],
            ),
            ("indices", "<i8", vec![9], indices),
            (
                "data",
                "<f8",
                vec![9],
                vec![1.0, 0.5, 0.5, 1.0, 0.5, 0.5, 1.0, 0.5, 0.5],
            ),
            r.clone(),
        ]
    };
    let cases: Vec<(Vec<Array>, &str)> = vec![
        (with_p(off), "row (s=1, a=0) sums to 1.4"),
        (with_p(negative), "P(s'=0|s=1,a=1) = -0.5"),
        (with_p(nan), "NaN"),
        (with_p(empty), "row (s=0, a=0) is empty"),
        (
            csr(vec![1.0, 0.0, 1.0, 2.0, 1.0, 7.0, 0.0, 2.0, 0.0]),
            "successor 7, outside 0..3",
        ),
        (
            vec![
                ("P", "<f8", vec![3, 2, 3], dense_p()),
                ("R", "<f8", vec![4], vec![0.0; 4]),
            ],
            "R has shape [4]",
        ),
        (
            vec![("P", "<f8", vec![3, 2, 3], dense_p())],
            "missing array R",
        ),
        (vec![r.clone()], "missing transitions"),
        (
            vec![
                ("P", "<f8", vec![3, 2, 3], dense_p()),
                r.clone(),
                ("initial", "<f8", vec![2], vec![0.5, 0.5]),
            ],
            "initial has shape [2]",
        ),
        // A 2-D R is [S,A] when it is [S, A], else [B,S]: a shape that is neither says so.
        (
            vec![
                ("P", "<f8", vec![3, 2, 3], dense_p()),
                ("R", "<f8", vec![2, 2], vec![0.0; 4]),
            ],
            "a 2-D R is read as [S,A] = [3, 2] when it has that shape, else as [B,S]",
        ),
        // With CSR transitions S comes from R: [4, 2] is not [S,A] over 6 rows, so [B,S].
        (
            {
                let mut arrays = csr(vec![1.0, 0.0, 1.0, 2.0, 1.0, 0.0, 0.0, 2.0, 0.0]);
                arrays.pop();
                arrays.push(("R", "<f8", vec![4, 2], vec![0.0; 8]));
                arrays
            },
            "read as [B,S] (a 2-D R is [S,A] when S x A is the 6 transition rows, else [B,S])",
        ),
    ];
    let with_initial = |shape: Vec<usize>, initial: Vec<f64>| {
        vec![
            ("P", "<f8", vec![3, 2, 3], dense_p()),
            r.clone(),
            ("initial", "<f8", shape, initial),
        ]
    };
    let cases: Vec<(Vec<Array>, &str)> = cases
        .into_iter()
        .chain([
            // NaN at index 0 was taken for "not given" and replaced by uniform.
            (
                with_initial(vec![3], vec![f64::NAN, 0.5, 0.5]),
                "initial[0] is NaN",
            ),
            (
                with_initial(vec![3], vec![0.5, f64::INFINITY, 0.5]),
                "initial[1] is inf",
            ),
            (
                with_initial(vec![3], vec![0.5, 0.6, -0.1]),
                "initial[2] is -0.1",
            ),
            (
                vec![
                    ("P", "<f8", vec![3, 2, 3], dense_p()),
                    ("R", "<f8", vec![2, 3], vec![0.0; 6]),
                    (
                        "initial",
                        "<f8",
                        vec![2, 3],
                        vec![1.0, 0.0, 0.0, 0.5, f64::NAN, 0.5],
                    ),
                ],
                "initial[1, 1] is NaN",
            ),
            (
                with_initial(vec![3], vec![0.0; 3]),
                "initial of task 0 is all zero",
            ),
            (
                with_initial(vec![3], vec![0.5, 0.5, 0.5]),
                "initial of task 0 sums to 1.5, not 1",
            ),
        ])
        // A terminal flag other than 0 or 1 (each read as terminal before).
        .chain([0.5, 2.0, -1.0, f64::NAN].map(|t| {
            let mut arrays = with_p(dense_p());
            arrays.push(("terminal", "<f8", vec![3], vec![0.0, t, 0.0]));
            (
                arrays,
                if t.is_nan() {
                    "terminal[1] = NaN is not 0 or 1"
                } else {
                    "is not 0 or 1"
                },
            )
        }))
        .collect();
    for (i, (arrays, expected)) in cases.into_iter().enumerate() {
        let path = write_npz(tmp.path(), &format!("bad{i}.npz"), false, &arrays);
        let err = format!("{:#}", TabularMdp::load_npz(&path).unwrap_err());
        assert!(
            err.contains(expected) && err.contains(&format!("bad{i}.npz")),
            "case {i}: {err}"
        );
    }
    let not_zip = tmp.path().join("plain.npz");
    std::fs::write(&not_zip, b"not a zip").unwrap();
    assert!(format!("{:#}", TabularMdp::load_npz(&not_zip).unwrap_err()).contains("not an .npz"));
}

/// An `initial` within 1e-6 of summing to 1 is accepted and scaled to sum to 1; a missing one
/// is uniform over the non-terminal states, or over all states when every state is terminal.
#[test]
fn initial_is_normalised_within_its_tolerance() {
    let tmp = tempfile::tempdir().unwrap();
    let r = ("R", "<f8", vec![3], vec![0.0; 3]);
    let path = write_npz(
        tmp.path(),
        "near.npz",
        false,
        &[
            ("P", "<f8", vec![3, 2, 3], dense_p()),
            r.clone(),
            ("initial", "<f8", vec![3], vec![0.2, 0.3, 0.5 + 5e-7]),
        ],
    );
    let mdp = TabularMdp::load_npz(&path).unwrap();
    // Scaled in f64 and kept in f64: the sum is 1 within a few f64 ulps.
    let sum: f64 = mdp.initial.iter().sum();
    assert!((sum - 1.0).abs() <= 1e-15, "{:?}", mdp.initial);
    let path = write_npz(
        tmp.path(),
        "all_terminal.npz",
        false,
        &[
            ("P", "<f8", vec![3, 2, 3], dense_p()),
            r,
            ("terminal", "|b1", vec![3], vec![1.0; 3]),
        ],
    );
    let mdp = TabularMdp::load_npz(&path).unwrap();
    assert_eq!(mdp.initial, vec![1.0 / 3.0; 3]);
}

/// `render` on the folder of an `--mdp` solve says that it draws grid solves only, and writes
/// no picture.
#[test]
fn render_refuses_an_mdp_solve() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write_npz(
        tmp.path(),
        "chain.npz",
        false,
        &[
            ("P", "<f8", vec![3, 2, 3], dense_p()),
            ("R", "<f8", vec![3], vec![-1.0, -1.0, 0.0]),
            ("terminal", "|b1", vec![3], vec![0.0, 0.0, 1.0]),
        ],
    );
    let out = tmp.path().join("out");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_softvi"))
            .args(args)
            .output()
            .unwrap()
    };
    let o = run(&[
        "solve",
        "--mdp",
        path.to_str().unwrap(),
        "--backend",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let png = tmp.path().join("x.png");
    let o = run(&[
        "render",
        "--from",
        out.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("render draws grid solves only") && err.contains("chain.npz"),
        "{err}"
    );
    assert!(!png.exists());
}

/// `softvi solve --mdp FILE.npz`: [B,S] values, [B,S,A] policy, summary on the CPU reference;
/// the same values on the GPU; every step and the occupancy with their shapes; a broken file
/// names itself and writes nothing.
#[test]
fn solve_mdp_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write_npz(
        tmp.path(),
        "chain.npz",
        true,
        &[
            ("P", "<f8", vec![3, 2, 3], dense_p()),
            (
                "R",
                "<f4",
                vec![2, 3],
                vec![-1.0, -1.0, 0.0, -0.5, -2.0, 0.0],
            ),
            ("terminal", "|b1", vec![3], vec![0.0, 0.0, 1.0]),
        ],
    );
    let out = tmp.path().join("out");
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_softvi"))
            .args([
                "solve",
                "--mdp",
                path.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(&["--backend", "cpu", "--gamma", "1", "--alpha", "0.5"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let values = softvi::io::npy::read_float(&out.join("values.npy")).unwrap();
    assert_eq!(values.shape, vec![2, 3]);
    assert_eq!(values.data[2], 0.0, "terminal value");
    assert_eq!(
        softvi::io::npy::read_float(&out.join("policy.npy"))
            .unwrap()
            .shape,
        vec![2, 3, 2]
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        summary["status"],
        serde_json::json!(["converged", "converged"])
    );
    assert_eq!(summary["mdp"]["states"], 3);
    if softvi::GpuContext::from_env().is_ok() || std::env::var("SOFTVI_REQUIRE_GPU").is_ok() {
        let o = run(&["--gamma", "1", "--alpha", "0.5"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let gpu = softvi::io::npy::read_float(&out.join("values.npy")).unwrap();
        assert_eq!(gpu.shape, values.shape);
        for (g, c) in gpu.data.iter().zip(&values.data) {
            // Both converged to tol 1e-4 at gamma = 1 on a 3-state chain.
            assert!((g - c).abs() <= 1e-3, "GPU {g} vs CPU {c}");
        }
    }
    for backend in ["cpu", "gpu"] {
        let o = run(&[
            "--backend",
            backend,
            "--horizon",
            "4",
            "--all-steps",
            "--occupancy",
            "--q",
            "--gamma",
            "1",
        ]);
        if backend == "gpu" && softvi::GpuContext::from_env().is_err() {
            continue;
        }
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let shape = |name: &str| softvi::io::npy::read_float(&out.join(name)).unwrap().shape;
        assert_eq!(shape("values.npy"), vec![2, 5, 3]);
        assert_eq!(shape("policy.npy"), vec![2, 4, 3, 2]);
        assert_eq!(shape("q.npy"), vec![2, 4, 3, 2]);
        assert_eq!(shape("occupancy.npy"), vec![2, 5, 3]);
        let o = run(&["--backend", backend, "--occupancy"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(
            !out.join("q.npy").exists(),
            "an earlier run's q.npy is removed"
        );
        assert_eq!(shape("values.npy"), vec![2, 3]);
        assert_eq!(shape("occupancy.npy"), vec![2, 3]);
    }
    std::fs::remove_dir_all(&out).unwrap();
    let o = run(&["--all-steps"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--horizon"));
    assert!(!out.exists());
    std::fs::write(&path, b"broken").unwrap();
    let o = run(&["--backend", "cpu"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("chain.npz"), "{err}");
    assert!(!out.exists());
}
