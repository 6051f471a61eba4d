//! Exact inference of the task behind an observed trajectory: each of the B tasks of a batch
//! is a hypothesis z whose soft-optimal policy pi_z is the likelihood of the behaviour,
//! `log p(z | tau_0:k) = log p(z) + sum_t log pi_z(a_t|s_t) + const`, or with unobserved
//! actions `p(s_{t+1}|s_t, z) = sum_a pi_z(a|s_t) P(s_{t+1}|s_t,a)`. The posterior kernel is
//! `shaders/task_posterior.wgsl` (`engine::gpu::TaskPosterior`), its CPU twin
//! [`crate::engine::cpu::task_posterior()`].

use crate::error::{Result, bail, ensure};

pub use crate::engine::layout::{IMPOSSIBLE, Observation, PosteriorInputs};
use crate::world::mdp::TabularMdp;

/// Builds the kernel inputs from a solve's `policy` (`[task][t][state][action]` with
/// `policy_steps` steps, or stationary with 1), the trajectory and the prior `[task]`
/// (non-negative, not all zero). With actions every line but the last must carry one (the
/// steps are the lines with an action); without, the steps are the transitions between lines.
pub fn posterior_inputs(
    mdp: &TabularMdp,
    policy: &[f32],
    policy_steps: usize,
    trajectory: &[Observation],
    prior: &[f64],
) -> Result<PosteriorInputs> {
    mdp.validate()?;
    let (s_n, a_n, b_n) = (mdp.states, mdp.actions, mdp.tasks);
    ensure!(!trajectory.is_empty(), "the trajectory is empty");
    check_prior(prior, b_n)?;
    for o in trajectory {
        ensure!(
            o.state < s_n,
            "line {}: {} (state {}) is outside 0..{s_n}",
            o.line,
            o.label,
            o.state
        );
        if let Some(a) = o.action {
            ensure!(a < a_n, "line {}: action {a} is outside 0..{a_n}", o.line);
        }
    }
    let with_actions = trajectory[0].action.is_some();
    let last = trajectory.len() - 1;
    for (i, o) in trajectory.iter().enumerate() {
        ensure!(
            o.action.is_some() == with_actions || (i == last && with_actions),
            "line {}: {} action; give an action on every line (the last may omit it) or on none",
            o.line,
            if o.action.is_some() { "an" } else { "no" }
        );
    }
    let steps = if with_actions {
        trajectory.iter().filter(|o| o.action.is_some()).count()
    } else {
        last
    };
    ensure!(
        policy_steps == 1 || steps <= policy_steps,
        "the trajectory has {steps} steps, more than the horizon's {policy_steps}"
    );
    ensure!(
        Some(policy.len())
            == [b_n, policy_steps, s_n, a_n]
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d)),
        "the policy holds {} numbers, not tasks x steps x states x actions = {b_n} x \
         {policy_steps} x {s_n} x {a_n}",
        policy.len()
    );
    crate::analysis::sample::check_policy_rows(policy, policy_steps, s_n, a_n)?;
    let mut weight = vec![0f32; steps * a_n];
    let mut pi_rows = vec![0f32; steps * b_n * a_n];
    for k in 0..steps {
        let (here, next) = (&trajectory[k], trajectory.get(k + 1));
        let w = &mut weight[k * a_n..(k + 1) * a_n];
        match here.action {
            Some(a) => {
                w[a] = 1.0;
                if let Some(n) = next {
                    ensure!(
                        mdp.probability(here.state, a, n.state) > 0.0,
                        "step {k} (lines {} to {}): action {a} cannot move {} to {}",
                        here.line,
                        n.line,
                        here.label,
                        n.label
                    );
                }
            }
            None => {
                let n = next.expect("a step has a next line");
                for (a, x) in w.iter_mut().enumerate() {
                    *x = mdp.probability(here.state, a, n.state) as f32;
                }
                ensure!(
                    w.iter().any(|&x| x > 0.0),
                    "step {k} (lines {} to {}): no action moves {} to {}",
                    here.line,
                    n.line,
                    here.label,
                    n.label
                );
            }
        }
        let t = if policy_steps == 1 { 0 } else { k };
        for z in 0..b_n {
            let from = ((z * policy_steps + t) * s_n + here.state) * a_n;
            let row = &policy[from..from + a_n];
            if row.iter().all(|p| p.is_finite()) {
                pi_rows[(k * b_n + z) * a_n..][..a_n].copy_from_slice(row);
            }
        }
    }
    Ok(PosteriorInputs {
        tasks: b_n,
        steps,
        actions: a_n,
        weight,
        pi_rows,
        log_prior: log_prior(prior),
        observed: trajectory[..steps].to_vec(),
    })
}

/// `log p(z)` of a checked prior ([`check_prior`]), normalised: [`IMPOSSIBLE`] for a zero.
pub fn log_prior(prior: &[f64]) -> Vec<f32> {
    let total: f64 = prior.iter().sum();
    prior
        .iter()
        .map(|&p| {
            if p > 0.0 {
                (p / total).ln() as f32
            } else {
                IMPOSSIBLE
            }
        })
        .collect()
}

/// Checks a prior over `tasks` tasks: one entry per task, each finite and >= 0, not all 0.
pub fn check_prior(prior: &[f64], tasks: usize) -> Result<()> {
    ensure!(
        prior.len() == tasks,
        "the prior has {} entries for {tasks} tasks",
        prior.len()
    );
    if let Some(z) = prior.iter().position(|p| !p.is_finite() || *p < 0.0) {
        bail!("the prior of task {z} is {}; priors must be >= 0", prior[z]);
    }
    ensure!(
        prior.iter().sum::<f64>() > 0.0,
        "the prior is zero for every task"
    );
    Ok(())
}

/// Fails, naming the step, when some row of `joint` (`[step + 1][task]`, row 0 the prior)
/// leaves every task impossible.
pub fn check_possible(inputs: &PosteriorInputs, joint: &[f32]) -> Result<()> {
    for (row, values) in joint.chunks_exact(inputs.tasks).enumerate() {
        if values.iter().all(|&j| j <= IMPOSSIBLE) {
            let k = row.saturating_sub(1);
            let o = &inputs.observed[k];
            bail!(
                "step {k} (line {}: {}{}) is impossible under every task: no task's \
                 soft-optimal policy could have produced the trajectory up to there",
                o.line,
                o.label,
                o.action.map_or(String::new(), |a| format!(", action {a}"))
            );
        }
    }
    Ok(())
}
