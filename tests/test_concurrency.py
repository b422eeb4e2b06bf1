"""Concurrency under real threads, for a fixed duration: adding, sampling, checkpointing,
prefetching and closing at once never raise, never tear a row and never deadlock.

Every test runs a real ``TrajectoryReplayBuffer`` with real ``threading.Thread`` workers. The
trajectories are the coded ones of ``conftest.py`` (every value encodes trajectory id, epoch and
step), so a sampled row mixing two transitions, a row served from memory that was already
reused, or a row of a trajectory outside the window is detected.

Durations: each case runs 0.8-1.5 s by default (the whole file takes about 20 s on two cores).
The ``soak`` variants run ``RLINF_SOAK_SECONDS`` (default 60) per case. The ``soak`` marker is
*not* deselected by pyproject's ``addopts``, so the soak variants also skip unless
``RLINF_SOAK=1`` is set or ``-m`` selects ``soak``::

    RLINF_SOAK=1 python -m pytest -q -m soak tests/test_concurrency.py

Races these tests found are reproduced deterministically at the end of the file (section 4: they
force the racy interleaving with patched internals) and stay as regression tests.
"""

from __future__ import annotations

import json
import os
import queue
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import assert_aligned, coded_trajectory

import rlinf_replay_buffer.formats as formats_mod
from rlinf_replay_buffer import EmptyBufferError, TrajectoryReplayBuffer
from rlinf_replay_buffer import checkpoint as checkpoint_mod
from rlinf_replay_buffer import writer as writer_mod
from rlinf_replay_buffer.autosave import AutoSaver, OwnDirectory
from rlinf_replay_buffer.batch import nest
from rlinf_replay_buffer.formats.segment import SegmentStore

N = 4  # steps per epoch of every coded trajectory (its dones fall on step N - 1)
EPOCHS = (1, 2, 3)  # trajectories of 8, 16 and 24 transitions (2 envs): the ring must grow
# coded values are float32: 1000 * id + 100 * epoch + step is exact below 2**24, so ids stay
# below this (the adder idles once it gets there, which only a long soak run can reach)
MAX_ID = 16_000
JOIN_TIMEOUT = 60.0  # a worker still running this long after the stop signal is deadlocked
VERIFY_ROWS_OF = 1000  # a checkpoint check reads every row of up to 2 * this many trajectories

SOAK_SECONDS = float(os.environ.get("RLINF_SOAK_SECONDS", "60"))
SHORT = {"mixed": 1.5, "prefetch": 0.8, "close": 0.8}

#: storage setups: in-memory ring that wraps, and auto-save with cache < window or no cache
SETUPS: dict[str, dict] = {
    "memory": {"auto_save": False, "sample_window_size": 6},
    "pt-cache<window": {
        "auto_save": True,
        "trajectory_format": "pt",
        "cache_size": 3,
        "sample_window_size": 16,
    },
    "segment-cache<window": {
        "auto_save": True,
        "trajectory_format": "segment",
        "cache_size": 3,
        "sample_window_size": 16,
    },
    "pt-no-cache": {"auto_save": True, "enable_cache": False, "sample_window_size": 16},
}

soak = pytest.mark.soak


def _soak_enabled(config: pytest.Config) -> bool:
    if os.environ.get("RLINF_SOAK") == "1":
        return True
    expr = config.getoption("markexpr", "") or ""
    return "soak" in expr and "not soak" not in expr


def cases(kind: str, setups: list[str] | None = None, marks: dict | None = None) -> list:
    """``(setup, seconds)`` params: a short run per setup, and a soak run marked ``soak``;
    ``marks``: extra marks of a setup's cases."""
    out = []
    for name in setups or list(SETUPS):
        extra = (marks or {}).get(name, [])
        out.append(pytest.param(name, SHORT[kind], id=f"{name}-short", marks=extra))
        out.append(pytest.param(name, SOAK_SECONDS, id=f"{name}-soak", marks=[soak, *extra]))
    return out


@pytest.fixture
def seconds(request: pytest.FixtureRequest) -> float:
    duration = request.node.callspec.params["duration"]
    if request.node.get_closest_marker("soak") and not _soak_enabled(request.config):
        pytest.skip("soak test: set RLINF_SOAK=1 (or pass -m soak) to run it")
    return float(duration)


