//! The GPU path for gridworlds: pipelines for `shaders/grid_backup.wgsl` and
//! `shaders/residual_reduce.wgsl`, built once per engine, and the solve driver that records
//! many sweeps per submission and checks convergence on the GPU.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytemuck::{Pod, Zeroable};

use super::context::GpuContext;
use crate::layout::GridInputs;
use crate::problem::{Backup, GridProblem, Horizon, SolveOptions};
use crate::reference::SweepStats;
use crate::solve::{
    ConvergenceMonitor, Progress, Solution, Verdict, check_windows, final_status,
    mark_special_cells, sweep_budget,
};

/// WGSL source of the backup and policy kernels.
pub const GRID_BACKUP_WGSL: &str = include_str!("../../shaders/grid_backup.wgsl");
/// WGSL source of the convergence reduction.
pub const RESIDUAL_REDUCE_WGSL: &str = include_str!("../../shaders/residual_reduce.wgsl");

/// Invocations (quads) per workgroup of the grid kernels. Same as `WORKGROUP_SIZE` in the
/// shader.
pub const WORKGROUP_SIZE: u32 = 64;
/// Invocations of one `residual_reduce` workgroup. Same as `REDUCE_SIZE` in the shader.
pub const REDUCE_SIZE: u32 = 256;
/// `Control::converged_check` before convergence. Same as `NOT_CONVERGED` in the shader.
pub const NOT_CONVERGED: u32 = u32::MAX;
/// Bytes of `Control` before its `dispatch_args` array.
pub const CONTROL_HEADER_BYTES: u64 = 16;

/// Most convergence checks recorded into one submission (submissions grow 1, 2, 4, ...).
const MAX_CHECKS_PER_SUBMIT: usize = 64;
/// Most tasks solved together; larger batches run as several chunks.
const MAX_TASKS_PER_CHUNK: usize = 1024;
/// Largest value array of a chunk (bytes), whatever the adapter allows.
const MAX_CHUNK_BYTES: u64 = 1 << 30;
/// Largest staging buffer used for readback (bytes).
const STAGING_BYTES: u64 = 64 << 20;
/// Elements a binding window may start before its first used element (storage offsets are
/// aligned to at most 256 bytes).
const WINDOW_SLACK: u64 = 64;

/// Per-band uniform of the grid kernels. Keep in sync with `GridParams` in
/// `shaders/grid_backup.wgsl` (size checked by tests/shader_layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct GridParams {
    pub width: u32,
    pub height: u32,
    pub cells_per_task: u32,
    pub fixed_words_per_task: u32,
    pub task_base: u32,
    pub list_base: u32,
    pub list_count: u32,
    pub dispatch_x: u32,
    pub group_base: u32,
    pub groups_per_task: u32,
    pub quads_origin: u32,
    pub fixed_origin: u32,
    pub v_in_origin: u32,
    pub out_origin: u32,
    pub gamma: f32,
    pub slip: f32,
    pub alpha_ln2: f32,
    pub log2e_over_alpha: f32,
    pub slip_share: f32,
    pub _pad0: u32,
    pub step_cost: [[f32; 4]; 3],
}

/// Uniform of the convergence reduction. Keep in sync with `ReduceParams` in
/// `shaders/residual_reduce.wgsl` (size checked by tests/shader_layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ReduceParams {
    pub task_count: u32,
    pub groups_per_task: u32,
    pub band_count: u32,
    pub tol: f32,
    pub extrapolate: u32,
    pub gamma: f32,
    pub _pad1: u32,
    pub _pad2: u32,
}

/// Size limits the engine plans with; `None` takes the adapter's. Tests lower them to
/// exercise banding and chunking on small grids.
#[derive(Clone, Copy, Debug, Default)]
pub struct EngineOptions {
    /// Largest storage binding (bytes).
    pub max_binding_bytes: Option<u64>,
    /// Largest buffer (bytes).
    pub max_buffer_bytes: Option<u64>,
}

/// A window of whole tasks, or of rows of one task, dispatched as one unit so that each
/// binding stays within the storage-binding limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Band {
    /// First task, within the chunk.
    pub task_base: usize,
    /// Tasks covered.
    pub task_count: usize,
    /// First row.
    pub row_base: usize,
    /// Rows covered.
    pub row_count: usize,
}

