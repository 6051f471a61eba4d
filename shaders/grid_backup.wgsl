// Soft Bellman backups over a batch of gridworld tasks that share one map.
// CPU twin: src/reference.rs (`grid_backup`, `grid_policy`, `action_values`, `soft_max`).
//
// Transitions are never stored: each cell's legal-move bitmask says which actions move it
// (bit a clear = the move is blocked and the agent stays). With slip eps, action a executes its
// own move with probability 1 - eps and a uniformly drawn action's move with probability eps.
//
// Dispatch: x = column, y = row within the band, z = task within the band. A band is a window
// of whole tasks or of rows of one task, so that every binding stays under the adapter's
// storage-binding limit; the *_origin fields locate each window in the chunk's arrays.

const WORKGROUP_X: u32 = 16u;
const WORKGROUP_Y: u32 = 4u;
const WORKGROUP_SIZE: u32 = 64u; // WORKGROUP_X * WORKGROUP_Y
const MAX_ACTIONS: u32 = 9u;
const LOG2_E: f32 = 1.4426950408889634;
// Two Q values closer than this (relative to max(1, |max Q|)) tie for the hard-max policy.
const TIE_RELATIVE: f32 = 1e-5;
const HUGE: f32 = 3.0e38;

override ACTION_COUNT: u32 = 8u;
// Optimistic (log-expectation) backup instead of the expected one.
override OPTIMISTIC: bool = false;
// alpha = 0: V = max_a Q and a one-hot policy.
override HARD_MAX: bool = false;
// Whether this sweep writes per-workgroup residual statistics into `partials`.
override WRITE_RESIDUAL: bool = false;

// Keep in sync with `gpu::GridParams` (sizes compared in tests/shader_layout.rs).
struct GridParams {
    width: u32,
    height: u32,
    cells_per_task: u32,
    fixed_words_per_task: u32,
    // First task ([task] index within the chunk) and rows covered by this band.
    task_base: u32,
    row_base: u32,
    row_count: u32,
    // Workgroups along a row, and per task over all bands (for `partials` indexing).
    groups_x: u32,
    groups_per_task: u32,
    // Element index where each binding's window starts in its full array.
    mask_origin: u32,  // move_mask [row][col]
    fixed_origin: u32, // fixed_bits [task][word], in words
    v_in_origin: u32,  // v_in [task][row][col]
    out_origin: u32,   // reward and v_out [task][row][col]; policy [task][row][col][action] / A
    gamma: f32,
    slip: f32,
    alpha_ln2: f32,        // alpha * ln(2)
    log2e_over_alpha: f32, // log2(e) / alpha
    slip_share: f32,       // slip / ACTION_COUNT
    _pad0: u32,
    _pad1: u32,
    step_cost: array<vec4<f32>, 3>,  // cost(a), action order
    move_offset: array<vec4<i32>, 3>, // cell-index offset of action a's move
}

@group(0) @binding(0) var<uniform> params: GridParams;
@group(0) @binding(1) var<storage, read> move_mask: array<u32>;        // [row][col]
@group(0) @binding(2) var<storage, read> fixed_bits: array<u32>;       // [task][cell / 32]
@group(0) @binding(3) var<storage, read> reward: array<f32>;           // [task][row][col]
@group(0) @binding(4) var<storage, read> v_in: array<f32>;             // [task][row][col]
@group(0) @binding(5) var<storage, read_write> v_out: array<f32>;      // see out_origin
@group(0) @binding(6) var<storage, read_write> partials: array<vec4<f32>>; // [task][group]

var<workgroup> scratch: array<vec4<f32>, WORKGROUP_SIZE>;

fn step_cost(a: u32) -> f32 {
    return params.step_cost[a / 4u][a % 4u];
}

// Fixed cells (blocked, terminal, or excluded as unreachable) keep their value.
fn is_fixed(task: u32, cell: u32) -> bool {
    let word = task * params.fixed_words_per_task + (cell >> 5u) - params.fixed_origin;
    return ((fixed_bits[word] >> (cell & 31u)) & 1u) != 0u;
}

