"""softvi.ray: a batch sharded over a local Ray cluster equals the single-process solve.

Tasks are independent, so every task's result must be bit for bit the one a single-process
solve of the whole batch gives on the same device: the tests compare with np.array_equal,
not a tolerance.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from conftest import random_mdp, run_on

import softvi
import softvi.ray
from softvi.ray import pick_adapter, shard_ranges

SHARD_TITLE = b"ray::_solve_shard"
# The `softvi` command the wheel installed next to this Python.
CLI = Path(sys.executable).parent / "softvi"


def cli(*args: str) -> None:
    """Runs the wheel's ``softvi`` command; fails the test with its stderr on an error."""
    done = subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"softvi {args[0]} failed: {done.stderr}"


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """A local two-CPU Ray cluster whose workers see this process's wgpu settings, with one
    GPU declared (Ray then assigns CUDA device 0; the machine has only llvmpipe)."""
    names = ("WGPU_BACKEND", "WGPU_ADAPTER_NAME", "SOFTVI_REQUIRE_GPU", "SOFTVI_NATIVE_VECTORS")
    env = {k: os.environ[k] for k in names if k in os.environ}
    ray.init(
        num_cpus=2,
        num_gpus=1,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": env},
    )
    yield
    ray.shutdown()


def assert_same(got: softvi.SolveResult, want: softvi.SolveResult) -> None:
    """Equal bit for bit (NaN where NaN), per-task lists equal, same adapter."""
    for name in ("values", "policy", "q", "occupancy"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if b is not None:
            assert a.shape == b.shape and a.dtype == b.dtype, name
            assert np.array_equal(a, b, equal_nan=True), name
    assert got.status == want.status
    assert got.iterations == want.iterations
    assert got.residual == want.residual
    assert got.unreachable == want.unreachable
    assert got.occupancy_status == want.occupancy_status
    assert got.adapter == want.adapter


def maze_batch(tasks: int, seed: int):
    """A 41x29 maze, ``tasks`` distinct goals and per-task rewards of different scales (so
    that the tasks need different numbers of iterations to converge)."""
    rng = np.random.default_rng(seed)
    grid = softvi.Grid.maze(41, 29, 3)
    free = np.argwhere(grid.free)
    goals = [tuple(map(int, free[i])) for i in rng.choice(len(free), tasks, replace=False)]
    scale = rng.uniform(0.05, 3.0, tasks)
    reward = -scale[:, None, None] * np.ones((tasks, grid.height, grid.width))
    return grid, goals, reward


def test_shard_ranges_cover_the_batch_once_in_order():
    assert shard_ranges(10, 4) == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert shard_ranges(64, 4) == [(0, 16), (16, 32), (32, 48), (48, 64)]
    for tasks, shards in ((1, 1), (7, 7), (97, 5), (1000, 33)):
        ranges = shard_ranges(tasks, shards)
        assert len(ranges) == shards
        assert [i for lo, hi in ranges for i in range(lo, hi)] == list(range(tasks))
        sizes = [hi - lo for lo, hi in ranges]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


@pytest.mark.parametrize("shards", [0, 65, -1, 2.0, True])
def test_shards_out_of_range_is_refused_before_submitting(shards):
    grid, goals, _ = maze_batch(64, 0)
    with pytest.raises(ValueError, match="shards"):
        softvi.ray.solve_grid(grid, goals, shards=shards)


def test_settings_are_checked_in_the_driver():
    grid, goals, _ = maze_batch(8, 0)
    with pytest.raises(ValueError, match="horizon"):
        softvi.ray.solve_grid(grid, goals, shards=2, horizon=0)
    with pytest.raises(ValueError, match="goals\\[0\\]"):
        softvi.ray.solve_grid(grid, [(100, 100)], shards=1)
    with pytest.raises(ValueError, match="num_gpus_per_shard"):
        softvi.ray.solve_grid(grid, goals, shards=2, num_gpus_per_shard=-1)
    with pytest.raises(ValueError, match="max_retries"):
        softvi.ray.solve_grid(grid, goals, shards=2, max_retries=-2)
    with pytest.raises(ValueError, match="device"):
        softvi.ray.solve_grid(grid, goals, shards=2, num_gpus_per_shard=1, device="cpu")
    with pytest.raises(TypeError, match="tol_"):
        softvi.ray.solve_grid(grid, goals, shards=2, tol_=1.0)
    mdp = softvi.TabularMDP(random_mdp(np.random.default_rng(0), 5, 2), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="shards"):
        softvi.ray.solve(mdp, shards=4)


@pytest.mark.parametrize("horizon", [30, None], ids=["finite", "infinite"])
def test_grid_batch_in_four_shards_equals_the_single_solve(horizon, capfd):
    grid, goals, reward = maze_batch(64, 1)
    kwargs = dict(alpha=0.5, gamma=0.95, horizon=horizon, q=True)
    want = softvi.solve_grid(grid, goals, reward=reward, **kwargs)
    if horizon is None:
        # The tasks alone converge at different counts, so a batch whose tasks ran until the
        # slowest one would differ from its shards: this case can fail.
        alone = {
            softvi.solve_grid(grid, [g], reward=reward[i], **kwargs).iterations[0]
            for i, g in enumerate(goals[:8])
        }
        assert len(alone) > 1
    got = softvi.ray.solve_grid(grid, goals, shards=4, reward=reward, **kwargs)
    assert_same(got, want)
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("softvi.ray:")]
    pattern = re.compile(
        r"softvi\.ray: shard (\d)/4 \(tasks (\d+)\.\.(\d+)\) done in [0-9.]+ s on (.*)"
    )
    parsed = sorted(pattern.fullmatch(ln).groups() for ln in lines)
    assert parsed == [(str(i), str(16 * i), str(16 * i + 16), want.adapter) for i in range(4)]


