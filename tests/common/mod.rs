//! Helpers shared by the integration tests: the GPU engine (or a loud skip), seeded random
//! worlds, and comparisons with stated tolerances.
#![allow(dead_code)]

pub mod cli;

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use softvi::engine::cpu::{MdpCotangents, MdpVjp, solve_mdp_cpu_f64};
use softvi::engine::schedule::keep_going;
use softvi::io::npy::NpyValues;
use softvi::world::mdp::{Csr, TabularMdp, Transitions};
use softvi::{
    ActionSet, Connectivity, EngineOptions, GpuContext, Grid, GridEngine, GridProblem, GridTask,
    Horizon, MdpSolution, MoveCost, Outputs, Solution, SolveOptions,
};
use std::collections::HashMap;

/// The GPU context shared by a test binary, or `None` (with a loud message) when no adapter
/// exists and `SOFTVI_REQUIRE_GPU` is not `1`; with it set, a missing adapter fails the test.
pub fn gpu() -> Option<&'static GpuContext> {
    static CONTEXT: OnceLock<Option<GpuContext>> = OnceLock::new();
    CONTEXT
        .get_or_init(|| match GpuContext::from_env() {
            Ok(ctx) => {
                eprintln!("GPU tests run on {}", ctx.adapter_label());
                Some(ctx)
            }
            Err(e) => {
                if std::env::var("SOFTVI_REQUIRE_GPU").as_deref() == Ok("1") {
                    panic!("SOFTVI_REQUIRE_GPU=1 but no adapter: {e:#}");
                }
                eprintln!("\n*** SKIPPING GPU TESTS: {e:#} ***\n");
                None
            }
        })
        .as_ref()
}

/// A context on every adapter of every backend (Vulkan and GL llvmpipe here), or `None` (with
/// a loud message) when there are fewer than two and `SOFTVI_REQUIRE_GPU` is not `1`; with it
/// set, fewer than two adapters fail the test.
pub fn every_adapter() -> Option<Vec<GpuContext>> {
    let adapters = GpuContext::adapters(softvi::wgpu::Backends::all()).unwrap();
    if adapters.len() < 2 {
        assert!(
            std::env::var("SOFTVI_REQUIRE_GPU").as_deref() != Ok("1"),
            "SOFTVI_REQUIRE_GPU=1 but only {} adapter(s): install mesa-vulkan-drivers for a second",
            adapters.len()
        );
        eprintln!(
            "\n*** SKIPPING SEVERAL-ADAPTER TEST: {} adapter(s) ***\n",
            adapters.len()
        );
        return None;
    }
    Some(
        adapters
            .into_iter()
            .map(|a| GpuContext::from_adapter(a).unwrap())
            .collect(),
    )
}

/// A GPU engine with the adapter's limits, shared by a test binary (engines are reused
/// across solves, as in real use).
pub fn with_engine<R>(f: impl FnOnce(&mut GridEngine) -> R) -> Option<R> {
    static ENGINE: OnceLock<Option<Mutex<GridEngine>>> = OnceLock::new();
    let engine = ENGINE.get_or_init(|| gpu().map(|ctx| Mutex::new(GridEngine::new(ctx).unwrap())));
    engine
        .as_ref()
        .map(|m| f(&mut m.lock().unwrap_or_else(|e| e.into_inner())))
}

/// A GPU engine with lowered size limits, forcing banding or chunking.
pub fn small_engine(options: EngineOptions) -> Option<GridEngine> {
    gpu().map(|ctx| GridEngine::with_options(ctx, options).unwrap())
}

/// A seeded random grid with about `blocked` of its cells blocked.
pub fn random_grid(height: usize, width: usize, blocked: f64, rng: &mut StdRng) -> Grid {
    let free = (0..height * width)
        .map(|_| !rng.random_bool(blocked))
        .collect();
    Grid {
        height,
        width,
        free,
    }
}

