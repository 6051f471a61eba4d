//! Rate extrapolation (`solve::RateExtrapolator`, `shaders/extrapolate.wgsl`): it must cut the
//! sweeps of slowly contracting solves, land on the same fixed point as plain value iteration,
//! and do the same thing on both backends and over any banding.

mod common;

use common::*;
use softvi::world::grid_mdp::GridMdp;
use softvi::{
    Backup, EngineOptions, Grid, GridSolver, Horizon, MdpEngine, Method, NativeSolver, Outputs,
    SolveOptions, solve_cpu,
};

fn options(gamma: f64, extrapolate: bool, backup: Backup) -> SolveOptions {
    SolveOptions {
        alpha: 1.0,
        gamma,
        backup,
        horizon: Horizon::Infinite {
            tol: 1e-4,
            max_iters: 100_000,
        },
        extrapolate,
        method: Method::Vi,
    }
}

#[test]
fn extrapolation_cuts_sweeps_and_keeps_the_fixed_point() {
    let grid = Grid::generate_maze(63, 47, 4).unwrap();
    let problem = softvi::bench::reference_problem(grid, 3);
    for (gamma, backup, min_speedup) in [
        (0.99, Backup::Expected, 2.5),
        (0.995, Backup::Optimistic, 2.5),
    ] {
        let plain = solve_cpu(&problem, &options(gamma, false, backup), Outputs::VALUES).unwrap();
        let fast = solve_cpu(&problem, &options(gamma, true, backup), Outputs::VALUES).unwrap();
        let gpu = with_engine(|e| {
            e.solve(&problem, &options(gamma, true, backup), Outputs::VALUES)
                .unwrap()
        });
        // The f32 twin on the same check schedule and f32 floor: the CPU reference now runs
        // on to its f64 floor, the GPU's sweeps are compared with the native engine's.
        let native = NativeSolver::new(None)
            .solve_grid(
                &problem,
                None,
                &options(gamma, true, backup),
                Outputs::VALUES,
                &mut softvi::engine::schedule::keep_going,
            )
            .unwrap()
            .solution;
        let speedup = plain.iterations[0] as f64 / fast.iterations[0] as f64;
        eprintln!(
            "gamma {gamma} {backup:?}: plain {} sweeps, extrapolated {} (cpu) {:?} (gpu)",
            plain.iterations[0],
            fast.iterations[0],
            gpu.as_ref().map(|g| g.iterations[0])
        );
        assert!(
            speedup >= min_speedup,
            "gamma {gamma}: only {speedup:.2}x fewer sweeps"
        );
        // Both stopped at residual <= max(tol, 1e-6 * max|V|): each within that times
        // gamma / (1 - gamma) of V*.
        let scale = plain
            .values
            .iter()
            .filter(|v| v.is_finite())
            .fold(0.0f64, |m, &v| m.max(v.abs() as f64));
        let threshold = 1e-4f64.max(softvi::engine::schedule::RESIDUAL_FLOOR * scale);
        let bound = 2.0 * threshold * gamma / (1.0 - gamma) + 1e-4;
        let err = max_abs_error(&fast.values, &plain.values);
        assert!(err <= bound, "extrapolated vs plain: {err} > {bound}");
        if let Some(gpu) = gpu {
            let err = max_abs_error(&gpu.values, &plain.values);
            // Plus f32 rounding of values near 2 / (1 - gamma), amplified by 1 / (1 - gamma).
            let f32_slack = 8.0 * f32::EPSILON as f64 * 400.0 / (1.0 - gamma);
            assert!(err <= bound + f32_slack, "gpu vs plain: {err}");
            let ratio = gpu.iterations[0] as f64 / native.iterations[0] as f64;
            assert!(
                (0.75..=1.34).contains(&ratio),
                "gpu {} vs native {} sweeps",
                gpu.iterations[0],
                native.iterations[0]
            );
        }
    }
}

/// No extrapolation where it does not apply: hard max, finite horizon, gamma = 1.
#[test]
fn extrapolation_is_off_where_it_does_not_apply() {
    for o in [
        SolveOptions {
            alpha: 0.0,
            ..options(0.99, true, Backup::Expected)
        },
        SolveOptions {
            horizon: Horizon::Finite(100),
            ..options(0.99, true, Backup::Expected)
        },
        SolveOptions {
            gamma: 1.0,
            ..options(0.99, true, Backup::Expected)
        },
    ] {
        assert!(!o.uses_extrapolation(), "{o:?}");
    }
    assert!(options(0.99, true, Backup::Optimistic).uses_extrapolation());
}

