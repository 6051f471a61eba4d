"""Deep maximum-entropy IRL on a MovingAI map, trained end to end through soft value iteration.

A hidden reward map (obstacles are costly to pass close to, and the south of the map is rough
going) drives soft-optimal demonstrators towards four goals on a crop of the MovingAI map
``random-64-64-20``. A small convolutional network over map features (the walls, the distance to
the nearest wall, the coordinates) learns a reward map from the training demonstrations by
gradient descent on their negative log-likelihood, with the gradient taken through
``softvi.jax.soft_value_iteration`` (forward solve, then one forward-message solve for the
VJP; no unrolled sweeps). The script prints the held-out demonstrations' log-likelihood under
the learned reward and under the true one, and writes a PNG of the true and learned reward maps.

    python examples/deep_maxent_irl.py [--iterations N] [--out irl.png] [--seed S]

Plain JAX on the CPU (``jax[cpu]``): the network is three ``jax.lax.conv_general_dilated``
layers and the optimiser a few lines of Adam. The PNG is written with the standard library.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
import zlib
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

import softvi  # noqa: E402
import softvi.jax  # noqa: E402

MAP = Path(__file__).resolve().parent.parent / "tests" / "data" / "maps" / "random-64-64-20.map"
CROP = 32  # the map's top-left CROP x CROP cells
GOALS = [(2, 2), (1, 28), (30, 3), (29, 29)]  # one task per goal (row, col)
ALPHA, GAMMA, SLIP = 0.5, 0.97, 0.05
TOL = 1e-6  # the fixed point's (and its gradient's) relative tolerance
EPISODES, STEPS = 60, 60  # demonstrations per goal, per set (train and held-out); their length
HIDDEN = 12  # channels of the network's hidden layers


def load_grid() -> softvi.Grid:
    """The map's top-left ``CROP x CROP`` crop."""
    if not MAP.is_file():
        sys.exit(f"error: the map {MAP} is missing (tests/data/maps in the repository)")
    return softvi.Grid(softvi.Grid.from_movingai(MAP).free[:CROP, :CROP])


def wall_distance(free: np.ndarray) -> np.ndarray:
    """Euclidean distance from each cell to the nearest blocked cell, ``[H,W]``.

    Off the map counts as blocked; blocked cells get 0.
    """
    h, w = free.shape
    padded = np.pad(free, 1, constant_values=False)
    by, bx = np.nonzero(~padded)
    yy, xx = np.mgrid[0:h, 0:w] + 1
    d2 = (yy[..., None] - by) ** 2 + (xx[..., None] - bx) ** 2
    return np.sqrt(d2.min(axis=-1))


def features(free: np.ndarray) -> np.ndarray:
    """The network's input ``[C,H,W]``.

    Channels: walls, distance to the nearest wall (scaled), row and column (in [0, 1]).
    """
    h, w = free.shape
    rows, cols = np.mgrid[0:h, 0:w]
    return np.stack(
        [(~free).astype(float), wall_distance(free) / 4, rows / (h - 1), cols / (w - 1)]
    )


def true_reward(free: np.ndarray) -> np.ndarray:
    """The hidden reward map ``[H,W]`` (0 on walls).

    Passing next to an obstacle costs up to 2, and the going gets rougher to the south (up to
    0.6 a step).
    """
    h, _ = free.shape
    near = 2.0 * np.exp(-(wall_distance(free) - 1.0))
    south = 0.6 * np.arange(h)[:, None] / (h - 1)
    return np.where(free, -(near + south), 0.0)


def init_params(key: jax.Array, channels: int) -> list[tuple[jax.Array, jax.Array]]:
    """Three conv layers, 3x3 -> 3x3 -> 1x1, He-initialised."""
    shapes = [(HIDDEN, channels, 3, 3), (HIDDEN, HIDDEN, 3, 3), (1, HIDDEN, 1, 1)]
    params = []
    for shape, k in zip(shapes, jax.random.split(key, len(shapes)), strict=True):
        fan_in = shape[1] * shape[2] * shape[3]
        params.append((jax.random.normal(k, shape) * np.sqrt(2 / fan_in), jnp.zeros(shape[0])))
    return params


def network(params, x: jax.Array) -> jax.Array:
    """The reward map ``[H,W]`` of features ``x`` ``[C,H,W]``."""
    y = x[None]
    for i, (w, b) in enumerate(params):
        y = jax.lax.conv_general_dilated(y, w, (1, 1), "SAME") + b[None, :, None, None]
        if i < len(params) - 1:
            y = jax.nn.softplus(y)
    return y[0, 0]


def demo_steps(world: softvi.GridMDP, demos: softvi.Trajectories) -> tuple[np.ndarray, ...]:
    """Every step of the demonstrations as index arrays (task, row, col, action)."""
    b, n, t = demos.actions.shape
    task = np.broadcast_to(np.arange(b)[:, None, None], (b, n, t))
    taken = demos.actions >= 0
    cell = world.cells[demos.states[:, :, :-1][taken]]
    return task[taken], cell // world.width, cell % world.width, demos.actions[taken]


