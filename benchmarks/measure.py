"""Measuring tools: timed repeats, peak RSS, page-cache dropping and residency, file helpers."""

from __future__ import annotations

import ctypes
import os
import re
import resource
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Timing:
    """Wall times of the timed calls (seconds) and of the warm-up calls before them."""

    times: list[float] = field(default_factory=list)
    warmup: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        """Median of the timed calls."""
        return float(np.median(self.times))


def time_calls(
    fn: Callable[[], object],
    *,
    warmup: int,
    repeats: int,
    max_seconds: float,
    before: Callable[[], object] | None = None,
    after: Callable[[], object] | None = None,
    min_repeats: int = 3,
) -> Timing:
    """Call ``fn`` ``warmup`` times, then time it up to ``repeats`` times.

    ``before`` and ``after`` run around every call, untimed. Timing stops early once the timed
    calls took ``max_seconds`` in total and at least ``min_repeats`` were made.
    """
    out = Timing()
    for _ in range(warmup):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        out.warmup.append(time.perf_counter() - t0)
        if after is not None:
            after()
    spent = 0.0
    while len(out.times) < max(1, repeats):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        if after is not None:
            after()
        out.times.append(dt)
        spent += dt
        if len(out.times) >= min(min_repeats, repeats) and spent > max_seconds:
            break
    return out


def time_parts(
    parts: list[Callable[[], object]],
    *,
    warmup: int,
    repeats: int,
    max_seconds: float,
    before: Callable[[], object] | None = None,
    min_repeats: int = 3,
) -> tuple[Timing, list[list[float]]]:
    """Like :func:`time_calls` for a call made of consecutive ``parts`` (e.g. sample, then
    update): returns the timing of the whole and the timed durations of each part."""
    out, split = Timing(), [[] for _ in parts]
    spent = 0.0
    for k in range(warmup + max(1, repeats)):
        if before is not None:
            before()
        marks = [time.perf_counter()]
        for fn in parts:
            fn()
            marks.append(time.perf_counter())
        total = marks[-1] - marks[0]
        if k < warmup:
            out.warmup.append(total)
            continue
        out.times.append(total)
        for i in range(len(parts)):
            split[i].append(marks[i + 1] - marks[i])
        spent += total
        if len(out.times) >= min(min_repeats, repeats) and spent > max_seconds:
            break
    return out, split


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (10^6 bytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def _status_kb(field_name: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``None`` where there is none)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class AnonPeak:
    """Highest anonymous resident memory (``RssAnon``: the heap, tensors, the ring; not file
    pages mapped from the page cache, which the kernel can drop at any time) seen by a daemon
    thread reading ``/proc/self/status`` every ``interval`` seconds, in MB (10^6 bytes).

    The peak RSS counts both; the two apart show how much of a disk-backed buffer's resident
    memory is mapped file pages. A spike shorter than ``interval`` can be missed."""

    def __init__(self, interval: float = 0.01) -> None:
        import threading

        self.peak_kb = _status_kb("RssAnon") or 0
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, name="anon-peak", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_kb = max(self.peak_kb, _status_kb("RssAnon") or 0)

    def stop(self) -> float | None:
        """Stop sampling; the peak in MB (``None`` where ``RssAnon`` is not reported)."""
        self._stop.set()
        self._thread.join()
        now = _status_kb("RssAnon")
        if now is None:
            return None
        return max(self.peak_kb, now) * 1024 / 1e6


# -- files -----------------------------------------------------------------------------------


def files_under(path: str | None) -> list[str]:
    """Every regular file below ``path`` (recursively), sorted."""
    if not path or not os.path.isdir(path):
        return []
    out = []
    for root, _dirs, names in os.walk(path):
        out.extend(os.path.join(root, n) for n in names)
    return sorted(p for p in out if os.path.isfile(p) and not os.path.islink(p))


def total_bytes(paths: Iterable[str]) -> int:
    """Sum of the sizes of ``paths``."""
    return sum(os.path.getsize(p) for p in paths)


def read_whole(path: str) -> int:
    """Read a file sequentially into a fresh buffer; returns the bytes read."""
    size = os.path.getsize(path)
    buf = bytearray(size)
    view = memoryview(buf)
    done = 0
    with open(path, "rb", buffering=0) as f:
        while done < size:
            n = f.readinto(view[done:])
            if not n:
                break
            done += n
    return done


def touch_files(paths: Iterable[str]) -> None:
    """Read files once so that they are in the page cache (the warm case), 1 MiB at a time
    into one reused buffer: this adds nothing to the resident memory the contender's row
    reports (reading a file into a buffer of its size would add the file's size)."""
    buf = bytearray(1 << 20)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def fsync_files(paths: Iterable[str], directory: str | None = None) -> None:
    """fsync every file, then ``directory`` if given."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if directory:
        fsync_dir(directory)


def fsync_dir(directory: str) -> None:
    """fsync a directory (makes new names in it durable)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_TRAJECTORY_FILE = re.compile(r"^trajectory_\d+_.+\.(pt|pkl)$")


def link_copy(src: str, dst: str) -> None:
    """Copy a buffer directory cheaply: trajectory files (written once, never modified) are
    hard-linked, everything else (index, journal, metadata, unknown files) is copied."""
    os.makedirs(dst)
    for entry in os.scandir(src):
        target = os.path.join(dst, entry.name)
        if entry.is_dir(follow_symlinks=False):
            shutil.copytree(entry.path, target)
        elif _TRAJECTORY_FILE.match(entry.name):
            os.link(entry.path, target)
        else:
            shutil.copy2(entry.path, target)


# -- page cache ------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_MAP_FAILED = ctypes.c_void_p(-1).value
_MADV_PAGEOUT = 21  # Linux >= 5.4: reclaim these pages now (clean file pages are dropped)


def resident_pages(path: str) -> tuple[int, int]:
    """(pages of ``path`` in the page cache, pages of the file), via ``mincore``."""
    size = os.path.getsize(path)
    if size == 0:
        return 0, 0
    pages = (size + PAGE - 1) // PAGE
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        if addr is None or addr == _MAP_FAILED:
            return 0, pages
        try:
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(addr, size, vec) != 0:
                return 0, pages
            return int((np.frombuffer(vec, dtype=np.uint8) & 1).sum()), pages
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def resident_fraction(paths: Iterable[str]) -> float:
    """Fraction of the pages of ``paths`` that are in the page cache."""
    resident = total = 0
    for p in paths:
        r, t = resident_pages(p)
        resident += r
        total += t
    return resident / total if total else 0.0


def fadvise_dontneed(paths: Iterable[str]) -> None:
    """Ask the kernel to drop the files' pages (written back first, so they are clean)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def pageout_mappings(paths: Iterable[str]) -> int:
    """``madvise(MADV_PAGEOUT)`` on this process's mappings of ``paths`` (what memory pressure
    would do): the kernel never drops a page cache page that a process still maps, so without
    this an mmap-based store keeps every page it touched. Returns the bytes advised."""
    wanted = {os.path.realpath(p) for p in paths}
    advised = 0
    try:
        with open("/proc/self/maps") as f:
            lines = f.readlines()
    except OSError:
        return 0
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or parts[5].strip() not in wanted:
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        if _libc.madvise(start, end - start, _MADV_PAGEOUT) == 0:
            advised += end - start
    return advised


def drop_all_caches() -> bool:
    """Write 1 to /proc/sys/vm/drop_caches (needs root); returns whether it worked."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return True
    except OSError:
        return False


