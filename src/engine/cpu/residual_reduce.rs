//! Twin of `shaders/residual_reduce.wgsl`: the residual statistics of one sweep per task.

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
