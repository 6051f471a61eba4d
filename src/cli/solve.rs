//! `softvi solve`: a batch of grid goals or a general MDP solved to values, policy,
//! occupancy and summary.json.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, bail, ensure};
use clap::{Args, ValueEnum};
use serde_json::json;

use super::EXIT_DIVERGED;
use super::backend::{Backend, BackendArg};
use super::iteration::IterationArgs;
use super::summary::{
    add_run_json, divergence_reason, error_bound_line, error_bound_note, path_json,
};
use super::world::{World, WorldArgs};
use softvi::engine::options::{Horizon, Outputs, SolveOptions};
use softvi::engine::solution::{MdpSolution, Occupancy, Real, Solution, TimeSteps};
use softvi::io::output::{OutputFile, OutputFolder};
use softvi::world::shard::task_range;

#[derive(Args, Debug)]
pub(super) struct SolveArgs {
    #[command(flatten)]
    world: WorldArgs,
    #[command(flatten)]
    iteration: IterationArgs,
    /// Output folder: values.npy, policy.npy, summary.json (and q.npy, occupancy.npy as asked).
    /// It must be new, empty or a folder of an earlier `softvi solve`, whose result is replaced.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Write into a non-empty --out that is not a `softvi solve` folder (files of the same
    /// names are replaced, other files kept), and replace a --png file that is not a PNG.
    #[arg(long)]
    force: bool,
    /// Skip policy.npy (for huge worlds).
    #[arg(long)]
    no_policy: bool,
    /// Also write q.npy, the soft Q-values Q(s,a) the policy is made from (value units):
    /// [B,...,A], or Q_0..Q_{T-1} [B,T,...,A] with --all-steps; NaN where the policy is.
    #[arg(long = "q")]
    q: bool,
    /// With --horizon T: keep every step, values.npy [B,T+1,...] (V_0..V_T) and policy.npy
    /// [B,T,...,A] (pi_0..pi_{T-1}; q.npy likewise).
    #[arg(long, requires = "horizon")]
    all_steps: bool,
    /// Also write occupancy.npy, the state occupancy under the soft-optimal policy: D_0..D_T
    /// [B,T+1,...] with --horizon T, else the discounted sum_t gamma^t D_t [B,...], iterated
    /// until its residual is within --tol times the start distribution's peak.
    #[arg(long)]
    occupancy: bool,
    /// Start cell X,Y of the occupancy (repeatable, equal weights; default: uniform over the
    /// free non-goal cells). Grid worlds only; an --mdp file carries `initial`.
    #[arg(long = "start", value_name = "X,Y", conflicts_with = "mdp")]
    start: Vec<String>,
    /// Solve only shard I of N of the task batch (0 <= I < N <= tasks): tasks
    /// I*B/N .. (I+1)*B/N (floor), for Slurm job arrays; summary.json records the shard, and
    /// `softvi merge` joins the N folders into the folder of the whole solve.
    #[arg(
        long,
        value_name = "I/N",
        allow_hyphen_values = true,
        conflicts_with = "png"
    )]
    tasks: Option<String>,
    /// Also draw task 0's value heatmap to this PNG (as `softvi render --from DIR`).
    #[arg(long, value_name = "FILE.png")]
    png: Option<PathBuf>,
    /// The float type of the .npy files: f32, or f64 (an --mdp solve on `--backend cpu`: the
    /// f64 reference's values as computed, for comparing with float64 code).
    #[arg(long, value_enum, default_value_t = Dtype::F32, conflicts_with = "tasks")]
    dtype: Dtype,
    /// Print summary.json's content instead of the human summary.
    #[arg(long)]
    json: bool,
    /// No progress line on stderr (it is shown only on a terminal, for solves over a second).
    #[arg(long)]
    quiet: bool,
}

/// `--dtype`: the float type the result files hold.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum Dtype {
    /// float32 (every backend).
    F32,
    /// float64 (the CPU reference on an --mdp solve).
    F64,
}

/// What `args` asks a solve to return beyond the values.
fn outputs(args: &SolveArgs) -> Outputs {
    Outputs {
        policy: !args.no_policy,
        q: args.q,
        all_steps: args.all_steps,
        occupancy: args.occupancy,
    }
}

/// The files `softvi solve` writes besides summary.json.
pub(super) const SOLVE_FILES: &[&str] = &["values.npy", "policy.npy", "q.npy", "occupancy.npy"];

