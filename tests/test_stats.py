"""Per-field statistics (``rlinf_replay_buffer.tools.stats`` and ``rlinf-buffer info --stats``)
against NumPy computed on every row of the buffer: exact min/max/mean/std, quantiles exact when
the field is sampled whole and within the documented rank error otherwise, images per channel
in [0, 1], every trajectory format, and one trajectory in memory at a time."""

from __future__ import annotations

import json
import math
import weakref

import numpy as np
import pytest
import torch
from conftest import coded_trajectory, odd_trajectory

from rlinf_replay_buffer import InvalidArgumentError, Trajectory, TrajectoryReplayBuffer
from rlinf_replay_buffer import store as store_module
from rlinf_replay_buffer.checkpoint import read_rows
from rlinf_replay_buffer.cli import main
from rlinf_replay_buffer.directory import read_directory
from rlinf_replay_buffer.tools import stats as stats_module
from rlinf_replay_buffer.tools.parquet import is_image
from rlinf_replay_buffer.tools.stats import QUANTILES, STAT_NAMES, field_stats, format_stats
from rlinf_replay_buffer.trajectory import key_name

FORMATS = ["pt", "pkl", "segment"]


def saved(path, trajectories: list[Trajectory], fmt: str = "pt"):
    buf = TrajectoryReplayBuffer(seed=2, sample_window_size=0, trajectory_format=fmt)
    buf.add_trajectories(trajectories)
    buf.save_checkpoint(str(path))
    buf.close()
    return path


def reference(path) -> dict[str, tuple[np.ndarray, int]]:
    """Every field's values of the whole directory as ``[items, d]`` float64 (images scaled to
    [0, 1]), with the transitions they came from: NumPy's input."""
    contents, schema = read_directory(str(path))
    parts: dict[str, list[np.ndarray]] = {}
    for record in contents.records:
        for key, rows in read_rows(record, schema).items():
            spec = schema[key]
            if math.prod(spec.row_shape) == 0:
                continue
            d = spec.row_shape[-1] if spec.row_shape else 1
            x = rows.to(torch.float64).numpy().reshape(-1, d)
            parts.setdefault(key_name(key), []).append(x / 255 if is_image(spec) else x)
    n = sum(r.num_transitions for r in contents.records)
    return {name: (np.concatenate(xs), n) for name, xs in parts.items()}


def assert_exact_moments(got: dict, x: np.ndarray, n: int) -> None:
    for stat, want in (
        ("min", x.min(0)),
        ("max", x.max(0)),
        ("mean", x.mean(0)),
        ("std", x.std(0)),
    ):
        np.testing.assert_allclose(got[stat], want, rtol=1e-6, atol=1e-12, err_msg=stat)
    assert got["count"] == [n]


@pytest.mark.parametrize("fmt", FORMATS)
def test_stats_equal_numpy_on_every_field_and_format(tmp_path, fmt):
    path = saved(tmp_path / "buf", [odd_trajectory(i, t=3 + i, empty=False) for i in range(3)], fmt)
    stats = field_stats(str(path))
    want = reference(path)
    assert list(stats) == list(want)  # schema order, every field
    for name, (x, n) in want.items():
        got = stats[name]
        assert list(got) == list(STAT_NAMES), name
        assert all(len(got[s]) == x.shape[1] for s in STAT_NAMES if s != "count"), name
        assert_exact_moments(got, x, n)
        assert len(x) <= stats_module.DEFAULT_SAMPLE_SIZE  # sampled whole: exact quantiles
        for stat, q in QUANTILES.items():
            np.testing.assert_allclose(got[stat], np.quantile(x, q, axis=0), rtol=1e-12, err_msg=stat)


def test_images_are_per_channel_and_scaled_to_0_1(tmp_path):
    path = saved(tmp_path / "buf", [odd_trajectory(i, empty=False) for i in range(2)])
    stats = field_stats(str(path))
    for name, channels in (("curr_obs.rgb", 3), ("curr_obs.rgba", 4), ("curr_obs.gray", 1)):
        assert all(len(stats[name][s]) == channels for s in STAT_NAMES if s != "count")
        assert 0 <= min(stats[name]["min"]) and max(stats[name]["max"]) <= 1
    # uint8 fields that are not images keep their values, per element of the last axis
    assert len(stats["curr_obs.grid"]["mean"]) == 4 and max(stats["curr_obs.grid"]["max"]) > 1
    assert len(stats["curr_obs.two"]["mean"]) == 2 and max(stats["curr_obs.two"]["max"]) > 1
    assert len(stats["rewards"]["mean"]) == 1  # a scalar per transition: one dimension


