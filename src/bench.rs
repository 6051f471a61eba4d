//! Throughput measurement shared by `softvi bench` and the criterion benches: the standard
//! workloads, and sweep timing that excludes upload and readback.

use std::path::Path;
use std::time::Instant;

use crate::error::{Context, Result};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::engine::cpu::{solve_cpu, solve_mdp_cpu};
use crate::engine::gpu::mdp_engine::MdpStorage;
use crate::engine::gpu::{GridEngine, MdpEngine};
use crate::engine::options::{Backup, Horizon, Method, Outputs, SolveOptions};
use crate::world::grid::{ActionSet, Connectivity, Grid, MoveCost};
use crate::world::grid_problem::{GridProblem, GridTask};
use crate::world::mdp::{TabularMdp, Transitions, uniform_start};

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
        extrapolate: true,
        method: Method::Vi,
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
/// 1024 x 1024 maps with 20% random obstacles (B = 1, 8),
/// and MovingAI orz900d with 64 goal tasks when `maps` holds it.
pub fn standard_workloads(maps: Option<&Path>) -> Result<Vec<Workload>> {
    let mut names = GRID_WORKLOADS.to_vec();
    if maps.is_none_or(|dir| !dir.join("orz900d.map").exists()) {
        names.retain(|&n| n != "orz900d-b64");
    }
    names.into_iter().map(|n| grid_workload(n, maps)).collect()
}

/// Names of the gridworld workloads, in table order.
pub const GRID_WORKLOADS: [&str; 6] = [
    "maze1024-b1",
    "maze1024-b8",
    "random1024-b1",
    "random1024-b8",
    "maze4096-b1",
    "orz900d-b64",
];

/// A `side` x `side` map whose cells are blocked with probability `blocked` (seeded): the
/// JAX stencil peer's world (`benches/peer_ratio.py` runs it on the peer's exact map).
pub fn random_grid(side: usize, blocked: f64, seed: u64) -> Grid {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut grid = Grid::open(side, side);
    for free in grid.free.iter_mut() {
        *free = rng.random::<f64>() >= blocked;
    }
    grid
}

/// The gridworld workload `name` (one of [`GRID_WORKLOADS`]), built alone; orz900d-b64 reads
/// `orz900d.map` from `maps`, and without it is an error saying where it looked.
pub fn grid_workload(name: &str, maps: Option<&Path>) -> Result<Workload> {
    let problem = match name {
        "maze1024-b1" => reference_problem(Grid::generate_maze(1024, 1024, 0)?, 1),
        "maze1024-b8" => reference_problem(Grid::generate_maze(1024, 1024, 0)?, 8),
        "random1024-b1" => reference_problem(random_grid(1024, 0.2, 0), 1),
        "random1024-b8" => reference_problem(random_grid(1024, 0.2, 0), 8),
        "maze4096-b1" => reference_problem(Grid::generate_maze(4096, 4096, 0)?, 1),
        "orz900d-b64" => {
            let path = maps.map(|dir| dir.join("orz900d.map"));
            match path {
                Some(path) if path.exists() => reference_problem(Grid::load_movingai(&path)?, 64),
                _ => crate::error::bail!(
                    "the orz900d-b64 workload reads orz900d.map, which is not in the maps \
                     folder {} (--maps)",
                    maps.map_or("(none)".into(), |d| d.display().to_string())
                ),
            }
        }
        other => crate::error::bail!(
            "no workload {other:?} (known: {})",
            GRID_WORKLOADS.join(", ")
        ),
    };
    Ok(Workload {
        name: name.into(),
        problem,
    })
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
    updates_per_sweep: f64,
    bytes_per_sweep: f64,
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
    // At most 2^14 extra sweeps: a caller's start beyond that is taken as 2^14.
    let mut extra = extra.clamp(1, 1 << 14);
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
        state_updates_per_second: sweeps_per_second * updates_per_sweep,
        bytes_per_second: sweeps_per_second * bytes_per_sweep,
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
                .solve(
                    problem,
                    &reference_options(Horizon::Finite(t)),
                    Outputs::VALUES,
                )
                .map(|_| ())
                .context("GPU bench solve")
        },
        grid_updates(problem),
        bytes_per_sweep(problem),
        16,
        sweeps,
    )
}

