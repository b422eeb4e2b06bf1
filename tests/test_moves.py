"""Moving trajectories between directories (merge/split in move mode) is one step: the move
record of each source and the arrival mark of the output (rlinf_replay_buffer/moves.py).

Real kills at every file-system call of a move are in test_fault_injection.py; these tests
pin down each state a cut-short move can leave and who finishes it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import coded_trajectory

from rlinf_replay_buffer import (
    BufferDirectoryError,
    CorruptBufferError,
    TrajectoryReplayBuffer,
    UnsafeFileError,
)
from rlinf_replay_buffer.moves import MOVED_IN, MOVING_OUT, new_token, record_move
from rlinf_replay_buffer.naming import list_trajectory_files
from rlinf_replay_buffer.tools import merge_or_split, merge_split
from rlinf_replay_buffer.tools.verify import verify_directory

FORMATS = ["pt", "segment"]


def make_source(path: Path, codes: list[int], fmt: str) -> None:
    buf = TrajectoryReplayBuffer(sample_window_size=0, trajectory_format=fmt)
    buf.add_trajectories([coded_trajectory(code, n=3, e=2) for code in codes])
    buf.save_checkpoint(str(path))


def codes(path: Path) -> list[int]:
    """The trajectory numbers a directory lists (loading it as a user would)."""
    buf = TrajectoryReplayBuffer(sample_window_size=0)
    buf.load_checkpoint(str(path))
    if buf.size == 0:
        return []
    rewards = buf.sample(4000)["rewards"][:, 0]
    return sorted(set((rewards // 1000).int().tolist()))


def cut_short(monkeypatch: pytest.MonkeyPatch, fail_on: str) -> None:
    """Releasing the source whose path ends with ``fail_on`` fails (the disk filled up)."""
    real = merge_split.release

    def release(path: str, ids, remove_empty: bool = False) -> None:
        if path.endswith(fail_on):
            raise OSError(28, "No space left on device", path)
        real(path, ids, remove_empty=remove_empty)

    monkeypatch.setattr(merge_split, "release", release)


def split_cut_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> tuple[Path, Path]:
    src, out = tmp_path / "src", tmp_path / "out"
    make_source(src, [0, 1, 2, 3, 4], fmt)
    cut_short(monkeypatch, "src")
    with pytest.raises(BufferDirectoryError, match="the sources no longer list them"):
        merge_or_split(str(src), str(out), split_count=2)
    monkeypatch.undo()
    return src, out


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_move_cut_short_after_publishing_lists_each_trajectory_once(tmp_path, monkeypatch, fmt):
    root = tmp_path / "ranks"
    make_source(root / "rank_0", [0, 1, 2], fmt)
    make_source(root / "rank_1", [10, 11, 12], fmt)
    cut_short(monkeypatch, "rank_1")
    with pytest.raises(BufferDirectoryError, match="the output is complete"):
        merge_or_split(str(root), str(tmp_path / "out"))
    assert codes(tmp_path / "out") == [0, 1, 2, 10, 11, 12]
    assert not (root / "rank_0").exists()  # released in full before rank_1 failed
    assert (root / "rank_1" / MOVING_OUT).exists()
    assert codes(root / "rank_1") == []  # its index still lists them, the move record hides them


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_next_writer_of_a_source_finishes_its_release(tmp_path, monkeypatch, fmt):
    src, out = split_cut_short(tmp_path, monkeypatch, fmt)
    assert codes(src) == [2, 3, 4] and codes(out) == [0, 1]
    writer = TrajectoryReplayBuffer(
        sample_window_size=0, trajectory_format=fmt, auto_save=True, auto_save_path=str(src)
    )
    try:
        assert writer.size == 3
        assert not (src / MOVING_OUT).exists()
        index = json.loads((src / "trajectory_index.json").read_text())
        assert index["trajectory_id_list"] == [2, 3, 4]
        if fmt == "pt":
            assert sorted(list_trajectory_files(str(src))) == [2, 3, 4]
    finally:
        writer.close()
    assert codes(src) == [2, 3, 4] and codes(out) == [0, 1]


def test_verify_calls_a_cut_short_move_a_note_and_repair_finishes_it(tmp_path, monkeypatch):
    src, out = split_cut_short(tmp_path, monkeypatch, "pt")
    report = verify_directory(str(src))
    assert report.ok, report.problems
    assert report.trajectories == 3
    assert any("moved to another directory" in n.message for n in report.notes)
    repaired = verify_directory(str(src), repair=True)
    assert repaired.ok and repaired.trajectories == 3
    assert not (src / MOVING_OUT).exists()
    assert sorted(list_trajectory_files(str(src))) == [2, 3, 4]
    assert verify_directory(str(src)).notes == []
    assert codes(src) == [2, 3, 4] and codes(out) == [0, 1]


def test_a_move_that_never_published_its_output_moves_nothing(tmp_path):
    src = tmp_path / "src"
    make_source(src, [0, 1, 2], "pt")
    record_move(str(src), new_token(), str(tmp_path / "never-published"), [0, 1])
    assert codes(src) == [0, 1, 2]
    assert verify_directory(str(src)).ok
    writer = TrajectoryReplayBuffer(sample_window_size=0, auto_save=True, auto_save_path=str(src))
    writer.close()
    assert not (src / MOVING_OUT).exists()  # the stale record is dropped, the data stays
    assert codes(src) == [0, 1, 2]


def test_a_replaced_output_gives_the_moved_trajectories_back_to_their_source(tmp_path, monkeypatch):
    src, out = split_cut_short(tmp_path, monkeypatch, "pt")
    make_source(tmp_path / "other", [7], "pt")
    merge_or_split(str(tmp_path / "other"), str(out), copy=True, overwrite=True)  # another arrival
    assert codes(out) == [7]
    assert codes(src) == [0, 1, 2, 3, 4]  # the release never happened: nothing is lost


def test_a_retried_merge_finishes_the_move_an_earlier_run_cut_short(tmp_path, monkeypatch):
    src, out = split_cut_short(tmp_path, monkeypatch, "pt")
    merge_or_split(str(src), str(tmp_path / "next"), split_count=1)
    assert codes(out) == [0, 1] and codes(tmp_path / "next") == [2] and codes(src) == [3, 4]
    assert not (src / MOVING_OUT).exists()


def test_a_completed_move_leaves_no_record_behind(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    make_source(src, [0, 1, 2, 3], "segment")
    merge_or_split(str(src), str(out), split_count=2)
    assert not (src / MOVING_OUT).exists() and not (out / MOVED_IN).exists()
    assert codes(src) == [2, 3] and codes(out) == [0, 1]


def test_a_malformed_move_record_is_refused_naming_the_file(tmp_path):
    src = tmp_path / "src"
    make_source(src, [0, 1], "pt")
    (src / MOVING_OUT).write_text('{"format_version": 1, "token": "x", "trajectory_ids": [0]}')
    with pytest.raises(CorruptBufferError, match=r"\.rlinf-moving-out\.json: not a move record"):
        TrajectoryReplayBuffer().load_checkpoint(str(src))
    report = verify_directory(str(src))
    assert not report.ok and "not a move record" in report.problems[0].message


def test_a_move_record_is_never_followed_to_a_link_or_a_fifo(tmp_path, monkeypatch):
    """The one file a reader opens outside its directory is a regular arrival mark: a link or
    a FIFO there is not followed, and the trajectories stay where their index lists them."""
    src, out = split_cut_short(tmp_path, monkeypatch, "pt")
    mark = out / MOVED_IN
    secret = tmp_path / "secret.json"
    secret.write_text(mark.read_text())
    mark.unlink()
    mark.symlink_to(secret)
    assert codes(src) == [0, 1, 2, 3, 4]
    with pytest.raises(BufferDirectoryError, match="cannot read .*to tell whether"):
        verify_directory(str(src), repair=True)
    mark.unlink()
    os.mkfifo(mark)
    assert codes(src) == [0, 1, 2, 3, 4]  # returns: a FIFO is never opened for reading
    (src / MOVING_OUT).unlink()
    (src / MOVING_OUT).symlink_to(secret)
    with pytest.raises(UnsafeFileError, match="moving-out"):
        TrajectoryReplayBuffer().load_checkpoint(str(src))
