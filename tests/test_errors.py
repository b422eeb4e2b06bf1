"""Every error case raises its specific class with a clear message and leaves the buffer unchanged.

"Unchanged" is checked against a *twin*: a buffer built identically (same seed, same calls) that
never saw the failing call. After the error both must agree on ``size``, ``total_samples``,
``trajectory_counter`` and on the next sampled batch (which also shows the failing call did not
consume random numbers).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TrackedBuffer as TrajectoryReplayBuffer
from conftest import coded_trajectory

from rlinf_replay_buffer import (
    BufferDirectoryError,
    BufferNotFoundError,
    CorruptBufferError,
    EmptyBufferError,
    InvalidArgumentError,
    InvalidTrajectoryError,
    ReplayBufferError,
    Trajectory,
)

SEED = 2024
KINDS = ("memory", "disk")


# -- helpers ---------------------------------------------------------------------------------


def new_buffer(kind: str, directory: Path, **kw) -> TrajectoryReplayBuffer:
    if kind == "memory":
        return TrajectoryReplayBuffer(seed=SEED, sample_window_size=0, **kw)
    return TrajectoryReplayBuffer(
        seed=SEED, sample_window_size=0, cache_size=1, auto_save=True, auto_save_path=str(directory), **kw
    )


def pair(
    kind: str, tmp_path: Path, trajectories: int = 3, **kw
) -> tuple[TrajectoryReplayBuffer, TrajectoryReplayBuffer]:
    """Two identically built buffers holding ``trajectories`` coded trajectories (two calls)."""
    bufs = []
    for tag in ("buf", "twin"):
        buf = new_buffer(kind, tmp_path / f"{kind}-{tag}", **kw)
        if trajectories:
            buf.add_trajectories([coded_trajectory(0, n=3, e=2, num_envs=2)])
            buf.add_trajectories([coded_trajectory(i, n=3, e=2, num_envs=2) for i in range(1, trajectories)])
        bufs.append(buf)
    return bufs[0], bufs[1]


def assert_batches_equal(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        if isinstance(value, dict):
            assert_batches_equal(got[key], value)
        else:
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


def assert_unchanged(buf: TrajectoryReplayBuffer, twin: TrajectoryReplayBuffer) -> None:
    assert buf.size == twin.size
    assert buf.total_samples == twin.total_samples
    assert buf.trajectory_counter == twin.trajectory_counter
    assert buf.get_stats()["window_transitions"] == twin.get_stats()["window_transitions"]
    if buf.auto_save:
        buf.flush()
        twin.flush()
        assert buf.get_stats()["files_written"] == twin.get_stats()["files_written"]
        assert (
            len(list(Path(buf.auto_save_path).glob("trajectory_[0-9]*"))) == twin.get_stats()["files_written"]
        )
    if twin.total_samples:
        for num in (1, 97):
            assert_batches_equal(buf.sample(num), twin.sample(num))
    else:
        with pytest.raises(EmptyBufferError):
            buf.sample(1)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def trajectory_file(directory: Path, tid: int) -> Path:
    (found,) = directory.glob(f"trajectory_{tid}_*")
    return found


def test_exception_hierarchy():
    assert issubclass(InvalidTrajectoryError, ValueError)
    assert issubclass(InvalidArgumentError, ValueError)
    assert issubclass(EmptyBufferError, RuntimeError)
    assert issubclass(BufferNotFoundError, FileNotFoundError)
    assert issubclass(CorruptBufferError, BufferDirectoryError)
    assert issubclass(BufferDirectoryError, OSError)
    for cls in (InvalidTrajectoryError, InvalidArgumentError, EmptyBufferError, BufferDirectoryError):
        assert issubclass(cls, ReplayBufferError)


# -- add_trajectories: malformed trajectories -------------------------------------------------


def _short_obs(t: Trajectory) -> None:
    t.curr_obs["states"] = t.curr_obs["states"][:-1]


def _long_actions(t: Trajectory) -> None:
    t.actions = torch.cat([t.actions, t.actions[:3]])  # 8 + 3 rows: no epoch split fits


def _short_actions(t: Trajectory) -> None:
    t.actions = t.actions[:5]


def _wrong_envs(t: Trajectory) -> None:
    t.next_obs["states"] = t.next_obs["states"][:, :1]


def _no_rewards(t: Trajectory) -> None:
    t.rewards = None


def _one_dim(t: Trajectory) -> None:
    t.prev_logprobs = torch.zeros(8)


def _numpy_object_value(t: Trajectory) -> None:
    t.rewards = np.zeros((6, 2, 1), dtype=object)


def _list_value(t: Trajectory) -> None:
    t.forward_inputs["action"] = [[0.0, 0.0]] * 8


def _unsafe_weights(t: Trajectory) -> None:
    t.model_weights_id = "../x"


MALFORMED = [
    (_short_obs, r"curr_obs\.states has 5 rows but rewards has 6"),
    (_long_actions, r"actions has 11 rows and rewards has 6"),
    (_short_actions, r"actions has 5 rows and rewards has 6"),
    (_wrong_envs, r"next_obs\.states has B=1 .*rewards has B=2"),
    (_no_rewards, r"rewards is missing"),
    (_one_dim, r"prev_logprobs has shape \(8,\)"),
    (_numpy_object_value, r"rewards is a NumPy array of dtype object, which has no torch dtype"),
    (_list_value, r"forward_inputs\.action is a list, not a torch\.Tensor"),
    (_unsafe_weights, r"model_weights_id '\.\./x' is not a safe id"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("damage,message", MALFORMED, ids=[m[0].__name__ for m in MALFORMED])
def test_malformed_trajectory_is_rejected_and_buffer_unchanged(tmp_path, kind, damage, message):
    buf, twin = pair(kind, tmp_path)
    bad = coded_trajectory(9, n=3, e=2, num_envs=2)
    damage(bad)
    with pytest.raises(InvalidTrajectoryError, match=message):
        buf.add_trajectories([bad])
    assert_unchanged(buf, twin)


@pytest.mark.parametrize("damage,message", MALFORMED, ids=[m[0].__name__ for m in MALFORMED])
def test_every_trajectory_error_names_the_trajectory_in_the_list(tmp_path, damage, message):
    """add_trajectories documents that its error "names the trajectory, the field and the fix"."""
    buf, twin = pair("memory", tmp_path)
    bad = coded_trajectory(9, n=3, e=2, num_envs=2)
    damage(bad)
    with pytest.raises(InvalidTrajectoryError, match="^trajectory 2: " + message):
        buf.add_trajectories([coded_trajectory(7, n=3, e=2), coded_trajectory(8, n=2, e=1), bad])
    assert_unchanged(buf, twin)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_trajectory_in_the_middle_rejects_the_whole_call(tmp_path, kind):
    buf, twin = pair(kind, tmp_path)
    bad = coded_trajectory(11, n=3, e=2)
    bad.rewards = bad.rewards[:, :1]
    good = [coded_trajectory(10, n=3, e=2), bad, coded_trajectory(12, n=3, e=2)]
    with pytest.raises(InvalidTrajectoryError, match=r"^trajectory 1: actions has B=2 .*rewards has B=1"):
        buf.add_trajectories(good)
    assert_unchanged(buf, twin)


@pytest.mark.parametrize("kind", KINDS)
def test_mismatched_rows_in_the_middle_reject_the_whole_call(tmp_path, kind):
    buf, twin = pair(kind, tmp_path)
    bad = coded_trajectory(11, n=3, e=2)
    _short_obs(bad)
    with pytest.raises(InvalidTrajectoryError, match=r"curr_obs\.states has 5 rows"):
        buf.add_trajectories([coded_trajectory(10, n=3, e=2), coded_trajectory(12, n=4, e=1), bad])
    assert_unchanged(buf, twin)


@pytest.mark.parametrize("bad", ["trajectory", "dict", "generator", "none", "tensor", "int"])
def test_add_trajectories_needs_a_list(tmp_path, bad):
    buf, twin = pair("memory", tmp_path)
    value = {
        "trajectory": coded_trajectory(5),
        "dict": coded_trajectory(5).to_dict(),
        "generator": (coded_trajectory(i) for i in range(2)),
        "none": None,
        "tensor": torch.zeros(3, 2, 1),
        "int": 3,
    }[bad]
    with pytest.raises(InvalidArgumentError, match="add_trajectories takes a list of Trajectory objects"):
        buf.add_trajectories(value)
    assert_unchanged(buf, twin)


def test_list_holding_a_non_trajectory_is_rejected(tmp_path):
    buf, twin = pair("memory", tmp_path)
    with pytest.raises(InvalidTrajectoryError, match="^trajectory 1: expected a Trajectory, got str"):
        buf.add_trajectories([coded_trajectory(5, n=3, e=2), "not a trajectory"])
    assert_unchanged(buf, twin)


def test_empty_list_adds_nothing(tmp_path):
    buf, twin = pair("memory", tmp_path)
    assert buf.add_trajectories([]) == []
    assert_unchanged(buf, twin)


# -- add_trajectories: schema changes --------------------------------------------------------


def _float64_rewards(t: Trajectory) -> None:
    t.rewards = t.rewards.double()


def _uint8_to_float_images(t: Trajectory) -> None:
    t.curr_obs["main_images"] = t.curr_obs["main_images"].float()


def _wider_states(t: Trajectory) -> None:
    t.curr_obs["states"] = torch.cat([t.curr_obs["states"], t.curr_obs["states"][..., :1]], dim=-1)


SCHEMA_CHANGES = [
    (_float64_rewards, r"rewards is torch\.float64 .*but the buffer holds torch\.float32"),
    (_uint8_to_float_images, r"curr_obs\.main_images is torch\.float32 .*buffer holds torch\.uint8"),
    (_wider_states, r"curr_obs\.states is torch\.float32 with per-step shape \[4\] .*\[3\]"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("change,message", SCHEMA_CHANGES, ids=[c[0].__name__ for c in SCHEMA_CHANGES])
def test_dtype_or_shape_change_between_calls_is_rejected(tmp_path, kind, change, message):
    buf, twin = pair(kind, tmp_path)
    other = coded_trajectory(7, n=3, e=2)
    change(other)
    with pytest.raises(InvalidTrajectoryError, match="^trajectory 0: " + message):
        buf.add_trajectories([other])
    assert_unchanged(buf, twin)


@pytest.mark.parametrize("change,message", SCHEMA_CHANGES, ids=[c[0].__name__ for c in SCHEMA_CHANGES])
def test_dtype_or_shape_change_within_a_call_is_rejected(tmp_path, change, message):
    buf, twin = pair("memory", tmp_path, trajectories=0)
    other = coded_trajectory(7, n=3, e=2)
    change(other)
    with pytest.raises(InvalidTrajectoryError, match="^trajectory 2: " + message):
        buf.add_trajectories([coded_trajectory(5, n=3, e=2), coded_trajectory(6, n=2, e=1), other])
    assert buf.schema is None
    assert_unchanged(buf, twin)


@pytest.mark.parametrize("kind", KINDS)
def test_key_set_change_between_calls_is_rejected(tmp_path, kind):
    buf, twin = pair(kind, tmp_path)
    with pytest.raises(InvalidTrajectoryError, match=r"fields differ .*missing \['prev_logprobs'\]"):
        buf.add_trajectories([coded_trajectory(7, n=3, e=2, logprobs=False)])
    extra = coded_trajectory(8, n=3, e=2)
    extra.prev_values = torch.zeros(8, 2, 1)
    with pytest.raises(InvalidTrajectoryError, match=r"fields differ .*unexpected \['prev_values'\]"):
        buf.add_trajectories([extra])
    obs = coded_trajectory(8, n=3, e=2)
    obs.next_obs["depth"] = torch.zeros(6, 2, 2)
    with pytest.raises(InvalidTrajectoryError, match=r"unexpected \['next_obs\.depth'\]"):
        buf.add_trajectories([obs])
    assert_unchanged(buf, twin)


def test_key_set_change_within_a_call_is_rejected(tmp_path):
    buf, twin = pair("memory", tmp_path, trajectories=0)
    with pytest.raises(InvalidTrajectoryError, match=r"^trajectory 1: fields differ .*unexpected"):
        buf.add_trajectories([coded_trajectory(0, logprobs=False), coded_trajectory(1)])
    assert buf.schema is None
    assert_unchanged(buf, twin)


def test_new_fields_accepted_after_clear(tmp_path):
    buf, _ = pair("memory", tmp_path)
    buf.clear()
    buf.add_trajectories([coded_trajectory(0, logprobs=False)])
    assert "prev_logprobs" not in buf.sample(4)


# -- NaN / inf -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_rejected_with_check_finite(tmp_path, kind, value):
    buf, twin = pair(kind, tmp_path, check_finite=True)
    bad = coded_trajectory(7, n=3, e=2)
    bad.rewards[2, 1, 0] = value
    with pytest.raises(InvalidTrajectoryError, match=r"^trajectory 1: rewards contains NaN or infinite"):
        buf.add_trajectories([coded_trajectory(6, n=3, e=2), bad])
    assert_unchanged(buf, twin)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_values_accepted_without_check_finite(tmp_path, value):
    buf, _ = pair("memory", tmp_path)
    bad = coded_trajectory(7, n=3, e=2, num_envs=2)
    bad.curr_obs["states"][:] = value
    size, total = buf.size, buf.total_samples
    assert buf.add_trajectories([bad]) == [3]
    assert buf.size == size + 1 and buf.total_samples == total + 12


# -- sample ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num", [0, -1, 1.5, "3", True, None, 2.0])
def test_num_chunks_must_be_a_positive_int(tmp_path, kind, num):
    buf, twin = pair(kind, tmp_path)
    with pytest.raises(InvalidArgumentError, match=r"num_chunks must be an int >= 1, got"):
        buf.sample(num)
    assert_unchanged(buf, twin)


def test_num_chunks_accepts_numpy_ints(tmp_path):
    buf, _ = pair("memory", tmp_path)
    assert buf.sample(np.int64(5))["rewards"].shape[0] == 5


@pytest.mark.parametrize("kind", KINDS)
def test_sampling_an_empty_buffer_raises_empty_buffer_error(tmp_path, kind):
    buf, twin = pair(kind, tmp_path, trajectories=0)
    for num in (1, 100):
        with pytest.raises(EmptyBufferError, match="the sampling window holds no transition"):
            buf.sample(num)
    assert not buf.is_ready()
    # the failed calls drew no random numbers: both buffers sample alike once filled
    for b in (buf, twin):
        b.add_trajectories([coded_trajectory(i, n=3, e=2) for i in range(3)])
    assert_unchanged(buf, twin)


def test_sampling_after_clear_raises_empty_buffer_error(tmp_path):
    buf, _ = pair("memory", tmp_path)
    buf.clear()
    with pytest.raises(EmptyBufferError, match="holds no transition"):
        buf.sample(8)


# -- constructor -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["npz", "PT", "", None, "json"])
def test_trajectory_format_must_be_pt_pkl_or_segment(fmt):
    with pytest.raises(InvalidArgumentError, match="trajectory_format must be 'pt', 'pkl' or 'segment'"):
        TrajectoryReplayBuffer(trajectory_format=fmt)


def test_auto_save_needs_a_path(tmp_path):
    with pytest.raises(InvalidArgumentError, match="auto_save=True needs auto_save_path"):
        TrajectoryReplayBuffer(auto_save=True)
    with pytest.raises(InvalidArgumentError, match="auto_save=True needs auto_save_path"):
        TrajectoryReplayBuffer(auto_save=True, auto_save_path="")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"seed": -1}, "seed must be an int >= 0"),
        ({"seed": 1.5}, "seed must be an int >= 0"),
        ({"cache_size": -1}, "cache_size must be an int >= 0"),
        ({"sample_window_size": -3}, "sample_window_size must be an int >= 0"),
        ({"enable_cache": "yes"}, "enable_cache must be True or False"),
        ({"auto_save": 1}, "auto_save must be True or False"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        TrajectoryReplayBuffer(**kwargs)


def test_auto_save_path_that_is_a_file_is_rejected(tmp_path):
    target = tmp_path / "a-file"
    target.write_text("x")
    with pytest.raises(BufferDirectoryError, match="exists and is not a directory"):
        TrajectoryReplayBuffer(auto_save=True, auto_save_path=str(target))


def test_auto_save_path_with_corrupt_metadata_is_rejected(tmp_path, fixture_dir):
    (fixture_dir / "metadata.json").write_text("{not json")
    with pytest.raises(CorruptBufferError, match="metadata.json is not valid JSON"):
        TrajectoryReplayBuffer(auto_save=True, auto_save_path=str(fixture_dir))


# -- load_checkpoint: arguments and paths ----------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"world_size": 0}, r"world_size must be an int >= 1, got 0"),
        ({"world_size": -2}, r"world_size must be an int >= 1, got -2"),
        ({"world_size": 2.0}, r"world_size must be an int >= 1"),
        ({"local_rank": 4, "world_size": 4}, r"local_rank 4 is out of range for world_size 4"),
        ({"local_rank": 9, "world_size": 2}, r"local_rank 9 is out of range for world_size 2"),
        ({"local_rank": -1, "world_size": 2}, r"local_rank must be an int >= 0, got -1"),
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_load_rejects_bad_rank_or_world_size(tmp_path, fixture_dir, kind, kwargs, message):
    buf, twin = pair(kind, tmp_path)
    with pytest.raises(InvalidArgumentError, match=message):
        buf.load_checkpoint(str(fixture_dir), is_distributed=True, **kwargs)
    assert_unchanged(buf, twin)


@pytest.mark.parametrize("kind", KINDS)
def test_load_from_a_missing_path_raises_not_found(tmp_path, kind):
    buf, twin = pair(kind, tmp_path)
    missing = tmp_path / "does" / "not" / "exist"
    with pytest.raises(BufferNotFoundError, match="no such directory"):
        buf.load_checkpoint(str(missing))
    with pytest.raises(FileNotFoundError):  # also catchable as the built-in
        buf.load_checkpoint(str(missing))
    assert not missing.exists()
    assert_unchanged(buf, twin)


@pytest.mark.parametrize("kind", KINDS)
def test_load_from_a_file_raises_directory_error(tmp_path, kind):
    buf, twin = pair(kind, tmp_path)
    target = tmp_path / "metadata.json"
    target.write_text("{}")
    with pytest.raises(BufferDirectoryError, match="not a directory"):
        buf.load_checkpoint(str(target))
    assert_unchanged(buf, twin)


def test_load_from_a_directory_without_metadata_raises_not_found(tmp_path):
    buf, twin = pair("memory", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BufferNotFoundError, match="no metadata.json; this is not a replay buffer directory"):
        buf.load_checkpoint(str(tmp_path / "empty"))
    assert_unchanged(buf, twin)


# -- load_checkpoint: corrupt directories ----------------------------------------------------


SOURCES = ("rlinf-pt", "own-pt", "own-pkl")


def source_directory(source: str, tmp_path: Path, fixture_dir: Path) -> Path:
    """A loadable directory: RLinf's fixture, or a checkpoint this library saved."""
    if source == "rlinf-pt":
        return fixture_dir
    return _saved_checkpoint(tmp_path, source.split("-")[1], trajectories=3)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["metadata.json", "trajectory_index.json"])
