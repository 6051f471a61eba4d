//! `softvi bench`: sweep throughput of the standard workloads on the GPU path and the CPU
//! reference.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use clap::Args;

use softvi::bench::{
    GRID_WORKLOADS, Measurement, Workload, grid_workload, measure_cpu, measure_gpu,
    measure_mdp_cpu, measure_mdp_gpu, measure_mdp_gpu_stored, measure_native, reference_problem,
    sparse_mdp, standard_workloads,
};
use softvi::engine::gpu::{GpuContext, GridEngine};
use softvi::engine::options::{Horizon, Method, SolveOptions};

#[derive(Args, Debug)]
pub(super) struct BenchArgs {
    /// Workloads to run (default: all): maze1024-b1, maze1024-b8, random1024-b1 (20% random
    /// obstacles, the JAX stencil peer's world), random1024-b8, maze4096-b1, orz900d-b64,
    /// mdp1m (10^6 states, 8 actions, ~4 successors; also timed end to end with occupancy),
    /// irl256 (seconds per MaxEnt IRL iteration, 256x256 grid, K = 8, M = 16),
    /// maze1023-gamma1 (seconds to convergence of a long undiscounted maze); only when
    /// named: mdp-dense (dense [S,A,S] models, S = 2,000 and 5,000, A = 4, B = 1 and 8: the
    /// GPU's dense product against its CSR path, in the same run).
    #[arg(long = "workload", value_name = "NAME")]
    workloads: Vec<String>,
    /// Grid paths to time (repeatable; default gpu and native): `gpu` (the WGSL kernels on
    /// the adapter), `native` (the f32 CPU engine on every core) or `auto` (the one `--backend
    /// auto`, the default of the solving commands, picks here: native where the only adapter
    /// is a CPU).
    #[arg(long = "backend", value_name = "gpu|native|auto")]
    backends: Vec<GridPath>,
    /// A MovingAI map timed as the workloads `map-b1` and `map-b8` (reference settings: 8
    /// actions, slip 0.1, alpha 1, gamma 0.99), instead of the named grid workloads.
    #[arg(long, value_name = "FILE")]
    map: Option<PathBuf>,
    /// Folder holding the MovingAI maps (orz900d.map).
    #[arg(long, default_value = "../shared/maps", value_name = "DIR")]
    maps: PathBuf,
    /// Extra sweeps timed on the GPU path per workload, to start with (default: about 2e8
    /// state updates, 4 to 128); doubled until they take half a second.
    #[arg(long)]
    sweeps: Option<u32>,
    /// Extra sweeps timed on the CPU reference per workload, to start with (0 skips the CPU).
    #[arg(long, default_value_t = 2)]
    cpu_sweeps: u32,
    /// Also time mdp1m's end-to-end solve + occupancy and an irl256 iteration on the CPU
    /// reference (minutes each).
    #[arg(long)]
    cpu_solve: bool,
}

/// A grid path `softvi bench` times.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
enum GridPath {
    /// The WGSL kernels on the adapter.
    Gpu,
    /// The native f32 engine.
    Native,
    /// What `--backend auto` picks on this adapter.
    Auto,
}

/// The general-MDP workload: throughput, then soft VI and occupancy to tol end to end.
const MDP_WORKLOAD: &str = "mdp1m";
/// The MaxEnt IRL workload: seconds per iteration.
const IRL_WORKLOAD: &str = "irl256";
/// The long-path workload: seconds to convergence at gamma = 1.
const LONG_WORKLOAD: &str = "maze1023-gamma1";
/// The dense-MDP workload (run only when named): dense product against CSR on the GPU.
const DENSE_WORKLOAD: &str = "mdp-dense";

