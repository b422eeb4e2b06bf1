"""Check a buffer directory end to end, and optionally repair it.

:func:`verify_directory` reads everything a buffer directory holds and reports each problem:

* ``metadata``: ``metadata.json`` missing, unreadable, or disagreeing with the index (counts,
  counter, fields);
* ``index``: ``trajectory_index.json`` or a journal line unreadable, an entry malformed, an id
  listed twice;
* ``missing``: a listed trajectory whose file or segment is gone;
* ``unsafe``: a name or symbolic link leading out of the directory, a file that would run code;
* ``checksum``: data that does not match the entry's ``crc32``;
* ``unreadable``: a file that does not parse, a segment cut short;
* ``shape``: data whose steps, envs or fields disagree with the entry or the other trajectories;
* ``orphan``: a trajectory file the index does not list (a write a crash left unlisted);
* ``leftover``: temporary files of interrupted writes, a torn journal line.

With ``repair=True`` the bad trajectories' files are moved to ``quarantine/`` inside the
directory (segment rows cannot be cut out of their shared files: their entries are dropped and
listed in ``quarantine/segment_rows.json``), readable orphans are listed again, leftovers are
removed, and a consistent ``trajectory_index.json`` and ``metadata.json`` are written atomically.
Nothing outside the directory is read or written, and no file is ever executed: files are read
by the same restricted readers the buffer uses.
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
from ..directory import check_directory, in_layout, int_field, open_file_record, record_from_entry
from ..errors import CorruptBufferError, ReplayBufferError, UnsafeFileError
from ..formats import segment
from ..fsio import TMP_PREFIX, atomic_write_json, fsync_dir
from ..integrity import file_checksum, mismatch_text
from ..journal import INDEX, INDEX_RLINF_MERGE, JOURNAL, apply_journal, parse_journal, write_index
from ..metadata import FORMAT_VERSION, METADATA, write_metadata
from ..naming import FILE_RE, list_trajectory_files, safe_file
from ..record import Record
from ..schema import Schema, combine, schema_from_json
from ..trajectory import align

QUARANTINE = "quarantine"
Progress = Callable[[int, int], None]
"""``progress(done, total)``, called as trajectories are checked."""


@dataclass
class Problem:
    """One thing wrong with a buffer directory.

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
        problems: everything found, in the order found.
        repaired: ``repair=True`` was asked and the index and metadata were rewritten.
        quarantine: the quarantine folder, if anything was moved there.
    """

    path: str
    fmt: str | None = None
    trajectories: int = 0
    transitions: int = 0
    problems: list[Problem] = field(default_factory=list)
    repaired: bool = False
    quarantine: str | None = None

    @property
    def ok(self) -> bool:
        """No problem found."""
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
        self.named: set[Any] = set()  # file or segment names the index entries give
        self.index_readable = True

    def problem(self, kind: str, message: str, tid: int | None = None, path: str | None = None) -> Problem:
        p = Problem(kind, message, tid, path)
        self.report.problems.append(p)
        return p

    # -- metadata and index -------------------------------------------------------------------
    def read_metadata(self) -> None:
        meta_path = os.path.join(self.path, METADATA)
        if os.path.islink(meta_path):
            self.problem("unsafe", f"{meta_path}: is a symbolic link; it was not read", path=meta_path)
            return
        try:
            with open(meta_path, "rb") as f:
                meta = json.load(f)
        except FileNotFoundError:
            self.problem("metadata", f"{meta_path}: missing", path=meta_path)
            return
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self.problem("metadata", f"{meta_path}: not valid JSON ({exc})", path=meta_path)
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

    def read_entries(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        for name in (INDEX, INDEX_RLINF_MERGE):
            ipath = os.path.join(self.path, name)
            if os.path.islink(ipath):
                self.problem("unsafe", f"{ipath}: is a symbolic link; it was not read", path=ipath)
                self.index_readable = False
                break
            if not os.path.exists(ipath):
                continue
            try:
                with open(ipath, "rb") as f:
                    data = json.load(f)
                table, order = data["trajectory_index"], data["trajectory_id_list"]
                if not isinstance(table, dict) or not isinstance(order, list):
                    raise TypeError
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
                self.problem("index", f"{ipath}: unreadable ({type(exc).__name__})", path=ipath)
                self.index_readable = False
                break
            for tid in order:
                entry = table.get(str(tid)) if isinstance(tid, int) and not isinstance(tid, bool) else None
                if not isinstance(entry, dict):
                    self.problem(
                        "index", f"{ipath}: trajectory {tid!r} is listed without an entry", path=ipath
                    )
                    continue
                entries.append(dict(entry, trajectory_id=tid))
            break
        else:
            if list_trajectory_files(self.path):
                self.problem("index", f"{os.path.join(self.path, INDEX)}: missing")
                self.index_readable = False
        journal = self.read_journal()
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
        return list(seen.values())

    def read_journal(self) -> list[dict[str, Any]]:
        jpath = os.path.join(self.path, JOURNAL)
        entries, bad, torn = parse_journal(self.path)
        for line in bad:
            self.problem("index", f"{jpath}: line {line} is not an index entry", path=jpath)
        if torn:
            self.journal_torn = True
            self.problem("leftover", f"{jpath}: torn last line (an interrupted append)", path=jpath)
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
            found = file_checksum(fpath)
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
        if self.schema is None:
            self.problem("metadata", f"{self.path}: no field list to read segment rows with", tid)
            return None
        store = segment.SegmentStore(self.path, self.schema)
        try:
            segment.check_segment_meta(seg_dir, store.describe())
            found = store.checksum(name, int(row), record.num_transitions)
        except (CorruptBufferError, OSError) as exc:
            self.bad_rows.append((self.problem("unreadable", str(exc), tid, seg_dir), record))
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
                    msg = f"{fpath}: file of trajectory {tid}, which was evicted"
                    self.bad_files.append((self.problem("leftover", msg, tid, fpath), name))
                    continue
                p = self.problem("orphan", f"{fpath}: trajectory file the index does not list", tid, fpath)
                if tid in good_ids or os.path.islink(fpath):
                    self.bad_files.append((p, name))  # a second file for a listed id, or a link
                    continue
                try:
                    record, _ = open_file_record(self.path, name, tid, name.rsplit(".", 1)[1], {})
                except (ReplayBufferError, ValueError):
                    self.bad_files.append((p, name))
                    continue
                if self.check_file(record, name):
                    record = replace(record, checksum=file_checksum(fpath))
                    p.action = "listed in the index again"
                    self.good.append(record)
                    good_ids.add(tid)
                else:  # check_file reported why; quarantine it with that problem
                    self.report.problems.remove(p)

    def check_leftovers(self) -> list[str]:
        leftovers = []
        for entry in os.scandir(self.path):
            if entry.name.startswith(TMP_PREFIX):
                leftovers.append(entry.name)
                self.problem("leftover", f"{entry.path}: left by an interrupted write", path=entry.path)
            elif (
                self.report.fmt == formats.SEGMENT
                and self.index_readable
                and segment.SEGMENT_RE.match(entry.name)
                and entry.name not in self.named
            ):
                leftovers.append(entry.name)
                msg = f"{entry.path}: a segment no index entry names (its trajectories were evicted)"
                self.problem("leftover", msg, path=entry.path)
        return leftovers

    def check_metadata(self, entries: list[dict[str, Any]]) -> None:
        """Metadata against the index it describes (RLinf's counts are not exact: only ours)."""
        meta = self.meta
        if meta is None:
            return
        meta_path = os.path.join(self.path, METADATA)
        ids = [e["trajectory_id"] for e in entries]
        counter = meta.get("trajectory_counter")
        if isinstance(counter, int) and ids and counter <= max(ids):
            self.problem(
                "metadata",
                f"{meta_path}: trajectory_counter {counter} would reuse id {max(ids)}",
                path=meta_path,
            )
        if "format_version" not in meta or meta.get("size") == len(entries):
            return
        self.problem("metadata", f"{meta_path}: size is {meta.get('size')!r}, the index lists {len(entries)}")

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
        if self.bad_files or self.bad_rows:
            os.makedirs(quarantine, exist_ok=True)
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
        for p in self.report.problems:
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
    """
    path = check_directory(path)
    checker = _Checker(path, progress)
    checker.read_metadata()
    checker.guess_format()
    entries = checker.read_entries() if checker.report.fmt is not None else []
    if checker.report.fmt is not None:
        checker.check_entries(entries)
    leftovers = checker.check_leftovers()
    checker.check_metadata(entries)
    report = checker.report
    report.trajectories = len(checker.good)
    report.transitions = sum(r.num_transitions for r in checker.good)
    if repair and report.problems:
        checker.repair(leftovers)
    return report


def format_report(report: VerifyReport) -> str:
    """The human-readable report ``verify`` prints."""
    fmt = report.fmt or "unknown format"
    head = f"{report.path} ({fmt}): {report.trajectories} sound trajectories"
    head += f" ({report.transitions} transitions)"
    if report.ok:
        return f"OK  {head}"
    lines = [f"PROBLEMS ({len(report.problems)})  {head}"]
    for p in report.problems:
        action = f"  -> {p.action}" if p.action else ""
        lines.append(f"  [{p.kind}] {p.message}{action}")
    if report.quarantine:
        lines.append(f"quarantine: {report.quarantine}")
    return "\n".join(lines)
