"""Every step of every operation is crash- and fault-safe (docs/durability.md, "Fault-injection
coverage").

``tests/faults.py`` lists the file-system calls an operation makes under the test's directory
(its *points*) and runs it in a child process that is SIGKILLed at one point, or in which that
one call fails once with ``ENOSPC`` or ``EIO``; the parent then checks the invariants:

* after a kill, without any repair: every directory involved loads, every acknowledged
  trajectory is present exactly once and byte-identical, a move neither loses nor duplicates a
  trajectory across source and destination, an output is absent or complete, and the operation
  run again in a fresh child completes;
* after a failed call: the operation completes or raises a ``ReplayBufferError``, the
  directories involved load, and its retry (for auto-save, a later ``flush()``/``close()``)
  completes with every acknowledged trajectory present exactly once.

The default run takes 2 points of each operation (the middle one and the last one), each
killed and failed (``ENOSPC`` and ``EIO`` alternately). The soak run (``-m soak`` or
``RLINF_SOAK=1``; pyproject does not deselect the marker, so it skips itself otherwise) takes
every point with each of the three outcomes::

    python -m pytest -m soak tests/test_fault_injection.py

Points at which a known library bug breaks an invariant are expected to fail
(:data:`KNOWN_BUGS`, strict: a fix makes them pass, and the entry must go).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faults
import pytest

SPREAD = 2  # the middle and the last point (the first changes nothing yet)
OPERATIONS = list(faults.OPERATIONS)
Points = list[tuple[str, str]]


# -- known bugs ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KnownBug:
    ops: tuple[str, ...]
    outcomes: tuple[str, ...]
    where: Callable[[Points, int], bool]
    reason: str


KNOWN_BUGS: list[KnownBug] = []  # none known: an entry goes with the fix that makes it pass


def known_bug(op: str, outcome: str, points: Points, index: int) -> str | None:
    for bug in KNOWN_BUGS:
        if op in bug.ops and outcome in bug.outcomes and bug.where(points, index):
            return bug.reason
    return None


# -- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory):
    work = Path(os.path.realpath(tmp_path_factory.mktemp("faults")))
    server = faults.Server(work / "server")
    try:
        yield faults.Harness(server, work / "cases")
    finally:
        server.close()


# -- tests ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("outcome", ["kill", "fail"])
@pytest.mark.parametrize("k", range(SPREAD))
@pytest.mark.parametrize("op", OPERATIONS)
def test_an_operation_keeps_its_data_when_killed_or_failed_at_a_step(
    harness: faults.Harness, op: str, k: int, outcome: str, request: pytest.FixtureRequest
) -> None:
    index = harness.spread(op, k + 1, SPREAD + 1)
    fault = "kill" if outcome == "kill" else ("ENOSPC", "EIO")[k % 2]
    reason = known_bug(op, fault, harness.points(op), index)
    if reason is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    result = harness.check(op, index, fault)
    assert result.failure is None, result.failure


@pytest.mark.soak
@pytest.mark.parametrize("outcome", ["kill", "ENOSPC", "EIO"])
@pytest.mark.parametrize("op", OPERATIONS)
def test_every_step_of_an_operation_keeps_its_data(
    harness: faults.Harness, op: str, outcome: str, request: pytest.FixtureRequest
) -> None:
    if not faults.soak_selected(request.config):
        pytest.skip("soak test: run with -m soak or RLINF_SOAK=1")
    points = harness.points(op)
    failures, fixed, expected = [], [], []
    for index in range(1, len(points) + 1):
        reason = known_bug(op, outcome, points, index)
        result = harness.check(op, index, outcome)
        if reason is None and result.failure is not None:
            failures.append(result.failure)
        elif reason is not None and result.failure is None:
            fixed.append(f"{result.label}: passes; remove it from KNOWN_BUGS ({reason[:80]}...)")
        elif reason is not None:
            expected.append(reason)
    assert not failures and not fixed, "\n\n".join(failures + fixed)
    if expected:
        pytest.xfail(
            f"{len(expected)} of {len(points)} points fail from known bugs: " + " | ".join(set(expected))
        )


def test_the_harness_counts_only_calls_under_the_directory_under_test(tmp_path: Path) -> None:
    """The interposer sees the library's writes under the prefix, in order, and nothing else."""
    inside, outside = tmp_path / "data", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    ip = faults.Interposer(str(inside))
    ip.install()
    try:
        from rlinf_replay_buffer.fsio import atomic_write_json

        atomic_write_json(str(inside / "a.json"), {"x": 1})
        atomic_write_json(str(outside / "b.json"), {"x": 2})
        os.unlink(inside / "a.json")
    finally:
        ip.uninstall()
    calls = [call for call, _ in ip.points]
    assert calls == ["open", "file.write", "file.flush", "fsync", "replace", "fsync", "unlink"], ip.points
    assert all(not path.startswith("/") and "b.json" not in path for _, path in ip.points), ip.points


def test_a_failed_call_fails_once_and_names_its_path(tmp_path: Path) -> None:
    ip = faults.Interposer(str(tmp_path), "fail", 2, faults.ERRNOS["EIO"])
    ip.install()
    try:
        os.mkdir(tmp_path / "a")
        with pytest.raises(OSError) as caught:
            os.mkdir(tmp_path / "b")
        os.mkdir(tmp_path / "b")
    finally:
        ip.uninstall()
    assert caught.value.errno == faults.ERRNOS["EIO"] and caught.value.filename == str(tmp_path / "b")
    assert ip.fired == {"index": 2, "call": "mkdir", "path": "b", "action": "fail"}
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]
