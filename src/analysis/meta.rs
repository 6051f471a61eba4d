//! Meta-RL as inference over a latent task: a task z is drawn from a prior, the agent does not
//! know it, infers `q(z | c)` from its own experience `c = {(s, a, r, s', terminated)}` and
//! acts with the soft-optimal policy of a task sampled from that posterior at the start of
//! each episode (posterior sampling, as PEARL does). In the tabular case the posterior is
//! exact and every `pi_z` comes from one batched solve.
//!
//! Each true task z* (of [`MetaOptions::eval_tasks`]) is run `trials` times for `episodes`
//! episodes by three agents on their own random streams: posterior sampling, an oracle that
//! acts with `pi_{z*}`, and a prior-only agent that samples z from the prior every episode.
//! An episode's return is undiscounted: the rewards `r_{z*}(s_t, a_t)` plus the terminal value
//! of the state that ended it. The runs' posteriors are updated after every episode in one
//! dispatch (`observe` in `shaders/task_posterior.wgsl`) or by its CPU twin.

use rand::RngExt;
use rand::rngs::StdRng;

use crate::analysis::infer::log_prior;
use crate::analysis::sample::{draw, episode_rng};
use crate::engine::cpu::task_posterior::{normalize, observe};
use crate::engine::gpu::{GpuContext, MetaPosterior};
use crate::engine::layout::{ObservedStep, TaskEvidence};
use crate::error::{Result, ensure};
use crate::world::mdp::TabularMdp;

/// What a meta-RL evaluation runs.
#[derive(Clone, Debug, PartialEq)]
pub struct MetaOptions {
    /// Episodes K per trial.
    pub episodes: usize,
    /// Steps T per episode at most.
    pub steps: usize,
    /// Independent trials M per true task.
    pub trials: usize,
    /// Seed of every draw.
    pub seed: u64,
    /// The true tasks z* evaluated (indices into the batch).
    pub eval_tasks: Vec<usize>,
    /// Prior `p(z)`, `[task]`: non-negative, not all 0 (normalised here).
    pub prior: Vec<f64>,
    /// `None`: rewards observed exactly; `Some(sigma)`: with Gaussian noise (value units).
    pub reward_noise: Option<f64>,
}

/// Mean and standard error of a quantity per episode index, over the runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Curve {
    /// `[episode]`.
    pub mean: Vec<f64>,
    /// Standard error of the mean, `[episode]`.
    pub standard_error: Vec<f64>,
}

impl Curve {
    /// The curve of `values` `[run][episode]`.
    fn of(values: &[f64], episodes: usize) -> Self {
        let runs = values.len() / episodes.max(1);
        let column = |k: usize| values.iter().skip(k).step_by(episodes).copied();
        let mean: Vec<f64> = (0..episodes)
            .map(|k| column(k).sum::<f64>() / runs as f64)
            .collect();
        let standard_error = (0..episodes)
            .map(|k| {
                let m = mean[k];
                let var = column(k).map(|x| (x - m).powi(2)).sum::<f64>()
                    / (runs.saturating_sub(1).max(1)) as f64;
                (var / runs as f64).sqrt()
            })
            .collect();
        Self {
            mean,
            standard_error,
        }
    }
}

/// What [`meta_rl`] measured.
#[derive(Clone, Debug, PartialEq)]
pub struct MetaReport {
    /// Runs per agent: true tasks x trials.
    pub runs: usize,
    /// Return per episode of posterior sampling.
    pub posterior_sampling: Curve,
    /// Return per episode of the oracle that knows z*.
    pub oracle: Curve,
    /// Return per episode of the agent that samples z from the prior every episode.
    pub prior_only: Curve,
    /// Posterior mass on z* after each episode's update (posterior sampling's runs).
    pub mass_on_true_task: Curve,
}

/// Where the runs' posteriors are updated.
pub enum PosteriorDevice<'a> {
    /// The CPU twin (f64).
    Cpu,
    /// `observe` and `normalize` on this adapter.
    Gpu(&'a GpuContext),
}

/// The runs' posteriors on one device: the joints `[run][task]` and one update per episode.
enum RunPosteriors {
    Cpu {
        evidence: TaskEvidence,
        steps: usize,
        joint: Vec<f64>,
    },
    Gpu(Box<MetaPosterior>),
}

