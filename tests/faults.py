"""Fault injection for ``tests/test_fault_injection.py``: run one operation of the library in a
child process, list the file-system calls it makes, and SIGKILL the child at one of them, or
make that one call fail once, then check what the disk holds.

**The interposer** (:class:`Interposer`, installed in the child right before the operation
starts) replaces the Python-visible file-system functions the library calls -- ``os.open``,
``os.write``, ``os.pwrite``, ``os.fsync``, ``os.fdatasync``, ``os.ftruncate``, ``os.truncate``,
``os.rename``, ``os.replace``, ``os.link``, ``os.symlink``, ``os.unlink``, ``os.remove``,
``os.mkdir``, ``os.makedirs``, ``os.rmdir``, ``shutil.rmtree``, ``shutil.copyfileobj``,
``shutil.copyfile``, ``builtins.open``/``io.open`` in write modes (the file object it returns is
wrapped: its ``write``, ``writelines``, ``flush`` and ``truncate`` are calls too) and
``rlinf_replay_buffer.fsio.exchange`` (``renameat2`` through ctypes, which no ``os`` function
sees) -- by functions that count the call as a *point* when it touches the directory under test,
then run it. ``torch.save`` and ``pickle.dump`` write through the file object they are given,
so their writes are counted there. Calls elsewhere (imports, temporary files of other
libraries) are not counted: a path must lie under the directory under test, and a
descriptor-based call must use a descriptor opened there (``os.open``, ``open``, and the
directory descriptors ``shutil.rmtree`` opens are tracked). Opening for reading is not a point.
Consecutive writes to one descriptor with no other call in between (``torch.save`` writing a
file in many pieces) are one point: stopping after any of them leaves the same kind of state.

Modes: ``count`` runs the operation and reports its points in order; ``kill@N`` sends the child
``SIGKILL`` at the N-th point, before the call runs; ``fail@N:ENOSPC`` (or ``EIO``) makes the
N-th call raise ``OSError`` once (later calls work) and the operation script goes on with its
retry step, reporting what it saw. ``record`` (``tests/power_loss.py``) logs every change the
operation makes, for the power-loss model.

**The children.** Starting Python with torch and the library takes seconds, and a sweep runs
hundreds of children, so one server process (``sys.executable -c SCRIPT``, which imports
everything once and is single-threaded) forks a fresh child per run; each run has a timeout
(the server kills a child that overruns it, the parent kills a server that does not answer).
A child's stdout and stderr go to files; every line it prints is flushed at once, so what it
acknowledged before a kill is on disk.

**Operations** (:data:`OPERATIONS`): each has a child side (``setup`` before the interposer,
``run`` under it, ``again``: the retry after a kill, in a fresh child) and a parent side that
checks the invariants after a kill (``after_kill``), after the retry (``after_retry``) and after
a failed call (``after_fail``). Trajectories are ``conftest.coded_trajectory``: their rows
encode their code, so every trajectory read back is identified and compared byte for byte.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import errno
import functools
import hashlib
import io
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

RUN_TIMEOUT = 120.0  # seconds one child run may take (the server kills it after that)
SERVER_START_TIMEOUT = 180.0
ERRNOS = {"ENOSPC": errno.ENOSPC, "EIO": errno.EIO}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_WRITES = ("write", "pwrite", "file.write", "file.writelines")
_RANDOM = re.compile(r"[0-9a-f]{12,32}")


def soak_selected(config: Any) -> bool:
    """Whether a pytest run asked for the soak tests (``-m soak`` or ``RLINF_SOAK=1``)."""
    if os.environ.get("RLINF_SOAK") == "1":
        return True
    expr = config.getoption("markexpr", "") or ""
    return "soak" in expr and "not soak" not in expr


def patch_attr(saved: list[tuple[Any, str, Any]], owner: Any, name: str, make: Callable[[Any], Any]) -> None:
    """Replace ``owner.name`` by ``make(original)`` (wrapped like it), remembering the original
    in ``saved`` for the uninstall."""
    original = getattr(owner, name)
    saved.append((owner, name, original))
    setattr(owner, name, functools.wraps(original)(make(original)))


# -- the interposer (child side) ------------------------------------------------------------------
class FileProxy:
    """A file object opened for writing under the directory under test: its writes, flushes and
    truncations are points; everything else is the file's own."""

    def __init__(self, file: Any, path: str, interposer: Interposer) -> None:
        self.file_object = file
        self.file_path = path
        self.interposer = interposer
        self.fd = file.fileno()
        interposer.fds[self.fd] = path

    def write(self, data: Any) -> int:
        self.interposer.point("file.write", self.file_path, self.fd)
        return self.file_object.write(data)

    def writelines(self, lines: Iterable[Any]) -> None:
        self.interposer.point("file.writelines", self.file_path, self.fd)
        self.file_object.writelines(lines)

    def flush(self) -> None:
        self.interposer.point("file.flush", self.file_path, self.fd)
        self.file_object.flush()

    def truncate(self, size: int | None = None) -> int:
        self.interposer.point("file.truncate", self.file_path, self.fd)
        return self.file_object.truncate() if size is None else self.file_object.truncate(size)

    def close(self) -> None:
        self.interposer.forget(self.fd)
        self.file_object.close()

    def __enter__(self) -> FileProxy:
        self.file_object.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        self.interposer.forget(self.fd)
        return self.file_object.__exit__(*exc)

    def __iter__(self) -> Any:
        return iter(self.file_object)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file_object, name)


