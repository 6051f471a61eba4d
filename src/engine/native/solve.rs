//! The native driver: [`NativeGrid`] sweeps on the check schedule of the GPU path (as
//! [`crate::engine::cpu::iterate_cpu`] drives the reference), then the policy and Q from the
//! final values.

use std::time::Instant;

use super::grid_backup::{NativeGrid, NativeState};
use crate::engine::cpu::residual_reduce::convergence_decide;
use crate::engine::cpu::{SweepStats, action_values, write_policy};
use crate::engine::layout::GridInputs;
use crate::engine::options::{Horizon, Outputs, SolveOptions};
use crate::engine::schedule::{
    ConvergenceMonitor, OnProgress, Progress, RateExtrapolator, Verdict, check_windows,
    final_status, sweep_budget, with_unbounded,
};
use crate::engine::solution::{Marks, Solution, Status};
use crate::error::{Error, Result};
use crate::world::grid_problem::GridProblem;

/// Threads a native solve uses by default: every core the OS gives this process.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Solves a plain grid batch (values, and the policy and Q as `outputs` asks) with the native
/// f32 engine on `threads` threads from the initial values `v0` `[task][row][col]` (zeros for
/// a cold start). `problem`, `options` and `outputs` must be checked by the caller
/// ([`crate::engine::solver::NativeSolver`] does).
pub fn solve_native(
    problem: &GridProblem,
    options: &SolveOptions,
    outputs: Outputs,
    v0: Option<&[f64]>,
    threads: usize,
    progress: &mut OnProgress<'_>,
) -> Result<Solution> {
    let start = Instant::now();
    outputs.ensure_plain()?;
    let inputs = GridInputs::new(problem, options);
    let grid = NativeGrid::new(&inputs);
    let zeros;
    let v0 = match v0 {
        Some(v0) => v0,
        None => {
            zeros = vec![0.0; inputs.tasks * inputs.cells()];
            &zeros
        }
    };
    crate::error::ensure!(
        v0.len() == inputs.tasks * inputs.cells(),
        "initial values hold {} entries, the batch needs tasks x cells = {}",
        v0.len(),
        inputs.tasks * inputs.cells()
    );
    let run = iterate_native(&grid, options, v0, threads, progress)?;
    let verdict = with_unbounded(run.verdict, &inputs.unbounded_tasks());
    let status = final_status(options, &verdict, &run.last);
    let residual = run.last.iter().map(|s| s.max_abs_delta).collect();
    // As in the reference: V_1 for a finite horizon, the last V otherwise.
    let policy_from = match options.horizon {
        Horizon::Finite(_) => grid.unpadded(&run.v_prev),
        Horizon::Infinite { .. } => grid.unpadded(&run.v),
    };
    let marks = Marks {
        states: inputs.cells(),
        free: Some(&inputs.free),
        excluded: &inputs.excluded,
        fixed: &inputs.fixed,
    };
    let diverged = status.contains(&Status::Diverged);
    let rows = |asked: bool, write_q: bool| {
        (asked && !diverged).then(|| {
            let mut rows = grid_policy_threads(&inputs, &policy_from, write_q, threads);
            marks.policy(&mut rows, 1, inputs.action_count);
            rows
        })
    };
    Ok(Solution {
        height: inputs.height,
        width: inputs.width,
        action_count: inputs.action_count,
        values: marks.reported(&grid.unpadded(&run.v), 1),
        policy: rows(outputs.policy, false),
        q: rows(outputs.q, true),
        iterations: vec![run.sweeps; inputs.tasks],
        residual,
        status,
        unreachable: inputs.unreachable.clone(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Where a native iteration stopped (padded layout).
struct NativeIteration {
    v: Vec<f32>,
    v_prev: Vec<f32>,
    last: Vec<SweepStats>,
    sweeps: u32,
    verdict: Verdict,
}

/// [`crate::engine::cpu::iterate_cpu`] on the native state: the same windows, checks,
/// convergence, divergence and extrapolation decisions.
fn iterate_native(
    grid: &NativeGrid,
    options: &SolveOptions,
    v0: &[f64],
    threads: usize,
    progress: &mut OnProgress<'_>,
) -> Result<NativeIteration> {
    let mut state = grid.state(v0);
    let mut next: NativeState = state.clone();
    let mut backup = if options.uses_extrapolation() {
        state.v.clone()
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
            last = grid.sweep(&state, &mut next, threads);
            std::mem::swap(&mut state, &mut next);
            sweeps += 1;
        }
        let tasks = last.len();
        verdict = monitor
            .get_or_insert_with(|| ConvergenceMonitor::new(options, tasks))
            .observe(&last);
        if progress(&Progress::after(options, sweeps, &last)).is_break() {
            return Err(Error::Cancelled { sweeps });
        }
        if verdict != Verdict::Continue {
            break;
        }
        let tol = match options.horizon {
            Horizon::Infinite { tol, .. } => Some(tol),
            Horizon::Finite(_) => None,
        };
        let extrapolator = options
            .uses_extrapolation()
            .then(|| extrapolator.get_or_insert_with(|| RateExtrapolator::new(tasks)));
        let (_, factors) = convergence_decide(tol, options.gamma, extrapolator, &last);
        if factors.iter().any(|&f| f != 0.0) {
            grid.extrapolate(&mut state.v, &next.v, &mut backup, &factors);
            grid.refresh_shared(&mut state);
        }
    }
    Ok(NativeIteration {
        v: state.v,
        v_prev: next.v,
        last,
        sweeps,
        verdict,
    })
}

/// [`crate::engine::cpu::grid_policy`] (f64, from the f32 values) with the cells split over
/// `threads` threads: `[task][row][col][action]`.
fn grid_policy_threads(inputs: &GridInputs, v: &[f64], write_q: bool, threads: usize) -> Vec<f32> {
    let n = inputs.action_count;
    let cells = inputs.cells();
    let mut policy = vec![0.0f32; inputs.tasks * cells * n];
    let per = (inputs.tasks * cells).div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        for (chunk, out) in policy.chunks_mut(per * n).enumerate() {
            scope.spawn(move || {
                let mut q = vec![0.0; n];
                for (k, row) in out.chunks_exact_mut(n).enumerate() {
                    let index = chunk * per + k;
                    if inputs.fixed[index] {
                        continue;
                    }
                    action_values(inputs, index / cells, index % cells, v, &mut q);
                    write_policy(inputs.alpha, &q, write_q, row);
                }
            });
        }
    });
    policy
}
