"""Soft value iteration as a JAX primitive, differentiable by forward messages.

``soft_value_iteration`` is a ``jax.custom_vjp``: the forward pass is :func:`softvi.solve`,
the backward pass :func:`softvi.vjp` (one forward-message solve seeded with the cotangent), both
through ``jax.pure_callback``, so it works under ``jit``, ``vmap`` (over a leading task axis of
the reward, one solve per element) and ``grad``, with memory independent of the number of
sweeps. Arrays on an accelerator are copied to the host and back. The gradients come from the
f64 CPU reference; the values from ``device``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._gradients import vjp
from ._mdp import TabularMDP, _check_mdp
from ._solve import Backup, Device, solve

_OUTPUTS = ("values", "q", "policy")


def soft_value_iteration(
    world: TabularMDP,
    reward: Any,
    *,
    alpha: Any = 1.0,
    gamma: Any = 0.99,
    horizon: int | None = None,
    backup: Backup = "expected",
    terminal_value: Any = None,
    transition_probs: Any = None,
    outputs: tuple[str, ...] = ("values",),
    device: Device = "cpu",
    tol: float = 1e-10,
) -> Any:
    """V (and Q, pi as ``outputs`` asks) of ``world`` with ``reward``, differentiable.

    Args:
        world: the dynamics, terminal states and start (a :class:`softvi.TabularMDP`).
        reward: any shape :class:`softvi.TabularMDP` takes: ``[S]``, ``[S,A]``, ``[B,S]``,
            ``[B,S,A]``; its gradient has its shape.
        alpha: temperature (a framework scalar is differentiable).
        gamma: discount (a framework scalar is differentiable).
        horizon: a finite horizon T (``V_0``), or None for the fixed point (``gamma < 1``).
        backup: ``"expected"`` or ``"optimistic"``.
        terminal_value: ``[S]`` or ``[B,S]``, replacing the world's (default: the world's).
        transition_probs: ``[nnz]``, the stored nonzeros' probabilities in CSR order
            (``world.arrays()["data"]``), replacing the world's.
        outputs: a tuple of ``"values"``, ``"q"``, ``"policy"``.
        device: where the forward solve runs (see :func:`softvi.solve`; ``"cpu"``, the f64
            reference, by default).
        tol: infinite horizon: the forward solve's tolerance.

    Returns:
        V shaped as :func:`softvi.solve` returns it (``[S]`` or ``[B,S]``), or a tuple of the
        ``outputs`` in their order; terminal states' rows of Q and pi are NaN.
    """
    _check_mdp(world)
    outputs = tuple(outputs)
    if not outputs or any(o not in _OUTPUTS for o in outputs):
        raise ValueError(f"outputs must be a non-empty tuple of {_OUTPUTS}, got {outputs!r}")
    arrays = world.arrays()
    dtype = jnp.result_type(reward, float)
    if terminal_value is None:
        terminal_value = arrays["terminal_value"][0]
    if transition_probs is None:
        transition_probs = arrays["data"]
    static = (world, horizon, backup, outputs, device, float(tol))
    result = _svi(
        static,
        jnp.asarray(reward, dtype),
        jnp.asarray(alpha, dtype),
        jnp.asarray(gamma, dtype),
        jnp.asarray(terminal_value, dtype),
        jnp.asarray(transition_probs, dtype),
    )
    return result[0] if len(outputs) == 1 else result


def _model(static: tuple, reward, terminal_value, probs) -> TabularMDP:
    """The world with these arrays (NumPy, on the host)."""
    world = static[0]
    return world.replace(
        reward=np.asarray(reward, np.float64),
        terminal_value=np.asarray(terminal_value, np.float64),
        transition_probs=np.asarray(probs, np.float64),
    )


def _shapes(static: tuple, reward: jax.Array) -> tuple[jax.ShapeDtypeStruct, ...]:
    """The outputs' shapes and dtype for ``reward``."""
    world, horizon, _, outputs, _, _ = static
    s, a = world.states, world.actions
    batched = reward.ndim == 3 or (reward.ndim == 2 and reward.shape != (s, a))
    lead = (reward.shape[0],) if batched else ()
    shape = {"values": (*lead, s), "q": (*lead, s, a), "policy": (*lead, s, a)}
    return tuple(jax.ShapeDtypeStruct(shape[o], reward.dtype) for o in outputs)


def _forward_host(static: tuple, reward, alpha, gamma, terminal_value, probs):
    world, horizon, backup, outputs, device, tol = static
    mdp = _model(static, reward, terminal_value, probs)
    res = solve(
        mdp, alpha=float(alpha), gamma=float(gamma), backup=backup, horizon=horizon, tol=tol,
        policy="policy" in outputs, q="q" in outputs, device=device,
    )  # fmt: skip
    dtype = np.asarray(reward).dtype
    return tuple(np.asarray(getattr(res, o), dtype) for o in outputs)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _svi(static, reward, alpha, gamma, terminal_value, probs):
    return jax.pure_callback(
        partial(_forward_host, static),
        _shapes(static, reward),
        reward, alpha, gamma, terminal_value, probs,
        vmap_method="sequential",
    )  # fmt: skip


def _svi_forward(static, reward, alpha, gamma, terminal_value, probs):
    out = _svi(static, reward, alpha, gamma, terminal_value, probs)
    return out, (reward, alpha, gamma, terminal_value, probs)


def _backward_host(static: tuple, reward, alpha, gamma, terminal_value, probs, *cotangents):
    world, horizon, backup, outputs, _, _ = static
    mdp = _model(static, reward, terminal_value, probs)
    given = dict(zip(outputs, cotangents, strict=True))
    grads = vjp(
        mdp,
        values=given.get("values"),
        q=given.get("q"),
        policy=given.get("policy"),
        alpha=float(alpha),
        gamma=float(gamma),
        backup=backup,
        horizon=horizon,
    )
    reward = np.asarray(reward)
    r_bar = grads.reward
    # [..., S, A] back to the reward's own shape: a state reward [S] / [B,S] sums the actions.
    s, a = world.states, world.actions
    if reward.ndim == 1 or (reward.ndim == 2 and reward.shape != (s, a)):
        r_bar = r_bar.sum(axis=-1)
    tv = np.asarray(terminal_value)
    tv_bar = grads.terminal_value
    if tv.ndim < tv_bar.ndim:
        tv_bar = tv_bar.sum(axis=0)
    dtype = reward.dtype
    return (
        r_bar.reshape(reward.shape).astype(dtype),
        np.asarray(grads.alpha, dtype),
        np.asarray(grads.gamma, dtype),
        tv_bar.reshape(tv.shape).astype(dtype),
        grads.transition_probs.astype(dtype),
    )


def _svi_backward(static, residuals, cotangents):
    reward, alpha, gamma, terminal_value, probs = residuals
    shapes = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in residuals)
    # NaN entries of an output (terminal rows) carry no gradient.
    cotangents = tuple(jnp.nan_to_num(c, nan=0.0) for c in cotangents)
    return jax.pure_callback(
        partial(_backward_host, static),
        shapes,
        reward, alpha, gamma, terminal_value, probs, *cotangents,
        vmap_method="sequential",
    )  # fmt: skip


_svi.defvjp(_svi_forward, _svi_backward)
