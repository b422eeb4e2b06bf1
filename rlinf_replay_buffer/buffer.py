"""``TrajectoryReplayBuffer``: the facade that composes index, cache, sampler, writer and files.

Roles (one module each): :mod:`.trajectory` validates and aligns input, :mod:`.index` orders
trajectories and computes the window, :mod:`.cache` holds recent rows in memory,
:mod:`.sampler`, :mod:`.sequences`, :mod:`.priority` and :mod:`.rate_limiter` are the sampling
components (composed in :mod:`.strategies`), :mod:`.rows` reads the rows of drawn transitions,
:mod:`.writer` writes files in the background, :mod:`.directory`, :mod:`.formats` and
:mod:`.integrity` define what is on disk and check it, :mod:`.checkpoint` saves and loads whole
directories.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from . import checkpoint, config, formats
from .batch import Batch
from .cache import TrajectoryCache
from .directory import Record, refuse_link_out, write_index
from .errors import (
    CorruptBufferError,
    CorruptDataWarning,
    CorruptTrajectoryError,
    EmptyBufferError,
    InvalidArgumentError,
    WriterError,
)
from .formats import priorities as priorities_file
from .formats.segment import SegmentStore
from .index import TrajectoryIndex
from .integrity import rows_checksum
from .priority import PrioritizedSampler
from .rate_limiter import RateLimiter
from .rows import RowReader
from .sampler import UniformSampler
from .schema import Schema
from .strategies import SamplingStrategies
from .trajectory import (
    AlignedTrajectory,
    Key,
    Trajectory,
    align,
    file_dict_from_columns,
    flatten_like_rlinf,
)
from .validate import check_bool, check_int
from .writer import BackgroundWriter

logger = logging.getLogger("rlinf_replay_buffer")


_GROUP_COMMIT_BYTES = 64 << 20  # segment rows appended before an fsync and journal entries


class TrajectoryReplayBuffer(SamplingStrategies, RowReader):
    """A replay buffer of batched trajectories ``[T, B, ...]`` that samples single transitions.

    Args:
        seed: seed of the buffer's own ``torch.Generator`` (``None``: a random seed). Sampling
            is reproducible from the seed and the sequence of calls; no global RNG is used.
        enable_cache: keep the ``cache_size`` most recent trajectories in memory when
            ``auto_save`` is on (without ``auto_save`` trajectories always live in memory).
        cache_size: trajectories the cache holds (``auto_save=True`` only).
        sample_window_size: sample only from the most recent N trajectories; 0 means all.
        auto_save: write every trajectory to ``auto_save_path`` on a background thread. Without
            it, the buffer holds the window in memory and writes files only on
            :meth:`save_checkpoint`; trajectories that fall out of the window leave the buffer.
        auto_save_path: directory for auto-saved files. A directory that already holds a
            buffer is continued: its trajectories are loaded and new ids follow theirs.
        trajectory_format: ``"pt"`` (default) or ``"pkl"``, for files this buffer writes.
        cache_max_bytes: optional bound of the in-memory store in bytes (rows only).
        check_finite: reject trajectories with NaN or infinite floats.
        reserve_bytes: address space reserved for the in-memory ring (virtual: pages are
            committed only as rows are written). Default ``cache_max_bytes``, else the
            machine's physical memory. When the ring is full the oldest trajectories leave it.
        max_pending_bytes: with ``auto_save``, bytes of trajectories waiting for the background
            writer beyond which ``add_trajectories`` waits for the disk (backpressure; 256 MiB).
        on_corrupt: what to do with a trajectory whose file fails its checksum or cannot be
            read (checked the first time it is read from disk): ``"raise"`` (default) raises
            :class:`CorruptTrajectoryError` naming it; ``"skip"`` drops it from the buffer with
            a :class:`CorruptDataWarning` and carries on (files are never touched).
        max_trajectories, max_transitions, max_disk_bytes: capacity. Once a limit is passed the
            oldest trajectories leave the buffer (the newest always stays). Files this buffer
            wrote to ``auto_save_path`` are deleted with them; files of a loaded checkpoint are
            never touched. ``max_disk_bytes`` counts the bytes of the files (or segment rows)
            this buffer wrote. ``get_stats()`` reports ``capacity_evicted``.
        prioritized: sample transitions in proportion to ``(priority + priority_eps) **
            priority_alpha`` (a sum tree over the window); batches then carry ``indices``
            (int64 ``[N]``) and importance ``weights`` (float32 ``[N]``, ``priority_beta``,
            batch-max normalised); see :meth:`update_priorities`. New transitions get the
            largest priority seen so far.
        max_staleness: sample only from window trajectories whose ``model_update_count`` is at
            least the newest one's minus ``max_staleness`` (uniform and sequence sampling).
        rate_limiter: a :class:`~.rate_limiter.RateLimiter` counting transitions: adds wait
            while sampling lags, samples wait while adding lags (``rate_limit_timeout``
            seconds at most, then :class:`~.errors.RateLimitTimeout`). ``close()``
            closes it, which wakes every waiter.
    """

    def __init__(
        self,
        seed: int | None = 1234,
        enable_cache: bool = True,
        cache_size: int = 5,
        sample_window_size: int = 100,
        auto_save: bool = False,
        auto_save_path: str = "",
        trajectory_format: str = "pt",
        *,
        cache_max_bytes: int | None = None,
        check_finite: bool = False,
        reserve_bytes: int | None = None,
        max_pending_bytes: int = 256 << 20,
        on_corrupt: str = "raise",
        max_trajectories: int | None = None,
        max_transitions: int | None = None,
        max_disk_bytes: int | None = None,
        prioritized: bool = False,
        priority_alpha: float = 0.6,
        priority_beta: float = 0.4,
        priority_eps: float = 1e-6,
        max_staleness: int | None = None,
        rate_limiter: RateLimiter | None = None,
        rate_limit_timeout: float | None = None,
    ) -> None:
        if seed is None:
            seed = random.SystemRandom().randrange(2**63)
        self.seed = check_int("seed", seed, 0)
        self.enable_cache = check_bool("enable_cache", enable_cache)
        self.cache_size = check_int("cache_size", cache_size, 0)
        self._window_size = check_int("sample_window_size", sample_window_size, 0)
        self.auto_save = check_bool("auto_save", auto_save)
        self.trajectory_format = formats.check_format(trajectory_format)
        self.check_finite = check_bool("check_finite", check_finite)
        self.cache_max_bytes = check_int("cache_max_bytes", cache_max_bytes, 1, allow_none=True)
        self._reserve_bytes = check_int("reserve_bytes", reserve_bytes, 1, allow_none=True)
        self._max_pending = check_int("max_pending_bytes", max_pending_bytes, 1)
        if on_corrupt not in ("raise", "skip"):
            raise InvalidArgumentError(f"on_corrupt must be 'raise' or 'skip', got {on_corrupt!r}")
        self.on_corrupt = on_corrupt
        self._corrupt_skipped = 0
        self.max_trajectories = check_int("max_trajectories", max_trajectories, 1, allow_none=True)
        self.max_transitions = check_int("max_transitions", max_transitions, 1, allow_none=True)
        self.max_disk_bytes = check_int("max_disk_bytes", max_disk_bytes, 1, allow_none=True)
        self._capacity_evicted = 0
        self._disk_sizes: dict[int, int] = {}  # bytes on disk of trajectories this buffer wrote
        self._disk_bytes = 0
        self._gone: set[int] = set()  # evicted while their write was pending
        self.max_staleness = check_int("max_staleness", max_staleness, 0, allow_none=True)
        self.prioritized = check_bool("prioritized", prioritized)
        if self.prioritized and self.max_staleness is not None:
            raise InvalidArgumentError(
                "prioritized=True and max_staleness cannot be combined; use sample_window_size to "
                "bound what prioritized sampling draws from"
            )
        if rate_limiter is not None and not isinstance(rate_limiter, RateLimiter):
            raise InvalidArgumentError(
                f"rate_limiter must be a RateLimiter, got {type(rate_limiter).__name__}"
            )
        self.rate_limiter = rate_limiter
        if rate_limit_timeout is not None and (
            isinstance(rate_limit_timeout, bool)
            or not isinstance(rate_limit_timeout, int | float)
            or not rate_limit_timeout >= 0
        ):
            raise InvalidArgumentError(
                f"rate_limit_timeout must be None or a number >= 0, got {rate_limit_timeout!r}"
            )
        self.rate_limit_timeout = rate_limit_timeout
        self._limiter_closed = False
        self._pending_bytes = 0
        # segment rows appended but not yet in the journal (group commit):
        # (record, segment, row, checksum)
        self._uncommitted: list[tuple[Record, str, int, int]] = []
        self._uncommitted_bytes = 0
        if self.auto_save:
            if not isinstance(auto_save_path, str | os.PathLike) or not os.fspath(auto_save_path):
                raise InvalidArgumentError(
                    "auto_save=True needs auto_save_path, the directory to write trajectories to"
                )
            self.auto_save_path: str | None = os.path.abspath(os.fspath(auto_save_path))
        else:
            self.auto_save_path = None

        self._lock = threading.RLock()
        self._closing: threading.Thread | None = None  # a close(wait=False) in progress
        self._written = threading.Condition(self._lock)  # notified as background writes finish
        self._generator = torch.Generator().manual_seed(self.seed)
        self._sampler = UniformSampler(self._generator)
        self._prio: PrioritizedSampler | None = None
        if self.prioritized:
            self._prio = PrioritizedSampler(
                priority_alpha, priority_beta, priority_eps, generator=self._generator
            )
        self._prio_slots: OrderedDict[int, tuple[int, int]] = OrderedDict()  # tid -> (slot, n)
        self._prio_starts: tuple[tuple[int, int], np.ndarray] | None = None
        self._episode_ends: dict[int, np.ndarray] = {}  # tid -> dones [T, B] (sequences)
        self._seq_starts: dict[tuple[int, int, bool], np.ndarray] = {}
        self._derived: dict[str, tuple[tuple[Any, ...], Any]] = {}  # see _window_cached
        self._index = TrajectoryIndex()
        self._cache = self._new_cache()
        self._schema: Schema | None = None
        self._unwritten: dict[int, dict[Key, torch.Tensor]] = {}
        self._failed: dict[int, Record] = {}  # writes that raised; retried by flush()/close()
        self._readers: OrderedDict[str, dict[Key, torch.Tensor]] = OrderedDict()
        # segments rows may be read from: key -> (directory, segment name), and their stores
        self._segments: list[tuple[str, str]] = []
        self._segment_keys: dict[tuple[str, str], int] = {}
        self._stores: dict[str, SegmentStore] = {}
        self._writer = BackgroundWriter()
        self._counter = 0
        self._evicted = 0
        self._files_written = 0
        self._published = -1  # own.journal.appended when flush() last wrote the index
        self._own: checkpoint.OwnDirectory | None = None
        if self.auto_save_path is not None:
            self._own = checkpoint.OwnDirectory.open(self.auto_save_path, self.trajectory_format, self.seed)
            if self._own.contents.records:
                records, schema = self._own.contents.records, self._own.schema
                self._install(records, *self._prepare(records, schema), schema)
                self._restore_priorities(self.auto_save_path)
            self._counter = max(self._counter, self._own.next_id)

    # -- configuration ------------------------------------------------------------------------
    @classmethod
    def from_config(
        cls,
        cfg: Any,
        *,
        section: str = "replay_buffer",
        rank: int | None = None,
        unknown_keys: str = "warn",
        **overrides: Any,
    ) -> TrajectoryReplayBuffer:
        """Build a buffer from RLinf's YAML keys (a dict or an OmegaConf node: the whole config,
        ``algorithm`` or ``algorithm.replay_buffer``).

        Every key of RLinf's buffer sections is accepted. A key nobody knows is named in a
        :class:`~.errors.UnknownConfigKeysWarning` and dropped (``unknown_keys="raise"``: an
        :class:`InvalidArgumentError`); keys RLinf reads nowhere (``max_num_samples``) are named
        in an :class:`~.errors.IgnoredConfigKeysWarning`; a bad value of a key that is used
        raises :class:`InvalidArgumentError` naming it. ``overrides`` take precedence over the
        configuration; they accept the same keys (an unknown one is always an error).
        ``section`` (``"replay_buffer"`` or ``"demo_buffer"``) and ``rank`` (write to
        ``<auto_save_path>/rank_<rank>``) are those of
        :func:`.config.buffer_kwargs_from_config`, which reads the configuration; see also
        ``docs/guide.md``.

        The extras (keys RLinf's worker reads, not its constructor) are attached to the
        buffer: ``buffer.config_extras`` (a :class:`~.config.BufferConfigExtras`) and
        ``buffer.min_buffer_size`` (``None`` if not configured).
        """
        kwargs, extras = config.buffer_kwargs_from_config(
            cfg, section=section, rank=rank, unknown_keys=unknown_keys, **overrides
        )
        buffer = cls(**kwargs)
        config.attach_extras(buffer, extras)
        return buffer

    def _new_cache(self) -> TrajectoryCache | None:
        if not self.auto_save:
            limit = self._window_size or None
        elif self.enable_cache and self.cache_size > 0:
            limit = self.cache_size
        else:
            return None
        return TrajectoryCache(limit, self.cache_max_bytes, self._reserve_bytes)

    @property
    def sample_window_size(self) -> int:
        """Trajectories the sampler draws from (the most recent ones); 0 means all."""
        return self._window_size

    @sample_window_size.setter
    def sample_window_size(self, value: int) -> None:
        with self._lock:
            self._window_size = check_int("sample_window_size", value, 0)
            if not self.auto_save and self._cache is not None:
                self._cache.max_trajectories = self._window_size or None
                self._forget_evicted(self._cache.enforce_bounds())

    @property
    def priority_beta(self) -> float | None:
        """Importance-sampling exponent of prioritized sampling in [0, 1] (``None`` if not
        prioritized); settable, e.g. annealed towards 1 during training."""
        return self._prio.beta if self._prio is not None else None

    @priority_beta.setter
    def priority_beta(self, value: float) -> None:
        if self._prio is None:
            raise InvalidArgumentError("priority_beta needs a buffer built with prioritized=True")
        self._prio.beta = value

    # -- counters -----------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Trajectories the buffer holds."""
        return len(self._index)

    def __len__(self) -> int:
        return len(self._index)

    @property
    def total_samples(self) -> int:
        """Transitions the buffer holds (sum of ``T * B``)."""
        return self._index.total_transitions

    @property
    def trajectory_counter(self) -> int:
        """The id the next added trajectory gets."""
        return self._counter

    def is_ready(self, min_size: int = 1) -> bool:
        """Whether at least ``min_size`` trajectories are held and the window can be sampled."""
        min_size = check_int("min_size", min_size, 0)
        with self._lock:
            _, ends, _ = self._index.window(self._window_size)
            return len(self._index) >= min_size and len(ends) > 0 and int(ends[-1]) > 0

    async def is_ready_async(self, min_size: int = 1) -> bool:
        """:meth:`is_ready` for asyncio code (RLinf's async SAC and DAgger workers ``await`` it);
        it runs in a worker thread, so a long add or load never blocks the event loop."""
        return await asyncio.to_thread(self.is_ready, min_size)

    def get_stats(self) -> dict[str, int]:
        """Counters for logging, every value an ``int`` (RLinf averages them with ``np.mean``).

        RLinf's keys: ``num_trajectories``, ``total_samples``, ``cache_size`` (trajectories held in
        memory). This library's: ``size`` (= ``num_trajectories``), ``trajectory_counter``,
        ``window_trajectories``, ``window_transitions``, ``cached_trajectories``,
        ``cached_bytes``, ``evicted_trajectories``, ``corrupt_skipped``, ``capacity_evicted``,
        ``disk_bytes``, ``pending_writes``, ``files_written``. Settings (``auto_save``,
        ``auto_save_path``, ``trajectory_format``) are attributes of the buffer, not stats.
        """
        with self._lock:
            ids, ends, _ = self._index.window(self._window_size)
            cached = len(self._cache) if self._cache is not None else 0
            return {
                "num_trajectories": len(self._index),
                "cache_size": cached,
                "size": len(self._index),
                "total_samples": self._index.total_transitions,
                "trajectory_counter": self._counter,
                "window_trajectories": len(ids),
                "window_transitions": int(ends[-1]) if len(ends) else 0,
                "cached_trajectories": cached,
                "cached_bytes": self._cache.nbytes if self._cache is not None else 0,
                "evicted_trajectories": self._evicted,
                "corrupt_skipped": self._corrupt_skipped,
                "capacity_evicted": self._capacity_evicted,
                "disk_bytes": self._disk_bytes,
                "pending_writes": len(self._unwritten),
                "files_written": self._files_written,
            }

    @property
    def schema(self) -> Schema | None:
        """The buffer's columns with dtype and per-transition shape (``None`` while empty)."""
        return self._schema

    # -- adding -------------------------------------------------------------------------------
    def add_trajectories(self, trajectories: Sequence[Trajectory]) -> list[int]:
        """Add trajectories; each gets a ``uuid`` and the next ``trajectory_id``.

        The whole call is validated first: if any trajectory is malformed, nothing is added and
        :class:`InvalidTrajectoryError` names the trajectory, the field and the fix. With
        ``auto_save`` the files are written on a background thread; the call returns once the
        data is copied into the buffer (``flush()`` makes it durable; see ``docs/guide.md``).

        Args:
            trajectories: ``Trajectory`` objects with tensors ``[T, B, ...]`` (aligned or in
                RLinf's rollout layout).

        Returns:
            The ids given to the trajectories, in order.
        """
        if isinstance(trajectories, Trajectory | Mapping) or not isinstance(trajectories, Sequence):
            raise InvalidArgumentError(
                f"add_trajectories takes a list of Trajectory objects, got {type(trajectories).__name__}"
            )
        aligned = [
            align(t, where=f"trajectory {i}: ", check_finite=self.check_finite)
            for i, t in enumerate(trajectories)
        ]
        if not aligned:
            return []
        checked: tuple[Schema | None, Schema] | None = None  # (schema checked against, result)
        if self.rate_limiter is not None:
            self._reopen_limiter()
            with self._lock:  # an acquired insert cannot be given back: validate first
                checked = (self._schema, self._check_schema(aligned))
            # never wait under the lock: samplers must get through
            self.rate_limiter.acquire_insert(sum(t.num_transitions for t in aligned), self.rate_limit_timeout)
        with self._lock:
            self._writer.check()
            if checked is not None and checked[0] is self._schema:
                self._schema = checked[1]  # unchanged while waiting: no second check
            else:
                self._schema = self._check_schema(aligned)
            ids = [self._add_one(traj) for traj in aligned]
            self._enforce_capacity()
            # backpressure: never let more than max_pending_bytes wait for the disk
            while self._pending_bytes > self._max_pending and not self._failed and self._writer.pending:
                self._written.wait(timeout=0.5)
            return ids

    def _count_disk(self, trajectory_id: int, nbytes: int) -> None:
        self._disk_bytes += nbytes - self._disk_sizes.get(trajectory_id, 0)
        self._disk_sizes[trajectory_id] = nbytes

    def _over_capacity(self) -> bool:
        index = self._index
        return (
            (self.max_trajectories is not None and len(index) > self.max_trajectories)
            or (self.max_transitions is not None and index.total_transitions > self.max_transitions)
            or (self.max_disk_bytes is not None and self._disk_bytes > self.max_disk_bytes)
        )

    def _enforce_capacity(self) -> None:
        """Evict the oldest trajectories while a capacity limit is passed (the newest stays).

        Files this buffer wrote to its auto-save directory go with them (see
        :meth:`OwnDirectory.remove`); any other file is only forgotten."""
        if self.max_trajectories is None and self.max_transitions is None and self.max_disk_bytes is None:
            return
        own_removed: list[int] = []
        while len(self._index) > 1 and self._over_capacity():
            record = self._index.pop_oldest()
            tid = record.trajectory_id
            if self._cache is not None and tid in self._cache:
                evicted = self._cache.pop_oldest()  # the cache holds the newest trajectories
                assert evicted == tid, "cache and index out of step"
            if tid in self._unwritten:  # its write is queued or running: undo it when done
                self._drop_unwritten(tid)
                self._failed.pop(tid, None)
                self._gone.add(tid)
            self._disk_bytes -= self._disk_sizes.pop(tid, 0)
            if self._own is not None and record.directory == self._own.path:
                own_removed.append(tid)
            if record.path is not None:
                self._readers.pop(record.path, None)
            self._capacity_evicted += 1
            if self.rate_limiter is not None:
                self.rate_limiter.on_remove(record.num_transitions)
        own = self._own
        if own_removed and own is not None:  # journal lines and deletions: the writer's I/O
            self._writer.submit(
                f"evicting trajectories {own_removed[0]}..{own_removed[-1]}",
                lambda: self._remove_own(own, own_removed),
            )

    def _remove_own(self, own: checkpoint.OwnDirectory, trajectory_ids: list[int]) -> None:
        self._commit_segments()  # rows appended before this job: the queue may not run dry soon
        with self._lock:
            own.remove(trajectory_ids)

    def _check_schema(self, aligned: list[AlignedTrajectory]) -> Schema:
        schema = self._schema or Schema.of_columns(aligned[0].columns)
        for i, traj in enumerate(aligned):
            schema.check(Schema.of_columns(traj.columns), where=f"trajectory {i}: ")
        return schema

    def _add_one(self, traj: AlignedTrajectory) -> int:
        tid = self._counter
        self._counter += 1
        record = Record.of_trajectory(tid, traj)
        flat = traj.flat()
        evicted: list[int] = []
        if self._cache is not None:
            evicted = self._cache.put(tid, flat, self._schema or Schema())
        self._index.append(record)
        if self._own is not None:
            # the writer gets rows nobody else can change: the caller may reuse its tensors,
            # and the cache reuses its memory once the trajectory is evicted
            owned = {k: v if k in traj.owned else v.clone() for k, v in flat.items()}
            self._submit_write(record, owned)
        self._forget_evicted(evicted)
        return tid

    def _forget_evicted(self, evicted: list[int]) -> None:
        """Trajectories dropped from memory leave the buffer unless a file or write keeps them."""
        if self.auto_save:
            return
        for tid in evicted:
            oldest = self._index.pop_oldest()
            assert oldest.trajectory_id == tid, "cache and index out of step"
            self._evicted += 1
            if self.rate_limiter is not None:
                self.rate_limiter.on_remove(oldest.num_transitions)

    def _retry_failed_writes(self) -> None:
        with self._lock:
            retry, self._failed = self._failed, {}
            for tid, record in retry.items():
                data = self._unwritten.get(tid)
                if data is not None:
                    self._submit_write(record, data)

    def _submit_write(self, record: Record, data: dict[Key, torch.Tensor]) -> None:
        if record.trajectory_id not in self._unwritten:
            self._pending_bytes += sum(t.numel() * t.element_size() for t in data.values())
        self._unwritten[record.trajectory_id] = data
        self._writer.submit(f"trajectory {record.trajectory_id}", lambda: self._write_own(record, data))

    def _write_own(self, record: Record, data: dict[Key, torch.Tensor]) -> None:
        try:
            self._write_file(record, data)
        except BaseException:
            with self._lock:
                if record.trajectory_id in self._unwritten:
                    self._failed[record.trajectory_id] = record
                self._written.notify_all()
            raise
        with self._lock:
            self._written.notify_all()

    def _write_file(self, record: Record, data: dict[Key, torch.Tensor]) -> None:
        own = self._own
        assert own is not None
        with self._lock:
            if record.trajectory_id in self._gone:  # evicted by capacity before its turn
                self._gone.discard(record.trajectory_id)
                return
        if self.trajectory_format == formats.SEGMENT:
            self._append_segment(own, record, data)
            return
        name = record.canonical_name(self.trajectory_format)
        shape = (record.num_steps, record.num_envs)
        columns = {k: v.reshape(*shape, *v.shape[1:]) for k, v in data.items()}
        crc = formats.write(
            os.path.join(own.path, name),
            self.trajectory_format,
            file_dict_from_columns(
                columns,
                record.max_episode_length,
                record.model_weights_id,
                record.model_update_count,
            ),
        )
        with self._lock:
            path = os.path.join(own.path, name)
            if record.trajectory_id in self._gone:  # evicted by capacity while being written
                self._gone.discard(record.trajectory_id)
                # a durable removal line first: a crash before the unlink then leaves a file
                # that reopening deletes and verify calls a leftover, never an orphan to relist
                own.journal.append({"trajectory_id": record.trajectory_id, "removed": True})
                own.journal.sync()
                os.unlink(path)
                return
            if self._index_holds(record):
                record.directory, record.file, record.checksum = own.path, name, crc
                self._count_disk(record.trajectory_id, os.path.getsize(path))
            self._drop_unwritten(record.trajectory_id)
            self._files_written += 1
            written = replace(record, directory=own.path, file=name, row=None, checksum=crc)
            own.record_written(written, name, self._counter, self._schema)
            self._enforce_capacity()

    def _append_segment(
        self, own: checkpoint.OwnDirectory, record: Record, data: dict[Key, torch.Tensor]
    ) -> None:
        """Append a trajectory's rows to the auto-save segment; its index entry is written at
        the next group commit (when the writer's queue runs dry, every 64 MiB, or on flush)."""
        schema = self._schema
        assert schema is not None
        crc = rows_checksum(data, schema)
        try:
            name, row = own.segment_store(schema).append(data, sync=False)
        except BaseException:
            self._commit_segments()  # rows appended before this one are fine: commit them
            raise
        with self._lock:
            self._uncommitted.append((record, name, row, crc))
            self._uncommitted_bytes += sum(t.numel() * t.element_size() for t in data.values())
            commit = self._uncommitted_bytes >= _GROUP_COMMIT_BYTES or self._writer.pending <= 1
        if commit:
            self._commit_segments()

    def _commit_segments(self) -> None:
        """Make appended segment rows durable (one fsync per column file), then journal them."""
        own, schema = self._own, self._schema
        with self._lock:
            batch, self._uncommitted, self._uncommitted_bytes = self._uncommitted, [], 0
        if not batch or own is None or schema is None:
            return
        try:
            own.segment_store(schema).sync()  # rows are durable before any entry names them
        except BaseException:
            with self._lock:  # their data stays in memory; flush()/close() append them again
                for record, *_ in batch:
                    if record.trajectory_id in self._unwritten:
                        self._failed[record.trajectory_id] = record
            raise
        with self._lock:
            for record, name, row, crc in batch:
                if self._index_holds(record):
                    record.directory, record.file, record.row = own.path, name, row
                    record.checksum = crc
                    self._index.set_location(record.trajectory_id, self._segment_key(own.path, name), row)
                    self._count_disk(record.trajectory_id, record.num_transitions * schema.row_bytes)
                self._drop_unwritten(record.trajectory_id)
                self._files_written += 1
                written = replace(record, directory=own.path, file=name, row=row, checksum=crc)
                own.record_written(written, name, self._counter, schema)
                if record.trajectory_id in self._gone:  # evicted while its rows were appended
                    self._gone.discard(record.trajectory_id)
                    own.remove([record.trajectory_id])
            self._enforce_capacity()
            self._written.notify_all()

    def _drain_writer(self) -> None:
        """Wait for queued writes and commit what they appended."""
        self._writer.wait()
        self._commit_segments()

    def _segment_key(self, directory: str, name: str) -> int:
        """A small integer naming segment ``name`` of ``directory`` (for vectorized lookups)."""
        key = self._segment_keys.get((directory, name))
        if key is None:
            key = self._segment_keys[(directory, name)] = len(self._segments)
            self._segments.append((directory, name))
        return key

    def _record_segment(self, record: Record) -> int:
        if record.row is None or record.directory is None or record.file is None:
            return -1
        return self._segment_key(record.directory, record.file)

    def _store_for(self, directory: str, schema: Schema) -> SegmentStore:
        store = self._stores.get(directory)
        if store is None:
            if self._own is not None and directory == self._own.path:
                store = self._own.segment_store(schema)
            else:
                store = SegmentStore(directory, schema)
            self._stores[directory] = store
        return store

    def _drop_unwritten(self, trajectory_id: int) -> None:
        data = self._unwritten.pop(trajectory_id, None)
        if data is not None:
            self._pending_bytes -= sum(t.numel() * t.element_size() for t in data.values())

    def _index_holds(self, record: Record) -> bool:
        return record.trajectory_id in self._index and self._index[record.trajectory_id] is record

    # -- sampling -----------------------------------------------------------------------------
    def sample(self, num_chunks: int) -> Batch:
        """Draw ``num_chunks`` transitions uniformly, with replacement, from the window.

        Args:
            num_chunks: number of transitions (>= 1).

        Returns:
            The rollout-aligned batch: per-step fields (``actions``, ``rewards``, ``dones``, ...)
            as ``[num_chunks, ...]`` tensors in their stored dtype, and ``curr_obs``,
            ``next_obs``, ``forward_inputs`` as dicts of ``[num_chunks, ...]`` tensors.

            With ``prioritized=True`` also ``indices`` (int64 ``[num_chunks]``, for
            :meth:`update_priorities`) and ``weights`` (float32 ``[num_chunks]``).

        Raises:
            InvalidArgumentError: ``num_chunks`` < 1.
            EmptyBufferError: the window holds no transition.
        """
        num = check_int("num_chunks", num_chunks, 1)
        with self._limited_sample(num), self._lock:
            self._writer.check()
            if self._prio is not None:
                return self._sampling(lambda ids, ends: self._draw_prioritized(ids, ends, num))
            return self._sampling(lambda ids, ends: self._draw_uniform(ids, ends, num))

    def sample_chunks(self, num_chunks: int) -> Batch:
        """RLinf's other name for :meth:`sample` (same arguments, same batch)."""
        return self.sample(num_chunks)

    def _flatten_trajectory(self, trajectory: Any) -> dict[str, Any]:
        """RLinf's flat view of one trajectory, for code written against RLinf's buffer (its RLT
        worker): see :func:`.trajectory.flatten_like_rlinf`. The buffer is not changed."""
        return flatten_like_rlinf(trajectory)

    def sample_sequences(self, num_sequences: int, seq_len: int, pad: bool = False) -> Batch:
        """Draw runs of ``seq_len`` consecutive steps of one env column of one trajectory.

        Starts are uniform over the valid start positions of the window (respecting
        ``max_staleness``). Without ``pad`` a run never crosses an episode end (``dones``;
        it may end on one) and never leaves its trajectory; with ``pad`` any step may start
        a run and the steps after its episode end, or past its trajectory, are padding.
        For n-step returns, recurrent policies and action chunks.

        Args:
            num_sequences: ``N`` >= 1 (drawn with replacement).
            seq_len: ``L`` >= 1.
            pad: allow runs shorter than ``L``, padded with zeros.

        Returns:
            The batch of :meth:`sample` with every tensor ``[N, L, ...]`` (step ``j`` of run
            ``i`` at ``[i, j]``), plus ``mask``: bool ``[N, L]``, false for padding.

        Raises:
            InvalidArgumentError: bad arguments.
            EmptyBufferError: no valid start in the window (e.g. every trajectory or episode is
                shorter than ``seq_len`` and ``pad`` is false).
        """
        num = check_int("num_sequences", num_sequences, 1)
        length = check_int("seq_len", seq_len, 1)
        pad = check_bool("pad", pad)
        with self._limited_sample(num * length), self._lock:
            self._writer.check()
            return self._sampling(lambda ids, ends: self._draw_sequences(ids, ends, num, length, pad))

    def sampling_population(self, seq_len: int | None = None, pad: bool = False) -> int:
        """How many items a uniform draw picks from right now: the window's transitions for
        :meth:`sample` (only the fresh ones with ``max_staleness``), or the valid starts of
        :meth:`sample_sequences` with ``seq_len`` and ``pad``. ``0`` where sampling would raise
        :class:`EmptyBufferError`. A sharded buffer splits its draws in proportion to these.

        Raises:
            InvalidArgumentError: bad arguments, or ``prioritized=True`` without ``seq_len``
                (``sample`` then draws by priority).
        """
        if self._prio is not None and seq_len is None:
            raise InvalidArgumentError(
                "sampling_population counts uniform draws; a prioritized buffer's sample() draws by "
                "priority (see priority_mass())"
            )
        length = check_int("seq_len", seq_len, 1, allow_none=True)
        pad = check_bool("pad", pad)

        def count(ids: np.ndarray, ends: np.ndarray) -> int:
            if length is not None:
                return len(self._sequence_table(ids, length, pad).starts)
            fresh = self._fresh()
            return int(ends[-1]) if fresh is None else int((np.diff(ends, prepend=0) * fresh).sum())

        with self._lock:
            try:
                return self._sampling(count)
            except EmptyBufferError:
                return 0

    def priority_mass(self) -> float:
        """The sum of ``(priority + priority_eps) ** priority_alpha`` over the window's
        transitions, which prioritized draws are proportional to (``prioritized=True`` only);
        ``0.0`` for an empty window. A sharded buffer splits its draws in proportion to it."""
        prio = self._prio
        if prio is None:
            raise InvalidArgumentError("priority_mass needs a buffer built with prioritized=True")
        with self._lock:
            try:
                return float(self._sampling(lambda ids, ends: (self._sync_priorities(ids), prio.total)[1]))
            except EmptyBufferError:
                return 0.0

    def update_priorities(self, indices: Any, priorities: Any) -> int:
        """Set the priorities of sampled transitions (``prioritized=True`` only).

        Args:
            indices: int64 ``[K]``: the ``indices`` of a batch from :meth:`sample`.
            priorities: float ``[K]``, finite and >= 0 (typically ``|TD error|``); stored as
                ``(p + priority_eps) ** priority_alpha``. If an index repeats, its last
                priority wins. Tensors on any device are accepted.

        Returns:
            How many were applied: transitions that left the window since they were sampled
            are skipped.

        Raises:
            InvalidArgumentError: not prioritized, lengths differ, or a bad priority (nothing
                is changed then).
        """
        if self._prio is None:
            raise InvalidArgumentError(
                "update_priorities needs a buffer built with prioritized=True (this one samples uniformly)"
            )
        with self._lock:
            return self._prio.update_priorities(indices, priorities, skip_removed=True)

    def _acquire_sample(self, num: int) -> None:
        if self.rate_limiter is not None:  # never under the lock: adders must get through
            self._reopen_limiter()
            self.rate_limiter.acquire_sample(num, self.rate_limit_timeout)

    def _reopen_limiter(self) -> None:
        """A buffer stays usable after ``close()``: so does the rate limiter it closed."""
        if self._limiter_closed and self.rate_limiter is not None:
            self._limiter_closed = False
            self.rate_limiter.reopen()

    @contextlib.contextmanager
    def _limited_sample(self, num: int) -> Iterator[None]:
        """Wait for the rate limiter, and give the samples back if sampling then fails."""
        self._acquire_sample(num)
        try:
            yield
        except BaseException:
            if self.rate_limiter is not None:
                self.rate_limiter.cancel_sample(num)
            raise

    def _sampling(self, draw: Callable[[np.ndarray, np.ndarray], Any]) -> Any:
        """Run ``draw(window ids, cumulative counts)`` on a non-empty window; with
        ``on_corrupt="skip"``, drop damaged trajectories it meets and draw again."""
        while True:
            ids, ends, _ = self._index.window(self._window_size)
            total = int(ends[-1]) if len(ends) else 0
            if total <= 0:
                raise EmptyBufferError(
                    "cannot sample: the sampling window holds no transition; add trajectories "
                    "or load a checkpoint first (is_ready() tells when sampling is possible)"
                )
            try:
                return draw(ids, ends)
            except CorruptTrajectoryError as exc:
                if self.on_corrupt != "skip" or exc.trajectory_id not in self._index:
                    raise
                self._drop_corrupt(exc)  # and draw again from what is left

    # -- persistence --------------------------------------------------------------------------
    def flush(self) -> None:
        """Return once every trajectory added before the call is durable on disk.

        With ``auto_save``: every trajectory file and the index entry naming it are fsync'd
        under their final names. In the ``pt`` and ``pkl`` formats ``trajectory_index.json``
        and ``metadata.json`` then list every trajectory of the directory, so RLinf's own loader
        (which reads no journal) sees them too; see :meth:`_publish_index`. Without
        ``auto_save`` there is nothing to write. Writes that failed earlier are retried first.
        Raises :class:`WriterError` if a write failed (the trajectory stays in memory; fix the
        cause and call ``flush()`` again).
        """
        self._retry_failed_writes()
        self._drain_writer()
        self._writer.check()  # a failed trajectory write is the error to report first
        with self._lock, self._index_io():
            if self._own is not None:
                self._publish_index(self._own)
                self._own.sync(self._counter, self._schema)

    def _publish_index(self, own: checkpoint.OwnDirectory) -> None:
        """Rewrite ``trajectory_index.json`` whole (atomically) if the journal holds lines it
        lacks, keeping the journal: the journal stays what reopening reads after the index (its
        entries already listed are skipped), and the index stays RLinf-readable.

        Skipped when nothing was appended since the index was last written (by this or by a
        compaction, which empties the journal), and for the ``segment`` format, which RLinf
        cannot read: there the index is written at compaction only. Costs O(trajectories) per
        flush that has something new (call under the lock, after the writer is drained).
        """
        journal = own.journal
        if own.fmt == formats.SEGMENT or not journal.lines or journal.appended == self._published:
            return
        journal.sync()  # every entry (and so every file) it lists is durable before the index names it
        entries = sorted(own.entries.values(), key=lambda e: e["trajectory_id"])
        write_index(own.path, entries, keep_journal=True)
        self._published = journal.appended

    @contextlib.contextmanager
    def _index_io(self) -> Iterator[None]:
        """Report a failure to write the auto-save index or metadata as :class:`WriterError`."""
        try:
            yield
        except OSError as exc:
            path = self._own.path if self._own is not None else ""
            raise WriterError(
                f"{path}: cannot write the index or metadata ({type(exc).__name__}: {exc}). The "
                "trajectories stay in memory; fix the cause (disk space, permissions) and call "
                "flush() again"
            ) from exc

    def save_checkpoint(self, save_path: str) -> None:
        """Write a complete, self-contained checkpoint of everything the buffer holds.

        Pending background writes are finished first. The checkpoint is assembled in a
        temporary sibling directory and renamed into place when complete, so an interrupted
        save never leaves something that looks like a checkpoint. An existing checkpoint at
        ``save_path`` is replaced; any other non-empty directory is refused.

        Args:
            save_path: destination directory (created with its parents).
        """
        self.flush()
        with self._lock:
            records = list(self._index)
            unwritten = dict(self._unwritten)
            cache = self._cache
            schema = self._schema
            # rows only in memory are copied one trajectory at a time while writing; the pin
            # copies out any that are evicted before their turn
            pin = cache.pin([r.trajectory_id for r in records if r.path is None]) if cache else {}
            # files in RLinf's flattened checkpoint layout are written again from their aligned
            # rows (as [T, B, ...]), never linked or copied: RLinf cannot read them back itself
            flat_files = {r.trajectory_id: r for r in records if r.rlinf_flat and r.path is not None}

            def rows_of(tid: int) -> dict[Key, torch.Tensor] | None:
                original = flat_files.get(tid)
                if original is not None:
                    return self._read_aligned(original, schema)
                with self._lock:
                    if cache is not None and tid in pin:
                        return cache.take(pin, tid)
                    return unwritten.get(tid)

            saved = self._saved_priorities()
            snapshot = checkpoint.Snapshot(
                records=[
                    replace(r, directory=None, file=None, row=None, rlinf_flat=False)
                    if r.trajectory_id in flat_files
                    else r
                    for r in records
                ],
                rows_of=rows_of,
                schema=self._schema,
                counter=self._counter,
                seed=self.seed,
                fmt=self.trajectory_format,
                extra=None if saved is None else (lambda staging: priorities_file.write(staging, saved)),
            )
        try:
            if self._own is not None and checkpoint.same_path(save_path, self._own.path):
                with self._lock:
                    self._own.absorb(snapshot)
                    self._own.compact(self._counter, self._schema)
                    if saved is not None:
                        priorities_file.write(self._own.path, saved)
                return
            renamed = checkpoint.save(snapshot, save_path)
        finally:
            if cache is not None:
                with self._lock:
                    cache.unpin(pin)
        replaced = os.path.realpath(save_path)
        with self._lock:
            for record in snapshot.records:
                new = renamed.get(record.trajectory_id)
                record = flat_files.get(record.trajectory_id, record)  # the index's own record
                # the files of a checkpoint we just replaced are gone: point at the new ones;
                # records with a file elsewhere keep it (the export may be deleted or reused)
                stale = record.directory is not None and (os.path.realpath(record.directory) == replaced)
                if new is not None and stale and self._index_holds(record):
                    record.directory, record.file, record.row = new.directory, new.file, new.row
                    if record.rlinf_flat:  # written again, in layout: a new file, a new checksum
                        record.rlinf_flat, record.checksum = False, new.checksum
                    seg = self._record_segment(record)
                    self._index.set_location(record.trajectory_id, seg, record.row if seg >= 0 else -1)
            self._readers.clear()
            for directory in [d for d in self._stores if os.path.realpath(d) == replaced]:
                del self._stores[directory]  # its segments were replaced: map them afresh

    def load_checkpoint(
        self,
        load_path: str,
        is_distributed: bool = False,
        local_rank: int = 0,
        world_size: int = 1,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Replace the buffer's contents with a checkpoint or auto-save directory.

        ``progress(done, total)``, if given, is called as index entries are resolved and then
        as trajectories are read into memory (the command line draws it as a bar).

        Reads directories written by this library or by RLinf (either file-name shape,
        ``pt``/``pkl``, RLinf's row layout). With ``is_distributed``, rank ``local_rank`` of
        ``world_size`` gets every ``world_size``-th trajectory in index order starting at
        ``local_rank``: shares are disjoint, together they are everything, and each spans the
        whole collection period. New trajectories added afterwards get ids past every id in
        the directory.

        Raises:
            InvalidArgumentError: bad rank or world size.
            BufferNotFoundError, CorruptBufferError, UnsafeFileError: missing, inconsistent or
                unsafe files (the buffer is left as it was).
        """
        is_distributed = check_bool("is_distributed", is_distributed)
        world_size = check_int("world_size", world_size, 1)
        local_rank = check_int("local_rank", local_rank, 0)
        if local_rank >= world_size:
            raise InvalidArgumentError(
                f"local_rank {local_rank} is out of range for world_size {world_size} "
                f"(valid ranks: 0..{world_size - 1})"
            )
        share = (local_rank, world_size) if is_distributed else (0, 1)
        self.flush()  # pending writes may land in load_path (e.g. our own auto-save path)
        skip = self.on_corrupt == "skip"
        contents, schema = checkpoint.read(load_path, share, skip_corrupt=skip, progress=progress)
        keep, warm = self._prepare(contents.records, schema, progress)  # may raise: unchanged
        with self._lock:
            self._reset_contents()
            own_next = self._own.next_id if self._own is not None else 0
            self._install(contents.records, keep, warm, schema)
            self._restore_priorities(contents.path)
            self._counter = max(contents.counter, own_next)
            if self._own is not None and checkpoint.same_path(contents.path, self._own.path):
                self._counter = max(self._counter, self._own.next_id)

    def _prepare(
        self,
        records: list[Record],
        schema: Schema | None,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[list[Record], list[tuple[Record, dict[Key, torch.Tensor]]]]:
        """Decide what a load keeps and read what it caches, without changing the buffer.

        Returns the records to index (without ``auto_save``: the window) and, for the newest
        ones the cache can hold, their aligned rows ``[T * B, ...]`` (memory-mapped for pt).
        """
        keep = records
        if not self.auto_save and self._window_size:
            keep = records[-self._window_size :]
        if self._cache is None or not keep:
            return keep, []
        # the cache holds a suffix of the index: warm it with the newest records it can hold
        limit = self._cache.max_trajectories
        while True:
            warm = keep if limit is None else keep[max(0, len(keep) - limit) :]
            try:
                rows = []
                for done, record in enumerate(warm, 1):
                    rows.append((record, self._read_aligned(record, schema)))
                    if progress is not None:
                        progress(done, len(warm))
                return keep, rows
            except CorruptTrajectoryError as exc:
                if self.on_corrupt != "skip" or exc.trajectory_id is None:
                    raise
                logger.warning("skipped damaged trajectory %d: %s", exc.trajectory_id, exc)
                warnings.warn(
                    f"skipped damaged trajectory {exc.trajectory_id}: {exc}", CorruptDataWarning, stacklevel=3
                )
                self._corrupt_skipped += 1
                keep = [r for r in keep if r.trajectory_id != exc.trajectory_id]

    def _saved_priorities(self) -> priorities_file.SavedPriorities | None:
        """The raw priorities of the window's transitions (``None`` unless prioritized)."""
        prio = self._prio
        if prio is None:
            return None
        saved = priorities_file.SavedPriorities(prio.alpha, prio.eps, prio.max_priority)
        ids, ends, _ = self._index.window(self._window_size)
        if not len(ids) or not int(ends[-1]):
            return saved
        starts = self._sync_priorities(ids)
        counts = np.diff(ends, prepend=0)
        slots = np.repeat(starts, counts) + (np.arange(int(ends[-1])) - np.repeat(ends - counts, counts))
        raw = prio.raw_priorities(slots)
        for p, tid in enumerate(ids.tolist()):
            saved.trajectories[tid] = (self._index[tid].uuid, raw[int(ends[p] - counts[p]) : int(ends[p])])
        return saved

    def _restore_priorities(self, directory: str) -> None:
        """Give the window's transitions the priorities saved in ``directory`` (prioritized
        buffers only; trajectories are matched by id and uuid). A damaged file is skipped with a
        :class:`CorruptDataWarning`: the transitions keep the maximum priority."""
        prio = self._prio
        path = os.path.join(directory, priorities_file.NAME)
        if prio is None or not os.path.lexists(path):
            return
        try:
            refuse_link_out(path)
            saved = priorities_file.read(path)
        except (CorruptBufferError, OSError) as exc:
            message = f"{exc}; every transition starts at the maximum priority"
            logger.warning("%s", message)
            warnings.warn(message, CorruptDataWarning, stacklevel=4)
            return
        before = prio.max_priority
        ids, ends, _ = self._index.window(self._window_size)
        if len(ids) and int(ends[-1]):
            starts = self._sync_priorities(ids)
            counts = np.diff(ends, prepend=0)
            slots, values = [], []
            for p, tid in enumerate(ids.tolist()):
                entry = saved.trajectories.get(tid)
                if entry is None or entry[0] != self._index[tid].uuid or entry[1].size != counts[p]:
                    continue
                slots.append(np.arange(starts[p], starts[p] + counts[p], dtype=np.int64))
                values.append(entry[1])
            if slots:
                prio.update_priorities(np.concatenate(slots), np.concatenate(values))
        prio.restore_max_priority(max(before, saved.max_priority))

    def _read_aligned(self, record: Record, schema: Schema | None) -> dict[Key, torch.Tensor]:
        store = None
        if record.fmt == formats.SEGMENT and schema is not None:
            store = self._store_for(record.directory or "", schema)
        return checkpoint.read_rows(record, schema, store)

    def _install(
        self,
        records: list[Record],
        keep: list[Record],
        warm: list[tuple[Record, dict[Key, torch.Tensor]]],
        schema: Schema | None,
    ) -> None:
        """Index ``keep`` (file-backed) and copy the prepared rows into the cache."""
        self._evicted += len(records) - len(keep)
        self._schema = schema if keep else None
        warmed = {record.trajectory_id for record, _ in warm}  # read, so checked, while warming
        for record in keep:
            checked = record.checksum is None or record.trajectory_id in warmed
            self._index.append(record, self._record_segment(record), checked)
        if self.rate_limiter is not None:  # loaded transitions count as inserted, in balance
            self.rate_limiter.rebase(self._index.total_transitions)
        for record, flat in warm:
            assert self._cache is not None and schema is not None
            self._forget_evicted(self._cache.put(record.trajectory_id, flat, schema))
        if self.max_disk_bytes is not None and self._own is not None and schema is not None:
            for record in keep:  # files of our own directory count against max_disk_bytes
                if record.directory == self._own.path and record.path is not None:
                    own_bytes = (
                        record.num_transitions * schema.row_bytes
                        if record.row is not None
                        else os.path.getsize(record.path)
                    )
                    self._count_disk(record.trajectory_id, own_bytes)
        self._enforce_capacity()

    def _reset_contents(self) -> None:
        self._index.clear()
        if self._cache is not None:
            self._cache.clear()
        self._unwritten.clear()
        self._pending_bytes = 0
        self._failed.clear()
        self._readers.clear()
        self._schema = None
        self._segments.clear()
        self._segment_keys.clear()
        self._stores.clear()
        self._forget_sampling_state()
        self._disk_sizes.clear()
        self._disk_bytes = 0
        if self.rate_limiter is not None:
            self.rate_limiter.reset()

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self, wait: bool = True) -> None:
        """Finish pending writes, write the full index and metadata, stop the writer thread.

        The buffer stays usable: a later add restarts the writer. Raises :class:`WriterError`
        if a background write failed.

        Args:
            wait: ``False`` returns at once and closes in a background thread (RLinf's
                ``close(wait=False)``). The thread is not a daemon, so the interpreter still
                finishes the writes before it exits; a failure is logged, and the next call
                of ``close()`` waits for the thread first.
        """
        previous, self._closing = self._closing, None
        if previous is not None:
            previous.join()
        if not wait:
            self._closing = threading.Thread(target=self._close_logged, name="replay-buffer-close")
            self._closing.start()
            return
        self._close_now()

    def _close_logged(self) -> None:
        try:
            self._close_now()
        except Exception:  # noqa: BLE001 - reported, nobody waits for this thread
            logger.exception("closing the replay buffer in the background failed")

    def _close_now(self) -> None:
        self._retry_failed_writes()
        self._drain_writer()
        with self._lock, self._index_io():
            if self._own is not None:
                self._own.compact(self._counter, self._schema)
                saved = self._saved_priorities()
                if saved is not None:
                    priorities_file.write(self._own.path, saved)
                self._own.close()
            self._readers.clear()
        self._writer.close()
        if self.rate_limiter is not None:
            self.rate_limiter.close()  # wakes adders and samplers waiting on it
            self._limiter_closed = True  # the next add or sample reopens it

    def clear(self) -> None:
        """Empty the buffer: index, cache and counters.

        Files are never deleted: an auto-save directory keeps its files and its index, and new
        trajectories continue its numbering so nothing on disk is overwritten.
        """
        self._drain_writer()
        with self._lock:
            self._reset_contents()
            self._evicted = 0
            self._files_written = 0
            self._counter = self._own.next_id if self._own is not None else 0
        self._writer.check()

    def clear_cache(self) -> None:
        """Finish pending writes, stop the writer thread and empty the in-memory cache.

        With ``auto_save`` the trajectories stay in the buffer and are read from disk. Without
        it the memory *is* the storage: the buffer becomes empty (counters are kept).
        """
        self._drain_writer()
        with self._lock:
            if self._cache is not None:
                self._cache.clear()
            if not self.auto_save:
                self._evicted += len(self._index)
                self._index.clear()
                self._schema = None
                self._forget_sampling_state()
            self._readers.clear()
        self._writer.close()

    # -- RLinf's private names ----------------------------------------------------------------
    # RLinf's own tools read these on its buffer (toolkits/replay_buffer/visualize.py reads all
    # three). Read-only views of this buffer's state: changing what they return changes nothing.
    @property
    def _trajectory_id_list(self) -> list[int]:
        """The ids of the trajectories the buffer holds, oldest first (a new list each time)."""
        with self._lock:
            return self._index.ids().tolist()

    @property
    def _trajectory_index(self) -> Mapping[int, dict[str, Any]]:
        """``{trajectory_id: entry}`` in RLinf's index form, oldest first: each entry a new dict
        with ``num_samples`` (``T * B``), ``trajectory_id``, ``max_episode_length``, ``shape``
        (of ``rewards``, ``(T, B, ...)``) and ``model_weights_id``. A read-only mapping that
        looks entries up when asked (no copy of the whole index)."""
        return _RLinfIndexView(self)

    def _load_trajectory(self, trajectory_id: int, model_weights_id: str | None = None) -> Trajectory:
        """One stored trajectory, wherever its rows are (memory, pending write, file or segment),
        as a :class:`Trajectory` of ``[T, B, ...]`` tensors (new memory; aligned rows: every
        field has ``T`` rows) with ``curr_obs``, ``next_obs`` and ``forward_inputs`` dicts
        (empty when absent). Data read from disk is checked against its checksum first.

        ``model_weights_id`` is what RLinf passes (the entry's ``model_weights_id``); ``None``
        skips the check. A file-name form (``{uuid}_{count}``, as written in
        ``trajectory_index.json``) is accepted too.

        Raises:
            InvalidArgumentError (a ``ValueError``, as RLinf): the id is not in the buffer, or
                ``model_weights_id`` is not the trajectory's.
            CorruptTrajectoryError: its file or rows fail their checksum or cannot be read.
        """
        from .directory import rlinf_weights_id
        from .trajectory import DICT_FIELDS

        tid = check_int("trajectory_id", trajectory_id)
        with self._lock:
            if tid not in self._index:
                raise InvalidArgumentError(
                    f"trajectory {tid} is not in the buffer (it holds {len(self._index)} "
                    "trajectories; _trajectory_id_list lists their ids)"
                )
            record = self._index[tid]
            if model_weights_id is not None:
                known = {record.model_weights_id}
                if record.file is not None and record.row is None:
                    known.add(rlinf_weights_id(record.file))
                if model_weights_id not in known:
                    raise InvalidArgumentError(
                        f"trajectory {tid} has model_weights_id {record.model_weights_id!r}, "
                        f"not {model_weights_id!r}"
                    )
            assert self._schema is not None
            t, b = record.num_steps, record.num_envs
            columns = {
                key: self._trajectory_column(record, key).reshape(t, b, *spec.row_shape).clone()
                for key, spec in self._schema.items()
            }
        data = file_dict_from_columns(
            columns, record.max_episode_length, record.model_weights_id, record.model_update_count
        )
        for name in DICT_FIELDS:
            data.setdefault(name, {})
        return Trajectory.from_dict(data)

    def __enter__(self) -> TrajectoryReplayBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"TrajectoryReplayBuffer(size={self.size}, total_samples={self.total_samples}, "
            f"window={self._window_size}, auto_save={self.auto_save}, "
            f"format={self.trajectory_format!r})"
        )


class _RLinfIndexView(Mapping):
    """``TrajectoryReplayBuffer._trajectory_index``: the buffer's index in RLinf's entry form,
    read-only, each entry built when it is looked up."""

    def __init__(self, buffer: TrajectoryReplayBuffer) -> None:
        self._buffer = buffer

    def __getitem__(self, trajectory_id: object) -> dict[str, Any]:
        if isinstance(trajectory_id, bool) or not isinstance(trajectory_id, int | np.integer):
            raise KeyError(trajectory_id)
        with self._buffer._lock:
            index = self._buffer._index
            if int(trajectory_id) not in index:
                raise KeyError(trajectory_id)
            record = index[int(trajectory_id)]
            return {
                "num_samples": record.num_transitions,
                "trajectory_id": record.trajectory_id,
                "max_episode_length": record.max_episode_length,
                "shape": tuple(record.shape),
                "model_weights_id": record.model_weights_id,
            }

    def __iter__(self) -> Iterator[int]:
        return iter(self._buffer._trajectory_id_list)

    def __len__(self) -> int:
        return len(self._buffer._index)

    def __contains__(self, trajectory_id: object) -> bool:
        if isinstance(trajectory_id, bool) or not isinstance(trajectory_id, int | np.integer):
            return False
        with self._buffer._lock:
            return int(trajectory_id) in self._buffer._index

    def __repr__(self) -> str:
        return f"<RLinf index view of {len(self)} trajectories>"


def buffer_from_config(
    cfg: Any,
    *,
    section: str = "replay_buffer",
    rank: int | None = None,
    unknown_keys: str = "warn",
    **overrides: Any,
) -> TrajectoryReplayBuffer:
    """:meth:`TrajectoryReplayBuffer.from_config` as a function (also importable from
    :mod:`.config`, its earlier home)."""
    return TrajectoryReplayBuffer.from_config(
        cfg, section=section, rank=rank, unknown_keys=unknown_keys, **overrides
    )


__all__ = ["Batch", "Trajectory", "TrajectoryReplayBuffer", "buffer_from_config"]
