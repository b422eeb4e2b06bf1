"""Checkpoint I/O: saving whole buffer directories and loading them.

* :func:`snapshot_of` takes what a checkpoint must contain from a buffer's records and row
  store; :func:`save` writes it into a temporary sibling directory and publishes it in place
  only when complete (:func:`~.fsio.publish_directory`), so an interrupted save never looks
  like a checkpoint; :func:`moved` tells where the buffer's records now live.
* :func:`read` parses a directory (ours or RLinf's), optionally one rank's share.

The auto-save directory a buffer writes to as it runs is :mod:`.autosave`'s.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch

from . import formats
from .directory import DirectoryContents, is_buffer_directory, read_directory
from .errors import (
    BufferDirectoryError,
    BufferNotFoundError,
    InvalidArgumentError,
    ReplayBufferError,
)
from .formats.segment import SegmentStore
from .fsio import link_or_copy, make_dirs, staged_directory
from .fsio import publish_directory as publish  # save's last step, by this name
from .integrity import file_checksum, rows_checksum
from .journal import write_index
from .lock import destination_lock, is_empty_directory
from .metadata import write_metadata
from .naming import safe_file
from .record import Record
from .schema import Schema
from .store import RowStore, read_rows, reading, verify_record
from .trajectory import Key, file_dict_from_columns

_COMPACT_MIN = 1024


def same_path(a: str, b: str) -> bool:
    """Whether two paths name the same directory."""
    return os.path.realpath(os.fspath(a)) == os.path.realpath(os.fspath(b))


def read(
    load_path: str,
    share: tuple[int, int] = (0, 1),
    skip_corrupt: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[DirectoryContents, Schema | None]:
    """Parse a buffer directory; see :func:`rlinf_replay_buffer.directory.read_directory`."""
    return read_directory(load_path, share, skip_corrupt=skip_corrupt, progress=progress)


@dataclass(frozen=True)
class Snapshot:
    """What a checkpoint must contain, taken under the buffer's lock.

    Attributes:
        records: trajectories in index order.
        rows_of: ``rows_of(trajectory_id)`` returns a private copy of a trajectory's flattened
            rows ``[T * B, ...]`` if the buffer holds them in memory (else ``None``); called
            only for records whose file is missing, one at a time, so a save never needs a
            second copy of the whole buffer.
    """

    records: list[Record]
    rows_of: Callable[[int], dict[Key, torch.Tensor] | None]
    schema: Schema | None
    counter: int
    seed: int | None
    fmt: str
    extra: Callable[[str], None] | None = None
    """Called with the staging directory before the index is written (e.g. priorities)."""
    dedup: bool = True
    """``segment``: store paired ``next_obs`` rows once (:class:`~.formats.segment.SegmentStore`)."""


def record_rows(
    record: Record, rows_of: Callable[[int], dict[Key, torch.Tensor] | None], schema: Schema | None
) -> dict[Key, torch.Tensor]:
    """A record's rows from memory (``rows_of``) or else from its file or segment."""
    data = rows_of(record.trajectory_id)
    if data is None and record.path is not None and os.path.exists(record.path):
        data = read_rows(record, schema)
    if data is None:
        raise BufferNotFoundError(
            f"trajectory {record.trajectory_id} has no file and no rows in memory to save"
        )
    return data


def write_record(
    record: Record,
    rows_of: Callable[[int], dict[Key, torch.Tensor] | None],
    target: str,
    fmt: str,
    schema: Schema | None = None,
) -> int:
    """Materialize one trajectory as file ``target`` in ``fmt`` (``pt``/``pkl``): link/copy its
    file if it has one (converting between formats, after checking its checksum), else
    serialize its rows. Returns the CRC-32 of the file written."""
    if record.fmt in formats.FORMATS and record.path is not None and os.path.exists(record.path):
        safe_file(record.directory or "", record.file or "")  # it may have changed since loading
        if record.fmt == fmt:
            link_or_copy(record.path, target)  # same bytes: the checksum still finds damage
            return record.checksum if record.checksum is not None else file_checksum(target)
        verify_record(record, schema=schema)
        with reading(record):
            data = formats.read(record.path, record.fmt or "pt")
        return formats.write(target, fmt, data)
    data = record_rows(record, rows_of, schema)
    shape = (record.num_steps, record.num_envs)
    columns = {k: v.reshape(*shape, *v.shape[1:]) for k, v in data.items()}
    return formats.write(
        target,
        fmt,
        file_dict_from_columns(
            columns, record.max_episode_length, record.model_weights_id, record.model_update_count
        ),
    )


