"""Buffer directories on disk: file naming, ``metadata.json``, the trajectory index and its journal.

A buffer directory (an auto-save path or a checkpoint) holds:

* ``metadata.json``: format, counters, seed and field schema (``format_version`` 1).
* ``trajectory_index.json``: RLinf's index (``trajectory_index`` + ``trajectory_id_list``), each
  entry extended with this library's keys; rewritten atomically as a whole at compaction.
* ``trajectory_index.journal``: one JSON entry per line, appended as trajectories are written
  between compactions, so persisting the index costs O(1) per trajectory.
* one file per trajectory, ``trajectory_{id}_{model_weights_uuid}_{model_update_count}.{pt|pkl}``.

Directories written by RLinf itself (either file-name shape, ``storage_format``, unreliable
``num_samples``, extra rows) are read too. ``docs/format.md`` is the full specification.
"""

from __future__ import annotations

import errno
import json
import os
import re
import uuid as uuidlib
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

import torch

from . import formats
from .errors import (
    BufferDirectoryError,
    BufferNotFoundError,
    CorruptBufferError,
    CorruptDataWarning,
    InvalidTrajectoryError,
    UnsafeFileError,
    unreadable,
)
from .formats import segment
from .fsio import atomic_write_json, fsync_dir
from .integrity import check_entry_crc
from .schema import Schema, combine, schema_from_json
from .trajectory import (
    AlignedTrajectory,
    Key,
    align,
    check_weights_id,
    iter_columns,
    nest_columns,
    unflatten_rlinf,
)

FORMAT_VERSION = 1
METADATA = "metadata.json"
INDEX = "trajectory_index.json"
INDEX_RLINF_MERGE = "trajector_index.json"  # sic: also written by RLinf's merge tool
JOURNAL = "trajectory_index.journal"
#: ``trajectory_{id}_{rest}.{pt|pkl}``; ``rest`` may be empty (RLinf names ``trajectory_3_.pt`` a
#: trajectory whose ``model_weights_id`` is ``""``)
FILE_RE = re.compile(r"^trajectory_(\d+)_([A-Za-z0-9.\-_]*)\.(pt|pkl)\Z")


def trajectory_file_name(trajectory_id: int, weights_id: str, update_count: int, fmt: str) -> str:
    """``trajectory_{trajectory_id}_{model_weights_uuid}_{model_update_count}.{fmt}``."""
    return f"trajectory_{trajectory_id}_{weights_id}_{update_count}.{fmt}"


def rlinf_weights_id(file_name: str) -> str:
    """What RLinf must read as ``model_weights_id`` to rebuild ``file_name`` from its id."""
    m = FILE_RE.match(file_name)
    if m is None:
        raise ValueError(f"{file_name!r} is not a trajectory file name")
    return m.group(2)


