"""The command line: ``rlinf-buffer`` (also ``python -m rlinf_replay_buffer``).

Subcommands, each a thin layer over one library function:

=========  ===================================================================================
``info``   :func:`.tools.info.describe_directory`: trajectories, transitions, bytes, fields
``sample`` :func:`sample_directory`: load, sample once, print keys with shapes and dtypes
``merge``  :func:`.tools.merge_split.merge_or_split`: merge ``rank_*`` directories
``split``  :func:`.tools.merge_split.merge_or_split` with ``split_count``
``verify`` :func:`.tools.verify.verify_directory`: check (and ``--repair``) a directory
``view``   :mod:`.tools.view`: a picture of a trajectory or a sampled batch
``export`` :func:`.tools.parquet.export_parquet`: a buffer as one Parquet file
``import`` :func:`.tools.parquet.import_parquet`: a Parquet export back into a buffer
=========  ===================================================================================

The seed's form, ``python rlinf/data/replay_buffer.py --load-path PATH [--num-chunks N ...]``, is
the ``sample`` subcommand. Errors are one line on stderr and exit status 1 (2 for bad usage);
progress bars are drawn on stderr when it is a terminal, unless ``--quiet``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .buffer import Batch, TrajectoryReplayBuffer
from .errors import ReplayBufferError
from .tools.progress import progress_bar

PROG = "rlinf-buffer"
_WIDTH = 100  # help text width, fixed so that docs/cli.md matches --help everywhere


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, width=_WIDTH, max_help_position=32)


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
    seq_len: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Batch, dict[str, Any], float]:
    """Load ``load_path``, sample ``num_chunks`` transitions once (or ``num_chunks`` runs of
    ``seq_len`` steps).

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
        buffer.load_checkpoint(load_path, progress=progress)
        start = time.perf_counter()
        batch = buffer.sample(num_chunks) if seq_len is None else buffer.sample_sequences(num_chunks, seq_len)
        seconds = time.perf_counter() - start
        return batch, buffer.get_stats(), seconds


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


# -- parsers ---------------------------------------------------------------------------------------
def _sample_options(p: argparse.ArgumentParser) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    """The seed's form: ``--load-path PATH [--num-chunks N ...]`` (the ``sample`` subcommand)."""
    p = argparse.ArgumentParser(
        prog="python rlinf/data/replay_buffer.py",
        description="Load a replay buffer directory, sample once, print every key with its shape and "
        f"dtype. The other tools are subcommands: `{PROG} --help`.",
        formatter_class=_formatter,
    )
    p.add_argument("--load-path", required=True, help="buffer directory (checkpoint or auto-save)")
    _sample_options(p)
    return p


def _add(sub: Any, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=description, formatter_class=_formatter)


