"""Throwaway virtual environments holding the real RLinf from PyPI, for ``test_rlinf_real*.py``.

Two kinds of environment (both built with ``python -m venv --without-pip`` and filled by this
interpreter's pip, ``pip --python VENV/bin/python install -c constraints.txt --no-deps ...``):

* ``parent="site"``: a ``.pth`` file in the venv's site-packages runs ``site.addsitedir(...)`` on
  this interpreter's site-packages, so the venv sees torch, numpy, omegaconf, Ray *and* the
  ``.pth`` files there: this library's editable install and its import hook are active. The venv's
  own site-packages (with RLinf) comes first on ``sys.path``.
* ``parent="path"``: the same directories as plain path lines, so their ``.pth`` files are *not*
  processed: neither this library nor its hook is visible until a wheel of it is installed into
  the venv (the coexistence test).

Code runs in a venv through :meth:`Venv.run` / :meth:`Venv.result`: a fresh interpreter whose
working directory is a temporary directory, never the checkout (its ``rlinf/`` folder would then
shadow RLinf), with ``PYTHONPATH`` and the switch variable removed from the environment unless
asked for. This ``tests/`` directory is *appended* to ``sys.path`` there so the subprocess can use
:func:`coded_fields` (it holds no ``rlinf``).

Nothing of RLinf's code is copied here: RLinf comes from PyPI, version :data:`RLINF_VERSION`.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import uuid
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
CONSTRAINTS = REPO / "constraints.txt"
RLINF_VERSION = "0.3.0"
RLINF_REQUIREMENTS = (f"rlinf=={RLINF_VERSION}", "sortedcontainers")  # priority_store needs the latter
SWITCH = "RLINF_REPLAY_BUFFER"
SWITCH_ON = "rlinf_replay_buffer"
RESULT = "@@RESULT@@ "
POISON = -7.0  # the value of the extra rows of RLinf's layout (as in conftest.py)

#: environment variables never passed on to a venv's interpreter
_DROPPED = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "RAY_ADDRESS", SWITCH)

_PRELUDE = f"""\
import json as _json, sys as _sys
_sys.path.append({str(TESTS)!r})
def emit(obj):
    print({RESULT!r} + _json.dumps(obj), flush=True)
"""


def parent_site_dirs() -> list[str]:
    """The site-packages directories this interpreter imports from (torch, this library, ...)."""
    out: list[str] = []
    for entry in sys.path:
        if os.path.basename(entry) in ("site-packages", "dist-packages") and os.path.isdir(entry):
            if entry not in out:
                out.append(entry)
    return out


def clean_env(switch: bool = False, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without what would leak into a venv's interpreter; the switch
    variable is set only if ``switch``."""
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED}
    env.update(
        PYTHONDONTWRITEBYTECODE="1",  # leave RLinf's installed files exactly as pip wrote them
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_ROOT_USER_ACTION="ignore",
        PIP_NO_INPUT="1",
        RAY_USAGE_STATS_ENABLED="0",
    )
    if switch:
        env[SWITCH] = SWITCH_ON
    env.update(extra or {})
    return env


def run_checked(args: list[str], *, cwd: Path, env: Mapping[str, str], timeout: float) -> str:
    """Run a command; fail with its output unless it succeeds. Returns stdout."""
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"command failed ({proc.returncode}): {' '.join(map(str, args))}\n"
            f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-10000:]}"
        )
    return proc.stdout


def pip(*args: str | Path, python: Path, cwd: Path, timeout: float = 600) -> str:
    """This interpreter's pip acting on the environment of ``python`` (``pip --python``)."""
    return run_checked(
        [sys.executable, "-m", "pip", "--python", str(python), *map(str, args)],
        cwd=cwd,
        env=clean_env(),
        timeout=timeout,
    )


