"""Many records of one directory as columns: :class:`RecordTable`.

A directory of a million trajectories has a million index entries; building a
:class:`~.record.Record` (or an entry dict) for each costs seconds. A :class:`RecordTable` keeps
what the records hold as numpy columns and builds a record only when one is asked for (then
keeps it, so the same id always gives the same object). It is a ``Sequence[Record]`` in index
order: code that iterates records works unchanged, and code that handles many at once (the
index's :meth:`~.index.TrajectoryIndex.extend`, a load's bookkeeping) reads the columns.

Tables come from the index's binary sidecar (:mod:`.index_columns`) or from records
(:meth:`RecordTable.of_records`, e.g. the few a journal adds). :class:`EntryMap` gives the index
entries of a table's records, built when first read.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass, fields, replace
from operator import itemgetter
from typing import Any, overload

import numpy as np

from .naming import trajectory_file_name, trajectory_file_names
from .record import Record, index_entry

#: extensions of canonical file names, by their code in :attr:`RecordColumns.exts`
EXTENSIONS = ("pt", "pkl")
#: :attr:`RecordColumns.files` of a record whose file has its canonical name
CANONICAL = -1


@dataclass(frozen=True)
class RecordColumns:
    """Per-record columns of a :class:`RecordTable` (``n`` records, index order).

    Attributes:
        ids: ``trajectory_id``, int64 ``[n]``.
        num_steps: ``T``, int64 ``[n]``; ``num_envs``: ``B``, int64 ``[n]``.
        update_counts: ``model_update_count``, int64 ``[n]``.
        max_lengths: ``max_episode_length``, int64 ``[n]`` (-1: none).
        checksums: ``crc32``, int64 ``[n]`` (-1: none).
        rows: first row in a segment, int64 ``[n]`` (-1: the trajectory has a file of its own).
        flat: ``rlinf_flat``, bool ``[n]``.
        weights: ``model_weights_id`` as a code into ``weight_names``, int32 ``[n]``.
        files: the file (or segment) name as a code into ``file_names``, int32 ``[n]``;
            :data:`CANONICAL` (-1): ``trajectory_{id}_{weights}_{count}.{ext}``.
        exts: extension of a canonical name, a code into :data:`EXTENSIONS`, uint8 ``[n]``.
        uuids: the trajectory's uuid, ASCII, bytes ``S<w>`` ``[n]``.
        shape_dims: dimensions of ``shape``, uint8 ``[n]``; ``shape_values``: every record's
            ``shape``, one after another, int64 ``[sum(shape_dims)]``.
        weight_names, file_names: the distinct strings the codes refer to.
    """

    ids: np.ndarray
    num_steps: np.ndarray
    num_envs: np.ndarray
    update_counts: np.ndarray
    max_lengths: np.ndarray
    checksums: np.ndarray
    rows: np.ndarray
    flat: np.ndarray
    weights: np.ndarray
    files: np.ndarray
    exts: np.ndarray
    uuids: np.ndarray
    shape_dims: np.ndarray
    shape_values: np.ndarray
    weight_names: tuple[str, ...]
    file_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ids)


#: the per-record arrays of :class:`RecordColumns` (not ``shape_values`` nor the name lists)
PER_RECORD = tuple(
    f.name for f in fields(RecordColumns) if f.name not in ("shape_values", "weight_names", "file_names")
)


def _shape_starts(dims: np.ndarray) -> np.ndarray:
    """Where each record's ``shape`` starts in ``shape_values``, int64 ``[n]``."""
    ends = np.cumsum(dims, dtype=np.int64)
    return ends - dims.astype(np.int64)