/// `--tasks I/N`: the shard index I and count N, checked (0 <= I < N); errors name the flag.
fn parse_tasks(text: &str) -> Result<(usize, usize)> {
    let form = "expected I/N with 0 <= I < N, e.g. --tasks 3/16";
    let Some((i, n)) = text.split_once('/') else {
        bail!("--tasks {text}: not of the form I/N ({form})");
    };
    let number = |s: &str, what: &str| {
        s.trim().parse::<usize>().map_err(|_| {
            anyhow::anyhow!("--tasks {text}: {s:?} is not a {what}: a whole number >= 0 ({form})")
        })
    };
    let (i, n) = (number(i, "shard index")?, number(n, "shard count")?);
    ensure!(n >= 1, "--tasks {text}: the shard count must be at least 1");
    ensure!(
        i < n,
        "--tasks {text}: shard index must be below {n} (shards are numbered 0..{})",
        n - 1
    );
    Ok((i, n))
}

/// The shard of the batch a `--tasks I/N` solve writes: which tasks, of which batch.
struct Shard {
    index: usize,
    count: usize,
    /// The tasks of the shard, [`task_range`].
    range: Range<usize>,
    /// Tasks B of the whole batch.
    batch: usize,
    /// The whole batch's fingerprint (`GridProblem::fingerprint`, `TabularMdp::fingerprint`).
    fingerprint: u64,
}

impl Shard {
    /// The shard `--tasks` asks for out of a batch of `batch` tasks, or `None` without the flag.
    /// Refuses more shards than tasks: some shards would hold no task.
    fn of(
        tasks: Option<&str>,
        batch: usize,
        fingerprint: impl Fn() -> u64,
    ) -> Result<Option<Self>> {
        let Some(text) = tasks else {
            return Ok(None);
        };
        let (index, count) = parse_tasks(text)?;
        ensure!(
            count <= batch,
            "--tasks {text}: {count} shards of a {batch}-task batch would leave some shards \
             without a task: use at most {batch} shards"
        );
        Ok(Some(Self {
            index,
            count,
            range: task_range(batch, index, count),
            batch,
            fingerprint: fingerprint(),
        }))
    }

    /// Records the shard in `summary`: `"shard": {"index", "count", "tasks": [start, end],
    /// "batch_tasks", "fingerprint"}` (the fingerprint as 16 hex digits), what `softvi merge`
    /// checks.
    fn add_json(shard: Option<&Self>, summary: &mut serde_json::Value) {
        if let Some(s) = shard {
            summary["shard"] = json!({
                "index": s.index,
                "count": s.count,
                "tasks": [s.range.start, s.range.end],
                "batch_tasks": s.batch,
                "fingerprint": format!("{:016x}", s.fingerprint),
            });
        }
    }

    /// The first task of the shard in the whole batch (0 without `--tasks`).
    fn first(shard: Option<&Self>) -> usize {
        shard.map_or(0, |s| s.range.start)
    }
}

/// The grid batch of `args`, cut to the shard `--tasks` asks for.
fn build_world(args: &SolveArgs) -> Result<(World, Option<Shard>)> {
    let world = args.world.build()?;
    let batch = world.problem.task_count();
    let shard = Shard::of(args.tasks.as_deref(), batch, || world.problem.fingerprint())?;
    let Some(s) = &shard else {
        return Ok((world, None));
    };
    let world = World {
        problem: world.problem.shard(s.range.clone())?,
        goals: world.goals[s.range.clone()].to_vec(),
        ..world
    };
    Ok((world, shard))
}