/// Measures `problem` with the native engine on `threads` threads over `sweeps` extra sweeps.
pub fn measure_native(problem: &GridProblem, sweeps: u32, threads: usize) -> Result<Measurement> {
    measure(
        |t| {
            let options = reference_options(Horizon::Finite(t));
            crate::engine::native::solve_native(
                problem,
                &options,
                Outputs::VALUES,
                None,
                threads,
                &mut crate::engine::schedule::keep_going,
            )
            .map(|_| ())
        },
        grid_updates(problem),
        bytes_per_sweep(problem),
        16,
        sweeps,
    )
}

/// Measures `problem` with the CPU reference over `sweeps` extra sweeps.
pub fn measure_cpu(problem: &GridProblem, sweeps: u32) -> Result<Measurement> {
    measure(
        |t| {
            let options = reference_options(Horizon::Finite(t));
            solve_cpu(problem, &options, Outputs::VALUES).map(|_| ())
        },
        grid_updates(problem),
        bytes_per_sweep(problem),
        1,
        sweeps,
    )
}

/// State updates of one sweep of a grid batch: tasks x free cells.
fn grid_updates(problem: &GridProblem) -> f64 {
    (problem.task_count() * problem.grid.free_cells()) as f64
}

/// The sparse-MDP workload: `states` states on a ring of rows of 1000, 8 actions, 4 successors
/// per (s, a): the action's own neighbour (row or column step, or a diagonal) with probability
/// 0.7, two neighbours of it with 0.1 each, and one uniformly drawn state with 0.1 (so the
/// graph is not a grid); rewards -1 + U(-0.1, 0.1); 16 terminal states spread evenly. Seeded.
pub fn sparse_mdp(states: usize, seed: u64) -> TabularMdp {
    let mut rng = StdRng::seed_from_u64(seed);
    let actions = 8;
    let row = 1000i64;
    let offsets = [-row, 1, row, -1, -row + 1, row + 1, row - 1, -row - 1];
    let wrap = |s: i64| s.rem_euclid(states as i64) as u32;
    let (mut indptr, mut indices, mut probs) = (
        Vec::with_capacity(states * actions + 1),
        Vec::with_capacity(states * actions * 4),
        Vec::with_capacity(states * actions * 4),
    );
    indptr.push(0u32);
    for s in 0..states as i64 {
        for (a, &d) in offsets.iter().enumerate() {
            let side = offsets[(a + 1) % 4];
            let mut entries = [
                (wrap(s + d), 0.7f64),
                (wrap(s + d + side), 0.1),
                (wrap(s + d - side), 0.1),
                (rng.random_range(0..states as u32), 0.1),
            ];
            entries.sort_by_key(|e| e.0);
            let mut last = u32::MAX;
            for (j, p) in entries {
                if j == last {
                    *probs.last_mut().unwrap() += p;
                } else {
                    indices.push(j);
                    probs.push(p);
                    last = j;
                }
            }
            indptr.push(indices.len() as u32);
        }
    }
    let reward = (0..states * actions)
        .map(|_| (-1.0 + rng.random_range(-0.1f32..0.1)) as f64)
        .collect();
    let mut terminal = vec![false; states];
    for k in 0..16 {
        terminal[k * states / 16 + states / 32] = true;
    }
    let initial = uniform_start(&terminal);
    TabularMdp {
        states,
        actions,
        tasks: 1,
        transitions: Transitions::sparse(indptr, indices, probs),
        reward,
        terminal,
        terminal_value: vec![0.0; states],
        initial,
    }
}

/// Bytes an MDP sweep moves per task: per state read V (4), write V (4), fixed bits (1/8),
/// per (s, a) the row start (4) and reward (4), per entry the successor (4), probability (4)
/// and its V (4, assumed uncached).
pub fn mdp_bytes_per_sweep(mdp: &TabularMdp) -> f64 {
    mdp.tasks as f64
        * (mdp.states as f64 * 8.125
            + (mdp.states * mdp.actions) as f64 * 8.0
            + mdp.nonzeros() as f64 * 12.0)
}

