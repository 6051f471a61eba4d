// Convergence check on the GPU: reduces the per-workgroup statistics that a residual sweep
// (grid_backup, mdp_backup, mdp_occupancy) wrote and records them per check. A task whose
// residual is within tolerance freezes (`frozen`: the sweeps copy it from then on); once every
// task has, it zeroes the indirect dispatch arguments so that the rest of the submission's
// sweeps do nothing.
// For the tasks still iterating it estimates the convergence rate and, when the estimate has
// settled, asks `extrapolate` (shaders/extrapolate.wgsl) to jump ahead along the slowest mode.
// CPU twin: `engine::cpu::SweepStats`, `engine::schedule::ConvergenceMonitor`, `engine::schedule::RateExtrapolator`.

// Joined after shared/constants.wgsl and shared/residual_stats.wgsl
// (`engine::gpu::core::RESIDUAL_REDUCE_WGSL`).

const NOT_CONVERGED: u32 = 0xffffffffu;
// A task has converged when its error bound (bound_factor * residual) is within tol, or its
// residual within RESIDUAL_FLOOR * max |V|: below a few f32 ulps of V the iteration may cycle
// instead of settling. Same as `engine::schedule::RESIDUAL_FLOOR`.
const RESIDUAL_FLOOR: f32 = 1e-6;
// Sweeps between two checks. Same as `engine::schedule::CHECK_INTERVAL`.
const CHECK_INTERVAL: f32 = 16.0;
// Two successive per-sweep rate estimates closer than this trigger an extrapolation.
// Same as `engine::schedule::RATE_AGREEMENT`.
const RATE_AGREEMENT: f32 = 1e-4;
// Jump states. Same as `engine::schedule::RateExtrapolator`.
const JUMP_ALLOWED: f32 = 0.0;
const JUMP_PENDING: f32 = 1.0;  // jumped at the previous check; judged at this one
const JUMP_DISABLED: f32 = 2.0; // a jump raised the residual and was rolled back
const ROLLBACK: f32 = -1.0;

// Keep in sync with `engine::gpu::core::ReduceParams` (sizes compared in tests/kernel_shader_layout.rs).
struct ReduceParams {
    task_count: u32,
    groups_per_task: u32,
    band_count: u32,
    // Residual at or below which the solve has converged; negative for a fixed horizon.
    tol: f32,
    // Whether to extrapolate along the estimated slowest mode (alpha > 0, gamma < 1,
    // infinite horizon), and the discount that bounds every mode's rate.
    extrapolate: u32,
    gamma: f32,
    // gamma / (1 - gamma), 1 at gamma = 1 (`engine::schedule::bound_factor`): the residual
    // times it bounds max |V - V*|.
    bound_factor: f32,
    _pad2: u32,
}

// Keep in sync with `engine::gpu::CONTROL_*` offsets.
struct Control {
    check_count: u32,     // checks done in this submission
    converged_check: u32, // index of the check at which every task had frozen, or NOT_CONVERGED
    _pad0: u32,
    _pad1: u32,
    // [band][x, y, z] workgroup counts of the sweep dispatches, then of the extrapolation
    // dispatches (zero unless a task extrapolates after this check).
    dispatch_args: array<u32>,
}

@group(0) @binding(0) var<uniform> params: ReduceParams;
@group(0) @binding(1) var<storage, read> partials: array<vec4<f32>>;      // [task][group]
@group(0) @binding(2) var<storage, read_write> checks: array<vec4<f32>>;  // [check][task]
@group(0) @binding(3) var<storage, read_write> control: Control;
// Per task two entries: the last three residuals and the checks since the last jump; then
// the residual at the last jump and the jump state (JUMP_*).
@group(0) @binding(4) var<storage, read_write> history: array<vec4<f32>>;  // [task][2]
// After this check: factor > 0 jumps (V += factor * (V - V_prev), keeping a backup of V),
// ROLLBACK restores the backup, 0 does nothing.
@group(0) @binding(5) var<storage, read_write> extrapolation: array<f32>; // [task]
// NOT_FROZEN, or the index (in its submission) of the check at which the task converged.
@group(0) @binding(6) var<storage, read_write> frozen: array<u32>; // [task]
// 1 for a task that stops by MacQueen's span bound (no fixed state: its backup shifts by
// gamma c when V does; `engine::schedule::span_bounded_tasks`), else 0.
@group(0) @binding(7) var<storage, read> span_bounded: array<u32>; // [task]

