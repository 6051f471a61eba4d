//! The vector-Jacobian product of a general-MDP solve on the GPU: the f32 twin of
//! [`crate::engine::cpu::mdp_vjp_cpu_at`] (same math, same [`MdpCotangents`] and [`MdpVjp`]).
//! `shaders/mdp_vjp.wgsl` forms pi, the tilt and the cotangent on Q per state, pulls the
//! signed adjoint over the transposed transitions and forms the products; the stationary
//! adjoint `u = seed + gamma (pi W)^T u` is iterated by `shaders/mdp_occupancy.wgsl`'s weighted
//! sweeps (the discounted occupancy's, with a signed start scaled to a peak of 1) on the solves'
//! check schedule (`GpuCore::iterate`: residual checks that compare max |du| with tol and with
//! `RESIDUAL_FLOOR` max |u|, so no sign is assumed; freezing; rate extrapolation), then
//! `ln 0.1 / ln gamma` more sweeps that shrink the floor's error tenfold. Memory
//! on the device: `O(B S A + B nnz)`, plus the kept `u_t` `O(B T S)` of a finite horizon
//! (whose V_t come from one GPU solve that keeps every step), independent of the sweeps.

use bytemuck::{Pod, Zeroable};

use super::core::GpuCore;
use super::mdp_engine::{
    MdpEngine, MdpPipelineKey, MdpStage, OccupancyParams, WORKGROUP_SIZE, to_f32,
};
use crate::engine::cpu::mdp_vjp::check_vjp_inputs;
use crate::engine::cpu::{MdpCotangents, MdpVjp};
use crate::engine::gpu::bands::band_dispatch;
use crate::engine::gpu::core::{
    ExtrapolateBand, ExtrapolateParams, NOT_FROZEN, Window, bind, invocations,
};
use crate::engine::gpu::wait;
use crate::engine::layout::MdpInputs;
use crate::engine::options::{Backup, Horizon, Outputs, SolveOptions};
use crate::engine::schedule::Verdict;
use crate::engine::solution::{Status, check_mdp_solve};
use crate::error::{Result, ensure};
use crate::world::mdp::{TabularMdp, Transpose};

/// Uniform of `shaders/mdp_vjp.wgsl`. Keep in sync with `VjpParams` there (size checked by
/// tests/kernel_shader_layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct VjpParams {
    /// States S per task.
    pub states: u32,
    /// Actions A.
    pub actions: u32,
    /// Transitions per task (nonzeros).
    pub entries: u32,
    /// Workgroups along x of the dispatch.
    pub dispatch_x: u32,
    /// 32-bit words of fixed-state bits per task.
    pub fixed_words_per_task: u32,
    /// Where the (alpha, gamma) terms `[task][state][2]` start in the gradient array, in
    /// elements (after r_bar `[task][state][action]`).
    pub scalars_origin: u32,
    /// Discount.
    pub gamma: f32,
    /// Temperature (value units).
    pub alpha: f32,
    /// `alpha * ln(2)`.
    pub alpha_ln2: f32,
    /// `log2(e) / alpha`.
    pub log2e_over_alpha: f32,
    /// Padding to 16 bytes.
    pub _pad0: u32,
    /// Padding to 16 bytes.
    pub _pad1: u32,
}

/// `mdp_vjp.wgsl`'s entry points.
#[derive(Clone, Copy)]
enum VjpStage {
    Rows,
    Pull { write_weights: bool },
    Products,
}

