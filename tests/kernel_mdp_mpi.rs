//! Modified policy iteration (`Method::Mpi`) on the GPU's general-MDP kernels
//! (`shaders/mdp_backup.wgsl`'s `improve` and `evaluate`, over CSR rows and over the dense
//! product) against three others: value iteration's fixed point (an f64 solve to 1e-13, the
//! independent truth), the f64 reference's MPI (`engine::cpu::policy_evaluation`) and the
//! native engine's. Models: random sparse ones (157 and 203 states, off the 64-state
//! workgroup), ragged rows (one successor, up to six, 150 on every 17th state), terminals with
//! values, excluded actions (-inf rewards; a state with every action excluded is refused,
//! and gamma < 1 excludes no state), several tasks, and a model kept dense (the dense product's rows); alpha 0 and > 0,
//! gamma 0.9 and 0.99, small binding limits that cut a task into state bands. Also: the
//! policy and Q of an MPI solve, a task's bits independent of its batch (freezing), and that
//! MPI needs fewer improvements than value iteration sweeps. (A transition row cannot be
//! empty: the model refuses it.)

// Per-task loops index several per-task arrays at once.
#![allow(clippy::needless_range_loop)]

mod common;

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use softvi::engine::cpu::solve_mdp_cpu_f64;
use softvi::engine::gpu::mdp_engine::MdpStorage;
use softvi::engine::schedule::keep_going;
use softvi::world::mdp::TabularMdp;
use softvi::{
    EngineOptions, Horizon, MdpEngine, MdpSolution, MdpSolver, Method, NativeSolver, Outputs,
    SolveOptions, Status, solve_mdp_cpu,
};

fn options(alpha: f64, gamma: f64, tol: f64, method: Method) -> SolveOptions {
    SolveOptions {
        alpha,
        gamma,
        horizon: Horizon::Infinite {
            tol,
            max_iters: 100_000,
        },
        method,
        ..Default::default()
    }
}

fn engine(options: EngineOptions) -> Option<MdpEngine> {
    common::gpu().map(|ctx| MdpEngine::with_options(ctx, options).unwrap())
}

/// V* by f64 value iteration to tol 1e-13, and its error bound.
fn truth(mdp: &TabularMdp, alpha: f64, gamma: f64) -> (Vec<f64>, f64) {
    let o = options(alpha, gamma, 1e-13, Method::Vi);
    let truth = solve_mdp_cpu_f64(mdp, &o, Outputs::VALUES, &mut keep_going)
        .unwrap()
        .solution;
    assert!(truth.status.iter().all(|&s| s == Status::Converged));
    let bound = truth.error_bound.iter().copied().fold(0.0, f64::max);
    // |V| <= 1.5 / (1 - gamma) = 150: the f64 floor keeps the truth's error far below 1e-9.
    assert!(bound <= 1e-9, "truth bound {bound}");
    (truth.values, bound)
}

/// Per task `max_s |V(s) - V*(s)|` over finite entries; the two must agree on -inf.
fn errors(values: &[f32], truth: &[f64], tasks: usize) -> Vec<f64> {
    let n = truth.len() / tasks;
    (0..tasks)
        .map(|t| {
            (t * n..(t + 1) * n)
                .map(|i| match truth[i].is_finite() {
                    true => (values[i] as f64 - truth[i]).abs(),
                    false => {
                        assert_eq!(values[i] as f64, truth[i], "state {i}");
                        0.0
                    }
                })
                .fold(0.0, f64::max)
        })
        .collect()
}

/// Largest finite |V|, at least 1.
fn scale(values: &[f64]) -> f64 {
    (values.iter())
        .filter(|x| x.is_finite())
        .fold(1.0, |m, v| m.max(v.abs()))
}

/// A sparse random MDP (`common::random_mdp`: 1 to 5 successors a row) whose action 2 is
/// excluded (reward -inf) on every 11th state of each task.
fn sparse_mdp(s: usize, tasks: usize, terminals: bool, seed: u64) -> TabularMdp {
    let mut mdp = common::random_mdp(s, 3, tasks, terminals, seed);
    for t in 0..tasks {
        for state in (t..s).step_by(11) {
            mdp.reward[(t * s + state) * 3 + 2] = f64::NEG_INFINITY as _;
        }
    }
    mdp
}

