"""Public entry point: ``from rlinf.data.replay_buffer import TrajectoryReplayBuffer``.

Also a command-line tool (the machinery lives in :mod:`rlinf.data.replay`)::

    python rlinf/data/replay_buffer.py --load-path /path/to/buffer --num-chunks 1024 \\
        --cache-size 10 --enable-cache

loads a buffer directory, samples once and prints every key of the batch with its shape and
dtype. ``python -m rlinf.data.replay_buffer`` is the same command.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:  # run as a script: import the package instead
    _root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path[0] = _root

from rlinf.data.replay import *  # noqa: E402, F403 - the public names of the package
from rlinf.data.replay import __all__ as _PUBLIC  # noqa: E402

__all__ = [*_PUBLIC, "main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line (see :mod:`rlinf.data.replay.cli`); returns the exit status."""
    from rlinf.data.replay.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
