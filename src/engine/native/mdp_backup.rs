//! The native engine's CSR sweep: `shaders/mdp_backup.wgsl::mdp_backup` in f32 on the CPU,
//! blocks of states split over threads, inner loops over a block's [`LANES`] states that LLVM
//! vectorises (gathers on AVX2 and AVX-512).
//!
//! Layout (sliced ELL): states go in blocks of [`LANES`]; the rows `s * A + a` of one block
//! and one action form a *slice* of the block's longest row's length, stored entry-major
//! (`[entry][lane]`), so that entry `k` of the block's [`LANES`] rows is one vector load. Short
//! rows are padded with probability 0 on a *sentinel* state whose value is always 0, so a
//! padded entry adds `0 * 0` (never `0 * -inf`). Values are `[task][state]` with a task
//! stride of `padded + 1`: the states rounded up to whole blocks (the extra ones fixed at 0),
//! then the sentinel.
//!
//! Where the values outgrow a core's L2 cache ([`COLUMN_BLOCKED_FROM`]), gathers at random
//! successors mostly miss it; the successor states are then cut into *column blocks* of at
//! most [`COLUMN_BLOCK_STATES`], each slice into one *segment* per column block (each lane's
//! successors in that block, padded to the segment's longest lane), and a unit of work sums
//! its rows one column block at a time, its segments of a column block stored together: the
//! block's values stay cached while the unit streams them. Each segment continues its rows'
//! sums, so a row's sum is the same chain of products whichever way it is read.
//!
//! A model whose rows are mostly full (where the sliced layout would take more memory than
//! the dense one, about half full) is stored *dense* instead: `P` as `[s * A + a][s']` in
//! f32, the `[S*A, S]` matrix read by contiguous dot products (no successor indices, no
//! gathers: half the bytes of a full sliced row), with one block's rows read for every task
//! while they are in cache.
//!
//! The optimistic backup shares one exponential per successor state, as the grid engine shares
//! one per cell: `E(s') = exp(gamma (V(s') - M) / alpha)` with `M` the task's largest finite
//! V, computed once per sweep, so a row is the dot product `mass = sum_k p_k E(s'_k)` like the
//! expected backup's and `Q = r + gamma M + alpha ln mass`. Where `mass` falls below
//! `SUM_LOW` (every successor far below `M`, or at -inf) the row is recomputed with its own
//! largest successor (`optimistic_row`, the reference's form), so the result never depends
//! on the shortcut.

// Lane loops over fixed-size arrays are what LLVM turns into vectors.
#![allow(clippy::needless_range_loop)]

use std::sync::Mutex;

use super::fast_math::{exp_f32, ln_f32, madd};
use super::grid_backup::{RowStats, VECTORS, Vectors, extrapolate_padded, on_threads, with_avx2};
use super::{huge_pages, rows_on_threads};
use crate::engine::cpu::mdp_occupancy::occupancy_inflow;
use crate::engine::cpu::residual_reduce::SweepStats;
use crate::engine::cpu::{mdp_action_values, write_policy};
use crate::engine::layout::{MdpInputs, SLICE_LANES, dense_transitions};
use crate::engine::options::Backup;
use crate::engine::solution::Real;
use crate::world::mdp::Transpose;

/// States per block: one slice entry is one 8-lane vector (AVX2's f32 width; AVX-512 runs
/// the same layout, its gathers being no wider in throughput).
pub const LANES: usize = 8;
const _: () = assert!(
    LANES == SLICE_LANES,
    "the density rule pads rows as this layout does"
);

/// Blocks per unit of work a thread takes from the queue (sliced layout).
const UNIT_BLOCKS: usize = 128;

/// Values (the stride: states, padding and sentinel) above which a sweep reads them one
/// column block at a time: 2 MiB of f32, a core's L2 cache on the machines measured, past
/// which gathers at random successors mostly miss it (`docs/performance.md`: measured at
/// 4 x 10^5 to 2 x 10^6 states with 20 successors per row; below, one block is faster).
pub const COLUMN_BLOCKED_FROM: usize = 1 << 19;

/// Successor states per column block (the last one shorter): 1 MiB of values, which stay in
/// L2 while a unit's rows gather from them. A power of two: the build finds a successor's
/// column block with a shift.
pub const COLUMN_BLOCK_STATES: usize = 1 << COLUMN_BLOCK_SHIFT;
const COLUMN_BLOCK_SHIFT: u32 = 18;

/// Blocks per unit of work where there are several column blocks: a unit reads each column
/// block's values in a pass of its own, and a large unit reads each cached line many times
/// per pass (32,768 states; measured 1.4x faster than 2,048 blocks' units at 10^6 states).
const COLUMN_UNIT_BLOCKS: usize = 4096;

/// Groups of source states a dense occupancy push sums separately (fixed, so that the sum's
/// order does not depend on the thread count).
pub const PUSH_GROUPS: usize = 16;

/// Bytes of dense rows per unit of work: a unit's rows stay in a core's L2 cache while every
/// task reads them.
const DENSE_UNIT_BYTES: usize = 256 << 10;

/// A shared-exponential row mass below this is recomputed per row: every term that underflowed
/// (or sits on a -inf successor) is below 1.2e-38, so it moves a mass of at least `SUM_LOW` by
/// under 1e-18 relatively.
const SUM_LOW: f32 = 1e-20;

/// The kernel inputs of a general MDP in the sliced layout, built once per solve from
/// [`MdpInputs`] (every array converted to f32 here).
#[derive(Clone, Debug)]
pub struct NativeMdp {
    /// States S.
    pub states: usize,
    /// Actions A.
    pub actions: usize,
    /// Tasks B.
    pub tasks: usize,
    /// Blocks of [`LANES`] states.
    blocks: usize,
    /// States rounded up to whole blocks; the sentinel's index.
    padded: usize,
    /// Per-task stride of every value array: `padded + 1`.
    pub stride: usize,
    /// Whether `probs` holds the dense matrix (`segment_start` and `cols` then empty).
    dense: bool,
    /// Blocks per unit of work.
    unit_blocks: usize,
    /// Column blocks K: the successor states cut into ranges of [`COLUMN_BLOCK_STATES`] (the
    /// last one shorter) where there are more than [`COLUMN_BLOCKED_FROM`] values, else 1.
    column_blocks: usize,
    /// Segment starts in entries (each [`LANES`] wide), in storage order `[unit][column
    /// block][block of the unit][action]` and one past the end ([`NativeMdp::segment`]). The
    /// slice of a block and an action is its K segments, segment `j` holding each lane's
    /// successors in column block `j` (in the row's order) padded to its longest lane; a
    /// unit's segments of one column block lie together, so a sweep streams them while that
    /// block's values stay cached. With one column block: `[block][action]`.
    segment_start: Vec<usize>,
    /// Sliced: where each block's chosen rows start in a [`NativePolicy`] at alpha = 0, in
    /// entries: `[block]` and one past the end, each block's slot as long as its longest
    /// slice (empty when dense).
    rows_start: Vec<usize>,
    /// Successor state per slice entry and lane, `[entry][lane]` (the sentinel on padding).
    cols: Vec<u32>,
    /// Sliced: `P(s'|s,a)` per slice entry and lane, `[entry][lane]` (0 on padding). Dense:
    /// `P(s'|s,a)` `[s * A + a][s']`.
    probs: Vec<f32>,
    /// `r(s,a)`, `[task][block][action][lane]` (0 on the padding states).
    reward: Vec<f32>,
    /// Whether a state's value stays fixed (terminal, excluded, padding, sentinel),
    /// `[task][state]` with the values' stride.
    fixed: Vec<bool>,
    alpha: f32,
    gamma: f32,
    backup: Backup,
}

/// What the optimistic backup shares per sweep: `E` `[task][state]` (values' stride) and `M`
/// per task.
struct Shared {
    e: Vec<f32>,
    top: Vec<f32>,
}

/// A thread's unit of work: blocks `first_block..` of every task, written into `out[task]`
/// (and their Q into `q[task]`, when recorded).
struct Unit<'a> {
    first_block: usize,
    out: Vec<&'a mut [f32]>,
    q: Vec<&'a mut [f32]>,
    policy: Vec<PolicySlots<'a>>,
}

