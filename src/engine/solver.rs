//! One way to solve: the [`GridSolver`] and [`MdpSolver`] traits, implemented by the CPU
//! reference ([`CpuReference`]), one adapter ([`GpuSolver`], which builds its grid and CSR
//! engines on first use and keeps them) and several adapters at once ([`ShardedSolver`]).
//! [`GridKernelsOnMdp`] solves an MDP over a [`GridMdp`]'s states on the grid kernels.
//!
//! Every solver takes the same [`SolveOptions`] and [`Outputs`] and returns an
//! [`MdpSolution`] laid out the same way, so a caller (the CLI, IRL, the tests) picks a
//! solver once and never matches on the backend again.

use crate::engine::Instant;

use super::cpu::{solve_cpu_with_progress, solve_mdp_cpu_with_progress};
use super::gpu::mdp_engine::MdpStorage;
#[cfg(not(target_arch = "wasm32"))]
use super::gpu::solve_sharded;
use super::gpu::{EngineOptions, GpuContext, GridEngine, MdpEngine};
use super::memory;
use super::options::{Horizon, Outputs, SolveOptions};
use super::schedule::OnProgress;
use super::solution::{MdpSolution, check_mdp_solve};
use crate::error::Result;
use crate::world::grid_mdp::{GridMdp, start_distribution};
use crate::world::grid_problem::GridProblem;
use crate::world::mdp::TabularMdp;

/// Solves batches of general tabular MDPs.
pub trait MdpSolver {
    /// Where it runs, for summaries: `"cpu reference (f64)"` or the adapter's label.
    fn label(&self) -> String;

    /// How a solve of `mdp` under `options` stores the transitions, for summaries: `"csr"`
    /// (sparse rows, f64 in the reference) or `"dense"` (the `[S*A, S]` f32 matrix
    /// `[s * A + a][s']`, read as a matrix product).
    fn transitions(&self, _mdp: &TabularMdp, _options: &SolveOptions) -> &'static str {
        "csr"
    }

    /// Solves every task of `mdp`; `progress` is called after convergence checks. Values
    /// `[task][state]` (`[task][t][state]` with every step), policy `[task][state][action]`.
    fn solve_mdp(
        &mut self,
        mdp: &TabularMdp,
        options: &SolveOptions,
        outputs: Outputs,
        progress: &mut OnProgress<'_>,
    ) -> Result<MdpSolution>;
}

/// Solves batches of gridworld tasks.
pub trait GridSolver {
    /// Where it runs, for summaries.
    fn label(&self) -> String;

    /// Solves every task of `problem`, laid out over the map: values `[task][row][col]`
    /// (`[task][t][row][col]` with every step), policy `[task][row][col][action]`, NaN on
    /// walls. `starts` are the cells the occupancy starts from, shared by all tasks (`None`:
    /// uniform over each task's free non-goal cells); only the occupancy reads them.
    fn solve_grid(
        &mut self,
        problem: &GridProblem,
        starts: Option<&[usize]>,
        options: &SolveOptions,
        outputs: Outputs,
        progress: &mut OnProgress<'_>,
    ) -> Result<MdpSolution>;
}

/// What every grid solver checks before any work: the problem, the settings, and that the
/// solve's host memory ([`memory::estimate_grid_bytes`]) fits this machine.
fn check_grid_solve(problem: &GridProblem, options: &SolveOptions, outputs: Outputs) -> Result<()> {
    problem.validate()?;
    options.validate()?;
    memory::check_grid(problem, options, outputs)
}

/// What every MDP solver checks before any work: the MDP, the settings, and that the solve's
/// host memory ([`memory::estimate_mdp_bytes`]) fits this machine.
fn check_mdp(mdp: &TabularMdp, options: &SolveOptions, outputs: Outputs) -> Result<()> {
    check_mdp_solve(mdp, options)?;
    memory::check_mdp(mdp, options, outputs)
}

