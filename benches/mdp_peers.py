#!/usr/bin/env python3
"""softvi's default MDP path against its peers on mdpsolver's random models, in one run.

Models: S states, A = 5 actions, K = 20 successors per (s, a) drawn uniformly, probabilities
uniform then normalised, drawn exactly as ../shared/peers/csr_peers.py draws them (seed 0), so
its JAX peer sweeps the same transitions. Rewards U(0, 1) (mdpsolver's benchmark) for the hard
max; csr_peers' -U(0, 1) for the soft sweeps.

- alpha 0 (hard max), gamma 0.9 and 0.99, tol 1e-3: time to tolerance of `mdpsolver` (C++ value
  iteration, `parallel=True`, its own runtime) and of `softvi.solve(..., alpha=0,
  device="auto")` (the engine's `seconds`), and the largest gap between their values.
- alpha 1 (expected backup, gamma 0.99): sweeps/s of softvi's default path and of the f64
  reference (`device="cpu"`), each the difference of two finite-horizon solves (so that setup
  cancels), and of csr_peers.py's JAX gather peer on the same model.

- modified policy iteration (`method="mpi"`, `device="native"`) in the same run for each
  `--evaluations M` given (default 2 4 8 16): time to tolerance, full backups (improvements)
  and evaluation sweeps, at alpha 0 beside mdpsolver and value iteration, and at alpha 1
  (gamma 0.99, same tol) beside value iteration; and the largest gap to VI's values.

Every figure is the median of --repeats runs: the machine is shared and noisy.

Usage: benches/mdp_peers.py [--sizes 100000 1000000] [--gammas 0.9 0.99] [--tol 1e-3]
                            [--repeats 3] [--sweeps 20] [--evaluations 2 4 8 16]
Needs softvi (maturin develop), numpy, scipy; mdpsolver and jax[cpu] for their rows (a missing
peer is reported and skipped).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np
import scipy.sparse as sp

import softvi

A, K = 5, 20
EVALUATIONS: list[int] = []  # --evaluations
PEERS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "peers", "csr_peers.py")


def model(states: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Successors `[S*A, K]`, probabilities `[S*A, K]`, rewards -U(0,1) `[S, A]`.

    Drawn as csr_peers.py draws them.
    """
    rng = np.random.default_rng(0)
    idx = rng.integers(0, states, size=(states * A, K)).astype(np.int32)
    p = rng.random((states * A, K)).astype(np.float32)
    p /= p.sum(1, keepdims=True)
    r = -rng.random((states, A)).astype(np.float32)
    return idx, p, r


def median(xs: list[float]) -> float:
    """The median of ``xs``."""
    return statistics.median(xs)


def softvi_mdp(idx: np.ndarray, p: np.ndarray, reward: np.ndarray) -> softvi.TabularMDP:
    """The model as a softvi ``TabularMDP`` (CSR rows ``s*A + a``)."""
    states = reward.shape[0]
    csr = sp.csr_matrix(
        (p.ravel(), idx.ravel(), np.arange(0, idx.size + 1, K)),
        shape=(states * A, states),
    )
    return softvi.TabularMDP(csr, reward)


def hard_max(idx, p, r, gammas, tol, repeats) -> None:
    """Alpha 0 to ``tol``: softvi's default path (and MPI) against mdpsolver, per gamma."""
    states = r.shape[0]
    reward = -r  # U(0, 1)
    mdp = softvi_mdp(idx, p, reward)
    try:
        import mdpsolver
    except ImportError:
        mdpsolver = None
        print("  mdpsolver not installed: its rows are skipped")
    if mdpsolver is not None:
        probs, cols, rewards = (
            p.astype(np.float64).reshape(states, A, K).tolist(),
            None,
            None,
        )
        cols = idx.reshape(states, A, K).tolist()
        rewards = reward.astype(np.float64).tolist()
    for gamma in gammas:
        peer_ms, peer_v = [], None
        if mdpsolver is not None:
            m = mdpsolver.model()
            m.mdp(discount=gamma, rewards=rewards, tranMatProbs=probs, tranMatColumns=cols)
            for _ in range(repeats):
                m.solve(algorithm="vi", tolerance=tol, parallel=True)
                peer_ms.append(m.getRuntime())
            peer_v = np.asarray(m.getValueVector(), np.float64)
        ours, wall = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            res = softvi.solve(mdp, alpha=0.0, gamma=gamma, tol=tol, policy=False)
            wall.append(time.perf_counter() - t)
            ours.append(res.seconds)
        line = (
            f"  S={states} alpha 0 gamma {gamma} tol {tol}: softvi ({res.adapter}) "
            f"{median(ours):.3f} s engine / {median(wall):.3f} s wall, "
            f"{int(np.max(res.iterations))} sweeps"
        )
        if peer_v is not None:
            gap = float(np.max(np.abs(np.asarray(res.values, np.float64) - peer_v)))
            line += (
                f"; mdpsolver vi {median(peer_ms) / 1e3:.3f} s; softvi / mdpsolver "
                f"{median(ours) / (median(peer_ms) / 1e3):.2f}x time; max |dV| {gap:.2e} "
                f"(|V| <= {float(np.max(np.abs(peer_v))):.1f})"
            )
        print(line, flush=True)
        mpi_rows(mdp, 0.0, gamma, tol, repeats, ours, res)


