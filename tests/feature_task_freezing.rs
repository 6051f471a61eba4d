//! Tasks of a batch are independent: each stops iterating (freezes) at its own convergence or
//! divergence check, so a task's result, bit for bit, is the same solved alone, in any
//! sub-batch, in GPU chunks or in the whole batch, on every solver (the CPU reference, the
//! native grid and CSR engines, the WGSL grid and CSR kernels, the discounted occupancy). What `softvi solve
//! --tasks I/N` and `softvi.ray` rely on to merge shards into the whole solve's result.
//!
//! The independent truth: the same solver on the task alone, which never sees its batchmates.
//! Every batch here mixes tasks that converge at different sweeps (checked), so a solver that
//! iterated the whole batch until its slowest task converged would fail.

mod common;

use std::ops::Range;

use common::*;
use softvi::engine::gpu::EngineOptions;
use softvi::{
    Backup, Connectivity, CpuReference, GpuSolver, GridProblem, GridSolver, Horizon, MdpSolution,
    MdpSolver, Method, NativeSolver, Outputs, SolveOptions, Status, TabularMdp, keep_going,
};

/// The tasks `range` of `problem`, same map and settings.
fn grid_tasks(problem: &GridProblem, range: Range<usize>) -> GridProblem {
    problem.shard(range).unwrap()
}

/// The tasks `range` of `mdp`, same transitions.
fn mdp_tasks(mdp: &TabularMdp, range: Range<usize>) -> TabularMdp {
    mdp.shard(range).unwrap()
}

