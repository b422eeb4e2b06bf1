"""The command line: ``rlinf-buffer`` (also ``python -m rlinf_replay_buffer``).

Subcommands, each a thin layer over one library function:

=========  ===================================================================================
``info``   :func:`.tools.info.describe_directory`: trajectories, transitions, bytes, fields
           (``--stats``: :func:`.tools.stats.field_stats`, per-field statistics)
``sample`` :func:`sample_directory`: load, sample once, print keys with shapes and dtypes
``merge``  :func:`.tools.merge_split.merge_or_split`: merge ``rank_*`` directories
``split``  :func:`.tools.merge_split.merge_or_split` with ``split_count``
``verify`` :func:`.tools.verify.verify_directory`: check (and ``--repair``) a directory
``view``   :mod:`.tools.view`: a picture of a trajectory or a sampled batch, or a video of a
           trajectory
``export`` :func:`.tools.parquet.export_parquet`: a buffer as one Parquet file
           (``--format lerobot``: :func:`.tools.lerobot.export_lerobot`, a LeRobot dataset)
``import`` :func:`.tools.parquet.import_parquet`: a Parquet export back into a buffer
           (``--format lerobot``: :func:`.tools.lerobot.import_lerobot`, from a LeRobot dataset)
=========  ===================================================================================

RLinf's legacy form, ``python rlinf/data/replay_buffer.py --load-path PATH [--num-chunks N ...]``
(no subcommand), is the ``sample`` subcommand. ``--version`` prints the package version. Errors
are one line on stderr and exit status 1 (2 for bad usage); library messages that name a Python
argument (``overwrite=True``, ``seq_len``) are reworded with the flag that sets it
(:func:`command_line_message`). ``--json`` prints one object whose keys are listed in
:data:`JSON_KEYS` (the "JSON output" section of ``docs/cli.md``). Progress bars are drawn on
stderr when it is a terminal, unless ``--quiet``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from . import __version__
from .buffer import Batch, TrajectoryReplayBuffer
from .errors import InvalidArgumentError, ReplayBufferError
from .tools.progress import progress_bar

PROG = "rlinf-buffer"
#: what ``export`` writes and ``import`` reads (``--format``)
FORMATS = ("parquet", "lerobot")
#: ``export``'s options for ``--format lerobot`` only
LEROBOT_OPTIONS = ("fps", "task", "video", "robot_type")
LEGACY_PROG = "python rlinf/data/replay_buffer.py"
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
    pad: bool = False,
) -> tuple[Batch, dict[str, Any], float]:
    """Load ``load_path``, sample ``num_chunks`` transitions once (or ``num_chunks`` runs of
    ``seq_len`` steps, zero-padded past episode ends with ``pad``).

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
        if seq_len is None:
            batch = buffer.sample(num_chunks)
        else:
            batch = buffer.sample_sequences(num_chunks, seq_len, pad=pad)
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


# -- error messages ----------------------------------------------------------------------------------
_EMPTY_WINDOW = "add trajectories or load a checkpoint first (is_ready() tells when sampling is possible)"

#: per subcommand: a word of the library's messages (a Python argument name, ``overwrite=True``)
#: -> the command-line flag that sets it. The legacy form uses ``sample``'s.
FLAG_NAMES: dict[str, dict[str, str]] = {
    "sample": {
        "num_chunks": "--num-chunks",
        "num_sequences": "--num-chunks",
        "seq_len": "--seq-len",
        "pad=True": "--pad",
        "cache_size": "--cache-size",
        "sample_window_size": "--sample-window-size",
        "seed": "--seed",
        _EMPTY_WINDOW: "the buffer directory is empty",
    },
    "merge": {"split_count": "--split-count", "save path": "--save-path", "overwrite=True": "--overwrite"},
    "split": {"split_count": "--split-count", "save path": "--save-path", "overwrite=True": "--overwrite"},
    "view": {
        "trajectory id": "--trajectory",
        "the directory holds ids": "--trajectory takes one of the ids",
        "num": "--sample",
        "seed": "--seed",
        "env": "--env",
        "out": "--out",
        "fps": "--fps",
        _EMPTY_WINDOW: "the buffer directory is empty",
    },
    "export": {
        "out_path": "--out",
        "overwrite=True": "--overwrite",
        "give the path of the Parquet file": "give --out the path of the Parquet file",
        "fps": "--fps",
        "task": "--task",
        "robot_type": "--robot-type",
    },
    "import": {
        "dest_path": "--save-path",
        "trajectory_format": "--trajectory-format",
        "empty destination": "empty --save-path",
        "overwrite=True": "--overwrite",
    },
}


