//! The native engine's sweep: `shaders/grid_backup.wgsl::grid_backup` in f32 on the CPU,
//! rows split over threads, inner loops over a row's columns that LLVM vectorises.
//!
//! Layout: every per-cell array is padded by one cell on each side, `[task][row + 1][col +
//! 1]` with rows of `stride = width + 2`, so that the 8 neighbours of any cell are in bounds;
//! the padding and walls hold 0 and are never selected (their moves are illegal).
//!
//! The expected backup with alpha > 0 (the common case) runs with one exponential per cell
//! instead of one per action. With slip eps and gamma, `Q_a = r - c_a + gamma ((1 - eps)
//! V(n_a) + eps mean)`, the `eps * mean` term is the same for every action and leaves the
//! log-sum-exp:
//!
//! `V = r - c_min + gamma eps mean + gamma (1 - eps) M + alpha ln sum_a w_a E(n_a)`
//!
//! with `w_a = exp(-(c_a - c_min) / alpha)` and the *shared exponential*
//! `E(x) = exp(k (V(x) - M))`, `k = gamma (1 - eps) / alpha`, computed once per cell and read
//! by the 8 cells around it. E never goes to memory: each thread keeps a sliding window of the
//! three input rows' E around the row it writes (the sweep is bound by memory traffic). `M` is the largest live value of the
//! cell's row; a neighbour row's `E` is rescaled by `exp(k (M_row' - M_row))`, one scalar per
//! row pair. Where that sum leaves the range in which f32 holds it exactly enough (values of a
//! row spread over more than ~80 / k, or a neighbour row far above), the cell is recomputed in
//! the per-cell form ([`NativeGrid::cell_value`], the shader's), so the result never depends on
//! the shortcut.

// Index loops mirror the row layout; iterator chains over 8 neighbour slices read worse.
#![allow(clippy::needless_range_loop)]

use std::sync::Mutex;

use super::fast_math::{exp_f32, ln_f32, madd};
use crate::engine::cpu::residual_reduce::SweepStats;
use crate::engine::layout::GridInputs;
use crate::engine::options::Backup;
use crate::world::grid::MOVE_OFFSETS;

/// Flag bit: the cell's value stays fixed (wall, terminal, excluded).
const FIXED: u8 = 1;
/// Flag bit: the cell is free and not excluded, so its value counts for its row's shift.
const LIVE: u8 = 2;

/// The shared-exponential sum is trusted within [`SUM_LOW`, `SUM_HIGH`]: every term that
/// underflowed is below 1.2e-38 times a coefficient of at most [`SCALE_LIMIT`], so it moves a
/// sum of at least `SUM_LOW` by under 1e-9 relatively.
const SUM_LOW: f32 = 1e-19;
const SUM_HIGH: f32 = 1e30;
/// Largest neighbour-row rescaling the shared form takes; a larger one sends the row to the
/// per-cell form.
const SCALE_LIMIT: f32 = 1e10;
/// Rows per unit of work a thread takes: a window of shared exponentials restarts at each
/// block (2 extra rows of exponentials per block).
const BLOCK_ROWS: usize = 32;
/// Cells an evaluation sweep gives each thread at least: one takes about a nanosecond a cell,
/// so a smaller share costs less than starting the thread (tens of microseconds).
const EVALUATION_CELLS_PER_THREAD: usize = 1 << 16;

/// The kernel inputs of a grid batch in the padded layout, built once per solve.
#[derive(Clone, Debug)]
pub struct NativeGrid {
    /// Rows H.
    pub height: usize,
    /// Columns W.
    pub width: usize,
    /// Padded row length W + 2.
    pub stride: usize,
    /// Tasks B.
    pub tasks: usize,
    /// Actions |A|.
    pub action_count: usize,
    /// Actions that move (4 or 8, the first in action order; STAY, when there, is last).
    moves: usize,
    /// Padded index offset of each action's move, action order (0 for STAY).
    offset: Vec<isize>,
    /// Row offset of each action's move (-1, 0, 1).
    row_step: Vec<isize>,
    /// Legal-move bitmask per cell, `[row + 1][col + 1]` (STAY never moves: 8 bits suffice).
    mask: Vec<u8>,
    /// [`FIXED`] and [`LIVE`] per cell, `[task][row + 1][col + 1]`.
    flags: Vec<u8>,
    /// `R_task(s)`, `[task][row + 1][col + 1]`.
    reward: Vec<f32>,
    /// Step cost per action.
    step_cost: Vec<f32>,
    /// Smallest step cost.
    cost_min: f32,
    /// `exp(-(c_a - c_min) / alpha)` per action (the shared form).
    weight: Vec<f32>,
    /// Per cell, the blocked moves: orthogonal in the low nibble, diagonal in the high one,
    /// `[row + 1][col + 1]` (a byte, not two f32 counts: the sweep is bound by memory traffic).
    blocked: Vec<u8>,
    /// Weights of an orthogonal move, a diagonal move and STAY (0 without it): the move costs
    /// are per kind ([`crate::world::grid::MoveCost`]).
    kind_weight: [f32; 3],
    /// 1 with a STAY action, else 0.
    stay_actions: f32,
    /// Whether any task has a reward map (else R = 0 is not read).
    has_reward: bool,
    slip: f32,
    slip_share: f32,
    gamma: f32,
    alpha: f32,
    /// `gamma (1 - slip) / alpha`, the shared exponential's rate.
    rate: f32,
    backup: Backup,
    /// Whether the shared-exponential form runs (expected backup, alpha > 0).
    shared: bool,
    /// Whether a row holds a live cell, `[task][row]`: rows without one take no part in
    /// their neighbours' rescaling (no legal move enters them).
    live_row: Vec<bool>,
}

/// One iterate of a native solve: values and row shifts.
#[derive(Clone, Debug)]
pub struct NativeState {
    /// V, `[task][row + 1][col + 1]`.
    pub v: Vec<f32>,
    /// `M_row`, the largest live V of each row, `[task][row + 1]` (0 for a row with none).
    shift: Vec<f32>,
}

/// A thread's sliding window of shared-exponential rows: `E = exp(rate (V - M_row))` of three
/// input rows, padded like the arrays (`stride` cells, 0 at both ends and off live cells).
struct ExpWindow {
    rows: [Vec<f32>; 3],
    /// The (task, map row) each slot holds.
    holds: [Option<(usize, isize)>; 3],
}

/// Residual statistics of one thread's rows, f32 as the sweep computes them.
#[derive(Clone, Copy, Debug)]
pub(super) struct RowStats {
    pub(super) max_abs_delta: f32,
    pub(super) min_delta: f32,
    /// An upper bound on max dV, as [`SweepStats::max_delta`]: exact in the CSR engine,
    /// `max_abs_delta` in the grid rows (grids keep fixed goal values: no span bound).
    pub(super) max_delta: f32,
    pub(super) max_abs_value: f32,
    pub(super) active: bool,
}

impl Default for RowStats {
    fn default() -> Self {
        Self {
            max_abs_delta: 0.0,
            min_delta: f32::INFINITY,
            max_delta: f32::NEG_INFINITY,
            max_abs_value: 0.0,
            active: false,
        }
    }
}

/// Twin of `extrapolate` (see [`crate::engine::cpu::extrapolate::extrapolate`]) on a padded
/// layout of `stride` entries per task: a factor > 0 keeps a backup and jumps every entry `i`
/// that is not `fixed(i)`, a factor < 0 restores the backup.
pub(super) fn extrapolate_padded(
    stride: usize,
    fixed: impl Fn(usize) -> bool,
    v: &mut [f32],
    v_prev: &[f32],
    backup: &mut [f32],
    factors: &[f64],
) {
    for (task, &factor) in factors.iter().enumerate() {
        let range = task * stride..(task + 1) * stride;
        if factor < 0.0 {
            v[range.clone()].copy_from_slice(&backup[range]);
        } else if factor > 0.0 {
            backup[range.clone()].copy_from_slice(&v[range.clone()]);
            let factor = factor as f32;
            for i in range {
                if !fixed(i) {
                    v[i] += factor * (v[i] - v_prev[i]);
                }
            }
        }
    }
}

/// Runs `work` on `threads` threads (this one among them), each taking units of a shared queue
/// until it is empty and returning its statistics per task, and combines them per task.
pub(super) fn on_threads(
    tasks: usize,
    threads: usize,
    work: impl Fn() -> Vec<RowStats> + Sync,
) -> Vec<SweepStats> {
    let work = &work;
    let partials: Vec<Vec<RowStats>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (1..threads.max(1)).map(|_| scope.spawn(work)).collect();
        let mut partials = vec![work()];
        partials.extend(
            handles
                .into_iter()
                .map(|h| h.join().expect("a sweep thread panicked")),
        );
        partials
    });
    (0..tasks)
        .map(|t| {
            partials
                .iter()
                .fold(RowStats::default(), |acc, p| acc.combine(p[t]))
                .to_sweep_stats()
        })
        .collect()
}

