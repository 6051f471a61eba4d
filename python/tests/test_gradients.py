"""Gradients through soft value iteration: ``softvi.vjp`` and ``softvi.jax`` against JAX's
autodiff of the value iteration unrolled here, in float64."""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
from conftest import run_on  # noqa: E402
from jax.scipy.special import logsumexp  # noqa: E402

import softvi  # noqa: E402
import softvi.jax  # noqa: E402

S, A, B = 9, 3, 2


def world(seed: int = 0, tasks: int = B) -> softvi.TabularMDP:
    """A sparse random MDP (1 to 4 successors per row, weights not float32 values) with state
    ``2b + 1`` terminal in task b at value ``b - 0.4``, rewards N(0, 1)."""
    rng = np.random.default_rng(seed)
    p = np.zeros((S, A, S))
    for s in range(S):
        for a in range(A):
            nxt = rng.choice(S, size=rng.integers(1, 5), replace=False)
            p[s, a, nxt] = rng.random(len(nxt)) + 1 / 3
    p /= p.sum(axis=2, keepdims=True)
    terminal = np.zeros((tasks, S), bool)
    value = np.zeros((tasks, S))
    for b in range(tasks):
        terminal[b, 2 * b + 1] = True
        value[b, 2 * b + 1] = b - 0.4
    return softvi.TabularMDP(
        p, rng.normal(size=(tasks, S, A)), terminal=terminal, terminal_value=value
    )


def unrolled(
    mdp, reward, alpha, gamma, terminal_value, probs, steps, backup="expected", hard=False
):
    """V_0, Q_0, pi_0 of ``steps`` soft backups, written out in JAX from the CSR arrays
    (task axis first): ``Q = r + gamma P V`` (or ``r + alpha log P exp(gamma V / alpha)``),
    ``V = alpha logsumexp(Q / alpha)`` off terminal states (``max`` with ``hard``, alpha 0)."""
    arrays = mdp.arrays()
    s_n, a_n = mdp.states, mdp.actions
    rows = np.repeat(np.arange(s_n * a_n), np.diff(arrays["indptr"]))
    p = jnp.zeros((s_n * a_n, s_n)).at[rows, arrays["indices"]].add(probs).reshape(s_n, a_n, s_n)
    terminal = jnp.asarray(arrays["terminal"])
    v = jnp.where(terminal, terminal_value, 0.0)

    def backup_of(v):
        if backup == "expected":
            q = reward + gamma * jnp.einsum("sak,bk->bsa", p, v)
        else:
            q = reward + alpha * logsumexp(gamma * v[:, None, None, :] / alpha, b=p, axis=-1)
        if hard:
            v_new = q.max(axis=-1)
        else:
            v_new = alpha * logsumexp(q / alpha, axis=-1)
        return q, jnp.where(terminal, terminal_value, v_new)

    def body(_, v):
        return backup_of(v)[1]

    v_next = jax.lax.fori_loop(0, steps - 1, body, v)
    q, v0 = backup_of(v_next)
    pi = jax.nn.one_hot(q.argmax(-1), a_n) if hard else jnp.exp((q - v0[..., None]) / alpha)
    return v0, q, pi


def inputs(mdp):
    arrays = mdp.arrays()
    return arrays["R"], arrays["terminal_value"], arrays["data"]


def relative(got, want) -> float:
    got, want = np.asarray(got), np.asarray(want)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def unrolled_vjp(mdp, c, alpha, gamma, backup, steps):
    """JAX's gradient of ``sum(c[o] * o)`` over the outputs ``o`` of ``steps`` unrolled
    backups (Q and pi left out on terminal rows, where softvi reports NaN), with respect to
    (reward, alpha, gamma, terminal values, probabilities); and the cotangents as softvi takes
    them (NaN on those rows)."""
    r, tv, probs = inputs(mdp)
    terminal = mdp.arrays()["terminal"]

    def loss(reward, alpha, gamma, terminal_value, probs):
        v, q, pi = unrolled(mdp, reward, alpha, gamma, terminal_value, probs, steps, backup)
        got = {"values": v, "q": q, "policy": pi}
        rows = ~terminal[..., None]
        total = 0.0
        for o in c:
            x = got[o] if o == "values" else jnp.where(rows, got[o], 0.0)
            total = total + jnp.sum(c[o] * x)
        return total

    want = jax.grad(loss, argnums=(0, 1, 2, 3, 4))(r, alpha, gamma, tv, probs)
    cot = {
        o: (x if o == "values" else np.where(terminal[..., None], np.nan, x)) for o, x in c.items()
    }
    return want, cot


