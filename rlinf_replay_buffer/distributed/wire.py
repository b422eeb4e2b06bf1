"""How tensors cross process boundaries: as NumPy arrays, which Ray's object store moves without
pickling the data (pickle protocol 5 out-of-band buffers; same-node readers map the stored
bytes instead of copying them).

A torch dtype NumPy lacks (``bfloat16``, the ``float8`` kinds) travels as an integer view of
the same item size together with the dtype's name, and is viewed back on arrival.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..batch import Batch
from ..errors import InvalidTrajectoryError

Encoded = tuple[np.ndarray, str | None]
"""An array and, for dtypes NumPy lacks, the torch dtype name to view it back as."""

_VIEW_AS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def encode(tensor: torch.Tensor) -> Encoded:
    """A CPU NumPy view of ``tensor`` (copied only if it lives on another device)."""
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    try:
        return tensor.numpy(), None
    except TypeError:  # a dtype NumPy lacks: ship the bits
        view = _VIEW_AS.get(tensor.element_size())
        if view is None:
            raise
        return tensor.contiguous().view(view).numpy(), str(tensor.dtype).removeprefix("torch.")


def decode(item: Encoded) -> torch.Tensor:
    """The tensor of :func:`encode` (sharing the array's memory, which may be read-only)."""
    array, dtype_name = item
    with warnings.catch_warnings():  # arrays mapped from Ray's object store are read-only
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(array)
    if dtype_name is not None:
        dtype = getattr(torch, dtype_name, None)
        if not isinstance(dtype, torch.dtype):
            raise InvalidTrajectoryError(f"unknown tensor dtype {dtype_name!r} in a message")
        tensor = tensor.view(dtype)
    return tensor


def _encode_value(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return ("tensor", encode(value))
    if isinstance(value, Mapping):
        return ("dict", {str(k): _encode_value(v) for k, v in value.items()})
    return ("value", value)


def _decode_value(item: Any) -> Any:
    kind, payload = item
    if kind == "tensor":
        return decode(payload)
    if kind == "dict":
        return {k: _decode_value(v) for k, v in payload.items()}
    return payload


def encode_trajectory(traj: Any) -> dict[str, Any]:
    """A trajectory (our ``Trajectory``, another dataclass, or a dict) as a message."""
    if dataclasses.is_dataclass(traj) and not isinstance(traj, type):
        fields = {f.name: getattr(traj, f.name) for f in dataclasses.fields(traj)}
    elif isinstance(traj, Mapping):
        fields = dict(traj)
    else:
        raise InvalidTrajectoryError(
            f"expected a Trajectory, got {type(traj).__name__}; build one with "
            "Trajectory(rewards=..., actions=..., curr_obs={...}, ...)"
        )
    return {name: _encode_value(value) for name, value in fields.items() if value is not None}


def decode_trajectory(message: Mapping[str, Any]) -> dict[str, Any]:
    """The trajectory dict of :func:`encode_trajectory` (``add_trajectories`` accepts it)."""
    return {name: _decode_value(item) for name, item in message.items()}


def flatten_batch(batch: Batch) -> dict[tuple[str, ...], Encoded]:
    """``{"curr_obs": {"states": t}, "rewards": r}`` ->
    ``{("curr_obs", "states"): encoded, ("rewards",): encoded}``."""
    flat: dict[tuple[str, ...], Encoded] = {}
    for name, value in batch.items():
        if isinstance(value, Mapping):
            for sub, tensor in value.items():
                flat[(name, sub)] = encode(tensor)
        else:
            flat[(name,)] = encode(value)
    return flat
