// The vector-Jacobian product of a general-MDP solve: the adjoint (forward-message) pass
// seeded with a signed cotangent, and the products that turn it into gradients.
// CPU twin: src/engine/cpu/mdp_vjp.rs (`Step::adjoint`, `policy_weights`); the math is in its
// module docs. With W(s'|s,a) the dynamics the backup differentiates through (P, or the
// optimistic backup's tilted P(s'|s,a) exp((gamma V(s') - tilt(s,a)) / alpha), tilt = Q - r)
// and g = g0 + pi u the total cotangent on Q:
// - mdp_vjp_rows (one invocation per state s): pi(.|s), tilt(s, .) and g0(s, .), the cotangent
//   on Q apart from V's (c_Q plus pi's through the softmax), from the cotangents the host put
//   in `rows`; pi's alpha term into `out`'s scalars.
// - mdp_vjp_pull (one invocation per state s', over the transposed CSR): out(s') +=
//   gamma sum_{(s,a) -> s'} W(s'|s,a) (g0(s,a) + pi(a|s) u(s)) (the occupancy pull with a
//   signed start); with WRITE_WEIGHTS also the entries' pi(a|s) W(s'|s,a) for
//   mdp_occupancy.wgsl's WEIGHTED sweeps, which then iterate the stationary adjoint.
// - mdp_vjp_products (one invocation per state s): with u = u_in, adds g to r_bar, g dQ/dP to
//   p_bar and the state's alpha and gamma terms to the scalars.
// A finite horizon runs rows, products and pull once per step t (V = V_{t+1}, u = u_t).
//
// The CSR bindings hold the forward transitions (rows s * A + a -> successor states) for rows
// and products, the transposed ones (states s' <- source rows) for pull: `csr_indptr`,
// `csr_index`, `csr_probs`. Dispatch as mdp_backup.wgsl: 64 invocations per workgroup over the
// states (x + y * dispatch_x workgroups), z = task; every array is bound whole.

// Joined after shared/constants.wgsl, shared/log_sum_exp.wgsl and shared/policy_ties.wgsl
// (`engine::gpu::mdp_engine::MDP_VJP_WGSL`).

// Optimistic (log-expectation) backup instead of the expected one.
override OPTIMISTIC: bool = false;
// alpha = 0: the one-hot policy of the first maximiser (the hard max's subgradient).
override HARD_MAX: bool = false;
// mdp_vjp_pull also writes the entries' pi(a|s) W(s'|s,a) into `weights`.
override WRITE_WEIGHTS: bool = false;

