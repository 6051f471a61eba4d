"""softvi.solve on tabular MDPs against a NumPy recurrence (imitation's formulas)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import (
    as_engine_reads,
    assert_close,
    occupancy_fh,
    random_mdp,
    run_on,
    soft_vi_fh,
    tolerance,
)
from scipy.special import logsumexp

import softvi

S, A, B, T = 23, 3, 3, 12


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(7)
    p = random_mdp(rng, S, A, sparsity=0.5)
    r = rng.normal(size=(B, S, A))
    initial = rng.random((B, S))
    initial /= initial.sum(axis=1, keepdims=True)
    return p, r, initial


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.9, 0.99, 1.0])
def test_finite_horizon_v_q_pi_occupancy(world, device, gamma):
    p, r, initial = world
    mdp = softvi.TabularMDP(p, r, initial=initial)
    got = run_on(
        device,
        softvi.solve,
        mdp,
        alpha=1.0,
        gamma=gamma,
        horizon=T,
        q=True,
        all_steps=True,
        occupancy=True,
    )
    assert got.values.shape == (B, T + 1, S)
    assert got.policy.shape == got.q.shape == (B, T, S, A)
    assert got.occupancy.shape == (B, T + 1, S)
    # The f64 CPU reference's arrays as computed; a GPU's float32.
    assert got.values.dtype == (np.float64 if device == "cpu" else np.float32)
    assert got.status == ["horizon"] * B
    rtol = tolerance(device)
    pe = as_engine_reads(p, device)
    for b in range(B):
        v, q, pi = soft_vi_fh(pe, as_engine_reads(r[b], device), T, gamma)
        d = occupancy_fh(pe, pi, as_engine_reads(initial[b], device), gamma)
        assert_close(got.values[b], v, rtol, f"V, task {b}")
        assert_close(got.q[b], q, rtol, f"Q, task {b}")
        assert_close(got.policy[b], pi, rtol, f"pi, task {b}")
        assert_close(got.occupancy[b], d, rtol, f"D, task {b}")


@pytest.mark.parametrize("backup", ["expected", "optimistic"])
@pytest.mark.parametrize("alpha", [0.3, 2.0])
def test_temperature_and_backup(world, device, alpha, backup):
    p, r, _ = world
    mdp = softvi.TabularMDP(p, r[0])  # [S,A]: no task axis
    got = run_on(device, softvi.solve, mdp, alpha=alpha, gamma=0.9, horizon=T, backup=backup)
    assert got.values.shape == (S,) and got.policy.shape == (S, A)
    pe, re = as_engine_reads(p, device), as_engine_reads(r[0], device)
    v, _, pi = soft_vi_fh(pe, re, T, 0.9, alpha, backup)
    assert_close(got.values, v[0], tolerance(device), "V_0")
    assert_close(got.policy, pi[0], tolerance(device), "pi_0")


def test_infinite_horizon_fixed_point(world, device):
    p, r, _ = world
    mdp = softvi.TabularMDP(p, r)
    if device == "cpu":
        got = run_on(device, softvi.solve, mdp, gamma=0.8, tol=1e-7, q=True)
    else:
        # 1e-7 is below f32's reach at |V| ~ 10 (1e-6 |V| / (1 - gamma) = 5e-5): it says so.
        with pytest.warns(RuntimeWarning, match="precision floor"):
            got = run_on(device, softvi.solve, mdp, gamma=0.8, tol=1e-7, q=True)
    assert got.status == ["converged"] * B
    # The fixed point: V = log sum_a exp(r + gamma P V); 200 backups at gamma 0.8 leave 1e-19.
    pe = as_engine_reads(p, device)
    for b in range(B):
        v, q, _ = soft_vi_fh(pe, as_engine_reads(r[b], device), 200, 0.8)
        rtol = max(tolerance(device), 1e-5)  # tol 1e-7 over values of ~10
        assert_close(got.values[b], v[0], rtol, f"V, task {b}")
        assert_close(got.q[b], q[0], rtol, f"Q, task {b}")


def test_error_bound_contains_the_fixed_point(world, device):
    p, r, _ = world
    mdp = softvi.TabularMDP(p, r)
    gamma = 0.95
    # V* from 1000 backups of the f64 recurrence: 0.95^1000 of |V| ~ 20 leaves 1e-21.
    pe = as_engine_reads(p, device)
    truth = [soft_vi_fh(pe, as_engine_reads(r[b], device), 1000, gamma)[0][0] for b in range(B)]
    # 2e-3 is 100x what f32 resolves here (1e-6 |V| / (1 - gamma) ~ 4e-4 at |V| ~ 20): the
    # bound test, not the floor, stops both devices.
    got = run_on(device, softvi.solve, mdp, gamma=gamma, tol=2e-3)
    assert got.status == ["converged"] * B
    for b in range(B):
        err = np.abs(got.values[b] - truth[b]).max()
        assert got.error_bound[b] <= 2e-3
        assert err <= got.error_bound[b], (err, got.error_bound[b])
    if device == "cpu":
        # f64 honours 1e-11.
        got = softvi.solve(mdp, gamma=gamma, tol=1e-11, device="cpu")
        for b in range(B):
            assert np.abs(got.values[b] - truth[b]).max() <= got.error_bound[b] <= 1e-11
    else:
        # f32 cannot resolve 1e-9 at |V| ~ 20: it converges, reports its bound and warns.
        with pytest.warns(RuntimeWarning, match="precision floor"):
            got = run_on(device, softvi.solve, mdp, gamma=gamma, tol=1e-9)
        assert got.status == ["converged"] * B
        for b in range(B):
            assert 1e-9 < got.error_bound[b]
            assert np.abs(got.values[b] - truth[b]).max() <= got.error_bound[b]


def test_error_bound_without_a_bound():
    p = np.full((2, 1, 2), 0.5)
    r = -np.ones((2, 1))
    mdp = softvi.TabularMDP(p, r, terminal=np.array([True, False]))
    assert softvi.solve(mdp, gamma=1.0, device="cpu").error_bound == [float("inf")]
    assert softvi.solve(mdp, gamma=0.9, horizon=5, device="cpu").error_bound == [0.0]


@pytest.mark.parametrize(
    "make",
    [sp.csr_matrix, sp.coo_matrix, sp.csc_matrix, sp.csr_array],
    ids=["csr", "coo", "csc", "csr_array"],
)
def test_sparse_transitions_equal_dense(world, make):
    p, r, _ = world
    dense = softvi.solve(softvi.TabularMDP(p, r), gamma=0.9, horizon=T, device="cpu")
    sparse = softvi.TabularMDP(make(p.reshape(S * A, S)), r)
    assert sparse.nonzeros == np.count_nonzero(p)
    got = softvi.solve(sparse, gamma=0.9, horizon=T, device="cpu")
    np.testing.assert_array_equal(got.values, dense.values)
    np.testing.assert_array_equal(got.policy, dense.policy)


@pytest.mark.parametrize("shape", ["S", "SA", "BS", "BSA"])
def test_reward_shapes_and_task_axis(world, shape):
    p, r, _ = world
    reward = {"S": r[0, :, 0], "SA": r[0], "BS": r[:, :, 0], "BSA": r}[shape]
    got = softvi.solve(softvi.TabularMDP(p, reward), gamma=0.5, horizon=4, device="cpu")
    batched = shape.startswith("B")
    assert got.values.shape == ((B, S) if batched else (S,))
    assert got.policy.shape == ((B, S, A) if batched else (S, A))
    per_action = reward if shape.endswith("A") else np.repeat(reward[..., None], A, axis=-1)
    first = per_action[0] if batched else per_action
    v, _, _ = soft_vi_fh(as_engine_reads(p, "cpu"), as_engine_reads(first, "cpu"), 4, 0.5)
    assert_close(got.values[0] if batched else got.values, v[0], 1e-6)


@pytest.mark.parametrize("shape", ["S", "SA", "BS", "BSA", "2SA"])
def test_replace_reward_equals_building_again(world, shape):
    """``replace(reward=...)`` (which keeps the engine's transitions without checking them
    again) gives the MDP the constructor builds from the same arrays, for every reward shape
    and a new number of tasks; per-task arrays that differ between tasks refuse a new number
    of tasks, naming the array, as the constructor's path does."""
    p, r, initial = world
    shared = dict(terminal=np.arange(S) == 4, terminal_value=np.where(np.arange(S) == 4, 0.7, 0),
                  initial=initial[0])  # fmt: skip
    base = softvi.TabularMDP(p, r, **shared)
    x = {"S": r[0, :, 0], "SA": r[0], "BS": r[:, :, 0] + 1, "BSA": -r, "2SA": r[:2]}[shape]
    got, want = base.replace(reward=x), softvi.TabularMDP(p, x, **shared)
    assert got.batched == want.batched and got.tasks == want.tasks
    for name, a in want.arrays().items():
        np.testing.assert_array_equal(got.arrays()[name], a, err_msg=name)
    per_task = softvi.TabularMDP(p, r, initial=initial)  # a different start in each task
    with pytest.raises(ValueError, match="initial differs between this MDP's 3 tasks"):
        per_task.replace(reward=r[:2])
    with pytest.raises(ValueError, match="initial differs between this MDP's 3 tasks"):
        per_task.replace(reward=r[:2], transition_probs=per_task.arrays()["data"])
    with pytest.raises(ValueError, match="non-finite"):
        base.replace(reward=np.full((S, A), np.nan))


