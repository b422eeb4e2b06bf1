"""Freshness (``max_staleness``) and the samples-per-insert rate limiter, through the buffer.

Freshness: a trajectory may be sampled only if its ``model_update_count`` is at least the
largest ``model_update_count`` of the sampling window minus ``max_staleness``. Coded
trajectories (see ``conftest``) carry their trajectory id in every row (``code // 1000``), so
each sampled row's update count is looked up from what the test added.

Rate limiter: real threads block in ``sample``/``add_trajectories``; every wait is bounded so
a regression fails instead of hanging, and every limiter is closed at the end of its test.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TrackedBuffer as TrajectoryReplayBuffer
from conftest import assert_aligned, chi_square, coded_trajectory
from conftest import chi2_bound as bound

from rlinf_replay_buffer import (
    EmptyBufferError,
    InvalidArgumentError,
    InvalidTrajectoryError,
    ReplayBufferError,
)
from rlinf_replay_buffer.rate_limiter import RateLimiter, RateLimiterClosedError, RateLimitTimeout

SEED = 99
BLOCKED = 0.25  # seconds a thread is given to prove it is waiting
PROMPT = 5.0  # seconds within which a woken thread must finish


def make_buffer(kind: str, tmp_path: Path, *, window: int = 0, **kw) -> TrajectoryReplayBuffer:
    if kind == "memory":
        return TrajectoryReplayBuffer(seed=SEED, sample_window_size=window, **kw)
    return TrajectoryReplayBuffer(
        seed=SEED,
        sample_window_size=window,
        auto_save=True,
        auto_save_path=str(tmp_path / f"own-{kind}"),
        trajectory_format=kind.split("-")[1],
        cache_size=2,
        **kw,
    )


def trajectory_ids(batch: dict) -> np.ndarray:
    return (batch["curr_obs"]["states"][:, 0].to(torch.int64) // 1000).numpy()


# == freshness ====================================================================================


@pytest.mark.parametrize("window", [0, 6])
@pytest.mark.parametrize("kind", ["memory", "disk-pt", "disk-segment"])
def test_staleness_is_never_violated_across_many_adds_with_interleaved_counts(tmp_path, kind, window):
    K = 3
    rng = random.Random(2024)
    buf = make_buffer(kind, tmp_path, window=window, max_staleness=K)
    counts: list[int] = []
    update = 0
    for i in range(40):
        # mostly increasing policy versions, with late (older) rollouts interleaved
        update += rng.choice((0, 0, 1, 1, 2, 5))
        u = max(0, update - rng.choice((0, 0, 0, 2, 4, 9)))
        counts.append(u)
        buf.add_trajectories(
            [
                coded_trajectory(
                    i, n=rng.randint(1, 4), e=rng.randint(1, 2), images=False, model_update_count=u
                )
            ]
        )
        in_window = list(range(len(counts)))[-window:] if window else list(range(len(counts)))
        newest = max(counts[j] for j in in_window)
        fresh = {j for j in in_window if counts[j] >= newest - K}
        batch = buf.sample(400)
        assert_aligned(batch)
        got = set(trajectory_ids(batch).tolist())
        stale = {j for j in got if counts[j] < newest - K}
        assert not stale, f"after add {i}: sampled stale trajectories {stale} (newest count {newest})"
        assert got <= set(in_window)
        seqs = buf.sample_sequences(100, 1)
        assert (
            set(trajectory_ids({"curr_obs": {"states": seqs["curr_obs"]["states"][:, 0]}}).tolist()) <= fresh
        )
    # the final state: with many draws every fresh trajectory appears
    batch = buf.sample(20_000)
    in_window = list(range(len(counts)))[-window:] if window else list(range(len(counts)))
    newest = max(counts[j] for j in in_window)
    assert set(trajectory_ids(batch).tolist()) == {j for j in in_window if counts[j] >= newest - K}


@pytest.mark.parametrize("kind", ["memory", "disk-pt"])
def test_sampling_is_uniform_over_the_fresh_transitions_chi_square(tmp_path, kind):
    # (n, e, B, model_update_count); the max is 10, K = 2: fresh are counts >= 8
    spec = [(4, 2, 2, 3), (3, 1, 3, 8), (5, 2, 1, 10), (2, 1, 1, 9), (6, 2, 3, 7), (4, 1, 2, 8)]
    buf = make_buffer(kind, tmp_path, max_staleness=2)
    for i, (n, e, b, u) in enumerate(spec):
        buf.add_trajectories([coded_trajectory(i, n=n, e=e, num_envs=b, images=False, model_update_count=u)])
    fresh = [i for i, s in enumerate(spec) if s[3] >= 8]
    assert fresh == [1, 2, 3, 5]
    sizes = np.array([spec[i][0] * spec[i][1] * spec[i][2] for i in fresh], dtype=np.float64)
    ids = np.concatenate([trajectory_ids(buf.sample(10_000)) for _ in range(6)])
    assert set(ids.tolist()) <= set(fresh), "a stale trajectory was sampled"
    counts = np.array([(ids == i).sum() for i in fresh])
    df = len(fresh) - 1
    stat = chi_square(counts, len(ids) * sizes / sizes.sum())
    assert stat < bound(df), f"chi2={stat:.1f} counts={counts.tolist()}"
    # power: uniform over the fresh trajectories (not transitions) is rejected
    assert chi_square(counts, np.full(len(fresh), len(ids) / len(fresh))) > 10 * bound(df)
    # within a trajectory, uniform over its rows
    batch = buf.sample(30_000)
    rows = batch["curr_obs"]["states"][:, 0].to(torch.int64)
    env = batch["curr_obs"]["env_ids"][:, 0]
    sel = (rows // 1000) == 2
    cell = ((rows[sel] % 1000 // 100) * 5 + rows[sel] % 100).numpy()
    c = np.bincount(cell, minlength=10)
    assert chi_square(c, np.full(10, c.sum() / 10)) < bound(9)
    assert set(env[sel].tolist()) == {0}


def test_staleness_reference_is_the_largest_count_in_the_window_not_the_last_added(tmp_path):
    buf = make_buffer("memory", tmp_path, max_staleness=2)
    for i, u in enumerate([5, 9, 3]):  # the last rollout is from an old policy
        buf.add_trajectories([coded_trajectory(i, images=False, model_update_count=u)])
    assert set(trajectory_ids(buf.sample(2000)).tolist()) == {1}


def test_staleness_is_measured_within_the_window_only(tmp_path):
    """A trajectory outside the window with a large count does not make the window stale."""
    buf = make_buffer("disk-pt", tmp_path, window=2, max_staleness=0)
    for i, u in enumerate([100, 1, 2]):
        buf.add_trajectories([coded_trajectory(i, images=False, model_update_count=u)])
    assert set(trajectory_ids(buf.sample(2000)).tolist()) == {2}
    buf.sample_window_size = 0  # now trajectory 0 is in the window and the newest
    assert set(trajectory_ids(buf.sample(2000)).tolist()) == {0}


def test_max_staleness_zero_samples_only_the_newest_policy(tmp_path):
    buf = make_buffer("memory", tmp_path, max_staleness=0)
    for i, u in enumerate([1, 4, 2, 4, 3]):
        buf.add_trajectories([coded_trajectory(i, images=False, model_update_count=u)])
    assert set(trajectory_ids(buf.sample(3000)).tolist()) == {1, 3}


def test_update_count_derived_from_versions_is_respected(tmp_path):
    buf = make_buffer("memory", tmp_path, max_staleness=1)
    for i, v in enumerate([2, 6, 5, 3]):
        traj = coded_trajectory(i, images=False)  # model_update_count None: max of versions
        traj.versions = traj.versions * v
        buf.add_trajectories([traj])
    batch = buf.sample(3000)
    assert set(trajectory_ids(batch).tolist()) == {1, 2}
    assert set(batch["versions"][:, 0].tolist()) == {6.0, 5.0}


@pytest.mark.parametrize("fmt", ["pt", "segment"])
def test_staleness_holds_for_a_loaded_checkpoint(tmp_path, fmt):
    src = TrajectoryReplayBuffer(seed=1, sample_window_size=0, trajectory_format=fmt)
    src.add_trajectories(
        [coded_trajectory(i, images=False, model_update_count=u) for i, u in enumerate([1, 7, 4, 6])]
    )
    src.save_checkpoint(str(tmp_path / "ckpt"))
    buf = make_buffer(f"disk-{fmt}", tmp_path, max_staleness=1)
    buf.load_checkpoint(str(tmp_path / "ckpt"))
    assert set(trajectory_ids(buf.sample(3000)).tolist()) == {1, 3}


@pytest.mark.parametrize("value", [-1, 1.5, True, "2"])
def test_max_staleness_must_be_a_non_negative_int(value):
    with pytest.raises(InvalidArgumentError, match="max_staleness must be an int >= 0"):
        TrajectoryReplayBuffer(max_staleness=value)


# == rate limiter =================================================================================


class Runner:
    """Runs ``fn`` on a daemon thread and keeps its result or exception."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.result: object = None
        self.error: BaseException | None = None
        self.finished_at: float | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], object]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc
        self.finished_at = time.monotonic()

    def still_blocked(self) -> bool:
        self.thread.join(BLOCKED)
        return self.thread.is_alive()

    def finish(self) -> None:
        self.thread.join(PROMPT)
        assert not self.thread.is_alive(), "the thread is still blocked"