def command_line_message(message: str, flags: Mapping[str, str]) -> str:
    """``message`` on one line, with the library's words in ``flags`` replaced by their flags.

    A name made of letters only (``seed``, ``out``) is replaced where it begins a clause and is
    the subject of it (``seed must be ...``, ``env 5 is out of range``, ``out '/x' is a
    directory``); any other key (``seq_len``, ``overwrite=True``, a phrase) wherever it stands
    as a whole word, never inside a path.
    """
    message = " ".join(message.split())
    for word, flag in flags.items():
        if word.isalpha():
            pattern = (
                rf"(?:^|(?<=\()|(?<=: )|(?<=; )){re.escape(word)}"
                rf"(?= must\b| '[^']*' is\b| -?\d+ is\b)"
            )
        else:
            pattern = rf"(?<![\w/.=-]){re.escape(word)}(?![\w/=-])"
        message = re.sub(pattern, flag, message)
    return message


# -- parsers ---------------------------------------------------------------------------------------
def _sample_options(p: argparse.ArgumentParser, sequences: bool = False) -> None:
    p.add_argument(
        "--num-chunks",
        type=int,
        default=1024,
        help="transitions to sample (>= 1)" + ("; with --seq-len, runs of steps" if sequences else ""),
    )
    p.add_argument(
        "--cache-size",
        type=int,
        default=5,
        help="trajectories the cache keeps in memory (with --enable-cache)",
    )
    p.add_argument(
        "--enable-cache",
        action="store_true",
        help="enable the buffer's trajectory cache (RLinf's option: it changes memory use, not the batch)",
    )
    p.add_argument(
        "--sample-window-size",
        type=int,
        default=100,
        help="sample from the most recent N trajectories (0: all)",
    )
    p.add_argument(
        "--seed", type=int, default=1234, help="random seed of the sampling (same seed, same batch)"
    )


