//! The task posterior on the GPU: `shaders/task_posterior.wgsl`.

use crate::error::{Result, ensure};
use bytemuck::{Pod, Zeroable};

use super::context::GpuContext;
use super::core::{EngineOptions, GpuCore, Shader, storage};
use crate::engine::layout::{ObservedStep, PosteriorInputs, TaskEvidence};

/// WGSL source of the posterior kernels.
pub const TASK_POSTERIOR_WGSL: &str = wgsl!("shared/constants.wgsl", "task_posterior.wgsl");
/// Invocations per workgroup. Same as `WORKGROUP_SIZE` in the shader.
pub const WORKGROUP_SIZE: u32 = 64;

/// Uniform of `shaders/task_posterior.wgsl`. Keep in sync with `PosteriorParams` there (size
/// checked by tests/kernel_shader_layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct PosteriorParams {
    /// Tasks B (the hypotheses).
    pub tasks: u32,
    /// Observed steps K.
    pub steps: u32,
    /// Actions A.
    pub actions: u32,
    /// Meta-RL only: states S.
    pub states: u32,
    /// Meta-RL only: runs updated together.
    pub runs: u32,
    /// Meta-RL only: the reward model, 0 exact, 1 Gaussian.
    pub gaussian: u32,
    /// Meta-RL only: the Gaussian reward model's standard deviation (reward units).
    pub reward_noise: f32,
    /// Padding to 16 bytes.
    pub _pad0: u32,
}

/// The shader's bindings, in order (one layout for the inference and the meta-RL entry
/// points; each binds small stand-ins for the arrays only the other reads).
fn bindings() -> [wgpu::BufferBindingType; 10] {
    [
        wgpu::BufferBindingType::Uniform, // params
        storage(true),                    // weight
        storage(true),                    // pi_rows
        storage(true),                    // log_prior
        storage(false),                   // log_likelihood
        storage(false),                   // joint
        storage(false),                   // posterior
        storage(true),                    // task_reward
        storage(true),                    // task_terminal
        storage(true),                    // observed
    ]
}

/// A stand-in for an array the entry points of a run do not read (bindings must be whole).
fn stand_in(core: &mut GpuCore, label: &'static str) -> wgpu::Buffer {
    core.buffer(label, 32, wgpu::BufferUsages::STORAGE)
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
        let shader = core.shader("softvi.task_posterior", TASK_POSTERIOR_WGSL, &bindings());
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
        super::wait(self.run_async(inputs))
    }

    /// [`TaskPosterior::run`] as a future, for the browser build.
    pub async fn run_async(&mut self, inputs: &PosteriorInputs) -> Result<(Vec<f32>, Vec<f32>)> {
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
            ..PosteriorParams::default()
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
        let unused = [
            "softvi.task_reward",
            "softvi.task_terminal",
            "softvi.observed",
        ]
        .map(|label| stand_in(core, label));
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
                unused[0].as_entire_binding(),
                unused[1].as_entire_binding(),
                unused[2].as_entire_binding(),
            ],
        );
        let groups = (b as u32).div_ceil(WORKGROUP_SIZE);
        let mut encoder = core.device.create_command_encoder(&Default::default());
        let [likelihood, accumulate, normalize] = &self.pipelines;
        core.dispatch(&mut encoder, likelihood, &group, [groups, k as u32, 1]);
        core.dispatch(&mut encoder, accumulate, &group, [groups, 1, 1]);
        core.dispatch(&mut encoder, normalize, &group, [(k + 1) as u32, 1, 1]);
        core.queue.submit([encoder.finish()]);
        let joint = core.read_f32(&joint, 0, rows_bytes).await?;
        let posterior = core.read_f32(&posterior, 0, rows_bytes).await?;
        Ok((posterior, joint))
    }
}

/// The meta-RL posterior of many runs on one wgpu device (`observe` and `normalize` in
/// `shaders/task_posterior.wgsl`): each run's log joint `[run][task]` stays on the device from
/// its prior through every observed episode.
pub struct MetaPosterior {
    core: GpuCore,
    pipelines: [wgpu::ComputePipeline; 2],
    group: wgpu::BindGroup,
    params: PosteriorParams,
    joint: wgpu::Buffer,
    posterior: wgpu::Buffer,
    observed: wgpu::Buffer,
}

