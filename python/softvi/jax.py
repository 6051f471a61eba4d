"""Soft value iteration as a JAX primitive, differentiable by forward messages.

``soft_value_iteration`` is a ``jax.custom_vjp``: the forward pass is :func:`softvi.solve`,
the backward pass :func:`softvi.vjp` from the forward's V (one forward-message solve seeded
with the cotangent), both
through ``jax.pure_callback``, so it works under ``jit``, ``vmap`` (over a leading task axis of
the reward, one solve per element) and ``grad``, with memory independent of the number of
sweeps. Arrays on an accelerator are copied to the host and back. The values come from
``device``, the gradients from :func:`softvi.vjp` on the same ``device`` (the native engine's
where it solves forward, else the f64 CPU reference's).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from ._gradients import Primitive
from ._mdp import TabularMDP
from ._solve import Backup, Device


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
            reference, by default) and the gradient's ``device`` (see :func:`softvi.vjp`).
        tol: infinite horizon: the forward solve's tolerance and the gradient's (see
            :func:`softvi.vjp`).

    Returns:
        V shaped as :func:`softvi.solve` returns it (``[S]`` or ``[B,S]``), or a tuple of the
        ``outputs`` in their order; terminal states' rows of Q and pi are NaN.
    """
    primitive = Primitive(world, horizon, backup, tuple(outputs), device, float(tol))
    terminal_value, transition_probs = primitive.defaults(terminal_value, transition_probs)
    dtype = jnp.result_type(reward, float)
    result = _svi(
        primitive,
        jnp.asarray(reward, dtype),
        jnp.asarray(alpha, dtype),
        jnp.asarray(gamma, dtype),
        jnp.asarray(terminal_value, dtype),
        jnp.asarray(transition_probs, dtype),
    )
    return result[0] if len(primitive.outputs) == 1 else result


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _svi(primitive: Primitive, reward, alpha, gamma, terminal_value, probs):
    shapes = tuple(
        jax.ShapeDtypeStruct(shape, reward.dtype) for shape in primitive.shapes(reward.shape)
    )
    return jax.pure_callback(
        primitive.solve, shapes, reward, alpha, gamma, terminal_value, probs,
        vmap_method="sequential",
    )  # fmt: skip


def _svi_forward(primitive: Primitive, reward, alpha, gamma, terminal_value, probs):
    # V comes along as a residual, so that the backward pass starts from the fixed point.
    shapes = tuple(
        jax.ShapeDtypeStruct(shape, reward.dtype)
        for shape in (*primitive.shapes(reward.shape), primitive.values_shape(reward.shape))
    )
    *out, solution = jax.pure_callback(
        primitive.solve_keeping_values, shapes, reward, alpha, gamma, terminal_value, probs,
        vmap_method="sequential",
    )  # fmt: skip
    return tuple(out), (reward, alpha, gamma, terminal_value, probs, solution)


def _svi_backward(primitive: Primitive, residuals, cotangents):
    shapes = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in residuals[:-1])
    return jax.pure_callback(
        primitive.gradients, shapes, *residuals, *cotangents, vmap_method="sequential"
    )


_svi.defvjp(_svi_forward, _svi_backward)
