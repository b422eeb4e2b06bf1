"""File names in a buffer directory: the trajectory file naming rule, and safe access by name.

A trajectory's file is ``trajectory_{id}_{model_weights_uuid}_{model_update_count}.{pt|pkl}``
(:func:`trajectory_file_name`); RLinf's directories may also name it
``trajectory_{id}_{model_weights_id}.{pt|pkl}``, which :data:`FILE_RE` matches too. Names read
from a directory (its index, its listing) are checked before use: a name that is not a trajectory
file, a symbolic link leading out of the directory, or anything but a regular file (a FIFO, a
device) at that name, is refused with an :class:`~.errors.UnsafeFileError`, and so is a
``model_weights_id`` that could not be part of a file name.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any

from .errors import InvalidTrajectoryError, UnsafeFileError
from .safe_open import JSON_BYTES, load_json, refuse_special
from .trajectory import check_weights_id

#: ``trajectory_{id}_{rest}.{pt|pkl}``; ``rest`` may be empty (RLinf names ``trajectory_3_.pt`` a
#: trajectory whose ``model_weights_id`` is ``""``)
FILE_RE = re.compile(r"^trajectory_(\d+)_([A-Za-z0-9.\-_]*)\.(pt|pkl)\Z")


def trajectory_file_name(trajectory_id: int, weights_id: str, update_count: int, fmt: str) -> str:
    """``trajectory_{trajectory_id}_{model_weights_uuid}_{model_update_count}.{fmt}``."""
    return f"trajectory_{trajectory_id}_{weights_id}_{update_count}.{fmt}"


def rlinf_weights_id(file_name: str) -> str:
    """What RLinf must read as ``model_weights_id`` to rebuild ``file_name`` from its id."""
    m = FILE_RE.match(file_name)
    if m is None:
        raise ValueError(f"{file_name!r} is not a trajectory file name")
    return m.group(2)


def refuse_link_out(path: str) -> None:
    """Raise :class:`UnsafeFileError` if ``path`` is a symbolic link leading out of its directory."""
    if os.path.islink(path):
        real = os.path.realpath(path)
        if os.path.dirname(real) != os.path.realpath(os.path.dirname(path)):
            raise UnsafeFileError(
                f"{path}: links outside the buffer directory (to {real}); refusing to read it"
            )


def read_json(path: str, what: str, limit: int | None = JSON_BYTES) -> Any:
    """Parse the JSON file ``path`` (``what`` names it in errors): a regular file of at most
    ``limit`` bytes (:func:`~.safe_open.load_json`); a link out of its directory, a FIFO or a
    device is refused with :class:`UnsafeFileError`, text that is not JSON (or nested too deeply,
    or holding integers too long to convert) is a :class:`CorruptBufferError`."""
    return load_json(path, what, limit)


def checked_weights_id(value: Any, where: str) -> str:
    """A ``model_weights_id`` read from disk, refused if it could not be part of a file name."""
    try:
        return check_weights_id(value)
    except InvalidTrajectoryError as exc:
        raise UnsafeFileError(f"{where}: {exc}") from None


def list_trajectory_files(path: str, regular: set[str] | None = None) -> dict[int, list[str]]:
    """Trajectory files in ``path`` by id (names that match the naming rule only).

    ``regular``, if given, receives the names that are regular files (not links, FIFOs, ...).
    """
    found: dict[int, list[str]] = {}
    with os.scandir(path) as it:
        for entry in it:
            m = FILE_RE.match(entry.name)
            if m:
                found.setdefault(int(m.group(1)), []).append(entry.name)
                if regular is not None and entry.is_file(follow_symlinks=False):
                    regular.add(entry.name)
    return found


def safe_file(directory: str, name: str, regular: set[str] | None = None) -> str:
    """Path of ``name`` in ``directory``; refuse names or links that lead outside it, and
    anything but a regular file (a FIFO, a device, a socket, a directory) at that name.

    ``regular``: names just listed as regular files in ``directory`` (from
    :func:`list_trajectory_files`), which need no further check; any other name is resolved.
    A name where nothing is returns its path (the caller reports the missing file). Reading a
    file checks it again (:func:`~.safe_open.open_regular`), so a swap after listing is still
    caught.
    """
    if not FILE_RE.match(name) or os.sep in name or (os.altsep and os.altsep in name):
        raise UnsafeFileError(f"{directory}: index names file {name!r}, which is not a trajectory file")
    path = os.path.join(directory, name)
    if regular is not None and name in regular:
        return path
    real = os.path.realpath(path)
    if os.path.dirname(real) != os.path.realpath(directory):
        raise UnsafeFileError(f"{path}: links outside the buffer directory (to {real}); refusing to read it")
    try:
        mode = os.stat(real, follow_symlinks=False).st_mode
    except OSError:  # missing (reported by the caller), or unreadable (reported when read)
        return path
    if not stat.S_ISREG(mode):
        refuse_special(path, mode, "trajectory file")
    return path
