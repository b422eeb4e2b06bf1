"""Observations stored once on disk: a ``segment`` directory written with ``dedup_next_obs``
(format version 2) leaves each paired ``next_obs`` row equal to the next step's ``curr_obs`` as a
hole in its column file, and says in a source column where every row is. Whatever the rollout,
every read (sampled batches, whole trajectories, loaded checkpoints, conversions, merge/split,
sampling copies) must give back, bit for bit, what was added and what a buffer writing version 1
segments gives; damage to any byte a read depends on must be caught; a crash must leave nothing
that reopening or the verify tool does not cut; a hostile ``segment.json`` must be refused."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TrackedBuffer as TrajectoryReplayBuffer
from test_obs_dedup import ROLLOUTS, assert_files_hold_both_observations, bits, rollout, same_bits

import rlinf_replay_buffer
from rlinf_replay_buffer import CorruptBufferError, CorruptTrajectoryError, Trajectory
from rlinf_replay_buffer.directory import read_directory
from rlinf_replay_buffer.formats.segment import SegmentStore
from rlinf_replay_buffer.integrity import rows_checksum
from rlinf_replay_buffer.journal import INDEX, parse_journal
from rlinf_replay_buffer.schema import Schema
from rlinf_replay_buffer.tools.info import describe_directory
from rlinf_replay_buffer.tools.merge_split import merge_or_split
from rlinf_replay_buffer.tools.verify import verify_directory
from rlinf_replay_buffer.trajectory import align

SIZES = {
    "images": {"hw": 80},  # 19,200-byte image rows: read with one pread each, long enough to be holes
    "state": {"hw": 4},  # 48-byte image rows and 36-byte states: read through the mappings
}
FIELDS = ("curr_obs", "next_obs", "actions", "rewards", "dones")
TESTS = Path(__file__).resolve().parent


# -- helpers ------------------------------------------------------------------------------------
def disk_buffer(path: Path, dedup: bool = True, **kwargs) -> TrajectoryReplayBuffer:
    """An auto-saving ``segment`` buffer without a cache: every sample and read is from disk."""
    return TrajectoryReplayBuffer(
        seed=7,
        auto_save=True,
        auto_save_path=str(path),
        trajectory_format="segment",
        enable_cache=False,
        sample_window_size=0,
        dedup_next_obs=dedup,
        **kwargs,
    )


def memory_buffer(seed: int = 11, **kwargs) -> TrajectoryReplayBuffer:
    return TrajectoryReplayBuffer(seed=seed, sample_window_size=0, **kwargs)


def segment_checkpoint(path: Path, added: list[Trajectory], dedup: bool = True) -> Path:
    buf = memory_buffer(dedup_next_obs=dedup)
    buf.add_trajectories(added)
    buf.save_checkpoint(str(path), trajectory_format="segment")
    return path


def segment_meta(segment: Path) -> dict:
    return json.loads((segment / "segment.json").read_text())


def column_index(segment: Path, name: str) -> int:
    return [c["name"] for c in segment_meta(segment)["columns"]].index(name)


def sources(segment: Path, name: str) -> np.ndarray:
    """The source column of the paired column ``name`` (int64 ``[rows]``)."""
    return np.fromfile(segment / f"src-{column_index(segment, name):03d}.bin", dtype=np.int64)


def code_of(traj: Trajectory) -> int:
    return int(traj.actions[0, 0, 0])


def assert_same_trajectory(got: Trajectory, want: Trajectory) -> None:
    for name in FIELDS:
        assert same_bits(getattr(got, name), getattr(want, name)), name


def assert_rows_are_the_added_rows(batch: dict, added: dict[int, Trajectory]) -> None:
    """Every sampled row is the row its actions ``(code, t, b)`` name, in every observation."""
    for i, (code, t, b) in enumerate(batch["actions"].to(torch.int64).tolist()):
        for field in ("curr_obs", "next_obs"):
            for key, value in getattr(added[code], field).items():
                assert bits(batch[field][key][i]) == bits(value[t, b]), (field, key, code, t, b)


def holes_supported(directory: Path) -> bool:
    """Whether the file system of ``directory`` stores nothing for a file's holes."""
    probe = directory / "hole-probe"
    with open(probe, "wb") as f:
        f.truncate(8 << 20)
        f.seek((8 << 20) - 1)
        f.write(b"x")
        f.flush()
        os.fsync(f.fileno())
    allocated = os.stat(probe).st_blocks * 512
    probe.unlink()
    return allocated < 1 << 20


