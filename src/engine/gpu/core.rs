//! What every GPU solver shares: the device, a pool of reusable buffers, readback, and the
//! iteration driver that records many sweeps per submission, checks convergence on the GPU
//! with `shaders/residual_reduce.wgsl` and jumps ahead with `shaders/extrapolate.wgsl`.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::error::{Error, Result, ensure_limit};
use bytemuck::{Pod, Zeroable};

use super::context::GpuContext;
use crate::engine::cpu::SweepStats;
use crate::engine::options::{Horizon, Method, SolveOptions};
use crate::engine::schedule::{
    ConvergenceMonitor, OnProgress, Progress, TaskOutcomes, Verdict, bound_factor, check_windows,
    sweep_budget,
};

/// WGSL source of the convergence reduction.
pub const RESIDUAL_REDUCE_WGSL: &str = wgsl!(
    "shared/constants.wgsl",
    "shared/residual_stats.wgsl",
    "residual_reduce.wgsl",
);

/// WGSL source of the rate-extrapolation jump of every iteration.
pub const EXTRAPOLATE_WGSL: &str = wgsl!("shared/constants.wgsl", "extrapolate.wgsl");

/// Invocations per workgroup of every kernel, `residual_reduce` included. Same as
/// `WORKGROUP_SIZE` in `shaders/shared/constants.wgsl`.
pub const WORKGROUP_SIZE: u32 = 64;
/// `Control::converged_check` before convergence. Same as `NOT_CONVERGED` in the shader.
pub const NOT_CONVERGED: u32 = u32::MAX;
/// `frozen[task]` of a task still iterating. Same as `NOT_FROZEN` in
/// `shaders/shared/residual_stats.wgsl`.
pub const NOT_FROZEN: u32 = u32::MAX;
/// `frozen[task]` the host writes for a task it found diverged (any value but
/// [`NOT_FROZEN`] freezes it; this one is no check index).
const FROZEN_BY_HOST: u32 = u32::MAX - 1;
/// Bytes of `Control` before its `dispatch_args` array.
pub const CONTROL_HEADER_BYTES: u64 = 16;

/// Most convergence checks recorded into one submission (submissions grow 1, 2, 4, ...).
pub const MAX_CHECKS_PER_SUBMIT: usize = 64;
/// Largest staging buffer used for readback (bytes).
const STAGING_BYTES: u64 = 64 << 20;
/// Elements a binding window may start before its first used element (storage offsets are
/// aligned to at most 256 bytes).
pub(crate) const WINDOW_SLACK: u64 = 64;

/// Uniform of the convergence reduction. Keep in sync with `ReduceParams` in
/// `shaders/residual_reduce.wgsl` (size checked by tests/kernel_shader_layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ReduceParams {
    /// Tasks of the chunk.
    pub task_count: u32,
    /// Residual partials per task (workgroups of one task's sweep, all bands).
    pub groups_per_task: u32,
    /// Bands the sweep ran in.
    pub band_count: u32,
    /// Residual tolerance (value units); negative for a fixed horizon.
    pub tol: f32,
    /// 1 to extrapolate along the slowest mode (alpha > 0, gamma < 1, infinite horizon), else 0.
    pub extrapolate: u32,
    /// Discount, which bounds every mode's rate.
    pub gamma: f32,
    /// `schedule::bound_factor(gamma)`: the residual times it bounds the error.
    pub bound_factor: f32,
    /// Padding to 16 bytes.
    pub _pad2: u32,
}

/// Per-band uniform of the extrapolation jump. Keep in sync with `ExtrapolateParams` in
/// `shaders/extrapolate.wgsl` (size checked by tests/kernel_shader_layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ExtrapolateParams {
    /// Elements of V per task.
    pub values_per_task: u32,
    /// First task (`[task]` index within the chunk) of this band.
    pub task_base: u32,
    /// First element of this band within each of its tasks.
    pub first: u32,
    /// Elements of this band per task.
    pub count: u32,
    /// Workgroups along x of this band's dispatch.
    pub dispatch_x: u32,
    /// Invocations per task of this band's dispatch.
    pub invocations: u32,
    /// 32-bit words of fixed-element bits per task.
    pub fixed_words_per_task: u32,
    /// Start of the `fixed_bits` window, in elements of `[task][word]`.
    pub fixed_origin: u32,
    /// Start of the `v_prev` window, in elements of `[task][element]`.
    pub prev_origin: u32,
    /// Start of the `v` and backup windows, in elements of `[task][element]`.
    pub out_origin: u32,
    /// Padding to 16 bytes.
    pub _pad0: u32,
    /// Padding to 16 bytes.
    pub _pad1: u32,
}

