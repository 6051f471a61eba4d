//! Modified policy iteration (`Method::Mpi`, `--method mpi`) against value iteration's fixed
//! point: on random MDPs (with and without terminals, with excluded actions) and a grid, at
//! alpha 0 and > 0, every engine that has it stops with an error bound within tol that
//! contains V* (an f64 value-iteration solve to 1e-13), and takes fewer improvements than
//! value iteration takes sweeps. Settings MPI does not support are refused by name.

// Per-task loops index several per-task arrays at once.
#![allow(clippy::needless_range_loop)]

mod common;

use softvi::engine::cpu::solve_mdp_cpu_f64;
use softvi::engine::native::solve_native;
use softvi::engine::schedule::keep_going;
use softvi::world::mdp::TabularMdp;
use softvi::world::{ActionSet, Grid, GridProblem, GridTask, MoveCost};
use softvi::{
    Backup, Connectivity, CpuReference, Horizon, MdpSolution, MdpSolver, Method, Outputs, Solution,
    SolveOptions, Status, solve_cpu,
};

fn options(alpha: f64, gamma: f64, tol: f64, method: Method) -> SolveOptions {
    SolveOptions {
        alpha,
        gamma,
        horizon: Horizon::Infinite {
            tol,
            max_iters: 1_000_000,
        },
        method,
        ..Default::default()
    }
}

/// V* of `mdp` by f64 value iteration to tol 1e-13 and its own error bound.
fn mdp_truth(mdp: &TabularMdp, alpha: f64, gamma: f64) -> (Vec<f64>, f64) {
    let truth = solve_mdp_cpu_f64(
        mdp,
        &options(alpha, gamma, 1e-13, Method::Vi),
        Outputs::VALUES,
        &mut keep_going,
    )
    .unwrap()
    .solution;
    assert!(truth.status.iter().all(|&s| s == Status::Converged));
    let bound = truth.error_bound.iter().copied().fold(0.0, f64::max);
    // |V| <= 1 / (1 - gamma) = 100: the f64 floor bounds the truth's error far below 1e-9.
    assert!(bound <= 1e-9, "truth bound {bound}");
    (truth.values, bound)
}

/// Per task `max_s |V(s) - V*(s)|` over finite entries; the two must agree on -inf.
fn errors<T: Copy + Into<f64>>(values: &[T], truth: &[f64], tasks: usize) -> Vec<f64> {
    let n = truth.len() / tasks;
    (0..tasks)
        .map(|t| {
            (t * n..(t + 1) * n)
                .map(|i| {
                    let v = values[i].into();
                    if truth[i].is_finite() {
                        (v - truth[i]).abs()
                    } else if truth[i].is_nan() {
                        // A grid's blocked cell.
                        assert!(v.is_nan(), "state {i}");
                        0.0
                    } else {
                        assert_eq!(v, truth[i], "state {i}");
                        0.0
                    }
                })
                .fold(0.0, f64::max)
        })
        .collect()
}

/// A random MDP whose action 2 is excluded (reward -inf) in a few states of every task: the
/// policy must put no mass there and the evaluation must not read its -inf Q.
fn mdp_with_exclusions(terminals: bool, seed: u64) -> TabularMdp {
    let mut mdp = common::random_mdp(157, 3, 3, terminals, seed);
    for t in 0..mdp.tasks {
        for s in (t..mdp.states).step_by(11) {
            mdp.reward[(t * mdp.states + s) * 3 + 2] = f64::NEG_INFINITY as _;
        }
    }
    mdp
}

