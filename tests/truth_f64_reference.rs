//! The f64 reference is f64 end to end: a model given in f64 is solved on its own f64 entries
//! (not on a float32 rounding of them), its soft policies stay soft at any |Q| f64 resolves,
//! and its occupancy keeps the start's mass. Checked against a dense recurrence written here
//! on the same f64 arrays, and against closed forms.

mod common;

use std::collections::HashMap;

use common::array;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use softvi::engine::cpu::solve_mdp_cpu_f64;
use softvi::engine::schedule::keep_going;
use softvi::world::mdp::TabularMdp;
use softvi::{Horizon, MdpEngine, Outputs, SolveOptions, solve_mdp_cpu};

const EVERYTHING: Outputs = Outputs {
    policy: true,
    q: true,
    all_steps: true,
    occupancy: true,
};

fn finite(alpha: f64, gamma: f64, horizon: u32) -> SolveOptions {
    SolveOptions {
        alpha,
        gamma,
        horizon: Horizon::Finite(horizon),
        ..SolveOptions::default()
    }
}

/// The arrays of a random dense MDP whose probabilities and rewards are not float32 values
/// (rows of thirds and sevenths, rewards `N(0, 10)`-like), `P [S,A,S]`, `R [B,S,A]`, with
/// state `2t + 1` terminal (value `t - 0.3`) in task t when `terminals`.
fn random_arrays(
    s: usize,
    a: usize,
    b: usize,
    terminals: bool,
    seed: u64,
) -> HashMap<String, softvi::io::npy::NpyValues> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut p = vec![0.0; s * a * s];
    for row in p.chunks_exact_mut(s) {
        for x in row.iter_mut() {
            if rng.random_bool(0.4) {
                *x = [1.0, 3.0, 7.0][rng.random_range(0..3usize)];
            }
        }
        row[rng.random_range(0..s)] += 1.0;
        let total: f64 = row.iter().sum();
        row.iter_mut().for_each(|x| *x /= total);
    }
    let r: Vec<f64> = (0..b * s * a)
        .map(|_| 10.0 * (rng.random::<f64>() - 0.5) + 1.0 / 3.0)
        .collect();
    let mut arrays = HashMap::from([
        ("P".to_owned(), array(vec![s, a, s], p)),
        ("R".to_owned(), array(vec![b, s, a], r)),
    ]);
    if terminals {
        let (mut flag, mut value) = (vec![0.0; b * s], vec![0.0; b * s]);
        for t in 0..b {
            flag[t * s + 2 * t + 1] = 1.0;
            value[t * s + 2 * t + 1] = t as f64 - 0.3;
        }
        arrays.insert("terminal".into(), array(vec![b, s], flag));
        arrays.insert("terminal_value".into(), array(vec![b, s], value));
    }
    arrays
}

/// Finite-horizon soft value iteration and the forward messages of task `t`, written from the
/// contract on the arrays as given: `V_T` the terminal values (0 elsewhere), `Q_t = r + gamma P
/// V_{t+1}`, `V_t = alpha log sum exp(Q_t / alpha)` off terminals, `pi_t = exp((Q_t - V_t) /
/// alpha)`, `D_0` the start (uniform over non-terminal states), `D_{t+1} = gamma sum D_t pi_t
/// P` where terminal states pass nothing on. Returns `V [T+1][S]`, `Q` and `pi` `[T][S][A]`, `D
/// [T+1][S]`.
#[allow(clippy::type_complexity)]
fn recurrence(
    arrays: &HashMap<String, softvi::io::npy::NpyValues>,
    t: usize,
    o: &SolveOptions,
) -> (Vec<Vec<f64>>, Vec<Vec<f64>>, Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let p = &arrays["P"];
    let (s_n, a_n) = (p.shape[0], p.shape[1]);
    let r = &arrays["R"].data[t * s_n * a_n..(t + 1) * s_n * a_n];
    let terminal: Vec<bool> = match arrays.get("terminal") {
        Some(x) => x.data[t * s_n..(t + 1) * s_n]
            .iter()
            .map(|&f| f != 0.0)
            .collect(),
        None => vec![false; s_n],
    };
    let value_at_end = |s: usize| match arrays.get("terminal_value") {
        Some(x) if terminal[s] => x.data[t * s_n + s],
        _ => 0.0,
    };
    let horizon = o.horizon.finite_steps();
    let mut v = vec![(0..s_n).map(value_at_end).collect::<Vec<f64>>()];
    let (mut q_steps, mut pi_steps) = (Vec::new(), Vec::new());
    for _ in 0..horizon {
        let next = v.last().unwrap().clone();
        let mut q = vec![f64::NAN; s_n * a_n];
        let mut pi = vec![f64::NAN; s_n * a_n];
        let mut now = next.clone();
        for s in (0..s_n).filter(|&s| !terminal[s]) {
            for a in 0..a_n {
                let row = &p.data[(s * a_n + a) * s_n..(s * a_n + a + 1) * s_n];
                let expected: f64 = row.iter().zip(&next).map(|(x, v)| x * v).sum();
                q[s * a_n + a] = r[s * a_n + a] + o.gamma * expected;
            }
            let qs = &q[s * a_n..(s + 1) * a_n];
            let top = qs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = qs.iter().map(|x| ((x - top) / o.alpha).exp()).sum();
            now[s] = top + o.alpha * sum.ln();
            for a in 0..a_n {
                pi[s * a_n + a] = ((q[s * a_n + a] - now[s]) / o.alpha).exp();
            }
        }
        v.push(now);
        q_steps.push(q);
        pi_steps.push(pi);
    }
    v.reverse();
    q_steps.reverse();
    pi_steps.reverse();
    let free = terminal.iter().filter(|&&x| !x).count() as f64;
    let mut d = vec![
        (0..s_n)
            .map(|s| if terminal[s] { 0.0 } else { 1.0 / free })
            .collect::<Vec<f64>>(),
    ];
    for pi in &pi_steps {
        let mut next = vec![0.0; s_n];
        for s in (0..s_n).filter(|&s| !terminal[s]) {
            for a in 0..a_n {
                let row = &p.data[(s * a_n + a) * s_n..(s * a_n + a + 1) * s_n];
                for (j, x) in row.iter().enumerate() {
                    next[j] += o.gamma * d.last().unwrap()[s] * pi[s * a_n + a] * x;
                }
            }
        }
        d.push(next);
    }
    (v, q_steps, pi_steps, d)
}

