"""The sharded buffer over several Ray *nodes*: three raylets on this machine (Ray's own
multi-node test cluster), shards pinned to nodes, and a whole node taken away."""

from __future__ import annotations

import time
import warnings

import pytest
from conftest import assert_aligned, coded_trajectory

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

from rlinf_replay_buffer import (  # noqa: E402
    RayTrajectoryReplayBuffer,
    ShardRestartedWarning,
    ShardUnavailableError,
)


@pytest.fixture(scope="module")
def cluster():
    """A head node that runs no shard (no "shard" resource) and two worker nodes with room for
    one shard each."""
    c = cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False},  # 2 CPUs in all
    )
    workers = [c.add_node(num_cpus=1, resources={"shard": 1}) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False, configure_logging=False)
    yield c, workers
    ray.shutdown()
    c.shutdown()


def traj(i):
    return coded_trajectory(i, n=4, e=2, num_envs=2, layout="aligned", images=False)


def codes(batch):
    return {int(c) // 1000 for c in batch["curr_obs"]["states"][:, 0].tolist()}


def test_shards_pinned_to_nodes_live_and_answer_there(cluster, tmp_path):
    c, workers = cluster
    nodes = [w.node_id for w in workers]
    buf = RayTrajectoryReplayBuffer(
        str(tmp_path / "buf"),
        2,
        sample_window_size=0,
        actor_options=lambda k: {
            "num_cpus": 0.5,
            "scheduling_strategy": NodeAffinitySchedulingStrategy(nodes[k], soft=False),
        },
    )
    try:
        buf.add_trajectories([traj(i) for i in range(6)])
        assert [info["node_id"] for info in buf.wait_until_ready(60)] == nodes
        batch = buf.sample(2000)
        assert_aligned(batch)
        assert codes(batch) == set(range(6))
    finally:
        buf.shutdown()


def test_a_lost_node_takes_its_shard_and_a_new_node_brings_it_back(cluster, tmp_path):
    """Shards need a "shard" resource, one per worker node. When a worker node goes, its shard
    cannot run anywhere until a node with the resource joins; meanwhile calls fail clearly, and
    then it restarts there from its directory (a shared file system here) with every flushed
    trajectory."""
    c, workers = cluster
    buf = RayTrajectoryReplayBuffer(
        str(tmp_path / "buf"),
        2,
        sample_window_size=0,
        actor_options={"num_cpus": 0.5, "resources": {"shard": 1}},
        call_timeout=20,
    )
    try:
        buf.add_trajectories([traj(i) for i in range(6)])
        buf.flush()
        placed = [info["node_id"] for info in buf.wait_until_ready(60)]
        assert sorted(placed) == sorted(w.node_id for w in workers)  # one shard per worker node
        victim = next(w for w in workers if w.node_id == placed[0])
        c.remove_node(victim, allow_graceful=False)
        workers.remove(victim)
        deadline = time.monotonic() + 60  # the node's processes notice its raylet is gone
        with pytest.raises(ShardUnavailableError):
            while time.monotonic() < deadline:
                buf.sample(64)
                time.sleep(0.05)
        workers.append(c.add_node(num_cpus=1, resources={"shard": 1}))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ShardRestartedWarning)
            infos = buf.wait_until_ready(120)
        assert sum(i["size"] for i in infos) == 6
        assert codes(buf.sample(2000)) == set(range(6))
    finally:
        buf.shutdown()
