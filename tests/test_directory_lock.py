"""One writer per buffer directory: a second writer is refused, naming the holder; a killed
writer never blocks its successor; readers and read-only tools need no lock; every tool that
changes a directory refuses a live one and leaves it as it was."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import coded_trajectory, data_files

from rlinf_replay_buffer import (
    BufferDirectoryError,
    DirectoryLockedError,
    TrajectoryReplayBuffer,
)
from rlinf_replay_buffer.cli import main
from rlinf_replay_buffer.lock import LOCK_NAME, DirectoryLock, holder
from rlinf_replay_buffer.tools import merge_or_split
from rlinf_replay_buffer.tools.parquet import export_parquet, import_parquet

TESTS = str(Path(__file__).resolve().parent)

#: a writer process: auto-saves ``count`` trajectories, flushes, prints "ready", then either waits
#: for a line on stdin (and closes) or keeps adding and flushing, printing each acknowledged count
WRITER = """
import sys
sys.path.insert(0, {tests!r})
from conftest import coded_trajectory
from rlinf_replay_buffer import TrajectoryReplayBuffer

buf = TrajectoryReplayBuffer(
    sample_window_size=0, auto_save=True, auto_save_path={path!r}, trajectory_format={fmt!r}
)
buf.add_trajectories([coded_trajectory(i) for i in range({count})])
buf.flush()
print("ready", flush=True)
if {stream}:
    i = {count}
    while True:
        buf.add_trajectories([coded_trajectory(i)])
        buf.flush()
        i += 1
        print(i, flush=True)