impl<'a> Unit<'a> {
    /// `output` (`[task]` of `stride` values, the first `padded` of them `blocks` blocks of
    /// [`LANES`] states) cut into units of [`UNIT_BLOCKS`] blocks.
    fn split(
        output: &'a mut [f32],
        (stride, padded, blocks): (usize, usize, usize),
        unit_blocks: usize,
    ) -> Vec<Self> {
        let mut per_task: Vec<_> = output
            .chunks_mut(stride)
            .map(|v| v[..padded].chunks_mut(unit_blocks * LANES))
            .collect();
        (0..blocks.div_ceil(unit_blocks))
            .map(|u| Unit {
                first_block: u * unit_blocks,
                out: per_task.iter_mut().filter_map(Iterator::next).collect(),
                q: Vec::new(),
                policy: Vec::new(),
            })
            .collect()
    }

    /// [`Unit::split`] with `q` `[task][padded state][action]` cut alongside.
    fn split_with_q(
        output: &'a mut [f32],
        q: &'a mut [f32],
        (stride, padded, blocks): (usize, usize, usize),
        (unit_blocks, actions): (usize, usize),
    ) -> Vec<Self> {
        let mut units = Self::split(output, (stride, padded, blocks), unit_blocks);
        let mut per_task: Vec<_> = q
            .chunks_mut(padded * actions)
            .map(|q| q.chunks_mut(unit_blocks * LANES * actions))
            .collect();
        for unit in &mut units {
            unit.q = per_task.iter_mut().filter_map(Iterator::next).collect();
        }
        units
    }
}

/// A unit's share of one task's [`NativePolicy`] (unit-relative; empty where unused).
struct PolicySlots<'a> {
    reward: &'a mut [f32],
    cols: &'a mut [u32],
    probs: &'a mut [f32],
    length: &'a mut [u32],
    chosen: &'a mut [u32],
    pi: &'a mut [f32],
}

/// `x` (`[task]` of equal parts) cut into `[unit][task]` pieces of `len(unit)` entries each;
/// every piece empty when `x` is.
fn split_units<T>(
    x: &mut [T],
    tasks: usize,
    units: usize,
    len: impl Fn(usize) -> usize,
) -> Vec<Vec<&mut [T]>> {
    let mut out: Vec<Vec<&mut [T]>> = (0..units).map(|_| Vec::with_capacity(tasks)).collect();
    if x.is_empty() {
        for unit in &mut out {
            unit.extend((0..tasks).map(|_| -> &mut [T] { &mut [] }));
        }
        return out;
    }
    let per_task = x.len() / tasks;
    for mut rest in x.chunks_mut(per_task) {
        for (u, unit) in out.iter_mut().enumerate() {
            let (piece, tail) = std::mem::take(&mut rest).split_at_mut(len(u));
            unit.push(piece);
            rest = tail;
        }
    }
    out
}

/// The last unit's pieces of [`split_units`]' output.
fn last<T>(pieces: &mut Vec<Vec<T>>) -> Vec<T> {
    pieces.pop().expect("one piece per unit")
}

/// What an improvement of modified policy iteration leaves for the evaluation sweeps after
/// it ([`NativeMdp::improve`], [`NativeMdp::evaluate`]), per task. At alpha = 0 the chosen
/// action's rows alone: in the sliced layout copied out into one slice per block (so that an
/// evaluation streams S rows, not S x A), in the dense one the chosen action's index. At
/// alpha > 0 the policy's probabilities.
#[derive(Clone, Debug)]
pub struct NativePolicy {
    /// `r_pi(s) = sum_a pi(a|s) (r(s,a) - alpha log pi(a|s))`, `[task][state]` in the
    /// values' layout (-inf where V' is: the state stays there).
    reward: Vec<f32>,
    /// Alpha 0, sliced: the chosen rows' successors, `[task][entry][lane]` from
    /// `NativeMdp::rows_start` (the sentinel on padding).
    cols: Vec<u32>,
    /// Alpha 0, sliced: their probabilities, as `cols` (0 on padding).
    probs: Vec<f32>,
    /// Alpha 0, sliced: entries used per block, `[task][block]`.
    length: Vec<u32>,
    /// Alpha 0, dense: the chosen action, `[task][padded state]`.
    chosen: Vec<u32>,
    /// Alpha > 0: `pi(a|s)`, `[task][block][action][lane]`.
    pi: Vec<f32>,
}

impl NativeMdp {
    /// An empty policy of the right shape for [`NativeMdp::improve`] to fill.
    pub fn new_policy(&self) -> NativePolicy {
        let (tasks, n) = (self.tasks, self.actions);
        let hard = self.alpha == 0.0;
        let sliced_hard = hard && !self.dense;
        let entries = self.rows_start.last().copied().unwrap_or(0) * LANES;
        NativePolicy {
            reward: vec![0.0; tasks * self.stride],
            cols: vec![self.padded as u32; if sliced_hard { tasks * entries } else { 0 }],
            probs: vec![0.0; if sliced_hard { tasks * entries } else { 0 }],
            length: vec![0; if sliced_hard { tasks * self.blocks } else { 0 }],
            chosen: vec![
                0;
                if hard && self.dense {
                    tasks * self.padded
                } else {
                    0
                }
            ],
            pi: vec![
                0.0;
                if hard {
                    0
                } else {
                    tasks * self.blocks * n * LANES
                }
            ],
        }
    }

    /// One improvement of modified policy iteration: the full sweep `output = T(input)`
    /// ([`NativeMdp::sweep`], the same statistics) that also leaves its policy in `policy`
    /// (the expected backup only, [`crate::engine::options::Method::Mpi`]).
    pub fn improve(
        &self,
        input: &[f32],
        output: &mut [f32],
        policy: &mut NativePolicy,
        frozen: &[bool],
        threads: usize,
    ) -> Vec<SweepStats> {
        assert_eq!(
            self.backup,
            Backup::Expected,
            "MPI needs the expected backup"
        );
        let shape = (self.stride, self.padded, self.blocks);
        let mut units = Unit::split(output, shape, self.unit_blocks);
        let (ub, tasks, n) = (self.unit_blocks, self.tasks, self.actions);
        let count = units.len();
        let blocks_of = |u: usize| u * ub..((u + 1) * ub).min(self.blocks);
        let entries_of = |u: usize| {
            let b = blocks_of(u);
            (self.rows_start[b.end] - self.rows_start[b.start]) * LANES
        };
        let states_of = |u: usize| blocks_of(u).len() * LANES;
        let NativePolicy {
            reward,
            cols,
            probs,
            length,
            chosen,
            pi,
        } = policy;
        // The reward's task stride has the sentinel past the padded states.
        let mut reward = split_units(reward, tasks, count + 1, |u| match u < count {
            true => states_of(u),
            false => 1,
        });
        let mut cols = split_units(cols, tasks, count, entries_of);
        let mut probs = split_units(probs, tasks, count, entries_of);
        let mut length = split_units(length, tasks, count, |u| blocks_of(u).len());
        let mut chosen = split_units(chosen, tasks, count, states_of);
        let mut pi = split_units(pi, tasks, count, |u| blocks_of(u).len() * n * LANES);
        reward.pop(); // the sentinels' pieces
        for unit in units.iter_mut().rev() {
            let (r, c, p) = (last(&mut reward), last(&mut cols), last(&mut probs));
            let (l, a, w) = (last(&mut length), last(&mut chosen), last(&mut pi));
            unit.policy = (r.into_iter().zip(c).zip(p).zip(l).zip(a).zip(w))
                .map(
                    |(((((reward, cols), probs), length), chosen), pi)| PolicySlots {
                        reward,
                        cols,
                        probs,
                        length,
                        chosen,
                        pi,
                    },
                )
                .collect();
        }
        let queue = Mutex::new(units.into_iter());
        let queue = &queue;
        on_threads(self.tasks, threads, || {
            self.sweep_units(input, None, frozen, queue)
        })
    }

