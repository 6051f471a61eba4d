//! A gridworld as a tabular MDP (`GridMdp`) solves to the grid kernels' values and policy, on
//! the CPU reference and on the GPU, for every action set, slip and both backups.

mod common;

use softvi::engine::schedule::RESIDUAL_FLOOR;
use softvi::world::grid_mdp::GridMdp;
use softvi::{
    Backup, Connectivity, Horizon, MdpEngine, Outputs, SolveOptions, keep_going, solve_cpu,
    solve_mdp_cpu,
};

/// Action sets, slips and backups every grid-as-MDP test runs: (connectivity, STAY, slip,
/// backup).
const WORLDS: [(Connectivity, bool, f64, Backup); 4] = [
    (Connectivity::Four, false, 0.0, Backup::Expected),
    (Connectivity::Eight, true, 0.2, Backup::Expected),
    (Connectivity::Eight, false, 0.3, Backup::Optimistic),
    (Connectivity::Four, true, 0.1, Backup::Optimistic),
];

#[test]
fn grid_as_mdp_solves_like_the_grid() {
    let mut engine = common::gpu().map(|ctx| MdpEngine::new(ctx).unwrap());
    for (i, (connectivity, stay, slip, backup)) in WORLDS.into_iter().enumerate() {
        // 13 x 17: no side a multiple of 4 or of the workgroup size.
        let problem = common::random_problem(13, 17, 3, connectivity, stay, slip, 40 + i as u64);
        let grid_mdp = GridMdp::new(&problem, None).unwrap();
        for horizon in [
            Horizon::Finite(9),
            Horizon::Infinite {
                tol: 1e-7,
                max_iters: 50_000,
            },
        ] {
            let o = SolveOptions {
                alpha: 0.5,
                gamma: 0.95,
                backup,
                horizon,
                ..SolveOptions::default()
            };
            let what = format!("case {i} {horizon:?}");
            let grid = solve_cpu(&problem, &o, Outputs::default()).unwrap();
            let cpu = solve_mdp_cpu(&grid_mdp.mdp, &o, Outputs::default()).unwrap();
            let values = grid_mdp.to_cells(&cpu.solution.values, 1);
            let policy = grid_mdp.to_cells(
                cpu.solution.policy.as_ref().unwrap(),
                5 + 4 * (connectivity == Connectivity::Eight) as usize - (!stay) as usize,
            );
            // Same f64 math in another summation order: f32 rounding of the outputs for a
            // finite horizon; an infinite one stops within its threshold
            // max(tol, RESIDUAL_FLOOR max |V|) of a sweep on each side, so within
            // 2 threshold gamma / (1 - gamma) of each other (|V| >= 1 makes that bound relative).
            let scale = grid
                .values
                .iter()
                .filter(|v| v.is_finite())
                .fold(0.0f64, |m, &v| m.max(v.abs() as f64));
            let bound = match horizon {
                Horizon::Finite(_) => 1e-6,
                Horizon::Infinite { tol, .. } => {
                    1e-6 + 2.0 * tol.max(RESIDUAL_FLOOR * scale) * 0.95 / 0.05
                }
            };
            let dv = common::max_relative_error(&values, &grid.values);
            assert!(dv <= bound, "{what}: CPU values differ by {dv}");
            let dp = common::max_abs_error(&policy, grid.policy.as_ref().unwrap());
            assert!(dp <= bound, "{what}: CPU policy differs by {dp}");
            if let Some(engine) = &mut engine {
                let gpu = engine.solve(&grid_mdp.mdp, &o, Outputs::default()).unwrap();
                let values = grid_mdp.to_cells(&gpu.solution.values, 1);
                // f32 sweeps against f64 ones, stopped within tol 1e-7 (gamma 0.95).
                let dv = common::max_relative_error(&values, &grid.values);
                assert!(dv <= 1e-4, "{what}: GPU values differ by {dv}");
            }
        }
    }
}

