//! One up-front host-memory estimate for every solver: what a solve holds at its peak (its
//! inputs as the kernels read them, the working arrays, every step it keeps, and the outputs it
//! returns, counted twice: a solve lays its outputs out once more before returning them, and a
//! caller writing them to files encodes them once more), checked before any work against what
//! the machine has available. A request that does not fit is refused with
//! [`Error::LimitExceeded`] at once, instead of growing for minutes and being killed.
//!
//! The estimate is the CPU reference's (f64 working arrays); the GPU path holds less on the
//! host (its working arrays live on the adapter, whose own limits it checks), but reads every
//! output back into host memory, so one bound serves both backends.

use super::options::{Horizon, Method, Outputs, SolveOptions};
use crate::error::{Error, Result};
use crate::world::grid_problem::GridProblem;
use crate::world::mdp::TabularMdp;

/// The sizes of a grid solve that its memory depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GridSize {
    /// Cells H * W.
    pub cells: usize,
    /// Free cells (the states of the grid as an MDP, for every step and the occupancy).
    pub free_cells: usize,
    /// Tasks B.
    pub tasks: usize,
    /// Actions |A|.
    pub actions: usize,
    /// Whether moves slip (each transition row then holds up to |A| successors).
    pub slip: bool,
}

impl GridSize {
    /// The sizes of `problem` (H * W saturates where it overflows).
    pub fn of(problem: &GridProblem) -> Self {
        let g = &problem.grid;
        Self {
            cells: g.height.saturating_mul(g.width),
            free_cells: g.free.iter().filter(|&&f| f).count(),
            tasks: problem.tasks.len(),
            actions: problem.actions.count(),
            slip: problem.slip > 0.0,
        }
    }
}

/// Products and sums of byte counts that saturate instead of wrapping; anything past
/// `isize::MAX` cannot be allocated whatever the machine.
fn mul(factors: &[u128]) -> u128 {
    factors.iter().fold(1u128, |acc, &f| acc.saturating_mul(f))
}

fn n(x: usize) -> u128 {
    x as u128
}

/// What modified policy iteration adds over `per_task_state` task-states of `actions` actions
/// (the reference's, f64): the improvement's pi and h, and the evaluation sweeps' two value
/// arrays ([`crate::engine::cpu::policy_evaluation`]); nothing for value iteration.
fn mpi_bytes(options: &SolveOptions, per_task_state: u128, actions: u128) -> u128 {
    match options.method {
        Method::Vi => 0,
        Method::Mpi { .. } => mul(&[per_task_state, actions + 3, 8]),
    }
}

/// Host bytes a finite-horizon or discounted solve of `tasks` tasks over `states` states and
/// `actions` actions with `nnz` transition entries holds, its outputs laid out over `cells`
/// states per task (the map for a grid, the states for an MDP).
fn mdp_bytes(
    (tasks, states, actions, nnz, cells): (usize, usize, usize, u128, usize),
    options: &SolveOptions,
    outputs: Outputs,
) -> u128 {
    let (b, s, a, c) = (n(tasks), n(states), n(actions), n(cells));
    let per_task_state = mul(&[b, s]);
    let steps = match options.horizon {
        Horizon::Finite(t) => Some(u128::from(t)),
        Horizon::Infinite { .. } => None,
    };
    // The reachability pass's transpose, and the forward pass's.
    let transpose = mul(&[s + 1, 4]) + mul(&[nnz, 8]);
    // fixed, excluded (1 byte each), v0, v, v_next and the extrapolation backup (8 each).
    let mut working = mul(&[per_task_state, 34]) + 2 * transpose;
    working += mpi_bytes(options, per_task_state, a);
    let mut out = 0u128;
    let per_task_cell = mul(&[b, c]);
    match steps {
        Some(t) if outputs.needs_steps() => {
            // V_0..V_T as the sweeps make them, and D_0..D_T with the occupancy (f64).
            working += mul(&[t + 1, per_task_state, 8]);
            if outputs.occupancy {
                working += mul(&[t + 1, per_task_state, 8]);
                out += mul(&[t + 1, per_task_cell, 4]);
            }
            if outputs.all_steps {
                out += mul(&[t + 1, per_task_cell, 4]);
                let rows = u128::from(outputs.policy) + u128::from(outputs.q);
                out += mul(&[rows, t, per_task_cell, a, 4]);
            } else {
                out += mul(&[per_task_cell, 4]);
            }
        }
        _ => {
            out += mul(&[per_task_cell, 4]);
            let rows = u128::from(outputs.policy) + u128::from(outputs.q);
            out += mul(&[rows, per_task_cell, a, 4]);
            if outputs.occupancy && steps.is_none() {
                // The policy the occupancy follows, its per-entry weights, and the iteration.
                working += mul(&[per_task_state, a, 4]) + mul(&[b, nnz, 4]);
                working += mul(&[per_task_state, 24]);
                out += mul(&[per_task_cell, 4]);
            }
        }
    }
    working.saturating_add(out.saturating_mul(2))
}

