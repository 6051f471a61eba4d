//! The general-MDP GPU path (`shaders/mdp_backup.wgsl`, `shaders/mdp_occupancy.wgsl`) against
//! the CPU reference and against a dense forward computation written here from the contract:
//! both backups, alpha in {0, 0.1, 1, 3}, finite and infinite horizons, every time step, the
//! occupancy, dead ends at gamma = 1, and state-range banding under small binding limits.

mod common;

use std::collections::HashMap;

use softvi::world::mdp::TabularMdp;
use softvi::{
    Backup, EngineOptions, Horizon, MdpEngine, Outputs, SolveOptions, Status, solve_mdp_cpu,
};

use common::{compare, max_gap};

fn engine(options: EngineOptions) -> Option<MdpEngine> {
    common::gpu().map(|ctx| MdpEngine::with_options(ctx, options).unwrap())
}

/// Dense forward pass written from the contract: `D_{t+1}(s') = gamma sum_{s,a} D_t(s)
/// pi_t(a|s) P(s'|s,a)` over non-terminal s, with `pi_t` `[task][t][state][action]`.
fn dense_occupancy(mdp: &TabularMdp, gamma: f64, policy: &[f32], horizon: usize) -> Vec<f64> {
    let (s_n, a_n, b_n) = (mdp.states, mdp.actions, mdp.tasks);
    let mut p = vec![0.0; s_n * a_n * s_n];
    for row in 0..s_n * a_n {
        for k in mdp.csr().indptr[row] as usize..mdp.csr().indptr[row + 1] as usize {
            p[row * s_n + mdp.csr().indices[k] as usize] += mdp.csr().probs[k];
        }
    }
    let mut out = Vec::new();
    for t in 0..b_n {
        let mut d: Vec<f64> = mdp.initial[t * s_n..(t + 1) * s_n].to_vec();
        out.extend_from_slice(&d);
        for step in 0..horizon {
            let mut next = vec![0.0; s_n];
            for s in 0..s_n {
                if mdp.terminal[t * s_n + s] {
                    continue;
                }
                for a in 0..a_n {
                    let pi = policy[((t * horizon + step) * s_n + s) * a_n + a] as f64;
                    for (j, x) in next.iter_mut().enumerate() {
                        *x += gamma * d[s] * pi * p[(s * a_n + a) * s_n + j];
                    }
                }
            }
            d = next;
            out.extend_from_slice(&d);
        }
    }
    out
}

fn infinite(alpha: f64, gamma: f64, backup: Backup) -> SolveOptions {
    SolveOptions {
        alpha,
        gamma,
        backup,
        horizon: Horizon::Infinite {
            tol: 1e-6,
            max_iters: 20_000,
        },
        ..SolveOptions::default()
    }
}

#[test]
fn infinite_horizon_matches_reference() {
    let Some(mut engine) = engine(EngineOptions::default()) else {
        return;
    };
    // 301 states: not a multiple of the 64-wide workgroup.
    let mdp = common::random_mdp(301, 4, 3, true, 11);
    let outputs = Outputs {
        q: true,
        occupancy: true,
        ..Outputs::default()
    };
    for (alpha, backup) in [
        (0.0, Backup::Expected),
        (0.1, Backup::Expected),
        (1.0, Backup::Expected),
        (3.0, Backup::Expected),
        (0.1, Backup::Optimistic),
        (1.0, Backup::Optimistic),
        (3.0, Backup::Optimistic),
    ] {
        let o = infinite(alpha, 0.9, backup);
        let gpu = engine.solve(&mdp, &o, outputs).unwrap();
        let cpu = solve_mdp_cpu(&mdp, &o, outputs).unwrap();
        assert!(gpu.solution.status.iter().all(|&s| s == Status::Converged));
        // Both stop within tol of the fixed point: |dV| <= 2 tol gamma / (1 - gamma) plus f32
        // rounding of values up to ~|r| / (1 - gamma) = 10 (1e-5 relative).
        let scale = cpu
            .solution
            .values
            .iter()
            .fold(1.0f32, |m, v| m.max(v.abs())) as f64;
        let value_tol = 2.0 * 1e-6 * 0.9 / 0.1 + 1e-5 * scale;
        // At alpha = 0 the policy is one-hot: a near-tie (within 1e-5) may pick either action,
        // which these seeds avoid; elsewhere pi and D carry the value error times 1/alpha.
        // The occupancy iteration: the reference runs to its f64 floor, the GPU stops at f32's
        // (residual 1e-6 |D|), whose bound is 1e-6 |D| / (1 - gamma) = 1e-5 |D|; one-hot rows
        // still match exactly.
        let prob_tol = if alpha == 0.0 {
            1e-5
        } else {
            1e-4 / alpha.min(1.0)
        };
        compare(
            &format!("alpha {alpha} {backup:?}"),
            &gpu,
            &cpu,
            value_tol,
            prob_tol,
        );
        let occupancy = gpu.occupancy.unwrap();
        assert!(occupancy.status.iter().all(|&s| s == Status::Converged));
    }
}

