"""What ``rlinf.data.priority_store`` (RLinf 0.3) holds, from this library."""

from __future__ import annotations

from .stores import PriorityStore

__all__ = ["PriorityStore"]
