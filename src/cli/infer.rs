//! `softvi infer`: the posterior over a batch's tasks after each step of an observed
//! trajectory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use serde_json::json;

use super::backend::Backend;
use super::iteration::{IterationArgs, acting_policy};
use super::summary::{add_run_json, path_json};
use super::world::{MdpWorld, WorldArgs, read_prior};
use softvi::analysis::infer::{Observation, check_possible, posterior_inputs};
use softvi::engine::options::{Horizon, Outputs};
use softvi::io::npy;
use softvi::io::output::{OutputFile, OutputFolder};

#[derive(Args, Debug)]
pub(super) struct InferArgs {
    #[command(flatten)]
    world: WorldArgs,
    #[command(flatten)]
    iteration: IterationArgs,
    /// Observed trajectory: one `X Y [ACTION]` per line on a grid (`S [ACTION]` for --mdp);
    /// ACTION is an index or a name (N, E, S, W, NE, SE, SW, NW, STAY). Blank lines and #
    /// comments allowed.
    #[arg(long, value_name = "FILE")]
    trajectory: PathBuf,
    /// Prior over the tasks, float .npy of shape [B] (default uniform).
    #[arg(long, value_name = "FILE.npy")]
    prior: Option<PathBuf>,
    /// Output folder: posterior.npy, summary.json. It must be new, empty or a folder of an
    /// earlier `softvi infer`, whose result is replaced.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Write into a non-empty --out that is not a `softvi infer` folder (files of the same
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

/// Reads a trajectory file against `world`; errors name the file and line.
fn read_trajectory(path: &Path, world: &MdpWorld) -> Result<Vec<Observation>> {
    let text = softvi::io::output::read_input_text(path, "trajectory file")?;
    let names: Vec<&str> = match &world.grid {
        Some((w, _)) => w.problem.actions.names(),
        None => Vec::new(),
    };
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        let coordinates = if world.grid.is_some() { 2 } else { 1 };
        ensure!(
            fields.len() == coordinates || fields.len() == coordinates + 1,
            "{}: expected {} [ACTION], got {line:?}",
            at(),
            if coordinates == 2 { "X Y" } else { "S" }
        );
        let number = |text: &str, what: &str| -> Result<usize> {
            text.parse()
                .with_context(|| format!("{}: {what} {text:?} is not a non-negative integer", at()))
        };
        let (label, shown) = match &world.grid {
            Some((_, g)) => {
                let (x, y) = (number(fields[0], "X")?, number(fields[1], "Y")?);
                ensure!(
                    x < g.width && y < g.height,
                    "{}: X={x},Y={y} is off the {}x{} map",
                    at(),
                    g.width,
                    g.height
                );
                (y * g.width + x, format!("X={x},Y={y}"))
            }
            None => {
                let s = number(fields[0], "state")?;
                (s, format!("state {s}"))
            }
        };
        let state = world
            .state_of_label(label)
            .with_context(|| format!("{}: {shown} is blocked or outside the world", at()))?;
        let action = match fields.get(coordinates) {
            None => None,
            Some(text) => Some(
                match names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
                    Some(a) => a,
                    None => {
                        let a: usize = text.parse().map_err(|_| match names.is_empty() {
                            true => anyhow::anyhow!(
                                "{}: action {text:?} is not an action index (0..{})",
                                at(),
                                world.mdp.actions
                            ),
                            false => anyhow::anyhow!(
                                "{}: action {text:?} is not one of this world's actions ({}) \
                                 nor an index 0..{}",
                                at(),
                                names.join(", "),
                                world.mdp.actions
                            ),
                        })?;
                        ensure!(
                            a < world.mdp.actions,
                            "{}: action {a} is outside 0..{}",
                            at(),
                            world.mdp.actions
                        );
                        a
                    }
                },
            ),
        };
        out.push(Observation {
            state,
            label: shown,
            action,
            line: i + 1,
        });
    }
    ensure!(!out.is_empty(), "{}: no observation", path.display());
    Ok(out)
}

/// `softvi infer`.
pub(super) fn infer_command(args: &InferArgs) -> Result<i32> {
    let start = Instant::now();
    let mut folder = OutputFolder::claim(&args.out, "infer", &["posterior.npy"], args.force)?;
    let world = MdpWorld::build(&args.world, &[])?;
    let trajectory = read_trajectory(&args.trajectory, &world)?;
    let tasks = world.mdp.tasks;
    let prior = read_prior(args.prior.as_ref(), tasks)?;
    let options = args.iteration.options()?;
    let finite = matches!(options.horizon, Horizon::Finite(_));
    let outputs = Outputs {
        all_steps: finite,
        ..Outputs::default()
    };
    let mut backend = Backend::open(args.iteration.backend, &args.iteration.adapters)?;
    let solved = backend.solve_mdp(&world.mdp, &options, outputs, args.quiet)?;
    let adapter = backend.adapter_json();
    if solved.solution.diverged() {
        bail!(
            "the solve diverged ({}): no policy, so no likelihood",
            super::summary::divergence_reason(&options)
        );
    }
    let (policy, policy_steps) = acting_policy(&solved, &options.horizon)?;
    let inputs = posterior_inputs(&world.mdp, policy, policy_steps, &trajectory, &prior)
        .with_context(|| format!("trajectory {}", args.trajectory.display()))?;
    // The posterior kernel runs on the solve's device; the CPU reference has its twin.
    let (posterior, joint) = match backend.gpu()? {
        None => softvi::engine::cpu::task_posterior(&inputs),
        Some(gpu) => softvi::engine::gpu::TaskPosterior::new(gpu.context())?.run(&inputs)?,
    };
    check_possible(&inputs, &joint)
        .with_context(|| format!("trajectory {}", args.trajectory.display()))?;
    let seconds = start.elapsed().as_secs_f64();
    let k = inputs.steps;
    let last = &posterior[k * tasks..];
    let best = (0..tasks)
        .max_by(|&a, &b| last[a].total_cmp(&last[b]))
        .unwrap_or(0);
    let first_above = posterior
        .chunks_exact(tasks)
        .position(|row| row[best] > 0.9);
    let mut summary = json!({
        "backend": args.iteration.backend.name(),
        "adapter": adapter,
        "world": world.source,
        "trajectory": path_json(&args.trajectory, "--trajectory")?,
        "observed_actions": trajectory[0].action.is_some(),
        "steps": k,
        "prior": prior,
        "posterior": last,
        "most_probable_task": best,
        "first_step_above_0.9": first_above,
        "layout": {"posterior": "float32 [step][task], row 0 the prior, row k after k observed steps"},
    });
    add_run_json(&mut summary, &options, &solved.solution, seconds);
    let summary_text = folder.write(
        &mut summary,
        vec![OutputFile {
            name: "posterior.npy",
            bytes: npy::encode_f32(&[k + 1, tasks], &posterior),
        }],
    )?;
    if args.json {
        print!("{summary_text}");
    } else {
        println!(
            "infer    {tasks} tasks, {k} observed steps ({}), alpha {}",
            if trajectory[0].action.is_some() {
                "with actions"
            } else {
                "states only"
            },
            options.alpha
        );
        println!(
            "result   task {best} with probability {:.4}{}",
            last[best],
            first_above.map_or(String::new(), |s| format!(", above 0.9 from step {s}"))
        );
        println!("wrote    {} in {seconds:.3} s", args.out.display());
    }
    Ok(0)
}