def test_state_reward_batch_with_as_many_tasks_as_actions_from_sparse():
    # [B,S] with B = A: S must come from the matrix, not from the reward's shape.
    rng = np.random.default_rng(1)
    p = random_mdp(rng, 6, 2)
    r = rng.normal(size=(2, 6))
    dense = softvi.solve(softvi.TabularMDP(p, r), horizon=3, device="cpu")
    sparse = softvi.solve(
        softvi.TabularMDP(sp.csr_matrix(p.reshape(12, 6)), r), horizon=3, device="cpu"
    )
    assert sparse.values.shape == (2, 6)
    np.testing.assert_array_equal(sparse.values, dense.values)


def test_read_only_non_contiguous_misaligned_and_integer_inputs(world):
    p, r, initial = world
    want = softvi.solve(
        softvi.TabularMDP(p, np.round(r), initial=initial), horizon=5, occupancy=True, device="cpu"
    )
    p_f = np.asfortranarray(p)  # non-contiguous in C order
    p_f.flags.writeable = False
    r_int = np.round(r).astype(np.int64)[:, ::-1, :][:, ::-1, :]  # strided view of int64
    r_int.flags.writeable = False
    raw = np.zeros(initial.size * 8 + 1, dtype=np.uint8)
    misaligned = np.frombuffer(raw.data, dtype=np.float64, count=initial.size, offset=1)
    assert not misaligned.flags.aligned
    misaligned = misaligned.reshape(initial.shape)
    misaligned[...] = initial
    got = softvi.solve(
        softvi.TabularMDP(p_f, r_int, initial=misaligned), horizon=5, occupancy=True, device="cpu"
    )
    np.testing.assert_array_equal(got.values, want.values)
    np.testing.assert_array_equal(got.occupancy, want.occupancy)


