"""RLinf's own classes as the reference for the ones that stand in for them: ``PriorityStore``,
``TrajectoryCache`` and the buffer's ``_flatten_trajectory`` (RLinf's RLT worker indexes its rows).

Each test runs one script in the session venv that has the real ``rlinf==0.3.0`` (see
``rlinf_env``), with the switch off, so ``rlinf.data.*`` are RLinf's classes and
``rlinf_replay_buffer.*`` ours; the same random operations go to both and every answer must match.
"""

from __future__ import annotations

import pytest
import rlinf_env

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def rlinf_venv(tmp_path_factory) -> rlinf_env.Venv:
    return rlinf_env.shared_rlinf_venv(tmp_path_factory)


PRIORITY_STORE = """
import random, torch
from rlinf.data.embodied_io_struct import Trajectory
from rlinf.data.priority_store import PriorityStore as Theirs
from rlinf_replay_buffer.rlinf_compat.stores import PriorityStore as Ours

rng = random.Random(7)
checked = 0
for maxsize in (1, 3, 8):
    theirs, ours = Theirs(maxsize), Ours(maxsize)
    items = []
    for step in range(300):
        op = rng.random()
        if op < 0.6:
            version = rng.randrange(5)
            versions = torch.full((2, 1), float(version)) + torch.rand(2, 1).round()
            item = Trajectory(versions=versions)
            items.append(item)
            priority = (float(versions.min()), float(versions.mean()))
            assert theirs.add(priority, item) == ours.add(priority, item), step
        elif op < 0.85:
            n = rng.randrange(1, maxsize + 2)  # n = 0 differs on purpose (RLinf returns every item)
            assert [id(x) for x in theirs.topn(n)] == [id(x) for x in ours.topn(n)], step
        else:
            threshold = rng.randrange(5)
            theirs.remove_below(threshold)
            ours.remove_below(threshold)
        assert len(theirs) == len(ours), step
        assert theirs.get_metric() == ours.get_metric(), step
        checked += 1
emit({"checked": checked})
"""


def test_priority_store_answers_as_rlinfs_does(rlinf_venv):
    assert rlinf_venv.result(PRIORITY_STORE)["checked"] == 900


TRAJECTORY_CACHE = """
import random, torch
from rlinf.data.replay_buffer import TrajectoryCache as Theirs
from rlinf_replay_buffer.rlinf_compat.stores import TrajectoryCache as Ours

def same(a, b):
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)

rng = random.Random(3)
checked = 0
for max_size in (1, 2, 5):
    theirs, ours = Theirs(max_size), Ours(max_size)
    for step in range(120):
        tid = rng.randrange(8)
        if rng.random() < 0.5:
            rows = rng.randrange(1, 7)
            flat = {
                "rewards": torch.randn(rows, 1),
                "actions": torch.randn(rows + 1, 3),
                "curr_obs": {
                    "states": torch.randn(rows, 4),
                    "img": torch.randint(0, 255, (rows, 2, 2), dtype=torch.uint8),
                },
            }
            theirs.put(tid, flat)
            ours.put(tid, flat)
        elif rng.random() < 0.05:
            theirs.clear()
            ours.clear()
        got_theirs, got_ours = theirs.get(tid), ours.get(tid)
        assert (got_theirs is None) == (got_ours is None), step
        if got_theirs is not None:
            assert same(got_theirs, got_ours), step
        assert theirs.cache == ours.cache, step
        assert theirs.get_slot_length() == ours.get_slot_length(), step
        checked += 1
emit({"checked": checked})
"""


def test_trajectory_cache_answers_as_rlinfs_does(rlinf_venv):
    assert rlinf_venv.result(TRAJECTORY_CACHE)["checked"] == 360


FLATTEN = """
import torch
from rlinf.data.embodied_io_struct import Trajectory
from rlinf.data.replay_buffer import TrajectoryReplayBuffer as Theirs
from rlinf_replay_buffer import TrajectoryReplayBuffer as Ours
from rlinf_env import coded_fields

def same(a, b):
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)

theirs, ours = Theirs(), Ours()
checked = []
for e in (1, 2):
    for num_envs in (1, 3):
        for layout in ("rlinf", "aligned"):
            traj = Trajectory(**coded_fields(0, e=e, num_envs=num_envs, layout=layout))
            a, b = theirs._flatten_trajectory(traj), ours._flatten_trajectory(traj)
            assert same(a, b), (e, num_envs, layout, sorted(a), sorted(b))
            checked.append([e, num_envs, layout])
theirs.close()
ours.close()
emit(checked)
"""


def test_flatten_trajectory_gives_rlinfs_flat_layout(rlinf_venv):
    assert len(rlinf_venv.result(FLATTEN)) == 8
