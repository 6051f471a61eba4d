//! Criterion benches of the fused sweep (`shaders/grid_backup.wgsl`) and its CPU twin
//! (`reference::grid_backup`) on the reference workload: a generated maze, 8-connected,
//! slip 0.1, expected backup, alpha 1, gamma 0.99. Throughput is in state updates
//! (tasks x free cells x sweeps). One iteration is one finite-horizon solve of `SWEEPS`
//! sweeps, so upload and readback are included (`softvi bench` reports the sweep rate alone).

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use softvi::bench::{reference_options, reference_problem};
use softvi::{GpuContext, Grid, GridEngine, Horizon, Outputs, solve_cpu};

const SWEEPS: u32 = 32;

fn grid_backup(c: &mut Criterion) {
    let maze = Grid::generate_maze(512, 512, 0).unwrap();
    let ctx = GpuContext::from_env().ok();
    let mut group = c.benchmark_group("grid_backup");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    for tasks in [1usize, 8] {
        let problem = reference_problem(maze.clone(), tasks);
        let options = reference_options(Horizon::Finite(SWEEPS));
        let updates = (tasks * problem.grid.free_cells()) as u64 * SWEEPS as u64;
        group.throughput(Throughput::Elements(updates));
        if let Some(ctx) = &ctx {
            let mut engine = GridEngine::new(ctx).unwrap();
            group.bench_function(format!("gpu/maze512-b{tasks}"), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        engine.solve(&problem, &options, Outputs::VALUES).unwrap();
                    }
                    start.elapsed()
                })
            });
        } else {
            eprintln!("no GPU adapter: only the CPU reference is benchmarked");
        }
        group.bench_function(format!("cpu/maze512-b{tasks}"), |b| {
            b.iter(|| solve_cpu(&problem, &options, Outputs::VALUES).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, grid_backup);
criterion_main!(benches);
