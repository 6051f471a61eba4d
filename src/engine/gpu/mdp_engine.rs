//! The GPU path for general tabular MDPs: `shaders/mdp_backup.wgsl` (CSR soft backups,
//! policy) and `shaders/mdp_occupancy.wgsl` (forward messages), driven by the
//! same convergence checks as the grid engine.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Instant;

use crate::error::{Error, Result, ensure_limit};
use bytemuck::{Pod, Zeroable};

use super::chunks::{ChunkResult, solve_in_chunks};
use super::context::GpuContext;
use super::core::{
    EngineOptions, ExtrapolateBand, ExtrapolateParams, GpuCore, Kernels, StepCopies, Window, bind,
    compute_pipeline, invocations, shader_module, storage, window,
};
use super::forward::{BandDispatch, ForwardPass, PairDispatch, record_forward};
use crate::engine::layout::MdpInputs;
use crate::engine::options::{Backup, Horizon, Outputs, SolveOptions};
use crate::engine::schedule::{Progress, Verdict};
use crate::engine::solution::Marks;
use crate::engine::solution::{MdpSolution, check_mdp_solve};
use crate::world::mdp::{TabularMdp, Transpose};

/// WGSL source of the CSR backup and policy kernels.
pub const MDP_BACKUP_WGSL: &str = wgsl!(
    "shared/constants.wgsl",
    "shared/residual_stats.wgsl",
    "shared/log_sum_exp.wgsl",
    "shared/policy_ties.wgsl",
    "mdp_backup.wgsl",
);
/// WGSL source of the occupancy (forward message) kernel.
pub const MDP_OCCUPANCY_WGSL: &str = wgsl!(
    "shared/constants.wgsl",
    "shared/residual_stats.wgsl",
    "mdp_occupancy.wgsl",
);

/// Invocations (states) per workgroup. Same as `WORKGROUP_SIZE` in both shaders.
pub const WORKGROUP_SIZE: u32 = 64;
/// Largest per-chunk array (bytes), whatever the adapter allows.
const MAX_CHUNK_BYTES: u64 = 1 << 30;
/// Most tasks solved together.
const MAX_TASKS_PER_CHUNK: usize = 1024;
/// Bytes a binding window may start before its first used byte (storage offset alignment).
const ALIGN_SLACK: u64 = 256;

/// Per-band uniform of `shaders/mdp_backup.wgsl`. Keep in sync with `MdpParams` there (size
/// checked by tests/kernel_shader_layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct MdpParams {
    pub states: u32,
    pub actions: u32,
    pub task_base: u32,
    pub state_base: u32,
    pub state_count: u32,
    pub dispatch_x: u32,
    pub group_base: u32,
    pub groups_per_task: u32,
    pub fixed_words_per_task: u32,
    pub indptr_origin: u32,
    pub entry_origin: u32,
    pub row_origin: u32,
    pub fixed_origin: u32,
    pub v_in_origin: u32,
    pub out_origin: u32,
    pub gamma: f32,
    pub alpha_ln2: f32,
    pub log2e_over_alpha: f32,
    pub _pad0: u32,
    pub _pad1: u32,
}

/// Per-band uniform of `shaders/mdp_occupancy.wgsl`. Keep in sync with `OccupancyParams`
/// there (size checked by tests/kernel_shader_layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct OccupancyParams {
    pub states: u32,
    pub actions: u32,
    pub task_base: u32,
    pub state_base: u32,
    pub state_count: u32,
    pub dispatch_x: u32,
    pub group_base: u32,
    pub groups_per_task: u32,
    pub entries: u32,
    pub indptr_origin: u32,
    pub entry_origin: u32,
    pub policy_origin: u32,
    pub d_in_origin: u32,
    pub out_origin: u32,
    pub gamma: f32,
    pub weight_origin: u32,
}

/// A window of whole tasks, or of states of one task, dispatched as one unit so that each
/// binding stays within the storage-binding limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MdpBand {
    /// First task, within the chunk.
    pub task_base: usize,
    /// Tasks covered.
    pub task_count: usize,
    /// First state.
    pub state_base: usize,
    /// States covered.
    pub state_count: usize,
}

impl MdpBand {
    /// Tasks `[t0, t1)` and states `[s0, s1)` covered.
    fn span(&self) -> (u64, u64, u64, u64) {
        (
            self.task_base as u64,
            (self.task_base + self.task_count) as u64,
            self.state_base as u64,
            (self.state_base + self.state_count) as u64,
        )
    }
}

