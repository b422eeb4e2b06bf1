"""Command line of the verify tool: ``main(argv)`` calls :func:`verify_directory`.

``python -m rlinf.data.replay_buffer verify PATH [--repair] [--json]``. Exit status: 0 when the
directory is sound (after ``--repair``: when the repaired directory verifies clean), 1 when
problems remain, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import ReplayBufferError
from .verify import VerifyReport, verify_directory


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``--help`` text)."""
    p = argparse.ArgumentParser(
        prog="python -m rlinf.data.replay_buffer verify",
        description="Check a buffer directory: the index against the files, checksums, shapes and "
        "alignment of every trajectory, metadata, leftovers of interrupted writes. Prints a "
        "report; exits 1 if problems remain.",
    )
    p.add_argument("path", help="the buffer directory (checkpoint or auto-save path)")
    p.add_argument(
        "--repair",
        action="store_true",
        help="move bad trajectories to PATH/quarantine/, list readable unlisted files again, remove "
        "leftovers and rewrite a consistent index and metadata",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def print_report(report: VerifyReport) -> None:
    """The human-readable report."""
    fmt = report.fmt or "unknown format"
    head = f"{report.path} ({fmt}): {report.trajectories} sound trajectories"
    head += f" ({report.transitions} transitions)"
    if report.ok:
        print(f"OK  {head}")
        return
    print(f"PROBLEMS ({len(report.problems)})  {head}")
    for p in report.problems:
        action = f"  -> {p.action}" if p.action else ""
        print(f"  [{p.kind}] {p.message}{action}")
    if report.quarantine:
        print(f"quarantine: {report.quarantine}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        report = verify_directory(args.path, repair=args.repair)
        after = verify_directory(args.path) if report.repaired else None
    except (ReplayBufferError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        out = report.to_json()
        if after is not None:
            out["after_repair"] = after.to_json()
        print(json.dumps(out, indent=2))
    else:
        print_report(report)
        if after is not None:
            print("after repair:")
            print_report(after)
    final = after if after is not None else report
    return 0 if final.ok else 1
