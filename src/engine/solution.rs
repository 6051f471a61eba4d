//! What a solve returns: per-task status, the values and policy, every time step, the
//! occupancy, and the helpers both backends use to lay them out.

use crate::error::Result;

use super::options::SolveOptions;
use crate::world::grid_mdp::GridMdp;
use crate::world::mdp::TabularMdp;

/// How a task's solve ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Residual reached `tol`.
    Converged,
    /// `max_iters` sweeps without reaching `tol`.
    MaxIters,
    /// Values grew without bound (no finite solution); no values are reported.
    Diverged,
    /// A finite horizon: exactly `T` backups.
    Horizon,
}

impl Status {
    /// The `summary.json` name.
    pub fn name(&self) -> &'static str {
        match self {
            Status::Converged => "converged",
            Status::MaxIters => "max_iters",
            Status::Diverged => "diverged",
            Status::Horizon => "horizon",
        }
    }
}

/// The float type a solve's arrays are reported in: `f32` on every backend (the default of
/// every result type), `f64` from the CPU reference on request
/// ([`crate::engine::cpu::solve_mdp_cpu_f64`]), for callers who compare with f64 code.
pub trait Real: Copy + Default + PartialEq + std::fmt::Debug + Send + Sync + 'static {
    /// Not a number: blocked cells, terminal rows of a policy.
    const NAN: Self;
    /// Minus infinity: states excluded as unreachable.
    const NEG_INFINITY: Self;
    /// The hard max's tie width relative to max(1, |max Q|), and the temperature (in the same
    /// units) below which a soft policy is written as the hard max's: what this type resolves
    /// (see [`crate::engine::cpu::soft_policy_resolved`]).
    const TIE_RELATIVE: f64;
    /// NumPy's name of this type (`float32`, `float64`), for layouts in `summary.json`.
    const NUMPY_NAME: &'static str;
    /// `x` rounded to this type.
    fn from_f64(x: f64) -> Self;
    /// `data` (C order) as `.npy` bytes of `shape` in this type.
    fn encode_npy(shape: &[usize], data: &[Self]) -> Vec<u8>;
    /// The value as f64 (exact).
    fn to_f64(self) -> f64;
}

impl Real for f32 {
    const NAN: Self = f32::NAN;
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
    const TIE_RELATIVE: f64 = crate::engine::cpu::TIE_RELATIVE;
    const NUMPY_NAME: &'static str = "float32";
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn encode_npy(shape: &[usize], data: &[Self]) -> Vec<u8> {
        crate::io::npy::encode_f32(shape, data)
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    const NAN: Self = f64::NAN;
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
    const TIE_RELATIVE: f64 = crate::engine::cpu::TIE_RELATIVE_F64;
    const NUMPY_NAME: &'static str = "float64";
    fn from_f64(x: f64) -> Self {
        x
    }
    fn encode_npy(shape: &[usize], data: &[Self]) -> Vec<u8> {
        crate::io::npy::encode("<f8", shape, data)
    }
    fn to_f64(self) -> f64 {
        self
    }
}

/// Result of a batched gridworld solve; arrays in `T` (f32 unless asked for f64).
#[derive(Clone, Debug)]
pub struct Solution<T: Real = f32> {
    /// Rows H.
    pub height: usize,
    /// Columns W.
    pub width: usize,
    /// Actions |A|.
    pub action_count: usize,
    /// `V_0` (finite horizon) or the converged V, `[task][row][col]`; NaN on blocked cells,
    /// -inf on cells excluded as unreachable. Meaningless when a task diverged.
    pub values: Vec<T>,
    /// `pi(a|s)`, `[task][row][col][action]`; NaN on blocked, terminal and excluded cells.
    pub policy: Option<Vec<T>>,
    /// Soft Q-values `Q(s,a)` (value units) the policy is made from,
    /// `[task][row][col][action]`; NaN where the policy is.
    pub q: Option<Vec<T>>,
    /// Backups applied, per task.
    pub iterations: Vec<u32>,
    /// `max_s |V_new - V_old|` of the last checked sweep, per task.
    pub residual: Vec<f64>,
    /// A bound on `max_s |V(s) - V*(s)|` (value units) of the returned values, per task
    /// (`schedule::error_bound`): within `tol` when a task converged, unless the engine's
    /// precision floor stopped it first (f32 at a small `tol`, large |V| or gamma near 1);
    /// inf with gamma = 1 (no bound exists, only the residual is known); 0 for a finite
    /// horizon (exact up to rounding).
    pub error_bound: Vec<f64>,
    /// How each task ended.
    pub status: Vec<Status>,
    /// Free non-terminal cells with no path to a terminal, per task.
    pub unreachable: Vec<u32>,
    /// Wall time of the solve (s).
    pub seconds: f64,
}

impl<T: Real> Solution<T> {
    /// Whether any task diverged.
    pub fn diverged(&self) -> bool {
        self.status.contains(&Status::Diverged)
    }
}

/// The states a solve's outputs mark, on every backend: values NaN where not
/// `free` and -inf where `excluded`; policies NaN where `fixed`.
pub struct Marks<'a> {
    /// States per task.
    pub states: usize,
    /// `[state]`, the same for every task; `None`: all free.
    pub free: Option<&'a [bool]>,
    /// `[task][state]`.
    pub excluded: &'a [bool],
    /// `[task][state]`.
    pub fixed: &'a [bool],
}