/// `softvi bench`: one table row per workload and backend, and the GPU/CPU ratio.
pub(super) fn bench_command(args: &BenchArgs) -> Result<i32> {
    if let Some(sweeps) = args.sweeps {
        ensure!(
            (1..=1 << 14).contains(&sweeps),
            "--sweeps must be in 1..=16384 (the timing doubles it up to 16384), got {sweeps}"
        );
    }
    let maps = args.maps.is_dir().then_some(args.maps.as_path());
    let (mut run_mdp, mut run_irl, mut run_long) = (true, true, true);
    let run_dense = args.workloads.iter().any(|w| w == DENSE_WORKLOAD);
    // Names are checked before anything is built (the big mazes take seconds), and only
    // the asked workloads are built.
    let workloads = if let Some(path) = &args.map {
        (run_mdp, run_irl) = (false, false);
        let grid = softvi::Grid::load_movingai(path)
            .with_context(|| format!("--map {}", path.display()))?;
        [1, 8]
            .into_iter()
            .map(|tasks| Workload {
                name: format!("map-b{tasks}"),
                problem: reference_problem(grid.clone(), tasks),
            })
            .collect()
    } else if args.workloads.is_empty() {
        standard_workloads(maps)?
    } else {
        for name in &args.workloads {
            ensure!(
                name == MDP_WORKLOAD
                    || name == IRL_WORKLOAD
                    || name == LONG_WORKLOAD
                    || name == DENSE_WORKLOAD
                    || GRID_WORKLOADS.contains(&name.as_str()),
                "--workload {name:?} is unknown (known: {}, {MDP_WORKLOAD}, {IRL_WORKLOAD}, \
                 {LONG_WORKLOAD}, {DENSE_WORKLOAD})",
                GRID_WORKLOADS.join(", ")
            );
        }
        run_mdp = args.workloads.iter().any(|w| w == MDP_WORKLOAD);
        run_irl = args.workloads.iter().any(|w| w == IRL_WORKLOAD);
        run_long = args.workloads.iter().any(|w| w == LONG_WORKLOAD);
        (GRID_WORKLOADS.iter())
            .filter(|n| args.workloads.iter().any(|w| w == *n))
            .map(|n| grid_workload(n, Some(&args.maps)).with_context(|| format!("--workload {n}")))
            .collect::<Result<Vec<_>, _>>()?
    };
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
        "x cpu"
    );
    bench_grids(args, &ctx, &mut engine, &workloads)?;
    if run_mdp {
        bench_mdp(args, &ctx)?;
    }
    if run_irl {
        bench_irl(args, &ctx)?;
    }
    if run_long {
        bench_long(args, &ctx, &mut engine)?;
    }
    if run_dense {
        bench_dense(args, &ctx)?;
    }
    Ok(0)
}

/// The maze1023-gamma1 workload: `softvi solve --maze 1023x1023 --goal 1,1 --gamma 1 --alpha
/// 0.1 --no-policy` timed to convergence on the GPU (and the CPU reference unless
/// --cpu-sweeps 0), against the time of one sweep measured in the same run: from V = 0 it
/// took 3040 sweeps (one per cell of the longest path), with the warm start
/// (`softvi::engine::warm_start`) one check window.
fn bench_long(args: &BenchArgs, ctx: &GpuContext, engine: &mut GridEngine) -> Result<()> {
    use softvi::engine::options::{Backup, Outputs};
    use softvi::world::grid::{ActionSet, Connectivity, Grid, MoveCost};
    use softvi::world::grid_problem::{GridProblem, GridTask};
    let grid = Grid::generate_maze(1023, 1023, 0)?;
    let problem = GridProblem {
        tasks: vec![GridTask {
            goals: vec![grid.width + 1],
            reward: None,
        }],
        grid,
        actions: ActionSet {
            connectivity: Connectivity::Eight,
            stay: false,
        },
        slip: 0.0,
        move_cost: MoveCost::default(),
    };
    let options = SolveOptions {
        alpha: 0.1,
        gamma: 1.0,
        backup: Backup::Expected,
        horizon: Horizon::Infinite {
            tol: 1e-4,
            max_iters: 100_000,
        },
        extrapolate: true,
        method: Method::Vi,
    };
    let sweep = measure_gpu(engine, &problem, args.sweeps.unwrap_or(32))?.seconds_per_sweep;
    let timed = |backend: &str,
                 sweep: f64,
                 solve: &mut dyn FnMut() -> softvi::Result<softvi::Solution>|
     -> Result<()> {
        let start = Instant::now();
        let solved = solve()?;
        let seconds = start.elapsed().as_secs_f64();
        println!(
            "{LONG_WORKLOAD} on {backend}: alpha 0.1, gamma 1, tol 1e-4: {} sweeps ({}) in \
             {seconds:.2} s = {:.0} sweeps' time ({:.4} s per sweep)",
            solved.iterations[0],
            solved.status[0].name(),
            seconds / sweep,
            sweep
        );
        Ok(())
    };
    timed(&ctx.adapter_label(), sweep, &mut || {
        engine.solve(&problem, &options, Outputs::VALUES)
    })?;
    if args.cpu_sweeps > 0 {
        let sweep = measure_cpu(&problem, args.cpu_sweeps)?.seconds_per_sweep;
        timed("cpu reference", sweep, &mut || {
            softvi::engine::cpu::solve_cpu(&problem, &options, Outputs::VALUES)
        })?;
    }
    Ok(())
}

