//! The GPU path for general tabular MDPs: `shaders/mdp_backup.wgsl` (soft backups, policy)
//! over CSR rows (`shaders/mdp_rows_csr.wgsl`) or, for a model whose rows are mostly full, over
//! the dense product `shaders/mdp_dense.wgsl` computes (`shaders/mdp_rows_dense.wgsl`), and
//! `shaders/mdp_occupancy.wgsl` (forward messages, over CSR), driven by the same convergence
//! checks as the grid engine.

use crate::engine::Instant;
use std::ops::Range;

use crate::error::{Error, Result, ensure_limit};
use bytemuck::{Pod, Zeroable};

use super::bands::{Band, BandLimits, band_dispatch, plan_bands};
use super::chunks::{ChunkResult, solve_in_chunks};
use super::context::GpuContext;
use super::core::{
    Checks, EngineOptions, ExtrapolateBand, ExtrapolateParams, GpuCore, Iteration, Kernels, Shader,
    Step, StepCopies, Uniforms, Window, bind, invocations, storage, window,
};
use super::forward::{BandDispatch, ForwardOutputs, ForwardPass, PairDispatch, record_forward};
use super::wait;
use crate::engine::layout::{MdpInputs, dense_transitions};
use crate::engine::options::{Backup, Horizon, Method, Outputs, SolveOptions};
use crate::engine::schedule::{
    OnProgress, Verdict, keep_going, span_bounded_tasks, with_unbounded,
};
use crate::engine::solution::{MdpSolution, check_mdp_solve};
use crate::world::mdp::{TabularMdp, Transpose};

/// WGSL source of the CSR backup and policy kernels.
pub const MDP_BACKUP_WGSL: &str = wgsl!(
    "shared/constants.wgsl",
    "shared/residual_stats.wgsl",
    "shared/log_sum_exp.wgsl",
    "shared/policy_ties.wgsl",
    "mdp_backup.wgsl",
    "mdp_rows_csr.wgsl",
);
/// WGSL source of the backup and policy kernels over the dense product.
pub const MDP_DENSE_BACKUP_WGSL: &str = wgsl!(
    "shared/constants.wgsl",
    "shared/residual_stats.wgsl",
    "shared/log_sum_exp.wgsl",
    "shared/policy_ties.wgsl",
    "mdp_backup.wgsl",
    "mdp_rows_dense.wgsl",
);
/// WGSL source of the dense product kernels (`mdp_dense_shift`, `mdp_dense_product`).
pub const MDP_DENSE_WGSL: &str = wgsl!(
    "shared/constants.wgsl",
    "shared/residual_stats.wgsl",
    "mdp_dense.wgsl",
);
/// The optimistic dense backup's row mass below which a row is recomputed with its own
/// largest successor. Same as `SUM_LOW` in `shaders/mdp_rows_dense.wgsl`.
pub const DENSE_SUM_LOW: f32 = 1e-20;
/// Most tasks one workgroup of `mdp_dense_product` sums. Same as `MAX_TASK_TILE` in
/// `shaders/mdp_dense.wgsl`.
pub const MAX_TASK_TILE: u32 = 8;
/// WGSL source of the occupancy (forward message) kernel.
pub const MDP_OCCUPANCY_WGSL: &str = wgsl!(
    "shared/constants.wgsl",
    "shared/residual_stats.wgsl",
    "mdp_occupancy.wgsl",
);

/// WGSL source of the VJP kernels (`engine::gpu::mdp_vjp`).
pub const MDP_VJP_WGSL: &str = wgsl!(
    "shared/constants.wgsl",
    "shared/log_sum_exp.wgsl",
    "shared/policy_ties.wgsl",
    "mdp_vjp.wgsl",
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
    /// States S per task.
    pub states: u32,
    /// Actions A.
    pub actions: u32,
    /// First task (`[task]` index within the chunk) of this band.
    pub task_base: u32,
    /// First state of this band.
    pub state_base: u32,
    /// States of this band.
    pub state_count: u32,
    /// Workgroups along x of this band's dispatch.
    pub dispatch_x: u32,
    /// `partials` slot of this band's first workgroup within a task.
    pub group_base: u32,
    /// `partials` slots per task.
    pub groups_per_task: u32,
    /// 32-bit words of fixed-state bits per task.
    pub fixed_words_per_task: u32,
    /// Start of the `indptr` window, in rows.
    pub indptr_origin: u32,
    /// Start of the `successors` and `probs` windows, in entries.
    pub entry_origin: u32,
    /// Start of the reward and `out` windows, in elements of `[task][state][action]`.
    pub row_origin: u32,
    /// Start of the `fixed_bits` window, in elements of `[task][word]`.
    pub fixed_origin: u32,
    /// Start of the `v_in` window, in elements of `[task][state]`.
    pub v_in_origin: u32,
    /// Start of the `v_out` window, in elements of `[task][state]`.
    pub out_origin: u32,
    /// Discount.
    pub gamma: f32,
    /// `alpha * ln(2)` (value units).
    pub alpha_ln2: f32,
    /// `log2(e) / alpha`.
    pub log2e_over_alpha: f32,
    /// Padding to 16 bytes.
    pub _pad0: u32,
    /// Padding to 16 bytes.
    pub _pad1: u32,
}

/// Per-band uniform of `shaders/mdp_dense.wgsl`. Keep in sync with `DenseParams` there (size
/// checked by tests/kernel_shader_layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct DenseParams {
    /// States S per task.
    pub states: u32,
    /// Actions A.
    pub actions: u32,
    /// Entries per row of the dense matrix and per task of X: S rounded up to a multiple of 4
    /// ([`dense_columns`]).
    pub columns: u32,
    /// First task (`[task]` index within the chunk) of this band.
    pub task_base: u32,
    /// Tasks of this band.
    pub task_count: u32,
    /// First row `s * A + a` of this band.
    pub row_base: u32,
    /// Rows of this band.
    pub row_count: u32,
    /// Workgroups along x of this band's dispatch.
    pub dispatch_x: u32,
    /// Start of the `dense` window, in elements of `[row][column]`.
    pub dense_origin: u32,
    /// Start of the `x` and `x_out` windows, in elements of `[task][column]`.
    pub x_origin: u32,
    /// Start of the `v_in` window, in elements of `[task][state]`.
    pub v_origin: u32,
    /// Start of the `product` window, in elements of `[task][row]`.
    pub product_origin: u32,
    /// `gamma * log2(e) / alpha` (the optimistic backup's shared exponential); 0 for the
    /// expected backup (X = V).
    pub scale: f32,
    /// Padding to 16 bytes.
    pub _pad0: u32,
    /// Padding to 16 bytes.
    pub _pad1: u32,
    /// Padding to 16 bytes.
    pub _pad2: u32,
}

/// Entries per row of the dense matrix on the device: `states` rounded up to a multiple of 4,
/// so that `shaders/mdp_dense.wgsl` reads rows and X as `vec4` (the extra entries are 0).
pub fn dense_columns(states: usize) -> usize {
    states.next_multiple_of(4)
}

/// How [`MdpEngine`] stores a model's transitions on the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MdpStorage {
    /// Dense where [`dense_transitions`] says so (the native engine's rule) and the device
    /// and options allow it ([`MdpEngine::storage_for`]), else CSR.
    #[default]
    Auto,
    /// CSR rows.
    Csr,
    /// The dense `[S*A, S]` matrix and `shaders/mdp_dense.wgsl`'s product, on any model the
    /// device and options allow (an error otherwise).
    Dense,
}

/// Per-band uniform of `shaders/mdp_occupancy.wgsl`. Keep in sync with `OccupancyParams`
/// there (size checked by tests/kernel_shader_layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct OccupancyParams {
    /// States S per task.
    pub states: u32,
    /// Actions A.
    pub actions: u32,
    /// First task (`[task]` index within the chunk) of this band.
    pub task_base: u32,
    /// First state of this band.
    pub state_base: u32,
    /// States of this band.
    pub state_count: u32,
    /// Workgroups along x of this band's dispatch.
    pub dispatch_x: u32,
    /// `partials` slot of this band's first workgroup within a task.
    pub group_base: u32,
    /// `partials` slots per task.
    pub groups_per_task: u32,
    /// Transitions per task (nonzeros).
    pub entries: u32,
    /// Start of the `incoming_indptr` window, in states.
    pub indptr_origin: u32,
    /// Start of the `incoming` and `incoming_probs` windows, in entries.
    pub entry_origin: u32,
    /// Start of the policy window, in elements of `[task][state][action]`.
    pub policy_origin: u32,
    /// Start of the `d_in` window, in elements of `[task][state]`.
    pub d_in_origin: u32,
    /// Start of the `d_out` and `start` windows, in elements of `[task][state]`.
    pub out_origin: u32,
    /// Discount.
    pub gamma: f32,
    /// Start of the `weights` window, in elements of `[task][entry]`.
    pub weight_origin: u32,
}

/// Tasks `[t0, t1)` and states `[s0, s1)` of a band.
fn span(band: &Band) -> (u64, u64, u64, u64) {
    (
        band.task_base as u64,
        (band.task_base + band.task_count) as u64,
        band.first as u64,
        (band.first + band.count) as u64,
    )
}

