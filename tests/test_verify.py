"""The verify command on directories damaged on purpose: report, exit status, and ``--repair``
(quarantine, a consistent index, nothing lost that was sound)."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from conftest import REPO, assert_aligned, coded_trajectory

from rlinf_replay_buffer import TrajectoryReplayBuffer
from rlinf_replay_buffer.cli import main
from rlinf_replay_buffer.lock import LOCK_NAME
from rlinf_replay_buffer.tools.verify import verify_directory

IDS = [1, 2, 3, 4]
FORMATS = ["pt", "pkl", "segment"]


def written_dir(tmp_path: Path, fmt: str = "pt") -> Path:
    path = tmp_path / f"buf-{fmt}"
    buf = TrajectoryReplayBuffer(
        auto_save=True, auto_save_path=str(path), trajectory_format=fmt, sample_window_size=0
    )
    buf.add_trajectories([coded_trajectory(i, n=3, e=2) for i in IDS])
    buf.close()
    return path


def index(path: Path) -> dict:
    return json.loads((path / "trajectory_index.json").read_text())


def write_index(path: Path, data: dict) -> None:
    (path / "trajectory_index.json").write_text(json.dumps(data))


def traj_file(path: Path, tid: int) -> Path:
    return next(path.glob(f"trajectory_{tid}_*"))


def change_a_value(path: Path, fmt: str, tid: int = 1) -> None:
    """Alter one stored float of trajectory ``tid`` (code block ``tid + 1``); files still parse."""
    old_b, new_b = struct.pack("<f", 1000.0 * (tid + 1) + 2), struct.pack("<f", 1000.0 * (tid + 1) + 5)
    targets = sorted((path / "seg-000000").glob("*.bin")) if fmt == "segment" else [traj_file(path, tid)]
    for target in targets:
        data = target.read_bytes()
        if old_b in data:
            target.write_bytes(data.replace(old_b, new_b, 1))
            return
    raise AssertionError("value not found")


def run(capsys, *args: str) -> tuple[int, str]:
    code = main(["verify", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def loads_and_samples(path: Path, size: int) -> None:
    buf = TrajectoryReplayBuffer(sample_window_size=0)
    buf.load_checkpoint(str(path))
    assert buf.size == size
    assert_aligned(buf.sample(128), n=3)


# -- sound directories ----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_sound_directory_verifies_clean(tmp_path, capsys, fmt):
    path = written_dir(tmp_path, fmt)
    code, out = run(capsys, str(path))
    assert code == 0
    assert out.startswith("OK") and f"{len(IDS)} sound trajectories" in out


def test_the_rlinf_fixture_verifies_clean(capsys, fixture_dir):
    code, out = run(capsys, str(fixture_dir))
    assert code == 0, out


def test_verify_runs_as_a_module_command(tmp_path):
    path = written_dir(tmp_path)
    traj_file(path, 2).unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "rlinf_replay_buffer", "verify", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "[missing]" in proc.stdout and "trajectory 2" in proc.stdout


def test_a_path_that_is_not_a_directory_is_one_error_line(tmp_path, capsys):
    code, out = run(capsys, str(tmp_path / "nope"))
    assert code == 1
    assert out.startswith("error:") and "no such directory" in out and out.count("\n") == 1


# -- damage is found and repaired -------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_changed_value_is_reported_and_quarantined(tmp_path, capsys, fmt):
    path = written_dir(tmp_path, fmt)
    change_a_value(path, fmt, tid=1)
    code, out = run(capsys, str(path))
    assert code == 1 and "[checksum]" in out and "trajectory 1 fails its checksum" in out
    code, out = run(capsys, str(path), "--repair")
    assert code == 0, out
    assert "after repair:\nOK" in out
    quarantine = path / "quarantine"
    if fmt == "segment":
        listed = json.loads((quarantine / "segment_rows.json").read_text())
        assert [r["trajectory_id"] for r in listed] == [1]
    else:
        assert [p.name.split("_")[1] for p in quarantine.iterdir()] == ["1"]
    assert [e for e in index(path)["trajectory_id_list"]] == [0, 2, 3]
    loads_and_samples(path, len(IDS) - 1)


@pytest.mark.parametrize("fmt", ["pt", "pkl"])
def test_a_truncated_file_is_quarantined(tmp_path, capsys, fmt):
    path = written_dir(tmp_path, fmt)
    victim = traj_file(path, 0)
    victim.write_bytes(victim.read_bytes()[:64])
    code, out = run(capsys, str(path), "--repair")
    assert code == 0 and "[checksum]" in out and "moved to" in out
    assert (path / "quarantine" / victim.name).exists()
    loads_and_samples(path, len(IDS) - 1)


def test_a_truncated_segment_drops_the_rows_it_lost(tmp_path, capsys):
    path = written_dir(tmp_path, "segment")
    column = sorted((path / "seg-000000").glob("*.bin"))[0]
    column.write_bytes(column.read_bytes()[: column.stat().st_size // 2])
    code, out = run(capsys, str(path))
    assert code == 1 and "[unreadable]" in out and "truncated" in out
    code, out = run(capsys, str(path), "--repair")
    assert code == 0, out
    loads_and_samples(path, len(index(path)["trajectory_id_list"]))
    assert len(index(path)["trajectory_id_list"]) == 2  # the first half of the rows survive


def test_a_missing_file_drops_its_entry(tmp_path, capsys):
    path = written_dir(tmp_path)
    traj_file(path, 3).unlink()
    code, out = run(capsys, str(path), "--repair")
    assert code == 0 and "[missing]" in out and "entry dropped" in out
    loads_and_samples(path, len(IDS) - 1)


def test_an_unlisted_sound_file_is_listed_again(tmp_path, capsys):
    """A crash between a file's rename and its index entry leaves it unlisted: keep it."""
    path = written_dir(tmp_path)
    data = index(path)
    data["trajectory_id_list"].remove(2)
    del data["trajectory_index"]["2"]
    write_index(path, data)
    code, out = run(capsys, str(path))
    assert code == 0 and "note [orphan]" in out  # loading ignores it: a state a crash leaves
    code, out = run(capsys, str(path), "--repair")
    assert code == 0 and "listed in the index again" in out
    loads_and_samples(path, len(IDS))


