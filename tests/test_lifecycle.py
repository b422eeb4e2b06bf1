"""Lifecycle: close, flush, context manager, clear, clear_cache, counters, and writer errors.

Background writes are controlled by monkeypatching the ``pt`` writer; no test depends on timing.
"""

from __future__ import annotations

import errno
import hashlib
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_aligned, coded_trajectory

import rlinf_replay_buffer.formats.pt as pt_mod
from rlinf_replay_buffer import (
    EmptyBufferError,
    InvalidArgumentError,
    TrajectoryReplayBuffer,
    WriterError,
)
from rlinf_replay_buffer.writer import BackgroundWriter

N, E, B = 4, 2, 2
PER_TRAJ = N * E * B
WRITER_THREAD = "replay-buffer-writer"
NAME_RE = re.compile(r"^trajectory_(\d+)_.*\.(pt|pkl)$")


# -- helpers ------------------------------------------------------------------------------------
def trajectories_seen(buf: TrajectoryReplayBuffer, num: int = 3000) -> set[int]:
    batch = buf.sample(num)
    assert_aligned(batch, n=N)
    return {int(c) // 1000 for c in batch["curr_obs"]["states"][:, 0].tolist()}


def ids_on_disk(directory: Path) -> set[int]:
    return {int(m.group(1)) for p in directory.iterdir() if (m := NAME_RE.match(p.name))}


def file_hashes(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in directory.iterdir()
        if NAME_RE.match(p.name)
    }


def load_new(directory: Path) -> TrajectoryReplayBuffer:
    """A NEW buffer (no auto-save) reading ``directory``."""
    buf = TrajectoryReplayBuffer(sample_window_size=0)
    buf.load_checkpoint(str(directory))
    return buf


def auto(tmp_path: Path, name: str = "auto", **kwargs) -> TrajectoryReplayBuffer:
    kwargs.setdefault("sample_window_size", 0)
    return TrajectoryReplayBuffer(auto_save=True, auto_save_path=str(tmp_path / name), **kwargs)


def writer_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == WRITER_THREAD}


#: background writers created while :func:`fail_writes_of` is in force (:func:`wait_for_writer`)
WRITERS: list[BackgroundWriter] = []


def fail_writes_of(monkeypatch: pytest.MonkeyPatch, failing_ids: set[int]) -> list[int]:
    """Make the pt writer raise ENOSPC for trajectory files of ``failing_ids``; returns attempts.
    The background writers created meanwhile are recorded in :data:`WRITERS`."""
    original = pt_mod.write
    attempts: list[int] = []
    WRITERS.clear()
    init = BackgroundWriter.__init__

    def recording_init(writer: BackgroundWriter, *args, **kwargs) -> None:
        init(writer, *args, **kwargs)
        WRITERS.append(writer)

    monkeypatch.setattr(BackgroundWriter, "__init__", recording_init)

    def write(path, data, sync=True):
        m = NAME_RE.match(Path(path).name)
        if m:
            attempts.append(int(m.group(1)))
            if int(m.group(1)) in failing_ids:
                raise OSError(errno.ENOSPC, "No space left on device")
        return original(path, data, sync=sync)

    monkeypatch.setattr(pt_mod, "write", write)
    return attempts


def wait_for_writer() -> None:
    """Wait until the background writers are idle without collecting their errors.

    Every public call checks for errors, so the only way to make "the error surfaces on the
    next call" deterministic is to wait on the writer itself.
    """
    assert WRITERS, "no background writer was created under fail_writes_of"
    for writer in WRITERS:
        writer.wait()


# -- close --------------------------------------------------------------------------------------
def test_close_flushes_and_stops_the_writer_thread(tmp_path):
    before = writer_threads()
    buf = auto(tmp_path, cache_size=2)
    buf.add_trajectories([coded_trajectory(i) for i in range(4)])
    ours = writer_threads() - before
    assert len(ours) == 1
    buf.close()
    assert not any(t.is_alive() for t in ours)
    assert ids_on_disk(tmp_path / "auto") == {0, 1, 2, 3}
    assert trajectories_seen(load_new(tmp_path / "auto")) == {0, 1, 2, 3}
    # still usable after close, from memory and disk
    assert trajectories_seen(buf) == {0, 1, 2, 3}


