"""Which shard an added trajectory goes to."""

from __future__ import annotations

import zlib
from collections.abc import Hashable

import numpy as np

from ..errors import InvalidArgumentError


def shard_of_key(key: Hashable, num_shards: int) -> int:
    """The shard a routing key goes to: ``key % N`` for ints, CRC-32 of the bytes for
    ``str``/``bytes`` (the same in every process, unlike ``hash``)."""
    if isinstance(key, bool) or not isinstance(key, int | np.integer | str | bytes):
        raise InvalidArgumentError(
            f"a routing key must be an int, str or bytes, got {type(key).__name__} {key!r}"
        )
    if isinstance(key, int | np.integer):
        return int(key) % num_shards
    data = key.encode() if isinstance(key, str) else key
    return zlib.crc32(data) % num_shards
