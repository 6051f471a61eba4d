//! Trajectories drawn from a solve's soft-optimal policy: the start from the MDP's `initial`,
//! each action from `pi_t(.|s)`, each successor from `P(.|s,a)`. Every (task, episode) has its
//! own random stream derived from the seed, so results do not depend on threads or batch
//! order; for one seed they are reproducible given the same policy (the GPU's f32 policy and
//! the CPU reference's may round a draw differently).

use crate::analysis::render::POLICY_ROW_TOLERANCE;
use std::ops::ControlFlow;

use crate::error::{Error, Result, bail, ensure};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::world::mdp::TabularMdp;

/// Marks "after termination" in [`Samples`].
pub const ENDED: i32 = -1;

/// Sampled trajectories of every task.
#[derive(Clone, Debug, PartialEq)]
pub struct Samples {
    /// Tasks B.
    pub tasks: usize,
    /// Episodes per task N.
    pub episodes: usize,
    /// Steps per episode T.
    pub steps: usize,
    /// Visited states, `[task][episode][t]` (T + 1 per episode); [`ENDED`] after the state where
    /// the episode stopped.
    pub states: Vec<i32>,
    /// Actions taken, `[task][episode][t]` (T per episode); [`ENDED`] from the stopping state
    /// on.
    pub actions: Vec<i32>,
}

