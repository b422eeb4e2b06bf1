"""A buffer spread over machines: shards as Ray actors (the ``ray`` extra).

:mod:`.client` is the facade (:class:`RayTrajectoryReplayBuffer`), :mod:`.shard` one shard,
:mod:`.shares` how checkpoints are spread over shards and a shard's directory replaced,
:mod:`.wire` how tensors travel. Only :mod:`.client` imports Ray.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RayTrajectoryReplayBuffer"]


def __getattr__(name: str) -> Any:
    if name == "RayTrajectoryReplayBuffer":
        from .client import RayTrajectoryReplayBuffer

        return RayTrajectoryReplayBuffer
    raise AttributeError(name)
