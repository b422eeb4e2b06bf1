"""RLinf main's module of ``Trajectory``.

Served by :mod:`rlinf_replay_buffer.rlinf_compat.types` (this checkout's ``rlinf/`` is a namespace
folder: an installed RLinf takes precedence over it; see docs/migration.md).
"""

from rlinf_replay_buffer.rlinf_compat.types import *  # noqa: F403
from rlinf_replay_buffer.rlinf_compat.types import __all__  # noqa: F401
