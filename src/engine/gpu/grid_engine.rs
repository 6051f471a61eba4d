//! The GPU path for gridworlds: pipelines for `shaders/grid_backup.wgsl` and
//! `shaders/residual_reduce.wgsl`, built once per engine, and the solve driver that records
//! many sweeps per submission and checks convergence on the GPU.

use crate::engine::Instant;
use std::ops::Range;

use crate::error::{Context, Error, Result, ensure, ensure_limit};
use bytemuck::{Pod, Zeroable};

use super::bands::{Band, BandLimits, band_dispatch, plan_bands};
use super::chunks::{ChunkResult, solve_in_chunks};
use super::context::GpuContext;
use super::core::{
    Checks, EngineOptions, ExtrapolateBand, ExtrapolateParams, GpuCore, Iteration, Kernels, Shader,
    Step, StepCopies, Uniforms, WINDOW_SLACK, Window, bind, invocations, storage, window,
};
use super::forward::{BandDispatch, ForwardPass, PairDispatch, record_forward};
use crate::engine::layout::GridInputs;
use crate::engine::options::{Backup, Horizon, Method, Outputs, SolveOptions};
use crate::engine::schedule::{OnProgress, Verdict, keep_going, with_unbounded};
use crate::engine::solution::{MdpSolution, Solution};
use crate::engine::warm_start::grid_start_values_for;
use crate::world::grid_mdp::GridMdp;
use crate::world::grid_problem::GridProblem;
use crate::world::mdp::TabularMdp;

/// WGSL source of the backup and policy kernels.
pub const GRID_BACKUP_WGSL: &str = wgsl!(
    "shared/constants.wgsl",
    "shared/grid_params.wgsl",
    "shared/residual_stats.wgsl",
    "shared/log_sum_exp.wgsl",
    "shared/policy_ties.wgsl",
    "grid_backup.wgsl",
);
/// WGSL source of the forward (occupancy) kernel.
pub const GRID_OCCUPANCY_WGSL: &str = wgsl!(
    "shared/constants.wgsl",
    "shared/grid_params.wgsl",
    "shared/residual_stats.wgsl",
    "grid_occupancy.wgsl",
);

/// Invocations (quads) per workgroup of the grid kernels. Same as `WORKGROUP_SIZE` in the
/// shader.
pub const WORKGROUP_SIZE: u32 = 64;
/// Most tasks solved together; larger batches run as several chunks.
const MAX_TASKS_PER_CHUNK: usize = 1024;
/// Largest value array of a chunk (bytes), whatever the adapter allows.
const MAX_CHUNK_BYTES: u64 = 1 << 30;
/// Per-band uniform of the grid kernels. Keep in sync with `GridParams` in
/// `shaders/shared/grid_params.wgsl` (size checked by tests/kernel_shader_layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct GridParams {
    /// Cells per row, a multiple of 4 (the padded width).
    pub width: u32,
    /// Rows of the grid.
    pub height: u32,
    /// Cells per task (`width * height`).
    pub cells_per_task: u32,
    /// 32-bit words of fixed-cell bits per task.
    pub fixed_words_per_task: u32,
    /// First task (`[task]` index within the chunk) of this band.
    pub task_base: u32,
    /// `grid_backup`: first entry of this band's slice of `active_quads`.
    pub list_base: u32,
    /// `grid_backup`: entries of this band's slice of `active_quads`.
    pub list_count: u32,
    /// Workgroups along x of this band's dispatch.
    pub dispatch_x: u32,
    /// `grid_backup`: `partials` slot of this band's first workgroup within a task.
    pub group_base: u32,
    /// `grid_backup`: `partials` slots per task.
    pub groups_per_task: u32,
    /// Start of the `active_quads` window, in entries.
    pub quads_origin: u32,
    /// Start of the `fixed_bits` window, in elements of `[task][word]`.
    pub fixed_origin: u32,
    /// Start of the `v_in` window (`[task][row][quad]`; `grid_occupancy`: `d_in`, `d_out`
    /// `[task][row][col]`).
    pub v_in_origin: u32,
    /// Start of the reward and `v_out` windows (`[task][row][quad]`, the policy's cell `4 *
    /// out_origin`; `grid_occupancy`: policy `[task][row][col][action]`).
    pub out_origin: u32,
    /// Discount.
    pub gamma: f32,
    /// Slip probability in [0, 1].
    pub slip: f32,
    /// `alpha * ln(2)` (value units).
    pub alpha_ln2: f32,
    /// `log2(e) / alpha`.
    pub log2e_over_alpha: f32,
    /// `slip / |A|`: each action's share of a slipped move.
    pub slip_share: f32,
    /// Padding to 16 bytes.
    pub _pad0: u32,
    /// `cost(a)` per action in the action order, 4 per vec4 (value units).
    pub step_cost: [[f32; 4]; 3],
}

/// Floats per cell of modified policy iteration's improved-policy record
/// (`[task][row][col][slot]`, written by `grid_backup` with `IMPROVE`, read by `evaluate`): at
/// alpha = 0 the chosen action (hard max), else pi over the `actions` actions and h. Same as
/// `policy_slots` in `shaders/grid_backup.wgsl`.
pub fn policy_slots(hard_max: bool, actions: usize) -> usize {
    if hard_max { 1 } else { actions + 1 }
}

/// Splits `tasks` tasks of `height` x `width` cells into bands (of whole tasks, or of rows of
/// one task) whose per-cell arrays of `bytes_per_cell` bytes fit `max_binding` bytes, a row
/// of halo above and below a row band included, at most `max_workgroups` tasks each.
pub fn plan_grid_bands(
    tasks: usize,
    height: usize,
    width: usize,
    bytes_per_cell: u64,
    max_binding: u64,
    max_workgroups: u32,
) -> Result<Vec<Band>> {
    let cells = (height * width) as u64;
    let capacity = max_binding.saturating_sub(WINDOW_SLACK * bytes_per_cell);
    let row_bytes = width as u64 * bytes_per_cell;
    plan_bands(
        tasks,
        height,
        &BandLimits {
            whole_task_bytes: (cells * bytes_per_cell <= capacity)
                .then_some(cells * bytes_per_cell),
            capacity,
            fits: &|r0, r1| (r1 - r0 + 2) as u64 * row_bytes <= capacity,
            alone: &|_| {
                Error::limit(
                    format!(
                        "a grid row of {width} cells with its two neighbours in one storage binding"
                    ),
                    3 * row_bytes + WINDOW_SLACK * bytes_per_cell,
                    "the adapter's max_storage_buffer_binding_size",
                    max_binding,
                )
            },
            max_workgroups,
        },
    )
}

/// `problem` with its map widened to a multiple of 4 columns by blocked cells, as the quad
/// kernel needs; moves into the new cells are blocked like moves off the map, so no
/// transition changes.
fn pad_to_quads(problem: &GridProblem) -> std::borrow::Cow<'_, GridProblem> {
    let w = problem.grid.width;
    let padded_w = w.next_multiple_of(4);
    if padded_w == w {
        return std::borrow::Cow::Borrowed(problem);
    }
    let mut padded = problem.clone();
    padded.grid.width = padded_w;
    padded.grid.free = pad_rows(&problem.grid.free, w, padded_w, false);
    for task in &mut padded.tasks {
        for g in &mut task.goals {
            *g = *g / w * padded_w + *g % w;
        }
        if let Some(r) = &mut task.reward {
            *r = pad_rows(r, w, padded_w, 0.0);
        }
    }
    std::borrow::Cow::Owned(padded)
}

