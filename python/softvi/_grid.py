"""Gridworlds: a map of free cells and a batch of goal tasks, solved on the grid kernels."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import _softvi
from ._mdp import TabularMDP, _flags, _integer
from ._solve import Backup, Device, Method, SolveResult, _result, _settings

Cell = tuple[int, int]


class Grid:
    """An H x W map of free (passable) and blocked cells; cell ``(row, col)``.

    Args:
        free: bool ``[H,W]``, True where the cell is passable (any array-like; converted).

    Actions are ordered ``N, E, S, W``, then ``NE, SE, SW, NW`` with 8-connectivity, then
    ``STAY``; the index into this list is the action axis of every policy.
    """

    def __init__(self, free: ArrayLike) -> None:
        array = _flags("free", free)
        if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
            raise ValueError(f"free has shape {array.shape}; expected a non-empty [H,W] array")
        self.free: np.ndarray = np.ascontiguousarray(array)

    @classmethod
    def maze(cls, width: int, height: int, seed: int = 0) -> Grid:
        """The CLI's generated maze (``--maze WxH --maze-seed N``).

        Free cells at odd row and odd column, carved by a seeded depth-first search, with about
        10% of the other inner walls knocked out (so that there are loops).
        """
        return cls(
            _softvi.maze(
                _integer("width", width, 1),
                _integer("height", height, 1),
                _integer("seed", seed, 0),
            )
        )

    @classmethod
    def from_movingai(cls, path: str | os.PathLike[str]) -> Grid:
        """Reads a MovingAI ``.map`` file (``.``, ``G``, ``S`` passable).

        Raises:
            ValueError: the file is not a valid map (the message names the line).
            OSError: it cannot be read.
        """
        return cls(_softvi.load_movingai(os.fspath(path)))

    @property
    def height(self) -> int:
        """Rows H."""
        return self.free.shape[0]

    @property
    def width(self) -> int:
        """Columns W."""
        return self.free.shape[1]

    def __repr__(self) -> str:
        return f"Grid(height={self.height}, width={self.width}, free={int(self.free.sum())})"

    def as_mdp(
        self,
        goals: Sequence[Cell | Sequence[Cell]],
        *,
        connectivity: int = 8,
        stay: bool = False,
        slip: float = 0.0,
        move_cost: tuple[float, float] | tuple[float, float, float] | None = None,
        start: Cell | Sequence[Cell] | None = None,
    ) -> GridMDP:
        """The batch :func:`solve_grid` would solve, as a :class:`GridMDP` over the free cells.

        Same transitions, step costs and terminal goals as the grid kernels, with a zero reward
        map; the gradient wrappers (:mod:`softvi.jax`, :mod:`softvi.torch`) take it as their
        world and reward maps ``[H,W]``, ``[B,H,W]`` or ``[B,H,W,A]``.

        Args:
            goals: per task, a goal cell ``(row, col)`` or a list of them.
            connectivity: 4 or 8 moves.
            stay: add a ``STAY`` action (last).
            slip: with probability ``slip`` a uniformly drawn action's move happens instead.
            move_cost: ``(orthogonal, diagonal[, stay])`` step costs; default ``(1, sqrt 2, 0)``.
            start: the start cells ``(row, col)`` (default: uniform over the free non-goal
                cells).

        Returns:
            The :class:`GridMDP`.

        Raises:
            ValueError: as :func:`solve_grid`.
        """
        goals, goal_cells, _, starts = _grid_batch(self, goals, None, start, True)
        world = _grid_world(connectivity, stay, slip, move_cost, starts)
        mdp, cells = _softvi.grid_as_mdp(self.free, goal_cells, world)
        batch = dict(
            grid=self, goals=goals, connectivity=connectivity, stay=stay, slip=slip,
            move_cost=move_cost, start=start,
        )  # fmt: skip
        return GridMDP._of(mdp, cells, self, batch, (self.free, goal_cells, world))


class GridMDP(TabularMDP):
    """A gridworld batch as a :class:`TabularMDP` over its free cells (:meth:`Grid.as_mdp`).

    Its reward ``[B,S,A]`` is ``-cost(a)``; :meth:`reward_of` adds a reward map. ``cells`` is
    the cell ``row * W + col`` of each state, ``[S]``; ``batch`` the :func:`solve_grid`
    arguments (grid, goals, world keywords) that solve the same batch on the grid kernels.
    """

    cells: np.ndarray
    height: int
    width: int
    batch: dict[str, Any]
    # (free [H,W], goal cells per task, world keywords) as the extension's grid functions
    # take them: the grid kernels' VJP (`softvi.vjp` on a GPU) runs on this batch.
    _kernels: tuple[np.ndarray, list[list[int]], dict[str, Any]]

    @classmethod
    def _of(
        cls,
        mdp: Any,
        cells: np.ndarray,
        grid: Grid,
        batch: dict[str, Any],
        kernels: tuple[np.ndarray, list[list[int]], dict[str, Any]],
    ) -> GridMDP:
        self = cls.__new__(cls)
        self._mdp = mdp
        self._batched = True
        self.cells = cells.astype(np.int64)
        self.height, self.width = grid.height, grid.width
        self.batch = batch
        self._kernels = kernels
        return self

    def replace(
        self,
        *,
        reward: ArrayLike | None = None,
        terminal_value: ArrayLike | None = None,
        transition_probs: ArrayLike | None = None,
    ) -> TabularMDP:
        """This MDP with some arrays replaced, as :meth:`TabularMDP.replace`.

        A new reward ``[B,S,A]`` alone keeps the grid batch (a :class:`GridMDP`, whose
        gradient a GPU takes on the grid kernels); any other change gives a plain
        :class:`TabularMDP`.

        Args:
            reward: as :class:`TabularMDP` takes it.
            terminal_value: ``[S]`` or ``[B,S]``.
            transition_probs: the stored nonzeros' probabilities, ``[nnz]`` in CSR order.

        Raises:
            ValueError: the engine's message naming the array at fault.
        """
        out = super().replace(
            reward=reward, terminal_value=terminal_value, transition_probs=transition_probs
        )
        if terminal_value is not None or transition_probs is not None or not out.batched:
            return out
        return GridMDP._of(out._mdp, self.cells, self.batch["grid"], self.batch, self._kernels)

    def reward_of(self, reward_map: ArrayLike) -> np.ndarray:
        """The MDP reward ``[B,S,A]`` of a reward map: its value at each cell, less the cost.

        Args:
            reward_map: ``[H,W]`` (shared), ``[B,H,W]`` (a state reward) or ``[B,H,W,A]``.

        Returns:
            ``[B,S,A]`` float64.

        Raises:
            ValueError: a map of another shape.
        """
        r = np.asarray(reward_map, dtype=np.float64)
        base = self.arrays()["R"]
        b, s, a = base.shape
        if r.shape == (self.height, self.width):
            r = np.broadcast_to(r, (b, self.height, self.width))
        if r.shape == (b, self.height, self.width):
            return base + r.reshape(b, -1)[:, self.cells, None]
        if r.shape == (b, self.height, self.width, a):
            return base + r.reshape(b, -1, a)[:, self.cells, :]
        raise ValueError(
            f"reward has shape {r.shape}; expected [H,W] = [{self.height}, {self.width}], "
            f"[B,H,W] = [{b}, {self.height}, {self.width}] or [B,H,W,A] = [{b}, {self.height}, "
            f"{self.width}, {a}]"
        )

    def map_gradient(self, reward_bar: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """A gradient ``[B,S,A]`` on the MDP reward as one on a map of ``shape`` (0 on walls)."""
        b, _, a = reward_bar.shape
        cells = self.height * self.width
        if len(shape) == 4:
            out = np.zeros((b, cells, a))
            out[:, self.cells, :] = reward_bar
        else:
            out = np.zeros((b, cells))
            out[:, self.cells] = reward_bar.sum(axis=-1)
            if len(shape) == 2:
                out = out.sum(axis=0)
        return out.reshape(shape)

    def to_cells(self, x: np.ndarray) -> np.ndarray:
        """``[B,S,...]`` laid over the map, ``[B,H,W,...]``, NaN on walls."""
        out = np.full((x.shape[0], self.height * self.width, *x.shape[2:]), np.nan, x.dtype)
        out[:, self.cells] = x
        return out.reshape(x.shape[0], self.height, self.width, *x.shape[2:])


def _cells(grid: Grid, name: str, cells: Any) -> list[int]:
    """``(row, col)`` pairs as cell indices ``row * W + col``; errors name ``name``."""
    array = np.asarray(cells)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] == 0:
        raise ValueError(f"{name} must be a (row, col) pair or a list of them, got {cells!r}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer (row, col) pairs, got {cells!r}")
    out = []
    for row, col in array.tolist():
        if not (0 <= row < grid.height and 0 <= col < grid.width):
            raise ValueError(
                f"{name} (row={row}, col={col}) is off the {grid.height}x{grid.width} grid"
            )
        out.append(row * grid.width + col)
    return out


def _grid_batch(
    grid: Grid, goals: Any, reward: ArrayLike | None, start: Any, occupancy: bool
) -> tuple[list[Any], list[list[int]], np.ndarray | None, list[int] | None]:
    """A grid batch as :func:`solve_grid` takes it, checked.

    Returns the goals as a list, each task's goal cells, the reward as given (``[H,W]``,
    shared, or ``[B,H,W]``; or None) and the start cells (or None).

    Raises:
        TypeError: ``grid`` is not a :class:`Grid`.
        ValueError: no goal, a goal or ``start`` off the grid or on a wall, a reward of
            another shape, or ``start`` without the occupancy.
    """
    if not isinstance(grid, Grid):
        raise TypeError(f"grid must be a softvi.Grid, got {type(grid).__name__}")
    goals = list(goals)
    if len(goals) == 0:
        raise ValueError("goals is empty: give at least one task (a goal cell)")
    goal_cells = [_cells(grid, f"goals[{i}]", g) for i, g in enumerate(goals)]
    tasks = len(goals)
    if reward is not None:
        reward = np.asarray(reward)
        if reward.shape not in ((grid.height, grid.width), (tasks, grid.height, grid.width)):
            raise ValueError(
                f"reward has shape {reward.shape}; expected [H,W] = [{grid.height}, "
                f"{grid.width}] or [B,H,W] = [{tasks}, {grid.height}, {grid.width}]"
            )
    starts = None if start is None else _cells(grid, "start", start)
    if starts is not None and not occupancy:
        raise ValueError("start sets where the occupancy starts: add occupancy=True")
    return goals, goal_cells, reward, starts


def _grid_world(
    connectivity: int,
    stay: bool,
    slip: float,
    move_cost: tuple[float, float] | tuple[float, float, float] | None,
    starts: list[int] | None,
) -> dict[str, Any]:
    """The world keywords the extension's grid functions take, checked."""
    costs = None
    if move_cost is not None:
        c = [float(x) for x in move_cost]
        if len(c) not in (2, 3):
            raise ValueError(f"move_cost must be (orthogonal, diagonal[, stay]), got {move_cost!r}")
        costs = (c[0], c[1], c[2] if len(c) == 3 else 0.0)
    return dict(
        connectivity=int(connectivity),
        stay=bool(stay),
        slip=float(slip),
        move_cost=costs,
        starts=starts,
    )


