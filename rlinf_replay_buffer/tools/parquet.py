"""Export a buffer directory to one Parquet file, and import such a file back into a buffer.

The file holds one row per transition, in trajectory order, then step, then env (within a
trajectory ``row = step * B + env``, the order of the aligned rows ``[T * B, ...]``):

* ``trajectory_id`` (int64), ``step`` (int32), ``env`` (int32), ``model_weights_id`` (string),
  ``model_update_count`` (int64), ``max_episode_length`` (int64, null if unknown), ``num_steps``
  and ``num_envs`` (int32: ``T`` and ``B`` of the row's trajectory);
* one column per field, named by its dotted name (``curr_obs.states``, ``actions``, ...):
  images (``uint8`` rows of shape ``[H, W, C]``, ``C`` in 1, 3, 4) as Hugging Face ``Image``
  cells, ``struct<bytes: binary, path: string>`` holding a PNG and a null path, every other
  field as a fixed-size list of its values flattened in C order (``bfloat16`` as ``float32``),
  or as a plain value when a row is a scalar.

The Parquet key-value metadata ``rlinf_replay_buffer`` (JSON) says how to turn the columns back
into tensors: the format version, every field's dtype, shape and encoding, the source's format
and the counts. The key ``huggingface`` holds the columns as Hugging Face ``datasets``
features (``{"info": {"features": ...}}``, the form ``datasets`` writes), so that
``datasets.load_dataset("parquet", ...)`` decodes the image columns to PIL images. Import reads
the file in batches (memory stays bounded by one trajectory plus one batch), checks that every
``(step, env)`` of every trajectory is present exactly once and writes a buffer directory
through a hidden staging directory renamed into place when complete. It also reads files of
format version 1, whose image columns are plain ``binary`` PNG bytes.
Export writes the file under a temporary name, fsyncs it and renames it into place, so a
failed export never leaves a partial file.

pyarrow (both directions) and Pillow (import of files with PNG columns; export writes PNG
itself) are optional dependencies (``pip install rlinf-replay-buffer[tools]``), imported when a
function needs them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import zlib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import formats
from ..checkpoint import output_directory, place_records, writing
from ..directory import read_directory
from ..errors import (
    BufferDirectoryError,
    BufferNotFoundError,
    CorruptBufferError,
    InvalidArgumentError,
    InvalidTrajectoryError,
    MissingDependencyError,
)
from ..formats.segment import SegmentStore
from ..fsio import atomic_file, make_dirs, publish_directory, staged_directory
from ..journal import write_index
from ..lock import destination_lock
from ..metadata import write_metadata
from ..record import Record
from ..schema import ColumnSpec, Schema, schema_from_json
from ..store import iter_directory_rows
from ..trajectory import Key, align, file_dict_from_columns, key_name
from ..validate import check_int

Progress = Callable[[int, int], None]
"""``progress(done, total)``, called after each trajectory is written."""

#: version of the Parquet layout and of the metadata below; import refuses newer files
PARQUET_FORMAT_VERSION = 2
#: the last version whose image columns are plain ``binary`` PNG bytes (from 2: ``Image`` structs)
BINARY_PNG_VERSION = 1
#: the Parquet key-value metadata key holding the JSON description
METADATA_KEY = "rlinf_replay_buffer"
#: the key under which Hugging Face ``datasets`` reads the columns' features
HF_METADATA_KEY = "huggingface"
WRITER = "rlinf-replay-buffer"
INSTALL_HINT = "pip install rlinf-replay-buffer[tools]"

#: encodings of a field's column
PNG, LIST, SCALAR, EMPTY = "png", "list", "scalar", "empty"
_CHANNEL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
_COMPRESSIONS = ("none", "snappy", "gzip", "brotli", "lz4", "zstd")


def require_pyarrow(purpose: str = "Parquet export/import") -> tuple[Any, Any]:
    """``(pyarrow, pyarrow.parquet)``, or :class:`MissingDependencyError` saying that ``purpose``
    needs them and naming the extra to install."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs pyarrow, which is not installed ({exc}); install the "
            f"tools extra: {INSTALL_HINT}"
        ) from exc
    return pa, pq


