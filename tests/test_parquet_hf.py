"""The Parquet export as Hugging Face ``datasets`` reads it (images as ``Image`` features decoded
to PIL, every other column typed from the file's ``huggingface`` metadata), exact round trips
through the file for every trajectory format, and import of the older form whose image columns
are plain PNG bytes."""

from __future__ import annotations

import ast
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import REPO, odd_trajectory
from PIL import Image

from rlinf_replay_buffer import Trajectory, TrajectoryReplayBuffer
from rlinf_replay_buffer.checkpoint import read_rows
from rlinf_replay_buffer.directory import read_directory
from rlinf_replay_buffer.tools import parquet as pqt
from rlinf_replay_buffer.tools.parquet import export_parquet, import_parquet
from rlinf_replay_buffer.trajectory import key_name

FORMATS = ["pt", "pkl", "segment"]
IMAGES = {"curr_obs.rgb": "RGB", "curr_obs.rgba": "RGBA", "curr_obs.gray": "L", "next_obs.rgb": "RGB"}


def odd_source(path: Path, fmt: str = "pt", count: int = 3) -> Path:
    """A buffer directory of ``count`` odd trajectories (every dtype and image kind; no empty
    field, which the segment format cannot hold), of 3, 4, 5 ... steps and 2 envs."""
    buf = TrajectoryReplayBuffer(seed=5, sample_window_size=0, trajectory_format=fmt)
    buf.add_trajectories([odd_trajectory(i, t=3 + i, empty=False) for i in range(count)])
    buf.save_checkpoint(str(path))
    buf.close()
    return path


def all_rows(path: Path) -> list[tuple[int, str, int, int | None, dict[str, torch.Tensor]]]:
    """Every trajectory of a directory: id, weights id, update count, max_episode_length and
    its aligned rows by dotted name."""
    contents, schema = read_directory(str(path))
    return [
        (
            r.trajectory_id,
            r.model_weights_id,
            r.model_update_count,
            r.max_episode_length,
            {key_name(k): v for k, v in read_rows(r, schema).items()},
        )
        for r in contents.records
    ]


def assert_same_rows(a: Path, b: Path) -> None:
    left, right = all_rows(a), all_rows(b)
    assert [x[:4] for x in left] == [x[:4] for x in right]
    for (tid, *_, rows_a), (_, *_, rows_b) in zip(left, right, strict=True):
        assert rows_a.keys() == rows_b.keys()
        for name, tensor in rows_a.items():
            got = rows_b[name]
            assert got.dtype == tensor.dtype and got.shape == tensor.shape, f"{tid} {name}"
            assert torch.equal(got, tensor), f"trajectory {tid}: {name} differs"


@pytest.fixture
def hf_datasets(tmp_path, monkeypatch):
    """The ``datasets`` module, offline and with its caches under ``tmp_path``."""
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
    import datasets

    # the settings are read when datasets is first imported, possibly by an earlier test
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    return datasets


def load(datasets, path: Path, tmp_path: Path):
    return datasets.load_dataset(
        "parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf-cache")
    )


# -- what datasets sees ----------------------------------------------------------------------------


