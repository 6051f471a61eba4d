//! The general-MDP CPU reference (`reference::mdp_backup`, `solve::solve_mdp_cpu`) against a
//! dense computation written here from the contract, brute-force enumeration of trajectories,
//! the Bellman equation at the fixed point, and the gamma = 1 exclusion of dead ends.

mod common;

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use softvi::io::npy::NpyValues;
use softvi::solve_mdp_cpu;
use softvi::world::mdp::TabularMdp;
use softvi::{Backup, Horizon, MdpEngine, MdpSolution, Method, Outputs, SolveOptions, Status};

fn array(shape: Vec<usize>, data: Vec<f64>) -> NpyValues {
    NpyValues {
        shape,
        data,
        dtype: "<f8".into(),
    }
}

/// A random dense MDP: S states, A actions, B tasks, about a third of P's entries zero,
/// rewards in [-1, 0.5], state `t` terminal for task `t` (value 0.5 t).
fn random_mdp(s: usize, a: usize, b: usize, seed: u64) -> (TabularMdp, Vec<f64>, Vec<f64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut p = vec![0.0; s * a * s];
    for row in p.chunks_exact_mut(s) {
        for x in row.iter_mut() {
            *x = if rng.random_bool(0.35) {
                0.0
            } else {
                rng.random_range(0.1..1.0)
            };
        }
        if row.iter().all(|&x| x == 0.0) {
            row[0] = 1.0;
        }
        let total: f64 = row.iter().sum();
        row.iter_mut().for_each(|x| *x /= total);
    }
    let r: Vec<f64> = (0..b * s * a)
        .map(|_| rng.random_range(-1.0..0.5))
        .collect();
    let mut terminal = vec![0.0; b * s];
    let mut terminal_value = vec![0.0; b * s];
    for t in 0..b {
        terminal[t * s + t] = 1.0;
        terminal_value[t * s + t] = 0.5 * t as f64;
    }
    let arrays = HashMap::from([
        ("P".to_owned(), array(vec![s, a, s], p.clone())),
        ("R".to_owned(), array(vec![b, s, a], r.clone())),
        ("terminal".to_owned(), array(vec![b, s], terminal)),
        (
            "terminal_value".to_owned(),
            array(vec![b, s], terminal_value),
        ),
    ]);
    (TabularMdp::from_arrays(&arrays).unwrap(), p, r)
}

/// One dense soft backup of task `t`: returns (V, Q) from the next values.
fn dense_backup(
    mdp: &TabularMdp,
    p: &[f64],
    r: &[f64],
    t: usize,
    next: &[f64],
    o: &SolveOptions,
) -> (Vec<f64>, Vec<f64>) {
    let (s_n, a_n) = (mdp.states, mdp.actions);
    let mut v = vec![0.0; s_n];
    let mut q = vec![0.0; s_n * a_n];
    for s in 0..s_n {
        if mdp.terminal[t * s_n + s] {
            v[s] = mdp.terminal_value[t * s_n + s];
            continue;
        }
        for a in 0..a_n {
            let row = &p[(s * a_n + a) * s_n..(s * a_n + a + 1) * s_n];
            let inner: f64 = match o.backup {
                Backup::Expected => {
                    o.gamma * row.iter().zip(next).map(|(pp, vv)| pp * vv).sum::<f64>()
                }
                Backup::Optimistic => {
                    o.alpha
                        * row
                            .iter()
                            .zip(next)
                            .map(|(pp, vv)| pp * (o.gamma * vv / o.alpha).exp())
                            .sum::<f64>()
                            .ln()
                }
            };
            q[s * a_n + a] = r[(t * s_n + s) * a_n + a] + inner;
        }
        let qs = &q[s * a_n..(s + 1) * a_n];
        v[s] = o.alpha * qs.iter().map(|x| (x / o.alpha).exp()).sum::<f64>().ln();
    }
    (v, q)
}

