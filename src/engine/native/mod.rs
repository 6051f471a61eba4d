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
pub use mdp_backup::{COLUMN_BLOCK_STATES, COLUMN_BLOCKED_FROM, NativeMdp};
pub use mdp_vjp::mdp_vjp_native;
pub use solve::{default_threads, solve_native, solve_native_mdp};

/// Asks the kernel to back `v` with transparent huge pages (2 MiB) where the machine allows it
/// (THP in `madvise` mode): a sweep streaming a 400 MB matrix then misses the TLB 512 times
/// less often (the dense sweep of S = 5,000, A = 4 took 8-11 ms instead of 12-13 in a
/// microbenchmark on 2 threads). Call it on zeroed memory before the first write, which is when
/// the pages are mapped. A no-op elsewhere, and for a small `v`.
fn huge_pages<T>(v: &mut [T]) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let bytes = std::mem::size_of_val(v);
        if bytes < 4 << 20 {
            return;
        }
        let start = v.as_mut_ptr() as usize;
        let aligned = start.next_multiple_of(PAGE);
        let len = (start + bytes - aligned) / PAGE * PAGE;
        // SAFETY: madvise only advises the kernel about a page-aligned range inside `v`'s own
        // allocation; it changes no memory contents (MADV_HUGEPAGE keeps the data) and a
        // failure (EINVAL where THP is off) is harmless, so its result is ignored.
        unsafe {
            libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = v;
}

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
