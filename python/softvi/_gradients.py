"""Gradients of a solve: the vector-Jacobian product by forward messages (``softvi.vjp``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import _softvi
from ._mdp import TabularMDP, _check_mdp
from ._solve import Backup, _settings


@dataclass
class Gradients:
    """The gradient of ``<cotangents, outputs>`` of a solve (see :func:`vjp`).

    - ``reward``: with respect to ``r(s,a)``, ``[B,S,A]`` (``[S,A]`` for an MDP without a task
      axis); 0 on excluded actions and terminal states.
    - ``terminal_value``: with respect to the terminal values, ``[B,S]`` (``[S]``); 0 off
      terminal states.
    - ``transition_probs``: with respect to the stored transition probabilities, ``[nnz]`` in
      CSR order (``mdp.arrays()["data"]``), summed over the tasks.
    - ``alpha``, ``gamma``: with respect to the temperature and the discount.
    - ``sweeps``: iterations of the adjoint (forward-message) solve (T for a finite horizon).
    """

    reward: np.ndarray
    terminal_value: np.ndarray
    transition_probs: np.ndarray
    alpha: float
    gamma: float
    sweeps: int


def _cotangent(name: str, x: ArrayLike | None, batched: bool, tasks: int) -> np.ndarray | None:
    """A cotangent as float64 with its task axis (added when the MDP has none)."""
    if x is None:
        return None
    try:
        array = np.ascontiguousarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} is not a numeric array: {e}") from None
    return array if batched else array.reshape((tasks, *array.shape))


def vjp(
    mdp: TabularMDP,
    *,
    values: ArrayLike | None = None,
    q: ArrayLike | None = None,
    policy: ArrayLike | None = None,
    alpha: float = 1.0,
    gamma: float = 0.99,
    backup: Backup = "expected",
    horizon: int | None = None,
    all_steps: bool = False,
    max_iters: int = 100_000,
) -> Gradients:
    r"""The vector-Jacobian product of :func:`softvi.solve` on the f64 CPU reference.

    With cotangents ``values`` (on V), ``q`` and ``policy`` shaped as ``solve`` returns those
    outputs (``[B,S]`` / ``[B,S,A]``, no B for an MDP without a task axis; ``[B,T+1,S]`` /
    ``[B,T,S,A]`` with ``all_steps``; ``None`` for zero), returns the gradient of
    ``sum(values * V) + sum(q * Q) + sum(policy * pi)`` with respect to every input. It is one
    forward-message solve seeded with the cotangent, ``u = c + gamma P_pi^T u`` (the occupancy
    recursion with a signed start), not an unrolled iteration: memory ``O(B S A)``
    (``O(B T S A)`` for a finite horizon) whatever the number of sweeps. At ``alpha = 0`` the
    argmax policy gives the subgradient. An infinite horizon is differentiated at its fixed
    point, iterated to f64's resolution (``gamma < 1``).

    Args:
        mdp: the world and rewards.
        values: the cotangent on V.
        q: the cotangent on the soft Q-values.
        policy: the cotangent on the policy.
        alpha: temperature, as in :func:`softvi.solve`.
        gamma: discount, as in :func:`softvi.solve`.
        backup: ``"expected"`` or ``"optimistic"``.
        horizon: a finite horizon T, or None for the fixed point.
        all_steps: the cotangents cover every step of the finite horizon.
        max_iters: most sweeps of the fixed point and of the adjoint.

    Returns:
        :class:`Gradients`.

    Raises:
        ValueError: a cotangent of the wrong size or with an infinite entry, a setting out of
            range, an infinite horizon at ``gamma = 1``.
    """
    _check_mdp(mdp)
    if values is None and q is None and policy is None:
        raise ValueError("give a cotangent: values, q or policy")
    settings = _settings(
        alpha, gamma, backup, horizon, 1.0, max_iters, False, True, False, all_steps, False,
        "cpu",
    )  # fmt: skip
    tasks, batched = mdp.tasks, mdp.batched
    raw = _softvi.vjp(
        mdp._mdp,
        settings,
        _cotangent("values", values, batched, tasks),
        _cotangent("q", q, batched, tasks),
        _cotangent("policy", policy, batched, tasks),
    )
    pick: Any = (lambda x: x) if batched else (lambda x: x[0])
    return Gradients(
        reward=pick(raw["reward"]),
        terminal_value=pick(raw["terminal_value"]),
        transition_probs=raw["probs"],
        alpha=float(raw["alpha"]),
        gamma=float(raw["gamma"]),
        sweeps=int(raw["sweeps"]),
    )
