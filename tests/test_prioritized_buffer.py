"""Prioritized sampling through the buffer: ``TrajectoryReplayBuffer(prioritized=True)``,
``sample`` (``indices``, ``weights``) and ``update_priorities``.

Coded trajectories (see ``conftest``) let every sampled row say which transition it is
(``(code, env)``). Priorities are set as a known function of the transition, so the expected
probability of each transition, ``(p + eps) ** alpha / sum``, is computed here independently of
the sum tree, and frequencies are compared with it by a chi-square test (fixed seeds) that is
also shown to reject the wrong distributions (uniform, or the wrong exponent).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TrackedBuffer as TrajectoryReplayBuffer
from conftest import assert_aligned, chi_square, coded_trajectory, ring_wrapping
from conftest import chi2_bound as bound

from rlinf_replay_buffer import InvalidArgumentError

SEED = 4321
SHAPES = [(4, 2, 2), (3, 1, 3), (5, 1, 4), (2, 3, 1)]  # (n, e, B): 16 + 9 + 20 + 6 = 51 transitions
KINDS = ("memory", "ring", "disk-pt", "disk-segment")


# -- helpers ---------------------------------------------------------------------------------


def make_buffer(
    kind: str, tmp_path: Path, *, window: int = 0, seed: int = SEED, **kw
) -> TrajectoryReplayBuffer:
    kw.setdefault("prioritized", True)
    if kind in ("memory", "ring"):
        with ring_wrapping(kind == "ring"):
            return TrajectoryReplayBuffer(seed=seed, sample_window_size=window, **kw)
    return TrajectoryReplayBuffer(
        seed=seed,
        sample_window_size=window,
        auto_save=True,
        auto_save_path=str(tmp_path / f"own-{kind}-{seed}-{window}"),
        trajectory_format=kind.split("-")[1],
        enable_cache=False,
        **kw,
    )


def fill(buf: TrajectoryReplayBuffer, shapes: list, first: int = 0) -> None:
    buf.add_trajectories(
        [
            coded_trajectory(first + i, n=n, e=e, num_envs=b, images=False)
            for i, (n, e, b) in enumerate(shapes)
        ]
    )
    if buf.auto_save:
        buf.flush()


def transitions(batch: dict) -> list[tuple[int, int]]:
    """(code, env) of every row."""
    code = batch["curr_obs"]["states"][:, 0].to(torch.int64).tolist()
    env = batch["curr_obs"]["env_ids"][:, 0].tolist()
    return list(zip(code, env, strict=True))


def all_transitions(shapes: list, first: int = 0) -> list[tuple[int, int]]:
    return sorted(
        (1000 * (first + i) + 100 * k + s, b)
        for i, (n, e, nb) in enumerate(shapes)
        for k in range(e)
        for s in range(n)
        for b in range(nb)
    )


def learn_indices(buf: TrajectoryReplayBuffer, expected: list[tuple[int, int]], draws: int = 6000) -> dict:
    """Sample until every transition was seen; return (code, env) -> index, checking that an
    index always names the same transition and distinct transitions have distinct indices."""
    index_of: dict[tuple[int, int], int] = {}
    for _ in range(10):
        batch = buf.sample(draws)
        assert_aligned(batch)
        for t, idx in zip(transitions(batch), batch["indices"].tolist(), strict=True):
            assert index_of.setdefault(t, idx) == idx, f"transition {t} came with two indices"
        if len(index_of) == len(expected):
            break
    assert sorted(index_of) == expected
    assert len(set(index_of.values())) == len(index_of), "two transitions share an index"
    return index_of


def priority_of(t: tuple[int, int]) -> float:
    """A known raw priority per transition, 0.5 .. 9.5."""
    code, env = t
    return 0.5 + (code % 7) + 2 * env % 3


def count(buf: TrajectoryReplayBuffer, keys: list, batches: int, size: int) -> np.ndarray:
    pos = {k: p for p, k in enumerate(keys)}
    counts = np.zeros(len(keys))
    for _ in range(batches):
        batch = buf.sample(size)
        assert_aligned(batch)
        for t in transitions(batch):
            counts[pos[t]] += 1
    return counts


# -- batch structure -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_prioritized_batches_carry_indices_and_weights(tmp_path, kind):
    buf = make_buffer(kind, tmp_path)
    fill(buf, SHAPES)
    batch = buf.sample(300)
    assert batch["indices"].dtype == torch.int64 and tuple(batch["indices"].shape) == (300,)
    assert batch["weights"].dtype == torch.float32 and tuple(batch["weights"].shape) == (300,)
    assert ((batch["weights"] > 0) & (batch["weights"] <= 1)).all()
    assert_aligned(batch)


@pytest.mark.parametrize("kind", ["memory", "disk-pt"])
def test_uniform_batches_carry_neither_indices_nor_weights(tmp_path, kind):
    buf = make_buffer(kind, tmp_path, prioritized=False)
    fill(buf, SHAPES)
    batch = buf.sample(50)
    assert "indices" not in batch and "weights" not in batch


@pytest.mark.parametrize("kind", KINDS)
def test_rows_are_aligned_and_indices_name_their_transitions(tmp_path, kind):
    buf = make_buffer(kind, tmp_path)
    fill(buf, SHAPES)
    index_of = learn_indices(buf, all_transitions(SHAPES))
    # the mapping is stable across later batches
    batch = buf.sample(2000)
    assert_aligned(batch, n=None)
    for t, idx in zip(transitions(batch), batch["indices"].tolist(), strict=True):
        assert index_of[t] == idx


@pytest.mark.parametrize("kind", KINDS)
def test_a_single_huge_priority_takes_nearly_every_sample(tmp_path, kind):
    alpha = 0.6
    buf = make_buffer(kind, tmp_path, priority_alpha=alpha)
    fill(buf, SHAPES)
    index_of = learn_indices(buf, all_transitions(SHAPES))
    target = (1000 * 2 + 3, 1)  # trajectory 2, step 3, env 1
    assert buf.update_priorities(torch.tensor([index_of[target]]), torch.tensor([1e6])) == 1
    draws = 4000
    batch = buf.sample(draws)
    assert_aligned(batch)
    hits = sum(t == target for t in transitions(batch))
    is_target = torch.tensor([t == target for t in transitions(batch)])
    assert (batch["indices"][is_target] == index_of[target]).all()
    n = len(index_of)
    eps = 1e-6
    p = (1e6 + eps) ** alpha / ((1e6 + eps) ** alpha + (n - 1) * (1 + eps) ** alpha)
    sd = math.sqrt(draws * p * (1 - p))
    assert abs(hits - draws * p) < 5 * sd, f"{hits} hits, expected {draws * p:.0f}"
    assert hits > 0.95 * draws


# -- distribution ----------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.6, 1.0])
@pytest.mark.parametrize("kind", ["memory", "disk-segment"])
def test_frequencies_follow_priority_to_the_alpha_chi_square(tmp_path, kind, alpha):
    eps = 0.01
    buf = make_buffer(kind, tmp_path, priority_alpha=alpha, priority_eps=eps)
    fill(buf, SHAPES)
    keys = all_transitions(SHAPES)
    index_of = learn_indices(buf, keys)
    idx = torch.tensor([index_of[k] for k in keys])
    prio = torch.tensor([priority_of(k) for k in keys], dtype=torch.float64)
    assert buf.update_priorities(idx, prio) == len(keys)
    counts = count(buf, keys, 10, 6000)
    draws = counts.sum()
    q = (prio.numpy() + eps) ** alpha
    df = len(keys) - 1
    stat = chi_square(counts, draws * q / q.sum())
    assert stat < bound(df), f"chi2={stat:.1f} df={df}"
    # power: uniform sampling, and the wrong exponent, are both rejected by these counts
    assert chi_square(counts, np.full(len(keys), draws / len(keys))) > 10 * bound(df)
    wrong = (prio.numpy() + eps) ** (1.6 - alpha)
    assert chi_square(counts, draws * wrong / wrong.sum()) > 3 * bound(df)


def test_duplicate_indices_in_one_update_let_the_last_priority_win(tmp_path):
    buf = make_buffer("memory", tmp_path, priority_alpha=1.0, priority_eps=0.0)
    fill(buf, SHAPES)
    keys = all_transitions(SHAPES)
    index_of = learn_indices(buf, keys)
    a, b = keys[3], keys[10]
    assert buf.update_priorities([index_of[a], index_of[b], index_of[a]], [1e6, 1e6, 0.0]) == 3
    got = transitions(buf.sample(2000))
    assert a not in got  # priority 0 with eps 0: never drawn
    assert sum(t == b for t in got) > 1990


@pytest.mark.parametrize("kind", ["memory", "disk-pt"])
def test_new_trajectories_get_the_largest_priority_seen(tmp_path, kind):
    alpha, eps = 1.0, 1e-6
    buf = make_buffer(kind, tmp_path, priority_alpha=alpha, priority_eps=eps)
    fill(buf, SHAPES[:2])
    old = all_transitions(SHAPES[:2])
    index_of = learn_indices(buf, old)
    idx = [index_of[k] for k in old]
    # 8.0 is the largest priority ever set, though no transition keeps it
    buf.update_priorities(idx, [8.0] * len(idx))
    buf.update_priorities(idx, [0.5] * len(idx))
    buf.update_priorities(idx[:4], [2.0] * 4)
    fill(buf, [SHAPES[2]], first=2)
    new = all_transitions([SHAPES[2]], first=2)
    keys = old + new
    counts = count(buf, keys, 8, 5000)
    q = np.array([2.0] * 4 + [0.5] * (len(old) - 4) + [8.0] * len(new)) + eps
    df = len(keys) - 1
    stat = chi_square(counts, counts.sum() * q / q.sum())
    assert stat < bound(df), f"chi2={stat:.1f}"
    # power: new transitions at the current max (2.0) or at 1.0 would be rejected
    for wrong_new in (2.0, 1.0):
        w = np.array([2.0] * 4 + [0.5] * (len(old) - 4) + [wrong_new] * len(new)) + eps
        assert chi_square(counts, counts.sum() * w / w.sum()) > 10 * bound(df)


def test_a_fresh_buffer_samples_uniformly(tmp_path):
    """Before any update every transition has the same priority: uniform over transitions."""
    buf = make_buffer("memory", tmp_path)
    fill(buf, SHAPES)
    keys = all_transitions(SHAPES)
    counts = count(buf, keys, 6, 5000)
    df = len(keys) - 1
    assert chi_square(counts, np.full(len(keys), counts.sum() / len(keys))) < bound(df)
    batch = buf.sample(100)
    assert torch.equal(batch["weights"], torch.ones(100))


@pytest.mark.parametrize("beta", [0.4, 1.0, 0.0])
def test_importance_weights_follow_the_formula(tmp_path, beta):
    alpha, eps = 0.7, 0.05
    buf = make_buffer("memory", tmp_path, priority_alpha=alpha, priority_beta=beta, priority_eps=eps)
    fill(buf, SHAPES)
    keys = all_transitions(SHAPES)
    index_of = learn_indices(buf, keys)
    buf.update_priorities([index_of[k] for k in keys], [priority_of(k) for k in keys])
    q = {k: (priority_of(k) + eps) ** alpha for k in keys}
    total = sum(q.values())
    n = len(keys)
    for size in (1, 7, 500):
        batch = buf.sample(size)
        raw = np.array([(n * q[t] / total) ** -beta for t in transitions(batch)])
        expected = raw / raw.max()
        np.testing.assert_allclose(batch["weights"].numpy(), expected, rtol=1e-5)
        assert float(batch["weights"].max()) == 1.0


# -- the window slides -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "disk-pt", "disk-segment"])
def test_transitions_leaving_the_window_are_never_sampled_and_their_updates_are_skipped(tmp_path, kind):
    buf = make_buffer(kind, tmp_path, window=2, priority_alpha=1.0)
    fill(buf, SHAPES[:2])
    old = all_transitions(SHAPES[:2])
    index_of = learn_indices(buf, old)
    old_idx = torch.tensor([index_of[k] for k in old])
    # huge priorities just before trajectory 0 leaves the window: were its slots still drawn,
    # they would take a good share of every batch
    zero = [index_of[k] for k in old if k[0] // 1000 == 0]
    buf.update_priorities(old_idx, torch.full((len(old),), 1e9))
    fill(buf, [SHAPES[2]], first=2)  # the window is now trajectories 1 and 2
    batch = buf.sample(3000)
    assert_aligned(batch)
    assert {t[0] // 1000 for t in transitions(batch)} == {1, 2}
    new_idx = batch["indices"]
    assert not set(new_idx.tolist()) & set(zero), "a slot of a departed trajectory was reused"
    # stale indices are skipped, not an error; live ones in the same call are applied
    assert buf.update_priorities(zero, [1.0] * len(zero)) == 0
    mixed = torch.cat([torch.tensor(zero[:5]), new_idx[:3]])
    assert buf.update_priorities(mixed, torch.full((8,), 2.0)) == 3
    live_old = old_idx[[k[0] // 1000 == 1 for k in old]]
    assert buf.update_priorities(live_old, torch.ones(len(live_old))) == len(live_old)
    fill(buf, [SHAPES[3]], first=3)  # now 2 and 3
    batch = buf.sample(2000)
    assert {t[0] // 1000 for t in transitions(batch)} == {2, 3}
    assert buf.update_priorities(old_idx, torch.ones(len(old_idx))) == 0


# -- errors --------------------------------------------------------------------------------------


def test_update_priorities_on_a_uniform_buffer_raises(tmp_path):
    buf = make_buffer("memory", tmp_path, prioritized=False)
    fill(buf, SHAPES)
    with pytest.raises(InvalidArgumentError, match="needs a buffer built with prioritized=True"):
        buf.update_priorities(torch.tensor([0]), torch.tensor([1.0]))


def test_prioritized_and_max_staleness_cannot_be_combined():
    with pytest.raises(InvalidArgumentError, match="prioritized=True and max_staleness cannot be combined"):
        TrajectoryReplayBuffer(prioritized=True, max_staleness=3)
    with pytest.raises(InvalidArgumentError, match="cannot be combined"):
        TrajectoryReplayBuffer(prioritized=True, max_staleness=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"priority_alpha": -0.1}, "alpha must be finite and >= 0"),
        ({"priority_alpha": float("nan")}, "alpha must be finite"),
        ({"priority_beta": 1.5}, r"beta must be in \[0.0, 1.0\]"),
        ({"priority_beta": -0.1}, r"beta must be in \[0.0, 1.0\]"),
        ({"priority_eps": -1e-3}, "eps must be finite and >= 0"),
        ({"priority_alpha": "0.5"}, "alpha must be a real number"),
        ({"prioritized": 1}, "prioritized must be True or False"),
    ],
)
def test_bad_priority_parameters_are_refused(kwargs, match):
    kwargs = {"prioritized": True, **kwargs}
    with pytest.raises(InvalidArgumentError, match=match):
        TrajectoryReplayBuffer(**kwargs)


BAD_UPDATES = [
    pytest.param(lambda i: (i, [1e6, -1.0]), "priorities must be finite and >= 0", id="negative"),
    pytest.param(lambda i: (i, [1e6, float("nan")]), "priorities must be finite and >= 0", id="nan"),
    pytest.param(lambda i: (i, [1e6, float("inf")]), "priorities must be finite and >= 0", id="inf"),
    pytest.param(lambda i: (i, [1e6, 1e300]), "too large", id="too large"),
    pytest.param(lambda i: (i, [1e6, 1.0, 1.0]), "same length", id="lengths"),
    pytest.param(lambda i: ([i[0], 10**9], [1e6, 1.0]), "was never allocated", id="never allocated"),
    pytest.param(lambda i: ([i[0], -2], [1e6, 1.0]), "was never allocated", id="index -2"),
    pytest.param(
        lambda i: ([i[0], -1], [1e6, 1.0]),
        "was never allocated",
        id="index -1",
    ),
    pytest.param(
        lambda i: (np.array(i, dtype=np.float64), [1e6, 1.0]), "must hold integers", id="float indices"
    ),
    pytest.param(lambda i: ([i], [[1e6, 1.0]]), "one-dimensional", id="2-d"),
]


@pytest.mark.parametrize("make_args, match", BAD_UPDATES)
def test_bad_updates_raise_and_change_nothing(tmp_path, make_args, match):
    """A twin buffer (same seed, same calls, without the failed update) samples identically,
    also after a new trajectory (whose priority is the running max)."""
    a = make_buffer("memory", tmp_path)
    b = make_buffer("memory", tmp_path)
    for buf in (a, b):
        fill(buf, SHAPES)
    first_a, first_b = a.sample(64), b.sample(64)
    assert torch.equal(first_a["indices"], first_b["indices"])
    good = [int(first_a["indices"][0]), int(first_a["indices"][1])]
    indices, priorities = make_args(good)
    with pytest.raises(InvalidArgumentError, match=match):
        a.update_priorities(indices, priorities)
    for buf in (a, b):
        fill(buf, [(3, 1, 2)], first=len(SHAPES))
    for _ in range(3):
        x, y = a.sample(500), b.sample(500)
        assert torch.equal(x["indices"], y["indices"])
        assert torch.equal(x["weights"], y["weights"])
        assert torch.equal(x["curr_obs"]["states"], y["curr_obs"]["states"])


def test_update_priorities_accepts_tensors_numpy_and_lists(tmp_path):
    buf = make_buffer("memory", tmp_path, priority_alpha=1.0)
    fill(buf, SHAPES)
    batch = buf.sample(10)
    idx = batch["indices"]
    assert buf.update_priorities(idx, torch.rand(10, dtype=torch.float32)) == 10
    assert buf.update_priorities(idx.numpy(), np.ones(10)) == 10
    assert buf.update_priorities(idx.tolist(), [1.0] * 10) == 10
    assert buf.update_priorities(torch.tensor([], dtype=torch.int64), torch.tensor([])) == 0


def test_prioritized_sampling_is_reproducible_from_the_seed(tmp_path):
    def session(buf: TrajectoryReplayBuffer) -> list[dict]:
        fill(buf, SHAPES[:2])
        out = [buf.sample(100)]
        buf.update_priorities(out[0]["indices"], torch.arange(100, dtype=torch.float64) / 10)
        fill(buf, SHAPES[2:], first=2)
        out.append(buf.sample(300))
        return out

    one = session(make_buffer("memory", tmp_path, seed=9))
    two = session(make_buffer("disk-pt", tmp_path, seed=9))
    three = session(make_buffer("memory", tmp_path, seed=10))
    for x, y in zip(one, two, strict=True):
        assert torch.equal(x["indices"], y["indices"]) and torch.equal(x["weights"], y["weights"])
        assert torch.equal(x["curr_obs"]["states"], y["curr_obs"]["states"])
    assert not torch.equal(one[1]["indices"], three[1]["indices"])


def test_index_minus_one_is_refused_and_never_breaks_sampling(tmp_path):
    buf = make_buffer("memory", tmp_path)
    fill(buf, SHAPES)
    buf.sample(4)
    try:
        buf.update_priorities([-1], [1e6])
    except InvalidArgumentError:
        pass
    for _ in range(5):
        batch = buf.sample(200)
        assert_aligned(batch)
        assert (batch["indices"] >= 0).all()
