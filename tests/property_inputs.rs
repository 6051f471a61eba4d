//! Properties over generated inputs (proptest; a bounded number of cases per property so that
//! CI stays short, `PROPTEST_CASES=N` for more): no input panics the `.npy` decoder, the map
//! parser, the MDP builder or a solve of what it accepts; and the command line, fed generated
//! goals and trajectory files, exits 0 or 1 (never a panic's 101), writes nothing when it
//! fails, and leaves an earlier result exactly as it was.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::cli::*;
use proptest::collection::vec;
use proptest::prelude::*;
use softvi::io::npy::{self, NpyValues};
use softvi::world::grid::Grid;
use softvi::world::mdp::TabularMdp;
use softvi::{Horizon, Outputs, SolveOptions, solve_mdp_cpu};

/// Cases per in-process property (each takes microseconds).
const CASES: u32 = 256;
/// Cases per command-line property (each runs the binary, tens of milliseconds).
const CLI_CASES: u32 = 24;

/// `.npy` bytes with header text `dict` (version 1.0, padded as NumPy pads) and `body`.
fn npy_bytes(dict: &str, body: &[u8]) -> Vec<u8> {
    let mut header = dict.to_owned();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    out
}

/// Every file of `dir` with its bytes, sorted by name (empty when `dir` is absent).
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap_or_default())
        })
        .collect();
    files.sort();
    files
}

