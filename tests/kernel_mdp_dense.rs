//! The GPU path for dense general MDPs (`shaders/mdp_dense.wgsl`'s tiled product finished by
//! `shaders/mdp_rows_dense.wgsl`) against the f64 reference and against two independent
//! truths: a dense value iteration written here in f64 from the contract, and the CSR GPU path
//! on the same model. Models are dense random `[S,A,S]` with sizes off the 64-row and 8-task
//! tiles, terminals with values, excluded actions (-inf rewards), both backups, alpha 0 and
//! above, infinite and finite horizons with every step, and the product banded by rows and by
//! tasks under small binding limits. Also: the density rule is the native engine's, and a
//! task's bits do not depend on its batch.

mod common;

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use softvi::engine::gpu::mdp_engine::MdpStorage;
use softvi::engine::layout::{MdpInputs, dense_transitions};
use softvi::engine::native::NativeMdp;
use softvi::world::mdp::TabularMdp;
use softvi::{
    Backup, EngineOptions, Horizon, MdpEngine, Outputs, SolveOptions, Status, solve_mdp_cpu,
};

use common::{array, compare, max_gap};

fn engine(options: EngineOptions) -> Option<MdpEngine> {
    common::gpu().map(|ctx| MdpEngine::with_options(ctx, options).unwrap())
}

/// A dense random MDP given as `P` `[S,A,S]`: each row has a nonzero on about `fill` of the
/// states (at least one), weights in [0.05, 1) normalised; rewards in [-1, 0.3], with about
/// one action in 6 excluded (-inf) where the state keeps a finite one; with `terminals`, state
/// 5t + 2 of task t is terminal at value 0.5 - 0.3 t.
fn dense_mdp(s: usize, a: usize, b: usize, fill: f64, terminals: bool, seed: u64) -> TabularMdp {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut p = vec![0.0; s * a * s];
    for row in p.chunks_exact_mut(s) {
        for x in row.iter_mut() {
            if rng.random_bool(fill) {
                *x = rng.random_range(0.05..1.0);
            }
        }
        if row.iter().all(|&x| x == 0.0) {
            row[rng.random_range(0..s)] = 1.0;
        }
        let total: f64 = row.iter().sum();
        row.iter_mut().for_each(|x| *x /= total);
    }
    let r: Vec<f64> = (0..b * s * a)
        .map(|_| rng.random_range(-1.0..0.3))
        .collect();
    let mut arrays = HashMap::from([
        ("P".to_owned(), array(vec![s, a, s], p)),
        ("R".to_owned(), array(vec![b, s, a], r)),
    ]);
    if terminals {
        let mut terminal = vec![0.0; b * s];
        let mut value = vec![0.0; b * s];
        for t in 0..b {
            terminal[t * s + (5 * t + 2) % s] = 1.0;
            value[t * s + (5 * t + 2) % s] = 0.5 - 0.3 * t as f64;
        }
        arrays.insert("terminal".into(), array(vec![b, s], terminal));
        arrays.insert("terminal_value".into(), array(vec![b, s], value));
    }
    // Excluded actions are set on the model: `.npz` rewards are finite (`qlearn` builds the
    // -inf ones in memory).
    let mut mdp = TabularMdp::from_arrays(&arrays).unwrap();
    for state in mdp.reward.chunks_exact_mut(a) {
        for r in &mut state[1..] {
            if rng.random_bool(1.0 / 6.0) {
                *r = f64::NEG_INFINITY;
            }
        }
    }
    mdp.validate().unwrap();
    mdp
}

