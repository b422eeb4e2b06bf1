"""A shard's share of a checkpoint, and replacing a shard's directory atomically.

**Spreading.** :func:`share_of` decides which trajectories of a checkpoint shard ``k`` of ``N``
gets: a folder of exactly ``N`` ``rank_*`` directories goes back rank for rank (ids kept); a
single buffer directory is dealt out like ``load_checkpoint(is_distributed=True)`` (every
``N``-th trajectory in index order, ids kept); any other number of ``rank_*`` directories is
ordered as the merge tool orders them (interleaved by id, renumbered from 0) and dealt out.

**Replacing.** A load (or a ``clear``) must survive a restart of the shard, so the shard's own
directory ``rank_k`` is replaced, not patched: the new contents are assembled in
``.rank_k.incoming`` (itself written atomically), then :func:`commit` renames ``rank_k`` to
``.rank_k.retired`` and ``.rank_k.incoming`` to ``rank_k``. The first rename is the commit
point: :func:`recover`, run before a shard opens its directory, finishes an interrupted commit
(``rank_k`` missing, both others present) and otherwise removes what an unfinished load left.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil

from .. import checkpoint
from ..directory import is_buffer_directory, read_directory
from ..errors import BufferDirectoryError
from ..formats import priorities as priorities_file
from ..fsio import atomic_copy, fsync_dir
from ..naming import refuse_link_out
from ..record import Record
from ..schema import Schema, combine
from ..tools.merge_split import find_sources, plan


@dataclasses.dataclass
class Share:
    """The trajectories one shard loads.

    Attributes:
        records: in the order the shard indexes them (ids as the shard will hold them).
        schema: their columns (``None`` when there are none).
        counter: the id the shard gives its next new trajectory (past every id of the
            checkpoint, so ids stay unique across shards' shares).
        seed: the seed recorded in the checkpoint.
        sources: the buffer directories read.
        priorities: the source's ``priorities.bin`` when the share keeps the source's ids
            (its entries are matched by id and uuid when the shard opens), else ``None``.
    """

    records: list[Record]
    schema: Schema | None
    counter: int
    seed: int | None
    sources: list[str]
    priorities: str | None = None


def share_of(load_path: str, rank: int, num_shards: int, skip_corrupt: bool = False) -> Share:
    """The share of shard ``rank`` of ``num_shards`` in the checkpoint at ``load_path``."""
    sources = find_sources(load_path)
    if len(sources) == num_shards:  # shard for shard
        contents, schema = read_directory(sources[rank], skip_corrupt=skip_corrupt)
        prio = _priorities_of(sources[rank])
        return Share(contents.records, schema, contents.counter, contents.seed, [sources[rank]], prio)
    if len(sources) == 1:  # one directory dealt out, ids kept
        contents, schema = read_directory(sources[0], (rank, num_shards), skip_corrupt=skip_corrupt)
        prio = _priorities_of(sources[0])
        return Share(contents.records, schema, contents.counter, contents.seed, sources, prio)
    everything = []
    schema = None
    for src in sources:
        c, s = read_directory(src, skip_corrupt=skip_corrupt)
        everything.append(c)
        if s is not None:
            schema = combine(schema, s, f"cannot spread {load_path}: {src}: ", BufferDirectoryError)
    order = plan(everything, None)
    mine = [
        dataclasses.replace(record, trajectory_id=new_id)
        for new_id, (_, record) in enumerate(order)
        if new_id % num_shards == rank
    ]
    return Share(mine, schema if mine else None, len(order), everything[0].seed, sources)


def _priorities_of(directory: str) -> str | None:
    path = os.path.join(directory, priorities_file.NAME)
    if not os.path.lexists(path):
        return None
    refuse_link_out(path)  # never read (or copy) a file outside the checkpoint
    return path


def live_dir(root: str, rank: int) -> str:
    """The directory shard ``rank`` works in: ``root/rank_{rank}``."""
    return os.path.join(root, f"rank_{rank}")


def lock_name(rank: int) -> str:
    """The lock file (in the root) the shard serving ``rank`` holds for its life."""
    return f".rank_{rank}.lock"


def incoming_dir(root: str, rank: int) -> str:
    """Where a replacement of ``rank_k`` is assembled."""
    return os.path.join(root, f".rank_{rank}.incoming")


def _retired_dir(root: str, rank: int) -> str:
    return os.path.join(root, f".rank_{rank}.retired")


def stage(share: Share, root: str, rank: int, fmt: str, seed: int | None) -> str:
    """Write ``share`` as a complete buffer directory at ``.rank_k.incoming`` (files are
    hard-linked where the file system allows, converted to ``fmt`` otherwise)."""
    target = incoming_dir(root, rank)
    discard(root, rank)
    prio = share.priorities
    snapshot = checkpoint.Snapshot(
        records=share.records,
        rows_of=lambda _tid: None,
        schema=share.schema,
        counter=share.counter,
        seed=share.seed if share.seed is not None else seed,
        fmt=fmt,
        extra=None if prio is None else (lambda d: atomic_copy(prio, os.path.join(d, priorities_file.NAME))),
    )
    try:
        checkpoint.save(snapshot, target)
    except BaseException:
        discard(root, rank)
        raise
    return target


def discard(root: str, rank: int) -> None:
    """Remove a staged replacement that will not be committed (and partial leftovers)."""
    shutil.rmtree(incoming_dir(root, rank), ignore_errors=True)
    pattern = re.compile(rf"^\.\.rank_{rank}\.incoming\.partial-[0-9a-f]+$")
    if os.path.isdir(root):
        for name in os.listdir(root):
            if pattern.match(name):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def commit(root: str, rank: int) -> None:
    """Replace ``rank_k`` by the staged ``.rank_k.incoming`` (crash-safe; see the module doc)."""
    live, incoming, retired = live_dir(root, rank), incoming_dir(root, rank), _retired_dir(root, rank)
    if not is_buffer_directory(incoming):
        raise BufferDirectoryError(f"{incoming}: no staged directory to commit; load it first")
    shutil.rmtree(retired, ignore_errors=True)
    try:
        if os.path.lexists(live):
            os.rename(live, retired)  # the commit point: from here on, recovery rolls forward
        os.rename(incoming, live)
        fsync_dir(root)
    except OSError as exc:
        raise BufferDirectoryError(
            f"{live}: cannot replace it by {incoming} ({exc.strerror or exc}); recover() finishes "
            "or undoes the swap (a shard runs it when it starts)"
        ) from exc
    shutil.rmtree(retired, ignore_errors=True)


def recover(root: str, rank: int) -> str:
    """Finish or undo what a crash interrupted; returns ``"forward"``, ``"back"`` or ``""``."""
    live, incoming, retired = live_dir(root, rank), incoming_dir(root, rank), _retired_dir(root, rank)
    done = ""
    if not os.path.lexists(live) and os.path.isdir(retired):
        if is_buffer_directory(incoming):
            os.rename(incoming, live)
            done = "forward"
        else:
            os.rename(retired, live)
            done = "back"
        fsync_dir(root)
    shutil.rmtree(retired, ignore_errors=True)
    discard(root, rank)
    return done