impl RunPosteriors {
    fn new(
        device: PosteriorDevice,
        evidence: TaskEvidence,
        runs: usize,
        steps: usize,
        log_prior: &[f32],
    ) -> Result<Self> {
        Ok(match device {
            PosteriorDevice::Cpu => RunPosteriors::Cpu {
                evidence,
                steps,
                joint: log_prior.iter().map(|&x| x as f64).collect(),
            },
            PosteriorDevice::Gpu(ctx) => RunPosteriors::Gpu(Box::new(MetaPosterior::new(
                ctx, &evidence, runs, steps, log_prior,
            )?)),
        })
    }

    /// Adds one episode per run; the posterior `[run][task]`.
    fn observe(&mut self, observed: &[ObservedStep]) -> Result<Vec<f32>> {
        match self {
            RunPosteriors::Cpu {
                evidence,
                steps,
                joint,
            } => {
                observe(evidence, observed, *steps, joint);
                Ok(normalize(joint, evidence.tasks))
            }
            RunPosteriors::Gpu(gpu) => gpu.observe(observed),
        }
    }
}

/// The agents, in the order their random streams are numbered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Agent {
    PosteriorSampling = 0,
    Oracle = 1,
    PriorOnly = 2,
}

/// The random stream of one (agent, run, episode): the sampler's episode stream of (run,
/// episode) under the seed mixed with the agent.
fn stream(seed: u64, agent: Agent, run: usize, episode: usize) -> StdRng {
    episode_rng(
        seed ^ (agent as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407),
        run,
        episode,
    )
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// One episode in the world of true task `truth`, acting with the policy of task `acting`
/// (uniform where that policy has no row: a state terminal or excluded under `acting` but
/// not under `truth`). Writes the observations into `observed` (padded with
/// [`ObservedStep::NONE`]) and returns the undiscounted return.
#[allow(clippy::too_many_arguments)]
fn episode(
    mdp: &TabularMdp,
    policy: &[f32],
    policy_steps: usize,
    truth: usize,
    acting: usize,
    reward_noise: Option<f64>,
    rng: &mut StdRng,
    observed: &mut [ObservedStep],
) -> f64 {
    let (s_n, a_n) = (mdp.states, mdp.actions);
    observed.fill(ObservedStep::NONE);
    let initial = &mdp.initial[truth * s_n..(truth + 1) * s_n];
    let Some(mut s) = draw(initial.iter().copied(), rng.random()) else {
        return 0.0;
    };
    let mut total = 0.0;
    for (t, slot) in observed.iter_mut().enumerate() {
        if mdp.terminal[truth * s_n + s] {
            break;
        }
        let step = if policy_steps == 1 { 0 } else { t };
        let row = &policy[((acting * policy_steps + step) * s_n + s) * a_n..][..a_n];
        let (u_action, u_next): (f64, f64) = (rng.random(), rng.random());
        let a = if row.iter().all(|p| p.is_finite()) {
            draw(row.iter().map(|&p| p as f64), u_action)
        } else {
            None
        }
        .unwrap_or(((u_action * a_n as f64) as usize).min(a_n - 1));
        let entries =
            mdp.csr().indptr[s * a_n + a] as usize..mdp.csr().indptr[s * a_n + a + 1] as usize;
        let k = draw(entries.clone().map(|k| mdp.csr().probs[k]), u_next)
            .expect("transition rows hold mass");
        let next = mdp.csr().indices[entries.start + k] as usize;
        let ends = mdp.terminal[truth * s_n + next];
        let reward = mdp.reward[(truth * s_n + s) * a_n + a]
            + if ends {
                mdp.terminal_value[truth * s_n + next]
            } else {
                0.0
            };
        total += reward;
        let seen = reward + reward_noise.map_or(0.0, |sigma| sigma * normal(rng));
        *slot = ObservedStep {
            state: s as u32,
            action: a as u32,
            next: next as u32,
            terminated: ends as u32,
            reward: seen as f32,
        };
        s = next;
        if ends {
            break;
        }
    }
    total
}

impl MetaOptions {
    /// Checks the options against a batch of `tasks` tasks (before any solve).
    pub fn validate(&self, tasks: usize) -> Result<()> {
        check(self, tasks)
    }
}

/// Host bytes [`meta_rl`] holds for `options` over a batch of `tasks` tasks, saturating
/// rather than wrapping: per run (evaluated task x trial) its truth, prior, posterior and joint
/// (`[run][task]`: f32, f32, f64, and the device's copy), the four curves' entries
/// (`[run][episode]` f64) and its observed steps (`[run][step]`, twice: host and device).
pub fn meta_bytes(options: &MetaOptions, tasks: usize) -> u64 {
    let runs = (options.eval_tasks.len() as u128).saturating_mul(options.trials as u128);
    let step = std::mem::size_of::<ObservedStep>() as u128;
    let per_run = 8u128
        .saturating_add((tasks as u128).saturating_mul(4 + 4 + 8 + 8))
        .saturating_add((options.episodes as u128).saturating_mul(4 * 8))
        .saturating_add((options.steps as u128).saturating_mul(2 * step));
    let scratch = (options.steps as u128).saturating_mul(step);
    u64::try_from(runs.saturating_mul(per_run).saturating_add(scratch)).unwrap_or(u64::MAX)
}

/// Checks the options against a batch of `tasks` tasks.
fn check(options: &MetaOptions, tasks: usize) -> Result<()> {
    ensure!(
        options.episodes >= 1 && options.steps >= 1 && options.trials >= 1,
        "episodes ({}), steps ({}) and trials ({}) must each be at least 1",
        options.episodes,
        options.steps,
        options.trials
    );
    ensure!(!options.eval_tasks.is_empty(), "no true task to evaluate");
    if let Some(&z) = options.eval_tasks.iter().find(|&&z| z >= tasks) {
        crate::error::bail!("evaluated task {z} is outside the batch's 0..{tasks}");
    }
    crate::analysis::infer::check_prior(&options.prior, tasks)?;
    crate::engine::memory::ensure_fits(meta_bytes(options, tasks), || {
        format!(
            "{} evaluated task(s) x {} trials x ({} episodes, {} steps) of meta-RL runs over \
             {tasks} tasks",
            options.eval_tasks.len(),
            options.trials,
            options.episodes,
            options.steps
        )
    })?;
    if let Some(sigma) = options.reward_noise {
        ensure!(
            sigma.is_finite() && sigma > 0.0,
            "the reward noise must be finite and > 0, got {sigma}"
        );
    }
    Ok(())
}

/// The largest reward noise (value units): an observation `r + sigma * N(0, 1)` is held in
/// float32, and must stay finite out to the normal's far tail (10 sigma) beside the rewards.
pub const MAX_REWARD_NOISE: f64 = f32::MAX as f64 / 1e3;

/// How many float32 roundings of the rewards' scale the reward noise must span at least: an
/// observation is rounded to float32 (the GPU computes in it), and a noise below that rounding
/// makes the rounding itself look like evidence against the true task (its posterior mass
/// went to 0 at sigma = 1e-300 on the CPU, 1e-46 on the GPU).
pub const MIN_REWARD_NOISE_ROUNDINGS: f64 = 64.0;

/// Refuses a reward noise the kernels cannot hold: not finite, not > 0, above
/// [`MAX_REWARD_NOISE`], or below [`MIN_REWARD_NOISE_ROUNDINGS`] float32 roundings of the
/// rewards' scale `max(1, |R| + |terminal value|)` of `mdp`.
fn check_reward_noise(mdp: &TabularMdp, reward_noise: Option<f64>) -> Result<()> {
    let Some(sigma) = reward_noise else {
        return Ok(());
    };
    let largest = |x: &[f64]| {
        x.iter()
            .map(|&v| v.abs())
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max)
    };
    let scale = 1f64.max(largest(&mdp.reward) + largest(&mdp.terminal_value));
    let least = MIN_REWARD_NOISE_ROUNDINGS * f32::EPSILON as f64 * scale;
    ensure!(
        sigma.is_finite() && (least..=MAX_REWARD_NOISE).contains(&sigma),
        "the reward noise {sigma:e} is outside what the kernels hold: from {least:.3e} \
         ({MIN_REWARD_NOISE_ROUNDINGS} float32 roundings of the rewards' scale {scale:e}; \
         less is rounding, not noise) to {MAX_REWARD_NOISE:.3e} (observations stay within \
         float32)"
    );
    Ok(())
}

