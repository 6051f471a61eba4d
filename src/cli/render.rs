//! `softvi render`: one task of a solve's output folder drawn as a PNG.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, ValueEnum};

use softvi::io::npy;
use softvi::io::output::ResultFolder;
use softvi::world::grid::{ActionSet, Connectivity, Grid};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum LayerArg {
    /// Heatmap of V.
    Value,
    /// Arrows along the expected move over the value heatmap (maps up to 128 x 128; larger
    /// ones get the entropy heatmap).
    Policy,
    /// Heatmap of log10 occupancy (needs occupancy.npy).
    Occupancy,
    /// Heatmap of the policy entropy -sum pi log pi.
    Entropy,
}

#[derive(Args, Debug)]
pub(super) struct RenderArgs {
    /// Output folder of `softvi solve`.
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
    /// Task to draw (0-based; in a shard folder of `solve --tasks I/N`, its number in the whole
    /// batch, as the solve printed it). Default: the folder's first task.
    #[arg(long)]
    task: Option<usize>,
    /// PNG file to write.
    #[arg(long, value_name = "FILE.png")]
    out: PathBuf,
    /// What to draw.
    #[arg(long, value_enum, default_value_t = LayerArg::Value)]
    layer: LayerArg,
    /// Overlay this many trajectories sampled from the policy (needs policy.npy).
    #[arg(long, value_name = "N")]
    trajectories: Option<usize>,
    /// Seed of the sampled trajectories.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Time step to draw from a solve with --all-steps (values V_t, policy pi_t, occupancy
    /// D_t); default: step 0, and for the occupancy the sum over the steps (expected visits).
    /// A horizon T holds V_0..V_T and D_0..D_T but pi_0..pi_{T-1}: at step T only the value
    /// and occupancy layers (there is no policy at the last step).
    #[arg(long, value_name = "T")]
    step: Option<usize>,
}

/// What render needs of a grid solve's `summary.json`, every field checked.
struct SolvedWorld {
    grid: Grid,
    tasks: usize,
    actions: ActionSet,
    slip: f64,
    /// The drawn task's goal cells.
    goals: Vec<usize>,
}

/// Reads `dir/summary.json` (locked, [`ResultFolder`]), rebuilds its map and checks each field
/// render reads (the map's size, the tasks, the action list, the slip, task `task`'s goals,
/// `task` local to the folder); errors name the file and the field.
fn read_world(folder: &ResultFolder, dir: &Path, task: usize) -> Result<SolvedWorld> {
    let summary_path = dir.join("summary.json");
    let summary = &folder.summary;
    ensure!(
        summary.get("mdp").is_none() || summary.get("world").is_some(),
        "{} holds the solve of an MDP (--mdp {}): render draws grid solves only (--map, \
         --maze, --goals)",
        dir.display(),
        summary["mdp"]["path"].as_str().unwrap_or("FILE.npz")
    );
    let world = &summary["world"];
    let map = &world["map"];
    let field = |v: &serde_json::Value, what: &str| -> Result<u64> {
        v.as_u64()
            .with_context(|| format!("{}: missing {what}", summary_path.display()))
    };
    let grid = match map["kind"].as_str() {
        Some("maze") => Grid::generate_maze(
            field(&map["width"], "world.map.width")? as usize,
            field(&map["height"], "world.map.height")? as usize,
            field(&map["seed"], "world.map.seed")?,
        )?,
        Some("file") => Grid::load_movingai(Path::new(map["path"].as_str().unwrap_or_default()))
            .context("cannot reload the solve's map")?,
        _ => bail!(
            "{}: world.map does not say how to rebuild the map",
            summary_path.display()
        ),
    };
    let bad = |what: String| anyhow::anyhow!("{}: {what}", summary_path.display());
    for (key, have) in [("width", grid.width), ("height", grid.height)] {
        if let Some(v) = world.get(key) {
            ensure!(
                v.as_u64() == Some(have as u64),
                bad(format!(
                    "world.{key} is {v}, but the rebuilt map's is {have}"
                ))
            );
        }
    }
    let tasks = field(&summary["tasks"], "tasks")? as usize;
    ensure!(tasks >= 1, bad("tasks is 0".into()));
    ensure!(
        task < tasks,
        "--task {task} is out of range: the solve has {tasks} tasks"
    );
    let names: Vec<&str> = world["actions"]
        .as_array()
        .and_then(|a| a.iter().map(|n| n.as_str()).collect::<Option<Vec<_>>>())
        .ok_or_else(|| bad("world.actions is not a list of action names".into()))?;
    let actions = ActionSet {
        connectivity: if names.contains(&"NE") {
            Connectivity::Eight
        } else {
            Connectivity::Four
        },
        stay: names.contains(&"STAY"),
    };
    ensure!(
        actions.names() == names,
        bad(format!(
            "world.actions {names:?} is not an action list softvi writes (N, E, S, W, then \
             NE, SE, SW, NW when 8-connected, then STAY)"
        ))
    );
    let slip = world
        .get("slip")
        .map_or(Some(0.0), |v| v.as_f64())
        .ok_or_else(|| bad(format!("world.slip is {}, not a number", world["slip"])))?;
    ensure!(
        (0.0..=1.0).contains(&slip),
        bad(format!(
            "world.slip is {}, not a probability in [0, 1]",
            world["slip"]
        ))
    );
    let goal_list = summary["goals"]
        .as_array()
        .filter(|g| g.len() == tasks)
        .ok_or_else(|| bad(format!("goals is not a list of {tasks} tasks' goals")))?;
    let goals: Vec<usize> = goal_list[task]
        .as_array()
        .ok_or_else(|| bad(format!("goals[{task}] is not a list of [X, Y]")))?
        .iter()
        .enumerate()
        .map(|(k, xy)| {
            let pair = xy
                .as_array()
                .filter(|p| p.len() == 2)
                .and_then(|p| Some((p[0].as_u64()? as usize, p[1].as_u64()? as usize)));
            match pair {
                Some((x, y))
                    if x < grid.width && y < grid.height && grid.free[y * grid.width + x] =>
                {
                    Ok(y * grid.width + x)
                }
                _ => Err(bad(format!(
                    "goals[{task}][{k}] = {xy} is not a free cell X,Y of the {}x{} map",
                    grid.width, grid.height
                ))),
            }
        })
        .collect::<Result<_>>()?;
    Ok(SolvedWorld {
        grid,
        tasks,
        actions,
        slip,
        goals,
    })
}