def test_export_images_load_as_pil_with_datasets(tmp_path, hf_datasets):
    datasets = hf_datasets
    src = odd_source(tmp_path / "src")
    out = tmp_path / "odd.parquet"
    export_parquet(str(src), str(out))
    ds = load(datasets, out, tmp_path)
    trajectories = all_rows(src)
    assert ds.num_rows == sum(int(rows["rewards"].shape[0]) for *_, rows in trajectories)

    for name in IMAGES:
        assert ds.features[name] == datasets.Image()
    Value, List = datasets.Value, datasets.List
    assert ds.features["trajectory_id"] == Value("int64")
    assert ds.features["step"] == ds.features["env"] == ds.features["num_steps"] == Value("int32")
    assert ds.features["model_weights_id"] == Value("string")
    assert ds.features["rewards"] == Value("float32")  # a scalar per transition
    assert ds.features["actions"] == List(Value("float32"), length=2)  # bfloat16, widened exactly
    assert ds.features["versions"] == List(Value("float16"), length=1)
    assert ds.features["prev_values"] == List(Value("float64"), length=1)
    assert ds.features["curr_obs.wide"] == List(Value("int64"), length=2)
    assert ds.features["curr_obs.grid"] == List(Value("uint8"), length=16)  # not an image: flattened
    assert ds.features["next_obs.flag"] == List(Value("bool"), length=4)

    row = 0
    for tid, weights, count, _, rows in trajectories:
        n = int(rows["rewards"].shape[0])
        for i in range(n):
            got = ds[row + i]
            assert (got["trajectory_id"], got["step"] * 2 + got["env"]) == (tid, i)
            assert (got["model_weights_id"], got["model_update_count"]) == (weights, count)
            for name, mode in IMAGES.items():
                image = got[name]
                assert isinstance(image, Image.Image) and image.mode == mode
                pixels = np.asarray(image)
                want = rows[name][i].numpy()
                assert np.array_equal(pixels, want[..., 0] if mode == "L" else want), (tid, i, name)
            assert got["rewards"] == rows["rewards"][i].item()
            assert got["actions"] == rows["actions"][i].float().tolist()
            assert got["curr_obs.wide"] == rows["curr_obs.wide"][i].tolist()
            assert got["next_obs.flag"] == rows["next_obs.flag"][i].reshape(-1).tolist()
        row += n


def test_export_metadata_is_the_json_datasets_writes(tmp_path, hf_datasets):
    src = odd_source(tmp_path / "src", count=1)
    out = tmp_path / "odd.parquet"
    export_parquet(str(src), str(out))
    ours = pq.read_schema(str(out)).metadata
    assert pqt.METADATA_KEY.encode() in ours  # our own description stays beside it
    ds = load(hf_datasets, out, tmp_path)
    again = tmp_path / "written-by-datasets.parquet"
    ds.to_parquet(str(again))
    theirs = pq.read_schema(str(again)).metadata[b"huggingface"]
    assert json.loads(ours[b"huggingface"]) == json.loads(theirs)
    assert pq.read_schema(str(again)).field("curr_obs.rgb").type == pqt.image_struct(pa)


# -- round trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_buffer_to_parquet_to_buffer_is_bit_identical(tmp_path, fmt):
    src = odd_source(tmp_path / "src", fmt)
    out = tmp_path / "odd.parquet"
    # a row group per few transitions and batches of 5 rows: trajectories span both
    export_parquet(str(src), str(out), row_group_bytes=1 << 10)
    assert pq.ParquetFile(str(out)).metadata.num_row_groups > 3
    dest = tmp_path / "dest"
    result = import_parquet(str(out), str(dest), trajectory_format=fmt, batch_rows=5)
    assert result.trajectory_format == fmt and result.trajectory_ids == [0, 1, 2]
    assert_same_rows(src, dest)


def test_the_library_never_imports_datasets():
    """``datasets`` is a test dependency only."""
    for path in (REPO / "rlinf_replay_buffer").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            assert not [n for n in names if n.split(".")[0] == "datasets"], f"{path} imports datasets"


# -- the older form -----------------------------------------------------------------------------------


