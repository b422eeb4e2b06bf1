"""``SumTree`` and ``PrioritizedSampler`` (rlinf_replay_buffer/priority.py).

The sum tree is checked against a plain reference (a numpy array of leaves, ``cumsum`` and
``searchsorted``); the sampler's draws against their distribution with a chi-square test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlinf_replay_buffer.errors import EmptyBufferError, InvalidArgumentError, ReplayBufferError
from rlinf_replay_buffer.priority import PrioritizedSampler, SumTree

try:
    from scipy.stats import chi2 as _chi2
except ImportError:  # pragma: no cover - scipy is optional
    _chi2 = None


def chi2_critical(df: int, q: float = 0.999) -> float:
    """The ``q`` quantile of chi-square(df): scipy's, else the Wilson-Hilferty approximation."""
    if _chi2 is not None:
        return float(_chi2.ppf(q, df))
    z = 3.090232306167813  # standard normal 0.999 quantile
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi2_stat(observed: np.ndarray, expected: np.ndarray) -> float:
    return float(((observed - expected) ** 2 / expected).sum())


def reference_find(leaves: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.cumsum(leaves), u, side="right")


def make_sampler(seed: int = 0, **kw) -> PrioritizedSampler:
    return PrioritizedSampler(generator=torch.Generator().manual_seed(seed), **kw)


# ------------------------------------------------------------------------------------ SumTree


def test_sumtree_matches_reference_with_duplicates_and_growth():
    rng = np.random.default_rng(7)
    tree = SumTree(5)
    assert tree.capacity == 8
    ref = np.zeros(tree.capacity)
    for step in range(300):
        if step in (50, 120, 200):
            tree.grow() if step != 120 else tree.grow(100)
            ref = np.concatenate([ref, np.zeros(tree.capacity - ref.size)])
            assert tree.capacity == ref.size
            assert np.array_equal(tree.values(), ref)
        k = int(rng.integers(1, 3 * tree.capacity))
        idx = rng.integers(0, tree.capacity, size=k)  # many duplicates
        # integer-valued priorities (a quarter of them 0): every sum is exact in float64
        vals = rng.integers(0, 1000, size=k).astype(np.float64) * (rng.random(k) > 0.25)
        tree.update(idx, vals)
        for i, v in zip(idx.tolist(), vals.tolist(), strict=True):  # last write wins
            ref[i] = v
        assert np.array_equal(tree.values(), ref)
        assert tree.total == ref.sum()
        assert tree.max == ref.max()
        if ref.sum() > 0:
            # dyadic prefix sums: all arithmetic in the descent is exact as well
            u = rng.integers(0, int(ref.sum()) * 1024, size=500) / 1024.0
            found = tree.find(u)
            assert found.dtype == np.int64
            assert np.array_equal(found, reference_find(ref, u))
            assert (ref[found] > 0).all()


def test_sumtree_find_with_real_values_lands_on_the_right_leaf():
    rng = np.random.default_rng(3)
    tree = SumTree(1000)
    vals = rng.random(1000) ** 4 * (rng.random(1000) > 0.3)
    tree.update(np.arange(1000), vals)
    u = rng.random(100_000) * tree.total
    found = tree.find(u)
    cum = np.cumsum(tree.values())
    lo = np.concatenate([[0.0], cum])[found]
    hi = cum[found]
    tol = 1e-12 * tree.total
    assert (tree.values()[found] > 0).all()
    assert ((lo - tol <= u) & (u <= hi + tol)).all()


def test_sumtree_edges_never_return_zero_leaves():
    tree = SumTree(16)
    tree.update([3, 7, 8], [1.0, 2.0, 0.5])  # every other leaf, including the last ones, is 0
    total = tree.total
    edge = np.array([0.0, -5.0, total, np.nextafter(total, 0), total * 10, 1.0, 3.0, 2.9999999])
    assert tree.find(edge).tolist() == [3, 3, 8, 8, 8, 7, 8, 7]
    big = np.random.default_rng(0).random(10_000) * total
    assert set(tree.find(big).tolist()) <= {3, 7, 8}
    # a tree of one leaf
    one = SumTree(1)
    one.update([0], [2.5])
    assert one.find([0.0, 2.4, 2.5]).tolist() == [0, 0, 0]