    /// One policy-evaluation sweep of modified policy iteration, `output = T_pi(input) =
    /// r_pi + gamma P_pi input` under the policy of the last [`NativeMdp::improve`] (no exp or
    /// log; at alpha = 0 the chosen rows alone), over every task not `frozen` (copied), on
    /// `threads` threads. No statistics: convergence is tested on improvements only.
    pub fn evaluate(
        &self,
        policy: &NativePolicy,
        input: &[f32],
        output: &mut [f32],
        frozen: &[bool],
        threads: usize,
    ) {
        let shape = (self.stride, self.padded, self.blocks);
        let units = Unit::split(output, shape, self.unit_blocks);
        let queue = Mutex::new(units.into_iter());
        let queue = &queue;
        let work = || {
            let mut sums = Vec::new();
            loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some(mut unit) = next else { break };
                for (t, out) in unit.out.iter_mut().enumerate() {
                    let at = t * self.stride + unit.first_block * LANES;
                    if frozen[t] {
                        out.copy_from_slice(&input[at..at + out.len()]);
                        continue;
                    }
                    let args = EvaluateArgs {
                        mdp: self,
                        policy,
                        task: t,
                        first_block: unit.first_block,
                        input: &input[t * self.stride..(t + 1) * self.stride],
                    };
                    evaluate_unit(&args, out, &mut sums);
                }
            }
            vec![RowStats::default(); self.tasks]
        };
        on_threads(self.tasks, threads, work);
    }
}

impl NativeMdp {
    /// The sliced inputs of `inputs`.
    // The model's probabilities and rewards are f32 today and become f64 (issue 26): the
    // explicit `as f32` compiles either way.
    #[allow(clippy::unnecessary_cast)]
    pub fn new(inputs: &MdpInputs) -> Self {
        let mdp = inputs.mdp;
        let (states, actions, tasks) = (mdp.states, mdp.actions, mdp.tasks);
        let blocks = states.div_ceil(LANES);
        let padded = blocks * LANES;
        let stride = padded + 1;
        // Successors are read as i32 offsets (`slice_dot`).
        assert!(
            padded < i32::MAX as usize,
            "{states} states do not fit i32 offsets"
        );
        // Every successor (and the sentinel) lies in one of the column blocks.
        let column_blocks = match stride > COLUMN_BLOCKED_FROM {
            true => stride.div_ceil(COLUMN_BLOCK_STATES),
            false => 1,
        };
        // A successor's column block (every index is below 2^31: one block of all).
        let column_shift = match column_blocks {
            1 => 31,
            _ => COLUMN_BLOCK_SHIFT,
        };
        // The sliced layout's unit (a dense model's is set below).
        let unit_blocks = match column_blocks {
            1 => UNIT_BLOCKS,
            _ => COLUMN_UNIT_BLOCKS,
        };
        let (mut segment_start, mut cols, probs, dense, mut rows_start);
        if let Some(p) = mdp.transitions.dense_rows() {
            // Kept dense by the model (at least half full): rounded to f32 on every core,
            // never through the CSR.
            (segment_start, cols, dense, rows_start) = (Vec::new(), Vec::new(), true, Vec::new());
            probs = dense_f32(p);
        } else {
            let csr = mdp.csr();
            let row = |s: usize, a: usize| {
                let row = s * actions + a;
                csr.indptr[row] as usize..csr.indptr[row + 1] as usize
            };
            // Each lane's entries per column block, then each segment's longest lane,
            // `[block][action][column block]`.
            let mut counts = vec![0usize; LANES * column_blocks];
            let mut longest = Vec::with_capacity(blocks * actions * column_blocks);
            for b in 0..blocks {
                for a in 0..actions {
                    counts.fill(0);
                    for (l, s) in (b * LANES..(b * LANES + LANES).min(states)).enumerate() {
                        if column_blocks == 1 {
                            counts[l] = row(s, a).len();
                            continue;
                        }
                        for &c in &csr.indices[row(s, a)] {
                            counts[l * column_blocks + (c >> column_shift) as usize] += 1;
                        }
                    }
                    longest.extend((0..column_blocks).map(|j| {
                        (0..LANES)
                            .map(|l| counts[l * column_blocks + j])
                            .max()
                            .unwrap_or(0)
                    }));
                }
            }
            // The segments in storage order.
            segment_start = Vec::with_capacity(longest.len() + 1);
            segment_start.push(0);
            for first in (0..blocks).step_by(unit_blocks) {
                for j in 0..column_blocks {
                    for b in first..(first + unit_blocks).min(blocks) {
                        for a in 0..actions {
                            let len = longest[(b * actions + a) * column_blocks + j];
                            segment_start.push(segment_start.last().copied().unwrap_or(0) + len);
                        }
                    }
                }
            }
            let slice_len = |b: usize, a: usize| -> usize {
                longest[(b * actions + a) * column_blocks..][..column_blocks]
                    .iter()
                    .sum()
            };
            let entries = segment_start.last().copied().unwrap_or(0);
            rows_start = vec![0usize];
            for b in 0..blocks {
                let longest = (0..actions).map(|a| slice_len(b, a)).max().unwrap_or(0);
                rows_start.push(rows_start[b] + longest);
            }
            // The one rule the GPU engine chooses by too.
            dense = dense_transitions(mdp);
            if dense {
                (segment_start, cols, rows_start) = (Vec::new(), Vec::new(), Vec::new());
                let mut rows = vec![0.0f32; states * actions * states];
                huge_pages(&mut rows);
                for (row, out) in rows.chunks_exact_mut(states).enumerate() {
                    let range = csr.indptr[row] as usize..csr.indptr[row + 1] as usize;
                    for (&j, &p) in csr.indices[range.clone()].iter().zip(&csr.probs[range]) {
                        out[j as usize] += p as f32;
                    }
                }
                probs = rows;
            } else {
                cols = vec![0u32; entries * LANES];
                huge_pages(&mut cols);
                let mut sliced = vec![0.0f32; entries * LANES];
                huge_pages(&mut sliced);
                // Units in storage order, each filled (its pages faulted in) by one thread:
                // 10^8 entries take one core seconds to fault in on these machines.
                let shape = (blocks, actions, column_blocks, unit_blocks);
                let units = blocks.div_ceil(unit_blocks);
                let unit_start = |u: usize| match u < units {
                    true => segment_start[segment_index(shape, (u * unit_blocks, 0, 0))],
                    false => entries,
                };
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                let per_thread = units.div_ceil(threads).max(1);
                std::thread::scope(|scope| {
                    let (mut cols_rest, mut probs_rest) = (&mut cols[..], &mut sliced[..]);
                    for first_unit in (0..units).step_by(per_thread) {
                        let last_unit = (first_unit + per_thread).min(units);
                        let base = unit_start(first_unit);
                        let len = (unit_start(last_unit) - base) * LANES;
                        let (cols, rest) = std::mem::take(&mut cols_rest).split_at_mut(len);
                        cols_rest = rest;
                        let (probs, rest) = std::mem::take(&mut probs_rest).split_at_mut(len);
                        probs_rest = rest;
                        let (segment_start, row) = (&segment_start, &row);
                        let states = first_unit * unit_blocks * LANES
                            ..(last_unit * unit_blocks * LANES).min(states);
                        scope.spawn(move || {
                            cols.fill(padded as u32);
                            // Each lane's next free entry per column block.
                            let mut next = vec![0usize; column_blocks];
                            for s in states {
                                let (b, lane) = (s / LANES, s % LANES);
                                for a in 0..actions {
                                    for (j, next) in next.iter_mut().enumerate() {
                                        *next =
                                            segment_start[segment_index(shape, (b, a, j))] - base;
                                    }
                                    if column_blocks == 1 {
                                        // One segment: entries in row order (no cursor).
                                        for (k, i) in row(s, a).enumerate() {
                                            cols[(next[0] + k) * LANES + lane] = csr.indices[i];
                                            probs[(next[0] + k) * LANES + lane] =
                                                csr.probs[i] as f32;
                                        }
                                        continue;
                                    }
                                    for i in row(s, a) {
                                        let k =
                                            &mut next[(csr.indices[i] >> column_shift) as usize];
                                        cols[*k * LANES + lane] = csr.indices[i];
                                        probs[*k * LANES + lane] = csr.probs[i] as f32;
                                        *k += 1;
                                    }
                                }
                            }
                        });
                    }
                });
                probs = sliced;
            }
        }
        let unit_blocks = match dense {
            true => (DENSE_UNIT_BYTES / (4 * LANES * actions * states)).max(1),
            false => unit_blocks,
        };
        let mut reward = vec![0.0f32; tasks * blocks * actions * LANES];
        let mut fixed = vec![true; tasks * stride];
        for t in 0..tasks {
            for s in 0..states {
                let (b, lane) = (s / LANES, s % LANES);
                for a in 0..actions {
                    reward[((t * blocks + b) * actions + a) * LANES + lane] =
                        mdp.reward[(t * states + s) * actions + a] as f32;
                }
                fixed[t * stride + s] = inputs.fixed[t * states + s];
            }
        }
        Self {
            states,
            actions,
            tasks,
            blocks,
            padded,
            stride,
            dense,
            unit_blocks,
            column_blocks,
            segment_start,
            rows_start,
            cols,
            probs,
            reward,
            fixed,
            alpha: inputs.alpha as f32,
            gamma: inputs.gamma as f32,
            backup: inputs.backup,
        }
    }