/// One band of an iteration as `extrapolate` sees it: its uniform and its windows over the
/// fixed bits, V_prev and V (the backup's window is V's).
pub(crate) struct ExtrapolateBand {
    pub params: ExtrapolateParams,
    pub fixed: Window,
    pub prev: Window,
    pub values: Window,
}

/// Invocations per task of a dispatch of `WORKGROUP_SIZE`-wide workgroups `[x, y, tasks]`:
/// the stride by which `extrapolate` steps through a band dispatched that way.
pub(crate) fn invocations(dispatch: [u32; 3]) -> u32 {
    let n = dispatch[0] as u64 * dispatch[1] as u64 * WORKGROUP_SIZE as u64;
    n.clamp(1, u32::MAX as u64) as u32
}

/// Size limits the engines plan with; `None` takes the adapter's. Tests lower them to
/// exercise banding and chunking on small problems.
#[derive(Clone, Copy, Debug, Default)]
pub struct EngineOptions {
    /// Largest storage binding (bytes).
    pub max_binding_bytes: Option<u64>,
    /// Largest buffer (bytes).
    pub max_buffer_bytes: Option<u64>,
}

/// A bound range of an array: where it starts (element index) and its bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub origin: u64,
    pub offset: u64,
    pub size: u64,
}

/// The window over elements `[start, end)` of an array of `len` elements of `bytes` bytes, its
/// offset aligned down to `align` bytes (a multiple of `bytes`).
pub(crate) fn window(start: u64, end: u64, len: u64, bytes: u64, align: u64) -> Window {
    let offset = start * bytes / align * align;
    Window {
        origin: offset / bytes,
        offset,
        size: end.min(len) * bytes - offset,
    }
}

/// Binds `size` bytes of `buffer` from `offset`.
pub(crate) fn bind(buffer: &wgpu::Buffer, offset: u64, size: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset,
        size: wgpu::BufferSize::new(size),
    })
}

/// Bind group entries numbered in order: binding i = `resources[i]`.
pub(crate) fn entries<'a>(
    resources: impl IntoIterator<Item = wgpu::BindingResource<'a>>,
) -> Vec<wgpu::BindGroupEntry<'a>> {
    resources
        .into_iter()
        .enumerate()
        .map(|(i, resource)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource,
        })
        .collect()
}

/// Layout entries numbered in order, all visible to compute.
pub(crate) fn layout_entries(kinds: &[wgpu::BufferBindingType]) -> Vec<wgpu::BindGroupLayoutEntry> {
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

/// One composed WGSL module and its single bind group layout (binding i = the i-th kind it
/// was made with): the entry points of one `shaders/*.wgsl` file, whose pipelines
/// [`GpuCore::pipeline`] builds and caches.
pub(crate) struct Shader {
    /// `"softvi.<file>"`: the module's and layouts' label, and the cache's key.
    pub label: &'static str,
    module: wgpu::ShaderModule,
    /// The bind group layout every entry point of the module uses.
    pub group_layout: wgpu::BindGroupLayout,
    pipeline_layout: wgpu::PipelineLayout,
}

/// A cached pipeline: module label, entry point, override constants (name, f64 bits).
type PipelineKey = (&'static str, &'static str, Vec<(&'static str, u64)>);

/// Uniforms of type `P` in one pooled buffer, slot i at i times the adapter's uniform offset
/// alignment: the allocator every band's uniform comes from (slot = band).
pub(crate) struct Uniforms<P> {
    buffer: wgpu::Buffer,
    stride: u64,
    count: usize,
    params: PhantomData<P>,
}

impl<P: Pod> Uniforms<P> {
    /// The binding of slot `i`.
    pub fn bind(&self, i: usize) -> wgpu::BindingResource<'_> {
        debug_assert!(i < self.count, "uniform slot {i} of {}", self.count);
        bind(&self.buffer, i as u64 * self.stride, size_of::<P>() as u64)
    }
}

/// A storage binding type.
pub(crate) fn storage(read_only: bool) -> wgpu::BufferBindingType {
    wgpu::BufferBindingType::Storage { read_only }
}

/// [`GpuCore::shader`] on `device`.
fn shader(
    device: &wgpu::Device,
    label: &'static str,
    source: &str,
    kinds: &[wgpu::BufferBindingType],
) -> Shader {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(label),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let group_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(label),
        entries: &layout_entries(kinds),
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(label),
        bind_group_layouts: &[Some(&group_layout)],
        immediate_size: 0,
    });
    Shader {
        label,
        module,
        group_layout,
        pipeline_layout,
    }
}

