"""General tabular MDPs: NumPy / SciPy arrays in, the engine's validated CSR form inside."""

from __future__ import annotations

import operator
import os
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import _softvi


def _real(name: str, array: ArrayLike) -> np.ndarray:
    """``array`` as a NumPy array of real numbers or bools, not converted yet.

    Raises ValueError naming ``name`` for text (NumPy would parse it), complex numbers (the
    imaginary part would be dropped) and objects that are not numbers.
    """
    try:
        a = np.asarray(array)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} is not a numeric array: {e}") from None
    if a.dtype.kind == "c":
        raise ValueError(
            f"{name} is complex ({a.dtype}): its imaginary part would be dropped; pass a real array"
        )
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name} is not a numeric array: dtype {a.dtype}")
    return a


def _float64(name: str, array: ArrayLike) -> np.ndarray:
    """``array`` as a C-contiguous float64 array (one conversion; none if it already is)."""
    return np.ascontiguousarray(_real(name, array), dtype=np.float64)


def _integer(name: str, value: Any, minimum: int | None = None, maximum: int = 2**64 - 1) -> int:
    """``value`` as an int, naming ``name`` when it is not one.

    A float is refused even when whole (``1.5`` was truncated to 1), as is a value below
    ``minimum`` (ValueError; a negative count read as a huge unsigned one) or above
    ``maximum`` (ValueError; the engine's counts are 64-bit).
    """
    try:
        i = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and i < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {i}")
    if i > maximum:
        raise ValueError(f"{name} must be an integer <= {maximum}, got {i}")
    return i


def _integers(name: str, values: ArrayLike) -> np.ndarray:
    """``values`` as an int64 array: integers, bools, or floats that are whole numbers.

    Raises TypeError naming ``name`` for fractions, NaN or inf (truncation would change them).
    """
    a = _real(name, values)
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a) | (a != np.round(a))
        if np.any(bad):
            x = a[bad].flat[0].item()
            raise TypeError(f"{name} must hold integers, got {x!r}")
        if np.any(np.abs(a) > 2**62):
            raise ValueError(f"{name} holds a value past int64")
    if a.dtype.kind == "u" and a.size and a.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} holds a value past int64")
    return a.astype(np.int64)


def _flags(name: str, values: ArrayLike) -> np.ndarray:
    """``values`` as a bool array: bools, or numbers that are each 0 or 1.

    Raises ValueError naming ``name`` and the first other value (0.5, 2, -1 and NaN were all
    read as True).
    """
    a = _real(name, values)
    if a.dtype.kind != "b":
        bad = (a != 0) & (a != 1)
        if np.any(bad):
            x = a[bad].flat[0].item()
            raise ValueError(f"{name} must hold 0 or 1 (or bools), got {x!r}")
    return a.astype(bool)


def _is_sparse(x: Any) -> bool:
    """Whether ``x`` is a ``scipy.sparse`` matrix or array (without importing SciPy)."""
    return hasattr(x, "tocsr") and hasattr(x, "nnz")


def _check_mdp(mdp: Any) -> None:
    """Raises TypeError unless ``mdp`` is a :class:`TabularMDP`."""
    if not isinstance(mdp, TabularMDP):
        raise TypeError(f"mdp must be a softvi.TabularMDP, got {type(mdp).__name__}")


