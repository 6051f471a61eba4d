//! The `softvi` command line: argument definitions and the commands they run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;

use softvi::engine::gpu::{GpuContext, GridEngine};
use softvi::engine::options::{Backup, Horizon, SolveOptions};
use softvi::engine::schedule::Progress;
use softvi::engine::solution::{Solution, Status};
use softvi::io::npy;
use softvi::io::output::{OutputFile, write_folder};
use softvi::world::grid::{ActionSet, Connectivity, Grid, MoveCost};
use softvi::world::grid_problem::{GridProblem, GridTask};

mod infer;
mod irl;
pub use infer::{InferArgs, infer_command};
pub use irl::{IrlArgs, irl_command};

/// Exit code of a solve that diverged (no finite values exist).
pub const EXIT_DIVERGED: i32 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "softvi",
    version,
    about = "Batched soft value iteration (max-ent RL / control as inference) on wgpu",
    long_about = "Batched soft value iteration: the soft-optimal V, Q and policy \
pi(a|s) = exp((Q - V)/alpha) of many tasks over one world, computed by WGSL compute shaders \
on any wgpu adapter (Vulkan, Metal, DX12, GL) and checked against a CPU reference.",
    after_help = "Example:\n  softvi solve --maze 127x127 --goal 1,1 --goal 125,125 --alpha 0.1 --gamma 0.999 --out out"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Command {
    /// Solve a batch of tasks, gridworld goals (one task each) or a general MDP (--mdp), and
    /// write values, policy, summary.
    #[command(
        after_help = "Examples:\n  softvi solve --maze 127x127 --goal 1,1 --goal 125,125 --alpha 0.1 --out out\n  \
softvi solve --map den312d.map --goals goals.txt --alpha 0.1 --gamma 1 --backend cpu --out out\n  \
softvi solve --mdp mdp.npz --horizon 50 --all-steps --occupancy --out out
  \
softvi solve --maze 63x63 --goal 1,1 --alpha 0.1 --occupancy --start 61,61 --out out"
    )]
    Solve(SolveArgs),
    /// Draw a solve's output folder as a PNG: value, policy, entropy or occupancy heatmaps,
    /// policy arrows, sampled trajectories.
    #[command(
        after_help = "Examples:\n  softvi render --from out --out value.png\n  \
softvi render --from out --task 1 --layer policy --trajectories 20 --seed 3 --out policy.png\n\n\
Walls are black, goals magenta, cells with no finite value grey; the colour bar under the map \
runs from the lowest (left) to the highest (right) value over free non-goal cells, both \
printed under it and on stdout. Maps over 2048 cells on a side are downsampled."
    )]
    Render(RenderArgs),
    /// Draw trajectories from the soft-optimal policy of each task: states.npy int32
    /// [B,N,T+1], actions.npy int32 [B,N,T] (-1 after termination).
    #[command(
        after_help = "Examples:\n  softvi sample --maze 63x63 --goal 1,1 --alpha 0.1 --start 61,61 --episodes 1000 --steps 400 --out samples\n  \
softvi sample --mdp mdp.npz --horizon 50 --episodes 100 --seed 7 --out samples\n\n\
Grid states are cells row * W + col. An episode stops at a terminal (goal) state, which is \
recorded; later states and actions are -1. Each (task, episode) draws from its own stream of \
--seed, so a seed reproduces its samples on a given backend."
    )]
    Sample(SampleArgs),
    /// Posterior over the tasks (goals, rewards or MDP reward batches) after each step of an
    /// observed trajectory: posterior.npy float32 [K+1,B], rows summing to 1.
    #[command(
        after_help = "Examples:\n  softvi infer --maze 63x63 --goal 1,1 --goal 61,61 --goal 1,61 --alpha 0.1 --trajectory walk.txt --out post\n  \
softvi infer --mdp mdp.npz --prior prior.npy --trajectory walk.txt --out post\n\n\
log p(z | tau) = log p(z) + sum_t log pi_z(a_t|s_t) with observed actions, or \
sum_t log sum_a pi_z(a|s_t) P(s_{t+1}|s_t,a) without; --alpha is the agent's rationality \
temperature (small = near-optimal). A task whose episode would have ended (its goal passed) \
gets probability 0; a step no task explains is an error naming its line."
    )]
    Infer(InferArgs),
    /// Learn linear reward weights theta for state features from demonstrations (maximum
    /// causal entropy IRL): theta.npy [M,K], reward.npy, per-iteration log-likelihood.
    #[command(after_help = "Example (recover a known reward):\n  \
softvi sample --maze 31x31 --goal 29,29 --reward true_reward.npy --horizon 40 --episodes 500 --out demos\n  \
softvi irl --maze 31x31 --goal 29,29 --features features.npy --demos demos/states.npy --demo-actions demos/actions.npy --out learned\n\n\
Each iteration solves the world with reward (its own, e.g. move costs) + theta . phi(s) backward \
and forward, and steps theta along mu_demos - mu_model (feature expectations, discounted by \
gamma^t) with Adam. The horizon is the demo length unless --discounted.")]
    Irl(IrlArgs),
    /// Solve the distinct goals of a MovingAI scenario file as one batch and compare the soft
    /// value at each start with the published optimal length.
    #[command(
        after_help = "Example:\n  softvi scen --map den312d.map --scen den312d.map.scen --limit 100\n\n\
gap = -V(start) - optimal_length for alpha > 0, where it is negative (the soft value adds the \
entropy of near-optimal alternatives). At --alpha 0 the gap is taken on `path`, the f64 length \
of the path the solve's greedy policy takes from the start, which is exact; `max |V gap|` \
reports the f32 value's own gap, which grows with the path length (f32 rounding)."
    )]
    Scen(ScenArgs),
    /// Measure sweep throughput of the standard workloads on the GPU path and the CPU
    /// reference in one run.
    #[command(
        after_help = "Examples:\n  softvi bench\n  softvi bench --workload maze1024-b1 --sweeps 128"
    )]
    Bench(BenchArgs),
    /// List the wgpu adapters this machine offers (honours WGPU_BACKEND / WGPU_ADAPTER_NAME).
    #[command(after_help = "Example:\n  WGPU_BACKEND=gl softvi adapters")]
    Adapters,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// WGSL compute shaders on a wgpu adapter.
    Gpu,
    /// The f64 CPU reference.
    Cpu,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackupArg {
    /// Q = r + gamma * E[V'] (max-ent RL / soft Q-learning).
    Expected,
    /// Q = r + alpha * log E[exp(gamma V'/alpha)] (exact inference backward message).
    Optimistic,
}

/// The world and task flags shared by commands that build a gridworld batch.
#[derive(Args, Debug)]
pub struct WorldArgs {
    /// MovingAI .map file.
    #[arg(
        long,
        value_name = "FILE.map",
        conflicts_with = "maze",
        required_unless_present_any = ["maze", "mdp"]
    )]
    pub map: Option<PathBuf>,
    /// General tabular MDP as a NumPy .npz (P or indptr/indices/data, R, optional terminal,
    /// terminal_value, initial); outputs are [B,S] and [B,S,A].
    #[arg(long, value_name = "FILE.npz", conflicts_with_all = ["map", "maze", "goal", "goals", "reward"])]
    pub mdp: Option<PathBuf>,
    /// Built-in generated maze of W x H cells (free cells at odd X and Y).
    #[arg(long, value_name = "WxH")]
    pub maze: Option<String>,
    /// Seed of the generated maze.
    #[arg(long, default_value_t = 0, requires = "maze", value_name = "N")]
    pub maze_seed: u64,
    /// Goal cell X,Y (X = column, Y = row); each goal is one task. Repeatable.
    #[arg(long = "goal", value_name = "X,Y", num_args = 1.., conflicts_with = "goals",
          required_unless_present_any = ["goals", "mdp"])]
    pub goal: Vec<String>,
    /// File with one `X Y` goal per line (one task each; blank lines and # comments allowed).
    #[arg(long, value_name = "FILE")]
    pub goals: Option<PathBuf>,
    /// State reward R_task, float32 .npy of shape [H,W] (shared) or [B,H,W] (per task).
    #[arg(long, value_name = "FILE.npy")]
    pub reward: Option<PathBuf>,
    /// 4- or 8-connected moves.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(4..=8))]
    pub connectivity: u8,
    /// Add a STAY action (last in the action order).
    #[arg(long)]
    pub stay: bool,
    /// Slip probability eps: with probability eps a uniformly drawn action's move happens.
    #[arg(long, default_value_t = 0.0, value_name = "EPS")]
    pub slip: f64,
    /// Step costs ORTH,DIAG[,STAY] (default 1, sqrt(2), 0).
    #[arg(long, value_name = "ORTH,DIAG[,STAY]")]
    pub move_cost: Option<String>,
}