    /// Whether the transitions are stored dense (`[S*A, S]`) rather than sliced.
    pub fn is_dense(&self) -> bool {
        self.dense
    }

    /// Column blocks of the sliced layout: 1 up to [`COLUMN_BLOCKED_FROM`] values, else one
    /// per [`COLUMN_BLOCK_STATES`] (the last one shorter).
    pub fn column_blocks(&self) -> usize {
        self.column_blocks
    }

    /// The entries of segment `j` (column block `j`) of block `b` and action `a`.
    fn segment(&self, b: usize, a: usize, j: usize) -> std::ops::Range<usize> {
        let shape = (
            self.blocks,
            self.actions,
            self.column_blocks,
            self.unit_blocks,
        );
        let at = segment_index(shape, (b, a, j));
        self.segment_start[at]..self.segment_start[at + 1]
    }

    /// The segments of the slice of block `b` and action `a`, in column-block order.
    fn slice(&self, b: usize, a: usize) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        (0..self.column_blocks).map(move |j| self.segment(b, a, j))
    }

    /// The stored entries `(s', p)` of row `(s, a)` (none for a padding state past S; in the
    /// sliced layout, without the padding on the sentinel).
    fn row_entries(&self, s: usize, a: usize) -> Vec<(usize, f32)> {
        if s >= self.states {
            return Vec::new();
        }
        if self.dense {
            let row = &self.probs[(s * self.actions + a) * self.states..][..self.states];
            return (row.iter().enumerate())
                .filter(|(_, p)| **p != 0.0)
                .map(|(j, &p)| (j, p))
                .collect();
        }
        let (block, lane) = (s / LANES, s % LANES);
        let sentinel = self.padded as u32;
        (self.slice(block, a))
            .flat_map(|segment| segment.map(|k| k * LANES + lane))
            .filter(|&i| self.cols[i] != sentinel)
            .map(|i| (self.cols[i] as usize, self.probs[i]))
            .collect()
    }

    /// States rounded up to whole blocks of [`LANES`]: the state axis of recorded Q.
    pub fn padded_states(&self) -> usize {
        self.padded
    }

    /// A dense model's finite-horizon occupancy step (the push form of
    /// [`mdp_occupancy_threads`], no transpose): `d_out(s') = gamma sum_{s,a} d_in(s) pi(a|s)
    /// P(s'|s,a)`, `d_in`/`d_out` `[task][state]` (f64), `policy` `[task][state][action]`.
    /// The source states go in [`PUSH_GROUPS`] fixed groups, taken by `threads` threads, each
    /// group summing into its own f32 copy of `d_out` (one row's product streams `P(.|s,a)`
    /// once for every task); the copies are added up in f64 in group order, so the bits do
    /// not depend on the thread count. Panics on a sliced model.
    pub fn dense_push<T: Real + Sync>(
        &self,
        policy: &[T],
        d_in: &[f64],
        d_out: &mut [f64],
        threads: usize,
    ) {
        assert!(self.dense, "dense_push on a sliced model");
        let (s_n, n, tasks) = (self.states, self.actions, self.tasks);
        let per = s_n.div_ceil(PUSH_GROUPS);
        let mut partials = vec![0.0f32; PUSH_GROUPS * tasks * s_n];
        let queue = Mutex::new(partials.chunks_mut(tasks * s_n).enumerate());
        let work = || {
            loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some((group, acc)) = next else { break };
                for s in group * per..((group + 1) * per).min(s_n) {
                    for a in 0..n {
                        let row = &self.probs[(s * n + a) * s_n..][..s_n];
                        for t in 0..tasks {
                            let i = t * s_n + s;
                            let w = d_in[i] * policy[i * n + a].to_f64();
                            if w != 0.0 {
                                push_row(w as f32, row, &mut acc[t * s_n..][..s_n]);
                            }
                        }
                    }
                }
            }
        };
        std::thread::scope(|scope| {
            for _ in 1..threads.clamp(1, PUSH_GROUPS) {
                scope.spawn(work);
            }
            work();
        });
        let partials: Vec<&[f32]> = partials.chunks(tasks * s_n).collect();
        let gamma = self.gamma as f64;
        for (i, out) in d_out.iter_mut().enumerate() {
            *out = gamma * partials.iter().map(|p| p[i] as f64).sum::<f64>();
        }
    }

    /// `v` `[task][state]` (f64) in the values' layout (0 on padding and the sentinel).
    pub fn padded_values(&self, v: &[f64]) -> Vec<f32> {
        pad(v, self.tasks, self.states, self.stride)
    }

    /// Values in the padded layout back to `[task][state]` in f64.
    pub fn unpadded(&self, v: &[f32]) -> Vec<f64> {
        unpad(v, self.tasks, self.states, self.stride)
    }

    /// One sweep `output = T(input)` over every task not `frozen` (`[task]`: those are copied
    /// and report no updated state), on `threads` threads; per-task residual statistics.
    /// Arrays are in the values' layout.
    pub fn sweep(
        &self,
        input: &[f32],
        output: &mut [f32],
        frozen: &[bool],
        threads: usize,
    ) -> Vec<SweepStats> {
        self.sweep_recording_q(input, output, None, frozen, threads)
    }

    /// [`NativeMdp::sweep`] that also writes the sweep's `Q(s,a)` into `q`
    /// `[task][padded state][action]` (`tasks * padded_states() * actions`; frozen tasks'
    /// entries are left as they are).
    pub fn sweep_recording_q(
        &self,
        input: &[f32],
        output: &mut [f32],
        q: Option<&mut [f32]>,
        frozen: &[bool],
        threads: usize,
    ) -> Vec<SweepStats> {
        let shared = (self.backup == Backup::Optimistic).then(|| self.shared_exp(input, frozen));
        let shared = shared.as_ref();
        let shape = (self.stride, self.padded, self.blocks);
        let units = match q {
            Some(q) => {
                assert_eq!(q.len(), self.tasks * self.padded * self.actions);
                Unit::split_with_q(output, q, shape, (self.unit_blocks, self.actions))
            }
            None => Unit::split(output, shape, self.unit_blocks),
        };
        // Threads take units as they finish (not a fixed share each): on a machine shared with
        // other work, a thread that loses its core does not hold the sweep up.
        let queue = Mutex::new(units.into_iter());
        let queue = &queue;
        on_threads(self.tasks, threads, || {
            self.sweep_units(input, shared, frozen, queue)
        })
    }

    /// `E` and `M` of every task not `frozen` (zeros for frozen ones, which do not sweep).
    fn shared_exp(&self, v: &[f32], frozen: &[bool]) -> Shared {
        let mut e = vec![0.0f32; v.len()];
        let mut top = vec![0.0f32; self.tasks];
        let rate = self.gamma / self.alpha;
        for t in (0..self.tasks).filter(|&t| !frozen[t]) {
            let range = t * self.stride..t * self.stride + self.states;
            let m = v[range.clone()]
                .iter()
                .filter(|x| x.is_finite())
                .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            top[t] = if m.is_finite() { m } else { 0.0 };
            shared_exp_row(rate, top[t], &v[range.clone()], &mut e[range]);
        }
        Shared { e, top }
    }

    /// One thread's units of a sweep, taken from `queue` until it is empty; statistics per
    /// task.
    fn sweep_units(
        &self,
        input: &[f32],
        shared: Option<&Shared>,
        frozen: &[bool],
        queue: &Mutex<std::vec::IntoIter<Unit<'_>>>,
    ) -> Vec<RowStats> {
        let mut stats = vec![RowStats::default(); self.tasks];
        let mut q = vec![[0.0f32; LANES]; self.actions];
        let mut sums = Vec::new();
        loop {
            let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
            let Some(mut unit) = next else { break };
            for (t, out) in unit.out.iter_mut().enumerate() {
                let at = t * self.stride + unit.first_block * LANES;
                if frozen[t] {
                    // A task that stopped iterating keeps its values.
                    out.copy_from_slice(&input[at..at + out.len()]);
                    continue;
                }
                let args = UnitArgs {
                    mdp: self,
                    task: t,
                    first_block: unit.first_block,
                    input: &input[t * self.stride..(t + 1) * self.stride],
                    shared: shared
                        .map(|s| (&s.e[t * self.stride..(t + 1) * self.stride], s.top[t])),
                };
                let q_out = unit.q.get_mut(t).map(|q| &mut **q);
                let policy = unit.policy.get_mut(t);
                let scratch = (&mut q[..], &mut sums);
                stats[t] = stats[t].combine(sweep_unit(&args, out, scratch, q_out, policy));
            }
        }
        stats
    }

    /// Twin of `extrapolate` on the values' layout (see
    /// [`crate::engine::cpu::extrapolate::extrapolate`]).
    pub fn extrapolate(&self, v: &mut [f32], v_prev: &[f32], backup: &mut [f32], factors: &[f64]) {
        extrapolate_padded(self.stride, |i| self.fixed[i], v, v_prev, backup, factors);
    }
}