/// A line of a goals or trajectory file as people mistype them: numbers in and out of
/// range, words, signs, separators, comments.
fn messy_line() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        (0u64..12).prop_map(|n| n.to_string()),
        Just("-1".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("x".to_owned()),
        Just("NE".to_owned()),
        Just("STAY".to_owned()),
        Just("1.5".to_owned()),
        Just("#".to_owned()),
        Just("".to_owned()),
    ];
    (
        vec(token, 0..4),
        prop::sample::select(vec![" ", "\t", ",", ", "]),
    )
        .prop_map(|(tokens, sep)| tokens.join(sep))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    /// Arbitrary bytes: an error or an array, never a panic.
    #[test]
    fn npy_decode_takes_any_bytes(bytes in vec(any::<u8>(), 0..200)) {
        let _ = npy::decode(&bytes);
        let _ = npy::decode_float(&bytes);
    }

    /// Well-formed headers with any dtype, any shape (dimensions up to 2^63, whose products
    /// overflow) and any body length: an error or an array whose data has the shape's size.
    #[test]
    fn npy_headers_with_any_shape_decode_or_fail(
        dtype in prop::sample::select(vec!["<f4", "<f8", "<i4", "<i8", "|b1", "<u8", "<c8", "zz"]),
        shape in vec(prop_oneof![0u64..5, Just(1 << 31), Just(1 << 63)], 0..4),
        body in vec(any::<u8>(), 0..64),
    ) {
        let dims: Vec<String> = shape.iter().map(|d| format!("{d}, ")).collect();
        let dict = format!(
            "{{'descr': '{dtype}', 'fortran_order': False, 'shape': ({}), }}",
            dims.concat()
        );
        if let Ok(array) = npy::decode(&npy_bytes(&dict, &body)) {
            let size: usize = array.shape.iter().product();
            prop_assert_eq!(size, array.data.len());
        }
    }

    /// Map text from headers and rows of map characters (and others): an error, or a grid of
    /// the header's size.
    #[test]
    fn map_text_parses_or_fails(
        height in 0usize..6,
        width in 0usize..6,
        rows in vec("[.@GSTOWX# ]{0,6}", 0..7),
        crlf in any::<bool>(),
    ) {
        let newline = if crlf { "\r\n" } else { "\n" };
        let text = format!("type octile\nheight {height}\nwidth {width}\nmap\n")
            + &rows.join(newline);
        if let Ok(grid) = Grid::parse_movingai(&text) {
            prop_assert_eq!((grid.height, grid.width), (height, width));
            prop_assert_eq!(grid.free.len(), height * width);
        }
    }

    /// MDP arrays of small, often inconsistent shapes and values (NaN, negative, unnormalised
    /// rows; R of any rank; optional terminal and initial): `from_arrays` fails or gives an
    /// MDP that validates, and a finite-horizon solve of it with every output returns.
    #[test]
    fn mdp_arrays_build_or_fail_and_built_ones_solve(
        s in 0usize..4,
        a in 0usize..3,
        b in 1usize..3,
        p in vec(prop_oneof![Just(0.0), Just(1.0), Just(0.5), Just(-0.5), Just(f64::NAN)], 0..40),
        r_rank in 0usize..4,
        r_values in vec(prop_oneof![Just(0.0), Just(-1.0), Just(2.5), Just(f64::INFINITY)], 0..30),
        terminal in prop::option::of(vec(prop_oneof![Just(0.0), Just(1.0)], 0..8)),
        initial in prop::option::of(vec(prop_oneof![Just(0.0), Just(1.0), Just(f64::NAN), Just(-1.0)], 0..8)),
    ) {
        let array = |shape: Vec<usize>, data: Vec<f64>| NpyValues { shape, data, dtype: "<f8".into() };
        let mut p = p;
        p.resize(s * a * s, 0.5);
        let r_shape = match r_rank {
            0 => vec![s],
            1 => vec![s, a],
            2 => vec![b, s],
            _ => vec![b, s, a],
        };
        let mut r = r_values;
        r.resize(r_shape.iter().product(), -1.0);
        let mut arrays = HashMap::from([
            ("P".to_owned(), array(vec![s, a, s], p)),
            ("R".to_owned(), array(r_shape, r)),
        ]);
        if let Some(t) = terminal {
            arrays.insert("terminal".into(), array(vec![t.len()], t));
        }
        if let Some(d) = initial {
            arrays.insert("initial".into(), array(vec![d.len()], d));
        }
        if let Ok(mdp) = TabularMdp::from_arrays(&arrays) {
            prop_assert!(mdp.validate().is_ok());
            let options = SolveOptions { horizon: Horizon::Finite(3), ..SolveOptions::default() };
            let every = Outputs { q: true, all_steps: true, occupancy: true, ..Outputs::default() };
            let _ = solve_mdp_cpu(&mdp, &options, every);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CLI_CASES, ..ProptestConfig::default() })]

    /// A generated goals file against an earlier good result in the same folder: exit 0 (a
    /// new result) or 1 with a message; on 1 the folder is byte for byte what it was.
    #[test]
    fn goals_files_succeed_or_leave_the_earlier_result(lines in vec(messy_line(), 0..5)) {
        let tmp = tempfile::tempdir().unwrap();
        let map = write(tmp.path(), "small.map", SMALL_MAP.as_bytes());
        let out = tmp.path().join("out");
        let out_s = out.to_str().unwrap();
        let base = ["solve", "--map", &map, "--backend", "cpu", "--horizon", "2", "--out", out_s];
        let o = softvi(&[&base[..], &["--goal", "0,0"]].concat());
        prop_assert!(o.status.success(), "{}", stderr(&o));
        let before = snapshot(&out);
        let goals = write(tmp.path(), "goals.txt", lines.join("\n").as_bytes());
        let o = softvi(&[&base[..], &["--goals", &goals]].concat());
        match o.status.code() {
            Some(0) => {}
            Some(1) => {
                prop_assert!(!stderr(&o).trim().is_empty(), "exit 1 without a message");
                prop_assert_eq!(snapshot(&out), before, "a failed run changed the result");
            }
            other => prop_assert!(false, "exit {:?}: {}", other, stderr(&o)),
        }
    }

    /// A generated trajectory for `infer`: exit 0 or 1 with a message; nothing written on 1.
    #[test]
    fn trajectory_files_succeed_or_write_nothing(lines in vec(messy_line(), 0..6)) {
        let tmp = tempfile::tempdir().unwrap();
        let map = write(tmp.path(), "small.map", SMALL_MAP.as_bytes());
        let walk = write(tmp.path(), "walk.txt", lines.join("\n").as_bytes());
        let out = tmp.path().join("post");
        let o = softvi(&[
            "infer", "--map", &map, "--goal", "4,0", "--goal", "1,3", "--backend", "cpu",
            "--horizon", "6", "--trajectory", &walk, "--out", out.to_str().unwrap(),
        ]);
        match o.status.code() {
            Some(0) => prop_assert!(out.join("posterior.npy").exists()),
            Some(1) => {
                prop_assert!(!stderr(&o).trim().is_empty(), "exit 1 without a message");
                prop_assert!(!out.exists(), "a failed run wrote {}", out.display());
            }
            other => prop_assert!(false, "exit {:?}: {}", other, stderr(&o)),
        }
    }
}

/// Runs softvi with `args` (any bytes) and returns (exit code, stderr).
fn run_os(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_softvi"))
        .args(args)
        .output()
        .unwrap();
    (o.status.code(), stderr(&o))
}

