"""Per-field statistics of a buffer directory: what ``rlinf-buffer info --stats`` prints, and the
numbers LeRobot keeps in ``meta/stats.json`` (the same keys: ``min``, ``max``, ``mean``, ``std``,
``count``, ``q01``, ``q10``, ``q50``, ``q90``, ``q99``).

**Dimensions.** Each field is reduced per element of the last axis of its per-transition
shape, over every transition (and over the other axes of the row): a vector ``[d]`` gives
``d`` values per statistic, a scalar one, an image ``[H, W, C]`` one per channel (over every
pixel). Images (the rule of :func:`.parquet.is_image`: ``uint8`` rows ``[H, W, C]``, ``C`` in 1,
3, 4) are scaled to ``[0, 1]`` (divided by 255), as LeRobot reports them. ``bool`` counts as 0
and 1. Fields that hold no value (a 0 in their shape) are left out. NaN propagates into every
statistic of its dimension.

**Accuracy.** ``min``, ``max``, ``mean`` and ``std`` (population, ``ddof=0``) are exact up to
float64 rounding (integers beyond ``2**53`` are rounded to float64 first): each chunk's mean
and sum of squared deviations are computed in float64 and combined with the parallel formula of
Chan, Golub and LeVeque (no sum of squares, so no cancellation). ``count`` is ``[n]``, the
transitions the field was computed over. The quantiles are those of a uniform random sample,
without replacement, of ``sample_size`` *items* (rows of the field's values viewed as
``[-1, d]``: transitions, or pixels of images), interpolated linearly as :func:`numpy.quantile`
does. A field with at most ``sample_size`` items is sampled whole: its quantiles are exact.
Otherwise the quantile ``q`` reported is the exact quantile of a rank within
``q ± 3 * sqrt(q * (1 - q) / sample_size)`` with probability 99.7%: for the default 10 000,
±0.015 at ``q50``, ±0.009 at ``q10``/``q90``, ±0.003 at ``q01``/``q99``. The sample is drawn
with a fixed seed: the same directory gives the same numbers.

**Memory.** Trajectories are read one at a time (as :func:`.parquet.export_parquet` reads
them) and reduced in chunks of at most :data:`CHUNK_VALUES` values; what is kept is, per field,
a few float64 vectors of ``d`` values and the sample: ``sample_size * d`` float64 values.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..directory import read_directory
from ..schema import ColumnSpec
from ..store import iter_directory_rows
from ..trajectory import Key, key_name
from ..validate import check_int
from .parquet import is_image
from .progress import Progress

#: the quantiles reported: key -> probability
QUANTILES: dict[str, float] = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
#: every statistic of a field, in the order they are reported
STAT_NAMES: tuple[str, ...] = ("min", "max", "mean", "std", "count", *QUANTILES)
#: default number of items sampled per field for the quantiles
DEFAULT_SAMPLE_SIZE = 10_000
#: values of one field converted to float64 at a time
CHUNK_VALUES = 1 << 20
#: images are reported scaled by this factor (``uint8`` -> ``[0, 1]``)
IMAGE_SCALE = 1.0 / 255.0

FieldStats = dict[str, list[float]]
"""One field's statistics: name (:data:`STAT_NAMES`) -> one value per dimension (``count``: one)."""


def dimensions(spec: ColumnSpec) -> int:
    """The dimensions a field is reduced to: the length of the last axis of its per-transition
    shape (1 for a scalar)."""
    return spec.row_shape[-1] if spec.row_shape else 1


