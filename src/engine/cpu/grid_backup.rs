//! Twins of `shaders/grid_backup.wgsl`: `grid_backup`, `grid_policy`.

// Index loops mirror the WGSL loops line by line, so a reviewer can diff them by eye.
#![allow(clippy::needless_range_loop)]

use super::residual_reduce::SweepStats;
use super::{soft_max, write_policy};
use crate::engine::layout::GridInputs;
use crate::engine::options::Backup;

/// Q(s, a) for every action of `cell` in `task` from the next values `v_in` `[task][row][col]`.
pub fn action_values(inputs: &GridInputs, task: usize, cell: usize, v_in: &[f64], q: &mut [f64]) {
    let n_actions = inputs.action_count;
    let mask = inputs.move_mask[cell];
    let v_base = task * inputs.cells();
    let mut next = [0.0f64; 9];
    let mut total = 0.0;
    let mut top = f64::NEG_INFINITY;
    for a in 0..n_actions {
        let mut dest = cell;
        if (mask >> a) & 1 != 0 {
            dest = (cell as i64 + inputs.move_offset[a] as i64) as usize;
        }
        next[a] = v_in[v_base + dest];
        total += next[a];
        top = top.max(next[a]);
    }
    let r = inputs.reward[v_base + cell] as f64;
    let (gamma, slip, alpha) = (inputs.gamma, inputs.slip, inputs.alpha);
    let slip_share = slip / n_actions as f64;
    match inputs.backup {
        Backup::Optimistic => {
            let mut weight = [0.0f64; 9];
            let mut mass = 0.0;
            for a in 0..n_actions {
                weight[a] = ((next[a] - top) * gamma / alpha).exp();
                mass += weight[a];
            }
            for a in 0..n_actions {
                let inner = (1.0 - slip) * weight[a] + slip_share * mass;
                q[a] = r - inputs.step_cost[a] + gamma * top + alpha * inner.ln();
            }
        }
        Backup::Expected => {
            for a in 0..n_actions {
                q[a] =
                    r - inputs.step_cost[a] + gamma * ((1.0 - slip) * next[a] + slip_share * total);
            }
        }
    }
}

/// One soft backup sweep over all tasks: `v_out = T(v_in)` on non-fixed cells (fixed cells are
/// copied). Returns per-task residual statistics.
pub fn grid_backup(inputs: &GridInputs, v_in: &[f64], v_out: &mut [f64]) -> Vec<SweepStats> {
    let cells = inputs.cells();
    let mut q = vec![0.0; inputs.action_count];
    let mut stats = vec![SweepStats::default(); inputs.tasks];
    for (task, task_stats) in stats.iter_mut().enumerate() {
        for cell in 0..cells {
            let index = task * cells + cell;
            if inputs.fixed[index] {
                v_out[index] = v_in[index];
                continue;
            }
            action_values(inputs, task, cell, v_in, &mut q);
            let v_new = soft_max(inputs.alpha, &q);
            v_out[index] = v_new;
            task_stats.observe(v_in[index], v_new);
        }
    }
    stats
}

/// `pi(a|s) = exp((Q(s,a) - V(s)) / alpha)` from the next values `v_in`, written as
/// `[task][row][col][action]`; one-hot on the first maximising action (ties within
/// [`super::TIE_RELATIVE`]) when alpha = 0; with `write_q` (the kernel's `WRITE_Q`) the soft
/// Q-values themselves. Fixed cells get a row of zeros, as the kernel leaves them (they take no
/// action); solutions report NaN there ([`crate::engine::solution::Marks`]).
pub fn grid_policy(inputs: &GridInputs, v_in: &[f64], write_q: bool) -> Vec<f32> {
    let cells = inputs.cells();
    let n_actions = inputs.action_count;
    let mut policy = vec![0.0f32; inputs.tasks * cells * n_actions];
    let mut q = vec![0.0; n_actions];
    for task in 0..inputs.tasks {
        for cell in 0..cells {
            let index = task * cells + cell;
            if inputs.fixed[index] {
                continue;
            }
            action_values(inputs, task, cell, v_in, &mut q);
            write_policy(
                inputs.alpha,
                &q,
                write_q,
                &mut policy[index * n_actions..(index + 1) * n_actions],
            );
        }
    }
    policy
}
