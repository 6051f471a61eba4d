//! The native driver: [`NativeGrid`] sweeps on the check schedule of the GPU path (the same
//! [`iterate_checked`] that drives the reference), then the policy and Q from the final
//! values.

use std::cell::OnceCell;
use std::time::Instant;

use super::grid_backup::{NativeGrid, NativeState};
use super::mdp_backup::{NativeMdp, NativeOccupancy, mdp_occupancy_threads, mdp_policy_threads};
use super::rows_on_threads;
use crate::engine::cpu::residual_reduce::SweepStats;
use crate::engine::cpu::solve::{grid_solution, iterate_checked, mdp_solution};
use crate::engine::cpu::{action_values, write_policy};
use crate::engine::layout::{GridInputs, MdpInputs};
use crate::engine::options::{Horizon, Method, Outputs, SolveOptions};
use crate::engine::schedule::{
    OnProgress, Precision, TaskOutcomes, final_status, span_bounded_tasks,
};
use crate::engine::solution::{MdpSolution, Occupancy, Solution, scaled_start};
use crate::engine::warm_start::grid_start_values_for;
use crate::error::Result;
use crate::world::grid_problem::GridProblem;
use crate::world::mdp::TabularMdp;

/// Threads a native solve uses by default: every core the OS gives this process.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Solves a plain grid batch (values, and the policy and Q as `outputs` asks) with the native
/// f32 engine on `threads` threads from the initial values `v0` `[task][row][col]` (`None`:
/// the start every backend takes, [`grid_start_values_for`]: zeros, or the gamma = 1 warm
/// start where it applies). `problem`, `options` and `outputs` must be checked by the caller
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
    let usual_start;
    let v0 = match v0 {
        Some(v0) => v0,
        None => {
            usual_start = grid_start_values_for(&inputs, options)
                .unwrap_or_else(|| vec![0.0; inputs.tasks * inputs.cells()]);
            &usual_start
        }
    };
    crate::error::ensure!(
        v0.len() == inputs.tasks * inputs.cells(),
        "initial values hold {} entries, the batch needs tasks x cells = {}",
        v0.len(),
        inputs.tasks * inputs.cells()
    );
    let run = iterate_native(&grid, options, v0, threads, progress)?;
    let v = grid.unpadded(&run.v);
    // As in the reference: V_1 for a finite horizon, the last V otherwise.
    let v_prev;
    let policy_from = match options.horizon {
        Horizon::Finite(_) => {
            v_prev = grid.unpadded(&run.v_prev);
            &v_prev
        }
        Horizon::Infinite { .. } => &v,
    };
    let rows = |write_q| grid_policy_threads(&inputs, policy_from, write_q, threads);
    Ok(grid_solution(
        &inputs,
        (options, Precision::F32),
        outputs,
        run.outcomes,
        &v,
        rows,
        start,
    ))
}

/// Where a native iteration stopped (padded layout).
struct NativeIteration {
    v: Vec<f32>,
    v_prev: Vec<f32>,
    outcomes: TaskOutcomes,
}

/// [`crate::engine::cpu::iterate_cpu`] on the native state: the same windows, checks,
/// convergence, divergence and extrapolation decisions; by modified policy iteration as
/// [`crate::engine::cpu::solve::iterate_mpi_cpu`] where `options` asks for it.
fn iterate_native(
    grid: &NativeGrid,
    options: &SolveOptions,
    v0: &[f64],
    threads: usize,
    progress: &mut OnProgress<'_>,
) -> Result<NativeIteration> {
    if let Method::Mpi { evaluations } = options.method {
        return iterate_native_mpi(grid, options, v0, (evaluations, threads), progress);
    }
    let run = iterate_checked(
        options,
        Precision::F32,
        grid.tasks,
        &[],
        false,
        grid.state(v0),
        |state: &NativeState, next: &mut NativeState, frozen: &[bool]| {
            grid.sweep(state, next, frozen, threads)
        },
        |state, previous, backup, factors| {
            grid.extrapolate(&mut state.v, &previous.v, &mut backup.v, factors);
            grid.refresh_shared(state);
        },
        progress,
    )?;
    Ok(NativeIteration {
        v: run.state.v,
        v_prev: run.previous.v,
        outcomes: run.outcomes,
    })
}

