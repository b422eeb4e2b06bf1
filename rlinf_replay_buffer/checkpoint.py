"""Checkpoint I/O: saving whole buffer directories, loading them, and the auto-save directory.

* :func:`save` writes a snapshot into a temporary sibling directory and publishes it in place
  only when complete (:func:`~.fsio.publish_directory`), so an interrupted save never looks
  like a checkpoint.
* :func:`read` parses a directory (ours or RLinf's), optionally one rank's share.
* :class:`OwnDirectory` is the auto-save directory a buffer writes to: it appends index entries
  to a journal as files land and compacts them into ``trajectory_index.json``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from . import formats
from .directory import (
    JOURNAL,
    DirectoryContents,
    Journal,
    Record,
    is_buffer_directory,
    list_trajectory_files,
    load_columns,
    read_directory,
    removed_ids,
    safe_file,
    write_index,
    write_metadata,
)
from .errors import (
    BufferDirectoryError,
    BufferNotFoundError,
    CorruptBufferError,
    CorruptTrajectoryError,
    InvalidArgumentError,
    ReplayBufferError,
    UnsafeFileError,
)
from .formats.segment import SEGMENT_RE, SegmentStore, truncate_segment
from .fsio import fsync_dir, link_or_copy, remove_tmp_files, staged_directory
from .fsio import publish_directory as publish  # save's last step, by this name
from .integrity import file_checksum, mismatch, rows_checksum, verify_file, verify_rows
from .schema import Schema, combine
from .trajectory import Key, file_dict_from_columns, source_steps

_COMPACT_MIN = 1024


def same_path(a: str, b: str) -> bool:
    """Whether two paths name the same directory."""
    return os.path.realpath(os.fspath(a)) == os.path.realpath(os.fspath(b))


def read(
    load_path: str,
    share: tuple[int, int] = (0, 1),
    skip_corrupt: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[DirectoryContents, Schema | None]:
    """Parse a buffer directory; see :func:`rlinf_replay_buffer.directory.read_directory`."""
    return read_directory(load_path, share, skip_corrupt=skip_corrupt, progress=progress)


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


def verify_record(record: Record, store: SegmentStore | None = None) -> None:
    """Check a record's data against its ``crc32`` (no-op without one).

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
            verify_file(record.trajectory_id, record.path or "", record.checksum)
        except FileNotFoundError:
            raise BufferNotFoundError(
                f"{record.path}: the file of trajectory {record.trajectory_id} is missing; "
                "restore it or repair the directory with the verify tool"
            ) from None


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
    extra: Callable[[str], None] | None = None
    """Called with the staging directory before the index is written (e.g. priorities)."""


def read_rows(
    record: Record, schema: Schema | None, store: SegmentStore | None = None
) -> dict[Key, torch.Tensor]:
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
    verify_record(record)
    with reading(record):
        raw = load_columns(record, mmap=True)
    columns = {
        k: v[torch.from_numpy(source_steps(k, int(v.shape[0]), record.num_steps))]
        if int(v.shape[0]) != record.num_steps
        else v
        for k, v in raw.items()
    }
    combine(schema, Schema.of_columns(columns), f"{record.path}: ", CorruptBufferError)
    return {k: v.reshape(n, *v.shape[2:]) for k, v in columns.items()}


def record_rows(
    record: Record, rows_of: Callable[[int], dict[Key, torch.Tensor] | None], schema: Schema | None
) -> dict[Key, torch.Tensor]:
    """A record's rows from memory (``rows_of``) or else from its file or segment."""
    data = rows_of(record.trajectory_id)
    if data is None and record.path is not None and os.path.exists(record.path):
        data = read_rows(record, schema)
    if data is None:
        raise BufferNotFoundError(
            f"trajectory {record.trajectory_id} has no file and no rows in memory to save"
        )
    return data


def write_record(
    record: Record,
    rows_of: Callable[[int], dict[Key, torch.Tensor] | None],
    target: str,
    fmt: str,
    schema: Schema | None = None,
) -> int:
    """Materialize one trajectory as file ``target`` in ``fmt`` (``pt``/``pkl``): link/copy its
    file if it has one (converting between formats, after checking its checksum), else
    serialize its rows. Returns the CRC-32 of the file written."""
    if record.fmt in formats.FORMATS and record.path is not None and os.path.exists(record.path):
        safe_file(record.directory or "", record.file or "")  # it may have changed since loading
        if record.fmt == fmt:
            link_or_copy(record.path, target)  # same bytes: the checksum still finds damage
            return record.checksum if record.checksum is not None else file_checksum(target)
        verify_record(record)
        with reading(record):
            data = formats.read(record.path, record.fmt or "pt")
        return formats.write(target, fmt, data)
    data = record_rows(record, rows_of, schema)
    shape = (record.num_steps, record.num_envs)
    columns = {k: v.reshape(*shape, *v.shape[1:]) for k, v in data.items()}
    return formats.write(
        target,
        fmt,
        file_dict_from_columns(
            columns, record.max_episode_length, record.model_weights_id, record.model_update_count
        ),
    )


