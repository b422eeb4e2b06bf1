"""Crash-safe file operations: every file is written to a temporary name, fsync'd, then renamed.

A reader therefore sees either the old file or the complete new one, never a torn write.
Temporary names start with ``.tmp-`` so directory scans skip them and recovery can remove them.

Whole directories (checkpoints, merges, imports) are assembled in a hidden sibling
``.NAME.partial-<random>`` (:func:`staged_directory`) and published at ``NAME`` by
:func:`publish_directory`, which swaps them in one atomic step where the system can.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import os
import shutil
import stat
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

TMP_PREFIX = ".tmp-"
STAGING_MARK = ".partial-"
"""``.NAME.partial-<random>``: a directory being assembled (or, after a crash, left over)."""
OLD_MARK = ".old-"
"""``.NAME.old-<random>``: a replaced directory set aside before its deletion (no atomic swap)."""


def fsync_dir(path: str) -> None:
    """Make a directory's entries (new names, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: str) -> None:
    """``os.makedirs(path, exist_ok=True)`` whose new directories survive a power cut: the
    parent of every directory it creates is fsync'd (a new name is durable only then)."""
    path = os.path.abspath(path)
    new, head = [], path
    while not os.path.lexists(head) and os.path.dirname(head) != head:
        new.append(head)
        head = os.path.dirname(head)
    os.makedirs(path, exist_ok=True)
    for made in new:  # deepest first, the existing ancestor last
        fsync_dir(os.path.dirname(made))


class _CrcWriter:
    """A binary file wrapper that computes the CRC-32 of everything written through it."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self.crc = 0

    def write(self, data: Any) -> int:
        self.crc = zlib.crc32(data, self.crc)
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()


@contextlib.contextmanager
def atomic_file(path: str, sync: bool = True, sync_dir: bool = True) -> Iterator[IO[bytes]]:
    """Write ``path`` atomically: the block fills the binary file it gets, which is then renamed.

    The file is a temporary ``.tmp-<random>-NAME`` in the same directory, removed if the block
    raises (``path`` is then untouched).

    Args:
        path: final file path.
        sync: fsync the file before the rename (durability of the content).
        sync_dir: fsync the directory after the rename (durability of the name).
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f"{TMP_PREFIX}{uuid.uuid4().hex}-{os.path.basename(path)}")
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(directory)


def atomic_write(
    path: str, write: Callable[[IO[bytes]], None], sync: bool = True, sync_dir: bool = True
) -> int:
    """Write ``path`` atomically: ``write(f)`` fills a temporary file that is then renamed.

    Args:
        path: final file path.
        write: callback writing the content to the binary file object it gets (which supports
            ``write`` and ``flush`` only).
        sync: fsync the file before the rename (durability of the content).
        sync_dir: fsync the directory after the rename (durability of the name).

    Returns:
        The CRC-32 of the bytes written.
    """
    with atomic_file(path, sync=sync, sync_dir=sync_dir) as f:
        sink = _CrcWriter(f)
        write(sink)  # type: ignore[arg-type]
    return sink.crc


def atomic_write_json(path: str, obj: Any, sync: bool = True) -> bytes:
    """Atomically write ``obj`` as compact JSON; return the bytes written."""
    data = json.dumps(obj, separators=(",", ":")).encode()
    atomic_write(path, lambda f: f.write(data), sync=sync)
    return data


def atomic_copy(src: str, dst: str, sync: bool = True) -> int:
    """Copy a file's bytes to ``dst`` atomically (the source is only read); return their CRC-32."""

    def write(f: IO[bytes]) -> None:
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f, length=4 << 20)

    return atomic_write(dst, write, sync=sync, sync_dir=False)


def link_or_copy(src: str, dst: str) -> None:
    """Hard-link ``src`` to ``dst`` (same file system) or copy it atomically (elsewhere)."""
    try:
        os.link(src, dst, follow_symlinks=False)  # a link stays a link: never its target
    except OSError:
        atomic_copy(src, dst)