/// The table rows of one workload: each timed path, then the CPU reference when it was
/// timed; every row's ratio is against the reference.
fn print_rows(
    name: &str,
    tasks: usize,
    size: &str,
    actions: usize,
    timed: &[(String, String, Measurement)],
    cpu: Option<Measurement>,
) {
    let row = |backend: &str, adapter: &str, m: &Measurement, ratio: String| {
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
    for (backend, adapter, m) in timed {
        let ratio = cpu.as_ref().map_or("-".into(), |c| {
            format!(
                "{:.1}x",
                m.state_updates_per_second / c.state_updates_per_second
            )
        });
        row(backend, adapter, m, ratio);
    }
    if let Some(c) = &cpu {
        row("cpu", "reference (f64, 1 thread)", c, "1.0x".into());
    }
}

/// The mdp-dense workload: dense random models (every row full), S = 2,000 and 5,000, A = 4,
/// B = 1 and 8, timed on the GPU with the dense product (`shaders/mdp_dense.wgsl`) and with
/// CSR rows, in the same run; a line per model gives dense / CSR.
fn bench_dense(args: &BenchArgs, ctx: &GpuContext) -> Result<()> {
    use softvi::engine::gpu::mdp_engine::MdpStorage;
    let mut engine = softvi::engine::gpu::MdpEngine::new(ctx)?;
    for states in [2_000, 5_000] {
        for tasks in [1, 8] {
            let mdp = softvi::bench::dense_mdp(states, 4, tasks, 0)?;
            let sweeps = args.sweeps.unwrap_or(2);
            let dense = measure_mdp_gpu_stored(&mut engine, &mdp, sweeps, MdpStorage::Dense)?;
            let csr = measure_mdp_gpu_stored(&mut engine, &mdp, sweeps, MdpStorage::Csr)?;
            let timed = [
                ("dense".into(), ctx.adapter_label(), dense.clone()),
                ("csr".into(), ctx.adapter_label(), csr.clone()),
            ];
            print_rows(DENSE_WORKLOAD, tasks, &states.to_string(), 4, &timed, None);
            println!(
                "{DENSE_WORKLOAD} S {states} B {tasks}: dense / CSR sweeps/s = {:.2}",
                dense.sweeps_per_second / csr.sweeps_per_second
            );
        }
    }
    Ok(())
}

/// The gridworld workloads: a row per timed path, and a CPU row unless --cpu-sweeps 0.
fn bench_grids(
    args: &BenchArgs,
    ctx: &GpuContext,
    engine: &mut GridEngine,
    workloads: &[Workload],
) -> Result<()> {
    let paths = if args.backends.is_empty() {
        vec![GridPath::Gpu, GridPath::Native]
    } else {
        args.backends.clone()
    };
    let threads = softvi::engine::native::default_threads();
    for w in workloads {
        let p = &w.problem;
        let size = format!("{}x{}", p.grid.height, p.grid.width);
        let default_sweeps =
            (2e8 / (p.task_count() * p.grid.cells()) as f64).clamp(4.0, 128.0) as u32;
        let sweeps = args.sweeps.unwrap_or(default_sweeps);
        let mut timed = Vec::new();
        for &path in &paths {
            let path = match path {
                GridPath::Auto if ctx.info.device_type == softvi::wgpu::DeviceType::Cpu => {
                    GridPath::Native
                }
                GridPath::Auto => GridPath::Gpu,
                other => other,
            };
            timed.push(match path {
                GridPath::Gpu => (
                    "gpu".into(),
                    ctx.adapter_label(),
                    measure_gpu(engine, p, sweeps)?,
                ),
                GridPath::Native | GridPath::Auto => (
                    "native".into(),
                    format!("f32, {threads} threads"),
                    measure_native(p, sweeps, threads)?,
                ),
            });
        }
        let cpu = if args.cpu_sweeps > 0 {
            Some(measure_cpu(p, args.cpu_sweeps)?)
        } else {
            None
        };
        print_rows(
            &w.name,
            p.task_count(),
            &size,
            p.actions.count(),
            &timed,
            cpu,
        );
    }
    Ok(())
}

/// The mdp1m workload: its sweep throughput, then soft VI and the discounted occupancy to tol
/// end to end on the GPU (and with --cpu-solve on the CPU reference, compared).
fn bench_mdp(args: &BenchArgs, ctx: &GpuContext) -> Result<()> {
    let mdp = sparse_mdp(1_000_000, 0);
    let mut mdp_engine = softvi::engine::gpu::MdpEngine::new(ctx)?;
    let threads = softvi::engine::native::default_threads();
    let software = ctx.info.device_type == softvi::wgpu::DeviceType::Cpu;
    let paths = if args.backends.is_empty() {
        vec![GridPath::Gpu, GridPath::Native]
    } else {
        args.backends.clone()
    };
    let mut timed = Vec::new();
    for &path in &paths {
        let native = match path {
            GridPath::Auto => software,
            GridPath::Native => true,
            GridPath::Gpu => false,
        };
        let sweeps = args.sweeps.unwrap_or(32);
        timed.push(match native {
            true => (
                "native".into(),
                format!("f32, {threads} threads"),
                softvi::bench::measure_mdp_native(&mdp, sweeps, threads)?,
            ),
            false => (
                "gpu".into(),
                ctx.adapter_label(),
                measure_mdp_gpu(&mut mdp_engine, &mdp, sweeps)?,
            ),
        });
    }
    let cpu = if args.cpu_sweeps > 0 {
        Some(measure_mdp_cpu(&mdp, args.cpu_sweeps)?)
    } else {
        None
    };
    print_rows(
        MDP_WORKLOAD,
        1,
        &mdp.states.to_string(),
        mdp.actions,
        &timed,
        cpu,
    );
    // End to end: soft VI to tol, then the discounted occupancy to tol.
    let options = softvi::bench::reference_options(Horizon::Infinite {
        tol: 1e-4,
        max_iters: 100_000,
    });
    let outputs = softvi::engine::options::Outputs {
        occupancy: true,
        ..softvi::engine::options::Outputs::VALUES
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
    // On the path `--backend auto` takes: the native engine where the adapter is a CPU.
    let gpu = if software {
        let mut native = softvi::NativeSolver::new(None);
        let label = softvi::MdpSolver::label(&native);
        end_to_end(&label, &mut || {
            softvi::MdpSolver::solve_mdp(
                &mut native,
                &mdp,
                &options,
                outputs,
                &mut softvi::keep_going,
            )
        })?
    } else {
        end_to_end(&ctx.adapter_label(), &mut || {
            mdp_engine.solve(&mdp, &options, outputs)
        })?
    };
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
    Ok(())
}

/// The irl256 workload: seconds per MaxEnt IRL iteration on the grid and CSR kernels (and with
/// --cpu-solve on the CPU reference).
fn bench_irl(args: &BenchArgs, ctx: &GpuContext) -> Result<()> {
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
            &mut |_, _| std::ops::ControlFlow::Continue(()),
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
    Ok(())
}
