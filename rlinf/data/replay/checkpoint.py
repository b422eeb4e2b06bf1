"""Checkpoint I/O: saving whole buffer directories, loading them, and the auto-save directory.

* :func:`save` writes a snapshot into a temporary sibling directory and renames it into place
  only when complete, so an interrupted save never looks like a checkpoint.
* :func:`read` parses a directory (ours or RLinf's), optionally one rank's share.
* :class:`OwnDirectory` is the auto-save directory a buffer writes to: it appends index entries
  to a journal as files land and compacts them into ``trajectory_index.json``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from . import formats
from .directory import (
    DirectoryContents,
    Journal,
    Record,
    is_buffer_directory,
    list_trajectory_files,
    read_directory,
    write_index,
    write_metadata,
)
from .errors import BufferDirectoryError, BufferNotFoundError, InvalidArgumentError
from .fsio import fsync_dir, link_or_copy, remove_tmp_files
from .schema import Schema
from .trajectory import Key, file_dict_from_columns

_COMPACT_MIN = 1024


def same_path(a: str, b: str) -> bool:
    """Whether two paths name the same directory."""
    return os.path.realpath(os.fspath(a)) == os.path.realpath(os.fspath(b))


def read(load_path: str, share: tuple[int, int] = (0, 1)) -> tuple[DirectoryContents, Schema | None]:
    """Parse a buffer directory; see :func:`rlinf.data.replay.directory.read_directory`."""
    return read_directory(load_path, share)


@dataclass
class Snapshot:
    """What a checkpoint must contain, taken under the buffer's lock.

    Attributes:
        records: trajectories in index order.
        rows_of: ``rows_of(trajectory_id)`` returns a private copy of a trajectory's flattened
            rows ``[T * B, ...]`` if the buffer holds them in memory (else ``None``); called
            only for records whose file is missing, one at a time, so a save never needs a
            second copy of the whole buffer.
    """

    records: list[Record]
    rows_of: Callable[[int], dict[Key, torch.Tensor] | None]
    schema: Schema | None
    counter: int
    seed: int | None
    fmt: str


def write_record(
    record: Record,
    rows_of: Callable[[int], dict[Key, torch.Tensor] | None],
    target: str,
    fmt: str,
) -> None:
    """Materialize one trajectory at ``target`` in ``fmt``: link/copy its file if it exists
    (converting between formats), else serialize the rows ``rows_of`` returns."""
    if record.path is not None and os.path.exists(record.path):
        if record.fmt == fmt:
            link_or_copy(record.path, target)
        else:
            formats.write(target, fmt, formats.read(record.path, record.fmt or "pt"))
        return
    data = rows_of(record.trajectory_id)
    if data is None:
        raise BufferNotFoundError(
            f"trajectory {record.trajectory_id} has no file and no rows in memory to save"
        )
    shape = (record.num_steps, record.num_envs)
    columns = {k: v.reshape(*shape, *v.shape[1:]) for k, v in data.items()}
    formats.write(
        target,
        fmt,
        file_dict_from_columns(
            columns, record.max_episode_length, record.model_weights_id, record.model_update_count
        ),
    )


def prepare_destination(save_path: str) -> str:
    """Absolute destination path, refusing a file or a non-empty non-buffer directory."""
    if not isinstance(save_path, str | os.PathLike) or not os.fspath(save_path):
        raise InvalidArgumentError(f"save_path must be a directory path, got {save_path!r}")
    dest = os.path.abspath(os.fspath(save_path))
    if os.path.lexists(dest):
        if not os.path.isdir(dest):
            raise BufferDirectoryError(f"{dest}: exists and is not a directory")
        if os.listdir(dest) and not is_buffer_directory(dest):
            raise BufferDirectoryError(
                f"{dest}: exists, is not empty and is not a buffer directory; refusing to "
                "replace it (choose a new or empty directory)"
            )
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    return dest


def new_staging_dir(dest: str) -> str:
    """A fresh hidden sibling of ``dest`` to assemble a directory in."""
    staging = os.path.join(
        os.path.dirname(dest), f".{os.path.basename(dest)}.partial-{uuid.uuid4().hex[:12]}"
    )
    os.mkdir(staging)
    return staging


def publish(staging: str, dest: str) -> None:
    """Rename a complete staging directory to ``dest``, replacing an old buffer directory."""
    fsync_dir(staging)
    parent = os.path.dirname(dest)
    if os.path.isdir(dest) and not os.listdir(dest):
        os.rmdir(dest)
    if os.path.lexists(dest):
        old = os.path.join(parent, f".{os.path.basename(dest)}.old-{uuid.uuid4().hex[:12]}")
        os.rename(dest, old)
        os.rename(staging, dest)
        fsync_dir(parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, dest)
        fsync_dir(parent)


def save(snapshot: Snapshot, save_path: str) -> dict[int, tuple[str, str]]:
    """Write ``snapshot`` as a complete buffer directory at ``save_path``.

    Returns:
        ``{trajectory_id: (directory, file name)}`` of the files written.
    """
    dest = prepare_destination(save_path)
    staging = new_staging_dir(dest)
    try:
        names: dict[int, str] = {}
        for record in snapshot.records:
            name = record.canonical_name(snapshot.fmt)
            write_record(
                record,
                snapshot.rows_of,
                os.path.join(staging, name),
                snapshot.fmt,
            )
            names[record.trajectory_id] = name
        entries = [r.to_entry(names[r.trajectory_id]) for r in snapshot.records]
        write_index(staging, entries)
        write_metadata(staging, snapshot.fmt, entries, snapshot.counter, snapshot.seed, snapshot.schema)
        publish(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {tid: (dest, name) for tid, name in names.items()}


class OwnDirectory:
    """The auto-save directory of a buffer: files, journal and compacted index.

    Every trajectory this buffer writes is listed here (entries persist across ``clear()``);
    ids are never reused within the directory.
    """

    def __init__(
        self,
        path: str,
        fmt: str,
        seed: int | None,
        contents: DirectoryContents,
        schema: Schema | None,
    ) -> None:
        self.path = path
        self.fmt = fmt
        self.seed = seed
        self.contents = contents
        self.schema = schema
        self.entries: dict[int, dict[str, Any]] = {r.trajectory_id: r.to_entry() for r in contents.records}
        self.next_id = contents.counter
        self.journal = Journal(path)

    @classmethod
    def open(cls, path: str, fmt: str, seed: int | None) -> OwnDirectory:
        """Open (continuing) or create an auto-save directory."""
        if os.path.lexists(path) and not os.path.isdir(path):
            raise BufferDirectoryError(f"auto_save_path {path} exists and is not a directory")
        os.makedirs(path, exist_ok=True)
        remove_tmp_files(path)
        if is_buffer_directory(path):
            contents, schema = read_directory(path)
            if contents.fmt != fmt:
                raise BufferDirectoryError(
                    f"auto_save_path {path} holds a {contents.fmt!r} buffer; construct the buffer "
                    f"with trajectory_format={contents.fmt!r} or choose another path"
                )
            own = cls(path, fmt, seed, contents, schema)
            if contents.journal_entries or not contents.written_by_us:
                own.compact(own.next_id, schema)
            return own
        if list_trajectory_files(path):
            raise BufferDirectoryError(
                f"auto_save_path {path} holds trajectory files but no metadata.json; repair it "
                "with the verify tool or choose another path"
            )
        empty = DirectoryContents(path, fmt, [], [], 0, seed, True, 0, {})
        own = cls(path, fmt, seed, empty, None)
        own.compact(0, None)
        return own

    def record_written(self, record: Record, name: str, counter: int, schema: Schema | None) -> None:
        """Append the entry of a file just written; compact when the journal grows long."""
        entry = record.to_entry(name)
        self.entries[record.trajectory_id] = entry
        self.next_id = max(self.next_id, record.trajectory_id + 1)
        self.journal.append(entry)
        if self.journal.lines > max(_COMPACT_MIN, len(self.entries)):
            self.compact(counter, schema)

    def sync(self, counter: int, schema: Schema | None) -> None:
        """Make every appended entry and written file durable; refresh metadata."""
        self.journal.sync()
        fsync_dir(self.path)
        self._write_metadata(counter, schema)

    def compact(self, counter: int, schema: Schema | None) -> None:
        """Rewrite ``trajectory_index.json`` with every entry and drop the journal."""
        self.journal.sync()
        fsync_dir(self.path)
        write_index(self.path, sorted(self.entries.values(), key=lambda e: e["trajectory_id"]))
        self.journal.reset()
        self._write_metadata(counter, schema)

    def _write_metadata(self, counter: int, schema: Schema | None) -> None:
        if schema is not None:
            self.schema = schema
        self.next_id = max(self.next_id, counter)
        write_metadata(self.path, self.fmt, self.entries.values(), self.next_id, self.seed, self.schema)

    def absorb(self, snapshot: Snapshot) -> None:
        """Copy into this directory every snapshot trajectory it does not list yet."""
        for record in snapshot.records:
            listed = self.entries.get(record.trajectory_id)
            if listed is not None:
                if listed.get("uuid") != record.uuid:
                    raise BufferDirectoryError(
                        f"cannot checkpoint into the auto-save directory {self.path}: it already "
                        f"lists a different trajectory {record.trajectory_id}; save elsewhere"
                    )
                continue
            name = record.canonical_name(self.fmt)
            write_record(
                record,
                snapshot.rows_of,
                os.path.join(self.path, name),
                self.fmt,
            )
            self.entries[record.trajectory_id] = record.to_entry(name)

    def close(self) -> None:
        """Close the journal handle."""
        self.journal.close()
