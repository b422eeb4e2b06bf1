"""The sharded buffer on a real local Ray cluster (2 CPUs, no dashboard), started by the tests.

Shards are real actors in their own processes; a killed shard is a real SIGKILL of its process,
restarted by Ray from its directory.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import assert_aligned, chi2_bound, chi_square, coded_trajectory

ray = pytest.importorskip("ray")

from rlinf_replay_buffer import (  # noqa: E402
    RayTrajectoryReplayBuffer,
    ShardRestartedWarning,
    ShardUnavailableError,
    TrajectoryReplayBuffer,  # noqa: E402
)
from rlinf_replay_buffer.config import UnknownConfigKeysWarning  # noqa: E402
from rlinf_replay_buffer.errors import (  # noqa: E402
    BufferDirectoryError,
    BufferNotFoundError,
    DirectoryLockedError,
    EmptyBufferError,
    InvalidArgumentError,
    InvalidTrajectoryError,
)

N, E, B = 4, 2, 2  # steps per epoch, epochs, envs of a coded trajectory: 16 transitions
ACTOR = {"num_cpus": 0.25}


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture
def make(tmp_path):
    made = []

    def build(num_shards=2, path=None, **kwargs):
        kwargs.setdefault("actor_options", ACTOR)
        kwargs.setdefault("sample_window_size", 0)
        buf = RayTrajectoryReplayBuffer(str(path or tmp_path / "buf"), num_shards, **kwargs)
        made.append(buf)
        return buf

    yield build
    for buf in made:
        try:
            buf.shutdown()
        except Exception:
            pass


def traj(i, n=N, e=E, num_envs=B):
    return coded_trajectory(i, n=n, e=e, num_envs=num_envs, layout="aligned", images=False)


def transition_keys(batch):
    """(code, env) of every row: the identity of a transition."""
    codes = batch["curr_obs"]["states"][:, 0].long().tolist()
    envs = batch["curr_obs"]["env_ids"][:, 0].tolist()
    return list(zip(codes, envs, strict=True))


def all_transitions(ids, n=N, e=E, num_envs=B):
    return [
        (1000 * i + 100 * k + s, b) for i in ids for k in range(e) for s in range(n) for b in range(num_envs)
    ]


def shard_pid(buf, k):
    return buf.wait_until_ready(60)[k]["pid"]


def kill_shard(buf, k):
    pid = shard_pid(buf, k)
    os.kill(pid, signal.SIGKILL)
    return pid


def held_codes(path):
    """Codes of every trajectory in a buffer directory, read with a local buffer."""
    local = TrajectoryReplayBuffer(sample_window_size=0, enable_cache=False)
    local.load_checkpoint(str(path))
    codes = set()
    for tid in local._trajectory_id_list:
        codes.add(int(local._load_trajectory(tid).rewards.reshape(-1)[0]) // 1000)
    return codes


# -- sampling ---------------------------------------------------------------------------------


def test_sample_is_uniform_over_the_union_of_unequal_shards(make):
    buf = make(2)
    # shard 0 gets 1 trajectory, shard 1 gets 3 (one of them twice as long): 1:4 transitions
    buf.add_trajectories([traj(0)], keys=[0])
    buf.add_trajectories([traj(1), traj(2), traj(3, e=4)], keys=[1, 1, 1])
    population = all_transitions([0]) + all_transitions([1, 2]) + all_transitions([3], e=4)
    draws = 40 * len(population)
    seen = Counter()
    for _ in range(8):
        batch = buf.sample(draws // 8)
        assert_aligned(batch)
        seen.update(transition_keys(batch))
    assert set(seen) == set(population)
    observed = [seen[t] for t in population]
    expected = [draws / len(population)] * len(population)
    assert chi_square(observed, expected) < chi2_bound(len(population) - 1)


def test_batch_has_the_local_buffers_keys_dtypes_and_shapes(make, tmp_path):
    buf = make(2)
    local = TrajectoryReplayBuffer(sample_window_size=0)
    trajectories = [coded_trajectory(i, n=N, e=E, num_envs=B) for i in range(4)]
    buf.add_trajectories(trajectories)
    local.add_trajectories(trajectories)
    ours, theirs = buf.sample(64), local.sample(64)

    def layout(batch):
        return {
            k: (v.dtype, tuple(v.shape)) if isinstance(v, torch.Tensor) else layout(v)
            for k, v in batch.items()
        }

    assert layout(ours) == layout(theirs)
    assert_aligned(ours, n=N)
    ours["rewards"].add_(1)  # writable memory, not the object store's
    seq, local_seq = buf.sample_sequences(8, 3), local.sample_sequences(8, 3)
    assert layout(seq) == layout(local_seq)


def test_sequences_are_uniform_over_the_unions_valid_starts_and_never_cross_episodes(make):
    buf = make(2)
    buf.add_trajectories([traj(0)], keys=[0])
    buf.add_trajectories([traj(1), traj(2, e=3)], keys=[1, 1])
    length = 3  # epochs are episodes of N=4 steps: starts s in {0, 1} of each epoch and env
    starts = [
        (1000 * i + 100 * k + s, b)
        for i, e in ((0, E), (1, E), (2, 3))
        for k in range(e)
        for s in range(N - length + 1)
        for b in range(B)
    ]
    seen = Counter()
    for _ in range(6):
        batch = buf.sample_sequences(50 * len(starts) // 6, length)
        codes = batch["curr_obs"]["states"][..., 0].long()
        assert batch["mask"].all()
        assert (codes[:, 1:] - codes[:, :-1] == 1).all(), "a run crossed an episode end or trajectory"
        assert (batch["curr_obs"]["env_ids"][:, :, 0] == batch["curr_obs"]["env_ids"][:, :1, 0]).all()
        seen.update(zip(codes[:, 0].tolist(), batch["curr_obs"]["env_ids"][:, 0, 0].tolist(), strict=True))
    assert set(seen) == set(starts)
    total = sum(seen.values())
    assert chi_square([seen[s] for s in starts], [total / len(starts)] * len(starts)) < chi2_bound(
        len(starts) - 1
    )


def test_an_empty_buffer_raises_and_is_not_ready(make):
    buf = make(2)
    assert not buf.is_ready()
    with pytest.raises(EmptyBufferError, match="no shard holds"):
        buf.sample(4)
    buf.add_trajectories([traj(0)], keys=[1])  # only shard 1 holds data: shard 0 gets no draws
    assert buf.is_ready() and not buf.is_ready(2)
    assert set(c // 1000 for c, _ in transition_keys(buf.sample(32))) == {0}
    with pytest.raises(EmptyBufferError, match="valid start for sequences of 9 steps"):
        buf.sample_sequences(2, 9)


def test_draws_follow_shards_that_grew_through_another_client(make):
    buf = make(2)
    other = pickle.loads(pickle.dumps(buf))
    buf.add_trajectories([traj(0)], keys=[0])
    assert {c // 1000 for c, _ in transition_keys(buf.sample(16))} == {0}
    other.add_trajectories([traj(1), traj(2), traj(3)], keys=[1, 1, 1])
    buf.sample(1)  # every sample asks every shard for its population
    seen = Counter(c // 1000 for _ in range(4) for c, _ in transition_keys(buf.sample(400)))
    assert set(seen) == {0, 1, 2, 3}
    share0 = seen[0] / sum(seen.values())
    assert 0.18 < share0 < 0.32  # 1 of 4 equal trajectories


# -- adding and routing -----------------------------------------------------------------------


def test_round_robin_and_keys_route_trajectories(make):
    buf = make(3)
    placed = buf.add_trajectories([traj(i) for i in range(7)])
    assert [k for k, _ in placed] == [0, 1, 2, 0, 1, 2, 0]
    assert [tid for _, tid in placed] == [0, 0, 0, 1, 1, 1, 2]
    assert [k for k, _ in buf.add_trajectories([traj(7), traj(8)])] == [1, 2]  # continues the turn
    keyed = buf.add_trajectories([traj(9), traj(10), traj(11)], keys=[5, "robot-a", b"robot-a"])
    assert keyed[0][0] == 5 % 3 and keyed[1][0] == keyed[2][0]
    sizes = [s["size"] for s in buf.get_stats()["shards"]]
    assert sum(sizes) == 12


def test_route_by_picks_the_shard_of_each_trajectory(make):
    buf = make(2, route_by=lambda t: int(t.model_update_count))
    trajectories = [
        coded_trajectory(i, n=N, e=E, num_envs=B, images=False, model_update_count=i) for i in range(4)
    ]
    assert [k for k, _ in buf.add_trajectories(trajectories)] == [0, 1, 0, 1]
    with pytest.raises(InvalidArgumentError, match="routing key must be an int, str or bytes"):
        buf.add_trajectories([traj(5)], keys=[1.5])


def test_a_bad_trajectory_adds_nothing_to_any_shard(make):
    buf = make(2)
    buf.add_trajectories([traj(0), traj(1)])
    bad = traj(3)
    bad.rewards = bad.rewards[:, :1]  # wrong env count
    with pytest.raises(InvalidTrajectoryError, match="trajectory 1: "):
        buf.add_trajectories([traj(2), bad, traj(4)])
    other_fields = coded_trajectory(5, n=N, e=E, num_envs=B, layout="aligned", images=True)
    with pytest.raises(InvalidTrajectoryError, match="fields differ"):
        buf.add_trajectories([other_fields])
    assert [s["size"] for s in buf.get_stats()["shards"]] == [1, 1]


def test_tensors_numpy_cannot_hold_travel_and_come_back(make):
    buf = make(1)
    t = traj(0)
    t.curr_obs["half"] = torch.arange(N * E * B, dtype=torch.bfloat16).reshape(N * E, B, 1)
    t.next_obs["half"] = t.curr_obs["half"].clone()
    buf.add_trajectories([t])
    batch = buf.sample(32)
    assert batch["curr_obs"]["half"].dtype == torch.bfloat16
    codes = batch["curr_obs"]["states"][:, 0].long()
    step = (codes % 100) + 4 * ((codes // 100) % 10)
    expected = (step * B + batch["curr_obs"]["env_ids"][:, 0]).to(torch.bfloat16)
    assert torch.equal(batch["curr_obs"]["half"][:, 0], expected)


def test_copies_of_the_client_in_ray_tasks_add_to_the_same_shards(make):
    buf = make(2)

    @ray.remote(num_cpus=0)
    def rollout(buffer, trajectories):
        return buffer.add_trajectories(trajectories)

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests
    placed = ray.get([rollout.remote(buf, [traj(0), traj(1)]), rollout.remote(buf, [traj(10), traj(11)])])
    assert sorted(k for p in placed for k, _ in p) == [0, 0, 1, 1]
    assert {c // 1000 for c, _ in transition_keys(buf.sample(500))} == {0, 1, 10, 11}


def test_a_named_buffer_is_attached_to_by_a_second_client(make, tmp_path):
    buf = make(2, name="attach-test")
    buf.add_trajectories([traj(0), traj(1)])
    again = RayTrajectoryReplayBuffer(str(tmp_path / "buf"), 2, name="attach-test", actor_options=ACTOR)
    assert again.size == 2
    assert [i["pid"] for i in again.wait_until_ready()] == [i["pid"] for i in buf.wait_until_ready()]
    with pytest.raises(InvalidArgumentError, match="serves .* not .*elsewhere"):
        RayTrajectoryReplayBuffer(str(tmp_path / "elsewhere"), 2, name="attach-test", actor_options=ACTOR)


def test_a_second_unnamed_client_on_the_same_path_is_refused(make, tmp_path):
    buf = make(2)
    buf.add_trajectories([traj(i) for i in range(4)])
    buf.flush()
    with pytest.raises(DirectoryLockedError, match="another writer holds this buffer directory"):
        RayTrajectoryReplayBuffer(str(tmp_path / "buf"), 2, actor_options=ACTOR)
    buf.add_trajectories([traj(i) for i in range(4, 6)])
    buf.flush()
    buf.shutdown()
    again = make(2)  # the first client's shards are gone: the directory is free
    assert again.size == 6


# -- checkpoints ------------------------------------------------------------------------------


def test_checkpoint_round_trip_through_the_merge_tool(make, tmp_path):
    from toolkits.replay_buffer.merge_or_split_replay_buffer import main as merge_main

    buf = make(2)
    buf.add_trajectories([traj(i) for i in range(5)])
    buf.save_checkpoint(str(tmp_path / "ckpt"))
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["rank_0", "rank_1"]
    assert held_codes(tmp_path / "ckpt" / "rank_0") == {0, 2, 4}
    merged = tmp_path / "merged"
    assert merge_main(["--source-path", str(tmp_path / "ckpt"), "--save-path", str(merged), "--copy"]) in (
        0,
        None,
    )
    assert held_codes(merged) == {0, 1, 2, 3, 4}
    # the merged directory spread over three shards holds the same transitions
    three = make(3, path=tmp_path / "three")
    three.load_checkpoint(str(merged))
    assert [s["size"] for s in three.get_stats()["shards"]] == [2, 2, 1]
    seen = set(transition_keys(three.sample(2000)))
    assert seen == set(all_transitions(range(5)))
    # and the two-rank checkpoint goes back into two shards rank for rank
    two = make(2, path=tmp_path / "two")
    two.load_checkpoint(str(tmp_path / "ckpt"))
    assert [s["size"] for s in two.get_stats()["shards"]] == [3, 2]
    assert two.add_trajectories([traj(9)]) == [(0, 3)]  # ids are per shard and continue its own


def test_a_saved_checkpoint_replaces_the_previous_one_whole(make, tmp_path):
    four = make(4, path=tmp_path / "four")
    four.add_trajectories([traj(i) for i in range(4)])
    four.save_checkpoint(str(tmp_path / "ckpt"))
    two = make(2, path=tmp_path / "two")
    two.add_trajectories([traj(7)])
    two.save_checkpoint(str(tmp_path / "ckpt"))
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["rank_0", "rank_1"]  # no stale rank_2, rank_3
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(BufferDirectoryError, match="not a checkpoint"):
        two.save_checkpoint(str(tmp_path / "junk"))
    with pytest.raises(BufferDirectoryError, match="inside the buffer's directory"):
        two.save_checkpoint(str(tmp_path / "two" / "sub"))
    assert (tmp_path / "junk" / "notes.txt").read_text() == "mine"


def test_saving_to_its_own_path_compacts_in_place(make, tmp_path):
    buf = make(2)
    buf.add_trajectories([traj(i) for i in range(4)])
    buf.save_checkpoint(str(tmp_path / "buf"))
    assert not (tmp_path / "buf" / "rank_0" / "trajectory_index.journal").exists() or (
        (tmp_path / "buf" / "rank_0" / "trajectory_index.journal").stat().st_size == 0
    )
    assert held_codes(tmp_path / "buf" / "rank_1") == {1, 3}


def test_a_bad_checkpoint_changes_no_shard(make, tmp_path):
    buf = make(2)
    buf.add_trajectories([traj(i) for i in range(4)])
    with pytest.raises(BufferNotFoundError):
        buf.load_checkpoint(str(tmp_path / "missing"))
    src = make(2, path=tmp_path / "src")
    src.add_trajectories([traj(i) for i in range(10, 14)])
    src.save_checkpoint(str(tmp_path / "ckpt"))
    victim = next((tmp_path / "ckpt" / "rank_1").glob("trajectory_*.pt"))
    victim.unlink()  # rank_1 cannot be loaded; rank_0 can: nothing may change anywhere
    with pytest.raises(BufferNotFoundError):
        buf.load_checkpoint(str(tmp_path / "ckpt"))
    assert [s["size"] for s in buf.get_stats()["shards"]] == [2, 2]
    assert {c // 1000 for c, _ in transition_keys(buf.sample(300))} == {0, 1, 2, 3}
    hidden = [n for n in os.listdir(tmp_path / "buf") if n.startswith(".") and not n.endswith(".lock")]
    assert not hidden  # staging removed (the shards hold their lock files)
    with pytest.raises(BufferDirectoryError, match="own directory"):
        buf.load_checkpoint(str(tmp_path / "buf"))


def test_clear_empties_every_shard_for_good(make):
    buf = make(2)
    buf.add_trajectories([traj(i) for i in range(4)])
    buf.clear()
    assert buf.size == 0
    assert buf.add_trajectories([traj(5)]) == [(0, 2)]  # numbering continues
    kill_shard(buf, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShardRestartedWarning)
        infos = buf.wait_until_ready(60)
    assert infos[1]["size"] == 0  # the cleared trajectories did not come back


def test_a_directory_with_more_shards_is_refused(make, tmp_path):
    buf = make(3)
    buf.add_trajectories([traj(i) for i in range(3)])
    buf.shutdown()
    with pytest.raises(BufferDirectoryError, match="num_shards=3"):
        RayTrajectoryReplayBuffer(str(tmp_path / "buf"), 2, actor_options=ACTOR)
    again = make(3)  # the same number continues it
    assert again.size == 3


# -- shards that die --------------------------------------------------------------------------


def test_a_killed_shard_comes_back_with_every_flushed_trajectory(make, tmp_path):
    buf = make(2)
    buf.add_trajectories([traj(i) for i in range(6)])
    buf.flush()
    before = {c for c, _ in transition_keys(buf.sample(2000))}
    old_pid = kill_shard(buf, 1)
    with pytest.raises(ShardUnavailableError, match="shard 1 .* unavailable") as info:
        for _ in range(200):  # until the client notices (at once, unless Ray was quicker)
            buf.sample(64)
            time.sleep(0.01)
    assert info.value.shard == 1
    with pytest.warns(ShardRestartedWarning, match="shard 1 .* restarted"):
        infos = buf.wait_until_ready(60)
    assert infos[1]["pid"] != old_pid and infos[1]["restored"] == 3
    assert {c for c, _ in transition_keys(buf.sample(2000))} == before
    assert buf.get_stats()["restarts"] == [0, 1]
    assert buf.add_trajectories([traj(9), traj(10)]) == [(0, 3), (1, 3)]


def test_a_shard_killed_during_a_sample_never_yields_a_partial_batch(make):
    buf = make(2)
    buf.add_trajectories([coded_trajectory(i, n=50, e=2, num_envs=16, layout="aligned") for i in range(8)])
    buf.flush()
    pid = shard_pid(buf, 0)
    outcomes = []

    def learner():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # sample back to back until the kill is met
            try:
                batch = buf.sample(20000)
            except ShardUnavailableError as exc:
                outcomes.append(exc)
                return
            assert batch["rewards"].shape[0] == 20000
            assert_aligned(batch)
            outcomes.append(batch["rewards"].shape[0])

    thread = threading.Thread(target=learner)
    thread.start()
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    thread.join(120)
    assert not thread.is_alive()
    assert isinstance(outcomes[-1], ShardUnavailableError)
    assert all(o == 20000 for o in outcomes[:-1])
    with pytest.warns(ShardRestartedWarning):
        buf.wait_until_ready(60)
    assert buf.sample(100)["rewards"].shape[0] == 100


def test_an_add_to_a_dead_shard_reports_what_the_live_ones_took(make):
    buf = make(2)
    buf.add_trajectories([traj(0), traj(1)])
    kill_shard(buf, 1)
    time.sleep(0.5)
    with pytest.raises(ShardUnavailableError, match="may or may not have reached it") as info:
        for i in range(200):
            buf.add_trajectories([traj(10 + 2 * i), traj(11 + 2 * i)])
            time.sleep(0.01)
    assert all(k == 0 for _, k, _ in info.value.added)
    with pytest.warns(ShardRestartedWarning, match="this client added"):
        buf.wait_until_ready(60)


def test_a_load_survives_the_restart_of_a_shard(make, tmp_path):
    src = make(2, path=tmp_path / "src")
    src.add_trajectories([traj(i) for i in range(6)])
    src.save_checkpoint(str(tmp_path / "ckpt"))
    buf = make(2)
    buf.add_trajectories([traj(20)])
    buf.load_checkpoint(str(tmp_path / "ckpt"))
    kill_shard(buf, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShardRestartedWarning)
        infos = buf.wait_until_ready(60)
    assert infos[0]["restored"] == 3
    assert {c // 1000 for c, _ in transition_keys(buf.sample(1000))} == set(range(6))


# -- arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shard_options": {"rate_limiter": None}}, "rate_limiter"),
        ({"shard_options": {"prioritized": True}}, "pass prioritized to RayTrajectoryReplayBuffer itself"),
        (
            {"shard_options": {"trajectory_format": "segment"}},
            "pass trajectory_format to RayTrajectoryReplayBuffer itself",
        ),
        ({"shard_options": {"cache_size": 3}}, "pass cache_size to RayTrajectoryReplayBuffer itself"),
        ({"prioritized": True, "priority_alpha": -1}, "alpha"),
        ({"shard_options": {"auto_save_path": "/x"}}, "auto_save_path"),
        ({"call_timeout": 0}, "call_timeout"),
        ({"max_restarts": -2}, "max_restarts"),
        ({"route_by": 3}, "route_by"),
        ({"sample_window_size": -1}, "sample_window_size"),
    ],
)
def test_bad_arguments_are_refused_before_any_actor_starts(tmp_path, kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        RayTrajectoryReplayBuffer(str(tmp_path / "buf"), 2, **kwargs)
    assert not (tmp_path / "buf").exists()


def test_num_shards_must_be_positive(tmp_path):
    with pytest.raises(InvalidArgumentError, match="num_shards"):
        RayTrajectoryReplayBuffer(str(tmp_path / "buf"), 0)


def test_stats_sum_over_shards(make):
    buf = make(2)
    buf.add_trajectories([traj(i) for i in range(3)])
    stats = buf.get_stats()
    assert stats["size"] == 3 and stats["total_samples"] == 3 * N * E * B
    assert [s["size"] for s in stats["shards"]] == [2, 1]
    assert stats["window_transitions"] == 3 * N * E * B
    assert len(buf) == 3 and buf.total_samples == 3 * N * E * B


def test_split_is_exact_in_distribution():
    from rlinf_replay_buffer.distributed.batches import split_draws

    rng = np.random.default_rng(0)
    pops = np.array([1, 0, 3, 6])
    counts = np.stack([split_draws(pops, 10, rng) for _ in range(4000)])
    assert (counts.sum(axis=1) == 10).all() and (counts[:, 1] == 0).all()
    assert np.allclose(counts.mean(axis=0), 10 * pops / pops.sum(), atol=0.1)


def test_shards_that_cannot_be_scheduled_fail_with_a_clear_error(tmp_path):
    with pytest.raises(ShardUnavailableError, match="did not all start within 2 s.*num_cpus=8"):
        RayTrajectoryReplayBuffer(str(tmp_path / "buf"), 2, actor_options={"num_cpus": 8}, start_timeout=2)


def test_the_prefetching_dataset_feeds_from_the_sharded_buffer(make):
    from rlinf_replay_buffer import PreloadReplayBufferDataset

    buf = make(2)
    buf.add_trajectories([coded_trajectory(i, n=N, e=E, num_envs=B) for i in range(4)])
    dataset = PreloadReplayBufferDataset(buf, None, 64, prefetch_size=2, demo_ratio=0)
    try:
        for _, batch in zip(range(5), dataset, strict=False):
            assert batch["rewards"].shape[0] == 64
            assert_aligned(batch, n=N)
    finally:
        dataset.close()


def test_one_client_serves_threads_that_add_and_sample_at_once(make):
    buf = make(2)
    buf.add_trajectories([traj(0), traj(1)])
    errors = []

    def adder():
        try:
            for i in range(2, 12):
                buf.add_trajectories([traj(i)])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def sampler():
        try:
            for _ in range(15):
                assert_aligned(buf.sample(128))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=adder),
        threading.Thread(target=sampler),
        threading.Thread(target=sampler),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and buf.size == 12


def _soak_selected(config) -> bool:
    return os.environ.get("RLINF_SOAK") == "1" or "soak" in (config.getoption("markexpr") or "")


@pytest.mark.soak
@pytest.mark.parametrize("fmt", ["pt", "segment"])
def test_shards_killed_again_and_again_lose_no_flushed_trajectory(make, request, fmt):
    """Rounds of: add from two threads, flush, SIGKILL a random shard (sometimes mid-add), wait
    for it; every trajectory acknowledged before a flush must be sampleable afterwards."""
    if not _soak_selected(request.config):
        pytest.skip("soak test: run with -m soak or RLINF_SOAK=1")
    rounds = int(os.environ.get("RLINF_SHARD_SOAK_ROUNDS", "30"))
    buf = make(3, trajectory_format=fmt)
    rng = np.random.default_rng(11)
    durable: set[int] = set()
    next_code = 0
    for _ in range(rounds):
        codes = list(range(next_code, next_code + 6))
        next_code += 6
        buf.add_trajectories([traj(c) for c in codes])
        buf.flush()
        durable.update(codes)
        victim = int(rng.integers(3))
        pid = shard_pid(buf, victim)
        if rng.random() < 0.5:  # kill while more adds are in flight (not flushed: may be lost)
            extra = [traj(c) for c in range(next_code, next_code + 3)]
            next_code += 3
            killer = threading.Timer(0.01, os.kill, (pid, signal.SIGKILL))
            killer.start()
            try:
                buf.add_trajectories(extra)
            except ShardUnavailableError:
                pass
            killer.join()
        else:
            os.kill(pid, signal.SIGKILL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ShardRestartedWarning)
            for _ in range(100):
                try:
                    buf.wait_until_ready(60)
                    seen = {c // 1000 for c, _ in transition_keys(buf.sample(40 * len(durable) * N * E * B))}
                    break
                except ShardUnavailableError:
                    time.sleep(0.1)
        assert durable <= seen, f"lost flushed trajectories {sorted(durable - seen)}"


# -- prioritized ------------------------------------------------------------------------------


def test_prioritized_draws_follow_priorities_over_the_union(make):
    alpha = 0.7
    buf = make(2, prioritized=True, priority_alpha=alpha, priority_beta=0.5)
    buf.add_trajectories([traj(0)], keys=[0])
    buf.add_trajectories([traj(1), traj(2)], keys=[1, 1])
    population = all_transitions([0, 1, 2])
    # learn every transition's index, then give it priority 1 + (code // 1000) * 2 + env
    index_of = {}
    while len(index_of) < len(population):
        batch = buf.sample(512)
        index_of.update(zip(transition_keys(batch), batch["indices"].tolist(), strict=True))
    raw = {t: 1.0 + 2 * (t[0] // 1000) + t[1] for t in population}
    keys = list(index_of)
    assert buf.update_priorities([index_of[t] for t in keys], [raw[t] for t in keys]) == len(keys)
    q = {t: (raw[t] + 1e-6) ** alpha for t in population}
    total_q = sum(q.values())
    seen = Counter()
    draws = 0
    for _ in range(10):
        batch = buf.sample(1500)
        rows = transition_keys(batch)
        seen.update(rows)
        draws += len(rows)
        # weights: (min q / q_i) ** beta over the whole batch (both shards)
        qs = torch.tensor([q[t] for t in rows], dtype=torch.float64)
        expected = ((qs.min() / qs) ** 0.5).float()
        assert torch.allclose(batch["weights"], expected, rtol=1e-5)
        assert batch["weights"].max() == 1.0
        assert_aligned(batch)
    observed = [seen[t] for t in population]
    expected_counts = [draws * q[t] / total_q for t in population]
    assert chi_square(observed, expected_counts) < chi2_bound(len(population) - 1)


def test_priority_updates_reach_the_right_shard_and_beta_anneals(make):
    buf = make(2, prioritized=True, priority_alpha=1.0, priority_beta=0.4, priority_eps=1e-12)
    buf.add_trajectories([traj(0), traj(1)])  # shard 0 holds 0, shard 1 holds 1
    batch = buf.sample(400)
    shards = batch["indices"] % 2
    codes_ = batch["curr_obs"]["states"][:, 0].long() // 1000
    assert torch.equal(shards, codes_)  # the index names the shard the row came from
    # silence trajectory 1 (on shard 1): every later draw comes from shard 0
    index_of = dict(zip(transition_keys(batch), batch["indices"].tolist(), strict=True))
    while not set(all_transitions([1])) <= set(index_of):
        more = buf.sample(400)
        index_of.update(zip(transition_keys(more), more["indices"].tolist(), strict=True))
    ones = [index_of[t] for t in all_transitions([1])]
    assert buf.update_priorities(ones, [0.0] * len(ones)) == len(ones)
    assert {c // 1000 for c, _ in transition_keys(buf.sample(500))} == {0}
    buf.priority_beta = 1.0
    assert buf.priority_beta == 1.0
    with pytest.raises(InvalidArgumentError, match=r"priority_beta must be a number in \[0, 1\]"):
        buf.priority_beta = 2
    with pytest.raises(InvalidArgumentError, match="one priority each"):
        buf.update_priorities([0, 1], [1.0])
    with pytest.raises(InvalidArgumentError, match="finite"):
        buf.update_priorities([0], [float("nan")])


def test_uniform_buffers_refuse_priority_calls(make):
    buf = make(1)
    with pytest.raises(InvalidArgumentError, match="prioritized=True"):
        buf.update_priorities([0], [1.0])
    with pytest.raises(InvalidArgumentError, match="prioritized=True"):
        buf.priority_beta = 0.5


def test_rows_arrive_as_views_of_the_object_store_not_copies(make):
    """What a shard sends is mapped, not copied, on arrival; the client's batch is its own."""
    buf = make(1, name="views-test")
    buf.add_trajectories([coded_trajectory(i, n=50, e=2, num_envs=16, layout="aligned") for i in range(2)])
    shard = ray.get_actor("views-test.rank_0")  # the shard actor, by the name it was given
    _, (flat, _) = ray.get(shard.sample.remote(4096, None, False))
    images, dtype_name = flat[("curr_obs", "main_images")]
    assert images.nbytes > 100_000 and dtype_name is None
    assert not images.flags.writeable and not images.flags.owndata  # a view of shared memory
    batch = buf.sample(4096)
    assert batch["curr_obs"]["main_images"].is_contiguous()
    batch["curr_obs"]["main_images"].zero_()  # writable: the batch owns its memory