impl RowStats {
    pub(super) fn combine(self, o: RowStats) -> RowStats {
        RowStats {
            max_abs_delta: self.max_abs_delta.max(o.max_abs_delta),
            min_delta: self.min_delta.min(o.min_delta),
            max_delta: self.max_delta.max(o.max_delta),
            max_abs_value: self.max_abs_value.max(o.max_abs_value),
            active: self.active || o.active,
        }
    }

    /// As [`SweepStats`]: a NaN or infinite value or change (kept as +inf in
    /// `max_abs_value`) makes every statistic a runaway, as `SweepStats::observe` does.
    pub(super) fn to_sweep_stats(self) -> SweepStats {
        if !self.active {
            return SweepStats::default();
        }
        if !self.max_abs_value.is_finite() || !self.max_abs_delta.is_finite() {
            return SweepStats {
                max_abs_delta: f64::INFINITY,
                min_delta: f64::NEG_INFINITY,
                max_delta: f64::INFINITY,
                max_abs_value: f64::INFINITY,
                active: true,
            };
        }
        SweepStats {
            max_abs_delta: self.max_abs_delta as f64,
            min_delta: self.min_delta as f64,
            max_delta: self.max_delta as f64,
            max_abs_value: self.max_abs_value as f64,
            active: true,
        }
    }
}

/// A thread's share of one task's rows in the state being written.
struct RowBlock<'a> {
    task: usize,
    /// First interior row (0-based map row).
    first_row: usize,
    v: &'a mut [f32],
    shift: &'a mut [f32],
    /// The block's rows of an improvement's policy ([`NativeGridPolicy`]'s `weight` and
    /// `reward`), when the sweep keeps one.
    policy: Option<(&'a mut [f32], &'a mut [f32])>,
}

impl NativeGrid {
    /// The padded inputs of `inputs`.
    pub fn new(inputs: &GridInputs) -> Self {
        let (h, w, tasks) = (inputs.height, inputs.width, inputs.tasks);
        let stride = w + 2;
        let plane = (h + 2) * stride;
        let pad = |cell: usize| (cell / w + 1) * stride + cell % w + 1;
        let mut mask = vec![0u8; plane];
        for cell in 0..inputs.cells() {
            mask[pad(cell)] = inputs.move_mask[cell] as u8;
        }
        let mut flags = vec![FIXED; tasks * plane];
        let mut reward = vec![0.0f32; tasks * plane];
        for t in 0..tasks {
            for cell in 0..inputs.cells() {
                let (i, p) = (t * inputs.cells() + cell, t * plane + pad(cell));
                let live = inputs.free[cell] && !inputs.excluded[i];
                flags[p] = (inputs.fixed[i] as u8 * FIXED) | (live as u8 * LIVE);
                reward[p] = inputs.reward[i];
            }
        }
        let moves: Vec<(i32, i32)> = (0..inputs.action_count)
            .map(|a| {
                let o = inputs.move_offset[a];
                // move_offset is dr * W + dc with |dc| <= 1: recover (dr, dc).
                MOVE_OFFSETS
                    .iter()
                    .copied()
                    .find(|&(dr, dc)| dr * w as i32 + dc == o)
                    .unwrap_or((0, 0))
            })
            .collect();
        let live_row = (0..tasks * h)
            .map(|i| {
                let (t, row) = (i / h, i % h);
                let base = t * plane + (row + 1) * stride + 1;
                flags[base..base + w].iter().any(|&f| f & LIVE != 0)
            })
            .collect();
        let step_cost: Vec<f32> = inputs.step_cost.iter().map(|&c| c as f32).collect();
        let cost_min = inputs
            .step_cost
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let alpha = inputs.alpha;
        let weight: Vec<f32> = inputs
            .step_cost
            .iter()
            .map(|&c| {
                if alpha > 0.0 {
                    (-(c - cost_min) / alpha).exp() as f32
                } else {
                    0.0
                }
            })
            .collect();
        let mut blocked = vec![0u8; plane];
        let moves_count = moves.iter().filter(|&&m| m != (0, 0)).count();
        for cell in 0..inputs.cells() {
            let m = inputs.move_mask[cell];
            let orthogonal = (0..4).filter(|&a| (m >> a) & 1 == 0).count() as u8;
            let diagonal = (4..moves_count).filter(|&a| (m >> a) & 1 == 0).count() as u8;
            blocked[pad(cell)] = orthogonal | diagonal << 4;
        }
        let has_stay = moves_count < inputs.action_count;
        let kind_weight = [
            weight[0],
            if moves_count == 8 { weight[4] } else { 0.0 },
            if has_stay {
                weight[inputs.action_count - 1]
            } else {
                0.0
            },
        ];
        Self {
            height: h,
            width: w,
            stride,
            tasks,
            action_count: inputs.action_count,
            moves: moves_count,
            offset: moves
                .iter()
                .map(|&(dr, dc)| dr as isize * stride as isize + dc as isize)
                .collect(),
            row_step: moves.iter().map(|&(dr, _)| dr as isize).collect(),
            mask,
            flags,
            reward,
            step_cost,
            cost_min: cost_min as f32,
            weight,
            blocked,
            kind_weight,
            stay_actions: has_stay as u8 as f32,
            has_reward: inputs.reward.iter().any(|&r| r != 0.0),
            slip: inputs.slip as f32,
            slip_share: (inputs.slip / inputs.action_count as f64) as f32,
            gamma: inputs.gamma as f32,
            alpha: alpha as f32,
            rate: (inputs.gamma * (1.0 - inputs.slip) / alpha) as f32,
            backup: inputs.backup,
            shared: inputs.backup == Backup::Expected && alpha > 0.0,
            live_row,
        }
    }

    /// Cells of one padded task plane.
    fn plane(&self) -> usize {
        (self.height + 2) * self.stride
    }

    /// Padded index of map cell `cell` (row-major) of `task`.
    pub fn padded(&self, task: usize, cell: usize) -> usize {
        task * self.plane() + (cell / self.width + 1) * self.stride + cell % self.width + 1
    }

    /// A state holding `v0` `[task][row][col]` (walls and padding 0), its shared
    /// exponentials computed.
    pub fn state(&self, v0: &[f64]) -> NativeState {
        let mut state = NativeState {
            v: vec![0.0; self.tasks * self.plane()],
            shift: vec![0.0; self.tasks * (self.height + 2)],
        };
        let cells = self.height * self.width;
        for t in 0..self.tasks {
            for c in 0..cells {
                // Walls and excluded cells hold 0: the shared form reads orthogonal
                // neighbours unmasked (a wall adds 0; no legal move enters an excluded cell).
                let p = self.padded(t, c);
                let held = self.flags[p] & (FIXED | LIVE) != FIXED;
                state.v[p] = if held { v0[t * cells + c] as f32 } else { 0.0 };
            }
        }
        self.refresh_shared(&mut state);
        state
    }

    /// Recomputes the row shifts of `state` from its values (after a jump or a rollback
    /// changed them).
    pub fn refresh_shared(&self, state: &mut NativeState) {
        for task in 0..self.tasks {
            for row in 0..self.height {
                let flags = self.row_slice(&self.flags, task, row);
                let values = self.row_slice(&state.v, task, row);
                let top = flags
                    .iter()
                    .zip(values)
                    .filter(|(f, _)| *f & LIVE != 0)
                    .fold(f32::NEG_INFINITY, |m, (_, &v)| larger(v, m));
                state.shift[task * (self.height + 2) + row + 1] = shift_of(top);
            }
        }
    }

