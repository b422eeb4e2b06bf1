"""``trajectory_index.columns``: the index's entries as binary columns, beside the JSON index.

Parsing a ``trajectory_index.json`` of 100k entries (40 MB of JSON, a dict per entry) takes most
of a second; this sidecar holds the same entries as fixed-type arrays that are read without
parsing anything per entry. It is an optimization only: ``trajectory_index.json`` stays the
index (RLinf, older versions of this library and ``verify`` read it alone), and the sidecar is
used only when it describes exactly the JSON index beside it.

* :func:`write` runs right after the JSON index is written (:func:`~.journal.write_index`). It
  records the JSON index's size and CRC-32; entries it cannot represent exactly (RLinf's
  entries without ``num_steps``, non-ASCII uuids, ...) get no sidecar (an old one is removed).
  A failure to write it is not an error: the index is already in place.
* :func:`read` returns the columns, or ``None`` whenever the sidecar is missing, unreadable, not
  a regular file, of another version, damaged (its own CRC-32), of another JSON index (size or
  CRC-32 differ: a stale sidecar), or holds a value the JSON index could not hold. The caller
  then parses the JSON index, which reports any damage as before. Nothing in the file is trusted
  before it is checked: sizes are checked against the file's length before any array is made,
  the dtypes are fixed here, and nothing is unpickled.

Layout (``docs/format.md``): the 8 bytes :data:`MAGIC`, the header's length (uint64,
little-endian), a JSON header padded with spaces so that the columns start at a multiple of 8,
then the columns of :data:`LAYOUT` back to back, each padded with zero bytes to a multiple of 8.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import zlib
from collections.abc import Sequence
from operator import itemgetter, methodcaller
from typing import IO, Any

import numpy as np

from .errors import InvalidTrajectoryError
from .fsio import atomic_write
from .integrity import sized_checksum
from .naming import trajectory_file_names
from .record_table import CANONICAL, EXTENSIONS, RecordColumns
from .safe_open import INDEX_BYTES, open_regular
from .trajectory import MAX_INDEX_INT, check_weights_id

NAME = "trajectory_index.columns"
MAGIC = b"RLIDXC1\n"
FORMAT_VERSION = 1
#: the widest uuid (bytes) a sidecar holds; an index with a longer one gets no sidecar
MAX_UUID_BYTES = 256
#: the most dimensions of a ``shape`` a sidecar holds
MAX_SHAPE_DIMS = 255
#: the columns, in file order, with their dtypes (``uuids``: ``S<uuid_width>``)
LAYOUT = (
    ("ids", "<i8"),
    ("num_steps", "<i8"),
    ("num_envs", "<i8"),
    ("update_counts", "<i8"),
    ("max_lengths", "<i8"),
    ("checksums", "<i8"),
    ("rows", "<i8"),
    ("weights", "<i4"),
    ("files", "<i4"),
    ("shape_dims", "u1"),
    ("exts", "u1"),
    ("flat", "u1"),
    ("uuids", "S"),
    ("shape_values", "<i8"),
)
_HEADER_KEYS = {
    "format_version": int,
    "index_size": int,
    "index_crc32": int,
    "count": int,
    "shape_values": int,
    "uuid_width": int,
    "weight_names": list,
    "file_names": list,
    "data_crc32": int,
}
logger = logging.getLogger("rlinf_replay_buffer")


def _padded(nbytes: int) -> int:
    return -(-nbytes // 8) * 8


def _column_sizes(count: int, values: int, width: int) -> list[tuple[str, np.dtype, int, int]]:
    """``(name, dtype, elements, padded bytes)`` of every column of :data:`LAYOUT`."""
    out = []
    for name, code in LAYOUT:
        dtype = np.dtype(f"S{width}") if code == "S" else np.dtype(code)
        n = values if name == "shape_values" else count
        out.append((name, dtype, n, _padded(n * dtype.itemsize)))
    return out


# -- writing ---------------------------------------------------------------------------------------
def _ints(values: list[Any], low: int, high: int) -> np.ndarray:
    """``values`` as int64, if each is an ``int`` (not a bool) in ``[low, high)``."""
    if values and set(map(type, values)) != {int}:
        raise ValueError("not an int")
    out = np.array(values, dtype=np.int64)
    if len(out) and (int(out.min()) < low or int(out.max()) >= high):
        raise ValueError("out of range")
    return out


def _optional_ints(values: list[Any], high: int) -> np.ndarray:
    """``values`` as int64, if each is ``None`` (-1) or an ``int`` (not a bool) in ``[0, high)``."""
    _ints([v for v in values if v is not None], 0, high)
    return np.array([-1 if v is None else v for v in values], dtype=np.int64)


def _codes(values: list[Any]) -> tuple[np.ndarray, tuple[str, ...]]:
    """``values`` (strings) as int32 codes into the tuple of distinct values."""
    if values and set(map(type, values)) != {str}:
        raise ValueError("not a string")
    distinct = tuple(dict.fromkeys(values))  # in order of first appearance
    if len(distinct) == 1:
        return np.zeros(len(values), dtype=np.int32), distinct
    code = {v: i for i, v in enumerate(distinct)}
    return np.array(list(map(code.__getitem__, values)), dtype=np.int32), distinct


def encode(entries: Sequence[dict[str, Any]]) -> RecordColumns | None:
    """The columns of index entries as this library writes them (``num_steps``, ``num_envs``
    and ``file`` present; a ``row`` for segment rows), or ``None`` if an entry holds anything
    the columns would not give back exactly."""
    try:
        return _encode(entries)
    except (KeyError, TypeError, ValueError, OverflowError, UnicodeEncodeError, InvalidTrajectoryError):
        return None


#: the keys every entry the columns hold has, and those it may lack (with their default)
_REQUIRED = (
    "trajectory_id",
    "num_steps",
    "num_envs",
    "model_update_count",
    "model_weights_uuid",
    "shape",
    "file",
)
_OPTIONAL = {"max_episode_length": None, "crc32": None, "row": None, "uuid": "", "rlinf_flat": None}


def _encode(entries: Sequence[dict[str, Any]]) -> RecordColumns:
    # one pass in C per key: a KeyError (a required key missing) means no sidecar
    required = [list(map(itemgetter(key), entries)) for key in _REQUIRED]
    optional = [list(map(methodcaller("get", key, default), entries)) for key, default in _OPTIONAL.items()]
    return _encode_columns(*required, *optional)


def _encode_columns(
    ids_in: list[Any],
    steps: list[Any],
    envs: list[Any],
    counts_in: list[Any],
    weights_in: list[Any],
    shapes: list[Any],
    names: list[Any],
    lengths: list[Any],
    checksums: list[Any],
    rows_in: list[Any],
    uuids: list[Any],
    flat: list[Any],
) -> RecordColumns:
    """The columns of the entries' values (each argument: one key's values, in entry order)."""
    ids = _ints(ids_in, 0, MAX_INDEX_INT)
    counts = _ints(counts_in, 0, MAX_INDEX_INT)
    weights, weight_names = _codes(weights_in)
    for name in weight_names:
        if check_weights_id(name) != name:
            raise ValueError("not a plain string")
    if uuids and set(map(type, uuids)) != {str}:
        raise ValueError("uuid")
    width = max([1, *map(len, uuids)])
    if width > MAX_UUID_BYTES or "\0" in "".join(uuids):
        raise ValueError("uuid")
    if shapes and set(map(type, shapes)) != {list}:
        raise ValueError("shape")
    dims = list(map(len, shapes))
    if dims and (min(dims) < 2 or max(dims) > MAX_SHAPE_DIMS):
        raise ValueError("shape")
    rows = _optional_ints(rows_in, MAX_INDEX_INT)
    files, exts, file_names = _files(names, rows, ids, weight_names, weights, counts)
    return RecordColumns(
        ids=ids,
        num_steps=_ints(steps, 0, MAX_INDEX_INT),
        num_envs=_ints(envs, 0, MAX_INDEX_INT),
        update_counts=counts,
        max_lengths=_optional_ints(lengths, 1 << 63),
        checksums=_optional_ints(checksums, 1 << 32),
        rows=rows,
        flat=np.array([v is True for v in flat], dtype=np.bool_),
        weights=weights,
        files=files,
        exts=exts,
        uuids=np.array(uuids, dtype=f"S{width}"),  # str to ASCII bytes; not ASCII: an error
        shape_dims=np.array(dims, dtype=np.uint8),
        shape_values=_ints([d for s in shapes for d in s], -(1 << 63), 1 << 63),
        weight_names=weight_names,
        file_names=file_names,
    )


def _files(
    names: list[Any],
    rows: np.ndarray,
    ids: np.ndarray,
    weight_names: tuple[str, ...],
    weights: np.ndarray,
    counts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """``files``, ``exts`` and ``file_names`` columns of the entries' ``file`` values."""
    if names and set(map(type, names)) != {str}:
        raise ValueError("file")
    ext_codes = np.array([n.endswith(".pkl") for n in names], dtype=np.uint8)  # pt, unless pkl
    canonical = trajectory_file_names(
        ids.tolist(),
        [weight_names[0]] * len(names)
        if len(weight_names) == 1
        else [weight_names[w] for w in weights.tolist()],
        counts.tolist(),
        [EXTENSIONS[x] for x in ext_codes.tolist()],
    )
    if names == canonical and not (rows >= 0).any():  # every file has its own name by the rule
        return np.full(len(names), CANONICAL, dtype=np.int32), ext_codes, ()
    table: dict[str, int] = {}
    codes = [
        CANONICAL if row < 0 and name == made else table.setdefault(name, len(table))
        for name, made, row in zip(names, canonical, rows.tolist(), strict=True)
    ]
    return np.array(codes, dtype=np.int32), ext_codes, tuple(table)


