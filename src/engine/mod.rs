//! The solvers: the options and outputs both backends honour, the check schedule, the result
//! types, the kernel input layouts, the f64 CPU reference ([`cpu`]), the wgpu engines
//! ([`gpu`]) and the native f32 CPU engine ([`native`]).

pub mod cpu;
pub mod gpu;
pub mod layout;
pub mod memory;
#[cfg(not(target_arch = "wasm32"))]
pub mod native;
pub mod options;
pub mod schedule;
pub mod solution;
pub mod solver;
pub mod warm_start;

pub use options::{Backup, Horizon, Method, Outputs, SolveOptions};
pub use schedule::{OnProgress, Progress, keep_going};
pub use solution::{MdpSolution, Occupancy, Real, Solution, Status, TimeSteps};
pub use solver::{CpuReference, GpuSolver, GridKernelsOnMdp, GridSolver, MdpSolver};
#[cfg(not(target_arch = "wasm32"))]
pub use solver::{NativeSolver, ShardedSolver};

/// Wall-clock time of the solve drivers: std's `Instant` panics on wasm32-unknown-unknown,
/// where `web_time` reads the browser's `performance.now()`.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) use std::time::Instant;
#[cfg(target_arch = "wasm32")]
pub(crate) use web_time::Instant;
