"""softvi: batched soft value iteration (max-ent RL, control as inference) on wgpu.

The engine is Rust: WGSL compute shaders on any wgpu adapter (Vulkan, Metal, DX12, GL) and an
f64 CPU reference. This package passes NumPy / SciPy arrays in and NumPy arrays out.

Example::

    import numpy as np
    import softvi

    rng = np.random.default_rng(0)
    P = rng.random((50, 4, 50))
    P /= P.sum(axis=2, keepdims=True)  # P(s'|s,a), [S,A,S]
    mdp = softvi.TabularMDP(P, rng.normal(size=(50, 4)))  # r(s,a) [S,A]
    result = softvi.solve(mdp, alpha=1.0, gamma=1.0, horizon=20, q=True)
    result.values  # V_0 [S]; result.policy, result.q [S,A]
"""

from __future__ import annotations

import os

# Mesa's Vulkan device-select layer probes the window system and, headless, prints
# "XDG_RUNTIME_DIR is invalid" to stderr on every device; softvi presents nothing, so it is
# turned off by the layer's own switch before the engine opens a device (as the CLI does),
# unless the user configured it.
if "NODEVICE_SELECT" not in os.environ and "MESA_VK_DEVICE_SELECT" not in os.environ:
    os.environ["NODEVICE_SELECT"] = "1"

from ._analysis import (  # noqa: E402
    ENDED,
    IrlResult,
    LearnedQ,
    MetaCurve,
    MetaReport,
    Posterior,
    Trajectories,
    goal_posterior,
    maxent_irl,
    meta_rl,
    qlearn,
    sample,
)
from ._envs import from_gymnasium, from_seals  # noqa: E402
from ._gradients import Gradients, vjp  # noqa: E402
from ._grid import Grid, GridMDP, solve_grid  # noqa: E402
from ._mdp import TabularMDP, load_npz  # noqa: E402
from ._softvi import DeviceError  # noqa: E402
from ._solve import SolveResult, adapters, solve  # noqa: E402

__all__ = [
    "ENDED",
    "DeviceError",
    "Gradients",
    "Grid",
    "GridMDP",
    "IrlResult",
    "LearnedQ",
    "MetaCurve",
    "MetaReport",
    "Posterior",
    "SolveResult",
    "TabularMDP",
    "Trajectories",
    "adapters",
    "from_gymnasium",
    "from_seals",
    "goal_posterior",
    "load_npz",
    "maxent_irl",
    "meta_rl",
    "qlearn",
    "sample",
    "solve",
    "solve_grid",
    "vjp",
]
__version__ = "0.1.0"
