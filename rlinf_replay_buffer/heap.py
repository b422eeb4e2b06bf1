"""Handing memory freed by large row tensors back to the system.

Trajectory rows held for the background writer are tensors of megabytes each. When they are
freed, glibc's allocator keeps much of that memory in its heap for later allocations (tensors
below its adaptive ``mmap`` threshold, up to 32 MiB, come from the heap), so a buffer that
streams image trajectories to disk would hold hundreds of megabytes it no longer uses.
:class:`FreedBytes` counts the bytes the row store lets go and, once :data:`TRIM_AFTER_BYTES`
have been let go, asks glibc to return free heap pages to the system (``malloc_trim(0)``,
which releases the free pages of every arena; on other C libraries nothing is done).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable

TRIM_AFTER_BYTES = 64 << 20
"""Bytes let go between two trims (a trim costs well under a millisecond for a heap of a few
hundred megabytes; the pages it releases fault back in when reused)."""


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def trim_heap() -> bool:
    """Return the allocator's free heap pages to the system; whether it could be asked."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


class FreedBytes:
    """Counts bytes of tensors let go; trims the heap each time ``threshold`` more were."""

    def __init__(self, threshold: int | None = None) -> None:
        self.threshold = TRIM_AFTER_BYTES if threshold is None else threshold
        self._freed = 0
        self.trims = 0

    def add(self, nbytes: int) -> None:
        """Count ``nbytes`` let go (their memory is freed once nothing else holds them)."""
        self._freed += nbytes
        if self._freed >= self.threshold:
            self._freed = 0
            self.trims += trim_heap()