/// A problem with `tasks` tasks on a random grid: distinct random goals (1 or 2 each) and,
/// for odd tasks, a random reward map in [-0.5, 0.5].
pub fn random_problem(
    height: usize,
    width: usize,
    tasks: usize,
    connectivity: Connectivity,
    stay: bool,
    slip: f64,
    seed: u64,
) -> GridProblem {
    let mut rng = StdRng::seed_from_u64(seed);
    let grid = random_grid(height, width, 0.2, &mut rng);
    let free: Vec<usize> = (0..grid.cells()).filter(|&c| grid.free[c]).collect();
    let tasks = (0..tasks)
        .map(|t| {
            let goals = (0..1 + t % 2)
                .map(|_| free[rng.random_range(0..free.len())])
                .collect();
            let reward = (t % 2 == 1).then(|| {
                (0..grid.cells())
                    .map(|_| rng.random_range(-0.5f32..0.5))
                    .collect()
            });
            GridTask { goals, reward }
        })
        .collect();
    GridProblem {
        grid,
        actions: ActionSet { connectivity, stay },
        slip,
        move_cost: MoveCost::default(),
        tasks,
    }
}

/// Largest |a - b| / max(1, |b|) over finite entries; entries must agree on NaN and on
/// infinities.
pub fn max_relative_error(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0.0f64;
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        if y.is_nan() || x.is_nan() {
            assert!(
                x.is_nan() && y.is_nan(),
                "entry {i}: {x} vs {y} (NaN mismatch)"
            );
            continue;
        }
        if y.is_infinite() || x.is_infinite() {
            assert_eq!(x, y, "entry {i}: infinity mismatch");
            continue;
        }
        let err = (x as f64 - y as f64).abs() / (y as f64).abs().max(1.0);
        worst = worst.max(err);
    }
    worst
}

/// Largest absolute difference over entries that are finite in both (NaN/inf must agree).
pub fn max_abs_error(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0.0f64;
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        if !x.is_finite() || !y.is_finite() {
            assert!(
                (x.is_nan() && y.is_nan()) || x == y,
                "entry {i}: {x} vs {y} (non-finite mismatch)"
            );
            continue;
        }
        worst = worst.max((x as f64 - y as f64).abs());
    }
    worst
}

/// Value of `task` at (row, col).
pub fn value_at(solution: &Solution, task: usize, row: usize, col: usize) -> f32 {
    let cells = solution.height * solution.width;
    solution.values[task * cells + row * solution.width + col]
}

/// `tests/data`: the files the tests read, kept in the repository. A missing folder fails the
/// test: no data, no pass.
pub fn data_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    assert!(
        dir.is_dir(),
        "test data missing: {} is not a folder",
        dir.display()
    );
    dir
}

/// `tests/data/maps`: the MovingAI maps the tests read, kept in the repository (see its
/// README.md for their source). A missing folder fails the test: no data, no pass.
pub fn maps_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/maps");
    assert!(
        dir.is_dir(),
        "test data missing: {} is not a folder (the MovingAI maps belong in the repository)",
        dir.display()
    );
    dir
}

#[derive(PartialEq)]
struct Entry(f64, usize);
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.total_cmp(&self.0)
    }
}

/// Octile distances to `goal` from every cell (infinity where unreachable), computed from the
/// raw `.map` text alone: 8 moves of cost 1 and sqrt(2), a diagonal step needs both
/// orthogonal neighbours passable. Returns (width, distances `[row][col]`).
pub fn octile_dijkstra(text: &str, goal: usize) -> (usize, Vec<f64>) {
    let rows: Vec<&[u8]> = text
        .lines()
        .skip(4)
        .map(|l| l.trim_end_matches('\r').as_bytes())
        .collect();
    let (h, w) = (rows.len(), rows[0].len());
    let pass = |r: i64, c: i64| {
        r >= 0
            && c >= 0
            && (r as usize) < h
            && (c as usize) < w
            && matches!(rows[r as usize][c as usize], b'.' | b'G' | b'S')
    };
    let mut dist = vec![f64::INFINITY; h * w];
    let mut heap = BinaryHeap::new();
    dist[goal] = 0.0;
    heap.push(Entry(0.0, goal));
    while let Some(Entry(d, cell)) = heap.pop() {
        if d > dist[cell] {
            continue;
        }
        let (r, c) = ((cell / w) as i64, (cell % w) as i64);
        for dr in -1..=1i64 {
            for dc in -1..=1i64 {
                if (dr, dc) == (0, 0) || !pass(r + dr, c + dc) {
                    continue;
                }
                if dr != 0 && dc != 0 && !(pass(r + dr, c) && pass(r, c + dc)) {
                    continue;
                }
                let step = if dr != 0 && dc != 0 {
                    std::f64::consts::SQRT_2
                } else {
                    1.0
                };
                let next = ((r + dr) as usize) * w + (c + dc) as usize;
                if d + step < dist[next] {
                    dist[next] = d + step;
                    heap.push(Entry(d + step, next));
                }
            }
        }
    }
    (w, dist)
}

