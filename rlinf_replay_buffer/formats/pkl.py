"""The ``pkl`` format: ``pickle.dump`` of the trajectory dict, read by a restricted unpickler.

Only what a trajectory dict needs can be rebuilt: tensors, ``torch.Size``, dtypes, ``dict`` and
``OrderedDict``, numbers and strings. Any other global in the stream (``os.system``,
``builtins.eval``, ...) makes the load fail with :class:`UnsafeFileError` before anything runs.
Tensor storages embedded by ``pickle`` are themselves ``torch.save`` archives, read by
:mod:`.torchsave` (or, if one is anything but a plain storage, ``torch.load(weights_only=True)``).

Sizes the stream declares are checked before anything is allocated: the opcodes are walked once
without building anything (:func:`check_declared_sizes`), and a length (of bytes, a string, a
frame) beyond the end of the file is :class:`CorruptBufferError`; a tensor whose shape and strides
reach past its storage is refused when it is rebuilt.
"""

from __future__ import annotations

import collections
import io
import mmap as memory_map
import os
import pickle
import pickletools
import re
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch._utils

from ..errors import BufferDirectoryError, CorruptBufferError, UnsafeFileError, unreadable
from ..fsio import atomic_write
from ..safe_open import open_regular
from . import torchsave

EXTENSION = "pkl"


class _Elements(NamedTuple):
    """A storage read by :mod:`.torchsave`: its elements as a 1-D tensor."""

    tensor: torch.Tensor


def _load_storage(data: bytes) -> Any:
    if not isinstance(data, bytes | bytearray):
        raise UnsafeFileError("tensor storage is not bytes")
    elements = torchsave.storage_elements(data)  # a plain storage, read directly
    if elements is not None:
        return _Elements(elements)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's restricted reader refused a global, or bad bytes
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        line = next((ln for ln in lines if "global" in ln.lower()), None)
        if line is not None:
            raise UnsafeFileError(
                f"refused to load: a tensor storage in the pickle references code ({line[:200]})"
            ) from None
        noise = ("Weights only load failed", "Please file an issue", "Check the documentation")
        detail = next((ln for ln in lines if not ln.startswith(noise)), "bad pickle stream")
        raise CorruptBufferError(f"a tensor storage in the pickle is not readable ({detail[:200]})") from None


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
    if type(storage) is _Elements:  # as torch rebuilds it: a view of the storage's elements
        _check_view(storage.tensor.numel(), offset, size, stride)
        return storage.tensor.as_strided(tuple(size), tuple(stride), offset)
    if not isinstance(storage, torch.UntypedStorage | torch.TypedStorage):
        raise UnsafeFileError("tensor storage is not a torch storage")
    _check_view(_held(storage), offset, size, stride)
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, {})


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _held(storage: torch.UntypedStorage | torch.TypedStorage) -> int:
    """The elements a storage holds."""
    if isinstance(storage, torch.TypedStorage):  # its own size methods warn of deprecation
        untyped = torch.empty(0, dtype=storage.dtype).set_(storage).untyped_storage()
        return untyped.nbytes() // storage.dtype.itemsize
    return storage.nbytes()


def _check_view(held: int, offset: Any, size: Any, stride: Any) -> None:
    """Refuse a tensor whose elements would lie outside its storage of ``held`` elements (torch
    would grow the storage to fit, allocating what the file declares and exposing uninitialized
    memory)."""
    if not isinstance(size, tuple | list) or not isinstance(stride, tuple | list):
        raise CorruptBufferError(f"a tensor has size {size!r} and stride {stride!r}")
    dims, steps = tuple(size), tuple(stride)
    if len(dims) != len(steps) or not all(_is_count(d) for d in dims + steps) or not _is_count(offset):
        raise CorruptBufferError(f"a tensor has size {dims!r}, stride {steps!r}, offset {offset!r}")
    needed = 0 if 0 in dims else offset + 1 + sum((d - 1) * s for d, s in zip(dims, steps, strict=True))
    if needed > held:
        raise CorruptBufferError(
            f"a tensor of size {list(dims)[:8]} needs {needed} elements, its storage holds {held}"
        )


_COUNT_WIDTH = {  # pickletools' markers of counted arguments -> (bytes of the count, signed)
    pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
}
#: longest text argument (a protocol-0 number or name, up to its newline) accepted
MAX_TEXT_ARGUMENT = 1 << 16
_NONE, _FIXED, _LINES, _COUNTED = range(4)  # kinds of opcode arguments


def _argument(op: pickletools.OpcodeInfo) -> tuple[str, int, int, bool]:
    """``(name, kind, n, signed)`` of an opcode's argument: no argument; ``n`` fixed bytes;
    ``n`` lines of text; or a count of ``n`` bytes (``signed``) and that many bytes."""
    arg = op.arg
    if arg is None:
        return op.name, _NONE, 0, False
    if arg.n >= 0:  # fixed width (at most 8 bytes)
        return op.name, _FIXED, arg.n, False
    if arg.n == pickletools.UP_TO_NEWLINE:
        return op.name, _LINES, 2 if arg is pickletools.stringnl_noescape_pair else 1, False
    return (op.name, _COUNTED, *_COUNT_WIDTH[arg.n])


_ARGUMENTS: list[tuple[str, int, int, bool] | None] = [None] * 256
for _op in pickletools.opcodes:
    _ARGUMENTS[ord(_op.code)] = _argument(_op)