#[test]
fn finite_horizon_every_step_matches_reference_and_dense_forward_pass() {
    let Some(mut engine) = engine(EngineOptions::default()) else {
        return;
    };
    let horizon = 7;
    for (terminals, gamma) in [(false, 1.0), (true, 0.95)] {
        let mdp = common::random_mdp(157, 3, 2, terminals, 5);
        let outputs = Outputs {
            q: true,
            all_steps: true,
            occupancy: true,
            ..Outputs::default()
        };
        for (alpha, backup) in [
            (0.1, Backup::Expected),
            (1.0, Backup::Expected),
            (3.0, Backup::Expected),
            (0.1, Backup::Optimistic),
            (1.0, Backup::Optimistic),
            (3.0, Backup::Optimistic),
        ] {
            let o = SolveOptions {
                alpha,
                gamma,
                backup,
                horizon: Horizon::Finite(horizon as u32),
                ..SolveOptions::default()
            };
            let what = format!("terminals {terminals} alpha {alpha} {backup:?}");
            let gpu = engine.solve(&mdp, &o, outputs).unwrap();
            let cpu = solve_mdp_cpu(&mdp, &o, outputs).unwrap();
            // f32 sums over at most 7 steps of values below ~7 in size: 1e-5 relative.
            compare(&what, &gpu, &cpu, 1e-4, 1e-5 / alpha.min(1.0));
            // V_t of a horizon-T solve is V_0 of a horizon-(T - t) solve.
            for t in [1usize, 4] {
                let shorter = SolveOptions {
                    horizon: Horizon::Finite((horizon - t) as u32),
                    ..o
                };
                let v0 = solve_mdp_cpu(&mdp, &shorter, Outputs::default()).unwrap();
                let steps = &gpu.steps.as_ref().unwrap().values;
                for task in 0..mdp.tasks {
                    let v_t = &steps[(task * (horizon + 1) + t) * mdp.states..][..mdp.states];
                    let gap = max_gap(
                        &what,
                        v_t,
                        &v0.solution.values[task * mdp.states..][..mdp.states],
                    );
                    assert!(
                        gap <= 1e-4,
                        "{what}: V_{t} vs V_0 of horizon T - {t}: {gap}"
                    );
                }
            }
            for solution in [&gpu, &cpu] {
                let steps = solution.steps.as_ref().unwrap();
                assert_eq!(steps.values.len(), mdp.tasks * (horizon + 1) * mdp.states);
                // V_0 of every step equals the single-step output.
                for t in 0..mdp.tasks {
                    let first = &steps.values[t * (horizon + 1) * mdp.states..][..mdp.states];
                    assert_eq!(
                        first,
                        &solution.solution.values[t * mdp.states..][..mdp.states]
                    );
                }
                let policy = steps.policy.as_ref().unwrap();
                let occupancy = solution.occupancy.as_ref().unwrap();
                assert_eq!(occupancy.steps, horizon + 1);
                let dense = dense_occupancy(&mdp, gamma, policy, horizon);
                for (i, (&d, &x)) in dense.iter().zip(&occupancy.values).enumerate() {
                    assert!(
                        (d - x as f64).abs() <= 1e-5,
                        "{what}: D[{i}] {x} vs dense {d}"
                    );
                }
                if !terminals {
                    // gamma = 1 and no terminal: every D_t is a distribution.
                    for (i, step) in occupancy.values.chunks_exact(mdp.states).enumerate() {
                        let total: f64 = step.iter().map(|&x| x as f64).sum();
                        assert!((total - 1.0).abs() <= 1e-5, "{what}: sum D[{i}] = {total}");
                    }
                }
            }
        }
    }
}

