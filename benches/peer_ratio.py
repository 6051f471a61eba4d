#!/usr/bin/env python3
"""softvi's default grid path against the JAX stencil peer, measured in one run on the same worlds.

The peer is the 25-line JAX soft VI of `../shared/peers/grid_peers.py ... jaxstencil` (shifted
slices of a padded V, one fused elementwise loop per sweep), copied below so that it runs on any
free-cell mask. Worlds: the peer's own 1024 x 1024 map (np.random.default_rng(0), 20% obstacles,
written here as a MovingAI map and timed by `softvi bench --map`) and softvi's maze1024
workload (its free cells read back from a one-sweep `softvi solve`). Both sides: 8-connected, no
corner cutting, slip 0.1, expected backup, alpha 1, gamma 0.99. Rates are free-cell updates/s:
the peer sweeps every cell, so its rate is its own times the free fraction. The peer's rate does
not depend on B (it sweeps one task), so one peer run serves B = 1 and B = 8.

Usage: benches/peer_ratio.py [--softvi target/release/softvi] [--size 1024] [--sweeps 100]
                             [--repeats 3] [--backend auto]
Needs numpy and jax (pip install numpy "jax[cpu]"); without JAX it says so and exits 2.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def write_movingai(free, path):
    """Writes the free-cell mask ``free`` ``[H,W]`` as a MovingAI map at ``path``."""
    h, w = free.shape
    with open(path, "w") as f:
        f.write(f"type octile\nheight {h}\nwidth {w}\nmap\n")
        for row in free:
            f.write("".join("." if x else "@" for x in row) + "\n")


def legal_moves(free):
    """Per move, whether it leaves each cell (no corner cutting), as the peer builds them."""
    h, w = free.shape
    moves = [(-1, 0), (0, 1), (1, 0), (0, -1), (-1, 1), (1, 1), (1, -1), (-1, -1)]
    pad = np.zeros((h + 2, w + 2), bool)
    pad[1:-1, 1:-1] = free
    r, c = np.mgrid[0:h, 0:w]
    legal = []
    for dr, dc in moves:
        ok = pad[1 + r + dr, 1 + c + dc] & free
        if dr and dc:
            ok &= pad[1 + r + dr, 1 + c] & pad[1 + r, 1 + c + dc]
        legal.append(ok)
    return moves, legal


def peer_rate(free, sweeps):
    """The jaxstencil peer on `free`; returns its own rate (all cells per second)."""
    import jax
    import jax.numpy as jnp

    n, m = free.shape
    moves, legal = legal_moves(free)
    legal = [jnp.asarray(x) for x in legal]
    cost = [1.0] * 4 + [float(np.sqrt(2))] * 4
    alpha, gamma, eps = 1.0, 0.99, 0.1
    freej = jnp.asarray(free)

    @jax.jit
    def run(V):
        def body(i, V):
            P = jnp.pad(V, 1)
            nv = [
                jnp.where(legal[k], P[1 + dr : 1 + dr + n, 1 + dc : 1 + dc + m], V)
                for k, (dr, dc) in enumerate(moves)
            ]
            mean = sum(nv) / 8.0
            Q = [(-cost[k] + gamma * ((1 - eps) * nv[k] + eps * mean)) / alpha for k in range(8)]
            top = Q[0]
            for q in Q[1:]:
                top = jnp.maximum(top, q)
            lse = top + jnp.log(sum(jnp.exp(q - top) for q in Q))
            return jnp.where(freej, alpha * lse, 0.0)

        return jax.lax.fori_loop(0, sweeps, body, V)

    run(jnp.zeros((n, m), jnp.float32)).block_until_ready()
    t = time.perf_counter()
    run(jnp.zeros((n, m), jnp.float32)).block_until_ready()
    return n * m * sweeps / (time.perf_counter() - t)


def softvi_rates(softvi, bench_args):
    """`softvi bench` rows: {workload: free-cell updates/s} and the backend/adapter column."""
    out = subprocess.run(
        [softvi, "bench", "--cpu-sweeps", "0", *bench_args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rates, path = {}, ""
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 9 and re.fullmatch(r"[0-9.]+e[+-]?[0-9]+", cols[-3]):
            rates[cols[0]] = float(cols[-3])
            path = " ".join(cols[4:-4])
    return rates, path


def main():
    """Measures the peer and softvi on each world and prints the table and its JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--softvi", default="target/release/softvi")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--sweeps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backend", default="auto", help="softvi bench --backend (gpu|native|auto)")
    args = ap.parse_args()
    try:
        import jax  # noqa: F401
    except ImportError:
        print("JAX is not installed: pip install numpy 'jax[cpu]'", file=sys.stderr)
        sys.exit(2)
    n = args.size
    with tempfile.TemporaryDirectory() as tmp:
        random_free = np.random.default_rng(0).random((n, n)) > 0.2
        random_map = os.path.join(tmp, f"random{n}.map")
        write_movingai(random_free, random_map)
        # The maze workload's free cells: walls are NaN in a one-sweep solve's values.
        subprocess.run(
            [
                args.softvi,
                "solve",
                "--maze",
                f"{n}x{n}",
                "--goal",
                "1,1",
                "--horizon",
                "1",
                "--backend",
                "native",
                "--no-policy",
                "--quiet",
                "--out",
                os.path.join(tmp, "maze"),
            ],
            check=True,
            capture_output=True,
        )
        maze_free = ~np.isnan(np.load(os.path.join(tmp, "maze", "values.npy"))[0])
        worlds = [
            (f"random{n}", random_free, ["--map", random_map], {"map-b1": 1, "map-b8": 8}),
            (
                f"maze{n}",
                maze_free,
                ["--workload", f"maze{n}-b1", "--workload", f"maze{n}-b8"],
                {f"maze{n}-b1": 1, f"maze{n}-b8": 8},
            ),
        ]
        rows = []
        for name, free, bench_args, workloads in worlds:
            fraction = free.mean()
            peer, ours, path = [], {w: [] for w in workloads}, ""
            # Interleaved repeats, medians reported: the machine is shared and noisy.
            for _ in range(args.repeats):
                peer.append(peer_rate(free, args.sweeps) * fraction)
                rates, path = softvi_rates(args.softvi, [*bench_args, "--backend", args.backend])
                for w in workloads:
                    ours[w].append(rates[w])
            p = statistics.median(peer)
            for w, tasks in workloads.items():
                o = statistics.median(ours[w])
                rows.append((name, tasks, fraction, p, path, o, o / p))
    print(
        f"{'world':<12} {'B':>2} {'free':>5} {'jaxstencil upd/s':>17} {'softvi path':<24} "
        f"{'softvi upd/s':>13} {'ratio':>6}"
    )
    for name, tasks, fraction, p, path, o, ratio in rows:
        print(
            f"{name:<12} {tasks:>2} {fraction:>5.2f} {p:>17.3e} {path:<24} {o:>13.3e} "
            f"{ratio:>5.2f}x"
        )
    print(
        json.dumps(
            [
                dict(
                    world=r[0],
                    tasks=r[1],
                    free_fraction=round(float(r[2]), 4),
                    peer_updates_per_s=r[3],
                    softvi_path=r[4],
                    softvi_updates_per_s=r[5],
                    ratio=r[6],
                )
                for r in rows
            ]
        )
    )


if __name__ == "__main__":
    main()
