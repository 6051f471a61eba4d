// The vector-Jacobian product of a gridworld solve on the grid kernels: the grid twin of
// shaders/mdp_vjp.wgsl (same math, same `rows` staging), with the transitions read from the
// cells' move masks instead of a CSR. Action a takes its own move with probability 1 - eps and
// each move b with eps / |A|, so P(.|c,a) = sum_b P_b(a) [dest(c, b)], P_b(a) = (1 - eps)
// [a = b] + eps / |A|; a blocked move and STAY stay. With W the dynamics the backup
// differentiates through (P, or the optimistic backup's tilted P(s'|c,a) exp((gamma V(s') -
// tilt(c,a)) / alpha), tilt = Q - r) and g = g0 + pi u the total cotangent on Q:
// - grid_vjp_rows (one invocation per cell c): pi(.|c), tilt(c, .) and g0(c, .) (c_Q plus pi's
//   cotangent through the softmax) from the cotangents the host put in `rows`; pi's alpha term
//   into `out`'s scalars; with WRITE_WEIGHTS also each move b's whole weight
//   sum_a pi(a|c) P_b(a) W-tilt(c,a,dest(c,b)) into `weights`, which grid_occupancy.wgsl's
//   WEIGHTED sweeps then read to iterate the stationary adjoint.
// - grid_vjp_pull (one invocation per cell c'): out(c') += gamma sum over the moves (c, b)
//   that land on c' of sum_a W_b(c'|c,a) (g0(c,a) + pi(a|c) u(c)): the occupancy pull with a
//   signed start.
// - grid_vjp_products (one invocation per cell c): with u = u_in, adds g to r_bar and the
//   cell's alpha and gamma terms to the scalars.
// A finite horizon runs rows, products and pull once per step t (V = V_{t+1}, u = u_t).
// CPU twin: src/engine/cpu/mdp_vjp.rs (`Step::adjoint`) on the grid's `GridMdp`.
//
// Dispatch as grid_occupancy.wgsl: 64 invocations per workgroup over the cells of a task
// (x + y * dispatch_x workgroups), z = task; every array is bound whole.

// Joined after shared/constants.wgsl, shared/grid_params.wgsl (CONNECTIVITY, STAY, the
// moves), shared/log_sum_exp.wgsl and shared/policy_ties.wgsl
// (`engine::gpu::grid_vjp::GRID_VJP_WGSL`).

// Optimistic (log-expectation) backup instead of the expected one.
override OPTIMISTIC: bool = false;
// alpha = 0: the one-hot policy of the first maximiser (the hard max's subgradient).
override HARD_MAX: bool = false;
// grid_vjp_rows also writes each move's whole weight into `weights`.
override WRITE_WEIGHTS: bool = false;

// Keep in sync with `engine::gpu::grid_vjp::GridVjpParams` (sizes compared in
// tests/kernel_shader_layout.rs).
struct GridVjpParams {
    width: u32,
    height: u32,
    cells_per_task: u32,
    fixed_words_per_task: u32,
    dispatch_x: u32,
    // Where the scalars [task][cell][2] start in `out` (grid_vjp_rows, grid_vjp_products).
    scalars_origin: u32,
    gamma: f32,
    slip: f32,
    alpha: f32,
    alpha_ln2: f32,        // alpha * ln(2)
    log2e_over_alpha: f32, // log2(e) / alpha
    slip_share: f32,       // slip / |A|
}

@group(0) @binding(0) var<uniform> params: GridVjpParams;
@group(0) @binding(1) var<storage, read> move_masks: array<u32>;  // [row][col]
@group(0) @binding(2) var<storage, read> fixed_bits: array<u32>;  // [task][cell / 32]
@group(0) @binding(3) var<storage, read> reward: array<f32>;      // [task][row][col][action]: r(c,a)
@group(0) @binding(4) var<storage, read> v: array<f32>;           // [task][row][col]: V (V_{t+1})
// In: (c_Q, c_pi, -, -); after grid_vjp_rows: (pi, tilt, g0, -). [task][row][col][action]
@group(0) @binding(5) var<storage, read_write> rows: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> u_in: array<f32>;        // [task][row][col]
// pull: u_out [task][row][col]; rows, products: r_bar [task][row][col][action], then at
// scalars_origin the (alpha, gamma) terms [task][row][col][2].
@group(0) @binding(7) var<storage, read_write> out: array<f32>;
// grid_vjp_rows with WRITE_WEIGHTS: each move's whole weight, [task][row][col][move].
@group(0) @binding(8) var<storage, read_write> weights: array<f32>;

// One cell of one task.
struct Item {
    valid: bool,
    task: u32,
    cell: u32,
}

fn locate(wid: vec3<u32>, lid: u32) -> Item {
    var item: Item;
    let index = (wid.y * params.dispatch_x + wid.x) * WORKGROUP_SIZE + lid;
    item.valid = index < params.cells_per_task;
    item.task = wid.z;
    item.cell = index;
    return item;
}

