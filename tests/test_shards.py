"""One shard without Ray: its share of a checkpoint, the atomic replacement of its directory
(with real SIGKILLs in the middle of it), and how tensors travel."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import coded_trajectory

from rlinf_replay_buffer import TrajectoryReplayBuffer
from rlinf_replay_buffer.directory import read_directory
from rlinf_replay_buffer.distributed import shares
from rlinf_replay_buffer.distributed.batches import assemble
from rlinf_replay_buffer.distributed.routing import shard_of_key
from rlinf_replay_buffer.distributed.shard import ShardServer
from rlinf_replay_buffer.distributed.wire import decode, decode_trajectory, encode, encode_trajectory
from rlinf_replay_buffer.errors import BufferDirectoryError, InvalidArgumentError, InvalidTrajectoryError

REPO = Path(__file__).resolve().parents[1]


def traj(i):
    return coded_trajectory(i, n=4, e=1, num_envs=2, layout="aligned", images=False)


def codes_in(path):
    contents, _ = read_directory(str(path))
    local = TrajectoryReplayBuffer(sample_window_size=0, enable_cache=False)
    local.load_checkpoint(str(path))
    return sorted(
        int(local._load_trajectory(r.trajectory_id).rewards.reshape(-1)[0]) // 1000 for r in contents.records
    )


def checkpoint_of(path, codes, ranks=1):
    """A checkpoint of ``ranks`` rank directories (or one directory) holding ``codes``."""
    for r in range(ranks):
        buf = TrajectoryReplayBuffer(sample_window_size=0)
        buf.add_trajectories([traj(c) for c in codes[r::ranks]])
        buf.save_checkpoint(str(path / f"rank_{r}") if ranks > 1 else str(path))
    return path


# -- shares ---------------------------------------------------------------------------------


def test_same_number_of_ranks_goes_back_rank_for_rank(tmp_path):
    ckpt = checkpoint_of(tmp_path / "ckpt", [0, 1, 2, 3, 4], ranks=2)
    share = shares.share_of(str(ckpt), 1, 2)
    assert [r.trajectory_id for r in share.records] == [0, 1]
    assert share.sources == [str(ckpt / "rank_1")]


def test_one_directory_is_dealt_out_with_ids_kept(tmp_path):
    ckpt = checkpoint_of(tmp_path / "ckpt", list(range(7)))
    got = [[r.trajectory_id for r in shares.share_of(str(ckpt), k, 3).records] for k in range(3)]
    assert got == [[0, 3, 6], [1, 4], [2, 5]]
    assert all(shares.share_of(str(ckpt), k, 3).counter == 7 for k in range(3))


def test_other_rank_counts_are_interleaved_renumbered_and_dealt_out(tmp_path):
    ckpt = checkpoint_of(tmp_path / "ckpt", list(range(7)), ranks=3)  # rank_0: 0 3 6, rank_1: 1 4 ...
    parts = [shares.share_of(str(ckpt), k, 2) for k in range(2)]
    assert [[r.trajectory_id for r in p.records] for p in parts] == [[0, 2, 4, 6], [1, 3, 5]]
    assert {p.counter for p in parts} == {7}
    # merge order: rank_0's id 0, rank_1's id 0, rank_2's id 0, rank_0's id 1, ...
    assert [os.path.basename(r.directory) for r in parts[0].records] == [
        "rank_0",
        "rank_2",
        "rank_1",
        "rank_0",
    ]


def listing(root) -> list[str]:
    """What a sharded buffer's root holds, but the shards' lock files."""
    return sorted(n for n in os.listdir(root) if not n.endswith(".lock"))


def test_a_shard_loads_its_share_and_keeps_it_after_a_restart(tmp_path):
    ckpt = checkpoint_of(tmp_path / "ckpt", list(range(6)))
    shard = ShardServer(str(tmp_path / "root"), 1, 2, 7, {"sample_window_size": 0})
    shard.add([encode_trajectory(traj(40))])
    shard.prepare_load(str(ckpt))
    assert shard.buffer.size == 1  # staged only
    shard.commit()
    assert shard.buffer.size == 3
    shard.stop()  # the actor's process ends
    again = ShardServer(str(tmp_path / "root"), 1, 2, 7, {"sample_window_size": 0})  # a restart
    assert again.buffer.size == 3 and again.restored == 3
    assert codes_in(tmp_path / "root" / "rank_1") == [1, 3, 5]
    assert listing(tmp_path / "root") == ["rank_1"]


def test_an_aborted_load_leaves_the_shard_as_it_was(tmp_path):
    ckpt = checkpoint_of(tmp_path / "ckpt", list(range(4)))
    shard = ShardServer(str(tmp_path / "root"), 0, 1, 7, {"sample_window_size": 0})
    shard.add([encode_trajectory(traj(40))])
    shard.flush()
    shard.prepare_load(str(ckpt))
    shard.abort()
    assert not os.path.exists(shares.incoming_dir(str(tmp_path / "root"), 0))
    shard.stop()
    assert ShardServer(str(tmp_path / "root"), 0, 1, 7, {}).buffer.size == 1


def test_reserved_options_are_refused_by_the_shard(tmp_path):
    with pytest.raises(InvalidArgumentError, match="set by the sharded buffer"):
        ShardServer(str(tmp_path), 0, 1, 7, {"auto_save": False})


@pytest.mark.parametrize("state", ["between_renames", "staged_only", "retired_only"])
def test_recovery_finishes_or_undoes_an_interrupted_replacement(tmp_path, state):
    root = tmp_path / "root"
    old = checkpoint_of(root / "rank_0", [1, 2])
    checkpoint_of(root / ".rank_0.incoming", [7])
    if state == "between_renames":  # crashed right after the commit point
        os.rename(old, root / ".rank_0.retired")
        expected = [7]
    elif state == "staged_only":  # crashed before it: the load never happened
        expected = [1, 2]
    else:  # retired but nothing staged (cannot roll forward): put it back
        os.rename(old, root / ".rank_0.retired")
        import shutil

        shutil.rmtree(root / ".rank_0.incoming")
        expected = [1, 2]
    ShardServer(str(root), 0, 1, 7, {}).stop()
    assert codes_in(root / "rank_0") == expected
    assert listing(root) == ["rank_0"]


CHILD = textwrap.dedent(
    """
    import sys
    from rlinf_replay_buffer.distributed.shard import ShardServer
    root, a, b = sys.argv[1:4]
    shard = ShardServer(root, 0, 1, 7, {})
    while True:
        for src in (a, b):
            shard.prepare_load(src)
            shard.commit()
            print("committed", src, flush=True)
    """
)


def test_a_shard_killed_while_replacing_its_directory_holds_one_share_whole(tmp_path):
    a = checkpoint_of(tmp_path / "a", [1, 2, 3])
    b = checkpoint_of(tmp_path / "b", [7, 8])
    root = tmp_path / "root"
    rng = random.Random(5)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    kills = int(os.environ.get("RLINF_SHARD_KILLS", "8"))
    for _ in range(kills):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root), str(a), str(b)],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        assert child.stdout.readline().startswith("committed")  # running and past its first commit
        time.sleep(rng.uniform(0.0, 0.15))
        child.send_signal(signal.SIGKILL)
        child.wait()
        shard = ShardServer(str(root), 0, 1, 7, {"sample_window_size": 0})  # the restart
        assert codes_in(root / "rank_0") in ([1, 2, 3], [7, 8])
        assert shard.buffer.size in (2, 3)
        shard.stop()
        assert listing(root) == ["rank_0"]


# -- wire -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.bool, torch.uint8, torch.float16, torch.int64]
)
def test_tensors_survive_the_wire(dtype):
    t = (torch.arange(24) % 5).to(dtype).reshape(2, 3, 4)
    back = decode(encode(t))
    assert back.dtype == dtype and torch.equal(back, t)
    strided = t.transpose(0, 2)
    assert torch.equal(decode(encode(strided)), strided)


def test_a_trajectory_survives_the_wire():
    t = coded_trajectory(3, n=4, e=1, num_envs=2, layout="rlinf")
    back = decode_trajectory(encode_trajectory(t))
    a, b = (
        TrajectoryReplayBuffer(sample_window_size=0, seed=1),
        TrajectoryReplayBuffer(sample_window_size=0, seed=1),
    )
    a.add_trajectories([t])
    b.add_trajectories([back])
    sa, sb = a.sample(16), b.sample(16)
    assert torch.equal(sa["actions"], sb["actions"])
    assert torch.equal(sa["curr_obs"]["main_images"], sb["curr_obs"]["main_images"])


def test_an_unknown_dtype_name_is_refused():
    array, _ = encode(torch.zeros(2, dtype=torch.int16))
    with pytest.raises(InvalidTrajectoryError, match="unknown tensor dtype"):
        decode((array, "os.system"))


def _shard_rows(values: list[float]) -> dict[tuple[str, ...], object]:
    return {("rewards",): encode(torch.tensor(values).reshape(-1, 1))}


def test_assembly_puts_every_shard_row_once_at_random_positions():
    """Shard 0's rows are 0..29, shard 1's 100..109: a concatenation in either order (rows
    grouped by shard) forms exactly two runs of labels and keeps shard 1 at one end."""
    import numpy as np

    rng = np.random.default_rng(0)
    first, second = [float(i) for i in range(30)], [float(100 + i) for i in range(10)]
    parts = [_shard_rows(first), _shard_rows(second)]
    hits = np.zeros(40)
    for _ in range(400):
        values = assemble(parts, np.array([30, 10]), rng)["rewards"].flatten().tolist()
        assert sorted(values) == first + second  # every row exactly once
        labels = np.array([v >= 100 for v in values])
        assert 1 + int((labels[1:] != labels[:-1]).sum()) > 2, values  # not grouped by shard
        hits += labels
    # each position holds a shard-1 row a quarter of the time (100 of 400, sd ~9)
    assert hits.min() > 60 and hits.max() < 140, hits


def test_assembly_refuses_shards_with_different_fields():
    import numpy as np

    rng = np.random.default_rng(0)
    zeros = {("rewards",): encode(torch.zeros(30, 1))}
    other = {("actions",): encode(torch.ones(10, 1))}
    with pytest.raises(InvalidTrajectoryError, match="different data for rewards"):
        assemble([zeros, other], np.array([30, 10]), rng)


def test_string_keys_route_the_same_in_every_process():
    code = (
        "from rlinf_replay_buffer.distributed.routing import shard_of_key; print(shard_of_key('robot-7', 5))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(out) == shard_of_key("robot-7", 5)
    with pytest.raises(InvalidArgumentError):
        shard_of_key(True, 2)


def test_a_commit_without_a_staged_directory_is_refused(tmp_path):
    (tmp_path / "rank_0").mkdir()
    with pytest.raises(BufferDirectoryError, match="no staged directory"):
        shares.commit(str(tmp_path), 0)


def test_a_commit_that_fails_midway_leaves_a_working_shard(tmp_path, monkeypatch):
    ckpt = checkpoint_of(tmp_path / "ckpt", [5, 6])
    shard = ShardServer(str(tmp_path / "root"), 0, 1, 7, {"sample_window_size": 0})
    shard.add([encode_trajectory(traj(40))])
    shard.prepare_load(str(ckpt))
    real_rename = os.rename
    calls = []

    def failing_rename(src, dst):
        calls.append(src)
        if len(calls) == 2:  # rank_k is already retired: the second rename fails
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(shares.os, "rename", failing_rename)
    with pytest.raises(OSError, match="No space"):
        shard.commit()
    monkeypatch.setattr(shares.os, "rename", real_rename)
    assert shard.recovered == "forward"  # past the commit point: the load is finished
    assert shard.buffer.size == 2 and codes_in(tmp_path / "root" / "rank_0") == [5, 6]
    shard.add([encode_trajectory(traj(41))])  # and it works
    assert shard.buffer.size == 3
