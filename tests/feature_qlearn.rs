//! `softvi::qlearn` (soft Q-learning from a dataset) against truths written here: the
//! empirical MDP built with plain loops and solved by a dense soft value iteration, hard fitted
//! Q iteration over the samples themselves at alpha = 0, the true soft Q of a small slippery
//! grid as the samples per pair grow, and the GPU against the CPU reference.

mod common;

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use softvi::qlearn::{Dataset, LearnedQ, NO_SAMPLE, empirical_mdp, qlearn};
use softvi::{
    ActionSet, Connectivity, CpuReference, GpuSolver, Grid, GridMdp, GridProblem, GridTask,
    Horizon, MdpSolver, MoveCost, Outputs, SolveOptions, Status, keep_going,
};

fn options(alpha: f64, gamma: f64) -> SolveOptions {
    SolveOptions {
        alpha,
        gamma,
        horizon: Horizon::Infinite {
            tol: 1e-6,
            max_iters: 100_000,
        },
        ..SolveOptions::default()
    }
}

/// A random dataset over S states and A actions, B datasets of N entries: states 0..S-2 are
/// visited with a random subset of their actions (about a third unseen, one always seen),
/// state S-1 only ever as a successor (no data: no value), a tenth of the transitions done,
/// rewards noisy around a per-pair mean, and the last entries of dataset 1 padding.
fn random_dataset(s_n: usize, a_n: usize, b_n: usize, n: usize, seed: u64) -> Dataset {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = Dataset {
        states: s_n,
        actions: a_n,
        datasets: b_n,
        length: n,
        s: vec![NO_SAMPLE; b_n * n],
        a: vec![NO_SAMPLE; b_n * n],
        r: vec![0.0; b_n * n],
        s_next: vec![NO_SAMPLE; b_n * n],
        done: vec![false; b_n * n],
    };
    for b in 0..b_n {
        let seen: Vec<Vec<bool>> = (0..s_n)
            .map(|_| {
                (0..a_n)
                    .map(|a| a == 0 || rng.random_range(0.0..1.0) < 0.66)
                    .collect()
            })
            .collect();
        let filled = if b == 1 { n - n / 5 } else { n };
        for i in b * n..b * n + filled {
            let s = rng.random_range(0..s_n - 1);
            let open: Vec<usize> = (0..a_n).filter(|&a| seen[s][a]).collect();
            let a = open[rng.random_range(0..open.len())];
            // A few successors per pair, the no-data state among them now and then.
            let next = (s * 7 + a * 3 + rng.random_range(0..3usize) * (b + 1)) % s_n;
            data.s[i] = s as i64;
            data.a[i] = a as i64;
            data.s_next[i] = next as i64;
            data.r[i] = -(((s + a) % 4) as f64) * 0.25 + rng.random_range(-0.5..0.5);
            data.done[i] = rng.random_range(0.0..1.0) < 0.1;
        }
    }
    data
}

/// The empirical MDP written here with plain loops: dense `P[b][s][a][s']` over S + 1 states
/// (the last absorbing, value 0, the successor of done transitions), mean rewards, the seen
/// pairs.
struct Dense {
    p: Vec<f64>,
    r: Vec<f64>,
    seen: Vec<bool>,
}

fn dense_empirical(data: &Dataset) -> Dense {
    let (s_n, a_n, b_n) = (data.states, data.actions, data.datasets);
    let end = s_n; // the absorbing state
    let mut count = vec![0.0; b_n * s_n * a_n];
    let mut r = vec![0.0; b_n * s_n * a_n];
    let mut p = vec![0.0; b_n * s_n * a_n * (s_n + 1)];
    for b in 0..b_n {
        for n in 0..data.length {
            let i = b * data.length + n;
            if data.s[i] == NO_SAMPLE {
                continue;
            }
            let pair = (b * s_n + data.s[i] as usize) * a_n + data.a[i] as usize;
            let next = if data.done[i] {
                end
            } else {
                data.s_next[i] as usize
            };
            count[pair] += 1.0;
            r[pair] += data.r[i];
            p[pair * (s_n + 1) + next] += 1.0;
        }
    }
    for pair in 0..b_n * s_n * a_n {
        if count[pair] > 0.0 {
            r[pair] /= count[pair];
            for j in 0..=s_n {
                p[pair * (s_n + 1) + j] /= count[pair];
            }
        }
    }
    Dense {
        p,
        r,
        seen: count.iter().map(|&c| c > 0.0).collect(),
    }
}

