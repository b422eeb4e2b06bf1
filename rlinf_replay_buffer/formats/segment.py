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
they belong to. A segment is *sealed* once it holds ``segment_bytes`` (1 GiB by default) and the
next trajectory starts a new one; a trajectory never spans two segments.

Durability: rows are appended and fsync'd before the index entry naming them is written, so after
a crash the index only names complete rows; :meth:`SegmentStore.recover` truncates the bytes a
crash left beyond the last indexed row. An append that fails (disk full, I/O error) leaves every
column file as it was: the part it wrote is cut off, at once or before the next append.
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
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np
import torch

from ..cache import scatter_rows
from ..errors import CorruptBufferError, UnsafeFileError, unreadable
from ..fsio import atomic_write_json, fsync_dir
from ..safe_open import JSON_BYTES, load_json, open_regular
from ..schema import ColumnSpec, Schema
from ..trajectory import Key, key_name

FORMAT_VERSION = 1
SEGMENT_RE = re.compile(r"^seg-(\d{6,})\Z")
SEGMENT_META = "segment.json"
DEFAULT_SEGMENT_BYTES = 1 << 30
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


class SegmentStore:
    """The segments of one directory: appends rows (writer side) and maps rows (reader side).

    Args:
        directory: the buffer directory holding ``seg-*`` folders.
        schema: the buffer's columns; column ``i`` of the schema is file ``{i:03d}.bin``.
        segment_bytes: seal a segment once it holds this many bytes of rows (default
            ``DEFAULT_SEGMENT_BYTES``, 1 GiB).
    """

    def __init__(self, directory: str, schema: Schema, segment_bytes: int | None = None) -> None:
        self.directory = directory
        self.schema = schema
        self.segment_bytes = segment_bytes or DEFAULT_SEGMENT_BYTES
        self._keys = list(schema)
        self._active: int | None = None
        self._active_rows = 0
        self._files: list[ColumnFile] = []
        self._maps: OrderedDict[int, tuple[int, dict[Key, torch.Tensor]]] = OrderedDict()
        self._mmaps: dict[int, list[mmap.mmap]] = {}
        self._fds: dict[int, list[int | None]] = {}  # per mapped segment: pread descriptors
        self._resident_base: int | None = None  # file-backed resident bytes before our maps
        self._dirty = False  # rows appended but not yet fsync'd
        self._torn = False  # a failed append left bytes past _active_rows (cut before the next)
        self._failed_syncs = 0
        self._append_lock = threading.Lock()  # the writer thread and a checkpoint may both append

    # -- writing ------------------------------------------------------------------------------
    def append(self, rows: Mapping[Key, torch.Tensor], sync: bool = True) -> tuple[str, int]:
        """Append one trajectory's rows (``[N, ...]`` per column); return ``(segment, first row)``.

        With ``sync`` the rows are fsync'd when this returns; without it, call :meth:`sync`
        before writing the index entries that name them (group commit: one fsync per column
        file for a batch of trajectories).
        """
        with self._append_lock:
            located = self._append(rows)
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
                for f in self._files:
                    os.fsync(f.fileno())
            except OSError:
                self._failed_syncs += 1
                raise
            self._dirty = False

    def _append(self, rows: Mapping[Key, torch.Tensor]) -> tuple[str, int]:
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
        try:
            for key, f in zip(self._keys, self._files, strict=True):
                tensor = rows[key].contiguous()
                if tensor.numel() == 0:  # a field with a zero-size dimension holds no bytes
                    continue
                if tensor.dtype == torch.bfloat16:
                    tensor = tensor.view(torch.uint16)
                self._torn = True
                f.write(memoryview(tensor.numpy()).cast("B"))
            self._dirty = True
            self._torn = False
        except BaseException:
            with contextlib.suppress(OSError):  # else cut before the next append
                self._truncate_active(start)  # leave no partial row behind
            raise
        self._active_rows += n
        return segment_name(self._active), start

    def _next_number(self) -> int:
        numbers = [segment_number(n) for n in os.listdir(self.directory) if SEGMENT_RE.match(n)]
        return max(numbers, default=-1) + 1

    def _start_segment(self, number: int) -> None:
        self._sync()  # a sealed segment is durable before the next one starts
        self._close_files()
        path = os.path.join(self.directory, segment_name(number))
        os.makedirs(path)
        files: list[ColumnFile] = []
        try:
            atomic_write_json(os.path.join(path, SEGMENT_META), self.describe())
            for i in range(len(self._keys)):
                files.append(ColumnFile(os.path.join(path, column_file(i))))
            fsync_dir(path)
            fsync_dir(self.directory)
        except BaseException:
            # a segment that could not start holds no row: remove it, or it would be a segment
            # no index entry names (the next attempt takes the next number)
            for f in files:
                f.close()
            shutil.rmtree(path, ignore_errors=True)
            raise
        self._files = files
        self._active, self._active_rows, self._torn = number, 0, False

    def _truncate_active(self, rows: int) -> None:
        for spec, f in zip(self.schema.values(), self._files, strict=True):
            f.flush()
            os.ftruncate(f.fileno(), rows * spec.row_bytes)
        self._torn = False

    def describe(self) -> dict[str, Any]:
        """The ``segment.json`` content: format version and the columns in file order."""
        return {
            "format_version": FORMAT_VERSION,
            "columns": [
                {
                    "name": key_name(k),
                    "dtype": str(s.dtype).removeprefix("torch."),
                    "shape": list(s.row_shape),
                }
                for k, s in self.schema.items()
            ],
        }

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
        for f in self._files:
            f.close()
        self._files = []
        self._active = None

    # -- reading ------------------------------------------------------------------------------
    def columns(self, name: str, min_rows: int) -> dict[Key, torch.Tensor]:
        """Memory-mapped ``[rows, *row_shape]`` tensors of every column of segment ``name``.

        ``min_rows``: rows the caller needs; a mapping shorter than that (the segment grew since
        it was mapped) is remapped.
        """
        number = segment_number(name)
        held = self._maps.get(number)
        if held is not None and held[0] >= min_rows:
            self._maps.move_to_end(number)
            return held[1]
        path = self.segment_path(name)
        check_segment_meta(path, self.describe())
        cols: dict[Key, torch.Tensor] = {}
        maps: list[mmap.mmap] = []
        fds: list[int | None] = []
        rows = None
        for i, (key, spec) in enumerate(self.schema.items()):
            file = os.path.join(path, column_file(i))
            try:
                f = open_column(file)
            except FileNotFoundError:
                f = None
            size = -1 if f is None else os.fstat(f.fileno()).st_size
            n = size // spec.row_bytes if spec.row_bytes else min_rows
            if size < 0 or n < min_rows:
                if f is not None:
                    f.close()
                raise CorruptBufferError(
                    f"{file}: holds {max(n, 0)} rows but the index needs {min_rows}; the segment is "
                    "truncated (repair the directory with the verify tool)"
                )
            assert f is not None
            with f:
                cols[key] = _map_column(f, file, n, spec, maps)
                fds.append(os.dup(f.fileno()) if spec.row_bytes >= PREAD_ROW_BYTES else None)
            rows = n if rows is None else min(rows, n)
        self._drop(number)
        self._maps[number] = (rows or 0, cols)
        self._mmaps[number] = maps
        self._fds[number] = fds
        if len(self._maps) > _OPEN_SEGMENTS:
            self._drop(next(iter(self._maps)))
        return cols

    def gather_into(
        self, name: str, rows: np.ndarray, out: dict[Key, torch.Tensor], dest: np.ndarray | None
    ) -> None:
        """``out[k][dest[i]] = row rows[i]`` of segment ``name`` for every column ``k``.

        ``rows``, ``dest``: int64 ``[N]`` (``dest=None``: ``out``'s rows in order, ``N`` of
        them); ``out``: contiguous ``[M, *row_shape]`` tensors of the schema's dtypes. Columns
        of short rows are gathered through the mapping (one ``index_select``); columns of rows
        of ``PREAD_ROW_BYTES`` or more are read with one ``pread`` per row, which maps nothing
        into this process.

        Raises:
            CorruptBufferError: a column file is shorter than the rows asked for.
        """
        cols = self.columns(name, int(rows.max()) + 1)
        fds = self._fds[segment_number(name)]
        idx = torch.from_numpy(rows)
        to = np.arange(len(rows)) if dest is None else dest
        for (key, spec), fd in zip(self.schema.items(), fds, strict=True):
            if fd is not None:
                _pread_rows(fd, spec.row_bytes, rows, out[key], to, self.segment_path(name))
            elif dest is None:
                out[key] = torch.index_select(cols[key], 0, idx)
            else:
                scatter_rows(out[key], dest, torch.index_select(cols[key], 0, idx))
        self.note_read()

    def _drop(self, number: int) -> None:
        """Forget one segment's mappings and close its descriptors."""
        self._maps.pop(number, None)
        self._mmaps.pop(number, None)
        for fd in self._fds.pop(number, ()):
            if fd is not None:
                os.close(fd)

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
        for maps in self._mmaps.values():
            for m in maps:
                m.madvise(mmap.MADV_DONTNEED)

    def read(self, name: str, row: int, count: int) -> dict[Key, torch.Tensor]:
        """Copies of rows ``[row, row + count)`` of every column of segment ``name`` (columns
        of long rows are read with one ``pread`` each, the rest through the mapping)."""
        cols = self.columns(name, row + count)
        fds = self._fds[segment_number(name)]
        out = {}
        for (key, spec), fd in zip(self.schema.items(), fds, strict=True):
            if fd is None:
                out[key] = cols[key][row : row + count].clone()
            else:
                out[key] = torch.empty((count, *spec.row_shape), dtype=spec.dtype)
                _pread_span(fd, row * spec.row_bytes, out[key], self.segment_path(name))
        return out

    def checksum(self, name: str, row: int, count: int) -> int:
        """CRC-32 of rows ``[row, row + count)`` of every column of segment ``name``, column
        after column in schema order (the ``crc32`` of a segment index entry).

        Reads the column files with ``pread`` (sequential, read-ahead friendly), not through the
        random-access mappings, and only the rows asked for. Raises :class:`CorruptBufferError`
        if a column file is missing or shorter than the rows, :class:`UnsafeFileError` if it is
        a symbolic link or not a regular file (see :func:`open_column`).
        """
        path = self.segment_path(name)
        crc = 0
        for i, spec in enumerate(self.schema.values()):
            file = os.path.join(path, column_file(i))
            offset, length = row * spec.row_bytes, count * spec.row_bytes
            try:
                f = open_column(file)
            except FileNotFoundError:
                raise CorruptBufferError(f"{file}: missing (the segment is incomplete)") from None
            with f:
                fd = f.fileno()
                if os.fstat(fd).st_size < offset + length:
                    raise CorruptBufferError(
                        f"{file}: holds fewer than the {row + count} rows the index needs; the "
                        "segment is truncated (repair the directory with the verify tool)"
                    )
                while length > 0:
                    block = os.pread(fd, min(length, 8 << 20), offset)
                    if not block:
                        raise CorruptBufferError(f"{file}: ended early while reading rows")
                    crc = zlib.crc32(block, crc)
                    offset += len(block)
                    length -= len(block)
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


