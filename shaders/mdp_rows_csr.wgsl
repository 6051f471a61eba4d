// The CSR transitions of `shaders/mdp_backup.wgsl` (joined after it in
// `engine::gpu::mdp_engine::MDP_BACKUP_WGSL`): bindings 1-3 and `action_value`.
//
// Transitions are CSR over rows s * A + a: `indptr[row] .. indptr[row + 1]` index `successors`
// and `probs`.

@group(0) @binding(1) var<storage, read> indptr: array<u32>;          // [row]
@group(0) @binding(2) var<storage, read> successors: array<u32>;      // [entry]
@group(0) @binding(3) var<storage, read> probs: array<f32>;           // [entry]

// Q(s, a) from the next values: r + gamma * E[V'] (expected), or
// r + gamma * max V' + alpha * log E[exp(gamma (V' - max V') / alpha)] (optimistic).
fn action_value(item: Item, a: u32) -> f32 {
    let row = item.state * params.actions + a;
    let first = indptr[row - params.indptr_origin] - params.entry_origin;
    let end = indptr[row + 1u - params.indptr_origin] - params.entry_origin;
    let base = item.task * params.states - params.v_in_origin;
    let r = reward[(item.task * params.states + item.state) * params.actions + a - params.row_origin];
    if OPTIMISTIC {
        var top = -HUGE;
        for (var k = first; k < end; k++) {
            top = max(top, v_in[base + successors[k]]);
        }
        if top <= -HUGE {
            // Every successor is excluded (value -inf).
            return v_in[base + successors[first]];
        }
        let scale = params.gamma * params.log2e_over_alpha;
        var mass = 0.0;
        for (var k = first; k < end; k++) {
            mass += probs[k] * exp_shifted(v_in[base + successors[k]], top, scale);
        }
        return r + params.gamma * top + params.alpha_ln2 * log2(mass);
    }
    var expected = 0.0;
    for (var k = first; k < end; k++) {
        expected += probs[k] * v_in[base + successors[k]];
    }
    return r + params.gamma * expected;
}