def place_records(
    records: list[Record],
    rows_of: Callable[[int], dict[Key, torch.Tensor] | None],
    directory: str,
    fmt: str,
    schema: Schema | None,
    store: SegmentStore | None = None,
    dedup: bool = True,
) -> dict[int, Record]:
    """Write ``records`` into ``directory`` in ``fmt``; return each one re-homed there.

    File formats get one file per trajectory; ``segment`` appends rows to ``store`` (a new
    store over ``directory`` if not given, storing paired ``next_obs`` rows once if ``dedup``).
    """
    placed: dict[int, Record] = {}
    if fmt == formats.SEGMENT and records:
        assert schema is not None
        own_store = store is None
        store = store or SegmentStore(directory, schema, dedup=dedup)
        try:
            for record in records:
                rows = record_rows(record, rows_of, schema)
                crc = rows_checksum(rows, schema)
                name, row = store.append(rows, sync=False, envs=record.num_envs)  # one fsync per file below
                placed[record.trajectory_id] = replace(
                    record, directory=directory, file=name, row=row, checksum=crc
                )
            store.sync()  # every row is durable before any index entry names it
        finally:
            if own_store:
                store.close()
        return placed
    for record in records:
        name = record.canonical_name(fmt)
        crc = write_record(record, rows_of, os.path.join(directory, name), fmt, schema)
        placed[record.trajectory_id] = replace(record, directory=directory, file=name, row=None, checksum=crc)
    return placed


def output_directory(
    path: str,
    *,
    replace_buffer: bool,
    argument: str = "save_path",
    what: str = "buffer directory",
    recognize: Callable[[str], bool] = is_buffer_directory,
) -> str:
    """Absolute path of a buffer directory about to be written at ``path``, with its parent made.

    ``path`` may be missing or an empty directory; an existing buffer directory only with
    ``replace_buffer`` (it is then swapped out atomically by :func:`publish`). Anything else (a
    file, a symlink, a directory of other files) is refused and never touched. For another kind
    of directory (a LeRobot dataset), ``what`` names it in messages and ``recognize(path)`` tells
    one.

    Raises:
        InvalidArgumentError: ``path`` is not a path.
        BufferDirectoryError: ``path`` holds something that may not be replaced.
    """
    if not isinstance(path, str | os.PathLike) or not os.fspath(path):
        raise InvalidArgumentError(f"{argument} must be a directory path, got {path!r}")
    dest = os.path.abspath(os.fspath(path))
    if os.path.islink(dest) or (os.path.lexists(dest) and not os.path.isdir(dest)):
        raise BufferDirectoryError(f"{dest}: exists and is not a directory; choose a new or empty {argument}")
    if os.path.lexists(dest) and not is_empty_directory(dest):
        if not recognize(dest):
            raise BufferDirectoryError(
                f"{dest}: exists, is not empty and is not a {what}; refusing to "
                f"replace it (choose a new or empty {argument})"
            )
        if not replace_buffer:
            raise BufferDirectoryError(
                f"{dest}: already exists and is not empty; choose a new or empty {argument}, "
                f"or pass overwrite=True to replace the {what} there"
            )
    with writing(dest, f"the {what}"):
        make_dirs(os.path.dirname(dest))  # durable: publishing fsyncs only the parent's entries
    return dest


