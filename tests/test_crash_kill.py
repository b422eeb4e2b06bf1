"""Real crash test: a child process streams trajectories into an auto-save buffer and is killed
with ``SIGKILL`` at random moments; the directory must come back intact, every time.

One directory per format survives many kills. Each *round*:

1. The child (``tests/helpers/crash_child.py``, a separate Python process) continues the
   directory and streams coded trajectories of varying sizes into it. After every few
   ``add_trajectories`` calls it calls ``flush()`` and reports the ids added since the previous
   report on stdout: those are *acknowledged* (durable).
2. The parent kills it with ``SIGKILL`` at a moment drawn from a seeded RNG: a delay after start
   (start-up, reopening and recovery, or writing), a delay after the buffer reported that it
   opened (writing), or right after the ``j``-th acknowledgement (the next writes are under way).
3. The crashed directory is read as it is, without repair: ``read_directory`` (the library's
   reading path) must list every acknowledged trajectory, and every trajectory it lists must be
   byte-identical (``read_rows``) to the trajectory regenerated from its id;
   ``load_checkpoint`` into a fresh buffer must load it and sample aligned transitions.
4. The directory is continued as an ``auto_save_path``: no ``.tmp-`` file is left anywhere,
   segment column files hold exactly the indexed rows, ids continue past every id present, and
   the continued buffer can add, flush, close and be reloaded.
5. The child is restarted on the same directory for the next round (it continues numbering).

Two tests kill the child at one deterministic moment instead:

* ``test_kill_before_first_flush``: after the background writer has written (and, for
  ``segment``, journaled) two trajectories of a fresh directory, before any ``flush()``.
* ``test_kill_while_starting_segment``: inside the atomic write of a new segment's
  ``segment.json``. The parent steps the child (``SIGSTOP``, look at the directory, ``SIGCONT``)
  until it is stopped with the ``.tmp-`` file present, then kills it there.

The soak variant (``-m soak`` or ``RLINF_SOAK=1``; ``RLINF_SOAK_KILLS`` per format, default 150)
does 300 kills in all; pyproject does not deselect the ``soak`` marker by default, so it skips
itself otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import random
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import CODED_DICT_FIELDS, CODED_STEP_FIELDS, assert_aligned

from rlinf_replay_buffer import TrajectoryReplayBuffer
from rlinf_replay_buffer.directory import read_directory
from rlinf_replay_buffer.formats.segment import SEGMENT_RE, SegmentStore
from rlinf_replay_buffer.journal import JOURNAL
from rlinf_replay_buffer.metadata import read_metadata
from rlinf_replay_buffer.naming import list_trajectory_files
from rlinf_replay_buffer.store import read_rows

CHILD = Path(__file__).resolve().parent / "helpers" / "crash_child.py"
_spec = importlib.util.spec_from_file_location("crash_child", CHILD)
assert _spec is not None and _spec.loader is not None
child = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(child)

FORMATS = ("pt", "segment")
CI_KILLS = 3  # per format: 6 in total (the fault-injection harness covers every step)
SOAK_KILLS = int(os.environ.get("RLINF_SOAK_KILLS", "150"))  # per format: 300 in total
#: largest id whose codes float32 holds exactly (c = 1000 * id + ...): sampled ids are checked below it
EXACT_IDS = 16_000
#: per round, besides every trajectory new since the last round, re-read this many older ones
RECHECK_TAIL = 32
RECHECK_RANDOM = 32
TIMEOUT = 60.0  # a child that neither reports nor exits for this long is hung


# -- expected content ---------------------------------------------------------------------------
def expected_rows(tid: int) -> dict[tuple[str, ...], torch.Tensor]:
    """Aligned rows ``[T * B, ...]`` per column of trajectory ``tid``, built without the library:
    the child's trajectory generated directly in the aligned layout, flattened."""
    traj = child.make_trajectory(tid, layout="aligned")
    t, b = int(traj.rewards.shape[0]), int(traj.rewards.shape[1])
    out: dict[tuple[str, ...], torch.Tensor] = {}
    for name in sorted(CODED_STEP_FIELDS):
        out[(name,)] = getattr(traj, name).reshape(t * b, *getattr(traj, name).shape[2:])
    for name in sorted(CODED_DICT_FIELDS):
        for key, value in getattr(traj, name).items():
            out[(name, key)] = value.reshape(t * b, *value.shape[2:])
    return out


