"""The real LeRobot loads what ``export_lerobot`` writes, offline.

LeRobot comes from PyPI into a throwaway virtual environment (built by ``rlinf_env.make_venv``:
``--no-deps``, pinned by ``constraints.txt``, this environment's site-packages added so torch,
datasets, pyarrow, PyAV and this library are shared). The version is 0.4.4, the newest that runs on
Python 3.10 and 3.11 (0.5 on needs 3.12) and the first line that reads and writes codebase version
v3.0. Only the packages its dataset module imports are installed: draccus, mergedeep, accelerate,
safetensors. Its torchvision import is served by a tiny stand-in written at test time (the
``ToTensor`` LeRobot applies to images; the registry's torchvision wheels are built against CUDA
torch and do not load beside this CPU torch). Video frames are not decoded there: LeRobot 0.4.4
decodes through torchcodec or torchvision's video reader, neither of which exists for this torch
on the registry; the video test checks that LeRobot loads the dataset and finds every video file.
The tests are skipped, saying why, when the registry cannot be reached.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import rlinf_env
import torch
from conftest import coded_trajectory

from rlinf_replay_buffer import TrajectoryReplayBuffer
from rlinf_replay_buffer.tools.lerobot import export_lerobot

LEROBOT_VERSION = "0.4.4"
REQUIREMENTS = (f"lerobot=={LEROBOT_VERSION}", "draccus", "mergedeep", "accelerate", "safetensors")
#: what pip prints when the package index cannot be reached
UNREACHABLE = (
    "Could not find a version",
    "No matching distribution",
    "NewConnectionError",
    "Network is unreachable",
)

STAND_IN = {
    "torchvision/__init__.py": """
        \"\"\"Stand-in for torchvision: what LeRobot's dataset module uses on images.\"\"\"
        from . import transforms  # noqa: F401
    """,
    "torchvision/transforms/__init__.py": """
        import numpy as np
        import torch

        from . import v2  # noqa: F401


        class ToTensor:
            def __call__(self, picture):
                a = np.asarray(picture)
                a = a[:, :, None] if a.ndim == 2 else a
                return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div(255)
    """,
    "torchvision/transforms/v2/__init__.py": """
        import torch

        from . import functional  # noqa: F401


        class Transform(torch.nn.Module):
            pass


        def __getattr__(name):
            return type(name, (Transform,), {})
    """,
    "torchvision/transforms/v2/functional.py": "",
}

LOAD = """
import os, sys
from lerobot.datasets.lerobot_dataset import LeRobotDataset
ds = LeRobotDataset(repo_id="local/test", root=ROOT)
out = {"len": len(ds), "episodes": ds.num_episodes, "fps": ds.fps, "cameras": ds.meta.camera_keys,
       "videos": [str(ds.root / ds.meta.get_video_file_path(e, k)) for e in range(ds.num_episodes)
                  for k in ds.meta.video_keys]}
if not ds.meta.video_keys:
    item = ds[FRAME]
    out["item"] = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in item.items()}
    out["norm_keys"] = sorted(ds.meta.stats)
emit(out)
"""


@pytest.fixture(scope="module")
def lerobot_venv(tmp_path_factory) -> rlinf_env.Venv:
    root = tmp_path_factory.mktemp("lerobot-venv")
    try:
        venv = rlinf_env.make_venv(root, parent="site", requirements=REQUIREMENTS)
    except AssertionError as exc:
        if any(word in str(exc) for word in UNREACHABLE):
            pytest.skip(f"lerobot=={LEROBOT_VERSION} cannot be installed: the package index is unreachable")
        raise
    stand_in = root / "stand-in"
    for name, text in STAND_IN.items():
        (stand_in / name).parent.mkdir(parents=True, exist_ok=True)
        (stand_in / name).write_text(textwrap.dedent(text).lstrip())
    home = root / "hf-home"
    venv.extra_env.update(
        PYTHONPATH=str(stand_in), HF_HOME=str(home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"
    )
    return venv


def export(tmp_path: Path, video: bool) -> Path:
    traj = coded_trajectory(0, n=4, e=2)
    if video:
        traj.curr_obs["main_images"] = torch.full((8, 2, 16, 16, 3), 90, dtype=torch.uint8)
    with TrajectoryReplayBuffer(sample_window_size=0) as buf:
        buf.add_trajectories([traj, coded_trajectory(1, n=4, e=2)][: 1 if video else 2])
        buf.save_checkpoint(str(tmp_path / "src"))
    out = tmp_path / "ds"
    export_lerobot(str(tmp_path / "src"), str(out), fps=10, task="pick the cube", video=video)
    return out


def test_lerobot_loads_an_image_export_offline(lerobot_venv, tmp_path):
    out = export(tmp_path, video=False)
    got = lerobot_venv.result(f"ROOT = {str(out)!r}\nFRAME = 5\n" + LOAD)
    assert (got["len"], got["episodes"], got["fps"]) == (32, 8, 10)
    assert got["cameras"] == ["observation.images.main_images"]
    item = got["item"]
    # frame 5: episode 1 (trajectory 0, env 0, its second episode: epoch 1), frame 1
    assert item["episode_index"] == 1 and item["frame_index"] == 1 and item["index"] == 5
    code = 100 + 1  # epoch 1, step 1 of trajectory 0
    assert item["observation.state"] == [code] * 3
    assert item["action"] == [code] * 2 and item["next.reward"] == code
    image = torch.tensor(item["observation.images.main_images"])
    assert image.shape == (3, 4, 4) and torch.allclose(image, torch.full((3, 4, 4), code / 255))
    assert item["task"] == "pick the cube"
    assert "observation.state" in got["norm_keys"] and "observation.images.main_images" in got["norm_keys"]


def test_lerobot_finds_every_video_of_a_video_export(lerobot_venv, tmp_path):
    out = export(tmp_path, video=True)
    got = lerobot_venv.result(f"ROOT = {str(out)!r}\nFRAME = 0\n" + LOAD)
    assert (got["len"], got["episodes"]) == (16, 4)
    assert got["cameras"] == ["observation.images.main_images"]
    assert len(got["videos"]) == 4 and all(Path(p).is_file() for p in got["videos"])
