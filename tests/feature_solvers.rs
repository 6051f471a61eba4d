//! One way to solve: every `GridSolver` (the CPU reference, one adapter, several adapters)
//! and every `MdpSolver` returns the same layout and, within the stated f32 tolerances, the
//! same numbers for every output; a grid solved as a grid equals the same grid solved as a
//! tabular MDP over its free cells (`GridMdp`) with the states laid back onto the map.

mod common;

use common::*;
use softvi::world::grid_mdp::GridMdp;
use softvi::{
    Connectivity, CpuReference, GpuSolver, GridSolver, Horizon, MdpSolution, MdpSolver, Outputs,
    ShardedSolver, SolveOptions, keep_going,
};

fn every_output() -> Outputs {
    Outputs {
        policy: true,
        q: true,
        all_steps: true,
        occupancy: true,
    }
}

/// Values and Q within `1e-4` relative (f32 over a dozen backups of values up to ~20), the
/// policy and the occupancy within `1e-4` absolute (probabilities and masses, each <= 1).
fn assert_close(name: &str, gpu: &MdpSolution, cpu: &MdpSolution) {
    let (g, c) = (&gpu.solution, &cpu.solution);
    assert_eq!((g.height, g.width), (c.height, c.width), "{name}: shape");
    assert!(max_relative_error(&g.values, &c.values) < 1e-4, "{name}: V");
    if let (Some(gp), Some(cp)) = (&g.policy, &c.policy) {
        assert!(max_abs_error(gp, cp) < 1e-4, "{name}: pi");
    }
    assert_eq!(
        g.policy.is_some(),
        c.policy.is_some(),
        "{name}: policy present"
    );
    assert_eq!(g.q.is_some(), c.q.is_some(), "{name}: Q present");
    if let (Some(gq), Some(cq)) = (&g.q, &c.q) {
        assert!(max_relative_error(gq, cq) < 1e-4, "{name}: Q");
    }
    match (&gpu.steps, &cpu.steps) {
        (Some(gs), Some(cs)) => {
            assert!(
                max_relative_error(&gs.values, &cs.values) < 1e-4,
                "{name}: V_t"
            );
            assert_eq!(gs.policy.is_some(), cs.policy.is_some(), "{name}: pi_t");
            if let (Some(gp), Some(cp)) = (&gs.policy, &cs.policy) {
                assert!(max_abs_error(gp, cp) < 1e-4, "{name}: pi_t");
            }
            assert_eq!(gs.q.is_some(), cs.q.is_some(), "{name}: Q_t");
            if let (Some(gq), Some(cq)) = (&gs.q, &cs.q) {
                assert!(max_relative_error(gq, cq) < 1e-4, "{name}: Q_t");
            }
        }
        (None, None) => {}
        _ => panic!("{name}: steps present on one side only"),
    }
    match (&gpu.occupancy, &cpu.occupancy) {
        (Some(gd), Some(cd)) => {
            assert_eq!(gd.steps, cd.steps, "{name}: occupancy steps");
            assert!(max_abs_error(&gd.values, &cd.values) < 1e-4, "{name}: D");
        }
        (None, None) => {}
        _ => panic!("{name}: occupancy present on one side only"),
    }
}

/// Finite and infinite horizons, every output, on a 13 x 17 grid (not a multiple of the
/// workgroup or quad width), 8-connected with slip: the GPU solver equals the reference.
#[test]
fn grid_solvers_agree_on_every_output() {
    let problem = random_problem(13, 17, 3, Connectivity::Eight, false, 0.1, 5);
    let starts = [problem.grid.width + 1, 5 * problem.grid.width + 9];
    let starts: Vec<usize> = starts
        .into_iter()
        .filter(|&c| problem.grid.free[c])
        .collect();
    let mut gpu = gpu().map(|ctx| GpuSolver::new(ctx.clone()));
    for horizon in [
        Horizon::Finite(9),
        Horizon::Infinite {
            tol: 1e-6,
            max_iters: 10_000,
        },
    ] {
        let options = SolveOptions {
            alpha: 0.5,
            gamma: 0.9,
            horizon,
            ..SolveOptions::default()
        };
        let q_only = Outputs {
            policy: false,
            ..every_output()
        };
        for outputs in [Outputs::default(), every_output(), q_only] {
            // Every step exists for a finite horizon only.
            let outputs = Outputs {
                all_steps: outputs.all_steps && matches!(horizon, Horizon::Finite(_)),
                ..outputs
            };
            let name = format!("{horizon:?} {outputs:?}");
            let cpu = CpuReference
                .solve_grid(&problem, Some(&starts), &options, outputs, &mut keep_going)
                .unwrap();
            assert_eq!(cpu.solution.height, 13, "{name}: laid over the map");
            assert_eq!(cpu.occupancy.is_some(), outputs.occupancy, "{name}");
            assert_eq!(cpu.solution.policy.is_some(), outputs.policy, "{name}");
            assert_eq!(cpu.solution.q.is_some(), outputs.q, "{name}");
            if let Some(gpu) = gpu.as_mut() {
                let solved = gpu
                    .solve_grid(&problem, Some(&starts), &options, outputs, &mut keep_going)
                    .unwrap();
                assert_close(&name, &solved, &cpu);
            }
        }
    }
}