def test_buffer_is_usable_again_after_close(tmp_path):
    buf = auto(tmp_path, cache_size=2)
    buf.add_trajectories([coded_trajectory(i) for i in range(2)])
    buf.close()
    assert buf.add_trajectories([coded_trajectory(2)]) == [2]
    assert trajectories_seen(buf) == {0, 1, 2}
    buf.close()
    buf.close()  # closing twice is harmless
    assert ids_on_disk(tmp_path / "auto") == {0, 1, 2}
    assert trajectories_seen(load_new(tmp_path / "auto")) == {0, 1, 2}


def test_close_without_auto_save_keeps_data(tmp_path):
    buf = TrajectoryReplayBuffer(sample_window_size=0)
    buf.add_trajectories([coded_trajectory(i) for i in range(3)])
    buf.close()
    assert buf.size == 3
    assert trajectories_seen(buf) == {0, 1, 2}
    assert list(tmp_path.iterdir()) == []


# -- flush --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["pt", "pkl", "segment"])
def test_after_flush_every_trajectory_is_on_disk_and_indexed(tmp_path, fmt):
    buf = auto(tmp_path, cache_size=2, trajectory_format=fmt)
    buf.add_trajectories([coded_trajectory(i) for i in range(3)])
    buf.add_trajectories([coded_trajectory(i) for i in range(3, 5)])
    buf.flush()
    directory = tmp_path / "auto"
    if fmt == "segment":
        assert len(list(directory.glob("seg-*/[0-9]*.bin"))) == len(buf.schema)  # a file per column
    else:
        assert ids_on_disk(directory) == set(range(5))
        assert {p.suffix for p in directory.iterdir() if NAME_RE.match(p.name)} == {f".{fmt}"}
    # a NEW buffer finds every file through the index (no close() was called)
    reader = load_new(directory)
    assert (reader.size, reader.total_samples) == (5, 5 * PER_TRAJ)
    assert trajectories_seen(reader) == set(range(5))
    assert buf.get_stats()["pending_writes"] == 0
    assert buf.get_stats()["files_written"] == 5
    buf.close()


def test_flush_without_auto_save_is_a_no_op(tmp_path):
    buf = TrajectoryReplayBuffer()
    buf.add_trajectories([coded_trajectory(0)])
    buf.flush()
    assert buf.size == 1
    assert list(tmp_path.iterdir()) == []


# -- context manager ----------------------------------------------------------------------------
def test_context_manager_closes(tmp_path):
    before = writer_threads()
    with auto(tmp_path) as buf:
        assert isinstance(buf, TrajectoryReplayBuffer)
        buf.add_trajectories([coded_trajectory(i) for i in range(3)])
        ours = writer_threads() - before
    assert ours and not any(t.is_alive() for t in ours)
    assert trajectories_seen(load_new(tmp_path / "auto")) == {0, 1, 2}


def test_context_manager_closes_on_exception_and_propagates_it(tmp_path):
    with pytest.raises(ValueError, match="boom"), auto(tmp_path) as buf:
        buf.add_trajectories([coded_trajectory(i) for i in range(2)])
        raise ValueError("boom")
    assert trajectories_seen(load_new(tmp_path / "auto")) == {0, 1}


# -- clear --------------------------------------------------------------------------------------
def assert_empty(buf: TrajectoryReplayBuffer) -> None:
    assert len(buf) == 0 and buf.size == 0 and buf.total_samples == 0
    assert not buf.is_ready()
    stats = buf.get_stats()
    assert stats["size"] == 0 and stats["total_samples"] == 0 and stats["window_transitions"] == 0
    with pytest.raises(EmptyBufferError):
        buf.sample(8)


