//! The vector-Jacobian product of a general-MDP solve on the f64 reference: the gradient of
//! `<c, outputs>` with respect to the rewards, alpha, gamma, the terminal values and the
//! transition probabilities, by one forward-message solve seeded with the cotangent (signed,
//! not a distribution) instead of unrolling the sweeps. Memory is `O(B S A)` (`O(B T S A)` for
//! a finite horizon), independent of the number of sweeps.
//!
//! With `W(s'|s,a)` the dynamics a backup differentiates through (`P` for the expected backup;
//! the tilted `P(s'|s,a) exp((gamma V(s') - (Q - r)) / alpha)` for the optimistic one) and
//! `g(s,a)` the total cotangent on `Q(s,a)`:
//! `u = c_V + gamma W^T g`, `g = c_Q + pi u` (the occupancy recursion `mdp_occupancy` runs
//! with a signed start), then `r_bar = g`, `alpha_bar = sum u H_pi + sum g dQ/dalpha`,
//! `gamma_bar = sum g (W V)`, `P_bar(s,a,s') = g dQ/dP`, `terminal_value_bar = u` on terminal
//! states. A finite horizon runs the same per step, `u_{t+1} = c_{V,t+1} + gamma W_t^T g_t`.

// Index loops mirror the formulas, so a reviewer can check them by eye.
#![allow(clippy::needless_range_loop)]

use super::mdp_backup::csr_action_values;
use super::residual_reduce::SweepStats;
use super::{mdp_action_values, mdp_backup, soft_max};
use crate::engine::layout::MdpInputs;
use crate::engine::options::{Backup, Horizon, SolveOptions};
use crate::engine::solution::check_mdp_solve;
use crate::error::{Result, bail, ensure};
use crate::world::mdp::TabularMdp;

/// Cotangents of a solve's outputs (f64). Each is `None` or laid out as the solve reports the
/// output: `values` `[task][state]` (`V_0`, or the stationary V), `q` and `policy`
/// `[task][state][action]`; with `all_steps` (finite horizon) every step: `values`
/// `[task][t][state]` for t = 0..T, `q` and `policy` `[task][t][state][action]` for t = 0..T-1.
/// Entries on states an output marks NaN (terminal rows of Q and pi) are ignored.
#[derive(Clone, Debug, Default)]
pub struct MdpCotangents {
    /// On V.
    pub values: Option<Vec<f64>>,
    /// On the soft Q-values.
    pub q: Option<Vec<f64>>,
    /// On the policy.
    pub policy: Option<Vec<f64>>,
    /// The cotangents cover every step of a finite horizon.
    pub all_steps: bool,
}

/// The gradient of `<cotangents, outputs>`.
#[derive(Clone, Debug, PartialEq)]
pub struct MdpVjp {
    /// With respect to `r(s,a)`, `[task][state][action]` (0 on excluded actions and on states
    /// that stop).
    pub reward: Vec<f64>,
    /// With respect to the terminal values, `[task][state]` (0 off terminal states).
    pub terminal_value: Vec<f64>,
    /// With respect to the stored transition probabilities, `[nnz]` in CSR order (summed over
    /// the tasks, which share them).
    pub probs: Vec<f64>,
    /// With respect to the temperature alpha (0 at alpha = 0: the hard max's subgradient).
    pub alpha: f64,
    /// With respect to the discount gamma.
    pub gamma: f64,
    /// Sweeps of the adjoint (forward-message) iteration: T for a finite horizon.
    pub sweeps: u32,
}

/// The finest relative change at which the stationary iterations stop: near f64's resolution.
const F64_RESOLUTION: f64 = 1e-14;

/// The VJP of [`super::solve_mdp_cpu_f64`]'s outputs at `options` (see the module docs).
/// An infinite horizon needs gamma < 1 and is differentiated at its fixed point: the values
/// and then the adjoint (its sweeps Anderson-accelerated, a linear system's Krylov solve) are
/// iterated by Gauss-Seidel sweeps until a sweep changes them by at
/// most `tol (1 - gamma)` relative to their size (at least `F64_RESOLUTION`, 1e-14), so both are
/// within about `tol` of their limits, relative.
pub fn mdp_vjp_cpu(
    mdp: &TabularMdp,
    options: &SolveOptions,
    cotangents: &MdpCotangents,
) -> Result<MdpVjp> {
    mdp_vjp_cpu_at(mdp, options, cotangents, None)
}

