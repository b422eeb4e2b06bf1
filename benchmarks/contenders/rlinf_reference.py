"""``rlinf_reference``: how RLinf's own ``TrajectoryReplayBuffer`` stores and samples, re-implemented
from a description of its algorithm (no RLinf code) as the baseline users compare with.

What it does, as RLinf does:

* an index dict ``trajectory_id -> {"num_samples", "shape", "model_weights_id", ...}`` and an
  insertion-ordered id list; with ``auto_save``, every add writes the trajectory with
  ``torch.save`` (synchronously) and then rewrites the whole ``trajectory_index.json`` and
  ``metadata.json`` (no fsync, as RLinf);
* a cache whose slots are padded to the longest trajectory (``T * B`` rows) and allocated for all
  ``cache_size`` slots at the first add; the newest ``cache_size`` trajectories live there;
* ``sample(n)``: the window's per-trajectory transition counts, their cumulative sum and
  ``torch.bucketize`` map ``n`` uniform draws to (trajectory, row); a Python loop groups the rows
  by trajectory; each trajectory is taken from the cache or, if not cached, read whole with
  ``torch.load`` (every call); its rows are indexed, and the pieces are ``torch.cat``'ed per field.

It handles the aligned row layout only (all the benchmark generates). It is meant to be honest:
nothing is made slower than the algorithm requires.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict, defaultdict
from typing import Any

import torch

from ..measure import files_under
from ..scenarios import Key, nest
from . import Store, StoreConfig, Unsupported


def _file_dict(traj: Any) -> dict[str, Any]:
    """The dict RLinf saves: every tensor field, dict fields as dicts, plus two metadata keys."""
    out: dict[str, Any] = {}
    for name, value in vars(traj).items():
        if isinstance(value, torch.Tensor):
            out[name] = value
        elif isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
            out[name] = dict(value)
    out["max_episode_length"] = traj.max_episode_length
    out["model_weights_id"] = traj.model_weights_id
    return out


def _flat_rows(data: dict[str, Any]) -> dict[Key, torch.Tensor]:
    """``{"actions": [T, B, A], "curr_obs": {...}}`` -> ``{("actions",): [T * B, A], ...}``."""
    out: dict[Key, torch.Tensor] = {}
    for name, value in data.items():
        if isinstance(value, torch.Tensor):
            out[(name,)] = value.reshape(-1, *value.shape[2:])
        elif isinstance(value, dict):
            for sub, t in value.items():
                out[(name, sub)] = t.reshape(-1, *t.shape[2:])
    return out


class RLinfStyleBuffer:
    """The reference buffer (see the module docstring)."""

    def __init__(
        self,
        seed: int = 1234,
        enable_cache: bool = True,
        cache_size: int = 5,
        sample_window_size: int = 100,
        auto_save: bool = False,
        auto_save_path: str = "",
    ) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.seed = seed
        self.enable_cache = enable_cache
        self.cache_size = cache_size
        self.sample_window_size = sample_window_size
        self.auto_save = auto_save
        self.path = auto_save_path
        if auto_save:
            os.makedirs(auto_save_path, exist_ok=True)
        self.trajectory_index: dict[int, dict[str, Any]] = {}
        self.trajectory_id_list: list[int] = []
        self.trajectory_counter = 0
        self.size = 0
        self.total_samples = 0
        self._cache: dict[Key, torch.Tensor] | None = None
        self._slot_rows = 0
        self._slots: OrderedDict[int, int] = OrderedDict()  # trajectory id -> slot, oldest first
        self._load_dir = auto_save_path

    # -- cache ---------------------------------------------------------------------------------
    def _cache_put(self, tid: int, rows: dict[Key, torch.Tensor]) -> list[int]:
        """Copy a trajectory's rows into a slot; returns the ids evicted to make room."""
        n = next(iter(rows.values())).shape[0]
        if self._cache is None or n > self._slot_rows:
            old, old_rows = self._cache, self._slot_rows
            self._slot_rows = max(n, self._slot_rows)
            self._cache = {
                k: torch.empty((self.cache_size, self._slot_rows, *v.shape[1:]), dtype=v.dtype)
                for k, v in rows.items()
            }
            if old is not None:
                for k, v in old.items():
                    self._cache[k][:, :old_rows].copy_(v)
        evicted: list[int] = []
        if len(self._slots) >= self.cache_size:
            old_tid, slot = self._slots.popitem(last=False)
            evicted.append(old_tid)
        else:
            slot = len(self._slots)
        for k, v in rows.items():
            self._cache[k][slot, :n].copy_(v)
        self._slots[tid] = slot
        return evicted

    def cache_bytes(self) -> int:
        """Bytes allocated for the cache slots."""
        if self._cache is None:
            return 0
        return sum(t.numel() * t.element_size() for t in self._cache.values())

    # -- adding --------------------------------------------------------------------------------
    def _file_name(self, tid: int, info: dict[str, Any]) -> str:
        return f"trajectory_{tid}_{info['model_weights_id']}.pt"

    def add_trajectories(self, trajectories: list[Any]) -> None:
        """Index, save (with auto_save) and cache each trajectory."""
        for traj in trajectories:
            tid = self.trajectory_counter
            self.trajectory_counter += 1
            data = _file_dict(traj)
            shape = list(traj.rewards.shape)
            num = shape[0] * shape[1]
            info = {
                "num_samples": num,
                "trajectory_id": tid,
                "max_episode_length": traj.max_episode_length,
                "shape": shape,
                "model_weights_id": traj.model_weights_id,
            }
            self.trajectory_index[tid] = info
            self.trajectory_id_list.append(tid)
            self.size += 1
            self.total_samples += num
            if self.auto_save:
                torch.save(data, os.path.join(self.path, self._file_name(tid, info)))
                self._save_index()
            if self.enable_cache and self.cache_size > 0:
                evicted = self._cache_put(tid, _flat_rows(data))
                if not self.auto_save:  # memory only: what leaves the cache is gone
                    for old in evicted:
                        self._forget(old)

    def _forget(self, tid: int) -> None:
        info = self.trajectory_index.pop(tid)
        self.trajectory_id_list.remove(tid)
        self.size -= 1
        self.total_samples -= info["num_samples"]

    def _save_index(self) -> None:
        """Rewrite the whole index and the metadata (RLinf does this after every add)."""
        index = {
            "trajectory_index": {str(k): v for k, v in self.trajectory_index.items()},
            "trajectory_id_list": self.trajectory_id_list,
        }
        with open(os.path.join(self.path, "trajectory_index.json"), "w") as f:
            json.dump(index, f)
        meta = {
            "trajectory_format": "pt",
            "size": self.size,
            "total_samples": self.total_samples,
            "trajectory_counter": self.trajectory_counter,
            "seed": self.seed,
        }
        with open(os.path.join(self.path, "metadata.json"), "w") as f:
            json.dump(meta, f)

    # -- loading -------------------------------------------------------------------------------
    def load_checkpoint(self, load_path: str) -> None:
        """Read metadata and index, then load the newest ``cache_size`` trajectories into the cache."""
        with open(os.path.join(load_path, "metadata.json")) as f:
            meta = json.load(f)
        with open(os.path.join(load_path, "trajectory_index.json")) as f:
            index = json.load(f)
        self.trajectory_index = {int(k): v for k, v in index["trajectory_index"].items()}
        self.trajectory_id_list = [int(i) for i in index["trajectory_id_list"]]
        self.trajectory_counter = int(meta["trajectory_counter"])
        self.size = len(self.trajectory_id_list)
        self.total_samples = sum(v["num_samples"] for v in self.trajectory_index.values())
        self._load_dir = load_path
        self._cache, self._slot_rows, self._slots = None, 0, OrderedDict()
        if self.enable_cache and self.cache_size > 0:
            for tid in self.trajectory_id_list[-self.cache_size :]:
                self._cache_put(tid, _flat_rows(self._load(tid)))

    def _load(self, tid: int) -> dict[str, Any]:
        directory = self.path if self.auto_save else self._load_dir
        path = os.path.join(directory, self._file_name(tid, self.trajectory_index[tid]))
        return torch.load(path, map_location="cpu", weights_only=True)

    # -- sampling ------------------------------------------------------------------------------
    def sample(self, num_chunks: int) -> dict[str, Any]:
        """Draw ``num_chunks`` transitions from the window (grouped by trajectory)."""
        ids = self.trajectory_id_list
        if self.sample_window_size > 0:
            ids = ids[-self.sample_window_size :]
        counts = torch.tensor([self.trajectory_index[t]["num_samples"] for t in ids], dtype=torch.int64)
        cumsum = torch.cumsum(counts, dim=0)
        total = int(cumsum[-1])
        draws = torch.randint(0, total, (num_chunks,), generator=self.generator)
        which = torch.bucketize(draws, cumsum, right=True)
        local = draws - (cumsum - counts)[which]
        groups: dict[int, list[int]] = defaultdict(list)
        for w, r in zip(which.tolist(), local.tolist(), strict=True):
            groups[w].append(r)
        pieces: dict[Key, list[torch.Tensor]] = defaultdict(list)
        for w, rows in groups.items():
            tid = ids[w]
            slot = self._slots.get(tid)
            if slot is not None and self._cache is not None:
                data = {k: v[slot] for k, v in self._cache.items()}
            else:
                data = _flat_rows(self._load(tid))
            sel = torch.tensor(rows, dtype=torch.int64)
            for k, v in data.items():
                pieces[k].append(v[sel])
        return nest({k: torch.cat(v) for k, v in pieces.items()})