/// Dense soft value iteration on `dense` over the seen pairs, `sweeps` Jacobi sweeps from 0:
/// a state with no seen pair (and the absorbing one) has value 0 as a successor. Returns Q
/// `[b][s][a]`, NaN on unseen pairs and on states without data.
fn dense_soft_q(dense: &Dense, data: &Dataset, alpha: f64, gamma: f64, sweeps: usize) -> Vec<f64> {
    let (s_n, a_n, b_n) = (data.states, data.actions, data.datasets);
    let mut v = vec![0.0; b_n * (s_n + 1)];
    let mut q = vec![f64::NAN; b_n * s_n * a_n];
    for _ in 0..sweeps {
        for b in 0..b_n {
            for s in 0..s_n {
                for a in 0..a_n {
                    let pair = (b * s_n + s) * a_n + a;
                    if !dense.seen[pair] {
                        continue;
                    }
                    let expected: f64 = (0..=s_n)
                        .map(|j| dense.p[pair * (s_n + 1) + j] * v[b * (s_n + 1) + j])
                        .sum();
                    q[pair] = dense.r[pair] + gamma * expected;
                }
            }
        }
        for b in 0..b_n {
            for s in 0..s_n {
                let row: Vec<f64> = (0..a_n)
                    .map(|a| q[(b * s_n + s) * a_n + a])
                    .filter(|x| !x.is_nan())
                    .collect();
                let top = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                v[b * (s_n + 1) + s] = if row.is_empty() {
                    0.0
                } else if alpha == 0.0 {
                    top
                } else {
                    top + alpha
                        * row
                            .iter()
                            .map(|x| ((x - top) / alpha).exp())
                            .sum::<f64>()
                            .ln()
                };
            }
        }
    }
    q
}

/// Largest |learned - truth| where the truth is a number; NaN must sit exactly where the
/// truth's does.
fn max_q_gap(what: &str, learned: &[f32], truth: &[f64]) -> f64 {
    assert_eq!(learned.len(), truth.len(), "{what}: lengths");
    let mut gap = 0.0f64;
    for (i, (&x, &t)) in learned.iter().zip(truth).enumerate() {
        assert_eq!(
            x.is_nan(),
            t.is_nan(),
            "{what}: Q[{i}] learned {x}, truth {t}"
        );
        if !t.is_nan() {
            gap = gap.max((x as f64 - t).abs());
        }
    }
    gap
}

fn learn(solver: &mut dyn MdpSolver, data: &Dataset, o: &SolveOptions) -> LearnedQ {
    let learned = qlearn(solver, data, o, &mut keep_going).unwrap();
    assert_eq!(learned.status, Status::Converged);
    learned
}

#[test]
fn q_is_soft_value_iteration_on_the_empirical_mdp() {
    // 23 states, 5 actions, 2 datasets of 3001 entries (sizes off the 64-wide workgroup).
    let data = random_dataset(23, 5, 2, 3001, 7);
    let dense = dense_empirical(&data);
    let mut gpu = common::gpu().map(|ctx| GpuSolver::new(ctx.clone()));
    for (alpha, gamma) in [(0.5, 0.9), (2.0, 0.8), (0.0, 0.9)] {
        let what = format!("alpha {alpha} gamma {gamma}");
        let o = options(alpha, gamma);
        let cpu = learn(&mut CpuReference, &data, &o);
        // 600 dense sweeps: gamma^600 x |Q| < 1e-20.
        let truth = dense_soft_q(&dense, &data, alpha, gamma, 600);
        // The solve stops within tol = 1e-6 of its fixed point (|dQ| <= tol gamma / (1 -
        // gamma) <= 9e-6), its Q reported in f32 (|Q| < 15 here: 1e-6 abs); f32 probabilities
        // and mean rewards (relative 6e-8, times |Q| / (1 - gamma) < 150 on the fixed point):
        // 2e-5 in all.
        let gap = max_q_gap(&what, &cpu.q, &truth);
        assert!(gap <= 2e-5, "{what}: CPU max |dQ| {gap}");
        // Counts, and the states without data: S-1 never visited, and no more.
        let unseen: Vec<usize> = (0..2)
            .map(|b| {
                dense.seen[b * 23 * 5..(b + 1) * 23 * 5]
                    .iter()
                    .filter(|&&x| !x)
                    .count()
            })
            .collect();
        assert_eq!(cpu.unseen_pairs, unseen, "{what}");
        assert_eq!(cpu.states_without_data, vec![1, 1], "{what}");
        assert_eq!(cpu.samples, vec![3001, 3001 - 3001 / 5], "{what}");
        for b in 0..2 {
            assert!(
                cpu.values[b * 23 + 22].is_nan(),
                "{what}: no value without data"
            );
            assert!(
                cpu.policy[(b * 23 + 22) * 5..][..5]
                    .iter()
                    .all(|p| p.is_nan())
            );
        }
        // Unseen pairs get no policy mass; the rest of each row sums to 1.
        for (i, &p) in cpu.policy.iter().enumerate() {
            if !dense.seen[i] && !cpu.values[i / 5].is_nan() {
                assert_eq!(p, 0.0, "{what}: pi[{i}] on an unseen pair");
            }
        }
        common::assert_rows_sum_to_one(&what, &cpu.policy, 5, 1e-5);
        if let Some(gpu) = &mut gpu {
            let learned = learn(gpu, &data, &o);
            // f32 sweeps: a few ulps of |Q| < 15 per backup, accumulated over the effective
            // 1 / (1 - gamma) = 10 sweeps of memory: 1e-4 covers it with a margin of 10.
            let gap = max_q_gap(&format!("{what} GPU"), &learned.q, &truth);
            assert!(gap <= 1e-4, "{what}: GPU max |dQ| {gap}");
            assert_eq!(learned.unseen_pairs, cpu.unseen_pairs);
            let tol = if alpha == 0.0 { 1e-6 } else { 1e-4 / alpha };
            for (i, (&g, &c)) in learned.policy.iter().zip(&cpu.policy).enumerate() {
                assert!(
                    (g.is_nan() && c.is_nan()) || (g - c).abs() as f64 <= tol,
                    "{what}: pi[{i}] GPU {g}, CPU {c}"
                );
            }
        }
    }
}