impl MdpEngine {
    /// The VJP of this engine's solve of `mdp` at `options` (see
    /// [`crate::engine::cpu::mdp_vjp_cpu_at`] for the cotangents' layouts and the math), in
    /// f32 on the GPU, summed in f64 on the host. `values`: the fixed point V `[task][state]`
    /// of a solve of the same inputs (infinite horizon only) to take the products at; without
    /// it the engine solves first (a finite horizon always does, keeping every step's V).
    /// `sweeps` counts the adjoint's sweeps (T for a finite horizon). Every array is bound
    /// whole: the batch runs in chunks of tasks whose `[task][state][action]` rows (16 bytes
    /// each) and `[task][entry]` weights fit one storage binding; a single task that does not
    /// fit is refused with `LimitExceeded`.
    pub fn vjp(
        &mut self,
        mdp: &TabularMdp,
        options: &SolveOptions,
        cotangents: &MdpCotangents,
        values: Option<&[f64]>,
    ) -> Result<MdpVjp> {
        check_mdp_solve(mdp, options)?;
        let steps = check_vjp_inputs(mdp, options, cotangents, values)?;
        ensure!(
            !(options.backup == Backup::Optimistic && options.alpha == 0.0),
            "the optimistic backup's gradient needs alpha > 0"
        );
        let (b, s_n, a_n) = (mdp.tasks as u64, mdp.states as u64, mdp.actions as u64);
        let nnz = mdp.nonzeros() as u64;
        // Per task: the largest bound array, and the kept u_t of a finite horizon.
        let bound = (s_n * a_n * 16).max(nnz * 4).max(s_n * (a_n + 2) * 4);
        let kept = match options.horizon {
            Horizon::Finite(t) => (t as u64 + 1) * s_n * 4,
            Horizon::Infinite { .. } => 0,
        };
        let core = &self.core;
        core.ensure_bindable("the VJP's arrays of one task", bound)?;
        core.ensure_buffer("the adjoint of every step of one task", kept)?;
        let per_chunk = (core.max_binding / bound)
            .min(core.max_buffer / kept.max(1))
            .clamp(1, b) as usize;
        if per_chunk == mdp.tasks {
            return self.vjp_chunk(mdp, options, cotangents, values, steps);
        }
        // Chunks of whole tasks: each its own solve and adjoint; the tasks share only the
        // transitions, whose gradient is summed.
        let mut out = MdpVjp {
            reward: Vec::with_capacity(mdp.reward.len()),
            terminal_value: Vec::with_capacity(mdp.terminal_value.len()),
            probs: vec![0.0; mdp.nonzeros()],
            alpha: 0.0,
            gamma: 0.0,
            sweeps: 0,
        };
        let cut = |x: &Option<Vec<f64>>, range: &std::ops::Range<usize>| {
            x.as_ref().map(|x| {
                let per = x.len() / mdp.tasks;
                x[range.start * per..range.end * per].to_vec()
            })
        };
        for start in (0..mdp.tasks).step_by(per_chunk) {
            let range = start..(start + per_chunk).min(mdp.tasks);
            let part = mdp.shard(range.clone())?;
            let cot = MdpCotangents {
                values: cut(&cotangents.values, &range),
                q: cut(&cotangents.q, &range),
                policy: cut(&cotangents.policy, &range),
                all_steps: cotangents.all_steps,
            };
            let given =
                values.map(|v| v[range.start * mdp.states..range.end * mdp.states].to_vec());
            let got = self.vjp_chunk(&part, options, &cot, given.as_deref(), steps)?;
            out.reward.extend(got.reward);
            out.terminal_value.extend(got.terminal_value);
            for (total, x) in out.probs.iter_mut().zip(got.probs) {
                *total += x;
            }
            out.alpha += got.alpha;
            out.gamma += got.gamma;
            out.sweeps = out.sweeps.max(got.sweeps);
        }
        Ok(out)
    }