@pytest.mark.parametrize("source", SOURCES)
def test_load_with_invalid_json_raises_corrupt(tmp_path, fixture_dir, source, kind, name):
    directory = source_directory(source, tmp_path, fixture_dir)
    buf, twin = pair(kind, tmp_path)
    (directory / name).write_text('{"trajectory_format": "pt", ')
    with pytest.raises(CorruptBufferError, match=rf"{name.replace('.', '[.]')}: .*is not valid JSON"):
        buf.load_checkpoint(str(directory))
    assert_unchanged(buf, twin)


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("metadata.json", "[1, 2]", "expected a JSON object"),
        (
            "metadata.json",
            '{"trajectory_format": "npz"}',
            "trajectory_format 'npz' is not 'pt', 'pkl' or 'segment'",
        ),
        ("trajectory_index.json", '{"trajectory_index": []}', "expected {'trajectory_index'"),
        (
            "trajectory_index.json",
            '{"trajectory_index": {}, "trajectory_id_list": [0]}',
            "trajectory 0 is listed but has no index entry",
        ),
    ],
)
def test_load_with_malformed_json_content_raises_corrupt(tmp_path, fixture_dir, name, content, message):
    buf, twin = pair("memory", tmp_path)
    (fixture_dir / name).write_text(content)
    with pytest.raises(CorruptBufferError, match=message.replace("[", r"\[").replace("{", r"\{")):
        buf.load_checkpoint(str(fixture_dir))
    assert_unchanged(buf, twin)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("source", SOURCES)