pub fn array(shape: Vec<usize>, data: Vec<f64>) -> NpyValues {
    NpyValues {
        shape,
        data,
        dtype: "<f8".into(),
    }
}

/// A random sparse MDP in CSR form: S states, A actions, 1 to 5 successors per row, rewards in
/// [-1, 0.3]; with `terminals`, state 7t + 3 is terminal for task t (value -0.2 t).
pub fn random_mdp(s: usize, a: usize, b: usize, terminals: bool, seed: u64) -> TabularMdp {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut indptr, mut indices, mut data) = (vec![0.0], Vec::new(), Vec::new());
    for _ in 0..s * a {
        let k = rng.random_range(1..=5usize);
        let mut next: Vec<usize> = (0..k).map(|_| rng.random_range(0..s)).collect();
        next.sort_unstable();
        next.dedup();
        let weights: Vec<f64> = next.iter().map(|_| rng.random_range(0.05..1.0)).collect();
        let total: f64 = weights.iter().sum();
        for (j, w) in next.iter().zip(&weights) {
            indices.push(*j as f64);
            data.push(w / total);
        }
        indptr.push(indices.len() as f64);
    }
    let r: Vec<f64> = (0..b * s * a)
        .map(|_| rng.random_range(-1.0..0.3))
        .collect();
    let nnz = indices.len();
    let mut arrays = HashMap::from([
        ("indptr".to_owned(), array(vec![s * a + 1], indptr)),
        ("indices".to_owned(), array(vec![nnz], indices)),
        ("data".to_owned(), array(vec![nnz], data)),
        ("R".to_owned(), array(vec![b, s, a], r)),
    ]);
    if terminals {
        let mut terminal = vec![0.0; b * s];
        let mut value = vec![0.0; b * s];
        for t in 0..b {
            terminal[t * s + (7 * t + 3) % s] = 1.0;
            value[t * s + (7 * t + 3) % s] = -0.2 * t as f64;
        }
        arrays.insert("terminal".into(), array(vec![b, s], terminal));
        arrays.insert("terminal_value".into(), array(vec![b, s], value));
    }
    TabularMdp::from_arrays(&arrays).unwrap()
}

/// Checks that every policy row (`actions` entries) without NaN has entries in [0, 1] that sum
/// to 1 within `tol`; returns the largest |sum - 1|.
pub fn assert_rows_sum_to_one(what: &str, policy: &[f32], actions: usize, tol: f64) -> f64 {
    let mut worst = 0.0f64;
    for (i, row) in policy.chunks(actions).enumerate() {
        if row.iter().any(|p| p.is_nan()) {
            assert!(row.iter().all(|p| p.is_nan()), "{what}: row {i} {row:?}");
            continue;
        }
        assert!(
            row.iter().all(|&p| (0.0..=1.0).contains(&p)),
            "{what}: row {i} {row:?}"
        );
        let gap = (row.iter().map(|&p| p as f64).sum::<f64>() - 1.0).abs();
        assert!(gap <= tol, "{what}: row {i} sums to 1 + {gap}: {row:?}");
        worst = worst.max(gap);
    }
    worst
}

/// Checks that in every policy row of `policy` the most likely action has a reference Q
/// (`q`, same layout) within `slack` of the row's largest Q.
pub fn assert_likeliest_action_optimal(
    what: &str,
    policy: &[f32],
    q: &[f32],
    actions: usize,
    slack: impl Fn(f64) -> f64,
) {
    for (i, (row, q_row)) in policy.chunks(actions).zip(q.chunks(actions)).enumerate() {
        if row.iter().any(|p| p.is_nan()) {
            continue;
        }
        let likeliest = (0..actions)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        let top = q_row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
        let chosen = q_row[likeliest] as f64;
        assert!(
            chosen >= top - slack(top),
            "{what}: row {i}: likeliest action {likeliest} has Q {chosen}, max {top}: {row:?}"
        );
    }
}

