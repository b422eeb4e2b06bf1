"""The buffer's command line: load a directory, sample once, print the batch's keys.

``main(argv)`` parses arguments and calls :func:`sample_directory`; errors become one line on
stderr and exit status 1 (2 for bad usage).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch

from .buffer import Batch, TrajectoryReplayBuffer
from .errors import ReplayBufferError


def iter_leaves(batch: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """``("curr_obs.states", tensor)`` for every tensor of a (nested) batch, in order."""
    for key, value in batch.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from iter_leaves(value, prefix=f"{name}.")
        else:
            yield name, value


def sample_directory(
    load_path: str,
    num_chunks: int,
    cache_size: int = 5,
    enable_cache: bool = False,
    sample_window_size: int = 100,
    seed: int = 1234,
) -> tuple[Batch, dict[str, Any], float]:
    """Load ``load_path``, sample ``num_chunks`` transitions once.

    Returns:
        ``(batch, stats, seconds)``: the batch, the buffer's stats after loading and the time
        the ``sample`` call took, in seconds.
    """
    with TrajectoryReplayBuffer(
        seed=seed,
        enable_cache=enable_cache,
        cache_size=cache_size,
        sample_window_size=sample_window_size,
        auto_save=False,
    ) as buffer:
        buffer.load_checkpoint(load_path)
        start = time.perf_counter()
        batch = buffer.sample(num_chunks)
        seconds = time.perf_counter() - start
        return batch, buffer.get_stats(), seconds


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``--help`` text)."""
    p = argparse.ArgumentParser(
        prog="python rlinf/data/replay_buffer.py",
        description="Load a replay buffer directory, sample once, print every key with its shape and "
        "dtype. Subcommand: `verify PATH [--repair]` checks (and repairs) a buffer directory.",
    )
    p.add_argument("--load-path", required=True, help="buffer directory (checkpoint or auto-save)")
    p.add_argument("--num-chunks", type=int, default=1024, help="transitions to sample (>= 1)")
    p.add_argument("--cache-size", type=int, default=5, help="trajectories to cache")
    p.add_argument("--enable-cache", action="store_true", help="enable the trajectory cache")
    p.add_argument(
        "--sample-window-size",
        type=int,
        default=100,
        help="sample from the most recent N trajectories (0: all)",
    )
    p.add_argument("--seed", type=int, default=1234, help="sampling seed")
    return p


def _verify(argv: list[str]) -> int:
    from .tools.verify_cli import main as verify_main

    return verify_main(argv)


#: ``python -m rlinf.data.replay_buffer NAME ...``: subcommands besides the seed's sampling run
SUBCOMMANDS = {"verify": _verify}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status.

    ``verify PATH ...`` runs the verify tool; any other arguments are the seed's sampling run.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    try:
        batch, stats, seconds = sample_directory(
            args.load_path,
            args.num_chunks,
            cache_size=args.cache_size,
            enable_cache=args.enable_cache,
            sample_window_size=args.sample_window_size,
            seed=args.seed,
        )
    except (ReplayBufferError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        report(args.load_path, args.num_chunks, batch, stats, seconds)
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def report(load_path: str, num_chunks: int, batch: Batch, stats: dict[str, Any], seconds: float) -> None:
    """Print what was loaded and every key of the batch with its shape and dtype."""
    print(
        f"loaded {stats['size']} trajectories ({stats['total_samples']} transitions) from "
        f"{load_path}; window {stats['window_trajectories']} trajectories"
    )
    print(f"sampled {num_chunks} transitions in {seconds * 1e3:.2f} ms")
    width = max(len(name) for name, _ in iter_leaves(batch))
    for name, tensor in iter_leaves(batch):
        print(f"  {name:<{width}}  shape={list(tensor.shape)}  dtype={tensor.dtype}")