# -- helpers ----------------------------------------------------------------------------------
def traj(i: int):
    return coded_trajectory(i, n=N, e=EPOCHS[i % len(EPOCHS)])


def trajectory_ids(batch: dict) -> torch.Tensor:
    return torch.div(batch["curr_obs"]["states"][:, 0], 1000, rounding_mode="floor").long()


def check_rows(batch: dict) -> torch.Tensor:
    """Every row is one aligned transition (images included); returns the trajectory ids."""
    assert_aligned(batch, n=N)
    c = batch["curr_obs"]["states"][:, 0]
    code = (c.long() % 251).to(torch.uint8)
    for side in ("curr_obs", "next_obs"):
        images = batch[side]["main_images"]
        assert (images == code[:, None, None, None]).all(), f"{side}.main_images misaligned"
    assert ((batch["curr_obs"]["env_ids"] == 0) | (batch["curr_obs"]["env_ids"] == 1)).all()
    assert ((c % 100) < N).all() and ((c % 1000) // 100 < max(EPOCHS)).all(), "not a coded row"
    return trajectory_ids(batch)


def checked_sample(buf: TrajectoryReplayBuffer, num: int, window: int) -> dict:
    """``buf.sample(num)`` checked: right size, aligned rows, only trajectories that were in the
    window at some point during the call (``window``: the largest window size in use)."""
    before = buf.trajectory_counter
    batch = buf.sample(num)
    after = buf.trajectory_counter
    assert batch["rewards"].shape[0] == num
    ids = check_rows(batch)
    assert int(ids.max()) < after, f"sampled trajectory {int(ids.max())} was never added ({after})"
    if window:
        oldest = int(ids.min())
        assert oldest >= before - window, (
            f"sampled trajectory {oldest}, outside the window of {window} (counter {before})"
        )
    return batch


def same_batch(a: dict, b: dict) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_batch(a[k], b[k]) for k in a)
    return torch.equal(a, b)


def clone_batch(batch: dict) -> dict:
    return {k: clone_batch(v) if isinstance(v, dict) else v.clone() for k, v in batch.items()}


