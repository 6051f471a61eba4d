//! Task inference (`infer`, `shaders/task_posterior.wgsl`): trajectories sampled from task k's
//! own policy make task k's posterior rise above 0.9 on a maze with far-apart goals, with and
//! without observed actions; GPU and CPU posteriors agree; tasks that cannot explain a step get
//! probability 0 (no NaN); a step no task explains is an error naming it.

mod common;

use softvi::infer::{Observation, check_possible, posterior_inputs};
use softvi::sample::{ENDED, sample};
use softvi::world::grid_mdp::GridMdp;
use softvi::{
    Grid, GridProblem, GridTask, Horizon, MdpEngine, Outputs, SolveOptions, TaskPosterior,
    engine::cpu as reference, solve_mdp_cpu,
};

/// A 41 x 41 maze with one task per corner goal, started from the centre.
fn corner_goals() -> GridMdp {
    let grid = Grid::generate_maze(41, 41, 3).unwrap();
    let corners = [(1, 1), (39, 1), (1, 39), (39, 39)];
    let problem = GridProblem {
        tasks: corners
            .iter()
            .map(|&(x, y)| GridTask {
                goals: vec![y * 41 + x],
                reward: None,
            })
            .collect(),
        grid,
        actions: softvi::ActionSet {
            connectivity: softvi::Connectivity::Four,
            stay: false,
        },
        slip: 0.1,
        move_cost: softvi::MoveCost::default(),
    };
    GridMdp::new(&problem, Some(&[21 * 41 + 21])).unwrap()
}

fn options() -> SolveOptions {
    SolveOptions {
        alpha: 0.2,
        gamma: 0.99,
        horizon: Horizon::Infinite {
            tol: 1e-6,
            max_iters: 100_000,
        },
        ..SolveOptions::default()
    }
}

/// The observations of episode `e` of task `task`: states (and actions) until it ends.
fn episode(
    samples: &softvi::sample::Samples,
    task: usize,
    e: usize,
    actions: bool,
) -> Vec<Observation> {
    let n = samples.steps;
    let row = task * samples.episodes + e;
    let states = &samples.states[row * (n + 1)..(row + 1) * (n + 1)];
    let taken = &samples.actions[row * n..(row + 1) * n];
    states
        .iter()
        .take_while(|&&s| s != ENDED)
        .enumerate()
        .map(|(t, &s)| Observation {
            state: s as usize,
            label: format!("state {s}"),
            action: (actions && t < n && taken[t] != ENDED).then(|| taken[t] as usize),
            line: t + 1,
        })
        .collect()
}

fn rows_are_distributions(posterior: &[f32], tasks: usize) {
    for row in posterior.chunks_exact(tasks) {
        assert!(row.iter().all(|p| p.is_finite() && *p >= 0.0), "{row:?}");
        let total: f32 = row.iter().sum();
        assert!((total - 1.0).abs() <= 1e-5, "row sums to {total}");
    }
}

#[test]
fn own_task_wins_on_sampled_trajectories() {
    let world = corner_goals();
    let mdp = &world.mdp;
    let o = options();
    let cpu = solve_mdp_cpu(mdp, &o, Outputs::default()).unwrap();
    let mut gpu_parts = common::gpu().map(|ctx| {
        let solved = MdpEngine::new(ctx)
            .unwrap()
            .solve(mdp, &o, Outputs::default())
            .unwrap();
        (solved, TaskPosterior::new(ctx).unwrap())
    });
    let prior = vec![0.25; 4];
    let mut slowest = 0;
    let policy = cpu.solution.policy.as_ref().unwrap();
    let samples = sample(mdp, policy, 1, 5, 400, 11).unwrap();
    for task in 0..4 {
        for e in 0..5 {
            for actions in [true, false] {
                let trajectory = episode(&samples, task, e, actions);
                let inputs = posterior_inputs(mdp, policy, 1, &trajectory, &prior).unwrap();
                let (posterior, joint) = reference::task_posterior(&inputs);
                check_possible(&inputs, &joint).unwrap();
                rows_are_distributions(&posterior, 4);
                let first = posterior
                    .chunks_exact(4)
                    .position(|row| row[task] > 0.9)
                    .unwrap_or_else(|| panic!("task {task} episode {e}: never above 0.9"));
                slowest = slowest.max(first);
                // The goals are >= 38 cells apart and the trajectory starts in the middle: the
                // agent commits to a corner well before reaching it.
                assert!(first <= 60, "task {task} episode {e}: {first} steps");
                if let Some((solved, engine)) = &mut gpu_parts {
                    // The kernel on the same inputs.
                    let (gpu, gpu_joint) = engine.run(&inputs).unwrap();
                    check_possible(&inputs, &gpu_joint).unwrap();
                    assert!(common::max_abs_error(&gpu, &posterior) <= 1e-5);
                    // End to end with the GPU's own policy.
                    let gpu_policy = solved.solution.policy.as_ref().unwrap();
                    let inputs = posterior_inputs(mdp, gpu_policy, 1, &trajectory, &prior).unwrap();
                    let (gpu, _) = engine.run(&inputs).unwrap();
                    rows_are_distributions(&gpu, 4);
                    let gap = common::max_abs_error(&gpu, &posterior);
                    assert!(
                        gap <= 1e-3,
                        "task {task} episode {e}: GPU vs CPU posterior {gap}"
                    );
                }
            }
        }
    }
    eprintln!("slowest rise above 0.9: {slowest} steps");
}

