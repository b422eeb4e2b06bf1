"""``metadata.json``: a buffer directory's format, counters, seed and field schema.

Its presence marks a buffer directory. ``format_version`` (:data:`FORMAT_VERSION`, written into
the index too) is the version of the on-disk format; RLinf's own directories have none, and may
name the format ``storage_format`` instead of ``trajectory_format``: both are read.
``docs/format.md`` lists the keys.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from . import formats
from .errors import BufferNotFoundError, CorruptBufferError
from .fsio import atomic_write_json
from .naming import read_json
from .schema import Schema

FORMAT_VERSION = 1
METADATA = "metadata.json"
#: trajectory ids and counters are below this (larger ones are corrupt and would overflow int64)
MAX_COUNTER = 1 << 48


def read_metadata(path: str) -> dict[str, Any]:
    """Parse ``metadata.json``; check its format, version and counter.

    The file must be a regular file of at most :data:`~.safe_open.JSON_BYTES` bytes
    (:func:`~.naming.read_json`).

    Raises:
        BufferNotFoundError: there is no ``metadata.json``.
        UnsafeFileError: it is a FIFO, a device, or a link out of the directory.
        CorruptBufferError: it is too large, not JSON, or not valid metadata.
    """
    meta_path = os.path.join(path, METADATA)
    if not os.path.exists(meta_path):
        from .journal import INDEX  # here, not at the top: .journal imports FORMAT_VERSION

        raise BufferNotFoundError(
            f"{path}: no {METADATA}; this is not a replay buffer directory (expected "
            f"{METADATA}, {INDEX} and trajectory_*.pt|pkl files)"
        )
    meta = read_json(meta_path, METADATA)
    if not isinstance(meta, dict):
        raise CorruptBufferError(f"{meta_path}: expected a JSON object")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CorruptBufferError(
            f"{meta_path}: format_version {version!r} is newer than this library reads "
            f"({FORMAT_VERSION}); upgrade the library"
        )
    fmt = meta.get("trajectory_format", meta.get("storage_format"))
    if fmt not in formats.ALL_FORMATS:
        raise CorruptBufferError(f"{meta_path}: trajectory_format {fmt!r} is not 'pt', 'pkl' or 'segment'")
    counter = meta.get("trajectory_counter")
    if isinstance(counter, int) and not 0 <= counter < MAX_COUNTER:
        raise CorruptBufferError(
            f"{meta_path}: trajectory_counter {str(counter)[:40]} is not an id in [0, 2**48); restore "
            "the file from a copy or rebuild it with the verify tool (--repair)"
        )
    return meta


def write_metadata(
    path: str,
    fmt: str,
    entries: Iterable[dict[str, Any]] | tuple[int, int],
    counter: int,
    seed: int | None,
    schema: Schema | None,
) -> None:
    """Atomically write ``metadata.json`` (RLinf's keys plus ``format_version`` and fields).

    ``size`` and ``total_samples`` count the trajectories and transitions the index lists;
    ``entries`` is that index, or the pair ``(size, total_samples)`` when the caller keeps
    running totals (so that writing metadata does not cost O(index size)).
    """
    if isinstance(entries, tuple):
        size, total = entries
    else:
        listed = list(entries)
        size, total = len(listed), sum(int(e["num_samples"]) for e in listed)
    atomic_write_json(
        os.path.join(path, METADATA),
        {
            "format_version": FORMAT_VERSION,
            "trajectory_format": fmt,
            "size": size,
            "total_samples": total,
            "trajectory_counter": counter,
            "seed": seed,
            "fields": schema.to_json() if schema else {},
        },
    )
