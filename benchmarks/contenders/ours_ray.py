"""``ours[ray-N]``: this library's ``RayTrajectoryReplayBuffer`` with ``N`` shard actors.

The store starts its own local Ray cluster (``ray.init(num_cpus=2, include_dashboard=False,
log_to_driver=False)``; a child process runs one contender, so every ray contender gets a fresh
cluster) and stops it in ``close`` after ``shutdown()`` of the buffer. Each shard actor asks for
``num_cpus=0.5`` (so two fit beside the client on a 2-CPU cluster) and auto-saves (``pt``) to
``cfg.path/rank_k``. Routing is round-robin, so with ``sample_window_size = window / N`` and
``cache_size = cache_size / N`` per shard the union of the shards' windows is the newest
``window`` trajectories, all in the shards' caches: the same rows the local buffer samples.

Only this module imports Ray; without it the rows read "not installed".
"""

from __future__ import annotations

import os

from . import NotInstalled, StoreConfig
from .ours import OursStore

RAY_INIT = {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False}
ACTOR_OPTIONS = {"num_cpus": 0.5}
CALL_TIMEOUT = 600.0
"""Seconds a shard may take to answer one call; a hung shard then fails the row instead of
waiting for the child's ``--timeout``."""


def _peak_rss_mb(pid: int) -> float | None:
    """Peak resident set size (``VmHWM``) of a process on this machine, in MB (10^6 bytes)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return None


class RayStore(OursStore):
    """A ``RayTrajectoryReplayBuffer`` of ``num_shards`` shards in a Ray cluster started here."""

    note = "peak RSS: the client process only (the shards are Ray worker processes); cached MB: all shards"

    def __init__(self, num_shards: int, cfg: StoreConfig) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report from a benchmark
        try:
            import ray

            from rlinf_replay_buffer import RayTrajectoryReplayBuffer
        except ImportError as exc:
            raise NotInstalled(
                f"ray is not importable ({exc}); pip install -c constraints.txt -e '.[ray]'"
            ) from exc
        if cfg.path is None:
            raise ValueError("the sharded buffer needs a directory")
        self.ray = ray
        ray.init(**RAY_INIT)
        try:
            self.buf = RayTrajectoryReplayBuffer(
                cfg.path,
                num_shards,
                seed=cfg.seed,
                sample_window_size=-(-cfg.window // num_shards),
                enable_cache=cfg.cache_size > 0,
                cache_size=-(-cfg.cache_size // num_shards),
                trajectory_format="pt",
                actor_options=dict(ACTOR_OPTIONS),
                call_timeout=CALL_TIMEOUT,
            )
            self.pids = [int(info["pid"]) for info in self.buf.wait_until_ready(CALL_TIMEOUT)]
        except BaseException:
            ray.shutdown()
            raise
        OursStore.__init__(self, self.buf, cfg.path)  # add, flush, sample, ... as for ours

    def workers_peak_rss_mb(self) -> float | None:
        rss = [_peak_rss_mb(pid) for pid in self.pids]
        return None if any(r is None for r in rss) else sum(rss)  # type: ignore[misc]

    def close(self) -> None:
        try:
            self.buf.shutdown()
        finally:
            self.ray.shutdown()
