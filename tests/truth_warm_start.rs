//! The warm start of infinite-horizon grid solves (`softvi::engine::warm_start`): its tree
//! values against a shortest-path truth written from the map text, warm solves (CPU reference,
//! native engine and GPU) against the cold iteration from V = 0 and against a soft value iteration written
//! here, and the cases it must leave cold (finite horizon, positive rewards, slip, tasks
//! without a finite solution) unchanged bit for bit.

// Cell loops index several arrays of the same layout at once.
#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use softvi::engine::cpu::{grid_backup, iterate_cpu};
use softvi::engine::layout::GridInputs;
use softvi::engine::schedule::{Verdict, keep_going};
use softvi::engine::warm_start::grid_start_values;
use softvi::{
    ActionSet, Backup, Connectivity, Grid, GridProblem, GridSolver, GridTask, Horizon, Method,
    MoveCost, NativeSolver, Outputs, SolveOptions, Status, solve_cpu,
};

fn infinite(alpha: f64, gamma: f64, tol: f64) -> SolveOptions {
    SolveOptions {
        alpha,
        gamma,
        backup: Backup::Expected,
        horizon: Horizon::Infinite {
            tol,
            max_iters: 100_000,
        },
        extrapolate: true,
        method: Method::Vi,
    }
}

fn problem_on(grid: Grid, connectivity: Connectivity, goals: &[usize]) -> GridProblem {
    GridProblem {
        grid,
        actions: ActionSet {
            connectivity,
            stay: false,
        },
        slip: 0.0,
        move_cost: MoveCost::default(),
        tasks: goals
            .iter()
            .map(|&g| GridTask {
                goals: vec![g],
                reward: None,
            })
            .collect(),
    }
}

/// The cold iteration the solvers ran before the warm start: the CPU reference from V = 0.
/// Returns the values `[task][row][col]` (0 on fixed cells), the sweeps and the verdict.
fn cold_cpu(problem: &GridProblem, options: &SolveOptions) -> (Vec<f64>, u32, Verdict) {
    let inputs = GridInputs::new(problem, options);
    let mut watch = keep_going;
    let run = iterate_cpu(
        options,
        inputs.tasks,
        vec![0.0; inputs.tasks * inputs.cells()],
        &inputs.fixed,
        &[],
        |v_in, v_out| grid_backup(&inputs, v_in, v_out),
        &mut watch,
    )
    .unwrap();
    (run.v, run.sweeps, run.outcomes.verdict)
}

/// A free cell of `grid` at about `fraction` of its free cells.
fn free_cell(grid: &Grid, fraction: f64) -> usize {
    let free: Vec<usize> = (0..grid.cells()).filter(|&c| grid.free[c]).collect();
    free[((free.len() - 1) as f64 * fraction) as usize]
}

/// Soft value iteration on a 4-connected grid with unit step costs, written from the map
/// alone: a blocked or off-map move keeps the agent in place at its cost. Gauss-Seidel from
/// V = 0 until no value moves by 1e-13. Returns V `[row][col]` (NaN on walls).
fn soft_truth_4(grid: &Grid, goal: usize, alpha: f64, gamma: f64) -> Vec<f64> {
    let (h, w) = (grid.height as i64, grid.width as i64);
    let neighbours = |c: usize| {
        let (r, col) = ((c as i64) / w, (c as i64) % w);
        [(-1, 0), (0, 1), (1, 0), (0, -1)].map(|(dr, dc): (i64, i64)| {
            let (nr, nc) = (r + dr, col + dc);
            if nr >= 0 && nr < h && nc >= 0 && nc < w && grid.free[(nr * w + nc) as usize] {
                (nr * w + nc) as usize
            } else {
                c
            }
        })
    };
    // At gamma = 1 a cell that reaches no goal has no finite value: flood fill from the goal.
    let mut reaches = vec![false; grid.cells()];
    let mut stack = vec![goal];
    reaches[goal] = true;
    while let Some(c) = stack.pop() {
        for n in neighbours(c) {
            if !reaches[n] {
                reaches[n] = true;
                stack.push(n);
            }
        }
    }
    let skip = |c: usize| !grid.free[c] || (gamma == 1.0 && !reaches[c]);
    let mut v: Vec<f64> = (0..grid.cells())
        .map(|c| if skip(c) { f64::NAN } else { 0.0 })
        .collect();
    loop {
        let mut change = 0.0f64;
        for c in 0..grid.cells() {
            if skip(c) || c == goal {
                continue;
            }
            let q = neighbours(c).map(|next| -1.0 + gamma * v[next]);
            let top = q.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let new = top
                + alpha
                    * q.iter()
                        .map(|x| ((x - top) / alpha).exp())
                        .sum::<f64>()
                        .ln();
            change = change.max((new - v[c]).abs());
            v[c] = new;
        }
        if change < 1e-13 {
            return v;
        }
    }
}

