// Soft Bellman backups over a batch of tasks that share the dynamics of a general tabular
// MDP. CPU twin: src/engine/cpu/mdp_backup.rs (`mdp_backup`, `mdp_policy`, `mdp_action_values`,
// `soft_max`). The rate-extrapolation jump between sweeps is shaders/extrapolate.wgsl.
//
// Q(s, a) comes from `action_value`, joined after this file: from CSR rows
// (shaders/mdp_rows_csr.wgsl), or from the dense product of shaders/mdp_dense.wgsl
// (shaders/mdp_rows_dense.wgsl). One invocation backs up one state of one task: it takes the
// state's A action values and folds each Q(s, a) into a running log-sum-exp, so any number of
// actions fits.
//
// Dispatch: 64 invocations per workgroup over the band's states (x + y * dispatch_x
// workgroups), z = task within the band. A band is a window of whole tasks, or of states of one
// task, chosen so that every binding stays under the adapter's storage-binding limit; the
// *_origin fields locate each window in its full array.

// Joined after shared/constants.wgsl, shared/residual_stats.wgsl, shared/log_sum_exp.wgsl and
// shared/policy_ties.wgsl (`engine::gpu::mdp_engine::MDP_BACKUP_WGSL`,
// `MDP_DENSE_BACKUP_WGSL`).

// Optimistic (log-expectation) backup instead of the expected one.
override OPTIMISTIC: bool = false;
// alpha = 0: V = max_a Q and a one-hot policy.
override HARD_MAX: bool = false;
// Whether this sweep writes per-workgroup residual statistics into `partials`.
override WRITE_RESIDUAL: bool = false;
// mdp_policy writes the soft Q-values themselves instead of pi.
override WRITE_Q: bool = false;
// Whether a task may stop iterating (an infinite horizon): `frozen` is read only then.
override FREEZE: bool = false;

