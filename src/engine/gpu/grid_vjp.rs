//! The vector-Jacobian product of a gridworld solve on the grid kernels: the grid twin of
//! [`super::MdpEngine::vjp`] and the f32 twin of [`crate::engine::cpu::mdp_vjp_cpu_at`] on the
//! grid's [`GridMdp`] (same math, same [`MdpCotangents`] and [`MdpVjp`] over the MDP's states),
//! with the transitions read from the cells' move masks instead of a CSR.
//! `shaders/grid_vjp.wgsl` forms pi, the tilt and the cotangent on Q per cell, pulls the signed
//! adjoint through the reverse moves and forms the products; the stationary adjoint
//! `u = seed + gamma (pi W)^T u` is iterated by `shaders/grid_occupancy.wgsl`'s weighted sweeps
//! (with a signed start scaled to a peak of 1) on the solves' check schedule
//! (`GpuCore::iterate`: residual checks on max |du| against tol and `RESIDUAL_FLOOR` max |u|, so
//! no sign is assumed; freezing; rate extrapolation), then `ln 0.1 / ln gamma` more sweeps
//! that shrink the floor's error tenfold. The transition probabilities' gradient is summed on
//! the host in f64 from the device's per-step cotangents on Q. Memory on the device: `O(B S A)`, plus the kept `u_t` and
//! Q cotangents `O(B T S A)` of a finite horizon, independent of the sweeps.

use bytemuck::{Pod, Zeroable};

use super::bands::band_dispatch;
use super::core::{ExtrapolateBand, ExtrapolateParams, Kernels, NOT_FROZEN, Window, invocations};
use super::grid_engine::{GridEngine, GridParams, WORKGROUP_SIZE};
use super::wait;
use crate::engine::cpu::mdp_vjp::check_vjp_inputs;
use crate::engine::cpu::{MdpCotangents, MdpVjp};
use crate::engine::layout::GridInputs;
use crate::engine::options::{Backup, Horizon, Outputs, SolveOptions};
use crate::engine::schedule::{Verdict, keep_going};
use crate::engine::solution::{Status, check_mdp_solve};
use crate::error::{Result, ensure};
use crate::world::grid_mdp::GridMdp;
use crate::world::grid_problem::GridProblem;
use crate::world::mdp::TabularMdp;

/// WGSL source of the grid VJP kernels.
pub const GRID_VJP_WGSL: &str = wgsl!(
    "shared/constants.wgsl",
    "shared/grid_params.wgsl",
    "shared/log_sum_exp.wgsl",
    "shared/policy_ties.wgsl",
    "grid_vjp.wgsl",
);

/// Uniform of `shaders/grid_vjp.wgsl`. Keep in sync with `GridVjpParams` there (size checked by
/// tests/kernel_shader_layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct GridVjpParams {
    /// Cells per row W.
    pub width: u32,
    /// Rows H.
    pub height: u32,
    /// Cells per task `H * W`.
    pub cells_per_task: u32,
    /// 32-bit words of fixed-cell bits per task.
    pub fixed_words_per_task: u32,
    /// Workgroups along x of the dispatch.
    pub dispatch_x: u32,
    /// Where the (alpha, gamma) terms `[task][cell][2]` start in the gradient array, in
    /// elements (after r_bar `[task][cell][action]`).
    pub scalars_origin: u32,
    /// Discount.
    pub gamma: f32,
    /// Slip probability in [0, 1].
    pub slip: f32,
    /// Temperature (value units).
    pub alpha: f32,
    /// `alpha * ln(2)`.
    pub alpha_ln2: f32,
    /// `log2(e) / alpha`.
    pub log2e_over_alpha: f32,
    /// `slip / |A|`.
    pub slip_share: f32,
}

/// `grid_vjp.wgsl`'s entry points.
#[derive(Clone, Copy)]
enum GridVjpStage {
    Rows { write_weights: bool },
    Pull,
    Products,
}

/// A grid batch's arrays over its cells: the maps between the MDP's states and the cells.
struct CellMap<'a> {
    world: &'a GridMdp,
    tasks: usize,
    cells: usize,
}

impl CellMap<'_> {
    /// `[block][state][inner]` (f64) to `[block][cell][inner]` (f32), 0 off the states.
    fn to_cells(&self, data: &[f64], inner: usize) -> Vec<f32> {
        let states = self.world.cell_of_state.len();
        let blocks = data.len() / (states * inner).max(1);
        let mut out = vec![0.0; blocks * self.cells * inner];
        for b in 0..blocks {
            for (s, &c) in self.world.cell_of_state.iter().enumerate() {
                for i in 0..inner {
                    out[(b * self.cells + c as usize) * inner + i] =
                        data[(b * states + s) * inner + i] as f32;
                }
            }
        }
        out
    }

    /// The state of `cell`, if free.
    fn state(&self, cell: usize) -> Option<usize> {
        let s = self.world.state_of_cell[cell];
        (s != crate::world::grid_mdp::NO_STATE).then_some(s as usize)
    }
}

