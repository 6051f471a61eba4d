//! The CPU-reference solve drivers (f64, one thread): the grid and general-MDP solves over the
//! twins in this folder, on the GPU path's check schedule.

use std::cell::OnceCell;

use crate::engine::Instant;

use crate::error::{Error, Result};

use super::policy_evaluation::mpi_step;
use super::residual_reduce::{SweepStats, convergence_decide};
use super::{
    action_values, extrapolate, grid_backup, grid_policy, hold_frozen, mdp_action_values,
    mdp_backup, mdp_occupancy, mdp_occupancy_weights, mdp_policy,
};
use crate::engine::layout::{GridInputs, MdpInputs};
use crate::engine::options::{Horizon, Method, Outputs, SolveOptions};
use crate::engine::schedule::{
    ConvergenceMonitor, OnProgress, Precision, Progress, RateExtrapolator, TaskOutcomes, Verdict,
    check_windows, error_bound, final_status, keep_going, span_bounded_tasks, span_bounds,
    sweep_budget, with_unbounded, within_tolerance,
};
use crate::engine::solution::{
    Marks, MdpSolution, Occupancy, Real, Solution, Status, TimeSteps, check_mdp_solve,
    scaled_start, task_major,
};
use crate::engine::warm_start::grid_start_values_for;
use crate::world::grid_problem::GridProblem;
use crate::world::mdp::TabularMdp;

/// Where a CPU iteration stopped.
pub struct CpuIteration {
    /// The last values, `[task][state]` (a frozen task's since it stopped).
    pub v: Vec<f64>,
    /// The values the last sweep read (V_1 for a finite horizon).
    pub v_prev: Vec<f64>,
    /// Sweeps applied (the most of any task).
    pub sweeps: u32,
    /// How each task ended.
    pub outcomes: TaskOutcomes,
}

/// Where an iteration on the check schedule stopped, over any state type.
pub struct Checked<S> {
    /// The last state.
    pub state: S,
    /// The state the last sweep read (V_1 for a finite horizon).
    pub previous: S,
    /// Sweeps applied (the most of any task).
    pub sweeps: u32,
    /// How each task ended.
    pub outcomes: TaskOutcomes,
}

