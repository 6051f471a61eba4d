//! The chunk driver both engines share: a batch of tasks solved as chunks that fit the buffer
//! limit, their outputs gathered in task order, then marked (NaN, -inf) as the CPU marks them.

use crate::engine::Instant;
use std::ops::Range;

use crate::error::{Context, Result};

use super::core::Iteration;
use crate::engine::options::{Horizon, Outputs, SolveOptions};
use crate::engine::schedule::{Precision, error_bound, final_status, span_bounds};
use crate::engine::solution::{
    Marks, MdpSolution, Occupancy, Solution, Status, TimeSteps, task_major,
};

/// What one chunk of tasks returns; arrays are `[...]` over the chunk's tasks only.
pub(crate) struct ChunkResult {
    /// `[task][state]`.
    pub values: Vec<f32>,
    /// pi and Q, `[task][state][action]`; `None` when not asked for or diverged.
    pub policy: Option<Vec<f32>>,
    pub q: Option<Vec<f32>>,
    /// With a forward pass, as asked for: `[t][task][state]` values, `[t][task][state][action]`
    /// policies and Q-values, and `[t][task][state]` occupancies (one entry for a discounted
    /// occupancy).
    pub step_values: Vec<Vec<f32>>,
    pub step_policy: Vec<Vec<f32>>,
    pub step_q: Vec<Vec<f32>>,
    pub occupancy: Vec<Vec<f32>>,
    /// The backward iteration.
    pub run: Iteration,
    /// The discounted occupancy's iteration, when it ran.
    pub occupancy_run: Option<Iteration>,
    /// `[task]`: the tasks that stopped by the span bound, whose values and Q are reported at
    /// the interval's centre (empty: none).
    pub span_bounded: Vec<bool>,
}

impl ChunkResult {
    /// The chunk's values after `run`, nothing else yet.
    pub fn new(values: Vec<f32>, run: Iteration) -> Self {
        Self {
            values,
            policy: None,
            q: None,
            step_values: Vec::new(),
            step_policy: Vec::new(),
            step_q: Vec::new(),
            occupancy: Vec::new(),
            run,
            occupancy_run: None,
            span_bounded: Vec::new(),
        }
    }
}

/// Every chunk's outputs in task order: arrays `[task][...]`, figures per task.
#[derive(Default)]
pub(crate) struct Gathered {
    pub values: Vec<f32>,
    pub policy: Option<Vec<f32>>,
    pub q: Option<Vec<f32>>,
    /// `[task][t][state]`, `[task][t][state][action]` (pi and Q), `[task][t][state]`.
    pub step_values: Vec<f32>,
    pub step_policy: Vec<f32>,
    pub step_q: Vec<f32>,
    pub occupancy: Vec<f32>,
    pub iterations: Vec<u32>,
    pub residual: Vec<f64>,
    pub error_bound: Vec<f64>,
    pub status: Vec<Status>,
    /// Of the discounted occupancy: most sweeps of any chunk, and per task.
    pub occupancy_iterations: u32,
    pub occupancy_residual: Vec<f64>,
    pub occupancy_status: Vec<Status>,
}

/// Solves `tasks` tasks as chunks of at most `per_chunk` with `solve` (given the chunk's task
/// range) and gathers the outputs; an error names the chunk (`what` of tasks .. on `adapter`).
pub(crate) async fn solve_in_chunks(
    tasks: usize,
    per_chunk: usize,
    (options, outputs): (&SolveOptions, Outputs),
    (what, adapter): (&str, &str),
    mut solve: impl AsyncFnMut(Range<usize>) -> Result<ChunkResult>,
) -> Result<Gathered> {
    let mut all = Gathered {
        policy: outputs.policy.then(Vec::new),
        q: outputs.q.then(Vec::new),
        ..Default::default()
    };
    for t0 in (0..tasks).step_by(per_chunk.max(1)) {
        let range = t0..(t0 + per_chunk).min(tasks);
        let chunk = (solve(range.clone()).await)
            .with_context(|| format!("{what} of tasks {range:?} on {adapter}"))?;
        all.push(chunk, range.len(), options);
    }
    Ok(all)
}

