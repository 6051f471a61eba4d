//! The VJP of a general-MDP solve on the f64 reference (`mdp_vjp_cpu`) against central finite
//! differences of the solve itself: every input (each reward, alpha, gamma, each terminal
//! value, each stored transition probability), cotangents on V, Q and pi alone and together,
//! both backups, finite and infinite horizons, and the hard max; the native engine's VJP (at
//! its f32 fixed point) against the reference's and the same differences.

mod common;
use common::{cotangent_loss, random_cotangents};

use softvi::engine::cpu::{MdpCotangents, MdpVjp, mdp_vjp_cpu, mdp_vjp_cpu_at, solve_mdp_cpu_f64};
use softvi::engine::native::{mdp_vjp_native, solve_native_mdp};
use softvi::engine::schedule::keep_going;
use softvi::world::mdp::TabularMdp;
use softvi::{Backup, Horizon, Outputs, SolveOptions};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// A gamma = 0.9 discount past horizon 400 weighs 0.9^400 = 5e-19: V_0 of that horizon is the
/// infinite horizon's fixed point to f64's resolution, a differentiable stand-in for it.
const LONG: u32 = 400;

/// Central difference of `loss` along one input set by `set(mdp, options, x)` from `x0`.
fn central(
    mdp: &TabularMdp,
    options: &SolveOptions,
    cot: &MdpCotangents,
    x0: f64,
    set: impl Fn(&mut TabularMdp, &mut SolveOptions, f64),
) -> f64 {
    // Small enough that a perturbed transition row still sums to 1 within the 1e-5 the
    // solve accepts.
    let h = 2e-6 * x0.abs().max(1.0);
    let at = |x: f64| {
        let (mut m, mut o) = (mdp.clone(), *options);
        set(&mut m, &mut o, x);
        cotangent_loss(&m, &o, cot)
    };
    (at(x0 + h) - at(x0 - h)) / (2.0 * h)
}

/// Checks every input's gradient against central differences: within 1e-6 relative to the
/// largest gradient entry (the differences' own error, h^2 f''' + eps f / h at h = 2e-6, is
/// below 1e-9 here).
fn check(mdp: &TabularMdp, options: &SolveOptions, cot: &MdpCotangents, label: &str) {
    let vjp = mdp_vjp_cpu(mdp, options, cot).unwrap();
    check_vjp(&vjp, mdp, options, cot, label, 1e-6);
}

/// `vjp` against central differences of the f64 solve at `options`: every input within
/// `tolerance` relative to the largest gradient entry.
fn check_vjp(
    vjp: &MdpVjp,
    mdp: &TabularMdp,
    options: &SolveOptions,
    cot: &MdpCotangents,
    label: &str,
    tolerance: f64,
) {
    let scale = vjp
        .reward
        .iter()
        .chain(&vjp.probs)
        .chain(&vjp.terminal_value)
        .chain([&vjp.alpha, &vjp.gamma])
        .fold(1e-3f64, |m, x| m.max(x.abs()));
    let mut worst = (0.0f64, String::new());
    let mut compare = |what: String, got: f64, want: f64| {
        let gap = (got - want).abs() / scale;
        if gap > worst.0 {
            worst = (gap, format!("{what}: vjp {got}, differences {want}"));
        }
    };
    for i in 0..mdp.reward.len() {
        let fd = central(mdp, options, cot, mdp.reward[i], |m, _, x| m.reward[i] = x);
        compare(format!("reward[{i}]"), vjp.reward[i], fd);
    }
    for i in (0..mdp.terminal.len()).filter(|&i| mdp.terminal[i]) {
        let fd = central(mdp, options, cot, mdp.terminal_value[i], |m, _, x| {
            m.terminal_value[i] = x
        });
        compare(format!("terminal_value[{i}]"), vjp.terminal_value[i], fd);
    }
    for k in (0..mdp.csr().probs.len()).step_by(3) {
        let fd = central(mdp, options, cot, mdp.csr().probs[k], |m, _, x| {
            common::set_prob(m, k, x)
        });
        compare(format!("probs[{k}]"), vjp.probs[k], fd);
    }
    if options.alpha > 0.0 {
        let fd = central(mdp, options, cot, options.alpha, |_, o, x| o.alpha = x);
        compare("alpha".into(), vjp.alpha, fd);
    }
    let gamma = options.gamma;
    let fd = central(mdp, options, cot, gamma, |_, o, x| o.gamma = x);
    compare("gamma".into(), vjp.gamma, fd);
    assert!(
        worst.0 <= tolerance,
        "{label}: {} (gap {:e})",
        worst.1,
        worst.0
    );
}

