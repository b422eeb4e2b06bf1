"""Crash-safe file operations: every file is written to a temporary name, fsync'd, then renamed.

A reader therefore sees either the old file or the complete new one, never a torn write.
Temporary names start with ``.tmp-`` so directory scans skip them and recovery can remove them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from typing import IO, Any

TMP_PREFIX = ".tmp-"


def fsync_dir(path: str) -> None:
    """Make a directory's entries (new names, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: str, write: Callable[[IO[bytes]], None], sync: bool = True, sync_dir: bool = True
) -> None:
    """Write ``path`` atomically: ``write(f)`` fills a temporary file that is then renamed.

    Args:
        path: final file path.
        write: callback writing the content to the binary file object it gets.
        sync: fsync the file before the rename (durability of the content).
        sync_dir: fsync the directory after the rename (durability of the name).
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f"{TMP_PREFIX}{uuid.uuid4().hex}-{os.path.basename(path)}")
    try:
        with open(tmp, "xb") as f:
            write(f)
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


def atomic_write_json(path: str, obj: Any, sync: bool = True) -> None:
    """Atomically write ``obj`` as compact JSON."""
    data = json.dumps(obj, separators=(",", ":")).encode()
    atomic_write(path, lambda f: f.write(data), sync=sync)


def atomic_copy(src: str, dst: str, sync: bool = True) -> None:
    """Copy a file's bytes to ``dst`` atomically (the source is only read)."""

    def write(f: IO[bytes]) -> None:
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f, length=4 << 20)

    atomic_write(dst, write, sync=sync, sync_dir=False)


def link_or_copy(src: str, dst: str) -> None:
    """Hard-link ``src`` to ``dst`` (same file system) or copy it atomically (elsewhere)."""
    try:
        os.link(src, dst)
    except OSError:
        atomic_copy(src, dst)


def remove_tmp_files(directory: str) -> list[str]:
    """Delete leftovers of interrupted atomic writes in ``directory``; return their names."""
    removed = []
    with os.scandir(directory) as it:
        for entry in it:
            if entry.name.startswith(TMP_PREFIX) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(entry.name)
    return removed
