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
from rlinf_replay_buffer.cli import COMMANDS, command_line_message, main, reference_markdown
from rlinf_replay_buffer.tools import merge_split_cli, visualize_cli
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
    assert code == 0 and info["trajectory_format"] == "segment" and info["num_trajectories"] == 4
    assert info["total_samples"] == 4 * 6 * 2 and info["bytes"] > 0
    assert {"name": "rewards", "shape": [1], "dtype": "torch.float32"} in info["fields"]
    assert info["trajectory_id_range"] == [0, 3] and info["model_update_count_range"] == [0, 3]


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
    batch = {leaf["name"]: leaf for leaf in result["batch"]}
    assert batch["actions"]["shape"] == [8, 3, 2]
    assert batch["mask"] == {"name": "mask", "shape": [8, 3], "dtype": "torch.bool"}
    assert result["num_trajectories"] == 4 and result["stats"]["total_samples"] == 48


def test_merge_and_split_subcommands(tmp_path, capsys):
    src = tmp_path / "ranks"
    for rank in range(2):
        written_dir(src, name=f"rank_{rank}", n=3)
    code, out, _ = run(
        capsys, "merge", "--source-path", str(src), "--save-path", str(tmp_path / "m"), "--copy", "--json"
    )
    assert code == 0 and json.loads(out)["num_trajectories"] == 6
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
    assert code == 0 and json.loads(out)["num_trajectories"] == 4
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
        assert json.loads(proc.stdout)["num_trajectories"] == 4


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
    assert data["num_trajectories"] == 3 and [r["num_trajectories"] for r in data["ranks"]] == [2, 1]
    assert main(["verify", "--quiet", str(tmp_path)]) == 0
    next((tmp_path / "rank_1").glob("trajectory_*.pt")).unlink()
    capsys.readouterr()
    assert main(["verify", "--quiet", "--json", str(tmp_path)]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and [r["ok"] for r in data["ranks"]] == [True, False]
    assert data["path"] == str(tmp_path) and data["num_trajectories"] == 2


# -- version, abbreviations, help text -------------------------------------------------------------
def test_version_is_printed_and_exits_0(tmp_path, capsys):
    from importlib.metadata import version

    from rlinf_replay_buffer import __version__

    assert version("rlinf-replay-buffer") == __version__
    for argv in (["--version"], ["--load-path", str(tmp_path), "--version"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
        assert capsys.readouterr().out == f"rlinf-buffer {__version__}\n"
    proc = subprocess.run(
        [sys.executable, "-m", "rlinf_replay_buffer", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout == f"rlinf-buffer {__version__}\n", proc.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--vers"],
        ["--load", "{path}"],
        ["--load-path", "{path}", "--num", "8"],
        ["info", "{path}", "--js"],
        ["sample", "{path}", "--seq", "2"],
        ["export", "{path}", "--out", "{tmp}/x.parquet", "--over"],
        ["verify", "{path}", "--rep"],
    ],
)
def test_options_are_never_abbreviated(tmp_path, capsys, argv):
    path = written_dir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(path=path, tmp=tmp_path) for a in argv])
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


def test_help_speaks_to_users():
    text = reference_markdown()
    for word in ("seed's", "the seed form", "=True", "is_ready", "SOURCE ("):
        assert word not in text


# -- errors name the flag that fixes them ----------------------------------------------------------
@pytest.mark.parametrize(
    "argv, expected",
    [
        (["sample", "{path}", "--num-chunks", "0"], "--num-chunks must be an int >= 1, got 0"),
        (["sample", "{path}", "--seq-len", "2", "--num-chunks", "0"], "--num-chunks must be"),
        (["sample", "{path}", "--seq-len", "0"], "--seq-len must be an int >= 1"),
        (["sample", "{path}", "--seq-len", "50"], "shorten --seq-len or pass --pad"),
        (["sample", "{path}", "--cache-size", "-1"], "--cache-size must be an int >= 0"),
        (["sample", "{path}", "--sample-window-size", "-1"], "--sample-window-size must be an int >= 0"),
        (["sample", "{path}", "--seed", "-1"], "--seed must be an int >= 0"),
        (["sample", "{empty}"], "the buffer directory is empty"),
        (["--load-path", "{path}", "--num-chunks", "0"], "--num-chunks must be an int >= 1"),
        (
            ["split", "--source-path", "{path}", "--save-path", "{tmp}/s", "--split-count", "0"],
            "--split-count",
        ),
        (
            ["split", "--source-path", "{path}", "--save-path", "{tmp}/s", "--split-count", "9"],
            "--split-count 9",
        ),
        (["merge", "--source-path", "{path}", "--save-path", "{full}"], "choose a new or empty --save-path"),
        (["merge", "--source-path", "{path}", "--save-path", "{path}/in"], "--save-path must not be inside"),
        (
            ["view", "{path}", "--trajectory", "9", "--out", "{tmp}/v.png"],
            "--trajectory takes one of the ids 0..3",
        ),
        (
            ["view", "{path}", "--trajectory", "0", "--env", "5", "--out", "{tmp}/v.png"],
            "--env 5 is out of range",
        ),
        (["view", "{path}", "--trajectory", "0", "--out", "{tmp}/v.jpg"], "--out must end in .png"),
        (["view", "{path}", "--sample", "0", "--out", "{tmp}/v.png"], "--sample must be an int >= 1"),
        (["view", "{path}", "--sample", "2", "--seed", "-1", "--out", "{tmp}/v.png"], "--seed must be"),
        (["view", "{empty}", "--sample", "2", "--out", "{tmp}/v.png"], "the buffer directory is empty"),
        (["export", "{path}", "--out", "{full}/file"], "choose a new path or pass --overwrite"),
        (["export", "{path}", "--out", "{full}"], "give --out the path of the Parquet file"),
        (["export", "{path}", "--out", ""], "--out must be a file path"),
        (["import", "{parquet}", "--save-path", "{full}"], "choose a new or empty --save-path"),
        (["import", "{parquet}", "--save-path", "{path}"], "or pass --overwrite to replace"),
        (
            ["split", "--source-path", "{path}", "--save-path", "{empty}", "--split-count", "1"],
            "or pass --overwrite to replace",
        ),
    ],
)
def test_errors_name_the_flag_that_fixes_them(tmp_path, capsys, argv, expected):
    path = written_dir(tmp_path)
    full = tmp_path / "full"
    full.mkdir()
    (full / "file").write_bytes(b"")
    empty = tmp_path / "empty"
    TrajectoryReplayBuffer().save_checkpoint(str(empty))
    parquet = tmp_path / "p.parquet"
    if "{parquet}" in argv:
        assert main(["export", str(path), "--out", str(parquet), "--quiet"]) == 0
        capsys.readouterr()
    names = {"path": path, "tmp": tmp_path, "full": full, "empty": empty, "parquet": parquet}
    code, out, err = run(capsys, *[a.format(**names) for a in argv])
    assert code == 1 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert expected in err, err
    for python_word in (
        "=True",
        "is_ready",
        "num_chunks",
        "num_sequences",
        "seq_len",
        "out_path",
        "dest_path",
    ):
        assert python_word not in err


def test_export_overwrite_replaces_the_file(tmp_path, capsys):
    path = written_dir(tmp_path)
    parquet = tmp_path / "p.parquet"
    parquet.write_bytes(b"old")
    assert main(["export", str(path), "--out", str(parquet)]) == 1
    assert parquet.read_bytes() == b"old"
    assert main(["export", str(path), "--out", str(parquet), "--overwrite"]) == 0
    assert parquet.read_bytes()[:4] == b"PAR1"


def test_overwrite_replaces_a_buffer_directory_for_import_merge_and_split(tmp_path, capsys):
    path = written_dir(tmp_path)  # 4 trajectories
    small = written_dir(tmp_path, name="small", n=1)
    parquet = tmp_path / "p.parquet"
    assert main(["export", str(path), "--out", str(parquet), "--quiet"]) == 0
    for argv, expected in (
        (["import", str(parquet), "--save-path", str(small)], 4),
        (["merge", "--source-path", str(path), "--save-path", str(small), "--copy"], 4),
        (["split", "--source-path", str(path), "--save-path", str(small), "--split-count", "2", "--copy"], 2),
    ):
        assert main([*argv, "--quiet"]) == 1
        assert main([*argv, "--quiet", "--overwrite"]) == 0
        back = TrajectoryReplayBuffer()
        back.load_checkpoint(str(small))
        assert back.size == expected, argv
    capsys.readouterr()


def test_sample_pad_lets_runs_cross_episode_ends(tmp_path, capsys):
    path = written_dir(tmp_path)
    code, _, err = run(capsys, "sample", str(path), "--num-chunks", "4", "--seq-len", "50")
    assert code == 1 and "--pad" in err
    code, out, _ = run(capsys, "sample", str(path), "--num-chunks", "4", "--seq-len", "50", "--pad", "--json")
    batch = {leaf["name"]: leaf["shape"] for leaf in json.loads(out)["batch"]}
    assert code == 0 and batch["mask"] == [4, 50]


def test_command_line_message_replaces_argument_names_only():
    flags = {
        "out": "--out",
        "seed": "--seed",
        "env": "--env",
        "out_path": "--out",
        "overwrite=True": "--overwrite",
    }
    assert command_line_message("out must end in .png, got '/a/out_path/seed.jpg'", flags) == (
        "--out must end in .png, got '/a/out_path/seed.jpg'"
    )
    assert command_line_message("env 5 is out of range: trajectory 0 has 2", flags) == (
        "--env 5 is out of range: trajectory 0 has 2"
    )
    assert command_line_message("seed must be >= 0 (too small: seed must be >= 0)", flags) == (
        "--seed must be >= 0 (too small: --seed must be >= 0)"
    )
    assert command_line_message("/x/out_path:\n exists;   pass overwrite=True", flags) == (
        "/x/out_path: exists; pass --overwrite"
    )


def test_the_toolkit_scripts_name_their_flags(tmp_path, capsys):
    path = written_dir(tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_bytes(b"")
    argv = ["--source-path", str(path), "--save-path", str(tmp_path / "full"), "--copy"]
    assert merge_split_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "choose a new or empty --save-path" in err
    assert visualize_cli.main(["--replay_dir", str(path), "--output", str(tmp_path / "v.jpg")]) == 1
    assert "--output must end in .png" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        merge_split_cli.main(["--source", str(path), "--save-path", str(tmp_path / "x")])
    assert exit_info.value.code == 2


def test_a_mistyped_top_level_option_is_named_in_the_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--vers"])
    assert info.value.code == 2
    assert "unknown option --vers" in capsys.readouterr().err


def test_rlinfs_script_prints_its_own_usage_for_help(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["rlinf/data/replay_buffer.py", "--help"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--load-path" in out and "COMMAND" not in out
