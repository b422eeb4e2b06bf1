"""A power-loss model for ``tests/test_power_loss.py``: record every change an operation makes
to the directory under test, then build what a machine that lost power at any point could find
on its disk, and run the operation's invariant checks (``tests/faults.py``) on it.

A ``SIGKILL`` (``tests/test_fault_injection.py``) leaves the kernel's page cache intact: every
write the process made survives it, synced or not. A power cut loses exactly what was not made
durable, so the kill tests cannot tell whether an ``fsync`` is there. This model can.

**Recording** (child side, :class:`Recorder`, mode ``record`` of ``faults.child_main``). After
the operation's ``setup`` the child calls ``os.sync()`` and snapshots the whole tree under the
directory under test: that is the durable starting state. Then the operation runs once with the
file-system functions it calls replaced (the same ones ``faults.Interposer`` counts) by
functions that log, in order, each change and each sync, with the inodes involved (numbered
*nodes*, assigned when an inode is first seen or created; a directory entry is named by its
parent directory's node and its name):

* ``create`` (``os.open`` with ``O_CREAT`` of a new file, ``open`` in ``w``/``x``/``a`` mode
  of a new file, ``os.mkdir`` -- ``os.makedirs`` is its ``mkdir`` calls --, ``os.symlink``),
  ``link`` (``os.link``), ``unlink`` (``os.unlink``, ``os.remove``, ``os.rmdir``; what
  ``shutil.rmtree`` does is these calls, logged one by one), ``rename`` (``os.rename``,
  ``os.replace``), ``exchange`` (``fsio.exchange``, ``renameat2(RENAME_EXCHANGE)``);
* ``data``: a file's content changed (``os.write``, ``os.pwrite``, ``os.ftruncate``,
  ``os.truncate``, ``O_TRUNC``, and a file object's ``write``, ``writelines``, ``flush``,
  ``truncate`` and ``close`` -- where Python's buffer reaches the kernel --, ``shutil.copyfile``);
  the file's full bytes are snapshotted after the call and stored by their SHA-256 in a blob
  directory (files are small here), so each state a prefix of its writes gave is known;
* ``fsync`` (``os.fsync``/``os.fdatasync`` of a file, with its bytes at that moment) and
  ``dsync`` (the same of a directory);
* the report lines the operation prints (``faults.say``: ``add``, ``ack``, ``done``, ...), in
  place, so the parent knows which acknowledgements were given before each change.

Calls run one at a time (a lock: the auto-save writer thread and the caller interleave), so the
log's order is the order of the changes. At the end the real tree is snapshotted too: replaying
the whole log must give it exactly (:meth:`Recording.verify`), which proves nothing escaped.

**Crash states** (parent side, :class:`State`). A cut at point ``c`` keeps the first ``c`` logged
changes (``c`` = 0 .. all of them). Per file node the model keeps its *durable* content (its
bytes at its last ``fsync``; at the start, its bytes then; a file created since and never
fsync'd is empty), its current content and every content between (one per logged write); per
directory node its durable entries (as of its last ``dsync``; a new directory has none), its
current entries, and the entry changes since the last ``dsync``. Strict POSIX: an fsync of a
file does not make its name durable; a change of entries becomes durable only with an fsync of
its directory, so a rename across directories becomes durable per directory half. From a state,
:meth:`State.image` builds:

* ``synced``: durable entries, durable contents (everything un-synced is lost);
* ``names-kept``: every entry change applied, durable contents (the zero-length file a rename
  put in place before its data reached the disk);
* ``all-kept``: everything applied (what a ``SIGKILL`` leaves);
* ``random-<i>`` (the POSIX model): each un-synced entry change kept or dropped independently
  (a rename or an exchange is one change: both its halves are kept or dropped, a half already
  durable staying), and each file whose content is not durable gets its durable content, its
  current content or the content after a prefix of its un-synced writes, each with equal chance;
* ``ordered-<i>``: what a file system that commits metadata in order (ext4, XFS) can give: the
  un-synced entry changes before a random point are kept, those after it dropped, and each
  un-synced file holds a content it had before that point.

A ``random`` image that happens to satisfy the ``ordered`` rule is *in order*; one that does not
is a state POSIX allows but only a file system that reorders metadata (or one without a
journal) would produce: a failure there is reported apart (:attr:`Outcome.in_order`). Each
random image is seeded by ``(seed, operation, cut, name)``: ``RLINF_POWER_SEED`` (0),
``RLINF_POWER_SAMPLES`` (``random`` images per cut, 3) and ``RLINF_POWER_ORDERED``
(``ordered`` ones, 2) select them.

An image is materialized as a real tree at the directory under test's own path (move records
name their output by absolute path; the images of one operation are checked one after another)
and checked like the state a kill leaves (``after_kill``; after an operation that reported it
completed, its ``after_fail`` checks too: the acknowledged output must be whole), then the
operation runs again in a fresh child on it and ``after_retry`` checks the result.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import random
import shutil
import stat
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import faults

EMPTY = hashlib.sha256(b"").hexdigest()
"""The blob of an empty file (what a file created and never fsync'd holds after a power cut)."""
IMAGES = ("synced", "names-kept", "all-kept")
SAMPLES = int(os.environ.get("RLINF_POWER_SAMPLES", "3"))
ORDERED = int(os.environ.get("RLINF_POWER_ORDERED", "2"))
SEED = int(os.environ.get("RLINF_POWER_SEED", "0"))
FOREVER = 1 << 62  # a change index after every change
DONE = ("done", "closed")  # report lines that say the operation completed (its output is acknowledged)


def sha(data: bytes) -> str:
    """The blob name of ``data``."""
    return hashlib.sha256(data).hexdigest()


# -- recording (child side) ------------------------------------------------------------------------
class RecordedFile(faults.FileProxy):
    """A file opened for writing under the directory under test: what reaches the kernel through
    it is logged as ``data``."""

    interposer: Recorder

    def write(self, data: Any) -> int:
        with self.interposer.rlock:
            n = self.file_object.write(data)
            self.interposer.changed(self.fd, "file.write", self.file_path)
        return n

    def writelines(self, lines: Any) -> None:
        with self.interposer.rlock:
            self.file_object.writelines(lines)
            self.interposer.changed(self.fd, "file.writelines", self.file_path)

    def flush(self) -> None:
        with self.interposer.rlock:
            self.file_object.flush()
            self.interposer.changed(self.fd, "file.flush", self.file_path)

    def truncate(self, size: int | None = None) -> int:
        with self.interposer.rlock:
            n = self.file_object.truncate() if size is None else self.file_object.truncate(size)
            self.interposer.changed(self.fd, "file.truncate", self.file_path)
        return n

    def settle(self) -> None:
        """Before the file is closed: its buffer goes to the kernel (logged)."""
        with self.interposer.rlock:
            if not self.file_object.closed:
                self.file_object.flush()
                self.interposer.changed(self.fd, "file.close", self.file_path)

    def close(self) -> None:
        self.settle()
        self.interposer.forget(self.fd)
        self.file_object.close()

    def __exit__(self, *exc: Any) -> Any:
        if exc[0] is None:
            self.settle()
        self.interposer.forget(self.fd)
        return self.file_object.__exit__(*exc)


class Recorder(faults.Interposer):
    """Logs the changes made under ``prefix`` (see the module docstring).

    Args:
        prefix: the directory under test (absolute, no symbolic links).
        out: where the blobs go (``out/blobs``); outside ``prefix``.
    """

    def __init__(self, prefix: str, out: str) -> None:
        super().__init__(prefix, "record")
        self.out = out
        self.blobs = os.path.join(out, "blobs")
        os.makedirs(self.blobs, exist_ok=True)
        self.events: list[dict[str, Any]] = []
        self.nodes: dict[tuple[int, int], int] = {}
        self.content: dict[int, str] = {}
        self.stored: set[str] = set()
        self.untracked: list[str] = []
        self.rlock = threading.RLock()
        self.raw_open = builtins.open
        self.count = 0
        self.initial: dict[str, Any] = {}
        self.store(b"")

    # -- blobs and nodes ----------------------------------------------------------------------------
    def store(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if digest not in self.stored:
            with self.raw_open(os.path.join(self.blobs, digest), "wb") as f:
                f.write(data)
            self.stored.add(digest)
        return digest

    def read(self, where: int | str) -> bytes:
        name = f"/proc/self/fd/{where}" if isinstance(where, int) else where
        with self.raw_open(name, "rb") as f:
            return f.read()

    def new_node(self, st: os.stat_result) -> int:
        self.count += 1
        self.nodes[(st.st_dev, st.st_ino)] = self.count
        return self.count

    def node(self, st: os.stat_result, path: str) -> int:
        """The node of an inode seen under the prefix (one never seen is noted as untracked:
        something changed the tree behind the recorded calls)."""
        found = self.nodes.get((st.st_dev, st.st_ino))
        if found is None:
            self.untracked.append(self.shown(path))
            found = self.new_node(st)
        return found

    def where(self, path: Any, dir_fd: int | None = None) -> tuple[int, str, str] | None:
        """``(parent directory's node, entry name, absolute path)`` of a path under the prefix
        (not the prefix itself), or ``None``."""
        full = self.resolve(path, dir_fd)
        if full is None or not self.under(full) or full == self.prefix:
            return None
        parent = os.path.dirname(full)
        return self.node(os.lstat(parent), parent), os.path.basename(full), full

    def emit(self, event: str, call: str, shown: str, **fields: Any) -> None:
        self.events.append({"e": event, "call": call, "path": shown, **fields})

    # -- what a call did ----------------------------------------------------------------------------
    def changed(self, fd: int, call: str, path: str) -> None:
        """A descriptor's file may have new content: log it if it does."""
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            self.new_content(self.node(st, path), self.read(fd), call, path)

    def new_content(self, node: int, data: bytes, call: str, path: str) -> None:
        blob = self.store(data)
        if self.content.get(node) != blob:
            self.content[node] = blob
            self.emit("data", call, self.shown(path), x=node, b=blob)

    def synced(self, fd: int, call: str, path: str) -> None:
        st = os.fstat(fd)
        node = self.node(st, path)
        if stat.S_ISDIR(st.st_mode):
            self.emit("dsync", call, self.shown(path), x=node)
        elif stat.S_ISREG(st.st_mode):
            blob = self.store(self.read(fd))
            self.content[node] = blob
            self.emit("fsync", call, self.shown(path), x=node, b=blob)

    def created(self, at: tuple[int, str, str], call: str) -> None:
        """``at`` was just created (a file, a directory or a symbolic link)."""
        parent, name, full = at
        st = os.lstat(full)
        node = self.new_node(st)
        if stat.S_ISDIR(st.st_mode):
            self.emit("create", call, self.shown(full), d=parent, n=name, x=node, k="d")
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(full)
            self.emit("create", call, self.shown(full), d=parent, n=name, x=node, k="l", t=target)
        else:
            self.content[node] = EMPTY
            self.emit("create", call, self.shown(full), d=parent, n=name, x=node, k="f")
            data = self.read(full)
            if data:
                self.new_content(node, data, call, full)

    def adopt(self, at: tuple[int, str, str], call: str) -> None:
        """A tree moved or linked in from outside the prefix: created here, durable as it is
        (everything outside existed before the operation: the start was ``os.sync()``ed)."""
        parent, name, full = at
        st = os.lstat(full)
        node = self.new_node(st)
        shown = self.shown(full)
        if stat.S_ISDIR(st.st_mode):
            self.emit("create", call, shown, d=parent, n=name, x=node, k="d")
            for child in sorted(os.listdir(full)):
                self.adopt((node, child, os.path.join(full, child)), call)
            self.emit("dsync", call, shown, x=node)
        elif stat.S_ISLNK(st.st_mode):
            self.emit("create", call, shown, d=parent, n=name, x=node, k="l", t=os.readlink(full))
        else:
            blob = self.store(self.read(full))
            self.content[node] = blob
            self.emit("create", call, shown, d=parent, n=name, x=node, k="f", b=blob)

    # -- the whole tree -----------------------------------------------------------------------------
    def start(self) -> None:
        """The durable starting state: every inode under the prefix numbered, with its content."""
        nodes: dict[int, dict[str, Any]] = {}

        def visit(path: str) -> int:
            st = os.lstat(path)
            known = self.nodes.get((st.st_dev, st.st_ino))
            if known is not None:  # a hard link to a file already seen
                return known
            node = self.new_node(st)
            if stat.S_ISDIR(st.st_mode):
                names = sorted(os.listdir(path))
                nodes[node] = {"k": "d", "e": {n: visit(os.path.join(path, n)) for n in names}}
            elif stat.S_ISLNK(st.st_mode):
                nodes[node] = {"k": "l", "t": os.readlink(path)}
            else:
                blob = self.store(self.read(path))
                self.content[node] = blob
                nodes[node] = {"k": "f", "b": blob}
            return node

        root = visit(self.prefix)
        self.initial = {"root": root, "nodes": nodes}

    def finish(self) -> None:
        """Write the log, with the real tree as it is now (``final``) to check it against."""
        log = {
            "prefix": self.prefix,
            "initial": self.initial,
            "events": self.events,
            "final": tree_of(self.prefix, self.store),
            "untracked": self.untracked,
        }
        with self.raw_open(os.path.join(self.out, "log.json"), "w") as f:
            json.dump(log, f)

    def recording(self) -> Recording:
        """The log so far, with the real tree as it is now (for a recording in this process)."""
        return Recording.of(
            json.loads(json.dumps(self.initial)),
            json.loads(json.dumps(self.events)),
            final=tree_of(self.prefix, self.store),
            blobs=self.blobs,
            data=self.prefix,
            untracked=list(self.untracked),
        )

    def note(self, kind: str, value: Any = None) -> None:
        """A report line (an acknowledgement) at this point of the log, without printing it."""
        self.marker(lambda *_: None)(kind, value)

    def marker(self, say: Callable[..., None]) -> Callable[..., None]:
        """``faults.say`` that logs the report line in place."""

        def call(kind: str, value: Any = None) -> None:
            with self.rlock:
                # as printed now (the value may be a list the operation goes on extending)
                self.events.append({"e": "say", "kind": kind, "value": json.loads(json.dumps(value))})
                say(kind, value)

        return call

    # -- the replacements -----------------------------------------------------------------------------
    def install(self) -> None:
        import rlinf_replay_buffer.fsio as fsio

        ip = self

        def patch(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
            faults.patch_attr(self.saved, owner, name, make)

        def os_open(orig: Any) -> Any:
            def call(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
                full = ip.resolve(path, dir_fd)
                if not ip.under(full):
                    return orig(path, flags, mode, dir_fd=dir_fd)
                assert full is not None
                with ip.rlock:
                    new = bool(flags & os.O_CREAT) and not os.path.lexists(full)
                    fd = orig(path, flags, mode, dir_fd=dir_fd)
                    ip.fds[fd] = full
                    at = ip.where(path, dir_fd) if new else None
                    if at is not None:
                        ip.created(at, "os.open")
                    elif flags & os.O_TRUNC:
                        ip.changed(fd, "os.open", full)
                    return fd

            return call

        def os_close(orig: Any) -> Any:
            def call(fd: int) -> None:
                ip.forget(fd)
                orig(fd)

            return call

        def by_fd(name: str, after: Callable[[int, str, str], None]) -> Callable[[Any], Any]:
            def make(orig: Any) -> Any:
                def call(fd: Any, *args: Any, **kwargs: Any) -> Any:
                    n = fd if isinstance(fd, int) else fd.fileno()
                    path = ip.fds.get(n)
                    if not ip.under(path):
                        return orig(fd, *args, **kwargs)
                    assert path is not None
                    with ip.rlock:
                        result = orig(fd, *args, **kwargs)
                        after(n, "os." + name, path)
                        return result

                return call

            return make

        def truncate(orig: Any) -> Any:
            def call(path: Any, length: int) -> None:
                full = ip.resolve(path)
                if not ip.under(full):
                    return orig(path, length)
                assert full is not None
                with ip.rlock:
                    orig(path, length)
                    ip.new_content(ip.node(os.lstat(full), full), ip.read(full), "os.truncate", full)
                return None

            return call

        def removal(name: str) -> Callable[[Any], Any]:
            def make(orig: Any) -> Any:
                def call(path: Any, *args: Any, dir_fd: int | None = None, **kwargs: Any) -> Any:
                    if not ip.under(ip.resolve(path, dir_fd)):
                        return orig(path, *args, dir_fd=dir_fd, **kwargs)
                    with ip.rlock:
                        at = ip.where(path, dir_fd)
                        result = orig(path, *args, dir_fd=dir_fd, **kwargs)
                        if at is not None:
                            ip.emit("unlink", "os." + name, ip.shown(at[2]), d=at[0], n=at[1])
                        return result

                return call

            return make

        def creation(name: str) -> Callable[[Any], Any]:
            def make(orig: Any) -> Any:
                def call(*args: Any, dir_fd: int | None = None, **kwargs: Any) -> Any:
                    path = args[1] if name == "symlink" else args[0]
                    if not ip.under(ip.resolve(path, dir_fd)):
                        return orig(*args, dir_fd=dir_fd, **kwargs)
                    with ip.rlock:
                        result = orig(*args, dir_fd=dir_fd, **kwargs)
                        at = ip.where(path, dir_fd)
                        if at is not None:
                            ip.created(at, "os." + name)
                        return result

                return call

            return make

        def moving(name: str) -> Callable[[Any], Any]:
            def make(orig: Any) -> Any:
                def call(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
                    sfd, dfd = kwargs.get("src_dir_fd"), kwargs.get("dst_dir_fd")
                    a, b = ip.resolve(src, sfd), ip.resolve(dst, dfd)
                    if not (ip.under(a) or ip.under(b)):
                        return orig(src, dst, *args, **kwargs)
                    with ip.rlock:
                        old = ip.where(src, sfd)
                        result = orig(src, dst, *args, **kwargs)
                        new = ip.where(dst, dfd)
                        shown = f"{ip.shown(a or '?')} -> {ip.shown(b or '?')}"
                        if new is None:  # moved out of the prefix
                            if old is not None and name != "link":
                                ip.emit("unlink", "os." + name, shown, d=old[0], n=old[1])
                        elif old is None:  # moved or linked in from outside
                            ip.adopt(new, "os." + name)
                        elif name == "link":
                            node = ip.node(os.lstat(new[2]), new[2])
                            ip.emit("link", "os.link", shown, d=new[0], n=new[1], x=node)
                        else:
                            node = ip.node(os.lstat(new[2]), new[2])
                            where = {"sd": old[0], "sn": old[1], "dd": new[0], "dn": new[1]}
                            ip.emit("rename", "os." + name, shown, x=node, **where)
                        return result

                return call

            return make

        def exchange(orig: Any) -> Any:
            def call(a: str, b: str) -> bool:
                if not (ip.under(ip.resolve(a)) or ip.under(ip.resolve(b))):
                    return orig(a, b)
                with ip.rlock:
                    swapped = orig(a, b)
                    pa, pb = ip.where(a), ip.where(b)
                    if swapped and pa is not None and pb is not None:
                        na = ip.node(os.lstat(pa[2]), pa[2])
                        nb = ip.node(os.lstat(pb[2]), pb[2])
                        shown = f"{ip.shown(pa[2])} <-> {ip.shown(pb[2])}"
                        where = {"ad": pa[0], "an": pa[1], "bd": pb[0], "bn": pb[1]}
                        ip.emit("exchange", "fsio.exchange", shown, ax=na, bx=nb, **where)
                    elif swapped:
                        ip.untracked.append(f"exchange {a} {b}")
                    return swapped

            return call

        def copyfile(orig: Any) -> Any:
            def call(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
                full = ip.resolve(dst)
                if not ip.under(full):
                    return orig(src, dst, *args, **kwargs)
                assert full is not None
                with ip.rlock:
                    result = orig(src, dst, *args, **kwargs)  # its open() of dst is logged
                    ip.new_content(ip.node(os.lstat(full), full), ip.read(full), "shutil.copyfile", full)
                    return result

            return call

        def open_(orig: Any) -> Any:
            def call(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
                writing = isinstance(mode, str) and any(c in mode for c in "wax+")
                path = ip.resolve(file)
                if not (writing and ip.under(path)):
                    return orig(file, mode, *args, **kwargs)
                assert path is not None
                with ip.rlock:
                    new = not isinstance(file, int) and not os.path.lexists(path)
                    f = orig(file, mode, *args, **kwargs)
                    proxy = RecordedFile(f, path, ip)
                    at = None if isinstance(file, int) else ip.where(path)
                    if new and at is not None:
                        ip.created(at, "open")
                    elif "w" in mode:
                        ip.changed(proxy.fd, "open", path)
                    return proxy

            return call

        patch(os, "open", os_open)
        patch(os, "close", os_close)
        for name in ("write", "pwrite", "ftruncate"):
            patch(os, name, by_fd(name, self.changed))
        for name in ("fsync", "fdatasync"):
            patch(os, name, by_fd(name, self.synced))
        patch(os, "truncate", truncate)
        for name in ("unlink", "remove", "rmdir"):
            patch(os, name, removal(name))
        for name in ("mkdir", "symlink"):  # os.makedirs calls os.mkdir
            patch(os, name, creation(name))
        for name in ("rename", "replace", "link"):
            patch(os, name, moving(name))
        patch(shutil, "copyfile", copyfile)  # shutil.rmtree and copyfileobj make the calls above
        patch(fsio, "exchange", exchange)
        patch(builtins, "open", open_)
        patch(io, "open", open_)


def tree_of(path: str, store: Callable[[bytes], str]) -> dict[str, list[Any]]:
    """``{relative path: ["d"] | ["f", blob] | ["l", target]}`` of the tree at ``path``."""
    out: dict[str, list[Any]] = {}

    def visit(full: str, rel: str) -> None:
        for name in sorted(os.listdir(full)):
            child, crel = os.path.join(full, name), f"{rel}/{name}" if rel else name
            st = os.lstat(child)
            if stat.S_ISDIR(st.st_mode):
                out[crel] = ["d"]
                visit(child, crel)
            elif stat.S_ISLNK(st.st_mode):
                out[crel] = ["l", os.readlink(child)]
            else:
                with open(child, "rb") as f:
                    out[crel] = ["f", store(f.read())]

    visit(path, "")
    return out


@contextlib.contextmanager
def recorded(data: str) -> Iterator[Recorder]:
    """Record, in this process, what the block changes under the directory ``data`` (blobs go
    to the sibling ``data.record``); ``recorder.recording()`` is the log."""
    prefix = os.path.realpath(data)
    recorder = Recorder(prefix, prefix + ".record")
    recorder.start()
    recorder.install()
    try:
        yield recorder
    finally:
        recorder.uninstall()


def record(op: faults.Operation, data: str) -> None:
    """Mode ``record`` of ``faults.child_main`` (after ``op.setup``): run ``op`` once, logged
    to ``<data>/../record/log.json``."""
    faults.say("record-start")
    os.sync()
    recorder = Recorder(os.path.realpath(data), os.path.join(os.path.dirname(data), "record"))
    recorder.start()
    recorder.install()
    say = faults.say
    faults.say = recorder.marker(say)
    try:
        op.run(data)
    finally:
        faults.say = say
        recorder.uninstall()
    recorder.finish()
    faults.say("recorded", len(recorder.events))


# -- the model (parent side) -----------------------------------------------------------------------
Entry = tuple[Any, ...]
"""An image's entry: ``("d",)``, ``("f", blob, node)`` or ``("l", target)``."""
Image = dict[str, Entry]
"""``{path relative to the directory under test: entry}``, parents before children."""


@dataclasses.dataclass(frozen=True)
class Choice:
    """One random outcome of a power cut: which un-synced entry changes are kept (``keep``, by
    change index) and which content each un-synced file holds (``pick``: ``(change that wrote
    it, blob)``, change -1 for its durable content)."""

    keep: dict[int, bool]
    pick: dict[int, tuple[int, str]]


class State:
    """What the disk may hold after the first changes of a log (see the module docstring)."""

    def __init__(self, initial: dict[str, Any]) -> None:
        self.root = int(initial["root"])
        self.kind: dict[int, str] = {}
        self.entries: dict[int, dict[str, int]] = {}  # current
        self.durable: dict[int, dict[str, int]] = {}  # as of the directory's last fsync
        self.pending: dict[int, list[tuple[int, str, int | None]]] = {}  # changes since then
        self.data: dict[int, str] = {}  # current content
        self.synced: dict[int, str] = {}  # durable content
        self.writes: dict[int, list[tuple[int, str]]] = {}  # (change, content) since the last fsync
        self.target: dict[int, str] = {}
        for key, node in initial["nodes"].items():
            n = int(key)
            self.kind[n] = node["k"]
            if node["k"] == "d":
                self.entries[n] = {name: int(c) for name, c in node["e"].items()}
                self.durable[n] = dict(self.entries[n])
                self.pending[n] = []
            elif node["k"] == "f":
                self.data[n] = self.synced[n] = node["b"]
                self.writes[n] = []
            else:
                self.target[n] = node["t"]

    # -- replay -------------------------------------------------------------------------------------
    def enter(self, change: int, directory: int, name: str, node: int | None) -> None:
        if node is None:
            self.entries[directory].pop(name, None)
        else:
            self.entries[directory][name] = node
        self.pending[directory].append((change, name, node))

    def apply(self, i: int, ev: dict[str, Any]) -> None:
        """Apply change ``i`` of the log."""
        e = ev["e"]
        if e == "create":
            n, k = ev["x"], ev["k"]
            self.kind[n] = k
            if k == "d":
                self.entries[n], self.durable[n], self.pending[n] = {}, {}, []
            elif k == "f":
                self.data[n] = self.synced[n] = ev.get("b", EMPTY)
                self.writes[n] = []
            else:
                self.target[n] = ev["t"]
            self.enter(i, ev["d"], ev["n"], n)
        elif e == "link":
            self.enter(i, ev["d"], ev["n"], ev["x"])
        elif e == "unlink":
            self.enter(i, ev["d"], ev["n"], None)
        elif e == "rename":
            self.enter(i, ev["sd"], ev["sn"], None)
            self.enter(i, ev["dd"], ev["dn"], ev["x"])
        elif e == "exchange":
            self.enter(i, ev["ad"], ev["an"], ev["ax"])
            self.enter(i, ev["bd"], ev["bn"], ev["bx"])
        elif e == "data":
            self.data[ev["x"]] = ev["b"]
            self.writes[ev["x"]].append((i, ev["b"]))
        elif e == "fsync":
            self.data[ev["x"]] = self.synced[ev["x"]] = ev["b"]
            self.writes[ev["x"]] = []
        elif e == "dsync":
            self.durable[ev["x"]] = dict(self.entries[ev["x"]])
            self.pending[ev["x"]] = []
        else:
            raise ValueError(f"unknown change {e!r}")

    # -- images -------------------------------------------------------------------------------------
    def unsynced_changes(self) -> list[int]:
        """The entry changes not durable in some directory they touch, in log order."""
        return sorted({i for changes in self.pending.values() for i, _, _ in changes})

    def unsynced_files(self) -> list[int]:
        return sorted(f for f, w in self.writes.items() if w)

    def choose(self, rng: random.Random, in_order: bool) -> Choice:
        """A random power-loss outcome. ``in_order=False``: each un-synced entry change kept or
        dropped independently, each un-synced file at its durable content, its current one or
        one a prefix of its writes gave. ``in_order=True``: only outcomes a file system that
        commits metadata in order can give: the changes before a random point are kept, those
        after it dropped, and each un-synced file holds a content it had before that point."""
        changes, files = self.unsynced_changes(), self.unsynced_files()
        if in_order:
            point = rng.choice([*changes, FOREVER])
            keep = {i: i < point for i in changes}
        else:
            keep = {i: rng.random() < 0.5 for i in changes}
            point = FOREVER
        pick = {}
        for f in files:
            states = [(-1, self.synced[f])] + [(i, b) for i, b in self.writes[f] if i < point]
            pick[f] = states[rng.randrange(len(states))]
        return Choice(keep, pick)

    def in_order(self, choice: Choice) -> bool:
        """Whether a file system that commits metadata in order (ext4, XFS) can give ``choice``:
        no change or write it keeps comes after a change it drops."""
        dropped = [i for i, kept in choice.keep.items() if not kept]
        first = min(dropped, default=FOREVER)
        kept = [i for i, k in choice.keep.items() if k] + [i for i, _ in choice.pick.values()]
        return all(i < first for i in kept)

    def image(self, how: str, choice: Choice | None = None) -> Image:
        """The tree in image ``how``: ``synced``, ``names-kept``, ``all-kept``, or ``chosen``
        (``choice``, from :meth:`choose`)."""

        def entries(d: int) -> dict[str, int]:
            if how == "synced":
                return self.durable[d]
            if how in ("names-kept", "all-kept"):
                return self.entries[d]
            assert choice is not None
            out = dict(self.durable[d])
            for i, name, node in self.pending[d]:
                if choice.keep[i]:
                    if node is None:
                        out.pop(name, None)
                    else:
                        out[name] = node
            return out

        def content(f: int) -> str:
            if how in ("synced", "names-kept"):
                return self.synced[f]
            if how == "all-kept":
                return self.data[f]
            assert choice is not None
            return choice.pick[f][1] if f in choice.pick else self.data[f]

        image: Image = {}

        def visit(d: int, rel: str, above: frozenset[int]) -> None:
            for name, node in sorted(entries(d).items()):
                path = f"{rel}/{name}" if rel else name
                kind = self.kind[node]
                if kind == "d":
                    if node in above:  # a loop only a reordering of directory renames makes
                        continue
                    image[path] = ("d",)
                    visit(node, path, above | {node})
                elif kind == "f":
                    image[path] = ("f", content(node), node)
                else:
                    image[path] = ("l", self.target[node])

        visit(self.root, "", frozenset({self.root}))
        return image


def digest(image: Image) -> str:
    """Identifies an image: paths, kinds, contents and which paths are links of one file."""
    first: dict[int, str] = {}
    rows = []
    for path, entry in sorted(image.items()):
        if entry[0] == "f":
            rows.append([path, "f", entry[1], first.setdefault(entry[2], path)])
        else:
            rows.append([path, *entry])
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def paths(image: Image) -> dict[str, list[Any]]:
    """The image as :func:`tree_of` describes a real tree (links of one file not told apart)."""
    return {p: ["f", e[1]] if e[0] == "f" else list(e) for p, e in image.items()}


def materialize(image: Image, root: str, blobs: str) -> None:
    """Make ``image`` a real tree at ``root`` (whatever was there is removed first)."""
    if os.path.lexists(root):
        shutil.rmtree(root)
    os.makedirs(root)
    first: dict[int, str] = {}
    for path in sorted(image, key=lambda p: p.split("/")):
        entry, full = image[path], os.path.join(root, path)
        if entry[0] == "d":
            os.mkdir(full)
        elif entry[0] == "l":
            os.symlink(entry[1], full)
        elif entry[2] in first:
            os.link(first[entry[2]], full)
        else:
            shutil.copyfile(os.path.join(blobs, entry[1]), full)
            first[entry[2]] = full


@dataclasses.dataclass
class Recording:
    """One run's log: its changes, the report lines printed between them, the start and the end.

    Attributes:
        initial: the tree at the start (``{"root": node, "nodes": {node: ...}}``).
        changes: the logged changes in order (a cut at ``c`` keeps the first ``c``).
        markers: ``(c, kind, value)``: a report line printed after the first ``c`` changes.
        before: report lines printed before the recording started (the setup's).
        final: the real tree at the end (:func:`tree_of`), if known.
        blobs: the blob directory.
        data: the directory under test (its images are materialized there).
        untracked: paths of inodes the recorded calls did not create (none if all went well).
    """

    initial: dict[str, Any]
    changes: list[dict[str, Any]]
    markers: list[tuple[int, str, Any]]
    before: list[tuple[str, Any]] = dataclasses.field(default_factory=list)
    final: dict[str, list[Any]] | None = None
    blobs: str = ""
    data: str = ""
    untracked: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def of(cls, initial: dict[str, Any], log: list[dict[str, Any]], **fields: Any) -> Recording:
        """From a log of changes and ``say`` events (as the recorder writes it)."""
        changes, markers = [], []
        for ev in log:
            if ev["e"] == "say":
                markers.append((len(changes), ev["kind"], ev["value"]))
            else:
                changes.append(ev)
        return cls(initial, changes, markers, **fields)

    @classmethod
    def load(cls, data: str, stdout: str) -> Recording:
        """What the child of mode ``record`` wrote for the directory under test ``data``."""
        out = os.path.join(os.path.dirname(data), "record")
        with open(os.path.join(out, "log.json")) as f:
            log = json.load(f)
        lines = faults.parse_lines(stdout)
        start = [k for k, _ in lines].index("record-start")
        return cls.of(
            log["initial"],
            log["events"],
            before=lines[:start],
            final=log["final"],
            blobs=os.path.join(out, "blobs"),
            data=data,
            untracked=log["untracked"],
        )

    @property
    def cuts(self) -> int:
        """The last cut (every change made)."""
        return len(self.changes)

    def lines(self, cut: int) -> list[tuple[str, Any]]:
        """The report lines printed before the cut (what had been acknowledged)."""
        return self.before + [(k, v) for c, k, v in self.markers if c <= cut]

    def label(self, cut: int) -> str:
        def show(ev: dict[str, Any]) -> str:
            return f"{ev['call']}({ev['path']})"

        after = show(self.changes[cut - 1]) if cut > 0 else "the start"
        before = show(self.changes[cut]) if cut < len(self.changes) else "the end"
        return f"cut {cut}/{len(self.changes)} after {after}, before {before}"

    def states(self) -> Iterator[tuple[int, State]]:
        """``(cut, state)`` for every cut in order (a state is valid until the next is yielded)."""
        state = State(self.initial)
        yield 0, state
        for i, ev in enumerate(self.changes):
            state.apply(i, ev)
            yield i + 1, state

    def state(self, cut: int) -> State:
        for c, state in self.states():
            if c == cut:
                return state
        raise IndexError(cut)

    def verify(self) -> None:
        """The whole log replayed gives the real tree at the end: nothing escaped the recorder."""
        assert not self.untracked, f"changes made outside the recorded calls: {self.untracked}"
        got = paths(self.state(self.cuts).image("all-kept"))
        if self.final is not None and got != self.final:
            differ = sorted(p for p in set(got) | set(self.final) if got.get(p) != self.final.get(p))
            raise AssertionError(f"the replayed log differs from the real tree at {differ[:10]}")

    def interesting(self) -> list[int]:
        """Cuts where a missing fsync shows: right before and after each sync, rename and
        exchange, and right after each report line."""
        cuts = {c for c, _, _ in self.markers}
        for i, ev in enumerate(self.changes):
            if ev["e"] in ("fsync", "dsync", "rename", "exchange"):
                cuts |= {i, i + 1}
        return sorted(c for c in cuts if 0 <= c <= self.cuts)

    def acknowledged(self) -> list[int]:
        """Cuts right after the report lines that acknowledge something (``ack``, ``done``,
        ``closed``): there, the acknowledged data must be durable."""
        return sorted({c for c, kind, _ in self.markers if kind in ("ack", *DONE)})


@dataclasses.dataclass
class Crash:
    """One image of a cut: its name, the tree, and whether a file system that commits
    metadata in order can give it (``in_order``; else POSIX allows it, but only a file system
    that reorders metadata, or one without a journal, would)."""

    name: str
    image: Image
    in_order: bool = True


def crashes(state: State, op: str, cut: int, samples: int, ordered: int = 0, seed: int = SEED) -> list[Crash]:
    """The images of a state: the three fixed ones, ``ordered`` random ones a file system that
    commits metadata in order can give, then ``samples`` random ones of the POSIX model. The
    random generator of each is seeded by ``(seed, op, cut, name)``."""
    out = [Crash(how, state.image(how)) for how in IMAGES]
    for kind, count in (("ordered", ordered), ("random", samples)):
        for i in range(count):
            choice = state.choose(random.Random(f"{seed}:{op}:{cut}:{kind}-{i}"), in_order=kind == "ordered")
            out.append(Crash(f"{kind}-{i}", state.image("chosen", choice), state.in_order(choice)))
    return out


# -- checking (parent side) ------------------------------------------------------------------------
@dataclasses.dataclass
class Outcome(faults.Outcome):
    """How one image fared; ``in_order`` as its :class:`Crash`."""

    in_order: bool = True


class PowerLoss:
    """Records operations once and checks their crash images (see the module docstring).

    Attributes:
        images: images built so far; ``checked``: those checked (distinct per operation in
            their tree and the acknowledgements given before their cut).
    """

    def __init__(self, server: faults.Server, workdir: Path, seed: int = SEED) -> None:
        self.server = server
        self.workdir = workdir
        self.seed = seed
        self.recorded: dict[str, Recording] = {}
        self.seen: dict[str, set[str]] = {}
        self.cases = 0
        self.images = 0
        self.checked = 0

    def recording(self, op: str) -> Recording:
        """``op`` run once under the recorder (cached), its log checked against the real tree."""
        if op not in self.recorded:
            self.cases += 1
            data = self.workdir / f"{self.cases:04d}-{op}" / "data"
            data.parent.mkdir(parents=True)
            run = self.server.run(op, "run", data, "record")
            if run.code != 0 or not faults.values(run.lines, "recorded"):
                raise AssertionError(f"{op}: recording failed (exit {run.code}):\n{run.tail()}")
            rec = Recording.load(str(data), run.stdout)
            rec.verify()
            self.recorded[op] = rec
        return self.recorded[op]

    def spread(self, op: str, count: int) -> list[int]:
        """``count`` cuts of ``op`` where a missing fsync shows: the end (every acknowledgement
        given), right after the first acknowledgement, then the middle one of the cuts around
        syncs and renames (:meth:`Recording.interesting`)."""
        rec = self.recording(op)
        chosen = [rec.cuts]
        acks = [c for c in rec.acknowledged() if c != rec.cuts]
        if acks and len(chosen) < count:
            chosen.append(acks[0])
        rest = [c for c in rec.interesting() if c not in chosen]
        while rest and len(chosen) < count:
            chosen.append(rest[len(rest) // 2])
            rest = [c for c in rest if c not in chosen]
        return sorted(chosen)

    def check(
        self, op: str, cut: int, samples: int = 0, ordered: int = 0, again: bool = True
    ) -> list[Outcome]:
        """Check the images of ``op`` cut at ``cut`` not checked before (see :func:`crashes`)."""
        rec = self.recording(op)
        return self.check_state(op, rec, cut, rec.state(cut), samples, ordered, again)

    def sweep(self, op: str, samples: int, ordered: int, again: bool = True) -> list[Outcome]:
        """Every cut of ``op``, each with every image."""
        rec = self.recording(op)
        out: list[Outcome] = []
        for cut, state in rec.states():
            out += self.check_state(op, rec, cut, state, samples, ordered, again)
        return out

    def check_state(
        self, op: str, rec: Recording, cut: int, state: State, samples: int, ordered: int, again: bool
    ) -> list[Outcome]:
        lines = rec.lines(cut)
        acks = hashlib.sha256(json.dumps(lines).encode()).hexdigest()
        seen = self.seen.setdefault(op, set())
        out = []
        for crash in crashes(state, op, cut, samples, ordered, self.seed):
            self.images += 1
            key = f"{digest(crash.image)}:{acks}:{crash.in_order}"
            if key in seen:
                continue
            seen.add(key)
            self.checked += 1
            out.append(self.judge(op, rec, cut, crash, lines, again))
        return out

    def judge(
        self, op_name: str, rec: Recording, cut: int, crash: Crash, lines: list[Any], again: bool
    ) -> Outcome:
        """Materialize the image and run the invariant checks; the failure (if any) names the
        operation, the cut, the image and what it holds."""
        op = faults.OPERATIONS[op_name]
        label = f"{op_name}: power lost at {rec.label(cut)}, image {crash.name}"
        data = rec.data
        try:
            materialize(crash.image, data, rec.blobs)
            before = op.after_kill(data, lines)
            if any(kind in DONE for kind, _ in lines):  # the operation said it completed
                op.after_fail(data, lines)
            if again:
                run = self.server.run(op_name, "again", Path(data))
                assert run.code == 0 and faults.values(run.lines, "again-done"), (
                    f"running the operation again after the power cut failed (exit {run.code}):\n{run.tail()}"
                )
                op.after_retry(data, lines, before)
        except AssertionError as exc:
            return Outcome(label, f"{label}: {exc}{listing(crash.image)}", crash.in_order)
        except Exception as exc:  # noqa: BLE001 - a library error while checking is a failed invariant
            detail = "".join(traceback.format_exception(exc))[-3000:]
            failure = f"{label}: {type(exc).__name__}: {exc}\n{detail}{listing(crash.image)}"
            return Outcome(label, failure, crash.in_order)
        return Outcome(label, None, crash.in_order)


def listing(image: Image) -> str:
    """The image's tree for a failure message (files with the first digits of their SHA-256)."""
    rows = [
        f"  {p}/" if e[0] == "d" else f"  {p} -> {e[1]}" if e[0] == "l" else f"  {p}  [{e[1][:8]}]"
        for p, e in sorted(image.items())
    ]
    shown = rows[:80] + ([f"  ... {len(rows) - 80} more"] if len(rows) > 80 else [])
    return "\nthe image:\n" + "\n".join(shown)