def test_load_with_a_listed_file_missing_raises_not_found(tmp_path, fixture_dir, source, kind):
    directory = source_directory(source, tmp_path, fixture_dir)
    buf, twin = pair(kind, tmp_path)
    for tid in (1, 0):  # an old file, then also the oldest
        trajectory_file(directory, tid).unlink()
        with pytest.raises(BufferNotFoundError, match=rf"lists trajectory {tid} but its file .* is missing"):
            buf.load_checkpoint(str(directory))
        assert_unchanged(buf, twin)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tid", [0, 2])
def test_load_of_rlinf_directory_with_truncated_file_raises_corrupt(tmp_path, fixture_dir, kind, tid):
    """RLinf's directories are opened file by file at load: the truncated file is caught there."""
    buf, twin = pair(kind, tmp_path)
    truncate(trajectory_file(fixture_dir, tid))
    with pytest.raises(CorruptBufferError, match=rf"trajectory_{tid}_.*not a readable torch file"):
        buf.load_checkpoint(str(fixture_dir))
    assert_unchanged(buf, twin)


def _saved_checkpoint(tmp_path: Path, fmt: str, trajectories: int = 4) -> Path:
    src = TrajectoryReplayBuffer(seed=1, sample_window_size=0, trajectory_format=fmt)
    src.add_trajectories([coded_trajectory(100 + i, n=3, e=2) for i in range(trajectories)])
    ckpt = tmp_path / f"ckpt-{fmt}"
    src.save_checkpoint(str(ckpt))
    return ckpt


