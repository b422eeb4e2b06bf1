"""The row store: answers "give me these rows", wherever they live.

:class:`RowStore` owns every place a trajectory's aligned rows ``[T * B, ...]`` can be read from:

* the in-memory ring (:class:`~.cache.TrajectoryCache`): the newest trajectories;
* pending rows: trajectories handed to the auto-saver whose files are not written yet;
* on disk: memory-mapped ``pt``/``pkl`` files (a pool of open mappings) and segments
  (:class:`~.formats.segment.SegmentStore`, one per directory; the auto-save directory's is the
  auto-saver's own, given through ``own_segments``).

It also owns the buffer's :class:`~.schema.Schema` (the columns every row has) and the
checksum check before a trajectory's first read from disk. Where a trajectory's disk rows are
comes from the index (:mod:`.index`), computed once there; which of the window's trajectories
are in the ring needs no lookup at all: the ring holds a suffix of the index order.

The module's functions read one record from disk, checked: :func:`read_rows`,
:func:`verify_record`, :func:`reading`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator

import numpy as np
import torch

from . import formats
from .cache import Pin, TrajectoryCache, scatter_rows
from .directory import load_columns
from .errors import (
    BufferNotFoundError,
    CorruptBufferError,
    CorruptDataWarning,
    CorruptTrajectoryError,
    UnsafeFileError,
)
from .formats.segment import SegmentStore, file_resident_bytes
from .index import TrajectoryIndex, Window
from .integrity import file_limit, mismatch, verify_file, verify_rows
from .record import Record
from .sampling_copy import SamplingCopy, give_up
from .schema import Schema, combine
from .trajectory import AlignedTrajectory, Key, key_name, source_steps

logger = logging.getLogger("rlinf_replay_buffer")
_READER_POOL = 64  # trajectory files kept open for reading
_READER_BYTES = 256 << 20  # bytes of files read whole (pkl) kept open, at most
#: File-backed bytes the open trajectory files may add to this process's resident memory before
#: they are closed (the kernel maps whole large folios, often 2 MiB, per row read through a
#: mapping; closing unmaps them, the data stays in the page cache and files reopen when read)
_MAPPED_FILE_BYTES = 8 << 20
#: bytes of sampling copies one gather makes at most (the rest are copied by later samples)
_COPY_BYTES_PER_CALL = 256 << 20

Fingerprint = tuple[int, int, int, int]
"""``(device, inode, size, mtime_ns)`` of a file: changes when the file is replaced or written."""


def fingerprint(path: str) -> Fingerprint | None:
    """The :data:`Fingerprint` of ``path``, or ``None`` if it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


Rows = dict[Key, torch.Tensor]
"""Aligned rows of one trajectory: ``{column: [T * B, *row_shape]}``."""


# -- one record from disk -------------------------------------------------------------------------
@contextlib.contextmanager
def reading(record: Record) -> Iterator[None]:
    """Report a damaged file met while reading ``record`` as :class:`CorruptTrajectoryError`
    naming the trajectory (unsafe files keep their own error: they are never skipped)."""
    try:
        yield
    except (CorruptTrajectoryError, UnsafeFileError):
        raise
    except CorruptBufferError as exc:
        raise CorruptTrajectoryError(str(exc), record.trajectory_id, record.path) from None


def verify_record(record: Record, store: SegmentStore | None = None, schema: Schema | None = None) -> None:
    """Check a record's data against its ``crc32`` (no-op without one); with the buffer's
    ``schema``, a file larger than the trajectory can be is refused before it is read.

    Raises:
        CorruptTrajectoryError: mismatch, or a truncated, missing or unreadable file.
    """
    if record.checksum is None:
        return
    with reading(record):
        if record.fmt == formats.SEGMENT:
            assert store is not None and record.file is not None and record.row is not None
            found = store.checksum(record.file, record.row, record.num_transitions)
            if found != record.checksum:
                raise mismatch(record.trajectory_id, record.path or "", record.checksum, found)
            return
        try:
            limit = file_limit(record.num_transitions, schema)
            verify_file(record.trajectory_id, record.path or "", record.checksum, limit)
        except FileNotFoundError:
            raise BufferNotFoundError(
                f"{record.path}: the file of trajectory {record.trajectory_id} is missing; "
                "restore it or repair the directory with the verify tool"
            ) from None


