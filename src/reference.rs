//! CPU reference: plain f64 twins of the WGSL kernels, written to read like them. The tests
//! take these as the truth for the GPU path, and `--backend cpu` runs them.
//!
//! `shaders/grid_backup.wgsl::grid_backup` <-> [`grid_backup`],
//! `shaders/grid_backup.wgsl::grid_policy` <-> [`grid_policy`],
//! `shaders/grid_backup.wgsl::grid_extrapolate` <-> [`grid_extrapolate`],
//! `shaders/grid_occupancy.wgsl::grid_occupancy` <-> [`grid_occupancy`],
//! `shaders/mdp_backup.wgsl::mdp_backup` <-> [`mdp_backup`],
//! `shaders/mdp_backup.wgsl::mdp_policy` <-> [`mdp_policy`],
//! `shaders/mdp_occupancy.wgsl::mdp_occupancy` <-> [`mdp_occupancy`],
//! `shaders/task_posterior.wgsl` <-> [`task_posterior`],
//! `shaders/residual_reduce.wgsl` <-> [`SweepStats`].

// Index loops mirror the WGSL loops line by line, so a reviewer can diff them by eye.
#![allow(clippy::needless_range_loop)]

use crate::layout::GridInputs;
use crate::mdp::{MdpInputs, Transpose};
use crate::problem::Backup;

/// Two Q values closer than this (relative to max(1, |max Q|)) tie for the hard-max policy;
/// the first maximising action wins. Same constant as `TIE_RELATIVE` in the shader.
pub const TIE_RELATIVE: f64 = 1e-5;

/// Residual statistics of one sweep for one task, as the GPU reduction produces them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SweepStats {
    /// `max_s |V_new(s) - V_old(s)|` over updated cells.
    pub max_abs_delta: f64,
    /// `min_s (V_new(s) - V_old(s))` over updated cells (+inf when none).
    pub min_delta: f64,
    /// `max_s |V_new(s)|` over updated cells.
    pub max_abs_value: f64,
    /// Whether any cell was updated.
    pub active: bool,
}

impl Default for SweepStats {
    fn default() -> Self {
        Self {
            max_abs_delta: 0.0,
            min_delta: f64::INFINITY,
            max_abs_value: 0.0,
            active: false,
        }
    }
}

impl SweepStats {
    /// Adds one updated cell.
    pub fn observe(&mut self, v_old: f64, v_new: f64) {
        let delta = v_new - v_old;
        self.max_abs_delta = self.max_abs_delta.max(delta.abs());
        self.min_delta = self.min_delta.min(delta);
        self.max_abs_value = self.max_abs_value.max(v_new.abs());
        self.active = true;
        if !v_new.is_finite() {
            self.max_abs_value = f64::INFINITY;
            self.max_abs_delta = f64::INFINITY;
        }
    }
}

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

/// `V = alpha * log sum_a exp(Q / alpha)` computed stably, or `max_a Q` when alpha = 0.
pub fn soft_max(alpha: f64, q: &[f64]) -> f64 {
    let top = q.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if alpha == 0.0 || top == f64::NEG_INFINITY {
        return top;
    }
    let total: f64 = q.iter().map(|&x| ((x - top) / alpha).exp()).sum();
    top + alpha * total.ln()
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

/// The jump of [`crate::solve::RateExtrapolator`] per task: for a factor > 0, `backup = V`,
/// then `V += factor * (V - V_prev)` on non-`fixed` states; for [`crate::solve::ROLLBACK`],
/// `V = backup`. Arrays are `[task][state]`.
pub fn grid_extrapolate(
    fixed: &[bool],
    v: &mut [f64],
    v_prev: &[f64],
    backup: &mut [f64],
    factors: &[f64],
) {
    let cells = fixed.len() / factors.len().max(1);
    for (task, &factor) in factors.iter().enumerate() {
        let range = task * cells..(task + 1) * cells;
        if factor < 0.0 {
            v[range.clone()].copy_from_slice(&backup[range]);
        } else if factor > 0.0 {
            backup[range.clone()].copy_from_slice(&v[range.clone()]);
            for index in range {
                if !fixed[index] {
                    v[index] += factor * (v[index] - v_prev[index]);
                }
            }
        }
    }
}

/// `pi(a|s) = exp((Q(s,a) - V(s)) / alpha)` from the next values `v_in`, written as
/// `[task][row][col][action]`; one-hot on the first maximising action (ties within
/// [`TIE_RELATIVE`]) when alpha = 0. Fixed cells get NaN.
pub fn grid_policy(inputs: &GridInputs, v_in: &[f64]) -> Vec<f32> {
    let cells = inputs.cells();
    let n_actions = inputs.action_count;
    let mut policy = vec![f32::NAN; inputs.tasks * cells * n_actions];
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
                &mut policy[index * n_actions..(index + 1) * n_actions],
            );
        }
    }
    policy
}

