"""The sharded buffer under the name ``rlinf.data.ray_replay_buffer`` (this library's own name
for it is ``from rlinf_replay_buffer import RayTrajectoryReplayBuffer``; needs the ``ray`` extra)."""

from __future__ import annotations

from ..distributed.client import RayTrajectoryReplayBuffer
from ..distributed.routing import shard_of_key
from ..errors import ShardRestartedWarning, ShardUnavailableError

__all__ = ["RayTrajectoryReplayBuffer", "ShardRestartedWarning", "ShardUnavailableError", "shard_of_key"]