/// The check schedule every host-side engine runs (the CPU reference, the native engine), as
/// the GPU path does: `sweep(state, next, frozen)` in windows of
/// [`crate::engine::schedule::CHECK_INTERVAL`] (a task flagged in `frozen` `[task]` must be
/// copied unchanged, with default statistics), then the per-task convergence decisions
/// ([`convergence_decide`]: a task within tolerance freezes), divergence
/// ([`ConvergenceMonitor`]; `precision` is the arithmetic `sweep` runs in, which sets the
/// residual floor), `progress`, and the rate extrapolation of the tasks still
/// iterating, which `jump(state, previous, backup, factors)` applies (a factor > 0 copies
/// the task's state to `backup` and jumps, [`ROLLBACK`] restores it from there, 0 leaves a
/// task alone; it is called only when some factor is not 0; `backup` starts as `start`).
/// The iteration stops when every one of the `tasks` tasks has frozen or the budget is spent.
/// The tasks flagged in `span_bounded` (`[task]`, [`span_bounded_tasks`]; empty: none) stop
/// by the span bound. With `every_sweep` (an engine whose sweeps return their statistics
/// anyway, so that a test costs nothing) a task is also tested after each sweep between
/// checks and stops at the first within tolerance, as its own statistics say (so its result
/// still does not depend on its batch).
///
/// [`ROLLBACK`]: crate::engine::schedule::ROLLBACK
/// [`span_bounded_tasks`]: crate::engine::schedule::span_bounded_tasks
#[allow(clippy::too_many_arguments)]
pub fn iterate_checked<S: Clone>(
    options: &SolveOptions,
    precision: Precision,
    tasks: usize,
    span_bounded: &[bool],
    every_sweep: bool,
    start: S,
    mut sweep: impl FnMut(&S, &mut S, &[bool]) -> Vec<SweepStats>,
    mut jump: impl FnMut(&mut S, &S, &mut S, &[f64]),
    progress: &mut OnProgress<'_>,
) -> Result<Checked<S>> {
    let mut state = start;
    let mut next = state.clone();
    let mut backup = options.uses_extrapolation().then(|| state.clone());
    let mut monitor = ConvergenceMonitor::new(options, tasks);
    let mut extrapolator: Option<RateExtrapolator> = None;
    let mut frozen = vec![false; tasks];
    let mut sweeps = 0u32;
    let mut last = vec![SweepStats::default(); tasks];
    let tol = match options.horizon {
        Horizon::Infinite { tol, .. } => Some(tol),
        Horizon::Finite(_) => None,
    };
    let none = vec![false; tasks];
    let span_bounded = if span_bounded.is_empty() {
        &none
    } else {
        span_bounded
    };
    for window in check_windows(sweep_budget(&options.horizon)) {
        for i in 0..window {
            last = sweep(&state, &mut next, &frozen);
            std::mem::swap(&mut state, &mut next);
            sweeps += 1;
            // Between checks (the window's last sweep gets the check itself).
            if let (true, Some(tol)) = (every_sweep && i + 1 < window, tol) {
                let newly: Vec<bool> = (0..tasks)
                    .map(|t| {
                        !frozen[t]
                            && within_tolerance(
                                tol,
                                options.gamma,
                                precision,
                                &last[t],
                                span_bounded[t],
                            )
                    })
                    .collect();
                if newly.contains(&true) {
                    monitor.converged_between_checks(sweeps, &last, &newly);
                    frozen = monitor.frozen();
                    if !frozen.contains(&false) {
                        break;
                    }
                }
            }
        }
        let extrapolator = options
            .uses_extrapolation()
            .then(|| extrapolator.get_or_insert_with(|| RateExtrapolator::new(tasks)));
        let (newly, mut factors) = convergence_decide(
            tol,
            options.gamma,
            precision,
            extrapolator,
            &last,
            &frozen,
            span_bounded,
        );
        let verdict = monitor.observe(sweeps, &last, &newly);
        frozen = monitor.frozen();
        if progress(&Progress::after(options, sweeps, &last)).is_break() {
            return Err(Error::Cancelled { sweeps });
        }
        if verdict != Verdict::Continue {
            break;
        }
        // A task that diverged at this check stops as it is.
        for (f, &stop) in factors.iter_mut().zip(&frozen) {
            if stop {
                *f = 0.0;
            }
        }
        if let Some(backup) = backup
            .as_mut()
            .filter(|_| factors.iter().any(|&f| f != 0.0))
        {
            jump(&mut state, &next, backup, &factors);
        }
    }
    Ok(Checked {
        state,
        previous: next,
        sweeps,
        outcomes: monitor.outcomes(sweeps, &last),
    })
}

/// The iteration both CPU references share: `sweep(v_in, v_out)` (f64) on the check schedule
/// ([`iterate_checked`]) of `[task][state]` values from `v0` over `tasks` tasks, frozen tasks
/// held by [`hold_frozen`]; `fixed` `[task][state]` marks the states extrapolation leaves
/// alone; the tasks flagged in `span_bounded` stop by the span bound (empty: none).
pub fn iterate_cpu(
    options: &SolveOptions,
    tasks: usize,
    v0: Vec<f64>,
    fixed: &[bool],
    span_bounded: &[bool],
    mut sweep: impl FnMut(&[f64], &mut [f64]) -> Vec<SweepStats>,
    progress: &mut OnProgress<'_>,
) -> Result<CpuIteration> {
    let run = iterate_checked(
        options,
        Precision::F64,
        tasks,
        span_bounded,
        false,
        v0,
        |v: &Vec<f64>, v_next: &mut Vec<f64>, frozen: &[bool]| {
            let mut stats = sweep(v, v_next);
            hold_frozen(frozen, v, v_next, &mut stats);
            stats
        },
        |v, v_prev, backup, factors| extrapolate(fixed, v, v_prev, backup, factors),
        progress,
    )?;
    Ok(CpuIteration {
        v: run.state,
        v_prev: run.previous,
        sweeps: run.sweeps,
        outcomes: run.outcomes,
    })
}