def require_pillow(purpose: str = "decoding the PNG image columns") -> Any:
    """Pillow's ``Image`` module, or :class:`MissingDependencyError` saying that ``purpose``
    needs it."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs Pillow, which is not installed ({exc}); install the tools extra: {INSTALL_HINT}"
        ) from exc
    return Image


# -- the layout ---------------------------------------------------------------------------------


def meta_columns(pa: Any) -> list[tuple[str, Any]]:
    """The per-row columns before the fields, with their Arrow types."""
    return [
        ("trajectory_id", pa.int64()),
        ("step", pa.int32()),
        ("env", pa.int32()),
        ("model_weights_id", pa.string()),
        ("model_update_count", pa.int64()),
        ("max_episode_length", pa.int64()),
        ("num_steps", pa.int32()),
        ("num_envs", pa.int32()),
    ]


META_COLUMNS = (
    "trajectory_id",
    "step",
    "env",
    "model_weights_id",
    "model_update_count",
    "max_episode_length",
    "num_steps",
    "num_envs",
)


def image_struct(pa: Any) -> Any:
    """The Arrow type of a Hugging Face ``Image`` cell: ``struct<bytes: binary, path: string>``."""
    return pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def hf_value(dtype: str) -> dict[str, Any]:
    """The Hugging Face ``Value`` feature of a scalar of ``dtype`` (``"float32"``, ``"string"``)."""
    return {"dtype": dtype, "_type": "Value"}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


def stored_dtype(dtype: torch.dtype) -> str:
    """The dtype a field's values have in the file (``bfloat16`` widens exactly to ``float32``)."""
    return "float32" if dtype == torch.bfloat16 else dtype_name(dtype)


def is_image(spec: ColumnSpec) -> bool:
    """The rule for PNG columns: ``uint8`` rows of shape ``[H, W, C]``, ``C`` in 1, 3 or 4,
    ``H`` and ``W`` at least 1."""
    shape = spec.row_shape
    return (
        spec.dtype == torch.uint8
        and len(shape) == 3
        and shape[0] >= 1
        and shape[1] >= 1
        and shape[2] in _CHANNEL_MODES
    )


@dataclass(frozen=True)
class FieldLayout:
    """How one field is stored: its column name, dtype, per-row shape and encoding."""

    key: Key
    spec: ColumnSpec
    encoding: str

    @property
    def name(self) -> str:
        """The column name: the field's dotted name."""
        return key_name(self.key)

    @property
    def numel(self) -> int:
        """Values per row."""
        n = 1
        for d in self.spec.row_shape:
            n *= d
        return n

    def arrow_type(self, pa: Any, version: int = PARQUET_FORMAT_VERSION) -> Any:
        """The Arrow type of the column in a file of format ``version`` (``None`` for
        ``empty``: no column)."""
        if self.encoding == PNG:
            return pa.binary() if version <= BINARY_PNG_VERSION else image_struct(pa)
        if self.encoding == EMPTY:
            return None
        value = pa.from_numpy_dtype(np.dtype(stored_dtype(self.spec.dtype)))
        return value if self.encoding == SCALAR else pa.list_(value, self.numel)

    def hf_feature(self) -> dict[str, Any]:
        """The column as a Hugging Face ``datasets`` feature, in the JSON form ``datasets``
        writes: ``Image``, a ``Value`` of the stored dtype, or a ``List`` of ``numel`` of them
        (multi-dimensional rows stay flattened in C order; the shape is in our metadata)."""
        if self.encoding == PNG:
            return {"_type": "Image"}
        value = hf_value(stored_dtype(self.spec.dtype))
        return value if self.encoding == SCALAR else {"feature": value, "length": self.numel, "_type": "List"}

    def to_json(self) -> dict[str, Any]:
        """The field's entry in the metadata."""
        out: dict[str, Any] = {
            "dtype": dtype_name(self.spec.dtype),
            "shape": list(self.spec.row_shape),
            "encoding": self.encoding,
        }
        if self.encoding in (LIST, SCALAR):
            out["stored_dtype"] = stored_dtype(self.spec.dtype)
        if self.encoding == PNG:
            out["png_mode"] = _CHANNEL_MODES[self.spec.row_shape[2]]
        return out


def plan_layout(schema: Schema, image_fields: Collection[str] | None = None) -> list[FieldLayout]:
    """The layout of every field of ``schema``, in schema order.

    Args:
        image_fields: dotted names of the fields to store as PNG; ``None`` applies the rule of
            :func:`is_image` to every field. Each named field must satisfy that rule.

    Raises:
        InvalidArgumentError: a named field is unknown or is not an image.
    """
    names = {key_name(k): k for k in schema}
    chosen: set[Key] | None = None
    if image_fields is not None:
        if isinstance(image_fields, str):
            raise InvalidArgumentError(
                f"image_fields must be a collection of field names, got the string {image_fields!r}"
            )
        chosen = set()
        for name in image_fields:
            key = names.get(name)
            if key is None:
                raise InvalidArgumentError(
                    f"image_fields names {name!r}, which the buffer does not have (fields: {sorted(names)})"
                )
            if not is_image(schema[key]):
                spec = schema[key]
                raise InvalidArgumentError(
                    f"image_fields names {name!r}, which is {dtype_name(spec.dtype)} with per-step shape "
                    f"{list(spec.row_shape)}; only uint8 [H, W, C] with C in 1, 3, 4 can be stored as PNG"
                )
            chosen.add(key)
    layout = []
    for key, spec in schema.items():
        png = is_image(spec) if chosen is None else key in chosen
        if png:
            encoding = PNG
        elif 0 in spec.row_shape:
            encoding = EMPTY
        elif not spec.row_shape:
            encoding = SCALAR
        else:
            encoding = LIST
        layout.append(FieldLayout(key, spec, encoding))
    return layout


