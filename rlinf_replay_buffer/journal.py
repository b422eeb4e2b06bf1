"""The trajectory index, ``trajectory_index.json``, and its append-only journal.

* ``trajectory_index.json``: RLinf's index (``trajectory_index`` + ``trajectory_id_list``), each
  entry extended with this library's keys; rewritten atomically as a whole at compaction
  (:func:`write_index`). RLinf's merge tool names it ``trajector_index.json`` (sic,
  :data:`INDEX_RLINF_MERGE`), which is read when the first is absent.
* ``trajectory_index.journal``: one JSON entry per line, appended as trajectories are written
  between compactions (:class:`Journal`), so persisting the index costs O(1) per trajectory; an
  entry ``{"trajectory_id": id, "removed": true}`` records an eviction. A torn last line (an
  append a crash interrupted) is ignored when reading and cut off before the next append.
* ``trajectory_index.columns`` (:mod:`.index_columns`): the index file's entries as binary
  columns, written with it; :func:`read_index_parts` reads them instead of the JSON when they
  match it.

:func:`read_index` gives the entries in order: the index file's, then the journal's. A writer may
fold the journal into the index (and remove it) while a reader reads them:
:func:`read_consistent` reads the pair so that it holds every entry the directory held when the
read started (see its docstring).
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from . import index_columns
from .errors import BufferDirectoryError, CorruptBufferError, UnsafeFileError, unreadable
from .fsio import atomic_write_json, fsync_dir
from .metadata import FORMAT_VERSION
from .record_table import RecordColumns
from .safe_open import INDEX_BYTES, check_size, parse_json, read_limited, refuse_special

INDEX = "trajectory_index.json"
INDEX_RLINF_MERGE = "trajector_index.json"  # sic: also written by RLinf's merge tool
JOURNAL = "trajectory_index.journal"


T = TypeVar("T")
#: times :func:`read_consistent` reads the index again when the journal was replaced meanwhile
READ_ATTEMPTS = 20


def _open_journal(jpath: str) -> int | None:
    """A read-only descriptor of the journal (``None`` if there is none); never through a link,
    never blocking (a FIFO is refused, not waited on)."""
    try:
        fd = os.open(jpath, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise unreadable(jpath, exc) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            msg = f"{jpath}: is a symbolic link; the journal must be a regular file"
            raise UnsafeFileError(msg) from None
        raise
    try:
        refuse_special(jpath, os.fstat(fd).st_mode, "journal")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_fd(fd: int, jpath: str) -> bytes:
    """Everything from the start of the open journal ``fd`` to its current end, at most
    :data:`~.safe_open.INDEX_BYTES` (a larger journal is :class:`CorruptBufferError`)."""
    check_size(jpath, os.fstat(fd).st_size, INDEX_BYTES, "journal")
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
        check_size(jpath, offset, INDEX_BYTES, "journal")  # it grew meanwhile
    return b"".join(chunks)


def _still_the_journal(fd: int, jpath: str) -> bool:
    """Whether the open file ``fd`` is still the directory's journal (not removed or replaced)."""
    held = os.fstat(fd)
    try:
        now = os.stat(jpath, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return held.st_nlink > 0 and (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def read_consistent(path: str, read_index_file: Callable[[], T]) -> tuple[T, bytes]:
    """``read_index_file()`` and the journal's bytes, read so that together they hold every
    entry the directory ``path`` held when the call started (and possibly later ones).

    A writer compacts by writing the whole index, then removing the journal; later appends start
    a new journal. Reading the index and then opening the journal could therefore pair an old
    index with a new journal and miss the entries of the removed one. So the journal is opened
    first and held open, then the index is read; if the held journal is still the directory's
    journal after that, the index read is the one it continues (or a later one, which lists
    every entry the held journal adds, or a removal line it also holds), and the held journal
    is read to its end. Otherwise (a compaction happened meanwhile) both are read again, up to
    :data:`READ_ATTEMPTS` times. Neither the reader nor the writer takes a lock.

    Returns:
        ``(read_index_file(), journal bytes)``; ``b""`` when there is no journal.

    Raises:
        BufferDirectoryError: the journal was compacted at every attempt.
        UnsafeFileError: the journal is a symbolic link or not a regular file.
    """
    jpath = os.path.join(path, JOURNAL)
    for _ in range(READ_ATTEMPTS):
        fd = _open_journal(jpath)
        try:
            index = read_index_file()
            if fd is None:  # no journal: the index alone held every entry
                return index, b""
            if _still_the_journal(fd, jpath):
                return index, _read_fd(fd, jpath)
        finally:
            if fd is not None:
                os.close(fd)
    raise BufferDirectoryError(
        f"{jpath}: was folded into {INDEX} at each of {READ_ATTEMPTS} attempts to read the index "
        "(a writer compacts it faster than it can be read); read the directory again later"
    )


def parse_journal(path: str, data: bytes | None = None) -> tuple[list[dict[str, Any]], list[int], bool]:
    """The journal's entries, the numbers of its bad lines, and whether its last line is torn.

    A torn last line (an append a crash interrupted, without its newline) is not a bad line.
    ``data``: the journal's bytes as :func:`read_consistent` read them (default: read the
    journal of the directory ``path`` now).
    """
    if data is None:
        jpath = os.path.join(path, JOURNAL)
        fd = _open_journal(jpath)
        if fd is None:
            return [], [], False
        try:
            data = _read_fd(fd, jpath)
        finally:
            os.close(fd)
    lines = data.split(b"\n")
    entries: list[dict[str, Any]] = []
    bad: list[int] = []
    torn = False
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, too deeply nested, too many digits
            entry = None
        if isinstance(entry, dict):
            entries.append(entry)
        elif not any(rest.strip() for rest in lines[i + 1 :]):
            torn = True  # the last line: an interrupted append
        else:
            bad.append(i + 1)
    return entries, bad, torn


def _read_journal(path: str, data: bytes) -> list[dict[str, Any]]:
    entries, bad, _ = parse_journal(path, data)
    if bad:
        raise CorruptBufferError(
            f"{os.path.join(path, JOURNAL)}: line {bad[0]} is not an index entry; repair the "
            "directory with the verify tool (--repair)"
        )
    return entries


def _read_index_file(path: str, columns: bool) -> tuple[str, Any] | None:
    """``(path, parsed JSON)`` of the index file (either name), ``None`` if there is none; with
    ``columns``, ``(path, RecordColumns)`` instead when ``trajectory_index.json`` has a sidecar
    that matches it (:mod:`.index_columns`)."""
    for name in (INDEX, INDEX_RLINF_MERGE):
        ipath = os.path.join(path, name)
        if os.path.lexists(ipath):  # a FIFO or a link out is refused by read_limited, not skipped
            found = index_columns.read(path, ipath) if columns and name == INDEX else None
            if found is not None:
                return ipath, found
            try:
                return ipath, parse_json(read_limited(ipath, INDEX_BYTES, what=name, links=True), ipath, name)
            except FileNotFoundError:  # a link to nothing: no index under this name
                continue
    return None


@dataclass
class IndexParts:
    """A directory's index as :func:`read_index_parts` reads it.

    Attributes:
        columns: the entries of ``trajectory_index.json`` as columns, when its sidecar matches
            it (``None``: ``entries`` holds them).
        kept: with ``columns``, which of their rows the journal did not remove (bool ``[n]``).
        entries: without ``columns``, every entry in order (index file, then journal); with
            them, the entries the journal adds after the kept rows.
        ours: the index carries this library's ``format_version``.
        journal_entries: journal lines that changed the index (added or removed entries).
    """

    columns: RecordColumns | None
    kept: np.ndarray | None
    entries: list[dict[str, Any]]
    ours: bool
    journal_entries: int


def read_index_parts(path: str, columns: bool = True) -> IndexParts:
    """The index of the directory ``path``: ``trajectory_index.json`` (as columns, from its
    sidecar, with ``columns`` and when it matches) and the journal applied to it.

    The pair is read with :func:`read_consistent`: a writer compacting meanwhile never makes
    an entry the directory held when the call started go missing.
    """
    entries: list[dict[str, Any]] = []
    ours = False
    found, journal_data = read_consistent(path, lambda: _read_index_file(path, columns))
    if found is not None and isinstance(found[1], RecordColumns):
        journal = _read_journal(path, journal_data)
        kept, added, count = _apply_journal_to_columns(found[1].ids, journal)
        return IndexParts(found[1], kept, added, True, count)
    if found is not None:
        ipath, data = found
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("trajectory_index"), dict)
            or not isinstance(data.get("trajectory_id_list"), list)
        ):
            raise CorruptBufferError(
                f"{ipath}: expected {{'trajectory_index': {{...}}, 'trajectory_id_list': [...]}}"
            )
        ours = data.get("format_version") is not None
        table = data["trajectory_index"]
        for tid in data["trajectory_id_list"]:
            if isinstance(tid, bool) or not isinstance(tid, int):
                raise CorruptBufferError(f"{ipath}: trajectory_id_list holds {tid!r}")
            entry = table.get(str(tid))
            if not isinstance(entry, dict):
                raise CorruptBufferError(f"{ipath}: trajectory {tid} is listed but has no index entry")
            entries.append(dict(entry, trajectory_id=tid))
    journal = _read_journal(path, journal_data)
    if journal:
        ours = ours or not entries
    added, removed = apply_journal(entries, journal)
    return IndexParts(None, None, entries, ours, added + len(removed))


