"""The buffer's settings: validated once, at construction, and fixed afterwards.

:class:`BufferSettings` is a frozen dataclass holding every constructor argument of
:class:`~.buffer.TrajectoryReplayBuffer` except the components (the rate limiter). The buffer
reads its settings from it and exposes each as a read-only attribute; assigning one raises
:class:`AttributeError` saying how to get the effect. The two that may change while a buffer
runs are changed through the buffer, which applies them properly: ``sample_window_size`` (a new
frozen object replaces the old) and ``priority_beta`` (owned by the prioritized sampler).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, fields
from typing import Any

from . import formats
from .errors import InvalidArgumentError
from .validate import check_bool, check_int


@dataclass(frozen=True)
class BufferSettings:
    """What a buffer was built with. See :class:`~.buffer.TrajectoryReplayBuffer` for each.

    Attributes:
        seed: seed of the buffer's ``torch.Generator`` (int >= 0; drawn at random if given
            as ``None``).
        enable_cache, cache_size: keep the ``cache_size`` newest trajectories in memory
            (``auto_save`` only; without it the memory is the storage).
        sample_window_size: trajectories sampled from (the newest); 0: all.
        auto_save: write every trajectory to ``auto_save_path`` (absolute; ``None`` without
            ``auto_save``) in ``trajectory_format`` (``"pt"``, ``"pkl"`` or ``"segment"``).
        cache_max_bytes, reserve_bytes: bytes bound and address-space reservation of the ring.
        check_finite: reject NaN and infinite floats.
        max_pending_bytes: bytes waiting for the background writer before adds wait.
        on_corrupt: ``"raise"`` or ``"skip"`` a trajectory whose data fails its checksum.
        max_trajectories, max_transitions, max_disk_bytes: capacity (``None``: unbounded).
        prioritized, priority_alpha, priority_beta, priority_eps: prioritized sampling (the
            three numbers are checked by the prioritized sampler; ``priority_beta`` here is
            the initial value, the buffer's ``priority_beta`` the current one).
        max_staleness: freshness bound in policy updates (``None``: none).
        rate_limit_timeout: seconds a rate-limited add or sample waits at most (``None``: no
            bound).
        sampling_copies: give ``pt``/``pkl`` trajectories read from their files a sampling copy
            (:mod:`.sampling_copy`), made in ``sampling_copy_dir`` (absolute; ``None``: the
            system's temporary directory).
        dedup_next_obs: read ``next_obs`` rows equal to the next step's ``curr_obs`` from
            ``curr_obs`` instead of storing them twice (:mod:`.dedup`), in the in-memory ring
            and in the ``segment`` files written from now on (auto-save segments and
            ``save_checkpoint(..., trajectory_format="segment")``: format version 2, see
            :mod:`.formats.segment`; off: version 1). Batches, trajectories read back and
            ``pt``/``pkl`` files are the same either way; segments of either version are read
            whatever the setting, and sampling copies always store observations once.
    """

    seed: int = 1234
    enable_cache: bool = True
    cache_size: int = 5
    sample_window_size: int = 100
    auto_save: bool = False
    auto_save_path: str | None = None
    trajectory_format: str = "pt"
    cache_max_bytes: int | None = None
    check_finite: bool = False
    reserve_bytes: int | None = None
    max_pending_bytes: int = 64 << 20
    on_corrupt: str = "raise"
    max_trajectories: int | None = None
    max_transitions: int | None = None
    max_disk_bytes: int | None = None
    prioritized: bool = False
    priority_alpha: float = 0.6
    priority_beta: float = 0.4
    priority_eps: float = 1e-6
    max_staleness: int | None = None
    rate_limit_timeout: float | None = None
    sampling_copies: bool = True
    sampling_copy_dir: str | None = None
    dedup_next_obs: bool = True

    @classmethod
    def of(cls, **kwargs: Any) -> BufferSettings:
        """Validate constructor arguments (names as the buffer's) into settings.

        Raises:
            InvalidArgumentError: naming the first bad argument and what it accepts.
        """
        v = dict(kwargs)
        if v.get("seed") is None:
            v["seed"] = random.SystemRandom().randrange(2**63)
        for name in ("seed", "cache_size", "sample_window_size"):
            v[name] = check_int(name, v[name], 0)
        for name in (
            "enable_cache",
            "auto_save",
            "check_finite",
            "prioritized",
            "sampling_copies",
            "dedup_next_obs",
        ):
            v[name] = check_bool(name, v[name])
        for name in (
            "cache_max_bytes",
            "reserve_bytes",
            "max_trajectories",
            "max_transitions",
            "max_disk_bytes",
        ):
            v[name] = check_int(name, v[name], 1, allow_none=True)
        v["max_pending_bytes"] = check_int("max_pending_bytes", v["max_pending_bytes"], 1)
        v["max_staleness"] = check_int("max_staleness", v["max_staleness"], 0, allow_none=True)
        v["trajectory_format"] = formats.check_format(v["trajectory_format"])
        if v["on_corrupt"] not in ("raise", "skip"):
            raise InvalidArgumentError(f"on_corrupt must be 'raise' or 'skip', got {v['on_corrupt']!r}")
        if v["prioritized"] and v["max_staleness"] is not None:
            raise InvalidArgumentError(
                "prioritized=True and max_staleness cannot be combined; use sample_window_size to "
                "bound what prioritized sampling draws from"
            )
        timeout = v["rate_limit_timeout"]
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0
        ):
            raise InvalidArgumentError(f"rate_limit_timeout must be None or a number >= 0, got {timeout!r}")
        where = v.get("sampling_copy_dir")
        if where is not None:
            if not isinstance(where, str | os.PathLike) or not os.path.isdir(where):
                raise InvalidArgumentError(
                    f"sampling_copy_dir must be None or an existing directory, got {where!r}"
                )
            v["sampling_copy_dir"] = os.path.abspath(os.fspath(where))
        path = v.pop("auto_save_path", "")
        if v["auto_save"]:
            if not isinstance(path, str | os.PathLike) or not os.fspath(path):
                raise InvalidArgumentError(
                    "auto_save=True needs auto_save_path, the directory to write trajectories to"
                )
            v["auto_save_path"] = os.path.abspath(os.fspath(path))
        return cls(**v)

    @property
    def ring_limit(self) -> int | None | bool:
        """Trajectories the in-memory ring holds: the window without ``auto_save`` (``None``:
        unbounded), ``cache_size`` with a cache, ``False`` for no ring at all."""
        if not self.auto_save:
            return self.sample_window_size or None
        if self.enable_cache and self.cache_size > 0:
            return self.cache_size
        return False

    @property
    def warm_limit(self) -> int:
        """Trajectories of a loaded or reopened directory read into memory: the newest
        ``cache_size`` with a cache, else none. The others are read from their files on demand,
        with or without ``auto_save``, so memory follows the cache settings."""
        return self.cache_size if self.enable_cache else 0

    @property
    def bounded(self) -> bool:
        """Whether a capacity limit is set."""
        return (self.max_trajectories, self.max_transitions, self.max_disk_bytes) != (None, None, None)


NAMES = tuple(f.name for f in fields(BufferSettings))


def read_only(name: str) -> property:
    """A read-only buffer attribute reading ``settings.<name>``; assigning it explains why not."""

    def get(self: Any) -> Any:
        return getattr(self.settings, name)

    def refuse(self: Any, value: Any) -> None:
        raise AttributeError(
            f"{name} is fixed when the buffer is built; build a new buffer with {name}={value!r}"
            + (
                " (or pass trajectory_format= to save_checkpoint for one checkpoint)"
                if name == "trajectory_format"
                else ""
            )
        )

    return property(get, refuse, doc=f"The ``{name}`` the buffer was built with (read-only).")
