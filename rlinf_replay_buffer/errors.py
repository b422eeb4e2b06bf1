"""The exception hierarchy of the replay buffer.

Every error the library raises on purpose is a :class:`ReplayBufferError`. Each subclass also
derives from the built-in exception a caller would naturally catch (``ValueError`` for bad
arguments, ``FileNotFoundError`` for missing paths, ...), so existing ``except`` clauses keep
working. Messages say what was wrong and what to do about it. Every warning the library issues
is a :class:`ReplayBufferWarning` (a ``UserWarning``).

Every exception and warning class of the package is defined here; the modules that raise them
re-export them under their earlier import paths (``rlinf_replay_buffer.datasets.PrefetchError``,
``rlinf_replay_buffer.rate_limiter.RateLimitTimeout``, ...).
"""

from __future__ import annotations


class ReplayBufferError(Exception):
    """Base class of every error raised on purpose by this library."""


class InvalidTrajectoryError(ReplayBufferError, ValueError):
    """A trajectory passed to ``add_trajectories`` is malformed; the buffer is unchanged."""


class InvalidArgumentError(ReplayBufferError, ValueError):
    """An argument of a public call is out of range or of the wrong type."""


class EmptyBufferError(ReplayBufferError, RuntimeError):
    """Sampling was asked of a buffer (or window) that holds no transition."""


class BufferDirectoryError(ReplayBufferError, OSError):
    """A buffer directory (checkpoint or auto-save path) is missing, unreadable or inconsistent."""


class BufferNotFoundError(BufferDirectoryError, FileNotFoundError):
    """The directory, or a file the index names, does not exist."""


class DirectoryLockedError(BufferDirectoryError):
    """Another writer (a process, or another buffer of this one) holds the buffer directory;
    the message names it (pid, host, since when, what for)."""


def unreadable(path: str, exc: OSError) -> BufferDirectoryError:
    """The error for a buffer file the OS refuses to read or write (permissions, disk full, ...):
    it names the file and the cause; it is not corruption, so it is never skipped."""
    return BufferDirectoryError(
        f"{path}: {exc.strerror or exc} (errno {exc.errno}); fix the permissions or free space and try again"
    )


class CorruptBufferError(BufferDirectoryError):
    """A file of a buffer directory cannot be parsed, or disagrees with the index."""


class UnsafeFileError(CorruptBufferError):
    """A file tried to run code or to reach outside its buffer directory; it was not loaded."""


class WriterError(ReplayBufferError, RuntimeError):
    """A background write failed (the ``OSError`` is the ``__cause__``). Each failure is raised
    once, by the next ``flush()`` or ``close()`` or by an ``add_trajectories`` that has to wait
    for the disk (which then adds nothing); the next ``flush()`` writes the data again."""


class CorruptTrajectoryError(CorruptBufferError):
    """One trajectory's file or rows are damaged: a checksum mismatch, a truncated or unreadable
    file. ``trajectory_id`` and ``path`` name it; a buffer built with ``on_corrupt="skip"``
    drops such trajectories with a warning instead of raising."""

    def __init__(self, message: str, trajectory_id: int | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.trajectory_id = trajectory_id
        self.path = path


class MissingDependencyError(ReplayBufferError, ImportError):
    """An optional dependency is not installed: pyarrow, Pillow or matplotlib (the ``tools``
    extra, ``pip install rlinf-replay-buffer[tools]``), Ray (the ``ray`` extra) or PyAV (the
    ``video`` extra). The message names the package and the command that installs it."""


#: the earlier name of :class:`MissingDependencyError` in :mod:`.tools.view` (the same class)
ToolsNotInstalledError = MissingDependencyError


class DatasetClosedError(ReplayBufferError, RuntimeError):
    """``iter()`` was called on a dataset after its ``close()``."""


class PrefetchError(ReplayBufferError, RuntimeError):
    """The prefetch thread of a ``PreloadReplayBufferDataset`` failed.

    The exception raised in the thread is the ``__cause__``. The dataset stays failed: every later
    ``next()`` (of any of its iterators) raises a new ``PrefetchError`` with the same cause.
    """


class RateLimitTimeout(ReplayBufferError, TimeoutError):
    """A wait for the right to insert or sample ran out of time; the counts are unchanged."""


class RateLimiterClosedError(ReplayBufferError, RuntimeError):
    """The rate limiter was closed while (or before) waiting on it."""


# -- warnings -----------------------------------------------------------------------------------


class ReplayBufferWarning(UserWarning):
    """Base class of every warning issued by this library."""


class CorruptDataWarning(ReplayBufferWarning):
    """A damaged trajectory was skipped (``on_corrupt="skip"``); the message names it."""


class ShardUnavailableError(ReplayBufferError, RuntimeError):
    """A shard of a sharded (Ray) buffer could not serve a call: its actor died and is being
    restarted, or it did not answer in time. ``shard`` names it; nothing partial was returned."""

    def __init__(self, message: str, shard: int | None = None) -> None:
        super().__init__(message)
        self.shard = shard
        self.added: list[tuple[int, int, int]] = []  # for add_trajectories: (index, shard, id) added


class ShardRestartedWarning(ReplayBufferWarning):
    """A shard of a sharded buffer restarted since the client last heard from it; trajectories
    added to it after its last flush may be lost. The message names the shard."""


class ConfigKeyWarning(ReplayBufferWarning):
    """Base class of the warnings about the keys of a buffer configuration."""


class IgnoredConfigKeysWarning(ConfigKeyWarning):
    """The configuration holds keys RLinf itself reads nowhere (``max_num_samples``); the
    message names each with the reason. Silence it with
    ``warnings.filterwarnings("ignore", category=IgnoredConfigKeysWarning)``."""


class UnknownConfigKeysWarning(ConfigKeyWarning):
    """The configuration holds keys neither RLinf nor this library knows; the message names each,
    with the closest accepted key. The keys are dropped."""
