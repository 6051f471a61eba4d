//! `softvi solve`: outputs of a good run, and a clear error, a non-zero exit and no files for
//! each kind of bad input.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::cli::*;
use softvi::io::npy;

#[test]
fn maze_solve_writes_values_policy_and_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let goals = write(
        tmp.path(),
        "goals.txt",
        b"# two tasks\n1 1\n\n29 19  # far corner\n",
    );
    let o = softvi(&[
        "solve",
        "--maze",
        "31x21",
        "--maze-seed",
        "5",
        "--goals",
        &goals,
        "--stay",
        "--slip",
        "0.1",
        "--backend",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let values = npy::read_float(&out.join("values.npy")).unwrap();
    assert_eq!(values.shape, vec![2, 21, 31]);
    let policy = npy::read_float(&out.join("policy.npy")).unwrap();
    assert_eq!(policy.shape, vec![2, 21, 31, 9]);
    // Goal cells: value 0, policy NaN; the blocked border: NaN values.
    assert_eq!(values.data[31 + 1], 0.0);
    assert!(policy.data[(31 + 1) * 9].is_nan());
    assert!(values.data[0].is_nan());
    // A free non-goal cell's policy is a distribution.
    let cell = 31 + 3;
    let sum: f32 = policy.data[cell * 9..cell * 9 + 9].iter().sum();
    assert!((sum - 1.0).abs() < 1e-5);
    let s = summary(&out);
    assert_eq!(s["backend"], "cpu");
    assert_eq!(s["tasks"], 2);
    assert_eq!(s["status"], serde_json::json!(["converged", "converged"]));
    for key in [
        "adapter",
        "iterations",
        "residual",
        "unreachable",
        "seconds",
    ] {
        assert!(!s[key].is_null(), "summary lacks {key}");
    }
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("converged"), "{stdout}");
}

