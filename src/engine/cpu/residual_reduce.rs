//! Twins of `shaders/residual_reduce.wgsl`: the residual statistics of one sweep per task
//! (`residual_reduce`) and the decision a check takes (`convergence_decide`).

/// Residual statistics of one sweep for one task, as the GPU reduction produces them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SweepStats {
    /// `max_s |V_new(s) - V_old(s)|` over updated cells.
    pub max_abs_delta: f64,
    /// `min_s (V_new(s) - V_old(s))` over updated cells (+inf when none).
    pub min_delta: f64,
    /// An upper bound on `max_s (V_new(s) - V_old(s))` over updated cells (-inf when none):
    /// that maximum itself in the f64 reference and the native CSR engine, `max_abs_delta`
    /// where a sweep does not reduce it (the WGSL kernels, the native grid engine). With
    /// `min_delta` it gives the span bound ([`crate::engine::schedule::error_bound`]).
    pub max_delta: f64,
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
            max_delta: f64::NEG_INFINITY,
            max_abs_value: 0.0,
            active: false,
        }
    }
}

impl SweepStats {
    /// Adds one updated cell. A change or value that is not finite makes the residual and
    /// max |V| infinite and min dV -inf (`element_stats` in `shaders/shared/residual_stats.wgsl`
    /// writes HUGE, f32's stand-in): never within tolerance, always a runaway.
    pub fn observe(&mut self, v_old: f64, v_new: f64) {
        let delta = v_new - v_old;
        self.active = true;
        if !(delta.is_finite() && v_new.is_finite()) {
            self.max_abs_value = f64::INFINITY;
            self.max_abs_delta = f64::INFINITY;
            self.min_delta = f64::NEG_INFINITY;
            self.max_delta = f64::INFINITY;
            return;
        }
        self.max_abs_delta = self.max_abs_delta.max(delta.abs());
        self.min_delta = self.min_delta.min(delta);
        self.max_delta = self.max_delta.max(delta);
        self.max_abs_value = self.max_abs_value.max(v_new.abs());
    }
}

impl SweepStats {
    /// Both statistics as one, as `combine_stats` in `shaders/shared/residual_stats.wgsl`
    /// merges two invocations' or two workgroups' statistics (order does not matter).
    pub fn combine(self, other: SweepStats) -> SweepStats {
        SweepStats {
            max_abs_delta: self.max_abs_delta.max(other.max_abs_delta),
            min_delta: self.min_delta.min(other.min_delta),
            max_delta: self.max_delta.max(other.max_delta),
            max_abs_value: self.max_abs_value.max(other.max_abs_value),
            active: self.active || other.active,
        }
    }
}

/// Twin of `residual_reduce`: one task's statistics from its workgroups' partial statistics.
pub fn residual_reduce(partials: &[SweepStats]) -> SweepStats {
    partials
        .iter()
        .fold(SweepStats::default(), |acc, &p| acc.combine(p))
}

/// Twin of `convergence_decide`: each task still iterating (not `frozen`) whose residual is
/// within tolerance freezes ([`crate::engine::schedule::within_tolerance`] at `gamma` and
/// `precision`, by the span of dV for the `span_bounded` tasks; `tol` is `None` for a finite
/// horizon, where none does); when
/// `extrapolator` is given (extrapolation on), every other task still iterating gets its jump
/// factor (> 0 jump, [`crate::engine::schedule::ROLLBACK`], 0 nothing). Returns the tasks
/// frozen at this check and the factors (empty without an extrapolator).
pub fn convergence_decide(
    tol: Option<f64>,
    gamma: f64,
    precision: crate::engine::schedule::Precision,
    mut extrapolator: Option<&mut crate::engine::schedule::RateExtrapolator>,
    stats: &[SweepStats],
    frozen: &[bool],
    span_bounded: &[bool],
) -> (Vec<bool>, Vec<f64>) {
    let mut newly = vec![false; stats.len()];
    let mut factors = match extrapolator {
        Some(_) => vec![0.0; stats.len()],
        None => Vec::new(),
    };
    for (t, s) in stats.iter().enumerate() {
        if frozen[t] {
            continue;
        }
        let within = |tol| {
            crate::engine::schedule::within_tolerance(tol, gamma, precision, s, span_bounded[t])
        };
        if tol.is_some_and(within) {
            newly[t] = true;
        } else if let (Some(extrapolator), Some(_)) = (extrapolator.as_deref_mut(), tol) {
            factors[t] = extrapolator.observe(t, gamma, s);
        }
    }
    (newly, factors)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GPU reduces partials in a tree whose shape depends on the dispatch; the statistics
    /// must not: any split into partials reduces to the statistics of the whole.
    #[test]
    fn any_split_reduces_to_the_whole() {
        let cells = [
            (0.0, 1.5),
            (2.0, -1.0),
            (-3.0, -3.0),
            (1.0, 4.0),
            (0.5, 0.25),
        ];
        let mut whole = SweepStats::default();
        for &(old, new) in &cells {
            whole.observe(old, new);
        }
        assert_eq!(whole.max_abs_delta, 3.0);
        assert_eq!(whole.min_delta, -3.0);
        assert_eq!(whole.max_delta, 3.0);
        for split in 0..=cells.len() {
            let mut parts = [SweepStats::default(); 2];
            for (i, &(old, new)) in cells.iter().enumerate() {
                parts[(i >= split) as usize].observe(old, new);
            }
            assert_eq!(residual_reduce(&parts), whole, "split at {split}");
        }
        // No partial at all: nothing updated, the identity.
        assert_eq!(residual_reduce(&[]), SweepStats::default());
        assert!(!residual_reduce(&[SweepStats::default(); 3]).active);
    }
}