def test_sumtree_grow_preserves_values_and_sums():
    tree = SumTree(4)
    tree.update([0, 1, 2, 3], [1.0, 2.0, 3.0, 4.0])
    tree.grow(20)
    assert tree.capacity == 32
    assert tree.values()[:4].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert (tree.values()[4:] == 0).all()
    assert tree.total == 10.0 and tree.max == 4.0
    tree.update([31], [5.0])
    assert tree.total == 15.0 and tree.max == 5.0 and tree.find([14.9]).tolist() == [31]
    tree.grow(8)  # no shrink
    assert tree.capacity == 32


def test_sumtree_max_follows_current_values():
    tree = SumTree(8)
    tree.update([1, 5], [3.0, 9.0])
    assert tree.max == 9.0
    tree.update([5], [0.0])
    assert tree.max == 3.0


@pytest.mark.parametrize(
    ("indices", "values", "match"),
    [
        ([0], [-1.0], r"finite and >= 0, got -1\.0 at position 0"),
        ([0, 1], [1.0, float("nan")], r"finite and >= 0, got nan at position 1"),
        ([0], [float("inf")], "finite"),
        ([0], [1e200], "sums stay finite"),
        ([8], [1.0], r"leaf index 8 is out of range \[0, 8\)"),
        ([-1], [1.0], "leaf index -1 is out of range"),
        ([0.0], [1.0], "must hold integers"),
        ([0, 1], [1.0], "same length"),
        ([[0]], [[1.0]], "one-dimensional"),
    ],
)
def test_sumtree_rejects_bad_updates(indices, values, match):
    tree = SumTree(8)
    tree.update([2], [4.0])
    with pytest.raises(InvalidArgumentError, match=match):
        tree.update(indices, values)
    assert tree.total == 4.0 and tree.values()[2] == 4.0  # unchanged


def test_sumtree_find_errors():
    tree = SumTree(4)
    with pytest.raises(EmptyBufferError):
        tree.find([0.0])
    tree.update([1], [1.0])
    with pytest.raises(InvalidArgumentError, match="finite"):
        tree.find([float("nan")])


# -------------------------------------------------------------------------- PrioritizedSampler


def test_sampling_frequencies_match_priorities_chi_square():
    alpha, eps, K, draws = 0.6, 1e-6, 40, 200_000
    s = make_sampler(seed=1234, alpha=alpha, eps=eps, capacity=8)  # grows on the way
    start = s.add(K)
    slots = np.arange(start, start + K)
    raw = np.linspace(0.05, 8.0, K) ** 1.5
    s.update_priorities(slots, raw)
    q = (raw + eps) ** alpha
    expected_p = q / q.sum()
    assert np.allclose(s.probabilities(slots), expected_p, rtol=1e-12)
    drawn, _ = s.sample(draws)
    counts = np.bincount(drawn - start, minlength=K)
    stat = chi2_stat(counts, draws * expected_p)
    assert stat < chi2_critical(K - 1), stat
    # the test has power: the same counts are far from uniform
    assert chi2_stat(counts, np.full(K, draws / K)) > 10 * chi2_critical(K - 1)


def test_stratified_sampling_has_the_same_distribution_and_is_shuffled():
    K, draws = 30, 100_000
    s = make_sampler(seed=5, alpha=1.0, eps=0.0, stratified=True)
    start = s.add(K)
    raw = np.arange(1, K + 1, dtype=np.float64)
    s.update_priorities(np.arange(start, start + K), raw)
    drawn, _ = s.sample(draws)
    counts = np.bincount(drawn - start, minlength=K)
    assert chi2_stat(counts, draws * raw / raw.sum()) < chi2_critical(K - 1)
    small, _ = s.sample(64)
    assert not (np.diff(small) >= 0).all()  # not returned in slot order


def test_zero_priority_and_removed_slots_are_never_sampled():
    s = make_sampler(seed=2, alpha=0.7, eps=0.0)
    a = s.add(10)
    b = s.add(10)
    c = s.add(10)
    s.update_priorities([a + 1, a + 4, c + 9], [0.0, 0.0, 0.0])  # with eps = 0: never drawn
    s.remove(b, 10)
    assert len(s) == 20
    drawn, weights = s.sample(50_000)
    assert not np.isin(drawn, [a + 1, a + 4, c + 9]).any()
    assert not ((drawn >= b) & (drawn < b + 10)).any()
    assert s.is_live(drawn).all()
    assert set(drawn.tolist()) == set(range(a, a + 10)) - {a + 1, a + 4} | set(range(c, c + 9))
    assert np.isfinite(weights).all() and (weights > 0).all()