/// Largest |x - y| over entries where both are finite; infinities must agree exactly and NaN
/// must sit at the same places.
pub fn max_gap(what: &str, gpu: &[f32], cpu: &[f32]) -> f64 {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    let mut gap = 0.0f64;
    for (i, (&x, &y)) in gpu.iter().zip(cpu).enumerate() {
        if x.is_finite() && y.is_finite() {
            gap = gap.max((x as f64 - y as f64).abs());
        } else {
            assert!(
                x == y || (x.is_nan() && y.is_nan()),
                "{what}[{i}]: GPU {x}, CPU {y}"
            );
        }
    }
    gap
}

/// Compares every output of two solves (`gpu` the one under test, `cpu` the reference); `value_tol` bounds |dV| and |dQ| (value units),
/// `prob_tol` |dpi| and |dD|.
pub fn compare(what: &str, gpu: &MdpSolution, cpu: &MdpSolution, value_tol: f64, prob_tol: f64) {
    let (g, c) = (&gpu.solution, &cpu.solution);
    assert_eq!(g.status, c.status, "{what}: status");
    let dv = max_gap(&format!("{what} values"), &g.values, &c.values);
    assert!(dv <= value_tol, "{what}: max |dV| {dv} > {value_tol}");
    assert_eq!(
        g.policy.is_some(),
        c.policy.is_some(),
        "{what}: policy presence"
    );
    if let (Some(gp), Some(cp)) = (&g.policy, &c.policy) {
        let dp = max_gap(&format!("{what} policy"), gp, cp);
        assert!(dp <= prob_tol, "{what}: max |dpi| {dp} > {prob_tol}");
    }
    assert_eq!(g.q.is_some(), c.q.is_some(), "{what}: Q presence");
    if let (Some(gq), Some(cq)) = (&g.q, &c.q) {
        let dq = max_gap(&format!("{what} Q"), gq, cq);
        assert!(dq <= value_tol, "{what}: max |dQ| {dq} > {value_tol}");
    }
    assert_eq!(
        gpu.steps.is_some(),
        cpu.steps.is_some(),
        "{what}: steps presence"
    );
    if let (Some(gs), Some(cs)) = (&gpu.steps, &cpu.steps) {
        let dv = max_gap(&format!("{what} step values"), &gs.values, &cs.values);
        assert!(dv <= value_tol, "{what}: steps max |dV| {dv}");
        if let (Some(gp), Some(cp)) = (&gs.policy, &cs.policy) {
            let dp = max_gap(&format!("{what} step policy"), gp, cp);
            assert!(dp <= prob_tol, "{what}: steps max |dpi| {dp}");
        }
        assert_eq!(gs.q.is_some(), cs.q.is_some(), "{what}: step Q presence");
        if let (Some(gq), Some(cq)) = (&gs.q, &cs.q) {
            let dq = max_gap(&format!("{what} step Q"), gq, cq);
            assert!(dq <= value_tol, "{what}: steps max |dQ| {dq}");
        }
    }
    assert_eq!(
        gpu.occupancy.is_some(),
        cpu.occupancy.is_some(),
        "{what}: occupancy presence"
    );
    if let (Some(go), Some(co)) = (&gpu.occupancy, &cpu.occupancy) {
        assert_eq!(go.steps, co.steps);
        let scale = co.values.iter().fold(1.0f32, |m, x| m.max(x.abs())) as f64;
        let dd = max_gap(&format!("{what} occupancy"), &go.values, &co.values);
        assert!(
            dd <= prob_tol * scale,
            "{what}: max |dD| {dd} > {prob_tol} x {scale}"
        );
    }
}

/// Random cotangents in [-1, 1] (signed: an adjoint is no distribution) on the outputs named
/// in `which` (`v`, `q`, `p`), for `steps` steps of every task with `all_steps`.
pub fn random_cotangents(
    mdp: &TabularMdp,
    steps: usize,
    all_steps: bool,
    which: &str,
    seed: u64,
) -> MdpCotangents {
    let mut rng = StdRng::seed_from_u64(seed);
    let (b, s_n, a_n) = (mdp.tasks, mdp.states, mdp.actions);
    let (v_len, qa_len) = match all_steps {
        true => (b * (steps + 1) * s_n, b * steps * s_n * a_n),
        false => (b * s_n, b * s_n * a_n),
    };
    let mut draw = |n: usize| -> Vec<f64> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
    MdpCotangents {
        values: which.contains('v').then(|| draw(v_len)),
        q: which.contains('q').then(|| draw(qa_len)),
        policy: which.contains('p').then(|| draw(qa_len)),
        all_steps,
    }
}

