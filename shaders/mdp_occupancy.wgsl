// Forward messages of a general tabular MDP: the state occupancy under a policy, pulled over
// the transitions into each state (WGSL has no float atomics, so no scatter).
// CPU twin: src/engine/cpu/mdp_occupancy.rs `mdp_occupancy`.
//
// d_out(s') = base(s') + gamma * sum over (s, a) -> s' of d_in(s) pi(a|s) P(s'|s,a), where
// states that stop (terminal, or excluded with gamma = 1) pass nothing on: mdp_policy writes
// their policy rows as zeros, so no per-entry check is needed; base is the start
// distribution for the discounted occupancy's fixed point and absent for one finite-horizon step.
// `incoming` row s' lists the CSR rows s * A + a that may step into s' (ascending) and
// `incoming_probs` their probabilities.
//
// Dispatch as mdp_backup.wgsl: 64 invocations per workgroup over the band's states, z = task.

// Joined after shared/constants.wgsl and shared/residual_stats.wgsl
// (`engine::gpu::mdp_engine::MDP_OCCUPANCY_WGSL`).

// Whether d_out adds the start distribution (the discounted sum's iteration).
override ADD_START: bool = false;
// Actions A: a constant, so that the source state row / A of an entry is a multiply and a shift.
override ACTIONS: u32 = 8u;
// Whether this sweep writes per-workgroup residual statistics into `partials`.
override WRITE_RESIDUAL: bool = false;
// Whether the entries' pi(a|s) P(s'|s,a) were folded into `weights` by mdp_occupancy_weights
// (the discounted sum: its policy is fixed, so each sweep gathers only d_in).
override WEIGHTED: bool = false;

// Keep in sync with `engine::gpu::mdp_engine::OccupancyParams` (sizes compared in tests/kernel_shader_layout.rs).
struct OccupancyParams {
    states: u32,
    actions: u32,
    task_base: u32,
    state_base: u32,
    state_count: u32,
    dispatch_x: u32,
    group_base: u32,
    groups_per_task: u32,
    entries: u32, // transitions per task (nnz)
    // Where each binding's window starts in its full array, in that array's elements.
    indptr_origin: u32, // incoming_indptr [state]
    entry_origin: u32,  // incoming, incoming_probs [entry]
    policy_origin: u32, // policy [task][state][action]
    d_in_origin: u32,   // d_in [task][state]
    out_origin: u32,    // d_out, start [task][state]
    gamma: f32,
    weight_origin: u32, // weights [task][entry]
}

@group(0) @binding(0) var<uniform> params: OccupancyParams;
@group(0) @binding(1) var<storage, read> incoming_indptr: array<u32>;  // [state]
@group(0) @binding(2) var<storage, read> incoming: array<u32>;         // [entry] = s * A + a
@group(0) @binding(3) var<storage, read> incoming_probs: array<f32>;   // [entry]
@group(0) @binding(4) var<storage, read> policy: array<f32>;           // [task][state][action]
@group(0) @binding(5) var<storage, read> d_in: array<f32>;             // [task][state]
@group(0) @binding(6) var<storage, read_write> d_out: array<f32>;      // [task][state]
@group(0) @binding(7) var<storage, read_write> partials: array<vec4<f32>>; // [task][group]
@group(0) @binding(8) var<storage, read> start: array<f32>;            // [task][state]
@group(0) @binding(9) var<storage, read_write> weights: array<f32>;    // [task][entry]
// mdp_occupancy: NOT_FROZEN, or the task stopped iterating and is copied (shared/residual_stats.wgsl).
@group(0) @binding(10) var<storage, read> frozen: array<u32>;          // [task]

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn mdp_occupancy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var stats = NO_STATS;
    let index = (wid.y * params.dispatch_x + wid.x) * WORKGROUP_SIZE + lid;
    if index < params.state_count {
        let task = params.task_base + wid.z;
        let target_state = params.state_base + index;
        let here = task * params.states + target_state;
        // Only the discounted sum (ADD_START) iterates to a tolerance and freezes tasks.
        if ADD_START && frozen[task] != NOT_FROZEN {
            d_out[here - params.out_origin] = d_in[here - params.d_in_origin];
        } else {
            stats = occupancy_update(task, target_state);
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

// d_out of `target_state` of `task`; returns its element statistics.
fn occupancy_update(task: u32, target_state: u32) -> vec4<f32> {
    let first = incoming_indptr[target_state - params.indptr_origin] - params.entry_origin;
    let end = incoming_indptr[target_state + 1u - params.indptr_origin] - params.entry_origin;
    let d_base = task * params.states - params.d_in_origin;
    var inflow = 0.0;
    if WEIGHTED {
        let w_base = task * params.entries + params.entry_origin - params.weight_origin;
        for (var k = first; k < end; k++) {
            inflow += d_in[d_base + incoming[k] / ACTIONS] * weights[w_base + k];
        }
    } else {
        let pi_base = task * params.states * ACTIONS - params.policy_origin;
        for (var k = first; k < end; k++) {
            let row = incoming[k];
            inflow += d_in[d_base + row / ACTIONS] * policy[pi_base + row] * incoming_probs[k];
        }
    }
    let here = task * params.states + target_state;
    var updated = params.gamma * inflow;
    if ADD_START {
        updated += start[here - params.out_origin];
    }
    d_out[here - params.out_origin] = updated;
    return element_stats(updated - d_in[here - params.d_in_origin], updated);
}

// weights[task][k] = pi(a|s) P(s'|s,a) for the entries k into each state s' of the band, from
// the same policy every sweep of the discounted sum then reads. Same dispatch as
// mdp_occupancy.
@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn mdp_occupancy_weights(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let index = (wid.y * params.dispatch_x + wid.x) * WORKGROUP_SIZE + lid;
    if index >= params.state_count {
        return;
    }
    let task = params.task_base + wid.z;
    let target_state = params.state_base + index;
    let first = incoming_indptr[target_state - params.indptr_origin] - params.entry_origin;
    let end = incoming_indptr[target_state + 1u - params.indptr_origin] - params.entry_origin;
    let pi_base = task * params.states * ACTIONS - params.policy_origin;
    let w_base = task * params.entries + params.entry_origin - params.weight_origin;
    for (var k = first; k < end; k++) {
        weights[w_base + k] = policy[pi_base + incoming[k]] * incoming_probs[k];
    }
}