def test_fields_without_values_and_empty_directories_are_left_out(tmp_path):
    path = saved(tmp_path / "buf", [odd_trajectory(0, empty=True)], "pkl")
    stats = field_stats(str(path))
    assert "curr_obs.none" not in stats and "curr_obs.rgb" in stats
    empty = tmp_path / "empty"
    TrajectoryReplayBuffer(sample_window_size=0).save_checkpoint(str(empty))
    assert field_stats(str(empty)) == {}
    assert format_stats({}) == "field statistics: none (no trajectory)"


def offset_trajectory(i: int, t: int = 50, b: int = 4) -> Trajectory:
    """Values far from 0 with a small spread (where a sum of squares loses every digit)."""
    g = torch.Generator().manual_seed(i)
    return Trajectory(
        max_episode_length=t,
        rewards=torch.randn(t, b, generator=g),
        curr_obs={"big": 1e9 + torch.randn(t, b, 2, generator=g, dtype=torch.float64)},
    )


def test_moments_are_exact_across_chunks_far_from_zero(tmp_path, monkeypatch):
    path = saved(tmp_path / "buf", [offset_trajectory(i) for i in range(6)], "segment")
    want = reference(path)
    whole = field_stats(str(path))
    monkeypatch.setattr(stats_module, "CHUNK_VALUES", 7)  # many small chunks per trajectory
    chunked = field_stats(str(path))
    for name, (x, n) in want.items():
        assert_exact_moments(whole[name], x, n)
        assert_exact_moments(chunked[name], x, n)
    assert 0.5 < whole["curr_obs.big"]["std"][0] < 2  # not swallowed by the offset of 1e9


def test_sampled_quantiles_are_within_the_documented_rank_error(tmp_path):
    path = saved(tmp_path / "buf", [offset_trajectory(i) for i in range(10)])
    x = reference(path)["rewards"][0][:, 0]  # 2000 values
    k = 200
    stats = field_stats(str(path), sample_size=k)
    for stat, q in QUANTILES.items():
        value = stats["rewards"][stat][0]
        rank = np.mean(x <= value)
        # the docstring promises 3 sigma with probability 99.7%; 4 sigma (+ one item) never fails
        bound = 4 * math.sqrt(q * (1 - q) / k) + 1 / k
        assert abs(rank - q) <= bound, (stat, rank)
    # the sample has a fixed seed: the same numbers every time; another seed, other quantiles
    assert field_stats(str(path), sample_size=k) == stats
    other = field_stats(str(path), sample_size=k, seed=1)
    assert other["rewards"]["q50"] != stats["rewards"]["q50"]
    for stat in ("min", "max", "mean", "std", "count"):
        assert other["rewards"][stat] == stats["rewards"][stat]


def test_trajectories_are_read_one_at_a_time(tmp_path, monkeypatch):
    """Each trajectory's rows are released before the next is read, so memory holds one."""
    path = saved(tmp_path / "buf", [coded_trajectory(i) for i in range(5)], "pt")
    real = store_module.read_rows
    alive: list[weakref.ref] = []
    reads = []

    def read_one(*args, **kwargs):
        assert not [ref for ref in alive if ref() is not None], "a previous trajectory is still held"
        rows = real(*args, **kwargs)
        alive[:] = [weakref.ref(tensor) for tensor in rows.values()]
        reads.append(1)
        return rows

    monkeypatch.setattr(store_module, "read_rows", read_one)
    progress: list[tuple[int, int]] = []
    field_stats(str(path), progress=lambda done, total: progress.append((done, total)))
    assert len(reads) == 5 and progress == [(i, 5) for i in range(1, 6)]


def test_bad_arguments_are_refused(tmp_path):
    path = saved(tmp_path / "buf", [coded_trajectory(0)])
    with pytest.raises(InvalidArgumentError, match="sample_size must be an int >= 1"):
        field_stats(str(path), sample_size=0)
    with pytest.raises(InvalidArgumentError, match="seed must be an int >= 0"):
        field_stats(str(path), seed=-1)


def test_info_stats_prints_a_table_and_json_holds_the_numbers(tmp_path, capsys):
    path = saved(tmp_path / "buf", [coded_trajectory(i) for i in range(3)])
    assert main(["info", str(path), "--stats", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "field statistics over 48 transitions" in out
    assert "curr_obs.main_images" in out and "q99" in out
    assert main(["info", str(path), "--stats", "--json", "--quiet"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["field_stats"] == field_stats(str(path))
    assert data["field_stats"]["rewards"]["count"] == [48]
    assert main(["info", str(path), "--json", "--quiet"]) == 0
    assert "field_stats" not in json.loads(capsys.readouterr().out)  # only with --stats


def test_info_stats_of_a_folder_of_ranks_is_per_rank(tmp_path, capsys):
    for rank in range(2):
        saved(tmp_path / "ranks" / f"rank_{rank}", [coded_trajectory(i) for i in range(rank + 1)])
    assert main(["info", str(tmp_path / "ranks"), "--stats", "--json", "--quiet"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["field_stats"]["rewards"]["count"] for r in data["ranks"]] == [[16], [32]]