/// [`iterate_cpu`] by modified policy iteration ([`Method::Mpi`]): each sweep of the check
/// schedule is one [`mpi_step`] (the evaluation sweeps, then the improvement whose statistics
/// the schedule tests), over `actions` actions whose Q `q_of(task, state, v, q)` writes, and
/// every improvement is tested (a task stops at the first within tolerance, as its own
/// statistics say). No extrapolation.
#[allow(clippy::too_many_arguments)]
pub fn iterate_mpi_cpu(
    options: &SolveOptions,
    (tasks, actions): (usize, usize),
    v0: Vec<f64>,
    fixed: &[bool],
    span_bounded: &[bool],
    q_of: impl Fn(usize, usize, &[f64], &mut [f64]),
    progress: &mut OnProgress<'_>,
) -> Result<CpuIteration> {
    let evaluations = options.method.evaluations();
    let mut policy = None;
    let run = iterate_checked(
        options,
        Precision::F64,
        tasks,
        span_bounded,
        true,
        v0,
        |v: &Vec<f64>, v_next: &mut Vec<f64>, frozen: &[bool]| {
            let shape = (tasks, actions, evaluations);
            let mut stats = mpi_step(
                options.alpha,
                shape,
                fixed,
                frozen,
                &q_of,
                &mut policy,
                v,
                v_next,
            );
            hold_frozen(frozen, v, v_next, &mut stats);
            stats
        },
        |_, _, _, _| unreachable!("modified policy iteration does not extrapolate"),
        progress,
    )?;
    Ok(CpuIteration {
        v: run.state,
        v_prev: run.previous,
        sweeps: run.sweeps,
        outcomes: run.outcomes,
    })
}

/// Solves `problem` with the CPU reference (f64 throughout, one thread): the values and, as
/// `outputs` asks, the policy and Q (every step and the occupancy of a grid come from
/// [`crate::engine::solver::GridSolver::solve_grid`]).
pub fn solve_cpu(
    problem: &GridProblem,
    options: &SolveOptions,
    outputs: Outputs,
) -> Result<Solution> {
    solve_cpu_with_progress(problem, options, outputs, &mut keep_going)
}

/// [`solve_cpu`], calling `progress` after every convergence check.
pub fn solve_cpu_with_progress(
    problem: &GridProblem,
    options: &SolveOptions,
    outputs: Outputs,
    progress: &mut OnProgress<'_>,
) -> Result<Solution> {
    let start = Instant::now();
    problem.validate()?;
    options.validate()?;
    outputs.ensure_plain()?;
    crate::engine::memory::check_grid(problem, options, outputs)?;
    let inputs = GridInputs::new(problem, options);
    let start_values = grid_start_values_for(&inputs, options)
        .unwrap_or_else(|| vec![0.0f64; inputs.tasks * inputs.cells()]);
    let run = match options.method {
        Method::Vi => iterate_cpu(
            options,
            inputs.tasks,
            start_values,
            &inputs.fixed,
            &[],
            |v_in, v_out| grid_backup(&inputs, v_in, v_out),
            progress,
        )?,
        Method::Mpi { .. } => iterate_mpi_cpu(
            options,
            (inputs.tasks, inputs.action_count),
            start_values,
            &inputs.fixed,
            &[],
            |task, cell, v, q| action_values(&inputs, task, cell, v, q),
            progress,
        )?,
    };
    let CpuIteration {
        v,
        v_prev: v_next,
        outcomes,
        ..
    } = run;
    // After the swap, v_next holds the values the last sweep read (V_1 for a finite horizon).
    let policy_from = match options.horizon {
        Horizon::Finite(_) => &v_next,
        Horizon::Infinite { .. } => &v,
    };
    let rows = |write_q| grid_policy(&inputs, policy_from, write_q);
    Ok(grid_solution(
        &inputs,
        (options, Precision::F64),
        outputs,
        outcomes,
        &v,
        rows,
        start,
    ))
}

