// The dense product of a general MDP's backup: for B tasks sharing P stored dense as the
// [S*A, S] matrix `dense` ([s * A + a][s']), product = P X, the [S*A, S] x [S, B] matrix
// product, laid out [task][s * A + a]. X is V for the expected backup and
// exp(gamma (V - M) / alpha) for the optimistic one, with M the task's largest finite value
// (`mdp_dense_shift`): one exponential per successor state, shared by every row, as the native
// engine shares it. shaders/mdp_rows_dense.wgsl then finishes each state's backup, policy and
// Q (shaders/mdp_backup.wgsl) from the product. CPU twin: the native engine's dense sweep
// (src/engine/native/mdp_backup.rs: `dense_dot` over `[S*A, S]`, `shared_exp`).
//
// mdp_dense_product tiles the product: a workgroup takes WORKGROUP_SIZE rows and TASK_TILE
// tasks and walks the columns K_TILE at a time, staging that slab of P (read once per task
// tile, not once per task) and of X in workgroup memory; each invocation keeps one row's
// TASK_TILE sums. A band is a window of rows (whole states) and tasks whose bindings fit the
// adapter's storage-binding limit; dispatch: x + y * dispatch_x row groups, z = task tile.
//
// Joined after shared/constants.wgsl and shared/residual_stats.wgsl
// (`engine::gpu::mdp_engine::MDP_DENSE_WGSL`).

// Tasks per workgroup of mdp_dense_product (at most MAX_TASK_TILE): the batch's, up to 8.
override TASK_TILE: u32 = 8u;
// Whether a task may stop iterating: a tile whose tasks have all stopped does nothing.
override FREEZE: bool = false;

// Columns per staged slab, and the row stride of the staged P (one more, so that the
// invocations' reads of one column fall in different banks).
const K_TILE: u32 = 32u;
const P_STRIDE: u32 = 33u;
const MAX_TASK_TILE: u32 = 8u;

// Keep in sync with `engine::gpu::mdp_engine::DenseParams` (size compared in
// tests/kernel_shader_layout.rs).
struct DenseParams {
    states: u32,
    actions: u32,
    // First task ([task] index within the chunk) and tasks of this band.
    task_base: u32,
    task_count: u32,
    // First row (s * A + a) and rows of this band.
    row_base: u32,
    row_count: u32,
    // Workgroups along x of this band's dispatch.
    dispatch_x: u32,
    // Where each binding's window starts in its full array, in that array's elements.
    dense_origin: u32,   // dense [row][s'] flat
    x_origin: u32,       // v_in, x, x_out [task][state]
    product_origin: u32, // product [task][row]
    // gamma * log2(e) / alpha (mdp_dense_shift).
    scale: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> params: DenseParams;
@group(0) @binding(1) var<storage, read> dense: array<f32>;           // [s * A + a][s']
// X: V, or the optimistic backup's shared exponentials.
@group(0) @binding(2) var<storage, read> x: array<f32>;               // [task][state]
@group(0) @binding(3) var<storage, read_write> product: array<f32>;   // [task][s * A + a]
@group(0) @binding(4) var<storage, read> frozen: array<u32>;          // [task]
// mdp_dense_shift: V in, X and M out.
@group(0) @binding(5) var<storage, read> v_in: array<f32>;            // [task][state]
@group(0) @binding(6) var<storage, read_write> x_out: array<f32>;     // [task][state]
@group(0) @binding(7) var<storage, read_write> shift: array<f32>;     // [task]

var<workgroup> p_tile: array<f32, 2112>; // WORKGROUP_SIZE * P_STRIDE: [row][column]
var<workgroup> x_tile: array<f32, 256>;  // MAX_TASK_TILE * K_TILE: [task][column]
var<workgroup> live: u32;
var<workgroup> top_of: array<f32, WORKGROUP_SIZE>;

// Whether the workgroup's tasks [first, first + count) have work (the same in every
// invocation).
fn tile_live(lid: u32, first: u32, count: u32) -> bool {
    if !FREEZE {
        return true;
    }
    if lid == 0u {
        var any = 0u;
        for (var t = 0u; t < count; t++) {
            if frozen[first + t] == NOT_FROZEN {
                any = 1u;
            }
        }
        live = any;
    }
    return workgroupUniformLoad(&live) != 0u;
}

// One task per workgroup (z = task within the band): M = the largest finite V (0 if none),
// X = exp(gamma (V - M) / alpha), 0 where V is -inf.
@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn mdp_dense_shift(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let task = params.task_base + wid.z;
    if !tile_live(lid, task, 1u) {
        return;
    }
    let base = task * params.states - params.x_origin;
    var top = -HUGE;
    for (var s = lid; s < params.states; s += WORKGROUP_SIZE) {
        let v = v_in[base + s];
        if v > -HUGE && v < HUGE {
            top = max(top, v);
        }
    }
    top_of[lid] = top;
    for (var half = WORKGROUP_SIZE / 2u; half > 0u; half /= 2u) {
        workgroupBarrier();
        if lid < half {
            top_of[lid] = max(top_of[lid], top_of[lid + half]);
        }
    }
    workgroupBarrier();
    var m = top_of[0];
    if m <= -HUGE {
        m = 0.0;
    }
    if lid == 0u {
        shift[task] = m;
    }
    for (var s = lid; s < params.states; s += WORKGROUP_SIZE) {
        let v = v_in[base + s];
        x_out[base + s] = select(exp2((v - m) * params.scale), 0.0, v < -HUGE);
    }
}

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn mdp_dense_product(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row0 = (wid.y * params.dispatch_x + wid.x) * WORKGROUP_SIZE;
    let tile = params.task_base + wid.z * TASK_TILE;
    let tasks = min(TASK_TILE, params.task_base + params.task_count - tile);
    if !tile_live(lid, tile, tasks) {
        return;
    }
    var sums: array<f32, MAX_TASK_TILE>;
    for (var k0 = 0u; k0 < params.states; k0 += K_TILE) {
        // Consecutive invocations read consecutive columns of a row.
        for (var e = lid; e < WORKGROUP_SIZE * K_TILE; e += WORKGROUP_SIZE) {
            let r = e / K_TILE;
            let k = e % K_TILE;
            var p = 0.0;
            if row0 + r < params.row_count && k0 + k < params.states {
                p = dense[(params.row_base + row0 + r) * params.states + k0 + k - params.dense_origin];
            }
            p_tile[r * P_STRIDE + k] = p;
        }
        for (var e = lid; e < TASK_TILE * K_TILE; e += WORKGROUP_SIZE) {
            let t = e / K_TILE;
            let k = e % K_TILE;
            var v = 0.0;
            if t < tasks && k0 + k < params.states {
                v = x[(tile + t) * params.states + k0 + k - params.x_origin];
            }
            x_tile[t * K_TILE + k] = v;
        }
        workgroupBarrier();
        for (var k = 0u; k < K_TILE; k++) {
            let p = p_tile[lid * P_STRIDE + k];
            for (var t = 0u; t < TASK_TILE; t++) {
                sums[t] = fma(p, x_tile[t * K_TILE + k], sums[t]);
            }
        }
        workgroupBarrier();
    }
    let row = row0 + lid;
    if row >= params.row_count {
        return;
    }
    let rows_per_task = params.states * params.actions;
    for (var t = 0u; t < tasks; t++) {
        product[(tile + t) * rows_per_task + params.row_base + row - params.product_origin] = sums[t];
    }
}
