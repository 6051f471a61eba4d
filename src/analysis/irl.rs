//! Maximum (causal) entropy inverse RL with linear state rewards `r_theta(s) = theta . phi(s)`
//! added to the world's own reward, learned for M independent demonstration sets at once (M
//! tasks of one batch). Each iteration is one backward soft value iteration and one forward
//! occupancy pass (on the GPU or the CPU reference, through the `solve` closure); the gradient
//! of the demos' log-likelihood is the demos' feature expectation minus the model's,
//! `mu_demo - sum_t sum_s D_t(s) phi(s)` (both discounted by gamma^t), and theta follows Adam.

use std::ops::ControlFlow;

use crate::error::{Context, Result, bail, ensure};

use crate::analysis::sample::ENDED;
use crate::engine::cpu::csr_action_values;
use crate::engine::options::{Horizon, Outputs, SolveOptions};
use crate::engine::schedule::keep_going;
use crate::engine::solution::{MdpSolution, Status};
use crate::engine::solver::MdpSolver;
use crate::world::mdp::TabularMdp;

/// Demonstrations: M sets of N episodes of T steps over the MDP's states.
#[derive(Clone, Debug, PartialEq)]
pub struct Demos {
    /// Sets M (one learned reward each).
    pub sets: usize,
    /// Episodes per set N.
    pub episodes: usize,
    /// Steps per episode T.
    pub steps: usize,
    /// States, `[set][episode][t]` (T + 1), [`ENDED`] after an episode's end.
    pub states: Vec<i32>,
    /// Actions, `[set][episode][t]` (T), [`ENDED`] from the end on, when observed.
    pub actions: Option<Vec<i32>>,
}

impl Demos {
    /// The states of episode `e` of set `m` up to its end.
    fn episode(&self, m: usize, e: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        let row = m * self.episodes + e;
        self.states[row * (self.steps + 1)..(row + 1) * (self.steps + 1)]
            .iter()
            .take_while(|&&s| s != ENDED)
            .map(|&s| s as usize)
            .enumerate()
    }

    /// Checks states and actions against an MDP of `states` states and `actions` actions.
    pub fn validate(&self, states: usize, actions: usize) -> Result<()> {
        let (m, n, t) = (self.sets, self.episodes, self.steps);
        ensure!(
            m > 0 && n > 0 && t > 0,
            "the demos are empty ({m} sets, {n} episodes, {t} steps)"
        );
        ensure!(
            self.states.len() == m * n * (t + 1),
            "demo states: wrong length"
        );
        for (i, &s) in self.states.iter().enumerate() {
            let (row, step) = (i / (t + 1), i % (t + 1));
            ensure!(
                (s >= 0 && (s as usize) < states) || (s == ENDED && step > 0),
                "demo set {}, episode {}, step {step}: state {s} is not a state of the world \
                 (0..{states}; -1 only after the first step)",
                row / n,
                row % n
            );
        }
        if let Some(a) = &self.actions {
            ensure!(a.len() == m * n * t, "demo actions: wrong length");
            if let Some(i) = a
                .iter()
                .position(|&x| x != ENDED && (x < 0 || x as usize >= actions))
            {
                bail!(
                    "demo set {}, episode {}, step {}: action {} is outside 0..{actions}",
                    i / (n * t),
                    i / t % n,
                    i % t,
                    a[i]
                );
            }
            if let Some(i) =
                (0..a.len()).find(|&i| a[i] != ENDED && self.states[i / t + i] == ENDED)
            {
                bail!(
                    "demo set {}, episode {}, step {}: action {} after the episode's end (the \
                     state there is -1)",
                    i / (n * t),
                    i / t % n,
                    i % t,
                    a[i]
                );
            }
        }
        Ok(())
    }

