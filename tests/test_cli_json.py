"""``--json`` of every subcommand against the "JSON output" table of ``docs/cli.md``: each key a
subcommand prints is documented for it with the right type, and each documented key is printed
by some run below, so the documentation and the code cannot drift apart."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import REPO, coded_trajectory

from rlinf_replay_buffer import TrajectoryReplayBuffer
from rlinf_replay_buffer.cli import COMMANDS, json_markdown, main

DOC = REPO / "docs" / "cli.md"
ROW = re.compile(r"^\| `([^`]+)` \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$")


def documented() -> dict[str, dict[str, str]]:
    """``{printed by: {key: type}}`` from the table under "## JSON output" of docs/cli.md."""
    text = DOC.read_text(encoding="utf-8")
    assert "\n## JSON output\n" in text, "docs/cli.md has no JSON output section"
    section = text.split("\n## JSON output\n", 1)[1].split("\n## ", 1)[0]
    table: dict[str, dict[str, str]] = {}
    for line in section.splitlines():
        m = ROW.match(line)
        if m is None:
            continue
        key, type_, by = m.group(1), m.group(2).strip(), m.group(3).strip()
        for emitter in by.split(", "):
            assert key not in table.setdefault(emitter, {}), f"{key} documented twice for {emitter}"
            table[emitter][key] = type_
    return table


SCHEMA = documented()
SCALARS = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "output": lambda v: isinstance(v, dict),
}


def matches(value: object, type_: str) -> bool:
    """Whether a JSON value has a documented type (an unknown type fails the test)."""
    if type_.endswith(" or null"):
        return value is None or matches(value, type_.removesuffix(" or null"))
    if type_.startswith("list of "):
        return isinstance(value, list) and all(matches(v, type_.removeprefix("list of ")) for v in value)
    if type_.startswith("[") and type_.endswith("]"):
        parts = type_[1:-1].split(", ")
        return (
            isinstance(value, list)
            and len(value) == len(parts)
            and all(matches(v, t) for v, t in zip(value, parts, strict=True))
        )
    if type_.startswith("object of "):
        return isinstance(value, dict) and all(
            matches(v, type_.removeprefix("object of ")) for v in value.values()
        )
    assert type_ in SCALARS, f"docs/cli.md uses a type the test does not know: {type_!r}"
    return SCALARS[type_](value)


def check(output: dict, emitter: str, seen: set[tuple[str, str]], prefix: str = "") -> None:
    """Check ``output`` (or the object at ``prefix``) against the keys documented for ``emitter``;
    record every ``(emitter, key)`` met in ``seen``."""
    keys = SCHEMA.get(emitter)
    assert keys, f"no JSON keys are documented for {emitter!r}"
    for name, value in output.items():
        key = prefix + name
        assert key in keys, f"{emitter} prints {key!r}, which docs/cli.md does not list for it"
        type_ = keys[key]
        assert matches(value, type_), f"{emitter}: {key} = {value!r} is not {type_}"
        seen.add((emitter, key))
        single = emitter.removesuffix(" (ranks)")
        items = value if isinstance(value, list) else [value]
        if type_.removeprefix("list of ") == "object":
            for item in items:
                check(item, emitter, seen, prefix=f"{key}[].")
        elif type_.removeprefix("list of ") == "output":
            for item in items:
                check(item, single, seen)


# -- directories -----------------------------------------------------------------------------------
def written(path: Path, ids: range, fmt: str = "pt") -> Path:
    buf = TrajectoryReplayBuffer(sample_window_size=0, trajectory_format=fmt)
    buf.add_trajectories([coded_trajectory(i, n=3, e=2, model_update_count=i) for i in ids])
    buf.save_checkpoint(str(path))
    buf.close()
    return path


def run_json(capsys, *argv: str, status: int = 0) -> dict:
    code = main([*argv, "--json", "--quiet"])
    out = capsys.readouterr()
    assert code == status, out.err
    return json.loads(out.out)


def every_output(capsys, tmp: Path) -> list[tuple[str, dict]]:
    """Run every subcommand (and the per-rank forms) with ``--json``: ``(printed by, output)``."""
    buf = written(tmp / "buf", range(4))
    ranks = tmp / "ranks"
    for rank in range(2):
        written(ranks / f"rank_{rank}", range(3), fmt="segment" if rank else "pt")
    same = tmp / "same"
    for rank in range(2):
        written(same / f"rank_{rank}", range(2))
    damaged = written(tmp / "damaged", range(3))
    next(damaged.glob("trajectory_*.pt")).unlink()
    (damaged / "trajectory_99_stray.pt").write_bytes(b"not a trajectory")
    parquet = tmp / "buf.parquet"
    lerobot = tmp / "lerobot"
    lerobot_options = ("--format", "lerobot", "--fps", "10", "--task", "pick")
    return [
        ("info", run_json(capsys, "info", str(buf))),
        ("info", run_json(capsys, "info", str(buf), "--stats")),
        ("info (ranks)", run_json(capsys, "info", str(ranks))),
        ("sample", run_json(capsys, "sample", str(buf), "--num-chunks", "8")),
        ("sample", run_json(capsys, "sample", str(buf), "--num-chunks", "4", "--seq-len", "3", "--pad")),
        (
            "merge",
            run_json(capsys, "merge", "--source-path", str(same), "--save-path", str(tmp / "m"), "--copy"),
        ),
        (
            "split",
            run_json(
                capsys,
                "split",
                "--source-path",
                str(tmp / "m"),
                "--save-path",
                str(tmp / "s"),
                "--split-count",
                "2",
            ),
        ),
        ("verify", run_json(capsys, "verify", str(buf))),
        ("verify", run_json(capsys, "verify", str(damaged), status=1)),
        ("verify", run_json(capsys, "verify", str(damaged), "--repair")),
        ("verify (ranks)", run_json(capsys, "verify", str(ranks))),
        ("view", run_json(capsys, "view", str(buf), "--trajectory", "1", "--out", str(tmp / "t.png"))),
        ("view", run_json(capsys, "view", str(buf), "--sample", "6", "--out", str(tmp / "s.png"))),
        ("view", run_json(capsys, "view", str(buf), "--trajectory", "2", "--video", str(tmp / "t.mp4"))),
        ("export", run_json(capsys, "export", str(buf), "--out", str(lerobot), *lerobot_options)),
        (
            "import",
            run_json(capsys, "import", str(lerobot), "--format", "lerobot", "--save-path", str(tmp / "demo")),
        ),
        ("export", run_json(capsys, "export", str(buf), "--out", str(parquet))),
        ("export", run_json(capsys, "export", str(buf), "--out", str(parquet), "--overwrite")),
        ("import", run_json(capsys, "import", str(parquet), "--save-path", str(tmp / "back"))),
    ]


def test_every_json_output_follows_the_documented_schema(tmp_path, capsys):
    outputs = every_output(capsys, tmp_path)
    assert {emitter.removesuffix(" (ranks)") for emitter, _ in outputs} == set(COMMANDS)
    seen: set[tuple[str, str]] = set()
    for emitter, output in outputs:
        check(output, emitter, seen)
    for emitter, keys in SCHEMA.items():
        missing = sorted(key for key in keys if (emitter, key) not in seen)
        assert not missing, f"docs/cli.md lists {missing} for {emitter}, but no run printed them"


def test_one_name_per_thing(tmp_path, capsys):
    """The counts and paths the subcommands share have the same name and meaning everywhere."""
    outputs = dict(every_output(capsys, tmp_path))
    for emitter in ("info", "sample", "merge", "verify", "export", "import"):
        assert outputs[emitter]["num_trajectories"] > 0 and outputs[emitter]["total_samples"] > 0
    assert outputs["info"]["num_trajectories"] == 4 and outputs["info"]["total_samples"] == 4 * 6 * 2
    assert outputs["sample"]["num_trajectories"] == outputs["sample"]["stats"]["num_trajectories"] == 4
    assert outputs["export"]["total_samples"] == outputs["import"]["total_samples"] == 48
    assert outputs["info"]["path"] == outputs["export"]["path"] == outputs["sample"]["path"]
    assert outputs["import"]["save_path"] == str(tmp_path / "back")
    assert outputs["info (ranks)"]["num_trajectories"] == 6
    assert [r["trajectory_format"] for r in outputs["info (ranks)"]["ranks"]] == ["pt", "segment"]
    repaired = outputs["verify"]  # the last verify run: --repair
    assert repaired["repaired"] and repaired["ok"] and repaired["after_repair"]["ok"]
    assert {p["kind"] for p in repaired["problems"]} >= {"missing"}


def test_the_json_section_of_the_docs_is_generated():
    doc = DOC.read_text(encoding="utf-8")
    assert doc.endswith(json_markdown()), "docs/cli.md is stale: regenerate it (command at its top)"
    for emitter in SCHEMA:
        assert emitter.removesuffix(" (ranks)") in COMMANDS, f"unknown subcommand {emitter!r} in docs/cli.md"


@pytest.mark.parametrize(
    "value, type_, ok",
    [
        (1, "integer", True),
        (True, "integer", False),
        (None, "string or null", True),
        ([1, 2], "[integer, integer] or null", True),
        ([1], "[integer, integer]", False),
        ([["a", 1]], "list of [string, integer]", True),
        ({"a": 1, "b": 2.5}, "object of integer", False),
    ],
)
def test_the_type_checker(value, type_, ok):
    assert matches(value, type_) is ok