def test_terminal_states_keep_their_value():
    rng = np.random.default_rng(3)
    p = random_mdp(rng, 8, 2)
    terminal = np.zeros(8, dtype=bool)
    terminal[[2, 5]] = True
    got = softvi.solve(
        softvi.TabularMDP(p, -np.ones(8), terminal=terminal, terminal_value=np.arange(8.0)),
        gamma=1.0,
        horizon=6,
        device="cpu",
    )
    np.testing.assert_array_equal(got.values[[2, 5]], [2.0, 5.0])
    assert np.isnan(got.policy[[2, 5]]).all()
    assert np.isfinite(got.policy[~terminal]).all()


def test_save_and_load_npz_round_trip(world, tmp_path):
    p, r, initial = world
    mdp = softvi.TabularMDP(sp.csr_matrix(p.reshape(S * A, S)), r, initial=initial)
    mdp.save_npz(tmp_path / "mdp.npz")
    loaded = softvi.load_npz(tmp_path / "mdp.npz")
    assert (loaded.states, loaded.actions, loaded.tasks) == (S, A, B)
    for name, array in mdp.arrays().items():
        np.testing.assert_array_equal(loaded.arrays()[name], array, err_msg=name)
    a = softvi.solve(mdp, horizon=T, occupancy=True, device="cpu")
    b = softvi.solve(loaded, horizon=T, occupancy=True, device="cpu")
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.occupancy, b.occupancy)