#[test]
fn warm_start_at_the_hard_max_is_the_octile_shortest_path() {
    // alpha = 0, gamma = 1: the tree values are -(octile distance), and the Gauss-Seidel pass
    // finds nothing to add. Dijkstra sums the same f64 steps in another order: 1e-9 relative.
    for name in ["maze-128-128-10.map", "den520d.map"] {
        let path = maps_dir().join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        let grid = Grid::load_movingai(&path).unwrap();
        let goal = free_cell(&grid, 0.37);
        let problem = problem_on(grid.clone(), Connectivity::Eight, &[goal]);
        let start = grid_start_values(&problem, &infinite(0.0, 1.0, 1e-4)).unwrap();
        let (_, dist) = octile_dijkstra(&text, goal);
        let mut reached = 0;
        for c in 0..grid.cells() {
            if grid.free[c] && dist[c].is_finite() {
                reached += 1;
                let err = (start[c] + dist[c]).abs();
                assert!(
                    err <= 1e-9 * dist[c].max(1.0),
                    "{name} cell {c}: {} vs -{}",
                    start[c],
                    dist[c]
                );
            } else {
                // Walls and cells that reach no goal start at 0, as a cold solve.
                assert_eq!(start[c], 0.0, "{name} cell {c}");
            }
        }
        assert!(
            reached > 1000,
            "{name}: only {reached} cells reach the goal"
        );
    }
}

#[test]
fn warm_solves_meet_the_soft_truth_and_the_cold_solve() {
    // 4-connected random grids of sizes not multiples of the workgroup (64 quads), soft
    // backups at gamma 1, tol 1e-9 (the 1e-6 max |V| floor then decides). Bound: both solves
    // stop at a residual within that threshold, and each remaining increment travels at most
    // once per free cell of a path, so each lies within threshold x free cells of the fixed
    // point (the truth is converged to 1e-13). Sharper: the warm solve is no farther from the
    // truth than twice the cold one's distance, plus the f32 rounding of its output.
    let tol = 1e-9;
    let mut rng_seed = 7;
    for (h, w) in [(29, 41), (45, 67)] {
        rng_seed += 1;
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(rng_seed);
        let grid = random_grid(h, w, 0.2, &mut rng);
        let goal = free_cell(&grid, 0.6);
        let problem = problem_on(grid.clone(), Connectivity::Four, &[goal]);
        for (alpha, gamma) in [(0.1, 1.0), (0.5, 1.0), (0.02, 1.0)] {
            let label = format!("{h}x{w} alpha {alpha} gamma {gamma}");
            let options = infinite(alpha, gamma, tol);
            // At alpha 0.5 the entropy bonus (4 exp(-2) of the step cost) slows Gauss-Seidel;
            // on some grids the warm start gives up and the task starts cold: same answer.
            let warm_started = grid_start_values(&problem, &options).is_some();
            assert!(warm_started || alpha > 0.1, "{label}: not warm");
            let truth = soft_truth_4(&grid, goal, alpha, gamma);
            let warm = solve_cpu(&problem, &options, Outputs::VALUES).unwrap();
            let (cold, cold_sweeps, _) = cold_cpu(&problem, &options);
            assert_eq!(warm.status, vec![Status::Converged], "{label}");
            eprintln!(
                "{label}: warm start {warm_started}, {} sweeps (cold {cold_sweeps})",
                warm.iterations[0]
            );
            let inputs = GridInputs::new(&problem, &options);
            let (mut worst_warm, mut worst_cold) = (0.0f64, 0.0f64);
            for c in 0..grid.cells() {
                if inputs.fixed[c] {
                    continue;
                }
                worst_warm = worst_warm.max((warm.values[c] as f64 - truth[c]).abs());
                worst_cold = worst_cold.max((cold[c] - truth[c]).abs());
            }
            let scale = cold.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let rounding = f32::EPSILON as f64 * scale;
            let bound = tol.max(1e-6 * scale) * grid.free_cells() as f64;
            eprintln!("{label}: off the truth by {worst_warm:.2e} warm, {worst_cold:.2e} cold");
            assert!(worst_cold <= bound, "{label}: cold off by {worst_cold}");
            assert!(
                worst_warm <= (2.0 * worst_cold + rounding).min(bound + rounding),
                "{label}: warm off by {worst_warm}, cold by {worst_cold}"
            );
            // The point of it: far fewer sweeps than the cold solve.
            assert!(
                !warm_started || warm.iterations[0] < cold_sweeps,
                "{label}: warm {} sweeps, cold {cold_sweeps}",
                warm.iterations[0]
            );
        }
    }
}

