"""Hostile or broken files in a buffer directory never hang a reader, never exhaust its memory and
never lead it out of the directory: each is refused with a library error naming the file.

* Something that is not a regular file (a FIFO, a socket, a directory, a device) where a file
  should be is :class:`UnsafeFileError`, found without opening it in a blocking way. The
  operations that would wait forever on a FIFO run in a subprocess with a timeout, so a
  regression fails the test instead of hanging it.
* Sizes are checked before bytes are read or allocated: a trajectory file larger than its
  trajectory can be, a ``pkl`` stream declaring more bytes than the file holds, JSON files past
  their limits are :class:`CorruptBufferError` (:class:`CorruptTrajectoryError` for a
  trajectory read by a buffer).
* JSON nested too deeply or holding integers too long to convert is :class:`CorruptBufferError`,
  never a ``RecursionError`` or ``ValueError``.
* A segment column file that is a symbolic link is :class:`UnsafeFileError`, even with
  ``on_corrupt="skip"``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import warnings
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from conftest import TrackedBuffer as TrajectoryReplayBuffer
from conftest import coded_trajectory

from rlinf_replay_buffer import (
    CorruptBufferError,
    CorruptDataWarning,
    CorruptTrajectoryError,
    UnsafeFileError,
    cli,
)
from rlinf_replay_buffer.formats import pkl, priorities, pt
from rlinf_replay_buffer.safe_open import INDEX_BYTES, JSON_BYTES, load_json, open_regular

META = "metadata.json"
INDEX = "trajectory_index.json"
JOURNAL = "trajectory_index.journal"
TIMEOUT = 180  # seconds a subprocess may take (importing torch included) before the test fails
DEEP = "[" * 100_000
HUGE_INT = "7" * 5000


# -- directories ---------------------------------------------------------------------------------
def trajectories(n: int = 2) -> list:
    return [coded_trajectory(i, n=3, e=2) for i in range(n)]


def written(path: Path, fmt: str = "pt") -> Path:
    """An auto-save directory with two trajectories, closed (index and metadata, no journal)."""
    buf = TrajectoryReplayBuffer(
        sample_window_size=0, trajectory_format=fmt, auto_save=True, auto_save_path=str(path)
    )
    buf.add_trajectories(trajectories())
    buf.close()
    return path


def checkpoint(path: Path, fmt: str = "pt") -> Path:
    buf = TrajectoryReplayBuffer(sample_window_size=0, trajectory_format=fmt)
    buf.add_trajectories(trajectories())
    buf.save_checkpoint(str(path))
    return path


def traj_file(path: Path, tid: int = 0) -> Path:
    return next(p for p in path.iterdir() if p.name.startswith(f"trajectory_{tid}_"))


def forge_checksum(path: Path, tid: int = 0) -> None:
    """What an attacker writing the directory does: give the planted file a matching crc32, so
    the reader of the file's contents, not the checksum, is what must stop it."""
    index = json.loads((path / INDEX).read_text())
    index["trajectory_index"][str(tid)]["crc32"] = zlib.crc32(traj_file(path, tid).read_bytes())
    (path / INDEX).write_text(json.dumps(index))


def replace_with_fifo(path: Path) -> None:
    if path.exists():
        path.unlink()
    os.mkfifo(path)


def loader(**kwargs) -> TrajectoryReplayBuffer:
    return TrajectoryReplayBuffer(sample_window_size=0, **kwargs)


def load_and_sample(path: Path, **kwargs) -> TrajectoryReplayBuffer:
    buf = loader(**kwargs)
    buf.load_checkpoint(str(path))
    buf.sample(4)
    return buf


def names(path: Path | str) -> str:
    """A regex matching a message that names ``path``."""
    return re.escape(str(path))


# -- operations in a subprocess ------------------------------------------------------------------
RUNNER = textwrap.dedent(
    """
    import json, sys, warnings
    from rlinf_replay_buffer import TrajectoryReplayBuffer, cli
    from rlinf_replay_buffer.formats import priorities
    op, path, fmt = sys.argv[1:4]
    result = {"error": None, "message": "", "code": None}
    try:
        if op == "load":
            buf = TrajectoryReplayBuffer(sample_window_size=0, trajectory_format=fmt)
            buf.load_checkpoint(path)
            buf.sample(4)
        elif op == "verify":
            result["code"] = cli.main(["verify", path])
        elif op == "reopen":
            TrajectoryReplayBuffer(
                sample_window_size=0, trajectory_format=fmt, auto_save=True, auto_save_path=path
            ).close()
        elif op == "priorities":
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result["code"] = priorities.load(path) is None
            result["message"] = " ".join(str(w.message) for w in caught)
    except Exception as exc:
        result.update(error=type(exc).__name__, message=str(exc))
    print("RESULT " + json.dumps(result))
    """
)


