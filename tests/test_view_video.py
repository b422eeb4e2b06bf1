"""Videos of trajectories (``render_video``, ``rlinf-buffer view --video``): one frame per step at
the given rate, the step's camera images in their boxes, the plots alone without cameras, and
clear errors; and the PNG view's state panels and frame labels."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from conftest import coded_trajectory, odd_trajectory
from test_view import save, scene_trajectory

from rlinf_replay_buffer import TrajectoryReplayBuffer
from rlinf_replay_buffer.cli import main
from rlinf_replay_buffer.errors import InvalidArgumentError, MissingDependencyError
from rlinf_replay_buffer.tools.video import read_video, video_info
from rlinf_replay_buffer.tools.view import VideoResult, render_trajectory, render_video

pytest.importorskip("av")
pytest.importorskip("matplotlib")


def decoded(result: VideoResult) -> list[np.ndarray]:
    frames = list(read_video(result.out))
    assert all(f.shape == (result.height, result.width, 3) for f in frames)
    return frames


def upscaled(image: torch.Tensor, box: tuple[int, int, int, int]) -> np.ndarray:
    """A stored ``[h, w, 3]`` uint8 image repeated to its box's size (a whole factor)."""
    _, _, height, width = box
    factor = height // image.shape[0]
    assert (image.shape[0] * factor, image.shape[1] * factor) == (height, width)
    return image.numpy().repeat(factor, axis=0).repeat(factor, axis=1).astype(np.int16)