#[test]
fn json_flag_prints_the_summary_and_horizon_status() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let map = write(tmp.path(), "small.map", SMALL_MAP.as_bytes());
    let o = softvi(&[
        "solve",
        "--map",
        &map,
        "--goal",
        "4,0",
        "--goal",
        "0,2",
        "--horizon",
        "5",
        "--backend",
        "cpu",
        "--no-policy",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let printed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(printed["status"], serde_json::json!(["horizon", "horizon"]));
    assert_eq!(printed["iterations"], serde_json::json!([5, 5]));
    assert!(!out.join("policy.npy").exists());
    assert!(out.join("values.npy").exists());
}

#[test]
fn crlf_maps_are_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let map = write(
        tmp.path(),
        "crlf.map",
        SMALL_MAP.replace('\n', "\r\n").as_bytes(),
    );
    let o = softvi(&[
        "solve",
        "--map",
        &map,
        "--goal",
        "4,0",
        "--backend",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let berlin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/maps/Berlin_1_256.map");
    assert!(
        std::fs::read(&berlin)
            .unwrap()
            .windows(2)
            .any(|w| w == b"\r\n"),
        "{} lost its CRLF line endings",
        berlin.display()
    );
    let grid = softvi::Grid::load_movingai(&berlin).unwrap();
    assert_eq!((grid.width, grid.height), (256, 256));
}

#[test]
fn default_backend_reports_what_ran() {
    if !gpu_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = softvi(&[
        "solve",
        "--maze",
        "33x17",
        "--goal",
        "1,1",
        "--goal",
        "31,15",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = summary(&out);
    // The default, `auto`: the WGSL kernels on a hardware adapter, the native engine where the
    // only adapter is a CPU (llvmpipe), which keeps it for what the native engine does not do.
    assert_eq!(s["backend"], "auto");
    assert!(s["adapter"]["name"].as_str().unwrap().len() > 1);
    let ctx = softvi::GpuContext::from_env().unwrap();
    let native = ctx.info.device_type == softvi::wgpu::DeviceType::Cpu;
    assert_eq!(
        s["adapter"]["backend"] == "native",
        native,
        "{}",
        s["adapter"]
    );
    if native {
        assert_eq!(
            s["adapter"]["fallback"]["name"].as_str(),
            Some(ctx.info.name.as_str())
        );
    }
    assert_eq!(
        npy::read_float(&out.join("values.npy")).unwrap().shape,
        vec![2, 17, 33]
    );
}

/// Mesa's Vulkan device-selection layer probes Wayland for the display's GPU and, without
/// XDG_RUNTIME_DIR, prints `error: XDG_RUNTIME_DIR is invalid ...` on stderr; a headless
/// compute run must stay quiet.
#[test]
fn vulkan_run_prints_no_window_system_noise() {
    let vulkan = softvi::GpuContext::adapters(softvi::wgpu::Backends::VULKAN)
        .map(|a| a.len())
        .unwrap_or(0);
    if vulkan == 0 {
        assert!(
            std::env::var("SOFTVI_REQUIRE_GPU").as_deref() != Ok("1"),
            "SOFTVI_REQUIRE_GPU=1 but no Vulkan adapter (install mesa-vulkan-drivers)"
        );
        eprintln!("\n*** SKIPPING VULKAN STDERR TEST: no Vulkan adapter ***\n");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_softvi"))
        .args([
            "solve",
            "--maze",
            "9x9",
            "--goal",
            "1,1",
            "--backend",
            "gpu",
            "--out",
        ])
        .arg(&out)
        .env("WGPU_BACKEND", "vulkan")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("NODEVICE_SELECT")
        .env_remove("MESA_VK_DEVICE_SELECT")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !stderr(&o).contains("XDG_RUNTIME_DIR"),
        "window-system noise on stderr:\n{}",
        stderr(&o)
    );
    assert!(
        summary(&out)["adapter"]["backend"]
            .to_string()
            .to_lowercase()
            .contains("vulkan")
    );
}

#[test]
fn adapters_all_lists_every_adapter_used() {
    if !gpu_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = softvi(&[
        "solve",
        "--maze",
        "33x17",
        "--goal",
        "1,1",
        "--goal",
        "31,15",
        "--goal",
        "17,9",
        "--adapters",
        "all",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = summary(&out);
    let listed = s["adapter"].as_array().expect("a list of adapters");
    assert_eq!(
        listed.len(),
        softvi::GpuContext::adapters_from_env().unwrap().len()
    );
    assert_eq!(s["status"].as_array().unwrap().len(), 3);
    let o = softvi(&[
        "solve",
        "--maze",
        "33x17",
        "--goal",
        "1,1",
        "--adapters",
        "99",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--adapters 99"), "{}", stderr(&o));
}

#[test]
fn divergence_exits_non_zero_without_values() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = softvi(&[
        "solve",
        "--maze",
        "21x21",
        "--goal",
        "1,1",
        "--gamma",
        "1",
        "--alpha",
        "10",
        "--backend",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("diverged"));
    assert_eq!(summary(&out)["status"], serde_json::json!(["diverged"]));
    assert!(!out.join("values.npy").exists() && !out.join("policy.npy").exists());
}

/// With a zero-cost STAY and gamma = 1 no soft value is finite (staying earns the entropy
/// bonus forever), but V grows by only alpha * 8 exp(-1 / alpha) ~ 1e-45 per sweep at alpha
/// 0.01: both backends, on the grid kernels and on the grid-as-MDP path (`--occupancy`), must
/// report it diverged, not "converged" at V = 0.
#[test]
fn zero_cost_stay_at_gamma_one_diverges_on_both_backends() {
    let tmp = tempfile::tempdir().unwrap();
    let mut runs = vec![vec!["--backend", "cpu"]];
    if gpu_available() {
        runs.push(vec!["--backend", "gpu"]);
        runs.push(vec!["--backend", "gpu", "--occupancy"]);
    }
    for (i, extra) in runs.iter().enumerate() {
        let out = tmp.path().join(format!("out{i}"));
        let mut args = vec![
            "solve", "--maze", "31x31", "--goal", "1,1", "--gamma", "1", "--alpha", "0.01",
            "--stay", "--out",
        ];
        args.push(out.to_str().unwrap());
        args.extend(extra);
        let o = softvi(&args);
        assert_eq!(o.status.code(), Some(3), "{extra:?}: {}", stderr(&o));
        assert_eq!(
            summary(&out)["status"],
            serde_json::json!(["diverged"]),
            "{extra:?}"
        );
        assert!(!out.join("values.npy").exists(), "{extra:?}");
    }
    // A positive STAY cost has a finite solution: it converges.
    let out = tmp.path().join("costly");
    let o = softvi(&[
        "solve",
        "--maze",
        "31x31",
        "--goal",
        "1,1",
        "--gamma",
        "1",
        "--alpha",
        "0.01",
        "--stay",
        "--move-cost",
        "1,1.4142135,0.5",
        "--backend",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(summary(&out)["status"], serde_json::json!(["converged"]));
}

/// Each bad input: non-zero exit, an error naming the problem, and no output folder.
/// Files as people write them: goals apart by a tab, a map drawn with `X` for walls (read
/// as walls, with a warning naming the character and its line); and a divergence at
/// gamma < 1 blames the value scale, not gamma = 1.
#[test]
fn tabs_unknown_terrain_and_overflow_are_told_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let map = write(
        d,
        "x.map",
        b"type octile\nheight 3\nwidth 4\nmap\n....\n.XX.\n....\n",
    );
    let goals = write(d, "goals.txt", b"0\t0\n3\t2\n");
    let out = d.join("out");
    let o = softvi(&[
        "solve",
        "--map",
        &map,
        "--goals",
        &goals,
        "--backend",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("warning") && err.contains("x.map:6") && err.contains("'X'"),
        "{err}"
    );
    let values = npy::read_float(&out.join("values.npy")).unwrap();
    assert_eq!(values.shape, vec![2, 3, 4]);
    assert!(
        values.data[5].is_nan() && values.data[6].is_nan(),
        "X cells are walls"
    );
    let out = d.join("huge");
    let o = softvi(&[
        "solve",
        "--maze",
        "31x31",
        "--goal",
        "1,1",
        "--alpha",
        "1e29",
        "--backend",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("values passed 1e30"), "{err}");
    assert!(!err.contains("gamma = 1"), "{err}");
}

#[test]
fn bad_inputs_fail_clearly_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let map = write(d, "small.map", SMALL_MAP.as_bytes());
    let garbled = write(
        d,
        "garbled.map",
        b"type octile\nheight 3\nwidth 4\nmap\n....\n..\n....\n",
    );
    let bad_header = write(
        d,
        "header.map",
        b"type octile\nheigth 3\nwidth 4\nmap\n....\n",
    );
    let wrong_shape = write(d, "wrong.npy", &npy::encode_f32(&[3, 5], &[0.0; 15]));
    let mut nan = vec![0.0f32; 20];
    nan[7] = f32::NAN;
    let nan_reward = write(d, "nan.npy", &npy::encode_f32(&[4, 5], &nan));
    let bad_goals = write(d, "goals.txt", b"1 0\n# fine\n2 zero\n");
    let off_goals = write(d, "off.txt", b"0 0\n9\t0\n");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--map", "missing.map", "--goal", "0,0"], "missing.map"),
        (vec!["--map", &garbled, "--goal", "0,0"], "line 6"),
        (vec!["--map", &bad_header, "--goal", "0,0"], "line 2"),
        (vec!["--map", &map, "--goal", "5,0"], "off the 5x4 map"),
        (vec!["--map", &map, "--goal", "1,1"], "blocked cell"),
        (vec!["--map", &map, "--goal", "1;1"], "--goal"),
        (vec!["--map", &map, "--goals", &bad_goals], "goals.txt:3"),
        // A goal from a file is named by file and line; one from a flag by the flag.
        (
            vec!["--map", &map, "--goals", &off_goals],
            "off.txt:2: goal X=9,Y=0 is off the 5x4 map",
        ),
        (
            vec!["--map", &map, "--goal", "1,1"],
            "--goal 1,1: goal X=1,Y=1 is on a blocked cell",
        ),
        // Malformed numbers are bad input like the rest: exit 1.
        (
            vec!["--map", &map, "--goal", "0,0", "--horizon", "-3"],
            "-3",
        ),
        (
            vec!["--map", &map, "--goal", "0,0", "--alpha", "x"],
            "--alpha",
        ),
        (
            vec!["--map", &map, "--goal", "0,0", "--alpha", "-1"],
            "alpha (--alpha) must be finite and >= 0",
        ),
        (
            vec!["--map", &map, "--goal", "0,0", "--gamma", "1.5"],
            "gamma (--gamma) must be in [0, 1]",
        ),
        (
            vec!["--map", &map, "--goal", "0,0", "--slip", "2"],
            "slip (--slip) must be in [0, 1]",
        ),
        (
            vec!["--map", &map, "--goal", "0,0", "--reward", &wrong_shape],
            "shape [3, 5]",
        ),
        (
            vec!["--map", &map, "--goal", "0,0", "--reward", &nan_reward],
            "X=2, Y=1 is not finite",
        ),
        (
            vec![
                "--map",
                &map,
                "--goal",
                "0,0",
                "--backup",
                "optimistic",
                "--alpha",
                "0",
            ],
            "optimistic",
        ),
        (
            vec!["--map", &map, "--goal", "0,0", "--move-cost", "1"],
            "--move-cost",
        ),
        (
            vec!["--map", &map, "--goal", "0,0", "--horizon", "0"],
            "horizon (--horizon) must be >= 1",
        ),
        (
            vec!["--map", &map, "--goal", "0,0", "--tol", "0"],
            "tol (--tol) must be > 0",
        ),
        (
            vec!["--map", &map, "--goal", "0,0", "--connectivity", "6"],
            "connectivity",
        ),
        (vec!["--maze", "2x2", "--goal", "0,0"], "outside"),
        (vec!["--maze", "20", "--goal", "1,1"], "WxH"),
    ];
    for (args, expected) in cases {
        let out = d.join("out");
        let mut full = vec!["solve", "--backend", "cpu", "--out", out.to_str().unwrap()];
        full.extend(&args);
        let o = softvi(&full);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(expected),
            "{args:?}: stderr lacks {expected:?}:\n{err}"
        );
        assert!(!out.exists(), "{args:?} left {}", out.display());
    }
}

/// Progress goes to stderr only, only on a terminal (emulated with util-linux `script`), and
/// `--quiet` silences it; stdout and the files never carry it.
#[test]
fn progress_line_only_on_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let args = [
        "solve",
        "--maze",
        "401x401",
        "--goal",
        "1,1",
        "--slip",
        "0.1",
        "--no-policy",
        "--backend",
        "cpu",
    ];
    let o = Command::new(env!("CARGO_BIN_EXE_softvi"))
        .args(args)
        .args(["--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(!stderr(&o).contains("sweeps/s") && !String::from_utf8_lossy(&o.stdout).contains('\r'));
    assert!(
        !std::fs::read_to_string(out.join("summary.json"))
            .unwrap()
            .contains("sweeps/s")
    );
    assert!(
        Command::new("script").arg("--version").output().is_ok(),
        "the terminal half needs `script` (util-linux) to emulate a terminal: install it"
    );
    let on_terminal = |quiet: bool| -> String {
        let mut command = format!(
            "{} {} --out {}",
            env!("CARGO_BIN_EXE_softvi"),
            args.join(" "),
            out.display()
        );
        if quiet {
            command += " --quiet";
        }
        let log = tmp.path().join("typescript");
        let status = Command::new("script")
            .args(["-qc", &command, log.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(status.status.success());
        String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned()
    };
    assert!(
        on_terminal(false).contains("sweeps/s"),
        "no progress line on a terminal"
    );
    assert!(
        !on_terminal(true).contains("sweeps/s"),
        "--quiet still showed progress"
    );
}

/// `--occupancy` on a grid: [B,H,W] discounted, [B,T+1,H,W] per step with `--horizon`, NaN on
/// walls, each D_t a distribution without discount; `--start` off the map or on a wall fails.
/// `--q` writes the soft Q-values `[B,H,W,A]` (`[B,T,H,W,A]` with every step), NaN on walls
/// and goals, whose soft max is values.npy (alpha 1: `V = log sum_a exp Q`, within 1e-4 of
/// max(1, |V|), f32 on either backend); with `--no-policy` no policy.npy.
#[test]
fn q_flag_writes_soft_q_values() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let map = write(tmp.path(), "small.map", SMALL_MAP.as_bytes());
    let out_s = out.to_str().unwrap();
    for backend in ["cpu", "gpu"] {
        if backend == "gpu" && !gpu_available() {
            continue;
        }
        let base = [
            "solve",
            "--map",
            &map,
            "--goal",
            "4,0",
            "--q",
            "--backend",
            backend,
            "--out",
            out_s,
        ];
        let o = softvi(&base);
        assert!(o.status.success(), "{}", stderr(&o));
        let q = npy::read_float(&out.join("q.npy")).unwrap();
        let v = npy::read_float(&out.join("values.npy")).unwrap();
        assert_eq!(q.shape, vec![1, 4, 5, 8]);
        assert!(out.join("policy.npy").exists());
        for cell in 0..20 {
            let row = &q.data[cell * 8..cell * 8 + 8];
            if cell == 4 || v.data[cell].is_nan() {
                assert!(
                    row.iter().all(|x| x.is_nan()),
                    "{backend} cell {cell}: {row:?}"
                );
                continue;
            }
            let soft_max = row.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
            let want = v.data[cell] as f64;
            assert!(
                (soft_max - want).abs() <= 1e-4 * want.abs().max(1.0),
                "{backend} cell {cell}: log sum exp Q = {soft_max}, V = {want}"
            );
        }
        let o = softvi(&[&base[..], &["--horizon", "3", "--all-steps", "--no-policy"]].concat());
        assert!(o.status.success(), "{}", stderr(&o));
        let q = npy::read_float(&out.join("q.npy")).unwrap();
        assert_eq!(q.shape, vec![1, 3, 4, 5, 8]);
        assert!(!out.join("policy.npy").exists());
    }
}

#[test]
fn grid_occupancy_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let map = write(tmp.path(), "small.map", SMALL_MAP.as_bytes());
    let out_s = out.to_str().unwrap();
    let base = [
        "solve", "--map", &map, "--goal", "4,0", "--goal", "0,2", "--out", out_s,
    ];
    for backend in ["cpu", "gpu"] {
        if backend == "gpu" && !gpu_available() {
            continue;
        }
        let run = |extra: &[&str]| softvi(&[&base[..], &["--backend", backend], extra].concat());
        let o = run(&[
            "--occupancy",
            "--start",
            "0,0",
            "--start",
            "4,3",
            "--gamma",
            "0.9",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let d = npy::read_float(&out.join("occupancy.npy")).unwrap();
        assert_eq!(d.shape, vec![2, 4, 5]);
        assert!(d.data[5 + 1].is_nan(), "wall at X=1,Y=1");
        // The discounted occupancy sums to at most 1 / (1 - gamma) = 10 and at least the
        // start mass.
        let total: f64 = d.data[..20]
            .iter()
            .filter(|x| x.is_finite())
            .map(|&x| x as f64)
            .sum();
        assert!((1.0..=10.0 + 1e-4).contains(&total), "{total}");
        assert_eq!(summary(&out)["starts"], serde_json::json!([[0, 0], [4, 3]]));
        let o = run(&[
            "--occupancy",
            "--horizon",
            "6",
            "--all-steps",
            "--gamma",
            "1",
            "--slip",
            "0.2",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let d = npy::read_float(&out.join("occupancy.npy")).unwrap();
        assert_eq!(d.shape, vec![2, 7, 4, 5]);
        assert_eq!(
            npy::read_float(&out.join("values.npy")).unwrap().shape,
            vec![2, 7, 4, 5]
        );
        assert_eq!(
            npy::read_float(&out.join("policy.npy")).unwrap().shape,
            vec![2, 6, 4, 5, 8]
        );
        // D_0 is uniform over the 13 free non-goal cells; mass stops at the goal, so each step
        // holds what has not yet stopped plus what stopped at that step.
        let d0: f64 = d.data[..20]
            .iter()
            .filter(|x| x.is_finite())
            .map(|&x| x as f64)
            .sum();
        assert!((d0 - 1.0).abs() <= 1e-5, "{d0}");
    }
    for (start, message) in [("9,0", "off the 5x4 map"), ("1,1", "blocked")] {
        let o = softvi(
            &[
                &base[..],
                &["--backend", "cpu", "--occupancy", "--start", start],
            ]
            .concat(),
        );
        assert!(
            !o.status.success() && stderr(&o).contains(message),
            "{}",
            stderr(&o)
        );
    }
    let o = softvi(&[&base[..], &["--start", "0,0"]].concat());
    assert!(
        !o.status.success() && stderr(&o).contains("--occupancy"),
        "{}",
        stderr(&o)
    );
}

/// Solves that cannot fit this machine's memory are refused before any work (they grew past
/// 9 GB, or aborted after 73 s, before): exit 1, a message saying how much they need and how
/// much the machine has, no output folder. On a GPU too: its readback arrays live on the host.
#[test]
fn oversized_solves_are_refused_before_any_work() {
    if softvi::engine::memory::available_bytes().is_none() {
        eprintln!("\n*** SKIPPING: this machine does not say how much memory it has ***\n");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let billion = ["--maze", "9x9", "--goal", "1,1", "--horizon", "1000000000"];
    let mut cases: Vec<(Vec<&str>, &str)> = vec![
        (
            [&billion[..], &["--all-steps", "--backend", "cpu"]].concat(),
            "every step (--all-steps)",
        ),
        (
            [&billion[..], &["--occupancy", "--backend", "cpu"]].concat(),
            "the occupancy",
        ),
        (
            vec!["--maze", "32768x32768", "--goal", "1,1", "--backend", "cpu"],
            "1073741824 cells",
        ),
    ];
    if gpu_available() {
        cases.push((
            [&billion[..], &["--all-steps", "--backend", "gpu"]].concat(),
            "every step (--all-steps)",
        ));
        cases.push((
            vec!["--maze", "32768x32768", "--goal", "1,1", "--backend", "gpu"],
            "1073741824 cells",
        ));
    }
    for (args, expected) in cases {
        let mut full = vec!["solve", "--out", out.to_str().unwrap()];
        full.extend(&args);
        let o = softvi(&full);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(expected)
                && err.contains(" GB")
                && err.contains("the memory this machine has available"),
            "{args:?}: {err}"
        );
        assert!(!out.exists(), "{args:?} left {}", out.display());
    }
}

/// `--all-steps` on a world whose only free cell is the goal (every free cell a goal): the
/// values and policy of every step, the policy NaN on the goal, on both backends; with
/// `--occupancy` the start is the goal itself (uniform over all free cells when none is left).
#[test]
fn all_steps_where_every_free_cell_is_a_goal() {
    let tmp = tempfile::tempdir().unwrap();
    let map = write(
        tmp.path(),
        "one.map",
        b"type octile\nheight 1\nwidth 3\nmap\n@.@\n",
    );
    for backend in ["cpu", "gpu"] {
        if backend == "gpu" && !gpu_available() {
            continue;
        }
        for occupancy in [false, true] {
            let out = tmp.path().join(format!("{backend}-{occupancy}"));
            let mut args = vec![
                "solve",
                "--map",
                &map,
                "--goal",
                "1,0",
                "--horizon",
                "3",
                "--all-steps",
                "--backend",
                backend,
                "--out",
                out.to_str().unwrap(),
            ];
            if occupancy {
                args.push("--occupancy");
            }
            let o = softvi(&args);
            assert!(o.status.success(), "{args:?}: {}", stderr(&o));
            let values = npy::read_float(&out.join("values.npy")).unwrap();
            assert_eq!(values.shape, vec![1, 4, 1, 3]);
            for t in 0..4 {
                assert_eq!(values.data[t * 3 + 1], 0.0, "{backend}: V_{t} on the goal");
                assert!(values.data[t * 3].is_nan() && values.data[t * 3 + 2].is_nan());
            }
            let policy = npy::read_float(&out.join("policy.npy")).unwrap();
            assert_eq!(policy.shape, vec![1, 3, 1, 3, 8]);
            assert!(policy.data.iter().all(|p| p.is_nan()), "{backend}");
            if occupancy {
                let d = npy::read_float(&out.join("occupancy.npy")).unwrap();
                assert_eq!(d.shape, vec![1, 4, 1, 3]);
                assert_eq!(d.data[1], 1.0, "{backend}: D_0 on the goal");
                assert_eq!(
                    d.data[4], 0.0,
                    "{backend}: D_1: the mass stopped at the goal"
                );
            }
        }
    }
}

/// `--dtype f64` on `--backend cpu`: float64 `.npy` files holding the f64 reference's arrays
/// bit for bit as the library returns them, and layouts that say float64; refused on other
/// backends and on grids, with nothing written.
#[test]
fn dtype_f64_writes_the_reference_in_float64() {
    use softvi::engine::cpu::solve_mdp_cpu_f64;
    use softvi::world::mdp::TabularMdp;
    use softvi::{Horizon, Outputs, SolveOptions};
    let tmp = tempfile::tempdir().unwrap();
    // 5 states, 2 actions, probabilities in thirds and rewards in sevenths: not float32 values.
    let (s, a) = (5, 2);
    let mut p = vec![0.0; s * a * s];
    for state in 0..s {
        for action in 0..a {
            let row = &mut p[(state * a + action) * s..][..s];
            row[(state + 1) % s] += 1.0 / 3.0;
            row[(state + action + 2) % s] += 2.0 / 3.0;
        }
    }
    let r: Vec<f64> = (0..s * a).map(|i| i as f64 / 7.0 - 0.5).collect();
    let npz = npy::encode_npz(&[
        ("P", npy::encode("<f8", &[s, a, s], &p)),
        ("R", npy::encode("<f8", &[s, a], &r)),
    ])
    .unwrap();
    let path = write(tmp.path(), "m.npz", &npz);
    let out = tmp.path().join("f64");
    let settings = [
        "solve",
        "--mdp",
        &path,
        "--horizon",
        "12",
        "--gamma",
        "0.9",
        "--alpha",
        "0.6",
        "--q",
        "--occupancy",
        "--all-steps",
        "--quiet",
    ];
    let o = softvi(
        &[
            &settings[..],
            &[
                "--backend",
                "cpu",
                "--dtype",
                "f64",
                "--out",
                out.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let mdp = TabularMdp::load_npz(std::path::Path::new(&path)).unwrap();
    let options = SolveOptions {
        alpha: 0.6,
        gamma: 0.9,
        horizon: Horizon::Finite(12),
        ..SolveOptions::default()
    };
    let outputs = Outputs {
        policy: true,
        q: true,
        all_steps: true,
        occupancy: true,
    };
    let want = solve_mdp_cpu_f64(&mdp, &options, outputs, &mut |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    let steps = want.steps.unwrap();
    for (file, data) in [
        ("values.npy", &steps.values),
        ("policy.npy", steps.policy.as_ref().unwrap()),
        ("q.npy", steps.q.as_ref().unwrap()),
        ("occupancy.npy", &want.occupancy.as_ref().unwrap().values),
    ] {
        let read = npy::decode(&std::fs::read(out.join(file)).unwrap()).unwrap();
        assert_eq!(read.dtype, "<f8", "{file}");
        let same = read
            .data
            .iter()
            .zip(data.iter())
            .all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(
            same && read.data.len() == data.len(),
            "{file} differs from the library's"
        );
    }
    let layout = summary(&out)["layout"].clone();
    assert!(
        layout["values"].as_str().unwrap().starts_with("float64 "),
        "{layout}"
    );

    // Refused where the arrays would not be f64, before any file is written.
    let map = write(
        tmp.path(),
        "open.map",
        b"type octile\nheight 2\nwidth 3\nmap\n...\n...\n",
    );
    for (args, message) in [
        (
            [&settings[..], &["--backend", "native", "--dtype", "f64"]].concat(),
            "--dtype f64 needs --backend cpu",
        ),
        (
            vec![
                "solve",
                "--map",
                &map,
                "--goal",
                "0,0",
                "--backend",
                "cpu",
                "--dtype",
                "f64",
            ],
            "--dtype f64 needs an --mdp solve",
        ),
    ] {
        let refused = tmp.path().join("refused");
        let o = softvi(&[&args[..], &["--out", refused.to_str().unwrap()]].concat());
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(stderr(&o).contains(message), "{args:?}: {}", stderr(&o));
        assert!(
            !refused.join("values.npy").exists(),
            "{args:?} wrote values"
        );
    }
}

/// `--method mpi`: the summary records the method, the full backups (`iterations`) and the
/// evaluation sweeps between them, and the values agree with `--method vi` within both runs'
/// error bounds, on the native engine, the reference and (when an adapter exists) the GPU's
/// kernels; the settings MPI does not support and `--evaluations` without it fail by name and
/// write nothing.
#[test]
fn method_mpi_records_its_sweeps_and_refuses_what_it_cannot_do() {
    let tmp = tempfile::tempdir().unwrap();
    // 37 states on a ring, 3 actions: stay, step +1, jump +5 (probability 0.7, else stay).
    let (s, a) = (37, 3);
    let mut p = vec![0.0; s * a * s];
    for state in 0..s {
        p[(state * a) * s + state] = 1.0;
        p[(state * a + 1) * s + (state + 1) % s] = 1.0;
        p[(state * a + 2) * s + (state + 5) % s] = 0.7;
        p[(state * a + 2) * s + state] += 0.3;
    }
    let r: Vec<f64> = (0..s * a)
        .map(|i| ((i * 7) % 11) as f64 / 11.0 - 0.5)
        .collect();
    let npz = npy::encode_npz(&[
        ("P", npy::encode("<f8", &[s, a, s], &p)),
        ("R", npy::encode("<f8", &[s, a], &r)),
    ])
    .unwrap();
    let path = write(tmp.path(), "ring.npz", &npz);
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let args = [
            &["solve", "--mdp", &path, "--gamma", "0.95"][..],
            &["--quiet", "--out", out.to_str().unwrap()],
            extra,
        ]
        .concat();
        (softvi(&args), out)
    };
    let mut values = Vec::new();
    for (name, extra) in [
        ("vi", &["--backend", "native"][..]),
        ("mpi", &["--backend", "native", "--method", "mpi"]),
        (
            "mpi3",
            &["--backend", "cpu", "--method", "mpi", "--evaluations", "3"],
        ),
    ] {
        let (o, out) = run(name, extra);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let summary = summary(&out);
        let (method, m) = match name {
            "vi" => ("vi", 0),
            "mpi" => ("mpi", softvi::Method::DEFAULT_EVALUATIONS as u64),
            _ => ("mpi", 3),
        };
        assert_eq!(summary["method"], method, "{name}");
        assert_eq!(summary["evaluations_per_improvement"], m, "{name}");
        let improvements = summary["iterations"][0].as_u64().unwrap();
        assert_eq!(
            summary["evaluation_sweeps"][0].as_u64().unwrap(),
            m * (improvements - 1),
            "{name}"
        );
        // Above the f32 floor's reach (1e-6 |V| / (1 - gamma) ~ 2e-4 at |V| ~ 10).
        assert!(
            summary["error_bound"][0].as_f64().unwrap() <= 1e-3,
            "{name}"
        );
        let bytes = std::fs::read(out.join("values.npy")).unwrap();
        values.push(npy::decode_f32(&bytes).unwrap().data);
    }
    for (name, v) in ["mpi", "mpi3"].iter().zip(&values[1..]) {
        // Both within 1e-3 of V* (|V| <= 10: f32 rounding adds 1e-6).
        let gap = (v.iter().zip(&values[0]))
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(gap <= 2.01e-3, "{name}: {gap}");
    }
    for (name, extra, needles) in [
        (
            "optimistic",
            &["--method", "mpi", "--backup", "optimistic", "--alpha", "1"][..],
            &["--method mpi", "--backup expected"][..],
        ),
        (
            "finite",
            &["--method", "mpi", "--horizon", "5"],
            &["--method mpi", "--horizon"],
        ),
        (
            "evaluations",
            &["--evaluations", "4"],
            &["--evaluations", "--method mpi"],
        ),
        (
            "zero",
            &["--method", "mpi", "--evaluations", "0"],
            &["evaluations (--evaluations)"],
        ),
    ] {
        let (o, out) = run(name, extra);
        assert!(!o.status.success(), "{name}");
        let err = stderr(&o);
        for needle in needles {
            assert!(err.contains(needle), "{name}: {err}");
        }
        assert!(!out.exists(), "{name}: wrote {}", out.display());
    }
    if gpu_available() {
        // The GPU's kernels run it too (this model is kept dense: the dense product's rows).
        let (o, out) = run("gpu", &["--method", "mpi", "--backend", "gpu"]);
        assert!(o.status.success(), "gpu: {}", stderr(&o));
        let summary = summary(&out);
        assert_eq!(summary["method"], "mpi");
        let m = softvi::Method::DEFAULT_EVALUATIONS as u64;
        assert_eq!(summary["evaluations_per_improvement"], m);
        let improvements = summary["iterations"][0].as_u64().unwrap();
        assert_eq!(
            summary["evaluation_sweeps"][0].as_u64().unwrap(),
            m * (improvements - 1)
        );
        assert!(summary["error_bound"][0].as_f64().unwrap() <= 1e-3);
        let v = npy::decode_f32(&std::fs::read(out.join("values.npy")).unwrap()).unwrap();
        let gap = (v.data.iter().zip(&values[0]))
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(gap <= 2.01e-3, "gpu: {gap}");
    }
}

/// `summary.json` and the report name how the transitions were stored: a model whose rows
/// are full runs as the dense `[S*A, S]` product on the native engine and the GPU's kernels,
/// a ring with one or two successors per row as sparse rows; the f64 reference reads sparse
/// rows always.
#[test]
fn summary_names_the_transitions_storage() {
    let tmp = tempfile::tempdir().unwrap();
    // 37 states (not a multiple of the 8-state slices), 3 actions.
    let (s, a) = (37, 3);
    let mut ring = vec![0.0; s * a * s];
    for state in 0..s {
        ring[(state * a) * s + state] = 1.0;
        ring[(state * a + 1) * s + (state + 1) % s] = 1.0;
        ring[(state * a + 2) * s + (state + 5) % s] = 0.7;
        ring[(state * a + 2) * s + state] += 0.3;
    }
    // Every entry positive: weights 1..=13 by a fixed hash, rows normalised.
    let mut full: Vec<f64> = (0..s * a * s)
        .map(|i| ((i * 2654435761) % 13 + 1) as f64)
        .collect();
    for row in full.chunks_exact_mut(s) {
        let total: f64 = row.iter().sum();
        row.iter_mut().for_each(|p| *p /= total);
    }
    let r: Vec<f64> = (0..s * a).map(|i| ((i * 7) % 11) as f64 / 11.0).collect();
    let mut backends = vec!["native", "cpu"];
    if gpu_available() {
        backends.push("gpu");
    }
    for (model, p) in [("ring", &ring), ("full", &full)] {
        let npz = npy::encode_npz(&[
            ("P", npy::encode("<f8", &[s, a, s], p)),
            ("R", npy::encode("<f8", &[s, a], &r)),
        ])
        .unwrap();
        let path = write(tmp.path(), &format!("{model}.npz"), &npz);
        for &backend in &backends {
            let out = tmp.path().join(format!("{model}-{backend}"));
            let o = softvi(&[
                "solve",
                "--mdp",
                &path,
                "--backend",
                backend,
                "--out",
                out.to_str().unwrap(),
            ]);
            assert!(o.status.success(), "{model} {backend}: {}", stderr(&o));
            let expected = match (model, backend) {
                ("full", "native" | "gpu") => "dense",
                _ => "csr",
            };
            let summary = summary(&out);
            assert_eq!(summary["mdp"]["transitions"], expected, "{model} {backend}");
            let report = String::from_utf8_lossy(&o.stdout);
            assert!(
                report.contains(&format!("stored {expected})")),
                "{model} {backend}: {report}"
            );
        }
    }
}
