"""What ``rlinf.data.embodied_buffer_dataset`` (RLinf 0.3) and ``rlinf.data.storage.replay.dataset``
(RLinf main) hold, from this library: the two datasets and their collate function."""

from __future__ import annotations

from ..datasets import PreloadReplayBufferDataset, ReplayBufferDataset, replay_buffer_collate_fn

__all__ = ["PreloadReplayBufferDataset", "ReplayBufferDataset", "replay_buffer_collate_fn"]