/// Soft value iteration settings.
#[derive(Args, Debug)]
pub struct IterationArgs {
    /// Temperature alpha >= 0 (0 = hard max).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub alpha: f64,
    /// Discount gamma in [0, 1].
    #[arg(long, default_value_t = 0.99, allow_negative_numbers = true)]
    pub gamma: f64,
    /// Backup kind.
    #[arg(long, value_enum, default_value_t = BackupArg::Expected)]
    pub backup: BackupArg,
    /// Finite horizon T: apply exactly T backups from V_T = 0 and report V_0, pi_0.
    #[arg(long, value_name = "T", conflicts_with_all = ["tol", "max_iters"])]
    pub horizon: Option<u32>,
    /// Infinite horizon: stop when max_s |V_new - V_old| <= TOL.
    #[arg(long, default_value_t = 1e-4)]
    pub tol: f64,
    /// Infinite horizon: most backups.
    #[arg(long, default_value_t = 100_000)]
    pub max_iters: u32,
    /// Where the sweeps run.
    #[arg(long, value_enum, default_value_t = BackendArg::Gpu)]
    pub backend: BackendArg,
    /// Plain value iteration: no jumps along the estimated slowest mode.
    #[arg(long)]
    pub no_extrapolation: bool,
    /// GPU adapters to shard the tasks over: `all` (every adapter WGPU_BACKEND allows) or a
    /// count N (the first N; `softvi adapters` lists them).
    #[arg(long, default_value = "1", value_name = "all|N")]
    pub adapters: String,
}

