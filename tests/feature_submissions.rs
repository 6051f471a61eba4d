//! How the grid engine's iteration is cut into submissions, which the browser playground
//! tunes: `GridEngine::set_checks_per_submit` (each WebGPU submission a few million cell
//! updates, so progress and cancellation stay prompt) only moves where the host reads the
//! checks back: every convergence check still runs, so the result is the same bit for bit at
//! 1, 3 or 64 checks per submission. `GridEngine::watch_values` (the page draws the values as
//! the solve runs) sees the values after each submission, the last of them the result's.
//! The independent truths: the default schedule, the f64 CPU reference within f32 rounding,
//! and the sweep counts a submission of one 16-sweep check must give.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use softvi::engine::schedule::CHECK_INTERVAL;
use softvi::{
    Backup, Connectivity, CpuReference, GridSolver, Horizon, Method, Outputs, SolveOptions,
    keep_going,
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
            method: Method::Vi,
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

/// Sweeps so far and the values then, as `watch_values` saw them.
type Watched = (u32, Vec<f32>);

#[test]
fn watched_values_come_after_every_submission_and_end_at_the_result() {
    // 37 x 29 (rows padded to 40 columns), two tasks, infinite horizon with extrapolation.
    let problem = random_problem(29, 37, 2, Connectivity::Four, true, 0.05, 5);
    let options = SolveOptions {
        alpha: 0.3,
        gamma: 0.95,
        ..SolveOptions::default()
    };
    let seen: Arc<Mutex<Vec<Watched>>> = Arc::default();
    let solves = with_engine(|engine| {
        let plain = engine.solve(&problem, &options, Outputs::VALUES).unwrap();
        engine.set_checks_per_submit(1);
        let log = Arc::clone(&seen);
        engine.watch_values(Some(Box::new(move |sweeps, values: &[f32]| {
            log.lock().unwrap().push((sweeps, values.to_vec()));
        })));
        let watched = engine.solve(&problem, &options, Outputs::VALUES);
        engine.watch_values(None);
        engine.set_checks_per_submit(64);
        (plain, watched.unwrap())
    });
    let Some((plain, watched)) = solves else {
        return;
    };
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&watched.values),
        bits(&plain.values),
        "watching changed the result"
    );
    let seen = seen.lock().unwrap();
    let sweeps: Vec<u32> = seen.iter().map(|s| s.0).collect();
    let expected: Vec<u32> = (1..=sweeps.len() as u32)
        .map(|k| k * CHECK_INTERVAL)
        .collect();
    assert_eq!(sweeps, expected, "one 16-sweep check per submission");
    assert!(sweeps.len() >= 3, "{} submissions", sweeps.len());
    let (last_sweeps, last) = seen.last().unwrap();
    assert_eq!(*last_sweeps, *plain.iterations.iter().max().unwrap());
    // The last watched values are the result's, in rows padded to 40 columns, on every free
    // cell (the result marks walls NaN).
    let (h, w, pw) = (29, 37, 40);
    for t in 0..2 {
        for r in 0..h {
            for c in 0..w {
                let v = plain.values[(t * h + r) * w + c];
                if v.is_finite() {
                    assert_eq!(
                        last[(t * h + r) * pw + c].to_bits(),
                        v.to_bits(),
                        "{t} {r} {c}"
                    );
                }
            }
        }
    }
}