def solve_grid(
    grid: Grid,
    goals: Sequence[Cell | Sequence[Cell]],
    *,
    reward: ArrayLike | None = None,
    connectivity: int = 8,
    stay: bool = False,
    slip: float = 0.0,
    move_cost: tuple[float, float] | tuple[float, float, float] | None = None,
    start: Cell | Sequence[Cell] | None = None,
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
    """Solves one task per entry of ``goals`` over ``grid``; arrays as the CLI writes them.

    The reward of a step from cell s by action a is ``reward[task, s] - cost(a)``; goal cells
    are terminal with value 0.

    Args:
        grid: the map.
        goals: per task, a goal cell ``(row, col)`` or a list of them (the CLI's ``--goal
            X,Y`` is ``(row=Y, col=X)``).
        reward: state reward ``[H,W]`` (shared) or ``[B,H,W]`` (per task); default 0.
        connectivity: 4 or 8 moves.
        stay: add a ``STAY`` action (last).
        slip: with probability ``slip`` a uniformly drawn action's move happens instead.
        move_cost: ``(orthogonal, diagonal[, stay])`` step costs; default ``(1, sqrt 2, 0)``.
        start: the occupancy's start cells ``(row, col)``, shared by all tasks (default:
            uniform over each task's free non-goal cells).
        alpha: as in :func:`softvi.solve`.
        gamma: as in :func:`softvi.solve`.
        backup: as in :func:`softvi.solve`.
        horizon: as in :func:`softvi.solve`.
        tol: as in :func:`softvi.solve`.
        max_iters: as in :func:`softvi.solve`.
        policy: as in :func:`softvi.solve`.
        q: as in :func:`softvi.solve`.
        all_steps: as in :func:`softvi.solve`.
        occupancy: as in :func:`softvi.solve`.
        extrapolate: as in :func:`softvi.solve`.
        device: as in :func:`softvi.solve`.
        method: as in :func:`softvi.solve` (``"mpi"`` on every device).
        evaluations: as in :func:`softvi.solve`.

    Returns:
        A :class:`SolveResult` with ``values`` ``[B,H,W]`` (``[B,T+1,H,W]`` with
        ``all_steps``), ``policy``/``q`` ``[B,H,W,A]`` (``[B,T,H,W,A]``), ``occupancy``
        ``[B,H,W]`` or ``[B,T+1,H,W]``; NaN on walls.

    Raises:
        ValueError: a goal, start or reward that does not fit the grid, or a setting out of
            range (the message names it; the engine's messages name cells as the CLI does,
            ``X`` = column, ``Y`` = row).
        DeviceError: ``device="gpu"`` and no usable adapter.
    """
    goals, goal_cells, reward, starts = _grid_batch(grid, goals, reward, start, occupancy)
    tasks = len(goal_cells)
    reward32 = None
    if reward is not None:
        r = np.broadcast_to(reward, (tasks, grid.height, grid.width))
        reward32 = np.ascontiguousarray(r, dtype=np.float32)
    settings = _settings(
        alpha, gamma, backup, horizon, tol, max_iters, extrapolate, policy, q, all_steps,
        occupancy, device, method, evaluations,
    )  # fmt: skip
    world = _grid_world(connectivity, stay, slip, move_cost, starts)
    raw = _softvi.solve_grid(grid.free, goal_cells, reward32, world, settings)
    return _result(raw, batched=True, tol=tol if horizon is None else None)