/// Splits `tasks` tasks of `states` states into bands (of whole tasks, or of states of one
/// task) whose bindings fit `max_binding` bytes: arrays read over whole tasks take
/// `whole_task_bytes` per task, arrays windowed by state `bytes_per_state` per state and
/// task, and the transition entries of states `[0, s)` are `entries_before(s)` (4 bytes
/// each). A band has at most `max_workgroups` tasks.
pub fn plan_mdp_bands(
    tasks: usize,
    states: usize,
    whole_task_bytes: u64,
    bytes_per_state: u64,
    entries_before: &dyn Fn(usize) -> u64,
    max_binding: u64,
    max_workgroups: u32,
) -> Result<Vec<Band>> {
    let capacity = max_binding.saturating_sub(ALIGN_SLACK);
    if whole_task_bytes > capacity {
        return Err(Error::limit(
            format!("an MDP of {states} states, per task in one storage binding,"),
            whole_task_bytes,
            "the adapter's max_storage_buffer_binding_size",
            max_binding,
        ));
    }
    let task_bytes = whole_task_bytes.max(states as u64 * bytes_per_state);
    let whole = task_bytes <= capacity && entries_before(states) * 4 <= capacity;
    let entry_bytes = |s0: usize, s1: usize| (entries_before(s1) - entries_before(s0)) * 4;
    plan_bands(
        tasks,
        states,
        &BandLimits {
            whole_task_bytes: whole.then_some(task_bytes),
            capacity,
            fits: &|s0, s1| {
                (s1 - s0) as u64 * bytes_per_state <= capacity && entry_bytes(s0, s1) <= capacity
            },
            alone: &|s0| {
                Error::limit(
                    format!("state {s0} alone, with its transitions,"),
                    (bytes_per_state + entry_bytes(s0, s0 + 1)).max(capacity + 1),
                    "the adapter's max_storage_buffer_binding_size",
                    max_binding,
                )
            },
            max_workgroups,
        },
    )
}

