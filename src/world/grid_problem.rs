//! A batch of tasks over one gridworld: the map, the actions, slip, step costs and each task's
//! goals and state reward.

use crate::error::{Context, Result, bail, ensure};

use super::grid::{ActionSet, Grid, MoveCost};
use crate::error::Spelling;

/// One task of a batch: its terminal (goal) cells and its state reward.
#[derive(Clone, Debug, PartialEq)]
pub struct GridTask {
    /// Terminal cells as `row * width + col`, value fixed at 0.
    pub goals: Vec<usize>,
    /// `R_task(s)` per cell, layout `[row][col]`; `None` means 0 everywhere.
    pub reward: Option<Vec<f32>>,
}

/// A batch of tasks over one gridworld: shared map, actions, slip and costs.
#[derive(Clone, Debug, PartialEq)]
pub struct GridProblem {
    /// The map.
    pub grid: Grid,
    /// The action list.
    pub actions: ActionSet,
    /// Slip probability eps: with probability eps a uniformly drawn action's move happens.
    pub slip: f64,
    /// Step costs.
    pub move_cost: MoveCost,
    /// The tasks, B >= 1.
    pub tasks: Vec<GridTask>,
}

impl GridProblem {
    /// Number of tasks B.
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// Checks shapes and values; errors name the task, cell or setting (settings as the
    /// library and Python name them).
    pub fn validate(&self) -> Result<()> {
        self.validate_as(Spelling::Name)
    }

    /// [`Self::validate`] with settings named as `spelling` says.
    pub fn validate_as(&self, spelling: Spelling) -> Result<()> {
        let g = &self.grid;
        let cells = g
            .height
            .checked_mul(g.width)
            .with_context(|| format!("a {}x{} map has more cells than fit", g.width, g.height))?;
        ensure!(
            g.free.len() == cells,
            "the map's free flags hold {} cells, not height x width = {cells}",
            g.free.len()
        );
        self.tasks
            .len()
            .checked_mul(cells)
            .context("tasks x cells overflows")?;
        ensure!(
            !self.tasks.is_empty(),
            "a solve needs at least one task (goal)"
        );
        ensure!(
            self.slip.is_finite() && (0.0..=1.0).contains(&self.slip),
            "{} must be in [0, 1], got {}",
            spelling.setting("slip"),
            self.slip
        );
        for (name, c) in [
            ("orthogonal", self.move_cost.orthogonal),
            ("diagonal", self.move_cost.diagonal),
            ("stay", self.move_cost.stay),
        ] {
            ensure!(c.is_finite(), "{name} move cost must be finite, got {c}");
        }
        for (t, task) in self.tasks.iter().enumerate() {
            ensure!(!task.goals.is_empty(), "task {t} has no goal cell");
            for &cell in &task.goals {
                ensure!(
                    cell < g.cells(),
                    "task {t}: goal cell {cell} is off the map"
                );
                let (row, col) = (cell / g.width, cell % g.width);
                ensure!(
                    g.free[cell],
                    "task {t}: goal X={col},Y={row} is on a blocked cell"
                );
            }
            if let Some(reward) = &task.reward {
                ensure!(
                    reward.len() == g.cells(),
                    "task {t}: reward map has {} cells, the map has {}",
                    reward.len(),
                    g.cells()
                );
                if let Some(i) = reward.iter().position(|r| !r.is_finite()) {
                    bail!(
                        "task {t}: reward at X={},Y={} is {} (rewards must be finite)",
                        i % g.width,
                        i / g.width,
                        reward[i]
                    );
                }
            }
        }
        Ok(())
    }

    /// Per-task terminal flags, layout `[task][row][col]`.
    pub fn terminal_flags(&self) -> Vec<bool> {
        let n = self.grid.cells();
        let mut flags = vec![false; self.tasks.len() * n];
        for (t, task) in self.tasks.iter().enumerate() {
            for &g in &task.goals {
                flags[t * n + g] = true;
            }
        }
        flags
    }

    /// Per-task count of free non-terminal cells from which no terminal cell is reachable
    /// with positive probability, and the flags `[task][row][col]` marking them.
    pub fn unreachable(&self, mask: &[u32]) -> (Vec<u32>, Vec<bool>) {
        let g = &self.grid;
        let n = g.cells();
        let moves = self.actions.moves();
        let terminal = self.terminal_flags();
        let mut flags = vec![false; self.tasks.len() * n];
        let mut counts = Vec::with_capacity(self.tasks.len());
        for t in 0..self.tasks.len() {
            // Reverse search: a predecessor p of c has a legal move landing on c.
            let mut reaches = terminal[t * n..(t + 1) * n].to_vec();
            let mut stack: Vec<usize> = (0..n).filter(|&c| reaches[c]).collect();
            while let Some(c) = stack.pop() {
                let (row, col) = ((c / g.width) as i64, (c % g.width) as i64);
                for (a, &m) in moves.iter().enumerate() {
                    let (dr, dc) = crate::world::grid::MOVE_OFFSETS[m];
                    let (pr, pc) = (row - dr as i64, col - dc as i64);
                    if !g.is_free(pr, pc) || (dr, dc) == (0, 0) {
                        continue;
                    }
                    let p = pr as usize * g.width + pc as usize;
                    if mask[p] & (1 << a) != 0 && !reaches[p] {
                        reaches[p] = true;
                        stack.push(p);
                    }
                }
            }
            let mut count = 0;
            for c in 0..n {
                if g.free[c] && !reaches[c] {
                    flags[t * n + c] = true;
                    count += 1;
                }
            }
            counts.push(count);
        }
        (counts, flags)
    }
}
