"""Rows of long columns are read from segment files with ``pread``, the rest through mappings.

A read through a mapping maps the file's whole large folio into the process per row touched
(a batch of image rows would add gigabytes of resident memory); columns whose rows are at least
``segment.PREAD_ROW_BYTES`` long are therefore read with one ``pread`` per row. These tests
check that both paths give the same bits as a buffer held in memory, for every dtype and for
batches spread over several segments, and that damage is reported on either path.
"""

from __future__ import annotations

import os
import re

import pytest
import torch
from conftest import TrackedBuffer as TrajectoryReplayBuffer
from conftest import assert_same_batch, assert_same_trajectory

from rlinf_replay_buffer import CorruptBufferError, Trajectory
from rlinf_replay_buffer.formats import segment

T, B = 6, 3


def wide_trajectory(i: int) -> Trajectory:
    """Rows of every kind: long image rows (uint8, 27 KiB), long float rows (float32 and
    bfloat16, 16 KiB and 8 KiB), a long bool column and short ones; values depend on (i, t, b)."""
    g = torch.Generator().manual_seed(i)
    frames = torch.randint(0, 256, (T + 1, B, 96, 96, 3), dtype=torch.uint8, generator=g)
    feats = torch.randn(T + 1, B, 4096, generator=g)
    return Trajectory(
        max_episode_length=T,
        model_weights_id=f"w{i}",
        model_update_count=i,
        actions=torch.randn(T, B, 7, generator=g),
        rewards=torch.randn(T, B, 1, generator=g),
        dones=torch.rand(T, B, 1, generator=g) < 0.2,
        curr_obs={
            "images": frames[:-1].clone(),
            "feats": feats[:-1].clone(),
            "states": feats[:-1, :, :5].clone(),
        },
        next_obs={
            "images": frames[1:].clone(),
            "feats": feats[1:].clone(),
            "states": feats[1:, :, :5].clone(),
        },
        forward_inputs={
            "half": torch.randn(T, B, 4096, generator=g).to(torch.bfloat16),
            "mask": torch.rand(T, B, 20000, generator=g) < 0.5,
        },
    )


def segment_buffer(path, **kw) -> TrajectoryReplayBuffer:
    args = {"seed": 7, "enable_cache": False, "sample_window_size": 0, "auto_save": True}
    args.update(kw)
    return TrajectoryReplayBuffer(auto_save_path=str(path), trajectory_format="segment", **args)


@pytest.fixture
def written(tmp_path, monkeypatch):
    """A closed segment directory of 5 wide trajectories over 3 segments, and the trajectories."""
    monkeypatch.setattr(segment, "DEFAULT_SEGMENT_BYTES", 2 * T * B * 100_000)
    trajs = [wide_trajectory(i) for i in range(5)]
    buf = segment_buffer(tmp_path / "dir")
    buf.add_trajectories(trajs)
    buf.close()
    assert len(list((tmp_path / "dir").glob("seg-*"))) >= 3
    return tmp_path / "dir", trajs


@pytest.mark.parametrize(
    "threshold", [1, segment.PREAD_ROW_BYTES, 1 << 40], ids=["all-pread", "default", "all-mapped"]
)
def test_segment_rows_sample_bit_identical_to_memory_on_every_read_path(written, threshold, monkeypatch):
    path, trajs = written
    monkeypatch.setattr(segment, "PREAD_ROW_BYTES", threshold)
    reference = TrajectoryReplayBuffer(seed=7, sample_window_size=0)
    reference.add_trajectories(trajs)
    reader = TrajectoryReplayBuffer(seed=7, enable_cache=False, sample_window_size=0)
    reader.load_checkpoint(str(path))
    for n in (1, 64, 500):
        assert_same_batch(reader.sample(n), reference.sample(n))


@pytest.mark.parametrize("threshold", [1, 1 << 40], ids=["pread", "mapped"])
def test_trajectories_read_back_whole_from_segments_are_the_ones_added(written, threshold, monkeypatch):
    path, trajs = written
    monkeypatch.setattr(segment, "PREAD_ROW_BYTES", threshold)
    reader = TrajectoryReplayBuffer(seed=7, enable_cache=True, cache_size=2, sample_window_size=0)
    reader.load_checkpoint(str(path))  # warms the ring with the two newest: whole-range reads
    for i, traj in enumerate(trajs):
        assert_same_trajectory(reader.get_trajectory(i), traj)


def test_a_long_row_column_cut_short_is_reported_not_read_as_zeros(written):
    path, _ = written
    reader = TrajectoryReplayBuffer(seed=7, enable_cache=False, sample_window_size=0)
    reader.load_checkpoint(str(path))
    reader.sample(10)  # maps and opens every segment's files
    image_files = [f for f in sorted(path.glob("seg-*/*.bin")) if f.stat().st_size % (96 * 96 * 3) == 0]
    for f in image_files:
        os.truncate(f, f.stat().st_size // 2)
    fresh = TrajectoryReplayBuffer(seed=7, enable_cache=False, sample_window_size=0)
    fresh.load_checkpoint(str(path))
    with pytest.raises(CorruptBufferError, match=re.escape(str(path)) + ".*truncated"):
        fresh.sample(200)
    # a reader that had the files open before the cut reads short: reported, never zeros
    with pytest.raises(CorruptBufferError, match="ends before the rows the index names"):
        reader.sample(200)
