// Exact inference over a discrete set of B tasks from an observed trajectory, in log space.
// CPU twin: src/engine/cpu/task_posterior.rs `task_posterior`.
//
// Observed step k (k = 0..K-1) has a likelihood under task z of
//   L[k][z] = sum_a weight[k][a] * pi_z(a | s_k),
// where weight[k] is one-hot on the observed action a_k, or P(s_{k+1} | s_k, a) when only the
// next state was observed. `pi_rows[k][z]` holds pi_z(. | s_k) (zeros where task z has no
// policy at s_k: its episode would have ended there). Then
//   joint[k][z] = log prior[z] + sum_{j < k} log L[j][z]              (k = 0..K)
//   posterior[k][z] = exp(joint[k][z] - logsumexp_z joint[k][.]).
// A zero likelihood is IMPOSSIBLE (a finite stand-in for -inf, so that no NaN can arise); a
// task whose joint is at or below IMPOSSIBLE gets probability 0.
//
// Dispatch: step_likelihood over (task, step) as x = task (64 per workgroup), y = step;
// accumulate over tasks (64 per workgroup); normalize one workgroup per row k of `joint`.

// Joined after shared/constants.wgsl (`engine::gpu::task_posterior::TASK_POSTERIOR_WGSL`).

const IMPOSSIBLE: f32 = -1.0e30;

// Keep in sync with `engine::gpu::task_posterior::PosteriorParams` (size checked by tests/kernel_shader_layout.rs).
struct PosteriorParams {
    tasks: u32,
    steps: u32,
    actions: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> params: PosteriorParams;
@group(0) @binding(1) var<storage, read> weight: array<f32>;              // [step][action]
@group(0) @binding(2) var<storage, read> pi_rows: array<f32>;             // [step][task][action]
@group(0) @binding(3) var<storage, read> log_prior: array<f32>;           // [task]
@group(0) @binding(4) var<storage, read_write> log_likelihood: array<f32>; // [step][task]
@group(0) @binding(5) var<storage, read_write> joint: array<f32>;          // [step + 1][task]
@group(0) @binding(6) var<storage, read_write> posterior: array<f32>;      // [step + 1][task]

var<workgroup> scratch: array<f32, WORKGROUP_SIZE>;

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn step_likelihood(@builtin(global_invocation_id) id: vec3<u32>) {
    let task = id.x;
    let step = id.y;
    if task >= params.tasks || step >= params.steps {
        return;
    }
    var total = 0.0;
    let row = (step * params.tasks + task) * params.actions;
    for (var a = 0u; a < params.actions; a++) {
        total += weight[step * params.actions + a] * pi_rows[row + a];
    }
    log_likelihood[step * params.tasks + task] = select(IMPOSSIBLE, log(total), total > 0.0);
}

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn accumulate(@builtin(global_invocation_id) id: vec3<u32>) {
    let task = id.x;
    if task >= params.tasks {
        return;
    }
    var sum = log_prior[task];
    joint[task] = sum;
    for (var k = 0u; k < params.steps; k++) {
        // Clamped so that impossible steps add up to IMPOSSIBLE, never to -inf.
        sum = max(sum + log_likelihood[k * params.tasks + task], IMPOSSIBLE);
        joint[(k + 1u) * params.tasks + task] = sum;
    }
}

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn normalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let base = wid.x * params.tasks;
    var top = IMPOSSIBLE;
    for (var z = lid; z < params.tasks; z += WORKGROUP_SIZE) {
        top = max(top, joint[base + z]);
    }
    scratch[lid] = top;
    workgroupBarrier();
    for (var stride = WORKGROUP_SIZE / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            scratch[lid] = max(scratch[lid], scratch[lid + stride]);
        }
        workgroupBarrier();
    }
    top = scratch[0];
    workgroupBarrier();
    var mass = 0.0;
    for (var z = lid; z < params.tasks; z += WORKGROUP_SIZE) {
        let j = joint[base + z];
        mass += select(0.0, exp(j - top), j > IMPOSSIBLE);
    }
    scratch[lid] = mass;
    workgroupBarrier();
    for (var stride = WORKGROUP_SIZE / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            scratch[lid] = scratch[lid] + scratch[lid + stride];
        }
        workgroupBarrier();
    }
    mass = scratch[0];
    for (var z = lid; z < params.tasks; z += WORKGROUP_SIZE) {
        let j = joint[base + z];
        // Every task impossible: 0 everywhere (the host reports the step).
        posterior[base + z] = select(0.0, exp(j - top) / mass, j > IMPOSSIBLE && top > IMPOSSIBLE);
    }
}