READABLE_FORMAT = {"pt": "not a readable torch file", "pkl": "not a readable trajectory pickle"}
#: a damaged file is caught by its checksum first (every file this library writes has one), or
#: by its parser (files without a checksum)
READABLE = {fmt: f"(?:fails its checksum|{text})" for fmt, text in READABLE_FORMAT.items()}


@pytest.mark.parametrize("fmt", ["pt", "pkl"])
@pytest.mark.parametrize("tid", [0, 3])
def test_load_into_memory_of_checkpoint_with_truncated_file_leaves_buffer_unchanged(tmp_path, fmt, tid):
    """An in-memory buffer reads every file at load; a truncated one must fail the whole load.

    The load's docstring promises "the buffer is left as it was".
    """
    ckpt = _saved_checkpoint(tmp_path, fmt)
    truncate(trajectory_file(ckpt, tid))
    buf, twin = pair("memory", tmp_path)
    with pytest.raises(CorruptBufferError, match=rf"trajectory_{tid}_.*{READABLE[fmt]}"):
        buf.load_checkpoint(str(ckpt))
    assert_unchanged(buf, twin)


@pytest.mark.parametrize("fmt", ["pt", "pkl"])
def test_disk_backed_load_of_truncated_file_fails_at_load_or_sample(tmp_path, fmt):
    """A disk-backed buffer may read an old file only when a row of it is sampled."""
    ckpt = _saved_checkpoint(tmp_path, fmt)
    truncate(trajectory_file(ckpt, 0))
    buf, twin = pair("disk", tmp_path)
    try:
        buf.load_checkpoint(str(ckpt))
    except CorruptBufferError as exc:
        assert re.search(rf"trajectory_0_.*{READABLE[fmt]}", str(exc))
        assert_unchanged(buf, twin)
        return
    assert buf.size == 4
    with pytest.raises(CorruptBufferError, match=rf"trajectory_0_.*{READABLE[fmt]}"):
        for _ in range(50):  # a quarter of the transitions are in the truncated file
            buf.sample(64)


