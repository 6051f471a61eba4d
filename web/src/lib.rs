//! The browser playground's wasm module: softvi's grid engine behind wasm-bindgen. With WebGPU
//! the solves run the library's own WGSL kernels ([`GridEngine::solve_async`], each readback
//! awaited so the page's event loop keeps turning); without it, the f64 CPU reference compiled
//! to wasm. `web/worker.js` calls these functions from a Web Worker, one at a time.
//!
//! Layouts as the library's: cells row-major (`s = row * W + col`), `values` `[task][cell]`,
//! `policy` `[task][cell][action]` in the action order `N, E, S, W, NE, SE, SW, NW, STAY`
//! (the subset in use), NaN on walls and on goal rows of the policy.

use std::cell::RefCell;
use std::ops::ControlFlow;

use js_sys::{Array, Float32Array, Function, Object, Reflect, Uint32Array};
use softvi::analysis::infer::{Observation, check_possible, posterior_inputs};
use softvi::analysis::sample::{ENDED, sample};
use softvi::engine::cpu::{solve_cpu_with_progress, task_posterior};
use softvi::engine::memory::estimate_grid_bytes;
use softvi::engine::schedule::CHECK_INTERVAL;
use softvi::world::grid_mdp::{GridMdp, start_distribution};
use softvi::{
    ActionSet, Backup, Connectivity, CpuReference, GpuContext, Grid, GridEngine, GridProblem,
    GridSolver, GridTask, Horizon, MdpSolution, Method, MoveCost, Outputs, Progress, SolveOptions,
    TaskPosterior,
};
use wasm_bindgen::prelude::*;

/// Where the solves run.
enum Backend {
    /// The WGSL kernels on the browser's WebGPU adapter.
    Gpu {
        engine: Box<GridEngine>,
        posterior: Box<TaskPosterior>,
        label: String,
    },
    /// The f64 CPU reference, compiled to wasm.
    Cpu { label: String },
}

/// The last solve: what sampling and goal inference read.
struct Solved {
    problem: GridProblem,
    options: SolveOptions,
    /// `pi_0` (or the stationary policy), `[task][cell][action]`.
    policy: Vec<f32>,
    /// Finite horizon: `pi_0..pi_{T-1}` over the world's states, `[task][t][state][action]`,
    /// once sampling or goal inference has asked for it.
    steps: Option<Vec<f32>>,
}

thread_local! {
    static BACKEND: RefCell<Option<Backend>> = const { RefCell::new(None) };
    static LAST: RefCell<Option<Solved>> = const { RefCell::new(None) };
}

