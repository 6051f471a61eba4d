// Soft Bellman backups over a batch of gridworld tasks that share one map.
// CPU twin: src/engine/cpu/grid_backup.rs (`grid_backup`, `grid_policy`, `action_values`, `soft_max`). The
// rate-extrapolation jump between sweeps is shaders/extrapolate.wgsl. Modified policy
// iteration: `grid_backup` with IMPROVE is the improvement, `evaluate` the exp-free policy
// evaluation sweep (CPU twin: src/engine/cpu/policy_evaluation.rs, `improve`, `evaluate`).
//
// Transitions are never stored: each cell's legal-move bitmask says which moves leave it
// (bit a clear = the move is blocked and the agent stays). With slip eps, action a executes its
// own move with probability 1 - eps and a uniformly drawn action's move with probability eps.
//
// One invocation handles a quad of 4 cells of one row: the 3 x 3 quads around it are 9 vec4
// loads that hold every neighbour value, its fixed flags are 4 bits of one word. Only quads
// with a free cell are visited: `active_quads` lists them in row-major order with their 4
// cells' move masks (a byte each). The GPU path pads the map width to a multiple of 4 with
// blocked cells, which changes no transition.
//
// Dispatch: 64 invocations per workgroup over the band's slice of `active_quads`
// (x + y * dispatch_x workgroups), z = task within the band. A band is a window of whole tasks
// or of rows of one task, so that every binding stays under the adapter's storage-binding
// limit; the *_origin fields locate each window in the chunk's arrays.

// Joined after shared/constants.wgsl, shared/grid_params.wgsl, shared/residual_stats.wgsl,
// shared/log_sum_exp.wgsl and shared/policy_ties.wgsl (`engine::gpu::GRID_BACKUP_WGSL`).

// Optimistic (log-expectation) backup instead of the expected one.
override OPTIMISTIC: bool = false;
// alpha = 0: V = max_a Q and a one-hot policy.
override HARD_MAX: bool = false;
// Whether any task has a reward map (else R_task = 0 and `reward` is not read).
override HAS_REWARD: bool = true;
// Whether this sweep writes per-workgroup residual statistics into `partials`.
override WRITE_RESIDUAL: bool = false;
// grid_policy writes the soft Q-values themselves instead of pi.
override WRITE_Q: bool = false;
// Whether a task may stop iterating (an infinite horizon): `frozen` is read only then.
override FREEZE: bool = false;
// grid_backup is modified policy iteration's improvement: it also writes its policy into
// `policy` as the improved-policy record `evaluate` reads (see `policy_slots`).
override IMPROVE: bool = false;

@group(0) @binding(0) var<uniform> params: GridParams;
// (row << 16 | quad column, move masks of the quad's 4 cells: byte j = cell 4q + j).
@group(0) @binding(1) var<storage, read> active_quads: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> fixed_bits: array<u32>;         // [task][cell / 32]
@group(0) @binding(3) var<storage, read> reward: array<vec4<f32>>;       // [task][row][quad]
@group(0) @binding(4) var<storage, read> v_in: array<vec4<f32>>;         // [task][row][quad]
@group(0) @binding(5) var<storage, read_write> v_out: array<vec4<f32>>;  // [task][row][quad]
@group(0) @binding(6) var<storage, read_write> partials: array<vec4<f32>>; // [task][group]
// grid_policy: pi (Q with WRITE_Q) [task][row][col][action]; grid_backup with IMPROVE (written)
// and evaluate (read): the improved policy [task][row][col][policy_slots()].
@group(0) @binding(7) var<storage, read_write> policy: array<f32>;
// grid_backup: NOT_FROZEN, or the task stopped iterating and is copied (shared/residual_stats.wgsl).
@group(0) @binding(8) var<storage, read> frozen: array<u32>;             // [task]