@pytest.mark.parametrize("fmt", ["pt", "pkl"])
def test_zero_filled_trajectory_file_is_reported_corrupt_not_unsafe(tmp_path, fmt):
    """A file of zeros (what a crash can leave behind) is damaged, it does not try to run code."""
    ckpt = _saved_checkpoint(tmp_path, fmt, trajectories=2)
    path = trajectory_file(ckpt, 1)
    path.write_bytes(bytes(path.stat().st_size))
    buf, twin = pair("memory", tmp_path)
    with pytest.raises(CorruptBufferError, match=rf"trajectory_1_.*{READABLE[fmt]}"):
        buf.load_checkpoint(str(ckpt))
    assert_unchanged(buf, twin)


@pytest.mark.parametrize("fmt", ["pt", "pkl"])
def test_random_bytes_trajectory_file_raises_corrupt(tmp_path, fmt):
    ckpt = _saved_checkpoint(tmp_path, fmt, trajectories=2)
    path = trajectory_file(ckpt, 1)
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    buf, twin = pair("memory", tmp_path)
    with pytest.raises(CorruptBufferError, match="trajectory_1_"):
        buf.load_checkpoint(str(ckpt))
    assert_unchanged(buf, twin)


def test_failed_load_keeps_buffer_usable_for_adding(tmp_path, fixture_dir):
    buf, twin = pair("memory", tmp_path)
    shutil.rmtree(fixture_dir)
    with pytest.raises(BufferNotFoundError):
        buf.load_checkpoint(str(fixture_dir))
    for b in (buf, twin):
        assert b.add_trajectories([coded_trajectory(50, n=3, e=2)]) == [3]
    assert_unchanged(buf, twin)


