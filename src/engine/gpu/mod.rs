//! The wgpu path: adapter selection, the shared iteration driver, and the gridworld and
//! general-MDP engines.

pub mod context;
pub mod core;
pub mod grid_engine;
pub mod mdp_engine;
pub mod sharded;
pub mod task_posterior;

pub use context::GpuContext;
pub use core::EngineOptions;
pub use grid_engine::GridEngine;
pub use mdp_engine::MdpEngine;
pub use sharded::solve_sharded;
pub use task_posterior::TaskPosterior;