/// Splits `tasks` tasks of `height` x `width` cells into bands whose per-cell arrays of
/// `bytes_per_cell` bytes fit `max_binding` bytes (a one-row halo included).
pub fn plan_bands(
    tasks: usize,
    height: usize,
    width: usize,
    bytes_per_cell: u64,
    max_binding: u64,
) -> Result<Vec<Band>> {
    let cells = (height * width) as u64;
    let capacity = (max_binding / bytes_per_cell).saturating_sub(WINDOW_SLACK);
    if cells <= capacity {
        let per_band = ((capacity / cells) as usize).min(65_535);
        return Ok((0..tasks)
            .step_by(per_band)
            .map(|t| Band {
                task_base: t,
                task_count: per_band.min(tasks - t),
                row_base: 0,
                row_count: height,
            })
            .collect());
    }
    let rows = (capacity / width as u64).saturating_sub(2) as usize;
    if rows == 0 {
        bail!(
            "a grid row of {width} cells needs {} bytes per storage binding for one row and its \
             two neighbours, but the adapter's max_storage_buffer_binding_size is {max_binding} bytes",
            (width as u64) * bytes_per_cell * 3 + WINDOW_SLACK * bytes_per_cell,
        );
    }
    let mut bands = Vec::new();
    for task in 0..tasks {
        for row_base in (0..height).step_by(rows) {
            bands.push(Band {
                task_base: task,
                task_count: 1,
                row_base,
                row_count: rows.min(height - row_base),
            });
        }
    }
    Ok(bands)
}

/// A bound range of an array: where it starts (element index) and its bytes.
#[derive(Clone, Copy, Debug)]
struct Window {
    origin: u64,
    offset: u64,
    size: u64,
}

/// The window over elements `[start, end)` of an array of `len` elements of `bytes` bytes, its
/// offset aligned down to `align` bytes (a multiple of `bytes`).
fn window(start: u64, end: u64, len: u64, bytes: u64, align: u64) -> Window {
    let offset = start * bytes / align * align;
    let size = end.min(len) * bytes - offset;
    Window {
        origin: offset / bytes,
        offset,
        size,
    }
}

/// `problem` with its map widened to a multiple of 4 columns by blocked cells, as the quad
/// kernel needs; moves into the new cells are blocked like moves off the map, so no
/// transition changes.
fn pad_to_quads(problem: &GridProblem) -> std::borrow::Cow<'_, GridProblem> {
    let (h, w) = (problem.grid.height, problem.grid.width);
    let padded_w = w.next_multiple_of(4);
    if padded_w == w {
        return std::borrow::Cow::Borrowed(problem);
    }
    let widen = |cells: &[bool]| -> Vec<bool> {
        (0..h * padded_w)
            .map(|i| i % padded_w < w && cells[i / padded_w * w + i % padded_w])
            .collect()
    };
    let mut padded = problem.clone();
    padded.grid.width = padded_w;
    padded.grid.free = widen(&problem.grid.free);
    for task in &mut padded.tasks {
        for g in &mut task.goals {
            *g = *g / w * padded_w + *g % w;
        }
        if let Some(r) = &mut task.reward {
            *r = (0..h * padded_w)
                .map(|i| {
                    if i % padded_w < w {
                        r[i / padded_w * w + i % padded_w]
                    } else {
                        0.0
                    }
                })
                .collect();
        }
    }
    std::borrow::Cow::Owned(padded)
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
    Extrapolate,
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
}

/// Reusable buffers by role; a buffer is replaced only when a solve needs a larger one.
#[derive(Default)]
struct BufferPool {
    buffers: HashMap<&'static str, wgpu::Buffer>,
}

impl BufferPool {
    fn get(
        &mut self,
        device: &wgpu::Device,
        label: &'static str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> wgpu::Buffer {
        let size = size.max(16).next_multiple_of(16);
        if let Some(buffer) = self.buffers.get(label)
            && buffer.size() >= size
            && buffer.usage() == usage
        {
            return buffer.clone();
        }
        self.buffers.remove(label);
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        });
        self.buffers.insert(label, buffer.clone());
        buffer
    }
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
}

/// Result of one chunk of tasks.
struct ChunkResult {
    values: Vec<f32>,
    policy: Option<Vec<f32>>,
    iterations: u32,
    last: Vec<SweepStats>,
    verdict: Verdict,
}

/// Batched gridworld soft value iteration on one wgpu device. Pipelines, layouts and
/// buffers are built once and reused by every solve.
pub struct GridEngine {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter_label: String,
    grid_module: wgpu::ShaderModule,
    grid_layout: wgpu::BindGroupLayout,
    grid_pipeline_layout: wgpu::PipelineLayout,
    grid_pipelines: HashMap<GridPipelineKey, wgpu::ComputePipeline>,
    reduce_layout: wgpu::BindGroupLayout,
    reduce_pipeline: wgpu::ComputePipeline,
    decide_pipeline: wgpu::ComputePipeline,
    pool: BufferPool,
    max_binding: u64,
    max_buffer: u64,
    storage_align: u64,
    uniform_stride: u64,
}