/// A plain grid solve's result from its iteration's `outcomes` and final values `v`
/// `[task][row][col]` (f64, iterated in `precision`): the statuses, residuals, error bounds
/// and values, marked, and the policy and Q
/// as `outputs` asks, made by `rows(write_q)` `[task][row][col][action]` (none when a task
/// diverged). The CPU reference and the native engine report through it.
pub(crate) fn grid_solution(
    inputs: &GridInputs,
    (options, precision): (&SolveOptions, Precision),
    outputs: Outputs,
    outcomes: TaskOutcomes,
    v: &[f64],
    rows: impl Fn(bool) -> Vec<f32>,
    start: Instant,
) -> Solution {
    let verdict = with_unbounded(outcomes.verdict, &inputs.unbounded_tasks());
    let status = final_status(options, &verdict, &outcomes.converged);
    let marks = inputs.marks();
    let diverged = status.contains(&Status::Diverged);
    let marked_rows = |asked: bool, write_q: bool| {
        (asked && !diverged).then(|| {
            let mut rows = rows(write_q);
            marks.policy(&mut rows, 1, inputs.action_count);
            rows
        })
    };
    Solution {
        height: inputs.height,
        width: inputs.width,
        action_count: inputs.action_count,
        values: marks.reported(v, 1),
        policy: marked_rows(outputs.policy, false),
        q: marked_rows(outputs.q, true),
        iterations: outcomes.iterations,
        residual: outcomes.last.iter().map(|s| s.max_abs_delta).collect(),
        error_bound: outcomes
            .last
            .iter()
            .map(|s| error_bound(options, precision, s, false))
            .collect(),
        status,
        unreachable: inputs.unreachable.clone(),
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// Solves a general MDP with the CPU reference (f64, one thread); `outputs` adds every time
/// step and the occupancy.
pub fn solve_mdp_cpu(
    mdp: &TabularMdp,
    options: &SolveOptions,
    outputs: Outputs,
) -> Result<MdpSolution> {
    solve_mdp_cpu_with_progress(mdp, options, outputs, &mut keep_going)
}

/// [`solve_mdp_cpu`], calling `progress` after every convergence check of the backward pass.
pub fn solve_mdp_cpu_with_progress(
    mdp: &TabularMdp,
    options: &SolveOptions,
    outputs: Outputs,
    progress: &mut OnProgress<'_>,
) -> Result<MdpSolution> {
    solve_mdp_cpu_as(mdp, options, outputs, progress)
}

/// [`solve_mdp_cpu_with_progress`] with every array in f64 as the reference computes it (no
/// rounding to f32 anywhere after the model's f32 inputs): for callers who compare with f64
/// code, e.g. the Python package's `device="cpu"`.
pub fn solve_mdp_cpu_f64(
    mdp: &TabularMdp,
    options: &SolveOptions,
    outputs: Outputs,
    progress: &mut OnProgress<'_>,
) -> Result<MdpSolution<f64>> {
    solve_mdp_cpu_as(mdp, options, outputs, progress)
}

/// The CPU reference's general-MDP solve, reporting its arrays in `T`.
fn solve_mdp_cpu_as<T: Real>(
    mdp: &TabularMdp,
    options: &SolveOptions,
    outputs: Outputs,
    progress: &mut OnProgress<'_>,
) -> Result<MdpSolution<T>> {
    let start = Instant::now();
    check_mdp_solve(mdp, options)?;
    crate::engine::memory::check_mdp(mdp, options, outputs)?;
    let inputs = MdpInputs::new(mdp, options);
    let finite = matches!(options.horizon, Horizon::Finite(_));
    // V_{T-1}, ..., V_0 as the sweeps make them, when later steps need them.
    let keep_steps = finite && (outputs.all_steps || outputs.occupancy);
    let mut history: Vec<Vec<f64>> = Vec::new();
    let span_bounded = span_bounded_tasks(&inputs.fixed, mdp.tasks);
    let run = match options.method {
        Method::Vi => iterate_cpu(
            options,
            mdp.tasks,
            inputs.v0.clone(),
            &inputs.fixed,
            &span_bounded,
            |v_in, v_out| {
                let stats = mdp_backup(&inputs, v_in, v_out);
                if keep_steps {
                    history.push(v_out.to_vec());
                }
                stats
            },
            progress,
        )?,
        // An infinite horizon (validated): no steps to keep.
        Method::Mpi { .. } => iterate_mpi_cpu(
            options,
            (mdp.tasks, mdp.actions),
            inputs.v0.clone(),
            &inputs.fixed,
            &span_bounded,
            |task, s, v, q| mdp_action_values(&inputs, task, s, v, q),
            progress,
        )?,
    };
    let CpuIteration {
        v,
        v_prev,
        outcomes,
        ..
    } = run;
    let rows = |_: Option<usize>, v: &[f64], write_q: bool| mdp_policy::<T>(&inputs, v, write_q);
    let discounted = |pi: &[T], progress: &mut OnProgress<'_>| {
        discounted_occupancy(&inputs, options, pi, progress)
    };
    let transpose = OnceCell::new();
    let step = |pi: &[T], d: &[f64], next: &mut [f64]| {
        let transpose = transpose.get_or_init(|| mdp.transpose());
        mdp_occupancy(&inputs, transpose, pi, None, d, None, next);
    };
    mdp_solution(
        &inputs,
        options,
        Precision::F64,
        outputs,
        outcomes,
        (&v, &v_prev),
        history,
        (&rows, &step),
        &discounted,
        progress,
        start,
    )
}

/// How a solve computes the policy (or Q, with `write_q`) rows `[task][state][action]` from
/// values `[task][state]`: `rows(step, v, write_q)`, `step` `Some(t)` where `v` is a finite
/// horizon's `V_{t+1}` (the rows are `pi_t`, `Q_t`: a solver that kept the sweep's Q may
/// read them), `None` for the stationary policy.
pub(crate) type PolicyRows<'a, T> = dyn Fn(Option<usize>, &[f64], bool) -> Vec<T> + 'a;

/// How a finite-horizon solve moves `D_t` to `D_{t+1}` (`next`, `[task][state]`) under `pi_t`
/// `[task][state][action]`, as [`mdp_occupancy`] does with no base: `step(pi_t, d_t, next)`.
pub(crate) type OccupancyStep<'a, T> = dyn Fn(&[T], &[f64], &mut [f64]) + 'a;

/// How a solve computes the discounted occupancy from its stationary policy
/// `[task][state][action]`.
pub(crate) type Discounted<'a, T> = dyn Fn(&[T], &mut OnProgress<'_>) -> Result<Occupancy<T>> + 'a;

