//! `softvi qlearn`: soft Q-learning from a dataset of transitions, as soft value iteration
//! on the dataset's empirical MDP (`softvi::qlearn`).

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use serde_json::json;

use super::EXIT_DIVERGED;
use super::backend::Backend;
use super::iteration::IterationArgs;
use super::summary::{ProgressLine, add_settings_json, divergence_reason, path_json};
use super::world::{load_map, parse_pair};
use softvi::Status;
use softvi::io::npy;
use softvi::io::output::{OutputFile, OutputFolder};
use softvi::qlearn::{Dataset, qlearn};
use softvi::world::grid::{ActionSet, Connectivity, Grid};

#[derive(Args, Debug)]
pub(super) struct QlearnArgs {
    /// Dataset .npz: s, a, r, s_next of shape [N] or [B,N] (B datasets, one task each; -1 in
    /// s, a and s_next marks an empty entry), optional done (0/1) of the same shape.
    #[arg(long, value_name = "FILE.npz")]
    data: PathBuf,
    /// States S: the data's states are 0..S.
    #[arg(long, value_name = "S", conflicts_with_all = ["map", "maze"],
          required_unless_present_any = ["map", "maze"], requires = "actions")]
    states: Option<usize>,
    /// Actions A: the data's actions are 0..A.
    #[arg(long, value_name = "A", requires = "states")]
    actions: Option<usize>,
    /// MovingAI .map: the data's states are cells row * W + col and its actions the grid's
    /// (as `softvi sample` writes them); outputs are laid out over the map.
    #[arg(long, value_name = "FILE.map", conflicts_with = "maze")]
    map: Option<PathBuf>,
    /// Built-in generated maze of W x H cells, as --map.
    #[arg(long, value_name = "WxH")]
    maze: Option<String>,
    /// Seed of the generated maze.
    #[arg(long, default_value_t = 0, requires = "maze", value_name = "N")]
    maze_seed: u64,
    /// 4- or 8-connected moves (the grid's actions).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(4..=8))]
    connectivity: u8,
    /// The grid has a STAY action (last in the action order).
    #[arg(long)]
    stay: bool,
    #[command(flatten)]
    iteration: IterationArgs,
    /// Output folder: q.npy, values.npy, policy.npy, summary.json. It must be new, empty or a
    /// folder of an earlier `softvi qlearn`, whose result is replaced.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Write into a non-empty --out that is not a `softvi qlearn` folder (files of the same
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

/// The states and actions the data indexes: plain counts, or a grid's cells and moves.
struct Space {
    states: usize,
    actions: usize,
    /// Shape of one dataset's per-state array: `[S]` or `[H, W]`.
    state_shape: Vec<usize>,
    /// For summary.json.
    json: serde_json::Value,
    /// A grid's free cells, `[row][col]`: samples on walls are refused.
    free: Option<Vec<bool>>,
}

impl QlearnArgs {
    fn space(&self) -> Result<Space> {
        if let Some(states) = self.states {
            let actions = self.actions.context("--states needs --actions A")?;
            ensure!(states >= 1, "--states must be at least 1");
            ensure!(actions >= 1, "--actions must be at least 1");
            return Ok(Space {
                states,
                actions,
                state_shape: vec![states],
                json: json!({"states": states, "actions": actions}),
                free: None,
            });
        }
        let (grid, source) = match (&self.map, &self.maze) {
            (Some(path), _) => (load_map(path)?, path.display().to_string()),
            (None, Some(size)) => {
                let (w, h) =
                    parse_pair(size, 'x', "--maze").context("--maze expects WxH, e.g. 63x63")?;
                (
                    Grid::generate_maze(w, h, self.maze_seed)?,
                    format!("maze {w}x{h} seed {}", self.maze_seed),
                )
            }
            (None, None) => bail!("give the state space: --states S --actions A, or a grid"),
        };
        let connectivity = match self.connectivity {
            4 => Connectivity::Four,
            8 => Connectivity::Eight,
            c => bail!("--connectivity must be 4 or 8, got {c}"),
        };
        let actions = ActionSet {
            connectivity,
            stay: self.stay,
        };
        Ok(Space {
            states: grid.cells(),
            actions: actions.count(),
            state_shape: vec![grid.height, grid.width],
            json: json!({
                "source": source,
                "height": grid.height,
                "width": grid.width,
                "states": grid.cells(),
                "actions": actions.names(),
            }),
            free: Some(grid.free.clone()),
        })
    }
}

