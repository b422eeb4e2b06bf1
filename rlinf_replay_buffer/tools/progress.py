"""Progress reporting for long operations: a bar on a terminal, silence elsewhere.

Library functions take ``progress(done, total)`` callbacks; command lines build one with
:func:`progress_bar`, which draws a ``tqdm`` bar on stderr when stderr is a terminal (and
``quiet`` is false), and otherwise reports nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

Progress = Callable[[int, int], None]
"""``progress(done, total)``: ``done`` of ``total`` units are finished."""


class _Bar:
    """A ``progress(done, total)`` callback drawing on ``stream`` (tqdm if installed)."""

    def __init__(self, description: str, stream: IO[str]) -> None:
        self.description = description
        self.stream = stream
        self._bar: Any = None
        self._plain_last = -1

    def __call__(self, done: int, total: int) -> None:
        try:
            from tqdm import tqdm
        except ImportError:  # a plain line, redrawn at most every percent
            pct = 100 * done // max(total, 1)
            if pct != self._plain_last or done == total:
                self._plain_last = pct
                end = "\n" if done >= total else ""
                self.stream.write(f"\r{self.description}: {done}/{total} ({pct}%){end}")
                self.stream.flush()
            return
        if self._bar is None:
            self._bar = tqdm(total=total, desc=self.description, file=self.stream, unit="traj", leave=True)
        if self._bar.total != total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@contextmanager
def progress_bar(
    description: str, quiet: bool = False, stream: IO[str] | None = None
) -> Iterator[Progress | None]:
    """A progress callback for ``description``, or ``None`` when nothing should be drawn
    (``quiet``, or ``stream`` (default stderr) is not a terminal)."""
    stream = stream or sys.stderr
    if quiet or not (hasattr(stream, "isatty") and stream.isatty()):
        yield None
        return
    bar = _Bar(description, stream)
    try:
        yield bar
    finally:
        bar.close()
