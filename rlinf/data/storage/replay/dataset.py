"""RLinf main's dataset module name.

Served by :mod:`rlinf_replay_buffer.rlinf_compat.dataset` (this checkout's ``rlinf/`` is a namespace
folder: an installed RLinf takes precedence over it; see docs/migration.md).
"""

from rlinf_replay_buffer.rlinf_compat.dataset import *  # noqa: F403
from rlinf_replay_buffer.rlinf_compat.dataset import __all__  # noqa: F401
