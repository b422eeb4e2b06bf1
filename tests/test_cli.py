"""The ``rlinf-buffer`` command line, run in-process through ``main(argv)``: every subcommand,
``--help``, ``--json``, one-line errors, progress bars, and the generated reference."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, coded_trajectory

from rlinf_replay_buffer import TrajectoryReplayBuffer
from rlinf_replay_buffer.cli import COMMANDS, main, reference_markdown
from rlinf_replay_buffer.tools.progress import progress_bar


def written_dir(tmp_path: Path, fmt: str = "pt", name: str = "buf", n: int = 4) -> Path:
    path = tmp_path / name
    buf = TrajectoryReplayBuffer(sample_window_size=0, trajectory_format=fmt)
    buf.add_trajectories([coded_trajectory(i, n=3, e=2, model_update_count=i) for i in range(n)])
    buf.save_checkpoint(str(path))
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_command_has_help(capsys, command):
    argv = ["--help"] if command is None else [command, "--help"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rlinf-buffer")
    if command is not None:
        assert f"rlinf-buffer {command}" in out


def test_the_cli_reference_in_docs_matches_help():
    doc = (REPO / "docs" / "cli.md").read_text()
    assert doc == reference_markdown(), "docs/cli.md is stale: regenerate it (command at its top)"


def test_info_summarizes_a_directory(tmp_path, capsys):
    path = written_dir(tmp_path)
    code, out, _ = run(capsys, "info", str(path))
    assert code == 0
    assert "trajectories    4 (ids 0..3, next 4)" in out
    assert "update counts 0..3" in out and "checksums" in out and "4 of 4" in out
    assert "curr_obs.main_images" in out and "torch.uint8" in out and "[4, 4, 3]" in out


def test_info_json_is_machine_readable(tmp_path, capsys):
    path = written_dir(tmp_path, "segment")
    code, out, _ = run(capsys, "info", str(path), "--json")
    info = json.loads(out)
    assert code == 0 and info["trajectory_format"] == "segment" and info["trajectories"] == 4
    assert info["transitions"] == 4 * 6 * 2 and info["bytes"] > 0
    assert {"name": "rewards", "shape": [1], "dtype": "torch.float32"} in info["fields"]


def test_sample_subcommand_and_the_seed_form_print_the_same_keys(tmp_path, capsys):
    path = written_dir(tmp_path)
    code, out_sub, _ = run(capsys, "sample", str(path), "--num-chunks", "32")
    assert code == 0
    code, out_seed, _ = run(capsys, "--load-path", str(path), "--num-chunks", "32")
    assert code == 0
    keys = [line.split()[0] for line in out_sub.splitlines()[2:]]
    assert keys == [line.split()[0] for line in out_seed.splitlines()[2:]]
    assert "curr_obs.states" in keys


def test_sample_json_and_sequences(tmp_path, capsys):
    path = written_dir(tmp_path)
    code, out, _ = run(capsys, "sample", str(path), "--num-chunks", "8", "--seq-len", "3", "--json")
    result = json.loads(out)
    assert code == 0
    assert result["keys"]["actions"]["shape"] == [8, 3, 2]
    assert result["keys"]["mask"] == {"shape": [8, 3], "dtype": "torch.bool"}


def test_merge_and_split_subcommands(tmp_path, capsys):
    src = tmp_path / "ranks"
    for rank in range(2):
        written_dir(src, name=f"rank_{rank}", n=3)
    code, out, _ = run(
        capsys, "merge", "--source-path", str(src), "--save-path", str(tmp_path / "m"), "--copy", "--json"
    )
    assert code == 0 and json.loads(out)["trajectories"] == 6
    code, out, _ = run(
        capsys,
        "split",
        "--source-path",
        str(tmp_path / "m"),
        "--save-path",
        str(tmp_path / "s"),
        "--split-count",
        "2",
    )
    assert code == 0 and out.startswith("moved 2 trajectories")
    again = TrajectoryReplayBuffer()
    again.load_checkpoint(str(tmp_path / "s"))
    assert again.size == 2


def test_verify_subcommand(tmp_path, capsys):
    path = written_dir(tmp_path)
    code, out, _ = run(capsys, "verify", str(path))
    assert code == 0 and out.startswith("OK")


def test_view_writes_a_picture(tmp_path, capsys):
    path = written_dir(tmp_path)
    out_png = tmp_path / "t.png"
    code, out, _ = run(capsys, "view", str(path), "--trajectory", "1", "--out", str(out_png))
    assert code == 0 and out_png.stat().st_size > 1000 and out.startswith("wrote")
    code, out, _ = run(capsys, "view", str(path), "--sample", "8", "--out", str(tmp_path / "s.png"), "--json")
    assert code == 0 and json.loads(out)["width"] > 0


def test_export_then_import_round_trip(tmp_path, capsys):
    path = written_dir(tmp_path)
    parquet = tmp_path / "buf.parquet"
    code, out, _ = run(capsys, "export", str(path), "--out", str(parquet))
    assert code == 0 and parquet.exists() and "exported 48 transitions" in out
    code, out, _ = run(capsys, "import", str(parquet), "--save-path", str(tmp_path / "back"), "--json")
    assert code == 0 and json.loads(out)["trajectories"] == 4
    back = TrajectoryReplayBuffer()
    back.load_checkpoint(str(tmp_path / "back"))
    assert back.size == 4


@pytest.mark.parametrize(
    "argv",
    [
        ["info", "{missing}"],
        ["verify", "{missing}"],
        ["sample", "{missing}"],
        ["--load-path", "{missing}"],
        ["view", "{missing}", "--trajectory", "0", "--out", "{tmp}/x.png"],
        ["export", "{missing}", "--out", "{tmp}/x.parquet"],
        ["import", "{missing}", "--save-path", "{tmp}/y"],
        ["merge", "--source-path", "{missing}", "--save-path", "{tmp}/z"],
    ],
)
def test_errors_are_one_line_and_exit_1(tmp_path, capsys, argv):
    argv = [a.format(missing=tmp_path / "nope", tmp=tmp_path) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "nope" in err


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["info"], ["view", "x", "--out", "y.png"]])
def test_bad_usage_exits_2(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_on_a_terminal_only():
    terminal = _Terminal()
    with progress_bar("merging", stream=terminal) as progress:
        assert progress is not None
        for done in range(1, 5):
            progress(done, 4)
    assert "merging" in terminal.getvalue() and "4/4" in terminal.getvalue()
    with progress_bar("merging", stream=io.StringIO()) as progress:
        assert progress is None  # not a terminal: silent
    with progress_bar("merging", quiet=True, stream=_Terminal()) as progress:
        assert progress is None


def test_console_script_and_module_run_the_same_cli(tmp_path):
    path = written_dir(tmp_path)
    script = shutil.which("rlinf-buffer")
    assert script is not None, "rlinf-buffer is not installed: run `pip install -e .` (scripts/test.sh does)"
    for cmd in ([script], [sys.executable, "-m", "rlinf_replay_buffer"]):
        proc = subprocess.run(
            [*cmd, "info", str(path), "--json"], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["trajectories"] == 4


def test_loading_a_directory_reports_progress(tmp_path):
    path = written_dir(tmp_path, n=5)
    calls: list[tuple[int, int]] = []
    buf = TrajectoryReplayBuffer(sample_window_size=0)
    buf.load_checkpoint(str(path), progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (5, 5)  # index entries resolved
    assert calls[1:] == [(i, 5) for i in range(1, 6)]  # trajectories read into memory


def test_info_and_verify_take_a_folder_of_ranks(tmp_path, capsys):
    """A sharded buffer's directory (or a per-rank checkpoint): every rank, and the totals."""
    for rank, ids in enumerate(([0, 2], [1])):
        buf = TrajectoryReplayBuffer(auto_save=True, auto_save_path=str(tmp_path / f"rank_{rank}"))
        buf.add_trajectories([coded_trajectory(i, n=4, e=1, num_envs=2, images=False) for i in ids])
        buf.close()
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 ranks, 3 trajectories, 24 transitions" in out and "rank_1" in out
    assert main(["info", "--json", str(tmp_path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["trajectories"] == 3 and [r["trajectories"] for r in data["rank_info"]] == [2, 1]
    assert main(["verify", "--quiet", str(tmp_path)]) == 0
    next((tmp_path / "rank_1").glob("trajectory_*.pt")).unlink()
    capsys.readouterr()
    assert main(["verify", "--quiet", "--json", str(tmp_path)]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and [r["ok"] for r in data["ranks"]] == [True, False]
