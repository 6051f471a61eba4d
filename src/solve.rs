//! What both backends share: the check schedule, convergence and divergence decisions, the
//! result type, and the CPU-reference solve driver.

use std::time::Instant;

use anyhow::Result;

use crate::layout::GridInputs;
use crate::mdp::{MdpInputs, TabularMdp};
use crate::problem::{GridProblem, Horizon, MdpOutputs, SolveOptions};
use crate::reference::{self, SweepStats};

/// Sweeps between two convergence checks (the last window of a solve may be shorter).
pub const CHECK_INTERVAL: u32 = 16;

/// Consecutive checks at which every updated value of a task rose and its residual did not
/// shrink before an undiscounted solve is declared diverged.
pub const DIVERGENCE_PATIENCE: u32 = 8;

/// A task has converged when its residual is within `max(tol, RESIDUAL_FLOOR * max |V|)`:
/// below a few f32 ulps of V the GPU iteration may cycle instead of settling. Same as
/// `RESIDUAL_FLOOR` in `shaders/residual_reduce.wgsl`; both backends apply it.
pub const RESIDUAL_FLOOR: f64 = 1e-6;

/// Whether a task's check statistics meet the convergence threshold for `tol`.
pub fn within_tolerance(tol: f64, stats: &SweepStats) -> bool {
    stats.max_abs_delta <= tol.max(RESIDUAL_FLOOR * stats.max_abs_value)
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

    /// Takes one check's statistics of a solve that has not converged; returns each task's
    /// extrapolation factor: > 0 jump, [`ROLLBACK`], or 0 (nothing). A rate is trusted only
    /// below gamma, the contraction factor that bounds every mode. Mirrors
    /// `convergence_decide`.
    pub fn observe(&mut self, tol: f64, gamma: f64, stats: &[SweepStats]) -> Vec<f64> {
        let mut factors = vec![0.0; stats.len()];
        for (t, s) in stats.iter().enumerate() {
            let h = &mut self.history[t];
            let (at_jump, state) = &mut self.jump[t];
            *h = [h[1], h[2], s.max_abs_delta, h[3] + 1.0];
            if *state == JumpState::Pending {
                if s.max_abs_delta > *at_jump {
                    factors[t] = ROLLBACK;
                    *state = JumpState::Disabled;
                } else {
                    *state = JumpState::Allowed;
                }
            }
            if *state == JumpState::Allowed
                && h[3] >= 3.0
                && h[0] > 0.0
                && h[1] > 0.0
                && h[2] > 0.0
                && !within_tolerance(tol, s)
            {
                let newer = (h[2] / h[1]).powf(1.0 / CHECK_INTERVAL as f64);
                let older = (h[1] / h[0]).powf(1.0 / CHECK_INTERVAL as f64);
                if (newer - older).abs() < RATE_AGREEMENT && newer < gamma {
                    factors[t] = newer / (1.0 - newer);
                    h[3] = 0.0;
                    (*at_jump, *state) = (s.max_abs_delta, JumpState::Pending);
                }
            }
        }
        factors
    }
}

/// A value beyond this magnitude means the iteration is running away (or about to overflow
/// f32); the solve stops as diverged.
pub const VALUE_LIMIT: f64 = 1e30;

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

/// Result of a batched gridworld solve.
#[derive(Clone, Debug)]
pub struct Solution {
    /// Rows H.
    pub height: usize,
    /// Columns W.
    pub width: usize,
    /// Actions |A|.
    pub action_count: usize,
    /// `V_0` (finite horizon) or the converged V, `[task][row][col]`; NaN on blocked cells,
    /// -inf on cells excluded as unreachable. Meaningless when a task diverged.
    pub values: Vec<f32>,
    /// `pi(a|s)`, `[task][row][col][action]`; NaN on blocked, terminal and excluded cells.
    pub policy: Option<Vec<f32>>,
    /// Backups applied, per task.
    pub iterations: Vec<u32>,
    /// `max_s |V_new - V_old|` of the last checked sweep, per task.
    pub residual: Vec<f64>,
    /// How each task ended.
    pub status: Vec<Status>,
    /// Free non-terminal cells with no path to a terminal, per task.
    pub unreachable: Vec<u32>,
    /// Wall time of the solve (s).
    pub seconds: f64,
}