def assert_identical(tid: int, record, got: dict[tuple[str, ...], torch.Tensor]) -> None:
    """Rows and index entry of ``tid`` as read from disk are exactly what the child added."""
    s = child.spec(tid)
    want = expected_rows(tid)
    assert (record.num_steps, record.num_envs) == (s["n"] * s["e"], s["num_envs"]), f"trajectory {tid}"
    assert record.max_episode_length == s["n"], f"trajectory {tid}"
    assert record.model_weights_id == child.weights_id(tid), f"trajectory {tid}"
    assert record.model_update_count == tid // 16, f"trajectory {tid}"
    assert sorted(got) == sorted(want), f"trajectory {tid}: columns {sorted(got)}"
    for key, value in want.items():
        g = got[key]
        assert g.dtype == value.dtype and tuple(g.shape) == tuple(value.shape), f"trajectory {tid} {key}"
        assert g.contiguous().numpy().tobytes() == value.contiguous().numpy().tobytes(), (
            f"trajectory {tid}: column {key} differs from what the child added"
        )


def tmp_leftovers(directory: Path) -> list[str]:
    """Unfinished atomic writes and staging directories anywhere under ``directory``."""
    found = []
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            if name.startswith(".tmp-") or ".partial-" in name or ".old-" in name:
                found.append(os.path.relpath(os.path.join(root, name), directory))
    return found