#[test]
fn dead_ends_are_excluded_at_gamma_one() {
    let Some(mut engine) = engine(EngineOptions::default()) else {
        return;
    };
    // States 0 and 1 only step between themselves: no terminal reachable. State 2 may step
    // into them (-inf for that action) or to the terminal state 3.
    let (s, a) = (5, 2);
    let rows: [&[(usize, f64)]; 10] = [
        &[(1, 1.0)],
        &[(0, 1.0)],
        &[(0, 1.0)],
        &[(1, 1.0)],
        &[(0, 0.5), (3, 0.5)],
        &[(3, 1.0)],
        &[(3, 1.0)],
        &[(3, 1.0)],
        &[(2, 0.5), (4, 0.5)],
        &[(3, 1.0)],
    ];
    let (mut indptr, mut indices, mut data) = (vec![0.0], Vec::new(), Vec::new());
    for row in rows {
        for &(j, p) in row {
            indices.push(j as f64);
            data.push(p);
        }
        indptr.push(indices.len() as f64);
    }
    let nnz = indices.len();
    let arrays = HashMap::from([
        ("indptr".to_owned(), common::array(vec![s * a + 1], indptr)),
        ("indices".to_owned(), common::array(vec![nnz], indices)),
        ("data".to_owned(), common::array(vec![nnz], data)),
        ("R".to_owned(), common::array(vec![s], vec![-1.0; s])),
        (
            "terminal".to_owned(),
            common::array(vec![s], vec![0., 0., 0., 1., 0.]),
        ),
    ]);
    let mdp = TabularMdp::from_arrays(&arrays).unwrap();
    for backup in [Backup::Expected, Backup::Optimistic] {
        let o = infinite(0.5, 1.0, backup);
        let outputs = Outputs {
            all_steps: false,
            occupancy: true,
            ..Outputs::default()
        };
        let gpu = engine.solve(&mdp, &o, outputs).unwrap();
        let cpu = solve_mdp_cpu(&mdp, &o, outputs).unwrap();
        assert_eq!(gpu.solution.values[..2], [f32::NEG_INFINITY; 2]);
        assert_eq!(gpu.solution.unreachable, vec![2]);
        // Start mass on the dead ends stays there forever: compare the rest.
        compare(&format!("{backup:?}"), &gpu, &cpu, 1e-4, f64::INFINITY);
        // From state 2, action 0 may step into the dead end: the expected backup gives it -inf
        // (probability 0); the optimistic one only log(1/2) less reachable mass.
        let (pi, pi_cpu) = (
            gpu.solution.policy.as_ref().unwrap(),
            cpu.solution.policy.as_ref().unwrap(),
        );
        match backup {
            Backup::Expected => assert_eq!(pi[2 * a], 0.0),
            Backup::Optimistic => assert!(pi[2 * a] > 0.1 && pi[2 * a] < 0.9),
        }
        assert!((pi[2 * a] - pi_cpu[2 * a]).abs() <= 1e-5);
    }
}

#[test]
fn state_bands_and_task_chunks_match_reference() {
    let mdp = common::random_mdp(301, 4, 5, true, 23);
    for (binding, buffer) in [(8192, None), (2048, None), (1 << 20, Some(16 * 1024))] {
        let Some(mut engine) = engine(EngineOptions {
            max_binding_bytes: Some(binding),
            max_buffer_bytes: buffer,
        }) else {
            return;
        };
        for (horizon, outputs) in [
            (
                Horizon::Finite(6),
                Outputs {
                    q: true,
                    all_steps: true,
                    occupancy: true,
                    ..Outputs::default()
                },
            ),
            (
                Horizon::Infinite {
                    tol: 1e-6,
                    max_iters: 10_000,
                },
                Outputs {
                    q: true,
                    occupancy: true,
                    ..Outputs::default()
                },
            ),
        ] {
            let o = SolveOptions {
                alpha: 0.7,
                gamma: 0.9,
                horizon,
                ..SolveOptions::default()
            };
            let what = format!("binding {binding} buffer {buffer:?} {horizon:?}");
            let result = engine.solve(&mdp, &o, outputs);
            if binding == 2048 {
                // The occupancy binds a whole task's policy (301 x 4 x 4 bytes).
                let error = result.unwrap_err();
                assert!(
                    matches!(
                        &error,
                        softvi::Error::LimitExceeded { needed: 4816, limit_name, .. }
                            if limit_name.contains("max_storage_buffer_binding_size")
                    ),
                    "{error:?}"
                );
                continue;
            }
            let gpu = result.unwrap();
            let cpu = solve_mdp_cpu(&mdp, &o, outputs).unwrap();
            compare(&what, &gpu, &cpu, 2e-4, 2e-4);
        }
    }
}