/// Partial-slot offsets per band: bands of one task's state ranges follow each other; a band
/// starting at state 0 starts at slot 0. Returns the offsets and the slots per task.
fn group_bases(bands: &[Band]) -> (Vec<u32>, u32) {
    let (mut bases, mut base, mut per_task) = (Vec::new(), 0u32, 0u32);
    for band in bands {
        if band.first == 0 {
            base = 0;
        }
        bases.push(base);
        base += (band.count as u32).div_ceil(WORKGROUP_SIZE);
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
pub(super) enum MdpStage {
    Backup,
    Policy,
    /// Modified policy iteration's improvement and evaluation sweeps.
    Improve,
    Evaluate,
    Occupancy,
    OccupancyWeights,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct MdpPipelineKey {
    pub stage: MdpStage,
    pub optimistic: bool,
    pub hard_max: bool,
    pub write_residual: bool,
    pub add_start: bool,
    /// The occupancy pull reads folded weights.
    pub weighted: bool,
    /// Actions, for the occupancy pull (0 for the other stages).
    pub actions: u32,
    /// `mdp_policy` writes Q instead of pi.
    pub write_q: bool,
    /// Tasks may stop iterating (an infinite horizon): `mdp_backup` reads `frozen`.
    pub freeze: bool,
}

/// The arrays of one MDP on the device, shared by every chunk of tasks.
struct Dynamics {
    /// CSR rows (16-byte stand-ins when `dense` holds the transitions).
    indptr: wgpu::Buffer,
    successors: wgpu::Buffer,
    probs: wgpu::Buffer,
    /// P as the dense `[s * A + a][s']` matrix, when stored dense.
    dense: Option<wgpu::Buffer>,
    incoming: Option<(wgpu::Buffer, wgpu::Buffer, wgpu::Buffer, Vec<u32>)>,
}

/// A chunk's dense product (pooled buffers): what `shaders/mdp_dense.wgsl` binds.
struct DenseChunk {
    /// sum_s' P(s'|s,a) X(s'), `[task][state][action]` (the reward's layout).
    product: wgpu::Buffer,
    /// X: V (expected backup) or the shared exponentials (optimistic),
    /// `[task][column]`, [`dense_columns`] a task, 0 past S.
    x: wgpu::Buffer,
    /// M per task, `[task]`.
    shift: wgpu::Buffer,
    /// What a binding the entry point does not write is bound to where its buffer is written
    /// by another binding of the same group (16 bytes).
    scratch: wgpu::Buffer,
    /// The product's bands (rows of whole states, by tasks), their uniforms and dispatches.
    bands: Vec<Band>,
    params: Uniforms<DenseParams>,
    dispatch: Vec<[u32; 3]>,
    /// Tasks per workgroup (`TASK_TILE`).
    task_tile: u32,
    /// Tasks of the chunk, S and A.
    tasks: u64,
    states: u64,
    actions: u64,
    optimistic: bool,
    freeze: bool,
}

/// A dense product band's binding windows.
struct DenseWindows {
    /// `dense` `[row][column]`, `x` and `x_out` `[task][column]`, `v_in` `[task][state]`,
    /// `product` `[task][row]`.
    dense: Window,
    x: Window,
    v: Window,
    product: Window,
}

/// The windows of `band` of the dense product over `(tasks, S, A)`, offsets aligned to `align`.
fn dense_windows(band: &Band, (n, s, a): (u64, u64, u64), align: u64) -> DenseWindows {
    let (t0, t1, s0, s1) = span(band);
    let columns = dense_columns(s as usize) as u64;
    let rows = (s0 * a, s1 * a);
    DenseWindows {
        dense: window(
            rows.0 * columns,
            rows.1 * columns,
            s * a * columns,
            4,
            align,
        ),
        x: window(t0 * columns, t1 * columns, n * columns, 4, align),
        v: window(t0 * s, t1 * s, n * s, 4, align),
        product: window(
            t0 * s * a + rows.0,
            (t1 - 1) * s * a + rows.1,
            n * s * a,
            4,
            align,
        ),
    }
}

/// One recorded dispatch of the dense product: pipeline, bind group, workgroups.
type DenseDispatch = (wgpu::ComputePipeline, wgpu::BindGroup, [u32; 3]);

/// The bindings of `shaders/mdp_backup.wgsl` that stay the same across a run's dispatches.
struct BackupBindings<'a> {
    params: &'a Uniforms<MdpParams>,
    dynamics: &'a Dynamics,
    reward: &'a wgpu::Buffer,
    fixed: &'a wgpu::Buffer,
    partials: &'a wgpu::Buffer,
    frozen: &'a wgpu::Buffer,
    dense: Option<&'a DenseChunk>,
    mpi: &'a MpiBuffers,
}

/// Where a band sits in its chunk: its span and the fields both kernels' uniforms open with.
struct BandPlace {
    /// Tasks `[t0, t1)` and states `[s0, s1)` covered.
    span: (u64, u64, u64, u64),
    states: u32,
    actions: u32,
    task_base: u32,
    state_base: u32,
    state_count: u32,
    dispatch_x: u32,
    group_base: u32,
    groups_per_task: u32,
}

/// A band's uniform of type `$params`: the fields every band's uniform opens with, from the
/// [`BandPlace`] `$place`, then the kernel's own.
macro_rules! band_params {
    ($params:ident at $place:expr, { $($field:ident: $value:expr),* $(,)? }) => {{
        let place: &BandPlace = $place;
        $params {
            states: place.states,
            actions: place.actions,
            task_base: place.task_base,
            state_base: place.state_base,
            state_count: place.state_count,
            dispatch_x: place.dispatch_x,
            group_base: place.group_base,
            groups_per_task: place.groups_per_task,
            $($field: $value,)*
        }
    }};
}

/// Lays out `bands` of a chunk of `mdp` for one kernel, at most `max_workgroups` workgroups
/// along x: `band` gives a band's binding windows and uniform from its place.
fn lay_out<P>(
    mdp: &TabularMdp,
    bands: &[Band],
    max_workgroups: u32,
    band: impl Fn(&BandPlace) -> (Vec<Window>, P),
) -> Result<Vec<Layout<P>>> {
    let (bases, per_task) = group_bases(bands);
    (bands.iter().zip(bases))
        .map(|(b, group_base)| {
            let (dispatch, _) = band_dispatch(b.count, b.task_count, max_workgroups)?;
            let place = BandPlace {
                span: span(b),
                states: mdp.states as u32,
                actions: mdp.actions as u32,
                task_base: b.task_base as u32,
                state_base: b.first as u32,
                state_count: b.count as u32,
                dispatch_x: dispatch[0].max(1),
                group_base,
                groups_per_task: per_task,
            };
            let (windows, params) = band(&place);
            Ok(Layout {
                params,
                windows,
                dispatch,
            })
        })
        .collect()
}

/// A chunk's plan and buffers (pooled across solves): what every step of its solve binds.
struct MdpChunk {
    /// Tasks of the problem in the chunk, and their states' entries in its `[task][state]`
    /// arrays.
    tasks: Range<usize>,
    task_states: Range<usize>,
    /// Bytes of one value array, `[task][state]`, and of one row array,
    /// `[task][state][action]`.
    v_bytes: u64,
    row_bytes: u64,
    /// The backup kernels' bands.
    layouts: Vec<Layout<MdpParams>>,
    checks: Checks,
    /// `[task]`: the tasks that stop by the span bound (no fixed state).
    span_bounded: Vec<bool>,
    /// The backup's pipeline; the policy differs only in `stage`.
    key: MdpPipelineKey,
    /// V ping-pong pair, `[task][state]`.
    values: [wgpu::Buffer; 2],
    /// Reward `[task][state][action]`, fixed bits `[task][word]`.
    reward: wgpu::Buffer,
    fixed: wgpu::Buffer,
    /// pi, `[task][state][action]`.
    policy: wgpu::Buffer,
    /// V before the last extrapolation jump, for its rollback, `[task][state]`.
    backup: wgpu::Buffer,
    /// The bands' uniforms, slot = band.
    params: Uniforms<MdpParams>,
    /// With a forward pass, V_t of every step: slot t = V_t, `[t][task][state]`.
    steps: Option<wgpu::Buffer>,
    /// The dense product, when the transitions are stored dense.
    dense: Option<DenseChunk>,
    /// Modified policy iteration's buffers (16-byte stand-ins for value iteration).
    mpi: MpiBuffers,
}

/// What modified policy iteration adds to a chunk (pooled buffers; 16-byte stand-ins under
/// value iteration, which binds but never reads them). The improvement's pi is kept in the
/// chunk's `policy` buffer, which the policy and Q passes overwrite only after the iteration.
struct MpiBuffers {
    /// Whether these are the real buffers (else stand-ins, bound whole).
    active: bool,
    /// Tasks of the chunk.
    tasks: u64,
    /// h = V' - sum_a pi Q of the last improvement, `[task][state]`.
    h: wgpu::Buffer,
    /// The offsets values are held relative to, `[3][task]` (`offset` in
    /// `shaders/mdp_backup.wgsl`; [`MdpEngine::iterate_mpi`]).
    offset: wgpu::Buffer,
    /// The third value buffer the evaluation sweeps ping-pong through, `[task][state]`.
    values: wgpu::Buffer,
}

/// A chunk's occupancy plan and buffers (pooled across solves), over the transposed
/// transitions.
struct OccupancyChunk {
    /// Bands over the incoming entries and their layouts (none without the transpose).
    bands: Vec<Band>,
    layouts: Vec<Layout<OccupancyParams>>,
    /// The discounted sum reads pi(a|s) P(s'|s,a) folded into `weights`, `[task][entry]`
    /// (a 16-byte stand-in otherwise).
    weighted: bool,
    weights: wgpu::Buffer,
    /// D ping-pong pair and the start distribution, `[task][state]`.
    d: [wgpu::Buffer; 2],
    start: wgpu::Buffer,
    /// Per task of the chunk, the discounted sum's start scale (peak 1); empty when finite.
    scales: Vec<f64>,
    /// The bands' uniforms, slot = band.
    params: Uniforms<OccupancyParams>,
    /// The plain pull's pipeline; the others differ in `stage`, `weighted`, `add_start` and
    /// `write_residual`.
    key: MdpPipelineKey,
}

/// Batched general-MDP soft value iteration and occupancy on one wgpu device. Pipelines,
/// layouts and buffers are built once and reused by every solve.
pub struct MdpEngine {
    pub(super) core: GpuCore,
    mdp_backup: Shader,
    pub(super) mdp_occupancy: Shader,
    /// The VJP's kernels (`super::mdp_vjp`).
    pub(super) mdp_vjp: Shader,
    /// The backup and policy over the dense product, and the product itself.
    mdp_dense_backup: Shader,
    mdp_dense: Shader,
    storage: MdpStorage,
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
        let backup_bindings = [
            uniform,        // params
            storage(true),  // indptr (dense: product)
            storage(true),  // successors (dense: shift)
            storage(true),  // probs (dense: dense)
            storage(true),  // reward
            storage(true),  // fixed_bits
            storage(true),  // v_in
            storage(false), // v_out
            storage(false), // partials
            storage(false), // out
            storage(true),  // frozen
            storage(false), // h
            storage(false), // offset
        ];
        let mdp_backup = core.shader("softvi.mdp_backup", MDP_BACKUP_WGSL, &backup_bindings);
        let mdp_dense_backup = core.shader(
            "softvi.mdp_dense_backup",
            MDP_DENSE_BACKUP_WGSL,
            &backup_bindings,
        );
        let mdp_dense = core.shader(
            "softvi.mdp_dense",
            MDP_DENSE_WGSL,
            &[
                uniform,        // params
                storage(true),  // dense
                storage(true),  // x
                storage(false), // product
                storage(true),  // frozen
                storage(true),  // v_in
                storage(false), // x_out
                storage(false), // shift
            ],
        );
        let mdp_occupancy = core.shader(
            "softvi.mdp_occupancy",
            MDP_OCCUPANCY_WGSL,
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
                storage(true),  // frozen
            ],
        );
        let mdp_vjp = core.shader(
            "softvi.mdp_vjp",
            MDP_VJP_WGSL,
            &[
                uniform,        // params
                storage(true),  // csr_indptr
                storage(true),  // csr_index
                storage(true),  // csr_probs
                storage(true),  // reward
                storage(true),  // fixed_bits
                storage(true),  // v
                storage(false), // rows
                storage(true),  // u_in
                storage(false), // out
                storage(false), // weights
            ],
        );
        Ok(Self {
            core,
            mdp_backup,
            mdp_occupancy,
            mdp_vjp,
            mdp_dense_backup,
            mdp_dense,
            storage: MdpStorage::Auto,
        })
    }

    /// Sets how later solves store the transitions (default [`MdpStorage::Auto`]).
    pub fn set_storage(&mut self, storage: MdpStorage) {
        self.storage = storage;
    }

    /// How a solve of `mdp` under `options` stores the transitions: [`MdpStorage::Csr`] or
    /// [`MdpStorage::Dense`]. Dense needs a model without excluded states (gamma = 1 with an
    /// infinite horizon may exclude some, at value -inf, and a dense product cannot skip an
    /// entry of probability 0 on one), the matrix within the adapter's buffer limit and one
    /// state's A rows within its storage-binding limit; [`MdpStorage::Auto`] takes it where
    /// [`dense_transitions`] says so, [`MdpStorage::Dense`] fails where it cannot.
    pub fn storage_for(&self, mdp: &TabularMdp, options: &SolveOptions) -> Result<MdpStorage> {
        let (s, a) = (mdp.states as u64, mdp.actions as u64);
        let columns = dense_columns(mdp.states) as u64;
        let bytes = (s.checked_mul(a)).and_then(|rows| rows.checked_mul(columns * 4));
        let unfit = if options.excludes_unreachable() {
            Some("gamma = 1 with an infinite horizon may exclude states (value -inf)".to_string())
        } else if bytes.is_none_or(|b| b > self.core.max_buffer) {
            Some(format!(
                "the [{s}*{a}, {s}] f32 matrix is over the adapter's max_buffer_size ({} bytes)",
                self.core.max_buffer
            ))
        } else if a * columns * 4 + ALIGN_SLACK > self.core.max_binding {
            Some(format!(
                "one state's {a} rows of {s} f32 are over the adapter's \
                 max_storage_buffer_binding_size ({} bytes)",
                self.core.max_binding
            ))
        } else {
            None
        };
        match (self.storage, unfit) {
            (MdpStorage::Csr, _) | (MdpStorage::Auto, Some(_)) => Ok(MdpStorage::Csr),
            (MdpStorage::Auto, None) if !dense_transitions(mdp) => Ok(MdpStorage::Csr),
            (_, None) => Ok(MdpStorage::Dense),
            (MdpStorage::Dense, Some(why)) => Err(Error::InvalidInput(format!(
                "dense transitions on the GPU: {why}"
            ))),
        }
    }

    /// `"<adapter name> (<backend>)"` of the device this engine runs on.
    pub fn adapter_label(&self) -> &str {
        &self.core.adapter_label
    }

    /// The pipeline of `key`, from the core's cache.
    pub(super) fn pipeline(&mut self, key: MdpPipelineKey) -> wgpu::ComputePipeline {
        self.pipeline_on(key, false)
    }

    /// The pipeline of `key` for `chunk`: its backup and policy over the dense product where
    /// the chunk has one.
    fn chunk_pipeline(&mut self, chunk: &MdpChunk, key: MdpPipelineKey) -> wgpu::ComputePipeline {
        self.pipeline_on(key, chunk.dense.is_some())
    }

    /// The pipeline of `key`; with `dense`, the backup and policy stages come from
    /// `MDP_DENSE_BACKUP_WGSL`.
    fn pipeline_on(&mut self, key: MdpPipelineKey, dense: bool) -> wgpu::ComputePipeline {
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let (entry, shader, constants) = match key.stage {
            MdpStage::Occupancy | MdpStage::OccupancyWeights => (
                if key.stage == MdpStage::Occupancy {
                    "mdp_occupancy"
                } else {
                    "mdp_occupancy_weights"
                },
                &self.mdp_occupancy,
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
                    MdpStage::Improve => "improve",
                    MdpStage::Evaluate => "evaluate",
                    _ => "mdp_policy",
                },
                match dense {
                    true => &self.mdp_dense_backup,
                    false => &self.mdp_backup,
                },
                vec![
                    ("OPTIMISTIC", flag(key.optimistic)),
                    ("HARD_MAX", flag(key.hard_max)),
                    ("WRITE_RESIDUAL", flag(key.write_residual)),
                    ("WRITE_Q", flag(key.write_q)),
                    ("FREEZE", flag(key.freeze)),
                ],
            ),
        };
        self.core.pipeline(shader, entry, &constants)
    }

    /// Solves every task of `mdp`; the result has the same layout and meaning as
    /// [`crate::engine::cpu::solve_mdp_cpu`]'s.
    pub fn solve(
        &mut self,
        mdp: &TabularMdp,
        options: &SolveOptions,
        outputs: Outputs,
    ) -> Result<MdpSolution> {
        self.solve_with_progress(mdp, options, outputs, &mut keep_going)
    }

    /// [`MdpEngine::solve`], calling `progress` after every submission's checks.
    pub fn solve_with_progress(
        &mut self,
        mdp: &TabularMdp,
        options: &SolveOptions,
        outputs: Outputs,
        progress: &mut OnProgress<'_>,
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
        let dense = self.storage_for(mdp, options)? == MdpStorage::Dense;
        let dynamics = self.upload_dynamics(mdp, outputs.occupancy, dense)?;

        let adapter = self.core.adapter_label.clone();
        // The CSR engine stays synchronous (the browser build runs grids only).
        let gathered = wait(solve_in_chunks(
            mdp.tasks,
            per_chunk,
            (options, outputs),
            ("GPU MDP solve", &adapter),
            async |tasks| self.solve_chunk(&inputs, &dynamics, tasks, options, outputs, progress),
        ))?;
        // Terminal states keep their value; excluded ones report -inf; the policy is NaN on
        // both, as the CPU's (mdp_policy writes zeros there, which the occupancy pull needs).
        let marks = inputs.marks();
        Ok(gathered.into_solution(
            options,
            outputs,
            &marks,
            ((1, mdp.states), mdp.actions),
            inputs.unreachable.clone(),
            start,
        ))
    }

    /// Uploads the transitions, as CSR rows or (`dense`) the dense matrix, and their transpose
    /// for the occupancy.
    fn upload_dynamics(
        &mut self,
        mdp: &TabularMdp,
        occupancy: bool,
        dense: bool,
    ) -> Result<Dynamics> {
        use wgpu::BufferUsages as U;
        let core = &mut self.core;
        let nnz = mdp.nonzeros() as u64;
        core.ensure_buffer("the transition entries", nnz * 4)?;
        let upload = |core: &mut GpuCore, label, bytes: &[u8]| {
            let buffer = core.buffer(label, bytes.len() as u64, U::STORAGE | U::COPY_DST);
            core.queue.write_buffer(&buffer, 0, bytes);
            buffer
        };
        let stand_in = |core: &mut GpuCore, label| core.buffer(label, 16, U::STORAGE);
        let (indptr, successors, probs, dense) = match dense {
            true => (
                stand_in(core, "softvi.no_indptr"),
                stand_in(core, "softvi.no_successors"),
                stand_in(core, "softvi.no_probs"),
                Some(upload_dense(core, mdp)),
            ),
            false => (
                upload(
                    core,
                    "softvi.indptr",
                    bytemuck::cast_slice(&mdp.csr().indptr),
                ),
                upload(
                    core,
                    "softvi.successors",
                    bytemuck::cast_slice(&mdp.csr().indices),
                ),
                // The model's f64 entries, rounded once for the kernels.
                upload(
                    core,
                    "softvi.probs",
                    bytemuck::cast_slice(&to_f32(&mdp.csr().probs)),
                ),
                None,
            ),
        };
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
                upload(
                    core,
                    "softvi.incoming_probs",
                    bytemuck::cast_slice(&to_f32(&probs)),
                ),
                indptr,
            )
        });
        Ok(Dynamics {
            indptr,
            successors,
            probs,
            dense,
            incoming,
        })
    }

    /// The backup kernels' layout of `bands` of a chunk of `tasks` tasks; with `dense`, the
    /// entry window is over the dense matrix's rows `[row][s']`.
    fn backup_layouts(
        &self,
        inputs: &MdpInputs,
        tasks: usize,
        bands: &[Band],
        dense: bool,
    ) -> Result<Vec<Layout<MdpParams>>> {
        let mdp = inputs.mdp;
        let (s, a) = (mdp.states as u64, mdp.actions as u64);
        let wpt = s.div_ceil(32);
        let nnz = mdp.nonzeros() as u64;
        let n = tasks as u64;
        let align = self.core.storage_align;
        let (alpha_ln2, log2e_over_alpha) = super::temperature_uniforms(inputs.alpha);
        lay_out(mdp, bands, self.core.max_workgroups, |place| {
            let (t0, t1, s0, s1) = place.span;
            let columns = dense_columns(s as usize) as u64;
            let (e0, e1, entries) = match dense {
                true => (s0 * a * columns, s1 * a * columns, s * a * columns),
                false => (
                    mdp.csr().indptr[(s0 * a) as usize] as u64,
                    mdp.csr().indptr[(s1 * a) as usize] as u64,
                    nnz,
                ),
            };
            let windows = vec![
                window(s0 * a, s1 * a + 1, s * a + 1, 4, align),
                window(e0, e1.max(e0 + 1), entries, 4, align),
                window(
                    (t0 * s + s0) * a,
                    ((t1 - 1) * s + s1) * a,
                    n * s * a,
                    4,
                    align,
                ),
                window(
                    t0 * wpt + s0 / 32,
                    (t1 - 1) * wpt + s1.div_ceil(32),
                    n * wpt,
                    4,
                    align,
                ),
                window(t0 * s, t1 * s, n * s, 4, align),
                window(t0 * s + s0, (t1 - 1) * s + s1, n * s, 4, align),
            ];
            let params = band_params!(MdpParams at place, {
                fixed_words_per_task: wpt as u32,
                indptr_origin: windows[0].origin as u32,
                entry_origin: windows[1].origin as u32,
                row_origin: windows[2].origin as u32,
                fixed_origin: windows[3].origin as u32,
                v_in_origin: windows[4].origin as u32,
                out_origin: windows[5].origin as u32,
                gamma: inputs.gamma as f32,
                alpha_ln2: alpha_ln2,
                log2e_over_alpha: log2e_over_alpha,
                _pad0: 0,
                _pad1: 0,
            });
            (windows, params)
        })
    }

    /// The occupancy kernel's layout of `bands` of a chunk of `tasks` tasks.
    fn occupancy_layouts(
        &self,
        inputs: &MdpInputs,
        incoming_indptr: &[u32],
        tasks: usize,
        bands: &[Band],
    ) -> Result<Vec<Layout<OccupancyParams>>> {
        let mdp = inputs.mdp;
        let (s, a) = (mdp.states as u64, mdp.actions as u64);
        let nnz = mdp.nonzeros() as u64;
        let n = tasks as u64;
        let align = self.core.storage_align;
        lay_out(mdp, bands, self.core.max_workgroups, |place| {
            let (t0, t1, s0, s1) = place.span;
            let (e0, e1) = (
                incoming_indptr[s0 as usize] as u64,
                incoming_indptr[s1 as usize] as u64,
            );
            let windows = vec![
                window(s0, s1 + 1, s + 1, 4, align),
                window(e0, e1.max(e0 + 1), nnz, 4, align),
                window(t0 * s * a, t1 * s * a, n * s * a, 4, align),
                window(t0 * s, t1 * s, n * s, 4, align),
                window(t0 * s + s0, (t1 - 1) * s + s1, n * s, 4, align),
                window(
                    t0 * nnz + e0,
                    ((t1 - 1) * nnz + e1).max(t0 * nnz + e0 + 1),
                    n * nnz,
                    4,
                    align,
                ),
            ];
            let params = band_params!(OccupancyParams at place, {
                indptr_origin: windows[0].origin as u32,
                entry_origin: windows[1].origin as u32,
                policy_origin: windows[2].origin as u32,
                d_in_origin: windows[3].origin as u32,
                out_origin: windows[4].origin as u32,
                gamma: inputs.gamma as f32,
                entries: nnz as u32,
                weight_origin: windows[5].origin as u32,
            });
            (windows, params)
        })
    }

    fn backup_group(
        &self,
        params: wgpu::BindingResource,
        layout: &Layout<MdpParams>,
        common: &BackupBindings,
        v_in: &wgpu::Buffer,
        v_out: &wgpu::Buffer,
        out: (&wgpu::Buffer, u64, u64),
    ) -> wgpu::BindGroup {
        let w = &layout.windows;
        let dynamics = common.dynamics;
        let (shader, rows) = match (common.dense, &dynamics.dense) {
            (Some(d), Some(p)) => (
                &self.mdp_dense_backup,
                [
                    bind(&d.product, w[2].offset, w[2].size),
                    d.shift.as_entire_binding(),
                    // Only the optimistic backup's recomputed rows read P.
                    match d.optimistic {
                        true => bind(p, w[1].offset, w[1].size),
                        false => dynamics.probs.as_entire_binding(),
                    },
                ],
            ),
            _ => (
                &self.mdp_backup,
                [
                    bind(&dynamics.indptr, w[0].offset, w[0].size),
                    bind(&dynamics.successors, w[1].offset, w[1].size),
                    bind(&dynamics.probs, w[1].offset, w[1].size),
                ],
            ),
        };
        let [rows0, rows1, rows2] = rows;
        self.core.bind_group(
            shader.label,
            &shader.group_layout,
            [
                params,
                rows0,
                rows1,
                rows2,
                bind(common.reward, w[2].offset, w[2].size),
                bind(common.fixed, w[3].offset, w[3].size),
                bind(v_in, w[4].offset, w[4].size),
                bind(v_out, w[5].offset, w[5].size),
                common.partials.as_entire_binding(),
                bind(out.0, out.1, out.2),
                common.frozen.as_entire_binding(),
                match common.mpi.active {
                    true => bind(&common.mpi.h, w[5].offset, w[5].size),
                    false => common.mpi.h.as_entire_binding(),
                },
                match common.mpi.active {
                    true => bind(&common.mpi.offset, 0, 3 * common.mpi.tasks * 4),
                    false => common.mpi.offset.as_entire_binding(),
                },
            ],
        )
    }

    /// The ping-pong pair of band `b` over `values`: group p reads `values[p]` and writes
    /// `values[1 - p]`; `out` (which the sweeps leave alone) is `backup`'s v_out window.
    fn backup_pair(
        &self,
        (b, layout): (usize, &Layout<MdpParams>),
        common: &BackupBindings,
        values: &[wgpu::Buffer; 2],
        backup: &wgpu::Buffer,
    ) -> [wgpu::BindGroup; 2] {
        let out = (backup, layout.windows[5].offset, layout.windows[5].size);
        let group = |p: usize| {
            let params = common.params.bind(b);
            self.backup_group(params, layout, common, &values[p], &values[1 - p], out)
        };
        [group(0), group(1)]
    }

    /// The policy groups of every band: pi from the values in `v`, into `chunk.policy`.
    fn policy_groups(
        &self,
        dynamics: &Dynamics,
        chunk: &MdpChunk,
        v: &wgpu::Buffer,
    ) -> Vec<wgpu::BindGroup> {
        let common = chunk.bindings(dynamics);
        (chunk.layouts.iter().enumerate())
            .map(|(b, layout)| {
                let params = chunk.params.bind(b);
                let w = layout.windows[2];
                let out = (&chunk.policy, w.offset, w.size);
                self.backup_group(params, layout, &common, v, &chunk.backup, out)
            })
            .collect()
    }

    fn solve_chunk(
        &mut self,
        inputs: &MdpInputs,
        dynamics: &Dynamics,
        tasks: Range<usize>,
        options: &SolveOptions,
        outputs: Outputs,
        progress: &mut OnProgress<'_>,
    ) -> Result<ChunkResult> {
        let unbounded = inputs.unbounded_tasks()[tasks.clone()].to_vec();
        let chunk = self.plan_chunk(inputs, dynamics, tasks, options, outputs)?;
        let mut run = self.backward(inputs, dynamics, &chunk, options, progress)?;
        run.outcomes.verdict = with_unbounded(run.outcomes.verdict, &unbounded);
        let diverged = matches!(run.outcomes.verdict, Verdict::Diverged(_));
        let v_final = (run.sweeps % 2) as usize;
        let values = wait(self.core.read_f32(&chunk.values[v_final], 0, chunk.v_bytes))?;
        let mut result = ChunkResult::new(values, run);
        result.span_bounded = chunk.span_bounded.clone();
        if diverged {
            return Ok(result);
        }
        let finite = matches!(options.horizon, Horizon::Finite(_));
        // Finite horizon: pi_0 and Q_0 come from V_1, the values the last sweep read.
        let from = if finite { 1 - v_final } else { v_final };
        if outputs.q {
            self.policy_pass(dynamics, &chunk, from, true);
            result.q = Some(wait(self.core.read_f32(&chunk.policy, 0, chunk.row_bytes))?);
        }
        // Last, so that the discounted occupancy reads pi from `chunk.policy`.
        if outputs.policy || (outputs.occupancy && !finite) {
            self.policy_pass(dynamics, &chunk, from, false);
            if outputs.policy {
                let policy = wait(self.core.read_f32(&chunk.policy, 0, chunk.row_bytes))?;
                result.policy = Some(policy);
            }
        }
        if let (Some(steps), true) = (&chunk.steps, outputs.all_steps) {
            let horizon = options.horizon.finite_steps() as u64;
            let all = wait(self.core.read_f32(steps, 0, (horizon + 1) * chunk.v_bytes))?;
            let per_step = chunk.task_states.len();
            result.step_values = all.chunks_exact(per_step).map(<[f32]>::to_vec).collect();
        }
        let steps_rows = outputs.all_steps && finite && (outputs.policy || outputs.q);
        if !outputs.occupancy && !steps_rows {
            return Ok(result);
        }
        let occupancy = self.plan_occupancy(inputs, dynamics, &chunk, finite)?;
        if finite {
            let pass = (options.horizon.finite_steps(), outputs);
            let out = self.forward_pass(dynamics, &chunk, &occupancy, pass)?;
            result.step_policy = out.policy;
            result.step_q = out.q;
            result.occupancy = out.occupancy;
        } else {
            // Only the occupancy reaches here without a finite horizon.
            let (d, run) =
                self.discounted_occupancy(inputs, dynamics, &chunk, &occupancy, options)?;
            result.occupancy = vec![d];
            result.occupancy_run = Some(run);
        }
        Ok(result)
    }

    /// A chunk of `tasks`: its bands, checks, pipeline key and (pooled) buffers.
    fn plan_chunk(
        &mut self,
        inputs: &MdpInputs,
        dynamics: &Dynamics,
        tasks: Range<usize>,
        options: &SolveOptions,
        outputs: Outputs,
    ) -> Result<MdpChunk> {
        use wgpu::BufferUsages as U;
        let mdp = inputs.mdp;
        let n = tasks.len();
        let (s, a) = (mdp.states, mdp.actions);
        let dense = dynamics.dense.is_some();
        let optimistic = inputs.backup == Backup::Optimistic;
        // The backup binds the rows of its states: CSR entries, or (read by the optimistic
        // backup only) dense rows.
        let entries = |state: usize| match (dense, optimistic) {
            (false, _) => mdp.csr().indptr[state * a] as u64,
            (true, true) => (state * a * dense_columns(s)) as u64,
            (true, false) => 0,
        };
        let (max_binding, max_workgroups) = (self.core.max_binding, self.core.max_workgroups);
        let bands = plan_mdp_bands(
            n,
            s,
            s as u64 * 4,
            a as u64 * 4,
            &entries,
            max_binding,
            max_workgroups,
        )?;
        let layouts = self.backup_layouts(inputs, n, &bands, dense)?;
        let dispatch: Vec<[u32; 3]> = layouts.iter().map(|l| l.dispatch).collect();
        let freeze = matches!(options.horizon, Horizon::Infinite { .. });
        let dense = match dense {
            true => Some(self.plan_dense(inputs, n, freeze)?),
            false => None,
        };
        let span_bounded = span_bounded_tasks(&inputs.fixed[tasks.start * s..tasks.end * s], n);
        let checks = self.core.checks(
            n,
            layouts[0].params.groups_per_task,
            &dispatch,
            options,
            &span_bounded,
        )?;
        let horizon = options.horizon.finite_steps() as u64;
        let keep_steps = matches!(options.horizon, Horizon::Finite(_))
            && (outputs.all_steps || outputs.occupancy);
        let core = &mut self.core;
        let v_bytes = (n * s * 4) as u64;
        let row_bytes = v_bytes * a as u64;
        let usage = U::STORAGE | U::COPY_SRC | U::COPY_DST;
        let values = [
            core.buffer("softvi.values_a", v_bytes, usage),
            core.buffer("softvi.values_b", v_bytes, usage),
        ];
        let reward = core.buffer("softvi.reward", row_bytes, U::STORAGE | U::COPY_DST);
        let fixed_bytes = (n * s.div_ceil(32) * 4) as u64;
        let fixed = core.buffer("softvi.fixed_bits", fixed_bytes, U::STORAGE | U::COPY_DST);
        let policy = core.buffer("softvi.policy", row_bytes, U::STORAGE | U::COPY_SRC);
        let backup = core.buffer("softvi.backup", v_bytes, U::STORAGE);
        let all: Vec<MdpParams> = layouts.iter().map(|l| l.params).collect();
        let params = core.uniforms("softvi.mdp_params", &all);
        let steps = match keep_steps {
            true => {
                let bytes = (horizon + 1) * v_bytes;
                core.ensure_buffer("the values of every step", bytes)?;
                Some(core.buffer("softvi.step_values", bytes, U::COPY_SRC | U::COPY_DST))
            }
            false => None,
        };
        // Two more value arrays and one per task: each no larger than the reward, which the
        // chunk's task count was planned to fit in one buffer.
        let mpi = match options.method {
            Method::Mpi { .. } => MpiBuffers {
                active: true,
                tasks: n as u64,
                h: core.buffer("softvi.mpi_h", v_bytes, U::STORAGE),
                offset: core.buffer(
                    "softvi.mpi_offset",
                    3 * n as u64 * 4,
                    U::STORAGE | U::COPY_SRC | U::COPY_DST,
                ),
                values: core.buffer("softvi.mpi_values", v_bytes, usage),
            },
            Method::Vi => MpiBuffers {
                active: false,
                tasks: 0,
                h: core.buffer("softvi.no_h", 16, U::STORAGE),
                offset: core.buffer("softvi.no_offset", 16, U::STORAGE),
                values: core.buffer("softvi.no_mpi_values", 16, U::STORAGE),
            },
        };
        let key = MdpPipelineKey {
            stage: MdpStage::Backup,
            optimistic: inputs.backup == Backup::Optimistic,
            hard_max: inputs.alpha == 0.0,
            write_residual: false,
            add_start: false,
            weighted: false,
            actions: 0,
            write_q: false,
            freeze,
        };
        Ok(MdpChunk {
            task_states: tasks.start * s..tasks.end * s,
            tasks,
            v_bytes,
            row_bytes,
            layouts,
            checks,
            span_bounded,
            key,
            values,
            reward,
            fixed,
            policy,
            backup,
            params,
            steps,
            dense,
            mpi,
        })
    }

    /// The dense product's bands and (pooled) buffers for a chunk of `tasks` tasks: bands of
    /// whole states' rows whose P fits a binding, by tasks whose product fits one.
    fn plan_dense(&mut self, inputs: &MdpInputs, tasks: usize, freeze: bool) -> Result<DenseChunk> {
        use wgpu::BufferUsages as U;
        let mdp = inputs.mdp;
        let (n, s, a) = (tasks as u64, mdp.states as u64, mdp.actions as u64);
        let columns = dense_columns(mdp.states) as u64;
        let optimistic = inputs.backup == Backup::Optimistic;
        let capacity = self.core.max_binding.saturating_sub(ALIGN_SLACK);
        // `storage_for` checked that one state's rows fit.
        let states_per_band = (capacity / (a * columns * 4)).clamp(1, s) as usize;
        let task_tile = (tasks as u32).clamp(1, MAX_TASK_TILE);
        let tiles_per_band = (capacity / ((s * a).max(columns) * 4) / task_tile as u64)
            .clamp(1, self.core.max_workgroups as u64) as usize;
        let tasks_per_band = tiles_per_band * task_tile as usize;
        let mut bands = Vec::new();
        for t0 in (0..tasks).step_by(tasks_per_band) {
            for s0 in (0..mdp.states).step_by(states_per_band) {
                bands.push(Band {
                    task_base: t0,
                    task_count: tasks_per_band.min(tasks - t0),
                    first: s0,
                    count: states_per_band.min(mdp.states - s0),
                });
            }
        }
        // vec4 windows: their origins must be whole vec4s.
        let align = self.core.storage_align.max(16);
        let scale = match optimistic {
            true => (inputs.gamma as f32) * super::temperature_uniforms(inputs.alpha).1,
            false => 0.0,
        };
        let mut params = Vec::new();
        let mut dispatch = Vec::new();
        for band in &bands {
            let (t0, _, s0, s1) = span(band);
            let tiles = band.task_count.div_ceil(task_tile as usize);
            let (workgroups, _) =
                band_dispatch(band.count * a as usize, tiles, self.core.max_workgroups)?;
            let rows = (s0 * a, s1 * a);
            let w = dense_windows(band, (n, s, a), align);
            params.push(DenseParams {
                states: s as u32,
                actions: a as u32,
                columns: columns as u32,
                task_base: t0 as u32,
                task_count: band.task_count as u32,
                row_base: rows.0 as u32,
                row_count: (rows.1 - rows.0) as u32,
                dispatch_x: workgroups[0].max(1),
                dense_origin: w.dense.origin as u32,
                x_origin: w.x.origin as u32,
                v_origin: w.v.origin as u32,
                product_origin: w.product.origin as u32,
                scale,
                ..Default::default()
            });
            dispatch.push(workgroups);
        }
        let core = &mut self.core;
        let product = core.buffer("softvi.dense_product", n * s * a * 4, U::STORAGE);
        let x = core.buffer("softvi.dense_x", n * columns * 4, U::STORAGE);
        let shift = core.buffer("softvi.dense_shift", n * 4, U::STORAGE);
        let scratch = core.buffer("softvi.dense_scratch", 16, U::STORAGE);
        let params = core.uniforms("softvi.dense_params", &params);
        Ok(DenseChunk {
            product,
            x,
            shift,
            scratch,
            bands,
            params,
            dispatch,
            task_tile,
            tasks: n,
            states: s,
            actions: a,
            optimistic,
            freeze,
        })
    }

    /// The dispatches of the dense product of the values in `v` (`[task][state]` of the
    /// chunk), in order: the optimistic backup's shift per task, then the product's bands.
    /// `sweeps`: for the iteration's sweeps, which skip the tiles whose tasks have all stopped
    /// (the policy and Q of a stopped task come from its final values: those always run).
    fn dense_dispatches(
        &mut self,
        dynamics: &Dynamics,
        chunk: &MdpChunk,
        v: &wgpu::Buffer,
        sweeps: bool,
    ) -> Vec<DenseDispatch> {
        let (Some(d), Some(p)) = (&chunk.dense, &dynamics.dense) else {
            return Vec::new();
        };
        let (n, s, a) = (d.tasks, d.states, d.actions);
        let align = self.core.storage_align.max(16);
        let freeze = if d.freeze && sweeps { 1.0 } else { 0.0 };
        let shift = self
            .core
            .pipeline(&self.mdp_dense, "mdp_dense_shift", &[("FREEZE", freeze)]);
        let product = self.core.pipeline(
            &self.mdp_dense,
            "mdp_dense_product",
            &[("TASK_TILE", d.task_tile as f64), ("FREEZE", freeze)],
        );
        let group = |b: usize, band: &Band, shift_pass: bool| {
            let w = dense_windows(band, (n, s, a), align);
            // The shift pass writes X, the product reads it: each group binds the scratch
            // buffer where the other binds X.
            let (x_in, x_out) = match shift_pass {
                true => (
                    d.scratch.as_entire_binding(),
                    bind(&d.x, w.x.offset, w.x.size),
                ),
                false => (
                    bind(&d.x, w.x.offset, w.x.size),
                    d.scratch.as_entire_binding(),
                ),
            };
            self.core.bind_group(
                self.mdp_dense.label,
                &self.mdp_dense.group_layout,
                [
                    d.params.bind(b),
                    bind(p, w.dense.offset, w.dense.size),
                    x_in,
                    bind(&d.product, w.product.offset, w.product.size),
                    chunk.checks.frozen.as_entire_binding(),
                    bind(v, w.v.offset, w.v.size),
                    x_out,
                    d.shift.as_entire_binding(),
                ],
            )
        };
        let mut out = Vec::new();
        // X of each task window, once (with the first band of its states).
        for (b, band) in d.bands.iter().enumerate().filter(|(_, b)| b.first == 0) {
            let workgroups = [1, 1, band.task_count as u32];
            out.push((shift.clone(), group(b, band, true), workgroups));
        }
        for (b, band) in d.bands.iter().enumerate() {
            out.push((product.clone(), group(b, band, false), d.dispatch[b]));
        }
        out
    }

    /// Uploads the chunk's inputs and runs the backward iteration from V_0 (V_T when finite).
    fn backward(
        &mut self,
        inputs: &MdpInputs,
        dynamics: &Dynamics,
        chunk: &MdpChunk,
        options: &SolveOptions,
        progress: &mut OnProgress<'_>,
    ) -> Result<Iteration> {
        let mdp = inputs.mdp;
        let (s, a) = (mdp.states, mdp.actions);
        let (wpt, rows) = (s.div_ceil(32), &chunk.task_states);
        let horizon = options.horizon.finite_steps();
        let q = self.core.queue.clone();
        let reward = to_f32(&mdp.reward[rows.start * a..rows.end * a]);
        q.write_buffer(&chunk.reward, 0, bytemuck::cast_slice(&reward));
        let mut bits = vec![0u32; chunk.tasks.len() * wpt];
        for t in 0..chunk.tasks.len() {
            for state in 0..s {
                if inputs.fixed[rows.start + t * s + state] {
                    bits[t * wpt + state / 32] |= 1 << (state % 32);
                }
            }
        }
        q.write_buffer(&chunk.fixed, 0, bytemuck::cast_slice(&bits));
        let v0: Vec<f32> = inputs.v0[rows.clone()].iter().map(|&x| x as f32).collect();
        for buffer in &chunk.values {
            q.write_buffer(buffer, 0, bytemuck::cast_slice(&v0));
        }
        if let Some(steps) = &chunk.steps {
            let last = horizon as u64 * chunk.v_bytes;
            q.write_buffer(steps, last, bytemuck::cast_slice(&v0));
        }
        if let Method::Mpi { evaluations } = options.method {
            return self.iterate_mpi(inputs, dynamics, chunk, (options, evaluations), progress);
        }
        let common = chunk.bindings(dynamics);
        let groups: Vec<[wgpu::BindGroup; 2]> = (chunk.layouts.iter().enumerate())
            .map(|band| self.backup_pair(band, &common, &chunk.values, &chunk.backup))
            .collect();
        let sweep = self.chunk_pipeline(chunk, chunk.key);
        let sweep_checked = self.chunk_pipeline(
            chunk,
            MdpPipelineKey {
                write_residual: true,
                ..chunk.key
            },
        );
        // The dense product of each sweep's input, recorded before the sweep: [parity].
        let dense = [
            self.dense_dispatches(dynamics, chunk, &chunk.values[0], true),
            self.dense_dispatches(dynamics, chunk, &chunk.values[1], true),
        ];
        let extrapolate = self.core.extrapolate_pipeline.clone();
        let extrapolate_groups = match options.uses_extrapolation() {
            true => {
                let bands: Vec<_> = chunk.layouts.iter().map(Layout::extrapolate_band).collect();
                self.core.extrapolate_groups(
                    "softvi.extrapolate_params",
                    &bands,
                    &chunk.fixed,
                    &chunk.values,
                    &chunk.backup,
                    &chunk.checks.extrapolation,
                )
            }
            false => Vec::new(),
        };
        let kernels = Kernels {
            sweep: &sweep,
            sweep_checked: &sweep_checked,
            extrapolate: &extrapolate,
            sweep_groups: &groups,
            extrapolate_groups: &extrapolate_groups,
            keep_steps: chunk.steps.as_ref().map(|steps| StepCopies {
                values: &chunk.values,
                steps,
                horizon,
                bytes: chunk.v_bytes,
            }),
        };
        let checks = &chunk.checks;
        let mut record = |encoder: &mut wgpu::CommandEncoder, step| {
            if let Step::Sweep { parity, .. } = step {
                record_dense(encoder, &dense[parity]);
            }
            kernels.record(encoder, checks, step);
        };
        wait(self.core.iterate(checks, options, &mut record, progress))
    }

    /// pi (Q with `write_q`) from `chunk.values[from]` into `chunk.policy`, every band in one
    /// submission.
    fn policy_pass(&mut self, dynamics: &Dynamics, chunk: &MdpChunk, from: usize, write_q: bool) {
        let pipeline = self.chunk_pipeline(
            chunk,
            MdpPipelineKey {
                stage: MdpStage::Policy,
                write_q,
                ..chunk.key
            },
        );
        let groups = self.policy_groups(dynamics, chunk, &chunk.values[from]);
        let dense = self.dense_dispatches(dynamics, chunk, &chunk.values[from], false);
        let mut encoder = self.core.device.create_command_encoder(&Default::default());
        record_dense(&mut encoder, &dense);
        for (layout, group) in chunk.layouts.iter().zip(&groups) {
            self.core
                .dispatch(&mut encoder, &pipeline, group, layout.dispatch);
        }
        self.core.queue.submit([encoder.finish()]);
    }

    /// The chunk's occupancy bands and buffers, D_0 uploaded; the discounted sum iterates on
    /// the start scaled to a peak of 1.
    fn plan_occupancy(
        &mut self,
        inputs: &MdpInputs,
        dynamics: &Dynamics,
        chunk: &MdpChunk,
        finite: bool,
    ) -> Result<OccupancyChunk> {
        use wgpu::BufferUsages as U;
        let mdp = inputs.mdp;
        let (n, s, a) = (chunk.tasks.len(), mdp.states, mdp.actions);
        let (scaled, scales) = crate::engine::solution::scaled_start(mdp);
        let (start, scales) = match finite {
            true => (to_f32(&mdp.initial[chunk.task_states.clone()]), Vec::new()),
            false => (
                to_f32(&scaled[chunk.task_states.clone()]),
                scales[chunk.tasks.clone()].to_vec(),
            ),
        };
        // The discounted sum folds pi(a|s) P(s'|s,a) into per-entry weights once, when a task's
        // weights fit one binding: its sweeps then gather only d.
        let nnz = mdp.nonzeros() as u64;
        let (max_binding, max_workgroups) = (self.core.max_binding, self.core.max_workgroups);
        let weighted = !finite && nnz * 4 + 256 <= max_binding;
        let (bands, layouts) = match &dynamics.incoming {
            Some((_, _, _, incoming_indptr)) => {
                let incoming = |state: usize| incoming_indptr[state] as u64;
                let mut whole_task = (s * a * 4) as u64;
                if weighted {
                    whole_task = whole_task.max(nnz * 4);
                }
                let bands =
                    plan_mdp_bands(n, s, whole_task, 4, &incoming, max_binding, max_workgroups)?;
                let layouts = self.occupancy_layouts(inputs, incoming_indptr, n, &bands)?;
                (bands, layouts)
            }
            None => (Vec::new(), Vec::new()),
        };
        let core = &mut self.core;
        let (v_bytes, usage) = (chunk.v_bytes, U::STORAGE | U::COPY_SRC | U::COPY_DST);
        let d = [
            core.buffer("softvi.occupancy_a", v_bytes, usage),
            core.buffer("softvi.occupancy_b", v_bytes, usage),
        ];
        let start_buf = core.buffer("softvi.start", v_bytes, U::STORAGE | U::COPY_DST);
        let weights = match weighted {
            true => core.buffer("softvi.occupancy_weights", n as u64 * nnz * 4, U::STORAGE),
            false => core.buffer("softvi.no_weights", 16, U::STORAGE),
        };
        let all: Vec<OccupancyParams> = layouts.iter().map(|l| l.params).collect();
        let params = core.uniforms("softvi.occupancy_params", &all);
        let q = &core.queue;
        q.write_buffer(&start_buf, 0, bytemuck::cast_slice(&start));
        q.write_buffer(&d[0], 0, bytemuck::cast_slice(&start));
        let key = MdpPipelineKey {
            stage: MdpStage::Occupancy,
            optimistic: false,
            hard_max: false,
            write_residual: false,
            add_start: false,
            weighted: false,
            actions: a as u32,
            write_q: false,
            freeze: false,
        };
        Ok(OccupancyChunk {
            bands,
            layouts,
            weighted,
            weights,
            d,
            start: start_buf,
            scales,
            params,
            key,
        })
    }

    /// The occupancy ping-pong groups of every band: group p pulls `occ.d[p]` into
    /// `occ.d[1 - p]` under `chunk.policy`.
    fn occupancy_groups(
        &self,
        dynamics: &Dynamics,
        chunk: &MdpChunk,
        occ: &OccupancyChunk,
        checks: &Checks,
    ) -> Vec<[wgpu::BindGroup; 2]> {
        let Some((indptr, rows, probs, _)) = &dynamics.incoming else {
            return Vec::new();
        };
        let d = &occ.d;
        (occ.layouts.iter().enumerate())
            .map(|(b, layout)| {
                let w = &layout.windows;
                let group = |p: usize| {
                    self.core.bind_group(
                        "softvi.mdp_occupancy",
                        &self.mdp_occupancy.group_layout,
                        [
                            occ.params.bind(b),
                            bind(indptr, w[0].offset, w[0].size),
                            bind(rows, w[1].offset, w[1].size),
                            bind(probs, w[1].offset, w[1].size),
                            bind(&chunk.policy, w[2].offset, w[2].size),
                            bind(&d[p], w[3].offset, w[3].size),
                            bind(&d[1 - p], w[4].offset, w[4].size),
                            checks.partials.as_entire_binding(),
                            bind(&occ.start, w[4].offset, w[4].size),
                            match occ.weighted {
                                true => bind(&occ.weights, w[5].offset, w[5].size),
                                false => occ.weights.as_entire_binding(),
                            },
                            checks.frozen.as_entire_binding(),
                        ],
                    )
                };
                [group(0), group(1)]
            })
            .collect()
    }

    /// The finite-horizon forward pass over `horizon` steps: D_{t+1} from D_t under pi_t (from
    /// V_{t+1}) with the occupancy; pi_t and Q_t kept as `outputs` asks with every step.
    fn forward_pass(
        &mut self,
        dynamics: &Dynamics,
        chunk: &MdpChunk,
        occ: &OccupancyChunk,
        (horizon, outputs): (usize, Outputs),
    ) -> Result<ForwardOutputs> {
        use wgpu::BufferUsages as U;
        let steps = chunk.steps.as_ref().expect("steps kept");
        let usage = U::STORAGE | U::COPY_SRC | U::COPY_DST;
        let v_next = self.core.buffer("softvi.step_v", chunk.v_bytes, usage);
        let pipeline = self.pipeline(occ.key);
        let policy = self.chunk_pipeline(
            chunk,
            MdpPipelineKey {
                stage: MdpStage::Policy,
                ..chunk.key
            },
        );
        let q = self.chunk_pipeline(
            chunk,
            MdpPipelineKey {
                stage: MdpStage::Policy,
                write_q: true,
                ..chunk.key
            },
        );
        let groups = self.occupancy_groups(dynamics, chunk, occ, &chunk.checks);
        let step_policy = self.policy_groups(dynamics, chunk, &v_next);
        let dense = self.dense_dispatches(dynamics, chunk, &v_next, false);
        let pass = ForwardPass {
            prepare: &dense,
            horizon,
            v_bytes: chunk.v_bytes,
            steps,
            v_next: &v_next,
            policy: &policy,
            policy_bands: (chunk.layouts.iter().zip(&step_policy))
                .map(|(layout, group)| BandDispatch {
                    group,
                    workgroups: layout.dispatch,
                })
                .collect(),
            policy_out: (&chunk.policy, chunk.row_bytes),
            keep_policy: outputs.all_steps && outputs.policy,
            q: (outputs.all_steps && outputs.q).then_some(&q),
            occupancy: outputs.occupancy.then(|| {
                let bands = (occ.layouts.iter().zip(&groups))
                    .map(|(layout, groups)| PairDispatch {
                        groups,
                        workgroups: layout.dispatch,
                    })
                    .collect();
                (&pipeline, bands)
            }),
            d: &occ.d,
        };
        wait(record_forward(&mut self.core, &pass))
    }

    /// The discounted occupancy, `[task][state]`: d = start + gamma * pull(d), iterated to tol
    /// like the values, then scaled back; and its run.
    fn discounted_occupancy(
        &mut self,
        inputs: &MdpInputs,
        dynamics: &Dynamics,
        chunk: &MdpChunk,
        occ: &OccupancyChunk,
        options: &SolveOptions,
    ) -> Result<(Vec<f32>, Iteration)> {
        use wgpu::BufferUsages as U;
        let (n, s) = (chunk.tasks.len(), inputs.mdp.states);
        let zero_bits = self.core.buffer(
            "softvi.no_fixed_bits",
            (n * s.div_ceil(32) * 4) as u64,
            U::STORAGE | U::COPY_DST,
        );
        let mut encoder = self.core.device.create_command_encoder(&Default::default());
        encoder.clear_buffer(&zero_bits, 0, None);
        self.core.queue.submit([encoder.finish()]);
        let dispatch: Vec<[u32; 3]> = occ.layouts.iter().map(|l| l.dispatch).collect();
        let per_task = occ.layouts[0].params.groups_per_task;
        let checks = self.core.checks(n, per_task, &dispatch, options, &[])?;
        // The occupancy's own checks: its bands may need more partials than the backward
        // pass's, and the pool then hands out a new buffer.
        let groups = self.occupancy_groups(dynamics, chunk, occ, &checks);
        // The extrapolation runs over the occupancy bands (laid out as the backup's: the same
        // states and dispatch) with no fixed state.
        let extrapolate_bands: Vec<_> = (self.backup_layouts(inputs, n, &occ.bands, false)?.iter())
            .map(Layout::extrapolate_band)
            .collect();
        let extrapolate_groups = match options.uses_extrapolation() {
            true => self.core.extrapolate_groups(
                "softvi.occupancy_extrapolate_params",
                &extrapolate_bands,
                &zero_bits,
                &occ.d,
                &chunk.backup,
                &checks.extrapolation,
            ),
            false => Vec::new(),
        };
        let key = MdpPipelineKey {
            weighted: occ.weighted,
            ..occ.key
        };
        if occ.weighted {
            let fold = self.pipeline(MdpPipelineKey {
                stage: MdpStage::OccupancyWeights,
                ..key
            });
            let mut encoder = self.core.device.create_command_encoder(&Default::default());
            for (layout, group) in occ.layouts.iter().zip(&groups) {
                self.core
                    .dispatch(&mut encoder, &fold, &group[0], layout.dispatch);
            }
            self.core.queue.submit([encoder.finish()]);
        }
        let accumulate = MdpPipelineKey {
            add_start: true,
            ..key
        };
        let run = self.iterate_pull(accumulate, &checks, &groups, &extrapolate_groups, options)?;
        let last = (run.sweeps % 2) as usize;
        let mut d = wait(self.core.read_f32(&occ.d[last], 0, chunk.v_bytes))?;
        for (i, x) in d.iter_mut().enumerate() {
            *x = (*x as f64 / occ.scales[i / s]) as f32;
        }
        Ok((d, run))
    }
}

