"""Run the benchmark suite and print one table per measurement.

    python benchmarks/run.py                      # everything, full sizes
    python benchmarks/run.py --quick --scenario state --repeats 2
    python benchmarks/run.py --json /tmp/bench.json --markdown

Every (case, contender) runs in a fresh child process (``run.py --child SCENARIO CASE
CONTENDER``) that prints one JSON line, so peak RSS is per contender. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__" and not __package__:  # run as a script: make the packages importable
    sys.path.insert(0, str(REPO))

from benchmarks.procedures import PREPARE, Options, expected_rows, make_row, run_case  # noqa: E402


def measured_package() -> str:
    """The directory of the ``rlinf_replay_buffer`` this run measures. It must be this
    checkout's: an environment where another checkout is installed (an editable install's
    ``.pth`` imports it at interpreter start, before ``sys.path`` is touched) would otherwise be
    measured silently, e.g. when a second worktree is benchmarked for a before/after table."""
    import rlinf_replay_buffer

    found = Path(rlinf_replay_buffer.__file__).resolve().parent
    if REPO not in found.parents:
        raise SystemExit(
            f"benchmarks/run.py in {REPO} would measure the rlinf_replay_buffer installed at {found}; "
            "run it where that package is this checkout's (pip install -e . here, or uninstall the other)"
        )
    return str(found)


from benchmarks.scenarios import Case, Scenario, build_scenarios, level_name  # noqa: E402

RESULT_PREFIX = "BENCH-RESULT "
SCENARIO_ORDER = (
    "state",
    "images",
    "vla",
    "disk_state",
    "disk_images",
    "quickstart",
    "add",
    "scale",
    "scale_1m",
    "sequences",
    "prioritized",
    "freshness",
    "rate_limited",
    "ray",
    "memory",
)
OPT_IN = ("scale_1m",)
"""Scenarios run only when named with ``--scenario`` (building their directories takes an hour)."""
UNIFORM = "ours[uniform]"
"""The sampler scenarios' reference row: a plain ``sample`` of as many rows (``vs uniform``)."""
LOCAL = "ours[local]"
"""The ray scenario's reference row: the local buffer, sampling in-process (``vs local``)."""
BASELINES = {UNIFORM: "vs uniform", LOCAL: "vs local"}
"""Reference rows and the column that divides every row of their table by them."""