/// The grid as a tabular MDP (`MdpSolver` over `GridMdp`), laid back onto the map, equals
/// the grid solve: the two layouts agree cell for cell.
#[test]
fn a_grid_as_an_mdp_equals_the_grid() {
    let problem = random_problem(11, 9, 2, Connectivity::Four, true, 0.2, 8);
    let options = SolveOptions {
        alpha: 1.0,
        gamma: 0.95,
        horizon: Horizon::Finite(7),
        ..SolveOptions::default()
    };
    let outputs = every_output();
    let world = GridMdp::new(&problem, None).unwrap();
    let mut solvers: Vec<Box<dyn MdpSolver>> = vec![Box::new(CpuReference)];
    if let Some(ctx) = gpu() {
        solvers.push(Box::new(GpuSolver::new(ctx.clone())));
    }
    let grid = CpuReference
        .solve_grid(&problem, None, &options, outputs, &mut keep_going)
        .unwrap();
    for solver in &mut solvers {
        let mut solved = solver
            .solve_mdp(&world.mdp, &options, outputs, &mut keep_going)
            .unwrap();
        assert_eq!(solved.solution.width, world.mdp.states);
        solved.to_cells(&world);
        assert_close(&solver.label(), &solved, &grid);
    }
}

/// Several adapters (Vulkan and GL llvmpipe here) as one `GridSolver`: the same answer as
/// one adapter, bit for bit (the same kernels on the same tasks); every step is refused with
/// a message saying plain solves only.
#[test]
fn sharded_solver_equals_one_adapter() {
    let Some(contexts) = every_adapter() else {
        return;
    };
    let problem = random_problem(21, 19, 5, Connectivity::Eight, false, 0.1, 2);
    // A finite horizon: every shard runs the same sweeps, so the same kernels on the same
    // task give the same bits (an infinite horizon stops when a shard's batch converges).
    let options = SolveOptions {
        horizon: Horizon::Finite(20),
        ..SolveOptions::default()
    };
    let plain = Outputs {
        q: true,
        ..Outputs::default()
    };
    let mut single = GpuSolver::new(contexts[0].clone());
    let one = single
        .solve_grid(&problem, None, &options, plain, &mut keep_going)
        .unwrap();
    let mut sharded = ShardedSolver::new(vec![contexts[0].clone(), contexts[0].clone()]).unwrap();
    let both = sharded
        .solve_grid(&problem, None, &options, plain, &mut keep_going)
        .unwrap();
    let (one, both) = (&one.solution, &both.solution);
    for (x, y) in [
        (&one.values, &both.values),
        (one.policy.as_ref().unwrap(), both.policy.as_ref().unwrap()),
        (one.q.as_ref().unwrap(), both.q.as_ref().unwrap()),
    ] {
        assert_eq!(x.len(), y.len());
        for (a, b) in x.iter().zip(y) {
            assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
        }
    }
    let mut across = ShardedSolver::new(contexts).unwrap();
    let mixed = across
        .solve_grid(&problem, None, &options, plain, &mut keep_going)
        .unwrap();
    // Different backends may round differently: 1e-5 relative over 20 f32 backups.
    assert!(max_relative_error(&mixed.solution.values, &one.values) < 1e-5);
    assert!(max_relative_error(mixed.solution.q.as_ref().unwrap(), one.q.as_ref().unwrap()) < 1e-5);
    let refused = across
        .solve_grid(&problem, None, &options, every_output(), &mut keep_going)
        .unwrap_err();
    assert!(
        refused.to_string().contains("plain grid solves only"),
        "{refused}"
    );
}