def file_resident_bytes() -> int:
    """Resident file-backed bytes of this process (``/proc/self/statm``; 0 if unavailable)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[2]) * mmap.PAGESIZE
    except (OSError, ValueError, IndexError):
        return 0


def truncate_segment(path: str, schema: Schema | None, rows: int) -> None:
    """Cut every column file of segment ``path`` to ``rows`` rows (partial appends of a crash).

    Files already shorter are left alone (reading them reports the damage). With no schema
    (nothing indexed), every column file is emptied.
    """
    specs = list(schema.values()) if schema else []
    for entry in os.scandir(path):
        m = re.match(r"^(\d{3,})\.bin$", entry.name)
        if m is None or not entry.is_file(follow_symlinks=False):
            continue
        i = int(m.group(1))
        keep = rows * specs[i].row_bytes if i < len(specs) else 0
        if entry.stat(follow_symlinks=False).st_size > keep:
            with open(entry.path, "r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())


def open_column(file: str) -> BinaryIO:
    """Open a segment column file for reading: a regular file only, never through a link.

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


def check_segment_meta(path: str, expected: dict[str, Any]) -> None:
    """Raise :class:`CorruptBufferError` unless ``path/segment.json`` describes ``expected``."""
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
    if not isinstance(meta, dict) or meta.get("columns") != expected["columns"]:
        raise CorruptBufferError(
            f"{meta_path}: its columns do not match the buffer's fields; the segment belongs to "
            "another buffer"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise CorruptBufferError(
            f"{meta_path}: format_version {meta.get('format_version')!r} is not supported "
            f"(this library reads {FORMAT_VERSION})"
        )