def tree_hashes(root: Path, skip: Path | None = None) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and (skip is None or skip not in p.parents):
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_files_hold_exactly_the_indexed_rows(path: Path) -> None:
    """Every column file ``NNN.bin`` and source file ``src-NNN.bin`` of every segment ends at the
    last row the index names."""
    contents, schema = read_directory(str(path))
    ends: dict[str, int] = {}
    for r in contents.records:
        ends[r.file] = max(ends.get(r.file, 0), r.row + r.num_transitions)
    specs = list(schema.values())
    checked = 0
    for segment in path.glob("seg-*"):
        for file in segment.glob("*.bin"):
            index = int(file.name.removeprefix("src-").removesuffix(".bin"))
            row_bytes = 8 if file.name.startswith("src-") else specs[index].row_bytes
            assert file.stat().st_size == ends[segment.name] * row_bytes, file
            checked += file.name.startswith("src-")
    assert checked


# -- what is on disk ----------------------------------------------------------------------------
def test_a_segment_stores_next_obs_rows_equal_to_the_next_curr_obs_as_holes(tmp_path):
    T, B = 20, 3
    # rollouts whose differing rows are few enough that no comparison gives up (see dedup.py)
    added = [rollout(i, steps=T, envs=B, differ="dones", hw=80) for i in (0, 1, 4)]
    segment = segment_checkpoint(tmp_path / "ckpt", added) / "seg-000000"
    meta = segment_meta(segment)
    names = [c["name"] for c in meta["columns"]]
    assert meta["format_version"] == 2
    assert {(names[p["curr_obs"]], names[p["next_obs"]], p["source"]) for p in meta["pairs"]} == {
        (
            "curr_obs.main_images",
            "next_obs.main_images",
            f"src-{names.index('next_obs.main_images'):03d}.bin",
        ),
        ("curr_obs.states", "next_obs.states", f"src-{names.index('next_obs.states'):03d}.bin"),
    }
    n = T * B
    total = n * len(added)
    src = sources(segment, "next_obs.main_images")
    want = np.arange(total)
    for k, traj in enumerate(added):  # a row is stored iff it is in the last step or differs
        nxt = traj.next_obs["main_images"].reshape(n, -1)
        curr = traj.curr_obs["main_images"].reshape(n, -1)
        for r in range(n - B):
            if torch.equal(nxt[r], curr[r + B]):
                want[k * n + r] += B
    assert np.array_equal(src, want)
    stored = int(np.count_nonzero(src == np.arange(total)))
    assert B * len(added) < stored < total // 2  # episode ends and last steps only
    column = segment / f"{names.index('next_obs.main_images'):03d}.bin"
    row_bytes = 80 * 80 * 3
    assert column.stat().st_size == total * row_bytes  # row r stays at byte r * row_bytes
    assert (segment / f"{names.index('curr_obs.main_images'):03d}.bin").stat().st_size == total * row_bytes
    if holes_supported(tmp_path):
        allocated = column.stat().st_blocks * 512
        assert allocated <= stored * row_bytes + 2 * 4096 * stored  # the stored rows, block-rounded
        assert allocated < column.stat().st_size // 2


def test_without_dedup_or_without_pairs_a_segment_is_version_1_as_before(tmp_path):
    segment = segment_checkpoint(tmp_path / "off", [rollout(0)], dedup=False) / "seg-000000"
    meta = segment_meta(segment)
    assert set(meta) == {"format_version", "columns"} and meta["format_version"] == 1
    assert sorted(p.name for p in segment.iterdir()) == [
        *(f"{i:03d}.bin" for i in range(len(meta["columns"]))),
        "segment.json",
    ]
    no_pairs = rollout(1, states=False)
    no_pairs.next_obs = {"goal": no_pairs.next_obs["main_images"]}  # no curr_obs partner
    segment = segment_checkpoint(tmp_path / "unpaired", [no_pairs]) / "seg-000000"
    assert set(segment_meta(segment)) == {"format_version", "columns"}
    assert not list(segment.glob("src-*"))