/// [`mdp_vjp_cpu`] starting from `values`, the fixed point V `[task][state]` a solve of the
/// same inputs reported (any engine, any precision), so that the backward pass does not solve
/// the forward again: the Gauss-Seidel sweeps start from it and stop as soon as a sweep
/// changes it by at most the tolerance (one sweep when it is already there). Infinite horizon
/// only (a finite horizon's steps are recomputed: T sweeps); entries on terminal states are
/// taken from the MDP.
pub fn mdp_vjp_cpu_at(
    mdp: &TabularMdp,
    options: &SolveOptions,
    cotangents: &MdpCotangents,
    values: Option<&[f64]>,
) -> Result<MdpVjp> {
    vjp_at(mdp, options, cotangents, values, true)
}

/// The VJP of an infinite horizon at `values` `[task][state]` taken as the fixed point as they
/// are (no sweeps refine them; entries on terminal states are taken from the MDP): the
/// gradient at an f32 engine's solution, within that solution's own error of the f64 one
/// (the policy and the adjoint are linear in it to first order). The adjoint and the products
/// are [`mdp_vjp_cpu_at`]'s, in f64.
pub fn mdp_vjp_at_fixed_point(
    mdp: &TabularMdp,
    options: &SolveOptions,
    cotangents: &MdpCotangents,
    values: &[f64],
) -> Result<MdpVjp> {
    vjp_at(mdp, options, cotangents, Some(values), false)
}

