//! What a run reports: the settings and results every summary.json carries, and the
//! progress line on stderr while it solves.

use std::time::Instant;

use serde_json::json;

use softvi::engine::options::{Horizon, SolveOptions};
use softvi::engine::schedule::Progress;
use softvi::engine::solution::Solution;

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
    });
    if let (Some(all), serde_json::Value::Object(settings)) = (summary.as_object_mut(), settings) {
        all.extend(settings);
    }
}

/// Adds the settings ([`add_settings_json`]) and per-task results every `summary.json` of a
/// solve carries to `summary`.
pub(super) fn add_run_json(
    summary: &mut serde_json::Value,
    options: &SolveOptions,
    solution: &Solution,
    seconds: f64,
) {
    add_settings_json(summary, options);
    let run = json!({
        "tasks": solution.iterations.len(),
        "iterations": solution.iterations,
        "residual": solution.residual,
        "status": solution.status.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "unreachable": solution.unreachable,
        "solve_seconds": solution.seconds,
        "seconds": seconds,
    });
    if let (Some(all), serde_json::Value::Object(run)) = (summary.as_object_mut(), run) {
        all.extend(run);
    }
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
