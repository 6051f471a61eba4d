//! Sampled trajectories (`sample::sample`) against the occupancy of the same policy: the
//! empirical visitation of many episodes matches D_t (finite horizon) and the discounted
//! occupancy (infinite horizon) within 5 standard errors, on the CPU reference's and the
//! GPU's policy; one seed reproduces, another differs; episodes stop at terminals.

mod common;

use softvi::sample::{ENDED, sample};
use softvi::{Horizon, MdpEngine, MdpSolution, Outputs, SolveOptions, solve_mdp_cpu};

/// Solves on the CPU reference and, when an adapter exists, on the GPU.
fn solves(mdp: &softvi::TabularMdp, o: &SolveOptions, outputs: Outputs) -> Vec<MdpSolution> {
    let mut all = vec![solve_mdp_cpu(mdp, o, outputs).unwrap()];
    if let Some(ctx) = common::gpu() {
        all.push(MdpEngine::new(ctx).unwrap().solve(mdp, o, outputs).unwrap());
    }
    all
}

#[test]
fn finite_horizon_visits_match_the_occupancy() {
    let mdp = common::random_mdp(40, 3, 2, true, 8);
    let (horizon, episodes) = (6, 20_000);
    let o = SolveOptions {
        alpha: 0.7,
        gamma: 1.0,
        horizon: Horizon::Finite(horizon as u32),
        ..SolveOptions::default()
    };
    let outputs = Outputs {
        all_steps: true,
        occupancy: true,
        ..Outputs::default()
    };
    for solved in solves(&mdp, &o, outputs) {
        let policy = solved.steps.as_ref().unwrap().policy.as_ref().unwrap();
        let samples = sample(&mdp, policy, horizon, episodes, horizon, 3).unwrap();
        let again = sample(&mdp, policy, horizon, episodes, horizon, 3).unwrap();
        assert_eq!(samples, again, "one seed, one result");
        assert_ne!(
            samples,
            sample(&mdp, policy, horizon, episodes, horizon, 4).unwrap()
        );
        let d = &solved.occupancy.as_ref().unwrap().values; // [task][t][state]
        let (s_n, n) = (mdp.states, episodes as f64);
        let mut ended = 0;
        for task in 0..mdp.tasks {
            for t in 0..=horizon {
                let mut count = vec![0.0; s_n];
                for e in 0..episodes {
                    let s = samples.states[(task * episodes + e) * (horizon + 1) + t];
                    if s != ENDED {
                        count[s as usize] += 1.0;
                    }
                }
                for s in 0..s_n {
                    let p = d[(task * (horizon + 1) + t) * s_n + s] as f64;
                    let freq = count[s] / n;
                    let bound = 5.0 * (p * (1.0 - p) / n).sqrt() + 1e-3;
                    assert!(
                        (freq - p).abs() <= bound,
                        "task {task} t {t} state {s}: visited {freq}, D_t {p}"
                    );
                }
            }
            // An episode that reaches its terminal state stops there.
            let terminal = (7 * task + 3) % s_n;
            for e in 0..episodes {
                let row = task * episodes + e;
                let states = &samples.states[row * (horizon + 1)..(row + 1) * (horizon + 1)];
                let actions = &samples.actions[row * horizon..(row + 1) * horizon];
                if let Some(t) = states.iter().position(|&s| s == terminal as i32) {
                    assert!(states[t + 1..].iter().all(|&s| s == ENDED));
                    assert!(actions[t..].iter().all(|&a| a == ENDED));
                    ended += 1;
                }
            }
        }
        assert!(ended > 100, "the terminals are reached ({ended} episodes)");
    }
}

