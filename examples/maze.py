"""A generated maze solved in Python, its soft-optimal policy drawn as arrows.

Run from the repository root after ``pip install ./python``: ``python examples/maze.py``.
Prints the solve's status, the soft value of the start and the most likely action of each
cell (goal ``G``, walls ``#``).
"""

import numpy as np

import softvi

maze = softvi.Grid.maze(21, 11, seed=0)  # W x H
goal = (9, 19)  # (row, col): the bottom-right corner
res = softvi.solve_grid(maze, [goal], alpha=0.1, gamma=0.95, connectivity=4, tol=1e-3)
print(f"status {res.status[0]} after {res.iterations[0]} sweeps")
print(f"V(start (1, 1)) = {res.values[0, 1, 1]:.2f}")  # values [B, H, W]

arrows = np.array(list("^>v<"))  # the action order N, E, S, W
best = np.nan_to_num(res.policy[0]).argmax(axis=-1)  # policy [B, H, W, A]
for row in range(maze.height):
    line = ""
    for col in range(maze.width):
        if not maze.free[row, col]:
            line += "#"
        elif (row, col) == goal:
            line += "G"
        else:
            line += arrows[best[row, col]]
    print(line)