#[test]
fn alpha_zero_is_hard_fitted_q_iteration() {
    // Fitted Q iteration written over the samples themselves, not an MDP:
    // Q_{k+1}(s,a) = mean over the samples of (s,a) of r + gamma (1 - done) max_a' Q_k(s',a'),
    // the max over the seen actions of s' (0 for a state without data).
    let data = random_dataset(17, 4, 1, 2000, 3);
    let (s_n, a_n, gamma) = (17, 4, 0.9);
    let mut q = vec![f64::NAN; s_n * a_n];
    for _ in 0..600 {
        let v: Vec<f64> = (0..s_n)
            .map(|s| {
                let row = q[s * a_n..(s + 1) * a_n].iter().filter(|x| !x.is_nan());
                row.fold(None, |m: Option<f64>, &x| Some(m.map_or(x, |m| m.max(x))))
                    .unwrap_or(0.0)
            })
            .collect();
        let mut sum = vec![0.0; s_n * a_n];
        let mut count = vec![0usize; s_n * a_n];
        for i in 0..data.length {
            let pair = data.s[i] as usize * a_n + data.a[i] as usize;
            let bootstrap = if data.done[i] {
                0.0
            } else {
                v[data.s_next[i] as usize]
            };
            sum[pair] += data.r[i] + gamma * bootstrap;
            count[pair] += 1;
        }
        for pair in 0..s_n * a_n {
            q[pair] = if count[pair] > 0 {
                sum[pair] / count[pair] as f64
            } else {
                f64::NAN
            };
        }
    }
    let o = options(0.0, gamma);
    let cpu = learn(&mut CpuReference, &data, &o);
    // As in q_is_soft_value_iteration_on_the_empirical_mdp: 2e-5 on the CPU, 1e-4 on the GPU.
    let gap = max_q_gap("CPU", &cpu.q, &q);
    assert!(gap <= 2e-5, "CPU max |dQ| {gap}");
    // The policy is one-hot on the first maximising seen action.
    for s in (0..s_n).filter(|&s| !cpu.values[s].is_nan()) {
        let row = &q[s * a_n..(s + 1) * a_n];
        let top = row
            .iter()
            .filter(|x| !x.is_nan())
            .fold(f64::MIN, |m, &x| m.max(x));
        let best = row.iter().position(|&x| x == top).unwrap();
        assert_eq!(cpu.policy[s * a_n + best], 1.0, "state {s}: {row:?}");
    }
    if let Some(ctx) = common::gpu() {
        let gpu = learn(&mut GpuSolver::new(ctx.clone()), &data, &o);
        let gap = max_q_gap("GPU", &gpu.q, &q);
        assert!(gap <= 1e-4, "GPU max |dQ| {gap}");
    }
}

