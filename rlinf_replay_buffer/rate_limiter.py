"""A samples-per-insert rate limiter: keeps the learner's sampling and the actors' inserting at a
fixed ratio, within a tolerance, by blocking whichever side runs ahead.

Counts are in the unit the caller passes; the buffer passes **transitions** (added, sampled,
removed), so ``samples_per_insert`` is sampled transitions per inserted transition (the replay
ratio), and ``min_size_to_sample`` and the band are in transitions too. With ``I`` transitions inserted, ``S``
sampled and ``R`` removed, the limiter looks at

* ``size = I - R``, the transitions held, and
* ``diff = samples_per_insert * I - S``, how far sampling lags behind its target.

Rules, for a request of ``n`` transitions (those of Reverb's ``SampleToInsertRatio``, with a
batch of ``n`` in place of one item):

* **sample** ``n`` is allowed when ``size >= min_size_to_sample`` and ``diff - n >= min_diff``;
* **insert** ``n`` is allowed when ``size < min_size_to_sample`` (until the buffer first holds
  enough to sample, inserts never wait), or when ``diff + samples_per_insert * n <= max_diff``.

Once the buffer holds ``min_size_to_sample`` transitions and ``diff`` has entered
``[min_diff, max_diff]``, it stays there for as long as the buffer keeps that size: inserts only
raise ``diff`` and are admitted only if it stays ``<= max_diff``; samples only lower it and are
admitted only if it stays ``>= min_diff``. Hence ``|S - samples_per_insert * I|`` is bounded by
the band, and ``S / I`` tends to ``samples_per_insert``.

The band (``error_buffer``):

* a number ``e``: ``[min_diff, max_diff] = [spi * min_size_to_sample - e, spi *
  min_size_to_sample + e]``, centred on the ``diff`` the buffer has when it first reaches
  ``min_size_to_sample`` (no samples yet);
* a pair ``(min_diff, max_diff)``: the band itself (``-inf``/``inf`` allowed: one side unlimited).

Its width must be at least ``2 * max(1, samples_per_insert)`` (Reverb's rule, which keeps single
inserts and samples from blocking each other). **Batches need more**: with inserts of ``n`` and
samples of ``m`` transitions, the two sides are guaranteed never to be blocked at once when
``max_diff - min_diff >= samples_per_insert * n + m`` (:meth:`RateLimiter.check_batch_sizes`).
With a narrower band a producer and a consumer can wait on each other until a timeout.

Waiting uses one ``threading.Condition`` (no polling); every count change wakes the waiters,
which re-check their rule. ``close()`` wakes them all and makes every wait raise
:class:`RateLimiterClosedError`.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator

from .errors import InvalidArgumentError, RateLimiterClosedError, RateLimitTimeout
from .validate import check_float, check_int

__all__ = ["RateLimitTimeout", "RateLimiter", "RateLimiterClosedError"]


class RateLimiter:
    """Samples-per-insert rate limiter (see the module docstring for the rules).

    Thread-safe: all state is guarded by one lock, shared with the condition waiters sleep on.

    Typical use by a buffer (never while holding the buffer's own lock, or the other side could
    not make progress)::

        limiter.acquire_insert(n_new, timeout)   # blocks while the learner lags
        ... add the transitions ...
        limiter.acquire_sample(batch, timeout)   # blocks while the actors lag
        ... sample ...

    ``acquire_*`` wait and record in one step, so several threads on the same side cannot all
    pass one check. ``await_can_*`` followed by ``on_*`` does the same in two steps, which is
    exact when only one thread inserts and one samples.
    """

    def __init__(
        self,
        samples_per_insert: float,
        min_size_to_sample: int,
        error_buffer: float | tuple[float, float],
    ) -> None:
        """Args:
        samples_per_insert: target ratio of sampled to inserted transitions (> 0, finite).
        min_size_to_sample: transitions the buffer must hold before any sample (>= 1).
        error_buffer: tolerance: a number ``e >= 0`` (band ``spi * min_size_to_sample +- e``)
            or a pair ``(min_diff, max_diff)``; see the module docstring.

        Raises:
            InvalidArgumentError: an argument out of range, or a band narrower than
                ``2 * max(1, samples_per_insert)``.
        """
        if isinstance(samples_per_insert, bool) or not isinstance(samples_per_insert, (int, float)):
            raise InvalidArgumentError(
                f"samples_per_insert must be a number, got {type(samples_per_insert).__name__}"
            )
        spi = float(samples_per_insert)
        if not (math.isfinite(spi) and spi > 0):
            raise InvalidArgumentError(
                f"samples_per_insert must be finite and > 0, got {samples_per_insert!r}"
            )
        min_size = check_int("min_size_to_sample", min_size_to_sample, 1)
        if isinstance(error_buffer, tuple):
            if len(error_buffer) != 2:
                raise InvalidArgumentError(
                    f"error_buffer as a tuple must be (min_diff, max_diff), got {error_buffer!r}"
                )
            try:
                lo, hi = float(error_buffer[0]), float(error_buffer[1])
            except (TypeError, ValueError):
                raise InvalidArgumentError(
                    f"error_buffer must hold two numbers, got {error_buffer!r}"
                ) from None
            if math.isnan(lo) or math.isnan(hi) or lo == math.inf or hi == -math.inf or lo >= hi:
                raise InvalidArgumentError(
                    "error_buffer (min_diff, max_diff) must satisfy min_diff < max_diff, "
                    f"got {error_buffer!r}"
                )
        else:
            if isinstance(error_buffer, bool) or not isinstance(error_buffer, (int, float)):
                raise InvalidArgumentError(
                    f"error_buffer must be a number or a (min_diff, max_diff) tuple, got {error_buffer!r}"
                )
            e = float(error_buffer)
            if math.isnan(e) or e < 0:
                raise InvalidArgumentError(f"error_buffer must be >= 0, got {error_buffer!r}")
            lo, hi = spi * min_size - e, spi * min_size + e
        width = hi - lo
        if width < 2 * max(1.0, spi):
            raise InvalidArgumentError(
                f"error_buffer gives a band of width {width:g} (max_diff - min_diff); it must be >= "
                f"2 * max(1, samples_per_insert) = {2 * max(1.0, spi):g}, or inserts and samples could "
                "block each other for good"
            )
        self._spi = spi
        self._min_size = min_size
        self._min_diff = lo
        self._max_diff = hi
        self._inserts = 0
        self._samples = 0
        self._removes = 0
        self._closed = False
        self._cond = threading.Condition(threading.Lock())

    # ----------------------------------------------------------------------------- properties

    @property
    def samples_per_insert(self) -> float:
        """Target ratio of sampled to inserted transitions."""
        return self._spi

    @property
    def min_size_to_sample(self) -> int:
        """Transitions that must be held before sampling."""
        return self._min_size

    @property
    def min_diff(self) -> float:
        """Lower edge of the band (samples need ``diff - n >= min_diff``)."""
        return self._min_diff

    @property
    def max_diff(self) -> float:
        """Upper edge of the band (inserts need ``diff + spi * n <= max_diff``)."""
        return self._max_diff

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (and not undone by :meth:`reopen`)."""
        return self._closed

    def stats(self) -> dict[str, float]:
        """A consistent snapshot: ``inserts``, ``samples``, ``removes``, ``size`` (transitions,
        ints) and ``diff`` (``samples_per_insert * inserts - samples``, float)."""
        with self._cond:
            return {
                "inserts": self._inserts,
                "samples": self._samples,
                "removes": self._removes,
                "size": self._inserts - self._removes,
                "diff": self._diff(),
            }

    # ------------------------------------------------------------------------------ the rules

    def _diff(self) -> float:
        return self._spi * self._inserts - self._samples

    def _can_insert(self, n: int) -> bool:
        if self._inserts - self._removes < self._min_size:
            return True
        return self._diff() + self._spi * n <= self._max_diff

    def _can_sample(self, n: int) -> bool:
        if self._inserts - self._removes < self._min_size:
            return False
        return self._diff() - n >= self._min_diff

    def can_insert(self, n: int = 1) -> bool:
        """Whether inserting ``n`` transitions is allowed now (does not record anything)."""
        n = check_int("n", n, 0)
        with self._cond:
            return self._can_insert(n)

    def can_sample(self, n: int = 1) -> bool:
        """Whether sampling ``n`` transitions is allowed now (does not record anything)."""
        n = check_int("n", n, 0)
        with self._cond:
            return self._can_sample(n)

    def check_batch_sizes(self, insert_size: int, sample_size: int) -> None:
        """Raise unless inserts of ``insert_size`` and samples of ``sample_size`` transitions can
        never block each other (``max_diff - min_diff >= spi * insert_size + sample_size``).

        Raises:
            InvalidArgumentError: the band is too narrow for these batch sizes; the message says
                how wide it must be.
        """
        a = check_int("insert_size", insert_size, 1)
        b = check_int("sample_size", sample_size, 1)
        need = self._spi * a + b
        if self._max_diff - self._min_diff < need:
            raise InvalidArgumentError(
                f"the rate limiter's band (max_diff - min_diff = {self._max_diff - self._min_diff:g}) "
                f"is too narrow for inserts of {a} and samples of {b} transitions: it must be >= "
                f"samples_per_insert * {a} + {b} = {need:g}, or both sides can block each other; "
                "widen error_buffer"
            )

    # -------------------------------------------------------------------------------- records

    def on_insert(self, n: int) -> None:
        """Record ``n`` inserted transitions (>= 0) and wake the waiters."""
        n = check_int("n", n, 0)
        with self._cond:
            self._inserts += n
            self._cond.notify_all()

    def on_sample(self, n: int) -> None:
        """Record ``n`` sampled transitions (>= 0) and wake the waiters."""
        n = check_int("n", n, 0)
        with self._cond:
            self._samples += n
            self._cond.notify_all()

    def on_remove(self, n: int) -> None:
        """Record ``n`` transitions that left the buffer (>= 0, at most ``size``): they no
        longer count towards ``min_size_to_sample``. ``diff`` is unaffected."""
        n = check_int("n", n, 0)
        with self._cond:
            if n > self._inserts - self._removes:
                raise InvalidArgumentError(
                    f"cannot remove {n} transitions: the rate limiter counts only "
                    f"{self._inserts - self._removes}"
                )
            self._removes += n
            self._cond.notify_all()

    def cancel_insert(self, n: int) -> None:
        """Give back ``n`` inserts recorded by :meth:`acquire_insert` for an add that then
        failed (nothing was added), and wake the waiters."""
        n = check_int("n", n, 0)
        with self._cond:
            self._inserts = max(self._removes, self._inserts - n)
            self._cond.notify_all()

    def cancel_sample(self, n: int) -> None:
        """Give back ``n`` samples recorded by :meth:`acquire_sample` for a sample that then
        failed (nothing was returned), and wake the waiters."""
        n = check_int("n", n, 0)
        with self._cond:
            self._samples = max(0, self._samples - n)
            self._cond.notify_all()

    def rebase(self, size: int) -> None:
        """Forget the history of a buffer that now holds ``size`` transitions (it was loaded):
        they count as inserted, and inserts and samples as in balance (``diff`` at
        ``samples_per_insert * min(size, min_size_to_sample)``, the middle of a symmetric
        band). Wakes the waiters."""
        size = check_int("size", size, 0)
        with self._cond:
            self._inserts, self._removes = size, 0
            self._samples = self._spi * (size - min(size, self._min_size))
            self._cond.notify_all()

    def reset(self) -> None:
        """Zero every count (for a buffer that was cleared or reloaded) and wake the waiters."""
        with self._cond:
            self._inserts = self._samples = self._removes = 0
            self._cond.notify_all()

    # -------------------------------------------------------------------------------- waiting

    def _wait(self, rule: Callable[[int], bool], n: int, timeout: float | None, what: str) -> None:
        """Wait, holding the lock on return, until ``rule(n)``; raise on close or timeout."""
        deadline = None if timeout is None or math.isinf(timeout) else time.monotonic() + timeout
        while True:
            if self._closed:
                raise RateLimiterClosedError(f"the rate limiter was closed while waiting to {what} {n}")
            if rule(n):
                return
            if deadline is None:
                self._cond.wait()
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RateLimitTimeout(self._timeout_message(what, n, timeout))
            self._cond.wait(remaining)

    def _timeout_message(self, what: str, n: int, timeout: float | None) -> str:
        size = self._inserts - self._removes
        diff = self._diff()
        head = (
            f"timed out after {timeout:g} s waiting to {what} {n} transitions "
            f"(inserted {self._inserts}, sampled {self._samples}, held {size}, "
            f"diff = samples_per_insert * inserted - sampled = {diff:g}): "
        )
        if what == "insert":
            tail = (
                f"inserting needs diff + {self._spi:g} * {n} <= max_diff = {self._max_diff:g}; "
                "the learner has to sample more first"
            )
            if self._spi * n > self._max_diff - self._min_diff:
                tail += (
                    f" (and {n} transitions are more than the band "
                    f"[{self._min_diff:g}, {self._max_diff:g}] can admit at once: widen error_buffer)"
                )
        elif size < self._min_size:
            tail = f"sampling needs at least min_size_to_sample = {self._min_size} transitions held"
        else:
            tail = (
                f"sampling needs diff - {n} >= min_diff = {self._min_diff:g}; "
                "the actors have to insert more first"
            )
            if n > self._max_diff - self._min_diff:
                tail += (
                    f" (and {n} transitions are more than the band "
                    f"[{self._min_diff:g}, {self._max_diff:g}] can admit at once: widen error_buffer)"
                )
        return head + tail

    def await_can_insert(self, n: int = 1, timeout: float | None = None) -> None:
        """Block until inserting ``n`` transitions is allowed (records nothing: follow with
        :meth:`on_insert`, or use :meth:`acquire_insert`).

        Args:
            n: transitions to insert (>= 0).
            timeout: seconds to wait at most (``None``: no limit; ``0``: do not wait).

        Raises:
            RateLimitTimeout: still not allowed after ``timeout`` seconds.
            RateLimiterClosedError: the limiter is, or gets, closed.
        """
        n = check_int("n", n, 0)
        timeout = check_float("timeout", timeout, 0, allow_none=True, finite=False)
        with self._cond:
            self._wait(self._can_insert, n, timeout, "insert")

    def await_can_sample(self, n: int = 1, timeout: float | None = None) -> None:
        """Block until sampling ``n`` transitions is allowed (records nothing: follow with
        :meth:`on_sample`, or use :meth:`acquire_sample`). Arguments and errors as
        :meth:`await_can_insert`."""
        n = check_int("n", n, 0)
        timeout = check_float("timeout", timeout, 0, allow_none=True, finite=False)
        with self._cond:
            self._wait(self._can_sample, n, timeout, "sample")

    def acquire_insert(self, n: int, timeout: float | None = None) -> None:
        """:meth:`await_can_insert` and :meth:`on_insert` in one atomic step."""
        n = check_int("n", n, 0)
        timeout = check_float("timeout", timeout, 0, allow_none=True, finite=False)
        with self._cond:
            self._wait(self._can_insert, n, timeout, "insert")
            self._inserts += n
            self._cond.notify_all()

    def acquire_sample(self, n: int, timeout: float | None = None) -> None:
        """:meth:`await_can_sample` and :meth:`on_sample` in one atomic step."""
        n = check_int("n", n, 0)
        timeout = check_float("timeout", timeout, 0, allow_none=True, finite=False)
        with self._cond:
            self._wait(self._can_sample, n, timeout, "sample")
            self._samples += n
            self._cond.notify_all()

    # ------------------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Wake every waiter; they, and all later waits, raise :class:`RateLimiterClosedError`.

        Counting (``on_*``) and ``can_*`` keep working. Idempotent.
        """
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        """Undo :meth:`close` (counts are kept): waits block again."""
        with self._cond:
            self._closed = False


class LimiterGate:
    """How a buffer uses its optional :class:`RateLimiter` (all calls are no-ops without one).

    Waits happen outside the buffer's lock (samplers and adders must get through); a limiter the
    buffer's ``close()`` closed is reopened by the next add or sample, so the buffer stays
    usable; inserts and samples are given back if the add or the sample then fails.

    Args:
        limiter: the limiter, or ``None``.
        timeout: seconds an add or sample waits at most (``None``: no bound).
    """

    def __init__(self, limiter: RateLimiter | None, timeout: float | None) -> None:
        if limiter is not None and not isinstance(limiter, RateLimiter):
            raise InvalidArgumentError(f"rate_limiter must be a RateLimiter, got {type(limiter).__name__}")
        self.limiter = limiter
        self.timeout = timeout
        self._closed_by_buffer = False

    def _reopen(self) -> None:
        if self._closed_by_buffer and self.limiter is not None:
            self._closed_by_buffer = False
            self.limiter.reopen()

    @contextlib.contextmanager
    def insert(self, transitions: int) -> Iterator[None]:
        """Wait until ``transitions`` may be inserted (enter it without the buffer's lock);
        give them back if the body raises (the add was refused: nothing was added)."""
        if self.limiter is not None:
            self._reopen()
            self.limiter.acquire_insert(transitions, self.timeout)
        try:
            yield
        except BaseException:
            if self.limiter is not None:
                self.limiter.cancel_insert(transitions)
            raise

    @contextlib.contextmanager
    def sample(self, transitions: int) -> Iterator[None]:
        """Wait until ``transitions`` may be sampled; give them back if the body raises."""
        if self.limiter is not None:
            self._reopen()
            self.limiter.acquire_sample(transitions, self.timeout)
        try:
            yield
        except BaseException:
            if self.limiter is not None:
                self.limiter.cancel_sample(transitions)
            raise

    def removed(self, transitions: int) -> None:
        """Transitions left the buffer."""
        if self.limiter is not None:
            self.limiter.on_remove(transitions)

    def rebase(self, transitions: int) -> None:
        """The buffer now holds ``transitions`` (loaded), counted as inserted and in balance."""
        if self.limiter is not None:
            self.limiter.rebase(transitions)

    def reset(self) -> None:
        """The buffer was emptied."""
        if self.limiter is not None:
            self.limiter.reset()

    def close(self) -> None:
        """Close the limiter (wakes every waiter) until the next add or sample."""
        if self.limiter is not None:
            self.limiter.close()
            self._closed_by_buffer = True
