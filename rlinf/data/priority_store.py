"""RLinf 0.3's ``PriorityStore`` module name.

Served by :mod:`rlinf_replay_buffer.rlinf_compat.priority_store` (this checkout's ``rlinf/`` is a namespace
folder: an installed RLinf takes precedence over it; see docs/migration.md).
"""

from rlinf_replay_buffer.rlinf_compat.priority_store import *  # noqa: F403
from rlinf_replay_buffer.rlinf_compat.priority_store import __all__  # noqa: F401