    /// The map row `row` of `task` of a padded array, `width` cells.
    fn row_slice<'a, T>(&self, array: &'a [T], task: usize, row: usize) -> &'a [T] {
        let base = task * self.plane() + (row + 1) * self.stride + 1;
        &array[base..base + self.width]
    }

    /// `out`'s interior rows split into runs of [`BLOCK_ROWS`] rows of one task, in order,
    /// each with its rows of `policy` when given.
    fn row_blocks<'a>(
        &self,
        v: &'a mut [f32],
        shift: &'a mut [f32],
        policy: Option<&'a mut NativeGridPolicy>,
    ) -> Vec<RowBlock<'a>> {
        let (h, w, stride) = (self.height, self.width, self.stride);
        let mut blocks = Vec::new();
        let planes = v.chunks_mut(self.plane()).zip(shift.chunks_mut(h + 2));
        // Each block's policy rows, in the blocks' order (a task's last block may be short).
        let row_weights = self.policy_planes() * w;
        let mut policy_rows = policy.map(|p| {
            let weight = (p.weight.chunks_mut(h * row_weights))
                .flat_map(|task| task.chunks_mut(BLOCK_ROWS * row_weights));
            let reward =
                (p.reward.chunks_mut(h * w)).flat_map(|task| task.chunks_mut(BLOCK_ROWS * w));
            weight.zip(reward)
        });
        for (task, (v, shift)) in planes.enumerate() {
            let v = v[stride..(h + 1) * stride].chunks_mut(BLOCK_ROWS * stride);
            let s = shift[1..h + 1].chunks_mut(BLOCK_ROWS);
            for (i, (v, shift)) in v.zip(s).enumerate() {
                blocks.push(RowBlock {
                    task,
                    first_row: i * BLOCK_ROWS,
                    v,
                    shift,
                    policy: policy_rows.as_mut().and_then(|rows| rows.next()),
                });
            }
        }
        blocks
    }

    /// One sweep `output = T(input)` over every task not `frozen` (`[task]`: those are copied
    /// and report no updated cell), on `threads` threads; per-task residual statistics.
    pub fn sweep(
        &self,
        input: &NativeState,
        output: &mut NativeState,
        frozen: &[bool],
        threads: usize,
    ) -> Vec<SweepStats> {
        self.sweep_keeping(input, output, None, frozen, threads)
    }

    /// [`NativeGrid::sweep`], keeping the sweep's policy in `policy` when given.
    fn sweep_keeping(
        &self,
        input: &NativeState,
        output: &mut NativeState,
        policy: Option<&mut NativeGridPolicy>,
        frozen: &[bool],
        threads: usize,
    ) -> Vec<SweepStats> {
        let NativeState { v, shift } = output;
        // Threads take blocks as they finish (not a fixed share each): on a machine shared with
        // other work, a thread that loses its core does not hold the sweep up.
        let queue = Mutex::new(self.row_blocks(v, shift, policy).into_iter());
        let queue = &queue;
        on_threads(self.tasks, threads, || {
            self.sweep_blocks(input, frozen, queue)
        })
    }

    /// One thread's rows of a sweep, blocks taken from `queue` until it is empty; statistics
    /// per task.
    fn sweep_blocks<'a>(
        &self,
        input: &NativeState,
        frozen: &[bool],
        queue: &Mutex<std::vec::IntoIter<RowBlock<'a>>>,
    ) -> Vec<RowStats> {
        let mut stats = vec![RowStats::default(); self.tasks];
        // Two rows: the hard max's row loop keeps its policy there (`sweep_row`).
        let mut sums = vec![0.0f32; 2 * self.width];
        let mut window = ExpWindow {
            rows: std::array::from_fn(|_| vec![0.0f32; self.stride]),
            holds: [None; 3],
        };
        loop {
            let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
            let Some(mut block) = next else { break };
            let rows = block.shift.len();
            if frozen[block.task] {
                // A task that stopped iterating keeps its values (and so its row shifts).
                let v_at = block.task * self.plane() + (block.first_row + 1) * self.stride;
                let shift_at = block.task * (self.height + 2) + block.first_row + 1;
                block
                    .v
                    .copy_from_slice(&input.v[v_at..v_at + block.v.len()]);
                block
                    .shift
                    .copy_from_slice(&input.shift[shift_at..shift_at + rows]);
                continue;
            }
            for i in 0..rows {
                let row = block.first_row + i;
                let base = i * self.stride + 1;
                let v_out = &mut block.v[base..base + self.width];
                let w = self.width;
                let kept = block.policy.as_mut().map(|(weight, reward)| {
                    let planes = self.policy_planes();
                    let weight = &mut weight[i * planes * w..][..planes * w];
                    (weight, &mut reward[i * w..][..w])
                });
                let (row_stats, top) = match kept {
                    // The hard max's improvement in one vectorised pass (the sweep's per-cell
                    // form would take a second one for the policy).
                    Some((destination, reward)) if self.alpha == 0.0 => {
                        let kept = (destination, reward);
                        self.improve_hard_row(input, block.task, row, v_out, kept)
                    }
                    kept => {
                        let (row_stats, top) =
                            self.sweep_row(input, block.task, row, v_out, &mut sums, &mut window);
                        if let Some((weight, reward)) = kept {
                            let kept = (&*v_out, &*sums, weight, reward);
                            self.keep_policy(input, block.task, row, kept, &mut window);
                        }
                        (row_stats, top)
                    }
                };
                stats[block.task] = stats[block.task].combine(row_stats);
                block.shift[i] = shift_of(top);
            }
        }
        stats
    }

    /// Makes `window` hold the shared exponentials of input rows `row - 1 ..= row + 1` of
    /// `task` (zeros off the map); returns their slots, top row first.
    fn slide(
        &self,
        input: &NativeState,
        task: usize,
        row: usize,
        window: &mut ExpWindow,
    ) -> [usize; 3] {
        std::array::from_fn(|k| {
            let r = row as isize - 1 + k as isize;
            let slot = r.rem_euclid(3) as usize;
            if window.holds[slot] != Some((task, r)) {
                let e = &mut window.rows[slot];
                if r < 0 || r >= self.height as isize {
                    e.fill(0.0);
                } else {
                    let r = r as usize;
                    let shift = input.shift[task * (self.height + 2) + r + 1];
                    let flags = self.row_slice(&self.flags, task, r);
                    let v = self.row_slice(&input.v, task, r);
                    shared_exp_row(self.rate, flags, v, shift, &mut e[1..1 + self.width]);
                }
                window.holds[slot] = Some((task, r));
            }
            slot
        })
    }

    /// The new values of one row of one task into `v_out` (`width` cells); `sums` is
    /// scratch of `2 width` cells.
    fn sweep_row(
        &self,
        input: &NativeState,
        task: usize,
        row: usize,
        v_out: &mut [f32],
        sums: &mut [f32],
        window: &mut ExpWindow,
    ) -> (RowStats, f32) {
        let row_base = task * self.plane() + (row + 1) * self.stride + 1;
        let flags = self.row_slice(&self.flags, task, row);
        let v_old = &input.v[row_base..row_base + self.width];
        let coefficients = self
            .shared
            .then(|| self.row_coefficients(input, task, row))
            .flatten();
        match coefficients {
            Some(coefficients) => {
                let slots = self.slide(input, task, row, window);
                let reward = &self.reward[row_base..row_base + self.width];
                let mask = self.row_slice(&self.mask, 0, row);
                let shift = input.shift[task * (self.height + 2) + row + 1];
                let constant = self.gamma * (1.0 - self.slip) * shift - self.cost_min;
                let args = SharedRow {
                    v: &input.v,
                    e_rows: slots.map(|k| &window.rows[k][..]),
                    base: row_base,
                    stride: self.stride,
                    offset: &self.offset,
                    mask,
                    reward,
                    coefficients: &coefficients,
                    blocked: &self.blocked[row_base - task * self.plane()..],
                    kind_weight: self.kind_weight,
                    stay_actions: self.stay_actions,
                    has_reward: self.has_reward,
                    slip_gamma: self.slip_share * self.gamma,
                    constant,
                    alpha: self.alpha,
                };
                if let Some(finished) = shared_row(&args, flags, v_out, sums) {
                    return finished;
                }
                // Cells whose sum f32 cannot hold exactly enough: the per-cell form (the
                // statistics are then taken again below).
                for j in 0..self.width {
                    if flags[j] & FIXED == 0 && !(sums[j] >= SUM_LOW && sums[j] <= SUM_HIGH) {
                        v_out[j] = self.cell_value(task, row_base + j, &input.v);
                    }
                }
            }
            // The hard max (alpha = 0 has the expected backup only): the per-cell form's
            // arithmetic in one vectorised row loop (the same bits), its policy discarded.
            None if self.alpha == 0.0 => {
                let (destination, reward) = sums.split_at_mut(self.width);
                hard_policy_row(&self.hard_row(input, task, row), v_out, destination, reward);
            }
            None => {
                for j in 0..self.width {
                    if flags[j] & FIXED == 0 {
                        v_out[j] = self.cell_value(task, row_base + j, &input.v);
                    }
                }
            }
        }
        finish_row(flags, v_old, v_out)
    }

    /// Per action, the coefficient of `E(n_a)` in the shared sum of a cell of `row`: `w_a`
    /// times the rescaling of the move's row; `None` when a rescaling is beyond
    /// [`SCALE_LIMIT`] (the row runs in the per-cell form).
    fn row_coefficients(&self, input: &NativeState, task: usize, row: usize) -> Option<[f32; 9]> {
        let shifts = &input.shift[task * (self.height + 2)..(task + 1) * (self.height + 2)];
        let own = shifts[row + 1];
        let mut coefficients = [0.0f32; 9];
        for a in 0..self.action_count {
            let target = row as isize + self.row_step[a];
            // Off-map rows and rows without a live cell are never read (no legal move enters
            // them).
            let read = target >= 0
                && target < self.height as isize
                && self.live_row[task * self.height + target as usize];
            let scale = if read {
                (self.rate * (shifts[(target + 1) as usize] - own)).exp()
            } else {
                1.0
            };
            if scale.is_nan() || scale > SCALE_LIMIT {
                return None;
            }
            coefficients[a] = self.weight[a] * scale;
        }
        Some(coefficients)
    }

    /// The per-cell form of one cell (padded index `index`) of `task`: Q from its
    /// neighbours, then the soft max, as `shaders/grid_backup.wgsl` computes it, in f32.
    pub fn cell_value(&self, task: usize, index: usize, v: &[f32]) -> f32 {
        let n = self.action_count;
        let q = self.cell_q(task, index, v);
        let top = q[..n].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if self.alpha == 0.0 || top == f32::NEG_INFINITY {
            return top;
        }
        let sum: f32 = q[..n].iter().map(|&x| ((x - top) / self.alpha).exp()).sum();
        top + self.alpha * sum.ln()
    }

    /// Q of each action of one cell (padded index `index`) of `task` from `v`, in action
    /// order (the first |A| entries), as `shaders/grid_backup.wgsl` computes them in f32.
    fn cell_q(&self, task: usize, index: usize, v: &[f32]) -> [f32; 9] {
        let n = self.action_count;
        let mask = self.mask[index - task * self.plane()];
        let mut next = [0.0f32; 9];
        let (mut total, mut top) = (0.0f32, f32::NEG_INFINITY);
        for a in 0..n {
            next[a] = if (mask >> a) & 1 != 0 {
                v[(index as isize + self.offset[a]) as usize]
            } else {
                v[index]
            };
            total += next[a];
            top = top.max(next[a]);
        }
        let r = self.reward[index];
        let (gamma, slip, alpha) = (self.gamma, self.slip, self.alpha);
        let mut q = [0.0f32; 9];
        match self.backup {
            Backup::Optimistic => {
                let mut weight = [0.0f32; 9];
                let mut mass = 0.0;
                for a in 0..n {
                    weight[a] = ((next[a] - top) * gamma / alpha).exp();
                    mass += weight[a];
                }
                for a in 0..n {
                    let inner = (1.0 - slip) * weight[a] + self.slip_share * mass;
                    q[a] = r - self.step_cost[a] + gamma * top + alpha * inner.ln();
                }
            }
            Backup::Expected => {
                for a in 0..n {
                    q[a] = r - self.step_cost[a]
                        + gamma * ((1.0 - slip) * next[a] + self.slip_share * total);
                }
            }
        }
        q
    }

    /// V `[task][row][col]` in f64 (walls 0), as the reference's drivers hold it.
    pub fn unpadded(&self, v: &[f32]) -> Vec<f64> {
        let cells = self.height * self.width;
        let mut out = vec![0.0f64; self.tasks * cells];
        for t in 0..self.tasks {
            for c in 0..cells {
                out[t * cells + c] = v[self.padded(t, c)] as f64;
            }
        }
        out
    }

    /// The jump of rate extrapolation on the padded arrays, as
    /// [`crate::engine::cpu::extrapolate()`] does it on `[task][state]`.
    pub fn extrapolate(&self, v: &mut [f32], v_prev: &[f32], backup: &mut [f32], factors: &[f64]) {
        let fixed = |i: usize| self.flags[i] & FIXED != 0;
        extrapolate_padded(self.plane(), fixed, v, v_prev, backup, factors);
    }
}

