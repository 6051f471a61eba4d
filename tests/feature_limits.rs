//! Limits and failure modes of the soft problem: the hard limit as alpha -> 0, divergence of
//! undiscounted soft problems, and states with no finite value.

mod common;

use common::*;
use softvi::{
    ActionSet, Backup, Connectivity, Grid, GridProblem, GridTask, Horizon, Method, MoveCost,
    Outputs, SolveOptions, Status, solve_cpu,
};

fn solve_both(problem: &GridProblem, options: &SolveOptions) -> Vec<softvi::Solution> {
    let mut out = vec![solve_cpu(problem, options, Outputs::default()).unwrap()];
    out.extend(with_engine(|e| {
        e.solve(problem, options, Outputs::default()).unwrap()
    }));
    out
}

/// 0 <= V_alpha - V_hard <= alpha * log|A| / (1 - gamma): the soft backup exceeds the hard
/// one by at most alpha * log|A| per step. Each converged side is within
/// tol * gamma / (1 - gamma) of its fixed point, which widens both ends.
#[test]
fn soft_values_approach_hard_values() {
    let problem = random_problem(41, 37, 2, Connectivity::Eight, false, 0.2, 11);
    let gamma = 0.95;
    let tol = 1e-6;
    let slack = 2.0 * tol * gamma / (1.0 - gamma) + 1e-4;
    let options = |alpha| SolveOptions {
        alpha,
        gamma,
        backup: Backup::Expected,
        horizon: Horizon::Infinite {
            tol,
            max_iters: 50_000,
        },
        extrapolate: true,
        method: Method::Vi,
    };
    let hard = solve_both(&problem, &options(0.0));
    let log_a = (problem.actions.count() as f64).ln();
    for (backend, hard) in hard.iter().enumerate() {
        let mut last_gap = f64::INFINITY;
        for alpha in [1.0, 0.3, 0.1, 0.03, 0.01] {
            let soft = &solve_both(&problem, &options(alpha))[backend];
            let bound = alpha * log_a / (1.0 - gamma);
            let mut gap = 0.0f64;
            for (s, h) in soft.values.iter().zip(&hard.values) {
                if !h.is_finite() {
                    continue;
                }
                let d = (*s - *h) as f64;
                assert!(
                    d >= -slack && d <= bound + slack,
                    "backend {backend} alpha {alpha}: gap {d} outside [0, {bound}]"
                );
                gap = gap.max(d);
            }
            assert!(
                gap < last_gap,
                "backend {backend}: gap {gap} at alpha {alpha} did not shrink"
            );
            last_gap = gap;
        }
        assert!(last_gap <= 0.01 * log_a / (1.0 - gamma) + slack);
    }
}

/// A 41 x 29 maze in the reference world (8-connected, slip 0.1) with goals in two corners.
fn maze_problem(seed: u64) -> GridProblem {
    let grid = Grid::generate_maze(41, 29, seed).unwrap();
    let corners = [grid.width + 1, 27 * grid.width + 39];
    GridProblem {
        tasks: corners
            .map(|g| GridTask {
                goals: vec![g],
                reward: None,
            })
            .to_vec(),
        ..softvi::bench::reference_problem(grid, 0)
    }
}

/// With gamma = 1 and an entropy bonus alpha * log 8 far above the step costs the soft values
/// grow without bound: both backends must say `diverged` and report no policy.
#[test]
fn undiscounted_soft_problem_diverges() {
    let problem = maze_problem(3);
    for backup in [Backup::Expected, Backup::Optimistic] {
        let options = SolveOptions {
            alpha: 10.0,
            gamma: 1.0,
            backup,
            horizon: Horizon::Infinite {
                tol: 1e-4,
                max_iters: 100_000,
            },
            extrapolate: true,
            method: Method::Vi,
        };
        for solution in solve_both(&problem, &options) {
            assert!(solution.diverged(), "{backup:?}: {:?}", solution.status);
            assert!(solution.policy.is_none());
            // Detected within a few hundred sweeps, not at max_iters.
            assert!(solution.iterations[0] <= 2_000, "{:?}", solution.iterations);
        }
    }
}

/// The same world at a low temperature has a finite solution: no false alarm.
#[test]
fn undiscounted_low_temperature_converges() {
    let problem = maze_problem(3);
    let options = SolveOptions {
        alpha: 0.1,
        gamma: 1.0,
        backup: Backup::Optimistic,
        horizon: Horizon::Infinite {
            tol: 1e-5,
            max_iters: 100_000,
        },
        extrapolate: true,
        method: Method::Vi,
    };
    let solutions = solve_both(&problem, &options);
    for s in &solutions {
        assert_eq!(s.status, vec![Status::Converged; 2]);
        assert!(
            s.values
                .iter()
                .all(|v| v.is_nan() || (v.is_finite() && *v <= 0.0))
        );
    }
    if let [cpu, gpu] = &solutions[..] {
        let err = max_abs_error(&gpu.values, &cpu.values);
        // gamma = 1: no contraction bound; values of a few hundred, f32 accumulation.
        assert!(err <= 1e-3, "GPU vs CPU {err}");
    }
}

/// Cells walled off from the goal: -inf and counted with gamma = 1; finite (and still
/// counted) with gamma < 1, where every state has a finite discounted value.
#[test]
fn unreachable_cells_are_excluded_when_undiscounted() {
    // Column 3 is a wall: the right part cannot reach the goal at (0,0).
    let text = "type octile\nheight 4\nwidth 6\nmap\n...@..\n...@..\n...@..\n...@..\n";
    let grid = Grid::parse_movingai(text).unwrap();
    let problem = GridProblem {
        grid,
        // No STAY: a free STAY with alpha > 0 and gamma = 1 has no finite value at all.
        actions: ActionSet {
            connectivity: Connectivity::Eight,
            stay: false,
        },
        slip: 0.1,
        move_cost: MoveCost::default(),
        tasks: vec![GridTask {
            goals: vec![0],
            reward: None,
        }],
    };
    for gamma in [1.0, 0.9] {
        let options = SolveOptions {
            alpha: 0.2,
            gamma,
            backup: Backup::Expected,
            horizon: Horizon::Infinite {
                tol: 1e-6,
                max_iters: 10_000,
            },
            extrapolate: true,
            method: Method::Vi,
        };
        for s in solve_both(&problem, &options) {
            assert_eq!(s.unreachable, vec![8]);
            assert_eq!(s.status, vec![Status::Converged]);
            let right = s.values[5];
            if gamma == 1.0 {
                assert_eq!(right, f32::NEG_INFINITY);
                assert!(s.policy.as_ref().unwrap()[5 * 8].is_nan());
            } else {
                assert!(right.is_finite() && right < 0.0);
            }
            assert!(s.values[3].is_nan(), "wall");
            assert!(s.values[1].is_finite());
        }
    }
}
