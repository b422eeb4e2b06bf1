"""Draw a trajectory of a replay buffer directory (RLinf's ``visualize.py`` arguments).

    python toolkits/replay_buffer/visualize.py --replay_dir logs/run/replay_buffer/rank_0
    python toolkits/replay_buffer/visualize.py --replay_dir DIR --camera wrist_images \\
        --save_image --output viz.png --no_display

No interactive window is opened (where RLinf's viewer opens one, this one saves the picture to
``--output``, ``replay_buffer_viz.png`` by default, and says so): the first trajectory, env 0,
every step at once. The machinery is :mod:`rlinf_replay_buffer.tools.visualize_cli` (module
docstring: the differences from RLinf's viewer) and :func:`rlinf_replay_buffer.tools.view.render_trajectory`.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:  # run as a script from a checkout
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rlinf_replay_buffer.tools.visualize_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