    /// The first step that the MDP's dynamics cannot produce (validated demos): an observed
    /// action whose transitions never reach the next state, or without an action a next state
    /// that no action reaches. Such a step has probability 0 (a log-likelihood of -inf).
    /// Steps from a terminal state are not looked at: the episode ends there. Set m reads
    /// task m of the MDP, or its only task.
    pub fn impossible_step(&self, mdp: &TabularMdp) -> Option<ImpossibleStep> {
        let (s_n, a_n, t_n) = (mdp.states, mdp.actions, self.steps);
        for m in 0..self.sets {
            let task = if mdp.tasks == 1 { 0 } else { m };
            for e in 0..self.episodes {
                let row = m * self.episodes + e;
                let states = &self.states[row * (t_n + 1)..(row + 1) * (t_n + 1)];
                for t in 0..t_n {
                    let (s, next) = (states[t], states[t + 1]);
                    if s == ENDED
                        || next == ENDED
                        || mdp.terminal.get(task * s_n + s as usize) != Some(&false)
                    {
                        break;
                    }
                    let (s, next) = (s as usize, next as usize);
                    let action = self
                        .actions
                        .as_ref()
                        .map(|a| a[row * t_n + t])
                        .filter(|&a| a != ENDED)
                        .map(|a| a as usize);
                    let possible = match action {
                        Some(a) => mdp.probability(s, a, next) > 0.0,
                        None => (0..a_n).any(|a| mdp.probability(s, a, next) > 0.0),
                    };
                    if !possible {
                        return Some(ImpossibleStep {
                            set: m,
                            episode: e,
                            step: t,
                            state: s,
                            next,
                            action,
                        });
                    }
                }
            }
        }
        None
    }
}

/// A demo step the dynamics cannot produce ([`Demos::impossible_step`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImpossibleStep {
    /// Demo set.
    pub set: usize,
    /// Episode within the set.
    pub episode: usize,
    /// Step t: the move from state t to state t + 1.
    pub step: usize,
    /// The state at step t.
    pub state: usize,
    /// The state at step t + 1.
    pub next: usize,
    /// The action observed at step t, if any.
    pub action: Option<usize>,
}

impl std::fmt::Display for ImpossibleStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "demo set {}, episode {}, step {}: ",
            self.set, self.episode, self.step
        )?;
        match self.action {
            Some(a) => write!(
                f,
                "action {a} never moves state {} to state {}, the next state of the demo",
                self.state, self.next
            ),
            None => write!(
                f,
                "no action moves state {} to state {} (the step has probability 0)",
                self.state, self.next
            ),
        }
    }
}

/// Settings of an IRL run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IrlOptions {
    /// The soft value iteration of each step: alpha > 0, gamma, backup, and the horizon (T =
    /// the demo length, or infinite for discounted IRL).
    pub solve: SolveOptions,
    /// Adam step size.
    pub learning_rate: f64,
    /// Most iterations.
    pub iters: u32,
    /// Stop once every set's gradient norm is at most this.
    pub tol: f64,
}

/// One iteration's figures per set, at the theta before its update.
#[derive(Clone, Debug, PartialEq)]
pub struct IrlStep {
    /// Mean log-likelihood of a demo episode, `[set]`.
    pub log_likelihood: Vec<f64>,
    /// Gradient norm `|mu_demo - mu_model|`, `[set]`.
    pub gradient_norm: Vec<f64>,
    /// Wall time of the backward and forward passes (s).
    pub solve_seconds: f64,
}

/// Result of [`learn`].
#[derive(Clone, Debug, PartialEq)]
pub struct IrlResult {
    /// Learned weights, `[set][feature]`.
    pub theta: Vec<f64>,
    /// Per-iteration figures.
    pub history: Vec<IrlStep>,
    /// Whether every set's gradient norm reached `tol`.
    pub converged: bool,
    /// Feature expectations of the demos, `[set][feature]`.
    pub demo_features: Vec<f64>,
    /// Feature expectations of the last model, `[set][feature]`.
    pub model_features: Vec<f64>,
}