/// `[..][row][w]` to `[..][row][padded_w]`, the new columns `fill`.
fn pad_rows<T: Copy>(data: &[T], w: usize, padded_w: usize, fill: T) -> Vec<T> {
    data.chunks_exact(w)
        .flat_map(|row| {
            row.iter()
                .copied()
                .chain(std::iter::repeat_n(fill, padded_w - w))
        })
        .collect()
}

/// Drops the padding columns of `[task][row][padded_w * per_cell]` arrays.
fn strip_padding(data: &[f32], padded_w: usize, w: usize, per_cell: usize) -> Vec<f32> {
    if padded_w == w {
        return data.to_vec();
    }
    data.chunks_exact(padded_w * per_cell)
        .flat_map(|row| &row[..w * per_cell])
        .copied()
        .collect()
}

/// Entry points of `shaders/grid_backup.wgsl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum GridStage {
    Backup,
    Policy,
    Occupancy,
    /// Modified policy iteration's policy-evaluation sweep.
    Evaluate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct GridPipelineKey {
    stage: GridStage,
    connectivity: u32,
    stay: bool,
    optimistic: bool,
    has_reward: bool,
    hard_max: bool,
    write_residual: bool,
    /// `grid_policy` writes Q instead of pi.
    write_q: bool,
    /// Tasks may stop iterating (an infinite horizon): `grid_backup` reads `frozen`.
    freeze: bool,
    /// `grid_backup` is modified policy iteration's improvement (writes its policy).
    improve: bool,
}

/// One band's params, binding windows (active quads, fixed bits, v_in, out) and workgroup
/// counts, and the cells `[first_cell, end_cell)` it writes.
struct BandLayout {
    params: GridParams,
    windows: [Window; 4],
    dispatch: [u32; 3],
    first_cell: u64,
    end_cell: u64,
}

impl BandLayout {
    /// Workgroups of one task of this band.
    fn dispatch_groups(&self) -> u32 {
        self.params.list_count.div_ceil(WORKGROUP_SIZE)
    }

    /// This band as `extrapolate` sees it: the cells `[first_cell, end_cell)` of its tasks
    /// over the sweep's dispatch.
    fn extrapolate_band(&self) -> ExtrapolateBand {
        let p = &self.params;
        let cells = p.cells_per_task as u64;
        let first = self.first_cell - p.task_base as u64 * cells;
        let last_task = (p.task_base + self.dispatch[2] - 1) as u64;
        let [_, fixed, prev, values] = self.windows;
        ExtrapolateBand {
            params: ExtrapolateParams {
                values_per_task: p.cells_per_task,
                task_base: p.task_base,
                first: first as u32,
                count: (self.end_cell - last_task * cells - first) as u32,
                dispatch_x: p.dispatch_x,
                invocations: invocations(self.dispatch),
                fixed_words_per_task: p.fixed_words_per_task,
                fixed_origin: p.fixed_origin,
                // v_in and v_out are windows of vec4 quads, 4 cells each.
                prev_origin: 4 * p.v_in_origin,
                out_origin: 4 * p.out_origin,
                ..Default::default()
            },
            fixed,
            prev,
            values,
        }
    }
}

/// A chunk's plan and buffers (pooled across solves): what every step of its solve binds.
struct GridChunk {
    /// Tasks.
    n: usize,
    /// Bytes of one value array, `[task][cell]`.
    v_bytes: u64,
    /// Sweep bands, and the policy's (whole cells' actions per binding).
    layouts: Vec<BandLayout>,
    policy_layouts: Vec<BandLayout>,
    checks: Checks,
    /// The backup's pipeline; the other stages differ only in `stage`.
    key: GridPipelineKey,
    /// V ping-pong pair, `[task][cell]`.
    values: [wgpu::Buffer; 2],
    /// Active quads `[entry][row << 16 | quad column, move masks]`, fixed bits
    /// `[task][word]`, reward `[task][cell]`.
    quads: wgpu::Buffer,
    fixed: wgpu::Buffer,
    reward: wgpu::Buffer,
    /// The uniforms of the sweep bands and of the policy bands, slot = band.
    sweep_params: Uniforms<GridParams>,
    policy_params: Uniforms<GridParams>,
    /// With a forward pass, V_t of every step: slot t = V_t, `[t][task][cell]`.
    steps: Option<wgpu::Buffer>,
    /// A 16-byte stand-in for the policy binding of the sweeps.
    no_policy: wgpu::Buffer,
    /// V before the last extrapolation jump, for its rollback.
    backup: wgpu::Buffer,
    /// Modified policy iteration's buffers (`None`: value iteration).
    mpi: Option<MpiBuffers>,
}

/// A chunk's buffers of modified policy iteration.
struct MpiBuffers {
    /// Evaluation sweeps per improvement.
    evaluations: u32,
    /// Floats per cell of `policy` ([`policy_slots`]).
    slots: u64,
    /// The last improvement's policy, `[task][row][col][slot]`.
    policy: wgpu::Buffer,
    /// A third value array `[task][cell]` the evaluation sweeps alternate with the input.
    evaluated: wgpu::Buffer,
}

/// The pipelines and per-band bind groups of modified policy iteration's steps: `improve[b]`
/// = from values 0, values 1 (into the other), from `evaluated` into values 1, into values 0;
/// `evaluate[b]` = values 0 into `evaluated`, back into values 0, the same with values 1.
struct MpiKernels<'a> {
    improve: wgpu::ComputePipeline,
    improve_checked: wgpu::ComputePipeline,
    evaluate: wgpu::ComputePipeline,
    improve_groups: Vec<[wgpu::BindGroup; 4]>,
    evaluate_groups: Vec<[wgpu::BindGroup; 4]>,
    evaluations: u32,
    checks: &'a Checks,
}

impl MpiKernels<'_> {
    /// Records one step of modified policy iteration as the check schedule's sweep `index`
    /// from values `parity` into the other (`crate::engine::cpu::mpi_step`): `evaluations`
    /// evaluation sweeps (none before the first improvement) alternating between the input
    /// and `evaluated`, then the improvement, each a pass of indirect dispatches (zeroed
    /// once every task has frozen).
    fn record(&self, encoder: &mut wgpu::CommandEncoder, index: u32, parity: usize, checked: bool) {
        let pass = |encoder: &mut wgpu::CommandEncoder,
                    pipeline: &wgpu::ComputePipeline,
                    groups: &[[wgpu::BindGroup; 4]],
                    at: usize| {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(pipeline);
            for (b, group) in groups.iter().enumerate() {
                pass.set_bind_group(0, &group[at], &[]);
                pass.dispatch_workgroups_indirect(&self.checks.control, self.checks.sweep_args(b));
            }
        };
        let mut in_evaluated = false;
        if index > 0 {
            for _ in 0..self.evaluations {
                let at = 2 * parity + in_evaluated as usize;
                pass(encoder, &self.evaluate, &self.evaluate_groups, at);
                in_evaluated = !in_evaluated;
            }
        }
        let at = parity + 2 * in_evaluated as usize;
        let improve = if checked {
            &self.improve_checked
        } else {
            &self.improve
        };
        pass(encoder, improve, &self.improve_groups, at);
    }
}

