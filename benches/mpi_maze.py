#!/usr/bin/env python3
"""Modified policy iteration against value iteration on a slow-mixing MDP, in one run.

A 127 x 127 maze (``softvi.Grid.maze(127, 127, seed=1)``, one goal at (1, 1), slip 0.1, 8
moves) solved as a general MDP (``Grid.as_mdp``: 8,343 states, a terminal goal, so no span
bound) on the native engine, gamma 0.99, tol 1e-3: value iteration (the default, with its
rate extrapolation at alpha > 0) and ``method="mpi"`` at each ``--evaluations M``, at alpha 0
and 1; time (the engine's ``seconds``, median of ``--repeats``), full backups and evaluation
sweeps, error bound and the largest gap to VI's values.

Usage: benches/mpi_maze.py [--size 127] [--repeats 2] [--evaluations 2 4 8 16 32]
"""

import argparse
import os
import statistics

import numpy as np

import softvi


def main() -> None:
    """Prints one VI line and one line per M for alpha 0 and 1."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=127)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--evaluations", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    mdp = softvi.Grid.maze(args.size, args.size, seed=1).as_mdp([(1, 1)], slip=0.1)
    settings = dict(gamma=0.99, tol=1e-3, device="native", policy=False)
    for alpha in [0.0, 1.0]:
        runs = [softvi.solve(mdp, alpha=alpha, **settings) for _ in range(args.repeats)]
        vi, t = runs[-1], statistics.median(r.seconds for r in runs)
        print(f"alpha {alpha} vi: {t:.3f} s, {vi.iterations[0]} backups", flush=True)
        finite = np.isfinite(vi.values)
        for m in args.evaluations:
            runs = [
                softvi.solve(mdp, alpha=alpha, method="mpi", evaluations=m, **settings)
                for _ in range(args.repeats)
            ]
            r, tm = runs[-1], statistics.median(x.seconds for x in runs)
            gap = float(np.max(np.abs(r.values - vi.values)[finite]))
            print(
                f"  mpi m={m}: {tm:.3f} s ({tm / t:.2f}x), {r.iterations[0]} backups + "
                f"{m * (r.iterations[0] - 1)} evaluation sweeps, bound "
                f"{float(r.error_bound[0]):.1e} (vi {float(vi.error_bound[0]):.1e}), "
                f"max |V - V_vi| {gap:.1e}",
                flush=True,
            )


if __name__ == "__main__":
    main()