impl MdpEngine {
    /// Iterates the occupancy pull `key` (`add_start`: `d = start + gamma P_pi^T d`) over the
    /// bands bound in `groups` on `checks`' schedule (checks, freezing, the extrapolation
    /// bound in `extrapolate_groups`): the discounted occupancy's and the VJP's adjoint.
    pub(super) fn iterate_pull(
        &mut self,
        key: MdpPipelineKey,
        checks: &Checks,
        groups: &[[wgpu::BindGroup; 2]],
        extrapolate_groups: &[[wgpu::BindGroup; 2]],
        options: &SolveOptions,
    ) -> Result<Iteration> {
        let sweep = self.pipeline(key);
        let sweep_checked = self.pipeline(MdpPipelineKey {
            write_residual: true,
            ..key
        });
        let extrapolate = self.core.extrapolate_pipeline.clone();
        let kernels = Kernels {
            sweep: &sweep,
            sweep_checked: &sweep_checked,
            extrapolate: &extrapolate,
            sweep_groups: groups,
            extrapolate_groups,
            keep_steps: None,
        };
        let mut record = |encoder: &mut wgpu::CommandEncoder, step| {
            kernels.record(encoder, checks, step);
        };
        wait(
            self.core
                .iterate(checks, options, &mut record, &mut keep_going),
        )
    }
}