def test_clear_without_auto_save_empties_index_and_counters():
    buf = TrajectoryReplayBuffer(sample_window_size=0)
    buf.add_trajectories([coded_trajectory(i) for i in range(3)])
    buf.clear()
    assert_empty(buf)
    assert buf.trajectory_counter == 0
    # usable again: only the new data is sampled
    assert buf.add_trajectories([coded_trajectory(20), coded_trajectory(21)]) == [0, 1]
    assert buf.size == 2 and buf.total_samples == 2 * PER_TRAJ
    assert trajectories_seen(buf) == {20, 21}


def test_clear_with_auto_save_keeps_files_and_continues_ids(tmp_path):
    buf = auto(tmp_path, cache_size=2)
    buf.add_trajectories([coded_trajectory(i) for i in range(3)])
    buf.flush()
    directory = tmp_path / "auto"
    before = file_hashes(directory)
    buf.clear()
    assert_empty(buf)
    assert buf.trajectory_counter == 3  # past the files on disk
    assert file_hashes(directory) == before
    assert buf.add_trajectories([coded_trajectory(30)]) == [3]
    assert trajectories_seen(buf) == {30}
    buf.close()
    after = file_hashes(directory)
    assert {k: after[k] for k in before} == before
    assert ids_on_disk(directory) == {0, 1, 2, 3}
    # the directory still lists everything it holds
    assert trajectories_seen(load_new(directory)) == {0, 1, 2, 30}


def test_clear_with_pending_writes_keeps_ids_unique(tmp_path):
    buf = auto(tmp_path)
    buf.add_trajectories([coded_trajectory(i) for i in range(3)])
    buf.clear()  # writes still queued at this point must not be overtaken by new ids
    assert buf.add_trajectories([coded_trajectory(40)]) == [3]
    buf.close()
    assert ids_on_disk(tmp_path / "auto") == {0, 1, 2, 3}


def test_clear_then_reopen_continues_past_cleared_files(tmp_path):
    buf = auto(tmp_path)
    buf.add_trajectories([coded_trajectory(i) for i in range(2)])
    buf.clear()
    buf.close()
    again = auto(tmp_path)
    assert again.trajectory_counter == 2
    assert again.add_trajectories([coded_trajectory(9)]) == [2]
    again.close()


# -- clear_cache --------------------------------------------------------------------------------
def test_clear_cache_with_auto_save_samples_from_disk(tmp_path):
    before = writer_threads()
    buf = auto(tmp_path, cache_size=3)
    buf.add_trajectories([coded_trajectory(i) for i in range(4)])
    ours = writer_threads() - before
    buf.clear_cache()
    assert not any(t.is_alive() for t in ours)  # the writer thread is stopped
    stats = buf.get_stats()
    assert stats["cached_trajectories"] == 0 and stats["cached_bytes"] == 0
    assert (buf.size, buf.total_samples, buf.trajectory_counter) == (4, 4 * PER_TRAJ, 4)
    assert trajectories_seen(buf) == {0, 1, 2, 3}
    # and adding restarts the writer
    assert buf.add_trajectories([coded_trajectory(4)]) == [4]
    assert trajectories_seen(buf) == {0, 1, 2, 3, 4}
    buf.flush()
    assert ids_on_disk(tmp_path / "auto") == {0, 1, 2, 3, 4}
    buf.close()


def test_clear_cache_without_auto_save_empties_the_buffer():
    buf = TrajectoryReplayBuffer(sample_window_size=0)
    buf.add_trajectories([coded_trajectory(i) for i in range(3)])
    buf.clear_cache()
    assert_empty(buf)
    assert buf.trajectory_counter == 3  # counters are kept
    assert buf.add_trajectories([coded_trajectory(7)]) == [3]
    assert trajectories_seen(buf) == {7}


