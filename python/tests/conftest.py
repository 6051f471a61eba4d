"""Shared fixtures: the devices to run on, and a reference soft value iteration in NumPy.

GPU tests run on whatever adapter wgpu finds. Without one they are skipped, unless
``SOFTVI_REQUIRE_GPU=1`` (as ``.ci/run`` sets it): then a missing adapter fails them.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy.special import logsumexp

import softvi

REQUIRE_GPU = os.environ.get("SOFTVI_REQUIRE_GPU") == "1"


def run_on(device: str, fn, *args, **kwargs):
    """Calls ``fn(*args, device=device, **kwargs)``; a missing adapter skips a GPU test unless
    ``SOFTVI_REQUIRE_GPU=1``, where it fails."""
    try:
        return fn(*args, device=device, **kwargs)
    except softvi.DeviceError as e:
        if device == "gpu" and not REQUIRE_GPU:
            pytest.skip(f"no GPU adapter (set SOFTVI_REQUIRE_GPU=1 to fail instead): {e}")
        raise


@pytest.fixture(params=["cpu", "gpu"])
def device(request) -> str:
    """Each test runs on the f64 CPU reference and on the first wgpu adapter."""
    return request.param


def tolerance(device: str) -> float:
    """Relative tolerance of a TabularMDP result against the NumPy reference.

    The CPU reference computes in f64 on the model's float64 entries as given and returns
    float64: it agrees with a float64 recurrence on the same inputs to rounding (1e-10 leaves
    room for the different summation orders over a few hundred steps). A GPU computes in
    float32 on the model rounded to float32 once at upload (1e-4, against a recurrence on
    those rounded inputs: :func:`as_engine_reads`).
    """
    return 1e-10 if device == "cpu" else 1e-4


def assert_close(got, want, rtol: float, what: str = "") -> None:
    """``got`` equals ``want`` within ``rtol`` relative to the largest magnitude of ``want``
    (entries near 0 are held to the scale of the whole array, not to their own)."""
    want = np.asarray(want, dtype=np.float64)
    scale = max(float(np.nanmax(np.abs(want))), 1e-30)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=what)


def random_mdp(rng, states: int, actions: int, sparsity: float = 0.0):
    """Dense ``P [S,A,S]`` with every row a distribution (``sparsity`` of entries zeroed)."""
    p = rng.random((states, actions, states))
    if sparsity:
        p[rng.random(p.shape) < sparsity] = 0.0
        p[..., 0] += 1e-3  # no empty row
    return p / p.sum(axis=2, keepdims=True)


def as_engine_reads(x, device: str) -> np.ndarray:
    """``x`` as ``device`` reads it, in float64: as given on the CPU reference, rounded to
    float32 (as a GPU uploads it) elsewhere."""
    if device == "cpu":
        return np.asarray(x, dtype=np.float64)
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def soft_vi_fh(p, r, horizon: int, gamma: float, alpha: float = 1.0, backup="expected"):
    """Finite-horizon soft value iteration, imitation's ``mce_partition_fh`` generalised to
    a temperature and the optimistic backup.

    ``V_T = 0``; ``Q_t = r + gamma P V_{t+1}``; ``V_t = alpha log sum_a exp(Q_t / alpha)``;
    ``pi_t = exp((Q_t - V_t) / alpha)``. ``p`` ``[S,A,S]``, ``r`` ``[S,A]``.
    Returns V ``[T+1,S]``, Q ``[T,S,A]``, pi ``[T,S,A]``.
    """
    s_n, a_n, _ = p.shape
    v = np.zeros((horizon + 1, s_n))
    q = np.zeros((horizon, s_n, a_n))
    for t in reversed(range(horizon)):
        if backup == "expected":
            q[t] = r + gamma * p @ v[t + 1]
        else:
            with np.errstate(divide="ignore"):
                q[t] = r + alpha * logsumexp(gamma * v[t + 1] / alpha, b=p, axis=2)
        v[t] = alpha * logsumexp(q[t] / alpha, axis=1)
    pi = np.exp((q - v[:-1, :, None]) / alpha)
    return v, q, pi


def occupancy_fh(p, pi, initial, gamma: float):
    """imitation's ``mce_occupancy_measures`` with each step discounted, as the engine
    reports it: ``D_0 = initial``, ``D_{t+1}(s') = gamma sum_{s,a} D_t(s) pi_t(a|s)
    P(s'|s,a)`` (imitation's undiscounted ``D_t`` is this over ``gamma^t``); ``[T+1,S]``."""
    horizon = pi.shape[0]
    d = np.zeros((horizon + 1, p.shape[0]))
    d[0] = initial
    for t in range(horizon):
        d[t + 1] = gamma * np.einsum("s,sa,sak->k", d[t], pi[t], p)
    return d