def traj16(i: int):
    """16 transitions (4 steps x 2 epochs x 2 envs)."""
    return coded_trajectory(i, n=4, e=2, num_envs=2, images=False)


@pytest.fixture
def limiters():
    made: list[RateLimiter] = []

    def make(*args) -> RateLimiter:
        limiter = RateLimiter(*args)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        limiter.close()  # wakes any thread a failed test left waiting


@pytest.mark.parametrize("kind", ["memory", "disk-pt"])
def test_sample_blocks_until_enough_transitions_are_inserted(tmp_path, kind, limiters):
    limiter = limiters(1.0, 32, 64)
    buf = make_buffer(kind, tmp_path, rate_limiter=limiter)
    sampler = Runner(lambda: buf.sample(8))
    assert sampler.still_blocked(), "sample did not wait for min_size_to_sample"
    buf.add_trajectories([traj16(0)])  # 16 < 32
    assert sampler.still_blocked(), "sample ran with 16 of 32 transitions"
    buf.add_trajectories([traj16(1)])
    sampler.finish()
    assert sampler.error is None
    assert_aligned(sampler.result)
    assert sampler.result["actions"].shape[0] == 8
    assert limiter.stats()["samples"] == 8 and limiter.stats()["inserts"] == 32


@pytest.mark.parametrize("kind", ["memory", "disk-pt"])
def test_add_blocks_while_sampling_lags(tmp_path, kind, limiters):
    limiter = limiters(1.0, 16, 16)  # band [0, 32] of sample debt
    buf = make_buffer(kind, tmp_path, rate_limiter=limiter)
    buf.add_trajectories([traj16(0)])
    buf.add_trajectories([traj16(1)])  # diff = 32: at the top of the band
    adder = Runner(lambda: buf.add_trajectories([traj16(2)]))
    assert adder.still_blocked(), "add did not wait for the learner"
    assert len(buf) == 2, "the blocked add changed the buffer"
    assert_aligned(buf.sample(16))  # diff 16: room for 16 more
    adder.finish()
    assert adder.error is None and adder.result == [2]
    assert len(buf) == 3
    assert limiter.stats()["inserts"] == 48