#[derive(Args, Debug)]
pub struct SolveArgs {
    #[command(flatten)]
    pub world: WorldArgs,
    #[command(flatten)]
    pub iteration: IterationArgs,
    /// Output folder: values.npy, policy.npy, summary.json.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Skip policy.npy (for huge worlds).
    #[arg(long)]
    pub no_policy: bool,
    /// With --horizon T: keep every step, values.npy [B,T+1,...] (V_0..V_T) and policy.npy
    /// [B,T,...,A] (pi_0..pi_{T-1}).
    #[arg(long, requires = "horizon")]
    pub all_steps: bool,
    /// Also write occupancy.npy, the state occupancy under the soft-optimal policy: D_0..D_T
    /// [B,T+1,...] with --horizon T, else the discounted sum_t gamma^t D_t [B,...], iterated
    /// until its residual is within --tol times the start distribution's peak.
    #[arg(long)]
    pub occupancy: bool,
    /// Start cell X,Y of the occupancy (repeatable, equal weights; default: uniform over the
    /// free non-goal cells). Grid worlds only; an --mdp file carries `initial`.
    #[arg(long = "start", value_name = "X,Y", conflicts_with = "mdp")]
    pub start: Vec<String>,
    /// Also draw task 0's value heatmap to this PNG (as `softvi render --from DIR`).
    #[arg(long, value_name = "FILE.png")]
    pub png: Option<PathBuf>,
    /// Print summary.json's content instead of the human summary.
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr (it is shown only on a terminal, for solves over a second).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LayerArg {
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
pub struct RenderArgs {
    /// Output folder of `softvi solve`.
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// Task to draw (0-based).
    #[arg(long, default_value_t = 0)]
    pub task: usize,
    /// PNG file to write.
    #[arg(long, value_name = "FILE.png")]
    pub out: PathBuf,
    /// What to draw.
    #[arg(long, value_enum, default_value_t = LayerArg::Value)]
    pub layer: LayerArg,
    /// Overlay this many trajectories sampled from the policy (needs policy.npy).
    #[arg(long, value_name = "N")]
    pub trajectories: Option<usize>,
    /// Seed of the sampled trajectories.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Time step to draw from a solve with --all-steps (values V_t, policy pi_t, occupancy
    /// D_t); default: step 0, and for the occupancy the sum over the steps (expected visits).
    #[arg(long, value_name = "T")]
    pub step: Option<usize>,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    pub world: WorldArgs,
    #[command(flatten)]
    pub iteration: IterationArgs,
    /// Episodes per task N.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub episodes: usize,
    /// Steps per episode T (default: --horizon, else 100); at most --horizon.
    #[arg(long, value_name = "T")]
    pub steps: Option<usize>,
    /// Seed of the draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Start cell X,Y (repeatable, equal weights; default: uniform over the free non-goal
    /// cells). Grid worlds only; an --mdp file carries `initial`.
    #[arg(long = "start", value_name = "X,Y", conflicts_with = "mdp")]
    pub start: Vec<String>,
    /// Output folder: states.npy, actions.npy, summary.json.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Print summary.json's content instead of the human summary.
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct ScenArgs {
    /// MovingAI .map file.
    #[arg(long, value_name = "FILE.map")]
    pub map: PathBuf,
    /// MovingAI .scen file (version 1) for that map.
    #[arg(long, value_name = "FILE.scen")]
    pub scen: PathBuf,
    /// Temperature alpha >= 0 (0 = hard shortest paths).
    #[arg(long, default_value_t = 0.0)]
    pub alpha: f64,
    /// Use only the first N scenarios.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Residual tolerance of the undiscounted solve.
    #[arg(long, default_value_t = 1e-6)]
    pub tol: f64,
    /// Where the sweeps run.
    #[arg(long, value_enum, default_value_t = BackendArg::Gpu)]
    pub backend: BackendArg,
    /// GPU adapters to shard the goals over: `all` or a count N.
    #[arg(long, default_value = "1", value_name = "all|N")]
    pub adapters: String,
    /// Print only the summary line, not one line per scenario, and no progress line.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Workloads to run (default: all): maze1024-b1, maze1024-b8, maze4096-b1, orz900d-b64,
    /// mdp1m (10^6 states, 8 actions, ~4 successors; also timed end to end with occupancy),
    /// irl256 (seconds per MaxEnt IRL iteration, 256x256 grid, K = 8, M = 16).
    #[arg(long = "workload", value_name = "NAME")]
    pub workloads: Vec<String>,
    /// Folder holding the MovingAI maps (orz900d.map).
    #[arg(long, default_value = "../shared/maps", value_name = "DIR")]
    pub maps: PathBuf,
    /// Extra sweeps timed on the GPU path per workload, to start with (default: about 2e8
    /// state updates, 4 to 128); doubled until they take half a second.
    #[arg(long)]
    pub sweeps: Option<u32>,
    /// Extra sweeps timed on the CPU reference per workload, to start with (0 skips the CPU).
    #[arg(long, default_value_t = 2)]
    pub cpu_sweeps: u32,
    /// Also time mdp1m's end-to-end solve + occupancy and an irl256 iteration on the CPU
    /// reference (minutes each).
    #[arg(long)]
    pub cpu_solve: bool,
}

/// A gridworld batch built from the command line, with a description of its source.
pub struct World {
    /// The problem.
    pub problem: GridProblem,
    /// `"maze 255x255 seed 0"` or the map path.
    pub source: String,
    /// Goals per task as (X, Y).
    pub goals: Vec<Vec<(usize, usize)>>,
    /// How to rebuild the map: `{"kind": "maze", "width", "height", "seed"}` or
    /// `{"kind": "file", "path"}` (absolute).
    pub map: serde_json::Value,
}

fn parse_pair(text: &str, sep: char, what: &str) -> Result<(usize, usize)> {
    let parts: Vec<&str> = text
        .split(sep)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    ensure!(
        parts.len() == 2,
        "{what} {text:?} is not of the form X{sep}Y"
    );
    let num = |s: &str| {
        s.parse::<usize>()
            .with_context(|| format!("{what} {text:?}: {s:?} is not a cell index"))
    };
    Ok((num(parts[0])?, num(parts[1])?))
}

/// Parses a goals file: one `X Y` per line, blank lines and `#` comments allowed.
pub fn parse_goals_file(path: &Path) -> Result<Vec<(usize, usize)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read goals file {}", path.display()))?;
    let mut goals = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let pair = parse_pair(&line.replace(',', " "), ' ', "goal")
            .with_context(|| format!("{}:{}", path.display(), i + 1))?;
        goals.push(pair);
    }
    ensure!(
        !goals.is_empty(),
        "goals file {} lists no goal",
        path.display()
    );
    Ok(goals)
}

impl WorldArgs {
    /// Builds the gridworld batch, validating everything the flags say.
    pub fn build(&self) -> Result<World> {
        let (grid, source, map) = match (&self.map, &self.maze) {
            (Some(path), _) => {
                let grid = Grid::load_movingai(path)?;
                let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
                (
                    grid,
                    path.display().to_string(),
                    json!({"kind": "file", "path": absolute}),
                )
            }
            (None, Some(size)) => {
                let (w, h) =
                    parse_pair(size, 'x', "--maze").context("--maze expects WxH, e.g. 255x255")?;
                let map = json!({"kind": "maze", "width": w, "height": h, "seed": self.maze_seed});
                (
                    Grid::generate_maze(w, h, self.maze_seed)?,
                    format!("maze {w}x{h} seed {}", self.maze_seed),
                    map,
                )
            }
            (None, None) => bail!("give a world: --map FILE.map or --maze WxH"),
        };
        let goals: Vec<(usize, usize)> = match &self.goals {
            Some(path) => parse_goals_file(path)?,
            None => self
                .goal
                .iter()
                .map(|g| parse_pair(g, ',', "--goal"))
                .collect::<Result<_>>()?,
        };
        ensure!(
            !goals.is_empty(),
            "give at least one goal: --goal X,Y or --goals FILE"
        );
        for &(x, y) in &goals {
            ensure!(
                x < grid.width && y < grid.height,
                "goal X={x},Y={y} is off the {}x{} map (X < {}, Y < {})",
                grid.width,
                grid.height,
                grid.width,
                grid.height
            );
            ensure!(
                grid.free[y * grid.width + x],
                "goal X={x},Y={y} is on a blocked cell"
            );
        }
        let connectivity = match self.connectivity {
            4 => Connectivity::Four,
            8 => Connectivity::Eight,
            c => bail!("--connectivity must be 4 or 8, got {c}"),
        };
        let move_cost = match &self.move_cost {
            None => MoveCost::default(),
            Some(text) => {
                let v: Vec<f64> = text
                    .split(',')
                    .map(|s| s.trim().parse::<f64>())
                    .collect::<Result<_, _>>()
                    .with_context(|| {
                        format!("--move-cost {text:?} is not ORTH,DIAG[,STAY] numbers")
                    })?;
                ensure!(
                    (2..=3).contains(&v.len()),
                    "--move-cost {text:?} needs 2 or 3 numbers (ORTH,DIAG[,STAY])"
                );
                MoveCost {
                    orthogonal: v[0],
                    diagonal: v[1],
                    stay: v.get(2).copied().unwrap_or(0.0),
                }
            }
        };
        let rewards = match &self.reward {
            None => vec![None; goals.len()],
            Some(path) => {
                let array = npy::read_float(path)?;
                let (h, w, b) = (grid.height, grid.width, goals.len());
                let per_task = match array.shape[..] {
                    [ah, aw] if (ah, aw) == (h, w) => false,
                    [ab, ah, aw] if (ab, ah, aw) == (b, h, w) => true,
                    _ => bail!(
                        "--reward {}: shape {:?} is neither [H,W] = [{h}, {w}] nor [B,H,W] = [{b}, {h}, {w}]",
                        path.display(),
                        array.shape
                    ),
                };
                if let Some(i) = array.data.iter().position(|r| !r.is_finite()) {
                    let c = i % (h * w);
                    bail!(
                        "--reward {}: value {} at task {}, X={}, Y={} is not finite",
                        path.display(),
                        array.data[i],
                        i / (h * w),
                        c % w,
                        c / w
                    );
                }
                (0..b)
                    .map(|t| {
                        let start = if per_task { t * h * w } else { 0 };
                        Some(array.data[start..start + h * w].to_vec())
                    })
                    .collect()
            }
        };
        let tasks = goals
            .iter()
            .zip(rewards)
            .map(|(&(x, y), reward)| GridTask {
                goals: vec![y * grid.width + x],
                reward,
            })
            .collect();
        let problem = GridProblem {
            grid,
            actions: ActionSet {
                connectivity,
                stay: self.stay,
            },
            slip: self.slip,
            move_cost,
            tasks,
        };
        problem.validate()?;
        Ok(World {
            problem,
            source,
            goals: goals.into_iter().map(|g| vec![g]).collect(),
            map,
        })
    }
}

impl IterationArgs {
    /// The solve settings, validated.
    pub fn options(&self, policy: bool) -> Result<SolveOptions> {
        let horizon = match self.horizon {
            Some(t) => Horizon::Finite(t),
            None => Horizon::Infinite {
                tol: self.tol,
                max_iters: self.max_iters,
            },
        };
        let backup = match self.backup {
            BackupArg::Expected => Backup::Expected,
            BackupArg::Optimistic => Backup::Optimistic,
        };
        let options = SolveOptions {
            extrapolate: !self.no_extrapolation,
            alpha: self.alpha,
            gamma: self.gamma,
            backup,
            horizon,
            policy,
        };
        options.validate()?;
        Ok(options)
    }
}

fn adapter_json(ctx: &GpuContext) -> serde_json::Value {
    json!({
        "name": ctx.info.name,
        "backend": ctx.info.backend.to_string(),
        "driver": ctx.info.driver,
        "device_type": format!("{:?}", ctx.info.device_type),
    })
}

/// How many adapters `--adapters` asks for: `None` = all.
fn adapter_count(text: &str) -> Result<Option<usize>> {
    if text == "all" {
        return Ok(None);
    }
    let n: usize = text
        .parse()
        .with_context(|| format!("--adapters {text:?} is neither `all` nor a count"))?;
    ensure!(n >= 1, "--adapters must be at least 1, got {n}");
    Ok(Some(n))
}

/// Runs the solve on the chosen backend and adapters; returns the solution and the adapter
/// description (a list when the tasks were sharded over several adapters).
pub fn run_backend(
    backend: BackendArg,
    adapters: &str,
    problem: &GridProblem,
    options: &SolveOptions,
    quiet: bool,
) -> Result<(Solution, serde_json::Value)> {
    let mut line = ProgressLine::new(quiet);
    let result = run_backend_with(backend, adapters, problem, options, &mut |p| line.update(p));
    line.finish();
    result
}

fn run_backend_with(
    backend: BackendArg,
    adapters: &str,
    problem: &GridProblem,
    options: &SolveOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(Solution, serde_json::Value)> {
    let count = adapter_count(adapters)?;
    if backend == BackendArg::Gpu && count != Some(1) {
        let mut contexts = GpuContext::all_from_env()?;
        if let Some(n) = count {
            ensure!(
                n <= contexts.len(),
                "--adapters {n}: only {} adapter(s) available (see `softvi adapters`)",
                contexts.len()
            );
            contexts.truncate(n);
        }
        let mut engines = contexts
            .iter()
            .map(GridEngine::new)
            .collect::<softvi::Result<Vec<_>>>()?;
        let solution = softvi::engine::gpu::solve_sharded(&mut engines, problem, options)?;
        return Ok((solution, contexts.iter().map(adapter_json).collect()));
    }
    match backend {
        BackendArg::Cpu => Ok((
            softvi::engine::cpu::solve_cpu_with_progress(problem, options, progress)?,
            json!({"name": "cpu reference (f64)", "backend": "cpu"}),
        )),
        BackendArg::Gpu => {
            let ctx = GpuContext::from_env()?;
            let adapter = adapter_json(&ctx);
            let mut engine = GridEngine::new(&ctx)?;
            Ok((
                engine.solve_with_progress(problem, options, progress)?,
                adapter,
            ))
        }
    }
}

/// `softvi solve --mdp FILE.npz`: a general MDP; `values.npy` `[B,S]` (`[B,T+1,S]` with
/// every step), `policy.npy` `[B,S,A]` (`[B,T,S,A]`), `occupancy.npy`, `summary.json`.
fn mdp_solve_command(args: &SolveArgs, path: &Path) -> Result<i32> {
    let start = Instant::now();
    let mdp = softvi::world::mdp::TabularMdp::load_npz(path)?;
    let options = args.iteration.options(!args.no_policy)?;
    ensure!(
        args.png.is_none(),
        "--png draws grid worlds only, not --mdp"
    );
    let outputs = softvi::engine::options::Outputs {
        all_steps: args.all_steps,
        occupancy: args.occupancy,
    };
    let (solved, adapter) = run_mdp_backend(&args.iteration, &mdp, &options, outputs, args.quiet)?;
    let solution = &solved.solution;
    let seconds = start.elapsed().as_secs_f64();
    let (b, s, a) = (mdp.tasks, mdp.states, mdp.actions);
    let backend = match args.iteration.backend {
        BackendArg::Gpu => "gpu",
        BackendArg::Cpu => "cpu",
    };
    let steps = solved.steps.is_some();
    let mut summary = json!({
        "backend": backend,
        "adapter": adapter,
        "mdp": {
            "path": std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
            "states": s,
            "actions": a,
            "nonzeros": mdp.nonzeros(),
        },
        "layout": {
            "values": if steps { "float32 [task][t][state], t = 0..T; -inf where no terminal is reachable (gamma = 1)" }
                else { "float32 [task][state]; -inf where no terminal is reachable (gamma = 1)" },
            "policy": if steps { "float32 [task][t][state][action], t = 0..T-1; NaN on terminal and such states" }
                else { "float32 [task][state][action]; NaN on terminal and such states" },
            "occupancy": match options.horizon {
                Horizon::Finite(_) => "float32 [task][t][state], D_0..D_T",
                Horizon::Infinite { .. } => "float32 [task][state], sum_t gamma^t D_t",
            },
        },
    });
    add_run_json(&mut summary, &options, solution, seconds);
    add_mdp_json(&mut summary, &solved);
    let summary_text = serde_json::to_string_pretty(&summary)? + "\n";
    let arrays = solve_arrays(
        solution,
        solved.steps.as_ref(),
        solved.occupancy.as_ref(),
        &[s],
    );
    write_solve_folder(&args.out, &summary_text, solution.diverged(), &arrays)?;
    if args.json {
        print!("{summary_text}");
    } else {
        let statuses: Vec<&str> = solution.status.iter().map(|s| s.name()).collect();
        println!(
            "mdp      {} ({s} states, {a} actions, {} transitions)",
            path.display(),
            mdp.nonzeros()
        );
        println!(
            "solve    {b} tasks, {} backup, alpha {}, gamma {}",
            options.backup.name(),
            options.alpha,
            options.gamma
        );
        println!(
            "backend  {} ({})",
            summary["adapter"]["name"].as_str().unwrap_or("?"),
            summary["adapter"]["backend"].as_str().unwrap_or("?")
        );
        println!(
            "result   {} after {} sweeps in {:.3} s",
            statuses.join("/"),
            solution.iterations.iter().max().unwrap_or(&0),
            solution.seconds
        );
        if let Some(d) = &solved.occupancy {
            println!(
                "forward  occupancy {} after {} iterations",
                d.status
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join("/"),
                d.iterations
            );
        }
        println!("wrote    {} in {seconds:.3} s", args.out.display());
    }
    if solution.diverged() {
        eprintln!("error: the solve diverged: values grow without bound; no values were written");
        return Ok(EXIT_DIVERGED);
    }
    Ok(0)
}

/// A one-line progress display on stderr: sweeps, residual, sweeps/s and an ETA (from the
/// residual's decay rate for an infinite horizon). Shown only when stderr is a terminal, the
/// user did not ask for quiet, and the solve has run for over a second; erased at the end.
struct ProgressLine {
    enabled: bool,
    start: Instant,
    last_print: Option<Instant>,
    previous: Option<(u32, f64)>,
    shown: bool,
}

impl ProgressLine {
    fn new(quiet: bool) -> Self {
        use std::io::IsTerminal;
        Self {
            enabled: !quiet && std::io::stderr().is_terminal(),
            start: Instant::now(),
            last_print: None,
            previous: None,
            shown: false,
        }
    }

    fn update(&mut self, p: &Progress) {
        if !self.enabled {
            return;
        }
        let remaining = match (p.tol, self.previous) {
            (Some(tol), Some((sweeps, residual)))
                if p.sweeps > sweeps && residual > 0.0 && p.residual > tol =>
            {
                let rate = (p.residual / residual).powf(1.0 / (p.sweeps - sweeps) as f64);
                (rate < 1.0).then(|| {
                    ((tol / p.residual).ln() / rate.ln()).min((p.budget - p.sweeps) as f64)
                })
            }
            (None, _) => Some((p.budget - p.sweeps) as f64),
            _ => None,
        };
        self.previous = Some((p.sweeps, p.residual));
        let elapsed = self.start.elapsed().as_secs_f64();
        if elapsed < 1.0
            || self
                .last_print
                .is_some_and(|t| t.elapsed().as_secs_f64() < 0.2)
        {
            return;
        }
        let per_second = p.sweeps as f64 / elapsed;
        let eta = remaining.map_or("?".to_owned(), |r| {
            format!("{:.0} s", r / per_second.max(1e-9))
        });
        eprint!(
            "\r\x1b[K{} sweeps  residual {:.3e}  {per_second:.1} sweeps/s  ETA {eta}",
            p.sweeps, p.residual
        );
        self.last_print = Some(Instant::now());
        self.shown = true;
    }

    fn finish(&mut self) {
        if self.shown {
            eprint!("\r\x1b[K");
        }
    }
}

/// `summary.json` of a solve.
pub fn summary_json(
    world: &World,
    options: &SolveOptions,
    backend: BackendArg,
    adapter: &serde_json::Value,
    solution: &Solution,
    seconds: f64,
) -> serde_json::Value {
    let p = &world.problem;
    let mut summary = json!({
        "backend": match backend { BackendArg::Gpu => "gpu", BackendArg::Cpu => "cpu" },
        "adapter": adapter,
        "world": {
            "source": world.source,
            "map": world.map,
            "height": p.grid.height,
            "width": p.grid.width,
            "free_cells": p.grid.free_cells(),
            "actions": p.actions.names(),
            "slip": p.slip,
            "move_cost": p.move_cost.per_action(&p.actions),
        },
        "goals": world.goals,
        "layout": {
            "values": "float32 [task][row][col]; NaN blocked, -inf unreachable (gamma = 1)",
            "policy": "float32 [task][row][col][action]; NaN blocked, terminal, unreachable",
        },
    });
    add_run_json(&mut summary, options, solution, seconds);
    summary
}

/// Adds the settings and per-task results every `summary.json` carries to `summary`.
fn add_run_json(
    summary: &mut serde_json::Value,
    options: &SolveOptions,
    solution: &Solution,
    seconds: f64,
) {
    let (horizon, tol, max_iters) = match options.horizon {
        Horizon::Finite(t) => (Some(t), None, None),
        Horizon::Infinite { tol, max_iters } => (None, Some(tol), Some(max_iters)),
    };
    let run = json!({
        "alpha": options.alpha,
        "gamma": options.gamma,
        "backup": options.backup.name(),
        "horizon": horizon,
        "tol": tol,
        "max_iters": max_iters,
        "extrapolation": options.uses_extrapolation(),
        "tasks": solution.iterations.len(),
        "iterations": solution.iterations,
        "residual": solution.residual,
        "status": solution.status.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "unreachable": solution.unreachable,
        "solve_seconds": solution.seconds,
        "seconds": seconds,
    });
    if let (Some(all), serde_json::Value::Object(run)) = (summary.as_object_mut(), run) {
        all.extend(run);
    }
}

/// One `.npy` of a solve's folder: name, shape, data.
type NpyArray<'a> = (&'static str, Vec<usize>, &'a [f32]);

/// Writes a solve's folder: `summary.json`, and unless the solve diverged the `arrays`;
/// outputs of an earlier run that this one does not write are removed.
fn write_solve_folder(
    out: &Path,
    summary_text: &str,
    diverged: bool,
    arrays: &[NpyArray],
) -> Result<()> {
    let mut files = vec![OutputFile {
        name: "summary.json",
        bytes: summary_text.as_bytes().to_vec(),
    }];
    if !diverged {
        for (name, shape, data) in arrays {
            files.push(OutputFile {
                name,
                bytes: npy::encode_f32(shape, data),
            });
        }
    }
    write_folder(
        out,
        &files,
        &["summary.json", "values.npy", "policy.npy", "occupancy.npy"],
    )?;
    Ok(())
}

/// The arrays of a solve's folder: `values.npy` and `policy.npy` of shape `[B, *state_shape]`
/// (`[B, T+1, ...]` / `[B, T, ...]` with every step) and `occupancy.npy`.
fn solve_arrays<'a>(
    solution: &'a Solution,
    steps: Option<&'a softvi::engine::solution::TimeSteps>,
    occupancy: Option<&'a softvi::engine::solution::Occupancy>,
    state_shape: &[usize],
) -> Vec<NpyArray<'a>> {
    let tasks = solution.iterations.len();
    let with = |lead: &[usize], tail: &[usize]| [&[tasks], lead, state_shape, tail].concat();
    let a = [solution.action_count];
    let mut arrays = Vec::new();
    match steps {
        Some(steps) => {
            let t = steps.values.len() / solution.values.len().max(1);
            arrays.push(("values.npy", with(&[t], &[]), &steps.values[..]));
            if let Some(p) = &steps.policy {
                arrays.push(("policy.npy", with(&[t - 1], &a), &p[..]));
            }
        }
        None => {
            arrays.push(("values.npy", with(&[], &[]), &solution.values[..]));
            if let Some(p) = &solution.policy {
                arrays.push(("policy.npy", with(&[], &a), &p[..]));
            }
        }
    }
    if let Some(d) = occupancy {
        let lead: &[usize] = if d.steps > 1 { &[d.steps] } else { &[] };
        arrays.push(("occupancy.npy", with(lead, &[]), &d.values[..]));
    }
    arrays
}