    /// [`MdpEngine::vjp`] of a batch whose arrays fit (checked inputs; `steps` of the horizon).
    fn vjp_chunk(
        &mut self,
        mdp: &TabularMdp,
        options: &SolveOptions,
        cotangents: &MdpCotangents,
        values: Option<&[f64]>,
        steps: usize,
    ) -> Result<MdpVjp> {
        let inputs = MdpInputs::new(mdp, options);
        let (b, s_n, a_n) = (mdp.tasks, mdp.states, mdp.actions);
        let nnz = mdp.nonzeros();
        // V_t of every step `[t][task][state]` (t = 0..T), or the fixed point.
        let forward = self.forward_values(mdp, options, &inputs, values)?;
        let run = VjpRun::new(self, &inputs, nnz)?;
        let cot_rows = |t: usize| -> Vec<[f32; 4]> {
            let pick = |array: &Option<Vec<f64>>, i: usize| match array {
                Some(x) if cotangents.all_steps || t == 0 => {
                    let x = x[i];
                    if x.is_nan() { 0.0 } else { x as f32 }
                }
                _ => 0.0,
            };
            let per = s_n * a_n;
            let per_task = if cotangents.all_steps {
                steps * per
            } else {
                per
            };
            (0..b * per)
                .map(|i| {
                    let (task, row) = (i / per, i % per);
                    let j = task * per_task + t * per + row;
                    [
                        pick(&cotangents.q, j),
                        pick(&cotangents.policy, j),
                        0.0,
                        0.0,
                    ]
                })
                .collect()
        };
        let cot_values = |t: usize| -> Vec<f32> {
            let per_task = if cotangents.all_steps {
                (steps + 1) * s_n
            } else {
                s_n
            };
            (0..b * s_n)
                .map(|i| match &cotangents.values {
                    Some(x) if cotangents.all_steps || t == 0 => {
                        let x = x[(i / s_n) * per_task + t * s_n + i % s_n];
                        if x.is_nan() { 0.0 } else { x as f32 }
                    }
                    _ => 0.0,
                })
                .collect()
        };
        let mut terminal_value = vec![0.0; b * s_n];
        let mut add_terminal = |u: &[f32]| {
            for (i, &x) in u.iter().enumerate() {
                if mdp.terminal[i] {
                    terminal_value[i] += x as f64;
                }
            }
        };
        let sweeps = match options.horizon {
            Horizon::Finite(_) => {
                // u_0..u_T stay on the device, read back once for the terminal states.
                let bytes = (steps as u64 + 1) * run.v_bytes;
                self.core
                    .ensure_buffer("the adjoint of every step", bytes)?;
                let usage = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
                let kept = self.core.buffer("softvi.vjp_steps", bytes, usage);
                let q = self.core.queue.clone();
                q.write_buffer(&run.u[0], 0, bytemuck::cast_slice(&cot_values(0)));
                for t in 0..steps {
                    let cot = cot_rows(t);
                    let step = (forward[t + 1].as_slice(), cot.as_slice());
                    run.step(self, t, step, &cot_values(t + 1), &kept);
                }
                let mut encoder = self.core.device.create_command_encoder(&Default::default());
                let last = run.v_bytes * steps as u64;
                encoder.copy_buffer_to_buffer(&run.u[steps % 2], 0, &kept, last, run.v_bytes);
                q.submit([encoder.finish()]);
                let all = wait(self.core.read_f32(&kept, 0, bytes))?;
                for u in all.chunks_exact(b * s_n) {
                    add_terminal(u);
                }
                steps as u32
            }
            Horizon::Infinite { .. } => {
                let (u, sweeps) =
                    run.stationary(self, &forward[0], &cot_rows(0), &cot_values(0), options)?;
                add_terminal(&u);
                sweeps
            }
        };
        let grads = wait(self.core.read_f32(&run.grads, 0, run.grads_bytes))?;
        let p_bar = wait(self.core.read_f32(&run.p_bar, 0, (b * nnz * 4) as u64))?;
        let rows_len = b * s_n * a_n;
        let mut probs = vec![0.0; nnz];
        for task_part in p_bar.chunks_exact(nnz.max(1)) {
            for (total, &x) in probs.iter_mut().zip(task_part) {
                *total += x as f64;
            }
        }
        let scalars = &grads[rows_len..];
        Ok(MdpVjp {
            reward: grads[..rows_len].iter().map(|&x| x as f64).collect(),
            terminal_value,
            probs,
            alpha: scalars.iter().step_by(2).map(|&x| x as f64).sum(),
            gamma: scalars.iter().skip(1).step_by(2).map(|&x| x as f64).sum(),
            sweeps,
        })
    }

