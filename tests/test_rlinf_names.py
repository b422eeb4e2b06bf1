"""RLinf's module names without RLinf: the import hook's fallback, the checkout's namespace folder,
the switch's parsing, and what the wheel holds.

Every check that imports ``rlinf.*`` runs in a fresh interpreter whose working directory is not
the checkout (so its ``rlinf/`` folder is not on ``sys.path``), unless the check is about the
checkout. The tests against an installed RLinf are in ``test_rlinf_real.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from rlinf_replay_buffer.rlinf_compat import hook

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str, cwd: Path, env_extra: dict[str, str] | None = None) -> str:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", hook.ENV)}
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


SERVED_NAMES = """
import importlib, json, rlinf_replay_buffer as ours
from rlinf_replay_buffer.rlinf_compat import hook
out = {}
for name in [*hook.MODULES, *hook.FALLBACK_ONLY]:
    if name.endswith("ray_replay_buffer"):
        continue  # needs Ray's import; covered by the Ray tests
    module = importlib.import_module(name)
    out[name] = sorted(module.__all__)
    for attr in module.__all__:
        value = getattr(module, attr)
        if hasattr(ours, attr):
            assert value is getattr(ours, attr), (name, attr)
root = importlib.import_module("rlinf")
print(json.dumps({"names": out, "status": hook.status(), "file": getattr(root, "__file__", None)}))
"""


def test_rlinf_names_are_served_from_this_library_where_rlinf_is_absent(tmp_path):
    result = json.loads(run_python(SERVED_NAMES, tmp_path))
    assert result["file"] is None  # a package made by the hook, not a folder on disk
    assert set(result["status"].values()) == {"fallback"}
    names = result["names"]
    assert "TrajectoryReplayBuffer" in names["rlinf.data.replay_buffer"]
    assert "main" in names["rlinf.data.storage.replay.buffer"]
    assert set(names["rlinf.data.storage.replay"]) == {
        "PreloadReplayBufferDataset",
        "PriorityStore",
        "ReplayBufferDataset",
        "TrajectoryCache",
        "TrajectoryReplayBuffer",
        "replay_buffer_collate_fn",
    }
    assert names["rlinf.data.schema.embodied_types"] == ["Trajectory"]


def test_the_fallback_serves_only_the_names_it_knows(tmp_path):
    code = (
        "import rlinf.data\n"
        "try:\n"
        "    import rlinf.data.tokenizers\n"
        "except ModuleNotFoundError as exc:\n"
        "    print('missing', exc.name)\n"
    )
    assert run_python(code, tmp_path).split() == ["missing", "rlinf.data.tokenizers"]


def test_the_fallback_never_grafts_into_another_rlinf_package(tmp_path):
    package = tmp_path / "site" / "rlinf"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("MARK = 'theirs'\n")
    (package / "data" / "__init__.py").write_text("")
    code = (
        "import rlinf\n"
        "assert rlinf.MARK == 'theirs'\n"
        "for name in ('rlinf.data.replay_buffer', 'rlinf.data.storage.replay'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ModuleNotFoundError:\n"
        "        print('absent', name)\n"
    )
    out = run_python(code, tmp_path, {"PYTHONPATH": str(tmp_path / "site")})
    assert out.split("\n")[:2] == ["absent rlinf.data.replay_buffer", "absent rlinf.data.storage.replay"]


def test_a_checkout_serves_the_names_from_its_namespace_folder():
    code = (
        "import json, rlinf_replay_buffer as ours\n"
        "import rlinf.data.replay_buffer as a, rlinf.data.storage.replay.buffer as b\n"
        "assert a.TrajectoryReplayBuffer is b.TrajectoryReplayBuffer is ours.TrajectoryReplayBuffer\n"
        "print(json.dumps([a.__file__, b.__file__]))"
    )
    files = json.loads(run_python(code, REPO))
    assert files == [
        str(REPO / "rlinf" / "data" / "replay_buffer.py"),
        str(REPO / "rlinf" / "data" / "storage" / "replay" / "buffer.py"),
    ]
    assert not (REPO / "rlinf" / "__init__.py").exists()  # an installed RLinf takes precedence


@pytest.mark.parametrize("script", ["rlinf/data/replay_buffer.py", "rlinf/data/storage/replay/buffer.py"])
def test_the_buffer_scripts_of_both_layouts_run_from_a_checkout(script, tmp_path):
    from conftest import FIXTURE

    proc = subprocess.run(
        [sys.executable, script, "--load-path", str(FIXTURE), "--num-chunks", "8"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "curr_obs.states" in proc.stdout and "shape=[8, 3]" in proc.stdout


def test_every_interpreter_of_the_environment_starts_with_the_hook(tmp_path):
    out = run_python("import sys; print([type(f).__name__ for f in sys.meta_path])", tmp_path)
    assert "FallbackFinder" in out and "SwitchFinder" not in out
    out = run_python(
        "import sys; print([type(f).__name__ for f in sys.meta_path])", tmp_path, {hook.ENV: hook.ON}
    )
    assert out.index("SwitchFinder") < out.index("FallbackFinder")


def test_starting_an_interpreter_imports_no_torch(tmp_path):
    assert run_python("import sys; print('torch' in sys.modules)", tmp_path).strip() == "False"


@pytest.mark.parametrize("value", ["rlinf_replay_buffer", "1", "TRUE", " on ", "yes"])
def test_the_switch_turns_on_with_its_value(value, capsys):
    assert hook.switch_value({hook.ENV: value}) is True
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("value", [None, "", "rlinf", "0", "false", "off", "no"])
def test_the_switch_is_off_by_default_and_with_off_values(value, capsys):
    environ = {} if value is None else {hook.ENV: value}
    assert hook.switch_value(environ) is False
    assert capsys.readouterr().err == ""


def test_an_unknown_switch_value_is_reported_and_leaves_the_switch_off(capsys):
    assert hook.switch_value({hook.ENV: "rlinf-replay-bufer"}) is False
    err = capsys.readouterr().err
    assert "RLINF_REPLAY_BUFFER='rlinf-replay-bufer'" in err and "rlinf_replay_buffer" in err


def test_every_switched_module_names_a_module_of_ours_that_defines_its_replacements():
    import importlib

    for name, (home, replaced) in hook.MODULES.items():
        module = importlib.import_module(home)
        missing = [n for n in replaced if not hasattr(module, n)]
        assert not missing, (name, missing)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    import rlinf_env

    return rlinf_env.shared_wheel(tmp_path_factory)


def test_the_wheel_holds_our_package_the_start_up_file_and_nothing_under_rlinf(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert "rlinf_replay_buffer.pth" in names
    assert "rlinf_replay_buffer/rlinf_compat/hook.py" in names
    assert not any(n.startswith(("rlinf/", "toolkits/", "tests/")) for n in names)
    assert tops <= {"rlinf_replay_buffer", "rlinf_replay_buffer.pth"} | {
        t for t in tops if t.endswith(".dist-info")
    }