/// The kernel inputs of a solve and the arrays derived from them once for every chunk.
struct GridArrays<'a> {
    inputs: &'a GridInputs,
    /// The warm start (`crate::engine::warm_start`), `[task][cell]`; `None`: V = 0.
    start_values: Option<Vec<f32>>,
    fixed_bits: Vec<u32>,
    active_quads: Vec<[u32; 2]>,
}

/// A finite-horizon forward pass asked of a chunk: the start distribution of every task of the
/// problem, `[task][cell]` (padded).
struct Forward<'a> {
    start: &'a [f32],
}

/// Batched gridworld soft value iteration on one wgpu device. Pipelines, layouts and
/// buffers are built once and reused by every solve.
pub struct GridEngine {
    pub(super) core: GpuCore,
    grid_backup: Shader,
    pub(super) grid_occupancy: Shader,
    /// `shaders/grid_vjp.wgsl` (`super::grid_vjp`).
    pub(super) grid_vjp: Shader,
}

impl GridEngine {
    /// An engine on `ctx`'s device with the adapter's limits.
    pub fn new(ctx: &GpuContext) -> Result<Self> {
        Self::with_options(ctx, EngineOptions::default())
    }

    /// An engine on `ctx`'s device with the given size limits (each at most the device's).
    pub fn with_options(ctx: &GpuContext, options: EngineOptions) -> Result<Self> {
        let core = GpuCore::new(ctx, options);
        // Binding order = position in these lists; the shaders declare the same order.
        let grid_backup = core.shader(
            "softvi.grid_backup",
            GRID_BACKUP_WGSL,
            &[
                wgpu::BufferBindingType::Uniform, // params
                storage(true),                    // active_quads
                storage(true),                    // fixed_bits
                storage(true),                    // reward
                storage(true),                    // v_in
                storage(false),                   // v_out
                storage(false),                   // partials
                storage(false),                   // policy
                storage(true),                    // frozen
            ],
        );
        let grid_occupancy = core.shader(
            "softvi.grid_occupancy",
            GRID_OCCUPANCY_WGSL,
            &[
                wgpu::BufferBindingType::Uniform, // params
                storage(true),                    // move_masks
                storage(true),                    // fixed_bits
                storage(true),                    // policy
                storage(true),                    // d_in
                storage(false),                   // d_out
                storage(false),                   // partials
                storage(true),                    // start
                storage(true),                    // frozen
            ],
        );
        let grid_vjp = core.shader(
            "softvi.grid_vjp",
            super::grid_vjp::GRID_VJP_WGSL,
            &[
                wgpu::BufferBindingType::Uniform, // params
                storage(true),                    // move_masks
                storage(true),                    // fixed_bits
                storage(true),                    // reward
                storage(true),                    // v
                storage(false),                   // rows
                storage(true),                    // u_in
                storage(false),                   // out
                storage(false),                   // weights
            ],
        );
        Ok(Self {
            core,
            grid_backup,
            grid_occupancy,
            grid_vjp,
        })
    }

    /// Limits a submission to `checks` convergence checks of
    /// [`crate::engine::schedule::CHECK_INTERVAL`] sweeps each (clamped to 1..=64, the
    /// default 64): the longest the device works between progress reports, where a caller
    /// can stop the solve. The results do not depend on it (every check runs either way).
    pub fn set_checks_per_submit(&mut self, checks: usize) {
        self.core.checks_per_submit = checks.clamp(1, super::core::MAX_CHECKS_PER_SUBMIT);
    }

    /// Calls `watch(sweeps, values)` after every submission of the backward iteration with the
    /// values then (extrapolation jumps included), `[task][row][col]` over the tasks of the
    /// chunk being solved and rows padded to `width.next_multiple_of(4)` columns; `None`
    /// stops watching. Each call costs a readback of the values.
    pub fn watch_values(&mut self, watch: Option<super::core::LiveValues>) {
        self.core.live_values = watch;
    }

    /// `"<adapter name> (<backend>)"` of the device this engine runs on.
    pub fn adapter_label(&self) -> &str {
        &self.core.adapter_label
    }

    /// The pipeline of `key`, from the core's cache.
    fn grid_pipeline(&mut self, key: GridPipelineKey) -> wgpu::ComputePipeline {
        let (entry, shader) = match key.stage {
            GridStage::Backup => ("grid_backup", &self.grid_backup),
            GridStage::Policy => ("grid_policy", &self.grid_backup),
            GridStage::Occupancy => ("grid_occupancy", &self.grid_occupancy),
            GridStage::Evaluate => ("evaluate", &self.grid_backup),
        };
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let mut constants = vec![
            ("CONNECTIVITY", key.connectivity as f64),
            ("STAY", flag(key.stay)),
        ];
        if key.stage != GridStage::Occupancy {
            constants.extend([
                ("OPTIMISTIC", flag(key.optimistic)),
                ("HAS_REWARD", flag(key.has_reward)),
                ("HARD_MAX", flag(key.hard_max)),
                ("WRITE_RESIDUAL", flag(key.write_residual)),
                ("WRITE_Q", flag(key.write_q)),
                ("FREEZE", flag(key.freeze)),
                ("IMPROVE", flag(key.improve)),
            ]);
        }
        self.core.pipeline(shader, entry, &constants)
    }

    /// Tasks solved together so that the largest per-chunk array, `bytes_per_cell` per cell
    /// and task, fits the adapter's buffer limit.
    fn tasks_per_chunk(&self, cells: usize, bytes_per_cell: u64) -> Result<usize> {
        let task_bytes = cells as u64 * bytes_per_cell;
        let budget = self.core.max_buffer.min(MAX_CHUNK_BYTES);
        ensure_limit(
            task_bytes,
            budget,
            || format!("a grid of {cells} cells, per task in one array,"),
            format_args!(
                "the per-chunk limit (adapter max_buffer_size {} bytes)",
                self.core.max_buffer
            ),
        )?;
        Ok(((budget / task_bytes) as usize).min(MAX_TASKS_PER_CHUNK))
    }

    /// Solves every task of `problem` with the policy and Q as `outputs` asks; the result has
    /// the same layout and meaning as [`crate::engine::cpu::solve_cpu`]'s.
    pub fn solve(
        &mut self,
        problem: &GridProblem,
        options: &SolveOptions,
        outputs: Outputs,
    ) -> Result<Solution> {
        self.solve_with_progress(problem, options, outputs, &mut keep_going)
    }

    /// [`GridEngine::solve`], calling `progress` after every submission's checks.
    pub fn solve_with_progress(
        &mut self,
        problem: &GridProblem,
        options: &SolveOptions,
        outputs: Outputs,
        progress: &mut OnProgress<'_>,
    ) -> Result<Solution> {
        super::wait(self.solve_async(problem, options, outputs, progress))
    }

