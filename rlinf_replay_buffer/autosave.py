"""The auto-saver: writes every trajectory a buffer is given into its auto-save directory.

:class:`AutoSaver` owns that directory and everything written into it: the background writer
thread (:mod:`.writer`), file naming, the ``segment`` group commit, the journal, the index and
the metadata (:class:`OwnDirectory`), the bytes written (for ``max_disk_bytes``), failed writes
to retry and trajectories evicted while their write was pending. It tells the buffer what became
durable through one callback, ``on_durable(written, submitted, nbytes)``: ``written`` is the
record re-homed in the directory, ``nbytes`` its bytes there; if the buffer still holds
``submitted`` it
moves its index entry there, counting ``nbytes`` with :meth:`AutoSaver.count`) and releases the
rows it held in memory.

Durability: a ``pt``/``pkl`` file is written atomically and its index entry journaled; segment
rows are appended and become durable at the next group commit (every 64 MiB, when the queue
runs dry, or on :meth:`AutoSaver.flush`), which fsyncs the rows before journaling them.

Failures (disk full, I/O errors): a trajectory whose file or rows could not be written (or
fsync'd) keeps its rows in memory and is written again by the next ``flush()``/``close()``; an
index line that could not be appended stays queued (:class:`OwnDirectory`) and is appended, in
order, before any later line and by the next ``flush()``/``close()``; a file whose removal line
is not durable yet is never deleted. Each failure is recorded once and raised once, as
:class:`WriterError`, by the first of ``flush()``, ``close()`` or an add that has to wait for the
writer (:meth:`AutoSaver.make_room`) -- never by an add or a sample that does not wait. A call
that raises a failure first recorded before it does not retry it: the next one does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch

from . import formats
from .checkpoint import Snapshot, place_records, writing
from .directory import DirectoryContents, is_buffer_directory, read_directory
from .errors import BufferDirectoryError, DirectoryLockedError, WriterError
from .formats.segment import SEGMENT_RE, SegmentStore, truncate_segment
from .fsio import fsync_dir, make_dirs, remove_tmp_files
from .integrity import rows_checksum
from .journal import INDEX, JOURNAL, Journal, removed_ids, write_index
from .lock import DirectoryLock
from .metadata import write_metadata
from .moves import finish_move
from .naming import Listing
from .record import Record
from .record_table import EntryMap, segment_use, transitions_of
from .schema import Schema
from .trajectory import Key, file_dict_from_columns
from .writer import BackgroundWriter

_COMPACT_MIN = 1024
_GROUP_COMMIT_BYTES = 64 << 20  # segment rows appended before an fsync and journal entries

Rows = dict[Key, torch.Tensor]
OnDurable = Callable[[Record, Record, int], None]
State = Callable[[], "tuple[int, Schema | None]"]
#: segment rows appended, not yet journaled: (submitted record, segment, first row, crc32, rows,
#: schema, ``SegmentStore.failed_syncs`` when the append started)
Uncommitted = tuple[Record, str, int, int, Rows, Schema, int]


def _nbytes(rows: Rows) -> int:
    return sum(t.numel() * t.element_size() for t in rows.values())


def _ids_text(ids: list[int]) -> str:
    """``"trajectory 3"``, ``"trajectories 3, 4"`` or ``"trajectories 3, 4, 5 and 9 more"``."""
    if len(ids) == 1:
        return f"trajectory {ids[0]}"
    more = f" and {len(ids) - 3} more" if len(ids) > 3 else ""
    return f"trajectories {', '.join(map(str, ids[:3]))}{more}"


class AutoSaver:
    """Writes a buffer's trajectories into ``path`` on a background thread.

    Args:
        path: the auto-save directory (absolute); an existing buffer directory is continued.
        fmt: ``"pt"``, ``"pkl"`` or ``"segment"``.
        seed: recorded in the metadata.
        lock: the buffer's lock; the saver takes it to change shared state and calls
            ``on_durable`` under it.
        on_durable: see the module docstring.
        state: ``state()`` is the buffer's ``(next trajectory id, schema)`` (under the lock),
            recorded in the metadata.
        max_pending_bytes: bytes queued for writing beyond which :meth:`wait_for_room` waits.
        dedup: ``segment``: new segments store paired ``next_obs`` rows once (version 2,
            :mod:`.formats.segment`).

    Raises:
        BufferDirectoryError: the directory cannot be used (see :meth:`OwnDirectory.open`).
    """

    def __init__(
        self,
        path: str,
        fmt: str,
        seed: int,
        lock: threading.RLock,
        on_durable: OnDurable,
        state: State,
        max_pending_bytes: int,
        dedup: bool = True,
    ) -> None:
        self.own = OwnDirectory.open(path, fmt, seed)
        self.own.dedup = dedup
        self.path, self.fmt = path, fmt
        self._lock = lock
        self._written = threading.Condition(lock)  # notified as background writes finish
        self._on_durable = on_durable
        self._state = state
        self._max_pending = max_pending_bytes
        self._writer = BackgroundWriter()
        self._queued: dict[int, int] = {}  # trajectory id -> bytes, written or appended not yet
        self._queued_bytes = 0
        self._failed: dict[int, tuple[Record, Rows, Schema]] = {}  # retried by flush()/close()
        self._gone: set[int] = set()  # left the buffer while their write was queued
        # segment rows appended but not yet journaled (group commit)
        self._uncommitted: list[Uncommitted] = []
        self._uncommitted_bytes = 0
        self._rows_in_flight = 0  # segment appends and commits under way (rows no entry names yet)
        self._unflushed: tuple[int, int] | None = None  # (first id, count) landed since the last flush
        self._disk_sizes: dict[int, int] = {}  # bytes on disk of trajectories this buffer wrote
        self.disk_bytes = 0
        self.files_written = 0
        self._published = -1  # journal.appended when flush() last wrote the index

    # -- what the directory holds -------------------------------------------------------------
    @property
    def contents(self) -> tuple[Sequence[Record], Schema | None]:
        """The trajectories the directory held when opened, and their schema."""
        return self.own.contents.records, self.own.schema

    @property
    def next_id(self) -> int:
        """Past every id the directory ever listed (ids are never reused in it)."""
        return self.own.next_id

    @property
    def pending(self) -> int:
        """Trajectories whose write is queued, running or failed."""
        return len(self._queued)

    def owns(self, path: str) -> bool:
        """Whether ``path`` names the auto-save directory."""
        return os.path.realpath(os.fspath(path)) == os.path.realpath(self.path)

    def segment_store_for(self, directory: str, schema: Schema) -> SegmentStore | None:
        """The store appending the directory's segments, if ``directory`` is it."""
        if self.fmt != formats.SEGMENT or directory != self.path:
            return None
        return self.own.segment_store(schema)

    def count_existing(self, records: list[Record], schema: Schema) -> None:
        """Count the files of ``records`` in this directory against ``disk_bytes``."""
        for record in records:
            if record.directory == self.path and record.path is not None:
                size = (
                    record.num_transitions * schema.row_bytes
                    if record.row is not None
                    else os.path.getsize(record.path)
                )
                self.count(record.trajectory_id, size)

    def count(self, trajectory_id: int, nbytes: int) -> None:
        """Count ``nbytes`` on disk for a trajectory the buffer holds (replacing its count)."""
        self.disk_bytes += nbytes - self._disk_sizes.get(trajectory_id, 0)
        self._disk_sizes[trajectory_id] = nbytes

    # -- writing ------------------------------------------------------------------------------
    def submit(self, record: Record, rows: Rows, schema: Schema) -> None:
        """Queue the write of one trajectory's rows (nobody else may change them)."""
        tid = record.trajectory_id
        if tid not in self._queued:
            self._queued[tid] = _nbytes(rows)
            self._queued_bytes += self._queued[tid]
        self._writer.submit(f"trajectory {tid}", lambda: self._write(record, rows, schema))

    def make_room(self, adding: int) -> bool:
        """Before an add of ``adding`` trajectories (under the lock): if more than
        ``max_pending_bytes`` wait for the disk, the add has to wait for the writer, and so it
        is the call that reports a failed write. Returns whether it waited (the lock was
        released meanwhile).

        Raises:
            WriterError: a write failed and was not reported yet, or failed again when retried
                here; nothing was added.
        """
        if self._queued_bytes <= self._max_pending:
            return False
        self._refuse_add(adding)
        self.retry_failed()  # failures reported before: this add waits for them
        waited = self.wait_for_room()
        self._refuse_add(adding)
        return waited

    def _refuse_add(self, adding: int) -> None:
        self._writer.check(
            f"This add_trajectories() call had to wait for the disk (more than max_pending_bytes "
            f"wait for it), so its {adding} trajector{'y was' if adding == 1 else 'ies were'} NOT "
            "added. The failed ones stay in memory and are written again by the next flush() or "
            "close(); fix the cause (disk space, permissions), call flush() or save_checkpoint() "
            "again, then add them again"
        )

    def wait_for_room(self) -> bool:
        """Wait (releasing the lock) while more than ``max_pending_bytes`` wait for the disk;
        stop at a failed write (it is reported by ``flush()``, ``close()`` or the next add that
        has to wait). Returns whether it waited."""
        waited = False
        while self._queued_bytes > self._max_pending and not self._writer.failed and self._writer.pending:
            self._written.wait(timeout=0.5)
            waited = True
        return waited

    def forget(self, record: Record) -> bool:
        """A trajectory left the buffer (call under the lock). Its queued write is undone when
        it runs; returns whether the directory lists it (then pass it to :meth:`remove`)."""
        tid = record.trajectory_id
        if tid in self._queued:
            self._dequeue(tid)
            if self._failed.pop(tid, None) is None:  # a failed write is not queued: nothing to undo
                self._gone.add(tid)
        self.disk_bytes -= self._disk_sizes.pop(tid, 0)
        return record.directory == self.path

    def hold(self) -> None:
        """Hold the directory's lock before writing into it (again, after :meth:`close`).

        Raises:
            DirectoryLockedError: another writer holds the directory.
        """
        self.own.hold()

    def remove(self, trajectory_ids: list[int]) -> None:
        """Delete listed trajectories from the directory (journal first), on the writer."""
        if trajectory_ids:
            self.own.hold()
            self._writer.submit(
                f"evicting trajectories {trajectory_ids[0]}..{trajectory_ids[-1]}",
                lambda: self._remove(trajectory_ids),
            )

    def _remove(self, trajectory_ids: list[int]) -> None:
        self._commit_segments()  # rows appended before this job: the queue may not run dry soon
        with self._lock:
            try:
                self.own.remove(trajectory_ids)
            except OSError as exc:  # the removal lines stay queued; the files stay until they are durable
                self._writer.report(f"evicting {_ids_text(trajectory_ids)}", exc)

    def _dequeue(self, trajectory_id: int) -> None:
        self._queued_bytes -= self._queued.pop(trajectory_id, 0)

    def _write(self, record: Record, rows: Rows, schema: Schema) -> None:
        tid = record.trajectory_id
        with self._lock:
            if tid in self._gone:  # left the buffer before its turn
                self._gone.discard(tid)
                return
        try:
            if self.fmt == formats.SEGMENT:
                self._append_segment(record, rows, schema)
            else:
                self._write_file(record, rows, schema)
        except BaseException as exc:  # noqa: BLE001 - reported by flush(), close() or a waiting add
            with self._lock:
                if tid in self._queued:  # its rows stay in memory; written again by flush()/close()
                    self._failed[tid] = (record, rows, schema)
                self._writer.report(f"trajectory {tid}", exc)
                self._written.notify_all()
            return
        with self._lock:
            self._written.notify_all()

    def _write_file(self, record: Record, rows: Rows, schema: Schema) -> None:
        name = record.canonical_name(self.fmt)
        path = os.path.join(self.path, name)
        columns = {k: v.reshape(record.num_steps, record.num_envs, *v.shape[1:]) for k, v in rows.items()}
        data = file_dict_from_columns(
            columns, record.max_episode_length, record.model_weights_id, record.model_update_count
        )
        crc = formats.write(path, self.fmt, data)
        with self._lock:
            if record.trajectory_id in self._gone:  # left the buffer while being written
                self._gone.discard(record.trajectory_id)
                self.own.drop_unlisted(record.trajectory_id, name)
                return
            written = replace(record, directory=self.path, file=name, row=None, checksum=crc)
            self._landed(record, written, schema, os.path.getsize(path))

    def _landed(self, submitted: Record, written: Record, schema: Schema, nbytes: int) -> None:
        """A trajectory is durable in the directory (under the lock). Its index line is
        appended; if that fails the line stays queued (appended before any later line and by
        the next flush() or close()) and the failure is reported, so the trajectory is never
        written twice."""
        tid = submitted.trajectory_id
        self._dequeue(tid)
        self.files_written += 1
        first, count = self._unflushed or (tid, 0)
        self._unflushed = (first, count + 1)
        try:
            self.own.record_written(written, written.file or "", self._state()[0], schema)
        except OSError as exc:
            self._writer.report(f"indexing trajectory {tid}", exc)
        self._on_durable(written, submitted, nbytes)

    def _append_segment(self, record: Record, rows: Rows, schema: Schema) -> None:
        """Append a trajectory's rows to the segment; its index entry is written at the next
        group commit (when the writer's queue runs dry, every 64 MiB, or on flush)."""
        crc = rows_checksum(rows, schema)
        store = self.own.segment_store(schema)
        with self._lock:
            self._rows_in_flight += 1
            syncs = store.failed_syncs  # a fsync failing from now on may have lost these rows
        try:
            name, row = store.append(rows, sync=False, envs=record.num_envs)
        except BaseException:
            with self._lock:
                self._rows_in_flight -= 1
            self._commit_segments()  # rows appended before this one are fine: commit them
            raise
        with self._lock:
            self._rows_in_flight -= 1
            self._uncommitted.append((record, name, row, crc, rows, schema, syncs))
            self._uncommitted_bytes += _nbytes(rows)
            commit = self._uncommitted_bytes >= _GROUP_COMMIT_BYTES or self._writer.pending <= 1
        if commit:
            self._commit_segments()

    def _commit_segments(self) -> None:
        """Make appended segment rows durable (one fsync per column file), then journal them.

        Never raises: a failed fsync is reported, and the trajectories whose rows it may have
        lost (every one appended since a fsync last failed) keep their rows in memory and are
        appended again by the next ``flush()`` or ``close()``.
        """
        with self._lock:
            batch, self._uncommitted, self._uncommitted_bytes = self._uncommitted, [], 0
            if not batch:
                return
            self._rows_in_flight += 1
        try:
            self._commit(batch)
        finally:
            with self._lock:
                self._rows_in_flight -= 1

    def _commit(self, batch: list[Uncommitted]) -> None:
        store = self.own.segment_store(batch[-1][5])
        try:
            store.sync()  # rows are durable before any entry names them
        except BaseException as exc:  # noqa: BLE001 - reported by flush(), close() or a waiting add
            with self._lock:
                self._abandon(batch)
                ids = [item[0].trajectory_id for item in batch]
                self._writer.report(f"{_ids_text(ids)} (fsync of their segment rows)", exc)
                self._written.notify_all()
            return
        with self._lock:
            failed_syncs = store.failed_syncs
            self._abandon([item for item in batch if item[6] != failed_syncs])
            for record, name, row, crc, _, schema, syncs in batch:
                if syncs != failed_syncs:
                    continue
                written = replace(record, directory=self.path, file=name, row=row, checksum=crc)
                self._landed(record, written, schema, record.num_transitions * schema.row_bytes)
                if record.trajectory_id in self._gone:  # left the buffer while appended
                    self._gone.discard(record.trajectory_id)
                    try:
                        self.own.remove([record.trajectory_id])
                    except OSError as exc:
                        self._writer.report(f"evicting trajectory {record.trajectory_id}", exc)
            self._written.notify_all()

    def _abandon(self, batch: list[Uncommitted]) -> None:
        """Segment rows not known durable (under the lock): each trajectory still held keeps
        its rows in memory and is appended again by the next ``flush()`` or ``close()``."""
        for record, _, _, _, rows, schema, _ in batch:
            tid = record.trajectory_id
            if tid in self._queued:
                self._failed[tid] = (record, rows, schema)
            else:  # left the buffer meanwhile: nothing to write
                self._gone.discard(tid)

    # -- durability ---------------------------------------------------------------------------
    def retry_failed(self) -> None:
        """Queue again the writes that failed (their rows are still held)."""
        with self._lock:
            retry, self._failed = self._failed, {}
            for record, rows, schema in retry.values():
                self.submit(record, rows, schema)

    def drain(self) -> None:
        """Wait for the writes queued so far and commit what they appended (failures stay
        recorded for the next ``flush()`` or ``close()``)."""
        self._writer.wait()
        self._commit_segments()

    def _settle(self) -> None:
        """Wait for the writes queued so far. Raise a failure no call reported yet (without
        retrying it: the next call does); else write again, and wait for, the trajectories whose
        writes failed before, raising if one fails again.

        Raises:
            WriterError: a write failed; its rows stay in memory.
        """
        self.drain()
        self._writer.check()
        if self._failed:
            self.retry_failed()
            self.drain()
            self._writer.check()

    def flush(self) -> None:
        """Return once every trajectory queued before the call is durable, listed by the
        journal (its line fsync'd) and, for ``pt``/``pkl``, by ``trajectory_index.json`` (so
        RLinf's loader, which reads no journal, sees it). Writes and index lines that failed
        before, and were reported, are retried first (see :meth:`_settle`).

        Raises:
            WriterError: a write failed (its rows stay in memory), or the journal, directory,
                index or metadata could not be written or fsync'd (what was not written waits
                in memory); call again once fixed: nothing is lost and nothing written twice.
        """
        if not self.own.holding:
            return  # closed, and nothing written since (every write takes the lock again)
        self._settle()
        with self._lock, self._index_io():
            self.own.sync(*self._state())  # queued index lines, the directory, the journal's fsync
            self._publish_index()
            self._unflushed = None

    def _publish_index(self) -> None:
        """Rewrite ``trajectory_index.json`` whole (atomically) if the journal holds lines it
        lacks, keeping the journal: the journal stays what reopening reads after the index (its
        entries already listed are skipped), and the index stays RLinf-readable.

        Skipped when nothing was appended since the index was last written (by this or by a
        compaction, which empties the journal), and for the ``segment`` format, which RLinf
        cannot read: there the index is written at compaction only. Costs O(trajectories) per
        flush that has something new.
        """
        journal = self.own.journal
        if self.fmt == formats.SEGMENT or not journal.lines or journal.appended == self._published:
            return
        journal.sync()  # every entry (and so every file) it lists is durable before the index names it
        write_index(self.path, self.own.entries.in_order(), keep_journal=True)
        self._published = journal.appended

    def save_here(self, snapshot: Snapshot) -> None:
        """A checkpoint into the auto-save directory itself: copy in what it lacks, compact,
        then ``snapshot.extra(path)``."""
        self.own.hold()
        with self._lock, self._index_io():
            self.own.absorb(snapshot)
            self.own.compact(*self._state())
            if snapshot.extra is not None:
                snapshot.extra(self.path)

    def close(self, extra: Callable[[str], None] | None = None) -> None:
        """Finish every write, compact the index, write metadata (and ``extra(path)``), close
        the files and stop the writer thread (a later :meth:`submit` restarts it).

        Raises:
            WriterError: as :meth:`flush`; nothing was closed, call again once fixed.
        """
        if not self.own.holding:  # closed, and nothing written since
            if extra is not None:
                self.own.hold()  # a prioritized buffer's priorities.bin is written here
            else:
                self._writer.close()
                return
        self._settle()
        with self._lock, self._index_io():
            if not self._rows_in_flight and not self._uncommitted:  # no rows on their way to the index
                self.own.seal_segment()
            self.own.compact(*self._state())
            if extra is not None:
                extra(self.path)
            # an add (or eviction) from another thread that came in after _settle() still
            # writes here: the directory stays locked, and the next close() compacts it
            late = bool(self._queued or self._failed or self._rows_in_flight or self._uncommitted)
            self.own.close(release=not late and self._writer.pending == 0)
            self._unflushed = None
        self._writer.close()

    def stop(self) -> None:
        """Finish queued writes and stop the writer thread (failures stay recorded for the next
        ``flush()`` or ``close()``)."""
        self._writer.close()

    def reset(self) -> None:
        """Forget the trajectories given so far (the buffer was emptied or reloaded; call after
        :meth:`drain`). The directory keeps its files."""
        with self._lock:
            self._queued.clear()
            self._queued_bytes = 0
            self._failed.clear()
            self._disk_sizes.clear()
            self.disk_bytes = 0

    @contextlib.contextmanager
    def _index_io(self) -> Iterator[None]:
        """Report a failure to write or fsync the journal, the directory, the index or the
        metadata as :class:`WriterError`, naming the trajectories that may not be durable."""
        try:
            yield
        except OSError as exc:
            unflushed = ""
            if self._unflushed is not None:
                first, count = self._unflushed
                later = f" and the {count - 1} written after it" if count > 1 else ""
                unflushed = f"; trajectory {first}{later} may not be durable yet"
            raise WriterError(
                f"{self.path}: cannot write or fsync the index (journal, {INDEX}) or the metadata "
                f"({type(exc).__name__}: {exc})"
                f"{unflushed}. Nothing is lost: what was not written waits in memory and is written "
                "by the next flush() or close(); fix the cause (disk space, permissions) and call "
                "flush() again"
            ) from exc


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
        # built per entry only when read: reopening a large directory costs no entry dicts
        self.entries = EntryMap(contents.records)
        self._total = int(transitions_of(contents.records).sum())
        self.next_id = contents.counter
        self.journal = Journal(path)
        self._store: SegmentStore | None = None
        self.dedup = True  # new segments store paired next_obs rows once (set by the saver)
        self._doomed: list[str] = []  # files or segments to delete once their removal is durable
        self._segment_refs: dict[str, int] = {}  # segment -> entries naming it
        self._unreferenced: set[str] = set()  # segments no entry names (deleted once sealed)
        self._unjournaled: list[dict[str, Any]] = []  # lines whose append failed, oldest first
        self.lock: DirectoryLock | None = None  # held from open() to close(); see .lock
        self._segment_refs = {name: n for name, (n, _) in segment_use(contents.records).items()}
        # trajectory_index.json (with its sidecar) lists exactly ``entries``: compaction need
        # not rewrite it while nothing changes and no journal exists
        self._index_current = contents.index_current

    def segment_store(self, schema: Schema) -> SegmentStore:
        """The store appending this directory's segments (``segment`` format only; the
        schema is that of the rows, given with the first call)."""
        if self._store is None:
            self._store = SegmentStore(self.path, schema, dedup=self.dedup)
        return self._store

    @classmethod
    def open(cls, path: str, fmt: str, seed: int | None) -> OwnDirectory:
        """Open (continuing) or create an auto-save directory."""
        if os.path.lexists(path) and not os.path.isdir(path):
            raise BufferDirectoryError(f"auto_save_path {path} exists and is not a directory")
        with writing(path, "auto_save_path"):
            make_dirs(path)  # a new directory's name is durable before anything is acknowledged in it
        try:  # before anything in it is touched
            lock = DirectoryLock.acquire(path, "auto-save")
        except DirectoryLockedError:
            raise
        except BufferDirectoryError as exc:
            raise BufferDirectoryError(f"auto_save_path {exc}") from None
        try:
            with writing(path, "auto_save_path"):
                own = cls._open(path, fmt, seed)
        except BaseException:
            lock.release()
            raise
        own.lock = lock
        return own

    @classmethod
    def _open(cls, path: str, fmt: str, seed: int | None) -> OwnDirectory:
        os.makedirs(path, exist_ok=True)
        finish_move(path)  # a merge/split moving trajectories out of it was cut short
        listing = Listing(path)  # one listing serves what follows, unless files go
        remove_tmp_files(path, listing.names)
        removed: list[int] = []
        if os.path.lexists(os.path.join(path, JOURNAL)):
            files = listing.by_id()
            removed = removed_ids(path)
            gone = [name for tid in removed for name in files.get(tid, [])]
            for name in gone:  # evicted, but the crash came before their deletion
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(path, name))
            if gone:
                listing = Listing(path)
        if is_buffer_directory(path):
            contents, schema = read_directory(path, listing=listing)
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
        if listing.by_id():
            raise BufferDirectoryError(
                f"auto_save_path {path} holds trajectory files but no metadata.json; repair it "
                "with the verify tool or choose another path"
            )
        empty = DirectoryContents(path, fmt, [], [], 0, seed, True, 0, {})
        own = cls(path, fmt, seed, empty, None)
        own.compact(0, None)
        return own

    def record_written(self, record: Record, name: str, counter: int, schema: Schema | None) -> None:
        """Append the entry of a file just written; compact when the journal grows long.

        Raises:
            OSError: the line could not be appended (it stays queued: see :meth:`journal_line`),
                or the compaction failed (the journal keeps every entry).
        """
        entry = record.to_entry(name)
        self._set_entry(entry)
        self.next_id = max(self.next_id, record.trajectory_id + 1)
        self.journal_line(entry)
        if self.journal.lines > max(_COMPACT_MIN, len(self.entries)):
            self.compact(counter, schema)

    def journal_line(self, line: dict[str, Any]) -> None:
        """Append a journal line after every line queued before it.

        Raises:
            OSError: a line could not be appended. It stays queued, with every later one, and is
                appended, in order, by the next call or :meth:`sync_journal`; none is dropped
                and none is written twice.
        """
        self._unjournaled.append(line)
        self._append_unjournaled()

    def _append_unjournaled(self) -> None:
        while self._unjournaled:
            self.journal.append(self._unjournaled[0])  # raises: the line is not in the journal
            del self._unjournaled[0]

    def sync_journal(self) -> None:
        """Append the queued lines, then make the journal durable (fsync; after a failed one the
        journal writes its unsynced lines again first). The directory is fsync'd before the
        journal, so a durable line never names a file whose name is not. Raises ``OSError`` if
        one of them fails."""
        self._append_unjournaled()
        fsync_dir(self.path)
        self.journal.sync()

    def sync(self, counter: int, schema: Schema | None) -> None:
        """Make every appended entry and written file durable; refresh metadata.

        The queued lines are appended first and the directory is fsync'd before the journal,
        so a durable line never names a file whose name is not; files whose removal lines are
        now durable are deleted.
        """
        self.sync_journal()
        self._delete_doomed()
        self._write_metadata(counter, schema)

    def remove(self, trajectory_ids: list[int]) -> None:
        """Remove trajectories this directory lists (evicted by a capacity limit).

        A removal line goes to the journal first; the files go once it is durable (at the next
        :meth:`sync` or :meth:`compact`, or every 32 removals), so a crash never leaves an
        entry naming a deleted file. A segment goes once no entry names it and it is sealed.

        Raises:
            OSError: a removal line could not be appended. It stays queued (see
                :meth:`journal_line`) and the files stay: on disk the trajectories stay listed
                until the line is durable, and only then are their files deleted.
        """
        failure: OSError | None = None
        for tid in trajectory_ids:
            entry = self.entries.pop(tid, None)
            if entry is None:
                continue
            self._index_current = False
            self._total -= int(entry["num_samples"])
            name = entry["file"]
            if entry.get("row") is None:
                self._doomed.append(name)
            else:
                self._segment_refs[name] -= 1
                if self._segment_refs[name] == 0:
                    del self._segment_refs[name]
                    self._unreferenced.add(name)
            try:  # if it fails the line stays queued, and nothing is deleted until it is durable
                self.journal_line({"trajectory_id": tid, "removed": True})
            except OSError as exc:
                failure = failure or exc
        self._sweep_unreferenced()
        if failure is not None:
            raise failure
        if len(self._doomed) >= 32:
            self.sync_journal()
            self._delete_doomed()

    def drop_unlisted(self, trajectory_id: int, name: str) -> None:
        """Delete the file just written for a trajectory that left the buffer meanwhile (never
        listed). A durable removal line comes first: a crash before the deletion leaves a file
        that reopening deletes and verify calls a leftover, never an orphan to list again.

        Raises:
            OSError: the line could not be appended or fsync'd; the file stays until it is.
        """
        self._doomed.append(name)
        self.journal_line({"trajectory_id": trajectory_id, "removed": True})
        self.sync_journal()
        self._delete_doomed()

    def seal_segment(self) -> None:
        """Close the segment being appended (the next append starts a new one). If no entry
        names it (every append to it failed, or its trajectories were evicted) it is deleted
        with the next removals; call only while no append is under way."""
        if self._store is None:
            return
        active = self._store.active_name
        self._store.close()
        if active is not None and active not in self._segment_refs:
            self._unreferenced.add(active)

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
        """Rewrite ``trajectory_index.json`` with every entry and drop the journal (the index is
        left as it is when it already lists every entry and there is no journal)."""
        self.sync_journal()  # the queued lines too: a file goes only once its removal is durable
        self._delete_doomed()
        if not (self._index_current and not os.path.lexists(self.journal.path)):
            write_index(self.path, self.entries.in_order())
            self._index_current = True
        self.journal.reset()
        self._write_metadata(counter, schema)

    def _write_metadata(self, counter: int, schema: Schema | None) -> None:
        if schema is not None:
            self.schema = schema
        self.next_id = max(self.next_id, counter)
        totals = (len(self.entries), self._total)
        write_metadata(self.path, self.fmt, totals, self.next_id, self.seed, self.schema)

    def _set_entry(self, entry: dict[str, Any]) -> None:
        self._index_current = False
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

    @property
    def holding(self) -> bool:
        """Whether this directory's lock is held (from open() to close(), and again from the
        next write on)."""
        return self.lock is not None and self.lock.held

    def hold(self) -> None:
        """Take the directory's lock again if :meth:`close` released it.

        Raises:
            DirectoryLockedError: another writer holds the directory, or held it since.
        """
        if self.lock is None or not self.lock.held:
            token = self.lock.token if self.lock is not None else None
            self.lock = DirectoryLock.acquire(self.path, "auto-save", resume=token)

    def close(self, release: bool = True) -> None:
        """Close the journal handle and the segment being appended; release the lock unless
        ``release`` is false (writes are still on their way: they reopen both)."""
        try:
            self.journal.close()
            if self._store is not None:
                self._store.close()
        finally:
            if release and self.lock is not None:
                self.lock.release()


def recover_segments(path: str, schema: Schema | None, records: Sequence[Record]) -> None:
    """Cut what a crash left in segment files beyond the rows the index names."""
    committed = {name: end for name, (_, end) in segment_use(records).items()}
    for name in os.listdir(path):
        if SEGMENT_RE.match(name) and not os.path.islink(os.path.join(path, name)):
            if committed.get(name, 0) == 0:  # no entry names it: evicted, or never committed
                shutil.rmtree(os.path.join(path, name), ignore_errors=True)
                continue
            remove_tmp_files(os.path.join(path, name))  # an interrupted segment.json write
            truncate_segment(os.path.join(path, name), schema, committed.get(name, 0))