impl MdpChunk {
    /// The backup kernels' bindings that stay the same across the chunk's dispatches.
    fn bindings<'a>(&'a self, dynamics: &'a Dynamics) -> BackupBindings<'a> {
        BackupBindings {
            params: &self.params,
            dynamics,
            reward: &self.reward,
            fixed: &self.fixed,
            partials: &self.checks.partials,
            frozen: &self.checks.frozen,
            dense: self.dense.as_ref(),
            mpi: &self.mpi,
        }
    }
}

/// `values` rounded to the f32 the kernels read.
pub(super) fn to_f32(values: &[f64]) -> Vec<f32> {
    values.iter().map(|&x| x as f32).collect()
}

/// Rows per upload of the dense matrix: about 4 MiB of host memory at a time, whatever S.
const DENSE_UPLOAD_BYTES: usize = 4 << 20;

/// P of `mdp` as the dense `[s * A + a][column]` f32 matrix on the device, [`dense_columns`]
/// entries a row (entries of a row that name one successor twice add up), built and uploaded
/// a block of rows at a time.
fn upload_dense(core: &mut GpuCore, mdp: &TabularMdp) -> wgpu::Buffer {
    use wgpu::BufferUsages as U;
    let (s, rows) = (dense_columns(mdp.states), mdp.states * mdp.actions);
    let buffer = core.buffer(
        "softvi.dense",
        (rows * s * 4) as u64,
        U::STORAGE | U::COPY_DST,
    );
    let per_block = (DENSE_UPLOAD_BYTES / (4 * s).max(1)).max(1);
    let mut block = Vec::new();
    for first in (0..rows).step_by(per_block) {
        let end = (first + per_block).min(rows);
        block.clear();
        block.resize((end - first) * s, 0.0f32);
        for row in first..end {
            let out = &mut block[(row - first) * s..][..s];
            // A model kept dense is read as it is, without building its CSR.
            match mdp.transitions.dense_rows() {
                Some(p) => {
                    let given = &p[row * mdp.states..(row + 1) * mdp.states];
                    for (o, &x) in out.iter_mut().zip(given) {
                        *o = x as f32;
                    }
                }
                None => {
                    let csr = mdp.csr();
                    let range = csr.indptr[row] as usize..csr.indptr[row + 1] as usize;
                    for (&j, &p) in csr.indices[range.clone()].iter().zip(&csr.probs[range]) {
                        out[j as usize] += p as f32;
                    }
                }
            }
        }
        let at = (first * s * 4) as u64;
        core.queue
            .write_buffer(&buffer, at, bytemuck::cast_slice(&block));
        // Hands the block to the device now, so that its staging copy is freed with it.
        core.queue.submit([]);
    }
    buffer
}

