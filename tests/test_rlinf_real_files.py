"""Buffer directories between the real RLinf 0.3.0 (from PyPI) and this library, both ways.

RLinf runs in the session venv of ``test_rlinf_real.py`` (see its docstring and ``rlinf_env``):
``rlinf==0.3.0`` installed from PyPI into a throwaway venv that also sees this environment's
packages. The switch is *off* there, so ``rlinf.data.replay_buffer.TrajectoryReplayBuffer`` is
RLinf's own class; this library is imported as ``rlinf_replay_buffer`` (here, in the test process).

* **RLinf writes, we read**: RLinf's auto-save directories (``pt``, ``pkl``) and RLinf's
  ``save_checkpoint`` without auto-save (files written from its flattened cache) of SAC-style
  rollouts in RLinf's rollout layout (an extra done row first and an extra action row last per
  rollout epoch), 1 and 2 epochs, ``B`` = 1 and 2, with and without ``prev_logprobs``. The
  trajectories are RLinf's own ``Trajectory`` objects whose values encode their step
  (``rlinf_env.coded_fields``, the coding of ``conftest.coded_trajectory``), so a sampled batch
  shows whether every row is one real, aligned transition. RLinf's merge tool is not in the 0.3.0
  wheel, so directories it writes are not tested here.
* **We write, RLinf reads**: our ``save_checkpoint`` (``pt``, ``pkl``), a closed and a flushed but
  still open auto-save directory, rank directories (``path/rank_k`` from our sharded loads) and
  RLinf's own sharded loading (``is_distributed``, ``local_rank``, ``world_size``) of our
  checkpoint; RLinf's ``sample(n)`` must return ``n`` aligned rows. Our files are aligned, so
  RLinf's sampler (which misaligns RLinf-layout rollouts of more than one epoch) reads them right.

Sampled batches come back from the venv as ``torch.save`` files and are checked here with
``conftest.assert_aligned``.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import rlinf_env
import torch
from conftest import assert_aligned, coded_trajectory

from rlinf_replay_buffer import TrajectoryReplayBuffer

N = 4  # steps per rollout epoch of every coded trajectory here


@pytest.fixture(scope="session")
def rlinf_venv(tmp_path_factory) -> rlinf_env.Venv:
    """The session venv with ``rlinf==0.3.0`` (built once per pytest process, shared with
    ``test_rlinf_real.py`` through ``rlinf_env``'s cache)."""
    return rlinf_env.shared_rlinf_venv(tmp_path_factory)


def coverage(batch: dict) -> set[tuple[int, int]]:
    """(code, env) of every row: which transitions a batch holds."""
    codes = batch["curr_obs"]["states"][:, 0].long().tolist()
    envs = batch["curr_obs"]["env_ids"][:, 0].tolist()
    return set(zip(codes, envs, strict=True))


def all_transitions(trajectories: list[int], e: int, num_envs: int) -> set[tuple[int, int]]:
    return {
        (1000 * i + 100 * k + s, b)
        for i in trajectories
        for k in range(e)
        for s in range(N)
        for b in range(num_envs)
    }


# -- RLinf writes, we read -----------------------------------------------------------------------
RLINF_WRITES = """
import itertools, pathlib
import rlinf_env as E
from rlinf.data.embodied_io_struct import Trajectory, get_model_weights_id
from rlinf.data.replay_buffer import TrajectoryReplayBuffer
assert TrajectoryReplayBuffer.__module__ == "rlinf.data.replay_buffer"   # RLinf's own
OUT = pathlib.Path(OUT_DIR)

def traj(i, **kw):
    t = Trajectory(**E.coded_fields(i, **kw))
    t.model_weights_id = get_model_weights_id(t.versions)   # as RLinf's trajectory builder does
    return t

for fmt in ("pt", "pkl"):
    buf = TrajectoryReplayBuffer(seed=1234, enable_cache=True, cache_size=5, sample_window_size=100,
                                 auto_save=True, auto_save_path=str(OUT / f"autosave-{fmt}"),
                                 trajectory_format=fmt)
    for i in range(3):
        buf.add_trajectories([traj(i, n=N, e=2, num_envs=2)])
    buf.close()   # waits for the files, the index and the metadata

for fmt, e, b, logprobs in CHECKPOINTS:
    buf = TrajectoryReplayBuffer(seed=1234, enable_cache=True, cache_size=5, sample_window_size=100,
                                 auto_save=False, trajectory_format=fmt)
    buf.add_trajectories([traj(i, n=N, e=e, num_envs=b, logprobs=logprobs) for i in range(3)])
    buf.save_checkpoint(str(OUT / f"checkpoint-{fmt}-e{e}-B{b}-{'logprobs' if logprobs else 'sac'}"))
    buf.close()
emit(sorted(p.name for p in OUT.iterdir()))
"""

CHECKPOINTS = list(itertools.product(("pt", "pkl"), (1, 2), (1, 2), (False, True)))


@pytest.fixture(scope="module")
def rlinf_written(rlinf_venv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rlinf-written")
    code = f"OUT_DIR = {str(out)!r}\nN = {N}\nCHECKPOINTS = {CHECKPOINTS!r}\n" + RLINF_WRITES
    names = rlinf_venv.result(code)
    assert len(names) == 2 + len(CHECKPOINTS)
    return out


def _read_and_check(path: Path, e: int, num_envs: int) -> None:
    with TrajectoryReplayBuffer(seed=5) as ours:
        ours.load_checkpoint(str(path))
        assert len(ours) == 3
        assert ours.total_samples == 3 * N * e * num_envs  # transitions, not RLinf's prev_logprobs rows
        batch = ours.sample(1024)
    assert batch["rewards"].shape == (1024, 1)
    assert_aligned(batch, n=N)
    assert batch["curr_obs"]["main_images"].dtype == torch.uint8
    # every transition is there, and nothing else (no extra row of RLinf's layout)
    assert coverage(batch) == all_transitions([0, 1, 2], e, num_envs)


@pytest.mark.parametrize("fmt", ["pt", "pkl"])
def test_we_read_rlinf_auto_save_directories(rlinf_written, fmt):
    _read_and_check(rlinf_written / f"autosave-{fmt}", e=2, num_envs=2)


@pytest.mark.parametrize(
    ("fmt", "e", "num_envs", "logprobs"),
    CHECKPOINTS,
    ids=[f"{f}-{e}epoch-B{b}-{'logprobs' if lp else 'sac'}" for f, e, b, lp in CHECKPOINTS],
)
def test_we_read_rlinf_checkpoints_of_sac_rollouts(rlinf_written, fmt, e, num_envs, logprobs):
    name = f"checkpoint-{fmt}-e{e}-B{num_envs}-{'logprobs' if logprobs else 'sac'}"
    _read_and_check(rlinf_written / name, e=e, num_envs=num_envs)


# -- we write, RLinf reads -----------------------------------------------------------------------
RLINF_READS = """
import json, pathlib, torch
from rlinf.data.replay_buffer import TrajectoryReplayBuffer
assert TrajectoryReplayBuffer.__module__ == "rlinf.data.replay_buffer"   # RLinf's own
OUT = pathlib.Path(OUT_DIR)
result = {}
for name, (path, kwargs, n) in json.loads(CASES).items():
    buf = TrajectoryReplayBuffer(seed=7, enable_cache=True, cache_size=100, sample_window_size=100)
    try:
        buf.load_checkpoint(path, **kwargs)
        batch = buf.sample(n)
        torch.save(batch, OUT / f"{name}.pt")
        result[name] = {"size": len(buf), "total_samples": buf.total_samples,
                        "ids": list(buf._trajectory_id_list), "keys": sorted(batch)}
    except Exception as exc:
        result[name] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        buf.close()
emit(result)
"""

#: case -> (directory below the fixture's root, load_checkpoint keywords, trajectories it holds
#: as coded-trajectory numbers, epochs, B)
CASES: dict[str, tuple[str, dict, list[int], int, int]] = {
    "checkpoint-pt": ("checkpoint-pt", {}, [0, 1, 2, 3], 2, 2),
    "checkpoint-pkl": ("checkpoint-pkl", {}, [0, 1, 2, 3], 2, 2),
    "checkpoint-one-epoch-B1": ("checkpoint-e1-B1", {}, [0, 1, 2, 3], 1, 1),
    "checkpoint-demo": ("checkpoint-demo", {}, [0, 1, 2], 1, 1),
    "autosave-closed": ("autosave-closed", {}, [0, 1, 2, 3], 2, 2),
    "autosave-flushed-open": ("autosave-open", {}, [0, 1, 2, 3], 2, 2),
    "rank_0-of-our-shards": ("ranks/rank_0", {}, [0, 2, 4, 6], 2, 2),
    "rank_1-of-our-shards": ("ranks/rank_1", {}, [1, 3, 5], 2, 2),
}
# RLinf's own sharded loading of our checkpoint: contiguous shares, the remainder to the first ranks
for _w, _shares in ((2, [[0, 1, 2, 3], [4, 5, 6]]), (3, [[0, 1, 2], [3, 4], [5, 6]])):
    for _r, _share in enumerate(_shares):
        CASES[f"rlinf-share-{_r}-of-{_w}"] = (
            "checkpoint-7",
            {"is_distributed": True, "local_rank": _r, "world_size": _w},
            _share,
            2,
            2,
        )


@pytest.fixture(scope="module")
def rlinf_read(rlinf_venv, tmp_path_factory):
    """Write every directory of :data:`CASES` with this library, let RLinf load each and sample;
    returns ``(RLinf's report per case, directory of the sampled batches)``."""
    root = tmp_path_factory.mktemp("ours-written")
    for fmt in ("pt", "pkl"):
        with TrajectoryReplayBuffer(seed=1, trajectory_format=fmt) as buf:
            buf.add_trajectories([coded_trajectory(i, n=N, e=2, num_envs=2) for i in range(4)])
            buf.save_checkpoint(str(root / f"checkpoint-{fmt}"))
    with TrajectoryReplayBuffer(seed=1) as buf:
        buf.add_trajectories([coded_trajectory(i, n=N, e=1, num_envs=1) for i in range(4)])
        buf.save_checkpoint(str(root / "checkpoint-e1-B1"))
    with TrajectoryReplayBuffer(seed=1) as buf:  # demonstrations: aligned rows, no logprobs
        demos = [
            coded_trajectory(i, n=N, e=1, num_envs=1, layout="aligned", logprobs=False) for i in range(3)
        ]
        buf.add_trajectories(demos)
        buf.save_checkpoint(str(root / "checkpoint-demo"))
    with TrajectoryReplayBuffer(seed=1, auto_save=True, auto_save_path=str(root / "autosave-closed")) as buf:
        buf.add_trajectories([coded_trajectory(i, n=N, e=2, num_envs=2) for i in range(2)])
        buf.add_trajectories([coded_trajectory(i, n=N, e=2, num_envs=2) for i in range(2, 4)])
    with TrajectoryReplayBuffer(seed=1) as buf:
        buf.add_trajectories([coded_trajectory(i, n=N, e=2, num_envs=2) for i in range(7)])
        buf.save_checkpoint(str(root / "checkpoint-7"))
    for rank in range(2):  # what each rank of a 2-rank job saves after loading its share
        with TrajectoryReplayBuffer(seed=1) as buf:
            buf.load_checkpoint(
                str(root / "checkpoint-7"), is_distributed=True, local_rank=rank, world_size=2
            )
            buf.save_checkpoint(str(root / "ranks" / f"rank_{rank}"))

    batches = root / "batches"
    batches.mkdir()
    cases = {
        name: (str(root / rel), kwargs, len(share) * N * e * b)
        for name, (rel, kwargs, share, e, b) in CASES.items()
    }
    code = f"OUT_DIR = {str(batches)!r}\nCASES = {json.dumps(cases)!r}\n" + RLINF_READS
    open_buffer = TrajectoryReplayBuffer(seed=1, auto_save=True, auto_save_path=str(root / "autosave-open"))
    try:
        open_buffer.add_trajectories([coded_trajectory(i, n=N, e=2, num_envs=2) for i in range(4)])
        open_buffer.flush()  # durable: RLinf reads the directory while the buffer is still open
        report = rlinf_venv.result(code)
    finally:
        open_buffer.close()
    return report, batches


def _check_rlinf_read(rlinf_read, case: str) -> None:
    report, batches = rlinf_read
    _, _, share, e, num_envs = CASES[case]
    got = report[case]
    assert "error" not in got, got.get("error")
    transitions = len(share) * N * e * num_envs
    assert len(got["ids"]) == len(share), f"RLinf's index lists {got['ids']}"
    assert got["size"] == len(share)
    assert got["total_samples"] == transitions
    batch = torch.load(batches / f"{case}.pt", weights_only=True)
    assert batch, "RLinf's sample(n) returned an empty dict"
    assert batch["rewards"].shape == (transitions, 1), "RLinf's sample(n) did not return n rows"
    assert_aligned(batch, n=N)
    assert coverage(batch) <= all_transitions(share, e, num_envs)


@pytest.mark.parametrize(
    "case", ["checkpoint-pt", "checkpoint-pkl", "checkpoint-one-epoch-B1", "checkpoint-demo"]
)
def test_rlinf_reads_a_checkpoint_we_wrote(rlinf_read, case):
    _check_rlinf_read(rlinf_read, case)


def test_rlinf_reads_our_closed_auto_save_directory(rlinf_read):
    _check_rlinf_read(rlinf_read, "autosave-closed")


def test_rlinf_reads_our_flushed_auto_save_directory_while_it_is_open(rlinf_read):
    # RLinf's loader reads only trajectory_index.json: flush() must publish it, not only the journal
    _check_rlinf_read(rlinf_read, "autosave-flushed-open")


@pytest.mark.parametrize("rank", [0, 1])
def test_rlinf_reads_the_rank_directories_we_wrote(rlinf_read, rank):
    _check_rlinf_read(rlinf_read, f"rank_{rank}-of-our-shards")


def test_rlinf_reads_our_checkpoints_rank_shares_with_its_own_sharding(rlinf_read):
    report, _ = rlinf_read
    for world_size in (2, 3):
        names = [n for n in CASES if n.startswith("rlinf-share-") and n.endswith(f"-of-{world_size}")]
        for name in names:
            _check_rlinf_read(rlinf_read, name)
        ids = [i for name in names for i in report[name]["ids"]]
        assert sorted(ids) == list(range(7)), "the shares are disjoint and cover the checkpoint"