// Floats per cell of the improved-policy record: at alpha = 0 the chosen action (the first
// argmax; -1 where V = -inf: the cell stays there); else pi(a|s) for every action, then
// h(s) = V'(s) - sum_a pi(a|s) Q(s,a) (-inf where V' = -inf). Same as
// `engine::gpu::grid_engine::policy_slots`.
fn policy_slots() -> u32 {
    return select(action_count() + 1u, 1u, HARD_MAX);
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
            weight[a] = exp_shifted(next[a], top, scale);
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
        total += exp_shifted(q[a], top, params.log2e_over_alpha);
    }
    return lse_value(vec2<f32>(top, total), params.alpha_ln2);
}

// One active quad of one task, with everything its 4 cells' backups need.
struct Quad {
    valid: bool,
    task: u32,
    row: u32,
    column: u32, // quad column: cells 4 * column .. 4 * column + 3
    masks: u32,
    fixed: u32, // 4 bits, bit j = cell j is fixed
    in_index: u32, // this quad in v_in's window
    out_index: u32, // this quad in the reward / v_out window
}

fn locate(wid: vec3<u32>, lid: u32) -> Quad {
    var quad: Quad;
    let item = (wid.y * params.dispatch_x + wid.x) * WORKGROUP_SIZE + lid;
    quad.valid = item < params.list_count;
    if !quad.valid {
        return quad;
    }
    let entry = active_quads[params.list_base + item - params.quads_origin];
    quad.task = params.task_base + wid.z;
    quad.row = entry.x >> 16u;
    quad.column = entry.x & 0xffffu;
    quad.masks = entry.y;
    let cell = quad.row * params.width + 4u * quad.column;
    let word = quad.task * params.fixed_words_per_task + (cell >> 5u) - params.fixed_origin;
    quad.fixed = (fixed_bits[word] >> (cell & 31u)) & 15u;
    let index = (quad.task * params.cells_per_task + cell) / 4u;
    quad.in_index = index - params.v_in_origin;
    quad.out_index = index - params.out_origin;
    return quad;
}

// Values of row segment [4q - 1, 4q + 5) from the quads left of, at and right of q.
fn segment(left: vec4<f32>, mid: vec4<f32>, right: vec4<f32>) -> array<f32, 6> {
    return array<f32, 6>(left.w, mid.x, mid.y, mid.z, mid.w, right.x);
}

// Successor values of cell j of a quad, in action order, from the 6-cell segments of the rows
// above, at and below it; blocked moves stay.
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

// v_in indices of the quads above and below (clamped at the map edge: moves off the map are
// blocked anyway, so those values are never used) and the column steps left and right.
fn row_above(q: Quad) -> u32 {
    return select(q.in_index, q.in_index - params.width / 4u, q.row > 0u);
}

fn row_below(q: Quad) -> u32 {
    return select(q.in_index, q.in_index + params.width / 4u, q.row + 1u < params.height);
}

fn step_left(q: Quad) -> u32 {
    return select(0u, 1u, q.column > 0u);
}

fn step_right(q: Quad) -> u32 {
    return select(0u, 1u, q.column + 1u < params.width / 4u);
}

fn quad_reward(q: Quad) -> vec4<f32> {
    if HAS_REWARD {
        return reward[q.out_index];
    }
    return vec4<f32>(0.0);
}

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn grid_backup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var stats = NO_STATS;
    let q = locate(wid, lid);
    if q.valid && q.fixed != 15u && FREEZE && frozen[q.task] != NOT_FROZEN {
        v_out[q.out_index] = v_in[q.in_index];
    } else if q.valid && q.fixed != 15u {
        let up = row_above(q);
        let down = row_below(q);
        let l = step_left(q);
        let r = step_right(q);
        let here = q.in_index;
        let old = v_in[here];
        let top = segment(v_in[up - l], v_in[up], v_in[up + r]);
        let mid = segment(v_in[here - l], old, v_in[here + r]);
        let bot = segment(v_in[down - l], v_in[down], v_in[down + r]);
        let r4 = quad_reward(q);
        var updated = old;
        for (var j = 0u; j < 4u; j++) {
            if ((q.fixed >> j) & 1u) == 0u {
                let next = successors(top, mid, bot, j, (q.masks >> (8u * j)) & 255u);
                let values = action_values(next, r4[j]);
                if IMPROVE {
                    updated[j] = improve_cell((4u * q.out_index + j) * policy_slots(), values);
                } else {
                    updated[j] = soft_max(values);
                }
                let delta = updated[j] - old[j];
                stats = combine_stats(stats, element_stats(delta, updated[j]));
            }
        }
        v_out[q.out_index] = updated;
    }
    if WRITE_RESIDUAL {
        let total = workgroup_stats(lid, stats);
        let p = params;
        let slot = partial_slot(wid, lid, p.dispatch_x, p.list_count, p.task_base, p.group_base, p.groups_per_task);
        if slot != NO_SLOT {
            partials[slot] = total;
        }
    }
}