// Keep in sync with `engine::gpu::mdp_engine::MdpParams` (sizes compared in tests/kernel_shader_layout.rs).
struct MdpParams {
    states: u32,
    actions: u32,
    // First task ([task] index within the chunk) and first state of this band.
    task_base: u32,
    state_base: u32,
    state_count: u32,
    // Workgroups along x of this band's dispatch.
    dispatch_x: u32,
    // `partials` slot of this band's first workgroup within a task, and slots per task.
    group_base: u32,
    groups_per_task: u32,
    fixed_words_per_task: u32,
    // Where each binding's window starts in its full array, in that array's elements.
    indptr_origin: u32, // CSR: indptr [row]
    entry_origin: u32,  // CSR: successors, probs [entry]; dense: dense [row][s'] flat
    row_origin: u32,    // reward, out [task][state][action]
    fixed_origin: u32,  // fixed_bits [task][word]
    v_in_origin: u32,   // v_in [task][state]
    out_origin: u32,    // v_out [task][state]
    gamma: f32,
    alpha_ln2: f32,        // alpha * ln(2)
    log2e_over_alpha: f32, // log2(e) / alpha
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: MdpParams;
// Bindings 1-3 hold the transitions: CSR in shaders/mdp_rows_csr.wgsl, the dense product in
// shaders/mdp_rows_dense.wgsl, each with its `action_value`.
@group(0) @binding(4) var<storage, read> reward: array<f32>;          // [task][state][action]
@group(0) @binding(5) var<storage, read> fixed_bits: array<u32>;      // [task][state / 32]
@group(0) @binding(6) var<storage, read> v_in: array<f32>;            // [task][state]
@group(0) @binding(7) var<storage, read_write> v_out: array<f32>;     // [task][state]
@group(0) @binding(8) var<storage, read_write> partials: array<vec4<f32>>; // [task][group]
// mdp_policy: pi (Q with WRITE_Q) [task][state][action].
@group(0) @binding(9) var<storage, read_write> out: array<f32>;
// mdp_backup: NOT_FROZEN, or the task stopped iterating and is copied (shared/residual_stats.wgsl).
@group(0) @binding(10) var<storage, read> frozen: array<u32>;     // [task]
// Modified policy iteration (`improve`, `evaluate`; 16-byte stand-ins for the other entry
// points): h(s) = V'(s) - sum_a pi(a|s) Q(s,a) of the last improvement (its policy is in
// `out`), laid out and windowed as v_out; below -HUGE where V' is -inf (the state stays there).
@group(0) @binding(11) var<storage, read_write> h: array<f32>;    // [task][state]
// Per task of the chunk: [0] the offset c its values are held relative to (V = v + c) before
// this sweep, [1] c after it (written by the invocation of state 0, copied to [0] by the host
// between sweeps), [2] 1 where the task re-centres (no fixed state: its backup maps V + k to
// T V + gamma k), else 0. `engine::gpu::mdp_engine::MdpEngine::iterate_mpi` explains why.
@group(0) @binding(12) var<storage, read_write> offset: array<f32>; // [3][task]

// One state of one task of the band.
struct Item {
    valid: bool,
    task: u32,
    state: u32,
    fixed: bool,
}

fn locate(wid: vec3<u32>, lid: u32) -> Item {
    var item: Item;
    let index = (wid.y * params.dispatch_x + wid.x) * WORKGROUP_SIZE + lid;
    item.valid = index < params.state_count;
    if !item.valid {
        return item;
    }
    item.task = params.task_base + wid.z;
    item.state = params.state_base + index;
    let word = item.task * params.fixed_words_per_task + (item.state >> 5u) - params.fixed_origin;
    item.fixed = ((fixed_bits[word] >> (item.state & 31u)) & 1u) != 0u;
    return item;
}

// Running soft max over the actions (`lse_push`), or the running max when alpha = 0; starts at
// the first action's (Q, 1), so that a state whose every Q is -inf gets -inf.
fn fold(acc: vec2<f32>, q: f32) -> vec2<f32> {
    if HARD_MAX {
        return vec2<f32>(max(acc.x, q), 1.0);
    }
    return lse_push(acc, q, params.log2e_over_alpha);
}

// V = alpha * log sum_a exp(Q / alpha) from the fold, or max_a Q when alpha = 0.
fn finish(acc: vec2<f32>) -> f32 {
    if HARD_MAX || acc.x < -HUGE {
        return acc.x;
    }
    return lse_value(acc, params.alpha_ln2);
}

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn mdp_backup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var stats = NO_STATS;
    let item = locate(wid, lid);
    if item.valid && !item.fixed && FREEZE && frozen[item.task] != NOT_FROZEN {
        let here = item.task * params.states + item.state;
        v_out[here - params.out_origin] = v_in[here - params.v_in_origin];
    } else if item.valid && !item.fixed {
        var acc = vec2<f32>(action_value(item, 0u), 1.0);
        for (var a = 1u; a < params.actions; a++) {
            acc = fold(acc, action_value(item, a));
        }
        let updated = finish(acc);
        let old = v_in[item.task * params.states + item.state - params.v_in_origin];
        v_out[item.task * params.states + item.state - params.out_origin] = updated;
        // A state whose every action may step into an excluded one stays at -inf for good
        // (a NaN still counts: element_stats reports it).
        if !(updated < -HUGE) {
            stats = element_stats(updated - old, updated);
        }
    }
    if WRITE_RESIDUAL {
        let total = workgroup_stats(lid, stats);
        let p = params;
        let slot = partial_slot(wid, lid, p.dispatch_x, p.state_count, p.task_base, p.group_base, p.groups_per_task);
        if slot != NO_SLOT {
            partials[slot] = total;
        }
    }
}

