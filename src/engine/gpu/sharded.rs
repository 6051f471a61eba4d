//! Several adapters at once: the task batch is split into contiguous shards, one per engine,
//! solved concurrently (a thread each) and gathered in task order.

use std::borrow::BorrowMut;
use std::time::Instant;

use crate::error::{Context, Error, Result, ensure};

use super::grid_engine::GridEngine;
use crate::engine::options::{Outputs, SolveOptions};
use crate::engine::solution::Solution;
use crate::world::grid_problem::GridProblem;

/// Solves `problem` with its tasks split evenly over `engines` (in order); the result is laid
/// out exactly as a single engine's.
pub fn solve_sharded<E: BorrowMut<GridEngine> + Send>(
    engines: &mut [E],
    problem: &GridProblem,
    options: &SolveOptions,
    outputs: Outputs,
) -> Result<Solution> {
    ensure!(!engines.is_empty(), "no engine to shard the tasks over");
    problem.validate()?;
    options.validate()?;
    outputs.ensure_plain()?;
    let start = Instant::now();
    let per_shard = problem.tasks.len().div_ceil(engines.len());
    let shards: Vec<GridProblem> = problem
        .tasks
        .chunks(per_shard)
        .map(|tasks| GridProblem {
            tasks: tasks.to_vec(),
            ..problem.clone()
        })
        .collect();
    let results: Vec<Result<Solution>> = std::thread::scope(|scope| {
        let handles: Vec<_> = engines
            .iter_mut()
            .zip(&shards)
            .map(|(engine, shard)| {
                scope.spawn(move || {
                    let engine = engine.borrow_mut();
                    engine
                        .solve(shard, options, outputs)
                        .with_context(|| format!("shard on {}", engine.adapter_label()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Gpu("a shard's thread panicked".into())))
            })
            .collect()
    });
    let mut parts = results.into_iter().collect::<Result<Vec<_>>>()?.into_iter();
    let mut merged = parts.next().context("no shard ran")?;
    for part in parts {
        merged.values.extend(part.values);
        for (all, part) in [(&mut merged.policy, part.policy), (&mut merged.q, part.q)] {
            match (all.as_mut(), part) {
                (Some(all), Some(part)) => all.extend(part),
                _ => *all = None,
            }
        }
        merged.iterations.extend(part.iterations);
        merged.residual.extend(part.residual);
        merged.error_bound.extend(part.error_bound);
        merged.status.extend(part.status);
        merged.unreachable.extend(part.unreachable);
    }
    merged.seconds = start.elapsed().as_secs_f64();
    Ok(merged)
}
