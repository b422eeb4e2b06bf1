"""``TrajectoryReplayBuffer.sample_sequences``: runs of consecutive steps of one env column.

Coded trajectories (see ``conftest``) carry in every row the code ``1000 * i + 100 * k + s`` of
trajectory ``i``, epoch ``k`` and step ``s``; ``dones`` is true exactly at ``s == n - 1``, so every
epoch is one episode and a run that crosses an episode end shows as a jump in the codes. The
distribution of starts is compared (chi-square) with an independent enumeration of the valid
starts, and each such test also checks that the same counts reject a plausible wrong answer.

Storage paths (``KINDS``): ``memory`` (rows in the in-memory store), ``ring`` (the in-memory
ring starting 7 rows before its end, so trajectories wrap around it), ``disk-pt`` /
``disk-segment`` (``auto_save`` with ``enable_cache=False``: every row read from files), and
``pending`` (``auto_save`` without a flush: rows may still be waiting for the writer).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TrackedBuffer as TrajectoryReplayBuffer
from conftest import assert_aligned, chi_square, coded_trajectory, ring_wrapping
from conftest import chi2_bound as bound

from rlinf_replay_buffer import EmptyBufferError, InvalidArgumentError, Trajectory

SEED = 1234
KINDS = ("memory", "ring", "disk-pt", "disk-segment", "pending")
#: (n, e, B): steps per episode, episodes (epochs), envs. Lengths differ on purpose; n = 2 has
#: no run of 3 steps, so it contributes no valid start at seq_len 3.
SHAPES = [(4, 2, 2), (3, 1, 3), (6, 3, 1), (2, 2, 2), (5, 1, 4)]


# -- helpers ---------------------------------------------------------------------------------


def make_buffer(
    kind: str, tmp_path: Path, *, window: int = 0, seed: int = SEED, **kw
) -> TrajectoryReplayBuffer:
    if kind in ("memory", "ring"):
        with ring_wrapping(kind == "ring"):
            return TrajectoryReplayBuffer(seed=seed, sample_window_size=window, **kw)
    fmt = "pt" if kind == "pending" else kind.split("-")[1]
    return TrajectoryReplayBuffer(
        seed=seed,
        sample_window_size=window,
        auto_save=True,
        auto_save_path=str(tmp_path / f"own-{kind}-{seed}"),
        trajectory_format=fmt,
        enable_cache=False,
        **kw,
    )


def fill(buf: TrajectoryReplayBuffer, kind: str, shapes: list, layout: str = "rlinf", first: int = 0) -> None:
    buf.add_trajectories(
        [
            coded_trajectory(first + i, n=n, e=e, num_envs=b, layout=layout)
            for i, (n, e, b) in enumerate(shapes)
        ]
    )
    if buf.auto_save and kind != "pending":
        buf.flush()
        assert buf.get_stats()["pending_writes"] == 0
        assert buf.get_stats()["cached_trajectories"] == 0


def leaves(batch: dict) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in batch.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def real_rows(batch: dict) -> dict:
    """The real (unmasked) steps of a sequence batch as a flat batch of transitions."""
    mask = batch["mask"]
    out: dict = {}
    for key, value in batch.items():
        if key == "mask":
            continue
        if isinstance(value, dict):
            out[key] = {k: v[mask] for k, v in value.items()}
        else:
            out[key] = value[mask]
    return out


def check_sequences(batch: dict, num: int, seq_len: int, pad: bool, shapes: dict[int, tuple]) -> None:
    """Every sequence is a run of consecutive steps of one env of one coded trajectory that never
    crosses an episode end; with ``pad`` the mask marks exactly the real steps and padding is 0.

    ``shapes``: trajectory id -> (n, e, B).
    """
    mask = batch["mask"]
    assert mask.dtype == torch.bool and tuple(mask.shape) == (num, seq_len)
    for name, tensor in leaves(batch).items():
        assert tuple(tensor.shape[:2]) == (num, seq_len), name
    assert mask[:, 0].all(), "the first step of a sequence must be real"
    codes = batch["curr_obs"]["states"][..., 0].to(torch.int64)  # [N, L]
    c0 = codes[:, 0]
    tid, epoch, step = c0 // 1000, c0 % 1000 // 100, c0 % 100
    assert set(tid.tolist()) <= set(shapes), "a sequence from a trajectory not in the window"
    n = torch.tensor([shapes[int(t)][0] for t in tid])
    e = torch.tensor([shapes[int(t)][1] for t in tid])
    b = torch.tensor([shapes[int(t)][2] for t in tid])
    assert (step < n).all() and (epoch < e).all()
    j = torch.arange(seq_len)
    # the episode of the start ends at step n - 1 (dones); its trajectory ends there too
    expected_mask = (step[:, None] + j[None, :]) < n[:, None]
    if not pad:
        assert mask.all(), "without pad every step is real"
        assert expected_mask.all(), "a sequence crosses an episode end or leaves its trajectory"
    else:
        assert torch.equal(mask, expected_mask), "mask does not mark exactly the real steps"
    # real steps: consecutive codes (same trajectory, epoch, episode), one env column
    assert torch.equal(codes[mask], (c0[:, None] + j[None, :]).expand(num, seq_len)[mask])
    env = batch["curr_obs"]["env_ids"][..., 0]
    assert torch.equal(env[mask], env[:, :1].expand(num, seq_len)[mask]), "env changes inside a run"
    assert ((env[:, 0] >= 0) & (env[:, 0] < b)).all()
    # no episode end before the last real step
    dones = batch["dones"][..., 0]
    last = mask.sum(dim=1) - 1
    before_last = j[None, :] < last[:, None]
    assert not dones[before_last].any(), "a sequence runs past an episode end"
    # each real step is one aligned transition
    flat = real_rows(batch)
    assert_aligned(flat)
    flat_codes = flat["curr_obs"]["states"][:, 0].to(torch.int64)
    flat_n = torch.tensor([shapes[int(t)][0] for t in flat_codes // 1000])
    assert torch.equal(flat["dones"][:, 0], flat_codes % 100 == flat_n - 1), "dones misaligned"
    # padding is zero in every field
    for name, tensor in leaves(batch).items():
        if name != "mask":
            assert (tensor[~mask] == 0).all(), f"padding of {name} is not zero"


def starts_of(batch: dict) -> list[tuple[int, int, int, int]]:
    """(trajectory, epoch, step, env) of each sequence's first step."""
    c0 = batch["curr_obs"]["states"][:, 0, 0].to(torch.int64)
    env = batch["curr_obs"]["env_ids"][:, 0, 0]
    return list(
        zip(
            (c0 // 1000).tolist(),
            (c0 % 1000 // 100).tolist(),
            (c0 % 100).tolist(),
            env.tolist(),
            strict=True,
        )
    )


def reference_starts(shapes: dict[int, tuple], seq_len: int, pad: bool) -> list[tuple[int, int, int, int]]:
    """Every valid start of coded trajectories, enumerated directly: a run of ``seq_len`` steps
    from step ``s`` of an epoch of ``n`` steps stays in its episode iff ``s + seq_len <= n``."""
    out = []
    for i, (n, e, b) in sorted(shapes.items()):
        for k in range(e):
            for s in range(n):
                for env in range(b):
                    if pad or s + seq_len <= n:
                        out.append((i, k, s, env))
    return out


def by_id(shapes: list, first: int = 0) -> dict[int, tuple]:
    return {first + i: s for i, s in enumerate(shapes)}


# -- structure: consecutive, one env, one trajectory, never across an episode end ----------------


@pytest.mark.parametrize("layout", ["rlinf", "aligned"])
@pytest.mark.parametrize("kind", KINDS)
def test_sequences_are_consecutive_steps_of_one_env_and_never_cross_an_episode_end(tmp_path, kind, layout):
    buf = make_buffer(kind, tmp_path)
    fill(buf, kind, SHAPES, layout=layout)
    batch = buf.sample_sequences(3000, 3)
    check_sequences(batch, 3000, 3, pad=False, shapes=by_id(SHAPES))
    # every valid start is reachable, and only valid starts are drawn
    assert set(starts_of(batch)) == set(reference_starts(by_id(SHAPES), 3, pad=False))


@pytest.mark.parametrize("kind", KINDS)
def test_sequence_may_end_exactly_on_an_episode_end(tmp_path, kind):
    buf = make_buffer(kind, tmp_path)
    fill(buf, kind, [(4, 2, 2)])
    batch = buf.sample_sequences(2000, 4)  # a run of 4 is a whole episode
    check_sequences(batch, 2000, 4, pad=False, shapes=by_id([(4, 2, 2)]))
    assert set(starts_of(batch)) == {(0, k, 0, b) for k in range(2) for b in range(2)}
    assert batch["dones"][:, -1].all() and not batch["dones"][:, :-1].any()


@pytest.mark.parametrize("kind", KINDS)
def test_padded_sequences_mark_exactly_the_real_steps_and_zero_the_padding(tmp_path, kind):
    shapes = [(4, 2, 2), (1, 2, 3), (2, 1, 1), (6, 1, 2)]  # episodes shorter and longer than 5
    buf = make_buffer(kind, tmp_path)
    fill(buf, kind, shapes)
    batch = buf.sample_sequences(4000, 5, pad=True)
    check_sequences(batch, 4000, 5, pad=True, shapes=by_id(shapes))
    assert set(starts_of(batch)) == set(reference_starts(by_id(shapes), 5, pad=True))
    mask = batch["mask"]
    assert (~mask).any() and mask[:, 1:].any(), "the batch exercises both real and padded steps"
    # a padded step is zero even where zero is not a valid value of the field
    assert (batch["curr_obs"]["states"][~mask] == 0).all()
    assert not batch["dones"][~mask].any()


@pytest.mark.parametrize("kind", ["memory", "disk-segment"])
def test_padding_past_the_trajectory_end_without_an_episode_end(tmp_path, kind):
    """No done flag in the last rows: the run stops being real where the trajectory ends."""
    T, B = 5, 2
    buf = make_buffer(kind, tmp_path)
    buf.add_trajectories([random_done_trajectory(0, torch.zeros(T, B, dtype=torch.bool))])
    if buf.auto_save:
        buf.flush()
    batch = buf.sample_sequences(2000, 3, pad=True)
    t0 = batch["curr_obs"]["states"][:, 0, 0].to(torch.int64) % 1000
    expected = (t0[:, None] + torch.arange(3)[None, :]) < T
    assert torch.equal(batch["mask"], expected)
    assert set(t0.tolist()) == set(range(T))
    # without pad: only starts whose whole run fits
    plain = buf.sample_sequences(2000, 3)
    assert plain["mask"].all()
    assert set((plain["curr_obs"]["states"][:, 0, 0].to(torch.int64) % 1000).tolist()) == {0, 1, 2}


def test_seq_len_one_is_every_transition(tmp_path):
    buf = make_buffer("memory", tmp_path)
    fill(buf, "memory", SHAPES)
    batch = buf.sample_sequences(4000, 1)
    check_sequences(batch, 4000, 1, pad=False, shapes=by_id(SHAPES))
    assert set(starts_of(batch)) == set(reference_starts(by_id(SHAPES), 1, pad=True))


# -- distribution ------------------------------------------------------------------------------


@pytest.mark.parametrize("pad", [False, True])
@pytest.mark.parametrize("kind", ["memory", "disk-segment", "ring"])
def test_starts_are_uniform_over_the_valid_starts_chi_square(tmp_path, kind, pad):
    shapes = by_id(SHAPES)
    seq_len = 3
    buf = make_buffer(kind, tmp_path)
    fill(buf, kind, SHAPES)
    ref = reference_starts(shapes, seq_len, pad)
    pos = {s: p for p, s in enumerate(ref)}
    draws = 0
    counts = np.zeros(len(ref))
    for _ in range(8):
        batch = buf.sample_sequences(5000, seq_len, pad=pad)
        for s in starts_of(batch):
            counts[pos[s]] += 1  # KeyError: an invalid start
        draws += 5000
    df = len(ref) - 1
    stat = chi_square(counts, np.full(len(ref), draws / len(ref)))
    assert stat < bound(df), f"chi2={stat:.1f} df={df}"
    # power: the same counts reject "uniform over trajectories, then over their starts"
    per_traj = {i: sum(1 for s in ref if s[0] == i) for i in shapes}
    wrong = np.array([draws / len(per_traj) / per_traj[s[0]] for s in ref])
    assert chi_square(counts, wrong) > 10 * bound(df)


def random_done_trajectory(i: int, dones: torch.Tensor, *, terminations_only: bool = False) -> Trajectory:
    """An aligned trajectory with arbitrary episode ends per env: step ``t`` of env ``b`` holds
    code ``1000 * i + t`` (curr_obs.states, actions, rewards), next_obs.states ``code + 1``,
    curr_obs.env_ids ``b``."""
    T, B = dones.shape
    code = (1000 * i + torch.arange(T, dtype=torch.float32))[:, None].expand(T, B)
    env = torch.arange(B)[None, :].expand(T, B)
    done_fields = (
        {"terminations": dones[..., None].clone(), "truncations": torch.zeros(T, B, 1, dtype=torch.bool)}
        if terminations_only
        else {"dones": dones[..., None].clone()}
    )
    return Trajectory(
        max_episode_length=T,
        model_update_count=0,
        actions=code[..., None].expand(T, B, 2).clone(),
        rewards=code[..., None].clone(),
        curr_obs={"states": code[..., None].expand(T, B, 3).clone(), "env_ids": env[..., None].clone()},
        next_obs={"states": (code + 1)[..., None].expand(T, B, 3).clone(), "env_ids": env[..., None].clone()},
        **done_fields,
    )


def reference_runs(
    dones: dict[int, np.ndarray], seq_len: int, pad: bool
) -> dict[tuple[int, int, int], list[bool]]:
    """Valid starts ``(trajectory, t, b)`` with the mask of their run, by plain loops."""
    out = {}
    for i, d in dones.items():
        T, B = d.shape
        for t in range(T):
            for b in range(B):
                mask = []
                ended = False
                for j in range(seq_len):
                    real = t + j < T and not ended
                    mask.append(real)
                    if real and d[t + j, b]:
                        ended = True
                if pad or all(mask):
                    out[(i, t, b)] = mask
    return out


@pytest.mark.parametrize("pad", [False, True])
@pytest.mark.parametrize("kind", ["memory", "disk-pt", "disk-segment"])
def test_episode_ends_that_differ_per_env_match_a_reference_enumeration(tmp_path, kind, pad):
    rng = np.random.default_rng(5)
    sizes = [(9, 3), (4, 2), (12, 1), (7, 4)]  # (T, B)
    dones = {i: rng.random((T, B)) < 0.25 for i, (T, B) in enumerate(sizes)}
    dones[2][:, :] = False  # one long episode running off the trajectory's end
    seq_len = 3
    buf = make_buffer(kind, tmp_path)
    buf.add_trajectories([random_done_trajectory(i, torch.from_numpy(d)) for i, d in dones.items()])
    if buf.auto_save:
        buf.flush()
    ref = reference_runs(dones, seq_len, pad)
    keys = sorted(ref)
    pos = {k: p for p, k in enumerate(keys)}
    counts = np.zeros(len(keys))
    draws = 0
    for _ in range(6):
        batch = buf.sample_sequences(5000, seq_len, pad=pad)
        draws += 5000
        code = batch["curr_obs"]["states"][..., 0].to(torch.int64)
        env = batch["curr_obs"]["env_ids"][..., 0]
        mask = batch["mask"]
        for r in range(5000):
            key = (int(code[r, 0]) // 1000, int(code[r, 0]) % 1000, int(env[r, 0]))
            assert key in ref, f"invalid start {key}"
            assert mask[r].tolist() == ref[key], f"mask of start {key}"
            counts[pos[key]] += 1
        real = mask
        j = torch.arange(seq_len)
        assert torch.equal(code[real], (code[:, :1] + j).expand_as(code)[real])
        assert torch.equal(env[real], env[:, :1].expand_as(env)[real])
        assert (code[~real] == 0).all() and (batch["actions"][~real] == 0).all()
        assert torch.equal(batch["next_obs"]["states"][..., 0][real], (code + 1)[real].float())
    df = len(keys) - 1
    stat = chi_square(counts, np.full(len(keys), draws / len(keys)))
    assert stat < bound(df), f"chi2={stat:.1f} df={df}"
    # power: ignoring the episode ends (every start whose run fits the trajectory) is rejected
    if not pad:
        ignoring = [
            (i, t, b) for i, (T, B) in enumerate(sizes) for t in range(T - seq_len + 1) for b in range(B)
        ]
        assert len(ignoring) > len(keys)
        wrong = np.array([draws / len(ignoring)] * len(ignoring))
        got = np.array([counts[pos[k]] if k in pos else 0.0 for k in ignoring])
        assert chi_square(got, wrong) > 10 * bound(len(ignoring) - 1)
    else:
        per_traj = {i: sum(1 for k in keys if k[0] == i) for i in dones}
        wrong = np.array([draws / len(per_traj) / per_traj[k[0]] for k in keys])
        assert chi_square(counts, wrong) > 10 * bound(df)


def test_terminations_and_truncations_end_episodes_when_there_are_no_dones(tmp_path):
    rng = np.random.default_rng(11)
    d = rng.random((10, 3)) < 0.3
    buf = make_buffer("memory", tmp_path)
    buf.add_trajectories([random_done_trajectory(0, torch.from_numpy(d), terminations_only=True)])
    batch = buf.sample_sequences(3000, 3)
    ref = reference_runs({0: d}, 3, pad=False)
    code = batch["curr_obs"]["states"][:, 0, 0].to(torch.int64)
    env = batch["curr_obs"]["env_ids"][:, 0, 0]
    got = set(zip((code // 1000).tolist(), (code % 1000).tolist(), env.tolist(), strict=True))
    assert got == set(ref)
    assert not batch["terminations"][:, :-1].any()


# -- empty, window, staleness, arguments ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "disk-pt"])
def test_seq_len_longer_than_every_episode_raises_without_pad(tmp_path, kind):
    buf = make_buffer(kind, tmp_path)
    fill(buf, kind, [(4, 2, 2), (3, 1, 3)])
    with pytest.raises(EmptyBufferError, match="no trajectory of the window has a run"):
        buf.sample_sequences(10, 5)
    # a run as long as the longest episode is still possible, and padding always is
    check_sequences(buf.sample_sequences(50, 4), 50, 4, pad=False, shapes=by_id([(4, 2, 2), (3, 1, 3)]))
    batch = buf.sample_sequences(50, 5, pad=True)
    check_sequences(batch, 50, 5, pad=True, shapes=by_id([(4, 2, 2), (3, 1, 3)]))
    assert not batch["mask"][:, -1].any()


def test_sampling_sequences_from_an_empty_buffer_raises(tmp_path):
    buf = make_buffer("memory", tmp_path)
    with pytest.raises(EmptyBufferError, match="cannot sample"):
        buf.sample_sequences(4, 2)
    with pytest.raises(EmptyBufferError, match="cannot sample"):
        buf.sample_sequences(4, 2, pad=True)


@pytest.mark.parametrize("kind", ["memory", "disk-pt", "disk-segment"])
def test_sequences_come_only_from_the_sample_window(tmp_path, kind):
    buf = make_buffer(kind, tmp_path, window=2)
    fill(buf, kind, SHAPES[:3])
    fill(buf, kind, SHAPES[3:], first=3)  # 0..2 leave the window (memory: the buffer)
    batch = buf.sample_sequences(3000, 2)
    shapes = {3: SHAPES[3], 4: SHAPES[4]}
    check_sequences(batch, 3000, 2, pad=False, shapes=shapes)
    assert set(starts_of(batch)) == set(reference_starts(shapes, 2, pad=False))
    # trajectory 3 has episodes of 2 steps: at seq_len 3 only trajectory 4 is left
    batch = buf.sample_sequences(1000, 3)
    assert {s[0] for s in starts_of(batch)} == {4}
    # widening the window (auto_save keeps the older trajectories) brings them back
    if buf.auto_save:
        buf.sample_window_size = 0
        batch = buf.sample_sequences(3000, 2)
        check_sequences(batch, 3000, 2, pad=False, shapes=by_id(SHAPES))
        assert {s[0] for s in starts_of(batch)} == set(range(5))


@pytest.mark.parametrize("kind", ["memory", "disk-segment"])
def test_sequences_respect_max_staleness(tmp_path, kind):
    counts = [0, 5, 2, 7, 4, 6]  # model_update_count of trajectories 0..5, out of order
    buf = make_buffer(kind, tmp_path, max_staleness=2)
    for i, u in enumerate(counts):
        buf.add_trajectories([coded_trajectory(i, n=4, e=2, num_envs=2, model_update_count=u)])
    if buf.auto_save:
        buf.flush()
    batch = buf.sample_sequences(3000, 3)
    fresh = {i for i, u in enumerate(counts) if u >= max(counts) - 2}
    assert fresh == {1, 3, 5}
    check_sequences(batch, 3000, 3, pad=False, shapes={i: (4, 2, 2) for i in fresh})
    assert {s[0] for s in starts_of(batch)} == fresh


@pytest.mark.parametrize(
    "args, match",
    [
        ((0, 3), "num_sequences must be an int >= 1"),
        ((-2, 3), "num_sequences must be an int >= 1"),
        ((2.0, 3), "num_sequences must be an int >= 1"),
        ((True, 3), "num_sequences must be an int >= 1"),
        ((4, 0), "seq_len must be an int >= 1"),
        ((4, "3"), "seq_len must be an int >= 1"),
        ((4, 2.5), "seq_len must be an int >= 1"),
        ((4, 3, 1), "pad must be True or False"),
        ((4, 3, "yes"), "pad must be True or False"),
    ],
)
def test_sample_sequences_rejects_bad_arguments(tmp_path, args, match):
    buf = make_buffer("memory", tmp_path)
    fill(buf, "memory", SHAPES)
    with pytest.raises(InvalidArgumentError, match=match):
        buf.sample_sequences(*args)


def test_bad_arguments_are_rejected_before_the_buffer_is_looked_at(tmp_path):
    buf = make_buffer("memory", tmp_path)  # empty: the argument error wins over EmptyBufferError
    with pytest.raises(InvalidArgumentError, match="seq_len"):
        buf.sample_sequences(3, 0)


# -- reproducibility -----------------------------------------------------------------------------


def test_sequences_depend_only_on_the_seed_and_calls_not_on_the_storage_path(tmp_path):
    batches = {}
    for kind in ("memory", "ring", "disk-pt", "disk-segment"):
        buf = make_buffer(kind, tmp_path, seed=77)
        fill(buf, kind, SHAPES)
        batches[kind] = [buf.sample_sequences(500, 3), buf.sample_sequences(300, 4, pad=True)]
    ref = batches.pop("memory")
    for kind, got in batches.items():
        for a, b in zip(ref, got, strict=True):
            la, lb = leaves(a), leaves(b)
            assert la.keys() == lb.keys()
            for name in la:
                assert torch.equal(la[name], lb[name]), f"{kind}: {name} differs from memory"
