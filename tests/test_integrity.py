"""Checksums: every index entry carries the CRC-32 of its data; damage is caught on first read,
named in a clear error (or skipped with a warning by ``on_corrupt="skip"``), never sampled.

Damage here is real bytes on disk: a value changed inside a file so that the file still parses
(only the checksum can tell), files cut short, column files of a segment altered.
"""

from __future__ import annotations

import json
import struct
import warnings
import zlib
from pathlib import Path

import pytest
from conftest import assert_aligned, coded_trajectory

from rlinf_replay_buffer import (
    CorruptBufferError,
    CorruptDataWarning,
    CorruptTrajectoryError,
    InvalidArgumentError,
    TrajectoryReplayBuffer,
)
from rlinf_replay_buffer.directory import read_directory
from rlinf_replay_buffer.journal import JOURNAL
from rlinf_replay_buffer.tools.merge_split import merge_or_split

FORMATS = ["pt", "pkl", "segment"]
IDS = [1, 2, 3, 4]  # coded trajectory i holds codes 1000 * i + ...
DAMAGED = 2  # the trajectory (and code block) the tests damage; its id is DAMAGED - 1


def written_dir(tmp_path: Path, fmt: str, name: str = "buf") -> Path:
    path = tmp_path / name
    buf = TrajectoryReplayBuffer(
        seed=3, auto_save=True, auto_save_path=str(path), trajectory_format=fmt, sample_window_size=0
    )
    buf.add_trajectories([coded_trajectory(i, n=3, e=2) for i in IDS])
    buf.close()
    return path


def index_entries(path: Path) -> list[dict]:
    data = json.loads((path / "trajectory_index.json").read_text())
    return [data["trajectory_index"][str(t)] for t in data["trajectory_id_list"]]


def segment_column_files(path: Path, entry: dict) -> list[Path]:
    """The column files of an entry's segment, in column order (not the source columns)."""
    return sorted((path / entry["file"]).glob("[0-9]*.bin"))


def rows_crc(path: Path, entry: dict, entries: list[dict]) -> int:
    """The segment checksum computed independently: bytes of the rows as added, column after
    column; a ``next_obs`` column stored once (``pairs`` of ``segment.json``) gives each row from
    where its source column says (itself, or its ``curr_obs`` partner's column)."""
    total = sum(e["num_samples"] for e in entries if e["file"] == entry["file"])
    meta = json.loads((path / entry["file"] / "segment.json").read_text())
    pairs = {p["next_obs"]: p for p in meta.get("pairs", [])}
    columns = segment_column_files(path, entry)
    start, count = entry["row"], entry["num_samples"]
    crc = 0
    for i, column in enumerate(columns):
        data = column.read_bytes()
        row_bytes = len(data) // total
        if i not in pairs:
            crc = zlib.crc32(data[start * row_bytes : (start + count) * row_bytes], crc)
            continue
        curr = columns[pairs[i]["curr_obs"]].read_bytes()
        raw = (path / entry["file"] / pairs[i]["source"]).read_bytes()[start * 8 : (start + count) * 8]
        sources = struct.unpack(f"<{count}q", raw)
        for r, source in zip(range(start, start + count), sources, strict=True):
            block = data if source == r else curr
            crc = zlib.crc32(block[source * row_bytes : (source + 1) * row_bytes], crc)
    return crc


def damage_value(path: Path, fmt: str, trajectory: int = DAMAGED) -> None:
    """Change one stored float of a trajectory so that its file still parses."""
    old, new = struct.pack("<f", 1000.0 * trajectory + 2), struct.pack("<f", 1000.0 * trajectory + 5)
    if fmt == "segment":
        entry = index_entries(path)[trajectory - 1]
        for column in segment_column_files(path, entry):
            data = column.read_bytes()
            if old in data:
                column.write_bytes(data.replace(old, new, 1))
                return
    else:
        victim = next(path.glob(f"trajectory_{trajectory - 1}_*.{fmt}"))
        data = victim.read_bytes()
        assert old in data
        victim.write_bytes(data.replace(old, new, 1))
        return
    raise AssertionError("value not found")


@pytest.fixture
def disk_reader(tmp_path):
    """Builds buffers that read every sampled row from its file (auto-save, no cache)."""
    made: list[TrajectoryReplayBuffer] = []

    def make(**kwargs) -> TrajectoryReplayBuffer:
        buf = TrajectoryReplayBuffer(
            seed=5,
            enable_cache=False,
            sample_window_size=0,
            auto_save=True,
            auto_save_path=str(tmp_path / f"reader-{len(made)}"),
            **kwargs,
        )
        made.append(buf)
        return buf

    yield make
    for buf in made:
        buf.close()