# -- command line ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description="Benchmark TrajectoryReplayBuffer against its contenders.")
    p.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIO_ORDER,
        help=f"run only this scenario (repeatable; default: all but {', '.join(OPT_IN)})",
    )
    p.add_argument("--contender", action="append", help="run only contenders whose label starts with this")
    p.add_argument(
        "--case", action="append", help="run only the cases of a scenario with this name (repeatable)"
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes (~100x smaller), for smoke tests")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per measurement (default 30)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=20.0,
        help="stop repeating a measurement once its timed calls took this long (default 20)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in every child (default 1)")
    p.add_argument("--json", metavar="PATH", help="write all results (machine facts, rows) to PATH")
    p.add_argument("--markdown", action="store_true", help="also print the tables as markdown")
    p.add_argument("--tmp-dir", default="/tmp", help="where buffers and files are written (default /tmp)")
    p.add_argument(
        "--cache-dir",
        default="/tmp/rlinf-bench-cache",
        help="where directories of tiny trajectories are cached between runs",
    )
    p.add_argument(
        "--refresh-cache",
        action="store_true",
        help="rebuild the cached directories of tiny trajectories (e.g. after a format change)",
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds a child may take (default 3600)")
    p.add_argument(
        "--inline",
        action="store_true",
        help="run every contender in this process (faster; peak RSS is then not per contender)",
    )
    p.add_argument("--child", nargs=3, metavar=("SCENARIO", "CASE", "CONTENDER"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def options_of(args: argparse.Namespace) -> Options:
    """Measurement options from the command line."""
    return Options(
        warmup=max(0, args.warmup),
        repeats=max(1, args.repeats),
        max_seconds=args.max_seconds,
        tmp_root=args.tmp_dir,
        cache_root=args.cache_dir,
        quick=args.quick,
        refresh_cache=args.refresh_cache,
    )


def child_flags(args: argparse.Namespace) -> list[str]:
    """The flags a child needs to rebuild the same cases and options."""
    flags = [
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
        "--max-seconds",
        str(args.max_seconds),
        "--threads",
        str(args.threads),
        "--tmp-dir",
        args.tmp_dir,
        "--cache-dir",
        args.cache_dir,
    ]
    flags += ["--quick"] if args.quick else []
    return flags + (["--refresh-cache"] if args.refresh_cache else [])


# -- machine facts ---------------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git(*cmd: str) -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *cmd], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_facts(threads: int, inline: bool = False) -> dict[str, Any]:
    """CPU, cores, RAM, versions, date and thread count, for the header and the JSON file."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram_gb = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    ram_gb = round(int(line.split()[1]) * 1024 / 1e9, 1)
    except OSError:
        pass
    commit = _git("rev-parse", "--short", "HEAD")
    if commit and _git("status", "--porcelain", "--", "rlinf"):
        commit += " (rlinf/ has uncommitted changes)"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": ram_gb,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "numpy": _version("numpy"),
        "torchrl": _version("torchrl"),
        "tensordict": _version("tensordict"),
        "commit": commit or "unknown",
        "package": measured_package(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "threads": threads,
        "peak_rss": "whole process (--inline)" if inline else "per contender (one child process each)",
    }


def header(facts: dict[str, Any], opts: Options) -> str:
    """The lines printed before the tables."""
    return "\n".join(
        [
            "TrajectoryReplayBuffer benchmarks" + (" (--quick sizes)" if opts.quick else ""),
            f"  machine: {facts['cpu']}, {facts['cores']} cores, {facts['ram_gb']} GB RAM, "
            f"Linux {facts['kernel']}",
            f"  python {facts['python']}, torch {facts['torch']}, numpy {facts['numpy']}, "
            f"torchrl {facts['torchrl']}, tensordict {facts['tensordict']}",
            f"  commit {facts['commit']}; {facts['date']}; torch threads {facts['threads']}; "
            f"package {facts['package']}",
            f"  timing: median of up to {opts.repeats} calls after {opts.warmup} warm-up calls "
            f"(fewer once a measurement took {opts.max_seconds:g} s); peak RSS {facts['peak_rss']}",
            "  ratio = limit time / contender time (1.0 = as fast as the limit); MB = 10^6 bytes",
            "  vs uniform (sampler scenarios) = contender time / ours[uniform] time (same rows)",
            "  vs local (ray scenario) = contender time / ours[local] time (same table)",
        ]
    )


# -- running ---------------------------------------------------------------------------------


def find_case(scenarios: dict[str, Scenario], scenario: str, case: str) -> Case:
    """The case named ``case`` of ``scenario``."""
    for c in scenarios[scenario].cases:
        if c.name == case:
            return c
    raise SystemExit(f"unknown case {scenario}/{case}")


def run_child(args: argparse.Namespace) -> int:
    """Child mode: run one (case, contender) and print its rows as one JSON line."""
    import torch

    from benchmarks.measure import AnonPeak, peak_rss_mb

    torch.set_num_threads(max(1, args.threads))
    scenario, case_name, label = args.child
    case = find_case(build_scenarios(args.quick), scenario, case_name)
    anon = AnonPeak()
    rows = run_case(case, label, options_of(args))
    rss, anon_mb = peak_rss_mb(), anon.stop()
    for r in rows:
        r["peak_rss_mb"], r["peak_anon_mb"] = rss, anon_mb
    print(RESULT_PREFIX + json.dumps(rows), flush=True)
    return 0


def run_in_subprocess(args: argparse.Namespace, case: Case, label: str) -> list[dict[str, Any]]:
    """Run one (case, contender) in a fresh ``python run.py --child`` process."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", case.scenario, case.name, label]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    failure = ""
    try:
        proc = subprocess.run(
            cmd + child_flags(args),
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            timeout=args.timeout,
        )
        for line in reversed(proc.stdout.splitlines()):
            if line.startswith(RESULT_PREFIX):
                return json.loads(line[len(RESULT_PREFIX) :])
        failure = f"child exited with status {proc.returncode} without a result (see stderr)"
    except subprocess.TimeoutExpired:
        failure = f"child timed out after {args.timeout:g} s"
    level = case.count if case.kind in ("tiny", "scale") else None
    return [
        make_row(table, label, level=level, status="error", note=failure)
        for table, _ in expected_rows(case, label)
    ]


def run_inline(args: argparse.Namespace, case: Case, label: str) -> list[dict[str, Any]]:
    """Run one (case, contender) in this process."""
    from benchmarks.measure import peak_rss_mb

    rows = run_case(case, label, options_of(args))
    rss = peak_rss_mb()
    for r in rows:
        r["peak_rss_mb"] = rss
    return rows


# -- tables ----------------------------------------------------------------------------------


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Set ``ratio`` (limit time / contender time, same table and level); for tables with
    several index sizes, the growth of each contender's time relative to its smallest size; and
    for tables with an ``ours[uniform]`` (``ours[local]``) row, ``vs uniform`` (``vs local``):
    contender time / that row's time."""
    limits = {
        (r["table"], r["level"]): r["median_s"]
        for r in rows
        if r["base"] == "limit" and r["median_s"] is not None
    }
    for base, column in BASELINES.items():
        reference = {r["table"]: r["median_s"] for r in rows if r["base"] == base and r["median_s"]}
        for r in rows:
            if r["table"] in reference and r["median_s"] is not None:
                r["extra"][column] = r["median_s"] / reference[r["table"]]
    smallest: dict[tuple[str, str], tuple[int, float]] = {}
    for r in rows:
        limit = limits.get((r["table"], r["level"]))
        ok = r["median_s"] is not None and r["median_s"] > 0
        r["ratio"] = limit / r["median_s"] if ok and limit is not None and not r.get("no_ratio") else None
        if ok and r["level"] is not None:
            key = (r["table"], r["base"])
            if key not in smallest or r["level"] < smallest[key][0]:
                smallest[key] = (r["level"], r["median_s"])
    for r in rows:
        key = (r["table"], r["base"])
        if r["level"] is not None and r["median_s"] and key in smallest:
            level0, t0 = smallest[key]
            if r["level"] != level0:
                r["extra"][f"vs @{level_name(level0)}"] = r["median_s"] / t0


def num(x: float | int | None) -> str:
    """Three significant digits, without exponent notation for ordinary sizes."""
    if x is None:
        return "-"
    if isinstance(x, int):
        return f"{x:,}"
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def rate(x: float | None) -> str:
    """A rate with a k/M/G suffix."""
    if x is None:
        return "-"
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= factor:
            return num(x / factor) + suffix
    return num(x)


def ratio_text(x: float | None) -> str:
    """A ratio with two decimals, or two significant digits below 0.1."""
    if x is None:
        return "-"
    return f"{x:.2f}" if x >= 0.1 else f"{x:.2g}"


def table_cells(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]], list[str]]:
    """Column names, cell strings and notes for one table."""
    extras: list[str] = []
    for r in rows:
        for k in r["extra"]:
            if k not in extras:
                extras.append(k)
    cols = ["contender", "median ms", "transitions/s", "MB/s", "ratio"]
    cols += ["peak RSS MB", "peak anon MB", "cached MB", "runs"]
    cells = []
    by_note: dict[str, list[str]] = {}
    for r in rows:
        med = r["median_s"]
        if r["status"] != "ok" and med is None:
            line = [r["contender"], r["status"]] + ["-"] * (len(cols) - 2 + len(extras))
        else:
            line = [
                r["contender"],
                num(med * 1e3) if med else "-",
                rate(r["items"] / med) if med and r["items"] else "-",
                num(r["nbytes"] / med / 1e6) if med and r["nbytes"] else "-",
                ratio_text(r.get("ratio")),
                num(r.get("peak_rss_mb")),
                num(r.get("peak_anon_mb")),
                num(r["cached_bytes"] / 1e6) if r["cached_bytes"] is not None else "-",
                str(r["runs"]),
            ]
            for k in extras:
                v = r["extra"].get(k)
                line.append(num(v) if isinstance(v, int | float) else ("-" if v is None else str(v)))
        cells.append(line)
        if r["note"]:
            by_note.setdefault(r["note"], []).append(r["contender"])
    notes = [
        note if len(who) == len(rows) and len(rows) > 1 else f"{', '.join(who)}: {note}"
        for note, who in by_note.items()
    ]
    return cols + extras, cells, notes


