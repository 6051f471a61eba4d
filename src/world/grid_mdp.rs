//! A gridworld batch as a general tabular MDP over its free cells, so that everything built on
//! [`TabularMdp`] (every time step, occupancy, sampling, task inference, IRL) serves grids too.
//! The transitions are exactly the grid kernels': action a moves along its own direction with
//! probability 1 - slip and along a uniformly drawn action's with probability slip, a blocked
//! move stays; `r(s, a) = R_task(s) - cost(a)`; goals are terminal with value 0.

use crate::error::{Result, ensure};

use crate::world::grid_problem::GridProblem;
use crate::world::mdp::{TabularMdp, Transitions};

/// Marks a blocked cell in [`GridMdp::state_of_cell`].
pub const NO_STATE: u32 = u32::MAX;

/// The start distribution of every task, `[task][row][col]`: equal weights on the `starts`
/// cells (`row * W + col`, shared by all tasks), or with `None` uniform over each task's free
/// non-goal cells, or over its free cells when every one is a goal (episodes then end where
/// they start; the values and policy need no start, and this keeps such a world solvable).
pub fn start_distribution(problem: &GridProblem, starts: Option<&[usize]>) -> Result<Vec<f32>> {
    let grid = &problem.grid;
    let cells = grid.cells();
    let terminal = problem.terminal_flags();
    let mut start = vec![0f32; problem.tasks.len() * cells];
    for (t, row) in start.chunks_exact_mut(cells).enumerate() {
        match starts {
            Some(list) => {
                ensure!(!list.is_empty(), "no start cell given");
                for &c in list {
                    ensure!(
                        c < cells && grid.free[c],
                        "start X={},Y={} is on a blocked cell",
                        c % grid.width,
                        c / grid.width
                    );
                    row[c] += 1.0 / list.len() as f32;
                }
            }
            None => {
                let non_goal = (0..cells).any(|c| grid.free[c] && !terminal[t * cells + c]);
                let open = |c: usize| grid.free[c] && (!non_goal || !terminal[t * cells + c]);
                let free = (0..cells).filter(|&c| open(c)).count();
                ensure!(free > 0, "task {t}: the map has no free cell");
                for (c, x) in row.iter_mut().enumerate() {
                    if open(c) {
                        *x = 1.0 / free as f32;
                    }
                }
            }
        }
    }
    Ok(start)
}

/// A gridworld batch as a tabular MDP, with the maps between cells and states.
#[derive(Clone, Debug)]
pub struct GridMdp {
    /// The MDP over free cells (state order = row-major cell order).
    pub mdp: TabularMdp,
    /// Cell `row * W + col` of each state, `[state]`.
    pub cell_of_state: Vec<u32>,
    /// State of each cell, [`NO_STATE`] on blocked cells, `[row][col]`.
    pub state_of_cell: Vec<u32>,
    /// Rows H.
    pub height: usize,
    /// Columns W.
    pub width: usize,
}

impl GridMdp {
    /// Builds the MDP of `problem` (validated). `starts` are start cells (`row * W + col`),
    /// shared by all tasks and weighted equally; `None` starts uniformly over every task's
    /// free non-goal cells.
    pub fn new(problem: &GridProblem, starts: Option<&[usize]>) -> Result<Self> {
        problem.validate()?;
        let grid = &problem.grid;
        let cells = grid.cells();
        let mut state_of_cell = vec![NO_STATE; cells];
        let mut cell_of_state = Vec::new();
        for (c, state) in state_of_cell.iter_mut().enumerate() {
            if grid.free[c] {
                *state = cell_of_state.len() as u32;
                cell_of_state.push(c as u32);
            }
        }
        let states = cell_of_state.len();
        let moves = problem.actions.moves();
        let n = moves.len();
        let mask = grid.move_mask(&problem.actions);
        let cost = problem.move_cost.per_action(&problem.actions);
        let slip = problem.slip;
        let (mut indptr, mut indices, mut probs) = (vec![0u32], Vec::new(), Vec::new());
        let mut row: Vec<(u32, f64)> = Vec::with_capacity(n);
        for &c in &cell_of_state {
            let c = c as usize;
            let destination: Vec<u32> = (0..n)
                .map(|a| state_of_cell[grid.destination(c, mask[c], &moves, a)])
                .collect();
            for a in 0..n {
                row.clear();
                row.push((destination[a], 1.0 - slip));
                for &d in &destination {
                    row.push((d, slip / n as f64));
                }
                row.sort_by_key(|e| e.0);
                let mut merged: Vec<(u32, f64)> = Vec::with_capacity(row.len());
                for &(d, p) in &row {
                    match merged.last_mut() {
                        Some(last) if last.0 == d => last.1 += p,
                        _ => merged.push((d, p)),
                    }
                }
                for (d, p) in merged {
                    if p > 0.0 {
                        indices.push(d);
                        probs.push(p);
                    }
                }
                indptr.push(indices.len() as u32);
            }
        }
        let tasks = problem.tasks.len();
        let mut reward = Vec::with_capacity(tasks * states * n);
        let mut terminal = vec![false; tasks * states];
        for (t, task) in problem.tasks.iter().enumerate() {
            for &c in &cell_of_state {
                let r = task.reward.as_ref().map_or(0.0, |r| r[c as usize] as f64);
                reward.extend(cost.iter().map(|k| r - k));
            }
            for &g in &task.goals {
                terminal[t * states + state_of_cell[g] as usize] = true;
            }
        }
        let start = start_distribution(problem, starts)?;
        let initial = start
            .chunks_exact(cells)
            .flat_map(|task| cell_of_state.iter().map(|&c| task[c as usize] as f64))
            .collect();
        Ok(Self {
            mdp: TabularMdp {
                states,
                actions: n,
                tasks,
                transitions: Transitions::sparse(indptr, indices, probs),
                reward,
                terminal,
                terminal_value: vec![0.0; tasks * states],
                initial,
            },
            cell_of_state,
            state_of_cell,
            height: grid.height,
            width: grid.width,
        })
    }

