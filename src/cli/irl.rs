//! `softvi irl`: linear reward weights for state features, learned from demonstrations by
//! maximum (causal) entropy IRL.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use clap::Args;
use serde_json::json;
use softvi::{GridKernelsOnMdp, MdpSolver};

use super::backend::{Backend, BackendArg};
use super::iteration::BackupArg;
use super::world::{MdpWorld, WorldArgs};
use softvi::analysis::irl::{Demos, IrlOptions, IrlResult, learn};
use softvi::analysis::sample::ENDED;
use softvi::engine::options::{Backup, Horizon, Method, SolveOptions};
use softvi::io::npy;
use softvi::io::output::{OutputFile, OutputFolder};

#[derive(Args, Debug)]
pub(super) struct IrlArgs {
    #[command(flatten)]
    world: WorldArgs,
    /// State features phi, float .npy of shape [H,W,K] on a grid, [S,K] with --mdp.
    #[arg(long, value_name = "FILE.npy")]
    features: PathBuf,
    /// Demonstrated states, integer .npy [N,T+1] or [M,N,T+1] (M sets, one reward each), as
    /// `softvi sample` writes them: grid cells row * W + col, -1 after an episode's end.
    #[arg(long, value_name = "FILE.npy")]
    demos: PathBuf,
    /// The demos' actions, integer .npy [N,T] or [M,N,T] (-1 after the end); without them
    /// the likelihood is that of the state sequence.
    #[arg(long, value_name = "FILE.npy")]
    demo_actions: Option<PathBuf>,
    /// Temperature alpha > 0 of the demonstrator's soft-optimal policy.
    #[arg(long, default_value_t = 1.0)]
    alpha: f64,
    /// Discount gamma in [0, 1].
    #[arg(long, default_value_t = 1.0)]
    gamma: f64,
    /// Backup kind.
    #[arg(long, value_enum, default_value_t = BackupArg::Expected)]
    backup: BackupArg,
    /// Horizon T of each solve (default: the demo length); with --discounted, none.
    #[arg(long, value_name = "T", conflicts_with = "discounted")]
    horizon: Option<u32>,
    /// Discounted (infinite-horizon) IRL with --gamma < 1 instead of the demo length's horizon.
    #[arg(long)]
    discounted: bool,
    /// With --discounted: residual tolerance of each solve and occupancy.
    #[arg(long, default_value_t = 1e-6)]
    solve_tol: f64,
    /// Adam step size.
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    /// Most gradient steps.
    #[arg(long, default_value_t = 200)]
    iters: u32,
    /// Stop once every set's gradient norm |mu_demo - mu_model| is at most TOL.
    #[arg(long, default_value_t = 1e-3)]
    tol: f64,
    /// Where the solves run.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Output folder: theta.npy, reward.npy, summary.json. It must be new, empty or a folder
    /// of an earlier `softvi irl`, whose result is replaced.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Write into a non-empty --out that is not a `softvi irl` folder (files of the same
    /// names are replaced, other files kept).
    #[arg(long)]
    force: bool,
    /// Print summary.json's content instead of the human summary.
    #[arg(long)]
    json: bool,
    /// No per-iteration line on stderr.
    #[arg(long)]
    quiet: bool,
}

/// Reads an integer `.npy` of shape `[..lead, inner]` as `[sets][rest]`, with `sets` = 1 for
/// `[N, inner]`.
fn read_sets(path: &Path, what: &str) -> Result<(Vec<usize>, Vec<f64>)> {
    let bytes = softvi::io::output::read_input(path, what)?;
    let array =
        npy::decode(&bytes).with_context(|| format!("{} is not a usable .npy", path.display()))?;
    ensure!(
        array.dtype.contains('i') || array.dtype.contains('u'),
        "{what} {}: dtype {} is not an integer type",
        path.display(),
        array.dtype
    );
    let shape = match array.shape[..] {
        [n, t] => vec![1, n, t],
        [m, n, t] => vec![m, n, t],
        _ => anyhow::bail!(
            "{what} {}: shape {:?}; expected [N,T] or [M,N,T]",
            path.display(),
            array.shape
        ),
    };
    Ok((shape, array.data))
}

