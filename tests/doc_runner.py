"""Runs the code blocks of a Markdown page as a reader runs them (used by the docs' tests).

A page's blocks run in document order, in a fresh working directory:

* every ```python block, in one Python process fed block by block (a shared namespace, as if the
  blocks were pasted into one interpreter session); tracebacks name the line of the Markdown file;
* every ```bash block, as a script of ``bash -euo pipefail``, at its place between the Python
  blocks, so it sees the files they made (``./buffer``, ``./ckpt``, ...) and the blocks after it
  see what it made. It must exit 0 and print nothing on stderr. Installation blocks (any command
  ``pip install ...``) are not run. Blocks of other languages (``text``, ``json``, ``yaml``,
  diagrams) are not code to run.

**Skipping.** A block is not run when the last non-blank line before its opening fence is
``<!-- skip -->`` or ``<!-- skip: reason -->`` (visible in the Markdown source, invisible when
rendered). Use it only for what cannot run on a CPU-only machine without a cluster, or in a
test's time (a CUDA device, several nodes, a benchmark of minutes); the tests count the marks
per page so that they stay rare.

The working directory holds two links into the checkout, ``rlinf`` and ``toolkits`` (what the
tutorial's "Following along" tells readers to make, and what the checkout's root has), so the
seed's script paths work as written. ``python`` and ``rlinf-buffer`` on the commands' ``PATH``
run this checkout's code.

**Speed.** Starting Python and importing torch takes 1.5 to 3 s here, and the pages run dozens
of commands. So by default ``python`` and ``rlinf-buffer`` are small launchers that hand the
command (arguments, working directory, environment, and standard input, output and error as file
descriptors) to a *zygote*: a Python process started once per test module, which has imported
torch and this library and runs nothing else. For each command it forks a child that runs the
script exactly as the interpreter would (``runpy.run_path`` for ``python FILE``,
``runpy.run_module`` for ``python -m``, the console-script entry point for ``rlinf-buffer``) and
exits through the normal interpreter shutdown with the script's status. Any other use of
``python`` runs the real interpreter. Set ``DOCS_SNIPPETS_REAL_PYTHON=1`` to run every command
with the real interpreter instead (slower, no zygote).
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SKIP_MARK = re.compile(r"^<!--\s*skip(?::[^>]*)?\s*-->$")
FENCE = re.compile(r"^```([\w-]*)\s*$")
SHELLS = ("bash", "sh", "shell")
#: a command line that runs one of this project's command-line tools
CLI_COMMAND = re.compile(
    r"^(rlinf-buffer|python -m rlinf_replay_buffer"
    r"|python rlinf/data/replay_buffer\.py|python toolkits/replay_buffer/merge_or_split_replay_buffer\.py)\b"
)
#: a command that installs packages: such blocks are not run
INSTALL = re.compile(r"(^|[\s;&|(])(python -m )?pip3? install\b")
BLOCK_TIMEOUT = 120.0  # seconds, per block


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown page."""

    lang: str
    code: str
    line: int  # line number of the block's first code line in the Markdown file
    skip: bool

    @property
    def runs_cli(self) -> bool:
        """Whether a command of the block runs one of this project's command-line tools."""
        return any(CLI_COMMAND.match(command) for command in commands(self.code))

    @property
    def installs(self) -> bool:
        """Whether the block installs packages (``pip install``)."""
        return any(INSTALL.search(command) for command in commands(self.code))

    @property
    def runs(self) -> bool:
        """Whether the page's runner runs the block: Python, or a shell block that installs
        nothing; never a skipped block."""
        if self.skip:
            return False
        return self.lang == "python" or (self.lang in SHELLS and not self.installs)