def test_ray_shards_and_cli_shards_merged_give_the_same_bits(tmp_path):
    # The two ways past one machine split alike (`--tasks I/3` writes shard_ranges' ranges)
    # and give the same answer: Ray on the native engine and three CLI shard folders merged
    # by `softvi merge`, at an infinite horizon where the 10 goals converge apart.
    grid = softvi.Grid.maze(31, 21, 4)
    free = np.argwhere(grid.free)
    goals = [tuple(map(int, free[i])) for i in range(0, 10 * 23, 23)]
    settings = dict(alpha=0.3, gamma=0.97, slip=0.1)
    got = softvi.ray.solve_grid(grid, goals, shards=3, device="native", progress=False, **settings)
    assert len(set(got.iterations)) > 1
    world = ["--maze", "31x21", "--maze-seed", "4", "--alpha", "0.3", "--gamma", "0.97"]
    world += ["--slip", "0.1", "--backend", "native", "--quiet"]
    for row, col in goals:
        world += ["--goal", f"{col},{row}"]
    for i, (start, end) in enumerate(shard_ranges(len(goals), 3)):
        cli("solve", *world, "--tasks", f"{i}/3", "--out", str(tmp_path / f"shard{i}"))
        summary = json.loads((tmp_path / f"shard{i}" / "summary.json").read_text())
        assert summary["shard"]["tasks"] == [start, end]
    shards = [str(tmp_path / f"shard{i}") for i in range(3)]
    cli("merge", "--out", str(tmp_path / "all"), *shards)
    for name in ("values", "policy"):
        merged = np.load(tmp_path / "all" / f"{name}.npy")
        assert np.array_equal(getattr(got, name), merged, equal_nan=True), name
    summary = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert summary["iterations"] == got.iterations
    assert summary["status"] == got.status


