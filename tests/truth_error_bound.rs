//! The stopping rule that bounds the error (`schedule::within_tolerance`, `error_bound`):
//! every backend's reported `error_bound` contains the true V* (an f64 reference solve run to
//! its floor), and `tol` is delivered (`max |V - V*| <= tol`) at gamma 0.9, 0.99, 0.999 on
//! random MDPs (with and without terminals) and grids; the f64 path down to tol 1e-11; an
//! f32 solve asked for less than f32 resolves still converges, and reports a bound above tol.

mod common;

use softvi::engine::cpu::solve_mdp_cpu_f64;
use softvi::engine::schedule::{RESIDUAL_FLOOR, bound_factor, keep_going};
use softvi::world::mdp::TabularMdp;
use softvi::{
    Connectivity, GridProblem, GridSolver, Horizon, MdpEngine, MdpSolver, NativeSolver, Outputs,
    SolveOptions, Status, solve_cpu,
};

fn options(alpha: f64, gamma: f64, tol: f64) -> SolveOptions {
    SolveOptions {
        alpha,
        gamma,
        horizon: Horizon::Infinite {
            tol,
            max_iters: 1_000_000,
        },
        ..Default::default()
    }
}

/// V* of `mdp` in f64 and its own error bound: the reference run to tol 1e-13 (it stops at
/// its f64 floor, 1e-15 max |V|, when that comes first).
fn mdp_truth(mdp: &TabularMdp, alpha: f64, gamma: f64) -> (Vec<f64>, f64) {
    let truth = solve_mdp_cpu_f64(
        mdp,
        &options(alpha, gamma, 1e-13),
        Outputs::VALUES,
        &mut keep_going,
    )
    .unwrap()
    .solution;
    assert!(truth.status.iter().all(|&s| s == Status::Converged));
    let bound = truth.error_bound.iter().copied().fold(0.0, f64::max);
    // At |V| <= 1 / (1 - gamma) the f64 floor bounds the truth's error by
    // 1e-15 * 1000 * 999 ~ 1e-9 at gamma 0.999, far less at the others.
    assert!(
        bound <= 2e-9 * gamma / (1.0 - gamma) / 999.0 * 1e3,
        "truth bound {bound}"
    );
    (truth.values, bound)
}

/// Per task `max_s |V(s) - V*(s)|` over finite entries (terminal values included: exact).
fn errors<T: Copy + Into<f64>>(values: &[T], truth: &[f64], tasks: usize) -> Vec<f64> {
    let n = truth.len() / tasks;
    (0..tasks)
        .map(|t| {
            (t * n..(t + 1) * n)
                .filter(|&i| truth[i].is_finite())
                .map(|i| (values[i].into() - truth[i]).abs())
                .fold(0.0, f64::max)
        })
        .collect()
}

/// The case: a random 300-state MDP at gamma 0.95 used to stop after 64 sweeps at
/// error 1.2e-6 whatever tol asked for. Now the f64 reference delivers each tol, its reported
/// bound is within tol and contains V*.
#[test]
fn f64_reference_delivers_small_tolerances() {
    for terminals in [false, true] {
        let mdp = common::random_mdp(300, 4, 2, terminals, 21);
        let (truth, truth_bound) = mdp_truth(&mdp, 1.0, 0.95);
        let mut sweeps = Vec::new();
        for tol in [1e-7, 1e-9, 1e-11] {
            let got = solve_mdp_cpu_f64(
                &mdp,
                &options(1.0, 0.95, tol),
                Outputs::VALUES,
                &mut keep_going,
            )
            .unwrap()
            .solution;
            let err = errors(&got.values, &truth, mdp.tasks);
            for t in 0..mdp.tasks {
                assert_eq!(got.status[t], Status::Converged);
                assert!(got.error_bound[t] <= tol, "bound {:e}", got.error_bound[t]);
                // The bound contains V* (up to the truth's own bound).
                assert!(
                    err[t] <= got.error_bound[t] + truth_bound,
                    "{err:?} {got:?}"
                );
            }
            sweeps.push(got.iterations[0]);
        }
        // A smaller tol never costs fewer sweeps (extrapolation along the slow mode often
        // lands all three within one window: no floor stopped them, the bounds above say so).
        assert!(
            sweeps[0] <= sweeps[1] && sweeps[1] <= sweeps[2],
            "{sweeps:?}"
        );
    }
}

