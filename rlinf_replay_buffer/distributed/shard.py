"""One shard of a sharded buffer: a :class:`TrajectoryReplayBuffer` auto-saving to ``rank_k``.

:class:`ShardServer` is a plain class; the Ray client runs it as an actor (one per shard), and
tests may drive it directly. Its constructor is also what Ray re-runs when it restarts a dead
actor: it finishes or undoes an interrupted directory replacement (:mod:`.shares`) and then
continues ``rank_k``, so the shard comes back with every trajectory that was durable there.

Every method returns ``(incarnation, value)``: the incarnation is a random id drawn when the
shard (re)starts, which lets the client notice a restart between two calls.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..buffer import TrajectoryReplayBuffer
from ..errors import DirectoryLockedError, InvalidArgumentError
from ..fsio import make_dirs
from ..lock import DirectoryLock
from . import shares
from .wire import Encoded, decode_trajectory, flatten_batch

#: constructor options a shard cannot take: the client sets them, or they cannot span processes
RESERVED_OPTIONS = frozenset({"auto_save", "auto_save_path", "seed", "rate_limiter"})

Reply = tuple[str, Any]


def _ray_node_id() -> str | None:
    """The Ray node this process runs on (``None`` outside Ray)."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # no Ray, or not inside a Ray worker
        return None


