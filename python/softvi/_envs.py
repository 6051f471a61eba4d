"""Tabular worlds from other packages: gymnasium's toy-text envs and ``seals``' tabular envs."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from ._mdp import TabularMDP, _real

# Up to this many entries S*A*S a transition model is built dense (32 MiB of float64);
# above it, as a scipy.sparse matrix.
_DENSE_LIMIT = 1 << 22


def _discrete_n(space: Any, name: str) -> int | None:
    """``space.n`` of a ``Discrete`` space, or None when the env has no such space."""
    n = getattr(space, "n", None)
    if n is None:
        return None
    if getattr(space, "start", 0) != 0:
        raise ValueError(f"{name} is Discrete(n, start={space.start}); expected start = 0")
    return int(n)


def from_gymnasium(env: Any) -> TabularMDP:
    """A gymnasium env with a known model (``env.unwrapped.P``) as a :class:`TabularMDP`.

    Works for every env that exposes the toy-text model ``P[s][a] = [(prob, next_state,
    reward, terminated), ...]``: FrozenLake, CliffWalking, Taxi, and their variants.

    The MDP has ``S + 1`` states: the env's ``S`` states, then one absorbing sink (index
    ``mdp.sink == S``, terminal with value 0). A transition with ``terminated=True`` goes to
    the sink, whatever its ``next_state``: in Taxi the state a drop-off enters is also entered
    without termination, so termination is a property of the transition, not of a state. The
    reward is the expected reward ``r(s,a) = sum prob * reward`` ``[S+1, A]`` (0 at the sink);
    ``initial`` is the env's ``initial_state_distrib`` (0 at the sink; uniform over the env's
    states if it has none). Drop the sink from results with ``[..., :mdp.sink]`` (values) or
    ``[..., :mdp.sink, :]`` (policy, Q).

    Args:
        env: a gymnasium env (wrapped or not) whose ``unwrapped`` has ``P``.

    Returns:
        The MDP, with ``mdp.horizon`` the episode length ``env.spec.max_episode_steps`` (None
        when the env has no time limit: solve it with an infinite horizon then) and
        ``mdp.sink`` the sink's index. ``softvi.solve(mdp, alpha=0, gamma=1,
        horizon=mdp.horizon)`` gives ``V_0``, whose dot product with the start distribution
        is the best expected return of an episode.

    Raises:
        TypeError: the env has no model ``P``.
        ValueError: ``P`` is malformed (a state or action missing, a next state out of range,
            a row that is not a probability distribution).
    """
    inner = getattr(env, "unwrapped", env)
    model = getattr(inner, "P", None)
    if model is None:
        raise TypeError(
            f"{type(inner).__name__} has no model P (P[s][a] = [(prob, next_state, reward, "
            "terminated), ...]); from_gymnasium needs a toy-text style env"
        )
    states = _discrete_n(getattr(inner, "observation_space", None), "observation_space")
    if states is None:
        states = len(model)
    actions = _discrete_n(getattr(inner, "action_space", None), "action_space")
    if actions is None:
        actions = len(model[0])
    sink = states
    rows: list[int] = []
    cols: list[int] = []
    probs: list[float] = []
    reward = np.zeros((states + 1, actions))
    for s in range(states):
        try:
            per_action = model[s]
        except (KeyError, IndexError):
            raise ValueError(f"P has no entry for state {s} (of {states})") from None
        for a in range(actions):
            try:
                outcomes = per_action[a]
            except (KeyError, IndexError):
                raise ValueError(f"P[{s}] has no entry for action {a} (of {actions})") from None
            for k, outcome in enumerate(outcomes):
                try:
                    prob, nxt, r, terminated = outcome[:4]
                    prob, r = float(prob), float(r)
                    nxt = operator.index(nxt)
                except (TypeError, ValueError):
                    raise ValueError(
                        f"P[{s}][{a}][{k}] = {outcome!r} is not (prob, next_state, reward, "
                        "terminated) with a number, an integer state, a number and a bool"
                    ) from None
                if not 0 <= nxt < states:
                    raise ValueError(
                        f"P[{s}][{a}] goes to state {nxt}, outside the {states} states"
                    )
                rows.append(s * actions + a)
                cols.append(sink if terminated else nxt)
                probs.append(prob)
                reward[s, a] += prob * r
    for a in range(actions):  # the sink stays the sink
        rows.append(sink * actions + a)
        cols.append(sink)
        probs.append(1.0)
    n = states + 1
    if n * actions * n <= _DENSE_LIMIT:
        transitions: Any = np.zeros((n * actions, n))
        np.add.at(transitions, (np.asarray(rows), np.asarray(cols)), np.asarray(probs))
        transitions = transitions.reshape(n, actions, n)
    else:
        import scipy.sparse as sp  # only for big worlds

        transitions = sp.coo_matrix((probs, (rows, cols)), shape=(n * actions, n)).tocsr()
    start = getattr(inner, "initial_state_distrib", None)
    if start is None:
        start = np.full(states, 1.0 / states)
    start = _real("initial_state_distrib", start)
    if start.shape != (states,):
        raise ValueError(
            f"initial_state_distrib has shape {start.shape}; expected [S] = [{states}]"
        )
    initial = np.zeros(n)
    initial[:states] = start.astype(np.float64).reshape(states)
    terminal = np.zeros(n, dtype=bool)
    terminal[sink] = True
    mdp = TabularMDP(transitions, reward, terminal=terminal, initial=initial)
    spec = getattr(env, "spec", None) or getattr(inner, "spec", None)
    steps = getattr(spec, "max_episode_steps", None)
    mdp.horizon = None if steps is None else int(steps)
    mdp.sink = sink
    return mdp


def _seals_model(env: Any) -> Any:
    """The object holding a seals env's model: ``env`` itself or ``env.unwrapped``."""
    for candidate in (env, getattr(env, "unwrapped", None)):
        if candidate is not None and hasattr(candidate, "transition_matrix"):
            return candidate
    raise TypeError(
        f"{type(env).__name__} has no transition_matrix: expected a seals tabular env "
        "(seals.base_envs.BaseTabularModelPOMDP) or one wrapping it"
    )


