"""This library beside the real RLinf 0.3.0 from PyPI: the switch, RLinf's datasets on our buffer,
a side-by-side install, and RLinf's newer (main-branch) module layout.

Virtual environments (built by ``rlinf_env``; nothing of RLinf's code is in this repository):

* **the session venv** (fixture ``rlinf_venv``, shared with ``test_rlinf_real_files.py``):
  ``python -m venv --without-pip``, then this interpreter's pip installs ``rlinf==0.3.0`` and
  ``sortedcontainers`` into it with ``--no-deps`` (pinned by ``constraints.txt``); a ``.pth`` file
  runs ``site.addsitedir(<this environment's site-packages>)``, so torch, numpy, omegaconf and Ray
  come from here, and so do this library's editable install and its import hook (the ``.pth``
  files there are processed). RLinf's own site-packages comes first on ``sys.path``.
* **the coexistence venv** (one test, its own venv): the same RLinf, but this environment's
  site-packages is added as a plain path line, so its ``.pth`` files (our editable install and
  hook) are *not* active; a wheel built from this checkout is installed into it, then uninstalled.

Code runs there in fresh interpreters (``subprocess``) whose working directory is a temporary
directory, never the checkout, whose ``rlinf/`` folder would otherwise shadow RLinf. The switch
is the variable ``RLINF_REPLAY_BUFFER=rlinf_replay_buffer`` (or ``use_in_rlinf()``); without it
RLinf runs untouched. The RLinf main layout (``rlinf.data.storage.replay``) is not on PyPI: a tiny
stand-in package of sentinel classes, written at test time, plays it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import rlinf_env
import torch
from conftest import assert_aligned


@pytest.fixture(scope="session")
def rlinf_venv(tmp_path_factory) -> rlinf_env.Venv:
    """The session venv with ``rlinf==0.3.0`` (built once per pytest process, shared with
    ``test_rlinf_real_files.py`` through ``rlinf_env``'s cache)."""
    return rlinf_env.shared_rlinf_venv(tmp_path_factory)


@pytest.fixture(scope="session")
def our_wheel(tmp_path_factory) -> Path:
    """A wheel of this checkout, built once per pytest process."""
    return rlinf_env.shared_wheel(tmp_path_factory)


#: RLinf 0.3.0's buffer modules -> {name: "ours" if the switch replaces it, else "rlinf"}
SWITCHED_030 = {
    "rlinf.data.replay_buffer": {
        "TrajectoryReplayBuffer": "ours",
        "TrajectoryCache": "ours",
        "clone_dict_of_tensors": "rlinf",
        "Trajectory": "rlinf",
    },
    "rlinf.data.embodied_buffer_dataset": {
        "ReplayBufferDataset": "ours",
        "PreloadReplayBufferDataset": "ours",
        "replay_buffer_collate_fn": "rlinf",  # documented: stays RLinf's (it returns batch[0])
    },
    "rlinf.data.priority_store": {"PriorityStore": "ours"},
}

# Which object of ours each RLinf name stands for (run in a venv interpreter).
_OURS = """
import importlib, inspect, os, sys
import rlinf, rlinf_replay_buffer as ours
from rlinf_replay_buffer.rlinf_compat import hook, stores
OURS = {
    "TrajectoryReplayBuffer": ours.TrajectoryReplayBuffer,
    "ReplayBufferDataset": ours.ReplayBufferDataset,
    "PreloadReplayBufferDataset": ours.PreloadReplayBufferDataset,
    "replay_buffer_collate_fn": ours.replay_buffer_collate_fn,
    "Trajectory": ours.Trajectory,
    "TrajectoryCache": stores.TrajectoryCache,
    "PriorityStore": stores.PriorityStore,
    "clone_dict_of_tensors": stores.clone_dict_of_tensors,
}
def whose(module_name, names):
    module = importlib.import_module(module_name)
    out = {}
    for name in names:
        value = getattr(module, name)
        if value is OURS[name]:
            out[name] = "ours"
        elif getattr(value, "__module__", "").startswith("rlinf_replay_buffer"):
            out[name] = "ours, but another object: " + value.__module__
        else:
            out[name] = "rlinf" if value.__module__.startswith("rlinf.") else "other: " + value.__module__
    return out
"""

PROBE_030 = (
    _OURS
    + """
names = {m: list(n) for m, n in MODULES_030.items()}
result = {m: whose(m, n) for m, n in names.items()}
import importlib.metadata as md
emit({"whose": result, "status": hook.status(), "rlinf": rlinf.__file__, "version": md.version("rlinf"),
      "ours": ours.__file__, "sys_path": sys.path,
      "meta_path": [type(f).__name__ for f in sys.meta_path]})
"""
)


def _probe_030(venv, **kwargs):
    code = f"MODULES_030 = {SWITCHED_030!r}\n" + PROBE_030
    return venv.result(code, **kwargs)


def test_with_the_switch_off_rlinf_modules_hand_out_rlinf_classes(rlinf_venv):
    out = _probe_030(rlinf_venv)
    assert out["rlinf"] == str(rlinf_venv.site / "rlinf" / "__init__.py")  # not a checkout, not ours
    assert out["version"] == rlinf_env.RLINF_VERSION
    assert out["ours"].startswith(str(rlinf_env.REPO))  # the editable install, through the parent's .pth
    parents = [out["sys_path"].index(d) for d in rlinf_env.parent_site_dirs()]
    assert out["sys_path"].index(str(rlinf_venv.site)) < min(parents)  # RLinf's site-packages first
    assert str(rlinf_env.REPO) not in out["sys_path"]
    assert out["whose"] == {m: dict.fromkeys(names, "rlinf") for m, names in SWITCHED_030.items()}
    assert {out["status"][m] for m in SWITCHED_030} == {"rlinf"}
    assert "FallbackFinder" in out["meta_path"] and "SwitchFinder" not in out["meta_path"]


def test_with_the_switch_on_rlinf_modules_hand_out_our_classes(rlinf_venv):
    out = _probe_030(rlinf_venv, switch=True)
    assert out["rlinf"].startswith(str(rlinf_venv.site))
    assert out["whose"] == SWITCHED_030
    assert {out["status"][m] for m in SWITCHED_030} == {"switched"}
    assert out["status"]["rlinf.data.embodied_io_struct"] == "rlinf"  # RLinf's Trajectory stays


RAY_PROBE = """
import os, sys, ray
from rlinf_replay_buffer.rlinf_compat import hook
driver = {}
if USE_IN_RLINF:
    import rlinf.data.replay_buffer as rb
    driver["before"] = rb.TrajectoryReplayBuffer.__module__
    import rlinf_replay_buffer
    driver["switched_now"] = rlinf_replay_buffer.use_in_rlinf()
import rlinf.data.replay_buffer as rb
import rlinf.data.embodied_buffer_dataset
import rlinf.data.priority_store
import rlinf_replay_buffer
driver.update(
    module=rb.TrajectoryReplayBuffer.__module__,
    identical=rb.TrajectoryReplayBuffer is rlinf_replay_buffer.TrajectoryReplayBuffer,
    status=hook.status(),
)
ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
try:
    @ray.remote
    class Probe:
        def report(self):
            import rlinf.data.replay_buffer as rb
            import rlinf.data.embodied_buffer_dataset as ds
            import rlinf.data.priority_store as ps
            import rlinf_replay_buffer
            from rlinf_replay_buffer.rlinf_compat import hook
            return {
                "module": rb.TrajectoryReplayBuffer.__module__,
                "identical": rb.TrajectoryReplayBuffer is rlinf_replay_buffer.TrajectoryReplayBuffer,
                "dataset": ds.ReplayBufferDataset.__module__,
                "priority": ps.PriorityStore.__module__,
                "status": hook.status(),
                "pid": os.getpid(),
                "python": sys.executable,
            }
    actor = ray.get(Probe.remote().report.remote(), timeout=180)
finally:
    ray.shutdown()
emit({"driver": driver, "actor": actor, "pid": os.getpid()})
"""

_SWITCHED_STATUS = {m: "switched" for m in SWITCHED_030}


def test_the_switch_reaches_ray_actors_from_the_variable_and_from_use_in_rlinf(rlinf_venv):
    # two drivers at once, each with its own local Ray cluster: one with the variable set in its
    # environment, one that calls use_in_rlinf() before ray.init()
    by_variable = rlinf_venv.start("USE_IN_RLINF = False\n" + RAY_PROBE, switch=True)
    by_call = rlinf_venv.start("USE_IN_RLINF = True\n" + RAY_PROBE, switch=False)
    results = {"variable": rlinf_env.finish(by_variable), "use_in_rlinf": rlinf_env.finish(by_call)}
    for how, out in results.items():
        for where in ("driver", "actor"):
            seen = out[where]
            assert seen["module"] == "rlinf_replay_buffer.buffer", (how, where, seen)
            assert seen["identical"], (how, where)
            assert {k: v for k, v in seen["status"].items() if k in SWITCHED_030} == {
                "rlinf.data.replay_buffer": "switched",
                "rlinf.data.embodied_buffer_dataset": "switched",
                "rlinf.data.priority_store": "switched",
            }, (how, where)
        actor = out["actor"]
        assert actor["pid"] != out["pid"]  # really another process
        assert actor["python"] == str(rlinf_venv.python)
        assert actor["dataset"] == "rlinf_replay_buffer.datasets"
        assert actor["priority"] == "rlinf_replay_buffer.rlinf_compat.stores"
    call = results["use_in_rlinf"]["driver"]
    assert call["before"] == "rlinf.data.replay_buffer"  # RLinf's, until the call
    assert call["switched_now"] == ["rlinf.data.replay_buffer"]


# -- RLinf's dataset code sampling from our buffer ----------------------------------------------
DATASETS = """
import asyncio, inspect, threading, time
import numpy as np, torch
from torch.utils.data import DataLoader
import rlinf_env as E
import rlinf_replay_buffer
from rlinf.data.embodied_io_struct import Trajectory, get_model_weights_id
import rlinf.data.embodied_buffer_dataset as dsm
import rlinf.data.replay_buffer as rbm
from rlinf.utils.metric_utils import append_to_dict

OUT = __import__("pathlib").Path(OUT_DIR)
if SWITCH:
    Buffer = rbm.TrajectoryReplayBuffer          # RLinf's name, our class
else:
    Buffer = rlinf_replay_buffer.TrajectoryReplayBuffer

def traj(i, **kw):
    t = Trajectory(**E.coded_fields(i, **kw))  # RLinf's own Trajectory class
    t.model_weights_id = get_model_weights_id(t.versions)
    return t

# as RLinf's SAC worker builds them (fsdp_sac_policy_worker.py)
replay = Buffer(seed=1234, enable_cache=True, cache_size=200, sample_window_size=200, auto_save=False,
                auto_save_path=str(OUT / "unused" / "rank_0"), trajectory_format="pt")
replay.add_trajectories([traj(i, n=4, e=2, num_envs=2) for i in range(3)])   # SAC rollouts, 2 epochs
demo = Buffer(seed=1234, enable_cache=True, cache_size=200, sample_window_size=200, auto_save=False,
              auto_save_path=str(OUT / "unused-demo" / "rank_0"), trajectory_format="pt")
demo.add_trajectories([traj(50 + i, n=4, e=1, num_envs=1, layout="aligned") for i in range(2)])

result = {"dataset_modules": {}, "waited": {}}
for cls in (dsm.ReplayBufferDataset, dsm.PreloadReplayBufferDataset):
    result["dataset_modules"][cls.__name__] = cls.__module__
    ds = cls(replay_buffer=replay, demo_buffer=demo, batch_size=64, min_replay_buffer_size=2,
             min_demo_buffer_size=1, prefetch_size=4)
    loader = DataLoader(ds, batch_size=1, num_workers=0, drop_last=True,
                        collate_fn=dsm.replay_buffer_collate_fn)
    it = iter(loader)
    torch.save([next(it) for _ in range(3)], OUT / f"{cls.__name__}.pt")
    if cls is dsm.PreloadReplayBufferDataset:
        ds.close()   # as the async SAC worker's stop() does

    # min_replay_buffer_size changed after the iterator exists (RLinf's RLT worker does this)
    ds = cls(replay_buffer=replay, demo_buffer=None, batch_size=16, min_replay_buffer_size=1000,
             min_demo_buffer_size=0, prefetch_size=2)
    it = iter(DataLoader(ds, batch_size=1, num_workers=0, drop_last=True,
                         collate_fn=dsm.replay_buffer_collate_fn))
    ds.min_replay_buffer_size = 1
    got = []
    th = threading.Thread(target=lambda: got.append(next(it)), daemon=True)
    th.start(); th.join(20)
    result["waited"][cls.__name__] = got[0]["rewards"].shape[0] if got else None
    if cls is dsm.PreloadReplayBufferDataset and got:
        ds.close()

if SWITCH:
    result["is_ready_async_is_coroutine"] = inspect.iscoroutinefunction(Buffer.is_ready_async)
    async def ready():
        return [await replay.is_ready_async(3), await replay.is_ready_async(4)]
    result["is_ready_async"] = asyncio.run(ready())

    # get_stats, aggregated as RLinf's SAC worker does: prefix, append_to_dict, np.mean, float32
    metrics = {}
    for _ in range(2):
        append_to_dict(metrics, {f"replay_buffer/{k}": v for k, v in replay.get_stats().items()})
        append_to_dict(metrics, {f"demo_buffer/{k}": v for k, v in demo.get_stats().items()})
    means = {k: float(np.mean(v)) for k, v in metrics.items()}
    torch.tensor([means[k] for k in sorted(means)], dtype=torch.float32)   # all_reduce_dict
    result["stats_types"] = sorted({type(v).__name__ for v in replay.get_stats().values()})
    result["stats"] = means

    # close(wait=False) on an auto-save buffer returns at once; the next close() waits
    auto = Buffer(seed=1, enable_cache=True, cache_size=5, sample_window_size=100, auto_save=True,
                  auto_save_path=str(OUT / "auto" / "rank_0"), trajectory_format="pt")
    auto.add_trajectories([traj(70 + i, n=4, e=2, num_envs=2) for i in range(3)])
    t0 = time.monotonic()
    auto.close(wait=False)
    result["close_nowait_seconds"] = time.monotonic() - t0
    auto.close()
    again = Buffer(seed=2)
    again.load_checkpoint(str(OUT / "auto" / "rank_0"))
    result["reloaded"] = [len(again), again.total_samples]
    torch.save(again.sample(64), OUT / "reloaded.pt")
emit(result)
"""


def _check_dataset_batches(path: Path) -> None:
    for batch in torch.load(path, weights_only=True):
        assert batch["rewards"].shape == (64, 1)
        assert_aligned(batch, n=4)
        trajectory = (batch["rewards"][:, 0] // 1000).long()
        assert set(trajectory[:32].tolist()) <= {0, 1, 2}, "the first half comes from the replay buffer"
        assert set(trajectory[32:].tolist()) <= {50, 51}, "the second half comes from the demo buffer"
        assert batch["curr_obs"]["main_images"].dtype == torch.uint8


def test_rlinf_datasets_sample_aligned_batches_from_our_buffer(rlinf_venv, tmp_path):
    out = rlinf_venv.result(f"OUT_DIR = {str(tmp_path)!r}\nSWITCH = False\n" + DATASETS)
    assert out["dataset_modules"] == {
        "ReplayBufferDataset": "rlinf.data.embodied_buffer_dataset",
        "PreloadReplayBufferDataset": "rlinf.data.embodied_buffer_dataset",
    }
    for name in ("ReplayBufferDataset", "PreloadReplayBufferDataset"):
        _check_dataset_batches(tmp_path / f"{name}.pt")
    assert out["waited"] == {"ReplayBufferDataset": 16, "PreloadReplayBufferDataset": 16}


def test_switched_rlinf_classes_serve_rlinf_calls(rlinf_venv, tmp_path):
    out = rlinf_venv.result(f"OUT_DIR = {str(tmp_path)!r}\nSWITCH = True\n" + DATASETS, switch=True)
    assert out["dataset_modules"] == {
        "ReplayBufferDataset": "rlinf_replay_buffer.datasets",
        "PreloadReplayBufferDataset": "rlinf_replay_buffer.datasets",
    }
    for name in ("ReplayBufferDataset", "PreloadReplayBufferDataset"):
        _check_dataset_batches(tmp_path / f"{name}.pt")
    # a minimum size lowered after the iterator was made takes effect
    assert out["waited"] == {"ReplayBufferDataset": 16, "PreloadReplayBufferDataset": 16}
    assert out["is_ready_async_is_coroutine"] is True
    assert out["is_ready_async"] == [True, False]
    assert out["stats_types"] == ["int"]
    stats = out["stats"]
    for prefix, trajectories, transitions in (("replay_buffer", 3, 3 * 8 * 2), ("demo_buffer", 2, 2 * 4)):
        assert stats[f"{prefix}/num_trajectories"] == trajectories
        assert stats[f"{prefix}/total_samples"] == transitions
        assert f"{prefix}/cache_size" in stats
    assert out["close_nowait_seconds"] < 5
    assert out["reloaded"] == [3, 3 * 8 * 2]
    batch = torch.load(tmp_path / "reloaded.pt", weights_only=True)
    assert_aligned(batch, n=4)
    assert set((batch["rewards"][:, 0] // 1000).long().tolist()) <= {70, 71, 72}


# -- RLinf's main-branch layout, played by sentinel classes --------------------------------------
#: module -> names it defines or re-exports, as RLinf's main branch has them
MAIN_LAYOUT = {
    "rlinf.data.storage.replay.buffer": [
        "TrajectoryReplayBuffer",
        "TrajectoryCache",
        "PriorityStore",
        "clone_dict_of_tensors",
    ],
    "rlinf.data.storage.replay.dataset": [
        "ReplayBufferDataset",
        "PreloadReplayBufferDataset",
        "replay_buffer_collate_fn",
    ],
    "rlinf.data.storage.replay": [
        "TrajectoryReplayBuffer",
        "TrajectoryCache",
        "PriorityStore",
        "ReplayBufferDataset",
        "PreloadReplayBufferDataset",
        "replay_buffer_collate_fn",
    ],
    "rlinf.data.storage": [
        "TrajectoryReplayBuffer",
        "TrajectoryCache",
        "PriorityStore",
        "ReplayBufferDataset",
        "PreloadReplayBufferDataset",
        "replay_buffer_collate_fn",
    ],
    "rlinf.data.schema.embodied_types": ["Trajectory"],
}
#: names the switch leaves to RLinf (documented in docs/migration.md)
NOT_SWITCHED = {"replay_buffer_collate_fn", "clone_dict_of_tensors", "Trajectory"}

_SIX = ", ".join(MAIN_LAYOUT["rlinf.data.storage.replay"])


def write_main_layout(root: Path) -> Path:
    """A stand-in for RLinf main's package layout: every class a sentinel (``SENTINEL = True``).
    Returns the directory to put on ``PYTHONPATH``."""
    files = {
        "rlinf/__init__.py": "SENTINEL_PACKAGE = True\n",
        "rlinf/data/__init__.py": "from . import storage  # RLinf main imports it eagerly\n",
        "rlinf/data/schema/__init__.py": "",
        "rlinf/data/schema/embodied_types.py": "class Trajectory:\n    SENTINEL = True\n",
        "rlinf/data/storage/__init__.py": f"from .replay import {_SIX}\n",
        "rlinf/data/storage/replay/__init__.py": (
            "from .buffer import PriorityStore, TrajectoryCache, TrajectoryReplayBuffer\n"
            "from .dataset import PreloadReplayBufferDataset, ReplayBufferDataset, replay_buffer_collate_fn\n"
            f"__all__ = {MAIN_LAYOUT['rlinf.data.storage.replay']!r}\n"
        ),
        "rlinf/data/storage/replay/buffer.py": (
            "from rlinf.data.schema.embodied_types import Trajectory\n"
            "class TrajectoryReplayBuffer:\n    SENTINEL = True\n"
            "class TrajectoryCache:\n    SENTINEL = True\n"
            "class PriorityStore:\n    SENTINEL = True\n"
            "def clone_dict_of_tensors(obj):\n    return obj\n"
            "clone_dict_of_tensors.SENTINEL = True\n"
        ),
        "rlinf/data/storage/replay/dataset.py": (
            "from rlinf.data.storage.replay.buffer import TrajectoryReplayBuffer\n"
            "class ReplayBufferDataset:\n    SENTINEL = True\n"
            "class PreloadReplayBufferDataset(ReplayBufferDataset):\n    SENTINEL = True\n"
            "def replay_buffer_collate_fn(batch):\n    return batch[0]\n"
            "replay_buffer_collate_fn.SENTINEL = True\n"
        ),
    }
    site = root / "main-layout"
    for rel, text in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return site


MAIN_PROBE = (
    _OURS
    + """
def classify(module_name, names):
    out = {}
    module = importlib.import_module(module_name)
    for name in names:
        value = getattr(module, name)
        sentinel = getattr(value, "SENTINEL", False) is True
        out[name] = "sentinel" if sentinel else whose(module_name, [name])[name]
    return out
assert getattr(rlinf, "SENTINEL_PACKAGE", False), rlinf.__file__
first = {m: classify(m, names) for m, names in LAYOUT.items()}
status_first = hook.status()
switched_now = ours.use_in_rlinf()
emit({"first": first, "status_first": status_first, "switched_now": switched_now,
      "after_call": {m: classify(m, names) for m, names in LAYOUT.items()}, "status_after": hook.status()})
"""
)


def _run_main_layout(tmp_path: Path, switch: bool):
    host = rlinf_env.Venv(root=Path(sys.prefix), python=Path(sys.executable), site=Path(), workdir=tmp_path)
    site = write_main_layout(tmp_path)
    return host.result(
        f"LAYOUT = {MAIN_LAYOUT!r}\n" + MAIN_PROBE, switch=switch, env={"PYTHONPATH": str(site)}
    )


_MAIN_MODULES = (
    "rlinf.data.storage.replay",
    "rlinf.data.storage.replay.buffer",
    "rlinf.data.storage.replay.dataset",
)


def test_rlinf_main_layout_keeps_its_classes_with_the_switch_off(tmp_path):
    out = _run_main_layout(tmp_path, switch=False)
    assert out["first"] == {m: dict.fromkeys(names, "sentinel") for m, names in MAIN_LAYOUT.items()}
    assert {m: out["status_first"][m] for m in _MAIN_MODULES} == dict.fromkeys(_MAIN_MODULES, "rlinf")
    assert out["status_first"]["rlinf.data.schema.embodied_types"] == "rlinf"
    # use_in_rlinf() afterwards patches the switched modules already imported; a name another
    # module copied before the call (rlinf.data.storage's re-exports) keeps RLinf's class
    assert sorted(out["switched_now"]) == sorted(_MAIN_MODULES)
    after = out["after_call"]
    for module in _MAIN_MODULES:
        expected = {n: "sentinel" if n in NOT_SWITCHED else "ours" for n in MAIN_LAYOUT[module]}
        assert after[module] == expected, module
    assert after["rlinf.data.storage"] == dict.fromkeys(MAIN_LAYOUT["rlinf.data.storage"], "sentinel")
    assert {m: out["status_after"][m] for m in _MAIN_MODULES} == dict.fromkeys(_MAIN_MODULES, "switched")


def test_rlinf_main_layout_hands_out_our_classes_with_the_switch_on(tmp_path):
    out = _run_main_layout(tmp_path, switch=True)
    for module, names in MAIN_LAYOUT.items():
        expected = {n: "sentinel" if n in NOT_SWITCHED else "ours" for n in names}
        assert out["first"][module] == expected, module
    assert {m: out["status_first"][m] for m in _MAIN_MODULES} == dict.fromkeys(_MAIN_MODULES, "switched")
    assert out["status_first"]["rlinf.data.schema.embodied_types"] == "rlinf"
    assert out["switched_now"] == []  # nothing left to patch


# -- installing this library beside RLinf, and uninstalling it -----------------------------------
COEXIST_PROBE = """
import importlib.metadata as md, os, sys
import rlinf
from omegaconf import OmegaConf
import rlinf.data.replay_buffer as rb
import rlinf_replay_buffer
from rlinf_replay_buffer.rlinf_compat import hook
cfg = OmegaConf.create({"a": 6, "b": 4, "m": "${multiply:${a},${b}}", "d": "${int_div:${a},${b}}",
                        "s": "${subtract:${a},${b}}", "n": "${not:0}"})
emit({
    "rlinf": rlinf.__file__,
    "rlinf_version": md.version("rlinf"),
    "resolvers": {name: OmegaConf.has_resolver(name)
                  for name in ("multiply", "int_div", "subtract", "not", "torch.dtype")},
    "resolved": [cfg.m, cfg.d, cfg.s, cfg.n],
    "buffer_module": rb.TrajectoryReplayBuffer.__module__,
    "identical": rb.TrajectoryReplayBuffer is rlinf_replay_buffer.TrajectoryReplayBuffer,
    "ours": rlinf_replay_buffer.__file__,
    "status": hook.status(),
    "meta_path": [type(f).__name__ for f in sys.meta_path],
})
"""

AFTER_UNINSTALL = """
import sys
import rlinf, rlinf.data.replay_buffer as rb
try:
    import rlinf_replay_buffer
    ours = rlinf_replay_buffer.__file__
except ModuleNotFoundError:
    ours = None
emit({"rlinf": rlinf.__file__, "buffer_module": rb.TrajectoryReplayBuffer.__module__, "ours": ours,
      "meta_path": [type(f).__name__ for f in sys.meta_path]})
"""


def test_installing_and_uninstalling_our_wheel_leaves_every_rlinf_file_as_it_was(tmp_path, our_wheel):
    venv = rlinf_env.make_venv(tmp_path / "coexist", parent="path")
    assert not (venv.site / "rlinf_replay_buffer.pth").exists()
    rlinf_files = [path for path, _ in venv.record("rlinf")]
    recorded = dict(venv.record("rlinf"))
    before = rlinf_env.file_hashes(venv.site, rlinf_files)
    assert None not in before.values()
    # pip installed what PyPI's wheel holds (RECORD's own hashes)
    assert all(before[p] == h for p, h in recorded.items() if h), "RLinf's files differ from its RECORD"

    # the wheel holds no file RLinf's RECORD lists, and nothing under rlinf/
    ours = rlinf_env.wheel_files(our_wheel)
    assert not set(ours) & set(rlinf_files)
    assert not [n for n in ours if n.startswith("rlinf/")]

    venv.pip("install", "-q", "--no-deps", "--ignore-installed", our_wheel)
    assert (venv.site / "rlinf_replay_buffer.pth").is_file()
    assert rlinf_env.file_hashes(venv.site, rlinf_files) == before
    assert not set(path for path, _ in venv.record("rlinf-replay-buffer")) & set(rlinf_files)

    for switch in (False, True):
        out = venv.result(COEXIST_PROBE, switch=switch)
        assert out["rlinf"] == str(venv.site / "rlinf" / "__init__.py")  # RLinf's own __init__ ran
        assert out["rlinf_version"] == rlinf_env.RLINF_VERSION
        assert all(out["resolvers"].values()), out["resolvers"]  # registered by RLinf's __init__
        assert out["resolved"] == [24, 1, 2, True]
        assert out["ours"] == str(venv.site / "rlinf_replay_buffer" / "__init__.py")  # the wheel's copy
        assert "FallbackFinder" in out["meta_path"]  # the wheel's .pth ran at start-up
        if switch:
            assert out["buffer_module"] == "rlinf_replay_buffer.buffer" and out["identical"]
            assert out["status"]["rlinf.data.replay_buffer"] == "switched"
        else:
            assert out["buffer_module"] == "rlinf.data.replay_buffer" and not out["identical"]
            assert out["status"]["rlinf.data.replay_buffer"] == "rlinf"
    assert rlinf_env.file_hashes(venv.site, rlinf_files) == before

    # uninstall: ours only, from this venv only (the parent's editable install is outside it)
    parent_pth = [Path(d) / "rlinf_replay_buffer.pth" for d in rlinf_env.parent_site_dirs()]
    parent_had = [p for p in parent_pth if p.exists()]
    venv.pip("uninstall", "-y", "rlinf-replay-buffer")
    assert rlinf_env.file_hashes(venv.site, rlinf_files) == before
    assert not (venv.site / "rlinf_replay_buffer").exists()
    assert not (venv.site / "rlinf_replay_buffer.pth").exists()
    assert not list(venv.site.glob("rlinf_replay_buffer-*.dist-info"))
    assert all(p.exists() for p in parent_had), "the parent environment's install was touched"
    out = venv.result(AFTER_UNINSTALL)
    assert out["rlinf"] == str(venv.site / "rlinf" / "__init__.py")
    assert out["buffer_module"] == "rlinf.data.replay_buffer"
    assert out["ours"] is None
    assert "FallbackFinder" not in out["meta_path"] and "SwitchFinder" not in out["meta_path"]
