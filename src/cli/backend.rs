//! Choosing and running a backend: the CPU reference or the GPU, on one adapter or sharded
//! over several.

use anyhow::{Context, Result, ensure};
use clap::ValueEnum;
use serde_json::json;

use super::iteration::IterationArgs;
use super::summary::ProgressLine;
use softvi::engine::gpu::{GpuContext, GridEngine};
use softvi::engine::options::SolveOptions;
use softvi::engine::schedule::Progress;
use softvi::engine::solution::Solution;
use softvi::world::grid_problem::GridProblem;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum BackendArg {
    /// WGSL compute shaders on a wgpu adapter.
    Gpu,
    /// The f64 CPU reference.
    Cpu,
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

/// Runs the solve on the chosen backend and adapters; returns the solution and the adapter
/// description (a list when the tasks were sharded over several adapters).
pub(super) fn run_backend(
    backend: BackendArg,
    adapters: &str,
    problem: &GridProblem,
    options: &SolveOptions,
    quiet: bool,
) -> Result<(Solution, serde_json::Value)> {
    let mut line = ProgressLine::new(quiet);
    let result = run_backend_with(backend, adapters, problem, options, &mut |p| line.update(p));
    line.finish();
    result
}

fn run_backend_with(
    backend: BackendArg,
    adapters: &str,
    problem: &GridProblem,
    options: &SolveOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(Solution, serde_json::Value)> {
    let count = adapter_count(adapters)?;
    if backend == BackendArg::Gpu && count != Some(1) {
        let mut contexts = GpuContext::all_from_env()?;
        if let Some(n) = count {
            ensure!(
                n <= contexts.len(),
                "--adapters {n}: only {} adapter(s) available (see `softvi adapters`)",
                contexts.len()
            );
            contexts.truncate(n);
        }
        let mut engines = contexts
            .iter()
            .map(GridEngine::new)
            .collect::<softvi::Result<Vec<_>>>()?;
        let solution = softvi::engine::gpu::solve_sharded(&mut engines, problem, options)?;
        return Ok((solution, contexts.iter().map(adapter_json).collect()));
    }
    match backend {
        BackendArg::Cpu => Ok((
            softvi::engine::cpu::solve_cpu_with_progress(problem, options, progress)?,
            json!({"name": "cpu reference (f64)", "backend": "cpu"}),
        )),
        BackendArg::Gpu => {
            let ctx = GpuContext::from_env()?;
            let adapter = adapter_json(&ctx);
            let mut engine = GridEngine::new(&ctx)?;
            Ok((
                engine.solve_with_progress(problem, options, progress)?,
                adapter,
            ))
        }
    }
}

/// Runs a general-MDP solve on the chosen backend; returns it with the adapter description.
pub(super) fn run_mdp_backend(
    iteration: &IterationArgs,
    mdp: &softvi::world::mdp::TabularMdp,
    options: &SolveOptions,
    outputs: softvi::engine::options::Outputs,
    quiet: bool,
) -> Result<(softvi::engine::solution::MdpSolution, serde_json::Value)> {
    ensure!(
        iteration.adapters == "1",
        "--adapters {} shards plain grid solves only; this solve runs on one adapter",
        iteration.adapters
    );
    match iteration.backend {
        BackendArg::Cpu => Ok((
            softvi::engine::cpu::solve_mdp_cpu(mdp, options, outputs)?,
            json!({"name": "cpu reference (f64)", "backend": "cpu"}),
        )),
        BackendArg::Gpu => {
            let ctx = GpuContext::from_env()?;
            let adapter = adapter_json(&ctx);
            let mut engine = softvi::engine::gpu::MdpEngine::new(&ctx)?;
            let mut line = ProgressLine::new(quiet);
            let result = engine.solve_with_progress(mdp, options, outputs, &mut |p| line.update(p));
            line.finish();
            Ok((result?, adapter))
        }
    }
}
