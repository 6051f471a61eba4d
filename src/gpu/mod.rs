//! The wgpu path: adapter selection and the gridworld engine.

pub mod context;
pub mod grid_engine;
pub mod sharded;

pub use context::GpuContext;
pub use grid_engine::{EngineOptions, GridEngine};
pub use sharded::solve_sharded;