/// The f64 grid reference: the bound contains V* (a run to tol 1e-13) at every gamma.
#[test]
fn f64_grid_bound_contains_the_fixed_point() {
    let problem = common::random_problem(13, 17, 3, Connectivity::Eight, true, 0.1, 5);
    for gamma in [0.9, 0.99, 0.999] {
        let truth = solve_cpu(&problem, &options(0.5, gamma, 1e-13), Outputs::VALUES).unwrap();
        let truth_bound = truth.error_bound.iter().copied().fold(0.0, f64::max);
        assert!(truth_bound <= 1e-9, "truth bound {truth_bound}");
        let truth: Vec<f64> = truth.values.iter().map(|&v| v as f64).collect();
        for tol in [1e-3, 1e-5] {
            let got = solve_cpu(&problem, &options(0.5, gamma, tol), Outputs::VALUES).unwrap();
            let err = errors(&got.values, &truth, 3);
            for t in 0..3 {
                assert!(got.error_bound[t] <= tol);
                // Both sides are reported in f32: one rounding of |V| <= 1e3 each (6e-5).
                let rounding = 2.0 * 6e-8 * 1e3;
                assert!(
                    err[t] <= tol + truth_bound + rounding,
                    "gamma {gamma}: {err:?}"
                );
            }
        }
    }
}

/// The f32 tolerance these tests ask for: four times what f32's floor resolves at max |V*|
/// and gamma, so the bound test, not the floor, stops the solve.
fn f32_tol(gamma: f64, truth: &[f64]) -> f64 {
    let scale = truth
        .iter()
        .filter(|v| v.is_finite())
        .fold(0.0f64, |m, v| m.max(v.abs()));
    4.0 * bound_factor(gamma) * RESIDUAL_FLOOR * scale.max(1.0)
}

/// The WGSL CSR kernels deliver tol at gamma 0.9, 0.99, 0.999 on MDPs with and without
/// terminals; below what f32 resolves they still converge, at a reported bound above tol that
/// contains V*.
#[test]
fn gpu_mdp_delivers_tol() {
    let Some(ctx) = common::gpu() else { return };
    let mut engine = MdpEngine::new(ctx).unwrap();
    for terminals in [false, true] {
        // 203 states: not a multiple of the workgroup size.
        let mdp = common::random_mdp(203, 3, 2, terminals, 8);
        for gamma in [0.9, 0.99, 0.999] {
            let (truth, truth_bound) = mdp_truth(&mdp, 1.0, gamma);
            let tol = f32_tol(gamma, &truth);
            let got = engine
                .solve(&mdp, &options(1.0, gamma, tol), Outputs::VALUES)
                .unwrap()
                .solution;
            let err = errors(&got.values, &truth, mdp.tasks);
            // f32's own rounding moves its fixed point by about ulp(|V|) / (1 - gamma) at
            // worst, 30x below tol's floor margin: tol (4x the floor's bound) still holds.
            for t in 0..mdp.tasks {
                assert_eq!(got.status[t], Status::Converged);
                assert!(got.error_bound[t] <= tol, "gamma {gamma}");
                assert!(
                    err[t] <= tol + truth_bound,
                    "gamma {gamma}: {err:?} > {tol}"
                );
            }
            // Asking for 1e-4 of that: f32 cannot deliver it (even where its residual reaches
            // 0, rounding moves its fixed point), the solve converges and the bound says so.
            let tiny = tol * 1e-4;
            let got = engine
                .solve(&mdp, &options(1.0, gamma, tiny), Outputs::VALUES)
                .unwrap()
                .solution;
            let err = errors(&got.values, &truth, mdp.tasks);
            for ((status, bound), err) in got.status.iter().zip(&got.error_bound).zip(&err) {
                assert_eq!(*status, Status::Converged);
                assert!(*bound > tiny, "gamma {gamma}");
                assert!(*err <= bound.max(tol) + truth_bound, "gamma {gamma}: {err}");
            }
        }
    }
}

