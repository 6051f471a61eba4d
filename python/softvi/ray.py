"""Task batches sharded over a Ray cluster: one Ray task per contiguous range of tasks.

Tasks in a batch are independent, so a batch of B tasks splits into ``shards`` contiguous
ranges, shard ``i`` holding tasks ``i*B//shards .. (i+1)*B//shards`` (the same split as the
CLI's ``--tasks I/N``). The world (the MDP's transitions, the grid's map) goes into Ray's
object store once, so every node fetches it once; each Ray task solves its range with
:func:`softvi.solve` / :func:`softvi.solve_grid` on its node, and the driver gathers the
results in task order into one :class:`softvi.SolveResult`, the one a single-process solve on
the same device returns.

Device choice: with ``num_gpus_per_shard=0`` (the default) a shard solves with the ``device=``
given (``"auto"`` by default), as a single-process solve would on that node. With
``num_gpus_per_shard > 0`` Ray assigns the shard a GPU through ``CUDA_VISIBLE_DEVICES``, which
wgpu (Vulkan, GL) ignores; the shard then opens the wgpu adapter on the PCI bus slot of that
CUDA device (see :func:`pick_adapter`). Several GPUs per node: with ``num_gpus_per_shard=1``
Ray runs one shard per GPU at a time, each on its own GPU; a fractional value (``0.5``) lets
that many shards share one GPU; a value above 1 reserves several GPUs, but a shard solves on
one adapter (the first assigned), so give more shards rather than more GPUs per shard.

Retries: a shard whose worker dies (killed, out of memory, node lost) is run again, up to
``max_retries`` times (Ray's task retries). A shard that raises (bad input only the engine
sees, a GPU error) is not retried: the call raises that shard's error, naming the shard and
its task range, and cancels the other shards.

Needs Ray: ``pip install 'softvi[ray]'``. Call ``ray.init(...)`` first to join a cluster;
otherwise Ray starts a local one on the first call.
"""

from __future__ import annotations

import functools
import inspect
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import _softvi
from ._grid import Grid, _grid_batch
from ._grid import solve_grid as _solve_grid
from ._mdp import TabularMDP, _check_mdp
from ._solve import SolveResult, _settings, _warn_diverged
from ._solve import solve as _solve

_NEEDS_RAY = "softvi.ray needs Ray: pip install 'softvi[ray]'"

# The keywords of the single-process solves, with their defaults: the driver checks them
# before it submits anything.
_SOLVE_KEYWORDS = {
    name: p.default
    for name, p in inspect.signature(_solve).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
}
_GRID_KEYWORDS = {
    name: p.default
    for name, p in inspect.signature(_solve_grid).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
}
_ARRAYS = ("values", "policy", "q", "occupancy")