def isolated(op: str, path: Path, fmt: str = "pt") -> tuple[dict, str]:
    """Run ``op`` on ``path`` in a fresh interpreter; a blocked reader fails the test with
    ``subprocess.TimeoutExpired`` instead of hanging it (the child is killed)."""
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, op, str(path), fmt], capture_output=True, text=True, timeout=TIMEOUT
    )
    last = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert last, f"no result (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(last[-1].removeprefix("RESULT ")), proc.stdout


FILE_KINDS = {
    "trajectory file": lambda path: traj_file(path, 0),
    "metadata": lambda path: path / META,
    "index": lambda path: path / INDEX,
    "journal": lambda path: path / JOURNAL,
}


# -- FIFOs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(FILE_KINDS))
def test_a_fifo_in_place_of_a_file_is_refused_by_load_without_blocking(tmp_path, kind):
    path = written(tmp_path / "buf")
    fifo = FILE_KINDS[kind](path)
    replace_with_fifo(fifo)
    result, _ = isolated("load", path)
    assert result["error"] == "UnsafeFileError", result
    assert str(fifo) in result["message"] and "FIFO" in result["message"]


@pytest.mark.parametrize("kind", list(FILE_KINDS))
def test_a_fifo_in_place_of_a_file_is_reported_by_verify_without_blocking(tmp_path, kind):
    path = written(tmp_path / "buf")
    fifo = FILE_KINDS[kind](path)
    replace_with_fifo(fifo)
    result, out = isolated("verify", path)
    assert result["error"] is None and result["code"] == 1, result
    assert f"[unsafe] {fifo}: is a FIFO" in out


@pytest.mark.parametrize("kind", list(FILE_KINDS))
def test_a_fifo_in_place_of_a_file_is_refused_when_reopening_for_auto_save(tmp_path, kind):
    path = written(tmp_path / "buf")
    fifo = FILE_KINDS[kind](path)
    replace_with_fifo(fifo)
    result, _ = isolated("reopen", path)
    assert result["error"] == "UnsafeFileError", result
    assert str(fifo) in result["message"] and "FIFO" in result["message"]
    assert fifo.is_fifo()  # refused, not replaced: nothing of the directory was rewritten


def test_a_fifo_in_place_of_a_segment_column_file_is_refused_without_blocking(tmp_path):
    path = written(tmp_path / "buf", fmt="segment")
    fifo = path / "seg-000000" / "000.bin"
    replace_with_fifo(fifo)
    result, _ = isolated("load", path, fmt="segment")
    assert result["error"] == "UnsafeFileError", result
    assert str(fifo) in result["message"]


def test_a_fifo_in_place_of_the_priorities_is_skipped_without_blocking(tmp_path):
    path = tmp_path / "buf"
    path.mkdir()
    fifo = path / priorities.NAME
    os.mkfifo(fifo)
    result, _ = isolated("priorities", path)
    assert result["error"] is None and result["code"] is True, result
    assert str(fifo) in result["message"] and "FIFO" in result["message"]


# -- other things that are not regular files ------------------------------------------------------
def test_a_socket_in_place_of_the_index_is_refused(tmp_path):
    path = written(tmp_path / "buf")
    (path / INDEX).unlink()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path / INDEX))
        with pytest.raises(UnsafeFileError, match=names(path / INDEX) + ": is a socket"):
            loader().load_checkpoint(str(path))


def test_a_directory_in_place_of_metadata_is_refused_not_taken_for_an_empty_directory(tmp_path):
    path = written(tmp_path / "buf", fmt="segment")  # no trajectory files: only the metadata says
    (path / META).unlink()
    (path / META).mkdir()
    with pytest.raises(UnsafeFileError, match=names(path / META) + ": is a directory"):
        loader(trajectory_format="segment").load_checkpoint(str(path))
    with pytest.raises(UnsafeFileError, match=names(path / META)):
        TrajectoryReplayBuffer(trajectory_format="segment", auto_save=True, auto_save_path=str(path))
    assert (path / INDEX).is_file()  # the index naming the segments was not replaced by an empty one


def test_a_device_is_refused_before_a_byte_is_read():
    with pytest.raises(UnsafeFileError, match="/dev/zero: is a character device"):
        load_json("/dev/zero", META)
    with pytest.raises(UnsafeFileError, match="/dev/null: is a character device"):
        pt.read("/dev/null")


