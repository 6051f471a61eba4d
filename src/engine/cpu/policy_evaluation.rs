//! Modified policy iteration in the reference (f64, one thread): the improvement (a full
//! backup that also keeps its policy) and the partial policy evaluation between improvements,
//! over any model whose Q the reference computes (grid or CSR). The native engine's twin is
//! `NativeMdp::improve` / `NativeMdp::evaluate` in `crate::engine::native::mdp_backup`; the
//! GPU's, `improve` / `evaluate` in `shaders/mdp_backup.wgsl`.

use super::residual_reduce::SweepStats;
use super::soft_max;

/// What an improvement keeps for the evaluation sweeps after it: the policy and the
/// exp-free remainder of the soft backup, so that an evaluation is `T_pi V = h + sum_a pi(a|s)
/// Q_V(s,a)` with no exp or log.
#[derive(Clone, Debug)]
pub struct ImprovedPolicy {
    actions: usize,
    /// `pi(a|s) = exp((Q(s,a) - V'(s)) / alpha)`, one-hot on the first argmax at alpha = 0,
    /// `[task][state][action]` (zeros on fixed states and states at -inf).
    pi: Vec<f64>,
    /// `h(s) = V'(s) - sum_a pi(a|s) Q(s,a)`: alpha times the policy's entropy (0 at alpha =
    /// 0), so that `T_pi V = h + sum_a pi Q_V`; -inf where `V'(s)` is -inf (every action
    /// excluded: the state stays at -inf). `[task][state]`.
    h: Vec<f64>,
}

/// One improvement over `tasks` tasks of `fixed.len() / tasks` states: `v_out = T v_in` (the
/// full soft backup, `v_out = soft_max(alpha, Q)` with `q(task, s, v, q)` writing `Q(s, .)`
/// from `v`), fixed states copied, keeping the policy of the backup for the evaluation sweeps
/// ([`evaluate`]). Per-task residual statistics of the backup, as `mdp_backup` and
/// `grid_backup` give them.
pub fn improve(
    alpha: f64,
    (tasks, actions): (usize, usize),
    fixed: &[bool],
    q_of: impl Fn(usize, usize, &[f64], &mut [f64]),
    v_in: &[f64],
    v_out: &mut [f64],
) -> (Vec<SweepStats>, ImprovedPolicy) {
    let states = fixed.len() / tasks.max(1);
    let mut q = vec![0.0; actions];
    let mut stats = vec![SweepStats::default(); tasks];
    let mut policy = ImprovedPolicy {
        actions,
        pi: vec![0.0; tasks * states * actions],
        h: vec![0.0; tasks * states],
    };
    for (task, task_stats) in stats.iter_mut().enumerate() {
        for s in 0..states {
            let index = task * states + s;
            if fixed[index] {
                v_out[index] = v_in[index];
                continue;
            }
            q_of(task, s, v_in, &mut q);
            let v = soft_max(alpha, &q);
            v_out[index] = v;
            let pi = &mut policy.pi[index * actions..(index + 1) * actions];
            if v == f64::NEG_INFINITY {
                policy.h[index] = f64::NEG_INFINITY;
                continue;
            }
            if alpha == 0.0 {
                let first = q.iter().position(|&x| x == v).unwrap_or(0);
                pi[first] = 1.0;
            } else {
                for (p, &qa) in pi.iter_mut().zip(&q) {
                    *p = ((qa - v) / alpha).exp();
                }
            }
            policy.h[index] = v - expected_q(pi, &q);
            task_stats.observe(v_in[index], v);
        }
    }
    (stats, policy)
}

/// `sum_a pi(a) q(a)` over the actions the policy takes (an excluded action's -inf Q has
/// pi = 0 and adds nothing).
fn expected_q(pi: &[f64], q: &[f64]) -> f64 {
    (pi.iter().zip(q))
        .filter(|(p, _)| **p > 0.0)
        .map(|(p, q)| p * q)
        .sum()
}

/// One policy-evaluation sweep `v_out = T_pi v_in = h + sum_a pi(a|s) Q_{v_in}(s,a)` under the
/// policy of the last improvement, over the tasks not `frozen` (`[task]`: copied, as are fixed
/// states). No statistics: convergence is tested on improvements only.
pub fn evaluate(
    policy: &ImprovedPolicy,
    fixed: &[bool],
    frozen: &[bool],
    q_of: impl Fn(usize, usize, &[f64], &mut [f64]),
    v_in: &[f64],
    v_out: &mut [f64],
) {
    let n = policy.actions;
    let states = fixed.len() / frozen.len().max(1);
    let mut q = vec![0.0; n];
    for (index, out) in v_out.iter_mut().enumerate() {
        let task = index / states;
        if fixed[index] || frozen[task] || policy.h[index] == f64::NEG_INFINITY {
            *out = v_in[index];
            continue;
        }
        q_of(task, index % states, v_in, &mut q);
        *out = policy.h[index] + expected_q(&policy.pi[index * n..(index + 1) * n], &q);
    }
}

/// One step of modified policy iteration as the check schedule sees a sweep: `evaluations`
/// evaluation sweeps from `v_in` under the policy of the previous improvement (none before
/// the first), then an improvement into `v_out`, whose statistics it returns (its error bound
/// holds for `v_out`, however its input was reached). `policy` carries the improvement's
/// policy from one step to the next.
#[allow(clippy::too_many_arguments)]
pub fn mpi_step(
    alpha: f64,
    (tasks, actions, evaluations): (usize, usize, u32),
    fixed: &[bool],
    frozen: &[bool],
    q_of: impl Fn(usize, usize, &[f64], &mut [f64]),
    policy: &mut Option<ImprovedPolicy>,
    v_in: &[f64],
    v_out: &mut [f64],
) -> Vec<SweepStats> {
    let mut v = v_in.to_vec();
    if let Some(pi) = policy.as_ref() {
        let mut next = v.clone();
        for _ in 0..evaluations {
            evaluate(pi, fixed, frozen, &q_of, &v, &mut next);
            std::mem::swap(&mut v, &mut next);
        }
    }
    let (stats, improved) = improve(alpha, (tasks, actions), fixed, &q_of, &v, v_out);
    *policy = Some(improved);
    stats
}
