"""Trajectory file formats: one module per format, each with ``read`` and ``write``.

``pt`` (``torch.save``, the default) and ``pkl`` (``pickle``) both hold RLinf's plain dict:
``max_episode_length``, ``model_weights_id``, ``model_update_count`` and every non-empty field of
the trajectory as CPU tensors ``[T, B, ...]`` (dict fields as dicts of tensors). Reading never
executes code from the file: ``pt`` goes through ``torch.load(weights_only=True)``, ``pkl`` through
a restricted unpickler.

``segment`` (:mod:`.segment`) is this library's format for random row reads: aligned rows of many
trajectories in one raw file per column. It is not a per-file format, so it is not in ``FORMATS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import InvalidArgumentError
from . import pkl, pt

FORMATS = {"pt": pt, "pkl": pkl}
SEGMENT = "segment"
ALL_FORMATS = ("pt", "pkl", SEGMENT)


def check_format(name: object) -> str:
    """Return ``name`` if it is a known trajectory format, else raise a clear error."""
    if name not in ALL_FORMATS:
        raise InvalidArgumentError(
            f"trajectory_format must be 'pt', 'pkl' or 'segment', got {name!r} ('pt' and 'pkl' "
            "are RLinf's one-file-per-trajectory formats; 'segment' is made for random row reads)"
        )
    return str(name)


def read(
    path: str,
    fmt: str,
    mmap: bool = False,
    max_bytes: int | None = None,
    check: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Read one trajectory file (``mmap`` maps ``pt`` tensors instead of reading them) of at
    most ``max_bytes``; ``check`` is called with the CRC-32 of the bytes read before they are
    parsed (see :func:`.pt.read`, :func:`.pkl.read`)."""
    return FORMATS[fmt].read(path, mmap=mmap, max_bytes=max_bytes, check=check)


def write(path: str, fmt: str, data: dict[str, Any], sync: bool = True) -> int:
    """Atomically write one trajectory file; return the CRC-32 of its bytes."""
    return FORMATS[fmt].write(path, compact(data), sync=sync)


def compact(obj: Any) -> Any:
    """Copy tensors that are views of larger storages, so a file holds only its own bytes."""
    if isinstance(obj, torch.Tensor):
        nbytes = obj.numel() * obj.element_size()
        if obj.is_contiguous() and obj.storage_offset() == 0 and obj.untyped_storage().nbytes() == nbytes:
            return obj
        return obj.clone(memory_format=torch.contiguous_format)
    if isinstance(obj, dict):
        return {k: compact(v) for k, v in obj.items()}
    return obj
