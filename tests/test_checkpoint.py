"""Checkpoints: round trips, distributed loading, RLinf directory compatibility, crash safety.

Trajectories are the coded ones of ``conftest``: trajectory ``i`` with ``e`` epochs of ``n`` steps
and ``B`` envs carries code ``c = 1000 * i + 100 * k + s`` in ``curr_obs.states`` and env index
``b`` in ``curr_obs.env_ids``, so ``(c, b)`` names a transition uniquely and ``c // 1000`` names its
trajectory.
"""

from __future__ import annotations

import errno
import hashlib
import json
import pickle
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import torch
from conftest import CODED_DICT_FIELDS, CODED_STEP_FIELDS, assert_aligned, coded_trajectory

import rlinf_replay_buffer.checkpoint as checkpoint_mod
import rlinf_replay_buffer.formats as formats_mod
import rlinf_replay_buffer.formats.pt as pt_mod
from rlinf_replay_buffer import (
    BufferDirectoryError,
    InvalidArgumentError,
    Trajectory,
    TrajectoryReplayBuffer,
)
from rlinf_replay_buffer.cli import iter_leaves
from rlinf_replay_buffer.lock import LOCK_NAME
from rlinf_replay_buffer.writer import BackgroundWriter

N, E, B = 4, 2, 2  # coded_trajectory defaults: 16 transitions per trajectory
PER_TRAJ = N * E * B
RLINF_WEIGHTS = str(uuid.uuid5(uuid.NAMESPACE_DNS, "rlinf-policy"))


# -- helpers ------------------------------------------------------------------------------------
def expected_transitions(codes_of: list[int], n: int = N, e: int = E, num_envs: int = B) -> set:
    """Every ``(code, env)`` pair the coded trajectories ``codes_of`` hold."""
    return {
        (float(1000 * i + 100 * k + s), b)
        for i in codes_of
        for k in range(e)
        for s in range(n)
        for b in range(num_envs)
    }


def seen_transitions(buf: TrajectoryReplayBuffer, num: int = 4000) -> set:
    """``(code, env)`` of every transition in a large sample (covers small buffers entirely)."""
    batch = buf.sample(num)
    assert_aligned(batch, n=N)
    codes = batch["curr_obs"]["states"][:, 0].tolist()
    envs = batch["curr_obs"]["env_ids"][:, 0].tolist()
    return set(zip(codes, envs, strict=True))


