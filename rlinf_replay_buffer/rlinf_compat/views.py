"""Read-only views of a buffer under RLinf's private names.

RLinf's own tools read ``_trajectory_id_list``, ``_trajectory_index`` and ``_load_trajectory``
on its buffer (``toolkits/replay_buffer/visualize.py`` reads all three); the buffer answers them
with these views of its index and row store. Changing what they return changes nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from ..access import as_trajectory, held_record
from ..contents import Contents
from ..errors import InvalidArgumentError
from ..index import TrajectoryIndex
from ..naming import rlinf_weights_id
from ..trajectory import Trajectory


def _as_id(trajectory_id: object) -> int | None:
    if isinstance(trajectory_id, bool) or not isinstance(trajectory_id, int | np.integer):
        return None
    return int(trajectory_id)


class RLinfIndexView(Mapping):
    """``{trajectory_id: entry}`` in RLinf's index form, oldest first: each entry a new dict with
    ``num_samples`` (``T * B``), ``trajectory_id``, ``max_episode_length``, ``shape`` (of
    ``rewards``, ``(T, B, ...)``) and ``model_weights_id``, built when it is looked up (no copy
    of the whole index)."""

    def __init__(self, index: TrajectoryIndex, lock: threading.RLock) -> None:
        self._index = index
        self._lock = lock

    def __getitem__(self, trajectory_id: object) -> dict[str, Any]:
        tid = _as_id(trajectory_id)
        with self._lock:
            if tid is None or tid not in self._index:
                raise KeyError(trajectory_id)
            record = self._index[tid]
            return {
                "num_samples": record.num_transitions,
                "trajectory_id": record.trajectory_id,
                "max_episode_length": record.max_episode_length,
                "shape": tuple(record.shape),
                "model_weights_id": record.model_weights_id,
            }

    def __iter__(self) -> Iterator[int]:
        with self._lock:
            return iter(self._index.ids().tolist())

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, trajectory_id: object) -> bool:
        tid = _as_id(trajectory_id)
        with self._lock:
            return tid is not None and tid in self._index

    def __repr__(self) -> str:
        return f"<RLinf index view of {len(self)} trajectories>"


def load_trajectory(
    contents: Contents, trajectory_id: int, model_weights_id: str | None = None
) -> Trajectory:
    """One stored trajectory, wherever its rows are, as a :class:`Trajectory` of new
    ``[T, B, ...]`` tensors (aligned rows: every field has ``T`` rows) with ``curr_obs``,
    ``next_obs`` and ``forward_inputs`` dicts (empty when absent): what the public
    ``get_trajectory`` returns (:mod:`..access`), plus the weights check. Data read from disk is
    checked against its checksum first. ``model_weights_id`` (``None``: not checked) may be the
    trajectory's or the file-name form ``{uuid}_{count}`` of ``trajectory_index.json``.

    Raises:
        InvalidArgumentError (a ``ValueError``, as RLinf): unknown id or other weights id.
        CorruptTrajectoryError: its data fails its checksum or cannot be read.
    """
    with contents.lock:
        record = held_record(contents.index, trajectory_id, "_trajectory_id_list lists their ids")
        if model_weights_id is not None:
            known = {record.model_weights_id}
            if record.file is not None and record.row is None:
                known.add(rlinf_weights_id(record.file))
            if model_weights_id not in known:
                raise InvalidArgumentError(
                    f"trajectory {record.trajectory_id} has model_weights_id "
                    f"{record.model_weights_id!r}, not {model_weights_id!r}"
                )
        columns = contents.store.trajectory(record)
    return as_trajectory(record, columns, empty_dicts=True)
