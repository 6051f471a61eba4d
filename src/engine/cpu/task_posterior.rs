//! Twin of `shaders/task_posterior.wgsl` (`step_likelihood`, `accumulate`, `normalize`, `observe`).

use crate::engine::layout::{
    IMPOSSIBLE, NO_STEP, NOT_TERMINAL, ObservedStep, PosteriorInputs, REWARD_TOLERANCE,
    TaskEvidence,
};

/// The task posterior after each observed step, `[step + 1][task]` (row 0 the prior), and
/// the log joint `log p(z) + sum_{j < k} log L[j][z]` it normalizes; twin of the three entry
/// points of `shaders/task_posterior.wgsl`, in f64.
pub fn task_posterior(inputs: &PosteriorInputs) -> (Vec<f32>, Vec<f32>) {
    let impossible = IMPOSSIBLE as f64;
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
    (
        normalize(&joint, b),
        joint.iter().map(|&j| j as f32).collect(),
    )
}

/// Twin of `normalize`: each row of `joint` (`[row][task]`, `tasks` per row) as probabilities,
/// 0 for a task at or below [`IMPOSSIBLE`] (every task of a row impossible: all 0).
pub fn normalize(joint: &[f64], tasks: usize) -> Vec<f32> {
    let impossible = IMPOSSIBLE as f64;
    let mut posterior = vec![0.0f32; joint.len()];
    for (row, out) in joint
        .chunks_exact(tasks)
        .zip(posterior.chunks_exact_mut(tasks))
    {
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
    posterior
}

/// Twin of `observation_log_likelihood`: `log p(o | task)` up to a constant common to all
/// tasks, or [`IMPOSSIBLE`].
pub fn observation_log_likelihood(evidence: &TaskEvidence, task: usize, o: &ObservedStep) -> f64 {
    let (s_n, a_n) = (evidence.states, evidence.actions);
    let end_value = evidence.terminal[task * s_n + o.next as usize];
    let ends = end_value > NOT_TERMINAL;
    if ends != (o.terminated != 0) {
        return IMPOSSIBLE as f64;
    }
    let expected = evidence.reward[(task * s_n + o.state as usize) * a_n + o.action as usize]
        as f64
        + if ends { end_value as f64 } else { 0.0 };
    let gap = o.reward as f64 - expected;
    match evidence.reward_noise {
        Some(sigma) => -0.5 * (gap / sigma).powi(2),
        None if gap.abs() <= REWARD_TOLERANCE as f64 * expected.abs().max(1.0) => 0.0,
        None => IMPOSSIBLE as f64,
    }
}

/// Twin of `observe`: adds each run's observed steps (`[run][step]`, `steps` per run, ended by
/// [`NO_STEP`]) to its row of `joint` (`[run][task]`), clamped at [`IMPOSSIBLE`].
pub fn observe(
    evidence: &TaskEvidence,
    observed: &[ObservedStep],
    steps: usize,
    joint: &mut [f64],
) {
    let b = evidence.tasks;
    for (run, row) in joint.chunks_exact_mut(b).enumerate() {
        for (task, sum) in row.iter_mut().enumerate() {
            for o in &observed[run * steps..(run + 1) * steps] {
                if o.state == NO_STEP {
                    break;
                }
                let ll = observation_log_likelihood(evidence, task, o);
                *sum = (*sum + ll).max(IMPOSSIBLE as f64);
            }
        }
    }
}