def trajectories_seen(buf: TrajectoryReplayBuffer, num: int = 4000) -> set[int]:
    return {int(c) // 1000 for c, _ in seen_transitions(buf, num)}


def leaves(batch: dict) -> dict[str, torch.Tensor]:
    return dict(iter_leaves(batch))


def file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every trajectory file in ``directory``: ``trajectory_*.pt|pkl`` files, and
    the column files of segments (``seg-*/NNN.bin``)."""
    files = [
        p
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name.startswith("trajectory_") and p.suffix in (".pt", ".pkl")
    ]
    files += sorted(directory.glob("seg-*/[0-9]*.bin"))  # not the source columns src-NNN.bin
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def all_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file in ``directory`` but a writer's lock file (not data)."""
    files = [p for p in sorted(directory.iterdir()) if p.name != LOCK_NAME]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def fresh(**kwargs) -> TrajectoryReplayBuffer:
    kwargs.setdefault("sample_window_size", 0)
    return TrajectoryReplayBuffer(**kwargs)


def loaded(path: Path, **kwargs) -> TrajectoryReplayBuffer:
    buf = fresh(**kwargs)
    buf.load_checkpoint(str(path))
    return buf


def saved_checkpoint(path: Path, codes: list[int], fmt: str = "pt") -> Path:
    src = fresh(trajectory_format=fmt)
    src.add_trajectories([coded_trajectory(i) for i in codes])
    src.save_checkpoint(str(path))
    src.close()
    return path


# -- round trips --------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["pt", "pkl", "segment"])
@pytest.mark.parametrize("auto_save", [False, True, "no_cache"], ids=["memory", "auto_save", "no_cache"])
def test_save_then_load_gives_the_same_data(tmp_path, fmt, auto_save):
    kwargs = {"trajectory_format": fmt, "seed": 99}
    if auto_save:
        # a cache smaller than the buffer: some trajectories come from disk, some from memory
        kwargs.update(auto_save=True, auto_save_path=str(tmp_path / "auto"), cache_size=2)
    if auto_save == "no_cache":
        kwargs.update(enable_cache=False)
    src = fresh(**kwargs)
    src.add_trajectories([coded_trajectory(i) for i in range(3)])
    src.add_trajectories([coded_trajectory(i) for i in range(3, 6)])
    ckpt = tmp_path / "ckpt"
    src.save_checkpoint(str(ckpt))

    dst = loaded(ckpt, seed=99, trajectory_format=fmt)
    assert (dst.size, dst.total_samples, dst.trajectory_counter) == (6, 6 * PER_TRAJ, 6)
    assert (src.size, src.total_samples, src.trajectory_counter) == (6, 6 * PER_TRAJ, 6)

    # same seed, same index order: the very same draws, bit for bit, with the same dtypes
    a, b = leaves(src.sample(2000)), leaves(dst.sample(2000))
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key
    assert seen_transitions(dst) == expected_transitions(list(range(6)))
    if fmt == "segment":
        assert list(ckpt.glob("trajectory_*_*")) == [] and list(ckpt.glob("seg-*/000.bin"))
    else:
        assert {p.suffix for p in ckpt.glob("trajectory_*_*")} == {f".{fmt}"}
    src.close()


def test_checkpoint_of_a_checkpoint_loaded_buffer_round_trips(tmp_path, fixture_dir):
    before = all_hashes(fixture_dir)
    buf = loaded(fixture_dir)
    buf.save_checkpoint(str(tmp_path / "again"))
    again = loaded(tmp_path / "again")
    assert (again.size, again.total_samples, again.trajectory_counter) == (3, 48, 3)
    assert_aligned(again.sample(2000), n=4)
    codes = {int(c) for c in again.sample(2000)["curr_obs"]["states"][:, 0].tolist()}
    assert codes == {1000 * i + 100 * k + s for i in range(3) for k in range(2) for s in range(4)}
    assert all_hashes(fixture_dir) == before  # the source directory was only read


def test_round_trip_keeps_non_contiguous_ids_and_counter(tmp_path):
    # the window evicts the oldest 3: the checkpoint holds ids 3..9 and the counter is 10
    src = TrajectoryReplayBuffer(sample_window_size=7)
    for i in range(10):
        src.add_trajectories([coded_trajectory(i)])
    src.save_checkpoint(str(tmp_path / "ckpt"))
    index = json.loads((tmp_path / "ckpt" / "trajectory_index.json").read_text())
    assert index["trajectory_id_list"] == list(range(3, 10))
    dst = loaded(tmp_path / "ckpt")
    assert dst.trajectory_counter == 10
    assert trajectories_seen(dst) == set(range(3, 10))
    assert dst.add_trajectories([coded_trajectory(20)]) == [10]


def test_save_creates_missing_parents(tmp_path):
    dest = tmp_path / "a" / "b" / "ckpt"
    saved_checkpoint(dest, [0, 1])
    assert trajectories_seen(loaded(dest)) == {0, 1}


@pytest.mark.parametrize("cache_size", [1, 5])
def test_save_over_the_checkpoint_the_buffer_was_loaded_from(tmp_path, cache_size):
    ckpt = saved_checkpoint(tmp_path / "ckpt", [0, 1, 2])
    buf = fresh(auto_save=True, auto_save_path=str(tmp_path / "auto"), cache_size=cache_size)
    buf.load_checkpoint(str(ckpt))
    assert buf.add_trajectories([coded_trajectory(3)]) == [3]
    buf.save_checkpoint(str(ckpt))
    assert trajectories_seen(buf) == {0, 1, 2, 3}  # still readable after the files were replaced
    buf.close()
    again = loaded(ckpt)
    assert seen_transitions(again) == expected_transitions([0, 1, 2, 3])
    assert {p.name for p in tmp_path.iterdir()} == {"ckpt", "auto"}


def test_deleting_an_exported_checkpoint_does_not_break_an_auto_save_buffer(tmp_path):
    """Every trajectory is still in the buffer's own auto-save directory after the export."""
    buf = fresh(auto_save=True, auto_save_path=str(tmp_path / "auto"), cache_size=1)
    buf.add_trajectories([coded_trajectory(i) for i in range(3)])
    buf.save_checkpoint(str(tmp_path / "export"))
    shutil.rmtree(tmp_path / "export")
    assert trajectories_seen(buf) == {0, 1, 2}
    buf.close()


def test_another_buffer_saving_over_an_exported_checkpoint_does_not_change_this_buffer(tmp_path):
    buf = fresh(auto_save=True, auto_save_path=str(tmp_path / "auto"), cache_size=1)
    buf.add_trajectories([coded_trajectory(i) for i in range(3)])
    buf.save_checkpoint(str(tmp_path / "shared"))
    saved_checkpoint(tmp_path / "shared", [50, 51, 52])  # same ids, other data, same file names
    assert trajectories_seen(buf) == {0, 1, 2}, "the buffer samples another buffer's data"
    buf.close()


@pytest.mark.parametrize("src_fmt,dst_fmt", [("pt", "pkl"), ("pkl", "pt")])
def test_checkpoint_converts_format(tmp_path, src_fmt, dst_fmt):
    ckpt = saved_checkpoint(tmp_path / "src", [0, 1, 2], fmt=src_fmt)
    buf = loaded(ckpt, trajectory_format=dst_fmt, seed=4)
    buf.save_checkpoint(str(tmp_path / "dst"))
    check_rlinf_readable(tmp_path / "dst", dst_fmt, [0, 1, 2], [0, 1, 2], seed=4)
    assert trajectories_seen(loaded(tmp_path / "dst")) == {0, 1, 2}


def test_checkpoint_into_own_auto_save_path_is_complete_and_rlinf_readable(tmp_path):
    path = tmp_path / "auto"
    buf = fresh(auto_save=True, auto_save_path=str(path), seed=8, cache_size=1)
    buf.add_trajectories([coded_trajectory(i) for i in range(3)])
    buf.save_checkpoint(str(path))
    check_rlinf_readable(path, "pt", [0, 1, 2], [0, 1, 2], seed=8)
    assert trajectories_seen(loaded(path)) == {0, 1, 2}
    buf.close()


def test_empty_buffer_checkpoint_round_trips(tmp_path):
    buf = fresh()
    buf.save_checkpoint(str(tmp_path / "empty"))
    again = loaded(tmp_path / "empty")
    assert (again.size, again.total_samples, again.trajectory_counter) == (0, 0, 0)
    assert again.add_trajectories([coded_trajectory(0)]) == [0]


# -- distributed loading ------------------------------------------------------------------------
@pytest.fixture
def sharded_ckpt(tmp_path) -> Path:
    """A checkpoint of 10 trajectories with ids (and codes) 3..12, counter 13."""
    src = TrajectoryReplayBuffer(sample_window_size=10)
    for i in range(13):
        src.add_trajectories([coded_trajectory(i)])
    assert src.size == 10
    src.save_checkpoint(str(tmp_path / "sharded"))
    return tmp_path / "sharded"


CKPT_IDS = list(range(3, 13))


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7])
def test_distributed_shares_are_disjoint_strided_and_cover_everything(sharded_ckpt, world_size):
    shares = []
    for rank in range(world_size):
        buf = fresh()
        buf.load_checkpoint(str(sharded_ckpt), is_distributed=True, local_rank=rank, world_size=world_size)
        expected = CKPT_IDS[rank::world_size]
        share = trajectories_seen(buf, num=1000)
        # strided by index position: rank k holds positions k, k + W, ...
        assert share == set(expected), (rank, world_size)
        assert buf.size == len(expected) == len(buf)
        assert buf.total_samples == PER_TRAJ * len(expected)
        assert buf.trajectory_counter == 13  # past every id of the checkpoint, not of the share
        # each share spans the whole collection period
        assert min(share) in CKPT_IDS[:world_size]
        if len(expected) > 1:
            assert max(share) in CKPT_IDS[-world_size:]
        shares.append(share)
    for i in range(world_size):
        for j in range(i + 1, world_size):
            assert not shares[i] & shares[j]
    assert set().union(*shares) == set(CKPT_IDS)


