"""The ``segment`` format: column files of aligned rows, made for random row reads.

``pt``/``pkl`` keep one file per trajectory (RLinf's layout); reading ``N`` random transitions
from them touches up to ``N`` files. A *segment* instead appends the aligned rows ``[T * B, ...]``
of many trajectories to one raw file per column::

    seg-000000/
        segment.json      {"format_version": 1, "columns": [{"name", "dtype", "shape"}, ...]}
        000.bin           rows of column 0, back to back (row_bytes each, native byte order)
        001.bin           ...

The index entry of a trajectory names its segment (``file``) and first row (``row``); its rows are
``[row, row + num_steps * num_envs)`` of every column file. Reading maps each column file once
(``mmap``) and gathers any set of rows with one ``index_select`` per column, whatever trajectories
they belong to. A segment is *sealed* once it holds ``segment_bytes`` (1 GiB by default) of rows
(counted whole, as added) and the next trajectory starts a new one; a trajectory never spans two
segments.

Observations stored once (format version 2). In a rollout ``next_obs[t, b]`` is
``curr_obs[t + 1, b]`` except where an episode ended at step ``t`` and at the last step, so
``("next_obs", k)`` row ``r`` equals ``("curr_obs", k)`` row ``r + B`` of the same trajectory for
most rows (:mod:`..dedup`). A store built with ``dedup`` writes a segment whose schema has such
pairs (:func:`~..dedup.pairs_of`) as version 2::

    seg-000001/
        segment.json      {"format_version": 2, "columns": [...],
                           "pairs": [{"curr_obs": 3, "next_obs": 7, "source": "src-007.bin"}]}
        003.bin           curr_obs column: every row
        007.bin           next_obs column: row r at byte r * row_bytes as ever, but the rows equal
                          to their curr_obs partner are holes (never written)
        src-007.bin       int64 [rows]: where row r of column 7 is: r (stored in 007.bin) or
                          r + B (row r + B of 003.bin)

A hole is made by extending the file with ``ftruncate`` instead of writing; file systems with
holes (ext4, XFS, btrfs, tmpfs) store nothing for it, others store zeros. A run of equal rows
shorter than :data:`MIN_HOLE_BYTES` (which could not free a block) is written and its rows are
their own source. Every read (:meth:`SegmentStore.gather_into`, :meth:`SegmentStore.read`,
:meth:`SegmentStore.column`) resolves the sources, so ``next_obs`` comes back bit-identical.
The layout is per segment, from the segment's own ``segment.json``: version 1 segments (earlier
writers, or ``dedup`` off) and version 2 segments may share a directory.

A segment trajectory's checksum (:meth:`SegmentStore.checksum`, the index entry's ``crc32``) is
the CRC-32 of its rows as added, column after column, in either version: for a version 2
``next_obs`` column, of the rows its sources select, each source first checked to be the row
itself or a later row of the same trajectory. So damage to any byte a read depends on (a
``curr_obs`` row, a stored ``next_obs`` row, a source entry) changes the checksum or is refused;
holes are read by nothing and covered by nothing.

Durability: rows (and source entries) are appended and fsync'd before the index entry naming
them is written, so after a crash the index only names complete rows; :func:`truncate_segment`
cuts the bytes a crash left beyond the last indexed row, in column and source files alike. An
append that fails (disk full, I/O error) leaves every file as it was: the part it wrote is cut
off, at once or before the next append.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import shutil
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, BinaryIO

import numpy as np
import torch

from ..cache import scatter_rows
from ..dedup import SOURCE_BYTES, kept_mask, pairs_of
from ..errors import CorruptBufferError, UnsafeFileError, unreadable
from ..fsio import atomic_write_json, fsync_dir
from ..safe_open import JSON_BYTES, load_json, open_regular
from ..schema import ColumnSpec, Schema
from ..trajectory import Key, key_name

#: ``segment.json`` version of a segment storing every column whole
FORMAT_VERSION = 1
#: ``segment.json`` version of a segment storing paired ``next_obs`` columns once
DEDUP_FORMAT_VERSION = 2
#: the versions this library reads
FORMAT_VERSIONS = (FORMAT_VERSION, DEDUP_FORMAT_VERSION)
SEGMENT_RE = re.compile(r"^seg-(\d{6,})\Z")
COLUMN_RE = re.compile(r"^(\d{3,})\.bin\Z")
SOURCE_RE = re.compile(r"^src-(\d{3,})\.bin\Z")
SEGMENT_META = "segment.json"
DEFAULT_SEGMENT_BYTES = 1 << 30
#: a run of ``next_obs`` rows equal to their ``curr_obs`` partner is left as a hole only if it
#: spans at least this many bytes (a file-system block); a shorter run could free nothing, so
#: it is written like the other rows (its rows are then their own source)
MIN_HOLE_BYTES = 4096
_SOURCE_SPEC = ColumnSpec(torch.int64, ())
_OPEN_SEGMENTS = 32  # mapped segments kept open for reading (each maps one file per column)
#: File-backed bytes this process may map beyond its start-up level before the segment pages
#: are dropped from it (``MADV_DONTNEED``; they stay in the page cache), so resident memory
#: does not grow to the size of every segment ever sampled.
MAPPED_RESIDENT_BYTES = 1 << 30
#: Columns whose rows are at least this long are read with one ``pread`` per row instead of
#: through their mapping: a read through a mapping maps the file's whole large folio (often
#: 1-2 MiB) into this process per row touched, so a batch of image rows would add gigabytes of
#: resident memory; a ``pread`` copies from the page cache and maps nothing. At this size the
#: call (about a microsecond) costs less than copying the row.
PREAD_ROW_BYTES = 16 << 10


def segment_name(number: int) -> str:
    """``7`` -> ``"seg-000007"``."""
    return f"seg-{number:06d}"


def segment_number(name: str) -> int:
    """``"seg-000007"`` -> ``7``; raise :class:`CorruptBufferError` for anything else."""
    m = SEGMENT_RE.match(name)
    if m is None:
        raise CorruptBufferError(f"{name!r} is not a segment name (expected seg-NNNNNN)")
    return int(m.group(1))


def column_file(index: int) -> str:
    """File name of the ``index``-th column of a segment: its number only, never the column's
    name, so keys with dots, spaces, ``/`` or any letters need no escaping on disk. The name
    (``field`` or ``field.key``, the key verbatim: :func:`~..trajectory.key_name`) is written
    only in ``segment.json`` and ``metadata.json``, as JSON strings."""
    return f"{index:03d}.bin"


def source_file(index: int) -> str:
    """File name of the source column of the ``index``-th column (a paired ``next_obs`` column
    of a version 2 segment): ``7`` -> ``"src-007.bin"``, int64 ``[rows]``."""
    return f"src-{index:03d}.bin"


@dataclass(frozen=True)
class Layout:
    """How one segment stores its columns, as its ``segment.json`` says.

    Attributes:
        version: :data:`FORMAT_VERSION` (every column whole) or :data:`DEDUP_FORMAT_VERSION`.
        pairs: ``(curr_obs column, next_obs column)`` indices (version 2): the ``next_obs``
            column file has holes and a source column :func:`source_file` of its index.
    """

    version: int = FORMAT_VERSION
    pairs: tuple[tuple[int, int], ...] = ()

    @cached_property
    def partners(self) -> dict[int, int]:
        """``next_obs`` column index -> its ``curr_obs`` column index."""
        return {nxt: curr for curr, nxt in self.pairs}


class ColumnFile:
    """One column file of the segment being appended, opened for appending (no user-space
    buffer: what :meth:`write` returns from is with the OS)."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)

    def fileno(self) -> int:
        """The file descriptor."""
        return self._fd

    def write(self, data: Any) -> int:
        """Append every byte of ``data`` (a bytes-like object); returns their count. Raises the
        ``OSError`` of a failed ``os.write`` (part of ``data`` may be written then)."""
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            view = view[os.write(self._fd, view) :]
        return total

    def flush(self) -> None:
        """Nothing to do (there is no buffer); kept for file-like callers."""

    def close(self) -> None:
        """Close the descriptor."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty((), dtype=dtype).numpy().dtype if dtype != torch.bfloat16 else np.dtype(np.uint16)


@dataclass
class _Mapped:
    """One segment mapped for reading."""

    rows: int  # rows every file holds (the shortest)
    layout: Layout
    columns: dict[Key, torch.Tensor]  # every column file as stored (holes read as zeros)
    fds: list[int | None]  # per column: a pread descriptor for long rows
    sources: dict[Key, tuple[Key, torch.Tensor]]  # paired next_obs -> (curr_obs, int64 [rows])
    maps: list[mmap.mmap] = field(default_factory=list)


class SegmentStore:
    """The segments of one directory: appends rows (writer side) and maps rows (reader side).

    Args:
        directory: the buffer directory holding ``seg-*`` folders.
        schema: the buffer's columns; column ``i`` of the schema is file ``{i:03d}.bin``.
        segment_bytes: seal a segment once it holds this many bytes of rows (default
            ``DEFAULT_SEGMENT_BYTES``, 1 GiB).
        dedup: write new segments whose schema has ``(curr_obs, next_obs)`` pairs as version 2
            (paired ``next_obs`` rows stored once); without it, or without pairs, version 1.
            Reading accepts both versions either way.
    """

    def __init__(
        self, directory: str, schema: Schema, segment_bytes: int | None = None, dedup: bool = True
    ) -> None:
        self.directory = directory
        self.schema = schema
        self.segment_bytes = segment_bytes or DEFAULT_SEGMENT_BYTES
        self.dedup = dedup
        self._keys = list(schema)
        number = {k: i for i, k in enumerate(self._keys)}
        pairs = tuple((number[c], number[n]) for c, n in pairs_of(schema, dedup))
        self.layout = Layout(DEDUP_FORMAT_VERSION, pairs) if pairs else Layout()
        self._active: int | None = None
        self._active_rows = 0
        self._files: list[ColumnFile] = []
        self._source_files: list[ColumnFile] = []  # one per pair of the layout, in its order
        self._maps: OrderedDict[int, _Mapped] = OrderedDict()
        self._layouts: dict[int, Layout] = {}  # segment number -> its layout, as read
        self._resident_base: int | None = None  # file-backed resident bytes before our maps
        self._dirty = False  # rows appended but not yet fsync'd
        self._torn = False  # a failed append left bytes past _active_rows (cut before the next)
        self._failed_syncs = 0
        self._append_lock = threading.Lock()  # the writer thread and a checkpoint may both append

    # -- writing ------------------------------------------------------------------------------
    def append(
        self, rows: Mapping[Key, torch.Tensor], sync: bool = True, *, envs: int = 0
    ) -> tuple[str, int]:
        """Append one trajectory's rows (``[N, ...]`` per column, ``N = T * B``); return
        ``(segment, first row)``.

        ``envs`` is ``B``: with it, a version 2 segment leaves the paired ``next_obs`` rows
        equal to ``curr_obs`` row ``r + B`` as holes; 0 (unknown) stores every row. With
        ``sync`` the rows are fsync'd when this returns; without it, call :meth:`sync` before
        writing the index entries that name them (group commit: one fsync per file for a batch
        of trajectories).
        """
        with self._append_lock:
            located = self._append(rows, envs)
            if sync:
                self._sync()
            return located

    def sync(self) -> None:
        """fsync every row appended so far."""
        with self._append_lock:
            self._sync()

    @property
    def failed_syncs(self) -> int:
        """How many fsyncs of column files failed so far. Rows appended before a failed fsync
        are not known to be durable even if a later fsync succeeds (after a write-back error the
        kernel may report the next fsync clean): whoever appended them must append them again."""
        return self._failed_syncs

    def _sync(self) -> None:
        if self._dirty:
            try:
                for f in [*self._files, *self._source_files]:
                    os.fsync(f.fileno())
            except OSError:
                self._failed_syncs += 1
                raise
            self._dirty = False

    def _append(self, rows: Mapping[Key, torch.Tensor], envs: int = 0) -> tuple[str, int]:
        n = int(rows[self._keys[0]].shape[0])
        row_bytes = self.schema.row_bytes
        if self._active is None or (
            self._active_rows and (self._active_rows + n) * row_bytes > self.segment_bytes
        ):
            self._start_segment(self._next_number())
        assert self._active is not None
        start = self._active_rows
        if self._torn:  # an earlier failed append's bytes are still there
            self._truncate_active(start)
        pairs = self.layout.pairs
        holes = {nxt: self._holes(rows, curr, nxt, envs) for curr, nxt in pairs}
        try:
            for i, (key, f) in enumerate(zip(self._keys, self._files, strict=True)):
                tensor = rows[key].contiguous()
                if tensor.numel() == 0:  # a field with a zero-size dimension holds no bytes
                    continue
                if tensor.dtype == torch.bfloat16:
                    tensor = tensor.view(torch.uint16)
                self._torn = True
                data = memoryview(tensor.numpy()).cast("B")
                hole = holes.get(i)
                if hole is None:
                    f.write(data)
                else:
                    _write_with_holes(f, data, hole, start, self.schema[key].row_bytes)
            for (_, nxt), f in zip(pairs, self._source_files, strict=True):
                sources = np.arange(start, start + n, dtype=np.int64)
                if holes[nxt] is not None:
                    sources[holes[nxt]] += envs
                self._torn = True
                f.write(memoryview(sources).cast("B"))
            self._dirty = True
            self._torn = False
        except BaseException:
            with contextlib.suppress(OSError):  # else cut before the next append
                self._truncate_active(start)  # leave no partial row behind
            raise
        self._active_rows += n
        return segment_name(self._active), start

    def _holes(self, rows: Mapping[Key, torch.Tensor], curr: int, nxt: int, envs: int) -> np.ndarray | None:
        """Which rows of paired ``next_obs`` column ``nxt`` are left as holes, bool ``[N]``
        (``None``: none): runs of rows equal to ``curr_obs`` row ``r + B``
        (:func:`~..dedup.kept_mask`) of at least :data:`MIN_HOLE_BYTES`."""
        keep = kept_mask(rows[self._keys[nxt]], rows[self._keys[curr]], envs)
        if keep is None:
            return None
        hole = ~keep
        shortest = -(-MIN_HOLE_BYTES // self.schema[self._keys[nxt]].row_bytes)
        if shortest > 1:  # write back runs too short to free a block
            edges = np.diff(np.concatenate(([0], hole.view(np.int8), [0])))
            starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
            short = ends - starts < shortest
            if short.any():
                marks = np.zeros(len(hole) + 1, dtype=np.int64)
                np.add.at(marks, starts[short], 1)
                np.add.at(marks, ends[short], -1)
                hole &= np.cumsum(marks[:-1]) == 0
        return hole if hole.any() else None

    def _next_number(self) -> int:
        numbers = [segment_number(n) for n in os.listdir(self.directory) if SEGMENT_RE.match(n)]
        return max(numbers, default=-1) + 1

    def _start_segment(self, number: int) -> None:
        self._sync()  # a sealed segment is durable before the next one starts
        self._close_files()
        path = os.path.join(self.directory, segment_name(number))
        os.makedirs(path)
        files: list[ColumnFile] = []
        sources: list[ColumnFile] = []
        try:
            atomic_write_json(os.path.join(path, SEGMENT_META), self.describe())
            for i in range(len(self._keys)):
                files.append(ColumnFile(os.path.join(path, column_file(i))))
            for _, nxt in self.layout.pairs:
                sources.append(ColumnFile(os.path.join(path, source_file(nxt))))
            fsync_dir(path)
            fsync_dir(self.directory)
        except BaseException:
            # a segment that could not start holds no row: remove it, or it would be a segment
            # no index entry names (the next attempt takes the next number)
            for f in files + sources:
                f.close()
            shutil.rmtree(path, ignore_errors=True)
            raise
        self._files, self._source_files = files, sources
        self._active, self._active_rows, self._torn = number, 0, False

    def _truncate_active(self, rows: int) -> None:
        for spec, f in zip(self.schema.values(), self._files, strict=True):
            f.flush()
            os.ftruncate(f.fileno(), rows * spec.row_bytes)
        for f in self._source_files:
            os.ftruncate(f.fileno(), rows * SOURCE_BYTES)
        self._torn = False

    def describe(self) -> dict[str, Any]:
        """The ``segment.json`` of the segments this store writes: format version, the columns
        in file order and (version 2) the pairs."""
        meta: dict[str, Any] = {"format_version": self.layout.version, "columns": _columns_json(self.schema)}
        if self.layout.pairs:
            meta["pairs"] = [
                {"curr_obs": curr, "next_obs": nxt, "source": source_file(nxt)}
                for curr, nxt in self.layout.pairs
            ]
        return meta

    def close(self) -> None:
        """fsync and close the active segment's files (a later append starts a new segment).

        Safe while another thread appends: both hold the store's append lock."""
        with self._append_lock:
            self._close_files()

    def _close_files(self) -> None:
        self._sync()
        if self._torn and self._active is not None:
            with contextlib.suppress(OSError):  # else reopening cuts it (bytes past the rows)
                self._truncate_active(self._active_rows)
        for f in [*self._files, *self._source_files]:
            f.close()
        self._files, self._source_files = [], []
        self._active = None

    # -- reading ------------------------------------------------------------------------------
    def layout_of(self, name: str) -> Layout:
        """The layout of segment ``name`` (its ``segment.json``, checked: :func:`check_segment_meta`)."""
        number = segment_number(name)
        layout = self._layouts.get(number)
        if layout is None:
            layout = self._layouts[number] = check_segment_meta(self.segment_path(name), self.schema)
        return layout

    def _mapping(self, name: str, min_rows: int) -> _Mapped:
        """Segment ``name`` mapped for reading, every file holding at least ``min_rows`` rows; a
        mapping shorter than that (the segment grew since it was mapped) is remapped."""
        number = segment_number(name)
        held = self._maps.get(number)
        if held is not None and held.rows >= min_rows:
            self._maps.move_to_end(number)
            return held
        path = self.segment_path(name)
        layout = self._layouts[number] = check_segment_meta(path, self.schema)
        mapped = _Mapped(0, layout, {}, [], {})
        try:
            rows = None
            for i, (key, spec) in enumerate(self.schema.items()):
                file = os.path.join(path, column_file(i))
                pread = spec.row_bytes >= PREAD_ROW_BYTES
                mapped.columns[key], n, fd = _map_file(file, spec, min_rows, mapped.maps, pread)
                mapped.fds.append(fd)
                rows = n if rows is None else min(rows, n)
            for curr, nxt in layout.pairs:
                file = os.path.join(path, source_file(nxt))
                column, n, _ = _map_file(file, _SOURCE_SPEC, min_rows, mapped.maps, False)
                mapped.sources[self._keys[nxt]] = (self._keys[curr], column)
                rows = n if rows is None else min(rows, n)
        except BaseException:
            _close_fds(mapped.fds)
            raise
        mapped.rows = rows or 0
        self._drop(number)
        self._layouts[number] = layout
        self._maps[number] = mapped
        if len(self._maps) > _OPEN_SEGMENTS:
            self._drop(next(iter(self._maps)))
        return mapped

    def gather_into(
        self, name: str, rows: np.ndarray, out: dict[Key, torch.Tensor], dest: np.ndarray | None
    ) -> None:
        """``out[k][dest[i]] = row rows[i]`` of segment ``name`` for every column ``k``.

        ``rows``, ``dest``: int64 ``[N]`` (``dest=None``: ``out``'s rows in order, ``N`` of
        them); ``out``: contiguous ``[M, *row_shape]`` tensors of the schema's dtypes. Columns
        of short rows are gathered through the mapping (one ``index_select``); columns of rows
        of ``PREAD_ROW_BYTES`` or more are read with one ``pread`` per row, which maps nothing
        into this process. A ``next_obs`` column stored once (version 2) first gathers its
        sources (one ``index_select``), then its rows from itself or from ``curr_obs``.

        Raises:
            CorruptBufferError: a column file is shorter than the rows asked for, or a source
                names a row the segment does not hold.
        """
        m = self._mapping(name, int(rows.max()) + 1)
        where = os.path.join(self.directory, name)  # for messages (checked when mapped)
        idx = torch.from_numpy(rows)
        to = np.arange(len(rows)) if dest is None else dest
        for (key, spec), fd in zip(self.schema.items(), m.fds, strict=True):
            paired = m.sources.get(key)
            if paired is None:
                if fd is not None:
                    _pread_rows(fd, spec.row_bytes, rows, out[key], to, where)
                elif dest is None:
                    out[key] = torch.index_select(m.columns[key], 0, idx)
                else:
                    scatter_rows(out[key], dest, torch.index_select(m.columns[key], 0, idx))
                continue
            src = _sources(m, key, idx, where)
            own = src == rows
            if fd is not None:
                curr_fd = m.fds[self._keys.index(paired[0])]
                assert curr_fd is not None  # the same row size
                _pread_rows(fd, spec.row_bytes, rows[own], out[key], to[own], where)
                _pread_rows(curr_fd, spec.row_bytes, src[~own], out[key], to[~own], where)
                continue
            data = _gather_pair(m.columns[key], m.columns[paired[0]], rows, src, own)
            if dest is None:
                out[key] = data
            else:
                scatter_rows(out[key], dest, data)
        self.note_read()

    def _drop(self, number: int) -> None:
        """Forget one segment's mappings and close its descriptors."""
        mapped = self._maps.pop(number, None)
        self._layouts.pop(number, None)
        if mapped is not None:
            _close_fds(mapped.fds)

    def note_read(self) -> None:
        """Call after reading through the mappings: once this process maps more than
        ``MAPPED_RESIDENT_BYTES`` of file pages beyond what it mapped before the first segment
        (the kernel maps whole large folios, often 2 MiB, per touched row), drop every mapped
        page from this process; reads fault them back from the page cache."""
        shared = file_resident_bytes()
        if self._resident_base is None:
            self._resident_base = shared
        if shared - self._resident_base < MAPPED_RESIDENT_BYTES:
            return
        for mapped in self._maps.values():
            for m in mapped.maps:
                m.madvise(mmap.MADV_DONTNEED)

    def read(self, name: str, row: int, count: int) -> dict[Key, torch.Tensor]:
        """Copies of rows ``[row, row + count)`` of every column of segment ``name``
        (``[count, *row_shape]`` each, ``next_obs`` rebuilt in full; columns of long rows are
        read with ``pread``, the rest through the mapping)."""
        m = self._mapping(name, row + count)
        where = os.path.join(self.directory, name)
        return {key: self._rows(m, where, row, count, key, copy=True) for key in self.schema}

    def column(self, name: str, row: int, count: int, key: Key) -> torch.Tensor:
        """Rows ``[row, row + count)`` of one column of segment ``name``, ``[count,
        *row_shape]``: a view of the mapping (do not write to it), or a new tensor for a
        ``next_obs`` column stored once (rebuilt from its sources)."""
        return self._rows(
            self._mapping(name, row + count), os.path.join(self.directory, name), row, count, key
        )

    def _rows(
        self, m: _Mapped, where: str, row: int, count: int, key: Key, copy: bool = False
    ) -> torch.Tensor:
        """Rows ``[row, row + count)`` of column ``key`` of the mapped segment ``m`` (``where``):
        a view of the mapping unless ``copy``, stored once, or read with ``pread``."""
        spec = self.schema[key]
        fd = m.fds[self._keys.index(key)]
        paired = m.sources.get(key)
        if paired is None:
            if fd is None:
                view = m.columns[key][row : row + count]
                return view.clone() if copy else view
            out = torch.empty((count, *spec.row_shape), dtype=spec.dtype)
            _pread_span(fd, row * spec.row_bytes, out, where)
            return out
        rows = np.arange(row, row + count, dtype=np.int64)
        src = _sources(m, key, torch.from_numpy(rows), where)
        own = src == rows
        if fd is None:
            return _gather_pair(m.columns[key], m.columns[paired[0]], rows, src, own)
        curr_fd = m.fds[self._keys.index(paired[0])]
        assert curr_fd is not None  # the same row size
        out = torch.empty((count, *spec.row_shape), dtype=spec.dtype)
        if own.all():  # every row stored: one read
            _pread_span(fd, row * spec.row_bytes, out, where)
            return out
        at = np.arange(count)
        _pread_rows(fd, spec.row_bytes, rows[own], out, at[own], where)
        _pread_rows(curr_fd, spec.row_bytes, src[~own], out, at[~own], where)
        return out

    def checksum(self, name: str, row: int, count: int) -> int:
        """CRC-32 of rows ``[row, row + count)`` of every column of segment ``name`` as added,
        column after column in schema order (the ``crc32`` of a segment index entry).

        A ``next_obs`` column stored once (version 2) contributes the rows its sources select;
        each source must be the row itself or a later row of the trajectory (else
        :class:`CorruptBufferError`). Reads the files with ``pread`` (sequential runs,
        read-ahead friendly), not through the random-access mappings, and only the rows asked
        for. Raises :class:`CorruptBufferError` if a file is missing or shorter than the rows or
        ``segment.json`` is not sound, :class:`UnsafeFileError` if a file is a symbolic link or
        not a regular file (see :func:`open_column`).
        """
        path = self.segment_path(name)
        partners = self.layout_of(name).partners
        crc = 0
        for i, spec in enumerate(self.schema.values()):
            file = os.path.join(path, column_file(i))
            with _sized(file, row + count, spec.row_bytes) as fd:
                if i not in partners:
                    crc = _crc_span(fd, row * spec.row_bytes, count * spec.row_bytes, crc, file)
                    continue
                curr = os.path.join(path, column_file(partners[i]))
                with _sized(curr, row + count, spec.row_bytes) as curr_fd:
                    src = _read_sources(os.path.join(path, source_file(i)), row, count)
                    crc = _crc_pair(fd, curr_fd, src, row, spec.row_bytes, crc, file)
        return crc

    def segment_path(self, name: str) -> str:
        """The directory of segment ``name``; refuse a name that is not ``seg-NNNNNN`` and a
        segment that is a symbolic link (:class:`UnsafeFileError`), wherever it points."""
        segment_number(name)
        path = os.path.join(self.directory, name)
        if os.path.islink(path):
            raise UnsafeFileError(f"{path}: is a symbolic link; a segment must be a directory of its own")
        return path

    @property
    def active_name(self) -> str | None:
        """The segment rows are being appended to (``None`` before the first append)."""
        return None if self._active is None else segment_name(self._active)

    def forget(self, name: str) -> None:
        """Drop the mappings of one segment (before it is deleted)."""
        self._drop(segment_number(name))

    def forget_maps(self) -> None:
        """Drop every mapping (they are re-created on demand)."""
        for number in list(self._maps):
            self._drop(number)
        self._layouts.clear()