/// A grid batch solved as a tabular MDP over its free cells by `solver`, laid back onto the
/// map: how every step and the occupancy of a grid are computed where the grid kernels do not.
fn solve_as_mdp(
    solver: &mut dyn MdpSolver,
    problem: &GridProblem,
    starts: Option<&[usize]>,
    options: &SolveOptions,
    outputs: Outputs,
    progress: &mut OnProgress<'_>,
) -> Result<MdpSolution> {
    let world = GridMdp::new(problem, starts)?;
    let mut solved = solver.solve_mdp(&world.mdp, options, outputs, progress)?;
    solved.to_cells(&world);
    Ok(solved)
}

/// The f64 CPU reference: one thread, the truth every GPU result is compared with.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuReference;

impl MdpSolver for CpuReference {
    fn label(&self) -> String {
        "cpu reference (f64)".into()
    }

    fn solve_mdp(
        &mut self,
        mdp: &TabularMdp,
        options: &SolveOptions,
        outputs: Outputs,
        progress: &mut OnProgress<'_>,
    ) -> Result<MdpSolution> {
        check_mdp(mdp, options, outputs)?;
        solve_mdp_cpu_with_progress(mdp, options, outputs, progress)
    }
}

impl GridSolver for CpuReference {
    fn label(&self) -> String {
        MdpSolver::label(self)
    }

    fn solve_grid(
        &mut self,
        problem: &GridProblem,
        starts: Option<&[usize]>,
        options: &SolveOptions,
        outputs: Outputs,
        progress: &mut OnProgress<'_>,
    ) -> Result<MdpSolution> {
        check_grid_solve(problem, options, outputs)?;
        if !outputs.needs_steps() {
            return Ok(MdpSolution::plain(solve_cpu_with_progress(
                problem, options, outputs, progress,
            )?));
        }
        solve_as_mdp(self, problem, starts, options, outputs, progress)
    }
}

/// One adapter: owns its GPU context and builds the grid and CSR engines on first use, so
/// one process opens one device and compiles each pipeline once, whatever it solves.
pub struct GpuSolver {
    context: GpuContext,
    engine_options: EngineOptions,
    grid: Option<GridEngine>,
    mdp: Option<MdpEngine>,
}

impl GpuSolver {
    /// A solver on `context` with the adapter's own limits.
    pub fn new(context: GpuContext) -> Self {
        Self::with_options(context, EngineOptions::default())
    }

    /// A solver on `context` whose engines take `engine_options` (e.g. lowered limits).
    pub fn with_options(context: GpuContext, engine_options: EngineOptions) -> Self {
        Self {
            context,
            engine_options,
            grid: None,
            mdp: None,
        }
    }

    /// A solver on the adapter the environment picks (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`);
    /// [`crate::Error::NoAdapter`] when there is none.
    pub fn from_env() -> Result<Self> {
        Ok(Self::new(GpuContext::from_env()?))
    }

    /// The GPU context (adapter, device, queue), e.g. for the posterior kernel.
    pub fn context(&self) -> &GpuContext {
        &self.context
    }

    /// The grid engine, built on first use.
    pub fn grid_engine(&mut self) -> Result<&mut GridEngine> {
        let engine = match self.grid.take() {
            Some(engine) => engine,
            None => GridEngine::with_options(&self.context, self.engine_options)?,
        };
        Ok(self.grid.insert(engine))
    }

    /// The CSR engine, built on first use.
    pub fn mdp_engine(&mut self) -> Result<&mut MdpEngine> {
        let engine = match self.mdp.take() {
            Some(engine) => engine,
            None => MdpEngine::with_options(&self.context, self.engine_options)?,
        };
        Ok(self.mdp.insert(engine))
    }
}

impl MdpSolver for GpuSolver {
    fn label(&self) -> String {
        self.context.adapter_label()
    }