/// The pipeline of `entry` in `shader` with the given `override` constants. Every kernel
/// writes its workgroup memory before reading it, so none is zero-initialised.
fn compute_pipeline(
    device: &wgpu::Device,
    shader: &Shader,
    entry: &str,
    constants: &[(&str, f64)],
) -> wgpu::ComputePipeline {
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(&format!("softvi.{entry}")),
        layout: Some(&shader.pipeline_layout),
        module: &shader.module,
        entry_point: Some(entry),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants,
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    })
}

/// Reusable buffers by role; a buffer is replaced only when a solve needs a larger one.
#[derive(Default)]
pub(crate) struct BufferPool {
    buffers: HashMap<&'static str, wgpu::Buffer>,
}

impl BufferPool {
    pub fn get(
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

/// One recording step of [`GpuCore::iterate`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Step {
    /// A sweep (the `index`-th of the solve) from the values in buffer `parity` into the
    /// other; `checked` sweeps write residual partials.
    Sweep {
        index: u32,
        parity: usize,
        checked: bool,
    },
    /// The extrapolation after a check: V is in buffer `parity`, V_prev in the other.
    Extrapolate { parity: usize },
}

/// The buffers of the convergence check of one iteration, sized for its tasks and bands.
pub(crate) struct Checks {
    /// Per-workgroup residual statistics, `[task][group]` vec4.
    pub partials: wgpu::Buffer,
    /// Indirect dispatch arguments after a 16-byte header: `[band][xyz]` sweeps, then
    /// `[band][xyz]` extrapolations.
    pub control: wgpu::Buffer,
    /// Extrapolation factor per task.
    pub extrapolation: wgpu::Buffer,
    /// Per task [`NOT_FROZEN`], or the task stopped iterating (every backup kernel binds it).
    pub frozen: wgpu::Buffer,
    /// The ping-pong values `[task][state]` and their bytes, read back after every submission
    /// for [`GpuCore::live_values`] (`None`: nobody watches).
    pub live: Option<([wgpu::Buffer; 2], u64)>,
    checks: wgpu::Buffer,
    group: wgpu::BindGroup,
    tasks: usize,
    bands: usize,
}

impl Checks {
    /// Byte offset of band `b`'s sweep dispatch arguments in `control`.
    pub fn sweep_args(&self, band: usize) -> u64 {
        CONTROL_HEADER_BYTES + 12 * band as u64
    }

    /// Byte offset of band `b`'s extrapolation dispatch arguments in `control`.
    pub fn extrapolate_args(&self, band: usize) -> u64 {
        CONTROL_HEADER_BYTES + 12 * (self.bands + band) as u64
    }
}

/// The pipelines and per-band bind groups of one iteration, recorded by [`Kernels::record`].
/// `groups[b][p]` reads buffer p and writes buffer 1 - p.
pub(crate) struct Kernels<'a> {
    pub sweep: &'a wgpu::ComputePipeline,
    pub sweep_checked: &'a wgpu::ComputePipeline,
    /// [`GpuCore::extrapolate_pipeline`].
    pub extrapolate: &'a wgpu::ComputePipeline,
    pub sweep_groups: &'a [[wgpu::BindGroup; 2]],
    /// From [`GpuCore::extrapolate_groups`], over the same bands as `sweep_groups`.
    pub extrapolate_groups: &'a [[wgpu::BindGroup; 2]],
    /// A finite horizon that keeps every step: each sweep's output is copied to its slot.
    pub keep_steps: Option<StepCopies<'a>>,
}

/// Where a finite-horizon sweep's values go: sweep k (from 0) makes `V_{T-1-k}`, copied from
/// `values[1 - parity]` to slot `T-1-k` of `steps` (`bytes` each).
pub(crate) struct StepCopies<'a> {
    pub values: &'a [wgpu::Buffer; 2],
    pub steps: &'a wgpu::Buffer,
    pub horizon: usize,
    pub bytes: u64,
}

