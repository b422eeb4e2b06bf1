"""The in-memory trajectory store: one ring of rows per column, in reserved address space.

Trajectories are flattened to ``[T * B, ...]`` rows and appended to a ring: one tensor per column
``[capacity, *row_shape]`` over an anonymous private ``mmap`` reserved with ``MAP_NORESERVE``, so
nothing is committed up front: pages are committed as rows are first written.

Sizing. A cache bounded in trajectories gets a ring of ``max_trajectories`` times the rows of the
first trajectory, and grows (doubling, copying the live rows once) only if longer trajectories
arrive; a cache bounded in bytes gets exactly ``max_bytes`` of rows. A bounded ring wraps around
and rewrites pages it already owns, so steady-state adds cost one copy and no page faults, and
resident memory stays at the bound. An unbounded cache reserves the machine's physical memory
and appends; when that is full the oldest trajectories are evicted.

Addressing. Rows have a *virtual row number* that only grows; the ring row is ``v % capacity``.
Cached trajectories are the most recent ones (a suffix of the index order) and occupy one
contiguous virtual range, so the ``k`` newest cached trajectories are exactly the virtual rows
``[head - rows_of_those_k, head)``: a sampled transition number maps to a ring row with one add
and at most one modulo, and each column is gathered with a single ``index_select``.

A trajectory that crosses the end of the ring is stored in two pieces; :meth:`TrajectoryCache.view`
returns a copy for it and a view otherwise.

Observations stored once (:mod:`.dedup`). A ``next_obs`` column paired with its ``curr_obs``
column holds no rows in the ring: it is a column of source numbers (int64, one per row), each a
row of the paired ``curr_obs`` tensor, which has ``2 * capacity`` rows: ``[0, capacity)`` is its
ring, ``[capacity, 2 * capacity)`` the *spill ring* of the ``next_obs`` rows that must be kept
(the last ``B`` rows of each trajectory and those that differ from ``curr_obs`` one step later).
Row ``r`` of a trajectory points at ``curr_obs`` ring row ``r + B`` or at its kept row in the
spill ring, so a gather is two ``index_select`` calls (the sources, then the rows) with no mask.
The spill ring has its own virtual row numbers and is filled and evicted in step with the
trajectories (a trajectory keeps at most its own rows, so it never overflows); its pages are
committed only where written. A read of a whole trajectory rebuilds ``next_obs`` in full.
"""

from __future__ import annotations

import mmap
import os
import sys
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from .dedup import SOURCE_BYTES, Pair, kept_mask, pairs_of, stored_row_bytes
from .prefault import AHEAD_BYTES, MIN_AHEAD_BYTES, PREFAULTER
from .schema import Schema
from .trajectory import Key

_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform.startswith("linux") else 0)
_PAGE = mmap.PAGESIZE


def physical_memory_bytes() -> int:
    """Bytes of physical memory of this machine (a conservative 16 GiB if unknown)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16 << 30


Pin = dict[int, "dict[Key, torch.Tensor] | None"]
"""Trajectory id -> its rows copied out at eviction (``None`` while still in the ring)."""


def _np(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor (bfloat16 viewed as int16, which numpy lacks)."""
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()


def scatter_rows(out: torch.Tensor, dest: np.ndarray, src: torch.Tensor) -> None:
    """``out[dest[i]] = src[i]`` for whole rows.

    Done with numpy fancy assignment, which copies each row with one ``memcpy``; torch's
    ``index_copy_`` walks elements and is several times slower for image-sized rows.
    """
    _np(out)[dest] = _np(src)


@dataclass
class _Slot:
    trajectory_id: int
    vstart: int  # virtual row of the first transition
    rows: int
    nbytes: int
    envs: int = 0  # B (0: unknown; every next_obs row is then kept)
    spills: dict[Key, int] = field(default_factory=dict)  # paired next_obs -> spill virtual row


