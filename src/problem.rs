//! What a solve is asked to compute: the gridworld with its tasks, and the soft value
//! iteration settings (the math contract).

use anyhow::{Result, bail, ensure};

use crate::grid::{ActionSet, Grid, MoveCost};

/// Which soft Bellman backup computes Q from the next values V'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backup {
    /// Max-ent RL / soft Q-learning: `Q(s,a) = r(s,a) + gamma * sum_s' P(s'|s,a) V'(s')`.
    Expected,
    /// Exact-inference backward message:
    /// `Q(s,a) = r(s,a) + alpha * log sum_s' P(s'|s,a) exp(gamma * V'(s') / alpha)`.
    Optimistic,
}

impl Backup {
    /// The CLI / summary name.
    pub fn name(&self) -> &'static str {
        match self {
            Backup::Expected => "expected",
            Backup::Optimistic => "optimistic",
        }
    }
}

/// How many backups to apply.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Horizon {
    /// Exactly `T` backups from `V_T = 0`; the result is `V_0`, `pi_0`.
    Finite(u32),
    /// Backups from `V = 0` until `max_s |V_new - V_old| <= tol` or `max_iters` backups.
    Infinite {
        /// Residual threshold (value units).
        tol: f64,
        /// Largest number of backups.
        max_iters: u32,
    },
}

impl Horizon {
    /// `T` for a finite horizon, 0 for an infinite one (the steps a solve can keep).
    pub fn finite_steps(&self) -> usize {
        match self {
            Horizon::Finite(t) => *t as usize,
            Horizon::Infinite { .. } => 0,
        }
    }
}

/// Soft value iteration settings shared by all tasks of a solve.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SolveOptions {
    /// Temperature alpha >= 0 (value units); 0 is the hard max.
    pub alpha: f64,
    /// Discount gamma in [0, 1].
    pub gamma: f64,
    /// Backup kind.
    pub backup: Backup,
    /// Finite or infinite horizon.
    pub horizon: Horizon,
    /// Whether to compute the policy at the end.
    pub policy: bool,
    /// Infinite horizon with alpha > 0: extrapolate along the slowest mode once its
    /// convergence rate has settled (see `solve::RateExtrapolator`). `false` is plain
    /// Jacobi value iteration.
    pub extrapolate: bool,
}

impl Default for SolveOptions {
    fn default() -> Self {
        Self {
            alpha: 1.0,
            gamma: 0.99,
            backup: Backup::Expected,
            horizon: Horizon::Infinite {
                tol: 1e-4,
                max_iters: 100_000,
            },
            policy: true,
            extrapolate: true,
        }
    }
}

impl SolveOptions {
    /// Checks the settings against the contract; errors name the offending setting.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.alpha.is_finite() && self.alpha >= 0.0,
            "alpha (--alpha) must be finite and >= 0, got {}",
            self.alpha
        );
        ensure!(
            self.gamma.is_finite() && (0.0..=1.0).contains(&self.gamma),
            "gamma (--gamma) must be in [0, 1], got {}",
            self.gamma
        );
        if self.backup == Backup::Optimistic && self.alpha == 0.0 {
            bail!(
                "the optimistic backup (--backup optimistic) needs alpha > 0: its log-sum-exp \
                 has no alpha = 0 form"
            );
        }
        match self.horizon {
            Horizon::Finite(t) => ensure!(t >= 1, "horizon (--horizon) must be >= 1, got {t}"),
            Horizon::Infinite { tol, max_iters } => {
                ensure!(
                    tol.is_finite() && tol > 0.0,
                    "tol (--tol) must be > 0, got {tol}"
                );
                ensure!(max_iters > 0, "max_iters (--max-iters) must be > 0");
            }
        }
        Ok(())
    }

    /// Whether rate extrapolation applies: asked for, infinite horizon, alpha > 0 (the hard
    /// max's residual does not decay geometrically, and jumps there cost sweeps) and gamma < 1
    /// (undiscounted solves may have no fixed point; their growth must stay visible to the
    /// divergence check).
    pub fn uses_extrapolation(&self) -> bool {
        self.extrapolate
            && self.alpha > 0.0
            && self.gamma < 1.0
            && matches!(self.horizon, Horizon::Infinite { .. })
    }

    /// Whether states that cannot reach a terminal have no finite value and are excluded:
    /// the undiscounted infinite-horizon case.
    pub fn excludes_unreachable(&self) -> bool {
        self.gamma == 1.0 && matches!(self.horizon, Horizon::Infinite { .. })
    }
}

/// What a general-MDP solve returns beyond `V_0` and `pi_0` (or the stationary V and pi).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MdpOutputs {
    /// Finite horizon: keep every step, `V_0..V_T` and `pi_0..pi_{T-1}`.
    pub all_steps: bool,
    /// The forward messages: state occupancy under the soft-optimal policy.
    pub occupancy: bool,
}

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

    /// Checks shapes and values; errors name the task, cell or setting.
    pub fn validate(&self) -> Result<()> {
        let g = &self.grid;
        ensure!(
            !self.tasks.is_empty(),
            "a solve needs at least one task (goal)"
        );
        ensure!(
            self.slip.is_finite() && (0.0..=1.0).contains(&self.slip),
            "slip (--slip) must be in [0, 1], got {}",
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
                    let (dr, dc) = crate::grid::MOVE_OFFSETS[m];
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