def code_blocks(path: Path) -> list[Block]:
    """Every fenced code block of a Markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        start = i + 1
        end = start
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        assert end < len(lines), f"{path}:{i + 1}: code block never closed"
        code = "\n".join(lines[start:end]) + "\n"
        blocks.append(Block(m.group(1), code, start + 1, bool(SKIP_MARK.match(previous))))
        i = end + 1
    return blocks


def commands(script: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", script)
    out = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if line:
            out.append(line)
    return out


def relative(path: Path) -> str:
    """``path`` as the checkout names it (``docs/guide.md``)."""
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


# -- the Python worker ---------------------------------------------------------------------------
WORKER = r"""
import json, os, sys, traceback, types

reply = os.fdopen(int(sys.argv[1]), "w", buffering=1)
main = types.ModuleType("__main__")  # the blocks run in a fresh __main__, as a pasted script does
main.__dict__["__builtins__"] = __builtins__
sys.modules["__main__"] = main
for line in sys.stdin:
    request = json.loads(line)
    try:
        exec(compile(request["source"], request["filename"], "exec"), main.__dict__)
        status = {"ok": True}
    except BaseException:
        status = {"ok": False, "error": traceback.format_exc()}
    sys.stdout.flush()
    sys.stderr.flush()
    reply.write(json.dumps(status) + "\n")
"""


class PythonWorker:
    """One Python process that executes a page's Python blocks in a shared namespace."""

    def __init__(self, cwd: Path, env: dict[str, str], logs: Path, page: Path) -> None:
        self.page = page
        read_fd, write_fd = os.pipe()
        self.stdout_path, self.stderr_path = logs / "python.out", logs / "python.err"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", WORKER, str(write_fd)],
                cwd=cwd,
                env=env,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                pass_fds=(write_fd,),
                text=True,
            )
        os.close(write_fd)
        self.replies = os.fdopen(read_fd, "r")

    def run(self, block: Block) -> dict:
        """Execute one block; ``{"ok": bool, "error": traceback}``."""
        # pad with newlines so that tracebacks name the block's lines in the Markdown file
        source = "\n" * (block.line - 1) + block.code
        request = {"source": source, "filename": str(self.page)}  # tracebacks quote the line
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.replies], [], [], BLOCK_TIMEOUT)
        if not ready:
            self.proc.kill()
            return {"ok": False, "error": f"timed out after {BLOCK_TIMEOUT:g} s"}
        line = self.replies.readline()
        if not line:
            return {"ok": False, "error": f"the Python process died (exit status {self.proc.wait()})"}
        return json.loads(line)

    def finish(self) -> int:
        """End the session as a script ends (normal interpreter shutdown); returns the exit status."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.replies.close()

    def kill(self) -> None:
        """Stop the process if it still runs."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        """What the session printed."""
        return f"stdout:\n{self.stdout_path.read_text()}\nstderr:\n{self.stderr_path.read_text()}"


# -- the command-line zygote ------------------------------------------------------------------
ZYGOTE = r"""
import gc, json, os, runpy, signal, socket, struct, sys

import numpy, torch  # the slow imports, done once
import rlinf_replay_buffer, rlinf_replay_buffer.cli
import rlinf_replay_buffer.tools.info, rlinf_replay_buffer.tools.merge_split_cli
import rlinf_replay_buffer.tools.parquet, rlinf_replay_buffer.tools.verify, rlinf_replay_buffer.tools.view
try:
    import matplotlib.figure, matplotlib.backends.backend_agg, PIL.Image
except ImportError:
    pass
gc.freeze()  # what the imports made is never collected again: a child's shutdown takes 0.2 s, not 0.7


def receive(conn):
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    size = struct.unpack("!I", data[:4])[0]
    data = data[4:]
    while len(data) < size:
        data += conn.recv(1 << 16)
    return json.loads(data), fds


def child(request, fds):
    signal.alarm(int(request["timeout"]))
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    kind, argv = request["kind"], request["argv"]
    if kind == "entry":  # a console script, as pip generates it
        from rlinf_replay_buffer.cli import main
        sys.argv = argv
        sys.exit(main())
    if kind == "module":  # python -m MODULE ARGS
        sys.argv = argv
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
    else:  # python FILE ARGS
        sys.argv = argv
        sys.path[0] = os.path.dirname(os.path.realpath(argv[0]))
        runpy.run_path(argv[0], run_name="__main__")
    sys.exit(0)


