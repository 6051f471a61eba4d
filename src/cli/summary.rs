//! What a run reports: the settings and results every summary.json carries, and the
//! progress line on stderr while it solves.

use std::time::Instant;

use serde_json::json;

use softvi::engine::options::{Horizon, SolveOptions};
use softvi::engine::schedule::{Progress, RESIDUAL_FLOOR, RESIDUAL_FLOOR_F64};
use softvi::engine::solution::{Real, Solution, Status};

/// A one-line progress display on stderr: sweeps, residual, sweeps/s and an ETA (from the
/// residual's decay rate for an infinite horizon). Shown only when stderr is a terminal, the
/// user did not ask for quiet, and the solve has run for over a second; erased at the end.
pub(super) struct ProgressLine {
    enabled: bool,
    start: Instant,
    last_print: Option<Instant>,
    previous: Option<(u32, f64)>,
    shown: bool,
}

impl ProgressLine {
    pub(super) fn new(quiet: bool) -> Self {
        use std::io::IsTerminal;
        Self {
            enabled: !quiet && std::io::stderr().is_terminal(),
            start: Instant::now(),
            last_print: None,
            previous: None,
            shown: false,
        }
    }

    pub(super) fn update(&mut self, p: &Progress) {
        if !self.enabled {
            return;
        }
        let remaining = match (p.tol, self.previous) {
            (Some(tol), Some((sweeps, residual)))
                if p.sweeps > sweeps && residual > 0.0 && p.residual > tol =>
            {
                let rate = (p.residual / residual).powf(1.0 / (p.sweeps - sweeps) as f64);
                (rate < 1.0).then(|| {
                    ((tol / p.residual).ln() / rate.ln()).min((p.budget - p.sweeps) as f64)
                })
            }
            (None, _) => Some((p.budget - p.sweeps) as f64),
            _ => None,
        };
        self.previous = Some((p.sweeps, p.residual));
        let elapsed = self.start.elapsed().as_secs_f64();
        if elapsed < 1.0
            || self
                .last_print
                .is_some_and(|t| t.elapsed().as_secs_f64() < 0.2)
        {
            return;
        }
        let per_second = p.sweeps as f64 / elapsed;
        let eta = remaining.map_or("?".to_owned(), |r| {
            format!("{:.0} s", r / per_second.max(1e-9))
        });
        eprint!(
            "\r\x1b[K{} sweeps  residual {:.3e}  {per_second:.1} sweeps/s  ETA {eta}",
            p.sweeps, p.residual
        );
        self.last_print = Some(Instant::now());
        self.shown = true;
    }

    pub(super) fn finish(&mut self) {
        if self.shown {
            eprint!("\r\x1b[K");
        }
    }
}

/// Adds the solve settings every `summary.json` carries to `summary`.
pub(super) fn add_settings_json(summary: &mut serde_json::Value, options: &SolveOptions) {
    let (horizon, tol, max_iters) = match options.horizon {
        Horizon::Finite(t) => (Some(t), None, None),
        Horizon::Infinite { tol, max_iters } => (None, Some(tol), Some(max_iters)),
    };
    let settings = json!({
        "alpha": options.alpha,
        "gamma": options.gamma,
        "backup": options.backup.name(),
        "horizon": horizon,
        "tol": tol,
        "max_iters": max_iters,
        "extrapolation": options.uses_extrapolation(),
        "method": options.method.name(),
        "evaluations_per_improvement": options.method.evaluations(),
    });
    if let (Some(all), serde_json::Value::Object(settings)) = (summary.as_object_mut(), settings) {
        all.extend(settings);
    }
}

/// Adds the settings ([`add_settings_json`]) and per-task results every `summary.json` of a
/// solve carries to `summary`.
pub(super) fn add_run_json<T: Real>(
    summary: &mut serde_json::Value,
    options: &SolveOptions,
    solution: &Solution<T>,
    seconds: f64,
) {
    add_settings_json(summary, options);
    let run = json!({
        "tasks": solution.iterations.len(),
        // Full backups (modified policy iteration's improvements) and, between them, the
        // policy-evaluation sweeps (0 for value iteration).
        "iterations": solution.iterations,
        "evaluation_sweeps": solution.iterations.iter()
            .map(|&i| options.method.evaluation_sweeps(i)).collect::<Vec<_>>(),
        "residual": solution.residual,
        // inf (gamma = 1: no bound) is written as null.
        "error_bound": solution.error_bound,
        // Why a converged task's bound exceeds tol: its precision floor came first.
        "precision_limited": precision_limited(options, solution),
        "status": solution.status.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "unreachable": solution.unreachable,
        "solve_seconds": solution.seconds,
        "seconds": seconds,
    });
    if let (Some(all), serde_json::Value::Object(run)) = (summary.as_object_mut(), run) {
        all.extend(run);
    }
}