    /// V_0..V_T of a finite horizon (`[t][task][state]`, f32 from one solve that keeps every
    /// step), or the fixed point: `given`, else this engine's solve; fixed states hold their
    /// value from the MDP.
    fn forward_values(
        &mut self,
        mdp: &TabularMdp,
        options: &SolveOptions,
        inputs: &MdpInputs,
        given: Option<&[f64]>,
    ) -> Result<Vec<Vec<f32>>> {
        let (b, s_n) = (mdp.tasks, mdp.states);
        let finite = matches!(options.horizon, Horizon::Finite(_));
        let outputs = Outputs {
            policy: false,
            q: false,
            all_steps: finite,
            occupancy: false,
        };
        let with_fixed = |v: Vec<f32>| -> Vec<f32> {
            (v.into_iter().enumerate())
                .map(|(i, x)| match inputs.fixed[i] {
                    true => inputs.v0[i] as f32,
                    false => x,
                })
                .collect()
        };
        if let (Some(given), false) = (given, finite) {
            return Ok(vec![with_fixed(to_f32(given))]);
        }
        let solved = self.solve(mdp, options, outputs)?;
        let status = &solved.solution.status;
        if let Some(task) = status
            .iter()
            .position(|s| !matches!(s, Status::Converged | Status::Horizon))
        {
            ensure!(
                false,
                "the forward solve of task {task} ended {}, so it has no gradient",
                status[task].name()
            );
        }
        match solved.steps {
            Some(steps) => {
                let t_n = steps.values.len() / (b * s_n);
                Ok((0..t_n)
                    .map(|t| {
                        let v = (0..b * s_n)
                            .map(|i| steps.values[((i / s_n) * t_n + t) * s_n + i % s_n])
                            .collect();
                        with_fixed(v)
                    })
                    .collect())
            }
            None => Ok(vec![with_fixed(solved.solution.values)]),
        }
    }
}

/// The device arrays of one VJP (pooled) and its bind groups.
struct VjpRun {
    tasks: usize,
    states: usize,
    actions: usize,
    entries: usize,
    gamma: f32,
    v_bytes: u64,
    dispatch: [u32; 3],
    /// V (V_{t+1}) `[task][state]`.
    v: wgpu::Buffer,
    /// `(c_Q, c_pi, -, -)` in, `(pi, tilt, g0, -)` out, `[task][state][action]`.
    rows: wgpu::Buffer,
    /// The adjoint ping-pong pair `[task][state]`.
    u: [wgpu::Buffer; 2],
    /// r_bar `[task][state][action]`, then the (alpha, gamma) terms `[task][state][2]`.
    grads: wgpu::Buffer,
    grads_bytes: u64,
    /// P_bar per task and forward entry, `[task][entry]`.
    p_bar: wgpu::Buffer,
    /// pi W per transposed entry, `[task][entry]`, for the stationary sweeps.
    weights: wgpu::Buffer,
    /// `rows` and `products` reading u[p] (`forward[p]`); `pull` from u[p] into u[1 - p]
    /// (`pull[p]`), writing `weights` with `WRITE_WEIGHTS`.
    forward: [wgpu::BindGroup; 2],
    pull: [wgpu::BindGroup; 2],
    /// The transposed transitions, for `mdp_occupancy`.
    incoming: [wgpu::Buffer; 3],
    optimistic: bool,
    hard_max: bool,
}