/// Host bytes a solve of `size` holds at its peak (see the module's notes).
pub fn grid_size_bytes(size: GridSize, options: &SolveOptions, outputs: Outputs) -> u128 {
    let (b, c, a) = (n(size.tasks), n(size.cells), n(size.actions));
    let per_task_cell = mul(&[b, c]);
    // Kernel inputs: move masks and free flags per cell; fixed, excluded, terminal and
    // unreachable flags, rewards, the reachability stack per task and cell.
    let inputs = mul(&[c, 5]) + mul(&[per_task_cell, 16]);
    if !outputs.needs_steps() {
        // v, v_next and the extrapolation backup (f64); values, policy and Q (f32).
        let working = mul(&[per_task_cell, 24]) + mpi_bytes(options, per_task_cell, a);
        let rows = u128::from(outputs.policy) + u128::from(outputs.q);
        let out = mul(&[per_task_cell, 4]) + mul(&[rows, per_task_cell, a, 4]);
        return inputs
            .saturating_add(working)
            .saturating_add(out.saturating_mul(2));
    }
    // The grid as an MDP over its free cells: each row holds the intended move and, with
    // slip, every action's.
    let s = n(size.free_cells);
    let nnz = mul(&[s, a, if size.slip { a + 1 } else { 1 }]);
    let mdp = mul(&[s, a, 4]) + mul(&[nnz, 8]) + mul(&[b, s, a, 4]) + mul(&[b, s, 9]);
    let states_of_cells = mul(&[c, 4]) + mul(&[s, 4]);
    let solve = mdp_bytes(
        (size.tasks, size.free_cells, size.actions, nnz, size.cells),
        options,
        outputs,
    );
    inputs
        .saturating_add(mdp)
        .saturating_add(states_of_cells)
        .saturating_add(solve)
}

