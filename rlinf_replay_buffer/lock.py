"""One writer per buffer directory: an exclusive lock the operating system drops with its holder.

Whatever writes into a buffer directory (an auto-saving buffer, ``save_checkpoint`` into it,
merge/split/import into it, merge/split moving out of it, ``verify --repair``) first takes
:class:`DirectoryLock` on it: an exclusive ``flock`` on the file ``.rlinf-buffer.lock`` in the
directory. The kernel releases the lock when the holder's descriptor closes, including when the
process dies, so a killed job never blocks its successor, and nothing has to be cleaned up.

The holder records who it is in the lock file (JSON: ``format_version``, ``pid``, ``host``,
``since``, ``purpose``, ``token``) so that a refused writer can say who holds the directory. The
``flock`` alone decides who may write; the ``token`` (new for every acquisition) lets a holder that
released the directory tell, when it takes it again, whether another writer had it in between.
Readers take no lock.

``flock`` locks are per open file description: two buffers of one process conflict like two
processes do, and a child made by ``fork`` shares its parent's lock (the descriptor is not passed
on ``exec``). On network file systems ``flock`` may be local to one machine (NFS before Linux
2.6.12, some FUSE and SMB mounts): there the lock does not stop a writer on another machine.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import stat
import uuid
from collections.abc import Iterator
from typing import Any

from .errors import BufferDirectoryError, DirectoryLockedError

#: the lock file every writer of a directory holds (it stays when released; it is not data)
LOCK_NAME = ".rlinf-buffer.lock"
LOCK_FORMAT_VERSION = 1
_MAX_RECORD = 4096  # bytes of the holder record read back for messages


class DirectoryLock:
    """An exclusive hold on a buffer directory; :meth:`release` (or process death) ends it."""

    def __init__(self, directory: str, fd: int, purpose: str, token: str) -> None:
        self.directory = directory
        self.purpose = purpose
        self.token = token
        self._fd: int | None = fd

    @classmethod
    def acquire(
        cls, directory: str, purpose: str, *, resume: str | None = None, name: str = LOCK_NAME
    ) -> DirectoryLock:
        """Take the lock of ``directory`` (which must exist) without waiting.

        Args:
            directory: the buffer directory.
            purpose: what the holder does, shown to refused writers (e.g. ``"auto-save"``).
            resume: the ``token`` of this holder's previous lock: refuse if another writer held
                the directory since (what this holder knows of it may be stale).
            name: the lock file's name in ``directory`` (a sharded buffer locks each rank with
                its own file in the root).

        Raises:
            DirectoryLockedError: another writer (process, or buffer of this process) holds it,
                or held it since ``resume``; the message names the holder.
            BufferDirectoryError: the lock file cannot be created or is not a regular file.
        """
        directory = os.path.abspath(directory)
        path = os.path.join(directory, name)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as exc:
            raise BufferDirectoryError(
                f"{path}: cannot open the lock file of the buffer directory ({exc.strerror or exc}); "
                "check that the directory is writable and that this is a regular file"
            ) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise BufferDirectoryError(f"{path}: the lock file is not a regular file; remove it")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise BufferDirectoryError(f"{path}: cannot lock the buffer directory: {exc}") from None
                raise DirectoryLockedError(locked_message(directory, purpose, name)) from None
            last = holder(directory, name) or {}
            if resume is not None and last.get("token") != resume:
                raise DirectoryLockedError(
                    f"{directory}: another writer used this buffer directory after this buffer "
                    f"released it{_who(last)}, so what this buffer knows of it "
                    "may be stale; construct a new buffer on it (or load_checkpoint it) to continue"
                )
            token = uuid.uuid4().hex
            record = {
                "format_version": LOCK_FORMAT_VERSION,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "purpose": purpose,
                "token": token,
            }
            with contextlib.suppress(OSError):  # the record is informational; the flock decides
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(directory, fd, purpose, token)

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock (idempotent). The lock file stays."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor of the description releases the flock

    def __enter__(self) -> DirectoryLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()


def holder(directory: str, name: str = LOCK_NAME) -> dict[str, Any] | None:
    """The record the last holder of ``directory``'s lock wrote (it may have released it
    since), or ``None``. Reads at most a few KiB of a regular file; never blocks."""
    path = os.path.join(directory, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.pread(fd, _MAX_RECORD, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        record = json.loads(data.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def locked_message(directory: str, purpose: str, name: str = LOCK_NAME) -> str:
    """Why ``purpose`` cannot write ``directory``, naming the holder if it said who it is."""
    return (
        f"{directory}: another writer holds this buffer directory{_who(holder(directory, name) or {})}, "
        f"so {purpose} cannot write it; wait for that job to finish or close() its buffer, or "
        "use another directory. Reading needs no lock (load_checkpoint, rlinf-buffer "
        "info/verify/sample/export)"
    )


def _who(record: dict[str, Any]) -> str:
    """`` (pid 12 on host since ... for ...)`` from a holder record, or ``""``."""
    who = []
    if isinstance(record.get("pid"), int):
        mine = record["pid"] == os.getpid() and record.get("host") == socket.gethostname()
        who.append(f"pid {record['pid']}" + (" (this process)" if mine else ""))
    if isinstance(record.get("host"), str):
        who.append(f"on {record['host'][:200]}")
    if isinstance(record.get("since"), str):
        who.append(f"since {record['since'][:40]}")
    if isinstance(record.get("purpose"), str):
        who.append(f"for {record['purpose'][:100]}")
    return f" ({' '.join(who)})" if who else ""


def is_empty_directory(path: str) -> bool:
    """Whether ``path`` is a directory holding nothing but, perhaps, a released lock file."""
    return os.path.isdir(path) and not [n for n in os.listdir(path) if n != LOCK_NAME]


class Destination:
    """A directory about to be written or replaced as a whole (see :func:`destination_lock`)."""

    def __init__(self, directory: str, purpose: str) -> None:
        self.directory = directory
        self.purpose = purpose
        self.lock: DirectoryLock | None = None
        self.claim()

    def claim(self) -> None:
        """Lock the directory if it exists and is not locked by this object yet (call it right
        before the directory is replaced).

        Raises:
            DirectoryLockedError: a writer holds it.
        """
        if self.lock is None and os.path.isdir(self.directory) and not os.path.islink(self.directory):
            self.lock = DirectoryLock.acquire(self.directory, self.purpose)

    def release(self) -> None:
        """Drop the lock, if one was taken."""
        if self.lock is not None:
            self.lock.release()


@contextlib.contextmanager
def destination_lock(directory: str, purpose: str) -> Iterator[Destination]:
    """Hold the destination ``directory`` of a whole-directory write against other writers.

    An existing directory is locked at once, so no writer can be in it while it is replaced; a
    missing one is not created (an interrupted operation leaves the path absent): call
    :meth:`Destination.claim` right before publishing, to lock one a writer created meanwhile.

    Raises:
        DirectoryLockedError: a writer holds the directory.
    """
    target = Destination(os.path.abspath(directory), purpose)
    try:
        yield target
    finally:
        target.release()
