//! Modified policy iteration (`Method::Mpi`) on the GPU's grid kernels: the improvement
//! (`grid_backup` with `IMPROVE`) and the exp-free evaluation sweep (`evaluate`) of
//! `shaders/grid_backup.wgsl` against their f64 twins (`engine::cpu::policy_evaluation`, driven
//! by the reference's `iterate_mpi_cpu`), and the stopped solve against value iteration's
//! fixed point (an f64 solve to 1e-13). Grids whose sizes are not multiples of the workgroup
//! (64) or the quad (4), with walls, slip, reward maps, 4- and 8-connectivity, several tasks,
//! alpha 0 and 0.5, gamma 0.9 and 0.99, an odd and an even number of evaluation sweeps (the
//! sweeps alternate through a third value array, so the parity decides where the improvement
//! reads from); the bits of each task independent of its batch, of banding and of sharding.

// Per-task loops index several per-task arrays at once.
#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use softvi::{
    Connectivity, EngineOptions, GridEngine, GridProblem, Horizon, Method, Outputs, Solution,
    SolveOptions, Status, solve_cpu, solve_sharded,
};

fn options(alpha: f64, gamma: f64, tol: f64, max_iters: u32, method: Method) -> SolveOptions {
    SolveOptions {
        alpha,
        gamma,
        horizon: Horizon::Infinite { tol, max_iters },
        method,
        ..Default::default()
    }
}

/// 4 tasks on a 37 x 45 map (20% walls; width padded to 48, 17 quad columns of 12 x 37 rows
/// per task: not a multiple of 64), slip 0.1, each task with a reward map in [-0.5, 0.5]: the
/// cells' Q then never tie exactly except where both sides round alike (blocked moves that
/// stay), so the first argmax at alpha 0 is the same action in f32 and f64 and the twin
/// comparison is one of rounding alone. (With equal rewards the hard max's near-ties break
/// differently in f32 and f64, and the evaluation sweeps then follow different policies until
/// the next improvement: a tie-breaking difference, not an error.)
fn problem(connectivity: Connectivity) -> GridProblem {
    let stay = connectivity == Connectivity::Eight;
    let mut problem = random_problem(37, 45, 4, connectivity, stay, 0.1, 11);
    let maps: Vec<_> = problem.tasks.iter().map(|t| t.reward.clone()).collect();
    problem.tasks[0].reward = maps[3].clone();
    problem.tasks[2].reward = maps[1].clone();
    problem
}

/// Largest finite |V|.
fn max_abs(values: &[f32]) -> f64 {
    (values.iter())
        .filter(|v| v.is_finite())
        .fold(0.0, |m: f64, &v| m.max(v.abs() as f64))
}

/// What f32 arithmetic may add to the f64 twin's values: each sweep rounds every value to
/// within a few ulps of max |V| (4 here: the sums of Q, the product by gamma, the log-sum-exp),
/// and the backups contract earlier roundings by gamma, so they add up to at most 4 ulps of
/// max |V| / (1 - gamma), whatever the number of sweeps.
fn f32_drift(max_v: f64, gamma: f64) -> f64 {
    4.0 * f32::EPSILON as f64 * max_v.max(1.0) / (1.0 - gamma)
}

/// Per task max |a - b| (NaN on both sides, walls, counts as equal).
fn task_errors(a: &[f32], b: &[f32], tasks: usize) -> Vec<f64> {
    let n = a.len() / tasks;
    (0..tasks)
        .map(|t| {
            (t * n..(t + 1) * n)
                .map(|i| {
                    if b[i].is_nan() {
                        assert!(a[i].is_nan(), "cell {i}: {} vs NaN", a[i]);
                        0.0
                    } else {
                        (a[i] as f64 - b[i] as f64).abs()
                    }
                })
                .fold(0.0, f64::max)
        })
        .collect()
}

fn gpu_solve(problem: &GridProblem, options: &SolveOptions) -> Option<Solution> {
    with_engine(|e| e.solve(problem, options, Outputs::VALUES).unwrap())
}

