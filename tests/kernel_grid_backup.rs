//! GPU `shaders/grid_backup.wgsl` against the CPU reference `reference::grid_backup` on
//! seeded random grids whose sides are not multiples of the 16 x 4 workgroup.
//!
//! Tolerances:
//! - finite horizon (same number of backups on both sides): values within 1e-4 relative to
//!   max(1, |V|) — f32 rounding of a few ulps per backup over at most 30 backups stays two
//!   orders below that; soft policies within 1e-4 absolute (probabilities).
//! - infinite horizon: each side stops with residual <= tol, so each is within
//!   tol * gamma / (1 - gamma) of the fixed point (gamma-contraction); the two may differ by
//!   twice that, plus f32 rounding amplified by 1 / (1 - gamma).
//! - hard max (alpha = 0): the GPU's one-hot action must be a maximiser of the reference Q
//!   within 1e-4 relative (exact ties may break differently in f32 and f64).

mod common;

use common::*;
use softvi::engine::cpu::action_values;
use softvi::engine::layout::GridInputs;
use softvi::{
    Backup, Connectivity, EngineOptions, GridProblem, Horizon, Method, Outputs, SolveOptions,
    Status, solve_cpu,
};

/// Checks that `gpu_policy`'s one-hot actions maximise the reference Q computed from
/// `v_next` (the values the policy's backup reads).
fn assert_hard_policy_optimal(
    problem: &GridProblem,
    options: &SolveOptions,
    gpu_policy: &[f32],
    v_next: &[f32],
) {
    let inputs = GridInputs::new(problem, options);
    let v: Vec<f64> = v_next
        .iter()
        .map(|&x| if x.is_finite() { x as f64 } else { 0.0 })
        .collect();
    let n = inputs.action_count;
    let mut q = vec![0.0; n];
    for task in 0..inputs.tasks {
        for cell in 0..inputs.cells() {
            let index = task * inputs.cells() + cell;
            if inputs.fixed[index] {
                continue;
            }
            action_values(&inputs, task, cell, &v, &mut q);
            let row = &gpu_policy[index * n..(index + 1) * n];
            let chosen: Vec<usize> = (0..n).filter(|&a| row[a] == 1.0).collect();
            assert_eq!(
                chosen.len(),
                1,
                "task {task} cell {cell}: policy {row:?} is not one-hot"
            );
            assert!(row.iter().all(|&p| p == 0.0 || p == 1.0));
            let top = q.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            assert!(
                q[chosen[0]] >= top - 1e-4 * top.abs().max(1.0),
                "task {task} cell {cell}: action {} has Q {} but max is {top}",
                chosen[0],
                q[chosen[0]]
            );
        }
    }
}

