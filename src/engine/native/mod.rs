//! The native engine: the grid and CSR backups in f32 on every CPU core, for machines whose
//! only wgpu adapter is a software rasteriser (llvmpipe runs the WGSL kernels several times
//! slower than this). Plain grid solves (values, policy, Q; finite and infinite horizons) and
//! general MDPs with every output; every step and the occupancy of a grid go to another solver
//! ([`crate::engine::solver::NativeSolver`]).
//!
//! `shaders/grid_backup.wgsl::grid_backup` <-> [`grid_backup::NativeGrid::sweep`] (its
//! per-cell form is [`grid_backup::NativeGrid::cell_value`]);
//! `shaders/mdp_backup.wgsl::mdp_backup` <-> [`mdp_backup::NativeMdp::sweep`];
//! modified policy iteration's improvement and evaluation sweeps (no shader yet) <->
//! [`mdp_backup::NativeMdp::improve`] and [`mdp_backup::NativeMdp::evaluate`], twins of
//! [`crate::engine::cpu::policy_evaluation`];
//! `shaders/mdp_occupancy.wgsl::mdp_occupancy` (`WEIGHTED`) <->
//! [`mdp_backup::NativeOccupancy::sweep`]; the VJP of a solve is [`mdp_vjp::mdp_vjp_native`]
//! (the reference's at the native forward's fixed point); the policy and Q are the reference's `grid_policy`
//! and `mdp_policy` from the f32 values, threaded.

pub mod fast_math;
pub mod grid_backup;
pub mod mdp_backup;
pub mod mdp_vjp;
pub mod solve;

pub use grid_backup::NativeGrid;
pub use mdp_backup::NativeMdp;
pub use mdp_vjp::mdp_vjp_native;
pub use solve::{default_threads, solve_native, solve_native_mdp};

/// `out` as rows of `row_len` entries split into one contiguous share per thread of
/// `threads`: `fill(scratch, index, row)` for every row (`index` counted over all of `out`),
/// with `scratch` made once per thread by `scratch()`.
fn rows_on_threads<T: Send, W>(
    out: &mut [T],
    row_len: usize,
    threads: usize,
    scratch: impl Fn() -> W + Sync,
    fill: impl Fn(&mut W, usize, &mut [T]) + Sync,
) {
    let per = (out.len() / row_len.max(1)).div_ceil(threads.max(1)).max(1);
    let (scratch, fill) = (&scratch, &fill);
    std::thread::scope(|scope| {
        for (chunk, out) in out.chunks_mut(per * row_len).enumerate() {
            scope.spawn(move || {
                let mut w = scratch();
                for (k, row) in out.chunks_exact_mut(row_len).enumerate() {
                    fill(&mut w, chunk * per + k, row);
                }
            });
        }
    });
}