def gaps(mdp, got, want) -> list[tuple[str, float]]:
    """Each input's relative gap between ``softvi.Gradients`` and the tuple of
    :func:`unrolled_vjp` (terminal values' on terminal states only)."""
    terminal = mdp.arrays()["terminal"]
    return [
        ("reward", relative(got.reward, want[0])),
        ("alpha", relative(got.alpha, want[1])),
        ("gamma", relative(got.gamma, want[2])),
        (
            "terminal_value",
            relative(np.where(terminal, got.terminal_value, 0.0), np.where(terminal, want[3], 0.0)),
        ),
        ("transition_probs", relative(got.transition_probs, want[4])),
    ]


@pytest.mark.parametrize("backup", ["expected", "optimistic"])
@pytest.mark.parametrize("horizon", [8, None])
@pytest.mark.parametrize("which", ["values", "policy", "all"])
def test_vjp_matches_unrolled_autodiff(backup, horizon, which):
    """Every input's gradient within 1e-8 of JAX's through the unrolled iteration: a finite
    horizon exactly, and the fixed point at gamma 0.9 against 400 unrolled steps (0.9^400 =
    5e-19 of the tail is below f64's resolution)."""
    mdp = world(1)
    alpha, gamma = 0.6, 0.9
    rng = np.random.default_rng(7)
    c = {
        o: rng.normal(size=shape)
        for o, shape in [("values", (B, S)), ("q", (B, S, A)), ("policy", (B, S, A))]
    }
    use = {"values": ["values"], "policy": ["policy"], "all": ["values", "q", "policy"]}[which]
    want, cot = unrolled_vjp(mdp, {o: c[o] for o in use}, alpha, gamma, backup, horizon or 400)
    got = softvi.vjp(mdp, alpha=alpha, gamma=gamma, backup=backup, horizon=horizon, **cot)
    for name, gap in gaps(mdp, got, want):
        assert gap <= 1e-8, f"{name}: {gap:.1e}"
    if horizon is None:
        # Started from the forward's V (as the wrappers do), from the f64 reference's or the
        # f32 native engine's (which warns that it cannot reach tol 1e-10): the same gradient,
        # within 1e-8 of the unrolled one (the sweeps stop where a solve from scratch does).
        for device in ("cpu", "native"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                v = softvi.solve(
                    mdp, alpha=alpha, gamma=gamma, backup=backup, tol=1e-10, device=device
                ).values
            again = softvi.vjp(mdp, alpha=alpha, gamma=gamma, backup=backup, solution=v, **cot)
            assert relative(again.reward, want[0]) <= 1e-8, device
            assert relative(again.transition_probs, want[4]) <= 1e-8, device


@pytest.mark.parametrize("backup", ["expected", "optimistic"])
def test_native_vjp_within_the_f32_contract(backup):
    """``device="native"`` differentiates at the native f32 engine's fixed point (its own
    solve, or ``solution`` as given) without refining it: every input's gradient within 1e-3
    relative of the f64 reference's and of JAX's through 400 unrolled steps at gamma 0.9 (the
    fixed point to f64's resolution). The f32 sweeps stop near 1e-6 of V per sweep, so V is
    within about 1e-5 of the fixed point and the gradient, linear in that error to first
    order, about as close; 1e-3 is the f32 engines' contract. A finite horizon runs on the
    reference: the same gradient as ``device="cpu"``."""
    mdp = world(1)
    alpha, gamma = 0.6, 0.9
    rng = np.random.default_rng(11)
    c = {o: rng.normal(size=shape) for o, shape in [("values", (B, S)), ("q", (B, S, A)),
                                                     ("policy", (B, S, A))]}  # fmt: skip
    want, cot = unrolled_vjp(mdp, c, alpha, gamma, backup, 400)
    settings = dict(alpha=alpha, gamma=gamma, backup=backup, **cot)
    reference = softvi.vjp(mdp, **settings, tol=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # f32 cannot reach tol 1e-10
        v = softvi.solve(mdp, alpha=alpha, gamma=gamma, backup=backup, tol=1e-10,
                         device="native").values  # fmt: skip
    for label, got in [
        ("own solve", softvi.vjp(mdp, **settings, device="native")),
        ("given V", softvi.vjp(mdp, **settings, solution=v, device="native")),
    ]:
        for name, gap in gaps(mdp, got, want):
            assert gap <= 1e-3, f"{label}, {name} against the unrolled: {gap:.1e}"
        for name, g, w in [
            ("reward", got.reward, reference.reward),
            ("transition_probs", got.transition_probs, reference.transition_probs),
            ("alpha", got.alpha, reference.alpha),
            ("gamma", got.gamma, reference.gamma),
        ]:
            assert relative(g, w) <= 1e-3, f"{label}, {name} against the reference"
    finite = softvi.vjp(mdp, alpha=alpha, gamma=gamma, backup=backup, horizon=8, **cot)
    again = softvi.vjp(mdp, alpha=alpha, gamma=gamma, backup=backup, horizon=8, **cot,
                       device="native")  # fmt: skip
    np.testing.assert_array_equal(again.reward, finite.reward)


def test_vjp_solution_errors():
    """A forward solution of the wrong size, with a NaN, or for a finite horizon is refused."""
    mdp = world(2)
    c = np.ones((B, S))
    with pytest.raises(ValueError, match="holds 17 values, not the 18"):
        softvi.vjp(mdp, values=c, gamma=0.9, solution=np.zeros(17))
    nan = np.zeros((B, S))
    nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="state 0 in task 0 is NaN"):
        softvi.vjp(mdp, values=c, gamma=0.9, solution=nan)
    for device in ("cpu", "native"):
        with pytest.raises(ValueError, match="for an infinite horizon"):
            softvi.vjp(
                mdp, values=c, gamma=0.9, horizon=3, solution=np.zeros((B, S)), device=device
            )


def test_hard_max_subgradient():
    """alpha = 0: the argmax policy's subgradient equals JAX's through ``max``."""
    mdp = world(2)
    r, tv, probs = inputs(mdp)
    c = np.random.default_rng(3).normal(size=(B, S))
    want = jax.grad(lambda r: jnp.sum(c * unrolled(mdp, r, 0.0, 0.9, tv, probs, 6, hard=True)[0]))(
        r
    )
    got = softvi.vjp(mdp, values=c, alpha=0.0, gamma=0.9, horizon=6)
    assert relative(got.reward, want) <= 1e-12


def test_jax_primitive_grad_jit_vmap():
    """``softvi.jax.soft_value_iteration`` under grad, jit and vmap, for rewards of shape
    [S] and [B,S,A], and for alpha, gamma, terminal values and P, against the unrolled grad."""
    mdp = world(4, tasks=1)
    _, tv, probs = inputs(mdp)
    initial = mdp.arrays()["initial"][0]
    rng = np.random.default_rng(5)
    state_reward = rng.normal(size=S)

    def ours(r, alpha, gamma, tv, probs):
        v = softvi.jax.soft_value_iteration(
            mdp, r, alpha=alpha, gamma=gamma, horizon=10, terminal_value=tv,
            transition_probs=probs,
        )  # fmt: skip
        return jnp.sum(initial * v)

    def theirs(r, alpha, gamma, tv, probs):
        reward = jnp.broadcast_to(r[None, :, None], (1, S, A))
        return jnp.sum(initial * unrolled(mdp, reward, alpha, gamma, tv[None], probs, 10)[0][0])

    args = (jnp.asarray(state_reward), 0.8, 0.95, jnp.asarray(tv[0]), jnp.asarray(probs))
    got = jax.jit(jax.grad(ours, argnums=(0, 1, 2, 3, 4)))(*args)
    want = jax.grad(theirs, argnums=(0, 1, 2, 3, 4))(*args)
    for g, w in zip(got, want, strict=True):
        assert relative(g, w) <= 1e-8
    assert got[0].shape == (S,)

    # vmap over a batch of [S,A] rewards equals the batched [B,S,A] call.
    batch = jnp.asarray(rng.normal(size=(4, S, A)))
    one = lambda r: softvi.jax.soft_value_iteration(mdp, r, gamma=0.9, horizon=7)  # noqa: E731
    mapped = jax.vmap(one)(batch)
    together = softvi.jax.soft_value_iteration(mdp, batch, gamma=0.9, horizon=7)
    np.testing.assert_allclose(mapped, together, rtol=0, atol=1e-12)
    grads = jax.vmap(jax.grad(lambda r: jnp.sum(one(r) * initial)))(batch)
    for k in range(4):
        reward = batch[k][None]
        w = jax.grad(lambda r: jnp.sum(initial * unrolled(mdp, r, 1.0, 0.9, tv, probs, 7)[0][0]))(
            reward
        )
        assert relative(grads[k], w[0]) <= 1e-8


def test_jax_policy_outputs_and_errors():
    """A cotangent on pi alone through the primitive, and its argument checks."""
    mdp = world(6, tasks=1)
    r, tv, probs = inputs(mdp)
    weights = np.random.default_rng(8).normal(size=(S, A))
    terminal = mdp.arrays()["terminal"][0]

    def ours(r):
        pi = softvi.jax.soft_value_iteration(mdp, r, gamma=0.9, horizon=5, outputs=("policy",))
        return jnp.sum(jnp.where(terminal[:, None], 0.0, weights * jnp.nan_to_num(pi)))

    def theirs(r):
        pi = unrolled(mdp, r[None], 1.0, 0.9, tv, probs, 5)[2][0]
        return jnp.sum(jnp.where(terminal[:, None], 0.0, weights * pi))

    assert relative(jax.grad(ours)(r[0]), jax.grad(theirs)(r[0])) <= 1e-8
    with pytest.raises(ValueError, match="outputs must be"):
        softvi.jax.soft_value_iteration(mdp, r[0], outputs=("occupancy",))
    with pytest.raises(ValueError, match="give a cotangent"):
        softvi.vjp(mdp)


def test_grid_world_gradients():
    """A grid batch (``Grid.as_mdp``) through the JAX primitive: the values equal
    ``solve_grid``'s, and the gradient of a reward map of shape [H,W], [B,H,W] or [B,H,W,A]
    (its own shape, 0 on walls) equals JAX's through the unrolled iteration on the same
    states."""
    grid = softvi.Grid.maze(9, 7, seed=3)
    goals = [(1, 1), (5, 7)]
    world = grid.as_mdp(goals, slip=0.1)
    h, w, b = grid.height, grid.width, len(goals)
    rng = np.random.default_rng(12)
    state_map = rng.normal(size=(b, h, w))
    v = softvi.jax.soft_value_iteration(world, state_map, gamma=0.95, horizon=12)
    want = softvi.solve_grid(grid, goals, reward=state_map, slip=0.1, gamma=0.95, horizon=12,
                             device="cpu").values  # fmt: skip
    assert v.shape == (b, h, w)
    np.testing.assert_allclose(v, want, rtol=1e-5, atol=1e-5)  # solve_grid reports float32
    arrays = world.arrays()
    base, tv, probs = arrays["R"], arrays["terminal_value"], arrays["data"]
    a = world.actions
    cells = world.cells
    start = np.nan_to_num(world.to_cells(arrays["initial"]))
    for shape in [(h, w), (b, h, w), (b, h, w, a)]:
        r_map = jnp.asarray(rng.normal(size=shape))

        def ours(r):
            return jnp.nansum(
                start * softvi.jax.soft_value_iteration(world, r, gamma=0.95, horizon=12)
            )

        def theirs(r):
            per_action = r.ndim == 4
            flat = jnp.broadcast_to(r, (b, h, w, a) if per_action else (b, h, w))
            on_states = flat.reshape(b, h * w, *flat.shape[3:])[:, cells]
            reward = base + (on_states if per_action else on_states[..., None])
            v0 = unrolled(world, reward, 1.0, 0.95, tv, probs, 12)[0]
            return jnp.sum(start.reshape(b, -1)[:, cells] * v0)

        got, expected = jax.grad(ours)(r_map), jax.grad(theirs)(r_map)
        assert got.shape == shape
        assert relative(got, expected) <= 1e-8, shape
        walls = ~grid.free
        assert np.all(np.asarray(got).reshape(-1, h, w, *shape[3:])[:, walls] == 0)


@pytest.mark.parametrize("device", ["native", "gpu"])
def test_grid_world_on_the_grid_kernels(device):
    """On an f32 device a grid batch's reward map is solved forward on the grid kernels
    (``solve_grid``): the outputs match the f64 general-MDP path's (NaN on walls and goal rows,
    -inf on the same excluded actions) within the f32 engines' precision floor. The gradient:
    each f32 engine's VJP at that V (the GPU's f32 VJP, the native engine's at the V as it
    is), within the f32 contract's 1e-3 (V within 2e-5 of the fixed point, see below). A
    per-action map, or replaced transition probabilities, take the general-MDP path."""
    from softvi._gradients import Primitive

    grid = softvi.Grid.maze(31, 21, seed=3)
    goals = [(1, 1), (19, 29)]
    world = grid.as_mdp(goals, slip=0.1)
    rng = np.random.default_rng(4)
    r_map = rng.normal(0.0, 0.3, (2, 21, 31))
    outputs = ("values", "q", "policy")
    on = Primitive(world, None, "expected", outputs, device, 1e-10)
    tv, probs = on.defaults(None, None)
    assert on.on_grid_kernels(r_map, tv, probs)
    assert not on.on_grid_kernels(rng.normal(size=(2, 21, 31, world.actions)), tv, probs)
    assert not on.on_grid_kernels(r_map, tv, probs * (1 + 1e-9))
    assert not Primitive(world, None, "expected", outputs, "cpu", 1e-10).on_grid_kernels(
        r_map, tv, probs
    )
    start = jnp.asarray(np.nan_to_num(world.to_cells(world.arrays()["initial"])))

    def objective(r, device):
        v, q, pi = softvi.jax.soft_value_iteration(
            world, r, alpha=0.5, gamma=0.95, outputs=outputs, device=device
        )
        return jnp.nansum(start * v) + jnp.nansum(jnp.where(jnp.isfinite(q), q, 0.0)) * 1e-3

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # f32 cannot reach tol 1e-10
        got = run_on(device, softvi.jax.soft_value_iteration, world, r_map, alpha=0.5,
                     gamma=0.95, outputs=outputs)  # fmt: skip
        grad = jax.grad(objective)(jnp.asarray(r_map), device)
        kernels = softvi.solve_grid(grid, goals, reward=r_map, slip=0.1, alpha=0.5, gamma=0.95,
                                    tol=1e-10, device=device).values  # fmt: skip
    np.testing.assert_array_equal(np.asarray(got[0]), kernels)  # the grid kernels' own V
    want = softvi.jax.soft_value_iteration(world, r_map, alpha=0.5, gamma=0.95, outputs=outputs)
    for x, y in zip(got, want, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert np.array_equal(np.isnan(x), np.isnan(y))
        assert np.array_equal(np.isneginf(x), np.isneginf(y))
        finite = np.isfinite(y)
        # The f32 engines stop at their precision floor, a sweep changing V by about 1e-6 of
        # its size: |V - V*| up to about 1e-6 / (1 - gamma) = 2e-5 of it at gamma 0.95.
        assert np.abs(x[finite] - y[finite]).max() <= 5e-5 * max(np.abs(y[finite]).max(), 1)
    expected = jax.grad(objective)(jnp.asarray(r_map), "cpu")
    # Both f32 engines differentiate at their own f32 fixed point: the f32 contract, 1e-3.
    assert relative(grad, expected) <= 1e-3


@pytest.mark.parametrize(
    "backup, horizon, alpha",
    [("expected", 8, 0.6), ("optimistic", 8, 0.6), ("expected", None, 0.6),
     ("optimistic", None, 0.6), ("expected", 6, 0.0)],
)  # fmt: skip
def test_vjp_on_the_gpu_matches_unrolled_autodiff(backup, horizon, alpha):
    """``device="gpu"``: the wgpu engine's float32 VJP within 1e-3 of JAX's float64 autodiff
    through the unrolled iteration and of the f64 reference, every input, relative to each
    input's largest entry (f32 rounding amplified by at most 1 / (1 - gamma) = 10 stays near
    1e-5; a wrong term is off by O(1)); alpha 0 is the argmax subgradient."""
    mdp = world(2)
    r, tv, probs = inputs(mdp)
    gamma = 0.9
    rng = np.random.default_rng(8)
    c_v, c_q = rng.normal(size=(B, S)), rng.normal(size=(B, S, A))
    terminal = mdp.arrays()["terminal"]

    def loss(reward, alpha, gamma, terminal_value, probs):
        v, q, _ = unrolled(mdp, reward, alpha, gamma, terminal_value, probs, horizon or 400,
                           backup, hard=alpha == 0.0)  # fmt: skip
        return jnp.sum(c_v * v) + jnp.sum(c_q * jnp.where(~terminal[..., None], q, 0.0))

    want = jax.grad(loss, argnums=(0, 1, 2, 3, 4))(r, alpha, gamma, tv, probs)
    c_q_out = np.where(terminal[..., None], np.nan, c_q)
    kwargs = dict(alpha=alpha, gamma=gamma, backup=backup, horizon=horizon, values=c_v, q=c_q_out)
    got = run_on("gpu", softvi.vjp, mdp, **kwargs)
    reference = softvi.vjp(mdp, **kwargs)
    pairs = [
        ("reward", got.reward, want[0], reference.reward),
        ("gamma", got.gamma, want[2], reference.gamma),
        ("terminal_value", np.where(terminal, got.terminal_value, 0.0),
         np.where(terminal, want[3], 0.0), np.where(terminal, reference.terminal_value, 0.0)),
        ("transition_probs", got.transition_probs, want[4], reference.transition_probs),
    ]  # fmt: skip
    if alpha > 0:
        pairs.append(("alpha", got.alpha, want[1], reference.alpha))
    for name, g, w, ref in pairs:
        assert relative(g, w) <= 1e-3, f"{name} vs autodiff: {relative(g, w):.1e}"
        assert relative(g, ref) <= 1e-3, f"{name} vs reference: {relative(g, ref):.1e}"
    assert got.sweeps == (horizon or got.sweeps)


@pytest.mark.parametrize("backup", ["expected", "optimistic"])
def test_vjp_on_the_gpu_of_a_grid_world(backup):
    """A grid batch as a ``GridMDP`` (slip, 8 moves, two goals as two tasks, an odd maze: 102
    free cells, not a multiple of the 64-invocation workgroup) on a GPU runs on the grid
    kernels (``GridEngine::vjp``): within 1e-3 of the f64 reference's VJP of the same MDP,
    every input, at a finite horizon and the gamma 0.95 fixed point (see
    test_vjp_on_the_gpu_matches_unrolled_autodiff for the bound), as the general-MDP kernels
    (the same MDP with its probabilities replaced, a plain ``TabularMDP``) are. A reward per
    action takes the grid kernels at a given fixed point and the general-MDP ones at a finite
    horizon (the grid kernels' own solve takes a reward per cell)."""
    grid = softvi.Grid.maze(21, 11, seed=5)
    world = grid.as_mdp([(1, 1), (9, 19)], slip=0.1)
    plain = world.replace(transition_probs=world.arrays()["data"])
    assert isinstance(world.replace(reward=world.arrays()["R"]), softvi.GridMDP)
    assert not isinstance(plain, softvi.GridMDP)
    rng = np.random.default_rng(9)
    c_v = rng.normal(size=(world.tasks, world.states))
    c_q = rng.normal(size=(world.tasks, world.states, world.actions))
    per_action = world.replace(reward=world.arrays()["R"] + rng.normal(0, 0.3, c_q.shape))
    for horizon in (12, None):
        kwargs = dict(values=c_v, q=c_q, alpha=0.4, gamma=0.95, backup=backup, horizon=horizon,
                      tol=1e-8)  # fmt: skip
        got = run_on("gpu", softvi.vjp, world, **kwargs)
        csr = run_on("gpu", softvi.vjp, plain, **kwargs)
        want = softvi.vjp(world, **kwargs)
        assert (got.kernels, csr.kernels, want.kernels) == ("grid", "csr", "reference")
        solution = None
        if horizon is None:
            solution = softvi.solve(per_action, alpha=0.4, gamma=0.95, backup=backup,
                                    tol=1e-10, device="cpu").values  # fmt: skip
        action_got = run_on("gpu", softvi.vjp, per_action, solution=solution, **kwargs)
        action_want = softvi.vjp(per_action, **kwargs)
        assert action_got.kernels == ("grid" if horizon is None else "csr")
        for name in ("reward", "terminal_value", "transition_probs", "alpha", "gamma"):
            for label, g, w in [
                ("grid kernels", got, want), ("general-MDP kernels", csr, want),
                ("reward per action", action_got, action_want),
            ]:  # fmt: skip
                g, w = getattr(g, name), getattr(w, name)
                gap = relative(g, w)
                assert gap <= 1e-3, f"{label}: {name}, horizon {horizon}: {gap:.1e}"


def test_grid_vjp_routing_off_the_gpu():
    """Only a GPU takes a grid batch to the grid kernels: ``"cpu"`` is the f64 reference and
    ``"native"`` the native engine, through the ``GridMDP``, as for any MDP; ``"auto"`` picks
    as :func:`softvi.solve` does (the native engine where the only adapter is a CPU)."""
    world = softvi.Grid.maze(9, 7, seed=3).as_mdp([(1, 1)], slip=0.1)
    c_v = np.random.default_rng(3).normal(size=(world.tasks, world.states))
    kwargs = dict(values=c_v, alpha=0.5, gamma=0.9)
    assert softvi.vjp(world, **kwargs).kernels == "reference"
    assert softvi.vjp(world, **kwargs, device="cpu").kernels == "reference"
    assert softvi.vjp(world, **kwargs, device="native").kernels == "native"
    assert softvi.vjp(world, **kwargs, device="auto").kernels in ("native", "grid", "reference")


@pytest.mark.parametrize("horizon", [10, None])
def test_grid_reward_maps_on_the_gpu_grid_kernels(horizon, monkeypatch):
    """``softvi.jax.soft_value_iteration`` with a ``Grid`` world on a GPU: reward maps
    ``[H,W]``, ``[B,H,W]`` and ``[B,H,W,A]`` get gradients of their own shape (0 on walls)
    within 1e-3 of the f64 reference's (``device="cpu"``), relative to the largest entry; the
    backward pass ran on the grid kernels (every map at the fixed point, whose V the forward
    pass hands it; a per-action map at a finite horizon on the general-MDP kernels)."""
    import softvi._gradients as gradients

    ran: list[str] = []
    real_vjp = gradients.vjp

    def recording(*args, **kwargs):
        out = real_vjp(*args, **kwargs)
        ran.append(out.kernels)
        return out

    monkeypatch.setattr(gradients, "vjp", recording)
    grid = softvi.Grid.maze(13, 9, seed=7)
    goals = [(1, 1), (7, 11)]
    world = grid.as_mdp(goals, slip=0.1, stay=True)
    h, w, b, a = grid.height, grid.width, len(goals), world.actions
    rng = np.random.default_rng(17)
    start = jnp.asarray(np.nan_to_num(world.to_cells(world.arrays()["initial"])))
    c_q = jnp.asarray(rng.normal(size=(b, h, w, a)))

    def objective(r, device):
        v, q = softvi.jax.soft_value_iteration(
            world, r, alpha=0.5, gamma=0.9, horizon=horizon, outputs=("values", "q"),
            device=device, tol=1e-8,
        )  # fmt: skip
        return jnp.nansum(start * v) + 0.1 * jnp.nansum(jnp.where(jnp.isfinite(q), c_q * q, 0))

    for shape in [(h, w), (b, h, w), (b, h, w, a)]:
        r_map = jnp.asarray(rng.normal(0.0, 0.3, size=shape))
        ran.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # f32 cannot reach tol 1e-8
            got = run_on("gpu", jax.grad(objective), r_map)
        on_grid = horizon is None or len(shape) < 4
        assert ran == ["grid" if on_grid else "csr"], (shape, ran)
        want = jax.grad(objective)(r_map, "cpu")
        assert got.shape == shape
        assert relative(got, want) <= 1e-3, (shape, relative(got, want))
        assert np.all(np.asarray(got).reshape(-1, h, w, *shape[3:])[:, ~grid.free] == 0)