/// [`mdp_vjp_cpu_at`], its `values` refined by Gauss-Seidel sweeps or (not `refine`) taken
/// as they are.
fn vjp_at(
    mdp: &TabularMdp,
    options: &SolveOptions,
    cotangents: &MdpCotangents,
    values: Option<&[f64]>,
    refine: bool,
) -> Result<MdpVjp> {
    check_mdp_solve(mdp, options)?;
    let steps = check_vjp_inputs(mdp, options, cotangents, values)?;
    let (b, s_n, a_n) = (mdp.tasks, mdp.states, mdp.actions);
    let inputs = MdpInputs::new(mdp, options);
    // V_0..V_T (finite) or the fixed point (infinite), [t][task][state].
    let values = forward_values(mdp, &inputs, options, values, refine)?;
    let empty = || MdpVjp {
        reward: vec![0.0; b * s_n * a_n],
        terminal_value: vec![0.0; b * s_n],
        probs: vec![0.0; mdp.nonzeros()],
        alpha: 0.0,
        gamma: 0.0,
        sweeps: 0,
    };
    // The cotangent `array` of step `t` of `task`, `len` entries, NaN (marked entries) as 0.
    let at = |array: &Option<Vec<f64>>, task: usize, t: usize, len: usize| -> Vec<f64> {
        match array {
            Some(x) if cotangents.all_steps || t == 0 => {
                let per_task = x.len() / b;
                let start = task * per_task + t * len;
                x[start..start + len]
                    .iter()
                    .map(|v| if v.is_nan() { 0.0 } else { *v })
                    .collect()
            }
            _ => vec![0.0; len],
        }
    };
    // One task's share of the gradient, added to `out`; `q` `[action]` scratch.
    let one = |task: usize, out: &mut MdpVjp, q: &mut Vec<f64>| -> Result<()> {
        let q = q.as_mut_slice();
        let terminal = &mdp.terminal[task * s_n..(task + 1) * s_n];
        let u = match options.horizon {
            Horizon::Finite(_) => {
                let mut u = at(&cotangents.values, task, 0, s_n);
                for t in 0..steps {
                    let mut next = at(&cotangents.values, task, t + 1, s_n);
                    let step = Step {
                        task,
                        v_now: &values[t],
                        v_next: &values[t + 1],
                        u: &u,
                        c_q: &at(&cotangents.q, task, t, s_n * a_n),
                        c_pi: &at(&cotangents.policy, task, t, s_n * a_n),
                    };
                    step.adjoint(&inputs, q, &mut next, Some(&mut *out));
                    // Terminal states keep their value at every step.
                    for s in (0..s_n).filter(|&s| terminal[s]) {
                        out.terminal_value[task * s_n + s] += u[s];
                    }
                    u = next;
                }
                out.sweeps = steps as u32;
                u
            }
            Horizon::Infinite { max_iters, .. } => {
                let v = &values[0];
                let c_v = at(&cotangents.values, task, 0, s_n);
                let (c_q, c_pi) = (
                    at(&cotangents.q, task, 0, s_n * a_n),
                    at(&cotangents.policy, task, 0, s_n * a_n),
                );
                // u = c_V + gamma W^T (c_Q' + pi u): its seed `c_V + gamma W^T c_Q'` is the
                // step at u = 0, and `gamma W_pi^T` a fixed sparse product, `weights` per
                // stored entry.
                let zero = vec![0.0; s_n];
                let mut seed = c_v.clone();
                Step {
                    task,
                    v_now: v,
                    v_next: v,
                    u: &zero,
                    c_q: &c_q,
                    c_pi: &c_pi,
                }
                .adjoint(&inputs, q, &mut seed, None);
                // Messages flow towards higher values (the policy climbs V): visiting states
                // from the lowest V up, a Gauss-Seidel sweep carries each message along a
                // whole path at once, where a Jacobi sweep moves it one step.
                let mut order: Vec<usize> = (0..s_n).collect();
                let base = task * s_n;
                order.sort_by(|&x, &y| v[base + x].total_cmp(&v[base + y]));
                let incoming = Incoming::of(&inputs, task, v, &order);
                let stop = stopping(options);
                let Some((u, sweeps)) = incoming.solve(&seed, stop, max_iters) else {
                    return Err(crate::error::Error::InvalidInput(format!(
                        "the adjoint of task {task} did not settle within max_iters = \
                         {max_iters} sweeps"
                    )));
                };
                // The products of the settled u, taken once.
                let step = Step {
                    task,
                    v_now: v,
                    v_next: v,
                    u: &u,
                    c_q: &c_q,
                    c_pi: &c_pi,
                };
                step.adjoint(&inputs, q, &mut c_v.clone(), Some(&mut *out));
                out.sweeps = out.sweeps.max(sweeps);
                u
            }
        };
        // V_T of a finite horizon, or the stationary V: terminal states hold their value.
        for s in (0..s_n).filter(|&s| terminal[s]) {
            out.terminal_value[task * s_n + s] += u[s];
        }
        Ok(())
    };
    // The tasks are independent: one partial gradient per thread, tasks dealt round-robin,
    // summed in thread order (so a given thread count always rounds the same way).
    let threads = task_threads(b);
    let partials: Vec<Result<MdpVjp>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|w| {
                let (one, empty) = (&one, &empty);
                scope.spawn(move || {
                    let (mut out, mut q) = (empty(), vec![0.0; a_n]);
                    for task in (w..b).step_by(threads) {
                        one(task, &mut out, &mut q)?;
                    }
                    Ok(out)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let mut out = empty();
    for part in partials {
        let part = part?;
        for (total, x) in [
            (&mut out.reward, &part.reward),
            (&mut out.terminal_value, &part.terminal_value),
            (&mut out.probs, &part.probs),
        ] {
            for (t, x) in total.iter_mut().zip(x) {
                *t += x;
            }
        }
        out.alpha += part.alpha;
        out.gamma += part.gamma;
        out.sweeps = out.sweeps.max(part.sweeps);
    }
    Ok(out)
}

/// Threads for `tasks` independent tasks: one per core, at most one per task.
fn task_threads(tasks: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(tasks)
        .max(1)
}

/// One step of the adjoint: the cotangent `u` `[state]` on `V_t` of `task` and `c_q`, `c_pi`
/// `[state][action]` on `Q_t`, `pi_t`, with `v_now` = `V_t` and `v_next` = `V_{t+1}`
/// `[task][state]` (the same array for a stationary solve).
struct Step<'a> {
    task: usize,
    v_now: &'a [f64],
    v_next: &'a [f64],
    u: &'a [f64],
    c_q: &'a [f64],
    c_pi: &'a [f64],
}

impl Step<'_> {
    /// Adds `gamma W^T g` to `next` (the cotangent on `V_{t+1}`, `[state]`) and, with `out`,
    /// the step's products to the gradient.
    fn adjoint(
        &self,
        inputs: &MdpInputs,
        q: &mut [f64],
        next: &mut [f64],
        mut out: Option<&mut MdpVjp>,
    ) {
        let mdp = inputs.mdp;
        let (s_n, a_n) = (mdp.states, mdp.actions);
        let (alpha, gamma) = (inputs.alpha, inputs.gamma);
        let (task, u, c_q, c_pi) = (self.task, self.u, self.c_q, self.c_pi);
        let base = task * s_n;
        let mut d_alpha = 0.0;
        let (mut pi, mut g) = (vec![0.0; a_n], vec![0.0; a_n]);
        for s in 0..s_n {
            if inputs.fixed[base + s] {
                continue;
            }
            mdp_action_values(inputs, task, s, self.v_next, q);
            let v = self.v_now[base + s];
            policy_row(alpha, q, &mut pi);
            let live = |a: &usize| pi[*a] > 0.0;
            // V's own dependence on alpha at fixed Q: the policy's entropy.
            if alpha > 0.0 {
                let entropy: f64 = (0..a_n)
                    .filter(live)
                    .map(|a| -pi[a] * (q[a] - v) / alpha)
                    .sum();
                d_alpha += u[s] * entropy;
            }
            // The total cotangent on Q(s, .): its own, V's through pi, and pi's (pi is
            // softmax(Q / alpha)).
            for a in 0..a_n {
                g[a] = c_q[s * a_n + a] + pi[a] * u[s];
            }
            if alpha > 0.0 {
                let mean_c: f64 = (0..a_n).map(|a| pi[a] * c_pi[s * a_n + a]).sum();
                let mean_gap: f64 = (0..a_n).filter(live).map(|a| pi[a] * (q[a] - v)).sum();
                for a in (0..a_n).filter(live) {
                    g[a] += pi[a] * (c_pi[s * a_n + a] - mean_c) / alpha;
                    d_alpha +=
                        c_pi[s * a_n + a] * pi[a] * (mean_gap - (q[a] - v)) / (alpha * alpha);
                }
            }
            for a in 0..a_n {
                let r = mdp.reward[(base + s) * a_n + a];
                if !r.is_finite() || g[a] == 0.0 {
                    continue;
                }
                let row = s * a_n + a;
                // Optimistic: alpha log sum P exp(gamma V' / alpha), the tilt of W.
                let tilt = q[a] - r;
                let mut w_v = 0.0;
                for k in mdp.csr().indptr[row] as usize..mdp.csr().indptr[row + 1] as usize {
                    let j = mdp.csr().indices[k] as usize;
                    let vj = self.v_next[base + j];
                    if vj == f64::NEG_INFINITY {
                        continue;
                    }
                    let p = mdp.csr().probs[k];
                    let (w, d_p) = match inputs.backup {
                        Backup::Expected => (p, gamma * vj),
                        Backup::Optimistic => {
                            let e = ((gamma * vj - tilt) / alpha).exp();
                            (p * e, alpha * e)
                        }
                    };
                    w_v += w * vj;
                    next[j] += gamma * w * g[a];
                    if let Some(out) = out.as_deref_mut() {
                        out.probs[k] += g[a] * d_p;
                    }
                }
                if let Some(out) = out.as_deref_mut() {
                    out.reward[(base + s) * a_n + a] += g[a];
                    out.gamma += g[a] * w_v;
                    if inputs.backup == Backup::Optimistic {
                        out.alpha += g[a] * (tilt - gamma * w_v) / alpha;
                    }
                }
            }
        }
        if let Some(out) = out {
            out.alpha += d_alpha;
        }
    }
}

/// `gamma W_pi^T` of one task as incoming entries per state, laid out in the order the sweeps
/// visit the states (so that a sweep reads them front to back): for the state at position `p`
/// of that order, `stay[p]` (its own entry, `gamma W_pi(j -> j)`) and the entries
/// `start[p]..start[p + 1]` of `from` (the position of the state the message comes from) and
/// `weight`, one per other predecessor (the actions' entries summed).
struct Incoming {
    start: Vec<usize>,
    from: Vec<u32>,
    weight: Vec<f64>,
    stay: Vec<f64>,
    /// The state at each position of the visiting order.
    order: Vec<usize>,
}

/// Earlier iterates the adjoint's Anderson acceleration mixes (its memory: `2 * MIXING`
/// vectors of `[state]` per thread).
const MIXING: usize = 5;

impl Incoming {
    /// The entries `gamma pi(a|s) W(j|s,a)` of `task` at the stationary values `v`
    /// `[task][state]` (none out of fixed states), transposed for the visiting `order` (a
    /// permutation of the states).
    fn of(inputs: &MdpInputs, task: usize, v: &[f64], order: &[usize]) -> Self {
        let mdp = inputs.mdp;
        let (s_n, a_n) = (mdp.states, mdp.actions);
        let (alpha, gamma) = (inputs.alpha, inputs.gamma);
        let base = task * s_n;
        let mut position = vec![0usize; s_n];
        for (p, &j) in order.iter().enumerate() {
            position[j] = p;
        }
        let n = order.len();
        // Slots per target: an upper bound, every stored entry into it from another state
        // (entries of actions the policy never takes, or into -inf states, leave gaps).
        let mut start = vec![0usize; n + 1];
        for (p, &s) in order.iter().enumerate() {
            if inputs.fixed[base + s] {
                continue;
            }
            let rows = mdp.csr().indptr[s * a_n] as usize..mdp.csr().indptr[(s + 1) * a_n] as usize;
            for &j in &mdp.csr().indices[rows] {
                let t = position[j as usize];
                if t != p {
                    start[t + 1] += 1;
                }
            }
        }
        for t in 0..n {
            start[t + 1] += start[t];
        }
        // Filled with sources in visiting order: a source's entries to one target (several
        // actions) land next to each other and are summed into one.
        let mut stay = vec![0.0; n];
        let mut fill = start.clone();
        let mut from = vec![0u32; start[n]];
        let mut weight = vec![0.0; start[n]];
        let (mut q, mut pi) = (vec![0.0; a_n], vec![0.0; a_n]);
        for (p, &s) in order.iter().enumerate() {
            if inputs.fixed[base + s] {
                continue;
            }
            mdp_action_values(inputs, task, s, v, &mut q);
            policy_row(alpha, &q, &mut pi);
            for a in (0..a_n).filter(|&a| pi[a] > 0.0) {
                let r = mdp.reward[(base + s) * a_n + a];
                let tilt = q[a] - r;
                let row = s * a_n + a;
                for k in mdp.csr().indptr[row] as usize..mdp.csr().indptr[row + 1] as usize {
                    let j = mdp.csr().indices[k] as usize;
                    let vj = v[base + j];
                    if vj == f64::NEG_INFINITY {
                        continue;
                    }
                    let w = gamma
                        * pi[a]
                        * match inputs.backup {
                            Backup::Expected => mdp.csr().probs[k],
                            Backup::Optimistic => {
                                mdp.csr().probs[k] * ((gamma * vj - tilt) / alpha).exp()
                            }
                        };
                    let t = position[j];
                    if t == p {
                        stay[t] += w;
                    } else if fill[t] > start[t] && from[fill[t] - 1] == p as u32 {
                        weight[fill[t] - 1] += w;
                    } else {
                        from[fill[t]] = p as u32;
                        weight[fill[t]] = w;
                        fill[t] += 1;
                    }
                }
            }
        }
        // Close the gaps the merges left.
        let mut kept = 0;
        let mut compact = vec![0usize; n + 1];
        for t in 0..n {
            for k in start[t]..fill[t] {
                from[kept] = from[k];
                weight[kept] = weight[k];
                kept += 1;
            }
            compact[t + 1] = kept;
        }
        from.truncate(kept);
        weight.truncate(kept);
        Self {
            start: compact,
            from,
            weight,
            stay,
            order: order.to_vec(),
        }
    }

    /// One Gauss-Seidel sweep of `u = seed + gamma W_pi^T u` over `u` (visiting order), each
    /// state solved with its own entry exactly (a state that mostly stays put, as by a wall,
    /// would otherwise take a sweep per step of its stay). Returns the largest change.
    fn sweep(&self, seed: &[f64], u: &mut [f64]) -> f64 {
        let mut change = 0.0f64;
        for p in 0..u.len() {
            let mut x = seed[p];
            for k in self.start[p]..self.start[p + 1] {
                x += self.weight[k] * u[self.from[k] as usize];
            }
            let x = x / (1.0 - self.stay[p]);
            change = change.max((x - u[p]).abs());
            u[p] = x;
        }
        change
    }

    /// `u = seed + gamma W_pi^T u` (`seed` and `u` `[state]`) by Gauss-Seidel sweeps with
    /// Anderson acceleration (the linear system's Krylov solve in the sweeps' own terms: each
    /// next start is the combination of the last [`MIXING`] sweeps' results that best cancels
    /// their changes), until a sweep changes u by at most `stop` of its size; with its number
    /// of sweeps, or None after `max_iters`.
    fn solve(&self, seed: &[f64], stop: f64, max_iters: u32) -> Option<(Vec<f64>, u32)> {
        let n = seed.len();
        let seed: Vec<f64> = self.order.iter().map(|&j| seed[j]).collect();
        // The start x_k, the sweep's result g_k = G(x_k) and its change f_k = g_k - x_k;
        // differences of consecutive g and f, oldest first.
        let mut x = seed.clone();
        let (mut g_prev, mut f_prev): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
        let (mut d_g, mut d_f): (Vec<Vec<f64>>, Vec<Vec<f64>>) = (Vec::new(), Vec::new());
        // The dot products of the d_f columns, kept in step with them (each new column's
        // taken once).
        let mut gram: Vec<Vec<f64>> = Vec::new();
        let mut sweeps = 0;
        let g = loop {
            let mut g = x.clone();
            self.sweep(&seed, &mut g);
            sweeps += 1;
            let f: Vec<f64> = g.iter().zip(&x).map(|(g, x)| g - x).collect();
            let change = f.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            let size = g.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            if change <= stop * size {
                break g;
            }
            if sweeps >= max_iters || !change.is_finite() {
                return None;
            }
            if !g_prev.is_empty() {
                if d_g.len() == MIXING {
                    d_g.remove(0);
                    d_f.remove(0);
                    gram.remove(0);
                    gram.iter_mut().for_each(|row| _ = row.remove(0));
                }
                d_g.push(g.iter().zip(&g_prev).map(|(a, b)| a - b).collect());
                let col: Vec<f64> = f.iter().zip(&f_prev).map(|(a, b)| a - b).collect();
                let dots: Vec<f64> = d_f.iter().map(|c| dot(c, &col)).collect();
                for (row, &d) in gram.iter_mut().zip(&dots) {
                    row.push(d);
                }
                gram.push(dots.into_iter().chain([dot(&col, &col)]).collect());
                d_f.push(col);
            }
            // x_{k+1} = g_k - dG c, c minimising |f_k - dF c| (normal equations); a mix the
            // equations cannot pin down restarts from the plain sweep.
            x.clone_from(&g);
            let rhs: Vec<f64> = d_f.iter().map(|c| dot(c, &f)).collect();
            match least_squares(&gram, rhs) {
                Some(c) => {
                    for (col, &c) in d_g.iter().zip(&c) {
                        for (x, d) in x.iter_mut().zip(col) {
                            *x -= c * d;
                        }
                    }
                }
                None => {
                    d_g.clear();
                    d_f.clear();
                    gram.clear();
                }
            }
            (g_prev, f_prev) = (g, f);
        };
        let mut u = vec![0.0; n];
        for (p, &j) in self.order.iter().enumerate() {
            u[j] = g[p];
        }
        Some((u, sweeps))
    }
}

/// `sum_i a_i b_i`.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

/// The coefficients `c` minimising `|f - sum_i c_i col_i|_2` from the columns' dot products
/// `gram` `[m][m]` and `rhs` `[m]` (`col_i . f`): the normal equations, by Gaussian
/// elimination with partial pivoting; None where they are singular to f64's resolution
/// (columns nearly dependent), or for no columns.
fn least_squares(gram: &[Vec<f64>], rhs: Vec<f64>) -> Option<Vec<f64>> {
    let m = gram.len();
    if m == 0 {
        return None;
    }
    // [m][m + 1]: the Gram matrix, then the right-hand side.
    let mut a: Vec<Vec<f64>> = gram
        .iter()
        .zip(rhs)
        .map(|(row, r)| row.iter().copied().chain([r]).collect())
        .collect();
    let scale = (0..m).map(|i| a[i][i]).fold(0.0f64, f64::max);
    for i in 0..m {
        let pivot = (i..m).max_by(|&x, &y| a[x][i].abs().total_cmp(&a[y][i].abs()))?;
        a.swap(i, pivot);
        // (NaN fails too.)
        if a[i][i].abs().partial_cmp(&(1e-13 * scale)) != Some(std::cmp::Ordering::Greater) {
            return None;
        }
        for r in i + 1..m {
            let k = a[r][i] / a[i][i];
            for c in i..=m {
                a[r][c] -= k * a[i][c];
            }
        }
    }
    let mut c = vec![0.0; m];
    for i in (0..m).rev() {
        let tail: f64 = (i + 1..m).map(|j| a[i][j] * c[j]).sum();
        c[i] = (a[i][m] - tail) / a[i][i];
    }
    c.iter().all(|x| x.is_finite()).then_some(c)
}

/// The relative change at which the stationary iterations stop for `options`' tol.
fn stopping(options: &SolveOptions) -> f64 {
    match options.horizon {
        Horizon::Infinite { tol, .. } => (tol * (1.0 - options.gamma)).max(F64_RESOLUTION),
        Horizon::Finite(_) => F64_RESOLUTION,
    }
}

/// `pi = exp((Q - V) / alpha)` normalised, or the hard max's one-hot (first maximiser) at
/// alpha = 0; excluded actions (Q = -inf) get 0.
/// Written into `pi` `[action]`.
fn policy_row(alpha: f64, q: &[f64], pi: &mut [f64]) {
    let top = q.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if alpha == 0.0 {
        let first = q.iter().position(|&x| x == top).unwrap_or(0);
        for (a, p) in pi.iter_mut().enumerate() {
            *p = f64::from(a == first);
        }
        return;
    }
    let mut total = 0.0;
    for (p, &x) in pi.iter_mut().zip(q) {
        *p = ((x - top) / alpha).exp();
        total += *p;
    }
    for p in pi.iter_mut() {
        *p /= total;
    }
}

/// The values the products are taken at, `[t][task][state]`: `V_0..V_T` of a finite
/// horizon, or the fixed point: Gauss-Seidel sweeps from `given` (else from the reference's
/// solve) until one changes it by at most [`stopping`] of its size (at most `max_iters`
/// sweeps), or `given` as it is without `refine`. The sweeps visit states nearest the fixed
/// (terminal) ones first, by breadth-first distance along reversed transitions, so that a
/// value reaches a whole path in one sweep.
fn forward_values(
    mdp: &TabularMdp,
    inputs: &MdpInputs,
    options: &SolveOptions,
    given: Option<&[f64]>,
    refine: bool,
) -> Result<Vec<Vec<f64>>> {
    let mut v = inputs.v0.clone();
    match options.horizon {
        Horizon::Finite(t) => {
            let mut next = v.clone();
            let mut all = vec![v.clone()];
            for _ in 0..t {
                mdp_backup(inputs, &v, &mut next);
                std::mem::swap(&mut v, &mut next);
                all.push(v.clone());
            }
            all.reverse();
            Ok(all)
        }
        Horizon::Infinite { max_iters, .. } => {
            let start = match given {
                Some(given) => given.to_vec(),
                // The reference's solve (with its extrapolation) gets there in fewer sweeps
                // than Gauss-Seidel from the initial values.
                None => {
                    let outputs = crate::engine::options::Outputs {
                        policy: false,
                        ..Default::default()
                    };
                    let keep_going = &mut crate::engine::schedule::keep_going;
                    let solved = super::solve_mdp_cpu_f64(mdp, options, outputs, keep_going)?;
                    solved.solution.values
                }
            };
            for (i, x) in v.iter_mut().enumerate() {
                if !inputs.fixed[i] {
                    *x = start[i];
                }
            }
            if !refine && given.is_some() {
                return Ok(vec![v]);
            }
            let stop = stopping(options);
            let before = reversed(mdp);
            // Gauss-Seidel sweeps of one task's values `[state]` until they settle.
            let settle = |task: usize, v: &mut [f64], q: &mut [f64]| -> Result<()> {
                let base = task * mdp.states;
                let order = nearest_fixed_first(&before, &inputs.fixed[base..base + mdp.states]);
                for sweep in 0.. {
                    let mut stats = SweepStats::default();
                    for &s in &order {
                        let (b, a) = (inputs.backup, inputs.alpha);
                        csr_action_values(mdp, b, a, inputs.gamma, task, s, |j| v[j], q);
                        let x = soft_max(inputs.alpha, q);
                        // A state all of whose actions are excluded keeps -inf; no runaway.
                        if x != f64::NEG_INFINITY {
                            stats.observe(v[s], x);
                        }
                        v[s] = x;
                    }
                    if stats.max_abs_delta <= stop * stats.max_abs_value.max(1.0) {
                        break;
                    }
                    ensure!(
                        sweep + 1 < max_iters,
                        "the values of task {task} did not settle within max_iters = \
                         {max_iters} sweeps"
                    );
                }
                Ok(())
            };
            // The tasks are independent: a contiguous share of them per thread.
            let per_thread = mdp.tasks.div_ceil(task_threads(mdp.tasks));
            let mut tasks: Vec<(usize, &mut [f64])> =
                v.chunks_mut(mdp.states).enumerate().collect();
            let settled: Vec<Result<()>> = std::thread::scope(|scope| {
                let workers: Vec<_> = tasks
                    .chunks_mut(per_thread)
                    .map(|share| {
                        let settle = &settle;
                        scope.spawn(move || {
                            let mut q = vec![0.0; mdp.actions];
                            for (task, v) in share.iter_mut() {
                                settle(*task, v, &mut q)?;
                            }
                            Ok(())
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                    .collect()
            });
            settled.into_iter().collect::<Result<()>>()?;
            Ok(vec![v])
        }
    }
}

/// The transitions reversed: for state `j`, the states `from[start[j]..start[j + 1]]` some
/// action of which may lead to `j` (repeats kept).
fn reversed(mdp: &TabularMdp) -> (Vec<usize>, Vec<usize>) {
    let n = mdp.states;
    let mut start = vec![0usize; n + 1];
    for &j in &mdp.csr().indices {
        start[j as usize + 1] += 1;
    }
    for j in 0..n {
        start[j + 1] += start[j];
    }
    let mut fill = start.clone();
    let mut from = vec![0; start[n]];
    for row in 0..n * mdp.actions {
        for k in mdp.csr().indptr[row] as usize..mdp.csr().indptr[row + 1] as usize {
            let j = mdp.csr().indices[k] as usize;
            from[fill[j]] = row / mdp.actions;
            fill[j] += 1;
        }
    }
    (start, from)
}

/// The states that are not `fixed` `[state]`, by breadth-first distance from the fixed ones
/// along the `reversed` transitions; those no fixed state is reachable from come last.
fn nearest_fixed_first((start, from): &(Vec<usize>, Vec<usize>), fixed: &[bool]) -> Vec<usize> {
    let n = fixed.len();
    let mut seen = fixed.to_vec();
    let mut queue: std::collections::VecDeque<usize> = (0..n).filter(|&s| fixed[s]).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(j) = queue.pop_front() {
        for &s in &from[start[j]..start[j + 1]] {
            if !seen[s] {
                seen[s] = true;
                order.push(s);
                queue.push_back(s);
            }
        }
    }
    order.extend((0..n).filter(|&s| !seen[s]));
    order
}

/// Checks a VJP's inputs beside the MDP and settings (every engine's VJP runs it): a
/// forward solution only for an infinite horizon, of `[task][state]` values finite off the
/// terminal states; gamma < 1 for an infinite horizon; cotangents of their outputs' sizes
/// with no infinite entry, on every step only for a finite horizon. Returns the steps the
/// adjoint takes per task: T, or 1 for the fixed point.
pub(crate) fn check_vjp_inputs(
    mdp: &TabularMdp,
    options: &SolveOptions,
    cotangents: &MdpCotangents,
    values: Option<&[f64]>,
) -> Result<usize> {
    if let Some(v) = values {
        ensure!(
            matches!(options.horizon, Horizon::Infinite { .. }),
            "a forward solution to start from is for an infinite horizon (a finite one's steps \
             are recomputed)"
        );
        ensure!(
            v.len() == mdp.tasks * mdp.states,
            "the forward solution holds {} values, not the {} of [task][state]",
            v.len(),
            mdp.tasks * mdp.states
        );
        // A terminal state's entry is taken from the MDP: any value passes there.
        if let Some(i) = (0..v.len()).find(|&i| !v[i].is_finite() && !mdp.terminal[i]) {
            let (task, state) = (i / mdp.states, i % mdp.states);
            bail!(
                "the forward solution's value of state {state} in task {task} is {}, not finite",
                v[i]
            );
        }
    }
    let (b, s_n, a_n) = (mdp.tasks, mdp.states, mdp.actions);
    let steps = match options.horizon {
        Horizon::Finite(t) => t as usize,
        Horizon::Infinite { .. } => {
            ensure!(
                options.gamma < 1.0,
                "gradients of an infinite horizon need gamma < 1 (give a horizon at gamma = 1)"
            );
            1
        }
    };
    ensure!(
        !cotangents.all_steps || matches!(options.horizon, Horizon::Finite(_)),
        "cotangents on every step need a finite horizon"
    );
    // Per task and step the cotangent arrays' lengths.
    let (v_steps, qa_steps) = match cotangents.all_steps {
        true => (steps + 1, steps),
        false => (1, 1),
    };
    for (name, array, per) in [
        ("values", &cotangents.values, v_steps * s_n),
        ("q", &cotangents.q, qa_steps * s_n * a_n),
        ("policy", &cotangents.policy, qa_steps * s_n * a_n),
    ] {
        if let Some(x) = array {
            ensure!(
                x.len() == b * per,
                "the cotangent on {name} holds {} entries, not the {} of its output",
                x.len(),
                b * per
            );
            ensure!(
                x.iter().all(|v| !v.is_infinite()),
                "the cotangent on {name} holds an infinite entry"
            );
        }
    }
    Ok(steps)
}