@dataclass
class Record:
    """What the index knows of one trajectory.

    Attributes:
        trajectory_id: unique, increasing id.
        num_steps: ``T`` (aligned rows); ``num_envs``: ``B``.
        model_weights_id: the weights uuid; ``model_update_count``: policy updates at rollout.
        uuid: this trajectory's own uuid.
        directory: absolute directory of its file, or ``None`` while it lives only in memory.
        file: file name inside ``directory`` (``None`` while memory-only).
        shape: shape of ``rewards`` ``[T, B, ...]``.
        row: for the ``segment`` format, the first row of the trajectory in segment ``file``.
        checksum: CRC-32 of the file (``pt``/``pkl``) or of the rows (``segment``), see
            :mod:`.integrity`; ``None`` for data written without one (RLinf's directories).
        rlinf_flat: the file holds RLinf's flattened checkpoint layout (some columns
            ``[rows * B, ...]``, see :func:`~.trajectory.unflatten_rlinf`): readable here, but
            written into a checkpoint from its rows, never linked or copied. Recorded in the
            index entry (``"rlinf_flat": true``) of a directory that links such a file.
    """

    trajectory_id: int
    num_steps: int
    num_envs: int
    max_episode_length: int | None
    model_weights_id: str
    model_update_count: int
    uuid: str
    shape: list[int]
    directory: str | None = None
    file: str | None = None
    row: int | None = None
    checksum: int | None = None
    rlinf_flat: bool = False

    @property
    def num_transitions(self) -> int:
        """``T * B``."""
        return self.num_steps * self.num_envs

    @property
    def path(self) -> str | None:
        """Absolute path of the trajectory file, if it has one."""
        if self.directory is None or self.file is None:
            return None
        return os.path.join(self.directory, self.file)

    @property
    def fmt(self) -> str | None:
        """``"pt"`` or ``"pkl"`` from the file name, ``"segment"`` for rows in a segment."""
        if self.file is None:
            return None
        return "segment" if self.row is not None else self.file.rsplit(".", 1)[1]

    def canonical_name(self, fmt: str) -> str:
        """The file name this library gives the trajectory in format ``fmt``."""
        return trajectory_file_name(self.trajectory_id, self.model_weights_id, self.model_update_count, fmt)

    def to_entry(self, file: str | None = None) -> dict[str, Any]:
        """The index entry: RLinf's keys plus this library's.

        ``model_weights_id`` is written as the part of the file name between the id and the
        extension (``{uuid}_{update_count}`` for the names this library gives), so that RLinf,
        which opens ``trajectory_{id}_{model_weights_id}.{fmt}``, finds the file.
        """
        name = file or self.file
        if name is None:
            raise ValueError("a memory-only record has no index entry")
        if self.row is not None:
            entry = {
                **self._common_entry(),
                "model_weights_id": self.model_weights_id,
                "file": name,
                "row": self.row,
            }
        else:
            entry = {**self._common_entry(), "model_weights_id": rlinf_weights_id(name), "file": name}
        if self.checksum is not None:
            entry["crc32"] = self.checksum
        if self.rlinf_flat:
            entry["rlinf_flat"] = True
        return entry

    def _common_entry(self) -> dict[str, Any]:
        return {
            "num_samples": self.num_transitions,
            "trajectory_id": self.trajectory_id,
            "max_episode_length": self.max_episode_length,
            "shape": list(self.shape),
            "model_weights_uuid": self.model_weights_id,
            "model_update_count": self.model_update_count,
            "uuid": self.uuid,
            "num_steps": self.num_steps,
            "num_envs": self.num_envs,
        }

    @classmethod
    def of_trajectory(cls, tid: int, traj: AlignedTrajectory, uid: str | None = None) -> Record:
        """A memory-only record for a freshly added trajectory."""
        rewards = traj.columns[("rewards",)]
        return cls(
            trajectory_id=tid,
            num_steps=traj.num_steps,
            num_envs=traj.num_envs,
            max_episode_length=traj.max_episode_length,
            model_weights_id=traj.model_weights_id,
            model_update_count=traj.model_update_count,
            uuid=uid or str(uuidlib.uuid4()),
            shape=[int(d) for d in rewards.shape],
        )


@dataclass
class DirectoryContents:
    """A parsed buffer directory.

    Attributes:
        path: absolute path.
        fmt: the ``trajectory_format`` of its metadata.
        records: trajectories in index order (only the selected share when sharded).
        all_ids: every trajectory id the directory holds, in index order.
        counter: the next unused trajectory id (past every id present).
        seed: the seed recorded in metadata (``None`` if absent).
        written_by_us: the index carries this library's ``format_version``.
        journal_entries: how many entries came from the journal (not yet compacted).
        metadata: the raw metadata dict.
    """

    path: str
    fmt: str
    records: list[Record]
    all_ids: list[int]
    counter: int
    seed: int | None
    written_by_us: bool
    journal_entries: int
    metadata: dict[str, Any]


def refuse_link_out(path: str) -> None:
    """Raise :class:`UnsafeFileError` if ``path`` is a symbolic link leading out of its directory."""
    if os.path.islink(path):
        real = os.path.realpath(path)
        if os.path.dirname(real) != os.path.realpath(os.path.dirname(path)):
            raise UnsafeFileError(
                f"{path}: links outside the buffer directory (to {real}); refusing to read it"
            )


def _read_json(path: str, what: str) -> Any:
    refuse_link_out(path)
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise
    except PermissionError as exc:
        raise unreadable(path, exc) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptBufferError(
            f"{path}: {what} is not valid JSON ({exc}); restore it from a copy or rebuild the "
            "directory with the verify tool"
        ) from None


