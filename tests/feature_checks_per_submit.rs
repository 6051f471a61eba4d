//! `GridEngine::set_checks_per_submit` (the browser playground keeps each WebGPU submission to
//! a few million cell updates, so progress and cancellation stay prompt) only moves where the
//! host reads the checks back: every convergence check still runs, so the result is the same
//! bit for bit at 1, 3 or 64 checks per submission. The independent truth: the default
//! submission schedule, and the f64 CPU reference within f32 rounding.

mod common;

use common::*;
use softvi::{
    Backup, Connectivity, CpuReference, GridSolver, Horizon, Outputs, SolveOptions, keep_going,
};

#[test]
fn checks_per_submit_changes_no_bit_of_the_result() {
    // 37 x 29: neither side a multiple of the 64-wide workgroup or of the 4-cell row padding.
    let problem = random_problem(29, 37, 3, Connectivity::Eight, false, 0.1, 11);
    let outputs = Outputs {
        policy: true,
        ..Outputs::VALUES
    };
    for (alpha, backup, horizon) in [
        // Extrapolation on (alpha > 0, infinite horizon): decided on the GPU at each check.
        (
            0.5,
            Backup::Expected,
            Horizon::Infinite {
                tol: 1e-5,
                max_iters: 20_000,
            },
        ),
        (0.2, Backup::Optimistic, Horizon::Finite(70)),
    ] {
        let options = SolveOptions {
            alpha,
            gamma: 0.97,
            backup,
            horizon,
            extrapolate: true,
        };
        let solves = with_engine(|engine| {
            [64, 1, 3].map(|checks| {
                engine.set_checks_per_submit(checks);
                let solved = engine.solve(&problem, &options, outputs);
                engine.set_checks_per_submit(64);
                solved.unwrap()
            })
        });
        let Some([default, one, three]) = solves else {
            return;
        };
        // Several submissions at 3 checks each (16 sweeps a check), so the schedules differ.
        let sweeps = *default.iterations.iter().max().unwrap();
        assert!(sweeps > 3 * 16, "{sweeps} sweeps");
        for (checks, other) in [(1, &one), (3, &three)] {
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&other.values),
                bits(&default.values),
                "{checks} checks"
            );
            let (p, q) = (
                other.policy.as_ref().unwrap(),
                default.policy.as_ref().unwrap(),
            );
            assert_eq!(bits(p), bits(q), "{checks} checks: policy");
            assert_eq!(other.iterations, default.iterations, "{checks} checks");
            assert_eq!(other.status, default.status, "{checks} checks");
        }
        let cpu = CpuReference
            .solve_grid(&problem, None, &options, outputs, &mut keep_going)
            .unwrap()
            .solution;
        // f32 sweeps against f64: values of a few tens, rounding and the f32 stop within 1e-3.
        let err = max_relative_error(&default.values, &cpu.values);
        assert!(err < 1e-3, "GPU vs CPU reference: {err:.3e}");
    }
}
