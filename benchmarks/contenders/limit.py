"""``limit``: what the hardware allows for the same work, the denominator of every ratio.

* sample (memory): one contiguous tensor per field holding every window transition;
  ``torch.index_select(t, 0, idx)`` per field (allocating the result), ``idx`` drawn untimed.
  Sequences: the same with ``idx`` the ``N * L`` rows of ``N`` runs (random trajectory, env
  and start, drawn untimed), the result viewed as ``[N, L, ...]``. Adds past the capacity
  overwrite the oldest trajectory (a ring), for the add/sample loop.
* sample (disk): one sequential read of as many bytes as the batch holds, from a file of that
  size (in the page cache when warm, dropped when cold), into freshly allocated tensors of the
  batch's fields (one ``preadv`` per field).
  ``pread_rows`` is a second reference in the disk tables, not the ratio's denominator: every
  window transition stored as one row of bytes in one file, and one ``os.preadv`` per sampled
  row. Cold, it shows what one random read per row costs on this disk (stores that read larger
  blocks, or benefit from readahead, can beat it).
* add latency: one ``copy_`` per field into tensors preallocated for one trajectory (the same
  destination every time: warm pages, often in the CPU's caches). ``limit[ring]`` is a second
  reference, not the ratio's denominator: the same copies into the next rows of a ring of
  never-written rows (one trajectory after the other, as an in-memory buffer's adds before its
  ring wraps), so each add also pays the kernel's first touch of its pages.
* write throughput: the trajectories' raw bytes written sequentially to one file, then ``fsync``.
* add+flush (tiny): the trajectory's bytes written to a new file in the same directory, ``fsync``
  of the file and of the directory.
* load: sequential reads of the directory's metadata and index files and of the newest
  ``cache_size`` trajectory files. Open: list the directory and read its metadata and index.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
import torch

from ..measure import fsync_dir, read_whole
from ..scenarios import Key, make_trajectory, trajectory_columns
from . import Store, StoreConfig, Unsupported

_TRAJ_ID = re.compile(r"^trajectory_(\d+)_.+\.(pt|pkl)$")


def _raw_bytes(t: torch.Tensor) -> memoryview:
    """The bytes of a tensor (contiguous copy if needed), without another copy."""
    return memoryview(t.contiguous().view(-1).view(torch.uint8).numpy())


def _write_all(fd: int, data: memoryview) -> None:
    while len(data):
        n = os.write(fd, data)
        data = data[n:]


class ContiguousStore(Store):
    """All window transitions in one tensor per field; sampling is one index_select per field."""

    def __init__(self, cfg: StoreConfig) -> None:
        self.spec = cfg.spec
        rows = cfg.capacity * cfg.spec.transitions
        self.data = {
            k: torch.empty((rows, *shape), dtype=dtype) for k, (shape, dtype) in cfg.spec.columns().items()
        }
        self.capacity_rows = rows
        self.rows = 0
        self.written = 0
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.idx = torch.zeros(0, dtype=torch.int64)

    def add(self, traj: Any) -> None:
        cols = trajectory_columns(traj, self.spec)
        n = self.spec.transitions
        start = self.written % self.capacity_rows  # capacity is whole trajectories: no split
        for k, v in cols.items():
            self.data[k][start : start + n].copy_(v)
        self.written += n
        self.rows = min(self.written, self.capacity_rows)

    def prepare_sequences(self, num: int, length: int) -> None:
        T, B = self.spec.steps, self.spec.envs
        traj = torch.randint(self.rows // (T * B), (num,), generator=self.gen)
        env = torch.randint(B, (num,), generator=self.gen)
        t0 = torch.randint(T - length + 1, (num,), generator=self.gen)
        first = traj * (T * B) + t0 * B + env
        self.idx = (first[:, None] + B * torch.arange(length)[None, :]).reshape(-1)

    def sample_sequences(self, num: int, length: int) -> dict[Key, torch.Tensor]:
        idx = self.idx
        return {
            k: torch.index_select(t, 0, idx).view(num, length, *t.shape[1:]) for k, t in self.data.items()
        }

    def prepare(self, n: int) -> None:
        self.idx = torch.randint(self.rows, (n,), generator=self.gen)

    def sample(self, n: int) -> dict[Key, torch.Tensor]:
        idx = self.idx
        return {k: torch.index_select(t, 0, idx) for k, t in self.data.items()}


class RawReadStore(Store):
    """Sequential read of a file holding exactly the batch's bytes, into freshly allocated
    tensors of the batch's fields and shapes (one ``preadv`` per field, consecutive offsets)."""

    def __init__(self, cfg: StoreConfig) -> None:
        assert cfg.path is not None
        self.dir = cfg.path
        self.columns = cfg.spec.columns()
        self.bpt = cfg.spec.bytes_per_transition
        self.path = ""
        self.fd = -1

    def add(self, traj: Any) -> None:
        """Nothing to store: the limit reads a file of the batch's size."""

    def prepare(self, n: int) -> None:
        path = os.path.join(self.dir, f"batch-{n}.bin")
        if not os.path.exists(path):
            rng = np.random.default_rng(n)
            data = rng.integers(0, 256, n * self.bpt, dtype=np.uint8)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _write_all(fd, memoryview(data))
                os.fsync(fd)
            finally:
                os.close(fd)
        if path != self.path:
            self.close()
            self.path, self.fd = path, os.open(path, os.O_RDONLY)

    def sample(self, n: int) -> dict[Key, torch.Tensor]:
        out = {k: torch.empty((n, *shape), dtype=dtype) for k, (shape, dtype) in self.columns.items()}
        offset = 0
        for t in out.values():
            view = memoryview(t.view(-1).view(torch.uint8).numpy())
            done = 0
            while done < len(view):
                got = os.preadv(self.fd, [view[done:]], offset + done)
                if not got:
                    raise EOFError(self.path)
                done += got
            offset += done
        return out

    def files(self) -> list[str]:
        return [self.path] if self.path else []

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class RowFileStore(Store):
    """All window transitions as rows of bytes in one file; one ``preadv`` per sampled row."""

    checkable = False

    def __init__(self, cfg: StoreConfig) -> None:
        assert cfg.path is not None
        self.spec = cfg.spec
        self.bpt = cfg.spec.bytes_per_transition
        self.path = os.path.join(cfg.path, "rows.bin")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.rows = 0
        self.rng = np.random.default_rng(cfg.seed)
        self.offsets: list[int] = []

    def add(self, traj: Any) -> None:
        cols = trajectory_columns(traj, self.spec)
        n = self.spec.transitions
        rows = torch.cat([v.contiguous().view(torch.uint8).reshape(n, -1) for v in cols.values()], dim=1)
        _write_all(self.fd, memoryview(rows.numpy()).cast("B"))
        self.rows += n

    def flush(self) -> None:
        os.fsync(self.fd)

    def prepare(self, n: int) -> None:
        self.offsets = (self.rng.integers(0, self.rows, n) * self.bpt).tolist()

    def sample(self, n: int) -> torch.Tensor:
        out = torch.empty((n, self.bpt), dtype=torch.uint8)
        rows = out.numpy()
        fd = self.fd
        for i, off in enumerate(self.offsets):
            os.preadv(fd, [rows[i]], off)
        return out

    def files(self) -> list[str]:
        return [self.path]

    def close(self) -> None:
        os.close(self.fd)