def test_a_rollout_differing_everywhere_stores_every_row_and_costs_only_its_source_column(tmp_path):
    added = [rollout(i, steps=20, envs=3, differ="all", hw=80) for i in range(3)]
    on = segment_checkpoint(tmp_path / "on", added) / "seg-000000"
    off = segment_checkpoint(tmp_path / "off", added, dedup=False) / "seg-000000"
    total = 3 * 20 * 3
    for name in ("next_obs.main_images", "next_obs.states"):
        assert np.array_equal(sources(on, name), np.arange(total))  # every row stored
    columns = sorted(p.name for p in off.glob("*.bin"))
    assert sorted(p.name for p in on.glob("[0-9]*.bin")) == columns
    extra = sorted(p.name for p in on.glob("src-*.bin"))
    assert len(extra) == 2
    for name in extra:
        assert (on / name).stat().st_size == total * 8
    for name in columns:
        assert (on / name).stat().st_size == (off / name).stat().st_size
    blocks_on = sum((on / name).stat().st_blocks for name in columns)
    blocks_off = sum((off / name).stat().st_blocks for name in columns)
    assert abs(blocks_on - blocks_off) <= 8 * len(columns)  # a block of rounding per file at most


def test_signed_zeros_and_nan_payloads_are_stored_and_read_back_bit_for_bit(tmp_path):
    T, B, W = 8, 2, 1024  # 4096-byte rows: a single equal row is a hole
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(T + 1, B, W, generator=g)
    frames[..., :8] = 0.0
    curr, nxt = frames[:-1].clone(), frames[1:].clone()
    nan_a = torch.tensor([0x7FC00001], dtype=torch.int32).view(torch.float32)[0]
    nan_b = torch.tensor([0x7FC00002], dtype=torch.int32).view(torch.float32)[0]
    nxt[2, 0, 0] = -0.0  # equal as a value to curr[3, 0, 0] (0.0), not as bits: row 4 stored
    curr[4, 1, 5], nxt[3, 1, 5] = nan_a, nan_b  # two NaNs of other payloads: row 7 stored
    curr[5, 0, 7], nxt[4, 0, 7] = nan_a, nan_a  # the same NaN: row 8 is a hole
    traj = Trajectory(
        max_episode_length=T,
        actions=torch.zeros(T, B, 3),
        rewards=torch.zeros(T, B, 1),
        dones=torch.zeros(T, B, 1, dtype=torch.bool),
        curr_obs={"states": curr},
        next_obs={"states": nxt},
    )
    path = segment_checkpoint(tmp_path / "ckpt", [traj])
    src = sources(path / "seg-000000", "next_obs.states")
    assert np.flatnonzero(src == np.arange(T * B)).tolist() == [4, 7, T * B - 2, T * B - 1]
    assert src[8] == 8 + B
    loaded = memory_buffer()
    loaded.load_checkpoint(str(path))
    got = loaded.get_trajectory(0)
    assert bits(got.next_obs["states"]) == bits(nxt) and bits(got.curr_obs["states"]) == bits(curr)
    disk = disk_buffer(tmp_path / "disk")
    disk.load_checkpoint(str(path))
    assert bits(disk.get_trajectory(0).next_obs["states"]) == bits(nxt)


def test_an_append_that_does_not_know_its_envs_stores_every_row(tmp_path):
    traj = rollout(0, steps=10, envs=2, hw=80)
    rows = align(traj).flat()
    schema = Schema.of_columns(rows, lead_dims=1)
    store = SegmentStore(str(tmp_path), schema)
    assert store.append(rows) == ("seg-000000", 0)  # envs unknown
    assert store.append(rows, envs=2) == ("seg-000000", 20)
    store.close()
    src = sources(tmp_path / "seg-000000", "next_obs.main_images")
    assert np.array_equal(src[:20], np.arange(20))
    assert np.array_equal(src[20:], np.r_[np.arange(22, 40), 38, 39])
    reader = SegmentStore(str(tmp_path), schema)
    for first in (0, 20):
        assert same_bits(reader.read("seg-000000", first, 20), rows)
        assert reader.checksum("seg-000000", first, 20) == rows_checksum(rows, schema)


