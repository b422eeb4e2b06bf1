"""A loaded directory is the buffer's backing store: memory follows the cache settings.

Without ``auto_save`` a load reads only the newest ``cache_size`` trajectories (within
``cache_max_bytes``) into memory; the others stay in their files and are read on demand, checked
against their checksums. Trajectories added later live in memory (the ring is their storage) and
the buffer keeps its window. A file that disappears or changes under the buffer raises an error
naming it; it never yields other data.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from conftest import TrackedBuffer as TrajectoryReplayBuffer
from conftest import assert_aligned, coded_trajectory

from rlinf_replay_buffer.errors import BufferNotFoundError, CorruptDataWarning, CorruptTrajectoryError


def traj(i: int):
    return coded_trajectory(i, n=4, e=2, num_envs=2, images=False)


def checkpoint(tmp_path: Path, count: int, fmt: str = "pt") -> Path:
    path = tmp_path / f"ckpt-{fmt}"
    writer = TrajectoryReplayBuffer(sample_window_size=0, trajectory_format=fmt)
    writer.add_trajectories([traj(i) for i in range(count)])
    writer.save_checkpoint(str(path))
    return path


def codes(batch) -> set[int]:
    assert_aligned(batch)
    return set((batch["curr_obs"]["states"][:, 0].to(torch.int64) // 1000).tolist())


def rewritten(path: Path, data: bytes) -> None:
    """Rewrite a file in place, its modification time visibly later (file systems keep times at
    a coarse granularity)."""
    before = path.stat().st_mtime_ns
    path.write_bytes(data)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


def trajectory_file(directory: Path, trajectory_id: int) -> Path:
    (found,) = directory.glob(f"trajectory_{trajectory_id}_*")
    return found


@pytest.mark.parametrize("fmt", ["pt", "pkl", "segment"])
def test_a_load_reads_only_the_cache_and_samples_every_trajectory(tmp_path, fmt):
    path = checkpoint(tmp_path, 12, fmt)
    buf = TrajectoryReplayBuffer(sample_window_size=0, cache_size=3)
    buf.load_checkpoint(str(path))
    stats = buf.get_stats()
    assert (stats["size"], stats["cached_trajectories"]) == (12, 3)
    assert codes(buf.sample(4000)) == set(range(12))


def test_cache_max_bytes_bounds_what_a_load_reads(tmp_path):
    path = checkpoint(tmp_path, 10)
    probe = TrajectoryReplayBuffer(sample_window_size=0)
    probe.load_checkpoint(str(path))
    per_trajectory = probe.get_stats()["cached_bytes"] // probe.get_stats()["cached_trajectories"]
    buf = TrajectoryReplayBuffer(
        sample_window_size=0, cache_size=10, cache_max_bytes=int(2.5 * per_trajectory)
    )
    buf.load_checkpoint(str(path))
    assert buf.get_stats()["cached_trajectories"] == 2
    assert buf.get_stats()["cached_bytes"] <= 2.5 * per_trajectory
    assert codes(buf.sample(3000)) == set(range(10))


def test_without_a_cache_a_load_keeps_nothing_in_memory(tmp_path):
    buf = TrajectoryReplayBuffer(sample_window_size=0, enable_cache=False)
    buf.load_checkpoint(str(checkpoint(tmp_path, 5)))
    assert buf.get_stats()["cached_trajectories"] == 0
    assert codes(buf.sample(2000)) == set(range(5))


def test_adds_after_a_load_keep_the_newest_window(tmp_path):
    buf = TrajectoryReplayBuffer(sample_window_size=5, cache_size=2)
    buf.load_checkpoint(str(checkpoint(tmp_path, 10)))  # keeps the window: 5..9, 8 and 9 cached
    assert buf.size == 5 and buf.get_stats()["cached_trajectories"] == 2
    assert buf.add_trajectories([traj(i) for i in (10, 11, 12)]) == [10, 11, 12]
    assert buf.size == 5
    assert buf._trajectory_id_list == [8, 9, 10, 11, 12]
    assert codes(buf.sample(3000)) == {8, 9, 10, 11, 12}
    buf.add_trajectories([traj(i) for i in range(13, 20)])  # the loaded ones leave, then added ones
    assert buf._trajectory_id_list == [15, 16, 17, 18, 19]
    assert buf.get_stats()["evicted_trajectories"] == 5 + 3 + 7


def test_clear_cache_keeps_what_a_directory_backs_and_drops_the_rest(tmp_path):
    buf = TrajectoryReplayBuffer(sample_window_size=0, cache_size=2)
    buf.load_checkpoint(str(checkpoint(tmp_path, 4)))
    buf.add_trajectories([traj(4), traj(5)])
    buf.clear_cache()
    stats = buf.get_stats()
    assert (stats["size"], stats["cached_trajectories"]) == (4, 0)
    assert codes(buf.sample(2000)) == {0, 1, 2, 3}


def test_a_checkpoint_of_a_loaded_buffer_holds_file_backed_and_added_trajectories(tmp_path):
    buf = TrajectoryReplayBuffer(sample_window_size=0, cache_size=1)
    buf.load_checkpoint(str(checkpoint(tmp_path, 4)))
    buf.add_trajectories([traj(4)])
    buf.save_checkpoint(str(tmp_path / "again"))
    again = TrajectoryReplayBuffer(sample_window_size=0, cache_size=0)
    again.load_checkpoint(str(tmp_path / "again"))
    assert codes(again.sample(3000)) == set(range(5))


def test_a_file_that_disappears_before_it_is_read_raises_naming_it(tmp_path):
    path = checkpoint(tmp_path, 3)
    buf = TrajectoryReplayBuffer(sample_window_size=0, enable_cache=False)
    buf.load_checkpoint(str(path))
    gone = trajectory_file(path, 1)
    gone.unlink()
    with pytest.raises(BufferNotFoundError, match=gone.name):
        for _ in range(20):
            buf.sample(500)


def test_a_file_open_for_reading_keeps_serving_its_checked_data_after_deletion(tmp_path):
    path = checkpoint(tmp_path, 3)
    buf = TrajectoryReplayBuffer(sample_window_size=0, enable_cache=False)
    buf.load_checkpoint(str(path))
    assert codes(buf.sample(2000)) == {0, 1, 2}  # every file is now open
    shutil.rmtree(path)
    assert codes(buf.sample(2000)) == {0, 1, 2}


@pytest.mark.parametrize("on_corrupt", ["raise", "skip"])
def test_a_file_replaced_by_other_data_is_never_read_as_its_trajectory(tmp_path, on_corrupt):
    path = checkpoint(tmp_path, 3)
    buf = TrajectoryReplayBuffer(sample_window_size=0, enable_cache=False, on_corrupt=on_corrupt)
    buf.load_checkpoint(str(path))
    assert codes(buf.sample(2000)) == {0, 1, 2}  # checked and opened
    victim = trajectory_file(path, 1)
    rewritten(victim, trajectory_file(path, 2).read_bytes())  # a valid file, other data
    buf.clear_cache()  # closes the open files: the next read opens the file again
    if on_corrupt == "raise":
        with pytest.raises(CorruptTrajectoryError, match=victim.name):
            for _ in range(20):
                buf.sample(500)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seen = set()
        for _ in range(10):
            seen |= codes(buf.sample(500))
    assert seen == {0, 2}
    assert any(issubclass(w.category, CorruptDataWarning) for w in caught)
    assert buf.get_stats()["corrupt_skipped"] == 1


def test_a_changed_file_without_a_checksum_is_refused(tmp_path, fixture_dir):
    """RLinf's own directories carry no checksums: a file that changed after the buffer read it
    cannot be checked, so it is refused rather than read."""
    buf = TrajectoryReplayBuffer(sample_window_size=0, enable_cache=False)
    buf.load_checkpoint(str(fixture_dir))
    buf.sample(2000)
    files = sorted(fixture_dir.glob("trajectory_*"))
    victim = files[0]
    rewritten(victim, victim.read_bytes())  # same bytes, but nothing proves it
    buf.clear_cache()
    with pytest.raises(CorruptTrajectoryError, match="no checksum"):
        for _ in range(20):
            buf.sample(500)
