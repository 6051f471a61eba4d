//! MaxEnt IRL (`irl::learn`): demos sampled from a known reward in the feature span are
//! explained by the learned reward as well as by the true one (held-out log-likelihood within
//! 1%), the learned model's feature expectations match the demos', and one gradient equals a
//! dense backward + forward computation written here, on the CPU reference and the GPU.

// Dense loops written like the formulas they check.
#![allow(clippy::needless_range_loop)]

mod common;

use softvi::irl::{
    Demos, IrlOptions, demo_feature_expectations, demo_log_likelihood, gradient, learn,
    linear_reward_mdp,
};
use softvi::sample::sample;
use softvi::world::grid_mdp::GridMdp;
use softvi::{
    ActionSet, Connectivity, CpuReference, GpuSolver, Grid, GridKernelsOnMdp, GridProblem,
    GridTask, Horizon, MdpSolution, MdpSolver, MoveCost, Outputs, SolveOptions, TabularMdp,
    solve_mdp_cpu,
};

const HORIZON: usize = 12;

/// An 8 x 8 open grid, 4-connected with STAY, slip 0.1, no move costs, goal (7, 7); features
/// [x / 7, y / 7, inside the swamp x in 2..5, y in 3..6].
fn world() -> (GridMdp, Vec<f32>) {
    let world = GridMdp::new(&grid_problem(), None).unwrap();
    let features = world
        .cell_of_state
        .iter()
        .flat_map(|&c| {
            let (x, y) = ((c % 8) as f32, (c / 8) as f32);
            let swamp = ((2.0..5.0).contains(&x) && (3.0..6.0).contains(&y)) as u8 as f32;
            [x / 7.0, y / 7.0, swamp]
        })
        .collect();
    (world, features)
}

fn grid_problem() -> GridProblem {
    GridProblem {
        grid: Grid::open(8, 8),
        actions: ActionSet {
            connectivity: Connectivity::Four,
            stay: true,
        },
        slip: 0.1,
        move_cost: MoveCost {
            orthogonal: 0.0,
            diagonal: 0.0,
            stay: 0.0,
        },
        tasks: vec![GridTask {
            goals: vec![63],
            reward: None,
        }],
    }
}

fn options() -> SolveOptions {
    SolveOptions {
        alpha: 1.0,
        gamma: 1.0,
        horizon: Horizon::Finite(HORIZON as u32),
        ..SolveOptions::default()
    }
}

/// `episodes` demos per set from the true weights `theta` `[set][feature]`.
fn demos(world: &TabularMdp, features: &[f32], theta: &[f64], episodes: usize, seed: u64) -> Demos {
    let sets = theta.len() / 3;
    // The true MDP: the world's start (uniform), the true rewards.
    let truth = linear_reward_mdp(world, features, sets, theta).unwrap();
    let o = SolveOptions { ..options() };
    let solved = solve_mdp_cpu(
        &truth,
        &o,
        Outputs {
            all_steps: true,
            occupancy: false,
            ..Outputs::default()
        },
    )
    .unwrap();
    let policy = solved.steps.unwrap().policy.unwrap();
    let s = sample(&truth, &policy, HORIZON, episodes, HORIZON, seed).unwrap();
    Demos {
        sets,
        episodes,
        steps: HORIZON,
        states: s.states,
        actions: Some(s.actions),
    }
}

/// The grid kernels on the test world's MDPs, owning what [`GridKernelsOnMdp`] borrows.
struct OnGrid {
    solver: GpuSolver,
    world: GridMdp,
    template: GridProblem,
}

impl MdpSolver for OnGrid {
    fn label(&self) -> String {
        "grid kernels".into()
    }

    fn solve_mdp(
        &mut self,
        mdp: &TabularMdp,
        options: &SolveOptions,
        outputs: Outputs,
        progress: &mut softvi::OnProgress<'_>,
    ) -> softvi::Result<MdpSolution> {
        GridKernelsOnMdp {
            solver: &mut self.solver,
            world: &self.world,
            template: &self.template,
        }
        .solve_mdp(mdp, options, outputs, progress)
    }
}

/// The CPU reference, and on the GPU the CSR kernels and the grid kernels.
fn solvers() -> Vec<(&'static str, Box<dyn MdpSolver>)> {
    let mut all: Vec<(&str, Box<dyn MdpSolver>)> = vec![("cpu", Box::new(CpuReference))];
    if let Some(ctx) = common::gpu() {
        all.push(("gpu", Box::new(GpuSolver::new(ctx.clone()))));
        let (world, _) = world();
        all.push((
            "gpu-grid",
            Box::new(OnGrid {
                solver: GpuSolver::new(ctx.clone()),
                world,
                template: grid_problem(),
            }),
        ));
    }
    all
}