// soft_max(q) (the same arithmetic, the exponentials shared) that also writes the cell's
// improved-policy record (`policy_slots`) at `base` in `policy`. Where f32 does not resolve
// the soft policy (`soft_policy_resolved`) pi is one-hot on the first argmax, h then V' -
// Q(argmax).
fn improve_cell(base: u32, q: array<f32, MAX_ACTIONS>) -> f32 {
    let count = action_count();
    let top = max_value(q);
    // The first argmax (0 if none equals top: a NaN).
    var first = count;
    for (var a = 0u; a < count; a++) {
        first = select(first, a, first == count && q[a] == top);
    }
    first = select(first, 0u, first == count);
    if HARD_MAX {
        policy[base] = select(f32(first), -1.0, top < -HUGE);
        return top;
    }
    var pi: array<f32, MAX_ACTIONS>;
    var total = 0.0;
    for (var a = 0u; a < count; a++) {
        pi[a] = exp_shifted(q[a], top, params.log2e_over_alpha);
        total += pi[a];
    }
    let v = lse_value(vec2<f32>(top, total), params.alpha_ln2);
    if !(v >= -HUGE) {
        // No action has a finite Q: the cell stays at V' (evaluate copies it).
        for (var a = 0u; a < count; a++) {
            policy[base + a] = 0.0;
        }
        policy[base + count] = v;
        return v;
    }
    if soft_policy_resolved(params.alpha_ln2, top) {
        for (var a = 0u; a < count; a++) {
            pi[a] = pi[a] / total;
        }
    } else {
        // Selects rather than pi[first]: a runtime index would keep the array in memory.
        for (var a = 0u; a < count; a++) {
            pi[a] = select(0.0, 1.0, a == first);
        }
    }
    for (var a = 0u; a < count; a++) {
        policy[base + a] = pi[a];
    }
    policy[base + count] = v - expected_q(pi, q);
    return v;
}

// Q(s, a) of one action `a`, as `action_values` computes it with the expected backup. `a` is
// picked by selects: a runtime index into `next` would keep the array in memory.
fn action_value(next: array<f32, MAX_ACTIONS>, r: f32, a: u32) -> f32 {
    var total = 0.0;
    var moved = next[0];
    var cost = step_cost(0u);
    for (var b = 0u; b < action_count(); b++) {
        total += next[b];
        moved = select(moved, next[b], b == a);
        cost = select(cost, step_cost(b), b == a);
    }
    let slipped = params.slip_share * total;
    return r - cost + params.gamma * ((1.0 - params.slip) * moved + slipped);
}

// sum_a pi(a) q(a) over the actions the policy takes (an excluded action's -inf Q has pi = 0
// and adds nothing).
fn expected_q(pi: array<f32, MAX_ACTIONS>, q: array<f32, MAX_ACTIONS>) -> f32 {
    var total = 0.0;
    for (var a = 0u; a < action_count(); a++) {
        if pi[a] > 0.0 {
            total += pi[a] * q[a];
        }
    }
    return total;
}