/// Splits `tasks` tasks of `states` states into bands whose bindings fit `max_binding` bytes:
/// arrays read over whole tasks take `whole_task_bytes` per task, arrays windowed by state
/// `bytes_per_state` per state and task, and the transition entries of states `[0, s)` are
/// `entries_before(s)` (4 bytes each).
pub fn plan_mdp_bands(
    tasks: usize,
    states: usize,
    whole_task_bytes: u64,
    bytes_per_state: u64,
    entries_before: &dyn Fn(usize) -> u64,
    max_binding: u64,
) -> Result<Vec<MdpBand>> {
    let cap = max_binding.saturating_sub(ALIGN_SLACK);
    if whole_task_bytes > cap {
        return Err(Error::limit(
            format!("an MDP of {states} states, per task in one storage binding,"),
            whole_task_bytes,
            "the adapter's max_storage_buffer_binding_size",
            max_binding,
        ));
    }
    let task_bytes = whole_task_bytes.max(states as u64 * bytes_per_state);
    if task_bytes <= cap && entries_before(states) * 4 <= cap {
        let per_band = ((cap / task_bytes.max(1)) as usize).clamp(1, 65_535);
        return Ok((0..tasks)
            .step_by(per_band)
            .map(|t| MdpBand {
                task_base: t,
                task_count: per_band.min(tasks - t),
                state_base: 0,
                state_count: states,
            })
            .collect());
    }
    let fits = |s0: usize, s1: usize| {
        (s1 - s0) as u64 * bytes_per_state <= cap
            && (entries_before(s1) - entries_before(s0)) * 4 <= cap
    };
    let mut ranges = Vec::new();
    let mut s0 = 0;
    while s0 < states {
        if !fits(s0, s0 + 1) {
            return Err(Error::limit(
                format!("state {s0} alone, with its transitions,"),
                (bytes_per_state + (entries_before(s0 + 1) - entries_before(s0)) * 4).max(cap + 1),
                "the adapter's max_storage_buffer_binding_size",
                max_binding,
            ));
        }
        // Largest fitting range by doubling, then bisection.
        let (mut lo, mut step) = (s0 + 1, 1usize);
        while lo < states && fits(s0, (lo + step).min(states)) {
            lo = (lo + step).min(states);
            step *= 2;
        }
        while step > 1 {
            step /= 2;
            if lo < states && fits(s0, (lo + step).min(states)) {
                lo = (lo + step).min(states);
            }
        }
        ranges.push(s0..lo);
        s0 = lo;
    }
    Ok((0..tasks)
        .flat_map(|t| {
            ranges.iter().map(move |r| MdpBand {
                task_base: t,
                task_count: 1,
                state_base: r.start,
                state_count: r.len(),
            })
        })
        .collect())
}

/// Workgroups of a band of `states` states and `tasks` tasks, `[x, y, z]`, and the
/// workgroups per task.
fn band_dispatch(states: usize, tasks: usize) -> ([u32; 3], u32) {
    let groups = (states as u32).div_ceil(WORKGROUP_SIZE);
    let x = groups.clamp(1, 65_535);
    let dispatch = if groups == 0 {
        [0, 0, 0]
    } else {
        [x, groups.div_ceil(x), tasks as u32]
    };
    (dispatch, groups)
}

/// Partial-slot offsets per band: bands of one task's state ranges follow each other; a band
/// starting at state 0 starts at slot 0. Returns the offsets and the slots per task.
fn group_bases(bands: &[MdpBand]) -> (Vec<u32>, u32) {
    let (mut bases, mut base, mut per_task) = (Vec::new(), 0u32, 0u32);
    for band in bands {
        if band.state_base == 0 {
            base = 0;
        }
        bases.push(base);
        base += band_dispatch(band.state_count, band.task_count).1;
        per_task = per_task.max(base);
    }
    (bases, per_task)
}

/// One band's uniform, binding windows and dispatch.
struct Layout<P> {
    params: P,
    windows: Vec<Window>,
    dispatch: [u32; 3],
}

impl Layout<MdpParams> {
    /// This band of the backup kernels as `extrapolate` sees it.
    fn extrapolate_band(&self) -> ExtrapolateBand {
        let p = &self.params;
        ExtrapolateBand {
            params: ExtrapolateParams {
                values_per_task: p.states,
                task_base: p.task_base,
                first: p.state_base,
                count: p.state_count,
                dispatch_x: p.dispatch_x,
                invocations: invocations(self.dispatch),
                fixed_words_per_task: p.fixed_words_per_task,
                fixed_origin: p.fixed_origin,
                prev_origin: p.v_in_origin,
                out_origin: p.out_origin,
                ..Default::default()
            },
            fixed: self.windows[3],
            prev: self.windows[4],
            values: self.windows[5],
        }
    }
}

/// Entry points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum MdpStage {
    Backup,
    Policy,
    Occupancy,
    OccupancyWeights,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct MdpPipelineKey {
    stage: MdpStage,
    optimistic: bool,
    hard_max: bool,
    write_residual: bool,
    add_start: bool,
    /// The occupancy pull reads folded weights.
    weighted: bool,
    /// Actions, for the occupancy pull (0 for the other stages).
    actions: u32,
}

/// The arrays of one MDP on the device, shared by every chunk of tasks.
struct Dynamics {
    indptr: wgpu::Buffer,
    successors: wgpu::Buffer,
    probs: wgpu::Buffer,
    incoming: Option<(wgpu::Buffer, wgpu::Buffer, wgpu::Buffer, Vec<u32>)>,
}

/// The bindings of `shaders/mdp_backup.wgsl` that stay the same across a run's dispatches.
struct BackupBindings<'a> {
    dynamics: &'a Dynamics,
    reward: &'a wgpu::Buffer,
    fixed: &'a wgpu::Buffer,
    partials: &'a wgpu::Buffer,
}

/// Batched general-MDP soft value iteration and occupancy on one wgpu device. Pipelines,
/// layouts and buffers are built once and reused by every solve.
pub struct MdpEngine {
    core: GpuCore,
    backup_module: wgpu::ShaderModule,
    backup_layout: wgpu::BindGroupLayout,
    backup_pipeline_layout: wgpu::PipelineLayout,
    occupancy_module: wgpu::ShaderModule,
    occupancy_layout: wgpu::BindGroupLayout,
    occupancy_pipeline_layout: wgpu::PipelineLayout,
    pipelines: HashMap<MdpPipelineKey, wgpu::ComputePipeline>,
    uniform_stride: u64,
}

