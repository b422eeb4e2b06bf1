"""RLinf's private names that RLinf's own tools read on the buffer (its viewer reads all three):
``_trajectory_id_list``, ``_trajectory_index`` and ``_load_trajectory(id, model_weights_id)``,
on a buffer in memory, an auto-save buffer (rows pending, cached, in files, in segments) and an
RLinf-written directory opened the way RLinf's viewer opens it."""

from __future__ import annotations

import pytest
import torch
from conftest import coded_trajectory

from rlinf_replay_buffer import Trajectory, TrajectoryReplayBuffer
from rlinf_replay_buffer.errors import InvalidArgumentError
from rlinf_replay_buffer.trajectory import align, key_name

ENTRY_KEYS = {"num_samples", "trajectory_id", "max_episode_length", "shape", "model_weights_id"}


def assert_same_as_added(loaded: Trajectory, added: Trajectory) -> None:
    """``loaded`` holds the aligned ``[T, B, ...]`` rows of ``added``, field by field."""
    expected = align(added).columns
    got = align(loaded).columns
    assert set(got) == set(expected), sorted(key_name(k) for k in set(got) ^ set(expected))
    for key, tensor in expected.items():
        assert got[key].dtype == tensor.dtype, key_name(key)
        assert torch.equal(got[key], tensor), key_name(key)


def check_rlinf_view(buf: TrajectoryReplayBuffer, added: dict[int, Trajectory]) -> None:
    """What RLinf's viewer does: walk the id list, look each entry up, load its trajectory."""
    assert buf._trajectory_id_list == sorted(added)
    assert list(buf._trajectory_index) == sorted(added) and len(buf._trajectory_index) == len(added)
    for tid in buf._trajectory_id_list:
        entry = buf._trajectory_index[tid]
        assert set(entry) == ENTRY_KEYS
        traj = added[tid]
        t, b = traj.rewards.shape[:2]
        assert entry["trajectory_id"] == tid
        assert entry["num_samples"] == t * b
        assert tuple(entry["shape"]) == tuple(traj.rewards.shape)
        assert entry["max_episode_length"] == traj.max_episode_length
        loaded = buf._load_trajectory(tid, entry["model_weights_id"])
        assert isinstance(loaded, Trajectory)
        assert loaded.model_weights_id == entry["model_weights_id"]
        # [T, B, ...] with aligned rows, curr_obs/next_obs as dicts, as the viewer indexes them
        for name in ("actions", "rewards", "dones"):
            assert getattr(loaded, name).shape[:2] == (t, b), name
        assert isinstance(loaded.curr_obs, dict) and isinstance(loaded.next_obs, dict)
        assert loaded.curr_obs["main_images"].shape[:2] == (t, b)
        assert isinstance(loaded.forward_inputs, dict)
        assert_same_as_added(loaded, traj)


def test_in_memory_buffer():
    added = {i: coded_trajectory(i, e=1 + i % 2) for i in range(3)}
    with TrajectoryReplayBuffer(seed=1, sample_window_size=0) as buf:
        assert buf._trajectory_id_list == [] and dict(buf._trajectory_index) == {}
        buf.add_trajectories(list(added.values()))
        check_rlinf_view(buf, added)


def test_only_held_trajectories_are_listed():
    # without auto_save the buffer holds its window: older trajectories leave it
    with TrajectoryReplayBuffer(seed=1, sample_window_size=2) as buf:
        buf.add_trajectories([coded_trajectory(i) for i in range(4)])
        assert buf._trajectory_id_list == [2, 3]
        assert 0 not in buf._trajectory_index and 3 in buf._trajectory_index
        with pytest.raises(KeyError):
            buf._trajectory_index[0]
        with pytest.raises(InvalidArgumentError, match="trajectory 0 is not in the buffer"):
            buf._load_trajectory(0, "")


@pytest.mark.parametrize("fmt", ["pt", "pkl", "segment"])
def test_auto_save_buffer_pending_cached_and_on_disk(tmp_path, fmt):
    added = {i: coded_trajectory(i, e=1 + i % 2) for i in range(4)}
    path = tmp_path / "auto"
    buf = TrajectoryReplayBuffer(
        seed=1, auto_save=True, auto_save_path=str(path), cache_size=1, trajectory_format=fmt
    )
    try:
        buf.add_trajectories(list(added.values()))
        check_rlinf_view(buf, added)  # rows pending or cached (cache_size=1: the rest from disk)
        buf.flush()
        check_rlinf_view(buf, added)
    finally:
        buf.close()
    # reopened: every trajectory comes from its file or segment
    with TrajectoryReplayBuffer(
        seed=1, auto_save=True, auto_save_path=str(path), cache_size=0, trajectory_format=fmt
    ) as again:
        check_rlinf_view(again, added)