impl VjpRun {
    /// Uploads the MDP and clears the gradients.
    fn new(engine: &mut MdpEngine, inputs: &MdpInputs, nnz: usize) -> Result<Self> {
        use wgpu::BufferUsages as U;
        let mdp = inputs.mdp;
        let (b, s_n, a_n) = (mdp.tasks, mdp.states, mdp.actions);
        let wpt = s_n.div_ceil(32);
        let core = &mut engine.core;
        let (dispatch, _) = band_dispatch(s_n, b, core.max_workgroups)?;
        let (alpha_ln2, log2e_over_alpha) = super::temperature_uniforms(inputs.alpha);
        let params = VjpParams {
            states: s_n as u32,
            actions: a_n as u32,
            entries: nnz as u32,
            dispatch_x: dispatch[0].max(1),
            fixed_words_per_task: wpt as u32,
            scalars_origin: (b * s_n * a_n) as u32,
            gamma: inputs.gamma as f32,
            alpha: inputs.alpha as f32,
            alpha_ln2,
            log2e_over_alpha,
            _pad0: 0,
            _pad1: 0,
        };
        let params = core.uniforms("softvi.vjp_params", &[params]);
        let upload = |core: &mut GpuCore, label, bytes: &[u8]| {
            let size = (bytes.len() as u64).max(4);
            let buffer = core.buffer(label, size, U::STORAGE | U::COPY_DST);
            core.queue.write_buffer(&buffer, 0, bytes);
            buffer
        };
        let indptr = upload(
            core,
            "softvi.indptr",
            bytemuck::cast_slice(&mdp.csr().indptr),
        );
        let successors = upload(
            core,
            "softvi.successors",
            bytemuck::cast_slice(&mdp.csr().indices),
        );
        let probs = upload(
            core,
            "softvi.probs",
            bytemuck::cast_slice(&to_f32(&mdp.csr().probs)),
        );
        let Transpose {
            indptr: t_indptr,
            rows: t_rows,
            probs: t_probs,
        } = mdp.transpose();
        let incoming = [
            upload(
                core,
                "softvi.incoming_indptr",
                bytemuck::cast_slice(&t_indptr),
            ),
            upload(core, "softvi.incoming", bytemuck::cast_slice(&t_rows)),
            upload(
                core,
                "softvi.incoming_probs",
                bytemuck::cast_slice(&to_f32(&t_probs)),
            ),
        ];
        let reward = upload(
            core,
            "softvi.reward",
            bytemuck::cast_slice(&to_f32(&mdp.reward)),
        );
        let mut bits = vec![0u32; b * wpt];
        for (i, _) in inputs.fixed.iter().enumerate().filter(|(_, f)| **f) {
            let (task, state) = (i / s_n, i % s_n);
            bits[task * wpt + state / 32] |= 1 << (state % 32);
        }
        let fixed = upload(core, "softvi.fixed_bits", bytemuck::cast_slice(&bits));
        let usage = U::STORAGE | U::COPY_SRC | U::COPY_DST;
        let v_bytes = (b * s_n * 4) as u64;
        let v = core.buffer("softvi.vjp_v", v_bytes, usage);
        let rows = core.buffer("softvi.vjp_rows", v_bytes * a_n as u64 * 4, usage);
        let u = [
            core.buffer("softvi.vjp_u_a", v_bytes, usage),
            core.buffer("softvi.vjp_u_b", v_bytes, usage),
        ];
        let grads_bytes = v_bytes * (a_n as u64 + 2);
        let grads = core.buffer("softvi.vjp_grads", grads_bytes, usage);
        let entry_bytes = ((b * nnz * 4) as u64).max(4);
        let p_bar = core.buffer("softvi.vjp_probs", entry_bytes, usage);
        let weights = core.buffer("softvi.vjp_weights", entry_bytes, usage);
        let mut encoder = core.device.create_command_encoder(&Default::default());
        encoder.clear_buffer(&grads, 0, None);
        encoder.clear_buffer(&p_bar, 0, None);
        core.queue.submit([encoder.finish()]);
        let layout = &engine.mdp_vjp.group_layout;
        fn whole(x: &wgpu::Buffer) -> wgpu::BindingResource<'_> {
            x.as_entire_binding()
        }
        let forward = |p: usize| {
            core.bind_group(
                "softvi.mdp_vjp",
                layout,
                [
                    params.bind(0),
                    whole(&indptr),
                    whole(&successors),
                    whole(&probs),
                    whole(&reward),
                    whole(&fixed),
                    whole(&v),
                    whole(&rows),
                    whole(&u[p]),
                    bind(&grads, 0, grads_bytes),
                    bind(&p_bar, 0, entry_bytes),
                ],
            )
        };
        let forward = [forward(0), forward(1)];
        let pull = |p: usize| {
            core.bind_group(
                "softvi.mdp_vjp_pull",
                layout,
                [
                    params.bind(0),
                    whole(&incoming[0]),
                    whole(&incoming[1]),
                    whole(&incoming[2]),
                    whole(&reward),
                    whole(&fixed),
                    whole(&v),
                    whole(&rows),
                    whole(&u[p]),
                    whole(&u[1 - p]),
                    bind(&weights, 0, entry_bytes),
                ],
            )
        };
        let pull = [pull(0), pull(1)];
        Ok(Self {
            tasks: b,
            states: s_n,
            actions: a_n,
            entries: nnz,
            gamma: inputs.gamma as f32,
            v_bytes,
            dispatch,
            v,
            rows,
            u,
            grads,
            grads_bytes,
            p_bar,
            weights,
            forward,
            pull,
            incoming,
            optimistic: inputs.backup == Backup::Optimistic,
            hard_max: inputs.alpha == 0.0,
        })
    }

    /// The pipeline of `stage`.
    fn pipeline(&self, engine: &mut MdpEngine, stage: VjpStage) -> wgpu::ComputePipeline {
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let (entry, write_weights) = match stage {
            VjpStage::Rows => ("mdp_vjp_rows", false),
            VjpStage::Pull { write_weights } => ("mdp_vjp_pull", write_weights),
            VjpStage::Products => ("mdp_vjp_products", false),
        };
        let constants = [
            ("OPTIMISTIC", flag(self.optimistic)),
            ("HARD_MAX", flag(self.hard_max)),
            ("WRITE_WEIGHTS", flag(write_weights)),
        ];
        engine.core.pipeline(&engine.mdp_vjp, entry, &constants)
    }

    /// Uploads V and the cotangents on Q and pi, and records `rows` then `products` of u[p].
    fn rows_and_products(
        &self,
        engine: &mut MdpEngine,
        encoder: &mut wgpu::CommandEncoder,
        (v, cot_rows): (&[f32], &[[f32; 4]]),
        products: Option<usize>,
    ) {
        let q = &engine.core.queue;
        q.write_buffer(&self.v, 0, bytemuck::cast_slice(v));
        q.write_buffer(&self.rows, 0, bytemuck::cast_slice(cot_rows));
        let rows = self.pipeline(engine, VjpStage::Rows);
        engine
            .core
            .dispatch(encoder, &rows, &self.forward[0], self.dispatch);
        if let Some(p) = products {
            let products = self.pipeline(engine, VjpStage::Products);
            engine
                .core
                .dispatch(encoder, &products, &self.forward[p], self.dispatch);
        }
    }

    /// Finite-horizon step `t`, u_t in `u[t % 2]`: the products of u_t at V_{t+1} (`v`), and
    /// u_{t+1} = `c_next` + gamma W_t^T (g0_t + pi_t u_t) into the other buffer; u_t is copied
    /// to slot t of `kept` (`[t][task][state]`).
    fn step(
        &self,
        engine: &mut MdpEngine,
        t: usize,
        (v, cot_rows): (&[f32], &[[f32; 4]]),
        c_next: &[f32],
        kept: &wgpu::Buffer,
    ) {
        let p = t % 2;
        let q = engine.core.queue.clone();
        q.write_buffer(&self.u[1 - p], 0, bytemuck::cast_slice(c_next));
        let device = engine.core.device.clone();
        let mut encoder = device.create_command_encoder(&Default::default());
        self.rows_and_products(engine, &mut encoder, (v, cot_rows), Some(p));
        let pull = self.pipeline(
            engine,
            VjpStage::Pull {
                write_weights: false,
            },
        );
        engine
            .core
            .dispatch(&mut encoder, &pull, &self.pull[p], self.dispatch);
        let slot = self.v_bytes * t as u64;
        encoder.copy_buffer_to_buffer(&self.u[p], 0, kept, slot, self.v_bytes);
        q.submit([encoder.finish()]);
    }

    /// The stationary adjoint at the fixed point `v`: its seed `c_V + gamma W^T g0` by one
    /// pull from u = 0 (writing the weights pi W), then `mdp_occupancy`'s weighted sweeps from
    /// it on the solves' check schedule (`GpuCore::iterate`: checks and freezing on the GPU,
    /// rate extrapolation), each task's seed scaled to a peak of 1 so that `options`' tol is
    /// relative to it (as the discounted occupancy's start); then the products. Returns u
    /// `[task][state]` and the sweeps.
    fn stationary(
        &self,
        engine: &mut MdpEngine,
        v: &[f32],
        cot_rows: &[[f32; 4]],
        c_v: &[f32],
        options: &SolveOptions,
    ) -> Result<(Vec<f32>, u32)> {
        use wgpu::BufferUsages as U;
        let (b, s_n, v_bytes) = (self.tasks, self.states, self.v_bytes);
        let q = engine.core.queue.clone();
        let zeros = vec![0.0f32; b * s_n];
        q.write_buffer(&self.u[0], 0, bytemuck::cast_slice(&zeros));
        q.write_buffer(&self.u[1], 0, bytemuck::cast_slice(c_v));
        let device = engine.core.device.clone();
        let mut encoder = device.create_command_encoder(&Default::default());
        self.rows_and_products(engine, &mut encoder, (v, cot_rows), None);
        let pull = self.pipeline(
            engine,
            VjpStage::Pull {
                write_weights: true,
            },
        );
        engine
            .core
            .dispatch(&mut encoder, &pull, &self.pull[0], self.dispatch);
        q.submit([encoder.finish()]);
        // The seed, scaled per task to a peak of 1 (an all-zero seed keeps scale 1).
        let mut seed = wait(engine.core.read_f32(&self.u[1], 0, v_bytes))?;
        let scales: Vec<f32> = (seed.chunks_exact_mut(s_n))
            .map(|task| {
                let peak = task.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                let scale = if peak > 0.0 && peak.is_finite() {
                    peak
                } else {
                    1.0
                };
                task.iter_mut().for_each(|x| *x /= scale);
                scale
            })
            .collect();
        let core = &mut engine.core;
        let start = core.buffer("softvi.vjp_seed", v_bytes, U::STORAGE | U::COPY_DST);
        q.write_buffer(&start, 0, bytemuck::cast_slice(&seed));
        q.write_buffer(&self.u[0], 0, bytemuck::cast_slice(&seed));
        let groups_per_task = (s_n as u32).div_ceil(WORKGROUP_SIZE);
        let checks = core.checks(b, groups_per_task, &[self.dispatch], options, &[])?;
        let params = OccupancyParams {
            states: s_n as u32,
            actions: self.actions as u32,
            state_count: s_n as u32,
            dispatch_x: self.dispatch[0].max(1),
            groups_per_task,
            entries: self.entries as u32,
            gamma: self.gamma,
            ..Default::default()
        };
        let uniforms = core.uniforms("softvi.vjp_occupancy_params", &[params]);
        let group = |p: usize| {
            core.bind_group(
                "softvi.mdp_occupancy",
                &engine.mdp_occupancy.group_layout,
                [
                    uniforms.bind(0),
                    self.incoming[0].as_entire_binding(),
                    self.incoming[1].as_entire_binding(),
                    self.incoming[2].as_entire_binding(),
                    // `policy`: not read by the weighted sweeps.
                    self.incoming[2].as_entire_binding(),
                    self.u[p].as_entire_binding(),
                    self.u[1 - p].as_entire_binding(),
                    checks.partials.as_entire_binding(),
                    start.as_entire_binding(),
                    self.weights.as_entire_binding(),
                    checks.frozen.as_entire_binding(),
                ],
            )
        };
        let groups = [[group(0), group(1)]];
        // The jump and its rollback over every state (none fixed: u is iterated everywhere).
        let wpt = s_n.div_ceil(32);
        let no_fixed = core.buffer(
            "softvi.no_fixed_bits",
            (b * wpt * 4) as u64,
            U::STORAGE | U::COPY_DST,
        );
        let backup = core.buffer("softvi.vjp_backup", v_bytes, U::STORAGE);
        let mut encoder = core.device.create_command_encoder(&Default::default());
        encoder.clear_buffer(&no_fixed, 0, None);
        q.submit([encoder.finish()]);
        let whole = |bytes: u64| Window {
            origin: 0,
            offset: 0,
            size: bytes,
        };
        let band = ExtrapolateBand {
            params: ExtrapolateParams {
                values_per_task: s_n as u32,
                count: s_n as u32,
                dispatch_x: self.dispatch[0].max(1),
                invocations: invocations(self.dispatch),
                fixed_words_per_task: wpt as u32,
                ..Default::default()
            },
            fixed: whole((b * wpt * 4) as u64),
            prev: whole(v_bytes),
            values: whole(v_bytes),
        };
        let extrapolate_groups = match options.uses_extrapolation() {
            true => core.extrapolate_groups(
                "softvi.vjp_extrapolate_params",
                &[band],
                &no_fixed,
                &self.u,
                &backup,
                &checks.extrapolation,
            ),
            false => Vec::new(),
        };
        let key = MdpPipelineKey {
            stage: MdpStage::Occupancy,
            optimistic: false,
            hard_max: false,
            write_residual: false,
            add_start: true,
            weighted: true,
            actions: self.actions as u32,
            write_q: false,
            freeze: false,
        };
        let run = engine.iterate_pull(key, &checks, &groups, &extrapolate_groups, options)?;
        // The polishing sweeps below, unchecked (the pipeline comes from the cache).
        let sweep = engine.pipeline(key);
        let core = &mut engine.core;
        match &run.outcomes.verdict {
            Verdict::Converged => {}
            Verdict::Diverged(tasks) => {
                ensure!(
                    false,
                    "the GPU adjoint of tasks {tasks:?} grew without bound"
                )
            }
            Verdict::Continue => {
                let max_iters = match options.horizon {
                    Horizon::Infinite { max_iters, .. } => max_iters,
                    Horizon::Finite(t) => t,
                };
                ensure!(
                    false,
                    "the GPU adjoint did not settle within max_iters = {max_iters} sweeps"
                )
            }
        }
        // The checks stop a task at f32's floor, a sweep changing u by 1e-6 of max |u|: up to
        // 1e-6 / (1 - gamma) of it from the fixed point, which a gradient summed over many
        // states of both signs (alpha's, gamma's) amplifies. Every task then runs the sweeps
        // that shrink that error tenfold (ln 0.1 / ln gamma, at most 4,096).
        let polish = ((0.1f64.ln() / options.gamma.ln()).ceil() as u32).clamp(1, 4096);
        q.write_buffer(
            &checks.frozen,
            0,
            bytemuck::cast_slice(&vec![NOT_FROZEN; b]),
        );
        let mut encoder = core.device.create_command_encoder(&Default::default());
        for i in 0..polish {
            let parity = ((run.sweeps + i) % 2) as usize;
            core.dispatch(&mut encoder, &sweep, &groups[0][parity], self.dispatch);
        }
        q.submit([encoder.finish()]);
        let sweeps = run.sweeps + polish;
        // u at its scale, where the products read it.
        let last = (sweeps % 2) as usize;
        let mut u = wait(core.read_f32(&self.u[last], 0, v_bytes))?;
        for (task, scale) in u.chunks_exact_mut(s_n).zip(&scales) {
            task.iter_mut().for_each(|x| *x *= scale);
        }
        q.write_buffer(&self.u[last], 0, bytemuck::cast_slice(&u));
        let mut encoder = core.device.create_command_encoder(&Default::default());
        let products = self.pipeline(engine, VjpStage::Products);
        engine
            .core
            .dispatch(&mut encoder, &products, &self.forward[last], self.dispatch);
        q.submit([encoder.finish()]);
        Ok((u, sweeps))
    }
}