/// Whether the grid kernels' own solve can run `mdp`, an MDP over the states of `problem`'s
/// [`GridMdp`] (what [`GridEngine::vjp`] needs without the forward values, and always for a
/// finite horizon): a reward per cell (`r(s,a) + cost(a)` the same for every action, within
/// 1e-9 relative) and terminal values 0; else an error naming the first state that breaks it.
pub fn check_grid_solvable(problem: &GridProblem, mdp: &TabularMdp) -> Result<()> {
    let cost = problem.move_cost.per_action(&problem.actions);
    let (s_n, n) = (mdp.states, mdp.actions);
    ensure!(
        cost.len() == n,
        "the MDP has {n} actions, the grid batch {}",
        cost.len()
    );
    for (i, r) in mdp.reward.chunks_exact(n).enumerate() {
        let cell_reward = r[0] + cost[0];
        let same = (0..n).all(|a| {
            let x = r[a] + cost[a];
            x == cell_reward || (x - cell_reward).abs() <= 1e-9 * cell_reward.abs().max(1.0)
        });
        ensure!(
            same || mdp.terminal[i],
            "task {} state {}: the reward depends on the action beyond the step cost, so the \
             grid kernels cannot solve it; give the solve's values (infinite horizon) or \
             differentiate through the MDP",
            i / s_n,
            i % s_n
        );
    }
    ensure!(
        mdp.terminal_value.iter().all(|&x| x == 0.0),
        "the grid kernels' solve holds goals at 0; give the solve's values (infinite \
         horizon) or differentiate through the MDP for other terminal values"
    );
    Ok(())
}

impl GridEngine {
    /// The VJP of the solve of `mdp`, the tabular MDP of the grid batch `problem` (its
    /// [`GridMdp`]'s transitions and terminal states, any rewards `[task][state][action]` and
    /// terminal values), at `options`, on the grid kernels in f32 (see
    /// [`crate::engine::cpu::mdp_vjp_cpu_at`] for the cotangents' layouts over the states and
    /// the math); sums in f64 on the host. `values`: the fixed point V `[task][state]` of a solve
    /// of the same inputs (infinite horizon only) to take the products at; without it the
    /// engine solves the grid batch first (a finite horizon always does, keeping every step's
    /// V), which needs a reward per cell (`r(s,a) + cost(a)` the same for every action) and
    /// terminal values 0. `sweeps` counts the adjoint's sweeps (T for a finite horizon). Every
    /// array is bound whole: the batch runs in chunks of tasks whose `[task][cell][action]`
    /// rows (16 bytes each) fit one storage binding; a single task that does not fit is refused
    /// with `LimitExceeded`.
    pub fn vjp(
        &mut self,
        problem: &GridProblem,
        mdp: &TabularMdp,
        options: &SolveOptions,
        cotangents: &MdpCotangents,
        values: Option<&[f64]>,
    ) -> Result<MdpVjp> {
        check_mdp_solve(mdp, options)?;
        let steps = check_vjp_inputs(mdp, options, cotangents, values)?;
        ensure!(
            !(options.backup == Backup::Optimistic && options.alpha == 0.0),
            "the optimistic backup's gradient needs alpha > 0"
        );
        let world = GridMdp::new(problem, None)?;
        let own = &world.mdp;
        ensure!(
            mdp.states == own.states
                && mdp.actions == own.actions
                && mdp.transitions == own.transitions,
            "the MDP's transitions are not the grid batch's (the grid kernels run the map's \
             moves and slip; differentiate other transitions through the MDP)"
        );
        ensure!(
            mdp.tasks == problem.tasks.len() && mdp.terminal == own.terminal,
            "the MDP's {} tasks and terminal states are not the grid batch's {} tasks and goals",
            mdp.tasks,
            problem.tasks.len()
        );
        // Per task: the largest bound array (the rows, 16 bytes an entry), and the kept
        // cotangents on Q of a finite horizon.
        let (cells, a_n) = (problem.grid.cells() as u64, mdp.actions as u64);
        let bound = cells * a_n * 16;
        let kept = options.horizon.finite_steps() as u64 * cells * a_n * 4;
        let core = &self.core;
        core.ensure_bindable("the grid VJP's arrays of one task", bound)?;
        core.ensure_buffer("the Q cotangents of every step of one task", kept)?;
        let per_chunk = (core.max_binding / bound)
            .min(core.max_buffer / kept.max(1))
            .clamp(1, mdp.tasks as u64) as usize;
        if per_chunk == mdp.tasks {
            return self.vjp_chunk(problem, mdp, options, cotangents, (values, steps, &world));
        }
        // Chunks of whole tasks: each its own solve and adjoint; the tasks share only the
        // transitions, whose gradient is summed.
        let mut out = MdpVjp {
            reward: Vec::with_capacity(mdp.reward.len()),
            terminal_value: Vec::with_capacity(mdp.terminal_value.len()),
            probs: vec![0.0; mdp.nonzeros()],
            alpha: 0.0,
            gamma: 0.0,
            sweeps: 0,
        };
        let cut = |x: &Option<Vec<f64>>, range: &std::ops::Range<usize>| {
            x.as_ref().map(|x| {
                let per = x.len() / mdp.tasks;
                x[range.start * per..range.end * per].to_vec()
            })
        };
        for start in (0..mdp.tasks).step_by(per_chunk) {
            let range = start..(start + per_chunk).min(mdp.tasks);
            let (part, batch) = (mdp.shard(range.clone())?, problem.shard(range.clone())?);
            let cot = MdpCotangents {
                values: cut(&cotangents.values, &range),
                q: cut(&cotangents.q, &range),
                policy: cut(&cotangents.policy, &range),
                all_steps: cotangents.all_steps,
            };
            let s_n = mdp.states;
            let given = values.map(|v| v[range.start * s_n..range.end * s_n].to_vec());
            let world = GridMdp::new(&batch, None)?;
            let asked = (given.as_deref(), steps, &world);
            let got = self.vjp_chunk(&batch, &part, options, &cot, asked)?;
            out.reward.extend(got.reward);
            out.terminal_value.extend(got.terminal_value);
            for (total, x) in out.probs.iter_mut().zip(got.probs) {
                *total += x;
            }
            out.alpha += got.alpha;
            out.gamma += got.gamma;
            out.sweeps = out.sweeps.max(got.sweeps);
        }
        Ok(out)
    }