def remove_tmp_files(directory: str, names: Iterable[str] | None = None) -> list[str]:
    """Delete leftovers of interrupted atomic writes in ``directory`` (``names``: its entries as
    just listed; default: listed here); return their names."""
    removed = []
    listed = os.listdir(directory) if names is None else names
    for name in [n for n in listed if n.startswith(TMP_PREFIX)]:
        path = os.path.join(directory, name)
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.unlink(path)
                removed.append(name)
    return removed


# -- whole directories --------------------------------------------------------------------------
def _hidden_sibling(dest: str, mark: str) -> str:
    return os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}{mark}{uuid.uuid4().hex[:12]}")


def new_staging_dir(dest: str) -> str:
    """Create a fresh hidden sibling of ``dest``, ``.NAME.partial-<random>``, to assemble a
    directory in (same file system, so it can be renamed into place)."""
    staging = _hidden_sibling(os.path.abspath(dest), STAGING_MARK)
    os.mkdir(staging)
    return staging


def remove_tree(path: str) -> None:
    """Delete what ``path`` names, best effort: a directory tree, or a file or a link (never the
    target of a link)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


@contextlib.contextmanager
def staged_directory(dest: str) -> Iterator[str]:
    """A fresh staging directory for ``dest`` (:func:`new_staging_dir`), gone when the block ends.

    The block fills it and ends with ``publish_directory(staging, dest)``. If the block raises
    (or ends without publishing) the staging directory is removed and ``dest`` is untouched.
    """
    staging = new_staging_dir(dest)
    try:
        yield staging
    finally:
        if os.path.lexists(staging):  # not published, or the replaced directory swapped into it
            remove_tree(staging)


def sync_tree(path: str) -> None:
    """fsync every directory of the tree at ``path``, deepest first, ``path`` last (links are
    not followed). Files are not fsync'd here: their writers do it (:func:`atomic_write`)."""
    for root, _dirs, _files in os.walk(path, topdown=False):
        fsync_dir(root)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h
_NO_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}


@functools.cache
def _renameat2() -> Any:
    """libc's ``renameat2`` (Linux, glibc 2.28+), or ``None``."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def exchange(a: str, b: str) -> bool:
    """Swap the entries ``a`` and ``b`` of one file system in one atomic step
    (``renameat2(RENAME_EXCHANGE)``); ``False`` (nothing done) where the system or the file
    system cannot, e.g. outside Linux or on some network file systems.

    Raises:
        OSError: the swap is supported but was refused (permissions, a missing path, ...).
    """
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_EXCHANGE:
        return False
    raise OSError(err, os.strerror(err), a, None, b)


def publish_directory(staging: str, dest: str) -> None:
    """Publish the complete directory ``staging`` at ``dest``, replacing whatever is there.

    Every directory of ``staging`` is fsync'd (its files must be durable already), then it
    takes ``dest``'s place and the parent directory is fsync'd; the replaced directory is
    deleted last. At every instant ``dest`` holds the complete old directory or the complete
    new one (nothing, if there was none): an existing ``dest`` is swapped with ``staging`` in
    one atomic step (:func:`exchange`), the old one then sits at the hidden staging name until
    it is deleted. Where the file system cannot swap, the old one is first renamed to a hidden
    ``.NAME.old-<random>``: between that rename and the next ``dest`` is missing, and the old
    directory is complete at that name. A crash leaves at most these hidden siblings behind.

    Raises:
        OSError: a rename or an fsync failed; ``dest`` holds the old directory or the new one.
    """
    dest = os.path.abspath(dest)
    parent = os.path.dirname(dest)
    sync_tree(staging)
    if os.path.lexists(dest) and exchange(staging, dest):
        fsync_dir(parent)
        remove_tree(staging)  # now the replaced directory
        return
    old = None
    if os.path.lexists(dest):  # no atomic swap here: the old one goes aside first
        old = _hidden_sibling(dest, OLD_MARK)
        os.rename(dest, old)
    try:
        os.rename(staging, dest)
    except BaseException:
        if old is not None:
            with contextlib.suppress(OSError):
                os.rename(old, dest)
        raise
    fsync_dir(parent)
    if old is not None:
        remove_tree(old)