// Q(s, a) for every action from the next values in v_in.
fn action_values(task: u32, cell: u32) -> array<f32, MAX_ACTIONS> {
    let mask = move_mask[cell - params.mask_origin];
    // Wrapping u32 arithmetic: the window origin may lie past the task's first cell.
    let v_base = task * params.cells_per_task - params.v_in_origin;
    var next: array<f32, MAX_ACTIONS>;
    var total = 0.0;
    var top = -HUGE;
    for (var a = 0u; a < ACTION_COUNT; a++) {
        var dest = cell;
        if ((mask >> a) & 1u) != 0u {
            dest = cell + bitcast<u32>(params.move_offset[a / 4u][a % 4u]);
        }
        next[a] = v_in[v_base + dest];
        total += next[a];
        top = max(top, next[a]);
    }
    let r = reward[task * params.cells_per_task + cell - params.out_origin];
    var q: array<f32, MAX_ACTIONS>;
    if OPTIMISTIC {
        // alpha * log sum_s' P exp(gamma V'/alpha), shifted by the largest successor value.
        let scale = params.gamma * params.log2e_over_alpha;
        var weight: array<f32, MAX_ACTIONS>;
        var mass = 0.0;
        for (var a = 0u; a < ACTION_COUNT; a++) {
            weight[a] = exp2((next[a] - top) * scale);
            mass += weight[a];
        }
        let shared_mass = params.slip_share * mass;
        for (var a = 0u; a < ACTION_COUNT; a++) {
            let inner = (1.0 - params.slip) * weight[a] + shared_mass;
            q[a] = r - step_cost(a) + params.gamma * top + params.alpha_ln2 * log2(inner);
        }
    } else {
        let slipped = params.slip_share * total;
        for (var a = 0u; a < ACTION_COUNT; a++) {
            q[a] = r - step_cost(a) + params.gamma * ((1.0 - params.slip) * next[a] + slipped);
        }
    }
    return q;
}

fn max_value(q: array<f32, MAX_ACTIONS>) -> f32 {
    var top = q[0];
    for (var a = 1u; a < ACTION_COUNT; a++) {
        top = max(top, q[a]);
    }
    return top;
}

// V = alpha * log sum_a exp(Q / alpha), or max_a Q when alpha = 0.
fn soft_max(q: array<f32, MAX_ACTIONS>) -> f32 {
    let top = max_value(q);
    if HARD_MAX {
        return top;
    }
    var total = 0.0;
    for (var a = 0u; a < ACTION_COUNT; a++) {
        total += exp2((q[a] - top) * params.log2e_over_alpha);
    }
    return top + params.alpha_ln2 * log2(total);
}

@compute @workgroup_size(WORKGROUP_X, WORKGROUP_Y, 1)
fn grid_backup(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // (max |dV|, min dV, max |V|, any active cell)
    var stats = vec4<f32>(0.0, HUGE, 0.0, 0.0);
    if gid.x < params.width && gid.y < params.row_count {
        let task = params.task_base + gid.z;
        let cell = (params.row_base + gid.y) * params.width + gid.x;
        if !is_fixed(task, cell) {
            let index = task * params.cells_per_task + cell;
            let v_old = v_in[index - params.v_in_origin];
            let v_new = soft_max(action_values(task, cell));
            v_out[index - params.out_origin] = v_new;
            stats = vec4<f32>(abs(v_new - v_old), v_new - v_old, abs(v_new), 1.0);
        }
    }
    if WRITE_RESIDUAL {
        scratch[lid] = stats;
        workgroupBarrier();
        for (var stride = WORKGROUP_SIZE / 2u; stride > 0u; stride /= 2u) {
            if lid < stride {
                let a = scratch[lid];
                let b = scratch[lid + stride];
                scratch[lid] = vec4<f32>(max(a.x, b.x), min(a.y, b.y), max(a.z, b.z), max(a.w, b.w));
            }
            workgroupBarrier();
        }
        if lid == 0u {
            let group_row = params.row_base / WORKGROUP_Y + wid.y;
            let task = params.task_base + wid.z;
            partials[task * params.groups_per_task + group_row * params.groups_x + wid.x] = scratch[0];
        }
    }
}

// pi(a|s) = exp((Q(s,a) - V(s)) / alpha) from the next values in v_in, written to
// v_out as [task][row][col][action]; for alpha = 0, one-hot on the first maximising action.
// Fixed cells get 0 (the host writes NaN there).
@compute @workgroup_size(WORKGROUP_X, WORKGROUP_Y, 1)
fn grid_policy(@builtin(global_invocation_id) gid: vec3<u32>) {
    if gid.x >= params.width || gid.y >= params.row_count {
        return;
    }
    let task = params.task_base + gid.z;
    let cell = (params.row_base + gid.y) * params.width + gid.x;
    let out_base = (task * params.cells_per_task + cell - params.out_origin) * ACTION_COUNT;
    if is_fixed(task, cell) {
        for (var a = 0u; a < ACTION_COUNT; a++) {
            v_out[out_base + a] = 0.0;
        }
        return;
    }
    let q = action_values(task, cell);
    if HARD_MAX {
        let top = max_value(q);
        let tie = top - TIE_RELATIVE * max(1.0, abs(top));
        var chosen = false;
        for (var a = 0u; a < ACTION_COUNT; a++) {
            let pick = !chosen && q[a] >= tie;
            chosen = chosen || pick;
            v_out[out_base + a] = select(0.0, 1.0, pick);
        }
    } else {
        let v = soft_max(q);
        for (var a = 0u; a < ACTION_COUNT; a++) {
            v_out[out_base + a] = exp2((q[a] - v) * params.log2e_over_alpha);
        }
    }
}