    /// [`GridEngine::vjp`] of a batch whose arrays fit (checked inputs; `steps` of the
    /// horizon; `world` the batch's [`GridMdp`]).
    fn vjp_chunk(
        &mut self,
        problem: &GridProblem,
        mdp: &TabularMdp,
        options: &SolveOptions,
        cotangents: &MdpCotangents,
        (values, steps, world): (Option<&[f64]>, usize, &GridMdp),
    ) -> Result<MdpVjp> {
        let inputs = GridInputs::new(problem, options);
        let map = CellMap {
            world,
            tasks: mdp.tasks,
            cells: inputs.cells(),
        };
        // V_0..V_T (finite) or the fixed point, `[t][task][cell]`.
        let forward = self.forward_cells(problem, mdp, options, &map, values)?;
        self.vjp_cells(&inputs, mdp, options, cotangents, (&map, &forward, steps))
    }

    /// V_0..V_T of a finite horizon or the fixed point, `[t][task][cell]` in f32: `given` (over
    /// the states), else a solve of the grid batch with `mdp`'s rewards. Terminal cells hold
    /// their terminal value, walls 0 (no move reads them).
    fn forward_cells(
        &mut self,
        problem: &GridProblem,
        mdp: &TabularMdp,
        options: &SolveOptions,
        map: &CellMap,
        given: Option<&[f64]>,
    ) -> Result<Vec<Vec<f32>>> {
        let (b, s_n) = (mdp.tasks, mdp.states);
        let finite = matches!(options.horizon, Horizon::Finite(_));
        let with_terminal = |mut v: Vec<f32>| -> Vec<f32> {
            for task in 0..b {
                for s in (0..s_n).filter(|&s| mdp.terminal[task * s_n + s]) {
                    let c = map.world.cell_of_state[s] as usize;
                    v[task * map.cells + c] = mdp.terminal_value[task * s_n + s] as f32;
                }
            }
            v.iter_mut().filter(|x| x.is_nan()).for_each(|x| *x = 0.0);
            v
        };
        if let (Some(given), false) = (given, finite) {
            return Ok(vec![with_terminal(map.to_cells(given, 1))]);
        }
        check_grid_solvable(problem, mdp)?;
        let batch = map.world.problem_for(problem, mdp)?;
        let status_of = |status: &[Status]| -> Result<()> {
            if let Some(task) = status
                .iter()
                .position(|s| !matches!(s, Status::Converged | Status::Horizon))
            {
                ensure!(
                    false,
                    "the forward solve of task {task} ended {}, so it has no gradient",
                    status[task].name()
                );
            }
            Ok(())
        };
        if !finite {
            let solved = self.solve(&batch, options, Outputs::default())?;
            status_of(&solved.status)?;
            return Ok(vec![with_terminal(solved.values)]);
        }
        let outputs = Outputs {
            all_steps: true,
            ..Outputs::default()
        };
        let start = vec![0.0f32; b * map.cells];
        let solved = self.solve_steps(&batch, options, outputs, &start, &mut keep_going)?;
        status_of(&solved.solution.status)?;
        let steps = solved.steps.ok_or_else(|| {
            crate::error::Error::Gpu("the grid solve kept no steps for the VJP".into())
        })?;
        let t_n = steps.values.len() / (b * map.cells);
        Ok((0..t_n)
            .map(|t| {
                let v = (0..b * map.cells)
                    .map(|i| {
                        let (task, c) = (i / map.cells, i % map.cells);
                        steps.values[(task * t_n + t) * map.cells + c]
                    })
                    .collect();
                with_terminal(v)
            })
            .collect())
    }