class ShardServer:
    """Shard ``rank`` of ``num_shards``: a buffer auto-saving to ``root/rank_{rank}``.

    Args:
        root: the sharded buffer's directory (shared by all shards, or at least present on
            each shard's node).
        rank: this shard's number, ``0 <= rank < num_shards``.
        num_shards: how many shards the buffer has.
        seed: this shard's sampling seed.
        options: further :class:`TrajectoryReplayBuffer` keyword arguments (not those in
            :data:`RESERVED_OPTIONS`).
    """

    def __init__(self, root: str, rank: int, num_shards: int, seed: int, options: Mapping[str, Any]) -> None:
        bad = sorted(RESERVED_OPTIONS & set(options))
        if bad:
            raise InvalidArgumentError(f"shard options {bad} are set by the sharded buffer itself")
        self.root = os.path.abspath(root)
        self.rank = rank
        self.num_shards = num_shards
        self.seed = seed
        self.options = dict(options)
        self.path = shares.live_dir(self.root, rank)
        make_dirs(self.root)
        self.incarnation = uuid.uuid4().hex
        self.refused: DirectoryLockedError | None = None  # another shard serves this rank
        try:  # held for the actor's life (the OS drops it with the process): one shard per rank
            self.rank_lock = DirectoryLock.acquire(
                self.root, f"shard {rank} of a sharded buffer", name=shares.lock_name(rank)
            )
        except DirectoryLockedError as exc:
            self.refused = exc  # reported by ping(), so the client fails at once
            return
        self.recovered = shares.recover(self.root, rank)
        self.buffer = self._open()
        self.restored = self.buffer.size  # trajectories found in rank_k at start

    def _open(self) -> TrajectoryReplayBuffer:
        return TrajectoryReplayBuffer(
            seed=self.seed, auto_save=True, auto_save_path=self.path, **self.options
        )

    def _reply(self, value: Any) -> Reply:
        return self.incarnation, value

    # -- queries ------------------------------------------------------------------------------
    def ping(self) -> Reply:
        """Who and where the shard is, and what it holds.

        Raises:
            DirectoryLockedError: another shard (of another client) serves this rank's directory.
        """
        if self.refused is not None:
            raise self.refused
        schema = self.buffer.schema
        return self._reply(
            {
                "rank": self.rank,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "node_id": _ray_node_id(),
                "path": self.path,
                "size": self.buffer.size,
                "restored": self.restored,
                "recovered": self.recovered,
                "schema": schema.to_json() if schema is not None else None,
            }
        )

    def stats(self) -> Reply:
        """The buffer's ``get_stats()`` plus the shard's pid and restored count."""
        stats = self.buffer.get_stats()
        stats.update(rank=self.rank, pid=os.getpid(), restored=self.restored)
        return self._reply(stats)

    def population(self, seq_len: int | None = None, pad: bool = False) -> Reply:
        """What draws are split by: ``priority_mass()`` for prioritized ``sample``, else
        ``sampling_population(seq_len, pad)``."""
        return self._reply(self._population(seq_len, pad))

    def _population(self, seq_len: int | None, pad: bool) -> int | float:
        if self.buffer.prioritized and seq_len is None:
            return self.buffer.priority_mass()
        return self.buffer.sampling_population(seq_len, pad)

    # -- data ---------------------------------------------------------------------------------
    def add(self, messages: Sequence[Mapping[str, Any]]) -> Reply:
        """Add encoded trajectories; returns ``(ids, population for sample())``."""
        ids = self.buffer.add_trajectories([decode_trajectory(m) for m in messages])
        return self._reply((ids, self._population(None, False)))

    def sample(self, num: int, seq_len: int | None = None, pad: bool = False) -> Reply:
        """``num`` draws (``0``: none) and the population afterwards:
        ``({key: encoded [num, ...]}, population)``. Prioritized draws carry ``indices`` (this
        shard's slots) and, instead of weights, ``weights`` holding each row's stored priority
        ``q = (p + eps) ** alpha`` (float64), from which the client weighs the whole batch."""
        flat: dict[tuple[str, ...], Encoded] = {}
        if num > 0:
            batch = (
                self.buffer.sample(num)
                if seq_len is None
                else self.buffer.sample_sequences(num, seq_len, pad)
            )
            if "indices" in batch:
                batch["weights"] = torch.from_numpy(self.buffer.stored_priorities(batch["indices"]))
            flat = flatten_batch(batch)
        return self._reply((flat, self._population(seq_len, pad)))

    def update_priorities(self, slots: np.ndarray, priorities: np.ndarray) -> Reply:
        """``update_priorities`` of the buffer; returns ``(applied, priority mass)``."""
        applied = self.buffer.update_priorities(slots, priorities)
        return self._reply((applied, self.buffer.priority_mass()))

    # -- persistence --------------------------------------------------------------------------
    def flush(self) -> Reply:
        """Make every trajectory added so far durable in ``rank_k``."""
        self.buffer.flush()
        return self._reply(self.buffer.size)

    def save(self, save_root: str) -> Reply:
        """Write a checkpoint of this shard to ``save_root/rank_k``; returns its path."""
        target = shares.live_dir(save_root, self.rank)
        self.buffer.save_checkpoint(target)
        return self._reply(target)

    def compact(self) -> Reply:
        """Flush and rewrite ``rank_k``'s index in full (``save_checkpoint`` to the root)."""
        self.buffer.save_checkpoint(self.path)
        return self._reply(self.path)

    def prepare_load(self, load_path: str) -> Reply:
        """Stage this shard's share of the checkpoint at ``load_path`` (nothing changes yet)."""
        skip = self.options.get("on_corrupt") == "skip"
        share = shares.share_of(load_path, self.rank, self.num_shards, skip_corrupt=skip)
        fmt = self.buffer.trajectory_format
        shares.stage(share, self.root, self.rank, fmt, self.seed)
        schema = share.schema.to_json() if share.schema is not None else None
        return self._reply({"trajectories": len(share.records), "schema": schema})

    def prepare_clear(self) -> Reply:
        """Stage an empty directory that continues this shard's numbering."""
        empty = shares.Share([], None, self.buffer.trajectory_counter, self.seed, [])
        shares.stage(empty, self.root, self.rank, self.buffer.trajectory_format, self.seed)
        return self._reply(None)

    def abort(self) -> Reply:
        """Drop a staged load or clear."""
        shares.discard(self.root, self.rank)
        return self._reply(None)

    def commit(self) -> Reply:
        """Replace ``rank_k`` by what was staged and continue from it."""
        self.buffer.close()
        try:
            shares.commit(self.root, self.rank)
        finally:  # after a failure midway, finish or undo the swap as a restart would
            self.recovered = shares.recover(self.root, self.rank)
            self.buffer = self._open()
        return self._reply(self.buffer.size)

    # -- lifecycle ----------------------------------------------------------------------------
    def clear_cache(self) -> Reply:
        """``clear_cache()`` of the buffer (data stays on disk)."""
        self.buffer.clear_cache()
        return self._reply(None)

    def close(self) -> Reply:
        """``close()`` of the buffer: writes finished, index compacted; it stays usable."""
        self.buffer.close()
        return self._reply(None)

    def stop(self) -> None:
        """What the end of the actor's process does: close the buffer and release the rank's
        lock, so another shard may serve it (a shard stopped in-process, e.g. in a test)."""
        try:
            if self.refused is None:
                self.buffer.close()
        finally:
            if self.refused is None:
                self.rank_lock.release()
