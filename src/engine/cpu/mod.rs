//! CPU reference: plain f64 twins of the WGSL kernels, one file per shader and one function
//! per entry point, written to read like them. The tests take these as the truth for the GPU
//! path, and `--backend cpu` runs them through the drivers in [`solve`].
//!
//! `shaders/grid_backup.wgsl::grid_backup` <-> [`grid_backup::grid_backup`],
//! `shaders/grid_backup.wgsl::grid_policy` <-> [`grid_backup::grid_policy`] (Q with
//! `WRITE_Q`),
//! `shaders/extrapolate.wgsl::extrapolate` <-> [`extrapolate::extrapolate`],
//! `shaders/grid_occupancy.wgsl::grid_occupancy` <-> [`grid_occupancy::grid_occupancy`],
//! `shaders/mdp_backup.wgsl::mdp_backup` <-> [`mdp_backup::mdp_backup`],
//! `shaders/mdp_backup.wgsl::mdp_policy` <-> [`mdp_backup::mdp_policy`] (Q with `WRITE_Q`),
//! `shaders/mdp_occupancy.wgsl::mdp_occupancy` <-> [`mdp_occupancy::mdp_occupancy`],
//! `shaders/mdp_occupancy.wgsl::mdp_occupancy_weights` <-> [`mdp_occupancy::mdp_occupancy_weights`],
//! `shaders/task_posterior.wgsl` <-> [`task_posterior::task_posterior`],
//! `shaders/residual_reduce.wgsl::residual_reduce` <-> [`residual_reduce::residual_reduce`],
//! `shaders/residual_reduce.wgsl::convergence_decide` <-> [`residual_reduce::convergence_decide`]
//! (with [`crate::engine::schedule::RateExtrapolator`]); modified policy iteration's
//! improvement and evaluation sweeps (no shader yet) <-> [`policy_evaluation`]; the `frozen` branch of every
//! backup kernel (`grid_backup`, `mdp_backup`, `mdp_occupancy`) <-> [`hold_frozen`].

pub mod extrapolate;
pub mod grid_backup;
pub mod grid_occupancy;
pub mod mdp_backup;
pub mod mdp_occupancy;
pub mod mdp_vjp;
pub mod policy_evaluation;
pub mod residual_reduce;
pub mod solve;
pub mod task_posterior;

pub use extrapolate::extrapolate;
pub use grid_backup::{action_values, grid_backup, grid_policy};
pub use grid_occupancy::grid_occupancy;
pub use mdp_backup::{csr_action_values, mdp_action_values, mdp_backup, mdp_policy};
pub use mdp_occupancy::{mdp_occupancy, mdp_occupancy_weights};
pub use mdp_vjp::{MdpCotangents, MdpVjp, mdp_vjp_at_fixed_point, mdp_vjp_cpu, mdp_vjp_cpu_at};
pub use residual_reduce::{SweepStats, convergence_decide, residual_reduce};
pub use solve::{
    iterate_cpu, iterate_mpi_cpu, solve_cpu, solve_cpu_with_progress, solve_mdp_cpu,
    solve_mdp_cpu_f64, solve_mdp_cpu_with_progress,
};
pub use task_posterior::task_posterior;

use crate::engine::solution::Real;

/// Twin of the `frozen` branch of the backup kernels: a task that stopped iterating at an
/// earlier check (converged or diverged) keeps its values, `v_out = v_in`, and reports no
/// updated element. Arrays are `[task][state]`, `frozen` and `stats` `[task]`.
pub fn hold_frozen(frozen: &[bool], v_in: &[f64], v_out: &mut [f64], stats: &mut [SweepStats]) {
    let states = v_in.len() / frozen.len().max(1);
    for (t, _) in frozen.iter().enumerate().filter(|(_, f)| **f) {
        let range = t * states..(t + 1) * states;
        v_out[range.clone()].copy_from_slice(&v_in[range]);
        stats[t] = SweepStats::default();
    }
}