def test_a_task_diverging_in_the_last_shard_gives_the_single_solve_result():
    # gamma = 1: the tasks with step costs converge, task 7, whose reward outweighs every step
    # cost, diverges. The whole solve reports no policy and warns; so must the gathered one,
    # whichever shard held the task (here the last, whose result alone has no policy).
    grid, goals, _ = maze_batch(8, 4)
    reward = np.zeros((8, grid.height, grid.width))
    reward[7] = 3.0
    kwargs = dict(reward=reward, alpha=0.2, gamma=1.0, occupancy=True)
    with pytest.warns(RuntimeWarning, match=r"diverged for task\(s\) \[7\]"):
        want = softvi.solve_grid(grid, goals, **kwargs)
    with pytest.warns(RuntimeWarning, match=r"diverged for task\(s\) \[7\]"):
        got = softvi.ray.solve_grid(grid, goals, shards=4, progress=False, **kwargs)
    assert want.policy is None and want.status[7] == "diverged"
    assert want.status[:7] == ["converged"] * 7
    assert_same(got, want)


def test_grid_with_a_shared_reward_and_occupancy_equals_the_single_solve():
    grid, goals, _ = maze_batch(13, 2)
    shared = np.random.default_rng(3).normal(size=(grid.height, grid.width)) * 0.1
    kwargs = dict(reward=shared, horizon=12, all_steps=True, occupancy=True, start=goals[0])
    got = softvi.ray.solve_grid(grid, goals, shards=3, progress=False, **kwargs)
    assert_same(got, softvi.solve_grid(grid, goals, **kwargs))


@pytest.mark.parametrize("horizon", [25, None], ids=["finite", "infinite"])
def test_mdp_batch_in_shards_equals_the_single_solve(device, horizon):
    rng = np.random.default_rng(4)
    states, actions, tasks = 37, 3, 11
    p = random_mdp(rng, states, actions, sparsity=0.7)
    reward = rng.normal(size=(tasks, states, actions)) * rng.uniform(0.02, 3.0, (tasks, 1, 1))
    terminal = rng.random((tasks, states)) < 0.1
    value = rng.normal(size=states)
    kwargs = dict(alpha=0.7, gamma=0.9, horizon=horizon, q=True, occupancy=True)
    if horizon is None:
        # The tasks in the order they converge alone: shard 0 (tasks 0..3) converges sooner
        # than the slowest task, so a batch that iterated every task until its slowest
        # converged would differ from its shards.
        alone = [
            run_on(device, softvi.solve, softvi.TabularMDP(
                p, reward[i : i + 1], terminal=terminal[i : i + 1], terminal_value=value
            ), **kwargs).iterations[0]
            for i in range(tasks)
        ]  # fmt: skip
        order = np.argsort(alone, kind="stable")
        reward, terminal = reward[order], terminal[order]
        assert max(alone[i] for i in order[:3]) < max(alone)
    mdp = softvi.TabularMDP(p, reward, terminal=terminal, terminal_value=value)
    want = run_on(device, softvi.solve, mdp, **kwargs)
    got = softvi.ray.solve(mdp, shards=3, progress=False, device=device, **kwargs)
    assert_same(got, want)


@pytest.mark.parametrize("mpi_device", ["cpu", "native", "gpu"])
def test_mpi_batch_in_shards_equals_the_single_solve(mpi_device):
    """``method="mpi"`` through Ray: each task freezes at its own check, so the shards give the
    single solve's bits (the evaluation sweeps included)."""
    rng = np.random.default_rng(6)
    states, actions, tasks = 41, 3, 7
    p = random_mdp(rng, states, actions, sparsity=0.7)
    # Reward scales from 1e-3 to 3: the tasks need different numbers of improvements.
    scale = np.logspace(-3, 0.5, tasks)[:, None, None]
    reward = rng.normal(size=(tasks, states, actions)) * scale
    # Terminals: no span bound, so the stop depends on each task's scale.
    terminal = rng.random((tasks, states)) < 0.1
    mdp = softvi.TabularMDP(p, reward, terminal=terminal)
    kwargs = dict(alpha=0.0, gamma=0.95, tol=1e-3, method="mpi", evaluations=3, q=True)
    want = run_on(mpi_device, softvi.solve, mdp, **kwargs)
    assert want.status == ["converged"] * tasks
    assert len(set(want.iterations)) > 1, "the tasks should stop at different improvements"
    got = softvi.ray.solve(mdp, shards=3, progress=False, device=mpi_device, **kwargs)
    assert_same(got, want)


