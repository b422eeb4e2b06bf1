"""Every page of the documentation, run as a reader runs it (the tutorial and the migration page
have their own tests), and the checks that keep the pages true to the code.

Each page in :data:`PAGES` runs with :mod:`doc_runner` (read its docstring): its ```python blocks
in one Python session, its ```bash blocks (except installation) as ``bash -euo pipefail``
scripts at their places, in its own fresh temporary directory. ``python`` and ``rlinf-buffer``
are this checkout's, served by one zygote for the whole module.

**Fixtures.** No page needs data made for it: each starts from an empty working directory that
holds only the links ``rlinf`` and ``toolkits`` into the checkout (the checkout's root, where
README.md's commands are typed), and its examples make what the later ones read. Pages whose
blocks are only output, diagrams or formats (``text``, ``json``, ``yaml``) have nothing to run;
they are listed so that a command added to them later runs too.

| page | what runs |
|---|---|
| README.md | the example (a checkpoint in ``./ckpt``), then every command-line form on it |
| docs/guide.md | every call of the guide, on trajectories its "Adding" section makes |
| docs/distributed.md | the sharded buffer on a local Ray cluster (``num_cpus=2``, 2 shards) |
| the other pages of docs/ | their shell and Python blocks, if any |

Run elsewhere: docs/tutorial.md (and its Chinese version) by tests/test_docs_snippets.py,
docs/migration.md beside the real RLinf by tests/test_migration_doc.py.

Also checked here:
* every Markdown page of README.md and docs/ is run by one of these tests;
* a Chinese page (docs/zh/) has the code blocks of its English page, byte for byte, with the
  same skip marks;
* skip marks carry a reason and their number per page is the one :data:`SKIPS` allows;
* the benchmark commands the pages show (skipped: they run for minutes) are accepted by the
  suite's own command line;
* the modules, classes and attributes that README.md's "Layout of the code" and the architecture
  pages name exist.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import shlex
import sys

import pytest
from doc_runner import REPO, Block, Commands, code_blocks, commands, docs_env, relative, run_page

#: the pages this module runs
PAGES = [
    "README.md",
    "docs/guide.md",
    "docs/format.md",
    "docs/durability.md",
    "docs/distributed.md",
    "docs/benchmarks.md",
    "docs/architecture.md",
    "docs/cli.md",
]
#: pages run by another test
ELSEWHERE = {
    "docs/tutorial.md": "tests/test_docs_snippets.py",
    "docs/migration.md": "tests/test_migration_doc.py",
}
#: skip marks each page may have (any other page: none); a new one needs a reason and a change here
SKIPS = {
    "README.md": 2,  # the install-and-test scripts; the benchmark script (installs TorchRL, runs ~25 min)
    "docs/benchmarks.md": 3,  # benchmark runs of minutes (tests/test_benchmarks_smoke.py runs --quick)
    "docs/distributed.md": 2,  # `ray start` on several nodes, and a client of that cluster
    "docs/tutorial.md": 1,  # a CUDA device
}
#: the whole module's budget, in seconds, on a 2-core machine
BUDGET = 90.0

ZH = REPO / "docs" / "zh"


def all_pages() -> list[str]:
    """README.md and every Markdown page under docs/, as the checkout names them."""
    return ["README.md", *sorted(relative(p) for p in (REPO / "docs").rglob("*.md"))]


def english_of(zh_page: str) -> str:
    """``docs/zh/x.md`` -> ``docs/x.md``."""
    return "docs/" + zh_page.removeprefix("docs/zh/")


# -- running the pages ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs-commands")
    commands_ = Commands(root, docs_env())
    yield commands_
    commands_.close()


@pytest.fixture(scope="module")
def timings() -> dict[str, float]:
    return {}


@pytest.mark.parametrize("page", PAGES)
def test_page_runs(page, shell, timings, tmp_path):
    """Every runnable block of the page runs, in order, and the Python session ends cleanly."""
    path = REPO / page
    run = run_page(path, tmp_path, shell, docs_env())
    timings[page] = run.seconds
    failed = run.failure()
    assert failed is None, run.describe(failed)
    assert [s.block for s in run.steps] == [b for b in code_blocks(path) if b.runs]
    problem = run.shutdown_problems()
    assert problem is None, problem
    total = sum(timings.values())
    slowest = f"{page}: {run.seconds:.1f} s, {run.timing()}"
    assert total < BUDGET, f"the pages took {total:.0f} s so far ({slowest})"


# -- what the pages are ------------------------------------------------------------------------
def test_every_page_is_run_somewhere():
    """A new page is run by one of the docs' tests (a Chinese page through its English one)."""
    for page in all_pages():
        if page.startswith("docs/zh/"):
            assert (REPO / english_of(page)).is_file(), f"{page} has no English page {english_of(page)}"
            continue
        assert page in PAGES or page in ELSEWHERE, f"{page} is run by no test: add it to PAGES"
    for page, test in ELSEWHERE.items():
        assert (REPO / test).is_file() and page in (REPO / test).read_text(encoding="utf-8"), (page, test)


