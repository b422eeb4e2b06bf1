"""The argument checks of the public API: one home for "what is a valid int / float / bool".

Each check returns the value normalised (a Python ``int``, ``float`` or ``bool``) or raises
:class:`~.errors.InvalidArgumentError` with a message that names the argument, says what it must
be and what was passed instead, e.g. ``num_chunks must be an int >= 1, got 0 (too small:
num_chunks must be >= 1)``.

* ``bool`` is never an int or a number here (``True`` is not a count), but NumPy scalars are
  (``np.int64(3)`` is an int, ``np.bool_(True)`` a bool).
* ``allow_none=True`` passes ``None`` through (the "not set" of an optional argument).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Literal, overload

import numpy as np

from .errors import InvalidArgumentError

__all__ = ["check_bool", "check_float", "check_int"]


def _bounds(minimum: float | None, maximum: float | None, finite: bool = False) -> str:
    """``">= 1"``, ``"<= 9"``, ``"in [0, 9]"``, ``"finite and >= 0.0"`` ... (``""``: no bound)."""
    if minimum is not None and maximum is not None:
        return f"in [{minimum}, {maximum}]"
    if minimum is not None:
        return f"finite and >= {minimum}" if finite else f">= {minimum}"
    if maximum is not None:
        return f"finite and <= {maximum}" if finite else f"<= {maximum}"
    return "finite" if finite else ""


def _out_of_range(name: str, value: int, minimum: int | None, maximum: int | None) -> str:
    """Which bound an in-type ``value`` misses."""
    if minimum is not None and value < minimum:
        return f"too small: {name} must be >= {minimum}"
    return f"too large: {name} must be <= {maximum}"


@overload
def check_int(
    name: str,
    value: Any,
    minimum: int | None = ...,
    maximum: int | None = ...,
    allow_none: Literal[False] = ...,
) -> int: ...


@overload
def check_int(
    name: str, value: Any, minimum: int | None = ..., maximum: int | None = ..., *, allow_none: bool
) -> int | None: ...


def check_int(
    name: str,
    value: Any,
    minimum: int | None = None,
    maximum: int | None = None,
    allow_none: bool = False,
) -> int | None:
    """``value`` as an ``int`` in ``[minimum, maximum]`` (either bound optional).

    Raises:
        InvalidArgumentError: ``value`` is not an integer (``bool`` and ``2.0`` are not), or is
            out of range; or it is ``None`` and ``allow_none`` is False.
    """
    if value is None and allow_none:
        return None
    bound = _bounds(minimum, maximum)
    wanted = f"an int {bound}" if bound else "an int"
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        or_none = " or None" if allow_none else ""
        raise InvalidArgumentError(f"{name} must be {wanted}{or_none}, got {type(value).__name__} {value!r}")
    number = int(value)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise InvalidArgumentError(
            f"{name} must be {wanted}, got {number} ({_out_of_range(name, number, minimum, maximum)})"
        )
    return number


@overload
def check_float(
    name: str,
    value: Any,
    minimum: float | None = ...,
    maximum: float | None = ...,
    allow_none: Literal[False] = ...,
    finite: bool = ...,
) -> float: ...


@overload
def check_float(
    name: str,
    value: Any,
    minimum: float | None = ...,
    maximum: float | None = ...,
    *,
    allow_none: bool,
    finite: bool = ...,
) -> float | None: ...


def check_float(
    name: str,
    value: Any,
    minimum: float | None = None,
    maximum: float | None = None,
    allow_none: bool = False,
    finite: bool = True,
) -> float | None:
    """``value`` as a ``float`` in ``[minimum, maximum]`` (either bound optional). NaN is never
    accepted; infinities only with ``finite=False`` (and within the bounds).

    Raises:
        InvalidArgumentError: ``value`` is not a real number (``bool`` and ``"0.5"`` are not),
            is NaN, infinite (with ``finite=True``) or out of range; or it is ``None`` and
            ``allow_none`` is False.
    """
    if value is None and allow_none:
        return None
    bound = _bounds(minimum, maximum, finite)
    or_none = " (or None)" if allow_none else ""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        wanted = f"a real number ({bound})" if bound else "a real number"
        raise InvalidArgumentError(f"{name} must be {wanted}{or_none}, got {type(value).__name__} {value!r}")
    number = float(value)
    if (
        math.isnan(number)
        or (finite and math.isinf(number))
        or (minimum is not None and not number >= minimum)
        or (maximum is not None and not number <= maximum)
    ):
        wanted = bound or "a number"
        raise InvalidArgumentError(f"{name} must be {wanted}{or_none}, got {value!r}")
    return number


@overload
def check_bool(name: str, value: Any, allow_none: Literal[False] = ...) -> bool: ...


@overload
def check_bool(name: str, value: Any, allow_none: bool) -> bool | None: ...


def check_bool(name: str, value: Any, allow_none: bool = False) -> bool | None:
    """``value`` as a ``bool``: ``True`` or ``False`` (or ``np.bool_``), never ``1`` or ``"yes"``.

    Raises:
        InvalidArgumentError: ``value`` is not a bool; or it is ``None`` and ``allow_none`` is
            False.
    """
    if value is None and allow_none:
        return None
    if not isinstance(value, bool | np.bool_):
        wanted = "True, False or None" if allow_none else "True or False"
        raise InvalidArgumentError(f"{name} must be {wanted}, got {value!r}")
    return bool(value)


def check_share(is_distributed: Any, local_rank: Any, world_size: Any) -> tuple[int, int]:
    """``(rank, world_size)`` of a sharded load (``(0, 1)`` unless ``is_distributed``), checked:
    ``world_size >= 1`` and ``0 <= local_rank < world_size``."""
    is_distributed = check_bool("is_distributed", is_distributed)
    world_size = check_int("world_size", world_size, 1)
    local_rank = check_int("local_rank", local_rank, 0)
    if local_rank >= world_size:
        raise InvalidArgumentError(
            f"local_rank {local_rank} is out of range for world_size {world_size} "
            f"(valid ranks: 0..{world_size - 1})"
        )
    return (local_rank, world_size) if is_distributed else (0, 1)