/// The demos of the command line in the world's states.
fn read_demos(args: &IrlArgs, world: &MdpWorld) -> Result<Demos> {
    let (shape, data) = read_sets(&args.demos, "--demos")?;
    let (m, n, t1) = (shape[0], shape[1], shape[2]);
    ensure!(
        t1 >= 2,
        "--demos {}: episodes need at least 2 states",
        args.demos.display()
    );
    let mut states = Vec::with_capacity(data.len());
    for (i, &x) in data.iter().enumerate() {
        let at = || {
            format!(
                "--demos {}: set {}, episode {}, step {}",
                args.demos.display(),
                i / (n * t1),
                i / t1 % n,
                i % t1
            )
        };
        if x == ENDED as f64 && i % t1 > 0 {
            states.push(ENDED);
            continue;
        }
        ensure!(x >= 0.0, "{}: {x} is not a state", at());
        let s = world
            .state_of_label(x as usize)
            .with_context(|| format!("{}: {x} is blocked or outside the world", at()))?;
        states.push(s as i32);
    }
    let actions = match &args.demo_actions {
        None => None,
        Some(path) => {
            let (shape, data) = read_sets(path, "--demo-actions")?;
            ensure!(
                shape == [m, n, t1 - 1],
                "--demo-actions {}: shape {shape:?} does not match the demos' [{m}, {n}, {}]",
                path.display(),
                t1 - 1
            );
            Some(data.iter().map(|&a| a as i32).collect())
        }
    };
    let demos = Demos {
        sets: m,
        episodes: n,
        steps: t1 - 1,
        states,
        actions,
    };
    let files = match &args.demo_actions {
        Some(path) => format!(
            "--demo-actions {} (with --demos {})",
            path.display(),
            args.demos.display()
        ),
        None => format!("--demos {}", args.demos.display()),
    };
    // The states were checked above: what is left to refuse is in the actions.
    demos
        .validate(world.mdp.states, world.mdp.actions)
        .with_context(|| files.clone())?;
    ensure!(
        world.mdp.tasks == 1 || world.mdp.tasks == m,
        "--demos {}: {m} sets, but the world has {} tasks: give one task, or one per set",
        args.demos.display(),
        world.mdp.tasks
    );
    if let Some(bad) = demos.impossible_step(&world.mdp) {
        let state = |s: usize| {
            let label = world.state_label(s as i32);
            match &world.grid {
                Some((_, g)) => format!(
                    "cell {label} (X={},Y={})",
                    label as usize % g.width,
                    label as usize / g.width
                ),
                None => format!("state {label}"),
            }
        };
        let what = match bad.action {
            Some(a) => {
                let name = match &world.grid {
                    Some((w, _)) => format!(" ({})", w.problem.actions.names()[a]),
                    None => String::new(),
                };
                format!(
                    "action {a}{name} never moves {} to {}, the next state of the demo",
                    state(bad.state),
                    state(bad.next)
                )
            }
            None => format!(
                "no action moves {} to {} (the step has probability 0)",
                state(bad.state),
                state(bad.next)
            ),
        };
        anyhow::bail!(
            "{files}: set {}, episode {}, step {}: {what}; the world cannot produce this demo",
            bad.set,
            bad.episode,
            bad.step
        );
    }
    Ok(demos)
}

