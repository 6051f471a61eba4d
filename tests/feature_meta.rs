//! Meta-RL as task inference: the posterior update (`observe` in
//! `shaders/task_posterior.wgsl` and its CPU twin) against a posterior computed here from its
//! definition, GPU vs CPU, and the three agents on the sparse-goal world (goals on a half
//! ring, reward only at the goal): the oracle bounds the others, and posterior sampling
//! reaches the oracle while the prior-only agent does not.

mod common;

use common::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use softvi::engine::cpu::task_posterior::{normalize, observe};
use softvi::engine::gpu::MetaPosterior;
use softvi::engine::layout::{IMPOSSIBLE, NOT_TERMINAL, ObservedStep, TaskEvidence};
use softvi::meta::{MetaOptions, MetaReport, PosteriorDevice, meta_rl};
use softvi::world::grid_mdp::GridMdp;
use softvi::{
    ActionSet, Connectivity, CpuReference, Grid, GridProblem, GridTask, Horizon, MdpSolver,
    MoveCost, Outputs, SolveOptions, TabularMdp, keep_going,
};

/// `p(z | observations)` from its definition, in f64: the prior times, per observed step,
/// [termination matches z's terminal states] x (exact) [the reward is z's reward, within the
/// relative tolerance 1e-6] or (Gaussian) the normal density of the reward's gap, normalised.
fn posterior_by_definition(
    mdp: &TabularMdp,
    prior: &[f64],
    steps: &[ObservedStep],
    noise: Option<f64>,
) -> Vec<f64> {
    let (s_n, a_n) = (mdp.states, mdp.actions);
    let mut weight: Vec<f64> = prior.to_vec();
    for (z, w) in weight.iter_mut().enumerate() {
        for o in steps.iter().filter(|o| o.state != u32::MAX) {
            let next = z * s_n + o.next as usize;
            if mdp.terminal[next] != (o.terminated == 1) {
                *w = 0.0;
                continue;
            }
            let end = if mdp.terminal[next] {
                mdp.terminal_value[next]
            } else {
                0.0
            };
            let expected = mdp.reward[(z * s_n + o.state as usize) * a_n + o.action as usize] + end;
            let gap = o.reward as f64 - expected;
            *w *= match noise {
                Some(sigma) => {
                    (-0.5 * (gap / sigma).powi(2)).exp()
                        / (sigma * (2.0 * std::f64::consts::PI).sqrt())
                }
                None if gap.abs() <= 1e-6 * expected.abs().max(1.0) => 1.0,
                None => 0.0,
            };
        }
    }
    let total: f64 = weight.iter().sum();
    weight.iter().map(|w| w / total).collect()
}

/// Random observed episodes of `runs` runs, each generated under its true task `run % B`:
/// random (s, a, s') with that task's termination and reward (plus noise).
fn random_episodes(
    mdp: &TabularMdp,
    runs: usize,
    steps: usize,
    noise: Option<f64>,
    rng: &mut StdRng,
) -> Vec<ObservedStep> {
    let (s_n, a_n, b) = (mdp.states, mdp.actions, mdp.tasks);
    let mut out = vec![ObservedStep::NONE; runs * steps];
    for run in 0..runs {
        let truth = run % b;
        // Episodes of different lengths: padding must end a run's steps.
        let length = 1 + run % steps;
        for t in 0..length {
            let (s, a, next) = (
                rng.random_range(0..s_n),
                rng.random_range(0..a_n),
                rng.random_range(0..s_n),
            );
            let ends = mdp.terminal[truth * s_n + next];
            let reward = mdp.reward[(truth * s_n + s) * a_n + a]
                + if ends {
                    mdp.terminal_value[truth * s_n + next]
                } else {
                    0.0
                };
            let u: f64 = rng.random();
            let v: f64 = rng.random();
            let gauss = (-2.0 * (1.0 - u).ln()).sqrt() * (std::f64::consts::TAU * v).cos();
            out[run * steps + t] = ObservedStep {
                state: s as u32,
                action: a as u32,
                next: next as u32,
                terminated: ends as u32,
                reward: (reward + noise.map_or(0.0, |n| n * gauss)) as f32,
            };
            if ends {
                break;
            }
        }
    }
    out
}