/// What an improvement of modified policy iteration leaves for the evaluation sweeps after it
/// ([`NativeGrid::improve`], [`NativeGrid::evaluate`]): per cell a stencil over the cells the
/// policy reaches, so that an evaluation `T_pi V(s) = r_pi(s) + sum_d weight_d(s) V(d)` reads
/// no exp or log. At alpha = 0 the stencil is one-hot (plus the slip's uniform share), kept
/// as the chosen destination alone: an evaluation then reads 8 bytes a cell, not 4 per
/// destination and 4 (it is bound by that traffic).
#[derive(Clone, Debug)]
pub struct NativeGridPolicy {
    /// `gamma ((1 - eps) pi(d|s) + eps n_d / |A|)`, the discounted probability of reaching
    /// destination `d` (`pi(d|s)` the policy's mass on the actions that lead there, `n_d`
    /// their count): `[task][row][destination][col]`, destination `a` < moves the move of
    /// action `a` (0 where it is illegal), destination `moves` the cell itself (blocked moves
    /// and STAY). Fixed cells: anything (an evaluation copies them). At alpha = 0, the chosen
    /// action's destination instead (as an f32, which the row loops compare without
    /// widening), `[task][row][col]`.
    weight: Vec<f32>,
    /// `r_pi(s) = V'(s) - sum_d weight_d(s) V(d)` at the improvement's input `V` (the
    /// policy's expected reward plus alpha times its entropy), `[task][row][col]`.
    reward: Vec<f32>,
}

impl NativeGrid {
    /// Rows of [`NativeGridPolicy::weight`] per map row: a weight per destination, or at
    /// alpha = 0 the one destination.
    fn policy_planes(&self) -> usize {
        match self.alpha == 0.0 {
            true => 1,
            false => self.moves + 1,
        }
    }

    /// An empty policy of the right shape for [`NativeGrid::improve`] to fill.
    pub fn new_policy(&self) -> NativeGridPolicy {
        let rows = self.tasks * self.height;
        NativeGridPolicy {
            weight: vec![0.0; rows * self.policy_planes() * self.width],
            reward: vec![0.0; rows * self.width],
        }
    }

    /// One improvement of modified policy iteration: the full sweep `output = T(input)`
    /// ([`NativeGrid::sweep`], the same values and statistics) that also leaves its policy in
    /// `policy` for the tasks not `frozen` (the expected backup only,
    /// [`crate::engine::options::Method::Mpi`]).
    pub fn improve(
        &self,
        input: &NativeState,
        output: &mut NativeState,
        policy: &mut NativeGridPolicy,
        frozen: &[bool],
        threads: usize,
    ) -> Vec<SweepStats> {
        assert_eq!(
            self.backup,
            Backup::Expected,
            "MPI needs the expected backup"
        );
        self.sweep_keeping(input, output, Some(policy), frozen, threads)
    }

