"""Capacity limits: ``max_trajectories``, ``max_transitions``, ``max_disk_bytes``.

Each limit evicts the oldest trajectories first, never the newest; what the buffer holds after
every add is compared with a plain reference simulation (a list of ids and sizes). With
``auto_save`` the files (or segments) this buffer wrote for evicted trajectories are deleted once
their removal is durable, the directory reloads with exactly the kept trajectories, and files the
buffer did not write (a loaded checkpoint) are never touched. A real ``SIGKILL`` of a child process
after an eviction but before the deletion leaves a directory that reopens cleanly.

Coded trajectories (see ``conftest``) carry their id in every row (``code // 1000``).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CODED_DICT_FIELDS, CODED_STEP_FIELDS, assert_aligned, coded_trajectory
from conftest import TrackedBuffer as TrajectoryReplayBuffer

from rlinf_replay_buffer import InvalidArgumentError
from rlinf_replay_buffer.checkpoint import read_rows
from rlinf_replay_buffer.directory import read_directory
from rlinf_replay_buffer.formats.segment import SEGMENT_RE, SegmentStore
from rlinf_replay_buffer.journal import JOURNAL
from rlinf_replay_buffer.naming import list_trajectory_files
from rlinf_replay_buffer.tools.verify import verify_directory

SEED = 7
SEGMENT_BYTES = "rlinf_replay_buffer.formats.segment.DEFAULT_SEGMENT_BYTES"
TESTS = Path(__file__).resolve().parent
#: (n, e, B) per trajectory id: sizes differ (16, 3, 30, 8, 12, 2, 24, 6, 20, 9 transitions)
SHAPES = [
    (4, 2, 2),
    (3, 1, 1),
    (5, 3, 2),
    (2, 2, 2),
    (3, 2, 2),
    (1, 2, 1),
    (4, 3, 2),
    (3, 1, 2),
    (5, 2, 2),
    (3, 3, 1),
]


def traj(i: int, images: bool = False):
    n, e, b = SHAPES[i % len(SHAPES)]
    return coded_trajectory(i, n=n, e=e, num_envs=b, images=images)


def size_of(i: int) -> int:
    n, e, b = SHAPES[i % len(SHAPES)]
    return n * e * b


def make_buffer(kind: str, tmp_path: Path, *, name: str = "own", **kw) -> TrajectoryReplayBuffer:
    """``memory``, or ``auto-FMT`` (auto_save, a one-trajectory cache so reads also hit files)."""
    kw.setdefault("sample_window_size", 0)
    if kind == "memory":
        return TrajectoryReplayBuffer(seed=SEED, **kw)
    kw.setdefault("cache_size", 1)
    return TrajectoryReplayBuffer(
        seed=SEED,
        auto_save=True,
        auto_save_path=str(tmp_path / name),
        trajectory_format=kind.split("-")[1],
        **kw,
    )


def held_ids(buf: TrajectoryReplayBuffer, draws: int = 4000) -> set[int]:
    """The trajectories sampling reaches (window 0: all held); rows checked for alignment."""
    batch = buf.sample(draws)
    assert_aligned(batch)
    return set((batch["curr_obs"]["states"][:, 0].to(torch.int64) // 1000).tolist())


def evict(held: list[int], sizes: dict[int, int], over) -> list[int]:
    """Reference: drop the oldest while ``over(held)`` and more than one is held."""
    held = list(held)
    while len(held) > 1 and over(held):
        held.pop(0)
    return held


def file_ids(directory: Path) -> set[int]:
    return set(list_trajectory_files(str(directory)))


def segments(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if SEGMENT_RE.match(p.name)}


def tree_digest(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` (relative path -> sha256 of its bytes), and every folder."""
    out = {}
    for root, dirs, files in os.walk(directory):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), directory) + "/"] = "dir"
        for f in files:
            path = os.path.join(root, f)
            out[os.path.relpath(path, directory)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return out


def expected_rows(tid: int) -> dict[tuple[str, ...], torch.Tensor]:
    """Aligned rows ``[T * B, ...]`` of coded trajectory ``tid``, built without the library."""
    t = traj(tid)
    n, e, b = SHAPES[tid % len(SHAPES)]
    aligned = coded_trajectory(tid, n=n, e=e, num_envs=b, images=False, layout="aligned")
    rows, envs = int(t.rewards.shape[0]), int(t.rewards.shape[1])
    out = {}
    for name in CODED_STEP_FIELDS:
        v = getattr(aligned, name)
        out[(name,)] = v.reshape(rows * envs, *v.shape[2:])
    for name in CODED_DICT_FIELDS:
        for key, v in getattr(aligned, name).items():
            out[(name, key)] = v.reshape(rows * envs, *v.shape[2:])
    return out


def check_directory_holds(directory: Path, ids: list[int]) -> None:
    """The directory lists exactly ``ids`` (in order), every listed file exists, every row is
    what was added, and ``verify`` finds nothing wrong."""
    contents, schema = read_directory(str(directory))
    assert [r.trajectory_id for r in contents.records] == ids
    stores: dict[str, SegmentStore] = {}
    for record in contents.records:
        assert record.path is not None and os.path.exists(record.path), f"{record.path} is missing"
        store = None
        if record.row is not None:
            store = stores.setdefault(record.directory, SegmentStore(record.directory, schema))
        got = read_rows(record, schema, store)
        want = expected_rows(record.trajectory_id)
        assert sorted(got) == sorted(want)
        for key, value in want.items():
            assert torch.equal(got[key], value), f"trajectory {record.trajectory_id} column {key}"
    for store in stores.values():
        store.close()
    report = verify_directory(str(directory))
    assert report.ok, [(p.kind, p.message) for p in report.problems]
    assert report.trajectories == len(ids)


# -- each limit evicts the oldest first ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "auto-pt", "auto-segment"])
def test_max_trajectories_evicts_the_oldest_first(tmp_path, kind):
    buf = make_buffer(kind, tmp_path, max_trajectories=3)
    held: list[int] = []
    for i in range(8):
        buf.add_trajectories([traj(i)])
        held = evict(held + [i], {}, lambda h: len(h) > 3)
        assert len(buf) == len(held)
        assert buf.total_samples == sum(size_of(j) for j in held)
        assert held_ids(buf) == set(held)
        assert buf.get_stats()["capacity_evicted"] == i + 1 - len(held)
    # several in one call: the whole call is added, then the oldest leave
    buf.add_trajectories([traj(i) for i in range(8, 13)])
    assert held_ids(buf) == {10, 11, 12}
    assert buf.get_stats()["capacity_evicted"] == 10
    assert buf.get_stats()["evicted_trajectories"] == 0  # window evictions are counted apart


@pytest.mark.parametrize("kind", ["memory", "auto-pt", "auto-segment"])
def test_max_transitions_evicts_the_oldest_and_keeps_the_newest_even_when_it_alone_is_over(tmp_path, kind):
    limit = 40
    buf = make_buffer(kind, tmp_path, max_transitions=limit)
    sizes = {i: size_of(i) for i in range(12)}
    held: list[int] = []
    calls = [[0], [1], [2], [3, 4], [5], [6, 7, 8], [9], [10, 11]]
    for call in calls:
        buf.add_trajectories([traj(i) for i in call])
        held = evict(held + call, sizes, lambda h: sum(sizes[j] for j in h) > limit)
        assert held_ids(buf) == set(held), f"after adding {call}"
        assert buf.total_samples == sum(sizes[j] for j in held)
        assert buf.total_samples <= limit or len(held) == 1
    # a trajectory bigger than the limit on its own: it stays, alone
    big = coded_trajectory(20, n=10, e=3, num_envs=2, images=False)  # 60 transitions
    buf.add_trajectories([big])
    assert held_ids(buf) == {20} and len(buf) == 1 and buf.total_samples == 60
    buf.add_trajectories([traj(21)])  # 2 transitions: now the big one goes
    assert held_ids(buf) == {21}
    assert buf.get_stats()["capacity_evicted"] == 12 + 1


@pytest.mark.parametrize("fmt", ["pt", "segment"])
def test_max_disk_bytes_keeps_the_newest_trajectories_that_fit(tmp_path, fmt):
    # sizes of the files each trajectory gets, from a buffer without a limit
    ref = make_buffer(f"auto-{fmt}", tmp_path, name="reference")
    for i in range(10):
        ref.add_trajectories([traj(i)])
    ref.flush()
    if fmt == "pt":
        names = list_trajectory_files(str(tmp_path / "reference"))
        nbytes = {i: os.path.getsize(tmp_path / "reference" / names[i][0]) for i in range(10)}
    else:
        nbytes = {i: size_of(i) * ref.schema.row_bytes for i in range(10)}
    assert ref.get_stats()["disk_bytes"] == sum(nbytes.values())
    limit = int(2.5 * np.mean(list(nbytes.values())))
    buf = make_buffer(f"auto-{fmt}", tmp_path, max_disk_bytes=limit)
    held: list[int] = []
    for i in range(10):
        buf.add_trajectories([traj(i)])
        buf.flush()
        held = evict(held + [i], nbytes, lambda h: sum(nbytes[j] for j in h) > limit)
        stats = buf.get_stats()
        assert held_ids(buf) == set(held), f"after adding {i}"
        assert stats["disk_bytes"] == sum(nbytes[j] for j in held) <= limit
        assert stats["capacity_evicted"] == i + 1 - len(held)
        if fmt == "pt":  # exactly the kept files remain, and they are what disk_bytes counts
            assert file_ids(tmp_path / "own") == set(held)
            names = [n for ns in list_trajectory_files(str(tmp_path / "own")).values() for n in ns]
            on_disk = sum(os.path.getsize(tmp_path / "own" / n) for n in names)
            assert on_disk == stats["disk_bytes"]
    assert 1 < len(held) < 10
    # one trajectory alone over the limit stays
    tiny = make_buffer(f"auto-{fmt}", tmp_path, name="tiny", max_disk_bytes=1)
    for i in range(3):
        tiny.add_trajectories([traj(i)])
        tiny.flush()
        assert held_ids(tiny) == {i} and len(tiny) == 1
    assert tiny.get_stats()["capacity_evicted"] == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_trajectories": 0}, "max_trajectories must be an int >= 1"),
        ({"max_trajectories": 1.5}, "max_trajectories must be an int >= 1"),
        ({"max_trajectories": True}, "max_trajectories must be an int >= 1"),
        ({"max_transitions": -3}, "max_transitions must be an int >= 1"),
        ({"max_transitions": "10"}, "max_transitions must be an int >= 1"),
        ({"max_disk_bytes": 0}, "max_disk_bytes must be an int >= 1"),
        ({"max_disk_bytes": 1e9}, "max_disk_bytes must be an int >= 1"),
    ],
)
def test_bad_capacity_arguments_are_refused(kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        TrajectoryReplayBuffer(**kwargs)


# -- files -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pt", "pkl", "segment"])
def test_evicted_files_are_deleted_and_the_directory_reloads_with_exactly_the_kept(
    tmp_path, fmt, monkeypatch
):
    if fmt == "segment":
        monkeypatch.setattr(SEGMENT_BYTES, 1)  # one trajectory per segment
    own = tmp_path / "own"
    buf = make_buffer(f"auto-{fmt}", tmp_path, max_trajectories=3)
    for i in range(7):
        buf.add_trajectories([traj(i)])
        buf.flush()
        kept = list(range(max(0, i - 2), i + 1))
        if fmt == "segment":
            assert len(segments(own)) == len(kept), sorted(segments(own))
        else:
            assert file_ids(own) == set(kept)
    buf.close()
    check_directory_holds(own, [4, 5, 6])
    assert not (own / JOURNAL).exists() or (own / JOURNAL).stat().st_size == 0
    # loading it elsewhere, and continuing it, give exactly the kept trajectories
    loaded = TrajectoryReplayBuffer(seed=1, sample_window_size=0)
    loaded.load_checkpoint(str(own))
    assert len(loaded) == 3 and held_ids(loaded) == {4, 5, 6}
    again = make_buffer(f"auto-{fmt}", tmp_path, max_trajectories=3)
    assert len(again) == 3 and held_ids(again) == {4, 5, 6}
    assert again.trajectory_counter == 7, "ids of evicted trajectories must never be given again"
    assert again.add_trajectories([traj(7)]) == [7]
    again.close()
    check_directory_holds(own, [5, 6, 7])


@pytest.mark.parametrize("fmt", ["pt", "segment"])
def test_evictions_while_writes_are_pending_leave_only_the_kept_files(tmp_path, fmt, monkeypatch):
    if fmt == "segment":
        monkeypatch.setattr(SEGMENT_BYTES, 1)
    own = tmp_path / "own"
    buf = make_buffer(f"auto-{fmt}", tmp_path, max_trajectories=2)
    for i in range(12):  # no flush: most evictions hit trajectories still queued or being written
        buf.add_trajectories([traj(i)])
    assert held_ids(buf) == {10, 11}
    buf.flush()
    assert buf.get_stats()["pending_writes"] == 0
    if fmt == "pt":
        assert file_ids(own) == {10, 11}
    else:
        assert len(segments(own)) == 2
    assert not [p for p in own.iterdir() if p.name.startswith(".tmp-")]
    buf.close()
    check_directory_holds(own, [10, 11])


def test_continuing_a_directory_with_a_smaller_limit_evicts_its_oldest(tmp_path):
    first = make_buffer("auto-pt", tmp_path)
    first.add_trajectories([traj(i) for i in range(5)])
    first.close()
    buf = make_buffer("auto-pt", tmp_path, max_trajectories=2)
    assert held_ids(buf) == {3, 4} and buf.get_stats()["capacity_evicted"] == 3
    buf.close()
    assert file_ids(tmp_path / "own") == {3, 4}
    check_directory_holds(tmp_path / "own", [3, 4])


@pytest.mark.parametrize("fmt", ["pt", "segment"])
@pytest.mark.parametrize("auto_save", [True, False])
def test_files_of_a_loaded_checkpoint_are_never_deleted(tmp_path, fmt, auto_save):
    src = TrajectoryReplayBuffer(seed=3, sample_window_size=0, trajectory_format=fmt)
    src.add_trajectories([traj(i) for i in range(6)])
    ckpt = tmp_path / "ckpt"
    src.save_checkpoint(str(ckpt))
    before = tree_digest(ckpt)
    kind = f"auto-{fmt}" if auto_save else "memory"
    extra = {} if auto_save else {"trajectory_format": fmt}
    buf = make_buffer(kind, tmp_path, max_trajectories=2, max_disk_bytes=10**9, **extra)
    buf.load_checkpoint(str(ckpt))
    assert held_ids(buf) == {4, 5} and buf.get_stats()["capacity_evicted"] == 4
    assert buf.get_stats()["disk_bytes"] == 0, "files the buffer did not write count against max_disk_bytes"
    new = buf.add_trajectories([traj(6), traj(7), traj(8)])
    assert new == [6, 7, 8]
    buf.flush()
    assert held_ids(buf) == {7, 8}
    buf.close()
    assert tree_digest(ckpt) == before, "the loaded checkpoint changed"
    if auto_save:
        check_directory_holds(tmp_path / "own", [7, 8])


def test_a_checkpoint_saved_from_a_capacity_buffer_survives_later_evictions(tmp_path):
    """pt checkpoints hard-link the buffer's own files: deleting the buffer's name for an
    evicted trajectory must leave the checkpoint's copy intact."""
    buf = make_buffer("auto-pt", tmp_path, max_trajectories=3)
    for i in range(4):
        buf.add_trajectories([traj(i)])
    ckpt = tmp_path / "ckpt"
    buf.save_checkpoint(str(ckpt))
    before = tree_digest(ckpt)
    for i in range(4, 9):
        buf.add_trajectories([traj(i)])
    buf.close()
    assert file_ids(tmp_path / "own") == {6, 7, 8}
    assert tree_digest(ckpt) == before
    check_directory_holds(ckpt, [1, 2, 3])


def test_a_sealed_segment_whose_trajectories_are_all_evicted_is_removed(tmp_path, monkeypatch):
    probe = TrajectoryReplayBuffer(sample_window_size=0)
    probe.add_trajectories([coded_trajectory(0, images=False)])
    row_bytes = probe.schema.row_bytes
    monkeypatch.setattr(SEGMENT_BYTES, 2 * 16 * row_bytes)  # two 16-transition trajectories each
    own = tmp_path / "own"
    buf = make_buffer("auto-segment", tmp_path, max_trajectories=3, enable_cache=False)
    for i in range(8):
        buf.add_trajectories([coded_trajectory(i, images=False)])
        buf.flush()
    # segments: 0 {0, 1}, 1 {2, 3}, 2 {4, 5}, 3 {6, 7}; kept 5, 6, 7
    assert segments(own) == {"seg-000002", "seg-000003"}
    batch = buf.sample(3000)  # every row read from the segments (no cache)
    assert_aligned(batch, n=4)
    assert set((batch["curr_obs"]["states"][:, 0].to(torch.int64) // 1000).tolist()) == {5, 6, 7}
    buf.add_trajectories([coded_trajectory(8, images=False)])
    buf.flush()  # 5 leaves: segment 2 is sealed and unreferenced now
    assert segments(own) == {"seg-000003", "seg-000004"}
    buf.close()
    contents, _ = read_directory(str(own))
    assert [(r.trajectory_id, r.file) for r in contents.records] == [
        (6, "seg-000003"),
        (7, "seg-000003"),
        (8, "seg-000004"),
    ]
    assert verify_directory(str(own)).ok
    reloaded = TrajectoryReplayBuffer(sample_window_size=0)
    reloaded.load_checkpoint(str(own))
    batch = reloaded.sample(2000)
    assert_aligned(batch, n=4)
    assert set((batch["curr_obs"]["states"][:, 0].to(torch.int64) // 1000).tolist()) == {6, 7, 8}


@pytest.mark.parametrize("state", ["flushed", "closed"])
@pytest.mark.parametrize("fmt", ["pt", "pkl", "segment"])
def test_verify_reports_the_directory_clean_after_evictions(tmp_path, fmt, state, monkeypatch):
    if fmt == "segment":
        monkeypatch.setattr(SEGMENT_BYTES, 1)
    buf = make_buffer(f"auto-{fmt}", tmp_path, max_transitions=30)
    for i in range(10):
        buf.add_trajectories([traj(i)])
        if i % 3 == 0:
            buf.flush()
    buf.flush()
    if state == "closed":
        buf.close()
    report = verify_directory(str(tmp_path / "own"))
    assert report.ok, [(p.kind, p.message) for p in report.problems]
    assert report.trajectories == len(buf)
    assert report.transitions == buf.total_samples


# -- a crash after an eviction, before its deletion ----------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys, time
    directory, fmt, tests = sys.argv[1], sys.argv[2], sys.argv[3]
    sys.path.insert(0, tests)
    from conftest import coded_trajectory
    SHAPES = __SHAPES__
    import rlinf_replay_buffer.formats.segment as segment
    from rlinf_replay_buffer import TrajectoryReplayBuffer

    segment.DEFAULT_SEGMENT_BYTES = 1  # one trajectory per segment
    buf = TrajectoryReplayBuffer(
        auto_save=True, auto_save_path=directory, trajectory_format=fmt,
        max_trajectories=2, sample_window_size=0, cache_size=1,
    )
    for i in range(5):
        n, e, b = SHAPES[i]
        buf.add_trajectories([coded_trajectory(i, n=n, e=e, num_envs=b, images=False)])
        buf.flush()  # 0, 1, 2 evicted and deleted; 3, 4 kept
    n, e, b = SHAPES[5]
    # evicts 3: its removal is journaled, its file not deleted yet
    buf.add_trajectories([coded_trajectory(5, n=n, e=e, num_envs=b, images=False)])
    deadline = time.monotonic() + 60
    while buf.get_stats()["files_written"] < 6:
        if time.monotonic() > deadline:
            print("error: trajectory 5 was never written", flush=True)
            sys.exit(2)
        time.sleep(0.001)
    # the removal of 3 is journaled by a writer job that may run after that write
    import os
    journal = os.path.join(directory, "trajectory_index.journal")
    while '"trajectory_id":3,"removed":true' not in open(journal).read().replace(" ", ""):
        if time.monotonic() > deadline:
            print("error: the removal of trajectory 3 was never journaled", flush=True)
            sys.exit(2)
        time.sleep(0.001)
    print("ready", flush=True)
    time.sleep(3600)
    """
)


@pytest.mark.parametrize(
    "fmt",
    [
        "pt",
        "segment",
    ],
)
def test_a_crash_after_eviction_before_deletion_reopens_clean(tmp_path, fmt):
    own = tmp_path / "own"
    script = tmp_path / "child.py"
    script.write_text(CHILD.replace("__SHAPES__", repr(SHAPES)))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(own), fmt, str(TESTS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        line = proc.stdout.readline().decode().strip()
        assert line == "ready", f"child said {line!r}: {proc.stderr.read().decode()[-2000:]}"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    # the state the kill froze: 3's removal is journaled and its file (segment) still exists
    journal = (own / JOURNAL).read_text()
    assert '{"trajectory_id":3,"removed":true}' in journal.replace(" ", "")
    leftover = {"pt": lambda: 3 in file_ids(own), "segment": lambda: (own / "seg-000003").is_dir()}[fmt]
    assert leftover(), "the kill came after the deletion; the test did not reach its state"
    # read as it is: no entry names a missing file, and the evicted trajectory is gone
    contents, _ = read_directory(str(own))
    assert [r.trajectory_id for r in contents.records] == [4, 5]
    assert all(r.path is not None and os.path.exists(r.path) for r in contents.records)
    # reopening deletes the leftover and continues after every id ever used
    buf = make_buffer(f"auto-{fmt}", tmp_path, max_trajectories=2)
    assert held_ids(buf) == {4, 5} and buf.trajectory_counter == 6
    buf.close()
    assert not leftover(), "the evicted trajectory's data was left on disk"
    if fmt == "pt":
        assert file_ids(own) == {4, 5}
    else:
        assert segments(own) == {"seg-000004", "seg-000005"}
    check_directory_holds(own, [4, 5])


# -- capacity with the other samplers ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "auto-pt", "auto-segment"])
def test_capacity_with_prioritized_sampling_never_draws_evicted_slots(tmp_path, kind):
    buf = make_buffer(kind, tmp_path, max_trajectories=3, prioritized=True, priority_alpha=1.0)
    seen: dict[int, set[int]] = {}  # trajectory -> indices its rows came with
    for i in range(10):
        buf.add_trajectories([traj(i)])
        if buf.auto_save and i % 2:
            buf.flush()
        kept = set(range(max(0, i - 2), i + 1))
        batch = buf.sample(1500)
        assert_aligned(batch)
        tids = (batch["curr_obs"]["states"][:, 0].to(torch.int64) // 1000).tolist()
        assert i in tids and set(tids) <= kept, f"after adding {i}: sampled {set(tids)}"
        for tid, idx in zip(tids, batch["indices"].tolist(), strict=True):
            seen.setdefault(tid, set()).add(idx)
        for tid, indices in seen.items():
            idx = torch.tensor(sorted(indices))
            applied = buf.update_priorities(idx, torch.full((len(idx),), 1e6 if tid == min(kept) else 1.0))
            # the oldest kept gets a huge priority before it leaves: a slot of it left behind
            # would take most of the next batches
            assert applied == (len(idx) if tid in kept else 0), f"trajectory {tid}"
    assert buf.get_stats()["capacity_evicted"] == 7


@pytest.mark.parametrize("kind", ["memory", "auto-segment"])
def test_capacity_with_sequence_sampling_only_draws_kept_trajectories(tmp_path, kind):
    buf = make_buffer(kind, tmp_path, max_transitions=50)
    held: list[int] = []
    for i in range(10):
        buf.add_trajectories([traj(i)])
        held = evict(held + [i], {}, lambda h: sum(size_of(j) for j in h) > 50)
        batch = buf.sample_sequences(600, 2, pad=True)
        codes = batch["curr_obs"]["states"][..., 0].to(torch.int64)
        mask = batch["mask"]
        assert set((codes[:, 0] // 1000).tolist()) == set(held)
        assert torch.equal(codes[mask], (codes[:, :1] + torch.arange(2)).expand_as(codes)[mask])
        assert (codes[~mask] == 0).all()
        longest = max(SHAPES[j % len(SHAPES)][0] for j in held)
        plain = buf.sample_sequences(300, longest)
        assert plain["mask"].all()
        assert set((plain["curr_obs"]["states"][:, 0, 0].to(torch.int64) // 1000).tolist()) <= set(held)


def test_a_long_stream_through_a_small_capacity_keeps_exactly_the_newest(tmp_path):
    """A long stream through a small capacity: the buffer keeps holding exactly the newest."""
    buf = make_buffer("memory", tmp_path, max_trajectories=4, prioritized=True)
    for i in range(300):
        buf.add_trajectories([coded_trajectory(i, n=2, e=1, num_envs=2, images=False)])
        if i % 25 == 0:
            batch = buf.sample(200)
            buf.update_priorities(batch["indices"], torch.rand(200))
    assert held_ids(buf) == {296, 297, 298, 299}
    assert buf.get_stats()["capacity_evicted"] == 296
    batch = buf.sample(2000)  # priorities of evicted transitions are gone from the draw
    assert set((batch["curr_obs"]["states"][:, 0].to(torch.int64) // 1000).tolist()) <= held_ids(buf)
    assert batch["indices"].unique().numel() <= buf.total_samples


# -- a crash while a trajectory evicted mid-write is being undone ---------------------------------

MID_WRITE_CHILD = textwrap.dedent(
    """
    import os, signal, sys, threading
    directory, tests = sys.argv[1], sys.argv[2]
    sys.path.insert(0, tests)
    from conftest import coded_trajectory
    import rlinf_replay_buffer.formats as formats_module
    from rlinf_replay_buffer import TrajectoryReplayBuffer

    writing, evicted = threading.Event(), threading.Event()
    real_write = formats_module.write

    def slow_write(path, fmt, data):  # trajectory 0's write waits until it has been evicted
        if os.path.basename(path).startswith("trajectory_0_"):
            writing.set()
            evicted.wait(30)
        return real_write(path, fmt, data)

    def killing_unlink(path):  # the crash: after the removal line, before the file goes
        print("unlinking", os.path.basename(path), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    formats_module.write = slow_write
    os.unlink = killing_unlink  # every removal in this process: the first is trajectory 0's
    buf = TrajectoryReplayBuffer(
        auto_save=True, auto_save_path=directory, max_trajectories=1, sample_window_size=0
    )
    buf.add_trajectories([coded_trajectory(0, n=4, e=1, num_envs=2, images=False)])
    writing.wait(30)
    buf.add_trajectories([coded_trajectory(1, n=4, e=1, num_envs=2, images=False)])  # evicts 0
    evicted.set()
    buf.flush()
    print("error: never killed", flush=True)
    """
)


def test_a_crash_while_undoing_a_write_evicted_midway_leaves_no_orphan(tmp_path):
    """Trajectory 0 is evicted while its pt file is being written; the writer journals its
    removal, then is SIGKILLed before deleting the file. The file is a leftover that reopening
    deletes and verify removes, never an orphan that verify --repair would list again."""
    own = tmp_path / "own"
    proc = subprocess.run(
        [sys.executable, "-c", MID_WRITE_CHILD, str(own), str(TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr[-2000:]
    assert proc.stdout.startswith("unlinking trajectory_0_"), proc.stdout
    assert 0 in file_ids(own)  # the kill came before the deletion
    report = verify_directory(str(own))
    assert report.ok, [(p.kind, p.message) for p in report.problems]  # a state a crash may leave
    kinds = {(p.kind, p.trajectory_id) for p in report.notes}
    assert ("leftover", 0) in kinds and ("orphan", 0) not in kinds
    buf = TrajectoryReplayBuffer(auto_save=True, auto_save_path=str(own), sample_window_size=0)
    assert 0 not in file_ids(own) and 0 not in buf._trajectory_id_list
    assert not (own / JOURNAL).exists() or "removed" not in (own / JOURNAL).read_text()
    # the evicted id is never given again, so no later file can be mistaken for it
    assert buf.add_trajectories([coded_trajectory(5, n=4, e=1, num_envs=2, images=False)])[0] > 0
    buf.close()
    assert verify_directory(str(own)).ok