/// Grids on the GPU and the native engine: tol delivered at every gamma against the f64
/// reference run to its floor.
#[test]
fn f32_grid_engines_deliver_tol() {
    // 13 x 17: not a multiple of any workgroup or vector width.
    let problem: GridProblem = common::random_problem(13, 17, 3, Connectivity::Eight, true, 0.1, 9);
    for gamma in [0.9, 0.99, 0.999] {
        let truth = solve_cpu(&problem, &options(0.5, gamma, 1e-13), Outputs::VALUES).unwrap();
        let truth: Vec<f64> = truth.values.iter().map(|&v| v as f64).collect();
        let tol = f32_tol(gamma, &truth);
        let mut native = NativeSolver::new(None);
        let mut solves = vec![(
            "native",
            native
                .solve_grid(
                    &problem,
                    None,
                    &options(0.5, gamma, tol),
                    Outputs::VALUES,
                    &mut keep_going,
                )
                .unwrap()
                .solution,
        )];
        if let Some(gpu) =
            common::with_engine(|e| e.solve(&problem, &options(0.5, gamma, tol), Outputs::VALUES))
        {
            solves.push(("gpu", gpu.unwrap()));
        }
        for (name, got) in solves {
            let err = errors(&got.values, &truth, 3);
            for t in 0..3 {
                assert_eq!(got.status[t], Status::Converged, "{name}");
                assert!(got.error_bound[t] <= tol, "{name} gamma {gamma}");
                // The truth is reported in f32 too: one rounding of |V| (tol is 4e-6 |V| at
                // least).
                assert!(
                    err[t] <= tol * 1.05,
                    "{name} gamma {gamma}: {err:?} > {tol}"
                );
            }
        }
    }
}

/// gamma = 1 has no bound (inf, written null); a finite horizon is exact (0).
#[test]
fn no_bound_at_gamma_one_and_exact_finite_horizons() {
    let mdp = common::random_mdp(40, 3, 1, true, 3);
    let got = solve_mdp_cpu_f64(
        &mdp,
        &options(1.0, 1.0, 1e-6),
        Outputs::VALUES,
        &mut keep_going,
    )
    .unwrap()
    .solution;
    assert_eq!(got.error_bound, vec![f64::INFINITY]);
    let finite = SolveOptions {
        horizon: Horizon::Finite(7),
        ..options(1.0, 0.9, 1e-6)
    };
    let got = solve_mdp_cpu_f64(&mdp, &finite, Outputs::VALUES, &mut keep_going)
        .unwrap()
        .solution;
    assert_eq!(got.error_bound, vec![0.0]);
}

/// V* of a terminal-free `mdp` by plain value iteration written here (expected backup, soft at
/// `alpha > 0`, hard max at 0), from V = 0 until `gamma^n` times the first change is below
/// 1e-15: independent of the engine's stopping rule.
fn value_iteration(mdp: &TabularMdp, alpha: f64, gamma: f64) -> Vec<f64> {
    let (s_n, a_n) = (mdp.states, mdp.actions);
    let mut v = vec![0.0; mdp.tasks * s_n];
    let sweeps = (1e-15f64.ln() / gamma.ln()).ceil() as usize + 50;
    for _ in 0..sweeps {
        let mut next = vec![0.0; v.len()];
        for t in 0..mdp.tasks {
            for s in 0..s_n {
                let q: Vec<f64> = (0..a_n)
                    .map(|a| {
                        let row = s * a_n + a;
                        let entries =
                            mdp.csr().indptr[row] as usize..mdp.csr().indptr[row + 1] as usize;
                        let expected: f64 = entries
                            .map(|k| {
                                mdp.csr().probs[k] * v[t * s_n + mdp.csr().indices[k] as usize]
                            })
                            .sum();
                        mdp.reward[(t * s_n + s) * a_n + a] + gamma * expected
                    })
                    .collect();
                let top = q.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                next[t * s_n + s] = if alpha == 0.0 {
                    top
                } else {
                    top + alpha
                        * q.iter()
                            .map(|x| ((x - top) / alpha).exp())
                            .sum::<f64>()
                            .ln()
                };
            }
        }
        v = next;
    }
    v
}

