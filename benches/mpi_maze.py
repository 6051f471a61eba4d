#!/usr/bin/env python3
"""Modified policy iteration against value iteration on a slow-mixing world, in one run.

A 127 x 127 maze (``softvi.Grid.maze(127, 127, seed=1)``, one goal at (1, 1), slip 0.1, 8
moves; 8,343 free cells), gamma 0.99, tol 1e-3, solved on each ``--backends`` entry
``WORLD:DEVICE``: ``grid`` is the map itself (``softvi.solve_grid``: the goal is terminal),
``mdp`` the same world as a general MDP (``Grid.as_mdp``: a terminal goal, so no span bound);
``DEVICE`` is a ``device=`` of :func:`softvi.solve`. On each: value iteration (the default,
with its rate extrapolation at alpha > 0) and ``method="mpi"`` at each ``--evaluations M``,
at alpha 0 and 1; time (the engine's ``seconds``, median of ``--repeats``), full backups and
evaluation sweeps, error bound and the largest gap to VI's values.

Usage: benches/mpi_maze.py [--size 127] [--repeats 2] [--evaluations 2 4 8 16 32]
                           [--backends mdp:native grid:native mdp:gpu grid:gpu]
"""

import argparse
import os
import statistics
import warnings
from collections.abc import Callable

import numpy as np

import softvi

GOAL = (1, 1)
SLIP = 0.1


def solver(world: str, device: str, size: int) -> Callable[..., softvi.SolveResult]:
    """``solve(**settings)`` for the maze as ``world`` (``grid`` or ``mdp``) on ``device``."""
    grid = softvi.Grid.maze(size, size, seed=1)
    common = dict(gamma=0.99, tol=1e-3, device=device, policy=False)
    if world == "grid":
        return lambda **kw: softvi.solve_grid(grid, [GOAL], slip=SLIP, **common, **kw)
    if world == "mdp":
        mdp = grid.as_mdp([GOAL], slip=SLIP)
        return lambda **kw: softvi.solve(mdp, **common, **kw)
    raise SystemExit(f"--backends: world must be grid or mdp, got {world!r}")


def main() -> None:
    """Prints, per backend and alpha, one VI line and one line per M."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=127)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--evaluations", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    ap.add_argument(
        "--backends", nargs="+", default=["mdp:native", "grid:native", "mdp:gpu", "grid:gpu"]
    )
    args = ap.parse_args()
    # f32 engines stop at their floor here (|V| ~ 100 at gamma 0.99): each line prints the bound.
    warnings.simplefilter("ignore", RuntimeWarning)
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    for backend in args.backends:
        world, _, device = backend.partition(":")
        solve = solver(world, device, args.size)
        for alpha in [0.0, 1.0]:
            runs = [solve(alpha=alpha) for _ in range(args.repeats)]
            vi, t = runs[-1], statistics.median(r.seconds for r in runs)
            print(
                f"{backend} ({vi.adapter}) alpha {alpha} vi: {t:.3f} s, "
                f"{vi.iterations[0]} backups, bound {float(vi.error_bound[0]):.1e}",
                flush=True,
            )
            finite = np.isfinite(vi.values)
            for m in args.evaluations:
                runs = [
                    solve(alpha=alpha, method="mpi", evaluations=m) for _ in range(args.repeats)
                ]
                r, tm = runs[-1], statistics.median(x.seconds for x in runs)
                gap = float(np.max(np.abs(r.values - vi.values)[finite]))
                print(
                    f"  mpi m={m}: {tm:.3f} s ({tm / t:.2f}x), {r.iterations[0]} backups + "
                    f"{m * (r.iterations[0] - 1)} evaluation sweeps, bound "
                    f"{float(r.error_bound[0]):.1e}, max |V - V_vi| {gap:.1e}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
