//! The check schedule both backends obey: check windows, convergence and divergence
//! decisions, and rate extrapolation.

use std::ops::ControlFlow;

use super::cpu::residual_reduce::SweepStats;
use super::options::{Horizon, SolveOptions};
use super::solution::Status;

/// Sweeps between two convergence checks (the last window of a solve may be shorter).
pub const CHECK_INTERVAL: u32 = 16;

/// Consecutive checks at which every updated value of a task rose and its residual did not
/// shrink before an undiscounted solve is declared diverged.
pub const DIVERGENCE_PATIENCE: u32 = 8;

/// The floor of an f32 engine (the GPU kernels, the native engine): a task also stops when
/// its residual is within `RESIDUAL_FLOOR * max |V|`, since below a few f32 ulps of V the
/// iteration may cycle instead of settling. Its error bound then stays above `tol` when
/// `tol` asks for more than f32 resolves at that |V| and gamma; the solve reports it
/// ([`error_bound`]) and the CLI and Python say so. Same as `RESIDUAL_FLOOR` in
/// `shaders/residual_reduce.wgsl`.
pub const RESIDUAL_FLOOR: f64 = 1e-6;

/// The floor of the f64 CPU reference: a few f64 ulps of max |V| (one ulp is 1.1e-16
/// relative), so that it honours `tol` down to about `1e3 * gamma / (1 - gamma) * 1e-15 *
/// max |V|` (1e-12 at |V| ~ 20, gamma 0.95).
pub const RESIDUAL_FLOOR_F64: f64 = 1e-15;

/// The arithmetic an iteration runs in, which sets its residual floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// f32: the GPU kernels and the native engine ([`RESIDUAL_FLOOR`]).
    F32,
    /// f64: the CPU reference ([`RESIDUAL_FLOOR_F64`]).
    F64,
}

impl Precision {
    /// The residual floor relative to max |V|.
    pub fn residual_floor(self) -> f64 {
        match self {
            Precision::F32 => RESIDUAL_FLOOR,
            Precision::F64 => RESIDUAL_FLOOR_F64,
        }
    }
}

/// What a residual (max |dV| of one plain backup sweep) is multiplied by to bound the error
/// `max |V - V*|`: `gamma / (1 - gamma)`, as every discounted backup is a gamma-contraction
/// in the max norm (`|V_k - V*| <= gamma |V_{k-1} - V*|`, so `|V_k - V*| <= gamma / (1 -
/// gamma) |V_k - V_{k-1}|`). With gamma = 1 no bound exists; the factor is 1 and `tol` bounds
/// the residual itself, as the error bound ([`error_bound`]) reports inf. The GPU gets it
/// computed here in f64 (`ReduceParams::bound_factor`): `1 - gamma` in f32 loses digits.
pub fn bound_factor(gamma: f64) -> f64 {
    if gamma < 1.0 {
        gamma / (1.0 - gamma)
    } else {
        1.0
    }
}

/// Per task of `tasks` tasks over `fixed` `[task][state]`: whether its error is bounded by the
/// span of dV ([`span_bounds`]): no state of it keeps a fixed value (a terminal state, a goal),
/// so its backup shifts by `gamma c` when V shifts by `c`, as the soft, hard and optimistic
/// backups all do.
pub fn span_bounded_tasks(fixed: &[bool], tasks: usize) -> Vec<bool> {
    let states = fixed.len() / tasks.max(1);
    (0..tasks)
        .map(|t| !fixed[t * states..(t + 1) * states].contains(&true))
        .collect()
}

/// MacQueen's bounds (Puterman, eq. 6.6.12): for a task whose backup shifts by `gamma c` when
/// V shifts by `c` ([`span_bounded_tasks`]), a sweep `V_new = T V_old` with `dV` in
/// `[min_delta, max_delta]` puts `V*` in `[V_new + k min_delta, V_new + k max_delta]` with
/// `k = gamma / (1 - gamma)` (T is monotone, so `T^n V_old` climbs by at least `gamma^n
/// min_delta` per step, and by at most the max). Returns `(shift, half_width)`: `V_new +
/// shift` is the interval's centre and within `half_width` of `V*` everywhere, at most the
/// plain bound `k max |dV|` and far below it where V moves nearly uniformly (a well-mixing
/// MDP). None for gamma = 1, a finite horizon, no update or a statistic that is not finite.
pub fn span_bounds(options: &SolveOptions, stats: &SweepStats) -> Option<(f64, f64)> {
    match options.horizon {
        Horizon::Infinite { .. } => discounted_span_bounds(options.gamma, stats),
        Horizon::Finite(_) => None,
    }
}