/// `array`'s entries of tasks `range` (`per_task` entries each), as bits (NaN included).
fn bits(array: &[f32], per_task: usize, range: Range<usize>) -> Vec<u32> {
    array[range.start * per_task..range.end * per_task]
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

/// Asserts that `part` (tasks `range` of the batch) equals `whole` on those tasks bit for bit:
/// values, policy, Q, occupancy, and the per-task iterations, residual and status.
fn assert_same_tasks(whole: &MdpSolution, part: &MdpSolution, range: Range<usize>, what: &str) {
    let (w, p) = (&whole.solution, &part.solution);
    let states = w.height * w.width;
    let rows = states * w.action_count;
    assert_eq!(
        bits(&w.values, states, range.clone()),
        bits(&p.values, states, 0..range.len()),
        "{what}: values"
    );
    for (name, a, b) in [("policy", &w.policy, &p.policy), ("q", &w.q, &p.q)] {
        match (a, b) {
            (Some(a), Some(b)) => assert_eq!(
                bits(a, rows, range.clone()),
                bits(b, rows, 0..range.len()),
                "{what}: {name}"
            ),
            (None, None) => {}
            _ => panic!("{what}: {name} present in one solve only"),
        }
    }
    assert_eq!(
        w.iterations[range.clone()],
        p.iterations[..],
        "{what}: iterations"
    );
    assert_eq!(
        w.residual[range.clone()],
        p.residual[..],
        "{what}: residual"
    );
    assert_eq!(w.status[range.clone()], p.status[..], "{what}: status");
    match (&whole.occupancy, &part.occupancy) {
        (Some(a), Some(b)) => {
            let per = a.steps * states;
            assert_eq!(
                bits(&a.values, per, range.clone()),
                bits(&b.values, per, 0..range.len()),
                "{what}: occupancy"
            );
            assert_eq!(
                a.residual[range.clone()],
                b.residual[..],
                "{what}: occupancy residual"
            );
            assert_eq!(
                a.status[range.clone()],
                b.status[..],
                "{what}: occupancy status"
            );
        }
        (None, None) => {}
        _ => panic!("{what}: occupancy present in one solve only"),
    }
}

/// Every task alone and a split into uneven shards, each solved by `solve`, against `whole`,
/// the batch of `tasks` tasks solved by `name`.
fn assert_splits_match(
    whole: &MdpSolution,
    tasks: usize,
    name: &str,
    mut solve: impl FnMut(Range<usize>) -> MdpSolution,
) {
    let mut ranges: Vec<Range<usize>> = (0..tasks).map(|t| t..t + 1).collect();
    ranges.extend([0..tasks / 3, tasks / 3..tasks - 1, tasks - 1..tasks]);
    for range in ranges {
        let part = solve(range.clone());
        let what = format!("{name} tasks {range:?}");
        assert_same_tasks(whole, &part, range, &what);
    }
}

/// The grid solvers under test: the reference, the native engine, the WGSL kernels (also with
/// a buffer limit that splits the batch into chunks of one or two tasks).
fn grid_solvers() -> Vec<(&'static str, Box<dyn GridSolver>)> {
    let mut solvers: Vec<(&'static str, Box<dyn GridSolver>)> = vec![
        ("cpu", Box::new(CpuReference)),
        ("native", Box::new(NativeSolver::new(None))),
    ];
    if let Some(ctx) = gpu() {
        solvers.push(("gpu", Box::new(GpuSolver::new(ctx.clone()))));
        let small = EngineOptions {
            max_buffer_bytes: Some(2 * 37 * 32 * 4),
            ..EngineOptions::default()
        };
        solvers.push((
            "gpu chunks",
            Box::new(GpuSolver::with_options(ctx.clone(), small)),
        ));
    }
    solvers
}

#[test]
fn grid_tasks_do_not_depend_on_their_batch() {
    // 37 x 29: not a multiple of the 4-cell quads or the 64-wide workgroups.
    let problem = random_problem(37, 29, 7, Connectivity::Eight, false, 0.1, 5);
    let options = SolveOptions {
        alpha: 0.5,
        gamma: 0.95,
        backup: Backup::Expected,
        horizon: Horizon::Infinite {
            tol: 1e-6,
            max_iters: 20_000,
        },
        extrapolate: true,
        method: Method::Vi,
    };
    let outputs = Outputs {
        policy: true,
        q: true,
        ..Outputs::default()
    };
    for (name, mut solver) in grid_solvers() {
        let whole = solver
            .solve_grid(&problem, None, &options, outputs, &mut keep_going)
            .unwrap();
        let iterations = &whole.solution.iterations;
        assert!(
            iterations.iter().min() < iterations.iter().max(),
            "{name}: every task took {iterations:?} sweeps; the test needs tasks that stop apart"
        );
        assert!(
            whole
                .solution
                .status
                .iter()
                .all(|&s| s == Status::Converged)
        );
        assert_splits_match(&whole, problem.tasks.len(), name, |range| {
            let part = grid_tasks(&problem, range);
            (solver.solve_grid(&part, None, &options, outputs, &mut keep_going)).unwrap()
        });
    }
}

#[test]
fn a_diverging_task_leaves_its_batchmates_alone() {
    // gamma = 1: tasks with a goal and step costs converge; a task whose reward outweighs every
    // step cost has no finite solution and diverges, at its own check.
    let mut problem = random_problem(23, 19, 4, Connectivity::Eight, false, 0.0, 8);
    for task in &mut problem.tasks {
        task.reward = None;
    }
    problem.tasks[2].reward = Some(vec![3.0; 23 * 19]);
    let options = SolveOptions {
        // Below the step costs: alpha log 8 = 0.42 < 1.
        alpha: 0.2,
        gamma: 1.0,
        backup: Backup::Expected,
        horizon: Horizon::Infinite {
            tol: 1e-5,
            max_iters: 20_000,
        },
        extrapolate: true,
        method: Method::Vi,
    };
    // Values only: a batch with a diverged task reports no policy (it has none).
    for (name, mut solver) in grid_solvers() {
        let whole = solver
            .solve_grid(&problem, None, &options, Outputs::VALUES, &mut keep_going)
            .unwrap();
        let status = &whole.solution.status;
        assert_eq!(status[2], Status::Diverged, "{name}: {status:?}");
        assert!(
            [0, 1, 3].iter().all(|&t| status[t] == Status::Converged),
            "{name}: {status:?}"
        );
        for t in [0, 1, 3] {
            let alone = solver
                .solve_grid(
                    &grid_tasks(&problem, t..t + 1),
                    None,
                    &options,
                    Outputs::VALUES,
                    &mut keep_going,
                )
                .unwrap();
            assert_same_tasks(&whole, &alone, t..t + 1, &format!("{name} task {t}"));
        }
        let alone = solver
            .solve_grid(
                &grid_tasks(&problem, 2..3),
                None,
                &options,
                Outputs::VALUES,
                &mut keep_going,
            )
            .unwrap();
        assert_eq!(alone.solution.status, [Status::Diverged], "{name}");
        assert_eq!(
            alone.solution.iterations[0], whole.solution.iterations[2],
            "{name}"
        );
    }
}

#[test]
fn mdp_tasks_do_not_depend_on_their_batch() {
    // 53 states, 3 actions, 6 tasks with a terminal state each: the backward pass and the
    // discounted occupancy (its own iteration) both stop per task.
    let mut mdp = random_mdp(53, 3, 6, true, 13);
    // Rewards of different scales (x1 .. x16): the tasks reach tol 1e-4 sweeps apart.
    let per_task = mdp.states * mdp.actions;
    for (i, r) in mdp.reward.iter_mut().enumerate() {
        *r *= (1 + 3 * (i / per_task)) as f64;
    }
    let options = SolveOptions {
        alpha: 0.7,
        gamma: 0.97,
        backup: Backup::Optimistic,
        horizon: Horizon::Infinite {
            tol: 1e-4,
            max_iters: 20_000,
        },
        extrapolate: true,
        method: Method::Vi,
    };
    let outputs = Outputs {
        policy: true,
        q: true,
        occupancy: true,
        ..Outputs::default()
    };
    let mut solvers: Vec<(&str, Box<dyn MdpSolver>)> = vec![
        ("cpu", Box::new(CpuReference)),
        ("native", Box::new(NativeSolver::new(None))),
    ];
    if let Some(ctx) = gpu() {
        solvers.push(("gpu", Box::new(GpuSolver::new(ctx.clone()))));
    }
    for (name, mut solver) in solvers {
        let whole = solver
            .solve_mdp(&mdp, &options, outputs, &mut keep_going)
            .unwrap();
        let iterations = &whole.solution.iterations;
        assert!(
            iterations.iter().min() < iterations.iter().max(),
            "{name}: every task took {iterations:?} sweeps"
        );
        assert_splits_match(&whole, mdp.tasks, name, |range| {
            let part = mdp_tasks(&mdp, range);
            (solver.solve_mdp(&part, &options, outputs, &mut keep_going)).unwrap()
        });
    }
}