fn js_error(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// Opens the backend: with `use_gpu`, the browser's WebGPU adapter (falling back to the CPU
/// reference when none opens), else the CPU reference. Returns what the page shows, e.g.
/// `"WebGPU: SwiftShader Device (Subzero)"` or `"CPU (f64 reference, wasm): ..."`.
#[wasm_bindgen]
pub async fn start(use_gpu: bool) -> String {
    let backend = match use_gpu {
        false => Backend::Cpu {
            label: "CPU (f64 reference, wasm): this browser has no WebGPU".into(),
        },
        true => match open_gpu().await {
            Ok(backend) => backend,
            Err(e) => Backend::Cpu {
                label: format!("CPU (f64 reference, wasm): WebGPU did not open ({e})"),
            },
        },
    };
    let label = match &backend {
        Backend::Gpu { label, .. } | Backend::Cpu { label } => label.clone(),
    };
    BACKEND.with_borrow_mut(|b| *b = Some(backend));
    label
}

async fn open_gpu() -> softvi::Result<Backend> {
    let ctx = GpuContext::request_async().await?;
    Ok(Backend::Gpu {
        engine: Box::new(GridEngine::new(&ctx)?),
        posterior: Box::new(TaskPosterior::new(&ctx)?),
        // Browsers hide the adapter's name from wgpu (the page shows its GPUAdapterInfo).
        label: "WebGPU".into(),
    })
}

/// The backend, taken out for the length of one call (the worker runs one call at a time;
/// holding a `RefCell` borrow across an `await` would not be sound).
fn take_backend() -> Result<Backend, JsError> {
    BACKEND
        .with_borrow_mut(Option::take)
        .ok_or_else(|| JsError::new("the backend is busy or not started (call start first)"))
}

fn put_backend(backend: Backend) {
    BACKEND.with_borrow_mut(|b| *b = Some(backend));
}

/// The walls `[row][col]` (1 = wall, 0 = free) of softvi's generated maze of `width` x
/// `height` cells from `seed`, the world `softvi solve --maze WxH --seed N` builds.
#[wasm_bindgen]
pub fn maze(width: usize, height: usize, seed: u64) -> Result<Vec<u8>, JsError> {
    let grid = Grid::generate_maze(width, height, seed).map_err(js_error)?;
    Ok(grid.free.iter().map(|&f| u8::from(!f)).collect())
}

/// A MovingAI `.map` text read by the library's parser (as `softvi solve --map` reads it):
/// `{width, height, walls}`, walls `[row][col]` as a Uint8Array (1 = wall).
#[wasm_bindgen]
pub fn parse_map(text: &str) -> Result<JsValue, JsError> {
    let grid = Grid::parse_movingai(text).map_err(js_error)?;
    let walls: Vec<u8> = grid.free.iter().map(|&f| u8::from(!f)).collect();
    let out = Object::new();
    set(&out, "width", grid.width as u32);
    set(&out, "height", grid.height as u32);
    set(&out, "walls", js_sys::Uint8Array::from(&walls[..]));
    Ok(out.into())
}

/// The problem and settings of `spec` (JSON: `width`, `height`, `goals` (cells, one task
/// each), `alpha`, `gamma`, `slip`, `connectivity` 4|8, `stay`, `backup`
/// "expected"|"optimistic", `horizon` null or T, `tol`, `max_iters`) over `walls`.
fn parse_spec(spec: &str, walls: &[u8]) -> Result<(GridProblem, SolveOptions), JsError> {
    let v: serde_json::Value = serde_json::from_str(spec).map_err(js_error)?;
    let num = |key: &str| {
        v[key]
            .as_f64()
            .ok_or_else(|| JsError::new(&format!("spec: {key} is missing or not a number")))
    };
    let (width, height) = (num("width")? as usize, num("height")? as usize);
    if walls.len() != width * height {
        return Err(JsError::new(&format!(
            "walls hold {} cells, not width x height = {width} x {height}",
            walls.len()
        )));
    }
    let goals: Vec<usize> = (v["goals"].as_array())
        .ok_or_else(|| JsError::new("spec: goals is missing"))?
        .iter()
        .map(|g| g.as_u64().map(|g| g as usize))
        .collect::<Option<_>>()
        .ok_or_else(|| JsError::new("spec: a goal is not a cell index"))?;
    let connectivity = match num("connectivity")? as u32 {
        4 => Connectivity::Four,
        8 => Connectivity::Eight,
        c => {
            return Err(JsError::new(&format!(
                "spec: connectivity {c} is not 4 or 8"
            )));
        }
    };
    let backup = match v["backup"].as_str() {
        Some("optimistic") => Backup::Optimistic,
        Some("expected") | None => Backup::Expected,
        Some(b) => return Err(JsError::new(&format!("spec: backup {b:?} is unknown"))),
    };
    let horizon = match v["horizon"].as_u64() {
        Some(t) => Horizon::Finite(t as u32),
        None => Horizon::Infinite {
            tol: num("tol")?,
            max_iters: num("max_iters")? as u32,
        },
    };
    let problem = GridProblem {
        grid: Grid {
            height,
            width,
            free: walls.iter().map(|&w| w == 0).collect(),
        },
        tasks: (goals.iter())
            .map(|&g| GridTask {
                goals: vec![g],
                reward: None,
            })
            .collect(),
        actions: ActionSet {
            connectivity,
            stay: v["stay"].as_bool().unwrap_or(false),
        },
        slip: num("slip")?,
        move_cost: MoveCost::default(),
    };
    let options = SolveOptions {
        alpha: num("alpha")?,
        gamma: num("gamma")?,
        backup,
        horizon,
        extrapolate: true,
        method: Method::Vi,
    };
    problem.validate().map_err(js_error)?;
    options.validate().map_err(js_error)?;
    Ok((problem, options))
}

/// Cell updates one GPU submission may hold: a few milliseconds on a discrete GPU, seconds on
/// a software adapter (SwiftShader), so progress and cancellation stay prompt on both.
const UPDATES_PER_SUBMIT: usize = 1 << 24;

/// The checks per submission that keep one under [`UPDATES_PER_SUBMIT`] cell updates (at
/// least one check: 16 sweeps of a 1024 x 1024 world with two goals is about 2^25).
fn checks_per_submit(problem: &GridProblem) -> usize {
    let per_check = problem.grid.cells() * problem.tasks.len() * CHECK_INTERVAL as usize;
    (UPDATES_PER_SUBMIT / per_check.max(1)).max(1)
}

/// A progress callback that reports the sweeps to `report` and stops the solve (an error
/// "cancelled") when it returns `false`: the page has asked for a newer solve.
fn reporter(report: &Function) -> impl FnMut(&Progress) -> ControlFlow<()> + '_ {
    move |p: &Progress| {
        let keep = report
            .call2(&JsValue::NULL, &p.sweeps.into(), &p.residual.into())
            .map(|r| r.as_bool() != Some(false))
            .unwrap_or(true);
        if keep {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    }
}

fn set(obj: &Object, key: &str, value: impl Into<JsValue>) {
    // Setting a property of a plain object cannot fail.
    let _ = Reflect::set(obj, &key.into(), &value.into());
}

/// Solves every goal of `spec` over `walls` (`[row][col]`, 1 = wall). `spec` is JSON: `width`,
/// `height`, `goals` (cells, one task each), `alpha`, `gamma`, `slip`, `connectivity` 4|8,
/// `stay`, `backup` "expected"|"optimistic", `horizon` null or T, `tol`, `max_iters`. Calls
/// `progress(sweeps, residual)` after every GPU submission (every check on the CPU); a
/// `false` from it stops the solve ("cancelled"). On WebGPU `live(sweeps, values)` gets the
/// values after every submission, `[task][row][col]` over rows padded to
/// `width.next_multiple_of(4)` columns, as a Float32Array. Returns `{values, policy, entropy, actions, iterations,
/// status, seconds, backend}`: `values` and `entropy` (nats, `-sum pi ln pi`) `[task][cell]`,
/// `policy` `[task][cell][action]`, as Float32Arrays.
#[wasm_bindgen]
pub async fn solve(
    spec: String,
    walls: Vec<u8>,
    progress: Function,
    live: Function,
) -> Result<JsValue, JsError> {
    let (problem, options) = parse_spec(&spec, &walls)?;
    let outputs = Outputs {
        policy: true,
        ..Outputs::VALUES
    };
    let mut backend = take_backend()?;
    let mut report = reporter(&progress);
    let solved = match &mut backend {
        Backend::Gpu { engine, .. } => {
            engine.set_checks_per_submit(checks_per_submit(&problem));
            engine.watch_values(Some(Box::new(move |sweeps, values| {
                let values = Float32Array::from(values);
                let _ = live.call2(&JsValue::NULL, &sweeps.into(), &values);
            })));
            let solved = engine.solve_async(&problem, &options, outputs, &mut report);
            let solved = solved.await;
            engine.watch_values(None);
            solved
        }
        Backend::Cpu { .. } => solve_cpu_with_progress(&problem, &options, outputs, &mut report),
    };
    let label = match &backend {
        Backend::Gpu { label, .. } | Backend::Cpu { label } => label.clone(),
    };
    put_backend(backend);
    let solution = solved.map_err(js_error)?;
    let policy = solution.policy.unwrap_or_default();
    let n = solution.action_count;
    let entropy: Vec<f32> = policy
        .chunks_exact(n.max(1))
        .map(|row| {
            -row.iter()
                .map(|&p| if p > 0.0 { p * p.ln() } else { p * 0.0 })
                .sum::<f32>()
        })
        .collect();
    let out = Object::new();
    set(&out, "values", Float32Array::from(&solution.values[..]));
    set(&out, "policy", Float32Array::from(&policy[..]));
    set(&out, "entropy", Float32Array::from(&entropy[..]));
    set(&out, "actions", n as u32);
    let iterations = solution.iterations.iter().copied().max().unwrap_or(0);
    set(&out, "iterations", iterations);
    let status = Array::new();
    for s in &solution.status {
        status.push(&s.name().into());
    }
    set(&out, "status", status);
    set(&out, "seconds", solution.seconds);
    set(&out, "backend", label);
    LAST.with_borrow_mut(|last| {
        *last = Some(Solved {
            problem,
            options,
            policy,
            steps: None,
        })
    });
    Ok(out.into())
}

/// The occupancy (forward messages) of every goal's soft-optimal policy over `steps` steps
/// from `start` (a cell): the finite-horizon solve of `spec` with horizon `steps`, its
/// `D_0..D_T` summed, `[task][cell]` (expected visits; NaN on walls).
#[wasm_bindgen]
pub async fn occupancy(
    spec: String,
    walls: Vec<u8>,
    start: usize,
    steps: u32,
    progress: Function,
) -> Result<Float32Array, JsError> {
    let (problem, mut options) = parse_spec(&spec, &walls)?;
    options.horizon = Horizon::Finite(steps);
    let outputs = Outputs {
        occupancy: true,
        ..Outputs::VALUES
    };
    let starts = [start];
    let mut backend = take_backend()?;
    let mut report = reporter(&progress);
    let solved: softvi::Result<MdpSolution> = match &mut backend {
        Backend::Gpu { engine, .. } => match start_distribution(&problem, Some(&starts)) {
            Ok(d0) => {
                engine.set_checks_per_submit(checks_per_submit(&problem));
                let run = engine.solve_steps_async(&problem, &options, outputs, &d0, &mut report);
                run.await
            }
            Err(e) => Err(e),
        },
        Backend::Cpu { .. } => {
            CpuReference.solve_grid(&problem, Some(&starts), &options, outputs, &mut report)
        }
    };
    put_backend(backend);
    let occupancy = (solved.map_err(js_error)?.occupancy)
        .ok_or_else(|| JsError::new("the solve diverged: no occupancy"))?;
    let cells = problem.grid.cells();
    let per_task = occupancy.steps * cells;
    let mut visits = vec![0.0f32; problem.tasks.len() * cells];
    for (t, task) in occupancy.values.chunks_exact(per_task).enumerate() {
        for step in task.chunks_exact(cells) {
            for (v, &d) in visits[t * cells..(t + 1) * cells].iter_mut().zip(step) {
                *v += d;
            }
        }
    }
    Ok(Float32Array::from(&visits[..]))
}

/// The most host memory a solve keeping every step of a finite horizon (what sampling and
/// goal inference act with) may need, by the library's own estimate
/// ([`softvi::engine::memory::estimate_grid_bytes`]): a quarter of wasm32's 4 GiB address
/// space, so the page stays well clear of what a tab may allocate.
pub const STEP_POLICY_BUDGET: u64 = 1 << 30;

/// Makes, on first use, what the last solve's agent acts with at a finite horizon T: its
/// `pi_0..pi_{T-1}` over the world's states, by a solve of the same problem and settings that
/// keeps every step (as `softvi sample` and `softvi infer` solve), refused over
/// [`STEP_POLICY_BUDGET`]. Nothing to make for an infinite horizon.
async fn keep_steps(
    backend: &mut Backend,
    world: &GridMdp,
    progress: &Function,
) -> Result<(), JsError> {
    let asked = LAST.with_borrow(|last| {
        let last = last.as_ref().ok_or_else(|| JsError::new("solve first"))?;
        let finite = matches!(last.options.horizon, Horizon::Finite(_));
        Ok::<_, JsError>(
            (finite && last.steps.is_none()).then(|| (last.problem.clone(), last.options)),
        )
    })?;
    let Some((problem, options)) = asked else {
        return Ok(());
    };
    let horizon = options.horizon.finite_steps();
    let outputs = Outputs {
        policy: true,
        all_steps: true,
        ..Outputs::VALUES
    };
    let needed = estimate_grid_bytes(&problem, &options, outputs);
    if needed > STEP_POLICY_BUDGET {
        let e = softvi::Error::limit(
            format!(
                "the policy of every step (pi_0..pi_{}) of {} goal(s) over {} x {} cells, \
                 which sampling and goal inference act with at a finite horizon,",
                horizon - 1,
                problem.tasks.len(),
                problem.grid.width,
                problem.grid.height
            ),
            needed,
            "the page's budget",
            STEP_POLICY_BUDGET,
        );
        let e = format!("{e}: lower T or the world's size, or run softvi sample / softvi infer");
        return Err(js_error(e));
    }
    let mut report = reporter(progress);
    let solved = match backend {
        Backend::Gpu { engine, .. } => match start_distribution(&problem, None) {
            Ok(d0) => {
                engine.set_checks_per_submit(checks_per_submit(&problem));
                let run = engine.solve_steps_async(&problem, &options, outputs, &d0, &mut report);
                run.await
            }
            Err(e) => Err(e),
        },
        Backend::Cpu { .. } => {
            CpuReference.solve_grid(&problem, None, &options, outputs, &mut report)
        }
    };
    let steps = (solved.map_err(js_error)?.steps)
        .and_then(|s| s.policy)
        .ok_or_else(|| JsError::new("the solve diverged: no policy to act with"))?;
    // `[task][t][cell][action]` to `[task][t][state][action]`: every (task, t) block alike.
    let steps = world.to_states(&steps, problem.actions.count());
    LAST.with_borrow_mut(|last| {
        if let Some(last) = last {
            last.steps = Some(steps);
        }
    });
    Ok(())
}

/// `act(policy, policy_steps)` with the policy the last solve's agent acts with over `world`'s
/// states, as `softvi sample` and `softvi infer` pick it: at a finite horizon T
/// `pi_0..pi_{T-1}` `[task][t][state][action]` (T steps; [`keep_steps`] first), else the
/// stationary policy `[task][state][action]` (1 step).
fn with_acting_policy<R>(
    world: &GridMdp,
    act: impl FnOnce(&[f32], usize) -> Result<R, JsError>,
) -> Result<R, JsError> {
    LAST.with_borrow(|last| {
        let last = last.as_ref().ok_or_else(|| JsError::new("solve first"))?;
        match (last.options.horizon, &last.steps) {
            (Horizon::Finite(t), Some(steps)) => act(steps, t as usize),
            (Horizon::Finite(_), None) => Err(JsError::new("every step is not kept yet")),
            (Horizon::Infinite { .. }, _) => act(
                &world.to_states(&last.policy, last.problem.actions.count()),
                1,
            ),
        }
    })
}

/// The last solve's world as an MDP over its free cells, with `starts` (cells; `None`:
/// uniform over the free non-goal cells).
fn last_world(starts: Option<&[usize]>) -> Result<GridMdp, JsError> {
    LAST.with_borrow(|last| {
        let last = last.as_ref().ok_or_else(|| JsError::new("solve first"))?;
        GridMdp::new(&last.problem, starts).map_err(js_error)
    })
}

/// The horizon T of the last solve, if finite.
fn last_horizon() -> Option<u32> {
    LAST.with_borrow(|last| match last.as_ref()?.options.horizon {
        Horizon::Finite(t) => Some(t),
        Horizon::Infinite { .. } => None,
    })
}

/// One trajectory of task `task`'s policy (the last solve's) from `start` for at most `steps`
/// steps, drawn with `seed` as `softvi sample --start X,Y --episodes 1 --seed N` draws (slip
/// included; at a finite horizon step t acts with `pi_t`, and `steps` is cut to T, as
/// `softvi sample`'s default): the cells visited, ending at the goal when reached.
/// `progress(sweeps, residual)` reports the solve keeping every step that a finite horizon runs
/// on first use; a `false` from it stops that solve ("cancelled").
#[wasm_bindgen]
pub async fn trajectory(
    task: usize,
    start: usize,
    steps: usize,
    seed: u64,
    progress: Function,
) -> Result<Uint32Array, JsError> {
    let world = last_world(Some(&[start]))?;
    let steps = last_horizon().map_or(steps, |t| steps.min(t as usize));
    let mut backend = take_backend()?;
    let kept = keep_steps(&mut backend, &world, &progress).await;
    put_backend(backend);
    kept?;
    let samples = with_acting_policy(&world, |policy, policy_steps| {
        sample(&world.mdp, policy, policy_steps, 1, steps, seed).map_err(js_error)
    })?;
    if task >= samples.tasks {
        return Err(JsError::new(&format!(
            "task {task} is not one of {}",
            samples.tasks
        )));
    }
    let per_task = samples.steps + 1;
    let cells: Vec<u32> = samples.states[task * per_task..(task + 1) * per_task]
        .iter()
        .take_while(|&&s| s != ENDED)
        .map(|&s| world.cell_of_state[s as usize])
        .collect();
    Ok(Uint32Array::from(&cells[..]))
}

/// The posterior over the last solve's goals (uniform prior) after each step of `walk` (cells,
/// each step a transition; actions unobserved): `[step + 1][task]`, row 0 the prior, as
/// `softvi infer` computes it (`shaders/task_posterior.wgsl` on WebGPU, its CPU twin else; at
/// a finite horizon step t's likelihood is `pi_t`'s, and the walk may have at most T steps).
/// `progress` as [`trajectory`]'s.
#[wasm_bindgen]
pub async fn posterior(walk: Vec<u32>, progress: Function) -> Result<Float32Array, JsError> {
    let world = last_world(None)?;
    let mut observed = Vec::with_capacity(walk.len());
    for (i, &cell) in walk.iter().enumerate() {
        let state = *world
            .state_of_cell
            .get(cell as usize)
            .filter(|&&s| s != softvi::world::grid_mdp::NO_STATE)
            .ok_or_else(|| {
                JsError::new(&format!("step {i}: cell {cell} is a wall or off the map"))
            })?;
        observed.push(Observation {
            state: state as usize,
            label: format!("cell {cell}"),
            action: None,
            line: i + 1,
        });
    }
    let prior = vec![1.0; world.mdp.tasks];
    let mut backend = take_backend()?;
    let run = async {
        keep_steps(&mut backend, &world, &progress).await?;
        let inputs = with_acting_policy(&world, |policy, policy_steps| {
            posterior_inputs(&world.mdp, policy, policy_steps, &observed, &prior).map_err(js_error)
        })?;
        let run = match &mut backend {
            Backend::Gpu { posterior, .. } => posterior.run_async(&inputs).await,
            Backend::Cpu { .. } => Ok(task_posterior(&inputs)),
        };
        Ok::<_, JsError>((run.map_err(js_error)?, inputs))
    };
    let run = run.await;
    put_backend(backend);
    let ((rows, joint), inputs) = run?;
    check_possible(&inputs, &joint).map_err(js_error)?;
    Ok(Float32Array::from(&rows[..]))
}