class RecordTable(Sequence[Record]):
    """Records of the directory ``directory`` held as :class:`RecordColumns`.

    Indexing with an int gives a :class:`Record` (built once per id, then kept); with a slice,
    another table (sharing the built records). Iteration builds every record: use the columns
    where many are handled.
    """

    def __init__(self, directory: str, columns: RecordColumns, made: dict[int, Record] | None = None) -> None:
        self.directory = directory
        self.columns = columns
        self._made: dict[int, Record] = {} if made is None else made  # id -> record built
        self._starts: np.ndarray | None = None
        self._increasing: bool | None = None  # whether the ids increase (then found by bisection)
        self._rows_by_id: dict[int, int] | None = None  # when they do not

    # -- Sequence -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.columns.ids)

    @overload
    def __getitem__(self, i: int) -> Record: ...
    @overload
    def __getitem__(self, i: slice) -> RecordTable: ...
    def __getitem__(self, i: int | slice) -> Record | RecordTable:
        if isinstance(i, slice):
            return self.take(np.arange(len(self))[i])
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"record {i} of {n}")
        return self._record(i % n)

    def __iter__(self) -> Iterator[Record]:
        for i in range(len(self)):
            yield self._record(i)

    def __repr__(self) -> str:
        return f"RecordTable({self.directory!r}, {len(self)} records)"

    # -- columns ------------------------------------------------------------------------------
    @property
    def built(self) -> dict[int, Record]:
        """The records built so far, by id (shared with the tables taken from this one)."""
        return self._made

    @property
    def ids(self) -> np.ndarray:
        """Trajectory ids, int64 ``[n]`` (do not modify)."""
        return self.columns.ids

    @property
    def transitions(self) -> np.ndarray:
        """``T * B`` of each record, int64 ``[n]``."""
        return self.columns.num_steps * self.columns.num_envs

    @property
    def has_checksum(self) -> np.ndarray:
        """Whether each record carries a checksum, bool ``[n]``."""
        return self.columns.checksums >= 0

    def file_name(self, i: int) -> str:
        """The file (or segment) name of the record at position ``i``."""
        c = self.columns
        code = int(c.files[i])
        if code != CANONICAL:
            return c.file_names[code]
        weights = c.weight_names[int(c.weights[i])]
        return trajectory_file_name(
            int(c.ids[i]), weights, int(c.update_counts[i]), EXTENSIONS[int(c.exts[i])]
        )

    def file_names(self, rows: np.ndarray | None = None) -> list[str]:
        """The file (or segment) names of the records at positions ``rows`` (default: all)."""
        c = self.columns
        picked = np.arange(len(self)) if rows is None else rows
        n = len(picked)
        codes = c.files[picked]
        canonical = codes == CANONICAL
        if not canonical.any():
            return [c.file_names[k] for k in codes.tolist()]
        weights = (
            [c.weight_names[0]] * n
            if len(c.weight_names) == 1
            else [c.weight_names[w] for w in c.weights[picked].tolist()]
        )
        exts = [EXTENSIONS[x] for x in c.exts[picked].tolist()]
        names = trajectory_file_names(c.ids[picked].tolist(), weights, c.update_counts[picked].tolist(), exts)
        if not canonical.all():
            for i in np.flatnonzero(~canonical).tolist():
                names[i] = c.file_names[int(codes[i])]
        return names

    def entries(self, rows: np.ndarray) -> list[dict[str, Any]]:
        """The index entries of the records at positions ``rows``, built from the columns (as
        :meth:`~.record.Record.to_entry` builds them, without building the records)."""
        c = self.columns
        if self._starts is None:
            self._starts = _shape_starts(c.shape_dims)
        values = c.shape_values.tolist()
        shapes = [
            values[start : start + dims]
            for start, dims in zip(self._starts[rows].tolist(), c.shape_dims[rows].tolist(), strict=True)
        ]
        weights = [c.weight_names[w] for w in c.weights[rows].tolist()]
        return [
            index_entry(
                tid,
                steps,
                envs,
                None if length < 0 else length,
                weights_id,
                count,
                uuid.decode("ascii"),
                shape,
                name,
                None if row < 0 else row,
                None if crc < 0 else crc,
                flat,
            )
            for tid, steps, envs, length, weights_id, count, uuid, shape, name, row, crc, flat in zip(
                c.ids[rows].tolist(),
                c.num_steps[rows].tolist(),
                c.num_envs[rows].tolist(),
                c.max_lengths[rows].tolist(),
                weights,
                c.update_counts[rows].tolist(),
                c.uuids[rows].tolist(),
                shapes,
                self.file_names(rows),
                c.rows[rows].tolist(),
                c.checksums[rows].tolist(),
                c.flat[rows].tolist(),
                strict=True,
            )
        ]

    def position(self, trajectory_id: int) -> int | None:
        """The position of ``trajectory_id`` in the table, or ``None``."""
        ids = self.columns.ids
        if self._increasing is None:
            self._increasing = len(ids) < 2 or bool((ids[1:] > ids[:-1]).all())
            if not self._increasing:
                self._rows_by_id = {tid: i for i, tid in enumerate(ids.tolist())}
        if self._rows_by_id is not None:
            return self._rows_by_id.get(trajectory_id)
        i = int(ids.searchsorted(trajectory_id))
        return i if i < len(ids) and int(ids[i]) == trajectory_id else None

    def by_id(self, trajectory_id: int) -> Record | None:
        """The record of ``trajectory_id``, or ``None`` if the table has none."""
        made = self._made.get(trajectory_id)
        if made is not None:
            return made
        i = self.position(trajectory_id)
        return None if i is None else self._record(i)

    # -- selections ---------------------------------------------------------------------------
    def take(self, rows: np.ndarray) -> RecordTable:
        """The records at positions ``rows`` (int ``[k]`` or bool ``[n]``), in that order."""
        rows = np.flatnonzero(rows) if rows.dtype == np.bool_ else rows.astype(np.int64, copy=False)
        c = self.columns
        dims = c.shape_dims[rows]
        if self._starts is None:
            self._starts = _shape_starts(c.shape_dims)
        starts = self._starts[rows]
        # every selected record's shape values: starts repeated over its dims, plus 0, 1, ...
        offsets = np.repeat(starts - _shape_starts(dims), dims.astype(np.int64))
        values = c.shape_values[offsets + np.arange(len(offsets), dtype=np.int64)]
        picked = {name: getattr(c, name)[rows] for name in PER_RECORD}
        return RecordTable(self.directory, replace(c, shape_values=values, **picked), self._made)

    @classmethod
    def concat(cls, tables: Sequence[RecordTable]) -> RecordTable:
        """One table holding every record of ``tables`` (all of one directory), in order."""
        first = tables[0]
        if len(tables) == 1:
            return first
        cols = [t.columns for t in tables]
        weight_names: list[str] = []
        file_names: list[str] = []
        weights, files = [], []
        for c in cols:
            weights.append(c.weights + np.int32(len(weight_names)))
            files.append(np.where(c.files == CANONICAL, CANONICAL, c.files + np.int32(len(file_names))))
            weight_names += c.weight_names
            file_names += c.file_names
        joined: dict[str, Any] = {
            name: np.concatenate([getattr(c, name) for c in cols]) for name in (*PER_RECORD, "shape_values")
        }
        joined.update(
            weights=np.concatenate(weights).astype(np.int32),
            files=np.concatenate(files).astype(np.int32),
            weight_names=tuple(weight_names),
            file_names=tuple(file_names),
        )
        made = first.built
        for t in tables[1:]:
            made.update(t.built)
        return cls(first.directory, RecordColumns(**joined), made)

    @classmethod
    def of_records(cls, directory: str, records: Sequence[Record]) -> RecordTable:
        """A table of ``records`` (of ``directory``; the table hands out these very objects).

        Raises:
            ValueError: a record holds what the columns cannot give back exactly (no file, a
                uuid that is not ASCII, a ``max_episode_length`` that is not an int >= 0 or
                ``None``, a shape of more than 255 dimensions or values beyond int64).
        """
        for r in records:
            length = r.max_episode_length
            if r.file is None or not (length is None or (type(length) is int and 0 <= length < 1 << 63)):
                raise ValueError(f"trajectory {r.trajectory_id}: not representable as columns")
            if len(r.shape) > 255 or any(not -(1 << 63) <= d < 1 << 63 for d in r.shape):
                raise ValueError(f"trajectory {r.trajectory_id}: shape {r.shape} not representable")
        weight_codes: dict[str, int] = {}
        file_codes: dict[str, int] = {}
        files, exts = [], []
        for r in records:
            assert r.file is not None
            weight_codes.setdefault(r.model_weights_id, len(weight_codes))
            ext = r.file.rsplit(".", 1)[-1]
            if r.row is None and ext in EXTENSIONS and r.file == r.canonical_name(ext):
                files.append(CANONICAL)
                exts.append(EXTENSIONS.index(ext))
            else:
                files.append(file_codes.setdefault(r.file, len(file_codes)))
                exts.append(0)
        uuids = [r.uuid.encode("ascii") for r in records]
        columns = RecordColumns(
            ids=np.array([r.trajectory_id for r in records], dtype=np.int64),
            num_steps=np.array([r.num_steps for r in records], dtype=np.int64),
            num_envs=np.array([r.num_envs for r in records], dtype=np.int64),
            update_counts=np.array([r.model_update_count for r in records], dtype=np.int64),
            max_lengths=np.array(
                [-1 if r.max_episode_length is None else r.max_episode_length for r in records],
                dtype=np.int64,
            ),
            checksums=np.array([-1 if r.checksum is None else r.checksum for r in records], dtype=np.int64),
            rows=np.array([-1 if r.row is None else r.row for r in records], dtype=np.int64),
            flat=np.array([r.rlinf_flat for r in records], dtype=np.bool_),
            weights=np.array([weight_codes[r.model_weights_id] for r in records], dtype=np.int32),
            files=np.array(files, dtype=np.int32),
            exts=np.array(exts, dtype=np.uint8),
            uuids=np.array(uuids, dtype=f"S{max([1, *map(len, uuids)])}"),
            shape_dims=np.array([len(r.shape) for r in records], dtype=np.uint8),
            shape_values=np.array([d for r in records for d in r.shape], dtype=np.int64),
            weight_names=tuple(weight_codes),
            file_names=tuple(file_codes),
        )
        return cls(directory, columns, {r.trajectory_id: r for r in records})

    # -- building records ---------------------------------------------------------------------
    def _record(self, i: int) -> Record:
        c = self.columns
        tid = int(c.ids[i])
        made = self._made.get(tid)
        if made is not None:
            return made
        if self._starts is None:
            self._starts = _shape_starts(c.shape_dims)
        start = int(self._starts[i])
        max_length, checksum, row = int(c.max_lengths[i]), int(c.checksums[i]), int(c.rows[i])
        record = Record(
            trajectory_id=tid,
            num_steps=int(c.num_steps[i]),
            num_envs=int(c.num_envs[i]),
            max_episode_length=None if max_length < 0 else max_length,
            model_weights_id=c.weight_names[int(c.weights[i])],
            model_update_count=int(c.update_counts[i]),
            uuid=c.uuids[i].decode("ascii"),
            shape=c.shape_values[start : start + int(c.shape_dims[i])].tolist(),
            directory=self.directory,
            file=self.file_name(i),
            row=None if row < 0 else row,
            checksum=None if checksum < 0 else checksum,
            rlinf_flat=bool(c.flat[i]),
        )
        self._made[tid] = record
        return record