@dataclass
class Venv:
    """A throwaway virtual environment and a scratch working directory for its interpreters."""

    root: Path
    python: Path
    site: Path
    workdir: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    def run(
        self,
        code: str,
        *,
        switch: bool = False,
        env: Mapping[str, str] | None = None,
        timeout: float = 300,
        python: Path | None = None,
    ) -> str:
        """Run ``code`` (dedented, after a prelude defining ``emit``) in a fresh interpreter of
        this venv; fail with its output unless it exits 0. Returns stdout."""
        source = _PRELUDE + textwrap.dedent(code)
        return run_checked(
            [str(python or self.python), "-c", source],
            cwd=self.workdir,
            env=clean_env(switch, {**self.extra_env, **(env or {})}),
            timeout=timeout,
        )

    def start(self, code: str, *, switch: bool = False, env: Mapping[str, str] | None = None):
        """:meth:`run` without waiting: returns the ``Popen`` (see :func:`finish`)."""
        return subprocess.Popen(
            [str(self.python), "-c", _PRELUDE + textwrap.dedent(code)],
            cwd=self.workdir,
            env=clean_env(switch, {**self.extra_env, **(env or {})}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def result(self, code: str, **kwargs: Any) -> Any:
        """:meth:`run`, returning what the code passed to ``emit(...)`` (the last call)."""
        return parse_result(self.run(code, **kwargs))

    def pip(self, *args: str | Path, timeout: float = 600) -> str:
        return pip(*args, python=self.python, cwd=self.workdir, timeout=timeout)

    def record(self, dist: str) -> list[tuple[str, str]]:
        """``(path relative to site-packages, recorded hash)`` of every file a distribution's
        dist-info ``RECORD`` lists."""
        (info,) = self.site.glob(f"{dist.replace('-', '_')}-*.dist-info")
        with open(info / "RECORD", newline="", encoding="utf-8") as f:
            return [(row[0], row[1]) for row in csv.reader(f) if row]


def parse_result(stdout: str) -> Any:
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT)]
    assert lines, f"the code emitted no result; stdout:\n{stdout[-4000:]}"
    return json.loads(lines[-1][len(RESULT) :])


def finish(proc: subprocess.Popen, timeout: float = 300) -> Any:
    """Wait for a :meth:`Venv.start` process; fail with its output unless it exits 0; return
    its result."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout}s\n{out[-4000:]}\n{err[-8000:]}") from None
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n--- stdout\n{out[-4000:]}\n--- stderr\n{err[-10000:]}"
    )
    return parse_result(out)


def make_venv(root: Path, parent: str = "site", requirements: tuple[str, ...] = RLINF_REQUIREMENTS) -> Venv:
    """Create a venv at ``root``, install ``requirements`` into it (``--no-deps``, pinned by
    ``constraints.txt``), then give it this interpreter's packages (``parent``: ``"site"`` or
    ``"path"``, see the module docstring). The install comes first, so pip puts every
    requirement into the venv itself rather than counting a parent's copy as installed."""
    assert parent in ("site", "path"), parent
    root.mkdir(parents=True, exist_ok=True)
    workdir = root / "work"
    workdir.mkdir(exist_ok=True)
    venv = root / "venv"
    run_checked(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=workdir, env=clean_env(), timeout=120
    )
    python = venv / "bin" / "python"
    site = Path(
        run_checked(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            cwd=workdir,
            env=clean_env(),
            timeout=60,
        ).strip()
    )
    # never write into another environment (with -S, for one, a venv reports its base's paths)
    if not site.resolve().is_relative_to(venv.resolve()):
        raise AssertionError(f"the venv's site-packages {site} is not inside {venv}")
    env = Venv(root=venv, python=python, site=site, workdir=workdir)
    if requirements:
        env.pip("install", "-q", "-c", CONSTRAINTS, "--no-deps", *requirements)
    dirs = parent_site_dirs()
    if parent == "site":
        line = "import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs) + "\n"
    else:
        line = "".join(f"{d}\n" for d in dirs)
    (site / "zz_parent_site_packages.pth").write_text(line, encoding="utf-8")
    return env


# -- a session-wide cache: several test modules share one venv and one wheel ---------------------
_CACHE: dict[str, Any] = {}


def shared_rlinf_venv(tmp_path_factory: Any) -> Venv:
    """The session's venv with RLinf 0.3.0 and this library's hook (``parent="site"``), built once
    per pytest process whichever test module asks first."""
    if "venv" not in _CACHE:
        _CACHE["venv"] = make_venv(tmp_path_factory.mktemp("rlinf-venv"), parent="site")
    return _CACHE["venv"]


def shared_wheel(tmp_path_factory: Any) -> Path:
    """A wheel of this checkout (``pip wheel --no-deps --no-build-isolation REPO``), built once."""
    if "wheel" not in _CACHE:
        out = tmp_path_factory.mktemp("our-wheel")
        run_checked(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "-q",
                "--no-deps",
                "--no-build-isolation",
                str(REPO),
                "-w",
                str(out),
            ],
            cwd=out,
            env=clean_env(),
            timeout=600,
        )
        (path,) = out.glob("rlinf_replay_buffer-*.whl")
        _CACHE["wheel"] = path
    return _CACHE["wheel"]