def check_sample(buffer: TrajectoryReplayBuffer, ids: set[int], num: int = 256) -> None:
    """Sampled transitions are aligned and come from trajectories in ``ids``."""
    batch = buffer.sample(num)
    assert_aligned(batch)
    if ids and max(ids) < EXACT_IDS:
        sampled = set((batch["curr_obs"]["states"][:, 0] // 1000).to(torch.int64).tolist())
        assert sampled <= ids, f"sampled trajectories {sorted(sampled - ids)} are not in the directory"


# -- one child run ------------------------------------------------------------------------------
@dataclass
class Run:
    """What one child reported before it was killed."""

    opened: tuple[int, int] | None = None  # (trajectory_counter, size) at open
    acks: list[list[int]] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    trigger: str = ""
    lifetime: float = 0.0
    returncode: int | None = None
    stderr: str = ""

    @property
    def acked(self) -> list[int]:
        return [i for ack in self.acks for i in ack]


def run_and_kill(directory: Path, fmt: str, seed: int, rng: random.Random, log: Path) -> Run:
    """Start the child on ``directory``, SIGKILL it at a moment drawn from ``rng``, and return
    what it reported (complete lines only)."""
    mode = rng.choices(("spawn", "open", "ack"), weights=(5, 3, 2))[0]
    low, high = {"spawn": (1.0, 2.5), "open": (0.0, 1.0), "ack": (0.0, 0.002)}[mode]
    delay = rng.uniform(low, high)
    nth_ack = rng.randint(1, 40)
    run = Run()
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(directory), fmt, str(seed)],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    start = time.monotonic()
    deadline = start + delay if mode == "spawn" else None
    buf = b""
    fd = proc.stdout.fileno()
    eof = False

    def take_lines() -> None:
        nonlocal buf, deadline
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            words = raw.decode().split()
            if words[0] == "open":
                run.opened = (int(words[1]), int(words[2]))
                if mode == "open":
                    deadline = time.monotonic() + delay
            elif words[0] == "ack":
                run.acks.append([int(x) for x in words[1].split(",")])
                if mode == "ack" and len(run.acks) == nth_ack and deadline is None:
                    deadline = time.monotonic() + delay
            else:
                run.other.append(raw.decode())

    try:
        while not eof:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if now - start > TIMEOUT:
                break
            wait = 0.05 if deadline is None else max(0.0, deadline - now)
            ready, _, _ = select.select([fd], [], [], min(wait, 0.05))
            if ready:
                chunk = os.read(fd, 1 << 16)
                eof = not chunk
                buf += chunk
                take_lines()
        run.trigger = f"{mode}+{delay:.3f}s" + (f" after ack {nth_ack}" if mode == "ack" else "")
        if deadline is None and not eof:  # the trigger never came (e.g. too few acks): kill now
            run.trigger += " (trigger not reached, killed at once)"
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        run.lifetime = time.monotonic() - start
        while chunk := os.read(fd, 1 << 16):  # lines written before the kill are acknowledged
            buf += chunk
        take_lines()
        run.returncode = proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    run.stderr = log.read_text(errors="replace")[-3000:]
    return run


# -- a directory that survives many kills -------------------------------------------------------
@dataclass
class Campaign:
    directory: Path
    scratch: Path  # auto-save path of the fresh buffers that load the directory
    fmt: str
    seed: int
    rng: random.Random
    acked: set[int] = field(default_factory=set)
    present: set[int] = field(default_factory=set)  # ids in the directory (index or file)
    verified: set[int] = field(default_factory=set)  # byte-checked at least once
    kills: int = 0
    acks: int = 0
    triggers: dict[str, int] = field(default_factory=dict)
    phases: dict[str, int] = field(default_factory=dict)  # where the kills landed, by the reports
    durations: list[float] = field(default_factory=list)
    crashed_ids: list[int] = field(default_factory=list)  # the index as the last kill left it

    def run_round(self, number: int, tmp: Path) -> None:
        seed = self.seed * 100_000 + number
        run = run_and_kill(self.directory, self.fmt, seed, self.rng, tmp / f"child-{number}.err")
        where = f"{self.fmt} round {number} (child seed {seed}, kill {run.trigger}, {run.lifetime:.2f}s)"
        assert run.returncode == -signal.SIGKILL, f"{where}: child exited {run.returncode}:\n{run.stderr}"
        assert not run.other, f"{where}: child reported {run.other}"
        self.kills += 1
        self.acks += len(run.acks)
        mode = run.trigger.split("+")[0]
        self.triggers[mode] = self.triggers.get(mode, 0) + 1
        self.durations.append(run.lifetime)
        phase = "before open" if run.opened is None else "before 1st ack" if not run.acks else "streaming"
        self.phases[phase] = self.phases.get(phase, 0) + 1
        if run.opened is not None:
            counter, size = run.opened
            assert counter > max(self.present, default=-1), f"{where}: reopened with counter {counter}"
            assert size >= len(self.acked), f"{where}: reopened holding {size} < {len(self.acked)} acked"
        expect = run.opened[0] if run.opened else None
        for tid in run.acked:  # ids continue the directory's numbering, never reuse an id
            assert tid not in self.present, f"{where}: id {tid} was already in the directory"
            assert expect is None or tid == expect, f"{where}: acked id {tid}, expected {expect}"
            expect = tid + 1
        self.acked.update(run.acked)
        self.verify_crashed(where)
        self.continue_directory(where, number)

    def verify_crashed(self, where: str, everything: bool = False) -> None:
        """The directory as the kill left it: complete, exact, loadable."""
        if not (self.directory / "metadata.json").exists():  # killed before it became a buffer
            assert not self.acked, f"{where}: metadata.json is gone"
            self.crashed_ids = []
            return
        contents, schema = read_directory(str(self.directory))  # raises if it needs repair
        ids = [r.trajectory_id for r in contents.records]
        self.crashed_ids = ids
        assert ids == sorted(set(ids)), f"{where}: index ids not unique and increasing"
        missing = self.acked - set(ids)
        assert not missing, f"{where}: acknowledged trajectories lost: {sorted(missing)[:20]}"
        files = set(list_trajectory_files(str(self.directory)))
        assert contents.counter > max([*ids, *files], default=-1)
        self.present |= set(ids) | files
        self.check_records(where, contents.records, schema, everything)
        # a fresh buffer loads it: indexing all of it (rows stay on disk and are sampled from
        # there) and, at the end, reading all of it into memory
        self.load_fresh(where, ids, contents.counter, in_memory=everything)

    def load_fresh(self, where: str, ids: list[int], counter: int, in_memory: bool) -> None:
        if in_memory:
            fresh = TrajectoryReplayBuffer(seed=len(ids), sample_window_size=0)
        else:
            fresh = TrajectoryReplayBuffer(
                seed=len(ids),
                auto_save=True,
                auto_save_path=str(self.scratch),
                enable_cache=False,
                sample_window_size=0,
            )
        try:
            fresh.load_checkpoint(str(self.directory))
            assert len(fresh) == len(ids), f"{where}: a fresh buffer loaded {len(fresh)} of {len(ids)}"
            assert fresh.trajectory_counter == counter, where
            if ids:
                check_sample(fresh, set(ids), 64)
        finally:
            fresh.close()

    def check_records(self, where: str, records: list, schema, everything: bool) -> None:
        """Byte-compare every trajectory new since the last check, the tail before it and a
        random sample of older ones (``everything``: all of them)."""
        old = [r for r in records if r.trajectory_id in self.verified]
        chosen = [r for r in records if r.trajectory_id not in self.verified]
        if everything:
            chosen += old
        else:
            chosen += old[-RECHECK_TAIL:]
            rest = old[:-RECHECK_TAIL]
            chosen += self.rng.sample(rest, min(RECHECK_RANDOM, len(rest)))
        store = SegmentStore(str(self.directory), schema) if self.fmt == "segment" and schema else None
        for record in chosen:
            try:
                got = read_rows(record, schema, store)
            except Exception as exc:
                raise AssertionError(f"{where}: trajectory {record.trajectory_id} unreadable: {exc}") from exc
            assert_identical(record.trajectory_id, record, got)
            self.verified.add(record.trajectory_id)
        if store is not None:
            store.forget_maps()

    def continue_directory(self, where: str, number: int) -> None:
        """Continue the crashed directory as an auto-save path; add, flush, close, reload."""
        buffer = TrajectoryReplayBuffer(
            seed=number,
            auto_save=True,
            auto_save_path=str(self.directory),
            trajectory_format=self.fmt,
            cache_size=2,
            sample_window_size=0,
        )
        try:
            before, _ = read_directory(str(self.directory))
            n_before = len(before.records)
            crashed = self.crashed_ids
            assert before.all_ids == crashed, f"{where}: reopening changed the index"
            left = tmp_leftovers(self.directory)
            assert not left, f"{where}: temporary files left after reopening: {left}"
            if self.fmt == "segment":
                self.check_segments_recovered(where)
            assert len(buffer) == n_before, where
            assert buffer.trajectory_counter > max(self.present, default=-1), where
            if n_before:
                check_sample(buffer, set(before.all_ids), 64)
            first = buffer.trajectory_counter
            count = 1 + number % 2
            ids = buffer.add_trajectories([child.make_trajectory(first + j) for j in range(count)])
            assert ids == list(range(first, first + count)), where
            assert not set(ids) & self.present, f"{where}: new ids {ids} collide with the directory"
            buffer.flush()
        finally:
            buffer.close()
        self.acked.update(ids)
        self.present.update(ids)
        assert not (self.directory / JOURNAL).exists(), f"{where}: close() left the journal"
        after, schema = read_directory(str(self.directory))
        assert [r.trajectory_id for r in after.records] == [r.trajectory_id for r in before.records] + ids
        meta = read_metadata(str(self.directory))
        assert meta["size"] == len(after.records), where
        assert meta["total_samples"] == sum(r.num_transitions for r in after.records), where
        assert meta["trajectory_counter"] == ids[-1] + 1, where
        self.check_records(where, after.records[-count:], schema, everything=True)
        reloaded = TrajectoryReplayBuffer(seed=number, sample_window_size=count)
        reloaded.load_checkpoint(str(self.directory))
        assert len(reloaded) == count and reloaded.trajectory_counter == ids[-1] + 1, where
        check_sample(reloaded, set(ids), 64)

    def check_segments_recovered(self, where: str) -> None:
        """After reopening, no column or source file holds bytes beyond the last row the index
        names."""
        contents, schema = read_directory(str(self.directory))
        ends: dict[str, int] = {}
        for r in contents.records:
            ends[r.file] = max(ends.get(r.file, 0), r.row + r.num_transitions)
        specs = list(schema.values()) if schema else []
        for seg in os.listdir(self.directory):
            if not SEGMENT_RE.match(seg):
                continue
            for col in os.listdir(self.directory / seg):
                if col.endswith(".bin"):  # a column file NNN.bin, or a source column src-NNN.bin
                    i = int(col.removeprefix("src-").split(".")[0])
                    row_bytes = 0 if i >= len(specs) else 8 if col.startswith("src-") else specs[i].row_bytes
                    size = (self.directory / seg / col).stat().st_size
                    want = ends.get(seg, 0) * row_bytes
                    assert size == want, f"{where}: {seg}/{col} holds {size} bytes, index names {want}"


def run_campaign(tmp_path: Path, fmt: str, kills: int, seed: int) -> Campaign:
    directory = tmp_path / f"buffer-{fmt}"  # created by the first child
    campaign = Campaign(
        directory, tmp_path / f"scratch-{fmt}", fmt, seed, random.Random(f"crash-kill/{fmt}/{seed}")
    )
    started = time.monotonic()
    for number in range(kills):
        campaign.run_round(number, tmp_path)
    campaign.verify_crashed(f"{fmt} final", everything=True)
    assert campaign.verified >= campaign.acked
    elapsed = time.monotonic() - started
    print(
        f"\n{fmt}: {campaign.kills} kills in {elapsed:.1f}s (child lifetimes "
        f"{min(campaign.durations):.2f}-{max(campaign.durations):.2f}s), triggers {campaign.triggers}, "
        f"landed {campaign.phases}, "
        f"{campaign.acks} acks, {len(campaign.acked)} acknowledged trajectories, "
        f"{len(campaign.present)} in the directory, {len(campaign.verified)} byte-checked"
    )
    return campaign


@pytest.mark.parametrize("fmt", FORMATS)
def test_crash_kill(tmp_path: Path, fmt: str) -> None:
    campaign = run_campaign(tmp_path, fmt, CI_KILLS, seed=1)
    assert campaign.kills == CI_KILLS
    assert campaign.acks > 0


def _soak_selected(config: pytest.Config) -> bool:
    return os.environ.get("RLINF_SOAK") == "1" or "soak" in (config.getoption("markexpr") or "")


@pytest.mark.soak
@pytest.mark.parametrize("fmt", FORMATS)
def test_crash_kill_soak(tmp_path: Path, fmt: str, request: pytest.FixtureRequest) -> None:
    if not _soak_selected(request.config):
        pytest.skip("soak test: run with -m soak or RLINF_SOAK=1")
    seed = int(os.environ.get("RLINF_SOAK_SEED", "7"))
    campaign = run_campaign(tmp_path, fmt, SOAK_KILLS, seed=seed)
    assert campaign.kills == SOAK_KILLS


# -- one deterministic moment: killed before the first flush of a fresh directory --------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_kill_before_first_flush(tmp_path: Path, fmt: str) -> None:
    directory = tmp_path / f"fresh-{fmt}"
    log = tmp_path / "child.err"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(directory), fmt, "3", "--hold"],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        lines = []
        while not lines or not lines[-1].startswith("committed"):
            line = proc.stdout.readline().decode()
            assert line, f"child exited early:\n{log.read_text()}"
            lines.append(line)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=TIMEOUT) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert lines[0].split() == ["open", "0", "0"]
    # nothing was acknowledged; the directory must still load and continue without repair
    contents, schema = read_directory(str(directory))
    store = SegmentStore(str(directory), schema) if fmt == "segment" and schema else None
    for record in contents.records:  # whatever it lists is exact
        assert_identical(record.trajectory_id, record, read_rows(record, schema, store))
    fresh = TrajectoryReplayBuffer(sample_window_size=0)
    fresh.load_checkpoint(str(directory))
    with TrajectoryReplayBuffer(
        auto_save=True, auto_save_path=str(directory), trajectory_format=fmt, cache_size=2
    ) as buffer:
        assert not tmp_leftovers(directory)
        first = buffer.trajectory_counter
        assert first > max(contents.all_ids, default=-1)
        assert buffer.add_trajectories([child.make_trajectory(first)]) == [first]
        buffer.flush()
    after, schema = read_directory(str(directory))
    assert after.records[-1].trajectory_id == first
    store = SegmentStore(str(directory), schema) if fmt == "segment" else None
    assert_identical(first, after.records[-1], read_rows(after.records[-1], schema, store))