/// A general-MDP solve's result from its backward iteration: `outcomes`, the last values `v`
/// and those the last sweep read `v_prev` (`[task][state]`, f64), and with every step or a
/// finite horizon's occupancy the values each sweep made (`history`, V_{T-1} first). The
/// policy and Q rows `[task][state][action]` come from `rows(v, write_q)`, a finite horizon's
/// occupancy steps from `step` ([`OccupancyStep`]), the discounted occupancy from
/// `discounted(pi)`; the error bounds as `precision` iterated. A task the span
/// bounds ([`span_bounds`]) reports V shifted to the centre of MacQueen's interval, and the
/// policy and Q from those values. The CPU reference and the native engine report through it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mdp_solution<T: Real>(
    inputs: &MdpInputs,
    options: &SolveOptions,
    precision: Precision,
    outputs: Outputs,
    outcomes: TaskOutcomes,
    (v, v_prev): (&[f64], &[f64]),
    mut history: Vec<Vec<f64>>,
    (rows, step): (&PolicyRows<'_, T>, &OccupancyStep<'_, T>),
    discounted: &Discounted<'_, T>,
    progress: &mut OnProgress<'_>,
    start: Instant,
) -> Result<MdpSolution<T>> {
    let mdp = inputs.mdp;
    let marks = inputs.marks();
    let finite = matches!(options.horizon, Horizon::Finite(_));
    let keep_steps = finite && (outputs.all_steps || outputs.occupancy);
    let verdict = with_unbounded(outcomes.verdict, &inputs.unbounded_tasks());
    let status = final_status(options, &verdict, &outcomes.converged);
    let diverged = status.contains(&Status::Diverged);
    let span_bounded = span_bounded_tasks(&inputs.fixed, mdp.tasks);
    let mut centred = v.to_vec();
    for (t, stats) in outcomes.last.iter().enumerate() {
        if let Some((shift, _)) = span_bounds(options, stats).filter(|_| span_bounded[t]) {
            for x in &mut centred[t * mdp.states..(t + 1) * mdp.states] {
                *x += shift;
            }
        }
    }
    let v = &centred[..];
    let (step_of, policy_from) = match options.horizon {
        Horizon::Finite(_) => (Some(0), v_prev),
        Horizon::Infinite { .. } => (None, v),
    };
    let policy = (!diverged && (outputs.policy || outputs.occupancy))
        .then(|| rows(step_of, policy_from, false));
    let q = (!diverged && outputs.q).then(|| {
        let mut q = rows(step_of, policy_from, true);
        marks.policy(&mut q, 1, mdp.actions);
        q
    });
    let (mut steps, mut occupancy) = (None, None);
    if keep_steps && !diverged {
        // V_t for t = 0..T.
        history.reverse();
        history.push(inputs.v0.clone());
        (steps, occupancy) = forward_steps(inputs, &marks, outputs, &history, rows, step);
    }
    if outputs.occupancy && !finite && !diverged {
        let pi = policy.as_ref().expect("policy computed for the occupancy");
        occupancy = Some(discounted(pi, progress)?);
    }
    Ok(MdpSolution {
        solution: Solution {
            height: 1,
            width: mdp.states,
            action_count: mdp.actions,
            values: marks.reported(v, 1),
            policy: policy.filter(|_| outputs.policy).map(|mut p| {
                marks.policy(&mut p, 1, mdp.actions);
                p
            }),
            q,
            iterations: outcomes.iterations,
            residual: outcomes.last.iter().map(|s| s.max_abs_delta).collect(),
            error_bound: (outcomes.last.iter().zip(&span_bounded))
                .map(|(s, &span)| error_bound(options, precision, s, span))
                .collect(),
            status,
            unreachable: inputs.unreachable.clone(),
            seconds: start.elapsed().as_secs_f64(),
        },
        steps,
        occupancy,
    })
}

