//! Twins of `shaders/mdp_occupancy.wgsl`: `mdp_occupancy`, `mdp_occupancy_weights`.

// Index loops mirror the WGSL loops line by line, so a reviewer can diff them by eye.
#![allow(clippy::needless_range_loop)]

use super::residual_reduce::SweepStats;
use crate::engine::layout::MdpInputs;
use crate::engine::solution::Real;
use crate::world::mdp::Transpose;

/// One forward step of the state occupancy, pulled over the transitions into each state:
/// `d_out(s') = base(s') + gamma * sum_{(s,a) -> s'} d_in(s) pi(a|s) P(s'|s,a)`. `policy` is
/// `[task][state][action]` with zero rows on states that stop (terminal, or excluded with
/// gamma = 1), as [`super::mdp_policy`] and the kernel write them, so they pass nothing on;
/// with `weights` (`[task][entry]`, from [`mdp_occupancy_weights`]) each entry's
/// `pi(a|s) P(s'|s,a)` is read from there instead (the kernel's `WEIGHTED`). The rest is
/// `[task][state]`; `base` is absent for a finite-horizon step (`D_{t+1}`) and the start
/// distribution for the discounted sum's fixed point.
pub fn mdp_occupancy<T: Real>(
    inputs: &MdpInputs,
    transpose: &Transpose,
    policy: &[T],
    weights: Option<&[f64]>,
    d_in: &[f64],
    base: Option<&[f64]>,
    d_out: &mut [f64],
) -> Vec<SweepStats> {
    let mdp = inputs.mdp;
    let states = mdp.states;
    let mut stats = vec![SweepStats::default(); mdp.tasks];
    for (task, task_stats) in stats.iter_mut().enumerate() {
        for s_next in 0..states {
            let index = task * states + s_next;
            let inflow = occupancy_inflow(inputs, transpose, policy, weights, d_in, index);
            d_out[index] = base.map_or(0.0, |b| b[index]) + inputs.gamma * inflow;
            task_stats.observe(d_in[index], d_out[index]);
        }
    }
    stats
}

/// `sum_{(s,a) -> s'} d_in(s) pi(a|s) P(s'|s,a)` into `index = task * S + s'`, as
/// [`mdp_occupancy`] pulls it (the same arguments).
pub fn occupancy_inflow<T: Real>(
    inputs: &MdpInputs,
    transpose: &Transpose,
    policy: &[T],
    weights: Option<&[f64]>,
    d_in: &[f64],
    index: usize,
) -> f64 {
    let (n, states, entries) = (inputs.mdp.actions, inputs.mdp.states, transpose.rows.len());
    let (task, s_next) = (index / states, index % states);
    let offset = task * states;
    let mut inflow = 0.0;
    for k in transpose.indptr[s_next] as usize..transpose.indptr[s_next + 1] as usize {
        let row = transpose.rows[k] as usize;
        let weight = match weights {
            Some(w) => w[task * entries + k],
            None => policy[offset * n + row].to_f64() * transpose.probs[k],
        };
        inflow += d_in[offset + row / n] * weight;
    }
    inflow
}

/// Twin of `mdp_occupancy_weights`: `pi(a|s) P(s'|s,a)` of every transposed entry, once for
/// a fixed policy (the discounted sum's), `[task][entry]`.
pub fn mdp_occupancy_weights<T: Real>(
    inputs: &MdpInputs,
    transpose: &Transpose,
    policy: &[T],
) -> Vec<f64> {
    let mdp = inputs.mdp;
    let (n, states) = (mdp.actions, mdp.states);
    (0..mdp.tasks)
        .flat_map(|task| {
            transpose
                .rows
                .iter()
                .zip(&transpose.probs)
                .map(move |(&row, &p)| policy[task * states * n + row as usize].to_f64() * p)
        })
        .collect()
}
