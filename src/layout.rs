//! The flat arrays the grid kernels read, built once per solve from a [`GridProblem`]: the
//! GPU path uploads exactly these and the CPU reference reads exactly these.

use crate::grid::MOVE_OFFSETS;
use crate::problem::{Backup, GridProblem, SolveOptions};

/// Kernel inputs of a batched gridworld solve.
#[derive(Clone, Debug)]
pub struct GridInputs {
    /// Rows H.
    pub height: usize,
    /// Columns W.
    pub width: usize,
    /// Tasks B.
    pub tasks: usize,
    /// Actions |A|.
    pub action_count: usize,
    /// Legal-move bitmask per cell (bit a: action a moves), `[row][col]`.
    pub move_mask: Vec<u32>,
    /// Cell-index offset of each action's move (`dr * W + dc`), action order.
    pub move_offset: Vec<i32>,
    /// Cells whose value stays fixed (blocked, terminal, excluded unreachable),
    /// `[task][row][col]`.
    pub fixed: Vec<bool>,
    /// Cells excluded because no terminal is reachable from them (value -inf),
    /// `[task][row][col]`; all false unless gamma = 1 with an infinite horizon.
    pub excluded: Vec<bool>,
    /// Terminal cells, `[task][row][col]`.
    pub terminal: Vec<bool>,
    /// Free cells, `[row][col]`.
    pub free: Vec<bool>,
    /// `R_task(s)`, `[task][row][col]` (0 where the task has no reward map).
    pub reward: Vec<f32>,
    /// Step cost per action, action order.
    pub step_cost: Vec<f64>,
    /// Unreachable free non-terminal cells per task.
    pub unreachable: Vec<u32>,
    /// Slip probability.
    pub slip: f64,
    /// Discount.
    pub gamma: f64,
    /// Temperature.
    pub alpha: f64,
    /// Backup kind actually run (`optimistic` with slip 0 equals `expected` and runs as it).
    pub backup: Backup,
}

impl GridInputs {
    /// Builds the kernel inputs; `problem` and `options` must be validated.
    pub fn new(problem: &GridProblem, options: &SolveOptions) -> Self {
        let grid = &problem.grid;
        let cells = grid.cells();
        let move_mask = grid.move_mask(&problem.actions);
        let move_offset = problem
            .actions
            .moves()
            .into_iter()
            .map(|m| {
                let (dr, dc) = MOVE_OFFSETS[m];
                dr * grid.width as i32 + dc
            })
            .collect();
        let terminal = problem.terminal_flags();
        let (unreachable, unreachable_flags) = problem.unreachable(&move_mask);
        let excluded = if options.excludes_unreachable() {
            unreachable_flags
        } else {
            vec![false; terminal.len()]
        };
        let mut fixed = Vec::with_capacity(terminal.len());
        let mut reward = Vec::with_capacity(terminal.len());
        for (t, task) in problem.tasks.iter().enumerate() {
            for c in 0..cells {
                let i = t * cells + c;
                fixed.push(!grid.free[c] || terminal[i] || excluded[i]);
                reward.push(task.reward.as_ref().map_or(0.0, |r| r[c]));
            }
        }
        // With no slip both backups are the same deterministic backup; the expected form
        // is cheaper and exact.
        let backup = if problem.slip == 0.0 {
            Backup::Expected
        } else {
            options.backup
        };
        Self {
            height: grid.height,
            width: grid.width,
            tasks: problem.tasks.len(),
            action_count: problem.actions.count(),
            move_mask,
            move_offset,
            fixed,
            excluded,
            terminal,
            free: grid.free.clone(),
            reward,
            step_cost: problem.move_cost.per_action(&problem.actions),
            unreachable,
            slip: problem.slip,
            gamma: options.gamma,
            alpha: options.alpha,
            backup,
        }
    }

    /// Cells per task H * W.
    pub fn cells(&self) -> usize {
        self.height * self.width
    }

    /// `fixed` packed 32 cells per word, `[task][cell / 32]`, each task starting on a word.
    pub fn fixed_bits(&self) -> Vec<u32> {
        let words = self.fixed_words_per_task();
        let mut bits = vec![0u32; self.tasks * words];
        for t in 0..self.tasks {
            for c in 0..self.cells() {
                if self.fixed[t * self.cells() + c] {
                    bits[t * words + c / 32] |= 1 << (c % 32);
                }
            }
        }
        bits
    }

    /// The quads of 4 cells of a row that hold a free cell, row-major: `[row << 16 | quad
    /// column, move masks]` with byte j of the masks = cell 4q + j (moves need at most 8
    /// bits: STAY never moves). The width must be a multiple of 4.
    pub fn active_quads(&self) -> Vec<[u32; 2]> {
        assert!(
            self.width.is_multiple_of(4),
            "quads need a width that is a multiple of 4"
        );
        let mut quads = Vec::new();
        for (i, cells) in self.move_mask.chunks_exact(4).enumerate() {
            let first = 4 * i;
            if !self.free[first..first + 4].iter().any(|&f| f) {
                continue;
            }
            let (row, column) = (first / self.width, first % self.width / 4);
            let masks = cells
                .iter()
                .enumerate()
                .fold(0u32, |acc, (j, &m)| acc | (m & 255) << (8 * j));
            quads.push([(row as u32) << 16 | column as u32, masks]);
        }
        quads
    }

    /// Words of `fixed_bits` per task.
    pub fn fixed_words_per_task(&self) -> usize {
        self.cells().div_ceil(32)
    }
}