/// `<c, outputs>` of the f64 solve, marked (NaN) entries left out; the cotangents' steps as
/// `cot.all_steps` says.
pub fn cotangent_loss(mdp: &TabularMdp, options: &SolveOptions, cot: &MdpCotangents) -> f64 {
    let outputs = Outputs {
        policy: true,
        q: true,
        all_steps: matches!(options.horizon, Horizon::Finite(_)),
        occupancy: false,
    };
    let got = solve_mdp_cpu_f64(mdp, options, outputs, &mut keep_going).unwrap();
    let steps = got.steps.as_ref();
    let (b, s_n, a_n) = (mdp.tasks, mdp.states, mdp.actions);
    let t_n = steps.map_or(1, |x| x.values.len() / (b * s_n) - 1);
    // Output `all` `[task][t][inner]` (t < steps) at the cotangent's steps.
    let pick = |all: &[f64], steps: usize, inner: usize, kept: usize| -> Vec<f64> {
        (0..b)
            .flat_map(|task| all[task * steps * inner..][..kept * inner].to_vec())
            .collect()
    };
    let dot = |c: &Option<Vec<f64>>, x: &[f64]| -> f64 {
        c.as_ref().map_or(0.0, |c| {
            c.iter()
                .zip(x)
                .filter(|(_, v)| v.is_finite())
                .map(|(c, v)| c * v)
                .sum()
        })
    };
    let kept = |steps: usize| if cot.all_steps { steps } else { 1 };
    match steps {
        Some(st) => {
            dot(&cot.values, &pick(&st.values, t_n + 1, s_n, kept(t_n + 1)))
                + dot(
                    &cot.q,
                    &pick(st.q.as_ref().unwrap(), t_n, s_n * a_n, kept(t_n)),
                )
                + dot(
                    &cot.policy,
                    &pick(st.policy.as_ref().unwrap(), t_n, s_n * a_n, kept(t_n)),
                )
        }
        None => unreachable!("every solve here has a finite horizon"),
    }
}

/// `mdp` with its `k`-th CSR probability set to `x` (rows then no longer sum to 1: a
/// finite difference's step).
pub fn set_prob(mdp: &mut TabularMdp, k: usize, x: f64) {
    edit_csr(mdp, |csr| csr.probs[k] = x);
}

/// `mdp` with its CSR transitions changed by `edit` (unchecked until the next `validate`).
pub fn edit_csr(mdp: &mut TabularMdp, edit: impl FnOnce(&mut Csr)) {
    let mut csr = mdp.csr().clone();
    edit(&mut csr);
    mdp.transitions = Transitions::sparse(csr.indptr, csr.indices, csr.probs);
}

/// A VJP's inputs as (name, entries).
fn vjp_parts(g: &MdpVjp) -> Vec<(&'static str, Vec<f64>)> {
    vec![
        ("reward", g.reward.clone()),
        ("terminal_value", g.terminal_value.clone()),
        ("probs", g.probs.clone()),
        ("alpha", vec![g.alpha]),
        ("gamma", vec![g.gamma]),
    ]
}

/// Asserts the VJP `got` within `tol` of `want`, per input relative to the largest entry of
/// that input's `want` (at least 1e-3 of the largest entry overall, so that an input whose
/// exact gradient is near 0 is held to the others' scale); returns the largest such gap.
pub fn assert_vjp_close(got: &MdpVjp, want: &MdpVjp, tol: f64, label: &str) -> f64 {
    let overall = vjp_parts(want)
        .iter()
        .flat_map(|(_, x)| x.clone())
        .fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(
        overall > 0.0,
        "{label}: the reference gradient is 0, a vacuous test"
    );
    let mut worst = 0.0f64;
    for ((name, g), (_, w)) in vjp_parts(got).into_iter().zip(vjp_parts(want)) {
        let scale = w.iter().fold(1e-3 * overall, |m, x| m.max(x.abs()));
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            let gap = (a - b).abs() / scale;
            worst = worst.max(gap);
            assert!(
                gap <= tol,
                "{label}: {name}[{i}] GPU {a} vs f64 {b} (gap {gap:e} of {scale:e})"
            );
        }
    }
    worst
}
