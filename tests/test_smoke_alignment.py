from conftest import assert_aligned, coded_trajectory

from rlinf_replay_buffer import TrajectoryReplayBuffer


def test_sample_from_rlinf_fixture_is_aligned(fixture_dir):
    buf = TrajectoryReplayBuffer(sample_window_size=0)
    buf.load_checkpoint(str(fixture_dir))
    assert buf.size == 3 and buf.total_samples == 48
    assert_aligned(buf.sample(4000), n=4)


def test_sample_from_every_layout_is_aligned():
    for layout in ("rlinf", "aligned", "done_only"):
        buf = TrajectoryReplayBuffer(sample_window_size=0)
        buf.add_trajectories([coded_trajectory(i, n=5, e=3, layout=layout) for i in range(4)])
        assert buf.total_samples == 4 * 15 * 2
        assert_aligned(buf.sample(3000), n=5)
