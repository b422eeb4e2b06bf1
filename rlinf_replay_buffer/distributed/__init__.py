"""A buffer spread over machines: shards as Ray actors (the ``ray`` extra).

:mod:`.client` is the facade (:class:`RayTrajectoryReplayBuffer`), :mod:`.shard` one shard,
:mod:`.routing` which shard an add goes to, :mod:`.batches` how draws are split over shards and
their rows laid into one batch, :mod:`.shares` how checkpoints are spread over shards and a
shard's directory replaced, :mod:`.wire` how tensors travel. Only :mod:`.client` imports Ray.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RayTrajectoryReplayBuffer"]


def __getattr__(name: str) -> Any:
    if name == "RayTrajectoryReplayBuffer":
        from .client import RayTrajectoryReplayBuffer

        return RayTrajectoryReplayBuffer
    raise AttributeError(name)
