"""``ours``: this library's ``TrajectoryReplayBuffer``, through its public API only.

Variants: ``memory`` (or no variant; ``auto_save=False``, the window lives in memory) and a
trajectory format (``pt``, ``segment``, ...; ``auto_save=True`` into the case's directory).
A format the constructor rejects with ``ValueError`` makes the row "unsupported".

Sampler variants (in memory, settings from ``cfg.params``):

* ``uniform``: the plain buffer; ``sample_sequences(N, L)`` is ``sample(N * L)`` (as many rows).
* ``sequences`` / ``sequences_pad``: ``sample_sequences(N, L)`` with ``pad=False`` / ``pad=True``.
* ``prioritized``: ``prioritized=True`` with ``alpha``/``beta``/``eps``; ``update`` is
  ``update_priorities(batch["indices"], priorities)``.
* ``stale_half`` / ``stale_none``: ``max_staleness`` = ``params["stale_half"]`` / ``["stale_none"]``.
* ``rate_limited``: a ``RateLimiter(samples_per_insert, min_size_to_sample, error_buffer)``.
* ``limiter_only``: that ``RateLimiter`` alone, without a buffer: ``add`` is
  ``acquire_insert(T * B)`` and ``sample(n)`` is ``acquire_sample(n)`` (the limiter's own cost).

The ray scenario's variants:

* ``local``: the baseline, ``auto_save=True`` (``pt``) into the case's directory with a cache of
  ``cfg.cache_size`` trajectories and a window of ``cfg.window``; it samples in-process.
* ``ray-N``: ``RayTrajectoryReplayBuffer`` with ``N`` shard actors (:mod:`.ours_ray`).
"""

from __future__ import annotations

import os
from typing import Any

from rlinf_replay_buffer import TrajectoryReplayBuffer
from rlinf_replay_buffer.rate_limiter import RateLimiter

from ..measure import files_under
from . import Store, StoreConfig, Unsupported

SAMPLERS = (
    "uniform",
    "sequences",
    "sequences_pad",
    "prioritized",
    "stale_half",
    "stale_none",
    "rate_limited",
)


def _is_memory(variant: str) -> bool:
    return variant in ("", "ours", "memory", "limiter_only", *SAMPLERS)


def _limiter(cfg: StoreConfig) -> RateLimiter:
    p = cfg.params
    return RateLimiter(p["samples_per_insert"], p["min_size_to_sample"], p["error_buffer"])


def _sampler_kwargs(variant: str, cfg: StoreConfig) -> dict[str, Any]:
    """Constructor arguments of a sampler variant."""
    p = cfg.params
    if variant == "prioritized":
        return {
            "prioritized": True,
            "priority_alpha": p["alpha"],
            "priority_beta": p["beta"],
            "priority_eps": p["eps"],
        }
    if variant in ("stale_half", "stale_none"):
        return {"max_staleness": p[variant]}
    if variant == "rate_limited":
        # a timeout, so that a band too narrow for the loop fails instead of hanging
        return {"rate_limiter": _limiter(cfg), "rate_limit_timeout": 10.0}
    return {}


def copies_dir(path: str) -> str:
    """Where an auto-saving contender keeps its sampling copies: a sibling of its directory."""
    return path.rstrip(os.sep) + ".copies"


def _make(variant: str, cfg: StoreConfig, path: str | None) -> TrajectoryReplayBuffer:
    try:
        if _is_memory(variant):
            return TrajectoryReplayBuffer(
                seed=cfg.seed, sample_window_size=cfg.window, auto_save=False, **_sampler_kwargs(variant, cfg)
            )
        if path is None:
            raise Unsupported("needs a directory")
        os.makedirs(copies_dir(path), exist_ok=True)
        return TrajectoryReplayBuffer(
            seed=cfg.seed,
            enable_cache=cfg.cache_size > 0,
            cache_size=cfg.cache_size,
            sample_window_size=cfg.window,
            auto_save=True,
            auto_save_path=path,
            trajectory_format=variant,
            sampling_copy_dir=copies_dir(path),  # beside it: a cold call drops the copies too
        )
    except ValueError as exc:
        raise Unsupported(f"trajectory_format={variant!r} rejected: {exc}") from exc


class OursStore(Store):
    """A ``TrajectoryReplayBuffer`` (``path`` is its auto-save directory, if any)."""

    def __init__(self, buf: TrajectoryReplayBuffer, path: str | None, variant: str = "") -> None:
        self.buf = buf
        self.path = path
        self.pad = variant == "sequences_pad"
        self.runs = variant in ("sequences", "sequences_pad")
        self.updates_priorities = buf.prioritized

    def add(self, traj: Any) -> None:
        self.buf.add_trajectories([traj])

    def flush(self) -> None:
        self.buf.flush()

    def sample(self, n: int) -> Any:
        return self.buf.sample(n)

    def sample_sequences(self, num: int, length: int) -> Any:
        if self.runs:
            return self.buf.sample_sequences(num, length, pad=self.pad)
        return self.buf.sample(num * length)  # the uniform baseline: as many rows

    def update(self, batch: Any, priorities: Any) -> None:
        if self.buf.prioritized:
            self.buf.update_priorities(batch["indices"], priorities)

    def load(self, path: str) -> None:
        self.buf.load_checkpoint(path)

    def cached_bytes(self) -> int | None:
        return int(self.buf.get_stats()["cached_bytes"])

    def indexed(self) -> int | None:
        return len(self.buf)

    def files(self) -> list[str]:
        return files_under(self.path) + (files_under(copies_dir(self.path)) if self.path else [])

    def close(self) -> None:
        self.buf.close()


class LimiterOnlyStore(Store):
    """The rate limiter alone: what its bookkeeping costs per add and per sample call."""

    checkable = False
    moves_data = False

    def __init__(self, cfg: StoreConfig) -> None:
        self.limiter = _limiter(cfg)
        self.transitions = cfg.spec.transitions

    def add(self, traj: Any) -> None:
        self.limiter.acquire_insert(self.transitions, 10.0)

    def sample(self, n: int) -> Any:
        self.limiter.acquire_sample(n, 10.0)

    def close(self) -> None:
        self.limiter.close()


def create(variant: str, mode: str, cfg: StoreConfig) -> Store:
    """A buffer for ``mode`` (the variant decides memory or auto-save)."""
    if mode in ("disk", "write", "tiny") and _is_memory(variant):
        raise Unsupported("needs an auto-save format")
    if variant == "limiter_only":
        return LimiterOnlyStore(cfg)
    if variant == "local" or variant.startswith("ray-"):
        if mode != "ray":
            raise Unsupported(f"ours[{variant}] runs in the ray scenario only")
        if variant == "local":
            return OursStore(_make("pt", cfg, cfg.path), cfg.path)
        from .ours_ray import RayStore

        return RayStore(int(variant[len("ray-") :]), cfg)
    return OursStore(_make(variant, cfg, cfg.path), None if _is_memory(variant) else cfg.path, variant)


def fresh(variant: str, cfg: StoreConfig) -> Store:
    """The buffer ``load_checkpoint`` is timed on: ``auto_save=False``, cache and window from cfg."""
    buf = TrajectoryReplayBuffer(
        seed=cfg.seed,
        enable_cache=True,
        cache_size=cfg.cache_size,
        sample_window_size=cfg.window,
    )
    return OursStore(buf, None)


def open_existing(variant: str, path: str, cfg: StoreConfig) -> Store:
    """An auto-save buffer continuing the directory ``path`` (it indexes everything there)."""
    return OursStore(_make(variant, cfg, path), path)