def _ray() -> Any:
    """The ``ray`` module, or an ImportError saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ImportError(_NEEDS_RAY) from e
    return ray


def shard_ranges(tasks: int, shards: int) -> list[tuple[int, int]]:
    """The task range ``[start, end)`` of each shard: ``i*B//N .. (i+1)*B//N``.

    The CLI's ``--tasks I/N`` uses the same split, so shard folders and Ray shards agree.

    Args:
        tasks: B, the batch size.
        shards: N, with ``1 <= N <= B``.

    Raises:
        ValueError: ``shards`` out of range.
    """
    if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)):
        raise ValueError(f"shards must be an integer, got {shards!r}")
    if not 1 <= shards <= tasks:
        raise ValueError(
            f"shards must be in [1, B] = [1, {tasks}] (one task or more each), got {shards}"
        )
    return [(i * tasks // shards, (i + 1) * tasks // shards) for i in range(shards)]


def _bus_key(bus_id: str) -> tuple[int, int, int, int] | None:
    """A PCI bus id as ``(domain, bus, device, function)``; None if it is not one.

    Accepts wgpu's ``"0000:01:00.0"``, nvidia-smi's ``"00000000:01:00.0"`` and ``"01:00.0"``.
    """
    try:
        head, function = bus_id.strip().lower().rsplit(".", 1)
        parts = head.split(":")
        if len(parts) == 2:
            parts = ["0", *parts]
        domain, bus, device = (int(p, 16) for p in parts)
        return domain, bus, device, int(function, 16)
    except ValueError:
        return None


def pick_adapter(
    gpu_ids: Sequence[int | str],
    infos: Sequence[Mapping[str, str]],
    bus_ids: Sequence[str],
) -> int:
    """The index into :func:`softvi.adapters` of the GPU Ray assigned a worker.

    A pure function of what the worker sees, so that it can be tested without GPUs.

    Args:
        gpu_ids: ``ray.get_gpu_ids()``: the CUDA device numbers assigned (the first is used).
        infos: ``softvi._softvi.adapter_info()``: per adapter ``name``, ``backend``,
            ``device_type``, ``pci_bus_id`` (empty where unknown), in :func:`softvi.adapters`
            order.
        bus_ids: the node's NVIDIA PCI bus ids in CUDA device order (PCI bus order), empty
            where unknown.

    The adapter whose ``pci_bus_id`` is that of CUDA device k (the first such, so the
    preferred backend when Vulkan and GL both list the GPU); where no adapter reports it, or
    the bus ids are unknown, the k-th hardware adapter (not a CPU rasteriser) of the backend
    of the first hardware adapter (one backend, so that a GPU listed by Vulkan and by GL
    counts once).

    Raises:
        ValueError: no GPU assigned, an id that is not a device number, or fewer hardware
            adapters than ``k + 1``.
    """
    if not gpu_ids:
        raise ValueError("no GPU assigned to this worker (num_gpus_per_shard > 0 expected)")
    try:
        k = int(gpu_ids[0])
    except ValueError:
        raise ValueError(
            f"GPU id {gpu_ids[0]!r} is not a CUDA device number (UUIDs are not mapped)"
        ) from None
    if k < len(bus_ids):
        wanted = _bus_key(bus_ids[k])
        if wanted is not None:
            for index, info in enumerate(infos):
                if _bus_key(info.get("pci_bus_id", "")) == wanted:
                    return index
    hardware = [i for i, info in enumerate(infos) if info.get("device_type") != "cpu"]
    if hardware:
        backend = infos[hardware[0]].get("backend")
        hardware = [i for i in hardware if infos[i].get("backend") == backend]
    if k >= len(hardware):
        raise ValueError(
            f"Ray assigned CUDA device {k}, but wgpu lists {len(hardware)} hardware adapter(s) "
            f"on this node: {[info.get('name') for info in infos]}"
        )
    return hardware[k]


def _nvidia_bus_ids() -> list[str]:
    """This node's NVIDIA PCI bus ids, sorted (PCI bus order); empty if there are none."""
    root = "/proc/driver/nvidia/gpus"
    if os.path.isdir(root):
        return sorted(os.listdir(root), key=lambda b: _bus_key(b) or (0, 0, 0, 0))
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=pci.bus_id", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    ids = [line.strip() for line in out.splitlines() if line.strip()]
    return sorted(ids, key=lambda b: _bus_key(b) or (0, 0, 0, 0))


def _worker_device(device: Any, gpus: float) -> Any:
    """The ``device=`` a shard solves with: the assigned GPU's adapter when it has one."""
    if gpus == 0:
        return device
    ray = _ray()
    try:
        return pick_adapter(ray.get_gpu_ids(), _softvi.adapter_info(), _nvidia_bus_ids())
    except ValueError as e:  # not the user's input: this node's GPUs
        raise _softvi.DeviceError(f"no wgpu adapter for the GPU Ray assigned: {e}") from None


def _solve_shard(
    kind: str, world: dict[str, Any], part: dict[str, Any], options: dict[str, Any], gpus: float
) -> tuple[SolveResult, float]:
    """One shard, in a Ray worker: its sub-batch solved on this node; and its wall seconds."""
    start = time.perf_counter()
    options = dict(options, device=_worker_device(options["device"], gpus))
    with warnings.catch_warnings():
        # The driver warns once, with the tasks' indices in the whole batch.
        warnings.simplefilter("ignore", RuntimeWarning)
        if kind == "mdp":
            arrays = {k: np.asarray(v, dtype=np.float64) for k, v in world.items()}
            arrays.update({k: np.asarray(v, dtype=np.float64) for k, v in part.items()})
            mdp = TabularMDP._wrap(_softvi.mdp_from_arrays(arrays), batched=True)
            result = _solve(mdp, **options)
        else:
            reward = part["reward"] if part["reward"] is not None else world["reward"]
            result = _solve_grid(
                Grid(world["free"]), part["goals"], reward=reward, **world["options"], **options
            )
    return result, time.perf_counter() - start


@functools.cache
def _remote() -> Any:
    """``_solve_shard`` as a Ray remote function (process title ``ray::_solve_shard``)."""
    return _ray().remote(_solve_shard)