def test_divergence_is_a_status_and_a_warning():
    # gamma = 1, no horizon: state 0 loops on itself with reward +1 (it may also leave for the
    # terminal state 1): no finite value exists.
    p = np.zeros((2, 2, 2))
    p[0, 0, 0] = 1.0
    p[0, 1, 1] = 1.0
    p[1, :, 1] = 1.0
    mdp = softvi.TabularMDP(p, np.array([[1.0, 0.0], [0.0, 0.0]]), terminal=[False, True])
    with pytest.warns(RuntimeWarning, match="diverged"):
        got = softvi.solve(mdp, gamma=1.0, device="cpu")
    assert got.status == ["diverged"]


def test_auto_says_where_it_ran(world):
    p, r, _ = world
    got = softvi.solve(softvi.TabularMDP(p, r), horizon=2)
    assert got.adapter
    assert softvi.solve(softvi.TabularMDP(p, r), horizon=2, device="cpu").adapter == (
        "cpu reference (f64)"
    )


def test_tabular_mdp_pickles_and_deep_copies():
    """pickle, copy.deepcopy and multiprocessing need a TabularMDP to pickle (it raised
    TypeError): the copy holds the same arrays and solves to the same bits."""
    import copy
    import pickle

    rng = np.random.default_rng(5)
    p = rng.random((7, 3, 7))
    p /= p.sum(axis=2, keepdims=True)
    original = softvi.TabularMDP(
        p, rng.normal(size=(2, 7)), terminal=[0, 0, 1, 0, 0, 0, 0], initial=np.full(7, 1 / 7)
    )
    original.horizon = 12
    for copied in (pickle.loads(pickle.dumps(original)), copy.deepcopy(original)):
        assert copied.batched and copied.horizon == 12 and copied.sink is None
        for name, a in original.arrays().items():
            np.testing.assert_array_equal(copied.arrays()[name], a, err_msg=name)
        a, b = softvi.solve(original, gamma=0.9), softvi.solve(copied, gamma=0.9)
        np.testing.assert_array_equal(a.values, b.values)


def test_a_reward_that_grows_past_memory_is_a_memory_error():
    # One state, 2^20 actions: a [B,S] reward of 2^20 + 1 tasks (8 MiB) is kept as [B,S,A]
    # f64, 8 TiB. It aborted the interpreter in the allocation; now it is refused before.
    actions = 1 << 20
    p = sp.csr_matrix(
        (np.ones(actions), np.zeros(actions, dtype=np.int64), np.arange(actions + 1)),
        shape=(actions, 1),
    )
    with pytest.raises(MemoryError, match=r"rewards \[B,S,A\] = \[1048577, 1, 1048576\]"):
        softvi.TabularMDP(p, np.zeros((actions + 1, 1)))
    assert softvi.TabularMDP(p, np.zeros((2, 1))).tasks == 2  # the same model, 2 tasks


