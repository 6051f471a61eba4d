//! The soft value iteration flags shared by the commands that solve, and the solve settings
//! they give.

use anyhow::{Context, Result, ensure};
use clap::{Args, ValueEnum};

use super::backend::BackendArg;
use softvi::MdpSolution;
use softvi::engine::options::{Backup, Horizon, Method, SolveOptions};
use softvi::error::Spelling;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum BackupArg {
    /// Q = r + gamma * E[V'] (max-ent RL / soft Q-learning).
    Expected,
    /// Q = r + alpha * log E[exp(gamma V'/alpha)] (exact inference backward message).
    Optimistic,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum MethodArg {
    /// Value iteration: every sweep a full backup.
    Vi,
    /// Modified policy iteration: --evaluations exp-free policy-evaluation sweeps between
    /// full backups (infinite horizon, gamma < 1, expected backup).
    Mpi,
}

/// Soft value iteration settings.
#[derive(Args, Debug)]
pub(super) struct IterationArgs {
    /// Temperature alpha >= 0 (0 = hard max).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    alpha: f64,
    /// Discount gamma in [0, 1].
    #[arg(long, default_value_t = 0.99, allow_negative_numbers = true)]
    gamma: f64,
    /// Backup kind.
    #[arg(long, value_enum, default_value_t = BackupArg::Expected)]
    backup: BackupArg,
    /// Finite horizon T: apply exactly T backups from V_T = 0 and report V_0, pi_0.
    #[arg(long, value_name = "T", conflicts_with_all = ["tol", "max_iters"])]
    horizon: Option<u32>,
    /// Infinite horizon: stop when the error bound gamma/(1-gamma) max_s |V_new - V_old|
    /// (the residual itself at gamma = 1) is <= TOL, or at the engine's precision floor.
    #[arg(long, default_value_t = 1e-4)]
    tol: f64,
    /// Infinite horizon: most backups.
    #[arg(long, default_value_t = 100_000)]
    max_iters: u32,
    /// Where the sweeps run.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub(super) backend: BackendArg,
    /// How the fixed point is iterated to: value iteration or modified policy iteration
    /// (general MDPs on the native engine, grids on the GPU's kernels, both on the f64
    /// reference).
    #[arg(long, value_enum, default_value_t = MethodArg::Vi)]
    method: MethodArg,
    /// With --method mpi: policy-evaluation sweeps after each full backup.
    /// [default: 4]
    #[arg(long, value_name = "M")]
    evaluations: Option<u32>,
    /// Plain value iteration: no jumps along the estimated slowest mode.
    #[arg(long)]
    no_extrapolation: bool,
    /// GPU adapters to shard the tasks over: `all` (every adapter WGPU_BACKEND allows) or a
    /// count N (the first N; `softvi adapters` lists them).
    #[arg(long, default_value = "1", value_name = "all|N")]
    pub(super) adapters: String,
}

impl IterationArgs {
    /// The solve settings, validated.
    pub(super) fn options(&self) -> Result<SolveOptions> {
        let horizon = match self.horizon {
            Some(t) => Horizon::Finite(t),
            None => Horizon::Infinite {
                tol: self.tol,
                max_iters: self.max_iters,
            },
        };
        let backup = match self.backup {
            BackupArg::Expected => Backup::Expected,
            BackupArg::Optimistic => Backup::Optimistic,
        };
        let method = match self.method {
            MethodArg::Vi => {
                ensure!(
                    self.evaluations.is_none(),
                    "--evaluations sets modified policy iteration's evaluation sweeps: it needs \
                     --method mpi"
                );
                Method::Vi
            }
            MethodArg::Mpi => Method::Mpi {
                evaluations: self.evaluations.unwrap_or(Method::DEFAULT_EVALUATIONS),
            },
        };
        let options = SolveOptions {
            extrapolate: !self.no_extrapolation,
            method,
            alpha: self.alpha,
            gamma: self.gamma,
            backup,
            horizon,
        };
        options.validate_as(Spelling::Flag)?;
        Ok(options)
    }
}

/// Steps per episode of commands that act with a solve's policy (`sample`, `meta`): `--steps`,
/// at most a finite `--horizon` (the policy's time steps); by default the horizon, else 100.
pub(super) fn episode_steps(steps: Option<usize>, horizon: &Horizon) -> Result<usize> {
    Ok(match (steps, *horizon) {
        (Some(t), Horizon::Finite(h)) => {
            ensure!(
                t <= h as usize,
                "--steps {t} is longer than --horizon {h}: the policy has {h} time steps"
            );
            t
        }
        (Some(t), Horizon::Infinite { .. }) => t,
        (None, Horizon::Finite(h)) => h as usize,
        (None, Horizon::Infinite { .. }) => 100,
    })
}

/// The policy a solve's agent acts with and its time steps: `pi_0..pi_{T-1}` (`T` steps) of a
/// finite horizon solved with every step, else the stationary policy (1 step).
pub(super) fn acting_policy<'a>(
    solved: &'a MdpSolution,
    horizon: &Horizon,
) -> Result<(&'a [f32], usize)> {
    Ok(match (&solved.steps, *horizon) {
        (Some(s), Horizon::Finite(h)) => (s.policy.as_deref().context("no policy")?, h as usize),
        _ => (solved.solution.policy.as_deref().context("no policy")?, 1),
    })
}
