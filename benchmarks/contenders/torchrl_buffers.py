"""``torchrl_lazy`` and ``torchrl_memmap``: TorchRL's ``ReplayBuffer`` over a ``LazyTensorStorage`` or
a ``LazyMemmapStorage`` (files in the case's directory), with a ``RandomSampler``.

The transitions are stored as one TensorDict of flattened ``[T * B]`` rows with nested keys
(``("curr_obs", "states")``); each trajectory is added with ``rb.extend``. One ``ReplayBuffer``
with ``batch_size=n`` per sample size shares the storage; ``rb.sample()`` is timed. TorchRL has no
flush: for the write case the harness fsyncs the memmap files (``flush``) to match the others.

Samplers (``LazyTensorStorage``, in memory):

* ``torchrl_slice``, ``torchrl_slice_pad``, ``torchrl_slice_nocache``: ``SliceSampler`` with
  ``slice_len=L`` and ``batch_size=N * L``. A ``SliceSampler`` needs the steps of an episode
  in consecutive storage rows, so each trajectory is stored env by env (``[B, T]`` flattened,
  not the rollout's ``[T, B]``) with an ``end`` column: ``dones``, or the env's last step. The
  sampler reads ``end_key="end"`` (faster than a ``traj_key``, says its documentation).
  ``torchrl_slice``: ``strict_length=True`` (slices never cross an end; shorter episodes are
  never drawn), ``cache_values=True`` (the episode boundaries are computed once, and again
  after every ``extend``). ``_pad``: ``strict_length=False, pad_output=True`` (the mask is in
  the info, so ``return_info=True``). ``_nocache``: as ``torchrl_slice`` with
  ``cache_values=False`` (boundaries recomputed by every call, as after every ``extend`` in an
  online loop). ``rb.sample(return_info=True)`` is timed; the batch is ``[N * L]``
  (TorchRL does not reshape to ``[N, L]``; a ``view`` would cost nothing).
* ``torchrl_stale_half``: ``StalenessAwareSampler(max_staleness=params["stale_half"])`` with a
  constant weight (TorchRL's default weighs by ``1 / (staleness + 1)``; ours samples the fresh
  part uniformly) over a ``policy_version`` column holding each transition's
  ``model_update_count``; ``consumer_version`` is the newest version added. ``rb.sample()`` is
  timed. It draws without replacement when the batch is smaller than the fresh part.
* ``torchrl_prioritized``: ``PrioritizedSampler(rows, alpha, beta, eps)``; timed:
  ``rb.sample(return_info=True)`` then ``rb.update_priority(info["index"], priorities)``.
  Its sum and min trees are TorchRL's C++ extension (``torchrl._torchrl``). A TorchRL wheel
  built for another torch release fails to load it (pinned here: TorchRL 0.14.1 with torch
  2.13, ``undefined symbol``: two ``torch::autograd`` functions whose signatures changed, used
  only by TorchRL's custom autograd ops, never by the trees). Then, before importing TorchRL,
  :func:`load_extension` compiles stubs of exactly the missing ``torch::autograd`` symbols
  (abort if ever called) with the C compiler, loads them ``RTLD_GLOBAL``, and TorchRL's own
  binary loads unchanged; the row's note says so. Without a compiler, or if another kind of
  symbol is missing, the row reads "unsupported" with the reason.

TorchRL is imported when a contender is created (not with this module), after the extension
was prepared; the extension serves only TorchRL's prioritized samplers, so the other rows are
unaffected.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import tempfile
from typing import Any

import torch

from ..measure import files_under, fsync_files
from ..scenarios import nest, trajectory_columns
from . import NotInstalled, Store, StoreConfig, Unsupported

# TorchRL names, bound by _import()
TensorDict: Any = None
LazyMemmapStorage: Any = None
LazyTensorStorage: Any = None
ReplayBuffer: Any = None
PrioritizedSampler: Any = None
RandomSampler: Any = None
SliceSampler: Any = None
StalenessAwareSampler: Any = None
_STUBBED = "_ZN5torch8autograd"  # only torch::autograd symbols are ever stubbed
_EXTENSION: tuple[str | None, str] = ("TorchRL was not imported", "")  # load_extension()'s result


def load_extension() -> tuple[str | None, str]:
    """Make TorchRL's C++ extension loadable before TorchRL is imported.

    Returns ``(error, note)``: ``error`` is why it cannot load (``None`` if it can); ``note``
    says what was done (stubbed symbols), '' if nothing was needed.
    """
    # torch is imported (above): its libraries, which the extension links to, are loaded
    spec = importlib.util.find_spec("torchrl")
    if spec is None or not spec.submodule_search_locations:
        return "torchrl is not installed", ""
    found = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "_torchrl*.so"))
    if not found:
        return "TorchRL has no C++ extension (_torchrl) in this installation", ""
    symbols: list[str] = []
    work = tempfile.mkdtemp(prefix="torchrl-stubs-")
    try:
        for attempt in range(8):
            try:
                ctypes.CDLL(found[0])
            except OSError as exc:
                match = re.search(r"undefined symbol: (\S+)", str(exc))
                if not match or not match.group(1).startswith(_STUBBED) or match.group(1) in symbols:
                    return f"TorchRL's C++ extension does not load: {str(exc)[-200:]}", ""
                symbols.append(match.group(1))
                error = _load_stubs(symbols, os.path.join(work, f"stubs{attempt}"))
                if error:
                    return f"TorchRL's C++ extension was built for another torch and {error}", ""
                continue
            note = ""
            if symbols:
                note = (
                    f"TorchRL's C++ extension is built for another torch: loaded with {len(symbols)} "
                    "unused torch::autograd symbols stubbed (see torchrl_buffers.py)"
                )
            return None, note
        return "TorchRL's C++ extension does not load (too many missing symbols)", ""
    finally:
        shutil.rmtree(work, ignore_errors=True)  # a loaded library may be unlinked


def _load_stubs(symbols: list[str], stem: str) -> str | None:
    """Compile ``void name(void) { abort(); }`` for each symbol into ``stem.so`` and load it
    ``RTLD_GLOBAL``; returns why that failed, or ``None``."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return "there is no C compiler to stub its missing symbols"
    try:
        with open(stem + ".c", "w") as f:
            f.write("#include <stdlib.h>\n")
            f.writelines(f"void {name}(void) {{ abort(); }}\n" for name in symbols)
        cmd = [compiler, "-shared", "-fPIC", "-o", stem + ".so", stem + ".c"]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        ctypes.CDLL(stem + ".so", mode=ctypes.RTLD_GLOBAL)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"stubbing its missing symbols failed: {type(exc).__name__}: {exc}"
    return None