def read_index(path: str) -> tuple[list[dict[str, Any]], bool, int]:
    """Index entries in order (index file, then journal), whether ours, and journal length
    (:func:`read_index_parts` without columns)."""
    parts = read_index_parts(path, columns=False)
    return parts.entries, parts.ours, parts.journal_entries


def apply_journal(entries: list[dict[str, Any]], journal: list[dict[str, Any]]) -> tuple[int, list[int]]:
    """Apply journal lines to ``entries`` in place: an entry whose id is not listed yet is
    appended; a removal (``{"trajectory_id": id, "removed": true}``, written when a capacity
    limit evicts a trajectory) drops the id. Returns (entries appended, ids removed)."""
    if not journal:
        return 0, []
    listed = {e.get("trajectory_id"): e for e in entries}
    if len(listed) != len(entries):
        raise CorruptBufferError("the index lists a trajectory id twice; repair it with the verify tool")
    added = 0
    removed: list[int] = []
    for entry in journal:
        tid = entry.get("trajectory_id")
        if entry.get("removed") is True:
            if listed.pop(tid, None) is not None:
                removed.append(tid)
        elif tid not in listed:
            listed[tid] = entry
            added += 1
    entries[:] = list(listed.values())
    return added, removed


def _apply_journal_to_columns(
    ids: np.ndarray, journal: list[dict[str, Any]]
) -> tuple[np.ndarray, list[dict[str, Any]], int]:
    """:func:`apply_journal` on an index held as columns (``ids``: their trajectory ids):
    returns which rows stay, the entries appended after them (in order) and the number of
    lines that changed the index."""
    kept = np.ones(len(ids), dtype=np.bool_)
    if not journal:
        return kept, [], 0
    rows = {tid: i for i, tid in enumerate(ids.tolist())}  # as apply_journal's dict lookups
    added: dict[Any, dict[str, Any]] = {}
    changes = 0
    for entry in journal:
        tid = entry.get("trajectory_id")
        row = rows.get(tid)
        listed = row is not None and bool(kept[row])
        if entry.get("removed") is True:
            if tid in added:
                del added[tid]
                changes += 1
            elif listed:
                kept[row] = False
                changes += 1
        elif not listed and tid not in added:
            added[tid] = entry
            changes += 1
    return kept, list(added.values()), changes


