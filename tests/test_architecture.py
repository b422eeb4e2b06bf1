"""The shape of the code (docs/architecture.md): a thin facade over parts that talk through public
interfaces, settings fixed at construction, an immutable record of where rows live."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import torch
from conftest import TrackedBuffer as TrajectoryReplayBuffer
from conftest import coded_trajectory

from rlinf_replay_buffer.record import Record
from rlinf_replay_buffer.settings import BufferSettings

PACKAGE = Path(__file__).resolve().parents[1] / "rlinf_replay_buffer"


def test_the_facade_stays_under_400_lines():
    assert len((PACKAGE / "buffer.py").read_text().splitlines()) < 400


def test_no_module_reads_another_objects_private_attributes():
    """``obj._name`` is only ever ``self._name`` or ``cls._name`` (the internals of argparse and of
    torch's unpickling aside: other projects' names, not parts of this one)."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and re.match(r"_[a-z]", node.attr)
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls", "os", "sys"))
                and node.attr not in ("_actions", "_option_string_actions", "_SubParsersAction")
                and node.attr not in ("_utils", "_rebuild_tensor_v2")
            ):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: .{node.attr}")
    assert not found, "\n".join(found)


def test_settings_are_read_only_and_say_what_to_do_instead():
    buf = TrajectoryReplayBuffer(trajectory_format="pkl", cache_size=3)
    with pytest.raises(
        AttributeError, match="trajectory_format is fixed when the buffer is built.*save_checkpoint"
    ):
        buf.trajectory_format = "pt"
    for name in ("auto_save", "cache_size", "priority_alpha", "max_pending_bytes"):
        with pytest.raises(AttributeError, match=f"{name} is fixed when the buffer is built"):
            setattr(buf, name, getattr(buf, name))
    assert (buf.trajectory_format, buf.cache_size) == ("pkl", 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        buf.settings.cache_size = 7  # type: ignore[misc]
    assert isinstance(buf.settings, BufferSettings)


def test_the_window_setter_applies_the_change_completely():
    buf = TrajectoryReplayBuffer(sample_window_size=0)
    buf.add_trajectories([coded_trajectory(i, images=False) for i in range(6)])
    buf.sample_window_size = 2  # without auto_save what leaves the window leaves the buffer
    assert buf.settings.sample_window_size == 2 and buf._trajectory_id_list == [4, 5]
    codes = buf.sample(500)["curr_obs"]["states"][:, 0].to(torch.int64) // 1000
    assert set(codes.tolist()) == {4, 5}


def test_a_record_is_frozen():
    record = Record(0, 2, 1, None, "w", 0, "u", [2, 1, 1])
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.row = 3  # type: ignore[misc]
    assert dataclasses.replace(record, row=3).row == 3