impl Solution {
    /// Whether any task diverged.
    pub fn diverged(&self) -> bool {
        self.status.contains(&Status::Diverged)
    }
}

/// Where a solve stands, reported after convergence checks (for progress displays).
#[derive(Clone, Copy, Debug, PartialEq)]
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

/// Watches the per-task statistics of successive checks and says when to stop.
#[derive(Clone, Debug)]
pub struct ConvergenceMonitor {
    tol: Option<f64>,
    undiscounted: bool,
    streak: Vec<u32>,
    last_residual: Vec<f64>,
}

/// What a check decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Keep iterating.
    Continue,
    /// Every task's residual is within tol.
    Converged,
    /// These tasks diverged.
    Diverged(Vec<usize>),
}

impl ConvergenceMonitor {
    /// A monitor for `tasks` tasks under `options`.
    pub fn new(options: &SolveOptions, tasks: usize) -> Self {
        let tol = match options.horizon {
            Horizon::Finite(_) => None,
            Horizon::Infinite { tol, .. } => Some(tol),
        };
        Self {
            tol,
            undiscounted: options.excludes_unreachable(),
            streak: vec![0; tasks],
            last_residual: vec![f64::INFINITY; tasks],
        }
    }

    /// Takes one check's per-task statistics.
    ///
    /// Divergence: a value beyond [`VALUE_LIMIT`] (or not finite); or, with gamma = 1, a task
    /// whose updated values all rose while its residual did not shrink (by 0.1%) for
    /// [`DIVERGENCE_PATIENCE`] consecutive checks: the growth mode of a soft Bellman operator
    /// with no finite fixed point. A converging undiscounted solve either falls towards its
    /// fixed point (values drop from 0) or approaches it with a shrinking residual.
    pub fn observe(&mut self, stats: &[SweepStats]) -> Verdict {
        let mut diverged = Vec::new();
        for (t, s) in stats.iter().enumerate() {
            let runaway = !(s.max_abs_value <= VALUE_LIMIT && s.max_abs_delta.is_finite());
            let rising = self.undiscounted
                && s.active
                && s.min_delta > 0.0
                && s.max_abs_delta >= self.last_residual[t] * (1.0 - 1e-3);
            self.streak[t] = if rising { self.streak[t] + 1 } else { 0 };
            if s.active {
                self.last_residual[t] = s.max_abs_delta;
            }
            if runaway || self.streak[t] >= DIVERGENCE_PATIENCE {
                diverged.push(t);
            }
        }
        if !diverged.is_empty() {
            return Verdict::Diverged(diverged);
        }
        match self.tol {
            Some(tol) if stats.iter().all(|s| within_tolerance(tol, s)) => Verdict::Converged,
            _ => Verdict::Continue,
        }
    }
}

/// Final per-task statuses once iteration stopped after `verdict`, from each task's last
/// check statistics.
pub fn final_status(options: &SolveOptions, verdict: &Verdict, last: &[SweepStats]) -> Vec<Status> {
    let within = |t: usize| match options.horizon {
        Horizon::Infinite { tol, .. } => within_tolerance(tol, &last[t]),
        Horizon::Finite(_) => false,
    };
    (0..last.len())
        .map(|t| match verdict {
            Verdict::Diverged(tasks) if tasks.contains(&t) => Status::Diverged,
            _ if matches!(options.horizon, Horizon::Finite(_)) => Status::Horizon,
            _ if within(t) => Status::Converged,
            _ => Status::MaxIters,
        })
        .collect()
}

/// Marks blocked cells NaN and excluded cells -inf in `values` `[task][row][col]`, and fixed
/// cells NaN in `policy` `[task][row][col][action]`.
pub fn mark_special_cells(inputs: &GridInputs, values: &mut [f32], policy: Option<&mut [f32]>) {
    let cells = inputs.cells();
    for (i, v) in values.iter_mut().enumerate() {
        if !inputs.free[i % cells] {
            *v = f32::NAN;
        } else if inputs.excluded[i] {
            *v = f32::NEG_INFINITY;
        }
    }
    if let Some(policy) = policy {
        let n = inputs.action_count;
        for (i, &fixed) in inputs.fixed.iter().enumerate() {
            if fixed {
                policy[i * n..(i + 1) * n].fill(f32::NAN);
            }
        }
    }
}

