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
trajectory, :class:`SequencePlan` draws starts and lays out the rows to gather.
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


def run_mask(dones: np.ndarray, start_rows: np.ndarray, seq_len: int) -> np.ndarray:
    """``mask[i, j]``: step ``j`` of the run starting at ``start_rows[i]`` is real (bool ``[N, L]``).

    A step is real when it lies inside the trajectory and no episode ended before it in the run.
    """
    steps, envs = dones.shape
    t0, b = start_rows // envs, start_rows % envs
    t = t0[:, None] + np.arange(seq_len)[None, :]  # [N, L]
    inside = t < steps
    tc = np.minimum(t, steps - 1)
    ended = dones[tc, b[:, None]] & inside  # the episode ends at this step
    # real while no earlier step of the run ended the episode
    before = np.concatenate([np.zeros((len(t0), 1), bool), np.cumsum(ended, axis=1)[:, :-1] > 0], axis=1)
    return inside & ~before


@dataclass
class SequencePlan:
    """Drawn sequences: where their rows are and which steps are padding.

    Attributes:
        positions: window position of each sequence's trajectory (int64 ``[N]``).
        rows: rows to gather, int64 ``[N, L]`` (padding steps repeat the start row).
        mask: bool ``[N, L]``, false for padding.
    """

    positions: np.ndarray
    rows: np.ndarray
    mask: np.ndarray


def draw_sequences(
    counts: np.ndarray,
    starts_of: Callable[[int], np.ndarray],
    dones_of: Callable[[int], np.ndarray],
    envs_of: Callable[[int], int],
    num: int,
    seq_len: int,
    generator: torch.Generator,
) -> SequencePlan:
    """Draw ``num`` sequences uniformly over the valid starts of the window.

    Args:
        counts: valid starts per window trajectory (int64 ``[W]``; ``counts.sum() > 0``).
        starts_of: ``starts_of(p)``: the valid start rows of window trajectory ``p``.
        dones_of: ``dones_of(p)``: its episode ends, bool ``[T, B]``.
        envs_of: ``envs_of(p)``: its ``B``.
        num: sequences to draw (with replacement).
        seq_len: ``L``.
        generator: the buffer's generator (one ``randint`` call).
    """
    ends = np.cumsum(counts)
    flat = torch.randint(0, int(ends[-1]), (num,), generator=generator, dtype=torch.int64).numpy()
    positions = np.searchsorted(ends, flat, side="right")
    k = flat - (ends - counts)[positions]
    rows = np.empty((num, seq_len), dtype=np.int64)
    mask = np.empty((num, seq_len), dtype=bool)
    order = np.argsort(positions, kind="stable")
    bounds = np.flatnonzero(np.diff(positions[order])) + 1
    for group in np.split(order, bounds):  # one group of array operations per trajectory
        p = int(positions[group[0]])
        start = starts_of(p)[k[group]]
        b = envs_of(p)
        dones = dones_of(p)
        m = run_mask(dones, start, seq_len)
        r = start[:, None] + b * np.arange(seq_len)[None, :]
        rows[group] = np.where(m, r, start[:, None])
        mask[group] = m
    return SequencePlan(positions=positions, rows=rows, mask=mask)
