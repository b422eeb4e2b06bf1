"""What the package ``rlinf.data.storage.replay`` (RLinf main) exports, from this library."""

from __future__ import annotations

from ..buffer import TrajectoryReplayBuffer
from ..datasets import PreloadReplayBufferDataset, ReplayBufferDataset, replay_buffer_collate_fn
from .stores import PriorityStore, TrajectoryCache

__all__ = [
    "PreloadReplayBufferDataset",
    "PriorityStore",
    "ReplayBufferDataset",
    "TrajectoryCache",
    "TrajectoryReplayBuffer",
    "replay_buffer_collate_fn",
]
