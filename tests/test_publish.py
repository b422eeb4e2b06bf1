"""Publishing a whole directory (``fsio.staged_directory`` + ``fsio.publish_directory``): the one
sequence behind checkpoints, merge/split, Parquet import and the sharded buffer's checkpoints.

The promise: at every instant the destination holds the complete old directory or the complete
new one (nothing, if there was none), and a crash leaves at most hidden ``.NAME.partial-*`` /
``.NAME.old-*`` siblings. Without an atomic swap (``exchange`` unavailable) the destination may be
missing for a moment, the old directory being complete under ``.NAME.old-*`` meanwhile.

The kill tests run a child process that stops itself (``SIGSTOP``) before every file-system call
it makes while assembling and publishing; the parent looks at the destination at each stop (the
state a crash there would leave) and kills the child with ``SIGKILL`` at each one in turn.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlinf_replay_buffer import fsio
from rlinf_replay_buffer.fsio import exchange, new_staging_dir, publish_directory, staged_directory

REPO = Path(__file__).resolve().parents[1]

OLD = {"a.bin": b"old a", "sub/b.bin": b"old b", "old_only.bin": b"only in the old one"}
NEW = {"a.bin": b"new a" * 100, "sub/b.bin": b"new b", "sub/deeper/c.bin": b"new c", "new_only.bin": b"n"}


def tree(path: Path) -> dict[str, bytes] | None:
    """``{relative path: bytes}`` of every file under ``path`` (``None`` if it does not exist)."""
    if not os.path.lexists(path):
        return None
    out = {}
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = Path(root) / name
            out[full.relative_to(path).as_posix()] = full.read_bytes()
    return out


def make_tree(path: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path


def fill(staging: str, files: dict[str, bytes]) -> None:
    """Write ``files`` into a staging directory the way the library does (atomically, fsync'd)."""
    for name, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(staging, name)), exist_ok=True)
        fsio.atomic_write(os.path.join(staging, name), lambda f, data=data: f.write(data))


def siblings(parent: Path, name: str = "dest") -> list[str]:
    return sorted(n for n in os.listdir(parent) if n != name)


HIDDEN = re.compile(r"^\.dest\.(partial|old)-[0-9a-f]{12}$")


def exchange_supported(tmp_path: Path) -> bool:
    a, b = tmp_path / "probe-a", tmp_path / "probe-b"
    a.mkdir()
    b.mkdir()
    try:
        return exchange(str(a), str(b))
    finally:
        a.rmdir()
        b.rmdir()


@pytest.fixture(params=["swap", "aside"])
def mode(request, tmp_path, monkeypatch) -> str:
    """``swap``: the atomic exchange (skipped where the file system lacks it); ``aside``: the
    fallback that renames the old directory aside first."""
    if request.param == "swap" and not exchange_supported(tmp_path):
        pytest.skip("this file system cannot swap two directories atomically")
    if request.param == "aside":
        monkeypatch.setattr(fsio, "exchange", lambda a, b: False)
    return request.param


# -- behaviour ------------------------------------------------------------------------------------
def test_publishing_creates_the_destination_when_there_was_none(tmp_path, mode):
    dest = tmp_path / "dest"
    with staged_directory(str(dest)) as staging:
        fill(staging, NEW)
        assert tree(dest) is None
        publish_directory(staging, str(dest))
    assert tree(dest) == NEW
    assert siblings(tmp_path) == []


def test_publishing_replaces_an_existing_directory_whole(tmp_path, mode):
    dest = make_tree(tmp_path / "dest", OLD)
    with staged_directory(str(dest)) as staging:
        fill(staging, NEW)
        assert tree(dest) == OLD  # untouched while the new one is assembled
        publish_directory(staging, str(dest))
    assert tree(dest) == NEW  # no file of the old one is left, nothing of the new one missing
    assert siblings(tmp_path) == []


def test_publishing_replaces_an_empty_directory(tmp_path, mode):
    dest = tmp_path / "dest"
    dest.mkdir()
    with staged_directory(str(dest)) as staging:
        fill(staging, NEW)
        publish_directory(staging, str(dest))
    assert tree(dest) == NEW
    assert siblings(tmp_path) == []


def test_publishing_over_a_link_replaces_the_link_and_never_touches_its_target(tmp_path, mode):
    target = make_tree(tmp_path / "elsewhere", OLD)
    dest = tmp_path / "dest"
    dest.symlink_to(target, target_is_directory=True)
    with staged_directory(str(dest)) as staging:
        fill(staging, NEW)
        publish_directory(staging, str(dest))
    assert not dest.is_symlink() and tree(dest) == NEW
    assert tree(target) == OLD
    assert siblings(tmp_path) == ["elsewhere"]


