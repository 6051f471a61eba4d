//! Choosing the backend once per run: the CPU reference, one adapter, the native f32 engine,
//! or several adapters sharing a grid batch. Commands solve through the [`Backend`]'s solver traits and never
//! match on `--backend` again; a run opens one GPU device (or one per sharded adapter).

use std::ops::ControlFlow;

use anyhow::{Context, Result, bail, ensure};
use clap::ValueEnum;
use serde_json::json;

use super::summary::ProgressLine;
use softvi::engine::gpu::GpuContext;
use softvi::wgpu::DeviceType;
use softvi::{
    CpuReference, GpuSolver, GridProblem, GridSolver, MdpSolution, MdpSolver, NativeSolver,
    Outputs, ShardedSolver, SolveOptions, TabularMdp,
};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum BackendArg {
    /// `gpu` on a hardware adapter; `native` where the only adapter is a CPU (llvmpipe), which
    /// runs the WGSL kernels several times slower than the native engine.
    Auto,
    /// WGSL compute shaders on a wgpu adapter.
    Gpu,
    /// The native f32 engine on every core for plain grid solves and general MDPs (every step
    /// and the occupancy of a grid run on the adapter, or on the reference without one).
    Native,
    /// The f64 CPU reference.
    Cpu,
}

impl BackendArg {
    /// The `summary.json` name.
    pub(super) fn name(self) -> &'static str {
        match self {
            BackendArg::Auto => "auto",
            BackendArg::Gpu => "gpu",
            BackendArg::Native => "native",
            BackendArg::Cpu => "cpu",
        }
    }
}

pub(super) fn adapter_json(ctx: &GpuContext) -> serde_json::Value {
    json!({
        "name": ctx.info.name,
        "backend": ctx.info.backend.to_string(),
        "driver": ctx.info.driver,
        "device_type": format!("{:?}", ctx.info.device_type),
    })
}

/// How many adapters `--adapters` asks for: `None` = all.
fn adapter_count(text: &str) -> Result<Option<usize>> {
    if text == "all" {
        return Ok(None);
    }
    let n: usize = text
        .parse()
        .with_context(|| format!("--adapters {text:?} is neither `all` nor a count"))?;
    ensure!(n >= 1, "--adapters must be at least 1, got {n}");
    Ok(Some(n))
}

/// The solver a run uses, chosen once from `--backend` and `--adapters`.
pub(super) enum Backend {
    /// The f64 reference.
    Cpu(CpuReference),
    /// One adapter, its engines built on first use (boxed: it holds the engines' state).
    Gpu(Box<GpuSolver>),
    /// The native engine, with the adapter (if any) for what it does not compute.
    Native(Box<NativeSolver>),
    /// Several adapters; `adapters` is the flag's text, for messages.
    Sharded {
        solver: ShardedSolver,
        adapters: String,
    },
}

impl Backend {
    /// Opens the backend `--backend` and `--adapters` ask for (validated before any device
    /// is opened).
    pub(super) fn open(backend: BackendArg, adapters: &str) -> Result<Self> {
        let count = adapter_count(adapters)?;
        match backend {
            BackendArg::Cpu => Ok(Backend::Cpu(CpuReference)),
            BackendArg::Native => Ok(Backend::Native(Box::new(NativeSolver::new(
                GpuSolver::from_env().ok().map(Box::new),
            )))),
            BackendArg::Auto if count == Some(1) => match GpuSolver::from_env() {
                Ok(gpu) if gpu.context().info.device_type != DeviceType::Cpu => {
                    Ok(Backend::Gpu(Box::new(gpu)))
                }
                // A software rasteriser (llvmpipe) keeps what the native engine does not
                // compute; with no adapter at all the reference does.
                Ok(gpu) => Ok(Backend::Native(Box::new(NativeSolver::new(Some(
                    Box::new(gpu),
                ))))),
                Err(softvi::Error::NoAdapter(_)) => {
                    Ok(Backend::Native(Box::new(NativeSolver::new(None))))
                }
                Err(e) => Err(e.into()),
            },
            BackendArg::Gpu | BackendArg::Auto if count == Some(1) => {
                Ok(Backend::Gpu(Box::new(GpuSolver::from_env()?)))
            }
            BackendArg::Gpu | BackendArg::Auto => {
                let mut contexts = GpuContext::all_from_env()?;
                if let Some(n) = count {
                    ensure!(
                        n <= contexts.len(),
                        "--adapters {n}: only {} adapter(s) available (see `softvi adapters`)",
                        contexts.len()
                    );
                    contexts.truncate(n);
                }
                Ok(Backend::Sharded {
                    solver: ShardedSolver::new(contexts)?,
                    adapters: adapters.to_owned(),
                })
            }
        }
    }