// pi(a|s) = exp((Q(s,a) - V(s)) / alpha) from the next values in v_in, written to `out`
// (normalised over the row); for alpha = 0, or alpha below f32's resolution of Q
// (`soft_policy_resolved`), one-hot on the first maximising action; with WRITE_Q, Q(s, a)
// itself. Q is staged in `out` between the passes. Same dispatch as mdp_backup. Fixed states get a row of zeros where the CPU twin
// (`engine::cpu::mdp_policy`) has NaN: mdp_occupancy.wgsl gathers pi * P over every entry
// without a per-entry stop check, so a stopping state must pass nothing on (the CPU twin of
// the occupancy checks `fixed` instead), and WGSL has no portable NaN to write (an
// implementation may assume none occurs). The engine writes NaN over those rows after every
// policy readback, so its policies equal the CPU's there (tests/kernel_mdp_gpu.rs compares
// where the NaNs are).
@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn mdp_policy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let item = locate(wid, lid);
    if !item.valid {
        return;
    }
    let base = (item.task * params.states + item.state) * params.actions - params.row_origin;
    if item.fixed {
        for (var a = 0u; a < params.actions; a++) {
            out[base + a] = 0.0;
        }
        return;
    }
    var acc = vec2<f32>(action_value(item, 0u), 1.0);
    out[base] = acc.x;
    for (var a = 1u; a < params.actions; a++) {
        let q = action_value(item, a);
        out[base + a] = q;
        acc = fold(acc, q);
    }
    if WRITE_Q {
        return;
    }
    // acc.x is the largest Q.
    if HARD_MAX || !soft_policy_resolved(params.alpha_ln2, acc.x) {
        let tie = tie_threshold(acc.x);
        var chosen = false;
        for (var a = 0u; a < params.actions; a++) {
            out[base + a] = one_hot(out[base + a], tie, &chosen);
        }
    } else {
        // exp((Q - max Q) / alpha) normalised: the same as exp((Q - V) / alpha), but the row
        // sums to 1 within f32 rounding whatever the rounding of V.
        var total = 0.0;
        for (var a = 0u; a < params.actions; a++) {
            let weight = exp_shifted(out[base + a], acc.x, params.log2e_over_alpha);
            out[base + a] = weight;
            total += weight;
        }
        for (var a = 0u; a < params.actions; a++) {
            out[base + a] = out[base + a] / total;
        }
    }
}

// How an MPI sweep of `item`'s task moves its values: the input is re-centred on its state 0
// (k = v_in(task, 0) moves into c), so the sweep computes T (v_in - k) = T v_in - gamma k
// against V = v_in + c; returns (k, c + k). 0 and c for a task that does not re-centre.
fn recentring(item: Item) -> vec2<f32> {
    let tasks = arrayLength(&offset) / 3u;
    let c = offset[item.task];
    if offset[2u * tasks + item.task] == 0.0 {
        return vec2<f32>(0.0, c);
    }
    let k = v_in[item.task * params.states - params.v_in_origin];
    return vec2<f32>(k, c + k);
}

// The offset after an MPI sweep: gamma (c + k), or c unchanged for a stopped task; written
// once per task, by the invocation of its state 0.
fn write_offset(item: Item, after: f32) {
    if item.state == 0u {
        offset[arrayLength(&offset) / 3u + item.task] = after;
    }
}