impl Kernels<'_> {
    /// Records `step` as one pass of indirect dispatches, one per band, and the copy of a
    /// kept step.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder, checks: &Checks, step: Step) {
        self.record_pass(encoder, checks, step);
        if let (Some(keep), Step::Sweep { index, parity, .. }) = (&self.keep_steps, step) {
            let t = (keep.horizon - 1 - index as usize) as u64;
            encoder.copy_buffer_to_buffer(
                &keep.values[1 - parity],
                0,
                keep.steps,
                t * keep.bytes,
                keep.bytes,
            );
        }
    }

    fn record_pass(&self, encoder: &mut wgpu::CommandEncoder, checks: &Checks, step: Step) {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        match step {
            Step::Sweep {
                parity, checked, ..
            } => {
                pass.set_pipeline(if checked {
                    self.sweep_checked
                } else {
                    self.sweep
                });
                for (b, groups) in self.sweep_groups.iter().enumerate() {
                    pass.set_bind_group(0, &groups[parity], &[]);
                    pass.dispatch_workgroups_indirect(&checks.control, checks.sweep_args(b));
                }
            }
            Step::Extrapolate { parity } => {
                // V (read next) is in `parity`, V_prev in the other buffer: the bind group
                // that reads 1 - parity and writes parity.
                pass.set_pipeline(self.extrapolate);
                for (b, groups) in self.extrapolate_groups.iter().enumerate() {
                    pass.set_bind_group(0, &groups[1 - parity], &[]);
                    pass.dispatch_workgroups_indirect(&checks.control, checks.extrapolate_args(b));
                }
            }
        }
    }
}

/// The watcher `GridEngine::watch_values` installs: sweeps so far, then the values `[task][state]`.
/// `Send` natively, so an engine can move between threads; in a browser (one thread, and
/// JavaScript callbacks are not `Send`) any closure.
#[cfg(not(target_arch = "wasm32"))]
pub type LiveValues = Box<dyn FnMut(u32, &[f32]) + Send>;
/// The watcher `GridEngine::watch_values` installs: sweeps so far, then the values `[task][state]`.
#[cfg(target_arch = "wasm32")]
pub type LiveValues = Box<dyn FnMut(u32, &[f32])>;

/// Where an iteration stopped.
pub(crate) struct Iteration {
    /// Sweeps applied (the most of any task): the final values are in buffer `sweeps % 2`.
    pub sweeps: u32,
    /// How each task ended.
    pub outcomes: TaskOutcomes,
}

/// A device with its buffer pool, its pipeline cache and the convergence-check and
/// extrapolation pipelines.
pub(crate) struct GpuCore {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter_label: String,
    pub pool: BufferPool,
    pipelines: HashMap<PipelineKey, wgpu::ComputePipeline>,
    pub max_binding: u64,
    pub max_buffer: u64,
    /// Most workgroups a dispatch may have along one dimension (the adapter's
    /// `max_compute_workgroups_per_dimension`).
    pub max_workgroups: u32,
    pub storage_align: u64,
    pub uniform_align: u64,
    /// Most check windows one submission of [`GpuCore::iterate`] runs (1..=64): how long the
    /// device works between two progress reports, where a caller can stop the solve.
    pub checks_per_submit: usize,
    /// Called after every submission with the sweeps so far and the values then, for an
    /// iteration whose [`Checks::live`] names them (the browser playground draws them).
    pub live_values: Option<LiveValues>,
    reduce: Shader,
    reduce_pipeline: wgpu::ComputePipeline,
    decide_pipeline: wgpu::ComputePipeline,
    extrapolate: Shader,
    /// The `extrapolate` kernel, for [`Kernels::extrapolate`].
    pub extrapolate_pipeline: wgpu::ComputePipeline,
}

impl GpuCore {
    pub fn new(ctx: &GpuContext, options: EngineOptions) -> Self {
        let device = ctx.device.clone();
        let limits = device.limits();
        let reduce = shader(
            &device,
            "softvi.residual_reduce",
            RESIDUAL_REDUCE_WGSL,
            &[
                wgpu::BufferBindingType::Uniform, // params
                storage(true),                    // partials
                storage(false),                   // checks
                storage(false),                   // control
                storage(false),                   // history
                storage(false),                   // extrapolation
                storage(false),                   // frozen
                storage(true),                    // span_bounded
            ],
        );
        // Binding order = position in this list; the shader declares the same order.
        let extrapolate = shader(
            &device,
            "softvi.extrapolate",
            EXTRAPOLATE_WGSL,
            &[
                wgpu::BufferBindingType::Uniform, // params
                storage(true),                    // fixed_bits
                storage(true),                    // v_prev
                storage(false),                   // v
                storage(false),                   // backup
                storage(true),                    // extrapolation
            ],
        );
        Self {
            queue: ctx.queue.clone(),
            adapter_label: ctx.adapter_label(),
            pool: BufferPool::default(),
            pipelines: HashMap::new(),
            max_binding: options
                .max_binding_bytes
                .unwrap_or(u64::MAX)
                .min(limits.max_storage_buffer_binding_size),
            max_buffer: options
                .max_buffer_bytes
                .unwrap_or(u64::MAX)
                .min(limits.max_buffer_size),
            max_workgroups: limits.max_compute_workgroups_per_dimension,
            storage_align: limits.min_storage_buffer_offset_alignment as u64,
            uniform_align: limits.min_uniform_buffer_offset_alignment as u64,
            checks_per_submit: MAX_CHECKS_PER_SUBMIT,
            live_values: None,
            reduce_pipeline: compute_pipeline(&device, &reduce, "residual_reduce", &[]),
            decide_pipeline: compute_pipeline(&device, &reduce, "convergence_decide", &[]),
            extrapolate_pipeline: compute_pipeline(&device, &extrapolate, "extrapolate", &[]),
            reduce,
            extrapolate,
            device,
        }
    }