# -- reads ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows", list(SIZES))
@pytest.mark.parametrize("case", list(ROLLOUTS))
def test_sampled_batches_are_bit_identical_with_and_without_dedup(tmp_path, case, rows):
    added = {i: rollout(i, **{**ROLLOUTS[case], **SIZES[rows]}) for i in range(6)}
    on, off = disk_buffer(tmp_path / "on"), disk_buffer(tmp_path / "off", dedup=False)
    for i in range(0, 6, 2):
        for buf in (on, off):
            buf.add_trajectories([added[i], added[i + 1]])
    on.flush()
    off.flush()
    for _ in range(3):
        assert same_bits(on.sample(128), off.sample(128))
    assert_rows_are_the_added_rows(on.sample(256), added)
    assert segment_meta(tmp_path / "on" / "seg-000000")["format_version"] == 2
    assert segment_meta(tmp_path / "off" / "seg-000000")["format_version"] == 1


@pytest.mark.parametrize("rows", list(SIZES))
@pytest.mark.parametrize("case", ["episode ends", "random differences", "one env", "one step"])
def test_whole_trajectories_and_loaded_checkpoints_are_what_was_added(tmp_path, case, rows):
    added = {i: rollout(i, **{**ROLLOUTS[case], **SIZES[rows]}) for i in range(5)}
    on = disk_buffer(tmp_path / "on")
    ids = on.add_trajectories(list(added.values()))
    on.flush()
    for tid in ids:  # read from the segment, next_obs rebuilt from its sources
        assert_same_trajectory(on.get_trajectory(tid), added[tid])
    for traj in on.iter_trajectories():
        assert_same_trajectory(traj, added[code_of(traj)])
    on.close()
    off = disk_buffer(tmp_path / "off", dedup=False)
    off.add_trajectories(list(added.values()))
    off.close()
    loaded = []
    for source in ("on", "off"):
        for dedup in (True, False):
            buf = memory_buffer(seed=3, dedup_next_obs=dedup)
            buf.load_checkpoint(str(tmp_path / source))
            for traj in buf.iter_trajectories():
                assert_same_trajectory(traj, added[code_of(traj)])
            loaded.append(buf)
    batches = [buf.sample(200) for buf in loaded]
    for batch in batches[1:]:
        assert same_bits(batch, batches[0])
    assert_rows_are_the_added_rows(batches[0], added)


def test_reads_of_a_segment_still_being_appended_to_are_whole(tmp_path):
    """Samples between adds remap the growing segment; pending rows and written rows agree."""
    buf = disk_buffer(tmp_path / "on")
    reference = memory_buffer(seed=7)
    added = {}
    for i in range(8):
        added[i] = rollout(i, steps=7, envs=2, differ="dones", hw=80)
        buf.add_trajectories([added[i]])
        reference.add_trajectories([added[i]])
        if i % 3 == 2:
            buf.flush()
        batch = buf.sample(64)
        assert same_bits(batch, reference.sample(64))
        assert_rows_are_the_added_rows(batch, added)
    buf.flush()
    assert same_bits(buf.sample(300), reference.sample(300))


# -- versions side by side ----------------------------------------------------------------------
@pytest.mark.parametrize(("before", "after"), [(False, True), (True, False)])
def test_a_continued_directory_gets_a_segment_of_its_own_version_beside_the_older_ones(
    tmp_path, before, after
):
    path = tmp_path / "buf"
    added = {i: rollout(i, steps=6, envs=2, differ="dones", hw=80) for i in range(6)}
    first = disk_buffer(path, dedup=before)
    first.add_trajectories([added[i] for i in range(3)])
    first.close()
    again = disk_buffer(path, dedup=after)
    again.add_trajectories([added[i] for i in range(3, 6)])
    again.flush()
    versions = [segment_meta(s)["format_version"] for s in sorted(path.glob("seg-*"))]
    assert versions == [2 if before else 1, 2 if after else 1]
    for tid in range(6):
        assert_same_trajectory(again.get_trajectory(tid), added[tid])
    assert_rows_are_the_added_rows(again.sample(300), added)
    again.close()
    report = verify_directory(str(path))
    assert report.ok and report.trajectories == 6, report.problems
    loaded = memory_buffer()
    loaded.load_checkpoint(str(path))
    assert sorted(code_of(t) for t in loaded.iter_trajectories()) == list(range(6))
    for traj in loaded.iter_trajectories():
        assert_same_trajectory(traj, added[code_of(traj)])


