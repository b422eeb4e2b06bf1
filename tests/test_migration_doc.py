"""docs/migration.md, run as an RLinf user runs it: every code block, in order, in an environment
that has the real RLinf 0.3.0 from PyPI and nothing of this library until the page installs it.

The environment is a throwaway venv (:func:`rlinf_env.make_venv` with ``parent="path"``: the test
interpreter's packages are visible, its ``.pth`` files, this library's among them, are not). Its
``bin`` comes first on ``PATH``, so ``python``, ``rlinf-buffer`` and ``pip`` (a launcher for this
interpreter's pip acting on the venv) are the venv's. The page's placeholders are replaced, and
nothing else: ``/path/to/rlinf-replay-buffer`` by a wheel of this checkout,
``/path/to/rlinf-buffer`` by a copy of a directory RLinf wrote (the shared fixture), other
``/path/to/...`` by fresh directories. ``bash`` blocks run with ``bash -euo pipefail``;
``export`` lines carry over to the later blocks, as in the reader's shell. ``python`` blocks run in
the venv's interpreter, from the same working directory.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import rlinf_env
from conftest import FIXTURE

DOC = rlinf_env.REPO / "docs" / "migration.md"
FENCE = re.compile(r"^```(\w*)\s*$")
EXPORT = re.compile(r"^export\s+(\w+)=(\S*)")


def blocks(text: str) -> list[tuple[str, str, int]]:
    """``(language, code, line)`` of every fenced block."""
    out, lang, start, lines = [], None, 0, []
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if m and lang is None:
            lang, start, lines = m.group(1), number + 1, []
        elif line.strip() == "```" and lang is not None:
            out.append((lang, "\n".join(lines) + "\n", start))
            lang = None
        elif lang is not None:
            lines.append(line)
    return out


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    """The venv with RLinf, a ``pip`` launcher for it, a working directory and the placeholders."""
    venv = rlinf_env.make_venv(tmp_path_factory.mktemp("migration"), parent="path")
    wheel = rlinf_env.shared_wheel(tmp_path_factory)
    launcher = venv.root / "bin" / "pip"
    launcher.write_text(f'#!/bin/sh\nexec {sys.executable} -m pip --python {venv.python} "$@"\n')
    launcher.chmod(0o755)
    data = tmp_path_factory.mktemp("migration-data")
    shutil.copytree(FIXTURE, data / "rlinf-buffer")
    places = {
        "/path/to/rlinf-replay-buffer": str(wheel),
        "/path/to/rlinf-buffer": str(data / "rlinf-buffer"),
        "/path/to/converted": str(data / "converted"),
    }
    return venv, places


def substitute(code: str, places: dict[str, str]) -> str:
    for placeholder, path in places.items():
        code = code.replace(placeholder, path)
    left = re.findall(r"/path/to/[\w.-]+", code)
    assert not left, f"placeholders without a value in the test: {left}"
    return code


def test_every_block_of_the_migration_page_runs_beside_rlinf(reader):
    venv, places = reader
    env = rlinf_env.clean_env(extra={"PATH": f"{venv.root / 'bin'}:{rlinf_env.os.environ['PATH']}"})
    found = blocks(DOC.read_text(encoding="utf-8"))
    assert [lang for lang, _, _ in found].count("bash") >= 2 and any(lang == "python" for lang, _, _ in found)
    outputs = []
    for lang, code, line in found:
        code = substitute(code, places)
        if lang == "bash":
            args = ["bash", "-euo", "pipefail", "-c", code]
        elif lang == "python":
            args = [str(venv.python), "-c", code]
        else:
            continue
        proc = subprocess.run(args, cwd=venv.workdir, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (
            f"docs/migration.md:{line}: {lang} block failed\n{proc.stdout}\n{proc.stderr}"
        )
        outputs.append(proc.stdout)
        for name, value in (m.groups() for m in map(EXPORT.match, code.splitlines()) if m):
            env[name] = value
    # what the page says the switch prints, and the status it shows
    assert "rlinf_replay_buffer.buffer" in outputs[0]
    assert "'rlinf.data.replay_buffer': 'switched'" in "".join(outputs)
    assert (Path(places["/path/to/converted"]) / "trajectory_index.json").is_file()
