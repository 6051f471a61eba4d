"""The CPU device is f64 end to end: a float64 model is solved on its own entries (no float32
rounding), soft policies stay soft at any |Q| f64 resolves, the occupancy keeps its mass, and
errors name the Python argument. Checked against imitation's recurrences written out here in
NumPy float64 on the env's unrounded arrays."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close
from test_imitation import occupancy, partition_fh

import softvi
from softvi.compat import imitation

gym = pytest.importorskip("gymnasium")
pytest.importorskip("seals")

ENVS = [
    "seals/Random-v0",
    "seals/CliffWorld7x4-v0",
    "seals/CliffWorld15x6-v0",
    "seals/CliffWorld100x20-v0",
]
DISCOUNTS = [0.0, 0.5, 0.9, 0.99, 1.0]


def ulps(x: np.ndarray) -> float:
    """One float64 ulp of the largest |x|."""
    return float(np.spacing(np.nanmax(np.abs(x))))


@pytest.fixture(scope="module", params=ENVS)
def env(request):
    return gym.make(request.param)


@pytest.mark.parametrize("rewards", ["normal", "large"])
def test_partition_and_occupancy_against_unrounded_imitation(env, rewards):
    """V, Q, pi and D within 1e-10 of imitation's float64 recurrences on the env's own arrays.

    V and Q are held to 1e-10 relative to their largest magnitude; pi = exp(Q - V) inherits
    the rounding of Q - V, which is absolute: an ulp of |Q| is 1.2e-10 at |Q| ~ 1e6 (rewards
    1e4 over 110 steps), so pi is held to max(1e-10, 16 ulps of max |Q|). Before the model
    kept its float64 entries the CPU device was off by up to 4.8e-5 here."""
    model = env.unwrapped
    # The env's own entries, exactly, in float64 (Random-v0 stores float32 numbers; NumPy's
    # float32 @ float64 product would not compute in float64).
    p = np.asarray(model.transition_matrix, dtype=np.float64)
    initial, horizon = model.initial_state_dist, model.horizon
    s_n = p.shape[0]
    rng = np.random.default_rng(26)
    reward = rng.normal(0.0, 10.0, s_n) if rewards == "normal" else 1e4 + rng.normal(size=s_n)
    for discount in DISCOUNTS:
        v, q, pi = imitation.mce_partition_fh(env, reward=reward, discount=discount, device="cpu")
        want_v, want_q, want_pi = partition_fh(p, reward, horizon, discount)
        label = f"{rewards} rewards, discount {discount}"
        assert_close(v, want_v, 1e-10, f"V, {label}")
        assert_close(q, want_q, 1e-10, f"Q, {label}")
        np.testing.assert_allclose(
            pi, want_pi, rtol=0, atol=max(1e-10, 16 * ulps(want_q)), err_msg=f"pi, {label}"
        )
        d, d_cum = imitation.mce_occupancy_measures(
            env, reward=reward, discount=discount, device="cpu"
        )
        _, _, pi_1 = partition_fh(p, reward, horizon, 1.0)
        want_d, want_cum = occupancy(p, pi_1, initial, discount)
        assert_close(d, want_d, 1e-10, f"D, {label}")
        assert_close(d_cum, want_cum, 1e-10, f"D_cum, {label}")
        # No terminal state and rows that sum to 1 in float64: every step holds the start's
        # whole mass, to f64 rounding (the recurrence's exp(Q - V) rows are not normalised and
        # drift by up to 2e-10 at |Q| ~ 1e6; Random-v0's float32 rows sum to 1 within 1e-8
        # only, so it has no such law).
        if np.abs(p.sum(axis=2) - 1.0).max() <= 1e-15:
            np.testing.assert_allclose(d.sum(axis=1), 1.0, rtol=0, atol=1e-12, err_msg=label)


def one_state(rewards: list[float]) -> softvi.TabularMDP:
    """One state, a self-loop per action, the given reward per action."""
    a = len(rewards)
    return softvi.TabularMDP(np.ones((1, a, 1)), np.array([rewards]))


@pytest.mark.parametrize("reward", [-99_999.0, -100_001.0, -1e9])
def test_equal_actions_stay_uniform_at_large_q(reward):
    """Three equal actions at temperature 1: pi = 1/3 each at any |Q| on the CPU device (the
    f32 devices' hard-max switch, alpha < 1e-5 max(1, |max Q|), does not apply to f64)."""
    got = softvi.solve(one_state([reward] * 3), alpha=1.0, gamma=1.0, horizon=1, device="cpu")
    np.testing.assert_allclose(got.policy, [[1 / 3] * 3], rtol=0, atol=1e-15)


def test_soft_policy_at_q_of_two_hundred_thousand():
    """Per-step rewards -2,000 and -2,000.5 over horizon 100: |Q| ~ 2e5 and pi = (1, e^-0.5) /
    (1 + e^-0.5) = [0.6225, 0.3775] at every step, as imitation's math gives."""
    got = softvi.solve(
        one_state([-2000.0, -2000.5]), gamma=1.0, horizon=100, all_steps=True, device="cpu"
    )
    want = np.array([1.0, np.exp(-0.5)]) / (1.0 + np.exp(-0.5))
    np.testing.assert_allclose(got.policy[:, 0], np.tile(want, (100, 1)), rtol=0, atol=1e-12)


def test_errors_name_the_argument():
    """Errors raised to Python name the argument as Python spells it, not a CLI flag."""
    mdp = one_state([0.0, 1.0])
    free = np.ones((3, 4), dtype=bool)
    cases = [
        (lambda: softvi.solve(mdp, gamma=2.0, device="cpu"), "gamma must be in [0, 1]"),
        (lambda: softvi.solve(mdp, alpha=-1.0, device="cpu"), "alpha must be finite"),
        (lambda: softvi.solve(mdp, tol=0.0, device="cpu"), "tol must be > 0"),
        (lambda: softvi.solve(mdp, max_iters=0, device="cpu"), "max_iters must be"),
        (lambda: softvi.solve(mdp, horizon=0, device="cpu"), "horizon must be"),
        (
            lambda: softvi.solve(mdp, alpha=0.0, backup="optimistic", device="cpu"),
            "backup = optimistic",
        ),
        (
            lambda: softvi.solve_grid(softvi.Grid(free), [(0, 0)], slip=2.0, device="cpu"),
            "slip must be in [0, 1]",
        ),
        (
            lambda: softvi.maxent_irl(mdp, np.ones((1, 1)), np.zeros((2, 3)), learning_rate=0),
            "learning_rate must be",
        ),
        (
            lambda: softvi.maxent_irl(mdp, np.ones((1, 1)), np.zeros((2, 3)), tol=-1.0),
            "tol must be",
        ),
    ]
    for call, message in cases:
        with pytest.raises(ValueError) as raised:
            call()
        assert message in str(raised.value), str(raised.value)
        assert "--" not in str(raised.value), str(raised.value)
