"""What the Python package adds to a solve, measured against the engine and the CLI.

1. Per-call overhead of a FrozenLake 4x4 solve (finite horizon, every step) on the CPU
   reference: wall time of ``softvi.solve`` minus the engine's own ``seconds``, and the
   whole call, medians over repeated calls.
2. A large MDP (default 10^6 states, 4 actions, 3 successors per pair) built from a
   ``scipy.sparse`` matrix and solved through Python, against ``softvi solve --mdp`` on the
   same MDP saved as ``.npz``, same settings and device; runs interleaved, medians reported.

Usage (in a venv with the wheel installed, e.g. ``pip install ./python scipy gymnasium``):
    python benches/python_overhead.py [--states N] [--horizon T] [--repeats K] [--device D]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

import softvi


def frozenlake_overhead(calls: int) -> dict[str, float]:
    """Median whole-call and binding-only milliseconds of a FrozenLake 4x4 solve on the CPU."""
    import gymnasium as gym

    mdp = softvi.from_gymnasium(gym.make("FrozenLake-v1"))
    whole, binding = [], []
    for _ in range(calls):
        start = time.perf_counter()
        result = softvi.solve(
            mdp, alpha=0.0, gamma=1.0, horizon=mdp.horizon, all_steps=True, device="cpu"
        )
        elapsed = time.perf_counter() - start
        whole.append(elapsed * 1e3)
        binding.append((elapsed - result.seconds) * 1e3)
    return {"call_ms": statistics.median(whole), "binding_ms": statistics.median(binding)}


def large_mdp(states: int, actions: int, successors: int, seed: int):
    """A random sparse MDP: a CSR matrix ``(S*A, S)`` and a reward ``[S, A]``.

    Each (s, a) moves to ``successors`` states near s (a ring with jumps).
    """
    rng = np.random.default_rng(seed)
    rows = states * actions
    offsets = rng.integers(-50, 51, size=(rows, successors))
    offsets[:, 0] = rng.integers(-2, 3, size=rows)
    base = np.repeat(np.arange(states), actions)[:, None]
    indices = np.sort((base + offsets) % states, axis=1)
    data = rng.random((rows, successors)) + 0.1
    data /= data.sum(axis=1, keepdims=True)
    indptr = np.arange(0, rows * successors + 1, successors)
    p = sp.csr_matrix((data.ravel(), indices.ravel(), indptr), shape=(rows, states))
    return p, rng.normal(size=(states, actions))


def main() -> None:
    """Runs both measurements and prints one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--states", type=int, default=1_000_000)
    parser.add_argument("--horizon", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", choices=["auto", "gpu", "cpu"])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()

    report: dict[str, object] = {"frozenlake_cpu": frozenlake_overhead(args.calls)}
    p, r = large_mdp(args.states, 4, 3, seed=0)
    cli = Path(sys.executable).with_name("softvi")
    python_s, python_engine_s, cli_s, cli_engine_s = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "large.npz"
        softvi.TabularMDP(p, r).save_npz(path)
        backend = {"auto": "gpu", "gpu": "gpu", "cpu": "cpu"}[args.device]
        for k in range(args.repeats):
            start = time.perf_counter()
            result = softvi.solve(
                softvi.TabularMDP(p, r), alpha=1.0, gamma=0.95, horizon=args.horizon,
                device=args.device,
            )  # fmt: skip
            python_s.append(time.perf_counter() - start)
            python_engine_s.append(result.seconds)
            out = Path(tmp) / f"out{k}"
            start = time.perf_counter()
            subprocess.run(
                [
                    str(cli), "solve", "--mdp", str(path), "--alpha", "1", "--gamma", "0.95",
                    "--horizon", str(args.horizon), "--backend", backend, "--out", str(out),
                    "--quiet",
                ],
                check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            cli_s.append(time.perf_counter() - start)
            cli_engine_s.append(json.loads((out / "summary.json").read_text())["seconds"])
    report["large_mdp"] = {
        "states": args.states,
        "actions": 4,
        "nonzeros": int(p.nnz),
        "horizon": args.horizon,
        "adapter": result.adapter,
        "python_from_scipy_sparse_s": statistics.median(python_s),
        "python_engine_s": statistics.median(python_engine_s),
        "cli_whole_command_s": statistics.median(cli_s),
        "cli_engine_s": statistics.median(cli_engine_s),
        "python_over_cli": statistics.median(python_s) / statistics.median(cli_s),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
