"""Unit tests of validation and row alignment (:mod:`rlinf_replay_buffer.trajectory`).

The coded trajectories of ``conftest`` carry in every row the code of the transition it belongs
to, and poison (-7) in the extra rows of RLinf's layout, so "aligned correctly" means: the
aligned columns of an RLinf-layout trajectory equal the columns of the same trajectory written
in the aligned layout.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
from conftest import POISON, coded_trajectory

from rlinf_replay_buffer import Trajectory as PublicTrajectory
from rlinf_replay_buffer import TrajectoryReplayBuffer
from rlinf_replay_buffer.errors import InvalidTrajectoryError
from rlinf_replay_buffer.trajectory import (
    ACTION_LIKE,
    DONE_LIKE,
    NO_VERSIONS_WEIGHTS_ID,
    STEP_FIELDS,
    AlignedTrajectory,
    Trajectory,
    align,
    align_column,
    epochs_of,
    source_steps,
)

LAYOUTS = ("rlinf", "aligned", "done_only")


def assert_same_columns(got: AlignedTrajectory, want: AlignedTrajectory) -> None:
    assert set(got.columns) == set(want.columns)
    for key, tensor in want.columns.items():
        assert got.columns[key].dtype == tensor.dtype, key
        assert torch.equal(got.columns[key], tensor), f"column {key} differs"


def raw_rows(traj: Trajectory, name: str, sub: str | None = None) -> int:
    value = getattr(traj, name)
    return int((value[sub] if sub else value).shape[0])


# -- layouts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("e", [1, 2, 3])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_aligns_to_the_same_columns(layout, e):
    n, num_envs = 4, 3
    traj = coded_trajectory(5, n=n, e=e, num_envs=num_envs, layout=layout)
    reference = align(coded_trajectory(5, n=n, e=e, num_envs=num_envs, layout="aligned"))
    got = align(traj)
    assert got.num_steps == n * e
    assert got.num_envs == num_envs
    assert got.num_transitions == n * e * num_envs
    for key, tensor in got.columns.items():
        assert tuple(tensor.shape[:2]) == (n * e, num_envs), key
    # the extra rows really were there in the input
    extra_actions = e if layout == "rlinf" else 0
    extra_dones = e if layout in ("rlinf", "done_only") else 0
    assert raw_rows(traj, "actions") == n * e + extra_actions
    assert raw_rows(traj, "forward_inputs", "action") == n * e + extra_actions
    assert raw_rows(traj, "dones") == n * e + extra_dones
    assert raw_rows(traj, "rewards") == n * e
    # the aligned values are exactly the ones of the aligned layout (no poison row kept)
    assert_same_columns(got, reference)
    for tensor in got.columns.values():
        if tensor.is_floating_point():
            assert not (tensor == POISON).any()


@pytest.mark.parametrize("e", [1, 2, 3])
def test_rlinf_layout_pairs_observation_action_reward_and_done(e):
    n = 5
    got = align(coded_trajectory(2, n=n, e=e, num_envs=2, layout="rlinf")).columns
    code = got[("curr_obs", "states")][..., 0]
    expected_codes = torch.tensor([2000 + 100 * k + s for k in range(e) for s in range(n)])
    assert torch.equal(code[:, 0], expected_codes.float())
    assert torch.equal(got[("actions",)][..., 0], code)
    assert torch.equal(got[("forward_inputs", "action")][..., 0], code)
    assert torch.equal(got[("prev_logprobs",)][..., 0], code)
    assert torch.equal(got[("rewards",)][..., 0], code)
    assert torch.equal(got[("next_obs", "states")][..., 0], code + 1)
    last = (code % 100) == n - 1
    assert torch.equal(got[("dones",)][..., 0], last)
    assert torch.equal(got[("truncations",)][..., 0], last)
    assert not got[("terminations",)].any()


def test_done_only_layout_keeps_action_rows_and_drops_first_done_row():
    n, e = 3, 2
    traj = coded_trajectory(1, n=n, e=e, layout="done_only")
    assert raw_rows(traj, "dones") == (n + 1) * e
    assert raw_rows(traj, "actions") == n * e
    got = align(traj)
    assert torch.equal(got.columns[("actions",)], traj.actions)
    assert torch.equal(got.columns[("dones",)][:, 0, 0], torch.tensor([False, False, True] * e))


def test_demonstration_layout_without_policy_fields():
    """Demonstrations: n*e rows everywhere, typically no logprobs/versions/forward_inputs."""
    traj = coded_trajectory(3, n=6, e=2, num_envs=1, layout="aligned", logprobs=False, images=False)
    traj.versions = None
    traj.forward_inputs = None
    traj.intervene_flags = None
    got = align(traj)
    assert got.num_steps == 12 and got.num_envs == 1
    assert ("versions",) not in got.columns
    assert ("prev_logprobs",) not in got.columns
    assert not any(key[0] == "forward_inputs" for key in got.columns)
    assert got.model_weights_id == NO_VERSIONS_WEIGHTS_ID
    assert got.model_update_count == 0
    for key, tensor in got.columns.items():
        raw = getattr(traj, key[0]) if len(key) == 1 else getattr(traj, key[0])[key[1]]
        assert torch.equal(tensor, raw), key


def test_aligned_layout_columns_are_views_of_the_input():
    traj = coded_trajectory(0, layout="aligned")
    got = align(traj)
    assert got.columns[("rewards",)].data_ptr() == traj.rewards.data_ptr()
    assert got.columns[("curr_obs", "states")].data_ptr() == traj.curr_obs["states"].data_ptr()


def test_align_accepts_the_plain_dict_form():
    traj = coded_trajectory(4, n=3, e=3, layout="rlinf")
    assert_same_columns(align(traj.to_dict()), align(traj))
    again = Trajectory.from_dict({**traj.to_dict(), "unrelated": 1})
    assert_same_columns(align(again), align(traj))
    assert PublicTrajectory is Trajectory


def test_aligned_flat_is_step_major():
    traj = coded_trajectory(0, n=2, e=2, num_envs=3, layout="rlinf")
    got = align(traj)
    flat = got.flat()
    env = flat[("curr_obs", "env_ids")][:, 0]
    code = flat[("curr_obs", "states")][:, 0]
    assert torch.equal(env, torch.arange(3).repeat(4))
    assert torch.equal(code, torch.tensor([0.0, 1.0, 100.0, 101.0]).repeat_interleave(3))


# -- which row per epoch is dropped ----------------------------------------------------------


def _row_numbered(rows: int, num_envs: int = 2) -> torch.Tensor:
    """A tensor ``[rows, B, 1]`` whose every element is its row number."""
    return torch.arange(rows, dtype=torch.float64)[:, None, None].expand(rows, num_envs, 1).clone()


def _kept_rows(role: str, n: int, e: int) -> list[int]:
    kept = []
    for k in range(e):
        block = list(range(k * (n + 1), (k + 1) * (n + 1)))
        kept += block[1:] if role == "done" else block[:-1]
    return kept


@pytest.mark.parametrize("n,e", [(1, 1), (4, 1), (4, 2), (3, 3), (1, 4)])
def test_done_like_fields_drop_the_first_row_and_action_like_the_last(n, e):
    T = n * e
    data = {"rewards": _row_numbered(T)}
    for name in STEP_FIELDS:
        if name != "rewards":
            data[name] = _row_numbered(T + e)
    data["curr_obs"] = {"x": _row_numbered(T)}
    data["next_obs"] = {"x": _row_numbered(T)}
    data["forward_inputs"] = {"action": _row_numbered(T + e), "tokens": _row_numbered(T + e)}
    got = align(data).columns
    done_rows = torch.tensor(_kept_rows("done", n, e), dtype=torch.float64)
    action_rows = torch.tensor(_kept_rows("action", n, e), dtype=torch.float64)
    for key, tensor in got.items():
        rows = tensor[:, 0, 0]
        if key[0] in DONE_LIKE:
            assert torch.equal(rows, done_rows), key
        elif key[0] in ACTION_LIKE:
            assert torch.equal(rows, action_rows), key
        else:
            assert torch.equal(rows, torch.arange(T, dtype=torch.float64)), key
    assert {k[0] for k in got if k[0] in DONE_LIKE} == {"dones", "terminations", "truncations"}
    assert ("forward_inputs", "tokens") in got


def test_role_sets_match_the_spec():
    assert DONE_LIKE == {"dones", "terminations", "truncations"}
    assert ACTION_LIKE == {
        "actions",
        "intervene_flags",
        "versions",
        "prev_logprobs",
        "prev_values",
        "forward_inputs",
    }


# -- source_steps / epochs_of ----------------------------------------------------------------

KEYS = [
    ("dones",),
    ("terminations",),
    ("truncations",),
    ("actions",),
    ("prev_values",),
    ("versions",),
    ("forward_inputs", "action"),
    ("rewards",),
    ("curr_obs", "states"),
    ("next_obs", "main_images"),
]


@pytest.mark.parametrize("key", KEYS, ids=[".".join(k) for k in KEYS])
def test_source_steps_agrees_with_align_column_on_random_tensors(key):
    gen = torch.Generator().manual_seed(11)
    rng = np.random.default_rng(3)
    step_only = key[0] not in DONE_LIKE and key[0] not in ACTION_LIKE
    for n in range(1, 6):
        for e in range(1, 5):
            T = n * e
            extras = [0] if step_only else [0, e]
            for extra in extras:
                rows = T + extra
                B = int(rng.integers(1, 4))
                x = torch.randn((rows, B, 2, 3), generator=gen)
                src = source_steps(key, rows, T)
                assert src.dtype == np.int64
                assert src.shape == (T,)
                assert torch.equal(align_column(key, x, T), x[torch.from_numpy(src)])
                assert epochs_of(key, rows, T) == extra


def test_epochs_of_rejects_row_counts_that_fit_no_layout():
    with pytest.raises(InvalidTrajectoryError, match="curr_obs.states has 9 rows but rewards has 8"):
        epochs_of(("curr_obs", "states"), 9, 8)
    with pytest.raises(InvalidTrajectoryError, match="rewards has 8 rows but rewards has 7"):
        epochs_of(("rewards",), 8, 7)
    with pytest.raises(InvalidTrajectoryError, match="actions has 7 rows and rewards has 8"):
        epochs_of(("actions",), 7, 8)
    with pytest.raises(InvalidTrajectoryError, match="dones has 11 rows and rewards has 8"):
        epochs_of(("dones",), 11, 8)  # 3 extra rows cannot split 8 steps into equal epochs
    assert epochs_of(("dones",), 9, 8) == 1
    assert epochs_of(("forward_inputs", "x"), 12, 8) == 4


# -- validation ------------------------------------------------------------------------------


def test_mismatched_rows_are_rejected_naming_the_field():
    traj = coded_trajectory(0, n=4, e=2)
    traj.curr_obs["states"] = traj.curr_obs["states"][:-1]
    with pytest.raises(InvalidTrajectoryError, match=r"curr_obs\.states has 7 rows"):
        align(traj)
    traj = coded_trajectory(0, n=4, e=2)
    traj.actions = traj.actions[:7]
    with pytest.raises(InvalidTrajectoryError, match="actions has 7 rows"):
        align(traj)


def test_mismatched_env_dimension_is_rejected():
    traj = coded_trajectory(0, num_envs=2)
    traj.dones = traj.dones[:, :1]
    with pytest.raises(InvalidTrajectoryError, match=r"dones has B=1 .* rewards has B=2"):
        align(traj)


def test_missing_rewards_is_rejected():
    traj = coded_trajectory(0)
    traj.rewards = None
    with pytest.raises(InvalidTrajectoryError, match="rewards is missing"):
        align(traj)


@pytest.mark.parametrize("bad", [torch.zeros(8), torch.tensor(1.0)])
def test_tensors_without_env_dimension_are_rejected(bad):
    traj = coded_trajectory(0)
    traj.prev_values = bad
    with pytest.raises(InvalidTrajectoryError, match="prev_values has shape"):
        align(traj)


@pytest.mark.parametrize("bad", [[[0.0, 0.0]] * 8, 3.0, np.float32(3.0)])
def test_non_tensor_values_are_rejected(bad):
    traj = coded_trajectory(0)
    traj.rewards = bad
    with pytest.raises(InvalidTrajectoryError, match="rewards is a .*not a torch.Tensor"):
        align(traj)
    traj = coded_trajectory(0)
    traj.curr_obs["states"] = bad
    with pytest.raises(InvalidTrajectoryError, match="curr_obs.states is a"):
        align(traj)


def test_dict_fields_must_be_dicts():
    traj = coded_trajectory(0)
    traj.curr_obs = torch.zeros(8, 2, 3)
    with pytest.raises(InvalidTrajectoryError, match="curr_obs must be a dict"):
        align(traj)


def test_non_trajectory_is_rejected():
    with pytest.raises(InvalidTrajectoryError, match="expected a Trajectory, got int"):
        align(3)


def test_empty_trajectory_is_rejected():
    with pytest.raises(InvalidTrajectoryError, match="T >= 1 and B >= 1"):
        align(Trajectory(rewards=torch.zeros(0, 2, 1)))
    with pytest.raises(InvalidTrajectoryError, match="T >= 1 and B >= 1"):
        align(Trajectory(rewards=torch.zeros(3, 0, 1)))


def test_check_finite_rejects_nan_and_inf_only_when_asked():
    for value in (float("nan"), float("inf"), float("-inf")):
        traj = coded_trajectory(0, layout="rlinf")
        traj.next_obs["states"][3, 1, 0] = value
        align(traj)  # accepted by default
        with pytest.raises(InvalidTrajectoryError, match=r"next_obs\.states contains NaN or infinite"):
            align(traj, check_finite=True)


def test_error_messages_carry_the_where_prefix():
    traj = coded_trajectory(0)
    traj.rewards = None
    with pytest.raises(InvalidTrajectoryError, match="^trajectory 7: rewards is missing"):
        align(traj, where="trajectory 7: ")


# -- model_weights_id / model_update_count ---------------------------------------------------


def test_default_weights_id_without_versions_is_rlinfs_constant():
    traj = coded_trajectory(0)
    traj.versions = None
    got = align(traj)
    assert got.model_weights_id == NO_VERSIONS_WEIGHTS_ID == "e58eb380-d5b9-5265-a382-0fc33930cf3e"
    assert got.model_update_count == 0


def test_default_weights_id_and_update_count_derive_from_versions():
    def with_versions(i: int, values: torch.Tensor) -> Trajectory:
        traj = coded_trajectory(i, n=4, e=2, layout="rlinf")
        traj.versions = values[:, None, None].expand(10, 2, 1).clone()
        return traj

    threes = torch.full((10,), 3.0)
    a = align(with_versions(0, threes))
    b = align(with_versions(9, threes))
    c = align(with_versions(0, torch.full((10,), 4.0)))
    assert a.model_weights_id == b.model_weights_id  # same versions: same id, whatever the data
    assert a.model_weights_id != c.model_weights_id
    assert a.model_weights_id != NO_VERSIONS_WEIGHTS_ID
    assert str(uuid.UUID(a.model_weights_id)) == a.model_weights_id
    assert a.model_update_count == 3
    assert c.model_update_count == 4
    mixed = align(with_versions(0, torch.tensor([1.0, 1, 1, 1, 1, 2, 2, 5, 2, 2])))
    assert mixed.model_update_count == 5
    negative = align(with_versions(0, torch.full((10,), -1.0)))
    assert negative.model_update_count == 0


def test_explicit_weights_id_and_update_count_are_kept():
    traj = coded_trajectory(0, weights_id="3da470c4-34f9-5bdb-9175-29591bcef469", model_update_count=17)
    got = align(traj)
    assert got.model_weights_id == "3da470c4-34f9-5bdb-9175-29591bcef469"
    assert got.model_update_count == 17
    assert got.max_episode_length == 4


@pytest.mark.parametrize("bad", ["../x", "/abs", "a/b", "..", "a\\b", "x" * 200, ".hidden", "a b", 5])
def test_unsafe_model_weights_id_is_rejected(bad):
    traj = coded_trajectory(0)
    traj.model_weights_id = bad
    with pytest.raises(InvalidTrajectoryError, match="is not a safe id"):
        align(traj)


def test_an_empty_model_weights_id_is_kept_as_rlinf_files_it(tmp_path):
    """RLinf's Trajectory defaults to model_weights_id="" and names its file trajectory_{id}_.pt."""
    traj = coded_trajectory(0, weights_id="")
    assert align(traj).model_weights_id == ""
    with TrajectoryReplayBuffer(auto_save=True, auto_save_path=str(tmp_path / "buf")) as buf:
        buf.add_trajectories([traj])
    names = sorted(p.name for p in (tmp_path / "buf").glob("trajectory_*.pt"))
    assert names == ["trajectory_0__1.pt"]  # the update count comes from versions
    reloaded = TrajectoryReplayBuffer(sample_window_size=0)
    reloaded.load_checkpoint(str(tmp_path / "buf"))
    assert reloaded.size == 1 and reloaded.sample(4)["rewards"].shape[0] == 4


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_bad_model_update_count_is_rejected(bad):
    traj = coded_trajectory(0)
    traj.model_update_count = bad
    with pytest.raises(InvalidTrajectoryError, match="model_update_count must be a non-negative int"):
        align(traj)


