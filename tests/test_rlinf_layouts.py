"""RLinf's on-disk layouts beyond its auto-saved files, and the index ``flush()`` publishes for it.

* Files RLinf's ``save_checkpoint`` writes with ``auto_save`` off come from its flattened cache:
  done-like fields lose their extra first row per epoch, every tensor field and every tensor of
  ``curr_obs``/``next_obs`` (and, in RLinf 0.3.0, ``forward_inputs``) is flattened to
  ``[rows * B, ...]`` and reshaped back to ``[T', B, ...]`` only when it has exactly ``T' * B``
  rows, ``T'`` = ``shape[0]`` of the index entry (rows of ``prev_logprobs`` if present, else of
  ``rewards``). :func:`write_rlinf_checkpoint` writes such directories by hand, following
  RLinf 0.3.0's ``add_trajectories`` / ``_flatten_trajectory`` / ``_reshape_flat_for_save`` /
  ``_save_trajectory`` / ``_save_metadata`` / ``_save_trajectory_index``.
* An auto-save directory must be readable by RLinf's loader (which reads
  ``trajectory_index.json`` and ``metadata.json``, never the journal) after ``flush()``.

The trajectories are the coded ones of ``conftest`` (SAC-style rollouts: one extra action row at
the end and one extra done row at the start of every epoch, holding poison values).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TrackedBuffer, assert_aligned, coded_trajectory

from rlinf_replay_buffer import CorruptBufferError, Trajectory, TrajectoryReplayBuffer
from rlinf_replay_buffer.trajectory import STEP_FIELDS, align, iter_columns, unflatten_rlinf

N = 3  # steps per epoch
IDS = [0, 1, 2]
RLINF_META_KEYS = {"trajectory_format", "size", "total_samples", "trajectory_counter", "seed"}
RLINF_ENTRY_KEYS = {"num_samples", "trajectory_id", "max_episode_length", "shape", "model_weights_id"}
DONE_LIKE = ("dones", "terminations", "truncations")


# -- RLinf's checkpoint layout, written by hand -------------------------------------------------
def rlinf_flatten(tensor: torch.Tensor, name: str, num_steps: int) -> torch.Tensor:
    """One field as RLinf's ``_flatten_trajectory`` caches it: ``[rows * B, ...]``, done-like
    fields without their first row per epoch."""
    if name in DONE_LIKE and tensor.shape[0] > num_steps:
        extra = tensor.shape[0] - num_steps
        blocks = tensor.reshape(extra, num_steps // extra + 1, *tensor.shape[1:])[:, 1:]
        tensor = blocks.reshape(num_steps, *tensor.shape[1:])
    return tensor.reshape(-1, *tensor.shape[2:])


def rlinf_reshape(flat: torch.Tensor, ref_rows: int, num_envs: int) -> torch.Tensor:
    """RLinf's ``_reshape_flat_for_save``: back to ``[T', B, ...]`` only with exactly ``T' * B`` rows."""
    if flat.shape[0] == ref_rows * num_envs:
        return flat.reshape(ref_rows, num_envs, *flat.shape[1:])
    return flat


def rlinf_checkpoint_file(traj: Trajectory, weights_id: str, flat_forward_inputs: bool) -> tuple[dict, list]:
    """The dict RLinf's ``save_checkpoint`` (auto_save off) writes for ``traj``, and its index
    ``shape`` (that of ``prev_logprobs`` if present, else of ``rewards``)."""
    ref = traj.prev_logprobs if traj.prev_logprobs is not None else traj.rewards
    ref_rows, num_envs = int(ref.shape[0]), int(ref.shape[1])
    num_steps = int(traj.rewards.shape[0])
    data: dict = {"max_episode_length": traj.max_episode_length, "model_weights_id": weights_id}
    for name in STEP_FIELDS:
        value = getattr(traj, name)
        if value is not None:
            data[name] = rlinf_reshape(rlinf_flatten(value, name, num_steps), ref_rows, num_envs)
    for name in ("forward_inputs", "curr_obs", "next_obs"):
        values = getattr(traj, name)
        if not values:
            continue
        if name == "forward_inputs" and not flat_forward_inputs:
            data[name] = {k: v.clone() for k, v in values.items()}
            continue
        data[name] = {
            k: rlinf_reshape(rlinf_flatten(v, name, num_steps), ref_rows, num_envs) for k, v in values.items()
        }
    return data, list(ref.shape)