// Modified policy iteration's improvement (`Method::Mpi`): mdp_backup's backup of the
// re-centred input (`recentring`), keeping its policy for the evaluation sweeps: pi(a|s) =
// exp((Q(s,a) - V'(s)) / alpha) in `out` (one-hot on the first largest Q at alpha = 0) and
// h = V' - sum_a pi Q in `h`. Q is staged in `out` as in mdp_policy. Residual statistics of V
// itself: dV = (v_out + gamma (c + k)) - (v_in + c), the bound's V being v_out + gamma (c + k). CPU twin:
// `engine::cpu::policy_evaluation::improve`.
@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn improve(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var stats = NO_STATS;
    let item = locate(wid, lid);
    let here = item.task * params.states + item.state;
    if item.valid && FREEZE && frozen[item.task] != NOT_FROZEN {
        if !item.fixed {
            v_out[here - params.out_origin] = v_in[here - params.v_in_origin];
        }
        write_offset(item, offset[item.task]);
    } else if item.valid {
        let moved = recentring(item);
        write_offset(item, params.gamma * moved.y);
    }
    if item.valid && !item.fixed && !(FREEZE && frozen[item.task] != NOT_FROZEN) {
        let moved = recentring(item);
        let base = here * params.actions - params.row_origin;
        var acc = vec2<f32>(action_value(item, 0u), 1.0);
        out[base] = acc.x;
        for (var a = 1u; a < params.actions; a++) {
            let q = action_value(item, a);
            out[base + a] = q;
            acc = fold(acc, q);
        }
        let updated = finish(acc);
        v_out[here - params.out_origin] = updated - params.gamma * moved.x;
        if updated < -HUGE {
            // Every action may step into an excluded state: -inf for good, no policy.
            h[here - params.out_origin] = updated;
            for (var a = 0u; a < params.actions; a++) {
                out[base + a] = 0.0;
            }
        } else {
            // V' - V = (T v_in - gamma k + gamma (c + k)) - (v_in + c).
            let old = v_in[here - params.v_in_origin];
            let delta = (updated - old) - (1.0 - params.gamma) * (moved.y - moved.x);
            stats = element_stats(delta, updated - params.gamma * moved.x);
            var expected = 0.0;
            var chosen = false;
            for (var a = 0u; a < params.actions; a++) {
                let q = out[base + a];
                var p = 0.0;
                if HARD_MAX {
                    // V' is the largest Q itself: its first action.
                    p = select(0.0, 1.0, !chosen && q == updated);
                    chosen = chosen || p > 0.0;
                } else if q > -HUGE {
                    p = exp_shifted(q, updated, params.log2e_over_alpha);
                }
                out[base + a] = p;
                if p > 0.0 {
                    expected += p * q;
                }
            }
            h[here - params.out_origin] = updated - expected;
        }
    }
    if WRITE_RESIDUAL {
        let total = workgroup_stats(lid, stats);
        let p = params;
        let slot = partial_slot(wid, lid, p.dispatch_x, p.state_count, p.task_base, p.group_base, p.groups_per_task);
        if slot != NO_SLOT {
            partials[slot] = total;
        }
    }
}

// One policy-evaluation sweep of modified policy iteration under the last improvement's
// policy (`out`, `h`), of the re-centred input (`recentring`): v_out = T_pi v_in - gamma k =
// h + sum_a pi(a|s) Q_{v_in}(s,a) - gamma k, no exp or log; Q only for the actions pi takes
// (one per state at alpha = 0). Tasks that stopped (FREEZE) and states at -inf are copied,
// fixed states left alone; no statistics (convergence is tested on improvements only). CPU
// twin: `engine::cpu::policy_evaluation::evaluate`.
@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn evaluate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let item = locate(wid, lid);
    if !item.valid {
        return;
    }
    let here = item.task * params.states + item.state;
    if FREEZE && frozen[item.task] != NOT_FROZEN {
        if !item.fixed {
            v_out[here - params.out_origin] = v_in[here - params.v_in_origin];
        }
        write_offset(item, offset[item.task]);
        return;
    }
    let moved = recentring(item);
    write_offset(item, params.gamma * moved.y);
    if item.fixed {
        return;
    }
    let remainder = h[here - params.out_origin];
    if remainder < -HUGE {
        v_out[here - params.out_origin] = v_in[here - params.v_in_origin];
        return;
    }
    let base = here * params.actions - params.row_origin;
    var total = remainder;
    if HARD_MAX {
        // One-hot: the chosen action found first, so that every invocation computes one Q
        // (skipping the others per action would run each action's row for the whole SIMD
        // group wherever any lane chose it).
        var chosen = 0u;
        for (var a = 0u; a < params.actions; a++) {
            if out[base + a] > 0.0 {
                chosen = a;
            }
        }
        total += action_value(item, chosen);
    } else {
        for (var a = 0u; a < params.actions; a++) {
            let p = out[base + a];
            if p > 0.0 {
                total += p * action_value(item, a);
            }
        }
    }
    v_out[here - params.out_origin] = total - params.gamma * moved.x;
}