/// Adds the time-step and occupancy facts of an MDP solve to `summary`.
fn add_mdp_json(summary: &mut serde_json::Value, solution: &softvi::engine::solution::MdpSolution) {
    summary["all_steps"] = json!(solution.steps.is_some());
    if let Some(d) = &solution.occupancy {
        summary["occupancy"] = json!({
            "steps": d.steps,
            "iterations": d.iterations,
            "residual": d.residual,
            "status": d.status.iter().map(|s| s.name()).collect::<Vec<_>>(),
        });
    }
}

/// Runs a general-MDP solve on the chosen backend; returns it with the adapter description.
fn run_mdp_backend(
    iteration: &IterationArgs,
    mdp: &softvi::world::mdp::TabularMdp,
    options: &SolveOptions,
    outputs: softvi::engine::options::Outputs,
    quiet: bool,
) -> Result<(softvi::engine::solution::MdpSolution, serde_json::Value)> {
    ensure!(
        iteration.adapters == "1",
        "--adapters {} shards plain grid solves only; this solve runs on one adapter",
        iteration.adapters
    );
    match iteration.backend {
        BackendArg::Cpu => Ok((
            softvi::engine::cpu::solve_mdp_cpu(mdp, options, outputs)?,
            json!({"name": "cpu reference (f64)", "backend": "cpu"}),
        )),
        BackendArg::Gpu => {
            let ctx = GpuContext::from_env()?;
            let adapter = adapter_json(&ctx);
            let mut engine = softvi::engine::gpu::MdpEngine::new(&ctx)?;
            let mut line = ProgressLine::new(quiet);
            let result = engine.solve_with_progress(mdp, options, outputs, &mut |p| line.update(p));
            line.finish();
            Ok((result?, adapter))
        }
    }
}

