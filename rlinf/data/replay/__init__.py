"""The machinery behind :mod:`rlinf.data.replay_buffer` (one module per role)."""

from .buffer import Batch, TrajectoryReplayBuffer
from .errors import (
    BufferDirectoryError,
    BufferNotFoundError,
    CorruptBufferError,
    EmptyBufferError,
    InvalidArgumentError,
    InvalidTrajectoryError,
    ReplayBufferError,
    UnsafeFileError,
    WriterError,
)
from .trajectory import Trajectory

__all__ = [
    "Batch",
    "BufferDirectoryError",
    "BufferNotFoundError",
    "CorruptBufferError",
    "EmptyBufferError",
    "InvalidArgumentError",
    "InvalidTrajectoryError",
    "ReplayBufferError",
    "Trajectory",
    "TrajectoryReplayBuffer",
    "UnsafeFileError",
    "WriterError",
]