    /// The VJP over the cells at the forward values `forward` `[t][task][cell]`.
    fn vjp_cells(
        &mut self,
        inputs: &GridInputs,
        mdp: &TabularMdp,
        options: &SolveOptions,
        cotangents: &MdpCotangents,
        (map, forward, steps): (&CellMap, &[Vec<f32>], usize),
    ) -> Result<MdpVjp> {
        let (b, s_n, a_n, cells) = (mdp.tasks, mdp.states, mdp.actions, map.cells);
        // The cotangent `array` of step t over the cells, `inner` per state (NaN as 0).
        let at = |array: &Option<Vec<f64>>, t: usize, inner: usize, len: usize| -> Vec<f64> {
            match array {
                Some(x) if cotangents.all_steps || t == 0 => {
                    let per = s_n * inner;
                    let per_task = x.len() / b;
                    (0..b)
                        .flat_map(|task| &x[task * per_task + t * per..][..per])
                        .map(|&v| if v.is_nan() { 0.0 } else { v })
                        .collect()
                }
                _ => vec![0.0; len],
            }
        };
        let cot_rows = |t: usize| -> Vec<[f32; 4]> {
            let q = map.to_cells(&at(&cotangents.q, t, a_n, b * s_n * a_n), a_n);
            let pi = map.to_cells(&at(&cotangents.policy, t, a_n, b * s_n * a_n), a_n);
            q.into_iter()
                .zip(pi)
                .map(|(q, p)| [q, p, 0.0, 0.0])
                .collect()
        };
        let cot_values = |t: usize| map.to_cells(&at(&cotangents.values, t, 1, b * s_n), 1);
        let run = GridVjpRun::new(self, inputs, mdp, map)?;
        let mut u_steps: Vec<Vec<f32>> = Vec::new();
        let mut g_steps: Vec<Vec<f32>> = Vec::new();
        let sweeps = match options.horizon {
            Horizon::Finite(_) => {
                let usage = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
                let u_bytes = (steps as u64 + 1) * run.v_bytes;
                self.core
                    .ensure_buffer("the adjoint of every step", u_bytes)?;
                let kept_u = self.core.buffer("softvi.grid_vjp_steps", u_bytes, usage);
                let g_bytes = (steps as u64 * run.r_bar_bytes).max(4);
                let kept_g = self.core.buffer("softvi.grid_vjp_step_q", g_bytes, usage);
                let q = self.core.queue.clone();
                q.write_buffer(&run.u[0], 0, bytemuck::cast_slice(&cot_values(0)));
                for t in 0..steps {
                    let cot = cot_rows(t);
                    let step = (forward[t + 1].as_slice(), cot.as_slice());
                    run.step(self, t, step, &cot_values(t + 1), (&kept_u, &kept_g));
                }
                let mut encoder = self.core.device.create_command_encoder(&Default::default());
                let last = run.v_bytes * steps as u64;
                encoder.copy_buffer_to_buffer(&run.u[steps % 2], 0, &kept_u, last, run.v_bytes);
                q.submit([encoder.finish()]);
                let all = wait(self.core.read_f32(&kept_u, 0, u_bytes))?;
                u_steps = all.chunks_exact(b * cells).map(<[f32]>::to_vec).collect();
                let g = wait(
                    self.core
                        .read_f32(&kept_g, 0, steps as u64 * run.r_bar_bytes),
                )?;
                g_steps = g
                    .chunks_exact(b * cells * a_n)
                    .map(<[f32]>::to_vec)
                    .collect();
                steps as u32
            }
            Horizon::Infinite { .. } => {
                let (u, sweeps) =
                    run.stationary(self, &forward[0], &cot_rows(0), &cot_values(0), options)?;
                u_steps.push(u);
                sweeps
            }
        };
        let grads = wait(self.core.read_f32(&run.grads, 0, run.grads_bytes))?;
        let rows_len = b * cells * a_n;
        if g_steps.is_empty() {
            // Stationary: the cotangent on Q is r_bar itself.
            g_steps.push(grads[..rows_len].to_vec());
        }
        let mut out = MdpVjp {
            reward: vec![0.0; b * s_n * a_n],
            terminal_value: vec![0.0; b * s_n],
            probs: vec![0.0; mdp.nonzeros()],
            alpha: 0.0,
            gamma: 0.0,
            sweeps,
        };
        for (t, g) in g_steps.iter().enumerate() {
            let v_next = &forward[(t + 1).min(forward.len() - 1)];
            probs_gradient(mdp, options, map, (g, v_next), &mut out.probs);
            for task in 0..b {
                for c in 0..cells {
                    let Some(s) = map.state(c) else { continue };
                    for a in 0..a_n {
                        out.reward[(task * s_n + s) * a_n + a] +=
                            g[(task * cells + c) * a_n + a] as f64;
                    }
                }
            }
        }
        for u in &u_steps {
            for task in 0..b {
                for s in (0..s_n).filter(|&s| mdp.terminal[task * s_n + s]) {
                    let c = map.world.cell_of_state[s] as usize;
                    out.terminal_value[task * s_n + s] += u[task * cells + c] as f64;
                }
            }
        }
        let scalars = &grads[rows_len..];
        out.alpha = scalars.iter().step_by(2).map(|&x| x as f64).sum();
        out.gamma = scalars.iter().skip(1).step_by(2).map(|&x| x as f64).sum();
        Ok(out)
    }
}

