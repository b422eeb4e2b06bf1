"""Public entry point of the sharded buffer (``pip install 'rlinf-replay-buffer[ray]'``)::

    import ray
    from rlinf.data.ray_replay_buffer import RayTrajectoryReplayBuffer

    ray.init()
    buffer = RayTrajectoryReplayBuffer("/data/buffer", num_shards=4)

The machinery lives in :mod:`rlinf.data.replay.distributed`.
"""

from __future__ import annotations

from rlinf.data.replay.distributed.client import RayTrajectoryReplayBuffer
from rlinf.data.replay.distributed.routing import shard_of_key
from rlinf.data.replay.errors import ShardRestartedWarning, ShardUnavailableError

__all__ = ["RayTrajectoryReplayBuffer", "ShardRestartedWarning", "ShardUnavailableError", "shard_of_key"]
