"""``TrajectoryBuilder``: steps of ``B`` envs in, complete ``[T, B, ...]`` trajectories out, the same
as the whole-tensor trajectories they were cut from (the same files on disk, the same samples);
a step that does not fit is refused, naming the field, and changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TrackedBuffer as TrajectoryReplayBuffer
from conftest import (
    assert_aligned,
    assert_same_batch,
    assert_same_stored_data,
    assert_same_trajectory,
    coded_trajectory,
)

from rlinf_replay_buffer import InvalidArgumentError, InvalidTrajectoryError, Trajectory, TrajectoryBuilder

B = 2


def whole(i: int, n: int = 4, e: int = 2) -> Trajectory:
    """Coded trajectory ``i`` in the aligned layout (``T = n * e`` steps), one step per row."""
    return coded_trajectory(i, n=n, e=e, num_envs=B, layout="aligned")


def steps_of(traj: Trajectory, as_numpy: bool = False) -> list[dict]:
    """The trajectory's steps as :meth:`TrajectoryBuilder.add_step` takes them: ``[B, ...]``."""

    def cut(value: torch.Tensor, t: int):
        return value[t].numpy().copy() if as_numpy else value[t].clone()

    data = {k: v for k, v in traj.to_dict().items() if isinstance(v, torch.Tensor | dict)}
    return [
        {
            k: {s: cut(x, t) for s, x in v.items()} if isinstance(v, dict) else cut(v, t)
            for k, v in data.items()
        }
        for t in range(traj.rewards.shape[0])
    ]


def built(trajectories: list[Trajectory], as_numpy: bool = False, **options) -> list[Trajectory]:
    """What a builder returns when fed the trajectories' steps in order."""
    builder = TrajectoryBuilder(B, **options)
    out = [t for traj in trajectories for step in steps_of(traj, as_numpy) if (t := builder.add_step(step))]
    last = builder.finish()
    return out + ([last] if last is not None else [])


@pytest.mark.parametrize("as_numpy", [False, True], ids=["tensors", "numpy"])
@pytest.mark.parametrize("fmt", ["pt", "pkl", "segment"])
def test_the_builder_against_whole_tensor_adds_identical_files_and_samples(tmp_path, fmt, as_numpy):
    originals = [whole(i) for i in range(3)]
    from_steps = built(originals, as_numpy, num_steps=8, max_episode_length=4)
    assert len(from_steps) == 3
    buffers = {}
    for name, trajectories in (("whole", originals), ("steps", from_steps)):
        buf = TrajectoryReplayBuffer(
            seed=11, auto_save=True, auto_save_path=str(tmp_path / name), trajectory_format=fmt, cache_size=1
        )
        assert buf.add_trajectories(trajectories) == [0, 1, 2]
        buffers[name] = buf
    for num_chunks in (64, 5):
        batch = buffers["whole"].sample(num_chunks)
        assert_same_batch(batch, buffers["steps"].sample(num_chunks))
        assert_aligned(batch, n=4)
    for buf in buffers.values():
        buf.close()
    assert_same_stored_data(tmp_path / "whole", tmp_path / "steps")


def test_every_num_steps_a_trajectory_comes_out_and_finish_returns_the_rest():
    steps = steps_of(whole(0, n=5, e=1))  # 5 steps
    builder = TrajectoryBuilder(B, num_steps=2, model_weights_id="w-1", model_update_count=3)
    out = [builder.add_step(step) for step in steps]
    assert [t is not None for t in out] == [False, True, False, True, False]
    assert builder.pending_steps == len(builder) == 1
    rest = builder.finish()
    assert builder.pending_steps == 0 and builder.finish() is None
    chunks = [out[1], out[3], rest]
    assert [int(t.rewards.shape[0]) for t in chunks] == [2, 2, 1]
    assert all(
        (t.model_weights_id, t.model_update_count, t.max_episode_length) == ("w-1", 3, None) for t in chunks
    )
    expected = whole(0, n=5, e=1)
    joined = {
        "rewards": torch.cat([t.rewards for t in chunks]),
        "states": torch.cat([t.curr_obs["states"] for t in chunks]),
        "dones": torch.cat([t.dones for t in chunks]),
    }
    assert torch.equal(joined["rewards"], expected.rewards)
    assert torch.equal(joined["states"], expected.curr_obs["states"])
    assert torch.equal(joined["dones"], expected.dones) and joined["dones"].dtype == torch.bool


