// Residual statistics of a sweep over one task: (max |dV|, min dV, max |V|, max dV), with V the
// values (or the occupancy) after the sweep and dV their change; min dV <= max dV exactly when
// some element was updated. A
// kernel that writes `partials` combines its invocations' statistics with `workgroup_stats`;
// `residual_reduce` combines a task's partials the same way.
// CPU twin: `engine::cpu::SweepStats`. Needs WORKGROUP_SIZE and HUGE of shared/constants.wgsl.

// `frozen[task]` of a task still iterating. Otherwise the task stopped at a check (converged:
// the check's index in its submission, set by `convergence_decide`; diverged: set by the host
// after the submission in which it diverged), and every sweep of an infinite horizon (`FREEZE`)
// copies its values unchanged (`v_out = v_in`, no statistics), so that a converged task's
// result does not depend on the batch it is solved in. Same as `engine::gpu::core::NOT_FROZEN`.
const NOT_FROZEN: u32 = 0xffffffffu;

// The statistics of no element: the identity of `combine_stats`.
const NO_STATS = vec4<f32>(0.0, HUGE, 0.0, -HUGE);

// The statistics of one element whose value became `value`, a change of `delta`. A change or
// value that is not finite (an f32 overflow, inf - inf) counts as a residual and a value of
// HUGE: `max` may drop a NaN, and an infinite |V| would lift the convergence threshold
// RESIDUAL_FLOOR * max |V| to inf, either way a runaway would pass as converged.
// HUGE is beyond `engine::schedule::VALUE_LIMIT`, so the host declares it diverged.
fn element_stats(delta: f32, value: f32) -> vec4<f32> {
    if !(abs(delta) <= HUGE && abs(value) <= HUGE) {
        return vec4<f32>(HUGE, -HUGE, HUGE, HUGE);
    }
    return vec4<f32>(abs(delta), delta, abs(value), delta);
}

fn combine_stats(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(max(a.x, b.x), min(a.y, b.y), max(a.z, b.z), max(a.w, b.w));
}

var<workgroup> stats_scratch: array<vec4<f32>, WORKGROUP_SIZE>;

// The statistics of the whole workgroup from each invocation's own (`lid` its
// local_invocation_index), by a tree over `stats_scratch`. Every invocation of the workgroup
// must call it (it has barriers), from uniform control flow, once per kernel.
fn workgroup_stats(lid: u32, own: vec4<f32>) -> vec4<f32> {
    stats_scratch[lid] = own;
    workgroupBarrier();
    for (var stride = WORKGROUP_SIZE / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            stats_scratch[lid] = combine_stats(stats_scratch[lid], stats_scratch[lid + stride]);
        }
        workgroupBarrier();
    }
    return stats_scratch[0];
}

// No `partials` slot: what `partial_slot` gives every invocation but lane 0 of a workgroup
// that covers some of its band's items.
const NO_SLOT: u32 = 0xffffffffu;

// Where this workgroup's statistics go in `partials` [task][group], for a band dispatched as
// workgroups (x + y * dispatch_x, z = task within the band) over `items` items per task:
// slot `(task_base + z) * groups_per_task + group_base + group` for lane 0, else NO_SLOT.
fn partial_slot(wid: vec3<u32>, lid: u32, dispatch_x: u32, items: u32, task_base: u32, group_base: u32, groups_per_task: u32) -> u32 {
    let group = wid.y * dispatch_x + wid.x;
    if lid != 0u || group * WORKGROUP_SIZE >= items {
        return NO_SLOT;
    }
    return (task_base + wid.z) * groups_per_task + group_base + group;
}
