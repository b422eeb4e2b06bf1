"""Behaviour of ``TrajectoryReplayBuffer.sample``: alignment, uniformity, window, reproducibility.

Coded trajectories (see ``conftest``) carry in every row the code ``1000 * i + 100 * k + s`` of
trajectory ``i``, epoch ``k`` and step ``s``, so every sampled row tells where it came from.

Storage paths exercised (``STORAGE``):

* ``memory``: ``auto_save=False``, rows live in the in-memory store;
* ``cached``: ``auto_save=True`` with a cache larger than the window (cache hits);
* ``disk``: ``auto_save=True`` with ``cache_size=1``, smaller than the window: rows of all but the
  newest trajectory are read from the written files;
* ``nocache``: ``auto_save=True, enable_cache=False``: every row read from files;
* ``checkpoint``: a checkpoint saved by an in-memory buffer, loaded by a disk-backed buffer;
* ``ring`` / ``disk-ring``: ``memory`` / a 3-trajectory cache whose ring starts a few rows before
  its end, so trajectories wrap around the ring's end (gathers take the modulo path).
"""

from __future__ import annotations

import json
import math
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    CODED_DICT_FIELDS,
    CODED_STEP_FIELDS,
    POISON,
    assert_aligned,
    coded_trajectory,
    ring_wrapping,
)
from conftest import TrackedBuffer as TrajectoryReplayBuffer

from rlinf_replay_buffer import Trajectory

STORAGE = ("memory", "ring", "cached", "disk", "disk-ring", "nocache", "checkpoint")
FORMATS = ("pt", "pkl", "segment")
FILE_FORMATS = ("pt", "pkl")  # what RLinf itself writes
LAYOUTS = ("rlinf", "aligned", "done_only")
SEED = 1234
WEIGHTS_ID = "3da470c4-34f9-5bdb-9175-29591bcef469"
#: (n, e, B) of the trajectories used where sizes should differ
SHAPES = [(4, 1, 2), (3, 2, 1), (5, 3, 3), (2, 2, 2), (1, 1, 1), (6, 2, 4)]


# -- helpers ---------------------------------------------------------------------------------


def build(
    kind: str,
    tmp_path: Path,
    trajectories: list[Trajectory],
    *,
    fmt: str = "pt",
    window: int = 0,
    seed: int = SEED,
    calls: int = 1,
) -> TrajectoryReplayBuffer:
    """A buffer of storage path ``kind`` holding ``trajectories`` (added in ``calls`` calls)."""

    def add_all(buf: TrajectoryReplayBuffer) -> None:
        step = max(1, math.ceil(len(trajectories) / calls))
        for i in range(0, len(trajectories), step):
            buf.add_trajectories(trajectories[i : i + step])

    own = tmp_path / f"own-{kind}-{fmt}-{window}-{seed}"
    if kind in ("memory", "ring"):
        with ring_wrapping(kind == "ring"):
            buf = TrajectoryReplayBuffer(seed=seed, sample_window_size=window, trajectory_format=fmt)
        add_all(buf)
        return buf
    if kind == "checkpoint":
        src = TrajectoryReplayBuffer(seed=seed, sample_window_size=0, trajectory_format=fmt)
        add_all(src)
        ckpt = tmp_path / f"ckpt-{fmt}-{window}-{seed}"
        src.save_checkpoint(str(ckpt))
        buf = TrajectoryReplayBuffer(
            seed=seed,
            cache_size=1,
            sample_window_size=window,
            auto_save=True,
            auto_save_path=str(own),
            trajectory_format=fmt,
        )
        buf.load_checkpoint(str(ckpt))
        assert buf.get_stats()["cached_trajectories"] <= 1
        return buf
    options = {
        "cached": {"cache_size": 10_000},
        "disk": {"cache_size": 1},
        "disk-ring": {"cache_size": 3},
        "nocache": {"enable_cache": False},
    }[kind]
    with ring_wrapping(kind.endswith("ring")):
        buf = TrajectoryReplayBuffer(
            seed=seed,
            sample_window_size=window,
            auto_save=True,
            auto_save_path=str(own),
            trajectory_format=fmt,
            **options,
        )
    add_all(buf)
    buf.flush()
    stats = buf.get_stats()
    assert stats["pending_writes"] == 0
    if kind == "disk":
        assert stats["cached_trajectories"] == min(1, len(trajectories))
    if kind == "nocache":
        assert stats["cached_trajectories"] == 0
    return buf