#[test]
fn warm_gpu_solve_of_a_long_maze_matches_the_cold_cpu_solve() {
    // A generated 8-connected maze with long paths (255 x 201: not a multiple of the
    // workgroup), gamma = 1, alpha 0.1, tol 1e-4. GPU (warm, f32) vs CPU reference (cold, f64):
    // both stop at a residual within tol and the warm start itself is f64, so the CPU solves
    // agree within tol; the GPU adds f32 rounding, 8 ulps of max |V| allowed (as
    // kernel_grid_backup's GPU-vs-CPU bound).
    let grid = Grid::generate_maze(255, 201, 3).unwrap();
    let goal = grid.width + 1;
    let problem = problem_on(grid.clone(), Connectivity::Eight, &[goal]);
    let options = infinite(0.1, 1.0, 1e-4);
    let (cold, cold_sweeps, verdict) = cold_cpu(&problem, &options);
    assert_eq!(verdict, Verdict::Converged);
    let warm_cpu = solve_cpu(&problem, &options, Outputs::VALUES).unwrap();
    let gpu = with_engine(|e| e.solve(&problem, &options, Outputs::VALUES).unwrap());
    // The native engine (the default where the only adapter is a CPU) starts warm too.
    let native = NativeSolver::new(None)
        .solve_grid(&problem, None, &options, Outputs::VALUES, &mut keep_going)
        .unwrap()
        .solution;
    let inputs = GridInputs::new(&problem, &options);
    let scale = cold.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let bound = 1e-4 + 8.0 * f32::EPSILON as f64 * scale;
    eprintln!(
        "cold {cold_sweeps} sweeps, warm CPU {} sweeps, max |V| {scale}",
        warm_cpu.iterations[0]
    );
    for (name, solution) in [("cpu", &warm_cpu), ("native", &native)]
        .into_iter()
        .chain(gpu.as_ref().map(|g| ("gpu", g)))
    {
        assert_eq!(solution.status, vec![Status::Converged], "{name}");
        assert!(
            solution.iterations[0] * 4 <= cold_sweeps,
            "{name}: {} sweeps vs cold {cold_sweeps}",
            solution.iterations[0]
        );
        let mut worst = 0.0f64;
        for c in 0..grid.cells() {
            if !inputs.fixed[c] {
                worst = worst.max((solution.values[c] as f64 - cold[c]).abs());
            }
        }
        eprintln!("{name}: warm vs cold max |dV| {worst:.3e} (bound {bound:.3e})");
        assert!(worst <= bound, "{name}: warm vs cold {worst} > {bound}");
    }
}

