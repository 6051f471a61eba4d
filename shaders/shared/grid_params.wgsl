// The uniform, action set and moves of the grid kernels (shaders/grid_backup.wgsl,
// shaders/grid_occupancy.wgsl, shaders/grid_vjp.wgsl).

// 4 (N, E, S, W) or 8 (then NE, SE, SW, NW).
override CONNECTIVITY: u32 = 8u;
// A final STAY action.
override STAY: bool = false;
// Most actions: 8 moves and STAY.
const MAX_ACTIONS: u32 = 9u;

fn action_count() -> u32 {
    return CONNECTIVITY + select(0u, 1u, STAY);
}

// Per-band uniform of the grid kernels. Keep in sync with `engine::gpu::grid_engine::GridParams` (sizes compared in
// tests/kernel_shader_layout.rs).
struct GridParams {
    width: u32, // cells per row, a multiple of 4
    height: u32,
    cells_per_task: u32,
    fixed_words_per_task: u32,
    // First task ([task] index within the chunk) of this band.
    task_base: u32,
    // grid_backup: this band's slice of `active_quads`: first entry and count.
    list_base: u32,
    list_count: u32,
    // Workgroups along x of this band's dispatch.
    dispatch_x: u32,
    // grid_backup: `partials` slot of this band's first workgroup within a task, and slots per
    // task.
    group_base: u32,
    groups_per_task: u32,
    // Where each binding's window starts in its full array, in that array's elements.
    quads_origin: u32, // active_quads [entry]
    fixed_origin: u32, // fixed_bits [task][word]
    // grid_backup: v_in [task][row][quad]; grid_occupancy: d_in, d_out [task][row][col].
    v_in_origin: u32,
    // grid_backup: reward, v_out [task][row][quad], policy cell 4 * out_origin;
    // grid_occupancy: policy [task][row][col][action].
    out_origin: u32,
    gamma: f32,
    slip: f32,
    alpha_ln2: f32,        // alpha * ln(2)
    log2e_over_alpha: f32, // log2(e) / alpha
    slip_share: f32,       // slip / |A|
    _pad0: u32,
    step_cost: array<vec4<f32>, 3>, // cost(a), action order
}

// Row and column steps of the moves, in action order N, E, S, W, NE, SE, SW, NW.
const MOVE_ROW = array<i32, 8>(-1, 0, 1, 0, -1, 1, 1, -1);
const MOVE_COL = array<i32, 8>(0, 1, 0, -1, 1, 1, -1, -1);