/// `softvi solve`. Returns the process exit code.
pub(super) fn solve_command(args: &SolveArgs) -> Result<i32> {
    let start = Instant::now();
    if let Some(text) = &args.tasks {
        parse_tasks(text)?;
    }
    let mut out = OutputFolder::claim(&args.out, "solve", SOLVE_FILES, args.force)?;
    if let (Some(png), None) = (&args.png, &args.world.mdp) {
        out.check_picture(png, "--png", args.force)?;
    }
    if let Some(path) = &args.world.mdp {
        return mdp_solve_command(args, path, &mut out, start);
    }
    ensure!(
        args.dtype == Dtype::F32,
        "--dtype f64 needs an --mdp solve on --backend cpu; grid solves write float32"
    );
    args.world
        .check_memory(&args.iteration.options()?, outputs(args))?;
    if args.all_steps || args.occupancy || !args.start.is_empty() {
        return grid_mdp_solve_command(args, &mut out, start);
    }
    let (world, shard) = build_world(args)?;
    let options = args.iteration.options()?;
    let mut backend = Backend::open(args.iteration.backend, &args.iteration.adapters)?;
    let solution = backend
        .solve_grid(&world.problem, None, &options, outputs(args), args.quiet)?
        .solution;
    let adapter = backend.adapter_json();
    let seconds = start.elapsed().as_secs_f64();
    let mut summary = summary_json(
        &world,
        &options,
        args.iteration.backend,
        &adapter,
        &solution,
        seconds,
    );
    Shard::add_json(shard.as_ref(), &mut summary);
    let p = &world.problem;
    let arrays = solve_arrays(&solution, None, None, &[p.grid.height, p.grid.width]);
    let summary_text = write_solve_folder(&mut out, &mut summary, solution.diverged(), &arrays)?;
    finish_solve(
        args,
        &world,
        Shard::first(shard.as_ref()),
        &options,
        &adapter,
        &solution,
        seconds,
        &summary_text,
    )
}

/// `softvi solve --mdp FILE.npz`: a general MDP; `values.npy` `[B,S]` (`[B,T+1,S]` with
/// every step), `policy.npy` `[B,S,A]` (`[B,T,S,A]`), `occupancy.npy`, `summary.json`.
fn mdp_solve_command(
    args: &SolveArgs,
    path: &Path,
    out: &mut OutputFolder,
    start: Instant,
) -> Result<i32> {
    let mdp = softvi::world::mdp::TabularMdp::load_npz(path)?;
    let shard = Shard::of(args.tasks.as_deref(), mdp.tasks, || mdp.fingerprint())?;
    let mdp = match &shard {
        Some(s) => mdp.shard(s.range.clone())?,
        None => mdp,
    };
    let options = args.iteration.options()?;
    ensure!(
        args.png.is_none(),
        "--png draws grid worlds only, not --mdp"
    );
    let outputs = outputs(args);
    ensure!(
        args.dtype == Dtype::F32 || args.iteration.backend == BackendArg::Cpu,
        "--dtype f64 needs --backend cpu: the other backends compute in float32"
    );
    let mut backend = Backend::open(args.iteration.backend, &args.iteration.adapters)?;
    let adapter = backend.adapter_json();
    let run = MdpRun {
        args,
        path,
        mdp: &mdp,
        shard: shard.as_ref(),
        options: &options,
        adapter,
        start,
    };
    match args.dtype {
        Dtype::F32 => {
            let solved = backend.solve_mdp(&mdp, &options, outputs, args.quiet)?;
            run.report(out, &solved, backend.transitions(&mdp, &options))
        }
        Dtype::F64 => {
            let solved = backend.solve_mdp_f64(&mdp, &options, outputs, args.quiet)?;
            run.report(out, &solved, backend.transitions(&mdp, &options))
        }
    }
}

/// `, modified policy iteration (M evaluations per backup)` for `--method mpi`, else nothing.
fn method_note(options: &SolveOptions) -> String {
    match options.method {
        softvi::Method::Vi => String::new(),
        softvi::Method::Mpi { evaluations } => {
            format!(", modified policy iteration ({evaluations} evaluation sweeps per backup)")
        }
    }
}

/// An `--mdp` solve's setting, for writing its folder and summary.
struct MdpRun<'a> {
    args: &'a SolveArgs,
    path: &'a Path,
    mdp: &'a softvi::world::mdp::TabularMdp,
    shard: Option<&'a Shard>,
    options: &'a SolveOptions,
    adapter: serde_json::Value,
    start: Instant,
}

