"""What ``rlinf.data.replay_buffer`` (RLinf 0.3) and ``rlinf.data.storage.replay.buffer`` (RLinf
main) hold, from this library: the buffer, ``TrajectoryCache``, ``PriorityStore``, ``Trajectory``,
and ``main``, the seed's command line (``python rlinf/data/replay_buffer.py --load-path PATH``).
"""

from __future__ import annotations

from .. import *  # noqa: F403 - the package's public names
from .. import __all__ as _PACKAGE_PUBLIC
from ..cli import main
from .stores import PriorityStore, TrajectoryCache, clone_dict_of_tensors

__all__ = [*_PACKAGE_PUBLIC, "PriorityStore", "TrajectoryCache", "clone_dict_of_tensors", "main"]