def test_the_staging_directory_is_a_hidden_sibling(tmp_path):
    staging = new_staging_dir(str(tmp_path / "dest"))
    assert os.path.dirname(staging) == str(tmp_path)
    assert HIDDEN.match(os.path.basename(staging)) and ".partial-" in staging
    assert os.path.isdir(staging) and not os.listdir(staging)


def test_a_failure_before_publishing_leaves_the_destination_as_it_was(tmp_path):
    dest = make_tree(tmp_path / "dest", OLD)
    with pytest.raises(RuntimeError, match="disk on fire"), staged_directory(str(dest)) as staging:
        fill(staging, NEW)
        raise RuntimeError("disk on fire")
    assert tree(dest) == OLD
    assert siblings(tmp_path) == []  # the staging directory is gone


def test_a_block_that_never_publishes_leaves_nothing_behind(tmp_path):
    with staged_directory(str(tmp_path / "dest")) as staging:
        fill(staging, NEW)
    assert os.listdir(tmp_path) == []


def test_a_failed_publish_leaves_the_old_directory_in_place(tmp_path, monkeypatch, mode):
    dest = make_tree(tmp_path / "dest", OLD)
    real_rename = os.rename

    def refusing_rename(src, dst):
        if os.path.basename(src).startswith(".dest.partial-"):  # the new one moving in
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    def refusing_exchange(a, b):
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(fsio.os, "rename", refusing_rename)
    if mode == "swap":
        monkeypatch.setattr(fsio, "exchange", refusing_exchange)
    with pytest.raises(OSError), staged_directory(str(dest)) as staging:
        fill(staging, NEW)
        publish_directory(staging, str(dest))
    assert tree(dest) == OLD  # aside: renamed back after the failed second rename
    assert siblings(tmp_path) == []


def test_the_new_directory_is_synced_before_it_is_published_and_the_parent_after(tmp_path, monkeypatch, mode):
    dest = make_tree(tmp_path / "dest", OLD)
    events: list[tuple[str, str]] = []
    real_fsync_dir, real_exchange, real_rename = fsio.fsync_dir, fsio.exchange, os.rename

    def fsync_dir(path):
        events.append(("fsync", os.path.relpath(path, tmp_path)))
        real_fsync_dir(path)

    def swap(a, b):
        done = real_exchange(a, b)
        if done:
            events.append(("swap", ""))
        return done

    def rename(src, dst):
        events.append(("rename", os.path.basename(dst)))
        real_rename(src, dst)

    with staged_directory(str(dest)) as staging:
        fill(staging, NEW)
        name = os.path.basename(staging)
        monkeypatch.setattr(fsio, "fsync_dir", fsync_dir)
        monkeypatch.setattr(fsio, "exchange", swap)
        monkeypatch.setattr(fsio.os, "rename", rename)
        publish_directory(staging, str(dest))
    synced = [path for kind, path in events[:3]]
    # every directory of the new tree, deepest first, the staging directory itself last
    assert synced == [f"{name}/sub/deeper", f"{name}/sub", name]
    published = 4 if mode == "swap" else 5  # the swap, or the rename aside and the rename in
    if mode == "swap":
        assert events[3] == ("swap", "")
    else:
        assert events[3][0] == "rename" and events[3][1].startswith(".dest.old-")
        assert events[4] == ("rename", "dest")
    assert events[published] == ("fsync", ".")  # the parent, after the new name is in place
    assert tree(dest) == NEW


def test_exchange_swaps_two_directories_in_one_step(tmp_path):
    a, b = make_tree(tmp_path / "a", OLD), make_tree(tmp_path / "b", NEW)
    if not exchange(str(a), str(b)):
        pytest.skip("this file system cannot swap two directories atomically")
    assert tree(a) == NEW and tree(b) == OLD


def test_exchange_reports_a_refusal_as_an_error(tmp_path):
    if not exchange_supported(tmp_path):
        pytest.skip("this file system cannot swap two directories atomically")
    (tmp_path / "a").mkdir()
    with pytest.raises(FileNotFoundError):
        exchange(str(tmp_path / "a"), str(tmp_path / "missing"))