/// A world of the command line as a tabular MDP: an `--mdp` file, or a grid batch through
/// [`softvi::world::grid_mdp::GridMdp`].
pub struct MdpWorld {
    /// The MDP.
    pub mdp: softvi::world::mdp::TabularMdp,
    /// The grid world and its cell/state maps, for a grid.
    pub grid: Option<(World, softvi::world::grid_mdp::GridMdp)>,
    /// Start cells given with --start (`row * W + col`).
    pub starts: Vec<usize>,
    /// Where the world came from, for summary.json.
    pub source: serde_json::Value,
}

impl MdpWorld {
    /// Builds the world of `args`; `start` holds the --start X,Y flags (grids only).
    pub fn build(args: &WorldArgs, start: &[String]) -> Result<Self> {
        if let Some(path) = &args.mdp {
            let mdp = softvi::world::mdp::TabularMdp::load_npz(path)?;
            let source = json!({
                "path": std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()),
                "states": mdp.states,
                "actions": mdp.actions,
                "nonzeros": mdp.nonzeros(),
            });
            return Ok(Self {
                mdp,
                grid: None,
                starts: Vec::new(),
                source,
            });
        }
        let world = args.build()?;
        let p = &world.problem;
        let starts = start
            .iter()
            .map(|text| {
                let (x, y) = parse_pair(text, ',', "--start")?;
                ensure!(
                    x < p.grid.width && y < p.grid.height,
                    "--start X={x},Y={y} is off the {}x{} map",
                    p.grid.width,
                    p.grid.height
                );
                Ok(y * p.grid.width + x)
            })
            .collect::<Result<Vec<_>>>()?;
        let grid_mdp =
            softvi::world::grid_mdp::GridMdp::new(p, (!starts.is_empty()).then_some(&starts[..]))?;
        let source = json!({
            "source": world.source,
            "map": world.map,
            "height": p.grid.height,
            "width": p.grid.width,
            "actions": p.actions.names(),
            "slip": p.slip,
            "goals": world.goals,
            "starts": starts.iter().map(|c| [c % p.grid.width, c / p.grid.width]).collect::<Vec<_>>(),
        });
        Ok(Self {
            mdp: grid_mdp.mdp.clone(),
            grid: Some((world, grid_mdp)),
            starts,
            source,
        })
    }

    /// The label users see for state `s`: the cell `row * W + col` on a grid, else `s`.
    pub fn state_label(&self, s: i32) -> i32 {
        match (&self.grid, s) {
            (Some((_, g)), s) if s >= 0 => g.cell_of_state[s as usize] as i32,
            _ => s,
        }
    }

    /// The state of a user's label (inverse of [`MdpWorld::state_label`]); `None` off the
    /// world or on a blocked cell.
    pub fn state_of_label(&self, label: usize) -> Option<usize> {
        match &self.grid {
            Some((_, g)) => g
                .state_of_cell
                .get(label)
                .filter(|&&s| s != softvi::world::grid_mdp::NO_STATE)
                .map(|&s| s as usize),
            None => (label < self.mdp.states).then_some(label),
        }
    }

    /// Shape of one task's per-state array: `[S]`, or `[H, W]` on a grid.
    pub fn state_shape(&self) -> Vec<usize> {
        match &self.grid {
            Some((_, g)) => vec![g.height, g.width],
            None => vec![self.mdp.states],
        }
    }
}

/// `softvi sample`: trajectories from each task's soft-optimal policy.
pub fn sample_command(args: &SampleArgs) -> Result<i32> {
    let start = Instant::now();
    let world = MdpWorld::build(&args.world, &args.start)?;
    let options = args.iteration.options(true)?;
    ensure!(args.episodes >= 1, "--episodes must be at least 1");
    let steps = match (args.steps, options.horizon) {
        (Some(t), Horizon::Finite(h)) => {
            ensure!(
                t <= h as usize,
                "--steps {t} is longer than --horizon {h}: the policy has {h} time steps"
            );
            t
        }
        (Some(t), Horizon::Infinite { .. }) => t,
        (None, Horizon::Finite(h)) => h as usize,
        (None, Horizon::Infinite { .. }) => 100,
    };
    ensure!(steps >= 1, "--steps must be at least 1");
    let finite = matches!(options.horizon, Horizon::Finite(_));
    let outputs = softvi::engine::options::Outputs {
        all_steps: finite,
        occupancy: false,
    };
    let (solved, adapter) =
        run_mdp_backend(&args.iteration, &world.mdp, &options, outputs, args.quiet)?;
    if solved.solution.diverged() {
        eprintln!("error: the solve diverged: no policy to sample from; nothing was written");
        return Ok(EXIT_DIVERGED);
    }
    let (policy, policy_steps) = match (&solved.steps, options.horizon) {
        (Some(s), Horizon::Finite(h)) => (s.policy.as_ref().context("no policy")?, h as usize),
        _ => (solved.solution.policy.as_ref().context("no policy")?, 1),
    };
    let mut samples = softvi::analysis::sample::sample(
        &world.mdp,
        policy,
        policy_steps,
        args.episodes,
        steps,
        args.seed,
    )?;
    for s in &mut samples.states {
        *s = world.state_label(*s);
    }
    let seconds = start.elapsed().as_secs_f64();
    let (b, n) = (world.mdp.tasks, args.episodes);
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
        "backend": match args.iteration.backend { BackendArg::Gpu => "gpu", BackendArg::Cpu => "cpu" },
        "adapter": adapter,
        "world": world.source,
        "episodes": n,
        "steps": steps,
        "seed": args.seed,
        "mean_episode_length": lengths,
        "layout": {
            "states": if world.grid.is_some() { "int32 [task][episode][t], cell row * W + col; -1 after termination" }
                else { "int32 [task][episode][t]; -1 after termination" },
            "actions": "int32 [task][episode][t]; -1 from the terminal state on",
        },
    });
    add_run_json(&mut summary, &options, &solved.solution, seconds);
    let summary_text = serde_json::to_string_pretty(&summary)? + "\n";
    let files = [
        OutputFile {
            name: "summary.json",
            bytes: summary_text.as_bytes().to_vec(),
        },
        OutputFile {
            name: "states.npy",
            bytes: npy::encode_i32(&[b, n, steps + 1], &samples.states),
        },
        OutputFile {
            name: "actions.npy",
            bytes: npy::encode_i32(&[b, n, steps], &samples.actions),
        },
    ];
    write_folder(
        &args.out,
        &files,
        &["summary.json", "states.npy", "actions.npy"],
    )?;
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

