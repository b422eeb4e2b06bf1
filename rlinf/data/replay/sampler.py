"""Uniform sampling of transitions over the window, with replacement.

Every transition of the window is equally likely: a global transition number is drawn uniformly
in ``[0, total)`` and mapped to (trajectory, row) with a binary search over the window's
cumulative counts. Draws come from the buffer's own ``torch.Generator``, never a global RNG, so a
run is reproducible from the seed and the sequence of calls.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import EmptyBufferError


class UniformSampler:
    """Draws ``(window position, row within trajectory)`` pairs uniformly over transitions."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def draw_flat(self, total: int, num: int) -> torch.Tensor:
        """``num`` transition numbers drawn uniformly from ``[0, total)`` (int64 ``[num]``)."""
        return torch.randint(0, total, (num,), generator=self.generator, dtype=torch.int64)

    def draw(self, ends: np.ndarray, num: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``num`` transitions.

        Args:
            ends: cumulative transition counts of the window's trajectories (int64, ``[W]``).
            num: number of transitions to draw.

        Returns:
            ``(positions, rows)``: int64 arrays ``[num]``; ``positions[i]`` indexes the window,
            ``rows[i]`` is the transition within that trajectory (step ``rows // B``, env
            ``rows % B``).
        """
        total = int(ends[-1]) if len(ends) else 0
        if total <= 0:
            raise EmptyBufferError(
                "cannot sample: the sampling window holds no transition; add trajectories or "
                "load a checkpoint first (is_ready() tells when sampling is possible)"
            )
        flat = self.draw_flat(total, num).numpy()
        positions = np.searchsorted(ends, flat, side="right")
        begins = ends - np.diff(ends, prepend=0)
        return positions, flat - begins[positions]