impl MdpEngine {
    /// An engine on `ctx`'s device with the adapter's limits.
    pub fn new(ctx: &GpuContext) -> Result<Self> {
        Self::with_options(ctx, EngineOptions::default())
    }

    /// An engine on `ctx`'s device with the given size limits (each at most the device's).
    pub fn with_options(ctx: &GpuContext, options: EngineOptions) -> Result<Self> {
        let core = GpuCore::new(ctx, options);
        let uniform = wgpu::BufferBindingType::Uniform;
        // Binding order = position in these lists; the shaders declare the same order.
        let (backup_layout, backup_pipeline_layout) = core.layouts(
            "softvi.mdp_backup",
            &[
                uniform,        // params
                storage(true),  // indptr
                storage(true),  // successors
                storage(true),  // probs
                storage(true),  // reward
                storage(true),  // fixed_bits
                storage(true),  // v_in
                storage(false), // v_out
                storage(false), // partials
                storage(false), // out
            ],
        );
        let (occupancy_layout, occupancy_pipeline_layout) = core.layouts(
            "softvi.mdp_occupancy",
            &[
                uniform,        // params
                storage(true),  // incoming_indptr
                storage(true),  // incoming
                storage(true),  // incoming_probs
                storage(true),  // policy
                storage(true),  // d_in
                storage(false), // d_out
                storage(false), // partials
                storage(true),  // start
                storage(false), // weights
            ],
        );
        let module = |label, source: &str| shader_module(&core.device, label, source);
        let backup_module = module("softvi.mdp_backup", MDP_BACKUP_WGSL);
        let occupancy_module = module("softvi.mdp_occupancy", MDP_OCCUPANCY_WGSL);
        let uniform_stride = (size_of::<MdpParams>().max(size_of::<OccupancyParams>()) as u64)
            .next_multiple_of(core.uniform_align);
        Ok(Self {
            core,
            backup_module,
            backup_layout,
            backup_pipeline_layout,
            occupancy_module,
            occupancy_layout,
            occupancy_pipeline_layout,
            pipelines: HashMap::new(),
            uniform_stride,
        })
    }

    /// `"<adapter name> (<backend>)"` of the device this engine runs on.
    pub fn adapter_label(&self) -> &str {
        &self.core.adapter_label
    }

    fn pipeline(&mut self, key: MdpPipelineKey) -> wgpu::ComputePipeline {
        if let Some(p) = self.pipelines.get(&key) {
            return p.clone();
        }
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let (entry, module, layout, constants) = match key.stage {
            MdpStage::Occupancy | MdpStage::OccupancyWeights => (
                if key.stage == MdpStage::Occupancy {
                    "mdp_occupancy"
                } else {
                    "mdp_occupancy_weights"
                },
                &self.occupancy_module,
                &self.occupancy_pipeline_layout,
                vec![
                    ("ADD_START", flag(key.add_start)),
                    ("WRITE_RESIDUAL", flag(key.write_residual)),
                    ("ACTIONS", key.actions as f64),
                    ("WEIGHTED", flag(key.weighted)),
                ],
            ),
            stage => (
                match stage {
                    MdpStage::Backup => "mdp_backup",
                    _ => "mdp_policy",
                },
                &self.backup_module,
                &self.backup_pipeline_layout,
                vec![
                    ("OPTIMISTIC", flag(key.optimistic)),
                    ("HARD_MAX", flag(key.hard_max)),
                    ("WRITE_RESIDUAL", flag(key.write_residual)),
                ],
            ),
        };
        let pipeline = compute_pipeline(&self.core.device, layout, module, entry, &constants);
        self.pipelines.insert(key, pipeline.clone());
        pipeline
    }

    /// Solves every task of `mdp`; the result has the same layout and meaning as
    /// [`crate::engine::cpu::solve_mdp_cpu`]'s.
    pub fn solve(
        &mut self,
        mdp: &TabularMdp,
        options: &SolveOptions,
        outputs: Outputs,
    ) -> Result<MdpSolution> {
        self.solve_with_progress(mdp, options, outputs, &mut |_| {})
    }

