"""LeRobot datasets: the v3.0 layout ``export_lerobot`` writes, round trips buffer -> LeRobot ->
buffer (images exactly, videos within the codec's loss), what Hugging Face ``datasets`` makes of
the data files, imports of v2.1 and v3.0 datasets written here from the format's facts (images
in the data files, or videos: one per episode, or several episodes in one file), and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import coded_trajectory, odd_trajectory
from PIL import Image

from rlinf_replay_buffer import (
    BufferDirectoryError,
    CorruptBufferError,
    InvalidArgumentError,
    Trajectory,
    TrajectoryReplayBuffer,
)
from rlinf_replay_buffer.cli import main
from rlinf_replay_buffer.directory import read_directory
from rlinf_replay_buffer.store import iter_directory_rows
from rlinf_replay_buffer.tools.lerobot import (
    buffer_from_lerobot,
    export_lerobot,
    import_lerobot,
    read_lerobot,
)
from rlinf_replay_buffer.tools.stats import field_stats
from rlinf_replay_buffer.tools.video import write_video
from rlinf_replay_buffer.trajectory import key_name

FPS = 10
INDEX = {"timestamp", "frame_index", "episode_index", "index", "task_index"}


def save(path: Path, trajectories: list[Trajectory], fmt: str = "pt") -> Path:
    with TrajectoryReplayBuffer(seed=3, sample_window_size=0, trajectory_format=fmt) as buf:
        buf.add_trajectories(trajectories)
        buf.save_checkpoint(str(path))
    return path


def with_dones(traj: Trajectory, ends: dict[int, list[int]]) -> Trajectory:
    """``traj`` with ``dones`` set exactly at ``ends[env]`` (steps), in aligned layout."""
    T, B = traj.rewards.shape[:2]
    dones = torch.zeros(T, B, 1, dtype=torch.bool)
    for env, steps in ends.items():
        dones[steps, env] = True
    traj.dones = dones
    return traj


def aligned_coded(i: int, **kwargs) -> Trajectory:
    return coded_trajectory(i, layout="aligned", **kwargs)


def source_episodes(path: Path) -> list[dict[str, torch.Tensor]]:
    """The episodes an export of ``path`` holds, by the documented rule: env by env, cut after
    each done and at the trajectory's end; each a dict of ``[n, ...]`` values by dotted name."""
    contents, schema = read_directory(str(path))
    out = []
    for record, rows in iter_directory_rows(contents.path, contents.fmt, contents.records, schema):
        T, B = record.num_steps, record.num_envs
        cols = {key_name(k): v.reshape(T, B, *v.shape[1:]) for k, v in rows.items()}
        dones = cols.get("dones")
        for env in range(B):
            start = 0
            for t in range(T):
                if t == T - 1 or (dones is not None and bool(dones[t, env].any())):
                    out.append({name: v[start : t + 1, env].clone() for name, v in cols.items()})
                    start = t + 1
    return out


def flat(traj: Trajectory) -> dict[str, torch.Tensor]:
    """A B=1 trajectory's fields by dotted name, ``[n, ...]``."""
    out = {}
    for name, value in traj.to_dict().items():
        for sub, tensor in value.items() if isinstance(value, dict) else [(None, value)]:
            if isinstance(tensor, torch.Tensor):
                assert tensor.shape[1] == 1
                out[name if sub is None else f"{name}.{sub}"] = tensor[:, 0]
    return out