class Interposer:
    """Counts the file-system calls made under ``prefix`` and acts at the ``target``-th one.

    Args:
        prefix: the directory under test (absolute, no symbolic links).
        mode: ``"count"``, ``"kill"`` or ``"fail"``.
        target: the point to act at (1 = the first).
        code: the errno of ``"fail"``.
        report: called with one line (``"point {...}"``) when the target point is reached,
            before the kill or the failure.
    """

    def __init__(
        self,
        prefix: str,
        mode: str = "count",
        target: int = 0,
        code: int = 0,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.prefix = prefix.rstrip("/")
        self.mode = mode
        self.target = target
        self.code = code
        self.report = report
        self.points: list[tuple[str, str]] = []
        self.fds: dict[int, str] = {}
        self.fired: dict[str, Any] | None = None
        self.lock = threading.Lock()
        self.last: tuple[str, int | None] | None = None
        self.saved: list[tuple[Any, str, Any]] = []

    # -- bookkeeping ------------------------------------------------------------------------------
    def under(self, path: str | None) -> bool:
        return path is not None and (path == self.prefix or path.startswith(self.prefix + "/"))

    def resolve(self, path: Any, dir_fd: int | None = None) -> str | None:
        """The absolute path a call names (``None``: not known, e.g. an untracked descriptor)."""
        if isinstance(path, int):
            return self.fds.get(path)
        try:
            p = os.fsdecode(os.fspath(path))
        except TypeError:
            return None
        if dir_fd is not None and not os.path.isabs(p):
            base = self.fds.get(dir_fd)
            return None if base is None else os.path.normpath(os.path.join(base, p))
        return os.path.abspath(p)

    def shown(self, path: str) -> str:
        """``path`` relative to the directory under test, random parts of names as ``*``."""
        rel = os.path.relpath(path, self.prefix) if self.under(path) else path
        return _RANDOM.sub("*", rel)

    def forget(self, fd: int) -> None:
        if self.fds.pop(fd, None) is not None:
            with self.lock:
                self.last = ("close", fd)

    def point(self, call: str, path: str | None, fd: int | None = None, shown: str | None = None) -> None:
        """A call about to run: count it if it is under the directory under test, and kill or
        fail at the target point."""
        if not self.under(path):
            return
        assert path is not None
        kind = "write" if call in _WRITES else call
        with self.lock:
            run = kind == "write" and self.last == ("write", fd)
            self.last = (kind, fd)
            if run:
                return
            self.points.append((call, shown or self.shown(path)))
            n = len(self.points)
            hit = self.mode != "count" and n == self.target and self.fired is None
            if hit:
                self.fired = {"index": n, "call": call, "path": self.points[-1][1], "action": self.mode}
        if not hit:
            return
        assert self.fired is not None
        if self.report is not None:
            self.report("point " + json.dumps(self.fired))
        if self.mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)  # never reached: SIGKILL is not delayed
            os._exit(99)
        raise OSError(self.code, os.strerror(self.code), path)

    # -- the replacements -------------------------------------------------------------------------
    def install(self) -> None:
        """Replace the functions (module attributes, so every caller sees the replacement)."""
        import rlinf_replay_buffer.fsio as fsio

        ip = self

        def patch(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
            patch_attr(self.saved, owner, name, make)

        def fd_of(x: Any) -> int:
            return x if isinstance(x, int) else x.fileno()

        def os_open(orig: Any) -> Any:
            def call(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
                full = ip.resolve(path, dir_fd)
                if flags & _WRITE_FLAGS:
                    ip.point("open", full)
                fd = orig(path, flags, mode, dir_fd=dir_fd)
                if ip.under(full):
                    assert full is not None
                    ip.fds[fd] = full
                    with ip.lock:
                        ip.last = ("open", fd)
                return fd

            return call

        def os_close(orig: Any) -> Any:
            def call(fd: int) -> None:
                ip.forget(fd)
                orig(fd)

            return call

        def by_fd(name: str) -> Callable[[Any], Any]:
            def make(orig: Any) -> Any:
                def call(fd: Any, *args: Any, **kwargs: Any) -> Any:
                    n = fd_of(fd)
                    ip.point(name, ip.fds.get(n), n)
                    return orig(fd, *args, **kwargs)

                return call

            return make

        def by_path(name: str) -> Callable[[Any], Any]:
            def make(orig: Any) -> Any:
                def call(path: Any, *args: Any, **kwargs: Any) -> Any:
                    ip.point(name, ip.resolve(path, kwargs.get("dir_fd")))
                    return orig(path, *args, **kwargs)

                return call

            return make

        def two_paths(name: str) -> Callable[[Any], Any]:
            def make(orig: Any) -> Any:
                def call(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
                    a = ip.resolve(src, kwargs.get("src_dir_fd"))
                    b = ip.resolve(dst, kwargs.get("dst_dir_fd", kwargs.get("dir_fd")))
                    target = a if ip.under(a) else b
                    if target is not None and ip.under(target):
                        shown = f"{ip.shown(a or '?')} -> {ip.shown(b or '?')}"
                        ip.point(name, target, shown=shown)
                    return orig(src, dst, *args, **kwargs)

                return call

            return make

        def symlink(orig: Any) -> Any:
            def call(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
                ip.point("symlink", ip.resolve(dst, kwargs.get("dir_fd")))
                return orig(src, dst, *args, **kwargs)

            return call

        def rmtree(orig: Any) -> Any:
            def call(path: Any, *args: Any, **kwargs: Any) -> Any:
                ignore = kwargs.get("ignore_errors", args[0] if args else False)
                try:
                    ip.point("rmtree", ip.resolve(path, kwargs.get("dir_fd")))
                except OSError:
                    if ignore:  # every removal failed, silently
                        return None
                    raise
                return orig(path, *args, **kwargs)

            return call

        def copyfileobj(orig: Any) -> Any:
            def call(fsrc: Any, fdst: Any, *args: Any, **kwargs: Any) -> Any:
                name = getattr(fdst, "name", None)
                if isinstance(name, str):
                    ip.point("copyfileobj", ip.resolve(name))
                return orig(fsrc, fdst, *args, **kwargs)

            return call

        def copyfile(orig: Any) -> Any:
            def call(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
                ip.point("copyfile", ip.resolve(dst))
                return orig(src, dst, *args, **kwargs)

            return call

        def exchange(orig: Any) -> Any:
            def call(a: str, b: str) -> bool:
                pa, pb = ip.resolve(a), ip.resolve(b)
                target = pa if ip.under(pa) else pb
                if target is not None:
                    ip.point("exchange", target, shown=f"{ip.shown(pa or '?')} <-> {ip.shown(pb or '?')}")
                return orig(a, b)

            return call

        def open_(orig: Any) -> Any:
            def call(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
                writing = isinstance(mode, str) and any(c in mode for c in "wax+")
                path = ip.resolve(file)
                if not (writing and ip.under(path)):
                    return orig(file, mode, *args, **kwargs)
                assert path is not None
                if not isinstance(file, int):  # os.fdopen: the descriptor's os.open was the point
                    ip.point("open", path)
                return FileProxy(orig(file, mode, *args, **kwargs), path, ip)

            return call

        patch(os, "open", os_open)
        patch(os, "close", os_close)
        for name in ("write", "pwrite", "fsync", "fdatasync", "ftruncate"):
            patch(os, name, by_fd(name))
        for name in ("truncate", "unlink", "remove", "mkdir", "rmdir", "makedirs"):
            patch(os, name, by_path(name))
        for name in ("rename", "replace", "link"):
            patch(os, name, two_paths(name))
        patch(os, "symlink", symlink)
        patch(shutil, "rmtree", rmtree)
        patch(shutil, "copyfileobj", copyfileobj)
        patch(shutil, "copyfile", copyfile)
        patch(fsio, "exchange", exchange)
        patch(builtins, "open", open_)
        patch(io, "open", open_)

    def uninstall(self) -> None:
        while self.saved:
            owner, name, original = self.saved.pop()
            setattr(owner, name, original)


# -- what a child prints ---------------------------------------------------------------------------
def say(kind: str, value: Any = None) -> None:
    """One report line on stdout, flushed at once (a kill never loses a printed line)."""
    print(f"{kind} {json.dumps(value)}", flush=True)


def parse_lines(text: str) -> list[tuple[str, Any]]:
    """``(kind, value)`` of every complete report line."""
    out = []
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        try:
            out.append((kind, json.loads(rest)))
        except ValueError:
            continue
    return out


def values(lines: list[tuple[str, Any]], kind: str) -> list[Any]:
    return [v for k, v in lines if k == kind]


# -- trajectories ----------------------------------------------------------------------------------
def trajectory(code: int, layout: str = "rlinf") -> Any:
    """The trajectory every operation uses for ``code`` (sizes vary a little with it)."""
    from conftest import coded_trajectory

    return coded_trajectory(code, n=2, e=1 + code % 2, num_envs=1 + (code // 2) % 2, layout=layout)


def expected_rows(code: int) -> dict[tuple[str, ...], Any]:
    """The aligned rows ``[T * B, ...]`` per column of trajectory ``code``."""
    from conftest import CODED_DICT_FIELDS, CODED_STEP_FIELDS

    traj = trajectory(code, layout="aligned")
    t, b = int(traj.rewards.shape[0]), int(traj.rewards.shape[1])
    out: dict[tuple[str, ...], Any] = {}
    for name in sorted(CODED_STEP_FIELDS):
        value = getattr(traj, name)
        out[(name,)] = value.reshape(t * b, *value.shape[2:])
    for name in sorted(CODED_DICT_FIELDS):
        for key, value in getattr(traj, name).items():
            out[(name, key)] = value.reshape(t * b, *value.shape[2:])
    return out


def buffer(**options: Any) -> Any:
    from rlinf_replay_buffer import TrajectoryReplayBuffer

    options.setdefault("seed", 0)
    options.setdefault("sample_window_size", 0)
    return TrajectoryReplayBuffer(**options)


def checkpoint_of(path: str, codes: list[int], fmt: str = "pt") -> None:
    """Write a checkpoint holding ``codes`` (ids 0, 1, ...) at ``path`` (setup, uninterposed)."""
    buf = buffer(trajectory_format=fmt)
    for code in codes:
        buf.add_trajectories([trajectory(code)])
    buf.save_checkpoint(path)


# -- child-side steps ------------------------------------------------------------------------------
def probe(path: str, on_corrupt: str = "raise") -> None:
    """Report whether ``path`` (if it is a buffer directory) loads, as ``probe {...}``."""
    from rlinf_replay_buffer.directory import is_buffer_directory

    if not is_buffer_directory(path):
        say("probe", {"path": path, "ok": True, "absent": True})
        return
    try:
        buf = buffer(on_corrupt=on_corrupt)
        buf.load_checkpoint(path)
        say("probe", {"path": path, "ok": True, "size": buf.size})
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails on it
        say("probe", {"path": path, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:800]})


def attempt(
    what: str, call: Callable[[], Any], probes: Iterable[str] = (), on_corrupt: str = "raise"
) -> bool:
    """Run one step of an operation; report an exception as ``error {...}`` (whether it is one
    of the library's errors) and probe the directories involved. Returns whether it completed."""
    from rlinf_replay_buffer import ReplayBufferError

    try:
        call()
    except Exception as exc:  # noqa: BLE001 - reported; the parent checks it is a library error
        say(
            "error",
            {
                "what": what,
                "type": type(exc).__name__,
                "library": isinstance(exc, ReplayBufferError),
                "message": str(exc)[:800],
                "traceback": "".join(traceback.format_exception(exc))[-3000:],
            },
        )
        for path in probes:
            probe(path, on_corrupt)
        return False
    return True


def retried(
    what: str, call: Callable[[], Any], probes: Iterable[str] = (), on_corrupt: str = "raise"
) -> None:
    """Run a step; if it fails, run it again (the fault was once: the second run must work)."""
    if not attempt(what, call, probes, on_corrupt):
        call()


# -- operations ------------------------------------------------------------------------------------
class Operation:
    """One operation: its child-side steps and the invariants the parent checks."""

    name = ""
    on_corrupt = "raise"

    # child side
    def setup(self, data: str) -> None:
        """Prepare ``data`` (not interposed)."""

    def run(self, data: str) -> None:
        """The operation, interposed; after a failed call it goes on with its retry step."""
        raise NotImplementedError

    def again(self, data: str) -> None:
        """After a kill, in a fresh child: run the operation again."""
        raise NotImplementedError

    # parent side
    def after_kill(self, data: str, lines: list[tuple[str, Any]]) -> Any:
        """Invariants right after the kill, without any repair; returns what :meth:`after_retry`
        needs."""
        raise NotImplementedError

    def after_retry(self, data: str, lines: list[tuple[str, Any]], before: Any) -> None:
        raise NotImplementedError

    def after_fail(self, data: str, lines: list[tuple[str, Any]]) -> None:
        raise NotImplementedError


class OneOutput(Operation):
    """An operation whose invariants are one ``check(data, lines, done)``: after a kill (not
    done), after the retry and after a failed call (both done; the child said ``done``)."""

    verb = ""

    def check(self, data: str, lines: list[tuple[str, Any]], done: bool) -> None:
        raise NotImplementedError

    def after_kill(self, data: str, lines: list[tuple[str, Any]]) -> Any:
        self.check(data, lines, done=False)
        return lines

    def after_retry(self, data: str, lines: list[tuple[str, Any]], before: Any) -> None:
        self.check(data, before, done=True)

    def after_fail(self, data: str, lines: list[tuple[str, Any]]) -> None:
        assert values(lines, "done"), f"the retried {self.verb} did not complete"
        self.check(data, lines, done=True)


class AutoSave(Operation):
    """Adds, ``flush()`` after each, then ``close()``, continuing an auto-save directory that
    holds two trajectories; with ``evict``, ``max_trajectories=3`` evicts the oldest as it goes.
    The child prints ``add`` before each add and ``ack`` (every code added so far) after each
    ``flush()`` that returned."""

    SETUP = [0, 1]
    BATCHES = [[2, 3], [4], [5, 6]]
    AGAIN = [90, 91]
    KEEP = 3

    def __init__(self, fmt: str, evict: bool) -> None:
        self.fmt, self.evict = fmt, evict
        self.name = f"autosave-{fmt}" + ("-evict" if evict else "")

    def open(self, data: str) -> Any:
        extra = {"max_trajectories": self.KEEP} if self.evict else {}
        path = os.path.join(data, "buf")
        return buffer(auto_save=True, auto_save_path=path, trajectory_format=self.fmt, cache_size=2, **extra)

    def setup(self, data: str) -> None:
        buf = self.open(data)
        for code in self.SETUP:
            say("add", [code])
            buf.add_trajectories([trajectory(code)])
        buf.close()
        say("ack", self.SETUP)

    def run(self, data: str) -> None:
        path = os.path.join(data, "buf")
        holder: list[Any] = []
        retried("open", lambda: holder.append(self.open(data)), [path])
        buf = holder[-1]
        added = list(self.SETUP)
        for batch in self.BATCHES:
            say("add", batch)
            buf.add_trajectories([trajectory(c) for c in batch])
            added += batch
            if attempt("flush", buf.flush, [path]):
                say("ack", added)
        retried("close", buf.close, [path])
        say("closed", added)

    def again(self, data: str) -> None:
        buf = self.open(data)
        for code in self.AGAIN:
            buf.add_trajectories([trajectory(code)])
        buf.flush()
        buf.close()
        say("closed", self.AGAIN)

    def required(self, lines: list[tuple[str, Any]]) -> set[int]:
        """Codes that must be in the directory: every acknowledged one that no add since could
        have evicted."""
        announced = [c for batch in values(lines, "add") for c in batch]
        acked = set(values(lines, "ack")[-1])
        if self.evict:
            acked &= set(announced[-self.KEEP :])
        return acked

    def after_kill(self, data: str, lines: list[tuple[str, Any]]) -> Any:
        path = os.path.join(data, "buf")
        held = contents(path)
        announced = {c for batch in values(lines, "add") for c in batch}
        codes = [c for _, c in held]
        missing = self.required(lines) - set(codes)
        assert not missing, f"acknowledged trajectories {sorted(missing)} are missing from {path}: {held}"
        assert set(codes) <= announced, (
            f"{path} holds trajectories never added: {sorted(set(codes) - announced)}"
        )
        loads(path, len(held))
        return held

    def after_retry(self, data: str, lines: list[tuple[str, Any]], before: Any) -> None:
        path = os.path.join(data, "buf")
        held = contents(path)
        want = [c for _, c in sorted(before)] + self.AGAIN
        if self.evict:
            want = want[-self.KEEP :]
        assert sorted(c for _, c in held) == sorted(want), (
            f"after reopening, adding {self.AGAIN} and closing, {path} holds {held}; expected codes {want}"
        )
        loads(path, len(held))

    def after_fail(self, data: str, lines: list[tuple[str, Any]]) -> None:
        path = os.path.join(data, "buf")
        closed = values(lines, "closed")
        assert closed, "the child did not get to close() the buffer"
        want = closed[-1][-self.KEEP :] if self.evict else closed[-1]
        held = contents(path)
        assert sorted(c for _, c in held) == sorted(want), (
            f"after the retried flush()/close(), {path} holds {held}; expected codes {want}"
        )
        loads(path, len(held))


class SaveCheckpoint(Operation):
    """``save_checkpoint`` of an in-memory buffer to a new path, or over an existing checkpoint
    (``replace``: it holds other trajectories, in the same format)."""

    NEW = [0, 1, 2, 3, 4]
    OLD = [10, 11, 12]

    def __init__(self, replace: bool, fmt: str) -> None:
        self.replace, self.fmt = replace, fmt
        self.name = ("save-replace-" if replace else "save-new-") + fmt
        self.source: Any = None

    def setup(self, data: str) -> None:
        if self.replace:
            checkpoint_of(os.path.join(data, "ckpt"), self.OLD, self.fmt)
        self.source = buffer(trajectory_format=self.fmt)
        for code in self.NEW:
            self.source.add_trajectories([trajectory(code)])

    def run(self, data: str) -> None:
        path = os.path.join(data, "ckpt")
        retried("save", lambda: self.source.save_checkpoint(path), [path])
        say("done", self.NEW)

    def again(self, data: str) -> None:
        self.source = buffer(trajectory_format=self.fmt)
        for code in self.NEW:
            self.source.add_trajectories([trajectory(code)])
        self.source.save_checkpoint(os.path.join(data, "ckpt"))

    def check_complete(self, path: str, allowed: list[list[int]]) -> list[int]:
        held = contents(path)
        codes = [c for _, c in held]
        assert codes in allowed, f"{path} holds codes {codes}; expected one of {allowed}"
        loads(path, len(held))
        return codes

    def after_kill(self, data: str, lines: list[tuple[str, Any]]) -> Any:
        path = os.path.join(data, "ckpt")
        if self.replace:  # the old checkpoint is swapped out in one step: never missing
            assert is_buffer(path), f"{path}: the checkpoint being replaced is missing"
            return self.check_complete(path, [self.OLD, self.NEW])
        if is_buffer(path):
            return self.check_complete(path, [self.NEW])
        assert not os.path.lexists(path) or not os.listdir(path), f"{path} is neither absent nor complete"
        return None

    def after_retry(self, data: str, lines: list[tuple[str, Any]], before: Any) -> None:
        self.check_complete(os.path.join(data, "ckpt"), [self.NEW])

    def after_fail(self, data: str, lines: list[tuple[str, Any]]) -> None:
        assert values(lines, "done"), "the retried save_checkpoint did not complete"
        self.check_complete(os.path.join(data, "ckpt"), [self.NEW])


class MergeSplit(Operation):
    """``merge_or_split``: two ``rank_*`` directories merged, or one split (``split_count=3``),
    copying or moving."""

    RANKS = {"rank_0": [0, 1, 2], "rank_1": [10, 11, 12]}
    MERGED = [0, 10, 1, 11, 2, 12]  # interleaved by original id
    SINGLE = [0, 1, 2, 3, 4]
    SPLIT = 3

    def __init__(self, split: bool, copy: bool) -> None:
        self.split, self.copy = split, copy
        self.name = ("split-" if split else "merge-") + ("copy" if copy else "move")

    def sources(self, data: str) -> dict[str, list[int]]:
        if self.split:
            return {os.path.join(data, "src"): self.SINGLE}
        return {os.path.join(data, "src", rank): codes for rank, codes in self.RANKS.items()}

    @property
    def output(self) -> list[int]:
        return self.SINGLE[: self.SPLIT] if self.split else self.MERGED

    def setup(self, data: str) -> None:
        for path, codes in self.sources(data).items():
            checkpoint_of(path, codes)

    def call(self, data: str) -> None:
        from rlinf_replay_buffer.tools.merge_split import merge_or_split

        out = os.path.join(data, "out")
        merge_or_split(
            os.path.join(data, "src"),
            out,
            split_count=self.SPLIT if self.split else None,
            copy=self.copy,
            overwrite=os.path.lexists(out),  # a retry replaces what an earlier run published
        )

    def involved(self, data: str) -> list[str]:
        return [*self.sources(data), os.path.join(data, "out")]

    def run(self, data: str) -> None:
        if not attempt("merge_or_split", lambda: self.call(data), self.involved(data)):
            self.again(data)
        say("done", self.output)

    def again(self, data: str) -> None:
        """Run it again, unless it is a move that got to its end (only the cleanup was cut
        short: the output is complete and no source lists what it holds)."""
        if not self.copy:
            sources, out = self.state(data)
            if out == self.output and not any(set(c or []) & set(out) for c in sources.values()):
                return
        self.call(data)

    def state(self, data: str) -> tuple[dict[str, list[int] | None], list[int] | None]:
        """Codes each source and the output hold (``None``: not a buffer directory)."""
        held: dict[str, list[int] | None] = {}
        for path in self.sources(data):
            held[path] = codes_of(path) if is_buffer(path) else None
        out = os.path.join(data, "out")
        return held, codes_of(out) if is_buffer(out) else None

    def check(self, data: str, done: bool) -> None:
        sources, out = self.state(data)
        if out is not None or done:
            assert out == self.output, f"the output holds codes {out}; expected {self.output}"
        if self.copy:
            for path, codes in self.sources(data).items():
                assert sources[path] == codes, f"copying changed the source {path}: it holds {sources[path]}"
            return
        everything = [c for codes in self.sources(data).values() for c in codes]
        seen = [c for codes in sources.values() for c in codes or []] + list(out or [])
        lost = sorted(set(everything) - set(seen))
        twice = sorted({c for c in seen if seen.count(c) > 1})
        assert not lost, f"moving lost trajectories {lost}: sources hold {sources}, the output {out}"
        assert not twice, f"moving duplicated trajectories {twice}: sources hold {sources}, the output {out}"

    def after_kill(self, data: str, lines: list[tuple[str, Any]]) -> Any:
        self.check(data, done=False)
        return None

    def after_retry(self, data: str, lines: list[tuple[str, Any]], before: Any) -> None:
        self.check(data, done=True)

    def after_fail(self, data: str, lines: list[tuple[str, Any]]) -> None:
        assert values(lines, "done"), "the retried merge_or_split did not complete"
        self.check(data, done=True)


class VerifyRepair(Operation):
    """``verify_directory(path, repair=True)`` on a ``pt`` directory with a corrupt file (code 2),
    an index that lost an entry (code 4, its file intact), a leftover temporary file and a torn
    journal line. The setup prints the damaged file's hash (``damaged``): a repair that
    completed holds it in ``quarantine/``."""

    on_corrupt = "skip"
    CODES = [0, 1, 2, 3, 4, 5]
    DAMAGED = 2
    UNLISTED = 4
    name = "verify-repair"

    def setup(self, data: str) -> None:
        from rlinf_replay_buffer.journal import JOURNAL, read_index, write_index
        from rlinf_replay_buffer.naming import list_trajectory_files

        path = os.path.join(data, "buf")
        buf = buffer(auto_save=True, auto_save_path=path)
        for code in self.CODES:
            buf.add_trajectories([trajectory(code)])
        buf.close()
        files = list_trajectory_files(path)
        damaged = os.path.join(path, files[self.DAMAGED][0])
        with open(damaged, "r+b") as f:
            f.seek(os.path.getsize(damaged) // 2)
            f.write(b"\xa5" * 64)
        say("damaged", file_hash(damaged))
        entries, _, _ = read_index(path)
        write_index(path, [e for e in entries if e["trajectory_id"] != self.UNLISTED])
        with open(os.path.join(path, ".tmp-0123456789abcdef-trajectory_9_x_0.pt"), "wb") as f:
            f.write(b"half a file")
        with open(os.path.join(path, JOURNAL), "wb") as f:
            f.write(b'{"trajectory_id": 7, "fi')

    def repair(self, data: str) -> None:
        from rlinf_replay_buffer.tools.verify import verify_directory

        verify_directory(os.path.join(data, "buf"), repair=True)

    def run(self, data: str) -> None:
        retried("verify --repair", lambda: self.repair(data), [os.path.join(data, "buf")], "skip")
        say("done", None)

    def again(self, data: str) -> None:
        self.repair(data)

    def sound(self) -> list[int]:
        return [c for c in self.CODES if c != self.DAMAGED]

    def after_kill(self, data: str, lines: list[tuple[str, Any]]) -> Any:
        path = os.path.join(data, "buf")
        held = contents(path, damaged_ok={self.DAMAGED})
        codes = [c for _, c in held]
        must = set(self.sound()) - {self.UNLISTED}
        assert must <= set(codes), f"{path} lost sound trajectories {sorted(must - set(codes))}: {held}"
        loads(path, None, on_corrupt="skip")
        return None

    def after_retry(self, data: str, lines: list[tuple[str, Any]], before: Any) -> None:
        path = os.path.join(data, "buf")
        held = contents(path)
        assert sorted(c for _, c in held) == self.sound(), f"after the repair {path} holds {held}"
        loads(path, len(held))
        quarantine = os.path.join(path, "quarantine")
        names = sorted(os.listdir(quarantine)) if os.path.isdir(quarantine) else []
        kept = [file_hash(os.path.join(quarantine, n)) for n in names]
        assert values(lines, "damaged")[0] in kept, f"the damaged file is not in {quarantine}: {names}"

    def after_fail(self, data: str, lines: list[tuple[str, Any]]) -> None:
        assert values(lines, "done"), "the retried verify --repair did not complete"
        self.after_retry(data, lines, None)


class ExportParquet(OneOutput):
    """``export_parquet`` of a ``pt`` checkpoint to a new file."""

    CODES = [0, 1, 2, 3, 4]
    name = "export-parquet"
    verb = "export_parquet"

    def setup(self, data: str) -> None:
        checkpoint_of(os.path.join(data, "src"), self.CODES)
        say("hashes", tree_hashes(os.path.join(data, "src")))

    def call(self, data: str) -> None:
        from rlinf_replay_buffer.tools.parquet import export_parquet

        out = os.path.join(data, "out", "export.parquet")
        export_parquet(os.path.join(data, "src"), out, overwrite=os.path.lexists(out))

    def run(self, data: str) -> None:
        retried("export_parquet", lambda: self.call(data), [os.path.join(data, "src")])
        say("done", None)

    def again(self, data: str) -> None:
        self.call(data)

    def check(self, data: str, lines: list[tuple[str, Any]], done: bool) -> None:
        src = os.path.join(data, "src")
        assert tree_hashes(src) == values(lines, "hashes")[0], f"exporting changed the source {src}"
        out = os.path.join(data, "out", "export.parquet")
        if os.path.lexists(out) or done:
            codes = parquet_codes(out, os.path.join(os.path.dirname(data), "scratch"))
            assert codes == self.CODES, f"{out} holds codes {codes}; expected {self.CODES}"


class ImportParquet(OneOutput):
    """``import_parquet`` of an exported file into a new ``segment`` directory."""

    CODES = [0, 1, 2, 3, 4]
    name = "import-parquet"
    verb = "import_parquet"

    def setup(self, data: str) -> None:
        from rlinf_replay_buffer.tools.parquet import export_parquet

        src = os.path.join(data, "src")
        checkpoint_of(src, self.CODES)
        export_parquet(src, os.path.join(data, "in.parquet"))
        say("hashes", file_hash(os.path.join(data, "in.parquet")))

    def call(self, data: str) -> None:
        from rlinf_replay_buffer.tools.parquet import import_parquet

        dest = os.path.join(data, "dest")
        import_parquet(
            os.path.join(data, "in.parquet"),
            dest,
            trajectory_format="segment",
            overwrite=os.path.lexists(dest),
        )

    def run(self, data: str) -> None:
        retried("import_parquet", lambda: self.call(data), [os.path.join(data, "dest")])
        say("done", None)

    def again(self, data: str) -> None:
        self.call(data)

    def check(self, data: str, lines: list[tuple[str, Any]], done: bool) -> None:
        source = os.path.join(data, "in.parquet")
        assert file_hash(source) == values(lines, "hashes")[0], f"importing changed {source}"
        dest = os.path.join(data, "dest")
        if is_buffer(dest) or done:
            held = contents(dest)
            assert [c for _, c in held] == self.CODES, f"{dest} holds {held}; expected codes {self.CODES}"
            loads(dest, len(held))
        else:
            assert not os.path.lexists(dest) or not os.listdir(dest), f"{dest} is neither absent nor complete"


class ShardCommit(Operation):
    """A shard's load without Ray: ``shares.stage`` of its share of a checkpoint, then
    ``shares.commit`` over its current ``rank_0``. After a kill, the shard's start-up recovery
    (``shares.recover``) runs before anything reads ``rank_0``; after a failed commit the shard
    runs it at once (as ``Shard.commit`` does), then the load is tried again."""

    NEW = [0, 1, 2, 3]
    OLD = [20, 21]
    name = "shard-commit"

    def setup(self, data: str) -> None:
        checkpoint_of(os.path.join(data, "ckpt"), self.NEW)
        checkpoint_of(os.path.join(data, "shard", "rank_0"), self.OLD)
        say("hashes", tree_hashes(os.path.join(data, "ckpt")))

    def load(self, data: str) -> None:
        from rlinf_replay_buffer.distributed import shares

        root = os.path.join(data, "shard")
        share = shares.share_of(os.path.join(data, "ckpt"), 0, 1)
        shares.stage(share, root, 0, "pt", 0)
        shares.commit(root, 0)

    def recover(self, data: str) -> None:
        from rlinf_replay_buffer.distributed import shares

        shares.recover(os.path.join(data, "shard"), 0)

    def run(self, data: str) -> None:
        live = os.path.join(data, "shard", "rank_0")
        if not attempt("stage and commit", lambda: self.load(data)):
            retried("recover", lambda: self.recover(data), [live])
            probe(live)
            self.load(data)
        say("done", self.NEW)

    def again(self, data: str) -> None:
        self.recover(data)
        self.load(data)

    def check(self, data: str, lines: list[tuple[str, Any]], allowed: list[list[int]]) -> None:
        ckpt = os.path.join(data, "ckpt")
        assert tree_hashes(ckpt) == values(lines, "hashes")[0], f"loading changed the checkpoint {ckpt}"
        live = os.path.join(data, "shard", "rank_0")
        assert is_buffer(live), f"{live} is missing"
        held = contents(live)
        codes = [c for _, c in held]
        assert codes in allowed, f"{live} holds codes {codes}; expected one of {allowed}"
        loads(live, len(held))

    def after_kill(self, data: str, lines: list[tuple[str, Any]]) -> Any:
        self.recover(data)  # what the restarted shard does first
        self.check(data, lines, [self.OLD, self.NEW])
        return lines

    def after_retry(self, data: str, lines: list[tuple[str, Any]], before: Any) -> None:
        self.check(data, before, [self.NEW])

    def after_fail(self, data: str, lines: list[tuple[str, Any]]) -> None:
        assert values(lines, "done"), "the retried load did not complete"
        self.check(data, lines, [self.NEW])


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in [
        *(AutoSave(fmt, evict) for fmt in ("pt", "pkl", "segment") for evict in (False, True)),
        SaveCheckpoint(False, "pt"),
        SaveCheckpoint(True, "segment"),
        MergeSplit(False, True),
        MergeSplit(False, False),
        MergeSplit(True, False),
        VerifyRepair(),
        ExportParquet(),
        ImportParquet(),
        ShardCommit(),
    ]
}


# -- parent-side reading ---------------------------------------------------------------------------
def is_buffer(path: str) -> bool:
    from rlinf_replay_buffer.directory import is_buffer_directory

    return os.path.isdir(path) and is_buffer_directory(path)


def contents(path: str, damaged_ok: set[int] = frozenset()) -> list[tuple[int, int]]:
    """``(id, code)`` of every trajectory ``path`` lists, in index order, each checked to be
    byte-identical to the trajectory of its code, and no code listed twice. ``damaged_ok``: ids
    whose data may fail its checksum (they are left out)."""
    from rlinf_replay_buffer import CorruptBufferError
    from rlinf_replay_buffer.directory import read_directory
    from rlinf_replay_buffer.store import read_rows

    found, schema = read_directory(path)
    held = []
    for record in found.records:
        try:
            rows = read_rows(record, schema)
        except CorruptBufferError:
            if record.trajectory_id in damaged_ok:
                continue
            raise
        code = int(rows[("curr_obs", "states")][0, 0].item()) // 1000
        want = expected_rows(code)
        assert sorted(rows) == sorted(want), (
            f"{path}: trajectory {record.trajectory_id}: columns {sorted(rows)}"
        )
        for key, value in want.items():
            got = rows[key].contiguous()
            assert got.dtype == value.dtype and got.shape == value.shape, (
                f"{path}: trajectory {record.trajectory_id} (code {code}): {key} is {got.dtype} "
                f"{tuple(got.shape)}, expected {value.dtype} {tuple(value.shape)}"
            )
            assert got.numpy().tobytes() == value.contiguous().numpy().tobytes(), (
                f"{path}: trajectory {record.trajectory_id} (code {code}): {key} differs from what was added"
            )
        held.append((record.trajectory_id, code))
    codes = [c for _, c in held]
    twice = sorted({c for c in codes if codes.count(c) > 1})
    assert not twice, f"{path} lists trajectories {twice} more than once: {held}"
    return held


def codes_of(path: str) -> list[int]:
    held = contents(path)
    loads(path, len(held))
    return [c for _, c in held]


def loads(path: str, size: int | None, on_corrupt: str = "raise") -> None:
    """``load_checkpoint(path)`` into a fresh buffer works (and holds ``size`` trajectories)."""
    from rlinf_replay_buffer import CorruptDataWarning

    buf = buffer(on_corrupt=on_corrupt)
    with warnings.catch_warnings():  # with "skip", the damaged trajectory is left out, as it should
        warnings.simplefilter("ignore", CorruptDataWarning)
        buf.load_checkpoint(path)
    if size is not None:
        assert buf.size == size, f"{path}: load_checkpoint holds {buf.size} trajectories, the index {size}"


def file_hash(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tree_hashes(path: str) -> dict[str, str]:
    """Hash of every file under ``path`` but lock files (which a reader may create)."""
    out = {}
    for root, _dirs, files in os.walk(path):
        for name in files:
            if name.endswith(".lock"):
                continue
            full = os.path.join(root, name)
            out[os.path.relpath(full, path)] = file_hash(full)
    return out


def parquet_codes(path: str, scratch: str) -> list[int]:
    """Codes of the trajectories a Parquet export holds, in order (imported into ``scratch``)."""
    from rlinf_replay_buffer.tools.parquet import import_parquet

    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    dest = os.path.join(scratch, "imported")
    import_parquet(path, dest)
    return [c for _, c in contents(dest)]


# -- the server (child side) -----------------------------------------------------------------------
SERVER_SCRIPT = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
import faults
faults.serve()
"""


def serve() -> None:
    """The server's loop: one JSON request per stdin line, one JSON answer per stdout line."""
    import conftest  # noqa: F401
    import torch  # noqa: F401 - imported once here, before any fork

    import rlinf_replay_buffer.buffer  # noqa: F401
    import rlinf_replay_buffer.distributed.shares  # noqa: F401
    import rlinf_replay_buffer.tools.merge_split  # noqa: F401
    import rlinf_replay_buffer.tools.parquet  # noqa: F401
    import rlinf_replay_buffer.tools.verify  # noqa: F401

    channel = sys.stdout
    channel.write("ready\n")
    channel.flush()
    for line in sys.stdin:
        request = json.loads(line)
        channel.write(json.dumps(fork_run(request)) + "\n")
        channel.flush()


def fork_run(request: dict[str, Any]) -> dict[str, Any]:
    """Run ``request`` in a forked child; return how it ended."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            out = os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            err = os.open(request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(err, 2)
            for fd in (out, err, null):
                os.close(fd)
            child_main(request)
            code = 0
        except BaseException:  # noqa: BLE001 - the parent reads the traceback
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + float(request.get("timeout", RUN_TIMEOUT))
    timed_out = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            timed_out = True
            break
        time.sleep(0.002)
    return {
        "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "timed_out": timed_out,
    }


def child_main(request: dict[str, Any]) -> None:
    """What one child does: ``again`` (the retry after a kill), or setup, then the operation
    under the interposer in ``request["mode"]``."""
    op = OPERATIONS[request["op"]]
    data = request["data"]
    os.makedirs(data, exist_ok=True)
    if request["phase"] == "again":
        op.again(data)
        say("again-done")
        return
    op.setup(data)
    mode = request["mode"]
    if mode == "record":  # the power-loss model's recording (tests/power_loss.py)
        import power_loss

        power_loss.record(op, data)
        return
    kind, _, rest = mode.partition("@")
    target, _, code = rest.partition(":")
    ip = Interposer(
        os.path.realpath(data),
        kind,
        int(target or 0),
        ERRNOS.get(code, 0),
        report=lambda line: os.write(1, (line + "\n").encode()),
    )
    ip.install()
    try:
        op.run(data)
    finally:
        ip.uninstall()
    say("points", ip.points)


# -- the parent side -------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    """How one child run ended and what it printed."""

    code: int | None
    signal: int | None
    timed_out: bool
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[tuple[str, Any]]:
        return parse_lines(self.stdout)

    def tail(self, n: int = 3000) -> str:
        return self.stderr[-n:]


class Server:
    """The process that forks the children (see the module docstring)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
        self.log = open(workdir / "server.err", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env,
            cwd=str(workdir),
        )
        self.runs = 0
        if self.readline(SERVER_START_TIMEOUT) != "ready":
            self.close()
            raise RuntimeError(f"the fault-injection server did not start: {self.server_log()}")

    def server_log(self) -> str:
        self.log.flush()
        return (self.workdir / "server.err").read_text(errors="replace")[-3000:]

    def readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.close()
            raise RuntimeError(f"the fault-injection server did not answer within {timeout:.0f} s")
        return self.proc.stdout.readline().decode().strip()

    def run(self, op: str, phase: str, data: Path, mode: str = "count", timeout: float = RUN_TIMEOUT) -> Run:
        """Run one child; ``data`` is the directory under test."""
        assert self.proc.stdin is not None
        self.runs += 1
        out = self.workdir / f"run-{self.runs}.out"
        err = self.workdir / f"run-{self.runs}.err"
        request = {
            "op": op,
            "phase": phase,
            "data": str(data),
            "mode": mode,
            "out": str(out),
            "err": str(err),
            "timeout": timeout,
        }
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        line = self.readline(timeout + 60)
        if not line:
            raise RuntimeError(f"the fault-injection server died: {self.server_log()}")
        answer = json.loads(line)
        run = Run(answer["code"], answer["signal"], answer["timed_out"], out.read_text(), err.read_text())
        out.unlink()
        err.unlink()
        return run

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()


@dataclasses.dataclass
class Outcome:
    """What one point's run showed: ``label`` names the operation, the point and the outcome."""

    label: str
    failure: str | None = None


class Harness:
    """Counts operations' points once, and runs one (operation, point, outcome)."""

    def __init__(self, server: Server, workdir: Path) -> None:
        self.server = server
        self.workdir = workdir
        self.counted: dict[str, list[tuple[str, str]]] = {}
        self.cases = 0

    def points(self, op: str) -> list[tuple[str, str]]:
        """The points of ``op`` in order (counted once)."""
        if op not in self.counted:
            data = self.fresh("count-" + op) / "data"
            run = self.server.run(op, "run", data, "count")
            found = values(run.lines, "points")
            if run.code != 0 or not found:
                raise AssertionError(f"{op}: counting its points failed (exit {run.code}):\n{run.tail()}")
            self.counted[op] = [tuple(p) for p in found[-1]]
        return self.counted[op]

    def fresh(self, name: str) -> Path:
        self.cases += 1
        path = self.workdir / f"{self.cases:05d}-{name}"
        path.mkdir(parents=True)
        return path

    def spread(self, op: str, k: int, of: int) -> int:
        """The ``k``-th of ``of`` points spread evenly over ``op``'s points (1-based index)."""
        n = len(self.points(op))
        return 1 + round(k * (n - 1) / max(1, of - 1))

    def label(self, op: str, index: int, outcome: str, hit: dict[str, Any] | None) -> str:
        points = self.points(op)
        counted = points[index - 1] if 0 < index <= len(points) else ("?", "?")
        where = f"{counted[0]}({counted[1]})"
        if hit is not None and (hit["call"], hit["path"]) != tuple(counted):
            where += f", reached as {hit['call']}({hit['path']})"
        return f"{op}: {outcome} at point {index}/{len(points)} {where}"

    def check(self, op_name: str, index: int, outcome: str) -> Outcome:
        """Run ``op_name`` with ``outcome`` (``kill``, ``ENOSPC`` or ``EIO``) at point ``index``
        and check every invariant; the failure (if any) names the operation, point and outcome."""
        op = OPERATIONS[op_name]
        case = self.fresh(f"{op_name}-{index}-{outcome}")
        data = case / "data"
        mode = f"kill@{index}" if outcome == "kill" else f"fail@{index}:{outcome}"
        run = self.server.run(op_name, "run", data, mode)
        lines = run.lines
        hits = values(lines, "point")
        label = self.label(op_name, index, outcome, hits[0] if hits else None)
        try:
            self.judge(op, data, run, outcome, hits)
        except AssertionError as exc:
            return Outcome(label, f"{label}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a library error while checking is a failed invariant
            detail = "".join(traceback.format_exception(exc))[-3000:]
            return Outcome(label, f"{label}: {type(exc).__name__}: {exc}\n{detail}")
        shutil.rmtree(case, ignore_errors=True)
        return Outcome(label)

    def judge(self, op: Operation, data: Path, run: Run, outcome: str, hits: list[Any]) -> None:
        lines = run.lines
        assert not run.timed_out, f"the child hung (killed after {RUN_TIMEOUT:.0f} s)\n{run.tail()}"
        if outcome == "kill":
            if not hits:  # the operation made fewer calls this time: it ran to its end
                assert run.code == 0, f"the child failed without reaching the point:\n{run.tail()}"
                op.after_fail(str(data), lines)
                return
            assert run.signal == signal.SIGKILL, f"the child was not killed (exit {run.code}):\n{run.tail()}"
            before = op.after_kill(str(data), lines)
            again = self.server.run(op.name, "again", data)
            assert again.code == 0 and values(again.lines, "again-done"), (
                f"running the operation again after the kill failed (exit {again.code}):\n{again.tail()}"
            )
            op.after_retry(str(data), lines, before)
            return
        wrong = [
            f"{e['what']} raised {e['type']}, not a ReplayBufferError: {e['message']}\n{e['traceback']}"
            for e in values(lines, "error")
            if not e["library"]
        ]
        wrong += [
            f"after the failure {p['path']} does not load: {p['error']}"
            for p in values(lines, "probe")
            if not p["ok"]
        ]
        if run.code != 0:
            wrong.append(f"the operation or its retry failed (exit {run.code}):\n{run.tail()}")
        else:
            try:
                op.after_fail(str(data), lines)
            except AssertionError as exc:
                wrong.append(str(exc))
        assert not wrong, "\n".join(wrong)