/// What [`sweep_unit`] reads for one task.
struct UnitArgs<'a> {
    mdp: &'a NativeMdp,
    task: usize,
    first_block: usize,
    /// V of the task, values' layout.
    input: &'a [f32],
    /// `E` of the task and its `M` (optimistic backup only).
    shared: Option<(&'a [f32], f32)>,
}

with_avx2!(shared_exp_row => shared_exp_row_any(rate: f32, top: f32, v: &[f32], e: &mut [f32]) -> ());

/// `e = exp(rate (v - top))`, 0 where `v` is -inf.
#[inline(always)]
fn shared_exp_row_any<const FMA: bool>(rate: f32, top: f32, v: &[f32], e: &mut [f32]) {
    for (e, &v) in e.iter_mut().zip(v) {
        let x = exp_f32::<FMA>(rate * (v - top));
        *e = if v == f32::NEG_INFINITY { 0.0 } else { x };
    }
}

with_avx2!(sweep_unit => sweep_unit_any(
    args: &UnitArgs<'_>,
    out: &mut [f32],
    scratch: (&mut [[f32; LANES]], &mut Vec<[f32; LANES]>),
    q_out: Option<&mut [f32]>,
    policy: Option<&mut PolicySlots<'_>>
) -> RowStats);

/// The new values of one unit's blocks of one task into `out` (the unit's states); `scratch`
/// is one lane vector per action and (sliced) the unit's row sums `[block][action]`; `q_out` (`[state][action]` of the unit's states) receives Q when
/// given, `policy` the improvement's policy ([`keep_policy`]).
#[inline(always)]
fn sweep_unit_any<const FMA: bool>(
    args: &UnitArgs<'_>,
    out: &mut [f32],
    (q, sums): (&mut [[f32; LANES]], &mut Vec<[f32; LANES]>),
    mut q_out: Option<&mut [f32]>,
    mut policy: Option<&mut PolicySlots<'_>>,
) -> RowStats {
    let m = args.mdp;
    let (alpha, gamma, n) = (m.alpha, m.gamma, m.actions);
    let mut stats = RowStats::default();
    let x = args.shared.map_or(args.input, |(e, _)| e);
    // Every successor index is below the stride (padding points at the sentinel).
    assert_eq!(x.len(), m.stride);
    // Sliced: the unit's row sums first ([`unit_row_sums`]).
    if !m.dense {
        unit_row_sums::<FMA>(m, (args.first_block, out.len() / LANES), x, sums);
    }
    // A dense block's row sums, `[state][action]`.
    let mut dots = vec![0.0f32; if m.dense { LANES * n } else { 0 }];
    for (i, v_out) in out.chunks_exact_mut(LANES).enumerate() {
        let b = args.first_block + i;
        let rewards = &m.reward[(args.task * m.blocks + b) * n * LANES..][..n * LANES];
        if m.dense {
            // The block's rows in memory order (state, then action), each sum into `q[a][l]`
            // until the action loop below reads it; lanes past S have no rows (their states
            // are fixed).
            let lanes = LANES.min(m.states - b * LANES);
            let rows = &m.probs[b * LANES * n * m.states..][..lanes * n * m.states];
            let dots = &mut dots[..lanes * n];
            dense_block_dots(rows, &x[..m.states], dots);
            for (k, &dot) in dots.iter().enumerate() {
                q[k % n][k / n] = dot;
            }
            for qa in q.iter_mut() {
                qa[lanes..].fill(0.0);
            }
        }
        for a in 0..n {
            let dot = match m.dense {
                true => q[a],
                false => sums[i * n + a],
            };
            let r = &rewards[a * LANES..(a + 1) * LANES];
            q[a] = match args.shared {
                None => std::array::from_fn(|l| madd::<FMA>(gamma, dot[l], r[l])),
                Some((_, top)) => {
                    let mut qa: [f32; LANES] = std::array::from_fn(|l| {
                        r[l] + gamma * top + alpha * ln_f32::<FMA>(dot[l].max(SUM_LOW))
                    });
                    for l in 0..LANES {
                        if dot[l].is_nan() || dot[l] < SUM_LOW {
                            let entries = m.row_entries(b * LANES + l, a);
                            qa[l] = r[l] + optimistic_row(args.input, &entries, alpha, gamma);
                        }
                    }
                    qa
                }
            };
        }
        if let Some(q_out) = q_out.as_deref_mut() {
            let rows = &mut q_out[i * LANES * n..][..LANES * n];
            for (l, row) in rows.chunks_exact_mut(n).enumerate() {
                for (a, x) in row.iter_mut().enumerate() {
                    *x = q[a][l];
                }
            }
        }
        let values = soft_max_lanes::<FMA>(alpha, &q[..n]);
        if let Some(policy) = policy.as_deref_mut() {
            keep_policy::<FMA>(m, (args.first_block, i), rewards, &q[..n], &values, policy);
        }
        let at = b * LANES;
        let fixed = &m.fixed[args.task * m.stride + at..][..LANES];
        let v_in = &args.input[at..at + LANES];
        for l in 0..LANES {
            if fixed[l] {
                v_out[l] = v_in[l];
                continue;
            }
            v_out[l] = values[l];
            // A state every action of which may step into an excluded one has value -inf for
            // good; it is not a runaway.
            if values[l] != f32::NEG_INFINITY {
                observe(&mut stats, v_in[l], values[l]);
            }
        }
    }
    stats
}