def png_bytes(pixels: np.ndarray) -> bytes:
    """A PNG of ``pixels`` ``[H, W, C]`` uint8, written by Pillow."""
    image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_version_1(path: Path, trajectories: list[tuple[int, Trajectory]]) -> None:
    """A file of format version 1, built with pyarrow as docs/format.md describes it: images as
    plain ``binary`` PNG bytes, required (non-null) field columns, no ``huggingface`` metadata.
    The trajectories are aligned, with ``rewards`` (scalar float32), ``actions`` (bfloat16 [2])
    and ``curr_obs``'s ``rgb`` ([H, W, 3]) and ``gray`` ([H, W, 1]) uint8 images."""
    meta_types = pqt.meta_columns(pa)  # trajectory_id, step, env, ..., num_envs (unchanged)
    columns: dict[str, list] = {name: [] for name, _ in meta_types}
    columns.update({"rewards": [], "actions": [], "curr_obs.rgb": [], "curr_obs.gray": []})
    transitions = 0
    for tid, traj in trajectories:
        T, B = traj.rewards.shape[:2]
        for step in range(T):
            for env in range(B):
                values = [tid, step, env, traj.model_weights_id, traj.model_update_count, None, T, B]
                for (name, _), value in zip(meta_types, values, strict=True):
                    columns[name].append(value)
                columns["rewards"].append(traj.rewards[step, env].item())
                columns["actions"].append(traj.actions[step, env].float().tolist())
                for name in ("rgb", "gray"):
                    columns[f"curr_obs.{name}"].append(png_bytes(traj.curr_obs[name][step, env].numpy()))
                transitions += 1
    rgb, gray = trajectories[0][1].curr_obs["rgb"], trajectories[0][1].curr_obs["gray"]
    description = {
        "format_version": 1,
        "writer": "rlinf-replay-buffer",
        "row_order": ["trajectory_id", "step", "env"],
        "trajectories": len(trajectories),
        "transitions": transitions,
        "source": {"trajectory_format": "pt", "written_by": "rlinf-replay-buffer", "seed": 3},
        "fields": {
            "rewards": {"dtype": "float32", "shape": [], "encoding": "scalar", "stored_dtype": "float32"},
            "actions": {"dtype": "bfloat16", "shape": [2], "encoding": "list", "stored_dtype": "float32"},
            "curr_obs.rgb": {
                "dtype": "uint8",
                "shape": list(rgb.shape[2:]),
                "encoding": "png",
                "png_mode": "RGB",
            },
            "curr_obs.gray": {
                "dtype": "uint8",
                "shape": list(gray.shape[2:]),
                "encoding": "png",
                "png_mode": "L",
            },
        },
    }
    fields = [pa.field(name, t, nullable=(name == "max_episode_length")) for name, t in meta_types] + [
        pa.field("rewards", pa.float32(), nullable=False),
        pa.field("actions", pa.list_(pa.float32(), 2), nullable=False),
        pa.field("curr_obs.rgb", pa.binary(), nullable=False),
        pa.field("curr_obs.gray", pa.binary(), nullable=False),
    ]
    schema = pa.schema(fields, metadata={"rlinf_replay_buffer": json.dumps(description)})
    pq.write_table(pa.table(columns, schema=schema), str(path), row_group_size=7)


def plain_trajectory(i: int, t: int = 4, b: int = 2) -> Trajectory:
    g = torch.Generator().manual_seed(100 + i)
    return Trajectory(
        max_episode_length=None,
        model_weights_id=f"old-{i}",
        model_update_count=i,
        rewards=torch.randn(t, b, generator=g),
        actions=torch.randn(t, b, 2, generator=g).to(torch.bfloat16),
        curr_obs={
            "rgb": torch.randint(0, 256, (t, b, 6, 5, 3), generator=g, dtype=torch.uint8),
            "gray": torch.randint(0, 256, (t, b, 3, 7, 1), generator=g, dtype=torch.uint8),
        },
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_import_reads_the_older_form_with_binary_png_columns(tmp_path, fmt):
    originals = [(3, plain_trajectory(0)), (4, plain_trajectory(1, t=5))]
    old = tmp_path / "old.parquet"
    write_version_1(old, originals)
    assert pq.read_schema(str(old)).field("curr_obs.rgb").type == pa.binary()
    dest = tmp_path / "dest"
    result = import_parquet(str(old), str(dest), trajectory_format=fmt, batch_rows=3)
    assert result.trajectory_ids == [3, 4] and result.transitions == 4 * 2 + 5 * 2
    contents, schema = read_directory(str(dest))
    assert contents.seed == 3
    for (tid, traj), record in zip(originals, contents.records, strict=True):
        assert (record.trajectory_id, record.model_weights_id) == (tid, traj.model_weights_id)
        rows = read_rows(record, schema)
        n = record.num_transitions
        expected = {
            ("rewards",): traj.rewards.reshape(n),
            ("actions",): traj.actions.reshape(n, 2),
            ("curr_obs", "rgb"): traj.curr_obs["rgb"].reshape(n, 6, 5, 3),
            ("curr_obs", "gray"): traj.curr_obs["gray"].reshape(n, 3, 7, 1),
        }
        assert rows.keys() == expected.keys()
        for key, want in expected.items():
            assert rows[key].dtype == want.dtype and torch.equal(rows[key], want), key
    # and exporting it again writes the current form
    again = tmp_path / "again.parquet"
    export_parquet(str(dest), str(again))
    assert pq.read_schema(str(again)).field("curr_obs.rgb").type == pqt.image_struct(pa)