/// Adds to `probs` (`[nnz]` in CSR order) the gradient of one step's Q through the stored
/// probabilities, `g(s,a) dQ(s,a)/dP(s'|s,a)` with `g` the step's cotangent on Q
/// `[task][cell][action]` and `v_next` `[task][cell]` the values Q was formed from (f64 sums
/// of the device's f32 cotangents, the reference's `Step::adjoint` products).
fn probs_gradient(
    mdp: &TabularMdp,
    options: &SolveOptions,
    map: &CellMap,
    (g, v_next): (&[f32], &[f32]),
    probs: &mut [f64],
) {
    let (s_n, a_n, cells) = (mdp.states, mdp.actions, map.cells);
    let (alpha, gamma) = (options.alpha, options.gamma);
    let optimistic = options.backup == Backup::Optimistic;
    for task in 0..map.tasks {
        let v_of = |j: usize| v_next[task * cells + map.world.cell_of_state[j] as usize] as f64;
        for s in 0..s_n {
            let c = map.world.cell_of_state[s] as usize;
            for a in 0..a_n {
                let g = g[(task * cells + c) * a_n + a] as f64;
                if g == 0.0 {
                    continue;
                }
                let row = s * a_n + a;
                let entries = mdp.csr().indptr[row] as usize..mdp.csr().indptr[row + 1] as usize;
                // The optimistic backup's tilt alpha log sum P exp(gamma V' / alpha).
                let tilt = if optimistic {
                    let top = (entries.clone())
                        .map(|k| v_of(mdp.csr().indices[k] as usize))
                        .fold(f64::NEG_INFINITY, f64::max);
                    let mass: f64 = (entries.clone())
                        .map(|k| {
                            let vj = v_of(mdp.csr().indices[k] as usize);
                            mdp.csr().probs[k] * (gamma * (vj - top) / alpha).exp()
                        })
                        .sum();
                    gamma * top + alpha * mass.ln()
                } else {
                    0.0
                };
                for k in entries {
                    let vj = v_of(mdp.csr().indices[k] as usize);
                    if vj == f64::NEG_INFINITY {
                        continue;
                    }
                    probs[k] += g * match optimistic {
                        true => alpha * ((gamma * vj - tilt) / alpha).exp(),
                        false => gamma * vj,
                    };
                }
            }
        }
    }
}

/// The device arrays of one grid VJP (pooled) and its bind groups.
struct GridVjpRun {
    tasks: usize,
    cells: usize,
    actions: usize,
    v_bytes: u64,
    /// Bytes of r_bar `[task][cell][action]` at the front of `grads`.
    r_bar_bytes: u64,
    dispatch: [u32; 3],
    /// `grid_occupancy`'s uniform for the stationary sweeps.
    occupancy_params: GridParams,
    optimistic: bool,
    hard_max: bool,
    /// V (V_{t+1}) `[task][cell]`.
    v: wgpu::Buffer,
    /// `(c_Q, c_pi, -, -)` in, `(pi, tilt, g0, -)` out, `[task][cell][action]`.
    rows: wgpu::Buffer,
    /// The adjoint ping-pong pair `[task][cell]`.
    u: [wgpu::Buffer; 2],
    /// r_bar `[task][cell][action]`, then the (alpha, gamma) terms `[task][cell][2]`.
    grads: wgpu::Buffer,
    grads_bytes: u64,
    /// Each move's whole weight `[task][cell][move]`, for the stationary sweeps.
    weights: wgpu::Buffer,
    masks: wgpu::Buffer,
    fixed: wgpu::Buffer,
    /// `rows` and `products` reading u[p]; `pull` from u[p] into u[1 - p].
    forward: [wgpu::BindGroup; 2],
    pull: [wgpu::BindGroup; 2],
}