/// Tiny temperatures: rows sum to 1 within 1e-5, values are never NaN and match the
/// reference, and the GPU's likeliest action maximises the reference Q (below
/// `soft_policy_resolved` both backends write the hard max's one-hot).
#[test]
fn tiny_alpha_policies_sum_to_one() {
    let Some(mut engine) = engine(EngineOptions::default()) else {
        return;
    };
    let mdp = common::random_mdp(301, 4, 3, true, 11);
    let outputs = Outputs {
        q: true,
        ..Outputs::default()
    };
    for alpha in [1e-3, 1e-4, 1e-6, 1e-40] {
        let o = infinite(alpha, 0.9, Backup::Expected);
        let gpu = engine.solve(&mdp, &o, outputs).unwrap();
        let cpu = solve_mdp_cpu(&mdp, &o, outputs).unwrap();
        let what = format!("alpha {alpha:e}");
        assert_eq!(gpu.solution.status, vec![Status::Converged; 3], "{what}");
        assert_eq!(cpu.solution.status, vec![Status::Converged; 3], "{what}");
        // As in infinite_horizon_matches_reference (values below ~10).
        let value_tol = 2.0 * 1e-6 * 0.9 / 0.1 + 1e-4;
        let dv = max_gap(&what, &gpu.solution.values, &cpu.solution.values);
        assert!(dv <= value_tol, "{what}: |dV| {dv}");
        let cq = cpu.solution.q.as_ref().unwrap();
        for (name, s) in [("gpu", &gpu), ("cpu", &cpu)] {
            let policy = s.solution.policy.as_ref().unwrap();
            common::assert_rows_sum_to_one(&format!("{what} {name}"), policy, 4, 1e-5);
            common::assert_likeliest_action_optimal(
                &format!("{what} {name}"),
                policy,
                cq,
                4,
                |top| 1e-5 * top.abs().max(1.0) + 10.0 * alpha + value_tol,
            );
        }
    }
}

/// Values that overflow f32 are a runaway on both backends, never "converged".
#[test]
fn overflowing_values_diverge() {
    let Some(mut engine) = engine(EngineOptions::default()) else {
        return;
    };
    let mdp = common::random_mdp(101, 4, 2, false, 3);
    let o = infinite(1e37, 0.9, Backup::Expected);
    let cpu = solve_mdp_cpu(&mdp, &o, Outputs::VALUES).unwrap();
    assert!(
        cpu.solution.status.contains(&Status::Diverged),
        "{:?}",
        cpu.solution.status
    );
    let gpu = engine.solve(&mdp, &o, Outputs::VALUES).unwrap();
    assert_eq!(gpu.solution.status, cpu.solution.status);
}

