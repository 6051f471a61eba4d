//! The native CSR engine (`src/engine/native/mdp_backup.rs`, `--backend native` on general
//! MDPs) against the CPU reference, output by output, and against truths written here: the
//! Bellman equation of the returned values (infinite horizons) and a backward recurrence
//! (finite ones), both in f64 from the contract. Both backups, alpha 0 and > 0, ragged and
//! long rows (sliced-ELL padding), terminals, -inf rewards (excluded actions), dead ends at
//! gamma = 1, many tasks (not a multiple of any vector width), and any thread count; a model
//! with mostly full rows, which the engine stores dense, through the same checks.
//! `.ci/run` runs this file at `SOFTVI_NATIVE_VECTORS=avx2` and `baseline` too.

mod common;

use common::{compare, max_gap, random_mdp};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use softvi::engine::layout::MdpInputs;
use softvi::engine::native::{COLUMN_BLOCKED_FROM, NativeMdp};
use softvi::world::mdp::{TabularMdp, Transitions};
use softvi::{
    Backup, Horizon, MdpSolution, MdpSolver, Method, NativeSolver, Outputs, SolveOptions, Status,
    keep_going, solve_mdp_cpu,
};
use std::collections::HashMap;

fn native(mdp: &TabularMdp, options: &SolveOptions, outputs: Outputs) -> MdpSolution {
    NativeSolver::new(None)
        .solve_mdp(mdp, options, outputs, &mut keep_going)
        .unwrap()
}

fn infinite(alpha: f64, gamma: f64, backup: Backup, tol: f64) -> SolveOptions {
    SolveOptions {
        alpha,
        gamma,
        backup,
        horizon: Horizon::Infinite {
            tol,
            max_iters: 20_000,
        },
        ..SolveOptions::default()
    }
}

/// Every (alpha, backup) pair the engine has a separate path for: the hard max, the soft max
/// at small, unit and large temperature, the optimistic backup's shared exponential, and at
/// alpha 0.02 its per-row fallback (values spread over more than ~2 make
/// `exp(gamma (V - M) / alpha)` underflow, so rows whose successors all sit low recompute).
const SETTINGS: [(f64, Backup); 8] = [
    (0.0, Backup::Expected),
    (0.1, Backup::Expected),
    (1.0, Backup::Expected),
    (3.0, Backup::Expected),
    (0.1, Backup::Optimistic),
    (1.0, Backup::Optimistic),
    (3.0, Backup::Optimistic),
    (0.02, Backup::Optimistic),
];

/// `alpha log sum_a exp(q_a / alpha)` (max at alpha = 0), written from the contract.
fn soft_max(alpha: f64, q: &[f64]) -> f64 {
    let top = q.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if alpha == 0.0 || top == f64::NEG_INFINITY {
        return top;
    }
    top + alpha
        * q.iter()
            .map(|x| ((x - top) / alpha).exp())
            .sum::<f64>()
            .ln()
}

/// One Bellman backup of state `s` of `task` from the values `v` `[task][state]`, in f64:
/// the expected `r + gamma sum p V'` or the optimistic `r + alpha log sum p exp(gamma V' /
/// alpha)` per action, then the soft max.
fn bellman(mdp: &TabularMdp, o: &SolveOptions, task: usize, s: usize, v: &[f64]) -> f64 {
    let base = task * mdp.states;
    let q: Vec<f64> = (0..mdp.actions)
        .map(|a| {
            let row = s * mdp.actions + a;
            let r = mdp.reward[(base + s) * mdp.actions + a];
            let entries = mdp.csr().indptr[row] as usize..mdp.csr().indptr[row + 1] as usize;
            let next = |k: usize| (mdp.csr().probs[k], v[base + mdp.csr().indices[k] as usize]);
            match o.backup {
                Backup::Expected => {
                    r + o.gamma * entries.map(next).map(|(p, x)| p * x).sum::<f64>()
                }
                Backup::Optimistic => {
                    let top = entries
                        .clone()
                        .map(|k| next(k).1)
                        .fold(f64::NEG_INFINITY, f64::max);
                    let mass: f64 = entries
                        .map(next)
                        .map(|(p, x)| p * ((x - top) * o.gamma / o.alpha).exp())
                        .sum();
                    r + o.gamma * top + o.alpha * mass.ln()
                }
            }
        })
        .collect();
    soft_max(o.alpha, &q)
}

/// Largest |T V - V| over the non-terminal states with finite V of `values` (f32, as
/// reported), in f64.
fn bellman_gap(mdp: &TabularMdp, o: &SolveOptions, values: &[f32]) -> f64 {
    let v: Vec<f64> = values.iter().map(|&x| x as f64).collect();
    let mut gap = 0.0f64;
    for task in 0..mdp.tasks {
        for s in 0..mdp.states {
            let i = task * mdp.states + s;
            if mdp.terminal[i] || !v[i].is_finite() {
                continue;
            }
            gap = gap.max((bellman(mdp, o, task, s, &v) - v[i]).abs());
        }
    }
    gap
}