def test_without_num_steps_only_finish_ends_a_trajectory():
    original = whole(4, n=3, e=3)
    builder = TrajectoryBuilder(B, max_episode_length=3)
    assert builder.num_steps is None and builder.num_envs == B
    assert all(builder.add_step(step) is None for step in steps_of(original))
    assert_same_trajectory(builder.finish(), original)


def test_numpy_steps_and_one_dimensional_values_make_the_same_trajectory_as_tensors():
    rng = np.random.default_rng(0)
    rewards, flags = rng.random((6, B)).astype(np.float32), rng.random((6, B)) > 0.5
    images = rng.integers(0, 256, (6, B, 8, 8, 3), dtype=np.uint8)
    builder = TrajectoryBuilder(B, num_steps=6, model_weights_id="w", model_update_count=0)
    for t in range(6):
        out = builder.add_step({"rewards": rewards[t], "dones": flags[t], "curr_obs": {"rgb": images[t]}})
    expected = Trajectory(
        model_weights_id="w", model_update_count=0, rewards=rewards, dones=flags, curr_obs={"rgb": images}
    )
    assert_same_trajectory(out, expected)
    buf = TrajectoryReplayBuffer(seed=1, sample_window_size=0)
    buf.add_trajectories([out])
    assert_same_trajectory(buf.get_trajectory(0), expected)


def test_each_step_is_copied_so_the_caller_may_reuse_its_arrays():
    buffer = np.zeros(B, dtype=np.float32)
    tensor = torch.zeros(B, 3)
    builder = TrajectoryBuilder(B, num_steps=3)
    for t in range(3):
        buffer[:] = t
        tensor.fill_(10 * t)
        out = builder.add_step({"rewards": buffer, "curr_obs": {"s": tensor}})
    assert out.rewards[:, 0].tolist() == [0.0, 1.0, 2.0]
    assert out.curr_obs["s"][:, 0, 0].tolist() == [0.0, 10.0, 20.0]
    assert not np.shares_memory(out.rewards.numpy(), buffer)


def good_step() -> dict:
    return {
        "rewards": torch.ones(B, 1),
        "dones": torch.zeros(B, 1, dtype=torch.bool),
        "curr_obs": {"states": torch.zeros(B, 3)},
    }


def changed(**parts) -> dict:
    step = good_step()
    for name, value in parts.items():
        if "." in name:
            top, sub = name.split(".")
            step[top] = {**step[top], sub: value}
            if value is None:
                del step[top][sub]
        elif value is None:
            del step[name]
        else:
            step[name] = value
    return step