/// The features of the command line as `[state][feature]`, and K.
fn read_features(path: &Path, world: &MdpWorld) -> Result<(Vec<f32>, usize)> {
    let array = npy::read_float(path)?;
    let shape = world.state_shape();
    ensure!(
        array.shape.len() == shape.len() + 1 && array.shape[..shape.len()] == shape[..],
        "--features {}: shape {:?}; expected [{}, K]",
        path.display(),
        array.shape,
        shape
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let k = *array.shape.last().unwrap_or(&0);
    ensure!(k > 0, "--features {}: no feature (K = 0)", path.display());
    if let Some(i) = array.data.iter().position(|x| !x.is_finite()) {
        anyhow::bail!(
            "--features {}: entry {i} is {}",
            path.display(),
            array.data[i]
        );
    }
    let per_state = match &world.grid {
        Some((_, g)) => g
            .cell_of_state
            .iter()
            .flat_map(|&c| {
                array.data[c as usize * k..(c as usize + 1) * k]
                    .iter()
                    .copied()
            })
            .collect(),
        None => array.data,
    };
    Ok((per_state, k))
}

/// `softvi irl`.
pub(super) fn irl_command(args: &IrlArgs) -> Result<i32> {
    let start = Instant::now();
    // The command's own flags first, named as the user wrote them (the library's checks name
    // the solve's tolerance --tol, which is --solve-tol here).
    ensure!(
        args.tol.is_finite() && args.tol >= 0.0,
        "--tol {} is not a gradient norm: give a finite number >= 0",
        args.tol
    );
    ensure!(
        args.solve_tol.is_finite() && args.solve_tol > 0.0,
        "--solve-tol {} is not a residual tolerance: give a finite number > 0",
        args.solve_tol
    );
    ensure!(
        args.lr.is_finite() && args.lr > 0.0,
        "--lr {} is not a step size: give a finite number > 0",
        args.lr
    );
    ensure!(args.iters >= 1, "--iters must be at least 1");
    let mut out = OutputFolder::claim(&args.out, "irl", &["theta.npy", "reward.npy"], args.force)?;
    let world = MdpWorld::build(&args.world, &[])?;
    let (features, k) = read_features(&args.features, &world)?;
    let demos = read_demos(args, &world)?;
    let horizon = if args.discounted {
        Horizon::Infinite {
            tol: args.solve_tol,
            max_iters: 100_000,
        }
    } else {
        Horizon::Finite(args.horizon.unwrap_or(demos.steps as u32))
    };
    let solve = SolveOptions {
        alpha: args.alpha,
        gamma: args.gamma,
        backup: match args.backup {
            BackupArg::Expected => Backup::Expected,
            BackupArg::Optimistic => Backup::Optimistic,
        },
        horizon,
        extrapolate: true,
        method: Method::Vi,
    };
    let options = IrlOptions {
        solve,
        learning_rate: args.lr,
        iters: args.iters,
        tol: args.tol,
    };
    let (result, adapter) = learn_on_backend(args, &world, &features, &demos, &options)?;
    let seconds = start.elapsed().as_secs_f64();
    let (m_n, s_n) = (demos.sets, world.mdp.states);
    // theta . phi per set and state, laid out over the map on a grid.
    let reward: Vec<f32> = (0..m_n)
        .flat_map(|m| {
            let (theta, features) = (&result.theta, &features);
            (0..s_n).map(move |s| {
                (0..k)
                    .map(|j| theta[m * k + j] * features[s * k + j] as f64)
                    .sum::<f64>() as f32
            })
        })
        .collect();
    let reward = match &world.grid {
        Some((_, g)) => g.to_cells(&reward, 1),
        None => reward,
    };
    let history = &result.history;
    let last = history.last().expect("at least one iteration");
    let mean_iteration =
        history.iter().map(|h| h.solve_seconds).sum::<f64>() / history.len() as f64;
    let mut summary = json!({
        "backend": args.backend.name(),
        "adapter": adapter,
        "world": world.source,
        "features": k,
        "demos": {"sets": m_n, "episodes": demos.episodes, "steps": demos.steps, "actions": demos.actions.is_some()},
        "alpha": args.alpha,
        "gamma": args.gamma,
        "backup": options.solve.backup.name(),
        "horizon": match horizon { Horizon::Finite(t) => Some(t), Horizon::Infinite { .. } => None },
        "learning_rate": args.lr,
        "tol": args.tol,
        "iterations": history.len(),
        "converged": result.converged,
        "theta": result.theta.chunks_exact(k).collect::<Vec<_>>(),
        "log_likelihood": history.iter().map(|h| &h.log_likelihood).collect::<Vec<_>>(),
        "gradient_norm": history.iter().map(|h| &h.gradient_norm).collect::<Vec<_>>(),
        "demo_features": result.demo_features.chunks_exact(k).collect::<Vec<_>>(),
        "model_features": result.model_features.chunks_exact(k).collect::<Vec<_>>(),
        "seconds_per_iteration": mean_iteration,
        "seconds": seconds,
        "layout": {
            "theta": "float32 [set][feature]",
            "reward": if world.grid.is_some() { "float32 [set][row][col], theta . phi; NaN blocked" } else { "float32 [set][state], theta . phi" },
            "log_likelihood": "[iteration][set], mean over a set's demo episodes, before the iteration's update",
        },
    });
    let theta: Vec<f32> = result.theta.iter().map(|&x| x as f32).collect();
    let reward_shape = [&[m_n][..], &world.state_shape()].concat();
    let summary_text = out.write(
        &mut summary,
        vec![
            OutputFile {
                name: "theta.npy",
                bytes: npy::encode_f32(&[m_n, k], &theta),
            },
            OutputFile {
                name: "reward.npy",
                bytes: npy::encode_f32(&reward_shape, &reward),
            },
        ],
    )?;
    if args.json {
        print!("{summary_text}");
    } else {
        println!(
            "irl      {m_n} sets x {} demos x {} steps, {k} features, alpha {}, gamma {}",
            demos.episodes, demos.steps, args.alpha, args.gamma
        );
        println!(
            "result   {} after {} iterations, max |grad| {:.3e}, mean log-likelihood {:.5}",
            if result.converged {
                "converged"
            } else {
                "stopped at --iters"
            },
            history.len(),
            last.gradient_norm.iter().copied().fold(0.0, f64::max),
            last.log_likelihood.iter().sum::<f64>() / m_n as f64
        );
        println!(
            "time     {mean_iteration:.3} s per iteration; wrote {} in {seconds:.3} s",
            args.out.display()
        );
    }
    Ok(0)
}

/// Runs the MaxEnt IRL iterations on the chosen backend (a grid with a finite horizon on the
/// grid kernels), one line per iteration on stderr unless --quiet; returns the result and the
/// adapter description.
fn learn_on_backend(
    args: &IrlArgs,
    world: &MdpWorld,
    features: &[f32],
    demos: &Demos,
    options: &IrlOptions,
) -> Result<(IrlResult, serde_json::Value)> {
    let quiet = args.quiet;
    let mut report = |it: u32, step: &softvi::analysis::irl::IrlStep| {
        if !quiet {
            let worst = step.gradient_norm.iter().copied().fold(0.0, f64::max);
            let mean_ll =
                step.log_likelihood.iter().sum::<f64>() / step.log_likelihood.len() as f64;
            eprintln!(
                "iter {it:>4}  mean log-likelihood {mean_ll:.5}  max |grad| {worst:.3e}  {:.3} s",
                step.solve_seconds
            );
        }
        std::ops::ControlFlow::Continue(())
    };
    let mut learn_with = |solver: &mut dyn MdpSolver| {
        learn(&world.mdp, features, demos, options, solver, &mut report)
    };
    let mut backend = Backend::open(args.backend, "1")?;
    let adapter = backend.adapter_json();
    let result = match (backend.gpu()?, &world.grid, options.solve.horizon) {
        // A grid with a finite horizon runs on the grid kernels (about 10x the CSR path on a
        // grid with slip).
        (Some(gpu), Some((grid_world, grid_mdp)), Horizon::Finite(_)) => {
            learn_with(&mut GridKernelsOnMdp {
                solver: gpu,
                world: grid_mdp,
                template: &grid_world.problem,
            })?
        }
        _ => learn_with(backend.mdp()?)?,
    };
    Ok((result, adapter))
}
