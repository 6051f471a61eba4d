//! `softvi sample`: trajectories drawn from each task's soft-optimal policy (or a uniform
//! one), and their transitions as a `softvi qlearn` dataset.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use clap::{Args, ValueEnum};
use serde_json::json;

use super::EXIT_DIVERGED;
use super::backend::Backend;
use super::iteration::{IterationArgs, episode_steps};
use super::summary::add_run_json;
use super::world::{MdpWorld, WorldArgs};
use softvi::engine::options::Horizon;
use softvi::io::npy;
use softvi::io::output::{OutputFile, OutputFolder};

#[derive(Args, Debug)]
pub(super) struct SampleArgs {
    #[command(flatten)]
    world: WorldArgs,
    #[command(flatten)]
    iteration: IterationArgs,
    /// Episodes per task N.
    #[arg(long, default_value_t = 100, value_name = "N")]
    episodes: usize,
    /// Steps per episode T (default: --horizon, else 100); at most --horizon.
    #[arg(long, value_name = "T")]
    steps: Option<usize>,
    /// Policy the episodes follow: `soft`, the soft-optimal policy at --alpha-behaviour, or
    /// `uniform` over the actions (no solve).
    #[arg(long, value_enum, default_value_t = Behaviour::Soft)]
    behaviour: Behaviour,
    /// Temperature of the soft behaviour policy (default: --alpha).
    #[arg(long, value_name = "A", allow_negative_numbers = true)]
    alpha_behaviour: Option<f64>,
    /// Seed of the draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Start cell X,Y (repeatable, equal weights; default: uniform over the free non-goal
    /// cells). Grid worlds only; an --mdp file carries `initial`.
    #[arg(long = "start", value_name = "X,Y", conflicts_with = "mdp")]
    start: Vec<String>,
    /// Output folder: states.npy, actions.npy, dataset.npz (the transitions s, a, r, s_next,
    /// done [B, N*T] for `softvi qlearn`; -1 after an episode stopped), summary.json. It must be
    /// new, empty or a folder of an earlier `softvi sample`, whose result is replaced.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Write into a non-empty --out that is not a `softvi sample` folder (files of the same
    /// names are replaced, other files kept).
    #[arg(long)]
    force: bool,
    /// Print summary.json's content instead of the human summary.
    #[arg(long)]
    json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
}

/// The policy `softvi sample` follows.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum Behaviour {
    /// The soft-optimal policy at --alpha-behaviour (default --alpha).
    Soft,
    /// pi(a|s) = 1/A everywhere.
    Uniform,
}

