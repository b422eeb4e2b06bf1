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
    flat = _rows(1024, 1)  # 4 MiB a trajectory
    schema = Schema.of_columns(flat, lead_dims=1)
    ring = TrajectoryCache(max_trajectories=8)  # 32 MiB of ring
    before = prefault.PREFAULTER.populated
    ring.put(0, flat, schema)
    prefault.PREFAULTER.drain()
    assert prefault.PREFAULTER.populated - before == 2 * 1024 * 4096  # room for two more like it
    for i in range(1, 12):  # wrapping around: every page committed once, then nothing more
        ring.put(i, _rows(1024, i), schema)
    prefault.PREFAULTER.drain()
    assert prefault.PREFAULTER.populated - before == 7 * 1024 * 4096  # the ring after the first put
    assert torch.equal(ring.view(11)[("x",)], _rows(1024, 11)[("x",)])


@linux_only
def test_small_trajectories_get_at_least_min_ahead_bytes_committed_and_no_more():
    flat = _rows(4, 1)  # 16 KiB a trajectory
    schema = Schema.of_columns(flat, lead_dims=1)
    ring = TrajectoryCache(max_trajectories=4096)  # 64 MiB of ring
    before = prefault.PREFAULTER.populated
    for i in range(300):
        ring.put(i, flat, schema)
    prefault.PREFAULTER.drain()
    committed = prefault.PREFAULTER.populated - before
    # at least MIN_AHEAD_BYTES ahead, asked for again only once half of it is used
    assert 300 * 4 * 4096 <= committed <= 300 * 4 * 4096 + prefault.MIN_AHEAD_BYTES


def test_batches_are_the_same_with_and_without_committing_ahead(monkeypatch):
    trajs = [coded_trajectory(i, n=6, e=2, num_envs=3) for i in range(12)]
    a = TrajectoryReplayBuffer(seed=3, sample_window_size=0)
    a.add_trajectories(trajs)
    monkeypatch.setattr(prefault.PREFAULTER, "available", False)
    b = TrajectoryReplayBuffer(seed=3, sample_window_size=0)
    b.add_trajectories(trajs)
    for n in (1, 100, 1000):
        assert_same_batch(a.sample(n), b.sample(n))
