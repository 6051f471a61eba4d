//! Twins of `shaders/mdp_backup.wgsl`: `mdp_backup`, `mdp_policy`.

// Index loops mirror the WGSL loops line by line, so a reviewer can diff them by eye.
#![allow(clippy::needless_range_loop)]

use super::residual_reduce::SweepStats;
use super::{soft_max, write_policy};
use crate::engine::layout::MdpInputs;
use crate::engine::options::Backup;
use crate::engine::solution::Real;

/// Q(s, a) for every action of state `s` in `task` of a general MDP from the next values
/// `v_in` `[task][state]`: the same backups as [`super::action_values`] over the CSR row `s * A + a`.
pub fn mdp_action_values(inputs: &MdpInputs, task: usize, s: usize, v_in: &[f64], q: &mut [f64]) {
    let base = task * inputs.mdp.states;
    csr_action_values(
        inputs.mdp,
        inputs.backup,
        inputs.alpha,
        inputs.gamma,
        task,
        s,
        |j| v_in[base + j],
        q,
    );
}

/// [`mdp_action_values`] with the next values of `task` given by `next(state)`.
#[allow(clippy::too_many_arguments)]
pub fn csr_action_values(
    mdp: &crate::world::mdp::TabularMdp,
    backup: Backup,
    alpha: f64,
    gamma: f64,
    task: usize,
    s: usize,
    next: impl Fn(usize) -> f64,
    q: &mut [f64],
) {
    let n = mdp.actions;
    for a in 0..n {
        let row = s * n + a;
        let entries = mdp.csr().indptr[row] as usize..mdp.csr().indptr[row + 1] as usize;
        let r = mdp.reward[(task * mdp.states + s) * n + a];
        q[a] = match backup {
            Backup::Expected => {
                let mut expected = 0.0;
                for k in entries {
                    expected += mdp.csr().probs[k] * next(mdp.csr().indices[k] as usize);
                }
                r + gamma * expected
            }
            Backup::Optimistic => {
                let top = entries
                    .clone()
                    .map(|k| next(mdp.csr().indices[k] as usize))
                    .fold(f64::NEG_INFINITY, f64::max);
                if top == f64::NEG_INFINITY {
                    f64::NEG_INFINITY
                } else {
                    let mut mass = 0.0;
                    for k in entries {
                        let v = next(mdp.csr().indices[k] as usize);
                        mass += mdp.csr().probs[k] * ((v - top) * gamma / alpha).exp();
                    }
                    r + gamma * top + alpha * mass.ln()
                }
            }
        };
    }
}

/// One soft backup sweep of a general MDP over all tasks (fixed states copied); per-task
/// residual statistics.
pub fn mdp_backup(inputs: &MdpInputs, v_in: &[f64], v_out: &mut [f64]) -> Vec<SweepStats> {
    let mdp = inputs.mdp;
    let mut q = vec![0.0; mdp.actions];
    let mut stats = vec![SweepStats::default(); mdp.tasks];
    for (task, task_stats) in stats.iter_mut().enumerate() {
        for s in 0..mdp.states {
            let index = task * mdp.states + s;
            if inputs.fixed[index] {
                v_out[index] = v_in[index];
                continue;
            }
            mdp_action_values(inputs, task, s, v_in, &mut q);
            v_out[index] = soft_max(inputs.alpha, &q);
            // A state every action of which may step into an excluded one has value -inf for
            // good; it is not a runaway.
            if v_out[index] != f64::NEG_INFINITY {
                task_stats.observe(v_in[index], v_out[index]);
            }
        }
    }
    stats
}

/// `pi(a|s)` of a general MDP from the next values `v_in`, `[task][state][action]`; one-hot
/// on the first maximising action (ties within [`super::TIE_RELATIVE`]) when alpha = 0; with
/// `write_q` (the kernel's `WRITE_Q`) the soft Q-values themselves. Fixed states get a row of
/// zeros, as the kernel writes them (they pass no mass on in the forward pull); solutions
/// report NaN there ([`crate::engine::solution::Marks`]).
pub fn mdp_policy<T: Real>(inputs: &MdpInputs, v_in: &[f64], write_q: bool) -> Vec<T> {
    let mdp = inputs.mdp;
    let n = mdp.actions;
    let mut policy = vec![T::default(); mdp.tasks * mdp.states * n];
    let mut q = vec![0.0; n];
    for task in 0..mdp.tasks {
        for s in 0..mdp.states {
            let index = task * mdp.states + s;
            if inputs.fixed[index] {
                continue;
            }
            mdp_action_values(inputs, task, s, v_in, &mut q);
            write_policy(
                inputs.alpha,
                &q,
                write_q,
                &mut policy[index * n..(index + 1) * n],
            );
        }
    }
    policy
}
