"""Samplers: which transitions of the window a draw picks. They draw row numbers and never touch
storage; the row store (:mod:`.store`) then reads the rows.

Every sampler follows the small :class:`Sampler` protocol: ``draw(window, request)`` returns a
:class:`Draw` of *window-flat* row numbers (transition ``f`` of the window is row ``f - begin[p]``
of its trajectory ``p``; see :class:`~.index.Window`), ``population(window, request)`` tells
what a draw picks from, ``forget()`` drops what it derived from trajectories. Draws come only
from the buffer's own ``torch.Generator``, so a run is reproducible from the seed.

* :class:`Uniform`: every transition of the window equally likely; with ``max_staleness`` only
  those of fresh trajectories (the freshness filter, :func:`fresh_mask`).
* :class:`Sequences`: runs of ``seq_len`` consecutive steps of one env column (:mod:`.sequences`);
  the episode ends it needs come from a callable the buffer gives it.
* :class:`Prioritized`: in proportion to stored priorities (a sum tree, :mod:`.priority`),
  with importance weights.

A new sampler is a class with these three methods, built in :meth:`Samplers.of`; the buffer picks
one per call.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from .errors import EmptyBufferError
from .formats.priorities import SavedPriorities
from .index import Window
from .priority import PrioritizedSampler
from .sequences import SequenceTable, draw_sequences, valid_starts


@dataclass(frozen=True)
class Request:
    """What a caller asked for: ``num`` draws, of single transitions (``seq_len`` ``None``) or
    of runs of ``seq_len`` steps (padded past episode ends with ``pad``)."""

    num: int
    seq_len: int | None = None
    pad: bool = False

    @property
    def transitions(self) -> int:
        """Transitions the draw returns (what a rate limiter counts)."""
        return self.num * (self.seq_len or 1)


@dataclass
class Draw:
    """Rows to read and what goes with them.

    Attributes:
        rows: window-flat row numbers, int64 ``[prod(shape)]``.
        shape: the batch shape: ``(N,)`` or ``(N, L)`` for sequences.
        extras: tensors added to the batch as they are (``indices``, ``weights``, ``mask``).
        padding: bool ``[prod(shape)]``, true where the row is padding (zeroed), or ``None``.
    """

    rows: torch.Tensor
    shape: tuple[int, ...]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    padding: torch.Tensor | None = None


class Sampler(Protocol):
    """What the buffer asks of a sampler."""

    def draw(self, window: Window, request: Request) -> Draw:
        """Pick ``request`` rows from a non-empty window (raise :class:`EmptyBufferError`
        when nothing can be picked)."""
        ...

    def population(self, window: Window, request: Request) -> float:
        """How much a draw picks from: items of a uniform draw, or a priority mass."""
        ...

    def forget(self) -> None:
        """Drop everything derived from trajectories (ids may be given again)."""
        ...


def fresh_mask(window: Window, max_staleness: int | None) -> np.ndarray | None:
    """Per window trajectory: within ``max_staleness`` policy updates of the newest one
    (bool ``[W]``), or ``None`` without a bound."""
    if max_staleness is None or not len(window):
        return None
    return window.updates >= window.updates.max() - max_staleness


class Uniform:
    """Transitions drawn uniformly with replacement (fresh trajectories only with
    ``max_staleness``)."""

    def __init__(self, generator: torch.Generator, max_staleness: int | None = None) -> None:
        self.generator = generator
        self.max_staleness = max_staleness

    def _allowed(self, window: Window) -> np.ndarray | None:
        fresh = fresh_mask(window, self.max_staleness)
        return None if fresh is None or fresh.all() else window.counts * fresh

    def draw(self, window: Window, request: Request) -> Draw:
        allowed = self._allowed(window)
        if allowed is None:
            rows = torch.randint(0, window.total, (request.num,), generator=self.generator, dtype=torch.int64)
            return Draw(rows, (request.num,))
        cum = np.cumsum(allowed)
        u = torch.randint(
            0, int(cum[-1]), (request.num,), generator=self.generator, dtype=torch.int64
        ).numpy()
        positions = np.searchsorted(cum, u, side="right")
        flat = window.begins[positions] + (u - (cum - allowed)[positions])
        return Draw(torch.from_numpy(flat), (request.num,))

    def population(self, window: Window, request: Request) -> float:
        allowed = self._allowed(window)
        return window.total if allowed is None else int(allowed.sum())

    def forget(self) -> None:
        """Nothing is derived."""


class Sequences:
    """Runs of ``seq_len`` consecutive steps of one env column, uniform over valid starts.

    Args:
        generator: the buffer's generator.
        max_staleness: start only in fresh trajectories (``None``: all).
        episode_ends: ``episode_ends(trajectory_id)`` is bool ``[T, B]``, true where an
            episode ends (the buffer reads it from the trajectory's flags once and caches it).
    """

    def __init__(
        self,
        generator: torch.Generator,
        max_staleness: int | None,
        episode_ends: Callable[[int], np.ndarray],
    ) -> None:
        self.generator = generator
        self.max_staleness = max_staleness
        self._episode_ends = episode_ends
        self._starts: dict[tuple[int, int, bool], np.ndarray] = {}  # (tid, L, pad) -> starts
        self._derived: dict[str, tuple[tuple[int, int], Any]] = {}  # name -> (window key, value)

    def draw(self, window: Window, request: Request) -> Draw:
        length, num = request.seq_len or 1, request.num
        table = self._table(window, length, request.pad)
        if not len(table.starts):
            raise EmptyBufferError(
                f"cannot sample sequences of {length} steps: no trajectory of the window has a run "
                "that long without an episode end; shorten seq_len or pass pad=True"
            )
        rows, mask = draw_sequences(
            table,
            window.begins,
            window.counts // window.envs,
            window.envs,
            (lambda: self._window_dones(window)) if request.pad else None,
            num,
            length,
            self.generator,
        )
        mask_t = torch.from_numpy(mask)
        padding = ~mask_t.reshape(-1)
        return Draw(
            torch.from_numpy(rows.reshape(-1)),
            (num, length),
            {"mask": mask_t},
            padding if bool(padding.any()) else None,
        )

    def population(self, window: Window, request: Request) -> float:
        return len(self._table(window, request.seq_len or 1, request.pad).starts)

    def forget(self) -> None:
        self._starts.clear()
        self._derived.clear()

    def _cached(self, window: Window, name: str, build: Callable[[], Any]) -> Any:
        held = self._derived.get(name)
        if held is None or held[0] != window.key:
            held = self._derived[name] = (window.key, build())
        return held[1]

    def _window_dones(self, window: Window) -> np.ndarray:
        """Episode-end flag of every window-flat row (bool ``[window transitions]``)."""
        return self._cached(
            window,
            "dones",
            lambda: np.concatenate([self._episode_ends(t).reshape(-1) for t in window.ids.tolist()]),
        )

    def _table(self, window: Window, length: int, pad: bool) -> SequenceTable:
        fresh = fresh_mask(window, self.max_staleness)

        def build() -> SequenceTable:
            starts = [
                self._valid_starts(tid, length, pad, 16 * max(64, len(window)))
                if fresh is None or fresh[p]
                else None
                for p, tid in enumerate(window.ids.tolist())
            ]
            return SequenceTable.build(window.begins, starts)

        return self._cached(window, f"sequences-{length}-{pad}", build)

    def _valid_starts(self, tid: int, length: int, pad: bool, limit: int) -> np.ndarray:
        key = (tid, length, pad)
        starts = self._starts.get(key)
        if starts is None:
            if len(self._starts) > limit:
                self._starts.clear()  # drop entries of trajectories that left
            starts = self._starts[key] = valid_starts(self._episode_ends(tid), length, pad)
        return starts


class Prioritized:
    """Transitions drawn in proportion to ``(priority + eps) ** alpha`` over the window.

    The window's trajectories own consecutive slots of a sum tree, laid out in window order;
    a batch's ``indices`` are those slots (int64 ``[N]``), its ``weights`` the importance
    weights (float32 ``[N]``). Slots of trajectories that leave the window are freed.
    """

    def __init__(self, alpha: float, beta: float, eps: float, generator: torch.Generator) -> None:
        self.tree = PrioritizedSampler(alpha, beta, eps, generator=generator)
        self._slots: OrderedDict[int, tuple[int, int]] = OrderedDict()  # tid -> (first slot, n)
        self._starts: tuple[tuple[int, int], np.ndarray] | None = None

    @property
    def beta(self) -> float:
        """Importance-sampling exponent in [0, 1] (settable, e.g. annealed towards 1)."""
        return self.tree.beta

    @beta.setter
    def beta(self, value: float) -> None:
        self.tree.beta = value

    def draw(self, window: Window, request: Request) -> Draw:
        starts = self.slot_starts(window)
        slots, weights = self.tree.sample(request.num)
        positions = np.searchsorted(starts, slots, side="right") - 1
        flat = window.begins[positions] + (slots - starts[positions])
        extras = {"indices": torch.from_numpy(slots), "weights": torch.from_numpy(weights)}
        return Draw(torch.from_numpy(flat), (request.num,), extras)

    def population(self, window: Window, request: Request) -> float:
        self.slot_starts(window)
        return float(self.tree.total)

    def forget(self) -> None:
        self.tree.clear()
        self._slots.clear()
        self._starts = None

    def update(self, indices: Any, priorities: Any) -> int:
        """Set priorities of sampled slots; slots that left are skipped. Returns how many."""
        return self.tree.update_priorities(indices, priorities, skip_removed=True)

    def stored(self, indices: Any) -> np.ndarray:
        """Stored values ``(p + eps) ** alpha`` of live slots (float64 ``[K]``)."""
        return self.tree.probabilities(indices) * self.tree.total

    def slot_starts(self, window: Window) -> np.ndarray:
        """Give the window's trajectories (and only them) slots, in window order; return the
        first slot of each window trajectory (int64 ``[W]``)."""
        if self._starts is not None and self._starts[0] == window.key:
            return self._starts[1]
        tree, slots, ids, counts = self.tree, self._slots, window.ids, window.counts
        first = int(ids[0])
        if slots and next(iter(slots)) > first:  # the window grew backwards: lay it out again
            self.forget()
        while slots and next(iter(slots)) < first:  # left the window
            _, (start, n) = slots.popitem(last=False)
            tree.remove(start, n)
        newest = next(reversed(slots)) if slots else -1
        for p in np.flatnonzero(ids > newest).tolist():
            slots[int(ids[p])] = (tree.add(int(counts[p])), int(counts[p]))
        if len(slots) != len(ids):  # a trajectory left from the middle: lay it out again
            self.forget()
            for tid, n in zip(ids.tolist(), counts.tolist(), strict=True):
                slots[tid] = (tree.add(n), n)
        starts = np.fromiter((s for s, _ in slots.values()), dtype=np.int64, count=len(slots))
        self._starts = (window.key, starts)
        return starts

    def saved(self, window: Window, uuid_of: Callable[[int], str]) -> SavedPriorities:
        """The raw priorities of the window's transitions, for ``priorities.json``."""
        saved = SavedPriorities(self.tree.alpha, self.tree.eps, self.tree.max_priority)
        if not window.total:
            return saved
        starts, counts, ends = self.slot_starts(window), window.counts, window.ends
        slots = np.repeat(starts, counts) + (np.arange(window.total) - np.repeat(window.begins, counts))
        raw = self.tree.raw_priorities(slots)
        for p, tid in enumerate(window.ids.tolist()):
            saved.trajectories[tid] = (uuid_of(tid), raw[int(ends[p] - counts[p]) : int(ends[p])])
        return saved

    def restore(self, window: Window, saved: SavedPriorities, uuid_of: Callable[[int], str]) -> None:
        """Give window transitions their saved priorities (trajectories matched by id and uuid;
        the others keep the maximum priority)."""
        before = self.tree.max_priority
        if window.total:
            starts, counts = self.slot_starts(window), window.counts
            slots, values = [], []
            for p, tid in enumerate(window.ids.tolist()):
                entry = saved.trajectories.get(tid)
                if entry is None or entry[0] != uuid_of(tid) or entry[1].size != counts[p]:
                    continue
                slots.append(np.arange(starts[p], starts[p] + counts[p], dtype=np.int64))
                values.append(entry[1])
            if slots:
                self.tree.update_priorities(np.concatenate(slots), np.concatenate(values))
        self.tree.restore_max_priority(max(before, saved.max_priority))


@dataclass(frozen=True)
class Samplers:
    """The samplers of one buffer, sharing its generator (seeded by ``settings.seed``)."""

    uniform: Uniform
    sequences: Sequences
    prioritized: Prioritized | None

    @classmethod
    def of(cls, settings: Any, episode_ends: Callable[[int], np.ndarray]) -> Samplers:
        """Build them from a :class:`~.settings.BufferSettings`; ``episode_ends(trajectory_id)``
        as for :class:`Sequences`."""
        s, generator = settings, torch.Generator().manual_seed(settings.seed)
        prioritized = None
        if s.prioritized:
            prioritized = Prioritized(s.priority_alpha, s.priority_beta, s.priority_eps, generator)
        return cls(
            Uniform(generator, s.max_staleness),
            Sequences(generator, s.max_staleness, episode_ends),
            prioritized,
        )

    @property
    def all(self) -> list[Sampler]:
        """Every sampler (a reset tells each to forget)."""
        return [x for x in (self.uniform, self.sequences, self.prioritized) if x is not None]