def test_built_from_rlinfs_configuration(tmp_path):
    cfg = {
        "algorithm": {
            "replay_buffer": {
                "auto_save": True,
                "auto_save_path": str(tmp_path / "from-cfg"),
                "sample_window_size": 0,
                "cache_size": 3,
                "max_trajectories": 5,
                "min_buffer_size": 2,
            }
        }
    }
    buf = RayTrajectoryReplayBuffer.from_config(cfg, num_shards=2, actor_options=ACTOR)
    try:
        assert buf.path == str(tmp_path / "from-cfg")
        assert buf.config_extras.min_buffer_size == 2
        buf.add_trajectories([traj(i) for i in range(14)])
        assert [s["size"] for s in buf.get_stats()["shards"]] == [5, 5]  # max_trajectories per shard
        assert [s["cached_trajectories"] for s in buf.get_stats()["shards"]] == [3, 3]
    finally:
        buf.shutdown()
    with (
        pytest.warns(UnknownConfigKeysWarning, match="sample_windw_size"),
        pytest.raises(InvalidArgumentError, match="needs a directory"),
    ):
        RayTrajectoryReplayBuffer.from_config({"sample_windw_size": 3}, num_shards=1)
    with pytest.raises(InvalidArgumentError, match="needs a directory"):
        RayTrajectoryReplayBuffer.from_config({"cache_size": 3}, num_shards=1)


