"""Gradients of a solve: the vector-Jacobian product by forward messages (``softvi.vjp``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import _softvi
from ._mdp import TabularMDP, _check_mdp
from ._solve import Backup, Device, _settings, solve

OUTPUTS = ("values", "q", "policy")


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
    - ``kernels``: what ran it: ``"reference"`` (f64), ``"native"``, or on a GPU ``"grid"``
      (a :class:`GridMDP`'s grid kernels) or ``"csr"`` (the general-MDP kernels).
    """

    reward: np.ndarray
    terminal_value: np.ndarray
    transition_probs: np.ndarray
    alpha: float
    gamma: float
    sweeps: int
    kernels: str


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
    tol: float = 1e-10,
    max_iters: int = 100_000,
    solution: ArrayLike | None = None,
    device: Device = "cpu",
) -> Gradients:
    r"""The vector-Jacobian product of :func:`softvi.solve`, on the reference, natively or a GPU.

    With cotangents ``values`` (on V), ``q`` and ``policy`` shaped as ``solve`` returns those
    outputs (``[B,S]`` / ``[B,S,A]``, no B for an MDP without a task axis; ``[B,T+1,S]`` /
    ``[B,T,S,A]`` with ``all_steps``; ``None`` for zero), returns the gradient of
    ``sum(values * V) + sum(q * Q) + sum(policy * pi)`` with respect to every input. It is one
    forward-message solve seeded with the cotangent, ``u = c + gamma P_pi^T u`` (the occupancy
    recursion with a signed start), not an unrolled iteration: memory ``O(B S A)``
    (``O(B T S A)`` for a finite horizon) whatever the number of sweeps. At ``alpha = 0`` the
    argmax policy gives the subgradient. An infinite horizon is differentiated at its fixed
    point (``gamma < 1``), to ``tol``: Gauss-Seidel sweeps find it (from ``solution`` when
    given), then the adjoint.

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
        tol: infinite horizon: the fixed point and the adjoint are iterated until a sweep
            changes them by at most ``tol (1 - gamma)`` of their size (at least 1e-14), so the
            gradient is within about ``tol`` of the exact one, relative.
        max_iters: most sweeps of the fixed point and of the adjoint.
        solution: infinite horizon: V of a solve of this MDP at these settings (``[B,S]``, or
            ``[S]`` without a task axis; any device), so that the fixed point is not solved
            again: the sweeps start from it and stop after one when it is within ``tol``
            (the native and GPU engines take it as the fixed point as it is).
        device: ``"cpu"`` (the default), the f64 reference: the fixed point refined by f64
            sweeps, the gradient within about ``tol`` of the exact one. ``"native"`` (and
            ``"auto"`` where :func:`softvi.solve` picks the native engine): an infinite
            horizon is differentiated at ``solution`` as it is, or at the native f32 engine's
            own solve, without those sweeps: within that V's error of the f64 gradient (f32
            engines stop near 1e-6 of V per sweep; 4e-5 relative on
            ``benches/gradient_vs_unrolled.py``), with the same adjoint and products in f64;
            a finite horizon runs on the reference. ``"gpu"`` or an adapter index (and
            ``"auto"`` where wgpu finds a hardware adapter): the wgpu engine in float32
            (within about 1e-3 of the f64 gradient, relative to each input's largest entry;
            the adjoint stops at ``tol`` or at f32's floor, a sweep changing it by 1e-6 of its
            size). A :class:`GridMDP` (``Grid.as_mdp``, its reward replaced or not) runs there
            on the grid kernels, as :func:`softvi.solve_grid` does, where they can: at
            ``solution`` (infinite horizon), or with a reward per cell and goals worth 0 (they
            solve the forward themselves); else, as any MDP, on the general-MDP kernels.

    Returns:
        :class:`Gradients`.

    Raises:
        ValueError: a cotangent or ``solution`` of the wrong size or with an infinite entry, a
            setting out of range, an infinite horizon at ``gamma = 1``, ``solution`` with a
            finite horizon.
        DeviceError: ``device="gpu"`` (or an index) and no usable adapter, or a GPU failure.
        MemoryError: one task's arrays exceed what one GPU storage binding holds.
    """
    _check_mdp(mdp)
    if values is None and q is None and policy is None:
        raise ValueError("give a cotangent: values, q or policy")
    settings = _settings(
        alpha, gamma, backup, horizon, tol, max_iters, True, True, False, all_steps, False,
        device,
    )  # fmt: skip
    from ._grid import GridMDP

    tasks, batched = mdp.tasks, mdp.batched
    raw = _softvi.vjp(
        mdp._mdp,
        settings,
        _cotangent("values", values, batched, tasks),
        _cotangent("q", q, batched, tasks),
        _cotangent("policy", policy, batched, tasks),
        _cotangent("solution", solution, batched, tasks),
        mdp._kernels if isinstance(mdp, GridMDP) else None,
    )
    pick: Any = (lambda x: x) if batched else (lambda x: x[0])
    return Gradients(
        reward=pick(raw["reward"]),
        terminal_value=pick(raw["terminal_value"]),
        transition_probs=raw["probs"],
        alpha=float(raw["alpha"]),
        gamma=float(raw["gamma"]),
        sweeps=int(raw["sweeps"]),
        kernels=str(raw["kernels"]),
    )