class MemcpyStore(Store):
    """One ``copy_`` per field into tensors preallocated for one trajectory."""

    def __init__(self, cfg: StoreConfig) -> None:
        self.spec = cfg.spec
        n = cfg.spec.transitions
        self.dst = {
            k: torch.empty((n, *shape), dtype=dtype) for k, (shape, dtype) in cfg.spec.columns().items()
        }

    def add(self, traj: Any) -> None:
        for k, v in trajectory_columns(traj, self.spec).items():
            self.dst[k].copy_(v)


class RawWriteStore(Store):
    """Raw bytes of every trajectory appended to one file; ``flush`` fsyncs it."""

    def __init__(self, cfg: StoreConfig) -> None:
        assert cfg.path is not None
        self.spec = cfg.spec
        self.path = os.path.join(cfg.path, "limit.bin")
        self.fd = -1

    def add(self, traj: Any) -> None:
        if self.fd < 0:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for v in trajectory_columns(traj, self.spec).values():
            _write_all(self.fd, _raw_bytes(v))

    def flush(self) -> None:
        if self.fd >= 0:
            os.fsync(self.fd)

    def files(self) -> list[str]:
        return [self.path] if os.path.exists(self.path) else []

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class TinyFileStore(Store):
    """Each add: a new file with the trajectory's bytes, fsync of the file and the directory."""

    def __init__(self, cfg: StoreConfig) -> None:
        assert cfg.path is not None
        self.dir = cfg.path
        self.spec = cfg.spec
        self.count = 0

    def add(self, traj: Any) -> None:
        path = os.path.join(self.dir, f"limit-{self.count}.bin")
        self.count += 1
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for v in trajectory_columns(traj, self.spec).values():
                _write_all(fd, _raw_bytes(v))
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(self.dir)

    def indexed(self) -> int | None:
        return len(os.listdir(self.dir))