def log_likelihood(world, reward_map, steps) -> jax.Array:
    """Mean ``log pi(a|s) = (Q(s,a) - V(s)) / alpha`` over the demonstration steps.

    ``pi`` is soft-optimal for ``reward_map`` ``[H,W]``; the gradient flows through
    ``softvi.jax.soft_value_iteration``.
    """
    q, v = softvi.jax.soft_value_iteration(
        world, reward_map, alpha=ALPHA, gamma=GAMMA, outputs=("q", "values"), tol=TOL
    )
    task, row, col, action = steps
    return jnp.mean(q[task, row, col, action] - v[task, row, col]) / ALPHA


def adam(grad_fn, params, iterations: int, lr: float):
    """Adam on a pytree of parameters; prints progress every tenth of the run."""
    m = jax.tree.map(jnp.zeros_like, params)
    s = jax.tree.map(jnp.zeros_like, params)
    b1, b2 = 0.9, 0.999
    for i in range(1, iterations + 1):
        loss, g = grad_fn(params)
        c1, c2 = 1 - b1**i, 1 - b2**i
        m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, m, g)
        s = jax.tree.map(lambda s, g: b2 * s + (1 - b2) * g * g, s, g)
        params = jax.tree.map(
            lambda p, m, s, c1=c1, c2=c2: p - lr * (m / c1) / (jnp.sqrt(s / c2) + 1e-8),
            params, m, s,
        )  # fmt: skip
        if i % max(iterations // 10, 1) == 0 or i == 1:
            print(f"  iteration {i:4d}: training log-likelihood per step {-float(loss):.4f}")
    return params


def colour(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """A dark blue -> teal -> yellow ramp of ``x`` on ``[lo, hi]``, uint8 ``[...,3]``."""
    stops = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]])
    t = np.clip((x - lo) / max(hi - lo, 1e-12), 0, 1) * (len(stops) - 1)
    i = np.minimum(t.astype(int), len(stops) - 2)
    f = (t - i)[..., None]
    return ((1 - f) * stops[i] + f * stops[i + 1]).round().astype(np.uint8)


def write_png(path: Path, maps: list[np.ndarray], free: np.ndarray, scale: int = 8) -> None:
    """Writes the maps side by side as an RGB PNG, ``scale`` pixels a cell.

    One colour scale for all, walls black; written by hand (zlib and struct only).
    """
    lo = min(float(m[free].min()) for m in maps)
    hi = max(float(m[free].max()) for m in maps)
    gap = np.full((free.shape[0], 1, 3), 255, np.uint8)
    panels = []
    for m in maps:
        rgb = colour(m, lo, hi)
        rgb[~free] = 0
        panels += [rgb, gap]
    image = np.concatenate(panels[:-1], axis=1).repeat(scale, 0).repeat(scale, 1)
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
    path.write_bytes(png)


def main() -> None:
    """Trains the reward network and reports its held-out log-likelihood."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=120, help="Adam steps (default 120)")
    parser.add_argument("--lr", type=float, default=0.03, help="Adam step size (default 0.03)")
    parser.add_argument("--out", type=Path, default=Path("deep_maxent_irl.png"), help="the PNG")
    parser.add_argument("--seed", type=int, default=0, help="demonstrations' and network's seed")
    args = parser.parse_args()
    if args.iterations < 1:
        parser.error(f"--iterations must be at least 1, got {args.iterations}")
    started = time.perf_counter()

    grid = load_grid()
    free = grid.free
    world = grid.as_mdp(GOALS, slip=SLIP)
    truth = true_reward(free)
    solved = softvi.solve(
        world.replace(reward=world.reward_of(truth)),
        alpha=ALPHA, gamma=GAMMA, tol=TOL, policy=True, device="cpu",
    )  # fmt: skip
    train, held_out = (
        demo_steps(world, softvi.sample(world, solved, episodes=EPISODES, steps=STEPS, seed=s))
        for s in (2 * args.seed, 2 * args.seed + 1)
    )
    print(
        f"{grid.height}x{grid.width} crop of {MAP.name}, {world.states} states, {len(GOALS)} "
        f"goals; {len(train[0])} training and {len(held_out[0])} held-out demonstration steps"
    )

    x = jnp.asarray(features(free))
    mask = jnp.asarray(free, float)

    def loss(params):
        return -log_likelihood(world, network(params, x) * mask, train)

    params = init_params(jax.random.PRNGKey(args.seed), x.shape[0])
    params = adam(jax.jit(jax.value_and_grad(loss)), params, args.iterations, args.lr)

    learned = np.asarray(network(params, x) * mask)
    ll_learned = float(log_likelihood(world, learned, held_out))
    ll_true = float(log_likelihood(world, truth, held_out))
    gap = (ll_true - ll_learned) / abs(ll_true)
    write_png(args.out, [truth, learned], free)
    print(f"held-out log-likelihood per step: learned {ll_learned:.4f}, true {ll_true:.4f}")
    print(f"learned reward within {100 * gap:.2f}% of the true reward's held-out log-likelihood")
    print(f"wrote {args.out} (true | learned reward); {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