def ids_of(records: Sequence[Record]) -> np.ndarray:
    """The trajectory ids of ``records`` (a table or any sequence), int64 ``[n]``."""
    if isinstance(records, RecordTable):
        return records.ids
    return np.array([r.trajectory_id for r in records], dtype=np.int64)


def with_checksum(records: Sequence[Record]) -> np.ndarray:
    """Whether each of ``records`` (a table or any sequence) carries a checksum, bool ``[n]``."""
    if isinstance(records, RecordTable):
        return records.has_checksum
    return np.array([r.checksum is not None for r in records], dtype=np.bool_)


def transitions_of(records: Sequence[Record]) -> np.ndarray:
    """``T * B`` of each of ``records`` (a table or any sequence), int64 ``[n]``."""
    if isinstance(records, RecordTable):
        return records.transitions
    return np.array([r.num_transitions for r in records], dtype=np.int64)


def segment_use(records: Sequence[Record]) -> dict[str, tuple[int, int]]:
    """Per segment the records' rows are in: ``(records in it, rows they use)``, the rows
    counted up to the end of the last one (files of their own are left out)."""
    if not isinstance(records, RecordTable):
        out: dict[str, tuple[int, int]] = {}
        for r in records:
            if r.file is not None and r.row is not None:
                n, end = out.get(r.file, (0, 0))
                out[r.file] = (n + 1, max(end, r.row + r.num_transitions))
        return out
    c = records.columns
    inside = c.rows >= 0
    codes = c.files[inside].astype(np.int64)
    if not len(codes):
        return {}
    counts = np.bincount(codes, minlength=len(c.file_names))
    ends = np.zeros(len(c.file_names), dtype=np.int64)
    np.maximum.at(ends, codes, c.rows[inside] + records.transitions[inside])
    return {c.file_names[k]: (int(counts[k]), int(ends[k])) for k in np.flatnonzero(counts).tolist()}


