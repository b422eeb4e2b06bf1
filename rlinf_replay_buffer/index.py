"""The trajectory index: which trajectories the buffer holds, in order, and where their rows live.

This module is the one home of "where is trajectory ``t``": each trajectory has an immutable
:class:`~.record.Record` (its shape, and its file or segment rows on disk, if any), and the
index derives from it, once, as the record enters (:meth:`TrajectoryIndex.append`) or moves
(:meth:`TrajectoryIndex.relocate`), the per-trajectory numbers the hot path needs: transition
count, segment key and first row, ``model_update_count``, ``B``. They are kept in growable int64
arrays, so the sampling :class:`Window` is a handful of array slices and one ``cumsum`` over the
window only (its cost does not grow with trajectories outside it). Appends and removals of the
oldest trajectory are O(1) amortized.

Whether a trajectory's rows are also in memory (the ring or a pending write) is the row store's
knowledge (:mod:`.store`), not the index's. A trajectory kept in a file (``pt``/``pkl``) may also
have a *sampling copy* of its rows in a private segment (:mod:`.sampling_copy`), which the row
store makes and tells the index about (:meth:`TrajectoryIndex.set_copy`): the window then
locates its rows there, exactly like rows of the ``segment`` format.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .record import Record
from .record_table import RecordTable

_COLUMNS = ("ids", "counts", "segs", "rows", "updates", "envs")


@dataclass(frozen=True)
class Window:
    """The sampling window: the newest trajectories, oldest first. Arrays are private copies.

    Attributes:
        ids: trajectory ids, int64 ``[W]``.
        ends: cumulative transition counts, int64 ``[W]`` (``ends[-1]`` = transitions in it).
        first: position of the window's first trajectory among all indexed ones.
        segments: segment key of each trajectory's rows, int64 ``[W]`` (-1: not in a segment);
            :meth:`TrajectoryIndex.segment` names the segment of a key. For a file-backed
            trajectory with a sampling copy, the copy's segment.
        first_rows: first row of each trajectory in its segment, int64 ``[W]`` (-1: none).
        updates: ``model_update_count`` of each trajectory, int64 ``[W]``.
        envs: ``B`` of each trajectory, int64 ``[W]``.
        key: ``(index version, W)``: equal keys mean the same trajectories (for caches derived
            from them; a relocation keeps the key).
    """

    ids: np.ndarray
    ends: np.ndarray
    first: int
    segments: np.ndarray
    first_rows: np.ndarray
    updates: np.ndarray
    envs: np.ndarray
    key: tuple[int, int]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def total(self) -> int:
        """Transitions in the window."""
        return int(self.ends[-1]) if len(self.ends) else 0

    @property
    def counts(self) -> np.ndarray:
        """Transitions per trajectory, int64 ``[W]``."""
        return np.diff(self.ends, prepend=0)

    @property
    def begins(self) -> np.ndarray:
        """Window-flat number of each trajectory's first transition, int64 ``[W]``."""
        return self.ends - self.counts