#[test]
fn impossible_steps_zero_some_tasks_or_fail_clearly() {
    let world = corner_goals();
    let mdp = &world.mdp;
    let o = options();
    let cpu = solve_mdp_cpu(mdp, &o, Outputs::default()).unwrap();
    let policy = cpu.solution.policy.as_ref().unwrap();
    let state = |x: usize, y: usize| world.state_of_cell[y * 41 + x] as usize;
    let obs = |cells: &[(usize, usize)]| -> Vec<Observation> {
        cells
            .iter()
            .enumerate()
            .map(|(i, &(x, y))| Observation {
                state: state(x, y),
                label: format!("X={x},Y={y}"),
                action: None,
                line: i + 1,
            })
            .collect()
    };
    // Through task 0's goal (1, 1) and on: task 0's episode would have ended there.
    let goal = world
        .cell_of_state
        .iter()
        .position(|&c| c == 41 + 1)
        .unwrap();
    let next = (0..mdp.csr().indices.len())
        .find(|&k| {
            let row = mdp.csr().indptr.partition_point(|&p| p as usize <= k) - 1;
            row / mdp.actions == goal && mdp.csr().indices[k] as usize != goal
        })
        .map(|k| mdp.csr().indices[k] as usize)
        .unwrap();
    let cell = world.cell_of_state[next] as usize;
    let trajectory = obs(&[(1, 1), (cell % 41, cell / 41)]);
    let prior = vec![0.25; 4];
    let inputs = posterior_inputs(mdp, policy, 1, &trajectory, &prior).unwrap();
    let (posterior, joint) = reference::task_posterior(&inputs);
    check_possible(&inputs, &joint).unwrap();
    rows_are_distributions(&posterior, 4);
    assert_eq!(posterior[4], 0.0, "task 0 ended at its goal");
    if let Some(ctx) = common::gpu() {
        let (gpu, gpu_joint) = TaskPosterior::new(ctx).unwrap().run(&inputs).unwrap();
        check_possible(&inputs, &gpu_joint).unwrap();
        assert_eq!(gpu[4], 0.0);
        rows_are_distributions(&gpu, 4);
    }
    // Two cells apart: no action makes that move.
    let err = posterior_inputs(mdp, policy, 1, &obs(&[(21, 21), (21, 25)]), &prior).unwrap_err();
    assert!(
        format!("{err:#}").contains("step 0 (lines 1 to 2)"),
        "{err:#}"
    );
    // A zero prior on the only task that explains the step.
    let only_task_0 = [1.0, 0.0, 0.0, 0.0];
    let inputs = posterior_inputs(mdp, policy, 1, &trajectory, &only_task_0).unwrap();
    let (_, joint) = reference::task_posterior(&inputs);
    let err = check_possible(&inputs, &joint).unwrap_err();
    assert!(format!("{err:#}").contains("step 0 (line 1"), "{err:#}");
    if let Some(ctx) = common::gpu() {
        let (_, gpu_joint) = TaskPosterior::new(ctx).unwrap().run(&inputs).unwrap();
        assert!(check_possible(&inputs, &gpu_joint).is_err());
    }
}