/// Block `i` (of the unit starting at `first_block`) of an improvement's policy into `p`:
/// at alpha = 0 the first action reaching the block's `values` (the hard max) with its reward
/// and its rows (copied out of the slices the sweep just read, padded to the block's longest
/// chosen row), at alpha > 0 `pi = exp((Q - V') / alpha)` and `r_pi = V' - sum_a pi (Q - r)`
/// (the entropy term without a log). `rewards` `[action][lane]`, `q` `[action][lane]`.
#[inline(always)]
fn keep_policy<const FMA: bool>(
    m: &NativeMdp,
    (first_block, i): (usize, usize),
    rewards: &[f32],
    q: &[[f32; LANES]],
    values: &[f32; LANES],
    p: &mut PolicySlots<'_>,
) {
    let (n, b) = (m.actions, first_block + i);
    let r_pi = &mut p.reward[i * LANES..(i + 1) * LANES];
    if m.alpha == 0.0 {
        let chosen: [usize; LANES] =
            std::array::from_fn(|l| (0..n).position(|a| q[a][l] == values[l]).unwrap_or(0));
        for l in 0..LANES {
            r_pi[l] = rewards[chosen[l] * LANES + l];
        }
        if m.dense {
            for l in 0..LANES {
                p.chosen[i * LANES + l] = chosen[l] as u32;
            }
            return;
        }
        // Each lane's chosen row as its slice's entries in column-block order (padding
        // included: probability 0 on the sentinel).
        let slice_len = |a: usize| m.slice(b, a).map(|e| e.len()).sum::<usize>();
        let used = (0..LANES).map(|l| slice_len(chosen[l])).max().unwrap_or(0);
        p.length[i] = used as u32;
        let base = m.rows_start[b] - m.rows_start[first_block];
        for l in 0..LANES {
            let from = m.slice(b, chosen[l]).flatten();
            let mut k = 0;
            for src in from {
                let at = (base + k) * LANES + l;
                (p.cols[at], p.probs[at]) = (m.cols[src * LANES + l], m.probs[src * LANES + l]);
                k += 1;
            }
            for k in k..used {
                let at = (base + k) * LANES + l;
                (p.cols[at], p.probs[at]) = (m.padded as u32, 0.0);
            }
        }
        return;
    }
    let mut expected = [0.0f32; LANES];
    for a in 0..n {
        let pi = &mut p.pi[(i * n + a) * LANES..][..LANES];
        for l in 0..LANES {
            let x = exp_f32::<FMA>((q[a][l] - values[l]) / m.alpha);
            let live = q[a][l] != f32::NEG_INFINITY && values[l] != f32::NEG_INFINITY;
            pi[l] = if live { x } else { 0.0 };
            if pi[l] > 0.0 {
                expected[l] = madd::<FMA>(pi[l], q[a][l] - rewards[a * LANES + l], expected[l]);
            }
        }
    }
    for l in 0..LANES {
        r_pi[l] = values[l] - expected[l];
    }
}

/// What [`evaluate_unit`] reads for one task.
struct EvaluateArgs<'a> {
    mdp: &'a NativeMdp,
    policy: &'a NativePolicy,
    task: usize,
    first_block: usize,
    /// V of the task, values' layout.
    input: &'a [f32],
}

with_avx2!(evaluate_unit => evaluate_unit_any(
    args: &EvaluateArgs<'_>,
    out: &mut [f32],
    sums: &mut Vec<[f32; LANES]>
) -> ());

/// One unit's blocks of one task's evaluation sweep into `out`: `r_pi + gamma P_pi V`; `sums`
/// is scratch for the unit's row sums (sliced, alpha > 0).
#[inline(always)]
fn evaluate_unit_any<const FMA: bool>(
    args: &EvaluateArgs<'_>,
    out: &mut [f32],
    sums: &mut Vec<[f32; LANES]>,
) {
    let (m, p, t) = (args.mdp, args.policy, args.task);
    let (n, x) = (m.actions, args.input);
    assert_eq!(x.len(), m.stride);
    let lanes_of = |b: usize| LANES.min(m.states.saturating_sub(b * LANES));
    let dense_dots = |b: usize, action: &dyn Fn(usize) -> usize| -> [f32; LANES] {
        std::array::from_fn(|l| match l < lanes_of(b) {
            true => {
                let row = (b * LANES + l) * n + action(l);
                dense_dot::<FMA>(&m.probs[row * m.states..][..m.states], &x[..m.states])
            }
            false => 0.0,
        })
    };
    // Sliced at alpha > 0: every row's sum first, as the sweep takes them.
    if m.alpha > 0.0 && !m.dense {
        unit_row_sums::<FMA>(m, (args.first_block, out.len() / LANES), x, sums);
    }
    for (i, v_out) in out.chunks_exact_mut(LANES).enumerate() {
        let b = args.first_block + i;
        let at = b * LANES;
        let dot = if m.alpha == 0.0 {
            if m.dense {
                let chosen = &p.chosen[t * m.padded + at..][..LANES];
                dense_dots(b, &|l| chosen[l] as usize)
            } else {
                let entries = p.cols.len() / m.tasks;
                let first = t * entries + m.rows_start[b] * LANES;
                let used = p.length[t * m.blocks + b] as usize * LANES;
                slice_dot::<FMA>(&p.cols[first..][..used], &p.probs[first..][..used], x)
            }
        } else {
            let mut acc = [0.0f32; LANES];
            for a in 0..n {
                let dot = match m.dense {
                    true => dense_dots(b, &|_| a),
                    false => sums[i * n + a],
                };
                let pi = &p.pi[((t * m.blocks + b) * n + a) * LANES..][..LANES];
                for l in 0..LANES {
                    // An action the policy never takes may lead to -inf: 0 * -inf is NaN.
                    let term = if pi[l] > 0.0 { pi[l] * dot[l] } else { 0.0 };
                    acc[l] += term;
                }
            }
            acc
        };
        let r_pi = &p.reward[t * m.stride + at..][..LANES];
        let fixed = &m.fixed[t * m.stride + at..][..LANES];
        for l in 0..LANES {
            v_out[l] = match fixed[l] {
                true => x[at + l],
                false => madd::<FMA>(m.gamma, dot[l], r_pi[l]),
            };
        }
    }
}

/// `sum_k p_k x(s'_k)` of every row of the unit of `blocks` blocks from `first_block` into
/// `sums` `[block of the unit][action]`, one column block at a time (the unit's segments in
/// storage order), each segment continuing its row's sum: the products of one pass over
/// each slice in the same order, so the bits do not depend on the unit (with one column
/// block: one pass over the unit's slices in order).
#[inline(always)]
fn unit_row_sums<const FMA: bool>(
    m: &NativeMdp,
    (first_block, blocks): (usize, usize),
    x: &[f32],
    sums: &mut Vec<[f32; LANES]>,
) {
    let per_column_block = blocks * m.actions;
    sums.clear();
    sums.resize(per_column_block, [0.0; LANES]);
    let shape = (m.blocks, m.actions, m.column_blocks, m.unit_blocks);
    let at = segment_index(shape, (first_block, 0, 0));
    for j in 0..m.column_blocks {
        let first = at + j * per_column_block;
        let starts = &m.segment_start[first..=first + per_column_block];
        for (sum, entries) in sums.iter_mut().zip(starts.windows(2)) {
            let cols = &m.cols[entries[0] * LANES..entries[1] * LANES];
            let probs = &m.probs[entries[0] * LANES..entries[1] * LANES];
            *sum = slice_dot_from::<FMA>(*sum, cols, probs, x);
        }
    }
}

/// Where segment `(b, a, j)` (block, action, column block) of a sliced layout of `blocks`
/// blocks, `actions` actions, `column_blocks` column blocks and units of `unit_blocks` blocks
/// lies in storage order (`[unit][column block][block of the unit][action]`).
fn segment_index(
    (blocks, actions, column_blocks, unit_blocks): (usize, usize, usize, usize),
    (b, a, j): (usize, usize, usize),
) -> usize {
    let first = b / unit_blocks * unit_blocks;
    let unit_len = unit_blocks.min(blocks - first);
    (first * column_blocks + j * unit_len + (b - first)) * actions + a
}

/// `sum_k p_k x(s'_k)` of a slice's [`LANES`] rows, entry by entry (`cols` and `probs`
/// `[entry][lane]`).
#[inline(always)]
fn slice_dot<const FMA: bool>(cols: &[u32], probs: &[f32], x: &[f32]) -> [f32; LANES] {
    slice_dot_from::<FMA>([0.0; LANES], cols, probs, x)
}

/// [`slice_dot`] continuing the sums `acc`.
#[inline(always)]
fn slice_dot_from<const FMA: bool>(
    mut acc: [f32; LANES],
    cols: &[u32],
    probs: &[f32],
    x: &[f32],
) -> [f32; LANES] {
    // Whole vectors as arrays: no bounds checks in the lane loop, so it becomes one gather
    // and one fused multiply-add per entry.
    let (cols, _) = cols.as_chunks::<LANES>();
    let (probs, _) = probs.as_chunks::<LANES>();
    for (c, p) in cols.iter().zip(probs) {
        for l in 0..LANES {
            // SAFETY: `NativeMdp::new` and `NativeOccupancy::new` write states (< S) and the
            // sentinel (the stride's last index, below i32::MAX: asserted there) only, and the
            // callers assert `x.len()` is the stride. Read as i32: a signed 32-bit offset is
            // what a gather takes (as u32 LLVM widens every index to 64 bits one by one).
            let xs = unsafe { *x.as_ptr().offset(c[l] as i32 as isize) };
            acc[l] = madd::<FMA>(p[l], xs, acc[l]);
        }
    }
    acc
}

