"""The ``segment`` storage format, with real files on disk.

A segment ``seg-NNNNNN/`` holds one raw file per column (``000.bin``, ``001.bin``, ...) of the
aligned rows of many trajectories; an index entry names its segment (``file``) and first row
(``row``). These tests check what the format promises: a reloaded directory gives the very same
draws as a ``pt`` buffer holding the same trajectories, segments roll over without splitting a
trajectory, crash leftovers beyond the last indexed row are cut, damage is reported with a clear
error (and the buffer that raised is unchanged), checkpoints convert between formats, and
merge/split copies rows into the output's own segments.

Trajectories are the coded ones of ``conftest``: trajectory ``i`` carries the code
``1000 * i + 100 * k + s`` in every row of epoch ``k``, step ``s``, so ``code // 1000`` tells which
trajectory a sampled row came from and ``assert_aligned`` catches any torn row.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import TrackedBuffer as TrajectoryReplayBuffer
from conftest import assert_aligned, coded_trajectory

from rlinf_replay_buffer import (
    BufferNotFoundError,
    CorruptBufferError,
    Trajectory,
    UnsafeFileError,
)
from rlinf_replay_buffer import TrajectoryReplayBuffer as UntrackedBuffer
from rlinf_replay_buffer.directory import read_directory
from rlinf_replay_buffer.journal import read_index
from rlinf_replay_buffer.store import read_rows
from rlinf_replay_buffer.tools.merge_split import merge_or_split

N, E, B = 4, 2, 2  # coded_trajectory defaults
PER_TRAJ = N * E * B  # transitions (= segment rows) per trajectory
SEED = 31
SEGMENT_BYTES = "rlinf_replay_buffer.formats.segment.DEFAULT_SEGMENT_BYTES"


# -- helpers ------------------------------------------------------------------------------------
@functools.cache
def row_bytes() -> int:
    """Bytes of one transition across every column of a coded trajectory."""
    buf = UntrackedBuffer(sample_window_size=0)
    buf.add_trajectories([coded_trajectory(0)])
    assert buf.schema is not None
    return buf.schema.row_bytes


def segments_of(monkeypatch: pytest.MonkeyPatch, trajectories: int) -> None:
    """Seal every new segment once it holds ``trajectories`` coded trajectories."""
    monkeypatch.setattr(SEGMENT_BYTES, trajectories * PER_TRAJ * row_bytes())


def memory_buffer(fmt: str = "segment", seed: int = SEED, **kwargs) -> TrajectoryReplayBuffer:
    return TrajectoryReplayBuffer(seed=seed, sample_window_size=0, trajectory_format=fmt, **kwargs)


def auto_buffer(
    path: Path, fmt: str = "segment", seed: int = SEED, tracked: bool = True, **kwargs
) -> TrajectoryReplayBuffer:
    """An auto-save buffer writing to ``path`` (closed after the test unless ``tracked=False``)."""
    return (TrajectoryReplayBuffer if tracked else UntrackedBuffer)(
        seed=seed,
        sample_window_size=0,
        auto_save=True,
        auto_save_path=str(path),
        trajectory_format=fmt,
        **kwargs,
    )


def disk_reader(own: Path, load: Path, **load_kwargs) -> TrajectoryReplayBuffer:
    """A buffer without cache that loads ``load``: every sampled row is read from its files."""
    buf = auto_buffer(own, enable_cache=False)
    buf.load_checkpoint(str(load), **load_kwargs)
    return buf


def memory_reader(load: Path, fmt: str = "segment", **load_kwargs) -> TrajectoryReplayBuffer:
    buf = memory_buffer(fmt)
    buf.load_checkpoint(str(load), **load_kwargs)
    return buf


def add_coded(buf: TrajectoryReplayBuffer, codes: list[int], per_call: int = 2) -> None:
    for start in range(0, len(codes), per_call):
        buf.add_trajectories([coded_trajectory(i) for i in codes[start : start + per_call]])


def save_segment_checkpoint(path: Path, codes: list[int]) -> Path:
    buf = memory_buffer()
    add_coded(buf, codes)
    buf.save_checkpoint(str(path))
    return path


def pt_reference_sample(codes: list[int], num: int = 1500, seed: int = SEED) -> dict:
    """The first batch a ``pt`` buffer seeded ``seed`` holding ``codes`` draws."""
    buf = memory_buffer("pt", seed=seed)
    add_coded(buf, codes)
    return buf.sample(num)


def leaves(batch: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in batch.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def assert_same_batch(a: dict, b: dict) -> None:
    la, lb = leaves(a), leaves(b)
    assert la.keys() == lb.keys()
    for key in la:
        assert la[key].dtype == lb[key].dtype, key
        assert torch.equal(la[key], lb[key]), key


def expected_transitions(codes: list[int]) -> set[tuple[float, int]]:
    steps = [(k, s) for k in range(E) for s in range(N)]
    return {(float(1000 * i + 100 * k + s), b) for i in codes for k, s in steps for b in range(B)}


def seen_transitions(buf: TrajectoryReplayBuffer, num: int = 3000) -> set[tuple[float, int]]:
    """``(code, env)`` of a large aligned sample (covers these small buffers entirely)."""
    batch = buf.sample(num)
    assert_aligned(batch, n=N)
    codes = batch["curr_obs"]["states"][:, 0].tolist()
    envs = batch["curr_obs"]["env_ids"][:, 0].tolist()
    return set(zip(codes, envs, strict=True))


def trajectories_seen(buf: TrajectoryReplayBuffer, num: int = 3000) -> set[int]:
    return {int(c) // 1000 for c, _ in seen_transitions(buf, num)}


def entries_of(path: Path) -> list[dict]:
    """Index entries of a buffer directory, compacted index then journal."""
    entries, _, _ = read_index(str(path))
    return entries


def segment_dirs(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if re.fullmatch(r"seg-\d{6}", p.name))


def bin_hashes(path: Path) -> dict[str, str]:
    """sha256 of every segment column file under ``path``."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.glob("seg-*/*.bin"))
    }


def tree_hashes(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def file_rows(segment: Path) -> set[int]:
    """Rows held by each column file of a segment (a set: one value when they agree)."""
    meta = json.loads((segment / "segment.json").read_text())
    rows = set()
    for i, column in enumerate(meta["columns"]):
        width = torch.empty((), dtype=getattr(torch, column["dtype"])).element_size()
        for d in column["shape"]:
            width *= d
        size = (segment / f"{i:03d}.bin").stat().st_size
        assert size % width == 0, f"{segment.name}/{i:03d}.bin holds a partial row"
        rows.add(size // width)
    return rows


def codes_by_id(path: Path) -> dict[int, int]:
    """trajectory id -> the trajectory number its rows encode (any format)."""
    contents, schema = read_directory(str(path))
    first_reward = {r.trajectory_id: read_rows(r, schema)[("rewards",)][0, 0] for r in contents.records}
    return {tid: int(reward.item()) // 1000 for tid, reward in first_reward.items()}


def edit_index(path: Path, tid: int, **changes) -> None:
    index_path = path / "trajectory_index.json"
    index = json.loads(index_path.read_text())
    index["trajectory_index"][str(tid)].update(changes)
    index_path.write_text(json.dumps(index))


def victim() -> TrajectoryReplayBuffer:
    """A buffer holding trajectory 9 only, used to check a failed load left it unchanged."""
    buf = memory_buffer()
    buf.add_trajectories([coded_trajectory(9)])
    return buf


def assert_still_victim(buf: TrajectoryReplayBuffer) -> None:
    assert (buf.size, buf.total_samples, buf.trajectory_counter) == (1, PER_TRAJ, 1)
    assert trajectories_seen(buf, 500) == {9}


# -- 1. auto-save, reload, same draws as pt -------------------------------------------------------
def test_flushed_auto_save_directory_loads_every_trajectory_aligned_in_a_new_buffer(tmp_path):
    path = tmp_path / "auto"
    buf = auto_buffer(path, cache_size=2)
    add_coded(buf, list(range(5)))
    buf.flush()

    entries = entries_of(path)
    assert [e["trajectory_id"] for e in entries] == list(range(5))
    assert [(e["file"], e["row"]) for e in entries] == [("seg-000000", PER_TRAJ * i) for i in range(5)]
    assert all(e["num_samples"] == PER_TRAJ for e in entries)
    assert file_rows(path / "seg-000000") == {5 * PER_TRAJ}
    assert not list(path.glob("trajectory_*_*"))  # no per-trajectory files

    for reader in (memory_reader(path), disk_reader(tmp_path / "own", path)):
        assert (reader.size, reader.total_samples, reader.trajectory_counter) == (5, 5 * PER_TRAJ, 5)
        assert seen_transitions(reader) == expected_transitions(list(range(5)))


def test_segment_buffers_draw_exactly_the_batches_of_a_pt_buffer_with_the_same_seed(tmp_path):
    codes = list(range(5))
    path = tmp_path / "auto"
    writer = auto_buffer(path, cache_size=2)  # 3 trajectories read from the segment, 2 cached
    add_coded(writer, codes)
    writer.flush()
    pt_writer = auto_buffer(tmp_path / "auto-pt", fmt="pt", cache_size=2)
    add_coded(pt_writer, codes)

    reference = pt_reference_sample(codes)
    assert_aligned(reference, n=N)
    for buf in (writer, memory_reader(path), disk_reader(tmp_path / "own", path), pt_writer):
        assert_same_batch(buf.sample(1500), reference)
    # and the next draws agree too: segment and pt buffers consume the generator alike
    again = memory_buffer("pt")
    add_coded(again, codes)
    again.sample(1500)
    assert_same_batch(writer.sample(700), again.sample(700))


def test_bfloat16_columns_survive_the_segment_files(tmp_path):
    def with_bf16(i: int):
        traj = coded_trajectory(i, layout="aligned")
        traj.versions = torch.full_like(traj.rewards, float(i)).to(torch.bfloat16)
        return traj

    buf = auto_buffer(tmp_path / "auto", enable_cache=False)
    buf.add_trajectories([with_bf16(i) for i in range(3)])
    buf.flush()
    for reader in (buf, memory_reader(tmp_path / "auto")):
        batch = reader.sample(500)
        assert_aligned(batch, n=N)
        assert batch["versions"].dtype == torch.bfloat16
        assert torch.equal(batch["versions"][:, 0].float(), batch["rewards"][:, 0] // 1000)


# -- 2. rollover ------------------------------------------------------------------------------------
def test_segments_roll_over_without_splitting_a_trajectory(tmp_path, monkeypatch):
    segments_of(monkeypatch, 2)
    path = tmp_path / "auto"
    buf = auto_buffer(path, cache_size=1)
    add_coded(buf, list(range(7)), per_call=3)
    buf.flush()

    entries = entries_of(path)
    assert [(e["trajectory_id"], e["file"], e["row"]) for e in entries] == [
        (i, f"seg-{i // 2:06d}", PER_TRAJ * (i % 2)) for i in range(7)
    ]
    assert segment_dirs(path) == [f"seg-{k:06d}" for k in range(4)]
    for name in segment_dirs(path):
        mine = [e for e in entries if e["file"] == name]
        # the segment holds exactly the rows of the trajectories naming it, back to back
        assert file_rows(path / name) == {sum(e["num_samples"] for e in mine)}
        ends = [e["row"] + e["num_samples"] for e in mine]
        assert [e["row"] for e in mine] == [0, *ends[:-1]]


def test_sampling_across_segments_is_aligned_and_matches_pt(tmp_path, monkeypatch):
    segments_of(monkeypatch, 2)
    codes = list(range(7))
    path = tmp_path / "auto"
    buf = auto_buffer(path, enable_cache=False)
    add_coded(buf, codes)
    buf.flush()
    assert len(segment_dirs(path)) == 4

    reference = pt_reference_sample(codes)
    assert_same_batch(buf.sample(1500), reference)
    reader = disk_reader(tmp_path / "own", path)
    assert_same_batch(reader.sample(1500), reference)
    assert seen_transitions(reader) == expected_transitions(codes)


def test_a_trajectory_larger_than_a_segment_gets_a_segment_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(SEGMENT_BYTES, 1)
    path = tmp_path / "auto"
    buf = auto_buffer(path, cache_size=1)
    add_coded(buf, [0, 1, 2])
    buf.flush()
    assert [(e["file"], e["row"]) for e in entries_of(path)] == [(f"seg-{i:06d}", 0) for i in range(3)]
    assert all(file_rows(path / name) == {PER_TRAJ} for name in segment_dirs(path))
    assert seen_transitions(disk_reader(tmp_path / "own", path)) == expected_transitions([0, 1, 2])


# -- 3. crash leftovers -----------------------------------------------------------------------------
FLUSH_AND_DIE = """
import os, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_segment_format import add_coded, auto_buffer
first = auto_buffer(Path({path!r}), tracked=False)
add_coded(first, [0, 1, 2])
first.flush()
os._exit(0)
"""


@pytest.mark.parametrize("ending", ["close", "flush"])
def test_bytes_a_crash_left_after_the_last_indexed_row_are_cut_on_reopen(tmp_path, ending):
    path = tmp_path / "auto"
    if ending == "close":
        first = auto_buffer(path, tracked=False)
        add_coded(first, [0, 1, 2])
        first.close()
    else:  # a process that flushed, then died without close()
        script = FLUSH_AND_DIE.format(tests=str(Path(__file__).resolve().parent), path=str(path))
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    segment = path / "seg-000000"
    before = bin_hashes(path)
    sizes = {p.name: p.stat().st_size for p in segment.glob("*.bin")}
    # a crash during the next append: some column files got (part of) new rows, no index entry
    for k, column in enumerate(sorted(segment.glob("*.bin"))):
        with open(column, "ab") as f:
            f.write(bytes([0xAB]) * (17 * (k + 1)))
    assert bin_hashes(path) != before

    second = auto_buffer(path, cache_size=2)
    assert {p.name: p.stat().st_size for p in segment.glob("*.bin")} == sizes
    assert bin_hashes(path) == before
    assert (second.size, second.total_samples, second.trajectory_counter) == (3, 3 * PER_TRAJ, 3)
    assert seen_transitions(second) == expected_transitions([0, 1, 2])

    assert second.add_trajectories([coded_trajectory(3), coded_trajectory(4)]) == [3, 4]
    second.flush()
    new = [e for e in entries_of(path) if e["trajectory_id"] >= 3]
    assert [(e["trajectory_id"], e["file"], e["row"]) for e in new] == [
        (3, "seg-000001", 0),
        (4, "seg-000001", PER_TRAJ),
    ]
    second.close()
    after = bin_hashes(path)
    assert {k: v for k, v in after.items() if k.startswith("seg-000000")} == before
    assert seen_transitions(disk_reader(tmp_path / "own", path)) == expected_transitions(list(range(5)))


def test_an_unindexed_segment_left_by_a_crash_is_removed_on_reopen(tmp_path):
    """No entry names it (a crash before its first commit, or every trajectory in it evicted):
    reopening removes it, and new rows go to a fresh segment."""
    path = tmp_path / "auto"
    first = auto_buffer(path)
    add_coded(first, [0, 1])
    first.close()
    # the crash started seg-000001 and wrote part of a row before dying
    shutil.copytree(path / "seg-000000", path / "seg-000001")
    before = bin_hashes(path)

    second = auto_buffer(path, cache_size=1)
    assert not (path / "seg-000001").exists()
    assert second.size == 2
    second.add_trajectories([coded_trajectory(2)])
    second.close()
    assert [(e["file"], e["row"]) for e in entries_of(path)][-1] == ("seg-000001", 0)
    assert {k: v for k, v in bin_hashes(path).items() if k.startswith("seg-000000")} == {
        k: v for k, v in before.items() if k.startswith("seg-000000")
    }
    assert seen_transitions(disk_reader(tmp_path / "own", path)) == expected_transitions([0, 1, 2])


def test_reopening_never_truncates_an_unindexed_segment_that_links_outside(tmp_path):
    path = tmp_path / "auto"
    first = auto_buffer(path)
    add_coded(first, [0, 1])
    first.close()
    outside = tmp_path / "outside"
    shutil.copytree(path / "seg-000000", outside)
    os.symlink(outside, path / "seg-000004")
    before = tree_hashes(outside)

    second = auto_buffer(path, cache_size=1)
    second.add_trajectories([coded_trajectory(2)])
    second.close()
    assert tree_hashes(outside) == before
    assert entries_of(path)[-1]["file"] == "seg-000005"  # never appends through the link


# -- 4. damage --------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_truncated_column_file_is_reported_when_loading(tmp_path, damage):
    ckpt = save_segment_checkpoint(tmp_path / "ckpt", [0, 1, 2])
    column = ckpt / "seg-000000" / "004.bin"
    width = column.stat().st_size // (3 * PER_TRAJ)
    if damage == "truncated":
        os.truncate(column, (2 * PER_TRAJ + 3) * width + 1)  # mid trajectory 2, mid row
    else:
        column.unlink()

    buf = victim()
    with pytest.raises(CorruptBufferError, match=re.escape(str(column)) + ": holds .* rows.*truncated"):
        buf.load_checkpoint(str(ckpt))
    assert_still_victim(buf)
    with pytest.raises(CorruptBufferError, match=re.escape(str(column))):
        auto_buffer(ckpt)  # continuing it as an auto-save directory reads the same rows


def test_a_truncated_column_file_is_reported_when_sampling(tmp_path):
    ckpt = save_segment_checkpoint(tmp_path / "ckpt", [0, 1, 2])
    column = ckpt / "seg-000000" / "010.bin"
    width = column.stat().st_size // (3 * PER_TRAJ)
    os.truncate(column, (PER_TRAJ + 5) * width)

    buf = disk_reader(tmp_path / "own", ckpt)  # no cache: loading reads no rows
    assert (buf.size, buf.total_samples) == (3, 3 * PER_TRAJ)
    for _ in range(2):  # reported every time, never a torn batch
        with pytest.raises(CorruptBufferError, match=re.escape(str(column)) + ".*truncated"):
            buf.sample(2000)
    assert (buf.size, buf.total_samples, buf.trajectory_counter) == (3, 3 * PER_TRAJ, 3)
    buf.sample_window_size = 1
    with pytest.raises(CorruptBufferError, match=re.escape(str(column))):
        buf.sample(100)  # trajectory 2 lies wholly past the cut


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("dtype", "columns do not match the buffer's fields"),
        ("name", "columns do not match the buffer's fields"),
        ("drop", "columns do not match the buffer's fields"),
        ("version", "format_version 3 is not supported"),
        ("missing", "segment.json: is missing"),
        ("garbage", "segment.json: unreadable"),
    ],
)
def test_a_segment_json_that_does_not_describe_the_buffer_is_refused(tmp_path, change, message):
    ckpt = save_segment_checkpoint(tmp_path / "ckpt", [0, 1])
    meta_path = ckpt / "seg-000000" / "segment.json"
    meta = json.loads(meta_path.read_text())
    if change == "dtype":
        meta["columns"][0]["dtype"] = "float64"
    elif change == "name":
        meta["columns"][0]["name"] = "other"
    elif change == "drop":
        meta["columns"].pop()
    elif change == "version":
        meta["format_version"] = 3
    meta_path.write_text(json.dumps(meta))
    if change == "missing":
        meta_path.unlink()
    elif change == "garbage":
        meta_path.write_text("{not json")

    buf = victim()
    with pytest.raises(CorruptBufferError, match=message):
        buf.load_checkpoint(str(ckpt))
    assert_still_victim(buf)
    disk = disk_reader(tmp_path / "own", ckpt)
    with pytest.raises(CorruptBufferError, match=message):
        disk.sample(10)
    assert disk.size == 2


def test_a_segment_directory_linking_outside_is_refused(tmp_path):
    ckpt = save_segment_checkpoint(tmp_path / "ckpt", [0, 1])
    outside = tmp_path / "outside"
    os.rename(ckpt / "seg-000000", outside)
    os.symlink(outside, ckpt / "seg-000000")
    before = tree_hashes(outside)

    buf = victim()
    with pytest.raises(UnsafeFileError, match="seg-000000: is a symbolic link"):
        buf.load_checkpoint(str(ckpt))
    assert_still_victim(buf)
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        auto_buffer(ckpt)
    assert tree_hashes(outside) == before


def test_a_column_file_that_is_a_symbolic_link_is_refused(tmp_path):
    ckpt = save_segment_checkpoint(tmp_path / "ckpt", [0, 1])
    column = ckpt / "seg-000000" / "002.bin"
    outside = tmp_path / "outside.bin"
    os.rename(column, outside)
    os.symlink(outside, column)

    buf = victim()
    with pytest.raises(CorruptBufferError, match=re.escape(str(column)) + ": is a symbolic link"):
        buf.load_checkpoint(str(ckpt))
    assert_still_victim(buf)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"file": "../x"}, CorruptBufferError, r"names segment '\.\./x' \(expected seg-NNNNNN\)"),
        ({"file": "seg-000000/../../x"}, CorruptBufferError, "expected seg-NNNNNN"),
        ({"file": "seg-1"}, CorruptBufferError, "expected seg-NNNNNN"),
        ({"file": "trajectory_1_w_0.pt"}, CorruptBufferError, "expected seg-NNNNNN"),
        ({"file": None}, CorruptBufferError, "expected seg-NNNNNN"),
        ({"row": -1}, CorruptBufferError, "trajectory 1 has row -1"),
        ({"row": "16"}, CorruptBufferError, "trajectory 1 has row '16'"),
        ({"row": True}, CorruptBufferError, "trajectory 1 has row True"),
        ({"row": 1.5}, CorruptBufferError, "trajectory 1 has row 1.5"),
        ({"row": None}, CorruptBufferError, "trajectory 1 has row None"),
        ({"file": "seg-000009"}, BufferNotFoundError, "segment seg-000009, which is missing"),
    ],
)
def test_a_bad_segment_index_entry_is_refused(tmp_path, changes, error, message):
    ckpt = save_segment_checkpoint(tmp_path / "ckpt", [0, 1, 2])
    edit_index(ckpt, 1, **changes)
    buf = victim()
    with pytest.raises(error, match=message):
        buf.load_checkpoint(str(ckpt))
    assert_still_victim(buf)
    with pytest.raises(error, match=message):
        buf.load_checkpoint(str(ckpt), is_distributed=True, local_rank=1, world_size=2)
    assert_still_victim(buf)
    buf.load_checkpoint(str(ckpt), is_distributed=True, local_rank=0, world_size=2)  # 0 and 2 only
    assert trajectories_seen(buf) == {0, 2}


def test_a_segment_name_with_a_trailing_newline_is_a_malformed_entry(tmp_path):
    ckpt = save_segment_checkpoint(tmp_path / "ckpt", [0, 1])
    edit_index(ckpt, 1, file="seg-000000\n")
    with pytest.raises(CorruptBufferError, match="expected seg-NNNNNN"):
        memory_buffer().load_checkpoint(str(ckpt))


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_a_row_past_the_end_of_its_segment_is_reported(tmp_path, kind):
    ckpt = save_segment_checkpoint(tmp_path / "ckpt", [0, 1, 2])
    edit_index(ckpt, 1, row=10**9)
    column = ckpt / "seg-000000" / "000.bin"
    if kind == "memory":  # loading reads the rows into memory
        buf = victim()
        with pytest.raises(CorruptBufferError, match=re.escape(str(column)) + ".*index needs"):
            buf.load_checkpoint(str(ckpt))
        assert_still_victim(buf)
    else:  # no cache: the rows are read when sampled
        buf = disk_reader(tmp_path / "own", ckpt)
        with pytest.raises(CorruptBufferError, match=re.escape(str(column)) + ".*index needs"):
            buf.sample(2000)
        assert buf.size == 3


def test_a_row_too_large_for_the_index_is_refused_and_leaves_the_buffer_unchanged(tmp_path):
    ckpt = save_segment_checkpoint(tmp_path / "ckpt", [0, 1, 2])
    edit_index(ckpt, 1, row=2**64)
    buf = auto_buffer(tmp_path / "own", enable_cache=False)
    buf.add_trajectories([coded_trajectory(9)])
    try:
        with pytest.raises(CorruptBufferError):
            buf.load_checkpoint(str(ckpt))
    finally:
        assert buf.size == 1


def test_a_missing_segment_directory_is_reported(tmp_path):
    ckpt = save_segment_checkpoint(tmp_path / "ckpt", [0, 1])
    shutil.rmtree(ckpt / "seg-000000")
    buf = victim()
    with pytest.raises(BufferNotFoundError, match="trajectory 0 in segment seg-000000, which is missing"):
        buf.load_checkpoint(str(ckpt))
    assert_still_victim(buf)
    with pytest.raises(BufferNotFoundError, match="which is missing"):
        auto_buffer(ckpt)


# -- 5. checkpoints across formats ---------------------------------------------------------------
def test_segment_checkpoint_round_trips_through_a_new_path(tmp_path, monkeypatch):
    segments_of(monkeypatch, 2)
    codes = list(range(5))
    auto = tmp_path / "auto"
    src = auto_buffer(auto, cache_size=2, tracked=False)
    add_coded(src, codes)
    ckpt = tmp_path / "ckpt"
    src.save_checkpoint(str(ckpt))
    src.close()
    shutil.rmtree(auto)  # the checkpoint is self-contained

    assert segment_dirs(ckpt) == ["seg-000000", "seg-000001", "seg-000002"]
    assert not list(ckpt.glob("trajectory_*_*"))
    assert json.loads((ckpt / "metadata.json").read_text())["trajectory_format"] == "segment"
    reference = pt_reference_sample(codes)
    for reader in (memory_reader(ckpt), disk_reader(tmp_path / "own", ckpt)):
        assert (reader.size, reader.total_samples, reader.trajectory_counter) == (5, 5 * PER_TRAJ, 5)
        assert_same_batch(reader.sample(1500), reference)
        assert seen_transitions(reader) == expected_transitions(codes)


def test_pt_checkpoint_loaded_into_a_segment_auto_save_buffer_is_saved_as_segments(tmp_path):
    codes = list(range(4))
    pt_ckpt = tmp_path / "pt"
    pt_src = memory_buffer("pt")
    add_coded(pt_src, codes)
    pt_src.save_checkpoint(str(pt_ckpt))
    pt_before = tree_hashes(pt_ckpt)

    own = tmp_path / "own"
    buf = auto_buffer(own, cache_size=1)
    buf.load_checkpoint(str(pt_ckpt))
    reference = pt_reference_sample(codes)
    assert_same_batch(buf.sample(1500), reference)

    seg_ckpt = tmp_path / "seg"
    buf.save_checkpoint(str(seg_ckpt))
    assert json.loads((seg_ckpt / "metadata.json").read_text())["trajectory_format"] == "segment"
    assert not list(seg_ckpt.glob("trajectory_*_*")) and segment_dirs(seg_ckpt) == ["seg-000000"]
    rows = [(e["trajectory_id"], e["row"]) for e in entries_of(seg_ckpt)]
    assert rows == [(i, PER_TRAJ * i) for i in codes]
    assert_same_batch(memory_reader(seg_ckpt).sample(1500), reference)

    # a checkpoint into its own auto-save directory copies the rows into its segments
    buf.save_checkpoint(str(own))
    buf.close()
    assert segment_dirs(own) == ["seg-000000"] and file_rows(own / "seg-000000") == {4 * PER_TRAJ}
    again = auto_buffer(own, cache_size=1)
    assert (again.size, again.trajectory_counter) == (4, 4)
    assert_same_batch(again.sample(1500), reference)
    assert tree_hashes(pt_ckpt) == pt_before


@pytest.mark.parametrize("kind", ["memory", "auto_save_no_cache"])
def test_segment_checkpoint_loaded_by_a_pt_buffer_is_saved_as_pt_files(tmp_path, kind):
    codes = list(range(4))
    seg_ckpt = save_segment_checkpoint(tmp_path / "seg", codes)
    if kind == "memory":
        buf = memory_buffer("pt")
    else:
        buf = auto_buffer(tmp_path / "own", fmt="pt", enable_cache=False)
    buf.load_checkpoint(str(seg_ckpt))
    pt_ckpt = tmp_path / "pt"
    buf.save_checkpoint(str(pt_ckpt))

    assert segment_dirs(pt_ckpt) == []
    assert sorted(p.name.split("_")[1] for p in pt_ckpt.glob("trajectory_*.pt")) == ["0", "1", "2", "3"]
    assert json.loads((pt_ckpt / "metadata.json").read_text())["trajectory_format"] == "pt"
    reader = memory_reader(pt_ckpt, fmt="pt")
    assert_same_batch(reader.sample(1500), pt_reference_sample(codes))
    assert codes_by_id(pt_ckpt) == {i: i for i in codes}


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_rank_shares_of_a_segment_directory_are_disjoint_and_cover_everything(tmp_path, kind, monkeypatch):
    segments_of(monkeypatch, 3)
    codes = list(range(7))
    ckpt = save_segment_checkpoint(tmp_path / "ckpt", codes)
    shares = []
    for rank in range(2):
        kwargs = {"is_distributed": True, "local_rank": rank, "world_size": 2}
        if kind == "memory":
            buf = memory_reader(ckpt, **kwargs)
        else:
            buf = disk_reader(tmp_path / f"own{rank}", ckpt, **kwargs)
        assert buf.trajectory_counter == 7  # new ids follow every id of the directory
        shares.append(trajectories_seen(buf))
        assert seen_transitions(buf) == expected_transitions(sorted(shares[-1]))
    assert shares == [{0, 2, 4, 6}, {1, 3, 5}]


def test_saving_over_the_checkpoint_a_share_was_loaded_from_keeps_the_share(tmp_path):
    ckpt = save_segment_checkpoint(tmp_path / "ckpt", list(range(4)))
    buf = disk_reader(tmp_path / "own", ckpt, is_distributed=True, local_rank=1, world_size=2)
    assert trajectories_seen(buf) == {1, 3}
    buf.save_checkpoint(str(ckpt))  # rows move: trajectory 1 is now at row 0
    assert [(e["trajectory_id"], e["row"]) for e in entries_of(ckpt)] == [(1, 0), (3, PER_TRAJ)]
    assert trajectories_seen(buf) == {1, 3}
    assert trajectories_seen(memory_reader(ckpt)) == {1, 3}


def test_saving_over_the_loaded_checkpoint_through_a_symlinked_path_keeps_the_share(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    save_segment_checkpoint(tmp_path / "real" / "ckpt", list(range(4)))
    ckpt = tmp_path / "link" / "ckpt"
    buf = disk_reader(tmp_path / "own", ckpt, is_distributed=True, local_rank=1, world_size=2)
    assert trajectories_seen(buf) == {1, 3}
    buf.save_checkpoint(str(ckpt))
    assert trajectories_seen(buf) == {1, 3}


# -- 6. merge / split -------------------------------------------------------------------------------
def make_ranks(root: Path, counts: list[int], fmt: str = "segment") -> Path:
    """``root/rank_r`` holds ``counts[r]`` coded trajectories numbered ``100 * r + i``."""
    for r, count in enumerate(counts):
        buf = memory_buffer(fmt)
        buf.add_trajectories([coded_trajectory(100 * r + i) for i in range(count)])
        buf.save_checkpoint(str(root / f"rank_{r}"))
    return root


@pytest.mark.parametrize("copy", [True, False])
def test_merging_segment_ranks_interleaves_and_renumbers_like_pt(tmp_path, monkeypatch, copy):
    segments_of(monkeypatch, 2)
    counts = [3, 2]
    seg_src = make_ranks(tmp_path / "seg", counts)
    pt_src = make_ranks(tmp_path / "pt", counts, fmt="pt")
    assert segment_dirs(seg_src / "rank_0") == ["seg-000000", "seg-000001"]
    before = tree_hashes(seg_src)

    result = merge_or_split(str(seg_src), str(tmp_path / "merged"), copy=copy)
    merge_or_split(str(pt_src), str(tmp_path / "merged-pt"), copy=True)
    assert (result.trajectories, result.transitions, result.moved) == (5, 5 * PER_TRAJ, not copy)

    merged = tmp_path / "merged"
    expected = {0: 0, 1: 100, 2: 1, 3: 101, 4: 2}
    assert codes_by_id(merged) == codes_by_id(tmp_path / "merged-pt") == expected
    entries = entries_of(merged)
    assert [e["trajectory_id"] for e in entries] == list(range(5))
    assert all(re.fullmatch(r"seg-\d{6}", e["file"]) and isinstance(e["row"], int) for e in entries)
    assert json.loads((merged / "metadata.json").read_text())["trajectory_counter"] == 5

    reader = memory_reader(merged)
    pt_reader = memory_reader(tmp_path / "merged-pt", fmt="pt")
    assert reader.trajectory_counter == 5
    assert_same_batch(reader.sample(1500), pt_reader.sample(1500))
    assert trajectories_seen(disk_reader(tmp_path / "own", merged)) == {0, 1, 2, 100, 101}
    if copy:
        assert tree_hashes(seg_src) == before
    else:  # every trajectory moved: the sources are gone
        assert not (seg_src / "rank_0").exists() and not (seg_src / "rank_1").exists()


def test_split_move_keeps_the_first_n_and_removes_only_unused_segments(tmp_path, monkeypatch):
    segments_of(monkeypatch, 2)
    src = make_ranks(tmp_path / "buf", [3, 3])  # each rank: seg-000000 {0, 1}, seg-000001 {2}
    result = merge_or_split(str(src), str(tmp_path / "split"), split_count=3)
    assert result.origin == [(str(src / "rank_0"), 0), (str(src / "rank_1"), 0), (str(src / "rank_0"), 1)]
    assert codes_by_id(tmp_path / "split") == {0: 0, 1: 100, 2: 1}
    assert trajectories_seen(memory_reader(tmp_path / "split")) == {0, 1, 100}

    # the sources list only what stayed; a segment goes once nothing kept uses it
    assert [e["trajectory_id"] for e in entries_of(src / "rank_0")] == [2]
    assert [e["trajectory_id"] for e in entries_of(src / "rank_1")] == [1, 2]
    assert segment_dirs(src / "rank_0") == ["seg-000001"]
    assert segment_dirs(src / "rank_1") == ["seg-000000", "seg-000001"]


def test_split_move_leaves_the_rest_of_a_segment_source_loadable(tmp_path):
    src = make_ranks(tmp_path / "buf", [5])
    merge_or_split(str(src / "rank_0"), str(tmp_path / "split"), split_count=2)
    rest = memory_reader(src / "rank_0")
    assert trajectories_seen(rest) == {2, 3, 4}


def test_split_copy_keeps_the_first_n_and_leaves_the_source_untouched(tmp_path, monkeypatch):
    segments_of(monkeypatch, 2)
    src = make_ranks(tmp_path / "buf", [5])
    before = tree_hashes(src)
    merge_or_split(str(src / "rank_0"), str(tmp_path / "split"), split_count=3, copy=True)
    assert codes_by_id(tmp_path / "split") == {0: 0, 1: 1, 2: 2}
    assert tree_hashes(src) == before
    assert trajectories_seen(memory_reader(src / "rank_0")) == {0, 1, 2, 3, 4}


# -- 7. threads -------------------------------------------------------------------------------------
def test_sampling_while_another_thread_adds_reads_only_aligned_rows(tmp_path, monkeypatch):
    segments_of(monkeypatch, 3)  # segments roll over while the sampler reads them
    path = tmp_path / "auto"
    buf = auto_buffer(path, cache_size=2)
    buf.add_trajectories([coded_trajectory(0)])
    errors: list[BaseException] = []
    done = threading.Event()
    added = [1]
    samples = [0]

    def adder():
        try:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and added[0] < 200:
                buf.add_trajectories([coded_trajectory(added[0])])
                added[0] += 1
                time.sleep(0.002)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            done.set()

    def sampler():
        try:
            while not done.is_set():
                assert_aligned(buf.sample(64), n=N)
                samples[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
            done.set()

    threads = [threading.Thread(target=adder), threading.Thread(target=sampler)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert samples[0] > 10 and added[0] > 10
    buf.flush()
    assert len(segment_dirs(path)) > 1
    assert buf.size == added[0]
    assert trajectories_seen(buf, 20 * added[0] * PER_TRAJ) == set(range(added[0]))


def test_checkpoint_into_the_auto_save_directory_while_another_thread_adds_keeps_rows_aligned(
    tmp_path, monkeypatch
):
    path = tmp_path / "auto"
    buf = auto_buffer(path)
    buf.add_trajectories([coded_trajectory(0)])
    buf.flush()
    paused, go = threading.Event(), threading.Event()
    real_fsync, armed = os.fsync, [True]

    def slow_writer_fsync(fd):
        """The writer thread is descheduled after the first column of its next append."""
        real_fsync(fd)
        if armed[0] and threading.current_thread().name == "replay-buffer-writer":
            armed[0] = False
            paused.set()
            go.wait(2)  # released at once when the checkpoint does not wait for it

    real_flush = buf.flush

    def flush_then_another_thread_adds():
        """Another thread's add lands between save_checkpoint's flush and its snapshot."""
        real_flush()
        monkeypatch.setattr(buf, "flush", real_flush)
        buf.add_trajectories([coded_trajectory(1), coded_trajectory(2)])
        assert paused.wait(10)

    monkeypatch.setattr(os, "fsync", slow_writer_fsync)
    monkeypatch.setattr(buf, "flush", flush_then_another_thread_adds)
    try:
        buf.save_checkpoint(str(path))
    finally:
        go.set()
    buf.flush()
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert_aligned(buf.sample(2000), n=N)  # the live buffer uses the writer's rows
    reader = memory_reader(path)  # what a process restarted now would load
    assert_aligned(reader.sample(2000), n=N)


def test_a_field_with_a_zero_size_dimension_round_trips_through_segments(tmp_path):
    steps, envs = 4, 2
    traj = Trajectory(
        max_episode_length=steps,
        actions=torch.zeros(steps, envs, 2),
        rewards=torch.zeros(steps, envs, 1),
        dones=torch.zeros(steps, envs, 1, dtype=torch.bool),
        curr_obs={"states": torch.ones(steps, envs, 3), "empty": torch.zeros(steps, envs, 0)},
        next_obs={"states": torch.ones(steps, envs, 3)},
    )
    buf = TrajectoryReplayBuffer(sample_window_size=0, trajectory_format="segment")
    buf.add_trajectories([traj, traj])
    buf.save_checkpoint(str(tmp_path / "ckpt"))
    reader = TrajectoryReplayBuffer(
        sample_window_size=0, enable_cache=False, auto_save=True, auto_save_path=str(tmp_path / "own")
    )
    reader.load_checkpoint(str(tmp_path / "ckpt"))
    batch = reader.sample(8)
    assert batch["curr_obs"]["empty"].shape == (8, 0)
    assert (batch["curr_obs"]["states"] == 1).all()
    reader.close()
