//! The wgpu path: adapter selection, the shared iteration driver, and the gridworld and
//! general-MDP engines.

/// The WGSL of one shader module: files of `shaders/` joined in order, the shared pieces
/// (`shaders/shared/*.wgsl`) before the kernel that uses them. WGSL declarations may come in
/// any order, so joining plain files is all the composition there is (no templating).
macro_rules! wgsl {
    ($($file:literal),+ $(,)?) => {
        concat!($(include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $file)), "\n"),+)
    };
}

pub mod bands;
pub(crate) mod chunks;
pub mod context;
pub mod core;
pub(crate) mod forward;
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