@pytest.mark.parametrize("alpha", [0.0, 0.8])
@pytest.mark.parametrize("device", ["native", "cpu", "gpu"])
def test_modified_policy_iteration_reaches_the_fixed_point(world, device, alpha):
    """``method="mpi"``: within its error bound of V* (1000 f64 backups written here)."""
    p, r, _ = world
    mdp = softvi.TabularMDP(p, r)
    gamma = 0.95
    pe = as_engine_reads(p, device)
    # soft_vi_fh's soft max at alpha 0 is the hard max's limit: solve the recurrence at a tiny
    # temperature instead (alpha 1e-9 moves V by under 1e-8 here).
    a = alpha if alpha > 0 else 1e-9
    truth = [
        soft_vi_fh(pe, as_engine_reads(r[b], device), 1000, gamma, alpha=a)[0][0] for b in range(B)
    ]
    for evaluations in [None, 1, 30]:
        got = run_on(
            device, softvi.solve, mdp, alpha=alpha, gamma=gamma, tol=2e-3, method="mpi",
            evaluations=evaluations,
        )  # fmt: skip
        assert got.status == ["converged"] * B
        for b in range(B):
            err = np.abs(got.values[b] - truth[b]).max()
            assert got.error_bound[b] <= 2e-3
            # Plus 1e-6 |V|: the reported values are float32.
            assert err <= got.error_bound[b] + 2e-5, (err, got.error_bound[b])


@pytest.mark.parametrize("alpha", [0.0, 0.8])
def test_grid_modified_policy_iteration_on_the_gpu(alpha):
    """``method="mpi"`` on a grid on the GPU's kernels: converged, within its error bound of
    V*, the fixed point of the same grid as an MDP (``Grid.as_mdp``) iterated here in NumPy."""
    grid = softvi.Grid.maze(21, 15, seed=4)  # 15 x 21, loops, 144 free cells
    goals = [(1, 1), (13, 19)]
    world = grid.as_mdp(goals, slip=0.1)
    rng = np.random.default_rng(3)
    state_map = rng.uniform(-0.5, 0.5, size=(len(goals), grid.height, grid.width))
    arrays = world.arrays()
    s_n, a_n = world.states, world.actions
    p = sp.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]), shape=(s_n * a_n, s_n))
    reward, terminal = world.reward_of(state_map), arrays["terminal"]
    gamma, tol = 0.95, 1e-3
    truth = []
    for b in range(len(goals)):
        v = np.where(terminal[b], arrays["terminal_value"][b], 0.0)
        for _ in range(1500):  # gamma^1500 < 1e-33: the fixed point to f64 rounding
            q = reward[b] + gamma * (p @ v).reshape(s_n, a_n)
            soft = q.max(axis=1) if alpha == 0 else alpha * logsumexp(q / alpha, axis=1)
            v = np.where(terminal[b], v, soft)
        truth.append(world.to_cells(v[None])[0])
    got = run_on(
        "gpu", softvi.solve_grid, grid, goals, reward=state_map, slip=0.1, alpha=alpha,
        gamma=gamma, tol=tol, method="mpi",
    )  # fmt: skip
    plain = run_on(
        "gpu", softvi.solve_grid, grid, goals, reward=state_map, slip=0.1, alpha=alpha,
        gamma=gamma, tol=tol, extrapolate=False,
    )  # fmt: skip
    assert got.status == ["converged"] * len(goals)
    for b in range(len(goals)):
        assert got.error_bound[b] <= tol
        # The evaluation sweeps did part of the work: fewer improvements than VI's sweeps.
        assert got.iterations[b] < plain.iterations[b], (got.iterations, plain.iterations)
        err = np.nanmax(np.abs(got.values[b] - truth[b]))
        # Plus 4 f32 ulps of |V| <= 20 per backup, contracted: 4 * 1.2e-7 * 20 / 0.05 = 2e-4.
        assert err <= got.error_bound[b] + 2e-4, (err, got.error_bound[b])
        np.testing.assert_array_equal(np.isnan(got.values[b]), np.isnan(truth[b]))


def test_modified_policy_iteration_is_refused_where_it_does_not_apply(world):
    """What MPI cannot do is refused by name, never run as value iteration."""
    p, r, _ = world
    mdp = softvi.TabularMDP(p, r)
    with pytest.raises(ValueError, match="method must be 'vi' or 'mpi'"):
        softvi.solve(mdp, method="pi")
    with pytest.raises(ValueError, match="needs method='mpi'"):
        softvi.solve(mdp, evaluations=3)
    with pytest.raises(ValueError, match='backup = "expected"'):
        softvi.solve(mdp, method="mpi", backup="optimistic", device="cpu")
    with pytest.raises(ValueError, match="infinite horizon"):
        softvi.solve(mdp, method="mpi", horizon=5, device="cpu")


