"""``RateLimiter`` (rlinf_replay_buffer/rate_limiter.py), with real threads.

Blocking is observed with a thread that records when its wait returns: a thread still waiting
after a pause is blocked, and it must return promptly once the other side makes room.
"""

from __future__ import annotations

import math
import threading
import time

import pytest

from rlinf_replay_buffer.errors import InvalidArgumentError, ReplayBufferError
from rlinf_replay_buffer.rate_limiter import RateLimiter, RateLimiterClosedError, RateLimitTimeout

PAUSE = 0.2  # long enough for a thread that is not blocked to have finished
PROMPT = 2.0  # generous bound on wake-up latency (loaded CI machines)


class Waiter(threading.Thread):
    """Runs ``fn()`` in a thread; records the result or exception, the wall-clock time it
    returned and the CPU time the thread used while waiting."""

    def __init__(self, fn) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.done_at = math.inf
        self.cpu = 0.0

    def run(self) -> None:
        cpu = time.thread_time()
        try:
            self.fn()
        except BaseException as e:  # reported to the test
            self.error = e
        finally:
            self.cpu = time.thread_time() - cpu
            self.done_at = time.monotonic()
            self.done.set()


def start(fn) -> Waiter:
    w = Waiter(fn)
    w.start()
    return w


def test_band_from_error_buffer():
    r = RateLimiter(samples_per_insert=2.0, min_size_to_sample=100, error_buffer=50.0)
    assert (r.min_diff, r.max_diff) == (150.0, 250.0)
    r = RateLimiter(samples_per_insert=0.5, min_size_to_sample=10, error_buffer=(-4.0, 8.0))
    assert (r.min_diff, r.max_diff) == (-4.0, 8.0)
    r = RateLimiter(1.0, 1, (-math.inf, math.inf))  # min size only
    r.on_insert(1)
    r.on_sample(10**9)
    assert r.can_sample(10**6) and r.can_insert(10**6)


def test_rules_follow_the_docstring():
    # spi 2, min size 10, band [0, 40]
    r = RateLimiter(2.0, 10, (0.0, 40.0))
    assert not r.can_sample(1)
    assert r.can_insert(1000)  # below min size: inserts never wait
    r.on_insert(9)  # diff 18
    assert r.can_insert(500) and not r.can_sample(1)
    r.on_insert(1)  # size 10, diff 20
    assert r.can_sample(20) and not r.can_sample(21)  # diff - n >= 0
    assert r.can_insert(10) and not r.can_insert(11)  # diff + 2n <= 40
    r.on_sample(20)  # diff 0
    assert not r.can_sample(1)
    assert r.can_insert(20)
    r.on_remove(5)  # size 5 < min size
    assert not r.can_sample(1) and r.can_insert(1000)
    assert r.stats() == {"inserts": 10, "samples": 20, "removes": 5, "size": 5, "diff": 0.0}
    r.reset()
    assert r.stats()["inserts"] == 0


def test_sampler_blocks_until_inserts_arrive():
    r = RateLimiter(samples_per_insert=1.0, min_size_to_sample=8, error_buffer=100.0)
    r.on_insert(5)
    w = start(lambda: r.await_can_sample(4, timeout=30))
    time.sleep(PAUSE)
    assert not w.done.is_set(), "sampling must wait for min_size_to_sample"
    r.on_insert(2)  # size 7: still short
    time.sleep(PAUSE)
    assert not w.done.is_set()
    t = time.monotonic()
    r.on_insert(1)
    assert w.done.wait(PROMPT), "the sampler was not woken by the insert"
    assert w.error is None
    assert w.done_at - t < PROMPT
    assert w.cpu < 0.1, f"the waiting thread used {w.cpu:.3f} s of CPU: it must sleep, not spin"


def test_inserter_blocks_until_samples_catch_up():
    # spi 1, min size 4, band [0, 8]: after 8 inserts diff = 8 and inserting waits for samples
    r = RateLimiter(samples_per_insert=1.0, min_size_to_sample=4, error_buffer=(0.0, 8.0))
    r.acquire_insert(8, timeout=0)
    assert not r.can_insert(1)
    w = start(lambda: r.acquire_insert(4, timeout=30))
    time.sleep(PAUSE)
    assert not w.done.is_set(), "inserting must wait while sampling lags"
    r.acquire_sample(3, timeout=0)  # diff 5: 5 + 4 > 8, still waits
    time.sleep(PAUSE)
    assert not w.done.is_set()
    r.acquire_sample(1, timeout=0)  # diff 4: 4 + 4 <= 8
    assert w.done.wait(PROMPT), "the inserter was not woken by the samples"
    assert w.error is None
    assert r.stats()["inserts"] == 12 and r.stats()["diff"] == 8.0
    assert w.cpu < 0.1


def test_timeouts_raise_a_library_timeout():
    r = RateLimiter(samples_per_insert=1.0, min_size_to_sample=10, error_buffer=(0.0, 4.0))
    t = time.monotonic()
    with pytest.raises(
        RateLimitTimeout, match=r"timed out after 0.1 s waiting to sample 1 .*min_size_to_sample"
    ):
        r.await_can_sample(1, timeout=0.1)
    assert 0.09 <= time.monotonic() - t < PROMPT
    r.on_insert(10)
    r.on_sample(10)  # diff 0: the band does not admit another sample
    with pytest.raises(RateLimitTimeout, match=r"sampling needs diff - 1 >= min_diff"):
        r.acquire_sample(1, timeout=0)
    r.on_insert(4)  # diff 4: max_diff reached
    with pytest.raises(RateLimitTimeout, match=r"inserting needs diff \+ 1 \* 1 <= max_diff = 4"):
        r.acquire_insert(1, timeout=0.05)
    with pytest.raises(RateLimitTimeout, match="widen error_buffer"):
        r.await_can_insert(5, timeout=0)
    assert r.stats()["inserts"] == 14 and r.stats()["samples"] == 10  # failed acquires record nothing
    err = RateLimitTimeout("x")
    assert isinstance(err, TimeoutError) and isinstance(err, ReplayBufferError)