/// Near the hard max the slow mode is a wavefront that the max operator soon bends: a jump
/// along it overshoots, raises the residual and must be rolled back, so that the solve costs
/// at most a check window more than plain iteration and lands on the same values.
#[test]
fn bad_jumps_are_rolled_back() {
    let grid = Grid::generate_maze(127, 127, 0).unwrap();
    let problem = softvi::bench::reference_problem(grid, 2);
    let cool = |extrapolate| SolveOptions {
        alpha: 0.1,
        gamma: 0.999,
        ..options(0.999, extrapolate, Backup::Expected)
    };
    let plain = solve_cpu(&problem, &cool(false), Outputs::default()).unwrap();
    let mut solutions = vec![solve_cpu(&problem, &cool(true), Outputs::default()).unwrap()];
    solutions.extend(with_engine(|e| {
        e.solve(&problem, &cool(true), Outputs::default()).unwrap()
    }));
    for s in solutions {
        assert_eq!(s.status, plain.status);
        assert!(
            s.iterations[0] <= plain.iterations[0] + 2 * 16,
            "{} vs plain {}",
            s.iterations[0],
            plain.iterations[0]
        );
        let err = max_abs_error(&s.values, &plain.values);
        assert!(
            err <= 2.0 * 1e-4 * 0.999 / 0.001 + 1e-3,
            "values off by {err}"
        );
    }
}

/// The bits of `values`, so that equal floats compare equal and NaN equals NaN.
fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// Bands change which dispatch updates a cell or state, not its arithmetic, and the residual
/// statistics are maxima and minima: a banded solve must jump at the same checks by the same
/// factors and give the same bits as an unbanded one. Run where jumps happen (and some are
/// rolled back), so that `extrapolate` runs over row bands of a padded grid and over state
/// bands of an MDP and its discounted occupancy.
#[test]
fn banded_jumps_match_unbanded_bit_for_bit() {
    let Some(ctx) = gpu() else {
        return;
    };
    let cool = |extrapolate| SolveOptions {
        alpha: 0.1,
        gamma: 0.999,
        ..options(0.999, extrapolate, Backup::Expected)
    };
    // 127 columns, padded to 128 on the GPU: 16 KiB bindings hold about 30 rows.
    let problem = softvi::bench::reference_problem(Grid::generate_maze(127, 127, 0).unwrap(), 2);
    let small = EngineOptions {
        max_binding_bytes: Some(16 << 10),
        max_buffer_bytes: None,
    };
    let mut whole = softvi::GridEngine::new(ctx).unwrap();
    let mut banded = softvi::GridEngine::with_options(ctx, small).unwrap();
    let plain = whole
        .solve(&problem, &cool(false), Outputs::default())
        .unwrap();
    let one = whole
        .solve(&problem, &cool(true), Outputs::default())
        .unwrap();
    let many = banded
        .solve(&problem, &cool(true), Outputs::default())
        .unwrap();
    assert_ne!(one.iterations, plain.iterations, "no jump happened");
    assert_eq!(many.iterations, one.iterations);
    assert_eq!(many.status, one.status);
    assert!(bits(&many.values) == bits(&one.values), "grid values");
    assert!(bits(many.policy.as_ref().unwrap()) == bits(one.policy.as_ref().unwrap()));

    // The same maze, smaller, as an MDP with its discounted occupancy. Bindings that hold a
    // task's policy but not its transitions split the sweeps and the occupancy into state
    // bands, and the occupancy then gathers pi * P per entry instead of folded weights (other
    // roundings): its bits are compared between two bandings.
    let problem = softvi::bench::reference_problem(Grid::generate_maze(63, 63, 0).unwrap(), 2);
    let mdp = GridMdp::new(&problem, None).unwrap().mdp;
    let outputs = Outputs {
        all_steps: false,
        occupancy: true,
        ..Outputs::default()
    };
    let policy_bytes = (mdp.states * mdp.actions * 4) as u64;
    assert!(mdp.nonzeros() as u64 * 4 > 3 * policy_bytes);
    let engine = |binding: Option<u64>| {
        MdpEngine::with_options(
            ctx,
            EngineOptions {
                max_binding_bytes: binding,
                max_buffer_bytes: None,
            },
        )
        .unwrap()
    };
    let mut whole = engine(None);
    let warm = |extrapolate| SolveOptions {
        ..options(0.99, extrapolate, Backup::Expected)
    };
    let plain = whole.solve(&mdp, &warm(false), outputs).unwrap();
    let one = whole.solve(&mdp, &warm(true), outputs).unwrap();
    let sweeps = |s: &softvi::MdpSolution| {
        let occupancy = s.occupancy.as_ref().unwrap();
        (s.solution.iterations.clone(), occupancy.iterations)
    };
    let d = |s: &softvi::MdpSolution| bits(&s.occupancy.as_ref().unwrap().values);
    assert_ne!(sweeps(&one).0, sweeps(&plain).0, "no jump happened");
    let mut banded = Vec::new();
    for binding in [policy_bytes + 4096, 2 * policy_bytes + 4096] {
        let many = engine(Some(binding))
            .solve(&mdp, &warm(true), outputs)
            .unwrap();
        assert_eq!(sweeps(&many).0, sweeps(&one).0, "binding {binding}");
        assert!(
            bits(&many.solution.values) == bits(&one.solution.values),
            "MDP values"
        );
        banded.push(many);
    }
    assert_ne!(
        sweeps(&banded[0]).1,
        sweeps(&plain).1,
        "no occupancy jump happened"
    );
    assert_eq!(sweeps(&banded[0]).1, sweeps(&banded[1]).1);
    assert!(d(&banded[0]) == d(&banded[1]), "MDP occupancy");
}