def _import() -> None:
    """Prepare the extension, then import TorchRL (once); raises :class:`NotInstalled` if it is
    missing."""
    global _EXTENSION
    if TensorDict is not None:
        return
    if importlib.util.find_spec("torchrl") is None or importlib.util.find_spec("tensordict") is None:
        raise NotInstalled("ModuleNotFoundError: torchrl or tensordict is not installed")
    _EXTENSION = load_extension()
    try:
        from tensordict import TensorDict as td
        from torchrl.data import LazyMemmapStorage as lms
        from torchrl.data import LazyTensorStorage as lts
        from torchrl.data import ReplayBuffer as rb
        from torchrl.data.replay_buffers.samplers import PrioritizedSampler as ps
        from torchrl.data.replay_buffers.samplers import RandomSampler as rs
        from torchrl.data.replay_buffers.samplers import SliceSampler as ss
        from torchrl.data.replay_buffers.samplers import StalenessAwareSampler as sas
    except ImportError as exc:  # optional dependency
        raise NotInstalled(f"{type(exc).__name__}: {exc}") from exc
    logging.getLogger("torchrl").setLevel(logging.WARNING)
    globals().update(
        TensorDict=td,
        LazyMemmapStorage=lms,
        LazyTensorStorage=lts,
        ReplayBuffer=rb,
        PrioritizedSampler=ps,
        RandomSampler=rs,
        SliceSampler=ss,
        StalenessAwareSampler=sas,
    )


