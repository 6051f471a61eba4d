//! The native f32 engine (`--backend native`, what `auto` picks on a CPU-only adapter)
//! against the f64 CPU reference on seeded random grids whose widths are not multiples of the
//! 8-lane rows and whose heights do not split evenly over the threads, and against a closed
//! form.
//!
//! Tolerances (as for the GPU path in `kernel_grid_backup.rs`, whose f32 arithmetic this
//! engine shares):
//! - finite horizon: values and Q within 1e-4 relative to max(1, |V|): f32 rounding of a few
//!   ulps per backup over 25 backups stays two orders below; soft policies within 1e-4.
//! - infinite horizon: each side stops within tol gamma / (1 - gamma) of the fixed point, so
//!   they differ by twice that plus f32 rounding amplified by 1 / (1 - gamma).
//! - hard max (alpha = 0): the one-hot action maximises the reference Q within 1e-4.

mod common;

use common::*;
use softvi::engine::cpu::action_values;
use softvi::engine::layout::GridInputs;
use softvi::engine::native::solve_native;
use softvi::engine::schedule::RESIDUAL_FLOOR;
use softvi::{
    ActionSet, Backup, Connectivity, CpuReference, Grid, GridProblem, GridSolver, GridTask,
    Horizon, Method, MoveCost, NativeSolver, Outputs, Solution, SolveOptions, keep_going,
    solve_cpu,
};

fn native(problem: &GridProblem, options: &SolveOptions, outputs: Outputs) -> Solution {
    NativeSolver::new(None)
        .solve_grid(problem, None, options, outputs, &mut keep_going)
        .unwrap()
        .solution
}

/// Whether `policy`'s one-hot actions maximise the reference Q from `v_next`.
fn assert_hard_policy_optimal(
    problem: &GridProblem,
    options: &SolveOptions,
    policy: &[f32],
    v_next: &[f32],
    label: &str,
) {
    let inputs = GridInputs::new(problem, options);
    let v: Vec<f64> = v_next
        .iter()
        .map(|&x| if x.is_finite() { x as f64 } else { 0.0 })
        .collect();
    let n = inputs.action_count;
    let mut q = vec![0.0; n];
    for index in 0..inputs.tasks * inputs.cells() {
        if inputs.fixed[index] {
            continue;
        }
        let (task, cell) = (index / inputs.cells(), index % inputs.cells());
        action_values(&inputs, task, cell, &v, &mut q);
        let row = &policy[index * n..(index + 1) * n];
        let chosen = row.iter().position(|&p| p == 1.0).expect("one-hot row");
        let top = q.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert!(
            q[chosen] >= top - 1e-4 * top.abs().max(1.0),
            "{label}: task {task} cell {cell}: action {chosen} has Q {} but max is {top}",
            q[chosen]
        );
    }
}

/// The largest finite |V|, at least 1.
fn value_scale(values: &[f32]) -> f64 {
    values
        .iter()
        .filter(|v| v.is_finite())
        .fold(1.0f64, |m, &v| m.max(v.abs() as f64))
}

/// Native vs reference on one problem; returns the value error.
fn compare(problem: &GridProblem, options: &SolveOptions, label: &str) -> f64 {
    let outputs = Outputs {
        q: true,
        ..Outputs::default()
    };
    let cpu = solve_cpu(problem, options, outputs).unwrap();
    let fast = native(problem, options, outputs);
    assert_eq!(fast.status, cpu.status, "{label}");
    assert_eq!(fast.unreachable, cpu.unreachable, "{label}");
    let value_err = match options.horizon {
        Horizon::Finite(t) => {
            assert_eq!(fast.iterations, vec![t; problem.tasks.len()], "{label}");
            let err = max_relative_error(&fast.values, &cpu.values);
            assert!(err <= 1e-4, "{label}: value error {err}");
            let q_err = max_relative_error(fast.q.as_ref().unwrap(), cpu.q.as_ref().unwrap());
            assert!(q_err <= 1e-4, "{label}: Q error {q_err}");
            err
        }
        Horizon::Infinite { tol, .. } => {
            let g = options.gamma;
            let scale = value_scale(&cpu.values);
            // Each side stops within its threshold max(tol, RESIDUAL_FLOOR * max |V|) of a
            // sweep: tol g / (1 - g) from the fixed point.
            let tol = tol.max(RESIDUAL_FLOOR * scale);
            let bound = 2.0 * tol * g / (1.0 - g) + 8.0 * f32::EPSILON as f64 * scale / (1.0 - g);
            let err = max_abs_error(&fast.values, &cpu.values);
            assert!(err <= bound, "{label}: value error {err} > bound {bound}");
            let q_err = max_abs_error(fast.q.as_ref().unwrap(), cpu.q.as_ref().unwrap());
            assert!(q_err <= bound, "{label}: Q error {q_err} > bound {bound}");
            err
        }
    };
    let (fp, cp) = (fast.policy.as_ref().unwrap(), cpu.policy.as_ref().unwrap());
    if options.alpha == 0.0 {
        let v_next = match options.horizon {
            Horizon::Finite(t) => {
                let shorter = SolveOptions {
                    horizon: Horizon::Finite(t - 1),
                    ..*options
                };
                solve_cpu(problem, &shorter, Outputs::VALUES)
                    .unwrap()
                    .values
            }
            Horizon::Infinite { .. } => cpu.values.clone(),
        };
        assert_hard_policy_optimal(problem, options, fp, &v_next, label);
    } else {
        let err = max_abs_error(fp, cp);
        let bound = match options.horizon {
            Horizon::Finite(_) => 1e-4,
            // pi depends on Q - V; both sides' V differ by at most the value bound above.
            Horizon::Infinite { tol, .. } => {
                let tol = tol.max(RESIDUAL_FLOOR * value_scale(&cpu.values));
                1e-4 + 4.0 * tol / (1.0 - options.gamma) / options.alpha
            }
        };
        assert!(err <= bound, "{label}: policy error {err} > {bound}");
    }
    value_err
}