def _options(
    name: str, keywords: dict[str, Any], given: dict[str, Any], gpus: float, retries: int
) -> dict[str, Any]:
    """The single-process keywords with ``given`` applied, checked as a solve checks them."""
    unknown = sorted(set(given) - set(keywords))
    if unknown:
        raise TypeError(f"{name}() got unexpected keyword argument(s) {unknown}")
    if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or not gpus >= 0:
        raise ValueError(f"num_gpus_per_shard must be a number >= 0, got {gpus!r}")
    if isinstance(retries, bool) or not isinstance(retries, (int, np.integer)) or retries < 0:
        raise ValueError(f"max_retries must be an integer >= 0, got {retries!r}")
    options = {**keywords, **given}
    if gpus > 0 and not (
        isinstance(options["device"], str) and options["device"] in ("auto", "gpu")
    ):
        raise ValueError(
            f"device={options['device']!r} with num_gpus_per_shard={gpus}: each shard runs on "
            "the GPU Ray assigns it; leave device as 'auto' or 'gpu'"
        )
    solve_keys = set(_SOLVE_KEYWORDS)
    _settings(**{k: v for k, v in options.items() if k in solve_keys})
    return options


def _run(
    kind: str,
    world: dict[str, Any],
    parts: list[dict[str, Any]],
    ranges: list[tuple[int, int]],
    options: dict[str, Any],
    gpus: float,
    retries: int,
    progress: bool,
    batched: bool,
) -> SolveResult:
    """Submits one Ray task per shard and gathers them in task order."""
    ray = _ray()
    start = time.perf_counter()
    gpus_there = ray.cluster_resources().get("GPU", 0)
    if gpus > gpus_there:
        # Ray would keep such tasks pending for a node that never comes: fail instead.
        raise _softvi.DeviceError(
            f"num_gpus_per_shard={gpus}, but the Ray cluster has {gpus_there:g} GPU(s): no "
            "shard could ever be scheduled (an autoscaling cluster: start a GPU node first)"
        )
    world_ref = ray.put(world)
    remote = _remote().options(num_gpus=gpus, max_retries=retries)
    refs = [remote.remote(kind, world_ref, part, options, gpus) for part in parts]
    shard_of = {ref: i for i, ref in enumerate(refs)}
    results: list[SolveResult | None] = [None] * len(refs)
    pending = list(refs)
    count = len(refs)
    try:
        while pending:
            (ref,), pending = ray.wait(pending, num_returns=1)
            i = shard_of[ref]
            lo, hi = ranges[i]
            try:
                result, seconds = ray.get(ref)
            except Exception as e:
                raise _shard_error(e, i, count, lo, hi) from e
            results[i] = result
            if progress:
                print(
                    f"softvi.ray: shard {i}/{count} (tasks {lo}..{hi}) done in {seconds:.1f} s "
                    f"on {result.adapter}",
                    file=sys.stderr,
                    flush=True,
                )
    except BaseException:
        # A failed shard or Ctrl-C: the other shards' work is wasted, stop it.
        for other in pending:
            try:
                ray.cancel(other, force=True)
            except Exception:  # already finished or gone: nothing to cancel
                pass
        raise
    return _gather(results, batched, time.perf_counter() - start)


def _shard_error(e: Exception, i: int, count: int, lo: int, hi: int) -> Exception:
    """A shard's failure as the error of the whole call, naming the shard and its tasks."""
    ray = _ray()
    where = f"softvi.ray: shard {i}/{count} (tasks {lo}..{hi})"
    cause = getattr(e, "cause", None) if isinstance(e, ray.exceptions.RayTaskError) else None
    if cause is None:
        # The worker died more often than max_retries allows, the node went away, ...
        return RuntimeError(f"{where} failed: {e}")
    message = f"{where} failed: {cause}"
    if isinstance(cause, ValueError):
        return ValueError(message)
    try:
        return type(cause)(message)
    except Exception:  # an exception type that does not take a message
        return RuntimeError(f"{where} failed: {type(cause).__name__}: {cause}")


def _gather(results: list[Any], batched: bool, seconds: float) -> SolveResult:
    """The shards' results, in task order, as one result."""
    arrays = {}
    for name in _ARRAYS:
        parts = [getattr(r, name) for r in results]
        if any(p is None for p in parts):
            # Not asked for, or a shard diverged: the whole solve would have none either.
            arrays[name] = None
            continue
        if name == "values":
            # A diverged solve reports V_0 only: so does the whole one, where a shard did.
            steps = min(p.ndim for p in parts)
            parts = [p[:, 0] if p.ndim > steps else p for p in parts]
        arrays[name] = np.concatenate(parts, axis=0)
        if not batched:
            arrays[name] = arrays[name][0]
    lists = {
        name: [x for r in results for x in getattr(r, name)]
        for name in ("status", "iterations", "residual", "unreachable", "error_bound")
    }
    occupancy_status = None
    if all(r.occupancy_status is not None for r in results):
        occupancy_status = [x for r in results for x in r.occupancy_status]
    adapters = list(dict.fromkeys(r.adapter for r in results))
    _warn_diverged(lists["status"], stacklevel=4)
    return SolveResult(
        **arrays,
        **lists,
        adapter=", ".join(adapters),
        seconds=seconds,
        occupancy_status=occupancy_status,
    )