server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(sys.argv[1])
server.listen(4)
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    request, fds = receive(conn)
    pid = os.fork()
    if pid == 0:
        server.close()
        conn.close()
        child(request, fds)  # ends with SystemExit: the child leaves through interpreter shutdown
    for fd in fds:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    conn.sendall(struct.pack("!i", os.waitstatus_to_exitcode(status)))
    conn.close()
"""

LAUNCHER = r"""#!{python} -S
import json, os, socket, struct, sys

REAL = {python!r}
name, args = os.path.basename(sys.argv[0]), sys.argv[1:]
if name == "rlinf-buffer":
    kind, argv = "entry", ["rlinf-buffer", *args]
elif args[:1] == ["-m"] and len(args) > 1:
    kind, argv = "module", args[1:]
elif args and args[0].endswith(".py") and os.path.isfile(args[0]):
    kind, argv = "path", args
else:
    os.execv(REAL, [REAL, *args])
request = {{"kind": kind, "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "timeout": {timeout}}}
data = json.dumps(request).encode()
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
conn.connect({socket_path!r})
socket.send_fds(conn, [struct.pack("!I", len(data)) + data], [0, 1, 2])
reply = b""
while len(reply) < 4:
    chunk = conn.recv(4 - len(reply))
    if not chunk:
        sys.exit("the zygote closed the connection")
    reply += chunk
sys.exit(struct.unpack("!i", reply)[0])
"""

#: ``rlinf-buffer`` as pip's console script runs it, for DOCS_SNIPPETS_REAL_PYTHON=1
REAL_RLINF_BUFFER = """#!/bin/sh
exec {python} -c 'import sys; from rlinf_replay_buffer.cli import main
sys.argv[0] = "rlinf-buffer"; sys.exit(main())' "$@"
"""


def docs_env() -> dict[str, str]:
    """The environment the pages run in: this process's, without pytest's variables, with this
    checkout first on ``PYTHONPATH`` and matplotlib drawing off screen."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    env.update(PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1", MPLBACKEND="Agg")
    return env


class Commands:
    """Runs shell blocks with ``python`` and ``rlinf-buffer`` of this checkout (through the
    zygote, which serves every page of a test module: each command names its own working
    directory and environment)."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.zygote: subprocess.Popen | None = None
        self.zygote_log = None
        self.socket_dir: str | None = None
        self._ready = False
        bin_dir = root / "bin"
        bin_dir.mkdir()
        python, rlinf_buffer = bin_dir / "python", bin_dir / "rlinf-buffer"
        if os.environ.get("DOCS_SNIPPETS_REAL_PYTHON"):
            python.symlink_to(sys.executable)
            rlinf_buffer.write_text(REAL_RLINF_BUFFER.format(python=sys.executable))
            self._ready = True
        else:
            # a short path: a Unix socket's path must stay under 108 bytes, pytest's may not
            self.socket_dir = tempfile.mkdtemp(prefix="docs-zygote-")
            socket_path = Path(self.socket_dir) / "sock"
            self.zygote_log = open(root / "zygote.err", "wb")  # noqa: SIM115 - closed in close()
            self.zygote = subprocess.Popen(
                [sys.executable, "-c", ZYGOTE, str(socket_path)],
                cwd=root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self.zygote_log,
                text=True,
            )
            launcher = LAUNCHER.format(
                python=sys.executable, socket_path=str(socket_path), timeout=int(BLOCK_TIMEOUT)
            )
            python.write_text(launcher)
            shutil.copy(python, rlinf_buffer)
        python.chmod(0o755)
        rlinf_buffer.chmod(0o755)
        self.env = {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"}

    def wait_ready(self) -> None:
        """Wait until the zygote has imported what it serves (once)."""
        if not self._ready and self.zygote is not None:
            assert self.zygote.stdout is not None
            line = self.zygote.stdout.readline()
            assert line.strip() == "ready", f"the command zygote did not start (exit {self.zygote.poll()})"
        self._ready = True

    def run(self, block: Block, cwd: Path) -> tuple[bool, str]:
        """Run a block in ``cwd``; ``(ok, details)``: ok when it exits 0 with nothing on stderr."""
        self.wait_ready()
        try:
            proc = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", block.code],
                cwd=cwd,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=BLOCK_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            return False, f"timed out after {BLOCK_TIMEOUT:g} s\nstdout:\n{exc.stdout}\nstderr:\n{exc.stderr}"
        detail = f"exit status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        return proc.returncode == 0 and not proc.stderr.strip(), detail

    def close(self) -> None:
        """Stop the zygote and remove its socket."""
        if self.zygote is not None:
            self.zygote.kill()
            self.zygote.wait()
            if self.zygote.stdout is not None:
                self.zygote.stdout.close()
        if self.zygote_log is not None:
            self.zygote_log.close()
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)


# -- the run -------------------------------------------------------------------------------------
@dataclass
class Step:
    """One block that ran."""

    block: Block
    ok: bool
    detail: str = ""
    seconds: float = 0.0


@dataclass
class PageRun:
    """What running a page gave."""

    page: Path
    steps: list[Step]
    python_status: int | None  # None: the page has no Python block
    python_output: str
    seconds: float

    def failure(self) -> Step | None:
        """The first block that failed (the run stops there)."""
        return next((s for s in self.steps if not s.ok), None)

    def describe(self, step: Step) -> str:
        """A failed step, for an assertion message."""
        return (
            f"{relative(self.page)}:{step.block.line}: {step.block.lang} block failed\n"
            f"--- block ---\n{step.block.code}--- details ---\n{step.detail}"
            f"\n--- Python session ---\n{self.python_output}"
        )

    def timing(self, count: int = 5) -> str:
        """The slowest steps, for a message."""
        slowest = sorted(self.steps, key=lambda s: -s.seconds)[:count]
        return ", ".join(f"line {s.block.line}: {s.seconds:.1f} s" for s in slowest)

    def shutdown_problems(self) -> str | None:
        """What is wrong with the end of the Python session (exit status, a traceback or an
        ignored exception at shutdown), or ``None``."""
        if self.python_status is None:
            return None
        if self.python_status != 0:
            return f"the Python session exited with status {self.python_status}\n{self.python_output}"
        stderr = self.python_output.split("\nstderr:\n", 1)[1]
        for marker in ("Traceback", "Exception ignored"):
            if marker in stderr:
                return f"{marker!r} on the Python session's stderr\n{self.python_output}"
        return None


def run_page(page: Path, root: Path, commands_: Commands, env: dict[str, str]) -> PageRun:
    """Run every block of ``page`` that :attr:`Block.runs`, in order, in ``root/work`` (made
    here, with the links ``rlinf`` and ``toolkits``); stop at the first failure."""
    start = time.perf_counter()
    work, logs = root / "work", root / "logs"
    work.mkdir(parents=True)
    logs.mkdir()
    for name in ("rlinf", "toolkits"):  # "Following along": links to the checkout's scripts
        (work / name).symlink_to(REPO / name, target_is_directory=True)
    blocks = [b for b in code_blocks(page) if b.runs]
    worker = PythonWorker(work, env, logs, page) if any(b.lang == "python" for b in blocks) else None
    steps: list[Step] = []
    status = None
    try:
        for block in blocks:
            began = time.perf_counter()
            if block.lang == "python":
                assert worker is not None
                result = worker.run(block)
                steps.append(Step(block, result["ok"], result.get("error", "")))
            else:
                steps.append(Step(block, *commands_.run(block, work)))
            steps[-1].seconds = time.perf_counter() - began
            if not steps[-1].ok:
                break  # the blocks after it depend on it
        if worker is not None:
            status = worker.finish()
    finally:
        if worker is not None:
            worker.kill()
    output = worker.output() if worker is not None else "(no Python block)"
    return PageRun(page, steps, status, output, time.perf_counter() - start)
