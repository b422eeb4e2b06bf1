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
from collections.abc import Iterable, Sequence
from typing import Any

from .errors import InvalidTrajectoryError, UnsafeFileError
from .safe_open import JSON_BYTES, load_json, refuse_special
from .trajectory import check_weights_id

_REST = r"[A-Za-z0-9.\-_]*"
#: ``trajectory_{id}_{rest}.{pt|pkl}``; ``rest`` may be empty (RLinf names ``trajectory_3_.pt`` a
#: trajectory whose ``model_weights_id`` is ``""``)
FILE_RE = re.compile(rf"^trajectory_(\d+)_({_REST})\.(pt|pkl)\Z")
#: the ids of :data:`FILE_RE` names in names joined and surrounded by NUL (which no name holds)
_FILE_IDS = re.compile(rf"\0trajectory_(\d+)_{_REST}\.(?:pt|pkl)(?=\0)")


def trajectory_file_name(trajectory_id: int, weights_id: str, update_count: int, fmt: str) -> str:
    """``trajectory_{trajectory_id}_{model_weights_uuid}_{model_update_count}.{fmt}``."""
    return trajectory_file_names([trajectory_id], [weights_id], [update_count], [fmt])[0]


def trajectory_file_names(
    trajectory_ids: Sequence[int],
    weights_ids: Sequence[str],
    update_counts: Sequence[int],
    fmts: Sequence[str],
) -> list[str]:
    """:func:`trajectory_file_name` of many trajectories at once (equal-length sequences)."""
    return [
        f"trajectory_{tid}_{weights}_{count}.{fmt}"
        for tid, weights, count, fmt in zip(trajectory_ids, weights_ids, update_counts, fmts, strict=True)
    ]


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


class Listing:
    """One scan of a directory: every name in it, and which are regular files (from the
    directory entries' types: no call per file).

    Attributes:
        names: every name, in the order the system lists them.
        regular: the names of regular files (not links, FIFOs, directories, ...).
    """

    def __init__(self, path: str) -> None:
        with os.scandir(path) as it:
            entries = list(it)
        self.names: list[str] = [e.name for e in entries]
        self.regular: set[str] = {e.name for e in entries if e.is_file(follow_symlinks=False)}
        self._present: set[str] | None = None
        self._by_id: dict[int, list[str]] | None = None
        self._unnamed: set[str] | None = None  # regular files no name given to missing() is

    def by_id(self) -> dict[int, list[str]]:
        """The trajectory files (names that match the naming rule), by id."""
        if self._by_id is None:
            self._by_id = {}
            for name in self.names:
                m = FILE_RE.match(name)
                if m:
                    self._by_id.setdefault(int(m.group(1)), []).append(name)
        return self._by_id

    def is_regular_file(self, name: str) -> bool:
        """Whether ``name`` is a trajectory file name and a regular file here."""
        return name in self.regular and FILE_RE.match(name) is not None

    def holds_file(self, name: str, trajectory_id: int) -> bool:
        """Whether ``name`` is here (as anything) and names a file of ``trajectory_id``."""
        if self._present is None:
            self._present = set(self.names)
        m = FILE_RE.match(name) if name in self._present else None
        return m is not None and int(m.group(1)) == trajectory_id

    def missing(self, names: list[str]) -> list[int]:
        """The positions of the (distinct) ``names`` that are not regular files here, in order.

        The regular files none of them names are remembered: :meth:`max_file_id` then parses
        only those (and the other entries), the caller knowing the ids of ``names``.
        """
        self._unnamed = self.regular.difference(names)
        if len(self.regular) - len(self._unnamed) == len(names):  # every name is a regular file
            return []
        return [i for i, name in enumerate(names) if name not in self.regular]

    def max_file_id(self) -> int:
        """The largest id a trajectory file name here has (-1: none), or ``-1`` if the largest
        is one of the names last given to :meth:`missing` (whose ids the caller knows)."""
        if self._by_id is not None:
            return max(self._by_id, default=-1)
        names: Iterable[str] = self.names
        if self._unnamed is not None:
            others = (
                ()
                if len(self.regular) == len(self.names)
                else (n for n in self.names if n not in self.regular)
            )
            names = [*self._unnamed, *others]
        joined = "\0" + "\0".join(names) + "\0"
        return max(map(int, _FILE_IDS.findall(joined)), default=-1)


def list_trajectory_files(path: str, regular: set[str] | None = None) -> dict[int, list[str]]:
    """Trajectory files in ``path`` by id (names that match the naming rule only).

    ``regular``, if given, receives the names that are regular files (not links, FIFOs, ...).
    """
    listing = Listing(path)
    found = listing.by_id()
    if regular is not None:
        regular.update(name for names in found.values() for name in names if name in listing.regular)
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
    try:  # a regular file (not a link) named without a separator is inside the directory
        if stat.S_ISREG(os.lstat(path).st_mode):
            return path
    except OSError:  # missing (reported by the caller), or unreadable (reported when read)
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
