"""The two classes RLinf exposes beside its buffer, written for this library with RLinf's interface.

* :class:`PriorityStore`: a bounded store of whole trajectories ordered by a priority tuple (RLinf
  uses ``(min version, mean version)``), from which the freshest ``n`` are taken.
* :class:`TrajectoryCache`: a first-in-first-out cache of flattened trajectories (dicts of
  ``[rows, ...]`` tensors, nested dicts allowed) in one preallocated slot per trajectory.

The replay buffer itself uses neither; they exist so that code importing them from RLinf's
modules keeps working when RLinf's buffer is switched to this library's.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable
from typing import Any

import torch

from ..validate import check_int

Tree = dict[str, Any]
"""A flattened trajectory: ``str`` -> tensor ``[rows, ...]``, nested dict, or another value."""


def clone_dict_of_tensors(obj: Any) -> Any:
    """A deep copy of ``obj`` in which every tensor is a contiguous CPU clone (dicts, lists and
    tuples are rebuilt; other values are returned as they are)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone(memory_format=torch.contiguous_format)
    if isinstance(obj, dict):
        return {k: clone_dict_of_tensors(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(clone_dict_of_tensors(v) for v in obj)
    return obj


class PriorityStore:
    """At most ``maxsize`` items, each kept with a priority (any comparable value, RLinf uses
    ``(min_version, mean_version)`` tuples); the lowest priority is evicted first, and among equal
    priorities the oldest.

    It also counts items that left the store without ever being returned by :meth:`topn`
    (``discarded_unused`` in :meth:`get_metric`).
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = check_int("maxsize", maxsize, 1)  # InvalidArgumentError: a ValueError
        self._keys: list[tuple[Any, int]] = []  # (priority, sequence number), ascending
        self._items: dict[int, Any] = {}  # sequence number -> item
        self._used: set[int] = set()  # sequence numbers returned by topn
        self._next = itertools.count()
        self._discarded_unused = 0

    def _drop(self, position: int) -> None:
        _, seq = self._keys.pop(position)
        del self._items[seq]
        if seq in self._used:
            self._used.discard(seq)
        else:
            self._discarded_unused += 1

    def add(self, priority: Any, data: Any) -> bool:
        """Keep ``data`` with ``priority``; returns ``False`` (and keeps nothing) when the store is
        full and ``priority`` is below every priority held."""
        if len(self._keys) >= self.maxsize and priority < self._keys[0][0]:
            self._discarded_unused += 1
            return False
        seq = next(self._next)
        bisect.insort(self._keys, (priority, seq))
        self._items[seq] = data
        while len(self._keys) > self.maxsize:
            self._drop(0)
        return True

    def topn(self, n: int) -> list[Any]:
        """The ``n`` items of highest priority, highest first (newest first among equals); they
        stay in the store and count as used. ``n <= 0`` returns ``[]``."""
        if n <= 0:
            return []
        chosen = self._keys[-n:][::-1]
        self._used.update(seq for _, seq in chosen)
        return [self._items[seq] for _, seq in chosen]

    def remove_below(self, threshold: Any) -> None:
        """Remove every item whose priority's first element is below ``threshold``."""
        for position in range(len(self._keys) - 1, -1, -1):
            priority = self._keys[position][0]
            first = priority[0] if isinstance(priority, tuple) else priority
            if first < threshold:
                self._drop(position)

    def get_metric(self) -> dict[Any, Any]:
        """``{version: {"ratio": share of all version cells}}`` over the items' ``versions``
        tensors (rounded to integers), plus ``"discarded_unused"``: items that left unused."""
        counts: dict[int, int] = {}
        total = 0
        for item in self._items.values():
            versions = getattr(item, "versions", None)
            if not isinstance(versions, torch.Tensor):
                continue
            flat = torch.round(versions.detach().reshape(-1).double()).to(torch.int64)
            values, found = torch.unique(flat, return_counts=True)
            for value, count in zip(values.tolist(), found.tolist(), strict=True):
                counts[value] = counts.get(value, 0) + count
            total += flat.numel()
        metric: dict[Any, Any] = {v: {"ratio": c / total} for v, c in counts.items()} if total else {}
        metric["discarded_unused"] = self._discarded_unused
        return metric

    def __len__(self) -> int:
        return len(self._keys)


def _tree_map(fn: Callable[..., Any], tree: Tree, *others: Tree) -> Tree:
    """Apply ``fn`` to every tensor leaf of ``tree`` (with the matching leaves of ``others``)."""
    out: Tree = {}
    for key, value in tree.items():
        if isinstance(value, torch.Tensor):
            out[key] = fn(value, *(o[key] for o in others))
        elif isinstance(value, dict):
            out[key] = _tree_map(fn, value, *(o[key] for o in others))
        else:
            out[key] = value
    return out


def _lengths(tree: Tree) -> Tree:
    return _tree_map(lambda t: int(t.shape[0]), tree)


def _max_length(lengths: Tree) -> int:
    best = 0
    for value in lengths.values():
        best = max(best, _max_length(value) if isinstance(value, dict) else int(value))
    return best


class TrajectoryCache:
    """A first-in-first-out cache of at most ``max_size`` flattened trajectories.

    Every trajectory occupies one slot of ``slot_length`` rows in one preallocated tensor per
    field (:meth:`get_buffer`, ``[max_size * slot_length, ...]``); slots are reused in order, so
    the oldest trajectory is evicted first. ``cache`` maps trajectory id -> slot. Slots grow when a
    longer trajectory arrives; every trajectory must have the fields (and per-row shapes) of the
    first one put.
    """

    def __init__(self, max_size: int = 5) -> None:
        self.max_size = check_int("max_size", max_size, 1)  # InvalidArgumentError: a ValueError
        self.cache: dict[int, int] = {}
        self._buffer: Tree | None = None
        self._slot_length: int | None = None
        self._lengths: dict[int, Tree] = {}
        self._owner: dict[int, int] = {}  # slot -> trajectory id
        self._next_slot = 0

    def _allocate(self, like: Tree, slot_length: int) -> Tree:
        return _tree_map(
            lambda t: torch.empty(
                (self.max_size * slot_length, *t.shape[1:]), dtype=t.dtype, device=t.device
            ),
            like,
        )

    def _grow(self, slot_length: int, like: Tree) -> None:
        grown = self._allocate(like, slot_length)
        if self._buffer is not None and self._slot_length is not None:
            old = self._slot_length
            for slot in self.cache.values():
                start = slot * slot_length
                _tree_map(
                    lambda new, cur, s=slot, d=start: new[d : d + old].copy_(cur[s * old : (s + 1) * old]),
                    grown,
                    self._buffer,
                )
        self._buffer, self._slot_length = grown, slot_length

    def put(self, trajectory_id: int, trajectory: Tree) -> None:
        """Copy ``trajectory`` into its slot (its old slot if the id is cached, else the next one,
        evicting that slot's trajectory)."""
        lengths = _lengths(trajectory)
        needed = _max_length(lengths)
        if needed == 0 and not any(isinstance(v, torch.Tensor | dict) for v in trajectory.values()):
            raise ValueError("the trajectory has no tensor fields")
        if self._slot_length is None or needed > self._slot_length:
            self._grow(needed, trajectory)
        slot = self.cache.get(trajectory_id)
        if slot is None:
            slot = self._next_slot
            self._next_slot = (slot + 1) % self.max_size
            evicted = self._owner.get(slot)
            if evicted is not None:
                self.cache.pop(evicted, None)
                self._lengths.pop(evicted, None)
            self._owner[slot] = trajectory_id
            self.cache[trajectory_id] = slot
        start = slot * self._slot_length
        assert self._buffer is not None
        _tree_map(lambda dst, src: dst[start : start + src.shape[0]].copy_(src), self._buffer, trajectory)
        self._lengths[trajectory_id] = lengths

    def get(self, trajectory_id: int) -> Tree | None:
        """The cached trajectory (views of its slot, each field with its own row count), or
        ``None`` if it is not cached."""
        slot = self.cache.get(trajectory_id)
        if slot is None or self._buffer is None or self._slot_length is None:
            return None
        start = slot * self._slot_length
        return _tree_map(lambda t, n: t[start : start + n], self._buffer, self._lengths[trajectory_id])

    def get_buffer(self) -> Tree | None:
        """The preallocated tensors (``[max_size * slot_length, ...]`` per field), or ``None``."""
        return self._buffer

    def get_slot_length(self) -> int | None:
        """Rows per slot (``None`` before the first :meth:`put`)."""
        return self._slot_length

    def clear(self) -> None:
        """Forget every trajectory and free the tensors."""
        self.cache.clear()
        self._buffer = None
        self._slot_length = None
        self._lengths.clear()
        self._owner.clear()
        self._next_slot = 0