def checked_weights_id(value: Any, where: str) -> str:
    """A ``model_weights_id`` read from disk, refused if it could not be part of a file name."""
    try:
        return check_weights_id(value)
    except InvalidTrajectoryError as exc:
        raise UnsafeFileError(f"{where}: {exc}") from None


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
    """Whether ``path`` looks like a buffer directory (it has ``metadata.json``)."""
    return os.path.isfile(os.path.join(path, METADATA))


def list_trajectory_files(path: str, regular: set[str] | None = None) -> dict[int, list[str]]:
    """Trajectory files in ``path`` by id (names that match the naming rule only).

    ``regular``, if given, receives the names that are not symbolic links.
    """
    found: dict[int, list[str]] = {}
    with os.scandir(path) as it:
        for entry in it:
            m = FILE_RE.match(entry.name)
            if m:
                found.setdefault(int(m.group(1)), []).append(entry.name)
                if regular is not None and not entry.is_symlink():
                    regular.add(entry.name)
    return found


def safe_file(directory: str, name: str, regular: set[str] | None = None) -> str:
    """Path of ``name`` in ``directory``; refuse names or links that lead outside it.

    ``regular``: names just listed as non-links in ``directory`` (from
    :func:`list_trajectory_files`), which need no further check; any other name is resolved.
    Reading a file checks it again, so a swap after listing is still caught.
    """
    if not FILE_RE.match(name) or os.sep in name or (os.altsep and os.altsep in name):
        raise UnsafeFileError(f"{directory}: index names file {name!r}, which is not a trajectory file")
    path = os.path.join(directory, name)
    if regular is not None and name in regular:
        return path
    real = os.path.realpath(path)
    if os.path.dirname(real) != os.path.realpath(directory):
        raise UnsafeFileError(f"{path}: links outside the buffer directory (to {real}); refusing to read it")
    return path


def read_metadata(path: str) -> dict[str, Any]:
    """Parse ``metadata.json``; check its format and version."""
    meta_path = os.path.join(path, METADATA)
    if not os.path.exists(meta_path):
        raise BufferNotFoundError(
            f"{path}: no {METADATA}; this is not a replay buffer directory (expected "
            f"{METADATA}, {INDEX} and trajectory_*.pt|pkl files)"
        )
    meta = _read_json(meta_path, METADATA)
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
    return meta


def parse_journal(path: str) -> tuple[list[dict[str, Any]], list[int], bool]:
    """The journal's entries, the numbers of its bad lines, and whether its last line is torn.

    A torn last line (an append a crash interrupted, without its newline) is not a bad line.
    """
    jpath = os.path.join(path, JOURNAL)
    if not os.path.lexists(jpath):
        return [], [], False
    if os.path.islink(jpath):
        raise UnsafeFileError(f"{jpath}: is a symbolic link; the journal must be a regular file")
    try:
        with open(jpath, "rb") as f:
            lines = f.read().split(b"\n")
    except PermissionError as exc:
        raise unreadable(jpath, exc) from None
    entries: list[dict[str, Any]] = []
    bad: list[int] = []
    torn = False
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            entry = None
        if isinstance(entry, dict):
            entries.append(entry)
        elif not any(rest.strip() for rest in lines[i + 1 :]):
            torn = True  # the last line: an interrupted append
        else:
            bad.append(i + 1)
    return entries, bad, torn


def _read_journal(path: str) -> list[dict[str, Any]]:
    entries, bad, _ = parse_journal(path)
    if bad:
        raise CorruptBufferError(
            f"{os.path.join(path, JOURNAL)}: line {bad[0]} is not an index entry; repair the "
            "directory with the verify tool (--repair)"
        )
    return entries


_MAX_INT = 1 << 48  # ids, counts and rows beyond this are corrupt (and would overflow int64 math)


def int_field(entry: dict[str, Any], key: str, where: str) -> int:
    """``entry[key]``, an int in ``[0, 2**48)``, or :class:`CorruptBufferError` naming ``where``."""
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _MAX_INT:
        raise CorruptBufferError(f"{where}: index entry has {key}={value!r}, expected an int in [0, 2**48)")
    return value


