"""Sequence sampling: runs of consecutive steps of one environment column of a trajectory.

A trajectory's aligned rows are ``[T * B]`` with row ``r = t * B + b`` (step ``t``, env ``b``).
A sequence of length ``L`` starting at ``(t, b)`` is rows ``r, r + B, ..., r + (L - 1) * B``.
``dones[t, b]`` marks the last step of an episode (the transition after which the env reset).

* Without padding a start is valid when the whole run lies inside the trajectory (``t + L <= T``)
  and no episode ends before its last step (``dones[t : t + L - 1, b]`` all false): a sequence
  never crosses an episode end, though it may end exactly on one.
* With padding every ``(t, b)`` is a valid start; steps after the episode end or past the
  trajectory's last step are padding (``mask`` false, values zero).

Sampling is uniform over the valid starts of the window: :func:`valid_starts` gives them per
trajectory, :class:`SequenceTable` lists them for the whole window, and :func:`draw_sequences`
draws starts and lays out the rows to gather with array operations only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


def valid_starts(dones: np.ndarray, seq_len: int, pad: bool) -> np.ndarray:
    """Rows ``t * B + b`` where a sequence may start (int64, ascending).

    Args:
        dones: bool ``[T, B]``: step ``t`` of env ``b`` ends an episode.
        seq_len: ``L`` >= 1.
        pad: every step may start a (padded) sequence.
    """
    steps, envs = dones.shape
    if pad:
        return np.arange(steps * envs, dtype=np.int64)
    if seq_len > steps:
        return np.empty(0, dtype=np.int64)
    starts = steps - seq_len + 1
    if seq_len == 1:
        return np.arange(starts * envs, dtype=np.int64)
    # ends in the first L - 1 steps of each run: a sliding-window count over time
    counts = np.concatenate([np.zeros((1, envs), np.int64), np.cumsum(dones, axis=0, dtype=np.int64)])
    crossing = counts[seq_len - 1 : seq_len - 1 + starts] - counts[:starts]  # [starts, B]
    return np.flatnonzero((crossing == 0).reshape(-1)).astype(np.int64)


@dataclass
class SequenceTable:
    """Every valid start of a window, ready for one vectorized draw.

    Attributes:
        starts: window-flat row of each valid start (int64 ``[S]``; window-flat numbers run
            over the window's trajectories in order, ``begin[p] + t * B + b``).
        positions: window position of each start's trajectory (int64 ``[S]``).
    """

    starts: np.ndarray
    positions: np.ndarray

    @classmethod
    def build(cls, begins: np.ndarray, starts_of: list[np.ndarray | None]) -> SequenceTable:
        """``starts_of[p]``: the valid start rows of window trajectory ``p`` (``None``: none)."""
        parts = [(p, s) for p, s in enumerate(starts_of) if s is not None and len(s)]
        if not parts:
            return cls(np.empty(0, np.int64), np.empty(0, np.int64))
        starts = np.concatenate([begins[p] + s for p, s in parts])
        positions = np.repeat(
            np.fromiter((p for p, _ in parts), np.int64, len(parts)),
            np.fromiter((len(s) for _, s in parts), np.int64, len(parts)),
        )
        return cls(starts, positions)


def draw_sequences(
    table: SequenceTable,
    begins: np.ndarray,
    steps: np.ndarray,
    envs: np.ndarray,
    window_dones: Callable[[], np.ndarray] | None,
    num: int,
    seq_len: int,
    generator: torch.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``num`` sequences uniformly over ``table``'s starts (one ``randint``; no loop).

    Args:
        table: the window's valid starts (non-empty).
        begins, steps, envs: per window trajectory: first window-flat row, ``T`` and ``B``.
        window_dones: for padded runs, a callable returning the episode-end flag of every
            window-flat row (bool ``[window transitions]``); ``None`` without padding.
        num, seq_len: ``N`` and ``L``.
        generator: the buffer's generator.

    Returns:
        ``(rows, mask)``: window-flat rows to gather, int64 ``[N, L]`` (padding repeats the
        start row), and bool ``[N, L]``, false for padding.
    """
    pick = torch.randint(0, len(table.starts), (num,), generator=generator, dtype=torch.int64).numpy()
    start, pos = table.starts[pick], table.positions[pick]
    offsets = envs[pos][:, None] * np.arange(seq_len)[None, :]
    rows = start[:, None] + offsets
    if window_dones is None:  # valid starts fit whole runs: nothing to mask
        return rows, np.ones((num, seq_len), dtype=bool)
    t = (start - begins[pos]) // envs[pos]
    inside = (t[:, None] + np.arange(seq_len)[None, :]) < steps[pos][:, None]
    rows = np.where(inside, rows, start[:, None])
    ended = window_dones()[rows] & inside
    before = np.concatenate([np.zeros((num, 1), bool), np.cumsum(ended, axis=1)[:, :-1] > 0], axis=1)
    mask = inside & ~before
    return np.where(mask, rows, start[:, None]), mask
