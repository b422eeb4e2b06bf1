"""Moving trajectories out of a buffer directory: the durable record that makes it one step.

Merge and split in move mode (:mod:`.tools.merge_split`) publish a new directory holding
trajectories that stay listed by their sources until each source's index is rewritten. A crash
in between would leave them in both places. So, before the output is published, every source
gets a *move record*, ``.rlinf-moving-out.json``::

    {"format_version": 1, "token": "<32 hex digits>", "destination": "/abs/path/of/output",
     "trajectory_ids": [0, 3, 5]}

and the output gets the matching *arrival mark*, ``.rlinf-moved-in.json`` (``format_version``,
``token``, ``sources``), written into it before it is renamed into place. Publishing the output
is then the one step that moves the trajectories of every source at once:

* a reader of a source (:func:`hidden_ids`, applied by :func:`~.directory.read_directory`) leaves
  out the ids of a move record exactly when the output at ``destination`` carries the arrival
  mark with the record's token: the move happened, whatever state the source's index is in;
* before that (a crash before publishing), or if the output was replaced or deleted since, the
  record is stale and the source keeps listing what it holds;
* the mover then rewrites each source's index without the moved ids, deletes their files and
  removes the record (:func:`release`); a writer that opens a source, a retried merge/split and
  ``verify --repair`` finish a release a crash cut short, or drop a stale record
  (:func:`finish_move`), under the directory's lock.

Reading a move record is the one time a reader looks outside the directory it loads: it opens
the arrival mark at the recorded destination (a regular file of at most 64 KiB, never a link,
FIFO or device) and compares one token; nothing there is executed, written or loaded. A record
that cannot be parsed is a :class:`CorruptBufferError` naming the file.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from . import index_columns
from .errors import BufferDirectoryError, CorruptBufferError, ReplayBufferError
from .fsio import atomic_write_json, fsync_dir
from .journal import INDEX, INDEX_RLINF_MERGE, JOURNAL, read_index, removed_ids, write_index
from .lock import LOCK_NAME
from .metadata import METADATA, read_metadata, write_metadata
from .naming import list_trajectory_files
from .safe_open import load_json
from .schema import schema_from_json

#: the move record a source holds while trajectories move out of it
MOVING_OUT = ".rlinf-moving-out.json"
#: the arrival mark of a move's output
MOVED_IN = ".rlinf-moved-in.json"
MOVE_FORMAT_VERSION = 1
_MARK_BYTES = 64 * 1024
_TOKEN = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class MoveRecord:
    """A source's record of trajectories moving out of it.

    Attributes:
        token: 32 lowercase hex digits, new for every move; the output's arrival mark holds it.
        destination: absolute path of the output directory.
        trajectory_ids: the ids moving out.
    """

    token: str
    destination: str
    trajectory_ids: frozenset[int]


def new_token() -> str:
    """A fresh move token."""
    return uuid.uuid4().hex


def record_move(source: str, token: str, destination: str, trajectory_ids: Iterable[int]) -> None:
    """Write ``source``'s move record (atomically, durable when this returns)."""
    atomic_write_json(
        os.path.join(source, MOVING_OUT),
        {
            "format_version": MOVE_FORMAT_VERSION,
            "token": token,
            "destination": os.path.abspath(destination),
            "trajectory_ids": sorted(trajectory_ids),
        },
    )


def mark_arrival(staging: str, token: str, sources: list[str]) -> None:
    """Write the arrival mark into the output being assembled at ``staging`` (before it is
    published: publishing it commits the move)."""
    atomic_write_json(
        os.path.join(staging, MOVED_IN),
        {"format_version": MOVE_FORMAT_VERSION, "token": token, "sources": sources},
    )


def read_move(path: str) -> MoveRecord | None:
    """The move record of directory ``path``, or ``None`` if it has none.

    Raises:
        CorruptBufferError: the record is not one (or an ``UnsafeFileError``: not a regular file).
    """
    record_path = os.path.join(path, MOVING_OUT)
    if not os.path.lexists(record_path):
        return None
    data = load_json(record_path, "move record", _MARK_BYTES, links=False)
    ids = data.get("trajectory_ids") if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or data.get("format_version") != MOVE_FORMAT_VERSION
        or not isinstance(data.get("token"), str)
        or not _TOKEN.match(data["token"])
        or not isinstance(data.get("destination"), str)
        or not os.path.isabs(data["destination"])
        or not isinstance(ids, list)
        or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)
    ):
        raise CorruptBufferError(
            f"{record_path}: not a move record of format_version {MOVE_FORMAT_VERSION} (token, "
            "destination, trajectory_ids); if no merge or split runs on this directory, delete it: "
            "the trajectories are then listed by this directory as its index says"
        )
    return MoveRecord(data["token"], data["destination"], frozenset(ids))


