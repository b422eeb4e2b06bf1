"""The merge/split tool: interleaving, renumbering, moves that never leave a source unloadable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, assert_aligned, coded_trajectory, data_files

from rlinf_replay_buffer import (
    BufferDirectoryError,
    InvalidArgumentError,
    TrajectoryReplayBuffer,
    formats,
)
from rlinf_replay_buffer.tools import merge_or_split
from rlinf_replay_buffer.tools.merge_split_cli import main

TOOL = REPO / "toolkits" / "replay_buffer" / "merge_or_split_replay_buffer.py"


def make_ranks(root: Path, counts: list[int], fmt: str = "pt") -> Path:
    """``root/rank_r`` holds ``counts[r]`` coded trajectories numbered ``100 * r + i``."""
    for r, count in enumerate(counts):
        buf = TrajectoryReplayBuffer(sample_window_size=0, trajectory_format=fmt)
        buf.add_trajectories([coded_trajectory(100 * r + i, n=3, e=2) for i in range(count)])
        buf.save_checkpoint(str(root / f"rank_{r}"))
    return root


def codes_by_id(path: Path) -> dict[int, int]:
    """trajectory id -> the trajectory number encoded in its data."""
    index = json.loads((path / "trajectory_index.json").read_text())
    out = {}
    for tid in index["trajectory_id_list"]:
        entry = index["trajectory_index"][str(tid)]
        name = f"trajectory_{tid}_{entry['model_weights_id']}.{path.name.split('.')[-1]}"
        files = [f for f in os.listdir(path) if f.startswith(f"trajectory_{tid}_")]
        assert len(files) == 1, files
        data = formats.read(str(path / files[0]), files[0].rsplit(".", 1)[1])
        out[tid] = int(data["rewards"][0, 0, 0].item()) // 1000
        assert name  # the RLinf name rule is exercised in test_output_is_readable_by_rlinf_rule
    return out


def test_merge_interleaves_ranks_by_original_id_and_renumbers(tmp_path):
    src = make_ranks(tmp_path / "buf", [3, 2, 3])
    result = merge_or_split(str(src), str(tmp_path / "merged"), copy=True)
    assert result.trajectories == 8
    got = codes_by_id(tmp_path / "merged")
    # rank_0 id0, rank_1 id0, rank_2 id0, rank_0 id1, rank_1 id1, rank_2 id1, rank_0 id2, rank_2 id2
    assert [got[i] for i in range(8)] == [0, 100, 200, 1, 101, 201, 2, 202]


def test_split_takes_the_first_n_trajectories(tmp_path):
    src = make_ranks(tmp_path / "buf", [5])
    merge_or_split(str(src / "rank_0"), str(tmp_path / "split"), split_count=3, copy=True)
    assert codes_by_id(tmp_path / "split") == {0: 0, 1: 1, 2: 2}


def test_merged_output_loads_and_samples_aligned_rows(tmp_path):
    src = make_ranks(tmp_path / "buf", [2, 4])
    merge_or_split(str(src), str(tmp_path / "merged"), copy=True)
    buf = TrajectoryReplayBuffer(sample_window_size=0)
    buf.load_checkpoint(str(tmp_path / "merged"))
    assert buf.size == 6 and buf.trajectory_counter == 6
    assert_aligned(buf.sample(2000), n=3)


def test_output_is_readable_by_rlinf_rule(tmp_path):
    """RLinf opens trajectory_{id}_{model_weights_id}.{fmt} from the index entry."""
    src = make_ranks(tmp_path / "buf", [2, 2], fmt="pkl")
    merge_or_split(str(src), str(tmp_path / "merged"), copy=True)
    meta = json.loads((tmp_path / "merged" / "metadata.json").read_text())
    index = json.loads((tmp_path / "merged" / "trajectory_index.json").read_text())
    assert meta["trajectory_format"] == "pkl" and meta["size"] == 4
    for tid in index["trajectory_id_list"]:
        entry = index["trajectory_index"][str(tid)]
        assert (tmp_path / "merged" / f"trajectory_{tid}_{entry['model_weights_id']}.pkl").is_file()


def test_copy_leaves_sources_untouched(tmp_path):
    src = make_ranks(tmp_path / "buf", [2, 2])
    before = data_files(src)
    merge_or_split(str(src), str(tmp_path / "merged"), copy=True)
    assert data_files(src) == before


def test_move_empties_sources_and_keeps_the_data(tmp_path):
    src = make_ranks(tmp_path / "buf", [2, 3])
    merge_or_split(str(src), str(tmp_path / "merged"))
    assert not (src / "rank_0").exists() and not (src / "rank_1").exists()
    buf = TrajectoryReplayBuffer(sample_window_size=0)
    buf.load_checkpoint(str(tmp_path / "merged"))
    assert buf.size == 5


def test_split_move_leaves_the_rest_loadable_in_the_source(tmp_path):
    src = make_ranks(tmp_path / "buf", [5])
    merge_or_split(str(src / "rank_0"), str(tmp_path / "split"), split_count=2)
    rest = TrajectoryReplayBuffer(sample_window_size=0)
    rest.load_checkpoint(str(src / "rank_0"))
    assert rest.size == 3
    assert_aligned(rest.sample(500), n=3)
    codes = set((rest.sample(500)["rewards"][:, 0] // 1000).int().tolist())
    assert codes == {2, 3, 4}


def test_failed_merge_leaves_both_sides_usable(tmp_path, monkeypatch):
    src = make_ranks(tmp_path / "buf", [3, 3])
    before = data_files(src)
    from rlinf_replay_buffer.tools import merge_split

    calls = {"n": 0}
    real = merge_split.link_or_copy

    def failing(a, b):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(28, "No space left on device")
        real(a, b)

    monkeypatch.setattr(merge_split, "link_or_copy", failing)
    with pytest.raises(OSError, match="No space left"):
        merge_or_split(str(src), str(tmp_path / "merged"))
    assert not (tmp_path / "merged").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged")]
    assert data_files(src) == before
    for r in (0, 1):
        TrajectoryReplayBuffer().load_checkpoint(str(src / f"rank_{r}"))


def test_non_empty_destination_is_refused(tmp_path):
    src = make_ranks(tmp_path / "buf", [2])
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(BufferDirectoryError, match="not empty"):
        merge_or_split(str(src), str(dest), copy=True)
    assert (dest / "notes.txt").read_text() == "mine"


def test_a_buffer_directory_at_the_save_path_is_replaced_only_with_overwrite(tmp_path):
    src = make_ranks(tmp_path / "buf", [2, 1])
    old = make_ranks(tmp_path / "old", [4]) / "rank_0"
    before = data_files(old)
    with pytest.raises(BufferDirectoryError, match="or pass overwrite=True to replace"):
        merge_or_split(str(src), str(old), copy=True)
    assert data_files(old) == before
    result = merge_or_split(str(src), str(old), overwrite=True)  # move mode
    assert result.trajectories == 3
    assert sorted(codes_by_id(old).values()) == [0, 1, 100]
    assert not [n for n in os.listdir(old.parent) if n.startswith(".rank_0")]


def test_overwrite_never_replaces_what_is_not_a_buffer_directory(tmp_path):
    src = make_ranks(tmp_path / "buf", [2])
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(BufferDirectoryError, match="not a buffer directory; refusing to replace"):
        merge_or_split(str(src), str(dest), copy=True, overwrite=True)
    (tmp_path / "file").write_text("mine")
    with pytest.raises(BufferDirectoryError, match="exists and is not a directory"):
        merge_or_split(str(src), str(tmp_path / "file"), copy=True, overwrite=True)
    assert (dest / "notes.txt").read_text() == "mine"
    assert (tmp_path / "file").read_text() == "mine"


def test_a_save_path_around_a_source_is_refused(tmp_path):
    outer = make_ranks(tmp_path / "buf", [2]) / "rank_0"  # a buffer directory ...
    inner = make_ranks(outer / "nested", [1]) / "rank_0"  # ... holding another one
    with pytest.raises(BufferDirectoryError, match="must not contain a source"):
        merge_or_split(str(inner), str(outer), overwrite=True)
    TrajectoryReplayBuffer().load_checkpoint(str(inner))
    TrajectoryReplayBuffer().load_checkpoint(str(outer))


def test_destination_inside_a_source_is_refused(tmp_path):
    src = make_ranks(tmp_path / "buf", [2])
    with pytest.raises(BufferDirectoryError, match="inside a source"):
        merge_or_split(str(src / "rank_0"), str(src / "rank_0" / "out"), copy=True)


def test_split_count_out_of_range_is_a_clear_error(tmp_path):
    src = make_ranks(tmp_path / "buf", [2])
    with pytest.raises(InvalidArgumentError, match="more than the 2 trajectories"):
        merge_or_split(str(src), str(tmp_path / "s"), split_count=3, copy=True)
    with pytest.raises(InvalidArgumentError, match="split-count must be an int >= 1"):
        merge_or_split(str(src), str(tmp_path / "s"), split_count=0, copy=True)


def test_source_that_is_not_a_buffer_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BufferDirectoryError, match="neither a buffer directory"):
        merge_or_split(str(tmp_path / "empty"), str(tmp_path / "out"), copy=True)


def test_merging_rlinf_written_directories(tmp_path, fixture_dir):
    root = tmp_path / "ranks"
    root.mkdir()
    shutil.copytree(fixture_dir, root / "rank_1")
    os.rename(fixture_dir, root / "rank_0")
    merge_or_split(str(root), str(tmp_path / "merged"), copy=True)
    buf = TrajectoryReplayBuffer(sample_window_size=0)
    buf.load_checkpoint(str(tmp_path / "merged"))
    assert buf.size == 6 and buf.total_samples == 96
    assert_aligned(buf.sample(3000), n=4)


def test_sources_with_different_fields_are_refused(tmp_path, fixture_dir):
    root = tmp_path / "ranks"
    root.mkdir()
    os.rename(fixture_dir, root / "rank_0")
    make_ranks(tmp_path / "other", [2])
    os.rename(tmp_path / "other" / "rank_0", root / "rank_1")
    with pytest.raises(BufferDirectoryError, match="cannot merge: .*fields differ"):
        merge_or_split(str(root), str(tmp_path / "merged"))
    assert not (tmp_path / "merged").exists()
    assert (root / "rank_0" / "metadata.json").is_file()


def test_cli_main_in_process(tmp_path, capsys):
    src = make_ranks(tmp_path / "buf", [2, 1])
    assert main(["--source-path", str(src), "--save-path", str(tmp_path / "m"), "--copy"]) == 0
    assert "copied 3 trajectories" in capsys.readouterr().out
    assert main(["--source-path", str(tmp_path / "nope"), "--save-path", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


def test_seed_commands_run_as_written(tmp_path):
    """The two commands of the seed's merge/split section, from the repository root."""
    src = make_ranks(tmp_path / "buffer", [3, 3])
    merged, split = tmp_path / "merged", tmp_path / "split"
    run = [sys.executable, str(TOOL.relative_to(REPO))]
    out = subprocess.run(
        [*run, "--source-path", str(src), "--save-path", str(merged), "--copy"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    out = subprocess.run(
        [*run, "--source-path", str(merged), "--save-path", str(split), "--split-count", "4", "--copy"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert codes_by_id(split) == {0: 0, 1: 100, 2: 1, 3: 101}


def test_progress_is_reported_per_trajectory_placed(tmp_path):
    root = make_ranks(tmp_path / "ranks", [2, 3])
    calls: list[tuple[int, int]] = []
    merge_or_split(str(root), str(tmp_path / "out"), copy=True, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 5) for i in range(1, 6)]
