//! softvi: batched soft value iteration (the backward messages of control as inference /
//! maximum-entropy RL) as WGSL compute shaders on wgpu, with a CPU reference path.
//!
//! Layout conventions: cells are row-major (`s = row * width + col`), arrays are
//! `[task][row][col]` for values and `[task][row][col][action]` for policies, and actions
//! are ordered `N, E, S, W, NE, SE, SW, NW, STAY` (the subset in use).
//!
//! ```
//! use softvi::{
//!     ActionSet, Connectivity, CpuReference, GpuSolver, Grid, GridProblem, GridSolver, GridTask,
//!     MoveCost, Outputs, SolveOptions, keep_going,
//! };
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
//! let cpu = CpuReference.solve_grid(&problem, None, &options, Outputs::default(), &mut keep_going)?;
//! // ... and the GPU path on any wgpu adapter; a solver keeps its pipelines and buffers.
//! match GpuSolver::from_env() {
//!     Ok(mut gpu) => {
//!         let gpu = gpu.solve_grid(&problem, None, &options, Outputs::default(), &mut keep_going)?;
//!         let v = |s: &softvi::MdpSolution| s.solution.values[(0 * h + 1) * w + 3]; // task 0, Y=1, X=3
//!         assert!((v(&gpu) - v(&cpu)).abs() < 1e-3);
//!     }
//!     Err(softvi::Error::NoAdapter(why)) => eprintln!("CPU only: {why}"),
//!     Err(e) => return Err(e.into()),
//! }
//! assert_eq!(cpu.solution.status, vec![softvi::Status::Converged; 2]);
//! # Ok(())
//! # }
//! ```

// Every public item says what it is, with units and array layouts: CI denies a missing doc
// (clippy and `cargo doc` run with `-D warnings`).
#![warn(missing_docs)]

pub mod analysis;
#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
pub mod engine;
pub mod error;
pub mod io;
pub mod world;

pub use analysis::{infer, irl, meta, qlearn, render, sample, scen};
pub use engine::cpu::{solve_cpu, solve_mdp_cpu};
#[cfg(not(target_arch = "wasm32"))]
pub use engine::gpu::solve_sharded;
pub use engine::gpu::{EngineOptions, GpuContext, GridEngine, MdpEngine, TaskPosterior};
pub use engine::{
    Backup, CpuReference, GpuSolver, GridKernelsOnMdp, GridSolver, Horizon, MdpSolution, MdpSolver,
    Method, Occupancy, OnProgress, Outputs, Progress, Real, Solution, SolveOptions, Status,
    TimeSteps, keep_going,
};
#[cfg(not(target_arch = "wasm32"))]
pub use engine::{NativeSolver, ShardedSolver};
pub use error::{Error, Result};
/// The wgpu version softvi is built on, for callers that pick adapters themselves.
pub use wgpu;
pub use world::{
    ActionSet, Connectivity, Grid, GridMdp, GridProblem, GridTask, MoveCost, TabularMdp,
};