/// Q(s, a) for every action of state `s` in `task` of a general MDP from the next values
/// `v_in` `[task][state]`: the same backups as [`action_values`] over the CSR row `s * A + a`.
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
    mdp: &crate::mdp::TabularMdp,
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
        let entries = mdp.indptr[row] as usize..mdp.indptr[row + 1] as usize;
        let r = mdp.reward[(task * mdp.states + s) * n + a] as f64;
        q[a] = match backup {
            Backup::Expected => {
                let mut expected = 0.0;
                for k in entries {
                    expected += mdp.probs[k] as f64 * next(mdp.indices[k] as usize);
                }
                r + gamma * expected
            }
            Backup::Optimistic => {
                let top = entries
                    .clone()
                    .map(|k| next(mdp.indices[k] as usize))
                    .fold(f64::NEG_INFINITY, f64::max);
                if top == f64::NEG_INFINITY {
                    f64::NEG_INFINITY
                } else {
                    let mut mass = 0.0;
                    for k in entries {
                        let v = next(mdp.indices[k] as usize);
                        mass += mdp.probs[k] as f64 * ((v - top) * gamma / alpha).exp();
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

/// `pi(a|s)` of a general MDP from the next values `v_in`, `[task][state][action]`; NaN on
/// fixed states; one-hot on the first maximising action (ties within [`TIE_RELATIVE`]) when
/// alpha = 0.
pub fn mdp_policy(inputs: &MdpInputs, v_in: &[f64]) -> Vec<f32> {
    let mdp = inputs.mdp;
    let n = mdp.actions;
    let mut policy = vec![f32::NAN; mdp.tasks * mdp.states * n];
    let mut q = vec![0.0; n];
    for task in 0..mdp.tasks {
        for s in 0..mdp.states {
            let index = task * mdp.states + s;
            if inputs.fixed[index] {
                continue;
            }
            mdp_action_values(inputs, task, s, v_in, &mut q);
            write_policy(inputs.alpha, &q, &mut policy[index * n..(index + 1) * n]);
        }
    }
    policy
}

/// One forward step of a grid batch's occupancy pulled through the reverse moves:
/// `d_out(c') = gamma * sum_{(c,a): dest(c,a) = c'} d_in(c) ((1 - eps) pi(a|c) + eps / |A|)`
/// over non-fixed sources c. `policy` is `[task][row][col][action]`, the rest
/// `[task][row][col]`.
pub fn grid_occupancy(inputs: &GridInputs, policy: &[f32], d_in: &[f64], d_out: &mut [f64]) {
    let (w, h, cells) = (inputs.width as i64, inputs.height as i64, inputs.cells());
    let n = inputs.action_count;
    let connectivity = n - n % 4;
    let (keep, share) = (1.0 - inputs.slip, inputs.slip / n as f64);
    for task in 0..inputs.tasks {
        let base = task * cells;
        for cell in 0..cells {
            let mut inflow = 0.0;
            if !inputs.fixed[base + cell] {
                let mask = inputs.move_mask[cell];
                let mut weight = 0.0;
                for a in 0..n {
                    if a >= connectivity || (mask >> a) & 1 == 0 {
                        weight += keep * policy[(base + cell) * n + a] as f64 + share;
                    }
                }
                inflow += d_in[base + cell] * weight;
            }
            let (row, col) = (cell as i64 / w, cell as i64 % w);
            for a in 0..connectivity {
                let (dr, dc) = crate::grid::MOVE_OFFSETS[a];
                let (r, c) = (row - dr as i64, col - dc as i64);
                if r < 0 || c < 0 || r >= h || c >= w {
                    continue;
                }
                let source = (r * w + c) as usize;
                if (inputs.move_mask[source] >> a) & 1 == 0 || inputs.fixed[base + source] {
                    continue;
                }
                inflow +=
                    d_in[base + source] * (keep * policy[(base + source) * n + a] as f64 + share);
            }
            d_out[base + cell] = inputs.gamma * inflow;
        }
    }
}

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

/// The task posterior after each observed step, `[step + 1][task]` (row 0 the prior), and
/// the log joint `log p(z) + sum_{j < k} log L[j][z]` it normalizes; twin of the three entry
/// points of `shaders/task_posterior.wgsl`, in f64.
pub fn task_posterior(inputs: &crate::infer::PosteriorInputs) -> (Vec<f32>, Vec<f32>) {
    let impossible = crate::infer::IMPOSSIBLE as f64;
    let (b, k_n, a_n) = (inputs.tasks, inputs.steps, inputs.actions);
    let mut log_likelihood = vec![0.0f64; k_n * b];
    for k in 0..k_n {
        for z in 0..b {
            let mut total = 0.0;
            for a in 0..a_n {
                total += inputs.weight[k * a_n + a] as f64
                    * inputs.pi_rows[(k * b + z) * a_n + a] as f64;
            }
            log_likelihood[k * b + z] = if total > 0.0 { total.ln() } else { impossible };
        }
    }
    let mut joint = vec![0.0f64; (k_n + 1) * b];
    for z in 0..b {
        let mut sum = inputs.log_prior[z] as f64;
        joint[z] = sum;
        for k in 0..k_n {
            sum = (sum + log_likelihood[k * b + z]).max(impossible);
            joint[(k + 1) * b + z] = sum;
        }
    }
    let mut posterior = vec![0.0f32; joint.len()];
    for (row, out) in joint.chunks_exact(b).zip(posterior.chunks_exact_mut(b)) {
        let top = row.iter().copied().fold(impossible, f64::max);
        let mass: f64 = row
            .iter()
            .map(|&j| if j > impossible { (j - top).exp() } else { 0.0 })
            .sum();
        for (p, &j) in out.iter_mut().zip(row) {
            if j > impossible && top > impossible {
                *p = ((j - top).exp() / mass) as f32;
            }
        }
    }
    (posterior, joint.iter().map(|&j| j as f32).collect())
}

/// `pi = exp((Q - V) / alpha)` with V the soft max of `q`, or one-hot on the first maximiser
/// (ties within [`TIE_RELATIVE`]) when alpha = 0.
fn write_policy(alpha: f64, q: &[f64], out: &mut [f32]) {
    if alpha == 0.0 {
        let top = q.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let tie = top - TIE_RELATIVE * top.abs().max(1.0);
        let first = q.iter().position(|&x| x >= tie).unwrap_or(0);
        for (a, p) in out.iter_mut().enumerate() {
            *p = if a == first { 1.0 } else { 0.0 };
        }
    } else {
        let v = soft_max(alpha, q);
        for (p, &qa) in out.iter_mut().zip(q) {
            *p = ((qa - v) / alpha).exp() as f32;
        }
    }
}
