"""Opening the files of a buffer directory for reading, whatever was put in their place.

A buffer directory may come from anyone, or from a damaged disk, so a reader never trusts what a
name points at. Every reader of a buffer directory opens its files through :func:`open_regular`
(or :func:`read_limited` / :func:`load_json`, built on it):

* the name is ``lstat``-ed first; anything but a regular file (a FIFO, a device, a socket, a
  directory) is refused with :class:`~.errors.UnsafeFileError` *before* it is opened: opening a
  FIFO for reading waits for a writer that may never come, and a device reads data from outside
  the directory;
* a symbolic link is refused (``links=False``), or followed only to a regular file in the same
  directory (``links=True``, what :func:`~.naming.safe_file` allows for trajectory files);
* the file is opened with ``O_NONBLOCK`` (and ``O_NOFOLLOW``), and the descriptor is ``fstat``-ed
  again, so a name swapped between the check and the opening is caught too;
* its size is checked against a limit before a byte of it is read: a larger file is
  :class:`~.errors.CorruptBufferError`, naming the file.

The limits (module constants, read at every call):

* :data:`JSON_BYTES`, 64 MiB: ``metadata.json`` and ``segment.json`` (counters and a field list,
  about 100 bytes per column);
* :data:`INDEX_BYTES`, 2 GiB: ``trajectory_index.json`` and ``trajectory_index.journal`` (an
  entry takes about 500 bytes: some 4 million trajectories);
* trajectory files: :func:`trajectory_file_limit` of the trajectory's transitions and the
  buffer's bytes per transition, where both are known (the index and ``metadata.json`` give them).

JSON text goes through :func:`parse_json`: text nested too deeply or holding integers too long
to convert is a :class:`~.errors.CorruptBufferError` naming the file, like any invalid JSON.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from typing import Any, BinaryIO

from .errors import BufferDirectoryError, CorruptBufferError, UnsafeFileError, unreadable

#: largest ``metadata.json`` or ``segment.json`` read (bytes)
JSON_BYTES = 64 << 20
#: largest ``trajectory_index.json`` or ``trajectory_index.journal`` read (bytes)
INDEX_BYTES = 2 << 30
#: bytes a trajectory file may hold beyond its tensors' (containers, names, pickle opcodes)
FILE_SLACK = 16 << 20
#: how many times its transitions' bytes a trajectory file may hold: RLinf's layout adds up to
#: one row per step to some fields, and its storages may be larger than the tensors using them
FILE_FACTOR = 4

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISLNK, "a symbolic link"),
)


def kind_of(mode: int) -> str:
    """What a file of mode ``mode`` (``st_mode``) is, in words: ``"a FIFO (named pipe)"``, ..."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def refuse_special(path: str, mode: int, what: str = "file") -> None:
    """Raise :class:`UnsafeFileError` unless ``mode`` (``st_mode`` of ``path``) is a regular file."""
    if not stat.S_ISREG(mode):
        raise UnsafeFileError(
            f"{path}: is {kind_of(mode)}, not a regular file; a {what} must be one, so it was not "
            "read. Replace it with the real file or remove it"
        )


def check_size(path: str, size: int, limit: int | None, what: str = "file") -> None:
    """Raise :class:`CorruptBufferError` if ``size`` (bytes of ``path``) exceeds ``limit``."""
    if limit is not None and size > limit:
        raise CorruptBufferError(
            f"{path}: is {size} bytes, more than the {limit} bytes a {what} can hold here; it is "
            "damaged or not what its name says. Restore it from a copy, or check the directory "
            f"with `rlinf-buffer verify {os.path.dirname(path)}`"
        )


