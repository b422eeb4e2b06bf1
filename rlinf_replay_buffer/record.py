"""What the index knows of one trajectory: :class:`Record`.

A record holds a trajectory's shape, weights, uuid and checksum, and where its rows are on disk (a
``pt``/``pkl`` file, or rows of a segment), if anywhere yet. :meth:`Record.to_entry` gives its
entry in ``trajectory_index.json`` (:mod:`.journal`); :func:`~.directory.record_from_entry` reads
one back.
"""

from __future__ import annotations

import os
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any

from .naming import rlinf_weights_id, trajectory_file_name
from .trajectory import AlignedTrajectory


@dataclass(frozen=True)
class Record:
    """What the index knows of one trajectory (frozen: a move makes a new record).

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
        return index_entry(
            self.trajectory_id,
            self.num_steps,
            self.num_envs,
            self.max_episode_length,
            self.model_weights_id,
            self.model_update_count,
            self.uuid,
            self.shape,
            name,
            self.row,
            self.checksum,
            self.rlinf_flat,
        )

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


def index_entry(
    trajectory_id: int,
    num_steps: int,
    num_envs: int,
    max_episode_length: int | None,
    model_weights_id: str,
    model_update_count: int,
    uuid: str,
    shape: list[int],
    file: str,
    row: int | None,
    checksum: int | None,
    rlinf_flat: bool,
) -> dict[str, Any]:
    """The index entry of a trajectory stored in ``file`` (at ``row`` for a segment), with the
    values of :class:`Record`'s fields (see :meth:`Record.to_entry`, which calls it)."""
    entry = {
        "num_samples": num_steps * num_envs,
        "trajectory_id": trajectory_id,
        "max_episode_length": max_episode_length,
        "shape": list(shape),
        "model_weights_uuid": model_weights_id,
        "model_update_count": model_update_count,
        "uuid": uuid,
        "num_steps": num_steps,
        "num_envs": num_envs,
    }
    if row is not None:
        entry.update(model_weights_id=model_weights_id, file=file, row=row)
    else:
        entry.update(model_weights_id=rlinf_weights_id(file), file=file)
    if checksum is not None:
        entry["crc32"] = checksum
    if rlinf_flat:
        entry["rlinf_flat"] = True
    return entry