    /// [`GridEngine::solve_with_progress`] as a future: the browser build awaits it, each
    /// readback yielding to the event loop.
    pub async fn solve_async(
        &mut self,
        problem: &GridProblem,
        options: &SolveOptions,
        outputs: Outputs,
        progress: &mut OnProgress<'_>,
    ) -> Result<Solution> {
        outputs.ensure_plain()?;
        let solved = self.solve_grid(problem, options, outputs, None, progress);
        Ok(solved.await?.solution)
    }

    /// Solves `mdp` (an MDP over `world`'s states, see [`GridMdp::problem_for`]) for a finite
    /// horizon on the grid kernels, with its own start distribution, and returns the result
    /// over the states as [`crate::engine::cpu::solve_mdp_cpu`] lays it out.
    pub fn solve_grid_mdp(
        &mut self,
        world: &GridMdp,
        template: &GridProblem,
        mdp: &TabularMdp,
        options: &SolveOptions,
        outputs: Outputs,
    ) -> Result<MdpSolution> {
        let problem = world.problem_for(template, mdp)?;
        let start = world.start_cells(mdp);
        let mut solved = super::wait(self.solve_steps_async(
            &problem,
            options,
            outputs,
            &start,
            &mut keep_going,
        ))?;
        solved.to_states(world);
        Ok(solved)
    }

    /// A finite-horizon solve with every step and/or the occupancy, on the grid kernels
    /// (`grid_policy` per step, then `grid_occupancy` pulling through the reverse moves) from
    /// the start distribution `start` `[task][row][col]` (e.g.
    /// [`crate::world::grid_mdp::start_distribution`]). The result is laid out over the map
    /// (`height` H, `width` W): values `[task][t][row][col]`, policy
    /// `[task][t][row][col][action]`, occupancy `[task][t][row][col]`, NaN on walls, as
    /// [`crate::engine::cpu::solve_mdp_cpu`] gives them through
    /// [`crate::world::grid_mdp::GridMdp`]. A task's
    /// policy must fit one storage binding. (The discounted occupancy runs through `GridMdp`
    /// and [`super::MdpEngine`].)
    pub fn solve_steps(
        &mut self,
        problem: &GridProblem,
        options: &SolveOptions,
        outputs: Outputs,
        start: &[f32],
        progress: &mut OnProgress<'_>,
    ) -> Result<MdpSolution> {
        super::wait(self.solve_steps_async(problem, options, outputs, start, progress))
    }

    /// [`GridEngine::solve_steps`] as a future, for the browser build.
    pub async fn solve_steps_async(
        &mut self,
        problem: &GridProblem,
        options: &SolveOptions,
        outputs: Outputs,
        start: &[f32],
        progress: &mut OnProgress<'_>,
    ) -> Result<MdpSolution> {
        ensure!(
            matches!(options.horizon, Horizon::Finite(_)),
            "the grid kernels' forward pass needs a finite horizon"
        );
        let (w, cells) = (problem.grid.width, problem.grid.cells());
        ensure!(
            start.len() == problem.tasks.len() * cells,
            "the start distribution holds {} numbers, not tasks x cells = {} x {cells}",
            start.len(),
            problem.tasks.len()
        );
        let padded_w = w.next_multiple_of(4);
        let padded = pad_rows(start, w, padded_w, 0.0);
        let forward = Some(Forward { start: &padded });
        (self.solve_grid(problem, options, outputs, forward, progress)).await
    }

    async fn solve_grid(
        &mut self,
        problem: &GridProblem,
        options: &SolveOptions,
        outputs: Outputs,
        forward: Option<Forward<'_>>,
        progress: &mut OnProgress<'_>,
    ) -> Result<MdpSolution> {
        let start = Instant::now();
        problem.validate()?;
        options.validate()?;
        let padded = pad_to_quads(problem);
        let inputs = GridInputs::new(&padded, options);
        let cells = inputs.cells();
        let n = inputs.action_count;
        let horizon = options.horizon.finite_steps() as u64;
        let bytes_per_cell = match (&forward, options.method) {
            (Some(_), _) => (4 * n as u64).max(4 * (horizon + 1)),
            // The improved policy is the largest array.
            (None, Method::Mpi { .. }) => 4 * policy_slots(inputs.alpha == 0.0, n) as u64,
            (None, Method::Vi) => 4,
        };
        let per_chunk = match (&forward, options.method) {
            (None, Method::Mpi { .. }) => self
                .tasks_per_chunk(cells, bytes_per_cell)
                .with_context(|| {
                    format!(
                        "modified policy iteration (--method mpi) keeps {} floats per cell \
                             of its policy",
                        bytes_per_cell / 4
                    )
                })?,
            _ => self.tasks_per_chunk(cells, bytes_per_cell)?,
        };
        let arrays = GridArrays {
            start_values: grid_start_values_for(&inputs, options)
                .map(|v| v.into_iter().map(|x| x as f32).collect()),
            fixed_bits: inputs.fixed_bits(),
            active_quads: inputs.active_quads(),
            inputs: &inputs,
        };
        let adapter = self.core.adapter_label.clone();
        let gathered = solve_in_chunks(
            inputs.tasks,
            per_chunk,
            (options, outputs),
            ("GPU solve", &adapter),
            async |tasks| {
                let asked = (options, outputs, forward.as_ref());
                self.solve_chunk(&arrays, tasks, asked, progress).await
            },
        )
        .await?;
        let marks = inputs.marks();
        let (h, w, padded_w) = (inputs.height, problem.grid.width, inputs.width);
        let mut solved = gathered.into_solution(
            options,
            outputs,
            &marks,
            ((h, padded_w), n),
            inputs.unreachable.clone(),
            start,
        );
        // Marked over the padded map, then the padding columns dropped.
        solved.relayout((h, w), |data, per_cell| {
            strip_padding(data, padded_w, w, per_cell)
        });
        Ok(solved)
    }

    /// The parts of [`GridParams`] shared by every band of a chunk.
    fn grid_params(&self, inputs: &GridInputs) -> GridParams {
        let (alpha_ln2, log2e_over_alpha) = super::temperature_uniforms(inputs.alpha);
        let mut step_cost = [[0.0f32; 4]; 3];
        for a in 0..inputs.action_count {
            step_cost[a / 4][a % 4] = inputs.step_cost[a] as f32;
        }
        GridParams {
            width: inputs.width as u32,
            height: inputs.height as u32,
            cells_per_task: inputs.cells() as u32,
            fixed_words_per_task: inputs.fixed_words_per_task() as u32,
            gamma: inputs.gamma as f32,
            slip: inputs.slip as f32,
            alpha_ln2,
            log2e_over_alpha,
            slip_share: (inputs.slip / inputs.action_count as f64) as f32,
            step_cost,
            ..Default::default()
        }
    }