/// The f64 reference: MPI's values are within its reported bound (<= tol) of V* at alpha 0
/// and > 0, with terminals (no span bound: the plain bound) and without (the span bound),
/// and it needs fewer improvements than VI needs sweeps.
#[test]
fn reference_mpi_reaches_the_value_iteration_fixed_point() {
    for terminals in [false, true] {
        let mdp = mdp_with_exclusions(terminals, 31);
        for (alpha, gamma) in [(0.0, 0.9), (0.0, 0.99), (0.7, 0.95), (2.0, 0.99)] {
            let (truth, truth_bound) = mdp_truth(&mdp, alpha, gamma);
            for tol in [1e-4, 1e-9] {
                let solve = |method| {
                    solve_mdp_cpu_f64(
                        &mdp,
                        &options(alpha, gamma, tol, method),
                        Outputs::VALUES,
                        &mut keep_going,
                    )
                    .unwrap()
                    .solution
                };
                // Plain VI: extrapolation's jumps are another acceleration.
                let vi = solve_mdp_cpu_f64(
                    &mdp,
                    &SolveOptions {
                        extrapolate: false,
                        ..options(alpha, gamma, tol, Method::Vi)
                    },
                    Outputs::VALUES,
                    &mut keep_going,
                )
                .unwrap()
                .solution;
                for evaluations in [1, 8, 50] {
                    let got = solve(Method::Mpi { evaluations });
                    let err = errors(&got.values, &truth, mdp.tasks);
                    let what = format!(
                        "terminals {terminals} alpha {alpha} gamma {gamma} tol {tol} m \
                         {evaluations}"
                    );
                    for t in 0..mdp.tasks {
                        assert_eq!(got.status[t], Status::Converged, "{what}");
                        assert!(got.error_bound[t] <= tol, "{what}: {:?}", got.error_bound);
                        assert!(
                            err[t] <= got.error_bound[t] + truth_bound,
                            "{what}: task {t} error {} bound {}",
                            err[t],
                            got.error_bound[t]
                        );
                        // The evaluations do part of the improvements' work (at gamma 0.99
                        // and m = 50 several times fewer improvements; never more than
                        // plain VI's sweeps).
                        assert!(
                            got.iterations[t] <= vi.iterations[t],
                            "{what}: {:?} improvements, VI {:?} sweeps",
                            got.iterations,
                            vi.iterations
                        );
                    }
                    if gamma == 0.99 && evaluations == 50 && tol == 1e-9 {
                        assert!(
                            2 * got.iterations[0] < vi.iterations[0],
                            "{what}: {:?} vs {:?}",
                            got.iterations,
                            vi.iterations
                        );
                    }
                }
            }
        }
    }
}

/// The policy and Q an MPI solve reports are those of its values (the improvement's), as
/// value iteration's: both within the tolerances of the reference's own VI solve.
#[test]
fn reference_mpi_reports_the_policy_of_the_fixed_point() {
    let mdp = common::random_mdp(211, 4, 2, false, 5);
    for alpha in [0.0, 0.5] {
        let outputs = Outputs {
            q: true,
            ..Outputs::default()
        };
        let solve = |method| -> MdpSolution {
            CpuReference
                .solve_mdp(
                    &mdp,
                    &options(alpha, 0.95, 1e-8, method),
                    outputs,
                    &mut keep_going,
                )
                .unwrap()
        };
        let (vi, mpi) = (solve(Method::Vi), solve(Method::MPI));
        // Both within 1e-8 of V*, reported in f32 (|V| <= 20: one rounding is 1.2e-6).
        common::compare("mpi vs vi", &mpi, &vi, 3e-6, 1e-5);
    }
}

/// A grid (goals with fixed values, slip, rewards maps) through the reference's grid sweeps:
/// MPI within its bound of V* at alpha 0 and 0.5.
#[test]
fn reference_grid_mpi_reaches_the_fixed_point() {
    let problem = common::random_problem(13, 17, 3, Connectivity::Eight, true, 0.1, 5);
    for alpha in [0.0, 0.5] {
        for gamma in [0.9, 0.99] {
            let truth = solve_cpu(
                &problem,
                &options(alpha, gamma, 1e-13, Method::Vi),
                Outputs::VALUES,
            )
            .unwrap();
            let truth_bound = truth.error_bound.iter().copied().fold(0.0, f64::max);
            let truth: Vec<f64> = truth.values.iter().map(|&v| v as f64).collect();
            let plain = SolveOptions {
                extrapolate: false,
                ..options(alpha, gamma, 1e-5, Method::Vi)
            };
            let vi = solve_cpu(&problem, &plain, Outputs::VALUES).unwrap();
            let got = solve_cpu(
                &problem,
                &options(alpha, gamma, 1e-5, Method::MPI),
                Outputs::VALUES,
            )
            .unwrap();
            let err = errors(&got.values, &truth, 3);
            for t in 0..3 {
                assert_eq!(got.status[t], Status::Converged);
                assert!(got.error_bound[t] <= 1e-5);
                // Both sides reported in f32: one rounding of |V| <= 1e3 each (6e-5).
                let rounding = 2.0 * 6e-8 * 1e3;
                assert!(
                    err[t] <= got.error_bound[t] + truth_bound + rounding,
                    "alpha {alpha} gamma {gamma} task {t}: {} > {}",
                    err[t],
                    got.error_bound[t]
                );
                assert!(got.iterations[t] < vi.iterations[t], "{got:?} {vi:?}");
            }
        }
    }
}