#[test]
fn native_matches_reference_across_settings() {
    let mut worst = 0.0f64;
    let mut case = 0u64;
    for connectivity in [Connectivity::Four, Connectivity::Eight] {
        for stay in [false, true] {
            for slip in [0.0, 0.2] {
                for alpha in [0.0, 0.05, 1.0, 10.0] {
                    for backup in [Backup::Expected, Backup::Optimistic] {
                        if backup == Backup::Optimistic && alpha == 0.0 {
                            continue;
                        }
                        case += 1;
                        let (h, w) = if case.is_multiple_of(2) {
                            (37, 53)
                        } else {
                            (61, 45)
                        };
                        let problem = random_problem(h, w, 3, connectivity, stay, slip, case);
                        for horizon in [
                            Horizon::Finite(25),
                            Horizon::Infinite {
                                tol: 1e-5,
                                max_iters: 20_000,
                            },
                        ] {
                            let options = SolveOptions {
                                alpha,
                                gamma: 0.9,
                                backup,
                                horizon,
                                extrapolate: true,
                                method: Method::Vi,
                            };
                            let label = format!(
                                "{h}x{w} {connectivity:?} stay={stay} slip={slip} alpha={alpha} {backup:?} {horizon:?}"
                            );
                            worst = worst.max(compare(&problem, &options, &label));
                        }
                    }
                }
            }
        }
    }
    eprintln!("max native-vs-reference value error over {case} settings: {worst:.3e}");
}

/// Move costs other than the default, gamma = 1 with goals (unreachable cells excluded), and
/// values spread far wider than f32's exponent range within a row (rewards of -40 on a band
/// of columns at gamma 0.99): the shared exponential's per-cell fallback carries those rows.
#[test]
fn native_matches_reference_on_costs_gamma_one_and_wide_rows() {
    let mut problem = random_problem(29, 67, 2, Connectivity::Eight, true, 0.1, 99);
    problem.move_cost = MoveCost {
        orthogonal: 0.7,
        diagonal: 1.3,
        stay: 0.4,
    };
    let undiscounted = SolveOptions {
        alpha: 0.5,
        gamma: 1.0,
        backup: Backup::Expected,
        horizon: Horizon::Infinite {
            tol: 1e-4,
            max_iters: 50_000,
        },
        extrapolate: true,
        method: Method::Vi,
    };
    let cpu = solve_cpu(&problem, &undiscounted, Outputs::default()).unwrap();
    let fast = native(&problem, &undiscounted, Outputs::default());
    assert_eq!(fast.status, cpu.status);
    assert_eq!(fast.unreachable, cpu.unreachable);
    // max_abs_error also checks that both mark the same cells -inf (excluded as unreachable).
    // gamma = 1: the contraction bound does not apply; the residual at tol on values of a few
    // tens over paths of ~100 steps leaves both within 1e-2 of the fixed point.
    let err = max_abs_error(&fast.values, &cpu.values);
    assert!(err <= 1e-2, "gamma 1: value error {err}");

    let mut wide = random_problem(23, 70, 1, Connectivity::Eight, false, 0.1, 5);
    wide.tasks[0].reward = Some(
        (0..wide.grid.cells())
            .map(|c| if c % 70 >= 40 { -40.0 } else { 0.0 })
            .collect(),
    );
    for horizon in [
        Horizon::Finite(25),
        Horizon::Infinite {
            tol: 1e-4,
            max_iters: 20_000,
        },
    ] {
        let options = SolveOptions {
            alpha: 1.0,
            gamma: 0.99,
            backup: Backup::Expected,
            horizon,
            extrapolate: true,
            method: Method::Vi,
        };
        compare(&wide, &options, &format!("wide rows {horizon:?}"));
    }
}

