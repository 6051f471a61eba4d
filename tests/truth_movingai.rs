//! Shortest-path truth on real MovingAI maps: with alpha = 0, gamma = 1, 8-connectivity and
//! the default costs, `-V(s)` is the octile shortest-path length to the goal with no corner
//! cutting (MovingAI's published optimal lengths follow this rule). The truth here is a
//! Dijkstra written from the map text alone. Cells that cannot reach the goal must come out
//! as -inf and be counted as unreachable.

mod common;

use common::*;
use softvi::{
    ActionSet, Backup, Connectivity, Grid, GridProblem, GridTask, Horizon, MoveCost, Outputs,
    SolveOptions, solve_cpu,
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
