//! The GPU VJP of a gridworld solve on the grid kernels (`GridEngine::vjp`,
//! `shaders/grid_vjp.wgsl` and `grid_occupancy.wgsl`'s weighted sweeps) against the f64
//! reference's VJP of the same grid through its `GridMdp` (`mdp_vjp_cpu`) and against central
//! finite differences of the f64 solve: both backups, finite and infinite horizons, cotangents
//! on V, Q and pi alone and together, every step's, the hard max, several tasks with their own
//! goals and reward maps, walls, slip, 4 and 8 moves with and without STAY, rewards per cell and
//! per action, maps of 20, 77 and 117 cells (not multiples of the 64-invocation workgroup), and
//! batches in chunks under a lowered binding limit.

mod common;
use common::{assert_vjp_close, cotangent_loss, random_cotangents, random_problem};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use softvi::engine::cpu::{MdpCotangents, MdpVjp, mdp_vjp_cpu, solve_mdp_cpu_f64};
use softvi::engine::schedule::keep_going;
use softvi::world::grid_mdp::GridMdp;
use softvi::world::mdp::TabularMdp;
use softvi::{Backup, Connectivity, GridEngine, GridProblem, Horizon, Outputs, SolveOptions};

/// The bound, as tests/kernel_mdp_vjp.rs: the f32 GPU gradient within 1e-3 of the f64
/// one, relative to the largest entry of each input's gradient (f32 rounds each product to
/// 6e-8 and the adjoint's fixed point amplifies that by at most 1 / (1 - gamma) = 10 here, so
/// 1e-3 leaves room for sums over a few hundred cells without hiding a wrong term, which is
/// off by O(1)).
const GPU_TOL: f64 = 1e-3;

fn engine() -> Option<GridEngine> {
    common::gpu().map(|ctx| GridEngine::new(ctx).unwrap())
}

/// A seeded grid batch (20% walls, 1 or 2 goals per task, reward maps on odd tasks) and its
/// tabular MDP.
fn world(
    (height, width, tasks): (usize, usize, usize),
    connectivity: Connectivity,
    stay: bool,
    slip: f64,
    seed: u64,
) -> (GridProblem, TabularMdp) {
    let problem = random_problem(height, width, tasks, connectivity, stay, slip, seed);
    let mdp = GridMdp::new(&problem, None).unwrap().mdp;
    (problem, mdp)
}

