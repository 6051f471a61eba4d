"""Soft value iteration as a PyTorch autograd function, differentiable by forward messages.

``soft_value_iteration`` runs :func:`softvi.solve` forward and :func:`softvi.vjp` backward from
the forward's V (one forward-message solve seeded with the cotangent), so memory does not grow
with the number of sweeps. CPU tensors reach NumPy without a copy; tensors on an accelerator are
copied to the host and the results back to their device. The gradients come from
:func:`softvi.vjp` on the forward's ``device`` (the native engine's where it solves forward,
else the f64 CPU reference's).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._gradients import Primitive
from ._mdp import TabularMDP
from ._solve import Backup, Device


def _host(x: torch.Tensor) -> np.ndarray:
    """``x`` as NumPy: the same memory for a CPU tensor, a host copy otherwise."""
    return x.detach().cpu().numpy()


class _SoftValueIteration(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, primitive: Primitive, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        reward = inputs[0]
        ctx.primitive = primitive
        ctx.save_for_backward(*inputs)
        *outs, ctx.solution = primitive.solve_keeping_values(*(_host(x) for x in inputs))
        return tuple(torch.as_tensor(o, device=reward.device) for o in outs)

    @staticmethod
    def backward(ctx: Any, *cotangents: torch.Tensor) -> tuple[Any, ...]:
        inputs = ctx.saved_tensors
        grads = ctx.primitive.gradients(
            *(_host(x) for x in inputs), ctx.solution, *(_host(c) for c in cotangents)
        )
        return (
            None,
            *(torch.as_tensor(g, device=x.device) for g, x in zip(grads, inputs, strict=True)),
        )


def soft_value_iteration(
    world: TabularMDP,
    reward: torch.Tensor,
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

    The same signature and results as :func:`softvi.jax.soft_value_iteration`, in tensors.

    Args:
        world: the dynamics, terminal states and start (a :class:`softvi.TabularMDP`).
        reward: a tensor of any shape :class:`softvi.TabularMDP` takes (``[S]``, ``[S,A]``,
            ``[B,S]``, ``[B,S,A]``); its gradient has its shape.
        alpha: temperature (a tensor is differentiable).
        gamma: discount (a tensor is differentiable).
        horizon: a finite horizon T (``V_0``), or None for the fixed point (``gamma < 1``).
        backup: ``"expected"`` or ``"optimistic"``.
        terminal_value: ``[S]`` or ``[B,S]``, replacing the world's.
        transition_probs: ``[nnz]`` in CSR order (``world.arrays()["data"]``), replacing the
            world's.
        outputs: a tuple of ``"values"``, ``"q"``, ``"policy"``.
        device: where the forward solve runs (see :func:`softvi.solve`) and the gradient's
            ``device`` (see :func:`softvi.vjp`).
        tol: infinite horizon: the forward solve's tolerance and the gradient's (see
            :func:`softvi.vjp`).

    Returns:
        V shaped as :func:`softvi.solve` returns it, or a tuple of the ``outputs``.
    """
    primitive = Primitive(world, horizon, backup, tuple(outputs), device, float(tol))
    terminal_value, transition_probs = primitive.defaults(terminal_value, transition_probs)
    reward = torch.as_tensor(reward)
    if not reward.is_floating_point():
        reward = reward.to(torch.get_default_dtype())

    def tensor(x: Any) -> torch.Tensor:
        return torch.as_tensor(x, dtype=reward.dtype, device=reward.device)

    result = _SoftValueIteration.apply(
        primitive,
        reward,
        tensor(alpha),
        tensor(gamma),
        tensor(terminal_value),
        tensor(transition_probs),
    )
    return result[0] if len(primitive.outputs) == 1 else result
