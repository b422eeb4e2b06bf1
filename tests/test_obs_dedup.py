"""Observations stored once: ``next_obs`` rows equal to the next step's ``curr_obs`` are read from
``curr_obs`` in the in-memory ring (``dedup_next_obs``). Whatever the rollout, every batch, every
trajectory read back and every file written must be bit for bit what a buffer storing both
columns whole gives, and what was added."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TrackedBuffer as TrajectoryReplayBuffer
from conftest import ring_wrapping

from rlinf_replay_buffer import Trajectory, formats
from rlinf_replay_buffer.cache import TrajectoryCache
from rlinf_replay_buffer.dedup import kept_rows, pairs_of
from rlinf_replay_buffer.directory import read_directory
from rlinf_replay_buffer.schema import Schema

OBS = ("curr_obs", "next_obs")


def rollout(
    code: int,
    steps: int = 6,
    envs: int = 2,
    differ: str = "none",
    hw: int = 4,
    states: bool = True,
    unpaired: bool = False,
) -> Trajectory:
    """A rollout whose ``next_obs[t]`` is ``curr_obs[t + 1]`` except as ``differ`` says:
    ``"none"``, ``"dones"`` (auto-reset: a new observation where an episode ended), ``"random"``
    (a byte or a float changed in some rows, signed zeros and NaN payloads included) or
    ``"all"``. ``actions`` carry ``(code, t, b)``; ``unpaired`` adds a ``next_obs`` key that has
    no ``curr_obs`` partner."""
    g = torch.Generator().manual_seed(code)
    T, B = steps, envs
    frames = torch.randint(0, 256, (T + 1, B, hw, hw, 3), generator=g, dtype=torch.uint8)
    st = torch.randn(T + 1, B, 9, generator=g)
    st[:, :, 0] = 0.0
    curr = {"main_images": frames[:-1].clone()}
    nxt = {"main_images": frames[1:].clone()}
    if states:
        curr["states"], nxt["states"] = st[:-1].clone(), st[1:].clone()
    dones = torch.rand(T, B, 1, generator=g) < 0.25
    if differ == "dones":
        where = dones[..., 0]
        nxt["main_images"][where] = torch.randint(0, 256, (int(where.sum()), hw, hw, 3), generator=g).to(
            torch.uint8
        )
        if states:
            nxt["states"][where] = torch.randn(int(where.sum()), 9, generator=g)
    elif differ == "random":
        rows = torch.rand(T, B, generator=g) < 0.3
        nxt["main_images"][rows] ^= torch.tensor(1, dtype=torch.uint8)  # one bit of every byte
        if states:
            zeros = torch.rand(T, B, generator=g) < 0.15
            nxt["states"][..., 0][zeros] = -0.0  # bits differ, values compare equal
            nan_rows = torch.rand(T, B, generator=g) < 0.1
            nxt["states"][..., 1][nan_rows] = float("nan")
            curr["states"][..., 1][nan_rows.roll(-1, 0)] = float("nan")
    elif differ == "all":
        nxt = {k: v.flip(-1).clone() if v.dtype == torch.uint8 else v + 1 for k, v in nxt.items()}
    if unpaired:
        nxt["goal"] = torch.randint(0, 256, (T, B, 16), generator=g, dtype=torch.uint8)
    ts = torch.arange(T, dtype=torch.float32)[:, None].expand(T, B)
    bs = torch.arange(B, dtype=torch.float32)[None, :].expand(T, B)
    actions = torch.stack([torch.full((T, B), float(code)), ts, bs], dim=-1)
    return Trajectory(
        max_episode_length=T,
        actions=actions,
        rewards=torch.randn(T, B, 1, generator=g),
        dones=dones,
        curr_obs=curr,
        next_obs=nxt,
    )


def bits(t: torch.Tensor) -> bytes:
    return (
        t.contiguous().numpy().tobytes()
        if t.dtype != torch.bfloat16
        else t.view(torch.int16).numpy().tobytes()
    )


def same_bits(a, b) -> bool:
    """Nested dicts of tensors equal bit for bit (dtypes and shapes too)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_bits(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and bits(a) == bits(b)
        )
    return a == b


def assert_files_hold_both_observations(
    directory: Path, fmt: str, added: dict[int, Trajectory], count: int
) -> None:
    """The ``count`` trajectory files of ``directory`` (``pt``/``pkl``) hold ``curr_obs`` and
    ``next_obs`` in full, as added (``added`` by the code in ``actions[0, 0, 0]``)."""
    contents, _ = read_directory(str(directory))
    assert len(contents.records) == count
    for record in contents.records:
        data = formats.read(record.path, fmt)
        want = added[int(data["actions"][0, 0, 0])]
        assert same_bits(data["curr_obs"], want.curr_obs)
        assert same_bits(data["next_obs"], want.next_obs)