# -- sizes checked before reading ----------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["pt", "pkl"])
def test_a_huge_sparse_trajectory_file_is_refused_before_it_is_checksummed(tmp_path, fmt):
    path = checkpoint(tmp_path / "ckpt", fmt)
    victim = traj_file(path, 0)
    os.truncate(victim, 50 << 30)  # 50 GiB of holes: checksumming it whole would take minutes
    with pytest.raises(
        CorruptTrajectoryError, match=names(victim) + ": is 53687091200 bytes, more than"
    ) as info:
        load_and_sample(path)
    assert info.type is CorruptTrajectoryError and info.value.trajectory_id == 0


def test_a_huge_sparse_trajectory_file_is_damage_that_skip_leaves_out(tmp_path):
    path = checkpoint(tmp_path / "ckpt")
    victim = traj_file(path, 0)
    os.truncate(victim, 50 << 30)
    with pytest.warns(CorruptDataWarning, match=names(victim)):
        buf = load_and_sample(path, on_corrupt="skip")
    assert buf.size == 1


def test_verify_reports_a_huge_sparse_trajectory_file_without_reading_it(tmp_path, capsys):
    path = checkpoint(tmp_path / "ckpt")
    victim = traj_file(path, 0)
    os.truncate(victim, 50 << 30)
    assert cli.main(["verify", str(path)]) == 1
    assert f"[unreadable] {victim}: is 53687091200 bytes, more than" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "limit"), [(META, JSON_BYTES), (INDEX, INDEX_BYTES), (JOURNAL, INDEX_BYTES)]
)
def test_a_json_file_past_its_limit_is_refused_unread(tmp_path, name, limit):
    path = written(tmp_path / "buf")
    target = path / name
    target.touch()
    os.truncate(target, limit + 1)  # sparse: reading it would allocate the whole size
    with pytest.raises(
        CorruptBufferError, match=names(target) + f": is {limit + 1} bytes, more than the {limit}"
    ) as info:
        loader().load_checkpoint(str(path))
    assert info.type is CorruptBufferError


# -- declared sizes in pkl and pt files ----------------------------------------------------------
def declaring(opcode: bytes, length: int, width: int = 8) -> bytes:
    """A pickle whose first object declares ``length`` bytes (with a ``width``-byte count)."""
    return b"\x80\x04" + opcode + length.to_bytes(width, "little") + b"only a few bytes."


DECLARATIONS = {
    "BINBYTES8": declaring(b"\x8e", 50 << 30),
    "BINUNICODE8": declaring(b"\x8d", 50 << 30),
    "BYTEARRAY8": declaring(b"\x96", 50 << 30),
    "FRAME": declaring(b"\x95", 50 << 30),
    "BINBYTES": declaring(b"B", (1 << 32) - 1, 4),
    "BINBYTES8 beyond int64": declaring(b"\x8e", (1 << 64) - 1),
}


@pytest.mark.parametrize("opcode", list(DECLARATIONS))
def test_a_pkl_declaring_more_bytes_than_it_holds_is_refused_before_allocating(tmp_path, opcode):
    victim = tmp_path / "trajectory_0_w_0.pkl"
    victim.write_bytes(DECLARATIONS[opcode])
    with pytest.raises(CorruptBufferError, match=names(victim) + f".*{opcode.split()[0]}.* declares") as info:
        pkl.read(str(victim))
    assert info.type is CorruptBufferError


def test_a_planted_pkl_with_a_huge_declaration_fails_the_load_naming_its_file(tmp_path):
    path = checkpoint(tmp_path / "ckpt", "pkl")
    victim = traj_file(path, 0)
    victim.write_bytes(DECLARATIONS["BINBYTES8"])
    forge_checksum(path)
    with pytest.raises(CorruptTrajectoryError, match=names(victim) + ".*declares 53687091200 bytes") as info:
        load_and_sample(path)
    assert info.type is CorruptTrajectoryError


def test_a_pkl_cut_short_is_refused_naming_its_file(tmp_path):
    victim = tmp_path / "trajectory_0_w_0.pkl"
    pkl.write(str(victim), {"rewards": torch.ones(5, 3, 1)})
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(CorruptBufferError, match=names(victim)) as info:
        pkl.read(str(victim))
    assert info.type is CorruptBufferError


