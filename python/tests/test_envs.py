"""softvi.from_gymnasium and softvi.from_seals on the packages' own envs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_on

import softvi

gym = pytest.importorskip("gymnasium")
pytest.importorskip("seals")  # registers the seals/... envs with gymnasium


def start_distribution(mdp: softvi.TabularMDP) -> np.ndarray:
    return mdp.arrays()["initial"][0].astype(np.float64)


@pytest.mark.parametrize(
    "name, kwargs, want",
    [
        ("FrozenLake-v1", {}, 0.7442),
        ("FrozenLake8x8-v1", {}, 0.9132),
        # The 8x8 map under FrozenLake-v1's 100-step limit (FrozenLake8x8-v1 has 200): the
        # guide (docs/python.md, examples/frozenlake.py) names both.
        ("FrozenLake-v1", {"map_name": "8x8"}, 0.6407),
    ],
    ids=["4x4", "8x8", "8x8-horizon-100"],
)
def test_frozen_lake_success_probability(device, name, kwargs, want):
    # alpha = 0, gamma = 1, the spec's horizon: V_0 is the best probability of reaching the goal
    # within the time limit (slippery).
    env = gym.make(name, **kwargs)
    mdp = softvi.from_gymnasium(env)
    assert mdp.horizon == env.spec.max_episode_steps
    assert mdp.sink == env.observation_space.n and mdp.states == mdp.sink + 1
    got = run_on(device, softvi.solve, mdp, alpha=0.0, gamma=1.0, horizon=mdp.horizon)
    assert got.status == ["horizon"]
    assert round(float(start_distribution(mdp) @ got.values), 4) == want
    assert got.values[mdp.sink] == 0.0 and np.isnan(got.policy[mdp.sink]).all()


def test_taxi_termination_goes_to_the_sink_not_to_the_state():
    env = gym.make("Taxi-v4")
    model = env.unwrapped.P
    mdp = softvi.from_gymnasium(env)
    states, actions = env.observation_space.n, env.action_space.n
    arrays = mdp.arrays()
    csr = (arrays["indptr"], arrays["indices"], arrays["data"])
    dense = np.zeros((mdp.states * actions, mdp.states))
    for row in range(mdp.states * actions):
        lo, hi = csr[0][row], csr[0][row + 1]
        np.add.at(dense[row], csr[1][lo:hi], csr[2][lo:hi])
    dense = dense.reshape(mdp.states, actions, mdp.states)
    assert arrays["terminal"][0].tolist() == [False] * states + [True]
    entered_terminated = entered_not = 0
    for s in range(states):
        for a in range(actions):
            ((prob, nxt, reward, terminated),) = model[s][a]
            assert prob == 1.0
            assert dense[s, a, mdp.sink if terminated else nxt] == 1.0
            assert arrays["R"][0, s, a] == reward
            if nxt == 0:
                entered_terminated += terminated
                entered_not += not terminated
    # State 0 is entered both ways: termination is per transition.
    assert entered_terminated > 0 and entered_not > 0
    np.testing.assert_array_equal(dense[mdp.sink, :, mdp.sink], 1.0)
    np.testing.assert_allclose(
        start_distribution(mdp)[:states], env.unwrapped.initial_state_distrib, atol=1e-7
    )


@pytest.mark.parametrize("alpha", [0.0, 0.25])
def test_taxi_value_equals_monte_carlo_rollouts_of_the_policy(alpha):
    # The soft value V_0 = E[sum_t r_t - alpha log pi_t(a_t|s_t)] of the returned time-indexed
    # policy, estimated from env.step rollouts; 3 standard errors.
    env = gym.make("Taxi-v4")
    mdp = softvi.from_gymnasium(env)
    got = softvi.solve(
        mdp, alpha=alpha, gamma=1.0, horizon=mdp.horizon, all_steps=True, device="cpu"
    )
    want = float(start_distribution(mdp) @ got.values[0].astype(np.float64))
    pi = got.policy.astype(np.float64)
    rng = np.random.default_rng(12)
    returns = []
    for _ in range(600):
        s, _ = env.reset(seed=int(rng.integers(2**31)))
        ret, done, t = 0.0, False, 0
        while not done:
            p = pi[t, s] / pi[t, s].sum()
            a = int(rng.choice(len(p), p=p))
            if alpha > 0:
                ret -= alpha * np.log(p[a])
            s, r, terminated, truncated, _ = env.step(a)
            ret += r
            t += 1
            done = terminated or truncated
        assert terminated or t == mdp.horizon
        returns.append(ret)
    returns = np.asarray(returns)
    se = returns.std(ddof=1) / np.sqrt(len(returns))
    assert abs(returns.mean() - want) <= 3 * se, (returns.mean(), want, se)


def test_cliff_walking_without_time_limit_is_an_infinite_horizon():
    mdp = softvi.from_gymnasium(gym.make("CliffWalking-v1"))
    assert mdp.horizon is None
    got = softvi.solve(mdp, alpha=0.0, gamma=1.0, device="cpu")
    assert got.status == ["converged"]
    assert float(start_distribution(mdp) @ got.values) == -13.0  # 13 steps along the cliff


def test_from_gymnasium_needs_a_model():
    with pytest.raises(TypeError, match="no model P"):
        softvi.from_gymnasium(gym.make("CartPole-v1"))


@pytest.mark.parametrize("name", ["seals/CliffWorld7x4-v0", "seals/Random-v0"])
def test_from_seals(name):
    env = gym.make(name)
    model = env.unwrapped
    mdp = softvi.from_seals(env)
    assert mdp.horizon == model.horizon and mdp.sink is None
    assert (mdp.states, mdp.actions) == model.transition_matrix.shape[:2]
    arrays = mdp.arrays()
    assert not arrays["terminal"].any()
    np.testing.assert_allclose(arrays["initial"][0], model.initial_state_dist, atol=1e-7)
    reward = np.broadcast_to(model.reward_matrix[:, None], (mdp.states, mdp.actions))
    np.testing.assert_allclose(arrays["R"][0], reward, rtol=1e-7)
    assert softvi.from_seals(model).states == mdp.states  # unwrapped works too


def test_from_seals_expects_a_tabular_env():
    with pytest.raises(TypeError, match="transition_matrix"):
        softvi.from_seals(gym.make("FrozenLake-v1"))


class _ModelEnv:
    """A toy-text-style env holding only a model ``P`` (and optionally a start)."""

    def __init__(self, model, start=None):
        self.P = model
        if start is not None:
            self.initial_state_distrib = start


GOOD_MODEL = {0: {0: [(1.0, 1, 0.0, False)]}, 1: {0: [(1.0, 1, 1.0, True)]}}


@pytest.mark.parametrize(
    "outcome, needle",
    [
        ((1.0, 1, 0.0), r"P\[0\]\[0\]\[0\] = \(1.0, 1, 0.0\) is not \(prob"),
        ((1.0, 0.5, 0.0, False), r"P\[0\]\[0\]\[0\]"),  # a fractional next state
        (("x", 1, 0.0, False), r"P\[0\]\[0\]\[0\]"),
        ((1.0, 1, None, False), r"P\[0\]\[0\]\[0\]"),
    ],
)
def test_from_gymnasium_malformed_outcomes_name_the_entry(outcome, needle):
    # Each was a bare unpacking, int() or float() error that named no entry.
    model = {0: {0: [outcome]}, 1: GOOD_MODEL[1]}
    with pytest.raises(ValueError, match=needle):
        softvi.from_gymnasium(_ModelEnv(model))


def test_from_gymnasium_start_distribution_of_the_wrong_shape():
    # It was NumPy's "cannot reshape array of size 3 into shape (2,)".
    assert softvi.from_gymnasium(_ModelEnv(GOOD_MODEL, [1.0, 0.0])).states == 3
    with pytest.raises(ValueError, match=r"initial_state_distrib has shape \(3,\); expected \[S\]"):
        softvi.from_gymnasium(_ModelEnv(GOOD_MODEL, [1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="initial_state_distrib is not a numeric array"):
        softvi.from_gymnasium(_ModelEnv(GOOD_MODEL, ["a", "b"]))


class _SealsModel:
    def __init__(self, reward):
        self.transition_matrix = np.full((2, 1, 2), 0.5)
        self.reward_matrix = reward
        self.initial_state_dist = np.array([1.0, 0.0])


def test_from_seals_malformed_reward_names_the_array():
    # A mismatched [S,A,S] reward was an einsum error; text was NumPy's float() error.
    with pytest.raises(ValueError, match=r"reward_matrix has shape \(2, 1, 3\)"):
        softvi.from_seals(_SealsModel(np.zeros((2, 1, 3))))
    with pytest.raises(ValueError, match="reward_matrix is not a numeric array"):
        softvi.from_seals(_SealsModel(np.array(["a", "b"])))
    assert softvi.from_seals(_SealsModel(np.ones((2, 1, 2)))).states == 2