#[test]
fn learned_q_approaches_the_true_soft_q_as_samples_grow() {
    // A 5 x 4 map with walls, 4-connected, slip 0.3 (stochastic successors), goal X=4, Y=3.
    let grid = Grid::parse_movingai(common::cli::SMALL_MAP).unwrap();
    let goal = 3 * grid.width + 4;
    let problem = GridProblem {
        tasks: vec![GridTask {
            goals: vec![goal],
            reward: None,
        }],
        actions: ActionSet {
            connectivity: Connectivity::Four,
            stay: false,
        },
        slip: 0.3,
        move_cost: MoveCost::default(),
        grid,
    };
    let world = GridMdp::new(&problem, None).unwrap();
    let mdp = &world.mdp;
    let (s_n, a_n) = (mdp.states, mdp.actions);
    let o = options(1.0, 0.9);
    let outputs = Outputs {
        q: true,
        ..Outputs::default()
    };
    let truth = CpuReference
        .solve_mdp(mdp, &o, outputs, &mut keep_going)
        .unwrap()
        .solution
        .q
        .unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let mut table = Vec::new();
    for per_pair in [1_000usize, 10_000, 100_000] {
        // Every pair of every non-terminal state, `per_pair` successors drawn from P(.|s,a).
        let open: Vec<usize> = (0..s_n).filter(|&s| !mdp.terminal[s]).collect();
        let n = open.len() * a_n * per_pair;
        let mut data = Dataset {
            states: s_n,
            actions: a_n,
            datasets: 1,
            length: n,
            s: Vec::with_capacity(n),
            a: Vec::with_capacity(n),
            r: Vec::with_capacity(n),
            s_next: Vec::with_capacity(n),
            done: Vec::with_capacity(n),
        };
        for &s in &open {
            for a in 0..a_n {
                let row = s * a_n + a;
                let entries = mdp.csr().indptr[row] as usize..mdp.csr().indptr[row + 1] as usize;
                for _ in 0..per_pair {
                    let u: f64 = rng.random_range(0.0..1.0);
                    let mut acc = 0.0;
                    let mut next = mdp.csr().indices[entries.end - 1] as usize;
                    for k in entries.clone() {
                        acc += mdp.csr().probs[k] as f64;
                        if u < acc {
                            next = mdp.csr().indices[k] as usize;
                            break;
                        }
                    }
                    data.s.push(s as i64);
                    data.a.push(a as i64);
                    data.r.push(mdp.reward[row] as f64);
                    data.s_next.push(next as i64);
                    data.done.push(mdp.terminal[next]);
                }
            }
        }
        let learned = learn(&mut CpuReference, &data, &o);
        // Only the goal's pairs: no data leaves the terminal state.
        assert_eq!(learned.unseen_pairs, vec![a_n]);
        let mut error = 0.0f64;
        for &s in &open {
            for a in 0..a_n {
                let i = s * a_n + a;
                error = error.max((learned.q[i] as f64 - truth[i] as f64).abs());
            }
        }
        table.push((per_pair, error));
    }
    println!("samples per pair | max |Q_learned - Q_true| (5x4 map, slip 0.3, alpha 1, gamma 0.9)");
    for (n, e) in &table {
        println!("{n:>16} | {e:.3e}");
    }
    // The error is a sum of transition-frequency errors, each ~ 1/sqrt(N): 100x the samples
    // shrink it ~10x. Asking for 5x leaves room for the max over 60 pairs fluctuating.
    assert!(
        table[2].1 < table[0].1 / 5.0,
        "error did not shrink like 1/sqrt(N): {table:?}"
    );
    assert!(
        table[1].1 < table[0].1 && table[2].1 < table[1].1,
        "{table:?}"
    );
}