/// `softvi solve` on a grid with --all-steps, --occupancy or --start: the grid as a tabular
/// MDP over its free cells, outputs laid out over the map.
fn grid_mdp_solve_command(args: &SolveArgs, start: Instant) -> Result<i32> {
    ensure!(
        args.occupancy || args.start.is_empty(),
        "--start sets where the occupancy starts: add --occupancy"
    );
    let mdp_world = MdpWorld::build(&args.world, &args.start)?;
    let (world, grid_mdp) = mdp_world.grid.as_ref().expect("a grid world");
    let starts = &mdp_world.starts;
    let p = &world.problem;
    let options = args.iteration.options(!args.no_policy)?;
    let outputs = softvi::engine::options::Outputs {
        all_steps: args.all_steps,
        occupancy: args.occupancy,
    };
    let finite = matches!(options.horizon, Horizon::Finite(_));
    let (solved, adapter) = if args.iteration.backend == BackendArg::Gpu && finite {
        // The grid kernels' own forward pass.
        ensure!(
            args.iteration.adapters == "1",
            "--adapters {} shards plain grid solves only; this solve runs on one adapter",
            args.iteration.adapters
        );
        let ctx = GpuContext::from_env()?;
        let mut engine = GridEngine::new(&ctx)?;
        let start = grid_mdp.start_cells(&grid_mdp.mdp);
        let mut line = ProgressLine::new(args.quiet);
        let solved = engine.solve_steps(p, &options, outputs, &start, &mut |x| line.update(x));
        line.finish();
        (solved?, adapter_json(&ctx))
    } else {
        let (mut solved, adapter) = run_mdp_backend(
            &args.iteration,
            &grid_mdp.mdp,
            &options,
            outputs,
            args.quiet,
        )?;
        solved.to_cells(grid_mdp);
        (solved, adapter)
    };
    let seconds = start.elapsed().as_secs_f64();
    let backend = args.iteration.backend;
    let mut summary = summary_json(
        world,
        &options,
        backend,
        &adapter,
        &solved.solution,
        seconds,
    );
    add_mdp_json(&mut summary, &solved);
    summary["starts"] = json!(
        starts
            .iter()
            .map(|c| [c % p.grid.width, c / p.grid.width])
            .collect::<Vec<_>>()
    );
    if solved.steps.is_some() {
        summary["layout"]["values"] = json!("float32 [task][t][row][col], t = 0..T; NaN blocked");
        summary["layout"]["policy"] =
            json!("float32 [task][t][row][col][action], t = 0..T-1; NaN blocked, terminal");
    }
    if let Some(d) = &solved.occupancy {
        summary["layout"]["occupancy"] = json!(if d.steps > 1 {
            "float32 [task][t][row][col], D_0..D_T; NaN blocked"
        } else {
            "float32 [task][row][col], sum_t gamma^t D_t; NaN blocked"
        });
    }
    let summary_text = serde_json::to_string_pretty(&summary)? + "\n";
    let arrays = solve_arrays(
        &solved.solution,
        solved.steps.as_ref(),
        solved.occupancy.as_ref(),
        &[p.grid.height, p.grid.width],
    );
    write_solve_folder(
        &args.out,
        &summary_text,
        solved.solution.diverged(),
        &arrays,
    )?;
    finish_solve(
        args,
        world,
        &options,
        &adapter,
        &solved.solution,
        seconds,
        &summary_text,
    )
}

/// `softvi solve`. Returns the process exit code.
pub fn solve_command(args: &SolveArgs) -> Result<i32> {
    if let Some(path) = &args.world.mdp {
        return mdp_solve_command(args, path);
    }
    let start = Instant::now();
    if args.all_steps || args.occupancy || !args.start.is_empty() {
        return grid_mdp_solve_command(args, start);
    }
    let world = args.world.build()?;
    let options = args.iteration.options(!args.no_policy)?;
    let (solution, adapter) = run_backend(
        args.iteration.backend,
        &args.iteration.adapters,
        &world.problem,
        &options,
        args.quiet,
    )?;
    let seconds = start.elapsed().as_secs_f64();
    let summary = summary_json(
        &world,
        &options,
        args.iteration.backend,
        &adapter,
        &solution,
        seconds,
    );
    let summary_text = serde_json::to_string_pretty(&summary)? + "\n";
    let p = &world.problem;
    let arrays = solve_arrays(&solution, None, None, &[p.grid.height, p.grid.width]);
    write_solve_folder(&args.out, &summary_text, solution.diverged(), &arrays)?;
    finish_solve(
        args,
        &world,
        &options,
        &adapter,
        &solution,
        seconds,
        &summary_text,
    )
}

/// The end of a grid solve: the --png picture, the summary on stdout, the exit code.
fn finish_solve(
    args: &SolveArgs,
    world: &World,
    options: &SolveOptions,
    adapter: &serde_json::Value,
    solution: &Solution,
    seconds: f64,
    summary_text: &str,
) -> Result<i32> {
    let p = &world.problem;
    if let (Some(png), false) = (&args.png, solution.diverged()) {
        let cells = p.grid.cells();
        let view = softvi::analysis::render::TaskView {
            grid: &p.grid,
            actions: p.actions,
            slip: p.slip,
            goals: &p.tasks[0].goals,
            values: &solution.values[..cells],
            policy: None,
            occupancy: None,
        };
        let (canvas, _) =
            softvi::analysis::render::render(&view, softvi::analysis::render::Layer::Value, None)?;
        softvi::analysis::render::write_png(&canvas, png)?;
    }
    if args.json {
        print!("{summary_text}");
    } else {
        print_summary(world, options, adapter, solution, seconds, &args.out);
    }
    if solution.diverged() {
        eprintln!(
            "error: the solve diverged: values grow without bound (the entropy bonus alpha*log|A| \
             outweighs the step costs with gamma = 1); no values were written. Lower --alpha, \
             raise the costs, or use --gamma < 1 or --horizon T."
        );
        return Ok(EXIT_DIVERGED);
    }
    Ok(0)
}

fn print_summary(
    world: &World,
    options: &SolveOptions,
    adapter: &serde_json::Value,
    solution: &Solution,
    seconds: f64,
    out: &Path,
) {
    let p = &world.problem;
    let statuses: Vec<&str> = solution.status.iter().map(|s| s.name()).collect();
    let mut distinct = statuses.clone();
    distinct.dedup();
    let max_residual = solution.residual.iter().copied().fold(0.0, f64::max);
    println!(
        "world    {} ({}x{}, {} free cells, {} actions, slip {})",
        world.source,
        p.grid.width,
        p.grid.height,
        p.grid.free_cells(),
        p.actions.count(),
        p.slip
    );
    println!(
        "solve    {} tasks, {} backup, alpha {}, gamma {}{}",
        p.task_count(),
        options.backup.name(),
        options.alpha,
        options.gamma,
        match options.horizon {
            Horizon::Finite(t) => format!(", horizon {t}"),
            Horizon::Infinite { tol, .. } => format!(", tol {tol}"),
        }
    );
    let adapters = match adapter {
        serde_json::Value::Array(list) => list.clone(),
        single => vec![single.clone()],
    };
    let names: Vec<String> = adapters
        .iter()
        .map(|a| {
            format!(
                "{} ({})",
                a["name"].as_str().unwrap_or("?"),
                a["backend"].as_str().unwrap_or("?")
            )
        })
        .collect();
    println!("backend  {}", names.join(" + "));
    println!(
        "result   {} after {} sweeps, max residual {:.3e}, {} unreachable cells",
        distinct.join("/"),
        solution.iterations.iter().max().unwrap_or(&0),
        max_residual,
        solution.unreachable.iter().sum::<u32>()
    );
    for (t, goals) in world.goals.iter().enumerate().take(8) {
        let cells = p.grid.cells();
        let finite: Vec<f32> = solution.values[t * cells..(t + 1) * cells]
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        let lo = finite.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = finite.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        println!("task {t:<3} goal {:?}: V in [{lo:.4}, {hi:.4}]", goals[0]);
    }
    if world.goals.len() > 8 {
        println!("... {} more tasks", world.goals.len() - 8);
    }
    println!(
        "time     {:.3} s solve, {seconds:.3} s total; wrote {}",
        solution.seconds,
        out.display()
    );
}