/// Rows of every length: action 0 one successor, action 1 one to six, action 2 on every 17th
/// state 150 successors (a long row among short ones); rewards in [-1, 0.5].
fn ragged_mdp(s: usize, tasks: usize, seed: u64) -> TabularMdp {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut indptr, mut indices, mut data) = (vec![0.0], Vec::new(), Vec::new());
    for state in 0..s {
        for a in 0..3 {
            let k = match a {
                0 => 1,
                1 => rng.random_range(1..=6usize),
                _ if state % 17 == 0 => 150,
                _ => rng.random_range(2..=4usize),
            };
            let mut next: Vec<usize> = (0..k).map(|_| rng.random_range(0..s)).collect();
            next.sort_unstable();
            next.dedup();
            let w: Vec<f64> = next.iter().map(|_| rng.random_range(0.05..1.0)).collect();
            let total: f64 = w.iter().sum();
            for (j, w) in next.iter().zip(&w) {
                indices.push(*j as f64);
                data.push(w / total);
            }
            indptr.push(indices.len() as f64);
        }
    }
    let r: Vec<f64> = (0..tasks * s * 3)
        .map(|_| rng.random_range(-1.0..0.5))
        .collect();
    let nnz = indices.len();
    let arrays = HashMap::from([
        ("indptr".to_owned(), common::array(vec![s * 3 + 1], indptr)),
        ("indices".to_owned(), common::array(vec![nnz], indices)),
        ("data".to_owned(), common::array(vec![nnz], data)),
        ("R".to_owned(), common::array(vec![tasks, s, 3], r)),
    ]);
    TabularMdp::from_arrays(&arrays).unwrap()
}

/// A dense `[S, 3, S]` model (about 85% nonzeros a row, so it is kept dense and the GPU runs
/// the dense product), rewards in [-1, 0.3], action 1 excluded on every 9th state; with
/// `terminals`, state 5t + 1 of task t terminal at 0.3 t.
fn dense_mdp(s: usize, tasks: usize, terminals: bool, seed: u64) -> TabularMdp {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut p = vec![0.0; s * 3 * s];
    for row in p.chunks_exact_mut(s) {
        for x in row.iter_mut() {
            if rng.random_range(0.0..1.0) < 0.85 {
                *x = rng.random_range(0.05..1.0);
            }
        }
        row[rng.random_range(0..s)] += 0.5;
        let total: f64 = row.iter().sum();
        row.iter_mut().for_each(|x| *x /= total);
    }
    let r: Vec<f64> = (0..tasks * s * 3)
        .map(|_| rng.random_range(-1.0..0.3))
        .collect();
    let mut arrays = HashMap::from([
        ("P".to_owned(), common::array(vec![s, 3, s], p)),
        ("R".to_owned(), common::array(vec![tasks, s, 3], r)),
    ]);
    if terminals {
        let (mut terminal, mut value) = (vec![0.0; tasks * s], vec![0.0; tasks * s]);
        for t in 0..tasks {
            terminal[t * s + (5 * t + 1) % s] = 1.0;
            value[t * s + (5 * t + 1) % s] = 0.3 * t as f64;
        }
        arrays.insert("terminal".into(), common::array(vec![tasks, s], terminal));
        arrays.insert(
            "terminal_value".into(),
            common::array(vec![tasks, s], value),
        );
    }
    TabularMdp::from_arrays(&arrays).unwrap()
}

/// The models every accuracy test runs, by name, with the engine options and storage each
/// takes (small bindings cut a task into several state bands).
fn models() -> Vec<(&'static str, TabularMdp, EngineOptions, MdpStorage)> {
    let small = EngineOptions {
        max_binding_bytes: Some(2048),
        max_buffer_bytes: None,
    };
    vec![
        (
            "sparse",
            sparse_mdp(157, 3, false, 31),
            EngineOptions::default(),
            MdpStorage::Csr,
        ),
        (
            "terminals",
            sparse_mdp(157, 2, true, 32),
            EngineOptions::default(),
            MdpStorage::Csr,
        ),
        (
            "ragged banded",
            ragged_mdp(203, 2, 17),
            small,
            MdpStorage::Csr,
        ),
        (
            "dense",
            dense_mdp(77, 3, false, 21),
            EngineOptions::default(),
            MdpStorage::Auto,
        ),
        (
            "dense terminals",
            dense_mdp(45, 2, true, 22),
            EngineOptions::default(),
            MdpStorage::Dense,
        ),
    ]
}