#[test]
fn learned_reward_explains_held_out_demos() {
    let (world, features) = world();
    let truth = [0.8, -0.5, -1.5, -0.6, 0.9, 0.7];
    let train = demos(&world.mdp, &features, &truth, 3000, 1);
    let held_out = demos(&world.mdp, &features, &truth, 3000, 2);
    let irl = IrlOptions {
        solve: options(),
        learning_rate: 0.05,
        iters: 400,
        tol: 1e-3,
    };
    for (name, mut solver) in solvers() {
        let result = learn(
            &world.mdp,
            &features,
            &train,
            &irl,
            &mut *solver,
            &mut |_, _| std::ops::ControlFlow::Continue(()),
        )
        .unwrap();
        let last = result.history.last().unwrap();
        eprintln!(
            "{name}: {} iterations, gradient norms {:?}, theta {:?}",
            result.history.len(),
            last.gradient_norm,
            result.theta
        );
        assert!(
            result.converged,
            "{name}: gradient norms {:?}",
            last.gradient_norm
        );
        // The log-likelihood rises.
        let first = &result.history[0].log_likelihood;
        for m in 0..2 {
            assert!(last.log_likelihood[m] > first[m], "{name}: set {m}");
            // Feature matching: the model's expectations are the demos' (|grad| <= tol).
            for k in 0..3 {
                let (d, model) = (
                    result.demo_features[m * 3 + k],
                    result.model_features[m * 3 + k],
                );
                assert!(
                    (d - model).abs() <= 1e-3,
                    "{name}: set {m} feature {k}: demos {d}, model {model}"
                );
            }
        }
        // Held-out demos: the learned reward's policy explains them within 1% of the truth's.
        let mut score = |theta: &[f64]| {
            let (mdp, solved, _, _) = gradient(
                &world.mdp,
                &features,
                &held_out,
                &[0.0; 6],
                theta,
                &options(),
                &mut *solver,
            )
            .unwrap();
            demo_log_likelihood(&mdp, &options(), &solved, &held_out).unwrap()
        };
        let (learned, true_ll) = (score(&result.theta), score(&truth));
        for m in 0..2 {
            eprintln!(
                "{name}: set {m}: held-out log-likelihood learned {:.4}, true {:.4}",
                learned[m], true_ll[m]
            );
            assert!(
                learned[m] >= true_ll[m] - 0.01 * true_ll[m].abs(),
                "{name}: set {m}: learned {} vs true {}",
                learned[m],
                true_ll[m]
            );
        }
    }
}

/// Dense finite-horizon soft VI (expected backup, gamma = 1) and forward pass for one set,
/// written from the contract; returns `mu_model`.
fn dense_model_features(mdp: &TabularMdp, features: &[f32], m: usize) -> Vec<f64> {
    let (s_n, a_n) = (mdp.states, mdp.actions);
    let mut p = vec![0.0; s_n * a_n * s_n];
    for row in 0..s_n * a_n {
        for k in mdp.csr().indptr[row] as usize..mdp.csr().indptr[row + 1] as usize {
            p[row * s_n + mdp.csr().indices[k] as usize] += mdp.csr().probs[k];
        }
    }
    let terminal = &mdp.terminal[m * s_n..(m + 1) * s_n];
    let r = |s: usize, a: usize| mdp.reward[(m * s_n + s) * a_n + a];
    // Backward: V_T = 0, pi_t from V_{t+1}.
    let mut v = vec![0.0; s_n];
    let mut policies = Vec::new();
    for _ in 0..HORIZON {
        let mut next = vec![0.0; s_n];
        let mut pi = vec![0.0; s_n * a_n];
        for s in 0..s_n {
            if terminal[s] {
                continue;
            }
            let q: Vec<f64> = (0..a_n)
                .map(|a| {
                    r(s, a)
                        + (0..s_n)
                            .map(|j| p[(s * a_n + a) * s_n + j] * v[j])
                            .sum::<f64>()
                })
                .collect();
            next[s] = q.iter().map(|x| x.exp()).sum::<f64>().ln();
            for a in 0..a_n {
                pi[s * a_n + a] = (q[a] - next[s]).exp();
            }
        }
        policies.push(pi);
        v = next;
    }
    policies.reverse(); // pi_0 .. pi_{T-1}
    let mut d: Vec<f64> = mdp.initial[m * s_n..(m + 1) * s_n].to_vec();
    let k_n = features.len() / s_n;
    let mut mu = vec![0.0; k_n];
    for t in 0..=HORIZON {
        for s in 0..s_n {
            for k in 0..k_n {
                mu[k] += d[s] * features[s * k_n + k] as f64;
            }
        }
        if t == HORIZON {
            break;
        }
        let mut next = vec![0.0; s_n];
        for s in 0..s_n {
            if terminal[s] {
                continue;
            }
            for a in 0..a_n {
                for j in 0..s_n {
                    next[j] += d[s] * policies[t][s * a_n + a] * p[(s * a_n + a) * s_n + j];
                }
            }
        }
        d = next;
    }
    mu
}