fn finite(alpha: f64, gamma: f64, horizon: u32, backup: Backup) -> SolveOptions {
    SolveOptions {
        alpha,
        gamma,
        backup,
        horizon: Horizon::Finite(horizon),
        ..SolveOptions::default()
    }
}

#[test]
fn finite_horizon_gradients_match_differences() {
    let mdp = common::random_mdp(9, 3, 2, true, 23);
    for backup in [Backup::Expected, Backup::Optimistic] {
        let o = finite(0.7, 0.95, 6, backup);
        for (which, all) in [("v", false), ("q", false), ("p", false), ("vqp", true)] {
            let cot = random_cotangents(&mdp, 6, all, which, 5);
            check(
                &mdp,
                &o,
                &cot,
                &format!("{backup:?}, cotangent {which}, all steps {all}"),
            );
        }
    }
}

/// The infinite horizon at gamma 0.9: the VJP of the stationary solve against differences of
/// the horizon-400 solve (the same function to f64's resolution, see [`LONG`]).
#[test]
fn infinite_horizon_gradients_match_differences() {
    let mdp = common::random_mdp(7, 3, 2, true, 31);
    for backup in [Backup::Expected, Backup::Optimistic] {
        for which in ["v", "qp"] {
            let cot = random_cotangents(&mdp, 1, false, which, 9);
            let stationary = SolveOptions {
                alpha: 0.5,
                gamma: 0.9,
                backup,
                // The fixed point and the adjoint to f64's resolution.
                horizon: Horizon::Infinite {
                    tol: 1e-13,
                    max_iters: 100_000,
                },
                ..SolveOptions::default()
            };
            let vjp = mdp_vjp_cpu(&mdp, &stationary, &cot).unwrap();
            let long = finite(0.5, 0.9, LONG, backup);
            let unrolled = mdp_vjp_cpu(&mdp, &long, &cot).unwrap();
            // The two VJPs agree to f64 rounding (0.9^400 of the tail is far below it)...
            for (a, b) in vjp.reward.iter().zip(&unrolled.reward) {
                assert!(
                    (a - b).abs() <= 1e-10,
                    "{backup:?} {which}: reward {a} vs {b}"
                );
            }
            assert!((vjp.alpha - unrolled.alpha).abs() <= 1e-9 * unrolled.alpha.abs().max(1.0));
            assert!((vjp.gamma - unrolled.gamma).abs() <= 1e-9 * unrolled.gamma.abs().max(1.0));
            // ... and the horizon-400 one matches differences of the solve.
            check(
                &mdp,
                &long,
                &cot,
                &format!("{backup:?}, cotangent {which}, horizon 400"),
            );
        }
    }
}

/// alpha = 0: the hard max's argmax policy as the subgradient (random rewards: no ties, so the
/// values are differentiable and the differences agree); the policy's own cotangent gives 0.
#[test]
fn hard_max_gradients_are_the_argmax_subgradient() {
    let mdp = common::random_mdp(8, 3, 1, true, 41);
    let o = finite(0.0, 0.9, 5, Backup::Expected);
    check(
        &mdp,
        &o,
        &random_cotangents(&mdp, 5, false, "v", 2),
        "hard max, V",
    );
    let policy_only = random_cotangents(&mdp, 5, false, "p", 3);
    let vjp = mdp_vjp_cpu(&mdp, &o, &policy_only).unwrap();
    assert!(vjp.reward.iter().all(|&g| g == 0.0));
}