impl MdpRun<'_> {
    /// Writes the folder of `solved` (arrays in `T`, transitions stored as `transitions`:
    /// `"csr"` or `"dense"`) and prints the summary; the exit code.
    fn report<T: Real>(
        &self,
        out: &mut OutputFolder,
        solved: &MdpSolution<T>,
        transitions: &str,
    ) -> Result<i32> {
        let MdpRun {
            args,
            path,
            mdp,
            shard,
            options,
            ref adapter,
            start,
        } = *self;
        let solution = &solved.solution;
        let seconds = start.elapsed().as_secs_f64();
        let (b, s, a) = (mdp.tasks, mdp.states, mdp.actions);
        let backend = args.iteration.backend.name();
        let steps = solved.steps.is_some();
        let float = T::NUMPY_NAME;
        let mut summary = json!({
            "backend": backend,
            "adapter": adapter,
            "mdp": {
                "path": path_json(path, "--mdp")?,
                "states": s,
                "actions": a,
                "nonzeros": mdp.nonzeros(),
                "transitions": transitions,
            },
            "layout": {
                "values": if steps { format!("{float} [task][t][state], t = 0..T; -inf where no terminal is reachable (gamma = 1)") }
                    else { format!("{float} [task][state]; -inf where no terminal is reachable (gamma = 1)") },
                "policy": if steps { format!("{float} [task][t][state][action], t = 0..T-1; NaN on terminal and such states") }
                    else { format!("{float} [task][state][action]; NaN on terminal and such states") },
                "q": if steps { format!("{float} [task][t][state][action], t = 0..T-1, soft Q-values; NaN where the policy is") }
                    else { format!("{float} [task][state][action], soft Q-values; NaN where the policy is") },
                "occupancy": match options.horizon {
                    Horizon::Finite(_) => format!("{float} [task][t][state], D_0..D_T"),
                    Horizon::Infinite { .. } => format!("{float} [task][state], sum_t gamma^t D_t"),
                },
            },
        });
        add_run_json(&mut summary, options, solution, seconds);
        add_mdp_json(&mut summary, solved);
        Shard::add_json(shard, &mut summary);
        let arrays = solve_arrays(
            solution,
            solved.steps.as_ref(),
            solved.occupancy.as_ref(),
            &[s],
        );
        let summary_text = write_solve_folder(out, &mut summary, solution.diverged(), &arrays)?;
        if args.json {
            print!("{summary_text}");
        } else {
            let statuses: Vec<&str> = solution.status.iter().map(|s| s.name()).collect();
            println!(
                "mdp      {} ({s} states, {a} actions, {} transitions, stored {transitions})",
                path.display(),
                mdp.nonzeros()
            );
            println!(
                "solve    {b} tasks, {} backup, alpha {}, gamma {}{}",
                options.backup.name(),
                options.alpha,
                options.gamma,
                method_note(options)
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
            print_error_bound(options, solution);
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
            eprintln!(
                "error: the solve diverged: {}; no values were written",
                divergence_reason(options)
            );
            return Ok(EXIT_DIVERGED);
        }
        Ok(0)
    }
}

/// `softvi solve` on a grid with --all-steps, --occupancy or --start: the grid as a tabular
/// MDP over its free cells, outputs laid out over the map.
fn grid_mdp_solve_command(args: &SolveArgs, out: &mut OutputFolder, start: Instant) -> Result<i32> {
    ensure!(
        args.occupancy || args.start.is_empty(),
        "--start sets where the occupancy starts: add --occupancy"
    );
    // The solver builds the grid as an MDP where it needs one (and checks the starts there).
    let (world, shard) = build_world(args)?;
    let world = &world;
    let starts = world.start_cells(&args.start)?;
    let p = &world.problem;
    let options = args.iteration.options()?;
    let outputs = outputs(args);
    let mut backend = Backend::open(args.iteration.backend, &args.iteration.adapters)?;
    let starts_given = (!starts.is_empty()).then_some(&starts[..]);
    let solved = backend.solve_grid(p, starts_given, &options, outputs, args.quiet)?;
    let adapter = backend.adapter_json();
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
        summary["layout"]["q"] = json!(
            "float32 [task][t][row][col][action], t = 0..T-1, soft Q-values; NaN where the policy is"
        );
    }
    if let Some(d) = &solved.occupancy {
        summary["layout"]["occupancy"] = json!(if d.steps > 1 {
            "float32 [task][t][row][col], D_0..D_T; NaN blocked"
        } else {
            "float32 [task][row][col], sum_t gamma^t D_t; NaN blocked"
        });
    }
    Shard::add_json(shard.as_ref(), &mut summary);
    let arrays = solve_arrays(
        &solved.solution,
        solved.steps.as_ref(),
        solved.occupancy.as_ref(),
        &[p.grid.height, p.grid.width],
    );
    let summary_text = write_solve_folder(out, &mut summary, solved.solution.diverged(), &arrays)?;
    finish_solve(
        args,
        world,
        Shard::first(shard.as_ref()),
        &options,
        &adapter,
        &solved.solution,
        seconds,
        &summary_text,
    )
}

