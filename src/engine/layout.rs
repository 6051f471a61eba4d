//! The flat arrays the grid kernels read, built once per solve from a [`GridProblem`]: the
//! GPU path uploads exactly these and the CPU reference reads exactly these.

use crate::engine::options::{Backup, SolveOptions};
use crate::engine::solution::Marks;
use crate::world::grid::MOVE_OFFSETS;
use crate::world::grid_problem::GridProblem;
use crate::world::mdp::TabularMdp;

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
    /// gamma = 1 with an infinite horizon.
    pub infinite_undiscounted: bool,
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
            infinite_undiscounted: options.excludes_unreachable(),
        }
    }

    /// Cells per task H * W.
    pub fn cells(&self) -> usize {
        self.height * self.width
    }

    /// What a grid solve's outputs mark: NaN off the free cells, -inf on excluded ones, NaN
    /// policy rows on fixed ones.
    pub fn marks(&self) -> Marks<'_> {
        Marks {
            states: self.cells(),
            free: Some(&self.free),
            excluded: &self.excluded,
            fixed: &self.fixed,
        }
    }

    /// Per task, whether it has no finite solution by its structure
    /// ([`crate::engine::schedule::unbounded_self_loop`]): gamma = 1, infinite horizon, slip 0
    /// and a free cell that neither stops nor is excluded where an action keeps the agent in
    /// place (STAY, or a blocked move) at a reward `R(s) - cost(a)` >= 0 (> 0 for alpha = 0).
    /// The default STAY costs 0, so `--stay --gamma 1` with alpha > 0 has none.
    pub fn unbounded_tasks(&self) -> Vec<bool> {
        use crate::engine::schedule::unbounded_self_loop;
        let (cells, n) = (self.cells(), self.action_count);
        let infinite = self.infinite_undiscounted;
        (0..self.tasks)
            .map(|t| {
                infinite
                    && self.slip == 0.0
                    && (0..cells).any(|c| {
                        let i = t * cells + c;
                        !self.fixed[i]
                            && (0..n).any(|a| {
                                let stays = (self.move_mask[c] >> a) & 1 == 0;
                                stays
                                    && unbounded_self_loop(
                                        self.alpha,
                                        n,
                                        self.reward[i] as f64 - self.step_cost[a],
                                    )
                            })
                    })
            })
            .collect()
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

/// The flat arrays the general-MDP backups read (CPU reference now; the GPU kernel will take
/// the same), built once per solve.
#[derive(Clone, Debug)]
pub struct MdpInputs<'a> {
    /// The MDP.
    pub mdp: &'a TabularMdp,
    /// States whose value stays fixed (terminal, or excluded as unreachable), `[task][state]`.
    pub fixed: Vec<bool>,
    /// States excluded because no terminal is reachable (value -inf), `[task][state]`; all
    /// false unless gamma = 1 with an infinite horizon.
    pub excluded: Vec<bool>,
    /// Non-terminal states with no path to a terminal, per task.
    pub unreachable: Vec<u32>,
    /// Initial values: terminal values on terminal states, -inf on excluded ones, else 0,
    /// `[task][state]`.
    pub v0: Vec<f64>,
    /// Temperature.
    pub alpha: f64,
    /// Discount.
    pub gamma: f64,
    /// Backup kind.
    pub backup: super::options::Backup,
    /// gamma = 1 with an infinite horizon.
    pub infinite_undiscounted: bool,
}

