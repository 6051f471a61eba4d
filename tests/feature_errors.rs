//! Typed errors: a caller tells a missing adapter from bad input, a file it cannot read and a
//! request past a limit by the variant, not the message; a hand-built `TabularMdp` that
//! breaks any invariant is refused by every solve instead of panicking.

mod common;

use std::path::Path;

use softvi::world::mdp::Transitions;
use softvi::{Error, Horizon, Outputs, SolveOptions, TabularMdp, keep_going, solve_mdp_cpu};

/// A valid 3-state, 2-action chain with one task; each test breaks one field of it.
fn chain() -> TabularMdp {
    // s0 -a0-> s1, s0 -a1-> s0; s1 -a0-> s2 (0.5) / s1 (0.5), s1 -a1-> s0; s2 absorbing.
    TabularMdp {
        states: 3,
        actions: 2,
        tasks: 1,
        transitions: Transitions::sparse(
            vec![0, 1, 2, 4, 5, 6, 7],
            vec![1, 0, 2, 1, 0, 2, 2],
            vec![1.0, 1.0, 0.5, 0.5, 1.0, 1.0, 1.0],
        ),
        reward: vec![-1.0; 6],
        terminal: vec![false, false, true],
        terminal_value: vec![0.0; 3],
        initial: vec![1.0, 0.0, 0.0],
    }
}

fn options() -> SolveOptions {
    SolveOptions {
        gamma: 0.9,
        horizon: Horizon::Finite(4),
        ..SolveOptions::default()
    }
}

#[test]
fn a_valid_mdp_solves() {
    let mdp = chain();
    mdp.validate().unwrap();
    let one_step = SolveOptions {
        horizon: Horizon::Finite(1),
        ..options()
    };
    let solved = solve_mdp_cpu(&mdp, &one_step, Outputs::default()).unwrap();
    // One backup from V_1 = 0 at alpha = 1: V_0 = log(2 e^-1) = ln 2 - 1 on s0 and s1 (both
    // actions cost 1); s2 keeps its terminal value. f32 output: 1e-6.
    let expected = [2f64.ln() - 1.0, 2f64.ln() - 1.0, 0.0];
    for (v, e) in solved.solution.values.iter().zip(expected) {
        assert!((*v as f64 - e).abs() < 1e-6, "{v} vs {e}");
    }
}

/// Each broken field is an `InvalidInput` naming the array (and index), from `validate`, the
/// CPU solve and, where an adapter exists, the GPU solve alike.
#[test]
fn broken_mdps_are_invalid_input_naming_the_array() {
    type Break = fn(&mut TabularMdp);
    let cases: [(&str, Break, &str); 9] = [
        (
            "indptr too short",
            |m| {
                common::edit_csr(m, |c| {
                    c.indptr.pop();
                })
            },
            "indptr holds 6",
        ),
        (
            "indptr decreasing",
            |m| {
                common::edit_csr(m, |c| {
                    c.indptr[2] = 0;
                })
            },
            "indptr decreases at index 2",
        ),
        (
            "indptr past indices",
            |m| {
                common::edit_csr(m, |c| {
                    c.indptr[6] = 9;
                })
            },
            "indptr ends at 9",
        ),
        (
            "successor out of range",
            |m| {
                common::edit_csr(m, |c| {
                    c.indices[3] = 7;
                })
            },
            "indices[3] = 7",
        ),
        (
            "row sum",
            |m| {
                common::edit_csr(m, |c| {
                    c.probs[2] = 0.25;
                })
            },
            "sums to 0.75",
        ),
        (
            "negative probability",
            |m| {
                common::edit_csr(m, |c| {
                    c.probs[0] = -1.0;
                })
            },
            "is negative",
        ),
        (
            "reward length",
            |m| m.reward.truncate(5),
            "reward holds 5 entries",
        ),
        (
            "non-finite reward",
            |m| m.reward[3] = f64::NAN,
            "state 1, action 1",
        ),
        (
            "initial",
            |m| m.initial[1] = -0.5,
            "initial at task 0, state 1",
        ),
    ];
    let mut engine = common::gpu().map(|ctx| softvi::MdpEngine::new(ctx).unwrap());
    for (what, break_it, expected) in cases {
        let mut mdp = chain();
        break_it(&mut mdp);
        let mut errors = vec![
            mdp.validate().unwrap_err(),
            solve_mdp_cpu(&mdp, &options(), Outputs::default()).unwrap_err(),
        ];
        if let Some(engine) = engine.as_mut() {
            errors.push(
                engine
                    .solve(&mdp, &options(), Outputs::default())
                    .unwrap_err(),
            );
        }
        for error in errors {
            match &error {
                Error::InvalidInput(message) => {
                    assert!(message.contains(expected), "{what}: {message}")
                }
                other => panic!("{what}: expected InvalidInput, got {other:?}"),
            }
        }
    }
}

