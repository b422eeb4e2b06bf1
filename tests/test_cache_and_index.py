"""Component tests: the in-memory arena (cache) and the trajectory index."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from rlinf_replay_buffer.cache import TrajectoryCache
from rlinf_replay_buffer.index import TrajectoryIndex
from rlinf_replay_buffer.record import Record
from rlinf_replay_buffer.schema import Schema

IMAGE_SCHEMA_ROWS = 256  # one trajectory of 256 steps, B = 1


def flat_trajectory(code: int, rows: int, image: bool = False) -> dict:
    cols = {("rewards",): torch.full((rows, 1), float(code))}
    cols[("curr_obs", "states")] = torch.arange(rows, dtype=torch.float32)[:, None].repeat(1, 3) + code
    if image:
        cols[("curr_obs", "main_images")] = torch.full((rows, 128, 128, 3), code % 255, dtype=torch.uint8)
    return cols


def schema_of(flat: dict) -> Schema:
    return Schema.of_columns(flat, lead_dims=1)


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_configuring_a_huge_cache_allocates_nothing_up_front():
    cache = TrajectoryCache(max_trajectories=20_000)
    assert cache.reserved_bytes == 0 and cache.nbytes == 0 and cache.capacity == 0


def test_cache_commits_memory_for_the_data_it_holds_not_for_its_capacity():
    traj = flat_trajectory(1, IMAGE_SCHEMA_ROWS, image=True)
    schema = schema_of(traj)
    cache = TrajectoryCache(max_trajectories=20_000)
    before = resident_bytes()
    cache.put(0, traj, schema)
    one = IMAGE_SCHEMA_ROWS * schema.row_bytes
    assert cache.nbytes == one
    assert resident_bytes() - before < 2 * one + (8 << 20)


def test_resident_memory_follows_live_rows_as_the_ring_advances():
    schema = schema_of(flat_trajectory(0, 50, image=True))
    one = 50 * schema.row_bytes  # about 2.4 MB
    cache = TrajectoryCache(max_trajectories=4)
    cache.put(0, flat_trajectory(0, 50, image=True), schema)
    before = resident_bytes()
    for i in range(1, 200):  # 200 trajectories pass through: ~490 MB if pages were kept
        cache.put(i, flat_trajectory(i, 50, image=True), schema)
    assert cache.ids() == [196, 197, 198, 199]
    assert resident_bytes() - before < 6 * one + (16 << 20)


def test_cache_evicts_the_oldest_first():
    traj = flat_trajectory(0, 10)
    cache = TrajectoryCache(max_trajectories=3)
    evicted = []
    for i in range(6):
        evicted += cache.put(i, flat_trajectory(i, 10), schema_of(traj))
    assert evicted == [0, 1, 2]
    assert cache.ids() == [3, 4, 5]
    for i in (3, 4, 5):
        assert (cache.view(i)[("rewards",)] == i).all()


def test_cache_bounded_in_bytes_keeps_at_least_the_newest():
    traj = flat_trajectory(0, 100)
    schema = schema_of(traj)
    per = 100 * schema.row_bytes
    cache = TrajectoryCache(max_trajectories=None, max_bytes=int(2.5 * per))
    for i in range(5):
        cache.put(i, flat_trajectory(i, 100), schema)
    assert cache.ids() == [3, 4] and cache.nbytes <= 2.5 * per
    small = TrajectoryCache(max_trajectories=None, max_bytes=1)
    small.put(0, traj, schema)
    assert small.ids() == [0]


def test_a_full_ring_evicts_the_oldest_and_wraps_trajectories_around_its_end():
    schema = schema_of(flat_trajectory(0, 10))
    cache = TrajectoryCache(max_trajectories=None, reserve_bytes=35 * schema.row_bytes)
    trajs = {i: flat_trajectory(i * 100, 10) for i in range(10)}
    for i, t in trajs.items():
        cache.put(i, t, schema)
        assert cache.rows <= cache.capacity == 35
    assert cache.ids() == [7, 8, 9]
    for i in cache.ids():  # 7 starts at ring row 0 (70 % 35); 8 and 9 do not wrap; some earlier did
        for key in schema:
            assert torch.equal(cache.view(i)[key], trajs[i][key])


def test_a_trajectory_larger_than_the_ring_replaces_everything():
    schema = schema_of(flat_trajectory(0, 10))
    cache = TrajectoryCache(max_trajectories=None, reserve_bytes=25 * schema.row_bytes)
    cache.put(0, flat_trajectory(0, 10), schema)
    big = flat_trajectory(7, 60)
    assert cache.put(1, big, schema) == [0]
    assert cache.ids() == [1] and cache.capacity >= 60
    assert torch.equal(cache.view(1)[("curr_obs", "states")], big[("curr_obs", "states")])


def test_pinned_trajectories_are_copied_out_before_their_rows_are_reused():
    schema = schema_of(flat_trajectory(0, 10))
    cache = TrajectoryCache(max_trajectories=2, reserve_bytes=25 * schema.row_bytes)
    trajs = {i: flat_trajectory(i, 10) for i in range(8)}
    cache.put(0, trajs[0], schema)
    cache.put(1, trajs[1], schema)
    pin = cache.pin([0, 1])
    for i in range(2, 8):  # the ring is overwritten several times
        cache.put(i, trajs[i], schema)
    for i in (0, 1):
        rows = cache.take(pin, i)
        for key in schema:
            assert torch.equal(rows[key], trajs[i][key])
    cache.unpin(pin)
    assert cache.open_pins == 0


@pytest.mark.parametrize("reserve_rows", [None, 40])
def test_gather_returns_the_rows_asked_for_across_the_ring_end(reserve_rows):
    rng = np.random.default_rng(0)
    trajs = {i: flat_trajectory(i * 1000, int(rng.integers(5, 15))) for i in range(12)}
    schema = schema_of(trajs[0])
    reserve = None if reserve_rows is None else reserve_rows * schema.row_bytes
    cache = TrajectoryCache(max_trajectories=None, reserve_bytes=reserve)
    for i, t in trajs.items():
        cache.put(i, t, schema)
    held = cache.ids()
    reference = {k: torch.cat([trajs[i][k] for i in held]) for k in schema}  # newest rows, in order
    span = cache.rows
    offsets = torch.from_numpy(rng.integers(0, span, size=500))
    got = cache.gather(offsets, cache.newest_rows_start(span), span)
    out = {k: torch.zeros((600, *s.row_shape), dtype=s.dtype) for k, s in schema.items()}
    dest = torch.arange(100, 600)
    cache.gather_into(out, dest, offsets, cache.newest_rows_start(span), span)
    for key in schema:
        assert torch.equal(got[key], reference[key][offsets])
        assert torch.equal(out[key][100:], reference[key][offsets])


def record(tid: int, steps: int, envs: int = 2) -> Record:
    return Record(tid, steps, envs, None, "w", 0, f"u{tid}", [steps, envs, 1])


def test_index_window_is_the_newest_trajectories_with_cumulative_counts():
    index = TrajectoryIndex()
    for tid in range(200):
        index.append(record(tid, 1 + tid % 7))
    window = index.window(5)
    assert window.ids.tolist() == [195, 196, 197, 198, 199]
    assert window.first == 195
    counts = [2 * (1 + t % 7) for t in range(195, 200)]
    assert window.ends.tolist() == np.cumsum(counts).tolist()
    whole = index.window(0)
    assert len(whole.ids) == 200 and whole.first == 0 and whole.ends[-1] == index.total_transitions


def test_index_pop_oldest_keeps_order_and_totals():
    index = TrajectoryIndex()
    for tid in range(100):
        index.append(record(tid, 3))
    for expected in range(70):
        assert index.pop_oldest().trajectory_id == expected
    for tid in range(100, 300):
        index.append(record(tid, 3))
    assert index.ids().tolist() == list(range(70, 300))
    assert index.total_transitions == 230 * 6 and len(index) == 230
    assert [r.trajectory_id for r in index][:3] == [70, 71, 72]


def test_index_refuses_a_duplicate_id():
    index = TrajectoryIndex()
    index.append(record(1, 2))
    with pytest.raises(KeyError, match="already indexed"):
        index.append(record(1, 2))


def test_a_ring_sized_by_trajectories_grows_for_longer_ones_and_keeps_them_all():
    schema = schema_of(flat_trajectory(0, 10))
    cache = TrajectoryCache(max_trajectories=3)
    trajs = {0: flat_trajectory(0, 10), 1: flat_trajectory(100, 10), 2: flat_trajectory(200, 25)}
    for i, t in trajs.items():
        assert cache.put(i, t, schema) == []
    assert cache.ids() == [0, 1, 2] and cache.capacity >= 45
    for i, t in trajs.items():
        for key in schema:
            assert torch.equal(cache.view(i)[key], t[key])