/// `p` rounded to f32, on every core (10^8 entries: a fraction of the time one core takes to
/// fault the pages in and convert).
fn dense_f32(p: &[f64]) -> Vec<f32> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Zeroed pages are mapped on first write: each thread faults in its own part.
    let mut out = vec![0.0f32; p.len()];
    huge_pages(&mut out);
    let per = p.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (dst, src) in out.chunks_mut(per).zip(p.chunks(per)) {
            scope.spawn(move || dst.iter_mut().zip(src).for_each(|(d, &x)| *d = x as f32));
        }
    });
    out
}

with_avx2!(dense_block_dots => dense_block_dots_any(rows: &[f32], x: &[f32], out: &mut [f32]) -> ());

/// `out[k] = sum_s' rows[k][s'] x(s')` for every row of `rows` `[row][s']` (`x` `[s']`),
/// [`DOT_ROWS`] rows at a time. A function of its own: inlined into the sweep, LLVM left
/// these loops scalar (half the speed).
#[inline(always)]
fn dense_block_dots_any<const FMA: bool>(rows: &[f32], x: &[f32], out: &mut [f32]) {
    let states = x.len();
    let groups = rows.chunks_exact(DOT_ROWS * states);
    let rest = groups.remainder();
    let (out_groups, out_rest) = out.split_at_mut(out.len() / DOT_ROWS * DOT_ROWS);
    for (group, o) in groups.zip(out_groups.chunks_exact_mut(DOT_ROWS)) {
        o.copy_from_slice(&dense_dots::<FMA, DOT_ROWS>(group, x));
    }
    for (row, o) in rest.chunks_exact(states).zip(out_rest) {
        *o = dense_dots::<FMA, 1>(row, x)[0];
    }
}

/// `sum_k p_k x(s'_k)` of one dense row `p` `[s']` (`x` `[s']`): [`dense_dots`] of one row.
#[inline(always)]
fn dense_dot<const FMA: bool>(p: &[f32], x: &[f32]) -> f32 {
    dense_dots::<FMA, 1>(p, x)[0]
}

/// Rows [`dense_dots`] reads together: eight rows of eight running sums (one vector each)
/// stream faster than one row of 32 or 64 sums (1.3-1.5x measured, AVX2 and AVX-512).
const DOT_ROWS: usize = 8;

/// `sum_k p_k x(s'_k)` of `R` consecutive dense rows `p` `[row][s']` with one `x` `[s']`:
/// each load of `x` serves every row, each row keeps [`LANES`] running sums. A row's sum
/// does not depend on `R` (the same sums in the same order), so grouping never changes bits.
#[inline(always)]
fn dense_dots<const FMA: bool, const R: usize>(p: &[f32], x: &[f32]) -> [f32; R] {
    let states = x.len();
    let rows: [&[[f32; LANES]]; R] =
        std::array::from_fn(|r| p[r * states..(r + 1) * states].as_chunks::<LANES>().0);
    let (x_wide, x_rest) = x.as_chunks::<LANES>();
    // Each row cut to `x_wide`'s length: the loop's indexing then needs no bounds checks,
    // which kept LLVM from vectorising it.
    let rows = rows.map(|row| &row[..x_wide.len()]);
    let mut acc = [[0.0f32; LANES]; R];
    for (c, x) in x_wide.iter().enumerate() {
        for r in 0..R {
            let p = &rows[r][c];
            for i in 0..LANES {
                acc[r][i] = madd::<FMA>(p[i], x[i], acc[r][i]);
            }
        }
    }
    let tail = x_wide.len() * LANES;
    // Each row's sums read by value (indexing `acc` from a closure kept it in memory, and the
    // loop above scalar).
    let mut out = [0.0f32; R];
    for r in 0..R {
        let mut lanes = acc[r];
        let mut width = LANES;
        while width > 1 {
            width /= 2;
            for i in 0..width {
                lanes[i] += lanes[i + width];
            }
        }
        let rest = &p[r * states + tail..(r + 1) * states];
        out[r] = (rest.iter().zip(x_rest)).fold(lanes[0], |sum, (&p, &x)| madd::<FMA>(p, x, sum));
    }
    out
}

with_avx2!(push_row => push_row_any(w: f32, row: &[f32], acc: &mut [f32]) -> ());

/// `acc += w row` (one dense row's share of an occupancy push).
#[inline(always)]
fn push_row_any<const FMA: bool>(w: f32, row: &[f32], acc: &mut [f32]) {
    for (a, &p) in acc.iter_mut().zip(row) {
        *a = madd::<FMA>(w, p, *a);
    }
}

/// `alpha ln sum_k p_k exp(gamma V(s'_k) / alpha)` of one row's `entries` `(s', p)`, with its
/// own largest successor value (the reference's form; -inf when every successor is at -inf).
fn optimistic_row(v: &[f32], entries: &[(usize, f32)], alpha: f32, gamma: f32) -> f32 {
    let top = (entries.iter())
        .map(|&(c, _)| v[c])
        .fold(f32::NEG_INFINITY, f32::max);
    if top == f32::NEG_INFINITY {
        return f32::NEG_INFINITY;
    }
    let mass: f32 = (entries.iter())
        .map(|&(c, p)| p * ((v[c] - top) * gamma / alpha).exp())
        .sum();
    gamma * top + alpha * mass.ln()
}

/// Per lane, `alpha ln sum_a exp(Q_a / alpha)` computed stably (`max_a Q_a` at alpha = 0, -inf
/// when every Q is -inf): [`crate::engine::cpu::soft_max`] over [`LANES`] states.
#[inline(always)]
fn soft_max_lanes<const FMA: bool>(alpha: f32, q: &[[f32; LANES]]) -> [f32; LANES] {
    let mut top = [f32::NEG_INFINITY; LANES];
    for qa in q {
        for l in 0..LANES {
            top[l] = top[l].max(qa[l]);
        }
    }
    if alpha == 0.0 {
        return top;
    }
    let mut total = [0.0f32; LANES];
    for qa in q {
        for l in 0..LANES {
            let e = exp_f32::<FMA>((qa[l] - top[l]) / alpha);
            total[l] += if qa[l] == f32::NEG_INFINITY { 0.0 } else { e };
        }
    }
    std::array::from_fn(|l| {
        let v = madd::<FMA>(alpha, ln_f32::<FMA>(total[l]), top[l]);
        if top[l] == f32::NEG_INFINITY {
            top[l]
        } else {
            v
        }
    })
}

/// Adds one updated state to `stats`, as [`SweepStats::observe`] does in f64.
#[inline(always)]
fn observe(stats: &mut RowStats, v_old: f32, v_new: f32) {
    let delta = v_new - v_old;
    stats.active = true;
    if !(delta.is_finite() && v_new.is_finite()) {
        stats.max_abs_value = f32::INFINITY;
        stats.max_abs_delta = f32::INFINITY;
        return;
    }
    stats.max_abs_delta = stats.max_abs_delta.max(delta.abs());
    stats.min_delta = stats.min_delta.min(delta);
    stats.max_delta = stats.max_delta.max(delta);
    stats.max_abs_value = stats.max_abs_value.max(v_new.abs());
}

/// [`crate::engine::cpu::mdp_policy`] (f64, from the f32 values `v` `[task][state]`) with the
/// states split over `threads` threads: `[task][state][action]`, Q itself with `write_q`.
pub fn mdp_policy_threads<T: Real + Send>(
    inputs: &MdpInputs,
    v: &[f64],
    write_q: bool,
    threads: usize,
) -> Vec<T> {
    let mdp = inputs.mdp;
    let n = mdp.actions;
    let mut policy = vec![T::default(); mdp.tasks * mdp.states * n];
    let fill = |q: &mut Vec<f64>, index: usize, row: &mut [T]| {
        if !inputs.fixed[index] {
            let (task, s) = (index / mdp.states, index % mdp.states);
            mdp_action_values(inputs, task, s, v, q);
            write_policy(inputs.alpha, q, write_q, row);
        }
    };
    rows_on_threads(&mut policy, n, threads, || vec![0.0; n], fill);
    policy
}