impl GridVjpRun {
    /// Uploads the grid and the rewards and clears the gradients.
    fn new(
        engine: &mut GridEngine,
        inputs: &GridInputs,
        mdp: &TabularMdp,
        map: &CellMap,
    ) -> Result<Self> {
        use wgpu::BufferUsages as U;
        let (b, cells, a_n) = (mdp.tasks, map.cells, mdp.actions);
        let core = &mut engine.core;
        let (dispatch, _) = band_dispatch(cells, b, core.max_workgroups)?;
        let (alpha_ln2, log2e_over_alpha) = super::temperature_uniforms(inputs.alpha);
        let rows_len = b * cells * a_n;
        let uniform = GridVjpParams {
            width: inputs.width as u32,
            height: inputs.height as u32,
            cells_per_task: cells as u32,
            fixed_words_per_task: inputs.fixed_words_per_task() as u32,
            dispatch_x: dispatch[0].max(1),
            scalars_origin: rows_len as u32,
            gamma: inputs.gamma as f32,
            slip: inputs.slip as f32,
            alpha: inputs.alpha as f32,
            alpha_ln2,
            log2e_over_alpha,
            slip_share: (inputs.slip / a_n as f64) as f32,
        };
        let params = core.uniforms("softvi.grid_vjp_params", &[uniform]);
        let upload = |core: &mut super::core::GpuCore, label, bytes: &[u8]| {
            let x = core.buffer(label, (bytes.len() as u64).max(4), U::STORAGE | U::COPY_DST);
            core.queue.write_buffer(&x, 0, bytes);
            x
        };
        let masks = upload(
            core,
            "softvi.move_masks",
            bytemuck::cast_slice(&inputs.move_mask),
        );
        let fixed_bits = inputs.fixed_bits();
        let fixed = upload(core, "softvi.fixed_bits", bytemuck::cast_slice(&fixed_bits));
        let reward = map.to_cells(&mdp.reward, a_n);
        let reward = upload(core, "softvi.reward", bytemuck::cast_slice(&reward));
        let usage = U::STORAGE | U::COPY_SRC | U::COPY_DST;
        let v_bytes = (b * cells * 4) as u64;
        let v = core.buffer("softvi.vjp_v", v_bytes, usage);
        let rows = core.buffer("softvi.vjp_rows", v_bytes * a_n as u64 * 4, usage);
        let u = [
            core.buffer("softvi.vjp_u_a", v_bytes, usage),
            core.buffer("softvi.vjp_u_b", v_bytes, usage),
        ];
        let r_bar_bytes = v_bytes * a_n as u64;
        let grads_bytes = v_bytes * (a_n as u64 + 2);
        let grads = core.buffer("softvi.vjp_grads", grads_bytes, usage);
        let weights = core.buffer("softvi.vjp_weights", r_bar_bytes, usage);
        let mut encoder = core.device.create_command_encoder(&Default::default());
        encoder.clear_buffer(&grads, 0, None);
        core.queue.submit([encoder.finish()]);
        let layout = &engine.grid_vjp.group_layout;
        let group = |label, u_in: &wgpu::Buffer, out: &wgpu::Buffer| {
            core.bind_group(
                label,
                layout,
                [
                    params.bind(0),
                    masks.as_entire_binding(),
                    fixed.as_entire_binding(),
                    reward.as_entire_binding(),
                    v.as_entire_binding(),
                    rows.as_entire_binding(),
                    u_in.as_entire_binding(),
                    super::core::bind(out, 0, out.size()),
                    weights.as_entire_binding(),
                ],
            )
        };
        let forward = [
            group("softvi.grid_vjp", &u[0], &grads),
            group("softvi.grid_vjp", &u[1], &grads),
        ];
        let pull = [
            group("softvi.grid_vjp_pull", &u[0], &u[1]),
            group("softvi.grid_vjp_pull", &u[1], &u[0]),
        ];
        let mut step_cost = [[0.0f32; 4]; 3];
        for a in 0..a_n {
            step_cost[a / 4][a % 4] = inputs.step_cost[a] as f32;
        }
        let occupancy_params = GridParams {
            width: inputs.width as u32,
            height: inputs.height as u32,
            cells_per_task: cells as u32,
            fixed_words_per_task: inputs.fixed_words_per_task() as u32,
            dispatch_x: dispatch[0].max(1),
            groups_per_task: (cells as u32).div_ceil(WORKGROUP_SIZE),
            gamma: inputs.gamma as f32,
            slip: inputs.slip as f32,
            alpha_ln2,
            log2e_over_alpha,
            slip_share: uniform.slip_share,
            step_cost,
            ..Default::default()
        };
        Ok(Self {
            tasks: b,
            cells,
            actions: a_n,
            v_bytes,
            r_bar_bytes,
            dispatch,
            occupancy_params,
            optimistic: inputs.backup == Backup::Optimistic,
            hard_max: inputs.alpha == 0.0,
            v,
            rows,
            u,
            grads,
            grads_bytes,
            weights,
            masks,
            fixed,
            forward,
            pull,
        })
    }