def _expected_reward(reward: np.ndarray, transitions: np.ndarray) -> np.ndarray:
    """A seals reward ``[S]``, ``[S,A]`` or ``[S,A,S]`` as ``[S]`` or ``[S,A]``."""
    if reward.ndim == 3:
        return np.einsum("sak,sak->sa", transitions, reward)
    return reward


def from_seals(env: Any) -> TabularMDP:
    """A ``seals`` tabular env (``transition_matrix``, ``reward_matrix``) as a TabularMDP.

    Args:
        env: a ``seals.base_envs.BaseTabularModelPOMDP`` (e.g. ``CliffWorldEnv``,
            ``RandomTransitionEnv``), or a gymnasium env wrapping one
            (``gymnasium.make("seals/CliffWorld7x4-v0")``).

    Returns:
        The MDP: ``transition_matrix`` ``[S,A,S]``; ``reward_matrix`` ``r(s)`` ``[S]`` or
        ``r(s,a)`` ``[S,A]`` as given, ``r(s,a,s')`` ``[S,A,S]`` as its expectation
        ``[S,A]``; ``initial`` the env's ``initial_state_dist``; no terminal states (seals
        episodes end by the horizon only). ``mdp.horizon`` is the env's ``horizon`` (None
        for an infinite one); ``mdp.sink`` is None.

    Raises:
        TypeError: the env has no tabular model.
        ValueError: the model is malformed (the engine's message names the array and row).
    """
    model = _seals_model(env)
    transitions = _real("transition_matrix", model.transition_matrix).astype(np.float64)
    reward = _real("reward_matrix", model.reward_matrix).astype(np.float64)
    if reward.ndim == 3 and reward.shape != transitions.shape:
        raise ValueError(
            f"reward_matrix has shape {reward.shape}; a 3-D reward is r(s,a,s') shaped like "
            f"transition_matrix {transitions.shape}"
        )
    reward = _expected_reward(reward, transitions)
    mdp = TabularMDP(transitions, reward, initial=np.asarray(model.initial_state_dist))
    horizon = getattr(model, "horizon", None)
    mdp.horizon = None if horizon is None else int(horizon)
    return mdp
