//! A gridworld as a tabular MDP (`GridMdp`) solves to the grid kernels' values and policy, on
//! the CPU reference and on the GPU, for every action set, slip and both backups.

mod common;

use softvi::grid_mdp::GridMdp;
use softvi::{
    Backup, Connectivity, Horizon, MdpEngine, MdpOutputs, SolveOptions, solve_cpu, solve_mdp_cpu,
};

#[test]
fn grid_as_mdp_solves_like_the_grid() {
    let mut engine = common::gpu().map(|ctx| MdpEngine::new(ctx).unwrap());
    for (i, (connectivity, stay, slip, backup)) in [
        (Connectivity::Four, false, 0.0, Backup::Expected),
        (Connectivity::Eight, true, 0.2, Backup::Expected),
        (Connectivity::Eight, false, 0.3, Backup::Optimistic),
        (Connectivity::Four, true, 0.1, Backup::Optimistic),
    ]
    .into_iter()
    .enumerate()
    {
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
            let grid = solve_cpu(&problem, &o).unwrap();
            let cpu = solve_mdp_cpu(&grid_mdp.mdp, &o, MdpOutputs::default()).unwrap();
            let values = grid_mdp.to_cells(&cpu.solution.values, 1);
            let policy = grid_mdp.to_cells(
                cpu.solution.policy.as_ref().unwrap(),
                5 + 4 * (connectivity == Connectivity::Eight) as usize - (!stay) as usize,
            );
            // Same f64 math in another summation order: f32 rounding of the outputs for a
            // finite horizon; an infinite one stops within tol of the fixed point on each
            // side, 2 tol gamma / (1 - gamma) = 3.8e-6 apart at most.
            let bound = match horizon {
                Horizon::Finite(_) => 1e-6,
                Horizon::Infinite { .. } => 1e-6 + 2.0 * 1e-7 * 0.95 / 0.05,
            };
            let dv = common::max_relative_error(&values, &grid.values);
            assert!(dv <= bound, "{what}: CPU values differ by {dv}");
            let dp = common::max_abs_error(&policy, grid.policy.as_ref().unwrap());
            assert!(dp <= bound, "{what}: CPU policy differs by {dp}");
            if let Some(engine) = &mut engine {
                let gpu = engine
                    .solve(&grid_mdp.mdp, &o, MdpOutputs::default())
                    .unwrap();
                let values = grid_mdp.to_cells(&gpu.solution.values, 1);
                // f32 sweeps against f64 ones, stopped within tol 1e-7 (gamma 0.95).
                let dv = common::max_relative_error(&values, &grid.values);
                assert!(dv <= 1e-4, "{what}: GPU values differ by {dv}");
            }
        }
    }
}