# -- counters -----------------------------------------------------------------------------------
def test_len_total_samples_and_is_ready():
    buf = TrajectoryReplayBuffer(sample_window_size=0)
    assert len(buf) == 0 and buf.total_samples == 0
    assert buf.is_ready() is False
    assert buf.is_ready(0) is False  # nothing to sample yet
    assert buf.is_ready(min_size=1) is False
    buf.add_trajectories([coded_trajectory(0)])
    assert len(buf) == 1 and buf.total_samples == PER_TRAJ
    assert buf.is_ready() is True
    assert buf.is_ready(2) is False
    buf.add_trajectories([coded_trajectory(1, n=3, e=1, num_envs=4)])
    assert len(buf) == 2 and buf.total_samples == PER_TRAJ + 12
    assert buf.is_ready(2) is True
    assert buf.is_ready(min_size=3) is False
    with pytest.raises(InvalidArgumentError, match="min_size"):
        buf.is_ready(-1)


def test_window_limits_len_without_auto_save():
    buf = TrajectoryReplayBuffer(sample_window_size=2)
    for i in range(5):
        buf.add_trajectories([coded_trajectory(i)])
    assert len(buf) == 2 and buf.total_samples == 2 * PER_TRAJ
    assert buf.trajectory_counter == 5
    assert buf.get_stats()["evicted_trajectories"] == 3
    assert trajectories_seen(buf) == {3, 4}


STATS_KEYS = {
    "size",
    "total_samples",
    "trajectory_counter",
    "window_trajectories",
    "window_transitions",
    "cached_trajectories",
    "cached_bytes",
    "evicted_trajectories",
    "pending_writes",
    "files_written",
    "num_trajectories",
    "cache_size",
}


def test_get_stats_keys_and_values(tmp_path):
    buf = auto(tmp_path, cache_size=2, sample_window_size=3)
    assert STATS_KEYS <= buf.get_stats().keys()
    buf.add_trajectories([coded_trajectory(i) for i in range(4)])
    buf.flush()
    stats = buf.get_stats()
    assert STATS_KEYS <= stats.keys()
    assert stats["size"] == 4 and stats["total_samples"] == 4 * PER_TRAJ
    assert stats["trajectory_counter"] == 4
    assert stats["window_trajectories"] == 3 and stats["window_transitions"] == 3 * PER_TRAJ
    assert stats["cached_trajectories"] == 2 and stats["cached_bytes"] > 0
    assert stats["pending_writes"] == 0 and stats["files_written"] == 4
    # RLinf's keys too, and only numbers: RLinf's workers np.mean every value
    assert (stats["num_trajectories"], stats["cache_size"]) == (4, 2)
    assert all(type(v) is int for v in stats.values()), stats
    assert float(np.mean(list(stats.values()))) >= 0
    assert (buf.auto_save, buf.auto_save_path) == (True, str((tmp_path / "auto").resolve()))
    buf.close()


# -- background writer errors -------------------------------------------------------------------
def test_an_add_that_does_not_wait_adds_and_leaves_a_failed_write_to_flush(tmp_path, monkeypatch):
    """An add that does not wait for the writer cannot act on an older failed write: it adds its
    trajectory (never "raise about trajectory 1 and drop trajectory 3"); flush() reports it."""
    attempts = fail_writes_of(monkeypatch, {1})
    buf = auto(tmp_path, enable_cache=False)
    buf.add_trajectories([coded_trajectory(i) for i in range(3)])
    wait_for_writer()
    assert sorted(attempts) == [0, 1, 2]
    assert buf.add_trajectories([coded_trajectory(3)]) == [3]
    assert buf.size == 4
    assert trajectories_seen(buf) == {0, 1, 2, 3}  # 1 from memory
    with pytest.raises(WriterError, match="No space left on device") as info:
        buf.flush()
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC
    assert "trajectory 1" in str(info.value)
    monkeypatch.undo()
    buf.save_checkpoint(str(tmp_path / "ckpt"))
    assert trajectories_seen(load_new(tmp_path / "ckpt")) == {0, 1, 2, 3}
    buf.close()