def test_sample_and_add_by_two_threads_keep_the_ratio(tmp_path, limiters):
    limiter = limiters(2.0, 32, 64)
    buf = make_buffer("memory", tmp_path, rate_limiter=limiter, rate_limit_timeout=PROMPT)
    rows: list[int] = []

    def learn() -> None:
        for _ in range(60):
            batch = buf.sample(16)
            assert_aligned(batch)
            rows.append(batch["actions"].shape[0])

    def act() -> None:
        for i in range(31):
            buf.add_trajectories([traj16(i)])

    learner, actor = Runner(learn), Runner(act)
    actor.finish()
    learner.finish()
    assert learner.error is None and actor.error is None, (learner.error, actor.error)
    stats = limiter.stats()
    assert stats["samples"] == 960 and stats["inserts"] == 496
    assert limiter.min_diff <= stats["diff"] <= limiter.max_diff


@pytest.mark.parametrize("kind", ["memory", "disk-pt"])
def test_timeouts_raise_rate_limit_timeout_and_change_nothing(tmp_path, kind, limiters):
    limiter = limiters(1.0, 16, 16)
    buf = make_buffer(kind, tmp_path, rate_limiter=limiter, rate_limit_timeout=0.05)
    start = time.monotonic()
    with pytest.raises(RateLimitTimeout, match="timed out after 0.05 s waiting to sample 8 transitions"):
        buf.sample(8)
    assert time.monotonic() - start < PROMPT
    with pytest.raises(RateLimitTimeout, match="min_size_to_sample = 16"):
        buf.sample_sequences(2, 4)
    buf.add_trajectories([traj16(0)])
    buf.add_trajectories([traj16(1)])
    with pytest.raises(RateLimitTimeout, match="waiting to insert 16 transitions"):
        buf.add_trajectories([traj16(2)])
    with pytest.raises(TimeoutError):  # also the built-in a caller would catch
        buf.add_trajectories([traj16(2)])
    assert len(buf) == 2 and buf.trajectory_counter == 2
    assert limiter.stats()["inserts"] == 32 and limiter.stats()["samples"] == 0


