"""Prioritized sampling of transitions (prioritized experience replay, Schaul et al. 2016).

Two pieces:

* :class:`SumTree`: a complete binary tree over ``capacity`` non-negative float64 leaves, stored
  in flat numpy arrays, with the sum (and the maximum) of every subtree. Updates, the prefix-sum
  search and growth are vectorized: the only Python loops run once per tree *level*, never once
  per element.
* :class:`PrioritizedSampler`: hands out integer *slots* (one per transition), keeps one
  priority per live slot in a :class:`SumTree`, and draws slots with probability
  ``P(i) = q_i / sum_j q_j`` where ``q_i = (p_i + eps) ** alpha`` and ``p_i`` is the raw priority
  (typically ``|TD error|``). It returns importance-sampling weights with every draw.

Slots
-----
Slot ids are absolute and never reused: ``add(n)`` returns ``start`` and the new slots are
``start, start + 1, ..., start + n - 1``; the next ``add`` continues after them. A slot stays valid
until ``remove`` releases it, after which any use of it is reported (or skipped on request), even
though its storage has been recycled. Internally slot ``s`` lives at leaf ``s mod capacity``
(``capacity`` a power of two): leaves are a ring that the slots of a FIFO workload reuse, and
``capacity`` doubles when the ids live at once span more than it (existing slots move to their
leaf in the larger ring; their ids do not change). Under a FIFO workload (ranges released
oldest first, as the trajectories leaving a window are) capacity therefore settles at the power
of two at or above the largest span of live ids (less than twice that span). A range that stays
live forever while newer ones come and go makes capacity grow with the number of slots
allocated after it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Union

import numpy as np
import torch

from .errors import EmptyBufferError, InvalidArgumentError
from .validate import check_float, check_int

#: what the public calls accept as a 1-D array
ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[float], Sequence[int]]

#: the largest leaf value accepted: far above any priority, and small enough that the sum of
#: 2**60 leaves stays finite in float64
MAX_LEAF_VALUE = 1e150


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _as_1d(x: ArrayLike, name: str) -> np.ndarray:
    """``x`` as a 1-D numpy array (torch tensors are detached and moved to the CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise InvalidArgumentError(f"{name} must be one-dimensional, got shape {tuple(arr.shape)}")
    return arr


def _as_indices(x: ArrayLike, name: str) -> np.ndarray:
    """``x`` as an int64 ``[K]`` array; refuses floats and booleans rather than rounding them."""
    arr = _as_1d(x, name)
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise InvalidArgumentError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _as_values(x: ArrayLike, name: str) -> np.ndarray:
    """``x`` as a float64 ``[K]`` array of finite, non-negative numbers."""
    arr = _as_1d(x, name)
    if arr.dtype.kind not in "biuf":
        raise InvalidArgumentError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if arr.size:
        bad = ~np.isfinite(arr) | (arr < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InvalidArgumentError(
                f"{name} must be finite and >= 0, got {float(arr[i])!r} at position {i}"
            )
    return arr


class SumTree:
    """Sums and maxima over ``capacity`` non-negative float64 leaves.

    Layout: ``capacity`` is a power of two; node ``1`` is the root, node ``k`` has children
    ``2k`` and ``2k + 1``, and leaf ``i`` is node ``capacity + i`` (node ``0`` is unused). Internal
    nodes are always recomputed from their children (never adjusted by deltas), so sums carry no
    drift however many updates are made.

    Not thread-safe: callers serialize access (:class:`PrioritizedSampler` does).
    """

    def __init__(self, capacity: int = 1) -> None:
        """Args:
        capacity: number of leaves wanted (>= 1); rounded up to a power of two. All leaves
            start at 0.
        """
        cap = _next_pow2(check_int("capacity", capacity, 1))
        self._cap = cap
        self._depth = cap.bit_length() - 1  # levels above the leaves
        self._sum = np.zeros(2 * cap, dtype=np.float64)
        self._max = np.zeros(2 * cap, dtype=np.float64)

    @property
    def capacity(self) -> int:
        """Number of leaves (a power of two)."""
        return self._cap

    @property
    def total(self) -> float:
        """Sum of all leaves (float)."""
        return float(self._sum[1])

    @property
    def max(self) -> float:
        """Largest leaf value currently stored (0.0 when all leaves are 0)."""
        return float(self._max[1])

    def values(self, indices: ArrayLike | None = None) -> np.ndarray:
        """Leaf values (float64, a copy): all ``[capacity]``, or those of ``indices`` ``[K]``."""
        if indices is None:
            return self._sum[self._cap :].copy()
        idx = self._check_indices(indices)
        return self._sum[self._cap + idx]

    def _check_indices(self, indices: ArrayLike) -> np.ndarray:
        idx = _as_indices(indices, "indices")
        if idx.size:
            bad = (idx < 0) | (idx >= self._cap)
            if bad.any():
                i = int(idx[np.flatnonzero(bad)[0]])
                raise InvalidArgumentError(
                    f"leaf index {i} is out of range [0, {self._cap}); grow() the tree first"
                )
        return idx

    def update(self, indices: ArrayLike, values: ArrayLike) -> None:
        """Set leaf ``indices[k]`` to ``values[k]`` and refresh the sums and maxima above them.

        Args:
            indices: int64 ``[K]``, each in ``[0, capacity)``. When an index appears more than
                once, the value at its **last** occurrence wins.
            values: float64 ``[K]`` (any real dtype is converted), finite, ``>= 0`` and
                ``<= MAX_LEAF_VALUE``.

        Raises:
            InvalidArgumentError: bad shape, dtype, index or value; the tree is then unchanged.
        """
        idx = self._check_indices(indices)
        vals = _as_values(values, "values")
        if idx.shape != vals.shape:
            raise InvalidArgumentError(
                f"indices and values must have the same length, got {idx.size} and {vals.size}"
            )
        if idx.size == 0:
            return
        if vals.max() > MAX_LEAF_VALUE:
            i = int(np.argmax(vals))
            raise InvalidArgumentError(
                f"values must be <= {MAX_LEAF_VALUE:g} so sums stay finite, got {float(vals[i])!r} "
                f"at position {i}"
            )
        if idx.size > 1:
            # last write wins: the first occurrence in the reversed arrays is the last one
            uniq, first = np.unique(idx[::-1], return_index=True)
            idx, vals = uniq, vals[::-1][first]
        self._set_leaves(idx, vals)

    def _set_leaves(self, idx: np.ndarray, vals: np.ndarray) -> None:
        """Write unique, sorted leaf indices and propagate, one vectorized step per level."""
        nodes = idx + self._cap
        self._sum[nodes] = vals
        self._max[nodes] = vals
        s, m = self._sum, self._max
        for _ in range(self._depth):
            nodes = nodes >> 1
            if nodes.size > 1:  # sorted, so equal parents are adjacent
                keep = np.empty(nodes.size, dtype=bool)
                keep[0] = True
                np.not_equal(nodes[1:], nodes[:-1], out=keep[1:])
                nodes = nodes[keep]
            left = nodes << 1
            s[nodes] = s[left] + s[left + 1]
            m[nodes] = np.maximum(m[left], m[left + 1])

    def _rebuild(self) -> None:
        """Recompute every internal node from the leaves (one slice operation per level)."""
        s, m = self._sum, self._max
        width = self._cap // 2
        while width >= 1:
            s[width : 2 * width] = s[2 * width : 4 * width : 2] + s[2 * width + 1 : 4 * width : 2]
            m[width : 2 * width] = np.maximum(m[2 * width : 4 * width : 2], m[2 * width + 1 : 4 * width : 2])
            width //= 2

    def grow(self, min_capacity: int | None = None) -> None:
        """Double the capacity (repeatedly, until it is ``>= min_capacity`` if given).

        Leaf ``i`` keeps its index and value; the new leaves are 0. Costs ``O(new capacity)``.
        """
        target = 2 * self._cap if min_capacity is None else check_int("min_capacity", min_capacity, 1)
        if target <= self._cap:
            return
        cap = self._cap
        while cap < target:
            cap *= 2
        leaves = self._sum[self._cap :]
        self._sum = np.zeros(2 * cap, dtype=np.float64)
        self._max = np.zeros(2 * cap, dtype=np.float64)
        self._sum[cap : cap + self._cap] = leaves
        self._max[cap : cap + self._cap] = leaves
        self._cap, self._depth = cap, cap.bit_length() - 1
        self._rebuild()

    def clear(self) -> None:
        """Set every leaf to 0 (capacity unchanged)."""
        self._sum.fill(0.0)
        self._max.fill(0.0)

    def find(self, u: ArrayLike) -> np.ndarray:
        """Leaves holding the prefix sums ``u``.

        For each ``u[k]`` in ``[0, total)`` returns the leaf ``i`` with
        ``sum(leaves[:i]) <= u[k] < sum(leaves[:i + 1])`` (as ``np.searchsorted(cumsum, u,
        side="right")`` would), so a leaf of value 0 is never returned. Values at or beyond the
        ends (``u == total`` after rounding, ``u < 0``) give the last / first leaf with a positive
        value. The descent never enters a subtree whose sum is 0, which also absorbs the rounding
        of ``u - left_sum`` on the way down.

        Args:
            u: float64 ``[N]`` prefix sums, finite.

        Returns:
            int64 ``[N]`` leaf indices, each with a positive value.

        Raises:
            EmptyBufferError: every leaf is 0.
            InvalidArgumentError: ``u`` is not 1-D or holds a non-finite value.
        """
        arr = _as_1d(u, "u")
        if arr.dtype.kind not in "biuf":
            raise InvalidArgumentError(f"u must hold real numbers, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)  # a copy: it is consumed below
        if arr.size and not np.isfinite(arr).all():
            raise InvalidArgumentError("u must be finite")
        if not self._sum[1] > 0:
            raise EmptyBufferError("cannot search a sum tree whose leaves are all 0")
        s = self._sum
        node = np.ones(arr.size, dtype=np.int64)
        for _ in range(self._depth):
            left = node << 1
            ls = s[left]
            rs = s[left + 1]
            # right when u passes the left sum and the right subtree has mass, or when the left
            # subtree has none (then the right one has, since this node's sum is positive)
            go_right = ((arr >= ls) & (rs > 0)) | (ls <= 0)
            arr -= np.where(go_right, ls, 0.0)
            node = left + go_right
        return node - self._cap


class PrioritizedSampler:
    """Proportional prioritized sampling over transition slots.

    Probabilities: a slot with raw priority ``p`` stores ``q = (p + eps) ** alpha`` and is drawn
    with probability ``P(i) = q_i / sum_j q_j`` (with replacement). ``alpha = 0`` is uniform.

    Importance weights: ``w_i = (N * P(i)) ** -beta`` with ``N = len(self)`` (live slots),
    normalised by the **largest weight of the sampled batch** (so the batch's largest weight is
    exactly 1 and weights only scale updates down). This is the batch-max normalisation of the
    PER paper; it equals ``(min_{j in batch} P(j) / P(i)) ** beta``.

    New slots get the raw priority ``max_priority``: the largest raw priority ever passed to
    :meth:`update_priorities` (1.0 before any), a running maximum that does not decrease when
    priorities are lowered or slots removed; a new slot is thus stored as if
    ``update_priorities(slot, max_priority)`` had been called.

    Random numbers: each :meth:`sample` makes one ``torch.rand(num, dtype=float64,
    generator=generator)`` call (plus one ``torch.randperm`` when ``stratified``) and nothing else,
    so results depend only on the generator's state and the sequence of calls.

    Thread-safe: every public call holds an internal lock.

    See the module docstring for how slot ids are allocated and recycled.
    """

    def __init__(
        self,
        alpha: float = 0.6,
        beta: float = 0.4,
        eps: float = 1e-6,
        *,
        generator: torch.Generator,
        capacity: int = 1024,
        stratified: bool = False,
    ) -> None:
        """Args:
        alpha: priority exponent, >= 0 (0: uniform sampling). Fixed for the sampler's life:
            stored values depend on it.
        beta: importance-sampling exponent in [0, 1]; settable (anneal it towards 1).
        eps: added to raw priorities before the exponent, >= 0, so that a transition whose
            priority is 0 can still be drawn (with ``eps = 0`` and ``alpha > 0`` it never is).
        generator: a CPU ``torch.Generator`` (the buffer's own); the only source of randomness.
        capacity: initial number of leaves (rounded up to a power of two); grows as needed.
        stratified: draw one uniform number in each of ``num`` equal segments of the total
            (lower-variance batches) and shuffle the batch, instead of ``num`` independent
            draws. Either way each row's marginal distribution is ``P``.
        """
        self._alpha = check_float("alpha", alpha, 0.0)
        self._beta = check_float("beta", beta, 0.0, 1.0)
        self._eps = check_float("eps", eps, 0.0)
        if not isinstance(generator, torch.Generator):
            raise InvalidArgumentError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != "cpu":
            raise InvalidArgumentError(f"generator must be a CPU generator, got {generator.device}")
        self._generator = generator
        self._stratified = bool(stratified)
        self._tree = SumTree(capacity)
        self._owner = np.full(self._tree.capacity, -1, dtype=np.int64)  # leaf -> live slot, -1 free
        self._next = 0  # id of the next slot handed out
        self._live = 0
        self._max_raw = 1.0
        self._lock = threading.Lock()

    # ----------------------------------------------------------------------------- properties

    @property
    def alpha(self) -> float:
        """Priority exponent (read-only)."""
        return self._alpha

    @property
    def beta(self) -> float:
        """Importance-sampling exponent in [0, 1]."""
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        self._beta = check_float("beta", value, 0.0, 1.0)

    @property
    def eps(self) -> float:
        """Added to raw priorities before the exponent (read-only)."""
        return self._eps

    @property
    def max_priority(self) -> float:
        """Raw priority given to new slots: the running max of raw priorities set (1.0 at first)."""
        return self._max_raw

    @property
    def capacity(self) -> int:
        """Current number of leaves (a power of two; memory is ``~40 bytes * capacity``)."""
        return self._tree.capacity

    @property
    def next_slot(self) -> int:
        """The id the next :meth:`add` starts at."""
        return self._next

    @property
    def total(self) -> float:
        """Sum of stored values ``q`` over live slots."""
        return self._tree.total

    def __len__(self) -> int:
        """Number of live slots."""
        return self._live

    def raw_priorities(self, slots: ArrayLike) -> np.ndarray:
        """float64 ``[K]``: the raw priority of each live slot (what :meth:`update_priorities`
        was given, recovered from the stored ``(p + eps) ** alpha``; with ``alpha = 0`` every
        slot reads as ``max_priority``).

        Raises:
            InvalidArgumentError: a slot is not live.
        """
        s = _as_indices(slots, "slots")
        with self._lock:
            self._check_live(s)
            q = self._tree.values(self._leaves(s))
        if self._alpha == 0.0:
            return np.full(q.shape, self._max_raw)
        return np.maximum(q ** (1.0 / self._alpha) - self._eps, 0.0)

    def restore_max_priority(self, value: float) -> None:
        """Set the running maximum given to new slots (restoring a saved sampler; priorities
        restored through :meth:`update_priorities` may have nudged it by a rounding error)."""
        value = check_float("max_priority", value, 0.0)
        with self._lock:
            self._max_raw = value

    # --------------------------------------------------------------------------------- slots

    def _stored(self, raw: np.ndarray | float) -> np.ndarray | float:
        return (raw + self._eps) ** self._alpha

    def _leaves(self, slots: np.ndarray) -> np.ndarray:
        return slots & (self._tree.capacity - 1)

    def _live_mask(self, slots: np.ndarray) -> np.ndarray:
        return (slots >= 0) & (self._owner[self._leaves(slots)] == slots)

    def _check_live(self, slots: np.ndarray, skip_removed: bool = False) -> np.ndarray:
        """The mask of live ``slots``; raises for a never-allocated slot, and for a removed one
        unless ``skip_removed``."""
        live = self._live_mask(slots)
        if live.all():
            return live
        never = (slots < 0) | (slots >= self._next)
        if never.any():
            k = int(np.flatnonzero(never)[0])
            raise InvalidArgumentError(
                f"slot {int(slots[k])} (position {k}) was never allocated: valid slots are in "
                f"[0, {self._next}) and come from add()"
            )
        if not skip_removed:
            k = int(np.flatnonzero(~live)[0])
            raise InvalidArgumentError(
                f"slot {int(slots[k])} (position {k}) was removed: its transition left the buffer"
            )
        return live

    def _grow_for(self, end: int) -> None:
        """Grow the ring so the live slots and ``[next, end)`` get distinct leaves."""
        live = self._owner >= 0
        slots = self._owner[live]
        lowest = int(slots.min()) if slots.size else self._next
        cap = self._tree.capacity
        new_cap = 2 * cap
        while new_cap < end - lowest:
            new_cap *= 2
        values = self._tree.values(np.flatnonzero(live))
        tree = SumTree(new_cap)
        owner = np.full(new_cap, -1, dtype=np.int64)
        leaves = slots & (new_cap - 1)
        owner[leaves] = slots
        if slots.size:
            tree.update(leaves, values)
        self._tree, self._owner = tree, owner

    def add(self, n: int) -> int:
        """Allocate ``n`` new consecutive slots with raw priority :attr:`max_priority`.

        Args:
            n: number of slots (>= 0), e.g. the transitions of a trajectory.

        Returns:
            ``start``: the slots are ``start .. start + n - 1``, valid until removed.
        """
        n = check_int("n", n, 0)
        with self._lock:
            start = self._next
            if n == 0:
                return start
            slots = np.arange(start, start + n, dtype=np.int64)
            if n > self._tree.capacity or (self._owner[self._leaves(slots)] >= 0).any():
                self._grow_for(start + n)
            leaves = self._leaves(slots)
            self._owner[leaves] = slots
            self._tree.update(leaves, np.full(n, self._stored(self._max_raw), dtype=np.float64))
            self._next += n
            self._live += n
            return start

    def remove(self, start: int, n: int) -> None:
        """Release slots ``start .. start + n - 1``: they are never drawn again.

        Raises:
            InvalidArgumentError: one of them is not live (never allocated or already removed);
                nothing is changed then.
        """
        start = check_int("start", start, 0)
        n = check_int("n", n, 0)
        with self._lock:
            if n == 0:
                return
            slots = np.arange(start, start + n, dtype=np.int64)
            self._check_live(slots)
            leaves = self._leaves(slots)
            self._owner[leaves] = -1
            self._tree.update(leaves, np.zeros(n, dtype=np.float64))
            self._live -= n

    def clear(self) -> None:
        """Remove every slot and reset :attr:`max_priority` to 1.0 (slot ids keep increasing)."""
        with self._lock:
            self._tree.clear()
            self._owner.fill(-1)
            self._live = 0
            self._max_raw = 1.0

    def is_live(self, slots: ArrayLike) -> np.ndarray:
        """bool ``[K]``: which of ``slots`` are currently live (never raises for unknown ids)."""
        s = _as_indices(slots, "slots")
        with self._lock:
            return self._live_mask(s)

    def probabilities(self, slots: ArrayLike) -> np.ndarray:
        """float64 ``[K]``: the probability ``P(i)`` of each live slot in one draw.

        Raises:
            InvalidArgumentError: a slot is not live.
        """
        s = _as_indices(slots, "slots")
        with self._lock:
            self._check_live(s)
            total = self._tree.total
            q = self._tree.values(self._leaves(s))
            return q / total if total > 0 else np.zeros_like(q)

    # ------------------------------------------------------------------------------ sampling

    def sample(self, num: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``num`` slots with replacement, with probability ``P(i)``.

        Args:
            num: batch size (>= 1).

        Returns:
            ``(slots, weights)``: slots int64 ``[num]`` (live, positive probability) and
            importance weights float32 ``[num]`` in ``(0, 1]``, batch-max normalised (see the
            class docstring).

        Raises:
            EmptyBufferError: no live slot has a positive priority.
        """
        num = check_int("num", num, 1)
        with self._lock:
            total = self._tree.total
            if self._live == 0 or not total > 0:
                raise EmptyBufferError(
                    "cannot sample: no live slot has a positive priority (add transitions first)"
                )
            r = torch.rand(num, generator=self._generator, dtype=torch.float64).numpy()
            if self._stratified:
                u = (np.arange(num, dtype=np.float64) + r) * (total / num)
            else:
                u = r * total
            leaves = self._tree.find(u)
            if self._stratified:
                leaves = leaves[torch.randperm(num, generator=self._generator).numpy()]
            slots = self._owner[leaves]
            q = self._tree.values(leaves)
            if self._beta == 0.0:
                weights = np.ones(num, dtype=np.float32)
            else:
                # (N P_i)^-beta / max_j (N P_j)^-beta == (min_j q_j / q_i)^beta: no overflow
                weights = ((q.min() / q) ** self._beta).astype(np.float32)
            return slots, weights

    def update_priorities(
        self, slots: ArrayLike, priorities: ArrayLike, *, skip_removed: bool = False
    ) -> int:
        """Set the raw priorities of ``slots`` (stored as ``(p + eps) ** alpha``).

        Args:
            slots: int64 ``[K]`` slot ids (e.g. from :meth:`sample`). If a slot appears more
                than once, its last priority wins.
            priorities: float ``[K]`` raw priorities, finite and ``>= 0`` (pass ``|TD error|``;
                negative values are refused rather than silently folded). Tensors on any device
                are accepted.
            skip_removed: ignore slots that were removed since they were sampled (a transition
                that left the buffer in the meantime) instead of raising.

        Returns:
            The number of entries applied (``K`` unless ``skip_removed`` dropped some).

        Raises:
            InvalidArgumentError: shapes differ; a priority is negative, NaN or infinite; a slot
                was never allocated, or was removed (without ``skip_removed``). Nothing is
                changed then.
        """
        s = _as_indices(slots, "slots")
        p = _as_values(priorities, "priorities")
        if s.shape != p.shape:
            raise InvalidArgumentError(
                f"slots and priorities must have the same length, got {s.size} and {p.size}"
            )
        if s.size == 0:
            return 0
        q = self._stored(p)
        if not np.isfinite(q).all() or q.max() > MAX_LEAF_VALUE:
            k = int(np.flatnonzero(~np.isfinite(q) | (q > MAX_LEAF_VALUE))[0])
            raise InvalidArgumentError(
                f"priority {float(p[k])!r} at position {k} is too large: (p + eps) ** alpha exceeds "
                f"{MAX_LEAF_VALUE:g}"
            )
        with self._lock:
            live = self._check_live(s, skip_removed=skip_removed)
            if not live.all():
                s, p, q = s[live], p[live], q[live]
                if s.size == 0:
                    return 0
            self._tree.update(self._leaves(s), q)
            self._max_raw = max(self._max_raw, float(p.max()))
            return int(s.size)
