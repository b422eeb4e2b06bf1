"""Smoke test of the benchmark suite (benchmarks/run.py) at --quick sizes.

It checks that every scenario run produces its tables with one row per contender; it makes
no assertion about timings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

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


SAMPLER_SCENARIOS = ("sequences", "prioritized", "freshness", "rate_limited")


def test_sampler_scenarios_report_every_contender(tmp_path, capsys):
    args = [a for name in SAMPLER_SCENARIOS for a in ("--scenario", name)]
    code, text, data = _run(tmp_path, capsys, *args, "--inline")
    assert code == 0
    for name in SAMPLER_SCENARIOS:
        _check_tables(name, text, data)
    rows = data["rows"]
    for r in rows:
        if r["status"] == "ok":
            assert not r["note"].startswith("batch check"), r  # keys, shapes and dtypes as specified
            assert "vs uniform" in r["extra"], r  # every sampler table has the ours[uniform] row
        if r["contender"].startswith(("ours", "limit")):
            assert r["status"] == "ok", r
    by = {(r["table"].split(":")[0], r["contender"]): r for r in rows}
    assert by[("sequences", "ours[uniform]")]["extra"]["vs uniform"] == 1.0
    runs = [r["items"] for r in rows if r["contender"] == "ours[sequences]"]
    assert runs == [16 * 4, 16 * 8]  # the quick sizes: 16 runs of 4, then of 8 steps
    assert "update ms" in by[("prioritized", "ours[prioritized]")]["extra"]
    assert "update ms" not in by[("prioritized", "ours[uniform]")]["extra"]
    limiter = [r for r in rows if r["contender"] == "ours[limiter_only]"]
    assert len(limiter) == 2 and all(r["ratio"] is None and r["items"] is None for r in limiter)


def test_add_scenario_times_a_copy_into_warm_and_into_fresh_rows(tmp_path, capsys):
    cases = ("--case", "latency_state")
    code, text, data = _run(
        tmp_path, capsys, "--scenario", "add", *cases, "--contender", "limit", "--contender", "ours[memory]"
    )
    assert code == 0
    latency = [r for r in data["rows"] if r["table"].startswith("add latency")]
    assert {r["contender"] for r in latency} == {"limit", "limit[ring]", "ours[memory]"}
    assert all(r["status"] == "ok" and r["median_s"] > 0 for r in latency), latency


def test_ray_scenario_compares_the_sharded_buffer_with_the_local_one(tmp_path, capsys):
    """The ray scenario's state case with ``ours[local]`` and ``ours[ray-2]``: every ray child
    starts its own Ray cluster (5-10 s on 2 cores), so ``ours[ray-1]`` (the same client with one
    shard) and the images case (the same procedure on other shapes) are left out, and the
    images case's rows are absent."""
    pytest.importorskip("ray")
    wanted = ["ours[local]", "ours[ray-2]"]
    code, text, data = _run(
        tmp_path,
        capsys,
        "--scenario",
        "ray",
        "--case",
        "state",
        *(a for c in wanted for a in ("--contender", c)),
    )
    assert code == 0
    cases = build_scenarios(quick=True)["ray"].cases
    assert [c.name for c in cases] == ["state", "images"]
    assert not any(r["table"] in cases[1].tables() for r in data["rows"])
    for case in cases[:1]:
        assert case.contenders == ("ours[local]", "ours[ray-1]", "ours[ray-2]")
        *sample_tables, add_table = case.tables()
        assert len(sample_tables) == len(case.batches)
        for table, n in [*zip(sample_tables, case.batches, strict=True), (add_table, case.spec.transitions)]:
            assert f"### {table}" in text
            rows = [r for r in data["rows"] if r["table"] == table]
            assert [r["contender"] for r in rows] == wanted
            for r in rows:
                assert r["status"] == "ok", r
                assert "batch check" not in r["note"], r  # keys, shapes and dtypes as specified
                assert r["items"] == n and r["median_s"] > 0 and r["runs"] == 2
            local, ray = rows
            assert local["extra"]["vs local"] == 1.0 and ray["extra"]["vs local"] > 0
            assert ray["cached_bytes"] == local["cached_bytes"] > 0  # the same window, all cached
            assert ray["extra"]["shards peak RSS MB"] > 0 and "shards peak RSS MB" not in local["extra"]


def test_the_dedup_comparison_reports_both_buffers(capsys):
    from benchmarks import dedup_ab

    assert dedup_ab.main(["--scenario", "state", "--repeats", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("dedup_next_obs=True") == 3 and out.count("dedup_next_obs=False") == 3
    cached = [
        float(line.split("cached MB")[1].split()[0]) for line in out.splitlines() if "cached MB" in line
    ]
    assert cached[0] < 0.6 * cached[1]  # stored once: the state window's observations


def test_the_dedup_comparison_of_segment_directories_reports_their_disk_bytes(capsys):
    from benchmarks import dedup_ab

    assert dedup_ab.main(["--scenario", "images", "--format", "segment", "--quick", "--repeats", "4"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "disk MB" in line]
    assert len(lines) == 2 and "segment" in out.splitlines()[0]
    used = {line.split()[0]: float(line.split("disk MB")[1].split()[0]) for line in lines}
    apparent = {line.split()[0]: float(line.split("apparent MB")[1].split()[0]) for line in lines}
    assert apparent["dedup_next_obs=True"] >= apparent["dedup_next_obs=False"] > 0
    assert used["dedup_next_obs=True"] <= used["dedup_next_obs=False"]