def test_importance_weights_follow_the_formula():
    alpha, beta, eps = 0.6, 0.4, 1e-6
    s = make_sampler(seed=9, alpha=alpha, beta=beta, eps=eps)
    start = s.add(12)
    slots = np.arange(start, start + 12)
    raw = np.array([0.0, 0.1, 0.5, 1, 2, 3, 5, 8, 13, 21, 34, 55], dtype=np.float64)
    s.update_priorities(slots, raw)
    drawn, weights = s.sample(256)
    assert drawn.dtype == np.int64 and drawn.shape == (256,)
    assert weights.dtype == np.float32 and weights.shape == (256,)
    q = (raw + eps) ** alpha
    P = q / q.sum()
    w = (len(s) * P[drawn - start]) ** -beta
    assert np.allclose(weights, w / w.max(), rtol=1e-6)
    assert weights.max() == 1.0
    # beta is settable (annealing) and changes the weights accordingly
    s.beta = 1.0
    drawn, weights = s.sample(256)
    w = (len(s) * P[drawn - start]) ** -1.0
    assert np.allclose(weights, w / w.max(), rtol=1e-6)
    s.beta = 0.0
    assert (s.sample(16)[1] == 1.0).all()
    with pytest.raises(InvalidArgumentError, match=r"beta must be in \[0.0, 1.0\]"):
        s.beta = 1.5


def test_new_slots_get_the_running_max_priority():
    s = make_sampler(alpha=0.5, eps=1e-6)
    assert s.max_priority == 1.0
    a = s.add(4)
    p = s.probabilities(np.arange(a, a + 4))
    assert np.allclose(p, 0.25)  # all at the initial max, 1.0
    s.update_priorities([a, a + 1], [5.0, 0.2])
    assert s.max_priority == 5.0
    b = s.add(2)
    pa, pb, pb1 = s.probabilities([a, b, b + 1])
    assert pa == pb == pb1  # stored exactly as if updated to 5.0
    s.update_priorities([a], [0.1])  # lowering the max slot keeps the running max
    assert s.max_priority == 5.0
    c = s.add(1)
    assert s.probabilities([c])[0] == s.probabilities([b])[0]
    s.update_priorities(torch.tensor([c]), torch.tensor([7.5]))  # tensors accepted
    assert s.max_priority == 7.5


@pytest.mark.parametrize(
    ("slots", "priorities", "match"),
    [
        ([0], [-0.5], r"priorities must be finite and >= 0, got -0\.5"),
        ([0, 1], [1.0, float("nan")], "priorities must be finite"),
        ([0], [float("inf")], "priorities must be finite"),
        ([0, 1], [1.0], "same length"),
        ([0.0], [1.0], "slots must hold integers"),
        ([99], [1.0], r"slot 99 \(position 0\) was never allocated"),
        ([0, -3], [1.0, 1.0], r"slot -3 \(position 1\) was never allocated"),
        ([0, 5], [1.0, 1.0], r"slot 5 \(position 1\) was removed"),
    ],
)
def test_update_priorities_rejects_bad_input(slots, priorities, match):
    s = make_sampler(alpha=1.0, eps=0.0)
    s.add(5)
    s.add(5)
    s.remove(5, 5)
    s.update_priorities([0, 1], [2.0, 3.0])
    with pytest.raises(InvalidArgumentError, match=match):
        s.update_priorities(slots, priorities)
    assert s.probabilities([0, 1, 2]).tolist() == pytest.approx([2 / 8, 3 / 8, 1 / 8])  # unchanged
    assert s.max_priority == 3.0


def test_update_priorities_can_skip_removed_slots_and_duplicates_last_wins():
    s = make_sampler(alpha=1.0, eps=0.0)
    a = s.add(4)
    b = s.add(4)
    s.remove(a, 4)
    assert s.update_priorities([a, b, a + 2, b + 1], [9.0, 2.0, 9.0, 3.0], skip_removed=True) == 2
    assert s.max_priority == 3.0  # the skipped 9.0s do not count
    s.update_priorities([b, b, b], [4.0, 6.0, 5.0])
    assert s.probabilities([b])[0] == pytest.approx(5.0 / (5 + 3 + 1 + 1))
    with pytest.raises(InvalidArgumentError, match="never allocated"):
        s.update_priorities([b + 100], [1.0], skip_removed=True)


