"""Shared test helpers: trajectories whose values encode their step, and the alignment check.

A *coded* trajectory ``i`` with ``e`` epochs of ``n`` steps and ``B`` envs carries, for epoch
``k``, transition ``s`` and env ``b``, the code ``c = 1000 * i + 100 * k + s`` in every element of
``curr_obs.states``, ``actions``, ``rewards`` and ``forward_inputs.action``; ``next_obs.states`` is
``c + 1``; ``dones``/``truncations`` are true exactly when ``s == n - 1``; ``prev_logprobs`` holds
``c`` and ``env_ids`` (an observation) holds ``b``. Extra rows in RLinf's layout hold poison
values (-7) so that a misaligned read is caught.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rlinf_replay_buffer import ReplayBufferError, Trajectory, TrajectoryReplayBuffer, formats, index_columns
from rlinf_replay_buffer import contents as contents_module
from rlinf_replay_buffer.cache import TrajectoryCache
from rlinf_replay_buffer.lock import LOCK_NAME

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURE = SHARED / "fixtures" / "rlinf-autosave-pt"
POISON = -7.0


#: per-step fields every coded trajectory carries (it has no prev_values)
CODED_STEP_FIELDS = frozenset(
    {
        "actions",
        "intervene_flags",
        "rewards",
        "terminations",
        "truncations",
        "dones",
        "prev_logprobs",
        "versions",
    }
)
#: its dict fields
CODED_DICT_FIELDS = frozenset({"curr_obs", "next_obs", "forward_inputs"})


def _fixture_dir() -> Path:
    env = os.environ.get("RLINF_FIXTURE_DIR")
    return Path(env) if env else FIXTURE


def coded_trajectory(
    i: int,
    n: int = 4,
    e: int = 2,
    num_envs: int = 2,
    layout: str = "rlinf",
    images: bool = True,
    obs_dim: int = 3,
    logprobs: bool = True,
    model_update_count: int | None = None,
    weights_id: str | None = None,
) -> Trajectory:
    """A trajectory whose values encode (trajectory, epoch, step, env).

    Args:
        layout: ``"rlinf"`` (extra done row first and extra action row last per epoch),
            ``"aligned"`` (T rows everywhere), ``"done_only"`` (extra done row, no extra action
            row: what some RLinf versions write).
    """
    codes = torch.tensor([1000 * i + 100 * k + s for k in range(e) for s in range(n)], dtype=torch.float32)
    T = n * e
    steps = codes[:, None].expand(T, num_envs)  # [T, B]
    last = torch.tensor([s == n - 1 for _ in range(e) for s in range(n)])[:, None].expand(T, num_envs)
    env_ids = torch.arange(num_envs, dtype=torch.int64)[None, :].expand(T, num_envs)

    def with_extra(x: torch.Tensor, where: str) -> torch.Tensor:
        """Insert one poison row per epoch at the start ("first") or end ("last")."""
        blocks = x.reshape(e, n, *x.shape[1:])
        pad = torch.full((e, 1, *x.shape[1:]), POISON).to(x.dtype)
        if x.dtype == torch.bool:
            pad = torch.zeros((e, 1, *x.shape[1:]), dtype=torch.bool)
        parts = [pad, blocks] if where == "first" else [blocks, pad]
        return torch.cat(parts, dim=1).reshape(e * (n + 1), *x.shape[1:])

    done_extra = layout in ("rlinf", "done_only")
    action_extra = layout == "rlinf"

    def done_field(x: torch.Tensor) -> torch.Tensor:
        return with_extra(x, "first") if done_extra else x

    def action_field(x: torch.Tensor) -> torch.Tensor:
        return with_extra(x, "last") if action_extra else x

    actions = steps[..., None].expand(T, num_envs, 2).clone()
    curr = {
        "states": steps[..., None].expand(T, num_envs, obs_dim).clone(),
        "env_ids": env_ids[..., None].clone(),
    }
    nxt = {
        "states": (steps + 1)[..., None].expand(T, num_envs, obs_dim).clone(),
        "env_ids": env_ids[..., None].clone(),
    }
    if images:
        img = (
            (steps.to(torch.int64) % 251).to(torch.uint8)[..., None, None, None].expand(T, num_envs, 4, 4, 3)
        )
        curr["main_images"] = img.clone()
        nxt["main_images"] = img.clone()
    traj = Trajectory(
        max_episode_length=n,
        model_weights_id=weights_id,
        model_update_count=model_update_count,
        actions=action_field(actions),
        intervene_flags=action_field(torch.zeros(T, num_envs, 2, dtype=torch.bool)),
        rewards=steps[..., None].clone(),
        terminations=done_field(torch.zeros(T, num_envs, 1, dtype=torch.bool)),
        truncations=done_field(last[..., None].clone()),
        dones=done_field(last[..., None].clone()),
        versions=action_field(torch.ones(T, num_envs, 1)),
        curr_obs=curr,
        next_obs=nxt,
        forward_inputs={"action": action_field(actions.clone())},
    )
    if logprobs:
        traj.prev_logprobs = action_field(steps[..., None].clone())
    return traj


def odd_trajectory(i: int, t: int = 3, b: int = 2, empty: bool = True) -> Trajectory:
    """Random fields of every dtype and shape the Parquet export distinguishes: uint8 images of
    1, 3 and 4 channels, uint8 fields that are not images, ``bfloat16``, ``float16``,
    ``float64``, integers of every width, ``bool``, a scalar per transition and (with ``empty``;
    the segment format cannot hold it) a field of size 0."""
    g = torch.Generator().manual_seed(i)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(t, b, *shape, generator=g)

    def bytes_(*shape: int) -> torch.Tensor:
        return torch.randint(0, 256, (t, b, *shape), generator=g, dtype=torch.uint8)

    curr_obs = {
        "rgb": bytes_(5, 4, 3),
        "rgba": bytes_(4, 5, 4),
        "gray": bytes_(3, 3, 1),
        "mask": bytes_(6),  # uint8, not an image
        "grid": bytes_(4, 4),  # 2-d uint8: not an image
        "two": bytes_(4, 4, 2),  # 2 channels: not an image
        "count": torch.randint(-50, 50, (t, b, 2), generator=g, dtype=torch.int16),
        "tiny": torch.randint(-9, 9, (t, b, 1), generator=g, dtype=torch.int8),
        "wide": torch.randint(-(2**40), 2**40, (t, b, 2), generator=g, dtype=torch.int64),
        "mid": torch.randint(-(2**20), 2**20, (t, b, 1), generator=g, dtype=torch.int32),
    }
    if empty:
        curr_obs["none"] = torch.zeros(t, b, 0)
    return Trajectory(
        max_episode_length=None,
        model_weights_id=f"odd-{i}",
        model_update_count=i,
        rewards=rand(),  # a scalar per transition
        actions=rand(2).to(torch.bfloat16),
        dones=torch.rand(t, b, 1, generator=g) > 0.5,
        prev_values=rand(1).to(torch.float64),
        versions=rand(1).to(torch.float16),
        curr_obs=curr_obs,
        next_obs={"rgb": bytes_(5, 4, 3), "flag": torch.rand(t, b, 2, 2, generator=g) > 0.5},
    )


def data_files(root: Path) -> dict[Path, bytes]:
    """Every file under ``root`` with its bytes, but the writers' lock files (not data)."""
    return {p: p.read_bytes() for p in Path(root).rglob("*") if p.is_file() and p.name != LOCK_NAME}