@pytest.mark.parametrize("kind", ["memory", "disk-pt"])
def test_close_wakes_a_thread_blocked_in_sample(tmp_path, kind, limiters):
    limiter = limiters(1.0, 16, 16)
    buf = make_buffer(kind, tmp_path, rate_limiter=limiter)
    sampler = Runner(lambda: buf.sample(4))
    seqs = Runner(lambda: buf.sample_sequences(2, 2))
    assert sampler.still_blocked() and seqs.still_blocked()
    closed_at = time.monotonic()
    buf.close()
    sampler.finish()
    seqs.finish()
    for runner in (sampler, seqs):
        assert isinstance(runner.error, RateLimiterClosedError), runner.error
        assert "closed while waiting to sample" in str(runner.error)
        assert runner.finished_at - closed_at < 1.0, "close() did not wake the sampler promptly"


def test_close_wakes_a_thread_blocked_in_add(tmp_path, limiters):
    limiter = limiters(1.0, 16, 16)
    buf = make_buffer("disk-pt", tmp_path, rate_limiter=limiter)
    buf.add_trajectories([traj16(0)])
    buf.add_trajectories([traj16(1)])
    adder = Runner(lambda: buf.add_trajectories([traj16(2)]))
    assert adder.still_blocked()
    closed_at = time.monotonic()
    buf.close()
    adder.finish()
    assert isinstance(adder.error, RateLimiterClosedError)
    assert "closed while waiting to insert" in str(adder.error)
    assert adder.finished_at - closed_at < 1.0
    assert len(buf) == 2
    # what was added before is durable and complete
    reread = TrajectoryReplayBuffer(sample_window_size=0)
    reread.load_checkpoint(str(tmp_path / "own-disk-pt"))
    assert len(reread) == 2


def test_an_add_that_fails_validation_does_not_count_as_an_insert(tmp_path, limiters):
    limiter = limiters(1.0, 16, 16)
    buf = make_buffer("memory", tmp_path, rate_limiter=limiter, rate_limit_timeout=2.0)
    bad = traj16(0)
    bad.rewards = None
    with pytest.raises(InvalidTrajectoryError, match="rewards is missing"):
        buf.add_trajectories([traj16(0), bad])
    assert limiter.stats()["inserts"] == 0
    buf.add_trajectories([traj16(0)])
    buf.add_trajectories([traj16(1)])  # at the top of the band: a valid add would now wait
    other_schema = coded_trajectory(2, images=True)
    start = time.monotonic()
    with pytest.raises(InvalidTrajectoryError):
        buf.add_trajectories([other_schema])
    assert time.monotonic() - start < 1.0, "an invalid add waited for the limiter"
    nan = traj16(3)
    nan.rewards = nan.rewards.clone().fill_(1.0)
    nan.rewards[0, 0, 0] = float("nan")
    strict = make_buffer("memory", tmp_path, rate_limiter=limiters(1.0, 16, 16), check_finite=True)
    with pytest.raises(InvalidTrajectoryError):
        strict.add_trajectories([nan])
    assert strict.rate_limiter.stats()["inserts"] == 0
    assert limiter.stats()["inserts"] == 32 and len(buf) == 2


