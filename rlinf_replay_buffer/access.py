"""Whole trajectories back out of a buffer: :func:`get_trajectory` and :func:`iter_trajectories`.

A trajectory comes back as a :class:`~.trajectory.Trajectory` of new CPU tensors ``[T, B, ...]``
holding its aligned rows (every field has ``T`` rows; the extra rows per rollout epoch of
RLinf's layout are dropped on add, see :func:`~.trajectory.align`), with the fields, dtypes and
per-step shapes of the buffer's schema and the trajectory's ``max_episode_length``,
``model_weights_id`` and ``model_update_count`` (those ``add_trajectories`` derived when they
were not given). Its rows are read from wherever they live: waiting for the writer, the
in-memory ring, a ``pt``/``pkl`` file or a segment, of the auto-save directory or of a loaded
one; data read from disk is checked against its checksum on its first read.

RLinf's private ``_load_trajectory`` (:func:`.rlinf_compat.views.load_trajectory`) reads the same
way, through :func:`held_record` and :func:`as_trajectory`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from .contents import Contents
from .errors import CorruptTrajectoryError, InvalidArgumentError
from .index import TrajectoryIndex
from .record import Record
from .trajectory import DICT_FIELDS, Key, Trajectory, file_dict_from_columns
from .validate import check_int

#: what the message for an id the buffer does not hold tells the caller to do
PUBLIC_HINT = (
    "pass an id add_trajectories returned that has not left the buffer since: the window, a "
    "capacity limit, clear() and load_checkpoint() remove trajectories; iter_trajectories() "
    "yields the ones held"
)


def held_record(index: TrajectoryIndex, trajectory_id: object, hint: str = PUBLIC_HINT) -> Record:
    """The record of ``trajectory_id`` in ``index`` (call with the buffer's lock held).

    Raises:
        InvalidArgumentError (a ``ValueError``): ``trajectory_id`` is not an int, or the buffer
            does not hold it; the message says what it holds, then ``hint``.
    """
    tid = check_int("trajectory_id", trajectory_id)
    if tid not in index:
        raise InvalidArgumentError(
            f"trajectory {tid} is not in the buffer (it holds {len(index)} trajectories; {hint})"
        )
    return index[tid]


def as_trajectory(
    record: Record, columns: Mapping[Key, torch.Tensor], empty_dicts: bool = False
) -> Trajectory:
    """The :class:`Trajectory` of a record's columns; a dict field it lacks is ``None`` (as on
    a ``Trajectory`` built without it), or ``{}`` with ``empty_dicts`` (RLinf's tools index them)."""
    data = file_dict_from_columns(
        columns, record.max_episode_length, record.model_weights_id, record.model_update_count
    )
    if empty_dicts:
        for name in DICT_FIELDS:
            data.setdefault(name, {})
    return Trajectory.from_dict(data)


def get_trajectory(contents: Contents, trajectory_id: int) -> Trajectory:
    """The trajectory ``trajectory_id`` the buffer holds, read under the buffer's lock (a read
    from disk included) into new memory: changing the result changes nothing in the buffer.

    Raises:
        InvalidArgumentError: ``trajectory_id`` is not an int or not held (the message says
            what to do).
        CorruptTrajectoryError: its data fails its checksum or cannot be read (whatever
            ``on_corrupt`` is: the trajectory was asked for by its id).
        BufferNotFoundError: its file has disappeared.
    """
    with contents.lock:
        record = held_record(contents.index, trajectory_id)
        columns = contents.store.trajectory(record)
    return as_trajectory(record, columns)


def iter_trajectories(contents: Contents) -> Iterator[Trajectory]:
    """Every trajectory the buffer holds when this is called, oldest first, read one at a time.

    The ids held (with each trajectory's uuid) are noted at the call; each trajectory is read
    when the iterator reaches it, holding the buffer's lock only while it is read, never while
    the caller has it. So adds, samples and saves go on meanwhile: a trajectory added after the
    call is not yielded, and one that left the buffer before the iterator reached it (the
    window, a capacity limit, ``clear()``, ``load_checkpoint()``, or another trajectory now
    holding its id) is skipped. The iterator keeps no trajectory once it has yielded it: memory
    holds one at a time, plus what the caller keeps.

    A trajectory whose data fails its checksum raises :class:`CorruptTrajectoryError` from
    ``next()``; with ``on_corrupt="skip"`` it leaves the buffer with a warning instead, as when
    sampling meets it, and the iteration goes on.
    """
    with contents.lock:
        noted = [(record.trajectory_id, record.uuid) for record in contents.index]
    return _read_each(contents, noted)


def _read_each(contents: Contents, noted: list[tuple[int, str]]) -> Iterator[Trajectory]:
    for tid, uuid in noted:
        found = _read_noted(contents, tid, uuid)
        while found:
            yield found.pop()  # popped first: the generator holds no reference while suspended


def _read_noted(contents: Contents, trajectory_id: int, uuid: str) -> list[Trajectory]:
    """``[trajectory]``, or ``[]`` if it left the buffer (or was skipped as damaged)."""
    with contents.lock:
        record = contents.index.get(trajectory_id)
        if record is None or record.uuid != uuid:
            return []
        try:
            columns = contents.store.trajectory(record)
        except CorruptTrajectoryError as exc:
            if contents.drop_corrupt(exc, stacklevel=5):  # the warning names the caller's next()
                return []
            raise
    return [as_trajectory(record, columns)]