/// The MDP whose task m (of `sets`) has reward `base + theta_m . phi(s)` and the world's
/// terminal states and start of task m (or of its only task). `features` is
/// `[state][feature]`, `theta` `[set][feature]`.
pub fn linear_reward_mdp(
    world: &TabularMdp,
    features: &[f32],
    sets: usize,
    theta: &[f64],
) -> Result<TabularMdp> {
    let (s_n, a_n, m_n) = (world.states, world.actions, sets);
    ensure!(
        world.tasks == 1 || world.tasks == m_n,
        "the world has {} tasks but the demos {m_n} sets: give one task, or one per set",
        world.tasks
    );
    let k_n = features.len() / s_n;
    let task = |m: usize| if world.tasks == 1 { 0 } else { m };
    let mut mdp = world.clone();
    mdp.tasks = m_n;
    mdp.reward = Vec::with_capacity(m_n * s_n * a_n);
    mdp.terminal = Vec::with_capacity(m_n * s_n);
    mdp.terminal_value = Vec::with_capacity(m_n * s_n);
    mdp.initial = Vec::with_capacity(m_n * s_n);
    for m in 0..m_n {
        let w = task(m);
        let th = &theta[m * k_n..(m + 1) * k_n];
        for s in 0..s_n {
            let learned: f64 = features[s * k_n..(s + 1) * k_n]
                .iter()
                .zip(th)
                .map(|(&f, &t)| f as f64 * t)
                .sum();
            for a in 0..a_n {
                mdp.reward
                    .push(world.reward[(w * s_n + s) * a_n + a] + learned);
            }
        }
        let own = w * s_n..(w + 1) * s_n;
        mdp.terminal.extend_from_slice(&world.terminal[own.clone()]);
        mdp.terminal_value
            .extend_from_slice(&world.terminal_value[own.clone()]);
        mdp.initial.extend_from_slice(&world.initial[own]);
    }
    Ok(mdp)
}

/// [`linear_reward_mdp`] for the demo sets, started from each set's empirical start.
pub fn irl_mdp(
    world: &TabularMdp,
    features: &[f32],
    demos: &Demos,
    theta: &[f64],
) -> Result<TabularMdp> {
    let mut mdp = linear_reward_mdp(world, features, demos.sets, theta)?;
    let s_n = world.states;
    mdp.initial.fill(0.0);
    for m in 0..demos.sets {
        for e in 0..demos.episodes {
            let s0 = demos.states[(m * demos.episodes + e) * (demos.steps + 1)] as usize;
            mdp.initial[m * s_n + s0] += 1.0 / demos.episodes as f64;
        }
    }
    Ok(mdp)
}

/// The demos' feature expectations `mean_n sum_t gamma^t phi(s_t)`, `[set][feature]`.
pub fn demo_feature_expectations(
    features: &[f32],
    states: usize,
    demos: &Demos,
    gamma: f64,
) -> Vec<f64> {
    let k_n = features.len() / states;
    let mut mu = vec![0.0; demos.sets * k_n];
    for m in 0..demos.sets {
        for e in 0..demos.episodes {
            for (t, s) in demos.episode(m, e) {
                let w = gamma.powi(t as i32) / demos.episodes as f64;
                for k in 0..k_n {
                    mu[m * k_n + k] += w * features[s * k_n + k] as f64;
                }
            }
        }
    }
    mu
}

/// The model's feature expectations `sum_t sum_s D_t(s) phi(s)` from an occupancy
/// (`[set][t][state]` or `[set][state]`), `[set][feature]`.
pub fn model_feature_expectations(
    features: &[f32],
    states: usize,
    occupancy: &[f32],
    sets: usize,
) -> Vec<f64> {
    let k_n = features.len() / states;
    let per_set = occupancy.len() / sets;
    let mut mu = vec![0.0; sets * k_n];
    for m in 0..sets {
        for (i, &d) in occupancy[m * per_set..(m + 1) * per_set].iter().enumerate() {
            let s = i % states;
            if d != 0.0 {
                for k in 0..k_n {
                    mu[m * k_n + k] += d as f64 * features[s * k_n + k] as f64;
                }
            }
        }
    }
    mu
}

