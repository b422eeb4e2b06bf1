"""``verify`` agrees with the durability contract: every state a crash may leave verifies OK, and
loads (without repair) with every acknowledged trajectory.

Each state is produced for real: a child process (forked from this one, so it starts at once)
streams trajectories into an auto-save directory, flushes, and reports on a pipe the ids each
``flush()`` acknowledged; the test ``SIGKILL``s it at the moment wanted. For a precise state the
child is stepped (``SIGSTOP``, look at the directory, ``SIGCONT``) until the directory is in that
state, then killed there. Then, on the directory as the kill left it:

* ``verify_directory`` (and ``rlinf-buffer verify``) report no problem (exit 0); the traces of the
  crash (torn journal line, ``.tmp-*`` files, segment bytes past the last indexed row, a sound
  file no entry names, the file of an evicted trajectory, metadata behind the index, hidden
  staging siblings) are notes;
* ``read_directory`` lists every acknowledged trajectory (minus those a capacity limit evicted),
  and ``load_checkpoint`` loads exactly what it lists, the number ``verify`` counts.

A damaged directory (a listed trajectory's data cut short) is the control: verify fails it and
loading refuses it, so "OK" is not a constant.

Each state takes well under a second (the forked child needs no start-up). The soak variant of
the round-after-round test (``-m soak`` or ``RLINF_SOAK=1``; ``RLINF_SOAK_KILLS`` rounds per
format, default 150) is skipped otherwise.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import select
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import assert_aligned

from rlinf_replay_buffer import BufferNotFoundError, CorruptBufferError, TrajectoryReplayBuffer
from rlinf_replay_buffer.cli import main
from rlinf_replay_buffer.directory import read_directory
from rlinf_replay_buffer.journal import INDEX, JOURNAL, parse_journal
from rlinf_replay_buffer.metadata import read_metadata
from rlinf_replay_buffer.naming import list_trajectory_files
from rlinf_replay_buffer.schema import schema_from_json
from rlinf_replay_buffer.tools.verify import VerifyReport, verify_directory

_CHILD = Path(__file__).resolve().parent / "helpers" / "crash_child.py"
_spec = importlib.util.spec_from_file_location("crash_child", _CHILD)
assert _spec is not None and _spec.loader is not None
child = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(child)  # make_trajectory(tid): the trajectory of an id, sizes varying

FORMATS = ("pt", "pkl", "segment")
TIMEOUT = 60.0  # a child that neither reports nor reaches the state wanted in this long is hung
MAX_STEPS = 20_000  # SIGSTOP/SIGCONT steps before giving up on a state
CAPACITY = 4  # max_trajectories of the writers that evict


# -- the writing child ----------------------------------------------------------------------------
def emit(fd: int, line: str) -> None:
    os.write(fd, (line + "\n").encode())  # one write, shorter than PIPE_BUF: never half a line


def stream(directory: str, fmt: str, seed: int, out: int, options: dict) -> None:
    """The child: add, flush, report ``ack ID,...`` (and, per ``options``, evict, close, save
    checkpoints, or never flush) until killed. ``adding ID`` is reported before an add that may give ids up to
    ``ID``, so that the parent knows which ids a capacity limit may have evicted."""
    rng = random.Random(seed)
    buffer = TrajectoryReplayBuffer(
        seed=seed,
        auto_save=True,
        auto_save_path=directory,
        trajectory_format=fmt,
        cache_size=2,
        sample_window_size=0,
        max_trajectories=options.get("max_trajectories"),
    )
    emit(out, f"open {buffer.trajectory_counter}")
    flushes = 0
    while True:
        acked: list[int] = []
        for _ in range(rng.randint(1, 3)):
            first = buffer.trajectory_counter
            count = rng.choice((1, 1, 2, 3))
            emit(out, f"adding {first + count - 1}")
            acked += buffer.add_trajectories([child.make_trajectory(first + j) for j in range(count)])
        if options.get("never_flush"):  # the background writer writes and journals them anyway
            time.sleep(0.01)
            continue
        flushes += 1
        if options.get("close_every") and flushes % options["close_every"] == 0:
            buffer.close()  # flush, then compaction: the journal folded into the index and removed
        else:
            buffer.flush()
        emit(out, "ack " + ",".join(map(str, acked)))
        if options.get("save_to"):
            buffer.save_checkpoint(options["save_to"])


@dataclass
class Child:
    """A forked writer and what it reported."""

    pid: int
    fd: int
    log: Path
    acked: set[int] = field(default_factory=set)
    announced: int = -1  # the largest id an add may have given
    opened: bool = False
    errors: list[str] = field(default_factory=list)
    buf: bytes = b""
    done: bool = False

    @classmethod
    def start(cls, directory: Path, fmt: str, seed: int, log: Path, **options) -> Child:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            try:
                os.close(r)
                err = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(err, 2)
                stream(str(directory), fmt, seed, w, options)
            except BaseException:
                traceback.print_exc()
                with contextlib.suppress(OSError):
                    emit(w, "error see the log")
            finally:
                os._exit(1)
        os.close(w)
        return cls(pid, r, log)

    def read(self, wait: float = 0.0) -> None:
        """Take the complete lines written so far (waiting up to ``wait`` s for some)."""
        while not self.done and select.select([self.fd], [], [], wait)[0]:
            chunk = os.read(self.fd, 1 << 16)
            self.done = not chunk
            self.buf += chunk
            *lines, self.buf = self.buf.split(b"\n")
            for raw in lines:
                word, _, rest = raw.decode().partition(" ")
                if word == "open":
                    self.opened = True
                elif word == "adding":
                    self.announced = max(self.announced, int(rest))
                elif word == "ack":
                    self.acked.update(int(x) for x in rest.split(","))
                else:
                    self.errors.append(raw.decode())
            wait = 0.0
        assert not self.errors, f"child failed: {self.errors}\n{self.log.read_text()[-3000:]}"

    def wait_until(self, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            assert time.monotonic() < deadline, f"child stuck:\n{self.log.read_text()[-3000:]}"
            assert not self.done, f"child exited:\n{self.log.read_text()[-3000:]}"
            self.read(wait=0.05)

    def freeze_when(self, directory: Path, state: Callable[[Path], bool]) -> bool:
        """Step the child until ``state(directory)`` holds while it is stopped; leave it stopped
        there (True), or running if the state never came (False)."""
        deadline = time.monotonic() + TIMEOUT
        for _ in range(MAX_STEPS):
            os.kill(self.pid, signal.SIGSTOP)
            _, status = os.waitpid(self.pid, os.WUNTRACED)
            assert os.WIFSTOPPED(status), f"child ended:\n{self.log.read_text()[-3000:]}"
            if state(directory):
                return True
            os.kill(self.pid, signal.SIGCONT)
            if time.monotonic() > deadline:
                break
            time.sleep(random.uniform(0.0, 0.002))
        return False

    def kill(self) -> None:
        """SIGKILL it and take every line it wrote before (those acks are acknowledged)."""
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.kill(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        _, status = os.waitpid(self.pid, 0)
        while not self.done:
            self.read(wait=TIMEOUT)
        os.close(self.fd)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, self.log.read_text()[-3000:]

    def required(self, capacity: int | None) -> set[int]:
        """Acknowledged ids the directory must hold (a capacity limit evicts the oldest)."""
        if capacity is None:
            return set(self.acked)
        return {i for i in self.acked if i > self.announced - capacity}


# -- looking at the directory (while the child is stopped) ----------------------------------------
def listed(directory: Path) -> tuple[set[int], list[dict]]:
    """Ids ``trajectory_index.json`` lists, and the journal's lines."""
    index = directory / INDEX
    ids = set(json.loads(index.read_bytes())["trajectory_id_list"]) if index.exists() else set()
    entries, _, _ = parse_journal(str(directory))
    return ids, entries