def build_tool_parser() -> argparse.ArgumentParser:
    """The ``rlinf-buffer`` parser with every subcommand."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect, check, reshape and convert replay buffer directories. The seed's form "
        "`--load-path PATH ...` (no subcommand) is the same as `sample`.",
        formatter_class=_formatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = _add(
        sub,
        "info",
        "summarize a buffer directory",
        "Print trajectories, transitions, bytes, fields "
        "(shape and dtype), model versions and the format of a buffer directory; for a folder "
        "of rank_* directories (a sharded buffer or per-rank checkpoint), each rank and the totals.",
    )
    s.add_argument("path", help="the buffer directory, or a folder of rank_* directories")
    _output_options(s)

    s = _add(
        sub,
        "sample",
        "load a directory and sample once",
        "Load a buffer directory, sample once and print every key of the batch with its shape and dtype.",
    )
    s.add_argument("path", help="the buffer directory")
    _sample_options(s)
    s.add_argument("--seq-len", type=int, default=None, help="sample --num-chunks runs of this many steps")
    _output_options(s)

    for name, text in (
        ("merge", "merge rank_* directories into one"),
        ("split", "keep the first N trajectories"),
    ):
        s = _add(
            sub,
            name,
            text,
            "Merge the rank_* buffer directories under SOURCE (interleaved by original "
            "trajectory id, renumbered from 0) into SAVE_PATH"
            + (", keeping only the first --split-count trajectories" if name == "split" else "")
            + ". Files are moved "
            "unless --copy is given; the source stays loadable until the output is complete.",
        )
        s.add_argument("--source-path", required=True, help="a buffer directory or a folder of rank_* ones")
        s.add_argument("--save-path", required=True, help="destination (must not exist or be empty)")
        if name == "split":
            s.add_argument("--split-count", type=int, required=True, help="trajectories to keep (>= 1)")
        s.add_argument("--copy", action="store_true", help="copy files instead of moving them")
        _output_options(s)

    s = _add(
        sub,
        "verify",
        "check a directory (and repair it)",
        "Check a buffer directory: the index "
        "against the files, checksums, shapes and alignment of every trajectory, metadata, "
        "leftovers of interrupted writes; every rank of a folder of rank_* directories. Exits 1 "
        "if problems remain.",
    )
    s.add_argument("path", help="the buffer directory, or a folder of rank_* directories")
    s.add_argument(
        "--repair", action="store_true", help="quarantine bad trajectories, rewrite a consistent index"
    )
    _output_options(s)

    s = _add(
        sub,
        "view",
        "draw a trajectory or a sampled batch",
        "Render a trajectory (camera frames over "
        "time, and actions, rewards and done flags on the same time axis) or a sampled batch as a PNG.",
    )
    s.add_argument("path", help="the buffer directory")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--trajectory", type=int, help="the trajectory id to draw")
    which.add_argument("--sample", type=int, metavar="N", help="draw N sampled transitions instead")
    s.add_argument("--out", required=True, help="the PNG file to write")
    s.add_argument("--env", type=int, default=0, help="env column of the trajectory (default 0)")
    s.add_argument("--seed", type=int, default=0, help="sampling seed for --sample")
    _output_options(s)

    s = _add(
        sub,
        "export",
        "write a buffer as one Parquet file",
        "Export a buffer directory to Parquet: one "
        "row per transition, image fields as PNG bytes, the fields described in the file's metadata.",
    )
    s.add_argument("path", help="the buffer directory")
    s.add_argument("--out", required=True, help="the .parquet file to write")
    _output_options(s)

    s = _add(
        sub,
        "import",
        "read a Parquet export back into a buffer",
        "Rebuild a buffer directory from a Parquet file written by `export`.",
    )
    s.add_argument("parquet", help="the .parquet file")
    s.add_argument(
        "--save-path", required=True, help="the buffer directory to create (must not exist or be empty)"
    )
    s.add_argument(
        "--trajectory-format", default="pt", choices=("pt", "pkl", "segment"), help="format of its files"
    )
    _output_options(s)
    return p


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


# -- subcommands -----------------------------------------------------------------------------------
def _as_json(obj: Any) -> str:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = obj.to_json() if hasattr(obj, "to_json") else dataclasses.asdict(obj)
    return json.dumps(obj, indent=2, default=str)


def _ranks(path: str) -> list[str] | None:
    """The ``rank_*`` buffer directories of a folder that is not itself a buffer directory
    (a sharded buffer or a per-rank checkpoint), else ``None``."""
    from .directory import is_buffer_directory
    from .tools.merge_split import find_sources

    if not os.path.isdir(path) or is_buffer_directory(path):
        return None
    try:
        return find_sources(path)
    except ReplayBufferError:
        return None


def _info(args: argparse.Namespace) -> int:
    from .tools.info import describe_directory, format_info

    ranks = _ranks(args.path)
    with progress_bar("reading index", args.quiet) as progress:
        infos = [describe_directory(p, progress=progress) for p in ranks or [args.path]]
    if ranks is None:
        print(_as_json(infos[0]) if args.json else format_info(infos[0]))
        return 0
    totals = {
        "path": os.path.abspath(args.path),
        "ranks": len(infos),
        "trajectories": sum(i.trajectories for i in infos),
        "transitions": sum(i.transitions for i in infos),
        "bytes": sum(i.bytes for i in infos),
    }
    if args.json:
        print(json.dumps({**totals, "rank_info": [i.to_json() for i in infos]}, indent=2, default=str))
        return 0
    print(
        f"{totals['path']}: {totals['ranks']} ranks, {totals['trajectories']} trajectories, "
        f"{totals['transitions']} transitions, {totals['bytes'] / (1 << 20):.1f} MiB"
    )
    for info in infos:
        print()
        print(format_info(info))
    return 0


def _sample(args: argparse.Namespace) -> int:
    with progress_bar("loading", args.quiet) as progress:
        batch, stats, seconds = sample_directory(
            args.path,
            args.num_chunks,
            cache_size=args.cache_size,
            enable_cache=args.enable_cache,
            sample_window_size=args.sample_window_size,
            seed=args.seed,
            seq_len=args.seq_len,
            progress=progress,
        )
    if args.json:
        leaves = {name: {"shape": list(t.shape), "dtype": str(t.dtype)} for name, t in iter_leaves(batch)}
        print(_as_json({"stats": stats, "milliseconds": seconds * 1e3, "keys": leaves}))
    else:
        report(args.path, args.num_chunks, batch, stats, seconds)
    return 0


def _merge(args: argparse.Namespace) -> int:
    from .tools.merge_split import merge_or_split

    with progress_bar(args.command, args.quiet) as progress:
        result = merge_or_split(
            args.source_path,
            args.save_path,
            split_count=getattr(args, "split_count", None),
            copy=args.copy,
            progress=progress,
        )
    if args.json:
        print(_as_json(result))
        return 0
    verb = "moved" if result.moved else "copied"
    print(
        f"{verb} {result.trajectories} trajectories ({result.transitions} transitions) from "
        f"{len(result.sources)} source(s) to {result.save_path}"
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    ranks = _ranks(args.path)
    if ranks is not None:  # a sharded buffer or per-rank checkpoint: each rank on its own
        codes = []
        outs = []
        for path in ranks:
            code, out = _verify_one(path, args)
            codes.append(code)
            outs.append(out)
        if args.json:
            print(json.dumps({"ok": not any(codes), "ranks": outs}, indent=2))
        else:
            print("\n".join(outs))
        return 1 if any(codes) else 0
    code, out = _verify_one(args.path, args)
    print(out)
    return code


def _verify_one(path: str, args: argparse.Namespace) -> tuple[int, Any]:
    """Verify (and repair) one buffer directory: ``(exit code, JSON dict or text)``."""
    from .tools.verify import format_report, verify_directory

    with progress_bar("verifying", args.quiet) as progress:
        report_ = verify_directory(path, repair=args.repair, progress=progress)
    after = verify_directory(path) if report_.repaired else None
    final = after if after is not None else report_
    if args.json:
        out = report_.to_json()
        if after is not None:
            out["after_repair"] = after.to_json()
        return (0 if final.ok else 1), (out if path != args.path else json.dumps(out, indent=2))
    lines = [format_report(report_)]
    if after is not None:
        lines += ["after repair:", format_report(after)]
    return (0 if final.ok else 1), "\n".join(lines)


def _view(args: argparse.Namespace) -> int:
    from .tools import view

    if args.trajectory is not None:
        result = view.render_trajectory(args.path, args.trajectory, args.out, env=args.env)
    else:
        result = view.render_sample(args.path, args.sample, args.out, seed=args.seed)
    if args.json:
        print(_as_json(result))
    else:
        print(f"wrote {result.out} ({result.width}x{result.height} px)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .tools.parquet import export_parquet

    with progress_bar("exporting", args.quiet) as progress:
        result = export_parquet(args.path, args.out, progress=progress)
    print(
        _as_json(result) if args.json else f"exported {result.transitions} transitions to {result.out_path}"
    )
    return 0


def _import(args: argparse.Namespace) -> int:
    from .tools.parquet import import_parquet

    with progress_bar("importing", args.quiet) as progress:
        result = import_parquet(
            args.parquet, args.save_path, trajectory_format=args.trajectory_format, progress=progress
        )
    if args.json:
        print(_as_json(result))
    else:
        print(
            f"imported {result.trajectories} trajectories ({result.transitions} transitions) "
            f"to {result.dest_path}"
        )
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "info": _info,
    "sample": _sample,
    "merge": _merge,
    "split": _merge,
    "verify": _verify,
    "view": _view,
    "export": _export,
    "import": _import,
}


def _run(call: Callable[[], int]) -> int:
    try:
        return call()
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ReplayBufferError, OSError, ImportError) as exc:
        message = " ".join(str(exc).split())  # one line, whatever the library said
        print(f"error: {message}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rlinf-buffer``, ``python -m rlinf_replay_buffer`` and the seed's
    ``python rlinf/data/replay_buffer.py``; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("--") and argv[0] not in ("--help",):  # the seed's form
        args = build_parser().parse_args(argv)
        args.path, args.seq_len, args.json, args.quiet = args.load_path, None, False, False
        return _run(lambda: _sample(args))
    args = build_tool_parser().parse_args(argv)
    return _run(lambda: COMMANDS[args.command](args))


def reference_markdown() -> str:
    """``docs/cli.md``: the ``--help`` of every command (a test keeps the file equal to this)."""
    parts = [
        "# Command-line reference",
        "",
        'Generated from `--help` (`python -c "from rlinf_replay_buffer.cli import reference_markdown; '
        "print(reference_markdown(), end='')\" > docs/cli.md`); `tests/test_cli.py` checks it is current.",
        "",
    ]
    tool = build_tool_parser()
    sections = [
        (PROG, tool.format_help()),
        ("python rlinf/data/replay_buffer.py", build_parser().format_help()),
    ]
    sub = next(a for a in tool._actions if isinstance(a, argparse._SubParsersAction))
    sections[1:1] = [(f"{PROG} {name}", parser.format_help()) for name, parser in sub.choices.items()]
    for title, text in sections:
        parts += [f"## `{title}`", "", "```text", text.rstrip(), "```", ""]
    return "\n".join(parts)
