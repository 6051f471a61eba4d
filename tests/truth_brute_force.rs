//! Independent truth by enumeration on tiny worlds: the finite-horizon `optimistic` value is
//! the log-partition of the control-as-inference model,
//! `V_0(s) = alpha * log sum_trajectories prod P(s'|s,a) * exp(sum_t r(s_t, a_t) / alpha)`,
//! and the hard value is the best trajectory's return. Moves are derived here from the map
//! text, not from softvi's move mask.

mod common;

use common::*;
use softvi::{
    ActionSet, Backup, Connectivity, Grid, GridProblem, GridTask, Horizon, Method, MoveCost,
    Outputs, SolveOptions, solve_cpu,
};

const MAP: &str = "type octile\nheight 3\nwidth 4\nmap\n..@.\n....\n.@..\n";

/// (row, col) offsets in softvi's documented action order for 4-connectivity + STAY.
const MOVES: [(i64, i64); 5] = [(-1, 0), (0, 1), (1, 0), (0, -1), (0, 0)];

fn world() -> (Grid, Vec<(usize, usize)>) {
    let rows: Vec<&str> = MAP.lines().skip(4).collect();
    let grid = Grid::parse_movingai(MAP).unwrap();
    let free = |r: i64, c: i64| {
        r >= 0
            && c >= 0
            && (r as usize) < rows.len()
            && (c as usize) < rows[0].len()
            && rows[r as usize].as_bytes()[c as usize] == b'.'
    };
    let mut cells = Vec::new();
    for r in 0..3 {
        for c in 0..4 {
            if free(r, c) {
                cells.push((r as usize, c as usize));
            }
        }
    }
    (grid, cells)
}

/// Successor distribution of action `a` from (r, c) with slip `eps` (blocked moves stay).
fn successors(grid: &Grid, r: usize, c: usize, a: usize, eps: f64) -> Vec<((usize, usize), f64)> {
    let land = |m: usize| {
        let (dr, dc) = MOVES[m];
        let (nr, nc) = (r as i64 + dr, c as i64 + dc);
        if grid.is_free(nr, nc) {
            (nr as usize, nc as usize)
        } else {
            (r, c)
        }
    };
    let mut out = vec![(land(a), 1.0 - eps)];
    for m in 0..MOVES.len() {
        out.push((land(m), eps / MOVES.len() as f64));
    }
    out
}

/// Sum over all trajectories of prod P * exp(sum r / alpha) (soft) or the best sum r over
/// deterministic trajectories (hard), by explicit depth-first enumeration.
fn enumerate(
    grid: &Grid,
    goal: (usize, usize),
    reward: &[f32],
    eps: f64,
    alpha: f64,
    start: (usize, usize),
    steps: u32,
) -> f64 {
    let costs = [1.0, 1.0, 1.0, 1.0, 0.25];
    // Stack of (cell, steps left, probability so far, return so far).
    let mut stack = vec![(start, steps, 1.0f64, 0.0f64)];
    let (mut partition, mut best) = (0.0f64, f64::NEG_INFINITY);
    while let Some((cell, left, prob, ret)) = stack.pop() {
        if cell == goal || left == 0 {
            partition += prob * (ret / alpha.max(1e-300)).exp();
            best = best.max(ret);
            continue;
        }
        for (a, cost) in costs.iter().enumerate() {
            let r = reward[cell.0 * grid.width + cell.1] as f64 - cost;
            for (next, p) in successors(grid, cell.0, cell.1, a, eps) {
                if p > 0.0 {
                    stack.push((next, left - 1, prob * p, ret + r));
                }
            }
        }
    }
    if alpha == 0.0 {
        best
    } else {
        alpha * partition.ln()
    }
}

fn problem(grid: &Grid, eps: f64, reward: Vec<f32>) -> GridProblem {
    GridProblem {
        grid: grid.clone(),
        actions: ActionSet {
            connectivity: Connectivity::Four,
            stay: true,
        },
        slip: eps,
        move_cost: MoveCost {
            orthogonal: 1.0,
            diagonal: 2.0,
            stay: 0.25,
        },
        tasks: vec![GridTask {
            goals: vec![3],
            reward: Some(reward),
        }],
    }
}