#[test]
fn discounted_visits_match_the_discounted_occupancy() {
    let mdp = common::random_mdp(30, 4, 1, true, 12);
    let (gamma, steps, episodes) = (0.8, 70, 20_000);
    let o = SolveOptions {
        alpha: 1.5,
        gamma,
        horizon: Horizon::Infinite {
            tol: 1e-7,
            max_iters: 10_000,
        },
        ..SolveOptions::default()
    };
    let outputs = Outputs {
        all_steps: false,
        occupancy: true,
        ..Outputs::default()
    };
    for solved in solves(&mdp, &o, outputs) {
        let policy = solved.solution.policy.as_ref().unwrap();
        let samples = sample(&mdp, policy, 1, episodes, steps, 9).unwrap();
        let d = &solved.occupancy.as_ref().unwrap().values;
        // Per state: the mean over episodes of sum_t gamma^t [s_t = s] (gamma^70 = 2e-7).
        for (s, &expected) in d.iter().enumerate().take(mdp.states) {
            let per_episode: Vec<f64> = (0..episodes)
                .map(|e| {
                    let states = &samples.states[e * (steps + 1)..(e + 1) * (steps + 1)];
                    states
                        .iter()
                        .enumerate()
                        .filter(|&(_, &x)| x == s as i32)
                        .map(|(t, _)| gamma.powi(t as i32))
                        .sum()
                })
                .collect();
            let mean = per_episode.iter().sum::<f64>() / episodes as f64;
            let var =
                per_episode.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (episodes - 1) as f64;
            let bound = 5.0 * (var / episodes as f64).sqrt() + 1e-3;
            let expected = expected as f64;
            assert!(
                (mean - expected).abs() <= bound,
                "state {s}: discounted visits {mean}, occupancy {expected} (bound {bound})"
            );
        }
    }
}

/// A policy whose rows are not distributions is refused by `sample`, `posterior_inputs` and
/// `meta_rl` alike, naming the row, as `render` refuses it (before, sampling renormalised a
/// row summing to 1.5, clipped a negative entry and took the last action past an inf). The
/// solve's own policy (rows summing to 1 within f32 rounding, NaN on terminal rows) passes.
#[test]
fn policies_that_are_not_distributions_are_refused() {
    use softvi::infer::{Observation, posterior_inputs};
    use softvi::meta::{MetaOptions, PosteriorDevice, meta_rl};
    let (s_n, a_n, b_n) = (9, 3, 2);
    let mdp = common::random_mdp(s_n, a_n, b_n, true, 21);
    let o = SolveOptions {
        alpha: 0.7,
        gamma: 0.9,
        ..SolveOptions::default()
    };
    let policy = solve_mdp_cpu(&mdp, &o, Outputs::default())
        .unwrap()
        .solution
        .policy
        .unwrap();
    // A row with a policy (not a terminal state's NaN row), in task 1.
    let row = (s_n..2 * s_n).find(|&s| !policy[s * a_n].is_nan()).unwrap();
    let state = row - s_n;
    let trajectory: Vec<Observation> = (0..2)
        .map(|line| Observation {
            state,
            label: format!("state {state}"),
            action: None,
            line: line + 1,
        })
        .collect();
    let options = MetaOptions {
        episodes: 2,
        steps: 3,
        trials: 2,
        seed: 1,
        eval_tasks: vec![0, 1],
        prior: vec![1.0; b_n],
        reward_noise: Some(0.5),
    };
    let check = |p: &[f32]| -> Vec<String> {
        vec![
            sample(&mdp, p, 1, 4, 5, 0).err().map(|e| e.to_string()),
            posterior_inputs(&mdp, p, 1, &trajectory, &options.prior)
                .err()
                .map(|e| e.to_string()),
            meta_rl(&mdp, p, 1, &options, PosteriorDevice::Cpu)
                .err()
                .map(|e| e.to_string()),
        ]
        .into_iter()
        .map(|e| e.unwrap_or_default())
        .collect()
    };
    assert_eq!(
        check(&policy),
        vec![String::new(); 3],
        "the solve's own policy"
    );
    let at = format!("[task 1, state {state}]");
    for (what, change, expected) in [
        ("x1.5", [1.5f32, 1.5, 1.5], ", not 1 (tolerance 0.001)"),
        ("negative", [-0.25, 1.0, 1.0], "pi(action 0) = -0.25"),
        ("inf", [1.0, 1.0, f32::INFINITY], "pi(action 2) = inf"),
    ] {
        let mut bad = policy.clone();
        for a in 0..a_n {
            let x = &mut bad[row * a_n + a];
            *x = if what == "x1.5" {
                *x * change[a]
            } else {
                *x * change[a].min(1.0)
            };
            if change[a] < 0.0 || change[a].is_infinite() {
                *x = change[a];
            }
        }
        for (function, err) in ["sample", "posterior_inputs", "meta_rl"]
            .iter()
            .zip(check(&bad))
        {
            assert!(
                err.contains(&at) && err.contains(expected),
                "{what} in {function}: {err:?}"
            );
        }
    }
}