def read_index(path: str) -> tuple[list[dict[str, Any]], bool, int]:
    """Index entries in order (index file, then journal), whether ours, and journal length."""
    entries: list[dict[str, Any]] = []
    ours = False
    for name in (INDEX, INDEX_RLINF_MERGE):
        ipath = os.path.join(path, name)
        if os.path.exists(ipath):
            data = _read_json(ipath, name)
            if (
                not isinstance(data, dict)
                or not isinstance(data.get("trajectory_index"), dict)
                or not isinstance(data.get("trajectory_id_list"), list)
            ):
                raise CorruptBufferError(
                    f"{ipath}: expected {{'trajectory_index': {{...}}, 'trajectory_id_list': [...]}}"
                )
            ours = data.get("format_version") is not None
            table = data["trajectory_index"]
            for tid in data["trajectory_id_list"]:
                if isinstance(tid, bool) or not isinstance(tid, int):
                    raise CorruptBufferError(f"{ipath}: trajectory_id_list holds {tid!r}")
                entry = table.get(str(tid))
                if not isinstance(entry, dict):
                    raise CorruptBufferError(f"{ipath}: trajectory {tid} is listed but has no index entry")
                entries.append(dict(entry, trajectory_id=tid))
            break
    journal = _read_journal(path)
    if journal:
        ours = ours or not entries
    added, removed = apply_journal(entries, journal)
    return entries, ours, added + len(removed)


def apply_journal(entries: list[dict[str, Any]], journal: list[dict[str, Any]]) -> tuple[int, list[int]]:
    """Apply journal lines to ``entries`` in place: an entry whose id is not listed yet is
    appended; a removal (``{"trajectory_id": id, "removed": true}``, written when a capacity
    limit evicts a trajectory) drops the id. Returns (entries appended, ids removed)."""
    if not journal:
        return 0, []
    listed = {e.get("trajectory_id"): e for e in entries}
    if len(listed) != len(entries):
        raise CorruptBufferError("the index lists a trajectory id twice; repair it with the verify tool")
    added = 0
    removed: list[int] = []
    for entry in journal:
        tid = entry.get("trajectory_id")
        if entry.get("removed") is True:
            if listed.pop(tid, None) is not None:
                removed.append(tid)
        elif tid not in listed:
            listed[tid] = entry
            added += 1
    entries[:] = list(listed.values())
    return added, removed


def removed_ids(path: str) -> list[int]:
    """Ids the journal records as removed (their files may still await deletion)."""
    entries, _, _ = parse_journal(path)
    return [
        e["trajectory_id"]
        for e in entries
        if e.get("removed") is True and isinstance(e.get("trajectory_id"), int)
    ]


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
    ok = [isinstance(d, int) and not isinstance(d, bool) and 0 < d < _MAX_INT for d in (rows, envs)]
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


def _schema_of_segment(path: str, name: Any) -> Schema:
    if not isinstance(name, str) or not segment.SEGMENT_RE.match(name):
        raise CorruptBufferError(f"{os.path.join(path, INDEX)}: names segment {name!r} (expected seg-NNNNNN)")
    meta_path = os.path.join(path, name, segment.SEGMENT_META)
    if os.path.islink(os.path.join(path, name)) or os.path.islink(meta_path):
        raise UnsafeFileError(f"{meta_path}: is a symbolic link; refusing to read it")
    columns = _read_json(meta_path, segment.SEGMENT_META) if os.path.exists(meta_path) else None
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


