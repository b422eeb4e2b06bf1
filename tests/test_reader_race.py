"""Readers beside a live writer: a load never misses a trajectory flushed before it started.

A writer (a real second process) streams trajectories into an auto-save directory, flushes after
each add and reports the ids each ``flush()`` acknowledged; about every other flush it calls
``close()``, which folds the journal into ``trajectory_index.json`` and removes the journal (a
compaction). Meanwhile this process reads the same directory again and again, through every
public reading path: ``read_directory`` (what loading parses), ``load_checkpoint``,
``describe_directory`` (``rlinf-buffer info``) and ``verify_directory`` (``rlinf-buffer
verify``). Every read must hold every trajectory whose ``flush()`` had returned before that read
started (the writer reports an id only after its flush returned, so every id read from the pipe
before a read started qualifies).

A read that took the old index just before a compaction and the journal just after it would lose
every entry of the removed journal; with the index large enough to take a while to parse, that
happens within the first few dozen reads of the ``segment`` case unless readers guard against it
(see ``read_consistent`` in ``rlinf_replay_buffer/journal.py``). In ``pt``/``pkl`` every
``flush()`` also rewrites ``trajectory_index.json``, so there the index alone holds every flushed
trajectory; the case checks the same guarantee through the same paths.

The loops are bounded by a number of reads, never by time. The ``soak`` variant (``-m soak`` or
``RLINF_SOAK=1``; ``RLINF_SOAK_READS`` reads, default 5000) is skipped otherwise.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from rlinf_replay_buffer import TrajectoryReplayBuffer
from rlinf_replay_buffer.directory import read_directory
from rlinf_replay_buffer.tools.info import describe_directory
from rlinf_replay_buffer.tools.verify import verify_directory

TIMEOUT = 120.0  # seconds without a line from the writer: it is hung
#: trajectories written before the reads start: an index that takes a while to parse (fewer for
#: pt, whose files take longer to write and to verify)
PREFILL = {"segment": 600, "pt": 200, "pkl": 200}
READS = {"segment": 250, "pt": 40}  # per format, in the default run
SOAK_READS = int(os.environ.get("RLINF_SOAK_READS", "5000"))

WRITER = r"""
import os, random, select, sys
sys.path.insert(0, sys.argv[4])
from conftest import coded_trajectory
from rlinf_replay_buffer import TrajectoryReplayBuffer

directory, fmt, prefill = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(7)


def traj(tid):
    return coded_trajectory(tid, n=1, e=1, num_envs=1, images=False)


def emit(line):
    os.write(1, (line + "\n").encode())


buffer = TrajectoryReplayBuffer(
    seed=7, auto_save=True, auto_save_path=directory, trajectory_format=fmt, sample_window_size=0
)
buffer.add_trajectories([traj(i) for i in range(prefill)])
buffer.close()
emit(f"ready {buffer.trajectory_counter}")
tid = prefill
while not select.select([0], [], [], 0)[0]:  # until the reader closes our stdin
    (added,) = buffer.add_trajectories([traj(tid)])
    tid += 1
    buffer.flush()
    emit(f"ack {added}")
    if rng.random() < 0.5:
        buffer.close()  # compaction: the journal is folded into the index and removed
buffer.close()
emit("done")
"""


class Writer:
    """The writing process and the ids it acknowledged so far."""

    def __init__(self, directory: Path, fmt: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(directory), fmt, str(PREFILL[fmt]), str(REPO / "tests")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.acked: set[int] = set()
        self.lines: list[str] = []
        self._buf = b""

    def read_lines(self, block: bool) -> None:
        """Take the writer's complete lines (``block``: wait for at least one)."""
        fd = self.proc.stdout.fileno()
        while True:
            ready, _, _ = select.select([fd], [], [], TIMEOUT if block else 0)
            if not ready:
                assert not block, f"the writer said nothing for {TIMEOUT} s"
                return
            chunk = os.read(fd, 1 << 16)
            assert chunk, f"the writer exited: {self.proc.wait(TIMEOUT)} {self.proc.stderr.read()[-3000:]!r}"
            self._buf += chunk
            *lines, self._buf = self._buf.split(b"\n")
            for raw in lines:
                words = raw.decode().split()
                if words[0] == "ack":
                    self.acked.add(int(words[1]))
                self.lines.append(raw.decode())
            if lines:
                return

    def stop(self) -> None:
        """Close its stdin (it closes its buffer and exits), take its last lines, wait for it."""
        try:
            self.proc.stdin.close()
            while not self.lines or self.lines[-1] != "done":
                self.read_lines(block=True)
            assert self.proc.wait(timeout=TIMEOUT) == 0, self.proc.stderr.read()[-3000:]
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()
            self.proc.stderr.close()


