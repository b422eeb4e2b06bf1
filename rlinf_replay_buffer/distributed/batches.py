"""Splitting a batch's draws over shards, and laying the shards' rows into one batch."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..batch import Batch, nest
from ..errors import InvalidTrajectoryError
from .wire import Encoded, decode


def split_draws(populations: np.ndarray, num: int, rng: np.random.Generator) -> np.ndarray:
    """How many of ``num`` draws over the union land in each shard (int64 ``[N]``).

    Each draw picks a position in ``[0, sum)`` and goes to the shard whose range holds it, so
    shard ``k`` gets each draw with probability ``pop_k / sum``: exact integer arithmetic for
    counts, float64 for priority masses.
    """
    cumulative = np.cumsum(populations)
    if np.issubdtype(cumulative.dtype, np.integer):
        picks = rng.integers(0, int(cumulative[-1]), size=num)
    else:  # priority masses
        picks = rng.random(num) * float(cumulative[-1])
    shard = np.minimum(np.searchsorted(cumulative, picks, side="right"), len(populations) - 1)
    return np.bincount(shard, minlength=len(populations))


def assemble(
    parts: Sequence[Mapping[tuple[str, ...], Encoded]], counts: np.ndarray, rng: np.random.Generator
) -> Batch:
    """One batch from the shards' parts, rows in a random order: one copy per tensor from
    one shard; from several, a concatenation and a reordering (both at memory speed).

    Args:
        parts: per shard, the flat encoded batch of its ``counts[k]`` rows (``[counts[k], ...]``).
        counts: rows per shard.
        rng: orders the rows (each shard's rows are i.i.d. draws; the order mixes shards).

    Raises:
        InvalidTrajectoryError: shards returned different fields, dtypes or shapes.
    """
    num = int(counts.sum())
    present = [k for k in range(len(parts)) if counts[k] > 0]
    # rows of shard k fill a random set of positions: gather the parts in shard order, then
    # take them in a random order (cat + index_select run at memory speed; index_copy_ into
    # scattered rows was several times slower for image rows)
    order = torch.from_numpy(rng.permutation(num)) if len(present) > 1 else None
    reference = present[0]
    out: dict[tuple[str, ...], torch.Tensor] = {}
    for key, item in parts[reference].items():
        first = decode(item)
        pieces = []
        for k in present:
            got = parts[k].get(key)
            part = first if k == reference else (decode(got) if got is not None else None)
            if part is None or part.dtype != first.dtype or part.shape[1:] != first.shape[1:]:
                raise InvalidTrajectoryError(
                    f"shards {reference} and {k} hold different data for {'.'.join(key)} "
                    f"({first.dtype} {list(first.shape[1:])} vs "
                    f"{'missing' if part is None else f'{part.dtype} {list(part.shape[1:])}'}); every "
                    "shard must hold trajectories with the same fields"
                )
            pieces.append(part)
        if order is None:  # one shard: its draws are already in random order
            out[key] = pieces[0].clone(memory_format=torch.contiguous_format)
        else:  # on [rows, row elements] views, which copy several times faster than [rows, ...]
            row = math.prod(first.shape[1:])
            flat = torch.cat([p.reshape(p.shape[0], row) for p in pieces])
            out[key] = flat.index_select(0, order).reshape(num, *first.shape[1:])
    extra = [key for k in present for key in parts[k] if key not in parts[reference]]
    if extra:
        raise InvalidTrajectoryError(
            f"shards hold different fields ({'.'.join(extra[0])} is not in shard {reference}); "
            "every shard must hold trajectories with the same fields"
        )
    return nest(out)


def globalize_indices(parts: Sequence[dict[tuple[str, ...], Encoded]], counts: np.ndarray) -> None:
    """Turn each shard's prioritized ``indices`` (its slots) into ids of the whole buffer:
    ``slot * N + shard`` (int64), in place."""
    for k, part in enumerate(parts):
        if counts[k] > 0:
            slots = decode(part[("indices",)])
            part[("indices",)] = (slots.numpy() * len(parts) + k, None)


def importance_weights(q: torch.Tensor, beta: float) -> torch.Tensor:
    """Batch-max normalised importance weights from the rows' stored priorities ``q`` (float64
    ``[N]``): ``(N P(i)) ** -beta / max_j (N P(j)) ** -beta == (min q / q_i) ** beta``, so
    neither the number of transitions nor the shards' totals are needed (float32 ``[N]``)."""
    return ((q.min() / q) ** beta).to(torch.float32)
