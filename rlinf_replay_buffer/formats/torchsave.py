"""Reading what ``torch.save`` writes (plain data and tensors) without ``torch.load``.

``torch.load(weights_only=True)`` unpickles in Python and costs about a millisecond per file, which
dominates reading small trajectory files. The archives this library (and RLinf) writes are simple:
a zip of uncompressed records, ``data.pkl`` (a pickle of dicts, strings, numbers and calls of
``torch._utils._rebuild_tensor_v2`` on storages named by persistent ids) and one record per
storage. :func:`load` reads exactly that, and nothing else:

* the zip is parsed here: every record must be stored (not compressed, not encrypted), lie inside
  the file, have the same name in its local and central headers, and match its CRC-32;
* ``data.pkl`` goes through a restricted unpickler whose globals are only placeholders made here
  (no function of torch or of the standard library is called while unpickling, so nothing in
  the stream can run code), and whose persistent ids must be ``('storage', <dtype>, key,
  location, numel)``;
* every storage record must hold exactly ``numel`` elements of its dtype (little-endian) and every
  tensor must lie inside its storage, before a tensor is made (``torch.frombuffer`` over a copy
  of the file's bytes, then ``as_strided``).

:func:`storage_elements` reads one storage, as a ``pkl`` file embeds each (a zip archive as above,
or torch's legacy format: five pickles, then the storage's element count and bytes).

Whatever does not fit (another layout, another global, a zip64 archive, a big-endian file, damage)
makes :func:`load` return ``None``: the caller then uses ``torch.load``, which reads what it can and
reports the rest as it always did. So this is an optimization only: it returns what ``torch.load``
returns, or defers to it.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
import struct
import sys
import zlib
from typing import IO, Any, NamedTuple

import torch

_EOCD = struct.Struct("<IHHHHIIH")  # end of central directory record
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")  # central directory file header
_LOCAL = struct.Struct("<IHHHHHIIIHH")  # local file header
_ZIP64 = struct.Struct("<IQHHIIQQQQ")  # zip64 end of central directory record
_LOCATOR = struct.Struct("<IIQI")  # zip64 end of central directory locator
_EOCD_SIG, _CENTRAL_SIG, _LOCAL_SIG = 0x06054B50, 0x02014B50, 0x04034B50
_ZIP64_SIG, _LOCATOR_SIG = 0x06064B50, 0x07064B50
#: largest ``data.pkl`` read here (a trajectory dict's is a few KiB)
MAX_PICKLE_BYTES = 1 << 20
#: most records an archive read here holds
MAX_RECORDS = 1 << 16
#: the ``version`` record of the archives read here (torch's serialization format 3)
KNOWN_VERSION = b"3"
#: largest file read here when mapped tensors were asked for (larger ones are mapped by torch)
MAX_COPIED_BYTES = 1 << 20

_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _Unsupported(Exception):
    """The archive holds something :func:`load` leaves to ``torch.load``."""


class _StorageType(NamedTuple):
    """What the global ``torch.<Type>Storage`` stands for while unpickling."""

    dtype: torch.dtype


class _StorageRef(NamedTuple):
    """A persistent id ``('storage', type, key, location, numel)``."""

    key: str
    dtype: torch.dtype
    numel: int


class _TensorRef(NamedTuple):
    """A ``_rebuild_tensor_v2(storage, offset, size, stride, ...)`` call, not made yet."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _tensor_ref(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, *rest: Any
) -> _TensorRef:
    """The placeholder ``torch._utils._rebuild_tensor_v2`` stands for: checks its arguments only
    (sizes and strides are checked when the tensor is made)."""
    if (
        type(storage) is not _StorageRef
        or not _is_count(offset)
        or type(size) is not tuple
        or type(stride) is not tuple
        or len(size) != len(stride)
        or {type(d) for d in size + stride} - {int}
        or requires_grad is not False
        or type(hooks) is not collections.OrderedDict
        or hooks
        or rest not in ((), (None,))
    ):
        raise _Unsupported("a tensor this reader does not rebuild")
    return _TensorRef(storage, offset, size, stride)


