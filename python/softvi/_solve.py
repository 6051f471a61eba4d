"""Solving: the settings every solve takes, the device choice, and the result object."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from . import _softvi
from ._mdp import TabularMDP, _check_mdp

Device = Literal["auto", "gpu", "native", "cpu"] | int
Backup = Literal["expected", "optimistic"]
Method = Literal["vi", "mpi"]


@dataclass
class SolveResult:
    """What a solve returns.

    Arrays are owned by NumPy without a copy: float64 from the CPU reference on a
    :class:`TabularMDP` (f64 arithmetic on the model's float64 entries as given: no rounding
    anywhere), float32 otherwise (a GPU or the native engine rounds the model to float32 once
    and computes in float32; grid solves are reported in float32 on every device). The f32
    devices write a soft policy as the hard max's one-hot where alpha < 1e-5 max(1, |max Q|)
    (below that, f32 rounding of Q would decide it); the CPU device only where alpha <
    1e-12 max(1, |max Q|).

    Shapes, with B the task axis (present iff the reward had one; always for grids), the state
    axes ``...`` (``S`` for an MDP, ``H, W`` for a grid) and A the actions:

    - ``values``: ``V_0`` (finite horizon) or the converged V, ``[B, ...]``; with
      ``all_steps`` ``V_0..V_T``, ``[B, T+1, ...]``. Terminal states keep their terminal
      value, states with no path to a terminal are -inf (gamma = 1 without horizon), walls NaN.
    - ``policy``, ``q``: ``pi(a|s)`` and the soft ``Q(s,a)``, ``[B, ..., A]`` (``[B, T, ...,
      A]`` with ``all_steps``); NaN on terminal, excluded and wall states; ``None`` unless
      asked for.
    - ``occupancy``: the state occupancy under the soft-optimal policy from ``initial``:
      ``D_0..D_T`` ``[B, T+1, ...]`` for a finite horizon, the discounted sum
      ``sum_t gamma^t D_t`` ``[B, ...]`` otherwise; ``None`` unless asked for.
    - ``status``: per task ``"converged"``, ``"max_iters"``, ``"diverged"`` or ``"horizon"``.
    - ``iterations``, ``residual``, ``unreachable``: per task backups applied, the last
      residual ``max_s |V_new - V_old|``, and non-terminal states with no path to a terminal.
    - ``error_bound``: per task a bound on ``max_s |V(s) - V*(s)|`` of ``values``:
      ``gamma / (1 - gamma)`` times the residual; within ``tol`` for a converged task unless
      f32's precision floor stopped it first (then a ``RuntimeWarning`` says so;
      ``device="cpu"`` computes in f64); ``inf`` at gamma = 1 (no bound exists, only the
      residual is known); ``0.0`` for a finite horizon (exact up to rounding).
    - ``adapter``: where it ran (``"cpu reference (f64)"`` or ``"<adapter> (<backend>)"``).
    - ``seconds``: the engine's wall time of the solve.
    """

    values: np.ndarray
    policy: np.ndarray | None
    q: np.ndarray | None
    occupancy: np.ndarray | None
    status: list[str]
    iterations: list[int]
    residual: list[float]
    unreachable: list[int]
    adapter: str
    seconds: float
    occupancy_status: list[str] | None = None
    error_bound: list[float] | None = None


def _device(device: Device) -> tuple[str, int | None]:
    """``device=`` as the extension takes it: a kind and an adapter index."""
    if isinstance(device, bool):
        raise ValueError(
            f"device must be 'auto', 'gpu', 'native', 'cpu' or an adapter index, got {device!r}"
        )
    if isinstance(device, (int, np.integer)):
        if device < 0:
            raise ValueError(f"device (an adapter index) must be >= 0, got {device}")
        if device >= 2**32:
            raise ValueError(
                f"device (an adapter index) {device} is past any adapter; softvi.adapters() "
                "lists them"
            )
        return "gpu", int(device)
    if device in ("auto", "gpu", "native", "cpu"):
        return str(device), None
    raise ValueError(
        f"device must be 'auto', 'gpu', 'native', 'cpu' or an adapter index, got {device!r}"
    )


def _settings(
    alpha: float,
    gamma: float,
    backup: Backup,
    horizon: int | None,
    tol: float,
    max_iters: int,
    extrapolate: bool,
    policy: bool,
    q: bool,
    all_steps: bool,
    occupancy: bool,
    device: Device,
    method: Method = "vi",
    evaluations: int | None = None,
) -> dict[str, Any]:
    """The keyword arguments every extension solve takes, checked where Python must."""
    if method not in ("vi", "mpi"):
        raise ValueError(f"method must be 'vi' or 'mpi', got {method!r}")
    if evaluations is not None:
        if method != "mpi":
            raise ValueError(
                "evaluations sets modified policy iteration's evaluation sweeps: it needs "
                "method='mpi'"
            )
        if not (isinstance(evaluations, (int, np.integer)) and 1 <= evaluations < 2**32):
            raise ValueError(f"evaluations must be an integer >= 1, got {evaluations!r}")
    if horizon is not None and not (isinstance(horizon, (int, np.integer)) and horizon >= 1):
        raise ValueError(f"horizon must be None or an integer >= 1, got {horizon!r}")
    if not (isinstance(max_iters, (int, np.integer)) and 1 <= max_iters < 2**32):
        raise ValueError(f"max_iters must be an integer in [1, 2**32), got {max_iters!r}")
    if all_steps and horizon is None:
        raise ValueError("all_steps needs a finite horizon (horizon=T)")
    kind, adapter = _device(device)
    return dict(
        alpha=float(alpha),
        gamma=float(gamma),
        backup=str(backup),
        horizon=None if horizon is None else int(horizon),
        tol=float(tol),
        max_iters=int(max_iters),
        extrapolate=bool(extrapolate),
        policy=bool(policy),
        q=bool(q),
        all_steps=bool(all_steps),
        occupancy=bool(occupancy),
        device=kind,
        adapter=adapter,
        method=str(method),
        evaluations=None if evaluations is None else int(evaluations),
    )


def _warn_diverged(status: list[str], stacklevel: int) -> None:
    """A RuntimeWarning naming the tasks whose ``status`` is ``"diverged"``, if any.

    ``stacklevel`` counts from this function (that of the user's call).
    """
    diverged = [i for i, s in enumerate(status) if s == "diverged"]
    if diverged:
        warnings.warn(
            f"the solve diverged for task(s) {diverged}: values grow without bound (no finite "
            "solution; e.g. gamma = 1 with a positive-reward cycle); their values are "
            "meaningless",
            RuntimeWarning,
            stacklevel=stacklevel,
        )


def _warn_bound(
    status: list[str], error_bound: list[float], tol: float | None, stacklevel: int
) -> None:
    """Warns when a converged task's error bound exceeds ``tol`` (precision floor reached)."""
    if tol is None:
        return
    pairs = zip(status, error_bound, strict=True)
    # inf: gamma = 1, where no bound exists (tol bounds the residual).
    short = [b for s, b in pairs if s == "converged" and tol < b < float("inf")]
    if short:
        warnings.warn(
            f"{len(short)} converged task(s) stopped at the engine's precision floor before "
            f"the error bound reached tol {tol:g}: error_bound up to {max(short):.3e}; "
            'device="cpu" (f64) resolves smaller tolerances',
            RuntimeWarning,
            stacklevel=stacklevel,
        )


def _result(raw: dict[str, Any], batched: bool, tol: float | None = None) -> SolveResult:
    """The extension's dict as a :class:`SolveResult`.

    The B axis is dropped unless ``batched``; a diverged task warns, and so does a converged
    one whose error bound exceeds ``tol`` (infinite horizon; ``None`` otherwise).
    """
    arrays = {k: raw[k] for k in ("values", "policy", "q", "occupancy")}
    if not batched:
        arrays = {k: None if v is None else v[0] for k, v in arrays.items()}
    status = list(raw["status"])
    _warn_diverged(status, stacklevel=4)
    error_bound = [float(b) for b in raw["error_bound"]]
    _warn_bound(status, error_bound, tol, stacklevel=4)
    return SolveResult(
        **arrays,
        status=status,
        iterations=list(raw["iterations"]),
        residual=list(raw["residual"]),
        unreachable=list(raw["unreachable"]),
        adapter=raw["adapter"],
        seconds=raw["seconds"],
        occupancy_status=raw.get("occupancy_status"),
        error_bound=error_bound,
    )


def solve(
    mdp: TabularMDP,
    *,
    alpha: float = 1.0,
    gamma: float = 0.99,
    backup: Backup = "expected",
    horizon: int | None = None,
    tol: float = 1e-4,
    max_iters: int = 100_000,
    policy: bool = True,
    q: bool = False,
    all_steps: bool = False,
    occupancy: bool = False,
    extrapolate: bool = True,
    device: Device = "auto",
    method: Method = "vi",
    evaluations: int | None = None,
) -> SolveResult:
    """Soft value iteration on every task of ``mdp``.

    ``Q(s,a) = r(s,a) + gamma * E[V(s')]`` (``backup="expected"``, max-ent RL) or
    ``r(s,a) + alpha * log E[exp(gamma V(s') / alpha)]`` (``"optimistic"``, exact inference);
    ``V(s) = alpha * log sum_a exp(Q(s,a) / alpha)``; ``pi(a|s) = exp((Q(s,a) - V(s)) / alpha)``.

    Args:
        mdp: the MDP batch.
        alpha: temperature >= 0 (0 is the hard max).
        gamma: discount in [0, 1].
        backup: ``"expected"`` or ``"optimistic"``.
        horizon: a finite horizon T (exactly T backups from ``V_T = 0``, the result is
            ``V_0``, ``pi_0``), or None to iterate to ``tol``.
        tol: infinite horizon: stop when the error bound ``gamma / (1 - gamma) *
            max_s |V_new - V_old|`` (the residual at gamma = 1) is within ``tol``, or at the
            engine's precision floor (see ``SolveResult.error_bound``).
        max_iters: infinite horizon: most backups.
        policy: return the policy.
        q: return the soft Q-values.
        all_steps: finite horizon: return every step, ``V_0..V_T`` and ``pi_0..pi_{T-1}``.
        occupancy: return the state occupancy under the soft-optimal policy.
        extrapolate: infinite horizon, alpha > 0, gamma < 1: jump along the slowest mode once
            its rate has settled (False: plain value iteration).
        device: ``"auto"`` (the GPU if wgpu finds an adapter, else the f64 CPU reference;
            ``adapter`` says which), ``"gpu"``, ``"cpu"``, or an index into
            :func:`softvi.adapters`. ``"native"``, the multi-threaded f32 CPU engine, solves
            general MDPs (every output) and plain grids (:func:`softvi.solve_grid` without
            ``all_steps`` or ``occupancy``) and runs everything else as ``"auto"``; ``"auto"``
            picks it for those where the preferred adapter is a CPU (a software rasteriser
            such as llvmpipe) or there is none, as the CLI's ``--backend auto`` does.
        method: ``"vi"`` (value iteration) or ``"mpi"`` (modified policy iteration:
            ``evaluations`` exp-free policy-evaluation sweeps ``V <- r_pi + gamma P_pi V``
            between full backups; the same fixed point and ``tol``; infinite horizon, gamma
            < 1, expected backup; every device, grids and general MDPs). ``iterations``
            then counts the full backups; each but the first follows ``evaluations``
            evaluation sweeps. See docs/solving.md.
        evaluations: with ``method="mpi"``: evaluation sweeps per full backup (default 4).

    Returns:
        A :class:`SolveResult`; the GIL is released while the engine runs.

    Raises:
        ValueError: a setting out of range (the message names it).
        DeviceError: ``device="gpu"`` (or an index) and no usable adapter, or a GPU failure.
        MemoryError: the problem exceeds a limit of the adapter or of this machine.
    """
    _check_mdp(mdp)
    settings = _settings(
        alpha, gamma, backup, horizon, tol, max_iters, extrapolate, policy, q, all_steps,
        occupancy, device, method, evaluations,
    )  # fmt: skip
    raw = _softvi.solve_mdp(mdp._mdp, settings)
    return _result(raw, mdp.batched, tol if horizon is None else None)


def adapters() -> list[str]:
    """The wgpu adapters this machine offers, preferred first, as ``"name (backend)"``.

    Honours ``WGPU_BACKEND`` and ``WGPU_ADAPTER_NAME``; the list index is what ``device=``
    takes.
    """
    return _softvi.adapters()
