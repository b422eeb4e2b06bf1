"""Step through the trajectories of a replay buffer directory from the command line (RLinf's
``visualize_headless.py`` arguments).

    python toolkits/replay_buffer/visualize_headless.py --replay_dir logs/run/replay_buffer/rank_0

Draws the first trajectory to ``--output`` (``replay_buffer_viz.png`` by default), then reads
commands from standard input and re-draws after each: ``nt``/``pt`` next/previous trajectory,
``nb``/``pb`` next/previous env column, ``j <id>``, ``info``, ``q`` (or end of input). Each
picture shows every step of the trajectory, so RLinf's step commands have nothing to do. The
machinery is :mod:`rlinf_replay_buffer.tools.visualize_cli`.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:  # run as a script from a checkout
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rlinf_replay_buffer.tools.visualize_cli import headless_main as main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