# -- damage --------------------------------------------------------------------------------------
DAMAGE = ["curr_obs row a hole reads", "stored next_obs row", "source entry", "source entry out of range"]


@pytest.mark.parametrize("where", DAMAGE)
def test_verify_and_the_first_read_detect_damage_to_any_byte_a_read_depends_on(tmp_path, where):
    T, B = 10, 2
    n = T * B
    added = [rollout(i, steps=T, envs=B, differ="dones", hw=80) for i in range(3)]
    path = segment_checkpoint(tmp_path / "ckpt", added)
    segment = path / "seg-000000"
    src = sources(segment, "next_obs.main_images")
    rows = np.arange(n, 2 * n)  # trajectory 1
    hole = int(next(r for r in rows[: n - 4] if src[r] == r + B))
    row_bytes = 80 * 80 * 3
    if where == "curr_obs row a hole reads":
        file, offset = f"{column_index(segment, 'curr_obs.main_images'):03d}.bin", (hole + B) * row_bytes + 5
    elif where == "stored next_obs row":
        stored = int(next(r for r in rows if src[r] == r))
        file, offset = f"{column_index(segment, 'next_obs.main_images'):03d}.bin", stored * row_bytes + 5
    else:  # the lowest byte of a source entry (another row of the trajectory), or its highest
        file = f"src-{column_index(segment, 'next_obs.main_images'):03d}.bin"
        offset = hole * 8 + (7 if where.endswith("out of range") else 0)
    flip = 0x01 if where == "source entry" else 0x80  # to a later row of the trajectory, or negative
    with open(segment / file, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ flip]))
    report = verify_directory(str(path))
    assert {p.trajectory_id for p in report.problems} == {1}
    kind = "unreadable" if where.endswith("out of range") else "checksum"
    assert [p.kind for p in report.problems] == [kind]
    if where.endswith("out of range"):
        assert "names source row" in report.problems[0].message
    with pytest.raises(CorruptTrajectoryError) as caught:  # loading reads (and checks) every row
        memory_buffer().load_checkpoint(str(path))
    assert caught.value.trajectory_id == 1
    disk = disk_buffer(tmp_path / "disk")
    disk.load_checkpoint(str(path))  # indexes only; the first read of trajectory 1 checks it
    assert_same_trajectory(disk.get_trajectory(0), added[0])
    with pytest.raises(CorruptTrajectoryError) as caught:
        disk.get_trajectory(1)
    assert caught.value.trajectory_id == 1
    repaired = verify_directory(str(path), repair=True)
    assert repaired.repaired and verify_directory(str(path)).ok
    loaded = memory_buffer()
    loaded.load_checkpoint(str(path))
    assert sorted(code_of(t) for t in loaded.iter_trajectories()) == [0, 2]


# -- hostile segment.json -------------------------------------------------------------------------
def set_in_pair(key, value):
    def change(meta: dict, names: list[str]) -> None:
        meta["pairs"][0][key] = value(meta, names) if callable(value) else value

    return change