def test_rlinf_written_directory_opened_like_rlinfs_viewer(fixture_dir):
    # toolkits/replay_buffer/visualize.py: auto_save on the directory itself, then load it
    buf = TrajectoryReplayBuffer(
        auto_save=True, auto_save_path=str(fixture_dir), enable_cache=True, cache_size=5
    )
    try:
        buf.load_checkpoint(str(fixture_dir))
        ids = buf._trajectory_id_list
        assert len(ids) == buf.size > 0
        for tid in ids:
            entry = buf._trajectory_index[tid]
            assert set(entry) == ENTRY_KEYS
            t, b = entry["shape"][:2]
            traj = buf._load_trajectory(tid, entry["model_weights_id"])
            assert traj.rewards.shape[:2] == (t, b) and traj.dones.shape[:2] == (t, b)
            assert traj.curr_obs["main_images"].dtype == torch.uint8
            assert traj.curr_obs["main_images"].shape[:2] == (t, b)
            assert set(traj.next_obs) == set(traj.curr_obs)
    finally:
        buf.close()


def test_file_name_form_of_the_weights_id_is_accepted(tmp_path):
    # trajectory_index.json names a file trajectory_{id}_{uuid}_{count}.pt by model_weights_id
    # "{uuid}_{count}" (so that RLinf finds it); RLinf's tools may pass that form back
    traj = coded_trajectory(0, weights_id="6f1c5e9a-3b1d-4c2e-9a57-1d2b3c4d5e6f", model_update_count=3)
    with TrajectoryReplayBuffer(seed=1, auto_save=True, auto_save_path=str(tmp_path / "a")) as buf:
        buf.add_trajectories([traj])
        buf.flush()
        loaded = buf._load_trajectory(0, "6f1c5e9a-3b1d-4c2e-9a57-1d2b3c4d5e6f_3")
        assert_same_as_added(loaded, traj)
        assert loaded.model_update_count == 3
        assert buf._trajectory_index[0]["model_weights_id"] == "6f1c5e9a-3b1d-4c2e-9a57-1d2b3c4d5e6f"


def test_empty_weights_id_and_none_skip_nothing_wrong():
    traj = coded_trajectory(0, weights_id="")
    with TrajectoryReplayBuffer(seed=1) as buf:
        buf.add_trajectories([traj])
        assert buf._trajectory_index[0]["model_weights_id"] == ""
        assert_same_as_added(buf._load_trajectory(0, ""), traj)
        assert_same_as_added(buf._load_trajectory(0), traj)


def test_errors_name_the_trajectory():
    with TrajectoryReplayBuffer(seed=1) as buf:
        buf.add_trajectories([coded_trajectory(0, weights_id="w-1")])
        with pytest.raises(ValueError, match=r"trajectory 5 is not in the buffer \(it holds 1 trajectories"):
            buf._load_trajectory(5, "w-1")
        with pytest.raises(InvalidArgumentError, match="trajectory 0 has model_weights_id 'w-1', not 'w-2'"):
            buf._load_trajectory(0, "w-2")
        with pytest.raises(InvalidArgumentError, match="trajectory_id must be an int"):
            buf._load_trajectory("0", "w-1")
        with pytest.raises(KeyError):
            buf._trajectory_index[True]


def test_views_are_read_only_and_copies():
    with TrajectoryReplayBuffer(seed=1) as buf:
        buf.add_trajectories([coded_trajectory(i) for i in range(2)])
        ids = buf._trajectory_id_list
        ids.append(99)
        assert buf._trajectory_id_list == [0, 1]
        entry = buf._trajectory_index[0]
        entry["num_samples"] = -1
        assert buf._trajectory_index[0]["num_samples"] == 16
        with pytest.raises(AttributeError):
            buf._trajectory_id_list = []
        with pytest.raises(AttributeError):
            buf._trajectory_index = {}
        with pytest.raises(TypeError):
            buf._trajectory_index[0] = {}
        loaded = buf._load_trajectory(0)
        loaded.rewards.fill_(123.0)  # new memory: the buffer's rows are untouched
        assert not (buf._load_trajectory(0).rewards == 123.0).any()