def test_more_ranks_than_trajectories_gives_empty_shares(fixture_dir):
    sizes = []
    for rank in range(5):
        buf = fresh()
        buf.load_checkpoint(str(fixture_dir), is_distributed=True, local_rank=rank, world_size=5)
        sizes.append(buf.size)
        assert buf.trajectory_counter == 3
        if rank >= 3:
            assert buf.total_samples == 0 and not buf.is_ready()
            assert buf.add_trajectories([coded_trajectory(9)]) == [3]
    assert sizes == [1, 1, 1, 0, 0]


def test_not_distributed_loads_everything_whatever_the_rank(sharded_ckpt):
    buf = fresh()
    buf.load_checkpoint(str(sharded_ckpt), is_distributed=False, local_rank=1, world_size=4)
    assert buf.size == 10
    assert trajectories_seen(buf) == set(CKPT_IDS)


@pytest.mark.parametrize("rank,world", [(4, 4), (-1, 2), (0, 0)])
def test_bad_rank_is_refused_and_buffer_unchanged(sharded_ckpt, rank, world):
    buf = fresh()
    buf.add_trajectories([coded_trajectory(50)])
    with pytest.raises(InvalidArgumentError, match="local_rank|world_size"):
        buf.load_checkpoint(str(sharded_ckpt), is_distributed=True, local_rank=rank, world_size=world)
    assert buf.size == 1
    assert trajectories_seen(buf) == {50}


@pytest.mark.parametrize("world_size", [2, 3])
def test_ids_added_after_distributed_load_are_past_every_checkpoint_id(tmp_path, sharded_ckpt, world_size):
    before = all_hashes(sharded_ckpt)
    for rank in range(world_size):
        buf = fresh(auto_save=True, auto_save_path=str(tmp_path / f"rank{rank}"))
        buf.load_checkpoint(str(sharded_ckpt), is_distributed=True, local_rank=rank, world_size=world_size)
        new = buf.add_trajectories([coded_trajectory(70 + rank), coded_trajectory(80 + rank)])
        assert min(new) > max(CKPT_IDS)
        assert new == [13, 14]
        seen = trajectories_seen(buf)
        assert seen == set(CKPT_IDS[rank::world_size]) | {70 + rank, 80 + rank}
        buf.close()
        # the rank's own directory holds the new ids only, under new names
        assert {int(p.name.split("_")[1]) for p in (tmp_path / f"rank{rank}").glob("trajectory_*.pt")} == {
            13,
            14,
        }
    assert all_hashes(sharded_ckpt) == before


def test_auto_save_into_the_loaded_directory_never_overwrites_its_files(sharded_ckpt):
    before = file_hashes(sharded_ckpt)
    buf = fresh(auto_save=True, auto_save_path=str(sharded_ckpt))
    assert buf.size == 10
    buf.load_checkpoint(str(sharded_ckpt), is_distributed=True, local_rank=1, world_size=3)
    assert buf.size == len(CKPT_IDS[1::3])
    new = buf.add_trajectories([coded_trajectory(90), coded_trajectory(91)])
    assert new == [13, 14]
    buf.close()
    after = file_hashes(sharded_ckpt)
    for name, digest in before.items():
        assert after.get(name) == digest, f"{name} was overwritten or removed"
    assert len(after) == len(before) + 2
    everything = loaded(sharded_ckpt)
    assert trajectories_seen(everything) == set(CKPT_IDS) | {90, 91}
    assert everything.trajectory_counter == 15


# -- files RLinf can read -----------------------------------------------------------------------
RLINF_META_KEYS = {"trajectory_format", "size", "total_samples", "trajectory_counter", "seed"}
RLINF_ENTRY_KEYS = {"num_samples", "trajectory_id", "max_episode_length", "shape", "model_weights_id"}
TENSOR_FIELDS = CODED_STEP_FIELDS
DICT_FIELDS = CODED_DICT_FIELDS


