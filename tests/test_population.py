"""``sampling_population`` and ``priority_mass``: what a sharded buffer splits its draws by."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import coded_trajectory

from rlinf_replay_buffer import TrajectoryReplayBuffer
from rlinf_replay_buffer.errors import InvalidArgumentError
from rlinf_replay_buffer.sequences import valid_starts


def traj(i, e=2, update=0):
    return coded_trajectory(
        i, n=4, e=e, num_envs=2, layout="aligned", images=False, model_update_count=update
    )


def test_population_counts_the_windows_transitions():
    buf = TrajectoryReplayBuffer(sample_window_size=2)
    assert buf.sampling_population() == 0
    buf.add_trajectories([traj(0), traj(1, e=3), traj(2)])
    assert buf.sampling_population() == (3 + 2) * 4 * 2  # the newest two trajectories


def test_population_counts_only_fresh_transitions():
    buf = TrajectoryReplayBuffer(sample_window_size=0, max_staleness=1)
    buf.add_trajectories([traj(0, update=0), traj(1, update=2), traj(2, update=3)])
    assert buf.sampling_population() == 2 * 16


@pytest.mark.parametrize(("length", "pad"), [(1, False), (3, False), (4, False), (5, False), (3, True)])
def test_sequence_population_is_the_number_of_valid_starts(length, pad):
    buf = TrajectoryReplayBuffer(sample_window_size=0)
    trajectories = [traj(0), traj(1, e=3)]
    buf.add_trajectories(trajectories)
    expected = 0
    for t in trajectories:
        dones = t.dones[..., 0].numpy().astype(bool)
        expected += len(valid_starts(dones, length, pad))
    assert buf.sampling_population(length, pad) == expected


def test_priority_mass_sums_the_stored_priorities():
    buf = TrajectoryReplayBuffer(sample_window_size=0, prioritized=True, priority_alpha=0.5, priority_eps=0.0)
    assert buf.priority_mass() == 0.0
    buf.add_trajectories([traj(0)])
    assert buf.priority_mass() == pytest.approx(16.0)  # new transitions: priority 1
    batch = buf.sample(64)
    idx = np.unique(batch["indices"].numpy())
    buf.update_priorities(idx, np.full(len(idx), 4.0))
    assert buf.priority_mass() == pytest.approx((16 - len(idx)) * 1.0 + len(idx) * 2.0)
    with pytest.raises(InvalidArgumentError, match="priority_mass"):
        buf.sampling_population()
    assert buf.sampling_population(2) > 0  # sequences stay uniform in a prioritized buffer
    with pytest.raises(InvalidArgumentError, match="prioritized=True"):
        TrajectoryReplayBuffer().priority_mass()
