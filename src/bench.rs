//! Throughput measurement shared by `softvi bench` and the criterion benches: the standard
//! workloads, and sweep timing that excludes upload and readback.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::gpu::GridEngine;
use crate::grid::{ActionSet, Connectivity, Grid, MoveCost};
use crate::problem::{Backup, GridProblem, GridTask, Horizon, SolveOptions};
use crate::solve::solve_cpu;

/// A named benchmark problem.
pub struct Workload {
    /// Short name, e.g. `maze1024-b8`.
    pub name: String,
    /// The batch.
    pub problem: GridProblem,
}

/// Settings of the reference workload: 8-connected, slip 0.1, expected backup, alpha 1,
/// gamma 0.99.
pub fn reference_options(horizon: Horizon) -> SolveOptions {
    SolveOptions {
        alpha: 1.0,
        gamma: 0.99,
        backup: Backup::Expected,
        horizon,
        policy: false,
        extrapolate: true,
    }
}

/// `tasks` goal tasks spread over the free cells of `grid` (deterministic).
pub fn spread_goals(grid: &Grid, tasks: usize) -> Vec<GridTask> {
    let free: Vec<usize> = (0..grid.cells()).filter(|&c| grid.free[c]).collect();
    (0..tasks)
        .map(|t| {
            let i = (t * 7919 + 13) * free.len() / (tasks * 7919 + 17) % free.len();
            GridTask {
                goals: vec![free[i]],
                reward: None,
            }
        })
        .collect()
}

/// A batch on `grid` with the reference settings' world (8-connected, slip 0.1).
pub fn reference_problem(grid: Grid, tasks: usize) -> GridProblem {
    GridProblem {
        tasks: spread_goals(&grid, tasks),
        grid,
        actions: ActionSet {
            connectivity: Connectivity::Eight,
            stay: false,
        },
        slip: 0.1,
        move_cost: MoveCost::default(),
    }
}

/// The standard workloads: generated mazes of 1024 x 1024 (B = 1, 8) and 4096 x 4096 (B = 1),
/// and MovingAI orz900d with 64 goal tasks when `maps` holds it.
pub fn standard_workloads(maps: Option<&Path>) -> Result<Vec<Workload>> {
    let maze1024 = Grid::generate_maze(1024, 1024, 0)?;
    let mut out = vec![
        Workload {
            name: "maze1024-b1".into(),
            problem: reference_problem(maze1024.clone(), 1),
        },
        Workload {
            name: "maze1024-b8".into(),
            problem: reference_problem(maze1024, 8),
        },
        Workload {
            name: "maze4096-b1".into(),
            problem: reference_problem(Grid::generate_maze(4096, 4096, 0)?, 1),
        },
    ];
    if let Some(dir) = maps {
        let path = dir.join("orz900d.map");
        if path.exists() {
            let grid = Grid::load_movingai(&path)?;
            out.push(Workload {
                name: "orz900d-b64".into(),
                problem: reference_problem(grid, 64),
            });
        }
    }
    Ok(out)
}

/// One measured row.
#[derive(Clone, Debug)]
pub struct Measurement {
    /// Seconds per sweep (all tasks), fixed costs excluded.
    pub seconds_per_sweep: f64,
    /// Sweeps per second.
    pub sweeps_per_second: f64,
    /// `B * free cells * sweeps / s`.
    pub state_updates_per_second: f64,
    /// Estimated bytes moved per sweep / s.
    pub bytes_per_second: f64,
}

/// Bytes a fused sweep moves: per cell and task of the visited quads (those with a free
/// cell) read V (4), write V (4), read reward (4), fixed bits (1/8), plus 8 bytes per visited
/// quad of list entry shared by the batch; neighbour reads are assumed to hit cache.
pub fn bytes_per_sweep(problem: &GridProblem) -> f64 {
    let g = &problem.grid;
    let quads_per_row = g.width.div_ceil(4);
    let visited = (0..g.height * quads_per_row)
        .filter(|q| {
            let (row, first) = (q / quads_per_row, 4 * (q % quads_per_row));
            (first..(first + 4).min(g.width)).any(|c| g.free[row * g.width + c])
        })
        .count() as f64;
    visited * (4.0 * problem.task_count() as f64 * 12.125 + 8.0)
}

/// Times `solve` at two horizons and divides the difference by the extra sweeps, so that
/// setup, upload and readback cancel out; the median of three such pairs is reported (this
/// machine is shared and noisy). `short` is the shorter horizon; the extra sweeps start at
/// `extra` and double until they take at least half a second and half the short run, so
/// that the difference stands clear of the run-to-run noise of the fixed costs.
pub fn measure(
    mut solve: impl FnMut(u32) -> Result<()>,
    problem: &GridProblem,
    short: u32,
    extra: u32,
) -> Result<Measurement> {
    let mut time = |sweeps: u32| -> Result<f64> {
        let start = Instant::now();
        solve(sweeps)?;
        Ok(start.elapsed().as_secs_f64())
    };
    // Warm-up: pipelines, buffers.
    let t_short = time(short)?;
    let mut extra = extra.max(1);
    while extra < 1 << 14 {
        let t_long = time(short + extra)?;
        if t_long - t_short >= 0.5f64.max(0.5 * t_short) {
            break;
        }
        extra *= 2;
    }
    let mut per_sweep = Vec::new();
    for _ in 0..3 {
        let t_short = time(short)?;
        let t_long = time(short + extra)?;
        per_sweep.push(((t_long - t_short) / extra as f64).max(1e-12));
    }
    per_sweep.sort_by(f64::total_cmp);
    let seconds_per_sweep = per_sweep[1];
    let sweeps_per_second = 1.0 / seconds_per_sweep;
    Ok(Measurement {
        seconds_per_sweep,
        sweeps_per_second,
        state_updates_per_second: sweeps_per_second
            * (problem.task_count() * problem.grid.free_cells()) as f64,
        bytes_per_second: sweeps_per_second * bytes_per_sweep(problem),
    })
}

/// Measures `problem` with the GPU engine over `sweeps` extra sweeps.
pub fn measure_gpu(
    engine: &mut GridEngine,
    problem: &GridProblem,
    sweeps: u32,
) -> Result<Measurement> {
    measure(
        |t| {
            engine
                .solve(problem, &reference_options(Horizon::Finite(t)))
                .map(|_| ())
                .context("GPU bench solve")
        },
        problem,
        16,
        sweeps,
    )
}

/// Measures `problem` with the CPU reference over `sweeps` extra sweeps.
pub fn measure_cpu(problem: &GridProblem, sweeps: u32) -> Result<Measurement> {
    measure(
        |t| solve_cpu(problem, &reference_options(Horizon::Finite(t))).map(|_| ()),
        problem,
        1,
        sweeps,
    )
}