/// [`span_bounds`] of an infinite horizon at `gamma`.
fn discounted_span_bounds(gamma: f64, stats: &SweepStats) -> Option<(f64, f64)> {
    let finite = stats.active && stats.min_delta.is_finite() && stats.max_delta.is_finite();
    (gamma < 1.0 && finite).then(|| {
        let k = bound_factor(gamma);
        let shift = k * (0.5 * stats.max_delta + 0.5 * stats.min_delta);
        (shift, k * (0.5 * stats.max_delta - 0.5 * stats.min_delta))
    })
}

/// Whether a task's check statistics meet the convergence test for `tol`: its error bound
/// (the span's half width for a `span_bounded` task, [`span_bounds`], else
/// `bound_factor(gamma) * max |dV|`) is within `tol`, or its residual is within the `precision`'s floor times
/// max |V| (then the reported [`error_bound`] may exceed `tol`). A NaN or infinite residual or
/// value never does; the GPU twin, `within_tolerance` in `shaders/residual_reduce.wgsl`, sees
/// those as HUGE.
pub fn within_tolerance(
    tol: f64,
    gamma: f64,
    precision: Precision,
    stats: &SweepStats,
    span_bounded: bool,
) -> bool {
    let residual = stats.max_abs_delta;
    let bound = match discounted_span_bounds(gamma, stats).filter(|_| span_bounded) {
        Some((_, half_width)) => half_width,
        None => residual * bound_factor(gamma),
    };
    (bound <= tol || residual <= precision.residual_floor() * stats.max_abs_value)
        && residual.is_finite()
        && stats.max_abs_value.is_finite()
}

/// The bound on `max_s |V(s) - V*(s)|` a task's last check statistics give under `options`
/// for an iteration in `precision`: for a discounted infinite horizon the larger of
/// `gamma / (1 - gamma) * max |dV|` (exact arithmetic) and the precision's reach
/// `floor * max |V| / (1 - gamma)` (a backup rounded to a few ulps of |V| moves the fixed
/// point by up to that: a residual of 0 in f32 does not mean V*); inf when the residual is
/// not finite or gamma = 1 (no contraction, no bound: only the residual is known); 0 for a
/// finite horizon, whose `T` backups are exact up to rounding. For a `span_bounded` task the
/// span's half width ([`span_bounds`]) replaces `gamma / (1 - gamma) * max |dV|`: the bound
/// of the values shifted to the interval's centre, which is what the solves return.
pub fn error_bound(
    options: &SolveOptions,
    precision: Precision,
    stats: &SweepStats,
    span_bounded: bool,
) -> f64 {
    match options.horizon {
        Horizon::Finite(_) => 0.0,
        Horizon::Infinite { .. } if options.gamma < 1.0 && stats.max_abs_delta.is_finite() => {
            let reach = precision.residual_floor() * stats.max_abs_value / (1.0 - options.gamma);
            let plain = bound_factor(options.gamma) * stats.max_abs_delta;
            let bound = match span_bounds(options, stats).filter(|_| span_bounded) {
                Some((_, half_width)) => half_width.min(plain),
                None => plain,
            };
            bound.max(reach)
        }
        Horizon::Infinite { .. } => f64::INFINITY,
    }
}

/// Two successive per-sweep rate estimates closer than this trigger an extrapolation. Same
/// as `RATE_AGREEMENT` in `shaders/residual_reduce.wgsl`.
pub const RATE_AGREEMENT: f64 = 1e-4;

/// Convergence acceleration shared by both backends. Soft value iteration's residual soon
/// decays like lambda^k along one slow mode (the discount times the policy's survival
/// probability). Once two successive per-sweep rate estimates, each from the residuals of two
/// checks `CHECK_INTERVAL` sweeps apart, agree within [`RATE_AGREEMENT`] and lie below gamma,
/// V jumps to that mode's limit: `V += lambda / (1 - lambda) * (V - V_prev)`, keeping a backup
/// of V. The jump is judged at the next check: if the residual rose above its value at the
/// jump, V returns to the backup and jumps stop for that task (near the hard max the slow
/// mode is a wavefront that the max operator soon bends, and a jump along it overshoots).
/// The stopping rule and the fixed point are unchanged, since the backup is a contraction from
/// any start. On a 127 x 127 maze (8-connected, slip 0.1, alpha 1, tol 1e-4) this cuts the
/// sweeps from 907 to 188 at gamma = 0.99 and from 9095 to 481 at gamma = 0.999.
#[derive(Clone, Debug)]
pub struct RateExtrapolator {
    // Per task: the last three residuals (oldest first) and checks since the last jump.
    history: Vec<[f64; 4]>,
    // Per task: the residual at the last jump and the jump state.
    jump: Vec<(f64, JumpState)>,
}

