"""Write faults (full disk, I/O errors) meet the auto-saver: errors go to the call that can act on
them, and a ``flush()`` that returns never lies (docs/durability.md, "When a write fails").

Faults are real ones: :class:`DiskFault` replaces ``os.write`` or ``os.fsync`` (module attributes,
so every writer in the process calls the replacement) and makes the calls on one kind of file
fail with ``ENOSPC`` or ``EIO`` from the N-th call on: partly written first, as a full disk does,
until the test "frees the space", or once, as a failing device does. Which file a call writes is
read from ``/proc/self/fd``, so nothing of the library is patched but the operating system's
functions it calls.

Durability is proven the hard way: a child process (this file, run as a program) adds, meets the
fault, frees the space, flushes again and SIGKILLs itself the moment that ``flush()`` returns;
the parent then reads the directory: every acknowledged trajectory is listed exactly once and is
byte-identical to what was added, evicted ones are gone, and the directory continues, closes and
verifies clean.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # run as the child program
    sys.path.insert(0, str(TESTS))

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import CODED_DICT_FIELDS, CODED_STEP_FIELDS, assert_aligned, coded_trajectory  # noqa: E402
from conftest import TrackedBuffer as TrajectoryReplayBuffer  # noqa: E402

from rlinf_replay_buffer import RateLimiter, WriterError  # noqa: E402
from rlinf_replay_buffer.cli import main as cli_main  # noqa: E402
from rlinf_replay_buffer.directory import read_directory  # noqa: E402
from rlinf_replay_buffer.formats.segment import SEGMENT_RE, SegmentStore  # noqa: E402
from rlinf_replay_buffer.journal import INDEX, Journal, parse_journal  # noqa: E402
from rlinf_replay_buffer.naming import list_trajectory_files  # noqa: E402
from rlinf_replay_buffer.store import read_rows  # noqa: E402

FORMATS = ("pt", "pkl", "segment")
CHILD_TIMEOUT = 120.0  # a child that has not died by then is hung
WAIT = 30.0  # seconds any wait for the background writer may take at most

#: the files a fault can target, by the path of the descriptor written or fsync'd
TARGETS = {
    "journal": r"/trajectory_index\.journal$",
    "file": r"/\.tmp-[0-9a-f]+-trajectory_\d+_[^/]*\.(pt|pkl)$",  # a trajectory file being written
    "rows": r"/seg-\d{6,}/\d{3,}\.bin$",  # a segment's column file
    "segment-start": r"/seg-\d{6,}/\.tmp-[0-9a-f]+-segment\.json$",  # a new segment's description
}
CAUSES = {errno.ENOSPC: "No space left on device", errno.EIO: "Input/output error"}


# -- fault injection ----------------------------------------------------------------------------
class DiskFault:
    """Makes ``os.write`` or ``os.fsync`` fail on the files of one kind (:data:`TARGETS`).

    Args:
        call: ``"write"`` or ``"fsync"``.
        target: a key of :data:`TARGETS`.
        code: the errno (``ENOSPC``: a full disk; ``EIO``: a failing device).
        nth: the first matching call that fails (1 = the first).
        persist: keep failing every matching call until :meth:`free` (a full disk); else fail
            once (a transient I/O error).
        partial: a failing write first writes half its bytes and returns that count, and the
            write of the rest fails, as on a disk that fills up mid-write.
    """

    def __init__(
        self,
        call: str,
        target: str,
        code: int = errno.ENOSPC,
        nth: int = 1,
        persist: bool = True,
        partial: bool = False,
    ) -> None:
        self.call, self.target, self.code = call, target, code
        self.nth, self.persist, self.partial = nth, persist, partial
        self.pattern = re.compile(TARGETS[target])
        self.calls = 0  # matching calls seen
        self.failures = 0  # matching calls that failed (a partial write counts once)
        self.synced_after_failure = 0  # matching fsyncs that succeeded after a failure
        self.freed = False
        self.hit = threading.Event()
        self._short = False  # the last failing write returned a short count: fail the next
        self._lock = threading.Lock()

    def spec(self) -> dict[str, Any]:
        """The arguments, for a child process."""
        keys = ("call", "target", "code", "nth", "persist", "partial")
        return {k: getattr(self, k) for k in keys}

    def free(self) -> None:
        """The space was freed (the device recovered): calls succeed from now on."""
        with self._lock:
            self.freed = True

    def _matches(self, fd: int) -> bool:
        try:
            return bool(self.pattern.search(os.readlink(f"/proc/self/fd/{fd}")))
        except OSError:
            return False

    def _fails(self) -> bool:
        """Count a matching call; whether it fails (call under the lock)."""
        self.calls += 1
        if self.freed or self.calls < self.nth or (self.failures and not self.persist and not self._short):
            return False
        return True

    def error(self) -> OSError:
        return OSError(self.code, os.strerror(self.code))

    def install(self, setattr_: Callable[[Any, str, Any], None]) -> None:
        """Replace ``os.write`` or ``os.fsync`` with ``setattr_(os, name, replacement)``."""
        real = getattr(os, self.call)

        def write(fd: int, data: Any) -> int:
            if not self._matches(fd):
                return real(fd, data)
            with self._lock:
                if not self._fails():
                    return real(fd, data)
                view = memoryview(data).cast("B")
                if self.partial and not self._short and len(view) > 1:
                    self._short = True
                    self.failures += 1
                    return real(fd, view[: len(view) // 2])
                if not self._short:
                    self.failures += 1
                self._short = False
            self.hit.set()
            raise self.error()

        def fsync(fd: int) -> None:
            if not self._matches(fd):
                return real(fd)
            with self._lock:
                failing = self._fails()
                if failing:
                    self.failures += 1
            if failing:
                self.hit.set()
                raise self.error()
            real(fd)
            with self._lock:
                if self.failures:
                    self.synced_after_failure += 1

        setattr_(os, self.call, write if self.call == "write" else fsync)


class MethodFault:
    """Makes a public method of one of the writer's classes raise ``OSError(code)`` from its
    ``nth`` call on, until :meth:`free` (``persist``) or once, without doing anything."""

    def __init__(
        self, owner: type, name: str, code: int = errno.ENOSPC, nth: int = 1, persist: bool = True
    ) -> None:
        self.owner, self.name, self.code, self.nth, self.persist = owner, name, code, nth, persist
        self.calls = self.failures = 0
        self.freed = False
        self.hit = threading.Event()
        self._lock = threading.Lock()

    def free(self) -> None:
        """Calls succeed from now on."""
        with self._lock:
            self.freed = True

    def install(self, setattr_: Callable[[Any, str, Any], None]) -> None:
        """Replace the method with ``setattr_(owner, name, replacement)``."""
        real = getattr(self.owner, self.name)

        def failing(obj: Any, *args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls += 1
                fail = not self.freed and self.calls >= self.nth and (self.persist or not self.failures)
                self.failures += fail
            if fail:
                self.hit.set()
                raise OSError(self.code, os.strerror(self.code))
            return real(obj, *args, **kwargs)

        setattr_(self.owner, self.name, failing)


def journal_fault(via: str, code: int = errno.ENOSPC, nth: int = 1) -> DiskFault | MethodFault:
    """A fault on appending index lines: in ``os.write`` (a partial write, then the error) or in
    the public ``Journal.append``; it persists until freed for ``ENOSPC``, once for ``EIO``."""
    if via == "os.write":
        return DiskFault("write", "journal", code=code, nth=nth, persist=code == errno.ENOSPC, partial=True)
    return MethodFault(Journal, "append", code=code, nth=nth, persist=code == errno.ENOSPC)


def data_fault(fmt: str, failing: int, **kwargs: Any) -> DiskFault:
    """A fault on the data of trajectories from the one written ``failing``-th (0: the first)
    on: the fsync of a ``pt``/``pkl`` file being written (its bytes go through torch's and
    pickle's own writers), or the second column write of a segment append (one per column)."""
    if fmt == "segment":
        kwargs.setdefault("partial", True)
        return DiskFault("write", "rows", nth=failing * len(expected_rows(0)) + 2, **kwargs)
    return DiskFault("fsync", "file", nth=failing + 1, **kwargs)


# -- expected content ---------------------------------------------------------------------------
def trajectory(tid: int):
    """Trajectory ``tid`` as added (RLinf's layout; sizes vary with the id)."""
    return coded_trajectory(tid, n=2 + tid % 3, e=1 + tid % 2, num_envs=1 + tid % 2)


def expected_rows(tid: int) -> dict[tuple[str, ...], torch.Tensor]:
    """Aligned rows ``[T * B, ...]`` per column of trajectory ``tid``, built without the library."""
    traj = coded_trajectory(tid, n=2 + tid % 3, e=1 + tid % 2, num_envs=1 + tid % 2, layout="aligned")
    t, b = int(traj.rewards.shape[0]), int(traj.rewards.shape[1])
    out: dict[tuple[str, ...], torch.Tensor] = {}
    for name in CODED_STEP_FIELDS:
        value = getattr(traj, name)
        out[(name,)] = value.reshape(t * b, *value.shape[2:])
    for name in CODED_DICT_FIELDS:
        for key, value in getattr(traj, name).items():
            out[(name, key)] = value.reshape(t * b, *value.shape[2:])
    return out


def listed_ids(directory: Path) -> list[int]:
    """The ids the directory's index (file and journal) lists, in order, as a reader sees them."""
    contents, _ = read_directory(str(directory))
    return [r.trajectory_id for r in contents.records]


def assert_holds_exactly(directory: Path, fmt: str, ids: list[int]) -> None:
    """The directory lists exactly ``ids``, each once and byte-identical to what was added; no
    index line repeats an entry; a ``pt``/``pkl`` directory holds no other trajectory file."""
    contents, schema = read_directory(str(directory))
    got = [r.trajectory_id for r in contents.records]
    assert got == sorted(ids), f"{directory} lists {got}, expected {sorted(ids)}"
    store = SegmentStore(str(directory), schema) if fmt == "segment" else None
    for record in contents.records:
        rows = read_rows(record, schema, store)
        want = expected_rows(record.trajectory_id)
        assert sorted(rows) == sorted(want), f"trajectory {record.trajectory_id}: columns differ"
        for key, value in want.items():
            assert rows[key].contiguous().numpy().tobytes() == value.contiguous().numpy().tobytes(), (
                f"trajectory {record.trajectory_id}: column {key} differs from what was added"
            )
    lines, bad, torn = parse_journal(str(directory))
    assert not bad and not torn, f"journal: bad lines {bad}, torn {torn}"
    entries = [e["trajectory_id"] for e in lines if not e.get("removed")]
    assert len(entries) == len(set(entries)), f"the journal repeats entries: {entries}"
    if (directory / INDEX).exists():
        listed = json.loads((directory / INDEX).read_text())["trajectory_id_list"]
        assert len(listed) == len(set(listed)), f"{INDEX} repeats ids: {listed}"
    if fmt != "segment":
        assert sorted(list_trajectory_files(str(directory))) == sorted(ids), "files besides the listed ones"


def verify_ok(directory: Path) -> bool:
    """``rlinf-buffer verify PATH`` exits 0."""
    return cli_main(["verify", str(directory)]) == 0


def sampled_ids(buf: TrajectoryReplayBuffer, num: int = 4000) -> set[int]:
    batch = buf.sample(num)
    assert_aligned(batch)
    return set((batch["curr_obs"]["states"][:, 0] // 1000).to(torch.int64).tolist())


def auto(path: Path, fmt: str, **kwargs: Any) -> TrajectoryReplayBuffer:
    kwargs.setdefault("sample_window_size", 0)
    kwargs.setdefault("cache_size", 2)
    return TrajectoryReplayBuffer(auto_save=True, auto_save_path=str(path), trajectory_format=fmt, **kwargs)


def segments(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if SEGMENT_RE.match(p.name))


# -- in-process: which call raises, what the buffer holds -----------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_an_add_after_a_failed_write_is_added_and_flush_reports_the_failure(tmp_path, monkeypatch, fmt):
    """The next add does not wait for the writer, so it cannot act on the error: it adds its
    trajectory. flush() raises WriterError naming the failed trajectory and the cause, once;
    the next flush() writes it."""
    fault = data_fault(fmt, failing=1)
    fault.install(monkeypatch.setattr)
    path = tmp_path / "auto"
    buf = auto(path, fmt)
    assert buf.add_trajectories([trajectory(0)]) == [0]
    assert buf.add_trajectories([trajectory(1)]) == [1]  # its write fails in the background
    assert fault.hit.wait(WAIT)
    assert buf.add_trajectories([trajectory(2)]) == [2]
    assert (buf.size, buf.trajectory_counter) == (3, 3)
    assert sampled_ids(buf) == {0, 1, 2}  # sampling does not raise it either
    with pytest.raises(WriterError, match=r"trajectory 1: OSError: \[Errno 28\] No space left") as info:
        buf.flush()
    assert info.value.__cause__.errno == errno.ENOSPC
    assert "flush()" in str(info.value)
    fault.free()
    buf.flush()  # reported once: now it writes trajectory 1
    assert_holds_exactly(path, fmt, [0, 1, 2])
    buf.close()
    assert verify_ok(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_add_that_has_to_wait_for_a_failed_writer_raises_and_adds_nothing(tmp_path, monkeypatch, fmt):
    """With max_pending_bytes every add waits for the disk. The add that meets a failed write
    it has to wait for raises it, saying its own trajectories were NOT added, and changes
    nothing; once the space is freed the add goes through."""
    fault = data_fault(fmt, failing=1)
    fault.install(monkeypatch.setattr)
    path = tmp_path / "auto"
    buf = auto(path, fmt, max_pending_bytes=1)
    assert buf.add_trajectories([trajectory(0)]) == [0]
    assert buf.add_trajectories([trajectory(1)]) == [1]  # done; its write then fails
    assert fault.hit.wait(WAIT)
    before = (buf.size, buf.trajectory_counter, buf.total_samples, sampled_ids(buf))
    with pytest.raises(WriterError, match=r"trajectory 1: OSError.*No space left.*NOT added"):
        buf.add_trajectories([trajectory(2)])
    assert (buf.size, buf.trajectory_counter, buf.total_samples, sampled_ids(buf)) == before
    # the disk is still full: the next add retries the failed write, which fails again
    with pytest.raises(WriterError, match=r"trajectory 1: .*NOT added"):
        buf.add_trajectories([trajectory(2)])
    assert (buf.size, buf.trajectory_counter, buf.total_samples, sampled_ids(buf)) == before
    fault.free()
    assert buf.add_trajectories([trajectory(2)]) == [2]
    buf.flush()
    assert_holds_exactly(path, fmt, [0, 1, 2])
    buf.close()
    assert verify_ok(path)


def test_a_refused_add_gives_its_inserts_back_to_the_rate_limiter(tmp_path, monkeypatch):
    """An add the failed writer refuses changes nothing, the rate limiter's counts included:
    otherwise the limiter would hold back samples for transitions the buffer never got."""
    fault = data_fault("pt", failing=1)
    fault.install(monkeypatch.setattr)
    limiter = RateLimiter(samples_per_insert=1.0, min_size_to_sample=1, error_buffer=1e9)
    buf = auto(tmp_path / "auto", "pt", max_pending_bytes=1, rate_limiter=limiter)
    buf.add_trajectories([trajectory(0)])
    buf.add_trajectories([trajectory(1)])  # done; its write then fails
    assert fault.hit.wait(WAIT)
    before = limiter.stats()
    with pytest.raises(WriterError, match="NOT added"):
        buf.add_trajectories([trajectory(2)])
    assert limiter.stats() == before
    fault.free()
    buf.add_trajectories([trajectory(2)])
    assert limiter.stats()["inserts"] == before["inserts"] + trajectory(2).rewards.numel()
    buf.close()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("via", "code"), [("os.write", errno.ENOSPC), ("os.write", errno.EIO), ("Journal.append", errno.ENOSPC)]
)
def test_a_failed_journal_append_is_appended_by_the_next_flush(tmp_path, monkeypatch, fmt, via, code):
    """An index line that could not be appended is neither forgotten nor written twice: the
    retried flush() appends it (before any later line), and only then returns."""
    fault = journal_fault(via, code, nth=2)
    fault.install(monkeypatch.setattr)
    path = tmp_path / "auto"
    buf = auto(path, fmt)
    buf.add_trajectories([trajectory(i) for i in range(3)])
    buf.add_trajectories([trajectory(3)])
    with pytest.raises(WriterError, match=rf"trajectory 1: OSError: \[Errno {code}\] {CAUSES[code]}"):
        buf.flush()
    if code == errno.ENOSPC:  # still full: the journal was cut back, what it lists is whole
        assert listed_ids(path) == [0]
    fault.free()
    buf.flush()
    assert_holds_exactly(path, fmt, [0, 1, 2, 3])
    assert buf.add_trajectories([trajectory(4)]) == [4]
    buf.close()
    assert_holds_exactly(path, fmt, [0, 1, 2, 3, 4])
    assert verify_ok(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_failed_journal_fsync_is_done_again_by_the_next_flush(tmp_path, monkeypatch, fmt):
    """flush() raises when the journal's fsync fails (naming the trajectories that may not be
    durable); the next flush() fsyncs it again before returning."""
    fault = DiskFault("fsync", "journal", code=errno.EIO, persist=False)
    fault.install(monkeypatch.setattr)
    path = tmp_path / "auto"
    buf = auto(path, fmt)
    buf.add_trajectories([trajectory(i) for i in range(3)])
    with pytest.raises(WriterError, match=r"Input/output error.*trajectory 0 and the 2 written after it"):
        buf.flush()
    assert fault.synced_after_failure == 0
    buf.flush()
    assert fault.synced_after_failure >= 1, "flush() returned without fsyncing the journal again"
    assert_holds_exactly(path, fmt, [0, 1, 2])
    buf.close()
    assert verify_ok(path)


def test_a_failed_segment_fsync_appends_the_rows_again(tmp_path, monkeypatch):
    """Rows whose fsync failed are not trusted to a later fsync: they are appended again and
    only those copies are indexed."""
    fault = DiskFault("fsync", "rows", code=errno.EIO, persist=False)
    fault.install(monkeypatch.setattr)
    path = tmp_path / "auto"
    buf = auto(path, "segment")
    buf.add_trajectories([trajectory(i) for i in range(3)])
    with pytest.raises(WriterError, match=r"trajector(y|ies) 0.*fsync of their segment rows.*Input/output"):
        buf.flush()
    buf.flush()
    assert_holds_exactly(path, "segment", [0, 1, 2])
    assert sampled_ids(buf) == {0, 1, 2}
    buf.close()
    assert verify_ok(path)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("via", ["os.write", "Journal.append"])
def test_an_eviction_whose_removal_line_fails_keeps_the_trajectory_until_the_line_is_durable(
    tmp_path, monkeypatch, fmt, via
):
    """max_trajectories evicts the oldest. While its removal line cannot be written the
    directory keeps listing it and keeps its file (a repair finds it listed, never an orphan
    to resurrect); once the line is durable the file goes, and a repair keeps it gone."""
    path = tmp_path / "auto"
    buf = auto(path, fmt, max_trajectories=2)
    buf.add_trajectories([trajectory(0)])
    buf.add_trajectories([trajectory(1)])
    buf.flush()
    fault = journal_fault(via)
    fault.install(monkeypatch.setattr)
    assert buf.add_trajectories([trajectory(2)]) == [2]  # evicts 0
    with pytest.raises(WriterError, match=r"No space left on device"):
        buf.flush()
    assert sampled_ids(buf) == {1, 2}
    assert listed_ids(path) == [0, 1]  # 0 is still listed, 2 not yet
    if fmt != "segment":
        assert 0 in list_trajectory_files(str(path)), "the file of a listed trajectory was deleted"
    crashed = tmp_path / "crashed"  # what a crash now would leave, repaired
    shutil.copytree(path, crashed)
    assert cli_main(["verify", "--repair", str(crashed)]) in (0, 1)
    assert 0 in listed_ids(crashed)
    fault.free()
    buf.flush()
    assert_holds_exactly(path, fmt, [1, 2])
    repaired = tmp_path / "repaired"
    shutil.copytree(path, repaired)
    cli_main(["verify", "--repair", str(repaired)])
    assert listed_ids(repaired) == [1, 2], "a repair brought the evicted trajectory back"
    buf.close()
    assert verify_ok(path)
    assert_holds_exactly(path, fmt, [1, 2])


@pytest.mark.parametrize(
    ("fmt", "target"),
    [
        ("pt", "file"),
        ("pkl", "journal"),
        ("segment", "rows"),
        ("segment", "segment-start"),
        ("segment", "journal"),
    ],
)
@pytest.mark.parametrize("max_trajectories", [None, 3])
def test_a_transient_enospc_then_close_leaves_a_directory_that_verifies(
    tmp_path, monkeypatch, fmt, target, max_trajectories
):
    """close() raises the failure (and closes nothing); after the space is freed close() writes
    everything, and the directory passes verify and loads with exactly what the buffer held."""
    call = "fsync" if target in ("file", "segment-start") else "write"
    fault = DiskFault(call, target, nth=1, partial=call == "write")
    fault.install(monkeypatch.setattr)
    path = tmp_path / "auto"
    buf = auto(path, fmt, max_trajectories=max_trajectories)
    for i in range(5):
        assert buf.add_trajectories([trajectory(i)]) == [i]
    assert fault.hit.wait(WAIT)
    with pytest.raises(WriterError, match=r"No space left on device"):
        buf.close()
    fault.free()
    buf.close()
    kept = list(range(5))[-max_trajectories:] if max_trajectories else list(range(5))
    assert verify_ok(path)
    assert_holds_exactly(path, fmt, kept)
    if fmt == "segment":
        assert len(segments(path)) == 1, "a segment that could not start was left behind"
    reader = TrajectoryReplayBuffer(sample_window_size=0)
    reader.load_checkpoint(str(path))
    assert sampled_ids(reader) == set(kept)


# -- SIGKILL right after the retried flush() returns ----------------------------------------------
#: name -> the fault (``data``: :func:`data_fault`, ``disk``: :class:`DiskFault`, ``method``:
#: :class:`MethodFault` of ``Journal.append``), the adds flushed before it is installed, the adds
#: after it (each a list of ids, one add_trajectories call), and max_trajectories
SCENARIOS: dict[str, dict[str, Any]] = {
    "data": {"fault": {"kind": "data", "failing": 1}, "adds": [[0, 1], [2], [3, 4]]},
    "journal-enospc": {
        "fault": {"kind": "disk", "call": "write", "target": "journal", "nth": 2, "partial": True},
        "adds": [[0, 1], [2], [3]],
    },
    "journal-append-eio": {  # nothing else is appended after the failed line
        "fault": {"kind": "method", "code": errno.EIO, "persist": False},
        "flushed": [[0]],
        "adds": [[1]],
    },
    "journal-fsync-eio": {
        "fault": {"kind": "disk", "call": "fsync", "target": "journal", "code": errno.EIO, "persist": False},
        "adds": [[0], [1, 2]],
    },
    "evicting-journal-enospc": {
        "fault": {"kind": "disk", "call": "write", "target": "journal", "nth": 3, "partial": True},
        "adds": [[0], [1], [2, 3], [4], [5]],
        "max_trajectories": 2,
    },
    "evicting-data": {
        "fault": {"kind": "data", "failing": 2},
        "adds": [[0], [1], [2], [3, 4], [5]],
        "max_trajectories": 3,
    },
    "segment-fsync-eio": {
        "fault": {"kind": "disk", "call": "fsync", "target": "rows", "code": errno.EIO, "persist": False},
        "adds": [[0, 1], [2]],
        "formats": ("segment",),
    },
}
CHILD_CASES = [(fmt, name) for name, sc in SCENARIOS.items() for fmt in sc.get("formats", FORMATS)]


def make_fault(fmt: str, spec: dict[str, Any]) -> DiskFault | MethodFault:
    """The fault a scenario describes (``spec`` as in :data:`SCENARIOS`)."""
    kwargs = {k: v for k, v in spec.items() if k != "kind"}
    if spec["kind"] == "data":
        return data_fault(fmt, **kwargs)
    if spec["kind"] == "method":
        return MethodFault(Journal, "append", **kwargs)
    return DiskFault(**kwargs)


def run_child(directory: Path, fmt: str, name: str) -> dict[str, Any]:
    """Run the child of one scenario; return its report (it must have died by SIGKILL)."""
    spec = {"directory": str(directory), "fmt": fmt, **SCENARIOS[name]}
    spec.pop("formats", None)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    assert proc.returncode == -signal.SIGKILL, f"child exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"the child reported nothing:\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1])


@pytest.mark.parametrize(("fmt", "name"), CHILD_CASES)
def test_a_retried_flush_is_durable_when_the_process_is_killed_right_after_it(tmp_path, fmt, name):
    directory = tmp_path / "auto"
    report = run_child(directory, fmt, name)
    scenario = SCENARIOS[name]
    flushed, adds, limit = scenario.get("flushed", []), scenario["adds"], scenario.get("max_trajectories")
    added = [tid for ids in flushed + adds for tid in ids]
    acked = added[-limit:] if limit else added
    calls = report["calls"]
    # every add was done (none had to wait); the first flush after the fault raised, naming a
    # trajectory and the cause; the flush after the space was freed returned
    assert [c["call"] for c in calls] == ["add"] * len(adds) + ["flush", "flush"], calls
    assert [c.get("ids") for c in calls[: len(adds)]] == adds, calls
    first, second = calls[-2], calls[-1]
    assert not first["ok"] and first["type"] == "WriterError", first
    assert re.search(r"trajector(y|ies) \d+", first["error"]), first
    assert CAUSES[report["code"]] in first["error"], first
    assert second["ok"], second
    if scenario["fault"].get("call") == "fsync" and report["target"] == "journal":
        assert report["synced_after_failure"] >= 1, "the journal was not fsync'd again"
    # killed right after that flush: the directory holds every acknowledged trajectory
    assert_holds_exactly(directory, fmt, acked)
    reader = TrajectoryReplayBuffer(sample_window_size=0)
    reader.load_checkpoint(str(directory))
    assert (reader.size, sampled_ids(reader)) == (len(acked), set(acked))
    # and it continues, closes and verifies clean
    buf = auto(directory, fmt, max_trajectories=limit)
    assert buf.trajectory_counter == max(added) + 1
    assert buf.add_trajectories([trajectory(max(added) + 1)]) == [max(added) + 1]
    buf.close()
    assert verify_ok(directory)


def child_main(spec: dict[str, Any]) -> None:
    """The child program: add and flush ``flushed``, install the fault, add ``adds``, flush
    (which must raise), free the space, flush again and SIGKILL itself the moment it returns."""
    buf = TrajectoryReplayBuffer(
        auto_save=True,
        auto_save_path=spec["directory"],
        trajectory_format=spec["fmt"],
        max_trajectories=spec.get("max_trajectories"),
        sample_window_size=0,
        cache_size=2,
    )
    for ids in spec.get("flushed", []):
        buf.add_trajectories([trajectory(t) for t in ids])
    buf.flush()
    fault = make_fault(spec["fmt"], spec["fault"])
    fault.install(setattr)
    calls: list[dict[str, Any]] = []

    def attempt(call: str, run: Callable[[], Any]) -> None:
        try:
            value = run()
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            calls.append({"call": call, "ok": False, "type": type(exc).__name__, "error": str(exc)})
        else:
            calls.append({"call": call, "ok": True, "ids": value})

    for ids in spec["adds"]:
        attempt("add", lambda ids=ids: buf.add_trajectories([trajectory(t) for t in ids]))
    attempt("flush", buf.flush)
    fault.free()
    attempt("flush", buf.flush)
    report = {
        "calls": calls,
        "code": fault.code,
        "target": getattr(fault, "target", "journal"),
        "synced_after_failure": getattr(fault, "synced_after_failure", 0),
    }
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    child_main(json.loads(sys.argv[1]))