class _Column:
    """One column's ring: a ``[capacity, *row_shape]`` tensor over reserved memory (``ring``);
    with ``spill``, ``tensor`` has ``capacity`` more rows after it for a paired ``next_obs``."""

    def __init__(
        self,
        capacity: int,
        dtype: torch.dtype,
        row_shape: tuple[int, ...],
        row_bytes: int,
        spill: bool = False,
    ):
        self.row_bytes = row_bytes
        self.map: mmap.mmap | None = None
        rows = 2 * capacity if spill else capacity
        if row_bytes == 0:
            self.tensor = torch.empty((rows, *row_shape), dtype=dtype)
            self.ring = self.tensor[:capacity]
            self.length = 0
            return
        self.length = -(-rows * row_bytes // _PAGE) * _PAGE
        self.map = mmap.mmap(-1, self.length, flags=mmap.MAP_PRIVATE | _MAP_NORESERVE)
        # numpy keeps a buffer export on the map, so it can never be unmapped under a tensor
        raw = torch.from_numpy(np.frombuffer(self.map, dtype=np.uint8))
        self.tensor = raw[: rows * row_bytes].view(dtype).view(rows, *row_shape)
        self.ring = self.tensor[:capacity]


class TrajectoryCache:
    """FIFO store of the most recent trajectories, bounded in trajectories and/or bytes.

    Args:
        max_trajectories: keep at most this many (``None``: unbounded).
        max_bytes: keep at most this many bytes of rows (``None``: unbounded). The newest
            trajectory is always kept, even if it alone exceeds the bound.
        reserve_bytes: address space to reserve for the ring (virtual, not committed);
            default ``max_bytes`` if set, else the machine's physical memory. The ring always
            fits the newest trajectory; when it is full the oldest trajectories are evicted.
        start_row: ring row where the first trajectory goes (negative: from the end). Any
            value behaves the same; tests use one near the end to exercise wrapping.
        dedup: store paired ``next_obs`` columns as references to ``curr_obs`` rows where they
            are equal (:mod:`.dedup`); reads are the same either way.

    Byte counts (``nbytes``, the ``max_bytes`` bound, and ``reserve_bytes`` as a bound on the
    bytes held) count what the ring really holds: source numbers and kept rows, not the
    ``next_obs`` rows read from ``curr_obs``.
    """

    def __init__(
        self,
        max_trajectories: int | None,
        max_bytes: int | None = None,
        reserve_bytes: int | None = None,
        start_row: int = 0,
        dedup: bool = True,
    ) -> None:
        self.start_row = start_row
        self.max_trajectories = max_trajectories
        self.max_bytes = max_bytes
        self.reserve_bytes = reserve_bytes
        self.dedup = dedup
        self._pairs: tuple[Pair, ...] = ()  # (curr_obs, next_obs) columns stored once
        self._partner: dict[Key, Key] = {}  # paired next_obs -> its curr_obs
        self._spill_heads: dict[Key, int] = {}  # paired next_obs -> spill virtual row one past the newest
        self._physical: int | None = None
        self._columns: dict[Key, _Column] = {}
        self._capacity = 0
        self._head = 0  # virtual row one past the newest
        self._tail = 0  # virtual row of the oldest live row
        self._ahead = 0  # virtual row up to which ring pages were committed or asked to be
        self._commit_end = 0  # virtual row from which every ring page has been committed once
        self._slots: deque[_Slot] = deque()
        self._by_id: dict[int, _Slot] = {}
        self._bytes = 0
        self._pins: list[Pin] = []

    # -- size ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, trajectory_id: object) -> bool:
        return trajectory_id in self._by_id

    @property
    def nbytes(self) -> int:
        """Bytes of rows held."""
        return self._bytes

    @property
    def rows(self) -> int:
        """Rows (transitions) held."""
        return self._head - self._tail

    @property
    def capacity(self) -> int:
        """Rows the ring can hold before evicting (0 until the first trajectory)."""
        return self._capacity

    @property
    def reserved_bytes(self) -> int:
        """Address space reserved for the ring (virtual; only written pages are resident)."""
        return sum(c.length for c in self._columns.values())

    def ids(self) -> list[int]:
        """Cached trajectory ids, oldest first."""
        return [s.trajectory_id for s in self._slots]

    # -- writes -------------------------------------------------------------------------------
    def put(
        self, trajectory_id: int, flat: Mapping[Key, torch.Tensor], schema: Schema, envs: int = 0
    ) -> list[int]:
        """Copy a flattened trajectory (``[N, ...]`` per column, ``N = T * B``, ``envs = B``; 0:
        unknown) in; return the ids evicted.

        Evictions happen before the copy, so rows of evicted trajectories are only overwritten
        after they have left the cache (pinned ones are copied out first).
        """
        rows = int(next(iter(flat.values())).shape[0])
        pairs = self._pairs if self._columns else pairs_of(schema, self.dedup)
        kept = {nxt: kept_mask(flat[nxt], flat[curr], envs) for curr, nxt in pairs}
        counts = {key: rows if mask is None else int(np.count_nonzero(mask)) for key, mask in kept.items()}
        nbytes = rows * stored_row_bytes(schema, pairs) + sum(
            c * schema[k].row_bytes for k, c in counts.items()
        )
        if not self._columns:
            self._pairs = pairs
            self._reserve(self._initial_capacity(rows, schema), schema)
        evicted = self._evict_over_bounds(incoming=1, incoming_bytes=nbytes)
        budget = self._budget_bytes()
        while self._slots and self._bytes + nbytes > budget:
            evicted.append(self.pop_oldest())
        while self._head + rows - self._tail > self._capacity:
            budget = self._budget_rows(schema)
            if self._capacity < max(budget, rows):
                needed = self._head + rows - self._tail
                self._grow(min(max(budget, rows), max(2 * self._capacity, needed)), schema)
            else:
                evicted.append(self.pop_oldest())
        slot = _Slot(trajectory_id, self._head, rows, nbytes, envs, {k: self._spill_heads[k] for k in kept})
        self._write(self._columns, self._capacity, slot, flat, kept)
        for key, count in counts.items():
            self._spill_heads[key] += count
        self._head += rows
        self._commit_ahead(schema, rows)
        self._slots.append(slot)
        self._by_id[trajectory_id] = slot
        self._bytes += nbytes
        return evicted

    def _budget_bytes(self) -> int:
        """Most bytes the ring may hold: the explicit reservation, the byte bound, or RAM."""
        if self.reserve_bytes or self.max_bytes:
            return self.reserve_bytes or self.max_bytes or 0
        if self._physical is None:
            self._physical = physical_memory_bytes()
        return self._physical

    def _budget_rows(self, schema: Schema) -> int:
        """Most rows the ring may hold (rows as stored: paired ``next_obs`` rows held as
        source numbers; the spill rings hold at most as many rows again, reserved alongside)."""
        return self._budget_bytes() // max(1, stored_row_bytes(schema, self._pairs))

    def _initial_capacity(self, rows: int, schema: Schema) -> int:
        budget = max(rows, self._budget_rows(schema))
        if self.reserve_bytes is None and self.max_bytes is None and self.max_trajectories:
            return min(budget, self.max_trajectories * rows)
        return budget

    def _write(
        self,
        columns: dict[Key, _Column],
        capacity: int,
        slot: _Slot,
        rows: Mapping[Key, torch.Tensor],
        kept: Mapping[Key, np.ndarray | None],
    ) -> None:
        """Copy a slot's ``rows`` (``[N, ...]`` per column) to its virtual rows; a paired
        ``next_obs`` column gets source numbers, and its ``kept`` rows (bool ``[N]``; ``None``:
        all) go to the spill ring from the slot's spill row on."""
        n = slot.rows
        for key, column in columns.items():
            curr = self._partner.get(key)
            if curr is None:
                _copy_wrapped(column.tensor, 0, capacity, slot.vstart, rows[key])
                continue
            x0, data, mask = slot.spills[key], rows[key], kept[key]
            if mask is None:  # stored whole: row r is spill row x0 + r
                sources = _ring_rows(x0, n, capacity, capacity)
            else:
                sources = _ring_rows(slot.vstart + slot.envs, n, capacity)
                keep = np.flatnonzero(mask)
                sources[keep] = _ring_rows(x0, len(keep), capacity, capacity)
                lo, hi = (int(keep[0]), int(keep[-1]) + 1) if len(keep) else (0, 0)
                if hi - lo == len(keep):
                    data = data[lo:hi]
                else:
                    data = data.index_select(0, torch.from_numpy(keep))
            if len(data):
                _copy_wrapped(columns[curr].tensor, capacity, capacity, x0, data)
            _copy_wrapped(column.tensor, 0, capacity, slot.vstart, torch.from_numpy(sources))

    def _reserve(self, capacity: int, schema: Schema) -> None:
        """Reserve an empty ring of ``capacity`` rows for the pairs set (nothing is committed yet)."""
        self._partner = {nxt: curr for curr, nxt in self._pairs}
        self._columns, self._capacity = self._new_columns(capacity, schema)
        self._head = self._tail = self.start_row % self._capacity
        self._ahead, self._commit_end = self._head, self._head + self._capacity
        self._spill_heads = dict.fromkeys(self._partner, self._head)

    def _commit_ahead(self, schema: Schema, rows: int) -> None:
        """Have the pages of the rows after the head committed in the background
        (:mod:`.prefault`): room for two more trajectories of ``rows`` rows (at least
        ``MIN_AHEAD_BYTES``, at most ``AHEAD_BYTES``), asked for again once less than half of
        that is left, until every page of the ring has been committed once."""
        row_bytes = max(1, schema.row_bytes)
        ahead = min(max(2 * rows, MIN_AHEAD_BYTES // row_bytes), max(1, AHEAD_BYTES // row_bytes))
        lo = max(self._ahead, self._head)
        hi = min(self._head + ahead, self._commit_end)
        if hi <= lo or (lo - self._head >= ahead // 2 and hi < self._commit_end):
            return
        self._ahead = hi
        start, count = lo % self._capacity, hi - lo
        first = min(count, self._capacity - start)
        spans = []
        for c in self._columns.values():
            if c.row_bytes:
                spans.append((c.tensor, start * c.row_bytes, first * c.row_bytes))
                if first < count:
                    spans.append((c.tensor, 0, (count - first) * c.row_bytes))
        PREFAULTER.submit(spans)

    def _new_columns(self, capacity: int, schema: Schema) -> tuple[dict[Key, _Column], int]:
        minimum = max(1, self._head - self._tail)
        spilled = set(self._partner.values())
        while True:
            try:
                columns = {
                    key: _Column(capacity, torch.int64, (), SOURCE_BYTES)
                    if key in self._partner
                    else _Column(capacity, spec.dtype, spec.row_shape, spec.row_bytes, key in spilled)
                    for key, spec in schema.items()
                }
                return columns, capacity
            except OSError:  # address space or commit limit: ask for less
                if capacity <= minimum:
                    raise MemoryError(
                        f"cannot reserve memory for {capacity} rows of {schema.row_bytes} bytes; "
                        "lower cache_size/cache_max_bytes or free memory"
                    ) from None
                capacity = max(minimum, capacity // 2)

    def _grow(self, capacity: int, schema: Schema) -> None:
        """Move the live rows to a larger ring (rare: only when longer trajectories arrive)."""
        columns, capacity = self._new_columns(capacity, schema)
        for slot in self._slots:
            rows = self._slot_rows(slot)
            kept: dict[Key, np.ndarray | None] = {
                nxt: self._rows_of(self._columns[nxt].ring, self._capacity, slot).numpy() >= self._capacity
                for nxt in self._partner
            }
            self._write(columns, capacity, slot, rows, kept)
        self._columns, self._capacity = columns, capacity
        self._ahead, self._commit_end = self._head, self._tail + capacity

    def _evict_over_bounds(self, incoming: int = 0, incoming_bytes: int = 0) -> list[int]:
        """Evict oldest trajectories until the bounds hold with ``incoming`` more added."""
        evicted = []
        while self._slots and (
            (
                self.max_trajectories is not None
                and len(self._slots) + incoming > max(1, self.max_trajectories)
            )
            or (self.max_bytes is not None and self._bytes + incoming_bytes > self.max_bytes)
        ):
            evicted.append(self.pop_oldest())
        return evicted

    def enforce_bounds(self) -> list[int]:
        """Evict until the (possibly lowered) bounds hold; return the ids evicted."""
        evicted = self._evict_over_bounds()
        if self.max_trajectories == 0:
            while self._slots:
                evicted.append(self.pop_oldest())
        return evicted

    def pop_oldest(self) -> int:
        """Evict the oldest trajectory; return its id."""
        slot = self._slots[0]
        for pin in self._pins:
            if slot.trajectory_id in pin and pin[slot.trajectory_id] is None:
                pin[slot.trajectory_id] = self._copy_out(slot)
        self._slots.popleft()
        del self._by_id[slot.trajectory_id]
        self._bytes -= slot.nbytes
        self._tail = self._slots[0].vstart if self._slots else self._head
        return slot.trajectory_id

    def clear(self) -> None:
        """Drop everything and the reservation (pinned trajectories are copied out first)."""
        while self._slots and self._pins:
            self.pop_oldest()
        self._columns = {}
        self._pairs, self._partner, self._spill_heads = (), {}, {}
        self._capacity = 0
        self._head = self._tail = 0
        self._slots.clear()
        self._by_id.clear()
        self._bytes = 0

    # -- snapshots ----------------------------------------------------------------------------
    def pin(self, trajectory_ids: list[int]) -> Pin:
        """Keep the rows of these trajectories readable while a snapshot is written.

        Returns a dict that :meth:`take` reads; trajectories evicted before they are taken are
        copied into it first. Call :meth:`unpin` when done.
        """
        pin: Pin = dict.fromkeys((t for t in trajectory_ids if t in self._by_id), None)
        self._pins.append(pin)
        return pin

    def take(self, pin: Pin, trajectory_id: int) -> dict[Key, torch.Tensor]:
        """A private copy of a pinned trajectory's rows (call under the owner's lock)."""
        rows = pin.get(trajectory_id)
        if rows is None:
            rows = self._copy_out(self._by_id[trajectory_id])
        pin.pop(trajectory_id, None)
        return rows

    def unpin(self, pin: Pin) -> None:
        """Stop tracking a pin."""
        self._pins = [p for p in self._pins if p is not pin]

    @property
    def open_pins(self) -> int:
        """Pins not yet unpinned (each may copy rows out on eviction until it is)."""
        return len(self._pins)

    # -- reads --------------------------------------------------------------------------------
    @staticmethod
    def _rows_of(ring: torch.Tensor, capacity: int, slot: _Slot) -> torch.Tensor:
        start = slot.vstart % capacity
        if start + slot.rows <= capacity:
            return ring[start : start + slot.rows]
        return torch.cat([ring[start:capacity], ring[: start + slot.rows - capacity]])

    def _slot_rows(self, slot: _Slot, keys: Iterable[Key] | None = None) -> dict[Key, torch.Tensor]:
        """A slot's rows per column (views where they are contiguous in the ring; paired
        ``next_obs`` rows rebuilt, new tensors)."""
        out = {}
        for key in self._columns if keys is None else keys:
            rows = self._rows_of(self._columns[key].ring, self._capacity, slot)
            curr = self._partner.get(key)
            out[key] = rows if curr is None else torch.index_select(self._columns[curr].tensor, 0, rows)
        return out

    def _copy_out(self, slot: _Slot) -> dict[Key, torch.Tensor]:
        return {k: v if k in self._partner else v.clone() for k, v in self._slot_rows(slot).items()}

    def view(self, trajectory_id: int, keys: Iterable[Key] | None = None) -> dict[Key, torch.Tensor]:
        """The rows of one cached trajectory, ``[N, ...]`` per column (``keys``: only those).

        A view into the ring (valid until the trajectory is evicted), or a copy when the
        trajectory wraps around the ring's end or the column is a paired ``next_obs`` (rebuilt
        from ``curr_obs`` and its kept rows).
        """
        return self._slot_rows(self._by_id[trajectory_id], keys)

    def newest_rows_start(self, rows: int) -> int:
        """Virtual row where the newest ``rows`` rows begin (``rows`` must end on a slot edge)."""
        return self._head - rows

    def gather(self, offsets: torch.Tensor, vstart: int, span: int) -> dict[Key, torch.Tensor]:
        """Rows ``vstart + offsets`` (virtual; ``offsets`` int64 ``[N]`` in ``[0, span)``).

        One ``index_select`` per column (two for a paired ``next_obs``: its sources, then their
        rows); returns ``{column: [N, *row_shape]}`` new tensors.
        """
        idx = self._ring_rows(offsets, vstart, span)
        return {k: self._select(k, c, idx) for k, c in self._columns.items()}

    def _select(self, key: Key, column: _Column, idx: torch.Tensor) -> torch.Tensor:
        """Ring rows ``idx`` of one column; of a paired ``next_obs``: its sources' rows."""
        curr = self._partner.get(key)
        if curr is None:
            return torch.index_select(column.ring, 0, idx)
        return torch.index_select(self._columns[curr].tensor, 0, torch.index_select(column.ring, 0, idx))

    def _ring_rows(self, offsets: torch.Tensor, vstart: int, span: int) -> torch.Tensor:
        lo = vstart % self._capacity
        idx = offsets + lo if lo else offsets
        if lo + span > self._capacity:
            idx = idx.remainder(self._capacity)
        return idx

    def gather_into(
        self,
        out: Mapping[Key, torch.Tensor],
        dest: torch.Tensor,
        offsets: torch.Tensor,
        vstart: int,
        span: int,
    ) -> None:
        """``out[k][dest[i]] = row vstart + offsets[i]`` for every column (no per-row Python work)."""
        idx = self._ring_rows(offsets, vstart, span)
        dest_np = dest.numpy()
        for key, column in self._columns.items():
            scatter_rows(out[key], dest_np, self._select(key, column, idx))


def _ring_rows(vstart: int, n: int, capacity: int, offset: int = 0) -> np.ndarray:
    """``offset + (vstart + i) % capacity`` for ``i`` in ``[0, n)`` (``n <= capacity``), int64."""
    start = vstart % capacity
    first = min(n, capacity - start)
    out = np.arange(offset + start, offset + start + n, dtype=np.int64)
    if first < n:
        out[first:] -= capacity
    return out


def _copy_wrapped(tensor: torch.Tensor, offset: int, capacity: int, vstart: int, rows: torch.Tensor) -> None:
    """Copy ``rows`` to virtual rows ``[vstart, vstart + N)`` of the ring of ``capacity`` rows
    that starts at row ``offset`` of ``tensor`` (wrapping around its end)."""
    n = int(rows.shape[0])
    start = offset + vstart % capacity
    first = min(n, offset + capacity - start)
    if first == n:
        tensor[start : start + n].copy_(rows)
        return
    tensor[start : start + first].copy_(rows[:first])
    tensor[offset : offset + n - first].copy_(rows[first:])