/// Where a task's extrapolation stands. Same values as `JUMP_*` in
/// `shaders/residual_reduce.wgsl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JumpState {
    /// Jumps may happen.
    Allowed = 0,
    /// Jumped at the previous check; judged at the next one.
    Pending = 1,
    /// A jump raised the residual and was rolled back; no more jumps.
    Disabled = 2,
}

/// Extrapolation factor asking to restore V from its backup. Same as `ROLLBACK` in
/// `shaders/residual_reduce.wgsl`.
pub const ROLLBACK: f64 = -1.0;

impl RateExtrapolator {
    /// No history, for `tasks` tasks.
    pub fn new(tasks: usize) -> Self {
        Self {
            history: vec![[0.0; 4]; tasks],
            jump: vec![(0.0, JumpState::Allowed); tasks],
        }
    }

    /// Takes one check's statistics of task `t`, which is still iterating and not within
    /// tolerance; returns its extrapolation factor: > 0 jump, [`ROLLBACK`], or 0 (nothing). A
    /// rate is trusted only below gamma, the contraction factor that bounds every mode.
    /// Mirrors the per-task loop of `convergence_decide`.
    pub fn observe(&mut self, t: usize, gamma: f64, stats: &SweepStats) -> f64 {
        let h = &mut self.history[t];
        let (at_jump, state) = &mut self.jump[t];
        *h = [h[1], h[2], stats.max_abs_delta, h[3] + 1.0];
        let mut factor = 0.0;
        if *state == JumpState::Pending {
            if stats.max_abs_delta > *at_jump {
                factor = ROLLBACK;
                *state = JumpState::Disabled;
            } else {
                *state = JumpState::Allowed;
            }
        }
        if *state == JumpState::Allowed && h[3] >= 3.0 && h[0] > 0.0 && h[1] > 0.0 && h[2] > 0.0 {
            let newer = (h[2] / h[1]).powf(1.0 / CHECK_INTERVAL as f64);
            let older = (h[1] / h[0]).powf(1.0 / CHECK_INTERVAL as f64);
            if (newer - older).abs() < RATE_AGREEMENT && newer < gamma {
                factor = newer / (1.0 - newer);
                h[3] = 0.0;
                (*at_jump, *state) = (stats.max_abs_delta, JumpState::Pending);
            }
        }
        factor
    }
}

/// A value beyond this magnitude means the iteration is running away (or about to overflow
/// f32); the solve stops as diverged.
pub const VALUE_LIMIT: f64 = 1e30;

/// A solve's progress callback, called after every convergence check: `Continue` goes on,
/// `Break` stops the solve, which then returns [`Error::Cancelled`](crate::Error::Cancelled)
/// (how a Ctrl-C or a deadline reaches a long solve).
pub type OnProgress<'a> = dyn FnMut(&Progress) -> ControlFlow<()> + 'a;

/// The progress callback of a caller that watches nothing: never stops the solve.
pub fn keep_going(_: &Progress) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

/// Where a solve stands, reported after convergence checks (for progress displays).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Progress {
    /// Sweeps done so far.
    pub sweeps: u32,
    /// Sweeps the solve may run at most (`T` or `max_iters`).
    pub budget: u32,
    /// Largest task residual at the last check.
    pub residual: f64,
    /// The tolerance, for an infinite horizon.
    pub tol: Option<f64>,
}

impl Progress {
    /// The progress after `sweeps` sweeps whose last check gave `stats`.
    pub fn after(options: &SolveOptions, sweeps: u32, stats: &[SweepStats]) -> Self {
        Self {
            sweeps,
            budget: sweep_budget(&options.horizon),
            residual: stats.iter().map(|s| s.max_abs_delta).fold(0.0, f64::max),
            tol: match options.horizon {
                Horizon::Infinite { tol, .. } => Some(tol),
                Horizon::Finite(_) => None,
            },
        }
    }
}

