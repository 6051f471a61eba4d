//! Twin of `shaders/task_posterior.wgsl` (`step_likelihood`, `accumulate`, `normalize`).

use crate::engine::layout::{IMPOSSIBLE, PosteriorInputs};

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