/// Largest |got - want| over entries that are not NaN in `want`, relative to the largest
/// |want|; NaN must stand where `want` has NaN.
fn relative_gap(what: &str, got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want
        .iter()
        .filter(|x| x.is_finite())
        .fold(1e-300f64, |m, x| m.max(x.abs()));
    let mut worst = 0.0f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() {
            assert!(g.is_nan(), "{what}[{i}]: {g}, want NaN");
        } else {
            worst = worst.max((g - w).abs() / scale);
        }
    }
    worst
}

/// V, Q, pi and D of every step, every task, on an MDP given in f64 (probabilities that float32
/// cannot hold), against the recurrence on the same arrays. The reference computes in f64 on
/// the given entries, so they agree to f64 rounding: 1e-12 relative (a 40-step sum of products
/// of O(10) terms loses a few hundred ulps at most). Before the model kept its f64 entries it
/// stored them as float32 and missed by ~1e-7.
#[test]
fn f64_inputs_give_f64_results() {
    let (s, a, b) = (23, 4, 3);
    for (terminals, gamma, alpha) in [(true, 0.97, 0.7), (false, 1.0, 1.3), (true, 0.0, 2.0)] {
        let arrays = random_arrays(s, a, b, terminals, 26);
        let mdp = TabularMdp::from_arrays(&arrays).unwrap();
        let o = finite(alpha, gamma, 40);
        let got = solve_mdp_cpu_f64(&mdp, &o, EVERYTHING, &mut keep_going).unwrap();
        let steps = got.steps.as_ref().unwrap();
        let d = got.occupancy.as_ref().unwrap();
        for t in 0..b {
            let (v, q, pi, want_d) = recurrence(&arrays, t, &o);
            let flat = |x: &[Vec<f64>]| x.concat();
            let per_task = |all: &[f64], n: usize| all[t * n..(t + 1) * n].to_vec();
            let label = format!("terminals {terminals}, gamma {gamma}, task {t}");
            for (what, got, want) in [
                ("V", per_task(&steps.values, 41 * s), flat(&v)),
                (
                    "Q",
                    per_task(steps.q.as_ref().unwrap(), 40 * s * a),
                    flat(&q),
                ),
                (
                    "pi",
                    per_task(steps.policy.as_ref().unwrap(), 40 * s * a),
                    flat(&pi),
                ),
                ("D", per_task(&d.values, 41 * s), flat(&want_d)),
            ] {
                let gap = relative_gap(what, &got, &want);
                assert!(gap <= 1e-12, "{label}: {what} off by {gap:e}");
            }
        }
    }
}

