"""Hypothesis properties over the public Python API (bounded: a fixed number of derandomised
examples per property, so CI stays short and a failure reproduces): arrays of every dtype,
shape, stride, byte order and special value into every public function raise only
ValueError, TypeError or MemoryError (never another exception, never an interpreter crash),
and a failed save writes nothing."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_mdp

import softvi

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

#: What a bad input may raise.
REFUSALS = (ValueError, TypeError, MemoryError)
BOUNDED = settings(max_examples=60, deadline=None, derandomize=True)

DTYPES = st.sampled_from(["?", "i1", "<i8", ">i4", "<u8", "<f2", "<f4", ">f8", "<c8", "<U2", "|S1"])
SPECIAL = [0, 1, -1, 0.5, 2**63, np.nan, np.inf, -np.inf, 1e39, 1e-46]


@st.composite
def arrays(draw, max_dims: int = 4, max_side: int = 5) -> np.ndarray:
    """An array of any of DTYPES and shape, filled with small numbers and special values,
    sometimes a strided or reversed view."""
    dtype = np.dtype(draw(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=max_side))
    values = draw(st.lists(st.sampled_from(SPECIAL + [3, 4]), min_size=1, max_size=8))
    flat = np.resize(np.array(values, dtype=object), int(np.prod(shape)))
    with np.errstate(all="ignore"):
        try:
            a = np.array(flat.tolist(), dtype=dtype).reshape(shape)
        except (ValueError, OverflowError, TypeError):
            a = np.zeros(shape, dtype=dtype)
    view = draw(st.sampled_from(["plain", "reversed", "fortran"]))
    if view == "reversed" and a.ndim:
        a = a[::-1]
    elif view == "fortran":
        a = np.asfortranarray(a)
    return a


RNG = np.random.default_rng(7)
WORLD = softvi.TabularMDP(random_mdp(RNG, 4, 3), RNG.normal(size=(2, 4)))
SOLVED = softvi.solve(WORLD, gamma=0.9)


def refused_or_done(call) -> None:
    """Runs ``call``: it returns, or raises one of REFUSALS."""
    try:
        call()
    except REFUSALS:
        pass


@BOUNDED
@given(arrays(), arrays())
def test_tabular_mdp_takes_any_array(p, r):
    refused_or_done(lambda: softvi.TabularMDP(p, r))
    refused_or_done(lambda: softvi.TabularMDP(random_mdp(RNG, 4, 3), np.zeros(4), terminal=p))
    refused_or_done(lambda: softvi.TabularMDP(random_mdp(RNG, 4, 3), np.zeros(4), initial=r))


@BOUNDED
@given(arrays(max_dims=3))
def test_grid_takes_any_array(free):
    refused_or_done(lambda: softvi.Grid(free))


@BOUNDED
@given(arrays(max_dims=3), arrays(max_dims=2))
def test_analysis_functions_take_any_array(policy, states):
    refused_or_done(lambda: softvi.sample(WORLD, policy, episodes=2, steps=3))
    refused_or_done(lambda: softvi.goal_posterior(WORLD, policy, states, device="cpu"))
    refused_or_done(lambda: softvi.goal_posterior(WORLD, SOLVED, states, device="cpu"))
    refused_or_done(
        lambda: softvi.maxent_irl(WORLD, np.eye(4), states, iters=2, horizon=3, device="cpu")
    )


@BOUNDED
@given(arrays(max_dims=2), arrays(max_dims=2), st.sampled_from([1, 4, 3.5, -1, 2**40]))
def test_qlearn_takes_any_array(s, r, states):
    refused_or_done(lambda: softvi.qlearn(s, s, r, s, states=states, actions=2, device="cpu"))


@BOUNDED
@given(st.sampled_from([0, 1.5, -1, 2**33, 2**64, "3", None]))
def test_counts_take_any_value(x):
    refused_or_done(lambda: softvi.sample(WORLD, SOLVED, episodes=x, steps=2))
    refused_or_done(lambda: softvi.sample(WORLD, SOLVED, episodes=1, steps=2, seed=x))
    refused_or_done(
        lambda: softvi.meta_rl(WORLD, SOLVED, episodes=1, steps=2, trials=x, device="cpu")
    )
    refused_or_done(lambda: softvi.Grid.maze(x, 9))


def test_a_failed_save_writes_nothing(tmp_path):
    target = tmp_path / "missing" / "m.npz"
    with pytest.raises(OSError):
        WORLD.save_npz(target)
    assert not (tmp_path / "missing").exists()
    assert list(tmp_path.iterdir()) == []
