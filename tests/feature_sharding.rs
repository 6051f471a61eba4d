//! `--adapters all`: the batch sharded over several adapters (on a CPU-only machine with
//! mesa-vulkan-drivers: llvmpipe on Vulkan and on GL) gives the same results as one adapter.

mod common;

use common::*;
use softvi::{
    Backup, Connectivity, GridEngine, Horizon, Method, Outputs, SolveOptions, solve_sharded,
};

#[test]
fn sharded_solve_matches_single_adapter() {
    let Some(contexts) = every_adapter() else {
        return;
    };
    let mut engines: Vec<GridEngine> = contexts
        .iter()
        .map(|c| GridEngine::new(c).unwrap())
        .collect();
    let labels: Vec<&str> = engines.iter().map(|e| e.adapter_label()).collect();
    eprintln!("sharding over {labels:?}");
    let problem = random_problem(45, 39, 5, Connectivity::Eight, true, 0.2, 21);
    for horizon in [
        Horizon::Finite(30),
        Horizon::Infinite {
            tol: 1e-5,
            max_iters: 10_000,
        },
    ] {
        let options = SolveOptions {
            alpha: 0.5,
            gamma: 0.95,
            backup: Backup::Optimistic,
            horizon,
            extrapolate: true,
            method: Method::Vi,
        };
        let sharded = solve_sharded(&mut engines, &problem, &options, Outputs::default()).unwrap();
        let single = engines[0]
            .solve(&problem, &options, Outputs::default())
            .unwrap();
        assert_eq!(sharded.status, single.status);
        assert_eq!(sharded.unreachable, single.unreachable);
        assert_eq!(sharded.values.len(), single.values.len());
        // Same kernels on two drivers: f32 rounding may differ (exp2/log2 implementations),
        // and converged solves may stop a check apart: tol * gamma / (1 - gamma) each side.
        let bound = match horizon {
            Horizon::Finite(_) => 1e-4,
            Horizon::Infinite { tol, .. } => 2.0 * tol * 0.95 / 0.05 + 1e-4,
        };
        let err = max_abs_error(&sharded.values, &single.values);
        assert!(err <= bound, "{horizon:?}: sharded vs single {err}");
        let perr = max_abs_error(
            sharded.policy.as_ref().unwrap(),
            single.policy.as_ref().unwrap(),
        );
        assert!(perr <= 1e-3, "{horizon:?}: policy {perr}");
    }
}