class TrajectoryIndex:
    """Ordered trajectories of a buffer, oldest first, with where their rows live."""

    def __init__(self) -> None:
        self._records: dict[int, Record] = {}  # records placed, or built from a table once asked for
        self._tables: list[RecordTable] = []  # records added in bulk (:meth:`extend`), built lazily
        self._arrays = {name: np.empty(64, dtype=np.int64) for name in _COLUMNS}
        # whether a trajectory's data was checked against its checksum (or needs no check)
        self._checked = np.empty(64, dtype=np.bool_)
        self._pos: dict[int, int] = {}  # trajectory id -> array position
        self._head = 0  # first live position in the arrays
        self._tail = 0  # one past the last
        self._total = 0
        self._segments: list[tuple[str, str]] = []  # segment key -> (directory, segment name)
        self._segment_keys: dict[tuple[str, str], int] = {}
        self._copies: dict[int, tuple[tuple[str, str], int]] = {}  # id -> sampling copy's (segment, row)
        self.version = 0  # bumped when trajectories come or go (derived caches key on it)
        self._window: Window | None = None
        self._checked_window: tuple[tuple[int, int], np.ndarray] | None = None

    def __len__(self) -> int:
        return self._tail - self._head

    def __contains__(self, trajectory_id: object) -> bool:
        return trajectory_id in self._pos

    def __iter__(self) -> Iterator[Record]:
        for tid in self._arrays["ids"][self._head : self._tail].tolist():
            yield self[tid]

    def __getitem__(self, trajectory_id: int) -> Record:
        record = self._records.get(trajectory_id)
        if record is not None:
            return record
        if trajectory_id in self._pos:
            for table in self._tables:
                record = table.by_id(trajectory_id)
                if record is not None:
                    self._records[trajectory_id] = record
                    return record
        raise KeyError(trajectory_id)

    @property
    def total_transitions(self) -> int:
        """Sum of ``T * B`` over indexed trajectories."""
        return self._total

    def ids(self) -> np.ndarray:
        """Indexed ids, oldest first (a copy)."""
        return self._arrays["ids"][self._head : self._tail].copy()

    def holds(self, record: Record) -> bool:
        """Whether ``record`` itself (not only its id) is the index's current record."""
        return self.get(record.trajectory_id) is record

    # -- changes ------------------------------------------------------------------------------
    def append(self, record: Record, checked: bool = True) -> None:
        """Add the newest trajectory.

        Args:
            record: the trajectory.
            checked: its data needs no checksum check before it is read (see
                :meth:`window_checked`).
        """
        if record.trajectory_id in self._pos:
            raise KeyError(f"trajectory {record.trajectory_id} is already indexed")
        if self._tail == len(self._checked):
            self._grow()
        p = self._tail
        self._arrays["ids"][p] = record.trajectory_id
        self._arrays["counts"][p] = record.num_transitions
        self._arrays["updates"][p] = record.model_update_count
        self._arrays["envs"][p] = record.num_envs
        self._checked[p] = checked
        self._pos[record.trajectory_id] = p
        self._tail += 1
        self._place(p, record)
        self._total += record.num_transitions
        self._changed()

    def extend(self, records: Sequence[Record], checked: np.ndarray) -> None:
        """Add trajectories, oldest first, after every indexed one: as :meth:`append` of each
        (``checked``: bool ``[n]``, its argument for each), in one go for a
        :class:`~.record_table.RecordTable`, whose records are then built only when asked for.
        """
        if not isinstance(records, RecordTable):
            for record, ok in zip(records, checked.tolist(), strict=True):
                self.append(record, checked=ok)
            return
        n = len(records)
        if not n:
            return
        ids = records.ids.tolist()
        if not self._pos.keys().isdisjoint(ids):
            raise KeyError("a trajectory is already indexed")
        if self._tail + n > len(self._checked):
            self._grow(n)
        at = slice(self._tail, self._tail + n)
        c = records.columns
        counts = records.transitions
        a = self._arrays
        a["ids"][at] = c.ids
        a["counts"][at] = counts
        a["updates"][at] = c.update_counts
        a["envs"][at] = c.num_envs
        segs = np.full(n, -1, dtype=np.int64)
        in_segment = c.rows >= 0
        if in_segment.any():  # as _place: a record's own segment rows (a new id has no copy)
            keys = np.full(len(c.file_names), -1, dtype=np.int64)
            for code in np.unique(c.files[in_segment]).tolist():
                keys[code] = self._segment_key((records.directory, c.file_names[code]))
            segs[in_segment] = keys[c.files[in_segment]]
        a["segs"][at] = segs
        a["rows"][at] = np.where(in_segment, c.rows, -1)
        self._checked[at] = checked
        self._pos.update(zip(ids, range(self._tail, self._tail + n), strict=True))
        self._tables.append(records)
        self._tail += n
        self._total += int(counts.sum())
        self._changed()

    def relocate(self, record: Record) -> None:
        """Replace the record of an indexed trajectory by ``record`` (same id and shape, its
        rows now elsewhere: a file written, rows appended to a segment, a checkpoint saved)."""
        old = self[record.trajectory_id]
        if old.num_transitions != record.num_transitions:
            raise ValueError(f"trajectory {record.trajectory_id} cannot change its shape when it moves")
        self._place(self._pos[record.trajectory_id], record)
        self._window = None  # same trajectories (``version`` stays), rows elsewhere

    def set_copy(self, trajectory_id: int, where: tuple[str, str] | None, row: int = -1) -> None:
        """Record (``where``: ``(directory, segment name)``, ``row``) or forget (``None``) the
        sampling copy of an indexed file-backed trajectory's rows."""
        if where is None:
            if self._copies.pop(trajectory_id, None) is None:
                return
        else:
            self._copies[trajectory_id] = (where, row)
        self._place(self._pos[trajectory_id], self[trajectory_id])
        self._window = None  # same trajectories (``version`` stays), rows elsewhere

    def has_copy(self, trajectory_id: int) -> bool:
        """Whether a trajectory's rows have a sampling copy."""
        return trajectory_id in self._copies

    def _place(self, p: int, record: Record) -> None:
        """The one place a record's location becomes the index's numbers."""
        where: tuple[str, str] | None = None
        row = -1
        if record.row is not None and record.directory is not None and record.file is not None:
            where, row = (record.directory, record.file), record.row
            self._copies.pop(record.trajectory_id, None)  # its own segment is as fast
        elif record.trajectory_id in self._copies:
            where, row = self._copies[record.trajectory_id]
        segment = -1 if where is None else self._segment_key(where)
        self._arrays["segs"][p] = segment
        self._arrays["rows"][p] = row if segment >= 0 else -1
        self._records[record.trajectory_id] = record

    def _segment_key(self, where: tuple[str, str]) -> int:
        """The key of segment ``where`` (``(directory, name)``), given once per segment."""
        key = self._segment_keys.get(where)
        if key is None:
            key = self._segment_keys[where] = len(self._segments)
            self._segments.append(where)
        return key

    def _grow(self, adding: int = 1) -> None:
        live = self._tail - self._head
        size = max(64, 2 * live, live + adding)
        for name, old in self._arrays.items():
            new = np.empty(size, dtype=np.int64)
            new[:live] = old[self._head : self._tail]
            self._arrays[name] = new
        checked = np.empty(size, dtype=np.bool_)
        checked[:live] = self._checked[self._head : self._tail]
        self._checked = checked
        self._pos = {tid: p - self._head for tid, p in self._pos.items()}
        self._head, self._tail = 0, live

    def _changed(self) -> None:
        self.version += 1
        self._window = None
        self._checked_window = None

    def get(self, trajectory_id: int) -> Record | None:
        """The record of ``trajectory_id``, or ``None`` if it is not indexed."""
        return self[trajectory_id] if trajectory_id in self._pos else None

    def remove(self, trajectory_id: int) -> Record:
        """Remove one trajectory wherever it is (O(1) for the oldest, else O(n))."""
        if len(self) and int(self._arrays["ids"][self._head]) == trajectory_id:
            return self.pop_oldest()
        record = self[trajectory_id]
        p = self._pos.pop(trajectory_id)
        for arr in (*self._arrays.values(), self._checked):
            arr[p : self._tail - 1] = arr[p + 1 : self._tail].copy()
        self._tail -= 1
        ids = self._arrays["ids"]
        for q in range(p, self._tail):
            self._pos[int(ids[q])] = q
        self._records.pop(trajectory_id, None)
        self._copies.pop(trajectory_id, None)
        self._total -= record.num_transitions
        self._changed()
        return record

    def pop_oldest(self) -> Record:
        """Remove and return the oldest trajectory."""
        if not len(self):
            raise IndexError("index is empty")
        tid = int(self._arrays["ids"][self._head])
        record = self[tid]
        self._head += 1
        del self._pos[tid]
        self._records.pop(tid, None)
        self._copies.pop(tid, None)
        self._total -= record.num_transitions
        self._changed()
        return record

    def clear(self) -> None:
        """Forget everything (segment keys too)."""
        self.__init__()

    # -- reads --------------------------------------------------------------------------------
    def segment(self, key: int) -> tuple[str, str]:
        """``(directory, segment name)`` of a segment key of :attr:`Window.segments`."""
        return self._segments[key]

    def is_checked(self, trajectory_id: int) -> bool:
        """Whether a trajectory's data may be read without a checksum check."""
        return bool(self._checked[self._pos[trajectory_id]])

    def mark_checked(self, trajectory_id: int) -> None:
        """Record that a trajectory's data passed its checksum check."""
        self._checked[self._pos[trajectory_id]] = True
        self._checked_window = None

    def window_checked(self, size: int) -> np.ndarray:
        """Per window trajectory, oldest first: whether its data may be read unchecked (bool)."""
        n = len(self)
        w = n if size <= 0 else min(size, n)
        key = (self.version, w)
        if self._checked_window is None or self._checked_window[0] != key:
            self._checked_window = (key, self._checked[self._tail - w : self._tail].copy())
        return self._checked_window[1]

    def window(self, size: int) -> Window:
        """The sampling window: the newest ``size`` trajectories (``size`` 0: all); built once
        per change of the index (a few array slices and one ``cumsum`` over the window)."""
        n = len(self)
        w = n if size <= 0 else min(size, n)
        key = (self.version, w)
        if self._window is None or self._window.key != key:
            lo, hi = self._tail - w, self._tail
            a = self._arrays
            self._window = Window(
                ids=a["ids"][lo:hi].copy(),
                ends=np.cumsum(a["counts"][lo:hi]),
                first=n - w,
                segments=a["segs"][lo:hi].copy(),
                first_rows=a["rows"][lo:hi].copy(),
                updates=a["updates"][lo:hi].copy(),
                envs=a["envs"][lo:hi].copy(),
                key=key,
            )
        return self._window
