"""The schema of a buffer: which columns every transition has, with dtype and per-row shape.

All trajectories in one buffer share a schema (it is what lets ``sample`` stack rows from
different trajectories). The first trajectory defines it; later ones must match exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .errors import InvalidTrajectoryError
from .trajectory import STORABLE_DTYPES, Key, key_name, key_of_name


@dataclass(frozen=True)
class ColumnSpec:
    """One column: ``dtype`` and the shape of one transition's row (the dims after ``[T, B]``)."""

    dtype: torch.dtype
    row_shape: tuple[int, ...]

    @property
    def row_bytes(self) -> int:
        """Bytes of one transition's row."""
        n = 1
        for d in self.row_shape:
            n *= d
        return n * self.dtype.itemsize


class Schema(dict[Key, ColumnSpec]):
    """Column name -> :class:`ColumnSpec`, in a stable order."""

    @classmethod
    def of_columns(cls, columns: Mapping[Key, torch.Tensor], lead_dims: int = 2) -> Schema:
        """The schema of tensors whose first ``lead_dims`` dims are ``[T, B]`` (or 1 for flat)."""
        return cls(
            (k, ColumnSpec(v.dtype, tuple(int(d) for d in v.shape[lead_dims:]))) for k, v in columns.items()
        )

    @property
    def row_bytes(self) -> int:
        """Bytes of one transition across all columns."""
        cached = self.__dict__.get("_row_bytes")
        if cached is None or cached[0] != len(self):
            cached = self.__dict__["_row_bytes"] = (len(self), sum(spec.row_bytes for spec in self.values()))
        return cached[1]

    def check(self, other: Schema, where: str = "") -> None:
        """Raise :class:`InvalidTrajectoryError` naming the first difference with ``other``."""
        if self == other:
            return
        missing = [key_name(k) for k in self if k not in other]
        extra = [key_name(k) for k in other if k not in self]
        if missing or extra:
            raise InvalidTrajectoryError(
                f"{where}fields differ from the buffer's: missing {missing or 'none'}, "
                f"unexpected {extra or 'none'}; every trajectory in a buffer must have the same "
                "fields (call clear() to start a buffer with new fields)"
            )
        for key, spec in self.items():
            got = other[key]
            if got != spec:
                raise InvalidTrajectoryError(
                    f"{where}{key_name(key)} is {got.dtype} with per-step shape {list(got.row_shape)} "
                    f"but the buffer holds {spec.dtype} with {list(spec.row_shape)}; convert it "
                    "to match (or clear() the buffer)"
                )

    def to_json(self) -> dict[str, Any]:
        """JSON form: ``{"curr_obs.states": {"dtype": "float32", "shape": [3]}, ...}``."""
        return {
            key_name(k): {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.row_shape)}
            for k, v in self.items()
        }


_DTYPES = {str(t).removeprefix("torch."): t for t in STORABLE_DTYPES}


def schema_from_json(obj: Any, where: str, error: type[Exception]) -> Schema:
    """Parse :meth:`Schema.to_json` output; raise ``error`` naming ``where`` if malformed.

    A name is ``field`` or ``field.key`` with the dict key verbatim: it is split at its first
    dot only (:func:`~.trajectory.key_of_name`), so keys holding dots come back whole."""
    if not isinstance(obj, dict):
        raise error(f"{where}: fields must be a JSON object, got {type(obj).__name__}")
    out = Schema()
    for name, spec in obj.items():
        dtype = spec.get("dtype") if isinstance(spec, dict) else None
        dtype = _DTYPES.get(dtype) if isinstance(dtype, str) else None
        shape = spec.get("shape") if isinstance(spec, dict) else None
        parts = key_of_name(name) if isinstance(name, str) else None
        if (
            dtype is None
            or not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            or parts is None
        ):
            raise error(f"{where}: field {name!r} has a bad description {spec!r}")
        out[parts] = ColumnSpec(dtype, tuple(shape))
    return out


def combine(schema: Schema | None, other: Schema, where: str, error: type[Exception]) -> Schema:
    """The schema two sources share; raise ``error`` naming the first difference."""
    if schema is None:
        return other
    try:
        schema.check(other, where=where)
    except InvalidTrajectoryError as exc:
        raise error(str(exc)) from None
    return schema
