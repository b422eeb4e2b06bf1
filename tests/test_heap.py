"""Memory of rows written by the background writer is handed back to the system
(``rlinf_replay_buffer.heap``): without it, glibc keeps freed image trajectories in its heap and
a disk-backed buffer holds hundreds of megabytes it no longer uses."""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import TrackedBuffer as TrajectoryReplayBuffer
from conftest import coded_trajectory

from rlinf_replay_buffer import heap


def test_the_heap_is_trimmed_each_time_the_threshold_of_freed_bytes_is_crossed(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "trim_heap", lambda: calls.append(1) or True)
    freed = heap.FreedBytes(threshold=100)
    freed.add(60)
    assert calls == [] and freed.trims == 0
    freed.add(60)  # 120 >= 100: trim, and count again from zero
    assert calls == [1] and freed.trims == 1
    freed.add(99)
    assert freed.trims == 1
    freed.add(1)
    assert freed.trims == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_asking_glibc_to_trim_works_here():
    assert heap.trim_heap() is True


def test_rows_the_writer_has_written_count_towards_a_trim(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "trim_heap", lambda: calls.append(1) or True)
    monkeypatch.setattr(heap, "TRIM_AFTER_BYTES", 1)  # every written trajectory crosses it
    buf = TrajectoryReplayBuffer(
        auto_save=True, auto_save_path=str(tmp_path / "d"), enable_cache=True, cache_size=1
    )
    buf.add_trajectories([coded_trajectory(i) for i in range(3)])
    buf.flush()
    assert len(calls) >= 3
    batch = buf.sample(64)  # nothing the buffer still needs was let go
    assert torch.isfinite(batch["rewards"]).all()
