//! `softvi meta`: the guide's sparse-goal run (docs/qlearn-and-meta-rl.md) writes meta.json
//! and its chart, the GPU and the CPU reference agree, and bad flags name themselves before any
//! solve.

mod common;

use common::cli::*;
use softvi::analysis::render::SERIES_COLOURS;

fn half_ring_args<'a>(out: &'a str, backend: &'a str) -> Vec<&'a str> {
    vec![
        "meta",
        "--map",
        "tests/data/half_ring.map",
        "--goals",
        "tests/data/half_ring_goals.txt",
        "--start",
        "7,8",
        "--move-cost",
        "0,0",
        "--goal-value",
        "1",
        "--alpha",
        "0.01",
        "--gamma",
        "0.9",
        "--steps",
        "15",
        "--episodes",
        "8",
        "--trials",
        "12",
        "--backend",
        backend,
        "--out",
        out,
        "--quiet",
    ]
}

fn meta_json(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap()
}

/// The three curves, 8 episodes each, 7 x 12 runs; the oracle at 1 (it reaches its goal),
/// posterior sampling rising from the prior-only level to the oracle's; the chart a 720 x 440
/// PNG holding the three series' colours; GPU and CPU reference equal (exact observations
/// leave posteriors uniform over the tasks still possible, the same in f32 and f64).
#[test]
fn meta_writes_curves_and_a_chart() {
    let tmp = tempfile::tempdir().unwrap();
    let cpu_dir = tmp.path().join("cpu");
    let o = softvi(&half_ring_args(cpu_dir.to_str().unwrap(), "cpu"));
    assert!(o.status.success(), "{}", stderr(&o));
    let meta = meta_json(&cpu_dir);
    assert_eq!(meta["runs"], 84);
    let mean = |agent: &str| -> Vec<f64> {
        meta[agent]["mean"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let (ps, oracle, prior) = (
        mean("posterior_sampling"),
        mean("oracle"),
        mean("prior_only"),
    );
    assert_eq!(ps.len(), 8);
    assert!(oracle.iter().all(|&r| r > 0.99), "{oracle:?}");
    assert!(ps[0] < 0.5 && ps[7] > 0.9, "{ps:?}");
    assert!(prior.iter().all(|&r| r < 0.5), "{prior:?}");
    assert_eq!(summary(&cpu_dir)["meta"]["runs"], 84);

    let png = std::fs::read(cpu_dir.join("returns.png")).unwrap();
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((info.width, info.height), (720, 440));
    for colour in &SERIES_COLOURS[..3] {
        assert!(
            pixels.chunks_exact(3).filter(|p| p == colour).count() > 100,
            "series colour {colour:?} drawn"
        );
    }

    if gpu_available() {
        let gpu_dir = tmp.path().join("gpu");
        let o = softvi(&half_ring_args(gpu_dir.to_str().unwrap(), "gpu"));
        assert!(o.status.success(), "{}", stderr(&o));
        let on_gpu = meta_json(&gpu_dir);
        for agent in ["posterior_sampling", "oracle", "prior_only"] {
            assert_eq!(on_gpu[agent], meta[agent], "{agent}");
        }
    }
}

/// Each bad flag is refused with its name, exit 1, and nothing written.
#[test]
fn meta_refuses_bad_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bad");
    let out = out.to_str().unwrap();
    for (extra, message) in [
        (
            &["--eval-tasks", "0,9"][..],
            "evaluated task 9 is outside the batch's 0..7",
        ),
        (
            &["--reward-noise", "0"][..],
            "reward noise must be finite and > 0",
        ),
        // Past float32 (observations inf), and below the float32 rounding of the rewards on
        // the CPU and on the GPU: each put posterior mass 0 on the true task, exit 0.
        (
            &["--reward-noise", "1e39"][..],
            "the reward noise 1e39 is outside what the kernels hold",
        ),
        (
            &["--reward-noise", "1e-300"][..],
            "the reward noise 1e-300 is outside what the kernels hold",
        ),
        (
            &["--reward-noise", "1e-46"][..],
            "float32 roundings of the rewards' scale",
        ),
        (&["--episodes", "0"][..], "episodes (0)"),
        (
            &["--horizon", "5"][..],
            "--steps 15 is longer than --horizon 5",
        ),
    ] {
        let mut args = half_ring_args(out, "cpu");
        // A flag already given takes the new value; others are added.
        match args.iter().position(|a| *a == extra[0]) {
            Some(i) => args[i + 1] = extra[1],
            None => args.extend_from_slice(extra),
        }
        let o = softvi(&args);
        assert_eq!(o.status.code(), Some(1), "{extra:?}");
        assert!(stderr(&o).contains(message), "{extra:?}: {}", stderr(&o));
        assert!(!std::path::Path::new(out).join("meta.json").exists());
    }
}

/// Run counts past memory are refused before anything is allocated, exit 1 with the sizes
/// named (before: a capacity-overflow panic for `--trials 2^64-1`, an abort on allocation for
/// `--episodes 2^32`, 2.5 GB allocated for `--trials 10^7` before the refusal).
#[test]
fn meta_sizes_its_runs_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("big");
    let out = out.to_str().unwrap();
    for (flag, value) in [
        ("--trials", "18446744073709551615"),
        ("--episodes", "4294967296"),
        ("--steps", "1000000000000"),
    ] {
        let mut args = half_ring_args(out, "cpu");
        let i = args.iter().position(|a| *a == flag).unwrap();
        args[i + 1] = value;
        let o = softvi(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{flag} {value}: {err}");
        assert!(
            err.contains("of meta-RL runs over 7 tasks"),
            "{flag}: {err}"
        );
        assert!(!std::path::Path::new(out).exists());
    }
}
