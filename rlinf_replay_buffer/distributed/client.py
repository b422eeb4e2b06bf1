"""``RayTrajectoryReplayBuffer``: one buffer spread over N Ray actors (shards).

Each shard is a :class:`~.shard.ShardServer`: a ``TrajectoryReplayBuffer`` auto-saving to its
own directory ``path/rank_k``. The client routes added trajectories to shards (round-robin, or
by a key), and draws a batch from all shards at once: the draws are split over the shards in
proportion to their populations (window transitions, or valid sequence starts), so the batch is
uniform over the union of the shards' windows, and the shards' rows are laid into one batch in
random order. Tensors travel as NumPy arrays, which Ray's object store moves without pickling.

Ray restarts a shard whose process dies (``max_restarts``); the restarted shard reopens
``rank_k`` with every durable trajectory. A call that reaches a shard while it is down raises
:class:`ShardUnavailableError`; a batch is never returned with a shard's part missing.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..batch import Batch
from ..directory import is_buffer_directory
from ..errors import (
    BufferDirectoryError,
    EmptyBufferError,
    InvalidArgumentError,
    MissingDependencyError,
    ReplayBufferError,
    ShardRestartedWarning,
    ShardUnavailableError,
)
from ..formats import check_format
from ..fsio import make_dirs, publish_directory, staged_directory
from ..priority import PrioritizedSampler
from ..schema import Schema, schema_from_json
from ..trajectory import Trajectory, align
from ..validate import check_bool, check_int
from . import shares
from .batches import assemble, globalize_indices, importance_weights, split_draws
from .routing import shard_of_key
from .shard import RESERVED_OPTIONS, ShardServer
from .wire import encode_trajectory

try:  # the "ray" extra
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
except ImportError:  # pragma: no cover - exercised only without the extra
    ray = None

#: the client's own arguments that it passes on to every shard (never through ``shard_options``)
CLIENT_OPTIONS = (
    "sample_window_size",
    "enable_cache",
    "cache_size",
    "trajectory_format",
    "prioritized",
    "priority_alpha",
    "priority_beta",
    "priority_eps",
)

_EMPTY_RETRIES = 3  # draws again after a shard found its window emptied since the split


def _require_ray() -> None:
    if ray is None:
        raise MissingDependencyError(
            "RayTrajectoryReplayBuffer needs Ray: install the extra, pip install 'rlinf-replay-buffer[ray]'"
        )


class RayTrajectoryReplayBuffer:
    """A trajectory replay buffer spread over ``num_shards`` Ray actors.

    Each shard is a ``TrajectoryReplayBuffer(auto_save=True, auto_save_path=path/rank_k)``.
    A directory that already holds ``rank_*`` shards is continued. Call ``ray.init(...)``
    first to join a cluster (otherwise Ray starts a local one).

    Args:
        path: the buffer's directory; shard ``k`` works in ``path/rank_k``. On several nodes
            it must be a file system every shard's node sees (and the client, for
            ``save_checkpoint``/``load_checkpoint``).
        num_shards: ``N`` >= 1.
        seed: shard ``k`` samples with seed ``seed + k``; the client splits draws with ``seed``.
        sample_window_size: each shard samples from its newest ``sample_window_size``
            trajectories (0: all); the batch is uniform over the union of these windows.
        enable_cache, cache_size, trajectory_format: as for ``TrajectoryReplayBuffer``, per shard.
        route_by: ``route_by(trajectory) -> key`` (int, str or bytes) picks the shard of each
            added trajectory (``key % N`` for ints, CRC-32 for strings); default round-robin.
        prioritized, priority_alpha, priority_beta, priority_eps: prioritized sampling over the
            union: draws are split in proportion to each shard's priority mass, every row is
            drawn with probability ``q_i / sum_j q_j`` over all shards (``q = (p + eps) **
            alpha``), ``indices`` name (shard, slot) for :meth:`update_priorities`, and
            ``weights`` are batch-max normalised over the whole batch. New transitions get the
            largest priority their shard has seen.
        shard_options: further ``TrajectoryReplayBuffer`` keyword arguments for every shard
            (``max_trajectories``, ``max_disk_bytes``, ``on_corrupt``, ``max_staleness``, ...;
            not ``rate_limiter``).
        actor_options: Ray actor options (``num_cpus``, ``resources``,
            ``scheduling_strategy``, ``runtime_env``, ...), a dict for every shard or a
            function ``rank -> dict``. Default: ``num_cpus=1``.
        max_restarts: how often Ray restarts a dead shard (-1: always).
        call_timeout: seconds to wait for a shard's answer before
            :class:`ShardUnavailableError` (``None``: no limit).
        start_timeout: seconds to wait for every shard to start (Ray schedules an actor only
            where its ``actor_options`` resources are free; ``None``: no limit).
        name: name the shard actors ``{name}.rank_k`` (in the current Ray namespace); a
            client built with the same ``name`` and ``num_shards`` attaches to the running shards
            instead of starting new ones.

    The client can be passed to Ray tasks and actors (it pickles as handles to the same shards),
    so rollout workers add and the learner samples through copies of one buffer.
    """

    def __init__(
        self,
        path: str,
        num_shards: int = 2,
        *,
        seed: int = 1234,
        sample_window_size: int = 100,
        enable_cache: bool = True,
        cache_size: int = 5,
        trajectory_format: str = "pt",
        route_by: Callable[[Any], Hashable] | None = None,
        prioritized: bool = False,
        priority_alpha: float = 0.6,
        priority_beta: float = 0.4,
        priority_eps: float = 1e-6,
        shard_options: Mapping[str, Any] | None = None,
        actor_options: Mapping[str, Any] | Callable[[int], Mapping[str, Any]] | None = None,
        max_restarts: int = -1,
        call_timeout: float | None = None,
        start_timeout: float | None = 300.0,
        name: str | None = None,
    ) -> None:
        _require_ray()
        if not isinstance(path, str | os.PathLike) or not os.fspath(path):
            raise InvalidArgumentError(f"path must be a directory path, got {path!r}")
        self.path = os.path.abspath(os.fspath(path))
        self.num_shards = check_int("num_shards", num_shards, 1)
        self.seed = check_int("seed", seed, 0)
        if route_by is not None and not callable(route_by):
            raise InvalidArgumentError(f"route_by must be a function of a trajectory, got {route_by!r}")
        self.route_by = route_by
        for label, seconds in (("call_timeout", call_timeout), ("start_timeout", start_timeout)):
            if seconds is not None and (
                isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0
            ):
                raise InvalidArgumentError(f"{label} must be None or seconds > 0, got {seconds!r}")
        self.call_timeout = call_timeout
        max_restarts = check_int("max_restarts", max_restarts, -1)
        options = dict(shard_options or {})
        reserved = sorted(RESERVED_OPTIONS & set(options))
        if reserved:
            raise InvalidArgumentError(
                f"shard_options {reserved} cannot be used with the sharded buffer (it auto-saves each "
                "shard to path/rank_k; a rate limiter works within one process)"
            )
        for key in CLIENT_OPTIONS:
            if key in options:
                raise InvalidArgumentError(
                    f"pass {key} to RayTrajectoryReplayBuffer itself, not in shard_options"
                )
        self.prioritized = check_bool("prioritized", prioritized)
        if self.prioritized:
            options.update(
                prioritized=True,
                priority_alpha=priority_alpha,
                priority_beta=priority_beta,
                priority_eps=priority_eps,
            )
            PrioritizedSampler(
                priority_alpha, priority_beta, priority_eps, generator=torch.Generator()
            )  # checks
        self._beta = float(priority_beta)
        options.update(
            sample_window_size=check_int("sample_window_size", sample_window_size, 0),
            enable_cache=check_bool("enable_cache", enable_cache),
            cache_size=check_int("cache_size", cache_size, 0),
            trajectory_format=check_format(trajectory_format),
        )
        self._check_finite = bool(options.get("check_finite", False))
        self.config_extras: Any = None  # set by from_config
        self._check_root()
        actor_class = ray.remote(ShardServer)
        self._shards = []
        for rank in range(self.num_shards):
            opts: dict[str, Any] = {"num_cpus": 1}
            extra = actor_options(rank) if callable(actor_options) else actor_options
            opts.update(extra or {})
            opts.update(max_restarts=max_restarts, max_task_retries=0)
            self._actor_summary = ", ".join(
                f"{k}={v}" for k, v in opts.items() if k in ("num_cpus", "num_gpus", "resources", "memory")
            )
            if name is not None:
                opts.update(name=f"{name}.rank_{rank}", get_if_exists=True)
            self._shards.append(
                actor_class.options(**opts).remote(
                    self.path, rank, self.num_shards, self.seed + rank, options
                )
            )
        self._setup_client_state()
        try:
            infos = self.wait_until_ready(timeout=start_timeout)
        except ReplayBufferError as exc:
            if name is None:  # ours alone: do not leave them waiting for resources
                for actor in self._shards:
                    ray.kill(actor, no_restart=True)
            if not isinstance(exc, ShardUnavailableError):
                raise  # e.g. DirectoryLockedError: another client's shards serve this path
            raise ShardUnavailableError(
                f"the shards did not all start within {start_timeout} s ({exc}); does the Ray "
                f"cluster have free resources for {self.num_shards} actors with {self._actor_summary}?",
                shard=exc.shard,
            ) from exc
        for k, info in enumerate(infos):  # named actors may belong to another buffer
            if info["rank"] != k or info["path"] != shares.live_dir(self.path, k):
                raise InvalidArgumentError(
                    f"the running actor {name}.rank_{k} serves {info['path']} (rank {info['rank']}), "
                    f"not {shares.live_dir(self.path, k)}; use another name, or the same path"
                )

    @classmethod
    def from_config(
        cls,
        cfg: Any,
        *,
        num_shards: int,
        path: str | None = None,
        section: str = "replay_buffer",
        **client: Any,
    ) -> RayTrajectoryReplayBuffer:
        """Build a sharded buffer from RLinf's buffer configuration (the keys of
        ``TrajectoryReplayBuffer.from_config``; unknown keys are warned about, naming them, and dropped).

        ``auto_save_path`` (or ``path``, which wins) is the sharded buffer's directory;
        ``auto_save`` is implied. ``seed``, ``sample_window_size``, ``enable_cache``,
        ``cache_size``, ``trajectory_format`` and the prioritized keys go to the client; every
        other constructor key goes to each shard. ``client`` takes further keyword arguments
        of this class (``actor_options``, ``route_by``, ``name``, ...). The configuration's
        extras (``min_buffer_size``, ``load_path``, ...) are in ``buffer.config_extras``.
        """
        from ..config import buffer_kwargs_from_config

        kwargs, extras = buffer_kwargs_from_config(cfg, section=section, unknown_keys="warn")
        kwargs.pop("auto_save", None)
        where = path if path is not None else kwargs.pop("auto_save_path", None)
        kwargs.pop("auto_save_path", None)
        if not where:
            raise InvalidArgumentError(
                "the sharded buffer needs a directory: set auto_save_path in the configuration or pass path="
            )
        mine = {k: kwargs.pop(k) for k in ("seed", *CLIENT_OPTIONS) if k in kwargs}
        shard_options = {**kwargs, **client.pop("shard_options", {})}
        buffer = cls(where, num_shards, **mine, shard_options=shard_options, **client)
        buffer.config_extras = extras
        return buffer

    def _setup_client_state(self) -> None:
        self._lock = threading.Lock()  # guards the generator and the round-robin turn
        self._rng = np.random.default_rng(self.seed if not hasattr(self, "_copy") else None)
        self._next_shard = 0 if not hasattr(self, "_copy") else random.randrange(self.num_shards)
        self._incarnations: list[str | None] = [None] * self.num_shards
        self._restarts = [0] * self.num_shards
        self._unflushed = [0] * self.num_shards  # trajectories this client added since its last flush
        self._populations: dict[tuple[int, bool] | None, np.ndarray] = {}
        self._schema: Schema | None = None

    def _check_root(self) -> None:
        """Refuse a directory holding more shards than ``num_shards`` (their data would be
        silently left out); checked only where the client sees the directory."""
        if not os.path.isdir(self.path):
            return
        ranks = sorted(int(n[5:]) for n in os.listdir(self.path) if n.startswith("rank_") and n[5:].isdigit())
        extra = [
            r for r in ranks if r >= self.num_shards and is_buffer_directory(shares.live_dir(self.path, r))
        ]
        if extra:
            raise BufferDirectoryError(
                f"{self.path} holds shards up to rank_{max(extra)} but num_shards={self.num_shards}; "
                f"use num_shards={max(extra) + 1}, or load it into a new path with load_checkpoint "
                "(which spreads any number of rank_* directories over the shards)"
            )

    # -- pickling: copies are handles to the same shards ----------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        keep = ("path", "num_shards", "seed", "route_by", "call_timeout", "_shards", "_check_finite")
        keep += ("prioritized", "_beta", "config_extras")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._copy = True
        self._setup_client_state()

    # -- calling shards -----------------------------------------------------------------------
    def _call(
        self,
        method: str,
        args: Mapping[int, tuple[Any, ...]] | None = None,
        timeout: float | None | str = "default",
    ) -> dict[int, Any]:
        """Call ``method`` on the shards in ``args`` (default: all, no arguments) at once and
        return ``{rank: value}``. Waits for every call before raising, so nothing is left
        running; a shard that is down raises :class:`ShardUnavailableError`, a shard's own
        library error is re-raised as it is."""
        if args is None:
            args = {k: () for k in range(self.num_shards)}
        refs = {k: getattr(self._shards[k], method).remote(*a) for k, a in args.items()}
        limit = self.call_timeout if timeout == "default" else timeout
        deadline = None if limit is None else time.monotonic() + float(limit)
        values: dict[int, Any] = {}
        failures: list[BaseException] = []
        for k, ref in refs.items():
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                incarnation, value = ray.get(ref, timeout=timeout)
            except GetTimeoutError:
                failures.append(
                    ShardUnavailableError(
                        f"shard {k} ({self._where(k)}) did not answer {method} within "
                        f"{limit} s; it may be overloaded, not yet scheduled, or its node unreachable "
                        "(raise call_timeout, or check the Ray cluster)",
                        shard=k,
                    )
                )
                continue
            except RayActorError as exc:
                self._populations.clear()
                failures.append(self._unavailable(k, method, exc))
                continue
            except RayTaskError as exc:
                cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                if isinstance(cause, ReplayBufferError) and hasattr(cause, "add_note"):
                    cause.add_note(f"(raised by shard {k}, {self._where(k)})")
                failures.append(cause)
                continue
            self._saw(k, incarnation)
            values[k] = value
        if failures:
            unavailable = [f for f in failures if isinstance(f, ShardUnavailableError)]
            error = (unavailable or failures)[0]
            error.partial = values  # type: ignore[attr-defined]  # what the other shards answered
            raise error
        return values

    def _where(self, k: int) -> str:
        return shares.live_dir(self.path, k)

    def _unavailable(self, k: int, method: str, exc: BaseException) -> ShardUnavailableError:
        detail = str(exc).split("\n", 1)[0][:200]
        return ShardUnavailableError(
            f"shard {k} ({self._where(k)}) is unavailable for {method}: its actor died or is "
            f"restarting ({detail}). Ray restarts it from its directory with every flushed "
            "trajectory; retry the call, or wait_until_ready() first. Nothing partial was returned"
            + ("; an add may or may not have reached it" if method == "add" else ""),
            shard=k,
        )

    def _saw(self, k: int, incarnation: str) -> None:
        known = self._incarnations[k]
        self._incarnations[k] = incarnation
        if known is None or known == incarnation:
            return
        self._restarts[k] += 1
        self._populations.clear()
        lost = self._unflushed[k]
        self._unflushed[k] = 0
        warnings.warn(
            f"shard {k} ({self._where(k)}) restarted and reopened its directory; trajectories "
            f"added to it after its last flush may be lost (this client added {lost} since its "
            "last flush())",
            ShardRestartedWarning,
            stacklevel=4,
        )

    def wait_until_ready(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Wait until every shard answers (e.g. after :class:`ShardUnavailableError`).

        Returns:
            Per shard: ``rank``, ``pid``, ``host``, ``node_id`` (Ray's), ``path``, ``size``,
            ``restored`` (trajectories it found in its directory when it started),
            ``recovered`` (``"forward"``/``"back"`` if it finished or undid an interrupted
            directory replacement) and ``schema``.

        Raises:
            ShardUnavailableError: a shard did not answer within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.001, deadline - time.monotonic())
            try:
                infos = self._call("ping", timeout=left)
                break
            except ShardUnavailableError as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    raise ShardUnavailableError(
                        f"not every shard answered within {timeout} s: {exc}", shard=exc.shard
                    ) from exc
                time.sleep(0.1)
        for info in infos.values():
            if info["schema"] is not None and self._schema is None:
                self._schema = schema_from_json(info["schema"], "shard schema", BufferDirectoryError)
        return [infos[k] for k in range(self.num_shards)]

    # -- adding -------------------------------------------------------------------------------
    def add_trajectories(
        self, trajectories: Sequence[Trajectory], keys: Sequence[Hashable] | None = None
    ) -> list[tuple[int, int]]:
        """Add trajectories, each to one shard, all shards at once.

        Every trajectory is validated here first: if one is malformed, or its fields differ
        from the buffer's, nothing is sent and :class:`InvalidTrajectoryError` names it.

        Args:
            trajectories: ``Trajectory`` objects with tensors ``[T, B, ...]`` (any device).
            keys: optional routing key per trajectory (overrides ``route_by``).

        Returns:
            ``(shard, trajectory_id)`` of each trajectory, in order.

        Raises:
            ShardUnavailableError: a shard was down; the trajectories routed to live shards
                were added (``exc.added`` lists their ``(index, shard, id)``).
        """
        if isinstance(trajectories, Trajectory | Mapping) or not isinstance(trajectories, Sequence):
            raise InvalidArgumentError(
                f"add_trajectories takes a list of Trajectory objects, got {type(trajectories).__name__}"
            )
        if keys is not None and len(keys) != len(trajectories):
            raise InvalidArgumentError(f"keys has {len(keys)} entries for {len(trajectories)} trajectories")
        schema = self._schema
        for i, traj in enumerate(trajectories):
            aligned = align(traj, where=f"trajectory {i}: ", check_finite=self._check_finite)
            got = Schema.of_columns(aligned.columns)
            if schema is None:
                schema = got
            else:
                schema.check(got, where=f"trajectory {i}: ")
        if not trajectories:
            return []
        if keys is None and self.route_by is not None:
            keys = [self.route_by(t) for t in trajectories]
        if keys is not None:
            targets = [shard_of_key(key, self.num_shards) for key in keys]
        else:
            with self._lock:
                first = self._next_shard
                self._next_shard = (first + len(trajectories)) % self.num_shards
            targets = [(first + i) % self.num_shards for i in range(len(trajectories))]
        batches: dict[int, list[int]] = {}
        for i, k in enumerate(targets):
            batches.setdefault(k, []).append(i)
        args = {k: ([encode_trajectory(trajectories[i]) for i in idx],) for k, idx in batches.items()}
        out: list[tuple[int, int] | None] = [None] * len(trajectories)
        try:
            replies = self._call("add", args)
        except ReplayBufferError as exc:
            partial = getattr(exc, "partial", {})
            self._take_added(partial, batches, out)
            if isinstance(exc, ShardUnavailableError):
                exc.added = [(i, *o) for i, o in enumerate(out) if o is not None]
            raise
        self._schema = schema
        self._take_added(replies, batches, out)
        return [o for o in out if o is not None]

    def _take_added(
        self, replies: Mapping[int, Any], batches: Mapping[int, list[int]], out: list[tuple[int, int] | None]
    ) -> None:
        for k, (ids, population) in replies.items():
            self._unflushed[k] += len(ids)
            for i, tid in zip(batches[k], ids, strict=True):
                out[i] = (k, tid)
            known = self._populations.get(None)
            if known is not None:
                known[k] = population

    # -- sampling -----------------------------------------------------------------------------
    def sample(self, num_chunks: int) -> Batch:
        """Draw ``num_chunks`` transitions uniformly over the union of the shards' windows.

        Returns:
            The batch of ``TrajectoryReplayBuffer.sample``: ``[num_chunks, ...]`` tensors
            (writable, in their stored dtype), rows in random order.

        Raises:
            EmptyBufferError: no shard holds a transition in its window.
            ShardUnavailableError: a shard is down (no partial batch is returned).
        """
        return self._draw(check_int("num_chunks", num_chunks, 1), None)

    def sample_sequences(self, num_sequences: int, seq_len: int, pad: bool = False) -> Batch:
        """Draw runs of ``seq_len`` steps, uniform over the valid starts of all shards.

        Returns:
            The batch of ``TrajectoryReplayBuffer.sample_sequences``: ``[N, L, ...]`` tensors
            and ``mask`` (bool ``[N, L]``).
        """
        num = check_int("num_sequences", num_sequences, 1)
        kind = (check_int("seq_len", seq_len, 1), check_bool("pad", pad))
        return self._draw(num, kind)

    def _refresh(self, kind: tuple[int, bool] | None) -> np.ndarray:
        seq_len, pad = kind if kind is not None else (None, False)
        args = {k: (seq_len, pad) for k in range(self.num_shards)}
        values = self._call("population", args)
        populations = np.array([values[k] for k in range(self.num_shards)])
        self._populations[kind] = populations
        return populations

    def _draw(self, num: int, kind: tuple[int, bool] | None) -> Batch:
        seq_len, pad = kind if kind is not None else (None, False)
        for attempt in range(_EMPTY_RETRIES + 1):
            populations = self._populations.get(kind)
            if populations is None or populations.sum() <= 0:
                populations = self._refresh(kind)
            if populations.sum() <= 0:
                what = "transition" if kind is None else f"valid start for sequences of {seq_len} steps"
                raise EmptyBufferError(
                    f"cannot sample: no shard holds a {what} in its window; add trajectories or "
                    "load a checkpoint first (is_ready() tells when sampling is possible)"
                )
            with self._lock:
                counts = split_draws(populations, num, self._rng)
            args = {k: (int(counts[k]), seq_len, pad) for k in range(self.num_shards)}
            try:
                replies = self._call("sample", args)
            except EmptyBufferError:
                self._populations.pop(kind, None)  # a shard emptied since the split: split again
                if attempt == _EMPTY_RETRIES:
                    raise
                continue
            self._populations[kind] = np.array([replies[k][1] for k in range(self.num_shards)])
            with self._lock:
                order_rng = np.random.default_rng(self._rng.integers(2**63))
            parts = [replies[k][0] for k in range(self.num_shards)]
            prioritized = ("indices",) in parts[int(np.flatnonzero(counts)[0])]
            if prioritized:
                globalize_indices(parts, counts)
            batch = assemble(parts, counts, order_rng)
            if prioritized:
                batch["weights"] = importance_weights(batch["weights"], self._beta)
            return batch
        raise AssertionError("unreachable")

    @property
    def priority_beta(self) -> float:
        """The importance-sampling exponent of ``weights`` (settable, in [0, 1], for annealing)."""
        return self._beta

    @priority_beta.setter
    def priority_beta(self, value: float) -> None:
        if not self.prioritized:
            raise InvalidArgumentError("priority_beta needs a buffer built with prioritized=True")
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise InvalidArgumentError(f"priority_beta must be a number in [0, 1], got {value!r}")
        self._beta = float(value)

    def priority_mass(self, *, per_shard: bool = False) -> float | list[float]:
        """Sum of ``(priority + priority_eps) ** priority_alpha`` over every shard's window (what
        prioritized draws are proportional to), or with ``per_shard`` each shard's, in shard
        order. Raises :class:`InvalidArgumentError` unless built with ``prioritized=True``."""
        if not self.prioritized:
            raise InvalidArgumentError("priority_mass needs a buffer built with prioritized=True")
        masses = [float(m) for m in self._refresh(None)]
        return masses if per_shard else sum(masses)

    def update_priorities(self, indices: Any, priorities: Any) -> int:
        """Set the priorities of sampled transitions (``prioritized=True`` only), every shard
        at once.

        Args:
            indices: int64 ``[K]``, the ``indices`` of a batch from :meth:`sample`.
            priorities: float ``[K]``, finite and >= 0 (e.g. ``|TD error|``).

        Returns:
            How many were applied (transitions that left their shard's window are skipped).

        Raises:
            InvalidArgumentError: not prioritized, lengths differ, or bad values (nothing is
                changed then).
        """
        if not self.prioritized:
            raise InvalidArgumentError(
                "update_priorities needs a buffer built with prioritized=True (this one samples uniformly)"
            )
        idx = (
            torch.as_tensor(indices).detach().cpu().numpy()
            if not isinstance(indices, np.ndarray)
            else indices
        )
        pri = (
            torch.as_tensor(priorities).detach().cpu().numpy()
            if not isinstance(priorities, np.ndarray)
            else priorities
        )
        idx, pri = np.asarray(idx).reshape(-1), np.asarray(pri, dtype=np.float64).reshape(-1)
        if not np.issubdtype(idx.dtype, np.integer) or len(idx) != len(pri):
            raise InvalidArgumentError(
                f"indices must be integers with one priority each, got {len(idx)} {idx.dtype} indices "
                f"and {len(pri)} priorities"
            )
        if (idx < 0).any() or not np.isfinite(pri).all() or (pri < 0).any():
            raise InvalidArgumentError("indices must be >= 0 and priorities finite and >= 0")
        shards = idx % self.num_shards
        args = {
            int(k): (idx[shards == k] // self.num_shards, pri[shards == k])
            for k in np.unique(shards).tolist()
        }
        replies = self._call("update_priorities", args)
        known = self._populations.get(None)
        for k, (_, mass) in replies.items():
            if known is not None:
                known[k] = mass
        return sum(applied for applied, _ in replies.values())

    # -- state --------------------------------------------------------------------------------
    def get_stats(self) -> dict[str, Any]:
        """Totals over the shards (``size``, ``total_samples``, ``window_trajectories``,
        ``window_transitions``, ``disk_bytes``, ...), ``restarts`` per shard as this client
        saw them, and ``shards``: each shard's own ``get_stats()``."""
        per = self._call("stats")
        shards = [per[k] for k in range(self.num_shards)]
        summed = (
            "size",
            "total_samples",
            "window_trajectories",
            "window_transitions",
            "cached_trajectories",
            "cached_bytes",
            "evicted_trajectories",
            "corrupt_skipped",
            "capacity_evicted",
            "disk_bytes",
            "pending_writes",
            "files_written",
        )
        totals: dict[str, Any] = {key: sum(int(s.get(key, 0)) for s in shards) for key in summed}
        totals.update(
            num_shards=self.num_shards, path=self.path, restarts=list(self._restarts), shards=shards
        )
        return totals

    @property
    def size(self) -> int:
        """Trajectories held by all shards."""
        return int(self.get_stats()["size"])

    def __len__(self) -> int:
        return self.size

    @property
    def total_samples(self) -> int:
        """Transitions held by all shards."""
        return int(self.get_stats()["total_samples"])

    def is_ready(self, min_size: int = 1) -> bool:
        """Whether the shards hold at least ``min_size`` trajectories and a draw is possible."""
        min_size = check_int("min_size", min_size, 0)
        stats = self.get_stats()
        return stats["size"] >= min_size and stats["window_transitions"] > 0

    # -- persistence --------------------------------------------------------------------------
    def flush(self) -> None:
        """Return once every trajectory added before the call is durable in its shard's
        directory (a restarted shard comes back with it)."""
        self._call("flush")
        self._unflushed = [0] * self.num_shards

    def _inside(self, path: str) -> bool:
        real, root = os.path.realpath(path), os.path.realpath(self.path)
        return real == root or real.startswith(root + os.sep) or root.startswith(real + os.sep)

    def save_checkpoint(self, save_path: str) -> None:
        """Write ``save_path/rank_k`` for every shard, all at once.

        The checkpoint is assembled in a hidden sibling directory and renamed into place when
        every shard has written its part, so an interrupted save leaves no half checkpoint;
        a previous checkpoint at ``save_path`` is replaced whole. The merge tool merges the
        result into one directory; :meth:`load_checkpoint` spreads it over any number of
        shards. ``save_path`` equal to the buffer's own ``path`` flushes and compacts the
        shards' directories in place (they are a checkpoint already).
        """
        from .. import checkpoint

        if not isinstance(save_path, str | os.PathLike) or not os.fspath(save_path):
            raise InvalidArgumentError(f"save_path must be a directory path, got {save_path!r}")
        dest = os.path.abspath(os.fspath(save_path))
        if os.path.realpath(dest) == os.path.realpath(self.path):
            self._call("compact")
            self._unflushed = [0] * self.num_shards
            return
        if self._inside(dest):
            raise BufferDirectoryError(
                f"{dest}: a checkpoint cannot be inside the buffer's directory {self.path} or contain it"
            )
        _check_checkpoint_destination(dest)
        with contextlib.ExitStack() as stack:
            with checkpoint.writing(dest):
                make_dirs(os.path.dirname(dest))
                staging = stack.enter_context(staged_directory(dest))
            self._call("save", {k: (staging,) for k in range(self.num_shards)})
            missing = [
                k for k in range(self.num_shards) if not is_buffer_directory(shares.live_dir(staging, k))
            ]
            if missing:
                raise BufferDirectoryError(
                    f"{staging}: the client does not see rank_{missing[0]} that shard {missing[0]} "
                    "wrote; save_checkpoint needs a file system shared by the client and the shards"
                )
            with checkpoint.writing(dest):
                publish_directory(staging, dest)
        self._unflushed = [0] * self.num_shards

    def load_checkpoint(self, load_path: str) -> None:
        """Replace the buffer's contents with a checkpoint, spread over the shards.

        ``load_path`` is a folder of ``rank_*`` directories (from :meth:`save_checkpoint`, or
        RLinf's per-rank saves) or one buffer directory. ``N`` ranks go to ``N`` shards rank for
        rank; otherwise trajectories are dealt out in turn (see
        :func:`~.shares.share_of`). Every shard first stages its share; only when all have
        succeeded does each replace its directory, so a bad checkpoint changes nothing. A
        restarted shard comes back with what it loaded. Do not add while loading.

        Raises:
            BufferNotFoundError, CorruptBufferError, UnsafeFileError: as ``load_checkpoint``
                of ``TrajectoryReplayBuffer`` (nothing is changed).
        """
        if not isinstance(load_path, str | os.PathLike) or not os.fspath(load_path):
            raise InvalidArgumentError(f"load_path must be a directory path, got {load_path!r}")
        source = os.path.abspath(os.fspath(load_path))
        if self._inside(source):
            raise BufferDirectoryError(
                f"{source}: cannot load the buffer's own directory {self.path} (or a part of it) "
                "into itself; save_checkpoint it elsewhere first"
            )
        self._replace("prepare_load", (source,))

    def clear(self) -> None:
        """Empty every shard and its directory (files are deleted, so a restarted shard stays
        empty); new trajectories continue each shard's numbering."""
        self._replace("prepare_clear", ())

    def _replace(self, prepare: str, args: tuple[Any, ...]) -> None:
        try:
            staged = self._call(prepare, {k: args for k in range(self.num_shards)})
        except BaseException:
            self._abort()
            raise
        schemas = {repr(v["schema"]) for v in staged.values() if v and v.get("schema") is not None}
        if len(schemas) > 1:
            self._abort()
            raise BufferDirectoryError(
                "the checkpoint's ranks hold trajectories with different fields; merge or fix them first"
            )
        self._call("commit")
        self._populations.clear()
        self._schema = None
        self._unflushed = [0] * self.num_shards
        self.wait_until_ready(self.call_timeout)

    def _abort(self) -> None:
        try:
            self._call("abort")
        except ReplayBufferError:  # a shard that is down cleans up when it restarts
            pass

    # -- lifecycle ----------------------------------------------------------------------------
    def clear_cache(self) -> None:
        """Empty every shard's memory cache (their trajectories stay on disk)."""
        self._call("clear_cache")

    def close(self) -> None:
        """Finish every shard's writes and compact their directories; the shards keep running
        and the buffer stays usable. :meth:`shutdown` also stops them."""
        self._call("close")
        self._unflushed = [0] * self.num_shards

    def shutdown(self) -> None:
        """:meth:`close` the shards (where they answer) and stop their actors. The data stays in
        ``path``; a new ``RayTrajectoryReplayBuffer(path, num_shards)`` continues it."""
        try:
            self.close()
        finally:
            for actor in self._shards:
                ray.kill(actor, no_restart=True)

    def __enter__(self) -> RayTrajectoryReplayBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"RayTrajectoryReplayBuffer(path={self.path!r}, num_shards={self.num_shards})"


def _check_checkpoint_destination(dest: str) -> None:
    """Refuse to replace anything but nothing, an empty directory, a buffer directory or a
    folder of ``rank_*`` buffer directories."""
    if not os.path.lexists(dest):
        return
    if not os.path.isdir(dest):
        raise BufferDirectoryError(f"{dest}: exists and is not a directory")
    names = os.listdir(dest)
    if not names or is_buffer_directory(dest):
        return
    if all(n.startswith("rank_") and is_buffer_directory(os.path.join(dest, n)) for n in names):
        return
    raise BufferDirectoryError(
        f"{dest}: exists, is not empty and is not a checkpoint; refusing to replace it (choose a "
        "new or empty directory)"
    )


__all__ = ["RayTrajectoryReplayBuffer"]