#[test]
fn one_gradient_matches_a_dense_computation() {
    let (world, features) = world();
    let train = demos(
        &world.mdp,
        &features,
        &[0.3, 0.2, -0.4, 0.0, 0.0, 0.0],
        200,
        5,
    );
    let theta = [0.2, -0.1, 0.3, -0.4, 0.5, 0.1];
    let demo_features = demo_feature_expectations(&features, world.mdp.states, &train, 1.0);
    for (name, mut solver) in solvers() {
        let (mdp, _, model, grad) = gradient(
            &world.mdp,
            &features,
            &train,
            &demo_features,
            &theta,
            &options(),
            &mut *solver,
        )
        .unwrap();
        for m in 0..2 {
            let dense = dense_model_features(&mdp, &features, m);
            for k in 0..3 {
                let i = m * 3 + k;
                // f64 on the CPU (occupancy stored as f32: 1e-7); f32 sweeps and sums of 13
                // steps of occupancy on the GPU.
                let tol = if name == "cpu" { 1e-7 } else { 2e-5 };
                assert!(
                    (model[i] - dense[k]).abs() <= tol * dense[k].abs().max(1.0),
                    "{name}: mu[{m}][{k}] {} vs dense {}",
                    model[i],
                    dense[k]
                );
                assert!(
                    (grad[i] - (demo_features[i] - dense[k])).abs()
                        <= tol * dense[k].abs().max(1.0)
                );
            }
        }
    }
}

/// Discounted IRL (infinite horizon, gamma 0.9): demos long enough that gamma^T is negligible;
/// the learned model matches the demos' discounted feature expectations and its reward explains
/// held-out demos as well as the true one, on the CPU reference and the GPU's CSR kernels.
#[test]
fn discounted_irl_matches_discounted_feature_expectations() {
    let (world, features) = world();
    let truth = [0.6, -0.4, -1.0];
    let gamma = 0.9;
    let steps = 80; // 0.9^80 = 2e-4
    let o = SolveOptions {
        alpha: 1.0,
        gamma,
        horizon: Horizon::Infinite {
            tol: 1e-7,
            max_iters: 10_000,
        },
        ..SolveOptions::default()
    };
    // Demos from the true reward's stationary policy.
    let true_mdp = linear_reward_mdp(&world.mdp, &features, 1, &truth).unwrap();
    let solved = solve_mdp_cpu(&true_mdp, &o, Outputs::default()).unwrap();
    let policy = solved.solution.policy.unwrap();
    let draw = |seed| {
        let s = sample(&true_mdp, &policy, 1, 3000, steps, seed).unwrap();
        Demos {
            sets: 1,
            episodes: 3000,
            steps,
            states: s.states,
            actions: Some(s.actions),
        }
    };
    let (train, held_out) = (draw(21), draw(22));
    let irl = IrlOptions {
        solve: o,
        learning_rate: 0.05,
        iters: 400,
        tol: 2e-3,
    };
    for (name, mut solver) in solvers().into_iter().filter(|(n, _)| *n != "gpu-grid") {
        let result = learn(
            &world.mdp,
            &features,
            &train,
            &irl,
            &mut *solver,
            &mut |_, _| std::ops::ControlFlow::Continue(()),
        )
        .unwrap();
        assert!(
            result.converged,
            "{name}: {:?}",
            result.history.last().unwrap().gradient_norm
        );
        for k in 0..3 {
            let (d, m) = (result.demo_features[k], result.model_features[k]);
            assert!(
                (d - m).abs() <= 2e-3,
                "{name}: feature {k}: demos {d}, model {m}"
            );
        }
        let mut score = |theta: &[f64]| {
            let (mdp, solved, _, _) = gradient(
                &world.mdp,
                &features,
                &held_out,
                &[0.0; 3],
                theta,
                &o,
                &mut *solver,
            )
            .unwrap();
            demo_log_likelihood(&mdp, &o, &solved, &held_out).unwrap()[0]
        };
        let (learned, true_ll) = (score(&result.theta), score(&truth));
        eprintln!(
            "{name}: discounted theta {:?}, held-out {learned:.4} vs true {true_ll:.4}",
            result.theta
        );
        assert!(
            learned >= true_ll - 0.01 * true_ll.abs(),
            "{name}: {learned} vs {true_ll}"
        );
    }
}

/// A progress callback that answers `Break` after the third iteration stops the learning
/// there with `Error::Cancelled`, counting the sweeps of the three solves (how Ctrl-C reaches
/// a long IRL run from Python).
#[test]
fn a_progress_callback_stops_the_learning() {
    let (world, features) = world();
    let train = demos(
        &world.mdp,
        &features,
        &[0.8, -0.5, -1.5, -0.6, 0.9, 0.7],
        200,
        1,
    );
    let irl = IrlOptions {
        solve: options(),
        learning_rate: 0.05,
        iters: 400,
        tol: 0.0,
    };
    let mut seen = 0;
    let stopped = learn(
        &world.mdp,
        &features,
        &train,
        &irl,
        &mut softvi::CpuReference,
        &mut |it, _| {
            seen = it + 1;
            if it == 2 {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        },
    );
    assert_eq!(seen, 3);
    match stopped {
        Err(softvi::Error::Cancelled { sweeps }) => assert!(sweeps > 0),
        other => panic!(
            "expected Cancelled, got {:?}",
            other.map(|r| r.history.len())
        ),
    }
}