def rlinf_head_read(directory: Path) -> dict[int, dict]:
    """Read a directory the way RLinf's head does: file name from the index's model_weights_id."""
    meta = json.loads((directory / "metadata.json").read_text())
    index = json.loads((directory / "trajectory_index.json").read_text())
    fmt = meta["trajectory_format"]
    out = {}
    for tid in index["trajectory_id_list"]:
        entry = index["trajectory_index"][str(tid)]
        path = directory / f"trajectory_{tid}_{entry['model_weights_id']}.{fmt}"
        assert path.is_file(), f"RLinf would open {path.name}, which does not exist"
        if fmt == "pt":
            data = torch.load(path, map_location="cpu", weights_only=True)
        else:
            with open(path, "rb") as f:
                data = pickle.load(f)
        out[tid] = data
    return out


def check_rlinf_readable(directory: Path, fmt: str, ids: list[int], codes: list[int], seed: int) -> None:
    meta = json.loads((directory / "metadata.json").read_text())
    assert RLINF_META_KEYS <= meta.keys()
    assert meta["trajectory_format"] == fmt
    assert meta["size"] == len(ids)
    assert meta["total_samples"] == PER_TRAJ * len(ids)
    assert meta["trajectory_counter"] >= max(ids) + 1
    assert meta["seed"] == seed

    index = json.loads((directory / "trajectory_index.json").read_text())
    assert index["trajectory_id_list"] == ids
    assert set(index["trajectory_index"]) == {str(i) for i in ids}
    for tid in ids:
        entry = index["trajectory_index"][str(tid)]
        assert RLINF_ENTRY_KEYS <= entry.keys()
        assert entry["trajectory_id"] == tid
        assert entry["num_samples"] == PER_TRAJ
        assert entry["max_episode_length"] == N
        assert entry["shape"] == [N * E, B, 1]
        assert isinstance(entry["model_weights_id"], str)

    files = rlinf_head_read(directory)
    assert sorted(files) == ids
    for tid, code in zip(ids, codes, strict=True):
        data = files[tid]
        assert type(data) is dict
        assert data["max_episode_length"] == N
        assert isinstance(data["model_weights_id"], str)
        assert TENSOR_FIELDS <= data.keys()
        assert DICT_FIELDS <= data.keys()
        for name in TENSOR_FIELDS:
            assert isinstance(data[name], torch.Tensor), name
            assert data[name].shape[1] == B, name
        for name in DICT_FIELDS:
            assert isinstance(data[name], dict), name
            assert all(isinstance(v, torch.Tensor) for v in data[name].values()), name
        assert set(data["curr_obs"]) == {"states", "env_ids", "main_images"}
        assert data["curr_obs"]["main_images"].dtype == torch.uint8
        rewards = data["rewards"][:, 0, 0]
        assert rewards.tolist() == [float(1000 * code + 100 * k + s) for k in range(E) for s in range(N)]


@pytest.mark.parametrize("fmt", ["pt", "pkl"])
@pytest.mark.parametrize("auto_save", [False, True], ids=["memory", "auto_save"])
def test_checkpoint_files_are_found_by_rlinf_file_name_rule(tmp_path, fmt, auto_save):
    kwargs = {"trajectory_format": fmt, "seed": 321}
    if auto_save:
        kwargs.update(auto_save=True, auto_save_path=str(tmp_path / "auto"), cache_size=1)
    buf = fresh(**kwargs)
    buf.add_trajectories([coded_trajectory(i, model_update_count=i) for i in range(4)])
    buf.save_checkpoint(str(tmp_path / "ckpt"))
    check_rlinf_readable(tmp_path / "ckpt", fmt, [0, 1, 2, 3], [0, 1, 2, 3], seed=321)
    buf.close()
    if auto_save:
        # the auto-save directory itself, once closed, is an RLinf-readable directory too
        check_rlinf_readable(tmp_path / "auto", fmt, [0, 1, 2, 3], [0, 1, 2, 3], seed=321)


def test_checkpoint_from_windowed_buffer_is_rlinf_readable(tmp_path):
    buf = TrajectoryReplayBuffer(sample_window_size=3, seed=5)
    for i in range(5):
        buf.add_trajectories([coded_trajectory(i)])
    buf.save_checkpoint(str(tmp_path / "ckpt"))
    check_rlinf_readable(tmp_path / "ckpt", "pt", [2, 3, 4], [2, 3, 4], seed=5)


# -- directories in RLinf's shapes --------------------------------------------------------------
def write_rlinf_dir(
    path: Path,
    ids: list[int],
    *,
    fmt: str = "pt",
    names: str = "head",
    format_key: str = "trajectory_format",
    index_name: str = "trajectory_index.json",
    layout: str = "rlinf",
    num_samples: str = "rewards",
    meta_extra: dict | None = None,
) -> Path:
    """Write a buffer directory by hand, the way RLinf does (no help from the library)."""
    path.mkdir(parents=True)
    table = {}
    for tid in ids:
        data = coded_trajectory(tid, layout=layout).to_dict()
        data["max_episode_length"] = N
        data["model_weights_id"] = RLINF_WEIGHTS
        if names == "head" or (names == "mixed" and tid % 2 == 0):
            name = f"trajectory_{tid}_{RLINF_WEIGHTS}.{fmt}"
        else:  # early-2026 / seed shape: trajectory_{id}_{uuid}_{update_count}
            name = f"trajectory_{tid}_{RLINF_WEIGHTS}_{tid + 2}.{fmt}"
        if fmt == "pt":
            torch.save(data, path / name)
        else:
            with open(path / name, "wb") as f:
                pickle.dump(data, f)
        counted = data["prev_logprobs"] if num_samples == "prev_logprobs" else data["rewards"]
        table[str(tid)] = {
            "num_samples": int(counted.shape[0]) * int(counted.shape[1]),
            "trajectory_id": tid,
            "max_episode_length": N,
            "shape": list(data["rewards"].shape),
            "model_weights_id": RLINF_WEIGHTS,
        }
    meta = {
        format_key: fmt,
        "size": len(ids),
        "total_samples": sum(e["num_samples"] for e in table.values()),
        "trajectory_counter": max(ids) + 1,
        "seed": 7,
    }
    if format_key == "storage_format":
        meta["storage_dir"] = str(path)
    meta.update(meta_extra or {})
    (path / "metadata.json").write_text(json.dumps(meta))
    (path / index_name).write_text(json.dumps({"trajectory_index": table, "trajectory_id_list": ids}))
    return path


