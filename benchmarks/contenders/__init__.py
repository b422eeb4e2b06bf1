"""Contenders: one module each, all driven through the small :class:`Store` interface.

A contender label is ``module`` or ``module[variant]`` (``ours[pt]``, ``rlinf_reference[memory]``).
Each module provides::

    create(variant, mode, cfg) -> Store   # mode: sample | disk | latency | write | tiny |
                                          #       sequences | prioritized | rate_limited | ray
    fresh(variant, cfg) -> Store          # an empty store whose load(path) is timed
    open_existing(variant, path, cfg) -> Store  # continue an auto-save directory

and raises :class:`NotInstalled` or :class:`Unsupported` when it cannot take part.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch

from ..scenarios import TrajSpec

MODULES = ("limit", "ours", "rlinf_reference", "torchrl_buffers")
_BY_PREFIX = {
    "limit": "limit",
    "pread_rows": "limit",
    "ours": "ours",
    "rlinf_reference": "rlinf_reference",
    "torchrl_lazy": "torchrl_buffers",
    "torchrl_memmap": "torchrl_buffers",
    "torchrl_slice": "torchrl_buffers",
    "torchrl_slice_pad": "torchrl_buffers",
    "torchrl_slice_nocache": "torchrl_buffers",
    "torchrl_prioritized": "torchrl_buffers",
    "torchrl_stale_half": "torchrl_buffers",
}


class NotInstalled(Exception):
    """The contender's package is not importable."""


class Unsupported(Exception):
    """The contender cannot run this case (the message says why)."""


@dataclass
class StoreConfig:
    """What a store is built for: the trajectory spec, how many trajectories it must hold, the
    sampling window, the cache size and the directory it writes to or reads from; ``params``
    holds sampler settings of the sampler scenarios (``alpha``, ``beta``, ``eps``,
    ``stale_half``, ``samples_per_insert``, ...)."""

    spec: TrajSpec
    capacity: int
    window: int
    cache_size: int
    path: str | None = None
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)


class Store:
    """A contender under test. Only ``sample`` (or ``add``/``load``) is timed; hooks are not."""

    #: whether ``sample`` returns a batch that can be checked against the spec
    checkable = True
    #: a caveat about what ``flush`` guarantees, shown as a note in the add and write tables
    flush_note = ""
    #: whether ``update`` sets priorities (its time is then shown in the prioritized table)
    updates_priorities = False
    #: whether calls move data (false for a pure-bookkeeping reference: no rate, no ratio)
    moves_data = True
    #: a caveat about how the contender was set up, added to its rows' notes
    note = ""
    #: keys its batches hold beside the spec's columns (bookkeeping columns it stores)
    extra_keys: tuple[str, ...] = ()

    def add(self, traj: Any) -> None:
        """Add one trajectory."""
        raise Unsupported("add is not supported")

    def flush(self) -> None:
        """Make everything added durable (no-op for memory stores)."""

    def prepare(self, n: int) -> None:
        """Untimed set-up before a timed ``sample(n)`` (the limit draws its indices here)."""

    def sample(self, n: int) -> Any:
        """Draw ``n`` transitions."""
        raise Unsupported("sample is not supported")

    def prepare_sequences(self, num: int, length: int) -> None:
        """Untimed set-up before a timed ``sample_sequences(num, length)``."""

    def sample_sequences(self, num: int, length: int) -> Any:
        """Draw ``num`` runs of ``length`` consecutive steps (``num * length`` rows)."""
        raise Unsupported("sequence sampling is not supported")

    def update(self, batch: Any, priorities: torch.Tensor) -> None:
        """Give the rows of ``batch`` (the last ``sample``) these priorities; timed after
        ``sample`` in the prioritized scenario. A uniform sampler has nothing to update."""

    def load(self, path: str) -> None:
        """Load a buffer directory into this (empty) store."""
        raise Unsupported("load is not supported")

    def cached_bytes(self) -> int | None:
        """Bytes the store reports (or allocates) as its in-memory cache, if it has one."""
        return None

    def indexed(self) -> int | None:
        """Trajectories the store indexes."""
        return None

    def files(self) -> list[str]:
        """Files backing the store (dropped from the page cache for the cold case)."""
        return []

    def workers_peak_rss_mb(self) -> float | None:
        """Peak RSS summed over the store's worker processes (Ray shard actors), if it has any."""
        return None

    def close(self) -> None:
        """Release resources (and finish background work)."""


def split_label(label: str) -> tuple[str, str]:
    """``"ours[pt]"`` -> ``("ours", "pt")``; ``"torchrl_lazy"`` -> ``("torchrl_lazy", "")``."""
    if label.endswith("]") and "[" in label:
        name, variant = label[:-1].split("[", 1)
        return name, variant
    return label, ""


def module_for(label: str) -> ModuleType:
    """The module implementing a contender label."""
    name, _ = split_label(label)
    if name not in _BY_PREFIX:
        raise KeyError(f"unknown contender {label!r}")
    return importlib.import_module(f"{__name__}.{_BY_PREFIX[name]}")


def variant_of(label: str) -> str:
    """The variant a module is asked for: the bracket part, or the label itself (``torchrl_lazy``,
    ``pread_rows``) when a module implements several contenders."""
    name, variant = split_label(label)
    return variant or name
