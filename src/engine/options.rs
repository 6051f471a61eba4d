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
            extrapolate: true,
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