#[test]
fn a_missing_file_is_an_io_error_with_its_path() {
    let path = Path::new("tests/data/no-such-world.npz");
    match TabularMdp::load_npz(path).unwrap_err() {
        Error::Io {
            path: p, source, ..
        } => {
            assert_eq!(p, path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io, got {other:?}"),
    }
    match softvi::Grid::load_movingai(Path::new("tests/data/maps/none.map")).unwrap_err() {
        Error::Io { .. } => {}
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn bad_settings_are_invalid_input() {
    let bad = SolveOptions {
        alpha: -1.0,
        ..options()
    };
    // The library names the setting as Python does; the command line asks for its flag.
    assert!(matches!(
        solve_mdp_cpu(&chain(), &bad, Outputs::default()),
        Err(Error::InvalidInput(m)) if m.starts_with("alpha must be finite and >= 0")
    ));
    assert!(matches!(
        bad.validate_as(softvi::error::Spelling::Flag),
        Err(Error::InvalidInput(m)) if m.starts_with("alpha (--alpha) must be")
    ));
}

/// `.npy` bytes whose header declares `shape` (a Python tuple) with no data after it.
fn npy_header_only(dtype: &str, shape: &str) -> Vec<u8> {
    let mut header = format!("{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape}, }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes
}

/// A shape whose product overflows usize (it wrapped to 0 and then matched the empty data)
/// is InvalidInput naming the shape, from the `.npy` decoder, from `from_arrays` given such an
/// array by hand, and from an `.npz` holding one (naming the file and the array).
#[test]
fn overflowing_shapes_are_invalid_input() {
    use softvi::io::npy::{self, NpyValues};
    use std::collections::HashMap;
    use std::io::Write;
    let overflowing = "(2147483648, 4, 2147483648)";
    for dtype in ["<f8", "<f4", "|b1"] {
        match npy::decode(&npy_header_only(dtype, overflowing)) {
            Err(Error::InvalidInput(m)) => {
                assert!(m.contains("overflows") && m.contains("2147483648"), "{m}")
            }
            other => panic!("{dtype}: expected InvalidInput, got {other:?}"),
        }
    }
    let mut arrays = HashMap::new();
    arrays.insert(
        "P".to_owned(),
        NpyValues {
            shape: vec![2147483648, 4, 2147483648],
            data: Vec::new(),
            dtype: "<f8".into(),
        },
    );
    arrays.insert(
        "R".to_owned(),
        NpyValues {
            shape: vec![2147483648],
            data: Vec::new(),
            dtype: "<f8".into(),
        },
    );
    match TabularMdp::from_arrays(&arrays) {
        Err(Error::InvalidInput(m)) => {
            assert!(m.contains("\"P\"") && m.contains("overflows"), "{m}")
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("overflow.npz");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    for (name, shape) in [("P", overflowing), ("R", "(2147483648,)")] {
        zip.start_file(
            format!("{name}.npy"),
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        zip.write_all(&npy_header_only("<f8", shape)).unwrap();
    }
    zip.finish().unwrap();
    match TabularMdp::load_npz(&path) {
        Err(Error::InvalidInput(m)) => {
            assert!(m.contains("overflow.npz") && m.contains("overflows"), "{m}")
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

/// A solve that keeps 10^9 steps of a 9x9 maze (terabytes) is refused before any work with
/// LimitExceeded naming the machine's memory, on the CPU reference (which grew past 9 GB
/// before) and on the GPU solver alike; so is sampling 10^9 x 10^9 steps.
#[test]
fn solves_past_the_machine_memory_are_refused_up_front() {
    use softvi::engine::memory;
    use softvi::{CpuReference, GpuSolver, GridProblem, GridSolver, GridTask, MdpSolver};
    if memory::available_bytes().is_none() {
        eprintln!("\n*** SKIPPING: this machine does not say how much memory it has ***\n");
        return;
    }
    let grid = softvi::Grid::generate_maze(9, 9, 0).unwrap();
    let problem = GridProblem {
        tasks: vec![GridTask {
            goals: vec![grid.width + 1],
            reward: None,
        }],
        actions: softvi::ActionSet {
            connectivity: softvi::Connectivity::Eight,
            stay: false,
        },
        slip: 0.0,
        move_cost: softvi::MoveCost::default(),
        grid,
    };
    let options = SolveOptions {
        horizon: Horizon::Finite(1_000_000_000),
        ..SolveOptions::default()
    };
    let refused = |result: softvi::Result<softvi::MdpSolution>, what: &str| match result {
        Err(Error::LimitExceeded {
            needed,
            limit_name,
            limit,
            ..
        }) => {
            assert!(needed > limit, "{what}");
            assert!(
                limit_name.contains("memory this machine has available"),
                "{what}: {limit_name}"
            );
        }
        Err(other) => panic!("{what}: expected LimitExceeded, got {other}"),
        Ok(_) => panic!("{what}: solved"),
    };
    let world = softvi::GridMdp::new(&problem, None).unwrap();
    fn each<S: GridSolver + MdpSolver>(
        solver: &mut S,
        (problem, world, options): (&GridProblem, &softvi::GridMdp, &SolveOptions),
        check: &dyn Fn(softvi::Result<softvi::MdpSolution>, &str),
    ) {
        let backend = MdpSolver::label(solver);
        for outputs in [
            Outputs {
                all_steps: true,
                ..Outputs::default()
            },
            Outputs {
                occupancy: true,
                ..Outputs::default()
            },
        ] {
            let what = format!("{backend} {outputs:?}");
            check(
                solver.solve_grid(problem, None, options, outputs, &mut keep_going),
                &what,
            );
            check(
                solver.solve_mdp(&world.mdp, options, outputs, &mut keep_going),
                &what,
            );
        }
    }
    each(&mut CpuReference, (&problem, &world, &options), &refused);
    if let Some(ctx) = common::gpu() {
        let mut gpu = GpuSolver::new(ctx.clone());
        each(&mut gpu, (&problem, &world, &options), &refused);
        // The grid kernels solving an MDP over the grid's states (IRL on a grid) too.
        let mut kernels = softvi::GridKernelsOnMdp {
            solver: &mut gpu,
            world: &world,
            template: &problem,
        };
        let outputs = Outputs {
            all_steps: true,
            ..Outputs::default()
        };
        refused(
            kernels.solve_mdp(&world.mdp, &options, outputs, &mut keep_going),
            "grid kernels on the MDP",
        );
    }
    let every_step = Outputs {
        all_steps: true,
        ..Outputs::default()
    };
    assert!(matches!(
        softvi::solve_mdp_cpu(&world.mdp, &options, every_step),
        Err(Error::LimitExceeded { .. })
    ));
    // Sampling sizes its trajectories before allocating them.
    let policy = vec![1.0 / 8.0; world.mdp.states * 8];
    match softvi::sample::sample(&world.mdp, &policy, 1, 1_000_000_000, 1_000_000_000, 0) {
        Err(Error::LimitExceeded { what, .. }) => assert!(what.contains("episodes"), "{what}"),
        other => panic!("expected LimitExceeded, got {:?}", other.map(|_| ())),
    }
}

/// What render reads back is checked before drawing: a slip past 1 (it panicked), policy rows
/// that are not distributions (entries of 1e30 drew endless arrows), goals off the map, and
/// more trajectories than a picture draws.
#[test]
fn render_refuses_read_back_data_it_cannot_draw() {
    use softvi::render::{Layer, MAX_TRAJECTORIES, TaskView, render};
    let grid = softvi::Grid::generate_maze(9, 9, 0).unwrap();
    let actions = softvi::ActionSet {
        connectivity: softvi::Connectivity::Four,
        stay: false,
    };
    let cells = grid.cells();
    let values: Vec<f32> = (0..cells)
        .map(|c| if grid.free[c] { -(c as f32) } else { f32::NAN })
        .collect();
    let policy: Vec<f32> = (0..cells * 4)
        .map(|i| if grid.free[i / 4] { 0.25 } else { f32::NAN })
        .collect();
    let goals = [grid.width + 1];
    let view = TaskView {
        grid: &grid,
        actions,
        slip: 0.1,
        goals: &goals,
        values: &values,
        policy: Some(&policy),
        occupancy: None,
    };
    render(&view, Layer::Policy, Some((MAX_TRAJECTORIES, 0))).unwrap();
    let expect = |view: &TaskView, trajectories: Option<(usize, u64)>, text: &str| match render(
        view,
        Layer::Policy,
        trajectories,
    ) {
        Err(Error::InvalidInput(m)) => assert!(m.contains(text), "{text}: {m}"),
        Err(other) => panic!("{text}: expected InvalidInput, got {other}"),
        Ok(_) => panic!("{text}: drawn"),
    };
    expect(&TaskView { slip: 2.0, ..view }, Some((3, 0)), "slip 2");
    let mut huge = policy.clone();
    huge[(grid.width + 3) * 4] = 1e30;
    expect(
        &TaskView {
            policy: Some(&huge),
            ..view
        },
        None,
        "policy (policy.npy) at X=3,Y=1 has an entry 1000000000000000000000000000000",
    );
    let mut half = policy.clone();
    half[(grid.width + 3) * 4] = 0.0;
    expect(
        &TaskView {
            policy: Some(&half),
            ..view
        },
        None,
        "sums to 0.75",
    );
    expect(
        &TaskView {
            goals: &[cells + 5],
            ..view
        },
        None,
        "off the 9x9 map",
    );
    expect(&view, Some((MAX_TRAJECTORIES + 1, 0)), "--trajectories");
}
