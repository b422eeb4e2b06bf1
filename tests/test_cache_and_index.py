"""Component tests: the in-memory arena (cache) and the trajectory index."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlinf.data.replay.cache import TrajectoryCache
from rlinf.data.replay.directory import Record
from rlinf.data.replay.index import TrajectoryIndex
from rlinf.data.replay.schema import Schema

IMAGE_SCHEMA_ROWS = 256  # one trajectory of 256 steps, B = 1


def flat_trajectory(code: int, rows: int, image: bool = False) -> dict:
    cols = {("rewards",): torch.full((rows, 1), float(code))}
    cols[("curr_obs", "states")] = torch.arange(rows, dtype=torch.float32)[:, None].repeat(1, 3) + code
    if image:
        cols[("curr_obs", "main_images")] = torch.full((rows, 128, 128, 3), code % 255, dtype=torch.uint8)
    return cols


def schema_of(flat: dict) -> Schema:
    return Schema.of_columns(flat, lead_dims=1)


def test_configuring_a_huge_cache_allocates_nothing_up_front():
    cache = TrajectoryCache(max_trajectories=20_000)
    assert cache.allocated_bytes == 0 and cache.nbytes == 0


def test_cache_allocates_for_the_data_it_holds_not_for_its_capacity():
    traj = flat_trajectory(1, IMAGE_SCHEMA_ROWS, image=True)
    schema = schema_of(traj)
    cache = TrajectoryCache(max_trajectories=20_000)
    cache.put(0, traj, schema)
    one = IMAGE_SCHEMA_ROWS * schema.row_bytes
    assert cache.nbytes == one
    assert cache.allocated_bytes <= max(4 << 20, 2 * one)


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


def test_chunks_are_released_once_all_their_trajectories_are_evicted():
    traj = flat_trajectory(0, 50)
    schema = schema_of(traj)
    cache = TrajectoryCache(max_trajectories=4, chunk_bytes=2 * 50 * schema.row_bytes)
    for i in range(40):
        cache.put(i, flat_trajectory(i, 50), schema)
    assert len(cache._chunks) <= 4
    assert cache.allocated_bytes <= 4 * 2 * 50 * schema.row_bytes + (4 << 20)


def test_views_handed_out_stay_valid_after_eviction():
    traj = flat_trajectory(0, 20)
    schema = schema_of(traj)
    cache = TrajectoryCache(max_trajectories=1, chunk_bytes=1)
    cache.put(0, traj, schema)
    view = cache.view(0)
    for i in range(1, 10):
        cache.put(i, flat_trajectory(i, 20), schema)
    assert (view[("rewards",)] == 0).all()
    assert torch.equal(view[("curr_obs", "states")], traj[("curr_obs", "states")])


@pytest.mark.parametrize("chunk_bytes", [1, 1 << 30])
def test_gather_returns_the_rows_asked_for_across_chunks(chunk_bytes):
    rng = np.random.default_rng(0)
    cache = TrajectoryCache(max_trajectories=None, chunk_bytes=chunk_bytes)
    trajs = {i: flat_trajectory(i * 1000, int(rng.integers(5, 30))) for i in range(12)}
    schema = schema_of(trajs[0])
    for i, t in trajs.items():
        cache.put(i, t, schema)
    chunks, starts = cache.slot_arrays()
    which = rng.integers(0, 12, size=500)
    rows = np.array([rng.integers(0, trajs[i][("rewards",)].shape[0]) for i in which])
    out = {k: torch.empty((500, *s.row_shape), dtype=s.dtype) for k, s in schema.items()}
    cache.gather_into(out, None, chunks[which], starts[which] + rows)
    for j, (i, r) in enumerate(zip(which, rows, strict=True)):
        for key in schema:
            assert torch.equal(out[key][j], trajs[int(i)][key][int(r)])


def record(tid: int, steps: int, envs: int = 2) -> Record:
    return Record(tid, steps, envs, None, "w", 0, f"u{tid}", [steps, envs, 1])


def test_index_window_is_the_newest_trajectories_with_cumulative_counts():
    index = TrajectoryIndex()
    for tid in range(200):
        index.append(record(tid, 1 + tid % 7))
    ids, ends, first = index.window(5)
    assert ids.tolist() == [195, 196, 197, 198, 199]
    assert first == 195
    counts = [2 * (1 + t % 7) for t in range(195, 200)]
    assert ends.tolist() == np.cumsum(counts).tolist()
    all_ids, all_ends, first = index.window(0)
    assert len(all_ids) == 200 and first == 0 and all_ends[-1] == index.total_transitions


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
