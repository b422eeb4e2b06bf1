"""NumPy arrays wherever tensors are accepted: a trajectory of arrays is stored and sampled exactly
as the same trajectory of tensors, arrays are shared without a copy where a tensor can describe
them and copied otherwise (read-only, other byte order, negative strides), and the dtypes refused
as tensors are refused as arrays with the same message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TrackedBuffer as TrajectoryReplayBuffer
from conftest import assert_same_batch, assert_same_stored_data, assert_same_trajectory, coded_trajectory

from rlinf_replay_buffer import InvalidTrajectoryError, Trajectory
from rlinf_replay_buffer.trajectory import align, as_tensor


def numpy_version(traj: Trajectory) -> Trajectory:
    """The same trajectory with every tensor a NumPy array (new memory)."""
    data = {}
    for name, value in traj.to_dict().items():
        if isinstance(value, dict):
            data[name] = {k: v.numpy().copy() for k, v in value.items()}
        elif isinstance(value, torch.Tensor):
            data[name] = value.numpy().copy()
        else:
            data[name] = value
    return Trajectory.from_dict(data)


@pytest.mark.parametrize("fmt", ["pt", "pkl", "segment"])
def test_numpy_trajectories_store_the_same_bytes_and_sample_the_same_as_tensors(tmp_path, fmt):
    tensors = [coded_trajectory(i, e=1 + i % 2) for i in range(3)]  # RLinf's layout and aligned
    arrays = [numpy_version(t) for t in tensors]
    buffers = []
    for name, trajectories in (("tensors", tensors), ("arrays", arrays)):
        buf = TrajectoryReplayBuffer(
            seed=5, auto_save=True, auto_save_path=str(tmp_path / name), trajectory_format=fmt, cache_size=1
        )
        assert buf.add_trajectories(trajectories) == [0, 1, 2]
        buf.flush()
        buffers.append(buf)
    for num_chunks in (64, 7):
        assert_same_batch(buffers[0].sample(num_chunks), buffers[1].sample(num_chunks))
    for buf in buffers:
        buf.close()
    assert_same_stored_data(tmp_path / "tensors", tmp_path / "arrays")


def test_the_buffer_copies_arrays_on_add_so_the_caller_may_reuse_them():
    kept = coded_trajectory(0, layout="aligned", weights_id="w", model_update_count=0)
    traj = numpy_version(kept)
    buf = TrajectoryReplayBuffer(seed=5, sample_window_size=0)
    buf.add_trajectories([traj])
    traj.rewards[...] = -1
    traj.curr_obs["states"][...] = -1
    assert_same_trajectory(buf.get_trajectory(0), kept)


def test_writeable_native_arrays_are_shared_without_a_copy():
    rewards = np.arange(12, dtype=np.float32).reshape(6, 2)
    images = np.zeros((6, 2, 4, 4, 3), dtype=np.uint8)
    columns = align(Trajectory(rewards=rewards, curr_obs={"rgb": images[:, :, ::2]})).columns
    assert columns[("rewards",)].data_ptr() == rewards.ctypes.data
    assert columns[("curr_obs", "rgb")].data_ptr() == images.ctypes.data  # a strided view too
    assert as_tensor(rewards, "rewards").data_ptr() == rewards.ctypes.data


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(6, 2)[::-1],  # a negative stride
        np.arange(12, dtype=">f4").reshape(6, 2),  # big-endian
        np.broadcast_to(np.arange(2, dtype=np.int16), (6, 2)),  # read-only
        np.zeros(12, dtype=[("a", "<f4"), ("b", "<i2")])["a"].reshape(6, 2),  # strides not of the item size
    ],
    ids=["negative-stride", "big-endian", "read-only", "structured-field"],
)
def test_arrays_a_tensor_cannot_describe_are_copied_with_their_values(array):
    tensor = as_tensor(array, "rewards")
    assert tensor.dtype == getattr(torch, array.dtype.name)
    assert tensor.tolist() == array.tolist()
    assert not np.shares_memory(tensor.numpy(), array)
    column = align(Trajectory(rewards=array)).columns[("rewards",)]
    assert column.tolist() == array.tolist()


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "uint64"])
def test_unstorable_dtypes_are_refused_with_the_message_given_for_tensors(dtype):
    def refusal(rewards) -> str:
        buf = TrajectoryReplayBuffer(seed=5)
        with pytest.raises(
            InvalidTrajectoryError, match=f"trajectory 0: rewards has dtype {dtype}, which not"
        ) as err:
            buf.add_trajectories([Trajectory(rewards=rewards)])
        return str(err.value)

    array = np.zeros((4, 2), dtype=dtype)
    assert refusal(array) == refusal(torch.from_numpy(array))


def test_float8_from_ml_dtypes_is_refused_as_for_tensors_and_bfloat16_accepted():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    buf = TrajectoryReplayBuffer(seed=5, sample_window_size=0)
    messages = []
    for rewards in (
        np.zeros((4, 2), dtype=ml_dtypes.float8_e4m3fn),
        torch.zeros(4, 2, dtype=torch.float8_e4m3fn),
    ):
        with pytest.raises(InvalidTrajectoryError, match="rewards has dtype float8_e4m3fn") as err:
            buf.add_trajectories([Trajectory(rewards=rewards)])
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    values = np.array([[0.5, -2.0]] * 4, dtype=ml_dtypes.bfloat16)
    buf.add_trajectories([Trajectory(rewards=values)])
    assert buf.get_trajectory(0).rewards.dtype == torch.bfloat16
    assert buf.get_trajectory(0).rewards.tolist() == [[0.5, -2.0]] * 4


@pytest.mark.parametrize(
    "array", [np.zeros((4, 2), dtype=object), np.array([["a", "b"]] * 4), np.zeros((4, 2), dtype="M8[s]")]
)
def test_arrays_of_dtypes_torch_has_not_are_refused_naming_the_field(array):
    buf = TrajectoryReplayBuffer(seed=5)
    rewards = torch.zeros(4, 2)
    with pytest.raises(
        InvalidTrajectoryError,
        match=r"trajectory 0: curr_obs\.x is a NumPy array of dtype .*, which has no torch dtype",
    ):
        buf.add_trajectories([Trajectory(rewards=rewards, curr_obs={"x": array})])
    assert buf.size == 0


def test_numpy_scalars_and_lists_are_still_refused():
    for value in (np.float32(1.0), [[1.0, 2.0]] * 4):
        with pytest.raises(
            InvalidTrajectoryError, match=r"rewards is a \w+, not a torch\.Tensor or NumPy array"
        ):
            align(Trajectory(rewards=value))
