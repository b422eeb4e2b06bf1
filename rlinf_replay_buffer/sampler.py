"""Uniform sampling of transitions over the window, with replacement.

Every transition of the window is equally likely: a global transition number is drawn uniformly
in ``[0, total)`` and mapped to (trajectory, row) with a binary search over the window's
cumulative counts. Draws come from the buffer's own ``torch.Generator``, never a global RNG, so a
run is reproducible from the seed and the sequence of calls.
"""

from __future__ import annotations

import torch


class UniformSampler:
    """Draws window transition numbers uniformly (the buffer maps them to rows)."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def draw_flat(self, total: int, num: int) -> torch.Tensor:
        """``num`` transition numbers drawn uniformly from ``[0, total)`` (int64 ``[num]``)."""
        return torch.randint(0, total, (num,), generator=self.generator, dtype=torch.int64)