@contextlib.contextmanager
def writing(dest: str, what: str = "the buffer directory") -> Iterator[None]:
    """Report an OS refusal to write a directory (permissions, disk full) as
    :class:`BufferDirectoryError` naming it; the library's own errors pass unchanged."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, ReplayBufferError):
            raise
        raise BufferDirectoryError(
            f"{dest}: cannot write {what}: {exc.strerror or exc}"
            f"{f' ({exc.filename})' if exc.filename else ''}; fix the permissions or free space "
            "and try again (nothing was changed)"
        ) from exc


def save(snapshot: Snapshot, save_path: str) -> dict[int, Record]:
    """Write ``snapshot`` as a complete buffer directory at ``save_path``.

    Returns:
        ``{trajectory_id: record re-homed in save_path}`` of the trajectories written.
    """
    dest = output_directory(save_path, replace_buffer=True)
    with (
        writing(dest),
        destination_lock(dest, "save_checkpoint") as target,
        staged_directory(dest) as staging,
    ):
        placed = place_records(
            snapshot.records, snapshot.rows_of, staging, snapshot.fmt, snapshot.schema, dedup=snapshot.dedup
        )
        if snapshot.extra is not None:
            snapshot.extra(staging)
        entries = [placed[r.trajectory_id].to_entry() for r in snapshot.records]
        write_index(staging, entries)
        write_metadata(staging, snapshot.fmt, entries, snapshot.counter, snapshot.seed, snapshot.schema)
        target.claim()
        publish(staging, dest)
    return {tid: replace(r, directory=dest) for tid, r in placed.items()}


def snapshot_of(
    records: list[Record],
    store: RowStore,
    lock: threading.RLock,
    *,
    counter: int,
    seed: int | None,
    fmt: str,
    extra: Callable[[str], None] | None = None,
    dedup: bool = True,
) -> tuple[Snapshot, Callable[[], None]]:
    """What a checkpoint of ``records`` (in index order) must contain; call under ``lock``.

    Rows held only in memory are copied one trajectory at a time while the checkpoint is
    written (the row store keeps them readable even if the ring evicts them meanwhile). Files in
    RLinf's flattened layout are written again from their aligned rows, never linked or copied:
    RLinf could not read them back itself. ``dedup``: a ``segment`` checkpoint stores paired
    ``next_obs`` rows once. Returns the snapshot and ``release()``, to call
    (under ``lock``) when the checkpoint is written or has failed.
    """
    schema = store.schema
    memory_rows, release = store.snapshot_rows(records)
    flat = {r.trajectory_id: r for r in records if r.rlinf_flat and r.path is not None}

    def rows_of(trajectory_id: int) -> dict[Key, torch.Tensor] | None:
        original = flat.get(trajectory_id)
        if original is not None:
            return store.read(original, schema)
        with lock:
            return memory_rows(trajectory_id)

    snapshot = Snapshot(
        records=[
            replace(r, directory=None, file=None, row=None, rlinf_flat=False)
            if r.trajectory_id in flat
            else r
            for r in records
        ],
        rows_of=rows_of,
        schema=schema,
        counter=counter,
        seed=seed,
        fmt=fmt,
        extra=extra,
        dedup=dedup,
    )
    return snapshot, release


def moved(record: Record, placed: Record | None, save_path: str) -> Record | None:
    """Where ``record`` lives after a checkpoint to ``save_path`` that wrote it as ``placed``:
    only records whose files were in ``save_path`` (a checkpoint it replaced) move; the others
    keep their files (the new checkpoint may be deleted or reused). ``None``: it stays."""
    if placed is None or record.directory is None:
        return None
    if os.path.realpath(record.directory) != os.path.realpath(save_path):
        return None
    checksum = placed.checksum if record.rlinf_flat else record.checksum  # rewritten: a new file
    return replace(
        record,
        directory=placed.directory,
        file=placed.file,
        row=placed.row,
        checksum=checksum,
        rlinf_flat=False,
    )