// One workgroup per task: (max |dV|, min dV, max |V|, max dV) over the task's cells.
@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn residual_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let task = wid.x;
    var acc = NO_STATS;
    for (var g = lid; g < params.groups_per_task; g += WORKGROUP_SIZE) {
        acc = combine_stats(acc, partials[task * params.groups_per_task + g]);
    }
    let total = workgroup_stats(lid, acc);
    if lid == 0u {
        checks[control.check_count * params.task_count + task] = total;
    }
}

// Whether a task's check statistics meet the convergence test: its error bound (the span's
// half width gamma / (1 - gamma) (max dV - min dV) / 2 for a `span` task at gamma < 1, else
// gamma / (1 - gamma) max |dV|) within tol, or its residual within the f32 floor. Twin of
// `engine::schedule::within_tolerance`.
fn within_tolerance(stats: vec4<f32>, span: bool) -> bool {
    var bound = stats.x * params.bound_factor;
    if span && params.gamma < 1.0 && stats.y <= stats.w {
        bound = params.bound_factor * (0.5 * stats.w - 0.5 * stats.y);
    }
    // Written so that a NaN residual never counts as converged, nor a runaway (element_stats
    // reports one as HUGE, and its span as 2 HUGE).
    let bounded = bound <= params.tol || stats.x <= RESIDUAL_FLOOR * stats.z;
    return bounded && stats.x < HUGE && stats.z < HUGE;
}

// Single invocation: freezes every task still iterating whose residual of this check is within
// tolerance, then decides the extrapolation factors of the tasks still iterating.
@compute @workgroup_size(1, 1, 1)
fn convergence_decide() {
    let check = control.check_count;
    let sweep_args = 3u * params.band_count;
    if control.converged_check == NOT_CONVERGED {
        var all_frozen = true;
        var any_jump = false;
        for (var t = 0u; t < params.task_count; t++) {
            var factor = 0.0;
            let stats = checks[check * params.task_count + t];
            if frozen[t] != NOT_FROZEN {
                // Stopped at an earlier check.
            } else if params.tol >= 0.0 && within_tolerance(stats, span_bounded[t] != 0u) {
                frozen[t] = check;
            } else {
                all_frozen = false;
                if params.extrapolate != 0u {
                    factor = jump_factor(t, stats);
                }
            }
            if params.extrapolate != 0u {
                extrapolation[t] = factor;
            }
            any_jump = any_jump || factor != 0.0;
        }
        if all_frozen {
            control.converged_check = check;
            for (var i = 0u; i < sweep_args; i++) {
                control.dispatch_args[i] = 0u;
            }
        }
        for (var i = 0u; i < sweep_args; i++) {
            control.dispatch_args[sweep_args + i] = select(0u, control.dispatch_args[i], any_jump);
        }
    }
    control.check_count = check + 1u;
}

// The extrapolation factor of task `t`, still iterating and not within tolerance, from this
// check's `stats`; updates its history.
fn jump_factor(t: u32, stats: vec4<f32>) -> f32 {
    let r = stats.x;
    var h = history[2u * t];
    var jump = history[2u * t + 1u];
    h = vec4<f32>(h.y, h.z, r, h.w + 1.0);
    var factor = 0.0;
    // A jump is kept only if the residual 16 sweeps later is below the residual at the jump;
    // otherwise V goes back to its backup and jumps stop for the task.
    if jump.y == JUMP_PENDING {
        if r > jump.x {
            factor = ROLLBACK;
            jump.y = JUMP_DISABLED;
        } else {
            jump.y = JUMP_ALLOWED;
        }
    }
    if jump.y == JUMP_ALLOWED && h.w >= 3.0 && h.x > 0.0 && h.y > 0.0 && r > 0.0 {
        // Per-sweep contraction rates over the last two check windows.
        let newer = pow(h.z / h.y, 1.0 / CHECK_INTERVAL);
        let older = pow(h.y / h.x, 1.0 / CHECK_INTERVAL);
        if abs(newer - older) < RATE_AGREEMENT && newer < params.gamma {
            factor = newer / (1.0 - newer);
            h.w = 0.0;
            jump = vec4<f32>(r, JUMP_PENDING, 0.0, 0.0);
        }
    }
    history[2u * t] = h;
    history[2u * t + 1u] = jump;
    return factor;
}