/// The thread split changes nothing: 1, 2 and 5 threads give the same bits.
#[test]
fn native_threads_do_not_change_results() {
    let problem = random_problem(41, 33, 3, Connectivity::Eight, false, 0.1, 17);
    let options = SolveOptions::default();
    let run = |threads| {
        solve_native(
            &problem,
            &options,
            Outputs::default(),
            None,
            threads,
            &mut keep_going,
        )
        .unwrap()
    };
    let one = run(1);
    for threads in [2, 5] {
        let other = run(threads);
        assert_eq!(other.iterations, one.iterations, "{threads} threads");
        for (a, b) in other.values.iter().zip(&one.values) {
            assert!(a.to_bits() == b.to_bits(), "{threads} threads: {a} vs {b}");
        }
    }
}

/// Warm start: from the converged values the solve stops at its first check and keeps them.
#[test]
fn native_warm_start_keeps_a_fixed_point() {
    let problem = random_problem(19, 27, 2, Connectivity::Eight, false, 0.1, 3);
    let options = SolveOptions::default();
    let cold = native(&problem, &options, Outputs::VALUES);
    let v0: Vec<f64> = cold
        .values
        .iter()
        .map(|&v| if v.is_finite() { v as f64 } else { 0.0 })
        .collect();
    let warm = solve_native(
        &problem,
        &options,
        Outputs::VALUES,
        Some(&v0),
        2,
        &mut keep_going,
    )
    .unwrap();
    assert_eq!(warm.iterations, vec![16; 2]);
    let err = max_abs_error(&warm.values, &cold.values);
    // Within tol gamma / (1 - gamma) of the fixed point on both sides.
    assert!(
        err <= 2.0 * 1e-4 * 0.99 / 0.01,
        "warm start moved values by {err}"
    );
    // A wrong length is refused.
    assert!(
        solve_native(
            &problem,
            &options,
            Outputs::VALUES,
            Some(&v0[1..]),
            2,
            &mut keep_going
        )
        .is_err()
    );
}

/// Independent truth: on a checkerboard every free cell is isolated (orthogonal neighbours
/// blocked, diagonals cut at the corners), so every action stays and
/// `V = (R + alpha ln sum_a exp(-c_a / alpha)) / (1 - gamma)` in closed form; after T backups
/// from 0, `V_T = (1 - gamma^T) V`. Rows of 37 cells (4 full 8-lane chunks and a tail).
#[test]
fn native_isolated_cells_match_closed_form() {
    let (h, w) = (9, 37);
    let grid = Grid {
        height: h,
        width: w,
        free: (0..h * w).map(|c| (c / w + c % w) % 2 == 0).collect(),
    };
    let reward: Vec<f32> = (0..h * w).map(|c| (c % 7) as f32 * 0.25 - 0.5).collect();
    let problem = GridProblem {
        // The goal (cell 0) is isolated too: it changes no other cell.
        tasks: vec![GridTask {
            goals: vec![0],
            reward: Some(reward.clone()),
        }],
        actions: ActionSet {
            connectivity: Connectivity::Eight,
            stay: false,
        },
        slip: 0.1,
        move_cost: MoveCost::default(),
        grid,
    };
    let (alpha, gamma, t) = (0.7f64, 0.9f64, 40u32);
    let options = SolveOptions {
        alpha,
        gamma,
        backup: Backup::Expected,
        horizon: Horizon::Finite(t),
        extrapolate: true,
        method: Method::Vi,
    };
    let fast = native(&problem, &options, Outputs::VALUES);
    let soft = alpha * (4.0 * (-1.0 / alpha).exp() + 4.0 * (-(2f64.sqrt()) / alpha).exp()).ln();
    assert_eq!(fast.values[0], 0.0);
    for (c, &r) in reward.iter().enumerate().skip(1) {
        if !problem.grid.free[c] {
            assert!(fast.values[c].is_nan());
            continue;
        }
        let truth = (r as f64 + soft) * (1.0 - gamma.powi(t as i32)) / (1.0 - gamma);
        let err = (fast.values[c] as f64 - truth).abs();
        // 40 backups of a few f32 ulps of |V| <= 10.
        assert!(
            err <= 1e-4 * truth.abs().max(1.0),
            "cell {c}: {} vs {truth}",
            fast.values[c]
        );
    }
    // The reference agrees too (the same closed form).
    let cpu = CpuReference
        .solve_grid(&problem, None, &options, Outputs::VALUES, &mut keep_going)
        .unwrap();
    assert!(max_relative_error(&fast.values, &cpu.solution.values) <= 1e-4);
}