@pytest.mark.parametrize("page", [relative(p) for p in sorted(ZH.glob("*.md"))])
def test_chinese_page_has_the_same_code_blocks(page):
    english, chinese = code_blocks(REPO / english_of(page)), code_blocks(REPO / page)
    langs = [b.lang for b in chinese], [b.lang for b in english]
    assert langs[0] == langs[1], f"{page}: the blocks differ in number or order"
    for en, zh in zip(english, chinese, strict=True):
        where = f"{page}:{zh.line} differs from {english_of(page)}:{en.line}"
        assert zh.code == en.code, f"{where}\n{zh.code}\n---\n{en.code}"
        assert zh.skip == en.skip, f"{page}:{zh.line}: skip mark differs"


@pytest.mark.parametrize("page", [p for p in all_pages() if not p.startswith("docs/zh/")])
def test_skip_marks_are_rare_and_explained(page):
    text = (REPO / page).read_text(encoding="utf-8")
    marks = re.findall(r"^<!--\s*skip\b(.*?)-->\s*$", text, flags=re.M)
    assert all(re.match(r":\s*\S", reason) for reason in marks), f"{page}: a skip mark without a reason"
    skipped = [b.line for b in code_blocks(REPO / page) if b.skip]
    assert len(skipped) == len(marks), f"{page}: a skip mark that is not right before a block"
    assert len(skipped) == SKIPS.get(page, 0), f"{page}: skipped blocks at lines {skipped}"


def _blocks_everywhere() -> list[tuple[str, Block]]:
    return [(page, b) for page in all_pages() for b in code_blocks(REPO / page)]


def test_benchmark_commands_are_accepted():
    """The benchmark runs the pages show are skipped (minutes each); their options are checked
    against the suite's own parser instead, so a renamed scenario or flag fails here."""
    sys.path.insert(0, str(REPO))
    try:
        from benchmarks import run as bench
    finally:
        sys.path.remove(str(REPO))
    seen = 0
    for page, block in _blocks_everywhere():
        for command in commands(block.code) if block.lang == "bash" else []:
            words = shlex.split(command)
            for prefix in (["python", "benchmarks/run.py"], ["bash", "scripts/bench.sh"]):
                if words[: len(prefix)] == prefix:
                    seen += 1
                    try:
                        bench.parse_args(words[len(prefix) :])
                    except SystemExit:
                        pytest.fail(f"{page}:{block.line}: benchmarks/run.py refuses `{command}`")
    assert seen >= 4


# -- names the pages give the code ----------------------------------------------------------------
LAYOUT_PAGES = ["README.md", "docs/architecture.md", "docs/zh/architecture.md"]
PACKAGE = REPO / "rlinf_replay_buffer"
NOT_OURS = {"RLock", "DataLoader"}  # threading.RLock, torch.utils.data.DataLoader