HOSTILE = {
    "source with a slash": (set_in_pair("source", "sub/src-000.bin"), "names source file"),
    "source leading out": (set_in_pair("source", "../../outside.bin"), "names source file"),
    "absolute source": (set_in_pair("source", "/etc/passwd"), "names source file"),
    "another column's source": (set_in_pair("source", "src-000.bin"), "names source file"),
    "index past the columns": (
        set_in_pair("next_obs", lambda m, _: len(m["columns"])),
        "column index outside",
    ),
    "negative index": (set_in_pair("curr_obs", -1), "column index outside"),
    "index as a string": (set_in_pair("curr_obs", "3"), "column index outside"),
    "index as a bool": (set_in_pair("curr_obs", True), "column index outside"),
    "pair of unrelated columns": (
        set_in_pair("curr_obs", lambda _, names: names.index("actions")),
        "does not pair a next_obs column",
    ),
    "pair the other way round": (
        lambda m, _: m["pairs"][0].update(
            curr_obs=m["pairs"][0]["next_obs"], next_obs=m["pairs"][0]["curr_obs"]
        ),
        "does not pair a next_obs column",
    ),
    "pair of another dtype": (
        lambda m, names: m["pairs"].append(
            {
                "curr_obs": names.index("curr_obs.x"),
                "next_obs": names.index("next_obs.x"),
                "source": "src-999.bin",
            }
        ),
        "different dtype or row shape",
    ),
    "a column paired twice": (lambda m, _: m["pairs"].append(dict(m["pairs"][0])), "a second time"),
    "no pairs": (lambda m, _: m.pop("pairs"), "needs a non-empty list of pairs"),
    "pairs not a list": (lambda m, _: m.update(pairs={"0": 1}), "needs a non-empty list of pairs"),
    "a pair with another key": (
        set_in_pair("offset", 0),
        "is not an object of curr_obs, next_obs and source",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_version_2_segment_json_is_refused_and_touches_nothing_outside(tmp_path, case):
    change, message = HOSTILE[case]
    added = [rollout(i, hw=16) for i in range(2)]
    for traj in added:
        traj.curr_obs["x"] = torch.zeros(6, 2, 16)
        traj.next_obs["x"] = torch.zeros(6, 2, 16, dtype=torch.float64)  # not a pair: another dtype
    work = tmp_path / "work"
    path = segment_checkpoint(work / "ckpt", added)
    (tmp_path / "outside.bin").write_bytes(b"outside" * 100)
    segment = path / "seg-000000"
    meta = segment_meta(segment)
    change(meta, [c["name"] for c in meta["columns"]])
    (segment / "segment.json").write_text(json.dumps(meta))
    outside = tree_hashes(tmp_path, skip=work)
    with pytest.raises(CorruptBufferError, match=message):
        memory_buffer().load_checkpoint(str(path))
    disk = disk_buffer(tmp_path / "work" / "disk")
    disk.load_checkpoint(str(path))
    with pytest.raises(CorruptBufferError, match=message):
        disk.sample(8)
    report = verify_directory(str(path))
    assert not report.ok and all(message in p.message for p in report.problems), report.problems
    verify_directory(str(path), repair=True)
    assert tree_hashes(tmp_path, skip=work) == outside


# -- crashes ------------------------------------------------------------------------------------
KILLED = {"steps": 8, "envs": 2, "differ": "dones", "hw": 48}  # 6,912-byte image rows: holes


def write_until_killed(directory: str, out: int) -> None:
    """The writing child: adds rollouts (code = id) one by one, flushing every second add and
    then reporting ``ack N`` (ids below ``N`` are durable), until killed."""
    buffer = TrajectoryReplayBuffer(
        seed=0,
        auto_save=True,
        auto_save_path=directory,
        trajectory_format="segment",
        cache_size=1,
        sample_window_size=0,
    )
    code = buffer.trajectory_counter
    while True:
        buffer.add_trajectories([rollout(code, **KILLED)])
        code += 1
        if code % 2 == 0:
            buffer.flush()
            os.write(out, f"ack {code}\n".encode())
        time.sleep(0.001)


def indexed_ends(directory: Path) -> dict[str, int]:
    """Segment -> rows the index and journal name (read while the writer is stopped)."""
    entries = []
    if (directory / INDEX).exists():
        entries += list(json.loads((directory / INDEX).read_bytes())["trajectory_index"].values())
    journal, _, _ = parse_journal(str(directory))
    entries += [e for e in journal if not e.get("removed")]
    ends: dict[str, int] = {}
    for e in entries:
        ends[e["file"]] = max(ends.get(e["file"], 0), e["row"] + e["num_samples"])
    return ends


def source_tail(directory: Path) -> bool:
    """A source column holds entries past the last row the index names, in a segment the index
    names rows of: an append not committed yet."""
    ends = indexed_ends(directory)
    for segment in directory.glob("seg-*"):
        rows = ends.get(segment.name, 0)
        if rows and any(f.stat().st_size > rows * 8 for f in segment.glob("src-*.bin")):
            return True
    return False


def kill_in_source_tail(directory: Path, log: Path) -> int:
    """Start a writer process on ``directory`` (:func:`write_until_killed`), let it acknowledge a few
    flushes, step it (SIGSTOP, look, SIGCONT) until a source column holds uncommitted entries,
    SIGKILL it there; return the acknowledged count."""
    library = Path(rlinf_replay_buffer.__file__).resolve().parent.parent  # the one under test
    code = (
        f"import sys; sys.path[:0] = [{str(library)!r}, {str(TESTS)!r}]; "
        f"import {__name__} as t; t.write_until_killed(sys.argv[1], 1)"
    )
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(directory)], stdout=subprocess.PIPE, stderr=err
        )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    acked, buf, caught = 0, b"", False
    try:
        deadline = time.monotonic() + 120
        while acked < 6 and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.05)[0]:
                chunk = os.read(fd, 1 << 16)
                assert chunk, f"the writer exited:\n{log.read_text()[-3000:]}"
                buf += chunk
                *lines, buf = buf.split(b"\n")
                acked = max([acked, *(int(x.split()[1]) for x in lines)])
        assert acked >= 6, f"the writer acknowledged nothing:\n{log.read_text()[-3000:]}"
        while not caught and time.monotonic() < deadline:
            os.kill(proc.pid, signal.SIGSTOP)
            os.waitpid(proc.pid, os.WUNTRACED)
            caught = source_tail(directory)
            if not caught:
                os.kill(proc.pid, signal.SIGCONT)
                time.sleep(random.uniform(0.0, 0.003))
    finally:
        proc.kill()  # SIGKILL, where it was stopped
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        returncode = proc.wait()
        buf += proc.stdout.read()  # acks written before the kill count
        proc.stdout.close()
    assert returncode == -signal.SIGKILL
    acked = max([acked, *(int(x.split()[1]) for x in buf.split(b"\n") if x)])
    assert caught, "the writer was never stopped with uncommitted source entries"
    return acked