class _Unpickler(pickle.Unpickler):
    """Resolves only the globals of a ``torch.save`` of plain data and CPU tensors, as
    placeholders; every other global, and every other persistent id, is refused."""

    def find_class(self, module: str, name: str) -> Any:
        """A placeholder for an allowed global; any other is refused."""
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _tensor_ref
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _DTYPES:
            return _StorageType(_DTYPES[name])
        raise _Unsupported(f"global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        """A storage id (the legacy format adds a sixth item, ``None`` for a whole storage)."""
        if (
            type(pid) is not tuple
            or len(pid) not in (5, 6)
            or pid[5:] not in ((), (None,))
            or pid[0] != "storage"
            or type(pid[1]) is not _StorageType
            or type(pid[2]) is not str
            or type(pid[3]) is not str
            or not _is_count(pid[4])
        ):
            raise _Unsupported("a persistent id that is not a storage")
        return _StorageRef(pid[2], pid[1].dtype, pid[4])


class _Zip:
    """The stored records of the zip archive in ``buf``, from its central directory; a record's
    bytes are located (its local header checked, its CRC-32 verified) when first asked for."""

    def __init__(self, buf: Any) -> None:
        self.buf = buf
        size = len(buf)
        at = size - _EOCD.size
        if at < 0:
            raise _Unsupported("too short for a zip")
        sig, disk, cd_disk, here, total, cd_size, cd_offset, comment = _EOCD.unpack_from(buf, at)
        if sig != _EOCD_SIG or disk or cd_disk or here != total or comment:
            raise _Unsupported("not a plain zip")
        end = at  # where the central directory ends
        if at >= _LOCATOR.size and _LOCATOR.unpack_from(buf, at - _LOCATOR.size)[0] == _LOCATOR_SIG:
            # torch writes a zip64 end record (and its locator) before the end record, always
            _, z_disk, z_at, disks = _LOCATOR.unpack_from(buf, at - _LOCATOR.size)
            if z_disk or disks != 1 or z_at + _ZIP64.size != at - _LOCATOR.size:
                raise _Unsupported("a zip64 end record that is not where it says")
            zsig, zlen, _, _, disk, cd_disk, here, total, cd_size, cd_offset = _ZIP64.unpack_from(buf, z_at)
            if zsig != _ZIP64_SIG or zlen != _ZIP64.size - 12 or disk or cd_disk or here != total:
                raise _Unsupported("not a plain zip64 end record")
            end = z_at
        if total > MAX_RECORDS or cd_offset + cd_size != end:
            raise _Unsupported("the central directory is not where it says")
        self.end = cd_offset  # records lie before the central directory
        self.entries: dict[str, tuple[int, int, int, bytes]] = {}  # name -> (header, length, crc, raw name)
        pos = cd_offset
        for _ in range(total):
            if pos + _CENTRAL.size > end:
                raise _Unsupported("central directory cut short")
            (sig, _, _, flags, method, _, _, crc, csize, usize, nlen, xlen, clen, _, _, _, offset) = (
                _CENTRAL.unpack_from(buf, pos)
            )
            raw = bytes(buf[pos + _CENTRAL.size : pos + _CENTRAL.size + nlen])
            pos += _CENTRAL.size + nlen + xlen + clen
            if sig != _CENTRAL_SIG or method != 0 or flags & 1 or csize != usize or pos > end:
                raise _Unsupported("a compressed, encrypted or damaged record")
            if 0xFFFFFFFF in (csize, offset):
                raise _Unsupported("a zip64 record")
            self.entries[raw.decode("utf-8")] = (offset, csize, crc, raw)
        self._located: dict[str, tuple[int, int]] = {}

    def locate(self, name: str) -> tuple[int, int] | None:
        """``(start, length)`` of record ``name``'s bytes (``None`` if there is none)."""
        found = self._located.get(name)
        if found is not None:
            return found
        entry = self.entries.get(name)
        if entry is None:
            return None
        offset, length, crc, raw = entry
        buf = self.buf
        if offset + _LOCAL.size > self.end:
            raise _Unsupported("a record outside the file")
        lsig, _, _, lmethod, _, _, _, _, _, lnlen, lxlen = _LOCAL.unpack_from(buf, offset)
        start = offset + _LOCAL.size + lnlen + lxlen
        name_at = offset + _LOCAL.size
        if lsig != _LOCAL_SIG or lmethod != 0 or bytes(buf[name_at : name_at + lnlen]) != raw:
            raise _Unsupported("local and central headers differ")
        if start + length > self.end:
            raise _Unsupported("a record reaching past its end")
        if zlib.crc32(memoryview(buf)[start : start + length]) != crc:
            raise _Unsupported("a record failing its CRC-32")
        found = self._located[name] = (start, length)
        return found

    def small(self, name: str) -> bytes:
        """The bytes of a small record (at most 64; ``b""`` if there is none)."""
        start, length = self.locate(name) or (0, 0)
        return bytes(self.buf[start : start + min(length, 64)])


_SCALARS = (str, int, float, bool, type(None))


def _build(obj: Any, make: Any, depth: int = 0) -> Any:
    """``obj`` with every placeholder turned into ``make(placeholder)``, if it holds only dicts
    (string or int keys), lists, tuples, strings, numbers, ``None`` and placeholders."""
    kind = type(obj)
    if kind in _SCALARS:
        return obj
    if kind is _TensorRef or kind is _StorageRef:
        return make(obj)
    if depth > 64:
        raise _Unsupported("nested too deeply")
    if kind is dict:
        out = {}
        for k, v in obj.items():
            if type(k) is not str and type(k) is not int:
                raise _Unsupported("a dict key that is not a string or an int")
            out[k] = _build(v, make, depth + 1)
        return out
    if kind is list or kind is tuple:
        return kind(_build(v, make, depth + 1) for v in obj)
    raise _Unsupported(f"a {kind.__name__}")


#: parsed ``data.pkl`` records by their bytes: the files of one directory hold a handful of
#: distinct ones (same fields, shapes and storage keys); parsing is a pure function of the
#: bytes, and a parsed object (placeholders in tuples, lists and dicts) is only read, never changed
_PARSED: dict[bytes, Any] = {}
_MEMO_ENTRIES = 256  # the memo is emptied when it holds this many
_MEMO_PICKLE_BYTES = 16 << 10  # larger pickles are parsed every time


def _parsed_pickle(raw: bytes) -> Any:
    """``raw`` (a ``data.pkl`` record) unpickled by :class:`_Unpickler`, parsed once per
    distinct content."""
    found = _PARSED.get(raw)
    if found is None:
        found = _Unpickler(io.BytesIO(raw)).load()
        if len(raw) <= _MEMO_PICKLE_BYTES:
            if len(_PARSED) >= _MEMO_ENTRIES:
                _PARSED.clear()
            _PARSED[raw] = found
    return found


def _load(buf: Any, storage_result: bool) -> Any:
    archive = _Zip(buf)
    pickles = [n for n in archive.entries if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise _Unsupported("no single data.pkl")
    prefix = pickles[0][: -len("data.pkl")]
    if archive.small(prefix + "byteorder") != b"little" or sys.byteorder != "little":
        raise _Unsupported("not little-endian")
    if archive.small(prefix + "version").strip() != KNOWN_VERSION:
        raise _Unsupported("another version of the archive format")
    start, length = archive.locate(pickles[0]) or (0, 0)
    if length > MAX_PICKLE_BYTES:
        raise _Unsupported("a large pickle")
    obj = _parsed_pickle(bytes(buf[start : start + length]))
    if storage_result and type(obj) is not _StorageRef:
        raise _Unsupported("not a storage")
    bases: dict[str, torch.Tensor] = {}

    def storage(ref: _StorageRef) -> torch.Tensor:
        base = bases.get(ref.key)
        if base is None:
            where = archive.locate(f"{prefix}data/{ref.key}")
            itemsize = ref.dtype.itemsize
            if where is None or where[1] != ref.numel * itemsize or where[0] % itemsize:
                raise _Unsupported("a storage whose record does not hold it exactly")
            base = bases[ref.key] = (
                torch.frombuffer(buf, dtype=ref.dtype, count=ref.numel, offset=where[0])
                if ref.numel
                else torch.empty(0, dtype=ref.dtype)
            )
        if base.dtype != ref.dtype:
            raise _Unsupported("a storage read as two dtypes")
        return base

    def make(ref: _TensorRef | _StorageRef) -> Any:
        if type(ref) is _StorageRef:
            return storage(ref)
        dims, steps = ref.size, ref.stride
        if min(dims + steps, default=0) < 0:
            raise _Unsupported("a negative size or stride")
        needed = (
            0 if 0 in dims else ref.offset + 1 + sum((d - 1) * s for d, s in zip(dims, steps, strict=True))
        )
        if needed > ref.storage.numel:
            raise _Unsupported("a tensor reaching past its storage")
        return storage(ref.storage).as_strided(dims, steps, ref.offset)

    return _build(obj, make)


def load(f: IO[bytes], mapped: bool = False) -> Any | None:
    """The object the ``torch.save`` archive open as ``f`` holds, if it is plain data and CPU
    tensors (see the module docstring); ``None`` otherwise (use ``torch.load``). The file is
    read into memory (its tensors are views of that copy).

    ``mapped``: the caller asked for tensors mapped from the file (``torch.load(mmap=True)``):
    a file of at most :data:`MAX_COPIED_BYTES` is read all the same (cheaper than mapping it,
    and it holds no file descriptor while its tensors live); a larger one is left to
    ``torch.load``.
    """
    try:
        size = os.fstat(f.fileno()).st_size
        if mapped and size > MAX_COPIED_BYTES:
            return None
        f.seek(0)
        buf = bytearray(size)
        if f.readinto(buf) != size:
            return None  # it changed meanwhile: torch.load reads what is there
        return _load(buf, storage_result=False)
    except Exception:  # noqa: BLE001 - anything unexpected: torch.load reads it, or reports it
        return None
    finally:
        f.seek(0)


def load_bytes(buf: bytearray) -> Any | None:
    """:func:`load` of an archive already read into ``buf`` (its tensors are views of ``buf``);
    ``None`` if it is not plain data and CPU tensors (use ``torch.load``)."""
    try:
        return _load(buf, storage_result=False)
    except Exception:  # noqa: BLE001 - anything unexpected: torch.load reads it, or reports it
        return None


def storage_elements(data: bytes) -> torch.Tensor | None:
    """The elements of the one storage ``torch.save`` wrote into ``data`` (a zip archive, or the
    legacy format ``pickle`` embeds in a ``pkl`` file) as a 1-D tensor over a private copy of
    them, or ``None`` if ``data`` is anything else (use ``torch.load``)."""
    try:
        if data[:2] == b"PK":
            return _load(bytearray(data), storage_result=True)
        return _legacy_storage_elements(data)
    except Exception:  # noqa: BLE001 - anything unexpected: torch.load reads it, or reports it
        return None


#: what the legacy format begins with, as ``torch.save`` writes it (pickle protocol 2): its magic
#: number, its protocol and the writer's byte order and sizes
_LEGACY_HEAD = b"".join(
    pickle.dumps(value, protocol=2)
    for value in (
        0x1950A86A20F9469CFC6C,
        1001,
        {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}},
    )
)


#: the two pickles of a legacy storage as ``torch.save`` writes them for a CPU storage (protocol
#: 2: the persistent id ``("storage", torch.<Type>Storage, key, "cpu", numel[, None])`` then the
#: key list ``[key]``); a storage in exactly this form is read without an unpickler
LEGACY_STORAGE_PICKLES = re.compile(
    rb"\x80\x02\(X\x07\x00\x00\x00storageq\x00ctorch\n(?P<type>[A-Za-z0-9]{1,40})\nq\x01"
    rb"X(?P<klen>.{4})(?P<key>[0-9]{1,40})q\x02X\x03\x00\x00\x00cpuq\x03"
    rb"(?:K(?P<n1>.)|M(?P<n2>.{2})|J(?P<n4>.{4}))N?tq\x04Q\."
    rb"\x80\x02\]q\x00X(?P<klen2>.{4})(?P=key)q\x01a\.",
    re.DOTALL,
)


def _legacy_storage_ref(data: bytes) -> tuple[_StorageRef, int]:
    """The storage a legacy ``data`` declares, and where its pickles end: matched against
    :data:`LEGACY_STORAGE_PICKLES` when written in that form (what the unpickler would give for those
    bytes), else unpickled by :class:`_Unpickler`."""
    head = len(_LEGACY_HEAD)
    m = LEGACY_STORAGE_PICKLES.match(data, head)
    if m is not None:
        key, name = m["key"].decode("ascii"), m["type"].decode("ascii")
        count = next(x for x in (m["n1"], m["n2"], m["n4"]) if x is not None)
        numel = int.from_bytes(count, "little", signed=len(count) == 4)
        size = len(key).to_bytes(4, "little")
        if name in _DTYPES and numel >= 0 and m["klen"] == size and m["klen2"] == size:
            return _StorageRef(key, _DTYPES[name], numel), m.end()
    stream = io.BytesIO(data)
    stream.seek(head)
    unpickler = _Unpickler(stream)
    ref = unpickler.load()
    keys = unpickler.load()
    if type(ref) is not _StorageRef or keys != [ref.key]:
        raise _Unsupported("not one storage")
    return ref, stream.tell()


def _legacy_storage_elements(data: bytes) -> torch.Tensor:
    """One storage in torch's legacy format: five pickles (magic, protocol, system info, the
    object, its storage keys), then per key its element count (int64) and its bytes."""
    if not data.startswith(_LEGACY_HEAD) or sys.byteorder != "little":
        raise _Unsupported("another legacy header")
    ref, at = _legacy_storage_ref(data)
    start, length = at + 8, ref.numel * ref.dtype.itemsize
    if int.from_bytes(data[at:start], "little", signed=True) != ref.numel or start + length != len(data):
        raise _Unsupported("a storage whose bytes do not hold it exactly")
    own = bytearray(data[start : start + length])  # aligned for its dtype
    return torch.frombuffer(own, dtype=ref.dtype) if ref.numel else torch.empty(0, dtype=ref.dtype)