class TorchRLStore(Store):
    """A TorchRL replay buffer holding ``cfg.capacity`` trajectories' transitions."""

    def __init__(self, kind: str, cfg: StoreConfig) -> None:
        rows = cfg.capacity * cfg.spec.transitions
        self.spec = cfg.spec
        self.memmap = kind == "torchrl_memmap"
        self.path = cfg.path if self.memmap else None
        if self.memmap:
            self.storage = LazyMemmapStorage(rows, scratch_dir=cfg.path)
        else:
            self.storage = LazyTensorStorage(rows)
        self.writer = ReplayBuffer(storage=self.storage, sampler=RandomSampler())
        self.rbs: dict[int, Any] = {}
        if self.memmap:
            self.flush_note = "TorchRL has no flush: the harness fsyncs the memmap files"

    def add(self, traj: Any) -> None:
        cols = trajectory_columns(traj, self.spec)
        self.writer.extend(TensorDict(nest(cols), batch_size=[self.spec.transitions]))

    def flush(self) -> None:
        if self.memmap:
            fsync_files(self.files(), self.path)

    def prepare(self, n: int) -> None:
        if n not in self.rbs:
            self.rbs[n] = ReplayBuffer(storage=self.storage, sampler=RandomSampler(), batch_size=n)

    def sample(self, n: int) -> Any:
        return self.rbs[n].sample()

    def indexed(self) -> int | None:
        return len(self.storage)

    def files(self) -> list[str]:
        return files_under(self.path)


class TorchRLSliceStore(Store):
    """A ``LazyTensorStorage`` of episodes in consecutive rows, sampled with a ``SliceSampler``."""

    extra_keys = ("end",)

    def __init__(self, kind: str, cfg: StoreConfig) -> None:
        self.spec = cfg.spec
        self.kind = kind
        self.storage = LazyTensorStorage(cfg.capacity * cfg.spec.transitions)
        self.writer = ReplayBuffer(storage=self.storage, sampler=RandomSampler())
        self.rbs: dict[tuple[int, int], Any] = {}

    def add(self, traj: Any) -> None:
        T, B = self.spec.steps, self.spec.envs
        cols = {}
        for key, value in trajectory_columns(traj, self.spec).items():
            # rows t * B + b -> b * T + t: the steps of one env are consecutive
            cols[key] = value.reshape(T, B, *value.shape[1:]).transpose(0, 1).reshape(T * B, *value.shape[1:])
        end = cols[("dones",)].reshape(B, T).clone()
        end[:, -1] = True  # an env's last step ends its run of rows
        cols[("end",)] = end.reshape(T * B, 1)
        self.writer.extend(TensorDict(nest(cols), batch_size=[T * B]))

    def prepare_sequences(self, num: int, length: int) -> None:
        if (num, length) not in self.rbs:
            options: dict[str, Any] = {"strict_length": True, "cache_values": True}
            if self.kind == "torchrl_slice_pad":
                options = {"strict_length": False, "pad_output": True, "cache_values": True}
            elif self.kind == "torchrl_slice_nocache":
                options["cache_values"] = False
            sampler = SliceSampler(slice_len=length, end_key="end", **options)
            self.rbs[(num, length)] = ReplayBuffer(
                storage=self.storage, sampler=sampler, batch_size=num * length
            )

    def sample_sequences(self, num: int, length: int) -> Any:
        batch, _info = self.rbs[(num, length)].sample(return_info=True)
        return batch

    def indexed(self) -> int | None:
        return len(self.storage)


class TorchRLPrioritizedStore(Store):
    """A ``LazyTensorStorage`` sampled by a ``PrioritizedSampler``; ``update`` sets priorities."""

    updates_priorities = True

    def __init__(self, cfg: StoreConfig, note: str) -> None:
        self.note = note
        rows = cfg.capacity * cfg.spec.transitions
        p = cfg.params
        self.spec = cfg.spec
        self.storage = LazyTensorStorage(rows)
        self.sampler = PrioritizedSampler(rows, alpha=p["alpha"], beta=p["beta"], eps=p["eps"])
        self.writer = ReplayBuffer(storage=self.storage, sampler=self.sampler)
        self.rbs: dict[int, Any] = {}
        self.info: dict[str, Any] = {}

    def add(self, traj: Any) -> None:
        cols = trajectory_columns(traj, self.spec)
        self.writer.extend(TensorDict(nest(cols), batch_size=[self.spec.transitions]))

    def prepare(self, n: int) -> None:
        if n not in self.rbs:
            self.rbs[n] = ReplayBuffer(storage=self.storage, sampler=self.sampler, batch_size=n)

    def sample(self, n: int) -> Any:
        batch, self.info = self.rbs[n].sample(return_info=True)
        return batch

    def update(self, batch: Any, priorities: Any) -> None:
        self.writer.update_priority(self.info["index"], priorities)

    def indexed(self) -> int | None:
        return len(self.storage)


