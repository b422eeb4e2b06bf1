"""Every code block of the seed tutorial (/work/shared/seed/README.md), run as written.

Only the ``/path/to/...`` placeholders are replaced by temporary directories. The command-line
block is run as a subprocess from the repository root, exactly as the tutorial spells it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_aligned, coded_trajectory

from rlinf.data.replay_buffer import Trajectory, TrajectoryReplayBuffer, main
from rlinf_replay_buffer.cli import iter_leaves

REPO = Path(__file__).resolve().parents[1]
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
SEED_NAME = re.compile(rf"^trajectory_(\d+)_({UUID})_(\d+)\.(pt|pkl)$")
LEAF_LINE = re.compile(r"^\s+(\S+)\s+shape=\[([0-9, ]*)\]\s+dtype=(\S+)\s*$")


def leaves(batch: dict) -> dict[str, torch.Tensor]:
    return dict(iter_leaves(batch))


def trajectory_files(directory: Path) -> list[str]:
    """Names of the trajectory files (``trajectory_*.pt|pkl``) of a directory."""
    return sorted(
        p.name
        for p in directory.iterdir()
        if p.name.startswith("trajectory_") and p.suffix in (".pt", ".pkl")
    )


# -- the Python blocks --------------------------------------------------------------------------
def quick_start(tmp_path: Path, trajectory_format: str = "pt") -> TrajectoryReplayBuffer:
    """The quick-start block, with ``auto_save_path`` in ``tmp_path``."""
    buffer = TrajectoryReplayBuffer(
        seed=1234,
        enable_cache=True,
        cache_size=5,
        sample_window_size=100,
        auto_save=True,
        auto_save_path=str(tmp_path / "buffer"),
        trajectory_format=trajectory_format,
    )
    return buffer


def test_tutorial_blocks_in_order(tmp_path):
    # Quick start
    buffer = quick_start(tmp_path)

    # Writing trajectories: trajectories is a List[Trajectory]
    trajectories = [coded_trajectory(i) for i in range(8)]
    assert all(isinstance(t, Trajectory) for t in trajectories)
    buffer.add_trajectories(trajectories)
    assert buffer.size == 8 and buffer.trajectory_counter == 8

    # Sampling for training
    batch = buffer.sample(num_chunks=256)
    # batch shape: [num_chunks, ...]
    for name, tensor in leaves(batch).items():
        assert tensor.shape[0] == 256, name
    assert set(batch) >= {"actions", "rewards", "dones", "curr_obs", "next_obs", "forward_inputs"}
    assert isinstance(batch["curr_obs"], dict) and isinstance(batch["forward_inputs"], dict)
    assert batch["curr_obs"]["main_images"].dtype == torch.uint8
    assert "max_episode_length" not in batch and "model_weights_id" not in batch
    assert_aligned(batch, n=4)

    # Save and load
    buffer.save_checkpoint(str(tmp_path / "ckpt"))

    buffer.load_checkpoint(
        load_path=str(tmp_path / "ckpt"),
        is_distributed=True,
        local_rank=0,
        world_size=4,
    )
    assert buffer.size == 2  # positions 0 and 4 of 8
    batch = buffer.sample(num_chunks=256)
    codes = {int(c) // 1000 for c in batch["curr_obs"]["states"][:, 0].tolist()}
    assert codes == {0, 4}

    # Releasing resources and resetting
    buffer.close()  # stop the async save thread
    buffer.clear()  # clear the index and counters
    buffer.clear_cache()  # clear the cache and stop the thread
    assert buffer.size == 0 and buffer.total_samples == 0


@pytest.mark.parametrize("trajectory_format", ["pt", "pkl"])
def test_documented_file_naming_in_auto_save_and_checkpoint_dirs(tmp_path, trajectory_format):
    buffer = quick_start(tmp_path, trajectory_format)
    weights = "0f8fad5b-d9cb-469f-a165-70867728950e"
    buffer.add_trajectories(
        [coded_trajectory(i, weights_id=weights, model_update_count=10 + i) for i in range(3)]
        + [coded_trajectory(3)]  # uuid and update count derived from its versions
    )
    buffer.save_checkpoint(str(tmp_path / "ckpt"))
    buffer.close()
    for directory in (tmp_path / "buffer", tmp_path / "ckpt"):
        names = trajectory_files(directory)
        assert len(names) == 4, names
        for name in names:
            m = SEED_NAME.match(name)
            assert m, f"{directory.name}/{name} does not follow trajectory_{{id}}_{{uuid}}_{{count}}.{{fmt}}"
            assert m.group(4) == trajectory_format
        for i in range(3):
            assert f"trajectory_{i}_{weights}_{10 + i}.{trajectory_format}" in names
        assert sorted(int(SEED_NAME.match(n).group(1)) for n in names) == [0, 1, 2, 3]


def test_common_parameters_as_documented(tmp_path):
    # sample_window_size: only the most recent N trajectories; 0 means all of them
    recent = TrajectoryReplayBuffer(sample_window_size=2)
    everything = TrajectoryReplayBuffer(sample_window_size=0)
    for i in range(5):
        recent.add_trajectories([coded_trajectory(i)])
        everything.add_trajectories([coded_trajectory(i)])
    seen = {int(c) // 1000 for c in recent.sample(2000)["curr_obs"]["states"][:, 0].tolist()}
    assert seen == {3, 4}
    seen = {int(c) // 1000 for c in everything.sample(2000)["curr_obs"]["states"][:, 0].tolist()}
    assert seen == {0, 1, 2, 3, 4}
    # auto_save=False: only cached, written when a checkpoint is saved
    memory = TrajectoryReplayBuffer(auto_save=False, auto_save_path=str(tmp_path / "unused"))
    memory.add_trajectories([coded_trajectory(0)])
    memory.close()
    assert not (tmp_path / "unused").exists()
    memory.save_checkpoint(str(tmp_path / "ckpt"))
    assert len(trajectory_files(tmp_path / "ckpt")) == 1
    # trajectory_format: pt is the default
    assert TrajectoryReplayBuffer().trajectory_format == "pt"


# -- the command line ---------------------------------------------------------------------------
def expected_leaves_of_file(path: Path, num_chunks: int) -> dict[str, tuple[list[int], str]]:
    """``{"curr_obs.states": ([num_chunks, ...], "torch.float32"), ...}`` from a trajectory file."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    out = {}
    for key, value in data.items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, tensor in items:
            if isinstance(tensor, torch.Tensor):
                name = key if sub is None else f"{key}.{sub}"
                out[name] = ([num_chunks, *tensor.shape[2:]], str(tensor.dtype))
    return out


