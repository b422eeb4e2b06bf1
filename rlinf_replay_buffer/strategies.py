"""Sampling strategies of the buffer: which window transitions a draw picks.

Each strategy turns the window (ids and cumulative counts, from :mod:`.index`) into window-flat
transition numbers; the rows are then read by :class:`.rows.RowReader`. Uniform draws use
:mod:`.sampler`, sequences :mod:`.sequences`, prioritized draws :mod:`.priority`; freshness
filters the window by ``model_update_count``. :class:`SamplingStrategies` is mixed into
:class:`~.buffer.TrajectoryReplayBuffer`, whose state (index, generator, caches) it uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .batch import Batch, nest
from .errors import (
    EmptyBufferError,
)
from .sequences import SequenceTable, draw_sequences, valid_starts
from .trajectory import (
    Key,
)


class SamplingStrategies:
    """The draws behind ``sample``, ``sample_sequences`` (mixed into the buffer)."""

    def _fresh(self) -> np.ndarray | None:
        """Per window trajectory: within ``max_staleness`` updates of the newest (or None)."""
        if self.max_staleness is None:
            return None
        updates = self._index.window_updates(self._window_size)
        return updates >= updates.max() - self.max_staleness

    def _draw_uniform(self, ids: np.ndarray, ends: np.ndarray, num: int) -> Batch:
        fresh = self._fresh()
        if fresh is None or fresh.all():
            return nest(self._gather(ids, ends, self._sampler.draw_flat(int(ends[-1]), num)))
        counts = np.diff(ends, prepend=0)
        allowed = counts * fresh
        cum = np.cumsum(allowed)
        u = self._sampler.draw_flat(int(cum[-1]), num).numpy()
        positions = np.searchsorted(cum, u, side="right")
        flat = (ends - counts)[positions] + (u - (cum - allowed)[positions])
        return nest(self._gather(ids, ends, torch.from_numpy(flat)))

    def _draw_prioritized(self, ids: np.ndarray, ends: np.ndarray, num: int) -> Batch:
        prio = self._prio
        assert prio is not None
        starts = self._sync_priorities(ids)
        slots, weights = prio.sample(num)
        positions = np.searchsorted(starts, slots, side="right") - 1
        flat = (ends - np.diff(ends, prepend=0))[positions] + (slots - starts[positions])
        batch = nest(self._gather(ids, ends, torch.from_numpy(flat)))
        batch["indices"] = torch.from_numpy(slots)
        batch["weights"] = torch.from_numpy(weights)
        return batch

    def _sync_priorities(self, ids: np.ndarray) -> np.ndarray:
        """Give the window's trajectories (and only them) slots in the priority sampler, in
        window order; return the first slot of each window trajectory (int64 ``[W]``)."""
        prio, slots = self._prio, self._prio_slots
        assert prio is not None
        key = (self._index.version, len(ids))
        if self._prio_starts is not None and self._prio_starts[0] == key:
            return self._prio_starts[1]
        first = int(ids[0])
        if slots and next(iter(slots)) > first:  # the window grew backwards: lay it out again
            prio.clear()
            slots.clear()
        while slots and next(iter(slots)) < first:  # left the window
            _, (start, n) = slots.popitem(last=False)
            prio.remove(start, n)
        newest = next(reversed(slots)) if slots else -1
        counts = np.diff(self._index.window(self._window_size)[1], prepend=0)
        for p in np.flatnonzero(ids > newest).tolist():
            n = int(counts[p])
            slots[int(ids[p])] = (prio.add(n), n)
        if len(slots) != len(ids):  # a trajectory left from the middle: lay it out again
            prio.clear()
            slots.clear()
            for tid, n in zip(ids.tolist(), counts.tolist(), strict=True):
                slots[tid] = (prio.add(n), n)
        starts = np.fromiter((s for s, _ in slots.values()), dtype=np.int64, count=len(slots))
        self._prio_starts = (key, starts)
        return starts

    def _draw_sequences(self, ids: np.ndarray, ends: np.ndarray, num: int, length: int, pad: bool) -> Batch:
        table = self._sequence_table(ids, length, pad)
        if not len(table.starts):
            raise EmptyBufferError(
                f"cannot sample sequences of {length} steps: no trajectory of the window has a run "
                "that long without an episode end; shorten seq_len or pass pad=True"
            )
        counts = np.diff(ends, prepend=0)
        begins = ends - counts
        envs = self._window_envs(ids)
        rows, mask_np = draw_sequences(
            table,
            begins,
            counts // envs,
            envs,
            (lambda: self._window_dones(ids)) if pad else None,
            num,
            length,
            self._generator,
        )
        gathered = self._gather(ids, ends, torch.from_numpy(rows.reshape(-1)))
        mask = torch.from_numpy(mask_np)
        padded = ~mask.reshape(-1)
        any_padded = bool(padded.any())
        out: dict[Key, torch.Tensor] = {}
        for key, tensor in gathered.items():
            if any_padded:
                tensor[padded] = 0
            out[key] = tensor.reshape(num, length, *tensor.shape[1:])
        batch = nest(out)
        batch["mask"] = mask
        return batch

    def _window_cached(self, name: str, build: Callable[[], Any], *extra: Any) -> Any:
        """A value derived from the current window, rebuilt when the index changes."""
        key = (self._index.version, self._window_size, *extra)
        held = self._derived.get(name)
        if held is None or held[0] != key:
            held = self._derived[name] = (key, build())
        return held[1]

    def _window_envs(self, ids: np.ndarray) -> np.ndarray:
        index = self._index
        return self._window_cached(
            "envs", lambda: np.fromiter((index[t].num_envs for t in ids.tolist()), np.int64, len(ids))
        )

    def _window_dones(self, ids: np.ndarray) -> np.ndarray:
        """Episode-end flag of every window-flat row (bool ``[window transitions]``)."""
        return self._window_cached(
            "dones", lambda: np.concatenate([self._dones_of(t).reshape(-1) for t in ids.tolist()])
        )

    def _sequence_table(self, ids: np.ndarray, length: int, pad: bool) -> SequenceTable:
        fresh = self._fresh()

        def build() -> SequenceTable:
            counts = np.diff(self._index.window(self._window_size)[1], prepend=0)
            begins = np.cumsum(counts) - counts
            starts = [
                self._sequence_starts(tid, length, pad) if fresh is None or fresh[p] else None
                for p, tid in enumerate(ids.tolist())
            ]
            return SequenceTable.build(begins, starts)

        return self._window_cached(f"sequences-{length}-{pad}", build)

    def _sequence_starts(self, tid: int, length: int, pad: bool) -> np.ndarray:
        key = (tid, length, pad)
        starts = self._seq_starts.get(key)
        if starts is None:
            if len(self._seq_starts) > 16 * max(64, len(self._index)):
                self._seq_starts.clear()  # drop entries of trajectories that left
            starts = self._seq_starts[key] = valid_starts(self._dones_of(tid), length, pad)
        return starts

    def _dones_of(self, tid: int) -> np.ndarray:
        """Episode ends of a trajectory, bool ``[T, B]`` (``dones``, else terminations or
        truncations; none: no episode ends inside it)."""
        ends = self._episode_ends.get(tid)
        if ends is not None:
            return ends
        record = self._index[tid]
        shape = (record.num_steps, record.num_envs)
        schema = self._schema
        assert schema is not None
        keys = [k for k in (("dones",),) if k in schema] or [
            k for k in (("terminations",), ("truncations",)) if k in schema
        ]
        flags = np.zeros(shape, dtype=bool)
        for key in keys:
            column = self._trajectory_column(record, key)
            flags |= column.reshape(record.num_transitions, -1).ne(0).any(dim=1).numpy().reshape(shape)
        if len(self._episode_ends) > 4 * max(64, len(self._index)):
            self._episode_ends.clear()
        self._episode_ends[tid] = flags
        return flags

    def _forget_sampling_state(self) -> None:
        """Drop what samplers derived from the trajectories (ids may be given again)."""
        if self._prio is not None:
            self._prio.clear()
        self._prio_slots.clear()
        self._prio_starts = None
        self._episode_ends.clear()
        self._seq_starts.clear()
        self._derived.clear()
