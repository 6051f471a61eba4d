"""Type stub of the extension module ``softvi._softvi`` (private: use the ``softvi`` API)."""

import os
from typing import Any

import numpy as np

class DeviceError(RuntimeError):
    """No usable GPU adapter, or the GPU failed while running."""

class Mdp:
    """A validated MDP batch, as the engine holds it."""

    @property
    def states(self) -> int: ...
    @property
    def actions(self) -> int: ...
    @property
    def tasks(self) -> int: ...
    @property
    def nonzeros(self) -> int: ...
    def arrays(self) -> dict[str, np.ndarray]: ...
    def with_reward(self, reward: np.ndarray) -> Mdp: ...

def mdp_from_arrays(arrays: dict[str, np.ndarray]) -> Mdp: ...
def mdp_from_dense_in_place(p: np.ndarray, arrays: dict[str, np.ndarray]) -> Mdp: ...
def load_npz(path: str | os.PathLike[str]) -> Mdp: ...
def maze(width: int, height: int, seed: int) -> np.ndarray: ...
def load_movingai(path: str | os.PathLike[str]) -> np.ndarray: ...
def adapters() -> list[str]: ...
def adapter_info() -> list[dict[str, str]]: ...
def solve_mdp(mdp: Mdp, settings: dict[str, Any]) -> dict[str, Any]: ...
def grid_as_mdp(
    free: np.ndarray, goals: list[list[int]], world: dict[str, Any]
) -> tuple[Mdp, np.ndarray]: ...
def vjp(
    mdp: Mdp,
    settings: dict[str, Any],
    values: np.ndarray | None,
    q: np.ndarray | None,
    policy: np.ndarray | None,
    solution: np.ndarray | None = None,
    grid: tuple[np.ndarray, list[list[int]], dict[str, Any]] | None = None,
) -> dict[str, Any]: ...
def solve_grid(
    free: np.ndarray,
    goals: list[list[int]],
    reward: np.ndarray | None,
    world: dict[str, Any],
    settings: dict[str, Any],
) -> dict[str, Any]: ...
def sample(
    mdp: Mdp, policy: np.ndarray, policy_steps: int, episodes: int, steps: int, seed: int
) -> tuple[np.ndarray, np.ndarray]: ...
def goal_posterior(
    mdp: Mdp,
    policy: np.ndarray,
    policy_steps: int,
    states: list[int],
    actions: list[int] | None,
    prior: list[float],
    *,
    device: str,
    adapter: int | None,
) -> tuple[np.ndarray, np.ndarray, str]: ...
def maxent_irl(
    mdp: Mdp,
    features: np.ndarray,
    states: np.ndarray,
    actions: np.ndarray | None,
    settings: dict[str, Any],
    *,
    learning_rate: float,
    iters: int,
    tol: float,
) -> dict[str, Any]: ...
def meta_rl(
    mdp: Mdp,
    policy: np.ndarray,
    policy_steps: int,
    *,
    episodes: int,
    steps: int,
    trials: int,
    seed: int,
    eval_tasks: list[int],
    prior: list[float],
    reward_noise: float | None,
    device: str,
    adapter: int | None,
) -> dict[str, Any]: ...
def qlearn(
    arrays: dict[str, np.ndarray], states: int, actions: int, settings: dict[str, Any]
) -> dict[str, Any]: ...
def cli_main(argv: list[str]) -> int: ...