def test_a_pkl_tensor_reaching_past_its_storage_is_refused(tmp_path):
    """torch would grow the storage to the declared shape: an allocation the file chooses, filled
    with whatever memory held."""
    victim = tmp_path / "trajectory_0_w_0.pkl"
    data = pickle.dumps({"rewards": torch.ones(5, 3, 1)}, protocol=3)  # no frames to adjust
    sizes = b"K\x05K\x03K\x01\x87"  # the size tuple (5, 3, 1)
    assert data.count(sizes) == 1
    victim.write_bytes(data.replace(sizes, b"J\x00\x00\x00\x10K\x03K\x01\x87"))  # 2**28 rows
    with pytest.raises(CorruptBufferError, match=names(victim) + ".*needs .* elements, its storage holds 15"):
        pkl.read(str(victim))


def patched_pt(path: Path, old: bytes, new: bytes) -> None:
    """In the pickle inside the ``pt`` (zip) file ``path``, replace what follows group 1 of the
    regex ``old`` (found once) by the bytes ``new``."""
    buffer = io.BytesIO(path.read_bytes())
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                data, found = re.subn(old, lambda m: m.group(1) + new, data, flags=re.S)
                assert found == 1
            dst.writestr(info, data)


def damaged_pt(path: Path, damage: str) -> Path:
    torch.save({"rewards": torch.ones(5, 3, 1)}, path)
    if damage == "cut short":
        path.write_bytes(path.read_bytes()[:-64])
    elif damage == "tensor past its storage":  # size (5, 3, 1) -> (2**28, 3, 1)
        patched_pt(path, rb"()K\x05K\x03K\x01\x87", b"J\x00\x00\x00\x10K\x03K\x01\x87")
    else:  # the storage's element count (15), right after its location "cpu", -> 2**30
        patched_pt(path, rb"(cpu.{0,6}?)K\x0f", b"J\x00\x00\x00\x40")
    return path


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("damage", ["tensor past its storage", "cut short"])
def test_a_pt_declaring_more_than_it_holds_ends_in_a_library_error(tmp_path, damage, mmap):
    victim = damaged_pt(tmp_path / "trajectory_0_w_0.pt", damage)
    with pytest.raises(CorruptBufferError, match=names(victim)) as info:
        pt.read(str(victim), mmap=mmap)
    assert info.type is CorruptBufferError


def test_a_pt_storage_declared_larger_than_its_record_is_refused_or_never_allocated(tmp_path):
    victim = damaged_pt(tmp_path / "trajectory_0_w_0.pt", "storage larger than its record")
    with pytest.raises(CorruptBufferError, match=names(victim) + ".*record size") as info:
        pt.read(str(victim))  # read: torch compares the declaration with the record first
    assert info.type is CorruptBufferError
    mapped = pt.read(str(victim), mmap=True)  # mapped: only the record's bytes are ever used
    assert torch.equal(mapped["rewards"], torch.ones(5, 3, 1))


# -- JSON nested too deeply, integers too long ---------------------------------------------------
JSON_PAYLOADS = {"deep": DEEP, "huge int": '{"format_version": ' + HUGE_INT + "}"}


@pytest.mark.parametrize("payload", ["deep", "huge int"])
@pytest.mark.parametrize("name", [META, INDEX])
def test_json_nested_too_deeply_or_with_huge_ints_is_corrupt_not_a_python_error(tmp_path, name, payload):
    path = written(tmp_path / "buf")
    target = path / name
    target.write_text(JSON_PAYLOADS[payload])
    for attempt in (
        lambda: loader().load_checkpoint(str(path)),
        lambda: TrajectoryReplayBuffer(auto_save=True, auto_save_path=str(path)),
    ):
        with pytest.raises(CorruptBufferError, match=names(target) + ": .*not valid JSON") as info:
            attempt()
        assert info.type is CorruptBufferError


@pytest.mark.parametrize("payload", [DEEP, '{"trajectory_id": ' + HUGE_INT + "}"], ids=["deep", "huge int"])
def test_a_journal_line_nested_too_deeply_or_with_a_huge_int_is_corrupt(tmp_path, payload):
    path = written(tmp_path / "buf")
    entry = json.loads((path / INDEX).read_text())["trajectory_index"]["0"]  # listed: skipped
    (path / JOURNAL).write_text(payload + "\n" + json.dumps(entry) + "\n")
    for attempt in (
        lambda: loader().load_checkpoint(str(path)),
        lambda: TrajectoryReplayBuffer(auto_save=True, auto_save_path=str(path)),
    ):
        with pytest.raises(
            CorruptBufferError, match=names(path / JOURNAL) + ": line 1 is not an index entry"
        ) as info:
            attempt()
        assert info.type is CorruptBufferError