def _segment_records(
    path: str, meta: dict[str, Any], selected: list[dict[str, Any]], require_files: bool
) -> tuple[list[Record], Schema | None]:
    """Records of a ``segment`` directory: index entries naming ``(segment, row)``."""
    where = os.path.join(path, INDEX)
    schema = schema_from_json(meta.get("fields"), os.path.join(path, METADATA), CorruptBufferError)
    if selected and not schema:
        # metadata.json is refreshed at flush/close: a crash before the first one leaves it
        # without fields, but every segment describes its own columns
        schema = _schema_of_segment(path, selected[0].get("file"))
    records = []
    seen: dict[str, bool] = {}  # segment name -> its directory exists (checked once each)
    for entry in selected:
        tid = entry["trajectory_id"]
        name, row = entry.get("file"), entry.get("row")
        if not isinstance(name, str) or not segment.SEGMENT_RE.match(name):
            raise CorruptBufferError(
                f"{where}: trajectory {tid} names segment {name!r} (expected seg-NNNNNN)"
            )
        if not isinstance(row, int) or isinstance(row, bool) or not 0 <= row < _MAX_INT:
            raise CorruptBufferError(f"{where}: trajectory {tid} has row {row!r}")
        present = seen.get(name)
        if present is None:
            seg_dir = os.path.join(path, name)
            if os.path.islink(seg_dir):
                raise UnsafeFileError(f"{seg_dir}: is a symbolic link; refusing to read it")
            present = seen[name] = os.path.isdir(seg_dir)
        if not present:
            if require_files:
                raise BufferNotFoundError(
                    f"{path}: the index lists trajectory {tid} in segment {name}, which is missing; "
                    "restore it or repair the directory with the verify tool"
                )
            continue
        record = record_from_entry(path, entry, name, where)
        record.row = row
        records.append(record)
    return records, (schema if records else None)


