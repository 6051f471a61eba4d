"""softvi.sample, softvi.goal_posterior and softvi.maxent_irl: against env.step rollouts, a
posterior written here in NumPy, and the CLI's `softvi irl` on the same files."""

from __future__ import annotations

import json
import warnings

import gymnasium as gym
import numpy as np
import pytest
from conftest import random_mdp, run_on
from scipy.special import logsumexp

import softvi


def test_sampled_state_frequencies_match_env_step_rollouts():
    # FrozenLake 8x8, slippery: softvi.sample of the MDP from_gymnasium against rollouts of
    # the same stationary policy through env.step. Frequencies of each state at each t are
    # binomial: with N episodes on each side the difference has standard deviation
    # sqrt(p (1 - p) (2 / N)); 5 of them (over ~1,000 cells tested) leaves a false alarm
    # chance near 1e-4, while a wrong transition or action order shifts whole rows.
    env = gym.make("FrozenLake-v1", map_name="8x8")
    mdp = softvi.from_gymnasium(env)
    solved = softvi.solve(mdp, alpha=0.3, gamma=0.97, device="cpu")
    pi = solved.policy[: env.unwrapped.observation_space.n].astype(np.float64)
    n, steps = 4000, 16
    drawn = softvi.sample(mdp, solved, episodes=n, steps=steps, seed=3)
    assert drawn.states.shape == (n, steps + 1) and drawn.actions.shape == (n, steps)
    rng = np.random.default_rng(5)
    rollouts = np.full((n, steps + 1), -1)
    for e in range(n):
        s, _ = env.reset(seed=int(rng.integers(2**31)))
        rollouts[e, 0] = s
        for t in range(steps):
            a = rng.choice(4, p=pi[s] / pi[s].sum())
            s, _, terminated, truncated, _ = env.step(a)
            rollouts[e, t + 1] = s
            if terminated or truncated:
                break
    # softvi's episodes pass through the sink (the terminated transition's target) and stop:
    # count real states only.
    real = env.unwrapped.observation_space.n
    checked = 0
    for t in range(steps + 1):
        at_t = drawn.states[:, t]
        ours = np.bincount(at_t[(at_t >= 0) & (at_t < real)], minlength=real) / n
        theirs = np.bincount(rollouts[:, t][rollouts[:, t] >= 0], minlength=real) / n
        p = (ours + theirs) / 2
        sd = np.sqrt(np.maximum(p * (1 - p), 1 / n) * 2 / n)
        worst = np.max(np.abs(ours - theirs) / sd)
        assert worst < 5, f"t={t}: state frequencies differ by {worst:.1f} sd"
        checked += np.count_nonzero(p)
    assert checked > 200
    # A step is taken (action >= 0) exactly when the episode goes on to a next state.
    assert np.array_equal(drawn.actions >= 0, drawn.states[:, 1:] >= 0)


def test_sample_shapes_seeds_and_errors():
    rng = np.random.default_rng(2)
    p = random_mdp(rng, 6, 3)
    mdp = softvi.TabularMDP(p, rng.normal(size=(4, 6, 3)))
    solved = softvi.solve(mdp, horizon=5, all_steps=True, device="cpu")
    assert solved.policy.shape == (4, 5, 6, 3)
    a = softvi.sample(mdp, solved, episodes=7, seed=9)
    assert a.states.shape == (4, 7, 6) and a.actions.shape == (4, 7, 5)
    b = softvi.sample(mdp, solved.policy, episodes=7, seed=9)
    assert np.array_equal(a.states, b.states) and np.array_equal(a.actions, b.actions)
    c = softvi.sample(mdp, solved.policy, episodes=7, seed=10)
    assert not np.array_equal(a.states, c.states)
    # Every drawn step has probability > 0 under P.
    s, acts, nxt = a.states[..., :-1], a.actions, a.states[..., 1:]
    assert np.all(p[s, acts, nxt] > 0)
    with pytest.raises(ValueError, match="longer than the horizon"):
        softvi.sample(mdp, solved, steps=6)
    with pytest.raises(ValueError, match=r"policy has shape \(6, 3\)"):
        softvi.sample(mdp, solved.policy[0, 0])
    with pytest.raises(ValueError, match="episodes must be an integer >= 1"):
        softvi.sample(mdp, solved, episodes=0)
    with pytest.raises(ValueError, match="holds no policy"):
        softvi.sample(mdp, softvi.solve(mdp, policy=False, device="cpu"))


