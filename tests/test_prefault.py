"""Ring pages ahead of the head are committed by a background thread (``prefault.py``), so an
add before the ring has wrapped does not pay a page fault per 4 KiB it copies. Committing never
changes what the pages hold, and stops once every page of the ring has been committed once."""

from __future__ import annotations

import mmap
import sys

import numpy as np
import pytest
import torch
from conftest import TrackedBuffer as TrajectoryReplayBuffer
from conftest import assert_same_batch, coded_trajectory

from rlinf_replay_buffer import prefault
from rlinf_replay_buffer.cache import TrajectoryCache
from rlinf_replay_buffer.schema import Schema

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise(MADV_POPULATE_WRITE)")


@linux_only
def test_committing_pages_keeps_what_they_hold():
    m = mmap.mmap(-1, 8 * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    arr = np.frombuffer(m, dtype=np.uint8)
    arr[: 3 * mmap.PAGESIZE] = 7  # three pages written, five never touched
    assert prefault.populate(arr.ctypes.data + 5, 8 * mmap.PAGESIZE - 10)
    assert (arr[: 3 * mmap.PAGESIZE] == 7).all() and (arr[3 * mmap.PAGESIZE :] == 0).all()
    del arr


def _rows(n: int, value: int) -> dict:
    return {("x",): torch.full((n, 1024), value, dtype=torch.float32)}


@linux_only
def test_two_trajectories_ahead_of_the_head_are_committed_until_the_ring_has_been_once():
    flat = _rows(16, 1)
    schema = Schema.of_columns(flat, lead_dims=1)
    ring = TrajectoryCache(max_trajectories=8)  # 8 x 16 rows of 4 KiB: 512 KiB
    before = prefault.PREFAULTER.populated
    ring.put(0, flat, schema)
    prefault.PREFAULTER.drain()
    assert prefault.PREFAULTER.populated - before == 2 * 16 * 4096  # room for two more like it
    for i in range(1, 20):  # wrapping around: every page committed once, then nothing more
        ring.put(i, _rows(16, i), schema)
    prefault.PREFAULTER.drain()
    assert prefault.PREFAULTER.populated - before == 7 * 16 * 4096  # the ring after the first put
    assert torch.equal(ring.view(19)[("x",)], _rows(16, 19)[("x",)])


def test_batches_are_the_same_with_and_without_committing_ahead(monkeypatch):
    trajs = [coded_trajectory(i, n=6, e=2, num_envs=3) for i in range(12)]
    a = TrajectoryReplayBuffer(seed=3, sample_window_size=0)
    a.add_trajectories(trajs)
    monkeypatch.setattr(prefault.PREFAULTER, "available", False)
    b = TrajectoryReplayBuffer(seed=3, sample_window_size=0)
    b.add_trajectories(trajs)
    for n in (1, 100, 1000):
        assert_same_batch(a.sample(n), b.sample(n))