/// The first k steps of modified policy iteration (max_iters = k improvements, tol far below
/// reach) on the GPU equal the reference's within f32 rounding: after the first improvement
/// (k = 1: a plain backup), every later step runs `evaluations` evaluation sweeps under the
/// last improvement's policy.
#[test]
fn mpi_steps_match_the_reference_twin() {
    for connectivity in [Connectivity::Four, Connectivity::Eight] {
        let problem = problem(connectivity);
        for alpha in [0.0, 0.5] {
            for gamma in [0.9, 0.99] {
                for evaluations in [1, 4] {
                    for steps in [1, 2, 3, 12] {
                        let o = options(alpha, gamma, 1e-12, steps, Method::Mpi { evaluations });
                        let Some(gpu) = gpu_solve(&problem, &o) else {
                            return;
                        };
                        let cpu = solve_cpu(&problem, &o, Outputs::VALUES).unwrap();
                        let what = format!(
                            "{connectivity:?} alpha {alpha} gamma {gamma} m {evaluations} k {steps}"
                        );
                        assert_eq!(gpu.iterations, vec![steps; 4], "{what}");
                        assert_eq!(cpu.iterations, vec![steps; 4], "{what}");
                        let drift = f32_drift(max_abs(&cpu.values), gamma);
                        let err = max_abs_error(&gpu.values, &cpu.values);
                        assert!(err <= drift, "{what}: {err} > {drift}");
                    }
                }
            }
        }
    }
}

/// Stopped at tol: converged, the reported bound within tol, V within the bound of V* (an f64
/// value-iteration solve to 1e-13), the reference's MPI within f32 rounding of it where both
/// stopped at the same improvement (else within the two bounds: an f32 residual near the
/// threshold may stop a step apart), and no more improvements than plain value iteration's
/// sweeps on the same kernels.
#[test]
fn mpi_reaches_the_fixed_point() {
    for connectivity in [Connectivity::Four, Connectivity::Eight] {
        let problem = problem(connectivity);
        for alpha in [0.0, 0.5] {
            for gamma in [0.9, 0.99] {
                // Above f32's reach on these maps (1e-6 max |V| / (1 - gamma), |V| <= 80):
                // the bound reported is at least that.
                let tol = if gamma == 0.9 { 1e-3 } else { 1e-2 };
                let o = options(alpha, gamma, tol, 20_000, Method::MPI);
                let Some(gpu) = gpu_solve(&problem, &o) else {
                    return;
                };
                let truth = solve_cpu(
                    &problem,
                    &options(alpha, gamma, 1e-13, 1_000_000, Method::Vi),
                    Outputs::VALUES,
                )
                .unwrap();
                let truth_bound = truth.error_bound.iter().copied().fold(0.0, f64::max);
                let reference = solve_cpu(&problem, &o, Outputs::VALUES).unwrap();
                let plain = SolveOptions {
                    extrapolate: false,
                    ..options(alpha, gamma, tol, 20_000, Method::Vi)
                };
                let vi = gpu_solve(&problem, &plain).unwrap();
                let max_v = max_abs(&truth.values);
                // The truth is reported in f32: one rounding of max |V|.
                let truth_rounding = f32::EPSILON as f64 * max_v;
                let err = task_errors(&gpu.values, &truth.values, 4);
                let apart = task_errors(&gpu.values, &reference.values, 4);
                let what = format!("{connectivity:?} alpha {alpha} gamma {gamma}");
                for t in 0..4 {
                    assert_eq!(gpu.status[t], Status::Converged, "{what}");
                    assert!(gpu.error_bound[t] <= tol, "{what}: {:?}", gpu.error_bound);
                    // The bound is that of exact backups; the f32 ones drift by at most
                    // f32_drift from them.
                    let drift = f32_drift(max_v, gamma);
                    assert!(
                        err[t] <= gpu.error_bound[t] + drift + truth_bound + truth_rounding,
                        "{what}: task {t} error {} bound {}",
                        err[t],
                        gpu.error_bound[t]
                    );
                    let allowed = match gpu.iterations[t] == reference.iterations[t] {
                        true => f32_drift(max_v, gamma),
                        false => gpu.error_bound[t] + reference.error_bound[t],
                    };
                    assert!(
                        apart[t] <= allowed,
                        "{what}: task {t} vs reference {} > {allowed} ({:?} vs {:?})",
                        apart[t],
                        gpu.iterations,
                        reference.iterations
                    );
                    assert!(
                        gpu.iterations[t] <= vi.iterations[t],
                        "{what}: {:?} improvements, VI {:?} sweeps",
                        gpu.iterations,
                        vi.iterations
                    );
                }
            }
        }
    }
}

/// Each task's values, bound and improvements are the same bits alone, in the whole batch and
/// in a batch of two: its steps read only its own values, and it freezes at its own check.
#[test]
fn mpi_bits_do_not_depend_on_the_batch() {
    let problem = problem(Connectivity::Eight);
    let cells = problem.grid.cells();
    for alpha in [0.0, 0.5] {
        let o = options(alpha, 0.99, 1e-2, 100_000, Method::Mpi { evaluations: 3 });
        let Some(all) = gpu_solve(&problem, &o) else {
            return;
        };
        // At alpha 0.5 the tasks stop at different improvements: frozen tasks are copied
        // while the others go on.
        let stops = &all.iterations;
        assert!(
            alpha == 0.0 || stops.iter().any(|&i| i != stops[0]),
            "{stops:?}"
        );
        for tasks in [0..1, 1..2, 2..4, 3..4] {
            let part = GridProblem {
                tasks: problem.tasks[tasks.clone()].to_vec(),
                ..problem.clone()
            };
            let got = gpu_solve(&part, &o).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&got.values),
                bits(&all.values[tasks.start * cells..tasks.end * cells]),
                "alpha {alpha} tasks {tasks:?}"
            );
            assert_eq!(got.iterations, all.iterations[tasks.clone()]);
            assert_eq!(got.error_bound, all.error_bound[tasks.clone()]);
        }
    }
}

