// One forward (occupancy) step of a batch of gridworld tasks, pulled through the grid's reverse
// moves: WGSL has no float atomics, so each cell gathers what flows in instead of its sources
// scattering. CPU twin: src/engine/cpu/grid_occupancy.rs `grid_occupancy`.
//
// D_out(c') = gamma * sum over sources c with dest(c, a) = c' of D_in(c) * ((1 - eps) pi(a|c) + eps / |A|)
//
// where eps is the slip: action a takes its own move with probability 1 - eps, and with eps a
// uniformly drawn action's move, so every action whose move lands on c' adds eps / |A| whatever
// the policy. A cell's sources are its 8 neighbours (the one move that leads from each) and
// itself (its blocked moves and STAY). Fixed cells (walls, goals, excluded) pass nothing on; a
// goal still receives: mass that reaches it is counted there and goes no further.
//
// Dispatch: 64 invocations per workgroup over the cells of a task (x + y * dispatch_x
// workgroups), z = task within the band. Bands hold whole tasks; the origins locate them.

// Joined after shared/constants.wgsl and shared/grid_params.wgsl (`engine::gpu::GRID_OCCUPANCY_WGSL`).
// Of `GridParams` this kernel reads the map's size, task_base, dispatch_x, fixed_origin,
// v_in_origin (d_in and d_out), out_origin (policy), gamma, slip and slip_share.

@group(0) @binding(0) var<uniform> params: GridParams;
@group(0) @binding(1) var<storage, read> move_masks: array<u32>;      // [row][col]
@group(0) @binding(2) var<storage, read> fixed_bits: array<u32>;      // [task][cell / 32]
@group(0) @binding(3) var<storage, read> policy: array<f32>;          // [task][row][col][action]
@group(0) @binding(4) var<storage, read> d_in: array<f32>;            // [task][row][col]
@group(0) @binding(5) var<storage, read_write> d_out: array<f32>;     // [task][row][col]

fn is_fixed(task: u32, cell: u32) -> bool {
    let word = task * params.fixed_words_per_task + (cell >> 5u) - params.fixed_origin;
    return ((fixed_bits[word] >> (cell & 31u)) & 1u) != 0u;
}

// Row and column steps of the moves, in action order N, E, S, W, NE, SE, SW, NW.
const MOVE_ROW = array<i32, 8>(-1, 0, 1, 0, -1, 1, 1, -1);
const MOVE_COL = array<i32, 8>(0, 1, 0, -1, 1, 1, -1, -1);

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn grid_occupancy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let cell = (wid.y * params.dispatch_x + wid.x) * WORKGROUP_SIZE + lid;
    if cell >= params.cells_per_task {
        return;
    }
    let task = params.task_base + wid.z;
    let base = task * params.cells_per_task - params.v_in_origin;
    let n = action_count();
    let pi_base = task * params.cells_per_task * n - params.out_origin;
    let keep = 1.0 - params.slip;
    var inflow = 0.0;
    // Itself: the actions that stay (blocked moves, STAY).
    if !is_fixed(task, cell) {
        let mask = move_masks[cell];
        var weight = 0.0;
        for (var a = 0u; a < n; a++) {
            if a >= CONNECTIVITY || ((mask >> a) & 1u) == 0u {
                weight += keep * policy[pi_base + cell * n + a] + params.slip_share;
            }
        }
        inflow += d_in[base + cell] * weight;
    }
    // Each neighbour whose move a leads here.
    let row = i32(cell / params.width);
    let col = i32(cell % params.width);
    for (var a = 0u; a < CONNECTIVITY; a++) {
        let r = row - MOVE_ROW[a];
        let c = col - MOVE_COL[a];
        if r < 0 || c < 0 || r >= i32(params.height) || c >= i32(params.width) {
            continue;
        }
        let source = u32(r) * params.width + u32(c);
        if ((move_masks[source] >> a) & 1u) == 0u || is_fixed(task, source) {
            continue;
        }
        inflow += d_in[base + source] * (keep * policy[pi_base + source * n + a] + params.slip_share);
    }
    d_out[base + cell] = params.gamma * inflow;
}