def assert_round_trip(src: Path, got: list[Trajectory], video_tolerance: float | None = None) -> None:
    """Every exported value came back (dtype, shape, values; video cameras within the tolerance
    of the mean absolute error), ``next_obs`` is the next frame's observation (the last frame's
    own), the last frame is done, and an episode cut at a trajectory end is truncated."""
    expected = source_episodes(src)
    assert len(got) == len(expected)
    for want, traj in zip(expected, got, strict=True):
        have = flat(traj)
        n = int(want["rewards"].shape[0])
        kept = {k: v for k, v in want.items() if not k.startswith("next_obs.") and v.numel()}
        for name, value in kept.items():
            if name in ("dones", "truncations"):
                continue
            assert have[name].dtype == value.dtype and have[name].shape == value.shape, name
            if video_tolerance is not None and name.endswith("images"):
                error = (have[name].float() - value.float()).abs().mean().item()
                assert error <= video_tolerance, (name, error)
            else:
                assert torch.equal(have[name], value), name
        for name, value in have.items():
            if name.startswith("curr_obs."):
                nxt = have["next_obs." + name.removeprefix("curr_obs.")]
                assert torch.equal(nxt[:-1], value[1:]) and torch.equal(nxt[-1], value[-1]), name
        ended = bool(want["dones"][-1].any()) if "dones" in want else False
        assert have["dones"][-1].all() and have["dones"].shape[0] == n
        if "dones" in want:
            assert torch.equal(have["dones"][:-1], want["dones"][:-1])
        assert bool(have["truncations"][-1].all()) == (
            not ended or bool(want.get("truncations", torch.zeros(1, dtype=torch.bool))[-1].any())
        )


# -- the layout ---------------------------------------------------------------------------------


def test_export_writes_lerobot_v30_metadata(tmp_path):
    src = save(tmp_path / "src", [aligned_coded(i) for i in range(3)])
    out = tmp_path / "ds"
    result = export_lerobot(str(src), str(out), fps=FPS, task="pick the cube", robot_type="panda")
    assert (result.trajectories, result.transitions, result.episodes) == (3, 48, 12)
    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == FPS and info["robot_type"] == "panda"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (12, 48, 1)
    assert info["splits"] == {"train": "0:12"} and info["chunks_size"] == 1000
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] is None
    assert {"data_files_size_in_mb", "video_files_size_in_mb"} <= info.keys()
    features = info["features"]
    assert INDEX <= features.keys()
    assert features["observation.state"] == {"dtype": "float32", "shape": [3], "names": None}
    assert features["observation.images.main_images"] == {
        "dtype": "image",
        "shape": [4, 4, 3],
        "names": ["height", "width", "channels"],
    }
    assert features["next.done"]["dtype"] == "bool" and features["next.reward"]["shape"] == [1]
    assert {"action", "next.truncated", "complementary_info.terminations"} <= features.keys()
    assert "complementary_info.forward_inputs.action" in features
    assert not any(name.startswith("next_obs") for name in features)

    tasks = pq.read_table(out / "meta/tasks.parquet").to_pandas()
    assert list(tasks.index) == ["pick the cube"] and list(tasks["task_index"]) == [0]
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["episode_index"] for e in episodes] == list(range(12))
    assert all(e["tasks"] == ["pick the cube"] and e["length"] == 4 for e in episodes)
    assert [e["dataset_from_index"] for e in episodes] == list(range(0, 48, 4))
    assert {e["data/chunk_index"] for e in episodes} == {0} == {e["data/file_index"] for e in episodes}
    assert {e["meta/episodes/file_index"] for e in episodes} == {0}
    first = episodes[0]
    assert np.array(first["stats/observation.images.main_images/mean"]) == pytest.approx(
        np.full((3, 1, 1), 1.5 / 255)
    )
    assert first["stats/observation.state/max"] == [3.0, 3.0, 3.0]
    assert first["stats/frame_index/count"] == [4]

    stats = json.loads((out / "meta/stats.json").read_text())
    assert set(stats) == set(features)
    image = stats["observation.images.main_images"]
    assert set(image) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}
    assert np.array(image["mean"]).shape == (3, 1, 1) and image["count"] == [48]
    assert np.array(stats["observation.state"]["q50"]).shape == (3,)
    assert np.array(stats["next.reward"]["mean"]).shape == (1,)
    assert stats["index"]["max"] == [47.0]
    reference = field_stats(str(src))  # the library's statistics of the buffer, per field
    pairs = {
        "observation.state": "curr_obs.states",
        "observation.images.main_images": "curr_obs.main_images",
        "next.done": "dones",
        "action": "actions",
    }
    for feature, name in pairs.items():
        for stat, values in reference[name].items():
            assert np.ravel(stats[feature][stat]) == pytest.approx(values), (feature, stat)
    mapping = json.loads((out / "meta/rlinf_replay_buffer.json").read_text())
    assert mapping["format_version"] == 1
    assert mapping["features"]["observation.state"]["field"] == "curr_obs.states"

    data = pq.read_table(out / "data/chunk-000/file-000.parquet")
    assert data.num_rows == 48
    assert data.column("index").to_pylist() == list(range(48))
    assert data.column("frame_index").to_pylist()[:5] == [0, 1, 2, 3, 0]
    assert data.column("timestamp").to_pylist()[:4] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert data.schema.field("observation.images.main_images").type == pa.struct(
        [("bytes", pa.binary()), ("path", pa.string())]
    )