/// `SOFTVI_NATIVE_VECTORS` caps the row loops' vectors, so that `.ci/run` runs this file at
/// every width the machine has (AVX-512, AVX2 + FMA, baseline): the cap is honoured.
#[test]
fn the_vector_cap_is_honoured() {
    use softvi::engine::native::grid_backup::{VECTORS, VECTORS_VAR, Vectors};
    let vectors = *VECTORS;
    eprintln!("native row loops run at {vectors:?}");
    match std::env::var(VECTORS_VAR).as_deref() {
        Ok("baseline") => assert_eq!(vectors, Vectors::Baseline),
        Ok("avx2") => assert!(vectors <= Vectors::Avx2),
        _ => {}
    }
}

/// A broken problem (a goal past the map, a reward map of the wrong size) is `InvalidInput`
/// from the native solver, as from every solver, before any work: never a panic in the warm
/// start or the engine's layout.
#[test]
fn broken_problems_are_invalid_input() {
    let grid = Grid::generate_maze(9, 7, 1).unwrap();
    let cells = grid.cells();
    for (what, task) in [
        (
            "goal past the map",
            GridTask {
                goals: vec![cells + 3],
                reward: None,
            },
        ),
        (
            "short reward map",
            GridTask {
                goals: vec![grid.width + 1],
                reward: Some(vec![0.0; 5]),
            },
        ),
    ] {
        let problem = GridProblem {
            grid: grid.clone(),
            actions: ActionSet {
                connectivity: Connectivity::Eight,
                stay: false,
            },
            slip: 0.0,
            move_cost: MoveCost::default(),
            tasks: vec![task],
        };
        // gamma 1, no slip, infinite horizon: the case the warm start looks at.
        let options = SolveOptions {
            alpha: 0.1,
            gamma: 1.0,
            ..SolveOptions::default()
        };
        let solved = NativeSolver::new(None).solve_grid(
            &problem,
            None,
            &options,
            Outputs::VALUES,
            &mut keep_going,
        );
        assert!(
            matches!(solved, Err(softvi::Error::InvalidInput(_))),
            "{what}: {:?}",
            solved.err()
        );
    }
}

/// `SOFTVI_NATIVE_VECTORS` with a value that is no vector width is said on stderr (it was
/// ignored silently); the solve goes on with the widest vectors and succeeds.
#[test]
fn an_unknown_vectors_cap_is_said() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_softvi"))
        .args([
            "solve",
            "--maze",
            "9x9",
            "--goal",
            "1,1",
            "--backend",
            "native",
            "--out",
        ])
        .arg(&out)
        .env("SOFTVI_NATIVE_VECTORS", "nonsense")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("SOFTVI_NATIVE_VECTORS=\"nonsense\" is not avx512, avx2 or baseline"),
        "{err}"
    );
}

/// At alpha = 0 the sweep runs the hard max as one vectorised row loop: bit for bit the
/// per-cell form (`NativeGrid::cell_value`, the shader's arithmetic) on every free cell, for 4
/// and 8 moves, with and without STAY, slip and reward maps, from random values.
#[test]
fn the_hard_max_row_loop_is_the_per_cell_form() {
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};
    use softvi::engine::native::NativeGrid;
    let mut rng = StdRng::seed_from_u64(17);
    for (k, (connectivity, stay, slip)) in [
        (Connectivity::Four, false, 0.0),
        (Connectivity::Four, true, 0.2),
        (Connectivity::Eight, false, 0.1),
        (Connectivity::Eight, true, 0.0),
    ]
    .into_iter()
    .enumerate()
    {
        let problem = random_problem(23, 37, 3, connectivity, stay, slip, 40 + k as u64);
        let options = SolveOptions {
            alpha: 0.0,
            gamma: 0.97,
            ..Default::default()
        };
        let inputs = GridInputs::new(&problem, &options);
        let grid = NativeGrid::new(&inputs);
        let v0: Vec<f64> = (0..inputs.tasks * inputs.cells())
            .map(|_| rng.random_range(-30.0..5.0))
            .collect();
        let state = grid.state(&v0);
        let mut next = state.clone();
        grid.sweep(&state, &mut next, &[false; 3], 2);
        let mut checked = 0;
        for t in 0..inputs.tasks {
            for c in 0..inputs.cells() {
                if inputs.fixed[t * inputs.cells() + c] {
                    continue;
                }
                let p = grid.padded(t, c);
                let want = grid.cell_value(t, p, &state.v);
                assert_eq!(
                    next.v[p].to_bits(),
                    want.to_bits(),
                    "case {k} task {t} cell {c}"
                );
                checked += 1;
            }
        }
        assert!(checked > 1000, "{checked}");
    }
}
