"""The trajectory index, ``trajectory_index.json``, and its append-only journal.

* ``trajectory_index.json``: RLinf's index (``trajectory_index`` + ``trajectory_id_list``), each
  entry extended with this library's keys; rewritten atomically as a whole at compaction
  (:func:`write_index`). RLinf's merge tool names it ``trajector_index.json`` (sic,
  :data:`INDEX_RLINF_MERGE`), which is read when the first is absent.
* ``trajectory_index.journal``: one JSON entry per line, appended as trajectories are written
  between compactions (:class:`Journal`), so persisting the index costs O(1) per trajectory; an
  entry ``{"trajectory_id": id, "removed": true}`` records an eviction. A torn last line (an
  append a crash interrupted) is ignored when reading and cut off before the next append.

:func:`read_index` gives the entries in order: the index file's, then the journal's.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterable
from typing import IO, Any

from .errors import CorruptBufferError, UnsafeFileError, unreadable
from .fsio import atomic_write_json, fsync_dir
from .metadata import FORMAT_VERSION
from .naming import read_json

INDEX = "trajectory_index.json"
INDEX_RLINF_MERGE = "trajector_index.json"  # sic: also written by RLinf's merge tool
JOURNAL = "trajectory_index.journal"


def parse_journal(path: str) -> tuple[list[dict[str, Any]], list[int], bool]:
    """The journal's entries, the numbers of its bad lines, and whether its last line is torn.

    A torn last line (an append a crash interrupted, without its newline) is not a bad line.
    """
    jpath = os.path.join(path, JOURNAL)
    if not os.path.lexists(jpath):
        return [], [], False
    if os.path.islink(jpath):
        raise UnsafeFileError(f"{jpath}: is a symbolic link; the journal must be a regular file")
    try:
        with open(jpath, "rb") as f:
            lines = f.read().split(b"\n")
    except PermissionError as exc:
        raise unreadable(jpath, exc) from None
    entries: list[dict[str, Any]] = []
    bad: list[int] = []
    torn = False
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            entry = None
        if isinstance(entry, dict):
            entries.append(entry)
        elif not any(rest.strip() for rest in lines[i + 1 :]):
            torn = True  # the last line: an interrupted append
        else:
            bad.append(i + 1)
    return entries, bad, torn


def _read_journal(path: str) -> list[dict[str, Any]]:
    entries, bad, _ = parse_journal(path)
    if bad:
        raise CorruptBufferError(
            f"{os.path.join(path, JOURNAL)}: line {bad[0]} is not an index entry; repair the "
            "directory with the verify tool (--repair)"
        )
    return entries


def read_index(path: str) -> tuple[list[dict[str, Any]], bool, int]:
    """Index entries in order (index file, then journal), whether ours, and journal length."""
    entries: list[dict[str, Any]] = []
    ours = False
    for name in (INDEX, INDEX_RLINF_MERGE):
        ipath = os.path.join(path, name)
        if os.path.exists(ipath):
            data = read_json(ipath, name)
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
            break
    journal = _read_journal(path)
    if journal:
        ours = ours or not entries
    added, removed = apply_journal(entries, journal)
    return entries, ours, added + len(removed)


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

    ``keep_journal``: leave the journal in place (``flush()`` publishes the index for RLinf's
    loader this way; the journal's entries are then all listed, and reading skips them).
    """
    entries = list(entries)
    atomic_write_json(
        os.path.join(path, INDEX),
        {
            "format_version": FORMAT_VERSION,
            "trajectory_index": {str(e["trajectory_id"]): e for e in entries},
            "trajectory_id_list": [e["trajectory_id"] for e in entries],
        },
    )
    if keep_journal:
        return
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
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UnsafeFileError(f"{path}: cannot be opened as a regular file ({exc.strerror})") from None
    with os.fdopen(fd, "r+b") as f:
        data = f.read()
        body = data.rstrip(b"\n")
        start = body.rfind(b"\n") + 1  # start of the last non-empty line
        try:
            last = json.loads(body[start:]) if body else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            last = None
        if isinstance(last, dict):
            if data and not data.endswith(b"\n"):  # complete but unterminated: end the line
                f.write(b"\n")
                os.fsync(f.fileno())
            return
        f.truncate(start)
        os.fsync(f.fileno())


class Journal:
    """Append-only index journal: one JSON entry per line; ``sync()`` makes appends durable.

    Attributes:
        lines: lines appended since the journal was last folded into the index (:meth:`reset`).
        appended: lines appended in this process, ever (never reset): a change counter.
    """

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, JOURNAL)
        self._file: IO[bytes] | None = None
        self.lines = 0
        self.appended = 0

    def append(self, entry: dict[str, Any]) -> None:
        """Append one entry (flushed to the OS, durable after :meth:`sync`)."""
        if self._file is None:
            _trim_torn_tail(self.path)
            try:  # never through a link: the journal is written inside the directory only
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise UnsafeFileError(f"{self.path}: is a symbolic link; refusing to write it") from None
                raise
            self._file = os.fdopen(fd, "ab")
        self._file.write(json.dumps(entry, separators=(",", ":")).encode() + b"\n")
        self._file.flush()
        self.lines += 1
        self.appended += 1

    def sync(self) -> None:
        """fsync the journal."""
        if self._file is not None:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file handle (entries stay on disk)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def reset(self) -> None:
        """Forget the handle after the index compaction removed the file."""
        self.close()
        self.lines = 0
