"""A background writer thread whose errors are never swallowed.

Jobs run in submission order on one daemon thread. A job that raises is recorded, and so is a
failure a job reports without raising (:meth:`BackgroundWriter.report`: the job carried on, e.g.
an index line that is retried later). Each recorded failure is raised once, as
:class:`WriterError` chained to the original, by the next :meth:`BackgroundWriter.check` or
:meth:`BackgroundWriter.flush`; the auto-saver calls them from ``flush()``, ``close()`` and an add
that has to wait for the writer, the calls that can act on the error.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from .errors import WriterError


class BackgroundWriter:
    """Runs write jobs on a background thread, in order."""

    def __init__(self, name: str = "replay-buffer-writer") -> None:
        self._name = name
        self._jobs: deque[tuple[str, Callable[[], None]]] = deque()
        self._cond = threading.Condition()
        self._errors: list[tuple[str, BaseException]] = []
        self._running = 0  # jobs taken but not finished
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._submitted = 0  # jobs ever queued; jobs run in order, so
        self._finished = 0  # "job k is done" is "finished > k"

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        with self._cond:
            return len(self._jobs) + self._running

    def submit(self, description: str, job: Callable[[], None]) -> None:
        """Queue ``job``; ``description`` names it in error messages."""
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._jobs.append((description, job))
            self._submitted += 1
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stopping:
                    self._cond.wait()
                if not self._jobs:
                    # leave under the lock: a job queued from now on starts a new thread
                    if self._thread is threading.current_thread():
                        self._thread = None
                    return
                description, job = self._jobs.popleft()
                self._running += 1
            try:
                job()
            except BaseException as exc:  # noqa: BLE001 - recorded and re-raised to the caller
                with self._cond:
                    self._errors.append((description, exc))
            finally:
                with self._cond:
                    self._running -= 1
                    self._finished += 1
                    self._cond.notify_all()

    def report(self, description: str, exc: BaseException) -> None:
        """Record a failure a job met and carried on after (raised by the next :meth:`check`);
        ``description`` names what failed, e.g. ``"trajectory 7"``."""
        with self._cond:
            self._errors.append((description, exc))

    @property
    def failed(self) -> bool:
        """Whether a failure was recorded that no :meth:`check` has raised yet."""
        with self._cond:
            return bool(self._errors)

    def check(self, advice: str | None = None) -> None:
        """Raise the first recorded failure as :class:`WriterError` and forget every recorded
        failure (each is raised once). ``advice`` replaces the default last sentences of the
        message (what happened to the data, what to do)."""
        with self._cond:
            if not self._errors:
                return
            errors, self._errors = self._errors, []
        description, exc = errors[0]
        more = f" (and {len(errors) - 1} more failed writes)" if len(errors) > 1 else ""
        raise WriterError(
            f"background write failed: {description}: {type(exc).__name__}: {exc}{more}. "
            + (
                advice
                or "The trajectories stay in memory and are written again by the next flush() or "
                "close(); fix the cause (disk space, permissions) and call flush() or "
                "save_checkpoint() again"
            )
        ) from exc

    def wait(self) -> None:
        """Block until every job queued before this call has run (errors are kept for
        :meth:`check`). Jobs queued meanwhile are not waited for, so a producer that keeps
        adding cannot hold a waiter forever."""
        with self._cond:
            target = self._submitted
            while self._finished < target:
                self._cond.wait()

    def flush(self) -> None:
        """Wait for every queued job, then raise the first error if any."""
        self.wait()
        self.check()

    def close(self) -> None:
        """Finish queued jobs and stop the thread (a later :meth:`submit` starts a new one).
        Failures stay recorded for the next :meth:`check`."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
