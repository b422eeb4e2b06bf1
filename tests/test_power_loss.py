"""Every fsync the library promises is there: a power cut at any point leaves a directory that
loads and holds everything acknowledged before it (docs/durability.md, "Power loss").

``tests/power_loss.py`` records every change an operation of ``tests/faults.py`` makes (writes,
fsyncs, creations, renames, removals, with their inodes, and the acknowledgements printed between
them), then builds what a disk could hold after a power cut at a point: only what was synced
(``synced``), every name change but only synced data (``names-kept``), everything (``all-kept``,
what a kill leaves), and seeded random mixes. Each image is checked with the operation's own
invariants (``after_kill``; after an operation that said it completed, ``after_fail`` too), then
the operation runs again on it in a fresh process (``after_retry``).

The default run checks 2 cuts per operation (the end and right after the first acknowledgement)
with the three fixed images and one random
image a file system that commits metadata in order can give. The soak run (``-m soak`` or
``RLINF_SOAK=1``) checks every cut with ``RLINF_POWER_ORDERED`` (2) such images and
``RLINF_POWER_SAMPLES`` (3) random images of the POSIX model (``RLINF_POWER_SEED``: 0)::

    python -m pytest -m soak tests/test_power_loss.py

A failure on an image only a file system that reorders metadata could give (POSIX allows it)
is listed, not failed: the soak test then reports the list as an expected failure.

The rest are unit tests of the model on hand-written logs, and one test per fsync this harness
found missing: each fails when that fsync is removed again.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import faults
import power_loss
import pytest

from rlinf_replay_buffer.fsio import atomic_write_json, fsync_dir

SPREAD = 2
OPERATIONS = list(faults.OPERATIONS)
EMPTY = power_loss.EMPTY


@pytest.fixture(scope="module")
def power(tmp_path_factory: pytest.TempPathFactory):
    work = Path(os.path.realpath(tmp_path_factory.mktemp("power")))
    server = faults.Server(work / "server")
    try:
        yield power_loss.PowerLoss(server, work / "cases")
    finally:
        server.close()


def real_failures(outcomes: list[power_loss.Outcome]) -> list[str]:
    return [o.failure for o in outcomes if o.failure is not None and o.in_order]


# -- the operations ----------------------------------------------------------------------------------
@pytest.mark.parametrize("op", OPERATIONS)
def test_an_operation_keeps_what_it_acknowledged_through_a_power_cut(power: power_loss.PowerLoss, op: str):
    failures = []
    for cut in power.spread(op, SPREAD):
        failures += real_failures(power.check(op, cut, ordered=1))
    assert not failures, "\n\n".join(failures)


@pytest.mark.soak
@pytest.mark.parametrize("op", OPERATIONS)
def test_every_cut_of_an_operation_keeps_what_it_acknowledged(
    power: power_loss.PowerLoss, op: str, request: pytest.FixtureRequest
):
    if not faults.soak_selected(request.config):
        pytest.skip("soak test: run with -m soak or RLINF_SOAK=1")
    built, checked = power.images, power.checked
    outcomes = power.sweep(op, samples=power_loss.SAMPLES, ordered=power_loss.ORDERED)
    failures = real_failures(outcomes)
    reordered = [o.failure.splitlines()[0] for o in outcomes if o.failure is not None and not o.in_order]
    print(
        f"power-loss soak {op}: {power.recording(op).cuts + 1} cuts, {power.images - built} images, "
        f"{power.checked - checked} checked, {len(failures)} failed, {len(reordered)} failed reordered only"
    )
    assert not failures, "\n\n".join(failures)
    if reordered:
        pytest.xfail(
            f"{len(reordered)} of {len(outcomes)} images fail that only a file system reordering "
            "metadata could give (docs/durability.md, 'Power loss'):\n" + "\n".join(reordered)
        )


def test_a_recording_replays_to_the_tree_the_operation_left(power: power_loss.PowerLoss):
    """Nothing an operation changes escapes the recorder: its whole log, replayed, is the real
    tree at the end (``Recording.verify``), and every change names a known inode."""
    for op in ("autosave-segment-evict", "merge-move", "save-replace-segment"):
        rec = power.recording(op)
        assert rec.final is not None and rec.untracked == []
        assert power_loss.paths(rec.state(rec.cuts).image("all-kept")) == rec.final
        assert {ev["e"] for ev in rec.changes} >= {"create", "data", "fsync", "dsync", "rename", "unlink"}


# -- the model, on hand-written logs -----------------------------------------------------------------
ROOT, SUB, OLD = 1, 2, 3


def start() -> dict:
    """``/`` (node 1) holding ``sub/`` (node 2) and ``old`` (node 3, ``"v1"``), all durable."""
    return {
        "root": ROOT,
        "nodes": {
            str(ROOT): {"k": "d", "e": {"sub": SUB, "old": OLD}},
            str(SUB): {"k": "d", "e": {}},
            str(OLD): {"k": "f", "b": "v1"},
        },
    }


def ev(e: str, **fields) -> dict:
    return {"e": e, "call": e, "path": "", **fields}


def image_at(log: list[dict], how: str, cut: int | None = None) -> dict:
    rec = power_loss.Recording.of(start(), log)
    return rec.state(rec.cuts if cut is None else cut).image(how)


def files(image: dict) -> dict[str, str]:
    return {p: e[1] for p, e in image.items() if e[0] == "f"}


def test_a_file_renamed_into_place_without_an_fsync_of_its_own_is_empty_in_the_names_kept_image():
    log = [
        ev("create", d=ROOT, n=".tmp", x=10, k="f"),
        ev("data", x=10, b="v2"),
        ev("rename", sd=ROOT, sn=".tmp", dd=ROOT, dn="old", x=10),
        ev("dsync", x=ROOT),
    ]
    assert files(image_at(log, "names-kept")) == {"old": EMPTY}
    assert files(image_at(log, "synced")) == {"old": EMPTY}
    assert files(image_at(log, "all-kept")) == {"old": "v2"}
    log.insert(2, ev("fsync", x=10, b="v2"))
    assert files(image_at(log, "synced")) == {"old": "v2"}


def test_a_rename_without_a_directory_fsync_is_absent_from_the_synced_image():
    log = [
        ev("create", d=ROOT, n=".tmp", x=10, k="f"),
        ev("data", x=10, b="v2"),
        ev("fsync", x=10, b="v2"),
        ev("rename", sd=ROOT, sn=".tmp", dd=ROOT, dn="old", x=10),
    ]
    assert files(image_at(log, "synced")) == {"old": "v1"}  # the create was never synced either
    assert files(image_at(log, "names-kept")) == {"old": "v2"}
    assert files(image_at(log + [ev("dsync", x=ROOT)], "synced")) == {"old": "v2"}


def test_an_fsync_of_a_file_does_not_make_its_name_durable():
    log = [ev("create", d=ROOT, n="new", x=10, k="f"), ev("data", x=10, b="v2"), ev("fsync", x=10, b="v2")]
    assert "new" not in image_at(log, "synced")
    assert files(image_at(log + [ev("dsync", x=ROOT)], "synced"))["new"] == "v2"


def test_a_cross_directory_rename_synced_only_in_its_destination_appears_in_both():
    log = [ev("rename", sd=ROOT, sn="old", dd=SUB, dn="moved", x=OLD), ev("dsync", x=SUB)]
    assert files(image_at(log, "synced")) == {"old": "v1", "sub/moved": "v1"}
    assert image_at(log, "synced")["old"][2] == image_at(log, "synced")["sub/moved"][2]  # one inode
    assert files(image_at(log, "names-kept")) == {"sub/moved": "v1"}
    only_source = [ev("rename", sd=ROOT, sn="old", dd=SUB, dn="moved", x=OLD), ev("dsync", x=ROOT)]
    assert files(image_at(only_source, "synced")) == {}  # synced only at its source: lost


def test_a_new_directory_holds_nothing_until_it_is_fsynced_and_is_reachable_once_its_parent_is():
    log = [
        ev("create", d=ROOT, n="dir", x=10, k="d"),
        ev("create", d=10, n="f", x=11, k="f"),
        ev("fsync", x=11, b="v2"),
        ev("dsync", x=ROOT),
    ]
    assert image_at(log, "synced")["dir"] == ("d",) and "dir/f" not in image_at(log, "synced")
    assert files(image_at(log + [ev("dsync", x=10)], "synced"))["dir/f"] == "v2"


def test_an_exchange_swaps_both_names_in_one_change():
    log = [
        ev("create", d=ROOT, n="new", x=10, k="f"),
        ev("fsync", x=10, b="v2"),
        ev("dsync", x=ROOT),
        ev("exchange", ad=ROOT, an="new", ax=OLD, bd=ROOT, bn="old", bx=10),
    ]
    assert files(image_at(log, "synced")) == {"new": "v2", "old": "v1"}
    assert files(image_at(log, "names-kept")) == {"new": "v1", "old": "v2"}
    state = power_loss.Recording.of(start(), log).state(len(log))
    for seed in range(20):  # one change: both halves or neither
        got = files(state.image("chosen", state.choose(random.Random(seed), in_order=False)))
        assert got in ({"new": "v2", "old": "v1"}, {"new": "v1", "old": "v2"})


def test_a_random_image_is_seeded_and_takes_each_file_at_a_content_it_had():
    log = [
        ev("data", x=OLD, b="v2"),
        ev("data", x=OLD, b="v3"),
        ev("create", d=ROOT, n="a", x=10, k="f"),
        ev("unlink", d=ROOT, n="old"),
    ]
    state = power_loss.Recording.of(start(), log).state(len(log))
    seen = set()
    for seed in range(40):
        choice = state.choose(random.Random(seed), in_order=False)
        assert state.image("chosen", choice) == state.image(
            "chosen", state.choose(random.Random(seed), False)
        )
        image = files(state.image("chosen", choice))
        assert image.get("old", "v1") in ("v1", "v2", "v3") and image.get("a", EMPTY) == EMPTY
        seen.add(tuple(sorted(image.items())))
    assert len(seen) >= 5  # the create and the unlink kept or dropped independently, three contents


def test_an_in_order_image_keeps_no_change_or_write_after_one_it_drops():
    log = [
        ev("create", d=ROOT, n="a", x=10, k="f"),
        ev("data", x=OLD, b="v2"),
        ev("rename", sd=ROOT, sn="a", dd=SUB, dn="b", x=10),
        ev("data", x=OLD, b="v3"),
        ev("unlink", d=ROOT, n="old"),
    ]
    state = power_loss.Recording.of(start(), log).state(len(log))
    for seed in range(60):
        choice = state.choose(random.Random(seed), in_order=True)
        assert state.in_order(choice)
        image = files(state.image("chosen", choice))
        if "a" not in image and "sub/b" not in image:  # the create dropped: nothing later is kept
            assert image == {"old": "v1"}
    dropped_create = power_loss.Choice({0: False, 2: True, 4: True}, {OLD: (1, "v2")})
    assert not state.in_order(dropped_create)
    late_write = power_loss.Choice({0: True, 2: False, 4: False}, {OLD: (3, "v3")})
    assert not state.in_order(late_write)
    assert state.in_order(power_loss.Choice({0: True, 2: False, 4: False}, {OLD: (1, "v2")}))


def test_the_report_lines_before_a_cut_are_what_it_acknowledged():
    log = [ev("data", x=OLD, b="v2"), {"e": "say", "kind": "ack", "value": [1]}, ev("fsync", x=OLD, b="v2")]
    rec = power_loss.Recording.of(start(), log)
    assert [rec.lines(c) for c in range(rec.cuts + 1)] == [[], [("ack", [1])], [("ack", [1])]]
    assert rec.acknowledged() == [1]


def test_an_image_is_materialized_with_its_hard_links_and_symbolic_links(tmp_path: Path):
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "v1").write_bytes(b"one")
    log = [
        ev("link", d=SUB, n="again", x=OLD),
        ev("create", d=ROOT, n="ln", x=10, k="l", t="old"),
        ev("dsync", x=SUB),
    ]
    image = image_at(log, "synced")
    assert power_loss.digest(image) != power_loss.digest(image_at(log, "names-kept"))
    power_loss.materialize(image, str(tmp_path / "tree"), str(blobs))
    assert (tmp_path / "tree" / "sub" / "again").read_bytes() == b"one"
    assert os.path.samefile(tmp_path / "tree" / "old", tmp_path / "tree" / "sub" / "again")
    assert not (tmp_path / "tree" / "ln").exists()  # its entry was never synced
    power_loss.materialize(image_at(log, "all-kept"), str(tmp_path / "tree"), str(blobs))
    assert os.readlink(tmp_path / "tree" / "ln") == "old"


def test_the_recorder_logs_each_change_with_its_inodes_in_order(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    with power_loss.recorded(str(data)) as recorder:
        fd = os.open(data / "a", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, b"hello")
        os.fsync(fd)
        os.close(fd)
        os.mkdir(data / "d")
        os.rename(data / "a", data / "d" / "b")
        recorder.note("ack", 1)
        fsync_dir(str(data / "d"))
        with open(data / "c", "w") as f:
            f.write("x")
        os.unlink(data / "c")
    rec = recorder.recording()
    rec.verify()
    assert [e["e"] for e in rec.changes] == [
        "create", "data", "fsync", "create", "rename", "dsync", "create", "data", "unlink"
    ]  # fmt: skip
    created = rec.changes[0]
    assert (created["d"], created["n"]) == (rec.initial["root"], "a")
    assert rec.changes[4]["x"] == created["x"] and rec.changes[4]["dd"] == rec.changes[3]["x"]
    assert rec.markers == [(5, "ack", 1)]
    assert files(rec.state(rec.cuts).image("synced")) == {}  # neither d nor a's new name durable
    assert files(rec.state(6).image("names-kept")) == {"d/b": power_loss.sha(b"hello")}


# -- the fsyncs this harness found missing -------------------------------------------------------------
def cut_image(rec: power_loss.Recording, how: str = "synced", cut: int | None = None) -> None:
    """Materialize an image of ``rec`` at its own directory (every change made: the end)."""
    rec.verify()
    image = rec.state(rec.cuts if cut is None else cut).image(how)
    power_loss.materialize(image, rec.data, rec.blobs)


def test_a_file_written_atomically_is_whole_after_a_power_cut(tmp_path: Path):
    """``atomic_write``'s fsync of the file before its rename (the stock kill tests pass without
    it: a kill keeps the page cache)."""
    data = tmp_path / "data"
    data.mkdir()
    atomic_write_json(str(data / "a.json"), {"old": True})
    with power_loss.recorded(str(data)) as recorder:
        atomic_write_json(str(data / "a.json"), {"new": 1})
        atomic_write_json(str(data / "b.json"), [1, 2, 3])
    cut_image(recorder.recording(), "names-kept")
    assert json.loads((data / "a.json").read_text()) == {"new": 1}
    assert json.loads((data / "b.json").read_text()) == [1, 2, 3]


def test_a_new_auto_save_directory_keeps_a_flushed_trajectory_through_a_power_cut(tmp_path: Path):
    """The auto-save directory's name (and its new parents') is durable before ``flush()``
    acknowledges anything in it (``autosave.OwnDirectory.open``: ``fsio.make_dirs``)."""
    data = tmp_path / "data"
    data.mkdir()
    path = data / "runs" / "buf"
    with power_loss.recorded(str(data)) as recorder:
        buf = faults.buffer(auto_save=True, auto_save_path=str(path), trajectory_format="pt")
        buf.add_trajectories([faults.trajectory(3)])
        buf.flush()
        recorder.note("ack", [3])
        buf.close()
    rec = recorder.recording()
    cut_image(rec, cut=rec.acknowledged()[0])
    assert [code for _, code in faults.contents(str(path))] == [3]


def test_a_checkpoint_saved_into_new_directories_survives_a_power_cut(tmp_path: Path):
    """``save_checkpoint`` into a path whose parents it creates: they are durable when it returns
    (``checkpoint.output_directory``: ``fsio.make_dirs``)."""
    data = tmp_path / "data"
    data.mkdir()
    buf = faults.buffer(trajectory_format="pt")
    buf.add_trajectories([faults.trajectory(c) for c in (0, 1)])
    with power_loss.recorded(str(data)) as recorder:
        buf.save_checkpoint(str(data / "ckpts" / "step_1" / "ckpt"))
    cut_image(recorder.recording())
    assert [code for _, code in faults.contents(str(data / "ckpts" / "step_1" / "ckpt"))] == [0, 1]


def test_a_parquet_export_into_a_new_directory_survives_a_power_cut(tmp_path: Path):
    """``export_parquet`` creates the output's directory durably (``fsio.make_dirs`` in
    ``tools/parquet.py``): the export is there when it returns."""
    from rlinf_replay_buffer.tools.parquet import export_parquet

    data = tmp_path / "data"
    data.mkdir()
    faults.checkpoint_of(str(data / "src"), [0, 1])
    out = data / "exports" / "all.parquet"
    with power_loss.recorded(str(data)) as recorder:
        export_parquet(str(data / "src"), str(out))
    cut_image(recorder.recording())
    assert faults.parquet_codes(str(out), str(tmp_path / "scratch")) == [0, 1]


def test_an_evicting_buffer_never_lists_a_trajectory_a_power_cut_took_away(tmp_path: Path):
    """Every 32 evictions the journal is fsync'd (its removal lines must be durable before the
    files go): the directory is fsync'd first, so no durable line names a file whose new name is
    not (``OwnDirectory.sync_journal``)."""
    data = tmp_path / "data"
    data.mkdir()
    faults.buffer(auto_save=True, auto_save_path=str(data / "buf"), trajectory_format="pt").close()
    with power_loss.recorded(str(data)) as recorder:
        buf = faults.buffer(
            auto_save=True, auto_save_path=str(data / "buf"), trajectory_format="pt", max_trajectories=40
        )
        for code in range(80):  # the first 40 written, then each add evicts one of them
            buf.add_trajectories([faults.trajectory(code)])
            if code == 39:
                buf.flush()
        buf.close()
    rec = recorder.recording()
    synced = [
        i + 1 for i, e in enumerate(rec.changes) if e["e"] == "fsync" and e["path"].endswith(".journal")
    ]
    assert len(synced) >= 3  # the flush, the sync after 32 evictions, the close
    for cut in synced:
        cut_image(rec, cut=cut)
        held = faults.contents(str(data / "buf"))
        faults.loads(str(data / "buf"), len(held))


def test_a_repair_never_loses_the_file_it_quarantines(power: power_loss.PowerLoss):
    """``verify --repair`` moves damaged files into ``quarantine/``: the folder is durable
    before they move (``fsio.make_dirs``), and fsync'd before the directory they left."""
    rec = power.recording("verify-repair")
    moved = [i for i, e in enumerate(rec.changes) if e["e"] == "rename" and "quarantine" in e["path"]]
    assert moved
    failures = []
    for cut in range(moved[0], rec.cuts + 1):
        outcomes = power.check("verify-repair", cut, samples=8, ordered=2)
        failures += [o.failure for o in outcomes if o.failure is not None]  # POSIX-only ones too
    assert not failures, "\n\n".join(failures)
