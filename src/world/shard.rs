//! Shards of a task batch: the contiguous task range a shard of a batch solves (the one split
//! of `softvi solve --tasks I/N`, `softvi merge` and the Python Ray layer), the batch cut to
//! such a range, and the fingerprint that tells the shards of one batch from another's.

use std::ops::Range;

use crate::error::{Result, ensure};

use super::grid_problem::GridProblem;
use super::mdp::TabularMdp;

/// The tasks shard `shard` of `shards` solves out of a batch of `tasks`:
/// `shard * tasks / shards .. (shard + 1) * tasks / shards` (integer floor division).
///
/// The ranges of shards `0..shards` are contiguous, in task order, differ in length by at most
/// one, and cover `0..tasks` exactly once; with `shards > tasks` some are empty. The Python
/// Ray layer (`softvi.ray`) splits with this same formula, so a shard means the same tasks
/// on both. The products are taken in `u128`, so no batch size overflows.
///
/// # Panics
/// If `shards` is 0 or `shard >= shards`.
pub fn task_range(tasks: usize, shard: usize, shards: usize) -> Range<usize> {
    assert!(
        shard < shards,
        "shard {shard} of {shards}: the index must be below the count"
    );
    let at = |i: usize| (i as u128 * tasks as u128 / shards as u128) as usize;
    at(shard)..at(shard + 1)
}

pub use crate::io::hash::Fnv1a;

impl GridProblem {
    /// The batch cut to the tasks `range` (same map, actions, slip and costs).
    pub fn shard(&self, range: Range<usize>) -> Result<GridProblem> {
        ensure!(
            range.start < range.end && range.end <= self.tasks.len(),
            "tasks {}..{} are not a non-empty range of a {}-task batch",
            range.start,
            range.end,
            self.tasks.len()
        );
        // Field by field: `..self.clone()` would copy every task's reward first.
        Ok(GridProblem {
            grid: self.grid.clone(),
            actions: self.actions,
            slip: self.slip,
            move_cost: self.move_cost,
            tasks: self.tasks[range].to_vec(),
        })
    }

    /// FNV-1a 64 of the whole batch: map size and free cells, actions, slip, step costs, and
    /// every task's goals and reward, in task order. Equal batches hash equal on every machine.
    pub fn fingerprint(&self) -> u64 {
        let mut h = Fnv1a::default();
        let g = &self.grid;
        h.bytes(b"grid").count(g.width).count(g.height);
        for &free in &g.free {
            h.bytes(&[free as u8]);
        }
        h.bytes(self.actions.names().join(",").as_bytes());
        h.bytes(&self.slip.to_le_bytes());
        for c in self.move_cost.per_action(&self.actions) {
            h.bytes(&c.to_le_bytes());
        }
        h.count(self.tasks.len());
        for task in &self.tasks {
            h.count(task.goals.len());
            for &goal in &task.goals {
                h.count(goal);
            }
            match &task.reward {
                None => h.bytes(&[0]),
                Some(r) => h.bytes(&[1]).bytes(&f32_bytes(r)),
            };
        }
        h.finish()
    }
}

impl TabularMdp {
    /// The batch cut to the tasks `range`: their reward, terminal, terminal value and initial
    /// rows, the same transitions.
    pub fn shard(&self, range: Range<usize>) -> Result<TabularMdp> {
        ensure!(
            range.start < range.end && range.end <= self.tasks,
            "tasks {}..{} are not a non-empty range of a {}-task batch",
            range.start,
            range.end,
            self.tasks
        );
        let (s, sa) = (self.states, self.states * self.actions);
        let rows = |per: usize| range.start * per..range.end * per;
        // Field by field: `..self.clone()` would copy the whole batch's rows first.
        Ok(TabularMdp {
            states: self.states,
            actions: self.actions,
            tasks: range.len(),
            transitions: self.transitions.clone(),
            reward: self.reward[rows(sa)].to_vec(),
            terminal: self.terminal[rows(s)].to_vec(),
            terminal_value: self.terminal_value[rows(s)].to_vec(),
            initial: self.initial[rows(s)].to_vec(),
        })
    }

    /// FNV-1a 64 of the whole batch: sizes, transitions, and every task's rewards, terminal
    /// flags, terminal values and start distribution. Equal batches hash equal on every machine.
    pub fn fingerprint(&self) -> u64 {
        let mut h = Fnv1a::default();
        h.bytes(b"mdp")
            .count(self.states)
            .count(self.actions)
            .count(self.tasks);
        let words: Vec<u8> = (self.csr().indptr.iter().chain(&self.csr().indices))
            .flat_map(|x| x.to_le_bytes())
            .collect();
        h.bytes(&words);
        h.bytes(&f64_bytes(&self.csr().probs));
        h.bytes(&f64_bytes(&self.reward));
        let flags: Vec<u8> = self.terminal.iter().map(|&t| t as u8).collect();
        h.bytes(&flags);
        h.bytes(&f64_bytes(&self.terminal_value));
        h.bytes(&f64_bytes(&self.initial));
        h.finish()
    }
}

/// The little-endian bytes of `values` (bit patterns, so -0.0 and NaN payloads count).
fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// [`f32_bytes`] of f64 values.
fn f64_bytes(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_batch_once_in_order_and_balanced() {
        for tasks in 0..40 {
            for shards in 1..45 {
                let ranges: Vec<Range<usize>> =
                    (0..shards).map(|i| task_range(tasks, i, shards)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[shards - 1].end, tasks);
                for w in ranges.windows(2) {
                    assert_eq!(w[0].end, w[1].start, "{tasks} tasks, {shards} shards");
                }
                let lens: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
                let (lo, hi) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
                assert!(hi - lo <= 1, "{tasks} tasks, {shards} shards: {lens:?}");
            }
        }
        // The documented formula, by hand: 13 tasks in 4 shards.
        let split: Vec<Range<usize>> = (0..4).map(|i| task_range(13, i, 4)).collect();
        assert_eq!(split, [0..3, 3..6, 6..9, 9..13]);
        // No overflow near the top of usize.
        assert_eq!(task_range(usize::MAX, 1, 2).end, usize::MAX);
    }

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        // From the FNV reference (draft-eastlake-fnv): "" and "a", "foobar".
        assert_eq!(Fnv1a::default().finish(), 0xcbf29ce484222325);
        assert_eq!(Fnv1a::default().bytes(b"a").finish(), 0xaf63dc4c8601ec8c);
        assert_eq!(
            Fnv1a::default().bytes(b"foobar").finish(),
            0x85944171f73967e8
        );
    }
}