impl<'a> MdpInputs<'a> {
    /// What an MDP solve's outputs mark: -inf on excluded states, NaN policy rows on fixed ones.
    pub fn marks(&self) -> Marks<'_> {
        Marks {
            states: self.mdp.states,
            free: None,
            excluded: &self.excluded,
            fixed: &self.fixed,
        }
    }

    /// Builds the inputs; `options` must be validated.
    pub fn new(mdp: &'a TabularMdp, options: &super::options::SolveOptions) -> Self {
        let s_count = mdp.states;
        // Predecessors over possible transitions, for the reverse reachability pass; none is
        // needed where no task has a terminal state (then no state reaches one).
        let (starts, sources) = if mdp.terminal.contains(&true) {
            mdp.predecessors()
        } else {
            (vec![0; s_count + 1], Vec::new())
        };
        let predecessors = |s: usize| {
            sources[starts[s] as usize..starts[s + 1] as usize]
                .iter()
                .map(|&p| p as usize)
        };
        let mut excluded = vec![false; mdp.tasks * s_count];
        let mut unreachable = Vec::with_capacity(mdp.tasks);
        for t in 0..mdp.tasks {
            let terminal = &mdp.terminal[t * s_count..(t + 1) * s_count];
            let mut reaches = terminal.to_vec();
            let mut stack: Vec<usize> = (0..s_count).filter(|&s| reaches[s]).collect();
            while let Some(s) = stack.pop() {
                for p in predecessors(s) {
                    if !reaches[p] {
                        reaches[p] = true;
                        stack.push(p);
                    }
                }
            }
            let cut: Vec<usize> = (0..s_count).filter(|&s| !reaches[s]).collect();
            unreachable.push(cut.len() as u32);
            if options.excludes_unreachable() {
                for s in cut {
                    excluded[t * s_count + s] = true;
                }
            }
        }
        let fixed = mdp
            .terminal
            .iter()
            .zip(&excluded)
            .map(|(&t, &e)| t || e)
            .collect();
        // Excluded states hold -inf: unlike a grid's, a general MDP's reachable state may
        // step into them, and its expected backup must see their value.
        let v0 = (0..mdp.tasks * s_count)
            .map(|i| match (mdp.terminal[i], excluded[i]) {
                (true, _) => mdp.terminal_value[i],
                (false, true) => f64::NEG_INFINITY,
                (false, false) => 0.0,
            })
            .collect();
        Self {
            mdp,
            fixed,
            excluded,
            unreachable,
            v0,
            alpha: options.alpha,
            gamma: options.gamma,
            backup: options.backup,
            infinite_undiscounted: options.excludes_unreachable(),
        }
    }

    /// Per task, whether it has no finite solution by its structure
    /// ([`crate::engine::schedule::unbounded_self_loop`]): gamma = 1, infinite horizon and a
    /// state that neither stops nor is excluded with an action whose every successor is the
    /// state itself at a reward `R(s, a)` >= 0 (> 0 for alpha = 0).
    pub fn unbounded_tasks(&self) -> Vec<bool> {
        use crate::engine::schedule::unbounded_self_loop;
        let mdp = self.mdp;
        let (s_count, n) = (mdp.states, mdp.actions);
        (0..mdp.tasks)
            .map(|t| {
                self.infinite_undiscounted
                    && (0..s_count).any(|s| {
                        !self.fixed[t * s_count + s]
                            && (0..n).any(|a| {
                                let rewards = &mdp.reward[(t * s_count + s) * n..][..n];
                                // Excluded actions (reward -inf) are no alternative.
                                let open = rewards.iter().filter(|r| r.is_finite()).count();
                                let row = s * n + a;
                                let entries = mdp.csr().indptr[row] as usize
                                    ..mdp.csr().indptr[row + 1] as usize;
                                !entries.is_empty()
                                    && entries.clone().all(|k| mdp.csr().indices[k] as usize == s)
                                    && unbounded_self_loop(
                                        self.alpha,
                                        open,
                                        mdp.reward[(t * s_count + s) * n + a],
                                    )
                            })
                    })
            })
            .collect()
    }
}

/// A zero likelihood in log space: a finite stand-in for -inf, as in the shader.
pub const IMPOSSIBLE: f32 = -1.0e30;

/// One observed line of a trajectory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The state.
    pub state: usize,
    /// The state as the caller named it (`X=3,Y=4` on a grid, `state 12`), for messages.
    pub label: String,
    /// The action taken there, when observed.
    pub action: Option<usize>,
    /// Where it was read (1-based line), for messages.
    pub line: usize,
}

/// The arrays the posterior kernel reads.
#[derive(Clone, Debug, PartialEq)]
pub struct PosteriorInputs {
    /// Tasks B.
    pub tasks: usize,
    /// Observed steps K.
    pub steps: usize,
    /// Actions A.
    pub actions: usize,
    /// Per step, the weight of each action's probability: one-hot on the observed action, or
    /// `P(s_{k+1}|s_k, a)`, `[step][action]`.
    pub weight: Vec<f32>,
    /// `pi_z(.|s_k)`, zeros where task z has no policy at s_k (terminal: its episode would
    /// have ended), `[step][task][action]`.
    pub pi_rows: Vec<f32>,
    /// `log p(z)`, [`IMPOSSIBLE`] for a zero prior, `[task]`.
    pub log_prior: Vec<f32>,
    /// The observation behind each step, for messages.
    pub observed: Vec<Observation>,
}