def wheel_files(wheel: Path) -> list[str]:
    return [n for n in zipfile.ZipFile(wheel).namelist() if not n.endswith("/")]


def file_hashes(site: Path, paths: list[str]) -> dict[str, str | None]:
    """sha256 (RECORD's encoding) of each file, ``None`` for a missing one."""
    out: dict[str, str | None] = {}
    for rel in paths:
        path = site / rel
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).digest()
            out[rel] = "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        else:
            out[rel] = None
    return out


# -- coded trajectories for RLinf's own Trajectory class ---------------------------------------
def coded_fields(
    i: int,
    n: int = 4,
    e: int = 2,
    num_envs: int = 2,
    layout: str = "rlinf",
    images: bool = True,
    obs_dim: int = 3,
    logprobs: bool = True,
) -> dict[str, Any]:
    """The fields (RLinf's ``Trajectory`` field names) of a trajectory coded as in conftest.py's
    ``coded_trajectory``: for trajectory ``i``, epoch ``k``, transition ``s`` and env ``b`` the code
    ``c = 1000 * i + 100 * k + s`` is in every element of ``curr_obs["states"]``, ``actions``,
    ``rewards``, ``forward_inputs["action"]`` and ``prev_logprobs``; ``next_obs["states"]`` holds
    ``c + 1``; ``dones``/``truncations`` are true exactly when ``s == n - 1``; ``env_ids`` holds ``b``;
    ``main_images`` hold ``c % 251`` (uint8). ``layout``: ``"rlinf"`` (RLinf's rollout rows: an
    extra done row first and an extra action row last per epoch, holding :data:`POISON`) or
    ``"aligned"`` (``n * e`` rows everywhere, as demonstrations). Build the trajectory with
    ``Trajectory(**coded_fields(...))`` from whichever class; set ``model_weights_id`` after."""
    import torch

    codes = torch.tensor([1000 * i + 100 * k + s for k in range(e) for s in range(n)], dtype=torch.float32)
    T = n * e
    steps = codes[:, None].expand(T, num_envs)
    last = torch.tensor([s == n - 1 for _ in range(e) for s in range(n)])[:, None].expand(T, num_envs)
    env_ids = torch.arange(num_envs, dtype=torch.int64)[None, :].expand(T, num_envs)
    extra = layout == "rlinf"

    def with_extra(x: torch.Tensor, where: str) -> torch.Tensor:
        if not extra:
            return x
        blocks = x.reshape(e, n, *x.shape[1:])
        if x.dtype == torch.bool:
            pad = torch.zeros((e, 1, *x.shape[1:]), dtype=torch.bool)
        else:
            pad = torch.full((e, 1, *x.shape[1:]), POISON).to(x.dtype)
        parts = [pad, blocks] if where == "first" else [blocks, pad]
        return torch.cat(parts, dim=1).reshape(e * (n + 1), *x.shape[1:])

    actions = steps[..., None].expand(T, num_envs, 2).clone()
    curr = {
        "states": steps[..., None].expand(T, num_envs, obs_dim).clone(),
        "env_ids": env_ids[..., None].clone(),
    }
    nxt = {
        "states": (steps + 1)[..., None].expand(T, num_envs, obs_dim).clone(),
        "env_ids": env_ids[..., None].clone(),
    }
    if images:
        img = (
            (steps.to(torch.int64) % 251).to(torch.uint8)[..., None, None, None].expand(T, num_envs, 4, 4, 3)
        )
        curr["main_images"] = img.clone()
        nxt["main_images"] = img.clone()
    out: dict[str, Any] = {
        "max_episode_length": n,
        "actions": with_extra(actions, "last"),
        "intervene_flags": with_extra(torch.zeros(T, num_envs, 2, dtype=torch.bool), "last"),
        "rewards": steps[..., None].clone(),
        "terminations": with_extra(torch.zeros(T, num_envs, 1, dtype=torch.bool), "first"),
        "truncations": with_extra(last[..., None].clone(), "first"),
        "dones": with_extra(last[..., None].clone(), "first"),
        "versions": with_extra(torch.ones(T, num_envs, 1), "last"),
        "curr_obs": curr,
        "next_obs": nxt,
        "forward_inputs": {"action": with_extra(actions.clone(), "last")},
    }
    if logprobs:
        out["prev_logprobs"] = with_extra(steps[..., None].clone(), "last")
    return out


def weights_id(i: int) -> str:
    """A uuid (RLinf's shape of ``model_weights_id``) for trajectory ``i``."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"rlinf-real-test-{i}"))