/// Two Q values closer than this (relative to max(1, |max Q|)) tie for the hard-max policy;
/// the first maximising action wins. Same constant as `TIE_RELATIVE` in the shader: the rule
/// of every result reported in f32 (the GPU, the native engine, the reference's f32 twin).
pub const TIE_RELATIVE: f64 = 1e-5;

/// [`TIE_RELATIVE`] of results reported in f64 (the reference's f64 path: Python's
/// `device="cpu"`, `--backend cpu --dtype f64`). Q in f64 carries rounding of a few ulps of
/// |Q| per backup (2.2e-16 each), so ties are ~4,500 ulps wide and the soft policy is
/// resolved at any alpha >= 1e-12 max(1, |max Q|): at temperature 1 up to |Q| = 1e12, where
/// the f32 rule turns one-hot at |Q| = 1e5.
pub const TIE_RELATIVE_F64: f64 = 1e-12;

/// `V = alpha * log sum_a exp(Q / alpha)` computed stably, or `max_a Q` when alpha = 0.
pub fn soft_max(alpha: f64, q: &[f64]) -> f64 {
    let top = q.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if alpha == 0.0 || top == f64::NEG_INFINITY {
        return top;
    }
    let total: f64 = q.iter().map(|&x| ((x - top) / alpha).exp()).sum();
    top + alpha * total.ln()
}

/// Whether the soft policy of a state whose largest Q is `top` is resolved at temperature
/// `alpha` in a result reported with tie width `tie_relative` ([`Real::TIE_RELATIVE`]):
/// `alpha >= tie_relative * max(1, |top|)`, the hard max's tie width. In f32, the GPU's Q
/// carries f32 rounding of a few ulps of |Q| per backup (up to about 1e-6 |V| after many
/// sweeps, see [`crate::engine::schedule::RESIDUAL_FLOOR`]) and `exp((Q - V) / alpha)`
/// multiplies it by 1 / alpha: below this alpha rounding, not Q, decides the policy (on the
/// 31 x 31 maze, |V| <= 55, rows summed to 0.77..2 at alpha = 1e-6). There both
/// backends write the hard max's one-hot policy, so that they stay comparable; V keeps its soft
/// form. Twin of `soft_policy_resolved` in `shaders/shared/policy_ties.wgsl` (with
/// [`TIE_RELATIVE`]); the f64 path's [`TIE_RELATIVE_F64`] keeps policies soft down to
/// alpha = 1e-12 max(1, |top|).
pub fn soft_policy_resolved(alpha: f64, top: f64, tie_relative: f64) -> bool {
    alpha >= tie_relative * top.abs().max(1.0)
}

/// `pi = exp((Q - V) / alpha)` with V the soft max of `q`, computed as the normalised
/// `exp((Q - max Q) / alpha)` so that the row sums to 1; one-hot on the first maximiser (ties
/// within `T::TIE_RELATIVE`: [`TIE_RELATIVE`] in f32, [`TIE_RELATIVE_F64`] in f64) when
/// alpha = 0 or alpha is below [`soft_policy_resolved`]; `q` itself when `write_q` (the
/// kernels' `WRITE_Q`).
pub(crate) fn write_policy<T: Real>(alpha: f64, q: &[f64], write_q: bool, out: &mut [T]) {
    let top = q.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if write_q {
        for (x, &qa) in out.iter_mut().zip(q) {
            *x = T::from_f64(qa);
        }
    } else if alpha == 0.0 || !soft_policy_resolved(alpha, top, T::TIE_RELATIVE) {
        let tie = top - T::TIE_RELATIVE * top.abs().max(1.0);
        let first = q.iter().position(|&x| x >= tie).unwrap_or(0);
        for (a, p) in out.iter_mut().enumerate() {
            *p = T::from_f64(if a == first { 1.0 } else { 0.0 });
        }
    } else {
        let total: f64 = q.iter().map(|&qa| ((qa - top) / alpha).exp()).sum();
        for (p, &qa) in out.iter_mut().zip(q) {
            *p = T::from_f64(((qa - top) / alpha).exp() / total);
        }
    }
}