/// Modified policy iteration on the native grid state: each sweep of the check schedule is
/// `evaluations` evaluation sweeps under the last improvement's policy (none before the
/// first), then an improvement, whose statistics the schedule tests (a task stops at the
/// first within tolerance). Grids keep fixed goal values and are not span-bounded (`&[]`, as
/// in the reference's grid MPI), so no offset is held apart as `Recentred` does for MDPs:
/// value iteration's iterates grow to V*'s size too, and the f32 floor is the same for both.
fn iterate_native_mpi(
    grid: &NativeGrid,
    options: &SolveOptions,
    v0: &[f64],
    (evaluations, threads): (u32, usize),
    progress: &mut OnProgress<'_>,
) -> Result<NativeIteration> {
    let start = grid.state(v0);
    let mut policy = grid.new_policy();
    let mut improved = false;
    let (mut a, mut b) = (start.clone(), start.clone());
    let run = iterate_checked(
        options,
        Precision::F32,
        grid.tasks,
        &[],
        true,
        start,
        |state: &NativeState, next: &mut NativeState, frozen: &[bool]| {
            let from = if improved {
                grid.evaluate(&policy, state, &mut a, frozen, threads);
                for _ in 1..evaluations {
                    grid.evaluate(&policy, &a, &mut b, frozen, threads);
                    std::mem::swap(&mut a, &mut b);
                }
                &a
            } else {
                state
            };
            improved = true;
            grid.improve(from, next, &mut policy, frozen, threads)
        },
        |_, _, _, _| unreachable!("modified policy iteration does not extrapolate"),
        progress,
    )?;
    Ok(NativeIteration {
        v: run.state.v,
        v_prev: run.previous.v,
        outcomes: run.outcomes,
    })
}

/// [`crate::engine::cpu::grid_policy`] (f64, from the f32 values) with the cells split over
/// `threads` threads: `[task][row][col][action]`.
fn grid_policy_threads(inputs: &GridInputs, v: &[f64], write_q: bool, threads: usize) -> Vec<f32> {
    let n = inputs.action_count;
    let cells = inputs.cells();
    let mut policy = vec![0.0f32; inputs.tasks * cells * n];
    let fill = |q: &mut Vec<f64>, index: usize, row: &mut [f32]| {
        if !inputs.fixed[index] {
            action_values(inputs, index / cells, index % cells, v, q);
            write_policy(inputs.alpha, q, write_q, row);
        }
    };
    rows_on_threads(&mut policy, n, threads, || vec![0.0; n], fill);
    policy
}