    /// The `override` constants of the grid's action set (as `GridEngine`'s pipelines).
    fn actions(&self) -> [(&'static str, f64); 2] {
        [
            ("CONNECTIVITY", if self.actions >= 8 { 8.0 } else { 4.0 }),
            ("STAY", if self.actions % 4 == 1 { 1.0 } else { 0.0 }),
        ]
    }

    /// The pipeline of `stage`.
    fn pipeline(&self, engine: &mut GridEngine, stage: GridVjpStage) -> wgpu::ComputePipeline {
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let (entry, write_weights) = match stage {
            GridVjpStage::Rows { write_weights } => ("grid_vjp_rows", write_weights),
            GridVjpStage::Pull => ("grid_vjp_pull", false),
            GridVjpStage::Products => ("grid_vjp_products", false),
        };
        let [connectivity, stay] = self.actions();
        let constants = [
            connectivity,
            stay,
            ("OPTIMISTIC", flag(self.optimistic)),
            ("HARD_MAX", flag(self.hard_max)),
            ("WRITE_WEIGHTS", flag(write_weights)),
        ];
        engine.core.pipeline(&engine.grid_vjp, entry, &constants)
    }

    /// Uploads V and the cotangents on Q and pi and records `rows` (writing the moves'
    /// weights with `write_weights`), then `products` of u[p] when asked.
    fn rows_and_products(
        &self,
        engine: &mut GridEngine,
        encoder: &mut wgpu::CommandEncoder,
        (v, cot_rows): (&[f32], &[[f32; 4]]),
        (write_weights, products): (bool, Option<usize>),
    ) {
        let q = &engine.core.queue;
        q.write_buffer(&self.v, 0, bytemuck::cast_slice(v));
        q.write_buffer(&self.rows, 0, bytemuck::cast_slice(cot_rows));
        let rows = self.pipeline(engine, GridVjpStage::Rows { write_weights });
        engine
            .core
            .dispatch(encoder, &rows, &self.forward[0], self.dispatch);
        if let Some(p) = products {
            let products = self.pipeline(engine, GridVjpStage::Products);
            engine
                .core
                .dispatch(encoder, &products, &self.forward[p], self.dispatch);
        }
    }

    /// Finite-horizon step `t`, u_t in `u[t % 2]`: the products of u_t at V_{t+1} (`v`), and
    /// u_{t+1} = `c_next` + gamma W_t^T (g0_t + pi_t u_t) into the other buffer; u_t is copied
    /// to slot t of `kept.0` (`[t][task][cell]`) and the step's cotangent on Q (r_bar, then
    /// cleared) to slot t of `kept.1` (`[t][task][cell][action]`).
    fn step(
        &self,
        engine: &mut GridEngine,
        t: usize,
        (v, cot_rows): (&[f32], &[[f32; 4]]),
        c_next: &[f32],
        (kept_u, kept_g): (&wgpu::Buffer, &wgpu::Buffer),
    ) {
        let p = t % 2;
        let q = engine.core.queue.clone();
        q.write_buffer(&self.u[1 - p], 0, bytemuck::cast_slice(c_next));
        let device = engine.core.device.clone();
        let mut encoder = device.create_command_encoder(&Default::default());
        self.rows_and_products(engine, &mut encoder, (v, cot_rows), (false, Some(p)));
        let pull = self.pipeline(engine, GridVjpStage::Pull);
        engine
            .core
            .dispatch(&mut encoder, &pull, &self.pull[p], self.dispatch);
        let slot = self.v_bytes * t as u64;
        encoder.copy_buffer_to_buffer(&self.u[p], 0, kept_u, slot, self.v_bytes);
        let g_slot = self.r_bar_bytes * t as u64;
        encoder.copy_buffer_to_buffer(&self.grads, 0, kept_g, g_slot, self.r_bar_bytes);
        encoder.clear_buffer(&self.grads, 0, Some(self.r_bar_bytes));
        q.submit([encoder.finish()]);
    }

    /// The stationary adjoint at the fixed point `v`: its seed `c_V + gamma W^T g0` by one
    /// pull from u = 0 (after `rows` wrote the moves' weights), then `grid_occupancy`'s
    /// weighted sweeps from it on the solves' check schedule (checks and freezing on the GPU,
    /// rate extrapolation), each task's seed scaled to a peak of 1 so that `options`' tol
    /// is relative to it; then the polishing sweeps and the products. Returns u
    /// `[task][cell]` and the sweeps.
    fn stationary(
        &self,
        engine: &mut GridEngine,
        v: &[f32],
        cot_rows: &[[f32; 4]],
        c_v: &[f32],
        options: &SolveOptions,
    ) -> Result<(Vec<f32>, u32)> {
        use wgpu::BufferUsages as U;
        let (b, cells, v_bytes) = (self.tasks, self.cells, self.v_bytes);
        let q = engine.core.queue.clone();
        q.write_buffer(
            &self.u[0],
            0,
            bytemuck::cast_slice(&vec![0.0f32; b * cells]),
        );
        q.write_buffer(&self.u[1], 0, bytemuck::cast_slice(c_v));
        let device = engine.core.device.clone();
        let mut encoder = device.create_command_encoder(&Default::default());
        self.rows_and_products(engine, &mut encoder, (v, cot_rows), (true, None));
        let pull = self.pipeline(engine, GridVjpStage::Pull);
        engine
            .core
            .dispatch(&mut encoder, &pull, &self.pull[0], self.dispatch);
        q.submit([encoder.finish()]);
        // The seed, scaled per task to a peak of 1 (an all-zero seed keeps scale 1).
        let mut seed = wait(engine.core.read_f32(&self.u[1], 0, v_bytes))?;
        let scales: Vec<f32> = (seed.chunks_exact_mut(cells))
            .map(|task| {
                let peak = task.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                let scale = if peak > 0.0 && peak.is_finite() {
                    peak
                } else {
                    1.0
                };
                task.iter_mut().for_each(|x| *x /= scale);
                scale
            })
            .collect();
        let core = &mut engine.core;
        let start = core.buffer("softvi.vjp_seed", v_bytes, U::STORAGE | U::COPY_DST);
        q.write_buffer(&start, 0, bytemuck::cast_slice(&seed));
        q.write_buffer(&self.u[0], 0, bytemuck::cast_slice(&seed));
        let checks = core.checks(
            b,
            self.occupancy_params.groups_per_task,
            &[self.dispatch],
            options,
            &[],
        )?;
        let uniforms = core.uniforms("softvi.grid_vjp_occupancy_params", &[self.occupancy_params]);
        let group = |p: usize| {
            core.bind_group(
                "softvi.grid_occupancy",
                &engine.grid_occupancy.group_layout,
                [
                    uniforms.bind(0),
                    self.masks.as_entire_binding(),
                    self.fixed.as_entire_binding(),
                    // `policy`: each move's whole weight (WEIGHTED).
                    self.weights.as_entire_binding(),
                    self.u[p].as_entire_binding(),
                    self.u[1 - p].as_entire_binding(),
                    checks.partials.as_entire_binding(),
                    start.as_entire_binding(),
                    checks.frozen.as_entire_binding(),
                ],
            )
        };
        let groups = [[group(0), group(1)]];
        // The jump and its rollback over every cell (none fixed: u is iterated everywhere;
        // walls stay 0, nothing flows into them).
        let wpt = cells.div_ceil(32);
        let no_fixed = core.buffer(
            "softvi.no_fixed_bits",
            (b * wpt * 4) as u64,
            U::STORAGE | U::COPY_DST,
        );
        let backup = core.buffer("softvi.vjp_backup", v_bytes, U::STORAGE);
        let mut encoder = core.device.create_command_encoder(&Default::default());
        encoder.clear_buffer(&no_fixed, 0, None);
        q.submit([encoder.finish()]);
        let whole = |bytes: u64| Window {
            origin: 0,
            offset: 0,
            size: bytes,
        };
        let band = ExtrapolateBand {
            params: ExtrapolateParams {
                values_per_task: cells as u32,
                count: cells as u32,
                dispatch_x: self.dispatch[0].max(1),
                invocations: invocations(self.dispatch),
                fixed_words_per_task: wpt as u32,
                ..Default::default()
            },
            fixed: whole((b * wpt * 4) as u64),
            prev: whole(v_bytes),
            values: whole(v_bytes),
        };
        let extrapolate_groups = match options.uses_extrapolation() {
            true => core.extrapolate_groups(
                "softvi.vjp_extrapolate_params",
                &[band],
                &no_fixed,
                &self.u,
                &backup,
                &checks.extrapolation,
            ),
            false => Vec::new(),
        };
        let [connectivity, stay] = self.actions();
        let sweep_with = |engine: &mut GridEngine, residual: bool| {
            let constants = [
                connectivity,
                stay,
                ("ADD_START", 1.0),
                ("WEIGHTED", 1.0),
                ("WRITE_RESIDUAL", if residual { 1.0 } else { 0.0 }),
            ];
            (engine.core).pipeline(&engine.grid_occupancy, "grid_occupancy", &constants)
        };
        let sweep = sweep_with(engine, false);
        let sweep_checked = sweep_with(engine, true);
        let extrapolate = engine.core.extrapolate_pipeline.clone();
        let kernels = Kernels {
            sweep: &sweep,
            sweep_checked: &sweep_checked,
            extrapolate: &extrapolate,
            sweep_groups: &groups,
            extrapolate_groups: &extrapolate_groups,
            keep_steps: None,
        };
        let mut record = |encoder: &mut wgpu::CommandEncoder, step| {
            kernels.record(encoder, &checks, step);
        };
        let core = &mut engine.core;
        let run = wait(core.iterate(&checks, options, &mut record, &mut keep_going))?;
        match &run.outcomes.verdict {
            Verdict::Converged => {}
            Verdict::Diverged(tasks) => {
                ensure!(
                    false,
                    "the GPU adjoint of tasks {tasks:?} grew without bound"
                )
            }
            Verdict::Continue => {
                let max_iters = match options.horizon {
                    Horizon::Infinite { max_iters, .. } => max_iters,
                    Horizon::Finite(t) => t,
                };
                ensure!(
                    false,
                    "the GPU adjoint did not settle within max_iters = {max_iters} sweeps"
                )
            }
        }
        // As MdpEngine::vjp: the checks stop a task at f32's floor (a sweep changing u by
        // 1e-6 of max |u|); every task then runs the sweeps that shrink that error tenfold
        // (ln 0.1 / ln gamma, at most 4,096).
        let polish = ((0.1f64.ln() / options.gamma.ln()).ceil() as u32).clamp(1, 4096);
        q.write_buffer(
            &checks.frozen,
            0,
            bytemuck::cast_slice(&vec![NOT_FROZEN; b]),
        );
        let mut encoder = core.device.create_command_encoder(&Default::default());
        for i in 0..polish {
            let parity = ((run.sweeps + i) % 2) as usize;
            core.dispatch(&mut encoder, &sweep, &groups[0][parity], self.dispatch);
        }
        q.submit([encoder.finish()]);
        let sweeps = run.sweeps + polish;
        // u at its scale, where the products read it.
        let last = (sweeps % 2) as usize;
        let mut u = wait(core.read_f32(&self.u[last], 0, v_bytes))?;
        for (task, scale) in u.chunks_exact_mut(cells).zip(&scales) {
            task.iter_mut().for_each(|x| *x *= scale);
        }
        q.write_buffer(&self.u[last], 0, bytemuck::cast_slice(&u));
        let mut encoder = core.device.create_command_encoder(&Default::default());
        let products = self.pipeline(engine, GridVjpStage::Products);
        engine
            .core
            .dispatch(&mut encoder, &products, &self.forward[last], self.dispatch);
        q.submit([encoder.finish()]);
        Ok((u, sweeps))
    }
}