def test_a_failed_write_is_not_raised_by_sample(tmp_path, monkeypatch):
    fail_writes_of(monkeypatch, {0})
    buf = auto(tmp_path, enable_cache=False)
    buf.add_trajectories([coded_trajectory(i) for i in range(2)])
    wait_for_writer()
    assert trajectories_seen(buf) == {0, 1}  # from memory (0) and from disk (1)
    with pytest.raises(WriterError, match="No space left on device"):
        buf.flush()
    monkeypatch.undo()
    buf.save_checkpoint(str(tmp_path / "ckpt"))
    assert trajectories_seen(load_new(tmp_path / "ckpt")) == {0, 1}
    buf.close()


def test_failed_write_surfaces_on_flush(tmp_path, monkeypatch):
    fail_writes_of(monkeypatch, {2})
    buf = auto(tmp_path, enable_cache=False)
    buf.add_trajectories([coded_trajectory(i) for i in range(4)])
    with pytest.raises(WriterError, match="No space left on device"):
        buf.flush()
    assert ids_on_disk(tmp_path / "auto") == {0, 1, 3}
    assert buf.get_stats()["pending_writes"] == 1
    assert trajectories_seen(buf) == {0, 1, 2, 3}
    monkeypatch.undo()
    buf.save_checkpoint(str(tmp_path / "ckpt"))
    assert trajectories_seen(load_new(tmp_path / "ckpt")) == {0, 1, 2, 3}
    buf.close()


def test_failed_write_is_repaired_by_checkpointing_into_the_auto_save_path(tmp_path, monkeypatch):
    fail_writes_of(monkeypatch, {1})
    buf = auto(tmp_path, enable_cache=False)
    buf.add_trajectories([coded_trajectory(i) for i in range(3)])
    with pytest.raises(WriterError, match="No space"):
        buf.flush()
    monkeypatch.undo()
    buf.save_checkpoint(str(tmp_path / "auto"))
    buf.close()
    assert ids_on_disk(tmp_path / "auto") == {0, 1, 2}
    assert trajectories_seen(load_new(tmp_path / "auto")) == {0, 1, 2}


def test_failed_write_surfaces_on_close(tmp_path, monkeypatch):
    fail_writes_of(monkeypatch, {0})
    buf = auto(tmp_path, enable_cache=False)
    buf.add_trajectories([coded_trajectory(i) for i in range(2)])
    with pytest.raises(WriterError, match="No space left on device"):
        buf.close()
    assert trajectories_seen(buf) == {0, 1}
    monkeypatch.undo()
    buf.save_checkpoint(str(tmp_path / "ckpt"))
    assert trajectories_seen(load_new(tmp_path / "ckpt")) == {0, 1}
    buf.close()


@pytest.mark.parametrize("then", ["flush", "close"])
def test_after_the_cause_is_fixed_flush_or_close_makes_the_failed_trajectory_durable(
    tmp_path, monkeypatch, then
):
    """The WriterError says "fix the cause and call flush() ... again"; flush() promises that
    every trajectory added before the call is durable when it returns. So once the disk has
    space again, flush()/close() must either write the failed trajectory or keep raising."""
    fail_writes_of(monkeypatch, {1})
    buf = auto(tmp_path, enable_cache=False)
    buf.add_trajectories([coded_trajectory(i) for i in range(3)])
    with pytest.raises(WriterError, match="call flush\\(\\) or save_checkpoint\\(\\) again"):
        buf.flush()
    monkeypatch.undo()  # space was freed
    try:
        getattr(buf, then)()
    except WriterError:
        return  # still reported: acceptable, nothing is silently lost
    assert ids_on_disk(tmp_path / "auto") == {0, 1, 2}, "flush() returned but trajectory 1 is not on disk"
    assert trajectories_seen(load_new(tmp_path / "auto")) == {0, 1, 2}
    buf.close()