#[test]
fn optimistic_finite_horizon_is_the_log_partition() {
    let (grid, cells) = world();
    let reward: Vec<f32> = (0..grid.cells())
        .map(|i| ((i * 7) % 5) as f32 * 0.3 - 0.6)
        .collect();
    let goal = (0, 3);
    let mut worst = 0.0f64;
    for eps in [0.0, 0.3] {
        for alpha in [0.5, 1.0, 3.0] {
            let steps = if eps == 0.0 { 5 } else { 3 };
            let p = problem(&grid, eps, reward.clone());
            let options = SolveOptions {
                alpha,
                gamma: 1.0,
                backup: Backup::Optimistic,
                horizon: Horizon::Finite(steps),
                extrapolate: true,
                method: Method::Vi,
            };
            let cpu = solve_cpu(&p, &options, Outputs::VALUES).unwrap();
            let gpu = with_engine(|e| e.solve(&p, &options, Outputs::VALUES).unwrap());
            for &(r, c) in &cells {
                let truth = enumerate(&grid, goal, &reward, eps, alpha, (r, c), steps);
                let cpu_v = value_at(&cpu, 0, r, c) as f64;
                // f32 storage of V: 1e-5 relative.
                assert!(
                    (cpu_v - truth).abs() <= 1e-5 * truth.abs().max(1.0),
                    "cpu ({r},{c}) eps={eps} alpha={alpha}: {cpu_v} vs {truth}"
                );
                if let Some(gpu) = &gpu {
                    let gpu_v = value_at(gpu, 0, r, c) as f64;
                    assert!(
                        (gpu_v - truth).abs() <= 1e-4 * truth.abs().max(1.0),
                        "gpu ({r},{c}) eps={eps} alpha={alpha}: {gpu_v} vs {truth}"
                    );
                    worst = worst.max((gpu_v - truth).abs());
                }
            }
        }
    }
    eprintln!("largest GPU deviation from the enumerated log-partition: {worst:.3e}");
}

#[test]
fn hard_finite_horizon_is_the_best_trajectory() {
    let (grid, cells) = world();
    let reward: Vec<f32> = (0..grid.cells())
        .map(|i| ((i * 3) % 4) as f32 * 0.5 - 1.0)
        .collect();
    let p = problem(&grid, 0.0, reward.clone());
    let options = SolveOptions {
        alpha: 0.0,
        gamma: 1.0,
        backup: Backup::Expected,
        horizon: Horizon::Finite(6),
        extrapolate: true,
        method: Method::Vi,
    };
    let cpu = solve_cpu(&p, &options, Outputs::default()).unwrap();
    let gpu = with_engine(|e| e.solve(&p, &options, Outputs::default()).unwrap());
    for &(r, c) in &cells {
        let truth = enumerate(&grid, (0, 3), &reward, 0.0, 0.0, (r, c), 6);
        assert!(
            (value_at(&cpu, 0, r, c) as f64 - truth).abs() <= 1e-5,
            "cpu ({r},{c})"
        );
        if let Some(gpu) = &gpu {
            assert!(
                (value_at(gpu, 0, r, c) as f64 - truth).abs() <= 1e-5,
                "gpu ({r},{c})"
            );
        }
    }
}

/// The soft value is a smooth maximum: between the hard value and the hard value plus the
/// entropy of a uniform choice at every step, `alpha * log|A| * T`.
#[test]
fn soft_value_is_bounded_by_hard_value_and_entropy() {
    let (grid, cells) = world();
    let reward = vec![0.0f32; grid.cells()];
    let p = problem(&grid, 0.0, reward.clone());
    for alpha in [0.1, 1.0] {
        let options = SolveOptions {
            alpha,
            gamma: 1.0,
            backup: Backup::Expected,
            horizon: Horizon::Finite(4),
            extrapolate: true,
            method: Method::Vi,
        };
        let soft = solve_cpu(&p, &options, Outputs::VALUES).unwrap();
        for &(r, c) in &cells {
            let hard = enumerate(&grid, (0, 3), &reward, 0.0, 0.0, (r, c), 4);
            let v = value_at(&soft, 0, r, c) as f64;
            assert!(
                v >= hard - 1e-6 && v <= hard + alpha * 5f64.ln() * 4.0 + 1e-6,
                "({r},{c}): {v} vs {hard}"
            );
        }
    }
}
