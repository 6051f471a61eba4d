//! The start values of an infinite-horizon grid solve, shared by every grid solver: the cold
//! start V = 0, or at gamma = 1 a warm start from shortest paths that lets a long maze converge
//! in a few check windows instead of one sweep per cell of its longest path (from V = 0 the
//! goal's value travels one cell per sweep).
//!
//! The warm start, per task, when gamma = 1, the moves are deterministic (slip 0) and every
//! action costs something (`cost(a) - R(s) >= 0` for every action of every updated cell):
//! 1. Dijkstra from the goals over the reversed legal moves, edge `s -> s'` weighing
//!    `cost(a) - R(s)`, gives each cell that reaches a goal its shortest-path tree move;
//! 2. that tree policy's value, `V(s) = R(s) - cost(a) + V(s')` in Dijkstra order (minus the
//!    shortest-path cost), is a subsolution: `V = T_pi V <= T_hard V <= T_soft V` (the soft
//!    max is at least the max), and at or below the fixed point;
//! 3. Gauss-Seidel passes of the solve's own backup (`action_values`, `soft_max`) in Dijkstra
//!    order carry the soft (entropy) terms down the whole tree in one pass each. Each update
//!    raises V and keeps it a subsolution below the fixed point (the backup is monotone).
//!
//! The solve then iterates from there on its usual schedule, so the stopping rule and the
//! fixed point are unchanged: with slip 0, `x = exp(V / alpha)` obeys a linear equation
//! `x = M x + b` whose positive solution is unique when it exists, and from a subsolution the
//! iteration rises monotonically to it. The warm start is taken only when its last
//! Gauss-Seidel pass already meets the convergence test ([`within_tolerance`]) within
//! [`GAUSS_SEIDEL_PASSES`] passes, each shrinking the change by [`GAUSS_SEIDEL_RATE`] at least
//! from the third on; otherwise (a slowly converging or diverging task: the entropy bonus near
//! the step costs, e.g. alpha 1) the task starts cold, as before, so the divergence check sees
//! the iteration it was written for (from below, every value rises even when a task
//! converges).
//!
//! Cold (V = 0) always: finite horizons (V_T = 0 is the answer's terminal value); gamma < 1
//! (the cold iteration needs about log(tol) / log(gamma) sweeps, not one per cell of a path,
//! and far from the goals every action's Q nearly ties with staying, so the soft terms reach
//! alpha log|A| / (1 - gamma) and Gauss-Seidel crawls at rate ~gamma: on the 1023 x 1023 maze at
//! alpha 0.1, gamma 0.99 its passes changed V by 0.73, 0.41, 0.36, 0.32); slip > 0 (the
//! deterministic tree is no subsolution of the stochastic backup); any positive reward after
//! cost (Dijkstra needs non-negative weights); tasks without a finite solution by their
//! structure ([`GridInputs::unbounded_tasks`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::cpu::residual_reduce::SweepStats;
use super::cpu::{action_values, soft_max};
use super::layout::GridInputs;
use super::options::{Horizon, SolveOptions};
use super::schedule::{Precision, within_tolerance};
use crate::world::grid_problem::GridProblem;

/// The heap entry's action of a goal (a tree root).
const GOAL: usize = usize::MAX;

/// Most Gauss-Seidel passes a warm start may take to meet the convergence test.
pub const GAUSS_SEIDEL_PASSES: usize = 32;

/// From the third pass on, a pass whose largest change is above this share of the previous
/// pass's ends the warm start (the task starts cold): its slow mode would take many passes.
pub const GAUSS_SEIDEL_RATE: f64 = 0.9;

/// The start values of `problem`'s solve under `options`, `[task][row][col]` (the problem's
/// own layout); `None` when every task starts cold (V = 0). Tasks that start cold within a
/// warm batch hold 0; so do walls, goals and cells that reach no goal.
pub fn grid_start_values(problem: &GridProblem, options: &SolveOptions) -> Option<Vec<f64>> {
    grid_start_values_for(&GridInputs::new(problem, options), options)
}