/// Host bytes a solve of `problem` holds at its peak, on either backend (see the module's
/// notes); saturates rather than wrapping.
pub fn estimate_grid_bytes(problem: &GridProblem, options: &SolveOptions, outputs: Outputs) -> u64 {
    let bytes = grid_size_bytes(GridSize::of(problem), options, outputs);
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

/// Host bytes a solve of `mdp` holds at its peak beyond the MDP itself, on either backend
/// (see the module's notes); saturates rather than wrapping.
pub fn estimate_mdp_bytes(mdp: &TabularMdp, options: &SolveOptions, outputs: Outputs) -> u64 {
    let bytes = mdp_bytes(
        (
            mdp.tasks,
            mdp.states,
            mdp.actions,
            n(mdp.nonzeros()),
            mdp.states,
        ),
        options,
        outputs,
    );
    // A dense model's CSR, built on first use by a path that reads one (the native engine
    // reads the dense rows as f32 instead, fewer bytes than the transposes counted above).
    let csr = match mdp.transitions.dense_rows() {
        Some(_) => mul(&[n(mdp.nonzeros()), 12]) + mul(&[n(mdp.states), n(mdp.actions) + 1, 4]),
        None => 0,
    };
    u64::try_from(bytes.saturating_add(csr)).unwrap_or(u64::MAX)
}

/// Bytes this machine has available for new allocations: `MemAvailable` of `/proc/meminfo`
/// on Linux; `None` where unknown.
pub fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// The largest allocation any machine allows: `isize::MAX` bytes.
const ADDRESSABLE: u64 = isize::MAX as u64;

/// [`Error::LimitExceeded`] unless `needed` bytes for `what` can be allocated: at most
/// `isize::MAX`, and at most what the machine has available where that is known. `what` is
/// built only on failure.
pub fn ensure_fits(needed: u64, what: impl FnOnce() -> String) -> Result<()> {
    if needed > ADDRESSABLE {
        return Err(Error::limit(
            what(),
            needed,
            "the largest allocation this machine can address (isize::MAX)",
            ADDRESSABLE,
        ));
    }
    match available_bytes() {
        Some(available) if needed > available => Err(Error::limit(
            what(),
            needed,
            "the memory this machine has available (MemAvailable)",
            available,
        )),
        _ => Ok(()),
    }
}

/// What a solve's `options` and `outputs` keep, for messages.
fn describe(options: &SolveOptions, outputs: Outputs) -> String {
    let mut kept = Vec::new();
    if let Horizon::Finite(t) = options.horizon {
        kept.push(format!("horizon {t}"));
        if outputs.all_steps {
            kept.push("every step (--all-steps)".into());
        }
    }
    if outputs.occupancy {
        kept.push("the occupancy".into());
    }
    if outputs.q {
        kept.push("Q".into());
    }
    if let Method::Mpi { .. } = options.method {
        kept.push("modified policy iteration's policy (--method mpi)".into());
    }
    if kept.is_empty() {
        String::new()
    } else {
        format!(" with {}", kept.join(", "))
    }
}

/// Refuses a grid solve whose [`estimate_grid_bytes`] does not fit ([`ensure_fits`]).
pub fn check_grid(problem: &GridProblem, options: &SolveOptions, outputs: Outputs) -> Result<()> {
    check_grid_size(GridSize::of(problem), options, outputs)
}

/// Refuses a grid solve of `size` whose estimate does not fit ([`ensure_fits`]): what a caller
/// runs before building a large map.
pub fn check_grid_size(size: GridSize, options: &SolveOptions, outputs: Outputs) -> Result<()> {
    let needed = u64::try_from(grid_size_bytes(size, options, outputs)).unwrap_or(u64::MAX);
    ensure_fits(needed, || {
        format!(
            "a grid solve of {} task(s) over {} cells{}",
            size.tasks,
            size.cells,
            describe(options, outputs)
        )
    })
}

/// Refuses an MDP solve whose [`estimate_mdp_bytes`] does not fit ([`ensure_fits`]).
pub fn check_mdp(mdp: &TabularMdp, options: &SolveOptions, outputs: Outputs) -> Result<()> {
    ensure_fits(estimate_mdp_bytes(mdp, options, outputs), || {
        format!(
            "an MDP solve of {} task(s) over {} states and {} actions{}",
            mdp.tasks,
            mdp.states,
            mdp.actions,
            describe(options, outputs)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::human_bytes;

    fn finite(t: u32) -> SolveOptions {
        SolveOptions {
            horizon: Horizon::Finite(t),
            ..SolveOptions::default()
        }
    }

    #[test]
    fn estimates_grow_with_the_steps_kept_and_saturate() {
        let size = GridSize {
            cells: 81,
            free_cells: 40,
            tasks: 1,
            actions: 8,
            slip: false,
        };
        let all = Outputs {
            all_steps: true,
            ..Outputs::default()
        };
        let small = grid_size_bytes(size, &finite(10), all);
        let large = grid_size_bytes(size, &finite(1_000_000_000), all);
        assert!(small < 1_000_000, "{small}");
        // (T + 1) f64 values kept per free cell, at least.
        assert!(large > 40 * 8 * 1_000_000_000, "{large}");
        let huge = GridSize {
            cells: usize::MAX,
            ..size
        };
        assert_eq!(
            u64::try_from(grid_size_bytes(huge, &finite(4), all)).unwrap_or(u64::MAX),
            u64::MAX
        );
        assert!(ensure_fits(u64::MAX, || "x".into()).is_err());
        assert!(ensure_fits(1024, || "x".into()).is_ok());
    }

    /// Modified policy iteration keeps pi and h and two more value arrays per task-cell:
    /// (A + 3) f64 each, counted by grids and MDPs alike and named in the refusal.
    #[test]
    fn modified_policy_iteration_counts_its_policy() {
        let size = GridSize {
            cells: 1000,
            free_cells: 900,
            tasks: 3,
            actions: 8,
            slip: true,
        };
        let vi = SolveOptions::default();
        let mpi = SolveOptions {
            method: Method::MPI,
            ..vi
        };
        let plain = Outputs::default();
        let extra = grid_size_bytes(size, &mpi, plain) - grid_size_bytes(size, &vi, plain);
        assert_eq!(extra, 3 * 1000 * (8 + 3) * 8);
        let states = (3, 900, 8, 900 * 8 * 4, 900);
        let extra = mdp_bytes(states, &mpi, plain) - mdp_bytes(states, &vi, plain);
        assert_eq!(extra, 3 * 900 * (8 + 3) * 8);
        assert!(describe(&mpi, plain).contains("--method mpi"));
        assert_eq!(describe(&vi, plain), "");
    }

    #[test]
    fn sizes_read_in_decimal_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3_200_000_000), "3.2 GB");
    }
}