def _constant_weight(staleness: Any) -> Any:
    """Every fresh entry equally likely (ours samples the fresh part uniformly)."""
    return torch.ones_like(staleness)


class TorchRLStaleStore(Store):
    """A ``LazyTensorStorage`` with a ``policy_version`` column (each transition's
    ``model_update_count``) sampled by a ``StalenessAwareSampler``."""

    extra_keys = ("policy_version",)
    note = (
        "StalenessAwareSampler(max_staleness, constant weight; consumer_version = newest version) "
        "draws without replacement (torch.multinomial) when the batch is smaller than the fresh part"
    )

    def __init__(self, cfg: StoreConfig) -> None:
        self.spec = cfg.spec
        self.storage = LazyTensorStorage(cfg.capacity * cfg.spec.transitions)
        self.sampler = StalenessAwareSampler(
            max_staleness=cfg.params["stale_half"], staleness_weight_fn=_constant_weight
        )
        self.writer = ReplayBuffer(storage=self.storage, sampler=RandomSampler())
        self.rbs: dict[int, Any] = {}

    def add(self, traj: Any) -> None:
        cols = nest(trajectory_columns(traj, self.spec))
        n = self.spec.transitions
        cols["policy_version"] = torch.full((n,), traj.model_update_count, dtype=torch.int64)
        self.writer.extend(TensorDict(cols, batch_size=[n]))
        self.sampler.consumer_version = max(self.sampler.consumer_version, traj.model_update_count)

    def prepare(self, n: int) -> None:
        if n not in self.rbs:
            self.rbs[n] = ReplayBuffer(storage=self.storage, sampler=self.sampler, batch_size=n)

    def sample(self, n: int) -> Any:
        return self.rbs[n].sample()

    def indexed(self) -> int | None:
        return len(self.storage)


VARIANTS = (
    "torchrl_lazy",
    "torchrl_memmap",
    "torchrl_slice",
    "torchrl_slice_pad",
    "torchrl_slice_nocache",
    "torchrl_prioritized",
    "torchrl_stale_half",
)


def _check(variant: str) -> str:
    """Import TorchRL; for the prioritized variant, return the note about its extension ('' if
    none) or raise :class:`Unsupported` if the extension is not usable."""
    if variant not in VARIANTS:
        raise Unsupported(f"unknown TorchRL variant {variant!r}")
    _import()
    if variant != "torchrl_prioritized":
        return ""
    error, note = _EXTENSION
    if error:
        raise Unsupported(f"PrioritizedSampler needs TorchRL's C++ extension: {error}")
    from torchrl.data.replay_buffers.samplers import prioritized

    if prioritized.SumSegmentTreeFp32 is None:  # TorchRL was imported elsewhere first (--inline)
        raise Unsupported(
            "TorchRL was imported before its C++ extension could be prepared; run without --inline"
        )
    return note


def create(variant: str, mode: str, cfg: StoreConfig) -> Store:
    """A TorchRL buffer; ``disk`` and ``write`` need the memmap storage, ``tiny`` is not applicable."""
    note = _check(variant)
    if variant.startswith("torchrl_slice"):
        if mode != "sequences":
            raise Unsupported("a slice sampler draws sequences")
        return TorchRLSliceStore(variant, cfg)
    if variant == "torchrl_prioritized":
        if mode != "prioritized":
            raise Unsupported("a prioritized sampler")
        return TorchRLPrioritizedStore(cfg, note)
    if mode in ("disk", "write") and variant != "torchrl_memmap":
        raise Unsupported("in-memory storage")
    if mode == "tiny":
        raise Unsupported("no trajectory index")
    if variant == "torchrl_stale_half":
        if mode != "sample":
            raise Unsupported("a staleness-aware sampler")
        return TorchRLStaleStore(cfg)
    if mode in ("sequences", "rate_limited"):
        raise Unsupported(f"no {mode} contender")
    return TorchRLStore(variant, cfg)


def fresh(variant: str, cfg: StoreConfig) -> Store:
    """Not applicable: TorchRL does not read buffer directories."""
    _check(variant)
    raise Unsupported("does not read buffer directories")


def open_existing(variant: str, path: str, cfg: StoreConfig) -> Store:
    """Not applicable: TorchRL does not read buffer directories."""
    _check(variant)
    raise Unsupported("does not read buffer directories")
