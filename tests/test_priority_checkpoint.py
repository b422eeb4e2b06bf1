"""Priorities survive checkpoints: ``priorities.bin`` beside the trajectories."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from conftest import coded_trajectory

from rlinf_replay_buffer import TrajectoryReplayBuffer
from rlinf_replay_buffer.errors import CorruptDataWarning
from rlinf_replay_buffer.formats import priorities as priorities_file


def traj(i):
    return coded_trajectory(i, n=4, e=2, num_envs=2, layout="aligned", images=False)


def prioritized(**kwargs):
    kwargs.setdefault("sample_window_size", 0)
    return TrajectoryReplayBuffer(prioritized=True, **kwargs)


def raw_by_transition(buf):
    """{(code, env): raw priority} over the window, read through sampled indices: the stored
    ``(priority + eps) ** alpha`` turned back into the priority set."""
    alpha, eps = buf.settings.priority_alpha, buf.settings.priority_eps
    seen = {}
    for _ in range(20):
        batch = buf.sample(512)
        codes = batch["curr_obs"]["states"][:, 0].long().tolist()
        envs = batch["curr_obs"]["env_ids"][:, 0].tolist()
        raws = buf.stored_priorities(batch["indices"]) ** (1.0 / alpha) - eps
        seen.update(zip(zip(codes, envs, strict=True), raws.tolist(), strict=True))
    return seen


def assert_new_transitions_start_at(buf, raw):
    """A trajectory added now gets priority ``raw`` (the running maximum) for each transition."""
    buf.add_trajectories([traj(9)])
    new = {t: v for t, v in raw_by_transition(buf).items() if t[0] // 1000 == 9}
    assert new and all(v == pytest.approx(raw, rel=1e-9) for v in new.values())


def with_varied_priorities(buf):
    buf.add_trajectories([traj(i) for i in range(4)])
    batch = buf.sample(2000)
    idx = np.unique(batch["indices"].numpy())
    buf.update_priorities(idx, (idx % 7) * 0.5 + 0.25)
    return buf


def test_a_checkpoint_carries_every_transitions_priority(tmp_path):
    buf = with_varied_priorities(prioritized(priority_alpha=0.6))
    before = raw_by_transition(buf)
    buf.save_checkpoint(str(tmp_path / "ckpt"))
    assert (tmp_path / "ckpt" / priorities_file.NAME).is_file()
    loaded = prioritized(priority_alpha=0.6)
    loaded.load_checkpoint(str(tmp_path / "ckpt"))
    after = raw_by_transition(loaded)
    assert set(after) == set(before)
    assert all(after[t] == pytest.approx(before[t], rel=1e-9) for t in before)
    assert loaded.priority_mass() == pytest.approx(buf.priority_mass(), rel=1e-12)
    assert_new_transitions_start_at(loaded, max(before.values()))


def test_raw_priorities_apply_with_the_loading_buffers_exponent(tmp_path):
    buf = with_varied_priorities(prioritized(priority_alpha=0.6))
    before = raw_by_transition(buf)
    buf.save_checkpoint(str(tmp_path / "ckpt"))
    other = prioritized(priority_alpha=1.0, priority_eps=0.0)
    other.load_checkpoint(str(tmp_path / "ckpt"))
    assert other.priority_mass() == pytest.approx(sum(before.values()), rel=1e-9)


def test_an_auto_save_directory_keeps_priorities_across_close_and_reopen(tmp_path):
    own = str(tmp_path / "own")
    buf = with_varied_priorities(prioritized(auto_save=True, auto_save_path=own))
    before = raw_by_transition(buf)
    buf.close()
    again = prioritized(auto_save=True, auto_save_path=own)
    after = raw_by_transition(again)
    assert all(after[t] == pytest.approx(before[t], rel=1e-9) for t in before)
    assert_new_transitions_start_at(again, max(before.values()))  # the running maximum survives


def test_a_damaged_priorities_file_warns_and_leaves_default_priorities(tmp_path):
    buf = with_varied_priorities(prioritized())
    buf.save_checkpoint(str(tmp_path / "ckpt"))
    path = tmp_path / "ckpt" / priorities_file.NAME
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0xFF  # one byte of data: only the checksum can tell
    path.write_bytes(bytes(blob))
    loaded = prioritized()
    with pytest.warns(CorruptDataWarning, match="checksum mismatch.*maximum priority"):
        loaded.load_checkpoint(str(tmp_path / "ckpt"))
    assert loaded.size == 4  # the trajectories themselves loaded
    assert all(v == pytest.approx(1.0) for v in raw_by_transition(loaded).values())


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b"XXXXXXXX" + b[8:],  # magic
        lambda b: b[:8] + (10**9).to_bytes(8, "little") + b[16:],  # header length
        lambda b: b[:-8],  # truncated data
        lambda b: b[:16] + b"[" + b[17:],  # header not JSON
    ],
)
def test_malformed_priorities_files_are_refused(tmp_path, damage):
    buf = with_varied_priorities(prioritized())
    buf.save_checkpoint(str(tmp_path / "ckpt"))
    path = tmp_path / "ckpt" / priorities_file.NAME
    path.write_bytes(damage(path.read_bytes()))
    with pytest.warns(CorruptDataWarning, match="priorities were not loaded"):
        prioritized().load_checkpoint(str(tmp_path / "ckpt"))


def test_a_priorities_link_out_of_the_directory_is_not_read(tmp_path):
    buf = with_varied_priorities(prioritized())
    buf.save_checkpoint(str(tmp_path / "ckpt"))
    path = tmp_path / "ckpt" / priorities_file.NAME
    os.replace(path, tmp_path / "outside.bin")
    os.symlink(tmp_path / "outside.bin", path)
    with pytest.warns(CorruptDataWarning, match="links outside"):
        prioritized().load_checkpoint(str(tmp_path / "ckpt"))


def test_uniform_buffers_neither_write_nor_need_priorities(tmp_path):
    uniform = TrajectoryReplayBuffer(sample_window_size=0)
    uniform.add_trajectories([traj(0)])
    uniform.save_checkpoint(str(tmp_path / "plain"))
    assert not (tmp_path / "plain" / priorities_file.NAME).exists()
    buf = with_varied_priorities(prioritized())
    buf.save_checkpoint(str(tmp_path / "ckpt"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrajectoryReplayBuffer(sample_window_size=0).load_checkpoint(str(tmp_path / "ckpt"))
        prioritized().load_checkpoint(str(tmp_path / "plain"))  # no file: default priorities


def test_entries_of_other_trajectories_are_ignored(tmp_path):
    """A priorities file whose entry for trajectory 0 names another uuid: not applied."""
    buf = with_varied_priorities(prioritized())
    buf.save_checkpoint(str(tmp_path / "ckpt"))
    saved = priorities_file.read(str(tmp_path / "ckpt" / priorities_file.NAME))
    _, values = saved.trajectories[0]
    saved.trajectories[0] = ("another-uuid", np.full_like(values, 9.0))
    priorities_file.write(str(tmp_path / "ckpt"), saved)
    loaded = prioritized()
    loaded.load_checkpoint(str(tmp_path / "ckpt"))
    got = raw_by_transition(loaded)
    assert 9.0 not in {v for (c, _), v in got.items() if c // 1000 == 0}
    assert {v for (c, _), v in got.items() if c // 1000 == 1} != {1.0}  # the others were applied