def solve(
    mdp: TabularMDP,
    *,
    shards: int,
    num_gpus_per_shard: float = 0,
    max_retries: int = 3,
    progress: bool = True,
    **options: Any,
) -> SolveResult:
    """:func:`softvi.solve` with the task axis split into ``shards`` Ray tasks.

    Shard ``i`` solves tasks ``i*B//shards .. (i+1)*B//shards``: the MDP's transitions (put
    in the object store once) with the reward, terminal, terminal_value and initial rows of
    its tasks.

    Args:
        mdp: the MDP batch.
        shards: number of Ray tasks, 1 to B.
        num_gpus_per_shard: GPUs Ray reserves for each shard (0: the shard solves with
            ``device=``, on the CPUs it runs on; 1: one GPU, found by PCI bus id, see
            :func:`pick_adapter`; 0.5: two shards share a GPU).
        max_retries: times a shard whose worker dies is run again.
        progress: print one line per finished shard to stderr.
        **options: any keyword of :func:`softvi.solve` (``alpha``, ``gamma``, ``horizon``,
            ``policy``, ``device``, ...), with the same defaults.

    Returns:
        The :class:`softvi.SolveResult` a single-process solve returns (the task axis present
        iff ``mdp.batched``), ``adapter`` the distinct adapters the shards ran on, joined by
        ``", "``, and ``seconds`` the wall time of this call.

    Raises:
        ImportError: Ray is not installed.
        ValueError: a setting or ``shards`` out of range (checked before anything runs), or
            a shard's bad input (the message names the shard and its task range).
        RuntimeError: a shard's worker died more than ``max_retries`` times.
    """
    _check_mdp(mdp)
    ranges = shard_ranges(mdp.tasks, shards)
    options = _options(
        "softvi.ray.solve", _SOLVE_KEYWORDS, options, num_gpus_per_shard, max_retries
    )
    _ray()
    arrays = mdp.arrays()
    world = {k: arrays[k] for k in ("indptr", "indices", "data")}
    parts = [
        {k: arrays[k][lo:hi] for k in ("R", "terminal", "terminal_value", "initial")}
        for lo, hi in ranges
    ]
    return _run(
        "mdp", world, parts, ranges, options, num_gpus_per_shard, max_retries, progress,
        mdp.batched,
    )  # fmt: skip


def solve_grid(
    grid: Grid,
    goals: Sequence[Any],
    *,
    shards: int,
    num_gpus_per_shard: float = 0,
    max_retries: int = 3,
    progress: bool = True,
    **options: Any,
) -> SolveResult:
    """:func:`softvi.solve_grid` with the goals split into ``shards`` Ray tasks.

    Shard ``i`` solves goals ``i*B//shards .. (i+1)*B//shards`` (and their rows of a per-task
    ``reward``) on the map, which is put in the object store once.

    Args:
        grid: the map.
        goals: per task, a goal cell ``(row, col)`` or a list of them.
        shards: number of Ray tasks, 1 to B.
        num_gpus_per_shard: as in :func:`solve`.
        max_retries: as in :func:`solve`.
        progress: as in :func:`solve`.
        **options: any keyword of :func:`softvi.solve_grid` (``reward``, ``connectivity``,
            ``horizon``, ``device``, ...), with the same defaults.

    Returns:
        The :class:`softvi.SolveResult` a single-process :func:`softvi.solve_grid` returns,
        ``adapter`` and ``seconds`` as in :func:`solve`.

    Raises:
        ImportError: Ray is not installed.
        ValueError: as in :func:`solve`; also a goal off the grid or a reward of the wrong
            shape.
        RuntimeError: as in :func:`solve`.
    """
    given = options.get("reward"), options.get("start"), options.get("occupancy", False)
    goals, _, reward, _ = _grid_batch(grid, goals, *given)
    ranges = shard_ranges(len(goals), shards)
    options = _options(
        "softvi.ray.solve_grid", _GRID_KEYWORDS, options, num_gpus_per_shard, max_retries
    )
    _ray()
    world_keys = ("connectivity", "stay", "slip", "move_cost", "start")
    options.pop("reward")
    shared = reward is not None and reward.ndim == 2
    world: dict[str, Any] = {
        "free": grid.free,
        "options": {k: options.pop(k) for k in world_keys},
        "reward": reward if shared else None,
    }
    per_task = None if shared else reward
    parts = [
        {"goals": goals[lo:hi], "reward": None if per_task is None else per_task[lo:hi]}
        for lo, hi in ranges
    ]
    return _run(
        "grid", world, parts, ranges, options, num_gpus_per_shard, max_retries, progress, True
    )