def write_rlinf_checkpoint(
    path: Path,
    trajectories: list[Trajectory],
    fmt: str = "pt",
    flat_forward_inputs: bool = True,
) -> Path:
    """A directory as RLinf 0.3.0's ``save_checkpoint`` writes it with ``auto_save`` off."""
    path.mkdir(parents=True)
    table = {}
    for tid, traj in enumerate(trajectories):
        weights_id = f"weights-{tid}"
        data, shape = rlinf_checkpoint_file(traj, weights_id, flat_forward_inputs)
        target = path / f"trajectory_{tid}_{weights_id}.{fmt}"
        if fmt == "pt":
            torch.save(data, target)
        else:
            with open(target, "wb") as f:
                pickle.dump(data, f)
        table[str(tid)] = {
            "num_samples": shape[0] * shape[1],  # counts prev_logprobs rows when present
            "trajectory_id": tid,
            "max_episode_length": traj.max_episode_length,
            "shape": shape,
            "model_weights_id": weights_id,
        }
    meta = {
        "trajectory_format": fmt,
        "size": len(trajectories),
        "total_samples": sum(e["num_samples"] for e in table.values()),
        "trajectory_counter": len(trajectories),
        "seed": 1234,
    }
    (path / "metadata.json").write_text(json.dumps(meta))
    ids = list(range(len(trajectories)))
    (path / "trajectory_index.json").write_text(
        json.dumps({"trajectory_index": table, "trajectory_id_list": ids})
    )
    return path


def coded(i: int, epochs: int, num_envs: int, logprobs: bool, **kwargs) -> Trajectory:
    return coded_trajectory(i, n=N, e=epochs, num_envs=num_envs, logprobs=logprobs, **kwargs)


def per_transition_shapes(traj: Trajectory) -> dict[str, tuple]:
    """``field -> (dtype, shape of one transition)`` of a trajectory's aligned columns."""
    return {".".join(k): (v.dtype, tuple(v.shape[2:])) for k, v in align(traj).columns.items()}


def batch_shapes(batch: dict) -> dict[str, tuple]:
    out = {}
    for name, value in batch.items():
        if isinstance(value, dict):
            out.update({f"{name}.{k}": (v.dtype, tuple(v.shape[1:])) for k, v in value.items()})
        else:
            out[name] = (value.dtype, tuple(value.shape[1:]))
    return out


def read_file(path: Path) -> dict:
    if path.suffix == ".pt":
        return torch.load(path, map_location="cpu", weights_only=True)
    with open(path, "rb") as f:
        return pickle.load(f)


def columns_of(data: dict) -> dict[str, torch.Tensor]:
    return {".".join(k): v for k, v in iter_columns(data).items()}


CASES = [
    pytest.param(
        epochs, num_envs, logprobs, fmt, id=f"{epochs}ep-B{num_envs}-{'logp' if logprobs else 'nologp'}-{fmt}"
    )
    for epochs in (1, 2)
    for num_envs in (1, 2)
    for logprobs in (True, False)
    for fmt in ("pt", "pkl")
]


# -- loading RLinf's checkpoints ----------------------------------------------------------------
def test_hand_written_checkpoint_has_rlinf_flat_columns(tmp_path):
    """The writer above reproduces what the spec describes (and what the load error showed)."""
    directory = write_rlinf_checkpoint(tmp_path / "ck", [coded(0, 2, 2, logprobs=True)])
    data = read_file(directory / "trajectory_0_weights-0.pt")
    assert tuple(data["actions"].shape) == (8, 2, 2)  # T' = rows of prev_logprobs = (3 + 1) * 2
    assert tuple(data["prev_logprobs"].shape) == (8, 2, 1)
    assert tuple(data["rewards"].shape) == (12, 1)  # T * B rows, left flat
    assert tuple(data["dones"].shape) == (12, 1)  # first row per epoch dropped, flat
    assert tuple(data["curr_obs"]["main_images"].shape) == (12, 4, 4, 3)
    index = json.loads((directory / "trajectory_index.json").read_text())
    assert index["trajectory_index"]["0"]["shape"] == [8, 2, 1]
    assert index["trajectory_index"]["0"]["num_samples"] == 16  # not the 12 transitions
    no_logp = write_rlinf_checkpoint(tmp_path / "ck2", [coded(0, 1, 1, logprobs=False)])
    data = read_file(no_logp / "trajectory_0_weights-0.pt")
    assert tuple(data["rewards"].shape) == (3, 1, 1)  # T' = rows of rewards: reshaped
    assert tuple(data["actions"].shape) == (4, 2)  # one extra row: left flat


