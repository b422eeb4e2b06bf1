"""RLinf main's buffer command line, ``python rlinf/data/storage/replay/buffer.py --load-path ...
--num-chunks ... --sample-window-size ... --cache-size ... --enable-cache``, run from the checkout
(cwd = repository root) as RLinf documents it: it loads the directory, samples once and prints
every key with its shape and dtype, like the 0.3 path ``rlinf/data/replay_buffer.py``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import coded_trajectory

from rlinf_replay_buffer import TrajectoryReplayBuffer

REPO = Path(__file__).resolve().parents[1]
MAIN_SCRIPT = "rlinf/data/storage/replay/buffer.py"
V03_SCRIPT = "rlinf/data/replay_buffer.py"
LEAF = re.compile(r"^\s+(\S+)\s+shape=\[([0-9, ]*)\]\s+dtype=(\S+)\s*$")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )


def leaves(stdout: str) -> dict[str, tuple[list[int], str]]:
    out = {}
    for line in stdout.splitlines():
        m = LEAF.match(line)
        if m:
            out[m.group(1)] = ([int(d) for d in m.group(2).split(",") if d.strip()], m.group(3))
    return out


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    with TrajectoryReplayBuffer(seed=3) as buf:
        buf.add_trajectories([coded_trajectory(i) for i in range(4)])
        buf.save_checkpoint(str(tmp_path / "ckpt"))
    return tmp_path / "ckpt"


ARGS = ["--num-chunks", "256", "--sample-window-size", "10", "--cache-size", "5", "--enable-cache"]


def test_main_layout_script_samples_and_prints_every_key(checkpoint):
    done = run(MAIN_SCRIPT, "--load-path", str(checkpoint), *ARGS)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    printed = leaves(done.stdout)
    assert printed["actions"] == ([256, 2], "torch.float32")
    assert printed["dones"][0][0] == 256 and printed["rewards"][0][0] == 256
    assert printed["curr_obs.states"] == ([256, 3], "torch.float32")
    assert printed["next_obs.main_images"][1] == "torch.uint8"
    assert all(shape[0] == 256 for shape, _ in printed.values())
    # the same keys, shapes and dtypes as the 0.3 path
    v03 = run(V03_SCRIPT, "--load-path", str(checkpoint), *ARGS)
    assert v03.returncode == 0, v03.stderr
    assert leaves(v03.stdout) == printed


def test_main_layout_script_defaults_and_missing_directory(checkpoint, tmp_path):
    done = run(MAIN_SCRIPT, "--load-path", str(checkpoint))  # every other option defaults
    assert done.returncode == 0, done.stderr
    printed = leaves(done.stdout)
    assert "actions" in printed and len({shape[0] for shape, _ in printed.values()}) == 1
    missing = run(MAIN_SCRIPT, "--load-path", str(tmp_path / "nope"), *ARGS)
    assert missing.returncode == 1
    lines = missing.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "nope" in lines[0]