// Keep in sync with `engine::gpu::mdp_vjp::VjpParams` (sizes compared in tests/kernel_shader_layout.rs).
struct VjpParams {
    states: u32,
    actions: u32,
    entries: u32, // transitions per task (nnz)
    dispatch_x: u32,
    fixed_words_per_task: u32,
    // Where the scalars [task][state][2] start in `out` (mdp_vjp_rows, mdp_vjp_products).
    scalars_origin: u32,
    gamma: f32,
    alpha: f32,
    alpha_ln2: f32,        // alpha * ln(2)
    log2e_over_alpha: f32, // log2(e) / alpha
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: VjpParams;
@group(0) @binding(1) var<storage, read> csr_indptr: array<u32>;  // [row] or [state]
@group(0) @binding(2) var<storage, read> csr_index: array<u32>;   // [entry]: s' or s * A + a
@group(0) @binding(3) var<storage, read> csr_probs: array<f32>;   // [entry]
@group(0) @binding(4) var<storage, read> reward: array<f32>;      // [task][state][action]
@group(0) @binding(5) var<storage, read> fixed_bits: array<u32>;  // [task][state / 32]
@group(0) @binding(6) var<storage, read> v: array<f32>;           // [task][state]: V (V_{t+1})
// In: (c_Q, c_pi, -, -); after mdp_vjp_rows: (pi, tilt, g0, -). [task][state][action]
@group(0) @binding(7) var<storage, read_write> rows: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> u_in: array<f32>;        // [task][state]
// pull: u_out [task][state]; rows, products: r_bar [task][state][action], then at
// scalars_origin the (alpha, gamma) terms [task][state][2].
@group(0) @binding(9) var<storage, read_write> out: array<f32>;
// pull: pi W per transposed entry; products: p_bar per forward entry. [task][entry]
@group(0) @binding(10) var<storage, read_write> weights: array<f32>;

// One state of one task.
struct Item {
    valid: bool,
    task: u32,
    state: u32,
}

fn locate(wid: vec3<u32>, lid: u32) -> Item {
    var item: Item;
    let index = (wid.y * params.dispatch_x + wid.x) * WORKGROUP_SIZE + lid;
    item.valid = index < params.states;
    item.task = wid.z;
    item.state = index;
    return item;
}

fn is_fixed(item: Item) -> bool {
    let word = item.task * params.fixed_words_per_task + (item.state >> 5u);
    return ((fixed_bits[word] >> (item.state & 31u)) & 1u) != 0u;
}

// (Q(s, a), tilt) with tilt = Q - r: gamma E[V'] (expected) or
// gamma max V' + alpha log E[exp(gamma (V' - max V') / alpha)] (optimistic), as mdp_backup.wgsl.
fn action_value(item: Item, a: u32) -> vec2<f32> {
    let row = item.state * params.actions + a;
    let first = csr_indptr[row];
    let end = csr_indptr[row + 1u];
    let base = item.task * params.states;
    let r = reward[base * params.actions + row];
    if OPTIMISTIC {
        var top = -HUGE;
        for (var k = first; k < end; k++) {
            top = max(top, v[base + csr_index[k]]);
        }
        if top <= -HUGE {
            return vec2<f32>(v[base + csr_index[first]], -HUGE);
        }
        let scale = params.gamma * params.log2e_over_alpha;
        var mass = 0.0;
        for (var k = first; k < end; k++) {
            mass += csr_probs[k] * exp_shifted(v[base + csr_index[k]], top, scale);
        }
        let tilt = params.gamma * top + params.alpha_ln2 * log2(mass);
        return vec2<f32>(r + tilt, tilt);
    }
    var expected = 0.0;
    for (var k = first; k < end; k++) {
        expected += csr_probs[k] * v[base + csr_index[k]];
    }
    return vec2<f32>(r + params.gamma * expected, params.gamma * expected);
}

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn mdp_vjp_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let item = locate(wid, lid);
    if !item.valid {
        return;
    }
    let base = (item.task * params.states + item.state) * params.actions;
    if is_fixed(item) {
        // A state that stops passes nothing on; cotangents on its (NaN) Q and pi are ignored.
        for (var a = 0u; a < params.actions; a++) {
            rows[base + a] = vec4<f32>(0.0);
        }
        return;
    }
    // Pass 1: (c_Q, c_pi, Q, tilt) per action, and the largest Q.
    var top = -HUGE;
    for (var a = 0u; a < params.actions; a++) {
        let qt = action_value(item, a);
        let c = rows[base + a];
        rows[base + a] = vec4<f32>(c.x, c.y, qt.x, qt.y);
        top = max(top, qt.x);
    }
    // Pass 2: pi as mdp_policy writes it (its hard-max rule included), staged in .z.
    let one_hot_policy = HARD_MAX || !soft_policy_resolved(params.alpha_ln2, top);
    var total = 0.0;
    var chosen = false;
    let tie = tie_threshold(top);
    for (var a = 0u; a < params.actions; a++) {
        let r4 = rows[base + a];
        var weight = 0.0;
        if one_hot_policy {
            weight = one_hot(r4.z, tie, &chosen);
        } else if r4.z > -HUGE {
            weight = exp_shifted(r4.z, top, params.log2e_over_alpha);
        }
        total += weight;
        rows[base + a] = vec4<f32>(r4.x, r4.y, weight, r4.w);
    }
    // Pass 3: mean c_pi and mean log pi under pi.
    var mean_c = 0.0;
    var mean_log = 0.0;
    for (var a = 0u; a < params.actions; a++) {
        let r4 = rows[base + a];
        let pi = r4.z / total;
        if pi > 0.0 {
            mean_c += pi * r4.y;
            mean_log += pi * log(pi);
        }
    }
    // Pass 4: (pi, tilt, g0); pi's cotangent through the softmax and its alpha term.
    var d_alpha = 0.0;
    for (var a = 0u; a < params.actions; a++) {
        let r4 = rows[base + a];
        let pi = r4.z / total;
        let r = reward[base + a];
        var g0 = r4.x;
        if !one_hot_policy && pi > 0.0 {
            g0 += pi * (r4.y - mean_c) / params.alpha;
            d_alpha += r4.y * pi * (mean_log - log(pi)) / params.alpha;
        }
        if !(r > -HUGE) {
            // An excluded action (r = -inf) has no gradient.
            g0 = 0.0;
        }
        rows[base + a] = vec4<f32>(pi, r4.w, g0, 0.0);
    }
    let slot = params.scalars_origin + 2u * (item.task * params.states + item.state);
    out[slot] += d_alpha;
}

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn mdp_vjp_pull(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let item = locate(wid, lid);
    if !item.valid {
        return;
    }
    let here = item.task * params.states + item.state;
    let v_here = v[here];
    let row_base = item.task * params.states * params.actions;
    let w_base = item.task * params.entries;
    var inflow = 0.0;
    for (var k = csr_indptr[item.state]; k < csr_indptr[item.state + 1u]; k++) {
        let row = csr_index[k];
        let r4 = rows[row_base + row];
        var w = 0.0;
        // An excluded successor (V = -inf) takes nothing.
        if v_here > -HUGE {
            w = csr_probs[k];
            if OPTIMISTIC {
                w *= exp2((params.gamma * v_here - r4.y) * params.log2e_over_alpha);
            }
        }
        inflow += w * (r4.z + r4.x * u_in[item.task * params.states + row / params.actions]);
        if WRITE_WEIGHTS {
            weights[w_base + k] = r4.x * w;
        }
    }
    out[here] += params.gamma * inflow;
}

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn mdp_vjp_products(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let item = locate(wid, lid);
    if !item.valid {
        return;
    }
    let here = item.task * params.states + item.state;
    let u = u_in[here];
    let base = here * params.actions;
    let v_base = item.task * params.states;
    let p_base = item.task * params.entries;
    var d_alpha = 0.0;
    var d_gamma = 0.0;
    for (var a = 0u; a < params.actions; a++) {
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
        let row = item.state * params.actions + a;
        let tilt = r4.y;
        var w_v = 0.0;
        for (var k = csr_indptr[row]; k < csr_indptr[row + 1u]; k++) {
            let vj = v[v_base + csr_index[k]];
            if !(vj > -HUGE) {
                continue;
            }
            let p = csr_probs[k];
            var w = p;
            var d_p = params.gamma * vj;
            if OPTIMISTIC {
                let e = exp2((params.gamma * vj - tilt) * params.log2e_over_alpha);
                w = p * e;
                d_p = params.alpha * e;
            }
            w_v += w * vj;
            weights[p_base + k] += g * d_p;
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
