"""``softvi.torch.soft_value_iteration`` against PyTorch's autograd through the value iteration
unrolled here in float64, and against ``softvi.vjp``."""

from __future__ import annotations

import numpy as np
import torch
from test_gradients import A, S, world

import softvi
import softvi.torch


def unrolled(mdp, reward, alpha, gamma, terminal_value, probs, steps):
    """V_0 of ``steps`` expected soft backups in torch from the CSR arrays, ``[B,S]``."""
    arrays = mdp.arrays()
    rows = torch.as_tensor(np.repeat(np.arange(S * A), np.diff(arrays["indptr"])))
    cols = torch.as_tensor(arrays["indices"].astype(np.int64))
    p = torch.zeros(S * A, S, dtype=torch.float64).index_put((rows, cols), probs, accumulate=True)
    p = p.reshape(S, A, S)
    terminal = torch.as_tensor(arrays["terminal"])
    v = torch.where(terminal, terminal_value, torch.zeros_like(terminal_value))
    for _ in range(steps):
        q = reward + gamma * torch.einsum("sak,bk->bsa", p, v)
        v = torch.where(terminal, terminal_value, alpha * torch.logsumexp(q / alpha, dim=-1))
    return v


def test_torch_gradients_match_unrolled_autograd():
    """Every input's gradient within 1e-8 of torch's autograd through the unrolled iteration,
    at a finite horizon and at the gamma = 0.9 fixed point (400 unrolled steps); a [S] reward's
    gradient keeps its shape."""
    mdp = world(11, tasks=1)
    arrays = mdp.arrays()
    initial = torch.as_tensor(arrays["initial"][0])
    for horizon in (9, None):
        leaves = [
            torch.tensor(np.random.default_rng(2).normal(size=S), requires_grad=True),
            torch.tensor(0.7, dtype=torch.float64, requires_grad=True),
            torch.tensor(0.9, dtype=torch.float64, requires_grad=True),
            torch.tensor(arrays["terminal_value"][0], requires_grad=True),
            torch.tensor(arrays["data"], requires_grad=True),
        ]
        r, alpha, gamma, tv, probs = leaves
        v = softvi.torch.soft_value_iteration(
            mdp, r, alpha=alpha, gamma=gamma, horizon=horizon, terminal_value=tv,
            transition_probs=probs,
        )  # fmt: skip
        assert v.shape == (S,) and v.dtype == torch.float64
        got = torch.autograd.grad((initial * v).sum(), leaves)
        reward = r[None, :, None].expand(1, S, A)
        want_v = unrolled(mdp, reward, alpha, gamma, tv[None], probs, horizon or 400)[0]
        # The forward values are the solve's: at the fixed point within its tol (1e-10).
        np.testing.assert_allclose(v.detach(), want_v.detach(), rtol=0, atol=1e-9)
        want = torch.autograd.grad((initial * want_v).sum(), leaves)
        for g, w in zip(got, want, strict=True):
            scale = max(float(w.abs().max()), 1e-12)
            assert float((g - w).abs().max()) / scale <= 1e-8
        assert got[0].shape == (S,)


def test_torch_matches_softvi_vjp():
    """The autograd function's gradient is ``softvi.vjp``'s for a batched [B,S,A] reward with
    cotangents on V and pi."""
    mdp = world(12)
    arrays = mdp.arrays()
    reward = torch.tensor(arrays["R"], requires_grad=True)
    v, pi = softvi.torch.soft_value_iteration(
        mdp, reward, gamma=0.95, horizon=6, outputs=("values", "policy")
    )
    rng = np.random.default_rng(4)
    c_v, c_pi = rng.normal(size=v.shape), rng.normal(size=pi.shape)
    loss = (torch.as_tensor(c_v) * v).sum() + torch.nan_to_num(torch.as_tensor(c_pi) * pi).sum()
    (grad,) = torch.autograd.grad(loss, [reward])
    terminal = arrays["terminal"]
    want = softvi.vjp(
        mdp, values=c_v, policy=np.where(terminal[..., None], np.nan, c_pi), gamma=0.95,
        horizon=6,
    )  # fmt: skip
    np.testing.assert_allclose(grad.numpy(), want.reward, rtol=0, atol=1e-12)