fn compare(problem: &GridProblem, options: &SolveOptions, label: &str) -> Option<(f64, f64)> {
    let outputs = Outputs {
        q: true,
        ..Outputs::default()
    };
    let cpu = solve_cpu(problem, options, outputs).unwrap();
    let gpu = with_engine(|e| e.solve(problem, options, outputs).unwrap())?;
    assert_eq!(gpu.status, cpu.status, "{label}");
    assert_eq!(gpu.unreachable, cpu.unreachable, "{label}");
    let (value_err, policy_err);
    match options.horizon {
        Horizon::Finite(t) => {
            assert_eq!(gpu.iterations, vec![t; problem.tasks.len()], "{label}");
            value_err = max_relative_error(&gpu.values, &cpu.values);
            assert!(value_err <= 1e-4, "{label}: value error {value_err}");
            let (gq, cq) = (gpu.q.as_ref().unwrap(), cpu.q.as_ref().unwrap());
            let q_err = max_relative_error(gq, cq);
            assert!(q_err <= 1e-4, "{label}: Q error {q_err}");
        }
        Horizon::Infinite { tol, .. } => {
            let g = options.gamma;
            let scale = cpu
                .values
                .iter()
                .filter(|v| v.is_finite())
                .fold(1.0f64, |m, &v| m.max(v.abs() as f64));
            let bound = 2.0 * tol * g / (1.0 - g) + 8.0 * f32::EPSILON as f64 * scale / (1.0 - g);
            value_err = max_abs_error(&gpu.values, &cpu.values);
            assert!(
                value_err <= bound,
                "{label}: value error {value_err} > bound {bound}"
            );
            // Q = r + gamma E V: within gamma times the value bound.
            let (gq, cq) = (gpu.q.as_ref().unwrap(), cpu.q.as_ref().unwrap());
            let q_err = max_abs_error(gq, cq);
            assert!(q_err <= bound, "{label}: Q error {q_err} > bound {bound}");
            // Identical check schedules: iteration counts agree within one check window,
            // unless tol is near the f32 resolution of V (then the GPU's residual is noisy).
            if tol > 100.0 * f32::EPSILON as f64 * scale {
                for (a, b) in gpu.iterations.iter().zip(&cpu.iterations) {
                    assert!(a.abs_diff(*b) <= 16, "{label}: iterations {a} vs {b}");
                }
            }
        }
    }
    let (gp, cp) = (gpu.policy.as_ref().unwrap(), cpu.policy.as_ref().unwrap());
    if options.alpha == 0.0 {
        let v_next = match options.horizon {
            Horizon::Finite(t) => {
                let shorter = SolveOptions {
                    horizon: Horizon::Finite(t - 1),
                    ..*options
                };
                if t > 1 {
                    solve_cpu(problem, &shorter, Outputs::VALUES)
                        .unwrap()
                        .values
                } else {
                    vec![0.0; cpu.values.len()]
                }
            }
            Horizon::Infinite { .. } => cpu.values.clone(),
        };
        assert_hard_policy_optimal(problem, options, gp, &v_next);
        policy_err = 0.0;
    } else {
        policy_err = max_abs_error(gp, cp);
        let bound = match options.horizon {
            Horizon::Finite(_) => 1e-4,
            // pi depends on Q - V; both sides' V differ by at most the value bound above.
            Horizon::Infinite { tol, .. } => {
                1e-4 + 4.0 * tol / (1.0 - options.gamma) / options.alpha
            }
        };
        assert!(
            policy_err <= bound,
            "{label}: policy error {policy_err} > {bound}"
        );
    }
    Some((value_err, policy_err))
}

#[test]
fn gpu_matches_reference_across_settings() {
    let mut worst = (0.0f64, 0.0f64);
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
                            let Some((v, p)) = compare(&problem, &options, &label) else {
                                return;
                            };
                            worst = (worst.0.max(v), worst.1.max(p));
                        }
                    }
                }
            }
        }
    }
    eprintln!(
        "max GPU-vs-CPU error over {case} settings: values {:.3e}, policy {:.3e}",
        worst.0, worst.1
    );
}

#[test]
fn large_grid_matches_reference() {
    let problem = random_problem(517, 523, 3, Connectivity::Eight, true, 0.1, 99);
    for (backup, alpha) in [(Backup::Expected, 1.0), (Backup::Optimistic, 0.5)] {
        let options = SolveOptions {
            alpha,
            gamma: 0.99,
            backup,
            horizon: Horizon::Finite(12),
            extrapolate: true,
            method: Method::Vi,
        };
        if let Some((v, p)) = compare(&problem, &options, &format!("517x523 {backup:?}")) {
            eprintln!("517x523 {backup:?}: value error {v:.3e}, policy error {p:.3e}");
        }
    }
}