def test_a_killed_append_leaves_source_entries_that_reopening_and_verify_repair_cut(tmp_path):
    directory = tmp_path / "buf"
    acked = kill_in_source_tail(directory, tmp_path / "child.log")
    contents, _ = read_directory(str(directory))  # loads as the kill left it
    listed = [r.trajectory_id for r in contents.records]
    assert set(range(acked)) <= set(listed) and listed == sorted(listed)
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    report = verify_directory(str(copy))
    assert report.ok and any("past row" in p.message for p in report.notes), report.notes
    verify_directory(str(copy), repair=True)
    assert_files_hold_exactly_the_indexed_rows(copy)
    with disk_buffer(directory) as reopened:
        assert_files_hold_exactly_the_indexed_rows(directory)  # reopening cut them
        for tid in listed:
            assert_same_trajectory(reopened.get_trajectory(tid), rollout(tid, **KILLED))
        new = reopened.trajectory_counter
        reopened.add_trajectories([rollout(new, **KILLED)])
        reopened.flush()
        assert_same_trajectory(reopened.get_trajectory(new), rollout(new, **KILLED))
    for path in (directory, copy):
        loaded = memory_buffer()
        loaded.load_checkpoint(str(path))
        for traj in loaded.iter_trajectories():
            assert_same_trajectory(traj, rollout(code_of(traj), **KILLED))
        assert verify_directory(str(path)).ok


