#!/usr/bin/env python3
"""softvi.compat.imitation against imitation's own NumPy code on a dense random env, one run.

The env: S states, A actions, every transition nonzero (``[S,A,S]`` float64, rows drawn
U(0, 1) then normalised, seed 0), reward U(0, 1) ``[S]``, horizon H, uniform start: the dense
model issue 21 names (S = 5,000, A = 4, H = 100). The peer is imitation's
``mce_partition_fh`` and ``mce_occupancy_measures`` (``imitation.algorithms.mce_irl``, v1.0),
copied below line for line so that it runs without imitation's dependencies (torch, stable
baselines). Both sides get the same env object.

Rows: ``mce_partition_fh``; ``mce_occupancy_measures`` with the default policy (imitation's
computes ``mce_partition_fh`` inside); ``mce_occupancy_measures`` given ``pi`` (the policy
imitation's partition returned). softvi runs on ``--device`` (default ``auto``). Each figure
is the median of ``--repeats`` runs, the two sides alternating; the largest gap between
their results is printed too.

Usage: benches/imitation_dense.py [--states 5000] [--actions 4] [--horizon 100]
                                  [--repeats 3] [--device auto]
Needs softvi (maturin develop), numpy, scipy.
"""

import argparse
import statistics
import time
from types import SimpleNamespace

import numpy as np
import scipy.special

from softvi.compat import imitation as compat


def imitation_partition_fh(env, *, reward=None, discount=1.0):
    """imitation.algorithms.mce_irl.mce_partition_fh (v1.0)."""
    horizon = env.horizon
    n_states = env.state_dim
    n_actions = env.action_dim
    T = env.transition_matrix
    if reward is None:
        reward = env.reward_matrix
    V = np.full((horizon, n_states), -np.inf)
    Q = np.zeros((horizon, n_states, n_actions))
    broad_R = reward[:, None]
    Q[horizon - 1, :, :] = broad_R
    V[horizon - 1, :] = scipy.special.logsumexp(Q[horizon - 1, :, :], axis=1)
    for t in reversed(range(horizon - 1)):
        next_values_s_a = T @ V[t + 1, :]
        Q[t, :, :] = broad_R + discount * next_values_s_a
        V[t, :] = scipy.special.logsumexp(Q[t, :, :], axis=1)
    pi = np.exp(Q - V[:, :, None])
    return V, Q, pi


def imitation_occupancy_measures(env, *, reward=None, pi=None, discount=1.0):
    """imitation.algorithms.mce_irl.mce_occupancy_measures (v1.0)."""
    horizon = env.horizon
    n_states = env.state_dim
    n_actions = env.action_dim
    T = env.transition_matrix
    if reward is None:
        reward = env.reward_matrix
    if pi is None:
        _, _, pi = imitation_partition_fh(env, reward=reward)
    D = np.zeros((horizon + 1, n_states))
    D[0, :] = env.initial_state_dist
    for t in range(horizon):
        for a in range(n_actions):
            E = D[t] * pi[t, :, a]
            D[t + 1, :] += E @ T[:, a, :]
    weights = discount ** np.arange(horizon + 1)
    return D, weights @ D


def dense_env(states: int, actions: int, horizon: int) -> SimpleNamespace:
    """A seals-like tabular env with every transition nonzero."""
    rng = np.random.default_rng(0)
    p = rng.random((states, actions, states))
    p /= p.sum(axis=2, keepdims=True)
    return SimpleNamespace(
        transition_matrix=p,
        reward_matrix=rng.random(states),
        initial_state_dist=np.full(states, 1.0 / states),
        horizon=horizon,
        state_dim=states,
        action_dim=actions,
    )


def timed(f):
    """``f()`` and its wall time: (seconds, result)."""
    start = time.perf_counter()
    out = f()
    return time.perf_counter() - start, out


def main() -> None:
    """Prints one line per function: imitation's time, softvi's, their ratio, the largest gap."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--states", type=int, default=5000)
    parser.add_argument("--actions", type=int, default=4)
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    env = dense_env(args.states, args.actions, args.horizon)
    print(
        f"dense env: S = {args.states}, A = {args.actions}, H = {args.horizon}, "
        f"{env.transition_matrix.size:.3g} transitions; softvi device {args.device!r}; "
        f"medians of {args.repeats}"
    )
    _, _, pi = imitation_partition_fh(env, discount=0.99)
    rows = {
        "mce_partition_fh": (
            lambda: imitation_partition_fh(env, discount=0.99),
            lambda: compat.mce_partition_fh(env, discount=0.99, device=args.device),
        ),
        "mce_occupancy_measures (default pi)": (
            lambda: imitation_occupancy_measures(env, discount=0.99),
            lambda: compat.mce_occupancy_measures(env, discount=0.99, device=args.device),
        ),
        "mce_occupancy_measures (given pi)": (
            lambda: imitation_occupancy_measures(env, pi=pi, discount=0.99),
            lambda: compat.mce_occupancy_measures(env, pi=pi, discount=0.99, device=args.device),
        ),
    }
    print(f"{'':38} {'imitation':>10} {'softvi':>10} {'ratio':>7} {'max gap':>9}")
    for name, (peer, ours) in rows.items():
        peer_s, ours_s = [], []
        for _ in range(args.repeats):
            t, expected = timed(peer)
            peer_s.append(t)
            t, got = timed(ours)
            ours_s.append(t)
        gap = max(
            float(np.nanmax(np.abs(np.asarray(e) - g))) for e, g in zip(expected, got, strict=True)
        )
        p, o = statistics.median(peer_s), statistics.median(ours_s)
        print(f"{name:38} {p:9.2f}s {o:9.2f}s {p / o:6.2f}x {gap:9.2e}")


if __name__ == "__main__":
    main()