def pair_of_buffers(**kwargs):
    return TrajectoryReplayBuffer(**kwargs), TrajectoryReplayBuffer(**kwargs, dedup_next_obs=False)


def assert_same_batches(on, off, draws: int = 4, n: int = 64) -> None:
    for _ in range(draws):
        a, b = on.sample(n), off.sample(n)
        assert same_bits(a, b)


def assert_rows_match(batch, added: dict[int, Trajectory]) -> None:
    """Every sampled row is the added row its actions name (plain reference)."""
    codes = batch["actions"].to(torch.int64)
    for i, (code, t, b) in enumerate(codes.tolist()):
        traj = added[code]
        for field in OBS:
            for key, value in getattr(traj, field).items():
                assert bits(batch[field][key][i]) == bits(value[t, b]), (field, key, code, t, b)


def assert_trajectory(got: Trajectory, want: Trajectory) -> None:
    for field in OBS:
        assert same_bits(getattr(got, field), getattr(want, field)), field
    assert same_bits(got.actions, want.actions)


ROLLOUTS = {
    "shifted everywhere": {},
    "episode ends": {"differ": "dones"},
    "random differences": {"differ": "random"},
    "differing everywhere": {"differ": "all"},
    "one env": {"envs": 1, "differ": "dones"},
    "one step": {"steps": 1, "envs": 3},
    "images only": {"states": False, "differ": "dones"},
    "next_obs key without a curr_obs partner": {"unpaired": True, "differ": "random"},
}


@pytest.mark.parametrize("case", list(ROLLOUTS))
def test_sampled_batches_are_bit_identical_with_and_without_dedup(case):
    """Ring wrap-around and eviction included: the window is smaller than what is added."""
    spec = ROLLOUTS[case]
    with ring_wrapping():
        on, off = pair_of_buffers(seed=7, sample_window_size=4)
    added = {i: rollout(i, **spec) for i in range(11)}
    for i in range(0, 11, 2):  # one and two trajectories per call
        batch = [added[j] for j in range(i, min(i + 2, 11))]
        on.add_trajectories(batch)
        off.add_trajectories(batch)
        assert_same_batches(on, off, draws=2)
    batch = on.sample(128)
    assert_rows_match(batch, added)
    s_on, s_off = on.get_stats(), off.get_stats()
    assert s_on["cached_trajectories"] == s_off["cached_trajectories"] == 4
    if spec.get("steps", 6) > 1 and spec.get("differ") != "all":  # rows were read from curr_obs
        assert s_on["cached_bytes"] < 0.9 * s_off["cached_bytes"]


@pytest.mark.parametrize("case", list(ROLLOUTS))
def test_get_trajectory_and_iter_trajectories_return_what_was_added(case):
    with ring_wrapping():
        buf = TrajectoryReplayBuffer(seed=1, sample_window_size=3)
    added = {i: rollout(i, **ROLLOUTS[case]) for i in range(5)}
    ids = buf.add_trajectories(list(added.values()))
    for tid in ids[-3:]:
        assert_trajectory(buf.get_trajectory(tid), added[ids.index(tid)])
    got = list(buf.iter_trajectories())
    assert len(got) == 3
    for traj in got:
        assert_trajectory(traj, added[int(traj.actions[0, 0, 0])])


def test_cached_bytes_drop_for_a_duplicate_heavy_image_rollout():
    on, off = pair_of_buffers(sample_window_size=8)
    for i in range(8):
        t = rollout(i, steps=20, envs=2, hw=32, states=False)
        on.add_trajectories([t])
        off.add_trajectories([t])
    cached_on, cached_off = on.get_stats()["cached_bytes"], off.get_stats()["cached_bytes"]
    image = 32 * 32 * 3
    assert cached_off == 8 * 40 * (2 * image + 3 * 4 + 4 + 1)
    assert cached_on <= 0.55 * cached_off
    assert_same_batches(on, off)


def test_a_rollout_differing_everywhere_costs_no_more_memory():
    on, off = pair_of_buffers(sample_window_size=8)
    for i in range(8):
        t = rollout(i, steps=10, hw=16, differ="all")
        on.add_trajectories([t])
        off.add_trajectories([t])
    cached_on, cached_off = on.get_stats()["cached_bytes"], off.get_stats()["cached_bytes"]
    assert cached_off <= cached_on <= 1.02 * cached_off  # a source number per row, nothing more
    assert_same_batches(on, off)