def test_a_deeply_nested_last_journal_line_is_a_torn_append_and_cut_before_the_next(tmp_path):
    path = written(tmp_path / "buf")
    (path / JOURNAL).write_text(DEEP)
    buf = TrajectoryReplayBuffer(sample_window_size=0, auto_save=True, auto_save_path=str(path))
    buf.add_trajectories([coded_trajectory(2, n=3, e=2)])
    buf.flush()
    assert DEEP not in (path / JOURNAL).read_text()
    buf.close()
    assert load_and_sample(path).size == 3


@pytest.mark.parametrize("payload", ["deep", "huge int"])
def test_verify_reports_json_nested_too_deeply_or_with_huge_ints(tmp_path, capsys, payload):
    path = written(tmp_path / "buf")
    for name in (META, INDEX):
        (path / name).write_text(JSON_PAYLOADS[payload])
    assert cli.main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"[metadata] {path / META}: metadata.json is not valid JSON" in out
    assert f"[index] {path / INDEX}: unreadable" in out


def test_a_segment_json_nested_too_deeply_is_corrupt(tmp_path):
    path = checkpoint(tmp_path / "ckpt", "segment")
    target = path / "seg-000000" / "segment.json"
    target.write_text(DEEP)
    with pytest.raises(CorruptBufferError, match=names(target) + ": unreadable") as info:
        load_and_sample(path)
    assert not isinstance(info.value, UnsafeFileError)


def test_a_priorities_header_nested_too_deeply_is_skipped_with_a_warning(tmp_path):
    header = DEEP.encode()
    target = tmp_path / priorities.NAME
    target.write_bytes(priorities.MAGIC + struct.pack("<Q", len(header)) + header)
    with pytest.raises(CorruptBufferError, match=names(target) + ": .*nested too deeply"):
        priorities.read(str(target))
    with pytest.warns(CorruptDataWarning, match=names(target)):
        assert priorities.load(str(tmp_path)) is None


def test_a_counter_too_large_to_be_an_id_is_corrupt(tmp_path):
    path = written(tmp_path / "buf")
    meta = json.loads((path / META).read_text())
    meta["trajectory_counter"] = 10**4000  # parses (under Python's digit limit), but no id is this large
    (path / META).write_text(json.dumps(meta))
    with pytest.raises(CorruptBufferError, match=names(path / META) + ": trajectory_counter 1000"):
        loader().load_checkpoint(str(path))


# -- links out of segments -----------------------------------------------------------------------
@pytest.mark.parametrize("target", ["outside", "inside"])
@pytest.mark.parametrize("on_corrupt", ["raise", "skip"])
def test_a_segment_column_file_that_is_a_symlink_is_unsafe_never_skipped(tmp_path, target, on_corrupt):
    path = checkpoint(tmp_path / "ckpt", "segment")
    column = path / "seg-000000" / "000.bin"
    elsewhere = tmp_path / "outside.bin" if target == "outside" else path / "seg-000000" / "copy.bin"
    shutil.move(column, elsewhere)
    os.symlink(elsewhere, column)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptDataWarning)  # never skipped as damage
        with pytest.raises(UnsafeFileError, match=names(column) + ": is a symbolic link") as info:
            load_and_sample(path, on_corrupt=on_corrupt)
    assert info.type is UnsafeFileError


def test_verify_calls_a_segment_column_symlink_unsafe(tmp_path, capsys):
    path = checkpoint(tmp_path / "ckpt", "segment")
    column = path / "seg-000000" / "000.bin"
    shutil.move(column, tmp_path / "outside.bin")
    os.symlink(tmp_path / "outside.bin", column)
    assert cli.main(["verify", str(path)]) == 1
    assert f"[unsafe] {column}: is a symbolic link" in capsys.readouterr().out


def test_a_trajectory_file_linked_inside_the_directory_is_still_read(tmp_path):
    """The rule for trajectory files is unchanged: a link that stays in the directory is read."""
    path = checkpoint(tmp_path / "ckpt")
    victim = traj_file(path, 0)
    moved = path / "kept-here.pt"
    victim.rename(moved)
    os.symlink(moved.name, victim)
    assert load_and_sample(path).size == 2
    with open_regular(str(victim), links=True) as f:
        assert f.read(2) == b"PK"
    with pytest.raises(UnsafeFileError, match=names(victim) + ": is a symbolic link"):
        open_regular(str(victim), links=False)