    /// One policy-evaluation sweep of modified policy iteration, `output = T_pi(input)` under
    /// the policy of the last [`NativeGrid::improve`] (no exp or log), over every task not
    /// `frozen` (copied, as fixed cells are), on `threads` threads; the row shifts of `output`
    /// follow its values. No statistics: convergence is tested on improvements only.
    pub fn evaluate(
        &self,
        policy: &NativeGridPolicy,
        input: &NativeState,
        output: &mut NativeState,
        frozen: &[bool],
        threads: usize,
    ) {
        let NativeState { v, shift } = output;
        let queue = Mutex::new(self.row_blocks(v, shift, None).into_iter());
        let queue = &queue;
        let (h, w, destinations) = (self.height, self.width, self.policy_planes());
        // Each cell's value is its own: the thread count changes no bit.
        let threads = threads.min((self.tasks * h * w).div_ceil(EVALUATION_CELLS_PER_THREAD));
        let work = || {
            loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some(block) = next else { break };
                let (task, rows) = (block.task, block.shift.len());
                let v_at = task * self.plane() + (block.first_row + 1) * self.stride;
                let shift_at = task * (h + 2) + block.first_row + 1;
                if frozen[task] {
                    block
                        .v
                        .copy_from_slice(&input.v[v_at..v_at + block.v.len()]);
                    block
                        .shift
                        .copy_from_slice(&input.shift[shift_at..shift_at + rows]);
                    continue;
                }
                for i in 0..rows {
                    let row = block.first_row + i;
                    let at = task * h + row;
                    let args = EvaluateRow {
                        v: &input.v,
                        base: task * self.plane() + (row + 1) * self.stride + 1,
                        stride: self.stride,
                        flags: self.row_slice(&self.flags, task, row),
                        weight: &policy.weight[at * destinations * w..][..destinations * w],
                        reward: &policy.reward[at * w..][..w],
                        moves: self.moves,
                    };
                    let base = i * self.stride + 1;
                    let v_out = &mut block.v[base..base + w];
                    let top = match self.alpha == 0.0 {
                        true => {
                            let hard = HardEvaluation {
                                mask: self.row_slice(&self.mask, 0, row),
                                stay: self.stay_actions,
                                move_gamma: self.gamma * (1.0 - self.slip),
                                slip_gamma: self.slip_share * self.gamma,
                            };
                            evaluate_hard_row(&args, &hard, v_out)
                        }
                        false => evaluate_row(&args, v_out),
                    };
                    block.shift[i] = shift_of(top);
                }
            }
            vec![RowStats::default(); self.tasks]
        };
        on_threads(self.tasks, threads, work);
    }

    /// The policy of one row's backup into `weight` (`[destination][col]`) and `reward`
    /// (`[col]`): `v_out` the row's new values, `sums` the shared sums the sweep left (read
    /// where the row ran in the shared form), `window` its shared exponentials. Each cell's
    /// policy comes from the form that computed its value: the shared one (`pi_a = w_a E(n_a)
    /// / sum`, no exp) or the per-cell one ([`NativeGrid::cell_policy`]).
    fn keep_policy(
        &self,
        input: &NativeState,
        task: usize,
        row: usize,
        (v_out, sums, weight, reward): (&[f32], &[f32], &mut [f32], &mut [f32]),
        window: &mut ExpWindow,
    ) {
        let w = self.width;
        let row_base = task * self.plane() + (row + 1) * self.stride + 1;
        let flags = self.row_slice(&self.flags, task, row);
        let coefficients = self
            .shared
            .then(|| self.row_coefficients(input, task, row))
            .flatten();
        // Whether the row ran in the shared form (then only its untrusted cells are redone).
        let shared = match coefficients {
            Some(coefficients) => {
                // The window still holds this row's exponentials: no recomputation.
                let slots = self.slide(input, task, row, window);
                let args = PolicyRow {
                    v: &input.v,
                    e_rows: slots.map(|k| &window.rows[k][..]),
                    base: row_base,
                    stride: self.stride,
                    mask: self.row_slice(&self.mask, 0, row),
                    coefficients: &coefficients,
                    blocked: &self.blocked[row_base - task * self.plane()..],
                    kind_weight: self.kind_weight,
                    stay_actions: self.stay_actions,
                    slip_gamma: self.slip_share * self.gamma,
                    move_gamma: self.gamma * (1.0 - self.slip),
                    moves: self.moves,
                };
                if shared_policy_row(&args, flags, v_out, sums, (weight, reward)) {
                    return;
                }
                true
            }
            None => false,
        };
        for j in 0..w {
            let trusted = shared && sums[j] >= SUM_LOW && sums[j] <= SUM_HIGH;
            if flags[j] & FIXED == 0 && !trusted {
                let mut cell_weight = [0.0f32; 9];
                reward[j] =
                    self.cell_policy(task, row_base + j, &input.v, v_out[j], &mut cell_weight);
                for d in 0..=self.moves {
                    weight[d * w + j] = cell_weight[d];
                }
            }
        }
    }

    /// One row of an improvement at alpha = 0: the new values into `v_out` (the hard max of
    /// the per-cell form's Q, the same arithmetic in the same order), the chosen action's
    /// destination into `destination` and `r_pi = R - c(chosen)` into `reward`. The row's
    /// statistics and largest live value.
    fn improve_hard_row(
        &self,
        input: &NativeState,
        task: usize,
        row: usize,
        v_out: &mut [f32],
        (destination, reward): (&mut [f32], &mut [f32]),
    ) -> (RowStats, f32) {
        let row_base = task * self.plane() + (row + 1) * self.stride + 1;
        hard_policy_row(&self.hard_row(input, task, row), v_out, destination, reward);
        let flags = self.row_slice(&self.flags, task, row);
        finish_row(flags, &input.v[row_base..row_base + self.width], v_out)
    }

    /// What [`hard_policy_row`] reads for `row` of `task`.
    fn hard_row<'a>(&'a self, input: &'a NativeState, task: usize, row: usize) -> HardRow<'a> {
        let row_base = task * self.plane() + (row + 1) * self.stride + 1;
        HardRow {
            v: &input.v,
            base: row_base,
            stride: self.stride,
            mask: self.row_slice(&self.mask, 0, row),
            reward: &self.reward[row_base..row_base + self.width],
            step_cost: &self.step_cost,
            gamma: self.gamma,
            slip: self.slip,
            slip_share: self.slip_share,
            moves: self.moves,
        }
    }

    /// The per-cell form of a cell's policy (padded index `index` of `task`, new value
    /// `value` from `v`): the stencil's weights per destination into `weight` and `r_pi`
    /// returned. `pi_a = exp((Q_a - V') / alpha)`, or one-hot on the first action reaching
    /// `value` at alpha = 0, as the reference's `improve`.
    fn cell_policy(
        &self,
        task: usize,
        index: usize,
        v: &[f32],
        value: f32,
        weight: &mut [f32; 9],
    ) -> f32 {
        let n = self.action_count;
        let q = self.cell_q(task, index, v);
        weight.fill(0.0);
        if value == f32::NEG_INFINITY {
            return value;
        }
        let mask = self.mask[index - task * self.plane()];
        let first = q[..n].iter().position(|&x| x == value).unwrap_or(0);
        let (move_gamma, slip_gamma) =
            (self.gamma * (1.0 - self.slip), self.slip_share * self.gamma);
        for a in 0..n {
            let pi = match self.alpha == 0.0 {
                true => (a == first) as u8 as f32,
                false => ((q[a] - value) / self.alpha).exp(),
            };
            let d = match a < self.moves && (mask >> a) & 1 != 0 {
                true => a,
                false => self.moves,
            };
            weight[d] += move_gamma * pi + slip_gamma;
        }
        let mut expected = 0.0f32;
        for d in 0..=self.moves {
            if weight[d] != 0.0 {
                let offset = if d < self.moves { self.offset[d] } else { 0 };
                expected += weight[d] * v[(index as isize + offset) as usize];
            }
        }
        value - expected
    }
}

/// What [`shared_policy_row`] reads for one row (see [`SharedRow`]).
struct PolicyRow<'a> {
    v: &'a [f32],
    e_rows: [&'a [f32]; 3],
    base: usize,
    stride: usize,
    mask: &'a [u8],
    coefficients: &'a [f32; 9],
    blocked: &'a [u8],
    kind_weight: [f32; 3],
    stay_actions: f32,
    /// `gamma * slip / |A|`.
    slip_gamma: f32,
    /// `gamma (1 - slip)`.
    move_gamma: f32,
    moves: usize,
}

with_avx2!(shared_policy_row => shared_policy_row_any(
    args: &PolicyRow<'_>,
    flags: &[u8],
    v_out: &[f32],
    sums: &[f32],
    kept: (&mut [f32], &mut [f32])
) -> bool);

#[inline(always)]
fn shared_policy_row_any<const FMA: bool>(
    args: &PolicyRow<'_>,
    flags: &[u8],
    v_out: &[f32],
    sums: &[f32],
    (weight, reward): (&mut [f32], &mut [f32]),
) -> bool {
    match args.moves >= 8 {
        true => shared_policy_row_n::<FMA, true>(args, flags, v_out, sums, weight, reward),
        false => shared_policy_row_n::<FMA, false>(args, flags, v_out, sums, weight, reward),
    }
}

/// The shared form's policy over one row: `pi_a = coefficient_a E(n_a) / sum` (the terms of
/// the sum whose log gave the value), the blocked moves and STAY folded into the cell itself
/// as the sum folds them. Cells whose sum is out of the trusted range get garbage here and
/// are redone by the caller (told so by `false`, when there are any). Loops run destination
/// by destination over the row (each a plain zip of rows, which vectorises), `reward` holding
/// `1 / sum` until its turn.
#[inline(always)]
fn shared_policy_row_n<const FMA: bool, const DIAGONALS: bool>(
    args: &PolicyRow<'_>,
    flags: &[u8],
    v_out: &[f32],
    sums: &[f32],
    weight: &mut [f32],
    reward: &mut [f32],
) -> bool {
    let w = v_out.len();
    let moves = if DIAGONALS { 8 } else { 4 };
    let (sums, reward) = (&sums[..w], &mut reward[..w]);
    let (mask, blocked) = (&args.mask[..w], &args.blocked[..w]);
    let [orthogonal_weight, diagonal_weight, stay_weight] = args.kind_weight;
    let v_rows: [&[f32]; 3] = std::array::from_fn(|k| {
        let first = args.base + k * args.stride - args.stride - 1;
        &args.v[first..first + w + 2]
    });
    let e_rows: [&[f32]; 3] = std::array::from_fn(|k| &args.e_rows[k][..w + 2]);
    let (slip_gamma, move_gamma) = (args.slip_gamma, args.move_gamma);
    let flags = &flags[..w];
    let mut unsure = 0u32;
    for j in 0..w {
        // As in `shared_row_n`: `&`, not `&&`, so that the loop vectorises.
        #[allow(clippy::manual_range_contains)]
        let trusted = (sums[j] >= SUM_LOW) & (sums[j] <= SUM_HIGH);
        unsure |= (!trusted & (flags[j] & FIXED == 0)) as u32;
        reward[j] = 1.0 / pick(sums[j] > 0.0, sums[j], 1.0);
    }
    let (planes, own) = weight[..(moves + 1) * w].split_at_mut(moves * w);
    let own = &mut own[..w];
    for (j, own) in own.iter_mut().enumerate() {
        let b = blocked[j] as u32;
        let (orthogonal, diagonal) = ((b & 15) as f32, (b >> 4) as f32);
        let staying = orthogonal + diagonal + args.stay_actions;
        let stay_weight = madd::<FMA>(
            orthogonal,
            orthogonal_weight,
            madd::<FMA>(diagonal, diagonal_weight, stay_weight),
        );
        let pi = stay_weight * e_rows[1][j + 1] * reward[j];
        *own = madd::<FMA>(move_gamma, pi, slip_gamma * staying);
    }
    for (a, plane) in planes.chunks_exact_mut(w).enumerate() {
        let (k, c) = PADDED_STEPS[a];
        let coefficient = args.coefficients[a];
        let e = &e_rows[k][c..c + w];
        for j in 0..w {
            let legal = (mask[j] as u32 >> a) & 1 != 0;
            let pi = pick(legal, coefficient * e[j] * reward[j], 0.0);
            plane[j] = madd::<FMA>(move_gamma, pi, pick(legal, slip_gamma, 0.0));
        }
    }
    // r_pi = V' - sum_d weight_d V(d), the sum taken into r_pi term by term.
    let v_own = &v_rows[1][1..w + 1];
    for j in 0..w {
        reward[j] = madd::<FMA>(-own[j], v_own[j], v_out[j]);
    }
    for (a, plane) in planes.chunks_exact(w).enumerate() {
        let (k, c) = PADDED_STEPS[a];
        let v = &v_rows[k][c..c + w];
        for j in 0..w {
            reward[j] = madd::<FMA>(-plane[j], v[j], reward[j]);
        }
    }
    unsure == 0
}