fn is_fixed(task: u32, cell: u32) -> bool {
    let word = task * params.fixed_words_per_task + (cell >> 5u);
    return ((fixed_bits[word] >> (cell & 31u)) & 1u) != 0u;
}

// The cell move b of `cell` (its mask `mask`) lands on: itself for a blocked move and STAY.
fn destination(cell: u32, mask: u32, b: u32) -> u32 {
    if b >= CONNECTIVITY || ((mask >> b) & 1u) == 0u {
        return cell;
    }
    let row = i32(cell / params.width) + MOVE_ROW[b];
    let col = i32(cell % params.width) + MOVE_COL[b];
    return u32(row) * params.width + u32(col);
}

// V of each move's destination, in action order.
fn successor_values(item: Item) -> array<f32, MAX_ACTIONS> {
    let mask = move_masks[item.cell];
    let base = item.task * params.cells_per_task;
    var next: array<f32, MAX_ACTIONS>;
    for (var b = 0u; b < action_count(); b++) {
        next[b] = v[base + destination(item.cell, mask, b)];
    }
    return next;
}

// tilt(c, a) = Q - r per action from the successors' values: gamma E[V'] (expected) or
// gamma max V' + alpha log E[exp(gamma (V' - max V') / alpha)] (optimistic), as
// grid_backup.wgsl's `action_values`.
fn tilts(next: array<f32, MAX_ACTIONS>) -> array<f32, MAX_ACTIONS> {
    let n = action_count();
    let keep = 1.0 - params.slip;
    var top = -HUGE;
    var total = 0.0;
    for (var b = 0u; b < n; b++) {
        top = max(top, next[b]);
        total += next[b];
    }
    var tilt: array<f32, MAX_ACTIONS>;
    if OPTIMISTIC {
        let scale = params.gamma * params.log2e_over_alpha;
        var weight: array<f32, MAX_ACTIONS>;
        var mass = 0.0;
        for (var b = 0u; b < n; b++) {
            weight[b] = exp_shifted(next[b], top, scale);
            mass += weight[b];
        }
        for (var a = 0u; a < n; a++) {
            let inner = keep * weight[a] + params.slip_share * mass;
            tilt[a] = params.gamma * top + params.alpha_ln2 * log2(inner);
        }
    } else {
        for (var a = 0u; a < n; a++) {
            tilt[a] = params.gamma * (keep * next[a] + params.slip_share * total);
        }
    }
    return tilt;
}

// The optimistic tilt factor exp((gamma V(s') - tilt) / alpha) of a successor value `v_next`
// (1 for the expected backup; 0 into an excluded cell).
fn tilt_factor(v_next: f32, tilt: f32) -> f32 {
    if !(v_next > -HUGE) {
        return 0.0;
    }
    if OPTIMISTIC {
        return exp2((params.gamma * v_next - tilt) * params.log2e_over_alpha);
    }
    return 1.0;
}

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn grid_vjp_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let item = locate(wid, lid);
    if !item.valid {
        return;
    }
    let n = action_count();
    let base = (item.task * params.cells_per_task + item.cell) * n;
    if is_fixed(item.task, item.cell) {
        // A cell that stops passes nothing on; cotangents on its (NaN) Q and pi are ignored.
        for (var a = 0u; a < n; a++) {
            rows[base + a] = vec4<f32>(0.0);
            if WRITE_WEIGHTS {
                weights[base + a] = 0.0;
            }
        }
        return;
    }
    let next = successor_values(item);
    let tilt = tilts(next);
    // Pass 1: Q per action and the largest.
    var q: array<f32, MAX_ACTIONS>;
    var top = -HUGE;
    for (var a = 0u; a < n; a++) {
        q[a] = reward[base + a] + tilt[a];
        top = max(top, q[a]);
    }
    // Pass 2: pi as grid_policy writes it (its hard-max rule included).
    let one_hot_policy = HARD_MAX || !soft_policy_resolved(params.alpha_ln2, top);
    var pi: array<f32, MAX_ACTIONS>;
    var total = 0.0;
    var chosen = false;
    let tie = tie_threshold(top);
    for (var a = 0u; a < n; a++) {
        var weight = 0.0;
        if one_hot_policy {
            weight = one_hot(q[a], tie, &chosen);
        } else if q[a] > -HUGE {
            weight = exp_shifted(q[a], top, params.log2e_over_alpha);
        }
        pi[a] = weight;
        total += weight;
    }
    // Pass 3: mean c_pi and mean log pi under pi.
    var mean_c = 0.0;
    var mean_log = 0.0;
    for (var a = 0u; a < n; a++) {
        pi[a] /= total;
        if pi[a] > 0.0 {
            mean_c += pi[a] * rows[base + a].y;
            mean_log += pi[a] * log(pi[a]);
        }
    }
    // Pass 4: (pi, tilt, g0); pi's cotangent through the softmax and its alpha term.
    var d_alpha = 0.0;
    for (var a = 0u; a < n; a++) {
        let c = rows[base + a];
        var g0 = c.x;
        if !one_hot_policy && pi[a] > 0.0 {
            g0 += pi[a] * (c.y - mean_c) / params.alpha;
            d_alpha += c.y * pi[a] * (mean_log - log(pi[a])) / params.alpha;
        }
        if !(reward[base + a] > -HUGE) {
            // An excluded action (r = -inf) has no gradient.
            g0 = 0.0;
        }
        rows[base + a] = vec4<f32>(pi[a], tilt[a], g0, 0.0);
    }
    let slot = params.scalars_origin + 2u * (item.task * params.cells_per_task + item.cell);
    out[slot] += d_alpha;
    if WRITE_WEIGHTS {
        // Move b's whole weight: (1 - eps) pi(b) W-tilt(b) + eps / |A| sum_a pi(a) W-tilt(a),
        // both into dest(c, b).
        let keep = 1.0 - params.slip;
        for (var b = 0u; b < n; b++) {
            var shared_mass = 0.0;
            for (var a = 0u; a < n; a++) {
                shared_mass += pi[a] * tilt_factor(next[b], tilt[a]);
            }
            let own = pi[b] * tilt_factor(next[b], tilt[b]);
            weights[base + b] = keep * own + params.slip_share * shared_mass;
        }
    }
}

