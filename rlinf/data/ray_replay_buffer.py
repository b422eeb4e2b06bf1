"""The sharded buffer under an ``rlinf.data`` name (this library's own: ``from rlinf_replay_buffer
import RayTrajectoryReplayBuffer``).

Served by :mod:`rlinf_replay_buffer.rlinf_compat.ray_replay_buffer` (this checkout's ``rlinf/`` is a namespace
folder: an installed RLinf takes precedence over it; see docs/migration.md).
"""

from rlinf_replay_buffer.rlinf_compat.ray_replay_buffer import *  # noqa: F403
from rlinf_replay_buffer.rlinf_compat.ray_replay_buffer import __all__  # noqa: F401
