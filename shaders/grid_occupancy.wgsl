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
// With ADD_START and WEIGHTED the same pull iterates the VJP's stationary adjoint
// (src/engine/gpu/grid_vjp.rs): d_out = start + gamma * pull(d_in), with `policy` holding each
// move's whole weight (shaders/grid_vjp.wgsl `grid_vjp_rows` folds pi, the slip and the
// optimistic backup's tilt into it), a signed start and residual checks on |d| (no sign and no
// total mass assumed).
//
// Dispatch: 64 invocations per workgroup over the cells of a task (x + y * dispatch_x
// workgroups), z = task within the band. Bands hold whole tasks; the origins locate them.

// Joined after shared/constants.wgsl, shared/grid_params.wgsl and shared/residual_stats.wgsl
// (`engine::gpu::GRID_OCCUPANCY_WGSL`). Of `GridParams` this kernel reads the map's size,
// task_base, dispatch_x, group_base, groups_per_task, fixed_origin, v_in_origin (d_in, d_out
// and start), out_origin (policy), gamma, slip and slip_share.

// Whether d_out adds `start` (an iteration to a fixed point: the VJP's stationary adjoint).
override ADD_START: bool = false;
// Whether `policy` holds each move's whole weight instead of pi (then slip is not added).
override WEIGHTED: bool = false;
// Whether this sweep writes per-workgroup residual statistics into `partials`.
override WRITE_RESIDUAL: bool = false;

@group(0) @binding(0) var<uniform> params: GridParams;
@group(0) @binding(1) var<storage, read> move_masks: array<u32>;      // [row][col]
@group(0) @binding(2) var<storage, read> fixed_bits: array<u32>;      // [task][cell / 32]
@group(0) @binding(3) var<storage, read> policy: array<f32>;          // [task][row][col][action]
@group(0) @binding(4) var<storage, read> d_in: array<f32>;            // [task][row][col]
@group(0) @binding(5) var<storage, read_write> d_out: array<f32>;     // [task][row][col]
@group(0) @binding(6) var<storage, read_write> partials: array<vec4<f32>>; // [task][group]
@group(0) @binding(7) var<storage, read> start: array<f32>;           // [task][row][col]
// With ADD_START: NOT_FROZEN, or the task stopped iterating and is copied
// (shared/residual_stats.wgsl).
@group(0) @binding(8) var<storage, read> frozen: array<u32>;          // [task]

fn is_fixed(task: u32, cell: u32) -> bool {
    let word = task * params.fixed_words_per_task + (cell >> 5u) - params.fixed_origin;
    return ((fixed_bits[word] >> (cell & 31u)) & 1u) != 0u;
}

// The weight of the move whose `policy` entry is `index`: its whole weight (WEIGHTED), or
// (1 - eps) pi(a|c) + eps / |A|.
fn move_weight(index: u32) -> f32 {
    if WEIGHTED {
        return policy[index];
    }
    return (1.0 - params.slip) * policy[index] + params.slip_share;
}

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn grid_occupancy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var stats = NO_STATS;
    let cell = (wid.y * params.dispatch_x + wid.x) * WORKGROUP_SIZE + lid;
    if cell < params.cells_per_task {
        let task = params.task_base + wid.z;
        let here = task * params.cells_per_task + cell - params.v_in_origin;
        // Only an iteration to a fixed point (ADD_START) freezes tasks.
        if ADD_START && frozen[task] != NOT_FROZEN {
            d_out[here] = d_in[here];
        } else {
            stats = occupancy_update(task, cell);
        }
    }
    if WRITE_RESIDUAL {
        let total = workgroup_stats(lid, stats);
        let p = params;
        let slot = partial_slot(wid, lid, p.dispatch_x, p.cells_per_task, p.task_base, p.group_base, p.groups_per_task);
        if slot != NO_SLOT {
            partials[slot] = total;
        }
    }
}

// d_out of `cell` of `task`; returns its element statistics.
fn occupancy_update(task: u32, cell: u32) -> vec4<f32> {
    let base = task * params.cells_per_task - params.v_in_origin;
    let n = action_count();
    let pi_base = task * params.cells_per_task * n - params.out_origin;
    var inflow = 0.0;
    // Itself: the actions that stay (blocked moves, STAY).
    if !is_fixed(task, cell) {
        let mask = move_masks[cell];
        var weight = 0.0;
        for (var a = 0u; a < n; a++) {
            if a >= CONNECTIVITY || ((mask >> a) & 1u) == 0u {
                weight += move_weight(pi_base + cell * n + a);
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
        inflow += d_in[base + source] * move_weight(pi_base + source * n + a);
    }
    var updated = params.gamma * inflow;
    if ADD_START {
        updated += start[base + cell];
    }
    d_out[base + cell] = updated;
    return element_stats(updated - d_in[base + cell], updated);
}