def numpy_posterior(pi, p, states, actions, prior):
    """log p(z) + sum_t log pi_z(a_t|s_t), or with states only log sum_a pi_z(a|s_t)
    P(s_{t+1}|s_t,a), normalised after each step: ``[K+1, B]``."""
    log = [np.log(prior / prior.sum())]
    for k in range(len(states) - 1):
        s, s1 = states[k], states[k + 1]
        if actions is None:
            like = np.einsum("za,a->z", pi[:, s, :], p[s, :, s1])
        else:
            like = pi[:, s, actions[k]]
        with np.errstate(divide="ignore"):
            log.append(log[-1] + np.log(like))
    log = np.array(log)
    return np.exp(log - logsumexp(log, axis=1, keepdims=True))


@pytest.mark.parametrize("with_actions", [True, False])
def test_goal_posterior_equals_numpy(device, with_actions):
    rng = np.random.default_rng(21)
    s_n, a_n, b_n = 9, 3, 5
    p = random_mdp(rng, s_n, a_n, sparsity=0.5)
    mdp = softvi.TabularMDP(p, rng.normal(size=(b_n, s_n, a_n)) * 2)
    solved = softvi.solve(mdp, alpha=0.5, gamma=0.9, tol=1e-7, device="cpu")
    drawn = softvi.sample(mdp, solved, episodes=1, steps=12, seed=4)
    states, actions = drawn.states[2, 0], drawn.actions[2, 0]  # behaviour of task 2
    prior = np.array([1.0, 2.0, 3.0, 0.5, 1.5])
    got = run_on(
        device, softvi.goal_posterior, mdp, solved, states,
        actions if with_actions else None, prior=prior,
    )  # fmt: skip
    want = numpy_posterior(
        solved.policy.astype(np.float64), p, states, actions if with_actions else None, prior
    )
    assert got.posterior.shape == (13, b_n)
    # float32 posterior from float32 policies: 1e-5 absolute on probabilities (CPU twin in
    # f64 rounded once; the GPU sums 12 float32 logs, ~1e-6 each).
    np.testing.assert_allclose(got.posterior, want, atol=1e-5)
    assert (device == "cpu") == got.adapter.startswith("cpu reference")


def test_goal_posterior_errors():
    rng = np.random.default_rng(1)
    p = random_mdp(rng, 4, 2)
    p[0, 0] = [0, 1, 0, 0]  # from state 0, action 0 reaches state 1 only
    mdp = softvi.TabularMDP(p, rng.normal(size=(2, 4, 2)))
    solved = softvi.solve(mdp, device="cpu")
    with pytest.raises(ValueError, match=r"states\[1\] = 9 is outside 0..4"):
        softvi.goal_posterior(mdp, solved, [0, 9], device="cpu")
    with pytest.raises(ValueError, match=r"actions\[0\] = 2 is outside 0..2"):
        softvi.goal_posterior(mdp, solved, [0, 1], [2], device="cpu")
    with pytest.raises(ValueError, match="cannot move"):
        softvi.goal_posterior(mdp, solved, [0, 2], [0], device="cpu")
    with pytest.raises(ValueError, match="batched MDP"):
        softvi.goal_posterior(softvi.TabularMDP(p, np.zeros((4, 2))), solved, [0, 1])
    with pytest.raises(ValueError, match="prior"):
        softvi.goal_posterior(mdp, solved, [0, 1], prior=[0.0, 0.0], device="cpu")


