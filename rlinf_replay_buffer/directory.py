"""Reading whole buffer directories: :func:`read_directory` parses one into :class:`DirectoryContents`.

A buffer directory (an auto-save path or a checkpoint) holds:

* ``metadata.json`` (:mod:`.metadata`): format, counters, seed and field schema.
* ``trajectory_index.json`` and ``trajectory_index.journal`` (:mod:`.journal`): RLinf's index, its
  entries extended with this library's keys, and the entries appended since it was last rewritten.
* ``.rlinf-moving-out.json`` (:mod:`.moves`), only while a merge/split moves trajectories out:
  once the move's output is published, the ids it lists are no longer the directory's.
* one file per trajectory, ``trajectory_{id}_{model_weights_uuid}_{model_update_count}.{pt|pkl}``
  (:mod:`.naming`), or, in the ``segment`` format, ``seg-NNNNNN`` directories of rows.

Each index entry becomes a :class:`~.record.Record` (:func:`record_from_entry`). Directories written
by RLinf itself (either file-name shape, ``storage_format``, unreliable ``num_samples``, extra rows)
are read too: their files are opened to build the records (:func:`open_file_record`,
:func:`in_layout`). :func:`load_columns` reads the columns of a record's file. ``docs/format.md`` is
the full specification.
"""

from __future__ import annotations

import os
import uuid as uuidlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from . import formats
from .errors import (
    BufferDirectoryError,
    BufferNotFoundError,
    CorruptBufferError,
    CorruptDataWarning,
    InvalidTrajectoryError,
    UnsafeFileError,
)
from .formats import segment
from .integrity import check_entry_crc
from .journal import INDEX, IndexParts, read_index_parts
from .metadata import METADATA, read_metadata
from .moves import hidden_ids
from .naming import FILE_RE, Listing, checked_weights_id, list_trajectory_files, read_json, safe_file
from .record import Record
from .record_table import CANONICAL, RecordColumns, RecordTable
from .schema import Schema, combine, schema_from_json
from .trajectory import (
    MAX_INDEX_INT,
    Key,
    align,
    iter_columns,
    nest_columns,
    unflatten_rlinf,
)


@dataclass
class DirectoryContents:
    """A parsed buffer directory.

    Attributes:
        path: absolute path.
        fmt: the ``trajectory_format`` of its metadata.
        records: trajectories in index order (only the selected share when sharded): a
            :class:`~.record_table.RecordTable` when the index was read as columns, else a list.
        all_ids: every trajectory id the directory holds, in index order.
        counter: the next unused trajectory id (past every id present).
        seed: the seed recorded in metadata (``None`` if absent).
        written_by_us: the index carries this library's ``format_version``.
        journal_entries: how many entries came from the journal (not yet compacted).
        metadata: the raw metadata dict.
        index_current: ``trajectory_index.json`` is this library's, has a sidecar that matches
            it, and there was no journal entry to apply: rewriting it would change nothing.
    """

    path: str
    fmt: str
    records: Sequence[Record]
    all_ids: list[int]
    counter: int
    seed: int | None
    written_by_us: bool
    journal_entries: int
    metadata: dict[str, Any]
    index_current: bool = False


def check_directory(path: str) -> str:
    """Return the absolute path of an existing directory, or raise a clear error."""
    if not isinstance(path, str | os.PathLike) or not str(path):
        raise BufferNotFoundError(f"load path must be a directory path, got {path!r}")
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise BufferNotFoundError(f"{path}: no such directory")
    if not os.path.isdir(path):
        raise BufferDirectoryError(f"{path}: not a directory (point at the buffer directory)")
    return path


def is_buffer_directory(path: str) -> bool:
    """Whether ``path`` looks like a buffer directory (something is named ``metadata.json``:
    a FIFO or a link there is refused when it is read, never taken for "no buffer here")."""
    return os.path.lexists(os.path.join(path, METADATA))


def int_field(entry: dict[str, Any], key: str, where: str) -> int:
    """``entry[key]``, an int in ``[0, 2**48)``, or :class:`CorruptBufferError` naming ``where``."""
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_INDEX_INT:
        raise CorruptBufferError(f"{where}: index entry has {key}={value!r}, expected an int in [0, 2**48)")
    return value