# -- tools and conversions ------------------------------------------------------------------------
def test_merge_and_split_of_version_2_directories_keep_every_row(tmp_path):
    added = {i: rollout(i, steps=6, envs=2, differ="dones", hw=80) for i in range(7)}
    sources_dir = tmp_path / "sources"
    segment_checkpoint(sources_dir / "rank_0", [added[i] for i in range(4)])
    segment_checkpoint(sources_dir / "rank_1", [added[i] for i in range(4, 7)], dedup=False)
    merged = tmp_path / "merged"
    result = merge_or_split(str(sources_dir), str(merged), copy=True)
    assert result.trajectories == 7
    assert segment_meta(merged / "seg-000000")["format_version"] == 2
    assert verify_directory(str(merged)).ok
    split = tmp_path / "split"
    merge_or_split(str(merged), str(split), split_count=5, copy=True)
    for path, count in ((merged, 7), (split, 5)):
        loaded = memory_buffer()
        loaded.load_checkpoint(str(path))
        codes = sorted(code_of(t) for t in loaded.iter_trajectories())
        assert len(codes) == count
        for traj in loaded.iter_trajectories():
            assert_same_trajectory(traj, added[code_of(traj)])


@pytest.mark.parametrize("fmt", ["pt", "pkl"])
def test_a_version_2_directory_converted_to_files_holds_both_observations_in_full(tmp_path, fmt):
    added = {i: rollout(i, steps=6, envs=2, differ="dones", hw=80) for i in range(4)}
    source = disk_buffer(tmp_path / "v2")
    source.add_trajectories(list(added.values()))
    source.flush()
    source.save_checkpoint(str(tmp_path / "files"), trajectory_format=fmt)  # read from the segment
    assert_files_hold_both_observations(tmp_path / "files", fmt, added, 4)


def test_a_version_2_directory_exports_to_parquet_and_back(tmp_path):
    pytest.importorskip("pyarrow")
    from rlinf_replay_buffer.tools.parquet import export_parquet, import_parquet

    added = {i: rollout(i, steps=6, envs=2, differ="random", hw=8) for i in range(3)}
    path = segment_checkpoint(tmp_path / "v2", list(added.values()))
    export_parquet(str(path), str(tmp_path / "out.parquet"))
    import_parquet(str(tmp_path / "out.parquet"), str(tmp_path / "back"), trajectory_format="segment")
    assert segment_meta(tmp_path / "back" / "seg-000000")["format_version"] == 2
    loaded = memory_buffer()
    loaded.load_checkpoint(str(tmp_path / "back"))
    for traj in loaded.iter_trajectories():
        assert_same_trajectory(traj, added[code_of(traj)])


def test_info_and_disk_bytes_count_segment_rows_at_their_size_as_added(tmp_path):
    added = [rollout(i, steps=10, envs=2, hw=80) for i in range(3)]
    on = disk_buffer(tmp_path / "on")
    on.add_trajectories(added)
    on.flush()
    off = disk_buffer(tmp_path / "off", dedup=False)
    off.add_trajectories(added)
    off.flush()
    assert on.get_stats()["disk_bytes"] == off.get_stats()["disk_bytes"] > 0
    on.close()
    off.close()
    assert describe_directory(str(tmp_path / "on")).bytes == describe_directory(str(tmp_path / "off")).bytes


def test_sampling_copies_store_observations_once_and_sample_what_memory_samples(tmp_path):
    copies = tmp_path / "copies"
    copies.mkdir()
    disk = TrajectoryReplayBuffer(
        seed=7,
        sample_window_size=0,
        cache_size=1,
        auto_save=True,
        auto_save_path=str(tmp_path / "pt"),
        trajectory_format="pt",
        sampling_copy_dir=str(copies),
        dedup_next_obs=False,  # copies store observations once whatever the setting
    )
    memory = memory_buffer(seed=7)
    added = {i: rollout(i, steps=10, envs=2, differ="dones", hw=80) for i in range(5)}
    for traj in added.values():
        disk.add_trajectories([traj])
        memory.add_trajectories([traj])
    disk.flush()
    for _ in range(4):  # the first sample reads the files and copies them; the rest read copies
        batch = disk.sample(200)
        assert same_bits(batch, memory.sample(200))
    assert_rows_are_the_added_rows(batch, added)
    segments = list(copies.glob("rlinf-sampling-copy-*/seg-*"))
    assert segments
    for segment in segments:
        assert segment_meta(segment)["format_version"] == 2
        src = sources(segment, "next_obs.main_images")
        assert np.count_nonzero(src != np.arange(len(src)))  # rows read from curr_obs