impl MetaPosterior {
    /// `runs` runs over the tasks of `evidence`, observing episodes of at most `steps` steps,
    /// each starting from its row of `log_prior` (`[run][task]`, [`crate::infer::IMPOSSIBLE`]
    /// for a zero prior).
    pub fn new(
        ctx: &GpuContext,
        evidence: &TaskEvidence,
        runs: usize,
        steps: usize,
        log_prior: &[f32],
    ) -> Result<Self> {
        use wgpu::BufferUsages as U;
        let b = evidence.tasks;
        ensure!(
            log_prior.len() == runs * b,
            "the prior holds {} numbers, not runs x tasks = {runs} x {b}",
            log_prior.len()
        );
        ensure!(runs >= 1 && steps >= 1, "no runs or no steps to observe");
        let mut core = GpuCore::new(ctx, EngineOptions::default());
        ensure!(
            runs <= core.max_workgroups as usize,
            "{runs} runs; at most {} are observed in one dispatch",
            core.max_workgroups
        );
        let rows = (runs * b * 4) as u64;
        let observed_bytes = (runs * steps * size_of::<ObservedStep>()) as u64;
        for (what, bytes) in [
            ("the tasks' rewards", (evidence.reward.len() * 4) as u64),
            ("the runs' joint", rows),
            ("one episode's observations", observed_bytes),
        ] {
            core.ensure_bindable(what, bytes)?;
        }
        let shader = core.shader("softvi.task_posterior", TASK_POSTERIOR_WGSL, &bindings());
        let pipelines = ["observe", "normalize"].map(|entry| core.pipeline(&shader, entry, &[]));
        let params = PosteriorParams {
            tasks: b as u32,
            steps: steps as u32,
            actions: evidence.actions as u32,
            states: evidence.states as u32,
            runs: runs as u32,
            gaussian: evidence.reward_noise.is_some() as u32,
            reward_noise: evidence.reward_noise.unwrap_or(1.0) as f32,
            _pad0: 0,
        };
        let uniforms = core.uniforms("softvi.posterior_params", &[params]);
        let mut upload = |label, bytes: &[u8], usage| {
            let buffer = core.buffer(label, (bytes.len() as u64).max(4), usage);
            core.queue.write_buffer(&buffer, 0, bytes);
            buffer
        };
        let reward = upload(
            "softvi.task_reward",
            bytemuck::cast_slice(&evidence.reward),
            U::STORAGE | U::COPY_DST,
        );
        let terminal = upload(
            "softvi.task_terminal",
            bytemuck::cast_slice(&evidence.terminal),
            U::STORAGE | U::COPY_DST,
        );
        let joint = upload(
            "softvi.joint",
            bytemuck::cast_slice(log_prior),
            U::STORAGE | U::COPY_DST | U::COPY_SRC,
        );
        let posterior = core.buffer("softvi.posterior", rows, U::STORAGE | U::COPY_SRC);
        let observed = core.buffer("softvi.observed", observed_bytes, U::STORAGE | U::COPY_DST);
        let unused = [
            "softvi.step_weight",
            "softvi.pi_rows",
            "softvi.log_prior",
            "softvi.log_likelihood",
        ]
        .map(|label| stand_in(&mut core, label));
        let group = core.bind_group(
            "softvi.meta_posterior",
            &shader.group_layout,
            [
                uniforms.bind(0),
                unused[0].as_entire_binding(),
                unused[1].as_entire_binding(),
                unused[2].as_entire_binding(),
                unused[3].as_entire_binding(),
                joint.as_entire_binding(),
                posterior.as_entire_binding(),
                reward.as_entire_binding(),
                terminal.as_entire_binding(),
                observed.as_entire_binding(),
            ],
        );
        Ok(Self {
            core,
            pipelines,
            group,
            params,
            joint,
            posterior,
            observed,
        })
    }

    /// Adds one episode of every run (`[run][step]`, `steps` per run as made with, padded with
    /// [`ObservedStep::NONE`]) to the runs' joints; returns the posterior `[run][task]`.
    pub fn observe(&mut self, observed: &[ObservedStep]) -> Result<Vec<f32>> {
        let (runs, steps, b) = (
            self.params.runs,
            self.params.steps as usize,
            self.params.tasks,
        );
        ensure!(
            observed.len() == runs as usize * steps,
            "{} observed steps, not runs x steps = {runs} x {steps}",
            observed.len()
        );
        let core = &mut self.core;
        core.queue
            .write_buffer(&self.observed, 0, bytemuck::cast_slice(observed));
        let mut encoder = core.device.create_command_encoder(&Default::default());
        let [observe, normalize] = &self.pipelines;
        let groups = b.div_ceil(WORKGROUP_SIZE);
        core.dispatch(&mut encoder, observe, &self.group, [groups, runs, 1]);
        core.dispatch(&mut encoder, normalize, &self.group, [runs, 1, 1]);
        core.queue.submit([encoder.finish()]);
        super::wait(core.read_f32(&self.posterior, 0, (runs * b * 4) as u64))
    }

    /// The runs' log joints `[run][task]` as they stand.
    pub fn joint(&mut self) -> Result<Vec<f32>> {
        let bytes = (self.params.runs * self.params.tasks * 4) as u64;
        super::wait(self.core.read_f32(&self.joint, 0, bytes))
    }
}