def test_remove_and_add_errors():
    s = make_sampler()
    a = s.add(3)
    with pytest.raises(InvalidArgumentError, match="slot 3 .* never allocated"):
        s.remove(a, 4)
    assert len(s) == 3  # unchanged
    s.remove(a, 3)
    with pytest.raises(InvalidArgumentError, match="slot 0 .* was removed"):
        s.remove(a, 1)
    with pytest.raises(InvalidArgumentError, match="n must be >= 0"):
        s.add(-1)
    with pytest.raises(InvalidArgumentError, match="n must be an int"):
        s.add(2.0)
    with pytest.raises(EmptyBufferError, match="no live slot"):
        s.sample(4)
    with pytest.raises(InvalidArgumentError, match="num must be >= 1"):
        s.sample(0)
    assert s.add(0) == 3 and len(s) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": -0.1}, "alpha must be finite and >= 0"),
        ({"alpha": float("inf")}, "alpha must be finite"),
        ({"beta": 2.0}, r"beta must be in \[0.0, 1.0\]"),
        ({"eps": float("nan")}, "eps must be finite"),
        ({"capacity": 0}, "capacity must be >= 1"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        make_sampler(**kwargs)
    with pytest.raises(InvalidArgumentError, match="generator must be a torch.Generator"):
        PrioritizedSampler(generator=1234)


def test_reproducible_with_the_same_seed():
    def run(seed: int) -> list[np.ndarray]:
        s = make_sampler(seed=seed)
        out = []
        for t in range(20):
            start = s.add(50)
            drawn, w = s.sample(128)
            s.update_priorities(drawn, np.abs(np.sin(drawn * 0.37 + t)))
            if t >= 5:
                s.remove(start - 250, 50)
            out += [drawn, w]
        return out

    a, b, c = run(42), run(42), run(43)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_slot_ids_stay_valid_across_growth_and_fifo_reuse():
    rng = np.random.default_rng(11)
    s = make_sampler(seed=3, alpha=1.0, eps=0.0, capacity=4)
    live: dict[int, tuple[int, float]] = {}  # start -> (n, priority of its slots)
    order: list[int] = []
    max_live_span = 0
    for step in range(400):
        n = int(rng.integers(1, 40))
        start = s.add(n)
        assert start == (order[-1] + live[order[-1]][0] if order else start)
        p = float(rng.integers(1, 100))
        s.update_priorities(np.arange(start, start + n), np.full(n, p))
        live[start] = (n, p)
        order.append(start)
        max_live_span = max(max_live_span, start + n - order[0])
        while sum(v[0] for v in live.values()) > 150:  # a window of ~150 transitions, FIFO
            old = order.pop(0)
            s.remove(old, live.pop(old)[0])
        if step % 25 == 0:
            slots = np.concatenate([np.arange(b, b + live[b][0]) for b in order])
            q = np.concatenate([np.full(live[b][0], live[b][1]) for b in order])
            assert len(s) == slots.size
            assert np.allclose(s.probabilities(slots), q / q.sum(), rtol=1e-12)
            drawn, _ = s.sample(2000)
            assert np.isin(drawn, slots).all()
    # FIFO reuse keeps the ring at the power of two covering the largest span of live ids
    assert s.capacity == 1 << (max_live_span - 1).bit_length()
    assert s.capacity < 2 * max_live_span


def test_clear_resets_everything_but_ids():
    s = make_sampler()
    a = s.add(5)
    s.update_priorities([a], [3.0])
    s.clear()
    assert len(s) == 0 and s.total == 0.0 and s.max_priority == 1.0
    assert not s.is_live([a]).any()
    b = s.add(2)
    assert b == 5 and np.allclose(s.probabilities([b, b + 1]), 0.5)


def test_errors_belong_to_the_library_hierarchy():
    assert issubclass(InvalidArgumentError, ReplayBufferError)
    assert issubclass(InvalidArgumentError, ValueError)
