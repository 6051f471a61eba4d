//! The finite-horizon forward pass both engines record the same way: per step t, pi_t from
//! V_{t+1}, then D_{t+1} from D_t under pi_t, in one submission unless every step's policy
//! is read back.

use crate::error::Result;

use super::core::GpuCore;

/// One band's dispatch of a kernel.
pub(crate) struct BandDispatch<'a> {
    pub group: &'a wgpu::BindGroup,
    pub workgroups: [u32; 3],
}

/// One band's ping-pong dispatch: `groups[p]` reads buffer p and writes buffer 1 - p.
pub(crate) struct PairDispatch<'a> {
    pub groups: &'a [wgpu::BindGroup; 2],
    pub workgroups: [u32; 3],
}

/// What [`record_forward`] runs over a chunk; arrays are `[task][state]` (`v_bytes` bytes).
pub(crate) struct ForwardPass<'a> {
    /// Dispatches recorded each step before the Q and policy kernels, after V_{t+1} is in
    /// `v_next` (the dense product of the MDP engine): pipeline, group, workgroups.
    pub prepare: &'a [(wgpu::ComputePipeline, wgpu::BindGroup, [u32; 3])],
    pub horizon: usize,
    pub v_bytes: u64,
    /// V_t at slot t (`v_bytes` each), t = 0..=T.
    pub steps: &'a wgpu::Buffer,
    /// Where V_{t+1} is copied for the policy kernel to read.
    pub v_next: &'a wgpu::Buffer,
    /// The policy kernel and its bands, writing pi_t to `policy_out`.
    pub policy: &'a wgpu::ComputePipeline,
    pub policy_bands: Vec<BandDispatch<'a>>,
    /// pi_t, `[task][state][action]`, read back every step when `keep_policy`.
    pub policy_out: (&'a wgpu::Buffer, u64),
    pub keep_policy: bool,
    /// The policy kernel with `WRITE_Q`, when every step's Q is read back: it runs over the
    /// same bands into `policy_out` before the policy kernel does.
    pub q: Option<&'a wgpu::ComputePipeline>,
    /// With the occupancy: its kernel, its bands over `d` (D_0 already in `d[0]`).
    pub occupancy: Option<(&'a wgpu::ComputePipeline, Vec<PairDispatch<'a>>)>,
    pub d: &'a [wgpu::Buffer; 2],
}

/// What the forward pass read back: `[t][task][state][action]` policies and Q-values (when
/// kept) and `[t][task][state]` occupancies (with the occupancy), each entry over the chunk's
/// tasks.
pub(crate) struct ForwardOutputs {
    pub policy: Vec<Vec<f32>>,
    pub q: Vec<Vec<f32>>,
    pub occupancy: Vec<Vec<f32>>,
}

/// Records and runs `pass`; D_t of every step is gathered on the GPU and read back once.
pub(crate) async fn record_forward(
    core: &mut GpuCore,
    pass: &ForwardPass<'_>,
) -> Result<ForwardOutputs> {
    use wgpu::BufferUsages as U;
    let (horizon, v_bytes) = (pass.horizon, pass.v_bytes);
    let mut out = ForwardOutputs {
        policy: Vec::new(),
        q: Vec::new(),
        occupancy: Vec::new(),
    };
    let d_steps = pass.occupancy.as_ref().map(|_| {
        core.buffer(
            "softvi.step_occupancy",
            (horizon as u64 + 1) * v_bytes,
            U::COPY_SRC | U::COPY_DST,
        )
    });
    let mut encoder = core.device.create_command_encoder(&Default::default());
    if let Some(d_steps) = &d_steps {
        encoder.copy_buffer_to_buffer(&pass.d[0], 0, d_steps, 0, v_bytes);
    }
    for t in 0..horizon {
        let slot = (t as u64 + 1) * v_bytes;
        encoder.copy_buffer_to_buffer(pass.steps, slot, pass.v_next, 0, v_bytes);
        for (pipeline, group, workgroups) in pass.prepare {
            core.dispatch(&mut encoder, pipeline, group, *workgroups);
        }
        if let Some(q) = pass.q {
            for band in &pass.policy_bands {
                core.dispatch(&mut encoder, q, band.group, band.workgroups);
            }
            out.q.push(read_rows(core, &mut encoder, pass).await?);
        }
        for band in &pass.policy_bands {
            core.dispatch(&mut encoder, pass.policy, band.group, band.workgroups);
        }
        if let (Some((pipeline, bands)), Some(d_steps)) = (&pass.occupancy, &d_steps) {
            for band in bands {
                core.dispatch(&mut encoder, pipeline, &band.groups[t % 2], band.workgroups);
            }
            encoder.copy_buffer_to_buffer(&pass.d[1 - t % 2], 0, d_steps, slot, v_bytes);
        }
        if pass.keep_policy {
            out.policy.push(read_rows(core, &mut encoder, pass).await?);
        }
    }
    core.queue.submit([encoder.finish()]);
    if let Some(d_steps) = &d_steps {
        let all = (core.read_f32(d_steps, 0, (horizon as u64 + 1) * v_bytes)).await?;
        let per_step = (v_bytes / 4) as usize;
        out.occupancy = all.chunks_exact(per_step).map(<[f32]>::to_vec).collect();
    }
    Ok(out)
}

/// Submits what `encoder` holds and reads `pass.policy_out` back.
async fn read_rows(
    core: &mut GpuCore,
    encoder: &mut wgpu::CommandEncoder,
    pass: &ForwardPass<'_>,
) -> Result<Vec<f32>> {
    let fresh = core.device.create_command_encoder(&Default::default());
    core.queue
        .submit([std::mem::replace(encoder, fresh).finish()]);
    let (rows, bytes) = pass.policy_out;
    core.read_f32(rows, 0, bytes).await
}
