"""Pictures of trajectories (``rlinf_replay_buffer.tools.view``): the PNG exists, has the size the
result reports (``dpi * inches``), is not blank, shows the frames' colours, and errors are clear.

``scene_trajectory`` is a realistic synthetic rollout (also used to draw
``docs/images/view_example.png``): 64x64 frames of two cameras watching a cube pushed towards
a target, 7-dim actions, a sparse success reward, episodes that end and restart.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlinf_replay_buffer import Trajectory, TrajectoryReplayBuffer
from rlinf_replay_buffer.errors import BufferNotFoundError, InvalidArgumentError
from rlinf_replay_buffer.tools import view
from rlinf_replay_buffer.tools.view import (
    RenderResult,
    ToolsNotInstalledError,
    find_cameras,
    frame_array,
    render_sample,
    render_trajectory,
)

PIL_Image = pytest.importorskip("PIL.Image")
pytest.importorskip("matplotlib")

RED = (255, 0, 0)
BLUE = (0, 0, 255)


# -- synthetic data ---------------------------------------------------------------------------
def _draw_scene(
    cube: np.ndarray, target: np.ndarray, grip: np.ndarray, holding: bool, size: int = 64
) -> tuple:
    """A third-person frame and a wrist frame ``[size, size, 3]`` uint8."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.zeros((size, size, 3), np.float32)
    horizon = size * 0.35
    wall = yy < horizon
    img[wall] = (170, 180, 195)
    shade = (yy[~wall] - horizon) / (size - horizon)
    img[~wall] = np.stack([150 + 40 * shade, 110 + 30 * shade, 70 + 20 * shade], axis=-1)

    def square(center: np.ndarray, half: float, color: tuple, canvas: np.ndarray) -> None:
        m = (np.abs(xx - center[0]) <= half) & (np.abs(yy - center[1]) <= half)
        canvas[m] = color

    square(target, 5, (60, 200, 80), img)
    square(cube, 4, (220, 40, 40), img)
    gx, gy = grip
    arm = (np.abs(xx - gx) <= 1.5) & (yy <= gy - 3)
    img[arm] = (70, 70, 80)
    fingers = (np.abs(yy - gy) <= 1.5) & (np.abs(xx - gx) <= (3 if holding else 6))
    img[fingers] = (40, 40, 50)
    main = img.clip(0, 255).astype(np.uint8)
    # wrist camera: a 2x zoom centred below the gripper
    cx, cy = int(np.clip(gx, 16, size - 16)), int(np.clip(gy + 6, 16, size - 16))
    crop = main[cy - 16 : cy + 16, cx - 16 : cx + 16]
    wrist = crop.repeat(2, axis=0).repeat(2, axis=1)
    wrist[:6] = (50, 50, 60)  # the gripper's own body at the top of the wrist view
    return main, wrist


