"""Check a buffer directory end to end, and optionally repair it.

:func:`verify_directory` reads everything a buffer directory holds and reports each problem:

* ``metadata``: ``metadata.json`` missing, unreadable, or with a bad format or field list;
* ``index``: ``trajectory_index.json`` or a journal line unreadable, an entry malformed, an id
  listed twice;
* ``missing``: a listed trajectory whose file or segment is gone;
* ``unsafe``: a name or symbolic link leading out of the directory, a file that would run code;
* ``checksum``: data that does not match the entry's ``crc32``;
* ``unreadable``: a file that does not parse, a segment cut short;
* ``shape``: data whose steps, envs or fields disagree with the entry or the other trajectories;
* ``orphan``: a trajectory file the index does not list that is no sound trajectory, or that
  claims the id of a listed one.

What ``docs/durability.md`` promises after a crash is no problem: a directory in such a state
loads without repair, and its report is OK. The traces a crash leaves are reported as *notes*
(:attr:`VerifyReport.notes`, with the same kinds): ``leftover``: a torn last journal line,
``.tmp-*`` files of interrupted atomic writes (in the directory or a segment), bytes of a segment
past the last row its index names, a segment no entry names, the file of an evicted trajectory
whose deletion was cut short, hidden ``.NAME.partial-*``/``.NAME.old-*`` siblings of an
interrupted save, a move record of a merge/split cut short after it published its output
(loading leaves the moved trajectories out; ``--repair`` first finishes the move);
``orphan``: a sound trajectory file no entry names (written, then the crash
came before its journal entry; reopening keeps it unlisted); ``metadata``: counts or counter of
``metadata.json`` behind the index (it is rewritten after the journal). A live writer's directory
shows the same notes.

With ``repair=True`` (which acts on notes too) the bad trajectories' files are moved to
``quarantine/`` inside the directory (segment rows cannot be cut out of their shared files: their
entries are dropped and listed in ``quarantine/segment_rows.json``), readable orphans are listed
again, leftovers are removed, segment bytes past the last indexed row are cut, and a consistent
``trajectory_index.json`` and ``metadata.json`` are written atomically. Nothing outside the
directory is written (a staging sibling is only named), and no file is ever executed: files are
read by the same restricted readers the buffer uses.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .. import formats
from ..directory import (
    check_directory,
    in_layout,
    int_field,
    open_file_record,
    record_from_entry,
    schema_of_segment,
)
from ..errors import BufferDirectoryError, CorruptBufferError, ReplayBufferError, UnsafeFileError
from ..formats import segment
from ..fsio import OLD_MARK, STAGING_MARK, TMP_PREFIX, atomic_write_json, fsync_dir, make_dirs
from ..integrity import file_checksum, file_limit, mismatch_text
from ..journal import (
    INDEX,
    INDEX_RLINF_MERGE,
    JOURNAL,
    apply_journal,
    parse_journal,
    read_consistent,
    write_index,
)
from ..lock import DirectoryLock
from ..metadata import FORMAT_VERSION, METADATA, write_metadata
from ..moves import MOVING_OUT, finish_move, hidden_ids
from ..naming import FILE_RE, list_trajectory_files, safe_file
from ..record import Record
from ..safe_open import INDEX_BYTES, JSON_BYTES, load_json
from ..schema import Schema, combine, schema_from_json
from ..trajectory import align

QUARANTINE = "quarantine"
Progress = Callable[[int, int], None]
"""``progress(done, total)``, called as trajectories are checked."""


@dataclass
class Problem:
    """One thing wrong with a buffer directory (or, in :attr:`VerifyReport.notes`, one trace of a
    crash that the directory is expected to hold and loads fine with).

    Attributes:
        kind: ``metadata``, ``index``, ``missing``, ``unsafe``, ``checksum``, ``unreadable``,
            ``shape``, ``orphan`` or ``leftover`` (see the module docstring).
        message: what is wrong, naming the file.
        trajectory_id: the trajectory concerned, if any.
        path: the file concerned, if any.
        action: what ``--repair`` did (empty until then).
    """

    kind: str
    message: str
    trajectory_id: int | None = None
    path: str | None = None
    action: str = ""


@dataclass
class VerifyReport:
    """The outcome of :func:`verify_directory`.

    Attributes:
        path: the directory.
        fmt: its trajectory format (``None`` if it could not be told).
        trajectories: trajectories the index lists that passed every check.
        transitions: their transitions (sum of ``T * B``).
        problems: everything found wrong, in the order found.
        notes: what a crash normally leaves (see the module docstring): no reason to repair,
            and not counted by :attr:`ok`.
        repaired: ``repair=True`` was asked and the index and metadata were rewritten.
        quarantine: the quarantine folder, if anything was moved there.
    """

    path: str
    fmt: str | None = None
    trajectories: int = 0
    transitions: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)
    repaired: bool = False
    quarantine: str | None = None

    @property
    def ok(self) -> bool:
        """No problem found (notes do not count)."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable dict of the report."""
        return {**asdict(self), "ok": self.ok}


