"""Sampling copies: the rows of file-backed trajectories, kept where sampling reads them fast.

A ``pt`` or ``pkl`` trajectory file holds one trajectory. Sampling from a window of many such
files that are not cached in memory costs one file opening per trajectory touched (a
``torch.load`` of the file's mapping, about a millisecond), which makes a sample of 256 rows from
100 uncached state trajectories ~1000 times slower than from memory. The ``segment`` format
avoids it: rows of many trajectories share a few memory-mapped column files, and a sample is one
``index_select`` per segment and column.

:class:`SamplingCopy` gives the file formats the same speed without changing their files: the
first time the row store reads a trajectory from its file, it appends the trajectory's aligned
rows to a private, scratch segment store (:class:`~.formats.segment.SegmentStore`, in a
temporary directory of its own) and the index locates the trajectory's rows there
(:meth:`~.index.TrajectoryIndex.set_copy`). The interchange files stay exactly as they are (RLinf
reads them); the copy is derived data: never fsync'd, never read by anything but this process,
removed when the buffer closes (a copy whose process died is removed by the next copy made in
the same directory on the same host). It holds the trajectories that were sampled; a segment is deleted
once none of its trajectories is in the buffer, or once all of them are older than the sampling
window.

If the copy cannot be written (a full disk), it is given up for the buffer's lifetime with one
warning and sampling goes on from the files: a copy never fails a sample.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import warnings
import weakref
from collections.abc import Iterable

import torch

from .errors import ReplayBufferWarning
from .formats.segment import SegmentStore
from .fsio import atomic_write_json
from .schema import Schema
from .trajectory import Key

logger = logging.getLogger("rlinf_replay_buffer")

#: rows of a copy segment before the next one starts (a segment is reclaimed whole)
COPY_SEGMENT_BYTES = 512 << 20
PREFIX = "rlinf-sampling-copy-"
OWNER = "owner.json"  # {"pid": ..., "host": ...} of the process the copy belongs to


def remove_orphans(parent: str | None) -> list[str]:
    """Delete the copies in ``parent`` (``None``: the system's temporary directory) whose
    process died without removing them (killed, or the machine crashed): their owner file names
    a process of this host that no longer exists. Returns the deleted directories."""
    parent = parent or tempfile.gettempdir()
    host, removed = socket.gethostname(), []
    try:
        names = [n for n in os.listdir(parent) if n.startswith(PREFIX)]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(parent, name)
        try:
            with open(os.path.join(path, OWNER), "rb") as f:
                owner = json.loads(f.read(4096))
            pid = owner["pid"]
            if owner["host"] != host or not isinstance(pid, int) or pid <= 0:
                continue
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not ours to judge (no owner file yet, another user's, unreadable)
    return removed


class SamplingCopy:
    """A scratch segment store holding copies of trajectories' aligned rows.

    Args:
        schema: the buffer's columns.
        parent: where the copy's temporary directory is made (``None``: the system's temporary
            directory, ``tempfile.gettempdir()``).
        segment_bytes: bytes of rows per segment (``None``: :data:`COPY_SEGMENT_BYTES`).
    """

    def __init__(self, schema: Schema, parent: str | None = None, segment_bytes: int | None = None) -> None:
        remove_orphans(parent)
        self.directory = tempfile.mkdtemp(prefix=PREFIX, dir=parent)
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.directory, True)
        atomic_write_json(
            os.path.join(self.directory, OWNER), {"pid": os.getpid(), "host": socket.gethostname()}
        )
        # observations stored once whatever the buffer's setting: the copy is private scratch data
        self.store = SegmentStore(self.directory, schema, segment_bytes or COPY_SEGMENT_BYTES, dedup=True)
        self._members: dict[str, set[int]] = {}  # segment -> ids copied there and still held
        self._segment_of: dict[int, str] = {}
        self._newest: dict[str, int] = {}  # segment -> newest id ever copied there
        self.nbytes = 0
        self._row_bytes = schema.row_bytes
        self._rows: dict[str, int] = {}  # segment -> rows appended

    def add(
        self, trajectory_id: int, rows: dict[Key, torch.Tensor], envs: int = 0
    ) -> tuple[tuple[str, str], int]:
        """Append a trajectory's aligned rows (``[T * B, ...]`` per column, ``envs`` = ``B``; 0:
        unknown, every ``next_obs`` row stored); return its ``((directory, segment), first row)``.

        Raises:
            OSError: the rows could not be written (nothing is recorded).
        """
        name, row = self.store.append(rows, sync=False, envs=envs)
        n = int(next(iter(rows.values())).shape[0])
        self._members.setdefault(name, set()).add(trajectory_id)
        self._segment_of[trajectory_id] = name
        self._newest[name] = max(self._newest.get(name, -1), trajectory_id)
        self._rows[name] = self._rows.get(name, 0) + n
        self.nbytes += n * self._row_bytes
        return (self.directory, name), row

    def holds(self, trajectory_id: int) -> bool:
        """Whether ``trajectory_id`` has rows here."""
        return trajectory_id in self._segment_of

    def drop(self, trajectory_ids: Iterable[int]) -> list[str]:
        """Forget trajectories that left the buffer; delete the segments left with none of
        them (but the one being appended to). Returns the deleted segments."""
        emptied = []
        for tid in trajectory_ids:
            name = self._segment_of.pop(tid, None)
            if name is not None:
                members = self._members[name]
                members.discard(tid)
                if not members:
                    emptied.append(name)
        return self._delete([n for n in emptied if n != self.store.active_name])

    def older_than(self, trajectory_id: int) -> list[str]:
        """Sealed segments whose every trajectory has an id below ``trajectory_id`` (ids grow
        with age: all of them left the window that starts at ``trajectory_id``)."""
        return [
            name
            for name, newest in self._newest.items()
            if newest < trajectory_id and name != self.store.active_name
        ]

    def members(self, name: str) -> set[int]:
        """Ids whose rows are in segment ``name``."""
        return set(self._members.get(name, ()))

    def delete(self, names: list[str]) -> list[int]:
        """Delete segments; return the ids that had rows there."""
        gone = [tid for name in names for tid in self._members.get(name, ())]
        for tid in gone:
            self._segment_of.pop(tid, None)
        self._delete(names)
        return gone

    def _delete(self, names: list[str]) -> list[str]:
        for name in names:
            self.store.forget(name)
            shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
            self._members.pop(name, None)
            self._newest.pop(name, None)
            self.nbytes -= self._rows.pop(name, 0) * self._row_bytes
        return names

    def close(self) -> None:
        """Delete the copy (its directory and everything in it)."""
        try:
            self.store.close()
        except OSError:
            pass  # scratch rows: nothing to keep
        self.store.forget_maps()
        self._cleanup()


def give_up(exc: OSError, directory: str) -> None:
    """Log and warn once that sampling copies stop (sampling goes on from the files)."""
    message = (
        f"sampling copies in {directory} stopped ({exc.strerror or exc}); sampling file-backed "
        "trajectories goes on from their files, slower"
    )
    logger.warning(message)
    warnings.warn(message, ReplayBufferWarning, stacklevel=4)