def read_directory(
    path: str,
    share: tuple[int, int] = (0, 1),
    require_files: bool = True,
    skip_corrupt: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[DirectoryContents, Schema | None]:
    """Parse a buffer directory (ours or RLinf's) and the schema of its trajectories.

    Args:
        path: the directory.
        share: ``(rank, world_size)``: keep index positions ``rank, rank + world_size, ...``.
        require_files: raise if a selected trajectory's file is missing.
        skip_corrupt: leave out (with a :class:`CorruptDataWarning`) trajectories whose file
            must be opened to be indexed (RLinf's directories) and turns out unreadable.
        progress: ``progress(done, total)`` as index entries are resolved.

    Returns:
        The parsed contents and the schema (``None`` when no trajectory was selected).

    Raises:
        BufferNotFoundError, CorruptBufferError, UnsafeFileError: with the file named.
    """
    path = check_directory(path)
    meta = read_metadata(path)
    fmt = meta.get("trajectory_format", meta.get("storage_format"))
    entries, ours, journal_entries = read_index(path)
    if not entries and not os.path.exists(os.path.join(path, INDEX)):
        files_present = list_trajectory_files(path)
        if files_present:
            raise BufferNotFoundError(
                f"{path}: {INDEX} is missing but trajectory files are present; rebuild the index "
                "with the verify tool (--repair)"
            )
    regular: set[str] = set()
    index_path = os.path.join(path, INDEX)
    files = list_trajectory_files(path, regular)
    ids = [e["trajectory_id"] if isinstance(e.get("trajectory_id"), int) else -1 for e in entries]
    if len(set(ids)) != len(ids) or min(ids, default=0) < 0:
        raise CorruptBufferError(f"{path}: the index lists a trajectory id twice or a bad id")
    rank, world = share
    selected = entries[rank::world]
    records: list[Record] = []
    schema: Schema | None = None
    if fmt == formats.SEGMENT:
        records, schema = _segment_records(path, meta, selected, require_files)
        if progress is not None:
            progress(len(selected), len(selected))
        selected = []
    for done, entry in enumerate(selected, 1):
        if progress is not None and (done % 256 == 0 or done == len(selected)):
            progress(done, len(selected))
        tid = entry["trajectory_id"]
        names = files.get(tid, [])
        named = entry.get("file")
        if named is not None:
            if not isinstance(named, str):
                raise CorruptBufferError(f"{path}: trajectory {tid} names file {named!r}")
            if named not in regular:  # a listed regular file needs no further check
                safe_file(path, named)
            names = [named] if named in names else []
        if not names:
            if require_files:
                raise BufferNotFoundError(
                    f"{path}: the index lists trajectory {tid} but its file "
                    f"(trajectory_{tid}_*.{fmt}) is missing; restore it or repair the directory "
                    "with the verify tool"
                )
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
                warnings.warn(f"skipped trajectory {tid}: {exc}", CorruptDataWarning, stacklevel=2)
                continue
            schema = combine(schema, file_schema, f"{path}/{name}: ", CorruptBufferError)
            records.append(record)
    if records and schema is None:
        newest = records[-1]
        data = formats.read(safe_file(path, newest.file or ""), newest.fmt or fmt, mmap=True)
        where = f"{newest.path}: "
        try:
            layout, _ = in_layout(data, where, newest.num_envs, num_steps=newest.num_steps)
            schema = Schema.of_columns(align(layout, where=where).columns)
        except InvalidTrajectoryError as exc:
            raise CorruptBufferError(str(exc)) from None
    counter = max(
        [max(ids, default=-1) + 1, max(files, default=-1) + 1]
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
        written_by_us=ours,
        journal_entries=journal_entries,
        metadata=meta,
    )
    return contents, schema


def load_columns(record: Record, mmap: bool = True) -> dict[Key, torch.Tensor]:
    """The raw columns ``[rows, B, ...]`` of a record's file (extra rows not yet dropped).

    Columns RLinf's ``save_checkpoint`` left flat (``[rows * B, ...]``) come back reshaped
    (:func:`~.trajectory.unflatten_rlinf`, with the record's ``B`` and ``T``).
    """
    path = safe_file(record.directory or "", record.file or "")
    try:
        data = formats.read(path, record.fmt or "pt", mmap=mmap)
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


def write_index(path: str, entries: Iterable[dict[str, Any]], keep_journal: bool = False) -> None:
    """Atomically write the whole index (entries in order), then drop the journal it contains.

    ``keep_journal``: leave the journal in place (``flush()`` publishes the index for RLinf's
    loader this way; the journal's entries are then all listed, and reading skips them).
    """
    entries = list(entries)
    atomic_write_json(
        os.path.join(path, INDEX),
        {
            "format_version": FORMAT_VERSION,
            "trajectory_index": {str(e["trajectory_id"]): e for e in entries},
            "trajectory_id_list": [e["trajectory_id"] for e in entries],
        },
    )
    if keep_journal:
        return
    jpath = os.path.join(path, JOURNAL)
    if os.path.exists(jpath):
        os.unlink(jpath)
        fsync_dir(path)


def _trim_torn_tail(path: str) -> None:
    """Cut a torn last line (an append interrupted by a crash) off the journal.

    The reader ignores a torn final line, but the next append must not follow it: glued onto it
    the new entry would be lost, and on a line of its own it would leave the torn line in the
    middle, which makes the journal unreadable. (Journals are compacted every few thousand
    entries, so reading one whole is cheap.)
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UnsafeFileError(f"{path}: cannot be opened as a regular file ({exc.strerror})") from None
    with os.fdopen(fd, "r+b") as f:
        data = f.read()
        body = data.rstrip(b"\n")
        start = body.rfind(b"\n") + 1  # start of the last non-empty line
        try:
            last = json.loads(body[start:]) if body else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            last = None
        if isinstance(last, dict):
            if data and not data.endswith(b"\n"):  # complete but unterminated: end the line
                f.write(b"\n")
                os.fsync(f.fileno())
            return
        f.truncate(start)
        os.fsync(f.fileno())


class Journal:
    """Append-only index journal: one JSON entry per line; ``sync()`` makes appends durable.

    Attributes:
        lines: lines appended since the journal was last folded into the index (:meth:`reset`).
        appended: lines appended in this process, ever (never reset): a change counter.
    """

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, JOURNAL)
        self._file: IO[bytes] | None = None
        self.lines = 0
        self.appended = 0

    def append(self, entry: dict[str, Any]) -> None:
        """Append one entry (flushed to the OS, durable after :meth:`sync`)."""
        if self._file is None:
            _trim_torn_tail(self.path)
            try:  # never through a link: the journal is written inside the directory only
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise UnsafeFileError(f"{self.path}: is a symbolic link; refusing to write it") from None
                raise
            self._file = os.fdopen(fd, "ab")
        self._file.write(json.dumps(entry, separators=(",", ":")).encode() + b"\n")
        self._file.flush()
        self.lines += 1
        self.appended += 1

    def sync(self) -> None:
        """fsync the journal."""
        if self._file is not None:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file handle (entries stay on disk)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def reset(self) -> None:
        """Forget the handle after the index compaction removed the file."""
        self.close()
        self.lines = 0
