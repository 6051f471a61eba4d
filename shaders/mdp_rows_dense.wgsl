// The dense transitions of `shaders/mdp_backup.wgsl` (joined after it in
// `engine::gpu::mdp_engine::MDP_DENSE_BACKUP_WGSL`): bindings 1-3 and `action_value`, which
// reads sum_s' P(s'|s,a) X(s') from the product `shaders/mdp_dense.wgsl` wrote from the same
// values (X = V for the expected backup, exp(gamma (V - M) / alpha) with M the task's
// `shift` for the optimistic one). CPU twin of the shared shift: the native engine's
// `NativeMdp` (src/engine/native/mdp_backup.rs).

// The optimistic backup's mass below which a row is recomputed with its own largest
// successor: every term that underflowed is below 1.2e-38, so a mass of at least SUM_LOW moves
// by under 1e-18 relatively. Same as `engine::gpu::mdp_engine::DENSE_SUM_LOW` (and the native
// engine's SUM_LOW).
const SUM_LOW: f32 = 1e-20;

// sum_s' P(s'|s,a) X(s'), laid out as `reward` (window origin `row_origin`).
@group(0) @binding(1) var<storage, read> product: array<f32>;   // [task][state][action]
// M per task of the optimistic backup (the whole array).
@group(0) @binding(2) var<storage, read> shift: array<f32>;     // [task]
// P(s'|s,a) of the band's rows (S rounded up to a multiple of 4 entries each), read by the
// optimistic backup's recomputed rows only.
@group(0) @binding(3) var<storage, read> dense: array<f32>;     // [s * A + a][column]

// Q(s, a) from the product: r + gamma * (P V)(s, a) (expected), or
// r + gamma * M + alpha * log (P X)(s, a) (optimistic), recomputed from the row of P with the
// row's own largest successor where the mass underflows.
fn action_value(item: Item, a: u32) -> f32 {
    let at = (item.task * params.states + item.state) * params.actions + a - params.row_origin;
    let r = reward[at];
    let x = product[at];
    if !OPTIMISTIC {
        return r + params.gamma * x;
    }
    if x >= SUM_LOW {
        return r + params.gamma * shift[item.task] + params.alpha_ln2 * log2(x);
    }
    // The reference's form over the row's nonzero entries (shaders/mdp_rows_csr.wgsl).
    let columns = (params.states + 3u) / 4u * 4u;
    let first = (item.state * params.actions + a) * columns - params.entry_origin;
    let base = item.task * params.states - params.v_in_origin;
    var top = -HUGE;
    for (var k = 0u; k < params.states; k++) {
        if dense[first + k] > 0.0 {
            top = max(top, v_in[base + k]);
        }
    }
    if top <= -HUGE {
        // Every successor is excluded (the engine runs dense only where no state is).
        return top;
    }
    let scale = params.gamma * params.log2e_over_alpha;
    var mass = 0.0;
    for (var k = 0u; k < params.states; k++) {
        let p = dense[first + k];
        if p > 0.0 {
            mass += p * exp_shifted(v_in[base + k], top, scale);
        }
    }
    return r + params.gamma * top + params.alpha_ln2 * log2(mass);
}