def _grid_truth(
    free: np.ndarray,
    goal: tuple[int, int],
    reward: np.ndarray,
    alpha: float,
    gamma: float,
    slip: float,
) -> np.ndarray:
    """V* of a 4-connected grid by float64 value iteration written here, to 1e-13.

    Moves N, E, S, W cost 1; a move off the map or into a wall stays put; with probability
    ``slip`` a uniformly drawn move happens instead; the goal is terminal with value 0.
    """
    h, w = free.shape
    moves = [(-1, 0), (0, 1), (1, 0), (0, -1)]
    cells = [(r, c) for r in range(h) for c in range(w) if free[r, c]]
    index = {cell: i for i, cell in enumerate(cells)}
    dest = np.array(
        [
            [index.get((r + dr, c + dc), i) if (r + dr, c + dc) in index else i for dr, dc in moves]
            for i, (r, c) in enumerate(cells)
        ]
    )
    r = np.array([reward[cell] for cell in cells])
    v = np.zeros(len(cells))
    for _ in range(100_000):
        nxt = v[dest]  # [s, a]
        q = r[:, None] - 1.0 + gamma * ((1 - slip) * nxt + slip * nxt.mean(axis=1, keepdims=True))
        if alpha == 0:
            new = q.max(axis=1)
        else:
            top = q.max(axis=1)
            new = top + alpha * np.log(np.exp((q - top[:, None]) / alpha).sum(axis=1))
        new[index[goal]] = 0.0
        done = np.abs(new - v).max() * gamma / (1 - gamma) < 1e-13
        v = new
        if done:
            break
    out = np.full(free.shape, np.nan)
    for (row, col), i in index.items():
        out[row, col] = v[i]
    return out


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_modified_policy_iteration_on_native_grids_reaches_the_fixed_point(alpha: float) -> None:
    """``method="mpi"`` on the native engine's grid sweeps stops within its error bound (<= tol)
    of V*, an f64 value iteration written in the test, as ``device="cpu"``'s MPI does."""
    rng = np.random.default_rng(4)
    free = rng.random((7, 11)) > 0.2
    goals = [(0, 0), (6, 10)]
    free[0, 0] = free[6, 10] = True
    reward = rng.uniform(-0.5, 0.5, (2, 7, 11))
    gamma, slip, tol = 0.95, 0.1, 1e-3
    kwargs = dict(connectivity=4, slip=slip, reward=reward, alpha=alpha, gamma=gamma, tol=tol)
    got = softvi.solve_grid(softvi.Grid(free), goals, method="mpi", device="native", **kwargs)
    cpu = softvi.solve_grid(softvi.Grid(free), goals, method="mpi", device="cpu", **kwargs)
    vi = softvi.solve_grid(softvi.Grid(free), goals, extrapolate=False, device="native", **kwargs)
    for b, goal in enumerate(goals):
        truth = _grid_truth(free, goal, reward[b], alpha, gamma, slip)
        assert np.array_equal(np.isnan(got.values[b]), np.isnan(truth))
        err = np.nanmax(np.abs(got.values[b] - truth))
        assert got.error_bound[b] <= tol
        # f32 sweeps: a backup rounds its ~10 terms once each, under 16 half-ulps of |V| <= 12
        # (6e-6), which a bound from f32 iterates carries over 1 - gamma (1.2e-4).
        allowance = 2e-4
        assert err <= got.error_bound[b] + allowance, (err, got.error_bound[b])
        gap = np.nanmax(np.abs(got.values[b] - cpu.values[b]))
        assert gap <= got.error_bound[b] + cpu.error_bound[b] + allowance
        # The evaluations do part of the work: fewer full backups than VI's sweeps.
        assert got.iterations[b] < vi.iterations[b], (got.iterations, vi.iterations)
