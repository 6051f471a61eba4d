"""MaxEnt IRL: a reward learned back from demonstrations, and whether the learning converged.

Run from the repository root after ``pip install ./python``: ``python examples/maxent_irl.py``.
A 31 x 31 maze with one goal, state features ``x``, ``y`` and a swamp indicator, demos sampled
from a known reward in their span (added to the move costs), and ``theta`` learned back from
them. Prints the true and learned ``theta``, whether every gradient norm reached ``tol`` and
after how many iterations, and the demos' and the model's feature expectations.
"""

import numpy as np

import softvi

maze = softvi.Grid.maze(31, 31, seed=0)
world = maze.as_mdp([(29, 29)])  # one task: goal at row 29, col 29; reward -cost(a)
rows, cols = np.divmod(world.cells, maze.width)  # each state's cell
x, y = cols / 30, rows / 30
swamp = (abs(x - 0.5) < 0.2) & (abs(y - 0.5) < 0.2)
phi = np.stack([x, y, swamp], axis=-1).astype(np.float32)  # [S, K]
true_theta = np.array([0.5, 0.3, -0.5])

# Demos: 2000 episodes of 60 steps from the soft-optimal policy of the true reward.
true_map = np.zeros((maze.height, maze.width))
true_map.flat[world.cells] = phi @ true_theta  # [H, W]; reward_of adds -cost(a)
expert = world.replace(reward=world.reward_of(true_map))
solved = softvi.solve(expert, alpha=0.3, gamma=1.0, horizon=60, all_steps=True)
demos = softvi.sample(expert, solved, episodes=2000, seed=0)

irl = softvi.maxent_irl(world, phi, demos.states[0], demos.actions[0], alpha=0.3, gamma=1.0)
norm = irl.history[-1]["gradient_norm"][0]
print(f"true theta    {np.round(true_theta, 3)}")
print(f"learned theta {np.round(irl.theta, 3)}")
verdict = "converged" if irl.converged else "did NOT converge (raise iters or learning_rate)"
print(f"{verdict} after {len(irl.history)} iterations, gradient norm {norm:.1e}")
print(f"feature expectations: demos {np.round(irl.demo_features, 3)}")
print(f"                      model {np.round(irl.model_features, 3)}")