/// Where one task's arrays are read from: the folder, the batch's shape `[tasks, H, W]`, the
/// task and the `--step`.
struct TaskArrays<'a> {
    folder: &'a ResultFolder,
    dir: &'a Path,
    tasks: usize,
    height: usize,
    width: usize,
    task: usize,
    step: Option<usize>,
}

impl TaskArrays<'_> {
    /// The task's slice of `name`, `[B, H, W(, per_cell)]`, or of `[B, K, H, W(, per_cell)]`
    /// (every time step): step `--step`, or with `sum_steps` and no `--step` the sum over the
    /// steps; `None` when the file is absent. `one_fewer`: the array holds one step fewer than
    /// the values (the policy: pi_0..pi_{T-1} beside V_0..V_T), so `--step` one past its last
    /// step reads as absent, not out of range.
    fn read(
        &self,
        name: &str,
        per_cell: usize,
        sum_steps: bool,
        one_fewer: bool,
    ) -> Result<Option<Vec<f32>>> {
        let path = self.dir.join(name);
        let Some(bytes) = self.folder.read(name)? else {
            return Ok(None);
        };
        let array = npy::decode_float(&bytes)
            .with_context(|| format!("{} is not a float .npy", path.display()))?;
        let (h, w, tasks) = (self.height, self.width, self.tasks);
        let tail: &[usize] = if per_cell > 1 {
            &[h, w, per_cell]
        } else {
            &[h, w]
        };
        let timed = array.shape.len() == tail.len() + 2;
        let steps = if timed { array.shape[1] } else { 1 };
        let lead: &[usize] = if timed { &array.shape[1..2] } else { &[] };
        let expected = [&[tasks], lead, tail].concat();
        ensure!(
            array.shape == expected,
            "{}: shape {:?}, expected [{tasks}, {}] or with a time axis after the task axis",
            path.display(),
            array.shape,
            tail.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let n = h * w * per_cell;
        let task = &array.data[self.task * steps * n..(self.task + 1) * steps * n];
        Ok(Some(match self.step {
            Some(t) if one_fewer && timed && t == steps => return Ok(None),
            Some(t) => {
                ensure!(
                    t < steps,
                    "--step {t} is out of range: {} holds {steps} time steps",
                    path.display()
                );
                task[t * n..(t + 1) * n].to_vec()
            }
            None if sum_steps => (0..n)
                .map(|i| (0..steps).map(|t| task[t * n + i]).sum())
                .collect(),
            None => task[..n].to_vec(),
        }))
    }
}