BAD_STEPS = [
    (
        "wrong-B",
        changed(rewards=torch.ones(B + 1, 1)),
        r"step 1: rewards has shape \(3, 1\); .*B = num_envs = 2",
    ),
    (
        "scalar",
        changed(rewards=torch.tensor(1.0)),
        r"rewards has shape \(\); a step's values are \[B, \.\.\.\]",
    ),
    (
        "dtype",
        changed(**{"curr_obs.states": torch.zeros(B, 3, dtype=torch.float64)}),
        r"curr_obs\.states is float64 with per-env shape \[3\]; expected float32 with \[3\], as in the first",
    ),
    (
        "shape",
        changed(**{"curr_obs.states": torch.zeros(B, 4)}),
        r"curr_obs\.states is float32 with per-env shape \[4\]; expected float32 with \[3\]",
    ),
    (
        "missing",
        changed(dones=None),
        r"fields differ from the first step's: missing \['dones'\], unexpected none",
    ),
    (
        "extra",
        changed(**{"curr_obs.rgb": torch.zeros(B, 2, 2, 3, dtype=torch.uint8)}),
        r"missing none, unexpected \['curr_obs\.rgb'\]",
    ),
    ("unknown", changed(reward=torch.ones(B, 1)), r"unknown fields \['reward'\]; a step holds actions, "),
    (
        "metadata",
        changed(model_weights_id="w"),
        r"unknown fields \['model_weights_id'\].*arguments of TrajectoryBuilder",
    ),
    ("no-rewards", changed(rewards=None), r"step 1: rewards is missing; every step needs rewards"),
    (
        "uint16",
        changed(actions=np.zeros((B, 2), dtype=np.uint16)),
        r"actions has dtype uint16, which not every trajectory format can store",
    ),
    ("list", changed(rewards=[1.0, 1.0]), r"rewards is a list, not a torch\.Tensor or NumPy array"),
    ("bad-key", changed(**{"curr_obs.a/b": torch.zeros(B, 3)}), r"curr_obs has key 'a/b'"),
    (
        "not-a-dict",
        [("rewards", torch.ones(B, 1))],
        r"a step is a dict of \[B, \.\.\.\] tensors or arrays, got list",
    ),
]


@pytest.mark.parametrize("bad,message", [b[1:] for b in BAD_STEPS], ids=[b[0] for b in BAD_STEPS])
def test_a_step_that_does_not_fit_is_refused_naming_the_field_and_changes_nothing(bad, message):
    builder = TrajectoryBuilder(B, num_steps=3, model_weights_id="w", model_update_count=0)
    reference = TrajectoryBuilder(B, num_steps=3, model_weights_id="w", model_update_count=0)
    assert builder.add_step(good_step()) is None and reference.add_step(good_step()) is None
    with pytest.raises(InvalidTrajectoryError, match=message):
        builder.add_step(bad)
    assert builder.pending_steps == 1
    for _ in range(2):
        got, want = builder.add_step(good_step()), reference.add_step(good_step())
    assert_same_trajectory(got, want)


def test_a_refused_first_step_fixes_no_fields():
    builder = TrajectoryBuilder(B)
    with pytest.raises(InvalidTrajectoryError, match="rewards has dtype uint32"):
        builder.add_step({"rewards": np.zeros(B, dtype=np.uint32), "dones": np.zeros(B, dtype=bool)})
    builder.add_step({"rewards": np.zeros(B, dtype=np.float32)})  # other fields: fine, nothing was fixed
    assert builder.pending_steps == 1 and set(builder.finish().to_dict()) == {"rewards"}


@pytest.mark.parametrize(
    "options,message",
    [
        ({"num_envs": 0}, "num_envs must be an int >= 1"),
        ({"num_envs": B, "num_steps": 0}, "num_steps must be an int >= 1, got 0"),
        ({"num_envs": B, "max_episode_length": True}, "max_episode_length must be an int >= 0 or None"),
        ({"num_envs": B, "model_weights_id": "../w"}, r"model_weights_id '\.\./w' is not a safe id"),
        ({"num_envs": B, "model_update_count": 2**48}, r"model_update_count must be an int in \[0, "),
    ],
)
def test_bad_arguments_are_refused(options, message):
    with pytest.raises(InvalidArgumentError, match=message):
        TrajectoryBuilder(**options)


def test_the_builder_is_exported_where_the_buffer_is():
    import rlinf.data.replay_buffer as rlinf_module
    import rlinf_replay_buffer

    assert rlinf_module.TrajectoryBuilder is rlinf_replay_buffer.TrajectoryBuilder is TrajectoryBuilder
    assert "TrajectoryBuilder" in rlinf_replay_buffer.__all__