def _columns_json(schema: Schema) -> list[dict[str, Any]]:
    """The ``columns`` of ``segment.json``: name, dtype and row shape, in file order."""
    return [
        {"name": key_name(k), "dtype": str(s.dtype).removeprefix("torch."), "shape": list(s.row_shape)}
        for k, s in schema.items()
    ]


def _close_fds(fds: list[int | None]) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)


def _write_with_holes(f: ColumnFile, data: memoryview, hole: np.ndarray, start: int, row_bytes: int) -> None:
    """Append rows ``data`` (``len(hole)`` rows of ``row_bytes``) to the column file ``f``,
    which holds ``start`` rows: each run of stored rows is written, each run of ``hole`` rows
    is skipped by extending the file (``ftruncate``), so it takes no space where the file
    system has holes."""
    bounds = [0, *(np.flatnonzero(hole[1:] != hole[:-1]) + 1).tolist(), len(hole)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if hole[a]:
            os.ftruncate(f.fileno(), (start + b) * row_bytes)
        else:
            f.write(data[a * row_bytes : b * row_bytes])


def _sources(m: _Mapped, key: Key, idx: torch.Tensor, where: str) -> np.ndarray:
    """The source rows of rows ``idx`` of the paired column ``key``, int64 ``[N]``, each a row
    the segment holds (else :class:`CorruptBufferError`)."""
    src = torch.index_select(m.sources[key][1], 0, idx).numpy()
    if len(src) and (int(src.min()) < 0 or int(src.max()) >= m.rows):
        bad = int(src[(src < 0) | (src >= m.rows)][0])
        raise CorruptBufferError(
            f"{where}: the source column of {key_name(key)} names row {bad}, which the segment does not "
            "hold; the segment is damaged (check the directory with the verify tool)"
        )
    return src


def _gather_pair(
    nxt: torch.Tensor, curr: torch.Tensor, rows: np.ndarray, src: np.ndarray, own: np.ndarray
) -> torch.Tensor:
    """Rows ``rows`` of a paired column: ``nxt[rows[i]]`` where ``own[i]`` (stored), else
    ``curr[src[i]]``, through the mappings (new tensor ``[N, *row_shape]``)."""
    if own.all():
        return torch.index_select(nxt, 0, torch.from_numpy(rows))
    data = torch.index_select(curr, 0, torch.from_numpy(src))
    if own.any():
        sel = np.flatnonzero(own)
        scatter_rows(data, sel, torch.index_select(nxt, 0, torch.from_numpy(rows[sel])))
    return data


@contextlib.contextmanager
def _sized(file: str, rows: int, row_bytes: int) -> Iterator[int]:
    """A read descriptor of a segment file holding at least ``rows`` rows of ``row_bytes``."""
    try:
        f = open_column(file)
    except FileNotFoundError:
        raise CorruptBufferError(f"{file}: missing (the segment is incomplete)") from None
    with f:
        fd = f.fileno()
        if os.fstat(fd).st_size < rows * row_bytes:
            raise CorruptBufferError(
                f"{file}: holds fewer than the {rows} rows the index needs; the segment is "
                "truncated (repair the directory with the verify tool)"
            )
        yield fd


def _crc_span(fd: int, offset: int, length: int, crc: int, file: str) -> int:
    """Continue ``crc`` over ``length`` bytes of ``fd`` from ``offset``."""
    while length > 0:
        block = os.pread(fd, min(length, 8 << 20), offset)
        if not block:
            raise CorruptBufferError(f"{file}: ended early while reading rows")
        crc = zlib.crc32(block, crc)
        offset += len(block)
        length -= len(block)
    return crc


def _read_sources(file: str, row: int, count: int) -> np.ndarray:
    """Entries ``[row, row + count)`` of a source column file, int64 ``[count]``, each checked
    to be its own row or a later row of ``[row, row + count)``."""
    with _sized(file, row + count, SOURCE_BYTES) as fd:
        raw = bytearray(count * SOURCE_BYTES)
        done = 0
        while done < len(raw):
            got = os.preadv(fd, [memoryview(raw)[done:]], row * SOURCE_BYTES + done)
            if got <= 0:
                raise CorruptBufferError(f"{file}: ended early while reading rows")
            done += got
    src = np.frombuffer(raw, dtype=np.int64)
    own = np.arange(row, row + count, dtype=np.int64)
    bad = (src != own) & ((src < own) | (src >= row + count))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CorruptBufferError(
            f"{file}: row {row + i} names source row {int(src[i])}, not itself nor a later row of "
            f"its trajectory [{row}, {row + count}); the segment is damaged"
        )
    return src


def _crc_pair(fd: int, curr_fd: int, src: np.ndarray, row: int, row_bytes: int, crc: int, file: str) -> int:
    """Continue ``crc`` over a paired column's rows ``[row, row + len(src))`` as its sources
    select them: one sequential read per run of rows with the same offset to their source."""
    offset = src - np.arange(row, row + len(src), dtype=np.int64)
    bounds = [0, *(np.flatnonzero(offset[1:] != offset[:-1]) + 1).tolist(), len(src)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        where = fd if offset[a] == 0 else curr_fd
        crc = _crc_span(where, int(src[a]) * row_bytes, (b - a) * row_bytes, crc, file)
    return crc


def file_resident_bytes() -> int:
    """Resident file-backed bytes of this process (``/proc/self/statm``; 0 if unavailable)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[2]) * mmap.PAGESIZE
    except (OSError, ValueError, IndexError):
        return 0


def row_files(path: str, schema: Schema | None) -> list[tuple[str, int | None]]:
    """``(file, bytes per row)`` of every column file (``NNN.bin``) and source column file
    (``src-NNN.bin``) of segment ``path``: regular files only, never through a link; ``None``
    bytes per row for a file of a column the schema lacks (every file with no schema)."""
    specs = list(schema.values()) if schema else []
    out: list[tuple[str, int | None]] = []
    for entry in os.scandir(path):
        column, source = COLUMN_RE.match(entry.name), SOURCE_RE.match(entry.name)
        if (column is None and source is None) or not entry.is_file(follow_symlinks=False):
            continue
        i = int((column or source).group(1))  # type: ignore[union-attr]
        if i >= len(specs):
            out.append((entry.path, None))
        else:
            out.append((entry.path, specs[i].row_bytes if column is not None else SOURCE_BYTES))
    return out


def bytes_past(path: str, schema: Schema, rows: int) -> int:
    """Bytes the column and source files of segment ``path`` hold past row ``rows`` (files of
    columns the schema lacks are not counted)."""
    return sum(
        max(0, os.lstat(file).st_size - rows * row_bytes)
        for file, row_bytes in row_files(path, schema)
        if row_bytes is not None
    )


def truncate_segment(path: str, schema: Schema | None, rows: int) -> None:
    """Cut every column and source file of segment ``path`` to ``rows`` rows (partial appends
    of a crash).

    Files already shorter are left alone (reading them reports the damage). With no schema
    (nothing indexed), every such file is emptied.
    """
    for file, row_bytes in row_files(path, schema):
        keep = rows * (row_bytes or 0)
        if os.lstat(file).st_size > keep:
            with open(file, "r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())


def open_column(file: str) -> BinaryIO:
    """Open a segment column (or source column) file for reading: a regular file only, never
    through a link.

    The writer never makes a column file a link, so any symbolic link (inside the directory or
    out of it), FIFO or device there is refused with :class:`UnsafeFileError` before it is
    opened (:func:`~..safe_open.open_regular`); this is never damage a reader may skip. Its size
    is checked by the caller against the rows the index names.

    Raises:
        FileNotFoundError: the file is missing (the segment is incomplete).
        UnsafeFileError: it is a symbolic link or not a regular file.
        BufferDirectoryError: the system refused to read it.
    """
    return open_regular(file, what="segment column file", links=False)


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, writable, flat."""
    return memoryview(tensor.view(-1).view(torch.uint8).numpy()).cast("B")


def _pread_span(fd: int, offset: int, out: torch.Tensor, where: str) -> None:
    """Fill ``out`` (contiguous) with the file's bytes from ``offset`` on."""
    buf = _bytes_of(out)
    done = 0
    while done < len(buf):
        got = os.preadv(fd, [buf[done:]], offset + done)
        if got <= 0:
            raise CorruptBufferError(f"{where}: a column file ends before the rows the index names")
        done += got


def _pread_rows(
    fd: int, row_bytes: int, rows: np.ndarray, out: torch.Tensor, dest: np.ndarray, where: str
) -> None:
    """``out[dest[i]]`` = row ``rows[i]`` of the column file ``fd``: one ``pread`` per row."""
    buf = _bytes_of(out)
    for d, r in zip(dest.tolist(), rows.tolist(), strict=True):
        start = d * row_bytes
        if os.preadv(fd, [buf[start : start + row_bytes]], r * row_bytes) != row_bytes:
            _pread_span(fd, r * row_bytes, out[d], where)  # a short read: finish it, or raise


def _map_file(
    file: str, spec: ColumnSpec, min_rows: int, maps: list[mmap.mmap], pread: bool
) -> tuple[torch.Tensor, int, int | None]:
    """Map a column (or source column) file of at least ``min_rows`` rows of ``spec``: returns
    the ``[rows, *row_shape]`` tensor, its rows and (with ``pread``) a descriptor of it."""
    try:
        f = open_column(file)
    except FileNotFoundError:
        f = None
    size = -1 if f is None else os.fstat(f.fileno()).st_size
    n = size // spec.row_bytes if spec.row_bytes else min_rows
    if f is None or n < min_rows:
        if f is not None:
            f.close()
        raise CorruptBufferError(
            f"{file}: holds {max(n, 0)} rows but the index needs {min_rows}; the segment is "
            "truncated (repair the directory with the verify tool)"
        )
    with f:
        tensor = _map_column(f, file, n, spec, maps)
        return tensor, n, os.dup(f.fileno()) if pread else None


def _map_column(f: BinaryIO, file: str, rows: int, spec: ColumnSpec, maps: list[mmap.mmap]) -> torch.Tensor:
    """Map the first ``rows`` rows of the open column file ``f`` (``file``) as a tensor."""
    shape = (rows, *spec.row_shape)
    if rows == 0 or spec.row_bytes == 0:
        return torch.empty(shape, dtype=spec.dtype)
    # copy-on-write private mapping: pages come from the page cache, nothing is written back;
    # numpy holds a buffer export, so the map cannot be closed under the tensor
    try:
        m = mmap.mmap(f.fileno(), rows * spec.row_bytes, access=mmap.ACCESS_COPY)
    except OSError as exc:
        raise unreadable(file, exc) from None
    m.madvise(mmap.MADV_RANDOM)  # rows are read at random: no readahead around each fault
    maps.append(m)
    arr = np.frombuffer(m, dtype=_numpy_dtype(spec.dtype)).reshape(shape)
    tensor = torch.from_numpy(arr)
    return tensor.view(torch.bfloat16) if spec.dtype == torch.bfloat16 else tensor


def check_segment_meta(path: str, schema: Schema) -> Layout:
    """The layout ``path/segment.json`` describes, checked against the buffer's ``schema``.

    Version 1: the columns must be the schema's. Version 2 also lists ``pairs``, each
    ``{"curr_obs": i, "next_obs": j, "source": "src-JJJ.bin"}``: ``i`` and ``j`` columns of the
    schema named ``curr_obs.K`` and ``next_obs.K`` with the same dtype and row shape, each
    ``next_obs`` column at most once, and the source file named exactly
    :func:`source_file` of ``j`` (never a path).

    Raises:
        CorruptBufferError: the file is missing, unreadable, describes other columns, has an
            unknown version or unsound pairs.
        UnsafeFileError: it is a symbolic link or not a regular file.
    """
    meta_path = os.path.join(path, SEGMENT_META)
    try:  # a regular file, never through a link, of at most JSON_BYTES
        meta = load_json(meta_path, SEGMENT_META, JSON_BYTES, links=False)
    except FileNotFoundError:
        raise CorruptBufferError(f"{meta_path}: is missing; the segment cannot be read") from None
    except UnsafeFileError:
        raise
    except CorruptBufferError as exc:  # too large, or not JSON
        raise CorruptBufferError(
            f"{meta_path}: unreadable ({str(exc).removeprefix(meta_path + ': ')})"
        ) from None
    if not isinstance(meta, dict) or meta.get("columns") != _columns_json(schema):
        raise CorruptBufferError(
            f"{meta_path}: its columns do not match the buffer's fields; the segment belongs to "
            "another buffer"
        )
    version = meta.get("format_version")
    if type(version) is not int or version not in FORMAT_VERSIONS:
        raise CorruptBufferError(
            f"{meta_path}: format_version {version!r} is not supported (this library reads "
            f"{' and '.join(map(str, FORMAT_VERSIONS))})"
        )
    if version == FORMAT_VERSION:
        return Layout()
    return Layout(DEDUP_FORMAT_VERSION, _checked_pairs(meta.get("pairs"), meta_path, schema))


def _checked_pairs(pairs: Any, meta_path: str, schema: Schema) -> tuple[tuple[int, int], ...]:
    """The ``pairs`` of a version 2 ``segment.json`` as ``(curr_obs, next_obs)`` indices."""

    def bad(why: str) -> CorruptBufferError:
        return CorruptBufferError(f"{meta_path}: {why}; the segment cannot be read")

    if not isinstance(pairs, list) or not pairs:
        raise bad("format_version 2 needs a non-empty list of pairs")
    keys = list(schema)
    out: list[tuple[int, int]] = []
    for pair in pairs:
        if not isinstance(pair, dict) or set(pair) != {"curr_obs", "next_obs", "source"}:
            raise bad(f"pair {pair!r} is not an object of curr_obs, next_obs and source")
        curr, nxt = pair["curr_obs"], pair["next_obs"]
        if not all(type(i) is int and 0 <= i < len(keys) for i in (curr, nxt)):
            raise bad(f"pair {pair!r} names a column index outside [0, {len(keys)})")
        ck, nk = keys[curr], keys[nxt]
        if not (len(nk) == 2 and nk[0] == "next_obs" and ck == ("curr_obs", nk[1])):
            raise bad(f"pair {pair!r} does not pair a next_obs column with the curr_obs column of its key")
        if schema[ck] != schema[nk]:
            raise bad(f"pair {pair!r} pairs columns of different dtype or row shape")
        if any(nxt == n for _, n in out):
            raise bad(f"pair {pair!r} lists column {nxt} a second time")
        if pair["source"] != source_file(nxt):
            raise bad(f"pair {pair!r} names source file {pair['source']!r}, not {source_file(nxt)!r}")
        out.append((curr, nxt))
    return tuple(out)
