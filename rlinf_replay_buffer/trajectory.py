"""The :class:`Trajectory` record and its normalization into aligned transitions.

A trajectory holds ``B`` parallel environments over ``T`` steps: every tensor is ``[T, B, ...]``.
Two row layouts are accepted (see ``docs/format.md``):

* **aligned** (this library's own, and demonstrations): every field has ``T`` rows, row ``t`` of
  every field belongs to transition ``t``.
* **RLinf rollout layout**: ``e`` rollout epochs of ``n`` steps (``T = n * e``). ``rewards`` and the
  observation dicts have ``T`` rows; done-like fields have one extra row at the *start* of every
  epoch (the flag carried in); action-like fields one extra row at the *end* of every epoch (the
  action chosen at the final observation, never executed).

:func:`align` turns either into an :class:`AlignedTrajectory` whose columns all have ``T`` rows, so
transition ``(t, b)`` is ``curr_obs[t, b]``, ``actions[t, b]``, ``rewards[t, b]``, ``next_obs[t, b]``
and ``dones[t, b]`` ("done after this transition").
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import numpy as np
import torch

from .errors import InvalidArgumentError, InvalidTrajectoryError

Key = tuple[str, ...]
"""A column name: ``("rewards",)`` for a per-step field, ``("curr_obs", "states")`` for a dict entry."""

Column = torch.Tensor | np.ndarray
"""What a field of a :class:`Trajectory` may hold: a tensor, or a NumPy array (see :func:`as_tensor`)."""

STEP_FIELDS: tuple[str, ...] = (
    "actions",
    "intervene_flags",
    "rewards",
    "terminations",
    "truncations",
    "dones",
    "prev_logprobs",
    "prev_values",
    "versions",
)
DICT_FIELDS: tuple[str, ...] = ("curr_obs", "next_obs", "forward_inputs")

#: Fields whose extra row (RLinf layout) is the *first* row of every epoch.
DONE_LIKE = frozenset({"dones", "terminations", "truncations"})
#: Fields whose extra row (RLinf layout) is the *last* row of every epoch.
ACTION_LIKE = frozenset(
    {"actions", "intervene_flags", "versions", "prev_logprobs", "prev_values", "forward_inputs"}
)
#: Fields that always have exactly one row per transition.
STEP_ALIGNED = frozenset({"rewards", "curr_obs", "next_obs"})

#: ``model_weights_id`` RLinf gives trajectories that carry no ``versions`` tensor.
NO_VERSIONS_WEIGHTS_ID = "e58eb380-d5b9-5265-a382-0fc33930cf3e"
_VERSIONS_NAMESPACE = uuid.UUID("5b0d6a52-2f3e-4c55-9d7a-7f1f4d1c2a90")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")

#: ``model_update_count`` is stored in the index (like ids, step counts and row numbers) as an int
#: in ``[0, MAX_INDEX_INT)``, ``2**48``; readers refuse an entry outside that range, so
#: :func:`align` refuses such a count before it is stored.
MAX_INDEX_INT = 1 << 48

#: The dtypes every trajectory format (``pt``, ``pkl``, ``segment``) stores and reads back bit for
#: bit; ``add_trajectories`` refuses any other (``align(..., storable=True)``).
STORABLE_DTYPES: tuple[torch.dtype, ...] = (
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
)


@dataclass
class Trajectory:
    """A batch of ``B`` environment rollouts over ``T`` steps, as produced by rollout workers.

    Every tensor field is ``[T, B, ...]`` of a dtype in :data:`STORABLE_DTYPES` (bool, uint8,
    int8 to int64, float16, bfloat16, float32, float64; uint8 images stay uint8), or a NumPy
    array of one of those dtypes, taken as a tensor sharing its memory where it can
    (:func:`as_tensor`). Any field may be ``None`` except ``rewards``, which
    :meth:`TrajectoryReplayBuffer.add_trajectories` requires to count transitions. Dict fields
    map names to ``[T, B, ...]`` tensors; a name is a non-empty string without ``/`` that does
    not start with ``.`` (other dots, spaces, any letters are kept).

    Attributes:
        max_episode_length: the environment's episode length limit, in steps (informational).
        model_weights_id: uuid (str) of the policy weights that produced the rollout. Derived
            from ``versions`` when ``None``.
        model_update_count: how many updates the policy had when it produced the rollout, in
            ``[0, 2**48)``. Derived from ``versions`` (its maximum) when ``None``, else 0.
        actions, intervene_flags, versions, prev_logprobs, prev_values: action-like; in RLinf's
            layout they carry one extra (last) row per rollout epoch.
        rewards: one row per transition.
        terminations, truncations, dones: done-like; in RLinf's layout one extra (first) row per
            rollout epoch. ``dones[t]`` means "the episode ended after transition t".
        curr_obs, next_obs: observations before and after each transition, one row each.
        forward_inputs: model inputs recorded at action time (action-like).
    """

    max_episode_length: int | None = None
    model_weights_id: str | None = None
    model_update_count: int | None = None
    actions: Column | None = None
    intervene_flags: Column | None = None
    rewards: Column | None = None
    terminations: Column | None = None
    truncations: Column | None = None
    dones: Column | None = None
    prev_logprobs: Column | None = None
    prev_values: Column | None = None
    versions: Column | None = None
    curr_obs: dict[str, Column] | None = field(default=None)
    next_obs: dict[str, Column] | None = field(default=None)
    forward_inputs: dict[str, Column] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        """The non-``None`` fields as a plain dict (the shape RLinf's files hold)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or (isinstance(value, dict) and not value):
                continue
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Trajectory:
        """Build a trajectory from a dict with the dataclass's field names; other keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class AlignedTrajectory:
    """A validated trajectory whose columns all have ``num_steps`` rows.

    Attributes:
        columns: column name -> tensor ``[T, B, ...]`` (CPU; may share memory with the input).
        num_steps: ``T``, transitions per environment.
        num_envs: ``B``.
        max_episode_length, model_weights_id, model_update_count: as in :class:`Trajectory`.
        owned: columns whose tensors are new memory (not shared with the caller's input).
    """

    columns: dict[Key, torch.Tensor]
    num_steps: int
    num_envs: int
    max_episode_length: int | None
    model_weights_id: str
    model_update_count: int
    owned: frozenset[Key] = frozenset()

    @property
    def num_transitions(self) -> int:
        """``T * B``."""
        return self.num_steps * self.num_envs

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data held by the columns."""
        return sum(t.numel() * t.element_size() for t in self.columns.values())

    def flat(self) -> dict[Key, torch.Tensor]:
        """Columns reshaped to ``[T * B, ...]`` (transition ``i`` is step ``i // B``, env ``i % B``)."""
        n = self.num_transitions
        return {k: v.reshape(n, *v.shape[2:]) for k, v in self.columns.items()}


def file_dict_from_columns(
    columns: Mapping[Key, torch.Tensor],
    max_episode_length: int | None,
    model_weights_id: str,
    model_update_count: int,
) -> dict[str, Any]:
    """Nest ``columns`` back into RLinf's file dict: per-step fields plus dicts of tensors."""
    out: dict[str, Any] = {
        "max_episode_length": max_episode_length,
        "model_weights_id": model_weights_id,
        "model_update_count": model_update_count,
    }
    for key, tensor in columns.items():
        if len(key) == 1:
            out[key[0]] = tensor
        else:
            out.setdefault(key[0], {})[key[1]] = tensor
    return out


def key_name(key: Key) -> str:
    """``("curr_obs", "states")`` -> ``"curr_obs.states"``: the column's name in messages, in
    ``metadata.json`` and in ``segment.json``. A dict key is kept verbatim, dots included
    (``("curr_obs", "cam.rgb")`` -> ``"curr_obs.cam.rgb"``); field names have no dot, so the
    first dot separates the two (:func:`key_of_name`)."""
    return ".".join(key)


def key_of_name(name: str) -> Key | None:
    """The inverse of :func:`key_name`: ``"curr_obs.cam.rgb"`` -> ``("curr_obs", "cam.rgb")``,
    split at the *first* dot only; ``None`` if a part would be empty."""
    top, dot, sub = name.partition(".")
    if not top or (dot and not sub):
        return None
    return (top, sub) if dot else (top,)


def role_of(key: Key) -> str:
    """``"done"``, ``"action"`` or ``"step"``: which row per epoch is extra in RLinf's layout."""
    top = key[0]
    if top in DONE_LIKE:
        return "done"
    if top in ACTION_LIKE:
        return "action"
    return "step"


def epochs_of(key: Key, raw_rows: int, num_steps: int, where: str = "") -> int:
    """Number of rollout epochs ``e`` encoded by a column's extra rows (0: no extra rows).

    Raises:
        InvalidTrajectoryError: the row count fits neither layout.
    """
    extra = raw_rows - num_steps
    if extra == 0:
        return 0
    name = key_name(key)
    if role_of(key) == "step":
        raise InvalidTrajectoryError(
            f"{where}{name} has {raw_rows} rows but rewards has {num_steps}; {name} needs exactly "
            "one row per transition (same T as rewards)"
        )
    if extra < 0 or num_steps % extra != 0:
        raise InvalidTrajectoryError(
            f"{where}{name} has {raw_rows} rows and rewards has {num_steps}: expected {num_steps} "
            "rows, or n+1 rows per rollout epoch (T = n * epochs); fix the T dimension"
        )
    return extra


def source_steps(key: Key, raw_rows: int, num_steps: int) -> np.ndarray:
    """For each aligned step ``t`` in ``[0, T)``, the raw row of ``key`` that holds it (int64)."""
    t = np.arange(num_steps, dtype=np.int64)
    e = epochs_of(key, raw_rows, num_steps)
    if e == 0:
        return t
    n = num_steps // e
    shift = 1 if role_of(key) == "done" else 0
    return (t // n) * (n + 1) + (t % n) + shift


def align_column(key: Key, tensor: torch.Tensor, num_steps: int, where: str = "") -> torch.Tensor:
    """Drop the extra rows of one column (a view when there are none)."""
    e = epochs_of(key, tensor.shape[0], num_steps, where)
    if e == 0:
        return tensor
    n = num_steps // e
    blocks = tensor.reshape(e, n + 1, *tensor.shape[1:])
    kept = blocks[:, 1:] if role_of(key) == "done" else blocks[:, :-1]
    return kept.reshape(num_steps, *tensor.shape[1:])


def rows_fit(key: Key, rows: int, num_steps: int) -> bool:
    """Whether ``rows`` is a row count ``key`` may have beside ``num_steps`` rows of rewards
    (``T``, or ``n + 1`` per epoch for done- and action-like fields; see :func:`epochs_of`)."""
    extra = rows - num_steps
    if extra == 0:
        return num_steps > 0
    return role_of(key) != "step" and extra > 0 and num_steps % extra == 0


def unflatten_rlinf(
    columns: Mapping[Key, Any],
    num_envs: int | None = None,
    ref_rows: int | None = None,
    num_steps: int | None = None,
    where: str = "",
) -> dict[Key, Any]:
    """A file's raw columns in the ``[rows, B, ...]`` layout, undoing RLinf's checkpoint flattening.

    RLinf's ``save_checkpoint`` without ``auto_save`` writes each trajectory from its flattened
    cache (:func:`flatten_like_rlinf`): done-like fields lose their extra first row per epoch,
    every tensor field and every tensor of ``curr_obs``/``next_obs`` (and, in RLinf 0.3.0,
    ``forward_inputs``) becomes ``[rows * B, ...]``, and is reshaped back to ``[T', B, ...]``
    only when it has exactly ``T' * B`` rows, ``T'`` being ``shape[0]`` of the index entry (rows
    of ``prev_logprobs`` if the trajectory has it, else of ``rewards``). The other columns stay
    flat, possibly 1-D (``rewards`` ``[T * B]``). Auto-saved files (RLinf's and this library's)
    hold every column as ``[rows, B, ...]`` already; they come back unchanged.

    Each column is read as ``[rows, B, ...]`` (its shape as stored) or as flat ``[rows * B, ...]``
    (reshaped to ``[rows, B, ...]``), whichever gives a row count it may have beside ``T``, the
    rows of ``rewards`` (:func:`rows_fit`). When both fit, which happens for ``B = 1``, where
    ``[R, 1, ...]`` is both a layout column and the flattening of an ``[R, 1, 1, ...]`` one (and
    for ``B = 2`` with one step per epoch), the file decides. It is a flattened checkpoint if
    some column can only be flat (1-D, or its second dimension is not ``B``), or, for ``B = 1``,
    if its done-like fields have ``T`` rows while an action-like field has more (RLinf's
    flattened cache drops the extra done rows and keeps the extra action rows; nothing else
    does). In a flattened checkpoint such a column is flat unless it has ``T'`` rows (RLinf
    reshaped exactly those); in any other file it is kept as it is. So the one file read wrongly
    is a flattened ``B = 1`` file that shows none of these signs (say, no done-like field) and
    whose flattened columns all end in a dimension of size 1: its rows and their alignment are
    still right, but those columns lose that trailing size-1 dimension (``rewards``
    ``[T, 1, 1]`` reads as ``[T, 1]``).

    Args:
        columns: column name -> value, as from :func:`iter_columns` (non-tensors pass through).
        num_envs: ``B`` (``shape[1]`` of the index entry); if ``None``, ``shape[1]`` of
            ``prev_logprobs`` if present, else of ``rewards`` (RLinf always keeps that column in
            layout, having taken ``T'`` from it).
        ref_rows: ``T'`` (``shape[0]`` of RLinf's index entry); if ``None``, the rows of
            ``prev_logprobs`` if present in layout, else of ``rewards``.
        num_steps: ``T`` if already known (this library's index records it), else derived from
            ``rewards``.
        where: prefix for error messages (the file).

    Returns:
        A new dict: the same keys, tensors ``[rows, B, ...]`` (views of the input). Columns that
        fit no reading are left as they are for :func:`align` to report; in a file that is
        certainly flattened they raise instead.

    Raises:
        InvalidTrajectoryError: a column of a flattened file fits neither reading (the message
            names the field and its shape).
    """
    out = dict(columns)
    tensors = {k: v for k, v in columns.items() if isinstance(v, torch.Tensor) and v.dim() >= 1}
    ref_keys = [k for k in (("prev_logprobs",), ("rewards",)) if k in tensors]
    b = num_envs if isinstance(num_envs, int) and num_envs > 0 else None
    if b is None:
        b = next((int(tensors[k].shape[1]) for k in ref_keys if tensors[k].dim() >= 2), None)
    rewards = tensors.get(("rewards",))
    if b is None or rewards is None:
        return out  # nothing to go by: align reports what is wrong

    def as_layout(t: torch.Tensor) -> int | None:
        return int(t.shape[0]) if t.dim() >= 2 and int(t.shape[1]) == b else None

    def as_flat(t: torch.Tensor) -> int | None:
        return int(t.shape[0]) // b if int(t.shape[0]) % b == 0 and int(t.shape[0]) > 0 else None

    if ref_rows is None or ref_rows <= 0:
        ref_rows = next((as_layout(tensors[k]) for k in ref_keys if as_layout(tensors[k]) is not None), None)
    flat_file = any(as_layout(t) is None and as_flat(t) is not None for t in tensors.values())
    if not flat_file and b == 1:
        # RLinf's flattened cache, and nothing else, drops the extra done rows but keeps the
        # extra action rows: done-like fields with T rows beside action-like ones with more
        t_rows = int(rewards.shape[0])
        done_rows = {int(t.shape[0]) for k, t in tensors.items() if role_of(k) == "done"}
        action_rows = {int(t.shape[0]) for k, t in tensors.items() if role_of(k) == "action"}
        flat_file = done_rows == {t_rows} and any(r > t_rows for r in action_rows)

    def flat_wins(t: torch.Tensor) -> bool:
        """Both readings fit: flat only in a flattened file, for a column RLinf did not reshape."""
        return flat_file and as_layout(t) != ref_rows

    if num_steps is None:
        options = {r for r in (as_layout(rewards), as_flat(rewards)) if r is not None and r > 0}
        if ref_rows is not None:  # T' is T, or T + e with e | T
            options = {r for r in options if rows_fit(("prev_logprobs",), ref_rows, r)} or options
        if len(options) > 1:
            options = {as_flat(rewards) if flat_wins(rewards) else as_layout(rewards)}
        if len(options) != 1:
            return out
        num_steps = options.pop()
    for key, t in tensors.items():
        lay, flat = as_layout(t), as_flat(t)
        lay_ok = lay is not None and rows_fit(key, lay, num_steps)
        flat_ok = flat is not None and rows_fit(key, flat, num_steps)
        if flat_ok and (not lay_ok or flat_wins(t)):
            out[key] = t.reshape(flat, b, *t.shape[1:])
        elif not lay_ok and flat_file:
            raise InvalidTrajectoryError(
                f"{where}{key_name(key)} has shape {tuple(t.shape)}, which is neither [rows, B={b}, ...] "
                f"nor RLinf's flattened [rows * {b}, ...] for rows = {num_steps} (the rows of "
                f"rewards) or n + 1 per rollout epoch; the file is damaged or B={b} is wrong"
            )
    return out


def nest_columns(data: Mapping[str, Any], columns: Mapping[Key, Any]) -> dict[str, Any]:
    """A copy of the trajectory dict ``data`` with its column values replaced by ``columns``'
    (the inverse of :func:`iter_columns`; ``data`` and its dicts are not modified)."""
    out = dict(data)
    copied: set[str] = set()
    for key, value in columns.items():
        if len(key) == 1:
            out[key[0]] = value
            continue
        if key[0] not in copied:
            inner = out.get(key[0])
            out[key[0]] = dict(inner) if isinstance(inner, Mapping) else {}
            copied.add(key[0])
        out[key[0]][key[1]] = value
    return out


def iter_columns(data: Mapping[str, Any], where: str = "") -> dict[Key, Any]:
    """Collect the tensor-valued columns of a trajectory dict (``None`` and empty dicts skipped)."""
    cols: dict[Key, Any] = {}
    for name in STEP_FIELDS:
        value = data.get(name)
        if value is not None:
            cols[(name,)] = value
    for name in DICT_FIELDS:
        value = data.get(name)
        if value is None:
            continue
        if not isinstance(value, Mapping):
            raise InvalidTrajectoryError(
                f"{where}{name} must be a dict of [T, B, ...] tensors, got {type(value).__name__}"
            )
        for sub, tensor in value.items():
            if not isinstance(sub, str) or not sub or "/" in sub or sub.startswith("."):
                raise InvalidTrajectoryError(
                    f"{where}{name} has key {sub!r}; keys must be non-empty strings that contain no "
                    "'/' and do not start with '.' (dots elsewhere, spaces and any letters are fine)"
                )
            if tensor is not None:
                # a str subclass (numpy.str_) would be pickled as its class, which no reader loads
                cols[(name, str.__str__(sub))] = tensor
    return cols


def default_weights_id(versions: torch.Tensor | None) -> str:
    """A deterministic uuid for trajectories given without ``model_weights_id``."""
    if versions is None or versions.numel() == 0:
        return NO_VERSIONS_WEIGHTS_ID
    values = ",".join(repr(float(v)) for v in torch.unique(versions.detach().float().cpu()))
    return str(uuid.uuid5(_VERSIONS_NAMESPACE, values))


def check_weights_id(value: Any, where: str = "") -> str:
    """Validate a ``model_weights_id``: it becomes part of file names, so no path characters.

    ``""`` is accepted: RLinf's ``Trajectory`` has it as its default and files it as such.
    """
    if value == "":
        return ""
    if not isinstance(value, str) or not _SAFE_ID.match(value) or ".." in value:
        raise InvalidTrajectoryError(
            f"{where}model_weights_id {value!r} is not a safe id: use letters, digits, '.', '_' and '-' "
            "(a uuid string), at most 128 characters, starting with a letter or digit, no '..'"
        )
    return str.__str__(value)  # a plain str: a subclass (numpy.str_) would not load from a file


def fields_of(traj: Any, where: str = "") -> Mapping[str, Any]:
    """The fields of a trajectory given as a :class:`Trajectory`, a mapping, or another dataclass
    (RLinf's own ``Trajectory``), as a mapping from field name to value."""
    if isinstance(traj, Trajectory):
        return traj.__dict__
    if isinstance(traj, Mapping):
        return traj
    if is_dataclass(traj) and not isinstance(traj, type):  # e.g. RLinf's own Trajectory class
        return {f.name: getattr(traj, f.name) for f in fields(traj)}
    raise InvalidTrajectoryError(
        f"{where}expected a Trajectory, got {type(traj).__name__}; build one with "
        "Trajectory(rewards=..., actions=..., curr_obs={...}, ...)"
    )


def flatten_like_rlinf(traj: Any) -> dict[str, Any]:
    """RLinf's flat view of a trajectory (what its buffer caches and its RLT worker indexes).

    * done-like fields (``dones``, ``terminations``, ``truncations``) lose their extra first row
      per epoch, so they have ``T`` rows (``T`` = rows of ``rewards``);
    * then every tensor field with at least two dimensions, and every such tensor in
      ``curr_obs``, ``next_obs`` and ``forward_inputs``, is reshaped ``[rows, B, ...]`` ->
      ``[rows * B, ...]``: row ``t * B + b`` is step ``t`` of env ``b``. Action-like fields keep
      their extra last row per epoch (``(T + e) * B`` rows), as in RLinf.

    Other fields are left out. The tensors are views of the trajectory's where possible.
    """
    data = fields_of(traj)
    rewards = data.get("rewards")
    num_steps = int(rewards.shape[0]) if isinstance(rewards, torch.Tensor) and rewards.dim() else 0
    flat: dict[str, Any] = {}
    for name, value in data.items():
        if name in DICT_FIELDS:
            if isinstance(value, Mapping) and value:
                flat[name] = {
                    k: v.reshape(-1, *v.shape[2:])
                    for k, v in value.items()
                    if isinstance(v, torch.Tensor) and v.dim() >= 2
                }
            continue
        if not isinstance(value, torch.Tensor) or value.dim() < 2:
            continue
        if name in DONE_LIKE and value.shape[0] != num_steps:
            value = align_column((name,), value, num_steps)
        flat[name] = value.reshape(-1, *value.shape[2:])
    return flat


#: signed integers of each item size: a NumPy dtype ``torch.from_numpy`` does not know (those of
#: the ``ml_dtypes`` package: ``bfloat16``, ``float8_*``) is viewed as one, then as its torch dtype
_SAME_SIZE_INT = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}


def as_tensor(value: Any, name: str) -> torch.Tensor:
    """A column's value as a tensor: a tensor as it is, a NumPy array as a CPU tensor of the same
    shape, dtype and values.

    An array's memory is shared (``torch.from_numpy``, no copy) when it is writeable, in the
    machine's byte order and has non-negative strides that are multiples of its item size. Any
    other array is copied once: a read-only one (``np.load(..., mmap_mode="r")``, arrays from
    Ray's object store, ``np.broadcast_to``), since torch has no read-only tensors; one in the
    other byte order (``">f4"`` on a little-endian machine: the values are kept); one with a
    negative stride (``a[::-1]``) or a field of a structured array. The array's dtype becomes
    the torch dtype of the same name and size; one torch has not (``object``, strings,
    ``float128``) is refused here, and ``uint16``/``uint32``/``uint64`` (and ``ml_dtypes``'
    ``float8_*``) become those torch dtypes, which :func:`check_column` refuses as it refuses
    such tensors (``ml_dtypes.bfloat16`` is accepted as ``bfloat16``).

    Args:
        value: the column's value.
        name: the column as messages name it (with any ``"trajectory 3: "`` prefix).

    Raises:
        InvalidTrajectoryError: neither a tensor nor an array, or an array dtype torch has not.
    """
    if isinstance(value, torch.Tensor):
        return value
    if not isinstance(value, np.ndarray):
        raise InvalidTrajectoryError(
            f"{name} is a {type(value).__name__}, not a torch.Tensor or NumPy array; convert it "
            "with torch.as_tensor(...)"
        )
    dtype = getattr(torch, value.dtype.name, None)
    if not isinstance(dtype, torch.dtype) or dtype.itemsize != value.itemsize:
        raise InvalidTrajectoryError(
            f"{name} is a NumPy array of dtype {value.dtype}, which has no torch dtype; use one of "
            f"{_storable_names()} (e.g. x.astype(np.float32))"
        )
    strides_fit = all(s >= 0 and s % value.itemsize == 0 for s in value.strides)
    if not (value.flags.writeable and value.dtype.isnative and strides_fit):
        value = np.array(value, dtype=value.dtype.newbyteorder("="), order="C")
    try:
        return torch.from_numpy(value)
    except TypeError:  # a dtype of an extension of NumPy, of the same item size as ``dtype``
        return torch.from_numpy(value.view(_SAME_SIZE_INT[value.itemsize])).view(dtype)


def _storable_names() -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in STORABLE_DTYPES)


def check_column(value: Any, name: str, storable: bool = False) -> torch.Tensor:
    """A column's value as a dense real tensor with data (:func:`as_tensor` for NumPy arrays);
    with ``storable``, also of a dtype in :data:`STORABLE_DTYPES`. Its shape is not checked.

    Raises:
        InvalidTrajectoryError: naming the column (``name``) and what to do.
    """
    tensor = as_tensor(value, name)
    if tensor.is_complex() or tensor.layout != torch.strided:
        raise InvalidTrajectoryError(
            f"{name} must be a dense real tensor, got {tensor.dtype} ({tensor.layout})"
        )
    if tensor.is_meta:
        raise InvalidTrajectoryError(
            f"{name} is on the 'meta' device and holds no data; pass a tensor with values (CPU or "
            "any device that can copy to the CPU)"
        )
    if storable and tensor.dtype not in STORABLE_DTYPES:
        raise InvalidTrajectoryError(
            f"{name} has dtype {str(tensor.dtype).removeprefix('torch.')}, which not every trajectory "
            f"format can store and read back; use one of {_storable_names()} (e.g. x.to(torch.int32) "
            "for uint16, x.to(torch.float16) for float8: both keep every value)"
        )
    return tensor


def align_all(trajectories: Any, check_finite: bool = False) -> list[AlignedTrajectory]:
    """Validate and align a whole ``add_trajectories`` call (a list of trajectories).

    Raises:
        InvalidArgumentError: ``trajectories`` is not a list (a single trajectory, a dict).
        InvalidTrajectoryError: naming the first bad trajectory, its field and the fix.
    """
    if isinstance(trajectories, Trajectory | Mapping) or not isinstance(trajectories, Sequence):
        raise InvalidArgumentError(
            f"add_trajectories takes a list of Trajectory objects, got {type(trajectories).__name__}"
        )
    return [
        align(t, where=f"trajectory {i}: ", check_finite=check_finite, storable=True)
        for i, t in enumerate(trajectories)
    ]


def align(
    traj: Trajectory | Mapping[str, Any],
    where: str = "",
    check_finite: bool = False,
    storable: bool = False,
) -> AlignedTrajectory:
    """Validate a trajectory (a :class:`Trajectory` or its dict) and align its rows.

    NumPy arrays are taken as tensors (:func:`as_tensor`). Always refused: a missing
    ``rewards``, values that are neither tensors nor arrays, tensors of fewer than two dims, complex,
    sparse or ``meta`` tensors, ``T = 0`` or ``B = 0``, mismatched ``[T, B]``, row counts that
    fit no layout, bad dict keys, an unsafe ``model_weights_id``, and a ``model_update_count``
    (given, or the maximum of ``versions``) outside ``[0, 2**48)`` (:data:`MAX_INDEX_INT`).

    Args:
        traj: the trajectory.
        where: prefix for error messages (e.g. ``"trajectory 3: "``).
        check_finite: also reject NaN or infinite values in floating-point columns.
        storable: also reject dtypes outside :data:`STORABLE_DTYPES` (what ``add_trajectories``
            accepts; trajectories read from a directory are taken as they are).

    Returns:
        The aligned trajectory; its columns are CPU tensors, views of the input where possible
        (of a NumPy array too, see :func:`as_tensor`).

    Raises:
        InvalidTrajectoryError: with a message naming the field and what to fix.
    """
    data = fields_of(traj, where)
    raw = iter_columns(data, where)
    rewards = raw.get(("rewards",))
    if rewards is None:
        raise InvalidTrajectoryError(
            f"{where}rewards is missing; every trajectory needs rewards [T, B, ...] "
            "(it defines the number of transitions)"
        )
    for key, value in raw.items():
        tensor = raw[key] = as_tensor(value, where + key_name(key))  # NumPy arrays become tensors
        if tensor.dim() < 2:
            raise InvalidTrajectoryError(
                f"{where}{key_name(key)} has shape {tuple(tensor.shape)}; tensors must be "
                "[T, B, ...] (add the env dimension, e.g. x.unsqueeze(1))"
            )
        check_column(tensor, where + key_name(key), storable)
    rewards = raw[("rewards",)]
    num_steps, num_envs = int(rewards.shape[0]), int(rewards.shape[1])
    if num_steps == 0 or num_envs == 0:
        raise InvalidTrajectoryError(
            f"{where}rewards has shape {tuple(rewards.shape)}; a trajectory needs T >= 1 and B >= 1"
        )
    columns: dict[Key, torch.Tensor] = {}
    owned: set[Key] = set()
    for key, tensor in raw.items():
        if int(tensor.shape[1]) != num_envs:
            raise InvalidTrajectoryError(
                f"{where}{key_name(key)} has B={tensor.shape[1]} (shape {tuple(tensor.shape)}) but "
                f"rewards has B={num_envs}; all fields must share [T, B]"
            )
        aligned = align_column(key, tensor.detach(), num_steps, where)
        if aligned.device.type != "cpu":
            aligned = aligned.cpu()
        if check_finite and aligned.is_floating_point() and not bool(torch.isfinite(aligned).all()):
            raise InvalidTrajectoryError(
                f"{where}{key_name(key)} contains NaN or infinite values; clean the rollout or "
                "construct the buffer with check_finite=False"
            )
        columns[key] = aligned
        if aligned.numel() and aligned.untyped_storage().data_ptr() != tensor.untyped_storage().data_ptr():
            owned.add(key)

    mel = data.get("max_episode_length")
    if mel is not None and (isinstance(mel, bool) or not isinstance(mel, int | np.integer)):
        raise InvalidTrajectoryError(f"{where}max_episode_length must be an int, got {mel!r}")
    versions = raw.get(("versions",))
    weights_id = data.get("model_weights_id")
    weights_id = default_weights_id(versions) if weights_id is None else weights_id
    weights_id = check_weights_id(weights_id, where)
    count = data.get("model_update_count")
    source = "model_update_count"
    if count is None:
        count, source = _count_from_versions(versions), "model_update_count (the maximum of versions)"
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
        raise InvalidTrajectoryError(f"{where}model_update_count must be a non-negative int, got {count!r}")
    if count >= MAX_INDEX_INT:
        raise InvalidTrajectoryError(
            f"{where}{source} is {int(count)}, too large: the trajectory index stores it as an int in "
            f"[0, 2**48) (at most {MAX_INDEX_INT - 1}); pass a model_update_count in that range"
        )
    return AlignedTrajectory(
        columns=columns,
        num_steps=num_steps,
        num_envs=num_envs,
        max_episode_length=None if mel is None else int(mel),
        model_weights_id=weights_id,
        model_update_count=int(count),
        owned=frozenset(owned),
    )


def _count_from_versions(versions: Any) -> int:
    if not isinstance(versions, torch.Tensor) or versions.numel() == 0:
        return 0
    top = float(versions.detach().max())
    return int(top) if math.isfinite(top) and top >= 0 else 0
