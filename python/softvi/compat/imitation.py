"""``imitation.algorithms.mce_irl``'s tabular solvers, computed by softvi.

An ``imitation`` user switches by changing one import::

    # from imitation.algorithms.mce_irl import mce_occupancy_measures, mce_partition_fh
    from softvi.compat.imitation import mce_occupancy_measures, mce_partition_fh

    V, Q, pi = mce_partition_fh(env, reward=r, discount=0.99)
    D, D_cum = mce_occupancy_measures(env, pi=pi, discount=0.99)

Same signatures, shapes and conventions as imitation's (``env`` a ``seals`` tabular env with
``transition_matrix`` ``[S,A,S]``, ``reward_matrix``, a finite ``horizon`` H and
``initial_state_dist``), plus a keyword ``device`` (as in :func:`softvi.solve`). Results are
float64 arrays: the CPU reference's f64 values (on the env's own float64 entries, within
1e-10 of imitation's recurrences), or a GPU's float32 values; the policy's rows are
renormalised in float64 (a change within the engine's rounding), so that they sum to 1 as
NumPy's ``Generator.choice`` checks it in imitation's own rollouts. A dense float64
``transition_matrix`` is read in place during a call (10^8 entries are not copied): keep it
unchanged while a call runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .._envs import _expected_reward, _seals_model
from .._mdp import TabularMDP
from .._solve import Device, solve


def _world(env: Any, reward: ArrayLike | None) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """The horizon, ``T`` ``[S,A,S]``, the reward ``[S]`` or ``[S,A]`` and the start of ``env``."""
    model = _seals_model(env)
    horizon = getattr(model, "horizon", None)
    if horizon is None:
        raise ValueError("Only finite-horizon environments are supported.")
    transitions = np.asarray(model.transition_matrix, dtype=np.float64)
    states, actions = transitions.shape[0], transitions.shape[1]
    r = np.asarray(model.reward_matrix if reward is None else reward, dtype=np.float64)
    if r.shape not in ((states,), (states, actions), (states, actions, states)):
        raise ValueError(
            f"reward has shape {r.shape}; expected [S] = [{states}], [S,A] = [{states}, "
            f"{actions}] or [S,A,S]"
        )
    initial = np.asarray(model.initial_state_dist, dtype=np.float64)
    return int(horizon), transitions, _expected_reward(r, transitions), initial


def mce_partition_fh(
    env: Any,
    *,
    reward: ArrayLike | None = None,
    discount: float = 1.0,
    device: Device = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""The soft Bellman backup of a finite-horizon MDP (Ziebart 2010, (9.1)-(9.3)).

    With H the env's horizon and temperature 1: ``Q[H-1] = r``,
    ``Q[t] = r + discount * T @ V[t+1]``, ``V[t] = logsumexp_a Q[t]``,
    ``pi[t] = exp(Q[t] - V[t])``.

    Args:
        env: a tabular, known-dynamics MDP (a ``seals`` tabular env, or a gymnasium env
            wrapping one).
        reward: ``r(s)`` ``[S]`` (imitation's shape), or ``r(s,a)`` ``[S,A]`` or
            ``r(s,a,s')`` ``[S,A,S]``; defaults to ``env.reward_matrix``.
        discount: discount rate in [0, 1].
        device: as in :func:`softvi.solve`.

    Returns:
        ``(V, Q, pi)``: V ``[H,S]`` indexed ``V[t,s]``, Q and pi ``[H,S,A]`` indexed
        ``[t,s,a]``.

    Raises:
        ValueError: ``env.horizon`` is None (infinite horizon), or a reward of another shape.
        DeviceError: ``device="gpu"`` and no usable adapter.
    """
    horizon, transitions, r, initial = _world(env, reward)
    mdp = TabularMDP._reading_in_place(transitions, r, initial=initial)
    res = solve(
        mdp,
        alpha=1.0,
        gamma=float(discount),
        horizon=horizon,
        q=True,
        all_steps=True,
        device=device,
    )
    values = res.values[:horizon].astype(np.float64)
    return values, res.q.astype(np.float64), _rows_summing_to_one(res.policy)


def _rows_summing_to_one(policy: np.ndarray) -> np.ndarray:
    """``policy`` ``[..., A]`` in float64 with each row divided by its float64 sum.

    A float32 row sums to 1 only within float32 rounding (1e-7); imitation samples with
    ``Generator.choice``, which checks the sum in float64 (to about 1e-8) and refused rows
    of GPU policies. Rows without a policy (NaN) stay NaN.
    """
    p = policy.astype(np.float64)
    return p / p.sum(axis=-1, keepdims=True)