/// Where a CPU iteration stopped.
pub struct CpuIteration {
    /// The last values, `[task][state]`.
    pub v: Vec<f64>,
    /// The values the last sweep read (V_1 for a finite horizon).
    pub v_prev: Vec<f64>,
    /// Statistics of the last checked sweep, per task.
    pub last: Vec<SweepStats>,
    /// Sweeps applied.
    pub sweeps: u32,
    /// Why it stopped.
    pub verdict: Verdict,
}

/// The iteration both CPU references share: `sweep(v_in, v_out)` applied on the check schedule
/// of the GPU path, with the same convergence, divergence and rate-extrapolation decisions.
/// `fixed` `[task][state]` marks the states extrapolation leaves alone.
pub fn iterate_cpu(
    options: &SolveOptions,
    v0: Vec<f64>,
    fixed: &[bool],
    mut sweep: impl FnMut(&[f64], &mut [f64]) -> Vec<SweepStats>,
    progress: &mut dyn FnMut(&Progress),
) -> CpuIteration {
    let mut v = v0;
    let mut v_next = v.clone();
    let mut backup = if options.uses_extrapolation() {
        v.clone()
    } else {
        Vec::new()
    };
    let mut monitor: Option<ConvergenceMonitor> = None;
    let mut extrapolator: Option<RateExtrapolator> = None;
    let mut verdict = Verdict::Continue;
    let mut sweeps = 0u32;
    let mut last = Vec::new();
    for window in check_windows(sweep_budget(&options.horizon)) {
        for _ in 0..window {
            last = sweep(&v, &mut v_next);
            std::mem::swap(&mut v, &mut v_next);
            sweeps += 1;
        }
        let tasks = last.len();
        verdict = monitor
            .get_or_insert_with(|| ConvergenceMonitor::new(options, tasks))
            .observe(&last);
        progress(&Progress::after(options, sweeps, &last));
        if verdict != Verdict::Continue {
            break;
        }
        if let (true, Horizon::Infinite { tol, .. }) =
            (options.uses_extrapolation(), options.horizon)
        {
            let factors = extrapolator
                .get_or_insert_with(|| RateExtrapolator::new(tasks))
                .observe(tol, options.gamma, &last);
            reference::grid_extrapolate(fixed, &mut v, &v_next, &mut backup, &factors);
        }
    }
    CpuIteration {
        v,
        v_prev: v_next,
        last,
        sweeps,
        verdict,
    }
}

/// Solves `problem` with the CPU reference (f64 throughout, one thread).
pub fn solve_cpu(problem: &GridProblem, options: &SolveOptions) -> Result<Solution> {
    solve_cpu_with_progress(problem, options, &mut |_| {})
}