def _version(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")


def build_parser() -> argparse.ArgumentParser:
    """RLinf's legacy form: ``--load-path PATH [--num-chunks N ...]`` (the ``sample`` subcommand)."""
    p = argparse.ArgumentParser(
        prog=LEGACY_PROG,
        description="Load a replay buffer directory, sample once, print every key with its shape and "
        f"dtype. The other tools are subcommands: `{PROG} --help`.",
        formatter_class=_formatter,
        allow_abbrev=False,
    )
    p.add_argument(
        "--load-path",
        required=True,
        help="the buffer directory: a saved checkpoint, or the directory a buffer saves to",
    )
    _sample_options(p)
    _version(p)
    return p


def _add(sub: Any, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name, help=help_text, description=description, formatter_class=_formatter, allow_abbrev=False
    )


_RANKS = "a folder of rank_* buffer directories (one per training process)"
_MOVED = (
    " Files are moved (they leave the source) unless --copy is given; the source stays loadable "
    "throughout, and the output appears only once it is complete."
)


def build_tool_parser() -> argparse.ArgumentParser:
    """The ``rlinf-buffer`` parser with every subcommand."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect, check, reshape and convert replay buffer directories. RLinf's legacy "
        "form `--load-path PATH ...` (no subcommand) is the same as `sample`.",
        epilog=f"`{PROG} COMMAND --help` describes each command; `--json` output is described in "
        "docs/cli.md (JSON output).",
        formatter_class=_formatter,
        allow_abbrev=False,
    )
    _version(p)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = _add(
        sub,
        "info",
        "summarize a buffer directory",
        "Print what a buffer directory holds, from its index (the trajectory data is not read): "
        "trajectories, transitions, bytes on disk, fields (shape and dtype), model versions and "
        f"the file format. For {_RANKS}, each rank and the totals. --stats also reads every "
        "trajectory for per-field statistics.",
    )
    s.add_argument("path", help=f"the buffer directory, or {_RANKS}")
    s.add_argument(
        "--stats",
        action="store_true",
        help="also compute every field's min, max, mean, std and quantiles (q01, q10, q50, q90, q99) "
        "per element of its last axis (uint8 images: per channel, scaled to [0, 1]), reading the "
        "trajectories one at a time; the quantiles come from a fixed-seed sample of each field's "
        "values (accuracy: docs/guide.md)",
    )
    _output_options(s)

    s = _add(
        sub,
        "sample",
        "load a directory and sample once",
        "Load a buffer directory, sample once and print every key of the batch with its shape and dtype.",
    )
    s.add_argument("path", help="the buffer directory")
    _sample_options(s, sequences=True)
    s.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="sample runs of this many consecutive steps (of one environment) instead of single transitions",
    )
    s.add_argument(
        "--pad",
        action="store_true",
        help="with --seq-len: runs may cross an episode end, the steps past it are zero padding",
    )
    _output_options(s)

    s = _add(
        sub,
        "merge",
        "merge rank_* directories into one",
        "Merge the rank_* buffer directories under --source-path (one per training process) into "
        "one new buffer directory at --save-path: trajectories interleaved by their original id "
        "(rank_0's first, rank_1's first, ...) and renumbered from 0." + _MOVED,
    )
    _merge_options(s, split=False)
    s = _add(
        sub,
        "split",
        "keep the first N trajectories in a new directory",
        "Put the first --split-count trajectories of --source-path into a new buffer directory at "
        "--save-path, renumbered from 0. --source-path is a buffer directory, or a folder of "
        "rank_* ones taken in merge order (interleaved by original id)." + _MOVED,
    )
    _merge_options(s, split=True)

    s = _add(
        sub,
        "verify",
        "check a directory (and repair it)",
        "Check a buffer directory: its index (trajectory_index.json) against the trajectory files, "
        "every trajectory's checksum, field shapes and step counts, metadata.json, and files left "
        f"by interrupted writes; for {_RANKS}, every rank. Exits 1 if problems remain.",
    )
    s.add_argument("path", help=f"the buffer directory, or {_RANKS}")
    s.add_argument(
        "--repair",
        action="store_true",
        help="move damaged trajectory files to PATH/quarantine/, remove leftovers of interrupted "
        "writes and rewrite the index to list what remains",
    )
    _output_options(s)

    s = _add(
        sub,
        "view",
        "draw a trajectory or a sampled batch, or play a trajectory as a video",
        "Draw a trajectory (camera frames over time, with its states, actions, rewards and done "
        "flags on the same time axis) or a sampled batch into a PNG file (--out), or play a "
        "trajectory as a video (--video), one frame per step: its camera images above the same "
        "plots with a cursor at the step.",
    )
    s.add_argument("path", help="the buffer directory")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--trajectory", type=int, metavar="ID", help=f"the trajectory id to draw (`{PROG} info` lists them)"
    )
    which.add_argument("--sample", type=int, metavar="N", help="draw N sampled transitions instead")
    written = s.add_mutually_exclusive_group(required=True)
    written.add_argument("--out", help="the PNG file to write")
    written.add_argument(
        "--video",
        metavar="FILE",
        help="with --trajectory: the video file to write instead; its suffix picks the format "
        "(.mp4, .gif, .mkv, .webm; needs the video extra)",
    )
    s.add_argument(
        "--env",
        type=int,
        default=0,
        help="with --trajectory: which of its parallel environments to draw, from 0 (default 0)",
    )
    s.add_argument("--seed", type=int, default=0, help="random seed of --sample (default 0)")
    s.add_argument("--fps", type=float, help="with --video: frames (steps) per second (default 10)")
    _output_options(s)

    s = _add(
        sub,
        "export",
        "write a buffer as one Parquet file or a LeRobot dataset",
        "Export a buffer directory to one Parquet file: one row per transition, image fields as "
        "PNG images (Hugging Face `datasets` loads them as Image features), every field's shape and "
        "dtype recorded in the file so that `import` restores it. With --format lerobot, write a "
        "LeRobot dataset (codebase version v3.0) instead: one episode per environment of each "
        "trajectory, cut where dones is set (docs/format.md, LeRobot datasets).",
    )
    s.add_argument("path", help="the buffer directory")
    s.add_argument(
        "--out",
        required=True,
        help="the .parquet file to write, or with --format lerobot the dataset directory",
    )
    s.add_argument(
        "--format", choices=FORMATS, default="parquet", help="what to write: parquet (the default) or lerobot"
    )
    s.add_argument(
        "--fps",
        type=int,
        help="with --format lerobot (required): frames per second of the recording (timestamps are "
        "frame_index / fps)",
    )
    s.add_argument("--task", help="with --format lerobot (required): the task description of every episode")
    s.add_argument(
        "--video",
        action="store_true",
        help="with --format lerobot: store RGB cameras as MP4 videos (H.264) instead of PNG images",
    )
    s.add_argument("--robot-type", help="with --format lerobot: the robot_type of meta/info.json")
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what is at --out if there is one (atomically): the Parquet file, or a LeRobot "
        "dataset directory",
    )
    _output_options(s)

    s = _add(
        sub,
        "import",
        "read a Parquet export or a LeRobot dataset into a buffer",
        "Rebuild a buffer directory from a Parquet file written by `export` (of this or an earlier "
        "version). With --format lerobot, build one from a LeRobot dataset directory (codebase "
        "version v2.1 or v3.0, cameras as images or videos): one trajectory per episode.",
    )
    s.add_argument("source", help="the .parquet file, or with --format lerobot the dataset directory")
    s.add_argument(
        "--format", choices=FORMATS, default="parquet", help="what to read: parquet (the default) or lerobot"
    )
    _save_path_options(s)
    s.add_argument(
        "--trajectory-format",
        default="pt",
        choices=("pt", "pkl", "segment"),
        help="file format of the new directory: pt (torch.save files, the default) or pkl (pickle), "
        "both readable by RLinf, or segment (this library's packed columns)",
    )
    _output_options(s)
    return p


def _save_path_options(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--save-path",
        required=True,
        help="the buffer directory to create (must not exist, or be empty; see --overwrite)",
    )
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the buffer directory at --save-path if there is one (atomically, once the "
        "new one is complete; anything else there is never replaced)",
    )


def _merge_options(s: argparse.ArgumentParser, split: bool) -> None:
    s.add_argument("--source-path", required=True, help=f"a buffer directory, or {_RANKS}")
    _save_path_options(s)
    if split:
        s.add_argument("--split-count", type=int, required=True, help="trajectories to keep (>= 1)")
    s.add_argument("--copy", action="store_true", help="copy the files instead of moving them")
    _output_options(s)


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json", action="store_true", help="print the result as one JSON object (see docs/cli.md)"
    )
    p.add_argument("--quiet", action="store_true", help="draw no progress bar on stderr")


# -- JSON output -----------------------------------------------------------------------------------
#: Every key ``--json`` prints: ``(key, type, emitted by, meaning)``. A key ``a[].b`` is key ``b``
#: of the objects listed under ``a``; ``(ranks)`` marks the form for a folder of ``rank_*``
#: directories. Types: ``string``, ``integer``, ``number``, ``boolean``, ``list of T``,
#: ``[integer, integer]``, ``object of integer``, ``T or null``, and ``output`` (an object with
#: the keys of the same subcommand's output for one directory). docs/cli.md shows this table;
#: ``tests/test_cli_json.py`` checks every subcommand's output against it.
JSON_KEYS: tuple[tuple[str, str, str, str], ...] = (
    ("path", "string", "info, info (ranks), sample, verify, verify (ranks), view, export",
     "absolute path of the buffer directory read (PATH), or of the folder of rank_* directories"),
    ("source_path", "string", "merge, split", "absolute path of --source-path"),
    ("sources", "list of string", "merge, split",
     "the buffer directories read from --source-path, in rank order"),
    ("save_path", "string", "merge, split, import", "absolute path of the buffer directory written"),
    ("parquet_path", "string", "import", "absolute path of the Parquet file read"),
    ("dataset_path", "string", "import", "with --format lerobot: absolute path of the LeRobot dataset read"),
    ("out_path", "string", "view, export", "absolute path of the file written (--out)"),
    ("trajectory_format", "string or null", "info, verify, export, import",
     "format of the trajectory files: pt, pkl or segment (of PATH; for import, of --save-path); "
     "null if verify cannot tell"),
    ("format_version", "integer", "info", "the directory's format_version (0: written by RLinf)"),
    ("num_trajectories", "integer",
     "info, info (ranks), sample, merge, split, verify, verify (ranks), export, import",
     "trajectories: in the directory, loaded, written, exported or imported; for verify, those "
     "that passed every check"),
    ("total_samples", "integer",
     "info, info (ranks), sample, merge, split, verify, verify (ranks), export, import",
     "transitions (sum of steps x environments over those trajectories)"),
    ("bytes", "integer", "info, info (ranks), export, import",
     "size on disk: info, of the trajectory data; export, of the Parquet file (or of every file "
     "of the LeRobot dataset); import, of every file under --save-path"),
    ("ranks", "list of output", "info (ranks), verify (ranks)",
     "one object per rank_* directory, in rank order: the subcommand's output for that directory"),
    ("ok", "boolean", "verify, verify (ranks)",
     "no problem remains (after the repair, with --repair); the exit status is 0 exactly then"),
    ("fields", "list of object", "info", "every stored field, one object each"),
    ("fields[].name", "string", "info", "dotted field name, e.g. curr_obs.main_images"),
    ("fields[].shape", "list of integer", "info", "shape of one transition's value"),
    ("fields[].dtype", "string", "info", "torch dtype, e.g. torch.uint8"),
    ("trajectory_id_range", "[integer, integer] or null", "info",
     "first and last trajectory id in index order (null: no trajectory)"),
    ("next_trajectory_id", "integer", "info", "the id the next added trajectory gets"),
    ("num_steps_range", "[integer, integer] or null", "info", "fewest and most steps per trajectory"),
    ("num_envs_range", "[integer, integer] or null", "info",
     "fewest and most parallel environments per trajectory"),
    ("model_update_count_range", "[integer, integer] or null", "info",
     "lowest and highest model_update_count of the trajectories"),
    ("num_model_weights_ids", "integer", "info", "distinct model_weights_id values"),
    ("num_checksummed", "integer", "info", "index entries that carry a checksum"),
    ("num_journal_entries", "integer", "info",
     "index entries not yet folded into trajectory_index.json"),
    ("field_stats", "object of object of list of number", "info",
     "with --stats: per dotted field name, its min, max, mean, std, q01, q10, q50, q90 and q99, "
     "each a list with one value per element of the field's last axis (uint8 images: per "
     "channel, scaled to [0, 1]), and count: [transitions]"),
    ("milliseconds", "number", "sample", "time the sampling call took (loading excluded)"),
    ("batch", "list of object", "sample", "every tensor of the sampled batch, one object each"),
    ("batch[].name", "string", "sample", "dotted key, e.g. curr_obs.states"),
    ("batch[].shape", "list of integer", "sample",
     "shape of the tensor: [--num-chunks, ...], or [--num-chunks, --seq-len, ...]"),
    ("batch[].dtype", "string", "sample", "torch dtype, e.g. torch.float32"),
    ("stats", "object of integer", "sample",
     "the buffer's get_stats() counters after loading (num_trajectories, total_samples, "
     "window_trajectories, ...)"),
    ("moved", "boolean", "merge, split", "the files were moved (false: copied, with --copy)"),
    ("origin", "list of [string, integer]", "merge, split",
     "for each new trajectory id in order: its source directory and original id"),
    ("problems", "list of object", "verify", "everything found wrong, in the order found"),
    ("problems[].kind", "string", "verify",
     "metadata, index, missing, unsafe, checksum, unreadable, shape, orphan or leftover"),
    ("problems[].message", "string", "verify", "what is wrong, naming the file"),
    ("problems[].trajectory_id", "integer or null", "verify", "the trajectory concerned, if any"),
    ("problems[].path", "string or null", "verify", "the file concerned, if any"),
    ("problems[].action", "string", "verify", "what --repair did about it (empty without --repair)"),
    ("notes", "list of object", "verify",
     "traces a crash normally leaves (torn last journal line, temporary files, unlisted rows or "
     "files, stale metadata counts): not problems, ok stays true; objects with the keys of problems[]"),
    ("repaired", "boolean", "verify", "--repair rewrote the index and metadata"),
    ("quarantine_path", "string or null", "verify",
     "the folder damaged files were moved to by --repair, if any"),
    ("after_repair", "output", "verify",
     "with --repair, when something was repaired: verify's output for the repaired directory"),
    ("width", "integer", "view", "width of the picture (with --video, of each video frame) in pixels"),
    ("height", "integer", "view", "height of the picture (with --video, of each video frame) in pixels"),
    ("num_frames", "integer", "view",
     "camera frames drawn (all cameras together); with --video, frames of the video (one per step)"),
    ("fps", "number", "view", "with --video: frames per second of the video"),
    ("cameras", "list of string", "view", "the camera fields whose frames are drawn"),
    ("frame_indices", "list of integer", "view",
     "the steps (--trajectory) or sample numbers (--sample) the frames show"),
    ("plotted_fields", "list of string", "view", "the fields plotted under the frames"),
    ("num_row_groups", "integer", "export", "Parquet row groups written"),
    ("image_fields", "list of string", "export",
     "the fields stored as PNG images (with --format lerobot: the LeRobot image features)"),
    ("num_episodes", "integer", "export", "with --format lerobot: the LeRobot episodes written"),
    ("video_fields", "list of string", "export",
     "with --format lerobot: the LeRobot features stored as MP4 videos (--video)"),
    ("codebase_version", "string", "import",
     "with --format lerobot: the dataset's LeRobot codebase version (v2.1 or v3.0)"),
    ("skipped_features", "list of string", "import",
     "with --format lerobot: the dataset's features no buffer field holds (left out)"),
    ("trajectory_ids", "list of integer", "import", "the ids of the imported trajectories, in index order"),
)  # fmt: skip


def _print_json(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _info_json(info: Any) -> dict[str, Any]:
    """:class:`.tools.info.DirectoryInfo` in the JSON vocabulary."""
    return {
        "path": info.path,
        "trajectory_format": info.trajectory_format,
        "format_version": info.format_version,
        "num_trajectories": info.trajectories,
        "total_samples": info.transitions,
        "bytes": info.bytes,
        "fields": [{"name": f.name, "shape": list(f.shape), "dtype": f.dtype} for f in info.fields],
        "trajectory_id_range": _pair(info.trajectory_ids),
        "next_trajectory_id": info.next_trajectory_id,
        "num_steps_range": _pair(info.steps),
        "num_envs_range": _pair(info.envs),
        "model_update_count_range": _pair(info.model_update_counts),
        "num_model_weights_ids": info.model_weights_ids,
        "num_checksummed": info.checksummed,
        "num_journal_entries": info.journal_entries,
    }


def _pair(pair: tuple[int, int] | None) -> list[int] | None:
    return None if pair is None else [pair[0], pair[1]]


def _problem_json(p: Any) -> dict[str, Any]:
    """One :class:`.tools.verify.Problem` (or note) in the JSON vocabulary."""
    return {
        "kind": p.kind,
        "message": p.message,
        "trajectory_id": p.trajectory_id,
        "path": p.path,
        "action": p.action,
    }


def _verify_json(report_: Any) -> dict[str, Any]:
    """:class:`.tools.verify.VerifyReport` in the JSON vocabulary."""
    return {
        "path": report_.path,
        "trajectory_format": report_.fmt,
        "ok": report_.ok,
        "num_trajectories": report_.trajectories,
        "total_samples": report_.transitions,
        "problems": [_problem_json(p) for p in report_.problems],
        "notes": [_problem_json(p) for p in report_.notes],
        "repaired": report_.repaired,
        "quarantine_path": report_.quarantine,
    }


# -- subcommands -----------------------------------------------------------------------------------
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
    from .tools.stats import field_stats, format_stats

    ranks = _ranks(args.path)
    paths = ranks or [args.path]
    with progress_bar("reading index", args.quiet) as progress:
        infos = [describe_directory(p, progress=progress) for p in paths]
    outputs = [_info_json(info) for info in infos]
    texts = [format_info(info) for info in infos]
    if args.stats:
        with progress_bar("computing statistics", args.quiet) as progress:
            for k, path in enumerate(paths):
                outputs[k]["field_stats"] = stats = field_stats(path, progress=progress)
                texts[k] += "\n" + format_stats(stats)
    if ranks is None:
        if args.json:
            _print_json(outputs[0])
        else:
            print(texts[0])
        return 0
    totals = {
        "path": os.path.abspath(args.path),
        "num_trajectories": sum(i.trajectories for i in infos),
        "total_samples": sum(i.transitions for i in infos),
        "bytes": sum(i.bytes for i in infos),
    }
    if args.json:
        _print_json({**totals, "ranks": outputs})
        return 0
    print(
        f"{totals['path']}: {len(infos)} ranks, {totals['num_trajectories']} trajectories, "
        f"{totals['total_samples']} transitions, {totals['bytes'] / (1 << 20):.1f} MiB"
    )
    for text in texts:
        print()
        print(text)
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
            pad=args.pad,
        )
    if args.json:
        _print_json(
            {
                "path": os.path.abspath(args.path),
                "num_trajectories": stats["num_trajectories"],
                "total_samples": stats["total_samples"],
                "milliseconds": seconds * 1e3,
                "batch": [
                    {"name": name, "shape": list(t.shape), "dtype": str(t.dtype)}
                    for name, t in iter_leaves(batch)
                ],
                "stats": stats,
            }
        )
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
            overwrite=args.overwrite,
        )
    if args.json:
        _print_json(
            {
                "source_path": os.path.abspath(args.source_path),
                "sources": result.sources,
                "save_path": result.save_path,
                "num_trajectories": result.trajectories,
                "total_samples": result.transitions,
                "moved": result.moved,
                "origin": [[src, tid] for src, tid in result.origin],
            }
        )
        return 0
    verb = "moved" if result.moved else "copied"
    print(
        f"{verb} {result.trajectories} trajectories ({result.transitions} transitions) from "
        f"{len(result.sources)} source(s) to {result.save_path}"
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    ranks = _ranks(args.path)
    results = [_verify_one(path, args) for path in ranks or [args.path]]
    failed = any(code for code, _ in results)
    if not args.json:
        print("\n".join(out for _, out in results))
    elif ranks is None:
        _print_json(results[0][1])
    else:  # a sharded buffer or per-rank checkpoint: each rank on its own
        outs = [out for _, out in results]
        _print_json(
            {
                "path": os.path.abspath(args.path),
                "ok": not failed,
                "num_trajectories": sum(o["num_trajectories"] for o in outs),
                "total_samples": sum(o["total_samples"] for o in outs),
                "ranks": outs,
            }
        )
    return 1 if failed else 0


def _verify_one(path: str, args: argparse.Namespace) -> tuple[int, Any]:
    """Verify (and repair) one buffer directory: ``(exit code, JSON dict or text)``."""
    from .tools.verify import format_report, verify_directory

    with progress_bar("verifying", args.quiet) as progress:
        report_ = verify_directory(path, repair=args.repair, progress=progress)
    after = verify_directory(path) if report_.repaired else None
    code = 0 if (after if after is not None else report_).ok else 1
    if args.json:
        out = _verify_json(report_)
        if after is not None:
            out["ok"] = after.ok
            out["after_repair"] = _verify_json(after)
        return code, out
    lines = [format_report(report_)]
    if after is not None:
        lines += ["after repair:", format_report(after)]
    return code, "\n".join(lines)


def _view(args: argparse.Namespace) -> int:
    from .tools import view

    result: Any
    if args.video is not None:
        if args.trajectory is None:
            raise InvalidArgumentError("--video plays one trajectory: give --trajectory ID, not --sample")
        speed = {} if args.fps is None else {"fps": args.fps}
        result = view.render_video(args.path, args.trajectory, args.video, env=args.env, **speed)
        extra: dict[str, Any] = {"fps": result.fps}
        played = f", {result.frames} frames at {result.fps:g} fps"
    else:
        if args.fps is not None:
            raise InvalidArgumentError("--fps sets the speed of a --video; a picture (--out) has none")
        if args.trajectory is not None:
            result = view.render_trajectory(args.path, args.trajectory, args.out, env=args.env)
        else:
            result = view.render_sample(args.path, args.sample, args.out, seed=args.seed)
        extra, played = {"frame_indices": result.frame_indices}, ""
    if args.json:
        _print_json(
            {
                "path": os.path.abspath(args.path),
                "out_path": result.out,
                "width": result.width,
                "height": result.height,
                "num_frames": result.frames,
                "cameras": result.cameras,
                **extra,
                "plotted_fields": result.fields,
            }
        )
    else:
        print(f"wrote {result.out} ({result.width}x{result.height} px{played})")
    return 0


def _export(args: argparse.Namespace) -> int:
    lerobot = args.format == "lerobot"
    with progress_bar("exporting", args.quiet) as progress:
        if lerobot:
            from .tools.lerobot import export_lerobot

            result = export_lerobot(
                args.path,
                args.out,
                fps=args.fps,
                task=args.task,
                video=args.video,
                robot_type=args.robot_type,
                progress=progress,
                overwrite=args.overwrite,
            )
        else:
            from .tools.parquet import export_parquet

            result = export_parquet(args.path, args.out, progress=progress, overwrite=args.overwrite)
    if not args.json:
        episodes = f" as {result.episodes} LeRobot episodes" if lerobot else ""
        print(f"exported {result.transitions} transitions{episodes} to {result.out_path}")
        return 0
    out = {
        "path": result.source_path,
        "out_path": result.out_path,
        "trajectory_format": result.source_format,
        "num_trajectories": result.trajectories,
        "total_samples": result.transitions,
        "bytes": result.bytes,
        "image_fields": result.image_fields,
    }
    if lerobot:
        out.update(num_episodes=result.episodes, video_fields=result.video_fields)
    else:
        out.update(num_row_groups=result.row_groups)
    _print_json(out)
    return 0


def _import(args: argparse.Namespace) -> int:
    lerobot = args.format == "lerobot"
    if lerobot:
        from .tools.lerobot import import_lerobot as run
    else:
        from .tools.parquet import import_parquet as run
    with progress_bar("importing", args.quiet) as progress:
        result = run(
            args.source,
            args.save_path,
            trajectory_format=args.trajectory_format,
            progress=progress,
            overwrite=args.overwrite,
        )
    if not args.json:
        what = f"episodes of a LeRobot {result.codebase_version} dataset" if lerobot else "trajectories"
        print(
            f"imported {result.trajectories} {what} ({result.transitions} transitions) to {result.dest_path}"
        )
        return 0
    source = {"dataset_path": result.dataset_path} if lerobot else {"parquet_path": result.parquet_path}
    out = {
        **source,
        "save_path": result.dest_path,
        "trajectory_format": result.trajectory_format,
        "num_trajectories": result.trajectories,
        "total_samples": result.transitions,
        "bytes": result.bytes,
        "trajectory_ids": result.trajectory_ids,
    }
    if lerobot:
        out.update(codebase_version=result.codebase_version, skipped_features=result.skipped_features)
    _print_json(out)
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


def _run(call: Callable[[], int], flags: Mapping[str, str]) -> int:
    try:
        return call()
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ReplayBufferError, OSError, ImportError) as exc:
        print(f"error: {command_line_message(str(exc), flags)}", file=sys.stderr)
        return 1


#: file names of RLinf's buffer scripts (both layouts), which run :func:`main` as RLinf's CLI
LEGACY_SCRIPTS = ("replay_buffer.py", "buffer.py")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rlinf-buffer``, ``python -m rlinf_replay_buffer`` and RLinf's legacy
    ``python rlinf/data/replay_buffer.py``; returns the process exit status."""
    as_script = argv is None and os.path.basename(sys.argv[0]) in LEGACY_SCRIPTS
    argv = list(sys.argv[1:] if argv is None else argv)
    legacy = build_parser()
    first = argv[0].split("=", 1)[0] if argv else ""
    if as_script and first in ("-h", "--help"):
        legacy.parse_args(argv)  # RLinf's script: its own usage, as docs/cli.md shows it
    if first in legacy._option_string_actions and first not in ("-h", "--help", "--version"):
        args = legacy.parse_args(argv)  # the legacy form: it starts with one of its options
        args.path, args.seq_len, args.pad, args.json, args.quiet = args.load_path, None, False, False, False
        return _run(lambda: _sample(args), FLAG_NAMES["sample"])
    tool = build_tool_parser()
    if first.startswith("-") and first not in ("-h", "--help", "--version"):
        tool.error(f"unknown option {first}: options follow a command (see rlinf-buffer --help)")
    args = tool.parse_args(argv)
    problem = format_options_problem(args)
    if problem is not None:
        sub = next(a for a in tool._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices[args.command].error(problem)
    return _run(lambda: COMMANDS[args.command](args), FLAG_NAMES.get(args.command, {}))


def format_options_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with ``export``'s options for its ``--format`` (``None``: nothing): the
    LeRobot options are required with ``--format lerobot`` and refused with ``parquet``."""
    if args.command != "export":
        return None
    given = [
        f"--{name.replace('_', '-')}" for name in LEROBOT_OPTIONS if getattr(args, name) not in (None, False)
    ]
    if args.format == "parquet" and given:
        return f"{', '.join(given)}: options of --format lerobot only (the Parquet export takes none of them)"
    missing = [f"--{name}" for name in ("fps", "task") if getattr(args, name) is None]
    if args.format == "lerobot" and missing:
        return (
            f"--format lerobot needs {' and '.join(missing)}: the frames per second of the recording "
            "(--fps N) and the task description of its episodes (--task TEXT)"
        )
    return None


def json_markdown() -> str:
    """The "JSON output" section of ``docs/cli.md``: :data:`JSON_KEYS` as a table."""
    lines = [
        "## JSON output",
        "",
        "With `--json` every subcommand prints one JSON object on stdout. The keys share one "
        "vocabulary: `num_trajectories` and `total_samples` (transitions) are the buffer's "
        "`get_stats()` names; paths are absolute, named after the argument they come from "
        "(`path` for PATH, `source_path`, `save_path`, `parquet_path`, `out_path` for `--out`); "
        "other counts are `num_*`; `*_range` keys are `[lowest, highest]`, or null when the "
        "directory is empty. `info` and `verify` given a folder of `rank_*` directories print the "
        "form marked (ranks): totals and one object per rank under `ranks`.",
        "",
        "A key `a[].b` is the key `b` of every object of the list `a`. The type `output` means an "
        "object with the keys of the same subcommand's output for one directory.",
        "",
        "| Key | Type | Printed by | Meaning |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| `{key}` | {type_} | {by} | {meaning} |" for key, type_, by, meaning in JSON_KEYS]
    return "\n".join(lines) + "\n"


def reference_markdown() -> str:
    """``docs/cli.md``: the ``--help`` of every command and the ``--json`` keys (a test keeps the
    file equal to this)."""
    parts = [
        "# Command-line reference",
        "",
        "Generated from `--help` and the `--json` key table of `rlinf_replay_buffer/cli.py` (`python -c "
        '"from rlinf_replay_buffer.cli import reference_markdown; '
        "print(reference_markdown(), end='')\" > docs/cli.md`); `tests/test_cli.py` checks it is current.",
        "",
    ]
    tool = build_tool_parser()
    sections = [
        (PROG, tool.format_help()),
        (LEGACY_PROG, build_parser().format_help()),
    ]
    sub = next(a for a in tool._actions if isinstance(a, argparse._SubParsersAction))
    sections[1:1] = [(f"{PROG} {name}", parser.format_help()) for name, parser in sub.choices.items()]
    for title, text in sections:
        parts += [f"## `{title}`", "", "```text", text.rstrip(), "```", ""]
    parts.append(json_markdown())
    return "\n".join(parts)
