"""The ``pt`` format: ``torch.save`` of the trajectory dict, read with ``weights_only=True``."""

from __future__ import annotations

import pickle
from typing import Any

import torch

from ..errors import CorruptBufferError, UnsafeFileError, unreadable
from ..fsio import atomic_write

EXTENSION = "pt"


def read(path: str, mmap: bool = False) -> dict[str, Any]:
    """Load a ``pt`` trajectory file; only tensors, containers, numbers and strings are allowed.

    Args:
        path: the file.
        mmap: map tensor data instead of reading it (only the rows used are then read).

    Raises:
        UnsafeFileError: the file holds objects other than plain data (it would run code).
        CorruptBufferError: the file is truncated or not a torch file.
    """
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as exc:
            if not mmap or "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
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
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
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