/// `softvi render`: reads a solve's folder (summary.json, values.npy, policy.npy,
/// occupancy.npy), rebuilds its map and draws one task.
pub fn render_command(args: &RenderArgs) -> Result<i32> {
    use softvi::analysis::render::{Layer, TaskView, render, write_png};
    let dir = &args.from;
    let summary_path = dir.join("summary.json");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).with_context(|| {
            format!(
                "cannot read {} (is --from a solve output folder?)",
                summary_path.display()
            )
        })?)
        .with_context(|| format!("{} is not JSON", summary_path.display()))?;
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
    let tasks = field(&summary["tasks"], "tasks")? as usize;
    ensure!(
        args.task < tasks,
        "--task {} is out of range: the solve has {tasks} tasks",
        args.task
    );
    let names: Vec<&str> = world["actions"].as_array().map_or(Vec::new(), |a| {
        a.iter().filter_map(|n| n.as_str()).collect()
    });
    let actions = ActionSet {
        connectivity: if names.contains(&"NE") {
            Connectivity::Eight
        } else {
            Connectivity::Four
        },
        stay: names.contains(&"STAY"),
    };
    let goals: Vec<usize> = summary["goals"][args.task]
        .as_array()
        .map_or(Vec::new(), |g| {
            g.iter()
                .filter_map(|xy| {
                    Some(xy[1].as_u64()? as usize * grid.width + xy[0].as_u64()? as usize)
                })
                .collect()
        });
    let (h, w, cells) = (grid.height, grid.width, grid.cells());
    // One task of `[B, H, W(, per_cell)]`, or of `[B, K, H, W(, per_cell)]` (every time step):
    // step --step, or with `sum_steps` and no --step the sum over the steps.
    let read_task = |name: &str, per_cell: usize, sum_steps: bool| -> Result<Option<Vec<f32>>> {
        let path = dir.join(name);
        if !path.exists() {
            return Ok(None);
        }
        let array = npy::read_float(&path)?;
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
        let n = cells * per_cell;
        let task = &array.data[args.task * steps * n..(args.task + 1) * steps * n];
        Ok(Some(match args.step {
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
    };
    let values = read_task("values.npy", 1, false)?.with_context(|| {
        format!(
            "{} has no values.npy (did the solve diverge?)",
            dir.display()
        )
    })?;
    let policy = read_task("policy.npy", actions.count(), false)?;
    let occupancy = read_task("occupancy.npy", 1, true)?;
    let view = TaskView {
        grid: &grid,
        actions,
        slip: world["slip"].as_f64().unwrap_or(0.0),
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
    let (canvas, (lo, hi)) = render(&view, layer, args.trajectories.map(|n| (n, args.seed)))?;
    write_png(&canvas, &args.out)?;
    println!(
        "wrote {} ({}x{} px), task {}, {:?} from {lo:.6} to {hi:.6}",
        args.out.display(),
        canvas.width,
        canvas.height,
        args.task,
        args.layer
    );
    Ok(0)
}

/// `softvi scen`: all distinct goals of the scenarios as one batch (8-connected, unit and
/// sqrt(2) costs, gamma = 1), then the soft value at each start against the published length.
pub fn scen_command(args: &ScenArgs) -> Result<i32> {
    let start = Instant::now();
    let grid = Grid::load_movingai(&args.map)?;
    let mut scenarios = softvi::analysis::scen::load_scenarios(&args.scen, &grid)?;
    if let Some(limit) = args.limit {
        ensure!(limit >= 1, "--limit must be >= 1");
        scenarios.truncate(limit);
    }
    ensure!(
        args.alpha.is_finite() && args.alpha >= 0.0,
        "--alpha must be >= 0, got {}",
        args.alpha
    );
    ensure!(
        args.tol.is_finite() && args.tol > 0.0,
        "--tol must be > 0, got {}",
        args.tol
    );
    let mut goals: Vec<(usize, usize)> = Vec::new();
    for s in &scenarios {
        if !goals.contains(&s.goal) {
            goals.push(s.goal);
        }
    }
    let width = grid.width;
    let problem = GridProblem {
        tasks: goals
            .iter()
            .map(|&(x, y)| GridTask {
                goals: vec![y * width + x],
                reward: None,
            })
            .collect(),
        grid,
        actions: ActionSet {
            connectivity: Connectivity::Eight,
            stay: false,
        },
        slip: 0.0,
        move_cost: MoveCost::default(),
    };
    let options = SolveOptions {
        alpha: args.alpha,
        gamma: 1.0,
        backup: Backup::Expected,
        horizon: Horizon::Infinite {
            tol: args.tol,
            max_iters: 10_000_000,
        },
        policy: false,
        extrapolate: true,
    };
    let (solution, _) = run_backend(args.backend, &args.adapters, &problem, &options, args.quiet)?;
    if solution.diverged() {
        bail!(
            "the solve diverged at alpha {}: with gamma = 1 the entropy bonus alpha*log(8) \
             outweighs the step costs; lower --alpha",
            args.alpha
        );
    }
    let cells = problem.grid.cells();
    // At alpha = 0 the gap is taken on the f64 length of the path the solve's greedy policy
    // takes; V itself (f32) is printed and its own largest gap reported too.
    let hard = args.alpha == 0.0;
    let (mut max_gap, mut max_value_gap) = (0.0f64, 0.0f64);
    if !args.quiet {
        println!(
            "{:>6} {:>12} {:>12} {:>14} {:>14} {:>14} {:>12}",
            "line", "start", "goal", "-V(start)", "path", "optimal", "gap"
        );
    }
    for s in &scenarios {
        let task = goals
            .iter()
            .position(|&g| g == s.goal)
            .expect("goal listed");
        let values = &solution.values[task * cells..(task + 1) * cells];
        let (start_cell, goal_cell) = (s.start.1 * width + s.start.0, s.goal.1 * width + s.goal.0);
        let value = values[start_cell] as f64;
        let path = hard
            .then(|| {
                softvi::analysis::scen::greedy_path_length(&problem, values, start_cell, goal_cell)
            })
            .flatten();
        if hard && path.is_none() {
            bail!(
                "line {}: the greedy path from the start does not reach the goal",
                s.line
            );
        }
        let value_gap = -value - s.optimal_length;
        let gap = path.map_or(value_gap, |p| p - s.optimal_length);
        max_gap = max_gap.max(gap.abs());
        max_value_gap = max_value_gap.max(value_gap.abs());
        if !args.quiet {
            println!(
                "{:>6} {:>12} {:>12} {:>14.6} {:>14} {:>14.6} {:>12.3e}",
                s.line,
                format!("{},{}", s.start.0, s.start.1),
                format!("{},{}", s.goal.0, s.goal.1),
                -value,
                path.map_or("-".to_owned(), |p| format!("{p:.6}")),
                s.optimal_length,
                gap
            );
        }
    }
    let statuses: Vec<&str> = solution.status.iter().map(|s| s.name()).collect();
    if let Some(t) = solution.status.iter().position(|&s| s != Status::Converged) {
        eprintln!(
            "warning: task {t} (goal {:?}) ended with status {} after {} sweeps",
            goals[t], statuses[t], solution.iterations[t]
        );
    }
    println!(
        "scenarios {}  tasks {}  alpha {}  max |gap| {:.3e}  max |V gap| {:.3e}  sweeps {}  seconds {:.3}",
        scenarios.len(),
        goals.len(),
        args.alpha,
        max_gap,
        max_value_gap,
        solution.iterations.iter().max().unwrap_or(&0),
        start.elapsed().as_secs_f64()
    );
    Ok(0)
}

/// `softvi bench`: one table row per workload and backend, and the GPU/CPU ratio.
pub fn bench_command(args: &BenchArgs) -> Result<i32> {
    use softvi::bench::{
        Measurement, measure_cpu, measure_gpu, measure_mdp_cpu, measure_mdp_gpu, sparse_mdp,
        standard_workloads,
    };
    const MDP_WORKLOAD: &str = "mdp1m";
    const IRL_WORKLOAD: &str = "irl256";
    let maps = args.maps.is_dir().then_some(args.maps.as_path());
    let mut workloads = standard_workloads(maps)?;
    let (mut run_mdp, mut run_irl) = (true, true);
    if !args.workloads.is_empty() {
        for name in &args.workloads {
            ensure!(
                name == MDP_WORKLOAD
                    || name == IRL_WORKLOAD
                    || workloads.iter().any(|w| &w.name == name),
                "--workload {name:?} is unknown (known: maze1024-b1, maze1024-b8, maze4096-b1, \
                 orz900d-b64, mdp1m, irl256)"
            );
        }
        workloads.retain(|w| args.workloads.contains(&w.name));
        run_mdp = args.workloads.iter().any(|w| w == MDP_WORKLOAD);
        run_irl = args.workloads.iter().any(|w| w == IRL_WORKLOAD);
    }
    let ctx = GpuContext::from_env()?;
    let mut engine = GridEngine::new(&ctx)?;
    println!(
        "{:<13} {:>3} {:>11} {:>5} {:<8} {:<40} {:>9} {:>10} {:>8} {:>8}",
        "workload",
        "B",
        "states",
        "A",
        "backend",
        "adapter",
        "sweeps/s",
        "updates/s",
        "GB/s",
        "gpu/cpu"
    );
    let row = |name: &str,
               tasks: usize,
               size: &str,
               actions: usize,
               backend: &str,
               adapter: &str,
               m: &Measurement,
               ratio: String| {
        println!(
            "{:<13} {:>3} {:>11} {:>5} {:<8} {:<40} {:>9.2} {:>10.3e} {:>8.2} {:>8}",
            name,
            tasks,
            size,
            actions,
            backend,
            adapter,
            m.sweeps_per_second,
            m.state_updates_per_second,
            m.bytes_per_second / 1e9,
            ratio
        );
    };
    let rows = |name: &str,
                tasks: usize,
                size: &str,
                actions: usize,
                gpu: &Measurement,
                cpu: Option<Measurement>| {
        let ratio = cpu.as_ref().map_or("-".into(), |c| {
            format!(
                "{:.1}x",
                gpu.state_updates_per_second / c.state_updates_per_second
            )
        });
        row(
            name,
            tasks,
            size,
            actions,
            "gpu",
            &ctx.adapter_label(),
            gpu,
            ratio,
        );
        if let Some(c) = &cpu {
            row(
                name,
                tasks,
                size,
                actions,
                "cpu",
                "reference (f64, 1 thread)",
                c,
                "1.0x".into(),
            );
        }
    };
    for w in &workloads {
        let p = &w.problem;
        let size = format!("{}x{}", p.grid.height, p.grid.width);
        let default_sweeps =
            (2e8 / (p.task_count() * p.grid.cells()) as f64).clamp(4.0, 128.0) as u32;
        let gpu = measure_gpu(&mut engine, p, args.sweeps.unwrap_or(default_sweeps))?;
        let cpu = if args.cpu_sweeps > 0 {
            Some(measure_cpu(p, args.cpu_sweeps)?)
        } else {
            None
        };
        rows(&w.name, p.task_count(), &size, p.actions.count(), &gpu, cpu);
    }
    if run_mdp {
        let mdp = sparse_mdp(1_000_000, 0);
        let mut mdp_engine = softvi::engine::gpu::MdpEngine::new(&ctx)?;
        let gpu = measure_mdp_gpu(&mut mdp_engine, &mdp, args.sweeps.unwrap_or(32))?;
        let cpu = if args.cpu_sweeps > 0 {
            Some(measure_mdp_cpu(&mdp, args.cpu_sweeps)?)
        } else {
            None
        };
        rows(
            MDP_WORKLOAD,
            1,
            &mdp.states.to_string(),
            mdp.actions,
            &gpu,
            cpu,
        );
        // End to end: soft VI to tol, then the discounted occupancy to tol.
        let options = softvi::bench::reference_options(Horizon::Infinite {
            tol: 1e-4,
            max_iters: 100_000,
        });
        let outputs = softvi::engine::options::Outputs {
            all_steps: false,
            occupancy: true,
        };
        let end_to_end = |backend: &str,
                          solve: &mut dyn FnMut() -> softvi::Result<
            softvi::engine::solution::MdpSolution,
        >|
         -> Result<softvi::engine::solution::MdpSolution> {
            let start = Instant::now();
            let solved = solve()?;
            let total = start.elapsed().as_secs_f64();
            let d = solved.occupancy.as_ref().context("no occupancy")?;
            println!(
                "{MDP_WORKLOAD} end to end on {backend}: {} nonzeros, alpha 1, gamma 0.99, tol 1e-4: \
                 {} sweeps ({}) + {} occupancy sweeps ({}) in {total:.2} s",
                mdp.nonzeros(),
                solved.solution.iterations[0],
                solved.solution.status[0].name(),
                d.iterations,
                d.status[0].name(),
            );
            Ok(solved)
        };
        let gpu = end_to_end(&ctx.adapter_label(), &mut || {
            mdp_engine.solve(&mdp, &options, outputs)
        })?;
        if args.cpu_solve {
            let cpu = end_to_end("cpu reference", &mut || {
                softvi::engine::cpu::solve_mdp_cpu(&mdp, &options, outputs)
            })?;
            // Both stop within tol of their fixed points, so they differ by up to
            // 2 tol gamma / (1 - gamma) in V; the occupancy by its own tol.
            let gap = |a: &[f32], b: &[f32]| {
                a.iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs() as f64)
                    .fold(0.0, f64::max)
            };
            let top = |a: &[f32]| a.iter().fold(0.0f64, |m, x| m.max(x.abs() as f64));
            let (gv, cv) = (&gpu.solution.values, &cpu.solution.values);
            let (gd, cd) = (
                &gpu.occupancy.as_ref().context("no occupancy")?.values,
                &cpu.occupancy.as_ref().context("no occupancy")?.values,
            );
            println!(
                "{MDP_WORKLOAD} GPU vs CPU: max |dV| {:.3e} (max |V| {:.3}), max |d occupancy| {:.3e} (max {:.3e})",
                gap(gv, cv),
                top(cv),
                gap(gd, cd),
                top(cd)
            );
        }
    }
    if run_irl {
        // Seconds per IRL iteration (backward + forward + gradient), after one warm-up.
        let softvi::bench::IrlWorkload {
            problem,
            world,
            features,
            demos,
        } = softvi::bench::irl_workload()?;
        let options = softvi::analysis::irl::IrlOptions {
            solve: SolveOptions {
                alpha: 1.0,
                gamma: 1.0,
                horizon: Horizon::Finite(demos.steps as u32),
                policy: false,
                ..SolveOptions::default()
            },
            learning_rate: 0.05,
            iters: 4,
            tol: 0.0,
        };
        // The first iteration of a run is a warm-up (pipelines, buffers).
        let per_iteration = |solver: &mut dyn softvi::MdpSolver, iters: u32| -> Result<f64> {
            let options = softvi::analysis::irl::IrlOptions { iters, ..options };
            let result = softvi::analysis::irl::learn(
                &world.mdp,
                &features,
                &demos,
                &options,
                solver,
                &mut |_, _| {},
            )?;
            let timed = &result.history[(iters > 1) as usize..];
            Ok(timed.iter().map(|h| h.solve_seconds).sum::<f64>() / timed.len() as f64)
        };
        let describe = |backend: &str, seconds: f64, ratio: String| {
            println!(
                "{IRL_WORKLOAD} on {backend}: 256x256 open grid, 8 actions, slip 0.1, K = 8, M = 16 sets x {} demos x {} steps: {seconds:.3} s per IRL iteration{ratio}",
                demos.episodes, demos.steps
            );
        };
        let mut gpu_solver = softvi::GpuSolver::new(ctx.clone());
        let gpu = per_iteration(
            &mut softvi::GridKernelsOnMdp {
                solver: &mut gpu_solver,
                world: &world,
                template: &problem,
            },
            4,
        )?;
        describe(
            &format!("{} (grid kernels)", ctx.adapter_label()),
            gpu,
            String::new(),
        );
        let csr = per_iteration(&mut gpu_solver, 3)?;
        describe(
            &format!("{} (CSR kernels)", ctx.adapter_label()),
            csr,
            String::new(),
        );
        if args.cpu_solve {
            let cpu = per_iteration(&mut softvi::CpuReference, 1)?;
            describe(
                "cpu reference",
                cpu,
                format!(" (grid kernels {:.1}x faster)", cpu / gpu),
            );
        }
    }
    Ok(0)
}

/// `softvi adapters`.
pub fn adapters_command() -> Result<i32> {
    let adapters = GpuContext::adapters_from_env()?;
    if adapters.is_empty() {
        bail!(softvi::engine::gpu::context::NO_ADAPTER_HELP);
    }
    for (i, a) in adapters.iter().enumerate() {
        let info = a.get_info();
        let limits = a.limits();
        println!(
            "{i}: {} ({}), {:?}, max storage binding {} MiB, max buffer {} MiB",
            info.name,
            info.backend,
            info.device_type,
            limits.max_storage_buffer_binding_size >> 20,
            limits.max_buffer_size >> 20
        );
    }
    Ok(0)
}

/// Runs the parsed command line; returns the exit code.
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Solve(args) => solve_command(&args),
        Command::Scen(args) => scen_command(&args),
        Command::Render(args) => render_command(&args),
        Command::Sample(args) => sample_command(&args),
        Command::Infer(args) => infer_command(&args),
        Command::Irl(args) => irl_command(&args),
        Command::Bench(args) => bench_command(&args),
        Command::Adapters => adapters_command(),
    }
}