/// The end of a grid solve: the --png picture, the summary on stdout, the exit code.
#[allow(clippy::too_many_arguments)] // the one tail of the two grid solve paths
fn finish_solve(
    args: &SolveArgs,
    world: &World,
    first_task: usize,
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
        print_summary(
            world, first_task, options, adapter, solution, seconds, &args.out,
        );
    }
    if solution.diverged() {
        eprintln!(
            "error: the solve diverged: {}; no values were written",
            divergence_reason(options)
        );
        return Ok(EXIT_DIVERGED);
    }
    Ok(0)
}

/// The human summary of a grid solve; `first_task` numbers the tasks of a `--tasks` shard as
/// in the whole batch.
fn print_summary(
    world: &World,
    first_task: usize,
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
    print_error_bound(options, solution);
    for (t, goals) in world.goals.iter().enumerate().take(8) {
        let cells = p.grid.cells();
        let finite: Vec<f32> = solution.values[t * cells..(t + 1) * cells]
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        let lo = finite.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = finite.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let task = first_task + t;
        println!(
            "task {task:<3} goal {:?}: V in [{lo:.4}, {hi:.4}]",
            goals[0]
        );
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

/// `summary.json` of a solve.
fn summary_json(
    world: &World,
    options: &SolveOptions,
    backend: BackendArg,
    adapter: &serde_json::Value,
    solution: &Solution,
    seconds: f64,
) -> serde_json::Value {
    let p = &world.problem;
    let mut summary = json!({
        "backend": backend.name(),
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
            "q": "float32 [task][row][col][action], soft Q-values; NaN where the policy is",
        },
    });
    add_run_json(&mut summary, options, solution, seconds);
    summary
}

/// Adds the time-step and occupancy facts of an MDP solve to `summary`.
fn add_mdp_json<T: Real>(summary: &mut serde_json::Value, solution: &MdpSolution<T>) {
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

/// One `.npy` of a solve's folder: name, shape, data.
type NpyArray<'a, T = f32> = (&'static str, Vec<usize>, &'a [T]);

/// The report's error-bound line, and why it exceeds tol where it does (on stderr).
fn print_error_bound<T: Real>(options: &SolveOptions, solution: &Solution<T>) {
    println!("bound    {}", error_bound_line(options, solution));
    if let Some(note) = error_bound_note(options, solution) {
        eprintln!("warning: {note}");
    }
}

/// Writes a solve's folder: `summary.json`, and unless the solve diverged the `arrays`,
/// replacing an earlier solve's result; returns summary.json's text.
fn write_solve_folder<T: Real>(
    out: &mut OutputFolder,
    summary: &mut serde_json::Value,
    diverged: bool,
    arrays: &[NpyArray<T>],
) -> Result<String> {
    let mut files = Vec::new();
    if !diverged {
        for (name, shape, data) in arrays {
            files.push(OutputFile {
                name,
                bytes: T::encode_npy(shape, data),
            });
        }
    }
    Ok(out.write(summary, files)?)
}

/// The arrays of a solve's folder: `values.npy`, `policy.npy` and `q.npy` of shape
/// `[B, *state_shape]` (`[B, T+1, ...]` / `[B, T, ...]` with every step) and `occupancy.npy`.
fn solve_arrays<'a, T: Real>(
    solution: &'a Solution<T>,
    steps: Option<&'a TimeSteps<T>>,
    occupancy: Option<&'a Occupancy<T>>,
    state_shape: &[usize],
) -> Vec<NpyArray<'a, T>> {
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
            if let Some(q) = &steps.q {
                arrays.push(("q.npy", with(&[t - 1], &a), &q[..]));
            }
        }
        None => {
            arrays.push(("values.npy", with(&[], &[]), &solution.values[..]));
            if let Some(p) = &solution.policy {
                arrays.push(("policy.npy", with(&[], &a), &p[..]));
            }
            if let Some(q) = &solution.q {
                arrays.push(("q.npy", with(&[], &a), &q[..]));
            }
        }
    }
    if let Some(d) = occupancy {
        let lead: &[usize] = if d.steps > 1 { &[d.steps] } else { &[] };
        arrays.push(("occupancy.npy", with(lead, &[]), &d.values[..]));
    }
    arrays
}
