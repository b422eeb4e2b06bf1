"""RLinf main's replay storage package: the buffer, its datasets, ``PriorityStore``, ``TrajectoryCache``.

Served by :mod:`rlinf_replay_buffer.rlinf_compat.storage_replay` (this checkout's ``rlinf/`` is a namespace
folder: an installed RLinf takes precedence over it; see docs/migration.md).
"""

from rlinf_replay_buffer.rlinf_compat.storage_replay import *  # noqa: F403
from rlinf_replay_buffer.rlinf_compat.storage_replay import __all__  # noqa: F401