fn layout_entries(kinds: &[wgpu::BufferBindingType]) -> Vec<wgpu::BindGroupLayoutEntry> {
    kinds
        .iter()
        .enumerate()
        .map(|(binding, &ty)| wgpu::BindGroupLayoutEntry {
            binding: binding as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect()
}

fn storage(read_only: bool) -> wgpu::BufferBindingType {
    wgpu::BufferBindingType::Storage { read_only }
}

impl GridEngine {
    /// An engine on `ctx`'s device with the adapter's limits.
    pub fn new(ctx: &GpuContext) -> Result<Self> {
        Self::with_options(ctx, EngineOptions::default())
    }

    /// An engine on `ctx`'s device with the given size limits (each at most the device's).
    pub fn with_options(ctx: &GpuContext, options: EngineOptions) -> Result<Self> {
        let device = ctx.device.clone();
        let limits = device.limits();
        let max_binding = options
            .max_binding_bytes
            .unwrap_or(u64::MAX)
            .min(limits.max_storage_buffer_binding_size);
        let max_buffer = options
            .max_buffer_bytes
            .unwrap_or(u64::MAX)
            .min(limits.max_buffer_size);
        let uniform = wgpu::BufferBindingType::Uniform;
        // Binding order = position in these lists; the shaders declare the same order.
        let grid_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("softvi.grid_backup"),
            entries: &layout_entries(&[
                uniform,        // params
                storage(true),  // active_quads
                storage(true),  // fixed_bits
                storage(true),  // reward
                storage(true),  // v_in
                storage(false), // v_out
                storage(false), // partials
                storage(false), // policy
                storage(true),  // extrapolation
            ]),
        });
        let reduce_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("softvi.residual_reduce"),
            entries: &layout_entries(&[
                uniform,        // params
                storage(true),  // partials
                storage(false), // checks
                storage(false), // control
                storage(false), // history
                storage(false), // extrapolation
            ]),
        });
        let pipeline_layout = |label, layout| {
            device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(label),
                bind_group_layouts: &[Some(layout)],
                immediate_size: 0,
            })
        };
        let grid_pipeline_layout = pipeline_layout("softvi.grid_backup", &grid_layout);
        let reduce_pipeline_layout = pipeline_layout("softvi.residual_reduce", &reduce_layout);
        let grid_module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("softvi.grid_backup"),
            source: wgpu::ShaderSource::Wgsl(GRID_BACKUP_WGSL.into()),
        });
        let reduce_module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("softvi.residual_reduce"),
            source: wgpu::ShaderSource::Wgsl(RESIDUAL_REDUCE_WGSL.into()),
        });
        let reduce_stage = |entry: &str| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&format!("softvi.{entry}")),
                layout: Some(&reduce_pipeline_layout),
                module: &reduce_module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let reduce_pipeline = reduce_stage("residual_reduce");
        let decide_pipeline = reduce_stage("convergence_decide");
        Ok(Self {
            queue: ctx.queue.clone(),
            adapter_label: ctx.adapter_label(),
            grid_module,
            grid_layout,
            grid_pipeline_layout,
            grid_pipelines: HashMap::new(),
            reduce_layout,
            reduce_pipeline,
            decide_pipeline,
            pool: BufferPool::default(),
            max_binding,
            max_buffer,
            storage_align: limits.min_storage_buffer_offset_alignment as u64,
            uniform_stride: (size_of::<GridParams>() as u64)
                .next_multiple_of(limits.min_uniform_buffer_offset_alignment as u64),
            device,
        })
    }

    /// `"<adapter name> (<backend>)"` of the device this engine runs on.
    pub fn adapter_label(&self) -> &str {
        &self.adapter_label
    }

    fn grid_pipeline(&mut self, key: GridPipelineKey) -> wgpu::ComputePipeline {
        if let Some(p) = self.grid_pipelines.get(&key) {
            return p.clone();
        }
        let entry = match key.stage {
            GridStage::Backup => "grid_backup",
            GridStage::Policy => "grid_policy",
            GridStage::Extrapolate => "grid_extrapolate",
        };
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let constants = [
            ("CONNECTIVITY", key.connectivity as f64),
            ("STAY", flag(key.stay)),
            ("OPTIMISTIC", flag(key.optimistic)),
            ("HAS_REWARD", flag(key.has_reward)),
            ("HARD_MAX", flag(key.hard_max)),
            ("WRITE_RESIDUAL", flag(key.write_residual)),
        ];
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&format!("softvi.{entry}")),
                layout: Some(&self.grid_pipeline_layout),
                module: &self.grid_module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        self.grid_pipelines.insert(key, pipeline.clone());
        pipeline
    }

    /// Tasks solved together so that one value array fits the adapter's buffer limit.
    fn tasks_per_chunk(&self, cells: usize) -> Result<usize> {
        let task_bytes = cells as u64 * 4;
        let budget = self.max_buffer.min(MAX_CHUNK_BYTES);
        ensure!(
            task_bytes <= budget,
            "a grid of {cells} cells needs {task_bytes} bytes per value array, over the limit of \
             {budget} bytes (adapter max_buffer_size {} bytes)",
            self.max_buffer
        );
        Ok(((budget / task_bytes) as usize).min(MAX_TASKS_PER_CHUNK))
    }

    /// Solves every task of `problem`; the result has the same layout and meaning as
    /// [`crate::solve::solve_cpu`]'s.
    pub fn solve(&mut self, problem: &GridProblem, options: &SolveOptions) -> Result<Solution> {
        self.solve_with_progress(problem, options, &mut |_| {})
    }

    /// [`GridEngine::solve`], calling `progress` after every submission's checks.
    pub fn solve_with_progress(
        &mut self,
        problem: &GridProblem,
        options: &SolveOptions,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Solution> {
        let start = Instant::now();
        problem.validate()?;
        options.validate()?;
        let padded = pad_to_quads(problem);
        let inputs = GridInputs::new(&padded, options);
        let cells = inputs.cells();
        let per_chunk = self.tasks_per_chunk(cells)?;
        let fixed_bits = inputs.fixed_bits();
        let active_quads = inputs.active_quads();
        let mut values = Vec::with_capacity(inputs.tasks * cells);
        let mut policy = options.policy.then(Vec::new);
        let (mut iterations, mut residual) = (Vec::new(), Vec::new());
        let mut status = Vec::new();
        for t0 in (0..inputs.tasks).step_by(per_chunk) {
            let tasks = t0..(t0 + per_chunk).min(inputs.tasks);
            let chunk = self
                .solve_chunk(
                    &inputs,
                    &fixed_bits,
                    &active_quads,
                    tasks.clone(),
                    options,
                    progress,
                )
                .with_context(|| {
                    format!("GPU solve of tasks {tasks:?} on {}", self.adapter_label)
                })?;
            values.extend_from_slice(&chunk.values);
            match (&mut policy, chunk.policy) {
                (Some(all), Some(part)) => all.extend_from_slice(&part),
                _ => policy = None,
            }
            iterations.extend(std::iter::repeat_n(chunk.iterations, tasks.len()));
            status.extend(final_status(options, &chunk.verdict, &chunk.last));
            residual.extend(chunk.last.iter().map(|s| s.max_abs_delta));
        }
        mark_special_cells(&inputs, &mut values, policy.as_deref_mut());
        let (w, padded_w, n) = (problem.grid.width, inputs.width, inputs.action_count);
        Ok(Solution {
            height: inputs.height,
            width: w,
            action_count: n,
            values: strip_padding(&values, padded_w, w, 1),
            policy: policy.map(|p| strip_padding(&p, padded_w, w, n)),
            iterations,
            residual,
            status,
            unreachable: inputs.unreachable.clone(),
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// The parts of [`GridParams`] shared by every band of a chunk.
    fn grid_params(&self, inputs: &GridInputs) -> GridParams {
        let alpha = inputs.alpha as f32;
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
            alpha_ln2: alpha * std::f32::consts::LN_2,
            log2e_over_alpha: if alpha > 0.0 {
                std::f32::consts::LOG2_E / alpha
            } else {
                0.0
            },
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
    ) -> Vec<BandLayout> {
        let base = self.grid_params(inputs);
        let (w, h, cells) = (
            inputs.width as u64,
            inputs.height as u64,
            inputs.cells() as u64,
        );
        let wpt = inputs.fixed_words_per_task() as u64;
        let (qpr, qpt) = (w / 4, cells / 4);
        let align = self.storage_align;
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
                let (r0, r1) = (
                    band.row_base as u64,
                    (band.row_base + band.row_count) as u64,
                );
                let (lo, hi) = (first_at_row(band.row_base), first_at_row(r1 as usize));
                let groups = ((hi - lo) as u32).div_ceil(WORKGROUP_SIZE);
                let dispatch_x = groups.clamp(1, 65_535);
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
                if band.row_base == 0 {
                    group_base = 0;
                }
                let params = GridParams {
                    task_base: band.task_base as u32,
                    list_base: lo as u32,
                    list_count: (hi - lo) as u32,
                    dispatch_x,
                    group_base,
                    quads_origin: windows[0].origin as u32,
                    fixed_origin: windows[1].origin as u32,
                    v_in_origin: windows[2].origin as u32,
                    out_origin: windows[3].origin as u32,
                    ..base
                };
                group_base += groups;
                BandLayout {
                    params,
                    windows,
                    dispatch: [
                        if groups == 0 { 0 } else { dispatch_x },
                        groups.div_ceil(dispatch_x),
                        band.task_count as u32,
                    ],
                    first_cell: t0 * cells + r0 * w,
                    end_cell: t_last * cells + r1 * w,
                }
            })
            .collect();
        // Row bands of one task tile the task; its workgroups are counted over all of them.
        let per_task = layouts
            .iter()
            .map(|l| l.params.group_base + l.dispatch_groups())
            .max()
            .unwrap_or(0);
        for l in &mut layouts {
            l.params.groups_per_task = per_task;
        }
        layouts
    }

    #[allow(clippy::too_many_arguments)]
    fn grid_bind_group(
        &self,
        params: (&wgpu::Buffer, u64),
        windows: &[Window; 4],
        quads: &wgpu::Buffer,
        fixed: &wgpu::Buffer,
        reward: &wgpu::Buffer,
        v_in: &wgpu::Buffer,
        v_out: &wgpu::Buffer,
        policy: (&wgpu::Buffer, u64, u64),
        partials: &wgpu::Buffer,
        extrapolation: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        let [quads_w, fixed_w, v_in_w, out_w] = windows;
        fn bind(buffer: &wgpu::Buffer, offset: u64, size: u64) -> wgpu::BindingResource<'_> {
            wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer,
                offset,
                size: wgpu::BufferSize::new(size),
            })
        }
        // Binding order = the layout's order = the shader's @binding numbers.
        let resources = [
            bind(params.0, params.1, size_of::<GridParams>() as u64),
            bind(quads, quads_w.offset, quads_w.size),
            bind(fixed, fixed_w.offset, fixed_w.size),
            bind(reward, out_w.offset, out_w.size),
            bind(v_in, v_in_w.offset, v_in_w.size),
            bind(v_out, out_w.offset, out_w.size),
            partials.as_entire_binding(),
            bind(policy.0, policy.1, policy.2),
            extrapolation.as_entire_binding(),
        ];
        let entries: Vec<wgpu::BindGroupEntry> = resources
            .into_iter()
            .enumerate()
            .map(|(i, resource)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource,
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("softvi.grid_backup"),
            layout: &self.grid_layout,
            entries: &entries,
        })
    }

    fn solve_chunk(
        &mut self,
        inputs: &GridInputs,
        fixed_bits: &[u32],
        active_quads: &[[u32; 2]],
        tasks: Range<usize>,
        options: &SolveOptions,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<ChunkResult> {
        use wgpu::BufferUsages as U;
        let n = tasks.len();
        let cells = inputs.cells();
        let wpt = inputs.fixed_words_per_task();
        let n_actions = inputs.action_count;
        let bands = plan_bands(n, inputs.height, inputs.width, 4, self.max_binding)?;
        let layouts = self.lay_out_bands(inputs, active_quads, n, &bands);
        let policy_layouts = if options.policy {
            let policy_bands = plan_bands(
                n,
                inputs.height,
                inputs.width,
                4 * n_actions as u64,
                self.max_binding,
            )?;
            self.lay_out_bands(inputs, active_quads, n, &policy_bands)
        } else {
            Vec::new()
        };
        let groups_per_task = layouts[0].params.groups_per_task as u64;
        let partial_bytes = n as u64 * groups_per_task * 16;
        ensure!(
            partial_bytes <= self.max_binding,
            "residual partials need {partial_bytes} bytes, over the adapter's \
             max_storage_buffer_binding_size of {} bytes",
            self.max_binding
        );

        // Buffers (pooled across solves).
        let device = self.device.clone();
        let v_bytes = (n * cells * 4) as u64;
        let values = [
            self.pool.get(
                &device,
                "softvi.values_a",
                v_bytes,
                U::STORAGE | U::COPY_SRC | U::COPY_DST,
            ),
            self.pool.get(
                &device,
                "softvi.values_b",
                v_bytes,
                U::STORAGE | U::COPY_SRC | U::COPY_DST,
            ),
        ];
        let quads = self.pool.get(
            &device,
            "softvi.active_quads",
            (active_quads.len().max(1) * 8) as u64,
            U::STORAGE | U::COPY_DST,
        );
        let fixed = self.pool.get(
            &device,
            "softvi.fixed_bits",
            (n * wpt * 4) as u64,
            U::STORAGE | U::COPY_DST,
        );
        let reward = self
            .pool
            .get(&device, "softvi.reward", v_bytes, U::STORAGE | U::COPY_DST);
        let partials = self
            .pool
            .get(&device, "softvi.partials", partial_bytes, U::STORAGE);
        let checks = self.pool.get(
            &device,
            "softvi.checks",
            (MAX_CHECKS_PER_SUBMIT * n * 16) as u64,
            U::STORAGE | U::COPY_SRC,
        );
        // Indirect arguments: sweeps, then extrapolation, per band.
        let control_bytes = CONTROL_HEADER_BYTES + 24 * bands.len() as u64;
        let control = self.pool.get(
            &device,
            "softvi.control",
            control_bytes,
            U::STORAGE | U::INDIRECT | U::COPY_DST | U::COPY_SRC,
        );
        let history = self.pool.get(
            &device,
            "softvi.history",
            n as u64 * 32,
            U::STORAGE | U::COPY_DST,
        );
        let extrapolation =
            self.pool
                .get(&device, "softvi.extrapolation", n as u64 * 4, U::STORAGE);
        let slots = (layouts.len() + policy_layouts.len()) as u64;
        let params_buf = self.pool.get(
            &device,
            "softvi.grid_params",
            slots * self.uniform_stride,
            U::UNIFORM | U::COPY_DST,
        );
        let no_policy = self.pool.get(&device, "softvi.no_policy", 16, U::STORAGE);
        // V before the last extrapolation jump, for its rollback.
        let backup = if options.uses_extrapolation() {
            self.pool.get(&device, "softvi.backup", v_bytes, U::STORAGE)
        } else {
            no_policy.clone()
        };
        let reduce_params = self.pool.get(
            &device,
            "softvi.reduce_params",
            size_of::<ReduceParams>() as u64,
            U::UNIFORM | U::COPY_DST,
        );

        // Uploads.
        let q = self.queue.clone();
        q.write_buffer(&quads, 0, bytemuck::cast_slice(active_quads));
        q.write_buffer(
            &fixed,
            0,
            bytemuck::cast_slice(&fixed_bits[tasks.start * wpt..tasks.end * wpt]),
        );
        q.write_buffer(
            &reward,
            0,
            bytemuck::cast_slice(&inputs.reward[tasks.start * cells..tasks.end * cells]),
        );
        let tol = match options.horizon {
            Horizon::Infinite { tol, .. } => tol as f32,
            Horizon::Finite(_) => -1.0,
        };
        let reduce = ReduceParams {
            task_count: n as u32,
            groups_per_task: groups_per_task as u32,
            band_count: bands.len() as u32,
            tol,
            extrapolate: options.uses_extrapolation() as u32,
            gamma: options.gamma as f32,
            ..Default::default()
        };
        q.write_buffer(&reduce_params, 0, bytemuck::bytes_of(&reduce));
        let mut control_init = vec![0u32, NOT_CONVERGED, 0, 0];
        let mut sweep_groups = Vec::new();
        for (b, layout) in layouts.iter().enumerate() {
            let slot = b as u64 * self.uniform_stride;
            q.write_buffer(&params_buf, slot, bytemuck::bytes_of(&layout.params));
            control_init.extend_from_slice(&layout.dispatch);
            let group = |p: usize| {
                self.grid_bind_group(
                    (&params_buf, slot),
                    &layout.windows,
                    &quads,
                    &fixed,
                    &reward,
                    &values[p],
                    &values[1 - p],
                    match options.uses_extrapolation() {
                        true => (&backup, layout.windows[3].offset, layout.windows[3].size),
                        false => (&no_policy, 0, 16),
                    },
                    &partials,
                    &extrapolation,
                )
            };
            sweep_groups.push([group(0), group(1)]);
        }
        // Extrapolation dispatches start disabled; convergence_decide enables them.
        control_init.extend(std::iter::repeat_n(0u32, 3 * bands.len()));
        q.write_buffer(&control, 0, bytemuck::cast_slice(&control_init));
        let reduce_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("softvi.residual_reduce"),
            layout: &self.reduce_layout,
            entries: &[
                reduce_params.as_entire_binding(),
                partials.as_entire_binding(),
                checks.as_entire_binding(),
                control.as_entire_binding(),
                history.as_entire_binding(),
                extrapolation.as_entire_binding(),
            ]
            .into_iter()
            .enumerate()
            .map(|(i, resource)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource,
            })
            .collect::<Vec<_>>(),
        });
        let key = GridPipelineKey {
            stage: GridStage::Backup,
            connectivity: if n_actions >= 8 { 8 } else { 4 },
            stay: n_actions % 4 == 1,
            optimistic: inputs.backup == Backup::Optimistic,
            has_reward: inputs.reward.iter().any(|&r| r != 0.0),
            hard_max: inputs.alpha == 0.0,
            write_residual: false,
        };
        let sweep = self.grid_pipeline(key);
        let sweep_checked = self.grid_pipeline(GridPipelineKey {
            write_residual: true,
            ..key
        });
        let extrapolate = self.grid_pipeline(GridPipelineKey {
            stage: GridStage::Extrapolate,
            ..key
        });

        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.clear_buffer(&values[0], 0, Some(v_bytes));
        encoder.clear_buffer(&values[1], 0, Some(v_bytes));
        encoder.clear_buffer(&history, 0, None);
        self.queue.submit([encoder.finish()]);

        // Sweeps: each submission records several check windows; a converged check zeroes
        // the indirect arguments so that the remaining sweeps of the submission are empty.
        let windows = check_windows(sweep_budget(&options.horizon));
        let mut monitor = ConvergenceMonitor::new(options, n);
        let mut verdict = Verdict::Continue;
        let mut last = vec![SweepStats::default(); n];
        let (mut next_window, mut sweeps, mut per_submit) = (0usize, 0u32, 1usize);
        while next_window < windows.len() && verdict == Verdict::Continue {
            let batch = &windows[next_window..(next_window + per_submit).min(windows.len())];
            next_window += batch.len();
            per_submit = (per_submit * 2).min(MAX_CHECKS_PER_SUBMIT);
            q.write_buffer(&control, 0, bytemuck::bytes_of(&0u32));
            let mut encoder = self.device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                let mut parity = (sweeps % 2) as usize;
                for &len in batch {
                    for i in 0..len {
                        pass.set_pipeline(if i + 1 == len { &sweep_checked } else { &sweep });
                        for (b, groups) in sweep_groups.iter().enumerate() {
                            pass.set_bind_group(0, &groups[parity], &[]);
                            pass.dispatch_workgroups_indirect(
                                &control,
                                CONTROL_HEADER_BYTES + 12 * b as u64,
                            );
                        }
                        parity = 1 - parity;
                    }
                    pass.set_bind_group(0, &reduce_group, &[]);
                    pass.set_pipeline(&self.reduce_pipeline);
                    pass.dispatch_workgroups(n as u32, 1, 1);
                    pass.set_pipeline(&self.decide_pipeline);
                    pass.dispatch_workgroups(1, 1, 1);
                    if options.uses_extrapolation() {
                        // V (read next) is in `parity`, V_prev in the other buffer: the bind
                        // group that reads 1 - parity and writes parity.
                        pass.set_pipeline(&extrapolate);
                        for (b, groups) in sweep_groups.iter().enumerate() {
                            pass.set_bind_group(0, &groups[1 - parity], &[]);
                            pass.dispatch_workgroups_indirect(
                                &control,
                                CONTROL_HEADER_BYTES + 12 * (sweep_groups.len() + b) as u64,
                            );
                        }
                    }
                }
            }
            let check_bytes = (batch.len() * n * 16) as u64;
            let staging = self.pool.get(
                &device,
                "softvi.check_staging",
                (MAX_CHECKS_PER_SUBMIT * n * 16) as u64 + CONTROL_HEADER_BYTES,
                U::MAP_READ | U::COPY_DST,
            );
            encoder.copy_buffer_to_buffer(&control, 0, &staging, 0, CONTROL_HEADER_BYTES);
            encoder.copy_buffer_to_buffer(&checks, 0, &staging, CONTROL_HEADER_BYTES, check_bytes);
            self.queue.submit([encoder.finish()]);
            let bytes = self.map_read(&staging, CONTROL_HEADER_BYTES + check_bytes)?;
            let header: &[u32] = bytemuck::cast_slice(&bytes[..CONTROL_HEADER_BYTES as usize]);
            let converged_check = header[1];
            let stats: &[[f32; 4]] = bytemuck::cast_slice(&bytes[CONTROL_HEADER_BYTES as usize..]);
            for (j, &len) in batch.iter().enumerate() {
                sweeps += len;
                last = stats[j * n..(j + 1) * n]
                    .iter()
                    .map(|s| SweepStats {
                        max_abs_delta: s[0] as f64,
                        min_delta: s[1] as f64,
                        max_abs_value: s[2] as f64,
                        active: s[3] > 0.0,
                    })
                    .collect();
                if converged_check == j as u32 {
                    verdict = Verdict::Converged;
                    break;
                }
                // The GPU decided convergence on the same figures; the monitor adds divergence.
                if let Verdict::Diverged(t) = monitor.observe(&last) {
                    verdict = Verdict::Diverged(t);
                    break;
                }
            }
            progress(&Progress::after(options, sweeps, &last));
        }

        let v_final = &values[(sweeps % 2) as usize];
        let values_out: Vec<f32> =
            bytemuck::cast_slice(&self.read_buffer(v_final, 0, v_bytes)?).to_vec();
        let policy = if options.policy && !matches!(verdict, Verdict::Diverged(_)) {
            // Finite horizon: pi_0 comes from V_1, the values the last sweep read.
            let from = match options.horizon {
                Horizon::Finite(_) => ((sweeps + 1) % 2) as usize,
                Horizon::Infinite { .. } => (sweeps % 2) as usize,
            };
            let pipeline = self.grid_pipeline(GridPipelineKey {
                stage: GridStage::Policy,
                ..key
            });
            let mut policy = vec![0.0f32; n * cells * n_actions];
            for (i, layout) in policy_layouts.iter().enumerate() {
                let slot = (layouts.len() + i) as u64 * self.uniform_stride;
                q.write_buffer(&params_buf, slot, bytemuck::bytes_of(&layout.params));
                // The policy window starts at the reward window's first cell.
                let origin = 4 * layout.windows[3].origin;
                let out_bytes = (layout.end_cell - origin) * n_actions as u64 * 4;
                let out = self.pool.get(
                    &device,
                    "softvi.policy",
                    out_bytes,
                    U::STORAGE | U::COPY_SRC,
                );
                let group = self.grid_bind_group(
                    (&params_buf, slot),
                    &layout.windows,
                    &quads,
                    &fixed,
                    &reward,
                    &values[from],
                    &values[1 - from],
                    (&out, 0, out_bytes),
                    &partials,
                    &extrapolation,
                );
                let mut encoder = self.device.create_command_encoder(&Default::default());
                {
                    let mut pass = encoder.begin_compute_pass(&Default::default());
                    pass.set_pipeline(&pipeline);
                    pass.set_bind_group(0, &group, &[]);
                    let [x, y, z] = layout.dispatch;
                    pass.dispatch_workgroups(x, y, z);
                }
                self.queue.submit([encoder.finish()]);
                let skip = (layout.first_cell - origin) * n_actions as u64 * 4;
                let bytes = self.read_buffer(&out, skip, out_bytes - skip)?;
                let dst = layout.first_cell as usize * n_actions;
                policy[dst..dst + bytes.len() / 4].copy_from_slice(bytemuck::cast_slice(&bytes));
            }
            Some(policy)
        } else {
            None
        };
        Ok(ChunkResult {
            values: values_out,
            policy,
            iterations: sweeps,
            last,
            verdict,
        })
    }

    /// Copies `size` bytes of `src` from `offset` to the host through a pooled staging buffer.
    fn read_buffer(&mut self, src: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(size as usize);
        let staging_size = size.min(STAGING_BYTES).next_multiple_of(4);
        let staging = self.pool.get(
            &self.device,
            "softvi.staging",
            staging_size,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
        let mut done = 0;
        while done < size {
            let part = (size - done).min(staging_size);
            let mut encoder = self.device.create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(src, offset + done, &staging, 0, part);
            self.queue.submit([encoder.finish()]);
            out.extend_from_slice(&self.map_read(&staging, part)?);
            done += part;
        }
        Ok(out)
    }

    /// Maps the first `size` bytes of a MAP_READ buffer after all submitted work and copies
    /// them out.
    fn map_read(&self, staging: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        let slice = staging.slice(..size);
        let (sender, receiver) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = sender.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| anyhow!("waiting for the GPU failed: {e}"))?;
        receiver
            .recv()
            .context("GPU readback was dropped")?
            .map_err(|e| anyhow!("mapping a readback buffer failed: {e}"))?;
        let bytes = slice
            .get_mapped_range()
            .map_err(|e| anyhow!("reading a mapped buffer failed: {e:?}"))?
            .to_vec();
        staging.unmap();
        Ok(bytes)
    }
}