/// [`solve_cpu`], calling `progress` after every convergence check.
pub fn solve_cpu_with_progress(
    problem: &GridProblem,
    options: &SolveOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Solution> {
    let start = Instant::now();
    problem.validate()?;
    options.validate()?;
    let inputs = GridInputs::new(problem, options);
    let run = iterate_cpu(
        options,
        vec![0.0f64; inputs.tasks * inputs.cells()],
        &inputs.fixed,
        |v_in, v_out| reference::grid_backup(&inputs, v_in, v_out),
        progress,
    );
    let CpuIteration {
        v,
        v_prev: v_next,
        last,
        sweeps,
        verdict,
    } = run;
    let status = final_status(options, &verdict, &last);
    let residual = last.iter().map(|s| s.max_abs_delta).collect();
    // After the swap, v_next holds the values the last sweep read (V_1 for a finite horizon).
    let policy_from = match options.horizon {
        Horizon::Finite(_) => &v_next,
        Horizon::Infinite { .. } => &v,
    };
    let mut policy = (options.policy && !status.contains(&Status::Diverged))
        .then(|| reference::grid_policy(&inputs, policy_from));
    let mut values: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    mark_special_cells(&inputs, &mut values, policy.as_deref_mut());
    Ok(Solution {
        height: inputs.height,
        width: inputs.width,
        action_count: inputs.action_count,
        values,
        policy,
        iterations: vec![sweeps; inputs.tasks],
        residual,
        status,
        unreachable: inputs.unreachable.clone(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Time-indexed results of a finite-horizon solve.
#[derive(Clone, Debug)]
pub struct TimeSteps {
    /// `V_0..V_T`, `[task][t][state]` (T + 1 steps).
    pub values: Vec<f32>,
    /// `pi_0..pi_{T-1}`, `[task][t][state][action]` (T steps), when the policy was asked for.
    pub policy: Option<Vec<f32>>,
}

/// State occupancy under the soft-optimal policy (the forward messages).
#[derive(Clone, Debug)]
pub struct Occupancy {
    /// Finite horizon: `D_0..D_T`, `[task][t][state]` (`steps` = T + 1); infinite horizon:
    /// the discounted occupancy `sum_t gamma^t D_t`, `[task][state]` (`steps` = 1).
    pub values: Vec<f32>,
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
pub struct MdpSolution {
    /// `V_0` / `pi_0` (or the stationary V, pi) laid out as a grid of one row: `height` 1,
    /// `width` S, `values` `[task][state]`, `policy` `[task][state][action]`; terminal states
    /// keep their terminal value, excluded ones (gamma = 1) are -inf; the policy is NaN on
    /// both.
    pub solution: Solution,
    /// Every step, with [`MdpOutputs::all_steps`] and a finite horizon.
    pub steps: Option<TimeSteps>,
    /// With [`MdpOutputs::occupancy`], unless the backward pass diverged.
    pub occupancy: Option<Occupancy>,
}

/// `[t][task][inner]` to `[task][t][inner]`.
pub fn task_major(steps: &[Vec<f32>], tasks: usize) -> Vec<f32> {
    let per_task = steps.first().map_or(0, |s| s.len() / tasks.max(1));
    let mut out = Vec::with_capacity(steps.len() * tasks * per_task);
    for task in 0..tasks {
        for step in steps {
            out.extend_from_slice(&step[task * per_task..(task + 1) * per_task]);
        }
    }
    out
}

/// Fails when gamma = 1 without a horizon meets a task without terminal states (no finite
/// values exist).
pub fn check_mdp_terminals(mdp: &TabularMdp, options: &SolveOptions) -> Result<()> {
    if options.excludes_unreachable() {
        for t in 0..mdp.tasks {
            anyhow::ensure!(
                mdp.terminal[t * mdp.states..(t + 1) * mdp.states]
                    .iter()
                    .any(|&x| x),
                "task {t}: gamma = 1 without a horizon needs terminal states"
            );
        }
    }
    Ok(())
}

/// The f32 values a solve reports: -inf on excluded states.
pub fn reported_values(inputs: &MdpInputs, v: &[f64]) -> Vec<f32> {
    v.iter()
        .zip(&inputs.excluded)
        .map(|(&x, &e)| if e { f32::NEG_INFINITY } else { x as f32 })
        .collect()
}

/// The start distribution of each task scaled to a peak of 1, and the scale per task. The
/// discounted occupancy iterates on `d / max_s D_0(s)`, so that `tol` bounds its residual
/// relative to the start's peak on every backend: a start spread over 10^6 states would
/// otherwise meet an absolute tol after one sweep.
pub fn scaled_start(mdp: &TabularMdp) -> (Vec<f32>, Vec<f64>) {
    let mut start = mdp.initial.clone();
    let mut scales = Vec::with_capacity(mdp.tasks);
    for row in start.chunks_exact_mut(mdp.states) {
        let peak = row.iter().fold(0.0f32, |m, &x| m.max(x));
        let scale = if peak > 0.0 { 1.0 / peak as f64 } else { 1.0 };
        row.iter_mut().for_each(|x| *x = (*x as f64 * scale) as f32);
        scales.push(scale);
    }
    (start, scales)
}

/// Solves a general MDP with the CPU reference (f64, one thread); `outputs` adds every time
/// step and the occupancy.
pub fn solve_mdp_cpu(
    mdp: &TabularMdp,
    options: &SolveOptions,
    outputs: MdpOutputs,
) -> Result<MdpSolution> {
    let start = Instant::now();
    options.validate()?;
    check_mdp_terminals(mdp, options)?;
    let inputs = MdpInputs::new(mdp, options);
    let finite = matches!(options.horizon, Horizon::Finite(_));
    // V_{T-1}, ..., V_0 as the sweeps make them, when later steps need them.
    let keep_steps = finite && (outputs.all_steps || outputs.occupancy);
    let mut history: Vec<Vec<f64>> = Vec::new();
    let CpuIteration {
        v,
        v_prev,
        last,
        sweeps,
        verdict,
    } = iterate_cpu(
        options,
        inputs.v0.clone(),
        &inputs.fixed,
        |v_in, v_out| {
            let stats = reference::mdp_backup(&inputs, v_in, v_out);
            if keep_steps {
                history.push(v_out.to_vec());
            }
            stats
        },
        &mut |_| {},
    );
    let status = final_status(options, &verdict, &last);
    let diverged = status.contains(&Status::Diverged);
    let policy_from = match options.horizon {
        Horizon::Finite(_) => &v_prev,
        Horizon::Infinite { .. } => &v,
    };
    let policy = (!diverged && (options.policy || outputs.occupancy))
        .then(|| reference::mdp_policy(&inputs, policy_from));
    let mut steps = None;
    let mut occupancy = None;
    if keep_steps && !diverged {
        // V_t for t = 0..T.
        history.reverse();
        history.push(inputs.v0.clone());
        let horizon = history.len() - 1;
        let mut step_policy = Vec::new();
        let mut d = vec![mdp.initial.iter().map(|&x| x as f64).collect::<Vec<f64>>()];
        let transpose = outputs.occupancy.then(|| mdp.transpose());
        for t in 0..horizon {
            let pi_t = reference::mdp_policy(&inputs, &history[t + 1]);
            if let Some(transpose) = &transpose {
                let mut next = vec![0.0; d[t].len()];
                reference::mdp_occupancy(&inputs, transpose, &pi_t, &d[t], None, &mut next);
                d.push(next);
            }
            if outputs.all_steps && options.policy {
                step_policy.push(pi_t);
            }
        }
        if outputs.all_steps {
            let values: Vec<Vec<f32>> = history
                .iter()
                .map(|v| reported_values(&inputs, v))
                .collect();
            steps = Some(TimeSteps {
                values: task_major(&values, mdp.tasks),
                policy: options.policy.then(|| task_major(&step_policy, mdp.tasks)),
            });
        }
        if outputs.occupancy {
            let d: Vec<Vec<f32>> = d
                .iter()
                .map(|x| x.iter().map(|&y| y as f32).collect())
                .collect();
            occupancy = Some(Occupancy {
                values: task_major(&d, mdp.tasks),
                steps: horizon + 1,
                iterations: horizon as u32,
                residual: vec![0.0; mdp.tasks],
                status: vec![Status::Horizon; mdp.tasks],
            });
        }
    }
    if outputs.occupancy && !finite && !diverged {
        let transpose = mdp.transpose();
        let pi = policy.as_ref().expect("policy computed for the occupancy");
        let (start, scale) = scaled_start(mdp);
        let run = iterate_cpu(
            options,
            start.iter().map(|&x| x as f64).collect(),
            &vec![false; mdp.tasks * mdp.states],
            |d_in, d_out| {
                reference::mdp_occupancy(&inputs, &transpose, pi, d_in, Some(&start), d_out)
            },
            &mut |_| {},
        );
        let status = final_status(options, &run.verdict, &run.last);
        occupancy = Some(Occupancy {
            values: run
                .v
                .iter()
                .enumerate()
                .map(|(i, &x)| (x / scale[i / mdp.states]) as f32)
                .collect(),
            steps: 1,
            iterations: run.sweeps,
            residual: run.last.iter().map(|s| s.max_abs_delta).collect(),
            status,
        });
    }
    Ok(MdpSolution {
        solution: Solution {
            height: 1,
            width: mdp.states,
            action_count: mdp.actions,
            values: reported_values(&inputs, &v),
            policy: if options.policy { policy } else { None },
            iterations: vec![sweeps; mdp.tasks],
            residual: last.iter().map(|s| s.max_abs_delta).collect(),
            status,
            unreachable: inputs.unreachable.clone(),
            seconds: start.elapsed().as_secs_f64(),
        },
        steps,
        occupancy,
    })
}
