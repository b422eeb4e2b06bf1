"""The batch a sample returns, and how flat columns become one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .trajectory import Key

Batch = dict[str, Any]
"""A sampled batch: ``{"actions": [N, ...], ..., "curr_obs": {"states": [N, ...]}, ...}``."""


def nest(flat: Mapping[Key, torch.Tensor]) -> Batch:
    """``{("curr_obs", "states"): t}`` -> ``{"curr_obs": {"states": t}}``."""
    out: Batch = {}
    for key, value in flat.items():
        if len(key) == 1:
            out[key[0]] = value
        else:
            out.setdefault(key[0], {})[key[1]] = value
    return out