    /// The adapter description for `summary.json` (a list when sharded).
    pub(super) fn adapter_json(&self) -> serde_json::Value {
        match self {
            Backend::Cpu(_) => json!({"name": "cpu reference (f64)", "backend": "cpu"}),
            Backend::Gpu(gpu) => adapter_json(gpu.context()),
            Backend::Native(native) => json!({
                "name": GridSolver::label(native.as_ref()),
                "backend": "native",
                "threads": native.threads,
                "vectors": format!("{:?}", *softvi::engine::native::grid_backup::VECTORS).to_lowercase(),
                "fallback": native.fallback.as_ref().map(|gpu| adapter_json(gpu.context())),
            }),
            Backend::Sharded { solver, .. } => solver.contexts().map(adapter_json).collect(),
        }
    }

    /// The grid solver.
    pub(super) fn grid(&mut self) -> &mut dyn GridSolver {
        match self {
            Backend::Cpu(cpu) => cpu,
            Backend::Gpu(gpu) => gpu.as_mut(),
            Backend::Native(native) => native.as_mut(),
            Backend::Sharded { solver, .. } => solver,
        }
    }

    /// The general-MDP solver; several adapters shard plain grid solves only.
    pub(super) fn mdp(&mut self) -> Result<&mut dyn MdpSolver> {
        match self {
            Backend::Cpu(cpu) => Ok(cpu),
            Backend::Gpu(gpu) => Ok(gpu.as_mut()),
            Backend::Native(native) => Ok(native.as_mut()),
            Backend::Sharded { adapters, .. } => bail!(
                "--adapters {adapters} shards plain grid solves only; this solve runs on one \
                 adapter"
            ),
        }
    }

    /// The one adapter's solver, for what only the GPU has (the grid kernels on an MDP, the
    /// posterior kernel); `None` on the CPU reference.
    pub(super) fn gpu(&mut self) -> Result<Option<&mut GpuSolver>> {
        match self {
            Backend::Cpu(_) => Ok(None),
            Backend::Gpu(gpu) => Ok(Some(gpu.as_mut())),
            Backend::Native(native) => Ok(native.fallback.as_deref_mut()),
            Backend::Sharded { .. } => self.mdp().and(Ok(None)),
        }
    }

    /// Solves a grid batch with a progress line; `starts` are the occupancy's start cells.
    pub(super) fn solve_grid(
        &mut self,
        problem: &GridProblem,
        starts: Option<&[usize]>,
        options: &SolveOptions,
        outputs: Outputs,
        quiet: bool,
    ) -> Result<MdpSolution> {
        // Several adapters refuse every step and the occupancy before computing anything.
        let mut line = ProgressLine::new(quiet);
        let solved = self
            .grid()
            .solve_grid(problem, starts, options, outputs, &mut |p| {
                line.update(p);
                ControlFlow::Continue(())
            });
        line.finish();
        Ok(solved?)
    }

    /// Solves a general MDP on the f64 reference with a progress line, reporting f64 arrays;
    /// only the CPU backend computes in f64.
    pub(super) fn solve_mdp_f64(
        &mut self,
        mdp: &TabularMdp,
        options: &SolveOptions,
        outputs: Outputs,
        quiet: bool,
    ) -> Result<MdpSolution<f64>> {
        ensure!(
            matches!(self, Backend::Cpu(_)),
            "f64 results come from the CPU reference only (--backend cpu)"
        );
        let mut line = ProgressLine::new(quiet);
        let solved = softvi::engine::cpu::solve_mdp_cpu_f64(mdp, options, outputs, &mut |p| {
            line.update(p);
            ControlFlow::Continue(())
        });
        line.finish();
        Ok(solved?)
    }

    /// How this backend stores `mdp`'s transitions in a solve under `options`: `"csr"` or
    /// `"dense"` ([`MdpSolver::transitions`]).
    pub(super) fn transitions(&mut self, mdp: &TabularMdp, options: &SolveOptions) -> &'static str {
        self.mdp()
            .map_or("csr", |solver| solver.transitions(mdp, options))
    }

    /// Solves a general MDP with a progress line.
    pub(super) fn solve_mdp(
        &mut self,
        mdp: &TabularMdp,
        options: &SolveOptions,
        outputs: Outputs,
        quiet: bool,
    ) -> Result<MdpSolution> {
        let solver = self.mdp()?;
        let mut line = ProgressLine::new(quiet);
        let solved = solver.solve_mdp(mdp, options, outputs, &mut |p| {
            line.update(p);
            ControlFlow::Continue(())
        });
        line.finish();
        Ok(solved?)
    }
}