def write(directory: str, entries: Sequence[dict[str, Any]], index_data: bytes) -> None:
    """Write the sidecar of the JSON index just written to ``directory`` (``index_data``: its
    bytes), atomically; if the entries cannot be represented, remove an old sidecar instead.
    A failure is logged, never raised: the sidecar is an optimization only."""
    path = os.path.join(directory, NAME)
    columns = encode(entries)
    try:
        if columns is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        parts = serialize(columns, index_data)

        def fill(f: Any) -> None:
            for part in parts:
                f.write(part)

        atomic_write(path, fill, sync=True, sync_dir=False)
    except OSError as exc:
        logger.info("%s: not written (%s); loading parses %s instead", path, exc, "trajectory_index.json")


def serialize(columns: RecordColumns, index_data: bytes) -> list[bytes]:
    """The parts of the sidecar file holding ``columns``, for the JSON index whose bytes are
    ``index_data`` (written one after another, they are the file)."""
    width = columns.uuids.dtype.itemsize
    data = []
    for name, dtype, _, nbytes in _column_sizes(len(columns), len(columns.shape_values), width):
        raw = np.ascontiguousarray(getattr(columns, name), dtype=dtype).tobytes()
        data.append(raw + b"\0" * (nbytes - len(raw)))
    body = b"".join(data)
    header = json.dumps(
        {
            "format_version": FORMAT_VERSION,
            "index_size": len(index_data),
            "index_crc32": zlib.crc32(index_data),
            "count": len(columns),
            "shape_values": len(columns.shape_values),
            "uuid_width": width,
            "weight_names": list(columns.weight_names),
            "file_names": list(columns.file_names),
            "data_crc32": zlib.crc32(body),
        },
        separators=(",", ":"),
    ).encode()
    header += b" " * (_padded(16 + len(header)) - 16 - len(header))
    return [MAGIC, len(header).to_bytes(8, "little"), header, body]


