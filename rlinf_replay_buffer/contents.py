"""What the buffer holds, and every way a trajectory enters or leaves it.

:class:`Contents` composes the parts the facade (:mod:`.buffer`) delegates to and keeps them in
step: the index (:mod:`.index`, which trajectories and where their rows live), the row store
(:mod:`.store`), the auto-saver (:mod:`.autosave`, which reports what became durable through
:meth:`Contents.durable`) and the rate limiter's counts (:class:`~.rate_limiter.LimiterGate`).
Trajectories enter by :meth:`~Contents.add` and :meth:`~Contents.load`; they leave when the
in-memory ring evicts them (without ``auto_save`` the ring is the storage), when a capacity limit
is passed, when a damaged one is skipped (``on_corrupt="skip"``), and on :meth:`~Contents.clear`.

Every method expects the buffer's lock held, except those marked "takes the lock", which take it
themselves because part of their work (disk I/O, waiting for the writer) must run without it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from . import checkpoint
from .autosave import AutoSaver
from .batch import Batch, nest
from .cache import TrajectoryCache
from .errors import CorruptTrajectoryError, EmptyBufferError, InvalidArgumentError
from .formats import priorities as priorities_file
from .index import TrajectoryIndex, Window
from .rate_limiter import LimiterGate
from .record import Record
from .record_table import ids_of, with_checksum
from .samplers import Draw, Prioritized, Request, Sampler
from .schema import Schema
from .settings import BufferSettings
from .store import Rows, RowStore, report_skipped
from .trajectory import AlignedTrajectory

Progress = Callable[[int, int], None]
_COUNTS = ("evicted", "corrupt_skipped", "capacity_evicted")


class Contents:
    """The buffer's trajectories and the parts that hold them.

    Args:
        settings: the buffer's settings (only ``sample_window_size`` changes later, through
            :meth:`set_window_size`).
        lock: the buffer's lock; the auto-saver takes it to report durable writes.
        limiter: the rate limiter's gate; told of every transition that enters or leaves.
        samplers: every sampler the buffer draws with (told to forget on a reset).
        prioritized: the prioritized sampler, if any (its priorities are saved and restored).
    """

    def __init__(
        self,
        settings: BufferSettings,
        lock: threading.RLock,
        limiter: LimiterGate,
        samplers: list[Sampler],
        prioritized: Prioritized | None,
    ) -> None:
        self.settings = settings
        self.lock = lock
        self.index = TrajectoryIndex()
        self.counter = 0  # the id the next trajectory gets
        self.counts = dict.fromkeys(_COUNTS, 0)
        self._limiter, self._samplers, self._prio = limiter, samplers, prioritized
        s = settings
        self.saver: AutoSaver | None = None
        if s.auto_save_path is not None:
            self.saver = AutoSaver(
                s.auto_save_path, s.trajectory_format, s.seed, lock, self.durable,
                lambda: (self.counter, self.store.schema), s.max_pending_bytes, s.dedup_next_obs,
            )  # fmt: skip
        ring = (
            None
            if s.ring_limit is False
            else TrajectoryCache(s.ring_limit, s.cache_max_bytes, s.reserve_bytes, dedup=s.dedup_next_obs)
        )
        self.store = RowStore(
            self.index,
            ring,
            self.saver.segment_store_for if self.saver else None,
            settings.sampling_copy_dir,
            settings.sampling_copies,
        )
        if self.saver is not None:
            records, schema = self.saver.contents
            if records:
                self._install(records, *self.prepare(records, schema), schema)
                self._restore_priorities(s.auto_save_path)
            self.counter = max(self.counter, self.saver.next_id)

    # -- state --------------------------------------------------------------------------------
    def window(self) -> Window:
        """The trajectories samplers draw from: the newest ``sample_window_size`` (0: all)."""
        return self.index.window(self.settings.sample_window_size)

    def set_window_size(self, size: int) -> None:
        """Change ``sample_window_size``; without ``auto_save`` what falls out of a smaller
        window leaves the buffer."""
        self.settings = replace(self.settings, sample_window_size=size)
        if not self.settings.auto_save:
            self._left_ring(self.store.set_ring_limit(size or None))

    def stats(self) -> dict[str, int]:
        """The counters of :meth:`.buffer.TrajectoryReplayBuffer.get_stats`: RLinf's
        ``num_trajectories``, ``total_samples``, ``cache_size`` (trajectories in memory); and
        ``size``, ``trajectory_counter``, ``window_trajectories``, ``window_transitions``,
        ``cached_trajectories``, ``cached_bytes``, ``evicted_trajectories``, ``corrupt_skipped``,
        ``capacity_evicted``, ``disk_bytes``, ``pending_writes``, ``files_written``."""
        window, saver, ring = self.window(), self.saver, self.store.ring_count
        return {
            "num_trajectories": len(self.index), "cache_size": ring, "size": len(self.index),
            "total_samples": self.index.total_transitions, "trajectory_counter": self.counter,
            "window_trajectories": len(window), "window_transitions": window.total,
            "cached_trajectories": ring, "cached_bytes": self.store.ring_bytes,
            "evicted_trajectories": self.counts["evicted"], "corrupt_skipped": self.counts["corrupt_skipped"],
            "capacity_evicted": self.counts["capacity_evicted"],
            "disk_bytes": saver.disk_bytes if saver else 0, "pending_writes": self.store.pending_count,
            "files_written": saver.files_written if saver else 0,
        }  # fmt: skip

    # -- entering -----------------------------------------------------------------------------
    def add(self, aligned: list[AlignedTrajectory], schema: Schema) -> list[int]:
        """Add validated trajectories whose merged schema is ``schema``; returns their ids.

        Either every trajectory is added (in the buffer, queued for the auto-saver) or none is
        and the call raises. A failed background write is raised here only when this add has
        to wait for the writer (more than ``max_pending_bytes`` wait for the disk); otherwise
        ``flush()``, ``close()`` or such an add reports it.

        Raises:
            WriterError: this add had to wait for the writer and a write failed; nothing was
                added.
        """
        if self.saver is not None and self.saver.make_room(len(aligned)):
            schema = self.store.admit(aligned)  # the lock was released: check against the schema now
        if self.saver is not None:
            self.saver.hold()  # raises, changing nothing, if another writer took the directory
        self.store.set_schema(schema)
        ids = []
        for t in aligned:
            tid, flat = self.counter, t.flat()
            record = Record.of_trajectory(tid, t)
            self.counter += 1
            evicted = self.store.put(tid, flat, t.num_envs)
            self.index.append(record)
            if self.saver is not None:  # rows nobody can change: the caller may reuse its tensors
                rows = {k: v if k in t.owned else v.clone() for k, v in flat.items()}
                self.store.hold(tid, rows)
                self.saver.submit(record, rows, schema)
            self._left_ring(evicted)
            ids.append(tid)
        self._enforce_capacity()
        if self.saver is not None:
            self.saver.wait_for_room()  # backpressure: at most max_pending_bytes wait for the disk
        return ids

    def add_limited(self, aligned: list[AlignedTrajectory]) -> list[int]:
        """:meth:`add` through the rate limiter (takes the lock): with a limiter, trajectories
        whose fields conflict with the buffer's are refused before waiting for it; the wait runs
        without the lock, and the insert is taken back if the add fails."""
        if not aligned:
            return []
        checked: tuple[Schema | None, Schema] | None = None  # (schema checked against, result)
        if self._limiter.limiter is not None:  # refuse a bad add before waiting for the limiter
            with self.lock:
                checked = (self.store.schema, self.store.admit(aligned))
        with self._limiter.insert(sum(t.num_transitions for t in aligned)), self.lock:
            same = checked is not None and checked[0] is self.store.schema
            return self.add(aligned, checked[1] if checked and same else self.store.admit(aligned))

    def prepare(
        self, records: Sequence[Record], schema: Schema | None, progress: Progress | None = None
    ) -> tuple[Sequence[Record], list[tuple[Record, Rows]]]:
        """What a load keeps (without ``auto_save``: the window) and the rows it warms the ring
        with (the newest ``cache_size``; the rest stay in their files, read on demand), read
        without changing the buffer (may be called without the lock)."""
        s = self.settings
        keep = records[-s.sample_window_size :] if not s.auto_save and s.sample_window_size else records
        keep, warm, skipped = self.store.read_newest(
            keep, schema, s.on_corrupt == "skip", progress, limit=s.warm_limit, max_bytes=s.cache_max_bytes
        )
        self.counts["corrupt_skipped"] += skipped
        return keep, warm

    def _install(
        self,
        records: Sequence[Record],
        keep: Sequence[Record],
        warm: list[tuple[Record, Rows]],
        schema: Schema | None,
    ) -> None:
        self.counts["evicted"] += len(records) - len(keep)
        self.store.set_schema(schema if keep else None)
        warmed = [record.trajectory_id for record, _ in warm]  # read, so checked, while warming
        self.index.extend(keep, ~with_checksum(keep) | np.isin(ids_of(keep), warmed))
        self._limiter.rebase(self.index.total_transitions)  # loaded transitions count as inserted
        warm.reverse()
        while warm:  # one at a time, each released once copied: its mapped pages go with it
            record, rows = warm.pop()
            self._left_ring(self.store.put(record.trajectory_id, rows, record.num_envs))
            del rows
        if self.settings.max_disk_bytes is not None and self.saver is not None and schema is not None:
            self.saver.count_existing(keep, schema)
        self._enforce_capacity()

    def _restore_priorities(self, directory: str) -> None:
        saved = priorities_file.load(directory) if self._prio is not None else None
        if self._prio is not None and saved is not None:
            self._prio.restore(self.window(), saved, lambda t: self.index[t].uuid)

    def priorities_writer(self) -> Callable[[str], None] | None:
        """A writer of the window's priorities as they are now (``None`` unless prioritized)."""
        if self._prio is None:
            return None
        saved = self._prio.saved(self.window(), lambda t: self.index[t].uuid)
        return lambda directory: priorities_file.write(directory, saved)

    def durable(self, written: Record, submitted: Record, nbytes: int) -> None:
        """The auto-saver's callback: ``submitted`` is durable as ``written``."""
        if self.index.holds(submitted) and self.saver is not None:
            self.index.relocate(written)
            self.saver.count(written.trajectory_id, nbytes)
        self.store.release(submitted.trajectory_id)
        self._enforce_capacity()

    def save(self, save_path: str, fmt: str) -> None:
        """Write a checkpoint of everything held to ``save_path`` in ``fmt`` (takes the lock;
        see :meth:`.buffer.TrajectoryReplayBuffer.save_checkpoint`)."""
        with self.lock:
            records = list(self.index)
            snapshot, release = checkpoint.snapshot_of(
                records, self.store, self.lock, counter=self.counter, seed=self.settings.seed, fmt=fmt,
                extra=self.priorities_writer(), dedup=self.settings.dedup_next_obs,
            )  # fmt: skip
        try:
            saver = self.saver
            if saver is not None and saver.owns(save_path):
                if fmt != saver.fmt:
                    raise InvalidArgumentError(f"the auto-save directory holds {saver.fmt!r}, not {fmt!r}")
                return saver.save_here(snapshot)
            placed = checkpoint.save(snapshot, save_path)
        finally:
            with self.lock:
                release()
        with self.lock:  # rows first held only in memory now live in the checkpoint's files
            for record in records:
                new = checkpoint.moved(record, placed.get(record.trajectory_id), save_path)
                if new is not None and self.index.holds(record):
                    self.index.relocate(new)
            self.store.forget_directory(save_path)

    def load(self, load_path: str, share: tuple[int, int], progress: Progress | None) -> None:
        """Replace everything with the directory at ``load_path`` (rank ``share[0]`` of
        ``share[1]``), read and checked before anything changes (takes the lock)."""
        skip = self.settings.on_corrupt == "skip"
        found, schema = checkpoint.read(load_path, share, skip_corrupt=skip, progress=progress)
        prepared = self.prepare(found.records, schema, progress)  # may raise: nothing changed
        with self.lock:
            self.reset()
            self._install(found.records, *prepared, schema)
            self._restore_priorities(found.path)
            self.counter = max(found.counter, self.saver.next_id if self.saver else 0)

    # -- sampling -----------------------------------------------------------------------------
    def sample(self, sampler: Sampler, request: Request) -> Batch:
        """``request`` drawn by ``sampler`` from the window, as a nested batch (a failed
        background write is not raised here: ``flush()`` or ``close()`` reports it)."""
        return self._on_window(lambda window: self._batch(window, sampler.draw(window, request)))

    def population(self, sampler: Sampler, request: Request) -> float:
        """What ``sampler`` would draw ``request`` from now (0 where sampling would raise)."""
        try:
            return self._on_window(lambda window: sampler.population(window, request))
        except EmptyBufferError:
            return 0

    def _batch(self, window: Window, draw: Draw) -> Batch:
        rows = self.store.gather(window, draw.rows)
        for key, tensor in rows.items():
            if draw.padding is not None:
                tensor[draw.padding] = 0
            rows[key] = tensor.reshape(*draw.shape, *tensor.shape[1:]) if len(draw.shape) > 1 else tensor
        batch = nest(rows)
        batch.update(draw.extras)
        return batch

    def _on_window(self, use: Callable[[Window], Any]) -> Any:
        """``use(window)`` on a non-empty window; with ``on_corrupt="skip"``, damaged
        trajectories met are left out of the buffer and the window taken again."""
        while True:
            window = self.window()
            if window.total <= 0:
                raise EmptyBufferError(
                    "cannot sample: the sampling window holds no transition; add trajectories "
                    "or load a checkpoint first (is_ready() tells when sampling is possible)"
                )
            try:
                return use(window)
            except CorruptTrajectoryError as exc:
                if not self.drop_corrupt(exc, stacklevel=8):
                    raise

    def drop_corrupt(self, exc: CorruptTrajectoryError, stacklevel: int) -> bool:
        """With ``on_corrupt="skip"``: the damaged trajectory ``exc`` names leaves the buffer (its
        file stays), counted and warned about (``stacklevel`` is passed to
        :func:`.store.report_skipped`), and True is returned. Otherwise False: nothing changes."""
        if self.settings.on_corrupt != "skip" or exc.trajectory_id not in self.index:
            return False
        self.store.forget(self.index.remove(exc.trajectory_id))  # its file stays
        self.counts["corrupt_skipped"] += 1
        report_skipped(exc.trajectory_id, exc, stacklevel=stacklevel)
        return True

    # -- leaving ------------------------------------------------------------------------------
    def _left_ring(self, evicted: list[int]) -> None:
        """What the ring evicted: a trajectory with a file stays (read from it on demand); one
        held only in memory leaves the buffer (without ``auto_save`` the ring is its storage).
        Without ``auto_save`` the buffer then keeps only its window."""
        if self.settings.auto_save:
            return
        for tid in evicted:
            record = self.index.get(tid)
            if record is not None and record.path is None:
                self._leave(self.index.remove(tid), "evicted")
        window = self.settings.sample_window_size
        while window and len(self.index) > window:
            record = self.index.pop_oldest()
            self.store.evict(record)
            self._leave(record, "evicted")

    def _leave(self, record: Record, reason: str) -> None:
        self.store.forget(record)
        self.counts[reason] += 1
        self._limiter.removed(record.num_transitions)

    def _over_capacity(self) -> bool:
        s, index, saver = self.settings, self.index, self.saver
        return len(index) > 1 and (
            (s.max_trajectories is not None and len(index) > s.max_trajectories)
            or (s.max_transitions is not None and index.total_transitions > s.max_transitions)
            or (s.max_disk_bytes is not None and saver is not None and saver.disk_bytes > s.max_disk_bytes)
        )

    def _enforce_capacity(self) -> None:
        """Evict the oldest trajectories while a capacity limit is passed (the newest stays);
        files this buffer wrote go with them, any other file is only forgotten."""
        if not self.settings.bounded:
            return
        listed: list[int] = []
        while self._over_capacity():
            record = self.index.pop_oldest()
            self.store.evict(record)
            if self.saver is not None and self.saver.forget(record):
                listed.append(record.trajectory_id)
            self.counts["capacity_evicted"] += 1
            self._limiter.removed(record.num_transitions)
        if self.saver is not None:
            self.saver.remove(listed)

    def reset(self) -> None:
        """Forget every trajectory (files stay)."""
        self.index.clear()
        self.store.clear()
        for sampler in self._samplers:
            sampler.forget()
        if self.saver is not None:
            self.saver.reset()
        self._limiter.reset()

    def clear(self) -> None:
        """Wait for pending writes, :meth:`reset` and start counting again; ids continue an
        auto-save directory's (takes the lock)."""
        if self.saver is not None:
            self.saver.drain()
        with self.lock:
            self.reset()
            self.counts["evicted"] = 0
            self.counter = self.saver.next_id if self.saver is not None else 0
            if self.saver is not None:
                self.saver.files_written = 0

    def clear_memory(self) -> None:
        """Finish pending writes, empty the ring, close open files, delete sampling copies and
        stop the writer thread; without ``auto_save`` the trajectories held only in memory
        leave the buffer, those loaded from a directory stay, read from their files (takes the
        lock)."""
        if self.saver is not None:
            self.saver.drain()
        with self.lock:
            if not self.settings.auto_save:
                for record in [r for r in self.index if r.path is None]:
                    self._leave(self.index.remove(record.trajectory_id), "evicted")
                if not len(self.index):
                    self.reset()
            self.store.clear_ring()
            self.store.close()
        if self.saver is not None:
            self.saver.stop()

    def close(self) -> None:
        """Finish pending writes, write the full index, metadata and priorities, stop the
        writer thread, close open files and delete sampling copies (takes the lock)."""
        if self.saver is not None:
            with self.lock:
                extra = self.priorities_writer()
            self.saver.close(extra)
        with self.lock:
            self.store.close()
        self._limiter.close()  # wakes adders and samplers; the next add or sample reopens it

    def close_logged(self) -> None:
        """:meth:`close`, logging a failure instead of raising it (for the background thread of
        ``close(wait=False)``, which nobody waits for)."""
        try:
            self.close()
        except Exception:  # noqa: BLE001 - reported, nobody waits for this thread
            logging.getLogger("rlinf_replay_buffer").exception("closing the buffer in the background failed")