/// Mean log-likelihood of a demo episode per set under the solved policy: `sum_t log
/// pi_t(a_t|s_t)` with observed actions, else `sum_t log sum_a pi_t(a|s_t) P(s_{t+1}|s_t,a)`.
/// `pi_t` comes from the stationary policy, or for a finite horizon from the step values
/// (`V_t`, `V_{t+1}`), evaluated only where the demos go.
pub fn demo_log_likelihood(
    mdp: &TabularMdp,
    options: &SolveOptions,
    solved: &MdpSolution,
    demos: &Demos,
) -> Result<Vec<f64>> {
    let (s_n, a_n) = (mdp.states, mdp.actions);
    let alpha = options.alpha;
    let mut q = vec![0.0; a_n];
    let mut log_pi = vec![0.0; a_n];
    let mut out = vec![0.0; demos.sets];
    for (m, total) in out.iter_mut().enumerate() {
        for e in 0..demos.episodes {
            let visited: Vec<(usize, usize)> = demos.episode(m, e).collect();
            for (i, &(t, s)) in visited.iter().enumerate() {
                let action = demos
                    .actions
                    .as_ref()
                    .filter(|_| t < demos.steps)
                    .map(|a| a[(m * demos.episodes + e) * demos.steps + t])
                    .filter(|&a| a != ENDED);
                let next = visited.get(i + 1).map(|&(_, s)| s);
                if action.is_none() && next.is_none() {
                    continue;
                }
                if mdp.terminal[m * s_n + s] {
                    break;
                }
                match &solved.steps {
                    Some(steps) => {
                        let t_n = steps.values.len() / (demos.sets * s_n);
                        let at = |step: usize, state: usize| {
                            steps.values[(m * t_n + step) * s_n + state] as f64
                        };
                        csr_action_values(
                            mdp,
                            options.backup,
                            alpha,
                            options.gamma,
                            m,
                            s,
                            |j| at(t + 1, j),
                            &mut q,
                        );
                        let v = at(t, s);
                        for a in 0..a_n {
                            log_pi[a] = (q[a] - v) / alpha;
                        }
                    }
                    None => {
                        let policy = solved
                            .solution
                            .policy
                            .as_ref()
                            .context("the solver returned no policy for the demos")?;
                        for a in 0..a_n {
                            log_pi[a] = (policy[(m * s_n + s) * a_n + a] as f64).ln();
                        }
                    }
                }
                *total += match (action, next) {
                    (Some(a), _) => log_pi[a as usize],
                    (None, Some(n)) => {
                        let p: f64 = (0..a_n)
                            .map(|a| log_pi[a].exp() * mdp.probability(s, a, n))
                            .sum();
                        p.ln()
                    }
                    (None, None) => 0.0,
                };
            }
        }
        *total /= demos.episodes as f64;
    }
    Ok(out)
}

/// One gradient: solves the MDP of `theta`, returns the solution, the model's feature
/// expectations and the gradient `mu_demo - mu_model`, `[set][feature]`.
pub fn gradient(
    world: &TabularMdp,
    features: &[f32],
    demos: &Demos,
    demo_features: &[f64],
    theta: &[f64],
    options: &SolveOptions,
    solver: &mut dyn MdpSolver,
) -> Result<(TabularMdp, MdpSolution, Vec<f64>, Vec<f64>)> {
    let mdp = irl_mdp(world, features, demos, theta)?;
    let finite = matches!(options.horizon, Horizon::Finite(_));
    // A finite horizon needs V_t of every step for the likelihood; the forward pass makes its
    // own pi_t, so no policy is read back.
    let outputs = Outputs {
        policy: !finite,
        all_steps: finite,
        occupancy: true,
        ..Outputs::VALUES
    };
    let solved = solver.solve_mdp(&mdp, options, outputs, &mut keep_going)?;
    ensure!(
        !solved.solution.status.contains(&Status::Diverged),
        "the soft value iteration diverged at this theta; lower the learning rate or use \
         gamma < 1"
    );
    let occupancy = solved
        .occupancy
        .as_ref()
        .context("the solver returned no occupancy")?;
    let model = model_feature_expectations(features, mdp.states, &occupancy.values, demos.sets);
    let grad = demo_features
        .iter()
        .zip(&model)
        .map(|(d, m)| d - m)
        .collect();
    Ok((mdp, solved, model, grad))
}