class EntryMap(MutableMapping[int, dict[str, Any]]):
    """Index entries by trajectory id (:meth:`~.record.Record.to_entry`), initially those of
    ``records``; for a :class:`RecordTable` an entry is built when first read (then kept)."""

    def __init__(self, records: Sequence[Record]) -> None:
        self._table = records if isinstance(records, RecordTable) else None
        self._entries: dict[int, dict[str, Any]] = (
            {} if self._table is not None else {r.trajectory_id: r.to_entry() for r in records}
        )
        self._gone: set[int] = set()  # ids of the table's records deleted since
        self._added: set[int] = set()  # ids of entries the table does not hold

    def _in_table(self, trajectory_id: int) -> bool:
        return self._table is not None and self._table.position(trajectory_id) is not None

    def __getitem__(self, trajectory_id: int) -> dict[str, Any]:
        entry = self._entries.get(trajectory_id)
        if entry is not None:
            return entry
        if trajectory_id not in self._gone and self._table is not None:
            record = self._table.by_id(trajectory_id)
            if record is not None:
                entry = self._entries[trajectory_id] = record.to_entry()
                return entry
        raise KeyError(trajectory_id)

    def __setitem__(self, trajectory_id: int, entry: dict[str, Any]) -> None:
        if self._in_table(trajectory_id):
            self._gone.discard(trajectory_id)
        else:
            self._added.add(trajectory_id)
        self._entries[trajectory_id] = entry

    def __delitem__(self, trajectory_id: int) -> None:
        if self._in_table(trajectory_id):
            if trajectory_id in self._gone:
                raise KeyError(trajectory_id)
            self._gone.add(trajectory_id)
            self._entries.pop(trajectory_id, None)
            return
        del self._entries[trajectory_id]
        self._added.discard(trajectory_id)

    def __iter__(self) -> Iterator[int]:
        if self._table is not None:
            yield from (tid for tid in self._table.ids.tolist() if tid not in self._gone)
            yield from list(self._added)
        else:
            yield from list(self._entries)

    def __len__(self) -> int:
        if self._table is None:
            return len(self._entries)
        return len(self._table) - len(self._gone) + len(self._added)

    def in_order(self) -> list[dict[str, Any]]:
        """Every entry, by increasing id (the table's missing ones built in one go)."""
        if self._table is not None:
            ids = self._table.ids
            wanted = [
                i for i, tid in enumerate(ids.tolist()) if tid not in self._entries and tid not in self._gone
            ]
            if wanted:
                rows = np.array(wanted, dtype=np.int64)
                self._entries.update(zip(ids[rows].tolist(), self._table.entries(rows), strict=True))
        return sorted(self._entries.values(), key=itemgetter("trajectory_id"))