def scene_trajectory(
    num_steps: int = 60, num_envs: int = 3, seed: int = 0, images: bool = True
) -> Trajectory:
    """A pick-and-place-like rollout: the gripper reaches the cube, carries it to the target;
    success gives reward 1 and ends the episode (termination), the env resets at once."""
    rng = np.random.default_rng(seed)
    T, B = num_steps, num_envs
    main = np.zeros((T, B, 64, 64, 3), np.uint8)
    wrist = np.zeros((T, B, 64, 64, 3), np.uint8)
    actions = np.zeros((T, B, 7), np.float32)
    rewards = np.zeros((T, B, 1), np.float32)
    term = np.zeros((T, B, 1), bool)
    trunc = np.zeros((T, B, 1), bool)
    states = np.zeros((T, B, 9), np.float32)
    for b in range(B):

        def reset() -> tuple:
            cube = rng.uniform([14, 34], [30, 50])
            target = rng.uniform([40, 36], [52, 52])
            return cube, target, np.array([32.0, 26.0]), False, 0

        cube, target, grip, holding, age = reset()
        for t in range(T):
            if images:
                main[t, b], wrist[t, b] = _draw_scene(cube, target, grip, holding)
            goal = target if holding else cube
            delta = np.clip(goal - grip, -2.5, 2.5) + rng.normal(0, 0.25, 2)
            rot = 0.3 * np.sin(0.15 * t + b + np.arange(3)) + rng.normal(0, 0.05, 3)
            if not holding and np.linalg.norm(cube - grip) < 2.0:
                holding = True
            elif holding and b % 3 == 2 and rng.random() < 0.12:  # env 2 is clumsy: drops the cube
                holding = False
            actions[t, b] = [
                delta[0] / 2.5,
                delta[1] / 2.5,
                0.2 * np.cos(0.2 * t),
                *rot,
                1.0 if holding else -1.0,
            ]
            states[t, b] = [*grip, *cube, *target, float(holding), age, b]
            grip = grip + delta
            if holding:
                cube = grip.copy()
            age += 1
            if holding and np.linalg.norm(cube - target) < 2.5:
                rewards[t, b] = 1.0
                term[t, b] = True
                cube, target, grip, holding, age = reset()
            elif age >= 30:
                trunc[t, b] = True
                cube, target, grip, holding, age = reset()
    curr = {"states": torch.from_numpy(states)}
    if images:
        curr["main_images"] = torch.from_numpy(main)
        curr["wrist_images"] = torch.from_numpy(wrist)
    term_t, trunc_t = torch.from_numpy(term), torch.from_numpy(trunc)
    return Trajectory(
        max_episode_length=30,
        model_weights_id="6f1c5e9a-3b1d-4c2e-9a57-1d2b3c4d5e6f",
        model_update_count=7,
        actions=torch.from_numpy(actions),
        rewards=torch.from_numpy(rewards),
        terminations=term_t,
        truncations=trunc_t,
        dones=term_t | trunc_t,
        curr_obs=curr,
        next_obs={"states": torch.from_numpy(states)},
    )


def solid_trajectory(
    colors: list[tuple[int, int, int]], num_steps: int = 6, layout: str = "hwc"
) -> Trajectory:
    """Env ``b``'s frames are filled with ``colors[b]`` (16x16); plain rewards/actions/dones."""
    T, B = num_steps, len(colors)
    img = torch.tensor(colors, dtype=torch.uint8)[None, :, None, None, :].expand(T, B, 16, 16, 3).clone()
    if layout == "chw_float":
        img = img.permute(0, 1, 4, 2, 3).float() / 255.0
    dones = torch.zeros(T, B, 1, dtype=torch.bool)
    dones[-1] = True
    return Trajectory(
        max_episode_length=T,
        model_weights_id="weights-0",
        model_update_count=3,
        actions=torch.linspace(-1, 1, T * B * 2).reshape(T, B, 2),
        rewards=torch.arange(T, dtype=torch.float32)[:, None, None].expand(T, B, 1).clone(),
        dones=dones,
        curr_obs={"cam": img, "states": torch.zeros(T, B, 3)},
    )


def save(tmp_path: Path, trajectories: list[Trajectory], fmt: str = "pt", name: str = "buf") -> str:
    path = str(tmp_path / name)
    with TrajectoryReplayBuffer(seed=1, sample_window_size=0, trajectory_format=fmt) as buf:
        buf.add_trajectories(trajectories)
        buf.save_checkpoint(path)
    return path


# -- picture checks ---------------------------------------------------------------------------
def pixels(result: RenderResult) -> np.ndarray:
    assert os.path.isfile(result.out)
    with PIL_Image.open(result.out) as im:
        assert im.format == "PNG"
        assert im.size == (result.width, result.height)
        return np.asarray(im.convert("RGB"))


def count_color(px: np.ndarray, color: tuple[int, int, int]) -> int:
    return int((np.abs(px.astype(int) - np.array(color)).max(axis=-1) <= 3).sum())


def assert_not_blank(px: np.ndarray) -> None:
    assert px.std() > 10, "the picture is (nearly) one colour"
    assert (px < 128).any(axis=-1).mean() > 0.005, "no dark pixels: no text or lines drawn"