/// Solves a general MDP (values, policy, Q, every step, the occupancy, as `outputs` asks)
/// with the native f32 CSR engine on `threads` threads: the sweeps in f32 ([`NativeMdp`]), the
/// policy and Q from the f32 values by the reference's twin on every thread, every step's
/// forward pass and the discounted occupancy by the reference. `mdp`, `options` and
/// `outputs` must be checked by the caller ([`crate::engine::solver::NativeSolver`] does).
pub fn solve_native_mdp(
    mdp: &TabularMdp,
    options: &SolveOptions,
    outputs: Outputs,
    threads: usize,
    progress: &mut OnProgress<'_>,
) -> Result<MdpSolution> {
    let start = Instant::now();
    let inputs = MdpInputs::new(mdp, options);
    let native = NativeMdp::new(&inputs);
    let finite = matches!(options.horizon, Horizon::Finite(_));
    // V_{T-1}, ..., V_0 as the sweeps make them, when later steps need them.
    let keep_steps = finite && (outputs.all_steps || outputs.occupancy);
    let mut history: Vec<Vec<f64>> = Vec::new();
    // And Q_{T-1}, ..., Q_0 (f32, padded states), so that every step's policy is read rather
    // than recomputed from V: where every step is reported (no bigger than that output), or
    // where a recomputation reads a dense P of S x S x A entries (Q's T x S x A are fewer).
    let horizon = options.horizon.finite_steps();
    let keep_q = keep_steps && (outputs.all_steps || (native.is_dense() && horizon <= mdp.states));
    let q_len = mdp.tasks * native.padded_states() * mdp.actions;
    let mut q_history: Vec<Vec<f32>> = Vec::new();
    let v0 = native.padded_values(&inputs.v0);
    let span_bounded = span_bounded_tasks(&inputs.fixed, mdp.tasks);
    // Per task, what MPI's values are held relative to (0 for value iteration).
    let mut offsets = vec![0.0f64; mdp.tasks];
    let run = match options.method {
        Method::Vi => iterate_checked(
            options,
            Precision::F32,
            mdp.tasks,
            &span_bounded,
            true,
            v0,
            |v: &Vec<f32>, next: &mut Vec<f32>, frozen: &[bool]| {
                let mut q = keep_q.then(|| vec![0.0f32; q_len]);
                let stats = native.sweep_recording_q(v, next, q.as_deref_mut(), frozen, threads);
                q_history.extend(q);
                if keep_steps {
                    history.push(native.unpadded(next));
                }
                stats
            },
            |v, v_prev, backup, factors| native.extrapolate(v, v_prev, backup, factors),
            progress,
        )?,
        // An infinite horizon (validated): no steps or Q to keep.
        Method::Mpi { evaluations } => {
            let mut policy = native.new_policy();
            let mut improved = false;
            let (mut a, mut b) = (v0.clone(), v0.clone());
            let mut recentred = Recentred::new(&span_bounded, options.gamma);
            let run = iterate_checked(
                options,
                Precision::F32,
                mdp.tasks,
                &span_bounded,
                true,
                v0,
                |v: &Vec<f32>, next: &mut Vec<f32>, frozen: &[bool]| {
                    let from = if improved {
                        native.evaluate(&policy, v, &mut a, frozen, threads);
                        for _ in 1..evaluations {
                            native.evaluate(&policy, &a, &mut b, frozen, threads);
                            std::mem::swap(&mut a, &mut b);
                        }
                        recentred.evaluated(evaluations, frozen);
                        &a
                    } else {
                        v
                    };
                    improved = true;
                    let mut stats = native.improve(from, next, &mut policy, frozen, threads);
                    recentred.improved(&mut stats, next, (native.stride, mdp.states), frozen);
                    stats
                },
                |_, _, _, _| unreachable!("modified policy iteration does not extrapolate"),
                progress,
            )?;
            offsets = recentred.offset;
            run
        }
    };
    let (mut v, mut v_prev) = (native.unpadded(&run.state), native.unpadded(&run.previous));
    for (t, &c) in offsets.iter().enumerate() {
        for x in (v[t * mdp.states..(t + 1) * mdp.states].iter_mut())
            .chain(&mut v_prev[t * mdp.states..(t + 1) * mdp.states])
        {
            *x += c;
        }
    }
    // Sweep k read V_{T-k} and made Q_{T-1-k}.
    let kept_q = |t: usize| (q_history.len() == horizon).then(|| &q_history[horizon - 1 - t][..]);
    let rows = |step: Option<usize>, v: &[f64], write_q: bool| match step.and_then(kept_q) {
        Some(q) => policy_from_q(&inputs, q, native.padded_states(), write_q, threads),
        None => mdp_policy_threads::<f32>(&inputs, v, write_q, threads),
    };
    let transpose = OnceCell::new();
    let step = |pi: &[f32], d: &[f64], next: &mut [f64]| match native.is_dense() {
        true => native.dense_push(pi, d, next, threads),
        false => {
            let transpose = transpose.get_or_init(|| mdp.transpose());
            mdp_occupancy_threads(&inputs, transpose, pi, d, next, threads);
        }
    };
    let discounted = |pi: &[f32], progress: &mut OnProgress<'_>| {
        discounted_occupancy_native(&inputs, options, pi, threads, progress)
    };
    mdp_solution(
        &inputs,
        options,
        Precision::F32,
        outputs,
        run.outcomes,
        (&v, &v_prev),
        history,
        (&rows, &step),
        &discounted,
        progress,
        start,
    )
}

/// Modified policy iteration's values held in f32 relative to a per-task offset in f64, for
/// the tasks without a fixed value (`span_bounded`): V = V_rel + c. Evaluations drive V
/// toward V_pi, whose size (|V| ~ 1 / (1 - gamma)) would put the f32 floor's reach (1e-6
/// |V| / (1 - gamma)) above tol at gamma 0.99 where value iteration, stopped early by the
/// span bound with V still small, never gets there. Every backup here (improvement and
/// evaluation) maps `V_rel + c` to `T V_rel + gamma c`, so the engine sweeps V_rel alone; after
/// each improvement V_rel is re-centred on the midpoint of its range (the shift moves into c).
struct Recentred {
    span_bounded: Vec<bool>,
    gamma: f64,
    /// c per task.
    offset: Vec<f64>,
}

impl Recentred {
    fn new(span_bounded: &[bool], gamma: f64) -> Self {
        Self {
            span_bounded: span_bounded.to_vec(),
            gamma,
            offset: vec![0.0; span_bounded.len()],
        }
    }