def test_a_byte_bounded_cache_counts_the_bytes_it_really_holds():
    """Without ``auto_save`` the ring is the storage: a byte bound keeps more deduplicated
    trajectories, and never more bytes than the bound."""
    one = rollout(0, steps=20, hw=16, states=False)
    probe = TrajectoryReplayBuffer(dedup_next_obs=False)
    probe.add_trajectories([one])
    whole = probe.get_stats()["cached_bytes"]
    bound = int(3.5 * whole)
    on, off = pair_of_buffers(seed=3, sample_window_size=0, cache_max_bytes=bound)
    added = {i: rollout(i, steps=20, hw=16, states=False) for i in range(12)}
    for t in added.values():
        on.add_trajectories([t])
        off.add_trajectories([t])
    s_on, s_off = on.get_stats(), off.get_stats()
    assert s_off["cached_trajectories"] == 3
    assert s_on["cached_trajectories"] >= 6 and s_on["cached_bytes"] <= bound
    for traj in on.iter_trajectories():
        assert_trajectory(traj, added[int(traj.actions[0, 0, 0])])
    assert_rows_match(on.sample(200), added)


@pytest.mark.parametrize("fmt", ["pt", "pkl", "segment"])
def test_auto_save_in_each_format_samples_and_reads_back_as_without_dedup(tmp_path: Path, fmt):
    kwargs = {
        "seed": 5,
        "cache_size": 2,
        "sample_window_size": 6,
        "auto_save": True,
        "trajectory_format": fmt,
    }
    with ring_wrapping():
        on = TrajectoryReplayBuffer(**kwargs, auto_save_path=str(tmp_path / "on"))
        off = TrajectoryReplayBuffer(**kwargs, auto_save_path=str(tmp_path / "off"), dedup_next_obs=False)
    added = {i: rollout(i, differ="dones") for i in range(7)}
    for t in added.values():
        on.add_trajectories([t])
        off.add_trajectories([t])
    assert_same_batches(on, off)
    on.flush()
    off.flush()
    assert_same_batches(on, off)
    for traj in on.iter_trajectories():
        assert_trajectory(traj, added[int(traj.actions[0, 0, 0])])
    on.close()
    off.close()
    if fmt != "segment":  # RLinf's files: both observation dicts, in full
        assert_files_hold_both_observations(tmp_path / "on", fmt, added, 7)


@pytest.mark.parametrize("fmt", ["pt", "pkl", "segment"])
def test_checkpoints_hold_both_observations_in_full_and_load_then_sample_alike(tmp_path: Path, fmt):
    with ring_wrapping():
        on, off = pair_of_buffers(seed=9, sample_window_size=5)
    added = {i: rollout(i, differ="random", unpaired=True) for i in range(8)}
    for t in added.values():
        on.add_trajectories([t])
        off.add_trajectories([t])
    path = tmp_path / "ckpt"
    on.save_checkpoint(str(path), trajectory_format=fmt)
    if fmt != "segment":
        contents, _ = read_directory(str(path))
        assert len(contents.records) == 5
        for record in contents.records:
            data = formats.read(record.path, fmt)
            want = added[int(data["actions"][0, 0, 0])]
            assert same_bits(data["curr_obs"], want.curr_obs)
            assert same_bits(data["next_obs"], want.next_obs)
    again_on, again_off = pair_of_buffers(seed=11, sample_window_size=5)
    again_on.load_checkpoint(str(path))
    again_off.load_checkpoint(str(path))
    assert_same_batches(again_on, again_off)
    assert_rows_match(again_on.sample(100), added)
    for traj in again_on.iter_trajectories():
        assert_trajectory(traj, added[int(traj.actions[0, 0, 0])])


def test_the_setting_is_on_by_default_and_read_only():
    buf = TrajectoryReplayBuffer()
    assert buf.dedup_next_obs is True and buf.settings.dedup_next_obs is True
    with pytest.raises(AttributeError, match="dedup_next_obs is fixed when the buffer is built"):
        buf.dedup_next_obs = False  # type: ignore[misc]
    assert TrajectoryReplayBuffer(dedup_next_obs=False).dedup_next_obs is False


# -- the ring and the comparison, directly -----------------------------------------------------
def flat(traj: Trajectory) -> dict:
    out = {("actions",): traj.actions, ("rewards",): traj.rewards, ("dones",): traj.dones}
    for field in OBS:
        for key, value in getattr(traj, field).items():
            out[(field, key)] = value
    return {k: v.reshape(-1, *v.shape[2:]) for k, v in out.items()}


def test_pairs_are_next_obs_columns_with_a_matching_curr_obs_column():
    columns = flat(rollout(0, unpaired=True))
    columns[("curr_obs", "small")] = columns[("next_obs", "small")] = torch.zeros(12, 2)
    schema = Schema.of_columns(columns, lead_dims=1)
    assert pairs_of(schema) == (
        (("curr_obs", "main_images"), ("next_obs", "main_images")),
        (("curr_obs", "states"), ("next_obs", "states")),
    )
    assert pairs_of(schema, enabled=False) == ()