# -- render_trajectory ------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["pt", "pkl", "segment"])
def test_trajectory_picture_every_format(tmp_path, fmt):
    path = save(tmp_path, [scene_trajectory(24, 2, seed=1), scene_trajectory(24, 2)], fmt)
    res = render_trajectory(path, 1, str(tmp_path / "t.png"), dpi=60, width_inches=12)
    px = pixels(res)
    assert res.width == round(60 * 12) == px.shape[1]
    assert res.height == px.shape[0] > 300
    assert res.cameras == ["curr_obs.main_images", "curr_obs.wrist_images"]
    assert res.frames == 24  # 12 per camera
    assert res.frame_indices[0] == 0 and res.frame_indices[-1] == 23
    assert res.fields == ["curr_obs.states", "actions", "rewards", "dones", "terminations", "truncations"]
    assert_not_blank(px)


def test_default_size_and_frame_colours(tmp_path):
    path = save(tmp_path, [solid_trajectory([RED, BLUE])])
    res = render_trajectory(path, 0, str(tmp_path / "red.png"))
    px = pixels(res)
    assert (res.width, px.shape[1]) == (1600, 1600)  # 16 in at 100 dpi
    assert res.frames == 6 and res.frame_indices == list(range(6))
    assert count_color(px, RED) > 6 * 50 * 50  # six frames of >= 1.2 in square
    assert count_color(px, BLUE) == 0
    assert_not_blank(px)


def test_size_is_inches_times_dpi(tmp_path):
    path = save(tmp_path, [scene_trajectory(12, 1)])
    big = render_trajectory(path, 0, str(tmp_path / "big.png"), dpi=80, width_inches=10)
    small = render_trajectory(path, 0, str(tmp_path / "small.png"), dpi=40, width_inches=10)
    assert (big.width, small.width) == (800, 400)
    assert abs(big.height - 2 * small.height) <= 1  # same inches, twice the dpi
    assert pixels(big).shape[:2] == (big.height, big.width)


def test_env_selects_the_column(tmp_path):
    path = save(tmp_path, [solid_trajectory([RED, BLUE])])
    env0 = pixels(render_trajectory(path, 0, str(tmp_path / "e0.png"), env=0, dpi=50))
    env1 = pixels(render_trajectory(path, 0, str(tmp_path / "e1.png"), env=1, dpi=50))
    assert count_color(env0, RED) > 1000 and count_color(env0, BLUE) == 0
    assert count_color(env1, BLUE) > 1000 and count_color(env1, RED) == 0


def test_channels_first_float_camera(tmp_path):
    path = save(tmp_path, [solid_trajectory([RED], layout="chw_float")])
    res = render_trajectory(path, 0, str(tmp_path / "f.png"), dpi=50)
    assert res.cameras == ["curr_obs.cam"] and res.frames == 6
    assert count_color(pixels(res), RED) > 1000


def test_without_cameras_plots_only(tmp_path):
    path = save(tmp_path, [scene_trajectory(30, 2, images=False)])
    res = render_trajectory(path, 0, str(tmp_path / "plots.png"), dpi=50)
    px = pixels(res)
    assert res.frames == 0 and res.cameras == [] and res.frame_indices == []
    assert res.fields == ["curr_obs.states", "actions", "rewards", "dones", "terminations", "truncations"]
    assert_not_blank(px)
    with_cams = save(tmp_path, [scene_trajectory(30, 2)], name="cams")
    taller = render_trajectory(with_cams, 0, str(tmp_path / "cams.png"), dpi=50)
    assert taller.height > res.height + 2 * 50  # two strips of frames above the same plots


def test_frames_wrap_and_few_steps(tmp_path):
    path = save(tmp_path, [scene_trajectory(40, 1), scene_trajectory(5, 1, seed=1)])
    one_row = render_trajectory(path, 0, str(tmp_path / "a.png"), dpi=40)
    two_rows = render_trajectory(path, 0, str(tmp_path / "b.png"), dpi=40, max_frames=24)
    assert two_rows.frames == 48 and two_rows.height > one_row.height
    short = render_trajectory(path, 1, str(tmp_path / "c.png"), dpi=40)
    assert short.frames == 10 and short.frame_indices == [0, 1, 2, 3, 4]
    pixels(short)