class Workers:
    """Daemon threads whose exceptions are collected; any exception stops every worker."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.threads: list[threading.Thread] = []
        self.iterations: dict[str, int] = {}
        self._lock = threading.Lock()

    def spawn(self, name: str, step: Callable[[], None]) -> None:
        """Run ``step()`` repeatedly until stopped."""

        def run() -> None:
            count = 0
            try:
                while not self.stop.is_set():
                    step()
                    count += 1
            except BaseException:  # noqa: BLE001 - reported by the test
                with self._lock:
                    self.errors.append(f"[{name}] {traceback.format_exc()}")
                self.stop.set()
            finally:
                self.iterations[name] = count

        self.threads.append(threading.Thread(target=run, name=name, daemon=True))

    def run_for(
        self, seconds: float, main_step: Callable[[], None] | None = None, min_steps: int = 0
    ) -> None:
        """Start the workers, let them run ``seconds`` (calling ``main_step`` meanwhile, at least
        ``min_steps`` times however slow the machine), stop them, and fail with every collected
        exception or with the stacks of hung threads."""
        for t in self.threads:
            t.start()
        deadline = time.monotonic() + seconds
        steps = 0
        try:
            while (time.monotonic() < deadline or steps < min_steps) and not self.stop.is_set():
                steps += 1
                if main_step is None:
                    self.stop.wait(min(0.05, max(0.0, deadline - time.monotonic())))
                else:
                    main_step()
        finally:
            self.stop.set()
            hung = join_all(self.threads, JOIN_TIMEOUT)
        assert not self.errors, "exceptions in worker threads:\n" + "\n".join(self.errors)
        assert not hung, hung


def stacks(threads: list[threading.Thread]) -> str:
    frames = sys._current_frames()
    out = []
    for t in threads:
        frame = frames.get(t.ident or -1)
        out.append(f"--- {t.name}\n" + ("".join(traceback.format_stack(frame)) if frame else "?"))
    return "\n".join(out)


def join_all(threads: list[threading.Thread], timeout: float) -> str:
    """Join every thread within ``timeout`` in total; describe the ones still running."""
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t for t in threads if t.is_alive()]
    if not alive:
        return ""
    return f"threads still running {timeout:.0f} s after stop (deadlock?):\n{stacks(alive)}"


def within(timeout: float, fn: Callable[[], object], what: str) -> None:
    """Run ``fn`` on a daemon thread; fail if it raises or does not return within ``timeout``."""
    errors: list[str] = []

    def run() -> None:
        try:
            fn()
        except BaseException:  # noqa: BLE001 - reported by the test
            errors.append(traceback.format_exc())

    t = threading.Thread(target=run, name=what, daemon=True)
    t.start()
    hung = join_all([t], timeout)
    assert not hung, f"{what} did not return: {hung}"
    assert not errors, f"{what} raised:\n{errors[0]}"


@pytest.fixture
def make_buffer(tmp_path: Path):
    """Buffers of a setup; closed after the test on a thread, so a hang fails instead of
    blocking the run."""
    made: list[TrajectoryReplayBuffer] = []

    def make(setup: str, **extra) -> TrajectoryReplayBuffer:
        kwargs = {**SETUPS[setup], **extra}
        if kwargs.get("auto_save"):
            kwargs["auto_save_path"] = str(tmp_path / f"auto{len(made)}")
        buf = TrajectoryReplayBuffer(**kwargs)
        made.append(buf)
        return buf

    yield make
    for buf in made:
        within(JOIN_TIMEOUT, buf.close, "close() at teardown")


class Adder:
    """Adds coded trajectories with consecutive ids, 1-3 per call, at most ``rate`` per second
    (so that a run of ``seconds`` stays below ``MAX_ID``: ``Adder.rate_for(seconds)``).

    With auto-save it pauses while more than ``max_pending`` writes wait for the disk, so that a
    disk slower than ``rate`` bounds neither memory nor the final drain by the run's length.
    """

    max_pending = 256

    def __init__(
        self,
        buf: TrajectoryReplayBuffer,
        rng: random.Random,
        rate: float,
        stop: threading.Event | None = None,
    ) -> None:
        self.buf, self.rng, self.rate, self.next = buf, rng, rate, 0
        self.stop = stop or threading.Event()
        self._due = time.monotonic()

    @staticmethod
    def rate_for(seconds: float) -> float:
        return min(300.0, 0.8 * MAX_ID / seconds)

    def step(self) -> None:
        pause = self._due - time.monotonic()
        time.sleep(max(pause, 0.0005))  # also leaves the GIL to the other workers now and then
        if self.next >= MAX_ID:
            return
        k = min(self.rng.randint(1, 3), MAX_ID - self.next)
        ids = self.buf.add_trajectories([traj(i) for i in range(self.next, self.next + k)])
        assert ids == list(range(self.next, self.next + k)), ids
        self.next += k
        self._due = max(self._due, time.monotonic() - 1.0) + k / self.rate
        if self.buf.auto_save and self.buf.get_stats()["pending_writes"] > self.max_pending:
            deadline = time.monotonic() + JOIN_TIMEOUT
            while self.buf.get_stats()["pending_writes"] > self.max_pending // 2 and not self.stop.is_set():
                assert time.monotonic() < deadline, "the background writer makes no progress"
                time.sleep(0.002)


def verify_snapshot(path: Path, reader: TrajectoryReplayBuffer, window: int) -> int:
    """A checkpoint directory is a consistent snapshot: unique consecutive ids, metadata that
    agrees with the index, every row of every trajectory aligned, its own and complete, and
    loadable (then sampled) by a separate buffer. Returns the trajectories it holds."""
    index = json.loads((path / "trajectory_index.json").read_text())
    meta = json.loads((path / "metadata.json").read_text())
    ids = index["trajectory_id_list"]
    assert ids, f"{path}: empty checkpoint"
    assert len(set(ids)) == len(ids), f"{path}: duplicate ids"
    assert ids == list(range(ids[0], ids[0] + len(ids))), f"{path}: ids not consecutive: {ids}"
    if window:
        assert len(ids) <= window
    else:
        assert ids[0] == 0, f"{path}: an auto-save snapshot lost its oldest trajectories"
    entries = index["trajectory_index"]
    assert set(entries) == {str(i) for i in ids}
    uuids = [entries[str(i)]["uuid"] for i in ids]
    assert len(set(uuids)) == len(uuids), f"{path}: duplicate uuids"
    total = sum(int(entries[str(i)]["num_samples"]) for i in ids)
    assert meta["size"] == len(ids) and meta["total_samples"] == total
    assert meta["trajectory_counter"] > ids[-1]

    # every row of every trajectory, read straight from the files (soak runs can reach
    # thousands of trajectories: then the newest and a random sample of the others)
    contents, schema = checkpoint_mod.read(str(path))
    records = contents.records
    assert [r.trajectory_id for r in records] == ids
    if len(records) > 2 * VERIFY_ROWS_OF:
        older = random.Random(len(records)).sample(records[:-VERIFY_ROWS_OF], VERIFY_ROWS_OF)
        records = older + records[-VERIFY_ROWS_OF:]
    for record in records:
        rows = nest(checkpoint_mod.read_rows(record, schema))
        got = check_rows(rows)
        tid = record.trajectory_id
        assert (got == tid).all(), f"{path}: trajectory {tid} holds rows of {got.unique().tolist()}"
        e = EPOCHS[tid % len(EPOCHS)]
        want = sorted(1000 * tid + 100 * k + s for k in range(e) for s in range(N) for _ in range(2))
        assert sorted(rows["curr_obs"]["states"][:, 0].long().tolist()) == want

    reader.load_checkpoint(str(path))
    assert reader.size == len(ids) and reader.total_samples == total
    sampled = check_rows(reader.sample(max(64, total)))
    assert set(sampled.tolist()) <= set(ids)
    return len(ids)


# -- 1. adder + two samplers + checkpointer ----------------------------------------------------
@pytest.mark.parametrize(("setup", "duration"), cases("mixed"))
def test_add_sample_checkpoint_concurrently(tmp_path, make_buffer, setup, duration, seconds):
    buf = make_buffer(setup)
    window = buf.sample_window_size
    workers = Workers()
    adder = Adder(buf, random.Random(1), Adder.rate_for(seconds), workers.stop)
    adder.step()
    workers.spawn("adder", adder.step)

    def sampler(seed: int) -> Callable[[], None]:
        rng = random.Random(seed)
        held: list[tuple[dict, dict]] = []

        def step() -> None:
            batch = checked_sample(buf, rng.choice([1, 3, 17, 64, 256, 1000]), window)
            # a batch is the caller's: later adds (ring reuse, evictions) never change it
            for old, copy in held:
                assert same_batch(old, copy), "a returned batch changed after later adds"
            held[:] = [(batch, clone_batch(batch))]

        return step

    workers.spawn("sampler-1", sampler(2))
    workers.spawn("sampler-2", sampler(3))

    reader = TrajectoryReplayBuffer(sample_window_size=0)
    saves = {"saves": 0, "verified": 0}

    def saver() -> None:
        k = saves["saves"]
        path = tmp_path / f"ckpt{k % 2}"
        buf.save_checkpoint(str(path))
        saves["saves"] += 1
        if k % 3 == 0:
            verify_snapshot(path, reader, window if not buf.auto_save else 0)
            saves["verified"] += 1

    workers.spawn("saver", saver)
    workers.run_for(seconds)

    assert workers.iterations["sampler-1"] > 0 and workers.iterations["sampler-2"] > 0
    assert saves["verified"] > 0, saves
    assert buf.trajectory_counter == adder.next
    # the last state, quiescent: a final checkpoint holds everything the buffer holds
    buf.save_checkpoint(str(tmp_path / "final"))
    held = verify_snapshot(tmp_path / "final", reader, window if not buf.auto_save else 0)
    assert held == (min(window, adder.next) if not buf.auto_save else adder.next)
    if not buf.auto_save:
        assert buf.get_stats()["evicted_trajectories"] == adder.next - window > 0  # the ring wrapped


# -- 2. prefetching: a background sampler feeding a queue ------------------------------------------
@pytest.mark.parametrize(
    ("setup", "duration"), cases("prefetch", ["memory", "pt-cache<window", "segment-cache<window"])
)
def test_prefetch_thread_while_main_adds_flushes_and_clears_cache(make_buffer, setup, duration, seconds):
    sizes = [4, 8, 16, 24]
    buf = make_buffer(setup, sample_window_size=8)
    rng = random.Random(7)
    adder = Adder(buf, rng, Adder.rate_for(seconds))
    adder.step()
    batches: queue.Queue = queue.Queue(maxsize=8)
    workers = Workers()
    prng = random.Random(8)

    def prefetch() -> None:
        try:
            batch = checked_sample(buf, prng.choice([1, 32, 256]), max(sizes))
        except EmptyBufferError:
            # only possible without auto_save, where clear_cache() empties the buffer
            assert not buf.auto_save, "an auto-save buffer became empty"
            time.sleep(0.001)
            return
        while not workers.stop.is_set():
            try:
                batches.put((batch, clone_batch(batch)), timeout=0.05)
                return
            except queue.Full:
                continue

    workers.spawn("prefetcher", prefetch)
    consumed = {"batches": 0, "flush": 0, "clear_cache": 0, "window": 0}
    step = {"n": 0}

    def main_step() -> None:
        step["n"] += 1
        adder.step()
        if step["n"] % 7 == 0:
            buf.flush()
            consumed["flush"] += 1
        if step["n"] % 23 == 0:
            buf.clear_cache()
            consumed["clear_cache"] += 1
        if step["n"] % 11 == 0:
            buf.sample_window_size = rng.choice(sizes)
            consumed["window"] += 1
        while True:
            try:
                batch, copy = batches.get_nowait()
            except queue.Empty:
                break
            # checked again by the consumer, after more adds: the batch is still intact
            check_rows(batch)
            assert same_batch(batch, copy), "a prefetched batch changed after later adds"
            consumed["batches"] += 1

    workers.run_for(seconds, main_step, min_steps=24)  # one clear_cache() at least
    assert consumed["batches"] > 0 and consumed["clear_cache"] > 0 and consumed["flush"] > 0, consumed
    adder.step()  # without auto_save the last clear_cache() may have emptied the buffer
    buf.flush()
    if buf.auto_save:
        assert buf.size == adder.next
        assert buf.get_stats()["pending_writes"] == 0
    checked_sample(buf, 512, max(sizes))


# -- 3. close() while other threads add and sample -------------------------------------------------
@pytest.mark.parametrize(("setup", "duration"), cases("close"))
def test_close_while_adding_and_sampling_does_not_deadlock(make_buffer, setup, duration, seconds):
    buf = make_buffer(setup)
    window = buf.sample_window_size
    workers = Workers()
    adder = Adder(buf, random.Random(11), Adder.rate_for(seconds), workers.stop)
    adder.step()
    workers.spawn("adder", adder.step)
    srng = random.Random(12)
    workers.spawn("sampler", lambda: checked_sample(buf, srng.choice([1, 64, 512]), window))
    crng = random.Random(13)
    closes = {"n": 0}

    def closer() -> None:
        buf.close()
        closes["n"] += 1
        time.sleep(crng.uniform(0, 0.01))

    workers.spawn("closer", closer)
    workers.run_for(seconds)
    assert closes["n"] > 0 and workers.iterations["sampler"] > 0

    # after the storm: close() still finishes, and with auto_save everything added is on disk
    within(JOIN_TIMEOUT, buf.close, "close() after concurrent closes")
    assert buf.trajectory_counter == adder.next
    if buf.auto_save:
        assert buf.get_stats()["pending_writes"] == 0
        reader = TrajectoryReplayBuffer(sample_window_size=0)
        reader.load_checkpoint(buf.auto_save_path)
        assert reader.size == adder.next
        check_rows(reader.sample(1000))
        index = json.loads((Path(buf.auto_save_path) / "trajectory_index.json").read_text())
        assert index["trajectory_id_list"] == list(range(adder.next))


# -- 4. races the stress tests found, forced deterministically (regression tests) -------------------
def test_close_racing_a_segment_append_loses_no_write(make_buffer, monkeypatch):
    """close() must not close the auto-save segment's column files under a background append of
    a trajectory added between close()'s drain and its lock (it did: the write failed with
    ValueError('I/O operation on closed file') and close() raised WriterError)."""
    buf = make_buffer("segment-cache<window")
    buf.add_trajectories([traj(0)])
    buf.flush()
    entered, go, gate = threading.Event(), threading.Event(), {"on": False}
    append = SegmentStore._append

    class HeldFile:
        """A column file whose first write waits for ``go``: the writer is held mid-append."""

        def __init__(self, f) -> None:
            self.f = f

        def write(self, data):
            if not entered.is_set():
                entered.set()
                go.wait(JOIN_TIMEOUT)
            return self.f.write(data)

        def __getattr__(self, name: str):
            return getattr(self.f, name)

    def gated_append(self, rows, *args):
        if gate["on"]:
            gate["on"] = False
            self._files = [HeldFile(f) for f in self._files]
        return append(self, rows, *args)

    monkeypatch.setattr(SegmentStore, "_append", gated_append)
    drain = AutoSaver.drain

    def drain_then_add(saver: AutoSaver) -> None:
        drain(saver)
        if buf.trajectory_counter == 1:
            # another thread adds between close()'s drain and its lock; the writer starts
            # appending that trajectory (and is held there)
            gate["on"] = True
            buf.add_trajectories([traj(1)])
            assert entered.wait(JOIN_TIMEOUT)

    monkeypatch.setattr(AutoSaver, "drain", drain_then_add)
    own_close = OwnDirectory.close

    def close_then_let_the_writer_go(own: OwnDirectory, release: bool = True) -> None:
        threading.Timer(0.2, go.set).start()  # a close() that waits for the append also passes
        own_close(own, release=release)

    monkeypatch.setattr(OwnDirectory, "close", close_then_let_the_writer_go)
    try:
        within(JOIN_TIMEOUT, buf.close, "close() while the writer appends")
        monkeypatch.setattr(AutoSaver, "drain", drain)
        within(JOIN_TIMEOUT, buf.flush, "flush() after it")
    finally:
        go.set()
    reader = TrajectoryReplayBuffer(sample_window_size=0)
    reader.load_checkpoint(buf.auto_save_path)
    assert reader.size == 2


def test_add_racing_close_does_not_strand_its_write(make_buffer, monkeypatch):
    """An add racing close() must get its write run (it could be queued on a writer thread that
    had already left its loop, then forgotten by close(): flush()/close() waited forever)."""
    loop = writer_mod.BackgroundWriter._loop
    left = threading.Event()

    def loop_then_linger(self) -> None:
        loop(self)
        left.set()
        time.sleep(0.3)  # the OS deschedules the writer thread right after it leaves its loop

    monkeypatch.setattr(writer_mod.BackgroundWriter, "_loop", loop_then_linger)
    buf = make_buffer("pt-cache<window")
    buf.add_trajectories([traj(0)])
    buf.flush()
    closer = threading.Thread(target=buf.close, daemon=True)
    closer.start()
    assert left.wait(JOIN_TIMEOUT)  # close() is joining the writer, which has left its loop
    buf.add_trajectories([traj(1)])  # meanwhile another thread adds
    closer.join(JOIN_TIMEOUT)
    try:
        within(1.0, buf.flush, "flush() after an add that raced close()")
    except AssertionError:
        buf.add_trajectories([traj(2)])  # a new writer thread runs a stranded job: no hang at teardown
        raise
    assert buf.get_stats()["files_written"] == 2


def test_flush_waits_only_for_earlier_trajectories(make_buffer, monkeypatch):
    """flush() waits for the trajectories added before it, not for an empty writer queue (it did:
    while a producer outpaced the disk, flush(), save_checkpoint() and close() never returned)."""
    buf = make_buffer("pt-cache<window")
    tokens = threading.Semaphore(0)  # one per trajectory file the writer may write
    write = formats_mod.write

    def gated_write(*args, **kwargs):
        tokens.acquire(timeout=JOIN_TIMEOUT)
        return write(*args, **kwargs)

    monkeypatch.setattr(formats_mod, "write", gated_write)
    buf.add_trajectories([traj(0)])
    flusher = threading.Thread(target=buf.flush, daemon=True)
    flusher.start()
    time.sleep(0.2)  # flush() waits for trajectory 0
    buf.add_trajectories([traj(1)])  # the producer goes on adding
    tokens.release()  # trajectory 0 is written: flush() has nothing left to wait for
    try:
        flusher.join(1.0)
        assert not flusher.is_alive(), "flush() waits for a trajectory added after it was called"
    finally:
        for _ in range(2):
            tokens.release()
        flusher.join(JOIN_TIMEOUT)