def test_the_ring_rebuilds_next_obs_when_pinned_rows_are_evicted_and_when_it_grows():
    schema = Schema.of_columns(flat(rollout(0)), lead_dims=1)
    cache = TrajectoryCache(max_trajectories=None, reserve_bytes=30 * schema.row_bytes, start_row=-5)
    added = {i: rollout(i, steps=3 if i < 3 else 9, differ="dones") for i in range(8)}
    cache.put(0, flat(added[0]), schema, envs=2)
    cache.put(1, flat(added[1]), schema, envs=2)
    pin = cache.pin([0, 1])
    for i in range(2, 8):  # longer trajectories from 3 on: the ring grows, then wraps and evicts
        cache.put(i, flat(added[i]), schema, envs=2)
    assert 0 not in cache and 1 not in cache
    for i in (0, 1):
        assert same_bits(cache.take(pin, i), flat(added[i]))
    cache.unpin(pin)
    assert cache.ids()
    for i in cache.ids():
        assert same_bits(cache.view(i), flat(added[i]))
    span = cache.rows
    offsets = torch.arange(span)
    rows = cache.gather(offsets, cache.newest_rows_start(span), span)
    want = [flat(added[i]) for i in cache.ids()]
    assert same_bits(rows, {k: torch.cat([w[k] for w in want]) for k in want[0]})


def test_kept_rows_are_the_differing_rows_and_the_last_step():
    g = torch.Generator().manual_seed(0)
    T, B = 12, 3
    curr = torch.randint(0, 256, (T * B, 700), generator=g, dtype=torch.uint8)  # not a multiple of 8
    nxt = torch.cat([curr[B:], torch.zeros(B, 700, dtype=torch.uint8)])
    nxt[5, 699] ^= 1  # the last byte only
    nxt[17, 0] ^= 128
    want = torch.zeros(T * B, dtype=torch.bool)
    want[[5, 17]] = True
    want[-B:] = True
    assert torch.equal(kept_rows(nxt, curr, B), want)
    assert kept_rows(nxt, curr, 0).all()  # envs unknown: every row kept
    strided = want.clone()
    strided[5] = False  # its changed byte is not in the strided rows
    assert torch.equal(kept_rows(nxt[:, ::2], curr[:, ::2], B), strided)
    floats = torch.zeros(T * B, 4)
    nxt_f = torch.cat([floats[B:], floats[:B]])
    nxt_f[3, 2] = -0.0  # equal as a value, not as bits
    nxt_f[7, 1] = float("nan")
    floats[7 + B, 1] = float("nan")  # the same NaN on both sides: equal bits
    kept = kept_rows(nxt_f, floats, B)
    assert torch.nonzero(kept).flatten().tolist() == [3, *range(T * B - B, T * B)]
    for dtype in (torch.bfloat16, torch.bool, torch.int16):
        x = torch.randint(0, 2, (T * B, 17), generator=g).to(dtype)
        y = torch.cat([x[B:], x[:B]])
        assert int(kept_rows(y, x, B).sum()) == B


def test_kept_rows_match_a_row_by_row_reference_on_random_rollouts():
    """Against ``any(next row != curr row + B)``: every differing row and the last step are
    kept; the result is exactly those rows, or every row (when most differ); a rollout with no
    difference keeps only the last step (the single-comparison path)."""
    g = torch.Generator().manual_seed(5)
    rng = np.random.default_rng(5)
    for case in range(300):
        T, B, width = int(rng.integers(1, 12)), int(rng.integers(1, 5)), int(rng.choice([1, 3, 8, 40, 1000]))
        dtype = [torch.uint8, torch.float32, torch.int64][case % 3]
        curr = torch.randint(0, 4, (T * B, width), generator=g).to(dtype)
        nxt = torch.cat([curr[B:], torch.randint(0, 4, (B, width), generator=g).to(dtype)])
        changes = int(rng.choice([0, 0, 1, 2, T * B // 2, T * B]))
        for r in rng.integers(0, T * B, changes).tolist():
            nxt[r, int(rng.integers(width))] += 1
        want = torch.zeros(T * B, dtype=torch.bool)
        want[: (T - 1) * B] = (nxt[: (T - 1) * B] != curr[B:]).any(dim=1)
        want[(T - 1) * B :] = True
        got = kept_rows(nxt, curr, B)
        assert bool((got | ~want).all()), case  # nothing that differs is dropped
        assert torch.equal(got, want) or bool(got.all()), case
        if not bool(want[: (T - 1) * B].any()):
            assert torch.equal(got, want), case


def test_most_rows_differing_keeps_every_row():
    g = torch.Generator().manual_seed(1)
    curr = torch.randint(0, 256, (40, 64), generator=g, dtype=torch.uint8)
    nxt = torch.randint(0, 256, (40, 64), generator=g, dtype=torch.uint8)
    nxt[:10] = curr[1:11]  # a few equal rows are kept too: the column is stored whole
    assert kept_rows(nxt, curr, 1).all()
