"""The machinery behind :mod:`rlinf.data.replay_buffer` (one module per role)."""

from .buffer import Batch, TrajectoryReplayBuffer
from .datasets import (
    DatasetClosedError,
    PrefetchError,
    PreloadReplayBufferDataset,
    ReplayBufferDataset,
    replay_buffer_collate_fn,
)
from .errors import (
    BufferDirectoryError,
    BufferNotFoundError,
    CorruptBufferError,
    CorruptDataWarning,
    CorruptTrajectoryError,
    EmptyBufferError,
    InvalidArgumentError,
    InvalidTrajectoryError,
    ReplayBufferError,
    ShardRestartedWarning,
    ShardUnavailableError,
    UnsafeFileError,
    WriterError,
)
from .rate_limiter import RateLimiter, RateLimiterClosedError, RateLimitTimeout
from .trajectory import Trajectory

__all__ = [
    "Batch",
    "BufferDirectoryError",
    "BufferNotFoundError",
    "CorruptBufferError",
    "CorruptDataWarning",
    "CorruptTrajectoryError",
    "DatasetClosedError",
    "EmptyBufferError",
    "ShardRestartedWarning",
    "ShardUnavailableError",
    "InvalidArgumentError",
    "InvalidTrajectoryError",
    "PrefetchError",
    "PreloadReplayBufferDataset",
    "RateLimitTimeout",
    "RateLimiter",
    "RateLimiterClosedError",
    "ReplayBufferDataset",
    "ReplayBufferError",
    "Trajectory",
    "TrajectoryReplayBuffer",
    "UnsafeFileError",
    "WriterError",
    "replay_buffer_collate_fn",
]