@pytest.mark.parametrize(("epochs", "num_envs", "logprobs", "fmt"), CASES)
def test_rlinf_checkpoint_loads_with_every_row_aligned(tmp_path, epochs, num_envs, logprobs, fmt):
    trajectories = [coded(i, epochs, num_envs, logprobs) for i in IDS]
    directory = write_rlinf_checkpoint(tmp_path / "ck", trajectories, fmt)
    buf = TrajectoryReplayBuffer(trajectory_format=fmt)
    buf.load_checkpoint(str(directory))
    assert buf.size == len(IDS)
    assert buf.total_samples == len(IDS) * N * epochs * num_envs  # from the data, not num_samples
    batch = buf.sample(2000)
    assert_aligned(batch, n=N)
    assert batch_shapes(batch) == per_transition_shapes(trajectories[0])
    seen = {
        (float(c), int(b))
        for c, b in zip(batch["curr_obs"]["states"][:, 0], batch["curr_obs"]["env_ids"][:, 0], strict=True)
    }
    assert seen == {
        (float(1000 * i + 100 * k + s), b)
        for i in IDS
        for k in range(epochs)
        for s in range(N)
        for b in range(num_envs)
    }


@pytest.mark.parametrize(("epochs", "num_envs", "logprobs", "fmt"), CASES)
def test_saving_a_loaded_rlinf_checkpoint_writes_rows_by_envs_files_rlinf_reads(
    tmp_path, epochs, num_envs, logprobs, fmt
):
    trajectories = [coded(i, epochs, num_envs, logprobs) for i in IDS]
    directory = write_rlinf_checkpoint(tmp_path / "ck", trajectories, fmt)
    buf = TrajectoryReplayBuffer(trajectory_format=fmt, seed=99)
    buf.load_checkpoint(str(directory))
    out = tmp_path / "out"
    buf.save_checkpoint(str(out))

    num_steps = N * epochs
    meta = json.loads((out / "metadata.json").read_text())
    assert RLINF_META_KEYS <= meta.keys()
    assert meta["trajectory_format"] == fmt
    assert meta["size"] == len(IDS)
    assert meta["total_samples"] == len(IDS) * num_steps * num_envs
    assert isinstance(meta["seed"], int)  # RLinf seeds its generator with it
    index = json.loads((out / "trajectory_index.json").read_text())
    assert index["trajectory_id_list"] == IDS
    for tid in IDS:
        entry = index["trajectory_index"][str(tid)]
        assert RLINF_ENTRY_KEYS <= entry.keys()
        assert entry["num_samples"] == num_steps * num_envs
        assert entry["shape"] == [num_steps, num_envs, 1]
        # RLinf opens trajectory_{id}_{model_weights_id}.{fmt}, and indexes its rows by num_samples
        data = read_file(out / f"trajectory_{tid}_{entry['model_weights_id']}.{fmt}")
        assert data["max_episode_length"] == N
        for name, tensor in columns_of(data).items():
            assert tuple(tensor.shape[:2]) == (num_steps, num_envs), name
        flat = {name: rlinf_flatten(t, name, num_steps) for name, t in columns_of(data).items()}
        assert all(t.shape[0] == entry["num_samples"] for t in flat.values())
        assert_aligned(
            {
                "actions": flat["actions"],
                "rewards": flat["rewards"],
                "dones": flat["dones"],
                "truncations": flat["truncations"],
                "curr_obs": {"states": flat["curr_obs.states"]},
                "next_obs": {"states": flat["next_obs.states"]},
                "forward_inputs": {"action": flat["forward_inputs.action"]},
            },
            n=N,
        )
    again = TrajectoryReplayBuffer(trajectory_format=fmt)
    again.load_checkpoint(str(out))
    assert_aligned(again.sample(500), n=N)


def test_forward_inputs_kept_as_rows_by_envs_load_too(tmp_path):
    """RLinf's main branch keeps forward_inputs out of the flattening (0.3.0 flattens it)."""
    trajectories = [coded(i, 2, 2, logprobs=False) for i in IDS]
    directory = write_rlinf_checkpoint(tmp_path / "ck", trajectories, flat_forward_inputs=False)
    assert tuple(read_file(directory / "trajectory_0_weights-0.pt")["forward_inputs"]["action"].shape) == (
        8,
        2,
        2,
    )
    buf = TrajectoryReplayBuffer()
    buf.load_checkpoint(str(directory))
    assert_aligned(buf.sample(500), n=N)