@pytest.mark.parametrize("bad", [4.0, "4", True])
def test_bad_max_episode_length_is_rejected(bad):
    traj = coded_trajectory(0)
    traj.max_episode_length = bad
    with pytest.raises(InvalidTrajectoryError, match="max_episode_length must be an int"):
        align(traj)


def test_a_trajectory_of_another_dataclass_is_accepted():
    """RLinf's rollout code builds its own Trajectory dataclass: its fields are read as is."""
    import dataclasses

    @dataclasses.dataclass
    class ForeignTrajectory:
        max_episode_length: int = 3
        model_update_count: int = 2
        actions: torch.Tensor | None = None
        rewards: torch.Tensor | None = None
        dones: torch.Tensor | None = None
        curr_obs: dict = dataclasses.field(default_factory=dict)
        next_obs: dict = dataclasses.field(default_factory=dict)

    steps, envs = 3, 2
    foreign = ForeignTrajectory(
        actions=torch.arange(steps * envs * 2.0).reshape(steps, envs, 2),
        rewards=torch.ones(steps, envs, 1),
        dones=torch.zeros(steps, envs, 1, dtype=torch.bool),
        curr_obs={"states": torch.zeros(steps, envs, 4)},
        next_obs={"states": torch.ones(steps, envs, 4)},
    )
    buf = TrajectoryReplayBuffer(sample_window_size=0)
    assert buf.add_trajectories([foreign]) == [0]
    batch = buf.sample(64)
    assert batch["actions"].shape == (64, 2) and (batch["next_obs"]["states"] == 1).all()
    assert buf.get_stats()["total_samples"] == steps * envs