def journal_ahead(directory: Path) -> bool:
    """The journal lists trajectories the index file lacks, and metadata.json counts fewer."""
    if not (directory / "metadata.json").exists():
        return False
    ids, journal = listed(directory)
    new = {e["trajectory_id"] for e in journal if not e.get("removed")} - ids
    return bool(new) and read_metadata(str(directory))["size"] < len(ids | new)


def tmp_file(directory: Path) -> bool:
    """An atomic write is under way: a ``.tmp-`` file in the directory or a segment."""
    for root, _, files in os.walk(directory):
        if any(name.startswith(".tmp-") for name in files) and "quarantine" not in root:
            return True
    return False


def segment_tail(directory: Path) -> bool:
    """A segment's column file holds bytes past the last row the index and journal name."""
    meta = directory / "metadata.json"
    if not meta.exists():
        return False
    schema = schema_from_json(json.loads(meta.read_bytes()).get("fields"), "metadata", ValueError)
    if not schema:
        return False
    ids, journal = listed(directory)
    entries = [e for e in journal if not e.get("removed")]
    if (directory / INDEX).exists():
        entries += list(json.loads((directory / INDEX).read_bytes())["trajectory_index"].values())
    ends: dict[str, int] = {}
    for e in entries:
        ends[e["file"]] = max(ends.get(e["file"], 0), e["row"] + e["num_samples"])
    specs = list(schema.values())
    for seg, rows in ends.items():
        for i, spec in enumerate(specs):
            column = directory / seg / f"{i:03d}.bin"
            if column.exists() and column.stat().st_size > rows * spec.row_bytes:
                return True
    return False