def test_buffer_keeps_working_after_a_reported_write_error(tmp_path, monkeypatch):
    fail_writes_of(monkeypatch, {0})
    buf = auto(tmp_path)
    buf.add_trajectories([coded_trajectory(0)])
    with pytest.raises(WriterError):
        buf.flush()
    monkeypatch.undo()
    assert buf.add_trajectories([coded_trajectory(1)]) == [1]
    assert trajectories_seen(buf) == {0, 1}
    buf.save_checkpoint(str(tmp_path / "ckpt"))
    assert 1 in ids_on_disk(tmp_path / "auto")
    assert trajectories_seen(load_new(tmp_path / "ckpt")) == {0, 1}
    buf.close()


def test_add_returns_before_slow_write_completes(tmp_path, monkeypatch):
    original = pt_mod.write
    started = threading.Event()
    release = threading.Event()

    def slow_write(path, data, sync=True):
        started.set()
        if not release.wait(20):  # safety bound: a synchronous write would otherwise hang
            raise TimeoutError("write was never released")
        return original(path, data, sync=sync)

    monkeypatch.setattr(pt_mod, "write", slow_write)
    buf = auto(tmp_path, enable_cache=False)
    directory = tmp_path / "auto"
    try:
        assert buf.add_trajectories([coded_trajectory(0)]) == [0]
        assert started.wait(20)  # the write is in progress on the writer thread
        assert buf.add_trajectories([coded_trajectory(1)]) == [1]
        assert ids_on_disk(directory) == set()
        assert buf.get_stats()["pending_writes"] == 2
        assert trajectories_seen(buf, 500) == {0, 1}  # sampled while the writes are pending
    finally:
        release.set()
    buf.flush()
    assert ids_on_disk(directory) == {0, 1}
    assert buf.get_stats()["pending_writes"] == 0
    buf.close()
    assert trajectories_seen(load_new(directory)) == {0, 1}


def test_adds_wait_for_the_disk_once_pending_writes_exceed_their_bound(tmp_path):
    buf = auto(tmp_path, cache_size=1, max_pending_bytes=1)
    for i in range(4):
        buf.add_trajectories([coded_trajectory(i)])
        # nothing may wait in memory beyond the bound: the add returned after the write
        assert buf.get_stats()["pending_writes"] == 0
    roomy = TrajectoryReplayBuffer(
        auto_save=True, auto_save_path=str(tmp_path / "roomy"), max_pending_bytes=1 << 30
    )
    roomy.add_trajectories([coded_trajectory(i) for i in range(4)])
    roomy.flush()
    assert roomy.get_stats()["files_written"] == 4
    roomy.close()


# -- segment writes that fail ---------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["append", "fsync"])
def test_a_failed_segment_write_is_retried_by_flush_and_loses_nothing(tmp_path, monkeypatch, stage):
    from rlinf_replay_buffer.formats import segment as seg_mod

    failures = {"left": 1}
    original = seg_mod.SegmentStore._append if stage == "append" else seg_mod.SegmentStore._sync

    def failing(self, *args):
        if failures["left"] and (stage == "fsync" and self._dirty or stage == "append"):
            failures["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args)

    monkeypatch.setattr(seg_mod.SegmentStore, "_append" if stage == "append" else "_sync", failing)
    buf = auto(tmp_path, trajectory_format="segment", cache_size=1)
    buf.add_trajectories([coded_trajectory(i) for i in range(4)])
    with pytest.raises(WriterError, match="No space left on device"):
        buf.flush()
    assert trajectories_seen(buf) == {0, 1, 2, 3}  # nothing left the buffer
    buf.flush()  # the failed trajectory is written again
    assert buf.get_stats()["pending_writes"] == 0
    reader = load_new(tmp_path / "auto")
    assert (reader.size, trajectories_seen(reader)) == (4, {0, 1, 2, 3})
    assert_aligned(reader.sample(500))
    buf.close()
