"""Command line of the merge/split tool: ``main(argv)`` calls :func:`merge_or_split`.

Errors are one line on stderr with exit status 1, worded with this tool's flags
(``--save-path``, ``--split-count``), as ``rlinf-buffer merge`` and ``split`` word them.
"""

from __future__ import annotations

import argparse
import sys

from ..cli import FLAG_NAMES, command_line_message
from ..errors import ReplayBufferError
from .merge_split import merge_or_split


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``--help`` text)."""
    p = argparse.ArgumentParser(
        prog="python toolkits/replay_buffer/merge_or_split_replay_buffer.py",
        allow_abbrev=False,
        description="Merge the rank_* buffer directories under --source-path into one buffer "
        "(interleaved by original trajectory id, renumbered from 0), or with --split-count N "
        "keep only the first N trajectories. Files are moved unless --copy is given; the "
        "source stays loadable until the destination is complete and verified.",
    )
    p.add_argument(
        "--source-path",
        required=True,
        help="a buffer directory, or a folder holding rank_0, rank_1, ... buffer directories",
    )
    p.add_argument(
        "--save-path",
        required=True,
        help="the buffer directory to create (must not exist, or be empty; see --overwrite)",
    )
    p.add_argument(
        "--split-count", type=int, default=None, metavar="N", help="keep the first N trajectories (>= 1)"
    )
    p.add_argument("--copy", action="store_true", help="copy the files instead of moving them")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the buffer directory at --save-path if there is one (atomically, once the "
        "new one is complete; anything else there is never replaced)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        result = merge_or_split(
            args.source_path,
            args.save_path,
            split_count=args.split_count,
            copy=args.copy,
            overwrite=args.overwrite,
        )
    except (ReplayBufferError, OSError) as exc:
        print(f"error: {command_line_message(str(exc), FLAG_NAMES['split'])}", file=sys.stderr)
        return 1
    verb = "moved" if result.moved else "copied"
    print(
        f"{verb} {result.trajectories} trajectories ({result.transitions} transitions) from "
        f"{len(result.sources)} source(s) to {result.save_path}"
    )
    for src in result.sources:
        n = sum(1 for s, _ in result.origin if s == src)
        print(f"  {src}: {n} trajectories")
    return 0
