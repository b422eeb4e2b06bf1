"""Checksums of trajectory data: computed when data is written, checked when it is first read.

Every index entry this library writes carries ``crc32`` (an unsigned 32-bit CRC, as
:func:`zlib.crc32` computes it):

* ``pt`` / ``pkl`` trajectories: the CRC of the file's bytes;
* ``segment`` trajectories: the CRC of the trajectory's rows, column after column in the
  schema's order, each column's rows ``[T * B, ...]`` as raw little-endian bytes.

A buffer checks a trajectory the first time it reads it from disk (loading it into the cache,
sampling rows of it, copying it into a checkpoint or a merge); a mismatch raises
:class:`~.errors.CorruptTrajectoryError` naming the trajectory and its file. Entries without
``crc32`` (directories written by RLinf) are read unchecked.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping

import torch

from .errors import CorruptBufferError, CorruptTrajectoryError, unreadable
from .safe_open import open_regular, trajectory_file_limit
from .schema import Schema
from .trajectory import Key

_CHUNK = 1 << 20


def tensor_crc(tensor: torch.Tensor, crc: int = 0) -> int:
    """CRC-32 of a tensor's bytes in row-major order, continuing from ``crc``."""
    flat = tensor.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return crc
    if flat.stride(0) != 1:  # one element: "contiguous" whatever its stride, which view() refuses
        flat = flat.clone(memory_format=torch.contiguous_format)
    return zlib.crc32(memoryview(flat.view(torch.uint8).numpy()), crc)


def rows_checksum(rows: Mapping[Key, torch.Tensor], schema: Schema) -> int:
    """The ``segment`` checksum: CRC-32 of every column's rows ``[N, ...]`` in schema order."""
    crc = 0
    for key in schema:
        crc = tensor_crc(rows[key], crc)
    return crc


def file_limit(transitions: int, schema: Schema | None) -> int | None:
    """The most bytes the file of a trajectory of ``transitions`` (``T * B``) transitions may
    hold in a buffer of ``schema`` (:func:`~.safe_open.trajectory_file_limit`); ``None`` (no
    bound) when the schema is not known."""
    return trajectory_file_limit(transitions, schema.row_bytes if schema else None)


def file_checksum(path: str, max_bytes: int | None = None) -> int:
    """CRC-32 of a trajectory file's bytes (read in 1 MiB blocks).

    The file is opened with :func:`~.safe_open.open_regular` (links only inside its directory):
    a FIFO or a device is refused without being opened, and a file of more than ``max_bytes``
    bytes before a byte of it is read.

    Raises:
        FileNotFoundError: the file is missing.
        UnsafeFileError: it is not a regular file, or a link out of its directory.
        CorruptBufferError: it holds more than ``max_bytes`` bytes.
        BufferDirectoryError: the system refused to read it.
    """
    return sized_checksum(path, max_bytes)[1]


def sized_checksum(path: str, max_bytes: int | None = None, what: str = "trajectory file") -> tuple[int, int]:
    """``(bytes, CRC-32)`` of a file (``what`` names it in errors), read as
    :func:`file_checksum` reads it, and raising as it does."""
    crc = size = 0
    with open_regular(path, max_bytes, what=what, links=True) as f:
        try:
            while block := f.read(_CHUNK):
                crc = zlib.crc32(block, crc)
                size += len(block)
        except OSError as exc:
            raise unreadable(path, exc) from None
    return size, crc


def check_entry_crc(value: object, where: str) -> int | None:
    """The ``crc32`` of an index entry (``None`` if absent); refuse anything but a 32-bit int."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 32:
        raise CorruptBufferError(f"{where}: crc32 {value!r} is not an unsigned 32-bit int")
    return value


def mismatch_text(trajectory_id: int, path: str, expected: int, found: int) -> str:
    """What is wrong with a trajectory whose data does not match its checksum."""
    return (
        f"{path}: trajectory {trajectory_id} fails its checksum (index crc32 {expected:08x}, data "
        f"{found:08x})"
    )


def mismatch(trajectory_id: int, path: str, expected: int, found: int) -> CorruptTrajectoryError:
    """The error for a trajectory whose data does not match its checksum (``path``: its file,
    or its segment for ``segment`` rows)."""
    directory = os.path.dirname(path)  # a trajectory file or a segment: both in the buffer dir
    return CorruptTrajectoryError(
        f"{mismatch_text(trajectory_id, path, expected, found)}: the data is corrupt or "
        f"truncated. Check the directory with `rlinf-buffer verify {directory}` (--repair "
        "quarantines bad trajectories), "
        "or construct the buffer with on_corrupt='skip' to leave damaged trajectories out",
        trajectory_id,
        path,
    )


def verify_file(trajectory_id: int, path: str, expected: int | None, max_bytes: int | None = None) -> None:
    """Raise :class:`CorruptTrajectoryError` unless the file's CRC is ``expected``; a file of
    more than ``max_bytes`` bytes (see :func:`file_limit`) is refused unread
    (:class:`CorruptBufferError`), anything but a regular file too (:class:`UnsafeFileError`)."""
    if expected is None:
        return
    found = file_checksum(path, max_bytes)
    if found != expected:
        raise mismatch(trajectory_id, path, expected, found)


def verify_rows(
    trajectory_id: int, where: str, rows: Mapping[Key, torch.Tensor], schema: Schema, expected: int | None
) -> None:
    """Raise :class:`CorruptTrajectoryError` unless the rows' CRC is ``expected``."""
    if expected is None:
        return
    found = rows_checksum(rows, schema)
    if found != expected:
        raise mismatch(trajectory_id, where, expected, found)
