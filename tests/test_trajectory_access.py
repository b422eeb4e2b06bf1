"""Trajectories back out of the buffer: ``get_trajectory`` and ``iter_trajectories`` return what
was added, wherever its rows are (in memory, waiting for the writer, in a ``pt``/``pkl`` file or a
segment, in a loaded directory outside the cache), and iteration copes with a buffer that changes
while it runs."""

from __future__ import annotations

import dataclasses
import gc
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import TrackedBuffer as TrajectoryReplayBuffer
from conftest import assert_same_trajectory, coded_trajectory, odd_trajectory

from rlinf_replay_buffer import CorruptDataWarning, CorruptTrajectoryError, InvalidArgumentError, Trajectory
from rlinf_replay_buffer.trajectory import align

FORMATS = ["pt", "pkl", "segment"]
KINDS = ["memory", *FORMATS]


def coded_family() -> list[Trajectory]:
    """Aligned trajectories of two lengths, metadata given: float32, bool, int64, uint8 images."""
    return [
        coded_trajectory(i, n=2 + i % 2, layout="aligned", weights_id=f"w-{i}", model_update_count=i)
        for i in range(4)
    ]


def odd_family() -> list[Trajectory]:
    """Every other storable dtype (bfloat16, float16, float64, int8 to int64), no episode length."""
    return [odd_trajectory(i, t=2 + i, empty=False) for i in range(4)]


FAMILIES: dict[str, Callable[[], list[Trajectory]]] = {"coded": coded_family, "odd": odd_family}


def as_stored(rows: Trajectory, added: Trajectory) -> Trajectory:
    """``rows`` with the ``model_weights_id`` and ``model_update_count`` an add derives for ``added``."""
    aligned = align(added)
    return dataclasses.replace(
        rows, model_weights_id=aligned.model_weights_id, model_update_count=aligned.model_update_count
    )


def make_buffer(kind: str, path: Path, **kwargs) -> TrajectoryReplayBuffer:
    if kind == "memory":
        return TrajectoryReplayBuffer(seed=3, sample_window_size=0, **kwargs)
    return TrajectoryReplayBuffer(
        seed=3, auto_save=True, auto_save_path=str(path), trajectory_format=kind, **kwargs
    )


def assert_holds(buf: TrajectoryReplayBuffer, ids: list[int], added: list[Trajectory]) -> None:
    """Every id reads back as added, and iterating yields them all, oldest first."""
    for tid, traj in zip(ids, added, strict=True):
        assert_same_trajectory(buf.get_trajectory(tid), traj)
    walked = list(buf.iter_trajectories())
    assert len(walked) == len(added)
    for got, traj in zip(walked, added, strict=True):
        assert_same_trajectory(got, traj)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", KINDS)
def test_get_trajectory_returns_what_was_added_for_every_format(tmp_path, kind, family):
    added = FAMILIES[family]()
    path = tmp_path / "auto"
    buf = make_buffer(kind, path, cache_size=1)
    ids = buf.add_trajectories(added)
    assert_holds(buf, ids, added)  # rows waiting for the writer, or cached
    buf.flush()
    assert_holds(buf, ids, added)  # cache_size=1: the older ones from their files or segments
    if kind == "memory":
        return
    buf.close()
    with make_buffer(kind, path, cache_size=0) as again:  # continued: every one from disk
        assert_holds(again, ids, added)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_loaded_directory_larger_than_the_cache_reads_back_whole(tmp_path, fmt):
    added = coded_family()
    source = TrajectoryReplayBuffer(seed=3, sample_window_size=0)
    ids = source.add_trajectories(added)
    source.save_checkpoint(str(tmp_path / "ckpt"), trajectory_format=fmt)
    loaded = TrajectoryReplayBuffer(seed=3, sample_window_size=0, enable_cache=True, cache_size=2)
    loaded.load_checkpoint(str(tmp_path / "ckpt"))
    assert loaded.size == len(added) and loaded.get_stats()["cached_trajectories"] == 2
    assert_holds(loaded, ids, added)


def test_an_rlinf_layout_trajectory_comes_back_with_its_aligned_rows_and_derived_ids():
    # RLinf's rollout layout carries an extra done row and action row per epoch: not transitions
    buf = TrajectoryReplayBuffer(seed=3, sample_window_size=0)
    added = [coded_trajectory(i, e=2) for i in range(2)]
    for tid, traj in zip(buf.add_trajectories(added), added, strict=True):
        expected = as_stored(coded_trajectory(tid, e=2, layout="aligned"), traj)
        assert_same_trajectory(buf.get_trajectory(tid), expected)
        assert expected.model_weights_id is not None and expected.model_update_count == 1


def test_an_id_the_buffer_does_not_hold_raises_saying_what_to_do():
    buf = TrajectoryReplayBuffer(seed=3, sample_window_size=2)  # in memory: holds the newest 2
    buf.add_trajectories([coded_trajectory(i) for i in range(3)])
    for tid in (0, 7):  # evicted, never added
        with pytest.raises(
            InvalidArgumentError, match=rf"trajectory {tid} is not in the buffer \(it holds 2 "
        ):
            buf.get_trajectory(tid)
    with pytest.raises(ValueError, match=r"add_trajectories returned .*iter_trajectories\(\) yields"):
        buf.get_trajectory(0)
    with pytest.raises(InvalidArgumentError, match="trajectory_id must be an int"):
        buf.get_trajectory("1")