/// Runs the three agents on every true task of `options` in `mdp`, acting with `policy`
/// (`[task][state][action]` stationary, `policy_steps` 1, or `[task][t][state][action]` with
/// `policy_steps` >= `options.steps`: a solve of the same batch), and updates posterior
/// sampling's posteriors on `device` after every episode.
pub fn meta_rl(
    mdp: &TabularMdp,
    policy: &[f32],
    policy_steps: usize,
    options: &MetaOptions,
    device: PosteriorDevice,
) -> Result<MetaReport> {
    meta_rl_until(mdp, policy, policy_steps, options, device, &mut || {
        std::ops::ControlFlow::Continue(())
    })
}

/// [`meta_rl`], asking `stop` before each run's episode whether to go on: a `Break` (Ctrl-C in
/// Python) ends it with [`crate::error::Error::Cancelled`] within one episode.
pub fn meta_rl_until(
    mdp: &TabularMdp,
    policy: &[f32],
    policy_steps: usize,
    options: &MetaOptions,
    device: PosteriorDevice,
    stop: &mut dyn FnMut() -> std::ops::ControlFlow<()>,
) -> Result<MetaReport> {
    mdp.validate()?;
    let (b, s_n, a_n) = (mdp.tasks, mdp.states, mdp.actions);
    check(options, b)?;
    ensure!(
        policy.len() == b * policy_steps * s_n * a_n,
        "the policy holds {} numbers, not tasks x steps x states x actions = {b} x \
         {policy_steps} x {s_n} x {a_n}",
        policy.len()
    );
    ensure!(
        policy_steps == 1 || policy_steps >= options.steps,
        "episodes of {} steps are longer than the policy's {policy_steps} steps",
        options.steps
    );
    crate::analysis::sample::check_policy_rows(policy, policy_steps, s_n, a_n)?;
    check_reward_noise(mdp, options.reward_noise)?;
    let (k_n, t_n, m_n) = (options.episodes, options.steps, options.trials);
    let truths: Vec<usize> = options
        .eval_tasks
        .iter()
        .flat_map(|&z| std::iter::repeat_n(z, m_n))
        .collect();
    let runs = truths.len();
    let total: f64 = options.prior.iter().sum();
    let log_prior = log_prior(&options.prior);
    let evidence = TaskEvidence::new(mdp, options.reward_noise);
    let mut posteriors = RunPosteriors::new(device, evidence, runs, t_n, &log_prior.repeat(runs))?;
    let mut posterior: Vec<f32> = options
        .prior
        .iter()
        .map(|&p| (p / total) as f32)
        .collect::<Vec<_>>()
        .repeat(runs);
    let mut returns = [
        vec![0.0; runs * k_n],
        vec![0.0; runs * k_n],
        vec![0.0; runs * k_n],
    ];
    let mut mass = vec![0.0; runs * k_n];
    let mut observed = vec![ObservedStep::NONE; runs * t_n];
    let mut scratch = vec![ObservedStep::NONE; t_n];
    for k in 0..k_n {
        for (run, &truth) in truths.iter().enumerate() {
            if stop().is_break() {
                return Err(crate::error::Error::Cancelled { sweeps: 0 });
            }
            for agent in [Agent::PosteriorSampling, Agent::Oracle, Agent::PriorOnly] {
                let mut rng = stream(options.seed, agent, run, k);
                let acting = match agent {
                    Agent::PosteriorSampling => {
                        // Every task ruled out cannot happen with the truth in the batch;
                        // should rounding do it, the prior stands in.
                        let row = &posterior[run * b..(run + 1) * b];
                        let u: f64 = rng.random();
                        draw(row.iter().map(|&p| p as f64), u)
                            .or_else(|| draw(options.prior.iter().copied(), u))
                            .unwrap_or(truth)
                    }
                    Agent::Oracle => truth,
                    Agent::PriorOnly => {
                        draw(options.prior.iter().copied(), rng.random()).unwrap_or(truth)
                    }
                };
                let out = if agent == Agent::PosteriorSampling {
                    &mut observed[run * t_n..(run + 1) * t_n]
                } else {
                    &mut scratch[..]
                };
                let ret = episode(
                    mdp,
                    policy,
                    policy_steps,
                    truth,
                    acting,
                    options.reward_noise,
                    &mut rng,
                    out,
                );
                returns[agent as usize][run * k_n + k] = ret;
            }
        }
        posterior = posteriors.observe(&observed)?;
        for (run, &truth) in truths.iter().enumerate() {
            mass[run * k_n + k] = posterior[run * b + truth] as f64;
        }
    }
    let [ps, oracle, prior_only] = returns;
    Ok(MetaReport {
        runs,
        posterior_sampling: Curve::of(&ps, k_n),
        oracle: Curve::of(&oracle, k_n),
        prior_only: Curve::of(&prior_only, k_n),
        mass_on_true_task: Curve::of(&mass, k_n),
    })
}