def render_text(title: str, rows: list[dict[str, Any]]) -> str:
    """A plain-text table with aligned columns and the rows' notes below it."""
    cols, cells, notes = table_cells(rows)
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(cols)]

    def fmt(line: list[str]) -> str:
        parts = [line[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(line[1:], widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    out = [f"### {title}", fmt(cols), fmt(["-" * w for w in widths])]
    out += [fmt(line) for line in cells]
    out += [f"  * {n}" for n in notes]
    return "\n".join(out)


def render_markdown(title: str, rows: list[dict[str, Any]]) -> str:
    """The same table in GitHub markdown."""
    cols, cells, notes = table_cells(rows)
    out = [f"#### {title}", "", "| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * len(cols)) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in cells]
    if notes:
        out.append("")
        out += [f"* {n}" for n in notes]
    return "\n".join(out)


def group_tables(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows by table title, in the order the tables first appear."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        tables.setdefault(r["table"], []).append(r)
    return tables


# -- main ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected scenarios and print their tables; returns 1 if any row is an error."""
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    opts = options_of(args)
    if args.inline:
        import torch

        torch.set_num_threads(max(1, args.threads))
    facts = machine_facts(args.threads, args.inline)
    print(header(facts, opts), flush=True)
    scenarios = build_scenarios(args.quick)
    selected = (
        [s for s in SCENARIO_ORDER if s in args.scenario]
        if args.scenario
        else [s for s in SCENARIO_ORDER if s not in OPT_IN]
    )
    all_rows: list[dict[str, Any]] = []
    markdown: list[str] = []
    refreshed: set[int] = set()  # sizes whose cached directories --refresh-cache rebuilt already
    for name in selected:
        scenario = scenarios[name]
        rows: list[dict[str, Any]] = []
        runner = run_inline if args.inline else run_in_subprocess
        for case in scenario.cases:
            if args.case and case.name not in args.case:
                continue
            if case.kind in ("tiny", "scale"):
                print(f"  preparing {name}/{case.name}", file=sys.stderr, flush=True)
                refresh = args.refresh_cache and case.count not in refreshed
                refreshed.add(case.count)
                runner(argparse.Namespace(**{**vars(args), "refresh_cache": refresh}), case, PREPARE)
            for label in case.contenders:
                if args.contender and not any(label.startswith(c) for c in args.contender):
                    continue
                print(f"  running {name}/{case.name}/{label}", file=sys.stderr, flush=True)
                rows.extend(runner(args, case, label))
        add_ratios(rows)
        print(f"\n## {name}: {scenario.description}", flush=True)
        markdown.append(f"### {name}\n\n{scenario.description}")
        for title, table_rows in group_tables(rows).items():
            print("\n" + render_text(title, table_rows), flush=True)
            markdown.append(render_markdown(title, table_rows))
        all_rows.extend(rows)
    if args.markdown:
        print("\n<!-- markdown -->\n")
        print("\n\n".join(markdown))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": facts, "options": vars(opts), "rows": all_rows}, f, indent=1)
    return 1 if any(r["status"] == "error" for r in all_rows) else 0


if __name__ == "__main__":
    sys.exit(main())