/// Records `dispatches` (from [`MdpEngine::dense_dispatches`]) into `encoder`, one pass each.
fn record_dense(encoder: &mut wgpu::CommandEncoder, dispatches: &[DenseDispatch]) {
    for (pipeline, group, [x, y, z]) in dispatches {
        if x * y * z == 0 {
            continue;
        }
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, group, &[]);
        pass.dispatch_workgroups(*x, *y, *z);
    }
}

/// The three value buffers of a modified-policy-iteration step, by index: the ping-pong pair
/// (0, 1) and the chunk's `mpi.values` (2); the (input, output) pairs a step binds.
const MPI_PAIRS: [(usize, usize); 6] = [(0, 1), (1, 0), (0, 2), (1, 2), (2, 0), (2, 1)];

impl MdpEngine {
    /// Modified policy iteration (`Method::Mpi`) on the check schedule of [`GpuCore::iterate`]:
    /// each of its sweeps is `evaluations` `evaluate` sweeps under the last improvement's
    /// policy (none before the first improvement), then one `improve`, whose residual the
    /// checks read (its error bound holds for its output). The evaluations ping-pong through
    /// `chunk.mpi.values` and the sweep's output buffer so that the improvement reads the last
    /// of them and writes where value iteration's sweep would.
    ///
    /// Values relative to a per-task offset: evaluations drive V toward V_pi, |V| ~ 1 / (1 -
    /// gamma), where f32 cannot resolve tol at gamma 0.99 (the bound's f32 reach is 1e-6 max
    /// |V| / (1 - gamma)), while value iteration, stopped by the span bound, often stops with
    /// V still small. A task without a fixed state (its backup maps V + k to T V + gamma k) is
    /// held as V = v + c, with c in `chunk.mpi.offset`: every sweep (evaluation or improvement)
    /// moves k = v(state 0) into c and computes T (v - k) = T v - gamma k, and c becomes
    /// gamma (c + k). So v stays within about the span of V and the rewards' size of 0 at
    /// every sweep, as the native engine's re-centring after each improvement keeps it
    /// (`engine::native::solve`'s `Recentred`). Re-centring on the host at each check readback
    /// (tried first) lets v grow over the 16 improvements of a check window: |V| ~ 13 at
    /// gamma 0.99 in tests/kernel_mdp_mpi.rs, a reported bound of 1.3e-3 over a tol of 1e-3.
    /// A shift read from v itself needs no reduction over states, and c stays on the device.
    /// Its f32 rounding (an ulp of |c| a sweep) perturbs V before the next backup, which the
    /// improvement's bound covers; the last one is the f32 rounding of the reported V. The
    /// improvement's statistics are V's. On return the final buffer holds V.
    fn iterate_mpi(
        &mut self,
        inputs: &MdpInputs,
        dynamics: &Dynamics,
        chunk: &MdpChunk,
        (options, evaluations): (&SolveOptions, u32),
        progress: &mut OnProgress<'_>,
    ) -> Result<Iteration> {
        let n = chunk.tasks.len();
        // [0] c = 0, [1] c after a sweep, [2] whether the task re-centres.
        let mut offset = vec![0.0f32; 3 * n];
        for (t, &span) in chunk.span_bounded.iter().enumerate() {
            offset[2 * n + t] = span as u32 as f32;
        }
        let q = &self.core.queue;
        q.write_buffer(&chunk.mpi.offset, 0, bytemuck::cast_slice(&offset));
        let buffers = [&chunk.values[0], &chunk.values[1], &chunk.mpi.values];
        for buffer in &buffers[2..] {
            let v0 = to_f32(&inputs.v0[chunk.task_states.clone()]);
            q.write_buffer(buffer, 0, bytemuck::cast_slice(&v0));
        }
        let common = chunk.bindings(dynamics);
        let groups: Vec<Vec<wgpu::BindGroup>> = (chunk.layouts.iter().enumerate())
            .map(|(b, layout)| {
                let w = layout.windows[2];
                let pi = (&chunk.policy, w.offset, w.size);
                (MPI_PAIRS.iter())
                    .map(|&(i, o)| {
                        let params = chunk.params.bind(b);
                        self.backup_group(params, layout, &common, buffers[i], buffers[o], pi)
                    })
                    .collect()
            })
            .collect();
        let pair = |i: usize, o: usize| MPI_PAIRS.iter().position(|&p| p == (i, o)).unwrap_or(0);
        let stage = |stage, write_residual| MdpPipelineKey {
            stage,
            write_residual,
            ..chunk.key
        };
        let improve = self.chunk_pipeline(chunk, stage(MdpStage::Improve, false));
        let improve_checked = self.chunk_pipeline(chunk, stage(MdpStage::Improve, true));
        let evaluate = self.chunk_pipeline(chunk, stage(MdpStage::Evaluate, false));
        // The dense product of each buffer's values, recorded before a sweep reads them.
        let dense: Vec<Vec<DenseDispatch>> = (buffers.iter())
            .map(|v| self.dense_dispatches(dynamics, chunk, v, true))
            .collect();
        let c_bytes = n as u64 * 4;
        let carry = self.core.buffer(
            "softvi.mpi_offset_carry",
            c_bytes,
            wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        );
        let checks = &chunk.checks;
        let offsets = &chunk.mpi.offset;
        let recentres = chunk.span_bounded.iter().any(|&b| b);
        let mut record = |encoder: &mut wgpu::CommandEncoder, step| {
            let Step::Sweep {
                index,
                parity,
                checked,
            } = step
            else {
                unreachable!("modified policy iteration does not extrapolate")
            };
            let sweep = |encoder: &mut wgpu::CommandEncoder, pipeline, from: usize, to: usize| {
                record_dense(encoder, &dense[from]);
                {
                    let mut pass = encoder.begin_compute_pass(&Default::default());
                    pass.set_pipeline(pipeline);
                    for (b, groups) in groups.iter().enumerate() {
                        pass.set_bind_group(0, &groups[pair(from, to)], &[]);
                        pass.dispatch_workgroups_indirect(&checks.control, checks.sweep_args(b));
                    }
                }
                // c after the sweep becomes c before the next (a copy may not stay within
                // one buffer); c stays 0 where no task re-centres.
                if recentres {
                    encoder.copy_buffer_to_buffer(offsets, c_bytes, &carry, 0, c_bytes);
                    encoder.copy_buffer_to_buffer(&carry, 0, offsets, 0, c_bytes);
                }
            };
            let (mut from, to) = (parity, 1 - parity);
            if index > 0 {
                for i in 1..=evaluations {
                    // The last evaluation writes the third buffer, which the improvement reads.
                    let out = if (evaluations - i) % 2 == 0 { 2 } else { to };
                    sweep(encoder, &evaluate, from, out);
                    from = out;
                }
            }
            let pipeline = if checked { &improve_checked } else { &improve };
            sweep(encoder, pipeline, from, to);
        };
        let run = wait(self.core.iterate(checks, options, &mut record, progress))?;
        if recentres {
            // V = v + c, where the policy and Q passes and the readback find it.
            let c = wait(self.core.read_f32(offsets, 0, c_bytes))?;
            let last = &chunk.values[(run.sweeps % 2) as usize];
            let mut v = wait(self.core.read_f32(last, 0, chunk.v_bytes))?;
            let states = inputs.mdp.states;
            for (task, &c) in v.chunks_exact_mut(states).zip(&c) {
                for x in task.iter_mut() {
                    *x = (*x as f64 + c as f64) as f32;
                }
            }
            self.core
                .queue
                .write_buffer(last, 0, bytemuck::cast_slice(&v));
        }
        Ok(run)
    }
}