def ids_read(directory: Path, how: str) -> tuple[set[int] | None, int]:
    """What one read of ``directory`` through ``how`` sees: the ids (``None`` when the path
    tells only a count) and the number of trajectories."""
    if how == "read_directory":
        contents, _ = read_directory(str(directory))
        ids = {r.trajectory_id for r in contents.records}
        return ids, len(ids)
    if how == "load_checkpoint":
        buffer = TrajectoryReplayBuffer(sample_window_size=0, enable_cache=False)
        buffer.load_checkpoint(str(directory))
        return None, len(buffer)
    if how == "info":
        info = describe_directory(str(directory))
        assert info.trajectory_ids is not None
        first, last = info.trajectory_ids
        assert last - first + 1 == info.trajectories, "ids are not contiguous"  # nothing is evicted
        return set(range(first, last + 1)), info.trajectories
    report = verify_directory(str(directory))
    assert report.ok, [(p.kind, p.message) for p in report.problems]
    return None, report.trajectories


def read_beside_writer(tmp_path: Path, fmt: str, reads: int) -> dict[str, int]:
    """``reads`` reads of a directory a writer streams into and compacts; each must hold every
    trajectory acknowledged before it started. Returns reads per path."""
    directory = tmp_path / f"live-{fmt}"
    writer = Writer(directory, fmt)
    done = {"read_directory": 0, "load_checkpoint": 0, "info": 0, "verify": 0}
    verify_every = max(25, reads // 20)
    try:
        writer.read_lines(block=True)
        assert writer.lines[0].startswith("ready"), writer.lines
        for i in range(reads):
            writer.read_lines(block=False)
            expected = set(range(PREFILL[fmt])) | writer.acked  # flushed before this read starts
            how = (
                "verify"  # it reads every trajectory: at most about 20 times per run
                if i % verify_every == verify_every - 1
                else "load_checkpoint"
                if i % 10 == 5
                else "info"
                if i % 10 == 7
                else "read_directory"
            )
            ids, count = ids_read(directory, how)
            where = f"{fmt} read {i} ({how}, {len(writer.acked)} acknowledged)"
            if ids is not None:
                missing = expected - ids
                assert not missing, f"{where}: missed flushed trajectories {sorted(missing)[:10]}"
            assert count >= len(expected), f"{where}: {count} trajectories, {len(expected)} were flushed"
            done[how] += 1
        assert len(writer.acked) > 0, "the writer acknowledged nothing while the reads ran"
    finally:
        writer.stop()
    # once the writer is done, a read holds exactly what it wrote
    contents, _ = read_directory(str(directory))
    assert {r.trajectory_id for r in contents.records} == set(range(PREFILL[fmt])) | writer.acked
    return done


@pytest.mark.parametrize("fmt", ["segment", "pt"])
def test_reads_beside_a_compacting_writer_hold_every_flushed_trajectory(tmp_path: Path, fmt: str) -> None:
    done = read_beside_writer(tmp_path, fmt, READS[fmt])
    assert all(done.values()), done


def _soak_selected(config: pytest.Config) -> bool:
    expr = config.getoption("markexpr") or ""
    return os.environ.get("RLINF_SOAK") == "1" or ("soak" in expr and "not soak" not in expr)


@pytest.mark.soak
@pytest.mark.parametrize("fmt", ["segment", "pt", "pkl"])
def test_reads_beside_a_compacting_writer_soak(
    tmp_path: Path, fmt: str, request: pytest.FixtureRequest
) -> None:
    if not _soak_selected(request.config):
        pytest.skip("soak test: run with -m soak or RLINF_SOAK=1")
    done = read_beside_writer(tmp_path, fmt, SOAK_READS)
    assert all(done.values()), done
