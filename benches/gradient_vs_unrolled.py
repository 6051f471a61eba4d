"""The gradient of a maze's soft values with respect to its reward map: softvi against JAX.

The gradient of sum(initial * V_0) with respect to a [H,W] reward map on a maze, by softvi's
forward + VJP (softvi.jax.soft_value_iteration) against the same gradient by autodiff through
value iteration unrolled in JAX (jit, CPU): time and peak memory, each in its own process.
softvi runs twice: on the f64 CPU reference (device="cpu", the default: the f64 VJP refines
the forward's V) and on the native f32 engine (device="native": the forward on the grid
kernels, the VJP at its f32 V as it is).

    python benches/gradient_vs_unrolled.py [SIZE] [REPEATS]

Defaults: a 255 x 255 maze (SIZE 255; the maze generator wants odd sizes), 8-connected, slip
0.1, alpha 0.5, gamma 0.99, softvi's fixed point to tol 1e-4; the unrolled iteration runs as
many sweeps as plain value iteration needs to the same residual (counted first), in float64.
Prints seconds (median of REPEATS after a warm-up), the peak resident memory each process added
over its imports, the gradients' largest relative difference, and the machine's load average
before and after (the methods run one after another: a load that changes between them moves
the ratios).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time


def peak_mib() -> float:
    """Peak resident memory of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def world(size: int):
    """The maze, its goal, its MDP and the reward map the gradient is taken against."""
    import numpy as np

    import softvi

    grid = softvi.Grid.maze(size, size, seed=0)
    rows, cols = np.nonzero(grid.free)
    goal = (int(rows[-1]), int(cols[-1]))
    mdp = grid.as_mdp([goal], slip=0.1)
    reward = np.random.default_rng(0).normal(0.0, 0.1, grid.free.shape) * grid.free
    return grid, goal, mdp, reward


def run(method: str, size: int, repeats: int) -> None:
    """One method's timing and memory, in a child process of its own; prints a JSON line."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from jax.scipy.special import logsumexp

    import softvi
    import softvi.jax

    grid, goal, mdp, reward = world(size)
    arrays = mdp.arrays()
    start = np.nan_to_num(mdp.to_cells(arrays["initial"]))[0]
    base_mib = peak_mib()
    if method.startswith("softvi"):
        device = method.split("-")[1]

        def grad_of(r):
            def objective(r):
                v = softvi.jax.soft_value_iteration(
                    mdp, r, alpha=0.5, gamma=0.99, tol=1e-4, device=device
                )
                return jnp.nansum(start * v[0])

            return jax.grad(objective)(r)

        grad = jax.jit(grad_of)
        sweeps = None
    else:
        # Sweeps plain value iteration needs to a residual of 1e-4.
        plain = softvi.solve_grid(
            grid, [goal], reward=reward, slip=0.1, alpha=0.5, gamma=0.99, tol=1e-4,
            extrapolate=False, policy=False, device="cpu",
        )  # fmt: skip
        sweeps = int(plain.iterations[0])
        s_n, a_n = mdp.states, mdp.actions
        rows = np.repeat(np.arange(s_n * a_n), np.diff(arrays["indptr"]))
        cols = arrays["indices"].astype(np.int64)
        probs = jnp.asarray(arrays["data"])
        terminal = jnp.asarray(arrays["terminal"][0])
        base, cells = jnp.asarray(arrays["R"][0]), jnp.asarray(mdp.cells)
        start_s = jnp.asarray(start.reshape(-1)[mdp.cells])

        def objective(r):
            rew = base + r.reshape(-1)[cells][:, None]

            def sweep(v, _):
                pv = jnp.zeros(s_n * a_n).at[rows].add(probs * v[cols]).reshape(s_n, a_n)
                q = rew + 0.99 * pv
                v = jnp.where(terminal, 0.0, 0.5 * logsumexp(q / 0.5, axis=1))
                return v, None

            v, _ = jax.lax.scan(sweep, jnp.zeros(s_n), None, length=sweeps)
            return jnp.sum(start_s * v)

        grad = jax.jit(jax.grad(objective))
    r = jnp.asarray(reward)
    g = np.asarray(grad(r))  # warm-up (compiles)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        g = np.asarray(grad(r))
        times.append(time.perf_counter() - t)
    np.save(f"/tmp/gradient_{method}.npy", g)
    print(
        json.dumps(
            {
                "method": method,
                "seconds": statistics.median(times),
                "peak_mib_over_imports": peak_mib() - base_mib,
                "sweeps": sweeps,
            }
        )
    )


def main() -> None:
    """Runs every method in its own process (or, with --child, one of them) and prints the table."""
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 255
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    import os

    print(f"load average before: {os.getloadavg()[0]:.1f}")
    results = {}
    for method in ("softvi-cpu", "softvi-native", "unrolled"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", method, str(size), str(repeats)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results[method] = json.loads(out.strip().splitlines()[-1])
        print(results[method])
    import numpy as np

    b = np.load("/tmp/gradient_unrolled.npy")
    u = results["unrolled"]
    print(
        f"{size}x{size} maze, {u['sweeps']} unrolled sweeps: unrolled JAX {u['seconds']:.2f} s, "
        f"{u['peak_mib_over_imports']:.0f} MiB"
    )
    for method in ("softvi-cpu", "softvi-native"):
        a = np.load(f"/tmp/gradient_{method}.npy")
        gap = float(np.abs(a - b).max() / np.abs(b).max())
        s = results[method]
        print(
            f"  {method}: {s['seconds']:.2f} s, {s['peak_mib_over_imports']:.0f} MiB; "
            f"time x{u['seconds'] / s['seconds']:.2f}, memory "
            f"x{u['peak_mib_over_imports'] / max(s['peak_mib_over_imports'], 1):.1f}; "
            f"gradients differ by {gap:.1e} (relative to the largest)"
        )
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
