"""softvi.vjp on the GPU (grid kernels, CSR kernels) against the f64 CPU reference, in one run.

device="gpu" runs the WGSL kernels in float32: a ``GridMDP`` (``Grid.as_mdp``) on the grid
kernels (``GridEngine::vjp``), the same MDP as a plain ``TabularMDP`` (its probabilities
replaced by themselves) on the general-MDP (CSR) kernels (``MdpEngine::vjp``); device="cpu" is
the f64 reference. All on the same maze and from the same forward V.

    python benches/gpu_vjp.py [SIZE] [REPEATS]

Defaults: a 255 x 255 maze (odd sizes), 8-connected, slip 0.1, alpha 0.5, gamma 0.99, tol 1e-4,
the cotangent the start distribution on V (the gradient of sum(initial * V)). Every VJP starts
from the f64 reference's V (``solution=``), so only the backward pass is timed: seconds (median
of REPEATS after a warm-up), the adjoint's sweeps, the grid kernels' time over the CSR
kernels', and each GPU gradient's largest difference from the reference's, relative to each
input's largest entry. Honours WGPU_BACKEND.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

import softvi


def main() -> None:
    """Times the three VJPs and prints their gaps."""
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 255
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    grid = softvi.Grid.maze(size, size, seed=0)
    rows, cols = np.nonzero(grid.free)
    world = grid.as_mdp([(int(rows[-1]), int(cols[-1]))], slip=0.1)
    plain = world.replace(transition_probs=world.arrays()["data"])
    settings = dict(alpha=0.5, gamma=0.99, tol=1e-4)
    start = np.nan_to_num(world.arrays()["initial"])
    v = softvi.solve(world, device="cpu", **settings).values
    print(f"{size} x {size} maze: {world.states} states, {world.actions} actions")
    runs = {
        "reference": (world, "cpu"),
        "grid kernels": (world, "gpu"),
        "CSR kernels": (plain, "gpu"),
    }
    got, seconds = {}, {}
    for name, (mdp, device) in runs.items():
        times = []
        for _ in range(repeats + 1):
            t = time.perf_counter()
            got[name] = softvi.vjp(mdp, values=start, solution=v, device=device, **settings)
            times.append(time.perf_counter() - t)
        seconds[name] = statistics.median(times[1:])
        print(f"{name} ({got[name].kernels}): {seconds[name]:.3f} s, {got[name].sweeps} sweeps")
    ratio = seconds["grid kernels"] / seconds["CSR kernels"]
    print(f"grid kernels / CSR kernels: x{ratio:.2f} time")
    for gpu in ("grid kernels", "CSR kernels"):
        for name in ("reward", "transition_probs", "alpha", "gamma"):
            g, w = np.asarray(getattr(got[gpu], name)), np.asarray(getattr(got["reference"], name))
            gap = float(np.abs(g - w).max() / max(np.abs(w).max(), 1e-300))
            print(f"  {gpu}, {name}: within {gap:.1e} of the reference")


if __name__ == "__main__":
    main()