def test_maxent_irl_equals_the_cli_and_matches_the_demos(tmp_path, device):
    # A 5 x 4 grid-like chain world with state features; demos from a known reward. The
    # Python call and `softvi irl` on the same files run the same code on the same backend:
    # theta equal to float32 rounding; and the learned model's feature expectations match
    # the demos' (the MaxEnt IRL optimality condition) to the gradient tolerance.
    rng = np.random.default_rng(8)
    s_n, a_n, k_n, horizon = 20, 4, 3, 8
    p = random_mdp(rng, s_n, a_n, sparsity=0.7)
    phi = rng.random((s_n, k_n)).astype(np.float32)
    true_reward = phi @ np.array([1.0, -2.0, 0.5])
    world = softvi.TabularMDP(p, np.zeros((s_n, a_n)))
    expert = softvi.TabularMDP(p, np.repeat(true_reward[:, None], a_n, 1))
    solved = softvi.solve(expert, horizon=horizon, all_steps=True, device="cpu")
    demos = softvi.sample(expert, solved, episodes=200, seed=1)
    learned = run_on(
        device, softvi.maxent_irl, world, phi, demos.states, demos.actions,
        learning_rate=0.1, iters=300, tol=2e-3,
    )  # fmt: skip
    assert learned.theta.shape == (k_n,) and learned.reward.shape == (s_n,)
    assert learned.converged, learned.history[-1]
    assert np.max(np.abs(learned.demo_features - learned.model_features)) < 2e-3
    lls = [h["log_likelihood"][0] for h in learned.history]
    assert lls[-1] > lls[0]
    world.save_npz(tmp_path / "world.npz")
    np.save(tmp_path / "phi.npy", phi)
    np.save(tmp_path / "demos.npy", demos.states)
    np.save(tmp_path / "acts.npy", demos.actions)
    code = softvi._softvi.cli_main(
        [
            "softvi", "irl", "--mdp", str(tmp_path / "world.npz"),
            "--features", str(tmp_path / "phi.npy"), "--demos", str(tmp_path / "demos.npy"),
            "--demo-actions", str(tmp_path / "acts.npy"), "--lr", "0.1", "--iters", "300",
            "--tol", "2e-3", "--backend", device, "--out", str(tmp_path / "irl"), "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    theta = np.load(tmp_path / "irl" / "theta.npy")
    np.testing.assert_allclose(learned.theta, theta.reshape(-1), rtol=1e-6, atol=1e-7)
    summary = json.loads((tmp_path / "irl" / "summary.json").read_text())
    assert summary["iterations"] == len(learned.history)


def test_maxent_irl_errors():
    rng = np.random.default_rng(3)
    p = random_mdp(rng, 5, 2)
    world = softvi.TabularMDP(p, np.zeros((5, 2)))
    phi = np.eye(5)
    states = np.array([[0, 1, 2]])
    with pytest.raises(ValueError, match=r"features has shape \(4, 5\)"):
        softvi.maxent_irl(world, phi[:4], states)
    with pytest.raises(ValueError, match="states must be integers"):
        softvi.maxent_irl(world, phi, states.astype(float))
    with pytest.raises(ValueError, match="alpha must be finite and > 0"):
        softvi.maxent_irl(world, phi, states, alpha=0.0, device="cpu")
    with pytest.raises(ValueError, match="horizon or discounted"):
        softvi.maxent_irl(world, phi, states, horizon=3, discounted=True)


def test_maxent_irl_says_when_it_did_not_converge(device):
    # Demos of a random 12-state world and one-hot features: 3 Adam steps cannot match the
    # demos' feature expectations to 1e-6, so the result is marked unconverged and a
    # RuntimeWarning names the largest gradient norm of the last iteration; a tol that the
    # first gradient already meets converges without a warning.
    rng = np.random.default_rng(11)
    p = random_mdp(rng, 12, 3)
    world = softvi.TabularMDP(p, np.zeros((12, 3)))
    expert = softvi.TabularMDP(p, rng.normal(size=(12, 3)))
    demos = softvi.sample(expert, softvi.solve(expert, horizon=6, device="cpu"), episodes=40)
    with pytest.warns(RuntimeWarning, match="maxent_irl did not converge") as caught:
        short = run_on(
            device, softvi.maxent_irl, world, np.eye(12), demos.states, iters=3, tol=1e-6
        )
    assert not short.converged and len(short.history) == 3
    worst = max(short.history[-1]["gradient_norm"])
    assert worst > 1e-6
    assert f"largest gradient norm is {worst:.3e}" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        done = run_on(device, softvi.maxent_irl, world, np.eye(12), demos.states, iters=3, tol=1e3)
    assert done.converged and len(done.history) == 1


def half_ring_mdp() -> softvi.TabularMDP:
    """The sparse-goal world of docs/qlearn-and-meta-rl.md as a TabularMDP: a 15 x 9 open grid,
    8-connected, start at (row 8, col 7), seven goals on a half ring of radius 6, reward 1 on
    reaching the goal."""
    h, w = 9, 15
    moves = [(-1, 0), (0, 1), (1, 0), (0, -1), (-1, 1), (1, 1), (1, -1), (-1, -1)]
    p = np.zeros((h * w, 8, h * w))
    for r in range(h):
        for c in range(w):
            for a, (dr, dc) in enumerate(moves):
                rr, cc = r + dr, c + dc
                inside = 0 <= rr < h and 0 <= cc < w
                p[r * w + c, a, rr * w + cc if inside else r * w + c] = 1.0
    goals = [(8, 13), (5, 12), (3, 10), (2, 7), (3, 4), (5, 2), (8, 1)]
    terminal = np.zeros((7, h * w), bool)
    for z, (r, c) in enumerate(goals):
        terminal[z, r * w + c] = True
    initial = np.zeros(h * w)
    initial[8 * w + 7] = 1.0
    return softvi.TabularMDP(
        p, np.zeros((7, h * w)), terminal=terminal, terminal_value=terminal * 1.0, initial=initial
    )


def test_meta_rl_reaches_the_oracle(device):
    # The same world and settings as the `softvi meta` run of docs/qlearn-and-meta-rl.md
    # (7 x 30 runs): posterior sampling climbs from the prior-only level to the oracle's, on
    # either device.
    mdp = half_ring_mdp()
    solved = softvi.solve(mdp, alpha=0.01, gamma=0.9, tol=1e-6, device="cpu")
    report = run_on(device, softvi.meta_rl, mdp, solved, steps=15, episodes=10, trials=30)
    assert report.runs == 210
    ps, oracle = report.posterior_sampling.mean, report.oracle.mean
    assert np.all(oracle > 0.99)
    assert ps[0] < 0.3 and ps[-1] >= 0.9 * oracle[-1]
    assert np.all(report.prior_only.mean < 0.3)
    assert report.mass_on_true_task.mean[-1] > 0.95
    with pytest.raises(ValueError, match="outside the batch"):
        softvi.meta_rl(mdp, solved, eval_tasks=[7], device="cpu")
    with pytest.raises(ValueError, match="batched MDP"):
        softvi.meta_rl(softvi.TabularMDP(np.eye(3)[:, None, :], np.zeros(3)), np.ones((3, 1)))


def test_qlearn_equals_soft_vi_on_the_empirical_mdp(device):
    # 600 noisy transitions of a random 6-state MDP with pair (0, 1) never tried: the learned
    # Q is soft VI on the empirical MDP (counts, mean rewards) written here in NumPy, with
    # the unseen pair left out of the soft max (NaN in q, 0 in the policy). float32 outputs:
    # 1e-5 relative on the CPU reference, 1e-4 on the GPU.
    rng = np.random.default_rng(4)
    s_n, a_n, n = 6, 3, 600
    p = random_mdp(rng, s_n, a_n)
    reward = rng.normal(size=(s_n, a_n))
    s, a = rng.integers(0, s_n, n), rng.integers(0, a_n, n)
    a[(s == 0) & (a == 1)] = 2
    s_next = np.array([rng.choice(s_n, p=p[i, j]) for i, j in zip(s, a, strict=True)])
    r = reward[s, a] + rng.normal(scale=0.1, size=n)
    learned = run_on(
        device, softvi.qlearn, s, a, r, s_next, states=s_n, actions=a_n, alpha=0.5, gamma=0.9,
        tol=1e-9,
    )  # fmt: skip
    counts = np.zeros((s_n, a_n, s_n))
    np.add.at(counts, (s, a, s_next), 1.0)
    seen = counts.sum(axis=2)
    sums = np.zeros((s_n, a_n))
    np.add.at(sums, (s, a), r)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_hat = counts / seen[..., None]
        r_hat = sums / seen
    v = np.zeros(s_n)
    for _ in range(3000):
        q = np.where(seen > 0, r_hat + 0.9 * np.nan_to_num(p_hat) @ v, -np.inf)
        v = 0.5 * logsumexp(q / 0.5, axis=1)
    rtol = 1e-5 if device == "cpu" else 1e-4
    assert learned.unseen_pairs == [1] and learned.samples == [n]
    assert np.isnan(learned.q[0, 1]) and learned.policy[0, 1] == 0.0
    mask = seen > 0
    np.testing.assert_allclose(
        learned.q[mask], q[mask], rtol=rtol, atol=rtol * np.abs(q[mask]).max()
    )
    np.testing.assert_allclose(learned.values, v, rtol=rtol, atol=rtol * np.abs(v).max())
    with pytest.raises(ValueError, match=r"s\[\d+\] = 9"):
        softvi.qlearn(np.r_[s[:-1], 9], a, r, s_next, states=s_n, actions=a_n, device="cpu")
