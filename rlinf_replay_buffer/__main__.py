"""``python -m rlinf_replay_buffer``: the same command line as ``rlinf-buffer``."""

import sys

from .cli import main

sys.exit(main())