def test_episodes_are_cut_after_dones_and_at_trajectory_ends(tmp_path):
    traj = with_dones(aligned_coded(0, n=5, e=2, num_envs=2), {0: [2, 9], 1: [6]})
    src = save(tmp_path / "src", [traj])
    out = tmp_path / "ds"
    export_lerobot(str(src), str(out), fps=FPS, task="t")
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["length"] for e in episodes] == [3, 7, 7, 3]  # env 0: 0-2, 3-9; env 1: 0-6, 7-9
    data = pq.read_table(out / "data/chunk-000/file-000.parquet")
    done = data.column("next.done").to_pylist()
    ends = np.cumsum([3, 7, 7, 3]) - 1
    assert [done[i] for i in ends] == [True, True, True, False]  # the last one was cut, not done
    assert sum(done) == 3


def test_data_files_roll_over_past_their_size(tmp_path):
    src = save(tmp_path / "src", [aligned_coded(i) for i in range(2)])
    out = tmp_path / "ds"
    result = export_lerobot(str(src), str(out), fps=FPS, task="t", data_file_bytes=1)
    assert result.data_files == result.episodes == 8
    files = sorted((out / "data/chunk-000").glob("file-*.parquet"))
    assert [f.name for f in files] == [f"file-{i:03d}.parquet" for i in range(8)]
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["data/file_index"] for e in episodes] == list(range(8))
    assert_round_trip(src, list(read_lerobot(str(out))))


# -- round trips --------------------------------------------------------------------------------


def stacked(traj: Trajectory) -> Trajectory:
    """``traj`` with a stack of two RGB cameras ``[2, H, W, 3]`` in ``curr_obs``."""
    T, B = traj.rewards.shape[:2]
    g = torch.Generator().manual_seed(T)
    traj.curr_obs["extra_view_images"] = torch.randint(
        0, 256, (T, B, 2, 5, 6, 3), generator=g, dtype=torch.uint8
    )
    return traj


@pytest.mark.parametrize("fmt", ["pt", "segment"])
def test_round_trip_keeps_every_exported_value(tmp_path, fmt):
    trajs = [stacked(odd_trajectory(i, t=4 + i, empty=False)) for i in range(2)]
    trajs.append(stacked(with_dones(aligned_coded(3, n=3, e=2), {1: [1]})))
    src = save(tmp_path / "src", trajs[:2], fmt)
    export_lerobot(str(src), str(tmp_path / "ds"), fps=FPS, task="t")
    assert_round_trip(src, list(read_lerobot(str(tmp_path / "ds"))))
    src2 = save(tmp_path / "src2", trajs[2:], fmt)
    result = import_lerobot(
        export_lerobot(str(src2), str(tmp_path / "ds2"), fps=FPS, task="t").out_path,
        str(tmp_path / "back"),
        trajectory_format=fmt,
    )
    assert result.trajectories == 3 and result.codebase_version == "v3.0" and result.skipped_features == []
    with TrajectoryReplayBuffer(sample_window_size=0) as buf:
        buf.load_checkpoint(result.dest_path)
        assert_round_trip(src2, list(buf.iter_trajectories()))
        assert buf.sample(8)["curr_obs"]["extra_view_images"].shape == (8, 2, 5, 6, 3)


