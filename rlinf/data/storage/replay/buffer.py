"""RLinf main's buffer module: ``from rlinf.data.storage.replay.buffer import
TrajectoryReplayBuffer`` and ``python rlinf/data/storage/replay/buffer.py --load-path PATH ...``.

Served by :mod:`rlinf_replay_buffer.rlinf_compat.replay_buffer` (this checkout's
``rlinf/`` is a namespace folder: an installed RLinf takes precedence over it; see docs/migration.md).
As a script it runs the ``sample`` command of :mod:`rlinf_replay_buffer.cli` (the other tools:
``rlinf-buffer --help``).
"""

import os
import sys

if __name__ == "__main__" and not __package__:  # run as a script: import from this checkout
    sys.path[0] = os.path.abspath(os.path.join(os.path.dirname(__file__), *[os.pardir] * 4))

from rlinf_replay_buffer.rlinf_compat.replay_buffer import *  # noqa: E402, F403
from rlinf_replay_buffer.rlinf_compat.replay_buffer import __all__, main  # noqa: E402, F401

if __name__ == "__main__":
    sys.exit(main())