    /// [`MdpEngine::solve`], calling `progress` after every submission's checks.
    pub fn solve_with_progress(
        &mut self,
        mdp: &TabularMdp,
        options: &SolveOptions,
        outputs: Outputs,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<MdpSolution> {
        let start = Instant::now();
        check_mdp_solve(mdp, options)?;
        let inputs = MdpInputs::new(mdp, options);
        let finite = matches!(options.horizon, Horizon::Finite(_));
        let horizon = options.horizon.finite_steps() as u64;
        let keep_steps = finite && (outputs.all_steps || outputs.occupancy);
        // Bytes per task of the largest per-chunk array.
        let (s, a) = (mdp.states as u64, mdp.actions as u64);
        let mut task_bytes = s * a * 4;
        if keep_steps {
            task_bytes = task_bytes.max((horizon + 1) * s * 4);
        }
        if outputs.occupancy && !finite && mdp.nonzeros() as u64 * 4 + 256 <= self.core.max_binding
        {
            // The discounted sum's per-entry weights.
            task_bytes = task_bytes.max(mdp.nonzeros() as u64 * 4);
        }
        let budget = self.core.max_buffer.min(MAX_CHUNK_BYTES);
        ensure_limit(
            task_bytes,
            budget,
            || {
                let kept = if keep_steps {
                    format!(" kept over {} steps", horizon + 1)
                } else {
                    String::new()
                };
                format!("an MDP of {s} states and {a} actions{kept}, per task in one buffer,")
            },
            format_args!(
                "the per-chunk limit (adapter max_buffer_size {} bytes)",
                self.core.max_buffer
            ),
        )?;
        let per_chunk = ((budget / task_bytes) as usize).clamp(1, MAX_TASKS_PER_CHUNK);
        let dynamics = self.upload_dynamics(mdp, outputs.occupancy)?;

        let adapter = self.core.adapter_label.clone();
        let gathered = solve_in_chunks(
            mdp.tasks,
            per_chunk,
            options,
            ("GPU MDP solve", &adapter),
            &mut |tasks| self.solve_chunk(&inputs, &dynamics, tasks, options, outputs, progress),
        )?;
        // Terminal states keep their value; excluded ones report -inf; the policy is NaN on
        // both, as the CPU's (mdp_policy writes zeros there, which the occupancy pull needs).
        let marks = Marks {
            states: mdp.states,
            free: None,
            excluded: &inputs.excluded,
            fixed: &inputs.fixed,
        };
        Ok(gathered.into_solution(
            options,
            outputs,
            &marks,
            ((1, mdp.states), mdp.actions),
            inputs.unreachable.clone(),
            start,
        ))
    }

    /// Uploads the transitions (and their transpose, for the occupancy).
    fn upload_dynamics(&mut self, mdp: &TabularMdp, occupancy: bool) -> Result<Dynamics> {
        use wgpu::BufferUsages as U;
        let core = &mut self.core;
        let nnz = mdp.nonzeros() as u64;
        core.ensure_buffer("the transition entries", nnz * 4)?;
        let upload = |core: &mut GpuCore, label, bytes: &[u8]| {
            let buffer = core.buffer(label, bytes.len() as u64, U::STORAGE | U::COPY_DST);
            core.queue.write_buffer(&buffer, 0, bytes);
            buffer
        };
        let indptr = upload(core, "softvi.indptr", bytemuck::cast_slice(&mdp.indptr));
        let successors = upload(
            core,
            "softvi.successors",
            bytemuck::cast_slice(&mdp.indices),
        );
        let probs = upload(core, "softvi.probs", bytemuck::cast_slice(&mdp.probs));
        let incoming = occupancy.then(|| {
            let Transpose {
                indptr,
                rows,
                probs,
            } = mdp.transpose();
            (
                upload(
                    core,
                    "softvi.incoming_indptr",
                    bytemuck::cast_slice(&indptr),
                ),
                upload(core, "softvi.incoming", bytemuck::cast_slice(&rows)),
                upload(core, "softvi.incoming_probs", bytemuck::cast_slice(&probs)),
                indptr,
            )
        });
        Ok(Dynamics {
            indptr,
            successors,
            probs,
            incoming,
        })
    }

    /// The backup kernels' layout of `bands` of a chunk of `tasks` tasks.
    fn backup_layouts(
        &self,
        inputs: &MdpInputs,
        tasks: usize,
        bands: &[MdpBand],
    ) -> Vec<Layout<MdpParams>> {
        let mdp = inputs.mdp;
        let (s, a) = (mdp.states as u64, mdp.actions as u64);
        let wpt = s.div_ceil(32);
        let nnz = mdp.nonzeros() as u64;
        let align = self.core.storage_align;
        let alpha = inputs.alpha as f32;
        let (bases, per_task) = group_bases(bands);
        bands
            .iter()
            .zip(bases)
            .map(|(band, group_base)| {
                let (t0, t1, s0, s1) = band.span();
                let (e0, e1) = (
                    mdp.indptr[(s0 * a) as usize] as u64,
                    mdp.indptr[(s1 * a) as usize] as u64,
                );
                let windows = vec![
                    window(s0 * a, s1 * a + 1, s * a + 1, 4, align),
                    window(e0, e1.max(e0 + 1), nnz, 4, align),
                    window(
                        (t0 * s + s0) * a,
                        ((t1 - 1) * s + s1) * a,
                        tasks as u64 * s * a,
                        4,
                        align,
                    ),
                    window(
                        t0 * wpt + s0 / 32,
                        (t1 - 1) * wpt + s1.div_ceil(32),
                        tasks as u64 * wpt,
                        4,
                        align,
                    ),
                    window(t0 * s, t1 * s, tasks as u64 * s, 4, align),
                    window(t0 * s + s0, (t1 - 1) * s + s1, tasks as u64 * s, 4, align),
                ];
                let (dispatch, _) = band_dispatch(band.state_count, band.task_count);
                let params = MdpParams {
                    states: s as u32,
                    actions: a as u32,
                    task_base: band.task_base as u32,
                    state_base: band.state_base as u32,
                    state_count: band.state_count as u32,
                    dispatch_x: dispatch[0].max(1),
                    group_base,
                    groups_per_task: per_task,
                    fixed_words_per_task: wpt as u32,
                    indptr_origin: windows[0].origin as u32,
                    entry_origin: windows[1].origin as u32,
                    row_origin: windows[2].origin as u32,
                    fixed_origin: windows[3].origin as u32,
                    v_in_origin: windows[4].origin as u32,
                    out_origin: windows[5].origin as u32,
                    gamma: inputs.gamma as f32,
                    alpha_ln2: alpha * std::f32::consts::LN_2,
                    log2e_over_alpha: if alpha > 0.0 {
                        std::f32::consts::LOG2_E / alpha
                    } else {
                        0.0
                    },
                    ..Default::default()
                };
                Layout {
                    params,
                    windows,
                    dispatch,
                }
            })
            .collect()
    }

    /// The occupancy kernel's layout of `bands` of a chunk of `tasks` tasks.
    fn occupancy_layouts(
        &self,
        inputs: &MdpInputs,
        incoming_indptr: &[u32],
        tasks: usize,
        bands: &[MdpBand],
    ) -> Vec<Layout<OccupancyParams>> {
        let mdp = inputs.mdp;
        let (s, a) = (mdp.states as u64, mdp.actions as u64);
        let nnz = mdp.nonzeros() as u64;
        let align = self.core.storage_align;
        let (bases, per_task) = group_bases(bands);
        bands
            .iter()
            .zip(bases)
            .map(|(band, group_base)| {
                let (t0, t1, s0, s1) = band.span();
                let (e0, e1) = (
                    incoming_indptr[s0 as usize] as u64,
                    incoming_indptr[s1 as usize] as u64,
                );
                let windows = vec![
                    window(s0, s1 + 1, s + 1, 4, align),
                    window(e0, e1.max(e0 + 1), nnz, 4, align),
                    window(t0 * s * a, t1 * s * a, tasks as u64 * s * a, 4, align),
                    window(t0 * s, t1 * s, tasks as u64 * s, 4, align),
                    window(t0 * s + s0, (t1 - 1) * s + s1, tasks as u64 * s, 4, align),
                    window(
                        t0 * nnz + e0,
                        ((t1 - 1) * nnz + e1).max(t0 * nnz + e0 + 1),
                        tasks as u64 * nnz,
                        4,
                        align,
                    ),
                ];
                let (dispatch, _) = band_dispatch(band.state_count, band.task_count);
                let params = OccupancyParams {
                    states: s as u32,
                    actions: a as u32,
                    task_base: band.task_base as u32,
                    state_base: band.state_base as u32,
                    state_count: band.state_count as u32,
                    dispatch_x: dispatch[0].max(1),
                    group_base,
                    groups_per_task: per_task,
                    indptr_origin: windows[0].origin as u32,
                    entry_origin: windows[1].origin as u32,
                    policy_origin: windows[2].origin as u32,
                    d_in_origin: windows[3].origin as u32,
                    out_origin: windows[4].origin as u32,
                    gamma: inputs.gamma as f32,
                    entries: nnz as u32,
                    weight_origin: windows[5].origin as u32,
                };
                Layout {
                    params,
                    windows,
                    dispatch,
                }
            })
            .collect()
    }

    fn backup_group(
        &self,
        params: (&wgpu::Buffer, u64),
        layout: &Layout<MdpParams>,
        common: &BackupBindings,
        v_in: &wgpu::Buffer,
        v_out: &wgpu::Buffer,
        out: (&wgpu::Buffer, u64, u64),
    ) -> wgpu::BindGroup {
        let w = &layout.windows;
        let dynamics = common.dynamics;
        self.core.bind_group(
            "softvi.mdp_backup",
            &self.backup_layout,
            [
                bind(params.0, params.1, size_of::<MdpParams>() as u64),
                bind(&dynamics.indptr, w[0].offset, w[0].size),
                bind(&dynamics.successors, w[1].offset, w[1].size),
                bind(&dynamics.probs, w[1].offset, w[1].size),
                bind(common.reward, w[2].offset, w[2].size),
                bind(common.fixed, w[3].offset, w[3].size),
                bind(v_in, w[4].offset, w[4].size),
                bind(v_out, w[5].offset, w[5].size),
                common.partials.as_entire_binding(),
                bind(out.0, out.1, out.2),
            ],
        )
    }

    /// The ping-pong pair of a band over `values`: group p reads `values[p]` and writes
    /// `values[1 - p]`; `out` (which the sweeps leave alone) is `backup`'s v_out window.
    fn backup_pair(
        &self,
        params: (&wgpu::Buffer, u64),
        layout: &Layout<MdpParams>,
        common: &BackupBindings,
        values: &[wgpu::Buffer; 2],
        backup: &wgpu::Buffer,
    ) -> [wgpu::BindGroup; 2] {
        let out = (backup, layout.windows[5].offset, layout.windows[5].size);
        let group =
            |p: usize| self.backup_group(params, layout, common, &values[p], &values[1 - p], out);
        [group(0), group(1)]
    }

    fn solve_chunk(
        &mut self,
        inputs: &MdpInputs,
        dynamics: &Dynamics,
        tasks: Range<usize>,
        options: &SolveOptions,
        outputs: Outputs,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<ChunkResult> {
        use wgpu::BufferUsages as U;
        let mdp = inputs.mdp;
        let n = tasks.len();
        let (s, a) = (mdp.states, mdp.actions);
        let wpt = s.div_ceil(32);
        let max_binding = self.core.max_binding;
        let entries = |state: usize| mdp.indptr[state * a] as u64;
        let bands = plan_mdp_bands(n, s, s as u64 * 4, a as u64 * 4, &entries, max_binding)?;
        let layouts = self.backup_layouts(inputs, n, &bands);
        let dispatch: Vec<[u32; 3]> = layouts.iter().map(|l| l.dispatch).collect();
        let checks = self
            .core
            .checks(n, layouts[0].params.groups_per_task, &dispatch, options)?;
        let finite = matches!(options.horizon, Horizon::Finite(_));
        let horizon = options.horizon.finite_steps();
        let keep_steps = finite && (outputs.all_steps || outputs.occupancy);

        // Buffers and uploads.
        let core = &mut self.core;
        let v_bytes = (n * s * 4) as u64;
        let row_bytes = v_bytes * a as u64;
        let usage = U::STORAGE | U::COPY_SRC | U::COPY_DST;
        let values = [
            core.buffer("softvi.values_a", v_bytes, usage),
            core.buffer("softvi.values_b", v_bytes, usage),
        ];
        let reward = core.buffer("softvi.reward", row_bytes, U::STORAGE | U::COPY_DST);
        let fixed = core.buffer(
            "softvi.fixed_bits",
            (n * wpt * 4) as u64,
            U::STORAGE | U::COPY_DST,
        );
        let policy_buf = core.buffer("softvi.policy", row_bytes, U::STORAGE | U::COPY_SRC);
        let backup = core.buffer("softvi.backup", v_bytes, U::STORAGE);
        let params_buf = core.buffer(
            "softvi.mdp_params",
            2 * layouts.len() as u64 * self.uniform_stride,
            U::UNIFORM | U::COPY_DST,
        );
        let steps_buf = if keep_steps {
            core.ensure_buffer("the values of every step", (horizon as u64 + 1) * v_bytes)?;
            Some(core.buffer(
                "softvi.step_values",
                (horizon as u64 + 1) * v_bytes,
                U::COPY_SRC | U::COPY_DST,
            ))
        } else {
            None
        };
        let q = core.queue.clone();
        let range = tasks.start * s..tasks.end * s;
        q.write_buffer(
            &reward,
            0,
            bytemuck::cast_slice(&mdp.reward[range.start * a..range.end * a]),
        );
        let mut bits = vec![0u32; n * wpt];
        for t in 0..n {
            for state in 0..s {
                if inputs.fixed[range.start + t * s + state] {
                    bits[t * wpt + state / 32] |= 1 << (state % 32);
                }
            }
        }
        q.write_buffer(&fixed, 0, bytemuck::cast_slice(&bits));
        let v0: Vec<f32> = inputs.v0[range.clone()].iter().map(|&x| x as f32).collect();
        for buffer in &values {
            q.write_buffer(buffer, 0, bytemuck::cast_slice(&v0));
        }
        if let Some(steps) = &steps_buf {
            q.write_buffer(steps, horizon as u64 * v_bytes, bytemuck::cast_slice(&v0));
        }
        for (b, layout) in layouts.iter().enumerate() {
            q.write_buffer(
                &params_buf,
                b as u64 * self.uniform_stride,
                bytemuck::bytes_of(&layout.params),
            );
        }
        let common = BackupBindings {
            dynamics,
            reward: &reward,
            fixed: &fixed,
            partials: &checks.partials,
        };
        let groups: Vec<[wgpu::BindGroup; 2]> = layouts
            .iter()
            .enumerate()
            .map(|(b, layout)| {
                let params = (&params_buf, b as u64 * self.uniform_stride);
                self.backup_pair(params, layout, &common, &values, &backup)
            })
            .collect();
        let key = MdpPipelineKey {
            stage: MdpStage::Backup,
            optimistic: inputs.backup == Backup::Optimistic,
            hard_max: inputs.alpha == 0.0,
            write_residual: false,
            add_start: false,
            weighted: false,
            actions: 0,
        };
        let sweep = self.pipeline(key);
        let sweep_checked = self.pipeline(MdpPipelineKey {
            write_residual: true,
            ..key
        });
        let extrapolate = self.core.extrapolate_pipeline.clone();
        let extrapolate_groups = match options.uses_extrapolation() {
            true => {
                let bands: Vec<_> = layouts.iter().map(Layout::extrapolate_band).collect();
                self.core.extrapolate_groups(
                    "softvi.extrapolate_params",
                    &bands,
                    &fixed,
                    &values,
                    &backup,
                    &checks.extrapolation,
                )
            }
            false => Vec::new(),
        };
        let policy_pipeline = self.pipeline(MdpPipelineKey {
            stage: MdpStage::Policy,
            ..key
        });

        let kernels = Kernels {
            sweep: &sweep,
            sweep_checked: &sweep_checked,
            extrapolate: &extrapolate,
            sweep_groups: &groups,
            extrapolate_groups: &extrapolate_groups,
            keep_steps: steps_buf.as_ref().map(|steps| StepCopies {
                values: &values,
                steps,
                horizon,
                bytes: v_bytes,
            }),
        };
        let run = self.core.iterate(
            &checks,
            options,
            &mut |encoder, step| kernels.record(encoder, &checks, step),
            progress,
        )?;
        let diverged = matches!(run.verdict, Verdict::Diverged(_));
        let v_final = (run.sweeps % 2) as usize;
        let values_out = self.core.read_f32(&values[v_final], 0, v_bytes)?;

        // pi from the values in `v`: written to policy_buf by every band.
        // pi from the values in `v`, written to policy_buf by every band.
        let policy_groups = |this: &Self, v: &wgpu::Buffer| -> Vec<wgpu::BindGroup> {
            layouts
                .iter()
                .enumerate()
                .map(|(b, layout)| {
                    let params = (&params_buf, b as u64 * this.uniform_stride);
                    let out = (
                        &policy_buf,
                        layout.windows[2].offset,
                        layout.windows[2].size,
                    );
                    this.backup_group(params, layout, &common, v, &backup, out)
                })
                .collect()
        };
        let record_policy =
            |this: &Self, encoder: &mut wgpu::CommandEncoder, groups: &[wgpu::BindGroup]| {
                for (layout, group) in layouts.iter().zip(groups) {
                    this.core
                        .dispatch(encoder, &policy_pipeline, group, layout.dispatch);
                }
            };
        let mut result = ChunkResult::new(values_out, run);
        if diverged {
            return Ok(result);
        }
        let wants_policy = options.policy || (outputs.occupancy && !finite);
        if wants_policy {
            // Finite horizon: pi_0 comes from V_1, the values the last sweep read.
            let from = if finite { 1 - v_final } else { v_final };
            let mut encoder = self.core.device.create_command_encoder(&Default::default());
            record_policy(self, &mut encoder, &policy_groups(self, &values[from]));
            self.core.queue.submit([encoder.finish()]);
            if options.policy {
                result.policy = Some(self.core.read_f32(&policy_buf, 0, row_bytes)?);
            }
        }
        if let (Some(steps), true) = (&steps_buf, outputs.all_steps) {
            let step_values = self
                .core
                .read_f32(steps, 0, (horizon as u64 + 1) * v_bytes)?;
            result.step_values = step_values
                .chunks_exact(n * s)
                .map(<[f32]>::to_vec)
                .collect();
        }
        let steps_policy = outputs.all_steps && finite && options.policy;
        if !outputs.occupancy && !steps_policy {
            return Ok(result);
        }

        // Forward pass; the discounted sum iterates on the start scaled to a peak of 1.
        let (scaled, scales) = crate::engine::solution::scaled_start(mdp);
        let (start, scales): (Vec<f32>, &[f64]) = if finite {
            (mdp.initial[range.clone()].to_vec(), &[])
        } else {
            (scaled[range.clone()].to_vec(), &scales[tasks.clone()])
        };
        // The discounted sum folds pi(a|s) P(s'|s,a) into per-entry weights once, when a task's
        // weights fit one binding: its sweeps then gather only d.
        let nnz = mdp.nonzeros() as u64;
        let weighted = !finite && nnz * 4 + 256 <= max_binding;
        let occupancy_bands = match &dynamics.incoming {
            Some((_, _, _, incoming_indptr)) => {
                let incoming = |state: usize| incoming_indptr[state] as u64;
                let whole_task = (s * a * 4) as u64;
                let whole_task = if weighted {
                    whole_task.max(nnz * 4)
                } else {
                    whole_task
                };
                plan_mdp_bands(n, s, whole_task, 4, &incoming, max_binding)?
            }
            None => Vec::new(),
        };
        let occupancy_layouts = match &dynamics.incoming {
            Some((_, _, _, incoming_indptr)) => {
                self.occupancy_layouts(inputs, incoming_indptr, n, &occupancy_bands)
            }
            None => Vec::new(),
        };
        let core = &mut self.core;
        let d = [
            core.buffer("softvi.occupancy_a", v_bytes, usage),
            core.buffer("softvi.occupancy_b", v_bytes, usage),
        ];
        let start_buf = core.buffer("softvi.start", v_bytes, U::STORAGE | U::COPY_DST);
        let weights = match weighted {
            true => core.buffer("softvi.occupancy_weights", n as u64 * nnz * 4, U::STORAGE),
            false => core.buffer("softvi.no_weights", 16, U::STORAGE),
        };
        let occ_params = core.buffer(
            "softvi.occupancy_params",
            occupancy_layouts.len().max(1) as u64 * self.uniform_stride,
            U::UNIFORM | U::COPY_DST,
        );
        let q = core.queue.clone();
        q.write_buffer(&start_buf, 0, bytemuck::cast_slice(&start));
        q.write_buffer(&d[0], 0, bytemuck::cast_slice(&start));
        let occupancy_groups = |this: &Self| -> Vec<[wgpu::BindGroup; 2]> {
            let Some((indptr, rows, probs, _)) = &dynamics.incoming else {
                return Vec::new();
            };
            occupancy_layouts
                .iter()
                .enumerate()
                .map(|(b, layout)| {
                    let slot = b as u64 * this.uniform_stride;
                    let w = &layout.windows;
                    let group = |p: usize| {
                        this.core.bind_group(
                            "softvi.mdp_occupancy",
                            &this.occupancy_layout,
                            [
                                bind(&occ_params, slot, size_of::<OccupancyParams>() as u64),
                                bind(indptr, w[0].offset, w[0].size),
                                bind(rows, w[1].offset, w[1].size),
                                bind(probs, w[1].offset, w[1].size),
                                bind(&policy_buf, w[2].offset, w[2].size),
                                bind(&d[p], w[3].offset, w[3].size),
                                bind(&d[1 - p], w[4].offset, w[4].size),
                                checks.partials.as_entire_binding(),
                                bind(&start_buf, w[4].offset, w[4].size),
                                match weighted {
                                    true => bind(&weights, w[5].offset, w[5].size),
                                    false => weights.as_entire_binding(),
                                },
                            ],
                        )
                    };
                    [group(0), group(1)]
                })
                .collect()
        };
        for (b, layout) in occupancy_layouts.iter().enumerate() {
            q.write_buffer(
                &occ_params,
                b as u64 * self.uniform_stride,
                bytemuck::bytes_of(&layout.params),
            );
        }
        let occupancy_key = MdpPipelineKey {
            stage: MdpStage::Occupancy,
            optimistic: false,
            hard_max: false,
            write_residual: false,
            add_start: false,
            weighted: false,
            actions: a as u32,
        };
        if finite {
            // D_{t+1} from D_t under pi_t (from V_{t+1}); pi_t kept when every step is asked for.
            let steps = steps_buf.as_ref().expect("steps kept");
            let v_next = self.core.buffer("softvi.step_v", v_bytes, usage);
            let pipeline = self.pipeline(occupancy_key);
            let groups = occupancy_groups(self);
            let step_policy = policy_groups(self, &v_next);
            let pass = ForwardPass {
                horizon,
                v_bytes,
                steps,
                v_next: &v_next,
                policy: &policy_pipeline,
                policy_bands: (layouts.iter().zip(&step_policy))
                    .map(|(layout, group)| BandDispatch {
                        group,
                        workgroups: layout.dispatch,
                    })
                    .collect(),
                policy_out: (&policy_buf, row_bytes),
                keep_policy: steps_policy,
                occupancy: outputs.occupancy.then(|| {
                    let bands = (occupancy_layouts.iter().zip(&groups))
                        .map(|(layout, groups)| PairDispatch {
                            groups,
                            workgroups: layout.dispatch,
                        })
                        .collect();
                    (&pipeline, bands)
                }),
                d: &d,
            };
            let out = record_forward(&mut self.core, &pass)?;
            result.step_policy = out.policy;
            result.occupancy = out.occupancy;
            return Ok(result);
        }
        if !outputs.occupancy {
            return Ok(result);
        }
        // Discounted occupancy: d = start + gamma * pull(d), iterated to tol like the values.
        let zero_bits = self.core.buffer(
            "softvi.no_fixed_bits",
            (n * wpt * 4) as u64,
            U::STORAGE | U::COPY_DST,
        );
        let mut encoder = self.core.device.create_command_encoder(&Default::default());
        encoder.clear_buffer(&zero_bits, 0, None);
        self.core.queue.submit([encoder.finish()]);
        let dispatch: Vec<[u32; 3]> = occupancy_layouts.iter().map(|l| l.dispatch).collect();
        let checks = self.core.checks(
            n,
            occupancy_layouts[0].params.groups_per_task,
            &dispatch,
            options,
        )?;
        let groups = occupancy_groups(self);
        // The extrapolation runs over the occupancy bands (laid out as the backup's: the same
        // states and dispatch) with no fixed state.
        let extrapolate_bands: Vec<_> = self
            .backup_layouts(inputs, n, &occupancy_bands)
            .iter()
            .map(Layout::extrapolate_band)
            .collect();
        let extrapolate_groups = match options.uses_extrapolation() {
            true => self.core.extrapolate_groups(
                "softvi.occupancy_extrapolate_params",
                &extrapolate_bands,
                &zero_bits,
                &d,
                &backup,
                &checks.extrapolation,
            ),
            false => Vec::new(),
        };
        let occupancy_key = MdpPipelineKey {
            weighted,
            ..occupancy_key
        };
        if weighted {
            let fold = self.pipeline(MdpPipelineKey {
                stage: MdpStage::OccupancyWeights,
                ..occupancy_key
            });
            let mut encoder = self.core.device.create_command_encoder(&Default::default());
            for (layout, group) in occupancy_layouts.iter().zip(&groups) {
                self.core
                    .dispatch(&mut encoder, &fold, &group[0], layout.dispatch);
            }
            self.core.queue.submit([encoder.finish()]);
        }
        let accumulate = self.pipeline(MdpPipelineKey {
            add_start: true,
            ..occupancy_key
        });
        let accumulate_checked = self.pipeline(MdpPipelineKey {
            add_start: true,
            write_residual: true,
            ..occupancy_key
        });
        let kernels = Kernels {
            sweep: &accumulate,
            sweep_checked: &accumulate_checked,
            extrapolate: &extrapolate,
            sweep_groups: &groups,
            extrapolate_groups: &extrapolate_groups,
            keep_steps: None,
        };
        let occupancy_run = self.core.iterate(
            &checks,
            options,
            &mut |encoder, step| kernels.record(encoder, &checks, step),
            &mut |_| {},
        )?;
        let last = (occupancy_run.sweeps % 2) as usize;
        let mut d_final = self.core.read_f32(&d[last], 0, v_bytes)?;
        for (i, x) in d_final.iter_mut().enumerate() {
            *x = (*x as f64 / scales[i / s]) as f32;
        }
        result.occupancy = vec![d_final];
        result.occupancy_run = Some(occupancy_run);
        Ok(result)
    }
}