@pytest.mark.parametrize("logprobs", [True, False])
def test_single_env_flat_columns_ending_in_size_one_keep_their_shape(tmp_path, logprobs):
    """B=1 with every flattened column ``[R, 1]``: it looks like ``[R, B=1]``. The done rows
    RLinf's cache dropped (while the extra action rows stay) tell the file is flattened."""
    trajectories = [coded(i, 2, 1, logprobs, images=False, obs_dim=1) for i in IDS]
    for traj in trajectories:  # one action dimension: nothing flat has a second dimension but 1
        traj.actions, traj.intervene_flags = traj.actions[..., :1], traj.intervene_flags[..., :1]
        traj.forward_inputs = {"action": traj.forward_inputs["action"][..., :1]}
    directory = write_rlinf_checkpoint(tmp_path / "ck", trajectories)
    data = read_file(directory / "trajectory_0_weights-0.pt")
    ref_rows = json.loads((directory / "trajectory_index.json").read_text())["trajectory_index"]["0"][
        "shape"
    ][0]
    flattened = [t for t in columns_of(data).values() if t.shape[0] != ref_rows]
    assert flattened and all(t.dim() == 2 and t.shape[1] == 1 for t in flattened)
    buf = TrajectoryReplayBuffer()
    buf.load_checkpoint(str(directory))
    batch = buf.sample(300)
    assert_aligned(batch, n=N)
    assert batch_shapes(batch) == per_transition_shapes(trajectories[0])


def test_saving_over_the_loaded_rlinf_checkpoint_replaces_its_flat_files(tmp_path):
    directory = write_rlinf_checkpoint(tmp_path / "ck", [coded(i, 2, 2, logprobs=True) for i in IDS])
    buf = TrajectoryReplayBuffer(cache_size=0)  # every sample reads the files
    buf.load_checkpoint(str(directory))
    buf.save_checkpoint(str(directory))
    assert not list(directory.glob("trajectory_*_weights-?.pt"))  # RLinf's flat files are gone
    assert_aligned(buf.sample(500), n=N)  # the buffer reads the files that replaced them
    again = TrajectoryReplayBuffer()
    again.load_checkpoint(str(directory))
    assert_aligned(again.sample(500), n=N)
    for path in directory.glob("trajectory_*.pt"):
        for name, tensor in columns_of(read_file(path)).items():
            assert tuple(tensor.shape[:2]) == (2 * N, 2), name


def test_rlinf_checkpoint_continued_as_auto_save_path_stays_readable(tmp_path):
    directory = write_rlinf_checkpoint(tmp_path / "ck", [coded(i, 2, 2, logprobs=True) for i in IDS])
    buf = TrackedBuffer(auto_save=True, auto_save_path=str(directory))
    assert buf.size == len(IDS)
    buf.add_trajectories([coded(7, 2, 2, logprobs=True)])
    buf.flush()
    assert_aligned(buf.sample(500), n=N)
    buf.save_checkpoint(str(tmp_path / "out"))  # the flat files are written again as [T, B, ...]
    for path in (tmp_path / "out").glob("trajectory_*.pt"):
        for name, tensor in columns_of(read_file(path)).items():
            assert tuple(tensor.shape[:2]) == (2 * N, 2), name


def test_flat_files_linked_by_the_merge_tool_are_marked_and_written_again_on_save(tmp_path):
    """A directory of ours that links RLinf's flattened files (merge/split, shard staging) marks
    their entries, so the next save_checkpoint still writes them as [T, B, ...]."""
    from rlinf_replay_buffer.tools.merge_split import merge_or_split

    directory = write_rlinf_checkpoint(tmp_path / "ck", [coded(i, 2, 2, logprobs=True) for i in IDS])
    merge_or_split(str(directory), str(tmp_path / "merged"), copy=True)
    index = json.loads((tmp_path / "merged" / "trajectory_index.json").read_text())
    assert all(e.get("rlinf_flat") is True for e in index["trajectory_index"].values())
    buf = TrajectoryReplayBuffer(cache_size=0)
    buf.load_checkpoint(str(tmp_path / "merged"))
    assert_aligned(buf.sample(500), n=N)
    buf.save_checkpoint(str(tmp_path / "out"))
    index = json.loads((tmp_path / "out" / "trajectory_index.json").read_text())
    assert not any("rlinf_flat" in e for e in index["trajectory_index"].values())
    for path in (tmp_path / "out").glob("trajectory_*.pt"):
        for name, tensor in columns_of(read_file(path)).items():
            assert tuple(tensor.shape[:2]) == (2 * N, 2), name