def open_regular(path: str, limit: int | None = None, *, what: str = "file", links: bool = False) -> BinaryIO:
    """Open ``path`` for reading (binary, positioned at 0) if it is a regular file of at most
    ``limit`` bytes; never blocks, whatever is found at ``path``.

    Args:
        path: the file.
        limit: the most bytes it may hold (``None``: any size).
        what: what the file is, for messages (``"metadata file"``, ``"trajectory file"``, ...).
        links: follow a symbolic link whose target is a regular file in the same directory
            (otherwise any link is refused).

    Raises:
        FileNotFoundError: nothing is at ``path`` (or a link's target is missing).
        UnsafeFileError: ``path`` is not a regular file (FIFO, device, socket, directory), a
            link (``links=False``) or a link leading out of its directory.
        CorruptBufferError: the file holds more than ``limit`` bytes.
        BufferDirectoryError: the system refused to read it (permissions, I/O error).
    """
    try:
        st = os.lstat(path)
        target = path
        expected = None
        if stat.S_ISLNK(st.st_mode):
            if not links:
                raise UnsafeFileError(
                    f"{path}: is a symbolic link; a {what} must be a regular file, so it was not read"
                )
            target = os.path.realpath(path)
            if os.path.dirname(target) != os.path.realpath(os.path.dirname(path)):
                raise UnsafeFileError(
                    f"{path}: links outside the buffer directory (to {target}); refusing to read it"
                )
            try:
                st = os.lstat(target)
            except FileNotFoundError:
                raise FileNotFoundError(errno.ENOENT, "a symbolic link to a missing file", path) from None
            expected = (st.st_dev, st.st_ino)
        refuse_special(path, st.st_mode, what)
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # became a link since the check
                msg = f"{path}: was replaced by a symbolic link; refusing to read it"
                raise UnsafeFileError(msg) from None
            raise
    except (BufferDirectoryError, FileNotFoundError):  # refused above, or nothing there
        raise
    except OSError as exc:
        raise unreadable(path, exc) from None
    try:
        st = os.fstat(fd)
        refuse_special(path, st.st_mode, what)  # swapped between the check and the opening
        if expected is not None and (st.st_dev, st.st_ino) != expected:
            raise UnsafeFileError(f"{path}: its link changed while it was opened; refusing to read it")
        check_size(path, st.st_size, limit, what)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_limited(path: str, limit: int | None, *, what: str = "file", links: bool = False) -> bytes:
    """Every byte of the regular file ``path`` (:func:`open_regular`), at most ``limit``: a file
    that grows past it while read is refused too."""
    with open_regular(path, limit, what=what, links=links) as f:
        try:
            data = f.read() if limit is None else f.read(limit + 1)
        except OSError as exc:
            raise unreadable(path, exc) from None
    check_size(path, len(data), limit, what)
    return data


def parse_json(data: bytes | str, path: str, what: str) -> Any:
    """``json.loads(data)``, the text of file ``path``; anything that is not JSON Python can
    hold (invalid text, nesting deeper than the recursion limit, integers of more digits than
    ``sys.get_int_max_str_digits()``) is a :class:`CorruptBufferError` naming ``path``."""
    try:
        return json.loads(data)
    except RecursionError:
        reason = "arrays or objects nested too deeply"
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits
        text = str(exc)
        reason = "an integer with too many digits" if "integer string conversion" in text else text[:200]
    raise CorruptBufferError(
        f"{path}: {what} is not valid JSON ({reason}); restore it from a copy or rebuild the "
        "directory with the verify tool"
    )


def load_json(path: str, what: str, limit: int | None = JSON_BYTES, *, links: bool = True) -> Any:
    """Parse the JSON file ``path`` (:func:`read_limited`, then :func:`parse_json`); ``what``
    names it in errors. A link is followed only inside its directory (``links=True``)."""
    return parse_json(read_limited(path, limit, what=what, links=links), path, what)


def trajectory_file_limit(transitions: int, row_bytes: int | None) -> int | None:
    """The most bytes a trajectory file of ``transitions`` (``T * B``) transitions of
    ``row_bytes`` bytes each may hold: :data:`FILE_FACTOR` times their bytes plus
    :data:`FILE_SLACK`; ``None`` (no bound) if ``row_bytes`` is unknown."""
    if row_bytes is None or row_bytes <= 0 or transitions < 0:
        return None
    return FILE_FACTOR * transitions * row_bytes + FILE_SLACK
