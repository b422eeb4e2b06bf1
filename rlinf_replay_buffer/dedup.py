"""Observations stored once: which ``next_obs`` rows the in-memory ring keeps, and which it reads
from ``curr_obs`` instead.

In a rollout ``next_obs[t, b]`` is ``curr_obs[t + 1, b]`` except where an episode ended at step
``t`` (the environment reset) and at the last step. Rows are flattened ``[T * B, ...]`` (row
``t * B + b``), so ``next_obs`` row ``r`` is ``curr_obs`` row ``r + B`` of the same trajectory
wherever the two are equal. The ring (:mod:`.cache`) keeps a paired ``next_obs`` column as one
source row number per row plus the rows that must be kept (:func:`kept_rows`): the last ``B``
rows of the trajectory and the rows whose bytes differ from those of their ``curr_obs``
partner (so ``-0.0`` is kept beside ``0.0``, and a NaN beside another NaN). A sampled row is
then read with two ``index_select`` calls and comes back bit-identical to what was added.

A pair is a ``("next_obs", k)`` column with a ``("curr_obs", k)`` column of the same dtype and
per-row shape (:func:`pairs_of`), of at least :data:`MIN_ROW_BYTES` bytes a row (smaller rows
save less than the source number and the extra gather cost).
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch

from .libc import libc_function
from .schema import Schema
from .trajectory import Key

#: smallest row (bytes) whose ``next_obs`` column is stored as references to ``curr_obs``
MIN_ROW_BYTES = 32
#: bytes of one row's source number (int64)
SOURCE_BYTES = 8
#: bytes of rows compared at once (bounds the temporary memory of the comparison)
_CHUNK_BYTES = 4 << 20
#: whole rows compared first, spread over the trajectory: if most differ, every row is kept
#: without comparing the rest (a rollout whose ``next_obs`` never equals the next ``curr_obs``
#: pays for a few rows' comparison, not for the whole column's)
_PROBE_ROWS = 8


#: libc's ``memcmp`` (``None`` where there is no C library to load)
_MEMCMP = libc_function("memcmp", [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t], ctypes.c_int)


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two C-contiguous arrays of one shape and dtype hold the same bytes: one
    ``memcmp``, which stops at the first difference (``False`` where it cannot be asked)."""
    if _MEMCMP is None or not (a.flags.c_contiguous and b.flags.c_contiguous) or a.nbytes != b.nbytes:
        return False
    return a.nbytes == 0 or _MEMCMP(a.ctypes.data, b.ctypes.data, a.nbytes) == 0


Pair = tuple[Key, Key]
"""``(("curr_obs", k), ("next_obs", k))``."""


def pairs_of(schema: Schema, enabled: bool = True) -> tuple[Pair, ...]:
    """The ``(curr_obs, next_obs)`` column pairs of ``schema`` the ring stores once (none if not
    ``enabled``)."""
    if not enabled:
        return ()
    out = []
    for key, spec in schema.items():
        if len(key) == 2 and key[0] == "next_obs":
            curr = ("curr_obs", key[1])
            if schema.get(curr) == spec and spec.row_bytes >= MIN_ROW_BYTES:
                out.append((curr, key))
    return tuple(out)


def stored_row_bytes(schema: Schema, pairs: tuple[Pair, ...]) -> int:
    """Bytes the ring holds per row before kept ``next_obs`` rows: every column but the paired
    ``next_obs`` ones, which hold a source number instead."""
    return schema.row_bytes - sum(schema[nxt].row_bytes - SOURCE_BYTES for _, nxt in pairs)


def kept_rows(nxt: torch.Tensor, curr: torch.Tensor, envs: int) -> torch.Tensor:
    """Which ``next_obs`` rows must be kept, bool ``[N]``, for flattened columns ``[N, ...]``
    (``N = T * B``, ``envs = B``; 0: unknown, every row kept).

    Row ``r < N - B`` need not be kept where its bytes equal those of ``curr`` row ``r + B``.
    One ``memcmp`` of the two row ranges settles the common case (all equal); otherwise the
    comparison runs on integer words, a few rows spread over the trajectory first, then in
    chunks; once most rows compared differ, every row is kept without comparing the rest.
    """
    mask = kept_mask(nxt, curr, envs)
    return torch.ones(int(nxt.shape[0]), dtype=torch.bool) if mask is None else torch.from_numpy(mask)


def kept_mask(nxt: torch.Tensor, curr: torch.Tensor, envs: int) -> np.ndarray | None:
    """:func:`kept_rows` as a numpy array, or ``None`` when every row is kept."""
    n = int(nxt.shape[0])
    m = n - envs
    if envs <= 0 or m <= 0:
        return None
    x, y = _words(nxt, curr)
    a, b = x[:m], y[envs:]
    keep = np.zeros(n, dtype=bool)
    keep[m:] = True
    if _same_bytes(a, b):  # the common case (no episode ended inside): one memcmp decides
        return keep
    step = max(1, m // _PROBE_ROWS)
    probe = a[::step] != b[::step]
    if 2 * np.count_nonzero(probe.any(axis=1)) > len(probe):
        return None
    width = x.shape[1]
    chunk = max(1, _CHUNK_BYTES // max(1, width * x.itemsize))
    kept = 0
    for start in range(0, m, chunk):
        stop = min(m, start + chunk)
        words = a[start:stop] != b[start:stop]
        count = np.count_nonzero(words)
        if not count:
            continue
        if count <= stop - start:  # few words differ: their rows, without a reduction per row
            keep[start + np.flatnonzero(words) // width] = True
        else:
            keep[start:stop] = words.any(axis=1)
        kept += np.count_nonzero(keep[start:stop])
        if 2 * kept > stop:  # most rows differ: keep them all
            return None
    return keep


def _words(*columns: torch.Tensor) -> list[np.ndarray]:
    """Columns ``[N, ...]`` of one dtype and shape as numpy ``[N, words]`` views of their bytes
    (copies of columns whose rows are not contiguous), in the widest integer word that divides
    a row."""
    out = []
    for column in columns:
        if column.dtype == torch.bfloat16:  # numpy has no bfloat16
            column = column.view(torch.int16)
        rows = column.numpy().reshape(column.shape[0], -1)
        if rows.shape[1] > 1 and rows.strides[1] != rows.itemsize:
            rows = np.ascontiguousarray(rows)
        out.append(rows.view(np.uint8))
    width = out[0].shape[1]
    for dtype in (np.int64, np.int32, np.int16):
        if width % np.dtype(dtype).itemsize == 0:
            return [w.view(dtype) for w in out]
    return out