@dataclass(frozen=True)
class Primitive:
    """What a framework wrapper's soft value iteration holds fixed: the world and settings.

    The framework passes the differentiable inputs (reward, alpha, gamma, terminal values,
    transition probabilities) as arrays to :meth:`outputs` and :meth:`gradients`.
    """

    world: TabularMDP
    horizon: int | None
    backup: Backup
    outputs: tuple[str, ...]
    device: Device
    tol: float

    def __post_init__(self) -> None:
        _check_mdp(self.world)
        if not self.outputs or any(o not in OUTPUTS for o in self.outputs):
            raise ValueError(
                f"outputs must be a non-empty tuple of {OUTPUTS}, got {self.outputs!r}"
            )

    @property
    def grid(self) -> Any:
        """The world as a :class:`softvi.GridMDP`, or None for a plain MDP."""
        from ._grid import GridMDP

        return self.world if isinstance(self.world, GridMDP) else None

    def model(self, reward: Any, terminal_value: Any, probs: Any) -> TabularMDP:
        """The world with these arrays (host NumPy); a grid's reward map laid on its states."""
        reward = np.asarray(reward, np.float64)
        if self.grid is not None:
            reward = self.grid.reward_of(reward)
        if self.owns(terminal_value, probs):
            return self.world.replace(reward=reward)  # the transitions not checked again
        return self.world.replace(
            reward=reward,
            terminal_value=np.asarray(terminal_value, np.float64),
            transition_probs=np.asarray(probs, np.float64),
        )

    def owns(self, terminal_value, probs) -> bool:
        """Whether these are the world's own terminal values and probabilities."""
        arrays = self.world.arrays()
        tv = np.asarray(terminal_value, np.float64)
        return (
            tv.shape[-1:] == arrays["terminal_value"].shape[-1:]
            and np.array_equal(np.broadcast_to(tv, arrays["terminal_value"].shape),
                               arrays["terminal_value"])
            and np.array_equal(np.asarray(probs, np.float64), arrays["data"])
        )  # fmt: skip

    def batched(self, reward_shape: tuple[int, ...]) -> bool:
        """Whether a reward of this shape carries a task axis, as TabularMDP reads it.

        A grid's outputs always have one, as :func:`softvi.solve_grid`'s.
        """
        if self.grid is not None:
            return True
        s, a = self.world.states, self.world.actions
        return len(reward_shape) == 3 or (len(reward_shape) == 2 and reward_shape != (s, a))

    def shapes(self, reward_shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
        """The outputs' shapes for a reward of this shape."""
        s, a = self.world.states, self.world.actions
        lead = reward_shape[:1] if self.batched(reward_shape) else ()
        if self.grid is not None:
            lead, s = (self.world.tasks,), (self.grid.height, self.grid.width)
            shape = {"values": (*lead, *s), "q": (*lead, *s, a), "policy": (*lead, *s, a)}
            return tuple(shape[o] for o in self.outputs)
        shape = {"values": (*lead, s), "q": (*lead, s, a), "policy": (*lead, s, a)}
        return tuple(shape[o] for o in self.outputs)

    def solve(self, reward, alpha, gamma, terminal_value, probs) -> tuple[np.ndarray, ...]:
        """The outputs, in the reward's dtype."""
        return self.solve_keeping_values(reward, alpha, gamma, terminal_value, probs)[:-1]

    def solve_keeping_values(
        self, reward, alpha, gamma, terminal_value, probs
    ) -> tuple[np.ndarray, ...]:
        """The outputs, then V shaped as the ``values`` output, in the reward's dtype.

        V is what :meth:`gradients` takes as ``solution``, so that the backward pass does not
        solve the forward again. A grid batch's reward map on an f32 device, with the world's
        own terminal values and probabilities, is solved on the grid kernels
        (:func:`softvi.solve_grid`, the same batch), which are several times faster there than
        the general-MDP ones.
        """
        if self.on_grid_kernels(reward, terminal_value, probs):
            return self.solve_on_grid_kernels(reward, alpha, gamma)
        res = solve(
            self.model(reward, terminal_value, probs),
            alpha=float(alpha), gamma=float(gamma), backup=self.backup,
            horizon=self.horizon, tol=self.tol, policy="policy" in self.outputs,
            q="q" in self.outputs, device=self.device,
        )  # fmt: skip
        dtype = np.asarray(reward).dtype
        outs = tuple(np.asarray(getattr(res, o), dtype) for o in (*self.outputs, "values"))
        if self.grid is not None:
            outs = tuple(self.grid.to_cells(x) for x in outs)
        return outs

    def on_grid_kernels(self, reward, terminal_value, probs) -> bool:
        """Whether :meth:`solve_keeping_values` solves on the grid kernels (see there).

        Not on the f64 reference (``device="cpu"``), whose general-MDP solve keeps the float64
        reward the grid kernels would round to float32.
        """
        grid = self.grid
        if grid is None or self.device == "cpu" or np.ndim(reward) not in (2, 3):
            return False
        return self.owns(terminal_value, probs)

    def solve_on_grid_kernels(self, reward, alpha, gamma) -> tuple[np.ndarray, ...]:
        """:meth:`solve_keeping_values` by :func:`softvi.solve_grid` (see there)."""
        from ._grid import solve_grid

        grid = self.grid
        res = solve_grid(
            **grid.batch, reward=np.asarray(reward, np.float64), alpha=float(alpha),
            gamma=float(gamma), backup=self.backup, horizon=self.horizon, tol=self.tol,
            policy="policy" in self.outputs, q="q" in self.outputs, device=self.device,
        )  # fmt: skip
        dtype = np.asarray(reward).dtype
        # Terminal (goal) rows of Q and pi are NaN, as the general-MDP path reports them.
        terminal = np.zeros((grid.tasks, grid.height * grid.width), bool)
        terminal[:, grid.cells] = grid.arrays()["terminal"]
        terminal = terminal.reshape(grid.tasks, grid.height, grid.width)
        outs = []
        for o in (*self.outputs, "values"):
            x = np.array(getattr(res, o), dtype)
            if o != "values":
                x[terminal] = np.nan
            outs.append(x)
        return tuple(outs)

    def values_shape(self, reward_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of V (the ``values`` output) for a reward of this shape."""
        return Primitive(
            self.world, self.horizon, self.backup, ("values",), self.device, self.tol
        ).shapes(reward_shape)[0]

    def gradients(
        self, reward, alpha, gamma, terminal_value, probs, solution, *cotangents
    ) -> tuple[np.ndarray, ...]:
        """The gradients of ``<cotangents, outputs>``, each shaped and typed as its input.

        In the order (reward, alpha, gamma, terminal_value, probs); NaN cotangents count as 0.
        ``solution``: V as :meth:`solve_keeping_values` gave it (or None), the fixed point
        the backward pass starts from (an infinite horizon's; ignored for a finite one).
        """
        if self.horizon is not None or solution is None:
            solution = None
        elif self.grid is not None:
            solution = np.asarray(solution, np.float64)
            solution = solution.reshape(solution.shape[0], -1)[:, self.grid.cells]
        given = {
            o: np.nan_to_num(np.asarray(c, np.float64), nan=0.0)
            for o, c in zip(self.outputs, cotangents, strict=True)
        }
        if self.grid is not None:
            # Map layout [B,H,W,...] to the states' [B,S,...].
            cells = self.grid.cells
            given = {o: c.reshape(c.shape[0], -1, *c.shape[3:])[:, cells] for o, c in given.items()}
        grads = vjp(
            self.model(reward, terminal_value, probs),
            values=given.get("values"),
            q=given.get("q"),
            policy=given.get("policy"),
            alpha=float(alpha),
            gamma=float(gamma),
            backup=self.backup,
            horizon=self.horizon,
            tol=self.tol,
            solution=solution,
            device=self.device,
        )
        reward = np.asarray(reward)
        r_bar = grads.reward
        if self.grid is not None:
            r_bar = self.grid.map_gradient(r_bar, reward.shape)
        # [..., S, A] back to the reward's shape: a state reward [S] / [B,S] sums the actions.
        elif reward.ndim == 1 or (reward.ndim == 2 and self.batched(reward.shape)):
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

    def defaults(self, terminal_value: Any, transition_probs: Any) -> tuple[Any, Any]:
        """The world's terminal values and probabilities, where not given.

        The terminal values are ``[S]`` where every task shares them, else ``[B,S]``.
        """
        arrays = self.world.arrays()
        if terminal_value is None:
            values = arrays["terminal_value"]
            terminal_value = values[0] if (values == values[:1]).all() else values
        if transition_probs is None:
            transition_probs = arrays["data"]
        return terminal_value, transition_probs
