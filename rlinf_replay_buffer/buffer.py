"""``TrajectoryReplayBuffer``: the thin facade over the buffer's parts (``docs/architecture.md``).

Settings are frozen at construction (:mod:`.settings`); :mod:`.contents` composes the index, the
row store and the auto-saver; :mod:`.samplers` draw row numbers; :mod:`.rate_limiter` paces adds
against samples. Every public method below validates its arguments and delegates.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from . import access, config, formats
from .batch import Batch
from .contents import Contents
from .errors import InvalidArgumentError
from .rate_limiter import LimiterGate, RateLimiter
from .rlinf_compat.views import RLinfIndexView, load_trajectory
from .samplers import Prioritized, Request, Sampler, Samplers
from .schema import Schema
from .settings import NAMES, BufferSettings, read_only
from .trajectory import Trajectory, align_all, flatten_like_rlinf
from .validate import check_bool, check_int, check_share


class TrajectoryReplayBuffer:
    """A replay buffer of batched trajectories ``[T, B, ...]`` that samples single transitions.

    The seven positional arguments are RLinf's: ``seed`` (of the buffer's own
    ``torch.Generator``; ``None``: random), ``enable_cache`` and ``cache_size`` (with
    ``auto_save``, the newest trajectories kept in memory), ``sample_window_size`` (sample from
    the newest N trajectories; 0: all), ``auto_save`` and ``auto_save_path`` (write every
    trajectory there on a background thread; an existing buffer directory is continued;
    without it the buffer holds the window in memory), ``trajectory_format`` (``"pt"``,
    ``"pkl"`` or ``"segment"``). The keyword-only ones (memory bounds, ``check_finite``,
    ``on_corrupt``, capacity, prioritized sampling, ``max_staleness``, ``rate_limiter``) are
    described in ``docs/guide.md`` and :class:`~.settings.BufferSettings`. Every setting is
    read-only afterwards, except ``sample_window_size`` and ``priority_beta``.

    Raises:
        InvalidArgumentError: a bad argument, named with what it accepts.
        BufferDirectoryError: ``auto_save_path`` cannot be used.
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
        max_pending_bytes: int = BufferSettings.max_pending_bytes,
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
        sampling_copies: bool = True,
        sampling_copy_dir: str | None = None,
        dedup_next_obs: bool = True,
    ) -> None:
        s = BufferSettings.of(**{k: v for k, v in locals().items() if k in NAMES})
        self._limiter = LimiterGate(rate_limiter, s.rate_limit_timeout)
        self._lock = threading.RLock()
        self._closing: threading.Thread | None = None  # a close(wait=False) in progress
        self._samplers = Samplers.of(s, lambda t: self._contents.store.episode_ends(self._contents.index[t]))
        self._prio = self._samplers.prioritized
        self._contents = Contents(s, self._lock, self._limiter, self._samplers.all, self._prio)

    @classmethod
    def from_config(cls, cfg: Any, **options: Any) -> TrajectoryReplayBuffer:
        """A buffer from RLinf's YAML keys (a dict or OmegaConf node: the whole config,
        ``algorithm`` or ``algorithm.replay_buffer``); ``options`` (``section``, ``rank``,
        ``unknown_keys``, overrides) as for :func:`.config.buffer_kwargs_from_config`. The keys
        RLinf's worker reads become ``buffer.config_extras`` and ``buffer.min_buffer_size``."""
        kwargs, extras = config.buffer_kwargs_from_config(cfg, **{"unknown_keys": "warn", **options})
        buffer = cls(**kwargs)
        config.attach_extras(buffer, extras)
        return buffer

    # -- settings -----------------------------------------------------------------------------
    @property
    def settings(self) -> BufferSettings:
        """Everything the buffer was built with (frozen)."""
        return self._contents.settings

    seed, enable_cache, cache_size = read_only("seed"), read_only("enable_cache"), read_only("cache_size")
    auto_save, auto_save_path = read_only("auto_save"), read_only("auto_save_path")
    trajectory_format, check_finite = read_only("trajectory_format"), read_only("check_finite")
    cache_max_bytes, on_corrupt = read_only("cache_max_bytes"), read_only("on_corrupt")
    max_trajectories, max_transitions = read_only("max_trajectories"), read_only("max_transitions")
    max_disk_bytes, max_staleness = read_only("max_disk_bytes"), read_only("max_staleness")
    prioritized, rate_limit_timeout = read_only("prioritized"), read_only("rate_limit_timeout")
    reserve_bytes, max_pending_bytes = read_only("reserve_bytes"), read_only("max_pending_bytes")
    priority_alpha, priority_eps = read_only("priority_alpha"), read_only("priority_eps")
    sampling_copies, sampling_copy_dir = read_only("sampling_copies"), read_only("sampling_copy_dir")
    dedup_next_obs = read_only("dedup_next_obs")

    @property
    def rate_limiter(self) -> RateLimiter | None:
        """The rate limiter the buffer was built with (read-only)."""
        return self._limiter.limiter

    @property
    def sample_window_size(self) -> int:
        """Trajectories the sampler draws from (the most recent ones); 0 means all. Settable:
        without ``auto_save`` a smaller window drops what falls out of it."""
        return self._contents.settings.sample_window_size

    @sample_window_size.setter
    def sample_window_size(self, value: int) -> None:
        value = check_int("sample_window_size", value, 0)
        with self._lock:
            self._contents.set_window_size(value)

    @property
    def priority_beta(self) -> float | None:
        """Importance-sampling exponent in [0, 1] (``None`` if not prioritized); settable, e.g.
        annealed towards 1 during training."""
        return self._prio.beta if self._prio is not None else None

    @priority_beta.setter
    def priority_beta(self, value: float) -> None:
        self._prioritized("priority_beta").beta = value

    # -- counters -----------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Trajectories the buffer holds."""
        return len(self._contents.index)

    def __len__(self) -> int:
        return len(self._contents.index)

    @property
    def total_samples(self) -> int:
        """Transitions the buffer holds (sum of ``T * B``)."""
        return self._contents.index.total_transitions

    @property
    def trajectory_counter(self) -> int:
        """The id the next added trajectory gets."""
        return self._contents.counter

    @property
    def schema(self) -> Schema | None:
        """The buffer's columns with dtype and per-transition shape (``None`` while empty)."""
        return self._contents.store.schema

    def is_ready(self, min_size: int = 1) -> bool:
        """Whether at least ``min_size`` trajectories are held and the window can be sampled."""
        min_size = check_int("min_size", min_size, 0)
        with self._lock:
            return len(self._contents.index) >= min_size and self._contents.window().total > 0

    async def is_ready_async(self, min_size: int = 1) -> bool:
        """:meth:`is_ready` for asyncio code (RLinf's workers ``await`` it), in a worker thread."""
        return await asyncio.to_thread(self.is_ready, min_size)

    def get_stats(self) -> dict[str, int]:
        """Counters for logging, every value an ``int``: RLinf's ``num_trajectories``,
        ``total_samples``, ``cache_size`` and this library's (:meth:`.contents.Contents.stats`)."""
        with self._lock:
            return self._contents.stats()

    # -- adding -------------------------------------------------------------------------------
    def add_trajectories(self, trajectories: Sequence[Trajectory]) -> list[int]:
        """Add trajectories (``Trajectory`` objects of ``[T, B, ...]`` tensors or NumPy arrays,
        aligned or in RLinf's rollout layout); each gets a ``uuid`` and the next
        ``trajectory_id``. Returns the ids, in order.

        The whole call is validated first: if any trajectory is malformed, nothing is added and
        :class:`InvalidTrajectoryError` names the trajectory, the field and the fix. With
        ``auto_save`` files are written in the background (``flush()`` makes them durable).
        """
        return self._contents.add_limited(align_all(trajectories, self._contents.settings.check_finite))

    # -- reading back -------------------------------------------------------------------------
    def get_trajectory(self, trajectory_id: int) -> Trajectory:
        """The held trajectory ``trajectory_id`` as added: new CPU ``[T, B, ...]`` tensors of its
        aligned rows in their stored dtypes, from memory or disk (:func:`.access.get_trajectory`).
        Raises :class:`InvalidArgumentError` (id not held), :class:`CorruptTrajectoryError`."""
        return access.get_trajectory(self._contents, trajectory_id)

    def iter_trajectories(self) -> Iterator[Trajectory]:
        """Every trajectory held now, oldest first, read one at a time without holding the lock
        between them; those that leave the buffer meanwhile are skipped
        (:func:`.access.iter_trajectories`)."""
        return access.iter_trajectories(self._contents)

    # -- sampling -----------------------------------------------------------------------------
    def sample(self, num_chunks: int) -> Batch:
        """Draw ``num_chunks`` (>= 1) transitions uniformly, with replacement, from the window.

        Returns the rollout-aligned batch: per-step fields (``actions``, ``rewards``, ``dones``,
        ...) as ``[num_chunks, ...]`` tensors in their stored dtype, ``curr_obs``, ``next_obs``
        and ``forward_inputs`` as dicts of them; with ``prioritized=True`` drawn by priority,
        plus ``indices`` (int64 ``[num_chunks]``) and ``weights`` (float32 ``[num_chunks]``).

        Raises:
            EmptyBufferError: the window holds no transition.
        """
        return self._draw(
            self._prio or self._samplers.uniform, Request(check_int("num_chunks", num_chunks, 1))
        )

    def sample_chunks(self, num_chunks: int) -> Batch:
        """RLinf's other name for :meth:`sample` (same arguments, same batch)."""
        return self.sample(num_chunks)

    def sample_sequences(self, num_sequences: int, seq_len: int, pad: bool = False) -> Batch:
        """Draw ``N = num_sequences`` runs of ``L = seq_len`` consecutive steps of one env column
        of one trajectory, uniform over the valid starts of the window (respecting
        ``max_staleness``). Without ``pad`` a run never crosses an episode end (it may end on
        one) nor leaves its trajectory; with ``pad`` any step may start one, and the steps past
        its episode end or trajectory are zero padding.

        Returns the batch of :meth:`sample` with every tensor ``[N, L, ...]`` plus ``mask``
        (bool ``[N, L]``, false for padding).

        Raises:
            EmptyBufferError: no valid start (every run is shorter than ``seq_len``, no ``pad``).
        """
        num, length = check_int("num_sequences", num_sequences, 1), check_int("seq_len", seq_len, 1)
        return self._draw(self._samplers.sequences, Request(num, length, check_bool("pad", pad)))

    def sampling_population(self, seq_len: int | None = None, pad: bool = False) -> int:
        """How many items a uniform draw picks from now: the window's (fresh) transitions, or
        the valid starts of :meth:`sample_sequences` with ``seq_len`` and ``pad``; 0 where
        sampling would raise :class:`EmptyBufferError`. A sharded buffer splits by it."""
        if self._prio is not None and seq_len is None:
            raise InvalidArgumentError(
                "sampling_population counts uniform draws; a prioritized buffer's sample() draws by "
                "priority (see priority_mass())"
            )
        request = Request(1, check_int("seq_len", seq_len, 1, allow_none=True), check_bool("pad", pad))
        with self._lock:
            sampler = self._samplers.uniform if request.seq_len is None else self._samplers.sequences
            return int(self._contents.population(sampler, request))

    def priority_mass(self) -> float:
        """Sum of ``(priority + priority_eps) ** priority_alpha`` over the window (what
        prioritized draws are proportional to); 0.0 for an empty window."""
        prio = self._prioritized("priority_mass")
        with self._lock:
            return float(self._contents.population(prio, Request(1)))

    def update_priorities(self, indices: Any, priorities: Any) -> int:
        """Set the priorities of sampled transitions: ``indices`` int64 ``[K]`` (a batch's),
        ``priorities`` float ``[K]``, finite and >= 0 (typically ``|TD error|``; the last of a
        repeated index wins; any device). Returns how many applied: transitions that left the
        window since are skipped. Raises :class:`InvalidArgumentError` (changing nothing) for
        a bad value or a buffer not built with ``prioritized=True``."""
        prio = self._prioritized("update_priorities")
        with self._lock:
            return prio.update(indices, priorities)

    def stored_priorities(self, indices: Any) -> Any:
        """Stored values ``(priority + eps) ** alpha`` (float64 numpy ``[K]``) of the transitions
        a batch's ``indices`` name, while they are in the window; for weighing draws across
        shards. Raises :class:`InvalidArgumentError` for an index that left the window."""
        prio = self._prioritized("stored_priorities")
        with self._lock:
            return prio.stored(indices)

    def _prioritized(self, what: str) -> Prioritized:
        if self._prio is None:
            raise InvalidArgumentError(f"{what} needs a buffer built with prioritized=True")
        return self._prio

    def _draw(self, sampler: Sampler, request: Request) -> Batch:
        with self._limiter.sample(request.transitions), self._lock:
            return self._contents.sample(sampler, request)

    # -- persistence --------------------------------------------------------------------------
    def flush(self) -> None:
        """Return once every trajectory added before the call is durable on disk (with
        ``auto_save``; see :meth:`.autosave.AutoSaver.flush`: in ``pt``/``pkl`` RLinf's own
        loader then sees them). Raises :class:`WriterError` if a write failed (the trajectory
        stays in memory; fix the cause and call again)."""
        if self._contents.saver is not None:
            self._contents.saver.flush()

    def save_checkpoint(self, save_path: str, *, trajectory_format: str | None = None) -> None:
        """Write a complete, self-contained checkpoint of everything the buffer holds to
        ``save_path`` (created with its parents), in ``trajectory_format`` (default: the
        buffer's). Assembled in a temporary sibling and swapped in when complete: an
        interrupted save never looks like a checkpoint. An existing checkpoint there is
        replaced; any other non-empty directory is refused."""
        fmt = formats.check_format(trajectory_format or self._contents.settings.trajectory_format)
        self.flush()
        self._contents.save(save_path, fmt)

    def load_checkpoint(
        self,
        load_path: str,
        is_distributed: bool = False,
        local_rank: int = 0,
        world_size: int = 1,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Replace the buffer's contents with a checkpoint or auto-save directory (this
        library's or RLinf's). With ``is_distributed``, rank ``local_rank`` of ``world_size``
        gets every ``world_size``-th trajectory in index order from ``local_rank`` on (disjoint
        shares, together everything). New ids continue past every id in the directory.
        ``progress(done, total)`` is called as entries are resolved and rows read.

        Raises:
            InvalidArgumentError: bad rank or world size.
            BufferNotFoundError, CorruptBufferError, UnsafeFileError: missing, inconsistent or
                unsafe files (the buffer is left as it was).
        """
        share = check_share(is_distributed, local_rank, world_size)
        self.flush()  # pending writes may land in load_path (e.g. our own auto-save path)
        self._contents.load(load_path, share, progress)

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self, wait: bool = True) -> None:
        """Finish pending writes, write the full index and metadata, stop the writer thread;
        the buffer stays usable. Raises :class:`WriterError` if a write failed. ``wait=False``
        returns at once and closes in a (non-daemon) background thread, as RLinf's; a failure
        is logged, and the next ``close()`` waits for that thread first."""
        previous, self._closing = self._closing, None
        if previous is not None:
            previous.join()
        if wait:
            self._contents.close()
        else:
            self._closing = threading.Thread(target=self._contents.close_logged, name="replay-buffer-close")
            self._closing.start()

    def clear(self) -> None:
        """Empty the buffer: index, memory, counters. Files are never deleted: an auto-save
        directory keeps its files and index, and new ids continue its numbering."""
        self._contents.clear()

    def clear_cache(self) -> None:
        """Finish pending writes, stop the writer thread and empty the memory. Trajectories with
        a file (auto-saved or loaded) stay and are read from disk; those held only in memory
        (added without ``auto_save``) leave the buffer (counters are kept)."""
        self._contents.clear_memory()

    # -- RLinf's private names (read-only views, for RLinf's own tools) -----------------------
    @property
    def _trajectory_id_list(self) -> list[int]:
        """The ids of the trajectories held, oldest first (a new list each time)."""
        with self._lock:
            return self._contents.index.ids().tolist()

    @property
    def _trajectory_index(self) -> Mapping[int, dict[str, Any]]:
        """``{trajectory_id: entry}`` in RLinf's index form: :class:`.rlinf_compat.views.RLinfIndexView`."""
        return RLinfIndexView(self._contents.index, self._lock)

    def _load_trajectory(self, trajectory_id: int, model_weights_id: str | None = None) -> Trajectory:
        """One trajectory as ``[T, B, ...]`` tensors: :func:`.rlinf_compat.views.load_trajectory`."""
        return load_trajectory(self._contents, trajectory_id, model_weights_id)

    def _flatten_trajectory(self, trajectory: Any) -> dict[str, Any]:
        """RLinf's flat view of one trajectory (:func:`.trajectory.flatten_like_rlinf`)."""
        return flatten_like_rlinf(trajectory)

    def __enter__(self) -> TrajectoryReplayBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"TrajectoryReplayBuffer(size={self.size}, total_samples={self.total_samples}, "
            f"window={self.sample_window_size}, auto_save={self.auto_save}, "
            f"format={self.trajectory_format!r})"
        )


def buffer_from_config(cfg: Any, **kwargs: Any) -> TrajectoryReplayBuffer:
    """:meth:`TrajectoryReplayBuffer.from_config` as a function (also importable from
    :mod:`.config`, its earlier home)."""
    return TrajectoryReplayBuffer.from_config(cfg, **kwargs)


__all__ = ["Batch", "Trajectory", "TrajectoryReplayBuffer", "buffer_from_config"]
