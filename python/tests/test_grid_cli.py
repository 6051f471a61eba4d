"""softvi.solve_grid against the CLI's files for the same world, and the wheel's command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REQUIRE_GPU, run_on

import softvi

# The `softvi` command the wheel installed next to this Python.
CLI = Path(sys.executable).parent / "softvi"


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Runs the wheel's ``softvi`` command."""
    return subprocess.run(
        [str(CLI), *args], capture_output=True, text=True, check=check, timeout=600
    )


def cli_solve(tmp_path: Path, backend: str, *args: str) -> dict[str, np.ndarray]:
    out = tmp_path / f"out-{backend}"
    done = cli("solve", *args, "--backend", backend, "--quiet", "--out", str(out), check=False)
    if done.returncode != 0:
        if backend == "gpu" and "no GPU adapter" in done.stderr and not REQUIRE_GPU:
            pytest.skip("no GPU adapter")
        raise AssertionError(f"softvi solve failed: {done.stderr}")
    return {p.stem: np.load(p) for p in out.glob("*.npy")}


def assert_same(got, want, device: str, what: str) -> None:
    """The same backend gives the same bits; NaN where the CLI has NaN.

    The CLI writes float32; the CPU reference's float64 arrays (MDP solves) are those rounded.
    """
    assert got.shape == want.shape, what
    got = np.asarray(got, dtype=np.float32)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=what)
    np.testing.assert_array_equal(got, want, err_msg=what)


def test_command_is_installed():
    assert CLI.exists(), f"{CLI} missing: the wheel installs the softvi command"
    assert cli("--version").stdout.startswith("softvi ")
    done = cli("solve", "--maze", "2x2", "--goal", "1,1", "--out", "/nonexistent", check=False)
    assert done.returncode == 1 and "error:" in done.stderr


def test_grid_equals_cli_files(tmp_path, device):
    grid = softvi.Grid.maze(31, 21, 4)
    got = run_on(
        device,
        softvi.solve_grid,
        grid,
        [(1, 1), (19, 29), (1, 29)],
        alpha=0.3,
        gamma=0.995,
        slip=0.1,
        q=True,
    )
    files = cli_solve(
        tmp_path,
        device,
        *("--maze", "31x21", "--maze-seed", "4", "--alpha", "0.3", "--gamma", "0.995"),
        *("--slip", "0.1", "--q", "--goal", "1,1", "--goal", "29,19", "--goal", "29,1"),
    )
    assert got.values.shape == (3, 21, 31) and got.policy.shape == (3, 21, 31, 8)
    for name in ("values", "policy", "q"):
        assert_same(getattr(got, name), files[name], device, name)
    assert np.isnan(got.values[:, ~grid.free]).all()


def test_native_grid_equals_cli_files_and_the_reference(tmp_path):
    # device="native" is the CLI's --backend native (the same engine: the same bits), and
    # within f32 rounding of the f64 reference over a finite horizon of 40 backups (1e-4
    # relative, as the GPU is held to).
    grid = softvi.Grid.maze(31, 21, 4)
    goals = [(1, 1), (19, 29)]
    got = softvi.solve_grid(grid, goals, alpha=0.3, gamma=0.995, slip=0.1, q=True, device="native")
    assert got.adapter.startswith("native cpu")
    files = cli_solve(
        tmp_path,
        "native",
        *("--maze", "31x21", "--maze-seed", "4", "--alpha", "0.3", "--gamma", "0.995"),
        *("--slip", "0.1", "--q", "--goal", "1,1", "--goal", "29,19"),
    )
    for name in ("values", "policy", "q"):
        assert_same(getattr(got, name), files[name], "native", name)
    finite = dict(alpha=0.3, gamma=0.995, slip=0.1, horizon=40)
    native = softvi.solve_grid(grid, goals, device="native", **finite)
    reference = softvi.solve_grid(grid, goals, device="cpu", **finite)
    scale = np.nanmax(np.abs(reference.values))
    np.testing.assert_allclose(native.values, reference.values, rtol=0, atol=1e-4 * scale)
    # "auto" picks the native engine for plain grids where the only adapters are software
    # rasterisers (llvmpipe here), and the adapter for every step.
    if all("llvmpipe" in a for a in softvi.adapters()):
        assert softvi.solve_grid(grid, goals, **finite).adapter.startswith("native cpu")
        steps = softvi.solve_grid(grid, goals, all_steps=True, **finite)
        assert not steps.adapter.startswith("native")


def test_a_task_may_have_several_goals():
    got = softvi.solve_grid(softvi.Grid.maze(9, 9), [[(1, 1), (7, 7)]], alpha=0.2, device="cpu")
    assert got.values.shape == (1, 9, 9)
    assert got.values[0, 1, 1] == got.values[0, 7, 7] == 0.0
    assert np.isnan(got.policy[0, 1, 1]).all() and np.isnan(got.policy[0, 7, 7]).all()


def test_grid_steps_occupancy_and_reward_equal_cli_files(tmp_path, device):
    grid = softvi.Grid.maze(25, 15, 2)
    rng = np.random.default_rng(0)
    reward = rng.normal(scale=0.1, size=(2, 15, 25)).astype(np.float32)
    np.save(tmp_path / "reward.npy", reward)
    got = run_on(
        device,
        softvi.solve_grid,
        grid,
        [(1, 1), (13, 23)],
        reward=reward,
        connectivity=4,
        stay=True,
        move_cost=(1.0, 1.5, 0.5),
        alpha=0.5,
        gamma=1.0,
        horizon=30,
        all_steps=True,
        occupancy=True,
        start=[(13, 1)],
    )
    files = cli_solve(
        tmp_path,
        device,
        *("--maze", "25x15", "--maze-seed", "2", "--goal", "1,1", "--goal", "23,13"),
        *("--reward", str(tmp_path / "reward.npy"), "--connectivity", "4", "--stay"),
        *("--move-cost", "1,1.5,0.5", "--alpha", "0.5", "--gamma", "1", "--horizon", "30"),
        *("--all-steps", "--occupancy", "--start", "1,13"),
    )
    assert got.values.shape == (2, 31, 15, 25) and got.policy.shape == (2, 30, 15, 25, 5)
    assert got.occupancy.shape == (2, 31, 15, 25)
    for name in ("values", "policy", "occupancy"):
        assert_same(getattr(got, name), files[name], device, name)


def test_mdp_equals_cli_files(tmp_path, device):
    rng = np.random.default_rng(5)
    p = rng.random((30, 4, 30)) ** 4
    p /= p.sum(axis=2, keepdims=True)
    mdp = softvi.TabularMDP(p, rng.normal(size=(2, 30, 4)))
    mdp.save_npz(tmp_path / "mdp.npz")
    got = run_on(device, softvi.solve, mdp, alpha=0.7, gamma=0.95, q=True, occupancy=True, tol=1e-6)
    files = cli_solve(
        tmp_path,
        device,
        *("--mdp", str(tmp_path / "mdp.npz"), "--alpha", "0.7", "--gamma", "0.95"),
        *("--tol", "1e-6", "--q", "--occupancy"),
    )
    for name in ("values", "policy", "q"):
        assert_same(getattr(got, name), files[name], device, name)
    if device == "gpu":
        assert_same(got.occupancy, files["occupancy"], device, "occupancy")
    else:
        # The f64 reference's discounted occupancy iterates with its f64 policy, the CLI's
        # with the float32 one; each stops at tol 1e-6 (relative to the start's peak), so the
        # two agree to a few tol, not bit for bit.
        np.testing.assert_allclose(got.occupancy, files["occupancy"], rtol=0, atol=2e-5)
