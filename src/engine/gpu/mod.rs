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

/// The temperature uniforms of the backup kernels, `(alpha * ln 2, log2(e) / alpha)`, for
/// alpha > 0 taken at least as the smallest normal f32: below about 4e-39, `log2(e) / alpha`
/// overflows f32 and `exp_shifted` turns the largest Q's `0 * inf` into NaN (every value NaN
/// at `--alpha 1e-40`). That alpha is far below `soft_policy_resolved`, so the
/// policy is the hard max's there and V's soft term is below f32 resolution either way.
pub(crate) fn temperature_uniforms(alpha: f64) -> (f32, f32) {
    if alpha == 0.0 {
        return (0.0, 0.0);
    }
    let alpha = (alpha as f32).max(f32::MIN_POSITIVE);
    (
        alpha * std::f32::consts::LN_2,
        std::f32::consts::LOG2_E / alpha,
    )
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
pub use task_posterior::{MetaPosterior, TaskPosterior};