def parse_leaf_lines(stdout: str) -> dict[str, tuple[list[int], str]]:
    out = {}
    for line in stdout.splitlines():
        m = LEAF_LINE.match(line)
        if m:
            shape = [int(d) for d in m.group(2).split(",") if d.strip()]
            out[m.group(1)] = (shape, m.group(3))
    return out


def first_file(directory: Path) -> Path:
    names = [p for p in sorted(directory.iterdir()) if p.suffix == ".pt" and p.name.startswith("trajectory_")]
    return names[0]


@pytest.fixture
def own_checkpoint(tmp_path) -> Path:
    buffer = TrajectoryReplayBuffer(seed=3)
    buffer.add_trajectories([coded_trajectory(i) for i in range(4)])
    buffer.save_checkpoint(str(tmp_path / "ckpt"))
    return tmp_path / "ckpt"


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )


SEED_ARGS = ["--num-chunks", "1024", "--cache-size", "10", "--enable-cache"]


@pytest.mark.parametrize("source", ["own_checkpoint", "fixture_dir"])
def test_cli_as_written_in_the_tutorial(request, source):
    directory = request.getfixturevalue(source)
    proc = run_cli(["rlinf/data/replay_buffer.py", "--load-path", str(directory), *SEED_ARGS])
    assert proc.returncode == 0, proc.stderr
    printed = parse_leaf_lines(proc.stdout)
    expected = expected_leaves_of_file(first_file(directory), 1024)
    assert printed == expected
    assert "curr_obs.states" in printed and "next_obs.main_images" in printed
    assert printed["curr_obs.main_images"][1] == "torch.uint8"


def test_cli_as_a_module(fixture_dir):
    proc = run_cli(["-m", "rlinf.data.replay_buffer", "--load-path", str(fixture_dir), *SEED_ARGS])
    assert proc.returncode == 0, proc.stderr
    assert parse_leaf_lines(proc.stdout) == expected_leaves_of_file(first_file(fixture_dir), 1024)


def test_cli_missing_path_subprocess(tmp_path):
    proc = run_cli(["rlinf/data/replay_buffer.py", "--load-path", str(tmp_path / "nope"), *SEED_ARGS])
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_main_in_process(own_checkpoint, capsys):
    assert main(["--load-path", str(own_checkpoint), *SEED_ARGS]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert parse_leaf_lines(out) == expected_leaves_of_file(first_file(own_checkpoint), 1024)
    assert parse_leaf_lines(out)["curr_obs.env_ids"] == ([1024, 1], "torch.int64")


@pytest.mark.parametrize("ending", ["close", "flush"])
def test_cli_main_on_an_auto_save_directory(tmp_path, capsys, ending):
    buffer = quick_start(tmp_path)
    buffer.add_trajectories([coded_trajectory(i) for i in range(3)])
    getattr(buffer, ending)()
    assert main(["--load-path", str(tmp_path / "buffer"), *SEED_ARGS]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "loaded 3 trajectories" in out
    printed = parse_leaf_lines(out)
    assert printed == expected_leaves_of_file(first_file(tmp_path / "buffer"), 1024)
    buffer.close()


def corrupt_metadata(directory: Path) -> None:
    (directory / "metadata.json").write_text('{"trajectory_format": "pt", "size": ')


def truncate_a_file(directory: Path) -> None:
    path = first_file(directory)
    path.write_bytes(path.read_bytes()[:100])


def drop_a_file(directory: Path) -> None:
    first_file(directory).unlink()


def wrong_format(directory: Path) -> None:
    meta = json.loads((directory / "metadata.json").read_text())
    meta["trajectory_format"] = "hdf5"
    (directory / "metadata.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "breakage",
    [None, corrupt_metadata, truncate_a_file, drop_a_file, wrong_format],
    ids=["missing_path", "corrupt_metadata", "truncated_file", "missing_file", "unknown_format"],
)
@pytest.mark.parametrize("source", ["own_checkpoint", "fixture_dir"])
def test_cli_main_errors_are_one_line(request, tmp_path, capsys, breakage, source):
    directory = request.getfixturevalue(source)
    if breakage is None:
        directory = tmp_path / "does-not-exist"
    else:
        breakage(directory)
    status = main(["--load-path", str(directory), *SEED_ARGS])
    out, err = capsys.readouterr()
    assert status != 0
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error:")
    assert out == ""
