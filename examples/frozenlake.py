"""Gymnasium and seals envs as MDPs: the best chance to cross FrozenLake within its time limit.

Run from the repository root after ``pip install ./python gymnasium seals``:
``python examples/frozenlake.py``. With ``alpha=0`` (the hard max), ``gamma=1`` and the env's
time limit as the horizon, ``initial . V_0`` is the probability that the best policy reaches
the goal before the limit. Prints it for FrozenLake 4x4 and 8x8 (slippery; 8x8 with either
time limit), then the soft value of seals' CliffWorld7x4 from its start.
"""

import gymnasium as gym
import seals  # noqa: F401  (registers the seals/ envs)

import softvi

# The 8x8 map under its own id has a 200-step limit; made from FrozenLake-v1 it keeps 100.
for name, kwargs in (
    ("FrozenLake-v1", {}),
    ("FrozenLake8x8-v1", {}),
    ("FrozenLake-v1", {"map_name": "8x8"}),
):
    mdp = softvi.from_gymnasium(gym.make(name, **kwargs))  # S states + one sink
    res = softvi.solve(mdp, alpha=0.0, gamma=1.0, horizon=mdp.horizon, device="cpu")
    start = mdp.arrays()["initial"][0]  # [S+1]
    label = name + "".join(f" {k}={v}" for k, v in kwargs.items())
    print(f"{label}: horizon {mdp.horizon}, P(reach the goal) = {start @ res.values:.4f}")

cliff = softvi.from_seals(gym.make("seals/CliffWorld7x4-v0"))
res = softvi.solve(cliff, alpha=1.0, gamma=1.0, horizon=cliff.horizon, device="cpu")
start = cliff.arrays()["initial"][0]
print(
    f"seals/CliffWorld7x4-v0: horizon {cliff.horizon}, soft V_0 from the start = "
    f"{start @ res.values:.3f}"
)