/// Lowered binding and buffer limits force row bands (one task split over several
/// dispatches with halo rows), multi-task bands and several chunks; results must not change.
#[test]
fn banding_and_chunking_match_reference() {
    let mut problem = random_problem(97, 61, 5, Connectivity::Eight, true, 0.2, 7);
    // Rows 40..80 blocked except column 0 of rows 40..60, and rows 60..80 fully: some row
    // band then has no active quad at all.
    for row in 40..80 {
        for col in 0..61 {
            problem.grid.free[row * 61 + col] = col == 0 && row < 60;
        }
    }
    for task in &mut problem.tasks {
        task.goals.retain(|&g| problem.grid.free[g]);
        if task.goals.is_empty() {
            task.goals.push(0);
            problem.grid.free[0] = true;
        }
    }
    let cells = 97 * 61;
    let limits = [
        // V in bands of 61 rows (width padded to 64); the policy in bands of 4 rows, those in
        // rows 60..80 without any active quad.
        EngineOptions {
            max_binding_bytes: Some(16 << 10),
            max_buffer_bytes: None,
        },
        // Two tasks per band, two chunks (3 + 2 tasks).
        EngineOptions {
            max_binding_bytes: Some((2 * cells as u64 + 64) * 4 * 9),
            max_buffer_bytes: Some(3 * cells as u64 * 4),
        },
    ];
    for limit in limits {
        let Some(mut engine) = small_engine(limit) else {
            return;
        };
        for horizon in [
            Horizon::Finite(20),
            Horizon::Infinite {
                tol: 1e-5,
                max_iters: 10_000,
            },
        ] {
            for backup in [Backup::Expected, Backup::Optimistic] {
                let options = SolveOptions {
                    alpha: 0.7,
                    gamma: 0.9,
                    backup,
                    horizon,
                    extrapolate: true,
                    method: Method::Vi,
                };
                let cpu = solve_cpu(&problem, &options, Outputs::default()).unwrap();
                let gpu = engine
                    .solve(&problem, &options, Outputs::default())
                    .unwrap();
                let label = format!("{limit:?} {horizon:?} {backup:?}");
                assert_eq!(gpu.status, cpu.status, "{label}");
                let err = max_abs_error(&gpu.values, &cpu.values);
                assert!(err <= 2.0 * 1e-5 * 9.0 + 1e-4, "{label}: value error {err}");
                let perr =
                    max_abs_error(gpu.policy.as_ref().unwrap(), cpu.policy.as_ref().unwrap());
                assert!(perr <= 1e-3, "{label}: policy error {perr}");
            }
        }
    }
}

/// A request that cannot fit the adapter fails with the limit and the size asked for.
#[test]
fn requests_beyond_the_adapter_name_the_limit() {
    let problem = random_problem(9, 1000, 1, Connectivity::Eight, false, 0.0, 3);
    let options = SolveOptions {
        horizon: Horizon::Finite(2),
        ..SolveOptions::default()
    };
    let tiny_binding = EngineOptions {
        max_binding_bytes: Some(4096),
        max_buffer_bytes: None,
    };
    let Some(mut engine) = small_engine(tiny_binding) else {
        return;
    };
    let err = engine
        .solve(&problem, &options, Outputs::default())
        .unwrap_err();
    match &err {
        softvi::Error::LimitExceeded {
            what,
            limit_name,
            limit: 4096,
            ..
        } => assert!(
            what.contains("1000 cells") && limit_name.contains("max_storage_buffer_binding_size"),
            "{err}"
        ),
        other => panic!("expected LimitExceeded of 4096 bytes, got {other:?}"),
    }
    let tiny_buffer = EngineOptions {
        max_binding_bytes: None,
        max_buffer_bytes: Some(1 << 14),
    };
    let mut engine = small_engine(tiny_buffer).unwrap();
    let err = engine
        .solve(&problem, &options, Outputs::default())
        .unwrap_err();
    assert!(
        matches!(
            &err,
            softvi::Error::LimitExceeded { needed: 36000, limit_name, .. }
                if limit_name.contains("max_buffer_size 16384 bytes")
        ),
        "{err:?}"
    );
}