RLINF_SHAPES = {
    "head_names": {},
    "seed_names": {"names": "seed"},
    "storage_format_key": {"format_key": "storage_format"},
    "merge_index_name_only": {"index_name": "trajector_index.json"},
    "pkl_files": {"fmt": "pkl"},
    "pkl_seed_names": {"fmt": "pkl", "names": "seed"},
    "mixed_names": {"names": "mixed"},
    "size_counts_removed_trajectories": {"meta_extra": {"size": 40, "total_samples": 640}},
    "aligned_rows": {"layout": "aligned"},
    "done_only_extra_rows": {"layout": "done_only"},
    "num_samples_counts_prev_logprobs": {"num_samples": "prev_logprobs"},
    "everything_old_at_once": {
        "names": "seed",
        "format_key": "storage_format",
        "index_name": "trajector_index.json",
        "num_samples": "prev_logprobs",
    },
}


@pytest.mark.parametrize("shape", list(RLINF_SHAPES))
def test_rlinf_shaped_directory_loads(tmp_path, shape):
    ids = [0, 1, 2, 5]
    directory = write_rlinf_dir(tmp_path / "rlinf", ids, **RLINF_SHAPES[shape])
    before = all_hashes(directory)
    buf = loaded(directory)
    assert buf.size == 4
    # computed from the data (rewards rows x B), never from the index's num_samples
    assert buf.total_samples == 4 * PER_TRAJ
    assert buf.trajectory_counter == 6
    assert seen_transitions(buf) == expected_transitions(ids)
    assert buf.add_trajectories([coded_trajectory(9)]) == [6]
    assert all_hashes(directory) == before  # loading only reads


def test_unreliable_num_samples_is_really_too_large(tmp_path):
    directory = write_rlinf_dir(tmp_path / "rlinf", [0, 1], num_samples="prev_logprobs")
    index = json.loads((directory / "trajectory_index.json").read_text())
    assert index["trajectory_index"]["0"]["num_samples"] == (N + 1) * E * B  # 20, not 16
    buf = loaded(directory)
    assert buf.total_samples == 2 * PER_TRAJ
    assert buf.get_stats()["window_transitions"] == 2 * PER_TRAJ


