//! Shortest-path truth on real MovingAI maps: with alpha = 0, gamma = 1, 8-connectivity and
//! the default costs, `-V(s)` is the octile shortest-path length to the goal with no corner
//! cutting (MovingAI's published optimal lengths follow this rule). The truth here is a
//! Dijkstra written from the map text alone. Cells that cannot reach the goal must come out
//! as -inf and be counted as unreachable.

mod common;

use common::*;
use softvi::{
    ActionSet, Backup, Connectivity, Grid, GridProblem, GridTask, Horizon, Method, MoveCost,
    Outputs, SolveOptions, solve_cpu,
};

/// Returns the number of unreachable cells summed over the goals.
fn check_map(name: &str, goals: &[(usize, usize)]) -> usize {
    let dir = maps_dir();
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let grid = Grid::load_movingai(&path).unwrap();
    let problem = GridProblem {
        grid: grid.clone(),
        actions: ActionSet {
            connectivity: Connectivity::Eight,
            stay: false,
        },
        slip: 0.0,
        move_cost: MoveCost::default(),
        tasks: goals
            .iter()
            .map(|&(x, y)| GridTask {
                goals: vec![y * grid.width + x],
                reward: None,
            })
            .collect(),
    };
    let options = SolveOptions {
        alpha: 0.0,
        gamma: 1.0,
        backup: Backup::Expected,
        horizon: Horizon::Infinite {
            tol: 1e-6,
            max_iters: 100_000,
        },
        extrapolate: true,
        method: Method::Vi,
    };
    let cpu = solve_cpu(&problem, &options, Outputs::VALUES).unwrap();
    let gpu = with_engine(|e| e.solve(&problem, &options, Outputs::VALUES).unwrap());
    let mut worst = 0.0f64;
    let mut total_unreachable = 0;
    for (t, &(x, y)) in goals.iter().enumerate() {
        let (w, dist) = octile_dijkstra(&text, y * grid.width + x);
        assert_eq!(w, grid.width);
        let unreachable = (0..dist.len())
            .filter(|&c| grid.free[c] && dist[c].is_infinite())
            .count();
        total_unreachable += unreachable;
        for solution in std::iter::once(&cpu).chain(gpu.as_ref()) {
            assert_eq!(
                solution.status[t],
                softvi::Status::Converged,
                "{name} goal {t}"
            );
            assert_eq!(
                solution.unreachable[t] as usize, unreachable,
                "{name} goal {t}"
            );
            for (c, &d) in dist.iter().enumerate() {
                let v = solution.values[t * grid.cells() + c];
                if !grid.free[c] {
                    assert!(v.is_nan(), "{name}: blocked cell {c} has value {v}");
                } else if d.is_infinite() {
                    assert_eq!(v, f32::NEG_INFINITY, "{name}: unreachable cell {c}");
                } else {
                    // f32 sums of up to a few hundred steps: 1e-6 relative is ~8 ulps.
                    let err = (-(v as f64) - d).abs();
                    assert!(
                        err <= 1e-6 * d.max(1.0) + 1e-5,
                        "{name} goal {t} cell {c}: -V = {} vs {d}",
                        -v
                    );
                    worst = worst.max(err / d.max(1.0));
                }
            }
        }
    }
    eprintln!("{name}: largest relative deviation from Dijkstra {worst:.3e}");
    total_unreachable
}

#[test]
fn maze_32_shortest_paths() {
    let _ = check_map(
        "maze-32-32-2.map",
        &[(0, 0), (31, 31), (16, 3)].map(|g| first_free_near("maze-32-32-2.map", g)),
    );
}

#[test]
fn den312d_shortest_paths() {
    let _ = check_map(
        "den312d.map",
        &[(10, 10), (50, 70)].map(|g| first_free_near("den312d.map", g)),
    );
}

#[test]
fn random_64_shortest_paths() {
    let goals = [(5, 5), (60, 30), (32, 60)].map(|g| first_free_near("random-64-64-20.map", g));
    let _ = check_map("random-64-64-20.map", &goals);
}

