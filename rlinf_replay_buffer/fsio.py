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
import zlib
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
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f"{TMP_PREFIX}{uuid.uuid4().hex}-{os.path.basename(path)}")
    try:
        with open(tmp, "xb") as f:
            sink = _CrcWriter(f)
            write(sink)  # type: ignore[arg-type]
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
    return sink.crc


def atomic_write_json(path: str, obj: Any, sync: bool = True) -> None:
    """Atomically write ``obj`` as compact JSON."""
    data = json.dumps(obj, separators=(",", ":")).encode()
    atomic_write(path, lambda f: f.write(data), sync=sync)


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