def test_a_returned_trajectory_is_new_memory():
    buf = TrajectoryReplayBuffer(seed=3, sample_window_size=0)
    added = coded_trajectory(0, layout="aligned", weights_id="w", model_update_count=0)
    buf.add_trajectories([added])
    got = buf.get_trajectory(0)
    got.rewards.fill_(-1)
    got.curr_obs["states"].fill_(-1)
    assert_same_trajectory(buf.get_trajectory(0), added)


def codes(trajectories) -> list[int]:
    """The coded trajectories' numbers (``i`` of ``coded_trajectory(i)``)."""
    return [int(t.curr_obs["states"][0, 0, 0]) // 1000 for t in trajectories]


def test_iteration_yields_the_trajectories_held_at_the_call_oldest_first():
    buf = TrajectoryReplayBuffer(seed=3, sample_window_size=0)
    buf.add_trajectories([coded_trajectory(i) for i in range(4)])
    walk = buf.iter_trajectories()
    buf.add_trajectories([coded_trajectory(4)])  # after the call: not yielded
    assert codes(walk) == [0, 1, 2, 3]
    assert codes(buf.iter_trajectories()) == [0, 1, 2, 3, 4]
    assert list(TrajectoryReplayBuffer().iter_trajectories()) == []


def test_trajectories_that_leave_during_iteration_are_skipped():
    buf = TrajectoryReplayBuffer(seed=3, sample_window_size=3)  # in memory: holds the newest 3
    buf.add_trajectories([coded_trajectory(i) for i in range(3)])
    walk = buf.iter_trajectories()
    assert codes([next(walk)]) == [0]
    buf.add_trajectories([coded_trajectory(3), coded_trajectory(4)])  # 0 and 1 leave the buffer
    assert codes(walk) == [2]


def test_ids_reused_after_clear_are_not_mistaken_for_the_noted_trajectories():
    buf = TrajectoryReplayBuffer(seed=3, sample_window_size=0)
    buf.add_trajectories([coded_trajectory(i) for i in range(3)])
    walk = buf.iter_trajectories()
    assert codes([next(walk)]) == [0]
    buf.clear()
    assert buf.add_trajectories([coded_trajectory(i) for i in (7, 8, 9)]) == [0, 1, 2]  # ids start over
    assert list(walk) == []


def test_iteration_holds_no_lock_while_the_caller_has_a_trajectory():
    buf = TrajectoryReplayBuffer(seed=3, sample_window_size=0)
    buf.add_trajectories([coded_trajectory(i) for i in range(3)])
    walk = buf.iter_trajectories()
    next(walk)
    results = []
    other = threading.Thread(
        target=lambda: results.append(
            (buf.add_trajectories([coded_trajectory(3)]), len(buf.sample(8)["rewards"]))
        )
    )
    other.start()
    other.join(timeout=120)  # a lock held across the yield would block it for good
    assert not other.is_alive() and results == [([3], 8)]
    assert codes(walk) == [1, 2]


def test_the_iterator_keeps_no_trajectory_it_has_yielded():
    buf = TrajectoryReplayBuffer(seed=3, sample_window_size=0)
    buf.add_trajectories([coded_trajectory(i) for i in range(3)])
    walk = buf.iter_trajectories()
    first = next(walk)
    refs = [weakref.ref(first.rewards), weakref.ref(first.curr_obs["states"])]
    del first
    gc.collect()
    assert [ref() for ref in refs] == [None, None]  # only the caller held it
    assert codes(walk) == [1, 2]


def damaged_checkpoint(tmp_path: Path) -> Path:
    """A ``pt`` checkpoint of coded trajectories 0, 1, 2 whose trajectory 1 fails its checksum."""
    source = TrajectoryReplayBuffer(seed=3, sample_window_size=0)
    source.add_trajectories([coded_trajectory(i) for i in range(3)])
    source.save_checkpoint(str(tmp_path / "ckpt"))
    (victim,) = (tmp_path / "ckpt").glob("trajectory_1_*.pt")
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    return tmp_path / "ckpt"


def test_damaged_data_raises_unless_on_corrupt_skip_drops_it_from_the_iteration(tmp_path):
    ckpt = damaged_checkpoint(tmp_path)
    strict = TrajectoryReplayBuffer(seed=3, sample_window_size=0, enable_cache=False)
    strict.load_checkpoint(str(ckpt))
    with pytest.raises(CorruptTrajectoryError, match="trajectory_1_"):
        strict.get_trajectory(1)
    walk = strict.iter_trajectories()
    assert codes([next(walk)]) == [0]
    with pytest.raises(CorruptTrajectoryError):
        next(walk)
    lenient = TrajectoryReplayBuffer(seed=3, sample_window_size=0, enable_cache=False, on_corrupt="skip")
    lenient.load_checkpoint(str(ckpt))
    with pytest.warns(CorruptDataWarning, match="skipped damaged trajectory 1"):
        assert codes(lenient.iter_trajectories()) == [0, 2]
    assert lenient.size == 2 and lenient.get_stats()["corrupt_skipped"] == 1
    with pytest.raises(InvalidArgumentError, match="trajectory 1 is not in the buffer"):
        lenient.get_trajectory(1)


def test_tensors_come_back_on_the_cpu_in_the_stored_dtypes():
    buf = TrajectoryReplayBuffer(seed=3, sample_window_size=0)
    buf.add_trajectories(odd_family())
    got = buf.get_trajectory(0)
    assert got.actions.dtype == torch.bfloat16 and got.curr_obs["rgb"].dtype == torch.uint8
    assert all(t.device.type == "cpu" for t in [got.rewards, *got.curr_obs.values()])