#: the part of a page that describes the code (README.md: its last section)
SECTIONS = {"README.md": "## Layout of the code"}


def _inline_code(page: str) -> list[str]:
    """The inline code spans of a page (of its :data:`SECTIONS` part), outside code blocks."""
    text = (REPO / page).read_text(encoding="utf-8")
    if page in SECTIONS:
        text = text.split(SECTIONS[page], 1)[1].split("\n## ", 1)[0]
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.findall(r"`([^`\n]+)`", text)


def _classes() -> dict[str, list[type]]:
    """Every class defined in the package's modules, by name."""
    import rlinf_replay_buffer

    found: dict[str, list[type]] = {}
    for info in pkgutil.walk_packages(rlinf_replay_buffer.__path__, "rlinf_replay_buffer."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and value.__module__ == info.name:
                found.setdefault(name, []).append(value)
    return found


@pytest.mark.parametrize("page", LAYOUT_PAGES)
def test_named_modules_exist(page):
    """Every ``x.py`` and ``folder/`` the page names is a file or folder of the checkout."""
    files = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")}
    for span in _inline_code(page):
        for name in re.findall(r"[\w/]+\.py\b|^[\w]+/$", span):
            if (REPO / name).exists():
                continue
            wanted = name.rstrip("/")
            found = any(f == wanted or f.endswith("/" + wanted) or f.startswith(wanted + "/") for f in files)
            assert found, f"{page} names `{name}`, which is not in the checkout nor in rlinf_replay_buffer/"


@pytest.mark.parametrize("page", LAYOUT_PAGES)
def test_named_classes_and_attributes_exist(page):
    """Every ``Class`` and ``Class.attribute`` the page names is in the package."""
    classes = _classes()
    for span in _inline_code(page):
        m = re.match(r"^([A-Z][A-Z]?[a-z][A-Za-z]*)(?:\.(\w+))?(?:\(.*\))?(?:\[.*)?$", span)
        if m is None or m.group(1) in NOT_OURS:
            continue
        name, attribute = m.groups()
        assert name in classes, f"{page} names the class `{name}`, which the package does not define"
        if attribute is not None:
            found = any(hasattr(c, attribute) for c in classes[name])
            assert found, f"{page}: `{span}`: no {name}.{attribute}"


# -- the file formats the pages show --------------------------------------------------------------
def test_format_examples_have_the_keys_the_library_writes(tmp_path):
    """docs/format.md's ``metadata.json`` and ``trajectory_index.json`` examples have exactly the
    keys of the files a buffer writes (values are examples)."""
    import json

    import torch

    from rlinf_replay_buffer import Trajectory, TrajectoryReplayBuffer

    examples = [json.loads(b.code) for b in code_blocks(REPO / "docs" / "format.md") if b.lang == "json"]
    metadata, index = examples
    T, B = 8, 2
    trajectory = Trajectory(
        max_episode_length=4,
        model_weights_id="3da470c4-34f9-5bdb-9175-29591bcef469",
        model_update_count=1,
        actions=torch.zeros(T, B, 2),
        rewards=torch.zeros(T, B, 1),
        curr_obs={"states": torch.zeros(T, B, 3)},
    )
    with TrajectoryReplayBuffer(auto_save=True, auto_save_path=str(tmp_path / "buffer")) as buffer:
        buffer.add_trajectories([trajectory])
    written_metadata = json.loads((tmp_path / "buffer" / "metadata.json").read_text())
    written_index = json.loads((tmp_path / "buffer" / "trajectory_index.json").read_text())
    assert set(metadata) == set(written_metadata)
    assert set(metadata["fields"]["actions"]) == set(written_metadata["fields"]["actions"])
    assert set(index) == set(written_index)
    assert set(index["trajectory_index"]["0"]) == set(written_index["trajectory_index"]["0"])