def test_errors_of_sampling_propagate_to_the_caller(tmp_path, limiters):
    limiter = limiters(1.0, 16, 64)
    buf = make_buffer("memory", tmp_path, rate_limiter=limiter, rate_limit_timeout=1.0)
    buf.add_trajectories([traj16(0)])
    with pytest.raises(EmptyBufferError, match="cannot sample sequences of 5 steps"):
        buf.sample_sequences(2, 5)
    with pytest.raises(InvalidArgumentError, match="num_chunks must be an int >= 1"):
        buf.sample(0)
    with pytest.raises(InvalidArgumentError, match="seq_len must be an int >= 1"):
        buf.sample_sequences(2, 0)
    assert_aligned(buf.sample(4))


def test_a_sample_that_raises_is_not_counted_by_the_limiter(tmp_path, limiters):
    limiter = limiters(1.0, 16, 64)
    buf = make_buffer("memory", tmp_path, rate_limiter=limiter, rate_limit_timeout=1.0)
    buf.add_trajectories([traj16(0)])
    with pytest.raises(EmptyBufferError):
        buf.sample_sequences(2, 5)
    assert limiter.stats()["samples"] == 0


def test_clear_makes_sampling_wait_for_new_inserts(tmp_path, limiters):
    limiter = limiters(1.0, 16, 64)
    buf = make_buffer("memory", tmp_path, rate_limiter=limiter, rate_limit_timeout=0.1)
    buf.add_trajectories([traj16(0)])
    buf.sample(4)
    buf.clear()
    with pytest.raises(RateLimitTimeout):
        buf.sample(4)


def test_load_checkpoint_with_capacity_and_rate_limiter(tmp_path, limiters):
    src = TrajectoryReplayBuffer(sample_window_size=0)
    src.add_trajectories([traj16(i) for i in range(4)])
    src.save_checkpoint(str(tmp_path / "ckpt"))
    limiter = limiters(1.0, 16, 64)
    buf = make_buffer("memory", tmp_path, rate_limiter=limiter, max_trajectories=2, rate_limit_timeout=5.0)
    buf.load_checkpoint(str(tmp_path / "ckpt"))
    assert len(buf) == 2
    # the loaded transitions count as inserted and in balance: the band allows 64 samples
    assert limiter.stats()["size"] == 32
    assert set(trajectory_ids(buf.sample(60)).tolist()) == {2, 3}


def test_reopening_a_directory_over_capacity_with_a_rate_limiter(tmp_path, limiters):
    first = make_buffer("disk-pt", tmp_path)
    first.add_trajectories([traj16(i) for i in range(4)])
    first.close()
    buf = make_buffer("disk-pt", tmp_path, rate_limiter=limiters(1.0, 16, 64), max_trajectories=2)
    assert len(buf) == 2


def test_capacity_eviction_is_reported_to_the_limiter(tmp_path, limiters):
    limiter = limiters(1.0, 32, 1000)
    buf = make_buffer("memory", tmp_path, rate_limiter=limiter, max_trajectories=2)
    for i in range(5):
        buf.add_trajectories([traj16(i)])
    stats = limiter.stats()
    assert stats["inserts"] == 80 and stats["removes"] == 48 and stats["size"] == 32
    assert buf.total_samples == stats["size"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rate_limiter": object()}, "rate_limiter must be a RateLimiter"),
        ({"rate_limit_timeout": -1}, "rate_limit_timeout must be None or a number >= 0"),
        ({"rate_limit_timeout": float("nan")}, "rate_limit_timeout must be None or a number >= 0"),
        ({"rate_limit_timeout": True}, "rate_limit_timeout must be None or a number >= 0"),
        ({"rate_limit_timeout": "1"}, "rate_limit_timeout must be None or a number >= 0"),
    ],
)
def test_bad_rate_limit_arguments_are_refused(kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        TrajectoryReplayBuffer(**kwargs)


def test_rate_limit_errors_belong_to_the_library_hierarchy():
    assert issubclass(RateLimitTimeout, ReplayBufferError) and issubclass(RateLimitTimeout, TimeoutError)
    assert issubclass(RateLimiterClosedError, ReplayBufferError)