def arrived(record: MoveRecord) -> bool | None:
    """Whether the move's output is published: ``True`` (its arrival mark holds the token),
    ``False`` (no mark there, or another move's), ``None`` (the mark could not be read)."""
    mark = os.path.join(record.destination, MOVED_IN)
    try:
        os.lstat(mark)
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        return False
    except OSError:
        return None
    try:
        data = load_json(mark, "arrival mark", _MARK_BYTES, links=False)
    except (ReplayBufferError, OSError):
        return None
    return isinstance(data, dict) and data.get("token") == record.token


def hidden_ids(path: str) -> frozenset[int]:
    """Ids a published move took out of ``path`` though its index may still list them (empty
    when there is no move record, or the move never got published: then nothing moved)."""
    record = read_move(path)
    if record is None or not arrived(record):
        return frozenset()
    return record.trajectory_ids


def release(path: str, trajectory_ids: Iterable[int], remove_empty: bool = False) -> None:
    """Take ``trajectory_ids`` out of the buffer directory ``path`` for good (call it holding
    the directory's lock, once their new home is durable): the index and metadata first, then
    their files or segments, then the move record. A directory left with nothing stops being a
    buffer directory (``metadata.json`` goes first); with ``remove_empty`` its lock file goes
    too and the directory is removed if nothing else is in it.

    Raises:
        OSError: a write, an fsync or a removal failed; every state on the way loads, and the
            same call completes the release.
    """
    gone = set(trajectory_ids)
    entries, _, _ = read_index(path)
    keep = [e for e in entries if e.get("trajectory_id") not in gone]
    if keep:
        if len(keep) != len(entries):
            meta = read_metadata(path)
            fields = meta.get("fields")
            schema = schema_from_json(fields, METADATA, CorruptBufferError) if fields else None
            counter = max(
                [e["trajectory_id"] + 1 for e in entries]
                + [meta["trajectory_counter"]] * isinstance(meta.get("trajectory_counter"), int)
            )
            seed = meta.get("seed") if isinstance(meta.get("seed"), int) else None
            fmt = meta.get("trajectory_format", meta.get("storage_format"))
            gone |= set(removed_ids(path))  # evictions the rewrite's journal removal forgets
            write_index(path, keep)
            write_metadata(path, fmt, keep, counter, seed, schema)
    elif os.path.lexists(os.path.join(path, METADATA)):  # from here on it is no buffer directory
        os.unlink(os.path.join(path, METADATA))
        fsync_dir(path)
        for name in (INDEX, INDEX_RLINF_MERGE, JOURNAL, index_columns.NAME):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(path, name))
    kept_segments = {e.get("file") for e in keep if "row" in e}
    for entry in entries:
        name = entry.get("file")
        if entry.get("trajectory_id") in gone and "row" in entry and isinstance(name, str):
            if name not in kept_segments and _is_plain_dir(os.path.join(path, name)):
                shutil.rmtree(os.path.join(path, name))
    for tid, names in list_trajectory_files(path).items():
        if tid in gone:
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(path, name))
    fsync_dir(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(path, MOVING_OUT))
    if not keep and remove_empty:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(path, LOCK_NAME))
        with contextlib.suppress(OSError):
            os.rmdir(path)
            return
    fsync_dir(path)


def finish_move(path: str) -> None:
    """Complete what a move record of ``path`` asks (call it holding the directory's lock):
    release the moved trajectories if the move was published, drop the record if it never was.

    Raises:
        BufferDirectoryError: the output's arrival mark cannot be read (nothing is changed:
            whether the move happened is unknown), or the release failed (run it again).
        CorruptBufferError: the record is not one.
    """
    record = read_move(path)
    if record is None:
        return
    state = arrived(record)
    if state is None:
        raise BufferDirectoryError(
            f"{os.path.join(path, MOVING_OUT)}: cannot read {os.path.join(record.destination, MOVED_IN)} "
            "to tell whether the trajectories it lists moved there; make it readable and try again"
        )
    try:
        if state:
            release(path, record.trajectory_ids)
        else:
            os.unlink(os.path.join(path, MOVING_OUT))
            fsync_dir(path)
    except OSError as exc:
        if isinstance(exc, ReplayBufferError):
            raise
        raise BufferDirectoryError(
            f"{path}: finishing the move of trajectories to {record.destination} failed "
            f"({exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}); the directory "
            "loads without them; fix the cause (disk space, permissions) and open it again"
        ) from exc


def _is_plain_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path)