/// [`crate::engine::cpu::mdp_occupancy()`]'s finite-horizon step (no base; f64, from the f32
/// policy) with the target states `[task][state]` split over `threads` threads: `d_out(s') =
/// gamma sum d_in(s) pi(a|s) P(s'|s,a)` over the transitions into `s'`.
pub fn mdp_occupancy_threads<T: Real + Sync>(
    inputs: &MdpInputs,
    transpose: &Transpose,
    policy: &[T],
    d_in: &[f64],
    d_out: &mut [f64],
    threads: usize,
) {
    let fill = |_: &mut (), index: usize, x: &mut [f64]| {
        x[0] = inputs.gamma * occupancy_inflow(inputs, transpose, policy, None, d_in, index);
    };
    rows_on_threads(d_out, 1, threads, || (), fill);
}

/// The discounted occupancy's pull (`shaders/mdp_occupancy.wgsl::mdp_occupancy` with
/// `WEIGHTED`) in f32 on the values' layout: `d_out(s') = base(s') + gamma sum d_in(s)
/// pi(a|s) P(s'|s,a)` over the transitions into `s'`, in the sliced layout of [`NativeMdp`]
/// with one slice per block of successor states. Built once per occupancy solve.
#[derive(Clone, Debug)]
pub struct NativeOccupancy {
    tasks: usize,
    states: usize,
    blocks: usize,
    padded: usize,
    /// Per-task stride of every array: `padded + 1` (the sentinel last, always 0).
    pub stride: usize,
    /// Slice starts in entries, `[block]` and one past the end.
    slice_start: Vec<usize>,
    /// Source state of each entry, `[entry][lane]` (the sentinel on padding).
    cols: Vec<u32>,
    /// `pi(a|s) P(s'|s,a)` of each entry, `[task][entry][lane]` (0 on padding).
    weights: Vec<f32>,
    gamma: f32,
}

impl NativeOccupancy {
    /// The pull of `inputs`' MDP under the stationary policy `policy` `[task][state][action]`
    /// (zero rows on states that stop, as [`mdp_policy_threads`] writes them).
    // The transposed probabilities become f64 with the model's (issue 26).
    #[allow(clippy::unnecessary_cast)]
    pub fn new(
        inputs: &MdpInputs,
        transpose: &crate::world::mdp::Transpose,
        policy: &[f32],
    ) -> Self {
        let mdp = inputs.mdp;
        let (states, n, tasks) = (mdp.states, mdp.actions, mdp.tasks);
        let blocks = states.div_ceil(LANES);
        let padded = blocks * LANES;
        // Sources are read as i32 offsets (`slice_dot`).
        assert!(
            padded < i32::MAX as usize,
            "{states} states do not fit i32 offsets"
        );
        let row_len = |s: usize| (transpose.indptr[s + 1] - transpose.indptr[s]) as usize;
        let mut slice_start = Vec::with_capacity(blocks + 1);
        slice_start.push(0);
        for b in 0..blocks {
            let longest = (b * LANES..(b * LANES + LANES).min(states))
                .map(row_len)
                .max()
                .unwrap_or(0);
            slice_start.push(slice_start[b] + longest);
        }
        let entries = slice_start[blocks] * LANES;
        let mut cols = vec![padded as u32; entries];
        let mut weights = vec![0.0f32; tasks * entries];
        for s in 0..states {
            let (b, lane) = (s / LANES, s % LANES);
            let range = transpose.indptr[s] as usize..transpose.indptr[s + 1] as usize;
            for (k, i) in range.enumerate() {
                let row = transpose.rows[i] as usize;
                let at = (slice_start[b] + k) * LANES + lane;
                cols[at] = (row / n) as u32;
                for t in 0..tasks {
                    weights[t * entries + at] =
                        policy[t * states * n + row] * transpose.probs[i] as f32;
                }
            }
        }
        Self {
            tasks,
            states,
            blocks,
            padded,
            stride: padded + 1,
            slice_start,
            cols,
            weights,
            gamma: inputs.gamma as f32,
        }
    }

    /// `[task][state]` (f64) in the padded layout.
    pub fn padded(&self, x: &[f64]) -> Vec<f32> {
        pad(x, self.tasks, self.states, self.stride)
    }

    /// The padded layout back to `[task][state]` in f64.
    pub fn unpadded(&self, x: &[f32]) -> Vec<f64> {
        unpad(x, self.tasks, self.states, self.stride)
    }

    /// One pull `d_out = base + gamma P_pi^T d_in` over every task not `frozen` (copied), on
    /// `threads` threads; per-task residual statistics.
    pub fn sweep(
        &self,
        base: &[f32],
        d_in: &[f32],
        d_out: &mut [f32],
        frozen: &[bool],
        threads: usize,
    ) -> Vec<SweepStats> {
        let shape = (self.stride, self.padded, self.blocks);
        let units = Unit::split(d_out, shape, UNIT_BLOCKS);
        let queue = Mutex::new(units.into_iter());
        let queue = &queue;
        let work = move || {
            let mut stats = vec![RowStats::default(); self.tasks];
            loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some(mut unit) = next else { break };
                for (t, out) in unit.out.iter_mut().enumerate() {
                    let at = t * self.stride + unit.first_block * LANES;
                    if frozen[t] {
                        out.copy_from_slice(&d_in[at..at + out.len()]);
                        continue;
                    }
                    let args = PullArgs {
                        pull: self,
                        first_block: unit.first_block,
                        d_in: &d_in[t * self.stride..(t + 1) * self.stride],
                        base: &base[t * self.stride..(t + 1) * self.stride],
                        weights: &self.weights[t * self.cols.len()..(t + 1) * self.cols.len()],
                    };
                    stats[t] = stats[t].combine(pull_unit(&args, out));
                }
            }
            stats
        };
        on_threads(self.tasks, threads, work)
    }

    /// Twin of `extrapolate` on the padded layout (nothing is fixed).
    pub fn extrapolate(&self, d: &mut [f32], d_prev: &[f32], backup: &mut [f32], factors: &[f64]) {
        extrapolate_padded(self.stride, |_| false, d, d_prev, backup, factors);
    }
}

/// `x` `[task][state]` (f64) in the padded layout of `stride` entries per task (0 on the
/// padding and the sentinel): the layout of [`NativeMdp`]'s values and
/// [`NativeOccupancy`]'s occupancy.
fn pad(x: &[f64], tasks: usize, states: usize, stride: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; tasks * stride];
    for t in 0..tasks {
        for s in 0..states {
            out[t * stride + s] = x[t * states + s] as f32;
        }
    }
    out
}

/// The padded layout back to `[task][state]` in f64 (the inverse of [`pad`]).
fn unpad(x: &[f32], tasks: usize, states: usize, stride: usize) -> Vec<f64> {
    (0..tasks)
        .flat_map(|t| x[t * stride..][..states].iter().map(|&v| v as f64))
        .collect()
}

/// What [`pull_unit`] reads for one task.
struct PullArgs<'a> {
    pull: &'a NativeOccupancy,
    first_block: usize,
    d_in: &'a [f32],
    base: &'a [f32],
    /// The task's weights, `[entry][lane]`.
    weights: &'a [f32],
}

with_avx2!(pull_unit => pull_unit_any(args: &PullArgs<'_>, out: &mut [f32]) -> RowStats);

/// The new occupancy of one unit's blocks of one task into `out`.
#[inline(always)]
fn pull_unit_any<const FMA: bool>(args: &PullArgs<'_>, out: &mut [f32]) -> RowStats {
    let p = args.pull;
    let mut stats = RowStats::default();
    assert_eq!(args.d_in.len(), p.stride);
    for (i, d_out) in out.chunks_exact_mut(LANES).enumerate() {
        let b = args.first_block + i;
        let entries = p.slice_start[b] * LANES..p.slice_start[b + 1] * LANES;
        let inflow = slice_dot::<FMA>(&p.cols[entries.clone()], &args.weights[entries], args.d_in);
        let at = b * LANES;
        for l in 0..LANES {
            d_out[l] = madd::<FMA>(p.gamma, inflow[l], args.base[at + l]);
            if at + l < p.states {
                observe(&mut stats, args.d_in[at + l], d_out[l]);
            }
        }
    }
    stats
}
