"""Permission denied while writing or reading: the error surfaces, the index stays consistent and
the buffer is unchanged.

Tests usually run as root, for whom ``chmod`` denies nothing. Every scenario therefore runs in a
child process that drops to ``nobody`` (uid/gid 65534) when started as root, or runs as the
current user otherwise, on directories it creates itself and then makes read-only (or
unreadable) with ``chmod``. The child imports everything (and warms up every format) *before*
dropping privileges, since the interpreter's packages may live under a root-only home. It
reports each step as JSON; where a scenario needs the parent to look at the disk mid-way (the
read-only auto-save directory, read back as the parent's user), the child pauses and waits for
a line on stdin. The parent rebuilds each reported exception so that the assertions read as
``pytest.raises(SomeError, match=...)``.

One child runs per trajectory format (module-scoped fixture), so the whole file takes a few
seconds.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO, assert_aligned, coded_trajectory

import rlinf_replay_buffer.errors as errors_module
from rlinf_replay_buffer import (
    BufferDirectoryError,
    ReplayBufferError,
    TrajectoryReplayBuffer,
    WriterError,
    checkpoint,
)

FORMATS = ("pt", "pkl", "segment")
NOBODY = 65534
N, E = 3, 2  # steps per epoch and epochs of every coded trajectory here (T = 6)

# -- the child ---------------------------------------------------------------------------------

CHILD = r'''
import json, os, sys, traceback
repo, base, fmt = sys.argv[1:4]
sys.path[:0] = [repo, os.path.join(repo, "tests")]

import torch
from conftest import assert_aligned, coded_trajectory
from rlinf_replay_buffer import ReplayBufferError, TrajectoryReplayBuffer as TRB, WriterError

N, E = 3, 2


def emit(obj):
    sys.stdout.write("@@" + json.dumps(obj) + "\n")
    sys.stdout.flush()


def traj(i):
    return coded_trajectory(i, n=N, e=E, num_envs=2)


def describe(exc):
    return {"type": type(exc).__name__, "mro": [c.__name__ for c in type(exc).__mro__], "msg": str(exc)}


def attempt(fn):
    try:
        return {"ok": True, "value": fn()}
    except Exception as exc:  # reported to the parent, which asserts on it
        return {"ok": False, "error": describe(exc), "trace": traceback.format_exc()[-3000:]}


def ids_in(batch):
    assert_aligned(batch, n=N)
    return sorted({int(c) // 1000 for c in batch["curr_obs"]["states"][:, 0].tolist()})


def leaves(batch, prefix=""):
    for key, value in batch.items():
        if isinstance(value, dict):
            yield from leaves(value, prefix + key + ".")
        else:
            yield prefix + key, value


def same(buf, twin):
    """The failing call changed nothing: counters and the next samples agree with the twin."""
    assert (buf.size, buf.total_samples, buf.trajectory_counter) == (
        twin.size, twin.total_samples, twin.trajectory_counter
    ), "counters changed"
    for num in (1, 97):
        a, b = dict(leaves(buf.sample(num))), dict(leaves(twin.sample(num)))
        assert a.keys() == b.keys(), "fields differ from the twin"
        for key, value in b.items():
            assert a[key].dtype == value.dtype and torch.equal(a[key], value), f"{key} differs from the twin"
    return True


def warm_up(root):
    # everything the scenarios use is imported and run once while we may still read the
    # interpreter's packages (lazy imports would fail after dropping privileges)
    for f in ("pt", "pkl", "segment"):
        auto = os.path.join(root, f + "-auto")
        b = TRB(seed=0, sample_window_size=0, cache_size=1, auto_save=True, auto_save_path=auto,
                trajectory_format=f)
        b.add_trajectories([traj(i) for i in range(3)])
        b.flush()
        ids_in(b.sample(64))
        b.save_checkpoint(auto + "-ckpt")
        b.close()
        m = TRB(seed=0, sample_window_size=0)
        m.load_checkpoint(auto + "-ckpt")
        ids_in(m.sample(64))
        m.save_checkpoint(auto + "-ckpt2")
    try:
        TRB().load_checkpoint(os.path.join(root, "missing"))
    except ReplayBufferError:
        pass


def drop_privileges():
    if os.geteuid() != 0:
        return None
    try:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    except OSError as exc:
        return f"cannot drop root privileges: {exc}"
    return None


NOBODY = 65534
warm_up(os.path.join(base, "warm-up"))
problem = drop_privileges()
if problem is None:
    probe = os.path.join(base, "probe")
    os.mkdir(probe)
    os.chmod(probe, 0o555)
    try:
        open(os.path.join(probe, "x"), "w").close()
        problem = f"permission bits are not enforced for uid {os.geteuid()}"
    except PermissionError:
        pass
    os.chmod(probe, 0o755)
if problem is not None:
    emit({"skip": problem})
    sys.exit(0)

res = {"uid": os.geteuid()}

# A. auto_save into a directory made read-only after the buffer was created ----------------
auto = os.path.join(base, "auto")
buf = TRB(
    seed=7, sample_window_size=0, cache_size=8, auto_save=True, auto_save_path=auto, trajectory_format=fmt
)
buf.add_trajectories([traj(0), traj(1)])
buf.flush()
if fmt == "segment":
    # an open segment keeps accepting rows through its open files whatever the directory's
    # mode; closing makes the next trajectory start a new segment, which the mode denies
    buf.close()
os.chmod(auto, 0o555)
res["auto_path"] = auto
res["add"] = attempt(lambda: buf.add_trajectories([traj(2), traj(3)]))
res["flush"] = attempt(buf.flush)


def sample_after_failure():
    try:
        batch = buf.sample(512)
    except WriterError:  # a write error not yet reported may be raised by this next call
        batch = buf.sample(512)
    return ids_in(batch)


res["sample_after_failure"] = attempt(sample_after_failure)
res["size_after_failure"] = buf.size
res["listing_while_read_only"] = sorted(os.listdir(auto))
emit({"pause": "read_only", "path": auto})
sys.stdin.readline()
os.chmod(auto, 0o755)
res["flush_after_restore"] = attempt(buf.flush)
res["sample_after_restore"] = attempt(lambda: ids_in(buf.sample(512)))
res["close_after_restore"] = attempt(buf.close)
res["listing_after_restore"] = sorted(os.listdir(auto))

# B. save_checkpoint into a read-only parent directory -------------------------------------
mem, twin = (TRB(seed=11, sample_window_size=0, trajectory_format=fmt) for _ in range(2))
for b in (mem, twin):
    b.add_trajectories([traj(i) for i in range(3)])
parent = os.path.join(base, "ro-parent")
os.mkdir(parent)
os.chmod(parent, 0o555)
res["save_target"] = os.path.join(parent, "ckpt")
res["save"] = attempt(lambda: mem.save_checkpoint(res["save_target"]))
res["save_parent_listing"] = sorted(os.listdir(parent))
res["save_unchanged"] = attempt(lambda: same(mem, twin))

# B2. replacing an existing checkpoint whose parent became read-only keeps the old one
parent2 = os.path.join(base, "ro-parent-existing")
os.mkdir(parent2)
existing = os.path.join(parent2, "ckpt")
mem.save_checkpoint(existing)
for b in (mem, twin):
    b.add_trajectories([traj(3)])
os.chmod(parent2, 0o555)
res["existing_target"] = existing
res["save_existing"] = attempt(lambda: mem.save_checkpoint(existing))
res["save_existing_parent_listing"] = sorted(os.listdir(parent2))
res["save_existing_unchanged"] = attempt(lambda: same(mem, twin))

# C. auto_save_path that cannot be created or written at construction -----------------------
ro_home = os.path.join(base, "ro-home")
os.mkdir(ro_home)
os.chmod(ro_home, 0o555)
res["construct_missing_path"] = os.path.join(ro_home, "auto")
res["construct_missing"] = attempt(
    lambda: repr(TRB(auto_save=True, auto_save_path=res["construct_missing_path"], trajectory_format=fmt))
)
ro_empty = os.path.join(base, "ro-empty")
os.mkdir(ro_empty)
os.chmod(ro_empty, 0o555)
res["construct_empty_path"] = ro_empty
res["construct_empty"] = attempt(
    lambda: repr(TRB(auto_save=True, auto_save_path=ro_empty, trajectory_format=fmt))
)
res["construct_listings"] = [sorted(os.listdir(ro_home)), sorted(os.listdir(ro_empty))]

# D. load_checkpoint of a directory holding an unreadable file -------------------------------
src = TRB(seed=3, sample_window_size=0, trajectory_format=fmt)
src.add_trajectories([traj(i) for i in range(3)])
ckpt = os.path.join(base, "unreadable")
src.save_checkpoint(ckpt)
if fmt == "segment":
    victim = os.path.join(ckpt, "seg-000000", "000.bin")
else:
    victim = os.path.join(ckpt, next(n for n in sorted(os.listdir(ckpt)) if n.startswith("trajectory_2_")))
res["victims"] = {}
for what, path in (("trajectory", victim), ("metadata", os.path.join(ckpt, "metadata.json")),
                   ("index", os.path.join(ckpt, "trajectory_index.json"))):
    mem, twin = (TRB(seed=5, sample_window_size=0) for _ in range(2))
    for b in (mem, twin):
        b.add_trajectories([traj(10), traj(11)])
    os.chmod(path, 0)
    res["victims"][what] = path
    res["load_" + what] = attempt(lambda: mem.load_checkpoint(ckpt))
    res["load_" + what + "_unchanged"] = attempt(lambda: same(mem, twin))
    os.chmod(path, 0o644)

emit({"result": res})
'''


def _force_rmtree(path: str) -> None:
    """Remove a tree even where a test left it without write or read permission."""

    def fix(func, target, _exc) -> None:
        for p in (os.path.dirname(target), target):
            with contextlib.suppress(OSError):
                os.chmod(p, stat.S_IRWXU)
        func(target)

    for root, dirs, _files in os.walk(path):
        for d in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, d), stat.S_IRWXU)
    handler = {"onexc": fix} if sys.version_info >= (3, 12) else {"onerror": fix}
    shutil.rmtree(path, **handler)


class ChildRun:
    """One child process for one format: its results and what the parent saw at the pause."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.base = tempfile.mkdtemp(prefix=f"rlinf-permissions-{fmt}-")
        # world-writable (with the sticky bit) so that `nobody` can create its directories
        os.chmod(self.base, 0o1777)
        self.result: dict[str, Any] = {}
        self.skip: str | None = None
        self.at_pause: dict[str, Any] = {}
        self.stderr = ""

    def run(self) -> None:
        err_path = os.path.join(self.base, "child.stderr")
        with open(err_path, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(REPO), self.base, self.fmt],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                cwd=self.base,
                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
            )
            watchdog = threading.Timer(120, proc.kill)
            watchdog.start()
            try:
                assert proc.stdout is not None and proc.stdin is not None
                for line in proc.stdout:
                    if not line.startswith("@@"):
                        continue
                    msg = json.loads(line[2:])
                    if "pause" in msg:
                        self.at_pause = self.look_at_read_only_directory(msg["path"])
                        proc.stdin.write("\n")
                        proc.stdin.flush()
                    elif "skip" in msg:
                        self.skip = msg["skip"]
                    elif "result" in msg:
                        self.result = msg["result"]
                proc.wait()
            finally:
                watchdog.cancel()
        self.stderr = Path(err_path).read_text()[-4000:]
        if not self.skip and not self.result:
            raise AssertionError(
                f"the {self.fmt} child reported nothing (exit {proc.returncode}):\n{self.stderr}"
            )

    @staticmethod
    def look_at_read_only_directory(path: str) -> dict[str, Any]:
        """Read the auto-save directory back as the parent, while the child holds it read-only."""
        seen: dict[str, Any] = {}
        try:
            contents, _ = checkpoint.read(path)
            seen["listed_ids"] = list(contents.all_ids)
            buffer = TrajectoryReplayBuffer(seed=1, sample_window_size=0)
            buffer.load_checkpoint(path)
            seen["loaded_size"] = buffer.size
            batch = buffer.sample(256)
            assert_aligned(batch, n=N)
            seen["sampled_ids"] = sorted({int(c) // 1000 for c in batch["curr_obs"]["states"][:, 0].tolist()})
        except Exception as exc:  # noqa: BLE001 - reported by the test that checks it
            seen["error"] = f"{type(exc).__name__}: {exc}"
        return seen

    def cleanup(self) -> None:
        _force_rmtree(self.base)


@pytest.fixture(scope="module", params=FORMATS)
def run(request) -> ChildRun:
    child = ChildRun(request.param)
    try:
        child.run()
        if child.skip:
            pytest.skip(child.skip)
        yield child
    finally:
        child.cleanup()


def rebuild(report: dict[str, Any]) -> BaseException:
    """The child's exception as an instance of the same class (library error or built-in)."""
    name = report["type"]
    cls = getattr(errors_module, name, None) or getattr(builtins, name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        return RuntimeError(f"{name}: {report['msg']}")
    return cls(report["msg"])


def raise_reported(step: dict[str, Any]) -> Any:
    """Raise what the child's step raised; return its value if it succeeded."""
    if step["ok"]:
        return step["value"]
    raise rebuild(step["error"])


def succeeded(step: dict[str, Any]) -> Any:
    assert step["ok"], f"{step['error']['type']}: {step['error']['msg']}\n{step.get('trace', '')}"
    return step["value"]


# -- A. auto_save into a directory that became read-only ---------------------------------------

WRITER_MSG = "background write failed: trajectory 2: PermissionError"


def test_permission_denied_on_auto_save_flush_raises_writer_error_naming_directory_and_fix(run):
    res = run.result
    assert succeeded(res["add"]) == [2, 3]  # add_trajectories does not wait for the disk
    with pytest.raises(WriterError, match=WRITER_MSG) as info:
        raise_reported(res["flush"])
    assert res["auto_path"] in str(info.value)
    assert "fix the cause (disk space, permissions) and call flush()" in str(info.value)


def test_permission_denied_on_auto_save_flush_raises_an_error(run):
    """Whatever its class, the failed flush does not pass silently."""
    with pytest.raises((WriterError, PermissionError), match="Permission denied"):
        raise_reported(run.result["flush"])


def test_permission_denied_on_auto_save_keeps_added_trajectories_sampleable(run):
    res = run.result
    assert res["size_after_failure"] == 4
    assert succeeded(res["sample_after_failure"]) == [0, 1, 2, 3]


def test_permission_denied_on_auto_save_leaves_index_listing_exactly_the_durable_trajectories(run):
    seen = run.at_pause
    assert "error" not in seen, seen.get("error")
    assert seen["listed_ids"] == [0, 1]
    assert seen["loaded_size"] == 2
    assert seen["sampled_ids"] == [0, 1]
    # the denied writes left no file (not even a temporary one) in the directory
    listing = run.result["listing_while_read_only"]
    assert not [name for name in listing if name.startswith(".tmp-")]
    if run.fmt != "segment":
        assert sorted(
            n.split("_")[1] for n in listing if n.startswith("trajectory_") and "index" not in n
        ) == [
            "0",
            "1",
        ]
    else:
        assert [n for n in listing if n.startswith("seg-")] == ["seg-000000"]


def reference_rows(fmt: str, tmp_path: Path, ids: list[int]) -> dict[int, dict]:
    """Aligned rows of coded trajectories ``ids`` as a buffer that never failed stores them."""
    ref = TrajectoryReplayBuffer(seed=7, sample_window_size=0, trajectory_format=fmt)
    ref.add_trajectories([coded_trajectory(i, n=N, e=E, num_envs=2) for i in ids])
    ref.save_checkpoint(str(tmp_path / f"reference-{fmt}"))
    return rows_by_id(str(tmp_path / f"reference-{fmt}"))


def rows_by_id(path: str) -> dict[int, dict]:
    contents, schema = checkpoint.read(path)
    return {r.trajectory_id: checkpoint.read_rows(r, schema) for r in contents.records}


def test_permission_restored_flush_succeeds_and_nothing_is_lost(run, tmp_path):
    res = run.result
    succeeded(res["flush_after_restore"])
    assert succeeded(res["sample_after_restore"]) == [0, 1, 2, 3]
    succeeded(res["close_after_restore"])
    assert not [n for n in res["listing_after_restore"] if n.startswith(".tmp-")]
    got = rows_by_id(res["auto_path"])
    want = reference_rows(run.fmt, tmp_path, [0, 1, 2, 3])
    assert sorted(got) == [0, 1, 2, 3]
    for tid, rows in want.items():
        assert set(got[tid]) == set(rows), tid
        for key, value in rows.items():
            assert got[tid][key].dtype == value.dtype and torch.equal(got[tid][key], value), (tid, key)
    # and the directory loads whole, with every transition aligned
    buffer = TrajectoryReplayBuffer(seed=3, sample_window_size=0)
    buffer.load_checkpoint(res["auto_path"])
    assert buffer.size == 4 and buffer.total_samples == 4 * N * E * 2
    assert_aligned(buffer.sample(300), n=N)


# -- B. save_checkpoint into a read-only parent -------------------------------------------------


def test_save_checkpoint_into_read_only_parent_fails_and_leaves_buffer_and_parent_untouched(run):
    res = run.result
    with pytest.raises(OSError, match="Permission denied|permission") as info:
        raise_reported(res["save"])
    assert os.path.dirname(res["save_target"]) in str(info.value)
    assert res["save_parent_listing"] == []  # no checkpoint, no hidden partial directory
    assert succeeded(res["save_unchanged"])


def test_save_checkpoint_into_read_only_parent_raises_buffer_directory_error_naming_save_path(run):
    res = run.result
    with pytest.raises(BufferDirectoryError, match="ermission") as info:
        raise_reported(res["save"])
    assert res["save_target"] in str(info.value)


def test_replacing_checkpoint_in_read_only_parent_fails_and_keeps_the_old_checkpoint(run):
    res = run.result
    with pytest.raises(OSError, match="Permission denied|permission"):
        raise_reported(res["save_existing"])
    assert res["save_existing_parent_listing"] == ["ckpt"]
    assert succeeded(res["save_existing_unchanged"])
    old = TrajectoryReplayBuffer(seed=1, sample_window_size=0)
    old.load_checkpoint(res["existing_target"])
    assert old.size == 3  # the checkpoint as it was before the failed replacement
    assert_aligned(old.sample(64), n=N)


# -- C. auto_save_path at construction ----------------------------------------------------------


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_auto_save_path_in_read_only_directory_raises_an_error_naming_the_path(run, case):
    res = run.result
    path = res[f"construct_{case}_path"]
    with pytest.raises(OSError, match="Permission denied|permission") as info:
        raise_reported(res[f"construct_{case}"])
    assert path in str(info.value)
    assert res["construct_listings"] == [[], []]  # nothing created, no temporary file left


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_auto_save_path_in_read_only_directory_raises_buffer_directory_error(run, case):
    with pytest.raises(BufferDirectoryError, match="auto_save_path"):
        raise_reported(run.result[f"construct_{case}"])


# -- D. load_checkpoint of unreadable files ----------------------------------------------------


def test_load_of_unreadable_trajectory_file_raises_library_error_naming_it_and_buffer_unchanged(run):
    res = run.result
    victim = res["victims"]["trajectory"]
    with pytest.raises(BufferDirectoryError, match="Permission denied") as info:
        raise_reported(res["load_trajectory"])
    assert victim in str(info.value)
    assert succeeded(res["load_trajectory_unchanged"])


@pytest.mark.parametrize("what", ["metadata", "index"])
def test_load_of_unreadable_json_file_fails_and_leaves_buffer_unchanged(run, what):
    res = run.result
    with pytest.raises(OSError, match="Permission denied") as info:
        raise_reported(res[f"load_{what}"])
    assert res["victims"][what] in str(info.value)
    assert succeeded(res[f"load_{what}_unchanged"])


@pytest.mark.parametrize("what", ["metadata", "index"])
def test_load_of_unreadable_json_file_raises_buffer_directory_error(run, what):
    with pytest.raises(BufferDirectoryError, match="Permission denied"):
        raise_reported(run.result[f"load_{what}"])


# -- the harness itself ---------------------------------------------------------------------------


def test_child_really_runs_without_permission_override(run):
    """The scenarios above mean something only if the child's writes could really be denied."""
    assert run.result["uid"] != 0
    if os.geteuid() == 0:
        assert run.result["uid"] == NOBODY


def test_rebuilt_errors_keep_their_library_class():
    err = rebuild({"type": "WriterError", "mro": [], "msg": "x"})
    assert isinstance(err, WriterError) and isinstance(err, ReplayBufferError)
    assert type(rebuild({"type": "PermissionError", "mro": [], "msg": "y"})) is PermissionError
