"""The tutorial's examples, run as a reader runs them: docs/tutorial.md, in order, in a fresh directory.

The page runs with :mod:`doc_runner` (read its docstring): every ```python block in one Python
session, every ```bash block except installation as a ``bash -euo pipefail`` script at its place
between them, in a fresh temporary working directory that links ``rlinf`` and ``toolkits`` into
the checkout, as the tutorial's "Following along" tells readers to do; ``python`` and
``rlinf-buffer`` are served by a zygote (``DOCS_SNIPPETS_REAL_PYTHON=1``: the real interpreter).
``<!-- skip: reason -->`` before a block leaves it out; ``test_skip_marks_are_rare`` keeps it
rare.

Also checked: every way of calling the tools is run at least once, and every code block of the
seed tutorial appears in docs/tutorial.md (paths aside). That docs/zh/tutorial.md has the same
code blocks is checked with every other Chinese page by tests/test_all_docs_snippets.py.
"""

from __future__ import annotations

import re

import pytest
from doc_runner import REPO, Commands, PageRun, code_blocks, commands, docs_env, run_page

TUTORIAL = REPO / "docs" / "tutorial.md"
SEED = REPO.parent / "shared" / "seed" / "README.md"


@pytest.fixture(scope="module")
def tutorial_run(tmp_path_factory) -> PageRun:
    root = tmp_path_factory.mktemp("tutorial")
    env = docs_env()
    commands_ = Commands(root, env)
    try:
        return run_page(TUTORIAL, root, commands_, env)
    finally:
        commands_.close()


def test_every_block_runs(tutorial_run):
    failed = tutorial_run.failure()
    assert failed is None, tutorial_run.describe(failed)
    ran = [s.block for s in tutorial_run.steps]
    assert ran == [b for b in code_blocks(TUTORIAL) if b.runs]
    assert any(b.runs_cli for b in ran) and any(b.lang == "python" for b in ran)
    timing = tutorial_run.timing()
    assert tutorial_run.seconds < 60, f"the tutorial took {tutorial_run.seconds:.1f} s (slowest: {timing})"


def test_python_session_ends_cleanly(tutorial_run):
    """The session ends like a script: exit status 0, nothing reported during shutdown."""
    if tutorial_run.failure() is not None:
        pytest.skip("a block failed (see test_every_block_runs)")
    problem = tutorial_run.shutdown_problems()
    assert problem is None, problem


def test_every_cli_form_is_exercised():
    """Each way of calling the tools the tutorial teaches is run at least once."""
    run = [c for b in code_blocks(TUTORIAL) if b.lang == "bash" and not b.skip for c in commands(b.code)]
    for form in (
        "rlinf-buffer info",
        "rlinf-buffer sample",
        "rlinf-buffer merge",
        "rlinf-buffer split",
        "rlinf-buffer verify",
        "rlinf-buffer view",
        "rlinf-buffer export",
        "rlinf-buffer import",
        "python -m rlinf_replay_buffer",
        "python rlinf/data/replay_buffer.py",
        "python toolkits/replay_buffer/merge_or_split_replay_buffer.py",
    ):
        assert any(c.startswith(form) for c in run), f"no bash block of docs/tutorial.md runs `{form}`"


def test_skip_marks_are_rare():
    skipped = [b for b in code_blocks(TUTORIAL) if b.skip]
    assert len(skipped) <= 2, [f"docs/tutorial.md:{b.line}" for b in skipped]


def normalize_paths(code: str) -> str:
    """Paths aside: ``/path/to/NAME`` (the seed's placeholders) and ``./NAME`` become ``PATH``."""
    return re.sub(r"(/path/to/|\./)[\w.-]+", "PATH", code)


def test_seed_blocks_appear_in_the_tutorial():
    if not SEED.is_file():
        pytest.skip(f"the seed tutorial {SEED} is not present")
    text = SEED.read_text(encoding="utf-8")
    seed_blocks = re.findall(r"^```(?:python|bash)\n(.*?)^```$", text, flags=re.M | re.S)
    assert len(seed_blocks) == 8
    ours = [normalize_paths(b.code) for b in code_blocks(TUTORIAL) if not b.skip]
    for block in seed_blocks:
        wanted = normalize_paths(block)
        assert any(wanted in code for code in ours), f"seed block not in docs/tutorial.md:\n{block}"
