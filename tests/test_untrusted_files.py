"""Loading someone else's buffer directory never runs code nor reaches outside the directory."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import zlib

import pytest
import torch
from conftest import coded_trajectory

from rlinf_replay_buffer import CorruptTrajectoryError, TrajectoryReplayBuffer, UnsafeFileError
from rlinf_replay_buffer.formats import pkl, pt

MARKER = "rlinf_exploit_ran"


class Exploit:
    """Unpickling this calls os.system to create a marker file."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def checkpoint(tmp_path, fmt="pt", n=2):
    buf = TrajectoryReplayBuffer(sample_window_size=0, trajectory_format=fmt)
    buf.add_trajectories([coded_trajectory(i) for i in range(n)])
    path = tmp_path / f"ckpt-{fmt}"
    buf.save_checkpoint(str(path))
    return path


def traj_file(path, tid=0):
    return next(p for p in path.iterdir() if p.name.startswith(f"trajectory_{tid}_"))


def forge_checksum(path, tid):
    """What an attacker who writes the directory does: give the planted file a matching crc32,
    so the file's contents, not its checksum, must be what stops it."""
    index = json.loads((path / "trajectory_index.json").read_text())
    index["trajectory_index"][str(tid)]["crc32"] = zlib.crc32(traj_file(path, tid).read_bytes())
    (path / "trajectory_index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("forged", [True, False], ids=["forged-crc", "stale-crc"])
@pytest.mark.parametrize("fmt", ["pt", "pkl"])
def test_a_trajectory_file_that_would_run_code_is_refused(tmp_path, fmt, forged):
    path = checkpoint(tmp_path, fmt)
    marker = tmp_path / MARKER
    victim = traj_file(path, 0)
    payload = {"rewards": Exploit(str(marker))}
    if fmt == "pt":
        torch.save(payload, victim)
    else:
        victim.write_bytes(pickle.dumps(payload))
    if forged:
        forge_checksum(path, 0)
    buf = TrajectoryReplayBuffer(sample_window_size=0)
    if forged:  # the restricted reader refuses the code
        with pytest.raises(UnsafeFileError, match="refused to load"):
            buf.load_checkpoint(str(path))
    else:  # the checksum refuses the file before it is parsed
        with pytest.raises(CorruptTrajectoryError, match="trajectory 0 fails its checksum"):
            buf.load_checkpoint(str(path))
    assert not marker.exists()
    assert buf.size == 0


@pytest.mark.parametrize("reader", [pt.read, pkl.read])
def test_readers_refuse_code_directly(tmp_path, reader):
    marker = tmp_path / MARKER
    f = tmp_path / "evil"
    if reader is pt.read:
        torch.save({"x": Exploit(str(marker))}, f)
    else:
        f.write_bytes(pickle.dumps({"x": Exploit(str(marker))}))
    with pytest.raises(UnsafeFileError):
        reader(str(f))
    assert not marker.exists()


def test_metadata_switching_to_pickle_still_uses_the_restricted_reader(tmp_path):
    path = checkpoint(tmp_path, "pkl")
    marker = tmp_path / MARKER
    meta = json.loads((path / "metadata.json").read_text())
    meta["trajectory_format"] = "pkl"
    (path / "metadata.json").write_text(json.dumps(meta))
    traj_file(path, 1).write_bytes(pickle.dumps({"rewards": Exploit(str(marker))}))
    forge_checksum(path, 1)
    with pytest.raises(UnsafeFileError):
        TrajectoryReplayBuffer(sample_window_size=0).load_checkpoint(str(path))
    assert not marker.exists()


def test_index_naming_a_file_outside_the_directory_is_refused(tmp_path):
    path = checkpoint(tmp_path)
    outside = tmp_path / "secret.pt"
    shutil.copy(traj_file(path, 0), outside)
    index = json.loads((path / "trajectory_index.json").read_text())
    index["trajectory_index"]["0"]["file"] = "../secret.pt"
    (path / "trajectory_index.json").write_text(json.dumps(index))
    with pytest.raises(UnsafeFileError, match="not a trajectory file"):
        TrajectoryReplayBuffer().load_checkpoint(str(path))


def test_path_characters_in_model_weights_id_are_refused(tmp_path):
    path = checkpoint(tmp_path)
    index = json.loads((path / "trajectory_index.json").read_text())
    index["trajectory_index"]["1"]["model_weights_uuid"] = "../../etc"
    (path / "trajectory_index.json").write_text(json.dumps(index))
    with pytest.raises(UnsafeFileError, match="not a safe id"):
        TrajectoryReplayBuffer().load_checkpoint(str(path))


def test_symlink_pointing_out_of_the_directory_is_refused(tmp_path):
    path = checkpoint(tmp_path)
    victim = traj_file(path, 0)
    outside = tmp_path / "elsewhere.pt"
    shutil.move(victim, outside)
    victim.symlink_to(outside)
    with pytest.raises(UnsafeFileError, match="outside the buffer directory"):
        TrajectoryReplayBuffer(sample_window_size=0).load_checkpoint(str(path))


def test_saving_a_loaded_foreign_buffer_writes_only_inside_the_destination(tmp_path, fixture_dir):
    buf = TrajectoryReplayBuffer(sample_window_size=0)
    buf.load_checkpoint(str(fixture_dir))
    before = set(os.listdir(tmp_path))
    buf.save_checkpoint(str(tmp_path / "out"))
    assert set(os.listdir(tmp_path)) - before == {"out"}