/// The native engine's grid MPI of `problem` on `threads` threads.
fn native_grid(problem: &GridProblem, options: &SolveOptions, threads: usize) -> Solution {
    solve_native(
        problem,
        options,
        Outputs::VALUES,
        None,
        threads,
        &mut keep_going,
    )
    .unwrap()
}

/// Grids through the native engine's f32 sweeps (4 and 8 moves, with and without slip, STAY
/// and reward maps, widths that are not multiples of the 8 or 16 lanes, several tasks), at
/// alpha 0 and > 0, gamma 0.9, 0.99, 0.999: MPI stops with an error bound within tol that
/// contains V* (an f64 value-iteration solve to 1e-13), and agrees with the reference's MPI.
#[test]
fn native_grid_mpi_reaches_the_fixed_point() {
    let problems = [
        common::random_problem(13, 17, 3, Connectivity::Eight, true, 0.1, 5),
        common::random_problem(21, 19, 4, Connectivity::Four, false, 0.0, 8),
        common::random_problem(9, 35, 2, Connectivity::Four, true, 0.2, 11),
    ];
    for (p, problem) in problems.iter().enumerate() {
        let tasks = problem.tasks.len();
        for alpha in [0.0, 0.05, 0.5] {
            for gamma in [0.9, 0.99, 0.999] {
                let truth = solve_cpu(
                    problem,
                    &options(alpha, gamma, 1e-13, Method::Vi),
                    Outputs::VALUES,
                )
                .unwrap();
                let truth_bound = truth.error_bound.iter().copied().fold(0.0, f64::max);
                let truth: Vec<f64> = truth.values.iter().map(|&v| v as f64).collect();
                let top =
                    (truth.iter().filter(|v| v.is_finite())).fold(0.0f64, |m, v| m.max(v.abs()));
                // One f32 backup rounds each of its ~10 terms once (|V| <= top): under 16
                // half-ulps of top, delta. A bound from f32 iterates then holds up to delta / (1
                // - gamma) (||V' - V*|| <= gamma / (1 - gamma) ||V' - V|| + delta / (1 -
                // gamma)); both reports are rounded to f32 once more (2 half-ulps).
                let half_ulp = top * f32::EPSILON as f64 / 2.0;
                let allowance = 16.0 * half_ulp / (1.0 - gamma) + 2.0 * half_ulp + truth_bound;
                // A tol the f32 engine resolves: above the floor at which it stops (a residual
                // of 1e-6 |V|, a bound of gamma / (1 - gamma) times that).
                let tol = (2e-6 * top * gamma / (1.0 - gamma)).max(1e-5);
                let o = options(alpha, gamma, tol, Method::MPI);
                let got = native_grid(problem, &o, 2);
                let reference = solve_cpu(problem, &o, Outputs::VALUES).unwrap();
                let err = errors(&got.values, &truth, tasks);
                let gap = errors(
                    &got.values,
                    &(reference
                        .values
                        .iter()
                        .map(|&v| v as f64)
                        .collect::<Vec<_>>()),
                    tasks,
                );
                let what = format!("problem {p} alpha {alpha} gamma {gamma} tol {tol:.1e}");
                for t in 0..tasks {
                    assert_eq!(got.status[t], Status::Converged, "{what}");
                    assert!(got.error_bound[t] <= tol, "{what}: {:?}", got.error_bound);
                    assert!(
                        err[t] <= got.error_bound[t] + allowance,
                        "{what} task {t}: error {} bound {} allowance {allowance}",
                        err[t],
                        got.error_bound[t]
                    );
                    // The same iteration: f32 rounding moves the stop by a few improvements
                    // at most (measured: 1.3% at gamma 0.999); an evaluation that did not do
                    // its share would take value iteration's count.
                    let (n, r) = (got.iterations[t] as f64, reference.iterations[t] as f64);
                    assert!(
                        (n - r).abs() <= 2.0 + 0.03 * r,
                        "{what} task {t}: {n} improvements, the reference {r}"
                    );
                    // Both within their bounds of V*.
                    assert!(
                        gap[t] <= got.error_bound[t] + reference.error_bound[t] + allowance,
                        "{what} task {t}: native vs reference {} (bounds {} {})",
                        gap[t],
                        got.error_bound[t],
                        reference.error_bound[t]
                    );
                }
            }
        }
    }
}