def assert_same_stored_data(a: Path, b: Path) -> None:
    """Two buffer directories store the same data: the same trajectory files, segments and
    ``metadata.json`` byte for byte (not the index and its sidecar, whose entries carry each
    trajectory's random ``uuid``, nor lock files). A ``pkl`` file is compared by what it holds, bit
    for bit: the pickle of a tensor names its storage by its memory address, so two writes of the
    same data differ."""
    index_files = ("trajectory_index.json", index_columns.NAME)
    files = [
        {str(p.relative_to(root)): p for p in data_files(root) if p.name not in index_files}
        for root in (a, b)
    ]
    assert files[0].keys() == files[1].keys()
    assert any(name.startswith(("trajectory_", "seg-")) for name in files[0])
    for name, path in files[0].items():
        other = files[1][name]
        if name.endswith(".pkl"):
            mine, theirs = (flat_columns(formats.read(str(p), "pkl")) for p in (path, other))
            assert mine.keys() == theirs.keys(), name
            for key, value in mine.items():
                if isinstance(value, torch.Tensor):
                    assert tensor_bits(value) == tensor_bits(theirs[key]), (name, key)
                else:
                    assert value == theirs[key], (name, key)
        else:
            assert path.read_bytes() == other.read_bytes(), name


def flat_columns(data: dict) -> dict:
    """A trajectory dict's values by dotted name (``curr_obs.states``), tensors and metadata."""
    out = {}
    for name, value in data.items():
        for key, inner in value.items() if isinstance(value, dict) else [(None, value)]:
            out[name if key is None else f"{name}.{key}"] = inner
    return out


