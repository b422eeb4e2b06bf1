"""The fast loading paths give exactly what the plain ones give.

Loading a directory reads its index from the binary sidecar ``trajectory_index.columns`` when that
matches ``trajectory_index.json`` (records then built only when asked for), and reads ``pt``
files and the storages of ``pkl`` files directly instead of through ``torch.load``. Each path is
checked here against the plain one (the sidecar removed, the direct reader switched off): same
ids, records, trajectories, counters and samples with the same seed, in every format, for RLinf's
directories, with a journal left by a crash, for rank shares, and with a sidecar that is stale,
damaged or hostile (ignored, never trusted). Nothing here is timed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import pickletools
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    TrackedBuffer,
    assert_same_batch,
    assert_same_trajectory,
    coded_trajectory,
    flat_columns,
    tensor_bits,
)

from rlinf_replay_buffer import index_columns
from rlinf_replay_buffer.directory import read_directory
from rlinf_replay_buffer.errors import CorruptBufferError
from rlinf_replay_buffer.formats import pkl, pt, torchsave
from rlinf_replay_buffer.index import TrajectoryIndex
from rlinf_replay_buffer.journal import INDEX, read_index_parts, write_index
from rlinf_replay_buffer.record_table import RecordTable
from rlinf_replay_buffer.safe_open import open_regular

FORMATS = ("pt", "pkl", "segment")
_MADE: list[TrackedBuffer] = []


def new_buffer(**kwargs) -> TrackedBuffer:
    """A buffer closed after the test (its open files and mappings go with it)."""
    buf = TrackedBuffer(**kwargs)
    _MADE.append(buf)
    return buf


@pytest.fixture(autouse=True)
def _close_made_buffers():
    yield
    while _MADE:
        _MADE.pop().close()


SIDECAR = index_columns.NAME
COUNT = 9


def written(path: Path, fmt: str, count: int = COUNT, **kwargs) -> Path:
    """A closed auto-save directory of ``count`` coded trajectories."""
    buf = new_buffer(
        auto_save=True,
        auto_save_path=str(path),
        trajectory_format=fmt,
        cache_size=2,
        sample_window_size=0,
        **kwargs,
    )
    buf.add_trajectories([coded_trajectory(i, num_envs=1 + i % 2) for i in range(count)])
    buf.close()
    return path


def without_sidecar(path: Path, where: Path) -> Path:
    """A copy of the directory ``path`` that has no sidecar (its JSON index is parsed)."""
    shutil.copytree(path, where)
    (where / SIDECAR).unlink(missing_ok=True)
    return where


def loaded(path: Path) -> TrackedBuffer:
    buf = new_buffer(seed=7, sample_window_size=0, cache_size=3)
    buf.load_checkpoint(str(path))
    return buf


def codes(buf: TrackedBuffer) -> list[int]:
    """Which coded trajectories a buffer holds, in order (a coded trajectory's values encode it)."""
    return [int(t.curr_obs["states"].flatten()[0]) // 1000 for t in buf.iter_trajectories()]


def assert_same_contents(fast: Path, slow: Path, share: tuple[int, int] = (0, 1)) -> None:
    """``read_directory`` of the two directories: the same records, ids, counter and schema."""
    a, schema_a = read_directory(str(fast), share)
    b, schema_b = read_directory(str(slow), share)
    assert isinstance(a.records, RecordTable) and not isinstance(b.records, RecordTable)
    rebased = [dataclasses.replace(r, directory=a.path) for r in b.records]
    assert list(a.records) == rebased
    assert (a.all_ids, a.counter, a.seed, a.fmt, a.journal_entries) == (
        b.all_ids,
        b.counter,
        b.seed,
        b.fmt,
        b.journal_entries,
    )
    assert schema_a == schema_b


def assert_same_buffer(a: TrackedBuffer, b: TrackedBuffer) -> None:
    """Two buffers hold the same trajectories and sample the same batches."""
    stats_a, stats_b = a.get_stats(), b.get_stats()
    for stats in (stats_a, stats_b):
        stats.pop("disk_bytes")  # the sidecar is counted in one directory only
    assert stats_a == stats_b
    for got, want in zip(a.iter_trajectories(), b.iter_trajectories(), strict=True):
        assert_same_trajectory(got, want)
    for n in (1, 17, 200):
        assert_same_batch(a.sample(n), b.sample(n))


# -- the sidecar -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_closed_directory_has_a_sidecar_that_gives_its_index_as_columns(tmp_path, fmt):
    path = written(tmp_path / "d", fmt)
    assert (path / SIDECAR).is_file()
    parts = read_index_parts(str(path))
    assert parts.columns is not None and parts.columns.ids.tolist() == list(range(COUNT))
    assert read_index_parts(str(path), columns=False).columns is None


@pytest.mark.parametrize("fmt", FORMATS)
def test_reading_a_directory_through_its_sidecar_gives_the_records_the_json_index_gives(tmp_path, fmt):
    path = written(tmp_path / "d", fmt)
    assert_same_contents(path, without_sidecar(path, tmp_path / "plain"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_loading_through_the_sidecar_gives_the_same_buffer_as_parsing_the_json_index(tmp_path, fmt):
    path = written(tmp_path / "d", fmt)
    plain = without_sidecar(path, tmp_path / "plain")
    assert_same_buffer(loaded(path), loaded(plain))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("world", [2, 3])
def test_rank_shares_read_through_the_sidecar_are_the_shares_of_the_json_index(tmp_path, fmt, world):
    path = written(tmp_path / "d", fmt)
    plain = without_sidecar(path, tmp_path / "plain")
    for rank in range(world):
        assert_same_contents(path, plain, (rank, world))
        a, b = (new_buffer(seed=3, sample_window_size=0, cache_size=1) for _ in range(2))
        a.load_checkpoint(str(path), is_distributed=True, local_rank=rank, world_size=world)
        b.load_checkpoint(str(plain), is_distributed=True, local_rank=rank, world_size=world)
        assert_same_buffer(a, b)


@pytest.mark.parametrize("fmt", FORMATS)
def test_reopening_for_auto_save_through_the_sidecar_gives_the_same_buffer(tmp_path, fmt):
    path = written(tmp_path / "d", fmt)
    plain = without_sidecar(path, tmp_path / "plain")
    a, b = (
        new_buffer(
            seed=5,
            auto_save=True,
            auto_save_path=str(p),
            trajectory_format=fmt,
            cache_size=2,
            sample_window_size=0,
        )
        for p in (path, plain)
    )
    assert_same_buffer(a, b)
    for buf in (a, b):
        buf.add_trajectories([coded_trajectory(COUNT + i) for i in range(3)])
        buf.close()
    assert (plain / SIDECAR).is_file()  # written at the compaction
    assert_same_buffer(loaded(path), loaded(plain))
    for directory in (path, plain):
        assert_same_contents(directory, without_sidecar(directory, tmp_path / f"{directory.name}-plain"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_reopening_and_closing_without_a_change_leaves_the_index_as_it_was(tmp_path, fmt):
    path = written(tmp_path / "d", fmt)
    before = {name: (path / name).stat().st_ino for name in (INDEX, SIDECAR)}
    buf = new_buffer(auto_save=True, auto_save_path=str(path), trajectory_format=fmt, cache_size=2)
    buf.sample(5)
    buf.close()
    assert {name: (path / name).stat().st_ino for name in (INDEX, SIDECAR)} == before
    buf = new_buffer(auto_save=True, auto_save_path=str(path), trajectory_format=fmt, cache_size=2)
    buf.add_trajectories([coded_trajectory(COUNT)])
    buf.close()
    assert (path / INDEX).stat().st_ino != before[INDEX]
    assert read_index_parts(str(path)).columns.ids.tolist() == list(range(COUNT + 1))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_journal_left_by_a_crash_is_applied_on_top_of_the_sidecar(tmp_path, fmt):
    """What a crash after journal appends, before the index is rewritten, leaves: the index file
    and its sidecar as they were, then the journal's additions and removals (a capacity limit
    evicts the oldest), files written and evicted ones deleted."""
    path = written(tmp_path / "d", fmt, count=6)
    index_before = {name: (path / name).read_bytes() for name in (INDEX, SIDECAR)}
    buf = new_buffer(
        auto_save=True, auto_save_path=str(path), trajectory_format=fmt, cache_size=2, max_trajectories=7
    )
    buf.add_trajectories([coded_trajectory(i) for i in range(6, 10)])
    buf.flush()
    crashed = tmp_path / "crashed"
    shutil.copytree(path, crashed)
    buf.close()
    for name, data in index_before.items():
        (crashed / name).write_bytes(data)
    assert (crashed / "trajectory_index.journal").is_file()
    parts = read_index_parts(str(crashed))
    assert parts.columns is not None and parts.journal_entries > 0
    plain = without_sidecar(crashed, tmp_path / "plain")
    assert_same_contents(crashed, plain)
    assert codes(loaded(crashed)) == list(range(3, 10))
    assert_same_buffer(loaded(crashed), loaded(plain))
    for directory in (crashed, plain):  # reopening compacts the journal in both
        new_buffer(auto_save=True, auto_save_path=str(directory), trajectory_format=fmt).close()
    assert_same_buffer(loaded(crashed), loaded(plain))


def test_an_rlinf_directory_loads_the_same_before_and_after_this_library_compacts_it(tmp_path, fixture_dir):
    assert not (fixture_dir / SIDECAR).exists()  # RLinf writes none: its JSON index is parsed
    original = tmp_path / "original"
    shutil.copytree(fixture_dir, original)
    assert read_index_parts(str(fixture_dir)).columns is None
    new_buffer(auto_save=True, auto_save_path=str(fixture_dir), trajectory_format="pt").close()
    assert read_index_parts(str(fixture_dir)).columns is not None
    assert_same_contents(fixture_dir, without_sidecar(fixture_dir, tmp_path / "plain"))
    assert_same_buffer(loaded(fixture_dir), loaded(original))


UNREPRESENTABLE = {
    "RLinf's entry (no num_steps)": lambda e: {
        k: v for k, v in e.items() if k not in ("num_steps", "num_envs")
    },
    "max_episode_length -1": lambda e: {**e, "max_episode_length": -1},
    "max_episode_length 2.5": lambda e: {**e, "max_episode_length": 2.5},
    "a non-ASCII uuid": lambda e: {**e, "uuid": "ñ-uuid"},
    "a shape of a bool": lambda e: {**e, "shape": [*e["shape"][:-1], True]},
}


@pytest.mark.parametrize("change", list(UNREPRESENTABLE))
def test_entries_the_columns_cannot_hold_get_no_sidecar_and_an_old_one_is_removed(tmp_path, change):
    path = written(tmp_path / "d", "pt")
    plain = without_sidecar(path, tmp_path / "plain")
    data = json.loads((path / INDEX).read_text())
    entries = [data["trajectory_index"][str(tid)] for tid in data["trajectory_id_list"]]
    entries[3] = UNREPRESENTABLE[change](entries[3])
    for directory in (path, plain):
        write_index(str(directory), entries)
    assert not (path / SIDECAR).exists()
    assert read_index_parts(str(path)).columns is None
    assert codes(loaded(path)) == list(range(COUNT))
    assert list(read_directory(str(path))[0].records) == [
        dataclasses.replace(r, directory=str(path)) for r in read_directory(str(plain))[0].records
    ]


def test_a_journal_entry_the_columns_cannot_hold_is_read_as_the_json_index_would(tmp_path):
    path = written(tmp_path / "d", "segment", count=4)
    line = json.loads((path / INDEX).read_text())["trajectory_index"]["3"]
    line.update(trajectory_id=7, uuid="ñ", max_episode_length=None)
    (path / "trajectory_index.journal").write_text(json.dumps(line) + "\n")
    contents, _ = read_directory(str(path))
    assert [r.trajectory_id for r in contents.records] == [0, 1, 2, 3, 7]
    assert contents.records[-1].uuid == "ñ" and contents.journal_entries == 1
    plain_records = read_directory(str(without_sidecar(path, tmp_path / "plain")))[0].records
    assert list(contents.records) == [dataclasses.replace(r, directory=contents.path) for r in plain_records]


# -- a sidecar that is not to be trusted ---------------------------------------------------------------
def test_a_stale_sidecar_is_ignored_and_the_json_index_decides(tmp_path):
    path = written(tmp_path / "d", "pt")
    stale = (path / SIDECAR).read_bytes()
    data = json.loads((path / INDEX).read_text())
    data["trajectory_id_list"].remove(4)  # the index changed behind the sidecar's back
    del data["trajectory_index"]["4"]
    (path / INDEX).write_text(json.dumps(data, separators=(",", ":")))
    assert (path / SIDECAR).read_bytes() == stale
    assert read_index_parts(str(path)).columns is None
    contents, _ = read_directory(str(path))
    assert not isinstance(contents.records, RecordTable)
    assert codes(loaded(path)) == [0, 1, 2, 3, 5, 6, 7, 8]


def test_a_sidecar_of_a_same_sized_json_index_is_still_stale(tmp_path):
    """An edit that keeps the index's size (a checksum digit) makes the sidecar stale too."""
    path = written(tmp_path / "d", "pt")
    text = (path / INDEX).read_text()
    crc = json.loads(text)["trajectory_index"]["2"]["crc32"]
    forged = str(crc)[:-1] + str((int(str(crc)[-1]) + 1) % 10)
    (path / INDEX).write_text(text.replace(f'"crc32":{crc}', f'"crc32":{forged}'))
    assert (path / INDEX).stat().st_size == len(text)
    assert read_index_parts(str(path)).columns is None
    contents, _ = read_directory(str(path))
    assert contents.records[2].checksum == int(forged)


def _patched(path: Path, offset: int, data: bytes) -> None:
    raw = bytearray((path / SIDECAR).read_bytes())
    raw[offset : offset + len(data)] = data
    (path / SIDECAR).write_bytes(bytes(raw))


def _header(path: Path) -> tuple[dict, int]:
    raw = (path / SIDECAR).read_bytes()
    size = int.from_bytes(raw[8:16], "little")
    return json.loads(raw[16 : 16 + size]), 16 + size


def _with_header(path: Path, **changes) -> None:
    """Rewrite the header with ``changes`` (the columns as they were)."""
    header, start = _header(path)
    body = (path / SIDECAR).read_bytes()[start:]
    text = json.dumps({**header, **changes}, separators=(",", ":")).encode()
    text += b" " * (-(16 + len(text)) % 8)
    (path / SIDECAR).write_bytes(index_columns.MAGIC + len(text).to_bytes(8, "little") + text + body)


DAMAGES = {
    "a flipped data byte": lambda path: _patched(path, _header(path)[1] + 3, b"\xff"),
    "cut short": lambda path: (path / SIDECAR).write_bytes((path / SIDECAR).read_bytes()[:-9]),
    "empty": lambda path: (path / SIDECAR).write_bytes(b""),
    "another magic": lambda path: _patched(path, 0, b"NOTIDX1\n"),
    "a header length past the end": lambda path: _patched(path, 8, (1 << 40).to_bytes(8, "little")),
    "a newer version": lambda path: _with_header(path, format_version=99),
    "a huge count": lambda path: _with_header(path, count=10**12),
    "a huge uuid width": lambda path: _with_header(path, uuid_width=10**9),
    "a header that is not JSON": lambda path: _patched(path, 16, b"\xff{"),
    "random bytes": lambda path: (path / SIDECAR).write_bytes(os.urandom(4096)),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("fmt", ["pt", "segment"])
def test_a_damaged_sidecar_is_ignored(tmp_path, fmt, damage):
    path = written(tmp_path / "d", fmt)
    plain = without_sidecar(path, tmp_path / "plain")
    DAMAGES[damage](path)
    assert read_index_parts(str(path)).columns is None
    assert_same_buffer(loaded(path), loaded(plain))


def test_a_sidecar_whose_checked_data_holds_values_the_json_index_could_not_is_ignored(tmp_path):
    """Consistent checksums, impossible content (a negative id, a bad weights id): not used."""
    path = written(tmp_path / "d", "pt")
    columns = read_index_parts(str(path)).columns
    data = (path / INDEX).read_bytes()
    for bad in (
        {"ids": columns.ids.copy() - 5},
        {"weight_names": ("../../etc",)},
        {"files": columns.files.copy() + 7},
    ):
        parts = index_columns.serialize(dataclasses.replace(columns, **bad), data)
        (path / SIDECAR).write_bytes(b"".join(parts))
        assert read_index_parts(str(path)).columns is None
        assert codes(loaded(path)) == list(range(COUNT))


def test_a_sidecar_naming_files_of_other_ids_or_outside_the_naming_rule_is_ignored(tmp_path):
    path = written(tmp_path / "d", "pt")
    columns = read_index_parts(str(path)).columns
    data = (path / INDEX).read_bytes()
    for names in (("trajectory_1_x_0.pt",), ("metadata.json",), ("../outside.pt",)):
        files = columns.files.copy()
        files[0] = 0
        parts = index_columns.serialize(dataclasses.replace(columns, files=files, file_names=names), data)
        (path / SIDECAR).write_bytes(b"".join(parts))
        contents, _ = read_directory(str(path))
        assert not isinstance(contents.records, RecordTable)
        assert contents.records[0].file.startswith("trajectory_0_")


RUNNER = textwrap.dedent(
    """
    import sys
    from rlinf_replay_buffer import TrajectoryReplayBuffer
    buf = TrajectoryReplayBuffer(sample_window_size=0)
    buf.load_checkpoint(sys.argv[1])
    print("RESULT", buf.size)
    """
)


@pytest.mark.parametrize("kind", ["fifo", "link out", "link to the index"])
def test_a_sidecar_that_is_a_fifo_or_a_link_is_ignored_without_blocking(tmp_path, kind):
    path = written(tmp_path / "d", "pt")
    (path / SIDECAR).unlink()
    if kind == "fifo":
        os.mkfifo(path / SIDECAR)
    elif kind == "link out":
        outside = tmp_path / "outside.columns"
        outside.write_bytes(b"RLIDXC1\n")
        os.symlink(outside, path / SIDECAR)
    else:
        os.symlink(INDEX, path / SIDECAR)
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(path)], capture_output=True, text=True, timeout=120
    )
    assert f"RESULT {COUNT}" in proc.stdout, proc.stderr[-2000:]


# -- reading files directly ------------------------------------------------------------------------------
def _assert_same_data(got: dict, want: dict) -> None:
    got, want = flat_columns(got), flat_columns(want)
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert tensor_bits(got[key]) == tensor_bits(value) and got[key].stride() == value.stride(), key
            assert got[key].storage_offset() == value.storage_offset() and not got[key].requires_grad, key
        else:
            assert got[key] == value and type(got[key]) is type(value), key


def _trajectory_files(path: Path, ext: str) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.name.endswith(f".{ext}"))


@pytest.mark.parametrize("mmap", [False, True])
def test_pt_files_read_directly_hold_what_torch_load_returns(tmp_path, fixture_dir, mmap):
    """A file asked for mapped is read all the same (small files: no descriptor stays open)."""
    files = _trajectory_files(written(tmp_path / "d", "pt"), "pt") + _trajectory_files(fixture_dir, "pt")
    direct = []
    for f in files:
        with open_regular(str(f), None, links=True) as handle:
            direct.append(torchsave.load(handle, mmap))
    assert all(d is not None for d in direct)
    for f, got in zip(files, direct, strict=True):
        _assert_same_data(got, torch.load(f, map_location="cpu", weights_only=True))
        _assert_same_data(pt.read(str(f), mmap=mmap), got)


def test_pkl_files_whose_storages_are_read_directly_hold_what_torch_load_gives(tmp_path, monkeypatch):
    files = _trajectory_files(written(tmp_path / "d", "pkl"), "pkl")
    direct = [pkl.read(str(f)) for f in files]
    monkeypatch.setattr(torchsave, "storage_elements", lambda data: None)
    for f, got in zip(files, direct, strict=True):
        _assert_same_data(got, pkl.read(str(f)))


_COUNTS = {
    pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
}


def _reference_walk(data: bytes) -> bool:
    """One opcode at a time, widths from pickletools' table: whether every argument lies in
    ``data`` (a frame's length too, a text argument ends within the limit) up to a STOP."""
    ops = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
    pos = 0
    while pos < len(data):
        op = ops.get(data[pos : pos + 1])
        if op is None:
            return False
        pos += 1
        if op.name == "STOP":
            return True
        arg = op.arg
        if arg is None:
            continue
        if arg.n >= 0:
            if pos + arg.n > len(data):
                return False
            if op.name == "FRAME" and int.from_bytes(data[pos : pos + 8], "little") > len(data) - pos - 8:
                return False
            pos += arg.n
        elif arg.n == pickletools.UP_TO_NEWLINE:
            for _ in range(2 if arg is pickletools.stringnl_noescape_pair else 1):
                end = data.find(b"\n", pos, pos + pkl.MAX_TEXT_ARGUMENT)
                if end < 0:
                    return False
                pos = end + 1
        else:
            width, signed = _COUNTS[arg.n]
            if pos + width > len(data):
                return False
            count = int.from_bytes(data[pos : pos + width], "little", signed=signed)
            pos += width
            if count < 0 or count > len(data) - pos:
                return False
            pos += count
    return False


def _accepted_by_the_size_check(data: bytes) -> bool:
    try:
        pkl.check_declared_sizes(data)
    except CorruptBufferError:
        return False
    return True


def test_the_opcode_walk_refuses_every_cut_short_pickle_and_agrees_with_a_plain_walk(tmp_path):
    """The walk skips runs of opcodes with fixed-width arguments in one step; it must still stop
    at exactly the opcodes a plain walk finds: every proper prefix of a trajectory pickle is
    refused, and a pickle with one byte changed is accepted exactly when a walk of one opcode
    at a time (widths from pickletools' table) accepts it."""
    whole = _trajectory_files(written(tmp_path / "d", "pkl"), "pkl")[0].read_bytes()
    samples = [whole, pickle.dumps({"a": 1, "b": (2.5, -3, 1 << 40, "x" * 300, b"y" * 70000)}, protocol=2)]
    samples.append(pickle.dumps([None, True, 65535, -1.0, {"k": [1, 2]}], protocol=4))
    for data in samples:
        assert _accepted_by_the_size_check(data)
        for cut in range(len(data) if len(data) < 4096 else 0, len(data)):
            assert not _accepted_by_the_size_check(data[:cut])
        assert not any(_accepted_by_the_size_check(data[:cut]) for cut in range(0, len(data), 97))
    rng = np.random.default_rng(7)
    for data in samples:
        for _ in range(1500):
            changed = bytearray(data)
            changed[int(rng.integers(len(data)))] = int(rng.integers(256))
            assert _accepted_by_the_size_check(bytes(changed)) == _reference_walk(bytes(changed))


def _embedded_storages(path: Path) -> list[bytes]:
    """The storages a pickled trajectory embeds (the bytes arguments of its opcodes)."""
    return [
        arg
        for op, arg, _ in pickletools.genops(path.read_bytes())
        if op.name in ("BINBYTES", "BINBYTES8", "SHORT_BINBYTES") and len(arg) > 64
    ]


def _elements_or_refusal(data: bytes) -> tuple[str, bytes] | None:
    got = torchsave.storage_elements(data)
    return None if got is None else (str(got.dtype), got.numpy().tobytes())


def test_legacy_storages_matched_in_their_usual_form_read_as_the_unpickler_reads_them(tmp_path, monkeypatch):
    """A pkl file's storages written in torch's usual form skip the unpickler: for those and for
    every one-byte change of their pickles, the result (elements, or a refusal) is the one the
    unpickler gives."""
    blobs = [
        b for f in _trajectory_files(written(tmp_path / "d", "pkl"), "pkl") for b in _embedded_storages(f)
    ]
    blobs += [b for f in _trajectory_files(tmp_path / "d", "pkl")[:1] for b in _embedded_storages(f)]
    assert blobs and all(torchsave.LEGACY_STORAGE_PICKLES.search(b) for b in blobs)
    rng = np.random.default_rng(11)
    changed = []
    for blob in blobs[:6]:
        head = blob.index(b"storage") - 8  # the pickles start a few bytes before their first string
        for _ in range(300):
            c = bytearray(blob)
            c[head + int(rng.integers(110))] = int(rng.integers(256))
            changed.append(bytes(c))
    fast = [_elements_or_refusal(b) for b in blobs + changed]
    monkeypatch.setattr(torchsave, "LEGACY_STORAGE_PICKLES", re.compile(rb"(?!)"))
    assert fast == [_elements_or_refusal(b) for b in blobs + changed]
    assert sum(f is not None for f in fast[len(blobs) :]) > 0  # some changes still read (a key digit)


def test_a_large_pt_file_asked_for_mapped_is_mapped_by_torch(tmp_path):
    f = tmp_path / "trajectory_0_w_0.pt"
    torch.save({"rewards": torch.arange(float(torchsave.MAX_COPIED_BYTES // 4 + 8)).reshape(-1, 1, 1)}, f)
    with open_regular(str(f), None, links=True) as handle:
        assert torchsave.load(handle, mapped=True) is None
        assert torchsave.load(handle, mapped=False) is not None
    assert torch.equal(pt.read(str(f), mmap=True)["rewards"], pt.read(str(f))["rewards"])


def test_reading_many_pt_files_keeps_no_descriptor_open(tmp_path):
    path = written(tmp_path / "d", "pt")
    before = len(os.listdir("/proc/self/fd"))
    held = [pt.read(str(f), mmap=True) for f in _trajectory_files(path, "pt")]
    assert len(held) == COUNT and len(os.listdir("/proc/self/fd")) == before


def test_a_pt_file_the_direct_reader_does_not_know_is_read_by_torch(tmp_path):
    odd = {
        "rewards": torch.ones(3, 2, 1),
        "shape": torch.Size([3, 2]),  # a global the direct reader leaves to torch
        "view": torch.arange(10.0)[2:8:2],
    }
    f = tmp_path / "trajectory_0_w_0.pt"
    torch.save(odd, f)
    with open_regular(str(f), None, links=True) as handle:
        assert torchsave.load(handle) is None
    got = pt.read(str(f))
    assert got["shape"] == torch.Size([3, 2]) and torch.equal(got["view"], torch.tensor([2.0, 4.0, 6.0]))


def test_a_pt_file_with_a_failing_record_checksum_is_left_to_torch(tmp_path):
    f = tmp_path / "trajectory_0_w_0.pt"
    torch.save({"rewards": torch.arange(6.0).reshape(3, 2, 1)}, f)
    raw = bytearray(f.read_bytes())
    start = raw.index(b"data/0") + 64  # inside the aligned storage record
    raw[start] ^= 0xFF
    f.write_bytes(bytes(raw))
    with open_regular(str(f), None, links=True) as handle:
        assert torchsave.load(handle) is None  # torch.load decides what a damaged record is


def test_a_pkl_storage_in_another_form_is_left_to_torch():
    assert torchsave.storage_elements(b"not a storage") is None
    assert torchsave.storage_elements(b"PK\x05\x06" + b"\0" * 18) is None


# -- the index of a table ----------------------------------------------------------------------------
def test_an_index_extended_with_a_table_behaves_as_one_appended_record_by_record(tmp_path):
    path = written(tmp_path / "d", "segment", count=12)
    table = read_directory(str(path))[0].records
    assert isinstance(table, RecordTable)
    records = list(read_directory(str(without_sidecar(path, tmp_path / "plain")))[0].records)
    records = [dataclasses.replace(r, directory=table.directory) for r in records]
    lazy, eager = TrajectoryIndex(), TrajectoryIndex()
    checked = np.array([i % 3 == 0 for i in range(12)])
    lazy.extend(table, checked)
    for record, ok in zip(records, checked.tolist(), strict=True):
        eager.append(record, checked=ok)

    def same() -> None:
        assert len(lazy) == len(eager) and lazy.total_transitions == eager.total_transitions
        assert lazy.ids().tolist() == eager.ids().tolist() and list(lazy) == list(eager)
        a, b = lazy.window(5), eager.window(5)
        for name in ("ids", "ends", "first_rows", "updates", "envs"):
            assert getattr(a, name).tolist() == getattr(b, name).tolist(), name
        assert [lazy.segment(k) for k in a.segments.tolist()] == [
            eager.segment(k) for k in b.segments.tolist()
        ]
        assert lazy.window_checked(5).tolist() == eager.window_checked(5).tolist()

    same()
    assert 4 in lazy and 40 not in lazy and lazy.get(40) is None
    assert lazy.holds(lazy[4]) and not lazy.holds(records[4])
    assert lazy.pop_oldest() == eager.pop_oldest()
    assert lazy.remove(6) == eager.remove(6)
    assert 6 not in lazy and lazy.get(6) is None
    moved = dataclasses.replace(records[8], row=None, file="trajectory_8_x_0.pt")
    lazy.relocate(moved)
    eager.relocate(moved)
    lazy.mark_checked(9)
    eager.mark_checked(9)
    same()
    with pytest.raises(KeyError, match="already indexed"):
        lazy.extend(table.take(np.array([3])), np.array([True]))