def unlisted_file(directory: Path) -> bool:
    """A trajectory file is in place but neither the index nor the journal lists it yet."""
    files = list_trajectory_files(str(directory))
    if not files:
        return False
    ids, journal = listed(directory)
    ids |= {e["trajectory_id"] for e in journal}
    return bool(set(files) - ids)


def mid_compaction(directory: Path) -> bool:
    """The index file was rewritten but metadata.json not yet: it counts fewer than it lists."""
    if not (directory / "metadata.json").exists() or not (directory / INDEX).exists():
        return False
    ids, _ = listed(directory)
    return read_metadata(str(directory))["size"] < len(ids)


def evicted_file(directory: Path) -> bool:
    """The journal records an eviction whose file is not deleted yet (pt/pkl), or any eviction
    (segment: rows stay in their segment)."""
    _, journal = listed(directory)
    removed = {e["trajectory_id"] for e in journal if e.get("removed")}
    files = list_trajectory_files(str(directory))
    return bool(removed & set(files)) or (bool(removed) and not files)


def before_first_flush(directory: Path) -> bool:
    """Trajectories are journaled, but no flush has written the field list into metadata.json."""
    meta = directory / "metadata.json"
    if not meta.exists() or json.loads(meta.read_bytes()).get("fields"):
        return False
    return bool(listed(directory)[1])


def staging_sibling(directory: Path) -> bool:
    """A checkpoint save is assembling ``.NAME.partial-*`` beside an existing checkpoint."""
    name = directory.name
    return directory.exists() and any(
        p.name.startswith(f".{name}.partial-") for p in directory.parent.iterdir()
    )


# -- the checks -----------------------------------------------------------------------------------
def check_crashed(directory: Path, required: set[int], where: str) -> VerifyReport:
    """``directory`` as a kill left it verifies OK and loads with every id of ``required``."""
    report = verify_directory(str(directory))
    assert report.ok, f"{where}: verify found {[(p.kind, p.message) for p in report.problems]}"
    contents, _ = read_directory(str(directory))  # loading's parse: raises if repair is needed
    ids = {r.trajectory_id for r in contents.records}
    missing = required - ids
    assert not missing, f"{where}: acknowledged trajectories lost: {sorted(missing)}"
    assert report.trajectories == len(ids), f"{where}: verify counts {report.trajectories} of {len(ids)}"
    fresh = TrajectoryReplayBuffer(sample_window_size=0, enable_cache=False)
    try:
        fresh.load_checkpoint(str(directory))
        assert len(fresh) == len(ids), where
        if ids:
            assert_aligned(fresh.sample(32))
    finally:
        fresh.close()
    return report