def test_metadata_and_index_content_is_untouched_by_a_failed_load(tmp_path, fixture_dir):
    before = {p.name: p.read_bytes() for p in fixture_dir.iterdir()}
    truncate(trajectory_file(fixture_dir, 1))
    before[trajectory_file(fixture_dir, 1).name] = trajectory_file(fixture_dir, 1).read_bytes()
    buf = TrajectoryReplayBuffer(seed=SEED)
    with pytest.raises(CorruptBufferError):
        buf.load_checkpoint(str(fixture_dir))
    assert {p.name: p.read_bytes() for p in fixture_dir.iterdir()} == before
    assert json.loads((fixture_dir / "metadata.json").read_text())["size"] == 3


def _segment_checkpoint(tmp_path: Path) -> Path:
    src = TrajectoryReplayBuffer(seed=1, sample_window_size=0, trajectory_format="segment")
    src.add_trajectories([coded_trajectory(100 + i, n=3, e=2) for i in range(3)])
    ckpt = tmp_path / "ckpt-segment"
    src.save_checkpoint(str(ckpt))
    return ckpt


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("kind", KINDS)
def test_metadata_claiming_segments_for_a_pt_directory_is_refused(tmp_path, kind):
    ckpt = _saved_checkpoint(tmp_path, "pt")
    _edit_json(ckpt / "metadata.json", lambda m: m.update(trajectory_format="segment"))
    buf, twin = pair(kind, tmp_path)
    with pytest.raises(CorruptBufferError, match=r"names segment 'trajectory_0_.*' \(expected seg-NNNNNN\)"):
        buf.load_checkpoint(str(ckpt))
    assert_unchanged(buf, twin)