/// What [`hard_policy_row`] reads for one row of one task.
struct HardRow<'a> {
    /// V of the input state, whole array.
    v: &'a [f32],
    /// Padded index of the row's first cell.
    base: usize,
    stride: usize,
    mask: &'a [u8],
    reward: &'a [f32],
    /// Per action.
    step_cost: &'a [f32],
    gamma: f32,
    slip: f32,
    slip_share: f32,
    moves: usize,
}

with_avx2!(hard_policy_row => hard_policy_row_any(
    args: &HardRow<'_>,
    v_out: &mut [f32],
    destination: &mut [f32],
    reward: &mut [f32]
) -> ());

#[inline(always)]
fn hard_policy_row_any<const FMA: bool>(
    args: &HardRow<'_>,
    v_out: &mut [f32],
    destination: &mut [f32],
    reward: &mut [f32],
) {
    let stay = args.step_cost.len() > args.moves;
    match (args.moves >= 8, stay) {
        (true, true) => hard_policy_row_n::<true, true>(args, v_out, destination, reward),
        (true, false) => hard_policy_row_n::<true, false>(args, v_out, destination, reward),
        (false, true) => hard_policy_row_n::<false, true>(args, v_out, destination, reward),
        (false, false) => hard_policy_row_n::<false, false>(args, v_out, destination, reward),
    }
}

/// [`NativeGrid::cell_q`]'s expected Q of every action of every cell of a row (the same
/// operations in the same order: no fused multiply-add), the hard max into `v_out`, the
/// first action reaching it as its destination (a move's index, or `moves` for the cell
/// itself) into `destination`, `r_pi = R - c(chosen)` into `reward`.
#[inline(always)]
fn hard_policy_row_n<const DIAGONALS: bool, const STAY: bool>(
    args: &HardRow<'_>,
    v_out: &mut [f32],
    destination: &mut [f32],
    reward: &mut [f32],
) {
    let w = v_out.len();
    let moves = if DIAGONALS { 8 } else { 4 };
    let n = moves + STAY as usize;
    let (mask, r) = (&args.mask[..w], &args.reward[..w]);
    let (reward, chosen) = (&mut reward[..w], &mut destination[..w]);
    let v_rows: [&[f32]; 3] = std::array::from_fn(|k| {
        let first = args.base + k * args.stride - args.stride - 1;
        &args.v[first..first + w + 2]
    });
    let cost: [f32; 9] = std::array::from_fn(|a| args.step_cost.get(a).copied().unwrap_or(0.0));
    let (gamma, slip, slip_share) = (args.gamma, args.slip, args.slip_share);
    for j in 0..w {
        let own = v_rows[1][j + 1];
        let m = mask[j] as u32;
        let mut next = [own; 9];
        let mut total = 0.0f32;
        for a in 0..moves {
            let (k, c) = PADDED_STEPS[a];
            next[a] = pick((m >> a) & 1 != 0, v_rows[k][j + c], own);
            total += next[a];
        }
        if STAY {
            total += own;
        }
        let q: [f32; 9] = std::array::from_fn(|a| {
            r[j] - cost[a] + gamma * ((1.0 - slip) * next[a] + slip_share * total)
        });
        let value = q[..n].iter().copied().fold(f32::NEG_INFINITY, larger);
        let (mut destination, mut chosen_cost) = (moves as f32, cost[n - 1]);
        for a in (0..n).rev() {
            let first = q[a] == value;
            let moved = a < moves && (m >> a) & 1 != 0;
            destination = pick(
                first,
                if moved { a as f32 } else { moves as f32 },
                destination,
            );
            chosen_cost = pick(first, cost[a], chosen_cost);
        }
        v_out[j] = value;
        reward[j] = r[j] - chosen_cost;
        chosen[j] = destination;
    }
}

/// The one-hot policy's evaluation reads besides [`EvaluateRow`] (whose `weight` then holds
/// the chosen destinations).
struct HardEvaluation<'a> {
    mask: &'a [u8],
    /// 1 with a STAY action, else 0.
    stay: f32,
    /// `gamma (1 - slip)`.
    move_gamma: f32,
    /// `gamma * slip / |A|`.
    slip_gamma: f32,
}

with_avx2!(evaluate_hard_row => evaluate_hard_row_any(
    args: &EvaluateRow<'_>,
    hard: &HardEvaluation<'_>,
    v_out: &mut [f32]
) -> f32);

#[inline(always)]
fn evaluate_hard_row_any<const FMA: bool>(
    args: &EvaluateRow<'_>,
    hard: &HardEvaluation<'_>,
    v_out: &mut [f32],
) -> f32 {
    match args.moves >= 8 {
        true => evaluate_hard_row_n::<FMA, true>(args, hard, v_out),
        false => evaluate_hard_row_n::<FMA, false>(args, hard, v_out),
    }
}

/// One row of a policy evaluation at alpha = 0, `V'(s) = r_pi(s) + gamma ((1 - eps)
/// V(chosen) + eps / |A| sum_a V(n_a))` (fixed cells copied); returns the largest new live
/// value.
#[inline(always)]
fn evaluate_hard_row_n<const FMA: bool, const DIAGONALS: bool>(
    args: &EvaluateRow<'_>,
    hard: &HardEvaluation<'_>,
    v_out: &mut [f32],
) -> f32 {
    let w = v_out.len();
    let moves = if DIAGONALS { 8 } else { 4 };
    let (flags, reward) = (&args.flags[..w], &args.reward[..w]);
    let (chosen, mask) = (&args.weight[..w], &hard.mask[..w]);
    let v_rows: [&[f32]; 3] = std::array::from_fn(|k| {
        let first = args.base + k * args.stride - args.stride - 1;
        &args.v[first..first + w + 2]
    });
    let mut top = ordered(f32::NEG_INFINITY);
    for j in 0..w {
        let own = v_rows[1][j + 1];
        let m = mask[j] as u32;
        let (mut total, mut next) = (hard.stay * own, own);
        for a in 0..moves {
            let (k, c) = PADDED_STEPS[a];
            let moved = pick((m >> a) & 1 != 0, v_rows[k][j + c], own);
            total += moved;
            next = pick(chosen[j] == a as f32, moved, next);
        }
        let value = madd::<FMA>(
            hard.move_gamma,
            next,
            madd::<FMA>(hard.slip_gamma, total, reward[j]),
        );
        let (fixed, live) = (flags[j] & FIXED != 0, flags[j] & LIVE != 0);
        let new = pick(fixed, own, value);
        v_out[j] = new;
        top = top.max(ordered(pick(live, new, f32::NEG_INFINITY)));
    }
    from_ordered(top)
}

/// What [`evaluate_row`] reads for one row of one task.
struct EvaluateRow<'a> {
    /// V of the input state, whole array.
    v: &'a [f32],
    /// Padded index of the row's first cell.
    base: usize,
    stride: usize,
    /// The row's flags.
    flags: &'a [u8],
    /// The row's [`NativeGridPolicy`] weights, `[destination][col]`.
    weight: &'a [f32],
    /// The row's `r_pi`.
    reward: &'a [f32],
    moves: usize,
}