/// Lengths of the check windows covering `total` sweeps: `CHECK_INTERVAL` each, the last one
/// shorter; a check runs at the end of each window.
pub fn check_windows(total: u32) -> Vec<u32> {
    let mut windows = vec![CHECK_INTERVAL; (total / CHECK_INTERVAL) as usize];
    if !total.is_multiple_of(CHECK_INTERVAL) {
        windows.push(total % CHECK_INTERVAL);
    }
    windows
}

/// Total sweeps a solve may run: `T`, or `max_iters`.
pub fn sweep_budget(horizon: &Horizon) -> u32 {
    match *horizon {
        Horizon::Finite(t) => t,
        Horizon::Infinite { max_iters, .. } => max_iters,
    }
}

/// Watches the per-task statistics of successive checks: each task stops iterating (is
/// frozen, its values and statistics kept) at the first check where it converged or
/// diverged, and the solve stops once every task has. So a task's iteration, and every bit of
/// its result, is the same whatever batch it is solved in: alone, in a chunk, on one adapter
/// of several, or in a shard of `softvi solve --tasks I/N`.
#[derive(Clone, Debug)]
pub struct ConvergenceMonitor {
    undiscounted: bool,
    streak: Vec<u32>,
    last_residual: Vec<f64>,
    ended: Vec<Option<TaskEnd>>,
}

/// Where and how one task stopped iterating before the sweep budget ran out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TaskEnd {
    /// Sweeps the task had when it stopped.
    pub sweeps: u32,
    /// Its statistics at that check.
    pub stats: SweepStats,
    /// Converged (within tolerance) or diverged.
    pub converged: bool,
}

/// What a check decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Keep iterating: some task is still iterating.
    Continue,
    /// Every task's residual is within tol.
    Converged,
    /// These tasks diverged (and every other one converged or ran out of sweeps).
    Diverged(Vec<usize>),
}

/// Per task, how an iteration ended: what every solve reports.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskOutcomes {
    /// Converged when every task converged; the diverged tasks if any; else `Continue` (the
    /// budget ran out with some task still iterating).
    pub verdict: Verdict,
    /// Sweeps each task had: when it stopped, else the whole budget.
    pub iterations: Vec<u32>,
    /// Each task's statistics at its last check.
    pub last: Vec<SweepStats>,
    /// Whether each task converged.
    pub converged: Vec<bool>,
}

impl ConvergenceMonitor {
    /// A monitor for `tasks` tasks under `options`.
    pub fn new(options: &SolveOptions, tasks: usize) -> Self {
        Self {
            undiscounted: options.excludes_unreachable(),
            streak: vec![0; tasks],
            last_residual: vec![f64::INFINITY; tasks],
            ended: vec![None; tasks],
        }
    }

    /// Takes one check's per-task statistics after `sweeps` sweeps, and `converged`: the
    /// tasks `convergence_decide` found within tolerance at this check (newly frozen). Tasks
    /// that ended at an earlier check are left alone.
    ///
    /// Divergence: a value beyond [`VALUE_LIMIT`] (or not finite); or, with gamma = 1, a task
    /// whose updated values all rose while its residual did not shrink (by 0.1%) for
    /// [`DIVERGENCE_PATIENCE`] consecutive checks: the growth mode of a soft Bellman operator
    /// with no finite fixed point. A converging undiscounted solve either falls towards its
    /// fixed point (values drop from 0) or approaches it with a shrinking residual. It is
    /// judged first, so a runaway that also looks within tolerance counts as diverged.
    pub fn observe(&mut self, sweeps: u32, stats: &[SweepStats], converged: &[bool]) -> Verdict {
        for (t, s) in stats.iter().enumerate() {
            if self.ended[t].is_some() {
                continue;
            }
            let runaway = !(s.max_abs_value <= VALUE_LIMIT && s.max_abs_delta.is_finite());
            let rising = self.undiscounted
                && s.active
                && s.min_delta > 0.0
                && s.max_abs_delta >= self.last_residual[t] * (1.0 - 1e-3);
            self.streak[t] = if rising { self.streak[t] + 1 } else { 0 };
            if s.active {
                self.last_residual[t] = s.max_abs_delta;
            }
            let diverged = runaway || self.streak[t] >= DIVERGENCE_PATIENCE;
            if diverged || converged[t] {
                self.ended[t] = Some(TaskEnd {
                    sweeps,
                    stats: *s,
                    converged: !diverged,
                });
            }
        }
        match self.ended.iter().all(Option::is_some) {
            true => self.verdict(),
            false => Verdict::Continue,
        }
    }