    /// Lays out `bands` of a chunk of `tasks` tasks: each band's params, binding windows and
    /// dispatch size over its slice of `active_quads` (row-major, so a row range is a slice).
    fn lay_out_bands(
        &self,
        inputs: &GridInputs,
        active_quads: &[[u32; 2]],
        tasks: usize,
        bands: &[Band],
    ) -> Result<Vec<BandLayout>> {
        let base = self.grid_params(inputs);
        let (w, h, cells) = (
            inputs.width as u64,
            inputs.height as u64,
            inputs.cells() as u64,
        );
        let wpt = inputs.fixed_words_per_task() as u64;
        let (qpr, qpt) = (w / 4, cells / 4);
        let align = self.core.storage_align;
        let first_at_row = |row: usize| active_quads.partition_point(|e| (e[0] >> 16) < row as u32);
        // Workgroups per task so far, by row band (bands of whole tasks start at 0).
        let mut group_base = 0u32;
        let mut layouts: Vec<BandLayout> = bands
            .iter()
            .map(|band| {
                let (t0, t_last) = (
                    band.task_base as u64,
                    (band.task_base + band.task_count - 1) as u64,
                );
                let (r0, r1) = (band.first as u64, (band.first + band.count) as u64);
                let (lo, hi) = (first_at_row(band.first), first_at_row(r1 as usize));
                let (dispatch, groups) =
                    band_dispatch(hi - lo, band.task_count, self.core.max_workgroups)?;
                let windows = [
                    // A band with no active quad dispatches nothing; bind any entry.
                    match hi > lo {
                        true => window(lo as u64, hi as u64, active_quads.len() as u64, 8, align),
                        false => window(0, 1, active_quads.len() as u64, 8, align),
                    },
                    window(
                        t0 * wpt + r0 * w / 32,
                        t_last * wpt + (r1 * w).div_ceil(32),
                        tasks as u64 * wpt,
                        4,
                        align,
                    ),
                    window(
                        t0 * qpt + r0.saturating_sub(1) * qpr,
                        t_last * qpt + (r1 + 1).min(h) * qpr,
                        tasks as u64 * qpt,
                        16,
                        align,
                    ),
                    window(
                        t0 * qpt + r0 * qpr,
                        t_last * qpt + r1 * qpr,
                        tasks as u64 * qpt,
                        16,
                        align,
                    ),
                ];
                if band.first == 0 {
                    group_base = 0;
                }
                let params = GridParams {
                    task_base: band.task_base as u32,
                    list_base: lo as u32,
                    list_count: (hi - lo) as u32,
                    dispatch_x: dispatch[0].max(1),
                    group_base,
                    quads_origin: windows[0].origin as u32,
                    fixed_origin: windows[1].origin as u32,
                    v_in_origin: windows[2].origin as u32,
                    out_origin: windows[3].origin as u32,
                    ..base
                };
                group_base += groups;
                Ok(BandLayout {
                    params,
                    windows,
                    dispatch,
                    first_cell: t0 * cells + r0 * w,
                    end_cell: t_last * cells + r1 * w,
                })
            })
            .collect::<Result<_>>()?;
        // Row bands of one task tile the task; its workgroups are counted over all of them.
        let per_task = layouts
            .iter()
            .map(|l| l.params.group_base + l.dispatch_groups())
            .max()
            .unwrap_or(0);
        for l in &mut layouts {
            l.params.groups_per_task = per_task;
        }
        Ok(layouts)
    }

    /// The `grid_backup` bind group of a band of `chunk`: its uniform `params`, reading
    /// `v_in`, writing `v_out` and (the policy entry) `policy` = (buffer, offset, bytes).
    fn grid_bind_group(
        &self,
        chunk: &GridChunk,
        params: wgpu::BindingResource,
        windows: &[Window; 4],
        (v_in, v_out): (&wgpu::Buffer, &wgpu::Buffer),
        policy: (&wgpu::Buffer, u64, u64),
    ) -> wgpu::BindGroup {
        let [quads_w, fixed_w, v_in_w, out_w] = windows;
        // Binding order = the layout's order = the shader's @binding numbers.
        self.core.bind_group(
            "softvi.grid_backup",
            &self.grid_backup.group_layout,
            [
                params,
                bind(&chunk.quads, quads_w.offset, quads_w.size),
                bind(&chunk.fixed, fixed_w.offset, fixed_w.size),
                bind(&chunk.reward, out_w.offset, out_w.size),
                bind(v_in, v_in_w.offset, v_in_w.size),
                bind(v_out, out_w.offset, out_w.size),
                chunk.checks.partials.as_entire_binding(),
                bind(policy.0, policy.1, policy.2),
                chunk.checks.frozen.as_entire_binding(),
            ],
        )
    }

