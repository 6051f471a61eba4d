//! What a solve is asked to compute: the soft value iteration settings (the math contract)
//! both backends honour, and the extra outputs a caller may ask for.

use crate::error::{Result, Spelling, bail, ensure};

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
    /// Backups from `V = 0` until the error bound `gamma / (1 - gamma) max_s |V_new - V_old|`
    /// (the residual itself at gamma = 1) is within `tol`, the engine's precision floor is
    /// reached (`schedule::within_tolerance`), or `max_iters` backups.
    Infinite {
        /// Bound on `max_s |V - V*|` asked for (value units; the residual at gamma = 1).
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

/// How an infinite-horizon solve iterates toward the fixed point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Value iteration: every sweep is a full soft Bellman backup `V <- T V`.
    Vi,
    /// Modified policy iteration: each full backup (the *improvement*, which also fixes the
    /// policy `pi = exp((Q - V') / alpha)`, the first argmax at alpha = 0) is followed by
    /// `evaluations` partial policy-evaluation sweeps `V <- r_pi + gamma P_pi V` with pi fixed
    /// (`r_pi = sum_a pi (r - alpha log pi)`): no exp or log, and at alpha = 0 one row per
    /// state instead of A. Convergence is tested on the improvements only, by the same error
    /// bound as value iteration, so `tol` keeps its meaning and the fixed point is the same.
    /// Needs an infinite horizon, gamma < 1 and the expected backup (the optimistic backup
    /// has no exp-free evaluation).
    Mpi {
        /// Policy-evaluation sweeps after each improvement, >= 1.
        evaluations: u32,
    },
}

impl Method {
    /// Evaluation sweeps per improvement a bare `mpi` gets; see docs/performance.md for the
    /// measurement that chose it.
    pub const DEFAULT_EVALUATIONS: u32 = 4;

    /// Most evaluation sweeps per improvement accepted.
    pub const MAX_EVALUATIONS: u32 = 10_000;

    /// Modified policy iteration with [`Method::DEFAULT_EVALUATIONS`].
    pub const MPI: Method = Method::Mpi {
        evaluations: Method::DEFAULT_EVALUATIONS,
    };

    /// The CLI / summary name.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Vi => "vi",
            Method::Mpi { .. } => "mpi",
        }
    }

    /// Evaluation sweeps a task ran in all, given the improvements (its reported
    /// `iterations`): `evaluations` before every improvement but the first.
    pub fn evaluation_sweeps(&self, improvements: u32) -> u64 {
        self.evaluations() as u64 * improvements.saturating_sub(1) as u64
    }

    /// Evaluation sweeps per improvement: 0 for value iteration.
    pub fn evaluations(&self) -> u32 {
        match *self {
            Method::Vi => 0,
            Method::Mpi { evaluations } => evaluations,
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
    /// Infinite horizon with alpha > 0: extrapolate along the slowest mode once its
    /// convergence rate has settled (see `schedule::RateExtrapolator`). `false` is plain
    /// Jacobi value iteration. Modified policy iteration does not extrapolate.
    pub extrapolate: bool,
    /// Value iteration or modified policy iteration.
    pub method: Method,
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
            extrapolate: true,
            method: Method::Vi,
        }
    }
}

impl SolveOptions {
    /// Checks the settings against the contract; errors name the offending setting as the
    /// library and Python do ([`Spelling::Name`]).
    pub fn validate(&self) -> Result<()> {
        self.validate_as(Spelling::Name)
    }