impl Marks<'_> {
    /// Marks values `[task][t][state]`, `steps` per task.
    pub fn values<T: Real>(&self, data: &mut [T], steps: usize) {
        for (i, x) in data.iter_mut().enumerate() {
            let state = i % self.states;
            let task = i / (steps * self.states);
            if self.free.is_some_and(|free| !free[state]) {
                *x = T::NAN;
            } else if self.excluded[task * self.states + state] {
                *x = T::NEG_INFINITY;
            }
        }
    }

    /// The values a solve reports from f64 values `[task][t][state]`, marked.
    pub fn reported<T: Real>(&self, data: &[f64], steps: usize) -> Vec<T> {
        let mut values: Vec<T> = data.iter().map(|&x| T::from_f64(x)).collect();
        self.values(&mut values, steps);
        values
    }

    /// Marks policies or Q-values `[task][t][state][action]`, `steps` per task.
    pub fn policy<T: Real>(&self, data: &mut [T], steps: usize, actions: usize) {
        for (i, row) in data.chunks_exact_mut(actions).enumerate() {
            let task = i / (steps * self.states);
            if self.fixed[task * self.states + i % self.states] {
                row.fill(T::NAN);
            }
        }
    }

    /// Marks a finite-horizon occupancy `[task][t][state]`: NaN where not free.
    pub fn occupancy<T: Real>(&self, data: &mut [T]) {
        if let Some(free) = self.free {
            for (i, x) in data.iter_mut().enumerate() {
                if !free[i % self.states] {
                    *x = T::NAN;
                }
            }
        }
    }
}

/// Time-indexed results of a finite-horizon solve.
#[derive(Clone, Debug)]
pub struct TimeSteps<T: Real = f32> {
    /// `V_0..V_T`, `[task][t][state]` (T + 1 steps).
    pub values: Vec<T>,
    /// `pi_0..pi_{T-1}`, `[task][t][state][action]` (T steps), when the policy was asked for.
    pub policy: Option<Vec<T>>,
    /// `Q_0..Q_{T-1}`, `[task][t][state][action]` (T steps), when Q was asked for.
    pub q: Option<Vec<T>>,
}

/// State occupancy under the soft-optimal policy (the forward messages).
#[derive(Clone, Debug)]
pub struct Occupancy<T: Real = f32> {
    /// Finite horizon: `D_0..D_T`, `[task][t][state]` (`steps` = T + 1); infinite horizon:
    /// the discounted occupancy `sum_t gamma^t D_t`, `[task][state]` (`steps` = 1).
    pub values: Vec<T>,
    /// Time steps per task in `values`.
    pub steps: usize,
    /// Forward iterations applied (T, or the sweeps of the discounted sum).
    pub iterations: u32,
    /// Residual of the discounted sum's last check per task (0 for a finite horizon).
    pub residual: Vec<f64>,
    /// How the discounted sum ended per task (`horizon` for a finite horizon).
    pub status: Vec<Status>,
}