/// The dense-MDP workload: `states` states, `actions` actions, `tasks` tasks, every row full
/// (weights U(0.05, 1) normalised: the kind `[S,A,S]` model imitation's `mce_partition_fh`
/// takes, kept dense), rewards -1 + U(-0.1, 0.1), no terminal state. Seeded.
pub fn dense_mdp(states: usize, actions: usize, tasks: usize, seed: u64) -> Result<TabularMdp> {
    let mut rng = StdRng::seed_from_u64(seed);
    let rows = states * actions;
    let mut p = Vec::with_capacity(rows * states);
    for _ in 0..rows {
        let row: Vec<f64> = (0..states).map(|_| rng.random_range(0.05..1.0)).collect();
        let total: f64 = row.iter().sum();
        p.extend(row.iter().map(|x| x / total));
    }
    let reward = (0..tasks * rows)
        .map(|_| (-1.0 + rng.random_range(-0.1f32..0.1)) as f64)
        .collect();
    let terminal = vec![false; tasks * states];
    let initial = (0..tasks)
        .flat_map(|_| uniform_start(&terminal[..states]))
        .collect();
    Ok(TabularMdp {
        states,
        actions,
        tasks,
        transitions: Transitions::dense(p, states, actions)?,
        reward,
        terminal,
        terminal_value: vec![0.0; tasks * states],
        initial,
    })
}

/// Bytes a dense-product sweep moves: P (4 per entry) once per tile of up to
/// [`crate::engine::gpu::mdp_engine::MAX_TASK_TILE`] tasks, then per task and state V read
/// and written (8), fixed bits (1/8), and per (s, a) the reward and the product (8).
pub fn dense_bytes_per_sweep(mdp: &TabularMdp) -> f64 {
    let tiles = mdp
        .tasks
        .div_ceil(crate::engine::gpu::mdp_engine::MAX_TASK_TILE as usize);
    let rows = (mdp.states * mdp.actions) as f64;
    tiles as f64 * rows * mdp.states as f64 * 4.0
        + mdp.tasks as f64 * (mdp.states as f64 * 8.125 + rows * 8.0)
}

/// Measures MDP sweeps of `mdp` with the GPU engine over `sweeps` extra sweeps.
pub fn measure_mdp_gpu(
    engine: &mut MdpEngine,
    mdp: &TabularMdp,
    sweeps: u32,
) -> Result<Measurement> {
    measure(
        |t| {
            engine
                .solve(
                    mdp,
                    &reference_options(Horizon::Finite(t)),
                    Outputs::default(),
                )
                .map(|_| ())
                .context("GPU MDP bench solve")
        },
        (mdp.tasks * mdp.states) as f64,
        mdp_bytes_per_sweep(mdp),
        4,
        sweeps,
    )
}

/// Measures MDP sweeps of `mdp` with the GPU engine storing the transitions as `storage`
/// ([`MdpStorage::Dense`]: the tiled product; [`MdpStorage::Csr`]: CSR rows) over `sweeps`
/// extra sweeps; the engine's storage is left at [`MdpStorage::Auto`].
pub fn measure_mdp_gpu_stored(
    engine: &mut MdpEngine,
    mdp: &TabularMdp,
    sweeps: u32,
    storage: MdpStorage,
) -> Result<Measurement> {
    let bytes = match storage {
        MdpStorage::Dense => dense_bytes_per_sweep(mdp),
        _ => mdp_bytes_per_sweep(mdp),
    };
    engine.set_storage(storage);
    let measured = measure(
        |t| {
            engine
                .solve(
                    mdp,
                    &reference_options(Horizon::Finite(t)),
                    Outputs::default(),
                )
                .map(|_| ())
                .context("GPU MDP bench solve")
        },
        (mdp.tasks * mdp.states) as f64,
        bytes,
        2,
        sweeps,
    );
    engine.set_storage(MdpStorage::Auto);
    measured
}

