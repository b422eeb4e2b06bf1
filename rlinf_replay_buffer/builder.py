"""Building trajectories one step at a time: :class:`TrajectoryBuilder`.

A rollout loop steps ``B`` environments together; at each step it has, for every env, the
observation it acted on, the action, the reward, the done flags and the next observation. The
builder collects those steps and hands back :class:`~.trajectory.Trajectory` objects of
``[T, B, ...]`` tensors, ready for ``add_trajectories``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .errors import InvalidArgumentError, InvalidTrajectoryError
from .trajectory import (
    DICT_FIELDS,
    MAX_INDEX_INT,
    STEP_FIELDS,
    Key,
    Trajectory,
    check_column,
    check_weights_id,
    iter_columns,
    key_name,
    nest_columns,
)
from .validate import check_int

__all__ = ["TrajectoryBuilder"]


class TrajectoryBuilder:
    """Collects steps of ``B`` parallel environments into trajectories of ``T`` steps.

    Each :meth:`add_step` takes one step as a dict with :class:`~.trajectory.Trajectory`'s field
    names: per-step fields (``actions``, ``rewards``, ``dones``, ``terminations``,
    ``truncations``, ``intervene_flags``, ``prev_logprobs``, ``prev_values``, ``versions``) as
    ``[B, ...]`` tensors or NumPy arrays, and ``curr_obs``, ``next_obs``, ``forward_inputs`` as
    dicts of them. ``rewards`` is required. Row ``b`` of every value belongs to env ``b``; the
    step is one transition per env: ``curr_obs`` is the observation acted on, ``next_obs`` the
    one the step led to (for an env that ended its episode at this step and reset, the episode's
    last observation, not the reset one), and ``dones`` (or ``terminations``/``truncations``)
    says that the episode ended with this step.

    The trajectories come out in the aligned layout: every field has one row per step,
    ``[T, B, ...]`` in the dtype of the steps (``bool`` flags stay ``bool``, ``uint8`` images
    ``uint8``), the layout RLinf's demonstrations have and the one this buffer stores (RLinf's
    rollout layout, with an extra done row and action row per epoch, is what RLinf's rollout
    worker produces; both are accepted by ``add_trajectories``). Each trajectory's tensors are
    new memory: the values of a step are copied to the CPU when it is added, so the caller may
    reuse its arrays for the next step.

    The first step fixes the fields, dtypes and per-env shapes; every later step must have the
    same. A step that does not fit is refused with :class:`InvalidTrajectoryError` naming the
    field and what was expected, and the builder is left as it was. A builder is not
    thread-safe: use one per rollout loop.

    Args:
        num_envs: ``B`` (>= 1), the leading dimension of every value of a step.
        num_steps: ``T`` (>= 1): :meth:`add_step` returns a trajectory every ``T`` steps;
            ``None``: only :meth:`finish` ends one.
        max_episode_length: the environment's episode length limit, in steps (>= 0), given to
            every trajectory; ``None``: unknown.
        model_weights_id: the uuid of the policy weights that acted (letters, digits, ``.``,
            ``_``, ``-``); ``None``: derived from ``versions`` by ``add_trajectories``.
        model_update_count: the policy's updates when it acted, in ``[0, 2**48)``; ``None``:
            the maximum of ``versions``, else 0.

    Raises:
        InvalidArgumentError: a bad argument, named with what it accepts.
    """

    def __init__(
        self,
        num_envs: int,
        num_steps: int | None = None,
        *,
        max_episode_length: int | None = None,
        model_weights_id: str | None = None,
        model_update_count: int | None = None,
    ) -> None:
        self._num_envs = check_int("num_envs", num_envs, 1)
        self._num_steps = check_int("num_steps", num_steps, 1, allow_none=True)
        if model_weights_id is not None:
            try:
                model_weights_id = check_weights_id(model_weights_id)
            except InvalidTrajectoryError as exc:
                raise InvalidArgumentError(str(exc)) from None
        self._metadata = {
            "max_episode_length": check_int("max_episode_length", max_episode_length, 0, allow_none=True),
            "model_weights_id": model_weights_id,
            "model_update_count": check_int(
                "model_update_count", model_update_count, 0, MAX_INDEX_INT - 1, allow_none=True
            ),
        }
        self._layout: dict[Key, tuple[torch.dtype, tuple[int, ...]]] | None = None  # from the first step
        self._rows: dict[Key, list[torch.Tensor]] = {}  # the steps collected, per column

    @property
    def num_envs(self) -> int:
        """``B``: the environments every step holds."""
        return self._num_envs

    @property
    def num_steps(self) -> int | None:
        """``T``: the steps of each trajectory :meth:`add_step` returns (``None``: no fixed length)."""
        return self._num_steps

    @property
    def pending_steps(self) -> int:
        """Steps collected since the last trajectory was returned."""
        return len(next(iter(self._rows.values()), ()))

    def __len__(self) -> int:
        return self.pending_steps

    def add_step(self, step: Mapping[str, Any]) -> Trajectory | None:
        """Add one step of every env; returns the trajectory it completes (its ``num_steps``-th
        step since the last one), else ``None``.

        Args:
            step: field name -> ``[B, ...]`` tensor or NumPy array (any device; copied to the
                CPU), and ``curr_obs``/``next_obs``/``forward_inputs`` -> dicts of them.

        Raises:
            InvalidTrajectoryError: the step is malformed or differs from the first step (an
                unknown field, ``rewards`` missing, a value that is not ``[B, ...]``, a dtype
                the buffer cannot store, other fields, dtypes or shapes than the first step's);
                the message names the field, and the builder is unchanged.
        """
        columns = self._checked(step, f"step {self.pending_steps}: ")
        copies = {key: tensor.detach().to("cpu", copy=True) for key, tensor in columns.items()}
        if self._layout is None:
            self._layout = {k: (v.dtype, tuple(v.shape[1:])) for k, v in copies.items()}
        for key, tensor in copies.items():
            self._rows.setdefault(key, []).append(tensor)
        if self._num_steps is not None and self.pending_steps >= self._num_steps:
            return self.finish()
        return None

    def finish(self) -> Trajectory | None:
        """The trajectory of the steps collected since the last one (fewer than ``num_steps``
        at the end of a rollout), or ``None`` if there are none; the builder starts anew, with
        the same fields."""
        if not self._rows:
            return None
        columns = {key: torch.stack(rows) for key, rows in self._rows.items()}  # [T, B, ...]
        self._rows = {}
        return Trajectory.from_dict(nest_columns(self._metadata, columns))

    def _checked(self, step: Any, where: str) -> dict[Key, torch.Tensor]:
        """The step's columns as tensors, every check passed; nothing is changed."""
        if not isinstance(step, Mapping):
            raise InvalidTrajectoryError(
                f"{where}a step is a dict of [B, ...] tensors or arrays, got {type(step).__name__}"
            )
        unknown = [k for k in step if k not in STEP_FIELDS and k not in DICT_FIELDS]
        if unknown:
            raise InvalidTrajectoryError(
                f"{where}unknown fields {unknown}; a step holds {', '.join(STEP_FIELDS + DICT_FIELDS)} "
                "(max_episode_length, model_weights_id and model_update_count are arguments of "
                "TrajectoryBuilder)"
            )
        columns: dict[Key, torch.Tensor] = {}
        for key, value in iter_columns(step, where).items():
            name = where + key_name(key)
            tensor = check_column(value, name, storable=True)
            if tensor.dim() < 1 or int(tensor.shape[0]) != self._num_envs:
                raise InvalidTrajectoryError(
                    f"{name} has shape {tuple(tensor.shape)}; a step's values are [B, ...] with "
                    f"B = num_envs = {self._num_envs}"
                )
            columns[key] = tensor
        if ("rewards",) not in columns:
            raise InvalidTrajectoryError(f"{where}rewards is missing; every step needs rewards [B, ...]")
        if self._layout is not None:
            self._check_layout(columns, where)
        return columns

    def _check_layout(self, columns: dict[Key, torch.Tensor], where: str) -> None:
        assert self._layout is not None
        missing = [key_name(k) for k in self._layout if k not in columns]
        extra = [key_name(k) for k in columns if k not in self._layout]
        if missing or extra:
            raise InvalidTrajectoryError(
                f"{where}fields differ from the first step's: missing {missing or 'none'}, "
                f"unexpected {extra or 'none'}; every step needs the same fields"
            )
        for key, (dtype, shape) in self._layout.items():
            got = columns[key]
            if got.dtype != dtype or tuple(got.shape[1:]) != shape:
                raise InvalidTrajectoryError(
                    f"{where}{key_name(key)} is {_dtype_name(got.dtype)} with per-env shape "
                    f"{list(got.shape[1:])}; expected {_dtype_name(dtype)} with {list(shape)}, as in "
                    "the first step (convert it, or start a new TrajectoryBuilder for other fields)"
                )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