# -- one deterministic moment: killed while a new segment's segment.json is being written -------
def freeze_in_segment_start(proc: subprocess.Popen, directory: Path, known: set[str]) -> bool:
    """Step the child (SIGSTOP, look, SIGCONT) from its ``open`` report until the segment it
    starts holds a ``.tmp-`` file but no ``segment.json`` yet; return with the child stopped
    there (True), or stopped after the moment passed (False)."""
    assert proc.stdout.readline().startswith(b"open")
    start = time.monotonic()
    while time.monotonic() - start < TIMEOUT:
        os.kill(proc.pid, signal.SIGSTOP)
        os.waitpid(proc.pid, os.WUNTRACED)
        new = [n for n in os.listdir(directory) if SEGMENT_RE.match(n) and n not in known]
        if new:
            names = os.listdir(directory / new[0])
            if "segment.json" in names:
                return False
            if any(n.startswith(".tmp-") for n in names):
                return True
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.0002)
    return False


def test_kill_while_starting_segment(tmp_path: Path) -> None:
    directory = tmp_path / "buffer-segment"
    with TrajectoryReplayBuffer(
        auto_save=True, auto_save_path=str(directory), trajectory_format="segment", cache_size=2
    ) as first:
        first.add_trajectories([child.make_trajectory(0)])
        first.flush()
    for attempt in range(8):  # the moment is a few hundred microseconds long: usually caught at once
        known = {n for n in os.listdir(directory) if SEGMENT_RE.match(n)}
        with open(tmp_path / "child.err", "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, str(CHILD), str(directory), "segment", str(attempt)],
                stdout=subprocess.PIPE,
                stderr=err,
            )
        try:
            caught = freeze_in_segment_start(proc, directory, known)
            os.kill(proc.pid, signal.SIGKILL)  # the child is stopped where we looked
            assert proc.wait(timeout=TIMEOUT) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        if caught:
            break
    else:
        pytest.skip("never stopped the child inside the write of segment.json")
    contents, schema = read_directory(str(directory))  # loads as it is
    assert 0 in [r.trajectory_id for r in contents.records]
    with TrajectoryReplayBuffer(
        auto_save=True, auto_save_path=str(directory), trajectory_format="segment", cache_size=2
    ) as buffer:
        first = buffer.trajectory_counter
        assert buffer.add_trajectories([child.make_trajectory(first)]) == [first]
        buffer.flush()
        left = tmp_leftovers(directory)
    after, schema = read_directory(str(directory))
    assert after.records[-1].trajectory_id == first
    store = SegmentStore(str(directory), schema)
    assert_identical(first, after.records[-1], read_rows(after.records[-1], schema, store))
    assert not left, f"temporary files left after reopening: {left}"