def describe(
    layout: list[FieldLayout],
    trajectories: int,
    transitions: int,
    source_format: str,
    source_written_by: str,
    seed: int | None,
) -> dict[str, Any]:
    """The JSON stored under :data:`METADATA_KEY`."""
    return {
        "format_version": PARQUET_FORMAT_VERSION,
        "writer": WRITER,
        "row_order": ["trajectory_id", "step", "env"],
        "trajectories": trajectories,
        "transitions": transitions,
        "source": {"trajectory_format": source_format, "written_by": source_written_by, "seed": seed},
        "fields": {f.name: f.to_json() for f in layout},
    }


def hf_features(pa: Any, layout: list[FieldLayout]) -> dict[str, Any]:
    """The JSON stored under :data:`HF_METADATA_KEY`: every column's Hugging Face feature."""
    features = {name: hf_value(str(t)) for name, t in meta_columns(pa)}
    features.update((f.name, f.hf_feature()) for f in layout if f.encoding != EMPTY)
    return {"info": {"features": features}}


def arrow_schema(pa: Any, layout: list[FieldLayout], description: dict[str, Any]) -> Any:
    """The file's Arrow schema, carrying the description and the Hugging Face features as
    key-value metadata. Columns are nullable (as ``datasets`` declares them: it applies its
    features only to columns of exactly their Arrow field); import refuses null values."""
    columns = [pa.field(name, t) for name, t in meta_columns(pa)]
    columns += [pa.field(f.name, f.arrow_type(pa)) for f in layout if f.encoding != EMPTY]
    metadata = {
        METADATA_KEY: json.dumps(description, separators=(",", ":")),
        HF_METADATA_KEY: json.dumps(hf_features(pa, layout)),
    }
    return pa.schema(columns, metadata=metadata)


# -- export -------------------------------------------------------------------------------------


@dataclass
class ExportResult:
    """What :func:`export_parquet` wrote.

    Attributes:
        source_path: the buffer directory read.
        out_path: the Parquet file written.
        trajectories: trajectories exported; ``transitions``: rows written.
        row_groups: Parquet row groups written.
        bytes: size of the Parquet file.
        image_fields: fields stored as PNG.
        source_format: the source's ``trajectory_format``.
    """

    source_path: str
    out_path: str
    trajectories: int
    transitions: int
    row_groups: int
    bytes: int
    image_fields: list[str] = field(default_factory=list)
    source_format: str = ""


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPES = {1: 0, 3: 2, 4: 6}  # grayscale, RGB, RGBA
_PNG_FILTER_UP = 2


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(images: np.ndarray, level: int = 1) -> list[bytes]:
    """Lossless PNG files (8-bit, no interlace) of ``images`` ``[N, H, W, C]`` uint8, ``C`` in
    1, 3, 4 (grayscale, RGB, RGBA).

    Every scanline uses the "Up" filter (the difference to the line above, computed for all
    images at once) and is deflated with zlib at ``level``: about twice as fast as Pillow's
    encoder at the same size. Any PNG decoder reads the result.
    """
    n, h, w, c = images.shape
    lines = images.reshape(n, h, w * c)
    raw = np.empty((n, h, w * c + 1), dtype=np.uint8)
    raw[:, :, 0] = _PNG_FILTER_UP
    raw[:, :1, 1:] = lines[:, :1]  # the line above the first one is zero
    np.subtract(lines[:, 1:], lines[:, :-1], out=raw[:, 1:, 1:])  # modulo 256
    head = _PNG_SIGNATURE + _png_chunk(
        b"IHDR", struct.pack(">IIBBBBB", w, h, 8, _PNG_COLOR_TYPES[c], 0, 0, 0)
    )
    tail = _png_chunk(b"IEND", b"")
    return [head + _png_chunk(b"IDAT", zlib.compress(image.tobytes(), level)) + tail for image in raw]


def field_array(pa: Any, f: FieldLayout, rows: torch.Tensor, png_level: int) -> Any:
    """The Arrow array of one field for one trajectory's rows ``[N, *shape]`` (``[N]`` for a
    scalar): ``Image`` structs of PNGs, plain values, or fixed-size lists of ``numel`` values."""
    n = int(rows.shape[0])
    if f.encoding == PNG:
        pngs = pa.array(encode_png(rows.numpy(), png_level), type=pa.binary())
        return pa.StructArray.from_arrays([pngs, pa.nulls(n, pa.string())], fields=list(image_struct(pa)))
    if rows.dtype == torch.bfloat16:
        rows = rows.to(torch.float32)
    values = np.ascontiguousarray(rows.numpy()).reshape(-1)
    flat = pa.array(values, type=pa.from_numpy_dtype(values.dtype))
    if f.encoding == SCALAR:
        return flat
    assert values.size == n * f.numel
    return pa.FixedSizeListArray.from_arrays(flat, f.numel)