/// [`grid_start_values`] from the solve's kernel inputs, `[task][row][col]` over
/// `inputs.width` columns (padded ones included).
pub fn grid_start_values_for(inputs: &GridInputs, options: &SolveOptions) -> Option<Vec<f64>> {
    let tol = match options.horizon {
        Horizon::Infinite { tol, .. } => tol,
        Horizon::Finite(_) => return None,
    };
    if options.gamma != 1.0 || inputs.slip != 0.0 {
        return None;
    }
    let cells = inputs.cells();
    let unbounded = inputs.unbounded_tasks();
    let mut start = vec![0.0f64; inputs.tasks * cells];
    let mut any = false;
    for (task, &unbounded) in unbounded.iter().enumerate() {
        if unbounded || !costs_non_negative(inputs, task) {
            continue;
        }
        let range = task * cells..(task + 1) * cells;
        let order = tree_values(inputs, task, &mut start[range.clone()]);
        if gauss_seidel(inputs, task, &order, tol, &mut start) {
            any = true;
        } else {
            start[range].fill(0.0);
        }
    }
    any.then_some(start)
}

/// Whether every updated cell of `task` pays for each action: `cost(a) - R(s) >= 0`.
fn costs_non_negative(inputs: &GridInputs, task: usize) -> bool {
    let cells = inputs.cells();
    (0..cells).all(|c| {
        let i = task * cells + c;
        inputs.fixed[i]
            || inputs
                .step_cost
                .iter()
                .all(|&cost| cost - inputs.reward[i] as f64 >= 0.0)
    })
}

/// Writes the shortest-path tree policy's values of `task` into `v` (`[row][col]`, zeros
/// elsewhere) and returns the updated cells it reached, in Dijkstra (settling) order.
fn tree_values(inputs: &GridInputs, task: usize, v: &mut [f64]) -> Vec<usize> {
    let cells = inputs.cells();
    let base = task * cells;
    let mut distance = vec![f64::INFINITY; cells];
    let mut settled = vec![false; cells];
    // Non-negative f64 distances order like their bit patterns.
    let mut heap = BinaryHeap::new();
    for (c, d) in distance.iter_mut().enumerate() {
        if inputs.terminal[base + c] {
            *d = 0.0;
            heap.push(Reverse((0u64, c, GOAL)));
        }
    }
    let mut order = Vec::new();
    while let Some(Reverse((_, cell, action))) = heap.pop() {
        if settled[cell] {
            continue;
        }
        settled[cell] = true;
        if action != GOAL {
            // The tree move lands on a settled cell: V(cell) = Q(cell, action; V).
            let next = (cell as i64 + inputs.move_offset[action] as i64) as usize;
            v[cell] = inputs.reward[base + cell] as f64 - inputs.step_cost[action] + v[next];
            order.push(cell);
        }
        for (a, &offset) in inputs.move_offset.iter().enumerate() {
            let p = cell as i64 - offset as i64;
            if offset == 0 || p < 0 || p >= cells as i64 {
                continue;
            }
            let p = p as usize;
            // p's move a is legal, so it lands on p + offset = cell.
            if inputs.move_mask[p] >> a & 1 == 0 || inputs.fixed[base + p] || settled[p] {
                continue;
            }
            let through = distance[cell] + inputs.step_cost[a] - inputs.reward[base + p] as f64;
            if through < distance[p] {
                distance[p] = through;
                heap.push(Reverse((through.to_bits(), p, a)));
            }
        }
    }
    order
}

/// Gauss-Seidel passes of the soft backup over `order` on `v` `[task][row][col]`, until a
/// pass meets the convergence test for `tol` (true) or [`GAUSS_SEIDEL_PASSES`] passed
/// (false).
fn gauss_seidel(
    inputs: &GridInputs,
    task: usize,
    order: &[usize],
    tol: f64,
    v: &mut [f64],
) -> bool {
    let base = task * inputs.cells();
    let mut q = vec![0.0; inputs.action_count];
    let mut last_change = f64::INFINITY;
    for pass in 0..GAUSS_SEIDEL_PASSES {
        let mut stats = SweepStats::default();
        for &cell in order {
            action_values(inputs, task, cell, v, &mut q);
            let v_new = soft_max(inputs.alpha, &q);
            stats.observe(v[base + cell], v_new);
            v[base + cell] = v_new;
        }
        if !stats.max_abs_value.is_finite() {
            return false;
        }
        // gamma = 1 (the only warm-started case); the f32 floor, the looser one: the solve's
        // own iteration then checks at its precision.
        if within_tolerance(tol, 1.0, Precision::F32, &stats, false) {
            return true;
        }
        // A slow mode (the entropy bonus near the step costs) or growth: give up early.
        if pass >= 2 && stats.max_abs_delta > GAUSS_SEIDEL_RATE * last_change {
            return false;
        }
        last_change = stats.max_abs_delta;
    }
    false
}