def test_total_samples_of_rlinf_directory_is_computed_per_trajectory(tmp_path):
    """Trajectories of different T (epochs) and B: transitions are rewards rows x B each."""
    directory = tmp_path / "rlinf"
    directory.mkdir()
    shapes = {0: (4, 1, 1), 1: (4, 3, 2), 2: (3, 2, 4)}  # id: (n, e, B)
    table = {}
    for tid, (n, e, num_envs) in shapes.items():
        data = coded_trajectory(tid, n=n, e=e, num_envs=num_envs).to_dict()
        data["model_weights_id"] = RLINF_WEIGHTS
        torch.save(data, directory / f"trajectory_{tid}_{RLINF_WEIGHTS}.pt")
        table[str(tid)] = {
            "num_samples": int(data["prev_logprobs"].shape[0]) * num_envs,  # RLinf's count: too large
            "trajectory_id": tid,
            "max_episode_length": n,
            "shape": list(data["rewards"].shape),
            "model_weights_id": RLINF_WEIGHTS,
        }
    (directory / "metadata.json").write_text(
        json.dumps({"trajectory_format": "pt", "size": 3, "total_samples": 999, "trajectory_counter": 3})
    )
    (directory / "trajectory_index.json").write_text(
        json.dumps({"trajectory_index": table, "trajectory_id_list": [0, 1, 2]})
    )
    buf = loaded(directory)
    assert buf.total_samples == sum(n * e * b for n, e, b in shapes.values())  # 4 + 24 + 24
    batch = buf.sample(3000)
    assert_aligned(batch)
    codes = batch["curr_obs"]["states"][:, 0]
    for tid, (n, _, _) in shapes.items():
        mine = codes[(codes // 1000) == tid]
        assert len(mine) > 0
        dones = batch["dones"][:, 0][(codes // 1000) == tid]
        assert (dones == ((mine % 100) == n - 1)).all()


@pytest.mark.parametrize("world_size", [2, 3])
def test_rlinf_shaped_directory_loads_distributed(tmp_path, world_size):
    ids = list(range(7))
    directory = write_rlinf_dir(tmp_path / "rlinf", ids, names="seed", num_samples="prev_logprobs")
    shares = []
    for rank in range(world_size):
        buf = fresh()
        buf.load_checkpoint(str(directory), is_distributed=True, local_rank=rank, world_size=world_size)
        assert buf.total_samples == PER_TRAJ * len(ids[rank::world_size])
        shares.append(trajectories_seen(buf))
        assert shares[-1] == set(ids[rank::world_size])
    assert set().union(*shares) == set(ids)


@pytest.mark.parametrize("names", ["head", "seed", "mixed"])
def test_continued_rlinf_directory_stays_rlinf_readable(tmp_path, names):
    directory = write_rlinf_dir(tmp_path / "rlinf", [0, 1, 2], names=names, num_samples="prev_logprobs")
    before = file_hashes(directory)
    buf = fresh(auto_save=True, auto_save_path=str(directory), seed=7)
    assert buf.total_samples == 3 * PER_TRAJ
    assert buf.add_trajectories([coded_trajectory(3)]) == [3]
    buf.close()
    check_rlinf_readable(directory, "pt", [0, 1, 2, 3], [0, 1, 2, 3], seed=7)
    after = file_hashes(directory)
    assert {k: after[k] for k in before} == before
    assert seen_transitions(loaded(directory)) == expected_transitions([0, 1, 2, 3])


def fixture_like_trajectory(fixture_dir: Path, code: int):
    """A trajectory with the fixture's fields whose codes are shifted by ``1000 * code``."""
    first = sorted(fixture_dir.glob("trajectory_0_*.pt"))[0]
    data = torch.load(first, map_location="cpu", weights_only=True)
    shift = 1000.0 * code
    for key in ("actions", "rewards"):
        data[key] = data[key] + shift
    for key in ("curr_obs", "next_obs"):
        data[key]["states"] = data[key]["states"] + shift
    data["forward_inputs"]["action"] = data["forward_inputs"]["action"] + shift
    del data["model_weights_id"]
    return Trajectory.from_dict(data)


def test_continued_fixture_directory_stays_rlinf_readable(fixture_dir):
    before = file_hashes(fixture_dir)
    buf = fresh(auto_save=True, auto_save_path=str(fixture_dir))
    assert (buf.size, buf.total_samples, buf.trajectory_counter) == (3, 48, 3)
    assert buf.add_trajectories([fixture_like_trajectory(fixture_dir, 5)]) == [3]
    buf.close()
    files = rlinf_head_read(fixture_dir)
    assert sorted(files) == [0, 1, 2, 3]
    after = file_hashes(fixture_dir)
    assert {k: after[k] for k in before} == before
    again = loaded(fixture_dir)
    assert again.total_samples == 64
    batch = again.sample(3000)
    assert_aligned(batch, n=4)
    codes = {int(c) // 1000 for c in batch["curr_obs"]["states"][:, 0].tolist()}
    assert codes == {0, 1, 2, 5}


def test_rlinf_directory_saved_again_is_rlinf_readable(tmp_path):
    directory = write_rlinf_dir(tmp_path / "rlinf", [0, 1, 2], names="seed", num_samples="prev_logprobs")
    buf = loaded(directory, seed=11)
    buf.save_checkpoint(str(tmp_path / "ours"))
    files = rlinf_head_read(tmp_path / "ours")
    assert sorted(files) == [0, 1, 2]
    meta = json.loads((tmp_path / "ours" / "metadata.json").read_text())
    assert meta["total_samples"] == 3 * PER_TRAJ
    assert trajectories_seen(loaded(tmp_path / "ours")) == {0, 1, 2}


# -- interrupted and refused saves --------------------------------------------------------------
def failing_after(calls: int, original, exc: BaseException):
    """A stand-in for ``original`` that raises ``exc`` on call number ``calls`` (1-based)."""
    count = {"n": 0}

    def wrapper(*args, **kwargs):
        count["n"] += 1
        if count["n"] == calls:
            raise exc
        return original(*args, **kwargs)

    return wrapper


def assert_no_acceptable_leftover(parent: Path, allowed: set[str]) -> None:
    """Nothing but ``allowed`` in ``parent``; any other directory would be refused by load."""
    for entry in parent.iterdir():
        if entry.name in allowed:
            continue
        if entry.is_dir():
            with pytest.raises(BufferDirectoryError):
                fresh().load_checkpoint(str(entry))
        raise AssertionError(f"save left {entry.name} behind in {parent}")


ENOSPC = OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("exc", [ENOSPC, KeyboardInterrupt()], ids=["ENOSPC", "KeyboardInterrupt"])
def test_interrupted_save_leaves_no_checkpoint(tmp_path, monkeypatch, exc):
    parent = tmp_path / "out"
    parent.mkdir()
    dest = parent / "ckpt"
    buf = fresh()
    buf.add_trajectories([coded_trajectory(i) for i in range(5)])
    monkeypatch.setattr(formats_mod, "write", failing_after(3, formats_mod.write, exc))
    with pytest.raises(type(exc)):
        buf.save_checkpoint(str(dest))
    assert not dest.exists()
    assert_no_acceptable_leftover(parent, allowed=set())
    monkeypatch.undo()
    # the buffer is intact and a later save succeeds
    assert buf.size == 5
    buf.save_checkpoint(str(dest))
    assert trajectories_seen(loaded(dest)) == set(range(5))
    assert_no_acceptable_leftover(parent, allowed={"ckpt"})


KILL_DURING_SAVE = """
import os, sys
sys.path.insert(0, {tests!r})
from conftest import coded_trajectory
import rlinf_replay_buffer.formats as formats
from rlinf_replay_buffer import TrajectoryReplayBuffer

buf = TrajectoryReplayBuffer(sample_window_size=0)
buf.add_trajectories([coded_trajectory(i) for i in range(5)])
original, calls = formats.write, []

def write(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
        os._exit(17)  # the process dies: no exception handler, no cleanup
    return original(*args, **kwargs)

formats.write = write
buf.save_checkpoint({dest!r})
"""


FLUSH_AND_EXIT = """
import os, sys
sys.path.insert(0, {tests!r})
from conftest import coded_trajectory
from rlinf_replay_buffer import TrajectoryReplayBuffer

buf = TrajectoryReplayBuffer(
    sample_window_size=0, auto_save=True, auto_save_path={path!r}, trajectory_format={fmt!r}
)
assert buf.add_trajectories([coded_trajectory(i) for i in range(3)]) == [0, 1, 2]
buf.flush()
os._exit(0)  # no close(), no cleanup
"""


def test_process_killed_during_save_leaves_nothing_loadable(tmp_path):
    parent = tmp_path / "out"
    parent.mkdir()
    dest = parent / "ckpt"
    script = KILL_DURING_SAVE.format(tests=str(Path(__file__).resolve().parent), dest=str(dest))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 17, proc.stderr
    assert not dest.exists()
    for entry in parent.iterdir():  # a staging directory may survive a kill; it is never loadable
        assert entry.name.startswith("."), entry.name
        with pytest.raises(BufferDirectoryError):
            fresh().load_checkpoint(str(entry))
    # and a later save to the same destination works
    saved_checkpoint(dest, [0, 1])
    assert trajectories_seen(loaded(dest)) == {0, 1}


@pytest.mark.parametrize("source", ["memory", "auto_save"])
def test_interrupted_save_keeps_previous_checkpoint_intact(tmp_path, monkeypatch, source):
    parent = tmp_path / "out"
    dest = parent / "ckpt"
    saved_checkpoint(dest, [0, 1, 2])
    before = all_hashes(dest)

    kwargs = {}
    if source == "auto_save":
        kwargs = {"auto_save": True, "auto_save_path": str(tmp_path / "auto")}
    other = fresh(**kwargs)
    other.add_trajectories([coded_trajectory(i) for i in range(10, 15)])
    other.flush()
    # write_record materializes each trajectory (serialize, or link an auto-saved file)
    monkeypatch.setattr(checkpoint_mod, "write_record", failing_after(4, checkpoint_mod.write_record, ENOSPC))
    with pytest.raises(OSError, match="No space left on device"):
        other.save_checkpoint(str(dest))
    assert all_hashes(dest) == before
    assert trajectories_seen(loaded(dest)) == {0, 1, 2}
    assert_no_acceptable_leftover(parent, allowed={"ckpt"})
    other.close()


@pytest.mark.parametrize("step", ["write_index", "write_metadata", "publish"])
def test_save_interrupted_after_all_files_leaves_no_checkpoint(tmp_path, monkeypatch, step):
    parent = tmp_path / "out"
    parent.mkdir()
    dest = parent / "ckpt"
    buf = fresh()
    buf.add_trajectories([coded_trajectory(i) for i in range(3)])
    monkeypatch.setattr(checkpoint_mod, step, failing_after(1, getattr(checkpoint_mod, step), ENOSPC))
    with pytest.raises(OSError, match="No space"):
        buf.save_checkpoint(str(dest))
    assert not dest.exists()
    assert_no_acceptable_leftover(parent, allowed=set())


def test_saving_over_an_existing_checkpoint_replaces_it(tmp_path):
    dest = tmp_path / "ckpt"
    saved_checkpoint(dest, [0, 1, 2, 3])
    saved_checkpoint(dest, [20, 21], fmt="pkl")
    buf = loaded(dest)
    assert buf.size == 2
    assert trajectories_seen(buf) == {20, 21}
    # no file of the old checkpoint is left behind
    names = {p.name for p in dest.iterdir()}
    assert {n for n in names if n.startswith("trajectory_") and n.endswith((".pt", ".pkl"))} == {
        n for n in names if n.endswith(".pkl")
    }
    assert len([n for n in names if n.endswith(".pkl")]) == 2
    assert not [n for n in names if n.endswith(".pt")]
    assert {p.name for p in tmp_path.iterdir()} == {"ckpt"}


def test_saving_into_an_empty_directory_works(tmp_path):
    dest = tmp_path / "empty"
    dest.mkdir()
    saved_checkpoint(dest, [0, 1])
    assert trajectories_seen(loaded(dest)) == {0, 1}


def test_saving_into_a_non_buffer_directory_is_refused_untouched(tmp_path):
    dest = tmp_path / "precious"
    dest.mkdir()
    (dest / "notes.txt").write_text("do not delete")
    (dest / "sub").mkdir()
    (dest / "sub" / "data.bin").write_bytes(b"\x00\x01")
    buf = fresh()
    buf.add_trajectories([coded_trajectory(0)])
    with pytest.raises(BufferDirectoryError, match="not a buffer directory"):
        buf.save_checkpoint(str(dest))
    assert sorted(p.name for p in dest.iterdir()) == ["notes.txt", "sub"]
    assert (dest / "notes.txt").read_text() == "do not delete"
    assert sorted(p.name for p in (dest / "sub").iterdir()) == ["data.bin"]
    assert (dest / "sub" / "data.bin").read_bytes() == b"\x00\x01"
    assert {p.name for p in tmp_path.iterdir()} == {"precious"}


def test_saving_onto_a_file_is_refused(tmp_path):
    target = tmp_path / "afile"
    target.write_text("x")
    buf = fresh()
    buf.add_trajectories([coded_trajectory(0)])
    with pytest.raises(BufferDirectoryError, match="not a directory"):
        buf.save_checkpoint(str(target))
    assert target.read_text() == "x"


# -- auto-save continuation and loading -----------------------------------------------------------
@pytest.mark.parametrize("fmt", ["pt", "pkl", "segment"])
@pytest.mark.parametrize("ending", ["close", "flush"])
def test_auto_save_directory_is_continued(tmp_path, fmt, ending):
    path = tmp_path / "auto"
    if ending == "close":
        first = fresh(auto_save=True, auto_save_path=str(path), trajectory_format=fmt, cache_size=2)
        assert first.add_trajectories([coded_trajectory(i) for i in range(3)]) == [0, 1, 2]
        first.close()
    else:  # a process that flushed and stopped without close()
        script = FLUSH_AND_EXIT.format(tests=str(Path(__file__).resolve().parent), path=str(path), fmt=fmt)
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    before = file_hashes(path)
    assert len(before) == (3 if fmt != "segment" else len(loaded(path).schema))

    second = fresh(auto_save=True, auto_save_path=str(path), trajectory_format=fmt, cache_size=2)
    assert (second.size, second.total_samples, second.trajectory_counter) == (3, 3 * PER_TRAJ, 3)
    assert trajectories_seen(second) == {0, 1, 2}
    assert second.add_trajectories([coded_trajectory(3), coded_trajectory(4)]) == [3, 4]
    second.close()
    after = file_hashes(path)
    for name, digest in before.items():
        assert after[name] == digest
    assert len(after) == (5 if fmt != "segment" else 2 * len(second.schema))  # a new segment

    # the auto-save directory is a loadable checkpoint
    reader = loaded(path)
    assert reader.size == 5
    assert seen_transitions(reader) == expected_transitions(list(range(5)))


def test_auto_save_path_with_other_format_is_refused(tmp_path):
    path = tmp_path / "auto"
    with fresh(auto_save=True, auto_save_path=str(path), trajectory_format="pt") as buf:
        buf.add_trajectories([coded_trajectory(0)])
    with pytest.raises(BufferDirectoryError, match="trajectory_format='pt'"):
        fresh(auto_save=True, auto_save_path=str(path), trajectory_format="pkl")


def test_loading_replaces_what_the_buffer_held(tmp_path):
    ckpt = saved_checkpoint(tmp_path / "ckpt", [20, 21])
    buf = fresh()
    buf.add_trajectories([coded_trajectory(i) for i in range(4)])
    buf.load_checkpoint(str(ckpt))
    assert (buf.size, buf.total_samples) == (2, 2 * PER_TRAJ)
    assert trajectories_seen(buf) == {20, 21}
    assert buf.trajectory_counter == 2


def test_loading_into_auto_save_buffer_replaces_contents_and_keeps_its_files(tmp_path):
    ckpt = saved_checkpoint(tmp_path / "ckpt", [20, 21])
    path = tmp_path / "auto"
    buf = fresh(auto_save=True, auto_save_path=str(path))
    buf.add_trajectories([coded_trajectory(i) for i in range(4)])
    buf.flush()
    before = file_hashes(path)
    buf.load_checkpoint(str(ckpt))
    assert buf.size == 2
    assert trajectories_seen(buf) == {20, 21}
    # new ids are past both the checkpoint's and the auto-save directory's ids
    assert buf.add_trajectories([coded_trajectory(30)]) == [4]
    buf.close()
    after = file_hashes(path)
    for name, digest in before.items():
        assert after[name] == digest


def test_load_checkpoint_of_own_auto_save_path_after_flush(tmp_path):
    path = tmp_path / "auto"
    buf = fresh(auto_save=True, auto_save_path=str(path), cache_size=1)
    buf.add_trajectories([coded_trajectory(i) for i in range(3)])
    buf.flush()
    buf.load_checkpoint(str(path))
    assert buf.size == 3
    assert trajectories_seen(buf) == {0, 1, 2}
    assert buf.add_trajectories([coded_trajectory(3)]) == [3]
    buf.close()
    assert trajectories_seen(loaded(path)) == {0, 1, 2, 3}


def test_load_checkpoint_of_own_auto_save_path_with_writes_pending(tmp_path, monkeypatch):
    """Trajectories whose background write is still pending belong to the directory too.

    The writes are held until the buffer waits for its writer, so the outcome does not depend on
    thread scheduling: a buffer that reads the directory before finishing its own writes misses
    them.
    """
    path = tmp_path / "auto"
    buf = fresh(auto_save=True, auto_save_path=str(path), cache_size=1)
    gate = threading.Event()
    original_write = pt_mod.write

    def held_write(*args, **kwargs):
        gate.wait(10)  # safety bound only; the gate opens when the buffer waits for its writer
        return original_write(*args, **kwargs)

    original_wait = BackgroundWriter.wait

    def opening_wait(writer: BackgroundWriter) -> None:
        gate.set()
        original_wait(writer)

    monkeypatch.setattr(pt_mod, "write", held_write)
    monkeypatch.setattr(BackgroundWriter, "wait", opening_wait)
    buf.add_trajectories([coded_trajectory(i) for i in range(3)])
    buf.load_checkpoint(str(path))
    assert buf.size == 3
    assert trajectories_seen(buf) == {0, 1, 2}
    assert buf.add_trajectories([coded_trajectory(3)]) == [3]
    buf.close()
    assert trajectories_seen(loaded(path)) == {0, 1, 2, 3}


def test_failed_load_leaves_buffer_unchanged(tmp_path):
    buf = fresh()
    buf.add_trajectories([coded_trajectory(i) for i in range(2)])
    with pytest.raises(BufferDirectoryError, match="no such directory"):
        buf.load_checkpoint(str(tmp_path / "missing"))
    broken = saved_checkpoint(tmp_path / "broken", [7])
    (broken / "metadata.json").write_text("{not json")
    with pytest.raises(BufferDirectoryError, match="not valid JSON"):
        buf.load_checkpoint(str(broken))
    assert buf.size == 2
    assert trajectories_seen(buf) == {0, 1}
