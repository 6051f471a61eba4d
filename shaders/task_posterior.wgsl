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
//
// Meta-RL (softvi meta): many runs at once, each an agent that does not know its task and
// observes rewards and terminations. `observe` adds one episode's evidence to each run's row of
// `joint` ([run][task], kept on the device across episodes):
//   joint[run][z] += sum_t log p(r_t, terminated_t | s_t, a_t, s_{t+1}, z),
// where termination must match task z's terminal states exactly (else IMPOSSIBLE) and the
// reward r_t = r_z(s_t, a_t) (+ the terminal value of s_{t+1} when the step terminated) is
// exact (within REWARD_TOLERANCE, else IMPOSSIBLE) or, with `gaussian`, observed with noise of
// standard deviation `reward_noise`: log N(r_t; expected, noise^2) up to a constant common to
// all tasks. Transitions P(s'|s,a) are the same for every task and the actions are the
// agent's own, so neither carries evidence. Then `normalize` with one workgroup per run.
// Dispatch: observe over (task, run) as x = task (64 per workgroup), y = run.

// Joined after shared/constants.wgsl (`engine::gpu::task_posterior::TASK_POSTERIOR_WGSL`).

const IMPOSSIBLE: f32 = -1.0e30;

// A terminal value below any real one: task_terminal's mark of a state that is not terminal.
const NOT_TERMINAL: f32 = -3.0e38;
// `observed[..].state` of a step past the end of its run's episode.
const NO_STEP: u32 = 0xffffffffu;
// An exact reward observation matches a task's reward within this, relative to max(1, |r|).
const REWARD_TOLERANCE: f32 = 1.0e-6;

// Keep in sync with `engine::gpu::task_posterior::PosteriorParams` (size checked by tests/kernel_shader_layout.rs).
struct PosteriorParams {
    tasks: u32,
    steps: u32,
    actions: u32,
    // Meta-RL only: states, runs, the reward model (0 exact, 1 Gaussian) and its noise.
    states: u32,
    runs: u32,
    gaussian: u32,
    reward_noise: f32,
    _pad0: u32,
}

// One observed transition of a meta-RL run. Keep in sync with `engine::layout::ObservedStep`.
struct ObservedStep {
    state: u32,
    action: u32,
    next: u32,
    terminated: u32,
    reward: f32,
}

@group(0) @binding(0) var<uniform> params: PosteriorParams;
@group(0) @binding(1) var<storage, read> weight: array<f32>;              // [step][action]
@group(0) @binding(2) var<storage, read> pi_rows: array<f32>;             // [step][task][action]
@group(0) @binding(3) var<storage, read> log_prior: array<f32>;           // [task]
@group(0) @binding(4) var<storage, read_write> log_likelihood: array<f32>; // [step][task]
@group(0) @binding(5) var<storage, read_write> joint: array<f32>;          // [step + 1][task]
@group(0) @binding(6) var<storage, read_write> posterior: array<f32>;      // [step + 1][task]
@group(0) @binding(7) var<storage, read> task_reward: array<f32>;         // [task][state][action]
@group(0) @binding(8) var<storage, read> task_terminal: array<f32>;       // [task][state]
@group(0) @binding(9) var<storage, read> observed: array<ObservedStep>;   // [run][step]

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

// log p(o | task) up to a constant common to all tasks, or IMPOSSIBLE.
fn observation_log_likelihood(task: u32, o: ObservedStep) -> f32 {
    let end_value = task_terminal[task * params.states + o.next];
    let ends = end_value > NOT_TERMINAL;
    if ends != (o.terminated != 0u) {
        return IMPOSSIBLE;
    }
    let expected = task_reward[(task * params.states + o.state) * params.actions + o.action]
        + select(0.0, end_value, ends);
    let gap = o.reward - expected;
    if params.gaussian != 0u {
        let z = gap / params.reward_noise;
        return -0.5 * z * z;
    }
    return select(IMPOSSIBLE, 0.0, abs(gap) <= REWARD_TOLERANCE * max(1.0, abs(expected)));
}

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn observe(@builtin(global_invocation_id) id: vec3<u32>) {
    let task = id.x;
    let run = id.y;
    if task >= params.tasks || run >= params.runs {
        return;
    }
    var sum = joint[run * params.tasks + task];
    for (var k = 0u; k < params.steps; k++) {
        let o = observed[run * params.steps + k];
        if o.state == NO_STEP {
            break;
        }
        sum = max(sum + observation_log_likelihood(task, o), IMPOSSIBLE);
    }
    joint[run * params.tasks + task] = sum;
}
