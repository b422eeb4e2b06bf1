"""The ``pt`` format: ``torch.save`` of the trajectory dict, read with ``weights_only=True``.

The file is opened first with :func:`~..safe_open.open_regular` (never a FIFO or a device, never
a link out of the directory, at most the size the caller allows). A file of plain data and
tensors is read from that open file by :mod:`.torchsave` (what ``torch.load`` would return, at a
fraction of its cost, with the same checks; with ``mmap``, files of at most 1 MiB only, which it
reads rather than maps); anything else is read by ``torch.load`` from that open file. Sizes a
``pt`` file declares are checked by torch itself: every zip record must hold exactly the bytes
its storage declares, and a tensor reaching past its storage is refused; what torch refuses is
:class:`CorruptBufferError`, naming the file.
"""

from __future__ import annotations

import os
import pickle
import zlib
from collections.abc import Callable
from typing import Any

import torch

from ..errors import BufferDirectoryError, CorruptBufferError, UnsafeFileError, unreadable
from ..fsio import atomic_write
from ..safe_open import open_regular
from . import torchsave

EXTENSION = "pt"


def _opened_name(f: Any, path: str) -> str:
    """A name that opens the very file ``f`` holds open (``/proc/self/fd/N`` on Linux), so
    ``torch.load`` reads the file that was checked even if ``path`` changed since."""
    name = f"/proc/self/fd/{f.fileno()}"
    return name if os.path.exists(name) else path


def _checked_bytes(f: Any, path: str, mmap: bool, check: Callable[[int], None]) -> bytearray | None:
    """Call ``check`` with the CRC-32 of the open file ``f``'s bytes; return those bytes when
    they are to be parsed from memory (not for a large file to be mapped: ``None``)."""
    try:
        size = os.fstat(f.fileno()).st_size
        f.seek(0)
        if mmap and size > torchsave.MAX_COPIED_BYTES:
            crc = 0
            while block := f.read(1 << 20):
                crc = zlib.crc32(block, crc)
            check(crc)
            return None
        buf = bytearray(size)
        got = f.readinto(buf)
    except OSError as exc:
        raise unreadable(path, exc) from None
    check(zlib.crc32(memoryview(buf)[:got]))  # a file that shrank meanwhile fails here
    return buf


def read(
    path: str, mmap: bool = False, max_bytes: int | None = None, check: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Load a ``pt`` trajectory file; only tensors, containers, numbers and strings are allowed.

    Args:
        path: the file.
        mmap: map tensor data instead of reading it (only the rows used are then read).
        max_bytes: the most bytes the file may hold (``None``: any size).
        check: called with the CRC-32 of the file's bytes before they are parsed (it raises to
            refuse them); the bytes checked are the bytes parsed, read once.

    Raises:
        UnsafeFileError: the file holds objects other than plain data (it would run code), or
            it is not a regular file (a FIFO, a device) or a link out of its directory.
        CorruptBufferError: the file is truncated, not a torch file, declares more than it
            holds, or holds more than ``max_bytes``.
    """
    try:
        with open_regular(path, max_bytes, what="trajectory file", links=True) as f:
            data = None if check is None else _checked_bytes(f, path, mmap, check)
            # plain data and tensors are read directly; anything else by torch.load
            obj = torchsave.load(f, mmap) if data is None else torchsave.load_bytes(data)
            if obj is None:
                name = _opened_name(f, path)
                try:
                    obj = torch.load(name, map_location="cpu", weights_only=True, mmap=mmap)
                except RuntimeError as exc:
                    if not mmap or "mmap" not in str(exc):
                        raise
                    obj = torch.load(name, map_location="cpu", weights_only=True)
    except (BufferDirectoryError, FileNotFoundError):  # refused or named by open_regular
        raise
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        reason = next((ln for ln in lines if "global" in ln.lower()), None)
        if reason is not None:
            raise UnsafeFileError(
                f"{path}: refused to load: the file references code, not only tensors and plain "
                f"data ({reason[:200]})"
            ) from None
        noise = ("Weights only load failed", "Please file an issue", "Check the documentation")
        detail = next((ln for ln in lines if not ln.startswith(noise)), "")
        raise CorruptBufferError(
            f"{path}: not a readable torch file ({detail[:200] or 'bad pickle stream'})"
        ) from None
    except PermissionError as exc:
        raise unreadable(path, exc) from None
    except (RuntimeError, EOFError, OSError, ValueError, OverflowError, MemoryError, RecursionError) as exc:
        raise CorruptBufferError(
            f"{path}: not a readable torch file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else 'truncated'})"
        ) from None
    if not isinstance(obj, dict):
        raise CorruptBufferError(f"{path}: expected a trajectory dict, found {type(obj).__name__}")
    return obj


def write(path: str, data: dict[str, Any], sync: bool = True) -> int:
    """Atomically write ``data`` (returning the file's CRC-32) with ``torch.save``."""
    return atomic_write(path, lambda f: torch.save(data, f), sync=sync, sync_dir=False)