def place_records(
    records: list[Record],
    rows_of: Callable[[int], dict[Key, torch.Tensor] | None],
    directory: str,
    fmt: str,
    schema: Schema | None,
    store: SegmentStore | None = None,
) -> dict[int, Record]:
    """Write ``records`` into ``directory`` in ``fmt``; return each one re-homed there.

    File formats get one file per trajectory; ``segment`` appends rows to ``store`` (a new
    store over ``directory`` if not given).
    """
    placed: dict[int, Record] = {}
    if fmt == formats.SEGMENT and records:
        assert schema is not None
        own_store = store is None
        store = store or SegmentStore(directory, schema)
        try:
            for record in records:
                rows = record_rows(record, rows_of, schema)
                crc = rows_checksum(rows, schema)
                name, row = store.append(rows, sync=False)  # one fsync per column file below
                placed[record.trajectory_id] = replace(
                    record, directory=directory, file=name, row=row, checksum=crc
                )
            store.sync()  # every row is durable before any index entry names it
        finally:
            if own_store:
                store.close()
        return placed
    for record in records:
        name = record.canonical_name(fmt)
        crc = write_record(record, rows_of, os.path.join(directory, name), fmt, schema)
        placed[record.trajectory_id] = replace(record, directory=directory, file=name, row=None, checksum=crc)
    return placed


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
    with writing(dest):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
    return dest