def trajectory_table(
    pa: Any,
    schema_arrow: Any,
    layout: list[FieldLayout],
    record: Record,
    rows: dict[Key, torch.Tensor],
    png_level: int = 1,
    part: slice | None = None,
) -> Any:
    """The Arrow table of one trajectory's transitions ``part`` (default: all ``T * B``) in
    transition order, ``transition = step * B + env``."""
    T, B = record.num_steps, record.num_envs
    n = T * B
    start, stop, _ = (part or slice(None)).indices(n)
    flat = np.arange(start, stop)
    m = len(flat)
    arrays = [
        pa.array(np.full(m, record.trajectory_id, dtype=np.int64)),
        pa.array((flat // B).astype(np.int32)),
        pa.array((flat % B).astype(np.int32)),
        pa.repeat(pa.scalar(record.model_weights_id, pa.string()), m),
        pa.array(np.full(m, record.model_update_count, dtype=np.int64)),
        pa.repeat(pa.scalar(record.max_episode_length, pa.int64()), m),
        pa.array(np.full(m, T, dtype=np.int32)),
        pa.array(np.full(m, B, dtype=np.int32)),
    ]
    for f in layout:
        if f.encoding == EMPTY:
            continue
        data = rows[f.key]
        if int(data.shape[0]) != n:
            raise CorruptBufferError(
                f"{record.path}: {f.name} has {int(data.shape[0])} rows, expected {n} (T={T}, B={B})"
            )
        arrays.append(field_array(pa, f, data[start:stop], png_level))
    return pa.Table.from_arrays(arrays, schema=schema_arrow)


#: raw bytes of the transitions turned into one Arrow table at a time while exporting
_SLICE_BYTES = 1 << 20


def _check_out_path(out_path: str, overwrite: bool) -> str:
    if not isinstance(out_path, str | os.PathLike) or not os.fspath(out_path):
        raise InvalidArgumentError(f"out_path must be a file path, got {out_path!r}")
    out = os.path.abspath(os.fspath(out_path))
    if os.path.isdir(out):
        raise BufferDirectoryError(f"{out}: is a directory; give the path of the Parquet file to write")
    if os.path.lexists(out) and not overwrite:
        raise BufferDirectoryError(f"{out}: already exists; choose a new path or pass overwrite=True")
    with writing(out, "the Parquet file"):
        make_dirs(os.path.dirname(out))  # durable: the export is acknowledged when it returns
    return out


def export_parquet(
    source_path: str,
    out_path: str,
    *,
    progress: Progress | None = None,
    row_group_trajectories: int = 16,
    row_group_bytes: int = 4 << 20,
    compression: str = "zstd",
    image_fields: Collection[str] | None = None,
    png_compress_level: int = 1,
    overwrite: bool = False,
) -> ExportResult:
    """Write every trajectory of a buffer directory to one Parquet file, one row per transition.

    The source may be any buffer directory this library reads (``pt``, ``pkl`` or ``segment``,
    written by this library or by RLinf); rows are exported aligned (RLinf's extra rows are
    dropped) and checked against their checksums. Trajectories are streamed a few MiB of transitions
    at a time: memory holds one trajectory's mapped rows and about two row groups, whatever
    the size of the directory.

    Args:
        source_path: the buffer directory.
        out_path: the Parquet file to write (its parent directories are created).
        progress: ``progress(done, total)`` after each trajectory.
        row_group_trajectories: end a row group once this many trajectories ended in it.
        row_group_bytes: also end a row group once its Arrow data reaches this many bytes
            (a large trajectory then spans row groups; readers need not care).
        compression: Parquet codec: ``zstd``, ``snappy``, ``gzip``, ``brotli``, ``lz4`` or
            ``none`` (PNG bytes are already compressed; the codec matters for other fields).
        image_fields: dotted names of the fields to store as PNG (``None``: every ``uint8``
            field of per-step shape ``[H, W, C]`` with ``C`` in 1, 3, 4; empty: none).
        png_compress_level: zlib level of the PNG encoder, 0-9 (1: fast, lossless always).
        overwrite: replace an existing file at ``out_path`` (atomically).

    Returns:
        An :class:`ExportResult`.

    Raises:
        BufferNotFoundError, CorruptBufferError: the source is missing or damaged (no file is
            left at ``out_path``).
        BufferDirectoryError: ``out_path`` exists (without ``overwrite``) or is a directory.
        InvalidArgumentError: bad options.
        MissingDependencyError: pyarrow is not installed.
    """
    row_group_trajectories = check_int("row_group_trajectories", row_group_trajectories, 1)
    row_group_bytes = check_int("row_group_bytes", row_group_bytes, 1)
    if not isinstance(compression, str) or compression.lower() not in _COMPRESSIONS:
        raise InvalidArgumentError(f"compression must be one of {list(_COMPRESSIONS)}, got {compression!r}")
    if isinstance(png_compress_level, bool) or png_compress_level not in range(10):
        raise InvalidArgumentError(f"png_compress_level must be an int in 0..9, got {png_compress_level!r}")
    pa, pq = require_pyarrow()
    contents, schema = read_directory(source_path)
    layout = plan_layout(schema or Schema(), image_fields)
    out = _check_out_path(out_path, overwrite)
    records = contents.records
    total = len(records)
    description = describe(
        layout,
        total,
        sum(r.num_transitions for r in records),
        contents.fmt,
        WRITER if contents.written_by_us else "rlinf",
        contents.seed,
    )
    schema_arrow = arrow_schema(pa, layout, description)
    row_groups = 0
    rows_of = contextlib.closing(iter_directory_rows(contents.path, contents.fmt, records, schema))
    with writing(out, "the Parquet file"), atomic_file(out) as f, rows_of as trajectories:
        with pq.ParquetWriter(
            f,
            schema_arrow,
            compression=compression.lower(),
            use_dictionary=["model_weights_id"],
            write_statistics=list(META_COLUMNS),
        ) as writer:
            pending: list[Any] = []
            pending_bytes = 0

            def flush() -> None:
                nonlocal pending, pending_bytes, row_groups
                if pending:
                    table = pa.concat_tables(pending)
                    pending, pending_bytes = [], 0
                    writer.write_table(table, row_group_size=max(1, table.num_rows))
                    del table
                    pa.default_memory_pool().release_unused()
                    row_groups += 1

            finished = 0  # trajectories that end in the pending row group
            step = max(1, min(_SLICE_BYTES, row_group_bytes) // max(1, schema.row_bytes if schema else 1))
            done = 0  # (not enumerate: it would hold the previous rows while the next are read)
            for record, rows in trajectories:
                for start in range(0, record.num_transitions, step):
                    part = slice(start, start + step)
                    pending.append(
                        trajectory_table(pa, schema_arrow, layout, record, rows, png_compress_level, part)
                    )
                    pending_bytes += pending[-1].nbytes
                    if pending_bytes >= row_group_bytes:
                        flush()
                        finished = 0
                del rows
                done += 1
                finished += 1
                if finished >= row_group_trajectories:
                    flush()
                    finished = 0
                if progress is not None:
                    progress(done, total)
            flush()
    return ExportResult(
        source_path=contents.path,
        out_path=out,
        trajectories=total,
        transitions=description["transitions"],
        row_groups=row_groups,
        bytes=os.path.getsize(out),
        image_fields=[f.name for f in layout if f.encoding == PNG],
        source_format=contents.fmt,
    )


# -- import -------------------------------------------------------------------------------------


@dataclass
class ImportResult:
    """What :func:`import_parquet` wrote.

    Attributes:
        parquet_path: the file read.
        dest_path: the buffer directory written.
        trajectory_format: its format.
        trajectories: trajectories written; ``transitions``: their transitions.
        bytes: total size of the files in ``dest_path``.
        trajectory_ids: the ids, in index order (the ids of the file, kept).
    """

    parquet_path: str
    dest_path: str
    trajectory_format: str
    trajectories: int
    transitions: int
    bytes: int
    trajectory_ids: list[int] = field(default_factory=list)


@dataclass
class _ExportInfo:
    layout: list[FieldLayout]
    schema: Schema
    trajectories: int
    transitions: int
    seed: int | None


def _nonneg_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_description(pa: Any, path: str, arrow_schema_: Any) -> _ExportInfo:
    """Parse and check the metadata and columns of a file written by :func:`export_parquet`.

    Raises:
        InvalidArgumentError: the file has no :data:`METADATA_KEY` metadata (not an export).
        CorruptBufferError: the metadata is malformed, newer, or disagrees with the columns.
    """
    raw = (arrow_schema_.metadata or {}).get(METADATA_KEY.encode())
    if raw is None:
        raise InvalidArgumentError(
            f"{path}: is not a replay-buffer export (its Parquet metadata has no {METADATA_KEY!r} "
            "key); import_parquet reads only files written by export_parquet"
        )
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptBufferError(f"{path}: the {METADATA_KEY!r} metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CorruptBufferError(f"{path}: the {METADATA_KEY!r} metadata is not a JSON object")
    version = meta.get("format_version")
    if not _nonneg_int(version) or version < 1:
        raise CorruptBufferError(f"{path}: the metadata has format_version {version!r}, expected an int >= 1")
    if version > PARQUET_FORMAT_VERSION:
        raise CorruptBufferError(
            f"{path}: format_version {version} is newer than this library reads "
            f"({PARQUET_FORMAT_VERSION}); upgrade the library"
        )
    for key in ("trajectories", "transitions"):
        if not _nonneg_int(meta.get(key)):
            raise CorruptBufferError(
                f"{path}: the metadata has {key}={meta.get(key)!r}, expected an int >= 0"
            )
    fields = meta.get("fields")
    schema = schema_from_json(fields, f"{path}: metadata", CorruptBufferError)
    layout = []
    for key, spec in schema.items():
        name = key_name(key)
        encoding = fields[name].get("encoding")
        expected = plan_layout(Schema({key: spec}), [name] if encoding == PNG and is_image(spec) else [])
        if encoding != expected[0].encoding:
            raise CorruptBufferError(
                f"{path}: field {name!r} ({dtype_name(spec.dtype)}, shape {list(spec.row_shape)}) has "
                f"encoding {encoding!r}, expected {expected[0].encoding!r}"
            )
        stored = fields[name].get("stored_dtype")
        if encoding in (LIST, SCALAR) and stored != stored_dtype(spec.dtype):
            raise CorruptBufferError(
                f"{path}: field {name!r} has stored_dtype {stored!r}, expected {stored_dtype(spec.dtype)!r}"
            )
        layout.append(expected[0])
    present = {f.name: f.type for f in arrow_schema_}
    wanted = list(meta_columns(pa)) + [
        (f.name, f.arrow_type(pa, version)) for f in layout if f.encoding != EMPTY
    ]
    for name, want in wanted:
        got = present.get(name)
        if got is None:
            raise CorruptBufferError(f"{path}: column {name!r} is missing")
        if not _same_type(pa, got, want):
            raise CorruptBufferError(f"{path}: column {name!r} is {got}, expected {want}")
    seed = meta.get("source", {}).get("seed") if isinstance(meta.get("source"), dict) else None
    return _ExportInfo(
        layout=layout,
        schema=schema,
        trajectories=meta["trajectories"],
        transitions=meta["transitions"],
        seed=seed if _nonneg_int(seed) else None,
    )


def _same_type(pa: Any, got: Any, want: Any) -> bool:
    """Type equality that ignores the name of a list's value field (writers differ on it)."""
    if pa.types.is_fixed_size_list(want):
        return (
            pa.types.is_fixed_size_list(got)
            and got.list_size == want.list_size
            and got.value_type == want.value_type
        )
    return bool(got == want)


def contiguous_runs(
    pa: Any,
    pf: Any,
    path: str,
    batch_rows: int,
    column: str = "trajectory_id",
    what: str = "trajectory",
    writer: str = "export_parquet",
) -> Iterator[tuple[int, Any]]:
    """``(value, table)`` per run of rows sharing one integer ``column`` value (a trajectory's
    rows, an episode's), in file order, read in batches of rows, one row group at a time.

    Raises:
        CorruptBufferError: the rows of one value are not contiguous, or a null value (messages
            name the rows as ``what``; ``writer`` is what writes them in order).
    """
    current: int | None = None
    parts: list[Any] = []
    seen: set[int] = set()
    # one row group at a time: a batch spanning two groups would hold both in memory at once
    batches = (
        batch
        for group in range(pf.num_row_groups)
        for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[group])
    )
    for batch in batches:
        values = batch.column(column)
        if values.null_count:
            raise CorruptBufferError(f"{path}: {column} has null values")
        ids = values.to_numpy()
        starts = np.concatenate([[0], np.flatnonzero(np.diff(ids)) + 1]).tolist()
        ends = starts[1:] + [len(ids)]
        for start, end in zip(starts, ends, strict=True):
            tid = int(ids[start])
            if tid == current:
                parts.append(batch.slice(start, end - start))
                continue
            if current is not None:
                yield current, pa.Table.from_batches(parts)
            if tid in seen:
                raise CorruptBufferError(
                    f"{path}: the rows of {what} {tid} are not contiguous; rows must be ordered by "
                    f"{what} (as {writer} writes them)"
                )
            seen.add(tid)
            current, parts = tid, [batch.slice(start, end - start)]
    if current is not None:
        yield current, pa.Table.from_batches(parts)


def _constant(column: Any, name: str, where: str) -> Any:
    """The one value a per-trajectory column holds in every row of the trajectory."""
    values = column.unique()
    if len(values) != 1:
        raise CorruptBufferError(f"{where}{name} differs between the rows of one trajectory")
    return values[0].as_py()


def _first_bad_cell(idx: np.ndarray, cells: int) -> tuple[int, str] | None:
    """The smallest cell ``step * B + env`` in ``[0, cells)`` that ``idx`` (values in range)
    misses or repeats, with what is wrong; ``None`` if each cell appears exactly once.
    Memory is proportional to the rows, not to ``cells`` (which the file declares)."""
    if len(idx) == cells and np.array_equal(idx, np.arange(cells)):
        return None
    unique, counts = np.unique(idx, return_counts=True)
    candidates = []
    gaps = np.flatnonzero(unique != np.arange(len(unique)))
    if len(gaps):
        candidates.append((int(gaps[0]), "is missing"))
    elif len(unique) < cells:
        candidates.append((len(unique), "is missing"))
    repeated = np.flatnonzero(counts > 1)
    if len(repeated):
        i = int(repeated[0])
        candidates.append((int(unique[i]), f"appears {int(counts[i])} times"))
    return min(candidates) if candidates else None


def _decode_png(Image: Any, values: list[Any], f: FieldLayout, where: str) -> np.ndarray:
    H, W, C = f.spec.row_shape
    mode = _CHANNEL_MODES[C]
    out = np.empty((len(values), H, W, C), dtype=np.uint8)
    for i, data in enumerate(values):
        try:
            with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
                if im.size != (W, H) or im.mode != mode:
                    raise CorruptBufferError(
                        f"{where}{f.name} row {i} is a {im.size[0]}x{im.size[1]} {im.mode} image, "
                        f"expected {W}x{H} {mode}"
                    )
                out[i] = np.asarray(im).reshape(H, W, C)
        except CorruptBufferError:
            raise
        except Exception as exc:  # Pillow raises many kinds for damaged data
            raise CorruptBufferError(f"{where}{f.name} row {i} is not a valid PNG image ({exc})") from None
    return out


def _decode_field(pa: Any, Image: Any, f: FieldLayout, column: Any, n: int, where: str) -> torch.Tensor:
    """One field's column of one trajectory -> tensor ``[n, *shape]`` in its dtype."""
    shape = f.spec.row_shape
    if f.encoding == EMPTY:
        return torch.zeros((n, *shape), dtype=f.spec.dtype)
    array = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    if array.null_count:
        raise CorruptBufferError(f"{where}{f.name} has null values")
    if f.encoding == PNG:
        if pa.types.is_struct(array.type):  # an Image cell (format version 2 on); its path is unused
            array = array.field("bytes")
            if array.null_count:
                raise CorruptBufferError(f"{where}{f.name} has images without bytes")
        return torch.from_numpy(_decode_png(Image, array.to_pylist(), f, where))
    values = array if f.encoding == SCALAR else array.flatten()
    if values.null_count:
        raise CorruptBufferError(f"{where}{f.name} has null values")
    data = np.ascontiguousarray(values.to_numpy(zero_copy_only=False)).reshape(n, *shape)
    if not data.flags.writeable:  # a view of Arrow's buffer: tensors must own their memory
        data = data.copy()
    tensor = torch.from_numpy(data)
    return tensor.to(f.spec.dtype) if f.spec.dtype != tensor.dtype else tensor


def decode_trajectory(
    pa: Any, Image: Any, info: _ExportInfo, tid: int, table: Any, path: str
) -> dict[str, Any]:
    """A trajectory's file dict (RLinf's layout, aligned) from its rows in any order.

    Raises:
        CorruptBufferError: a ``(step, env)`` is missing, duplicated or out of range, a
            per-trajectory value differs between rows, or a field cannot be decoded.
    """
    where = f"{path}: trajectory {tid}: "
    for name in META_COLUMNS:
        if name != "max_episode_length" and table.column(name).null_count:
            raise CorruptBufferError(f"{where}{name} has null values")
    T = int(_constant(table.column("num_steps"), "num_steps", where))
    B = int(_constant(table.column("num_envs"), "num_envs", where))
    if T < 1 or B < 1:
        raise CorruptBufferError(f"{where}num_steps={T}, num_envs={B}; both must be >= 1")
    steps = table.column("step").to_numpy().astype(np.int64)
    envs = table.column("env").to_numpy().astype(np.int64)
    bad = (steps < 0) | (steps >= T) | (envs < 0) | (envs >= B)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CorruptBufferError(
            f"{where}row (step {steps[i]}, env {envs[i]}) is outside the trajectory's {T} steps x {B} envs"
        )
    idx = steps * B + envs
    problem = _first_bad_cell(idx, T * B)
    if problem is not None:
        i, what = problem
        raise CorruptBufferError(
            f"{where}(step {i // B}, env {i % B}) {what}; every (step, env) of its {T} steps x {B} "
            "envs must have exactly one row, and a trajectory's rows must be contiguous"
        )
    if not np.array_equal(idx, np.arange(T * B)):
        table = table.take(pa.array(np.argsort(idx, kind="stable")))
    weights = _constant(table.column("model_weights_id"), "model_weights_id", where)
    count = int(_constant(table.column("model_update_count"), "model_update_count", where))
    mel = _constant(table.column("max_episode_length"), "max_episode_length", where)
    n = T * B
    columns: dict[Key, torch.Tensor] = {}
    for f in info.layout:
        column = table.column(f.name) if f.encoding != EMPTY else None
        rows = _decode_field(pa, Image, f, column, n, where)
        columns[f.key] = rows.reshape(T, B, *f.spec.row_shape)
    return file_dict_from_columns(columns, mel, weights, count)


def _directory_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
    return total


def import_parquet(
    parquet_path: str,
    dest_path: str,
    *,
    trajectory_format: str = "pt",
    progress: Progress | None = None,
    batch_rows: int = 4096,
    overwrite: bool = False,
) -> ImportResult:
    """Rebuild a buffer directory from a Parquet file written by :func:`export_parquet`.

    Rows are grouped by ``trajectory_id`` (a trajectory's rows must be contiguous; within it
    any order), every ``(step, env)`` must be present exactly once, PNGs are decoded and dtypes
    and shapes restored from the metadata. The directory is assembled in a hidden sibling and
    renamed to ``dest_path`` only when complete. Trajectory ids, ``model_weights_id``,
    ``model_update_count`` and ``max_episode_length`` are kept; each trajectory gets a new uuid.

    Args:
        parquet_path: the Parquet file.
        dest_path: the buffer directory to create (must not exist, or be empty).
        overwrite: ``dest_path`` may also be a buffer directory, replaced atomically once the
            new one is complete (anything else there is refused).
        trajectory_format: ``"pt"``, ``"pkl"`` or ``"segment"``.
        progress: ``progress(done, total)`` after each trajectory.
        batch_rows: rows read at a time (memory holds one trajectory plus one batch).

    Returns:
        An :class:`ImportResult`.

    Raises:
        BufferNotFoundError: no such file.
        BufferDirectoryError: the destination exists and is not empty (without ``overwrite``)
            or is not a buffer directory.
        InvalidArgumentError: the file is not an export of this library, or bad options.
        CorruptBufferError: the file is damaged or incomplete (nothing is written).
        MissingDependencyError: pyarrow or Pillow is not installed.
    """
    fmt = formats.check_format(trajectory_format)
    batch_rows = check_int("batch_rows", batch_rows, 1)
    pa, pq = require_pyarrow()
    if not isinstance(parquet_path, str | os.PathLike) or not os.fspath(parquet_path):
        raise InvalidArgumentError(f"parquet_path must be a file path, got {parquet_path!r}")
    path = os.path.abspath(os.fspath(parquet_path))
    if not os.path.exists(path):
        raise BufferNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise BufferDirectoryError(f"{path}: is a directory; give the path of a Parquet file")
    try:
        pf = pq.ParquetFile(path)
    except pa.ArrowException as exc:
        raise CorruptBufferError(f"{path}: is not a readable Parquet file ({exc})") from None
    info = read_description(pa, path, pf.schema_arrow)
    Image = require_pillow() if any(f.encoding == PNG for f in info.layout) else None
    dest = output_directory(dest_path, replace_buffer=overwrite, argument="dest_path")
    ids: list[int] = []
    entries: list[dict[str, Any]] = []
    transitions = 0
    with writing(dest), destination_lock(dest, "import") as target, staged_directory(dest) as staging:
        store = SegmentStore(staging, info.schema) if fmt == formats.SEGMENT and info.schema else None
        try:
            try:
                for tid, table in contiguous_runs(pa, pf, path, batch_rows):
                    data = decode_trajectory(pa, Image, info, tid, table, path)
                    del table
                    try:
                        traj = align(data, where=f"{path}: trajectory {tid}: ")
                        info.schema.check(
                            Schema.of_columns(traj.columns), where=f"{path}: trajectory {tid}: "
                        )
                    except InvalidTrajectoryError as exc:
                        raise CorruptBufferError(str(exc)) from None
                    del data
                    record = Record.of_trajectory(tid, traj)
                    flat = traj.flat()
                    placed = place_records(
                        [record], lambda _tid, rows=flat: rows, staging, fmt, info.schema, store
                    )
                    entries.append(placed[tid].to_entry())
                    ids.append(tid)
                    transitions += record.num_transitions
                    del flat, traj
                    if progress is not None:
                        progress(len(ids), info.trajectories)
            except pa.ArrowException as exc:
                raise CorruptBufferError(f"{path}: cannot be read ({exc})") from None
            if store is not None:
                store.close()
            if (len(ids), transitions) != (info.trajectories, info.transitions):
                raise CorruptBufferError(
                    f"{path}: holds {len(ids)} trajectories and {transitions} transitions but its "
                    f"metadata says {info.trajectories} and {info.transitions}; the file is incomplete"
                )
            write_index(staging, entries)
            write_metadata(
                staging, fmt, entries, max(ids, default=-1) + 1, info.seed, info.schema if ids else None
            )
            target.claim()
            publish_directory(staging, dest)
        except BaseException:
            if store is not None:
                with contextlib.suppress(Exception):
                    store.close()
            raise
    return ImportResult(
        parquet_path=path,
        dest_path=dest,
        trajectory_format=fmt,
        trajectories=len(ids),
        transitions=transitions,
        bytes=_directory_bytes(dest),
        trajectory_ids=ids,
    )


__all__ = [
    "BINARY_PNG_VERSION",
    "HF_METADATA_KEY",
    "METADATA_KEY",
    "PARQUET_FORMAT_VERSION",
    "ExportResult",
    "ImportResult",
    "MissingDependencyError",
    "contiguous_runs",
    "encode_png",
    "export_parquet",
    "field_array",
    "hf_features",
    "image_struct",
    "import_parquet",
    "is_image",
    "meta_columns",
    "plan_layout",
    "require_pillow",
    "require_pyarrow",
]