def test_an_unbatched_mdp_keeps_no_task_axis():
    rng = np.random.default_rng(5)
    mdp = softvi.TabularMDP(random_mdp(rng, 9, 2), rng.normal(size=(9, 2)))
    got = softvi.ray.solve(mdp, shards=1, progress=False, horizon=5, device="cpu")
    assert got.values.shape == (9,) and got.policy.shape == (9, 2)
    assert_same(got, softvi.solve(mdp, horizon=5, device="cpu"))


class ShardKiller:
    """A thread that SIGKILLs the first Ray worker seen running a shard for 0.3 s (so
    mid-run), once; ``killed`` lists the pid it killed."""

    def __init__(self) -> None:
        self.killed: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        seen: dict[int, float] = {}
        while not self.stop.is_set():
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        title = f.read()
                except OSError:
                    continue
                if title.startswith(SHARD_TITLE):
                    first = seen.setdefault(int(pid), time.monotonic())
                    if time.monotonic() - first > 0.3:
                        os.kill(int(pid), signal.SIGKILL)
                        self.killed.append(int(pid))
                        return
            time.sleep(0.02)

    def __enter__(self) -> ShardKiller:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def long_grid_batch():
    """Two shards of a few seconds each: long enough for the kill to land mid-run."""
    grid = softvi.Grid.maze(251, 251, 5)
    free = np.argwhere(grid.free)
    rng = np.random.default_rng(6)
    goals = [tuple(map(int, free[i])) for i in rng.choice(len(free), 9, replace=False)]
    return grid, goals, dict(horizon=800, alpha=0.5)


def test_a_shard_whose_worker_is_killed_is_retried_and_still_exact():
    grid, goals, kwargs = long_grid_batch()
    with ShardKiller() as killer:
        got = softvi.ray.solve_grid(grid, goals, shards=2, max_retries=2, **kwargs)
    assert len(killer.killed) == 1, "no shard worker was killed: the test did not test a retry"
    assert_same(got, softvi.solve_grid(grid, goals, **kwargs))


def test_a_shard_killed_with_no_retries_left_fails_the_call_naming_it():
    grid, goals, kwargs = long_grid_batch()
    with ShardKiller() as killer, pytest.raises(RuntimeError, match=r"shard [01]/2 \(tasks "):
        softvi.ray.solve_grid(grid, goals, shards=2, max_retries=0, progress=False, **kwargs)
    assert len(killer.killed) == 1


def test_bad_input_in_one_shard_raises_its_value_error_naming_the_shard():
    grid, goals, reward = maze_batch(64, 7)
    reward[40, 3, 5] = np.nan  # task 40 is in shard 2 (tasks 32..48); only the engine checks
    with pytest.raises(ValueError, match="shard 2/4 \\(tasks 32\\.\\.48\\).*reward"):
        softvi.ray.solve_grid(grid, goals, shards=4, reward=reward, progress=False)
    with pytest.raises(ValueError):
        softvi.solve_grid(grid, goals, reward=reward)  # the single solve refuses it too


# pick_adapter: fabricated nodes, no GPU needed.


def info(name: str, backend: str, bus: str = "", kind: str = "discretegpu") -> dict[str, str]:
    return {"name": name, "backend": backend, "device_type": kind, "pci_bus_id": bus}


TWO_GPUS_BUS = ["00000000:41:00.0", "00000000:01:00.0"]  # as nvidia-smi writes them, unsorted


