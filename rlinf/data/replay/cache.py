"""The in-memory trajectory store: an append-only arena of column chunks with FIFO eviction.

Trajectories are copied, flattened to ``[T * B, ...]`` rows, into the tail *chunk* of the arena:
one preallocated tensor per column, sized for several trajectories. Chunks are allocated as
data arrives (growing geometrically up to ``chunk_bytes``), never for slots the cache does not
hold, and dropped as soon as every trajectory in them has been evicted. Rows of a chunk are
never overwritten, so views handed to the background writer stay valid.

The cached trajectories are always the most recent ones (a suffix of the index order), which lets
the sampler map index positions to arena rows with arrays instead of per-row lookups.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .schema import Schema
from .trajectory import Key

DEFAULT_CHUNK_BYTES = 256 << 20
_FIRST_CHUNK_BYTES = 4 << 20


@dataclass
class _Chunk:
    columns: dict[Key, torch.Tensor]
    capacity: int
    used: int = 0
    live: int = 0


@dataclass
class _Slot:
    trajectory_id: int
    chunk: int
    start: int
    rows: int
    nbytes: int


class TrajectoryCache:
    """FIFO store of the most recent trajectories, bounded in trajectories and/or bytes.

    Args:
        max_trajectories: keep at most this many (``None``: unbounded).
        max_bytes: keep at most this many bytes of rows (``None``: unbounded). The newest
            trajectory is always kept, even if it alone exceeds the bound.
        chunk_bytes: largest chunk allocation, in bytes.
    """

    def __init__(
        self,
        max_trajectories: int | None,
        max_bytes: int | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        self.max_trajectories = max_trajectories
        self.max_bytes = max_bytes
        self.chunk_bytes = chunk_bytes
        self._chunks: dict[int, _Chunk] = {}
        self._next_chunk = 0
        self._tail: int | None = None
        self._slots: deque[_Slot] = deque()
        self._by_id: dict[int, _Slot] = {}
        self._bytes = 0
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    # -- size ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, trajectory_id: object) -> bool:
        return trajectory_id in self._by_id

    @property
    def nbytes(self) -> int:
        """Bytes of rows held (not counting unused chunk capacity)."""
        return self._bytes

    @property
    def allocated_bytes(self) -> int:
        """Bytes of chunk capacity allocated (pages are committed as rows are written)."""
        return sum(
            sum(t.numel() * t.element_size() for t in c.columns.values()) for c in self._chunks.values()
        )

    def ids(self) -> list[int]:
        """Cached trajectory ids, oldest first."""
        return [s.trajectory_id for s in self._slots]

    # -- writes -------------------------------------------------------------------------------
    def put(self, trajectory_id: int, flat: Mapping[Key, torch.Tensor], schema: Schema) -> list[int]:
        """Copy a flattened trajectory (``[N, ...]`` per column) in; return the ids evicted."""
        rows = int(next(iter(flat.values())).shape[0])
        chunk_no = self._chunk_for(rows, schema)
        chunk = self._chunks[chunk_no]
        start = chunk.used
        for key, dest in chunk.columns.items():
            dest[start : start + rows].copy_(flat[key])
        chunk.used += rows
        chunk.live += 1
        slot = _Slot(trajectory_id, chunk_no, start, rows, rows * schema.row_bytes)
        self._slots.append(slot)
        self._by_id[trajectory_id] = slot
        self._bytes += slot.nbytes
        self._arrays = None
        return self._evict_over_bounds()

    def _chunk_for(self, rows: int, schema: Schema) -> int:
        if self._tail is not None:
            tail = self._chunks[self._tail]
            if tail.capacity - tail.used >= rows:
                return self._tail
        row_bytes = max(1, schema.row_bytes)
        prev = self._chunks[self._tail].capacity * row_bytes if self._tail is not None else 0
        target = min(self.chunk_bytes, max(_FIRST_CHUNK_BYTES, 2 * prev))
        if self.max_bytes is not None:
            target = min(target, max(self.max_bytes, rows * row_bytes))
        capacity = max(rows, target // row_bytes)
        columns = {
            key: torch.empty((capacity, *spec.row_shape), dtype=spec.dtype) for key, spec in schema.items()
        }
        chunk_no = self._next_chunk
        self._next_chunk += 1
        self._chunks[chunk_no] = _Chunk(columns, capacity)
        if self._tail is not None and self._chunks[self._tail].live == 0:
            del self._chunks[self._tail]
        self._tail = chunk_no
        return chunk_no

    def _evict_over_bounds(self) -> list[int]:
        evicted = []
        while len(self._slots) > 1 and (
            (self.max_trajectories is not None and len(self._slots) > self.max_trajectories)
            or (self.max_bytes is not None and self._bytes > self.max_bytes)
        ):
            evicted.append(self.pop_oldest())
        if self.max_trajectories == 0 and self._slots:
            evicted.append(self.pop_oldest())
        return evicted

    def pop_oldest(self) -> int:
        """Evict the oldest trajectory; return its id."""
        slot = self._slots.popleft()
        del self._by_id[slot.trajectory_id]
        self._bytes -= slot.nbytes
        chunk = self._chunks[slot.chunk]
        chunk.live -= 1
        if chunk.live == 0 and slot.chunk != self._tail:
            del self._chunks[slot.chunk]
        self._arrays = None
        return slot.trajectory_id

    def clear(self) -> None:
        """Drop everything (memory is released once no view of it remains)."""
        self._chunks.clear()
        self._tail = None
        self._slots.clear()
        self._by_id.clear()
        self._bytes = 0
        self._arrays = None

    # -- reads --------------------------------------------------------------------------------
    def view(self, trajectory_id: int) -> dict[Key, torch.Tensor]:
        """The rows of one cached trajectory (views into the arena, ``[N, ...]`` per column)."""
        slot = self._by_id[trajectory_id]
        chunk = self._chunks[slot.chunk]
        return {k: v[slot.start : slot.start + slot.rows] for k, v in chunk.columns.items()}

    def slot_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(chunk_no, start_row)`` per cached trajectory, oldest first (int64 arrays)."""
        if self._arrays is None:
            chunks = np.fromiter((s.chunk for s in self._slots), np.int64, len(self._slots))
            starts = np.fromiter((s.start for s in self._slots), np.int64, len(self._slots))
            self._arrays = (chunks, starts)
        return self._arrays

    def gather_into(
        self,
        out: Mapping[Key, torch.Tensor],
        out_rows: np.ndarray | None,
        chunk_nos: np.ndarray,
        rows: np.ndarray,
    ) -> None:
        """Copy arena rows into ``out``: ``out[k][out_rows[i]] = chunk[chunk_nos[i]][k][rows[i]]``.

        One ``index_select`` per (chunk, column): no Python work per row. ``out_rows=None``
        means rows ``0..len(rows)-1`` in order.
        """
        present = np.unique(chunk_nos)
        for c in present.tolist():
            chunk = self._chunks[c]
            if len(present) == 1:
                sel_rows = torch.from_numpy(rows)
                dest = None if out_rows is None else torch.from_numpy(out_rows)
            else:
                mask = chunk_nos == c
                sel_rows = torch.from_numpy(rows[mask])
                pos = np.nonzero(mask)[0] if out_rows is None else out_rows[mask]
                dest = torch.from_numpy(pos)
            for key, src in chunk.columns.items():
                if dest is None:
                    torch.index_select(src, 0, sel_rows, out=out[key])
                else:
                    out[key].index_copy_(0, dest, src.index_select(0, sel_rows))