def test_round_trip_through_videos_stays_within_the_codec_loss(tmp_path):
    def smooth(i: int, height: int, width: int) -> Trajectory:
        traj = aligned_coded(i, images=False, n=6, e=1, num_envs=2)
        y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        t = torch.arange(6)[:, None, None, None, None]
        b = torch.arange(2)[None, :, None, None, None]
        image = (40 + 8 * t + 60 * b + 3 * y[..., None] + 2 * x[..., None]).clamp(0, 255).to(torch.uint8)
        traj.curr_obs["main_images"] = image.expand(6, 2, height, width, 3).clone()
        traj.curr_obs["wrist_images"] = image[:, :, : height - 1, : width - 2].expand(6, 2, -1, -1, 3).clone()
        gray = torch.full((6, 2, 4, 4, 1), 77, dtype=torch.uint8)
        traj.curr_obs["depth_images"] = gray  # one channel: stays an image
        return traj

    src = save(tmp_path / "src", [smooth(0, 16, 16), smooth(1, 16, 16)])
    out = tmp_path / "ds"
    result = export_lerobot(str(src), str(out), fps=FPS, task="t", video=True)
    assert result.video_fields == ["observation.images.main_images", "observation.images.wrist_images"]
    assert result.image_fields == ["observation.images.depth_images"]
    info = json.loads((out / "meta/info.json").read_text())
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    feature = info["features"]["observation.images.wrist_images"]
    assert feature["dtype"] == "video" and feature["shape"] == [15, 14, 3]
    assert feature["info"]["video.codec"] == "h264" and feature["info"]["video.fps"] == FPS
    assert feature["info"]["video.pix_fmt"] == "yuv444p"  # an odd height: no chroma subsampling
    assert len(list((out / "videos/observation.images.main_images/chunk-000").glob("*.mp4"))) == 4
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert episodes[1]["videos/observation.images.main_images/file_index"] == 1
    assert episodes[1]["videos/observation.images.main_images/to_timestamp"] == pytest.approx(0.6)
    data = pq.read_table(out / "data/chunk-000/file-000.parquet")
    assert "observation.images.main_images" not in data.column_names
    assert_round_trip(src, list(read_lerobot(str(out))), video_tolerance=3.0)