class ColdCache:
    """Makes a set of files cold before every timed call and records how cold they got.

    Pages this process maps from the files are paged out first (``madvise(MADV_PAGEOUT)``), then
    ``posix_fadvise(DONTNEED)`` drops every file; if more than ``threshold`` of the pages stay
    resident, ``/proc/sys/vm/drop_caches`` is tried as well and kept if it helped. The residency
    measured right after every drop is reported so a partial drop is visible.
    """

    def __init__(self, threshold: float = 0.1) -> None:
        self.threshold = threshold
        self.resident: list[float] = []
        self.machine_ok = True
        self.paged_out = False
        self.tried_drop_caches = False
        self.use_drop_caches = False

    @property
    def method(self) -> str:
        """The mechanisms used, e.g. ``madvise(PAGEOUT)+fadvise``."""
        parts = ["madvise(PAGEOUT)"] if self.paged_out else []
        parts.append("fadvise")
        if self.use_drop_caches:
            parts.append("drop_caches")
        return "+".join(parts)

    def drop(self, paths: list[str]) -> None:
        """Drop ``paths`` from the page cache and record the fraction still resident."""
        if pageout_mappings(paths):
            self.paged_out = True
        fadvise_dontneed(paths)
        if self.use_drop_caches:
            drop_all_caches()
        frac = resident_fraction(paths)
        if frac > self.threshold and not self.tried_drop_caches:
            self.tried_drop_caches = True
            if drop_all_caches():
                after = resident_fraction(paths)
                if after < frac:
                    self.use_drop_caches, frac = True, after
        self.resident.append(frac)

    def machine_supports(self, directory: str) -> bool:
        """Self-test on a scratch file in ``directory``: can its pages be dropped at all?"""
        path = os.path.join(directory, ".cold-probe")
        data = os.urandom(4 << 20)
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            read_whole(path)
            fadvise_dontneed([path])
            frac = resident_fraction([path])
            if frac > self.threshold and drop_all_caches():
                frac = resident_fraction([path])
        finally:
            os.remove(path)
        self.machine_ok = frac <= self.threshold
        return self.machine_ok

    @property
    def effective(self) -> bool:
        """Whether the drops left (on average) at most the threshold of pages resident."""
        return bool(self.resident) and float(np.mean(self.resident)) <= self.threshold

    def note(self) -> str:
        """How the files were made cold and how cold they got."""
        if not self.machine_ok:
            return "neither posix_fadvise(DONTNEED) nor /proc/sys/vm/drop_caches dropped a test file"
        if not self.resident:
            return ""
        mean = float(np.mean(self.resident))
        text = f"cold via {self.method}: {mean:.0%} of file pages resident after the drop"
        if not self.effective:
            text += " (the kernel keeps pages a process has mapped)"
        return text