/// Paths that are not UTF-8 (a Linux file name may hold any byte) are refused with exit 1 and
/// a message naming the flag, in --map, --data and a merge's shard folder (each panicked,
/// exit 101, when summary.json recorded the path); and input files that are no regular
/// files (`/dev/zero` read until memory ran out; a FIFO as a shard's values.npy hung merge)
/// are refused at once, naming the file. Nothing is written.
#[test]
#[cfg(unix)]
fn odd_paths_and_special_files_are_refused() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let odd = t.join(OsStr::from_bytes(b"caf\xe9"));
    std::fs::create_dir(&odd).unwrap();
    let map = odd.join("small.map");
    std::fs::write(&map, SMALL_MAP).unwrap();
    let out = t.join("out");
    let o = |s: &'static str| OsStr::new(s);
    let (code, err) = run_os(&[
        o("solve"),
        o("--map"),
        map.as_os_str(),
        o("--goal"),
        o("4,3"),
        o("--out"),
        out.as_os_str(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--map") && err.contains("not valid UTF-8"),
        "{err}"
    );
    assert!(!out.exists());
    let data = odd.join("data.npz");
    let one = [1];
    let npz = npy::encode_npz(&[
        ("s", npy::encode("<i8", &one, &[0.])),
        ("a", npy::encode("<i8", &one, &[0.])),
        ("r", npy::encode("<f8", &one, &[1.])),
        ("s_next", npy::encode("<i8", &one, &[1.])),
    ])
    .unwrap();
    std::fs::write(&data, npz).unwrap();
    let (code, err) = run_os(&[
        o("qlearn"),
        o("--data"),
        data.as_os_str(),
        o("--states"),
        o("2"),
        o("--actions"),
        o("1"),
        o("--out"),
        out.as_os_str(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--data") && err.contains("not valid UTF-8"),
        "{err}"
    );
    assert!(!out.exists());
    // A shard in a folder of that name.
    let good_map = write(t, "small.map", SMALL_MAP.as_bytes());
    let shard = odd.join("s0");
    let (code, err) = run_os(&[
        o("solve"),
        o("--map"),
        OsStr::new(&good_map),
        o("--goal"),
        o("4,3"),
        o("--goal"),
        o("0,0"),
        o("--tasks"),
        o("0/1"),
        o("--out"),
        shard.as_os_str(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = run_os(&[o("merge"), o("--out"), out.as_os_str(), shard.as_os_str()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("shard folder") && err.contains("not valid UTF-8"),
        "{err}"
    );
    assert!(!out.exists());
    // /dev/zero as the map and as the goals file.
    for flags in [
        ["--map", "/dev/zero", "--goal", "1,1"],
        ["--map", good_map.as_str(), "--goals", "/dev/zero"],
    ] {
        let mut args = vec!["solve", "--out", out.to_str().unwrap()];
        args.extend(flags);
        let o = softvi(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{flags:?}: {err}");
        assert!(
            err.contains("/dev/zero is a device, pipe or socket, not a regular file"),
            "{err}"
        );
        assert!(!out.exists());
    }
    // A FIFO in place of a shard's values.npy.
    let plain = t.join("plain");
    let o = softvi(&[
        "solve",
        "--map",
        &good_map,
        "--goal",
        "4,3",
        "--goal",
        "0,0",
        "--tasks",
        "0/1",
        "--out",
        plain.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_file(plain.join("values.npy")).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(plain.join("values.npy"))
        .status()
        .unwrap();
    assert!(made.success());
    let o = softvi(&[
        "merge",
        "--out",
        out.to_str().unwrap(),
        plain.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("values.npy is a device, pipe or socket"),
        "{err}"
    );
    assert!(!out.exists());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    /// Generated datasets (states 1..5, actions 1..3, any transitions, rewards up to 1e39,
    /// done or not) into qlearn at gamma = 1 without horizon: refused with a message, or every
    /// state with data has a finite value and every seen pair a finite Q (before, a loop with
    /// no done gave V = -inf and Q NaN with status converged). A divergence (values past
    /// float32) is reported as such, with no values.
    #[test]
    fn qlearn_returns_finite_values_or_refuses(
        (states, actions, rows) in (1usize..5, 1usize..3).prop_flat_map(|(s, a)| {
            let row = (0..s as i64, 0..a as i64, prop_oneof![-2.0..2.0f64, Just(1e39)],
                       0..s as i64, any::<bool>());
            (Just(s), Just(a), vec(row, 1..8))
        })
    ) {
        use softvi::qlearn::{Dataset, qlearn};
        let data = Dataset {
            states,
            actions,
            datasets: 1,
            length: rows.len(),
            s: rows.iter().map(|r| r.0).collect(),
            a: rows.iter().map(|r| r.1).collect(),
            r: rows.iter().map(|r| r.2).collect(),
            s_next: rows.iter().map(|r| r.3).collect(),
            done: rows.iter().map(|r| r.4).collect(),
        };
        let options = SolveOptions {
            alpha: 0.5,
            gamma: 1.0,
            horizon: Horizon::Infinite { tol: 1e-6, max_iters: 20_000 },
            ..SolveOptions::default()
        };
        let learned = qlearn(&mut softvi::CpuReference, &data, &options, &mut softvi::keep_going);
        match learned {
            Err(e) => prop_assert!(!e.to_string().is_empty()),
            // Reported, as solve reports it (exit 3): values past float32.
            Ok(q) if q.status == softvi::Status::Diverged => {}
            Ok(q) => {
                for s in 0..states {
                    let seen: Vec<usize> = (0..actions)
                        .filter(|&a| rows.iter().any(|r| r.0 == s as i64 && r.1 == a as i64))
                        .collect();
                    if seen.is_empty() {
                        continue;
                    }
                    prop_assert!(q.values[s].is_finite(), "V({s}) = {}", q.values[s]);
                    for a in seen {
                        prop_assert!(q.q[s * actions + a].is_finite(), "Q({s},{a})");
                    }
                }
            }
        }
    }
}