/// At alpha 0 on a maze (long corridors: value iteration moves the goal's value one cell a
/// sweep), the native grid MPI needs fewer improvements than value iteration needs sweeps.
#[test]
fn native_grid_mpi_takes_fewer_improvements_on_a_maze() {
    let grid = Grid::generate_maze(41, 39, 3).unwrap();
    let goal = grid.width + 1;
    assert!(grid.free[goal]);
    let problem = GridProblem {
        grid,
        actions: ActionSet {
            connectivity: Connectivity::Four,
            stay: false,
        },
        slip: 0.0,
        move_cost: MoveCost::default(),
        tasks: vec![GridTask {
            goals: vec![goal],
            reward: None,
        }],
    };
    let vi = native_grid(&problem, &options(0.0, 0.99, 1e-2, Method::Vi), 2);
    let mpi = native_grid(&problem, &options(0.0, 0.99, 1e-2, Method::MPI), 2);
    assert_eq!(mpi.status[0], Status::Converged);
    assert!(
        mpi.iterations[0] < vi.iterations[0],
        "{:?} improvements, VI {:?} sweeps",
        mpi.iterations,
        vi.iterations
    );
    let gap = errors(
        &mpi.values,
        &(vi.values.iter().map(|&v| v as f64).collect::<Vec<_>>()),
        1,
    );
    // Both within tol of V* (|V| <= 100: f32 rounding far below).
    assert!(gap[0] <= 2e-2 + 1e-3, "{gap:?}");
}

/// The native grid MPI's freeze semantics: a task's values, iterations and bound are the
/// same bits alone on one thread as in any batch on any number of threads.
#[test]
fn native_grid_mpi_is_independent_of_batch_and_threads() {
    let problem = common::random_problem(37, 41, 4, Connectivity::Eight, true, 0.1, 21);
    let cells = problem.grid.cells();
    for alpha in [0.0, 0.7] {
        let o = options(alpha, 0.95, 1e-3, Method::Mpi { evaluations: 3 });
        let batch = native_grid(&problem, &o, 3);
        for t in 0..problem.tasks.len() {
            let alone = GridProblem {
                tasks: vec![problem.tasks[t].clone()],
                ..problem.clone()
            };
            let pair = GridProblem {
                tasks: vec![problem.tasks[(t + 1) % 4].clone(), problem.tasks[t].clone()],
                ..problem.clone()
            };
            let one = native_grid(&alone, &o, 1);
            let two = native_grid(&pair, &o, 2);
            let want = &batch.values[t * cells..(t + 1) * cells];
            for (what, got, at) in [("alone", &one, 0), ("in a pair", &two, 1)] {
                let values = &got.values[at * cells..(at + 1) * cells];
                assert!(
                    values
                        .iter()
                        .zip(want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "alpha {alpha} task {t} {what}"
                );
                assert_eq!(got.iterations[at], batch.iterations[t]);
                assert_eq!(got.error_bound[at], batch.error_bound[t]);
            }
        }
    }
}

/// What MPI does not support is refused by name (flag or setting), never run as VI.
#[test]
fn unsupported_settings_are_refused_by_name() {
    let base = options(1.0, 0.9, 1e-4, Method::MPI);
    let message = |o: SolveOptions, spelling| o.validate_as(spelling).unwrap_err().to_string();
    use softvi::error::Spelling::{Flag, Name};
    let optimistic = SolveOptions {
        backup: Backup::Optimistic,
        ..base
    };
    let m = message(optimistic, Flag);
    assert!(
        m.contains("--method mpi") && m.contains("--backup expected"),
        "{m}"
    );
    let m = message(optimistic, Name);
    assert!(
        m.contains("method = \"mpi\"") && m.contains("backup"),
        "{m}"
    );
    let finite = SolveOptions {
        horizon: Horizon::Finite(10),
        ..base
    };
    let m = message(finite, Flag);
    assert!(m.contains("--method mpi") && m.contains("--horizon"), "{m}");
    let undiscounted = SolveOptions { gamma: 1.0, ..base };
    assert!(message(undiscounted, Flag).contains("gamma (--gamma) < 1"));
    for evaluations in [0, Method::MAX_EVALUATIONS + 1] {
        let o = SolveOptions {
            method: Method::Mpi { evaluations },
            ..base
        };
        let m = message(o, Flag);
        assert!(m.contains("evaluations (--evaluations)"), "{m}");
    }
    // VI accepts each of them (the refusals are MPI's).
    for o in [optimistic, finite, undiscounted] {
        SolveOptions {
            method: Method::Vi,
            ..o
        }
        .validate()
        .unwrap();
    }
}
