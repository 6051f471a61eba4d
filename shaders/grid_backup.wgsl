// Soft Bellman backups over a batch of gridworld tasks that share one map.
// CPU twin: src/reference.rs (`grid_backup`, `grid_policy`, `action_values`, `soft_max`).
//
// Transitions are never stored: each cell's legal-move bitmask says which moves leave it
// (bit a clear = the move is blocked and the agent stays). With slip eps, action a executes its
// own move with probability 1 - eps and a uniformly drawn action's move with probability eps.
//
// `grid_backup` updates a quad of 4 cells of one row per invocation: the 3 x 3 quads around it
// are 9 vec4 loads that hold every neighbour value, the 4 cells' move masks are one u32 (a byte
// each) and their fixed flags 4 bits of one word. The GPU path pads the map width to a
// multiple of 4 with blocked cells, which changes no transition.
//
// Dispatch: x = quad within the row, y = row within the band, z = task within the band. A band
// is a window of whole tasks or of rows of one task, so that every binding stays under the
// adapter's storage-binding limit; the *_origin fields locate each window in the chunk's arrays.

const WORKGROUP_X: u32 = 16u;
const WORKGROUP_Y: u32 = 4u;
const WORKGROUP_SIZE: u32 = 64u; // WORKGROUP_X * WORKGROUP_Y
const MAX_ACTIONS: u32 = 9u;
// Two Q values closer than this (relative to max(1, |max Q|)) tie for the hard-max policy.
const TIE_RELATIVE: f32 = 1e-5;
const HUGE: f32 = 3.0e38;

// 4 (N, E, S, W) or 8 (then NE, SE, SW, NW).
override CONNECTIVITY: u32 = 8u;
// A final STAY action.
override STAY: bool = false;
// Optimistic (log-expectation) backup instead of the expected one.
override OPTIMISTIC: bool = false;
// alpha = 0: V = max_a Q and a one-hot policy.
override HARD_MAX: bool = false;
// Whether any task has a reward map (else R_task = 0 and `reward` is not read).
override HAS_REWARD: bool = true;
// Whether this sweep writes per-workgroup residual statistics into `partials`.
override WRITE_RESIDUAL: bool = false;

// Keep in sync with `gpu::GridParams` (sizes compared in tests/shader_layout.rs).
struct GridParams {
    width: u32, // cells per row, a multiple of 4
    height: u32,
    cells_per_task: u32,
    fixed_words_per_task: u32,
    // First task ([task] index within the chunk) and rows covered by this band.
    task_base: u32,
    row_base: u32,
    row_count: u32,
    // Workgroups along a row of quads, and per task over all bands (`partials` indexing).
    groups_x: u32,
    groups_per_task: u32,
    // Where each binding's window starts in its full array, in that array's elements.
    mask_origin: u32,  // move_mask [row][quad]
    fixed_origin: u32, // fixed_bits [task][word]
    v_in_origin: u32,  // v_in [task][row][quad]
    out_origin: u32,   // reward, v_out [task][row][quad]; policy cell 4 * out_origin
    gamma: f32,
    slip: f32,
    alpha_ln2: f32,        // alpha * ln(2)
    log2e_over_alpha: f32, // log2(e) / alpha
    slip_share: f32,       // slip / |A|
    _pad0: u32,
    _pad1: u32,
    step_cost: array<vec4<f32>, 3>,   // cost(a), action order
    move_offset: array<vec4<i32>, 3>, // cell-index offset of action a's move
}

@group(0) @binding(0) var<uniform> params: GridParams;
@group(0) @binding(1) var<storage, read> move_mask: array<u32>;          // [row][quad], a byte per cell
@group(0) @binding(2) var<storage, read> fixed_bits: array<u32>;         // [task][cell / 32]
@group(0) @binding(3) var<storage, read> reward: array<vec4<f32>>;       // [task][row][quad]
@group(0) @binding(4) var<storage, read> v_in: array<vec4<f32>>;         // [task][row][quad]
@group(0) @binding(5) var<storage, read_write> v_out: array<vec4<f32>>;  // [task][row][quad]
@group(0) @binding(6) var<storage, read_write> partials: array<vec4<f32>>; // [task][group]
@group(0) @binding(7) var<storage, read_write> policy: array<f32>;       // [task][row][col][action]
@group(0) @binding(8) var<storage, read> extrapolation: array<f32>;       // [task]

var<workgroup> scratch: array<vec4<f32>, WORKGROUP_SIZE>;

fn action_count() -> u32 {
    return CONNECTIVITY + select(0u, 1u, STAY);
}

fn step_cost(a: u32) -> f32 {
    return params.step_cost[a / 4u][a % 4u];
}