# -- real kills -----------------------------------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from rlinf_replay_buffer import fsio

    dest, mode = sys.argv[1], sys.argv[2]
    new = {"a.bin": b"new a" * 100, "sub/b.bin": b"new b", "sub/deeper/c.bin": b"new c",
           "new_only.bin": b"n"}

    def stopping(fn):
        def call(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGSTOP)  # the parent looks, then continues or kills
            return fn(*args, **kwargs)
        return call

    for name in ("rename", "replace", "fsync", "unlink", "rmdir", "mkdir"):
        setattr(os, name, stopping(getattr(os, name)))
    fsio.exchange = stopping(fsio.exchange) if mode == "swap" else (lambda a, b: False)

    with fsio.staged_directory(dest) as staging:
        for name, data in new.items():
            os.makedirs(os.path.dirname(os.path.join(staging, name)), exist_ok=True)
            fsio.atomic_write(os.path.join(staging, name), lambda f, data=data: f.write(data))
        fsio.publish_directory(staging, dest)
    """
)


def check_state(parent: Path, had_old: bool, mode: str, seen: list[str], where: str) -> None:
    """The destination as a crash at this instant leaves it: old or new, whole; siblings hidden."""
    dest = tree(parent / "dest")
    others = siblings(parent)
    assert all(HIDDEN.match(n) for n in others), f"{where}: unexpected siblings {others}"
    if dest == NEW:
        seen.append("new")
    elif dest == OLD and had_old:
        assert "new" not in seen, f"{where}: the old directory came back after the new one"
        seen.append("old")
    elif dest is None and not had_old:
        assert "new" not in seen, f"{where}: the new directory disappeared"
        seen.append("none")
    elif dest is None and mode == "aside":  # between the two renames: the old one is set aside
        aside = [n for n in others if ".old-" in n]
        assert len(aside) == 1 and tree(parent / aside[0]) == OLD, f"{where}: old one not whole aside"
        assert "new" not in seen, f"{where}: the new directory disappeared"
        seen.append("aside")
    else:
        raise AssertionError(f"{where}: the destination holds {sorted(dest) if dest else dest}")


def run_child(parent: Path, mode: str, had_old: bool, kill_at: int | None) -> list[str]:
    """Run the child publishing into ``parent/dest``, checking the state at each of its stops;
    SIGKILL it at stop ``kill_at`` (``None``: let it finish). Returns the states seen at the
    stops (``old``, ``none``, ``aside``, ``new``)."""
    parent.mkdir(exist_ok=True)
    if had_old:
        make_tree(parent / "dest", OLD)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(parent / "dest"), mode], env=env, stderr=subprocess.PIPE
    )
    stops, seen = 0, []
    try:
        while True:
            _, status = os.waitpid(proc.pid, os.WUNTRACED)
            if os.WIFSTOPPED(status):
                check_state(parent, had_old, mode, seen, f"{mode}, stop {stops}")
                if stops == kill_at:
                    os.kill(proc.pid, signal.SIGKILL)
                    _, status = os.waitpid(proc.pid, 0)
                    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
                    break
                stops += 1
                os.kill(proc.pid, signal.SIGCONT)
                continue
            proc.returncode = os.waitstatus_to_exitcode(status)
            assert proc.returncode == 0, proc.stderr.read().decode()
            break
    finally:
        if proc.returncode is None and kill_at is None:
            proc.kill()
        proc.stderr.close()
    check_state(parent, had_old, mode, seen, f"{mode}, after stop {kill_at}")
    if kill_at is None:
        assert tree(parent / "dest") == NEW and siblings(parent) == []
    return seen[:stops]


@pytest.mark.parametrize("had_old", [True, False], ids=["replacing", "creating"])
def test_a_kill_at_any_step_leaves_the_old_directory_or_the_new_one(tmp_path, mode, had_old):
    seen = run_child(tmp_path / "full", mode, had_old, kill_at=None)
    assert len(seen) >= 10  # the child really stopped before its file-system calls
    before = "old" if had_old else "none"
    assert seen[0] == before and seen[-1] == "new"
    assert ("aside" in seen) == (mode == "aside" and had_old)  # the fallback's moment without dest
    for k in range(len(seen)):
        parent = tmp_path / f"kill-{k}"
        run_child(parent, mode, had_old, kill_at=k)
        # whatever the kill left, publishing again over it works and leaves only the new one
        with staged_directory(str(parent / "dest")) as staging:
            fill(staging, NEW)
            publish_directory(staging, str(parent / "dest"))
        assert tree(parent / "dest") == NEW