/// Sweeps the plain bound needs at least: `gamma / (1 - gamma) max |dV| <= tol` once the
/// uniform mode, decaying like gamma^n from a first change of about 1 (rewards in [-1, 0.3]),
/// is all that is left (benches/mdp_peers.py's S = 10^5 model at alpha 0, tol 1e-3: 96 sweeps
/// at gamma 0.9 and 1,008 at 0.99 by the plain bound, 16 by the span).
fn plain_sweeps(gamma: f64, tol: f64) -> u32 {
    ((tol * (1.0 - gamma) / gamma).ln() / gamma.ln()) as u32
}

/// MacQueen's span bound (Puterman 6.6.12) where no state keeps a fixed value: the f64
/// reference, the native engine and the WGSL CSR kernels stop in one or two check windows where the plain bound
/// `gamma / (1 - gamma) max |dV|` needs the uniform mode (decaying like gamma^n) to die out,
/// return V shifted to the interval's centre, and their reported bound contains V*.
#[test]
fn span_bound_stops_early_and_contains_the_fixed_point() {
    // 211 states, 4 actions, 3 tasks: no terminal state.
    let mdp = common::random_mdp(211, 4, 3, false, 17);
    let mut gpu = common::gpu().map(|ctx| MdpEngine::new(ctx).unwrap());
    for (alpha, gamma) in [(0.0, 0.9), (0.0, 0.99), (1.0, 0.99), (0.5, 0.999)] {
        let truth = value_iteration(&mdp, alpha, gamma);
        let tol = 1e-6;
        let reference = solve_mdp_cpu_f64(
            &mdp,
            &options(alpha, gamma, tol),
            Outputs::VALUES,
            &mut keep_going,
        )
        .unwrap()
        .solution;
        // The native engine in f32, at a tol its floor resolves.
        let native_tol = f32_tol(gamma, &truth);
        let native = NativeSolver::new(None)
            .solve_mdp(
                &mdp,
                &options(alpha, gamma, native_tol),
                Outputs::VALUES,
                &mut keep_going,
            )
            .unwrap()
            .solution;
        let reference_err = errors(&reference.values, &truth, mdp.tasks);
        let native_err = errors(&native.values, &truth, mdp.tasks);
        let on_gpu = (gpu.as_mut()).map(|engine| {
            (engine.solve(&mdp, &options(alpha, gamma, native_tol), Outputs::VALUES))
                .unwrap()
                .solution
        });
        let mut solves = vec![
            (
                "f64",
                tol,
                &reference.status,
                &reference.error_bound,
                &reference.iterations,
                reference_err,
            ),
            (
                "native",
                native_tol,
                &native.status,
                &native.error_bound,
                &native.iterations,
                native_err,
            ),
        ];
        if let Some(got) = &on_gpu {
            let err = errors(&got.values, &truth, mdp.tasks);
            let solve = (
                "gpu",
                native_tol,
                &got.status,
                &got.error_bound,
                &got.iterations,
                err,
            );
            solves.push(solve);
        }
        for (name, tol, status, bound, iterations, err) in solves {
            for t in 0..mdp.tasks {
                assert_eq!(status[t], Status::Converged, "{name}");
                assert!(bound[t] <= tol, "{name} alpha {alpha} gamma {gamma}");
                // The truth's own error: 1e-15 relative to |V| <= 1 / (1 - gamma).
                assert!(
                    err[t] <= bound[t] + 1e-12,
                    "{name} alpha {alpha} gamma {gamma}: {err:?} {bound:?}"
                );
                assert!(
                    iterations[t] <= plain_sweeps(gamma, tol) / 2,
                    "{name} alpha {alpha} gamma {gamma}: {iterations:?}"
                );
            }
        }
    }
}