def test_rlinf_fixture(fixture_dir, tmp_path):
    res = render_trajectory(str(fixture_dir), 2, str(tmp_path / "rlinf.png"), env=1, dpi=50)
    px = pixels(res)
    assert res.cameras == ["curr_obs.main_images"]
    assert res.frames == 8  # T = 8 (aligned from RLinf's layout)
    assert {"actions", "rewards", "dones"} <= set(res.fields)
    assert_not_blank(px)
    sample = render_sample(str(fixture_dir), 20, str(tmp_path / "rlinf-sample.png"), dpi=50)
    assert sample.frames == 12 and sample.cameras == ["curr_obs.main_images"]
    assert_not_blank(pixels(sample))


# -- render_sample ----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["pt", "pkl", "segment"])
def test_sample_picture_every_format(tmp_path, fmt):
    path = save(tmp_path, [scene_trajectory(20, 2, seed=s) for s in range(3)], fmt)
    res = render_sample(path, 40, str(tmp_path / "s.png"), seed=3, dpi=50, width_inches=14)
    px = pixels(res)
    assert res.width == 700
    assert res.frames == 24 and res.frame_indices == list(range(12))
    assert res.fields == ["curr_obs.states", "actions", "rewards", "dones", "terminations", "truncations"]
    assert_not_blank(px)


def test_sample_is_seeded_and_shows_frames(tmp_path):
    path = save(tmp_path, [solid_trajectory([RED, BLUE], num_steps=10)])
    a = pixels(render_sample(path, 5, str(tmp_path / "a.png"), seed=11, dpi=40))
    b = pixels(render_sample(path, 5, str(tmp_path / "b.png"), seed=11, dpi=40))
    assert np.array_equal(a, b)
    few = render_sample(path, 3, str(tmp_path / "c.png"), seed=0, dpi=40, max_frames=2)
    assert few.frames == 2
    px = pixels(few)
    assert count_color(px, RED) + count_color(px, BLUE) > 500


# -- errors and atomic writes -----------------------------------------------------------------
def test_errors(tmp_path):
    path = save(tmp_path, [solid_trajectory([RED, BLUE]) for _ in range(3)])
    out = str(tmp_path / "x.png")
    with pytest.raises(InvalidArgumentError, match=r"no trajectory 7; the directory holds ids 0\.\.2"):
        render_trajectory(path, 7, out)
    with pytest.raises(
        InvalidArgumentError, match=r"env 2 is out of range: trajectory 0 has B=2 envs \(valid: 0\.\.1\)"
    ):
        render_trajectory(path, 0, out, env=2)
    with pytest.raises(InvalidArgumentError, match="env -1 is out of range"):
        render_trajectory(path, 0, out, env=-1)
    with pytest.raises(InvalidArgumentError, match="trajectory id must be an int"):
        render_trajectory(path, "0", out)
    with pytest.raises(InvalidArgumentError, match="num must be an int >= 1, got 0"):
        render_sample(path, 0, out)
    with pytest.raises(InvalidArgumentError, match="max_frames must be an int >= 1"):
        render_trajectory(path, 0, out, max_frames=0)
    with pytest.raises(InvalidArgumentError, match=r"width_inches must be a number in \[6, 100\]"):
        render_trajectory(path, 0, out, width_inches=3)
    with pytest.raises(InvalidArgumentError, match="lower the dpi"):
        render_sample(path, 2, out, dpi=5000)
    with pytest.raises(InvalidArgumentError, match=r"out must end in \.png"):
        render_trajectory(path, 0, str(tmp_path / "x.jpg"))
    with pytest.raises(BufferNotFoundError, match="no such directory"):
        render_trajectory(str(tmp_path / "missing"), 0, out)
    with pytest.raises(BufferNotFoundError, match="no such directory"):
        render_sample(str(tmp_path / "missing"), 4, out)
    assert not os.path.exists(out)