/// Result of a general-MDP solve.
#[derive(Clone, Debug)]
pub struct MdpSolution<T: Real = f32> {
    /// `V_0` / `pi_0` (or the stationary V, pi) laid out as a grid of one row: `height` 1,
    /// `width` S, `values` `[task][state]`, `policy` `[task][state][action]`; terminal states
    /// keep their terminal value, excluded ones (gamma = 1) are -inf; the policy is NaN on
    /// both.
    pub solution: Solution<T>,
    /// Every step, with [`super::Outputs::all_steps`] and a finite horizon.
    pub steps: Option<TimeSteps<T>>,
    /// With [`super::Outputs::occupancy`], unless the backward pass diverged.
    pub occupancy: Option<Occupancy<T>>,
}

/// `[t][task][inner]` to `[task][t][inner]`.
pub fn task_major<T: Copy>(steps: &[Vec<T>], tasks: usize) -> Vec<T> {
    let per_task = steps.first().map_or(0, |s| s.len() / tasks.max(1));
    let mut out = Vec::with_capacity(steps.len() * tasks * per_task);
    for task in 0..tasks {
        for step in steps {
            out.extend_from_slice(&step[task * per_task..(task + 1) * per_task]);
        }
    }
    out
}

/// Checks what every general-MDP solve checks first: the settings, the MDP's arrays
/// ([`TabularMdp::validate`]), and that gamma = 1 without a horizon meets no task without
/// terminal states (no finite values exist then).
pub fn check_mdp_solve(mdp: &TabularMdp, options: &SolveOptions) -> Result<()> {
    options.validate()?;
    mdp.validate()?;
    if options.excludes_unreachable() {
        for t in 0..mdp.tasks {
            crate::error::ensure!(
                mdp.terminal[t * mdp.states..(t + 1) * mdp.states]
                    .iter()
                    .any(|&x| x),
                "task {t}: gamma = 1 without a horizon needs terminal states"
            );
        }
    }
    Ok(())
}

/// The start distribution of each task scaled to a peak of 1, and the scale per task. The
/// discounted occupancy iterates on `d / max_s D_0(s)`, so that `tol` bounds its residual
/// relative to the start's peak on every backend: a start spread over 10^6 states would
/// otherwise meet an absolute tol after one sweep.
pub fn scaled_start(mdp: &TabularMdp) -> (Vec<f64>, Vec<f64>) {
    let mut start = mdp.initial.clone();
    let mut scales = Vec::with_capacity(mdp.tasks);
    for row in start.chunks_exact_mut(mdp.states) {
        let peak = row.iter().fold(0.0f64, |m, &x| m.max(x));
        let scale = if peak > 0.0 { 1.0 / peak } else { 1.0 };
        row.iter_mut().for_each(|x| *x *= scale);
        scales.push(scale);
    }
    (start, scales)
}

impl MdpSolution {
    /// A solution without time steps or occupancy.
    pub fn plain(solution: Solution) -> Self {
        Self {
            solution,
            steps: None,
            occupancy: None,
        }
    }

    /// Lays a solution over `world`'s states (as `solve_mdp_cpu` gives it) onto the map, NaN
    /// on blocked cells: `height` H, `width` W, every array `[...][row][col][...]`.
    pub fn to_cells(&mut self, world: &GridMdp) {
        self.relayout((world.height, world.width), |data, inner| {
            world.to_cells(data, inner)
        });
    }

    /// Lays a solution over `world`'s map (as the grid kernels give it) onto its states:
    /// `height` 1, `width` S, every array `[...][state][...]`.
    pub fn to_states(&mut self, world: &GridMdp) {
        let states = world.cell_of_state.len();
        self.relayout((1, states), |data, inner| world.to_states(data, inner));
    }

    /// Applies `map(data, per_state)` to every array and sets the shape.
    pub(crate) fn relayout(
        &mut self,
        (height, width): (usize, usize),
        map: impl Fn(&[f32], usize) -> Vec<f32>,
    ) {
        let solution = &mut self.solution;
        let n = solution.action_count;
        solution.height = height;
        solution.width = width;
        solution.values = map(&solution.values, 1);
        solution.policy = solution.policy.as_ref().map(|p| map(p, n));
        solution.q = solution.q.as_ref().map(|q| map(q, n));
        if let Some(steps) = &mut self.steps {
            steps.values = map(&steps.values, 1);
            steps.policy = steps.policy.as_ref().map(|p| map(p, n));
            steps.q = steps.q.as_ref().map(|q| map(q, n));
        }
        if let Some(d) = &mut self.occupancy {
            d.values = map(&d.values, 1);
        }
    }
}