def test_rlinfs_own_directory_spreads_over_shards_aligned(make, fixture_dir):
    """The RLinf-written fixture (3 trajectories, 48 transitions) loaded into two shards: every
    sampled row is an aligned transition, every step comes up, and the fixture is only read."""
    before = {p.name: p.read_bytes() for p in fixture_dir.iterdir()}
    buf = make(2)
    buf.load_checkpoint(str(fixture_dir))
    assert [s["size"] for s in buf.get_stats()["shards"]] == [2, 1]  # ids 0, 2 and 1: dealt out
    seen = set()
    for _ in range(4):
        batch = buf.sample(500)
        assert_aligned(batch, n=4)
        seen.update(batch["curr_obs"]["states"][:, 0].long().tolist())
    assert seen == {1000 * i + 100 * k + s for i in range(3) for k in range(2) for s in range(4)}
    assert {p.name: p.read_bytes() for p in fixture_dir.iterdir()} == before


def test_priorities_survive_a_sharded_checkpoint_and_a_restart(make, tmp_path):
    buf = make(2, prioritized=True)
    buf.add_trajectories([traj(i) for i in range(4)])
    batch = buf.sample(2000)
    idx = np.unique(batch["indices"].numpy())
    buf.update_priorities(idx, (idx % 5) * 0.5 + 0.25)
    masses = buf.priority_mass(per_shard=True)
    buf.save_checkpoint(str(tmp_path / "ckpt"))  # rank_k/priorities.bin per shard
    again = make(2, path=tmp_path / "again", prioritized=True)
    again.load_checkpoint(str(tmp_path / "ckpt"))  # rank for rank: priorities follow
    assert np.allclose(again.priority_mass(per_shard=True), masses, rtol=1e-9)
    # compacting writes each shard's priorities to its own directory; a restart restores them
    buf.save_checkpoint(str(tmp_path / "buf"))
    kill_shard(buf, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShardRestartedWarning)
        buf.wait_until_ready(60)
    assert np.allclose(buf.priority_mass(per_shard=True), masses, rtol=1e-9)