/// Two episodes observed by 37 runs over 5 tasks of a random MDP with terminal states: the
/// CPU twin and the GPU kernel (the joint kept on the device between episodes) equal the
/// posterior from its definition, for exact and noisy rewards.
#[test]
fn the_posterior_update_equals_its_definition() {
    let mut mdp = random_mdp(11, 3, 5, true, 17);
    // Rewards on a coarse grid so that distinct tasks' rewards differ by far more than the
    // exact model's tolerance; terminal values that differ by task.
    for r in &mut mdp.reward {
        *r = (*r * 4.0).round() / 4.0;
    }
    for (i, v) in mdp.terminal_value.iter_mut().enumerate() {
        *v = (i % 3) as f64;
    }
    let (runs, steps) = (37, 6);
    let prior = [0.1, 0.3, 0.2, 0.25, 0.15];
    let log_prior: Vec<f32> = prior.iter().map(|&p: &f64| p.ln() as f32).collect();
    for noise in [None, Some(0.7)] {
        let evidence = TaskEvidence::new(&mdp, noise);
        assert!(evidence.terminal.iter().any(|&t| t > NOT_TERMINAL));
        let mut rng = StdRng::seed_from_u64(3);
        let episodes = [
            random_episodes(&mdp, runs, steps, noise, &mut rng),
            random_episodes(&mdp, runs, steps, noise, &mut rng),
        ];
        let mut joint: Vec<f64> = log_prior.repeat(runs).iter().map(|&x| x as f64).collect();
        let mut gpu = gpu().map(|ctx| {
            MetaPosterior::new(ctx, &evidence, runs, steps, &log_prior.repeat(runs)).unwrap()
        });
        for k in 0..2 {
            observe(&evidence, &episodes[k], steps, &mut joint);
            let cpu = normalize(&joint, mdp.tasks);
            let on_gpu = gpu.as_mut().map(|g| g.observe(&episodes[k]).unwrap());
            let mut informative = 0;
            for run in 0..runs {
                let seen: Vec<ObservedStep> = episodes[..=k]
                    .iter()
                    .flat_map(|e| e[run * steps..(run + 1) * steps].to_vec())
                    .collect();
                let want = posterior_by_definition(&mdp, &prior, &seen, noise);
                informative += usize::from(want.iter().any(|&p| (p - 0.2).abs() > 0.05));
                let row = run * mdp.tasks..(run + 1) * mdp.tasks;
                // f32 posteriors of f64 (twin) or f32 (kernel) log sums: 1e-5 absolute on
                // probabilities (the Gaussian terms are up to ~50 in log space, whose f32
                // rounding is ~3e-6 relative).
                for (z, &w) in want.iter().enumerate() {
                    let tag = format!("noise {noise:?}, episode {k}, run {run}, task {z}");
                    assert!((cpu[row.start + z] as f64 - w).abs() < 1e-5, "CPU {tag}");
                    if let Some(g) = &on_gpu {
                        assert!((g[row.start + z] as f64 - w).abs() < 1e-5, "GPU {tag}");
                    }
                }
            }
            assert!(informative > runs / 2, "the episodes carry evidence");
        }
        if let Some(g) = gpu.as_mut() {
            let joint_gpu = g.joint().unwrap();
            for (a, b) in joint_gpu.iter().zip(&joint) {
                let both_impossible = *a <= IMPOSSIBLE && *b <= IMPOSSIBLE as f64;
                assert!(both_impossible || (*a as f64 - b).abs() < 1e-3 * b.abs().max(1.0));
            }
        }
    }
}

/// The sparse-goal world of docs/qlearn-and-meta-rl.md: a 15 x 9 open grid, the start at the bottom centre,
/// seven goals on a half ring of radius 6 (`tests/data/half_ring*`), no step cost, reward 1
/// on reaching the goal (its terminal value).
fn half_ring() -> (TabularMdp, Vec<f32>) {
    let grid = Grid::load_movingai(&data_dir().join("half_ring.map")).unwrap();
    let goals_text = std::fs::read_to_string(data_dir().join("half_ring_goals.txt")).unwrap();
    let tasks: Vec<GridTask> = goals_text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let xy: Vec<usize> = l.split_whitespace().map(|v| v.parse().unwrap()).collect();
            GridTask {
                goals: vec![xy[1] * grid.width + xy[0]],
                reward: None,
            }
        })
        .collect();
    assert_eq!(tasks.len(), 7);
    let start = 8 * grid.width + 7;
    let problem = GridProblem {
        grid,
        actions: ActionSet {
            connectivity: Connectivity::Eight,
            stay: false,
        },
        slip: 0.0,
        move_cost: MoveCost {
            orthogonal: 0.0,
            diagonal: 0.0,
            stay: 0.0,
        },
        tasks,
    };
    let mut mdp = GridMdp::new(&problem, Some(&[start])).unwrap().mdp;
    for (v, &t) in mdp.terminal_value.iter_mut().zip(&mdp.terminal) {
        if t {
            *v = 1.0;
        }
    }
    // Discounting makes the soft-optimal policy head for its goal (alpha small enough that
    // the entropy, at most alpha ln 8 / (1 - gamma) = 0.2, is worth less than the goal).
    let options = SolveOptions {
        alpha: 0.01,
        gamma: 0.9,
        horizon: Horizon::Infinite {
            tol: 1e-6,
            max_iters: 10_000,
        },
        ..SolveOptions::default()
    };
    let policy = CpuReference
        .solve_mdp(&mdp, &options, Outputs::default(), &mut keep_going)
        .unwrap()
        .solution
        .policy
        .unwrap();
    (mdp, policy)
}

