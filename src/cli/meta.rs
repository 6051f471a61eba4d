//! `softvi meta`: meta-RL as inference over a latent task (posterior sampling) against an
//! oracle and a prior-only agent, on a batch of tasks over one world.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, ensure};
use clap::Args;
use serde_json::json;

use super::EXIT_DIVERGED;
use super::backend::Backend;
use super::iteration::{IterationArgs, acting_policy, episode_steps};
use super::summary::add_run_json;
use super::world::{MdpWorld, WorldArgs, read_prior};
use softvi::analysis::meta::{Curve, MetaOptions, MetaReport, PosteriorDevice, meta_rl};
use softvi::analysis::render::{SERIES_COLOURS, Series, line_chart};
use softvi::engine::options::{Horizon, Outputs};
use softvi::io::output::{OutputFile, OutputFolder};

#[derive(Args, Debug)]
pub(super) struct MetaArgs {
    #[command(flatten)]
    world: WorldArgs,
    #[command(flatten)]
    iteration: IterationArgs,
    /// Prior over the tasks, float .npy of shape [B] (default uniform).
    #[arg(long, value_name = "FILE.npy")]
    prior: Option<PathBuf>,
    /// Episodes K per trial.
    #[arg(long, default_value_t = 10, value_name = "K")]
    episodes: usize,
    /// Steps T per episode at most (default: --horizon, else 100); at most --horizon.
    #[arg(long, value_name = "T")]
    steps: Option<usize>,
    /// Independent trials M per true task.
    #[arg(long, default_value_t = 20, value_name = "M")]
    trials: usize,
    /// Seed of every draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The true tasks evaluated, e.g. `0,3,5` (default: every task).
    #[arg(long, value_name = "I,J,..", value_delimiter = ',')]
    eval_tasks: Vec<usize>,
    /// Rewards are observed with Gaussian noise of this standard deviation (default: exactly;
    /// a task inconsistent with an observed reward or termination is then ruled out).
    #[arg(long, value_name = "SIGMA")]
    reward_noise: Option<f64>,
    /// Grid worlds: the terminal value of each task's goals (the reward of reaching it; 0
    /// by default, where the step costs alone make the return).
    #[arg(long, value_name = "R", conflicts_with = "mdp")]
    goal_value: Option<f64>,
    /// Start cell X,Y (repeatable, equal weights; default: uniform over the free non-goal
    /// cells). Grid worlds only; an --mdp file carries `initial`.
    #[arg(long = "start", value_name = "X,Y", conflicts_with = "mdp")]
    start: Vec<String>,
    /// Output folder: meta.json, returns.png, summary.json. It must be new, empty or a folder
    /// of an earlier `softvi meta`, whose result is replaced.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Write into a non-empty --out that is not a `softvi meta` folder (files of the same
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

fn curve_json(curve: &Curve) -> serde_json::Value {
    json!({"mean": curve.mean, "standard_error": curve.standard_error})
}

/// The chart of the three agents' mean return per episode, +- one standard error.
fn chart(report: &MetaReport) -> Result<Vec<u8>> {
    let series = [
        ("posterior sampling", &report.posterior_sampling),
        ("oracle", &report.oracle),
        ("prior only", &report.prior_only),
    ]
    .iter()
    .zip(SERIES_COLOURS)
    .map(|(&(label, curve), colour)| Series {
        label,
        colour,
        mean: &curve.mean,
        error: &curve.standard_error,
    })
    .collect::<Vec<_>>();
    let canvas = line_chart("return per episode", "episode", "mean return", &series);
    Ok(canvas.encode_png()?)
}

/// `softvi meta`: the three agents on every evaluated task, meta.json and the chart.
pub(super) fn meta_command(args: &MetaArgs) -> Result<i32> {
    let start = Instant::now();
    let mut out =
        OutputFolder::claim(&args.out, "meta", &["meta.json", "returns.png"], args.force)?;
    let options = args.iteration.options()?;
    let finite = matches!(options.horizon, Horizon::Finite(_));
    let outputs = Outputs {
        all_steps: finite,
        ..Default::default()
    };
    args.world.check_memory(&options, outputs)?;
    let mut world = MdpWorld::build(&args.world, &args.start)?;
    if let Some(value) = args.goal_value {
        ensure!(
            value.is_finite(),
            "--goal-value must be finite, got {value}"
        );
        let mdp = &mut world.mdp;
        for (v, &t) in mdp.terminal_value.iter_mut().zip(&mdp.terminal) {
            if t {
                *v = value;
            }
        }
    }
    let tasks = world.mdp.tasks;
    let prior = read_prior(args.prior.as_ref(), tasks)?;
    let steps = episode_steps(args.steps, &options.horizon)?;
    let eval_tasks = if args.eval_tasks.is_empty() {
        (0..tasks).collect()
    } else {
        args.eval_tasks.clone()
    };
    let meta_options = MetaOptions {
        episodes: args.episodes,
        steps,
        trials: args.trials,
        seed: args.seed,
        eval_tasks,
        prior,
        reward_noise: args.reward_noise,
    };
    // Checked before the solve, so a bad flag costs no solve.
    meta_options.validate(tasks)?;
    let mut backend = Backend::open(args.iteration.backend, &args.iteration.adapters)?;
    let solved = backend.solve_mdp(&world.mdp, &options, outputs, args.quiet)?;
    let adapter = backend.adapter_json();
    if solved.solution.diverged() {
        eprintln!(
            "error: the solve diverged ({}): no policy to act with; nothing was written",
            super::summary::divergence_reason(&options)
        );
        return Ok(EXIT_DIVERGED);
    }
    let (policy, policy_steps) = acting_policy(&solved, &options.horizon)?;
    // The posteriors are updated where the solve ran; the CPU reference has the twin.
    let report = match backend.gpu()? {
        None => meta_rl(
            &world.mdp,
            policy,
            policy_steps,
            &meta_options,
            PosteriorDevice::Cpu,
        )?,
        Some(gpu) => meta_rl(
            &world.mdp,
            policy,
            policy_steps,
            &meta_options,
            PosteriorDevice::Gpu(gpu.context()),
        )?,
    };
    let seconds = start.elapsed().as_secs_f64();
    let meta = json!({
        "tasks": tasks,
        "eval_tasks": meta_options.eval_tasks,
        "trials": args.trials,
        "runs": report.runs,
        "episodes": args.episodes,
        "steps": steps,
        "seed": args.seed,
        "prior": meta_options.prior,
        "reward_model": match args.reward_noise {
            None => json!("exact"),
            Some(sigma) => json!({"gaussian": sigma}),
        },
        "return": "undiscounted: the true task's rewards plus the terminal value where the episode ended",
        "posterior_sampling": curve_json(&report.posterior_sampling),
        "oracle": curve_json(&report.oracle),
        "prior_only": curve_json(&report.prior_only),
        "posterior_mass_on_true_task": curve_json(&report.mass_on_true_task),
    });
    let mut summary = json!({
        "backend": args.iteration.backend.name(),
        "adapter": adapter,
        "world": world.source,
        "goal_value": args.goal_value,
        "meta": meta.clone(),
    });
    add_run_json(&mut summary, &options, &solved.solution, seconds);
    let files = vec![
        OutputFile {
            name: "meta.json",
            bytes: serde_json::to_vec_pretty(&meta)?,
        },
        OutputFile {
            name: "returns.png",
            bytes: chart(&report)?,
        },
    ];
    let summary_text = out.write(&mut summary, files)?;
    if args.json {
        print!("{summary_text}");
    } else {
        let last = args.episodes - 1;
        println!(
            "meta     {} true task(s) x {} trials, {} episodes of <= {steps} steps, seed {}",
            meta_options.eval_tasks.len(),
            args.trials,
            args.episodes,
            args.seed
        );
        for (name, curve) in [
            ("posterior sampling", &report.posterior_sampling),
            ("oracle", &report.oracle),
            ("prior only", &report.prior_only),
        ] {
            println!(
                "{name:<19}first episode {:.3} +- {:.3}, last {:.3} +- {:.3}",
                curve.mean[0],
                curve.standard_error[0],
                curve.mean[last],
                curve.standard_error[last]
            );
        }
        println!(
            "p(z* | experience) after the last episode: {:.3}",
            report.mass_on_true_task.mean[last]
        );
        println!("wrote    {} in {seconds:.3} s", args.out.display());
    }
    Ok(0)
}