// sum_a W_b(dest|c,a) (g0(c,a) + pi(a|c) u(c)) for move b of source `cell`, landing on a cell
// of value `v_dest`.
fn move_inflow(task: u32, cell: u32, b: u32, v_dest: f32) -> f32 {
    let n = action_count();
    let u = u_in[task * params.cells_per_task + cell];
    let base = (task * params.cells_per_task + cell) * n;
    var own = 0.0;
    var shared_mass = 0.0;
    for (var a = 0u; a < n; a++) {
        let r4 = rows[base + a];
        let x = (r4.z + r4.x * u) * tilt_factor(v_dest, r4.y);
        shared_mass += x;
        if a == b {
            own = x;
        }
    }
    return (1.0 - params.slip) * own + params.slip_share * shared_mass;
}

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn grid_vjp_pull(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let item = locate(wid, lid);
    if !item.valid {
        return;
    }
    let here = item.task * params.cells_per_task + item.cell;
    let v_here = v[here];
    var inflow = 0.0;
    // An excluded cell (V = -inf) takes nothing.
    if v_here > -HUGE {
        // Itself: the moves that stay (blocked moves, STAY); a fixed cell passes nothing on.
        let mask = move_masks[item.cell];
        if !is_fixed(item.task, item.cell) {
            for (var b = 0u; b < action_count(); b++) {
                if b >= CONNECTIVITY || ((mask >> b) & 1u) == 0u {
                    inflow += move_inflow(item.task, item.cell, b, v_here);
                }
            }
        }
        // Each neighbour whose move b leads here.
        let row = i32(item.cell / params.width);
        let col = i32(item.cell % params.width);
        for (var b = 0u; b < CONNECTIVITY; b++) {
            let r = row - MOVE_ROW[b];
            let c = col - MOVE_COL[b];
            if r < 0 || c < 0 || r >= i32(params.height) || c >= i32(params.width) {
                continue;
            }
            let source = u32(r) * params.width + u32(c);
            if ((move_masks[source] >> b) & 1u) == 0u || is_fixed(item.task, source) {
                continue;
            }
            inflow += move_inflow(item.task, source, b, v_here);
        }
    }
    out[here] += params.gamma * inflow;
}

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn grid_vjp_products(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let item = locate(wid, lid);
    if !item.valid || is_fixed(item.task, item.cell) {
        return;
    }
    let n = action_count();
    let here = item.task * params.cells_per_task + item.cell;
    let u = u_in[here];
    let base = here * n;
    let next = successor_values(item);
    let keep = 1.0 - params.slip;
    var d_alpha = 0.0;
    var d_gamma = 0.0;
    for (var a = 0u; a < n; a++) {
        let r4 = rows[base + a];
        let pi = r4.x;
        // V's own dependence on alpha at fixed Q: the policy's entropy.
        if !HARD_MAX && pi > 0.0 {
            d_alpha -= u * pi * log(pi);
        }
        let g = r4.z + pi * u;
        if g == 0.0 {
            continue;
        }
        out[base + a] += g;
        let tilt = r4.y;
        // (W V)(c, a) = sum_b P_b(a) W-tilt(a, dest b) V(dest b).
        var w_v = 0.0;
        for (var b = 0u; b < n; b++) {
            let w = tilt_factor(next[b], tilt);
            if w > 0.0 {
                let p = select(0.0, keep, a == b) + params.slip_share;
                w_v += p * w * next[b];
            }
        }
        d_gamma += g * w_v;
        if OPTIMISTIC {
            d_alpha += g * (tilt - params.gamma * w_v) / params.alpha;
        }
    }
    let slot = params.scalars_origin + 2u * here;
    out[slot] += d_alpha;
    out[slot + 1u] += d_gamma;
}