def removed_ids(path: str) -> list[int]:
    """Ids the journal records as removed (their files may still await deletion)."""
    entries, _, _ = parse_journal(path)
    return [
        e["trajectory_id"]
        for e in entries
        if e.get("removed") is True and isinstance(e.get("trajectory_id"), int)
    ]


def write_index(path: str, entries: Iterable[dict[str, Any]], keep_journal: bool = False) -> None:
    """Atomically write the whole index (entries in order), then drop the journal it contains.

    The order matters to readers beside the writer (:func:`read_consistent`): the journal is
    removed only once an index listing all its entries is in place.

    ``keep_journal``: leave the journal in place (``flush()`` publishes the index for RLinf's
    loader this way; the journal's entries are then all listed, and reading skips them). The
    binary sidecar is then not rewritten (it would cost a third of the publish at every
    ``flush()``): the old one no longer matches the JSON and is ignored until compaction
    writes both again.
    """
    entries = list(entries)
    data = atomic_write_json(
        os.path.join(path, INDEX),
        {
            "format_version": FORMAT_VERSION,
            "trajectory_index": {str(e["trajectory_id"]): e for e in entries},
            "trajectory_id_list": [e["trajectory_id"] for e in entries],
        },
    )
    if keep_journal:
        return
    index_columns.write(path, entries, data)  # best effort: an optimization of reading only
    jpath = os.path.join(path, JOURNAL)
    if os.path.exists(jpath):
        os.unlink(jpath)
        fsync_dir(path)


