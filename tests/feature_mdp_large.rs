//! The 10^6-state sparse MDP of `softvi bench` (8 actions, ~4 successors, 3.2e7 transition
//! entries: 128 MB of successor indices, at the edge of llvmpipe's 128 MiB binding limit)
//! solves on the GPU, every step and the occupancy included, and agrees with the CPU
//! reference on a short horizon (a full solve to tolerance is timed by `softvi bench`).

mod common;

use softvi::bench::sparse_mdp;
use softvi::{Horizon, MdpEngine, Outputs, SolveOptions, solve_mdp_cpu};

#[test]
fn million_state_mdp_solves_with_occupancy() {
    let Some(ctx) = common::gpu() else {
        return;
    };
    let mdp = sparse_mdp(1_000_000, 0);
    assert!(mdp.nonzeros() > 30_000_000);
    let o = SolveOptions {
        alpha: 1.0,
        gamma: 0.99,
        horizon: Horizon::Finite(3),
        ..SolveOptions::default()
    };
    let outputs = Outputs {
        all_steps: false,
        occupancy: true,
        ..Outputs::default()
    };
    let gpu = MdpEngine::new(ctx)
        .unwrap()
        .solve(&mdp, &o, outputs)
        .unwrap();
    let cpu = solve_mdp_cpu(&mdp, &o, outputs).unwrap();
    // Three sweeps of values up to ~3 in size: f32 rounding, 1e-5 relative.
    let dv = common::max_relative_error(&gpu.solution.values, &cpu.solution.values);
    assert!(dv <= 1e-5, "values differ by {dv}");
    let dp = common::max_abs_error(
        gpu.solution.policy.as_ref().unwrap(),
        cpu.solution.policy.as_ref().unwrap(),
    );
    assert!(dp <= 1e-5, "policy differs by {dp}");
    let (gd, cd) = (
        &gpu.occupancy.as_ref().unwrap().values,
        &cpu.occupancy.as_ref().unwrap().values,
    );
    assert_eq!(gd.len(), 4 * 1_000_000);
    // D_t entries are ~1e-6 (a uniform start over 10^6 states): compare relative to that.
    let dd = common::max_abs_error(gd, cd) * 1e6;
    assert!(dd <= 1e-4, "occupancy differs by {dd} x 1e-6");
    // Each step keeps the mass that has not stopped at one of the 16 terminals, times gamma^t.
    for (t, step) in gd.chunks_exact(1_000_000).enumerate() {
        let total: f64 = step.iter().map(|&x| x as f64).sum();
        assert!(
            total <= 0.99f64.powi(t as i32) + 1e-4 && total >= 0.99f64.powi(t as i32) * 0.99,
            "sum D_{t} = {total}"
        );
    }
    eprintln!("10^6 states: max |dV| relative {dv:.2e}, |dpi| {dp:.2e}, |dD| {dd:.2e} x 1e-6");
}
