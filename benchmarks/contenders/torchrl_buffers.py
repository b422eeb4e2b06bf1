"""``torchrl_lazy`` and ``torchrl_memmap``: TorchRL's ``ReplayBuffer`` over a ``LazyTensorStorage`` or
a ``LazyMemmapStorage`` (files in the case's directory), with a ``RandomSampler``.

The transitions are stored as one TensorDict of flattened ``[T * B]`` rows with nested keys
(``("curr_obs", "states")``); each trajectory is added with ``rb.extend``. One ``ReplayBuffer``
with ``batch_size=n`` per sample size shares the storage; ``rb.sample()`` is timed. TorchRL has no
flush: for the write case the harness fsyncs the memmap files (``flush``) to match the others.
"""

from __future__ import annotations

import logging
from typing import Any

from ..measure import files_under, fsync_files
from ..scenarios import nest, trajectory_columns
from . import NotInstalled, Store, StoreConfig, Unsupported

try:
    from tensordict import TensorDict
    from torchrl.data import LazyMemmapStorage, LazyTensorStorage, ReplayBuffer
    from torchrl.data.replay_buffers.samplers import RandomSampler

    logging.getLogger("torchrl").setLevel(logging.WARNING)
    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # optional dependency
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


class TorchRLStore(Store):
    """A TorchRL replay buffer holding ``cfg.capacity`` trajectories' transitions."""

    def __init__(self, kind: str, cfg: StoreConfig) -> None:
        rows = cfg.capacity * cfg.spec.transitions
        self.spec = cfg.spec
        self.memmap = kind == "torchrl_memmap"
        self.path = cfg.path if self.memmap else None
        if self.memmap:
            self.storage = LazyMemmapStorage(rows, scratch_dir=cfg.path)
        else:
            self.storage = LazyTensorStorage(rows)
        self.writer = ReplayBuffer(storage=self.storage, sampler=RandomSampler())
        self.rbs: dict[int, Any] = {}
        if self.memmap:
            self.flush_note = "TorchRL has no flush: the harness fsyncs the memmap files"

    def add(self, traj: Any) -> None:
        cols = trajectory_columns(traj, self.spec)
        self.writer.extend(TensorDict(nest(cols), batch_size=[self.spec.transitions]))

    def flush(self) -> None:
        if self.memmap:
            fsync_files(self.files(), self.path)

    def prepare(self, n: int) -> None:
        if n not in self.rbs:
            self.rbs[n] = ReplayBuffer(storage=self.storage, sampler=RandomSampler(), batch_size=n)

    def sample(self, n: int) -> Any:
        return self.rbs[n].sample()

    def indexed(self) -> int | None:
        return len(self.storage)

    def files(self) -> list[str]:
        return files_under(self.path)


def _check(variant: str) -> None:
    if _IMPORT_ERROR is not None:
        raise NotInstalled(_IMPORT_ERROR)
    if variant not in ("torchrl_lazy", "torchrl_memmap"):
        raise Unsupported(f"unknown TorchRL variant {variant!r}")


def create(variant: str, mode: str, cfg: StoreConfig) -> Store:
    """A TorchRL buffer; ``disk`` and ``write`` need the memmap storage, ``tiny`` is not applicable."""
    _check(variant)
    if mode in ("disk", "write") and variant != "torchrl_memmap":
        raise Unsupported("in-memory storage")
    if mode == "tiny":
        raise Unsupported("no trajectory index")
    return TorchRLStore(variant, cfg)


def fresh(variant: str, cfg: StoreConfig) -> Store:
    """Not applicable: TorchRL does not read buffer directories."""
    _check(variant)
    raise Unsupported("does not read buffer directories")


def open_existing(variant: str, path: str, cfg: StoreConfig) -> Store:
    """Not applicable: TorchRL does not read buffer directories."""
    _check(variant)
    raise Unsupported("does not read buffer directories")
