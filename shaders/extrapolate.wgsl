// The rate-extrapolation jump of every iteration (the grid and MDP value sweeps and the
// discounted occupancy), run after a convergence check with each task's factor from
// `convergence_decide` (shaders/residual_reduce.wgsl):
//   factor > 0: backup = V, then V <- V + factor * (V - V_prev) on the non-fixed elements;
//   factor < 0 (ROLLBACK): V <- backup on the non-fixed elements (the jump did not pay off);
//   factor = 0: nothing.
// V is what the last sweep wrote and V_prev what it read. If the residual decays like
// lambda^k along one mode, the jump lands on that mode's limit: factor = lambda / (1 - lambda).
// Fixed elements never change, so leaving them out of the backup and the restore changes
// nothing. CPU twin: `engine::cpu::extrapolate`.
//
// Elements are [task][element]: the states of an MDP, or the cells of the padded map (the grid
// sweep's vec4 quads are 4 consecutive cells). The fixed bits are [task][element / 32], each
// task starting on a word.
//
// Dispatch: the band's sweep dispatch, whose indirect arguments `convergence_decide` copies:
// WORKGROUP_SIZE invocations per workgroup, x + y * dispatch_x workgroups, z = task within the
// band. Each invocation steps through the band's elements by the dispatch's invocation count,
// so the sweep's dispatch covers them whatever it was sized for (the grid sweep's counts active
// quads, not cells).
//
// Joined after shared/constants.wgsl (`engine::gpu::core::EXTRAPOLATE_WGSL`).

// Keep in sync with `engine::gpu::core::ExtrapolateParams` (sizes compared in tests/kernel_shader_layout.rs).
struct ExtrapolateParams {
    values_per_task: u32, // elements of V per task
    task_base: u32,       // first task ([task] index within the chunk) of this band
    first: u32,           // first element of this band within each of its tasks
    count: u32,           // elements of this band per task
    dispatch_x: u32,      // workgroups along x of this band's dispatch
    invocations: u32,     // invocations per task of this band's dispatch
    fixed_words_per_task: u32,
    // Where each binding's window starts in its full array, in that array's elements.
    fixed_origin: u32, // fixed_bits [task][word]
    prev_origin: u32,  // v_prev [task][element]
    out_origin: u32,   // v, backup [task][element]
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: ExtrapolateParams;
@group(0) @binding(1) var<storage, read> fixed_bits: array<u32>;         // [task][element / 32]
@group(0) @binding(2) var<storage, read> v_prev: array<f32>;             // [task][element]
@group(0) @binding(3) var<storage, read_write> v: array<f32>;            // [task][element]
@group(0) @binding(4) var<storage, read_write> backup: array<f32>;       // [task][element]
@group(0) @binding(5) var<storage, read> extrapolation: array<f32>;      // [task]

fn is_fixed(task: u32, element: u32) -> bool {
    let word = task * params.fixed_words_per_task + (element >> 5u) - params.fixed_origin;
    return ((fixed_bits[word] >> (element & 31u)) & 1u) != 0u;
}

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn extrapolate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let task = params.task_base + wid.z;
    let factor = extrapolation[task];
    if factor == 0.0 {
        return;
    }
    let start = (wid.y * params.dispatch_x + wid.x) * WORKGROUP_SIZE + lid;
    for (var i = start; i < params.count; i += params.invocations) {
        let element = params.first + i;
        if is_fixed(task, element) {
            continue;
        }
        let here = task * params.values_per_task + element;
        let slot = here - params.out_origin;
        if factor < 0.0 {
            v[slot] = backup[slot];
            continue;
        }
        let current = v[slot];
        backup[slot] = current;
        v[slot] = current + factor * (current - v_prev[here - params.prev_origin]);
    }
}