/// Bytes of the [`Samples`] of `tasks` x `episodes` x `steps` (states and actions, i32),
/// saturating rather than wrapping.
pub fn samples_bytes(tasks: usize, episodes: usize, steps: usize) -> u64 {
    let per_episode = (steps as u128).saturating_mul(2).saturating_add(1);
    let bytes = (tasks as u128)
        .saturating_mul(episodes as u128)
        .saturating_mul(per_episode)
        .saturating_mul(4);
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

/// The random stream of one episode: SplitMix64 of (seed, task, episode).
pub(crate) fn episode_rng(seed: u64, task: usize, episode: usize) -> StdRng {
    let mut z = seed
        ^ (task as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (episode as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

/// The index drawn from non-negative `weights` by `u` in [0, 1) (inverse CDF over their sum);
/// `None` when they hold no mass (or a NaN).
pub(crate) fn draw(weights: impl Iterator<Item = f64> + Clone, u: f64) -> Option<usize> {
    let total: f64 = weights.clone().sum();
    if total.is_nan() || total <= 0.0 {
        return None;
    }
    let target = u * total;
    let mut acc = 0.0;
    let mut last = None;
    for (i, w) in weights.enumerate() {
        if w > 0.0 {
            last = Some(i);
            acc += w;
            if target < acc {
                return Some(i);
            }
        }
    }
    last
}

/// Checks every row of `policy` (`[task][t][state][action]` with `steps` time steps, or
/// `[task][state][action]` with `steps` = 1, `actions` per row) as `render` does: a row is all
/// NaN (no policy there: terminal, unreachable) or probabilities in [0, 1] summing to 1 within
/// [`POLICY_ROW_TOLERANCE`]. Sampling and the likelihoods would otherwise renormalise, clip,
/// or pick the last action silently. The error names the row `[task, t, state]`.
pub fn check_policy_rows(
    policy: &[f32],
    steps: usize,
    states: usize,
    actions: usize,
) -> Result<()> {
    if actions == 0 {
        return Ok(());
    }
    let at = |row: usize| {
        let (task, rest) = (row / (steps * states), row % (steps * states));
        match steps {
            1 => format!("[task {task}, state {rest}]"),
            _ => format!(
                "[task {task}, t {}, state {}]",
                rest / states,
                rest % states
            ),
        }
    };
    for (row, pi) in policy.chunks_exact(actions).enumerate() {
        if pi.iter().all(|x| x.is_nan()) {
            continue;
        }
        if let Some((a, x)) = pi
            .iter()
            .enumerate()
            .find(|(_, x)| !(0.0..=1.0).contains(*x))
        {
            bail!(
                "the policy at {} has pi(action {a}) = {x}, not a probability in [0, 1] (a row \
                 is all NaN where there is no policy)",
                at(row)
            );
        }
        let sum: f64 = pi.iter().map(|&x| x as f64).sum();
        ensure!(
            (sum - 1.0).abs() <= POLICY_ROW_TOLERANCE,
            "the policy at {} sums to {sum}, not 1 (tolerance {POLICY_ROW_TOLERANCE})",
            at(row)
        );
    }
    Ok(())
}

/// Draws `episodes` trajectories of `steps` steps per task of `mdp` from `policy`:
/// `[task][t][state][action]` with `policy_steps` >= `steps` time steps (a finite-horizon
/// solve's `pi_0..pi_{T-1}`), or `[task][state][action]` with `policy_steps` = 1 (stationary).
/// An episode stops at a terminal state, or at a state without a policy (no terminal reachable
/// at gamma = 1).
pub fn sample(
    mdp: &TabularMdp,
    policy: &[f32],
    policy_steps: usize,
    episodes: usize,
    steps: usize,
    seed: u64,
) -> Result<Samples> {
    sample_until(
        mdp,
        policy,
        policy_steps,
        episodes,
        steps,
        seed,
        &mut || ControlFlow::Continue(()),
    )
}

/// [`sample`], asking `stop` before each episode whether to go on: a `Break` (Ctrl-C in
/// Python) ends it with [`Error::Cancelled`] within one episode.
pub fn sample_until(
    mdp: &TabularMdp,
    policy: &[f32],
    policy_steps: usize,
    episodes: usize,
    steps: usize,
    seed: u64,
    stop: &mut dyn FnMut() -> ControlFlow<()>,
) -> Result<Samples> {
    mdp.validate()?;
    let (s_n, a_n, b_n) = (mdp.states, mdp.actions, mdp.tasks);
    ensure!(
        [policy_steps, s_n, a_n]
            .iter()
            .try_fold(b_n, |acc, &d| acc.checked_mul(d))
            == Some(policy.len()),
        "the policy holds {} numbers, not tasks x steps x states x actions = {b_n} x \
         {policy_steps} x {s_n} x {a_n}",
        policy.len()
    );
    ensure!(
        policy_steps == 1 || policy_steps >= steps,
        "--steps {steps} is longer than the horizon's {policy_steps} policy steps"
    );
    check_policy_rows(policy, policy_steps, s_n, a_n)?;
    crate::engine::memory::ensure_fits(samples_bytes(b_n, episodes, steps), || {
        format!("{b_n} task(s) x {episodes} episodes x {steps} steps of samples")
    })?;
    let mut states = vec![ENDED; b_n * episodes * (steps + 1)];
    let mut actions = vec![ENDED; b_n * episodes * steps];
    for task in 0..b_n {
        let initial = &mdp.initial[task * s_n..(task + 1) * s_n];
        for episode in 0..episodes {
            if stop().is_break() {
                return Err(Error::Cancelled { sweeps: 0 });
            }
            let mut rng = episode_rng(seed, task, episode);
            let row = task * episodes + episode;
            let visited = &mut states[row * (steps + 1)..(row + 1) * (steps + 1)];
            let taken = &mut actions[row * steps..(row + 1) * steps];
            let u: f64 = rng.random();
            let Some(mut s) = draw(initial.iter().copied(), u) else {
                continue;
            };
            visited[0] = s as i32;
            for t in 0..steps {
                if mdp.terminal[task * s_n + s] {
                    break;
                }
                let step = if policy_steps == 1 { 0 } else { t };
                let pi = &policy[((task * policy_steps + step) * s_n + s) * a_n..][..a_n];
                let (u_action, u_next): (f64, f64) = (rng.random(), rng.random());
                let Some(a) = draw(pi.iter().map(|&p| p as f64), u_action) else {
                    break;
                };
                let entries = mdp.csr().indptr[s * a_n + a] as usize
                    ..mdp.csr().indptr[s * a_n + a + 1] as usize;
                let next = draw(entries.clone().map(|k| mdp.csr().probs[k]), u_next)
                    .expect("transition rows hold mass");
                s = mdp.csr().indices[entries.start + next] as usize;
                taken[t] = a as i32;
                visited[t + 1] = s as i32;
            }
        }
    }
    Ok(Samples {
        tasks: b_n,
        episodes,
        steps,
        states,
        actions,
    })
}

/// The transitions of `samples` (drawn on `mdp`) as a soft Q-learning dataset: one dataset
/// per task, entry `episode * T + t` holding step t of the episode, [`NO_SAMPLE`] padding
/// after the episode stopped; `r = R(s,a)` of the task, `done` where `s'` is terminal.
///
/// [`NO_SAMPLE`]: crate::qlearn::NO_SAMPLE
pub fn transitions(mdp: &TabularMdp, samples: &Samples) -> Result<crate::qlearn::Dataset> {
    use crate::qlearn::NO_SAMPLE;
    let (b_n, n, t_n) = (samples.tasks, samples.episodes, samples.steps);
    ensure!(
        b_n == mdp.tasks,
        "samples of {b_n} tasks, an MDP of {}",
        mdp.tasks
    );
    let length = n * t_n;
    let mut data = crate::qlearn::Dataset {
        states: mdp.states,
        actions: mdp.actions,
        datasets: b_n,
        length,
        s: vec![NO_SAMPLE; b_n * length],
        a: vec![NO_SAMPLE; b_n * length],
        r: vec![0.0; b_n * length],
        s_next: vec![NO_SAMPLE; b_n * length],
        done: vec![false; b_n * length],
    };
    for task in 0..b_n {
        for episode in 0..n {
            let row = task * n + episode;
            for t in 0..t_n {
                let action = samples.actions[row * t_n + t];
                if action == ENDED {
                    break;
                }
                let (s, next) = (
                    samples.states[row * (t_n + 1) + t] as usize,
                    samples.states[row * (t_n + 1) + t + 1] as usize,
                );
                let i = task * length + episode * t_n + t;
                data.s[i] = s as i64;
                data.a[i] = action as i64;
                data.s_next[i] = next as i64;
                data.r[i] = mdp.reward[(task * mdp.states + s) * mdp.actions + action as usize];
                data.done[i] = mdp.terminal[task * mdp.states + next];
            }
        }
    }
    Ok(data)
}