fn run_half_ring(device: PosteriorDevice, noise: Option<f64>) -> MetaReport {
    let (mdp, policy) = half_ring();
    let options = MetaOptions {
        episodes: 10,
        steps: 15,
        trials: 30,
        seed: 5,
        eval_tasks: (0..7).collect(),
        prior: vec![1.0; 7],
        reward_noise: noise,
    };
    meta_rl(&mdp, &policy, 1, &options, device).unwrap()
}

/// On the sparse-goal world (7 goals x 30 trials = 210 runs, 10 episodes of 15 steps): the
/// oracle reaches its goal every episode, is an upper bound on both other agents within
/// noise (3 standard errors of the difference) at every episode, posterior sampling's last
/// episode is within 10% of the oracle's while the prior-only agent stays near its first
/// episode, and the posterior mass on the true task grows to ~1.
#[test]
fn posterior_sampling_approaches_the_oracle_on_the_sparse_goal_world() {
    let report = run_half_ring(PosteriorDevice::Cpu, None);
    assert_eq!(report.runs, 210);
    let (ps, oracle, prior) = (
        &report.posterior_sampling,
        &report.oracle,
        &report.prior_only,
    );
    eprintln!("posterior sampling {:?}", ps.mean);
    eprintln!("oracle             {:?}", oracle.mean);
    eprintln!("prior only         {:?}", prior.mean);
    eprintln!("mass on z*         {:?}", report.mass_on_true_task.mean);
    for k in 0..10 {
        assert!(
            oracle.mean[k] > 0.99,
            "the oracle reaches its goal: {}",
            oracle.mean[k]
        );
        for (name, other) in [("posterior sampling", ps), ("prior only", prior)] {
            let noise = (other.standard_error[k].powi(2) + oracle.standard_error[k].powi(2)).sqrt();
            assert!(
                other.mean[k] <= oracle.mean[k] + 3.0 * noise,
                "{name}, episode {k}"
            );
        }
    }
    assert!(
        ps.mean[9] >= 0.9 * oracle.mean[9],
        "last episode {} vs {}",
        ps.mean[9],
        oracle.mean[9]
    );
    assert!(
        ps.mean[0] < 0.6,
        "the first episode knows nothing: {}",
        ps.mean[0]
    );
    // The prior-only agent stays flat: its last episode within 4 standard errors of its first.
    let flat = 4.0 * (prior.standard_error[0].powi(2) + prior.standard_error[9].powi(2)).sqrt();
    assert!((prior.mean[9] - prior.mean[0]).abs() < flat);
    assert!(prior.mean[9] < 0.6);
    assert!(report.mass_on_true_task.mean[9] > 0.95);
}

/// The whole evaluation with the posteriors on the GPU equals the CPU twin's: the exact
/// model's posteriors are uniform over the tasks still possible, the same in f32 and f64, so
/// every draw and every figure is the same; with noisy rewards the posteriors differ by f32
/// rounding, and the curves agree within a few percent.
#[test]
fn gpu_and_cpu_posteriors_give_the_same_evaluation() {
    let Some(ctx) = gpu() else {
        return;
    };
    let cpu = run_half_ring(PosteriorDevice::Cpu, None);
    let on_gpu = run_half_ring(PosteriorDevice::Gpu(ctx), None);
    assert_eq!(cpu.posterior_sampling, on_gpu.posterior_sampling);
    for (a, b) in cpu
        .mass_on_true_task
        .mean
        .iter()
        .zip(&on_gpu.mass_on_true_task.mean)
    {
        assert!((a - b).abs() < 1e-6);
    }
    let cpu = run_half_ring(PosteriorDevice::Cpu, Some(0.3));
    let on_gpu = run_half_ring(PosteriorDevice::Gpu(ctx), Some(0.3));
    for (a, b) in cpu
        .mass_on_true_task
        .mean
        .iter()
        .zip(&on_gpu.mass_on_true_task.mean)
    {
        assert!((a - b).abs() < 0.03, "mass on z*: {a} vs {b}");
    }
}
