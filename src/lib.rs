//! softvi: batched soft value iteration (the backward messages of control as inference /
//! maximum-entropy RL) as WGSL compute shaders on wgpu, with a CPU reference path.
//!
//! Layout conventions: cells are row-major (`s = row * width + col`), arrays are
//! `[task][row][col]` for values and `[task][row][col][action]` for policies, and actions
//! are ordered `N, E, S, W, NE, SE, SW, NW, STAY` (the subset in use).
//!
//! ```
//! use softvi::{ActionSet, Connectivity, Grid, GridProblem, GridTask, MoveCost, SolveOptions};
//!
//! # fn main() -> anyhow::Result<()> {
//! let grid = Grid::generate_maze(63, 47, 0)?; // W x H, seed
//! let (w, h) = (grid.width, grid.height);
//! let problem = GridProblem {
//!     tasks: vec![
//!         GridTask { goals: vec![w + 1], reward: None },       // goal X=1, Y=1
//!         GridTask { goals: vec![45 * w + 61], reward: None }, // goal X=61, Y=45
//!     ],
//!     actions: ActionSet { connectivity: Connectivity::Eight, stay: false },
//!     slip: 0.1,
//!     move_cost: MoveCost::default(),
//!     grid,
//! };
//! let options = SolveOptions { alpha: 0.5, ..SolveOptions::default() };
//!
//! // The CPU reference (f64) ...
//! let cpu = softvi::solve_cpu(&problem, &options)?;
//! // ... and the GPU path on any wgpu adapter; an engine keeps its pipelines and buffers.
//! if let Ok(ctx) = softvi::GpuContext::from_env() {
//!     let mut engine = softvi::GridEngine::new(&ctx)?;
//!     let gpu = engine.solve(&problem, &options)?;
//!     let v = |s: &softvi::Solution| s.values[(0 * h + 1) * w + 3]; // task 0, Y=1, X=3
//!     assert!((v(&gpu) - v(&cpu)).abs() < 1e-3);
//! }
//! assert_eq!(cpu.status, vec![softvi::Status::Converged; 2]);
//! # Ok(())
//! # }
//! ```

pub mod analysis;
pub mod bench;
pub mod engine;
pub mod error;
pub mod io;
pub mod world;

pub use analysis::{infer, irl, render, sample, scen};
pub use engine::cpu::{solve_cpu, solve_mdp_cpu};
pub use engine::gpu::{
    EngineOptions, GpuContext, GridEngine, MdpEngine, TaskPosterior, solve_sharded,
};
pub use engine::{
    Backup, CpuReference, GpuSolver, GridKernelsOnMdp, GridSolver, Horizon, MdpSolution, MdpSolver,
    Occupancy, Outputs, ShardedSolver, Solution, SolveOptions, Status, TimeSteps,
};
pub use error::{Error, Result};
/// The wgpu version softvi is built on, for callers that pick adapters themselves.
pub use wgpu;
pub use world::{
    ActionSet, Connectivity, Grid, GridMdp, GridProblem, GridTask, MoveCost, TabularMdp,
};