# -- reading ---------------------------------------------------------------------------------------
def read(directory: str, index_path: str) -> RecordColumns | None:
    """The columns of the sidecar in ``directory`` if it describes the JSON index at
    ``index_path`` as it is (same size and CRC-32, which is computed by streaming the index, so
    it is never held in memory here) and holds only values the JSON index could hold; else
    ``None``. The file's length is checked against the sizes its header declares before its
    columns are read."""
    try:
        with open_regular(os.path.join(directory, NAME), INDEX_BYTES, what="index sidecar") as f:
            header = _header(f)
            if header is None:
                return None
            identity = sized_checksum(index_path, INDEX_BYTES, what="trajectory index")
            if identity != (header["index_size"], header["index_crc32"]):
                return None  # the sidecar of another JSON index
            body = f.read(header["body_size"] + 1)
        return _decode(body, header)
    except (OSError, ValueError, TypeError, KeyError, OverflowError, RecursionError, InvalidTrajectoryError):
        return None  # missing, unreadable, a link, a FIFO, damaged: the JSON index is parsed


def _header(f: IO[bytes]) -> dict[str, Any] | None:
    """The header of the sidecar open as ``f`` (left at the start of its columns), if it is
    one of this version, with every key of its type, declaring columns of the file's length."""
    file_size = os.fstat(f.fileno()).st_size
    head = f.read(16)
    if len(head) < 16 or head[:8] != MAGIC:
        return None
    size = int.from_bytes(head[8:16], "little")
    if size > file_size - 16:
        return None
    header = json.loads(f.read(size))
    if not isinstance(header, dict) or any(
        type(header.get(key)) is not kind for key, kind in _HEADER_KEYS.items()
    ):
        return None
    n, m, width = header["count"], header["shape_values"], header["uuid_width"]
    if header["format_version"] != FORMAT_VERSION or not (
        0 <= n and 0 <= m <= MAX_SHAPE_DIMS * n and 1 <= width <= MAX_UUID_BYTES
    ):
        return None
    header["body_size"] = sum(nbytes for *_, nbytes in _column_sizes(n, m, width))
    return header if 16 + size + header["body_size"] == file_size else None