def in_layout(
    data: dict[str, Any],
    where: str = "",
    num_envs: int | None = None,
    ref_rows: int | None = None,
    num_steps: int | None = None,
) -> tuple[dict[str, Any], bool]:
    """A trajectory file's dict with every column ``[rows, B, ...]``, and whether any column had
    to be reshaped: RLinf's ``save_checkpoint`` leaves some flat, see
    :func:`~.trajectory.unflatten_rlinf` (which the arguments are passed to). Call this, not
    :func:`~.trajectory.align` alone, on any file read from a buffer directory.

    Raises:
        InvalidTrajectoryError: a column of a flattened file fits no layout.
    """
    raw = iter_columns(data, where=where)
    cols = unflatten_rlinf(raw, num_envs, ref_rows, num_steps, where=where)
    changed = any(cols[k] is not v for k, v in raw.items())
    return (nest_columns(data, cols) if changed else data), changed


def open_file_record(
    path: str, name: str, tid: int, fmt: str, entry: dict[str, Any]
) -> tuple[Record, Schema]:
    """Build a record by reading the file itself (for directories RLinf wrote)."""
    fpath = safe_file(path, name)
    data = formats.read(fpath, name.rsplit(".", 1)[1], mmap=True)
    where = f"{fpath}: "
    if data.get("model_weights_id") is not None:  # it becomes part of file names: check it first
        checked_weights_id(data["model_weights_id"], fpath)
    # RLinf's entry: shape is that of prev_logprobs (else rewards), which its checkpoint keeps in
    # layout; an index that agrees with neither is not trusted (the file alone decides)
    num_envs, ref_rows = _index_shape(entry)
    refs = (data.get("prev_logprobs"), data.get("rewards"))
    shapes = [list(t.shape) for t in refs if isinstance(t, torch.Tensor)]
    if "num_steps" in entry or entry.get("shape") not in shapes:
        num_envs = ref_rows = None
    try:
        layout, flattened = in_layout(data, where, num_envs, ref_rows)
        traj = align(layout, where=where)
    except InvalidTrajectoryError as exc:
        raise CorruptBufferError(str(exc)) from None
    schema = Schema.of_columns(traj.columns)
    weights = data.get("model_weights_id") or entry.get("model_weights_id") or traj.model_weights_id
    checked_weights_id(weights, fpath)
    count = entry.get("model_update_count", data.get("model_update_count"))
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        count = traj.model_update_count
    record = Record(
        trajectory_id=tid,
        num_steps=traj.num_steps,
        num_envs=traj.num_envs,
        max_episode_length=traj.max_episode_length
        if traj.max_episode_length is not None
        else entry.get("max_episode_length"),
        model_weights_id=weights,
        model_update_count=int(count),
        uuid=str(entry.get("uuid") or uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"{path}/{name}")),
        shape=[int(d) for d in traj.columns[("rewards",)].shape],
        directory=path,
        file=name,
        checksum=check_entry_crc(entry.get("crc32"), fpath),
        rlinf_flat=flattened,
    )
    return record, schema


def _index_shape(entry: dict[str, Any]) -> tuple[int | None, int | None]:
    """``(B, T')`` from an index entry's ``shape`` (``None`` for what it does not tell)."""
    shape = entry.get("shape")
    if not isinstance(shape, list | tuple) or len(shape) < 2:
        return None, None
    rows, envs = shape[0], shape[1]
    ok = [isinstance(d, int) and not isinstance(d, bool) and 0 < d < MAX_INDEX_INT for d in (rows, envs)]
    return (envs if ok[1] else None), (rows if ok[0] and ok[1] else None)


def record_from_entry(path: str, entry: dict[str, Any], name: str, where: str = "") -> Record:
    """The :class:`Record` of one index entry of the directory ``path`` (file ``name``); a
    malformed entry is a :class:`CorruptBufferError` naming ``where`` (default: the index)."""
    where = where or os.path.join(path, INDEX)
    tid = int_field(entry, "trajectory_id", where)
    shape = entry.get("shape")
    if not isinstance(shape, list) or len(shape) < 2:
        raise CorruptBufferError(f"{where}: trajectory {tid} has shape {shape!r}")
    weights = checked_weights_id(entry.get("model_weights_uuid"), f"{where}: trajectory {tid}")
    return Record(
        trajectory_id=tid,
        num_steps=int_field(entry, "num_steps", where),
        num_envs=int_field(entry, "num_envs", where),
        max_episode_length=entry.get("max_episode_length"),
        model_weights_id=weights,
        model_update_count=int_field(entry, "model_update_count", where),
        uuid=str(entry.get("uuid", "")),
        shape=[int(d) for d in shape],
        directory=path,
        file=name,
        checksum=check_entry_crc(entry.get("crc32"), f"{where}: trajectory {tid}"),
        rlinf_flat=entry.get("rlinf_flat") is True,
    )


