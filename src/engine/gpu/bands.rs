//! Bands: how both engines split a chunk of tasks into dispatches whose bindings fit the
//! adapter's storage-binding limit, and the workgroups each dispatch takes.
//!
//! A band is a window of whole tasks, or of one task's units: rows of a grid (the grid
//! kernels read one row of halo above and below) or states of an MDP (with their transition
//! entries). [`plan_bands`] is the one planner; [`super::grid_engine::plan_grid_bands`] and
//! [`super::mdp_engine::plan_mdp_bands`] say what fits for their kernels.

use crate::error::{Error, Result};

use super::core::WORKGROUP_SIZE;

/// A window of tasks `[task_base, task_base + task_count)` and, within each, units
/// `[first, first + count)` (grid rows or MDP states), dispatched as one unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Band {
    /// First task, within the chunk.
    pub task_base: usize,
    /// Tasks covered (1 when the band covers part of a task).
    pub task_count: usize,
    /// First unit (row or state).
    pub first: usize,
    /// Units covered.
    pub count: usize,
}

/// What a band of a chunk may hold.
pub struct BandLimits<'a> {
    /// Bytes per task of a band of whole tasks, when a whole task fits one binding; `None`
    /// when tasks must be split into unit ranges.
    pub whole_task_bytes: Option<u64>,
    /// Bytes a band's bindings may hold (the binding limit less alignment slack).
    pub capacity: u64,
    /// Whether units `[u0, u1)` of one task fit as one band.
    pub fits: &'a dyn Fn(usize, usize) -> bool,
    /// The error when unit `u` alone does not fit.
    pub alone: &'a dyn Fn(usize) -> Error,
    /// Most workgroups along one dispatch dimension: a band has at most this many tasks
    /// (its z dimension).
    pub max_workgroups: u32,
}

/// Splits `tasks` tasks of `units` units into bands under `limits`: bands of as many whole
/// tasks as fit when a whole task does, else every task split into the longest unit ranges
/// that fit, in order.
pub fn plan_bands(tasks: usize, units: usize, limits: &BandLimits) -> Result<Vec<Band>> {
    if let Some(task_bytes) = limits.whole_task_bytes {
        let per_band = ((limits.capacity / task_bytes.max(1)) as usize)
            .clamp(1, limits.max_workgroups as usize);
        return Ok((0..tasks)
            .step_by(per_band)
            .map(|t| Band {
                task_base: t,
                task_count: per_band.min(tasks - t),
                first: 0,
                count: units,
            })
            .collect());
    }
    let fits = limits.fits;
    let mut ranges = Vec::new();
    let mut u0 = 0;
    while u0 < units {
        if !fits(u0, u0 + 1) {
            return Err((limits.alone)(u0));
        }
        // The longest fitting range by doubling, then bisection.
        let (mut end, mut step) = (u0 + 1, 1usize);
        while end < units && fits(u0, (end + step).min(units)) {
            end = (end + step).min(units);
            step *= 2;
        }
        while step > 1 {
            step /= 2;
            if end < units && fits(u0, (end + step).min(units)) {
                end = (end + step).min(units);
            }
        }
        ranges.push(u0..end);
        u0 = end;
    }
    Ok((0..tasks)
        .flat_map(|t| {
            ranges.iter().map(move |r| Band {
                task_base: t,
                task_count: 1,
                first: r.start,
                count: r.len(),
            })
        })
        .collect())
}

/// Workgroups `[x, y, z]` of a dispatch over `items` invocations per task and `tasks` tasks,
/// x at most `max_workgroups`, and the workgroups per task; `[0, 0, 0]` when there is nothing
/// to do. Fails when y would pass the limit too.
pub fn band_dispatch(items: usize, tasks: usize, max_workgroups: u32) -> Result<([u32; 3], u32)> {
    let groups = (items as u64).div_ceil(WORKGROUP_SIZE as u64);
    let x = groups.clamp(1, max_workgroups as u64);
    let y = groups.div_ceil(x);
    if y > max_workgroups as u64 || tasks as u64 > max_workgroups as u64 {
        return Err(Error::limit(
            format!("a dispatch of {items} invocations x {tasks} tasks"),
            y.max(tasks as u64),
            "the adapter's max_compute_workgroups_per_dimension",
            max_workgroups as u64,
        ));
    }
    let dispatch = match groups {
        0 => [0, 0, 0],
        _ => [x as u32, y as u32, tasks as u32],
    };
    Ok((dispatch, groups as u32))
}
