"""Merge rank_* replay buffer directories, or split off the first N trajectories.

    python toolkits/replay_buffer/merge_or_split_replay_buffer.py \\
        --source-path /path/to/buffer --save-path /path/to/merged --copy
    python toolkits/replay_buffer/merge_or_split_replay_buffer.py \\
        --source-path /path/to/buffer --save-path /path/to/split --split-count 30 --copy

The machinery is :func:`rlinf_replay_buffer.tools.merge_or_split`.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:  # run as a script from a checkout
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rlinf_replay_buffer.tools.merge_split_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