def schema_of_segment(path: str, name: Any) -> Schema:
    """The columns segment ``name`` of the directory ``path`` describes (its ``segment.json``),
    for a directory whose ``metadata.json`` has no field list yet.

    Raises:
        CorruptBufferError, UnsafeFileError: naming the file.
    """
    if not isinstance(name, str) or not segment.SEGMENT_RE.match(name):
        raise CorruptBufferError(f"{os.path.join(path, INDEX)}: names segment {name!r} (expected seg-NNNNNN)")
    meta_path = os.path.join(path, name, segment.SEGMENT_META)
    if os.path.islink(os.path.join(path, name)) or os.path.islink(meta_path):
        raise UnsafeFileError(f"{meta_path}: is a symbolic link; refusing to read it")
    columns = read_json(meta_path, segment.SEGMENT_META) if os.path.exists(meta_path) else None
    if not isinstance(columns, dict) or not isinstance(columns.get("columns"), list):
        raise CorruptBufferError(
            f"{path}: neither {METADATA} nor {meta_path} lists the buffer's fields; the directory "
            "cannot be read"
        )
    fields = {
        c.get("name"): {"dtype": c.get("dtype"), "shape": c.get("shape")}
        for c in columns["columns"]
        if isinstance(c, dict)
    }
    return schema_from_json(fields, meta_path, CorruptBufferError)


def _segment_dir_present(path: str, name: str) -> bool:
    """Whether segment ``name`` of the directory ``path`` exists (a link is refused)."""
    seg_dir = os.path.join(path, name)
    if os.path.islink(seg_dir):
        raise UnsafeFileError(f"{seg_dir}: is a symbolic link; refusing to read it")
    return os.path.isdir(seg_dir)


def _missing_segment(path: str, tid: Any, name: str) -> BufferNotFoundError:
    return BufferNotFoundError(
        f"{path}: the index lists trajectory {tid} in segment {name}, which is missing; "
        "restore it or repair the directory with the verify tool"
    )


def _segment_schema(path: str, meta: dict[str, Any], first_name: Any) -> Schema | None:
    """The schema of a ``segment`` directory: its metadata's fields, or (``first_name``: the
    segment of its first selected trajectory, ``None`` if there is none) that segment's."""
    schema = schema_from_json(meta.get("fields"), os.path.join(path, METADATA), CorruptBufferError)
    if first_name is not None and not schema:
        # metadata.json is refreshed at flush/close: a crash before the first one leaves it
        # without fields, but every segment describes its own columns
        schema = schema_of_segment(path, first_name)
    return schema


def _segment_records(
    path: str, selected: list[dict[str, Any]], require_files: bool, seen: dict[str, bool]
) -> list[Record]:
    """Records of a ``segment`` directory: index entries naming ``(segment, row)``; ``seen``
    (segment name -> its directory exists) is filled as segments are checked, once each."""
    where = os.path.join(path, INDEX)
    records = []
    for entry in selected:
        tid = entry["trajectory_id"]
        name, row = entry.get("file"), entry.get("row")
        if not isinstance(name, str) or not segment.SEGMENT_RE.match(name):
            raise CorruptBufferError(
                f"{where}: trajectory {tid} names segment {name!r} (expected seg-NNNNNN)"
            )
        if not isinstance(row, int) or isinstance(row, bool) or not 0 <= row < MAX_INDEX_INT:
            raise CorruptBufferError(f"{where}: trajectory {tid} has row {row!r}")
        present = seen.get(name)
        if present is None:
            present = seen[name] = _segment_dir_present(path, name)
        if not present:
            if require_files:
                raise _missing_segment(path, tid, name)
            continue
        records.append(replace(record_from_entry(path, entry, name, where), row=row))
    return records


