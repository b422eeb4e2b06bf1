"""LeRobot datasets: a buffer directory written as one, and one read back into buffers.

**Writing** (:func:`export_lerobot`) makes a LeRobot dataset of codebase version ``v3.0`` (what
LeRobot 0.4 and later write and load) from any buffer directory this library reads, streaming
one trajectory at a time:

* ``meta/info.json``: ``codebase_version``, ``fps``, ``robot_type``, the features (``dtype``,
  ``shape``, ``names``; cameras stored as videos also carry ``info`` with ``video.*`` keys), the
  totals, ``chunks_size``, ``data_files_size_in_mb``, ``video_files_size_in_mb``, the path
  templates ``data_path`` and ``video_path`` and ``splits``;
* ``meta/tasks.parquet`` (the task text and its ``task_index``), ``meta/stats.json`` (per
  feature ``min``, ``max``, ``mean``, ``std``, ``count``, ``q01`` ... ``q99``: images per
  channel in ``[0, 1]``, shaped ``[C, 1, 1]``), ``meta/episodes/chunk-000/file-000.parquet``
  (one row per episode: where its frames and videos are, and its own ``stats/<feature>/<stat>``);
* ``data/chunk-CCC/file-FFF.parquet``: one row per frame, a new file once one holds
  ``data_file_bytes``; ``videos/<camera>/chunk-CCC/file-FFF.mp4`` with ``video=True``: one file
  per camera and episode (file ``episode % chunks_size`` of chunk ``episode // chunks_size``);
* ``meta/rlinf_replay_buffer.json`` (this library's, ``format_version`` 1): which buffer field
  each feature came from, with its dtype and per-step shape, so that an import restores them.

The directory is assembled in a hidden sibling and renamed into place once complete.

**Episodes.** Each trajectory's environments are written one after the other; an environment's
steps are cut into episodes after every step whose ``dones`` is set and at the end of the
trajectory. Trajectories are never joined: RLinf rolls out in chunks, so an episode still
running when a trajectory ends becomes an episode whose last frame has ``next.done`` false,
and its continuation in the next trajectory (if the buffer holds it) a new episode.

**Columns.** ``curr_obs.states`` is ``observation.state``; every image field of ``curr_obs``
(the rule of :func:`.parquet.is_image`) is a camera ``observation.images.<name>``, and a stack of
images ``[N, H, W, C]`` is ``N`` cameras ``observation.images.<name>_<i>``; any other field of
``curr_obs`` is ``observation.<name>``. ``actions`` is ``action``, ``rewards`` ``next.reward``,
``dones`` ``next.done``, ``truncations`` ``next.truncated``; every other field (``terminations``,
``intervene_flags``, ``prev_logprobs``, ``versions``, ``forward_inputs.*``, ...) is
``complementary_info.<dotted name>``. ``next_obs`` is not written (it is the next frame's
observation, except at episode ends), nor are fields holding no value. Fields of one value per
step are scalar features of shape ``[1]``, other fields vectors of their values flattened in C
order; ``bfloat16`` is stored as ``float32``, every other dtype as it is. Cameras are ``image``
features (PNG in Hugging Face ``Image`` cells, as :mod:`.parquet` writes them) or, with
``video=True``, ``video`` features (three-channel cameras only; H.264 through
:mod:`.video`, 4:2:0 chroma when width and height are even, 4:4:4 otherwise).

**Reading** (:func:`read_lerobot`, :func:`load_lerobot`, :func:`buffer_from_lerobot`,
:func:`import_lerobot`) takes datasets of codebase version ``v2.1`` (``meta/episodes.jsonl``,
``meta/tasks.jsonl``, ``data/chunk-CCC/episode_EEEEEE.parquet``,
``videos/chunk-CCC/<camera>/episode_EEEEEE.mp4``) and ``v3.0``, images in the data files or
videos, one episode at a time: every episode becomes one trajectory with ``B = 1``.

* ``observation.state`` becomes ``curr_obs.states``, ``observation.images.<camera>``
  ``curr_obs.<camera>``, ``observation.<name>`` ``curr_obs.<name>``; ``action`` ``actions``;
  ``next.reward`` ``rewards`` (zeros ``float32`` when absent); ``complementary_info.<name>``
  the buffer field ``<name>`` when it is one (``terminations``, ``forward_inputs.x``, ...).
  Other features (strings, ``next.success``, ...) and the bookkeeping columns (``timestamp``,
  ``frame_index``, ``episode_index``, ``index``, ``task_index``) are left out; the result
  lists them. The file ``meta/rlinf_replay_buffer.json``, when present, gives back the exact
  field names, dtypes and shapes of an export.
* ``next_obs`` at step ``t`` is the observation of frame ``t + 1``; the last frame of an episode
  has none, so its ``next_obs`` is its own observation.
* ``dones`` is ``next.done`` (false when absent) and is set on the last frame; ``truncations``
  is ``next.truncated`` (false when absent), also set on the last frame when ``next.done`` is
  not (the episode stops without ending); ``terminations`` is ``complementary_info.terminations``
  if present, else ``dones`` without ``truncations`` (before the last frame's changes).
* Video frames: a video file is taken to show frame ``k`` at ``k / fps`` seconds (constant
  frame rate from 0), so the frame of a row at ``from_timestamp + timestamp`` (``from_timestamp``
  is 0 in ``v2.1``) is frame ``round((from_timestamp + timestamp) * fps)``, decoded in order
  with :func:`.video.read_video`: exact for videos encoded at the dataset's ``fps`` (what
  LeRobot and this exporter write); a file of another rate gives the nearest frame by index.

A round trip ``buffer -> LeRobot -> buffer`` keeps every exported value exactly (videos: up to
the codec's loss), and loses: the grouping into trajectories and environments, ``next_obs``
(rebuilt from the next frame; the last frame's is its own observation, and ``next_obs`` fields
without a ``curr_obs`` counterpart are gone), ``max_episode_length``, ``model_weights_id``,
``model_update_count``, trajectory ids, RLinf's extra rows per epoch (exports are aligned), fields
of size 0, and the last frame of an episode cut at a trajectory end comes back with ``dones`` and
``truncations`` set.

pyarrow and Pillow (the ``tools`` extra) and PyAV for videos (the ``video`` extra) are imported
when needed.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..checkpoint import output_directory, writing
from ..errors import BufferNotFoundError, CorruptBufferError, InvalidArgumentError
from ..fsio import atomic_file, atomic_write, make_dirs, publish_directory, staged_directory
from ..lock import destination_lock
from ..naming import read_json
from ..schema import ColumnSpec, Schema
from ..store import iter_directory_rows
from ..trajectory import STEP_FIELDS, Key, Trajectory, key_name, key_of_name, nest_columns
from ..validate import check_int
from . import video as videos
from .parquet import (
    PNG,
    FieldLayout,
    contiguous_runs,
    field_array,
    hf_value,
    is_image,
    plan_layout,
    require_pillow,
    require_pyarrow,
    stored_dtype,
)
from .progress import Progress
from .stats import DEFAULT_SAMPLE_SIZE, IMAGE_SCALE, STAT_NAMES, StatsAccumulator

__all__ = [
    "CODEBASE_VERSION",
    "MAPPING_FORMAT_VERSION",
    "READ_VERSIONS",
    "LeRobotExportResult",
    "LeRobotImportResult",
    "LeRobotReader",
    "buffer_from_lerobot",
    "export_lerobot",
    "import_lerobot",
    "is_lerobot_dataset",
    "load_lerobot",
    "read_lerobot",
]

#: the codebase version written
CODEBASE_VERSION = "v3.0"
#: the codebase versions read
READ_VERSIONS = ("v2.1", "v3.0")
#: this library's description of an export, inside ``meta/``
MAPPING_FILE = "meta/rlinf_replay_buffer.json"
#: version of that file's layout; import refuses newer ones
MAPPING_FORMAT_VERSION = 1
WRITER = "rlinf-replay-buffer"

INFO_FILE = "meta/info.json"
STATS_FILE = "meta/stats.json"
TASKS_FILE = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE + ".parquet"
#: files per chunk folder, and LeRobot's file size limits (MiB)
CHUNKS_SIZE = 1000
DATA_FILE_MB = 100
VIDEO_FILE_MB = 200
#: v2.1's files
V21_EPISODES = "meta/episodes.jsonl"
V21_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V21_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"

#: LeRobot's bookkeeping columns of every frame, with their dtypes
INDEX_FEATURES: dict[str, str] = {
    "timestamp": "float32",
    "frame_index": "int64",
    "episode_index": "int64",
    "index": "int64",
    "task_index": "int64",
}
IMAGE_NAMES = ["height", "width", "channels"]
STATE = "observation.state"
IMAGES = "observation.images."
COMPLEMENTARY = "complementary_info."
#: buffer fields with a LeRobot name of their own (the rest go under ``complementary_info.``)
NAMED_FIELDS: dict[Key, str] = {
    ("curr_obs", "states"): STATE,
    ("actions",): "action",
    ("rewards",): "next.reward",
    ("dones",): "next.done",
    ("truncations",): "next.truncated",
}
_FIELD_OF_NAME = {name: key for key, name in NAMED_FIELDS.items()}
_EPISODE_ROWS = 1000  # episode metadata rows written at a time
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
_TORCH_DTYPES = {
    "bool": torch.bool,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
    "uint16": torch.int32,  # widened: the buffer stores no unsigned type but uint8
    "uint32": torch.int64,
}


def _write_json(path: str, obj: Any) -> None:
    data = (json.dumps(obj, indent=4) + "\n").encode()
    atomic_write(path, lambda f: f.write(data), sync_dir=False)


def _inside(root: str, relative: str, what: str) -> str:
    """``root/relative``, refused when it leaves ``root`` (a template of a hostile info.json)."""
    path = os.path.realpath(os.path.join(root, relative))
    if os.path.commonpath([path, os.path.realpath(root)]) != os.path.realpath(root):
        raise CorruptBufferError(f"{root}: {what} {relative!r} points outside the dataset")
    return path


# -- the columns of an export -------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One LeRobot feature written from a buffer field.

    Attributes:
        name: the feature name (``observation.state``, ``observation.images.main_images``, ...).
        key: the buffer field; ``spec`` its dtype and per-step shape.
        kind: ``"image"``, ``"video"`` or ``"value"``.
        part: for a stack of images ``[N, H, W, C]``, which one (else ``None``).
    """

    name: str
    key: Key
    spec: ColumnSpec
    kind: str
    part: int | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The feature's shape: ``[H, W, C]`` for a camera, ``[1]`` for one value per step,
        else ``[number of values]``."""
        if self.kind != "value":
            return tuple(self.spec.row_shape[-3:])
        return (max(1, math.prod(self.spec.row_shape)),)

    @property
    def layout(self) -> FieldLayout:
        """How the column is stored in the data files (:mod:`.parquet`'s encodings)."""
        if self.kind != "value":
            return FieldLayout((self.name,), ColumnSpec(torch.uint8, self.shape), PNG)
        row = () if self.shape == (1,) else self.shape
        return plan_layout(Schema({(self.name,): ColumnSpec(self.spec.dtype, row)}), [])[0]

    @property
    def stats_dims(self) -> int:
        """Values per item of its statistics (channels for a camera)."""
        return self.shape[-1]

    def rows(self, rows: torch.Tensor) -> torch.Tensor:
        """The column's values ``[N, *shape]`` (``[N]`` for a scalar) from the field's rows."""
        if self.part is not None:
            rows = rows[:, self.part]
        n = int(rows.shape[0])
        return rows.reshape(n) if self.shape == (1,) else rows.reshape(n, *self.shape)

    def feature(self) -> dict[str, Any]:
        """The feature's entry in ``info.json`` (without a video's ``info``)."""
        dtype = self.kind if self.kind != "value" else stored_dtype(self.spec.dtype)
        names = IMAGE_NAMES if self.kind != "value" else None
        return {"dtype": dtype, "shape": list(self.shape), "names": names}

    def mapping(self) -> dict[str, Any]:
        """The column's entry in :data:`MAPPING_FILE`."""
        return {
            "field": key_name(self.key),
            "dtype": str(self.spec.dtype).removeprefix("torch."),
            "shape": list(self.spec.row_shape),
            "part": self.part,
        }


def plan_columns(schema: Schema, video: bool = False) -> list[Column]:
    """The LeRobot features an export writes for a buffer of ``schema`` (see the module's
    docstring for the names); ``next_obs`` and fields of size 0 are left out.

    Raises:
        InvalidArgumentError: two fields would get the same feature name.
    """
    columns: list[Column] = []
    for key, spec in schema.items():
        if key[0] == "next_obs" or math.prod(spec.row_shape) == 0:
            continue
        shape = spec.row_shape
        stack = spec.dtype == torch.uint8 and len(shape) == 4 and is_image(ColumnSpec(spec.dtype, shape[1:]))
        if key[0] == "curr_obs" and (is_image(spec) or stack):
            kind = "video" if video and shape[-1] == 3 else "image"
            if stack:
                columns += [Column(f"{IMAGES}{key[1]}_{i}", key, spec, kind, part=i) for i in range(shape[0])]
            else:
                columns.append(Column(IMAGES + key[1], key, spec, kind))
            continue
        name = NAMED_FIELDS.get(key)
        if name is None:
            name = f"observation.{key[1]}" if key[0] == "curr_obs" else COMPLEMENTARY + key_name(key)
        columns.append(Column(name, key, spec, "value"))
    seen: dict[str, Key] = {}
    for c in columns:
        other = seen.setdefault(c.name, c.key)
        if other != c.key:
            raise InvalidArgumentError(
                f"fields {key_name(other)!r} and {key_name(c.key)!r} would both be the LeRobot feature "
                f"{c.name!r}; rename one of them"
            )
    return columns


def episode_spans(dones: torch.Tensor | None, num_steps: int, num_envs: int) -> list[tuple[int, int, int]]:
    """The episodes of one trajectory: ``(env, first step, last step + 1)`` in the order they are
    written (env by env, then in time), cut after every step whose ``dones`` is set
    (``dones`` rows ``[T * B, ...]``, any value of a row counts) and at the trajectory's end."""
    if dones is None:
        ended = torch.zeros(num_steps, num_envs, dtype=torch.bool)
    else:
        ended = dones.reshape(num_steps, num_envs, -1).ne(0).any(dim=2)
    spans = []
    for env in range(num_envs):
        start = 0
        for end in torch.nonzero(ended[:, env]).flatten().tolist() + [num_steps - 1]:
            if end >= start:
                spans.append((env, start, end + 1))
                start = end + 1
    return spans


# -- writing files ------------------------------------------------------------------------------


class _PartedParquet:
    """Parquet files ``chunk-CCC/file-FFF`` under one template, a new file once the current one
    holds ``limit`` bytes; each written atomically (its directory is a staging directory)."""

    def __init__(self, pq: Any, root: str, template: str, schema: Any, limit: int) -> None:
        self.pq, self.root, self.template, self.schema, self.limit = pq, root, template, schema, limit
        self.chunk, self.file = 0, -1
        self.stack: contextlib.ExitStack | None = None
        self.writer: Any = None
        self.sink: Any = None
        self.files = 0

    def place(self) -> tuple[int, int]:
        """``(chunk_index, file_index)`` of the file the next :meth:`write` goes to."""
        if self.writer is not None and self.sink.tell() >= self.limit:
            self.close()
        if self.writer is None:
            self.file += 1
            if self.file == CHUNKS_SIZE:
                self.chunk, self.file = self.chunk + 1, 0
            path = os.path.join(self.root, self.template.format(chunk_index=self.chunk, file_index=self.file))
            make_dirs(os.path.dirname(path))
            self.stack = contextlib.ExitStack()
            self.sink = self.stack.enter_context(atomic_file(path, sync_dir=False))
            self.writer = self.pq.ParquetWriter(self.sink, self.schema, compression="snappy")
            self.files += 1
        return self.chunk, self.file

    def write(self, table: Any) -> tuple[int, int]:
        """Write ``table`` (one row group) to the current file; return where it went."""
        where = self.place()
        self.writer.write_table(table, row_group_size=max(1, table.num_rows))
        return where

    def close(self) -> None:
        """Finish the current file (renamed into place)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            assert self.stack is not None
            self.stack.close()

    def abort(self) -> None:
        """Stop writing after a failure (what was written goes with the staging directory)."""
        with contextlib.suppress(Exception):
            self.close()
        self.writer = self.stack = None


def _hf_metadata(layouts: list[FieldLayout]) -> dict[bytes, bytes]:
    """The ``huggingface`` key of a data file: its columns as Hugging Face features."""
    features = {f.name: f.hf_feature() for f in layouts}
    features.update((name, hf_value(dtype)) for name, dtype in INDEX_FEATURES.items())
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def _tasks_table(pa: Any, tasks: list[str]) -> Any:
    """``meta/tasks.parquet``: ``task_index`` with the task text as the pandas index (LeRobot
    reads the file with pandas and looks tasks up by that index)."""
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
             "numpy_type": "int64", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
             "metadata": None},
        ],
    }  # fmt: skip
    schema = pa.schema(
        [("task_index", pa.int64()), ("task", pa.string())],
        metadata={b"pandas": json.dumps(pandas_meta).encode()},
    )
    return pa.table([pa.array(range(len(tasks)), pa.int64()), pa.array(tasks, pa.string())], schema=schema)


def _stats_json(stats: dict[str, list[float]], image: bool) -> dict[str, Any]:
    """One feature's statistics as LeRobot stores them: images ``[C, 1, 1]``."""
    if not image:
        return stats
    return {k: v if k == "count" else [[[x]] for x in v] for k, v in stats.items()}


def _stats_type(pa: Any, image: bool, count: bool) -> Any:
    if count:
        return pa.list_(pa.int64())
    inner = pa.list_(pa.float64())
    return pa.list_(pa.list_(inner)) if image else inner


@dataclass
class _Accumulators:
    """Per-feature statistics of one episode or of the whole dataset."""

    sample_size: int
    dims: dict[str, tuple[int, bool]]  # feature -> (values per item, is an image)
    acc: dict[str, StatsAccumulator] = field(init=False)

    def __post_init__(self) -> None:
        self.acc = {
            name: StatsAccumulator(d, self.sample_size, IMAGE_SCALE if image else None)
            for name, (d, image) in self.dims.items()
        }

    def add(self, values: dict[str, torch.Tensor], rng: np.random.Generator) -> None:
        for name, acc in self.acc.items():
            acc.add(values[name], rng)

    def result(self) -> dict[str, dict[str, Any]]:
        return {name: _stats_json(acc.result(), self.dims[name][1]) for name, acc in self.acc.items()}


@dataclass
class LeRobotExportResult:
    """What :func:`export_lerobot` wrote.

    Attributes:
        source_path: the buffer directory read; ``source_format`` its ``trajectory_format``.
        out_path: the dataset directory written.
        trajectories: trajectories read; ``transitions``: frames written (one per transition).
        episodes: episodes written.
        bytes: size of every file of the dataset.
        image_fields: features stored as images in the data files; ``video_fields`` as videos.
        data_files: data files written.
    """

    source_path: str
    out_path: str
    trajectories: int
    transitions: int
    episodes: int
    bytes: int
    image_fields: list[str] = field(default_factory=list)
    video_fields: list[str] = field(default_factory=list)
    data_files: int = 0
    source_format: str = ""


def is_lerobot_dataset(path: str) -> bool:
    """Whether ``path`` holds a LeRobot dataset (it has ``meta/info.json``)."""
    return os.path.isfile(os.path.join(path, INFO_FILE))


def _tree_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


class _Exporter:
    """The state of one export: open files, counters, statistics."""

    def __init__(
        self, pa: Any, pq: Any, staging: str, columns: list[Column], fps: int, options: dict[str, Any]
    ) -> None:
        self.pa, self.staging, self.columns, self.fps, self.options = pa, staging, columns, fps, options
        self.stored = [c for c in columns if c.kind != "video"]
        self.cameras = [c for c in columns if c.kind == "video"]
        layouts = [c.layout for c in self.stored]
        data_schema = pa.schema(
            [pa.field(f.name, f.arrow_type(pa)) for f in layouts]
            + [pa.field(n, pa.from_numpy_dtype(np.dtype(d))) for n, d in INDEX_FEATURES.items()],
            metadata=_hf_metadata(layouts),
        )
        self.data = _PartedParquet(pq, staging, DATA_PATH, data_schema, options["data_file_bytes"])
        dims = {c.name: (c.stats_dims, c.kind != "value") for c in columns}
        dims.update((name, (1, False)) for name in INDEX_FEATURES)
        self.dims = dims
        self.totals = _Accumulators(options["sample_size"], dims)
        self.episodes = _PartedParquet(pq, staging, EPISODES_PATH, self._episode_schema(), DATA_FILE_MB << 20)
        self.pending: list[dict[str, Any]] = []
        self.rng = np.random.default_rng(0)
        self.frames = 0
        self.count = 0
        self.video_info: dict[str, dict[str, Any]] = {}

    def _episode_schema(self) -> Any:
        pa = self.pa
        fields = [
            ("episode_index", pa.int64()),
            ("tasks", pa.list_(pa.string())),
            ("length", pa.int64()),
            ("data/chunk_index", pa.int64()),
            ("data/file_index", pa.int64()),
            ("dataset_from_index", pa.int64()),
            ("dataset_to_index", pa.int64()),
        ]
        for c in self.cameras:
            prefix = f"videos/{c.name}/"
            fields += [(prefix + "chunk_index", pa.int64()), (prefix + "file_index", pa.int64())]
            fields += [(prefix + "from_timestamp", pa.float64()), (prefix + "to_timestamp", pa.float64())]
        for name, (_, image) in self.dims.items():
            fields += [(f"stats/{name}/{s}", _stats_type(pa, image, s == "count")) for s in STAT_NAMES]
        fields += [("meta/episodes/chunk_index", pa.int64()), ("meta/episodes/file_index", pa.int64())]
        return pa.schema(fields)

    def episode(self, rows: dict[Key, torch.Tensor], index: torch.Tensor, task: str) -> None:
        """Write one episode: the rows ``index`` of a trajectory's flat rows."""
        pa, n = self.pa, int(index.numel())
        values = {c.name: c.rows(rows[c.key].index_select(0, index)) for c in self.columns}
        frame = torch.arange(n, dtype=torch.int64)
        values.update(
            timestamp=(frame.to(torch.float64) / self.fps).to(torch.float32),
            frame_index=frame,
            episode_index=torch.full((n,), self.count, dtype=torch.int64),
            index=frame + self.frames,
            task_index=torch.zeros(n, dtype=torch.int64),
        )
        level = self.options["png_level"]
        arrays = [field_array(pa, c.layout, values[c.name], level) for c in self.stored]
        arrays += [pa.array(values[name].numpy()) for name in INDEX_FEATURES]
        chunk, file = self.data.write(pa.Table.from_arrays(arrays, schema=self.data.schema))
        del arrays
        meta: dict[str, Any] = {
            "episode_index": self.count,
            "tasks": [task],
            "length": n,
            "data/chunk_index": chunk,
            "data/file_index": file,
            "dataset_from_index": self.frames,
            "dataset_to_index": self.frames + n,
        }
        for c in self.cameras:
            meta.update(self._video(c, values[c.name]))
        stats = _Accumulators(self.options["sample_size"], self.dims)
        stats.add(values, self.rng)
        self.totals.add(values, self.rng)
        for name, feature_stats in stats.result().items():
            meta.update((f"stats/{name}/{s}", v) for s, v in feature_stats.items())
        self.pending.append(meta)
        if len(self.pending) >= _EPISODE_ROWS:
            self.flush_episodes()
        self.frames += n
        self.count += 1

    def _video(self, c: Column, frames: torch.Tensor) -> dict[str, Any]:
        """Encode one camera of the episode; its ``videos/...`` metadata."""
        chunk, file = divmod(self.count, CHUNKS_SIZE)
        relative = VIDEO_PATH.format(video_key=c.name, chunk_index=chunk, file_index=file)
        path = os.path.join(self.staging, relative)
        h, w = c.shape[:2]
        pix_fmt = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"
        if self.options["video_codec"] not in (None, "libx264"):
            pix_fmt = None
        videos.write_video(
            (f.numpy() for f in frames),
            path,
            self.fps,
            codec=self.options["video_codec"],
            pix_fmt=pix_fmt,
            crf=self.options["crf"],
        )
        if c.name not in self.video_info:
            self.video_info[c.name] = videos.video_info(path)
        prefix = f"videos/{c.name}/"
        return {
            prefix + "chunk_index": chunk,
            prefix + "file_index": file,
            prefix + "from_timestamp": 0.0,
            prefix + "to_timestamp": int(frames.shape[0]) / self.fps,
        }

    def flush_episodes(self) -> None:
        if self.pending:
            chunk, file = self.episodes.place()
            for meta in self.pending:
                meta["meta/episodes/chunk_index"], meta["meta/episodes/file_index"] = chunk, file
            self.episodes.write(self.pa.Table.from_pylist(self.pending, schema=self.episodes.schema))
            self.pending = []

    def features(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for c in self.columns:
            out[c.name] = c.feature()
            info = self.video_info.get(c.name)
            if info is not None:
                out[c.name]["info"] = {
                    "video.height": info["height"],
                    "video.width": info["width"],
                    "video.codec": info["codec"],
                    "video.pix_fmt": info["pix_fmt"],
                    "video.fps": self.fps,
                    "video.channels": info["channels"],
                    "has_audio": info["has_audio"],
                    "is_depth_map": False,
                }
        out.update((name, {"dtype": d, "shape": [1], "names": None}) for name, d in INDEX_FEATURES.items())
        return out

    def close(self) -> None:
        self.flush_episodes()
        self.data.close()
        self.episodes.close()

    def abort(self) -> None:
        self.data.abort()
        self.episodes.abort()


def export_lerobot(
    source_path: str,
    out_path: str,
    *,
    fps: int,
    task: str,
    video: bool = False,
    robot_type: str | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
    png_compress_level: int = 1,
    video_codec: str | None = None,
    crf: int | None = None,
    data_file_bytes: int = DATA_FILE_MB << 20,
    stats_sample_size: int = DEFAULT_SAMPLE_SIZE,
) -> LeRobotExportResult:
    """Write a buffer directory as a LeRobot dataset (codebase version ``v3.0``) that LeRobot's
    ``LeRobotDataset(repo_id, root=out_path)`` loads offline.

    The layout, the episode rule and the column names are in the module's docstring. Memory
    holds one trajectory's mapped rows, one episode's encoded frames and the statistics (per
    feature ``stats_sample_size`` items, twice), whatever the size of the buffer.

    Args:
        source_path: the buffer directory (any format this library reads, RLinf's too).
        out_path: the dataset directory to create (missing or empty; see ``overwrite``).
        fps: frames per second of the recording (an int >= 1, as LeRobot keeps it):
            ``timestamp`` is ``frame_index / fps`` seconds.
        task: the task description every episode gets (``task_index`` 0).
        video: store three-channel cameras as MP4 videos instead of PNG images.
        robot_type: ``robot_type`` of ``info.json`` (``None``: null).
        progress: ``progress(done, total)`` after each trajectory.
        overwrite: ``out_path`` may also be a LeRobot dataset directory, replaced atomically once
            the new one is complete (anything else there is refused).
        png_compress_level: zlib level of the PNG encoder, 0-9 (lossless always).
        video_codec: an FFmpeg encoder for the videos (``None``: ``libx264``).
        crf: the video encoder's constant rate factor (``None``: its default).
        data_file_bytes: a data file is closed, and the next one begun, once it holds this many
            bytes (LeRobot's ``data_files_size_in_mb``, 100 MiB).
        stats_sample_size: items sampled per feature for the quantiles of ``stats.json`` and of
            each episode (:mod:`.stats`; exact below that many items).

    Returns:
        A :class:`LeRobotExportResult`.

    Raises:
        BufferNotFoundError, CorruptBufferError: the source is missing or damaged (nothing is
            left at ``out_path``).
        BufferDirectoryError: ``out_path`` exists and may not be replaced.
        InvalidArgumentError: bad options, or an empty buffer.
        MissingDependencyError: pyarrow (or, with ``video``, PyAV) is not installed.
    """
    fps = check_int("fps", fps, 1)
    if not isinstance(task, str) or not task.strip():
        raise InvalidArgumentError(f"task must be a non-empty string (the task description), got {task!r}")
    if robot_type is not None and not isinstance(robot_type, str):
        raise InvalidArgumentError(f"robot_type must be a string or None, got {robot_type!r}")
    if isinstance(png_compress_level, bool) or png_compress_level not in range(10):
        raise InvalidArgumentError(f"png_compress_level must be an int in 0..9, got {png_compress_level!r}")
    data_file_bytes = check_int("data_file_bytes", data_file_bytes, 1)
    stats_sample_size = check_int("stats_sample_size", stats_sample_size, 1)
    pa, pq = require_pyarrow("LeRobot datasets")
    from ..directory import read_directory

    contents, schema = read_directory(source_path)
    records = contents.records
    if not records or schema is None:
        raise InvalidArgumentError(f"{contents.path}: holds no trajectory; there is nothing to export")
    columns = plan_columns(schema, video=bool(video))
    if not columns:
        raise InvalidArgumentError(f"{contents.path}: has no field LeRobot can hold")
    out = output_directory(
        out_path,
        replace_buffer=overwrite,
        argument="out_path",
        what="LeRobot dataset",
        recognize=is_lerobot_dataset,
    )
    options = {
        "data_file_bytes": data_file_bytes,
        "sample_size": stats_sample_size,
        "png_level": png_compress_level,
        "video_codec": video_codec,
        "crf": crf,
    }
    dones = ("dones",) if ("dones",) in schema else None
    transitions = 0
    rows_of = contextlib.closing(iter_directory_rows(contents.path, contents.fmt, records, schema))
    with writing(out, "the LeRobot dataset"), staged_directory(out) as staging, rows_of as trajectories:
        exporter = _Exporter(pa, pq, staging, columns, fps, options)
        try:
            done = 0
            for record, rows in trajectories:
                B = record.num_envs
                for env, start, stop in episode_spans(rows[dones] if dones else None, record.num_steps, B):
                    exporter.episode(rows, torch.arange(start, stop) * B + env, task)
                transitions += record.num_transitions
                del rows
                done += 1
                if progress is not None:
                    progress(done, len(records))
            exporter.close()
        except BaseException:
            exporter.abort()
            raise
        with atomic_file(os.path.join(staging, TASKS_FILE), sync_dir=False) as f:
            pq.write_table(_tasks_table(pa, [task]), f)
        _write_json(os.path.join(staging, STATS_FILE), exporter.totals.result())
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": robot_type,
            "total_episodes": exporter.count,
            "total_frames": exporter.frames,
            "total_tasks": 1,
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": max(1, math.ceil(data_file_bytes / (1 << 20))),
            "video_files_size_in_mb": VIDEO_FILE_MB,
            "fps": fps,
            "splits": {"train": f"0:{exporter.count}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if exporter.cameras else None,
            "features": exporter.features(),
        }
        _write_json(os.path.join(staging, INFO_FILE), info)
        _write_json(
            os.path.join(staging, MAPPING_FILE),
            {
                "format_version": MAPPING_FORMAT_VERSION,
                "writer": WRITER,
                "source": {
                    "trajectory_format": contents.fmt,
                    "trajectories": len(records),
                    "transitions": transitions,
                },
                "episodes": "cut after each step with dones set and at each trajectory end",
                "features": {c.name: c.mapping() for c in columns},
            },
        )
        publish_directory(staging, out)
    return LeRobotExportResult(
        source_path=contents.path,
        out_path=out,
        trajectories=len(records),
        transitions=transitions,
        episodes=exporter.count,
        bytes=_tree_bytes(out),
        image_fields=[c.name for c in columns if c.kind == "image"],
        video_fields=[c.name for c in columns if c.kind == "video"],
        data_files=exporter.data.files,
        source_format=contents.fmt,
    )


# -- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where one feature of a LeRobot dataset goes in a trajectory.

    Attributes:
        name: the feature; ``key`` the buffer field; ``kind``: ``"image"``, ``"video"`` or
            ``"value"``; ``dtype`` the tensor dtype; ``shape`` the per-step shape of the
            field (for a part of a stack of images, of the whole stack); ``part`` its index.
    """

    name: str
    key: Key
    kind: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    part: int | None = None


@dataclass(frozen=True)
class _Episode:
    index: int
    length: int
    data: str  # data file
    videos: dict[str, tuple[str, float]]  # feature -> (video file, from_timestamp)


def _default_key(name: str) -> Key | None:
    """The buffer field a feature goes to without this library's mapping (``None``: none)."""
    if name in _FIELD_OF_NAME:
        return _FIELD_OF_NAME[name]
    if name.startswith(IMAGES) and len(name) > len(IMAGES):
        return ("curr_obs", name[len(IMAGES) :])
    if name.startswith("observation.") and len(name) > len("observation."):
        return ("curr_obs", name[len("observation.") :])
    if name.startswith(COMPLEMENTARY):
        key = key_of_name(name[len(COMPLEMENTARY) :])
        if key is not None and ((len(key) == 1 and key[0] in STEP_FIELDS) or key[0] == "forward_inputs"):
            return key
    return None


def _check_key(key: Key) -> bool:
    sub = key[1] if len(key) == 2 else ""
    return len(key) == 1 or (bool(sub) and "/" not in sub and not sub.startswith("."))


class LeRobotReader:
    """A LeRobot dataset directory (codebase version ``v2.1`` or ``v3.0``) read one episode at a
    time: :meth:`trajectories` yields each as a :class:`Trajectory` with ``B = 1``.

    Attributes:
        path: the dataset directory; ``version`` its codebase version; ``fps``; ``features``
            the features of ``info.json``; ``sources`` where each feature goes; ``skipped`` the
            features left out (bookkeeping, strings, names with no buffer field); ``episodes``
            the number of episodes; ``frames`` of frames.

    Raises:
        BufferNotFoundError: no such directory.
        InvalidArgumentError: not a LeRobot dataset (no ``meta/info.json``), or a codebase
            version other than those of :data:`READ_VERSIONS`.
        CorruptBufferError: malformed metadata.
        MissingDependencyError: pyarrow is not installed.
    """

    def __init__(self, dataset_path: str, batch_rows: int = 1024) -> None:
        self.batch_rows = check_int("batch_rows", batch_rows, 1)
        if not isinstance(dataset_path, str | os.PathLike) or not os.fspath(dataset_path):
            raise InvalidArgumentError(f"dataset_path must be a directory path, got {dataset_path!r}")
        path = os.path.abspath(os.fspath(dataset_path))
        if not os.path.isdir(path):
            raise BufferNotFoundError(f"{path}: no such directory (give the LeRobot dataset's root)")
        self.path = path
        info_path = os.path.join(path, INFO_FILE)
        if not os.path.isfile(info_path):
            raise InvalidArgumentError(
                f"{path}: is not a LeRobot dataset: {INFO_FILE} is missing (give the directory that "
                "holds meta/, data/ and videos/)"
            )
        info = read_json(info_path, INFO_FILE)
        if not isinstance(info, dict):
            raise CorruptBufferError(f"{info_path}: is not a JSON object")
        self.version = info.get("codebase_version")
        if self.version not in READ_VERSIONS:
            raise InvalidArgumentError(
                f"{info_path}: codebase_version {self.version!r} is not supported; this library reads "
                f"LeRobot datasets of {' and '.join(READ_VERSIONS)} (convert others with LeRobot's "
                "conversion scripts)"
            )
        fps = info.get("fps")
        features = info.get("features")
        if isinstance(fps, bool) or not isinstance(fps, int | float) or fps <= 0:
            raise CorruptBufferError(f"{info_path}: fps is {fps!r}, expected a positive number")
        if not isinstance(features, dict) or not all(isinstance(f, dict) for f in features.values()):
            raise CorruptBufferError(f"{info_path}: features is not an object of objects")
        self.fps = float(fps)
        self.features: dict[str, dict[str, Any]] = features
        self.info = info
        self.chunks_size = info.get("chunks_size", CHUNKS_SIZE)
        if (
            isinstance(self.chunks_size, bool)
            or not isinstance(self.chunks_size, int)
            or self.chunks_size < 1
        ):
            raise CorruptBufferError(
                f"{info_path}: chunks_size is {self.chunks_size!r}, expected an int >= 1"
            )
        self.pa, self.pq = require_pyarrow("LeRobot datasets")
        self.sources, self.skipped = self._plan(self._mapping())
        self._episodes = self._read_episodes()
        self.episodes = len(self._episodes)
        self.frames = sum(e.length for e in self._episodes)

    # -- metadata -------------------------------------------------------------------------------

    def _mapping(self) -> dict[str, Any]:
        """The features of this library's :data:`MAPPING_FILE`, if the dataset has one."""
        path = os.path.join(self.path, MAPPING_FILE)
        if not os.path.isfile(path):
            return {}
        meta = read_json(path, MAPPING_FILE)
        version = meta.get("format_version") if isinstance(meta, dict) else None
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise CorruptBufferError(f"{path}: format_version is {version!r}, expected an int >= 1")
        if version > MAPPING_FORMAT_VERSION:
            raise CorruptBufferError(
                f"{path}: format_version {version} is newer than this library reads "
                f"({MAPPING_FORMAT_VERSION}); upgrade the library"
            )
        features = meta.get("features")
        if not isinstance(features, dict):
            raise CorruptBufferError(f"{path}: features is not an object")
        return features

    def _plan(self, mapping: dict[str, Any]) -> tuple[list[Source], list[str]]:
        sources: list[Source] = []
        skipped: list[str] = []
        for name, feature in self.features.items():
            kind = feature.get("dtype")
            shape = feature.get("shape")
            if name in INDEX_FEATURES:
                continue
            if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise CorruptBufferError(f"{self.path}: feature {name!r} has shape {shape!r}")
            entry = mapping.get(name)
            if isinstance(entry, dict):
                key = key_of_name(str(entry.get("field")))
                dtype = _TORCH_DTYPES.get(str(entry.get("dtype")))
                row = entry.get("shape")
                part = entry.get("part")
                good_row = isinstance(row, list) and all(isinstance(d, int) and d >= 0 for d in row)
                good_part = part is None or (
                    good_row and len(row) == 4 and isinstance(part, int) and 0 <= part < row[0]
                )
                if key is None or not _check_key(key) or dtype is None or not good_row or not good_part:
                    raise CorruptBufferError(
                        f"{self.path}: {MAPPING_FILE} has a malformed entry for {name!r}"
                    )
                sources.append(Source(name, key, _kind(kind), dtype, tuple(row), part))
                continue
            key = _default_key(name)
            if kind in ("image", "video"):
                if key is None or key[0] != "curr_obs" or len(shape) != 3:
                    skipped.append(name)
                    continue
                sources.append(Source(name, key, kind, torch.uint8, _hwc(feature)))
                continue
            dtype = _TORCH_DTYPES.get(str(kind))
            if key is None or dtype is None or not _check_key(key):
                skipped.append(name)
                continue
            sources.append(Source(name, key, "value", dtype, tuple(shape)))
        keys: dict[tuple[Key, int | None], str] = {}
        for s in sources:
            other = keys.setdefault((s.key, s.part), s.name)
            if other != s.name:
                raise CorruptBufferError(
                    f"{self.path}: features {other!r} and {s.name!r} would both be the field "
                    f"{key_name(s.key)!r}"
                )
        return sources, skipped

    def _read_episodes(self) -> list[_Episode]:
        """Every episode's length and files, in episode order."""
        video_keys = [s.name for s in self.sources if s.kind == "video"]
        if self.version == "v2.1":
            return self._read_v21_episodes(video_keys)
        pq = self.pq
        folder = os.path.join(self.path, EPISODES_DIR)
        files = sorted(
            os.path.join(root, f)
            for root, _, names in os.walk(folder)
            for f in names
            if f.endswith(".parquet")
        )
        data_path = self.info.get("data_path", DATA_PATH)
        video_path = self.info.get("video_path") or VIDEO_PATH
        wanted = ["episode_index", "length", "data/chunk_index", "data/file_index"]
        for key in video_keys:
            wanted += [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")]
        episodes = []
        for path in files:
            try:
                table = pq.read_table(path, columns=wanted)
            except (self.pa.ArrowException, KeyError) as exc:
                raise CorruptBufferError(
                    f"{path}: cannot read the episodes' columns {wanted} ({exc})"
                ) from None
            rows = table.to_pydict()
            for i, index in enumerate(rows["episode_index"]):
                data = _template(data_path, self.path, chunk_index=rows["data/chunk_index"][i],
                                 file_index=rows["data/file_index"][i])  # fmt: skip
                vids = {
                    key: (
                        _template(
                            video_path,
                            self.path,
                            video_key=key,
                            chunk_index=rows[f"videos/{key}/chunk_index"][i],
                            file_index=rows[f"videos/{key}/file_index"][i],
                        ),
                        float(rows[f"videos/{key}/from_timestamp"][i]),
                    )
                    for key in video_keys
                }
                episodes.append(_Episode(int(index), int(rows["length"][i]), data, vids))
        if not episodes:
            raise CorruptBufferError(f"{self.path}: {EPISODES_DIR}/ lists no episode")
        return sorted(episodes, key=lambda e: e.index)

    def _read_v21_episodes(self, video_keys: list[str]) -> list[_Episode]:
        path = os.path.join(self.path, V21_EPISODES)
        if not os.path.isfile(path):
            raise CorruptBufferError(f"{self.path}: {V21_EPISODES} is missing")
        data_path = self.info.get("data_path", V21_DATA_PATH)
        video_path = self.info.get("video_path") or V21_VIDEO_PATH
        episodes = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    index, length = int(entry["episode_index"]), int(entry["length"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise CorruptBufferError(f"{path}: line {number} is not an episode ({exc})") from None
                chunk = index // self.chunks_size
                data = _template(data_path, self.path, episode_chunk=chunk, episode_index=index)
                vids = {
                    key: (
                        _template(
                            video_path, self.path, episode_chunk=chunk, video_key=key, episode_index=index
                        ),
                        0.0,
                    )
                    for key in video_keys
                }
                episodes.append(_Episode(index, length, data, vids))
        if not episodes:
            raise CorruptBufferError(f"{path}: lists no episode")
        return sorted(episodes, key=lambda e: e.index)

    # -- episodes -------------------------------------------------------------------------------

    def trajectories(self, progress: Progress | None = None) -> Iterator[Trajectory]:
        """Each episode as a trajectory ``[length, 1, ...]``, in episode order.

        Raises:
            CorruptBufferError: a data or video file is missing or damaged, or an episode's rows
                disagree with the metadata.
        """
        by_index = {e.index: e for e in self._episodes}
        cursors: dict[str, _VideoCursor] = {}
        seen: set[int] = set()
        try:
            for path in dict.fromkeys(e.data for e in self._episodes):
                for index, table in self._runs(path):
                    episode = by_index.get(index)
                    if episode is None or index in seen:
                        what = "twice" if index in seen else f"but {EPISODES_DIR} does not list it"
                        raise CorruptBufferError(f"{path}: holds rows of episode {index} {what}")
                    seen.add(index)
                    yield self._trajectory(episode, table, cursors)
                    del table
                    if progress is not None:
                        progress(len(seen), self.episodes)
        finally:
            for cursor in cursors.values():
                cursor.close()
        missing = sorted(set(by_index) - seen)
        if missing:
            raise CorruptBufferError(f"{self.path}: episode {missing[0]} is listed but has no rows in data/")

    def _runs(self, path: str) -> Iterator[tuple[int, Any]]:
        pa, pq = self.pa, self.pq
        if not os.path.isfile(path):
            raise CorruptBufferError(f"{path}: the data file is missing")
        try:
            pf = pq.ParquetFile(path)
            yield from contiguous_runs(pa, pf, path, self.batch_rows, "episode_index", "episode", "LeRobot")
        except pa.ArrowException as exc:
            raise CorruptBufferError(f"{path}: cannot be read ({exc})") from None

    def _trajectory(self, episode: _Episode, table: Any, cursors: dict[str, _VideoCursor]) -> Trajectory:
        pa = self.pa
        where = f"{self.path}: episode {episode.index}: "
        n = table.num_rows
        if n != episode.length:
            raise CorruptBufferError(f"{where}has {n} rows but its metadata says length {episode.length}")
        if "frame_index" in table.column_names:
            order = table.column("frame_index").to_numpy()
            if not np.array_equal(order, np.arange(n)):
                ranks = np.argsort(order, kind="stable")
                if not np.array_equal(order[ranks], np.arange(n)):
                    raise CorruptBufferError(f"{where}frame_index is not 0 .. {n - 1}")
                table = table.take(pa.array(ranks))
        times = None
        if any(s.kind == "video" for s in self.sources):
            if "timestamp" not in table.column_names:
                raise CorruptBufferError(f"{where}has no timestamp column to find its video frames")
            times = table.column("timestamp").to_numpy(zero_copy_only=False).astype(np.float64)
        values: dict[Source, torch.Tensor] = {}
        for s in self.sources:
            if s.kind == "video":
                file, start = episode.videos[s.name]
                indices = np.rint((start + times) * self.fps).astype(np.int64)
                cursor = cursors.setdefault(s.name, _VideoCursor())
                frames = cursor.take(file, indices, where + s.name + ": ")
                values[s] = torch.from_numpy(_crop(frames, self.features[s.name]))
            else:
                if s.name not in table.column_names:
                    raise CorruptBufferError(f"{where}the feature {s.name!r} has no column")
                values[s] = self._column(s, table.column(s.name), n, where)
        return _assemble(self.sources, values, n, where)

    def _column(self, s: Source, column: Any, n: int, where: str) -> torch.Tensor:
        pa = self.pa
        array = column.combine_chunks()
        if array.null_count:
            raise CorruptBufferError(f"{where}{s.name} has null values")
        if s.kind == "image":
            return torch.from_numpy(self._images(s, array, where))
        while (
            pa.types.is_list(array.type)
            or pa.types.is_large_list(array.type)
            or pa.types.is_fixed_size_list(array.type)
        ):
            array = array.flatten()
            if array.null_count:
                raise CorruptBufferError(f"{where}{s.name} has null values")
        data = np.asarray(array.to_numpy(zero_copy_only=False))
        shape = s.shape if s.part is None else s.shape[1:]
        if data.size != n * math.prod(shape):
            raise CorruptBufferError(
                f"{where}{s.name} holds {data.size} values, expected {n} frames of shape {list(shape)}"
            )
        tensor = torch.from_numpy(np.ascontiguousarray(data).reshape(n, *shape).copy())
        return tensor.to(s.dtype) if tensor.dtype != s.dtype else tensor

    def _images(self, s: Source, array: Any, where: str) -> np.ndarray:
        """Decode an ``Image`` column (PNG, JPEG, ... bytes; a path when there are none)."""
        Image = require_pillow("decoding LeRobot image columns")
        if self.pa.types.is_struct(array.type):
            data = array.field("bytes").to_pylist()
            paths = array.field("path").to_pylist()
        else:
            data, paths = array.to_pylist(), [None] * len(array)
        h, w, c = s.shape[-3:]
        out = np.empty((len(data), h, w, c), dtype=np.uint8)
        for i, (blob, path) in enumerate(zip(data, paths, strict=True)):
            try:
                source = io.BytesIO(blob) if blob is not None else _inside(self.path, str(path), "image path")
                with Image.open(source) as im:
                    im = im.convert(_MODES.get(c, im.mode))
                    frame = np.asarray(im).reshape(im.size[1], im.size[0], -1)
            except (OSError, ValueError, TypeError) as exc:
                raise CorruptBufferError(f"{where}{s.name} row {i} is not a readable image ({exc})") from None
            if frame.shape != (h, w, c):
                raise CorruptBufferError(
                    f"{where}{s.name} row {i} is {list(frame.shape)}, expected {[h, w, c]}"
                )
            out[i] = frame
        return out


def _kind(dtype: Any) -> str:
    return dtype if dtype in ("image", "video") else "value"


def _hwc(feature: dict[str, Any]) -> tuple[int, int, int]:
    """A camera's ``(H, W, C)`` from its feature (shape ``[H, W, C]``, or ``[C, H, W]`` when its
    names say so)."""
    shape = feature["shape"]
    names = feature.get("names")
    if isinstance(names, list) and len(names) == 3 and str(names[0]).startswith("channel"):
        return shape[1], shape[2], shape[0]
    return shape[0], shape[1], shape[2]


def _crop(frames: np.ndarray, feature: dict[str, Any]) -> np.ndarray:
    """Video frames ``[n, H', W', 3]`` cut to the feature's size (encoders may pad odd sizes)."""
    h, w, _ = _hwc(feature)
    if frames.shape[1] < h or frames.shape[2] < w:
        raise CorruptBufferError(
            f"video frames are {frames.shape[2]}x{frames.shape[1]}, smaller than the feature's {w}x{h}"
        )
    return np.ascontiguousarray(frames[:, :h, :w])


def _template(template: Any, root: str, **values: Any) -> str:
    """A path template of ``info.json`` filled in, inside the dataset directory."""
    if not isinstance(template, str):
        raise CorruptBufferError(f"{root}: a path template of {INFO_FILE} is {template!r}")
    try:
        relative = template.format(**values)
    except (KeyError, IndexError, ValueError) as exc:
        raise CorruptBufferError(f"{root}: the path template {template!r} cannot be filled ({exc})") from None
    return _inside(root, relative, "path")


class _VideoCursor:
    """Frames of one camera's video files, decoded in order; reopened only to go back."""

    def __init__(self) -> None:
        self.path: str | None = None
        self.frames: Iterator[np.ndarray] | None = None
        self.position = 0  # index of the next frame self.frames yields
        self.last: np.ndarray | None = None  # the frame at position - 1

    def close(self) -> None:
        if self.frames is not None:
            close = getattr(self.frames, "close", None)
            if close is not None:
                close()
        self.frames, self.path, self.position, self.last = None, None, 0, None

    def take(self, path: str, indices: np.ndarray, where: str) -> np.ndarray:
        """The frames ``indices`` (non-decreasing after the first) of the file ``path``."""
        if len(indices) and (np.any(np.diff(indices) < 0) or indices[0] < 0):
            raise CorruptBufferError(f"{where}the timestamps do not increase")
        start = int(indices[0]) if len(indices) else 0
        if path != self.path or start < self.position - 1:
            self.close()
            if not os.path.isfile(path):
                raise CorruptBufferError(f"{where}the video file {path} is missing")
            self.frames, self.path = videos.read_video(path), path
        out = []
        for wanted in indices.tolist():
            while self.position <= wanted:
                assert self.frames is not None
                self.last = next(self.frames, None)
                if self.last is None:
                    raise CorruptBufferError(
                        f"{where}{path} has {self.position} frames, the episode needs frame {wanted}"
                    )
                self.position += 1
            if wanted != self.position - 1:
                raise CorruptBufferError(f"{where}frame {wanted} was passed already")
            assert self.last is not None
            out.append(self.last)
        return np.stack(out)


def _assemble(sources: list[Source], values: dict[Source, torch.Tensor], n: int, where: str) -> Trajectory:
    """An episode's trajectory ``[n, 1, ...]`` from its features' values ``[n, ...]``."""
    parts: dict[Key, dict[int, torch.Tensor]] = {}
    columns: dict[Key, torch.Tensor] = {}
    shapes: dict[Key, tuple[int, ...]] = {}
    for s in sources:
        shapes[s.key] = s.shape
        if s.part is not None:
            parts.setdefault(s.key, {})[s.part] = values[s]
        else:
            columns[s.key] = values[s].reshape(n, *s.shape)
    for key, stack in parts.items():
        if sorted(stack) != list(range(shapes[key][0])):
            raise CorruptBufferError(f"{where}{key_name(key)} lacks some of its {shapes[key][0]} images")
        columns[key] = torch.stack([stack[i] for i in range(len(stack))], dim=1).to(torch.uint8)
    columns.setdefault(("rewards",), torch.zeros(n, 1, dtype=torch.float32))
    done_shape = shapes.get(("dones",), (1,))
    ended = _flag(columns.get(("dones",)), n, done_shape)
    truncated = _flag(columns.get(("truncations",)), n, shapes.get(("truncations",), done_shape))
    if ("terminations",) not in columns:
        same = ended.shape == truncated.shape
        columns[("terminations",)] = ended & ~truncated if same else ended.clone()
    if not bool(ended[-1].any()):  # the episode stops here without ending
        truncated[-1] = True
    ended[-1] = True
    columns[("dones",)], columns[("truncations",)] = ended, truncated
    for key in [k for k in columns if k[0] == "curr_obs"]:
        obs = columns[key]
        columns[("next_obs", key[1])] = torch.cat([obs[1:], obs[-1:]])
    return Trajectory.from_dict(nest_columns({}, {k: v.unsqueeze(1) for k, v in columns.items()}))


def _flag(values: torch.Tensor | None, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """A done-like field as ``bool`` ``[n, *shape]`` (all false when absent)."""
    if values is None:
        return torch.zeros(n, *shape, dtype=torch.bool)
    return values.ne(0) if values.dtype != torch.bool else values.clone()


def read_lerobot(dataset_path: str, progress: Progress | None = None) -> Iterator[Trajectory]:
    """Each episode of a LeRobot dataset directory as a :class:`Trajectory` ``[length, 1, ...]``,
    in episode order, read one at a time (:class:`LeRobotReader`; the mapping is in the module's
    docstring).

    Raises:
        As :class:`LeRobotReader` and its ``trajectories``.
    """
    return LeRobotReader(dataset_path).trajectories(progress)


def load_lerobot(buffer: Any, dataset_path: str, progress: Progress | None = None) -> list[int]:
    """Add every episode of a LeRobot dataset to ``buffer`` (a :class:`TrajectoryReplayBuffer`),
    one trajectory of ``B = 1`` per episode, one at a time; returns their ids in episode order.
    Episodes added before an error stay in the buffer.

    Raises:
        As :func:`read_lerobot`, and as ``buffer.add_trajectories``.
    """
    ids: list[int] = []
    for trajectory in read_lerobot(dataset_path, progress):
        ids += buffer.add_trajectories([trajectory])
    return ids


def buffer_from_lerobot(dataset_path: str, *, progress: Progress | None = None, **buffer_kwargs: Any) -> Any:
    """A new :class:`TrajectoryReplayBuffer` holding every episode of a LeRobot dataset (one
    trajectory of ``B = 1`` per episode): a demonstration buffer.

    ``buffer_kwargs`` go to the buffer's constructor; ``sample_window_size`` defaults to 0 (sample
    from every episode). Without ``auto_save`` the buffer holds the episodes in memory.

    Raises:
        As :func:`load_lerobot`; the buffer is closed if loading fails.
    """
    from ..buffer import TrajectoryReplayBuffer

    buffer_kwargs.setdefault("sample_window_size", 0)
    buffer = TrajectoryReplayBuffer(**buffer_kwargs)
    try:
        load_lerobot(buffer, dataset_path, progress)
    except BaseException:
        buffer.close()
        raise
    return buffer


@dataclass
class LeRobotImportResult:
    """What :func:`import_lerobot` wrote.

    Attributes:
        dataset_path: the dataset read; ``codebase_version`` its version.
        dest_path: the buffer directory written; ``trajectory_format`` its format.
        trajectories: trajectories written (one per episode); ``transitions`` their frames.
        bytes: total size of the files in ``dest_path``.
        trajectory_ids: the ids, in episode order.
        skipped_features: features of the dataset left out.
    """

    dataset_path: str
    dest_path: str
    trajectory_format: str
    codebase_version: str
    trajectories: int
    transitions: int
    bytes: int
    trajectory_ids: list[int] = field(default_factory=list)
    skipped_features: list[str] = field(default_factory=list)


def import_lerobot(
    dataset_path: str,
    dest_path: str,
    *,
    trajectory_format: str = "pt",
    progress: Progress | None = None,
    overwrite: bool = False,
) -> LeRobotImportResult:
    """Build a buffer directory from a LeRobot dataset directory (``v2.1`` or ``v3.0``), one
    trajectory of ``B = 1`` per episode, streamed one episode at a time through an auto-saving
    buffer into a hidden sibling renamed to ``dest_path`` only when complete.

    Args:
        dataset_path: the LeRobot dataset (the directory holding ``meta/``).
        dest_path: the buffer directory to create (missing or empty).
        trajectory_format: ``"pt"``, ``"pkl"`` or ``"segment"``.
        progress: ``progress(done, total)`` after each episode.
        overwrite: ``dest_path`` may also be a buffer directory, replaced atomically.

    Raises:
        As :class:`LeRobotReader`; BufferDirectoryError: the destination may not be written.
    """
    from .. import formats
    from ..buffer import TrajectoryReplayBuffer

    fmt = formats.check_format(trajectory_format)
    reader = LeRobotReader(dataset_path)
    dest = output_directory(dest_path, replace_buffer=overwrite, argument="dest_path")
    ids: list[int] = []
    transitions = 0
    with writing(dest), destination_lock(dest, "import") as target, staged_directory(dest) as staging:
        buffer = TrajectoryReplayBuffer(
            sample_window_size=0, auto_save=True, auto_save_path=staging, trajectory_format=fmt, cache_size=1
        )
        try:
            for trajectory in reader.trajectories(progress):
                ids += buffer.add_trajectories([trajectory])
                transitions += int(trajectory.rewards.shape[0])  # type: ignore[union-attr]
        finally:
            buffer.close()
        target.claim()
        publish_directory(staging, dest)
    return LeRobotImportResult(
        dataset_path=reader.path,
        dest_path=dest,
        trajectory_format=fmt,
        codebase_version=str(reader.version),
        trajectories=len(ids),
        transitions=transitions,
        bytes=_tree_bytes(dest),
        trajectory_ids=ids,
        skipped_features=reader.skipped,
    )