def _decode(body: bytes, header: dict[str, Any]) -> RecordColumns | None:
    """The columns in ``body`` (the bytes after the header), if they are what it declares."""
    weight_names, file_names = header["weight_names"], header["file_names"]
    if not all(type(s) is str for s in (*weight_names, *file_names)):
        return None
    if len(body) != header["body_size"] or zlib.crc32(body) != header["data_crc32"]:
        return None
    arrays: dict[str, np.ndarray] = {}
    start = 0
    for name, dtype, count, nbytes in _column_sizes(
        header["count"], header["shape_values"], header["uuid_width"]
    ):
        arrays[name] = np.frombuffer(body, dtype=dtype, count=count, offset=start)
        start += nbytes
    if not _valid(arrays, len(weight_names), len(file_names)):
        return None
    for name in weight_names:
        if check_weights_id(name) != name:
            return None
    arrays["flat"] = arrays["flat"].view(np.bool_)
    return RecordColumns(**arrays, weight_names=tuple(weight_names), file_names=tuple(file_names))


def _within(values: np.ndarray, low: int, high: int) -> bool:
    return not len(values) or (int(values.min()) >= low and int(values.max()) < high)


def _valid(a: dict[str, np.ndarray], weight_names: int, file_names: int) -> bool:
    """Whether the arrays hold what the JSON index could (the ranges its reader accepts)."""
    ids = a["ids"]
    unique = len(ids) < 2 or bool((ids[1:] > ids[:-1]).all()) or len(np.unique(ids)) == len(ids)
    return (
        unique
        and all(_within(a[k], 0, MAX_INDEX_INT) for k in ("ids", "num_steps", "num_envs", "update_counts"))
        and _within(a["max_lengths"], -1, 1 << 63)
        and _within(a["checksums"], -1, 1 << 32)
        and _within(a["rows"], -1, MAX_INDEX_INT)
        and _within(a["weights"], 0, weight_names)
        and _within(a["files"], CANONICAL, file_names)
        and _within(a["exts"], 0, len(EXTENSIONS))
        and _within(a["flat"], 0, 2)
        and _within(a["shape_dims"], 2, MAX_SHAPE_DIMS + 1)
        and int(a["shape_dims"].sum(dtype=np.int64)) == len(a["shape_values"])
        and _within(a["uuids"].view(np.uint8), 0, 128)
    )
