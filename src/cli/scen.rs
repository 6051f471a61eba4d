//! `softvi scen`: the goals of a MovingAI scenario file solved as one batch and compared with
//! the published optimal lengths.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail, ensure};
use clap::Args;

use super::backend::{Backend, BackendArg};
use softvi::engine::options::{Backup, Horizon, Method, Outputs, SolveOptions};
use softvi::engine::solution::Status;
use softvi::world::grid::{ActionSet, Connectivity, MoveCost};
use softvi::world::grid_problem::{GridProblem, GridTask};

#[derive(Args, Debug)]
pub(super) struct ScenArgs {
    /// MovingAI .map file.
    #[arg(long, value_name = "FILE.map")]
    map: PathBuf,
    /// MovingAI .scen file (version 1) for that map.
    #[arg(long, value_name = "FILE.scen")]
    scen: PathBuf,
    /// Temperature alpha >= 0 (0 = hard shortest paths).
    #[arg(long, default_value_t = 0.0)]
    alpha: f64,
    /// Use only the first N scenarios.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Residual tolerance of the undiscounted solve.
    #[arg(long, default_value_t = 1e-6)]
    tol: f64,
    /// Where the sweeps run.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// GPU adapters to shard the goals over: `all` or a count N.
    #[arg(long, default_value = "1", value_name = "all|N")]
    adapters: String,
    /// Print only the summary line, not one line per scenario, and no progress line.
    #[arg(long)]
    quiet: bool,
}

/// `softvi scen`: all distinct goals of the scenarios as one batch (8-connected, unit and
/// sqrt(2) costs, gamma = 1), then the soft value at each start against the published length.
pub(super) fn scen_command(args: &ScenArgs) -> Result<i32> {
    let start = Instant::now();
    let grid = super::world::load_map(&args.map)?;
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
        extrapolate: true,
        method: Method::Vi,
    };
    let solution = Backend::open(args.backend, &args.adapters)?
        .solve_grid(&problem, None, &options, Outputs::VALUES, args.quiet)?
        .solution;
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
