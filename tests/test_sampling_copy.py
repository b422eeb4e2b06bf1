"""Sampling copies (rlinf_replay_buffer/sampling_copy.py): file-backed trajectories read once
from their files are sampled from a scratch segment afterwards. Batches are bit-identical to
those of a buffer holding everything in memory (the reference), whatever the format, cache,
evictions and window changes; copies go when their trajectories leave; a copy that cannot be
written never fails a sample."""

from __future__ import annotations

import errno
import glob
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import assert_aligned, assert_same_batch, coded_trajectory

from rlinf_replay_buffer import InvalidArgumentError, ReplayBufferWarning, TrajectoryReplayBuffer
from rlinf_replay_buffer.formats.segment import SegmentStore

FILE_FORMATS = ["pt", "pkl"]


@pytest.fixture(autouse=True)
def private_tmp(tmp_path, monkeypatch):
    """Copies go to the system's temporary directory: make it this test's own."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


def copies(scratch: Path) -> list[str]:
    return glob.glob(str(scratch / "rlinf-sampling-copy-*" / "seg-*"))


def auto(tmp_path: Path, fmt: str, window: int, cache: int, **kwargs) -> TrajectoryReplayBuffer:
    return TrajectoryReplayBuffer(
        seed=7,
        sample_window_size=window,
        cache_size=cache,
        auto_save=True,
        auto_save_path=str(tmp_path / f"auto-{fmt}"),
        trajectory_format=fmt,
        **kwargs,
    )


def pair(tmp_path: Path, fmt: str, window: int, cache: int, **kwargs) -> tuple[TrajectoryReplayBuffer, ...]:
    """A disk-backed buffer with a small cache, and the in-memory reference (same seed)."""
    memory = TrajectoryReplayBuffer(seed=7, sample_window_size=window, **kwargs)
    return auto(tmp_path, fmt, window, cache, **kwargs), memory


def add_both(buffers, codes) -> None:
    """Add the same trajectories to each buffer; flush the auto-saving ones (rows still waiting
    for their file are read from memory, not copied)."""
    for code in codes:
        traj = coded_trajectory(code, n=3, e=2, num_envs=2)
        for buf in buffers:
            buf.add_trajectories([traj])
    for buf in buffers:
        buf.flush()


@pytest.mark.parametrize("fmt", FILE_FORMATS)
def test_samples_from_copies_are_the_samples_from_memory(tmp_path, private_tmp, fmt):
    disk, memory = pair(tmp_path, fmt, window=12, cache=2)
    add_both((disk, memory), range(20))
    disk.flush()
    for _ in range(6):  # the first sample reads the files and copies them; the rest read copies
        a, b = disk.sample(300), memory.sample(300)
        assert_same_batch(a, b)
        assert_aligned(a, n=3)
    assert copies(private_tmp)
    disk.close()
    assert not glob.glob(str(private_tmp / "rlinf-sampling-copy-*"))  # closing deletes them


@pytest.mark.parametrize("fmt", FILE_FORMATS)
def test_copies_follow_adds_evictions_and_window_changes(tmp_path, private_tmp, fmt):
    """The reference is the segment format (an in-memory buffer drops what a narrower window
    leaves out; a disk-backed one keeps it)."""
    disk = auto(tmp_path, fmt, window=8, cache=1, max_trajectories=14)
    memory = auto(tmp_path, "segment", window=8, cache=1, max_trajectories=14)
    add_both((disk, memory), range(10))
    for step in range(12):
        assert_same_batch(disk.sample(200), memory.sample(200))
        add_both((disk, memory), [100 + step])  # evictions past 14 trajectories
        if step == 5:
            disk.sample_window_size = memory.sample_window_size = 4
        if step == 8:
            disk.sample_window_size = memory.sample_window_size = 0
    assert_same_batch(disk.sample(500), memory.sample(500))
    disk.close()
    memory.close()


def test_copy_segments_of_trajectories_that_left_are_deleted(tmp_path, private_tmp, monkeypatch):
    monkeypatch.setattr("rlinf_replay_buffer.sampling_copy.COPY_SEGMENT_BYTES", 1)  # one per segment
    disk, memory = pair(tmp_path, "pt", window=4, cache=1)
    add_both((disk, memory), range(4))
    assert_same_batch(disk.sample(400), memory.sample(400))
    before = len(copies(private_tmp))
    assert before >= 2
    add_both((disk, memory), range(10, 14))  # the first four left the window
    for _ in range(3):
        assert_same_batch(disk.sample(400), memory.sample(400))
    assert len(copies(private_tmp)) <= 4 + 1  # the new window's, and the one being appended
    disk.close()


def test_a_loaded_directory_is_sampled_through_copies(tmp_path, private_tmp):
    src = TrajectoryReplayBuffer(sample_window_size=0)
    add_both((src,), range(9))
    src.save_checkpoint(str(tmp_path / "ckpt"))
    loaded = TrajectoryReplayBuffer(seed=3, sample_window_size=0, cache_size=2)
    loaded.load_checkpoint(str(tmp_path / "ckpt"))
    reference = TrajectoryReplayBuffer(seed=3, sample_window_size=0)
    reference.load_checkpoint(str(tmp_path / "ckpt"))
    reference.clear_cache()
    for _ in range(4):
        assert_same_batch(loaded.sample(256), reference.sample(256))
    assert copies(private_tmp)


def test_a_copy_that_cannot_be_written_never_fails_a_sample(tmp_path, private_tmp, monkeypatch):
    def full(self, rows, sync=True, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SegmentStore, "append", full)
    disk, memory = pair(tmp_path, "pt", window=10, cache=2)
    add_both((disk, memory), range(10))
    with pytest.warns(ReplayBufferWarning, match="sampling copies .* stopped .*No space left"):
        assert_same_batch(disk.sample(300), memory.sample(300))
    for _ in range(3):  # reads go on from the files, without another warning
        assert_same_batch(disk.sample(300), memory.sample(300))
    assert not glob.glob(str(private_tmp / "rlinf-sampling-copy-*" / "seg-*"))
    disk.close()


def test_the_buffer_directory_never_holds_a_copy(tmp_path, private_tmp):
    disk, memory = pair(tmp_path, "pt", window=10, cache=2)
    add_both((disk, memory), range(10))
    disk.sample(300)
    assert not [n for n in os.listdir(tmp_path / "auto-pt") if n.startswith(("seg-", "rlinf-sampling"))]
    disk.close()


def test_copies_go_to_the_directory_asked_for_or_nowhere(tmp_path, private_tmp):
    chosen = tmp_path / "copies"
    chosen.mkdir()
    disk = auto(tmp_path, "pt", window=10, cache=2, sampling_copy_dir=str(chosen))
    add_both((disk,), range(10))
    disk.sample(300)
    assert glob.glob(str(chosen / "rlinf-sampling-copy-*" / "seg-*")) and not copies(private_tmp)
    disk.close()
    off = TrajectoryReplayBuffer(
        seed=7,
        sample_window_size=10,
        cache_size=2,
        auto_save=True,
        auto_save_path=str(tmp_path / "off"),
        sampling_copies=False,
    )
    memory = TrajectoryReplayBuffer(seed=7, sample_window_size=10)
    add_both((off, memory), range(10))
    for _ in range(3):
        assert_same_batch(off.sample(300), memory.sample(300))
    assert not copies(private_tmp) and off.sampling_copies is False
    off.close()


def test_a_copy_directory_that_does_not_exist_is_refused(tmp_path):
    with pytest.raises(InvalidArgumentError, match="sampling_copy_dir must be None or an existing directory"):
        TrajectoryReplayBuffer(sampling_copy_dir=str(tmp_path / "missing"))


CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from conftest import coded_trajectory
from rlinf_replay_buffer import TrajectoryReplayBuffer
buf = TrajectoryReplayBuffer(sample_window_size=0, cache_size=1, auto_save=True,
                             auto_save_path={path!r}, sampling_copy_dir={copies!r})
for code in range(4):
    buf.add_trajectories([coded_trajectory(code)])
buf.flush()
buf.sample(100)
print("copied", flush=True)
time.sleep(60)
"""


def test_the_copy_of_a_killed_process_is_removed_by_the_next_one(tmp_path, private_tmp):
    chosen = tmp_path / "copies"
    chosen.mkdir()
    code = CHILD.format(tests=str(Path(__file__).parent), path=str(tmp_path / "dead"), copies=str(chosen))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == b"copied"
        orphan = glob.glob(str(chosen / "rlinf-sampling-copy-*"))
        assert len(orphan) == 1
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert os.path.isdir(orphan[0])  # SIGKILL: nothing ran to remove it
    alive = auto(tmp_path, "pt", window=10, cache=1, sampling_copy_dir=str(chosen))
    add_both((alive,), range(4))
    alive.sample(100)
    left = glob.glob(str(chosen / "rlinf-sampling-copy-*"))
    assert orphan[0] not in left and len(left) == 1  # only the live buffer's own
    alive.close()
