//! softvi: batched soft value iteration (the backward messages of control as inference /
//! maximum-entropy RL) as WGSL compute shaders on wgpu, with a CPU reference path.
//!
//! Layout conventions: cells are row-major (`s = row * width + col`), arrays are
//! `[task][row][col]` for values and `[task][row][col][action]` for policies, and actions
//! are ordered `N, E, S, W, NE, SE, SW, NW, STAY` (the subset in use).

pub mod cli;
pub mod gpu;
pub mod grid;
pub mod layout;
pub mod npy;
pub mod output;
pub mod problem;
pub mod reference;
pub mod solve;

pub use gpu::{EngineOptions, GpuContext, GridEngine};
pub use grid::{ActionSet, Connectivity, Grid, MoveCost};
pub use problem::{Backup, GridProblem, GridTask, Horizon, SolveOptions};
pub use solve::{Solution, Status, solve_cpu};