    /// `[block][state][inner]` to `[block][row][col][inner]`, NaN on blocked cells (`block`
    /// runs over tasks, or tasks x time steps).
    pub fn to_cells(&self, data: &[f32], inner: usize) -> Vec<f32> {
        let (states, cells) = (self.cell_of_state.len(), self.height * self.width);
        let blocks = data.len() / (states * inner).max(1);
        let mut out = vec![f32::NAN; blocks * cells * inner];
        for b in 0..blocks {
            for (s, &c) in self.cell_of_state.iter().enumerate() {
                let from = (b * states + s) * inner;
                let to = (b * cells + c as usize) * inner;
                out[to..to + inner].copy_from_slice(&data[from..from + inner]);
            }
        }
        out
    }

    /// The grid batch whose tabular MDP is `mdp` (an MDP over this grid's states, e.g. with
    /// rewards changed by IRL): one task per MDP task, with the goals of `template`'s task of
    /// the same index (or of its only task) and the state reward `r(s, 0) + cost(0)` (the
    /// grid's rewards are `R(s) - cost(a)`).
    pub fn problem_for(&self, template: &GridProblem, mdp: &TabularMdp) -> Result<GridProblem> {
        ensure!(
            mdp.states == self.cell_of_state.len() && template.tasks.len() == 1
                || template.tasks.len() == mdp.tasks,
            "the MDP does not belong to this grid batch"
        );
        let cost = template.move_cost.per_action(&template.actions)[0];
        let n = mdp.actions;
        let tasks = (0..mdp.tasks)
            .map(|t| {
                let goals = template.tasks[if template.tasks.len() == 1 { 0 } else { t }]
                    .goals
                    .clone();
                let mut reward = vec![0.0f32; self.height * self.width];
                for (s, &c) in self.cell_of_state.iter().enumerate() {
                    reward[c as usize] = (mdp.reward[(t * mdp.states + s) * n] + cost) as f32;
                }
                crate::world::grid_problem::GridTask {
                    goals,
                    reward: Some(reward),
                }
            })
            .collect();
        Ok(GridProblem {
            tasks,
            ..template.clone()
        })
    }

    /// `[block][row][col][inner]` to `[block][state][inner]`.
    pub fn to_states(&self, data: &[f32], inner: usize) -> Vec<f32> {
        let cells = self.height * self.width;
        data.chunks_exact(cells * inner)
            .flat_map(|block| {
                self.cell_of_state.iter().flat_map(move |&c| {
                    block[c as usize * inner..(c as usize + 1) * inner]
                        .iter()
                        .copied()
                })
            })
            .collect()
    }

    /// The start distribution of `mdp` (over this grid's states) over the map,
    /// `[task][row][col]`, 0 on walls.
    pub fn start_cells(&self, mdp: &TabularMdp) -> Vec<f32> {
        let initial: Vec<f32> = mdp.initial.iter().map(|&x| x as f32).collect();
        self.to_cells(&initial, 1)
            .into_iter()
            .map(|x| if x.is_nan() { 0.0 } else { x })
            .collect()
    }
}