sys.stdin.readline()
buf.close()
print("closed", flush=True)
"""


class Writer:
    """A real second process writing ``path`` (see ``WRITER``)."""

    def __init__(self, path: Path, fmt: str = "pt", count: int = 3, stream: bool = False) -> None:
        script = WRITER.format(tests=TESTS, path=str(path), fmt=fmt, count=count, stream=stream)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", self.proc.stderr.read()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def acknowledged(self) -> int:
        """The count of trajectories whose flush() returned, as last printed."""
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "closed"
        assert self.proc.wait(timeout=60) == 0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()


def auto_saving(path: Path, **kwargs) -> TrajectoryReplayBuffer:
    return TrajectoryReplayBuffer(sample_window_size=0, auto_save=True, auto_save_path=str(path), **kwargs)


def ids_in(path: Path) -> set[int]:
    reader = TrajectoryReplayBuffer(sample_window_size=0)
    reader.load_checkpoint(str(path))
    batch = reader.sample(reader.total_samples)
    return {int(c) // 1000 for c in batch["rewards"].flatten().tolist()}


# -- second writers -------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["pt", "pkl", "segment"])
def test_a_second_writer_process_is_refused_naming_the_holder(tmp_path, fmt):
    path = tmp_path / "buf"
    with Writer(path, fmt) as writer:
        with pytest.raises(DirectoryLockedError, match=rf"another writer holds .*pid {writer.pid} on "):
            auto_saving(path, trajectory_format=fmt)
        record = holder(str(path))
        assert record["pid"] == writer.pid and record["purpose"] == "auto-save"
        assert record["format_version"] == 1 and record["since"]
        writer.close()
    again = auto_saving(path, trajectory_format=fmt)  # released by close()
    assert again.size == 3
    again.close()


def test_a_killed_writer_never_blocks_its_successor(tmp_path):
    path = tmp_path / "buf"
    with Writer(path, count=4) as writer:
        writer.kill()
    successor = auto_saving(path)
    assert successor.size == 4  # every flushed trajectory, at once
    successor.add_trajectories([coded_trajectory(4)])
    successor.close()
    assert ids_in(path) == {0, 1, 2, 3, 4}


def test_a_second_buffer_in_the_same_process_is_refused_until_the_first_closes(tmp_path):
    path = tmp_path / "buf"
    first = auto_saving(path)
    first.add_trajectories([coded_trajectory(0)])
    with pytest.raises(DirectoryLockedError, match=rf"pid {os.getpid()} \(this process\)"):
        auto_saving(path)
    first.close()
    second = auto_saving(path)
    assert second.size == 1
    second.close()


def test_a_closed_buffer_writes_again_only_if_no_other_writer_came_in_between(tmp_path):
    path = tmp_path / "buf"
    first = auto_saving(path)
    first.add_trajectories([coded_trajectory(0)])
    first.close()
    first.add_trajectories([coded_trajectory(1)])  # nobody else came: it takes the lock again
    first.close()
    second = auto_saving(path)
    second.add_trajectories([coded_trajectory(2)])
    second.close()
    size_before = first.size
    with pytest.raises(DirectoryLockedError, match="another writer used this buffer directory after"):
        first.add_trajectories([coded_trajectory(3)])  # what it knows of the directory is stale
    assert first.size == size_before  # the refused add changed nothing
    first.flush()  # nothing to write: no error, nothing written
    first.close()
    assert ids_in(path) == {0, 1, 2}


def test_saving_a_checkpoint_into_a_live_auto_save_directory_is_refused(tmp_path):
    path = tmp_path / "buf"
    with Writer(path) as writer:
        before = data_files(path)
        other = TrajectoryReplayBuffer()
        other.add_trajectories([coded_trajectory(9)])
        with pytest.raises(DirectoryLockedError, match=rf"pid {writer.pid} .*save_checkpoint cannot write"):
            other.save_checkpoint(str(path))
        assert data_files(path) == before
        writer.close()
    assert ids_in(path) == {0, 1, 2}


def test_a_buffer_saving_into_its_own_auto_save_directory_needs_no_second_lock(tmp_path):
    path = tmp_path / "buf"
    buf = auto_saving(path)
    buf.add_trajectories([coded_trajectory(i) for i in range(2)])
    buf.save_checkpoint(str(path))
    buf.close()
    assert ids_in(path) == {0, 1}


# -- tools beside a live writer ------------------------------------------------------------------
def test_tools_that_change_a_directory_refuse_a_live_one_and_change_nothing(tmp_path, capsys):
    path = tmp_path / "buf"
    parquet = tmp_path / "p.parquet"
    elsewhere = tmp_path / "other"
    TrajectoryReplayBuffer().save_checkpoint(str(elsewhere))
    with Writer(path) as writer:
        export_parquet(str(path), str(parquet))  # a reader: fine beside the writer
        before = data_files(path)
        commands = [
            ["verify", str(path), "--repair"],
            ["merge", "--source-path", str(path), "--save-path", str(tmp_path / "m")],
            ["split", "--source-path", str(path), "--save-path", str(tmp_path / "s"), "--split-count", "1"],
            ["import", str(parquet), "--save-path", str(path), "--overwrite"],
            ["merge", "--source-path", str(elsewhere), "--save-path", str(path), "--copy", "--overwrite"],
        ]
        for argv in commands:
            assert main([*argv, "--quiet"]) == 1, argv
            err = capsys.readouterr().err
            assert f"pid {writer.pid}" in err and "another writer holds this buffer directory" in err, argv
            assert data_files(path) == before, argv
        assert not (tmp_path / "m").exists() and not (tmp_path / "s").exists()
        with pytest.raises(DirectoryLockedError):
            merge_or_split(str(path), str(tmp_path / "m"))
        with pytest.raises(DirectoryLockedError):
            import_parquet(str(parquet), str(path), overwrite=True)
        writer.close()
    assert ids_in(path) == {0, 1, 2}


def test_read_only_tools_run_beside_a_live_writer(tmp_path, capsys):
    path = tmp_path / "buf"
    with Writer(path) as writer:
        for argv in (
            ["info", str(path)],
            ["verify", str(path)],
            ["sample", str(path), "--num-chunks", "4"],
            ["export", str(path), "--out", str(tmp_path / "p.parquet")],
            ["merge", "--source-path", str(path), "--save-path", str(tmp_path / "copy"), "--copy"],
        ):
            assert main([*argv, "--quiet"]) == 0, (argv, capsys.readouterr().err)
        assert ids_in(tmp_path / "copy") == {0, 1, 2}
        writer.close()
    capsys.readouterr()


def test_a_reader_sees_at_least_what_was_flushed_before_it_started(tmp_path):
    path = tmp_path / "buf"
    with Writer(path, count=2, stream=True) as writer:
        for _ in range(15):
            acknowledged = writer.acknowledged()  # flushed before this load starts
            seen = ids_in(path)
            assert set(range(acknowledged)) <= seen
        writer.kill()


def test_moving_out_of_a_directory_holds_it_and_an_emptied_source_is_removed(tmp_path):
    src = tmp_path / "src"
    buf = TrajectoryReplayBuffer()
    buf.add_trajectories([coded_trajectory(i) for i in range(2)])
    buf.save_checkpoint(str(src))
    result = merge_or_split(str(src), str(tmp_path / "moved"))
    assert result.trajectories == 2
    assert not src.exists()  # emptied, lock file included
    assert ids_in(tmp_path / "moved") == {0, 1}


# -- the lock file itself -------------------------------------------------------------------------
def test_a_lock_file_that_is_not_a_regular_file_is_refused(tmp_path):
    path = tmp_path / "buf"
    path.mkdir()
    os.symlink("/etc/passwd", path / LOCK_NAME)
    with pytest.raises(BufferDirectoryError, match=LOCK_NAME):
        auto_saving(path)
    os.unlink(path / LOCK_NAME)
    os.mkfifo(path / LOCK_NAME)
    with pytest.raises(BufferDirectoryError, match="not a regular file"):
        auto_saving(path)


def test_release_drops_the_lock_and_is_idempotent(tmp_path):
    lock = DirectoryLock.acquire(str(tmp_path), "a test")
    with pytest.raises(DirectoryLockedError, match="for a test"):
        DirectoryLock.acquire(str(tmp_path), "another test")
    lock.release()
    lock.release()  # idempotent
    with DirectoryLock.acquire(str(tmp_path), "another test") as again:
        assert again.held
        assert json.loads((tmp_path / LOCK_NAME).read_text())["purpose"] == "another test"
    assert not again.held
