//! The GPU VJP of a general-MDP solve (`MdpEngine::vjp`, `shaders/mdp_vjp.wgsl` and the
//! weighted occupancy sweeps) against the f64 reference (`mdp_vjp_cpu`) and against central
//! finite differences of the f64 solve: both backups, finite and infinite horizons, cotangents
//! on V, Q and pi alone and together, every step's, the hard max, several tasks, terminal
//! states, ragged rows (1 to 5 successors) and state counts that are not multiples of the
//! 64-invocation workgroup.

mod common;
use common::{assert_vjp_close as assert_close, cotangent_loss, random_cotangents};

use softvi::engine::cpu::{MdpVjp, mdp_vjp_cpu, solve_mdp_cpu_f64};
use softvi::engine::schedule::keep_going;
use softvi::world::mdp::TabularMdp;
use softvi::{Backup, Horizon, MdpEngine, Outputs, SolveOptions};

/// The bound: the f32 GPU gradient within 1e-3 of the f64 one, relative to the largest
/// entry of each input's gradient (f32 rounds each product to 6e-8 and the adjoint's fixed
/// point amplifies that by at most 1 / (1 - gamma) = 10 here, so 1e-3 leaves room for sums over
/// a few hundred states without hiding a wrong term, which is off by O(1)).
const GPU_TOL: f64 = 1e-3;

fn engine() -> Option<MdpEngine> {
    common::gpu().map(|ctx| MdpEngine::new(ctx).unwrap())
}

fn infinite(alpha: f64, backup: Backup) -> SolveOptions {
    SolveOptions {
        alpha,
        gamma: 0.9,
        backup,
        horizon: Horizon::Infinite {
            tol: 1e-8,
            max_iters: 100_000,
        },
        ..SolveOptions::default()
    }
}

fn finite(alpha: f64, horizon: u32, backup: Backup) -> SolveOptions {
    SolveOptions {
        alpha,
        gamma: 0.95,
        backup,
        horizon: Horizon::Finite(horizon),
        ..SolveOptions::default()
    }
}

/// The stationary solve: 70 and 131 states (one and three workgroups, neither full), 3 tasks.
#[test]
fn infinite_horizon_gpu_gradients_match_the_reference() {
    let Some(mut gpu) = engine() else { return };
    for (s, seed) in [(70, 11), (131, 12)] {
        let mdp = common::random_mdp(s, 4, 3, true, seed);
        for backup in [Backup::Expected, Backup::Optimistic] {
            for which in ["v", "q", "p", "vqp"] {
                let options = infinite(0.5, backup);
                let cot = random_cotangents(&mdp, 1, false, which, seed + 1);
                let want = mdp_vjp_cpu(&mdp, &options, &cot).unwrap();
                let got = gpu.vjp(&mdp, &options, &cot, None).unwrap();
                let label = format!("S {s}, {backup:?}, cotangent {which}");
                let gap = assert_close(&got, &want, GPU_TOL, &label);
                eprintln!("{label}: worst gap {gap:.2e}, {} sweeps", got.sweeps);
            }
        }
    }
}

/// Every step of a finite horizon: cotangents on V_0 only and on every step's V, Q and pi.
#[test]
fn finite_horizon_gpu_gradients_match_the_reference() {
    let Some(mut gpu) = engine() else { return };
    let mdp = common::random_mdp(67, 3, 2, true, 21);
    for backup in [Backup::Expected, Backup::Optimistic] {
        for (which, all) in [("v", false), ("qp", false), ("vqp", true)] {
            let options = finite(0.7, 9, backup);
            let cot = random_cotangents(&mdp, 9, all, which, 22);
            let want = mdp_vjp_cpu(&mdp, &options, &cot).unwrap();
            let got = gpu.vjp(&mdp, &options, &cot, None).unwrap();
            assert_eq!(got.sweeps, 9);
            let label = format!("{backup:?}, cotangent {which}, all steps {all}");
            let gap = assert_close(&got, &want, GPU_TOL, &label);
            eprintln!("{label}: worst gap {gap:.2e}");
        }
    }
}

/// alpha = 0: the argmax policy's subgradient (random rewards: no ties), finite and infinite.
#[test]
fn hard_max_gpu_gradients_match_the_reference() {
    let Some(mut gpu) = engine() else { return };
    let mdp = common::random_mdp(75, 3, 2, true, 31);
    for options in [
        finite(0.0, 6, Backup::Expected),
        infinite(0.0, Backup::Expected),
    ] {
        let cot = random_cotangents(&mdp, 6, false, "vq", 32);
        let want = mdp_vjp_cpu(&mdp, &options, &cot).unwrap();
        let got = gpu.vjp(&mdp, &options, &cot, None).unwrap();
        assert_close(
            &got,
            &want,
            GPU_TOL,
            &format!("hard max, {:?}", options.horizon),
        );
        assert_eq!(got.alpha, 0.0);
    }
    let optimistic = infinite(0.0, Backup::Optimistic);
    let cot = random_cotangents(&mdp, 1, false, "v", 1);
    let error = gpu.vjp(&mdp, &optimistic, &cot, None).unwrap_err();
    assert!(error.to_string().contains("needs alpha > 0"), "{error}");
}