def read_rows(record: Record, schema: Schema | None, store: SegmentStore | None = None) -> Rows:
    """Aligned rows ``[T * B, ...]`` of a record's file or segment.

    ``pt`` files are memory-mapped (rows are views of the mapping); segment rows are copied.
    The data is checked against the record's checksum first.

    Raises:
        CorruptTrajectoryError: the data fails its checksum, or the file is truncated or
            unreadable.
        CorruptBufferError: the file's fields differ from ``schema``.
    """
    n = record.num_transitions
    if record.fmt == formats.SEGMENT:
        assert schema is not None and record.file is not None and record.row is not None
        store = store or SegmentStore(record.directory or "", schema)
        with reading(record):
            rows = store.read(record.file, record.row, n)
            verify_rows(record.trajectory_id, record.path or "", rows, schema, record.checksum)
        return rows
    with reading(record):
        raw = checked_columns(record, schema)
    columns = aligned_columns(raw, record.num_steps)
    combine(schema, Schema.of_columns(columns), f"{record.path}: ", CorruptBufferError)
    return {k: v.reshape(n, *v.shape[2:]) for k, v in columns.items()}


def checked_columns(record: Record, schema: Schema | None) -> Rows:
    """The raw columns of a record's ``pt``/``pkl`` file (:func:`~.directory.load_columns`),
    its bytes checked against the record's checksum in the same read (the bytes checked are
    the bytes parsed).

    Raises:
        CorruptTrajectoryError: the file fails its checksum.
        BufferNotFoundError: the file is missing.
    """
    expected, limit = record.checksum, file_limit(record.num_transitions, schema)
    if expected is None:
        return load_columns(record, mmap=True)

    def check(found: int) -> None:
        if found != expected:
            raise mismatch(record.trajectory_id, record.path or "", expected, found)

    return load_columns(record, mmap=True, max_bytes=limit, check=check)


def aligned_columns(raw: Rows, num_steps: int) -> Rows:
    """A file's columns ``[rows, B, ...]`` with RLinf's extra rows per epoch dropped:
    ``[T, B, ...]`` each (views where nothing is dropped)."""
    return {
        k: v[torch.from_numpy(source_steps(k, int(v.shape[0]), num_steps))]
        if int(v.shape[0]) != num_steps
        else v
        for k, v in raw.items()
    }


def iter_directory_rows(
    directory: str, fmt: str, records: list[Record], schema: Schema | None
) -> Iterator[tuple[Record, Rows]]:
    """Each of ``records`` (of the buffer directory ``directory`` in format ``fmt``, e.g. the
    ``records`` of :func:`~.directory.read_directory`) with its aligned rows, one trajectory at
    a time, as :func:`read_rows` reads them (checked; segment rows through one store whose
    mappings are dropped at the end). Drop each trajectory's rows before asking for the next
    to hold one trajectory at a time."""
    store = SegmentStore(directory, schema) if fmt == formats.SEGMENT and schema else None
    try:
        for record in records:
            yield record, read_rows(record, schema, store)
    finally:
        if store is not None:
            store.forget_maps()


def report_skipped(trajectory_id: int, exc: BaseException, stacklevel: int = 4) -> None:
    """Log and warn (:class:`CorruptDataWarning`) that a damaged trajectory was left out."""
    logger.warning("skipped damaged trajectory %d: %s", trajectory_id, exc)
    warnings.warn(
        f"skipped damaged trajectory {trajectory_id}: {exc}", CorruptDataWarning, stacklevel=stacklevel
    )