/// Learns theta `[set][feature]` from zero by Adam ascent on the demos' log-likelihood;
/// `features` is `[state][feature]`; `solve` runs the backward and forward passes.
pub fn learn(
    world: &TabularMdp,
    features: &[f32],
    demos: &Demos,
    options: &IrlOptions,
    solver: &mut dyn MdpSolver,
    progress: &mut dyn FnMut(u32, &IrlStep) -> ControlFlow<()>,
) -> Result<IrlResult> {
    let s_n = world.states;
    ensure!(
        !features.is_empty() && features.len().is_multiple_of(s_n),
        "the features hold {} numbers, not a multiple of the {s_n} states",
        features.len()
    );
    ensure!(
        features.iter().all(|f| f.is_finite()),
        "the features hold a non-finite value"
    );
    ensure!(
        options.solve.alpha > 0.0,
        "IRL needs alpha > 0 (--alpha): the demos' likelihood is the soft policy's"
    );
    ensure!(
        options.learning_rate > 0.0 && options.learning_rate.is_finite(),
        "the learning rate (--lr) must be > 0, got {}",
        options.learning_rate
    );
    ensure!(
        options.tol.is_finite() && options.tol >= 0.0,
        "the gradient tolerance (--tol) must be finite and >= 0, got {}",
        options.tol
    );
    options.solve.validate()?;
    demos.validate(world.states, world.actions)?;
    ensure!(
        world.tasks == 1 || world.tasks == demos.sets,
        "the world has {} tasks but the demos {} sets: give one task, or one per set",
        world.tasks,
        demos.sets
    );
    if let Some(step) = demos.impossible_step(world) {
        bail!("{step}");
    }
    if let Horizon::Finite(t) = options.solve.horizon {
        ensure!(
            t as usize >= demos.steps,
            "the horizon {t} is shorter than the demos' {} steps",
            demos.steps
        );
    }
    let k_n = features.len() / s_n;
    let m_n = demos.sets;
    let demo_features = demo_feature_expectations(features, s_n, demos, options.solve.gamma);
    let mut theta = vec![0.0; m_n * k_n];
    let (mut first, mut second) = (vec![0.0; m_n * k_n], vec![0.0; m_n * k_n]);
    let (beta1, beta2, eps) = (0.9f64, 0.999f64, 1e-8);
    let mut history = Vec::new();
    let mut model_features = Vec::new();
    let mut converged = false;
    let mut sweeps = 0u32;
    for it in 0..options.iters {
        let start = std::time::Instant::now();
        let (mdp, solved, model, grad) = gradient(
            world,
            features,
            demos,
            &demo_features,
            &theta,
            &options.solve,
            solver,
        )?;
        let solve_seconds = start.elapsed().as_secs_f64();
        let norms: Vec<f64> = grad
            .chunks_exact(k_n)
            .map(|g| g.iter().map(|x| x * x).sum::<f64>().sqrt())
            .collect();
        let step = IrlStep {
            log_likelihood: demo_log_likelihood(&mdp, &options.solve, &solved, demos)?,
            gradient_norm: norms.clone(),
            solve_seconds,
        };
        sweeps = sweeps.saturating_add(
            solved
                .solution
                .iterations
                .iter()
                .copied()
                .max()
                .unwrap_or(0),
        );
        if progress(it, &step).is_break() {
            return Err(crate::error::Error::Cancelled { sweeps });
        }
        history.push(step);
        model_features = model;
        if norms.iter().all(|&n| n <= options.tol) {
            converged = true;
            break;
        }
        let (c1, c2) = (
            1.0 - beta1.powi(it as i32 + 1),
            1.0 - beta2.powi(it as i32 + 1),
        );
        for i in 0..theta.len() {
            first[i] = beta1 * first[i] + (1.0 - beta1) * grad[i];
            second[i] = beta2 * second[i] + (1.0 - beta2) * grad[i] * grad[i];
            theta[i] += options.learning_rate * (first[i] / c1) / ((second[i] / c2).sqrt() + eps);
        }
    }
    Ok(IrlResult {
        theta,
        history,
        converged,
        demo_features,
        model_features,
    })
}