#[test]
fn finite_horizon_matches_a_dense_computation() {
    let (mdp, p, r) = random_mdp(6, 3, 2, 5);
    for alpha in [0.1, 1.0, 3.0] {
        for backup in [Backup::Expected, Backup::Optimistic] {
            let o = SolveOptions {
                alpha,
                gamma: 0.95,
                backup,
                horizon: Horizon::Finite(7),
                extrapolate: true,
                method: Method::Vi,
            };
            let solution = solve_mdp_cpu(&mdp, &o, Outputs::default())
                .unwrap()
                .solution;
            assert_eq!(solution.status, vec![Status::Horizon; 2]);
            for t in 0..2 {
                let mut next: Vec<f64> = (0..6)
                    .map(|s| {
                        if mdp.terminal[t * 6 + s] {
                            mdp.terminal_value[t * 6 + s]
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let mut q = Vec::new();
                for _ in 0..7 {
                    let (v, qq) = dense_backup(&mdp, &p, &r, t, &next, &o);
                    next = v;
                    q = qq;
                }
                for s in 0..6 {
                    let got = solution.values[t * 6 + s] as f64;
                    assert!(
                        (got - next[s]).abs() <= 1e-5 * next[s].abs().max(1.0),
                        "alpha {alpha} {backup:?} task {t} s {s}: {got} vs {}",
                        next[s]
                    );
                    if mdp.terminal[t * 6 + s] {
                        continue;
                    }
                    for a in 0..3 {
                        let pi = ((q[s * 3 + a] - next[s]) / alpha).exp();
                        let got = solution.policy.as_ref().unwrap()[(t * 6 + s) * 3 + a] as f64;
                        assert!(
                            (got - pi).abs() <= 1e-5,
                            "pi mismatch alpha {alpha} {backup:?}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn optimistic_value_is_the_log_partition_over_trajectories() {
    let (mdp, p, r) = random_mdp(4, 2, 1, 8);
    let (alpha, steps) = (0.7, 3);
    let o = SolveOptions {
        alpha,
        gamma: 1.0,
        backup: Backup::Optimistic,
        horizon: Horizon::Finite(steps),
        extrapolate: true,
        method: Method::Vi,
    };
    let solution = solve_mdp_cpu(&mdp, &o, Outputs::default())
        .unwrap()
        .solution;
    for start in 1..4 {
        // Depth-first over (action, successor) sequences: sum of prod P * exp(sum r / alpha).
        let mut stack = vec![(start, steps, 1.0f64, 0.0f64)];
        let mut z = 0.0;
        while let Some((s, left, prob, ret)) = stack.pop() {
            if mdp.terminal[s] || left == 0 {
                let end = if mdp.terminal[s] {
                    mdp.terminal_value[s]
                } else {
                    0.0
                };
                z += prob * ((ret + end) / alpha).exp();
                continue;
            }
            for a in 0..2 {
                for s2 in 0..4 {
                    let pr = p[(s * 2 + a) * 4 + s2];
                    if pr > 0.0 {
                        stack.push((s2, left - 1, prob * pr, ret + r[s * 2 + a]));
                    }
                }
            }
        }
        let truth = alpha * z.ln();
        let got = solution.values[start] as f64;
        assert!(
            (got - truth).abs() <= 1e-5 * truth.abs().max(1.0),
            "state {start}: {got} vs {truth}"
        );
    }
}

#[test]
fn infinite_horizon_satisfies_the_bellman_equation() {
    let (mdp, p, r) = random_mdp(9, 3, 2, 13);
    for backup in [Backup::Expected, Backup::Optimistic] {
        let o = SolveOptions {
            alpha: 0.5,
            gamma: 0.9,
            backup,
            horizon: Horizon::Infinite {
                tol: 1e-8,
                max_iters: 10_000,
            },
            extrapolate: true,
            method: Method::Vi,
        };
        let solution = solve_mdp_cpu(&mdp, &o, Outputs::default())
            .unwrap()
            .solution;
        assert_eq!(solution.status, vec![Status::Converged; 2]);
        for t in 0..2 {
            let v: Vec<f64> = solution.values[t * 9..(t + 1) * 9]
                .iter()
                .map(|&x| x as f64)
                .collect();
            let (tv, _) = dense_backup(&mdp, &p, &r, t, &v, &o);
            // Residual 1e-8 in f64, stored as f32: the Bellman residual is f32 rounding.
            let err = v
                .iter()
                .zip(&tv)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(err <= 1e-5, "{backup:?} task {t}: |T V - V| = {err}");
        }
    }
}

#[test]
fn dead_ends_are_excluded_when_undiscounted() {
    // State 0 terminal. State 1: action 0 reaches the terminal, action 1 goes to the dead end 2
    // with probability 0.5. State 2 loops on itself.
    let mut p = vec![0.0; 3 * 2 * 3];
    p[0] = 1.0;
    p[3] = 1.0; // s=0
    p[(2) * 3] = 1.0; // s=1, a=0 -> 0
    p[(3) * 3 + 1] = 0.5; // s=1, a=1 -> 1 or 2
    p[(3) * 3 + 2] = 0.5;
    p[(4) * 3 + 2] = 1.0; // s=2 -> 2
    p[(5) * 3 + 2] = 1.0;
    let arrays = HashMap::from([
        ("P".to_owned(), array(vec![3, 2, 3], p)),
        ("R".to_owned(), array(vec![3], vec![0.0, -1.0, -1.0])),
        ("terminal".to_owned(), array(vec![3], vec![1.0, 0.0, 0.0])),
    ]);
    let mdp = TabularMdp::from_arrays(&arrays).unwrap();
    let o = SolveOptions {
        alpha: 0.2,
        gamma: 1.0,
        backup: Backup::Expected,
        horizon: Horizon::Infinite {
            tol: 1e-9,
            max_iters: 1000,
        },
        extrapolate: true,
        method: Method::Vi,
    };
    let s = solve_mdp_cpu(&mdp, &o, Outputs::default())
        .unwrap()
        .solution;
    assert_eq!(s.unreachable, vec![1]);
    assert_eq!(s.values[2], f32::NEG_INFINITY);
    // Only action 0 has a finite Q (= -1), so V(1) = -1 and pi(0|1) = 1.
    assert!((s.values[1] + 1.0).abs() < 1e-6, "{}", s.values[1]);
    assert_eq!(s.policy.as_ref().unwrap()[2], 1.0);
    assert_eq!(s.status, vec![Status::Converged]);
    let no_terminal = HashMap::from([
        ("P".to_owned(), array(vec![1, 1, 1], vec![1.0])),
        ("R".to_owned(), array(vec![1], vec![-1.0])),
    ]);
    let err = solve_mdp_cpu(
        &TabularMdp::from_arrays(&no_terminal).unwrap(),
        &o,
        Outputs::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("needs terminal states"), "{err}");
}

/// The soft Q-values every solver returns against the dense backup above: `Q_t` of every step
/// from `V_{t+1}` (finite horizon, the recurrence run here from the terminal values) and the
/// stationary `Q = r + gamma E V` (expected) or `r + alpha log E exp(gamma V / alpha)`
/// (optimistic) from the solve's own V; and the policy and values they make,
/// `pi = exp((Q - V) / alpha)`, `V = alpha log sum_a exp(Q / alpha)`. On the CPU reference
/// and the GPU. Tolerance 1e-4 relative to max(1, |Q|): f32 storage of values up to ~10.
#[test]
fn soft_q_matches_a_dense_computation() {
    let (mdp, p, r) = random_mdp(7, 3, 2, 21);
    let (s_n, a_n) = (mdp.states, mdp.actions);
    let close = |got: f32, want: f64, what: &str| {
        assert!(
            (got as f64 - want).abs() <= 1e-4 * want.abs().max(1.0),
            "{what}: {got} vs {want}"
        );
    };
    for backup in [Backup::Expected, Backup::Optimistic] {
        for horizon in [
            Horizon::Finite(5),
            Horizon::Infinite {
                tol: 1e-6,
                max_iters: 10_000,
            },
        ] {
            let finite = matches!(horizon, Horizon::Finite(_));
            let o = SolveOptions {
                alpha: 0.5,
                gamma: 0.9,
                backup,
                horizon,
                extrapolate: true,
                method: Method::Vi,
            };
            let outputs = Outputs {
                q: true,
                all_steps: finite,
                ..Outputs::default()
            };
            let mut solved: Vec<(&str, MdpSolution)> =
                vec![("cpu", solve_mdp_cpu(&mdp, &o, outputs).unwrap())];
            if let Some(ctx) = common::gpu() {
                let gpu = MdpEngine::new(ctx)
                    .unwrap()
                    .solve(&mdp, &o, outputs)
                    .unwrap();
                solved.push(("gpu", gpu));
            }
            for (name, solved) in &solved {
                let solution = &solved.solution;
                let q = solution.q.as_ref().unwrap();
                let pi = solution.policy.as_ref().unwrap();
                for t in 0..2 {
                    let what = format!("{name} {backup:?} {horizon:?} task {t}");
                    // Q_0 (and Q_t of every step) from the recurrence, or Q from the solve's V.
                    let truth: Vec<Vec<f64>> = if finite {
                        let mut next: Vec<f64> =
                            (0..s_n).map(|s| mdp.terminal_value[t * s_n + s]).collect();
                        let mut all = Vec::new();
                        for _ in 0..5 {
                            let (v, q) = dense_backup(&mdp, &p, &r, t, &next, &o);
                            all.push(q);
                            next = v;
                        }
                        all.reverse();
                        all
                    } else {
                        let v: Vec<f64> = solution.values[t * s_n..(t + 1) * s_n]
                            .iter()
                            .map(|&x| x as f64)
                            .collect();
                        vec![dense_backup(&mdp, &p, &r, t, &v, &o).1]
                    };
                    for s in 0..s_n {
                        let row = (t * s_n + s) * a_n;
                        if mdp.terminal[t * s_n + s] {
                            assert!(q[row..row + a_n].iter().all(|x| x.is_nan()), "{what}");
                            continue;
                        }
                        let v = solution.values[t * s_n + s] as f64;
                        let qs = &q[row..row + a_n];
                        let soft_max = o.alpha
                            * qs.iter()
                                .map(|&x| (x as f64 / o.alpha).exp())
                                .sum::<f64>()
                                .ln();
                        close(
                            v as f32,
                            soft_max,
                            &format!("{what} s {s}: V vs soft max Q"),
                        );
                        for a in 0..a_n {
                            close(qs[a], truth[0][s * a_n + a], &format!("{what} Q({s},{a})"));
                            let want = ((qs[a] as f64 - v) / o.alpha).exp();
                            assert!(
                                (pi[row + a] as f64 - want).abs() <= 1e-4,
                                "{what} pi({a}|{s}): {} vs {want}",
                                pi[row + a]
                            );
                        }
                    }
                    if let Some(steps) = &solved.steps {
                        let q_t = steps.q.as_ref().unwrap();
                        for (k, want) in truth.iter().enumerate() {
                            for s in (0..s_n).filter(|&s| !mdp.terminal[t * s_n + s]) {
                                for a in 0..a_n {
                                    let got = q_t[((t * 5 + k) * s_n + s) * a_n + a];
                                    close(
                                        got,
                                        want[s * a_n + a],
                                        &format!("{what} Q_{k}({s},{a})"),
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