/// `softvi render`: reads a solve's folder (summary.json, values.npy, policy.npy,
/// occupancy.npy), rebuilds its map and draws one task.
pub(super) fn render_command(args: &RenderArgs) -> Result<i32> {
    use softvi::analysis::render::{Layer, TaskView, render, write_png};
    softvi::io::output::check_picture_path(&args.out, "--out", false)?;
    let dir = &args.from;
    let folder = ResultFolder::open(dir, "--from")?;
    ensure!(
        folder.command == "solve",
        "--from {} is the folder of `softvi {}`: {}",
        dir.display(),
        folder.command,
        match folder.command.as_str() {
            "qlearn" =>
                "render draws grid solves; its values.npy and policy.npy are NumPy \
                         arrays over the dataset's states (plot them with NumPy), or solve the \
                         grid with `softvi solve` and render that folder",
            "meta" | "sample" | "infer" | "scen" | "irl" =>
                "render draws the folders of \
                         `softvi solve` (values, policy, occupancy of a grid); solve the world \
                         with `softvi solve --out DIR` and render DIR",
            _ => "render draws the folders of `softvi solve` only",
        }
    );
    // A shard folder of `solve --tasks I/N` holds tasks start..end of the batch, numbered as
    // the solve printed them.
    let first = folder.summary["shard"]["tasks"][0].as_u64().unwrap_or(0) as usize;
    let global = args.task.unwrap_or(first);
    ensure!(
        global >= first,
        "--task {global} is not in {}: it holds tasks {first}..{} of the batch (a shard of \
         `solve --tasks`)",
        dir.display(),
        folder.summary["shard"]["tasks"][1]
    );
    let task = global - first;
    let SolvedWorld {
        grid,
        tasks,
        actions,
        slip,
        goals,
    } = read_world(&folder, dir, task).map_err(|e| match first {
        0 => e,
        _ if task >= folder.summary["tasks"].as_u64().unwrap_or(0) as usize => anyhow::anyhow!(
            "--task {global} is not in {}: it holds tasks {first}..{} of the batch (a shard \
             of `solve --tasks`)",
            dir.display(),
            folder.summary["shard"]["tasks"][1]
        ),
        _ => e,
    })?;
    let (h, w) = (grid.height, grid.width);
    let arrays = TaskArrays {
        folder: &folder,
        dir,
        tasks,
        height: h,
        width: w,
        task,
        step: args.step,
    };
    let values = arrays
        .read("values.npy", 1, false, false)?
        .with_context(|| {
            format!(
                "{} has no values.npy (did the solve diverge?)",
                dir.display()
            )
        })?;
    let policy = arrays.read("policy.npy", actions.count(), false, true)?;
    let occupancy = arrays.read("occupancy.npy", 1, true, false)?;
    // V_0..V_T and D_0..D_T have T + 1 steps, pi_0..pi_{T-1} T: at the last step only the
    // values and the occupancy exist.
    if let Some(t) = args.step
        && policy.is_none()
        && folder.lists("policy.npy")
    {
        let what = match (args.layer, args.trajectories) {
            (_, Some(_)) => Some("--trajectories"),
            (LayerArg::Policy | LayerArg::Entropy, None) => Some("this layer"),
            _ => None,
        };
        if let Some(what) = what {
            bail!(
                "--step {t} is the last step: there is no policy at the last step ({} holds \
                 pi_0..pi_{} beside the values V_0..V_{t}), and {what} needs it; draw --layer \
                 value or occupancy at step {t}, or a step below {t}",
                dir.join("policy.npy").display(),
                t.saturating_sub(1)
            );
        }
    }
    let view = TaskView {
        grid: &grid,
        actions,
        slip,
        goals: &goals,
        values: &values,
        policy: policy.as_deref(),
        occupancy: occupancy.as_deref(),
    };
    let layer = match args.layer {
        LayerArg::Value => Layer::Value,
        LayerArg::Policy => Layer::Policy,
        LayerArg::Occupancy => Layer::Occupancy,
        LayerArg::Entropy => Layer::Entropy,
    };
    if layer == Layer::Policy && w.max(h) > softvi::analysis::render::MAX_ARROW_SIDE {
        eprintln!("note: {w}x{h} is too large for arrows; drawing the policy entropy instead");
    }
    view.validate()
        .with_context(|| format!("{} holds a result render cannot draw", dir.display()))?;
    let (canvas, (lo, hi)) = render(&view, layer, args.trajectories.map(|n| (n, args.seed)))?;
    write_png(&canvas, &args.out)?;
    println!(
        "wrote {} ({}x{} px), task {}, {:?} from {lo:.6} to {hi:.6}",
        args.out.display(),
        canvas.width,
        canvas.height,
        global,
        args.layer
    );
    Ok(0)
}