/// `softvi sample`: trajectories from each task's soft-optimal policy.
pub(super) fn sample_command(args: &SampleArgs) -> Result<i32> {
    let start = Instant::now();
    let mut out = OutputFolder::claim(
        &args.out,
        "sample",
        &["states.npy", "actions.npy", "dataset.npz"],
        args.force,
    )?;
    let mut options = args.iteration.options()?;
    if let Some(alpha) = args.alpha_behaviour {
        ensure!(
            args.behaviour == Behaviour::Soft,
            "--alpha-behaviour sets the soft behaviour policy's temperature; --behaviour \
             uniform has none"
        );
        options.alpha = alpha;
        options.validate().context("--alpha-behaviour")?;
    }
    let uniform = args.behaviour == Behaviour::Uniform;
    let finite = matches!(options.horizon, Horizon::Finite(_));
    let outputs = softvi::engine::options::Outputs {
        all_steps: finite,
        ..Default::default()
    };
    args.world.check_memory(&options, outputs)?;
    let world = MdpWorld::build(&args.world, &args.start)?;
    ensure!(args.episodes >= 1, "--episodes must be at least 1");
    let steps = episode_steps(args.steps, &options.horizon)?;
    ensure!(steps >= 1, "--steps must be at least 1");
    // Every output sized before solving: the trajectories (and their encoded files) beside
    // what the solve holds.
    let (b, n) = (world.mdp.tasks, args.episodes);
    // The trajectories, and the dataset of their transitions (4 x 8 + 1 bytes each).
    let transitions = (b as u64)
        .saturating_mul(n as u64)
        .saturating_mul(steps as u64)
        .saturating_mul(33);
    let samples = softvi::analysis::sample::samples_bytes(b, n, steps)
        .saturating_add(transitions)
        .saturating_mul(2);
    let solve = if uniform {
        0
    } else {
        softvi::engine::memory::estimate_mdp_bytes(&world.mdp, &options, outputs)
    };
    softvi::engine::memory::ensure_fits(samples.saturating_add(solve), || {
        format!(
            "sampling {b} task(s) x {n} episodes (--episodes) x {steps} steps (--steps), with \
             the solve they follow,"
        )
    })?;
    let (solved, adapter) = if uniform {
        (None, json!(null))
    } else {
        let mut backend = Backend::open(args.iteration.backend, &args.iteration.adapters)?;
        let solved = backend.solve_mdp(&world.mdp, &options, outputs, args.quiet)?;
        (Some(solved), backend.adapter_json())
    };
    if let Some(solved) = &solved
        && solved.solution.diverged()
    {
        eprintln!(
            "error: the solve diverged ({}): no policy to sample from; nothing was written",
            super::summary::divergence_reason(&options)
        );
        return Ok(EXIT_DIVERGED);
    }
    let mdp = &world.mdp;
    let uniform_policy = match uniform {
        true => vec![1.0 / mdp.actions as f32; mdp.tasks * mdp.states * mdp.actions],
        false => Vec::new(),
    };
    let (policy, policy_steps) = match (&solved, options.horizon) {
        (None, _) => (&uniform_policy, 1),
        (Some(solved), Horizon::Finite(h)) => (
            solved
                .steps
                .as_ref()
                .and_then(|s| s.policy.as_ref())
                .context("no policy")?,
            h as usize,
        ),
        (Some(solved), _) => (solved.solution.policy.as_ref().context("no policy")?, 1),
    };
    let mut samples = softvi::analysis::sample::sample(
        mdp,
        policy,
        policy_steps,
        args.episodes,
        steps,
        args.seed,
    )?;
    let mut dataset = softvi::analysis::sample::transitions(mdp, &samples)?;
    for s in &mut samples.states {
        *s = world.state_label(*s);
    }
    for s in dataset.s.iter_mut().chain(dataset.s_next.iter_mut()) {
        *s = world.state_label(*s as i32) as i64;
    }
    if let Some((_, grid)) = &world.grid {
        dataset.states = grid.height * grid.width;
    }
    let seconds = start.elapsed().as_secs_f64();
    let lengths: Vec<f64> = (0..b)
        .map(|t| {
            let rows = &samples.actions[t * n * steps..(t + 1) * n * steps];
            rows.iter()
                .filter(|&&a| a != softvi::analysis::sample::ENDED)
                .count() as f64
                / n as f64
        })
        .collect();
    let mut summary = json!({
        "backend": args.iteration.backend.name(),
        "adapter": adapter,
        "world": world.source,
        "episodes": n,
        "steps": steps,
        "seed": args.seed,
        "mean_episode_length": lengths,
        "behaviour": match args.behaviour {
            Behaviour::Soft => json!({"policy": "soft", "alpha": options.alpha}),
            Behaviour::Uniform => json!({"policy": "uniform"}),
        },
        "transitions": (0..b).map(|t| dataset.samples(t)).collect::<Vec<_>>(),
        "layout": {
            "states": if world.grid.is_some() { "int32 [task][episode][t], cell row * W + col; -1 after termination" }
                else { "int32 [task][episode][t]; -1 after termination" },
            "actions": "int32 [task][episode][t]; -1 from the terminal state on",
            "dataset": "s, a, s_next int32, r float64, done bool, each [task][episode * T + t]; \
                        s = a = s_next = -1 after the episode stopped",
        },
    });
    if let Some(solved) = &solved {
        add_run_json(&mut summary, &options, &solved.solution, seconds);
    }
    let files = vec![
        OutputFile {
            name: "states.npy",
            bytes: npy::encode_i32(&[b, n, steps + 1], &samples.states),
        },
        OutputFile {
            name: "actions.npy",
            bytes: npy::encode_i32(&[b, n, steps], &samples.actions),
        },
        OutputFile {
            name: "dataset.npz",
            bytes: dataset.encode_npz()?,
        },
    ];
    let summary_text = out.write(&mut summary, files)?;
    if args.json {
        print!("{summary_text}");
    } else {
        println!(
            "sample   {b} tasks x {n} episodes x {steps} steps, seed {}, mean length {}",
            args.seed,
            lengths
                .iter()
                .map(|l| format!("{l:.1}"))
                .collect::<Vec<_>>()
                .join("/")
        );
        println!("wrote    {} in {seconds:.3} s", args.out.display());
    }
    Ok(0)
}