/// With no terminal state and gamma = 1 every step of the occupancy holds the start's whole
/// mass: each D_t sums to 1 within 1e-13 (40 steps of row sums that are 1 to an ulp), so the
/// forward messages over the horizon sum to T + 1. A float32 copy of the model leaked ~1e-7
/// per step (rows of sevenths do not sum to 1 in float32).
#[test]
fn f64_occupancy_keeps_the_mass() {
    let arrays = random_arrays(31, 3, 2, false, 7);
    let mdp = TabularMdp::from_arrays(&arrays).unwrap();
    let got = solve_mdp_cpu_f64(&mdp, &finite(1.0, 1.0, 40), EVERYTHING, &mut keep_going).unwrap();
    let d = got.occupancy.unwrap();
    for (k, step) in d.values.chunks_exact(31).enumerate() {
        let sum: f64 = step.iter().sum();
        assert!(
            (sum - 1.0).abs() <= 1e-13,
            "task {}, step {}: mass {sum}",
            k / 41,
            k % 41
        );
    }
}

/// One non-terminal state with a self-loop and the given rewards per action.
fn one_state(rewards: &[f64]) -> TabularMdp {
    let a = rewards.len();
    let mut p = vec![0.0; a];
    p.fill(1.0);
    TabularMdp::from_arrays(&HashMap::from([
        ("P".to_owned(), array(vec![1, a, 1], p)),
        ("R".to_owned(), array(vec![1, a], rewards.to_vec())),
    ]))
    .unwrap()
}

/// The soft policy at a large |Q|. Three equal actions at temperature 1, horizon 1: the policy
/// is uniform whatever the reward's size, `exp(0) / 3` (closed form). On the f64 path it stays
/// so past |Q| = 1e5; results in f32 (the reference's f32 twin and the GPU) switch to the
/// hard max's one-hot below alpha = 1e-5 max(1, |max Q|), their documented rule, as before.
#[test]
fn f64_policies_stay_soft_at_large_q() {
    let o = finite(1.0, 1.0, 1);
    let third = [1.0 / 3.0; 3];
    for reward in [-99_999.0, -100_001.0, -1e9] {
        let mdp = one_state(&[reward; 3]);
        let got = solve_mdp_cpu_f64(&mdp, &o, Outputs::default(), &mut keep_going).unwrap();
        let pi = got.solution.policy.unwrap();
        assert!(
            pi.iter().zip(&third).all(|(p, w)| (p - w).abs() <= 1e-15),
            "reward {reward}: f64 policy {pi:?}"
        );
        let f32_twin = solve_mdp_cpu(&mdp, &o, Outputs::default()).unwrap();
        let want: &[f32] = if reward > -1e5 {
            &[1.0 / 3.0; 3]
        } else {
            &[1.0, 0.0, 0.0]
        };
        let pi32 = f32_twin.solution.policy.unwrap();
        assert!(
            pi32.iter().zip(want).all(|(p, w)| (p - w).abs() <= 1e-6),
            "reward {reward}: f32 policy {pi32:?}, want {want:?}"
        );
        if let Some(ctx) = common::gpu() {
            let gpu = MdpEngine::new(ctx)
                .unwrap()
                .solve(&mdp, &o, Outputs::default())
                .unwrap();
            let pi_gpu = gpu.solution.policy.unwrap();
            assert!(
                pi_gpu.iter().zip(want).all(|(p, w)| (p - w).abs() <= 1e-6),
                "reward {reward}: GPU policy {pi_gpu:?}, want {want:?}"
            );
        }
    }
}

/// A per-step reward of -2,000 over 100 steps with the two actions' Q 0.5 apart: |Q| ~ 2e5 and
/// pi = (1, e^-0.5) / (1 + e^-0.5) = [0.6225, 0.3775] at every step (the values differ only
/// by the reward, the next value being shared). The f64 path keeps it within 1e-12; the f32
/// rule would give [1, 0].
#[test]
fn f64_policy_at_q_of_two_hundred_thousand() {
    let mdp = one_state(&[-2_000.0, -2_000.5]);
    let got = solve_mdp_cpu_f64(&mdp, &finite(1.0, 1.0, 100), EVERYTHING, &mut keep_going).unwrap();
    let steps = got.steps.unwrap();
    let want = [1.0 / (1.0 + (-0.5f64).exp()), 1.0 / (1.0 + 0.5f64.exp())];
    for (t, row) in steps.policy.unwrap().chunks_exact(2).enumerate() {
        assert!(
            (row[0] - want[0]).abs() <= 1e-12 && (row[1] - want[1]).abs() <= 1e-12,
            "step {t}: {row:?}, want {want:?}"
        );
    }
    // V_0 = 100 (-2000 + log(1 + e^-0.5)) in closed form.
    let v0 = 100.0 * (-2_000.0 + (1.0 + (-0.5f64).exp()).ln());
    assert!(
        (steps.values[0] - v0).abs() <= 1e-12 * v0.abs(),
        "{}",
        steps.values[0]
    );
}
