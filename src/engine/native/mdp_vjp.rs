//! The native engine's VJP of a general-MDP solve (`crate::engine::cpu::mdp_vjp`'s twin): the
//! gradient at the native f32 forward's fixed point as that solve left it, where the f64
//! reference first refines the fixed point by f64 Gauss-Seidel sweeps (on the 255 x 255 maze
//! benchmark those sweeps were most of the backward pass). The policy, the adjoint
//! (Anderson-accelerated Gauss-Seidel) and the products are the reference's, in f64: the
//! gradient is within the f32 values' own error of the f64 one (4e-5 relative on that
//! benchmark). A finite horizon recomputes its steps and runs on the reference.

use crate::engine::cpu::{MdpCotangents, MdpVjp, mdp_vjp_at_fixed_point, mdp_vjp_cpu};
use crate::engine::options::{Horizon, Outputs, SolveOptions};
use crate::engine::schedule::keep_going;
use crate::engine::solution::check_mdp_solve;
use crate::error::Result;
use crate::world::mdp::TabularMdp;

/// The VJP of `mdp`'s solve at `options` (see [`crate::engine::cpu::mdp_vjp_cpu`] for the
/// cotangents and the gradient's layout), infinite horizons at `values` `[task][state]`, the
/// forward solve's V (from any engine), taken as the fixed point, else at the native engine's
/// own solve on `threads` threads.
pub fn mdp_vjp_native(
    mdp: &TabularMdp,
    options: &SolveOptions,
    cotangents: &MdpCotangents,
    values: Option<&[f64]>,
    threads: usize,
) -> Result<MdpVjp> {
    if matches!(options.horizon, Horizon::Finite(_)) && values.is_none() {
        return mdp_vjp_cpu(mdp, options, cotangents);
    }
    match values {
        Some(v) => mdp_vjp_at_fixed_point(mdp, options, cotangents, v),
        None => {
            check_mdp_solve(mdp, options)?;
            let outputs = Outputs {
                policy: false,
                ..Outputs::default()
            };
            let solved = super::solve_native_mdp(mdp, options, outputs, threads, &mut keep_going)?;
            let v: Vec<f64> = solved.solution.values.iter().map(|&x| x.into()).collect();
            mdp_vjp_at_fixed_point(mdp, options, cotangents, &v)
        }
    }
}
