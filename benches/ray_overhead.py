"""What softvi.ray adds to a batch solve: in-process against 2 shards on a local Ray cluster.

A 64-task grid batch (one goal per task, on a generated maze) solved by ``softvi.solve_grid``
in this process and by ``softvi.ray.solve_grid(..., shards=2)`` on ``ray.init(num_cpus=2)``.
The cluster's start is not timed; one call of each warms up (Ray starts its workers and
imports softvi in them on the first call). Calls alternate; medians of the wall times are
printed, with the ratio and the difference (the overhead: submitting, fetching the world
from the object store, starting the engine in each worker, gathering the arrays).

Usage (in a venv with the wheel and ray installed):
    python benches/ray_overhead.py [--maze WxH] [--tasks B] [--horizon T] [--repeats K]
        [--device D]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import ray

import softvi
import softvi.ray


def main() -> None:
    """Runs the comparison and prints one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maze", default="255x255", help="maze W x H (odd sizes)")
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    width, height = (int(x) for x in args.maze.lower().split("x"))
    grid = softvi.Grid.maze(width, height, 0)
    free = np.argwhere(grid.free)
    rng = np.random.default_rng(0)
    goals = [tuple(map(int, free[i])) for i in rng.choice(len(free), args.tasks, replace=False)]
    options = dict(alpha=0.5, gamma=0.99, horizon=args.horizon, device=args.device)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    local, sharded = [], []
    for k in range(args.repeats + 1):  # k = 0 warms up
        start = time.perf_counter()
        want = softvi.solve_grid(grid, goals, **options)
        t_local = time.perf_counter() - start
        start = time.perf_counter()
        got = softvi.ray.solve_grid(grid, goals, shards=2, progress=False, **options)
        t_ray = time.perf_counter() - start
        if not np.array_equal(got.values, want.values, equal_nan=True):
            raise SystemExit("softvi.ray's values differ from the in-process solve")
        if k > 0:
            local.append(t_local)
            sharded.append(t_ray)
    ray.shutdown()
    local_s, ray_s = statistics.median(local), statistics.median(sharded)
    policy_bytes = want.policy.nbytes
    print(
        json.dumps(
            {
                "grid": f"{width}x{height}",
                "tasks": args.tasks,
                "horizon": args.horizon,
                "adapter": want.adapter,
                "repeats": args.repeats,
                "in_process_s": round(local_s, 4),
                "ray_2_shards_s": round(ray_s, 4),
                "ray_over_in_process": round(ray_s / local_s, 3),
                "overhead_s": round(ray_s - local_s, 4),
                "gathered_values_bytes": want.values.nbytes,
                "gathered_policy_bytes": policy_bytes,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
