//! The task posterior on the GPU: `shaders/task_posterior.wgsl`.

use crate::error::{Result, ensure};
use bytemuck::{Pod, Zeroable};

use super::context::GpuContext;
use super::core::{EngineOptions, GpuCore, Shader, storage};
use crate::engine::layout::PosteriorInputs;

/// WGSL source of the posterior kernels.
pub const TASK_POSTERIOR_WGSL: &str = wgsl!("shared/constants.wgsl", "task_posterior.wgsl");
/// Invocations per workgroup. Same as `WORKGROUP_SIZE` in the shader.
pub const WORKGROUP_SIZE: u32 = 64;

/// Uniform of `shaders/task_posterior.wgsl`. Keep in sync with `PosteriorParams` there (size
/// checked by tests/kernel_shader_layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct PosteriorParams {
    pub tasks: u32,
    pub steps: u32,
    pub actions: u32,
    pub _pad0: u32,
}

/// Posterior over the tasks of a batch after each observed step, on one wgpu device.
pub struct TaskPosterior {
    core: GpuCore,
    shader: Shader,
    pipelines: [wgpu::ComputePipeline; 3],
}

impl TaskPosterior {
    /// Pipelines on `ctx`'s device.
    pub fn new(ctx: &GpuContext) -> Result<Self> {
        let mut core = GpuCore::new(ctx, EngineOptions::default());
        let shader = core.shader(
            "softvi.task_posterior",
            TASK_POSTERIOR_WGSL,
            &[
                wgpu::BufferBindingType::Uniform, // params
                storage(true),                    // weight
                storage(true),                    // pi_rows
                storage(true),                    // log_prior
                storage(false),                   // log_likelihood
                storage(false),                   // joint
                storage(false),                   // posterior
            ],
        );
        let pipelines = ["step_likelihood", "accumulate", "normalize"]
            .map(|entry| core.pipeline(&shader, entry, &[]));
        Ok(Self {
            core,
            shader,
            pipelines,
        })
    }

    /// The posterior `[step + 1][task]` (row 0 the prior) and the log joint it normalizes,
    /// laid out and computed as [`crate::engine::cpu::task_posterior()`].
    pub fn run(&mut self, inputs: &PosteriorInputs) -> Result<(Vec<f32>, Vec<f32>)> {
        use wgpu::BufferUsages as U;
        let (b, k) = (inputs.tasks, inputs.steps);
        ensure!(
            k <= self.core.max_workgroups as usize,
            "the trajectory has {k} steps; at most {} are inferred in one run",
            self.core.max_workgroups
        );
        for (what, bytes) in [
            (
                "the policy rows of the trajectory",
                inputs.pi_rows.len() * 4,
            ),
            ("the joint", (k + 1) * b * 4),
        ] {
            self.core.ensure_bindable(what, bytes as u64)?;
        }
        let upload = |core: &mut GpuCore, label, data: &[f32]| {
            let buffer = core.buffer(label, (data.len() * 4) as u64, U::STORAGE | U::COPY_DST);
            core.queue
                .write_buffer(&buffer, 0, bytemuck::cast_slice(data));
            buffer
        };
        let core = &mut self.core;
        let params = PosteriorParams {
            tasks: b as u32,
            steps: k as u32,
            actions: inputs.actions as u32,
            _pad0: 0,
        };
        let params = core.uniforms("softvi.posterior_params", &[params]);
        let weight = upload(core, "softvi.step_weight", &inputs.weight);
        let pi_rows = upload(core, "softvi.pi_rows", &inputs.pi_rows);
        let log_prior = upload(core, "softvi.log_prior", &inputs.log_prior);
        let log_likelihood = core.buffer(
            "softvi.log_likelihood",
            (k.max(1) * b * 4) as u64,
            U::STORAGE,
        );
        let rows_bytes = ((k + 1) * b * 4) as u64;
        let joint = core.buffer("softvi.joint", rows_bytes, U::STORAGE | U::COPY_SRC);
        let posterior = core.buffer("softvi.posterior", rows_bytes, U::STORAGE | U::COPY_SRC);
        let group = core.bind_group(
            "softvi.task_posterior",
            &self.shader.group_layout,
            [
                params.bind(0),
                weight.as_entire_binding(),
                pi_rows.as_entire_binding(),
                log_prior.as_entire_binding(),
                log_likelihood.as_entire_binding(),
                joint.as_entire_binding(),
                posterior.as_entire_binding(),
            ],
        );
        let groups = (b as u32).div_ceil(WORKGROUP_SIZE);
        let mut encoder = core.device.create_command_encoder(&Default::default());
        let [likelihood, accumulate, normalize] = &self.pipelines;
        core.dispatch(&mut encoder, likelihood, &group, [groups, k as u32, 1]);
        core.dispatch(&mut encoder, accumulate, &group, [groups, 1, 1]);
        core.dispatch(&mut encoder, normalize, &group, [(k + 1) as u32, 1, 1]);
        core.queue.submit([encoder.finish()]);
        let joint = core.read_f32(&joint, 0, rows_bytes)?;
        let posterior = core.read_f32(&posterior, 0, rows_bytes)?;
        Ok((posterior, joint))
    }
}
