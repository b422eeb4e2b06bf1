"""Reading the rows of window transitions, wherever they live: the in-memory ring, writes
still pending, memory-mapped ``pt``/``pkl`` files or segments; with the checksum check before a
trajectory's first read from disk. :class:`RowReader` is mixed into
:class:`~.buffer.TrajectoryReplayBuffer`, whose state it uses.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch

from . import checkpoint, formats
from .cache import scatter_rows
from .directory import Record, load_columns
from .errors import (
    CorruptBufferError,
    CorruptDataWarning,
    CorruptTrajectoryError,
)
from .trajectory import (
    Key,
    key_name,
    source_steps,
)

logger = logging.getLogger("rlinf_replay_buffer")
_READER_POOL = 64  # trajectory files kept mapped for reading


class RowReader:
    """Gathers rows of window transitions (mixed into the buffer)."""

    def _trajectory_column(self, record: Record, key: Key) -> torch.Tensor:
        """One column of a trajectory's aligned rows ``[T * B, ...]``, from memory or disk."""
        tid = record.trajectory_id
        data = self._unwritten.get(tid)
        if data is not None:
            return data[key]
        if self._cache is not None and tid in self._cache:
            return self._cache.view(tid)[key]
        if not self._index.is_checked(tid):
            self._check_trajectory(tid)
        n = record.num_transitions
        if record.fmt == formats.SEGMENT:
            assert self._schema is not None and record.file is not None and record.row is not None
            store = self._store_for(record.directory or "", self._schema)
            with checkpoint.reading(record):
                return store.columns(record.file, record.row + n)[key][record.row : record.row + n]
        tensor = self._read_raw(record)[key]
        src = source_steps(key, int(tensor.shape[0]), record.num_steps)
        return tensor[torch.from_numpy(src)].reshape(n, *tensor.shape[2:])

    def _drop_corrupt(self, exc: CorruptTrajectoryError) -> None:
        """Leave a damaged trajectory out of the buffer (``on_corrupt="skip"``); its file stays."""
        tid = exc.trajectory_id
        assert tid is not None
        record = self._index.remove(tid)
        if record.path is not None:
            self._readers.pop(record.path, None)
        self._corrupt_skipped += 1
        logger.warning("skipped damaged trajectory %d: %s", tid, exc)
        warnings.warn(f"skipped damaged trajectory {tid}: {exc}", CorruptDataWarning, stacklevel=4)

    def _check_trajectory(self, trajectory_id: int) -> None:
        """Check a trajectory's data against its checksum before its first read from disk."""
        record = self._index[trajectory_id]
        if trajectory_id not in self._unwritten and record.path is not None:
            store = None
            if record.fmt == formats.SEGMENT:
                assert self._schema is not None
                store = self._store_for(record.directory or "", self._schema)
            checkpoint.verify_record(record, store)
        self._index.mark_checked(trajectory_id)

    def _gather(self, ids: np.ndarray, ends: np.ndarray, flat: torch.Tensor) -> dict[Key, torch.Tensor]:
        """Rows of window transitions ``flat`` (int64 ``[N]``, numbered across the window).

        The cached part of the window is its newest trajectories, which are the newest rows of
        the cache: transition ``f`` of that part is cache row ``head - hit_rows + f``, so hits
        need no search at all. Misses (older window trajectories) are located with a binary
        search over the window's cumulative counts and read from pending writes or files.
        """
        cache = self._cache
        w = len(ids)
        cached_in_window = min(w, len(cache)) if cache is not None else 0
        misses_before = w - cached_in_window  # window positions [0, misses_before) are not cached
        miss_total = int(ends[misses_before - 1]) if misses_before else 0
        total = int(ends[-1])
        hit_rows = total - miss_total
        if cache is not None and miss_total == 0:
            return cache.gather(flat, cache.newest_rows_start(hit_rows), hit_rows)
        schema = self._schema
        assert schema is not None
        num = int(flat.shape[0])
        out = {k: torch.empty((num, *s.row_shape), dtype=s.dtype) for k, s in schema.items()}
        hit = flat >= miss_total
        dest_hit = torch.nonzero(hit).flatten()
        if cache is not None and len(dest_hit):
            offsets = flat[dest_hit] - miss_total
            cache.gather_into(out, dest_hit, offsets, cache.newest_rows_start(hit_rows), hit_rows)
        where = torch.nonzero(~hit).flatten().numpy()
        if len(where):
            f = flat.numpy()[where]
            positions = np.searchsorted(ends, f, side="right")
            unchecked = ~self._index.window_checked(self._window_size)[positions]
            if unchecked.any():  # first read of these trajectories: check their checksums
                for p in np.unique(positions[unchecked]).tolist():
                    self._check_trajectory(int(ids[p]))
            rows = f - (ends - np.diff(ends, prepend=0))[positions]
            segs, firsts = self._index.window_locations(self._window_size)
            seg_of = segs[positions]
            located = seg_of >= 0
            if located.all():
                self._gather_segments(out, seg_of, firsts[positions] + rows, where)
            else:
                if located.any():
                    sel = np.flatnonzero(located)
                    self._gather_segments(out, seg_of[sel], firsts[positions[sel]] + rows[sel], where[sel])
                    rest = np.flatnonzero(~located)
                    positions, rows, where = positions[rest], rows[rest], where[rest]
                self._gather_misses(out, ids, positions, rows, where)
        return out

    def _gather_segments(
        self, out: dict[Key, torch.Tensor], segs: np.ndarray, rows: np.ndarray, dest_rows: np.ndarray
    ) -> None:
        """``out[k][dest_rows[i]]`` = row ``rows[i]`` of segment ``segs[i]``: one
        ``index_select`` per (segment, column) over the memory-mapped column files."""
        schema = self._schema
        assert schema is not None
        present = np.unique(segs).tolist()
        whole = len(present) == 1 and len(dest_rows) == len(next(iter(out.values())))
        for s in present:
            sel = slice(None) if len(present) == 1 else np.flatnonzero(segs == s)
            directory, name = self._segments[s]
            r = rows[sel]
            store = self._store_for(directory, schema)
            cols = store.columns(name, int(r.max()) + 1)
            idx = torch.from_numpy(r)
            if whole and np.array_equal(dest_rows, np.arange(len(dest_rows))):
                for key in out:
                    out[key] = torch.index_select(cols[key], 0, idx)
                store.note_read()
                return
            dest = dest_rows[sel]
            for key in out:
                scatter_rows(out[key], dest, torch.index_select(cols[key], 0, idx))
            store.note_read()

    def _gather_misses(
        self,
        out: dict[Key, torch.Tensor],
        ids: np.ndarray,
        positions: np.ndarray,
        rows: np.ndarray,
        dest_rows: np.ndarray,
    ) -> None:
        """``out[k][dest_rows[i]]`` = row ``rows[i]`` of window trajectory ``positions[i]``,
        read from pending writes or files: one group of array operations per trajectory."""
        order = np.argsort(positions, kind="stable")
        pos_sorted = positions[order]
        bounds = np.flatnonzero(np.diff(pos_sorted)) + 1
        for group in np.split(order, bounds):
            tid = int(ids[positions[group[0]]])
            dest = dest_rows[group]
            local = rows[group]
            data = self._unwritten.get(tid)
            if data is not None:
                sel = torch.from_numpy(local)
                for key, tensor in data.items():
                    scatter_rows(out[key], dest, tensor.index_select(0, sel))
                continue
            record = self._index[tid]
            raw = self._read_raw(record)
            b = record.num_envs
            t, env = local // b, local % b
            for key in out:
                tensor = raw[key]
                src = source_steps(key, int(tensor.shape[0]), record.num_steps)[t] * b + env
                flat = tensor.reshape(-1, *tensor.shape[2:])
                scatter_rows(out[key], dest, flat.index_select(0, torch.from_numpy(src)))

    def _read_raw(self, record: Record) -> dict[Key, torch.Tensor]:
        path = record.path
        if path is None:
            raise CorruptBufferError(f"trajectory {record.trajectory_id} has neither data nor file")
        raw = self._readers.get(path)
        if raw is None:
            with checkpoint.reading(record):
                raw = load_columns(record, mmap=True)
            schema = self._schema
            assert schema is not None
            missing = [key_name(k) for k in schema if k not in raw]
            if missing:
                raise CorruptBufferError(f"{path}: lacks fields {missing} that the buffer holds")
            self._readers[path] = raw
            if len(self._readers) > _READER_POOL:
                self._readers.popitem(last=False)
        else:
            self._readers.move_to_end(path)
        return raw