/// Tolerance per gamma: what f32 resolves there. The values MPI holds (relative to a per-task
/// offset where no state is fixed) are of order the rewards' spread over the mixing time, a
/// few units; their rounding, ~1e-7 of that a backup, moves the bound read from f32 dV by
/// that over 1 - gamma: 1e-5 at gamma 0.9, 1e-4 at 0.99, a decade under each tol.
fn tol_for(gamma: f64) -> f64 {
    if gamma < 0.95 { 1e-4 } else { 1e-3 }
}

fn solve_gpu(
    engine: &mut MdpEngine,
    mdp: &TabularMdp,
    o: &SolveOptions,
    outputs: Outputs,
) -> MdpSolution {
    engine.solve(mdp, o, outputs).unwrap()
}

/// MPI on the GPU stops with an error bound within tol that contains V* (up to f32), at
/// alpha 0 and > 0, gamma 0.9 and 0.99, on every model; its values, policy and Q agree with
/// the reference's MPI and the native engine's within the two tolerances; it takes fewer
/// improvements than value iteration (without extrapolation) takes sweeps.
#[test]
fn mpi_reaches_the_fixed_point_and_matches_reference_and_native() {
    let outputs = Outputs {
        q: true,
        ..Outputs::default()
    };
    for (name, mdp, engine_options, storage) in models() {
        let Some(mut gpu) = engine(engine_options) else {
            return;
        };
        gpu.set_storage(storage);
        for (alpha, gamma) in [(0.0, 0.9), (0.0, 0.99), (0.7, 0.9), (0.7, 0.99)] {
            let (truth, truth_bound) = truth(&mdp, alpha, gamma);
            let scale = scale(&truth);
            // A task with a fixed state (terminals) is not re-centred (no shift of V leaves its
            // backup's form): f32 resolves its V to the reach 1e-6 max |V| / (1 - gamma) at
            // best, as value iteration's. The others are held near 0 and get tol_for(gamma).
            let fixed = mdp.terminal.contains(&true);
            let tol = match fixed {
                true => tol_for(gamma).max(2e-6 * scale / (1.0 - gamma)),
                false => tol_for(gamma),
            };
            for evaluations in [1, Method::DEFAULT_EVALUATIONS, 20] {
                let what = format!("{name} alpha {alpha} gamma {gamma} m {evaluations}");
                let o = options(alpha, gamma, tol, Method::Mpi { evaluations });
                let got = solve_gpu(&mut gpu, &mdp, &o, outputs);
                let g = &got.solution;
                let err = errors(&g.values, &truth, mdp.tasks);
                for t in 0..mdp.tasks {
                    assert_eq!(g.status[t], Status::Converged, "{what}");
                    assert!(g.error_bound[t] <= tol, "{what}: bound {:?}", g.error_bound);
                    // f32: the bound is read from f32 values whose rounding (an ulp of |V| a
                    // backup, 1.2e-7 |V| at most) moves their fixed point by up to that over
                    // 1 - gamma; the result is reported in f32 (one more ulp).
                    let allowance = 1.2e-7 * scale * (1.0 + 1.0 / (1.0 - gamma));
                    assert!(
                        err[t] <= g.error_bound[t] + truth_bound + allowance,
                        "{what}: task {t} error {:e} > bound {:e} + {allowance:e}",
                        err[t],
                        g.error_bound[t]
                    );
                }
                // The reference's and the native engine's MPI stop within tol of the same
                // point: values (and Q) within both tolerances plus f32 rounding; the one-hot
                // policy flips only at a near-tie (these seeds have none), the soft one moves
                // by the value gap over alpha.
                let value_tol = 2.0 * tol + 1e-5 * scale;
                let prob_tol = if alpha == 0.0 {
                    1e-9
                } else {
                    4.0 * tol / alpha
                };
                let reference = solve_mdp_cpu(&mdp, &o, outputs).unwrap();
                common::compare(
                    &format!("{what} vs reference"),
                    &got,
                    &reference,
                    value_tol,
                    prob_tol,
                );
                let native = NativeSolver::new(None)
                    .solve_mdp(&mdp, &o, outputs, &mut keep_going)
                    .unwrap();
                common::compare(
                    &format!("{what} vs native"),
                    &got,
                    &native,
                    value_tol,
                    prob_tol,
                );
                if evaluations == 20 {
                    // Checks come every 16 sweeps, so both may stop at the first.
                    let vi = SolveOptions {
                        extrapolate: false,
                        ..options(alpha, gamma, tol, Method::Vi)
                    };
                    let vi = solve_gpu(&mut gpu, &mdp, &vi, Outputs::VALUES).solution;
                    for t in 0..mdp.tasks {
                        assert!(
                            g.iterations[t] <= vi.iterations[t],
                            "{what}: {:?} improvements, VI {:?} sweeps",
                            g.iterations,
                            vi.iterations
                        );
                        // Where value iteration needs many checks (terminals: the plain
                        // bound, gamma 0.99), the evaluations do most of the work: a wrong
                        // or idle evaluation sweep would show here.
                        if fixed && gamma == 0.99 {
                            assert!(
                                2 * g.iterations[t] < vi.iterations[t],
                                "{what}: {:?} improvements, VI {:?} sweeps",
                                g.iterations,
                                vi.iterations
                            );
                        }
                    }
                }
            }
        }
    }
}