class TabularMDP:
    """A batch of B tasks (reward functions) sharing one tabular MDP's dynamics.

    Args:
        transitions: ``P(s'|s,a)`` as a dense array ``[S,A,S]``, or any ``scipy.sparse``
            matrix or array of shape ``(S*A, S)`` whose row ``s*A + a`` is ``P(.|s,a)``.
            Every row must be a probability distribution (sums to 1 within 1e-5).
        reward: ``r(s)`` ``[S]``, ``r(s,a)`` ``[S,A]``, per-task ``[B,S]`` or ``[B,S,A]``. A
            2-D reward whose shape is ``(S, A)`` is read as ``[S,A]`` (one task), any other
            2-D reward as ``[B,S]``; so when ``S == A`` a square reward is ``[S,A]``; pass
            ``reward[:, :, None].repeat(A, 2)`` (``[B,S,A]``) for B = S state rewards.
        terminal: terminal states, bool ``[S]`` or ``[B,S]``: they keep ``terminal_value``
            and take no action (default: none).
        terminal_value: values of terminal states, ``[S]`` or ``[B,S]`` (default 0).
        initial: start distribution for the occupancy, ``[S]`` or ``[B,S]`` (default:
            uniform over the non-terminal states).

    Inputs of any numeric dtype, read-only, non-contiguous or misaligned are accepted
    (converted once). The result of :func:`softvi.solve` has a task axis B iff ``reward``
    had one.

    Attributes:
        horizon: the episode length of the env the MDP came from (:func:`softvi.from_gymnasium`,
            :func:`softvi.from_seals`; None if it has none, and for an MDP built here), to
            pass as ``softvi.solve(mdp, horizon=mdp.horizon)``.
        sink: the absorbing state :func:`softvi.from_gymnasium` adds (None otherwise).

    Raises:
        ValueError: the engine's message naming the array and the row or entry at fault
            (the engine calls ``transitions`` ``P`` and ``reward`` ``R``, as in the CLI's
            ``.npz`` files).
    """

    horizon: int | None = None
    sink: int | None = None

    def __init__(
        self,
        transitions: Any,
        reward: ArrayLike,
        *,
        terminal: ArrayLike | None = None,
        terminal_value: ArrayLike | None = None,
        initial: ArrayLike | None = None,
    ) -> None:
        r = _float64("reward", reward)
        arrays: dict[str, np.ndarray] = {}
        if _is_sparse(transitions):
            csr = transitions.tocsr()
            rows, states = csr.shape
            if states == 0 or rows % states != 0:
                raise ValueError(f"transitions has shape {csr.shape}; expected (S*A, S), row s*A+a")
            actions = rows // states
            arrays["indptr"] = _float64("transitions.indptr", csr.indptr)
            arrays["indices"] = _float64("transitions.indices", csr.indices)
            arrays["data"] = _float64("transitions.data", csr.data)
            # The engine takes S from a sparse MDP's reward; a [B,S] reward with B = A would
            # read as [S,A] there, so it goes in as [B,S,A].
            if r.ndim == 2 and r.shape == (actions, states) and actions != states:
                r = np.repeat(r[:, :, None], actions, axis=2)
        else:
            p = _float64("transitions", transitions)
            if p.ndim != 3:
                raise ValueError(
                    f"transitions has shape {p.shape}; expected a dense [S,A,S] array or a "
                    "scipy.sparse matrix (S*A, S)"
                )
            states, actions = p.shape[0], p.shape[1]
            arrays["P"] = p
        arrays["R"] = r
        if terminal is not None:
            arrays["terminal"] = _flags("terminal", terminal).astype(np.float64)
        for name, value in (("terminal_value", terminal_value), ("initial", initial)):
            if value is not None:
                arrays[name] = _float64(name, value)
        self._mdp = _softvi.mdp_from_arrays(arrays)
        self._batched = r.ndim == 3 or (r.ndim == 2 and r.shape != (states, actions))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickles (``copy.deepcopy``, ``multiprocessing``) as the engine's arrays.

        The arrays hold the engine's float32 values exactly, so the copy is the same MDP.
        """
        return (_unpickle, (self.arrays(), self._batched, self.horizon, self.sink))

    @classmethod
    def _reading_in_place(
        cls, transitions: ArrayLike, reward: ArrayLike, *, initial: ArrayLike | None = None
    ) -> TabularMDP:
        """A TabularMDP that reads a dense ``transitions`` ``[S,A,S]`` in place (no copy).

        For a model that lives one solve (``softvi.compat.imitation``): the caller keeps
        ``transitions`` unchanged while the model lives. Arguments as in the constructor
        (``transitions`` dense; converted once if it is not C-contiguous float64).
        """
        p = _float64("transitions", transitions)
        if p.ndim != 3:
            raise ValueError(f"transitions has shape {p.shape}; expected a dense [S,A,S] array")
        r = _float64("reward", reward)
        arrays = {"R": r}
        if initial is not None:
            arrays["initial"] = _float64("initial", initial)
        states, actions = p.shape[0], p.shape[1]
        batched = r.ndim == 3 or (r.ndim == 2 and r.shape != (states, actions))
        return cls._wrap(_softvi.mdp_from_dense_in_place(p, arrays), batched)

    @classmethod
    def _wrap(cls, mdp: Any, batched: bool) -> TabularMDP:
        self = cls.__new__(cls)
        self._mdp = mdp
        self._batched = batched
        return self

    @property
    def states(self) -> int:
        """Number of states S."""
        return self._mdp.states

    @property
    def actions(self) -> int:
        """Number of actions A."""
        return self._mdp.actions

    @property
    def tasks(self) -> int:
        """Number of tasks B (reward functions)."""
        return self._mdp.tasks

    @property
    def nonzeros(self) -> int:
        """Nonzero transition entries."""
        return self._mdp.nonzeros

    @property
    def batched(self) -> bool:
        """Whether results carry a task axis B (the reward had one)."""
        return self._batched

    def arrays(self) -> dict[str, np.ndarray]:
        """The MDP as the engine holds it, in the CLI's ``.npz`` names.

        Returns:
            ``indptr``, ``indices``, ``data`` (CSR over rows ``s*A+a``, uint32 / float64),
            ``R`` float64 ``[B,S,A]``, ``terminal`` bool, ``terminal_value`` and ``initial``
            float64 ``[B,S]`` (copies; the entries as given, float64).
        """
        return self._mdp.arrays()

    def replace(
        self,
        *,
        reward: ArrayLike | None = None,
        terminal_value: ArrayLike | None = None,
        transition_probs: ArrayLike | None = None,
    ) -> TabularMDP:
        """This MDP with some arrays replaced.

        The others are kept; the task axis is as ``reward`` gives it, or as before.

        Args:
            reward: as :class:`TabularMDP` takes it.
            terminal_value: ``[S]`` or ``[B,S]``.
            transition_probs: the stored nonzeros' probabilities, ``[nnz]`` in CSR order
                (``arrays()["data"]``); each row must still sum to 1.

        Raises:
            ValueError: the engine's message naming the array at fault.
        """
        batched = self._batched
        r = None
        if reward is not None:
            r = _float64("reward", reward)
            batched = r.ndim == 3 or (r.ndim == 2 and r.shape != (self.states, self.actions))
            if r.ndim == 2 and r.shape == (self.actions, self.states) and batched:
                r = np.repeat(r[:, :, None], self.actions, axis=2)  # as __init__
            if terminal_value is None and transition_probs is None:
                # The transitions as they are: not copied out and checked again.
                return TabularMDP._wrap(self._mdp.with_reward(r), batched)
        arrays = self.arrays()
        if r is not None:
            arrays["R"] = r
        if terminal_value is not None:
            arrays["terminal_value"] = _float64("terminal_value", terminal_value)
        if transition_probs is not None:
            data = _float64("transition_probs", transition_probs)
            if data.shape != arrays["data"].shape:
                raise ValueError(
                    f"transition_probs has shape {data.shape}; expected [nnz] = "
                    f"[{arrays['data'].shape[0]}] (the stored nonzeros, CSR order)"
                )
            arrays["data"] = data
        for name in ("indptr", "indices"):
            arrays[name] = arrays[name].astype(np.float64)
        r = arrays["R"]
        tasks = r.shape[0] if r.ndim == 3 else (r.shape[0] if batched else 1)
        if tasks != self.tasks:
            # The per-task arrays of the old batch: kept where every task shares them.
            for name in ("terminal", "terminal_value", "initial"):
                x = arrays[name]
                if x.ndim == 2 and not (name == "terminal_value" and terminal_value is not None):
                    if not (x == x[:1]).all():
                        raise ValueError(
                            f"{name} differs between this MDP's {self.tasks} tasks; a reward "
                            f"of {tasks} tasks needs one {name} for all"
                        )
                    arrays[name] = x[0]
        arrays["terminal"] = arrays["terminal"].astype(np.float64)
        return TabularMDP._wrap(_softvi.mdp_from_arrays(arrays), batched)

    def save_npz(self, path: str | os.PathLike[str]) -> None:
        """Writes the MDP as an ``.npz`` that ``softvi solve --mdp`` and :func:`load_npz` read.

        The reward is written as ``[B,S,A]``, so results of the file keep the task axis.
        """
        np.savez(path, **self.arrays())

    def __repr__(self) -> str:
        return (
            f"TabularMDP(states={self.states}, actions={self.actions}, tasks={self.tasks}, "
            f"nonzeros={self.nonzeros})"
        )


def _unpickle(
    arrays: dict[str, np.ndarray], batched: bool, horizon: int | None, sink: int | None
) -> TabularMDP:
    """The :class:`TabularMDP` that :meth:`TabularMDP.__reduce__` pickled."""
    converted = {name: np.ascontiguousarray(a, dtype=np.float64) for name, a in arrays.items()}
    mdp = TabularMDP._wrap(_softvi.mdp_from_arrays(converted), batched)
    mdp.horizon, mdp.sink = horizon, sink
    return mdp


def load_npz(path: str | os.PathLike[str]) -> TabularMDP:
    """Reads an MDP from an ``.npz`` in the CLI's format (see ``softvi solve --mdp``).

    The file holds ``P`` ``[S,A,S]`` or ``indptr``/``indices``/``data`` (CSR of shape
    ``(S*A, S)``), ``R``, and optionally ``terminal``, ``terminal_value``, ``initial``.
    Results of a loaded MDP keep the task axis B, as the CLI writes them.

    Raises:
        ValueError: the file is not a valid MDP (the message names the array and entry).
        OSError: the file cannot be read (``FileNotFoundError`` when it does not exist).
    """
    return TabularMDP._wrap(_softvi.load_npz(os.fspath(path)), batched=True)