with_avx2!(evaluate_row => evaluate_row_any(args: &EvaluateRow<'_>, v_out: &mut [f32]) -> f32);

#[inline(always)]
fn evaluate_row_any<const FMA: bool>(args: &EvaluateRow<'_>, v_out: &mut [f32]) -> f32 {
    match args.moves >= 8 {
        true => evaluate_row_n::<FMA, true>(args, v_out),
        false => evaluate_row_n::<FMA, false>(args, v_out),
    }
}

/// One row of a policy evaluation, `V'(s) = r_pi(s) + sum_d weight_d(s) V(d)` (fixed cells
/// copied), summed destination by destination into `v_out` (each a plain zip of rows, which
/// vectorises); returns the largest new live value (the row's next shift).
#[inline(always)]
fn evaluate_row_n<const FMA: bool, const DIAGONALS: bool>(
    args: &EvaluateRow<'_>,
    v_out: &mut [f32],
) -> f32 {
    let w = v_out.len();
    let moves = if DIAGONALS { 8 } else { 4 };
    let (flags, reward) = (&args.flags[..w], &args.reward[..w]);
    let v_rows: [&[f32]; 3] = std::array::from_fn(|k| {
        let first = args.base + k * args.stride - args.stride - 1;
        &args.v[first..first + w + 2]
    });
    let (planes, own) = args.weight[..(moves + 1) * w].split_at(moves * w);
    let v_own = &v_rows[1][1..w + 1];
    let own = &own[..w];
    for j in 0..w {
        v_out[j] = madd::<FMA>(own[j], v_own[j], reward[j]);
    }
    for (a, plane) in planes.chunks_exact(w).enumerate() {
        let (k, c) = PADDED_STEPS[a];
        let v = &v_rows[k][c..c + w];
        for j in 0..w {
            v_out[j] = madd::<FMA>(plane[j], v[j], v_out[j]);
        }
    }
    let mut top = ordered(f32::NEG_INFINITY);
    for j in 0..w {
        let (fixed, live) = (flags[j] & FIXED != 0, flags[j] & LIVE != 0);
        let new = pick(fixed, v_own[j], v_out[j]);
        v_out[j] = new;
        top = top.max(ordered(pick(live, new, f32::NEG_INFINITY)));
    }
    from_ordered(top)
}

/// What [`shared_row`] reads for one row.
struct SharedRow<'a> {
    /// V of the input state, whole array.
    v: &'a [f32],
    /// E of the input rows above, at and below the row (the window's padded rows).
    e_rows: [&'a [f32]; 3],
    /// Padded index of the row's first cell.
    base: usize,
    /// Padded row length.
    stride: usize,
    offset: &'a [isize],
    mask: &'a [u8],
    reward: &'a [f32],
    coefficients: &'a [f32; 9],
    /// Blocked moves by kind, from the row's first cell.
    blocked: &'a [u8],
    kind_weight: [f32; 3],
    stay_actions: f32,
    has_reward: bool,
    /// `gamma * slip / |A|`.
    slip_gamma: f32,
    /// `gamma (1 - slip) M_row - c_min`.
    constant: f32,
    alpha: f32,
}

/// `fn $name(args) -> ret` calling `$inner::<FMA>(args)` compiled for the widest vectors the
/// CPU has: AVX-512 (16 lanes, mask registers for the selects; XLA's peer uses it too), else
/// AVX2 + FMA, else the baseline (FMA = false).
macro_rules! with_avx2 {
    ($name:ident => $inner:ident($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                fn widest($($arg: $ty),*) -> $ret {
                    $inner::<true>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn wide($($arg: $ty),*) -> $ret {
                    $inner::<true>($($arg),*)
                }
                match *VECTORS {
                    // SAFETY: the CPU supports these features (checked once, in `VECTORS`).
                    Vectors::Avx512 => return unsafe { widest($($arg),*) },
                    // SAFETY: the CPU supports AVX2 and FMA (checked once, in `VECTORS`).
                    Vectors::Avx2 => return unsafe { wide($($arg),*) },
                    Vectors::Baseline => {}
                }
            }
            $inner::<false>($($arg),*)
        }
    };
}
pub(super) use with_avx2;

/// The vector width the row loops run at, widest last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Vectors {
    /// The build's baseline (SSE2 on x86-64), no FMA.
    Baseline,
    /// AVX2 + FMA, 8 lanes.
    Avx2,
    /// The AVX-512 subsets F, BW, DQ, VL (16 lanes) with AVX2 + FMA.
    Avx512,
}

/// The environment variable that caps the row loops' vectors (`avx512`, `avx2`, `baseline`):
/// how the tests run every path on one machine.
pub const VECTORS_VAR: &str = "SOFTVI_NATIVE_VECTORS";

/// The widest vectors this CPU has, capped by [`VECTORS_VAR`]; checked once.
pub static VECTORS: std::sync::LazyLock<Vectors> = std::sync::LazyLock::new(|| {
    #[cfg(target_arch = "x86_64")]
    let has = {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f")
            && has!("avx512bw")
            && has!("avx512dq")
            && has!("avx512vl")
            && has!("avx2")
            && has!("fma")
        {
            Vectors::Avx512
        } else if has!("avx2") && has!("fma") {
            Vectors::Avx2
        } else {
            Vectors::Baseline
        }
    };
    #[cfg(not(target_arch = "x86_64"))]
    let has = Vectors::Baseline;
    let cap = match std::env::var(VECTORS_VAR).as_deref() {
        Ok("baseline") => Vectors::Baseline,
        Ok("avx2") => Vectors::Avx2,
        Ok("avx512") | Err(_) => Vectors::Avx512,
        Ok(other) => {
            // Read once, where no error can be returned: said, not silently ignored.
            eprintln!(
                "warning: {VECTORS_VAR}={other:?} is not avx512, avx2 or baseline; ignored \
                 (the widest vectors this CPU has are used)"
            );
            Vectors::Avx512
        }
    };
    has.min(cap)
});

with_avx2!(shared_row => shared_row_any(
    args: &SharedRow<'_>,
    flags: &[u8],
    v_out: &mut [f32],
    sums: &mut [f32]
) -> Option<(RowStats, f32)>);

/// [`shared_row_n`] for the row's action set and reward.
#[inline(always)]
fn shared_row_any<const FMA: bool>(
    args: &SharedRow<'_>,
    flags: &[u8],
    v_out: &mut [f32],
    sums: &mut [f32],
) -> Option<(RowStats, f32)> {
    // Actions 0..4 are the orthogonal moves, 4..8 the diagonals, STAY last (never moves).
    match (args.offset.len() >= 8, args.has_reward) {
        (true, true) => shared_row_n::<FMA, true, true>(args, flags, v_out, sums),
        (true, false) => shared_row_n::<FMA, true, false>(args, flags, v_out, sums),
        (false, true) => shared_row_n::<FMA, false, true>(args, flags, v_out, sums),
        (false, false) => shared_row_n::<FMA, false, false>(args, flags, v_out, sums),
    }
}

with_avx2!(finish_row => finish_row_any(flags: &[u8], v_old: &[f32], v_out: &mut [f32]) -> (RowStats, f32));

with_avx2!(shared_exp_row => shared_exp_row_any(
    rate: f32,
    flags: &[u8],
    v: &[f32],
    shift: f32,
    e: &mut [f32]
) -> ());

/// Lanes of the per-lane accumulators of row reductions (one AVX2 register of f32): lane-wise
/// max and min vectorise where a single running max (an ordered reduction) does not.
const LANES: usize = 8;

/// `a` where `take`, else `b`, by bit masks: LLVM turns some `if` selects whose arms load
/// into branches, which stop the loop from vectorising; this never does.
#[inline(always)]
fn pick(take: bool, a: f32, b: f32) -> f32 {
    let mask = (take as u32).wrapping_neg();
    f32::from_bits((a.to_bits() & mask) | (b.to_bits() & !mask))
}

/// `a` if larger, else `b` (x86's `maxps`; NaN handling is done by the callers).
#[inline(always)]
fn larger(a: f32, b: f32) -> f32 {
    if a > b { a } else { b }
}

/// `a` if smaller, else `b`.
#[inline(always)]
fn smaller(a: f32, b: f32) -> f32 {
    if a < b { a } else { b }
}

/// `(dr + 1, dc + 1)` of the 8 moves in action order ([`MOVE_OFFSETS`]): the row of the
/// window and the column of a padded row each move reads.
const PADDED_STEPS: [(usize, usize); 8] = {
    let mut steps = [(0, 0); 8];
    let mut a = 0;
    while a < 8 {
        let (dr, dc) = MOVE_OFFSETS[a];
        steps[a] = ((dr + 1) as usize, (dc + 1) as usize);
        a += 1;
    }
    steps
};

/// The shared form over one row. Orthogonal moves are read unmasked: a blocked one points at
/// a wall or the padding, which hold V = E = 0, and the staying actions come in through
/// `blocked` (counts per kind) and STAY. Diagonals (with `DIAGONALS`) are masked: a move cut at a
/// corner points at a free cell.
#[inline(always)]
fn shared_row_n<const FMA: bool, const DIAGONALS: bool, const REWARD: bool>(
    args: &SharedRow<'_>,
    flags: &[u8],
    v_out: &mut [f32],
    sums: &mut [f32],
) -> Option<(RowStats, f32)> {
    let w = v_out.len();
    let flags = &flags[..w];
    let mut unsure = 0u32;
    // What `finish_row` computes, fused into this loop (a pass less over the row); the
    // reductions run on integer keys, which vectorise where f32 max and min do not.
    let (mut max_delta, mut max_value, mut updated) = (0u32, 0u32, 0u32);
    let (mut min_delta, mut top) = (ordered(f32::INFINITY), ordered(f32::NEG_INFINITY));
    let mask = &args.mask[..w];
    let reward = &args.reward[..w];
    let blocked = &args.blocked[..w];
    let [orthogonal_weight, diagonal_weight, stay_weight] = args.kind_weight;
    let sums = &mut sums[..w];
    // The three input rows around the row, padded (w + 2 cells: the cell at column j of a row
    // is its element j + 1), one base pointer each: with the moves' steps constant, every
    // neighbour load is one addressing mode off them, no register per move.
    let v_rows: [&[f32]; 3] = std::array::from_fn(|k| {
        let first = args.base + k * args.stride - args.stride - 1;
        &args.v[first..first + w + 2]
    });
    let e_rows: [&[f32]; 3] = std::array::from_fn(|k| &args.e_rows[k][..w + 2]);
    let coefficients: [f32; 8] = std::array::from_fn(|a| args.coefficients[a]);
    for j in 0..w {
        let m = mask[j] as u32;
        let b = blocked[j] as u32;
        let (orthogonal, diagonal) = ((b & 15) as f32, (b >> 4) as f32);
        let mut total = (orthogonal + diagonal + args.stay_actions) * v_rows[1][j + 1];
        let stay_weight = madd::<FMA>(
            orthogonal,
            orthogonal_weight,
            madd::<FMA>(diagonal, diagonal_weight, stay_weight),
        );
        let mut sum = stay_weight * e_rows[1][j + 1];
        for a in 0..4 {
            let (k, c) = PADDED_STEPS[a];
            total += v_rows[k][j + c];
            sum = madd::<FMA>(coefficients[a], e_rows[k][j + c], sum);
        }
        if DIAGONALS {
            for a in 4..8 {
                let (k, c) = PADDED_STEPS[a];
                let legal = (m >> a) & 1 != 0;
                total += pick(legal, v_rows[k][j + c], 0.0);
                sum += pick(legal, coefficients[a] * e_rows[k][j + c], 0.0);
            }
        }
        sums[j] = sum;
        // ln of a sum outside the trusted range is garbage; the caller replaces it. `&`, not
        // `&&`: no branch in the loop, so that it vectorises.
        #[allow(clippy::manual_range_contains)] // `contains` is `&&`.
        let trusted = (sum >= SUM_LOW) & (sum <= SUM_HIGH);
        unsure |= (!trusted & (flags[j] & FIXED == 0)) as u32;
        let safe = pick(trusted, sum, 1.0);
        let r = if REWARD { reward[j] } else { 0.0 };
        let base = madd::<FMA>(args.slip_gamma, total, r + args.constant);
        let candidate = madd::<FMA>(args.alpha, ln_f32::<FMA>(safe), base);
        let (fixed, live) = (flags[j] & FIXED != 0, flags[j] & LIVE != 0);
        let old = v_rows[1][j + 1];
        let new = pick(fixed, old, candidate);
        v_out[j] = new;
        let delta = new - old;
        // A NaN compares false: counted as infinite.
        let finite = (delta.abs() <= f32::MAX) & (new.abs() <= f32::MAX);
        let abs_delta = pick(finite, delta.abs(), f32::INFINITY);
        let abs_value = pick(finite, new.abs(), f32::INFINITY);
        // Non-negative f32 order as their bits do.
        max_delta = max_delta.max(pick(fixed, 0.0, abs_delta).to_bits());
        max_value = max_value.max(pick(fixed, 0.0, abs_value).to_bits());
        let signed_delta = pick(finite, delta, f32::NEG_INFINITY);
        min_delta = min_delta.min(ordered(pick(fixed, f32::INFINITY, signed_delta)));
        top = top.max(ordered(pick(live, new, f32::NEG_INFINITY)));
        updated += !fixed as u32;
    }
    if unsure != 0 {
        return None;
    }
    let top = from_ordered(top);
    if updated == 0 {
        return Some((RowStats::default(), top));
    }
    let stats = RowStats {
        max_abs_delta: f32::from_bits(max_delta),
        min_delta: from_ordered(min_delta),
        max_delta: f32::from_bits(max_delta),
        max_abs_value: f32::from_bits(max_value),
        active: true,
    };
    Some((stats, top))
}

/// An i32 that orders as the f32 `x` does (NaN above +inf).
#[inline(always)]
fn ordered(x: f32) -> i32 {
    let bits = x.to_bits() as i32;
    bits ^ (((bits >> 31) as u32) >> 1) as i32
}

/// The f32 of [`ordered`]'s key.
#[inline(always)]
fn from_ordered(key: i32) -> f32 {
    f32::from_bits((key ^ (((key >> 31) as u32) >> 1) as i32) as u32)
}

/// Keeps fixed cells at their old value and returns the row's residual statistics over the
/// updated cells (f32, with non-finite values kept as +inf in `max_abs_value`) and the largest
/// new live value (-inf for none), the row's next shift.
#[inline(always)]
fn finish_row_any<const FMA: bool>(
    flags: &[u8],
    v_old: &[f32],
    v_out: &mut [f32],
) -> (RowStats, f32) {
    let w = v_out.len();
    let (flags, v_old) = (&flags[..w], &v_old[..w]);
    let mut lanes = StatLanes {
        max_delta: [0.0f32; LANES],
        min_delta: [f32::INFINITY; LANES],
        max_value: [0.0f32; LANES],
        updated: [0; LANES],
        top: [f32::NEG_INFINITY; LANES],
    };
    let chunks = flags
        .chunks_exact(LANES)
        .zip(v_old.chunks_exact(LANES))
        .zip(v_out.chunks_exact_mut(LANES));
    for ((flags, v_old), v_out) in chunks {
        for l in 0..LANES {
            finish_cell(flags[l], v_old[l], &mut v_out[l], &mut lanes, l);
        }
    }
    let full = w / LANES * LANES;
    for j in full..w {
        finish_cell(flags[j], v_old[j], &mut v_out[j], &mut lanes, 0);
    }
    let top = lanes.top.into_iter().fold(f32::NEG_INFINITY, larger);
    if lanes.updated.iter().all(|&u| u == 0) {
        return (RowStats::default(), top);
    }
    let max_abs_delta = lanes.max_delta.into_iter().fold(0.0, larger);
    let stats = RowStats {
        max_abs_delta,
        min_delta: lanes.min_delta.into_iter().fold(f32::INFINITY, smaller),
        max_delta: max_abs_delta,
        max_abs_value: lanes.max_value.into_iter().fold(0.0, larger),
        active: true,
    };
    (stats, top)
}

/// Per-lane residual accumulators of [`finish_row_any`].
struct StatLanes {
    max_delta: [f32; LANES],
    min_delta: [f32; LANES],
    max_value: [f32; LANES],
    updated: [u32; LANES],
    top: [f32; LANES],
}

/// One cell of [`finish_row_any`] into lane `l`.
#[inline(always)]
fn finish_cell(flags: u8, v_old: f32, v_out: &mut f32, lanes: &mut StatLanes, l: usize) {
    let fixed = flags & FIXED != 0;
    let new = if fixed { v_old } else { *v_out };
    *v_out = new;
    let delta = new - v_old;
    // A NaN compares false: counted as infinite. `&`, not `&&`: no branch.
    let finite = (delta.abs() <= f32::MAX) & (new.abs() <= f32::MAX);
    let abs_delta = if finite { delta.abs() } else { f32::INFINITY };
    let abs_value = if finite { new.abs() } else { f32::INFINITY };
    let delta = if finite { delta } else { f32::NEG_INFINITY };
    lanes.max_delta[l] = larger(if fixed { 0.0 } else { abs_delta }, lanes.max_delta[l]);
    lanes.min_delta[l] = smaller(
        if fixed { f32::INFINITY } else { delta },
        lanes.min_delta[l],
    );
    lanes.max_value[l] = larger(if fixed { 0.0 } else { abs_value }, lanes.max_value[l]);
    lanes.updated[l] += !fixed as u32;
    lanes.top[l] = larger(
        pick(flags & LIVE != 0, new, f32::NEG_INFINITY),
        lanes.top[l],
    );
}

/// The shift a row's largest live value `top` gives: itself, or 0 for a row with no live
/// cell (never read) or a runaway value (whose sums then leave the trusted range).
fn shift_of(top: f32) -> f32 {
    if top.is_finite() { top } else { 0.0 }
}

/// `E = exp(rate (V - shift))` over one row's live cells, 0 elsewhere.
#[inline(always)]
fn shared_exp_row_any<const FMA: bool>(
    rate: f32,
    flags: &[u8],
    v: &[f32],
    shift: f32,
    e: &mut [f32],
) {
    let w = v.len();
    let (flags, e) = (&flags[..w], &mut e[..w]);
    for j in 0..w {
        let x = exp_f32::<FMA>(rate * (v[j] - shift));
        e[j] = pick(flags[j] & LIVE != 0, x, 0.0);
    }
}
