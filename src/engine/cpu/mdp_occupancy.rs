//! Twin of `shaders/mdp_occupancy.wgsl`: `mdp_occupancy`.

// Index loops mirror the WGSL loops line by line, so a reviewer can diff them by eye.
#![allow(clippy::needless_range_loop)]

use super::residual_reduce::SweepStats;
use crate::engine::layout::MdpInputs;
use crate::world::mdp::Transpose;

/// One forward step of the state occupancy, pulled over the transitions into each state:
/// `d_out(s') = base(s') + gamma * sum_{(s,a) -> s'} d_in(s) pi(a|s) P(s'|s,a)`, where states
/// that stop (terminal, or excluded with gamma = 1) pass nothing on. `policy` is
/// `[task][state][action]`, the rest `[task][state]`; `base` is absent for a finite-horizon
/// step (`D_{t+1}`) and the start distribution for the discounted sum's fixed point.
pub fn mdp_occupancy(
    inputs: &MdpInputs,
    transpose: &Transpose,
    policy: &[f32],
    d_in: &[f64],
    base: Option<&[f32]>,
    d_out: &mut [f64],
) -> Vec<SweepStats> {
    let mdp = inputs.mdp;
    let (n, states) = (mdp.actions, mdp.states);
    let mut stats = vec![SweepStats::default(); mdp.tasks];
    for (task, task_stats) in stats.iter_mut().enumerate() {
        let offset = task * states;
        for s_next in 0..states {
            let mut inflow = 0.0;
            for k in transpose.indptr[s_next] as usize..transpose.indptr[s_next + 1] as usize {
                let row = transpose.rows[k] as usize;
                let s = row / n;
                if inputs.fixed[offset + s] {
                    continue;
                }
                inflow += d_in[offset + s]
                    * policy[(offset + s) * n + row % n] as f64
                    * transpose.probs[k] as f64;
            }
            let index = offset + s_next;
            d_out[index] = base.map_or(0.0, |b| b[index] as f64) + inputs.gamma * inflow;
            task_stats.observe(d_in[index], d_out[index]);
        }
    }
    stats
}