def mpi_rows(mdp, alpha, gamma, tol, repeats, vi_seconds, vi_res) -> None:
    """Modified policy iteration at each of EVALUATIONS beside value iteration's figures."""
    for m in EVALUATIONS:
        secs = []
        for _ in range(repeats):
            res = softvi.solve(
                mdp, alpha=alpha, gamma=gamma, tol=tol, policy=False, device="native",
                method="mpi", evaluations=m,
            )  # fmt: skip
            secs.append(res.seconds)
        improvements = int(np.max(res.iterations))
        gap = float(np.max(np.abs(np.asarray(res.values) - np.asarray(vi_res.values))))
        print(
            f"    mpi m={m}: {median(secs):.3f} s ({median(secs) / median(vi_seconds):.2f}x "
            f"vi's time), {improvements} backups + {m * (improvements - 1)} evaluation "
            f"sweeps, bound {float(np.max(res.error_bound)):.1e}, max |V - V_vi| {gap:.1e}",
            flush=True,
        )


def soft_time_to_tol(idx, p, r, tol, repeats) -> None:
    """Alpha 1 (gamma 0.99) to tolerance: value iteration, then MPI (no peer solves it)."""
    mdp = softvi_mdp(idx, p, r)
    ours = []
    for _ in range(repeats):
        res = softvi.solve(mdp, alpha=1.0, gamma=0.99, tol=tol, policy=False)
        ours.append(res.seconds)
    print(
        f"  S={r.shape[0]} alpha 1 gamma 0.99 tol {tol}: softvi vi ({res.adapter}) "
        f"{median(ours):.3f} s, {int(np.max(res.iterations))} sweeps",
        flush=True,
    )
    mpi_rows(mdp, 1.0, 0.99, tol, repeats, ours, res)


def sweeps_per_s(mdp, device: str, short: int, long: int, repeats: int) -> float:
    """Sweeps/s from the difference of a `long` and a `short` finite-horizon solve."""
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        softvi.solve(mdp, alpha=1.0, gamma=0.99, horizon=short, policy=False, device=device)
        t_short = time.perf_counter() - t
        t = time.perf_counter()
        softvi.solve(mdp, alpha=1.0, gamma=0.99, horizon=long, policy=False, device=device)
        t_long = time.perf_counter() - t
        rates.append((long - short) / max(t_long - t_short, 1e-9))
    return median(rates)


def soft_sweeps(idx, p, r, sweeps, repeats) -> None:
    """Alpha 1 sweeps per second: softvi's default path and reference against the JAX peer."""
    states = r.shape[0]
    mdp = softvi_mdp(idx, p, r)
    ours = sweeps_per_s(mdp, "auto", 2, 2 + sweeps, repeats)
    label = softvi.solve(mdp, alpha=1.0, gamma=0.99, horizon=1, policy=False).adapter
    cpu = sweeps_per_s(mdp, "cpu", 1, 5, 1 if states > 200_000 else repeats)
    peer = None
    if os.path.exists(PEERS):
        runs = []
        for _ in range(repeats):
            out = subprocess.run(
                [sys.executable, PEERS, str(states), str(A), str(K), "jax"],
                capture_output=True,
                text=True,
                check=False,
            )
            found = re.search(r"sweeps_per_s=([0-9.]+)", out.stdout)
            if not found:
                print(f"  JAX peer failed: {out.stderr.strip()[-300:]}")
                break
            runs.append(float(found.group(1)))
        peer = median(runs) if runs else None
    else:
        print(f"  {PEERS} not found: the JAX peer is skipped")
    line = (
        f"  S={states} alpha 1 gamma 0.99 ({states * A * K:.1e} nonzeros): softvi "
        f"({label}) {ours:.2f} sweeps/s; reference (f64) {cpu:.2f} ({ours / cpu:.1f}x)"
    )
    if peer is not None:
        line += f"; JAX gather peer {peer:.2f} ({ours / peer:.2f}x)"
    print(line, flush=True)


def main() -> None:
    """Builds each model and prints its rows."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--gammas", type=float, nargs="+", default=[0.9, 0.99])
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sweeps", type=int, default=20)
    ap.add_argument("--evaluations", type=int, nargs="*", default=[2, 4, 8, 16])
    ap.add_argument("--no-soft-rate", action="store_true", help="skip the alpha 1 sweeps/s")
    args = ap.parse_args()
    EVALUATIONS[:] = args.evaluations
    print(
        f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; medians of {args.repeats}"
    )
    for states in args.sizes:
        idx, p, r = model(states)
        hard_max(idx, p, r, args.gammas, args.tol, args.repeats)
        soft_time_to_tol(idx, p, r, args.tol, args.repeats)
        if not args.no_soft_rate:
            soft_sweeps(idx, p, r, args.sweeps, args.repeats)


if __name__ == "__main__":
    main()