# -- the store -----------------------------------------------------------------------------------
class RowStore:
    """Rows of the buffer's trajectories: ring, pending writes, files and segments.

    Args:
        index: the buffer's index (where disk rows are, and the checked flags).
        ring: the in-memory ring, or ``None`` for none.
        own_segments: ``own_segments(directory, schema)``: the auto-saver's segment store if
            ``directory`` is its directory, else ``None``.
        copy_parent: where sampling copies of file-backed trajectories are kept
            (:mod:`.sampling_copy`; ``None``: the system's temporary directory).
        copies: make sampling copies at all.

    Not thread-safe: the buffer calls it under its lock.
    """

    def __init__(
        self,
        index: TrajectoryIndex,
        ring: TrajectoryCache | None,
        own_segments: Callable[[str, Schema], SegmentStore | None] | None = None,
        copy_parent: str | None = None,
        copies: bool = True,
    ) -> None:
        self._index = index
        self._copy_parent = copy_parent
        self._ring = ring
        self._own_segments = own_segments
        self._schema: Schema | None = None
        self._pending: dict[int, Rows] = {}
        self._readers: OrderedDict[str, tuple[Rows, int]] = OrderedDict()  # path -> (columns, bytes held)
        self._reader_bytes = 0
        self._file_base: int | None = None  # resident file-backed bytes with no file open
        self._fingerprints: dict[str, Fingerprint] = {}  # path -> as when its data was checked
        self._segment_stores: dict[str, SegmentStore] = {}
        self._episode_ends: dict[int, np.ndarray] = {}
        self._copy: SamplingCopy | None = None  # sampling copies of file-backed rows
        self._copying = copies  # False once a copy could not be written

    # -- schema -------------------------------------------------------------------------------
    @property
    def schema(self) -> Schema | None:
        """The columns of every stored row (``None`` while empty)."""
        return self._schema

    def set_schema(self, schema: Schema | None) -> None:
        """Set the schema (after :meth:`admit`, or from a loaded directory)."""
        self._schema = schema

    def admit(self, aligned: list[AlignedTrajectory]) -> Schema:
        """The schema once ``aligned`` is stored; raises if a trajectory does not fit (nothing
        changes either way)."""
        schema = self._schema or Schema.of_columns(aligned[0].columns)
        for i, traj in enumerate(aligned):
            schema.check(Schema.of_columns(traj.columns), where=f"trajectory {i}: ")
        return schema

    # -- memory -------------------------------------------------------------------------------
    @property
    def ring_count(self) -> int:
        """Trajectories in the ring."""
        return len(self._ring) if self._ring is not None else 0

    @property
    def ring_bytes(self) -> int:
        """Bytes of rows in the ring."""
        return self._ring.nbytes if self._ring is not None else 0

    @property
    def ring_limit(self) -> int | None:
        """Trajectories the ring holds at most (``None``: unbounded or no ring)."""
        return self._ring.max_trajectories if self._ring is not None else None

    @property
    def pending_count(self) -> int:
        """Trajectories whose rows wait for a file."""
        return len(self._pending)

    def put(self, trajectory_id: int, rows: Rows, envs: int = 0) -> list[int]:
        """Copy rows of ``envs`` environments (``B``; 0: unknown) into the ring (no-op without
        one); return the ids it evicted, oldest first."""
        if self._ring is None:
            return []
        assert self._schema is not None
        return self._ring.put(trajectory_id, rows, self._schema, envs)

    def set_ring_limit(self, trajectories: int | None) -> list[int]:
        """Bound the ring to ``trajectories``; return the ids it evicted."""
        if self._ring is None:
            return []
        self._ring.max_trajectories = trajectories
        return self._ring.enforce_bounds()

    def evict(self, record: Record) -> None:
        """Forget a trajectory that left the buffer as its oldest (ring, pending, reader)."""
        if self._ring is not None and record.trajectory_id in self._ring:
            evicted = self._ring.pop_oldest()  # the ring holds the newest trajectories
            assert evicted == record.trajectory_id, "ring and index out of step"
        self.release(record.trajectory_id)
        self.forget(record)

    def hold(self, trajectory_id: int, rows: Rows) -> None:
        """Keep rows readable until their file is written (:meth:`release`)."""
        self._pending[trajectory_id] = rows

    def held(self, trajectory_id: int) -> Rows | None:
        """Rows held for a pending write, or ``None``."""
        return self._pending.get(trajectory_id)

    def release(self, trajectory_id: int) -> None:
        """Stop holding rows whose file is written (or whose trajectory left)."""
        self._pending.pop(trajectory_id, None)

    def snapshot_rows(self, records: list[Record]) -> tuple[Callable[[int], Rows | None], Callable[[], None]]:
        """For a checkpoint of ``records``: ``rows_of(tid)`` returns a private copy of rows held
        only in memory (``None`` otherwise), valid even if the ring evicts them meanwhile
        (call it under the buffer's lock); ``release()`` ends the snapshot."""
        ring, pending = self._ring, dict(self._pending)
        pin: Pin = ring.pin([r.trajectory_id for r in records if r.path is None]) if ring else {}

        def rows_of(tid: int) -> Rows | None:
            if ring is not None and tid in pin:
                return ring.take(pin, tid)
            return pending.get(tid)

        def release() -> None:
            if ring is not None:
                ring.unpin(pin)

        return rows_of, release

    # -- reads --------------------------------------------------------------------------------
    def gather(self, window: Window, flat: torch.Tensor) -> Rows:
        """Rows of window transitions ``flat`` (int64 ``[N]``, window-flat numbers), one new
        ``[N, *row_shape]`` tensor per column.

        The ring's part of the window is its newest trajectories, which are the newest rows of
        the ring: transition ``f`` of that part is ring row ``head - hit_rows + f``, so hits
        need no search at all. Misses (older window trajectories) are located with a binary
        search over the window's cumulative counts and read from segments (one
        ``index_select`` per segment and column), pending rows or files.
        """
        ring, ends = self._ring, window.ends
        w = len(window)
        misses_before = w - (min(w, len(ring)) if ring is not None else 0)
        miss_total = int(ends[misses_before - 1]) if misses_before else 0
        hit_rows = window.total - miss_total
        if ring is not None and miss_total == 0:
            return ring.gather(flat, ring.newest_rows_start(hit_rows), hit_rows)
        schema = self._schema
        assert schema is not None
        out = {k: torch.empty((int(flat.shape[0]), *s.row_shape), dtype=s.dtype) for k, s in schema.items()}
        hit = flat >= miss_total
        dest_hit = torch.nonzero(hit).flatten()
        if ring is not None and len(dest_hit):
            ring.gather_into(
                out, dest_hit, flat[dest_hit] - miss_total, ring.newest_rows_start(hit_rows), hit_rows
            )
        where = torch.nonzero(~hit).flatten().numpy()
        copied = False
        if len(where):
            f = flat.numpy()[where]
            positions = np.searchsorted(ends, f, side="right")
            unchecked = ~self._index.window_checked(len(window))[positions]
            if unchecked.any():  # first read of these trajectories: check their checksums
                for p in np.unique(positions[unchecked]).tolist():
                    self.check(self._index[int(window.ids[p])])
            rows = f - window.begins[positions]
            seg_of = window.segments[positions]
            located = seg_of >= 0
            if located.any():
                sel = np.flatnonzero(located)
                self._gather_segments(
                    out, seg_of[sel], window.first_rows[positions[sel]] + rows[sel], where[sel]
                )
            if not located.all():
                rest = np.flatnonzero(~located)
                copied = self._gather_rest(out, window.ids, positions[rest], rows[rest], where[rest])
        if copied or (self._copy is not None and len(window)):
            self._reclaim_copies(int(window.ids[0]))
        return out

    def _bound_mapped_files(self) -> None:
        """Close the open trajectory files once reading through their mappings made this
        process hold more than ``_MAPPED_FILE_BYTES`` of file pages beyond its level without
        them, so resident memory follows the cache settings rather than the files sampled."""
        resident = file_resident_bytes()
        if not self._readers or self._file_base is None or resident < self._file_base:
            self._file_base = resident  # (re)based while no file is open, or after a drop
        elif resident - self._file_base > _MAPPED_FILE_BYTES:
            self.close_files()

    def _gather_segments(self, out: Rows, segs: np.ndarray, rows: np.ndarray, dest: np.ndarray) -> None:
        """``out[k][dest[i]]`` = row ``rows[i]`` of segment ``segs[i]``: per (segment, column)
        one ``index_select`` over the mapped column file, or one ``pread`` per row for long rows
        (:meth:`~.formats.segment.SegmentStore.gather_into`)."""
        present = np.unique(segs).tolist()
        whole = len(present) == 1 and np.array_equal(dest, np.arange(len(next(iter(out.values())))))
        for s in present:
            sel = slice(None) if len(present) == 1 else np.flatnonzero(segs == s)
            directory, name = self._index.segment(s)
            self._segments(directory).gather_into(name, rows[sel], out, None if whole else dest[sel])

    def _gather_rest(
        self, out: Rows, ids: np.ndarray, positions: np.ndarray, rows: np.ndarray, dest: np.ndarray
    ) -> bool:
        """``out[k][dest[i]]`` = row ``rows[i]`` of window trajectory ``positions[i]``, from
        pending rows or files: one group of array operations per trajectory. Each file-backed
        trajectory read gets a sampling copy (up to ``_COPY_BYTES_PER_CALL`` of them per call),
        so that later samples find its rows in a segment. Returns whether copies were made."""
        if not self._readers:
            self._file_base = file_resident_bytes()
        order = np.argsort(positions, kind="stable")
        bounds = np.flatnonzero(np.diff(positions[order])) + 1
        budget = _COPY_BYTES_PER_CALL if self._copying else 0
        copied = False
        for group in np.split(order, bounds):
            tid = int(ids[positions[group[0]]])
            to, local = dest[group], rows[group]
            data = self._pending.get(tid)
            if data is not None:
                sel = torch.from_numpy(local)
                for key, tensor in data.items():
                    scatter_rows(out[key], to, tensor.index_select(0, sel))
                continue
            record = self._index[tid]
            raw = self._mapped(record)
            b = record.num_envs
            t, env = local // b, local % b
            for key in out:
                tensor = raw[key]
                src = source_steps(key, int(tensor.shape[0]), record.num_steps)[t] * b + env
                flat = tensor.reshape(-1, *tensor.shape[2:])
                scatter_rows(out[key], to, flat.index_select(0, torch.from_numpy(src)))
            if budget > 0:
                budget -= self._copy_rows(record, raw)
                copied = True
            del raw, tensor, flat
            self._bound_mapped_files()
        return copied

    # -- sampling copies ----------------------------------------------------------------------
    def _copy_rows(self, record: Record, raw: Rows) -> int:
        """Give a file-backed trajectory a sampling copy (:mod:`.sampling_copy`); returns the
        bytes copied (0 if copies stopped: a full disk)."""
        schema = self._schema
        assert schema is not None
        try:
            if self._copy is None:
                self._copy = SamplingCopy(schema, self._copy_parent)
                self._segment_stores[self._copy.directory] = self._copy.store
            n = record.num_transitions
            columns = aligned_columns({k: raw[k] for k in schema}, record.num_steps)
            where, row = self._copy.add(
                record.trajectory_id,
                {k: v.reshape(n, *v.shape[2:]) for k, v in columns.items()},
                envs=record.num_envs,
            )
        except OSError as exc:
            self._copying = False
            give_up(exc, self._copy.directory if self._copy is not None else self._copy_parent or "")
            self.drop_copies()
            return 0
        self._index.set_copy(record.trajectory_id, where, row)
        return record.num_transitions * schema.row_bytes

    def _reclaim_copies(self, window_first: int) -> None:
        """Delete copy segments whose trajectories all left the window (older than its first)."""
        copy = self._copy
        if copy is None:
            return
        names = copy.older_than(window_first)
        if names:
            for tid in copy.delete(names):
                if tid in self._index:
                    self._index.set_copy(tid, None)

    def drop_copies(self) -> None:
        """Delete every sampling copy (reads go to the files again; copies are made anew)."""
        copy, self._copy = self._copy, None
        if copy is None:
            return
        for tid in [t for t in self._index.ids().tolist() if self._index.has_copy(t)]:
            self._index.set_copy(tid, None)
        self._segment_stores.pop(copy.directory, None)
        copy.close()

    def column(self, record: Record, key: Key) -> torch.Tensor:
        """One column of a trajectory's aligned rows ``[T * B, ...]``, from memory or disk
        (a view where possible: do not write to it)."""
        tid = record.trajectory_id
        data = self._pending.get(tid)
        if data is not None:
            return data[key]
        if self._ring is not None and tid in self._ring:
            return self._ring.view(tid, (key,))[key]
        if not self._index.is_checked(tid):
            self.check(record)
        n = record.num_transitions
        if record.fmt == formats.SEGMENT:
            assert self._schema is not None and record.file is not None and record.row is not None
            with reading(record):
                return self._segments(record.directory or "").column(record.file, record.row, n, key)
        tensor = self._mapped(record)[key]
        src = source_steps(key, int(tensor.shape[0]), record.num_steps)
        return tensor[torch.from_numpy(src)].reshape(n, *tensor.shape[2:])

    def trajectory(self, record: Record) -> dict[Key, torch.Tensor]:
        """Every column of one trajectory as new ``[T, B, ...]`` tensors."""
        assert self._schema is not None
        t, b = record.num_steps, record.num_envs
        return {
            key: self.column(record, key).reshape(t, b, *spec.row_shape).clone()
            for key, spec in self._schema.items()
        }

    def episode_ends(self, record: Record) -> np.ndarray:
        """Where a trajectory's episodes end, bool ``[T, B]`` (``dones``, else terminations or
        truncations; neither: no episode ends inside it). Read once, then cached."""
        tid = record.trajectory_id
        flags = self._episode_ends.get(tid)
        if flags is not None:
            return flags
        schema = self._schema
        assert schema is not None
        shape = (record.num_steps, record.num_envs)
        keys = [k for k in (("dones",),) if k in schema] or [
            k for k in (("terminations",), ("truncations",)) if k in schema
        ]
        flags = np.zeros(shape, dtype=bool)
        for key in keys:
            column = self.column(record, key)
            flags |= column.reshape(record.num_transitions, -1).ne(0).any(dim=1).numpy().reshape(shape)
        if len(self._episode_ends) > 4 * max(64, len(self._index)):
            self._episode_ends.clear()
        self._episode_ends[tid] = flags
        return flags

    def read(self, record: Record, schema: Schema | None) -> Rows:
        """Aligned rows of a record's file or segment, checked (``schema``: the directory's)."""
        store = None
        if record.fmt == formats.SEGMENT and schema is not None:
            store = self._segments(record.directory or "", schema)
            return read_rows(record, schema, store)
        with self._unchanged(record):
            return read_rows(record, schema, store)

    def read_newest(
        self,
        records: list[Record],
        schema: Schema | None,
        skip_corrupt: bool,
        progress: Callable[[int, int], None] | None = None,
        *,
        limit: int | None = None,
        max_bytes: int | None = None,
    ) -> tuple[list[Record], list[tuple[Record, Rows]], int]:
        """Read, without storing, the rows of the newest ``records`` a load warms the ring with:
        at most ``limit`` trajectories and ``max_bytes`` bytes of rows (``None``: no bound), and
        no more than the ring holds.

        Returns ``(records left, [(record, rows)], damaged trajectories skipped)``; a damaged
        one raises :class:`CorruptTrajectoryError` unless ``skip_corrupt``.
        """
        keep, skipped = records, 0
        if self._ring is None or not keep:
            return keep, [], 0
        ring_limit = self._ring.max_trajectories
        count = min(x for x in (limit, ring_limit, len(keep)) if x is not None)
        if max_bytes is not None and schema is not None:
            sizes = np.cumsum(
                [r.num_transitions * schema.row_bytes for r in reversed(keep[-count:] if count else [])]
            )
            count = int(np.searchsorted(sizes, max_bytes, side="right"))
        while True:
            warm = keep[len(keep) - min(count, len(keep)) :] if count else []
            try:
                rows = []
                for done, record in enumerate(warm, 1):
                    rows.append((record, self.read(record, schema)))
                    if progress is not None:
                        progress(done, len(warm))
                return keep, rows, skipped
            except CorruptTrajectoryError as exc:
                if not skip_corrupt or exc.trajectory_id is None:
                    raise
                report_skipped(exc.trajectory_id, exc)
                skipped += 1
                keep = [r for r in keep if r.trajectory_id != exc.trajectory_id]

    def check(self, record: Record) -> None:
        """Check a trajectory's data against its checksum before its first read from disk."""
        if record.trajectory_id not in self._pending and record.path is not None:
            if record.fmt == formats.SEGMENT:
                verify_record(record, self._segments(record.directory or ""))
            else:
                with self._unchanged(record):
                    verify_record(record, schema=self._schema)
        self._index.mark_checked(record.trajectory_id)

    @contextlib.contextmanager
    def _unchanged(self, record: Record) -> Iterator[None]:
        """Run a read or check of ``record``'s file and remember the file's fingerprint, so a
        later reopening notices if the file was replaced or rewritten meanwhile."""
        path = record.path
        assert path is not None
        before = fingerprint(path)
        yield
        after = fingerprint(path)
        if before != after:
            raise CorruptTrajectoryError(
                f"{path}: the file of trajectory {record.trajectory_id} changed while it was read; "
                "another process is writing this directory: reload it once that is done",
                record.trajectory_id,
                path,
            )
        if after is not None:
            self._fingerprints[path] = after

    def _segments(self, directory: str, schema: Schema | None = None) -> SegmentStore:
        store = self._segment_stores.get(directory)
        if store is None:
            schema = schema or self._schema
            assert schema is not None
            own = self._own_segments(directory, schema) if self._own_segments is not None else None
            store = self._segment_stores[directory] = own or SegmentStore(directory, schema)
        return store

    def _mapped(self, record: Record) -> Rows:
        """The raw columns of a record's file, from the pool of open files.

        A file opened again (it left the pool) must be the file that was checked: if its
        fingerprint changed since, it is checked again against its checksum, and without a
        checksum refused, so a replaced or rewritten file never yields other data.
        """
        path = record.path
        if path is None:
            raise CorruptBufferError(f"trajectory {record.trajectory_id} has neither data nor file")
        entry = self._readers.get(path)
        if entry is not None:
            self._readers.move_to_end(path)
            return entry[0]
        known = self._fingerprints.get(path)
        if known is not None and fingerprint(path) not in (known, None):
            if record.checksum is None:
                raise CorruptTrajectoryError(
                    f"{path}: the file of trajectory {record.trajectory_id} changed after the buffer "
                    "read it and has no checksum to check it against; reload the buffer directory",
                    record.trajectory_id,
                    path,
                )
            with self._unchanged(record):
                verify_record(record, schema=self._schema)  # raises if the data differs
        with self._unchanged(record), reading(record):
            raw = load_columns(record, mmap=True)
        schema = self._schema
        assert schema is not None
        missing = [key_name(k) for k in schema if k not in raw]
        if missing:
            raise CorruptBufferError(f"{path}: lacks fields {missing} that the buffer holds")
        held = 0 if record.fmt == "pt" else sum(int(t.nbytes) for t in raw.values())  # pkl is read whole
        self._readers[path] = (raw, held)
        self._reader_bytes += held
        while len(self._readers) > 1 and (
            len(self._readers) > _READER_POOL or self._reader_bytes > _READER_BYTES
        ):
            self._reader_bytes -= self._readers.popitem(last=False)[1][1]
        return raw

    def _drop_reader(self, path: str) -> None:
        entry = self._readers.pop(path, None)
        if entry is not None:
            self._reader_bytes -= entry[1]

    # -- forgetting ---------------------------------------------------------------------------
    def forget(self, record: Record) -> None:
        """Drop what is open or derived for a trajectory that left (its mapping, its flags,
        its sampling copy)."""
        if record.path is not None:
            self._drop_reader(record.path)
            self._fingerprints.pop(record.path, None)
        self._episode_ends.pop(record.trajectory_id, None)
        if self._copy is not None:
            self._copy.drop([record.trajectory_id])

    def forget_directory(self, path: str) -> None:
        """Forget open files of a directory whose contents were replaced (map them afresh)."""
        replaced = os.path.realpath(path)
        self.close_files()
        self._fingerprints = {
            p: f for p, f in self._fingerprints.items() if os.path.realpath(os.path.dirname(p)) != replaced
        }
        for directory in [d for d in self._segment_stores if os.path.realpath(d) == replaced]:
            del self._segment_stores[directory]

    def close_files(self) -> None:
        """Close the open files (they reopen when read, checked against their fingerprints)."""
        self._readers.clear()
        self._reader_bytes = 0

    def clear_ring(self) -> None:
        """Empty the ring (its reservation too)."""
        if self._ring is not None:
            self._ring.clear()

    def close(self) -> None:
        """Close the open files and delete the sampling copies (the buffer was closed or its
        memory cleared; both come back as they are read)."""
        self.close_files()
        self.drop_copies()

    def clear(self) -> None:
        """Forget everything: rows, mappings, copies, the schema."""
        self.clear_ring()
        self._pending.clear()
        self.close()
        self._fingerprints.clear()
        self._segment_stores.clear()
        self._episode_ends.clear()
        self._schema = None