/// Tiny temperatures (at `--alpha 1e-40` every GPU value was NaN yet "converged";
/// policy rows summed to 0.77..2 at alpha = 1e-6). Below `soft_policy_resolved` (alpha <
/// 1e-5 max(1, |max Q|)) f32 cannot resolve the soft policy and both backends write the hard
/// max's one-hot; elsewhere the row is normalised. Truths: rows sum to 1 within 1e-5 (f32
/// rounding of a normalised row of 8 terms), no value is NaN off the walls, V lies within
/// alpha ln|A| / (1 - gamma) above the hard-max solution, and the GPU's likeliest action
/// maximises the reference Q within the tie width plus the value error bound.
#[test]
fn tiny_alpha_policies_sum_to_one_on_both_backends() {
    let problem = random_problem(37, 53, 2, Connectivity::Eight, false, 0.0, 41);
    let (gamma, tol) = (0.99, 1e-6);
    let outputs = Outputs {
        q: true,
        ..Outputs::default()
    };
    for alpha in [1e-3, 1e-4, 1e-6, 1e-8, 1e-40] {
        let options = SolveOptions {
            alpha,
            gamma,
            backup: Backup::Expected,
            horizon: Horizon::Infinite {
                tol,
                max_iters: 20_000,
            },
            extrapolate: true,
            method: Method::Vi,
        };
        let cpu = solve_cpu(&problem, &options, outputs).unwrap();
        let Some(gpu) = with_engine(|e| e.solve(&problem, &options, outputs).unwrap()) else {
            return;
        };
        let hard_options = SolveOptions {
            alpha: 0.0,
            ..options
        };
        let hard = solve_cpu(&problem, &hard_options, Outputs::VALUES).unwrap();
        let scale = hard
            .values
            .iter()
            .filter(|v| v.is_finite())
            .fold(1.0f64, |m, &v| m.max(v.abs() as f64));
        let rounding =
            2.0 * tol * gamma / (1.0 - gamma) + 8.0 * f32::EPSILON as f64 * scale / (1.0 - gamma);
        let soft_gap = alpha * 8f64.ln() / (1.0 - gamma);
        let mut sums = Vec::new();
        for (name, s) in [("cpu", &cpu), ("gpu", &gpu)] {
            let what = format!("alpha {alpha:e} {name}");
            assert!(
                s.status.iter().all(|&t| t == Status::Converged),
                "{what}: {:?}",
                s.status
            );
            // NaN only on walls and goals: the same places as the hard-max solution's.
            let gap = max_abs_error(&s.values, &hard.values);
            assert!(gap <= soft_gap + rounding, "{what}: |V - V_hard| {gap}");
            sums.push(assert_rows_sum_to_one(
                &what,
                s.policy.as_ref().unwrap(),
                8,
                1e-5,
            ));
            assert_likeliest_action_optimal(
                &what,
                s.policy.as_ref().unwrap(),
                cpu.q.as_ref().unwrap(),
                8,
                |top| 1e-5 * top.abs().max(1.0) + 10.0 * alpha + rounding,
            );
        }
        eprintln!(
            "alpha {alpha:e}: largest |row sum - 1| cpu {:.1e}, gpu {:.1e}",
            sums[0], sums[1]
        );
    }
}

/// Values that overflow f32 (alpha = 1e37: V ~ alpha ln 8 / (1 - gamma)) are a runaway on both
/// backends, never "converged" (the GPU's max() dropped the NaN residual and an
/// infinite max |V| lifted the threshold to inf).
#[test]
fn overflowing_values_diverge_on_both_backends() {
    let problem = random_problem(21, 19, 2, Connectivity::Eight, false, 0.0, 5);
    let options = SolveOptions {
        alpha: 1e37,
        gamma: 0.99,
        ..SolveOptions::default()
    };
    let cpu = solve_cpu(&problem, &options, Outputs::VALUES).unwrap();
    assert!(
        cpu.status.contains(&Status::Diverged),
        "cpu {:?}",
        cpu.status
    );
    let Some(gpu) = with_engine(|e| e.solve(&problem, &options, Outputs::VALUES).unwrap()) else {
        return;
    };
    assert_eq!(gpu.status, cpu.status);
}