impl Gathered {
    /// Appends a chunk of `k` tasks.
    fn push(&mut self, mut chunk: ChunkResult, k: usize, options: &SolveOptions) {
        let span_bounded = |t: usize| chunk.span_bounded.get(t).copied().unwrap_or(false);
        // A span-bounded task's V moves to the centre of MacQueen's interval, as the CPU
        // solves return it: V + c, Q + gamma c (pi does not change).
        let states = chunk.values.len() / k.max(1);
        for (t, stats) in chunk.run.outcomes.last.iter().enumerate() {
            if let Some((shift, _)) = span_bounds(options, stats).filter(|_| span_bounded(t)) {
                for v in &mut chunk.values[t * states..(t + 1) * states] {
                    *v = (*v as f64 + shift) as f32;
                }
                if let Some(q) = chunk.q.as_mut() {
                    let per = q.len() / k.max(1);
                    for x in &mut q[t * per..(t + 1) * per] {
                        *x = (*x as f64 + options.gamma * shift) as f32;
                    }
                }
            }
        }
        self.values.extend_from_slice(&chunk.values);
        for (all, part) in [(&mut self.policy, chunk.policy), (&mut self.q, chunk.q)] {
            match (all.as_mut(), part) {
                (Some(all), Some(part)) => all.extend_from_slice(&part),
                _ => *all = None,
            }
        }
        for (all, part) in [
            (&mut self.step_values, &chunk.step_values),
            (&mut self.step_policy, &chunk.step_policy),
            (&mut self.step_q, &chunk.step_q),
            (&mut self.occupancy, &chunk.occupancy),
        ] {
            if !part.is_empty() {
                all.extend(task_major(part, k));
            }
        }
        let run = &chunk.run.outcomes;
        debug_assert_eq!(run.iterations.len(), k);
        self.iterations.extend(&run.iterations);
        self.status
            .extend(final_status(options, &run.verdict, &run.converged));
        self.residual
            .extend(run.last.iter().map(|s| s.max_abs_delta));
        self.error_bound.extend(
            (run.last.iter().enumerate())
                .map(|(t, s)| error_bound(options, Precision::F32, s, span_bounded(t))),
        );
        if let Some(run) = chunk.occupancy_run {
            self.occupancy_iterations = self.occupancy_iterations.max(run.sweeps);
            let run = run.outcomes;
            self.occupancy_status
                .extend(final_status(options, &run.verdict, &run.converged));
            self.occupancy_residual
                .extend(run.last.iter().map(|s| s.max_abs_delta));
        }
    }

    /// Whether any task diverged.
    pub fn diverged(&self) -> bool {
        self.status.contains(&Status::Diverged)
    }

    /// The solution over `states` states per task (`shape` = (height, width)) and `actions`
    /// actions, marked by `marks`; every step and the occupancy as `outputs` asks (none when
    /// a task diverged). `unreachable` per task; `start` when the solve began.
    pub fn into_solution(
        mut self,
        options: &SolveOptions,
        outputs: Outputs,
        marks: &Marks,
        (shape, actions): ((usize, usize), usize),
        unreachable: Vec<u32>,
        start: Instant,
    ) -> MdpSolution {
        let finite = matches!(options.horizon, Horizon::Finite(_));
        let horizon = options.horizon.finite_steps();
        let (diverged, tasks) = (self.diverged(), self.status.len());
        marks.values(&mut self.values, 1);
        for rows in [&mut self.policy, &mut self.q].into_iter().flatten() {
            marks.policy(rows, 1, actions);
        }
        let steps = (outputs.all_steps && finite && !diverged).then(|| {
            marks.values(&mut self.step_values, horizon + 1);
            let kept = |asked: bool, mut rows: Vec<f32>| {
                asked.then(|| {
                    marks.policy(&mut rows, horizon, actions);
                    rows
                })
            };
            TimeSteps {
                values: self.step_values,
                policy: kept(outputs.policy, self.step_policy),
                q: kept(outputs.q, self.step_q),
            }
        });
        let occupancy = (outputs.occupancy && !diverged).then(|| match finite {
            true => {
                marks.occupancy(&mut self.occupancy);
                Occupancy {
                    values: self.occupancy,
                    steps: horizon + 1,
                    iterations: horizon as u32,
                    residual: vec![0.0; tasks],
                    status: vec![Status::Horizon; tasks],
                }
            }
            false => Occupancy {
                values: self.occupancy,
                steps: 1,
                iterations: self.occupancy_iterations,
                residual: self.occupancy_residual,
                status: self.occupancy_status,
            },
        });
        MdpSolution {
            solution: Solution {
                height: shape.0,
                width: shape.1,
                action_count: actions,
                values: self.values,
                policy: if diverged { None } else { self.policy },
                q: if diverged { None } else { self.q },
                iterations: self.iterations,
                residual: self.residual,
                error_bound: self.error_bound,
                status: self.status,
                unreachable,
                seconds: start.elapsed().as_secs_f64(),
            },
            steps,
            occupancy,
        }
    }
}
