"""Committing ring pages ahead of the writes, off the caller's thread.

The ring (:mod:`.cache`) is reserved address space: a page is committed (allocated and zeroed
by the kernel) the first time a row is written into it. Until the ring has wrapped once, every
``add_trajectories`` therefore pays a page fault per 4 KiB it copies, which costs several times
the copy itself. A :class:`Prefaulter` asks the kernel, from a background thread, to commit the
pages just ahead of the ring's head (``madvise(MADV_POPULATE_WRITE)``, Linux 5.14 and later,
called through ``ctypes``, which releases the GIL), so the copy of the next add finds them
ready. Committing a page leaves its content alone, so it is safe while rows are written there.
Where the call is not available (other systems, older kernels) nothing is done.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable, Sequence

import torch

from .libc import libc_function

logger = logging.getLogger("rlinf_replay_buffer")

MADV_POPULATE_WRITE = 23
AHEAD_BYTES = 64 << 20
"""Bytes of every ring committed ahead of its head (at most; less when the ring is smaller)."""
MIN_AHEAD_BYTES = 4 << 20
"""Bytes committed ahead at least (small trajectories ask the thread once per 2 MiB or so)."""
_PAGE = mmap.PAGESIZE


def _madvise() -> Callable[[int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    return libc_function("madvise", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int)


_MADVISE = _madvise()


def populate(address: int, length: int) -> bool:
    """Commit the pages of ``[address, address + length)`` for writing (page-aligned outward);
    ``False`` if the system cannot (the range is left as it was)."""
    if _MADVISE is None or length <= 0:
        return False
    start = address - address % _PAGE
    end = -(-(address + length) // _PAGE) * _PAGE
    return _MADVISE(start, end - start, MADV_POPULATE_WRITE) == 0


Span = tuple[torch.Tensor, int, int]
"""``(tensor, first byte, bytes)``: a byte range of a ring column's tensor. A queued range holds
only a weak reference to the tensor: a ring dropped meanwhile (a cleared or closed buffer) is
skipped, and a live one stays mapped while its range is committed."""


class Prefaulter:
    """A daemon thread committing queued ring byte ranges; one per process, started lazily."""

    def __init__(self) -> None:
        self._queue: deque[list[tuple[weakref.ref[torch.Tensor], int, int]]] = deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self.available = _MADVISE is not None
        self.populated = 0  # bytes committed (for tests and statistics)
        self._busy = False

    def submit(self, spans: Sequence[Span]) -> None:
        """Commit these ranges soon (returns at once)."""
        if not self.available or not spans:
            return
        with self._wake:
            self._queue.append([(weakref.ref(tensor), first, length) for tensor, first, length in spans])
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rlinf-ring-prefault", daemon=True)
                self._thread.start()
            self._wake.notify()

    def drain(self) -> None:
        """Wait until every range queued so far is committed (tests)."""
        with self._wake:
            while self._queue or self._busy:
                self._wake.wait(0.05)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue:
                    self._busy = False
                    self._wake.notify_all()
                    self._wake.wait()
                spans = self._queue.popleft()
                self._busy = True
            for ref, first, length in spans:
                tensor = ref()
                if tensor is None:  # the ring is gone: nothing to commit
                    continue
                ok = populate(tensor.data_ptr() + first, length)
                del tensor
                if not ok:
                    self.available = False  # not supported here: stop asking
                    logger.debug("ring pages cannot be committed ahead (madvise POPULATE_WRITE)")
                    break
                self.populated += length
            del spans


PREFAULTER = Prefaulter()
"""The process's prefaulter (one thread serves every buffer)."""