/// A progress callback that answers `Break` stops every solver at that convergence check with
/// `Error::Cancelled` (how Ctrl-C reaches a solve); one that keeps going reaches the same
/// solve's end, so the stop is the callback's doing.
#[test]
fn a_progress_callback_cancels_the_solve() {
    use std::ops::ControlFlow;
    let problem = random_problem(15, 13, 2, Connectivity::Eight, false, 0.1, 4);
    let world = GridMdp::new(&problem, None).unwrap();
    // gamma 0.999 with tol 1e-9 needs far more than two checks.
    let options = SolveOptions {
        gamma: 0.999,
        horizon: Horizon::Infinite {
            tol: 1e-9,
            max_iters: 100_000,
        },
        ..SolveOptions::default()
    };
    let mut solvers: Vec<Box<dyn GridSolverAndMdp>> = vec![Box::new(CpuReference)];
    if let Some(ctx) = gpu() {
        solvers.push(Box::new(GpuSolver::new(ctx.clone())));
    }
    for solver in &mut solvers {
        let label = GridSolver::label(solver.as_mut());
        let mut checks = 0;
        let mut stop_at_second = |p: &softvi::Progress| {
            checks += 1;
            assert!(p.sweeps > 0, "{label}: progress after sweeps");
            if checks == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let grid = solver.solve_grid(
            &problem,
            None,
            &options,
            Outputs::default(),
            &mut stop_at_second,
        );
        assert!(
            matches!(grid, Err(softvi::Error::Cancelled { sweeps }) if sweeps >= 2),
            "{label}: grid solve {:?}",
            grid.err()
        );
        let mdp = solver.solve_mdp(&world.mdp, &options, Outputs::default(), &mut |_| {
            ControlFlow::Break(())
        });
        assert!(
            matches!(mdp, Err(softvi::Error::Cancelled { sweeps }) if sweeps > 0),
            "{label}: MDP solve {:?}",
            mdp.err()
        );
        let whole = solver
            .solve_mdp(&world.mdp, &options, Outputs::default(), &mut keep_going)
            .unwrap();
        assert!(
            whole.solution.iterations[0] > 32,
            "{label}: more than two checks"
        );
    }
}

/// Both solver traits behind one box.
trait GridSolverAndMdp: GridSolver + MdpSolver {}
impl<T: GridSolver + MdpSolver> GridSolverAndMdp for T {}

/// The CPU reference in f64 (`solve_mdp_cpu_f64`) is the same computation as the f32 report,
/// unrounded: values, policy and Q of every step round to the f32 solve's bits, and they carry
/// more than f32 precision (else the f64 report would be a widened f32 one).
#[test]
fn the_f64_reference_rounds_to_the_f32_one() {
    let problem = random_problem(9, 7, 3, Connectivity::Eight, false, 0.1, 6);
    let world = GridMdp::new(&problem, None).unwrap();
    let options = SolveOptions {
        alpha: 0.7,
        gamma: 0.9,
        horizon: Horizon::Finite(6),
        ..SolveOptions::default()
    };
    let outputs = every_output();
    let f32s = softvi::solve_mdp_cpu(&world.mdp, &options, outputs).unwrap();
    let f64s =
        softvi::engine::cpu::solve_mdp_cpu_f64(&world.mdp, &options, outputs, &mut keep_going)
            .unwrap();
    let (s32, s64) = (f32s.steps.unwrap(), f64s.steps.unwrap());
    let pairs: [(&str, &[f32], &[f64]); 4] = [
        ("V", &f32s.solution.values, &f64s.solution.values),
        ("V_t", &s32.values, &s64.values),
        (
            "pi_t",
            s32.policy.as_ref().unwrap(),
            s64.policy.as_ref().unwrap(),
        ),
        ("Q_t", s32.q.as_ref().unwrap(), s64.q.as_ref().unwrap()),
    ];
    for (name, narrow, wide) in pairs {
        assert_eq!(narrow.len(), wide.len(), "{name}");
        for (&a, &b) in narrow.iter().zip(wide) {
            assert!(
                a.to_bits() == (b as f32).to_bits() || (a.is_nan() && b.is_nan()),
                "{name}"
            );
        }
        assert!(
            wide.iter()
                .any(|&b| b.is_finite() && b != (b as f32) as f64),
            "{name}: no digit past f32"
        );
    }
    // The occupancy reads the policy at each precision: equal to f32 rounding of pi.
    let (d32, d64) = (f32s.occupancy.unwrap(), f64s.occupancy.unwrap());
    let widened: Vec<f32> = d64.values.iter().map(|&x| x as f32).collect();
    assert!(max_abs_error(&d32.values, &widened) < 1e-6);
}