def load_into(kind: str, tmp_path: Path, directory: Path, *, window: int = 0) -> TrajectoryReplayBuffer:
    """A buffer of storage path ``kind`` that loaded the buffer directory ``directory``."""
    own = {"auto_save": True, "auto_save_path": str(tmp_path / f"own-{kind}")}
    options = {
        "memory": {},
        "ring": {},
        "cached": {"cache_size": 100, **own},
        "disk": {"cache_size": 1, **own},
        "checkpoint": {"cache_size": 1, **own},
        "disk-ring": {"cache_size": 2, **own},
        "nocache": {"enable_cache": False, **own},
    }[kind]
    with ring_wrapping(kind.endswith("ring")):
        buf = TrajectoryReplayBuffer(seed=SEED, sample_window_size=window, **options)
    buf.load_checkpoint(str(directory))
    return buf


def write_rlinf_directory(path: Path, trajectories: list[Trajectory], fmt: str) -> None:
    """Write ``trajectories`` the way RLinf's head does (its file names, index and metadata)."""
    path.mkdir(parents=True)
    table = {}
    for tid, traj in enumerate(trajectories):
        data = traj.to_dict()
        data["model_weights_id"] = WEIGHTS_ID
        name = f"trajectory_{tid}_{WEIGHTS_ID}.{fmt}"
        if fmt == "pt":
            torch.save(data, path / name)
        else:
            with open(path / name, "wb") as f:
                pickle.dump(data, f)
        rows, num_envs = traj.prev_logprobs.shape[:2]
        table[str(tid)] = {
            "num_samples": int(rows * num_envs),  # RLinf's unreliable count
            "trajectory_id": tid,
            "max_episode_length": traj.max_episode_length,
            "shape": list(traj.rewards.shape),
            "model_weights_id": WEIGHTS_ID,
        }
    (path / "trajectory_index.json").write_text(
        json.dumps({"trajectory_index": table, "trajectory_id_list": list(range(len(trajectories)))})
    )
    total = sum(int(t.rewards.shape[0] * t.rewards.shape[1]) for t in trajectories)
    (path / "metadata.json").write_text(
        json.dumps(
            {
                "trajectory_format": fmt,
                "size": len(trajectories),
                "total_samples": total,
                "trajectory_counter": len(trajectories),
                "seed": 7,
            }
        )
    )


def coded_set(shapes: list[tuple[int, int, int]], layout: str = "rlinf", first: int = 0, **kw) -> list:
    return [
        coded_trajectory(first + i, n=n, e=e, num_envs=b, layout=layout, **kw)
        for i, (n, e, b) in enumerate(shapes)
    ]


def codes_of(batch: dict) -> torch.Tensor:
    return batch["curr_obs"]["states"][:, 0].to(torch.int64)