def test_datasets_loads_the_data_files_with_pil_images(tmp_path, monkeypatch):
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    src = save(tmp_path / "src", [aligned_coded(i) for i in range(2)])
    out = tmp_path / "ds"
    export_lerobot(str(src), str(out), fps=FPS, task="t", data_file_bytes=1)
    files = sorted(str(p) for p in (out / "data").glob("*/*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "c"))
    assert len(ds) == 32
    assert isinstance(ds.features["observation.images.main_images"], datasets.Image)
    row = ds[5]
    assert isinstance(row["observation.images.main_images"], Image.Image)
    expected = source_episodes(src)[1]  # frame 5 is frame 1 of the second episode
    image = np.asarray(row["observation.images.main_images"])
    assert np.array_equal(image, expected["curr_obs.main_images"][1].numpy())
    assert row["observation.state"] == expected["curr_obs.states"][1].tolist()
    assert row["episode_index"] == 1 and row["frame_index"] == 1 and row["index"] == 5


# -- datasets written here from the format's facts ---------------------------------------------


def camera(episode: int, t: int, h: int = 8, w: int = 10) -> np.ndarray:
    """A gray frame whose level encodes (episode, step): compression keeps it closely."""
    return np.full((h, w, 3), 30 + 20 * t + 90 * episode, dtype=np.uint8)


def png(frame: np.ndarray) -> bytes:
    import io

    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="PNG")
    return out.getvalue()


V21_VIDEOS = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V30_VIDEOS = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
LENGTHS = (3, 4)  # episode 0 ends (next.done), episode 1 stops without ending


def frame_columns(episode: int, start: int, video: bool) -> dict[str, pa.Array]:
    n = LENGTHS[episode]
    t = np.arange(n)
    columns = {
        "observation.state": pa.array(
            [[100.0 * episode + s, -float(s)] for s in t], pa.list_(pa.float32(), 2)
        ),
        "action": pa.array([[float(s), float(episode)] for s in t], pa.list_(pa.float32(), 2)),
        "next.reward": pa.array(t / 10, pa.float32()),
        "next.done": pa.array([episode == 0 and s == n - 1 for s in t]),
        "next.success": pa.array([False] * n),
        "timestamp": pa.array(t / FPS, pa.float32()),
        "frame_index": pa.array(t, pa.int64()),
        "episode_index": pa.array([episode] * n, pa.int64()),
        "index": pa.array(start + t, pa.int64()),
        "task_index": pa.array([0] * n, pa.int64()),
    }
    if not video:
        images = [{"bytes": png(camera(episode, s)), "path": None} for s in t]
        columns["observation.images.cam"] = pa.array(
            images, pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        )
    return columns


def features(video: bool) -> dict:
    out = {
        "observation.state": {"dtype": "float32", "shape": [2], "names": None},
        "observation.images.cam": {"dtype": "video" if video else "image", "shape": [8, 10, 3],
                                   "names": ["height", "width", "channels"]},
        "action": {"dtype": "float32", "shape": [2], "names": None},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "next.done": {"dtype": "bool", "shape": [1], "names": None},
        "next.success": {"dtype": "bool", "shape": [1], "names": None},
    }  # fmt: skip
    out.update(
        {
            name: {"dtype": "float32" if name == "timestamp" else "int64", "shape": [1]}
            for name in sorted(INDEX)
        }
    )
    return out


def write_v21(root: Path, video: bool) -> Path:
    """A LeRobot v2.1 dataset: JSON-lines metadata, one data file and one video per episode."""
    (root / "meta").mkdir(parents=True)
    info = {
        "codebase_version": "v2.1", "robot_type": "so100", "fps": FPS, "features": features(video),
        "total_episodes": 2, "total_frames": sum(LENGTHS), "total_tasks": 1,
        "total_videos": 2 if video else 0, "total_chunks": 1, "chunks_size": 1000, "splits": {"train": "0:2"},
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": V21_VIDEOS if video else None,
    }  # fmt: skip
    (root / "meta/info.json").write_text(json.dumps(info))
    lines = [json.dumps({"episode_index": e, "tasks": ["stack"], "length": n}) for e, n in enumerate(LENGTHS)]
    (root / "meta/episodes.jsonl").write_text("\n".join(lines) + "\n")
    (root / "meta/tasks.jsonl").write_text(json.dumps({"task_index": 0, "task": "stack"}) + "\n")
    stats = [json.dumps({"episode_index": e, "stats": {}}) for e in range(2)]
    (root / "meta/episodes_stats.jsonl").write_text("\n".join(stats) + "\n")
    start = 0
    for episode, n in enumerate(LENGTHS):
        path = root / f"data/chunk-000/episode_{episode:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(frame_columns(episode, start, video)), path)
        if video:
            mp4 = root / f"videos/chunk-000/observation.images.cam/episode_{episode:06d}.mp4"
            write_video((camera(episode, t) for t in range(n)), str(mp4), FPS)
        start += n
    return root


def write_v30(root: Path, video: bool) -> Path:
    """A LeRobot v3.0 dataset as LeRobot writes it: both episodes in one data file and, with
    ``video``, both in one video file per camera (episode 1 from ``3 / fps`` seconds on)."""
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    info = {
        "codebase_version": "v3.0", "robot_type": None, "fps": FPS, "features": features(video),
        "total_episodes": 2, "total_frames": sum(LENGTHS), "total_tasks": 1, "chunks_size": 1000,
        "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "splits": {"train": "0:2"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": V30_VIDEOS if video else None,
    }  # fmt: skip
    (root / "meta/info.json").write_text(json.dumps(info))
    pq.write_table(pa.table({"task_index": [0], "task": ["stack"]}), root / "meta/tasks.parquet")
    rows = []
    for episode, n in enumerate(LENGTHS):
        row = {"episode_index": episode, "tasks": ["stack"], "length": n, "data/chunk_index": 0,
               "data/file_index": 0, "dataset_from_index": sum(LENGTHS[:episode]),
               "dataset_to_index": sum(LENGTHS[: episode + 1])}  # fmt: skip
        if video:
            begin = sum(LENGTHS[:episode]) / FPS
            prefix = "videos/observation.images.cam/"
            row.update({prefix + "chunk_index": 0, prefix + "file_index": 0, prefix + "from_timestamp": begin,
                        prefix + "to_timestamp": begin + n / FPS})  # fmt: skip
        rows.append(row)
    pq.write_table(pa.Table.from_pylist(rows), root / "meta/episodes/chunk-000/file-000.parquet")
    tables = [pa.table(frame_columns(e, sum(LENGTHS[:e]), video)) for e in range(2)]
    (root / "data/chunk-000").mkdir(parents=True)
    pq.write_table(pa.concat_tables(tables), root / "data/chunk-000/file-000.parquet")
    if video:
        frames = (camera(e, t) for e, n in enumerate(LENGTHS) for t in range(n))
        write_video(frames, str(root / "videos/observation.images.cam/chunk-000/file-000.mp4"), FPS)
    return root


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
@pytest.mark.parametrize("video", [False, True], ids=["images", "video"])
def test_import_reads_lerobot_datasets(tmp_path, version, video):
    root = (write_v21 if version == "v2.1" else write_v30)(tmp_path / "lerobot", video)
    buf = buffer_from_lerobot(str(root), seed=0)
    try:
        assert buf.size == 2 and buf.total_samples == sum(LENGTHS)
        assert buf.sample_window_size == 0  # a demonstration buffer samples every episode
        trajs = list(buf.iter_trajectories())
    finally:
        buf.close()
    for episode, (traj, n) in enumerate(zip(trajs, LENGTHS, strict=True)):
        got = flat(traj)
        t = torch.arange(n, dtype=torch.float32)
        assert torch.equal(got["curr_obs.states"], torch.stack([100 * episode + t, -t], dim=1))
        assert torch.equal(got["actions"], torch.stack([t, torch.full((n,), float(episode))], dim=1))
        assert torch.allclose(got["rewards"], (t / 10)[:, None])
        images = got["curr_obs.cam"]
        assert images.shape == (n, 8, 10, 3) and images.dtype == torch.uint8
        expected = torch.from_numpy(np.stack([camera(episode, s) for s in range(n)]))
        assert (images.int() - expected.int()).abs().max() <= (2 if video else 0)
        assert torch.equal(got["next_obs.states"][:-1], got["curr_obs.states"][1:])
        assert torch.equal(got["next_obs.cam"][-1], images[-1])
        assert got["dones"][:, 0].tolist() == [False] * (n - 1) + [True]
        # episode 0 ends with next.done; episode 1 stops without ending: truncated
        assert got["truncations"][:, 0].tolist() == [False] * (n - 1) + [episode == 1]
        assert got["terminations"][:, 0].tolist() == [False] * (n - 1) + [episode == 0]
        assert "curr_obs.success" not in got and "next.success" not in got


def test_import_lerobot_command_builds_a_buffer_directory(tmp_path, capsys):
    root = write_v30(tmp_path / "lerobot", video=True)
    dest = tmp_path / "demo"
    code = main(["import", "--format", "lerobot", str(root), "--save-path", str(dest), "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["codebase_version"] == "v3.0" and out["num_trajectories"] == 2
    assert out["total_samples"] == sum(LENGTHS) and out["skipped_features"] == ["next.success"]
    assert out["dataset_path"] == str(root) and out["save_path"] == str(dest)
    with TrajectoryReplayBuffer(sample_window_size=0) as buf:
        buf.load_checkpoint(str(dest))
        batch = buf.sample(16)
    assert batch["curr_obs"]["cam"].shape == (16, 8, 10, 3)
    assert batch["dones"].shape == (16, 1)


def test_export_command_round_trips_through_import(tmp_path, capsys):
    src = save(tmp_path / "src", [aligned_coded(i) for i in range(2)])
    out = tmp_path / "ds"
    argv = ["export", str(src), "--out", str(out), "--format", "lerobot", "--fps", "15", "--task", "t"]
    assert main([*argv, "--quiet"]) == 0
    assert "exported 32 transitions as 8 LeRobot episodes" in capsys.readouterr().out
    assert json.loads((out / "meta/info.json").read_text())["fps"] == 15
    assert main([*argv, "--quiet"]) == 1
    assert "already exists and is not empty" in capsys.readouterr().err
    assert main([*argv, "--quiet", "--overwrite"]) == 0
    capsys.readouterr()
    back = tmp_path / "back"
    assert main(["import", str(out), "--format", "lerobot", "--save-path", str(back), "--quiet"]) == 0
    assert "imported 8 episodes of a LeRobot v3.0 dataset (32 transitions)" in capsys.readouterr().out
    with TrajectoryReplayBuffer(sample_window_size=0) as buf:
        buf.load_checkpoint(str(back))
        assert_round_trip(src, list(buf.iter_trajectories()))


# -- errors -------------------------------------------------------------------------------------


def test_a_directory_without_info_json_is_not_a_lerobot_dataset(tmp_path):
    (tmp_path / "ds" / "data").mkdir(parents=True)
    with pytest.raises(InvalidArgumentError, match=r"not a LeRobot dataset: meta/info.json is missing"):
        read_lerobot(str(tmp_path / "ds"))


def test_an_unsupported_codebase_version_is_refused(tmp_path):
    root = write_v21(tmp_path / "ds", video=False)
    info = json.loads((root / "meta/info.json").read_text())
    (root / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v1.6"}))
    with pytest.raises(
        InvalidArgumentError, match=r"codebase_version 'v1.6' is not supported.*v2.1 and v3.0"
    ):
        import_lerobot(str(root), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_an_episode_without_rows_is_reported_and_nothing_is_written(tmp_path):
    root = write_v21(tmp_path / "ds", video=False)
    (root / "data/chunk-000/episode_000001.parquet").unlink()
    with pytest.raises(CorruptBufferError, match=r"episode_000001.parquet: the data file is missing"):
        import_lerobot(str(root), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no staging directory left


def test_export_options_are_checked(tmp_path, capsys):
    src = save(tmp_path / "src", [aligned_coded(0)])
    with pytest.raises(InvalidArgumentError, match=r"fps must be an int >= 1"):
        export_lerobot(str(src), str(tmp_path / "a"), fps=None, task="t")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=r"task must be a non-empty string"):
        export_lerobot(str(src), str(tmp_path / "a"), fps=10, task=" ")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(BufferDirectoryError, match=r"is not a LeRobot dataset; refusing to replace it"):
        export_lerobot(str(src), str(tmp_path / "other"), fps=10, task="t", overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    with pytest.raises(SystemExit, match="2"):
        main(["export", str(src), "--out", str(tmp_path / "b"), "--format", "lerobot", "--task", "t"])
    assert "--format lerobot needs --fps" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        main(["export", str(src), "--out", str(tmp_path / "c.parquet"), "--fps", "10", "--video"])
    assert "--fps, --video: options of --format lerobot only" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c.parquet").exists()