#[test]
fn the_empirical_mdp_lays_datasets_side_by_side() {
    // Two datasets over 3 states, 2 actions: their supports differ; each is a block of the one
    // task, done transitions step into the sink at 2 * 3 = 6.
    let arrays = HashMap::from([
        (
            "s".to_owned(),
            common::array(vec![2, 3], vec![0., 0., 1., 2., 2., -1.]),
        ),
        (
            "a".to_owned(),
            common::array(vec![2, 3], vec![0., 0., 1., 1., 1., -1.]),
        ),
        (
            "r".to_owned(),
            common::array(vec![2, 3], vec![1., 3., 0., -1., -1., 0.]),
        ),
        (
            "s_next".to_owned(),
            common::array(vec![2, 3], vec![1., 2., 0., 0., 0., -1.]),
        ),
        (
            "done".to_owned(),
            common::array(vec![2, 3], vec![0., 0., 1., 0., 1., 0.]),
        ),
    ]);
    let data = Dataset::from_arrays(&arrays, 3, 2).unwrap();
    let e = empirical_mdp(&data).unwrap();
    let m = &e.mdp;
    assert_eq!((m.states, m.tasks, e.sink()), (7, 1, 6));
    assert_eq!(m.probability(0, 0, 1), 0.5);
    assert_eq!(m.probability(0, 0, 2), 0.5);
    assert_eq!(m.reward[0], 2.0);
    assert_eq!(m.reward[1], f64::NEG_INFINITY, "(0, 1) unseen");
    assert_eq!(m.probability(1, 1, 6), 1.0, "done: into the sink");
    assert_eq!(m.probability(3 + 2, 1, 3), 0.5, "dataset 1, state 2");
    assert_eq!(m.probability(3 + 2, 1, 6), 0.5);
    // Dataset 1 has no data on its states 0 and 1, dataset 0 none on 2: terminal (value 0).
    assert_eq!(
        m.terminal,
        vec![false, false, true, true, true, false, true]
    );
    assert_eq!(e.counts, vec![2, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2]);
}

#[test]
fn bad_datasets_are_refused_naming_the_array_and_entry() {
    let good = || {
        HashMap::from([
            (
                "s".to_owned(),
                common::array(vec![2, 2], vec![0., 1., 1., -1.]),
            ),
            (
                "a".to_owned(),
                common::array(vec![2, 2], vec![0., 1., 1., -1.]),
            ),
            (
                "r".to_owned(),
                common::array(vec![2, 2], vec![0., 1., 1., 0.]),
            ),
            (
                "s_next".to_owned(),
                common::array(vec![2, 2], vec![1., 0., 0., -1.]),
            ),
        ])
    };
    assert!(Dataset::from_arrays(&good(), 2, 2).is_ok());
    let refused = |name: &str, index: usize, value: f64, needle: &str| {
        let mut arrays = good();
        arrays.get_mut(name).unwrap().data[index] = value;
        let err = Dataset::from_arrays(&arrays, 2, 2).unwrap_err().to_string();
        assert!(err.contains(needle), "{name}[{index}] = {value}: {err}");
        assert!(matches!(
            Dataset::from_arrays(&arrays, 2, 2),
            Err(softvi::Error::InvalidInput(_))
        ));
    };
    refused("s", 2, 2.0, "s[1, 0] = 2 is not a state (states = 2)");
    refused("a", 1, 5.0, "a[0, 1] = 5 is not an action (actions = 2)");
    refused("s_next", 0, -3.0, "s_next[0, 0] = -3 is not a state");
    refused("s", 1, 0.5, "s[0, 1] = 0.5 is not an integer");
    // A uint64 2^64 - 1 as the npy reader holds it: not the saturated 2^63 - 1.
    refused(
        "s_next",
        1,
        u64::MAX as f64,
        "s_next[0, 1] = 1.8446744073709552e19 is past int64",
    );
    refused("a", 0, -1e19, "a[0, 0] = -1e19 is past int64");
    refused("r", 0, f64::NAN, "r[0, 0] = NaN is not finite");
    refused("a", 3, 0.0, "s[1, 1] = -1 marks no sample, but a[1, 1] = 0");
    let mut arrays = good();
    arrays.insert(
        "done".into(),
        common::array(vec![2, 2], vec![0., 2., 0., 0.]),
    );
    let err = Dataset::from_arrays(&arrays, 2, 2).unwrap_err().to_string();
    assert!(err.contains("done[0, 1] = 2 is not 0 or 1"), "{err}");
    let mut arrays = good();
    arrays.remove("s_next");
    let err = Dataset::from_arrays(&arrays, 2, 2).unwrap_err().to_string();
    assert!(err.contains("missing array \"s_next\""), "{err}");
    let mut arrays = good();
    arrays.insert("r".into(), common::array(vec![4], vec![0.; 4]));
    let err = Dataset::from_arrays(&arrays, 2, 2).unwrap_err().to_string();
    assert!(err.contains("r has shape [4], s [2, 2]"), "{err}");
    let mut arrays = good();
    for name in ["s", "a", "s_next"] {
        let x = &mut arrays.get_mut(name).unwrap().data;
        x[2] = -1.0;
    }
    let err = Dataset::from_arrays(&arrays, 2, 2).unwrap_err().to_string();
    assert!(err.contains("dataset 1 holds no sample"), "{err}");
}