/// Berlin_1_256 (CRLF line endings) has nine one-cell pockets cut off from the city: a goal
/// in the city leaves them unreachable, a goal in a pocket leaves everything else.
#[test]
fn berlin_shortest_paths_with_unreachable_pockets() {
    let unreachable = check_map("Berlin_1_256.map", &[(0, 0), (20, 117)]);
    assert!(unreachable > 46_000, "pockets not found: {unreachable}");
}

/// The first free cell in row-major order at or after (x, y).
fn first_free_near(name: &str, (x, y): (usize, usize)) -> (usize, usize) {
    let dir = maps_dir();
    let grid = Grid::load_movingai(&dir.join(name)).unwrap();
    let start = y * grid.width + x;
    let cell = (start..grid.cells())
        .chain(0..start)
        .find(|&c| grid.free[c])
        .unwrap();
    (cell % grid.width, cell / grid.width)
}

/// Tiny temperatures on the GPU and the CPU (NaN values at alpha = 1e-40, policy
/// rows summing to 0.77..2 at 1e-6): at gamma = 1 the soft value lies within alpha ln 8 per
/// step above minus the octile distance, and below `soft_policy_resolved` the policy is the
/// hard max's one-hot, whose move must follow a shortest path.
#[test]
fn tiny_alpha_follows_shortest_paths() {
    let name = "maze-32-32-2.map";
    let path = maps_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let grid = Grid::load_movingai(&path).unwrap();
    let (x, y) = first_free_near(name, (31, 31));
    let goal = y * grid.width + x;
    let problem = GridProblem {
        grid: grid.clone(),
        actions: ActionSet {
            connectivity: Connectivity::Eight,
            stay: false,
        },
        slip: 0.0,
        move_cost: MoveCost::default(),
        tasks: vec![GridTask {
            goals: vec![goal],
            reward: None,
        }],
    };
    let (_, dist) = octile_dijkstra(&text, goal);
    // Action order N, E, S, W, NE, SE, SW, NW.
    let moves: [(i64, i64); 8] = [
        (-1, 0),
        (0, 1),
        (1, 0),
        (0, -1),
        (-1, 1),
        (1, 1),
        (1, -1),
        (-1, -1),
    ];
    for alpha in [1e-6, 1e-8, 1e-40] {
        let options = SolveOptions {
            alpha,
            gamma: 1.0,
            backup: Backup::Expected,
            horizon: Horizon::Infinite {
                tol: 1e-6,
                max_iters: 100_000,
            },
            extrapolate: true,
            method: Method::Vi,
        };
        let cpu = solve_cpu(&problem, &options, Outputs::default()).unwrap();
        let gpu = with_engine(|e| e.solve(&problem, &options, Outputs::default()).unwrap());
        for (backend, s) in std::iter::once(("cpu", &cpu)).chain(gpu.as_ref().map(|g| ("gpu", g))) {
            let what = format!("alpha {alpha:e} {backend}");
            assert_eq!(s.status, vec![softvi::Status::Converged], "{what}");
            let policy = s.policy.as_ref().unwrap();
            assert_rows_sum_to_one(&what, policy, 8, 1e-5);
            for (c, &d) in dist.iter().enumerate() {
                if !grid.free[c] || d.is_infinite() || c == goal {
                    continue;
                }
                let v = s.values[c] as f64;
                assert!(
                    (v + d).abs() <= 1e-6 * d + 1e-5 + alpha * 8f64.ln() * (d + 1.0),
                    "{what} cell {c}: V = {v}, distance {d}"
                );
                let row = &policy[c * 8..(c + 1) * 8];
                let a = (0..8)
                    .find(|&a| row[a] == 1.0)
                    .unwrap_or_else(|| panic!("{what} cell {c}: {row:?} not one-hot"));
                let (r, col) = (
                    (c / grid.width) as i64 + moves[a].0,
                    (c % grid.width) as i64 + moves[a].1,
                );
                let next = r as usize * grid.width + col as usize;
                let step = if a < 4 { 1.0 } else { std::f64::consts::SQRT_2 };
                assert!(
                    dist[next] + step <= d + 1e-5 * d.max(1.0),
                    "{what} cell {c}: action {a} to {next} is off the shortest path"
                );
            }
        }
    }
}