/// Every step of a finite-horizon solve from `history` (`V_0..V_T`): `pi_t` (and `Q_t`) from
/// `V_{t+1}`, and with the occupancy `D_{t+1}` pulled from `D_t`. Returns the steps (with
/// [`Outputs::all_steps`]) and the occupancy (with [`Outputs::occupancy`]), reported as
/// [`Marks`] says.
fn forward_steps<T: Real>(
    inputs: &MdpInputs,
    marks: &Marks,
    outputs: Outputs,
    history: &[Vec<f64>],
    rows: &PolicyRows<'_, T>,
    step: &OccupancyStep<'_, T>,
) -> (Option<TimeSteps<T>>, Option<Occupancy<T>>) {
    let mdp = inputs.mdp;
    let horizon = history.len() - 1;
    let (mut step_policy, mut step_q) = (Vec::new(), Vec::new());
    let mut d = vec![mdp.initial.clone()];
    for t in 0..horizon {
        let pi_t = rows(Some(t), &history[t + 1], false);
        if outputs.occupancy {
            let mut next = vec![0.0; d[t].len()];
            step(&pi_t, &d[t], &mut next);
            d.push(next);
        }
        if outputs.all_steps && outputs.q {
            step_q.push(rows(Some(t), &history[t + 1], true));
        }
        if outputs.all_steps && outputs.policy {
            step_policy.push(pi_t);
        }
    }
    let kept = |asked: bool, rows: &[Vec<T>]| {
        asked.then(|| {
            let mut all = task_major(rows, mdp.tasks);
            marks.policy(&mut all, horizon, mdp.actions);
            all
        })
    };
    let steps = outputs.all_steps.then(|| {
        let values: Vec<Vec<T>> = history.iter().map(|v| marks.reported(v, 1)).collect();
        TimeSteps {
            values: task_major(&values, mdp.tasks),
            policy: kept(outputs.policy, &step_policy),
            q: kept(outputs.q, &step_q),
        }
    });
    let occupancy = outputs.occupancy.then(|| {
        let d: Vec<Vec<T>> = d
            .iter()
            .map(|x| x.iter().map(|&y| T::from_f64(y)).collect())
            .collect();
        Occupancy {
            values: task_major(&d, mdp.tasks),
            steps: horizon + 1,
            iterations: horizon as u32,
            residual: vec![0.0; mdp.tasks],
            status: vec![Status::Horizon; mdp.tasks],
        }
    });
    (steps, occupancy)
}

/// The discounted occupancy `sum_t gamma^t D_t` under the stationary policy `pi`, iterated on
/// the check schedule of the backward pass from the start scaled to a peak of 1
/// ([`scaled_start`]).
fn discounted_occupancy<T: Real>(
    inputs: &MdpInputs,
    options: &SolveOptions,
    pi: &[T],
    progress: &mut OnProgress<'_>,
) -> Result<Occupancy<T>> {
    let mdp = inputs.mdp;
    let transpose = mdp.transpose();
    // The scale of the GPU's start, applied in f64 (the GPU rounds the scaled start to f32).
    let (_, scale) = scaled_start(mdp);
    let start: Vec<f64> = mdp
        .initial
        .iter()
        .enumerate()
        .map(|(i, &x)| x * scale[i / mdp.states])
        .collect();
    let weights = mdp_occupancy_weights(inputs, &transpose, pi);
    let run = iterate_cpu(
        options,
        mdp.tasks,
        start.clone(),
        &vec![false; mdp.tasks * mdp.states],
        &[],
        |d_in, d_out| {
            let weights = Some(&weights[..]);
            mdp_occupancy(inputs, &transpose, pi, weights, d_in, Some(&start), d_out)
        },
        progress,
    )?;
    Ok(Occupancy {
        values: run
            .v
            .iter()
            .enumerate()
            .map(|(i, &x)| T::from_f64(x / scale[i / mdp.states]))
            .collect(),
        steps: 1,
        iterations: run.sweeps,
        residual: run.outcomes.last.iter().map(|s| s.max_abs_delta).collect(),
        status: final_status(options, &run.outcomes.verdict, &run.outcomes.converged),
    })
}