@contextlib.contextmanager
def writing(dest: str, what: str = "the buffer directory") -> Iterator[None]:
    """Report an OS refusal to write a directory (permissions, disk full) as
    :class:`BufferDirectoryError` naming it; the library's own errors pass unchanged."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, ReplayBufferError):
            raise
        raise BufferDirectoryError(
            f"{dest}: cannot write {what}: {exc.strerror or exc}"
            f"{f' ({exc.filename})' if exc.filename else ''}; fix the permissions or free space "
            "and try again (nothing was changed)"
        ) from exc


def save(snapshot: Snapshot, save_path: str) -> dict[int, Record]:
    """Write ``snapshot`` as a complete buffer directory at ``save_path``.

    Returns:
        ``{trajectory_id: record re-homed in save_path}`` of the trajectories written.
    """
    dest = prepare_destination(save_path)
    with writing(dest), staged_directory(dest) as staging:
        placed = place_records(snapshot.records, snapshot.rows_of, staging, snapshot.fmt, snapshot.schema)
        if snapshot.extra is not None:
            snapshot.extra(staging)
        entries = [placed[r.trajectory_id].to_entry() for r in snapshot.records]
        write_index(staging, entries)
        write_metadata(staging, snapshot.fmt, entries, snapshot.counter, snapshot.seed, snapshot.schema)
        publish(staging, dest)
    return {tid: replace(r, directory=dest) for tid, r in placed.items()}


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
        self._total = sum(int(e["num_samples"]) for e in self.entries.values())
        self.next_id = contents.counter
        self.journal = Journal(path)
        self._store: SegmentStore | None = None
        self._doomed: list[str] = []  # files or segments to delete once their removal is durable
        self._segment_refs: dict[str, int] = {}  # segment -> entries naming it
        self._unreferenced: set[str] = set()  # segments no entry names (deleted once sealed)
        for entry in self.entries.values():
            if entry.get("row") is not None:
                self._segment_refs[entry["file"]] = self._segment_refs.get(entry["file"], 0) + 1

    def segment_store(self, schema: Schema) -> SegmentStore:
        """The store appending this directory's segments (``segment`` format only)."""
        if self._store is None:
            self._store = SegmentStore(self.path, schema)
        return self._store

    @classmethod
    def open(cls, path: str, fmt: str, seed: int | None) -> OwnDirectory:
        """Open (continuing) or create an auto-save directory."""
        if os.path.lexists(path) and not os.path.isdir(path):
            raise BufferDirectoryError(f"auto_save_path {path} exists and is not a directory")
        with writing(path, "auto_save_path"):
            return cls._open(path, fmt, seed)

    @classmethod
    def _open(cls, path: str, fmt: str, seed: int | None) -> OwnDirectory:
        os.makedirs(path, exist_ok=True)
        remove_tmp_files(path)
        removed: list[int] = []
        if os.path.lexists(os.path.join(path, JOURNAL)):
            files = list_trajectory_files(path)
            removed = removed_ids(path)
            for tid in removed:  # evicted, but the crash came before their deletion
                for name in files.get(tid, []):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(path, name))
        if is_buffer_directory(path):
            contents, schema = read_directory(path)
            if contents.fmt != fmt:
                raise BufferDirectoryError(
                    f"auto_save_path {path} holds a {contents.fmt!r} buffer; construct the buffer "
                    f"with trajectory_format={contents.fmt!r} or choose another path"
                )
            own = cls(path, fmt, seed, contents, schema)
            if removed:  # never give an evicted id again (one evicted mid-write was never listed)
                own.next_id = max(own.next_id, max(removed) + 1)
            if fmt == formats.SEGMENT:
                recover_segments(path, schema, contents.records)
            if contents.journal_entries or removed or not contents.written_by_us:
                own.compact(own.next_id, schema)  # the removal lines go once their files have
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
        self._set_entry(entry)
        self.next_id = max(self.next_id, record.trajectory_id + 1)
        self.journal.append(entry)
        if self.journal.lines > max(_COMPACT_MIN, len(self.entries)):
            self.compact(counter, schema)

    def sync(self, counter: int, schema: Schema | None) -> None:
        """Make every appended entry and written file durable; refresh metadata."""
        self.journal.sync()
        fsync_dir(self.path)
        self._delete_doomed()
        self._write_metadata(counter, schema)

    def remove(self, trajectory_ids: list[int]) -> None:
        """Remove trajectories this directory lists (evicted by a capacity limit).

        A removal line goes to the journal first; the files go once it is durable (at the next
        :meth:`sync` or :meth:`compact`, or every 32 removals), so a crash never leaves an
        entry naming a deleted file. A segment goes once no entry names it and it is sealed.
        """
        for tid in trajectory_ids:
            entry = self.entries.pop(tid, None)
            if entry is None:
                continue
            self._total -= int(entry["num_samples"])
            self.journal.append({"trajectory_id": tid, "removed": True})
            name = entry["file"]
            if entry.get("row") is None:
                self._doomed.append(name)
                continue
            self._segment_refs[name] -= 1
            if self._segment_refs[name] == 0:
                del self._segment_refs[name]
                self._unreferenced.add(name)
        self._sweep_unreferenced()
        if len(self._doomed) >= 32:
            self.journal.sync()
            self._delete_doomed()

    def _sweep_unreferenced(self) -> None:
        """Doom the sealed segments no entry names (the active one waits until it is sealed)."""
        active = self._store.active_name if self._store is not None else None
        for name in [n for n in self._unreferenced if n != active]:
            self._unreferenced.discard(name)
            self._doomed.append(name)

    def _delete_doomed(self) -> None:
        """Delete files whose removal the (already fsync'd) journal records."""
        self._sweep_unreferenced()
        if not self._doomed:
            return
        for name in self._doomed:
            target = os.path.join(self.path, name)
            if SEGMENT_RE.match(name):
                if self._store is not None:
                    self._store.forget(name)
                shutil.rmtree(target, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target)
        self._doomed = []
        fsync_dir(self.path)

    def compact(self, counter: int, schema: Schema | None) -> None:
        """Rewrite ``trajectory_index.json`` with every entry and drop the journal."""
        self.journal.sync()
        fsync_dir(self.path)
        self._delete_doomed()
        write_index(self.path, sorted(self.entries.values(), key=lambda e: e["trajectory_id"]))
        self.journal.reset()
        self._write_metadata(counter, schema)

    def _write_metadata(self, counter: int, schema: Schema | None) -> None:
        if schema is not None:
            self.schema = schema
        self.next_id = max(self.next_id, counter)
        totals = (len(self.entries), self._total)
        write_metadata(self.path, self.fmt, totals, self.next_id, self.seed, self.schema)

    def _set_entry(self, entry: dict[str, Any]) -> None:
        old = self.entries.get(entry["trajectory_id"])
        self._total += int(entry["num_samples"]) - (int(old["num_samples"]) if old else 0)
        self.entries[entry["trajectory_id"]] = entry
        if old is None and entry.get("row") is not None:
            self._segment_refs[entry["file"]] = self._segment_refs.get(entry["file"], 0) + 1
            self._unreferenced.discard(entry["file"])

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
            store = self.segment_store(snapshot.schema) if self.fmt == formats.SEGMENT else None
            assert snapshot.schema is not None or store is None
            placed = place_records([record], snapshot.rows_of, self.path, self.fmt, snapshot.schema, store)
            self._set_entry(placed[record.trajectory_id].to_entry())

    def close(self) -> None:
        """Close the journal handle and the segment being appended."""
        self.journal.close()
        if self._store is not None:
            self._store.close()


def recover_segments(path: str, schema: Schema | None, records: list[Record]) -> None:
    """Cut what a crash left in segment files beyond the rows the index names."""
    committed: dict[str, int] = {}
    for r in records:
        if r.file is not None and r.row is not None:
            committed[r.file] = max(committed.get(r.file, 0), r.row + r.num_transitions)
    for name in os.listdir(path):
        if SEGMENT_RE.match(name) and not os.path.islink(os.path.join(path, name)):
            if committed.get(name, 0) == 0:  # no entry names it: evicted, or never committed
                shutil.rmtree(os.path.join(path, name), ignore_errors=True)
                continue
            remove_tmp_files(os.path.join(path, name))  # an interrupted segment.json write
            truncate_segment(os.path.join(path, name), schema, committed.get(name, 0))
