"""The ``pkl`` format: ``pickle.dump`` of the trajectory dict, read by a restricted unpickler.

Only what a trajectory dict needs can be rebuilt: tensors, ``torch.Size``, dtypes, ``dict`` and
``OrderedDict``, numbers and strings. Any other global in the stream (``os.system``,
``builtins.eval``, ...) makes the load fail with :class:`UnsafeFileError` before anything runs.
Tensor storages embedded by ``pickle`` are themselves read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import collections
import io
import pickle
from typing import Any

import torch
import torch._utils

from ..errors import CorruptBufferError, UnsafeFileError, unreadable
from ..fsio import atomic_write

EXTENSION = "pkl"


def _load_storage(data: bytes) -> Any:
    if not isinstance(data, bytes | bytearray):
        raise UnsafeFileError("tensor storage is not bytes")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's restricted reader refused a global
        line = next((ln.strip() for ln in str(exc).splitlines() if "global" in ln.lower()), "")
        raise UnsafeFileError(
            "refused to load: a tensor storage in the pickle references code "
            f"({line[:200] or 'not plain data'})"
        ) from None


def _rebuild_tensor_v2(
    storage: Any,
    offset: int,
    size: Any,
    stride: Any,
    requires_grad: bool,
    backward_hooks: Any,
    metadata: Any = None,
) -> torch.Tensor:
    if backward_hooks:
        raise UnsafeFileError("tensor carries backward hooks")
    if not isinstance(storage, torch.UntypedStorage | torch.TypedStorage):
        raise UnsafeFileError("tensor storage is not a torch storage")
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, {})


_DTYPES = {
    name: getattr(torch, name) for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype)
}

_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("torch", "Size"): torch.Size,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "int"): int,
    ("builtins", "float"): float,
    ("builtins", "str"): str,
    ("builtins", "bool"): bool,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a trajectory dict needs."""

    def find_class(self, module: str, name: str) -> Any:
        """Return an allowed global, or raise :class:`UnsafeFileError`."""
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise UnsafeFileError(
                f"refused to load: the pickle references {module}.{name}, which a trajectory "
                "file never needs (it could run code)"
            )
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        """Persistent ids never occur in trajectory pickles."""
        raise UnsafeFileError("refused to load: the pickle uses persistent ids")


def read(path: str, mmap: bool = False) -> dict[str, Any]:
    """Load a ``pkl`` trajectory file safely (``mmap`` is ignored: pickles are read whole)."""
    try:
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(f).load()
    except UnsafeFileError as exc:
        raise UnsafeFileError(f"{path}: {exc}") from None
    except FileNotFoundError:
        raise
    except PermissionError as exc:
        raise unreadable(path, exc) from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        RuntimeError,
        OSError,
    ) as exc:
        raise CorruptBufferError(
            f"{path}: not a readable trajectory pickle ({type(exc).__name__}: "
            f"{str(exc)[:200] or 'truncated'})"
        ) from None
    if not isinstance(obj, dict):
        raise CorruptBufferError(f"{path}: expected a trajectory dict, found {type(obj).__name__}")
    return obj


def write(path: str, data: dict[str, Any], sync: bool = True) -> int:
    """Atomically write ``data`` with ``pickle`` (protocol 4, which RLinf's readers accept).

    Returns the CRC-32 of the file's bytes."""
    return atomic_write(path, lambda f: pickle.dump(data, f, protocol=4), sync=sync, sync_dir=False)
