"""softvi.vjp on the GPU against the f64 CPU reference, in one run.

device="gpu" runs the WGSL kernels in float32, device="cpu" the f64 reference; both on the same
maze and from the same forward V.

    python benches/gpu_vjp.py [SIZE] [REPEATS]

Defaults: a 255 x 255 maze (odd sizes), 8-connected, slip 0.1, alpha 0.5, gamma 0.99, tol 1e-4,
the cotangent the start distribution on V (the gradient of sum(initial * V)). Both VJPs start
from the f64 reference's V (``solution=``), so only the backward pass is timed: seconds (median
of REPEATS after a warm-up), the adjoint's sweeps, and the GPU gradient's largest difference
from the reference's, relative to each input's largest entry. Honours WGPU_BACKEND.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

import softvi


def main() -> None:
    """Times both VJPs and prints their gap."""
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 255
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    grid = softvi.Grid.maze(size, size, seed=0)
    rows, cols = np.nonzero(grid.free)
    world = grid.as_mdp([(int(rows[-1]), int(cols[-1]))], slip=0.1)
    settings = dict(alpha=0.5, gamma=0.99, tol=1e-4)
    start = np.nan_to_num(world.arrays()["initial"])
    v = softvi.solve(world, device="cpu", **settings).values
    print(f"{size} x {size} maze: {world.states} states, {world.actions} actions")
    got = {}
    for device in ("cpu", "gpu"):
        times = []
        for _ in range(repeats + 1):
            t = time.perf_counter()
            got[device] = softvi.vjp(world, values=start, solution=v, device=device, **settings)
            times.append(time.perf_counter() - t)
        print(f"{device}: {statistics.median(times[1:]):.3f} s, {got[device].sweeps} sweeps")
    for name in ("reward", "transition_probs", "alpha", "gamma"):
        g, w = np.asarray(getattr(got["gpu"], name)), np.asarray(getattr(got["cpu"], name))
        gap = float(np.abs(g - w).max() / max(np.abs(w).max(), 1e-300))
        print(f"  {name}: GPU within {gap:.1e} of the reference")


if __name__ == "__main__":
    main()