    async fn solve_chunk(
        &mut self,
        arrays: &GridArrays<'_>,
        tasks: Range<usize>,
        (options, outputs, forward): (&SolveOptions, Outputs, Option<&Forward<'_>>),
        progress: &mut OnProgress<'_>,
    ) -> Result<ChunkResult> {
        let rows = outputs.policy || outputs.q || forward.is_some();
        let chunk = self.plan_chunk(arrays, tasks.len(), options, (rows, forward.is_some()))?;
        let mut run = (self.backward(arrays, &chunk, tasks.clone(), options, progress)).await?;
        let unbounded = arrays.inputs.unbounded_tasks();
        run.outcomes.verdict = with_unbounded(run.outcomes.verdict, &unbounded[tasks.clone()]);
        let sweeps = run.sweeps;
        let diverged = matches!(run.outcomes.verdict, Verdict::Diverged(_));
        let v_final = &chunk.values[(sweeps % 2) as usize];
        let values = self.core.read_f32(v_final, 0, chunk.v_bytes).await?;
        let mut result = ChunkResult::new(values, run);
        if diverged {
            return Ok(result);
        }
        // Finite horizon: pi_0 and Q_0 come from V_1, the values the last sweep read.
        let from = match options.horizon {
            Horizon::Finite(_) => ((sweeps + 1) % 2) as usize,
            Horizon::Infinite { .. } => (sweeps % 2) as usize,
        };
        let n_actions = arrays.inputs.action_count;
        if outputs.policy {
            result.policy = Some(self.policy_pass(&chunk, n_actions, from, false).await?);
        }
        if outputs.q {
            result.q = Some(self.policy_pass(&chunk, n_actions, from, true).await?);
        }
        if let Some(forward) = forward {
            let asked = (options, outputs, forward);
            (self.forward_pass(arrays, &chunk, tasks, asked, &mut result)).await?;
        }
        Ok(result)
    }

    /// A chunk of `n` tasks: its bands, checks, pipeline key and (pooled) buffers; `rows`:
    /// whether a policy or Q pass runs, `forward`: whether a forward pass does.
    fn plan_chunk(
        &mut self,
        arrays: &GridArrays,
        n: usize,
        options: &SolveOptions,
        (rows, forward): (bool, bool),
    ) -> Result<GridChunk> {
        use wgpu::BufferUsages as U;
        let inputs = arrays.inputs;
        let (h, w, n_actions) = (inputs.height, inputs.width, inputs.action_count);
        let max_binding = self.core.max_binding;
        let max_workgroups = self.core.max_workgroups;
        // Modified policy iteration's sweeps also bind the improved policy's window.
        let slots = match options.method {
            Method::Vi => None,
            Method::Mpi { evaluations } => Some((
                evaluations,
                policy_slots(inputs.alpha == 0.0, n_actions) as u64,
            )),
        };
        let bands = match slots {
            None => plan_grid_bands(n, h, w, 4, max_binding, max_workgroups)?,
            Some((_, slots)) => plan_grid_bands(n, h, w, 4 * slots, max_binding, max_workgroups)
                .with_context(|| {
                    format!(
                        "modified policy iteration (--method mpi) keeps {slots} floats per cell                          of its policy"
                    )
                })?,
        };
        let layouts = self.lay_out_bands(inputs, &arrays.active_quads, n, &bands)?;
        let policy_layouts = if rows {
            let policy_bands =
                plan_grid_bands(n, h, w, 4 * n_actions as u64, max_binding, max_workgroups)?;
            self.lay_out_bands(inputs, &arrays.active_quads, n, &policy_bands)?
        } else {
            Vec::new()
        };
        let dispatch: Vec<[u32; 3]> = layouts.iter().map(|l| l.dispatch).collect();
        let mut checks = self.core.checks(
            n,
            layouts[0].params.groups_per_task,
            &dispatch,
            options,
            &[],
        )?;
        let horizon = options.horizon.finite_steps() as u64;
        let core = &mut self.core;
        let v_bytes = (n * inputs.cells() * 4) as u64;
        let usage = U::STORAGE | U::COPY_SRC | U::COPY_DST;
        let values = [
            core.buffer("softvi.values_a", v_bytes, usage),
            core.buffer("softvi.values_b", v_bytes, usage),
        ];
        if core.live_values.is_some() {
            checks.live = Some((values.clone(), v_bytes));
        }
        let quads = core.buffer(
            "softvi.active_quads",
            (arrays.active_quads.len().max(1) * 8) as u64,
            U::STORAGE | U::COPY_DST,
        );
        let fixed = core.buffer(
            "softvi.fixed_bits",
            (n * inputs.fixed_words_per_task() * 4) as u64,
            U::STORAGE | U::COPY_DST,
        );
        let reward = core.buffer("softvi.reward", v_bytes, U::STORAGE | U::COPY_DST);
        let params = |layouts: &[BandLayout]| layouts.iter().map(|l| l.params).collect::<Vec<_>>();
        let sweep_params = core.uniforms("softvi.grid_sweep_params", &params(&layouts));
        let policy_params = core.uniforms("softvi.grid_policy_params", &params(&policy_layouts));
        // V_t of every step, slot t = V_t; V_T = 0.
        let steps = match forward {
            true => {
                let bytes = (horizon + 1) * v_bytes;
                core.ensure_buffer("the values of every step", bytes)?;
                let buffer = core.buffer("softvi.step_values", bytes, U::COPY_SRC | U::COPY_DST);
                let mut encoder = core.device.create_command_encoder(&Default::default());
                encoder.clear_buffer(&buffer, horizon * v_bytes, Some(v_bytes));
                core.queue.submit([encoder.finish()]);
                Some(buffer)
            }
            false => None,
        };
        let no_policy = core.buffer("softvi.no_policy", 16, U::STORAGE);
        // V before the last extrapolation jump, for its rollback.
        let backup = match options.uses_extrapolation() {
            true => core.buffer("softvi.backup", v_bytes, U::STORAGE),
            false => no_policy.clone(),
        };
        let key = GridPipelineKey {
            stage: GridStage::Backup,
            connectivity: if n_actions >= 8 { 8 } else { 4 },
            stay: n_actions % 4 == 1,
            optimistic: inputs.backup == Backup::Optimistic,
            has_reward: inputs.reward.iter().any(|&r| r != 0.0),
            hard_max: inputs.alpha == 0.0,
            write_residual: false,
            write_q: false,
            freeze: matches!(options.horizon, Horizon::Infinite { .. }),
            improve: false,
        };
        let mpi = slots.map(|(evaluations, slots)| {
            let policy_bytes = n as u64 * inputs.cells() as u64 * slots * 4;
            MpiBuffers {
                evaluations,
                slots,
                policy: core.buffer("softvi.improved_policy", policy_bytes, U::STORAGE),
                evaluated: core.buffer("softvi.values_evaluated", v_bytes, usage),
            }
        });
        Ok(GridChunk {
            n,
            v_bytes,
            layouts,
            policy_layouts,
            checks,
            key,
            values,
            quads,
            fixed,
            reward,
            sweep_params,
            policy_params,
            steps,
            no_policy,
            backup,
            mpi,
        })
    }

    /// Uploads the chunk `tasks`' inputs and runs the backward iteration from the start values
    /// (V = 0, or the warm start).
    async fn backward(
        &mut self,
        arrays: &GridArrays<'_>,
        chunk: &GridChunk,
        tasks: Range<usize>,
        options: &SolveOptions,
        progress: &mut OnProgress<'_>,
    ) -> Result<Iteration> {
        let (cells, wpt) = (arrays.inputs.cells(), arrays.inputs.fixed_words_per_task());
        let q = self.core.queue.clone();
        q.write_buffer(&chunk.quads, 0, bytemuck::cast_slice(&arrays.active_quads));
        let fixed_bits = &arrays.fixed_bits[tasks.start * wpt..tasks.end * wpt];
        q.write_buffer(&chunk.fixed, 0, bytemuck::cast_slice(fixed_bits));
        let reward = &arrays.inputs.reward[tasks.start * cells..tasks.end * cells];
        q.write_buffer(&chunk.reward, 0, bytemuck::cast_slice(reward));
        let values = &chunk.values;
        let sweep_groups: Vec<_> = (chunk.layouts.iter().enumerate())
            .map(|(b, layout)| {
                let no_policy = (&chunk.no_policy, 0, 16);
                let group = |p: usize| {
                    let io = (&values[p], &values[1 - p]);
                    let params = chunk.sweep_params.bind(b);
                    self.grid_bind_group(chunk, params, &layout.windows, io, no_policy)
                };
                [group(0), group(1)]
            })
            .collect();
        let sweep = self.grid_pipeline(chunk.key);
        let sweep_checked = self.grid_pipeline(GridPipelineKey {
            write_residual: true,
            ..chunk.key
        });
        let extrapolate = self.core.extrapolate_pipeline.clone();
        let extrapolate_groups = match options.uses_extrapolation() {
            true => {
                let bands: Vec<_> = (chunk.layouts.iter())
                    .map(BandLayout::extrapolate_band)
                    .collect();
                self.core.extrapolate_groups(
                    "softvi.extrapolate_params",
                    &bands,
                    &chunk.fixed,
                    values,
                    &chunk.backup,
                    &chunk.checks.extrapolation,
                )
            }
            false => Vec::new(),
        };
        // Every value array starts at the start values: quads whose cells are all fixed are
        // never written, and a neighbour reads them.
        let evaluated = chunk.mpi.as_ref().map(|m| &m.evaluated);
        let all_values = values.iter().chain(evaluated);
        match &arrays.start_values {
            Some(start) => {
                let start = &start[tasks.start * cells..tasks.end * cells];
                for buffer in all_values {
                    q.write_buffer(buffer, 0, bytemuck::cast_slice(start));
                }
            }
            None => {
                let mut encoder = self.core.device.create_command_encoder(&Default::default());
                for buffer in all_values {
                    encoder.clear_buffer(buffer, 0, Some(chunk.v_bytes));
                }
                self.core.queue.submit([encoder.finish()]);
            }
        }
        if let Some(mpi) = &chunk.mpi {
            let kernels = self.mpi_kernels(chunk, mpi);
            let mut record = |encoder: &mut wgpu::CommandEncoder, step| match step {
                Step::Sweep {
                    index,
                    parity,
                    checked,
                } => kernels.record(encoder, index, parity, checked),
                Step::Extrapolate { .. } => {
                    unreachable!("modified policy iteration does not extrapolate")
                }
            };
            return (self
                .core
                .iterate(&chunk.checks, options, &mut record, progress))
            .await;
        }
        let kernels = Kernels {
            sweep: &sweep,
            sweep_checked: &sweep_checked,
            extrapolate: &extrapolate,
            sweep_groups: &sweep_groups,
            extrapolate_groups: &extrapolate_groups,
            keep_steps: chunk.steps.as_ref().map(|steps| StepCopies {
                values,
                steps,
                horizon: options.horizon.finite_steps(),
                bytes: chunk.v_bytes,
            }),
        };
        let checks = &chunk.checks;
        let mut record = |encoder: &mut wgpu::CommandEncoder, step| {
            kernels.record(encoder, checks, step);
        };
        (self.core.iterate(checks, options, &mut record, progress)).await
    }

    /// The pipelines and bind groups of modified policy iteration's steps over `chunk`'s
    /// sweep bands ([`MpiKernels`]).
    fn mpi_kernels<'a>(&mut self, chunk: &'a GridChunk, mpi: &MpiBuffers) -> MpiKernels<'a> {
        let [v0, v1] = &chunk.values;
        let e = &mpi.evaluated;
        let groups = |pairs: [(&wgpu::Buffer, &wgpu::Buffer); 4]| -> Vec<[wgpu::BindGroup; 4]> {
            (chunk.layouts.iter().enumerate())
                .map(|(b, layout)| {
                    // The improved policy's window: the band's cells, as the out window's.
                    let out = &layout.windows[3];
                    let policy = (
                        &mpi.policy,
                        out.offset * mpi.slots,
                        (layout.end_cell - 4 * out.origin) * mpi.slots * 4,
                    );
                    pairs.map(|io| {
                        let params = chunk.sweep_params.bind(b);
                        self.grid_bind_group(chunk, params, &layout.windows, io, policy)
                    })
                })
                .collect()
        };
        let improve_groups = groups([(v0, v1), (v1, v0), (e, v1), (e, v0)]);
        let evaluate_groups = groups([(v0, e), (e, v0), (v1, e), (e, v1)]);
        let key = GridPipelineKey {
            improve: true,
            ..chunk.key
        };
        MpiKernels {
            improve: self.grid_pipeline(key),
            improve_checked: self.grid_pipeline(GridPipelineKey {
                write_residual: true,
                ..key
            }),
            evaluate: self.grid_pipeline(GridPipelineKey {
                stage: GridStage::Evaluate,
                ..chunk.key
            }),
            improve_groups,
            evaluate_groups,
            evaluations: mpi.evaluations,
            checks: &chunk.checks,
        }
    }

    /// pi (Q with `write_q`) from `values[from]`, `[task][cell][action]`, band by band through
    /// a pooled buffer.
    async fn policy_pass(
        &mut self,
        chunk: &GridChunk,
        n_actions: usize,
        from: usize,
        write_q: bool,
    ) -> Result<Vec<f32>> {
        let pipeline = self.grid_pipeline(GridPipelineKey {
            stage: GridStage::Policy,
            write_q,
            ..chunk.key
        });
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let a = n_actions as u64;
        let mut policy = vec![0.0f32; (chunk.v_bytes / 4) as usize * n_actions];
        for (i, layout) in chunk.policy_layouts.iter().enumerate() {
            // The policy window starts at the reward window's first cell.
            let origin = 4 * layout.windows[3].origin;
            let out_bytes = (layout.end_cell - origin) * a * 4;
            let out = self.core.buffer("softvi.policy", out_bytes, usage);
            let io = (&chunk.values[from], &chunk.values[1 - from]);
            let params = chunk.policy_params.bind(i);
            let group =
                self.grid_bind_group(chunk, params, &layout.windows, io, (&out, 0, out_bytes));
            let mut encoder = self.core.device.create_command_encoder(&Default::default());
            self.core
                .dispatch(&mut encoder, &pipeline, &group, layout.dispatch);
            self.core.queue.submit([encoder.finish()]);
            let skip = (layout.first_cell - origin) * a * 4;
            let part = self.core.read_f32(&out, skip, out_bytes - skip).await?;
            let dst = layout.first_cell as usize * n_actions;
            policy[dst..dst + part.len()].copy_from_slice(&part);
        }
        Ok(policy)
    }

    /// The finite-horizon forward pass of a chunk: every step's values, and per step pi_t
    /// from V_{t+1} into one policy array, then D_{t+1} from D_t, as `forward` asks.
    async fn forward_pass(
        &mut self,
        arrays: &GridArrays<'_>,
        chunk: &GridChunk,
        tasks: Range<usize>,
        (options, outputs, forward): (&SolveOptions, Outputs, &Forward<'_>),
        result: &mut ChunkResult,
    ) -> Result<()> {
        use wgpu::BufferUsages as U;
        let inputs = arrays.inputs;
        let (cells, n_actions) = (inputs.cells(), inputs.action_count);
        let (horizon, v_bytes) = (options.horizon.finite_steps(), chunk.v_bytes);
        let steps = chunk
            .steps
            .as_ref()
            .expect("steps are kept with a forward pass");
        for l in &chunk.policy_layouts {
            if l.first_cell % cells as u64 != 0 || l.end_cell % cells as u64 != 0 {
                return Err(Error::limit(
                    "the forward pass, a task's policy in one storage binding,",
                    (cells * n_actions * 4) as u64,
                    "the adapter's max_storage_buffer_binding_size",
                    self.core.max_binding,
                ));
            }
        }
        if outputs.all_steps {
            let all = self
                .core
                .read_f32(steps, 0, (horizon as u64 + 1) * v_bytes)
                .await?;
            let per_step = chunk.n * cells;
            result.step_values = all.chunks_exact(per_step).map(<[f32]>::to_vec).collect();
        }
        let keep_policy = outputs.all_steps && outputs.policy;
        let keep_q = outputs.all_steps && outputs.q;
        if !outputs.occupancy && !keep_policy && !keep_q {
            return Ok(());
        }
        let core = &mut self.core;
        let policy_bytes = v_bytes * n_actions as u64;
        let step_policy = core.buffer("softvi.step_policy", policy_bytes, U::STORAGE | U::COPY_SRC);
        let v_next = core.buffer("softvi.step_v", v_bytes, U::STORAGE | U::COPY_DST);
        let usage = U::STORAGE | U::COPY_SRC | U::COPY_DST;
        let d = [
            core.buffer("softvi.occupancy_a", v_bytes, usage),
            core.buffer("softvi.occupancy_b", v_bytes, usage),
        ];
        let start = &forward.start[tasks.start * cells..tasks.end * cells];
        core.queue
            .write_buffer(&d[0], 0, bytemuck::cast_slice(start));
        let policy_groups: Vec<_> = (chunk.policy_layouts.iter().enumerate())
            .map(|(i, layout)| {
                let origin = 4 * layout.windows[3].origin;
                let out = (
                    &step_policy,
                    origin * n_actions as u64 * 4,
                    (layout.end_cell - origin) * n_actions as u64 * 4,
                );
                let io = (&v_next, &chunk.values[0]);
                let params = chunk.policy_params.bind(i);
                self.grid_bind_group(chunk, params, &layout.windows, io, out)
            })
            .collect();
        let occupancy_groups = self.occupancy_groups(inputs, chunk, &step_policy, &d)?;
        let policy = self.grid_pipeline(GridPipelineKey {
            stage: GridStage::Policy,
            ..chunk.key
        });
        let q = self.grid_pipeline(GridPipelineKey {
            stage: GridStage::Policy,
            write_q: true,
            ..chunk.key
        });
        let occupancy = self.grid_pipeline(GridPipelineKey {
            stage: GridStage::Occupancy,
            ..chunk.key
        });
        let pass = ForwardPass {
            prepare: &[],
            horizon,
            v_bytes,
            steps,
            v_next: &v_next,
            policy: &policy,
            policy_bands: (chunk.policy_layouts.iter().zip(&policy_groups))
                .map(|(layout, group)| BandDispatch {
                    group,
                    workgroups: layout.dispatch,
                })
                .collect(),
            policy_out: (&step_policy, policy_bytes),
            keep_policy,
            q: keep_q.then_some(&q),
            occupancy: outputs.occupancy.then(|| {
                let bands = (occupancy_groups.iter())
                    .map(|(groups, workgroups)| PairDispatch {
                        groups,
                        workgroups: *workgroups,
                    })
                    .collect();
                (&occupancy, bands)
            }),
            d: &d,
        };
        let out = record_forward(&mut self.core, &pass).await?;
        result.step_policy = out.policy;
        result.step_q = out.q;
        result.occupancy = out.occupancy;
        Ok(())
    }

    /// The `grid_occupancy` ping-pong groups over `d` and their workgroups, one band per policy
    /// band of `chunk` (whole tasks each), reading pi from `step_policy`.
    fn occupancy_groups(
        &mut self,
        inputs: &GridInputs,
        chunk: &GridChunk,
        step_policy: &wgpu::Buffer,
        d: &[wgpu::Buffer; 2],
    ) -> Result<Vec<([wgpu::BindGroup; 2], [u32; 3])>> {
        let masks = self.core.buffer(
            "softvi.move_masks",
            (inputs.cells() * 4) as u64,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        );
        (self.core.queue).write_buffer(&masks, 0, bytemuck::cast_slice(&inputs.move_mask));
        let (n, c, a) = (
            chunk.n as u64,
            inputs.cells() as u64,
            inputs.action_count as u64,
        );
        let wpt = inputs.fixed_words_per_task() as u64;
        let align = self.core.storage_align;
        let base = self.grid_params(inputs);
        // Per policy band: the occupancy of its whole tasks.
        let bands: Vec<_> = (chunk.policy_layouts.iter())
            .map(|layout| {
                let (t0, t1) = (layout.first_cell / c, layout.end_cell / c);
                let fixed_w = window(t0 * wpt, t1 * wpt, n * wpt, 4, align);
                let d_w = window(t0 * c, t1 * c, n * c, 4, align);
                let pi_w = window(t0 * c * a, t1 * c * a, n * c * a, 4, align);
                let (dispatch, _) =
                    band_dispatch(c as usize, (t1 - t0) as usize, self.core.max_workgroups)?;
                let params = GridParams {
                    task_base: t0 as u32,
                    dispatch_x: dispatch[0].max(1),
                    fixed_origin: fixed_w.origin as u32,
                    v_in_origin: d_w.origin as u32,
                    out_origin: pi_w.origin as u32,
                    ..base
                };
                Ok((params, [fixed_w, d_w, pi_w], dispatch))
            })
            .collect::<Result<_>>()?;
        let all: Vec<GridParams> = bands.iter().map(|b| b.0).collect();
        let params = self.core.uniforms("softvi.grid_occupancy_params", &all);
        Ok((bands.iter().enumerate())
            .map(|(i, (_, [fixed_w, d_w, pi_w], dispatch))| {
                let group = |p: usize| {
                    self.core.bind_group(
                        "softvi.grid_occupancy",
                        &self.grid_occupancy.group_layout,
                        [
                            params.bind(i),
                            masks.as_entire_binding(),
                            bind(&chunk.fixed, fixed_w.offset, fixed_w.size),
                            bind(step_policy, pi_w.offset, pi_w.size),
                            bind(&d[p], d_w.offset, d_w.size),
                            bind(&d[1 - p], d_w.offset, d_w.size),
                            // One forward step: no checks, no start (ADD_START off).
                            chunk.checks.partials.as_entire_binding(),
                            chunk.no_policy.as_entire_binding(),
                            chunk.checks.frozen.as_entire_binding(),
                        ],
                    )
                };
                ([group(0), group(1)], *dispatch)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::grid::{ActionSet, Connectivity, Grid, MoveCost};
    use crate::world::grid_problem::GridTask;

    /// A 2 x 5 map widened to 8 columns: walls in the new columns, goals and rewards moved to
    /// the same (row, column), and stripping the padding gives back the original layout.
    #[test]
    fn padding_to_quads_keeps_every_cell_in_place() {
        let problem = GridProblem {
            grid: Grid {
                height: 2,
                width: 5,
                free: vec![true, true, false, true, true, true, true, true, true, false],
            },
            actions: ActionSet {
                connectivity: Connectivity::Eight,
                stay: false,
            },
            slip: 0.0,
            move_cost: MoveCost::default(),
            tasks: vec![GridTask {
                goals: vec![8], // row 1, column 3
                reward: Some((0..10).map(|c| c as f32).collect()),
            }],
        };
        let padded = pad_to_quads(&problem);
        assert_eq!(padded.grid.width, 8);
        let free: Vec<bool> = padded.grid.free.clone();
        assert_eq!(
            free,
            [
                true, true, false, true, true, false, false, false, //
                true, true, true, true, false, false, false, false,
            ]
        );
        assert_eq!(padded.tasks[0].goals, [11]); // row 1, column 3 of 8
        let reward = padded.tasks[0].reward.as_ref().unwrap();
        assert_eq!(reward[8..13], [5.0, 6.0, 7.0, 8.0, 9.0]);
        assert_eq!(reward[13..16], [0.0; 3]);
        // [task][row][col][2]: strip back to the 5 columns.
        let per_cell: Vec<f32> = (0..2 * 8 * 2).map(|x| x as f32).collect();
        let stripped = strip_padding(&per_cell, 8, 5, 2);
        assert_eq!(stripped.len(), 2 * 5 * 2);
        assert_eq!(stripped[..10], per_cell[..10]);
        assert_eq!(stripped[10..], per_cell[16..26]);
        // A width already a multiple of 4 is left alone.
        let mut four = problem.clone();
        four.grid = Grid::open(2, 4);
        four.tasks[0].reward = None;
        four.tasks[0].goals = vec![1];
        assert!(matches!(pad_to_quads(&four), std::borrow::Cow::Borrowed(_)));
    }
}