/// `ObservedStep::state` of a step past the end of its run's episode. Same as `NO_STEP` in
/// `shaders/task_posterior.wgsl`.
pub const NO_STEP: u32 = u32::MAX;

/// [`TaskEvidence::terminal`]'s mark of a state that is not terminal. Same as
/// `NOT_TERMINAL` in the shader.
pub const NOT_TERMINAL: f32 = -3.0e38;

/// An exact reward observation matches a task's reward within this, relative to
/// `max(1, |r|)`. Same as `REWARD_TOLERANCE` in the shader.
pub const REWARD_TOLERANCE: f32 = 1e-6;

/// One transition a meta-RL run observed; `state` [`NO_STEP`] past its episode's end. Keep in
/// sync with `ObservedStep` in `shaders/task_posterior.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ObservedStep {
    /// `s_t`.
    pub state: u32,
    /// `a_t`, the agent's own choice.
    pub action: u32,
    /// `s_{t+1}`.
    pub next: u32,
    /// 1 if the step ended the episode (the true task's terminal state), else 0.
    pub terminated: u32,
    /// The reward seen: `r(s_t, a_t)` plus the terminal value of `s_{t+1}` when it ended the
    /// episode, with noise under the Gaussian model (value units).
    pub reward: f32,
}

impl ObservedStep {
    /// Padding past an episode's end.
    pub const NONE: Self = Self {
        state: NO_STEP,
        action: 0,
        next: 0,
        terminated: 0,
        reward: 0.0,
    };
}

/// What each task of a batch predicts a meta-RL agent observes: the arrays `observe` in
/// `shaders/task_posterior.wgsl` reads, and how rewards are observed.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskEvidence {
    /// Tasks B.
    pub tasks: usize,
    /// States S.
    pub states: usize,
    /// Actions A.
    pub actions: usize,
    /// `r_z(s,a)`, `[task][state][action]`.
    pub reward: Vec<f32>,
    /// The terminal value of each terminal state, [`NOT_TERMINAL`] elsewhere, `[task][state]`.
    pub terminal: Vec<f32>,
    /// `None`: rewards are observed exactly; `Some(sigma)`: with Gaussian noise of standard
    /// deviation sigma > 0 (value units).
    pub reward_noise: Option<f64>,
}

impl TaskEvidence {
    /// The evidence model of `mdp`'s tasks.
    pub fn new(mdp: &TabularMdp, reward_noise: Option<f64>) -> Self {
        let terminal = mdp
            .terminal
            .iter()
            .zip(&mdp.terminal_value)
            .map(|(&t, &v)| if t { v as f32 } else { NOT_TERMINAL })
            .collect();
        Self {
            tasks: mdp.tasks,
            states: mdp.states,
            actions: mdp.actions,
            reward: mdp.reward.iter().map(|&r| r as f32).collect(),
            terminal,
            reward_noise,
        }
    }
}

/// States per block of the native engine's sliced CSR layout (`engine::native::mdp_backup`'s
/// `LANES`): the unit [`dense_transitions`] pads rows to.
pub const SLICE_LANES: usize = 8;

/// Whether `mdp`'s transitions are better stored dense, as the `[S*A, S]` f32 matrix
/// `[s * A + a][s']`, than as sparse rows: where the native engine's sliced layout (each
/// block of [`SLICE_LANES`] states and one action padded to its longest row, an index and a
/// probability per entry and lane) would take at least the dense matrix's bytes, which is
/// about half full; and always where the model keeps its transitions dense
/// ([`crate::world::mdp::Transitions::dense_rows`]). The rule both the native engine and the
/// GPU engine choose by.
pub fn dense_transitions(mdp: &TabularMdp) -> bool {
    // A model kept dense (at least half full) stays so, without building its CSR.
    if mdp.transitions.dense_rows().is_some() {
        return true;
    }
    let (states, actions, csr) = (mdp.states, mdp.actions, mdp.csr());
    let row_len = |s: usize, a: usize| {
        let row = s * actions + a;
        (csr.indptr[row + 1] - csr.indptr[row]) as u64
    };
    let mut entries = 0u64;
    for first in (0..states).step_by(SLICE_LANES) {
        for a in 0..actions {
            let lanes = first..(first + SLICE_LANES).min(states);
            entries += lanes.map(|s| row_len(s, a)).max().unwrap_or(0);
        }
    }
    let dense_bytes = 4 * (states as u128) * (actions as u128) * (states as u128);
    dense_bytes <= 8 * SLICE_LANES as u128 * entries as u128
}