@dataclass
class StatsAccumulator:
    """Running statistics of one field: ``[items, d]`` float64 chunks folded in one by one.

    ``StatsAccumulator(d, sample_size, scale)``: ``d`` values per item (the last axis of the
    rows given to :meth:`add`), ``sample_size`` items kept for the quantiles, ``scale`` a factor
    applied to every value (:data:`IMAGE_SCALE` for ``uint8`` images) or ``None``;
    :meth:`result` gives the statistics as :func:`field_stats` reports them."""

    d: int
    sample_size: int
    scale: float | None
    transitions: int = 0
    items: int = 0
    low: np.ndarray = field(init=False)
    high: np.ndarray = field(init=False)
    mean: np.ndarray = field(init=False)
    m2: np.ndarray = field(init=False)  # sum of squared deviations from the mean
    keys: np.ndarray = field(init=False)  # the sample's random keys: the smallest ones seen
    sample: np.ndarray = field(init=False)  # [len(keys), d]

    def __post_init__(self) -> None:
        self.low = np.full(self.d, np.inf)
        self.high = np.full(self.d, -np.inf)
        self.mean = np.zeros(self.d)
        self.m2 = np.zeros(self.d)
        self.keys = np.empty(0)
        self.sample = np.empty((0, self.d))

    def add(self, rows: torch.Tensor, rng: np.random.Generator) -> None:
        """Fold in one trajectory's rows ``[n, *row_shape]``, :data:`CHUNK_VALUES` values at a time."""
        n = int(rows.shape[0])
        self.transitions += n
        step = max(1, CHUNK_VALUES // max(1, math.prod(rows.shape[1:])))
        for start in range(0, n, step):
            x = rows[start : start + step].to(torch.float64).numpy().reshape(-1, self.d)
            self._fold(x * self.scale if self.scale is not None else x, rng)

    def _fold(self, x: np.ndarray, rng: np.random.Generator) -> None:
        """Fold in the items ``[n, d]`` (float64) of one chunk."""
        n = x.shape[0]
        np.minimum(self.low, x.min(axis=0), out=self.low)
        np.maximum(self.high, x.max(axis=0), out=self.high)
        mean = x.mean(axis=0)
        m2 = np.square(x - mean).sum(axis=0)
        total = self.items + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + np.square(delta) * (self.items * n / total)
        self.items = total
        self._sample(x, rng)

    def _sample(self, x: np.ndarray, rng: np.random.Generator) -> None:
        """Keep the ``sample_size`` items of smallest uniform random key (a uniform sample without
        replacement). Only items whose key falls under the largest key kept can enter, so only
        that many (a binomial count, a uniform subset) are drawn."""
        full = len(self.keys) == self.sample_size
        bound = float(self.keys.max()) if full else 1.0
        count = int(rng.binomial(x.shape[0], bound))
        if count == 0:
            return
        chosen = rng.choice(x.shape[0], size=count, replace=False)
        keys = np.concatenate([self.keys, rng.random(count) * bound])
        sample = np.concatenate([self.sample, x[chosen]])
        if len(keys) > self.sample_size:
            keep = np.argpartition(keys, self.sample_size - 1)[: self.sample_size]
            keys, sample = keys[keep], sample[keep]
        self.keys, self.sample = keys, sample

    def result(self) -> FieldStats:
        """The statistics, as plain lists of floats (``count``: a list of one int)."""
        out: FieldStats = {
            "min": self.low.tolist(),
            "max": self.high.tolist(),
            "mean": self.mean.tolist(),
            "std": np.sqrt(self.m2 / self.items).tolist(),
            "count": [self.transitions],
        }
        for name, q in QUANTILES.items():
            out[name] = np.quantile(self.sample, q, axis=0).tolist()
        return out


def field_stats(
    path: str,
    *,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, FieldStats]:
    """Statistics of every field of a buffer directory, per dimension (see the module's
    docstring for the dimensions, the image scaling and the accuracy).

    Args:
        path: the buffer directory (any format this library reads, RLinf's too).
        sample_size: items sampled per field for the quantiles (>= 1); memory holds
            ``sample_size * d`` float64 values per field of ``d`` dimensions.
        seed: seed of the sample (>= 0).
        progress: ``progress(done, total)`` after each trajectory.

    Returns:
        ``{dotted field name: {statistic: [one float per dimension]}}`` in schema order, the
        statistics of :data:`STAT_NAMES` (``count``: ``[transitions]``, an int); empty for an
        empty directory. Plain Python lists, ready for ``json.dumps``.

    Raises:
        BufferNotFoundError, CorruptBufferError, UnsafeFileError: as loading would.
        CorruptTrajectoryError: a trajectory fails its checksum.
        InvalidArgumentError: bad ``sample_size`` or ``seed``.
    """
    sample_size = check_int("sample_size", sample_size, 1)
    seed = check_int("seed", seed, 0)
    contents, schema = read_directory(path)
    rng = np.random.default_rng(seed)
    fields: dict[Key, StatsAccumulator] = {
        key: StatsAccumulator(dimensions(spec), sample_size, IMAGE_SCALE if is_image(spec) else None)
        for key, spec in (schema or {}).items()
        if math.prod(spec.row_shape) > 0
    }
    total = len(contents.records)
    trajectories = iter_directory_rows(contents.path, contents.fmt, contents.records, schema)
    with contextlib.closing(trajectories):
        done = 0  # (not enumerate: it would hold the previous rows while the next are read)
        for _, rows in trajectories:
            for key, acc in fields.items():
                acc.add(rows[key], rng)
            del rows
            done += 1
            if progress is not None:
                progress(done, total)
    return {key_name(key): acc.result() for key, acc in fields.items() if acc.items}


def format_stats(stats: dict[str, FieldStats], max_dims: int = 8) -> str:
    """The table ``rlinf-buffer info --stats`` prints: one line per field and dimension (at most
    ``max_dims`` dimensions per field, then how many more there are), one column per statistic."""
    if not stats:
        return "field statistics: none (no trajectory)"
    names = [stat for stat in STAT_NAMES if stat != "count"]
    count = next(iter(stats.values()))["count"][0]
    width = max(len(name) for name in stats)
    lines = [
        f"field statistics over {count} transitions, per element of the last axis (uint8 images: "
        "per channel, scaled to [0, 1]):",
        f"  {'field':<{width}}  dim" + "".join(f"{name:>11}" for name in names),
    ]
    for name, values in stats.items():
        d = len(values["mean"])
        for i in range(min(d, max_dims)):
            label = name if i == 0 else ""
            lines.append(f"  {label:<{width}}  {i:>3}" + "".join(f"{values[s][i]:>11.5g}" for s in names))
        if d > max_dims:
            lines.append(f"  {'':<{width}}  ... and {d - max_dims} more (--json lists every one)")
    return "\n".join(lines)


__all__ = [
    "DEFAULT_SAMPLE_SIZE",
    "QUANTILES",
    "STAT_NAMES",
    "FieldStats",
    "StatsAccumulator",
    "dimensions",
    "field_stats",
    "format_stats",
]