def _file_records(
    path: str,
    fmt: str,
    ours: bool,
    selected: list[dict[str, Any]],
    listing: Listing,
    require_files: bool,
    skip_corrupt: bool,
    progress: Callable[[int, int], None] | None,
) -> tuple[list[Record], Schema | None]:
    """Records of ``pt``/``pkl`` index entries (``listing``: the directory's names), and the
    schema of the files opened to build them (RLinf's entries)."""
    index_path = os.path.join(path, INDEX)
    records: list[Record] = []
    schema: Schema | None = None
    for done, entry in enumerate(selected, 1):
        if progress is not None and (done % 256 == 0 or done == len(selected)):
            progress(done, len(selected))
        tid = entry["trajectory_id"]
        named = entry.get("file")
        if named is not None:
            if not isinstance(named, str):
                raise CorruptBufferError(f"{path}: trajectory {tid} names file {named!r}")
            if not listing.is_regular_file(named):  # a listed regular file needs no further check
                safe_file(path, named)
            names = [named] if listing.holds_file(named, tid) else []
        else:
            names = listing.by_id().get(tid, [])
        if not names:
            if require_files:
                raise _missing_file(path, tid, fmt)
            continue
        if len(names) > 1:
            raise CorruptBufferError(
                f"{path}: several files claim trajectory {tid}: {sorted(names)}; keep one"
            )
        name = names[0]
        if ours and named is not None and "num_steps" in entry:
            records.append(record_from_entry(path, entry, name, index_path))  # name: checked above
        else:
            try:
                record, file_schema = open_file_record(path, name, tid, fmt, entry)
            except UnsafeFileError:
                raise
            except CorruptBufferError as exc:
                if not skip_corrupt:
                    raise
                warnings.warn(f"skipped trajectory {tid}: {exc}", CorruptDataWarning, stacklevel=3)
                continue
            schema = combine(schema, file_schema, f"{path}/{name}: ", CorruptBufferError)
            records.append(record)
    return records, schema


def _missing_file(path: str, tid: Any, fmt: str) -> BufferNotFoundError:
    return BufferNotFoundError(
        f"{path}: the index lists trajectory {tid} but its file "
        f"(trajectory_{tid}_*.{fmt}) is missing; restore it or repair the directory "
        "with the verify tool"
    )


def _entry_ids(entries: list[dict[str, Any]]) -> list[int]:
    """The ids of index entries (-1 for a bad one)."""
    return [e["trajectory_id"] if isinstance(e.get("trajectory_id"), int) else -1 for e in entries]


def _check_ids(path: str, ids: list[int]) -> None:
    if len(set(ids)) != len(ids) or min(ids, default=0) < 0:
        raise CorruptBufferError(f"{path}: the index lists a trajectory id twice or a bad id")


def read_directory(
    path: str,
    share: tuple[int, int] = (0, 1),
    require_files: bool = True,
    skip_corrupt: bool = False,
    progress: Callable[[int, int], None] | None = None,
    listing: Listing | None = None,
) -> tuple[DirectoryContents, Schema | None]:
    """Parse a buffer directory (ours or RLinf's) and the schema of its trajectories.

    When ``trajectory_index.json`` has a sidecar that matches it (:mod:`.index_columns`), its
    entries are read as columns and ``records`` is a :class:`~.record_table.RecordTable`
    (records are built as they are asked for); otherwise the JSON index is parsed and
    ``records`` is a list. Both give the same records, and the same errors.

    Args:
        path: the directory.
        share: ``(rank, world_size)``: keep index positions ``rank, rank + world_size, ...``.
        require_files: raise if a selected trajectory's file is missing.
        skip_corrupt: leave out (with a :class:`CorruptDataWarning`) trajectories whose file
            must be opened to be indexed (RLinf's directories) and turns out unreadable.
        progress: ``progress(done, total)`` as index entries are resolved.
        listing: the directory's names as just listed (default: it is listed here).

    Returns:
        The parsed contents and the schema (``None`` when no trajectory was selected).

    Raises:
        BufferNotFoundError, CorruptBufferError, UnsafeFileError: with the file named.
    """
    path = check_directory(path)
    meta = read_metadata(path)
    fmt = meta.get("trajectory_format", meta.get("storage_format"))
    parts = read_index_parts(path, columns=require_files)
    moved = hidden_ids(path)  # a merge/split moved them out; its release was cut short
    if parts.columns is not None:
        found = _read_columns(path, meta, fmt, parts, moved, share, skip_corrupt, progress, listing)
        if found is not None:
            return found
        parts = read_index_parts(path, columns=False)  # the JSON index, which reports the problem
    entries = parts.entries
    if moved:
        entries = [e for e in entries if e.get("trajectory_id") not in moved]
    if not entries and not os.path.exists(os.path.join(path, INDEX)):
        files_present = list_trajectory_files(path)
        if files_present:
            raise BufferNotFoundError(
                f"{path}: {INDEX} is missing but trajectory files are present; rebuild the index "
                "with the verify tool (--repair)"
            )
    listing = listing or Listing(path)
    ids = _entry_ids(entries)
    _check_ids(path, ids)
    rank, world = share
    selected = entries[rank::world]
    records: list[Record]
    if fmt == formats.SEGMENT:
        schema = _segment_schema(path, meta, selected[0].get("file") if selected else None)
        records = _segment_records(path, selected, require_files, {})
        schema = schema if records else None
        if progress is not None:
            progress(len(selected), len(selected))
    else:
        records, schema = _file_records(
            path, fmt, parts.ours, selected, listing, require_files, skip_corrupt, progress
        )
    return _contents(path, fmt, meta, parts, records, ids, listing, schema)