/// The grid kernels' forward pass (`GridEngine::solve_steps`: every V_t, pi_t and D_t over the
/// map) equals the general-MDP path through `GridMdp` on the CPU reference, and the CPU twin
/// `reference::grid_occupancy` equals `reference::mdp_occupancy` step for step.
#[test]
fn grid_forward_pass_matches_the_mdp_path() {
    use softvi::engine::cpu::{grid_occupancy, mdp_occupancy};
    use softvi::engine::layout::GridInputs;
    let mut engine = common::gpu().map(|ctx| softvi::GridEngine::new(ctx).unwrap());
    let horizon = 7;
    for (i, (connectivity, stay, slip, backup)) in WORLDS.into_iter().enumerate() {
        let problem = common::random_problem(11, 13, 3, connectivity, stay, slip, 60 + i as u64);
        let starts = (i % 2 == 1).then(|| {
            let free: Vec<usize> = (0..problem.grid.cells())
                .filter(|&c| problem.grid.free[c])
                .collect();
            vec![free[0], free[free.len() / 2]]
        });
        let grid_mdp = GridMdp::new(&problem, starts.as_deref()).unwrap();
        let o = SolveOptions {
            alpha: 0.7,
            gamma: 0.97,
            backup,
            horizon: Horizon::Finite(horizon),
            ..SolveOptions::default()
        };
        let outputs = Outputs {
            all_steps: true,
            occupancy: true,
            ..Outputs::default()
        };
        let cpu = solve_mdp_cpu(&grid_mdp.mdp, &o, outputs).unwrap();
        let n = problem.actions.count();
        let cpu_values = grid_mdp.to_cells(&cpu.steps.as_ref().unwrap().values, 1);
        let cpu_policy = grid_mdp.to_cells(cpu.steps.as_ref().unwrap().policy.as_ref().unwrap(), n);
        let cpu_d = grid_mdp.to_cells(&cpu.occupancy.as_ref().unwrap().values, 1);

        // CPU twins: one grid pull per step equals the CSR pull.
        let inputs = GridInputs::new(&problem, &o);
        let mdp_inputs = softvi::engine::layout::MdpInputs::new(&grid_mdp.mdp, &o);
        let transpose = grid_mdp.mdp.transpose();
        let states = grid_mdp.mdp.states;
        let pi_states = &cpu.steps.as_ref().unwrap().policy.as_ref().unwrap();
        let d_states = &cpu.occupancy.as_ref().unwrap().values;
        let (b, t_n) = (problem.tasks.len(), horizon as usize);
        for t in 0..t_n {
            // [task][state] slices of step t; the kernels read zero rows where the reported
            // policy has NaN (states that stop pass nothing on).
            let pi_t: Vec<f32> = (0..b)
                .flat_map(|k| pi_states[(k * t_n + t) * states * n..][..states * n].to_vec())
                .map(|x| if x.is_nan() { 0.0 } else { x })
                .collect();
            let d_t: Vec<f64> = (0..b)
                .flat_map(|k| {
                    d_states[(k * (t_n + 1) + t) * states..][..states]
                        .iter()
                        .map(|&x| x as f64)
                        .collect::<Vec<_>>()
                })
                .collect();
            let mut via_csr = vec![0.0; d_t.len()];
            mdp_occupancy(
                &mdp_inputs,
                &transpose,
                &pi_t,
                None,
                &d_t,
                None,
                &mut via_csr,
            );
            let pi_cells = grid_mdp.to_cells(&pi_t, n);
            let d_cells: Vec<f64> = grid_mdp
                .to_cells(&d_t.iter().map(|&x| x as f32).collect::<Vec<_>>(), 1)
                .iter()
                .map(|&x| if x.is_nan() { 0.0 } else { x as f64 })
                .collect();
            let mut via_grid = vec![0.0; d_cells.len()];
            grid_occupancy(&inputs, &pi_cells, &d_cells, &mut via_grid);
            let via_grid =
                grid_mdp.to_states(&via_grid.iter().map(|&x| x as f32).collect::<Vec<_>>(), 1);
            for (x, y) in via_grid.iter().zip(&via_csr) {
                assert!(
                    (*x as f64 - y).abs() <= 1e-6,
                    "case {i} step {t}: grid pull {x}, CSR pull {y}"
                );
            }
        }

        if let Some(engine) = &mut engine {
            let start =
                softvi::world::grid_mdp::start_distribution(&problem, starts.as_deref()).unwrap();
            let gpu = engine
                .solve_steps(&problem, &o, outputs, &start, &mut keep_going)
                .unwrap();
            let what = format!("case {i}");
            let steps = gpu.steps.as_ref().unwrap();
            let dv = common::max_relative_error(&steps.values, &cpu_values);
            assert!(dv <= 1e-5, "{what}: step values differ by {dv}");
            let dp = common::max_abs_error(steps.policy.as_ref().unwrap(), &cpu_policy);
            assert!(dp <= 1e-5, "{what}: step policies differ by {dp}");
            let occupancy = gpu.occupancy.as_ref().unwrap();
            assert_eq!(occupancy.steps, horizon as usize + 1);
            let dd = common::max_abs_error(&occupancy.values, &cpu_d);
            assert!(dd <= 1e-6, "{what}: occupancy differs by {dd}");
            let dv0 = common::max_relative_error(
                &gpu.solution.values,
                &grid_mdp.to_cells(&cpu.solution.values, 1),
            );
            assert!(dv0 <= 1e-5, "{what}: V_0 differs by {dv0}");
        }
    }
}

/// The grid forward pass binds a whole task's policy: a map whose policy does not fit one
/// binding fails with the limit and the size, not a wrong answer.
#[test]
fn grid_forward_pass_names_the_binding_limit() {
    let Some(mut engine) = common::small_engine(softvi::EngineOptions {
        max_binding_bytes: Some(16 * 1024),
        max_buffer_bytes: None,
    }) else {
        return;
    };
    // 40 x 40 cells x 8 actions x 4 bytes = 51200 bytes of policy per task.
    let problem = common::random_problem(40, 40, 1, Connectivity::Eight, false, 0.1, 3);
    let o = SolveOptions {
        horizon: Horizon::Finite(4),
        ..SolveOptions::default()
    };
    let start = softvi::world::grid_mdp::start_distribution(&problem, None).unwrap();
    let outputs = Outputs {
        all_steps: false,
        occupancy: true,
        ..Outputs::default()
    };
    let error = engine
        .solve_steps(&problem, &o, outputs, &start, &mut keep_going)
        .unwrap_err();
    assert!(
        matches!(
            &error,
            softvi::Error::LimitExceeded { needed: 51200, limit_name, .. }
                if limit_name.contains("max_storage_buffer_binding_size")
        ),
        "{error:?}"
    );
}