class DirectoryStore(Store):
    """Load: read metadata, index and the newest ``cache_size`` trajectory files. Open: list the
    directory and read its metadata and index. Sampling afterwards: a :class:`ContiguousStore`
    over the window, filled untimed on the first ``prepare``."""

    def __init__(self, cfg: StoreConfig) -> None:
        self.cfg = cfg
        self.path = cfg.path or ""
        self.index_files: list[str] = []
        self.newest: list[str] = []
        self.count = 0
        self.window: ContiguousStore | None = None
        if self.path:
            self._survey(self.path)

    def _survey(self, path: str) -> None:
        ids: list[tuple[int, str]] = []
        self.index_files = []
        for name in os.listdir(path):
            m = _TRAJ_ID.match(name)
            full = os.path.join(path, name)
            if m:
                ids.append((int(m.group(1)), full))
            elif os.path.isfile(full):
                self.index_files.append(full)
        ids.sort()
        self.count = len(ids)
        self.newest = [p for _, p in ids[-self.cfg.cache_size :]] if self.cfg.cache_size else []

    def load(self, path: str) -> None:
        for p in self.index_files + self.newest:
            read_whole(p)

    def prepare(self, n: int) -> None:
        if self.window is None:
            if not self.count:
                self._survey(self.path)
            w = min(self.cfg.window, self.count) if self.cfg.window else self.count
            self.window = ContiguousStore(
                StoreConfig(self.cfg.spec, capacity=w, window=w, cache_size=0, seed=self.cfg.seed)
            )
            for i in range(self.count - w, self.count):
                self.window.add(make_trajectory(self.cfg.spec, i, self.cfg.seed))
        self.window.prepare(n)

    def sample(self, n: int) -> dict[Key, torch.Tensor]:
        assert self.window is not None
        return self.window.sample(n)

    def indexed(self) -> int | None:
        if not self.count and self.path:
            self._survey(self.path)
        return self.count


def create(variant: str, mode: str, cfg: StoreConfig) -> Store:
    """The limit store for ``mode``."""
    if mode in ("sample", "sequences", "prioritized", "rate_limited"):
        return ContiguousStore(cfg)
    if mode == "disk":
        return RowFileStore(cfg) if variant == "pread_rows" else RawReadStore(cfg)
    if mode == "latency":
        return ContiguousStore(cfg) if variant == "ring" else MemcpyStore(cfg)
    if mode == "write":
        return RawWriteStore(cfg)
    if mode == "tiny":
        return TinyFileStore(cfg)
    raise Unsupported(f"no limit for mode {mode!r}")


def fresh(variant: str, cfg: StoreConfig) -> Store:
    """The load limit for the directory ``cfg.path`` (surveyed untimed, here)."""
    return DirectoryStore(cfg)


def open_existing(variant: str, path: str, cfg: StoreConfig) -> Store:
    """The open limit: list ``path`` and read every file that is not a trajectory file."""
    for name in os.listdir(path):
        if not name.endswith((".pt", ".pkl")):
            full = os.path.join(path, name)
            if os.path.isfile(full):
                read_whole(full)
    store = DirectoryStore(StoreConfig(cfg.spec, cfg.capacity, cfg.window, cfg.cache_size, None, cfg.seed))
    store.path = path
    return store