def _contents(
    path: str,
    fmt: str,
    meta: dict[str, Any],
    parts: IndexParts,
    records: Sequence[Record],
    ids: list[int],
    listing: Listing,
    schema: Schema | None,
    hidden: bool = False,
) -> tuple[DirectoryContents, Schema | None]:
    """The parsed directory, once its records are known (for ``pt``/``pkl`` without a
    schema from opened files, the newest file gives it; ``hidden``: the index lists
    trajectories a move took out)."""
    if records and schema is None and fmt != formats.SEGMENT:
        newest = records[-1]
        data = formats.read(safe_file(path, newest.file or ""), newest.fmt or fmt, mmap=True)
        where = f"{newest.path}: "
        try:
            layout, _ = in_layout(data, where, newest.num_envs, num_steps=newest.num_steps)
            schema = Schema.of_columns(align(layout, where=where).columns)
        except InvalidTrajectoryError as exc:
            raise CorruptBufferError(str(exc)) from None
    counter = max(
        [max(ids, default=-1) + 1, listing.max_file_id() + 1]
        + [meta["trajectory_counter"]] * isinstance(meta.get("trajectory_counter"), int)
    )
    seed = meta.get("seed") if isinstance(meta.get("seed"), int) else None
    contents = DirectoryContents(
        path=path,
        fmt=fmt,
        records=records,
        all_ids=ids,
        counter=counter,
        seed=seed,
        written_by_us=parts.ours,
        journal_entries=parts.journal_entries,
        metadata=meta,
        index_current=parts.columns is not None and not parts.journal_entries and not hidden,
    )
    return contents, schema


# -- the index as columns ------------------------------------------------------------------------
def _fits_format(columns: RecordColumns, fmt: str) -> RecordColumns | None:
    """``columns`` as the JSON index's reader would take them in a directory of format
    ``fmt`` (rows only for segments), or ``None`` if a name does not fit the format (the
    JSON index is then read, and reports it)."""
    names = columns.file_names
    if fmt == formats.SEGMENT:
        fits = (
            bool((columns.rows >= 0).all())
            and bool((columns.files != CANONICAL).all())
            and all(segment.SEGMENT_RE.match(n) for n in names)
        )
        return columns if fits else None
    ids, codes = columns.ids, columns.files
    for i in np.flatnonzero(codes != CANONICAL).tolist():
        m = FILE_RE.match(names[int(codes[i])])
        if m is None or int(m.group(1)) != int(ids[i]):
            return None
    return replace(columns, rows=np.full(len(ids), -1, dtype=np.int64))