def _trim_torn_tail(path: str) -> None:
    """Cut a torn last line (an append interrupted by a crash) off the journal.

    The reader ignores a torn final line, but the next append must not follow it: glued onto it
    the new entry would be lost, and on a line of its own it would leave the torn line in the
    middle, which makes the journal unreadable. (Journals are compacted every few thousand
    entries, so reading one whole is cheap.)
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UnsafeFileError(f"{path}: cannot be opened as a regular file ({exc.strerror})") from None
    with os.fdopen(fd, "r+b") as f:
        st = os.fstat(fd)
        refuse_special(path, st.st_mode, "journal")
        check_size(path, st.st_size, INDEX_BYTES, "journal")
        os.set_blocking(fd, True)
        data = f.read()
        body = data.rstrip(b"\n")
        start = body.rfind(b"\n") + 1  # start of the last non-empty line
        try:
            last = json.loads(body[start:]) if body else {}
        except (ValueError, RecursionError):
            last = None
        if isinstance(last, dict):
            if data and not data.endswith(b"\n"):  # complete but unterminated: end the line
                f.write(b"\n")
                os.fsync(f.fileno())
            return
        f.truncate(start)
        os.fsync(f.fileno())


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write fewer: it is called again
    for the rest). Raises the ``OSError`` of a failed call; some bytes may then be written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Journal:
    """Append-only index journal: one JSON entry per line; ``sync()`` makes appends durable.

    An append writes its whole line or, if it fails, leaves the journal as it was (a partly
    written line is cut off), so the caller may append the entry again. A failed ``sync()``
    is not trusted to be retried by a plain fsync (after a write-back error the kernel may
    report the next fsync clean without having written the pages): the next ``append`` or
    ``sync`` writes every line appended since the last good fsync again before fsyncing.

    Attributes:
        lines: lines appended since the journal was last folded into the index (:meth:`reset`).
        appended: lines appended in this process, ever (never reset): a change counter.
    """

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, JOURNAL)
        self._fd: int | None = None
        self._end = 0  # bytes of whole lines in the file
        self._synced = 0  # bytes of the file known durable (fsync'd, or there when opened)
        self._since_sync: list[bytes] = []  # lines written after _synced, in order
        self._cut = False  # a failed write may have left part of a line after _end
        self._rewrite = False  # a fsync failed: write the lines after _synced again first
        self._clean = True  # nothing written or cut since the last good fsync
        self.lines = 0
        self.appended = 0

    def _open(self) -> int:
        if self._fd is None:
            _trim_torn_tail(self.path)
            try:  # never through a link: the journal is written inside the directory only
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise UnsafeFileError(f"{self.path}: is a symbolic link; refusing to write it") from None
                raise
            self._fd = fd
            self._end = self._synced = os.fstat(fd).st_size
            self._since_sync, self._cut, self._rewrite = [], False, False
        return self._fd

    def _settle(self, fd: int) -> None:
        """Undo what failed writes or a failed fsync left: cut a partial line off, or write the
        lines after the last good fsync again."""
        if self._rewrite:
            os.ftruncate(fd, self._synced)
            self._end, self._cut, self._clean = self._synced, False, False
            data = b"".join(self._since_sync)
            write_all(fd, data)  # on failure _rewrite stays set: cut and written again next time
            self._end += len(data)
            self._rewrite = False
        elif self._cut:
            os.ftruncate(fd, self._end)
            self._cut, self._clean = False, False

    def append(self, entry: dict[str, Any]) -> None:
        """Append one entry line (written to the OS; durable after :meth:`sync`).

        Raises:
            OSError: the line could not be written (disk full, I/O error); the journal holds
                what it held before, so appending the entry again later writes it once.
            UnsafeFileError: the journal is a symbolic link.
        """
        line = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
        fd = self._open()
        self._settle(fd)
        try:
            write_all(fd, line)
        except OSError:
            self._cut, self._clean = True, False
            try:
                self._settle(fd)
            except OSError:
                pass  # cut by the next append or sync
            raise
        self._end += len(line)
        self._since_sync.append(line)
        self._clean = False
        self.lines += 1
        self.appended += 1

    def sync(self) -> None:
        """Make every appended line durable (fsync).

        Raises:
            OSError: the fsync (or the rewrite of lines a failed fsync may have lost) failed;
                the next :meth:`append` or :meth:`sync` writes those lines again.
        """
        if self._fd is None:
            return
        self._settle(self._fd)
        if self._clean:
            return
        try:
            os.fsync(self._fd)
        except OSError:
            self._rewrite = True
            raise
        self._synced, self._since_sync, self._clean = self._end, [], True

    def close(self) -> None:
        """Close the file handle (entries stay on disk; a partly written line is cut off)."""
        if self._fd is not None:
            try:
                self._settle(self._fd)
            except OSError:
                pass  # a torn last line is ignored by readers and cut by the next opening
            os.close(self._fd)
            self._fd = None

    def reset(self) -> None:
        """Forget the handle after the index compaction removed the file."""
        self.close()
        self.lines = 0
        self._end = self._synced = 0
        self._since_sync, self._cut, self._rewrite, self._clean = [], False, False, True