#[test]
fn cases_the_warm_start_leaves_cold_are_unchanged_bit_for_bit() {
    let grid = Grid::generate_maze(45, 37, 1).unwrap();
    let goal = grid.width + 1;
    let base = problem_on(grid.clone(), Connectivity::Eight, &[goal]);
    let mut positive = base.clone();
    let mut reward = vec![0.0f32; grid.cells()];
    reward[free_cell(&grid, 0.5)] = 2.0;
    positive.tasks[0].reward = Some(reward);
    let slipping = GridProblem {
        slip: 0.1,
        ..base.clone()
    };
    let staying = GridProblem {
        actions: ActionSet {
            connectivity: Connectivity::Eight,
            stay: true,
        },
        ..base.clone()
    };
    let cases = [
        (
            "finite horizon",
            &base,
            SolveOptions {
                horizon: Horizon::Finite(40),
                ..infinite(0.1, 1.0, 1e-4)
            },
        ),
        ("discounted", &base, infinite(0.1, 0.99, 1e-4)),
        ("positive reward", &positive, infinite(0.1, 1.0, 1e-4)),
        ("slip", &slipping, infinite(0.1, 1.0, 1e-4)),
        // STAY at cost 0: no finite solution, declared diverged by its structure.
        ("stay", &staying, infinite(0.1, 1.0, 1e-4)),
        // The entropy bonus outweighs the step costs: Gauss-Seidel does not settle.
        ("diverging", &base, infinite(1.0, 1.0, 1e-4)),
    ];
    for (label, problem, options) in cases {
        assert!(
            grid_start_values(problem, &options).is_none(),
            "{label}: warm"
        );
        let solved = solve_cpu(problem, &options, Outputs::VALUES).unwrap();
        let (cold, sweeps, _) = cold_cpu(problem, &options);
        assert_eq!(solved.iterations, vec![sweeps], "{label}");
        let inputs = GridInputs::new(problem, &options);
        for c in 0..grid.cells() {
            if !inputs.fixed[c] {
                assert_eq!(solved.values[c], cold[c] as f32, "{label} cell {c}");
            }
        }
        if label == "stay" || label == "diverging" {
            assert_eq!(solved.status, vec![Status::Diverged], "{label}");
            if let Some(gpu) = with_engine(|e| e.solve(problem, &options, Outputs::VALUES).unwrap())
            {
                assert_eq!(gpu.status, vec![Status::Diverged], "{label} gpu");
            }
        }
    }
}

#[test]
fn row_bands_and_task_chunks_start_from_the_same_warm_values() {
    // Three tasks on a 131 x 97 maze (padded to 132 columns on the GPU): a 16 KiB binding
    // splits each task into row bands, a 64 KiB buffer into one-task chunks. Every band and
    // chunk must start from its own tasks' warm values: then each solve converges at the
    // first check and agrees with the cold CPU solve as in the test above (tol + 8 f32 ulps).
    let grid = Grid::generate_maze(131, 97, 5).unwrap();
    let goals = [grid.width + 1, free_cell(&grid, 0.5), free_cell(&grid, 0.9)];
    let problem = problem_on(grid.clone(), Connectivity::Eight, &goals);
    let options = infinite(0.1, 1.0, 1e-4);
    let (cold, cold_sweeps, _) = cold_cpu(&problem, &options);
    let scale = cold.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let bound = 1e-4 + 8.0 * f32::EPSILON as f64 * scale;
    let inputs = GridInputs::new(&problem, &options);
    for limits in [
        softvi::EngineOptions {
            max_binding_bytes: Some(16 << 10),
            max_buffer_bytes: None,
        },
        softvi::EngineOptions {
            max_binding_bytes: None,
            max_buffer_bytes: Some(1 << 16),
        },
    ] {
        let Some(mut engine) = small_engine(limits) else {
            return;
        };
        let gpu = engine.solve(&problem, &options, Outputs::VALUES).unwrap();
        let mut worst = 0.0f64;
        for i in 0..cold.len() {
            if !inputs.fixed[i] {
                worst = worst.max((gpu.values[i] as f64 - cold[i]).abs());
            }
        }
        eprintln!(
            "{limits:?}: sweeps {:?} (cold {cold_sweeps}), max |dV| {worst:.2e}",
            gpu.iterations
        );
        assert_eq!(gpu.status, vec![Status::Converged; 3], "{limits:?}");
        assert!(
            gpu.iterations.iter().all(|&s| s == 16),
            "{limits:?}: {:?}",
            gpu.iterations
        );
        assert!(worst <= bound, "{limits:?}: max |dV| {worst} > {bound}");
    }
}