    /// Records the tasks in `converged`, found within tolerance after `sweeps` sweeps between
    /// two checks (`stats` that sweep's), as converged there; no divergence test runs (that is
    /// judged at checks only). Tasks that already ended are left alone.
    pub fn converged_between_checks(
        &mut self,
        sweeps: u32,
        stats: &[SweepStats],
        converged: &[bool],
    ) {
        for (t, s) in stats.iter().enumerate() {
            if self.ended[t].is_none() && converged[t] {
                self.ended[t] = Some(TaskEnd {
                    sweeps,
                    stats: *s,
                    converged: true,
                });
            }
        }
    }

    /// Whether each task has stopped iterating.
    pub fn frozen(&self) -> Vec<bool> {
        self.ended.iter().map(Option::is_some).collect()
    }

    /// Whether task `t` has stopped iterating.
    pub fn is_frozen(&self, t: usize) -> bool {
        self.ended[t].is_some()
    }

    /// Converged when every task converged, the diverged tasks if any, else `Continue`.
    fn verdict(&self) -> Verdict {
        let diverged: Vec<usize> = (self.ended.iter().enumerate())
            .filter(|(_, e)| e.is_some_and(|e| !e.converged))
            .map(|(t, _)| t)
            .collect();
        if !diverged.is_empty() {
            Verdict::Diverged(diverged)
        } else if self.ended.iter().all(|e| e.is_some_and(|e| e.converged)) {
            Verdict::Converged
        } else {
            Verdict::Continue
        }
    }

    /// The outcome once the iteration stopped after `sweeps` sweeps, `last` the statistics of
    /// the last check (which tasks still iterating keep).
    pub fn outcomes(&self, sweeps: u32, last: &[SweepStats]) -> TaskOutcomes {
        let ended = &self.ended;
        TaskOutcomes {
            verdict: self.verdict(),
            iterations: ended
                .iter()
                .map(|e| e.map_or(sweeps, |e| e.sweeps))
                .collect(),
            last: (ended.iter().zip(last))
                .map(|(e, &s)| e.map_or(s, |e| e.stats))
                .collect(),
            converged: ended
                .iter()
                .map(|e| e.is_some_and(|e| e.converged))
                .collect(),
        }
    }
}

/// Whether a state with an action that surely keeps the agent there at reward `reward` per
/// step (after its cost) has no finite value at gamma = 1. Soft: with `q = reward + V(s)`,
/// `V(s) = alpha log(exp(q / alpha) + sum_other exp(Q / alpha)) > q >= V(s)` for any finite V
/// when `reward >= 0` and another action exists, so there is no fixed point; hard (alpha = 0):
/// when `reward > 0`. The iteration itself may not show it: at `--stay --alpha 0.01` with unit
/// step costs V grows by alpha 8 exp(-1 / alpha), about 1e-45 per sweep, below f32 and below
/// any tolerance, and used to be reported converged at V = 0.
pub fn unbounded_self_loop(alpha: f64, actions: usize, reward: f64) -> bool {
    if alpha > 0.0 {
        actions > 1 && reward >= 0.0
    } else {
        reward > 0.0
    }
}

/// `verdict` with every task flagged in `unbounded` (tasks without a finite solution by their
/// structure, `GridInputs::unbounded_tasks`, `MdpInputs::unbounded_tasks`) declared diverged,
/// whatever the iteration saw. Both backends apply it to the backward iteration's verdict.
pub fn with_unbounded(verdict: Verdict, unbounded: &[bool]) -> Verdict {
    let mut tasks: Vec<usize> = (0..unbounded.len()).filter(|&t| unbounded[t]).collect();
    if tasks.is_empty() {
        return verdict;
    }
    if let Verdict::Diverged(seen) = verdict {
        tasks.extend(seen);
        tasks.sort_unstable();
        tasks.dedup();
    }
    Verdict::Diverged(tasks)
}

/// Final per-task statuses once iteration stopped after `verdict` (with
/// [`with_unbounded`] applied), `converged` the tasks the monitor saw converge.
pub fn final_status(options: &SolveOptions, verdict: &Verdict, converged: &[bool]) -> Vec<Status> {
    (0..converged.len())
        .map(|t| match verdict {
            Verdict::Diverged(tasks) if tasks.contains(&t) => Status::Diverged,
            _ if matches!(options.horizon, Horizon::Finite(_)) => Status::Horizon,
            _ if converged[t] => Status::Converged,
            _ => Status::MaxIters,
        })
        .collect()
}
