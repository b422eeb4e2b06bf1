"""Each observation stored once, side by side: two in-memory buffers, ``dedup_next_obs=True``
and ``False``, filled with the same trajectories, their adds and samples interleaved in one
process so that both see the same machine load.

    python benchmarks/dedup_ab.py --scenario images
    python benchmarks/dedup_ab.py --scenario state --differ
    python benchmarks/dedup_ab.py --scenario images --format segment

``--differ`` replaces each ``next_obs`` by its time-reversed copy, so it never equals the next
``curr_obs`` (the rollout where nothing can be shared). Prints cached MB, the median add and
the median ``sample(n)`` of each buffer (the first 3 calls of each are left out). With
``--format segment`` both buffers auto-save to ``segment`` directories in a temporary directory
and cache one trajectory, so samples read the files (warm in the page cache); the disk MB each
directory takes (allocated blocks, ``st_blocks``) and its files' apparent size are printed too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.scenarios import build_scenarios, make_trajectory  # noqa: E402
from rlinf_replay_buffer import TrajectoryReplayBuffer  # noqa: E402


def _median_ms(times: list[float]) -> float:
    return 1e3 * statistics.median(times[3:] or times)


def _disk_mb(path: str) -> tuple[float, float]:
    """``(allocated, apparent)`` MB of the files below ``path``."""
    used = size = 0
    for root, _, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(root, name))
            used += st.st_blocks * 512
            size += st.st_size
    return used / 1e6, size / 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--scenario", default="images", help="a sampling scenario: state, images or vla")
    parser.add_argument("--repeats", type=int, default=60, help="sample calls per buffer")
    parser.add_argument("--differ", action="store_true", help="next_obs never equals the next curr_obs")
    parser.add_argument(
        "--format",
        choices=("memory", "segment"),
        default="memory",
        help="memory: buffers in memory (default); segment: auto-saved segment directories",
    )
    parser.add_argument(
        "--quick", action="store_true", help="the scenario's sizes ~100x smaller (smoke tests)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rlinf-dedup-ab-") as tmp:
        return _compare(args, tmp)


def _compare(args: argparse.Namespace, tmp: str) -> int:
    torch.set_num_threads(1)
    case = build_scenarios(args.quick)[args.scenario].cases[0]
    trajs = [make_trajectory(case.spec, i) for i in range(min(case.window, 6))]
    if args.differ:
        for t in trajs:
            t.next_obs = {k: v.flip(0).clone() for k, v in (t.next_obs or {}).items()}
    disk = args.format == "segment"

    def where(on: bool) -> dict[str, object]:
        path = os.path.join(tmp, f"dedup-{on}")
        return dict(auto_save=True, auto_save_path=path, trajectory_format="segment", cache_size=1)

    bufs = {
        on: TrajectoryReplayBuffer(
            seed=1, sample_window_size=case.window, dedup_next_obs=on, **(where(on) if disk else {})
        )
        for on in (True, False)
    }
    adds: dict[bool, list[float]] = {True: [], False: []}
    for i in range(case.window):
        for on in (True, False) if i % 2 == 0 else (False, True):
            start = time.perf_counter()
            bufs[on].add_trajectories([trajs[i % len(trajs)]])
            adds[on].append(time.perf_counter() - start)
    label = args.scenario + (" (differ everywhere)" if args.differ else "") + (" segment" if disk else "")
    print(f"{label}: {case.spec.describe()}; window {case.window}")
    for on in (True, False):
        cached = bufs[on].get_stats()["cached_bytes"] / 1e6
        line = f"  dedup_next_obs={on!s:5}  cached MB {cached:9.1f}  add ms {_median_ms(adds[on]):8.3f}"
        if disk:
            bufs[on].flush()
            used, size = _disk_mb(os.path.join(tmp, f"dedup-{on}"))
            line += f"  disk MB {used:9.1f}  apparent MB {size:9.1f}"
        print(line)
    for n in case.batches:
        samples: dict[bool, list[float]] = {True: [], False: []}
        for r in range(args.repeats):
            for on in (True, False) if r % 2 == 0 else (False, True):
                start = time.perf_counter()
                bufs[on].sample(n)
                samples[on].append(time.perf_counter() - start)
        for on in (True, False):
            print(f"  dedup_next_obs={on!s:5}  sample({n}) ms {_median_ms(samples[on]):8.3f}")
    for buf in bufs.values():
        buf.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