def cli_verify(directory: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(["verify", "--quiet", str(directory)])
    return code, capsys.readouterr().out


def note_kinds(report: VerifyReport) -> set[str]:
    return {p.kind for p in report.notes}


def kill_in_state(
    tmp_path: Path,
    fmt: str,
    state: Callable[[Path], bool],
    seed: int = 1,
    history: int = 3,
    **options,
) -> tuple[Path, Child]:
    """Start a writer on a fresh directory, let it flush ``history`` times, step it into
    ``state``, kill it."""
    directory = tmp_path / f"buf-{fmt}"
    proc = Child.start(directory, fmt, seed, tmp_path / "child.log", **options)
    try:
        proc.wait_until(lambda: proc.opened)
        proc.wait_until(lambda: len(proc.acked) >= history)
        caught = proc.freeze_when(directory, state)
    finally:
        proc.kill()
    assert caught, f"{fmt}: the writer never stopped in state {state.__name__}"
    return directory, proc


# -- the states -----------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_journal_ahead_of_the_index_and_of_the_metadata_verifies_ok(tmp_path, capsys, fmt):
    """Killed after a flush while later entries were journaled: the journal lists trajectories
    ``trajectory_index.json`` lacks and ``metadata.json`` counts fewer."""
    directory, proc = kill_in_state(tmp_path, fmt, journal_ahead)
    report = check_crashed(directory, proc.required(None), f"{fmt} journal ahead")
    assert "metadata" in note_kinds(report)
    code, out = cli_verify(directory, capsys)
    assert code == 0 and out.startswith("OK") and "note [metadata]" in out


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_directory_killed_before_its_first_flush_verifies_ok(tmp_path, capsys, fmt):
    """Nothing acknowledged yet, and metadata.json without a field list: loading reads the
    segment's own column list, and so must verify."""
    directory, proc = kill_in_state(tmp_path, fmt, before_first_flush, history=0, never_flush=True)
    assert not proc.acked
    report = check_crashed(directory, set(), f"{fmt} before the first flush")
    assert report.trajectories > 0
    assert cli_verify(directory, capsys)[0] == 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_torn_last_journal_line_verifies_ok(tmp_path, capsys, fmt):
    """The crash state of an append cut short (a power loss in the middle of a journal write): a
    last line without its end, after a real kill."""
    directory, proc = kill_in_state(tmp_path, fmt, journal_ahead)
    with open(directory / JOURNAL, "ab") as f:
        f.write(b'{"trajectory_id": 99999, "num_samp')
    report = check_crashed(directory, proc.required(None), f"{fmt} torn journal line")
    assert any("torn last line" in p.message for p in report.notes)
    code, out = cli_verify(directory, capsys)
    assert code == 0 and "note [leftover]" in out


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_tmp_file_of_an_interrupted_atomic_write_verifies_ok(tmp_path, capsys, fmt):
    directory, proc = kill_in_state(tmp_path, fmt, tmp_file)
    report = check_crashed(directory, proc.required(None), f"{fmt} .tmp- file")
    assert any("interrupted write" in p.message for p in report.notes)
    assert cli_verify(directory, capsys)[0] == 0


def test_segment_bytes_past_the_last_indexed_row_verify_ok(tmp_path, capsys):
    directory, proc = kill_in_state(tmp_path, "segment", segment_tail)
    report = check_crashed(directory, proc.required(None), "segment tail")
    assert any("past row" in p.message for p in report.notes)
    assert cli_verify(directory, capsys)[0] == 0


@pytest.mark.parametrize("fmt", ["pt", "pkl"])
def test_a_file_written_but_not_yet_journaled_verifies_ok(tmp_path, capsys, fmt):
    """Killed between a trajectory file's rename and its journal entry."""
    directory, proc = kill_in_state(tmp_path, fmt, unlisted_file)
    report = check_crashed(directory, proc.required(None), f"{fmt} unlisted file")
    assert "orphan" in note_kinds(report)
    assert cli_verify(directory, capsys)[0] == 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_compaction_cut_before_the_metadata_verifies_ok(tmp_path, capsys, fmt):
    """Killed in ``close()`` after the index was rewritten (and maybe the journal removed),
    before ``metadata.json`` was rewritten."""
    directory, proc = kill_in_state(tmp_path, fmt, mid_compaction, close_every=1)
    report = check_crashed(directory, proc.required(None), f"{fmt} mid-compaction")
    assert "metadata" in note_kinds(report)
    assert cli_verify(directory, capsys)[0] == 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_eviction_cut_short_verifies_ok(tmp_path, capsys, fmt):
    """A capacity limit evicts as the writer streams; killed while the journal records
    evictions whose files (pt/pkl) are not deleted yet."""
    directory, proc = kill_in_state(tmp_path, fmt, evicted_file, max_trajectories=CAPACITY)
    report = check_crashed(directory, proc.required(CAPACITY), f"{fmt} eviction")
    if fmt != "segment":
        assert any("which was evicted" in p.message for p in report.notes)
    assert cli_verify(directory, capsys)[0] == 0


@pytest.mark.parametrize("fmt", ["pt", "segment"])
def test_a_checkpoint_save_cut_short_leaves_a_checkpoint_that_verifies_ok(tmp_path, capsys, fmt):
    """Killed while ``save_checkpoint`` assembles a new checkpoint beside the previous one: the
    previous one verifies OK (the hidden sibling is a note) and loads."""
    checkpoint = tmp_path / "ckpt"
    kill_in_state(tmp_path, fmt, lambda _: staging_sibling(checkpoint), save_to=str(checkpoint))
    report = check_crashed(checkpoint, set(), f"{fmt} checkpoint")
    assert any(".partial-" in (p.path or "") for p in report.notes)
    code, out = cli_verify(checkpoint, capsys)
    assert code == 0 and ".partial-" in out


# -- random kills of one directory, round after round ---------------------------------------------
def kill_round_after_round(tmp_path: Path, fmt: str, rounds: int) -> None:
    """One directory, killed at a random moment in each round by writers that stream, evict and
    compact; each crashed state verifies OK and loads with every acknowledged trajectory; the
    next writer continues it."""
    directory = tmp_path / f"buf-{fmt}"
    rng = random.Random(f"verify-contract/{fmt}")
    acked: set[int] = set()
    seen: set[str] = set()
    for number in range(rounds):
        capacity = rng.choice((None, None, CAPACITY))
        proc = Child.start(
            directory,
            fmt,
            number,
            tmp_path / "child.log",
            max_trajectories=capacity,
            close_every=rng.choice((0, 0, 1, 3)),
        )
        try:
            proc.wait_until(lambda p=proc: p.opened)
            if rng.random() < 0.5:
                time.sleep(rng.uniform(0.0, 0.3))
            else:
                target = rng.randint(1, 6)
                proc.wait_until(lambda p=proc, t=target: len(p.acked) >= t)
                time.sleep(rng.uniform(0.0, 0.005))
        finally:
            proc.kill()
        # a capacity limit evicts every id before the newest ones: only those must stay
        acked = (acked if capacity is None else set()) | proc.required(capacity)
        report = check_crashed(directory, acked, f"{fmt} round {number}")
        seen |= {f"{p.kind}: {p.message.split(': ', 1)[-1][:40]}" for p in report.notes}
    print(f"\n{fmt}: notes seen: {sorted(seen)}")


@pytest.mark.parametrize("fmt", FORMATS)
def test_verify_is_ok_after_every_kill_of_a_streaming_writer(tmp_path, fmt):
    kill_round_after_round(tmp_path, fmt, 8)


@pytest.mark.soak
@pytest.mark.parametrize("fmt", FORMATS)
def test_verify_is_ok_after_every_kill_soak(tmp_path, fmt, request):
    """``-m soak`` or ``RLINF_SOAK=1``: ``RLINF_SOAK_KILLS`` rounds (default 150) per format."""
    expr = request.config.getoption("markexpr") or ""
    if os.environ.get("RLINF_SOAK") != "1" and ("soak" not in expr or "not soak" in expr):
        pytest.skip("soak test: run with -m soak or RLINF_SOAK=1")
    kill_round_after_round(tmp_path, fmt, int(os.environ.get("RLINF_SOAK_KILLS", "150")))


# -- the control: damage is not OK ----------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_crashed_directory_that_lost_acknowledged_data_fails_verify_and_load(tmp_path, capsys, fmt):
    directory, proc = kill_in_state(tmp_path, fmt, journal_ahead)
    victim = min(proc.acked)
    contents, schema = read_directory(str(directory))
    record = next(r for r in contents.records if r.trajectory_id == victim)
    if fmt == "segment":  # cut the first column file inside the victim's rows
        column = directory / record.file / "000.bin"
        spec = next(iter(schema.values()))
        os.truncate(column, record.row * spec.row_bytes + 1)
    else:
        (directory / record.file).unlink()
    report = verify_directory(str(directory))
    assert not report.ok and victim in {p.trajectory_id for p in report.problems}
    assert cli_verify(directory, capsys)[0] == 1
    fresh = TrajectoryReplayBuffer(sample_window_size=0, enable_cache=False)
    with pytest.raises((BufferNotFoundError, CorruptBufferError)):
        fresh.load_checkpoint(str(directory))
        fresh.sample(10_000)  # segment rows are read (and checked) when sampled
    fresh.close()