def test_id_ranges_in_message(tmp_path):
    assert view.id_ranges([0, 1, 2, 5, 7, 8]) == "0..2, 5, 7..8"
    assert view.id_ranges([]) == ""


def test_write_is_atomic(tmp_path, monkeypatch):
    path = save(tmp_path, [solid_trajectory([RED])])
    out = tmp_path / "pics" / "p.png"
    out.parent.mkdir()
    out.write_bytes(b"old picture")

    def fail_rename(src, dst):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", fail_rename)
        with pytest.raises(OSError, match="No space left"):
            render_trajectory(path, 0, str(out), dpi=40)
    assert out.read_bytes() == b"old picture"
    assert os.listdir(out.parent) == ["p.png"]  # the temporary file is gone

    from matplotlib.figure import Figure

    def fail_drawing(self, *args, **kwargs):
        raise RuntimeError("drawing failed")

    with monkeypatch.context() as m:
        m.setattr(Figure, "savefig", fail_drawing)
        with pytest.raises(RuntimeError, match="drawing failed"):
            render_sample(path, 4, str(out), dpi=40)
    assert out.read_bytes() == b"old picture"
    assert os.listdir(out.parent) == ["p.png"]

    res = render_trajectory(path, 0, str(out), dpi=40)  # and a good run replaces it whole
    assert os.listdir(out.parent) == ["p.png"]
    pixels(res)


def test_missing_extra_names_the_install(tmp_path, monkeypatch):
    path = save(tmp_path, [solid_trajectory([RED])])
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ToolsNotInstalledError, match=r"pip install rlinf-replay-buffer\[tools\]"):
        render_trajectory(path, 0, str(tmp_path / "p.png"))
    with pytest.raises(ImportError):  # also an ImportError for callers that catch that
        render_sample(path, 2, str(tmp_path / "p.png"))
    assert not (tmp_path / "p.png").exists()


# -- the camera rule --------------------------------------------------------------------------
def test_camera_rule():
    from rlinf_replay_buffer.schema import ColumnSpec

    spec = ColumnSpec
    schema = {
        ("curr_obs", "main_images"): spec(torch.uint8, (64, 64, 3)),
        ("curr_obs", "depth"): spec(torch.float32, (64, 48, 1)),
        ("curr_obs", "chw"): spec(torch.float16, (3, 32, 32)),
        ("curr_obs", "extra_view_images"): spec(torch.uint8, (2, 32, 32, 3)),
        ("curr_obs", "states"): spec(torch.float32, (42,)),
        ("curr_obs", "ids"): spec(torch.int64, (8, 8, 3)),
        ("curr_obs", "tiny"): spec(torch.uint8, (2, 2, 3)),
        ("curr_obs", "five"): spec(torch.uint8, (8, 8, 5)),
        ("next_obs", "main_images"): spec(torch.uint8, (64, 64, 3)),
        ("actions",): spec(torch.float32, (8, 8, 3)),
    }
    found = {(c.name, c.layout) for c in find_cameras(schema)}
    assert found == {
        ("curr_obs.main_images", "hwc"),
        ("curr_obs.depth", "hwc"),
        ("curr_obs.chw", "chw"),
        ("curr_obs.extra_view_images[0]", "vhwc"),
        ("curr_obs.extra_view_images[1]", "vhwc"),
    }


def test_float_frames_are_scaled():
    cam = view.Camera(("curr_obs", "x"), "hwc")
    unit = torch.full((1, 4, 4, 3), 0.5)
    assert np.allclose(frame_array(cam, unit), 0.5)
    bytes_like = torch.full((1, 4, 4, 3), 127.5)
    assert np.allclose(frame_array(cam, bytes_like), 0.5)
    signed = torch.linspace(-3, 1, 48).reshape(1, 4, 4, 3)
    out = frame_array(cam, signed)
    assert out.min() == 0.0 and out.max() == 1.0
    rgba = torch.zeros(2, 4, 4, 4, dtype=torch.uint8)
    assert frame_array(cam, rgba).shape == (2, 4, 4, 3)  # alpha dropped