@pytest.mark.parametrize("kind", KINDS)
def test_metadata_fields_disagreeing_with_the_segments_are_refused(tmp_path, kind):
    ckpt = _segment_checkpoint(tmp_path)
    _edit_json(ckpt / "metadata.json", lambda m: m["fields"]["rewards"].update(dtype="float64"))
    buf, twin = pair(kind, tmp_path)
    with pytest.raises(CorruptBufferError, match="its columns do not match the buffer's fields"):
        buf.load_checkpoint(str(ckpt))
        for _ in range(20):  # a disk-backed buffer reads the segment when sampling
            buf.sample(16)
    if kind == "memory":
        assert_unchanged(buf, twin)


@pytest.mark.parametrize("kind", KINDS)
def test_index_entry_disagreeing_with_its_file_is_refused(tmp_path, kind):
    ckpt = _saved_checkpoint(tmp_path, "pt")

    def more_steps(index: dict) -> None:
        entry = index["trajectory_index"]["1"]
        entry.pop("crc32")  # the shape check, not the checksum, must catch it
        entry["num_steps"] += 2
        entry["shape"][0] += 2
        entry["num_samples"] = entry["num_steps"] * entry["num_envs"]

    _edit_json(ckpt / "trajectory_index.json", more_steps)
    buf, twin = pair(kind, tmp_path)
    with pytest.raises(CorruptBufferError, match="do not have the 8 rows the index records"):
        buf.load_checkpoint(str(ckpt))
        for _ in range(30):
            buf.sample(16)
    if kind == "memory":
        assert_unchanged(buf, twin)