def test_pick_adapter_matches_the_pci_bus_id():
    # Vulkan lists the GPUs in its own order; GL lists only one of them, without a bus id.
    infos = [
        info("H100 b", "vulkan", "0000:41:00.0"),
        info("H100 a", "vulkan", "0000:01:00.0"),
        info("llvmpipe", "vulkan", kind="cpu"),
        info("H100", "gl"),
    ]
    bus = sorted(TWO_GPUS_BUS)  # CUDA device k in PCI bus order
    assert pick_adapter([0], infos, bus) == 1
    assert pick_adapter(["1"], infos, bus) == 0


def test_pick_adapter_takes_the_preferred_of_duplicate_listings():
    infos = [
        info("RTX", "vulkan", "0000:01:00.0"),
        info("RTX", "gl", "0000:01:00.0"),
        info("RTX 2", "vulkan", "0000:02:00.0"),
        info("RTX 2", "gl", "0000:02:00.0"),
    ]
    assert pick_adapter([0], infos, ["0000:01:00.0", "0000:02:00.0"]) == 0
    assert pick_adapter([1], infos, ["0000:01:00.0", "0000:02:00.0"]) == 2


def test_pick_adapter_without_bus_ids_counts_hardware_adapters_of_one_backend():
    infos = [
        info("llvmpipe", "vulkan", kind="cpu"),
        info("GPU a", "vulkan"),
        info("GPU a", "gl"),
        info("GPU b", "vulkan"),
    ]
    assert pick_adapter([0], infos, []) == 1
    assert pick_adapter([1], infos, []) == 3
    # The bus ids are known but no adapter reports one: still by index.
    assert pick_adapter([1], infos, ["0000:01:00.0", "0000:02:00.0"]) == 3
    with pytest.raises(ValueError, match="CUDA device 2"):
        pick_adapter([2], infos, [])
    with pytest.raises(ValueError, match="no GPU assigned"):
        pick_adapter([], infos, [])
    with pytest.raises(ValueError, match="UUID"):
        pick_adapter(["GPU-1234"], infos, [])


def test_adapter_info_lists_the_adapters_in_adapters_order():
    infos = softvi._softvi.adapter_info()
    assert [f"{i['name']} ({i['backend']})" for i in infos] == softvi.adapters()
    kinds = {"discretegpu", "integratedgpu", "virtualgpu", "cpu", "other"}
    assert all(i["device_type"] in kinds for i in infos)


def test_a_shard_given_a_gpu_the_node_has_no_adapter_for_raises_device_error():
    # Ray assigns the declared CUDA device 0; wgpu here lists only llvmpipe (a CPU), so the
    # shard cannot match it and must say so, not solve on the CPU instead.
    infos = softvi._softvi.adapter_info()
    assert all(i["device_type"] == "cpu" for i in infos), "this test needs a GPU-less machine"
    grid, goals, _ = maze_batch(3, 8)
    with pytest.raises(softvi.DeviceError, match=r"shard 0/1 \(tasks 0\.\.3\).*CUDA device 0"):
        softvi.ray.solve_grid(grid, goals, shards=1, num_gpus_per_shard=1, progress=False)


def test_more_gpus_per_shard_than_the_cluster_has_is_refused_not_left_pending():
    grid, goals, _ = maze_batch(4, 5)
    with pytest.raises(softvi.DeviceError, match=r"num_gpus_per_shard=2, but .* 1 GPU"):
        softvi.ray.solve_grid(grid, goals, shards=2, num_gpus_per_shard=2, horizon=5)


def test_device_error_survives_pickle():
    # Ray (and multiprocessing) return a worker's exception pickled: the class must be found
    # again by its module path, or the driver gets a copy that is not softvi.DeviceError.
    e = pickle.loads(pickle.dumps(softvi.DeviceError("no adapter")))
    assert type(e) is softvi.DeviceError and str(e) == "no adapter"