def test_close_wakes_every_waiter_promptly():
    r = RateLimiter(samples_per_insert=1.0, min_size_to_sample=4, error_buffer=(0.0, 4.0))
    r.on_insert(4)
    r.on_sample(4)  # diff 0: samples wait
    waiters = [start(lambda: r.await_can_sample(1)) for _ in range(3)]  # no timeout at all
    r2 = RateLimiter(samples_per_insert=1.0, min_size_to_sample=1, error_buffer=(0.0, 2.0))
    r2.on_insert(2)  # diff 2: inserts wait
    waiters += [start(lambda: r2.acquire_insert(1, timeout=30))]
    time.sleep(PAUSE)
    assert not any(w.done.is_set() for w in waiters)
    t = time.monotonic()
    r.close()
    r2.close()
    for w in waiters:
        assert w.done.wait(PROMPT), "close() did not wake a waiter"
        assert isinstance(w.error, RateLimiterClosedError)
        assert "closed while waiting" in str(w.error)
        assert w.done_at - t < PROMPT
    with pytest.raises(RateLimiterClosedError, match="closed"):
        r.await_can_insert(1, timeout=10)  # later waits fail at once, even allowed ones
    assert r.closed
    r.reopen()
    r.await_can_insert(1, timeout=0)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0.0, 10, 5.0), "samples_per_insert must be finite and > 0"),
        ((-1.0, 10, 5.0), "samples_per_insert must be finite and > 0"),
        ((float("nan"), 10, 5.0), "samples_per_insert"),
        (("2", 10, 5.0), "samples_per_insert must be a number"),
        ((1.0, 0, 5.0), "min_size_to_sample must be >= 1"),
        ((1.0, 2.5, 5.0), "min_size_to_sample must be an int"),
        ((1.0, 10, -1.0), "error_buffer must be >= 0"),
        ((1.0, 10, 0.5), r"band of width 1 .* must be >= 2 \* max\(1, samples_per_insert\) = 2"),
        ((4.0, 10, 3.0), r"= 8"),
        ((1.0, 10, (5.0, 1.0)), "min_diff < max_diff"),
        ((1.0, 10, (0.0, 1.0, 2.0)), r"must be \(min_diff, max_diff\)"),
        ((1.0, 10, (float("nan"), 1.0)), "min_diff < max_diff"),
        ((1.0, 10, "wide"), "error_buffer must be a number"),
    ],
)
def test_invalid_constructor_arguments(args, match):
    with pytest.raises(InvalidArgumentError, match=match):
        RateLimiter(*args)


def test_invalid_call_arguments():
    r = RateLimiter(1.0, 1, 10.0)
    with pytest.raises(InvalidArgumentError, match="n must be >= 0"):
        r.on_insert(-1)
    with pytest.raises(InvalidArgumentError, match="n must be an int"):
        r.can_sample(1.5)
    with pytest.raises(InvalidArgumentError, match="timeout must be >= 0"):
        r.await_can_insert(1, timeout=-1)
    with pytest.raises(InvalidArgumentError, match="timeout must be >= 0"):
        r.await_can_insert(1, timeout=float("nan"))
    with pytest.raises(InvalidArgumentError, match="cannot remove 1 transitions"):
        r.on_remove(1)
    with pytest.raises(InvalidArgumentError, match=r"must be >= samples_per_insert \* 16 \+ 8 = 24"):
        r.check_batch_sizes(16, 8)
    r.check_batch_sizes(10, 10)


def test_long_run_ratio_stays_inside_the_band():
    """An actor inserting batches of 7 and a learner sampling batches of 16 at spi = 2: the
    learner is the faster side, so it is throttled; the band is checked after every step."""
    spi, min_size, n_ins, n_smp = 2.0, 50, 7, 16
    r = RateLimiter(spi, min_size, error_buffer=40.0)  # band [60, 140], width 80 >= 2*7 + 16
    r.check_batch_sizes(n_ins, n_smp)
    violations: list[dict] = []
    stop = threading.Event()
    counts = {"insert": 0, "sample": 0}
    errors: list[BaseException] = []

    def check() -> None:
        st = r.stats()
        if st["size"] >= min_size + n_ins and not (r.min_diff <= st["diff"] <= r.max_diff):
            violations.append(st)

    def actor() -> None:
        while not stop.is_set():
            try:
                r.acquire_insert(n_ins, timeout=5)
            except RateLimiterClosedError:
                return
            except BaseException as e:
                errors.append(e)
                return
            counts["insert"] += 1
            check()
            time.sleep(0.0005)  # the actor is the slow side

    def learner() -> None:
        while not stop.is_set():
            try:
                r.acquire_sample(n_smp, timeout=5)
            except RateLimiterClosedError:
                return
            except BaseException as e:
                errors.append(e)
                return
            counts["sample"] += 1
            check()

    threads = [threading.Thread(target=f, daemon=True) for f in (actor, learner)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    stop.set()
    r.close()
    for t in threads:
        t.join(PROMPT)
        assert not t.is_alive()
    st = r.stats()
    assert not errors, errors
    assert not violations, violations[:3]
    assert counts["insert"] > 50 and counts["sample"] > 50, counts
    assert r.min_diff <= st["diff"] <= r.max_diff
    # |samples - spi * inserts| <= max(|min_diff|, |max_diff|), so the ratio converges
    assert abs(st["samples"] / st["inserts"] - spi) <= r.max_diff / st["inserts"]