/// Dense soft value iteration over the actions of finite reward only, written from the
/// contract: `V(s) = alpha log sum_{a: R > -inf} exp(Q(s,a) / alpha)` (max at alpha = 0),
/// `Q = R + gamma sum_s' P V`, terminal states at their value; `sweeps` Jacobi sweeps from 0.
fn dense_values_over_open_actions(
    mdp: &TabularMdp,
    alpha: f64,
    gamma: f64,
    sweeps: usize,
) -> Vec<f64> {
    let (s_n, a_n) = (mdp.states, mdp.actions);
    let mut v = vec![0.0; mdp.tasks * s_n];
    for _ in 0..sweeps {
        let mut next = v.clone();
        for t in 0..mdp.tasks {
            for s in 0..s_n {
                if mdp.terminal[t * s_n + s] {
                    next[t * s_n + s] = mdp.terminal_value[t * s_n + s];
                    continue;
                }
                let q: Vec<f64> = (0..a_n)
                    .filter(|&a| mdp.reward[(t * s_n + s) * a_n + a].is_finite())
                    .map(|a| {
                        let expected: f64 = (0..s_n)
                            .map(|j| mdp.probability(s, a, j) * v[t * s_n + j])
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

#[test]
fn excluded_actions_drop_out_of_the_soft_max() {
    let Some(mut engine) = engine(EngineOptions::default()) else {
        return;
    };
    // 203 states (not a multiple of 64), 5 actions, 2 tasks. Reward -inf excludes: the first
    // two actions where s % 5 == 0 (a running log-sum-exp that starts on two -inf terms), all
    // but the last where s % 5 == 1, the last where s % 5 == 2.
    let mut mdp = common::random_mdp(203, 5, 2, true, 23);
    let (s_n, a_n) = (mdp.states, mdp.actions);
    let excluded = |s: usize, a: usize| match s % 5 {
        0 => a < 2,
        1 => a < a_n - 1,
        2 => a == a_n - 1,
        _ => false,
    };
    for t in 0..mdp.tasks {
        for s in 0..s_n {
            for a in (0..a_n).filter(|&a| excluded(s, a)) {
                mdp.reward[(t * s_n + s) * a_n + a] = f64::NEG_INFINITY;
            }
        }
    }
    let outputs = Outputs {
        q: true,
        ..Outputs::default()
    };
    for (alpha, backup) in [
        (0.0, Backup::Expected),
        (0.3, Backup::Expected),
        (1.0, Backup::Expected),
        (1.0, Backup::Optimistic),
    ] {
        let what = format!("alpha {alpha} {backup:?}");
        let o = infinite(alpha, 0.9, backup);
        let gpu = engine.solve(&mdp, &o, outputs).unwrap();
        let cpu = solve_mdp_cpu(&mdp, &o, outputs).unwrap();
        assert!(cpu.solution.status.iter().all(|&s| s == Status::Converged));
        // As in infinite_horizon_matches_reference: 2 tol gamma / (1 - gamma) from stopping
        // within tol, plus f32 rounding of values up to |r| / (1 - gamma) = 10.
        let scale = cpu
            .solution
            .values
            .iter()
            .fold(1.0f32, |m, v| m.max(v.abs())) as f64;
        let value_tol = 2.0 * 1e-6 * 0.9 / 0.1 + 1e-5 * scale;
        let prob_tol = if alpha == 0.0 { 1e-6 } else { 1e-4 / alpha };
        compare(&what, &gpu, &cpu, value_tol, prob_tol);
        // Excluded: Q = -inf and policy exactly 0 on both backends (compare checks that the
        // infinities agree), the policy rows of the rest summing to 1.
        let (q, pi) = (cpu.solution.q.unwrap(), gpu.solution.policy.unwrap());
        for t in 0..mdp.tasks {
            for s in (0..s_n).filter(|&s| !mdp.terminal[t * s_n + s]) {
                for a in 0..a_n {
                    let i = (t * s_n + s) * a_n + a;
                    assert_eq!(excluded(s, a), q[i] == f32::NEG_INFINITY, "{what}: Q[{i}]");
                    if excluded(s, a) {
                        assert_eq!(pi[i], 0.0, "{what}: pi[{i}]");
                    }
                }
            }
        }
        common::assert_rows_sum_to_one(&what, &pi, a_n, 1e-5);
        if backup == Backup::Expected {
            // 400 sweeps: 0.9^400 * 10 < 1e-17, far below the tolerance.
            let truth = dense_values_over_open_actions(&mdp, alpha, 0.9, 400);
            for (i, (&v, &t)) in gpu.solution.values.iter().zip(&truth).enumerate() {
                if mdp.terminal[i] {
                    continue;
                }
                assert!(
                    (v as f64 - t).abs() <= value_tol,
                    "{what}: V[{i}] GPU {v}, dense {t}"
                );
            }
        }
    }
}