def _read_columns(
    path: str,
    meta: dict[str, Any],
    fmt: str,
    parts: IndexParts,
    moved: set[int],
    share: tuple[int, int],
    skip_corrupt: bool,
    progress: Callable[[int, int], None] | None,
    listing: Listing | None,
) -> tuple[DirectoryContents, Schema | None] | None:
    """:func:`read_directory` of an index held as columns (``parts.columns``, all files
    required), or ``None`` if they do not fit the directory's format."""
    assert parts.columns is not None and parts.kept is not None
    columns = _fits_format(parts.columns, fmt)
    if columns is None:
        return None
    table = RecordTable(path, columns)
    kept, extras = parts.kept, parts.entries
    if moved:
        kept = kept & ~np.isin(table.ids, np.array(sorted(moved), dtype=np.int64))
        extras = [e for e in extras if e.get("trajectory_id") not in moved]
    rows = np.flatnonzero(kept)
    extra_ids = _entry_ids(extras)
    _check_ids(path, extra_ids)  # unique among themselves; the journal adds no listed id
    ids = table.ids[rows].tolist() + extra_ids
    rank, world = share
    picked = np.arange(rank, len(ids), world)
    selected = table.take(rows[picked[picked < len(rows)]])
    selected_extras = [extras[p] for p in (picked[picked >= len(rows)] - len(rows)).tolist()]
    listing = listing or Listing(path)
    if fmt == formats.SEGMENT:
        first = (
            selected.file_name(0)
            if len(selected)
            else (selected_extras[0].get("file") if selected_extras else None)
        )
        schema = _segment_schema(path, meta, first)
        seen = _check_segments(path, selected)
        extra_records = _segment_records(path, selected_extras, True, seen)
        schema = schema if len(selected) or extra_records else None
    else:
        _check_files(path, fmt, selected, listing)
        extra_records, schema = _file_records(
            path, fmt, parts.ours, selected_extras, listing, True, skip_corrupt, None
        )
    if progress is not None and len(picked):
        progress(len(picked), len(picked))
    records: Sequence[Record] = selected
    if extra_records:
        try:
            records = RecordTable.concat([selected, RecordTable.of_records(path, extra_records)])
        except ValueError:  # a journal entry the columns cannot hold (a non-ASCII uuid)
            records = [*selected, *extra_records]
    return _contents(path, fmt, meta, parts, records, ids, listing, schema, hidden=bool(moved))


def _check_files(path: str, fmt: str, table: RecordTable, listing: Listing) -> None:
    """Raise as :func:`_file_records` would for the first record of ``table`` whose file is
    not a regular file here (its names fit the naming rule and its ids already)."""
    names = table.file_names()
    ids = table.ids
    for i in listing.missing(names):
        safe_file(path, names[i])
        if not listing.holds_file(names[i], int(ids[i])):
            raise _missing_file(path, int(ids[i]), fmt)


def _check_segments(path: str, table: RecordTable) -> dict[str, bool]:
    """Raise as :func:`_segment_records` would if a segment of ``table``'s records is missing
    or a link; returns the segments checked (all present)."""
    seen: dict[str, bool] = {}
    codes = table.columns.files
    _, first = np.unique(codes, return_index=True)
    for i in np.sort(first).tolist():
        name = table.file_name(i)
        if not _segment_dir_present(path, name):
            raise _missing_segment(path, int(table.ids[i]), name)
        seen[name] = True
    return seen


def load_columns(
    record: Record,
    mmap: bool = True,
    max_bytes: int | None = None,
    check: Callable[[int], None] | None = None,
) -> dict[Key, torch.Tensor]:
    """The raw columns ``[rows, B, ...]`` of a record's file (extra rows not yet dropped).

    Columns RLinf's ``save_checkpoint`` left flat (``[rows * B, ...]``) come back reshaped
    (:func:`~.trajectory.unflatten_rlinf`, with the record's ``B`` and ``T``). ``max_bytes``
    and ``check`` (``pt`` only) go to :func:`.formats.read`.
    """
    path = safe_file(record.directory or "", record.file or "")
    try:
        data = formats.read(path, record.fmt or "pt", mmap=mmap, max_bytes=max_bytes, check=check)
    except FileNotFoundError:
        raise BufferNotFoundError(
            f"{path}: the file of trajectory {record.trajectory_id} has disappeared; restore it "
            "or reload the buffer directory"
        ) from None
    try:
        cols = iter_columns(data, where=f"{path}: ")
        for key, value in cols.items():
            if not isinstance(value, torch.Tensor):
                raise CorruptBufferError(f"{path}: {'.'.join(key)} is not a tensor")
        cols = unflatten_rlinf(cols, record.num_envs, num_steps=record.num_steps, where=f"{path}: ")
    except InvalidTrajectoryError as exc:
        raise CorruptBufferError(str(exc)) from None
    if ("rewards",) not in cols or int(cols[("rewards",)].shape[0]) != record.num_steps:
        raise CorruptBufferError(
            f"{path}: its rewards do not have the {record.num_steps} rows the index records"
        )
    return cols