def test_an_unlisted_garbage_file_is_quarantined(tmp_path, capsys):
    path = written_dir(tmp_path)
    garbage = path / "trajectory_9_x_0.pt"
    garbage.write_bytes(b"not a torch file")
    code, out = run(capsys, str(path), "--repair")
    assert code == 0, out
    assert (path / "quarantine" / garbage.name).exists() and not garbage.exists()
    loads_and_samples(path, len(IDS))
    again = TrajectoryReplayBuffer(auto_save=True, auto_save_path=str(path), sample_window_size=0)
    assert again.add_trajectories([coded_trajectory(5, n=3, e=2)]) == [10]  # past the quarantined id
    again.close()


@pytest.mark.parametrize("damage", ["garbage", "missing"])
def test_an_unreadable_index_is_rebuilt_from_the_files(tmp_path, capsys, damage):
    path = written_dir(tmp_path)
    if damage == "garbage":
        (path / "trajectory_index.json").write_text('{"trajectory_index": {')
    else:
        (path / "trajectory_index.json").unlink()
    code, out = run(capsys, str(path))
    assert code == 1 and "[index]" in out
    code, out = run(capsys, str(path), "--repair")
    assert code == 0, out
    loads_and_samples(path, len(IDS))


def test_an_unreadable_metadata_file_is_rewritten(tmp_path, capsys):
    path = written_dir(tmp_path)
    (path / "metadata.json").write_text("{")
    code, out = run(capsys, str(path))
    assert code == 1 and "[metadata]" in out
    code, out = run(capsys, str(path), "--repair")
    assert code == 0, out
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["trajectory_format"] == "pt" and meta["size"] == len(IDS) and meta["fields"]
    loads_and_samples(path, len(IDS))


def test_metadata_disagreeing_with_the_index_is_noted_and_rewritten(tmp_path, capsys):
    """metadata.json is rewritten after the index, so a crash can leave it describing an earlier
    moment: loading trusts the index, and verify notes the difference without failing."""
    path = written_dir(tmp_path)
    meta = json.loads((path / "metadata.json").read_text())
    meta["size"], meta["trajectory_counter"] = 99, 1
    (path / "metadata.json").write_text(json.dumps(meta))
    code, out = run(capsys, str(path))
    assert code == 0 and "note [metadata]" in out and "size is 99" in out and "is not past id 3" in out
    assert run(capsys, str(path), "--repair")[0] == 0
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["size"] == len(IDS) and meta["trajectory_counter"] == len(IDS)