/// `softvi qlearn`. Returns the process exit code.
pub(super) fn qlearn_command(args: &QlearnArgs) -> Result<i32> {
    let start = Instant::now();
    let mut out = OutputFolder::claim(
        &args.out,
        "qlearn",
        &["q.npy", "values.npy", "policy.npy"],
        args.force,
    )?;
    let options = args.iteration.options()?;
    let space = args.space()?;
    let data = Dataset::load_npz(&args.data, space.states, space.actions)
        .with_context(|| format!("--data {}", args.data.display()))?;
    if let Some(free) = &space.free {
        data.check_free_cells(free, space.state_shape[1])
            .with_context(|| format!("--data {}", args.data.display()))?;
    }
    let mut backend = Backend::open(args.iteration.backend, &args.iteration.adapters)?;
    let mut line = ProgressLine::new(args.quiet);
    let learned = qlearn(backend.mdp()?, &data, &options, &mut |p| {
        line.update(p);
        ControlFlow::Continue(())
    });
    line.finish();
    let learned = learned?;
    let adapter = backend.adapter_json();
    let seconds = start.elapsed().as_secs_f64();
    let (b, a) = (learned.datasets, learned.actions);
    let grid = space.state_shape.len() == 2;
    let mut summary = json!({
        "backend": args.iteration.backend.name(),
        "adapter": adapter,
        "data": {
            "path": path_json(&args.data, "--data")?,
            "datasets": b,
            "entries": data.length,
        },
        "world": space.json,
        "samples": learned.samples,
        "unseen_pairs": learned.unseen_pairs,
        "states_without_data": learned.states_without_data,
        "sweeps": learned.sweeps,
        "residual": learned.residual,
        "status": learned.status.name(),
        "solve_seconds": learned.seconds,
        "seconds": seconds,
        "layout": {
            "q": if grid { "float32 [dataset][row][col][action], soft Q; NaN on unseen pairs and states without data" }
                else { "float32 [dataset][state][action], soft Q; NaN on unseen pairs and states without data" },
            "values": if grid { "float32 [dataset][row][col]; NaN on states without data" }
                else { "float32 [dataset][state]; NaN on states without data" },
            "policy": if grid { "float32 [dataset][row][col][action]; 0 on unseen pairs, NaN on states without data" }
                else { "float32 [dataset][state][action]; 0 on unseen pairs, NaN on states without data" },
        },
    });
    add_settings_json(&mut summary, &options);
    let diverged = learned.status == Status::Diverged;
    let mut files = Vec::new();
    if !diverged {
        let shape = |tail: &[usize]| [&[b], &space.state_shape[..], tail].concat();
        files.push(OutputFile {
            name: "q.npy",
            bytes: npy::encode_f32(&shape(&[a]), &learned.q),
        });
        files.push(OutputFile {
            name: "values.npy",
            bytes: npy::encode_f32(&shape(&[]), &learned.values),
        });
        files.push(OutputFile {
            name: "policy.npy",
            bytes: npy::encode_f32(&shape(&[a]), &learned.policy),
        });
    }
    let summary_text = out.write(&mut summary, files)?;
    if args.json {
        print!("{summary_text}");
    } else {
        let list = |v: &[usize]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("/")
        };
        println!(
            "data     {} ({b} dataset(s), {} samples, {} unseen pairs of {} x {a})",
            args.data.display(),
            list(&learned.samples),
            list(&learned.unseen_pairs),
            learned.states
        );
        println!(
            "qlearn   {} backup, alpha {}, gamma {}: {} after {} sweeps, residual {:.3e}",
            options.backup.name(),
            options.alpha,
            options.gamma,
            learned.status.name(),
            learned.sweeps,
            learned.residual
        );
        println!("wrote    {} in {seconds:.3} s", args.out.display());
    }
    if diverged {
        eprintln!(
            "error: the solve diverged: {}; no values were written",
            divergence_reason(&options)
        );
        return Ok(EXIT_DIVERGED);
    }
    Ok(0)
}
