"""``Trajectory`` under RLinf's module names (``rlinf.data.embodied_io_struct`` in RLinf 0.3,
``rlinf.data.schema.embodied_types`` in RLinf main), served only where RLinf is not installed:
an installed RLinf keeps its own ``Trajectory``, which this library's buffer accepts as it is."""

from __future__ import annotations

from ..trajectory import Trajectory

__all__ = ["Trajectory"]
