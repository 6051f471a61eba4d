"""softvi.compat.imitation against imitation's formulas, written out here in NumPy."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import as_engine_reads, assert_close, run_on, tolerance
from scipy.special import logsumexp

from softvi.compat import imitation

gym = pytest.importorskip("gymnasium")
pytest.importorskip("seals")

DISCOUNTS = [0.0, 0.5, 0.9, 0.99, 1.0]


def partition_fh(transitions, reward, horizon, discount):
    """imitation's mce_partition_fh: Q[H-1] = r, Q[t] = r + discount T V[t+1],
    V[t] = logsumexp_a Q[t], pi = exp(Q - V); V [H,S], Q and pi [H,S,A]."""
    s_n, a_n, _ = transitions.shape
    r = np.broadcast_to(reward[:, None] if reward.ndim == 1 else reward, (s_n, a_n))
    v = np.zeros((horizon, s_n))
    q = np.zeros((horizon, s_n, a_n))
    q[horizon - 1] = r
    v[horizon - 1] = logsumexp(q[horizon - 1], axis=1)
    for t in reversed(range(horizon - 1)):
        q[t] = r + discount * transitions @ v[t + 1]
        v[t] = logsumexp(q[t], axis=1)
    return v, q, np.exp(q - v[:, :, None])


def occupancy(transitions, pi, initial, discount):
    """imitation's mce_occupancy_measures: D [H+1,S] undiscounted per step, and
    D_cum = sum_t discount^t D[t]."""
    horizon = pi.shape[0]
    d = np.zeros((horizon + 1, transitions.shape[0]))
    d[0] = initial
    for t in range(horizon):
        for a in range(transitions.shape[1]):
            d[t + 1] += (d[t] * pi[t, :, a]) @ transitions[:, a, :]
    return d, sum(discount**t * d[t] for t in range(horizon + 1))


@pytest.fixture(params=["cpu", "native", "gpu"])
def device(request) -> str:
    """The f64 reference, the native engine (the default on a machine without a GPU: dense
    models run as dense products there) and the first wgpu adapter."""
    return request.param


@pytest.fixture(scope="module", params=["seals/Random-v0", "seals/CliffWorld7x4-v0"])
def env(request):
    return gym.make(request.param)


def engine_view(env, device):
    """The env's model as ``device`` reads it (rounded to float32 on a GPU)."""
    model = env.unwrapped
    return (
        as_engine_reads(model.transition_matrix, device),
        as_engine_reads(model.reward_matrix, device),
        as_engine_reads(model.initial_state_dist, device),
        model.horizon,
    )


@pytest.mark.parametrize("discount", DISCOUNTS)
def test_partition_and_occupancy(env, device, discount):
    p, r, initial, horizon = engine_view(env, device)
    rtol = tolerance(device)
    v, q, pi = run_on(device, imitation.mce_partition_fh, env, discount=discount)
    assert v.shape == (horizon, p.shape[0]) and v.dtype == np.float64
    assert q.shape == pi.shape == (horizon, p.shape[0], p.shape[1])
    want_v, want_q, want_pi = partition_fh(p, r, horizon, discount)
    assert_close(v, want_v, rtol, "V")
    assert_close(q, want_q, rtol, "Q")
    assert_close(pi, want_pi, rtol, "pi")

    # The default policy is imitation's: mce_partition_fh(env, reward=reward), undiscounted.
    d, d_cum = run_on(device, imitation.mce_occupancy_measures, env, discount=discount)
    _, _, pi_1 = partition_fh(p, r, horizon, 1.0)
    want_d, want_cum = occupancy(p, pi_1, initial, discount)
    assert d.shape == (horizon + 1, p.shape[0]) and d_cum.shape == (p.shape[0],)
    assert_close(d, want_d, rtol, "D")
    assert_close(d_cum, want_cum, rtol, "D_cum")

    # A given policy (here the discounted one) is simulated as it is, in NumPy on the env's
    # own model: in float64 on the CPU reference (no rounding), in float32 elsewhere (1e-4:
    # float32 products over H steps of probabilities).
    d, d_cum = imitation.mce_occupancy_measures(env, pi=want_pi, discount=discount, device=device)
    model = env.unwrapped
    want_d, want_cum = occupancy(
        model.transition_matrix, want_pi, model.initial_state_dist, discount
    )
    assert_close(d, want_d, rtol, "D of a given pi")
    assert_close(d_cum, want_cum, rtol, "D_cum of a given pi")


def test_state_action_reward(env):
    p, _, initial, horizon = engine_view(env, "cpu")
    reward = np.random.default_rng(5).normal(size=p.shape[:2])
    v, q, pi = imitation.mce_partition_fh(env, reward=reward, discount=0.9, device="cpu")
    want_v, want_q, want_pi = partition_fh(p, as_engine_reads(reward, "cpu"), horizon, 0.9)
    assert_close(v, want_v, 1e-10, "V")
    assert_close(q, want_q, 1e-10, "Q")
    d, _ = imitation.mce_occupancy_measures(env, reward=reward, device="cpu")
    _, _, pi_1 = partition_fh(p, as_engine_reads(reward, "cpu"), horizon, 1.0)
    assert_close(d, occupancy(p, pi_1, initial, 1.0)[0], 1e-10, "D")