/// Starting the backward pass from the forward's V (`mdp_vjp_cpu_at`), as the framework
/// wrappers do, gives the VJP that solves again: from the exact fixed point and from one off
/// by up to 1e-3 (an f32 engine's, or a loose tolerance's), both backups, within 1e-9 of the
/// largest entry (the sweeps take either to the same 1e-13 stopping point, whose own error is
/// about 1e-12). A solution of the wrong length, with a NaN, or for a finite horizon is an
/// error naming it.
#[test]
fn a_given_forward_solution_gives_the_same_gradient() {
    let mdp = common::random_mdp(9, 3, 2, true, 57);
    for backup in [Backup::Expected, Backup::Optimistic] {
        let cot = random_cotangents(&mdp, 1, false, "vqp", 5);
        let options = SolveOptions {
            alpha: 0.7,
            gamma: 0.9,
            backup,
            horizon: Horizon::Infinite {
                tol: 1e-13,
                max_iters: 100_000,
            },
            ..SolveOptions::default()
        };
        let want = mdp_vjp_cpu(&mdp, &options, &cot).unwrap();
        let solved = solve_mdp_cpu_f64(&mdp, &options, Outputs::default(), &mut keep_going)
            .unwrap()
            .solution
            .values;
        let mut rng = StdRng::seed_from_u64(3);
        let rough: Vec<f64> = solved
            .iter()
            .map(|v| v + rng.random_range(-1e-3..1e-3))
            .collect();
        for (label, start) in [("exact", &solved), ("rough", &rough)] {
            let got = mdp_vjp_cpu_at(&mdp, &options, &cot, Some(start)).unwrap();
            let scale = want.reward.iter().fold(1.0f64, |m, x| m.max(x.abs()));
            let gaps = got
                .reward
                .iter()
                .zip(&want.reward)
                .chain(got.probs.iter().zip(&want.probs))
                .chain(got.terminal_value.iter().zip(&want.terminal_value))
                .chain([(&got.alpha, &want.alpha), (&got.gamma, &want.gamma)]);
            for (a, b) in gaps {
                assert!(
                    (a - b).abs() <= 1e-9 * scale,
                    "{backup:?}, {label} start: {a} vs {b}"
                );
            }
        }
        let error = |v: &[f64], o: &SolveOptions| {
            mdp_vjp_cpu_at(&mdp, o, &cot, Some(v))
                .unwrap_err()
                .to_string()
        };
        assert!(error(&solved[1..], &options).contains("holds 17 values, not the 18"));
        let mut nan = solved.clone();
        let i = (0..nan.len()).find(|&i| !mdp.terminal[i]).unwrap();
        nan[i] = f64::NAN;
        assert!(error(&nan, &options).contains("is NaN, not finite"));
        let finite_horizon = finite(0.7, 0.9, 5, backup);
        assert!(error(&solved, &finite_horizon).contains("for an infinite horizon"));
    }
}

/// The native engine's VJP, at its own f32 fixed point (`values` None) and at a given one,
/// against the reference's and against central differences of the horizon-400 f64 solve (the
/// fixed point to f64's resolution, see [`LONG`]): every input within 1e-3 relative to the
/// largest entry, both backups, cotangents on V, Q and pi together. The f32 sweeps stop where
/// one changes V by about 1e-6 of its size, so V is within about 1e-6 / (1 - gamma) = 1e-5 of
/// the fixed point, and the gradient, linear in that error to first order, about as close;
/// 1e-3 is the f32 engines' contract. Sizes are not multiples of the engine's 8 lanes.
#[test]
fn native_gradients_match_the_reference_and_differences() {
    let mdp = common::random_mdp(13, 3, 2, true, 71);
    for backup in [Backup::Expected, Backup::Optimistic] {
        let cot = random_cotangents(&mdp, 1, false, "vqp", 13);
        let options = SolveOptions {
            alpha: 0.5,
            gamma: 0.9,
            backup,
            horizon: Horizon::Infinite {
                tol: 1e-6,
                max_iters: 100_000,
            },
            ..SolveOptions::default()
        };
        let want = mdp_vjp_cpu(&mdp, &options, &cot).unwrap();
        let own = mdp_vjp_native(&mdp, &options, &cot, None, 3).unwrap();
        let solved = solve_native_mdp(&mdp, &options, Outputs::default(), 2, &mut keep_going)
            .unwrap()
            .solution
            .values;
        let v: Vec<f64> = solved.iter().map(|&x| x.into()).collect();
        let given = mdp_vjp_native(&mdp, &options, &cot, Some(&v), 1).unwrap();
        let scale = want.reward.iter().fold(1.0f64, |m, x| m.max(x.abs()));
        for (label, got) in [("own solve", &own), ("given V", &given)] {
            let gaps = got
                .reward
                .iter()
                .zip(&want.reward)
                .chain(got.probs.iter().zip(&want.probs))
                .chain(got.terminal_value.iter().zip(&want.terminal_value))
                .chain([(&got.alpha, &want.alpha), (&got.gamma, &want.gamma)]);
            for (a, b) in gaps {
                assert!(
                    (a - b).abs() <= 1e-3 * scale,
                    "{backup:?}, {label}: native {a} vs reference {b}"
                );
            }
            let long = finite(0.5, 0.9, LONG, backup);
            check_vjp(
                got,
                &mdp,
                &long,
                &cot,
                &format!("native, {backup:?}, {label}"),
                1e-3,
            );
        }
    }
}
