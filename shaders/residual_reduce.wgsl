// Convergence check on the GPU: reduces the per-workgroup statistics that a residual sweep of
// grid_backup.wgsl wrote, records them per check, and, once the residual is within tolerance,
// zeroes the indirect dispatch arguments so that the rest of the submission's sweeps do nothing.
// CPU twin: `reference::SweepStats` and `solve::ConvergenceMonitor`.

const REDUCE_SIZE: u32 = 256u;
const HUGE: f32 = 3.0e38;
const NOT_CONVERGED: u32 = 0xffffffffu;
// A task has converged when its residual is within max(tol, RESIDUAL_FLOOR * max |V|): below
// a few f32 ulps of V the iteration may cycle instead of settling. Same as the Rust constant.
const RESIDUAL_FLOOR: f32 = 1e-6;

// Keep in sync with `gpu::ReduceParams` (sizes compared in tests/shader_layout.rs).
struct ReduceParams {
    task_count: u32,
    groups_per_task: u32,
    band_count: u32,
    // Residual at or below which the solve has converged; negative for a fixed horizon.
    tol: f32,
}

// Keep in sync with `gpu::CONTROL_*` offsets.
struct Control {
    check_count: u32,     // checks done in this submission
    converged_check: u32, // index of the first converged check, or NOT_CONVERGED
    _pad0: u32,
    _pad1: u32,
    dispatch_args: array<u32>, // [band][x, y, z] workgroup counts of the sweep dispatches
}

@group(0) @binding(0) var<uniform> params: ReduceParams;
@group(0) @binding(1) var<storage, read> partials: array<vec4<f32>>;      // [task][group]
@group(0) @binding(2) var<storage, read_write> checks: array<vec4<f32>>;  // [check][task]
@group(0) @binding(3) var<storage, read_write> control: Control;

var<workgroup> scratch: array<vec4<f32>, REDUCE_SIZE>;

fn combine(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(max(a.x, b.x), min(a.y, b.y), max(a.z, b.z), max(a.w, b.w));
}

// One workgroup per task: (max |dV|, min dV, max |V|, any active) over the task's cells.
@compute @workgroup_size(REDUCE_SIZE, 1, 1)
fn residual_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let task = wid.x;
    var acc = vec4<f32>(0.0, HUGE, 0.0, 0.0);
    for (var g = lid; g < params.groups_per_task; g += REDUCE_SIZE) {
        acc = combine(acc, partials[task * params.groups_per_task + g]);
    }
    scratch[lid] = acc;
    workgroupBarrier();
    for (var stride = REDUCE_SIZE / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            scratch[lid] = combine(scratch[lid], scratch[lid + stride]);
        }
        workgroupBarrier();
    }
    if lid == 0u {
        checks[control.check_count * params.task_count + task] = scratch[0];
    }
}

// Single invocation: decides convergence on every task's residual of this check.
@compute @workgroup_size(1, 1, 1)
fn convergence_decide() {
    let check = control.check_count;
    if control.converged_check == NOT_CONVERGED {
        var all_within = true;
        for (var t = 0u; t < params.task_count; t++) {
            let stats = checks[check * params.task_count + t];
            // Written so that a NaN residual never counts as converged.
            all_within = all_within && stats.x <= max(params.tol, RESIDUAL_FLOOR * stats.z);
        }
        if all_within && params.tol >= 0.0 {
            control.converged_check = check;
            for (var i = 0u; i < 3u * params.band_count; i++) {
                control.dispatch_args[i] = 0u;
            }
        }
    }
    control.check_count = check + 1u;
}