/// The largest error bound of a solve's tasks (`Solution::error_bound`), for its report line.
pub(super) fn error_bound_line<T: Real>(options: &SolveOptions, solution: &Solution<T>) -> String {
    let worst = solution.error_bound.iter().copied().fold(0.0, f64::max);
    match options.horizon {
        Horizon::Finite(_) => "exact up to rounding (finite horizon)".to_string(),
        Horizon::Infinite { .. } if options.gamma >= 1.0 => {
            "none at gamma = 1 (tol bounds the last residual only)".to_string()
        }
        Horizon::Infinite { .. } => format!("max |V - V*| <= {worst:.3e}"),
    }
}

/// Per task, whether it converged with an error bound above `tol`: its residual reached the
/// engine's precision floor first (f32 at a small tol, large |V| or gamma near 1). Never at
/// gamma = 1 (no bound) or a finite horizon.
pub(super) fn precision_limited<T: Real>(
    options: &SolveOptions,
    solution: &Solution<T>,
) -> Vec<bool> {
    let tol = match options.horizon {
        Horizon::Infinite { tol, .. } if options.gamma < 1.0 => tol,
        _ => f64::INFINITY,
    };
    (solution.status.iter().zip(&solution.error_bound))
        .map(|(&s, &bound)| s == Status::Converged && bound > tol)
        .collect()
}

/// Why some converged task's error bound exceeds `tol`, when one does
/// ([`precision_limited`]).
pub(super) fn error_bound_note<T: Real>(
    options: &SolveOptions,
    solution: &Solution<T>,
) -> Option<String> {
    let limited = precision_limited(options, solution);
    let worst = (limited.iter().zip(&solution.error_bound))
        .filter(|(l, _)| **l)
        .map(|(_, &b)| b)
        .fold(0.0, f64::max);
    let count = limited.iter().filter(|&&l| l).count();
    (count > 0).then(|| {
        format!(
            "{count} converged task(s) stopped at the engine's precision floor (f32: residual \
             <= {RESIDUAL_FLOOR:e} max |V|; f64: {RESIDUAL_FLOOR_F64:e}) before the error \
             bound reached tol: bound up to {worst:.3e}; the f64 CPU reference (--backend cpu) \
             resolves smaller tolerances"
        )
    })
}

/// Why a solve diverged, for its error line: undiscounted without a horizon, the values grow
/// without bound (no finite solution); otherwise they passed `VALUE_LIMIT`, beyond which
/// float32 outputs cannot hold them.
pub(super) fn divergence_reason(options: &SolveOptions) -> String {
    if options.excludes_unreachable() {
        "values grow without bound: with gamma = 1 and no horizon the entropy bonus \
         alpha*log|A| (or a reward >= 0 for staying) outweighs the step costs. Lower --alpha, \
         raise the costs, or use --gamma < 1 or --horizon T"
            .into()
    } else {
        format!(
            "values passed {:e}, too large for the float32 outputs (alpha {} and the rewards \
             set their scale: about max(|r|, alpha*log|A|) / (1 - gamma)). Lower --alpha or \
             scale the rewards down",
            softvi::engine::schedule::VALUE_LIMIT,
            match options.alpha {
                a if a != 0.0 && !(1e-4..1e6).contains(&a) => format!("{a:e}"),
                a => a.to_string(),
            }
        )
    }
}

/// `path` made absolute (symbolic links resolved when it exists) as summary.json records it,
/// or an error naming `flag` when it is not UTF-8: JSON holds text, and a lossy copy would
/// name another file.
pub(super) fn path_json(path: &std::path::Path, flag: &str) -> anyhow::Result<serde_json::Value> {
    let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    match absolute.to_str() {
        Some(text) => Ok(serde_json::Value::from(text)),
        None => anyhow::bail!(
            "{flag} {}: the path is not valid UTF-8, and summary.json records it; rename it \
             (or a folder above it)",
            path.display()
        ),
    }
}