class ReferenceStore(Store):
    """Adapter for :class:`RLinfStyleBuffer`."""

    def __init__(self, buf: RLinfStyleBuffer, path: str | None) -> None:
        self.buf = buf
        self.path = path
        if buf.auto_save:
            self.flush_note = "writes synchronously in add and never fsyncs (as RLinf): not durable"

    def add(self, traj: Any) -> None:
        self.buf.add_trajectories([traj])

    def sample(self, n: int) -> Any:
        return self.buf.sample(n)

    def load(self, path: str) -> None:
        self.buf.load_checkpoint(path)

    def cached_bytes(self) -> int | None:
        return self.buf.cache_bytes()

    def indexed(self) -> int | None:
        return self.buf.size

    def files(self) -> list[str]:
        return files_under(self.path)


def _is_memory(variant: str) -> bool:
    return variant in ("", "rlinf_reference", "memory")


def create(variant: str, mode: str, cfg: StoreConfig) -> Store:
    """Memory variant: every window trajectory cached; ``pt``: auto-save into ``cfg.path``."""
    if _is_memory(variant):
        if mode in ("disk", "write", "tiny"):
            raise Unsupported("needs auto-save")
        buf = RLinfStyleBuffer(seed=cfg.seed, cache_size=cfg.capacity, sample_window_size=cfg.window)
        return ReferenceStore(buf, None)
    if variant != "pt":
        raise Unsupported(f"only writes pt files, not {variant!r}")
    assert cfg.path is not None
    buf = RLinfStyleBuffer(
        seed=cfg.seed,
        enable_cache=cfg.cache_size > 0,
        cache_size=cfg.cache_size,
        sample_window_size=cfg.window,
        auto_save=True,
        auto_save_path=cfg.path,
    )
    return ReferenceStore(buf, cfg.path)


def fresh(variant: str, cfg: StoreConfig) -> Store:
    """An empty buffer (window and cache from cfg) to time ``load_checkpoint`` on."""
    buf = RLinfStyleBuffer(seed=cfg.seed, cache_size=cfg.cache_size, sample_window_size=cfg.window)
    return ReferenceStore(buf, None)


def open_existing(variant: str, path: str, cfg: StoreConfig) -> Store:
    """Load the directory and keep auto-saving into it."""
    buf = RLinfStyleBuffer(
        seed=cfg.seed,
        cache_size=cfg.cache_size,
        sample_window_size=cfg.window,
        auto_save=True,
        auto_save_path=path,
    )
    buf.load_checkpoint(path)
    return ReferenceStore(buf, path)