/// Lowered binding and buffer limits: row bands of one task (halo rows read across bands,
/// the improved policy's window per band), bands of several tasks and several chunks give the
/// same bits as the adapter's limits. A 97 x 61 map (width padded to 64) with 5 tasks.
#[test]
fn banded_mpi_matches_unbanded() {
    let problem = random_problem(97, 61, 5, Connectivity::Eight, true, 0.2, 7);
    let cells = (97 * 64) as u64;
    for alpha in [0.0, 0.5] {
        let o = options(alpha, 0.95, 1e-3, 100_000, Method::Mpi { evaluations: 3 });
        let Some(whole) = gpu_solve(&problem, &o) else {
            return;
        };
        // 10 floats of policy per cell at alpha 0.5 (9 actions and h), 1 at alpha 0.
        let slots = if alpha == 0.0 { 1 } else { 10 };
        let limits = [
            // Row bands: 16 KiB holds 6 rows at alpha 0.5 (64 x 40 bytes each), halos included.
            EngineOptions {
                max_binding_bytes: Some(16 << 10),
                max_buffer_bytes: None,
            },
            // Two tasks per band, chunks of 3 and 2 tasks.
            EngineOptions {
                max_binding_bytes: Some((2 * cells + 64) * 4 * slots),
                max_buffer_bytes: Some(3 * cells * 4 * slots),
            },
        ];
        for limit in limits {
            let Some(mut engine) = small_engine(limit) else {
                return;
            };
            let got = engine.solve(&problem, &o, Outputs::VALUES).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&got.values),
                bits(&whole.values),
                "alpha {alpha} {limit:?}"
            );
            assert_eq!(got.iterations, whole.iterations);
            assert_eq!(got.status, vec![Status::Converged; 5]);
        }
    }
}

/// A binding too small for a row of the improved policy (and its neighbours) but not for a
/// row of values: value iteration runs, MPI is refused by name with the size it needs.
#[test]
fn mpi_beyond_the_binding_limit_is_refused_by_name() {
    let problem = random_problem(5, 1000, 1, Connectivity::Eight, false, 0.0, 3);
    // A row of 1000 cells and its neighbours: 12 kB of values, 108 kB of policy (9 floats
    // per cell at alpha 0.5: 8 actions and h).
    let Some(mut engine) = small_engine(EngineOptions {
        max_binding_bytes: Some(20_000),
        max_buffer_bytes: None,
    }) else {
        return;
    };
    let vi = options(0.5, 0.9, 1e-3, 100_000, Method::Vi);
    engine.solve(&problem, &vi, Outputs::VALUES).unwrap();
    let mpi = options(0.5, 0.9, 1e-3, 100_000, Method::MPI);
    let err = engine.solve(&problem, &mpi, Outputs::VALUES).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, softvi::Error::LimitExceeded { needed, limit: 20_000, .. } if needed > 100_000),
        "{err:?}"
    );
    assert!(
        message.contains("--method mpi") && message.contains("9 floats per cell"),
        "{message}"
    );
}

/// `solve_sharded` over two engines (on the same adapter here) gives the single engine's bits
/// with MPI: each shard's tasks iterate as they would in the whole batch.
#[test]
fn sharded_mpi_equals_the_single_engine() {
    let Some(ctx) = gpu() else {
        return;
    };
    let problem = problem(Connectivity::Four);
    let mut engines = [GridEngine::new(ctx).unwrap(), GridEngine::new(ctx).unwrap()];
    for alpha in [0.0, 0.5] {
        let o = options(alpha, 0.99, 1e-2, 100_000, Method::MPI);
        let sharded = solve_sharded(&mut engines, &problem, &o, Outputs::default()).unwrap();
        let single = engines[0].solve(&problem, &o, Outputs::default()).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&sharded.values), bits(&single.values), "alpha {alpha}");
        assert_eq!(
            bits(sharded.policy.as_ref().unwrap()),
            bits(single.policy.as_ref().unwrap())
        );
        assert_eq!(sharded.iterations, single.iterations);
        assert_eq!(sharded.status, vec![Status::Converged; 4]);
    }
}