// One policy-evaluation sweep of modified policy iteration: v_out = T_pi v_in = h + sum_a
// pi(a|s) Q_{v_in}(s,a) under the improved-policy record in `policy` (at alpha = 0 the chosen
// action's Q alone), no exp or log. Fixed cells, cells at -inf and frozen tasks are copied;
// no statistics (convergence is tested on improvements only). Same dispatch and bindings as
// grid_backup (with the expected backup: IMPROVE's settings).
@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn evaluate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let q = locate(wid, lid);
    if !q.valid || q.fixed == 15u {
        return;
    }
    let old = v_in[q.in_index];
    if FREEZE && frozen[q.task] != NOT_FROZEN {
        v_out[q.out_index] = old;
        return;
    }
    let up = row_above(q);
    let down = row_below(q);
    let l = step_left(q);
    let r = step_right(q);
    let here = q.in_index;
    let top = segment(v_in[up - l], v_in[up], v_in[up + r]);
    let mid = segment(v_in[here - l], old, v_in[here + r]);
    let bot = segment(v_in[down - l], v_in[down], v_in[down + r]);
    let r4 = quad_reward(q);
    let count = action_count();
    var updated = old;
    for (var j = 0u; j < 4u; j++) {
        if ((q.fixed >> j) & 1u) != 0u {
            continue;
        }
        let base = (4u * q.out_index + j) * policy_slots();
        let next = successors(top, mid, bot, j, (q.masks >> (8u * j)) & 255u);
        if HARD_MAX {
            let chosen = policy[base];
            if chosen >= 0.0 {
                updated[j] = action_value(next, r4[j], u32(chosen));
            }
        } else {
            let values = action_values(next, r4[j]);
            let h = policy[base + count];
            if h >= -HUGE {
                var pi: array<f32, MAX_ACTIONS>;
                for (var a = 0u; a < count; a++) {
                    pi[a] = policy[base + a];
                }
                updated[j] = h + expected_q(pi, values);
            }
        }
    }
    v_out[q.out_index] = updated;
}

// pi(a|s) = exp((Q(s,a) - V(s)) / alpha) from the next values in v_in, written to `policy`
// (normalised over the row); for alpha = 0, or alpha below f32's resolution of Q
// (`soft_policy_resolved`), one-hot on the first maximising action; with WRITE_Q, Q(s,a)
// itself. Same
// dispatch as grid_backup; fixed cells and cells of inactive quads are left alone (the host
// writes NaN there).
@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn grid_policy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let q = locate(wid, lid);
    if !q.valid || q.fixed == 15u {
        return;
    }
    let up = row_above(q);
    let down = row_below(q);
    let l = step_left(q);
    let r = step_right(q);
    let here = q.in_index;
    let top = segment(v_in[up - l], v_in[up], v_in[up + r]);
    let mid = segment(v_in[here - l], v_in[here], v_in[here + r]);
    let bot = segment(v_in[down - l], v_in[down], v_in[down + r]);
    let r4 = quad_reward(q);
    let count = action_count();
    for (var j = 0u; j < 4u; j++) {
        if ((q.fixed >> j) & 1u) != 0u {
            continue;
        }
        let out_base = (4u * q.out_index + j) * count;
        let values = action_values(successors(top, mid, bot, j, (q.masks >> (8u * j)) & 255u), r4[j]);
        if WRITE_Q {
            for (var a = 0u; a < count; a++) {
                policy[out_base + a] = values[a];
            }
            continue;
        }
        let top = max_value(values);
        if HARD_MAX || !soft_policy_resolved(params.alpha_ln2, top) {
            let tie = tie_threshold(top);
            var chosen = false;
            for (var a = 0u; a < count; a++) {
                policy[out_base + a] = one_hot(values[a], tie, &chosen);
            }
        } else {
            // exp((Q - top) / alpha) normalised: the same as exp((Q - V) / alpha), but the
            // row sums to 1 within f32 rounding whatever the rounding of V.
            var weight: array<f32, MAX_ACTIONS>;
            var total = 0.0;
            for (var a = 0u; a < count; a++) {
                weight[a] = exp_shifted(values[a], top, params.log2e_over_alpha);
                total += weight[a];
            }
            for (var a = 0u; a < count; a++) {
                policy[out_base + a] = weight[a] / total;
            }
        }
    }
}