def test_an_entry_disagreeing_with_its_file_is_quarantined(tmp_path, capsys):
    path = written_dir(tmp_path)
    data = index(path)
    entry = data["trajectory_index"]["1"]
    entry["num_steps"] += 1
    entry["shape"][0] += 1
    write_index(path, data)
    code, out = run(capsys, str(path))
    assert code == 1 and "[shape]" in out and "the index says 7" in out
    assert run(capsys, str(path), "--repair")[0] == 0
    loads_and_samples(path, len(IDS) - 1)


def test_leftovers_and_a_torn_journal_line_are_noted_and_cleaned(tmp_path, capsys):
    path = written_dir(tmp_path)
    (path / ".tmp-0123-trajectory_7_x_0.pt").write_bytes(b"partial")
    (path / "trajectory_index.journal").write_text('{"trajectory_id": 4, "num')
    code, out = run(capsys, str(path))
    assert code == 0 and out.startswith("OK") and out.count("note [leftover]") == 2
    assert run(capsys, str(path), "--repair")[0] == 0
    assert sorted(p.name for p in path.iterdir() if not p.name.endswith(".pt") and p.name != LOCK_NAME) == [
        "metadata.json",
        "trajectory_index.columns",
        "trajectory_index.json",
    ]
    loads_and_samples(path, len(IDS))


def test_a_bad_line_inside_the_journal_is_reported(tmp_path, capsys):
    path = tmp_path / "buf"
    buf = TrajectoryReplayBuffer(auto_save=True, auto_save_path=str(path), sample_window_size=0)
    buf.add_trajectories([coded_trajectory(i, n=3, e=2) for i in IDS])
    buf.flush()  # entries in the journal, not yet compacted
    journal = path / "trajectory_index.journal"
    lines = journal.read_text().splitlines()
    lines[1] = "{oops"
    journal.write_text("\n".join(lines) + "\n")
    code, out = run(capsys, str(path))
    assert code == 1 and "line 2 is not an index entry" in out
    code, out = run(capsys, str(path), "--repair")
    assert code == 1 and "another writer holds this buffer directory" in out  # live writer: no repair
    buf.close()  # releases the directory
    assert run(capsys, str(path), "--repair")[0] == 0
    loads_and_samples(path, len(IDS))  # the unlisted file of line 2 is listed again


def test_a_symlink_out_of_the_directory_is_quarantined_not_followed(tmp_path, capsys):
    path = written_dir(tmp_path)
    outside = tmp_path / "outside.pt"
    victim = traj_file(path, 1)
    victim.rename(outside)
    os.symlink(outside, victim)
    before = outside.read_bytes()
    code, out = run(capsys, str(path), "--repair")
    assert code == 0 and "[unsafe]" in out
    assert (path / "quarantine" / victim.name).is_symlink()
    assert outside.read_bytes() == before  # never moved, never written
    loads_and_samples(path, len(IDS) - 1)


class _Exploit:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_a_file_that_would_run_code_is_quarantined_without_running_it(tmp_path, capsys):
    path = written_dir(tmp_path, "pkl")
    marker = tmp_path / "exploit_ran"
    victim = traj_file(path, 0)
    victim.write_bytes(pickle.dumps({"rewards": _Exploit(str(marker))}))
    data = index(path)
    data["trajectory_index"]["0"]["crc32"] = zlib.crc32(victim.read_bytes())  # a forged checksum
    write_index(path, data)
    code, out = run(capsys, str(path), "--repair")
    assert code == 0 and "[unsafe]" in out
    assert not marker.exists()
    loads_and_samples(path, len(IDS) - 1)


def test_a_segment_directory_without_its_index_cannot_be_repaired(tmp_path, capsys):
    path = written_dir(tmp_path, "segment")
    (path / "trajectory_index.json").write_text("[")
    code, out = run(capsys, str(path), "--repair")
    assert code == 1 and "cannot be listed again without its index" in out


def test_json_report_and_a_second_repair_finds_nothing(tmp_path, capsys):
    path = written_dir(tmp_path)
    traj_file(path, 0).unlink()
    code, out = run(capsys, str(path), "--json")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False
    assert [(p["kind"], p["trajectory_id"]) for p in report["problems"]] == [("missing", 0)]
    code, out = run(capsys, str(path), "--repair", "--json")
    report = json.loads(out)
    assert code == 0 and report["repaired"] and report["after_repair"]["ok"]
    assert verify_directory(str(path)).ok


def test_progress_is_reported_per_trajectory(tmp_path):
    path = written_dir(tmp_path)
    calls: list[tuple[int, int]] = []
    verify_directory(str(path), progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, len(IDS)) for i in range(1, len(IDS) + 1)]