    /// The module of `source` with one bind group layout over `kinds` (binding i =
    /// `kinds[i]`, the order the shader declares).
    pub fn shader(
        &self,
        label: &'static str,
        source: &str,
        kinds: &[wgpu::BufferBindingType],
    ) -> Shader {
        shader(&self.device, label, source, kinds)
    }

    /// The pipeline of `entry` in `shader` specialised by the `override` `constants`, built
    /// once per engine and reused by every later solve.
    pub fn pipeline(
        &mut self,
        shader: &Shader,
        entry: &'static str,
        constants: &[(&'static str, f64)],
    ) -> wgpu::ComputePipeline {
        let key = (
            shader.label,
            entry,
            constants.iter().map(|&(n, v)| (n, v.to_bits())).collect(),
        );
        let device = &self.device;
        self.pipelines
            .entry(key)
            .or_insert_with(|| compute_pipeline(device, shader, entry, constants))
            .clone()
    }

    /// `params` uploaded into the pooled uniform buffer `label`, slot i = `params[i]`.
    pub fn uniforms<P: Pod>(&mut self, label: &'static str, params: &[P]) -> Uniforms<P> {
        let stride = (size_of::<P>() as u64).next_multiple_of(self.uniform_align);
        let mut bytes = vec![0u8; params.len().max(1) * stride as usize];
        for (slot, p) in bytes.chunks_exact_mut(stride as usize).zip(params) {
            slot[..size_of::<P>()].copy_from_slice(bytemuck::bytes_of(p));
        }
        let usage = wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST;
        let buffer = self.buffer(label, bytes.len() as u64, usage);
        self.queue.write_buffer(&buffer, 0, &bytes);
        Uniforms {
            buffer,
            stride,
            count: params.len(),
            params: PhantomData,
        }
    }

    /// A buffer from the pool.
    pub fn buffer(
        &mut self,
        label: &'static str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> wgpu::Buffer {
        self.pool.get(&self.device, label, size, usage)
    }

    /// A bind group of `layout` over `resources` in binding order.
    pub fn bind_group<'a>(
        &self,
        label: &str,
        layout: &wgpu::BindGroupLayout,
        resources: impl IntoIterator<Item = wgpu::BindingResource<'a>>,
    ) -> wgpu::BindGroup {
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout,
            entries: &entries(resources),
        })
    }

    /// Fails with the limit and the size when an array of `bytes` bytes cannot be bound.
    pub fn ensure_bindable(&self, what: &str, bytes: u64) -> Result<()> {
        ensure_limit(
            bytes,
            self.max_binding,
            || format!("{what} in one storage binding"),
            "the adapter's max_storage_buffer_binding_size",
        )
    }

    /// Fails with the limit and the size when a buffer of `bytes` bytes cannot be made.
    pub fn ensure_buffer(&self, what: &str, bytes: u64) -> Result<()> {
        ensure_limit(
            bytes,
            self.max_buffer,
            || format!("{what} in one buffer"),
            "the adapter's max_buffer_size",
        )
    }

    /// The check buffers of an iteration over `tasks` tasks whose sweeps run as `dispatch`
    /// (workgroups per band) with `groups_per_task` partials per task; the extrapolation
    /// dispatches reuse the sweep's. The tasks flagged in `span_bounded` (`[task]`; empty:
    /// none) stop by the span bound ([`crate::engine::schedule::span_bounded_tasks`]).
    pub fn checks(
        &mut self,
        tasks: usize,
        groups_per_task: u32,
        dispatch: &[[u32; 3]],
        options: &SolveOptions,
        span_bounded: &[bool],
    ) -> Result<Checks> {
        use wgpu::BufferUsages as U;
        let partial_bytes = tasks as u64 * groups_per_task as u64 * 16;
        self.ensure_bindable("residual partials", partial_bytes)?;
        let partials = self.buffer("softvi.partials", partial_bytes, U::STORAGE);
        let checks = self.buffer(
            "softvi.checks",
            (MAX_CHECKS_PER_SUBMIT * tasks * 16) as u64,
            U::STORAGE | U::COPY_SRC,
        );
        let control = self.buffer(
            "softvi.control",
            CONTROL_HEADER_BYTES + 24 * dispatch.len() as u64,
            U::STORAGE | U::INDIRECT | U::COPY_DST | U::COPY_SRC,
        );
        let history = self.buffer(
            "softvi.history",
            tasks as u64 * 32,
            U::STORAGE | U::COPY_DST,
        );
        let extrapolation = self.buffer("softvi.extrapolation", tasks as u64 * 4, U::STORAGE);
        let frozen = self.buffer(
            "softvi.frozen",
            tasks as u64 * 4,
            U::STORAGE | U::COPY_DST | U::COPY_SRC,
        );
        self.queue
            .write_buffer(&frozen, 0, bytemuck::cast_slice(&vec![NOT_FROZEN; tasks]));
        let span: Vec<u32> = (0..tasks)
            .map(|t| span_bounded.get(t).copied().unwrap_or(false) as u32)
            .collect();
        let span_bounded = self.buffer(
            "softvi.span_bounded",
            tasks as u64 * 4,
            U::STORAGE | U::COPY_DST,
        );
        self.queue
            .write_buffer(&span_bounded, 0, bytemuck::cast_slice(&span));
        let tol = match options.horizon {
            Horizon::Infinite { tol, .. } => tol as f32,
            Horizon::Finite(_) => -1.0,
        };
        let params = ReduceParams {
            task_count: tasks as u32,
            groups_per_task,
            band_count: dispatch.len() as u32,
            tol,
            extrapolate: options.uses_extrapolation() as u32,
            gamma: options.gamma as f32,
            bound_factor: bound_factor(options.gamma) as f32,
            ..Default::default()
        };
        let reduce_params = self.uniforms("softvi.reduce_params", &[params]);
        let mut control_init = vec![0u32, NOT_CONVERGED, 0, 0];
        control_init.extend(dispatch.iter().flatten());
        // Extrapolation dispatches start disabled; convergence_decide enables them.
        control_init.extend(std::iter::repeat_n(0u32, 3 * dispatch.len()));
        self.queue
            .write_buffer(&control, 0, bytemuck::cast_slice(&control_init));
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.clear_buffer(&history, 0, None);
        self.queue.submit([encoder.finish()]);
        let group = self.bind_group(
            "softvi.residual_reduce",
            &self.reduce.group_layout,
            [
                reduce_params.bind(0),
                partials.as_entire_binding(),
                checks.as_entire_binding(),
                control.as_entire_binding(),
                history.as_entire_binding(),
                extrapolation.as_entire_binding(),
                frozen.as_entire_binding(),
                span_bounded.as_entire_binding(),
            ],
        );
        Ok(Checks {
            partials,
            control,
            extrapolation,
            frozen,
            checks,
            group,
            tasks,
            bands: dispatch.len(),
            live: None,
        })
    }

    /// The `extrapolate` bind groups of an iteration's `bands`, their uniforms in the pooled
    /// buffer `label`: group p reads V_prev from `values[p]` and jumps `values[1 - p]`, saving
    /// it in `backup`, as [`Kernels::extrapolate_groups`] wants them.
    pub fn extrapolate_groups(
        &mut self,
        label: &'static str,
        bands: &[ExtrapolateBand],
        fixed: &wgpu::Buffer,
        values: &[wgpu::Buffer; 2],
        backup: &wgpu::Buffer,
        extrapolation: &wgpu::Buffer,
    ) -> Vec<[wgpu::BindGroup; 2]> {
        let all: Vec<ExtrapolateParams> = bands.iter().map(|b| b.params).collect();
        let params = self.uniforms(label, &all);
        bands
            .iter()
            .enumerate()
            .map(|(b, band)| {
                let (f, prev, out) = (&band.fixed, &band.prev, &band.values);
                let group = |p: usize| {
                    // Binding order = the layout's order = the shader's @binding numbers.
                    self.bind_group(
                        "softvi.extrapolate",
                        &self.extrapolate.group_layout,
                        [
                            params.bind(b),
                            bind(fixed, f.offset, f.size),
                            bind(&values[p], prev.offset, prev.size),
                            bind(&values[1 - p], out.offset, out.size),
                            bind(backup, out.offset, out.size),
                            extrapolation.as_entire_binding(),
                        ],
                    )
                };
                [group(0), group(1)]
            })
            .collect()
    }

    /// Runs sweeps on the check schedule of `options` (the CPU reference's): `record` adds
    /// each sweep and each extrapolation to the encoder; after every check window the GPU
    /// reduces the residual, freezes the tasks within tolerance and decides the extrapolation
    /// of the others. Once every task has frozen it zeroes the indirect arguments, so that the
    /// rest of the submission's sweeps do nothing. Between submissions the host reads the
    /// checks back, judges divergence ([`ConvergenceMonitor`]) and freezes the diverged tasks.
    pub async fn iterate(
        &mut self,
        checks: &Checks,
        options: &SolveOptions,
        record: &mut dyn FnMut(&mut wgpu::CommandEncoder, Step),
        progress: &mut OnProgress<'_>,
    ) -> Result<Iteration> {
        use wgpu::BufferUsages as U;
        let n = checks.tasks;
        // Each check: its sweeps, and whether it ends a window of the schedule (divergence is
        // judged there). Modified policy iteration tests every improvement, as the reference
        // does (`crate::engine::cpu::iterate_mpi_cpu`): a check per sweep.
        let schedule = check_windows(sweep_budget(&options.horizon));
        let windows: Vec<(u32, bool)> = match options.method {
            Method::Vi => schedule.iter().map(|&len| (len, true)).collect(),
            Method::Mpi { .. } => (schedule.iter())
                .flat_map(|&len| (1..=len).map(move |i| (1, i == len)))
                .collect(),
        };
        let mut monitor = ConvergenceMonitor::new(options, n);
        let mut verdict = Verdict::Continue;
        let mut last = vec![SweepStats::default(); n];
        let (mut next_window, mut sweeps, mut per_submit) = (0usize, 0u32, 1usize);
        let frozen_bytes = n as u64 * 4;
        let staging = self.buffer(
            "softvi.check_staging",
            (MAX_CHECKS_PER_SUBMIT * n * 16) as u64 + CONTROL_HEADER_BYTES + frozen_bytes,
            U::MAP_READ | U::COPY_DST,
        );
        while next_window < windows.len() && verdict == Verdict::Continue {
            let batch = &windows[next_window..(next_window + per_submit).min(windows.len())];
            next_window += batch.len();
            per_submit = (per_submit * 2).min(self.checks_per_submit);
            self.queue
                .write_buffer(&checks.control, 0, bytemuck::bytes_of(&0u32));
            let mut encoder = self.device.create_command_encoder(&Default::default());
            let mut index = sweeps;
            for &(len, _) in batch {
                for i in 0..len {
                    let parity = (index % 2) as usize;
                    let checked = i + 1 == len;
                    record(
                        &mut encoder,
                        Step::Sweep {
                            index,
                            parity,
                            checked,
                        },
                    );
                    index += 1;
                }
                {
                    let mut pass = encoder.begin_compute_pass(&Default::default());
                    pass.set_bind_group(0, &checks.group, &[]);
                    pass.set_pipeline(&self.reduce_pipeline);
                    pass.dispatch_workgroups(n as u32, 1, 1);
                    pass.set_pipeline(&self.decide_pipeline);
                    pass.dispatch_workgroups(1, 1, 1);
                }
                if options.uses_extrapolation() {
                    record(
                        &mut encoder,
                        Step::Extrapolate {
                            parity: (index % 2) as usize,
                        },
                    );
                }
            }
            let check_bytes = (batch.len() * n * 16) as u64;
            let frozen_at = CONTROL_HEADER_BYTES + check_bytes;
            encoder.copy_buffer_to_buffer(&checks.control, 0, &staging, 0, CONTROL_HEADER_BYTES);
            encoder.copy_buffer_to_buffer(
                &checks.checks,
                0,
                &staging,
                CONTROL_HEADER_BYTES,
                check_bytes,
            );
            encoder.copy_buffer_to_buffer(&checks.frozen, 0, &staging, frozen_at, frozen_bytes);
            self.queue.submit([encoder.finish()]);
            let bytes = self.map_read(&staging, frozen_at + frozen_bytes).await?;
            let header: &[u32] = bytemuck::cast_slice(&bytes[..CONTROL_HEADER_BYTES as usize]);
            let converged_check = header[1];
            let stats: &[[f32; 4]] =
                bytemuck::cast_slice(&bytes[CONTROL_HEADER_BYTES as usize..frozen_at as usize]);
            let frozen: &[u32] = bytemuck::cast_slice(&bytes[frozen_at as usize..]);
            for (j, &(len, window_end)) in batch.iter().enumerate() {
                sweeps += len;
                last = stats[j * n..(j + 1) * n]
                    .iter()
                    .map(|s| SweepStats {
                        max_abs_delta: s[0] as f64,
                        min_delta: s[1] as f64,
                        max_delta: s[3] as f64,
                        max_abs_value: s[2] as f64,
                        active: s[1] <= s[3],
                    })
                    .collect();
                // The GPU froze these tasks at this check; the monitor adds divergence. A task
                // the host froze earlier holds a stale or host value, which it ignores.
                let converged: Vec<bool> = frozen.iter().map(|&f| f == j as u32).collect();
                if window_end {
                    verdict = monitor.observe(sweeps, &last, &converged);
                } else {
                    // Between two of the schedule's checks, as `iterate_checked` there.
                    monitor.converged_between_checks(sweeps, &last, &converged);
                    if !monitor.frozen().contains(&false) {
                        verdict = monitor.observe(sweeps, &last, &converged);
                    }
                }
                if verdict != Verdict::Continue || converged_check == j as u32 {
                    break;
                }
            }
            if progress(&Progress::after(options, sweeps, &last)).is_break() {
                return Err(Error::Cancelled { sweeps });
            }
            if let (Some(mut live), Some((values, bytes))) = (self.live_values.take(), &checks.live)
            {
                let now = self
                    .read_f32(&values[(sweeps % 2) as usize], 0, *bytes)
                    .await;
                if let Ok(now) = &now {
                    live(sweeps, now);
                }
                self.live_values = Some(live);
                now?;
            }
            // Freeze on the GPU the tasks the host found diverged, before the next submission.
            for t in (0..n).filter(|&t| monitor.is_frozen(t) && frozen[t] == NOT_FROZEN) {
                let at = t as u64 * 4;
                self.queue
                    .write_buffer(&checks.frozen, at, bytemuck::bytes_of(&FROZEN_BY_HOST));
            }
        }
        let outcomes = monitor.outcomes(sweeps, &last);
        Ok(Iteration { sweeps, outcomes })
    }

    /// Copies `size` bytes of `src` from `offset` to the host through a pooled staging buffer.
    pub async fn read_buffer(
        &mut self,
        src: &wgpu::Buffer,
        offset: u64,
        size: u64,
    ) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(size as usize);
        let staging_size = size.min(STAGING_BYTES).next_multiple_of(4);
        let staging = self.buffer(
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
            out.extend_from_slice(&self.map_read(&staging, part).await?);
            done += part;
        }
        Ok(out)
    }

    /// [`GpuCore::read_buffer`] as f32s.
    pub async fn read_f32(
        &mut self,
        src: &wgpu::Buffer,
        offset: u64,
        size: u64,
    ) -> Result<Vec<f32>> {
        Ok(bytemuck::cast_slice(&self.read_buffer(src, offset, size).await?).to_vec())
    }

    /// Maps the first `size` bytes of a MAP_READ buffer after all submitted work and copies
    /// them out. Natively `device.poll` waits and the map is done when it returns; in a
    /// browser the poll returns at once and the map completes from the event loop, which the
    /// returned future awaits.
    pub async fn map_read(&self, staging: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        let slice = staging.slice(..size);
        let mapped = MapDone::default();
        let signal = mapped.clone();
        slice.map_async(wgpu::MapMode::Read, move |r| signal.finish(r));
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU failed: {e}")))?;
        mapped
            .await
            .map_err(|e| Error::Gpu(format!("mapping a readback buffer failed: {e}")))?;
        let bytes = slice
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("reading a mapped buffer failed: {e:?}")))?
            .to_vec();
        staging.unmap();
        Ok(bytes)
    }

    /// Submits one dispatch of `pipeline` with `group` as its own pass.
    pub fn dispatch(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        pipeline: &wgpu::ComputePipeline,
        group: &wgpu::BindGroup,
        workgroups: [u32; 3],
    ) {
        if workgroups.contains(&0) {
            return;
        }
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, group, &[]);
        let [x, y, z] = workgroups;
        pass.dispatch_workgroups(x, y, z);
    }
}

/// The end of one `map_async`: its callback stores the result and wakes the task awaiting it.
#[derive(Clone, Default)]
struct MapDone(Arc<Mutex<MapState>>);

#[derive(Default)]
struct MapState {
    result: Option<std::result::Result<(), wgpu::BufferAsyncError>>,
    waker: Option<Waker>,
}

impl MapDone {
    fn finish(&self, result: std::result::Result<(), wgpu::BufferAsyncError>) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.result = Some(result);
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }
}

impl Future for MapDone {
    type Output = std::result::Result<(), wgpu::BufferAsyncError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match state.result.take() {
            Some(result) => Poll::Ready(result),
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