def _opcode_class(width: int) -> bytes:
    """A regex class of the opcodes taking ``width`` fixed bytes (0: none), but ``STOP`` and
    ``FRAME`` (whose arguments the walk checks)."""
    kind = _NONE if width == 0 else _FIXED
    codes = [
        c
        for c, a in enumerate(_ARGUMENTS)
        if a and a[1] == kind and a[2] == width and a[0] not in ("STOP", "FRAME")
    ]
    return b"[" + b"".join(re.escape(bytes([c])) for c in codes) + b"]"


#: a run of opcodes without an argument or with a fixed-width one (but ``STOP`` and ``FRAME``),
#: skipped in one step: only counted and text arguments, frames and the end are walked one by one
_PLAIN_RUN = re.compile(
    b"(?:"
    + b"|".join(
        _opcode_class(width) + (b".{%d}" % width if width else b"")
        for width in sorted({a[2] for a in _ARGUMENTS if a and a[1] in (_NONE, _FIXED)})
    )
    + b")*",
    re.DOTALL,
)


def check_declared_sizes(buf: Any) -> None:
    """Walk the opcodes of the pickle in ``buf`` (bytes or a mapping of the file, from its
    start to its ``STOP``) without building anything, and raise :class:`CorruptBufferError` if
    one declares more bytes than remain in the file (``BINBYTES8``, ``BINUNICODE``, ``FRAME``,
    ...), has a text argument longer than :data:`MAX_TEXT_ARGUMENT`, or is not an opcode at all.

    Counted arguments are skipped, not read: the walk allocates nothing whatever the
    declarations say.
    """
    size = len(buf)
    pos = 0
    while True:
        pos = _PLAIN_RUN.match(buf, pos).end()  # type: ignore[union-attr]  # matches, maybe nothing
        at = pos
        if pos >= size:
            raise CorruptBufferError(f"the pickle ends at byte {pos} before its STOP opcode (truncated)")
        spec = _ARGUMENTS[buf[pos]]
        if spec is None:
            raise CorruptBufferError(f"byte {at} ({bytes([buf[pos]])!r}) is not a pickle opcode")
        pos += 1
        name, kind, n, signed = spec
        if name == "STOP":
            return
        if kind == _FIXED:
            if n > size - pos:
                raise CorruptBufferError(f"{name} at byte {at} is cut off by the end of the file")
            raw = buf[pos : pos + n]
            pos += n
            if name == "FRAME" and int.from_bytes(raw, "little") > size - pos:
                raise CorruptBufferError(
                    f"FRAME at byte {at} declares {int.from_bytes(raw, 'little')} bytes, but only "
                    f"{size - pos} remain in the file"
                )
        elif kind == _LINES:
            for _ in range(n):
                end = buf.find(b"\n", pos, pos + MAX_TEXT_ARGUMENT)
                if end < 0:
                    raise CorruptBufferError(
                        f"{name} at byte {at} has a text argument without its end of line within "
                        f"{MAX_TEXT_ARGUMENT} bytes"
                    )
                pos = end + 1
        elif kind == _COUNTED:
            if n > size - pos:
                raise CorruptBufferError(f"{name} at byte {at} is cut off by the end of the file")
            count = int.from_bytes(buf[pos : pos + n], "little", signed=signed)
            pos += n
            if count < 0 or count > size - pos:
                raise CorruptBufferError(
                    f"{name} at byte {at} declares {count} bytes, but only {size - pos} remain in the file"
                )
            pos += count


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


def read(
    path: str, mmap: bool = False, max_bytes: int | None = None, check: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Load a ``pkl`` trajectory file safely (``mmap`` is ignored: pickles are read whole).

    The file is opened with :func:`~..safe_open.open_regular` (at most ``max_bytes`` bytes;
    links only inside its directory), and every size the pickle declares is checked against
    the bytes left in the file before anything is allocated (:func:`check_declared_sizes`).
    ``check`` is called with the CRC-32 of the file's bytes before they are parsed (it raises
    to refuse them); the file is then read once, and the bytes checked are the bytes parsed.

    Raises:
        UnsafeFileError: the pickle references code, or the file is not a regular file.
        CorruptBufferError: the file is truncated, declares more than it holds, or is not a
            trajectory pickle; the message names the file.
    """
    try:
        with open_regular(path, max_bytes, what="trajectory file", links=True) as f:
            if check is not None:
                data = f.read()
                check(zlib.crc32(data))
                check_declared_sizes(data)
                obj = RestrictedUnpickler(io.BytesIO(data)).load()
            else:
                if os.fstat(f.fileno()).st_size:
                    with memory_map.mmap(f.fileno(), 0, access=memory_map.ACCESS_READ) as mapped:
                        check_declared_sizes(mapped)
                else:
                    check_declared_sizes(b"")
                obj = RestrictedUnpickler(f).load()
    except UnsafeFileError as exc:
        raise exc if str(exc).startswith(path) else UnsafeFileError(f"{path}: {exc}") from None
    except CorruptBufferError as exc:
        if str(exc).startswith(path):
            raise
        raise CorruptBufferError(f"{path}: not a readable trajectory pickle ({exc})") from None
    except (BufferDirectoryError, FileNotFoundError):  # the system's refusal, named: not damage
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
        OverflowError,
        MemoryError,
        RecursionError,
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
