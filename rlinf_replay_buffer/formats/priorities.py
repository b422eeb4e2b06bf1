"""``priorities.bin``: the priorities of a prioritized buffer, beside its trajectories.

One file, written atomically::

    bytes 0-7    b"RLPRIO1\\n"
    bytes 8-15   H, the header's length (uint64, little-endian)
    H bytes      JSON header: {"format_version": 1, "alpha": a, "eps": e,
                 "max_priority": m, "trajectories": [[id, uuid, n], ...], "crc32": c}
    the rest     raw priorities (float64, little-endian): n per listed trajectory, in order,
                 row t * B + b of a trajectory at its position

Raw priorities (``|TD error|``, what ``update_priorities`` takes) are stored, not the sampler's
``(p + eps) ** alpha``, so a buffer loading them with other exponents applies its own. A
trajectory is matched by id *and* uuid, so entries of trajectories a directory no longer holds are
ignored. Reading never executes anything: the header is JSON and the data plain float64.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from ..errors import CorruptBufferError, CorruptDataWarning
from ..fsio import atomic_write
from ..safe_open import open_regular, parse_json

NAME = "priorities.bin"
MAGIC = b"RLPRIO1\n"
FORMAT_VERSION = 1
_MAX_HEADER = 256 << 20


@dataclass
class SavedPriorities:
    """What ``priorities.bin`` holds.

    Attributes:
        alpha, eps: the exponents of the buffer that wrote it (informative).
        max_priority: its running maximum of raw priorities (given to new transitions).
        trajectories: ``id -> (uuid, raw priorities float64 [T * B])``.
    """

    alpha: float
    eps: float
    max_priority: float
    trajectories: dict[int, tuple[str, np.ndarray]] = field(default_factory=dict)


def write(directory: str, saved: SavedPriorities) -> None:
    """Write ``directory/priorities.bin`` atomically."""
    listed = [(tid, uuid, int(values.size)) for tid, (uuid, values) in saved.trajectories.items()]
    data = (
        np.concatenate([v for _, v in saved.trajectories.values()]).astype("<f8", copy=False).tobytes()
        if listed
        else b""
    )
    header = json.dumps(
        {
            "format_version": FORMAT_VERSION,
            "alpha": saved.alpha,
            "eps": saved.eps,
            "max_priority": saved.max_priority,
            "trajectories": listed,
            "crc32": zlib.crc32(data),
        },
        separators=(",", ":"),
    ).encode()

    def fill(f: IO[bytes]) -> None:
        f.write(MAGIC)
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        f.write(data)

    atomic_write(os.path.join(directory, NAME), fill)


def read(path: str) -> SavedPriorities:
    """Parse ``priorities.bin``.

    Raises:
        CorruptBufferError: anything that is not exactly the format above (bad magic, header,
            sizes, checksum, negative or non-finite priorities).
    """

    def bad(why: str) -> CorruptBufferError:
        return CorruptBufferError(f"{path}: {why}; the priorities were not loaded")

    with open_regular(path, what="priorities file", links=True) as f:  # never a FIFO or a device
        file_size = os.fstat(f.fileno()).st_size
        start = f.read(16)
        if start[:8] != MAGIC or len(start) < 16:
            raise bad("not a priorities file")
        (size,) = struct.unpack("<Q", start[8:16])
        if size > min(_MAX_HEADER, file_size - 16):
            raise bad("truncated header")
        try:  # nested too deeply, too many digits: like any invalid JSON
            header: Any = parse_json(f.read(size), path, "its header")
        except CorruptBufferError as exc:
            raise bad(str(exc).removeprefix(f"{path}: ").split("; restore")[0]) from None
        listed_bytes = _listed_bytes(header)
        if listed_bytes is not None and listed_bytes != file_size - 16 - size:  # before reading
            raise bad(f"holds {file_size - 16 - size} data bytes, its header lists {listed_bytes}")
        try:
            data = f.read()
        except MemoryError:
            raise bad(f"its {file_size} bytes do not fit in memory") from None
    try:
        if header.get("format_version") != FORMAT_VERSION:
            raise bad(f"format_version {header.get('format_version')!r} is not {FORMAT_VERSION}")
        listed = [(int(t), str(u), int(n)) for t, u, n in header["trajectories"]]
        alpha, eps, top = float(header["alpha"]), float(header["eps"]), float(header["max_priority"])
        crc = int(header["crc32"])
    except CorruptBufferError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise bad(f"bad header ({exc})") from None
    total = sum(n for _, _, n in listed)
    if any(n < 0 for _, _, n in listed) or len(data) != 8 * total:
        raise bad(f"holds {len(data)} data bytes for {total} priorities")
    if zlib.crc32(data) != crc:
        raise bad("checksum mismatch (the data is damaged)")
    values = np.frombuffer(data, dtype="<f8").astype(np.float64)
    if not np.isfinite(values).all() or (values < 0).any() or not np.isfinite(top) or top < 0:
        raise bad("holds negative or non-finite priorities")
    saved = SavedPriorities(alpha, eps, top)
    offset = 0
    for tid, uuid, n in listed:
        saved.trajectories[tid] = (uuid, values[offset : offset + n])
        offset += n
    return saved


def _listed_bytes(header: Any) -> int | None:
    """The data bytes a header lists (8 per priority), ``None`` if it cannot tell (the full
    check of the header says why)."""
    try:
        return 8 * sum(int(n) for _, _, n in header["trajectories"])
    except (ValueError, TypeError, KeyError, IndexError):
        return None


def load(directory: str) -> SavedPriorities | None:
    """The priorities saved in ``directory`` (``None`` if it has none). A damaged or unsafe
    file is skipped with a :class:`~..errors.CorruptDataWarning` (the transitions then keep
    the maximum priority); it is never followed outside the directory."""
    from ..naming import refuse_link_out

    path = os.path.join(directory, NAME)
    if not os.path.lexists(path):
        return None
    try:
        refuse_link_out(path)
        return read(path)
    except (CorruptBufferError, OSError) as exc:
        message = f"{exc}; every transition starts at the maximum priority"
        logging.getLogger("rlinf_replay_buffer").warning("%s", message)
        warnings.warn(message, CorruptDataWarning, stacklevel=4)
        return None