/// `mdp` with a reward drawn per state and action in [-1, 0]: one the grid kernels' own solve
/// cannot take (the VJP's kernels read r(s,a) whole).
fn per_action_reward(mdp: &TabularMdp, seed: u64) -> TabularMdp {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut m = mdp.clone();
    m.reward
        .iter_mut()
        .for_each(|r| *r = rng.random_range(-1.0..0.0));
    m
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

/// The f64 fixed point of `mdp`.
fn fixed_point(mdp: &TabularMdp, options: &SolveOptions) -> Vec<f64> {
    (solve_mdp_cpu_f64(mdp, options, Outputs::default(), &mut keep_going).unwrap())
        .solution
        .values
}

/// The stationary solve on 117 cells (8 moves and STAY, slip 0.2: two workgroups, the second
/// partial) and 77 cells (4 moves, slip 0.1), 3 tasks; the engine's own grid solve (reward per
/// cell) and a given f64 fixed point (reward per action).
#[test]
fn infinite_horizon_grid_gradients_match_the_reference() {
    let Some(mut gpu) = engine() else { return };
    let shapes = [
        ((9, 13, 3), Connectivity::Eight, true, 0.2, 11),
        ((7, 11, 3), Connectivity::Four, false, 0.1, 12),
    ];
    let mut worst = 0.0f64;
    for (size, connectivity, stay, slip, seed) in shapes {
        let (problem, mdp) = world(size, connectivity, stay, slip, seed);
        for backup in [Backup::Expected, Backup::Optimistic] {
            for which in ["v", "q", "p", "vqp"] {
                let options = infinite(0.5, backup);
                let cot = random_cotangents(&mdp, 1, false, which, seed + 1);
                let want = mdp_vjp_cpu(&mdp, &options, &cot).unwrap();
                let got = gpu.vjp(&problem, &mdp, &options, &cot, None).unwrap();
                let label = format!("{size:?} {connectivity:?}, {backup:?}, cotangent {which}");
                let gap = assert_vjp_close(&got, &want, GPU_TOL, &label);
                eprintln!("{label}: worst gap {gap:.2e}, {} sweeps", got.sweeps);
                worst = worst.max(gap);
                // A reward per action, at the reference's fixed point.
                let per_action = per_action_reward(&mdp, seed + 2);
                let v = fixed_point(&per_action, &options);
                let want = mdp_vjp_cpu(&per_action, &options, &cot).unwrap();
                let got = gpu
                    .vjp(&problem, &per_action, &options, &cot, Some(&v))
                    .unwrap();
                let label = format!("{label}, reward per action");
                let gap = assert_vjp_close(&got, &want, GPU_TOL, &label);
                eprintln!("{label}: worst gap {gap:.2e}");
                worst = worst.max(gap);
            }
        }
    }
    eprintln!("infinite horizon vs the f64 reference: worst gap {worst:.2e}");
}

/// Every step of a finite horizon: cotangents on V_0 only and on every step's V, Q and pi.
#[test]
fn finite_horizon_grid_gradients_match_the_reference() {
    let Some(mut gpu) = engine() else { return };
    let (problem, mdp) = world((9, 13, 2), Connectivity::Eight, true, 0.2, 21);
    let mut worst = 0.0f64;
    for backup in [Backup::Expected, Backup::Optimistic] {
        for (which, all) in [("v", false), ("qp", false), ("vqp", true)] {
            let options = finite(0.7, 9, backup);
            let cot = random_cotangents(&mdp, 9, all, which, 22);
            let want = mdp_vjp_cpu(&mdp, &options, &cot).unwrap();
            let got = gpu.vjp(&problem, &mdp, &options, &cot, None).unwrap();
            assert_eq!(got.sweeps, 9);
            let label = format!("{backup:?}, cotangent {which}, all steps {all}");
            let gap = assert_vjp_close(&got, &want, GPU_TOL, &label);
            eprintln!("{label}: worst gap {gap:.2e}");
            worst = worst.max(gap);
        }
    }
    eprintln!("finite horizon vs the f64 reference: worst gap {worst:.2e}");
}

/// alpha = 0: the argmax policy's subgradient, finite and infinite, on the engine's own grid
/// solve; the optimistic backup refuses it. Every task has a random reward map: a task without
/// one has many cells of exactly equal value, whose actions tie in exact arithmetic and are
/// ordered by rounding (the f64 reference then picks by its last bit, f32 by its own; both
/// are subgradients, of different policies).
#[test]
fn hard_max_grid_gradients_match_the_reference() {
    let Some(mut gpu) = engine() else { return };
    let mut problem = random_problem(7, 11, 2, Connectivity::Eight, false, 0.1, 31);
    let mut rng = StdRng::seed_from_u64(33);
    for task in &mut problem.tasks {
        let cells = problem.grid.cells();
        task.reward = Some((0..cells).map(|_| rng.random_range(-0.5f32..0.5)).collect());
    }
    let mdp = GridMdp::new(&problem, None).unwrap().mdp;
    for options in [
        finite(0.0, 6, Backup::Expected),
        infinite(0.0, Backup::Expected),
    ] {
        let cot = random_cotangents(&mdp, 6, false, "vq", 32);
        let want = mdp_vjp_cpu(&mdp, &options, &cot).unwrap();
        let got = gpu.vjp(&problem, &mdp, &options, &cot, None).unwrap();
        let label = format!("hard max, {:?}", options.horizon);
        let gap = assert_vjp_close(&got, &want, GPU_TOL, &label);
        eprintln!("{label}: worst gap {gap:.2e}");
        assert_eq!(got.alpha, 0.0);
    }
    let optimistic = infinite(0.0, Backup::Optimistic);
    let cot = random_cotangents(&mdp, 1, false, "v", 1);
    let error = gpu
        .vjp(&problem, &mdp, &optimistic, &cot, None)
        .unwrap_err();
    assert!(error.to_string().contains("needs alpha > 0"), "{error}");
}

/// `<c, outputs>` of the f64 stationary solve (tol 1e-13), NaN entries left out.
fn stationary_loss(mdp: &TabularMdp, options: &SolveOptions, cot: &MdpCotangents) -> f64 {
    let options = SolveOptions {
        horizon: Horizon::Infinite {
            tol: 1e-13,
            max_iters: 1_000_000,
        },
        ..*options
    };
    let outputs = Outputs {
        policy: true,
        q: true,
        ..Outputs::default()
    };
    let got = solve_mdp_cpu_f64(mdp, &options, outputs, &mut keep_going).unwrap();
    let s = &got.solution;
    let dot = |c: &Option<Vec<f64>>, x: &[f64]| -> f64 {
        c.as_ref().map_or(0.0, |c| {
            (c.iter().zip(x))
                .filter(|(_, v)| v.is_finite())
                .map(|(c, v)| c * v)
                .sum()
        })
    };
    dot(&cot.values, &s.values)
        + dot(&cot.q, s.q.as_ref().unwrap())
        + dot(&cot.policy, s.policy.as_ref().unwrap())
}

/// The independent truth: the grid kernels' gradient of every input (reward per state and
/// action, terminal values, transition probabilities, alpha, gamma) against central
/// differences of the f64 solve of the grid's MDP, both backups; a finite horizon (every
/// step's cotangents) and the fixed point (solved to 1e-13), h = 2e-6: small enough that a
/// perturbed transition row still sums to 1 within the 1e-5 the solve accepts; the
/// differences' own error, h^2 f''' + (1e-16 or 1e-13) f / h, is below 1e-7, far below the
/// GPU's f32 tolerance. 20 cells, 2 tasks, walls, slip 0.2, 8 moves and STAY.
#[test]
fn grid_gradients_match_central_differences() {
    let Some(mut gpu) = engine() else { return };
    let (problem, mdp) = world((4, 5, 2), Connectivity::Eight, true, 0.2, 41);
    let horizon = 5;
    let mut worst = 0.0f64;
    for backup in [Backup::Expected, Backup::Optimistic] {
        for options in [finite(0.6, horizon, backup), infinite(0.6, backup)] {
            let stationary = matches!(options.horizon, Horizon::Infinite { .. });
            let cot = random_cotangents(&mdp, horizon as usize, !stationary, "vqp", 42);
            let got = gpu.vjp(&problem, &mdp, &options, &cot, None).unwrap();
            let loss = |m: &TabularMdp, o: &SolveOptions| match stationary {
                true => stationary_loss(m, o, &cot),
                false => cotangent_loss(m, o, &cot),
            };
            let central = |set: &dyn Fn(&mut TabularMdp, &mut SolveOptions, f64), x0: f64| {
                let h = 2e-6 * x0.abs().max(1.0);
                let at = |x: f64| {
                    let (mut m, mut o) = (mdp.clone(), options);
                    set(&mut m, &mut o, x);
                    loss(&m, &o)
                };
                (at(x0 + h) - at(x0 - h)) / (2.0 * h)
            };
            let mut want = MdpVjp {
                reward: vec![0.0; mdp.reward.len()],
                terminal_value: vec![0.0; mdp.terminal_value.len()],
                probs: vec![0.0; mdp.csr().probs.len()],
                alpha: central(&|_, o, x| o.alpha = x, options.alpha),
                gamma: central(&|_, o, x| o.gamma = x, options.gamma),
                sweeps: 0,
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
            let label = format!("{backup:?}, {:?} vs differences", options.horizon);
            let gap = assert_vjp_close(&got, &want, GPU_TOL, &label);
            eprintln!("{label}: worst gap {gap:.2e}");
            worst = worst.max(gap);
        }
    }
    eprintln!("grid kernels vs central differences: worst gap {worst:.2e}");
}

/// What the grid kernels cannot differentiate is refused with a message naming it: other
/// transitions, a reward per action without the forward values, and a forward solution of
/// the wrong length.
#[test]
fn grid_vjp_refuses_what_the_grid_kernels_cannot_run() {
    let Some(mut gpu) = engine() else { return };
    let (problem, mdp) = world((7, 11, 2), Connectivity::Eight, true, 0.1, 51);
    let options = infinite(0.5, Backup::Expected);
    let cot = random_cotangents(&mdp, 1, false, "v", 52);
    let mut other = mdp.clone();
    let row = (1..other.csr().indptr.len())
        .find(|&r| other.csr().indptr[r] - other.csr().indptr[r - 1] >= 2)
        .unwrap();
    let k = other.csr().indptr[row - 1] as usize;
    common::edit_csr(&mut other, |csr| {
        csr.probs[k] -= 0.01;
        csr.probs[k + 1] += 0.01;
    });
    let error = gpu.vjp(&problem, &other, &options, &cot, None).unwrap_err();
    assert!(
        error.to_string().contains("not the grid batch's"),
        "{error}"
    );
    let per_action = per_action_reward(&mdp, 53);
    let error = gpu
        .vjp(&problem, &per_action, &options, &cot, None)
        .unwrap_err();
    assert!(
        error.to_string().contains("depends on the action"),
        "{error}"
    );
    let v = fixed_point(&mdp, &options);
    let error = gpu
        .vjp(&problem, &mdp, &options, &cot, Some(&v[1..]))
        .unwrap_err();
    assert!(error.to_string().contains("values, not the"), "{error}");
}

/// A batch whose arrays exceed one binding runs in chunks of whole tasks (here 2 of 5 tasks
/// each under a 40,000-byte binding limit; the rows of one task take 117 x 9 x 16 = 16,848
/// bytes): the same gradient within the f32 tolerance, the transitions' summed over the
/// chunks; a task that does not fit alone is refused, naming what.
#[test]
fn a_grid_batch_over_the_binding_limit_runs_in_chunks() {
    let limit = |bytes: u64| softvi::EngineOptions {
        max_binding_bytes: Some(bytes),
        ..Default::default()
    };
    let Some(mut small) = common::small_engine(limit(40_000)) else {
        return;
    };
    let (problem, mdp) = world((9, 13, 5), Connectivity::Eight, true, 0.2, 61);
    for options in [
        infinite(0.5, Backup::Optimistic),
        finite(0.5, 7, Backup::Expected),
    ] {
        let all = matches!(options.horizon, Horizon::Finite(_));
        let cot = random_cotangents(&mdp, 7, all, "vqp", 62);
        let want = mdp_vjp_cpu(&mdp, &options, &cot).unwrap();
        let got = small.vjp(&problem, &mdp, &options, &cot, None).unwrap();
        let label = format!("chunked, {:?}", options.horizon);
        let gap = assert_vjp_close(&got, &want, GPU_TOL, &label);
        eprintln!("{label}: worst gap {gap:.2e}");
    }
    let mut one = common::small_engine(limit(10_000)).unwrap();
    let cot = random_cotangents(&mdp, 1, false, "v", 63);
    let error = one
        .vjp(&problem, &mdp, &infinite(0.5, Backup::Expected), &cot, None)
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("the grid VJP's arrays of one task"),
        "{error}"
    );
}
