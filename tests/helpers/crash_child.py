"""Child program of ``tests/test_crash_kill.py``: streams coded trajectories into an auto-save
buffer until it is killed, reporting what each ``flush()`` made durable.

Usage::

    python crash_child.py DIR FORMAT SEED [--cycles N] [--hold]

Protocol on stdout, one line per event, each written with a single ``write(2)`` (shorter than
``PIPE_BUF``, so a kill never leaves half a line):

* ``open COUNTER SIZE``: the buffer (re)opened ``DIR``; ``COUNTER`` is the id the next trajectory
  gets and ``SIZE`` the trajectories the directory holds.
* ``ack ID,ID,...``: ``flush()`` returned; these trajectories (added since the previous ``ack``)
  are durable.
* ``committed N``: (``--hold`` only) ``N`` trajectories were added and the background writer has
  written them, but ``flush()`` was never called; the child then sleeps until it is killed.
* ``done``: ``--cycles`` flush cycles completed (the child exits without closing the buffer).

The content of trajectory ``tid`` depends on ``tid`` alone (:func:`make_trajectory`), so the
parent can regenerate what the child added from the id. Everything else the child does (how
many trajectories per call, calls per flush) follows ``SEED``.
"""

from __future__ import annotations

import os
import random
import sys
import time
import uuid

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from conftest import coded_trajectory  # noqa: E402

from rlinf_replay_buffer import Trajectory, TrajectoryReplayBuffer  # noqa: E402

CACHE_SIZE = 2
LAYOUTS = ("rlinf", "aligned", "done_only")


def spec(tid: int) -> dict:
    """Shape parameters of trajectory ``tid`` (sizes vary; the schema does not)."""
    rng = random.Random(tid * 7919 + 17)
    big = rng.random() < 0.15
    return {
        "n": rng.randint(8, 40) if big else rng.randint(1, 6),
        "e": rng.randint(1, 3),
        "num_envs": rng.randint(1, 4),
        "layout": rng.choice(LAYOUTS),
    }


def weights_id(tid: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"crash-kill/{tid // 16}"))


def make_trajectory(tid: int, layout: str | None = None) -> Trajectory:
    """Trajectory ``tid`` exactly as the child adds it (``layout`` overrides the input layout)."""
    s = spec(tid)
    return coded_trajectory(
        tid,
        n=s["n"],
        e=s["e"],
        num_envs=s["num_envs"],
        layout=layout or s["layout"],
        model_update_count=tid // 16,
        weights_id=weights_id(tid),
    )


def emit(line: str) -> None:
    os.write(1, (line + "\n").encode())


def main(argv: list[str]) -> int:
    directory, fmt, seed = argv[0], argv[1], int(argv[2])
    cycles = int(argv[argv.index("--cycles") + 1]) if "--cycles" in argv else None
    hold = "--hold" in argv
    rng = random.Random(seed)
    buffer = TrajectoryReplayBuffer(
        seed=seed,
        auto_save=True,
        auto_save_path=directory,
        trajectory_format=fmt,
        cache_size=CACHE_SIZE,
        sample_window_size=0,
    )
    emit(f"open {buffer.trajectory_counter} {len(buffer)}")
    if hold:
        tid = buffer.trajectory_counter
        ids = buffer.add_trajectories([make_trajectory(tid), make_trajectory(tid + 1)])
        deadline = time.monotonic() + 60
        while buffer.get_stats()["files_written"] < len(ids):
            if time.monotonic() > deadline:
                emit("error the background writer wrote nothing in 60 s")
                return 2
            time.sleep(0.001)
        emit(f"committed {len(ids)}")
        time.sleep(3600)
        return 1
    done = 0
    while cycles is None or done < cycles:
        acked: list[int] = []
        for _ in range(rng.randint(1, 4)):  # adds per flush
            first = buffer.trajectory_counter
            count = rng.choice((1, 1, 1, 2, 3))
            ids = buffer.add_trajectories([make_trajectory(first + j) for j in range(count)])
            if ids != list(range(first, first + count)):
                emit(f"error ids {ids} expected from {first}")
                return 2
            acked += ids
            if rng.random() < 0.1:  # reads from files and the cache while writes are pending
                buffer.sample(16)
        buffer.flush()
        emit("ack " + ",".join(map(str, acked)))
        done += 1
    emit("done")
    os._exit(0)  # like a crash after the last flush: no close(), no final compaction


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