/// A task's values are the same bits alone as in a batch whose other tasks stop at other
/// improvements (each task freezes at its own check, and re-centring reads only its own
/// values), on CSR rows and on the dense product.
#[test]
fn mpi_bits_are_independent_of_the_batch() {
    let batches = [
        ("sparse", sparse_mdp(157, 3, false, 41)),
        ("ragged", ragged_mdp(203, 3, 43)),
        ("terminals", sparse_mdp(157, 3, true, 44)),
        ("dense", dense_mdp(77, 3, true, 42)),
    ];
    let mut differs = false;
    for (name, batch) in batches {
        for alpha in [0.0, 1.0] {
            let Some(mut gpu) = engine(EngineOptions::default()) else {
                return;
            };
            let o = options(alpha, 0.99, 1e-3, Method::MPI);
            let all = solve_gpu(&mut gpu, &batch, &o, Outputs::VALUES).solution;
            let (s, n) = (batch.states, batch.actions);
            // Task 1 alone: the batch's model with one task, its rewards and start.
            let mut alone = batch.clone();
            alone.tasks = 1;
            alone.reward = batch.reward[s * n..2 * s * n].to_vec();
            alone.terminal = batch.terminal[s..2 * s].to_vec();
            alone.terminal_value = batch.terminal_value[s..2 * s].to_vec();
            alone.initial = batch.initial[s..2 * s].to_vec();
            let one = solve_gpu(&mut gpu, &alone, &o, Outputs::VALUES).solution;
            let what = format!("{name} alpha {alpha}");
            assert_eq!(one.iterations[0], all.iterations[1], "{what}");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            assert_eq!(bits(&one.values), bits(&all.values[s..2 * s]), "{what}");
            differs |= all.iterations.iter().any(|&i| i != all.iterations[1]);
        }
    }
    // Otherwise the batches would not test freezing.
    assert!(
        differs,
        "every task of every batch stopped at the same check"
    );
}

/// Every output of an MPI solve (policy, Q, the discounted occupancy under the final policy)
/// comes from its values as value iteration's does: against the reference's MPI with the
/// same outputs, within the tolerances of the accuracy test, on CSR rows and the dense
/// product, at alpha 0 and > 0.
#[test]
fn mpi_outputs_match_the_reference() {
    let outputs = Outputs {
        q: true,
        occupancy: true,
        ..Outputs::default()
    };
    let models = [
        ("sparse", sparse_mdp(157, 2, false, 51), MdpStorage::Csr),
        ("terminals", sparse_mdp(157, 2, true, 52), MdpStorage::Csr),
        ("dense", dense_mdp(77, 2, false, 53), MdpStorage::Dense),
    ];
    for (name, mdp, storage) in models {
        let Some(mut gpu) = engine(EngineOptions::default()) else {
            return;
        };
        gpu.set_storage(storage);
        for alpha in [0.0, 0.7] {
            let what = format!("{name} alpha {alpha}");
            let o = options(alpha, 0.9, 1e-4, Method::MPI);
            let got = solve_gpu(&mut gpu, &mdp, &o, outputs);
            let reference = solve_mdp_cpu(&mdp, &o, outputs).unwrap();
            let (truth, _) = truth(&mdp, alpha, 0.9);
            // As in the accuracy test at gamma 0.9 (tol 1e-4); the occupancy, a sum of
            // probabilities, moves with the policy.
            let value_tol = 2e-4 + 1e-5 * scale(&truth);
            let prob_tol = if alpha == 0.0 { 1e-4 } else { 4e-4 / alpha };
            common::compare(&what, &got, &reference, value_tol, prob_tol);
        }
    }
}