    /// The offsets after `sweeps` evaluation sweeps of the tasks not `frozen`.
    fn evaluated(&mut self, sweeps: u32, frozen: &[bool]) {
        for (t, c) in self.offset.iter_mut().enumerate() {
            if self.span_bounded[t] && !frozen[t] {
                *c *= self.gamma.powi(sweeps as i32);
            }
        }
    }

    /// After an improvement `next = T V_rel` (values' layout of `stride` per task, the first
    /// `states` real): the statistics of V itself (`dV = dV_rel - (1 - gamma) c`, its max
    /// |.| at one end of the range), the offset moved on, and V_rel re-centred.
    fn improved(
        &mut self,
        stats: &mut [SweepStats],
        next: &mut [f32],
        (stride, states): (usize, usize),
        frozen: &[bool],
    ) {
        for (t, c) in self.offset.iter_mut().enumerate() {
            if !self.span_bounded[t] || frozen[t] {
                continue;
            }
            let shift = (1.0 - self.gamma) * *c;
            let st = &mut stats[t];
            if st.active && st.max_abs_delta.is_finite() {
                st.min_delta -= shift;
                st.max_delta -= shift;
                st.max_abs_delta = st.min_delta.abs().max(st.max_delta.abs());
            }
            *c *= self.gamma;
            let values = &mut next[t * stride..t * stride + states];
            let finite = values.iter().filter(|x| x.is_finite());
            let (lo, hi) = finite.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
                (lo.min(x), hi.max(x))
            });
            if lo <= hi {
                let middle = 0.5 * (lo as f64 + hi as f64);
                for x in values.iter_mut() {
                    *x = (*x as f64 - middle) as f32;
                }
                *c += middle;
            }
        }
    }
}

/// The policy (or Q, with `write_q`) rows `[task][state][action]` from a sweep's recorded Q
/// `[task][padded state][action]` ([`NativeMdp::sweep_recording_q`]), on `threads` threads,
/// as [`mdp_policy_threads`] computes them from V.
fn policy_from_q(
    inputs: &MdpInputs,
    q: &[f32],
    padded: usize,
    write_q: bool,
    threads: usize,
) -> Vec<f32> {
    let mdp = inputs.mdp;
    let n = mdp.actions;
    let mut policy = vec![0.0f32; mdp.tasks * mdp.states * n];
    let fill = |row_q: &mut Vec<f64>, index: usize, row: &mut [f32]| {
        if !inputs.fixed[index] {
            let (task, s) = (index / mdp.states, index % mdp.states);
            let at = (task * padded + s) * n;
            row_q.clear();
            row_q.extend(q[at..at + n].iter().map(|&x| x as f64));
            write_policy(inputs.alpha, row_q, write_q, row);
        }
    };
    rows_on_threads(&mut policy, n, threads, || Vec::with_capacity(n), fill);
    policy
}

/// The discounted occupancy `sum_t gamma^t D_t` under the stationary policy `pi`, in f32 on
/// `threads` threads ([`NativeOccupancy`]), on the check schedule of the backward pass from
/// the start scaled to a peak of 1, as the reference's
/// (`crate::engine::cpu::solve::discounted_occupancy`).
fn discounted_occupancy_native(
    inputs: &MdpInputs,
    options: &SolveOptions,
    pi: &[f32],
    threads: usize,
    progress: &mut OnProgress<'_>,
) -> Result<Occupancy<f32>> {
    let mdp = inputs.mdp;
    let pull = NativeOccupancy::new(inputs, &mdp.transpose(), pi);
    let (_, scale) = scaled_start(mdp);
    let start: Vec<f64> = (mdp.initial.iter().enumerate())
        .map(|(i, &x)| x * scale[i / mdp.states])
        .collect();
    let base = pull.padded(&start);
    let run = iterate_checked(
        options,
        Precision::F32,
        mdp.tasks,
        &[],
        false,
        base.clone(),
        |d: &Vec<f32>, next: &mut Vec<f32>, frozen: &[bool]| {
            pull.sweep(&base, d, next, frozen, threads)
        },
        |d, d_prev, backup, factors| pull.extrapolate(d, d_prev, backup, factors),
        progress,
    )?;
    let d = pull.unpadded(&run.state);
    Ok(Occupancy {
        values: (d.iter().enumerate())
            .map(|(i, &x)| (x / scale[i / mdp.states]) as f32)
            .collect(),
        steps: 1,
        iterations: run.sweeps,
        residual: run.outcomes.last.iter().map(|s| s.max_abs_delta).collect(),
        status: final_status(options, &run.outcomes.verdict, &run.outcomes.converged),
    })
}