def codes_of(batch: dict) -> set[int]:
    return {int(c) // 1000 for c in batch["curr_obs"]["states"][:, 0].tolist()}


# -- what is written ---------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_index_entry_carries_the_crc32_of_its_data(tmp_path, fmt):
    path = written_dir(tmp_path, fmt)
    entries = index_entries(path)
    assert len(entries) == len(IDS)
    for entry in entries:
        if fmt == "segment":
            assert entry["crc32"] == rows_crc(path, entry, entries)
        else:
            assert entry["crc32"] == zlib.crc32((path / entry["file"]).read_bytes())


@pytest.mark.parametrize("src", FORMATS)
@pytest.mark.parametrize("dst", FORMATS)
def test_checkpoints_carry_checksums_in_every_format(tmp_path, src, dst):
    buf = TrajectoryReplayBuffer(sample_window_size=0, enable_cache=False)
    buf.load_checkpoint(str(written_dir(tmp_path, src)))
    out = tmp_path / "ckpt"
    buf.save_checkpoint(str(out), trajectory_format=dst)
    entries = index_entries(out)
    for entry in entries:
        expected = (
            rows_crc(out, entry, entries)
            if dst == "segment"
            else zlib.crc32((out / entry["file"]).read_bytes())
        )
        assert entry["crc32"] == expected


def test_a_directory_without_checksums_gets_them_when_saved_again(tmp_path, fixture_dir):
    buf = TrajectoryReplayBuffer(sample_window_size=0)
    buf.load_checkpoint(str(fixture_dir))
    assert all("crc32" not in e for e in index_entries(fixture_dir))
    buf.save_checkpoint(str(tmp_path / "again"))
    for entry in index_entries(tmp_path / "again"):
        assert entry["crc32"] == zlib.crc32((tmp_path / "again" / entry["file"]).read_bytes())


# -- damage is caught --------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_silently_changed_value_fails_the_load_into_memory(tmp_path, fmt):
    path = written_dir(tmp_path, fmt)
    damage_value(path, fmt)
    buf = TrajectoryReplayBuffer(sample_window_size=0)
    with pytest.raises(CorruptTrajectoryError, match=rf"trajectory {DAMAGED - 1} fails its checksum") as info:
        buf.load_checkpoint(str(path))
    assert info.value.trajectory_id == DAMAGED - 1
    assert "verify" in str(info.value) and "on_corrupt='skip'" in str(info.value)
    assert buf.size == 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_disk_backed_sampling_never_returns_rows_of_a_damaged_trajectory(tmp_path, fmt, disk_reader):
    path = written_dir(tmp_path, fmt)
    damage_value(path, fmt)
    buf = disk_reader()
    buf.load_checkpoint(str(path))  # nothing is read yet
    raised = 0
    for _ in range(40):
        try:
            batch = buf.sample(16)
        except CorruptTrajectoryError as exc:
            assert exc.trajectory_id == DAMAGED - 1
            assert exc.path is not None and str(path) in exc.path
            raised += 1
            continue
        assert_aligned(batch, n=3)
        assert DAMAGED not in codes_of(batch)
    assert raised > 0
    assert buf.size == len(IDS)  # raising leaves the buffer as it was


@pytest.mark.parametrize("fmt", FORMATS)
def test_on_corrupt_skip_drops_the_damaged_trajectory_with_a_warning(tmp_path, fmt, disk_reader):
    path = written_dir(tmp_path, fmt)
    damage_value(path, fmt)
    buf = disk_reader(on_corrupt="skip")
    buf.load_checkpoint(str(path))
    seen: set[int] = set()
    with pytest.warns(CorruptDataWarning, match=rf"damaged trajectory {DAMAGED - 1}"):
        for _ in range(40):
            batch = buf.sample(32)
            assert_aligned(batch, n=3)
            seen |= codes_of(batch)
    assert seen == set(IDS) - {DAMAGED}
    assert buf.size == len(IDS) - 1
    assert buf.get_stats()["corrupt_skipped"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once, not at every sample
        buf.sample(64)


@pytest.mark.parametrize("fmt", FORMATS)
def test_on_corrupt_skip_at_a_load_into_memory_keeps_the_rest(tmp_path, fmt):
    path = written_dir(tmp_path, fmt)
    damage_value(path, fmt)
    buf = TrajectoryReplayBuffer(sample_window_size=0, on_corrupt="skip")
    with pytest.warns(CorruptDataWarning, match=rf"damaged trajectory {DAMAGED - 1}"):
        buf.load_checkpoint(str(path))
    assert buf.size == len(IDS) - 1
    batch = buf.sample(256)
    assert_aligned(batch, n=3)
    assert codes_of(batch) == set(IDS) - {DAMAGED}


@pytest.mark.parametrize("fmt", ["pt", "pkl"])
def test_a_truncated_file_is_named_as_damaged(tmp_path, fmt, disk_reader):
    path = written_dir(tmp_path, fmt)
    victim = next(path.glob(f"trajectory_{DAMAGED - 1}_*"))
    victim.write_bytes(victim.read_bytes()[:100])
    buf = disk_reader()
    buf.load_checkpoint(str(path))
    with pytest.raises(CorruptTrajectoryError, match=rf"{victim.name}: trajectory {DAMAGED - 1} fails"):
        for _ in range(40):
            buf.sample(16)


def test_a_truncated_segment_is_named_as_damaged(tmp_path, disk_reader):
    path = written_dir(tmp_path, "segment")
    column = segment_column_files(path, index_entries(path)[0])[0]
    column.write_bytes(column.read_bytes()[: column.stat().st_size // 3])
    buf = disk_reader()
    buf.load_checkpoint(str(path))
    with pytest.raises(CorruptTrajectoryError, match="truncated"):
        for _ in range(40):
            buf.sample(16)


def test_a_continued_auto_save_directory_checks_what_it_reads(tmp_path):
    path = written_dir(tmp_path, "pt")
    damage_value(path, "pt")
    buf = TrajectoryReplayBuffer(
        auto_save=True, auto_save_path=str(path), enable_cache=False, sample_window_size=0
    )
    try:
        with pytest.raises(CorruptTrajectoryError, match=f"trajectory {DAMAGED - 1}"):
            for _ in range(40):
                buf.sample(16)
    finally:
        buf.close()


@pytest.mark.parametrize("dst", FORMATS)
def test_a_checkpoint_of_a_damaged_buffer_never_launders_the_damage(tmp_path, dst, disk_reader):
    """Saving either refuses the damaged data or keeps it detectable: a checksum is never
    recomputed over damaged rows."""
    path = written_dir(tmp_path, "pt")
    buf = disk_reader()
    buf.load_checkpoint(str(path))
    damage_value(path, "pt")  # after the load: nothing was read yet
    out = tmp_path / "ckpt"
    try:
        buf.save_checkpoint(str(out), trajectory_format=dst)
    except CorruptTrajectoryError as exc:
        assert exc.trajectory_id == DAMAGED - 1
        assert not out.exists()
        return
    with pytest.raises(CorruptTrajectoryError, match=f"trajectory {DAMAGED - 1}"):
        TrajectoryReplayBuffer(sample_window_size=0).load_checkpoint(str(out))


@pytest.mark.parametrize("copy", [False, True])
def test_merge_never_launders_damage(tmp_path, copy):
    path = written_dir(tmp_path, "pt")
    damage_value(path, "pt")
    out = tmp_path / "merged"
    try:
        merge_or_split(str(path), str(out), copy=copy)
    except CorruptTrajectoryError as exc:
        assert copy and exc.trajectory_id == DAMAGED - 1
        assert not out.exists() and len(index_entries(path)) == len(IDS)  # sources untouched
        return
    assert not copy
    with pytest.raises(CorruptTrajectoryError):
        TrajectoryReplayBuffer(sample_window_size=0).load_checkpoint(str(out))


@pytest.mark.parametrize("value", ["abc", -1, 2**32, 1.5, True])
def test_a_malformed_crc32_in_the_index_is_refused(tmp_path, value):
    path = written_dir(tmp_path, "pt")
    index = json.loads((path / "trajectory_index.json").read_text())
    index["trajectory_index"]["1"]["crc32"] = value
    (path / "trajectory_index.json").write_text(json.dumps(index))
    with pytest.raises(CorruptBufferError, match="crc32 .* is not an unsigned 32-bit int"):
        read_directory(str(path))


def test_on_corrupt_accepts_only_raise_or_skip():
    with pytest.raises(InvalidArgumentError, match="on_corrupt must be 'raise' or 'skip'"):
        TrajectoryReplayBuffer(on_corrupt="ignore")


# -- the journal --------------------------------------------------------------------------------
def test_a_torn_journal_tail_is_cut_before_the_next_append(tmp_path):
    """A crash mid-append leaves a torn last line. The next append must not be glued onto it
    (that entry would be lost, and the journal unreadable once the line is no longer last)."""
    path = tmp_path / "buf"
    buf = TrajectoryReplayBuffer(auto_save=True, auto_save_path=str(path), sample_window_size=0)
    buf.add_trajectories([coded_trajectory(1), coded_trajectory(2)])
    buf.close()  # both entries compacted into trajectory_index.json
    entry = json.dumps(index_entries(path)[0], separators=(",", ":"))
    (path / JOURNAL).write_text(entry + "\n" + entry[:57])  # a replayed entry and a torn one

    buf = TrajectoryReplayBuffer(auto_save=True, auto_save_path=str(path), sample_window_size=0)
    buf.add_trajectories([coded_trajectory(3)])
    buf.flush()
    contents, _ = read_directory(str(path))
    assert [r.trajectory_id for r in contents.records] == [0, 1, 2]
    buf.close()
    again = TrajectoryReplayBuffer(sample_window_size=0)
    again.load_checkpoint(str(path))
    assert again.size == 3
    assert codes_of(again.sample(256)) == {1, 2, 3}
