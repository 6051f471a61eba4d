"""What comes after a solve, as the CLI's ``sample``, ``infer`` and ``irl`` commands do it.

Trajectories drawn from a soft-optimal policy, the posterior over tasks given a trajectory,
and MaxEnt IRL.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import _softvi
from ._mdp import TabularMDP, _check_mdp, _float64, _integer, _integers, _real
from ._solve import Backup, Device, SolveResult, _device, _settings

#: Marks "after the episode's end" in sampled and demonstrated states and actions.
ENDED = -1


def _policy(mdp: TabularMDP, policy: ArrayLike | SolveResult) -> tuple[np.ndarray, int]:
    """``policy`` (an array or a :class:`SolveResult`'s) as the engine takes it.

    Returns float32 ``[B,T,S,A]`` flattened to ``[B*T*S*A]`` and its step count T (1:
    stationary).
    """
    if isinstance(policy, SolveResult):
        if policy.policy is None:
            raise ValueError("the SolveResult holds no policy: solve with policy=True")
        policy = policy.policy
    pi = np.ascontiguousarray(_real("policy", policy), dtype=np.float32)
    s, a, b = mdp.states, mdp.actions, mdp.tasks
    lead = 1 if mdp.batched else 0  # the B axis, present iff the MDP's reward had one
    if pi.ndim not in (lead + 2, lead + 3) or pi.shape[-2:] != (s, a):
        want = "[B,S,A] or [B,T,S,A]" if mdp.batched else "[S,A] or [T,S,A]"
        raise ValueError(f"policy has shape {pi.shape}; expected {want} with S={s}, A={a}")
    if mdp.batched and pi.shape[0] != b:
        raise ValueError(f"policy has {pi.shape[0]} tasks; the MDP has {b}")
    steps = pi.shape[lead] if pi.ndim == lead + 3 else 1
    return pi.reshape(-1), steps


@dataclass
class Trajectories:
    """Sampled episodes.

    ``states`` ``int32 [B, N, T+1]`` and ``actions`` ``int32 [B, N, T]`` (no B axis unless
    the MDP's reward had one); :data:`ENDED` (-1) after the state where an episode stopped (a
    terminal state, or one without a policy).
    """

    states: np.ndarray
    actions: np.ndarray


def sample(
    mdp: TabularMDP,
    policy: ArrayLike | SolveResult,
    *,
    episodes: int = 100,
    steps: int | None = None,
    seed: int = 0,
) -> Trajectories:
    """Draws ``episodes`` trajectories per task.

    ``s_0 ~ initial``, ``a_t ~ pi_t(.|s_t)``, ``s_{t+1} ~ P(.|s_t, a_t)``, stopping at
    terminal states.

    Args:
        mdp: the MDP (its ``initial`` is the start distribution).
        policy: ``pi(a|s)`` ``[S,A]`` (stationary) or ``pi_t`` ``[T,S,A]`` (with a B axis
            first iff the MDP is batched), or a :class:`SolveResult` with a policy (solve with
            ``all_steps=True`` for the time-varying policy of a finite horizon).
        episodes: episodes per task N.
        steps: steps per episode T (default: the policy's T, else 100); at most the policy's T.
        seed: seed of the draws; each (task, episode) has its own stream, so results do not
            depend on the batch.

    Returns:
        :class:`Trajectories`.

    Raises:
        ValueError: a shape that does not match the MDP, ``steps`` past the policy's horizon.
        MemoryError: the samples would not fit in this machine's memory.
    """
    _check_mdp(mdp)
    pi, policy_steps = _policy(mdp, policy)
    if steps is None:
        steps = policy_steps if policy_steps > 1 else 100
    states, actions = _softvi.sample(
        mdp._mdp,
        pi,
        policy_steps,
        _integer("episodes", episodes, 1),
        _integer("steps", steps, 1),
        _integer("seed", seed, 0),
    )
    if not mdp.batched:
        states, actions = states[0], actions[0]
    return Trajectories(states=states, actions=actions)


@dataclass
class Posterior:
    """The posterior over the B tasks of a batch after each observed step.

    ``posterior`` ``float32 [K+1, B]``: row 0 the prior, row k after k steps; ``log_joint``
    the unnormalised ``log p(z) + sum_{j<k} log p(step_j | z)`` it normalises (-1e30 where a
    task is ruled out); ``adapter`` where the kernel ran.
    """

    posterior: np.ndarray
    log_joint: np.ndarray
    adapter: str


def goal_posterior(
    mdp: TabularMDP,
    policy: ArrayLike | SolveResult,
    states: ArrayLike,
    actions: ArrayLike | None = None,
    *,
    prior: ArrayLike | None = None,
    device: Device = "auto",
) -> Posterior:
    """Exact inference of the task behind one trajectory.

    Each task z of the batch is a hypothesis whose soft-optimal policy is the likelihood of
    the behaviour,
    ``log p(z | tau) = log p(z) + sum_t log pi_z(a_t|s_t) + const``, or without actions
    ``p(s_{t+1}|s_t, z) = sum_a pi_z(a|s_t) P(s_{t+1}|s_t,a)``.

    Args:
        mdp: a batched MDP (one task per hypothesis).
        policy: the tasks' policies ``[B,S,A]`` or ``[B,T,S,A]``, or a :class:`SolveResult`.
        states: the visited states ``[K+1]`` (or ``[K]`` with K actions).
        actions: the actions taken ``[K]`` (or ``[K+1]``, the last ignored), or None to
            infer from the states alone.
        prior: ``p(z)`` ``[B]``, non-negative, not all 0 (default uniform).
        device: as in :func:`softvi.solve`; the posterior kernel runs there.

    Returns:
        :class:`Posterior`.

    Raises:
        ValueError: a state or action out of range, a step no action can make, or a trajectory
            impossible under every task (the message names the step).
    """
    _check_mdp(mdp)
    if not mdp.batched:
        raise ValueError("goal_posterior needs a batched MDP: one task (reward) per hypothesis")
    pi, policy_steps = _policy(mdp, policy)
    s = np.asarray(states).reshape(-1)
    if s.size == 0:
        raise ValueError("states is empty")
    if not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"states must be integers, got dtype {s.dtype}")
    bad = np.flatnonzero((s < 0) | (s >= mdp.states))
    if bad.size:
        raise ValueError(f"states[{bad[0]}] = {s[bad[0]]} is outside 0..{mdp.states}")
    a_list = None
    if actions is not None:
        a = np.asarray(actions).reshape(-1)
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"actions must be integers, got dtype {a.dtype}")
        if a.size not in (s.size, s.size - 1):
            raise ValueError(
                f"actions has {a.size} entries; expected one per step: {s.size - 1} (or {s.size})"
            )
        bad = np.flatnonzero((a < 0) | (a >= mdp.actions))
        if bad.size:
            raise ValueError(f"actions[{bad[0]}] = {a[bad[0]]} is outside 0..{mdp.actions}")
        a_list = [int(x) for x in a]
    if prior is None:
        p = [1.0] * mdp.tasks
    else:
        p = [float(x) for x in np.asarray(prior, dtype=np.float64).reshape(-1)]
    kind, adapter = _device(device)
    posterior, joint, label = _softvi.goal_posterior(
        mdp._mdp, pi, policy_steps, [int(x) for x in s], a_list, p, device=kind, adapter=adapter
    )
    return Posterior(posterior=posterior, log_joint=joint, adapter=label)


@dataclass
class IrlResult:
    """What :func:`maxent_irl` learned.

    ``theta`` ``[M, K]`` (``[K]`` for one demo set given as ``[N, T+1]``), ``reward`` the
    learned ``theta . phi(s)`` ``[M, S]`` (``[S]``); ``history`` one dict per iteration with
    each set's mean demo ``log_likelihood``, ``gradient_norm`` and the ``solve_seconds``;
    ``converged`` whether every gradient norm reached ``tol``; ``demo_features`` and
    ``model_features`` the feature expectations ``[M, K]``; ``adapter`` where it ran.
    """

    theta: np.ndarray
    reward: np.ndarray
    history: list[dict[str, Any]]
    converged: bool
    demo_features: np.ndarray
    model_features: np.ndarray
    adapter: str


def _demo_array(name: str, x: ArrayLike, ndim: int) -> np.ndarray:
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be integers (-1 after an episode's end), got {a.dtype}")
    if a.ndim == ndim - 1:
        a = a[None]
    if a.ndim != ndim:
        raise ValueError(f"{name} has {a.ndim} axes; expected {ndim - 1} or {ndim}")
    if np.any(a > np.iinfo(np.int32).max):
        raise ValueError(f"{name} holds a value past int32")
    # An episode ends at its first -1: a valid entry after it would be silently cut off.
    ended = np.maximum.accumulate(a == -1, axis=-1)
    resumed = ended & (a != -1)
    if np.any(resumed):
        where = tuple(int(i) for i in np.argwhere(resumed)[0])
        raise ValueError(
            f"{name}{list(where)} = {a[where]} follows a -1 in its episode: -1 marks the end of "
            "an episode, after which every entry is -1"
        )
    return np.ascontiguousarray(a, dtype=np.int32)


def maxent_irl(
    mdp: TabularMDP,
    features: ArrayLike,
    states: ArrayLike,
    actions: ArrayLike | None = None,
    *,
    alpha: float = 1.0,
    gamma: float = 1.0,
    backup: Backup = "expected",
    horizon: int | None = None,
    discounted: bool = False,
    solve_tol: float = 1e-6,
    learning_rate: float = 0.05,
    iters: int = 200,
    tol: float = 1e-3,
    device: Device = "auto",
) -> IrlResult:
    """Maximum-entropy IRL: a reward ``theta . phi(s)`` per demo set.

    For each demo set, the reward ``r(s,a) + theta . phi(s)`` (on top of the MDP's own
    reward) whose soft-optimal policy makes the demos likeliest, by Adam ascent
    on the log-likelihood from theta = 0; the gradient is ``mu_demo - mu_model`` (feature
    expectations of the demos and of the model's occupancy).

    Args:
        mdp: the world (one task, or one per demo set).
        features: ``phi(s)`` ``[S, K]``.
        states: demonstrated states ``[M, N, T+1]`` (M sets of N episodes) or ``[N, T+1]``,
            -1 after an episode's end (as :func:`sample` returns them).
        actions: the demos' actions ``[M, N, T]`` / ``[N, T]``, or None (the likelihood of the
            state sequence).
        alpha: the demonstrator's temperature, > 0.
        gamma: discount in [0, 1].
        backup: ``"expected"`` or ``"optimistic"``.
        horizon: each solve's horizon (default: the demo length T).
        discounted: infinite-horizon IRL with ``gamma < 1`` instead of a finite horizon.
        solve_tol: with ``discounted``, each solve's residual tolerance.
        learning_rate: Adam step size.
        iters: most gradient steps.
        tol: stop once every set's gradient norm is at most this.
        device: as in :func:`softvi.solve`.

    Returns:
        :class:`IrlResult`; when ``iters`` ran out before every gradient norm reached ``tol``,
        its ``converged`` is False and a ``RuntimeWarning`` says so, naming the largest norm.

    Raises:
        ValueError: shapes that do not match, a demo step the MDP cannot make, a setting out
            of range.
    """
    _check_mdp(mdp)
    # Checked here so that messages name these arguments (the engine's name the CLI's flags).
    for name, value, ok, rule in (
        ("alpha", alpha, lambda x: x > 0, "> 0 (the demos' likelihood is the soft policy's)"),
        ("learning_rate", learning_rate, lambda x: x > 0, "> 0"),
        ("tol", tol, lambda x: x >= 0, ">= 0"),
        ("solve_tol", solve_tol, lambda x: x > 0, "> 0"),
    ):
        if not (np.isfinite(value) and ok(value)):
            raise ValueError(f"{name} must be finite and {rule}, got {value}")
    one_set = np.ndim(states) == 2
    s = _demo_array("states", states, 3)
    a = None if actions is None else _demo_array("actions", actions, 3)
    phi = np.ascontiguousarray(features, dtype=np.float32)
    if phi.ndim != 2 or phi.shape[0] != mdp.states:
        raise ValueError(f"features has shape {phi.shape}; expected [S, K] with S={mdp.states}")
    if discounted and horizon is not None:
        raise ValueError("give horizon or discounted=True, not both")
    if not discounted and horizon is None:
        horizon = s.shape[2] - 1
    settings = _settings(
        alpha, gamma, backup, None if discounted else horizon, solve_tol, 100_000, True,
        True, False, False, True, device,
    )  # fmt: skip
    raw = _softvi.maxent_irl(
        mdp._mdp, phi, s, a, settings,
        learning_rate=float(learning_rate), iters=_integer("iters", iters, 1), tol=float(tol),
    )  # fmt: skip
    theta = raw["theta"]
    reward = theta.astype(np.float64) @ phi.T.astype(np.float64)
    pick = (lambda x: x[0]) if one_set else (lambda x: x)
    if not raw["converged"]:
        norms = list(raw["history"][-1]["gradient_norm"])
        worst = int(np.argmax(norms))
        warnings.warn(
            f"maxent_irl did not converge: after {len(raw['history'])} iterations (iters) the "
            f"largest gradient norm is {norms[worst]:.3e} (demo set {worst}), above tol "
            f"{tol:g}; theta is not yet the maximum-likelihood reward (raise iters or "
            "learning_rate; IrlResult.converged is False)",
            RuntimeWarning,
            stacklevel=2,
        )
    return IrlResult(
        theta=pick(theta),
        reward=pick(reward),
        history=list(raw["history"]),
        converged=bool(raw["converged"]),
        demo_features=pick(raw["demo_features"]),
        model_features=pick(raw["model_features"]),
        adapter=raw["adapter"],
    )


@dataclass
class MetaCurve:
    """A quantity per episode index over the runs: ``mean`` and ``standard_error``, ``[K]``."""

    mean: np.ndarray
    standard_error: np.ndarray


@dataclass
class MetaReport:
    """What :func:`meta_rl` measured, per episode index.

    ``posterior_sampling``, ``oracle`` and ``prior_only``: each agent's undiscounted return
    (the true task's rewards plus the terminal value where the episode ended);
    ``mass_on_true_task``: posterior sampling's posterior mass on the true task after each
    episode; ``runs`` true tasks x trials; ``adapter`` where the posteriors were updated.
    """

    posterior_sampling: MetaCurve
    oracle: MetaCurve
    prior_only: MetaCurve
    mass_on_true_task: MetaCurve
    runs: int
    adapter: str


def meta_rl(
    mdp: TabularMDP,
    policy: ArrayLike | SolveResult,
    *,
    episodes: int = 10,
    steps: int | None = None,
    trials: int = 20,
    seed: int = 0,
    eval_tasks: list[int] | None = None,
    prior: ArrayLike | None = None,
    reward_noise: float | None = None,
    device: Device = "auto",
) -> MetaReport:
    """Meta-RL as inference over a latent task, as ``softvi meta`` runs it.

    For each true task z* (``eval_tasks``, default all) and each of ``trials`` trials, three
    agents play ``episodes`` episodes of at most ``steps`` steps in the world of z*: posterior
    sampling (z drawn from the exact posterior over the batch given the rewards and
    terminations seen so far, before each episode, then ``pi_z`` for the episode), an oracle
    acting with ``pi_{z*}``, and a prior-only agent that draws z from the prior every
    episode. The posteriors of all runs are updated after each episode on ``device``.

    Args:
        mdp: a batched MDP: one task per hypothesis z.
        policy: the tasks' policies ``[B,S,A]`` or ``[B,T,S,A]``, or a :class:`SolveResult`.
        episodes: episodes K per trial.
        steps: steps T per episode at most (default: the policy's T, else 100).
        trials: trials M per true task.
        seed: seed of every draw.
        eval_tasks: the true tasks evaluated (default: every task).
        prior: ``p(z)`` ``[B]`` (default uniform).
        reward_noise: None: rewards observed exactly (a task inconsistent with an observation
            is ruled out); else the standard deviation of Gaussian reward noise.
        device: as in :func:`softvi.solve`: where the posterior updates run.

    Returns:
        :class:`MetaReport`.

    Raises:
        ValueError: an evaluated task outside the batch, a bad prior or noise, zero episodes.
    """
    _check_mdp(mdp)
    if not mdp.batched:
        raise ValueError("meta_rl needs a batched MDP: one task (reward) per hypothesis")
    pi, policy_steps = _policy(mdp, policy)
    if steps is None:
        steps = policy_steps if policy_steps > 1 else 100
    episodes, steps, trials = (
        _integer("episodes", episodes, 1),
        _integer("steps", steps, 1),
        _integer("trials", trials, 1),
    )
    tasks = (
        list(range(mdp.tasks))
        if eval_tasks is None
        else [int(z) for z in _integers("eval_tasks", eval_tasks).reshape(-1)]
    )
    if any(z < 0 for z in tasks):
        raise ValueError(f"eval_tasks must be task indices >= 0, got {min(tasks)}")
    p = [1.0] * mdp.tasks if prior is None else [float(x) for x in np.ravel(prior)]
    kind, adapter = _device(device)
    raw = _softvi.meta_rl(
        mdp._mdp, pi, policy_steps,
        episodes=int(episodes), steps=int(steps), trials=int(trials),
        seed=_integer("seed", seed, 0),
        eval_tasks=tasks, prior=p,
        reward_noise=None if reward_noise is None else float(reward_noise),
        device=kind, adapter=adapter,
    )  # fmt: skip

    def curve(name: str) -> MetaCurve:
        return MetaCurve(raw[name]["mean"], raw[name]["standard_error"])

    return MetaReport(
        posterior_sampling=curve("posterior_sampling"),
        oracle=curve("oracle"),
        prior_only=curve("prior_only"),
        mass_on_true_task=curve("mass_on_true_task"),
        runs=int(raw["runs"]),
        adapter=raw["adapter"],
    )


@dataclass
class LearnedQ:
    """What :func:`qlearn` learned, with a B axis iff the arrays had one.

    ``q`` ``[B, S, A]`` (NaN on pairs the data never shows), ``values`` ``[B, S]`` (NaN on
    states without data), ``policy`` ``[B, S, A]`` (0 on unseen pairs, NaN rows on states
    without data); per dataset ``samples``, ``unseen_pairs``, ``states_without_data``; the
    solve's ``sweeps``, ``residual``, ``status`` (one solve for the batch), ``adapter``,
    ``seconds``.
    """

    q: np.ndarray
    values: np.ndarray
    policy: np.ndarray
    samples: list[int]
    unseen_pairs: list[int]
    states_without_data: list[int]
    sweeps: int
    residual: float
    status: str
    adapter: str
    seconds: float


def qlearn(
    s: ArrayLike,
    a: ArrayLike,
    r: ArrayLike,
    s_next: ArrayLike,
    done: ArrayLike | None = None,
    *,
    states: int,
    actions: int,
    alpha: float = 1.0,
    gamma: float = 0.99,
    backup: Backup = "expected",
    horizon: int | None = None,
    tol: float = 1e-4,
    max_iters: int = 100_000,
    device: Device = "auto",
) -> LearnedQ:
    """Soft Q-learning from a fixed dataset of transitions, as ``softvi qlearn`` runs it.

    Fitted soft Q iteration regresses ``Q(s,a)`` onto ``y = r + gamma (1 - done) alpha log
    sum_a' exp(Q(s',a') / alpha)``; for a tabular Q its exact minimiser is the mean target
    over the samples of ``(s,a)``, so the fixed point is soft value iteration on the
    empirical MDP (counts ``N(s,a,s') / N(s,a)``, mean rewards, done transitions into an
    absorbing state of value 0), which is how it is computed. Pairs the data never shows are
    left out of the soft max (their Q is unknown, not 0).

    Args:
        s: states ``[N]``, or ``[B, N]`` for B datasets learned as one batch; -1 marks an
            empty entry (padding).
        a: actions, shaped as ``s``.
        r: rewards, shaped as ``s``.
        s_next: next states, shaped as ``s``.
        done: 0/1 per transition (default all 0).
        states: S.
        actions: A.
        alpha: temperature >= 0 (0: hard fitted Q iteration, Q-learning's max).
        gamma: discount in [0, 1].
        backup: ``"expected"`` or ``"optimistic"``.
        horizon: a finite horizon T, or None to iterate to ``tol``.
        tol: infinite horizon: residual tolerance.
        max_iters: infinite horizon: most backups.
        device: as in :func:`softvi.solve`.

    Returns:
        :class:`LearnedQ`.

    Raises:
        ValueError: a bad entry (the message names the array and the index), a shape
            mismatch, a setting out of range.
    """
    arrays = {"s": s, "a": a, "r": r, "s_next": s_next}
    if done is not None:
        arrays["done"] = done
    converted = {name: _float64(name, x) for name, x in arrays.items()}
    batched = converted["s"].ndim == 2
    settings = _settings(
        alpha, gamma, backup, horizon, tol, max_iters, True, True, True, False, False, device
    )
    raw = _softvi.qlearn(
        converted, _integer("states", states, 1), _integer("actions", actions, 1), settings
    )
    pick = (lambda x: x) if batched else (lambda x: x[0])
    return LearnedQ(
        q=pick(raw["q"]),
        values=pick(raw["values"]),
        policy=pick(raw["policy"]),
        samples=list(raw["samples"]),
        unseen_pairs=list(raw["unseen_pairs"]),
        states_without_data=list(raw["states_without_data"]),
        sweeps=int(raw["sweeps"]),
        residual=float(raw["residual"]),
        status=str(raw["status"]),
        adapter=raw["adapter"],
        seconds=float(raw["seconds"]),
    )