def test_rlinf_checkpoint_loads_as_rank_shares(tmp_path):
    directory = write_rlinf_checkpoint(tmp_path / "ck", [coded(i, 2, 2, logprobs=True) for i in range(4)])
    for rank in (0, 1):
        buf = TrajectoryReplayBuffer()
        buf.load_checkpoint(str(directory), is_distributed=True, local_rank=rank, world_size=2)
        assert buf.size == 2
        batch = buf.sample(300)
        assert_aligned(batch, n=N)
        assert {int(c) // 1000 for c in batch["curr_obs"]["states"][:, 0]} == {rank, rank + 2}


def test_damaged_flat_column_names_the_file_and_the_field(tmp_path):
    directory = write_rlinf_checkpoint(tmp_path / "ck", [coded(0, 2, 2, logprobs=True)])
    path = directory / "trajectory_0_weights-0.pt"
    data = read_file(path)
    data["next_obs"]["states"] = data["next_obs"]["states"][:-2]  # 10 rows: no T * B reading
    torch.save(data, path)
    buf = TrajectoryReplayBuffer()
    with pytest.raises(CorruptBufferError, match=r"trajectory_0_weights-0\.pt.*next_obs\.states"):
        buf.load_checkpoint(str(directory))


# -- the layout function itself -----------------------------------------------------------------
@pytest.mark.parametrize("num_envs", [1, 2])
@pytest.mark.parametrize("layout", ["rlinf", "aligned", "done_only"])
def test_rows_by_envs_files_come_back_unchanged(num_envs, layout):
    """Auto-saved files (RLinf's and ours) keep every column: the same tensor objects."""
    columns = iter_columns(coded_trajectory(0, num_envs=num_envs, layout=layout).to_dict())
    for ref_rows in (None, 8, 10):
        out = unflatten_rlinf(columns, num_envs, ref_rows)
        assert all(out[k] is v for k, v in columns.items())
    assert all(unflatten_rlinf(columns)[k] is v for k, v in columns.items())  # B from the file


def test_flat_columns_are_reshaped_to_rows_by_envs_as_views():
    traj = coded(0, 2, 2, logprobs=True)
    data, shape = rlinf_checkpoint_file(traj, "w", flat_forward_inputs=True)
    columns = iter_columns(data)
    out = unflatten_rlinf(columns, shape[1], shape[0])
    assert tuple(out[("rewards",)].shape) == (6, 2, 1)
    assert tuple(out[("dones",)].shape) == (6, 2, 1)
    assert tuple(out[("curr_obs", "main_images")].shape) == (6, 2, 4, 4, 3)
    assert out[("actions",)] is columns[("actions",)]
    assert (
        out[("rewards",)].untyped_storage().data_ptr() == columns[("rewards",)].untyped_storage().data_ptr()
    )
    # without the index: B and T' come from prev_logprobs, which RLinf always keeps as [T', B, ...]
    assert {k: tuple(v.shape) for k, v in unflatten_rlinf(columns).items()} == {
        k: tuple(v.shape) for k, v in out.items()
    }


# -- flush() publishes an index RLinf's loader reads --------------------------------------------
def rlinf_view(directory: Path) -> tuple[dict, dict]:
    """What RLinf's ``load_checkpoint`` reads: metadata.json and trajectory_index.json."""
    meta = json.loads((directory / "metadata.json").read_text())
    index = json.loads((directory / "trajectory_index.json").read_text())
    return meta, index


def check_lists(directory: Path, fmt: str, ids: list[int], per_traj: int) -> None:
    meta, index = rlinf_view(directory)
    assert RLINF_META_KEYS <= meta.keys()
    assert meta["trajectory_format"] == fmt
    assert meta["size"] == len(ids)
    assert meta["total_samples"] == per_traj * len(ids)
    assert meta["trajectory_counter"] > max(ids)
    assert index["trajectory_id_list"] == ids
    assert set(index["trajectory_index"]) == {str(i) for i in ids}
    for tid in ids:
        entry = index["trajectory_index"][str(tid)]
        assert RLINF_ENTRY_KEYS <= entry.keys()
        assert entry["trajectory_id"] == tid
        assert entry["num_samples"] == per_traj
        path = directory / f"trajectory_{tid}_{entry['model_weights_id']}.{fmt}"
        assert path.is_file(), f"RLinf would open {path.name}, which does not exist"
        assert read_file(path)["rewards"].shape[0] == entry["shape"][0]


@pytest.mark.parametrize("fmt", ["pt", "pkl"])
def test_flush_lists_every_flushed_trajectory_in_rlinf_index_and_metadata(tmp_path, fmt):
    directory = tmp_path / "auto"
    buf = TrackedBuffer(auto_save=True, auto_save_path=str(directory), trajectory_format=fmt)
    buf.add_trajectories([coded_trajectory(i) for i in range(3)])
    buf.flush()
    check_lists(directory, fmt, [0, 1, 2], per_traj=16)
    buf.add_trajectories([coded_trajectory(3)])
    buf.flush()
    check_lists(directory, fmt, [0, 1, 2, 3], per_traj=16)


def test_flush_drops_evicted_trajectories_from_rlinf_index(tmp_path):
    directory = tmp_path / "auto"
    buf = TrackedBuffer(auto_save=True, auto_save_path=str(directory), max_trajectories=2)
    buf.add_trajectories([coded_trajectory(i) for i in range(5)])
    buf.flush()
    check_lists(directory, "pt", [3, 4], per_traj=16)
    assert len(list(directory.glob("trajectory_*.pt"))) == 2


def test_flush_rewrites_the_index_only_when_something_changed(tmp_path):
    directory = tmp_path / "auto"
    buf = TrackedBuffer(auto_save=True, auto_save_path=str(directory))
    buf.add_trajectories([coded_trajectory(0)])
    buf.flush()
    first = os.stat(directory / "trajectory_index.json").st_ino  # atomic writes replace the file
    buf.flush()
    buf.sample(10)
    buf.flush()
    assert os.stat(directory / "trajectory_index.json").st_ino == first
    buf.add_trajectories([coded_trajectory(1)])
    buf.flush()
    assert os.stat(directory / "trajectory_index.json").st_ino != first


def test_flushed_directory_reopens_whole_before_close(tmp_path):
    """The journal stays what reopening reads: a copy taken after flush() (as a crash leaves
    the directory) holds everything, once, with evictions applied."""
    directory = tmp_path / "auto"
    buf = TrackedBuffer(auto_save=True, auto_save_path=str(directory), max_trajectories=3)
    buf.add_trajectories([coded_trajectory(i) for i in range(2)])
    buf.flush()
    buf.add_trajectories([coded_trajectory(i) for i in range(2, 5)])  # evicts 0 and 1
    buf.flush()
    assert (directory / "trajectory_index.journal").exists()
    crashed = tmp_path / "crashed"
    shutil.copytree(directory, crashed)
    reopened = TrackedBuffer(auto_save=True, auto_save_path=str(crashed))
    assert reopened.size == 3
    assert {int(c) // 1000 for c in reopened.sample(500)["curr_obs"]["states"][:, 0]} == {2, 3, 4}
    loaded = TrajectoryReplayBuffer()
    loaded.load_checkpoint(str(directory))
    assert loaded.size == 3


def test_segment_flush_leaves_the_index_to_compaction(tmp_path):
    """RLinf cannot read segments: flush() writes no index there; close() compacts as before."""
    directory = tmp_path / "auto"
    buf = TrackedBuffer(auto_save=True, auto_save_path=str(directory), trajectory_format="segment")
    buf.add_trajectories([coded_trajectory(i) for i in range(3)])
    buf.flush()
    assert rlinf_view(directory)[1]["trajectory_id_list"] == []
    buf.close()
    assert rlinf_view(directory)[1]["trajectory_id_list"] == [0, 1, 2]


@pytest.mark.parametrize(("epochs", "num_envs", "logprobs", "fmt"), CASES)
def test_verify_accepts_rlinf_checkpoint_files_with_flat_columns(tmp_path, epochs, num_envs, logprobs, fmt):
    from rlinf_replay_buffer.tools.verify import verify_directory

    trajectories = [coded(i, epochs, num_envs, logprobs) for i in IDS]
    directory = write_rlinf_checkpoint(tmp_path / "ck", trajectories, fmt)
    report = verify_directory(str(directory))
    assert report.problems == [], report.problems