def trajectories_of(batch: dict) -> set[int]:
    return set((codes_of(batch) // 1000).tolist())


def all_pairs(shapes: list[tuple[int, int, int]], first: int = 0) -> set[tuple[int, int]]:
    """Every (code, env) transition of coded trajectories ``first, first + 1, ...``."""
    return {
        (1000 * (first + i) + 100 * k + s, env)
        for i, (n, e, b) in enumerate(shapes)
        for k in range(e)
        for s in range(n)
        for env in range(b)
    }


def sampled_pairs(batch: dict) -> set[tuple[int, int]]:
    env = batch["curr_obs"]["env_ids"][:, 0].tolist()
    return set(zip(codes_of(batch).tolist(), env, strict=True))


def check_coded_batch(batch: dict, shapes: list[tuple[int, int, int]], first: int = 0) -> None:
    """Every row is a real aligned transition of the coded trajectory its code names."""
    assert_aligned(batch)
    codes = codes_of(batch)
    traj = codes // 1000 - first
    assert ((traj >= 0) & (traj < len(shapes))).all()
    n = torch.tensor([s[0] for s in shapes])[traj]
    e = torch.tensor([s[1] for s in shapes])[traj]
    b = torch.tensor([s[2] for s in shapes])[traj]
    step, epoch = codes % 100, (codes % 1000) // 100
    assert (step < n).all() and (epoch < e).all()
    expected_done = step == n - 1
    assert torch.equal(batch["dones"][:, 0], expected_done), "dones misaligned"
    assert torch.equal(batch["truncations"][:, 0], expected_done)
    assert not batch["terminations"].any()
    env = batch["curr_obs"]["env_ids"][:, 0]
    assert ((env >= 0) & (env < b)).all()
    if "main_images" in batch["curr_obs"]:
        assert batch["curr_obs"]["main_images"].dtype == torch.uint8
        assert batch["next_obs"]["main_images"].dtype == torch.uint8
        img = (codes % 251).to(torch.uint8)
        assert (batch["curr_obs"]["main_images"] == img[:, None, None, None]).all()
    assert (batch["rewards"] != POISON).all()


def chi_square(observed: np.ndarray, expected: np.ndarray) -> float:
    observed = np.asarray(observed, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return float(((observed - expected) ** 2 / expected).sum())


def chi_square_bound(df: int, p: float = 1e-6) -> float:
    """A value a chi-square(df) variable exceeds with probability at most ``p``.

    Laurent & Massart (2000), Lemma 1: P(X - df >= 2 sqrt(df x) + 2 x) <= exp(-x). It is valid
    for every df (no table, no scipy) and is more generous than the exact quantile.
    """
    x = math.log(1 / p)
    return df + 2 * math.sqrt(df * x) + 2 * x


def flat_fields(traj: Trajectory) -> dict[tuple[str, ...], torch.Tensor]:
    """Columns of an aligned-layout trajectory as ``[T * B, ...]`` (step-major)."""
    out = {}
    for name, value in traj.to_dict().items():
        if isinstance(value, dict):
            for sub, tensor in value.items():
                out[(name, sub)] = tensor.reshape(-1, *tensor.shape[2:])
        elif isinstance(value, torch.Tensor):
            out[(name,)] = value.reshape(-1, *value.shape[2:])
    return out


class ReferenceSampler:
    """The obvious implementation: one concatenated tensor per key, ``randint`` indexes it."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.columns: dict[tuple[str, ...], torch.Tensor] = {}

    def set_window(self, aligned_trajectories: list[Trajectory]) -> None:
        """The window's trajectories, oldest first, in the aligned layout."""
        parts = [flat_fields(t) for t in aligned_trajectories]
        self.columns = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def sample(self, num: int) -> dict:
        total = next(iter(self.columns.values())).shape[0]
        idx = torch.randint(0, total, (num,), generator=self.generator)
        out: dict = {}
        for key, tensor in self.columns.items():
            if len(key) == 1:
                out[key[0]] = tensor[idx]
            else:
                out.setdefault(key[0], {})[key[1]] = tensor[idx]
        return out


def assert_batches_equal(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        if isinstance(value, dict):
            assert isinstance(got[key], dict), key
            assert_batches_equal(got[key], value)
        else:
            assert got[key].dtype == value.dtype, key
            assert got[key].shape == value.shape, key
            assert torch.equal(got[key], value), f"{key} differs from the reference"


def batches_equal(a: dict, b: dict) -> bool:
    try:
        assert_batches_equal(a, b)
    except AssertionError:
        return False
    return True


# -- alignment -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", STORAGE)
def test_sample_from_rlinf_fixture_is_aligned_on_every_storage_path(fixture_dir, tmp_path, kind):
    buf = load_into(kind, tmp_path, fixture_dir)
    assert buf.size == 3 and buf.total_samples == 48
    batch = buf.sample(3000)
    assert_aligned(batch, n=4)
    assert not batch["terminations"].any()
    codes = set(codes_of(batch).tolist())
    assert codes == {1000 * i + 100 * k + s for i in range(3) for k in range(2) for s in range(4)}
    assert batch["curr_obs"]["main_images"].dtype == torch.uint8
    assert tuple(batch["curr_obs"]["main_images"].shape) == (3000, 8, 8, 3)


@pytest.mark.parametrize("kind", ["memory", "disk", "nocache"])
def test_sample_from_rlinf_fixture_converted_to_pkl_is_aligned(fixture_dir, tmp_path, kind):
    converter = TrajectoryReplayBuffer(sample_window_size=0, trajectory_format="pkl")
    converter.load_checkpoint(str(fixture_dir))
    converter.save_checkpoint(str(tmp_path / "as-pkl"))
    assert sorted(p.suffix for p in (tmp_path / "as-pkl").glob("trajectory_[0-9]*")) == [".pkl"] * 3
    buf = load_into(kind, tmp_path, tmp_path / "as-pkl")
    assert buf.total_samples == 48
    assert_aligned(buf.sample(3000), n=4)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", STORAGE)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_sample_never_misaligns_any_layout_on_any_storage_path(tmp_path, layout, kind, fmt):
    trajectories = coded_set(SHAPES, layout=layout)
    buf = build(kind, tmp_path, trajectories, fmt=fmt, calls=3)
    assert buf.total_samples == sum(n * e * b for n, e, b in SHAPES)
    batch = buf.sample(4000)
    check_coded_batch(batch, SHAPES)
    assert sampled_pairs(batch) == all_pairs(SHAPES), "some transitions were never sampled"


@pytest.mark.parametrize("fmt", FILE_FORMATS)
@pytest.mark.parametrize("kind", ["memory", "ring", "cached", "disk", "disk-ring", "nocache"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_sample_from_rlinf_written_directory_is_aligned(tmp_path, layout, kind, fmt):
    """Files in RLinf's layout (extra rows on disk) are aligned when read back, also lazily."""
    shapes = [(4, 3, 2), (2, 2, 3), (3, 1, 1), (5, 2, 2)]
    write_rlinf_directory(tmp_path / "rlinf", coded_set(shapes, layout=layout), fmt)
    buf = load_into(kind, tmp_path, tmp_path / "rlinf")
    assert buf.size == 4
    assert buf.total_samples == sum(n * e * b for n, e, b in shapes)
    batch = buf.sample(3000)
    check_coded_batch(batch, shapes)
    assert sampled_pairs(batch) == all_pairs(shapes)


@pytest.mark.parametrize("kind", ["nocache", "disk"])
def test_sample_is_aligned_while_writes_are_pending(tmp_path, kind):
    """Sampling right after adding (files possibly not written yet) reads the pending copies."""
    options = {"enable_cache": False} if kind == "nocache" else {"cache_size": 1}
    buf = TrajectoryReplayBuffer(
        seed=SEED, sample_window_size=0, auto_save=True, auto_save_path=str(tmp_path / "own"), **options
    )
    for i, (n, e, b) in enumerate(SHAPES):
        buf.add_trajectories([coded_trajectory(i, n=n, e=e, num_envs=b)])
        check_coded_batch(buf.sample(500), SHAPES[: i + 1])
    buf.flush()
    batch = buf.sample(3000)
    check_coded_batch(batch, SHAPES)
    assert sampled_pairs(batch) == all_pairs(SHAPES)
    buf.close()


@pytest.mark.parametrize("kind", ["memory", "disk", "nocache"])
def test_sample_is_unaffected_by_later_changes_to_the_added_tensors(tmp_path, kind):
    """add_trajectories copies the data: the caller may reuse its rollout tensors at once."""
    options = {
        "memory": {},
        "disk": {"cache_size": 1, "auto_save": True, "auto_save_path": str(tmp_path / "own")},
        "nocache": {"enable_cache": False, "auto_save": True, "auto_save_path": str(tmp_path / "own")},
    }[kind]
    buf = TrajectoryReplayBuffer(seed=SEED, sample_window_size=0, **options)
    for layout in ("aligned", "rlinf"):
        buf.clear()
        trajectories = coded_set(SHAPES[:3], layout=layout)
        buf.add_trajectories(trajectories)
        for traj in trajectories:  # scribble over every input tensor right after the call
            for value in traj.to_dict().values():
                for tensor in value.values() if isinstance(value, dict) else [value]:
                    if isinstance(tensor, torch.Tensor):
                        tensor.fill_(77)
        buf.flush()
        batch = buf.sample(2000)
        check_coded_batch(batch, SHAPES[:3])
        assert sampled_pairs(batch) == all_pairs(SHAPES[:3])


# -- batch format ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_batch_has_rollout_structure_and_keeps_dtypes(tmp_path, kind):
    buf = build(kind, tmp_path, coded_set(SHAPES[:3]))
    batch = buf.sample(64)
    assert set(batch) == CODED_STEP_FIELDS | CODED_DICT_FIELDS
    for absent in ("max_episode_length", "model_weights_id", "model_update_count"):
        assert absent not in batch
    assert set(batch["curr_obs"]) == {"states", "env_ids", "main_images"}
    assert set(batch["next_obs"]) == {"states", "env_ids", "main_images"}
    assert set(batch["forward_inputs"]) == {"action"}
    assert batch["curr_obs"]["main_images"].dtype == torch.uint8
    assert batch["next_obs"]["main_images"].dtype == torch.uint8
    assert tuple(batch["curr_obs"]["main_images"].shape) == (64, 4, 4, 3)
    assert batch["dones"].dtype == torch.bool
    assert batch["intervene_flags"].dtype == torch.bool
    assert batch["curr_obs"]["env_ids"].dtype == torch.int64
    assert batch["actions"].dtype == torch.float32
    assert tuple(batch["actions"].shape) == (64, 2)
    assert tuple(batch["rewards"].shape) == (64, 1)
    assert tuple(batch["curr_obs"]["states"].shape) == (64, 3)


def test_fixture_batch_has_no_file_metadata_keys(fixture_dir):
    buf = TrajectoryReplayBuffer(sample_window_size=0)
    buf.load_checkpoint(str(fixture_dir))
    batch = buf.sample(16)
    assert "max_episode_length" not in batch and "model_weights_id" not in batch
    assert isinstance(batch["curr_obs"], dict) and isinstance(batch["next_obs"], dict)
    assert isinstance(batch["forward_inputs"], dict)
    for value in batch.values():
        for tensor in value.values() if isinstance(value, dict) else [value]:
            assert isinstance(tensor, torch.Tensor) and tensor.shape[0] == 16


# -- exactly num_chunks ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", STORAGE)
def test_sample_returns_exactly_num_chunks_rows_even_from_a_tiny_window(tmp_path, kind):
    trajectories = coded_set([(3, 2, 2), (1, 1, 2)])
    buf = build(kind, tmp_path, trajectories, window=1)
    assert buf.get_stats()["window_transitions"] == 2
    for num in (1, 2, 3, 1000):
        batch = buf.sample(num)
        for value in batch.values():
            for tensor in value.values() if isinstance(value, dict) else [value]:
                assert tensor.shape[0] == num
    batch = buf.sample(1000)
    check_coded_batch(batch, [(1, 1, 2)], first=1)
    assert sampled_pairs(batch) == {(1000, 0), (1000, 1)}


# -- window ----------------------------------------------------------------------------------


def test_sample_only_from_newest_window_in_memory_and_older_ones_leave_the_buffer():
    shapes = [(2, 2, 1 + i % 3) for i in range(10)]
    buf = TrajectoryReplayBuffer(seed=SEED, sample_window_size=3)
    trajectories = coded_set(shapes)
    for chunk in (trajectories[:2], trajectories[2:5], trajectories[5:6], trajectories[6:]):
        buf.add_trajectories(chunk)
    assert buf.size == 3
    assert buf.total_samples == sum(4 * b for _, _, b in shapes[7:])
    assert buf.trajectory_counter == 10
    stats = buf.get_stats()
    assert stats["evicted_trajectories"] == 7
    assert stats["window_trajectories"] == 3
    assert stats["size"] == 3
    batch = buf.sample(3000)
    assert trajectories_of(batch) == {7, 8, 9}
    check_coded_batch(batch, shapes[7:], first=7)


@pytest.mark.parametrize("kind", ["cached", "disk", "nocache"])
def test_sample_only_from_newest_window_with_auto_save_while_older_stay_indexed(tmp_path, kind):
    shapes = [(2, 2, 1 + i % 3) for i in range(10)]
    buf = build(kind, tmp_path, coded_set(shapes), window=3, calls=4)
    assert buf.size == 10
    assert buf.total_samples == sum(4 * b for _, _, b in shapes)
    stats = buf.get_stats()
    assert stats["evicted_trajectories"] == 0
    assert stats["window_trajectories"] == 3
    assert stats["window_transitions"] == sum(4 * b for _, _, b in shapes[7:])
    batch = buf.sample(3000)
    assert trajectories_of(batch) == {7, 8, 9}
    check_coded_batch(batch, shapes[7:], first=7)
    # widening the window makes the older, still indexed trajectories sampleable again
    buf.sample_window_size = 0
    assert trajectories_of(buf.sample(3000)) == set(range(10))


@pytest.mark.parametrize("kind", ["memory", "cached", "disk"])
def test_window_zero_samples_every_trajectory(tmp_path, kind):
    shapes = [(2, 1, 1)] * 12
    buf = build(kind, tmp_path, coded_set(shapes), window=0, calls=5)
    assert buf.size == 12 and buf.get_stats()["evicted_trajectories"] == 0
    assert trajectories_of(buf.sample(3000)) == set(range(12))


def test_window_larger_than_the_buffer_samples_everything(tmp_path):
    buf = build("memory", tmp_path, coded_set([(2, 1, 1)] * 4), window=100)
    assert buf.size == 4 and buf.get_stats()["evicted_trajectories"] == 0
    assert trajectories_of(buf.sample(2000)) == {0, 1, 2, 3}


def test_shrinking_the_window_in_memory_evicts_the_oldest(tmp_path):
    buf = build("memory", tmp_path, coded_set([(2, 1, 1)] * 6), window=0)
    buf.sample_window_size = 2
    assert buf.size == 2 and buf.get_stats()["evicted_trajectories"] == 4
    assert buf.total_samples == 4
    assert trajectories_of(buf.sample(1000)) == {4, 5}


def test_loading_more_trajectories_than_the_window_in_memory_keeps_the_newest(fixture_dir):
    buf = TrajectoryReplayBuffer(seed=SEED, sample_window_size=2)
    buf.load_checkpoint(str(fixture_dir))
    assert buf.size == 2 and buf.total_samples == 32
    assert buf.get_stats()["evicted_trajectories"] == 1
    batch = buf.sample(2000)
    assert_aligned(batch, n=4)
    assert trajectories_of(batch) == {1, 2}


def test_loading_into_auto_save_buffer_with_window_samples_only_the_newest(fixture_dir, tmp_path):
    buf = TrajectoryReplayBuffer(
        seed=SEED, sample_window_size=2, cache_size=1, auto_save=True, auto_save_path=str(tmp_path / "own")
    )
    buf.load_checkpoint(str(fixture_dir))
    assert buf.size == 3 and buf.total_samples == 48
    batch = buf.sample(2000)
    assert_aligned(batch, n=4)
    assert trajectories_of(batch) == {1, 2}


# -- uniformity ------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [0, 3])
@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_sample_is_uniform_over_transitions_not_trajectories(tmp_path, kind, window):
    shapes = [(3, 1, 2), (1, 1, 1), (4, 2, 2), (5, 3, 4), (10, 2, 5)]  # 6, 1, 16, 60, 100 transitions
    buf = build(kind, tmp_path, coded_set(shapes, images=False), window=window)
    in_window = shapes[-window:] if window else shapes
    first = len(shapes) - len(in_window)
    sizes = np.array([n * e * b for n, e, b in in_window], dtype=np.float64)
    draws = 10 * 12_000
    traj = np.concatenate([(codes_of(buf.sample(12_000)) // 1000).numpy() for _ in range(10)])
    counts = np.bincount(traj - first, minlength=len(in_window))
    assert counts.sum() == draws and len(counts) == len(in_window)
    df = len(in_window) - 1
    stat = chi_square(counts, draws * sizes / sizes.sum())
    assert stat < chi_square_bound(df), f"chi2={stat:.1f} counts={counts.tolist()}"
    # the test has power: uniform-over-trajectories would be rejected by far
    assert chi_square(counts, np.full(len(in_window), draws / len(in_window))) > 10 * chi_square_bound(df)


@pytest.mark.parametrize("kind", ["memory", "disk", "nocache"])
def test_sample_is_uniform_over_rows_within_a_trajectory(tmp_path, kind):
    n, e, b = 5, 2, 3
    buf = build(kind, tmp_path, [coded_trajectory(0, n=n, e=e, num_envs=b, images=False)])
    draws = 60_000
    batch = buf.sample(draws)
    cell = (codes_of(batch) % 1000 // 100 * n + codes_of(batch) % 100) * b
    cell = (cell + batch["curr_obs"]["env_ids"][:, 0]).numpy()
    counts = np.bincount(cell, minlength=n * e * b)
    assert len(counts) == n * e * b
    stat = chi_square(counts, np.full(n * e * b, draws / (n * e * b)))
    assert stat < chi_square_bound(n * e * b - 1), f"chi2={stat:.1f} counts={counts.tolist()}"


def test_chi_square_bound_is_generous():
    # sanity check of the bound against known 1e-6 upper quantiles of chi-square
    assert chi_square_bound(1) > 23.93
    assert chi_square_bound(4) > 30.99
    assert chi_square_bound(29) > 70.0


# -- reproducibility -------------------------------------------------------------------------


def _session(buf: TrajectoryReplayBuffer) -> list[dict]:
    out = []
    buf.add_trajectories(coded_set(SHAPES[:2]))
    out.append(buf.sample(100))
    out.append(buf.sample(7))
    buf.add_trajectories(coded_set(SHAPES[2:], first=2))
    if buf.auto_save:
        buf.flush()
    out.append(buf.sample(300))
    return out


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_same_seed_and_calls_give_identical_batches(tmp_path, kind):
    def make(tag: str, seed: int) -> TrajectoryReplayBuffer:
        if kind == "memory":
            return TrajectoryReplayBuffer(seed=seed, sample_window_size=4)
        return TrajectoryReplayBuffer(
            seed=seed,
            sample_window_size=4,
            cache_size=1,
            auto_save=True,
            auto_save_path=str(tmp_path / tag),
        )

    a, b, c = _session(make("a", 99)), _session(make("b", 99)), _session(make("c", 100))
    for x, y in zip(a, b, strict=True):
        assert_batches_equal(x, y)
    assert not any(batches_equal(x, z) for x, z in zip(a, c, strict=True))


def test_batch_does_not_depend_on_the_storage_path(tmp_path):
    trajectories = coded_set(SHAPES)
    batches = {
        kind: [buf.sample(n) for n in (1, 333, 2000)]
        for kind in STORAGE
        for buf in [build(kind, tmp_path, trajectories, window=4, calls=2)]
    }
    # a disk-backed buffer whose cache was dropped reads every row from its files
    emptied = build("cached", tmp_path / "emptied", trajectories, window=4, calls=2)
    emptied.clear_cache()
    assert emptied.get_stats()["cached_trajectories"] == 0 and emptied.size == len(trajectories)
    batches["after clear_cache"] = [emptied.sample(n) for n in (1, 333, 2000)]
    for kind, got in batches.items():
        for x, y in zip(got, batches["memory"], strict=True):
            assert batches_equal(x, y), f"{kind} path samples differently from memory"


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_calls_that_do_not_sample_do_not_change_the_batches(tmp_path, kind):
    plain = build(kind, tmp_path / "plain", coded_set(SHAPES), window=4)
    busy = build(kind, tmp_path / "busy", coded_set(SHAPES), window=4)
    for i, num in enumerate((5, 50, 500)):
        busy.get_stats()
        busy.is_ready(3)
        repr(busy)
        busy.flush()
        busy.save_checkpoint(str(tmp_path / f"ckpt-{i}"))
        assert_batches_equal(busy.sample(num), plain.sample(num))


def test_sampling_leaves_global_rng_states_untouched(tmp_path):
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    before = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    for kind in ("memory", "disk"):
        buf = build(kind, tmp_path, coded_set(SHAPES), window=3)
        for n in (1, 10, 1000):
            buf.sample(n)
    after = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    assert torch.equal(before[0], after[0]), "torch global RNG was used"
    assert before[1][0] == after[1][0] and np.array_equal(before[1][1], after[1][1])
    assert before[1][2:] == after[1][2:], "numpy global RNG was used"
    assert before[2] == after[2], "python random was used"


def test_global_seed_does_not_change_the_batch(tmp_path):
    buf_a = build("memory", tmp_path, coded_set(SHAPES))
    buf_b = build("memory", tmp_path, coded_set(SHAPES))
    torch.manual_seed(0)
    np.random.seed(0)
    a = buf_a.sample(200)
    torch.manual_seed(1)
    np.random.seed(1)
    b = buf_b.sample(200)
    assert_batches_equal(a, b)


# -- reference implementation ----------------------------------------------------------------


def _aligned_versions(shapes: list[tuple[int, int, int]], first: int = 0) -> list[Trajectory]:
    return coded_set(shapes, layout="aligned", first=first)


@pytest.mark.parametrize("kind", ["memory", "ring"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_in_memory_sample_equals_reference_implementation(layout, kind):
    shapes = SHAPES + [(2, 3, 2), (4, 1, 3)]
    window = 5
    with ring_wrapping(kind == "ring"):
        buf = TrajectoryReplayBuffer(seed=777, sample_window_size=window)
    ref = ReferenceSampler(777)
    buf.add_trajectories(coded_set(shapes[:3], layout=layout))
    ref.set_window(_aligned_versions(shapes[:3]))
    assert_batches_equal(buf.sample(50), ref.sample(50))
    buf.add_trajectories(coded_set(shapes[3:], layout=layout, first=3))
    ref.set_window(_aligned_versions(shapes[-window:], first=len(shapes) - window))
    for num in (1, 257, 4000):
        assert_batches_equal(buf.sample(num), ref.sample(num))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_disk_backed_sample_equals_reference_implementation(tmp_path, layout, fmt):
    shapes = SHAPES + [(2, 3, 2), (4, 1, 3)]
    window = 6
    buf = TrajectoryReplayBuffer(
        seed=4242,
        sample_window_size=window,
        cache_size=2,
        auto_save=True,
        auto_save_path=str(tmp_path / "own"),
        trajectory_format=fmt,
    )
    ref = ReferenceSampler(4242)
    trajectories = coded_set(shapes, layout=layout)
    buf.add_trajectories(trajectories[:3])
    buf.add_trajectories(trajectories[3:5])
    buf.add_trajectories(trajectories[5:])
    buf.flush()
    stats = buf.get_stats()
    assert stats["cached_trajectories"] == 2 and stats["window_trajectories"] == window
    assert stats["pending_writes"] == 0
    ref.set_window(_aligned_versions(shapes[-window:], first=len(shapes) - window))
    for num in (1, 257, 4000):
        assert_batches_equal(buf.sample(num), ref.sample(num))


def test_rlinf_directory_loaded_from_disk_equals_reference_implementation(tmp_path):
    shapes = [(4, 3, 2), (2, 2, 3), (3, 1, 1), (5, 2, 2)]
    write_rlinf_directory(tmp_path / "rlinf", coded_set(shapes), "pt")
    buf = TrajectoryReplayBuffer(
        seed=31, sample_window_size=3, cache_size=1, auto_save=True, auto_save_path=str(tmp_path / "own")
    )
    buf.load_checkpoint(str(tmp_path / "rlinf"))
    ref = ReferenceSampler(31)
    ref.set_window(_aligned_versions(shapes[1:], first=1))
    for num in (5, 3000):
        assert_batches_equal(buf.sample(num), ref.sample(num))


@pytest.mark.parametrize("kind", ["memory", "disk", "nocache"])
def test_loaded_then_extended_buffer_equals_reference_implementation(tmp_path, kind):
    """Loaded (file-backed) trajectories and newly added ones form one window, oldest first."""
    shapes = SHAPES + [(2, 3, 2)]
    write_rlinf_directory(tmp_path / "rlinf", coded_set(shapes[:4]), "pkl")
    buf = load_into(kind, tmp_path, tmp_path / "rlinf", window=6)
    buf.add_trajectories(coded_set(shapes[4:], first=4))
    if buf.auto_save:
        buf.flush()
    assert buf.trajectory_counter == len(shapes)
    ref = ReferenceSampler(SEED)
    ref.set_window(_aligned_versions(shapes[-6:], first=len(shapes) - 6))
    for num in (3, 2500):
        assert_batches_equal(buf.sample(num), ref.sample(num))
