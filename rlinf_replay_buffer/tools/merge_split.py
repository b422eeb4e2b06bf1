"""Merge ``rank_*`` buffer directories into one, or split off the first N trajectories.

Merging interleaves the sources by original trajectory id (rank_0's id 0, rank_1's id 0,
rank_0's id 1, ...) and renumbers from 0. ``split_count`` keeps the first N trajectories of that
order. The output is assembled in a hidden staging directory next to the destination, checked
(every file present, same size as its source, the directory loads), and only then renamed into
place. With ``copy=False`` the sources' files are moved: hard-linked into the staging directory
(copied across file systems; segment rows are copied) and removed from the sources only after
the destination is published. Each source holds a move record from before the destination
appears until its release is done (:mod:`..moves`): publishing the destination takes the
trajectories out of every source in one step, so after a crash at any point each trajectory is
listed by exactly one directory, and the next run (or writer, or ``verify --repair``) on a source
finishes its release.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..checkpoint import output_directory, read_rows, writing
from ..directory import DirectoryContents, check_directory, is_buffer_directory, read_directory
from ..errors import BufferDirectoryError, CorruptBufferError, InvalidArgumentError
from ..formats import SEGMENT
from ..formats.segment import SegmentStore
from ..fsio import atomic_copy, fsync_dir, link_or_copy, publish_directory, staged_directory
from ..integrity import file_checksum, mismatch
from ..journal import write_index
from ..lock import DirectoryLock, destination_lock
from ..metadata import write_metadata
from ..moves import MOVED_IN, finish_move, mark_arrival, new_token, record_move, release
from ..record import Record
from ..schema import Schema, combine
from ..validate import check_int

_RANK_DIR = re.compile(r"^rank_(\d+)$")

Progress = Callable[[int, int], None]
"""``progress(done, total)``, called as trajectories are placed."""


@dataclass
class MergeSplitResult:
    """What :func:`merge_or_split` did.

    Attributes:
        sources: the source directories, in rank order.
        save_path: the destination directory.
        trajectories: trajectories written to the destination.
        transitions: their transitions.
        moved: files were moved (``False``: copied).
        origin: ``(source directory, original id)`` per new id.
    """

    sources: list[str]
    save_path: str
    trajectories: int
    transitions: int
    moved: bool
    origin: list[tuple[str, int]]


def find_sources(source_path: str) -> list[str]:
    """``rank_*`` buffer directories under ``source_path`` (by rank), or ``source_path`` itself."""
    root = check_directory(source_path)
    ranks = []
    with os.scandir(root) as it:
        for entry in it:
            m = _RANK_DIR.match(entry.name)
            if m and entry.is_dir(follow_symlinks=False) and is_buffer_directory(entry.path):
                ranks.append((int(m.group(1)), entry.path))
    if ranks:
        return [path for _, path in sorted(ranks)]
    if is_buffer_directory(root):
        return [root]
    raise BufferDirectoryError(
        f"{root}: neither a buffer directory (metadata.json) nor a folder of rank_* buffer directories"
    )


def plan(contents: list[DirectoryContents], split_count: int | None) -> list[tuple[int, Record]]:
    """``(source number, record)`` in output order: interleaved by original id, then cut."""
    order = sorted(
        ((r.trajectory_id, src, r) for src, c in enumerate(contents) for r in c.records),
        key=lambda item: (item[0], item[1]),
    )
    chosen = [(src, r) for _, src, r in order]
    if split_count is not None:
        if split_count > len(chosen):
            raise InvalidArgumentError(
                f"--split-count {split_count} is more than the {len(chosen)} trajectories the source holds"
            )
        chosen = chosen[:split_count]
    return chosen


def _check_destination(save_path: str, sources: list[str], overwrite: bool) -> str:
    dest = output_directory(save_path, replace_buffer=overwrite, argument="save path")
    real = os.path.realpath(dest)
    for src in sources:
        src_real = os.path.realpath(src)
        if real == src_real or real.startswith(src_real + os.sep):
            raise BufferDirectoryError(f"{dest}: save path must not be inside a source ({src})")
        if src_real.startswith(real + os.sep):
            raise BufferDirectoryError(f"{dest}: save path must not contain a source ({src})")
    return dest


def _verify(staging: str, placed: list[tuple[Record, Record]]) -> None:
    contents, _ = read_directory(staging)
    if [r.trajectory_id for r in contents.records] != list(range(len(placed))):
        raise CorruptBufferError(f"{staging}: the merged index does not list 0..{len(placed) - 1}")
    for record, new in placed:
        if new.row is not None:
            continue  # segment rows were copied and fsync'd; read_directory checked the entries
        src, dst = record.path or "", new.path or ""
        if os.path.getsize(src) != os.path.getsize(dst):
            raise CorruptBufferError(f"{dst}: size differs from its source {src}")


def merge_or_split(
    source_path: str,
    save_path: str,
    split_count: int | None = None,
    copy: bool = False,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> MergeSplitResult:
    """Merge the ``rank_*`` directories under ``source_path`` (or take ``source_path`` itself)
    into ``save_path``, keeping the first ``split_count`` trajectories if given.

    Raises:
        InvalidArgumentError: ``split_count`` < 1 or larger than the source.
        BufferDirectoryError: the destination exists and is not empty (without ``overwrite``), is
            not a buffer directory, or lies in or around a source.
        CorruptBufferError, BufferNotFoundError: a source is inconsistent (nothing is changed).
    """
    split_count = check_int("--split-count", split_count, 1, allow_none=True)
    sources = find_sources(source_path)
    with contextlib.ExitStack() as held:
        if not copy:  # moving changes the sources: no other writer may be in them
            for src in sources:
                held.enter_context(DirectoryLock.acquire(src, "merge/split (moving files out)"))
        return _merge_or_split(sources, save_path, split_count, copy, progress, overwrite)


def _merge_or_split(
    sources: list[str],
    save_path: str,
    split_count: int | None,
    copy: bool,
    progress: Progress | None,
    overwrite: bool,
) -> MergeSplitResult:
    contents: list[DirectoryContents] = []
    schema: Schema | None = None
    if not copy:  # a move an earlier run left half done: finish it (or forget it) first
        for src in sources:
            finish_move(src)
    for src in sources:
        c, s = read_directory(src)
        contents.append(c)
        if s is not None:
            schema = combine(schema, s, f"cannot merge: {src}: ", BufferDirectoryError)
    fmts = {c.fmt for c in contents}
    if len(fmts) > 1:
        raise BufferDirectoryError(
            f"sources mix trajectory formats {sorted(fmts)}; merge directories of one format"
        )
    fmt = fmts.pop()
    chosen = plan(contents, split_count)
    dest = _check_destination(save_path, sources, overwrite)
    placed: list[tuple[Record, Record]] = []  # (source record, record in the output)
    with (
        writing(dest),
        destination_lock(dest, "merge/split") as destination,
        staged_directory(dest) as staging,
    ):
        store = SegmentStore(staging, schema, dedup=True) if fmt == SEGMENT and schema is not None else None
        for new_id, (_, record) in enumerate(chosen):
            renumbered = dataclasses.replace(record, trajectory_id=new_id, directory=staging)
            if store is not None:  # segments: copy the rows into the output's own segments
                name, row = store.append(read_rows(record, schema), envs=record.num_envs)
                renumbered = dataclasses.replace(renumbered, file=name, row=row)
            else:
                name = renumbered.canonical_name(record.fmt or fmt)
                renumbered = dataclasses.replace(renumbered, file=name)
                target = os.path.join(staging, name)
                if copy:
                    crc = atomic_copy(record.path or "", target)
                    if record.checksum is not None and crc != record.checksum:
                        raise mismatch(record.trajectory_id, record.path or "", record.checksum, crc)
                else:
                    link_or_copy(record.path or "", target)
                    crc = record.checksum if record.checksum is not None else file_checksum(target)
                renumbered = dataclasses.replace(renumbered, checksum=crc)
            placed.append((record, renumbered))
            if progress is not None:
                progress(new_id + 1, len(chosen))
        if store is not None:
            store.close()
        entries = [r.to_entry() for _, r in placed]
        write_index(staging, entries)
        write_metadata(staging, fmt, entries, len(entries), contents[0].seed, schema)
        _verify(staging, placed)
        moving = {c.path: [r.trajectory_id for s, r in chosen if s == n] for n, c in enumerate(contents)}
        moving = {path: ids for path, ids in moving.items() if ids} if not copy else {}
        if moving:  # publishing the output is the step that moves them (see .moves)
            token = new_token()
            mark_arrival(staging, token, list(moving))
            for path, ids in moving.items():
                record_move(path, token, dest, ids)
        destination.claim()
        # the output stays locked from the moment it appears until the sources are released
        arrival = DirectoryLock.acquire(staging, "merge/split (moving files in)") if moving else None
        try:
            publish_directory(staging, dest)
        except BaseException:
            if arrival is not None:
                arrival.release()
            raise
    try:
        for path, ids in moving.items():
            release(path, ids, remove_empty=True)
        if moving:
            os.unlink(os.path.join(dest, MOVED_IN))
            fsync_dir(dest)
    except OSError as exc:
        raise BufferDirectoryError(
            f"{dest}: the output is complete, but removing the moved trajectories from their "
            f"sources failed ({exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}); "
            "the sources no longer list them; the next writer of a source, or verify --repair on "
            "it, deletes what is left of them there"
        ) from exc
    finally:
        if arrival is not None:
            arrival.release()
    return MergeSplitResult(
        sources=sources,
        save_path=dest,
        trajectories=len(placed),
        transitions=sum(r.num_transitions for r, _ in placed),
        moved=not copy,
        origin=[(contents[src].path, r.trajectory_id) for src, r in chosen],
    )