    /// [`Self::validate`] with errors naming each setting as `spelling` says.
    pub fn validate_as(&self, spelling: Spelling) -> Result<()> {
        let name = |setting: &str| spelling.setting(setting);
        ensure!(
            self.alpha.is_finite() && self.alpha >= 0.0,
            "{} must be finite and >= 0, got {}",
            name("alpha"),
            self.alpha
        );
        ensure!(
            self.gamma.is_finite() && (0.0..=1.0).contains(&self.gamma),
            "{} must be in [0, 1], got {}",
            name("gamma"),
            self.gamma
        );
        if self.backup == Backup::Optimistic && self.alpha == 0.0 {
            bail!(
                "the optimistic backup ({} optimistic) needs alpha > 0: its log-sum-exp has no \
                 alpha = 0 form",
                match spelling {
                    Spelling::Name => "backup =",
                    Spelling::Flag => "--backup",
                }
            );
        }
        if let Method::Mpi { evaluations } = self.method {
            let method = match spelling {
                Spelling::Name => "method = \"mpi\"",
                Spelling::Flag => "--method mpi",
            };
            ensure!(
                (1..=Method::MAX_EVALUATIONS).contains(&evaluations),
                "{} must be in 1..={} with {method}, got {evaluations}",
                name("evaluations"),
                Method::MAX_EVALUATIONS
            );
            ensure!(
                self.backup == Backup::Expected,
                "{method} needs the expected backup ({}): the optimistic backup's \
                 log-sum-exp over successors has no exp-free policy evaluation",
                match spelling {
                    Spelling::Name => "backup = \"expected\"",
                    Spelling::Flag => "--backup expected",
                }
            );
            ensure!(
                matches!(self.horizon, Horizon::Infinite { .. }),
                "{method} needs an infinite horizon (no {}): a finite horizon's T backups are \
                 exactly what it asks for, with nothing to evaluate between them",
                name("horizon")
            );
            ensure!(
                self.gamma < 1.0,
                "{method} needs {} < 1: undiscounted policy evaluation may run away under a \
                 policy that never reaches a terminal",
                name("gamma")
            );
        }
        match self.horizon {
            Horizon::Finite(t) => ensure!(t >= 1, "{} must be >= 1, got {t}", name("horizon")),
            Horizon::Infinite { tol, max_iters } => {
                ensure!(
                    tol.is_finite() && tol > 0.0,
                    "{} must be > 0, got {tol}",
                    name("tol")
                );
                ensure!(max_iters > 0, "{} must be > 0", name("max_iters"));
            }
        }
        Ok(())
    }

    /// Whether rate extrapolation applies: asked for, infinite horizon, alpha > 0 (the hard
    /// max's residual does not decay geometrically, and jumps there cost sweeps) and gamma < 1
    /// (undiscounted solves may have no fixed point; their growth must stay visible to the
    /// divergence check), and value iteration (modified policy iteration's evaluation sweeps
    /// already take the long steps a jump would).
    pub fn uses_extrapolation(&self) -> bool {
        self.extrapolate
            && self.method == Method::Vi
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

/// What a solve returns beyond the values `V_0` (or the stationary V); every solver
/// ([`super::solver::GridSolver`], [`super::solver::MdpSolver`]) honours it. The default asks
/// for the policy only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outputs {
    /// The policy `pi_0(a|s) = exp((Q_0(s,a) - V_0(s)) / alpha)` (or the stationary one).
    pub policy: bool,
    /// The soft Q-values `Q_0(s,a)` (or the stationary Q) the policy is made from, in value
    /// units: what a soft Q-learning user compares against.
    pub q: bool,
    /// Finite horizon: keep every step, `V_0..V_T` and (as asked) `pi_0..pi_{T-1}`,
    /// `Q_0..Q_{T-1}`.
    pub all_steps: bool,
    /// The forward messages: state occupancy under the soft-optimal policy.
    pub occupancy: bool,
}

impl Default for Outputs {
    fn default() -> Self {
        Self {
            policy: true,
            q: false,
            all_steps: false,
            occupancy: false,
        }
    }
}

impl Outputs {
    /// The values alone: no policy, Q, steps or occupancy.
    pub const VALUES: Outputs = Outputs {
        policy: false,
        q: false,
        all_steps: false,
        occupancy: false,
    };

    /// Whether a grid solve needs a forward pass over the map (every step or the occupancy),
    /// beyond the plain backward iteration.
    pub fn needs_steps(&self) -> bool {
        self.all_steps || self.occupancy
    }

    /// Refuses what a plain grid solve ([`crate::solve_cpu`], [`crate::GridEngine::solve`])
    /// cannot give: every step and the occupancy of a grid come through
    /// [`crate::GridSolver::solve_grid`].
    pub fn ensure_plain(&self) -> Result<()> {
        ensure!(
            !self.needs_steps(),
            "a plain grid solve keeps neither every step nor the occupancy; solve through \
             GridSolver::solve_grid for those"
        );
        Ok(())
    }
}