def _discounted_sum(d: np.ndarray, discount: float) -> np.ndarray:
    """``sum_t discount^t d[t]`` (``0^0 = 1``), as imitation's ``rollout.discounted_sum``."""
    if discount == 1.0:
        return d.sum(axis=0)
    weights = float(discount) ** np.arange(d.shape[0], dtype=np.float64)
    return weights @ d


def mce_occupancy_measures(
    env: Any,
    *,
    reward: ArrayLike | None = None,
    pi: ArrayLike | None = None,
    discount: float = 1.0,
    device: Device = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """The state visitation frequencies of a policy, per step and discounted in sum.

    ``D[0] = env.initial_state_dist``, ``D[t+1](s') = sum_{s,a} D[t](s) pi[t,s,a]
    T[s,a,s']`` (undiscounted per step), ``D_cum = sum_t discount^t D[t]``.

    Args:
        env: a tabular, known-dynamics MDP (a ``seals`` tabular env, or a gymnasium env
            wrapping one).
        reward: the reward whose soft-optimal policy is simulated when ``pi`` is None
            (shapes as in :func:`mce_partition_fh`); defaults to ``env.reward_matrix``.
        pi: the policy to simulate, ``[H,S,A]``. Defaults, as in imitation, to the policy
            of ``mce_partition_fh(env, reward=reward)``: undiscounted, whatever ``discount``
            is (``discount`` only weighs the sum). Pass ``pi`` to simulate another one.
        discount: the rate that discounts the cumulative occupancy ``D_cum``.
        device: as in :func:`softvi.solve`. A given ``pi`` is simulated in NumPy: in
            float64 on ``"cpu"``, in float32 (as the engine computes there) elsewhere.

    Returns:
        ``(D, D_cum)``: ``D`` ``[H+1,S]`` the probability of each state at each step
        ``0..H``, ``D_cum`` ``[S]`` the expected discounted number of visits.

    Raises:
        ValueError: ``env.horizon`` is None (infinite horizon), or a reward or ``pi`` of
            another shape.
        DeviceError: ``device="gpu"`` and no usable adapter.
    """
    horizon, transitions, r, initial = _world(env, reward)
    if pi is None:
        mdp = TabularMDP._reading_in_place(transitions, r, initial=initial)
        # gamma = 1: the engine's per-step policy and occupancy are then imitation's
        # (undiscounted) ones.
        settings = dict(alpha=1.0, gamma=1.0, horizon=horizon, device=device)
        if device == "cpu" and np.count_nonzero(transitions) >= transitions.size // 4:
            # A mostly full T on the f64 reference, which pulls over the transposed CSR
            # (10^8 entries at S = 5,000, A = 4): its policy, pushed forward by BLAS products.
            # (The native engine keeps such a T dense and pushes it itself.)
            res = solve(mdp, all_steps=True, **settings)
            d = _pushed_forward(transitions, _rows_summing_to_one(res.policy), initial, np.float64)
        else:
            res = solve(mdp, policy=False, occupancy=True, **settings)
            d = res.occupancy.astype(np.float64)
    else:
        policy = np.asarray(pi, dtype=np.float64)
        want = (horizon, transitions.shape[0], transitions.shape[1])
        if policy.shape != want:
            raise ValueError(f"pi has shape {policy.shape}; expected [H,S,A] = {list(want)}")
        dtype = np.float64 if device == "cpu" else np.float32
        d = _pushed_forward(transitions, policy, initial, dtype)
    return d, _discounted_sum(d, float(discount))


def _pushed_forward(
    transitions: np.ndarray, policy: np.ndarray, initial: np.ndarray, dtype: type
) -> np.ndarray:
    """``D[t+1] = sum_{s,a} D[t](s) pi[t,s,a] T[s,a,:]`` for every step, ``[H+1,S]``.

    Each step is one product with ``T`` as ``[S*A, S]``: a BLAS matrix-vector product in
    ``dtype`` where ``T`` is mostly full (float32 reads half the bytes of float64, and the
    product is bound by reading ``T``), a sum over its nonzeros where it is sparse (an
    ``einsum`` over the dense ``[S,A,S]`` took 12.5 s where the engine's own pass took 1.3 s).
    """
    horizon, states, actions = policy.shape
    flat = transitions.reshape(states * actions, states)
    d = np.zeros((horizon + 1, states))
    d[0] = initial
    if np.count_nonzero(flat) < flat.size // 4:
        rows, cols = np.nonzero(flat)
        probs = flat[rows, cols]
        for t in range(horizon):
            mass = (d[t][:, None] * policy[t]).reshape(-1)
            d[t + 1] = np.bincount(cols, weights=mass[rows] * probs, minlength=states)
    else:
        flat = flat.astype(dtype, copy=False)
        for t in range(horizon):
            d[t + 1] = (d[t][:, None] * policy[t]).reshape(-1).astype(dtype) @ flat
    return d
