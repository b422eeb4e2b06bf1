"""Functions of the C library through ``ctypes`` (which releases the GIL while they run)."""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any


def libc_function(name: str, argtypes: list[Any], restype: Any) -> Any | None:
    """The C library's function ``name`` with its argument and result types set, or ``None``
    where there is no C library to load or it lacks the function."""
    try:
        fn = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = argtypes
    fn.restype = restype
    return fn
