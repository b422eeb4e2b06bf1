"""``ours``: this library's ``TrajectoryReplayBuffer``, through its public API only.

Variants: ``memory`` (or no variant; ``auto_save=False``, the window lives in memory) and a
trajectory format (``pt``, ``segment``, ...; ``auto_save=True`` into the case's directory).
A format the constructor rejects with ``ValueError`` makes the row "unsupported".
"""

from __future__ import annotations

from typing import Any

from rlinf.data.replay_buffer import TrajectoryReplayBuffer

from ..measure import files_under
from . import Store, StoreConfig, Unsupported


def _is_memory(variant: str) -> bool:
    return variant in ("", "ours", "memory")


def _make(variant: str, cfg: StoreConfig, path: str | None) -> TrajectoryReplayBuffer:
    try:
        if _is_memory(variant):
            return TrajectoryReplayBuffer(seed=cfg.seed, sample_window_size=cfg.window, auto_save=False)
        if path is None:
            raise Unsupported("needs a directory")
        return TrajectoryReplayBuffer(
            seed=cfg.seed,
            enable_cache=cfg.cache_size > 0,
            cache_size=cfg.cache_size,
            sample_window_size=cfg.window,
            auto_save=True,
            auto_save_path=path,
            trajectory_format=variant,
        )
    except ValueError as exc:
        raise Unsupported(f"trajectory_format={variant!r} rejected: {exc}") from exc


class OursStore(Store):
    """A ``TrajectoryReplayBuffer`` (``path`` is its auto-save directory, if any)."""

    def __init__(self, buf: TrajectoryReplayBuffer, path: str | None) -> None:
        self.buf = buf
        self.path = path

    def add(self, traj: Any) -> None:
        self.buf.add_trajectories([traj])

    def flush(self) -> None:
        self.buf.flush()

    def sample(self, n: int) -> Any:
        return self.buf.sample(n)

    def load(self, path: str) -> None:
        self.buf.load_checkpoint(path)

    def cached_bytes(self) -> int | None:
        return int(self.buf.get_stats()["cached_bytes"])

    def indexed(self) -> int | None:
        return len(self.buf)

    def files(self) -> list[str]:
        return files_under(self.path)

    def close(self) -> None:
        self.buf.close()


def create(variant: str, mode: str, cfg: StoreConfig) -> Store:
    """A buffer for ``mode`` (the variant decides memory or auto-save)."""
    if mode in ("disk", "write", "tiny") and _is_memory(variant):
        raise Unsupported("needs an auto-save format")
    return OursStore(_make(variant, cfg, cfg.path), None if _is_memory(variant) else cfg.path)


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