// Q(s, a) for every action from the next values of the moves' destinations (`next[a]`, the
// cell's own value where the move is blocked) and the state reward r.
fn action_values(next: array<f32, MAX_ACTIONS>, r: f32) -> array<f32, MAX_ACTIONS> {
    var total = 0.0;
    var top = -HUGE;
    for (var a = 0u; a < action_count(); a++) {
        total += next[a];
        top = max(top, next[a]);
    }
    var q: array<f32, MAX_ACTIONS>;
    if OPTIMISTIC {
        // alpha * log sum_s' P exp(gamma V'/alpha), shifted by the largest successor value.
        let scale = params.gamma * params.log2e_over_alpha;
        var weight: array<f32, MAX_ACTIONS>;
        var mass = 0.0;
        for (var a = 0u; a < action_count(); a++) {
            weight[a] = exp2((next[a] - top) * scale);
            mass += weight[a];
        }
        let shared_mass = params.slip_share * mass;
        for (var a = 0u; a < action_count(); a++) {
            let inner = (1.0 - params.slip) * weight[a] + shared_mass;
            q[a] = r - step_cost(a) + params.gamma * top + params.alpha_ln2 * log2(inner);
        }
    } else {
        let slipped = params.slip_share * total;
        for (var a = 0u; a < action_count(); a++) {
            q[a] = r - step_cost(a) + params.gamma * ((1.0 - params.slip) * next[a] + slipped);
        }
    }
    return q;
}