/// Largest |V| of a solution, at least 1 (the scale of f32 rounding).
fn scale(values: &[f32]) -> f64 {
    values
        .iter()
        .filter(|x| x.is_finite())
        .fold(1.0f32, |m, v| m.max(v.abs())) as f64
}

/// An MDP of `s` states and 3 actions whose rows have every length the layout pads: action 0
/// one successor, action 1 one to six, action 2 on every 17th state 150 successors (a long row
/// in a block of short ones); action 2 is excluded (reward -inf) on every 5th state; states
/// `11 t + 2` are terminal for task t.
fn ragged_mdp(s: usize, tasks: usize, seed: u64) -> TabularMdp {
    let row_len = |rng: &mut StdRng, state: usize, a: usize| match a {
        0 => 1,
        1 => rng.random_range(1..=6usize),
        _ if state.is_multiple_of(17) => 150,
        _ => rng.random_range(2..=4usize),
    };
    let terminals = |t: usize| vec![((11 * t + 2) % s, 0.0)];
    sparse_mdp((s, 3, tasks), seed, row_len, terminals, 2)
}

/// An MDP of `s` states, `actions` actions and `tasks` tasks drawn from `seed`: row `(s, a)`
/// of `row_len(rng, s, a)` successors drawn uniformly (duplicates merged), weights U(0.05, 1)
/// normalised; rewards in [-1, 0.5]; `terminals(t)` the terminal states of task t with their
/// values; action `excluded` excluded (reward -inf) on every 5th state (`s % 5 == 1`).
fn sparse_mdp(
    (s, actions, tasks): (usize, usize, usize),
    seed: u64,
    row_len: impl Fn(&mut StdRng, usize, usize) -> usize,
    terminals: impl Fn(usize) -> Vec<(usize, f64)>,
    excluded: usize,
) -> TabularMdp {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut indptr, mut indices, mut data) = (vec![0.0], Vec::new(), Vec::new());
    for state in 0..s {
        for a in 0..actions {
            let k = row_len(&mut rng, state, a);
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
    let r: Vec<f64> = (0..tasks * s * actions)
        .map(|_| rng.random_range(-1.0..0.5))
        .collect();
    let (mut terminal, mut value) = (vec![0.0; tasks * s], vec![0.0; tasks * s]);
    for t in 0..tasks {
        for (state, v) in terminals(t) {
            (terminal[t * s + state], value[t * s + state]) = (1.0, v);
        }
    }
    let nnz = indices.len();
    let arrays = HashMap::from([
        (
            "indptr".to_owned(),
            common::array(vec![s * actions + 1], indptr),
        ),
        ("indices".to_owned(), common::array(vec![nnz], indices)),
        ("data".to_owned(), common::array(vec![nnz], data)),
        ("R".to_owned(), common::array(vec![tasks, s, actions], r)),
        (
            "terminal".to_owned(),
            common::array(vec![tasks, s], terminal),
        ),
        (
            "terminal_value".to_owned(),
            common::array(vec![tasks, s], value),
        ),
    ]);
    let mut mdp = TabularMdp::from_arrays(&arrays).unwrap();
    for t in 0..tasks {
        for state in (0..s).filter(|x| x % 5 == 1) {
            mdp.reward[(t * s + state) * actions + excluded] = f64::NEG_INFINITY as _;
        }
    }
    mdp.validate().unwrap();
    mdp
}

/// An MDP of `s` states and 3 actions whose rows are mostly full (each successor kept with
/// probability 0.85, so the engine stores it dense), action 1 excluded (-inf) on every 7th
/// state, state `5 t + 1` terminal (value 0.3 t) for task t; rewards in [-1, 0.3].
fn dense_mdp(s: usize, tasks: usize, seed: u64) -> TabularMdp {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut p = vec![0.0; s * 3 * s];
    for row in p.chunks_exact_mut(s) {
        for x in row.iter_mut() {
            if rng.random_range(0.0..1.0) < 0.85 {
                *x = rng.random_range(0.05..1.0);
            }
        }
        row[rng.random_range(0..s)] += 0.5; // no empty row
        let total: f64 = row.iter().sum();
        row.iter_mut().for_each(|x| *x /= total);
    }
    let r: Vec<f64> = (0..tasks * s * 3)
        .map(|_| rng.random_range(-1.0..0.3))
        .collect();
    let (mut terminal, mut value) = (vec![0.0; tasks * s], vec![0.0; tasks * s]);
    for t in 0..tasks {
        terminal[t * s + (5 * t + 1) % s] = 1.0;
        value[t * s + (5 * t + 1) % s] = 0.3 * t as f64;
    }
    let arrays = HashMap::from([
        ("P".to_owned(), common::array(vec![s, 3, s], p)),
        ("R".to_owned(), common::array(vec![tasks, s, 3], r)),
        (
            "terminal".to_owned(),
            common::array(vec![tasks, s], terminal),
        ),
        (
            "terminal_value".to_owned(),
            common::array(vec![tasks, s], value),
        ),
    ]);
    let mut mdp = TabularMdp::from_arrays(&arrays).unwrap();
    for t in 0..tasks {
        for state in (0..s).filter(|x| x % 7 == 2) {
            mdp.reward[(t * s + state) * 3 + 1] = f64::NEG_INFINITY as _;
        }
    }
    mdp.validate().unwrap();
    let inputs = MdpInputs::new(&mdp, &SolveOptions::default());
    assert!(
        NativeMdp::new(&inputs).is_dense(),
        "the test model is stored dense"
    );
    mdp
}

/// Every output of an infinite-horizon solve, at every setting, on `mdp`: against the
/// reference, and the values against their own Bellman equation.
fn check_infinite(what: &str, mdp: &TabularMdp, gamma: f64) {
    let tol = 1e-6;
    let outputs = Outputs {
        policy: true,
        q: true,
        occupancy: true,
        ..Outputs::default()
    };
    for (alpha, backup) in SETTINGS {
        let o = infinite(alpha, gamma, backup, tol);
        let what = format!("{what} alpha {alpha} {backup:?}");
        let got = native(mdp, &o, outputs);
        let truth = solve_mdp_cpu(mdp, &o, outputs).unwrap();
        assert!(
            got.solution.status.iter().all(|&s| s == Status::Converged),
            "{what}: {:?}",
            got.solution.status
        );
        // Both stop within tol gamma / (1 - gamma) of the fixed point, plus f32 rounding of
        // values of size `scale` (a few ulps per backup, amplified by 1 / (1 - gamma) at most
        // over the sweeps: 1e-5 relative covers gamma 0.9 with room).
        let scale = scale(&truth.solution.values);
        let value_tol = 2.0 * tol * gamma / (1.0 - gamma) + 1e-5 * scale;
        // The one-hot policy flips only at a near-tie (1e-5), which these seeds avoid (a flip
        // moves an entry by 1); the soft one and the occupancy carry the value error times
        // 1 / alpha; the occupancy also its own stopping error, tol gamma / (1 - gamma) on each
        // side relative to the start's peak, plus f32 rounding.
        let occupancy_tol = 2.0 * tol * gamma / (1.0 - gamma) + 1e-6;
        let prob_tol = if alpha == 0.0 {
            occupancy_tol
        } else {
            1e-4 / alpha.min(1.0)
        };
        compare(&what, &got, &truth, value_tol, prob_tol);
        // The independent truth: V is the fixed point of the backup written above, to within
        // the residual's bound (tol, or the f32 floor of 1e-6 |V|) plus f32 rounding of V.
        let gap = bellman_gap(mdp, &o, &got.solution.values);
        let bound = 2.0 * tol.max(1e-6 * scale) + 1e-5 * scale;
        assert!(gap <= bound, "{what}: |T V - V| = {gap:e} > {bound:e}");
    }
}

#[test]
fn random_mdp_every_output_matches_reference_and_bellman() {
    // 301 states (37 blocks of 8 and 5 over), 13 tasks: not a multiple of any vector width.
    let mdp = random_mdp(301, 4, 13, true, 11);
    check_infinite("random", &mdp, 0.9);
}

#[test]
fn dense_rows_match_reference_and_bellman() {
    // 77 states (9 blocks of 8 and 5 over), 3 tasks; sparse models stay sliced.
    let mdp = dense_mdp(77, 3, 21);
    check_infinite("dense", &mdp, 0.9);
    let sparse = random_mdp(77, 3, 1, false, 2);
    let sparse = MdpInputs::new(&sparse, &SolveOptions::default());
    assert!(!NativeMdp::new(&sparse).is_dense());
}

/// `mdp` with its transitions as CSR (a dense model's own CSR form).
fn as_csr(mdp: &TabularMdp) -> TabularMdp {
    let csr = mdp.csr().clone();
    TabularMdp {
        transitions: Transitions::sparse(csr.indptr, csr.indices, csr.probs),
        ..mdp.clone()
    }
}

#[test]
fn a_model_kept_dense_gives_its_csr_forms_bits() {
    // A dense P at least half full stays dense (the native engine reads its rows, never a
    // CSR); the same model as CSR must give the same bits on the native engine (whose dense
    // layout from either is the same f32 matrix) and on the reference (which reads the CSR
    // built from the dense rows). Every output, both horizons.
    let dense = dense_mdp(61, 2, 17);
    assert!(dense.transitions.dense_rows().is_some(), "kept dense");
    let csr = as_csr(&dense);
    assert!(csr.transitions.dense_rows().is_none());
    assert_eq!(dense, csr, "a dense model equals its CSR form");
    assert_eq!(dense.nonzeros(), csr.csr().indices.len());
    assert_eq!(dense.probability(3, 2, 7), csr.probability(3, 2, 7));
    let outputs = Outputs {
        policy: true,
        q: true,
        all_steps: true,
        occupancy: true,
    };
    for horizon in [
        Horizon::Finite(7),
        infinite(0.5, 0.9, Backup::Expected, 1e-6).horizon,
    ] {
        for (alpha, backup) in [
            (0.5, Backup::Expected),
            (0.0, Backup::Expected),
            (1.0, Backup::Optimistic),
        ] {
            let o = SolveOptions {
                alpha,
                gamma: 0.9,
                backup,
                horizon,
                ..SolveOptions::default()
            };
            let outputs = Outputs {
                all_steps: matches!(horizon, Horizon::Finite(_)),
                ..outputs
            };
            let what = format!("{horizon:?} alpha {alpha} {backup:?}");
            // Tolerance 0: the same bits.
            let (got, want) = (native(&dense, &o, outputs), native(&csr, &o, outputs));
            compare(&format!("native {what}"), &got, &want, 0.0, 0.0);
            let got = solve_mdp_cpu(&dense, &o, outputs).unwrap();
            let want = solve_mdp_cpu(&csr, &o, outputs).unwrap();
            compare(&format!("reference {what}"), &got, &want, 0.0, 0.0);
        }
    }
    // Fewer than half the entries nonzero: CSR.
    let (s, a) = (20, 2);
    let mut p = vec![0.0; s * a * s];
    for (row, out) in p.chunks_exact_mut(s).enumerate() {
        for k in 0..(s / 2 - 1) {
            out[(row + k) % s] = 1.0 / (s / 2 - 1) as f64;
        }
    }
    let arrays = HashMap::from([
        ("P".to_owned(), common::array(vec![s, a, s], p)),
        ("R".to_owned(), common::array(vec![s], vec![0.5; s])),
    ]);
    let sparse = TabularMdp::from_arrays(&arrays).unwrap();
    assert!(sparse.transitions.dense_rows().is_none(), "under half full");
    assert_eq!(sparse.nonzeros(), s * a * (s / 2 - 1));
}

#[test]
fn ragged_long_rows_and_excluded_actions_match_reference_and_bellman() {
    let mdp = ragged_mdp(203, 3, 7);
    check_infinite("ragged", &mdp, 0.9);
    // An excluded action gets Q = -inf and policy 0 on every backend.
    let o = infinite(1.0, 0.9, Backup::Expected, 1e-6);
    let got = native(
        &mdp,
        &o,
        Outputs {
            policy: true,
            q: true,
            ..Outputs::default()
        },
    );
    let (q, pi) = (got.solution.q.unwrap(), got.solution.policy.unwrap());
    for t in 0..mdp.tasks {
        for s in (0..mdp.states).filter(|x| x % 5 == 1 && !mdp.terminal[t * mdp.states + x]) {
            let i = (t * mdp.states + s) * 3 + 2;
            assert_eq!(
                (q[i], pi[i]),
                (f32::NEG_INFINITY, 0.0),
                "task {t} state {s}"
            );
        }
    }
}

#[test]
fn finite_horizon_every_step_matches_reference_and_recurrence() {
    let horizon = 9;
    let outputs = Outputs {
        policy: true,
        q: true,
        all_steps: true,
        occupancy: true,
    };
    for (name, mdp, gamma) in [
        ("random", random_mdp(157, 3, 5, false, 5), 1.0),
        ("ragged", ragged_mdp(99, 2, 3), 0.95),
        ("dense", dense_mdp(45, 2, 8), 0.97),
    ] {
        for (alpha, backup) in SETTINGS {
            let o = SolveOptions {
                alpha,
                gamma,
                backup,
                horizon: Horizon::Finite(horizon),
                ..SolveOptions::default()
            };
            let what = format!("{name} alpha {alpha} {backup:?}");
            let got = native(&mdp, &o, outputs);
            let truth = solve_mdp_cpu(&mdp, &o, outputs).unwrap();
            // f32 sums over 9 steps of values below ~10: 1e-5 relative, 1e-4 absolute.
            let prob_tol = if alpha == 0.0 {
                1e-6
            } else {
                1e-5 / alpha.min(1.0)
            };
            compare(&what, &got, &truth, 1e-4, prob_tol);
            // The recurrence: V_T = 0 on non-terminal states, the terminal value on terminal
            // ones, V_t = T V_{t+1}; every reported step against it.
            let steps = &got.steps.as_ref().unwrap().values;
            let n = mdp.tasks * mdp.states;
            let mut v: Vec<f64> = (0..n)
                .map(|i| match mdp.terminal[i] {
                    true => mdp.terminal_value[i],
                    false => 0.0,
                })
                .collect();
            for t in (0..=horizon as usize).rev() {
                for task in 0..mdp.tasks {
                    let at = (task * (horizon as usize + 1) + t) * mdp.states;
                    let gap = max_gap(
                        &what,
                        &steps[at..at + mdp.states],
                        &v[task * mdp.states..][..mdp.states]
                            .iter()
                            .map(|&x| x as f32)
                            .collect::<Vec<f32>>(),
                    );
                    assert!(gap <= 1e-4, "{what}: V_{t} of task {task} off by {gap}");
                }
                v = (0..n)
                    .map(|i| match mdp.terminal[i] {
                        true => v[i],
                        false => bellman(&mdp, &o, i / mdp.states, i % mdp.states, &v),
                    })
                    .collect();
            }
        }
    }
}

#[test]
fn dead_ends_at_gamma_one_are_minus_infinity() {
    // States 0 and 1 only step between themselves: no terminal reachable. State 2 may step
    // into them (action 0) or towards the terminal state 3.
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
    let mdp = TabularMdp::from_arrays(&HashMap::from([
        ("indptr".to_owned(), common::array(vec![11], indptr)),
        ("indices".to_owned(), common::array(vec![nnz], indices)),
        ("data".to_owned(), common::array(vec![nnz], data)),
        ("R".to_owned(), common::array(vec![5], vec![-1.0; 5])),
        (
            "terminal".to_owned(),
            common::array(vec![5], vec![0., 0., 0., 1., 0.]),
        ),
    ]))
    .unwrap();
    let outputs = Outputs {
        occupancy: true,
        ..Outputs::default()
    };
    for backup in [Backup::Expected, Backup::Optimistic] {
        let o = infinite(0.5, 1.0, backup, 1e-6);
        let got = native(&mdp, &o, outputs);
        let truth = solve_mdp_cpu(&mdp, &o, outputs).unwrap();
        assert_eq!(got.solution.values[..2], [f32::NEG_INFINITY; 2]);
        assert_eq!(got.solution.unreachable, vec![2]);
        compare(&format!("{backup:?}"), &got, &truth, 1e-4, f64::INFINITY);
        let pi = got.solution.policy.as_ref().unwrap();
        // Action 0 of state 2 may step into the dead end: -inf (probability 0) for the
        // expected backup, log(1/2) less reachable mass for the optimistic one.
        match backup {
            Backup::Expected => assert_eq!(pi[4], 0.0),
            Backup::Optimistic => assert!(pi[4] > 0.1 && pi[4] < 0.9, "{}", pi[4]),
        }
    }
}

#[test]
fn every_thread_count_gives_the_same_bits() {
    // Each state's arithmetic is fixed by its block and lane, whichever thread sweeps it.
    let mdp = ragged_mdp(1203, 4, 21);
    let outputs = Outputs {
        q: true,
        ..Outputs::default()
    };
    for (alpha, backup) in [(0.0, Backup::Expected), (0.5, Backup::Optimistic)] {
        let o = infinite(alpha, 0.95, backup, 1e-5);
        let solve = |threads: usize| {
            let mut solver = NativeSolver::new(None);
            solver.threads = threads;
            solver
                .solve_mdp(&mdp, &o, outputs, &mut keep_going)
                .unwrap()
        };
        let one = solve(1);
        for threads in [2, 3, 7] {
            let many = solve(threads);
            let bits = |s: &MdpSolution| -> Vec<u32> {
                let q = s.solution.q.as_ref().unwrap();
                s.solution
                    .values
                    .iter()
                    .chain(q)
                    .map(|x| x.to_bits())
                    .collect()
            };
            assert_eq!(bits(&one), bits(&many), "{threads} threads, alpha {alpha}");
            assert_eq!(one.solution.iterations, many.solution.iterations);
        }
    }
    // A dense model's finite horizon: every step's policy and the pushed occupancy (summed
    // per fixed group of source states, whichever thread takes the group).
    let mdp = dense_mdp(61, 3, 4);
    let o = SolveOptions {
        alpha: 0.7,
        gamma: 0.98,
        horizon: Horizon::Finite(12),
        ..SolveOptions::default()
    };
    let outputs = Outputs {
        policy: true,
        all_steps: true,
        occupancy: true,
        ..Outputs::default()
    };
    let solve = |threads: usize| {
        let mut solver = NativeSolver::new(None);
        solver.threads = threads;
        let got = solver
            .solve_mdp(&mdp, &o, outputs, &mut keep_going)
            .unwrap();
        let steps = got.steps.unwrap();
        (steps.policy.unwrap().iter())
            .chain(&steps.values)
            .chain(&got.occupancy.unwrap().values)
            .map(|x| x.to_bits())
            .collect::<Vec<u32>>()
    };
    let one = solve(1);
    for threads in [2, 5, 17] {
        assert_eq!(one, solve(threads), "dense, {threads} threads");
    }
}

/// The native engine tests each task after every sweep, not only at the checks 16 sweeps
/// apart (its sweeps return the statistics anyway): on an MDP without terminals it stops at
/// the first sweep whose span bound is within tol, between two checks, with a bound
/// that contains the fixed point (value iteration in f64 to 1e-13, written here); solved
/// beside a slower task it stops at the same sweep with the same bits.
#[test]
fn stops_between_checks_and_alone_as_in_a_batch() {
    let mdp = random_mdp(301, 4, 1, false, 23);
    let o = infinite(0.0, 0.9, Backup::Expected, 1e-3);
    let alone = native(&mdp, &o, Outputs::VALUES).solution;
    assert_eq!(alone.status, vec![Status::Converged]);
    // Between two checks, and at the first sweep within tol: one sweep fewer is not.
    let sweeps = alone.iterations[0];
    assert!(!sweeps.is_multiple_of(16), "stopped after {sweeps} sweeps");
    let fewer = SolveOptions {
        horizon: Horizon::Infinite {
            tol: 1e-3,
            max_iters: sweeps - 1,
        },
        ..o
    };
    let short = native(&mdp, &fewer, Outputs::VALUES).solution;
    assert_ne!(short.status, vec![Status::Converged]);
    // The fixed point, by plain value iteration.
    let mut v = vec![0.0f64; mdp.states];
    for _ in 0..400 {
        v = (0..mdp.states)
            .map(|s| bellman(&mdp, &o, 0, s, &v))
            .collect();
    }
    let err = (alone.values.iter().zip(&v))
        .map(|(&x, &y)| (x as f64 - y).abs())
        .fold(0.0, f64::max);
    assert!(
        err <= alone.error_bound[0],
        "{err} > {}",
        alone.error_bound[0]
    );
    assert!(alone.error_bound[0] <= 1e-3);
    // Task 0 as above, task 1 a scaled copy of its rewards at a tol it reaches later.
    let mut pair = random_mdp(301, 4, 2, false, 23);
    let (s_a, r) = (mdp.states * mdp.actions, mdp.reward.clone());
    pair.reward[..s_a].copy_from_slice(&r);
    for (x, y) in pair.reward[s_a..].iter_mut().zip(&r) {
        *x = 40.0 * y;
    }
    let both = native(&pair, &o, Outputs::VALUES).solution;
    assert_eq!(both.iterations[0], sweeps);
    assert!(both.iterations[1] > sweeps, "{:?}", both.iterations);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    assert_eq!(bits(&both.values[..mdp.states]), bits(&alone.values));
}

/// Modified policy iteration on the native engine (`Method::Mpi`: the improvement keeps the
/// chosen rows at alpha 0, the policy at alpha > 0, then exp-free evaluation sweeps): on
/// sparse, ragged (long rows, excluded actions, terminals) and dense models, at alpha 0 and >
/// 0, the values are within their reported bound (<= tol) of value iteration's fixed point
/// (the f64 reference to 1e-13), and the values and policy match the reference's MPI.
#[test]
fn modified_policy_iteration_reaches_the_fixed_point_and_matches_reference() {
    let models = [
        ("random", random_mdp(301, 4, 5, false, 41)),
        ("ragged", ragged_mdp(203, 3, 17)),
        ("dense", dense_mdp(77, 3, 21)),
    ];
    // Above the f32 floor's reach here (1e-6 max |V| / (1 - gamma) ~ 1e-4 at |V| ~ 5).
    let tol = 1e-3;
    for (name, mdp) in &models {
        for alpha in [0.0, 0.5, 2.0] {
            for evaluations in [1, Method::DEFAULT_EVALUATIONS, 40] {
                let what = format!("{name} alpha {alpha} m {evaluations}");
                let o = SolveOptions {
                    method: Method::Mpi { evaluations },
                    ..infinite(alpha, 0.95, Backup::Expected, tol)
                };
                let got = native(mdp, &o, Outputs::default());
                let reference = solve_mdp_cpu(mdp, &o, Outputs::default()).unwrap();
                let vi = SolveOptions {
                    method: Method::Vi,
                    ..infinite(alpha, 0.95, Backup::Expected, 1e-13)
                };
                let truth = softvi::engine::cpu::solve_mdp_cpu_f64(
                    mdp,
                    &vi,
                    Outputs::VALUES,
                    &mut keep_going,
                )
                .unwrap()
                .solution;
                let scale = scale(&reference.solution.values);
                let n = mdp.states;
                for t in 0..mdp.tasks {
                    assert_eq!(got.solution.status[t], Status::Converged, "{what}");
                    let bound = got.solution.error_bound[t];
                    assert!(bound <= tol, "{what}: bound {bound}");
                    let err = (t * n..(t + 1) * n)
                        .filter(|&i| truth.values[i].is_finite())
                        .map(|i| (got.solution.values[i] as f64 - truth.values[i]).abs())
                        .fold(0.0, f64::max);
                    // Up to f32 rounding: an ulp of |V| per sweep, which moves the f32 fixed
                    // point (and the bound read from f32 dV) by up to ulp / (1 - gamma).
                    assert!(
                        err <= tol && err <= bound + 1.2e-7 * scale / 0.05,
                        "{what} task {t}: error {err:e} > bound {bound:e}"
                    );
                }
                // The reference's MPI stops within tol of the same point: values within both
                // bounds, the one-hot policy flips only at a near-tie (these seeds have
                // none), the soft one carries the value gap times 1 / alpha.
                let value_tol = 2.0 * tol + 1e-5 * scale;
                let prob_tol = if alpha == 0.0 { 1e-9 } else { 1e-3 / alpha };
                compare(&what, &got, &reference, value_tol, prob_tol);
            }
        }
    }
}

/// MPI's per-task freezing and threading: a task's values are the same bits alone, in a
/// batch, and on any thread count (each task stops at its own first improvement within tol).
#[test]
fn modified_policy_iteration_bits_are_independent_of_batch_and_threads() {
    for alpha in [0.0, 1.0] {
        let o = SolveOptions {
            method: Method::MPI,
            ..infinite(alpha, 0.99, Backup::Expected, 1e-3)
        };
        let batch = ragged_mdp(203, 3, 29);
        let solve = |mdp: &TabularMdp, threads: usize| {
            let mut solver = NativeSolver::new(None);
            solver.threads = threads;
            solver
                .solve_mdp(mdp, &o, Outputs::VALUES, &mut keep_going)
                .unwrap()
                .solution
        };
        let all = solve(&batch, 2);
        for threads in [1, 3, 7] {
            assert_eq!(
                all.values,
                solve(&batch, threads).values,
                "{threads} threads"
            );
        }
        // Task 1 alone: its rewards, terminals and start as the batch's task 1.
        let (s, n) = (batch.states, batch.actions);
        let mut alone = ragged_mdp(203, 1, 29);
        alone.reward = batch.reward[s * n..2 * s * n].to_vec();
        alone.terminal = batch.terminal[s..2 * s].to_vec();
        alone.terminal_value = batch.terminal_value[s..2 * s].to_vec();
        alone.initial = batch.initial[s..2 * s].to_vec();
        let one = solve(&alone, 2);
        assert_eq!(one.iterations[0], all.iterations[1], "alpha {alpha}");
        assert_eq!(one.values[..], all.values[s..2 * s], "alpha {alpha}");
        assert!(all.iterations.iter().any(|&i| i != all.iterations[1]));
    }
}

/// An MDP of `s` states and 2 actions whose successors are spread over every state: action 0
/// one to three successors, action 1 two, and on every 101st state 60 (a long row); action 1
/// excluded (-inf) on every 5th state; for task t the states `1009 k + 4 + t` terminal at
/// value -60 (pits: a row into pits alone has an optimistic mass that underflows, recomputed
/// per row); rewards in [-1, 0.5].
fn wide_mdp(s: usize, tasks: usize, seed: u64) -> TabularMdp {
    let row_len = |rng: &mut StdRng, state: usize, a: usize| match a {
        0 => rng.random_range(1..=3usize),
        _ if state.is_multiple_of(101) => 60,
        _ => 2,
    };
    let terminals = |t: usize| (4 + t..s).step_by(1009).map(|x| (x, -60.0)).collect();
    sparse_mdp((s, 2, tasks), seed, row_len, terminals, 1)
}

/// A model past [`COLUMN_BLOCKED_FROM`] (three column blocks: each block's slices cut into
/// one segment per column block, a unit's segments stored column block by column block, each
/// row's sum carried from segment to segment) against the
/// reference and its own Bellman equation, with ragged and long rows, terminals and excluded
/// actions; the same bits on any thread count and for a task alone as in its batch; modified
/// policy iteration (which copies and sweeps whole slices) to VI's fixed point.
#[test]
fn column_blocked_model_matches_reference_and_bellman() {
    // 532,145 states: a stride of 532,147 values, three column blocks (262,144 twice, then
    // 7,859), the last unit of 4,096 blocks short too.
    let s = COLUMN_BLOCKED_FROM + 7_857;
    let mdp = wide_mdp(s, 2, 31);
    let inputs = MdpInputs::new(&mdp, &SolveOptions::default());
    assert_eq!(NativeMdp::new(&inputs).column_blocks(), 3);
    let outputs = Outputs {
        policy: true,
        q: true,
        ..Outputs::default()
    };
    // The hard max, and the shared exponential with its per-row fallback on rows into pits
    // (the soft max of the expected backup sums its rows as the hard max does).
    let (gamma, tol) = (0.9, 1e-4);
    for (alpha, backup) in [(0.0, Backup::Expected), (0.1, Backup::Optimistic)] {
        let what = format!("column blocks alpha {alpha} {backup:?}");
        let o = infinite(alpha, gamma, backup, tol);
        let got = native(&mdp, &o, outputs);
        let truth = solve_mdp_cpu(&mdp, &o, outputs).unwrap();
        assert!(
            got.solution.status.iter().all(|&s| s == Status::Converged),
            "{what}: {:?}",
            got.solution.status
        );
        // As `check_infinite`: both within tol gamma / (1 - gamma) of the fixed point, plus
        // f32 rounding; the soft policy carries the value gap times 1 / alpha.
        let scale = scale(&truth.solution.values);
        let value_tol = 2.0 * tol * gamma / (1.0 - gamma) + 1e-5 * scale;
        let prob_tol = if alpha == 0.0 {
            1e-9
        } else {
            value_tol / alpha.min(1.0)
        };
        compare(&what, &got, &truth, value_tol, prob_tol);
        let gap = bellman_gap(&mdp, &o, &got.solution.values);
        let bound = 2.0 * tol.max(1e-6 * scale) + 1e-5 * scale;
        assert!(gap <= bound, "{what}: |T V - V| = {gap:e} > {bound:e}");
    }
    // Bits (Q is NaN on terminal states): any thread count, and task 1 alone as in the batch.
    let o = infinite(0.5, 0.95, Backup::Expected, 1e-4);
    let solve = |mdp: &TabularMdp, threads: usize| {
        let mut solver = NativeSolver::new(None);
        solver.threads = threads;
        let got = solver.solve_mdp(mdp, &o, outputs, &mut keep_going).unwrap();
        let bits = |x: &[f32]| x.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        (bits(&got.solution.values), bits(&got.solution.q.unwrap()))
    };
    let batch = solve(&mdp, 2);
    assert!(batch == solve(&mdp, 3), "3 threads give other bits");
    let n = mdp.actions;
    let mut alone = wide_mdp(s, 1, 31);
    alone.reward = mdp.reward[s * n..2 * s * n].to_vec();
    alone.terminal = mdp.terminal[s..2 * s].to_vec();
    alone.terminal_value = mdp.terminal_value[s..2 * s].to_vec();
    alone.initial = mdp.initial[s..2 * s].to_vec();
    let one = solve(&alone, 2);
    assert!(one.0[..] == batch.0[s..2 * s], "task 1's values alone");
    assert!(one.1[..] == batch.1[s * n..2 * s * n], "task 1's Q alone");
    // Modified policy iteration: within its bound of value iteration's f64 fixed point.
    for alpha in [0.0, 1.0] {
        let tol = 1e-3;
        let o = SolveOptions {
            method: Method::MPI,
            ..infinite(alpha, 0.9, Backup::Expected, tol)
        };
        let got = native(&mdp, &o, Outputs::VALUES).solution;
        let vi = infinite(alpha, 0.9, Backup::Expected, 1e-6);
        let truth =
            softvi::engine::cpu::solve_mdp_cpu_f64(&mdp, &vi, Outputs::VALUES, &mut keep_going)
                .unwrap()
                .solution;
        for t in 0..mdp.tasks {
            assert_eq!(got.status[t], Status::Converged, "MPI alpha {alpha}");
            let err = (t * s..(t + 1) * s)
                .filter(|&i| truth.values[i].is_finite())
                .map(|i| (got.values[i] as f64 - truth.values[i]).abs())
                .fold(0.0, f64::max);
            assert!(err <= tol, "MPI alpha {alpha} task {t}: error {err:e}");
        }
    }
}
