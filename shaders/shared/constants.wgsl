// Constants of every kernel, joined in front of each kernel file with
// concat!(include_str!(..)) (see the *_WGSL constants in src/engine/gpu/).

// Invocations per workgroup of every kernel. The sweeps over quads or states, the
// `extrapolate` jump that reuses their dispatch and `residual_reduce`, which combines their
// per-workgroup statistics, must agree on it. Same as `engine::gpu::core::WORKGROUP_SIZE`.
const WORKGROUP_SIZE: u32 = 64u;
// Larger than any value: minimums start at HUGE, and -HUGE is below every finite value (an
// excluded state's -inf is below it too).
const HUGE: f32 = 3.0e38;