    fn transitions(&self, mdp: &TabularMdp, options: &SolveOptions) -> &'static str {
        match self
            .mdp
            .as_ref()
            .map(|engine| engine.storage_for(mdp, options))
        {
            Some(Ok(MdpStorage::Dense)) => "dense",
            _ => "csr",
        }
    }

    fn solve_mdp(
        &mut self,
        mdp: &TabularMdp,
        options: &SolveOptions,
        outputs: Outputs,
        progress: &mut OnProgress<'_>,
    ) -> Result<MdpSolution> {
        check_mdp(mdp, options, outputs)?;
        self.mdp_engine()?
            .solve_with_progress(mdp, options, outputs, progress)
    }
}

impl GridSolver for GpuSolver {
    fn label(&self) -> String {
        MdpSolver::label(self)
    }

    /// Plain solves and finite horizons run on the grid kernels (with their own forward
    /// pass); the discounted occupancy runs on the CSR kernels over the grid's free cells.
    fn solve_grid(
        &mut self,
        problem: &GridProblem,
        starts: Option<&[usize]>,
        options: &SolveOptions,
        outputs: Outputs,
        progress: &mut OnProgress<'_>,
    ) -> Result<MdpSolution> {
        check_grid_solve(problem, options, outputs)?;
        if !outputs.needs_steps() {
            return Ok(MdpSolution::plain(
                self.grid_engine()?
                    .solve_with_progress(problem, options, outputs, progress)?,
            ));
        }
        if matches!(options.horizon, Horizon::Finite(_)) {
            problem.validate()?;
            let start = start_distribution(problem, starts)?;
            return self
                .grid_engine()?
                .solve_steps(problem, options, outputs, &start, progress);
        }
        solve_as_mdp(self, problem, starts, options, outputs, progress)
    }
}

/// The native f32 engine ([`super::native`]) on every core for plain grid solves and general
/// MDPs (with every output); every step and the occupancy of a grid run on `fallback` (an
/// adapter), or on the CPU reference without one. What `--backend auto` picks where the only
/// adapters are CPUs (llvmpipe): there it sweeps several times faster than the WGSL kernels.
#[cfg(not(target_arch = "wasm32"))]
pub struct NativeSolver {
    /// Threads per sweep.
    pub threads: usize,
    /// The solver of what the native engine does not compute.
    pub fallback: Option<Box<GpuSolver>>,
}

#[cfg(not(target_arch = "wasm32"))]
impl NativeSolver {
    /// A solver on every core, with `fallback` for what it does not compute.
    pub fn new(fallback: Option<Box<GpuSolver>>) -> Self {
        Self {
            threads: super::native::default_threads(),
            fallback,
        }
    }