/// Measures MDP sweeps of `mdp` with the native CSR engine on `threads` threads over `sweeps`
/// extra sweeps.
pub fn measure_mdp_native(mdp: &TabularMdp, sweeps: u32, threads: usize) -> Result<Measurement> {
    measure(
        |t| {
            crate::engine::native::solve_native_mdp(
                mdp,
                &reference_options(Horizon::Finite(t)),
                Outputs::default(),
                threads,
                &mut crate::engine::schedule::keep_going,
            )
            .map(|_| ())
        },
        (mdp.tasks * mdp.states) as f64,
        mdp_bytes_per_sweep(mdp),
        4,
        sweeps,
    )
}

/// Measures MDP sweeps of `mdp` with the CPU reference over `sweeps` extra sweeps.
pub fn measure_mdp_cpu(mdp: &TabularMdp, sweeps: u32) -> Result<Measurement> {
    measure(
        |t| {
            solve_mdp_cpu(
                mdp,
                &reference_options(Horizon::Finite(t)),
                Outputs::default(),
            )
            .map(|_| ())
        },
        (mdp.tasks * mdp.states) as f64,
        mdp_bytes_per_sweep(mdp),
        1,
        sweeps,
    )
}

/// The IRL workload: a 256 x 256 open grid, 8-connected, slip 0.1, default move costs, one
/// goal in the far corner; K = 8 smooth features (x, y, their squares and product, two
/// sinusoids, a bias); M = 16 demo sets of 64 episodes of 64 steps sampled (CPU reference)
/// from 16 seeded weight vectors.
pub fn irl_workload() -> Result<IrlWorkload> {
    use crate::world::grid_mdp::GridMdp;
    let side = 256;
    let problem = GridProblem {
        grid: Grid::open(side, side),
        actions: ActionSet {
            connectivity: Connectivity::Eight,
            stay: false,
        },
        slip: 0.1,
        move_cost: MoveCost::default(),
        tasks: vec![GridTask {
            goals: vec![side * side - 1],
            reward: None,
        }],
    };
    let world = GridMdp::new(&problem, None)?;
    let features: Vec<f32> = world
        .cell_of_state
        .iter()
        .flat_map(|&c| {
            let (x, y) = (
                (c as usize % side) as f32 / side as f32,
                (c as usize / side) as f32 / side as f32,
            );
            [
                x,
                y,
                x * x,
                y * y,
                x * y,
                (6.0 * x).sin(),
                (5.0 * y).cos(),
                1.0,
            ]
        })
        .collect();
    let (sets, episodes, steps) = (16, 64, 64);
    let mut rng = StdRng::seed_from_u64(7);
    let theta: Vec<f64> = (0..sets * 8).map(|_| rng.random_range(-0.5..0.5)).collect();
    let truth = crate::analysis::irl::linear_reward_mdp(&world.mdp, &features, sets, &theta)?;
    let options = SolveOptions {
        alpha: 1.0,
        gamma: 1.0,
        horizon: Horizon::Finite(steps as u32),
        ..SolveOptions::default()
    };
    let solved = solve_mdp_cpu(
        &truth,
        &options,
        Outputs {
            all_steps: true,
            ..Outputs::default()
        },
    )?;
    let policy = solved
        .steps
        .and_then(|s| s.policy)
        .context("no policy for the demos")?;
    let samples = crate::analysis::sample::sample(&truth, &policy, steps, episodes, steps, 11)?;
    Ok(IrlWorkload {
        problem,
        world,
        features,
        demos: crate::analysis::irl::Demos {
            sets,
            episodes,
            steps,
            states: samples.states,
            actions: Some(samples.actions),
        },
    })
}

/// The IRL workload's world, features and demos.
pub struct IrlWorkload {
    /// The grid world.
    pub problem: GridProblem,
    /// It as a tabular MDP.
    pub world: crate::world::grid_mdp::GridMdp,
    /// Features, `[state][feature]`.
    pub features: Vec<f32>,
    /// The demos.
    pub demos: crate::analysis::irl::Demos,
}