class _Checker:
    """State of one verification: the entries kept, the problems found, what repair must do."""

    def __init__(self, path: str, progress: Progress | None) -> None:
        self.path = path
        self.progress = progress
        self.report = VerifyReport(path)
        self.meta: dict[str, Any] | None = None
        self.schema: Schema | None = None
        self.good: list[Record] = []  # trajectories that pass, in index order
        self.bad_files: list[tuple[Problem, str]] = []  # (problem, file name) to quarantine
        self.bad_rows: list[tuple[Problem, Record]] = []  # segment rows to drop
        self.journal_torn = False
        self.removed: set[int] = set()  # ids the journal records as evicted
        self.moved: set[int] = set()  # ids a published merge/split moved out (not released yet)
        self.named: set[Any] = set()  # file or segment names the index entries give
        self.listed: set[int] = set()  # ids the index (file and journal) lists
        self.segment_ends: dict[str, int] = {}  # segment -> rows its entries name
        self.tails: dict[str, int] = {}  # segment with bytes past its named rows -> those rows
        self.siblings: list[Problem] = []  # notes of hidden staging siblings (outside the directory)
        self.relisted: list[Problem] = []  # sound unlisted files: repair lists them
        self.index_readable = True

    def problem(self, kind: str, message: str, tid: int | None = None, path: str | None = None) -> Problem:
        p = Problem(kind, message, tid, path)
        self.report.problems.append(p)
        return p

    def note(self, kind: str, message: str, tid: int | None = None, path: str | None = None) -> Problem:
        """Record the trace of a crash the directory loads fine with (not a problem)."""
        p = Problem(kind, message, tid, path)
        self.report.notes.append(p)
        return p

    # -- metadata and index -------------------------------------------------------------------
    def read_metadata(self) -> None:
        meta_path = os.path.join(self.path, METADATA)
        if os.path.islink(meta_path):
            self.problem("unsafe", f"{meta_path}: is a symbolic link; it was not read", path=meta_path)
            return
        try:  # a regular file of at most JSON_BYTES, read without blocking
            meta = load_json(meta_path, METADATA, JSON_BYTES, links=False)
        except FileNotFoundError:
            self.problem("metadata", f"{meta_path}: missing", path=meta_path)
            return
        except UnsafeFileError as exc:
            self.problem("unsafe", str(exc), path=meta_path)
            return
        except CorruptBufferError as exc:
            self.problem("metadata", str(exc), path=meta_path)
            return
        if not isinstance(meta, dict):
            self.problem("metadata", f"{meta_path}: not a JSON object", path=meta_path)
            return
        fmt = meta.get("trajectory_format", meta.get("storage_format"))
        if fmt not in formats.ALL_FORMATS:
            self.problem("metadata", f"{meta_path}: trajectory_format {fmt!r} is not pt, pkl or segment")
        else:
            self.report.fmt = fmt
        version = meta.get("format_version", 0)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            self.problem("metadata", f"{meta_path}: format_version {version!r} is newer than this tool reads")
        try:
            if meta.get("fields"):  # RLinf's metadata has no field list
                self.schema = schema_from_json(meta["fields"], meta_path, CorruptBufferError) or None
        except CorruptBufferError as exc:
            self.problem("metadata", str(exc), path=meta_path)
        self.meta = meta

    def guess_format(self) -> None:
        """Without readable metadata, tell the format from the files present."""
        if self.report.fmt is not None:
            return
        names = os.listdir(self.path)
        if any(segment.SEGMENT_RE.match(n) for n in names):
            self.report.fmt = formats.SEGMENT
            return
        exts = [m.group(3) for n in names if (m := FILE_RE.match(n))]
        if exts:
            self.report.fmt = max(set(exts), key=exts.count)

    def read_index_file(self) -> tuple[str, str, Any]:
        """``(outcome, path, content)`` of the index file: ``("ok", path, parsed JSON)``,
        ``("link", path, exception)`` (a link, FIFO or device: not read), ``("bad", path,
        exception)`` or ``("absent", "", None)``."""
        for name in (INDEX, INDEX_RLINF_MERGE):
            ipath = os.path.join(self.path, name)
            if not os.path.lexists(ipath):
                continue
            try:  # a regular file of at most INDEX_BYTES, never through a link, never blocking
                return "ok", ipath, load_json(ipath, name, INDEX_BYTES, links=False)
            except UnsafeFileError as exc:
                return "link", ipath, exc
            except CorruptBufferError as exc:
                return "bad", ipath, exc
        return "absent", "", None

    def read_entries(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        jpath = os.path.join(self.path, JOURNAL)
        try:  # the pair as one moment of the directory, though a writer compacts meanwhile
            (outcome, ipath, data), journal_data = read_consistent(self.path, self.read_index_file)
        except UnsafeFileError as exc:
            self.problem("unsafe", f"{exc}; it was not read", path=jpath)
            (outcome, ipath, data), journal_data = self.read_index_file(), b""
        except CorruptBufferError as exc:  # a journal too large to be one
            self.problem("index", str(exc), path=jpath)
            (outcome, ipath, data), journal_data = self.read_index_file(), b""
        if outcome == "link":
            self.problem("unsafe", str(data), path=ipath)
            self.index_readable = False
        elif outcome == "absent":
            if list_trajectory_files(self.path):
                self.problem("index", f"{os.path.join(self.path, INDEX)}: missing")
                self.index_readable = False
        elif outcome == "bad" or not (
            isinstance(data, dict)
            and isinstance(data.get("trajectory_index"), dict)
            and isinstance(data.get("trajectory_id_list"), list)
        ):
            cause = str(data).removeprefix(f"{ipath}: ") if outcome == "bad" else "not an index"
            self.problem("index", f"{ipath}: unreadable ({cause})", path=ipath)
            self.index_readable = False
        else:
            table = data["trajectory_index"]
            for tid in data["trajectory_id_list"]:
                entry = table.get(str(tid)) if isinstance(tid, int) and not isinstance(tid, bool) else None
                if not isinstance(entry, dict):
                    self.problem(
                        "index", f"{ipath}: trajectory {tid!r} is listed without an entry", path=ipath
                    )
                    continue
                entries.append(dict(entry, trajectory_id=tid))
        journal = self.read_journal(journal_data)
        try:
            _, removed = apply_journal(entries, journal)
        except CorruptBufferError as exc:
            self.problem("index", str(exc))
            removed = []
        # also ids never listed: a write evicted midway is journaled as removed before its file goes
        self.removed = set(removed) | {
            e["trajectory_id"]
            for e in journal
            if isinstance(e, dict) and e.get("removed") is True and isinstance(e.get("trajectory_id"), int)
        }
        seen: dict[int, dict[str, Any]] = {}
        for entry in entries:  # journal entries may replay compacted ones: the first one counts
            tid = entry.get("trajectory_id")
            if isinstance(tid, int) and not isinstance(tid, bool) and tid >= 0:
                seen.setdefault(tid, entry)
            else:
                self.problem("index", f"{self.path}: an index entry has trajectory_id {tid!r}")
        try:
            self.moved = set(hidden_ids(self.path))
        except CorruptBufferError as exc:
            self.problem("index", str(exc), path=os.path.join(self.path, MOVING_OUT))
        if self.moved:
            record = os.path.join(self.path, MOVING_OUT)
            msg = (
                f"{record}: {len(self.moved)} trajectories moved to another directory by merge/split, "
                "which was cut short before deleting them here; loading leaves them out (the next "
                "writer, or --repair, deletes them)"
            )
            self.note("leftover", msg, path=record)
            seen = {tid: e for tid, e in seen.items() if tid not in self.moved}
        self.listed = set(seen)
        return list(seen.values())

    def read_journal(self, data: bytes) -> list[dict[str, Any]]:
        jpath = os.path.join(self.path, JOURNAL)
        entries, bad, torn = parse_journal(self.path, data)
        for line in bad:
            self.problem("index", f"{jpath}: line {line} is not an index entry", path=jpath)
        if torn:
            self.journal_torn = True
            msg = f"{jpath}: torn last line (an append a crash interrupted; reading ignores it)"
            self.note("leftover", msg, path=jpath)
        return entries

    # -- trajectories ---------------------------------------------------------------------------
    def check_entries(self, entries: list[dict[str, Any]]) -> None:
        self.named = {e.get("file") for e in entries}
        files = list_trajectory_files(self.path)
        listed: set[str] = set()
        total = len(entries)
        for done, entry in enumerate(entries, 1):
            record = self.check_entry(entry, files)
            if record is not None:
                self.good.append(record)
                if record.file is not None and record.row is None:
                    listed.add(record.file)
            elif isinstance(entry.get("file"), str):
                listed.add(entry["file"])
            if self.progress is not None:
                self.progress(done, total)
        self.check_orphans(files, listed, {r.trajectory_id for r in self.good})

    def check_entry(self, entry: dict[str, Any], files: dict[int, list[str]]) -> Record | None:
        tid = entry["trajectory_id"]
        fmt = self.report.fmt
        if fmt == formats.SEGMENT:
            return self.check_segment_entry(entry)
        named = entry.get("file")
        names = [named] if isinstance(named, str) else files.get(tid, [])
        if isinstance(named, str) and not FILE_RE.match(named):
            self.problem("unsafe", f"{self.path}: trajectory {tid} names file {named!r}", tid)
            return None
        if not names or not os.path.lexists(os.path.join(self.path, names[0])):
            self.problem("missing", f"{self.path}: the file of trajectory {tid} is missing", tid)
            return None
        if len(names) > 1:
            self.problem("index", f"{self.path}: several files claim trajectory {tid}: {sorted(names)}", tid)
            return None
        name = names[0]
        fpath = os.path.join(self.path, name)
        try:
            safe_file(self.path, name)
            if "num_steps" in entry and "shape" in entry:
                record = record_from_entry(self.path, entry, name)
            else:  # RLinf's entries: the file tells the shape
                record, _ = open_file_record(self.path, name, tid, name.rsplit(".", 1)[1], entry)
        except UnsafeFileError as exc:
            self.bad_files.append((self.problem("unsafe", str(exc), tid, fpath), name))
            return None
        except CorruptBufferError as exc:
            self.bad_files.append((self.problem("unreadable", str(exc), tid, fpath), name))
            return None
        return record if self.check_file(record, name) else None

    def check_file(self, record: Record, name: str) -> bool:
        tid, fpath = record.trajectory_id, record.path or ""
        if record.checksum is not None:
            try:  # a file larger than the trajectory can be is refused unread
                found = file_checksum(fpath, file_limit(record.num_transitions, self.schema))
            except (CorruptBufferError, OSError) as exc:
                kind = "unsafe" if isinstance(exc, UnsafeFileError) else "unreadable"
                self.bad_files.append((self.problem(kind, str(exc), tid, fpath), name))
                return False
            if found != record.checksum:
                msg = mismatch_text(tid, fpath, record.checksum, found)
                self.bad_files.append((self.problem("checksum", msg, tid, fpath), name))
                return False
        try:
            data = formats.read(fpath, name.rsplit(".", 1)[1])
            layout, _ = in_layout(data, f"{fpath}: ", record.num_envs, num_steps=record.num_steps)
            traj = align(layout, where=f"{fpath}: ")
        except UnsafeFileError as exc:
            self.bad_files.append((self.problem("unsafe", str(exc), tid, fpath), name))
            return False
        except (ReplayBufferError, ValueError) as exc:
            self.bad_files.append((self.problem("unreadable", str(exc), tid, fpath), name))
            return False
        shape = [int(d) for d in traj.columns[("rewards",)].shape]
        if (traj.num_steps, traj.num_envs) != (record.num_steps, record.num_envs) or shape != record.shape:
            msg = (
                f"{fpath}: holds {traj.num_steps} steps x {traj.num_envs} envs (rewards {shape}), the "
                f"index says {record.num_steps} x {record.num_envs} ({record.shape})"
            )
            self.bad_files.append((self.problem("shape", msg, tid, fpath), name))
            return False
        try:
            self.schema = combine(
                self.schema, Schema.of_columns(traj.columns), f"{fpath}: ", CorruptBufferError
            )
        except CorruptBufferError as exc:
            self.bad_files.append((self.problem("shape", str(exc), tid, fpath), name))
            return False
        return True

    def check_segment_entry(self, entry: dict[str, Any]) -> Record | None:
        tid = entry["trajectory_id"]
        name, row = entry.get("file"), entry.get("row")
        where = os.path.join(self.path, INDEX)
        if not isinstance(name, str) or not segment.SEGMENT_RE.match(name):
            self.problem("unsafe", f"{where}: trajectory {tid} names segment {name!r}", tid)
            return None
        seg_dir = os.path.join(self.path, name)
        if os.path.islink(seg_dir):
            self.problem("unsafe", f"{seg_dir}: is a symbolic link", tid, seg_dir)
            return None
        if not os.path.isdir(seg_dir):
            self.problem("missing", f"{seg_dir}: segment of trajectory {tid} is missing", tid, seg_dir)
            return None
        try:
            int_field(entry, "row", where)
            record = replace(record_from_entry(self.path, entry, name, where), row=row)
        except CorruptBufferError as exc:
            self.problem("index", str(exc), tid)
            return None
        end = int(row) + record.num_transitions
        self.segment_ends[name] = max(self.segment_ends.get(name, 0), end)
        if self.schema is None:
            # metadata.json gets its field list at the first flush; a crash before it leaves
            # none, and loading reads the segment's own column list: so does this check
            try:
                self.schema = schema_of_segment(self.path, name)
            except (CorruptBufferError, UnsafeFileError) as exc:
                self.problem("metadata", f"{exc} (no field list to read segment rows with)", tid)
                return None
        store = segment.SegmentStore(self.path, self.schema)
        try:
            found = store.checksum(name, int(row), record.num_transitions)  # segment.json checked too
        except (CorruptBufferError, OSError) as exc:
            kind = "unsafe" if isinstance(exc, UnsafeFileError) else "unreadable"
            self.bad_rows.append((self.problem(kind, str(exc), tid, seg_dir), record))
            return None
        if record.checksum is not None and found != record.checksum:
            msg = mismatch_text(tid, seg_dir, record.checksum, found)
            self.bad_rows.append((self.problem("checksum", msg, tid, seg_dir), record))
            return None
        return record

    def check_orphans(self, files: dict[int, list[str]], listed: set[str], good_ids: set[int]) -> None:
        if self.report.fmt == formats.SEGMENT:
            return
        for tid, names in sorted(files.items()):
            for name in names:
                if name in listed:
                    continue
                fpath = os.path.join(self.path, name)
                if tid in self.removed:  # evicted by a capacity limit; its deletion was cut short
                    msg = f"{fpath}: file of trajectory {tid}, which was evicted (reopening deletes it)"
                    self.bad_files.append((self.note("leftover", msg, tid, fpath), name))
                    continue
                if tid in self.moved:  # noted with the move record; --repair finishes the move first
                    continue
                msg = f"{fpath}: trajectory file the index does not list"
                if tid in good_ids or os.path.islink(fpath):  # a second file for a listed id, a link
                    self.bad_files.append((self.problem("orphan", msg, tid, fpath), name))
                    continue
                try:
                    record, _ = open_file_record(self.path, name, tid, name.rsplit(".", 1)[1], {})
                except (ReplayBufferError, ValueError):
                    self.bad_files.append((self.problem("orphan", msg, tid, fpath), name))
                    continue
                if not self.check_file(record, name):  # it reported why; quarantined with that
                    continue
                # a crash between a file's rename and its journal entry leaves a sound file no
                # entry names (never acknowledged by flush()); reopening keeps it unlisted, and
                # new ids go past it. Loading ignores it: not a problem, whatever its id
                msg += (
                    " (written just before a crash, or by a running writer, and never acknowledged "
                    "by flush(); loading ignores it)"
                )
                self.relisted.append(self.note("orphan", msg, tid, fpath))
                self.good.append(replace(record, checksum=file_checksum(fpath)))
                good_ids.add(tid)

    def check_leftovers(self) -> list[str]:
        """Note what interrupted writes leave (none of it is read by loading); return the names
        ``--repair`` removes (``seg-NNNNNN/.tmp-*`` as such paths)."""
        leftovers = []
        for entry in os.scandir(self.path):
            if entry.name.startswith(TMP_PREFIX):
                leftovers.append(entry.name)
                self.note("leftover", f"{entry.path}: left by an interrupted write", path=entry.path)
            elif (
                self.report.fmt == formats.SEGMENT
                and self.index_readable
                and segment.SEGMENT_RE.match(entry.name)
                and not entry.is_symlink()
            ):
                if entry.name not in self.named:
                    leftovers.append(entry.name)
                    msg = (
                        f"{entry.path}: a segment no index entry names (rows never committed, or "
                        "every trajectory in it evicted; reopening removes it)"
                    )
                    self.note("leftover", msg, path=entry.path)
                    continue
                for inner in os.scandir(entry.path):
                    if inner.name.startswith(TMP_PREFIX):
                        leftovers.append(os.path.join(entry.name, inner.name))
                        self.note("leftover", f"{inner.path}: left by an interrupted write", path=inner.path)
                self.check_segment_tail(entry.name)
        self.check_staging_siblings()
        return leftovers

    def check_segment_tail(self, name: str) -> None:
        """Note bytes of a segment's column and source files past the last row the index names."""
        if self.schema is None or name not in self.segment_ends:
            return
        rows = self.segment_ends[name]
        extra = segment.bytes_past(os.path.join(self.path, name), self.schema, rows)  # source columns too
        if extra:
            seg_dir = os.path.join(self.path, name)
            msg = (
                f"{seg_dir}: {extra} bytes past row {rows}, the last its index entries name (an append "
                "not committed yet, or cut off by a crash; reopening cuts them)"
            )
            self.note("leftover", msg, path=seg_dir)
            self.tails[name] = rows

    def check_staging_siblings(self) -> None:
        """Note hidden siblings a save of this directory left (``.NAME.partial-*``, ``.NAME.old-*``):
        nothing loads them, and verify neither removes them nor reads into them."""
        parent, base = os.path.split(self.path)
        try:
            names = os.listdir(parent)
        except OSError:
            return
        for name in sorted(names):
            if name.startswith((f".{base}{STAGING_MARK}", f".{base}{OLD_MARK}")):
                msg = (
                    f"{os.path.join(parent, name)}: left by a save of this directory that was "
                    "interrupted (or is under way); nothing loads it; delete it once no save runs"
                )
                self.siblings.append(self.note("leftover", msg, path=os.path.join(parent, name)))

    def check_metadata(self, entries: list[dict[str, Any]]) -> None:
        """Metadata against the index it describes (RLinf's counts are not exact: only ours).

        ``metadata.json`` is rewritten after the journal (at a flush, after a compaction), so
        after a crash it may describe an earlier moment of the index: its counts and counter are
        noted, not problems. Loading takes the index's counts, and gives new ids past every id
        listed or present as a file whatever the counter says.
        """
        meta = self.meta
        if meta is None:
            return
        meta_path = os.path.join(self.path, METADATA)
        behind = "metadata.json describes an earlier moment of the index (a crash before it was rewritten)"
        ids = [e["trajectory_id"] for e in entries]
        counter = meta.get("trajectory_counter")
        if isinstance(counter, int) and ids and counter <= max(ids):
            msg = f"{meta_path}: trajectory_counter {counter} is not past id {max(ids)}; {behind}"
            self.note("metadata", msg, path=meta_path)
        if "format_version" not in meta:
            return
        total = sum(e["num_samples"] for e in entries if isinstance(e.get("num_samples"), int))
        if meta.get("size") != len(entries) or meta.get("total_samples") != total:
            msg = (
                f"{meta_path}: size is {meta.get('size')!r} and total_samples {meta.get('total_samples')!r}, "
                f"the index lists {len(entries)} trajectories of {total} transitions; {behind}"
            )
            self.note("metadata", msg, path=meta_path)

    # -- repair -----------------------------------------------------------------------------------
    def repair(self, leftovers: list[str]) -> None:
        fmt = self.report.fmt
        if fmt is None:
            self.problem("metadata", f"{self.path}: cannot tell the trajectory format; nothing repaired")
            return
        if not self.index_readable and fmt == formats.SEGMENT:
            self.problem(
                "index", f"{self.path}: a segment directory's rows cannot be listed again without its index"
            )
            return
        quarantine = os.path.join(self.path, QUARANTINE)
        if os.path.islink(quarantine) or (os.path.lexists(quarantine) and not os.path.isdir(quarantine)):
            raise UnsafeFileError(
                f"{quarantine}: is not a plain folder (a link or a file); nothing was repaired. "
                "Remove it and run --repair again"
            )
        # the index and metadata without the bad trajectories first: a repair cut short after
        # this point leaves a directory that loads (files not yet moved are merely unlisted)
        entries = [r.to_entry() for r in self.good]
        write_index(self.path, entries)  # also removes the journal (torn line included)
        meta = self.meta or {}
        ids = [r.trajectory_id for r in self.good] + list(list_trajectory_files(self.path))
        # ids of quarantined files are not given again: their files stay findable by id
        ids += [int(m.group(1)) for _, name in self.bad_files if (m := FILE_RE.match(name))]
        ids += [p.trajectory_id for p in self.report.problems if p.trajectory_id is not None]
        counter = max(ids, default=-1) + 1
        if isinstance(meta.get("trajectory_counter"), int) and not isinstance(
            meta["trajectory_counter"], bool
        ):
            counter = max(counter, meta["trajectory_counter"])
        seed = meta.get("seed") if isinstance(meta.get("seed"), int) else None
        write_metadata(self.path, fmt, entries, counter, seed, self.schema)
        fsync_dir(self.path)
        if self.bad_files or self.bad_rows:
            make_dirs(quarantine)  # durable before files move into it
            self.report.quarantine = quarantine
        for problem, name in self.bad_files:
            src = os.path.join(self.path, name)
            if not os.path.lexists(src):
                continue
            dst = os.path.join(quarantine, name)
            n = 1
            while os.path.lexists(dst):
                dst, n = os.path.join(quarantine, f"{name}.{n}"), n + 1
            os.rename(src, dst)  # a link is moved as a link: never followed
            problem.action = f"moved to {dst}"
        if self.bad_rows:
            listing = os.path.join(quarantine, "segment_rows.json")
            old: list[Any] = []
            with contextlib.suppress(OSError, ValueError):
                with os.fdopen(os.open(listing, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
                    old = json.load(f)
            rows = [
                {
                    "trajectory_id": r.trajectory_id,
                    "segment": r.file,
                    "row": r.row,
                    "rows": r.num_transitions,
                    "reason": p.message,
                }
                for p, r in self.bad_rows
            ]
            atomic_write_json(listing, (old if isinstance(old, list) else []) + rows)
            for p, _ in self.bad_rows:
                p.action = f"entry dropped; rows listed in {listing}"
        for p in self.report.problems:
            if p.kind in ("missing", "index", "unsafe") and not p.action:
                p.action = "entry dropped"
        for name in leftovers:
            target = os.path.join(self.path, name)
            with contextlib.suppress(OSError):
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target)
                else:
                    os.unlink(target)
            for p in self.report.notes:
                if p.path == target and not p.action:
                    p.action = "removed"
        for name, rows in self.tails.items():
            segment.truncate_segment(os.path.join(self.path, name), self.schema, rows)
            for p in self.report.notes:
                if p.path == os.path.join(self.path, name) and not p.action:
                    p.action = f"cut to {rows} rows"
        if self.report.quarantine is not None:  # the moved files' new names, before their old ones go
            fsync_dir(quarantine)
        fsync_dir(self.path)  # the moves and removals
        for p in self.siblings:
            p.action = "left alone (outside the directory)"
        for p in self.relisted:
            p.action = "listed in the index again"
        for p in self.report.problems + self.report.notes:
            if not p.action:
                p.action = "index and metadata rewritten"
        self.report.repaired = True


def verify_directory(path: str, repair: bool = False, progress: Progress | None = None) -> VerifyReport:
    """Check a buffer directory: index against files, checksums, shapes, alignment.

    Args:
        path: the buffer directory.
        repair: move bad trajectories to ``quarantine/`` and rewrite a consistent index and
            metadata (see the module docstring).
        progress: ``progress(done, total)`` as trajectories are checked.

    Returns:
        The report; ``report.ok`` is true when nothing was wrong.

    Raises:
        BufferNotFoundError, BufferDirectoryError: ``path`` is not an existing directory.
        DirectoryLockedError: ``repair`` while a writer holds the directory (nothing changed).
    """
    path = check_directory(path)
    if repair:  # a repair rewrites the directory: no writer may be in it meanwhile
        with DirectoryLock.acquire(path, "verify --repair"):
            try:
                finish_move(path)  # a merge/split cut short: its moved trajectories go first
                return _verify(path, True, progress)
            except OSError as exc:
                if isinstance(exc, ReplayBufferError):
                    raise
                raise BufferDirectoryError(
                    f"{path}: the repair could not write ({exc.strerror or exc}"
                    f"{f': {exc.filename}' if exc.filename else ''}); the directory loads as it "
                    "is; fix the cause (disk space, permissions) and run --repair again"
                ) from exc
    return _verify(path, False, progress)


def _verify(path: str, repair: bool, progress: Progress | None) -> VerifyReport:
    checker = _Checker(path, progress)
    checker.read_metadata()
    checker.guess_format()
    entries = checker.read_entries() if checker.report.fmt is not None else []
    if checker.report.fmt is not None:
        checker.check_entries(entries)
    leftovers = checker.check_leftovers()
    checker.check_metadata(entries)
    report = checker.report
    listed = [r for r in checker.good if r.trajectory_id in checker.listed]  # not unlisted files
    report.trajectories = len(listed)
    report.transitions = sum(r.num_transitions for r in listed)
    if repair and (report.problems or report.notes):
        checker.repair(leftovers)
    return report


def format_report(report: VerifyReport) -> str:
    """The human-readable report ``verify`` prints."""
    fmt = report.fmt or "unknown format"
    head = f"{report.path} ({fmt}): {report.trajectories} sound trajectories"
    head += f" ({report.transitions} transitions)"
    lines = [f"OK  {head}" if report.ok else f"PROBLEMS ({len(report.problems)})  {head}"]
    for p in report.problems:
        action = f"  -> {p.action}" if p.action else ""
        lines.append(f"  [{p.kind}] {p.message}{action}")
    for p in report.notes:
        action = f"  -> {p.action}" if p.action else ""
        lines.append(f"  note [{p.kind}] {p.message}{action}")
    if report.quarantine:
        lines.append(f"quarantine: {report.quarantine}")
    return "\n".join(lines)