def tensor_bits(tensor: torch.Tensor) -> bytes:
    """A tensor's dtype, shape and the bytes of its values (bit for bit: NaN payloads, -0.0)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return repr((tensor.dtype, tuple(tensor.shape))).encode() + flat.view(torch.uint8).numpy().tobytes()


def assert_same_batch(a: dict, b: dict) -> None:
    """Two sampled batches hold the same keys and the same tensors, bit for bit."""
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, dict):
            assert value.keys() == b[key].keys(), key
            assert all(tensor_bits(v) == tensor_bits(b[key][k]) for k, v in value.items()), key
        else:
            assert tensor_bits(value) == tensor_bits(b[key]), key


def assert_same_trajectory(got: Trajectory, expected: Trajectory) -> None:
    """``got`` has exactly ``expected``'s fields (empty dicts as absent), dtypes, shapes, values
    (bit for bit; NumPy arrays taken as tensors) and metadata; ``got`` holds tensors."""
    want, have = expected.to_dict(), got.to_dict()
    assert set(have) == set(want), sorted(set(have) ^ set(want))
    for name, value in want.items():
        if isinstance(value, dict):
            assert set(have[name]) == set(value), name
            pairs = [(f"{name}.{k}", have[name][k], v) for k, v in value.items()]
        elif isinstance(value, torch.Tensor | np.ndarray):
            pairs = [(name, have[name], value)]
        else:
            assert have[name] == value, name
            continue
        for label, tensor, reference in pairs:
            assert isinstance(tensor, torch.Tensor), label
            reference = (
                torch.from_numpy(np.ascontiguousarray(reference))
                if isinstance(reference, np.ndarray)
                else reference
            )
            assert tensor_bits(tensor) == tensor_bits(reference), label


def assert_aligned(batch: dict, n: int | None = None) -> None:
    """Every row of a sampled batch is one real, aligned transition of a coded trajectory."""
    c = batch["curr_obs"]["states"][:, 0]
    assert (batch["curr_obs"]["states"] == c[:, None]).all()
    assert (batch["actions"] == c[:, None]).all(), "actions misaligned with curr_obs"
    assert (batch["rewards"][:, 0] == c).all(), "rewards misaligned with curr_obs"
    assert (batch["next_obs"]["states"] == (c + 1)[:, None]).all(), "next_obs misaligned"
    assert (batch["forward_inputs"]["action"] == c[:, None]).all()
    assert (c != POISON).all()
    if "prev_logprobs" in batch:
        assert (batch["prev_logprobs"][:, 0] == c).all()
    if n is not None:
        expected_done = (c % 100) == n - 1
        assert (batch["dones"][:, 0] == expected_done).all(), "dones misaligned"
        assert (batch["truncations"][:, 0] == expected_done).all()
    if "env_ids" in batch["curr_obs"]:
        assert (batch["curr_obs"]["env_ids"] == batch["next_obs"]["env_ids"]).all()


def chi_square(observed, expected) -> float:
    """Pearson's chi-square statistic of observed counts against expected counts."""
    observed = np.asarray(observed, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return float(((observed - expected) ** 2 / expected).sum())


def chi2_bound(df: int) -> float:
    """The 99.9% quantile of the chi-square distribution with ``df`` degrees of freedom."""
    from scipy.stats import chi2

    return float(chi2.ppf(0.999, df))


@contextlib.contextmanager
def ring_wrapping(enabled: bool = True):
    """Buffers built inside start their in-memory ring 7 rows before its end, so trajectories
    wrap around it (``TrajectoryCache(start_row=-7)``: no result may depend on where it starts)."""
    if not enabled:
        yield
        return
    original = contents_module.TrajectoryCache
    contents_module.TrajectoryCache = functools.partial(TrajectoryCache, start_row=-7)
    try:
        yield
    finally:
        contents_module.TrajectoryCache = original


@pytest.fixture
def fixture_dir(tmp_path: Path) -> Path:
    """A writable copy of the RLinf-written fixture directory."""
    src = _fixture_dir()
    if not src.is_dir():
        pytest.skip(f"fixture directory {src} not present")
    dst = tmp_path / "rlinf-autosave-pt"
    shutil.copytree(src, dst)
    return dst


_OPEN: list[TrajectoryReplayBuffer] = []


class TrackedBuffer(TrajectoryReplayBuffer):
    """The buffer under test, remembered so that auto-save buffers are closed after each test
    (their writer thread and journal handle would otherwise outlive the test)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.auto_save:
            _OPEN.append(self)


@pytest.fixture(autouse=True)
def _close_tracked_buffers():
    yield
    while _OPEN:
        buf = _OPEN.pop()
        with contextlib.suppress(ReplayBufferError):
            buf.close()