fn max_value(q: array<f32, MAX_ACTIONS>) -> f32 {
    var top = q[0];
    for (var a = 1u; a < action_count(); a++) {
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
    for (var a = 0u; a < action_count(); a++) {
        total += exp2((q[a] - top) * params.log2e_over_alpha);
    }
    return top + params.alpha_ln2 * log2(total);
}

// Values of row segment [4q - 1, 4q + 5) from the quads left of, at and right of q.
fn segment(left: vec4<f32>, mid: vec4<f32>, right: vec4<f32>) -> array<f32, 6> {
    return array<f32, 6>(left.w, mid.x, mid.y, mid.z, mid.w, right.x);
}

// Successor values of cell j of a quad, in action order, from the segments of the rows above,
// at and below it; blocked moves stay.
fn successors(top: array<f32, 6>, mid: array<f32, 6>, bot: array<f32, 6>, j: u32, mask: u32) -> array<f32, MAX_ACTIONS> {
    let here = mid[j + 1u];
    // Move order N, E, S, W, NE, SE, SW, NW.
    let moved = array<f32, 8>(top[j + 1u], mid[j + 2u], bot[j + 1u], mid[j], top[j + 2u], bot[j + 2u], bot[j], top[j]);
    var next: array<f32, MAX_ACTIONS>;
    for (var a = 0u; a < CONNECTIVITY; a++) {
        next[a] = select(here, moved[a], ((mask >> a) & 1u) != 0u);
    }
    if STAY {
        next[CONNECTIVITY] = here;
    }
    return next;
}

@compute @workgroup_size(WORKGROUP_X, WORKGROUP_Y, 1)
fn grid_backup(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // (max |dV|, min dV, max |V|, any active cell)
    var stats = vec4<f32>(0.0, HUGE, 0.0, 0.0);
    let quads_per_row = params.width / 4u;
    if gid.x < quads_per_row && gid.y < params.row_count {
        let task = params.task_base + gid.z;
        let row = params.row_base + gid.y;
        let quad = row * quads_per_row + gid.x;
        let cell = quad * 4u;
        let word = task * params.fixed_words_per_task + (cell >> 5u) - params.fixed_origin;
        let fixed = (fixed_bits[word] >> (cell & 31u)) & 15u;
        if fixed != 15u {
            // Rows and quads clamped at the map edge: moves off the map are blocked anyway.
            let task_base = task * (params.cells_per_task / 4u) - params.v_in_origin;
            let up = (max(row, 1u) - 1u) * quads_per_row;
            let here = row * quads_per_row;
            let down = min(row + 1u, params.height - 1u) * quads_per_row;
            let l = max(gid.x, 1u) - 1u;
            let r = min(gid.x + 1u, quads_per_row - 1u);
            let top = segment(v_in[task_base + up + l], v_in[task_base + up + gid.x], v_in[task_base + up + r]);
            let old = v_in[task_base + here + gid.x];
            let mid = segment(v_in[task_base + here + l], old, v_in[task_base + here + r]);
            let bot = segment(v_in[task_base + down + l], v_in[task_base + down + gid.x], v_in[task_base + down + r]);
            let masks = move_mask[quad - params.mask_origin];
            let out_index = task * (params.cells_per_task / 4u) + quad - params.out_origin;
            var r4 = vec4<f32>(0.0);
            if HAS_REWARD {
                r4 = reward[out_index];
            }
            var updated = old;
            for (var j = 0u; j < 4u; j++) {
                if ((fixed >> j) & 1u) == 0u {
                    let next = successors(top, mid, bot, j, (masks >> (8u * j)) & 255u);
                    updated[j] = soft_max(action_values(next, r4[j]));
                    let delta = updated[j] - old[j];
                    stats = vec4<f32>(max(stats.x, abs(delta)), min(stats.y, delta), max(stats.z, abs(updated[j])), 1.0);
                }
            }
            v_out[out_index] = updated;
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

// V <- V + factor * (V - V_prev) on non-fixed cells, V in v_out and V_prev (the values before
// the last sweep) in v_in, with the task's factor from `convergence_decide`. If the residual
// decays like lambda^k along one mode, this lands on that mode's limit:
// factor = lambda / (1 - lambda). Same dispatch shape as grid_backup.
@compute @workgroup_size(WORKGROUP_X, WORKGROUP_Y, 1)
fn grid_extrapolate(@builtin(global_invocation_id) gid: vec3<u32>) {
    let quads_per_row = params.width / 4u;
    if gid.x >= quads_per_row || gid.y >= params.row_count {
        return;
    }
    let task = params.task_base + gid.z;
    let factor = extrapolation[task];
    let quad = (params.row_base + gid.y) * quads_per_row + gid.x;
    let cell = quad * 4u;
    let fixed = (fixed_bits[task * params.fixed_words_per_task + (cell >> 5u) - params.fixed_origin] >> (cell & 31u)) & 15u;
    if factor == 0.0 || fixed == 15u {
        return;
    }
    let quads_per_task = params.cells_per_task / 4u;
    let out_index = task * quads_per_task + quad - params.out_origin;
    let current = v_out[out_index];
    let previous = v_in[task * quads_per_task + quad - params.v_in_origin];
    var moved = current;
    for (var j = 0u; j < 4u; j++) {
        if ((fixed >> j) & 1u) == 0u {
            moved[j] = current[j] + factor * (current[j] - previous[j]);
        }
    }
    v_out[out_index] = moved;
}

// Value of cell `index` ([task][row][col] within the chunk) in v_in.
fn v_in_at(index: u32) -> f32 {
    let i = index - 4u * params.v_in_origin;
    return v_in[i >> 2u][i & 3u];
}

// pi(a|s) = exp((Q(s,a) - V(s)) / alpha) from the next values in v_in, one invocation per cell
// (x = column), written to `policy`; for alpha = 0, one-hot on the first maximising action.
// Fixed cells get 0 (the host writes NaN there).
@compute @workgroup_size(WORKGROUP_X, WORKGROUP_Y, 1)
fn grid_policy(@builtin(global_invocation_id) gid: vec3<u32>) {
    if gid.x >= params.width || gid.y >= params.row_count {
        return;
    }
    let task = params.task_base + gid.z;
    let cell = (params.row_base + gid.y) * params.width + gid.x;
    let index = task * params.cells_per_task + cell;
    let n = action_count();
    let out_base = (index - 4u * params.out_origin) * n;
    let word = task * params.fixed_words_per_task + (cell >> 5u) - params.fixed_origin;
    if ((fixed_bits[word] >> (cell & 31u)) & 1u) != 0u {
        for (var a = 0u; a < n; a++) {
            policy[out_base + a] = 0.0;
        }
        return;
    }
    let mask = (move_mask[(cell >> 2u) - params.mask_origin] >> (8u * (cell & 3u))) & 255u;
    let here = v_in_at(index);
    var next: array<f32, MAX_ACTIONS>;
    for (var a = 0u; a < n; a++) {
        next[a] = here;
        if ((mask >> a) & 1u) != 0u {
            next[a] = v_in_at(index + bitcast<u32>(params.move_offset[a / 4u][a % 4u]));
        }
    }
    var r = 0.0;
    if HAS_REWARD {
        let i = index - 4u * params.out_origin;
        r = reward[i >> 2u][i & 3u];
    }
    let q = action_values(next, r);
    if HARD_MAX {
        let top = max_value(q);
        let tie = top - TIE_RELATIVE * max(1.0, abs(top));
        var chosen = false;
        for (var a = 0u; a < n; a++) {
            let pick = !chosen && q[a] >= tie;
            chosen = chosen || pick;
            policy[out_base + a] = select(0.0, 1.0, pick);
        }
    } else {
        let v = soft_max(q);
        for (var a = 0u; a < n; a++) {
            policy[out_base + a] = exp2((q[a] - v) * params.log2e_over_alpha);
        }
    }
}
