"""The trajectory index: ids in insertion order, transition counts, the sampling window.

Appends and removals of the oldest trajectories are O(1) amortized; per-trajectory transition
counts live in a growable int64 array so the window's cumulative sums are a single ``cumsum``
over the window only (their cost does not grow with trajectories outside the window).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .directory import Record


class TrajectoryIndex:
    """Ordered trajectories of a buffer, oldest first."""

    def __init__(self) -> None:
        self._records: dict[int, Record] = {}
        self._ids = np.empty(64, dtype=np.int64)
        self._counts = np.empty(64, dtype=np.int64)
        # where rows live in a segment: (segment key, first row); -1 when not in a segment
        self._segs = np.empty(64, dtype=np.int64)
        self._rows = np.empty(64, dtype=np.int64)
        # whether a trajectory's data was checked against its checksum (or needs no check)
        self._checked = np.empty(64, dtype=np.bool_)
        self._updates = np.empty(64, dtype=np.int64)  # model_update_count per trajectory
        self._pos: dict[int, int] = {}  # trajectory id -> array position
        self._head = 0  # first live position in the arrays
        self._tail = 0  # one past the last
        self._total = 0
        self.version = 0  # bumped on every change (invalidates cached windows)
        self._window_key: tuple[int, int] | None = None
        self._window: tuple[np.ndarray, np.ndarray, int] | None = None
        self._locations: tuple[tuple[int, int], np.ndarray, np.ndarray] | None = None
        self._checked_window: tuple[tuple[int, int], np.ndarray] | None = None
        self._updates_window: tuple[tuple[int, int], np.ndarray] | None = None

    def __len__(self) -> int:
        return self._tail - self._head

    def __contains__(self, trajectory_id: object) -> bool:
        return trajectory_id in self._records

    def __iter__(self) -> Iterator[Record]:
        for tid in self._ids[self._head : self._tail].tolist():
            yield self._records[tid]

    def __getitem__(self, trajectory_id: int) -> Record:
        return self._records[trajectory_id]

    @property
    def total_transitions(self) -> int:
        """Sum of ``T * B`` over indexed trajectories."""
        return self._total

    def ids(self) -> np.ndarray:
        """Indexed ids, oldest first (a copy)."""
        return self._ids[self._head : self._tail].copy()

    def append(self, record: Record, segment: int = -1, checked: bool = True) -> None:
        """Add the newest trajectory.

        Args:
            record: the trajectory.
            segment: key of the segment holding its rows (-1: none).
            checked: its data needs no checksum check before it is read (see
                :meth:`window_checked`).
        """
        if record.trajectory_id in self._records:
            raise KeyError(f"trajectory {record.trajectory_id} is already indexed")
        if self._tail == len(self._ids):
            self._grow()
        self._ids[self._tail] = record.trajectory_id
        self._counts[self._tail] = record.num_transitions
        self._segs[self._tail] = segment
        self._rows[self._tail] = record.row if segment >= 0 and record.row is not None else -1
        self._checked[self._tail] = checked
        self._updates[self._tail] = record.model_update_count
        self._pos[record.trajectory_id] = self._tail
        self._tail += 1
        self._records[record.trajectory_id] = record
        self._total += record.num_transitions
        self.version += 1

    def _grow(self) -> None:
        live = self._tail - self._head
        size = max(64, 2 * live)
        ids = np.empty(size, dtype=np.int64)
        counts = np.empty(size, dtype=np.int64)
        ids[:live] = self._ids[self._head : self._tail]
        counts[:live] = self._counts[self._head : self._tail]
        segs, rows = np.empty(size, dtype=np.int64), np.empty(size, dtype=np.int64)
        segs[:live] = self._segs[self._head : self._tail]
        rows[:live] = self._rows[self._head : self._tail]
        checked = np.empty(size, dtype=np.bool_)
        checked[:live] = self._checked[self._head : self._tail]
        updates = np.empty(size, dtype=np.int64)
        updates[:live] = self._updates[self._head : self._tail]
        self._pos = {tid: p - self._head for tid, p in self._pos.items()}
        self._ids, self._counts, self._head, self._tail = ids, counts, 0, live
        self._segs, self._rows, self._checked, self._updates = segs, rows, checked, updates

    def set_location(self, trajectory_id: int, segment: int, row: int) -> None:
        """Record that a trajectory's rows now live in segment ``segment`` from ``row`` on."""
        p = self._pos[trajectory_id]
        self._segs[p], self._rows[p] = segment, row
        self._locations = None

    def window_locations(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """``(segment key, first row)`` per window trajectory, oldest first (-1: not in one)."""
        n = len(self)
        w = n if size <= 0 else min(size, n)
        key = (self.version, w)
        if self._locations is None or self._locations[0] != key:
            lo = self._tail - w
            self._locations = (key, self._segs[lo : self._tail].copy(), self._rows[lo : self._tail].copy())
        return self._locations[1], self._locations[2]

    def window_checked(self, size: int) -> np.ndarray:
        """Per window trajectory, oldest first: whether its data may be read unchecked (bool)."""
        n = len(self)
        w = n if size <= 0 else min(size, n)
        key = (self.version, w)
        if self._checked_window is None or self._checked_window[0] != key:
            self._checked_window = (key, self._checked[self._tail - w : self._tail].copy())
        return self._checked_window[1]

    def window_updates(self, size: int) -> np.ndarray:
        """Per window trajectory, oldest first: its ``model_update_count`` (int64)."""
        n = len(self)
        w = n if size <= 0 else min(size, n)
        key = (self.version, w)
        if self._updates_window is None or self._updates_window[0] != key:
            self._updates_window = (key, self._updates[self._tail - w : self._tail].copy())
        return self._updates_window[1]

    def is_checked(self, trajectory_id: int) -> bool:
        """Whether a trajectory's data may be read without a checksum check."""
        return bool(self._checked[self._pos[trajectory_id]])

    def mark_checked(self, trajectory_id: int) -> None:
        """Record that a trajectory's data passed its checksum check."""
        self._checked[self._pos[trajectory_id]] = True
        self._checked_window = None

    def remove(self, trajectory_id: int) -> Record:
        """Remove one trajectory wherever it is (O(n): for the rare damaged trajectory)."""
        p = self._pos.pop(trajectory_id)
        for arr in (self._ids, self._counts, self._segs, self._rows, self._checked, self._updates):
            arr[p : self._tail - 1] = arr[p + 1 : self._tail].copy()
        self._tail -= 1
        for q in range(p, self._tail):
            self._pos[int(self._ids[q])] = q
        record = self._records.pop(trajectory_id)
        self._total -= record.num_transitions
        self.version += 1
        return record

    def pop_oldest(self) -> Record:
        """Remove and return the oldest trajectory."""
        if not len(self):
            raise IndexError("index is empty")
        tid = int(self._ids[self._head])
        self._head += 1
        del self._pos[tid]
        record = self._records.pop(tid)
        self._total -= record.num_transitions
        self.version += 1
        return record

    def clear(self) -> None:
        """Forget everything."""
        self.__init__()

    def window(self, size: int) -> tuple[np.ndarray, np.ndarray, int]:
        """The sampling window: the newest ``size`` trajectories (``size`` 0: all).

        Returns:
            ``(ids, cumulative_ends, first_position)``: ids oldest first (int64), the cumulative
            transition counts (int64, last element = transitions in the window), and the
            position of the window's first trajectory among all indexed ones.
        """
        n = len(self)
        w = n if size <= 0 else min(size, n)
        key = (self.version, w)
        if self._window_key != key or self._window is None:
            lo = self._tail - w
            ids = self._ids[lo : self._tail].copy()
            ends = np.cumsum(self._counts[lo : self._tail])
            self._window = (ids, ends, n - w)
            self._window_key = key
        return self._window