/// Soft value iteration written from the contract in f64 over the dense matrix: `Q(s,a) =
/// R(s,a) + gamma E[V']` (expected) or `R + alpha log E[exp(gamma V' / alpha)]` (optimistic),
/// `V = alpha log sum_a exp(Q / alpha)` (max at alpha 0), terminals fixed at their value.
/// `steps` sweeps from V_T = terminal values (0 elsewhere); `[task][state]`.
fn dense_truth(mdp: &TabularMdp, options: &SolveOptions, steps: usize) -> Vec<f64> {
    let (s_n, a_n) = (mdp.states, mdp.actions);
    let mut p = vec![0.0; s_n * a_n * s_n];
    for row in 0..s_n * a_n {
        let csr = mdp.csr();
        for k in csr.indptr[row] as usize..csr.indptr[row + 1] as usize {
            p[row * s_n + csr.indices[k] as usize] += csr.probs[k];
        }
    }
    let (alpha, gamma) = (options.alpha, options.gamma);
    let mut out = Vec::new();
    for t in 0..mdp.tasks {
        let terminal = &mdp.terminal[t * s_n..(t + 1) * s_n];
        let mut v: Vec<f64> = (0..s_n)
            .map(|i| match terminal[i] {
                true => mdp.terminal_value[t * s_n + i],
                false => 0.0,
            })
            .collect();
        for _ in 0..steps {
            let next: Vec<f64> = (0..s_n)
                .map(|i| {
                    if terminal[i] {
                        return v[i];
                    }
                    let q: Vec<f64> = (0..a_n)
                        .map(|a| {
                            let row = &p[(i * a_n + a) * s_n..][..s_n];
                            let r = mdp.reward[(t * s_n + i) * a_n + a];
                            match options.backup {
                                Backup::Expected => {
                                    r + gamma * row.iter().zip(&v).map(|(p, v)| p * v).sum::<f64>()
                                }
                                Backup::Optimistic => {
                                    let top = (row.iter().zip(&v))
                                        .filter(|(p, _)| **p > 0.0)
                                        .fold(f64::NEG_INFINITY, |m, (_, v)| m.max(*v));
                                    let mass: f64 = (row.iter().zip(&v))
                                        .map(|(p, v)| p * (gamma * (v - top) / alpha).exp())
                                        .sum();
                                    r + gamma * top + alpha * mass.ln()
                                }
                            }
                        })
                        .collect();
                    let top = q.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
                    if alpha == 0.0 {
                        return top;
                    }
                    top + alpha
                        * q.iter()
                            .map(|x| ((x - top) / alpha).exp())
                            .sum::<f64>()
                            .ln()
                })
                .collect();
            v = next;
        }
        out.extend(v);
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

/// Solves `mdp` dense (asserting that `engine` picks dense) and on the CSR GPU path.
fn dense_and_csr(
    engine: &mut MdpEngine,
    mdp: &TabularMdp,
    options: &SolveOptions,
    outputs: Outputs,
) -> (softvi::MdpSolution, softvi::MdpSolution) {
    engine.set_storage(MdpStorage::Auto);
    assert_eq!(
        engine.storage_for(mdp, options).unwrap(),
        MdpStorage::Dense,
        "a dense model runs dense"
    );
    let dense = engine.solve(mdp, options, outputs).unwrap();
    engine.set_storage(MdpStorage::Csr);
    let csr = engine.solve(mdp, options, outputs).unwrap();
    engine.set_storage(MdpStorage::Auto);
    (dense, csr)
}

/// Largest |V_dense - truth| over finite entries; -inf and NaN must sit at the same places.
fn gap_to_truth(what: &str, values: &[f32], truth: &[f64]) -> f64 {
    let truth: Vec<f32> = truth.iter().map(|&x| x as f32).collect();
    max_gap(what, values, &truth)
}

/// Whether two arrays are equal bit for bit (NaN where NaN).
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn density_rule_is_the_native_engines() {
    let options = infinite(1.0, 0.9, Backup::Expected);
    let mut seen = [false; 2];
    for (i, fill) in [0.02, 0.2, 0.4, 0.5, 0.6, 0.9].into_iter().enumerate() {
        let mdp = dense_mdp(53, 3, 1, fill, false, 40 + i as u64);
        let native = NativeMdp::new(&MdpInputs::new(&mdp, &options)).is_dense();
        assert_eq!(dense_transitions(&mdp), native, "fill {fill}");
        seen[native as usize] = true;
    }
    // A sparse model stays sparse.
    assert!(!dense_transitions(&common::random_mdp(301, 4, 1, false, 3)));
    assert_eq!(seen, [true, true], "both layouts met");
}

#[test]
fn infinite_horizon_matches_reference_truth_and_csr() {
    let Some(mut engine) = engine(EngineOptions::default()) else {
        return;
    };
    let outputs = Outputs {
        q: true,
        occupancy: true,
        ..Outputs::default()
    };
    // S = 37 and 130: not multiples of the 64-row tile; B = 3 and 11: not multiples of the
    // 8-task tile.
    for (s, a, b, seed) in [(37, 3, 3, 1), (130, 5, 11, 2)] {
        let mdp = dense_mdp(s, a, b, 0.8, true, seed);
        for (alpha, backup) in [
            (0.0, Backup::Expected),
            (0.5, Backup::Expected),
            (2.0, Backup::Expected),
            (0.5, Backup::Optimistic),
            (2.0, Backup::Optimistic),
        ] {
            let what = format!("S {s} A {a} B {b} alpha {alpha} {backup:?}");
            let o = infinite(alpha, 0.9, backup);
            let (dense, csr) = dense_and_csr(&mut engine, &mdp, &o, outputs);
            let cpu = solve_mdp_cpu(&mdp, &o, outputs).unwrap();
            assert!(
                dense
                    .solution
                    .status
                    .iter()
                    .all(|&s| s == Status::Converged),
                "{what}"
            );
            // Both stop within tol of the fixed point: |dV| <= 2 tol gamma / (1 - gamma), plus
            // f32 rounding of values up to ~|r| / (1 - gamma) + log A alpha / (1 - gamma)
            // ~ 30 (a sum of S f32 products: 1e-5 relative covers it).
            let scale = (cpu.solution.values.iter())
                .filter(|v| v.is_finite())
                .fold(1.0f32, |m, v| m.max(v.abs())) as f64;
            let value_tol = 2.0 * 1e-6 * 0.9 / 0.1 + 1e-5 * scale;
            // pi carries the value error times 1/alpha; at alpha = 0 it is one-hot (these
            // seeds have no near-tie). The occupancy: the reference runs to f64's floor, the
            // GPU to f32's (bound 1e-6 |D| / (1 - gamma)).
            let prob_tol = if alpha == 0.0 {
                1e-5
            } else {
                1e-4 / alpha.min(1.0)
            };
            compare(
                &format!("{what} vs reference"),
                &dense,
                &cpu,
                value_tol,
                prob_tol,
            );
            compare(&format!("{what} vs CSR"), &dense, &csr, value_tol, prob_tol);
            // The written-out truth, run to its f64 fixed point (0.9^400 ~ 5e-19).
            let truth = dense_truth(&mdp, &o, 400);
            let gap = gap_to_truth(&what, &dense.solution.values, &truth);
            assert!(gap <= value_tol, "{what}: |V - truth| {gap} > {value_tol}");
        }
    }
}

#[test]
fn finite_horizon_every_step_matches_reference_truth_and_csr() {
    let Some(mut engine) = engine(EngineOptions::default()) else {
        return;
    };
    let horizon = 9;
    let outputs = Outputs {
        q: true,
        all_steps: true,
        occupancy: true,
        ..Outputs::default()
    };
    for (terminals, gamma) in [(false, 1.0), (true, 0.95)] {
        let mdp = dense_mdp(130, 3, 5, 0.7, terminals, 7);
        for (alpha, backup) in [
            (0.0, Backup::Expected),
            (1.0, Backup::Expected),
            (0.3, Backup::Optimistic),
            (3.0, Backup::Optimistic),
        ] {
            let what = format!("gamma {gamma} alpha {alpha} {backup:?}");
            let o = SolveOptions {
                alpha,
                gamma,
                backup,
                horizon: Horizon::Finite(horizon),
                ..SolveOptions::default()
            };
            let (dense, csr) = dense_and_csr(&mut engine, &mdp, &o, outputs);
            let cpu = solve_mdp_cpu(&mdp, &o, outputs).unwrap();
            // T sweeps of f32 rounding on values up to ~T (|r| <= 1 plus alpha log A per
            // step): 1e-5 relative of the largest value, every step.
            let scale = (cpu.solution.values.iter()).fold(1.0f32, |m, v| m.max(v.abs())) as f64;
            let value_tol = 1e-5 * scale.max(horizon as f64);
            let prob_tol = if alpha == 0.0 {
                1e-5
            } else {
                1e-4 / alpha.min(1.0)
            };
            compare(
                &format!("{what} vs reference"),
                &dense,
                &cpu,
                value_tol,
                prob_tol,
            );
            compare(&format!("{what} vs CSR"), &dense, &csr, value_tol, prob_tol);
            let truth = dense_truth(&mdp, &o, horizon as usize);
            let gap = gap_to_truth(&what, &dense.solution.values, &truth);
            assert!(
                gap <= value_tol,
                "{what}: |V_0 - truth| {gap} > {value_tol}"
            );
        }
    }
}

#[test]
fn banded_product_matches_unbanded() {
    // 130 states x 5 actions: one state's rows are 2,600 bytes. A 16 KiB binding holds 6
    // states' rows and 6 tasks' products (one 8-task tile each band): P splits into 22 row
    // bands and the 11 tasks into 2 task bands; the finish bands split too.
    let Some(mut small) = engine(EngineOptions {
        max_binding_bytes: Some(16 << 10),
        max_buffer_bytes: None,
    }) else {
        return;
    };
    let mut whole = engine(EngineOptions::default()).unwrap();
    let mdp = dense_mdp(130, 5, 11, 0.8, true, 9);
    let outputs = Outputs {
        q: true,
        ..Outputs::default()
    };
    for (alpha, backup) in [(0.7, Backup::Expected), (0.7, Backup::Optimistic)] {
        let what = format!("banded alpha {alpha} {backup:?}");
        let o = infinite(alpha, 0.9, backup);
        assert_eq!(small.storage_for(&mdp, &o).unwrap(), MdpStorage::Dense);
        let banded = small.solve(&mdp, &o, outputs).unwrap();
        let one = whole.solve(&mdp, &o, outputs).unwrap();
        // The same sums in the same order per row and task: the bands change which
        // workgroup computes a row, not its arithmetic.
        assert!(
            same_bits(&banded.solution.values, &one.solution.values),
            "{what}: V"
        );
        let (banded_q, one_q) = (banded.solution.q.unwrap(), one.solution.q.unwrap());
        assert!(same_bits(&banded_q, &one_q), "{what}: Q");
        let (banded_pi, one_pi) = (
            banded.solution.policy.unwrap(),
            one.solution.policy.unwrap(),
        );
        assert!(same_bits(&banded_pi, &one_pi), "{what}: pi");
    }
}

#[test]
fn optimistic_rows_far_below_the_shift_are_recomputed() {
    // Two clusters: states below 35 step only among themselves at reward -1 (V ~ -10), the
    // others anywhere at reward 0 next to a terminal of value 5. At alpha 0.02 a low state's
    // row has every term exp(gamma (V - M) / alpha) ~ exp(-450): its shared-exponential mass
    // underflows and the row is recomputed with its own largest successor. Without that, Q
    // there would be -inf or off by far more than the tolerance.
    let Some(mut engine) = engine(EngineOptions::default()) else {
        return;
    };
    let (s, a, low) = (70, 3, 35);
    let mut rng = StdRng::seed_from_u64(13);
    let mut p = vec![0.0; s * a * s];
    for (row, out) in p.chunks_exact_mut(s).enumerate() {
        let reach = if row / a < low { low } else { s };
        for x in &mut out[..reach] {
            *x = rng.random_range(0.05..1.0);
        }
        let total: f64 = out.iter().sum();
        out.iter_mut().for_each(|x| *x /= total);
    }
    let r = (0..s * a)
        .map(|i| if i / a < low { -1.0 } else { 0.0 } + rng.random_range(-0.1..0.1))
        .collect();
    let mut terminal = vec![0.0; s];
    let mut value = vec![0.0; s];
    terminal[60] = 1.0;
    value[60] = 5.0;
    let mdp = TabularMdp::from_arrays(&HashMap::from([
        ("P".to_owned(), array(vec![s, a, s], p)),
        ("R".to_owned(), array(vec![1, s, a], r)),
        ("terminal".to_owned(), array(vec![1, s], terminal)),
        ("terminal_value".to_owned(), array(vec![1, s], value)),
    ]))
    .unwrap();
    let o = infinite(0.02, 0.9, Backup::Optimistic);
    let outputs = Outputs {
        q: true,
        ..Outputs::default()
    };
    engine.set_storage(MdpStorage::Dense);
    let dense = engine.solve(&mdp, &o, outputs).unwrap();
    engine.set_storage(MdpStorage::Csr);
    let csr = engine.solve(&mdp, &o, outputs).unwrap();
    let cpu = solve_mdp_cpu(&mdp, &o, outputs).unwrap();
    let v = &cpu.solution.values;
    assert!(v[..low].iter().all(|&x| x < -8.0) && v[low..].iter().all(|&x| x > 0.0));
    let scale = v.iter().fold(1.0f32, |m, v| m.max(v.abs())) as f64;
    let value_tol = 2.0 * 1e-6 * 0.9 / 0.1 + 1e-5 * scale;
    // alpha 0.02: pi carries the value error times 1 / alpha.
    compare(
        "low alpha vs reference",
        &dense,
        &cpu,
        value_tol,
        1e-4 / 0.02,
    );
    compare("low alpha vs CSR", &dense, &csr, value_tol, 1e-4 / 0.02);
    let truth = dense_truth(&mdp, &o, 400);
    let gap = gap_to_truth("low alpha", &dense.solution.values, &truth);
    assert!(
        gap <= value_tol,
        "low alpha: |V - truth| {gap} > {value_tol}"
    );
}

#[test]
fn task_bits_do_not_depend_on_the_batch() {
    // The task tile is 8 for a batch of 11 and 1 for a task alone; its sums are the same per
    // task, and a converged task freezes at its own check.
    let Some(mut engine) = engine(EngineOptions::default()) else {
        return;
    };
    let mdp = dense_mdp(37, 5, 11, 0.9, true, 21);
    for backup in [Backup::Expected, Backup::Optimistic] {
        let o = infinite(0.5, 0.9, backup);
        let batch = engine.solve(&mdp, &o, Outputs::default()).unwrap();
        for task in [0, 4, 10] {
            let alone = engine
                .solve(&mdp.shard(task..task + 1).unwrap(), &o, Outputs::default())
                .unwrap();
            let s = mdp.states;
            let within = &batch.solution.values[task * s..(task + 1) * s];
            assert!(
                same_bits(&alone.solution.values, within),
                "{backup:?} task {task}"
            );
        }
    }
}

#[test]
fn gamma_one_without_horizon_stays_on_csr() {
    // Excluded states (-inf) would meet 0 * -inf in a dense product: the engine keeps CSR,
    // and asking for dense names why.
    let Some(mut engine) = engine(EngineOptions::default()) else {
        return;
    };
    let mdp = dense_mdp(37, 3, 1, 0.8, true, 5);
    let o = infinite(1.0, 1.0, Backup::Expected);
    assert_eq!(engine.storage_for(&mdp, &o).unwrap(), MdpStorage::Csr);
    engine.set_storage(MdpStorage::Dense);
    let err = engine.storage_for(&mdp, &o).unwrap_err().to_string();
    assert!(err.contains("gamma = 1"), "{err}");
    let err = engine.solve(&mdp, &o, Outputs::default()).unwrap_err();
    assert!(err.to_string().contains("dense"), "{err}");
}

#[test]
fn q_and_policy_come_from_the_final_values() {
    // At tol 1e-2 the last sweep still moves V by up to ~1e-3: Q and pi from the values
    // before it (a product left from the last sweep) would miss the reference's, which takes
    // them from the final values, by about that much, far above f32 rounding (1e-5 of
    // ~|V|). Both stop at the same check (the same schedule), so V agrees to rounding too.
    let Some(mut engine) = engine(EngineOptions::default()) else {
        return;
    };
    let mdp = dense_mdp(130, 3, 3, 0.8, true, 17);
    let outputs = Outputs {
        q: true,
        ..Outputs::default()
    };
    for backup in [Backup::Expected, Backup::Optimistic] {
        let o = SolveOptions {
            horizon: Horizon::Infinite {
                tol: 1e-2,
                max_iters: 20_000,
            },
            ..infinite(0.5, 0.9, backup)
        };
        let (dense, _) = dense_and_csr(&mut engine, &mdp, &o, outputs);
        let cpu = solve_mdp_cpu(&mdp, &o, outputs).unwrap();
        assert_eq!(
            dense.solution.iterations, cpu.solution.iterations,
            "{backup:?}"
        );
        let scale = (cpu.solution.values.iter()).fold(1.0f32, |m, v| m.max(v.abs())) as f64;
        compare(
            &format!("tol 1e-2 {backup:?}"),
            &dense,
            &cpu,
            1e-5 * scale,
            1e-5 * scale / 0.5,
        );
    }
}
