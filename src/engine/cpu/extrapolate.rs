//! Twin of `shaders/extrapolate.wgsl`: `extrapolate`, the rate-extrapolation jump (and its
//! rollback) of every iteration: grid sweeps, MDP sweeps and the discounted occupancy.

/// The jump of [`crate::engine::schedule::RateExtrapolator`] per task: for a factor > 0, `backup = V`,
/// then `V += factor * (V - V_prev)` on non-`fixed` states; for [`crate::engine::schedule::ROLLBACK`],
/// `V = backup`. Arrays are `[task][state]`.
pub fn extrapolate(
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
