"""RLinf's viewers, ``toolkits/replay_buffer/visualize.py`` and ``visualize_headless.py``: RLinf's
arguments (no abbreviations), the picture they save (first trajectory, chosen camera, RLinf's
camera fallback), the headless command loop, errors, and a run as a script from the checkout."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_view import BLUE, RED, count_color, save

from rlinf_replay_buffer import Trajectory
from rlinf_replay_buffer.tools.visualize_cli import (
    build_headless_parser,
    build_parser,
    headless_main,
    main,
)

PIL_Image = pytest.importorskip("PIL.Image")
pytest.importorskip("matplotlib")

REPO = Path(__file__).resolve().parents[1]
VISUALIZE = REPO / "toolkits" / "replay_buffer" / "visualize.py"
HEADLESS = REPO / "toolkits" / "replay_buffer" / "visualize_headless.py"
GREEN = (0, 255, 0)
YELLOW = (255, 255, 0)


def camera_trajectory(colors: dict[str, list[tuple[int, int, int]]], num_steps: int = 4) -> Trajectory:
    """``curr_obs[name]`` of env ``b`` is filled with ``colors[name][b]`` (16x16 uint8)."""
    num_envs = len(next(iter(colors.values())))
    obs = {
        name: torch.tensor(cols, dtype=torch.uint8)[None, :, None, None, :]
        .expand(num_steps, num_envs, 16, 16, 3)
        .clone()
        for name, cols in colors.items()
    }
    obs["states"] = torch.zeros(num_steps, num_envs, 3)
    return Trajectory(
        max_episode_length=num_steps,
        model_weights_id="weights-0",
        actions=torch.zeros(num_steps, num_envs, 2),
        rewards=torch.ones(num_steps, num_envs, 1),
        dones=torch.zeros(num_steps, num_envs, 1, dtype=torch.bool),
        curr_obs=obs,
        next_obs={k: v.clone() for k, v in obs.items()},
    )


@pytest.fixture
def two_cameras(tmp_path) -> str:
    """Trajectory 0: main red/blue, wrist green/yellow (env 0/env 1); trajectory 1: main
    yellow/green, wrist blue/red."""
    return save(
        tmp_path,
        [
            camera_trajectory({"main_images": [RED, BLUE], "wrist_images": [GREEN, YELLOW]}),
            camera_trajectory({"main_images": [YELLOW, GREEN], "wrist_images": [BLUE, RED]}),
        ],
    )


def picture(path: Path) -> np.ndarray:
    with PIL_Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def shows(path: Path) -> set[tuple[int, int, int]]:
    """The frame colours a picture shows (each drawn over many pixels)."""
    px = picture(path)
    return {c for c in (RED, BLUE, GREEN, YELLOW) if count_color(px, c) > 1000}


# -- arguments --------------------------------------------------------------------------------
def options(parser) -> dict[str, object]:
    return {
        opt: action
        for action in parser._actions
        for opt in action.option_strings
        if opt not in ("-h", "--help")
    }


def test_arguments_are_rlinfs():
    viz = options(build_parser())
    assert set(viz) == {"--replay_dir", "--camera", "--save_image", "--output", "--no_display"}
    assert viz["--replay_dir"].required
    assert viz["--camera"].choices == ("main_images", "wrist_images", "extra_view_images")
    assert viz["--camera"].default == "main_images"
    assert viz["--output"].default == "replay_buffer_viz.png"
    assert viz["--save_image"].default is False and viz["--no_display"].default is False
    headless = options(build_headless_parser())
    assert set(headless) == {"--replay_dir", "--camera", "--output"}
    assert headless["--replay_dir"].required
    assert headless["--output"].default == "replay_buffer_viz.png"


@pytest.mark.parametrize("entry", [main, headless_main])
def test_abbreviated_options_are_refused(entry, two_cameras, capsys):
    with pytest.raises(SystemExit) as exc:
        entry(["--replay", two_cameras])
    assert exc.value.code == 2
    assert "--replay_dir" in capsys.readouterr().err


def test_no_display_requires_save_image(two_cameras, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--replay_dir", two_cameras, "--no_display", "--output", str(tmp_path / "v.png")])
    assert exc.value.code == 2
    assert "--no_display requires --save_image" in capsys.readouterr().err
    assert not (tmp_path / "v.png").exists()


def test_camera_outside_the_choices_is_refused(two_cameras, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--replay_dir", two_cameras, "--camera", "front"])
    assert exc.value.code == 2
    assert "invalid choice: 'front'" in capsys.readouterr().err


# -- visualize.py -----------------------------------------------------------------------------
def test_saves_the_first_trajectory_and_says_no_window_opens(two_cameras, tmp_path, capsys):
    out = tmp_path / "viz.png"
    assert main(["--replay_dir", two_cameras, "--output", str(out)]) == 0
    assert shows(out) == {RED}  # trajectory 0, env 0, main_images only
    stdout = capsys.readouterr().out
    assert "2 trajectories" in stdout and "camera: main_images" in stdout
    assert f"no window is opened (drawn without a display): open {out}" in stdout


def test_save_image_no_display_saves_quietly(two_cameras, tmp_path, capsys):
    out = tmp_path / "viz.png"
    assert main(["--replay_dir", two_cameras, "--save_image", "--no_display", "--output", str(out)]) == 0
    assert shows(out) == {RED}
    assert "no window" not in capsys.readouterr().out


def test_camera_chooses_the_frames(two_cameras, tmp_path):
    out = tmp_path / "wrist.png"
    assert main(["--replay_dir", two_cameras, "--camera", "wrist_images", "--output", str(out)]) == 0
    assert shows(out) == {GREEN}


def test_missing_camera_falls_back_like_rlinf(tmp_path, capsys):
    path = save(tmp_path, [camera_trajectory({"wrist_images": [BLUE]})], name="wrist_only")
    out = tmp_path / "fallback.png"
    assert main(["--replay_dir", path, "--camera", "extra_view_images", "--output", str(out)]) == 0
    assert "note: extra_view_images is not in curr_obs; showing wrist_images" in capsys.readouterr().out
    assert shows(out) == {BLUE}


def test_without_any_camera_draws_the_plots(tmp_path, capsys):
    traj = camera_trajectory({"main_images": [RED]})
    traj.curr_obs = {"states": traj.curr_obs["states"]}
    traj.next_obs = {"states": traj.next_obs["states"]}
    path = save(tmp_path, [traj], name="states_only")
    out = tmp_path / "plots.png"
    assert main(["--replay_dir", path, "--output", str(out)]) == 0
    assert "no camera images in curr_obs" in capsys.readouterr().out
    assert shows(out) == set() and picture(out).std() > 10


def test_rlinf_written_directory(fixture_dir, tmp_path):
    out = tmp_path / "rlinf.png"
    assert main(["--replay_dir", str(fixture_dir), "--save_image", "--no_display", "--output", str(out)]) == 0
    assert picture(out).std() > 10


@pytest.mark.parametrize("entry", [main, headless_main])
def test_missing_directory_is_a_one_line_error(entry, tmp_path, capsys):
    assert entry(["--replay_dir", str(tmp_path / "nope"), "--output", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nope" in err[0]


def test_output_must_be_a_png(two_cameras, tmp_path, capsys):
    assert main(["--replay_dir", two_cameras, "--output", str(tmp_path / "viz.jpg")]) == 1
    assert "must end in .png" in capsys.readouterr().err


# -- visualize_headless.py --------------------------------------------------------------------
def run_headless(monkeypatch, argv: list[str], commands: str) -> int:
    monkeypatch.setattr(sys, "stdin", io.StringIO(commands))
    return headless_main(argv)


def test_headless_commands_redraw_the_picture(two_cameras, tmp_path, monkeypatch, capsys):
    out = tmp_path / "h.png"
    argv = ["--replay_dir", two_cameras, "--output", str(out)]
    assert run_headless(monkeypatch, argv, "") == 0  # end of input right away: the first view
    assert shows(out) == {RED}
    assert run_headless(monkeypatch, argv, "nt\nnb\ninfo\nq\nnt\n") == 0
    assert shows(out) == {GREEN}  # trajectory 1, env 1, main_images; nothing after q
    stdout = capsys.readouterr().out
    assert "trajectory 1 (#1 of 2), env 1 of 2, camera main_images" in stdout  # info
    assert run_headless(monkeypatch, argv + ["--camera", "wrist_images"], "j 1\npb\nnb\n") == 0
    assert shows(out) == {RED}  # trajectory 1, env 1, wrist_images


def test_headless_moves_stop_at_the_ends_and_step_commands_explain(
    two_cameras, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "h.png"
    argv = ["--replay_dir", two_cameras, "--output", str(out)]
    assert run_headless(monkeypatch, argv, "pt\npb\nn\nhome\nj 9\nj x\nj\nfoo\nexit\n") == 0
    stdout = capsys.readouterr().out
    assert "no trajectory before this one" in stdout
    assert "no env column -1" in stdout
    assert "the picture shows every step of the trajectory" in stdout
    assert "no trajectory 9; ids: 0..1" in stdout
    assert "not a trajectory id: 'x'" in stdout
    assert "usage: j <trajectory id>" in stdout
    assert "unknown command 'foo'" in stdout
    assert shows(out) == {RED}  # nothing moved


# -- as scripts from the checkout -------------------------------------------------------------
def test_scripts_run_from_the_checkout(two_cameras, tmp_path):
    out = tmp_path / "script.png"
    done = subprocess.run(
        [sys.executable, str(VISUALIZE), "--replay_dir", two_cameras, "--save_image", "--no_display",
         "--output", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert shows(out) == {RED}
    headless_out = tmp_path / "headless.png"
    done = subprocess.run(
        [sys.executable, str(HEADLESS), "--replay_dir", two_cameras, "--output", str(headless_out)],
        cwd=REPO, input="nt\nq\n", capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert shows(headless_out) == {YELLOW}
