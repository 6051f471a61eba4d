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

/// Runs a future of the GPU path to its end for the synchronous API. Natively the readbacks
/// inside it wait on `device.poll`, so it blocks (pollster). In a browser a readback resolves
/// only once control returns to the event loop, so there the future is polled once and one
/// that still waits is an error: the web build calls the `_async` methods and awaits them.
pub(crate) fn wait<T>(future: impl Future<Output = crate::Result<T>>) -> crate::Result<T> {
    #[cfg(not(target_arch = "wasm32"))]
    return pollster::block_on(future);
    #[cfg(target_arch = "wasm32")]
    {
        let mut future = std::pin::pin!(future);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(out) => out,
            std::task::Poll::Pending => Err(crate::Error::Gpu(
                "in a browser the GPU answers asynchronously: call the `_async` method and \
                 await it"
                    .into(),
            )),
        }
    }
}

pub mod bands;
pub(crate) mod chunks;
pub mod context;
pub mod core;
pub(crate) mod forward;
pub mod grid_engine;
pub mod grid_vjp;
pub mod mdp_engine;
pub mod mdp_vjp;
#[cfg(not(target_arch = "wasm32"))]
pub mod sharded;
pub mod task_posterior;

pub use context::GpuContext;
pub use core::EngineOptions;
pub use grid_engine::GridEngine;
pub use mdp_engine::MdpEngine;
#[cfg(not(target_arch = "wasm32"))]
pub use sharded::solve_sharded;
pub use task_posterior::{MetaPosterior, TaskPosterior};
