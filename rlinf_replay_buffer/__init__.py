"""rlinf-replay-buffer: the trajectory replay buffer for embodied-RL training.

``from rlinf_replay_buffer import TrajectoryReplayBuffer`` is this package's own name; the names
RLinf's code uses (``rlinf.data.replay_buffer``, ``rlinf.data.storage.replay``, ...) are served by
:mod:`rlinf_replay_buffer.rlinf_compat` where RLinf is not installed, and, when the switch
``RLINF_REPLAY_BUFFER=rlinf_replay_buffer`` is set, inside an installed RLinf too
(``docs/migration.md``).

Importing the package is cheap: it runs at every interpreter start (the import hook of
:mod:`rlinf_replay_buffer.rlinf_compat.hook`), so the public names below are loaded on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

#: public name -> the module that defines it
_HOMES = {
    "Batch": "buffer",
    "TrajectoryReplayBuffer": "buffer",
    "TrajectoryBuilder": "builder",
    "PreloadReplayBufferDataset": "datasets",
    "ReplayBufferDataset": "datasets",
    "replay_buffer_collate_fn": "datasets",
    "BufferDirectoryError": "errors",
    "BufferNotFoundError": "errors",
    "DirectoryLockedError": "errors",
    "ConfigKeyWarning": "errors",
    "CorruptBufferError": "errors",
    "CorruptDataWarning": "errors",
    "CorruptTrajectoryError": "errors",
    "DatasetClosedError": "errors",
    "EmptyBufferError": "errors",
    "IgnoredConfigKeysWarning": "errors",
    "InvalidArgumentError": "errors",
    "InvalidTrajectoryError": "errors",
    "MissingDependencyError": "errors",
    "PrefetchError": "errors",
    "RateLimiterClosedError": "errors",
    "RateLimitTimeout": "errors",
    "ReplayBufferError": "errors",
    "ReplayBufferWarning": "errors",
    "ShardRestartedWarning": "errors",
    "ShardUnavailableError": "errors",
    "UnknownConfigKeysWarning": "errors",
    "UnsafeFileError": "errors",
    "WriterError": "errors",
    "RateLimiter": "rate_limiter",
    "Trajectory": "trajectory",
    "RayTrajectoryReplayBuffer": "distributed.client",
    "use_in_rlinf": "rlinf_compat.hook",
}

#: ``from rlinf_replay_buffer import *`` leaves out the names whose import needs an extra (Ray)
__all__ = sorted(n for n in _HOMES if n != "RayTrajectoryReplayBuffer")


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'rlinf_replay_buffer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