/// The independent truth: the GPU gradient of every input against central differences of the
/// f64 solve (h = 2e-6, small enough that a perturbed transition row still sums to 1 within
/// the 1e-5 the solve accepts: the differences' own error, h^2 f''' + 1e-16 f / h, is near
/// 1e-10, far below the GPU's f32 tolerance), every step's cotangents, both backups.
#[test]
fn gpu_gradients_match_central_differences() {
    let Some(mut gpu) = engine() else { return };
    let mdp = common::random_mdp(13, 3, 2, true, 41);
    let horizon = 5;
    for backup in [Backup::Expected, Backup::Optimistic] {
        let options = finite(0.6, horizon, backup);
        let cot = random_cotangents(&mdp, horizon as usize, true, "vqp", 42);
        let got = gpu.vjp(&mdp, &options, &cot, None).unwrap();
        let central = |set: &dyn Fn(&mut TabularMdp, &mut SolveOptions, f64), x0: f64| {
            let h = 2e-6 * x0.abs().max(1.0);
            let at = |x: f64| {
                let (mut m, mut o) = (mdp.clone(), options);
                set(&mut m, &mut o, x);
                cotangent_loss(&m, &o, &cot)
            };
            (at(x0 + h) - at(x0 - h)) / (2.0 * h)
        };
        let mut want = MdpVjp {
            reward: vec![0.0; mdp.reward.len()],
            terminal_value: vec![0.0; mdp.terminal_value.len()],
            probs: vec![0.0; mdp.csr().probs.len()],
            alpha: central(&|_, o, x| o.alpha = x, options.alpha),
            gamma: central(&|_, o, x| o.gamma = x, options.gamma),
            sweeps: horizon,
        };
        for i in 0..mdp.reward.len() {
            want.reward[i] = central(&|m, _, x| m.reward[i] = x, mdp.reward[i]);
        }
        for i in (0..mdp.terminal.len()).filter(|&i| mdp.terminal[i]) {
            want.terminal_value[i] =
                central(&|m, _, x| m.terminal_value[i] = x, mdp.terminal_value[i]);
        }
        for k in 0..mdp.csr().probs.len() {
            want.probs[k] = central(&|m, _, x| common::set_prob(m, k, x), mdp.csr().probs[k]);
        }
        let gap = assert_close(&got, &want, GPU_TOL, &format!("{backup:?} vs differences"));
        eprintln!("{backup:?} vs central differences: worst gap {gap:.2e}");
    }
}

/// Starting from a given fixed point (the f64 reference's) gives the gradient the engine's own
/// solve does; a forward solution of the wrong length is an error naming it.
#[test]
fn a_given_forward_solution_gives_the_same_gpu_gradient() {
    let Some(mut gpu) = engine() else { return };
    let mdp = common::random_mdp(70, 3, 2, true, 51);
    let options = infinite(0.8, Backup::Expected);
    let cot = random_cotangents(&mdp, 1, false, "vqp", 52);
    let solved = solve_mdp_cpu_f64(&mdp, &options, Outputs::default(), &mut keep_going)
        .unwrap()
        .solution
        .values;
    let want = mdp_vjp_cpu(&mdp, &options, &cot).unwrap();
    let got = gpu.vjp(&mdp, &options, &cot, Some(&solved)).unwrap();
    assert_close(&got, &want, GPU_TOL, "given forward solution");
    let error = gpu
        .vjp(&mdp, &options, &cot, Some(&solved[1..]))
        .unwrap_err();
    assert!(
        error.to_string().contains("holds 139 values, not the 140"),
        "{error}"
    );
}

/// A batch whose arrays exceed one binding runs in chunks of whole tasks (here 2 of 5 tasks
/// each under a 10,000-byte binding limit; the rows of one task take 70 x 4 x 16 = 4,480
/// bytes): the same gradient within the f32 tolerance, the transitions' summed over the chunks.
#[test]
fn a_batch_over_the_binding_limit_runs_in_chunks() {
    let Some(ctx) = common::gpu() else { return };
    let options = softvi::EngineOptions {
        max_binding_bytes: Some(10_000),
        ..Default::default()
    };
    let mut small = MdpEngine::with_options(ctx, options).unwrap();
    let mdp = common::random_mdp(70, 4, 5, true, 61);
    for options in [
        infinite(0.5, Backup::Optimistic),
        finite(0.5, 7, Backup::Expected),
    ] {
        let all = matches!(options.horizon, Horizon::Finite(_));
        let cot = random_cotangents(&mdp, 7, all, "vqp", 62);
        let want = mdp_vjp_cpu(&mdp, &options, &cot).unwrap();
        let got = small.vjp(&mdp, &options, &cot, None).unwrap();
        let label = format!("chunked, {:?}", options.horizon);
        let gap = assert_close(&got, &want, GPU_TOL, &label);
        eprintln!("{label}: worst gap {gap:.2e}");
    }
    let mut one = MdpEngine::with_options(
        ctx,
        softvi::EngineOptions {
            max_binding_bytes: Some(4_000),
            ..Default::default()
        },
    )
    .unwrap();
    let cot = random_cotangents(&mdp, 1, false, "v", 63);
    let error = one
        .vjp(&mdp, &infinite(0.5, Backup::Expected), &cot, None)
        .unwrap_err();
    assert!(
        error.to_string().contains("the VJP's arrays of one task"),
        "{error}"
    );
}
