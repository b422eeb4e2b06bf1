"""Smoke test of the benchmark suite (benchmarks/run.py) at --quick sizes.

It checks that every scenario run produces its tables with one row per contender; it makes
no assertion about timings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import run  # noqa: E402
from benchmarks.scenarios import build_scenarios  # noqa: E402

ALLOWED = {"ok", "not installed", "unsupported"}


def _run(tmp_path, capsys, *extra):
    out = tmp_path / "results.json"
    argv = [
        "--quick",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--json",
        str(out),
        "--tmp-dir",
        str(tmp_path / "work"),
        "--cache-dir",
        str(tmp_path / "cache"),
        *extra,
    ]
    code = run.main(argv)
    return code, capsys.readouterr().out, json.loads(out.read_text())


def _check_tables(scenario, text, data, allowed=ALLOWED):
    case = build_scenarios(quick=True)[scenario].cases[0]
    for table in case.tables():
        assert f"### {table}" in text
        rows = [r for r in data["rows"] if r["table"] == table]
        assert [r["contender"] for r in rows] == list(case.contenders)
        for r in rows:
            assert r["status"] in allowed, r
            if r["status"] == "ok":
                assert r["median_s"] is not None and r["runs"] >= 1
    return case


def test_state_scenario_runs_every_contender_in_a_child(tmp_path, capsys):
    code, text, data = _run(tmp_path, capsys, "--scenario", "state")
    assert code == 0
    _check_tables("state", text, data)
    by_name = {r["contender"]: r for r in data["rows"]}
    for name in ("limit", "ours", "rlinf_reference"):
        assert by_name[name]["status"] == "ok"
    assert by_name["ours"]["cached_bytes"] > 0
    assert by_name["limit"]["ratio"] == 1.0
    assert data["machine"]["threads"] == 1


def test_disk_scenario_reports_warm_and_cold_rows(tmp_path, capsys):
    code, text, data = _run(tmp_path, capsys, "--scenario", "disk_state", "--inline", "--markdown")
    assert code == 0
    _check_tables("disk_state", text, data, ALLOWED | {"cold: unavailable"})
    assert "| contender |" in text  # markdown tables were printed too
    assert {r["contender"] for r in data["rows"] if r["status"] == "ok"} >= {"limit", "ours[pt]"}
