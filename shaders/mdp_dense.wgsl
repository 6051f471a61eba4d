// The dense product of a general MDP's backup: for B tasks sharing P stored dense as the
// [S*A, S] matrix `dense` (rows `s * A + a` of COLUMNS = S rounded up to a multiple of 4
// entries, zero past S), product = P X, the [S*A, S] x [S, B] matrix product, laid out
// [task][s * A + a]. X is V for the expected backup and exp(gamma (V - M) / alpha) for the
// optimistic one, with M the task's largest finite value: one exponential per successor state,
// shared by every row, as the native engine shares it. `mdp_dense_shift` writes X (padded to
// COLUMNS with zeros); shaders/mdp_rows_dense.wgsl then finishes each state's backup, policy
// and Q (shaders/mdp_backup.wgsl) from the product. CPU twin: the native engine's dense sweep
// (src/engine/native/mdp_backup.rs: `dense_dot` over `[S*A, S]`, `shared_exp`).
//
// mdp_dense_product: an invocation takes one row and TASK_TILE tasks, and walks the row four
// entries at a time (vec4 loads), each entry of P read once for the whole tile of tasks and
// multiplied into TASK_TILE running sums. X is read by every invocation at the same address
// (a broadcast). Measured on llvmpipe, this runs 9x faster than staging slabs of P and X in
// workgroup memory (two barriers per slab), see docs/performance.md. A band is a window of
// rows (whole states) and tasks whose bindings fit the adapter's storage-binding limit;
// dispatch: x + y * dispatch_x groups of WORKGROUP_SIZE rows, z = task tile.
//
// Joined after shared/constants.wgsl and shared/residual_stats.wgsl
// (`engine::gpu::mdp_engine::MDP_DENSE_WGSL`).

// Tasks per workgroup of mdp_dense_product (at most MAX_TASK_TILE): the batch's, up to 8.
override TASK_TILE: u32 = 8u;
// Whether a task may stop iterating: a tile whose tasks have all stopped does nothing.
override FREEZE: bool = false;

const MAX_TASK_TILE: u32 = 8u;

// Keep in sync with `engine::gpu::mdp_engine::DenseParams` (size compared in
// tests/kernel_shader_layout.rs).
struct DenseParams {
    states: u32,
    actions: u32,
    // Entries per row of `dense` and per task of `x`: S rounded up to a multiple of 4.
    columns: u32,
    // First task ([task] index within the chunk) and tasks of this band.
    task_base: u32,
    task_count: u32,
    // First row (s * A + a) and rows of this band.
    row_base: u32,
    row_count: u32,
    // Workgroups along x of this band's dispatch.
    dispatch_x: u32,
    // Where each binding's window starts in its full array, in that array's f32 elements
    // (multiples of 4 where the binding is read as vec4).
    dense_origin: u32,   // dense [row][column]
    x_origin: u32,       // x, x_out [task][column]
    v_origin: u32,       // v_in [task][state]
    product_origin: u32, // product [task][row]
    // gamma * log2(e) / alpha (the optimistic backup's X); 0 for the expected backup (X = V).
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: DenseParams;
@group(0) @binding(1) var<storage, read> dense: array<vec4<f32>>;     // [s * A + a][column / 4]
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;         // [task][column / 4]
@group(0) @binding(3) var<storage, read_write> product: array<f32>;   // [task][s * A + a]
@group(0) @binding(4) var<storage, read> frozen: array<u32>;          // [task]
// mdp_dense_shift: V in, X and M out.
@group(0) @binding(5) var<storage, read> v_in: array<f32>;            // [task][state]
@group(0) @binding(6) var<storage, read_write> x_out: array<f32>;     // [task][column]
@group(0) @binding(7) var<storage, read_write> shift: array<f32>;     // [task]

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

// One task per workgroup (z = task within the band): X = V for the expected backup (scale
// 0); for the optimistic one M = the largest finite V (0 if none) and
// X = exp(gamma (V - M) / alpha), 0 where V is -inf. Zero on the padding columns.
@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn mdp_dense_shift(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let task = params.task_base + wid.z;
    if !tile_live(lid, task, 1u) {
        return;
    }
    let base = task * params.states - params.v_origin;
    let out = task * params.columns - params.x_origin;
    if params.scale == 0.0 {
        for (var s = lid; s < params.columns; s += WORKGROUP_SIZE) {
            x_out[out + s] = select(0.0, v_in[base + min(s, params.states - 1u)], s < params.states);
        }
        return;
    }
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
    for (var s = lid; s < params.columns; s += WORKGROUP_SIZE) {
        let v = v_in[base + min(s, params.states - 1u)];
        x_out[out + s] = select(exp2((v - m) * params.scale), 0.0, v < -HUGE || s >= params.states);
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
    let row = row0 + lid;
    if row >= params.row_count {
        return;
    }
    let quads = params.columns / 4u;
    let first = ((params.row_base + row) * params.columns - params.dense_origin) / 4u;
    // Task t of the tile reads X at base[t]; past the band's tasks, its last task's (summed,
    // never written).
    var base: array<u32, MAX_TASK_TILE>;
    for (var t = 0u; t < TASK_TILE; t++) {
        base[t] = ((tile + min(t, tasks - 1u)) * params.columns - params.x_origin) / 4u;
    }
    var sums: array<f32, MAX_TASK_TILE>;
    for (var k = 0u; k < quads; k++) {
        let p = dense[first + k];
        for (var t = 0u; t < TASK_TILE; t++) {
            sums[t] += dot(p, x[base[t] + k]);
        }
    }
    let rows_per_task = params.states * params.actions;
    for (var t = 0u; t < tasks; t++) {
        product[(tile + t) * rows_per_task + params.row_base + row - params.product_origin] = sums[t];
    }
}