def test_errors(env):
    s_n, a_n = env.unwrapped.transition_matrix.shape[:2]
    with pytest.raises(ValueError, match="reward has shape"):
        imitation.mce_partition_fh(env, reward=np.zeros(s_n + 1))
    with pytest.raises(ValueError, match="pi has shape"):
        imitation.mce_occupancy_measures(env, pi=np.ones((1, s_n, a_n)) / a_n)
    infinite = env.unwrapped.__class__.__new__(env.unwrapped.__class__)
    infinite.__dict__.update(env.unwrapped.__dict__, horizon=None)
    with pytest.raises(ValueError, match="finite-horizon"):
        imitation.mce_partition_fh(infinite)


def test_policies_pass_imitations_sampling(env, device):
    """imitation samples each row with NumPy's Generator.choice, which checks the sum in
    float64: every row of the returned policy must pass it (GPU rows summed to 1 only within
    float32 rounding and were refused), and the renormalisation stays within f32 rounding of
    imitation's own policy (the truth, computed here)."""
    _, _, pi = run_on(device, imitation.mce_partition_fh, env, discount=0.9)
    rng = np.random.default_rng(3)
    rows = pi.reshape(-1, pi.shape[-1])
    for row in rows:
        rng.choice(len(row), p=row)
    assert np.all(np.abs(rows.sum(axis=1) - 1.0) <= 4 * np.finfo(np.float64).eps)
    transitions, reward, _, horizon = engine_view(env, device)
    _, _, truth = partition_fh(transitions, reward, horizon, 0.9)
    # f32 outputs of probabilities <= 1: 1e-5 covers the solve's f32 rounding over H steps.
    assert np.max(np.abs(pi - truth)) <= 1e-5


class _DenseEnv:
    """A seals-style tabular env whose every transition row is full (the native engine keeps
    it dense; on the f64 reference the compat layer pushes the default policy forward by BLAS
    products, not through the reference's pull)."""

    def __init__(self):
        rng = np.random.default_rng(11)
        t = rng.random((13, 3, 13))
        self.transition_matrix = t / t.sum(axis=2, keepdims=True)
        self.reward_matrix = rng.normal(size=13)
        self.initial_state_dist = np.full(13, 1 / 13)
        self.horizon = 9


def test_dense_partition_and_occupancy(device):
    env = _DenseEnv()
    p, r, initial = env.transition_matrix, env.reward_matrix, env.initial_state_dist
    v, q, pi = run_on(device, imitation.mce_partition_fh, env, discount=0.9)
    want_v, want_q, want_pi = partition_fh(
        as_engine_reads(p, device), as_engine_reads(r, device), env.horizon, 0.9
    )
    assert_close(v, want_v, tolerance(device), "V")
    assert_close(q, want_q, tolerance(device), "Q")
    assert_close(pi, want_pi, tolerance(device), "pi")
    d, d_cum = run_on(device, imitation.mce_occupancy_measures, env, discount=0.9)
    _, _, pi_1 = partition_fh(
        as_engine_reads(p, device), as_engine_reads(r, device), env.horizon, 1.0
    )
    want_d, want_cum = occupancy(p, pi_1, initial, 0.9)
    assert_close(d, want_d, tolerance(device), "D")
    assert_close(d_cum, want_cum, tolerance(device), "D_cum")


def test_dense_model_read_in_place_is_the_copied_model(device):
    # compat.imitation reads a dense T in place (no copy of its S*A*S entries): the model
    # must be the one the constructor copies, result for result, whatever T's layout.
    from softvi import TabularMDP, solve

    env = _DenseEnv()
    p, r = env.transition_matrix, env.reward_matrix
    settings = dict(alpha=1.0, gamma=0.9, horizon=env.horizon, q=True, all_steps=True)
    want = run_on(device, solve, TabularMDP(p, r), **settings)
    # C order is read in place; Fortran order is converted once first.
    for given in (p, np.asfortranarray(p)):
        mdp = TabularMDP._reading_in_place(given, r)
        for name, array in TabularMDP(p, r).arrays().items():
            assert np.array_equal(mdp.arrays()[name], array), name
        got = run_on(device, solve, mdp, **settings)
        for name in ("values", "q", "policy"):
            a, b = getattr(got, name), getattr(want, name)
            assert np.array_equal(a, b, equal_nan=True), name
    with pytest.raises(ValueError, match="expected a dense"):
        TabularMDP._reading_in_place(p[0], r)
    bad = p.copy()
    bad[2, 1, 0] += 0.5
    with pytest.raises(ValueError, match=r"row \(s=2, a=1\) sums to"):
        TabularMDP._reading_in_place(bad, r)