def crop(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    top, left, height, width = box
    return frame[top : top + height, left : left + width].astype(np.int16)


@pytest.mark.parametrize("fmt", ["pt", "pkl", "segment"])
@pytest.mark.parametrize(("name", "fps"), [("traj.mp4", 10.0), ("traj.gif", 5.0)])
def test_a_video_has_one_frame_per_step_at_the_given_rate(tmp_path, fmt, name, fps):
    path = save(tmp_path, [coded_trajectory(i, n=4, e=2, num_envs=2) for i in range(2)], fmt)
    result = render_video(path, 1, str(tmp_path / name), env=1, fps=fps)
    info = video_info(result.out)
    assert (info["frames"], info["fps"]) == (8, fps) and result.frames == 8 and result.fps == fps
    assert (info["width"], info["height"]) == (result.width, result.height)
    assert result.width >= 1024 and result.width % 2 == 0 and result.height % 2 == 0
    assert result.cameras == ["curr_obs.main_images"]
    assert result.fields[:3] == ["curr_obs.states", "curr_obs.env_ids", "actions"]
    assert len(decoded(result)) == 8


@pytest.mark.parametrize("name", ["scene.mp4", "scene.gif"])
def test_each_frame_shows_the_steps_camera_images(tmp_path, name):
    trajectory = scene_trajectory(12, 2)
    path = save(tmp_path, [trajectory])
    result = render_video(path, 0, str(tmp_path / name), env=1)
    assert result.cameras == ["curr_obs.main_images", "curr_obs.wrist_images"]
    frames = decoded(result)
    assert len(frames) == 12
    for camera, box in zip(("main_images", "wrist_images"), result.camera_boxes, strict=True):
        assert box[2] == 192  # 64 pixels scaled up three times
        stored = [upscaled(trajectory.curr_obs[camera][t, 1], box) for t in range(12)]
        for t, frame in enumerate(frames):
            errors = [float(np.abs(crop(frame, box) - image).mean()) for image in stored]
            assert errors[t] < 4  # lossy, but close
            if camera == "main_images":  # every step of this camera looks different
                assert int(np.argmin(errors)) == t


def test_the_cursor_moves_from_frame_to_frame(tmp_path):
    path = save(tmp_path, [scene_trajectory(6, 1, images=False)])
    frames = decoded(render_video(path, 0, str(tmp_path / "plots.mp4")))
    plots = [frame[120:].astype(np.int16) for frame in frames]  # below the label and the facts
    assert all(np.abs(a - b).max() > 100 for a, b in zip(plots[:-1], plots[1:], strict=True))


def test_a_buffer_without_cameras_makes_a_video_of_the_plots(tmp_path):
    path = save(tmp_path, [scene_trajectory(20, 2, images=False)])
    result = render_video(path, 0, str(tmp_path / "plots.gif"), env=1, fps=20)
    assert result.cameras == [] and result.camera_boxes == []
    assert result.fields == ["curr_obs.states", "actions", "rewards", "dones", "terminations", "truncations"]
    assert video_info(result.out)["frames"] == 20
    frames = decoded(result)
    assert frames[0].std() > 10  # not blank


def test_odd_sized_and_odd_typed_fields_make_a_video(tmp_path):
    path = save(tmp_path, [odd_trajectory(0, t=3, b=2, empty=False)], "segment")
    result = render_video(path, 0, str(tmp_path / "odd.mp4"), env=1)
    assert set(result.cameras) >= {"curr_obs.rgb", "curr_obs.rgba"}
    assert all(box[2] >= 200 for box in result.camera_boxes)  # 4 and 5 pixel frames scaled up
    assert len(decoded(result)) == 3


def test_a_directory_written_through_a_small_cache_plays(tmp_path):
    auto = tmp_path / "auto"
    with TrajectoryReplayBuffer(
        enable_cache=True, cache_size=1, sample_window_size=0, auto_save=True, auto_save_path=str(auto)
    ) as buffer:
        ids = buffer.add_trajectories([coded_trajectory(i, n=3, e=1, num_envs=2) for i in range(4)])
        buffer.flush()
        buffer.sample(8)
        result = render_video(str(auto), ids[0], str(tmp_path / "first.mp4"))
    assert video_info(result.out)["frames"] == 3


def test_errors_name_the_problem_and_write_nothing(tmp_path):
    path = save(tmp_path, [coded_trajectory(i, n=3, e=1, num_envs=2) for i in range(3)])
    out = str(tmp_path / "v.mp4")
    with pytest.raises(InvalidArgumentError, match=r"no trajectory 7; the directory holds ids 0\.\.2"):
        render_video(path, 7, out)
    with pytest.raises(InvalidArgumentError, match=r"env 2 is out of range: trajectory 0 has B=2 envs"):
        render_video(path, 0, out, env=2)
    with pytest.raises(InvalidArgumentError, match=r"unknown video suffix '\.avi'"):
        render_video(path, 0, str(tmp_path / "v.avi"))
    with pytest.raises(InvalidArgumentError, match=r"fps must be > 0"):
        render_video(path, 0, out, fps=0)
    assert os.listdir(tmp_path) == ["buf"]


def test_missing_pyav_is_reported_before_reading(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(MissingDependencyError, match=r"pip install rlinf-replay-buffer\[video\]"):
        render_video(str(tmp_path / "not-read"), 0, str(tmp_path / "v.mp4"))


def test_the_picture_plots_states_and_labels_frames(tmp_path):
    path = save(tmp_path, [scene_trajectory(24, 2)])
    result = render_trajectory(path, 0, str(tmp_path / "t.png"), env=1, dpi=50)
    assert result.fields[0] == "curr_obs.states"
    assert os.path.getsize(result.out) > 0 and result.width == 800
    short = render_trajectory(path, 0, str(tmp_path / "short.png"), env=1, dpi=50, cameras=[])
    assert result.height > short.height  # frames with two-line labels above the same panels


# -- the command line ----------------------------------------------------------------------------
def test_the_command_line_writes_a_video(tmp_path, capsys):
    path = save(tmp_path, [coded_trajectory(i, n=3, e=2, num_envs=2) for i in range(2)])
    out = tmp_path / "v.gif"
    assert main(["view", path, "--trajectory", "1", "--env", "1", "--video", str(out), "--fps", "5"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out} (") and "6 frames at 5 fps" in printed
    assert video_info(str(out))["frames"] == 6


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sample", "4", "--video", "{tmp}/v.mp4"], "--video plays one trajectory: give --trajectory ID"),
        (["--trajectory", "0", "--out", "{tmp}/v.png", "--fps", "5"], "--fps sets the speed of a --video"),
        (["--trajectory", "0", "--video", "{tmp}/v.mp4", "--fps", "-1"], "--fps must be"),
        (["--trajectory", "0", "--video", "{tmp}/v.mov"], "unknown video suffix '.mov'"),
        (["--trajectory", "5", "--video", "{tmp}/v.mp4"], "no trajectory 5"),
    ],
)
def test_the_command_line_explains_bad_video_options(tmp_path, capsys, argv, message):
    path = save(tmp_path, [coded_trajectory(0, n=3, e=1)])
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["view", path, *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert os.listdir(tmp_path) == ["buf"]


def test_out_and_video_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit, match="2"):
        main(["view", str(tmp_path), "--trajectory", "0", "--out", "a.png", "--video", "a.mp4"])
    assert "not allowed with argument" in capsys.readouterr().err