    /// Solves a plain grid batch from the initial values `v0` `[task][row][col]` (`None`: the
    /// start every backend takes), for callers that warm-start.
    pub fn solve_plain_from(
        &self,
        problem: &GridProblem,
        options: &SolveOptions,
        outputs: Outputs,
        v0: Option<&[f64]>,
        progress: &mut OnProgress<'_>,
    ) -> Result<MdpSolution> {
        check_grid_solve(problem, options, outputs)?;
        Ok(MdpSolution::plain(super::native::solve_native(
            problem,
            options,
            outputs,
            v0,
            self.threads,
            progress,
        )?))
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl MdpSolver for NativeSolver {
    fn label(&self) -> String {
        let vectors = *super::native::grid_backup::VECTORS;
        format!("native cpu (f32, {} threads, {vectors:?})", self.threads)
    }

    fn transitions(&self, mdp: &TabularMdp, _options: &SolveOptions) -> &'static str {
        match super::layout::dense_transitions(mdp) {
            true => "dense",
            false => "csr",
        }
    }

    fn solve_mdp(
        &mut self,
        mdp: &TabularMdp,
        options: &SolveOptions,
        outputs: Outputs,
        progress: &mut OnProgress<'_>,
    ) -> Result<MdpSolution> {
        check_mdp(mdp, options, outputs)?;
        super::native::solve_native_mdp(mdp, options, outputs, self.threads, progress)
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl GridSolver for NativeSolver {
    fn label(&self) -> String {
        MdpSolver::label(self)
    }

    fn solve_grid(
        &mut self,
        problem: &GridProblem,
        starts: Option<&[usize]>,
        options: &SolveOptions,
        outputs: Outputs,
        progress: &mut OnProgress<'_>,
    ) -> Result<MdpSolution> {
        if !outputs.needs_steps() {
            return self.solve_plain_from(problem, options, outputs, None, progress);
        }
        match &mut self.fallback {
            Some(gpu) => gpu.solve_grid(problem, starts, options, outputs, progress),
            None => CpuReference.solve_grid(problem, starts, options, outputs, progress),
        }
    }
}

/// Several adapters at once: a grid batch's tasks split into contiguous shards, one per
/// adapter, solved concurrently and gathered in task order.
#[cfg(not(target_arch = "wasm32"))]
pub struct ShardedSolver {
    solvers: Vec<GpuSolver>,
}

#[cfg(not(target_arch = "wasm32"))]
impl ShardedSolver {
    /// A solver over `contexts` (at least one), in that order.
    pub fn new(contexts: Vec<GpuContext>) -> Result<Self> {
        crate::error::ensure!(!contexts.is_empty(), "no adapter to shard the tasks over");
        Ok(Self {
            solvers: contexts.into_iter().map(GpuSolver::new).collect(),
        })
    }

    /// The GPU contexts, in shard order.
    pub fn contexts(&self) -> impl Iterator<Item = &GpuContext> {
        self.solvers.iter().map(GpuSolver::context)
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl GridSolver for ShardedSolver {
    fn label(&self) -> String {
        self.contexts()
            .map(GpuContext::adapter_label)
            .collect::<Vec<_>>()
            .join(" + ")
    }

    /// Plain solves only: every step and the occupancy run on one adapter.
    fn solve_grid(
        &mut self,
        problem: &GridProblem,
        _starts: Option<&[usize]>,
        options: &SolveOptions,
        outputs: Outputs,
        _progress: &mut OnProgress<'_>,
    ) -> Result<MdpSolution> {
        crate::error::ensure!(
            !outputs.needs_steps(),
            "several adapters (--adapters) shard plain grid solves only; every step and the \
             occupancy run on one adapter"
        );
        check_grid_solve(problem, options, outputs)?;
        let mut engines = Vec::with_capacity(self.solvers.len());
        for solver in &mut self.solvers {
            engines.push(solver.grid_engine()?);
        }
        Ok(MdpSolution::plain(solve_sharded(
            &mut engines,
            problem,
            options,
            outputs,
        )?))
    }
}

/// An MDP over `world`'s states (as [`GridMdp::problem_for`] reads it: the grid's dynamics,
/// any state reward) solved for a finite horizon on the grid kernels, and laid out over the
/// states as [`MdpSolver`]s give it. IRL on a grid runs this way: the grid kernels are several
/// times faster than the grid as CSR.
pub struct GridKernelsOnMdp<'a> {
    /// The solver whose grid engine runs.
    pub solver: &'a mut GpuSolver,
    /// The grid as an MDP.
    pub world: &'a GridMdp,
    /// The grid batch the MDP was built from (map, actions, slip, costs, goals).
    pub template: &'a GridProblem,
}

impl MdpSolver for GridKernelsOnMdp<'_> {
    fn label(&self) -> String {
        format!("{} (grid kernels)", MdpSolver::label(&*self.solver))
    }

    fn solve_mdp(
        &mut self,
        mdp: &TabularMdp,
        options: &SolveOptions,
        outputs: Outputs,
        _progress: &mut OnProgress<'_>,
    ) -> Result<MdpSolution> {
        check_mdp(mdp, options, outputs)?;
        let started = Instant::now();
        let mut solved = self.solver.grid_engine()?.solve_grid_mdp(
            self.world,
            self.template,
            mdp,
            options,
            outputs,
        )?;
        solved.solution.seconds = started.elapsed().as_secs_f64();
        Ok(solved)
    }
}
