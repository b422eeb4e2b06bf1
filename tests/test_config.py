"""Building a buffer from RLinf-shaped configuration: plain dicts and OmegaConf nodes, the whole
config or the buffer node, extras (``min_buffer_size`` ...), RLinf's earlier key names, overrides,
the warnings for keys that do not shape the buffer and for unknown keys, the errors for bad
values and non-mappings, and every buffer section of RLinf's own configurations."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from conftest import coded_trajectory

from rlinf_replay_buffer import TrajectoryReplayBuffer
from rlinf_replay_buffer.config import (
    EXTRA_KEYS,
    IGNORED_KEYS,
    LEGACY_KEYS,
    RLINF_CONSTRUCTOR_KEYS,
    BufferConfigExtras,
    IgnoredConfigKeysWarning,
    UnknownConfigKeysWarning,
    accepted_keys,
    buffer_from_config,
    buffer_kwargs_from_config,
)
from rlinf_replay_buffer.errors import InvalidArgumentError

omegaconf = pytest.importorskip("omegaconf")
OmegaConf = omegaconf.OmegaConf

REPO = Path(__file__).resolve().parents[1]


def rlinf_node(**changes) -> dict:
    """``algorithm.replay_buffer`` as in RLinf's examples/embodiment/config/*_sac_*.yaml."""
    node = {
        "enable_cache": True,
        "cache_size": 50,  # RLinf's examples use 200 to 20000; small here
        "sample_window_size": 200,
        "min_buffer_size": 2,
        "auto_save": False,
    }
    node.update(changes)
    return node


def rlinf_config(output_dir: Path, replay_buffer: dict | None = None, **algorithm) -> dict:
    """A whole RLinf-shaped config (the parts the buffer cares about, and some it does not)."""
    return {
        "runner": {
            "output_dir": str(output_dir),
            "logger": {"log_path": str(output_dir / "logs"), "experiment_name": "sac_cnn"},
        },
        "algorithm": {
            "update_epoch": 4,
            "gamma": 0.96,
            "replay_buffer": rlinf_node() if replay_buffer is None else replay_buffer,
            **algorithm,
        },
        "actor": {"seed": 42, "micro_batch_size": 256, "global_batch_size": 256},
    }


@pytest.fixture
def close_after():
    """Buffers to close at the end of the test (auto-save buffers own a writer thread)."""
    buffers: list[TrajectoryReplayBuffer] = []
    yield buffers.append
    for buf in buffers:
        buf.close()


# -- building the expected buffer -------------------------------------------------------------


def test_rlinf_dict_node_builds_expected_buffer(close_after):
    buf = buffer_from_config(rlinf_node(trajectory_format="pkl", seed=7))
    close_after(buf)
    assert isinstance(buf, TrajectoryReplayBuffer)
    assert buf.seed == 7
    assert buf.enable_cache is True
    assert buf.cache_size == 50
    assert buf.sample_window_size == 200
    assert buf.auto_save is False
    assert buf.auto_save_path is None
    assert buf.trajectory_format == "pkl"
    assert buf.min_buffer_size == 2
    assert buf.config_extras == BufferConfigExtras(min_buffer_size=2, source="the buffer config")
    # it works as a buffer
    buf.add_trajectories([coded_trajectory(0, layout="aligned", images=False)])
    assert buf.is_ready(buf.min_buffer_size) is False
    buf.add_trajectories([coded_trajectory(1, layout="aligned", images=False)])
    assert buf.is_ready(buf.min_buffer_size) is True
    assert buf.sample(8)["rewards"].shape[0] == 8


def test_dictconfig_whole_config_with_interpolation_and_auto_save(tmp_path, close_after):
    node = rlinf_node(auto_save=True, auto_save_path="${runner.output_dir}/buffer", trajectory_format="pt")
    cfg = OmegaConf.create(rlinf_config(tmp_path, node))
    buf = buffer_from_config(cfg)
    close_after(buf)
    assert buf.auto_save is True
    assert buf.auto_save_path == str(tmp_path / "buffer")
    assert buf.seed == 42  # actor.seed, as RLinf's workers pass it
    assert (buf.cache_size, buf.sample_window_size, buf.trajectory_format) == (50, 200, "pt")
    assert buf.min_buffer_size == 2
    assert buf.config_extras.source == "algorithm.replay_buffer"

    ids = buf.add_trajectories([coded_trajectory(i, layout="aligned", images=False) for i in range(3)])
    buf.flush()
    assert ids == [0, 1, 2]
    written = sorted(p.name for p in (tmp_path / "buffer").iterdir())
    assert any(name.endswith(".pt") for name in written), written
    buf.close()

    # the same config continues the directory (RLinf's auto_save_path semantics)
    again = buffer_from_config(cfg)
    close_after(again)
    assert again.size == 3
    assert again.trajectory_counter == 3


def test_dictconfig_child_node_resolves_interpolation_against_its_root(tmp_path, close_after):
    node = rlinf_node(auto_save=True, auto_save_path="${runner.output_dir}/buffer")
    cfg = OmegaConf.create(rlinf_config(tmp_path, node))
    kwargs, extras = buffer_kwargs_from_config(cfg.algorithm.replay_buffer)
    assert kwargs["auto_save_path"] == f"{tmp_path}/buffer"
    assert extras.min_buffer_size == 2
    buf = buffer_from_config(cfg.algorithm.replay_buffer)
    close_after(buf)
    assert buf.auto_save_path == str(tmp_path / "buffer")


@pytest.mark.parametrize("kind", ["dict", "DictConfig"])
def test_whole_config_algorithm_node_and_buffer_node_agree(kind, tmp_path):
    raw = rlinf_config(tmp_path, rlinf_node(seed=5, trajectory_format="pkl"))
    cfg = OmegaConf.create(raw) if kind == "DictConfig" else raw
    whole = buffer_kwargs_from_config(cfg)
    algorithm = buffer_kwargs_from_config(cfg["algorithm"])
    node = buffer_kwargs_from_config(cfg["algorithm"]["replay_buffer"])
    expected = {
        "seed": 5,
        "enable_cache": True,
        "cache_size": 50,
        "sample_window_size": 200,
        "auto_save": False,
        "trajectory_format": "pkl",
    }
    for kwargs, extras in (whole, algorithm, node):
        assert kwargs == expected
        assert extras.min_buffer_size == 2
    assert whole[1].source == algorithm[1].source == "algorithm.replay_buffer"


def test_only_configured_keys_are_passed_so_constructor_defaults_apply(close_after):
    kwargs, extras = buffer_kwargs_from_config({"sample_window_size": 0})
    assert kwargs == {"sample_window_size": 0}
    assert extras == BufferConfigExtras(source="the buffer config")
    buf = buffer_from_config({})
    close_after(buf)
    assert (buf.enable_cache, buf.cache_size, buf.sample_window_size, buf.trajectory_format) == (
        True,
        5,
        100,
        "pt",
    )
    assert buf.min_buffer_size is None


def test_library_extras_are_accepted(close_after):
    cfg = rlinf_node(cache_max_bytes=1 << 20, check_finite=True, max_pending_bytes=1 << 20, on_corrupt="skip")
    buf = buffer_from_config(cfg)
    close_after(buf)
    assert buf.cache_max_bytes == 1 << 20
    assert buf.check_finite is True
    assert buf.on_corrupt == "skip"


def test_seed_in_node_wins_over_actor_seed_and_null_seed_is_random(tmp_path, close_after):
    assert buffer_kwargs_from_config(rlinf_config(tmp_path, rlinf_node(seed=3)))[0]["seed"] == 3
    raw = rlinf_config(tmp_path)
    del raw["actor"]["seed"]
    assert "seed" not in buffer_kwargs_from_config(raw)[0]  # the constructor's default (1234)
    buf = buffer_from_config(rlinf_node(seed=None))
    close_after(buf)
    assert isinstance(buf.seed, int)


# -- RLinf's per-rank directories and log_path default ----------------------------------------


def test_rank_appends_rank_directory_like_rlinf(tmp_path, close_after):
    node = rlinf_node(auto_save=True, auto_save_path=str(tmp_path / "rb"))
    kwargs, _ = buffer_kwargs_from_config(node, rank=3)
    assert kwargs["auto_save_path"] == os.path.join(str(tmp_path / "rb"), "rank_3")
    buf = buffer_from_config(node, rank=1)
    close_after(buf)
    assert buf.auto_save_path == str(tmp_path / "rb" / "rank_1")
    with pytest.raises(InvalidArgumentError, match="rank"):
        buffer_kwargs_from_config(node, rank=-1)


def test_auto_save_without_path_defaults_to_log_path_of_whole_config(tmp_path):
    cfg = rlinf_config(tmp_path, rlinf_node(auto_save=True, auto_save_path=None))
    kwargs, _ = buffer_kwargs_from_config(cfg, rank=0)
    assert kwargs["auto_save_path"] == os.path.join(str(tmp_path / "logs"), "replay_buffer", "rank_0")
    kwargs, _ = buffer_kwargs_from_config(cfg)
    assert kwargs["auto_save_path"] == os.path.join(str(tmp_path / "logs"), "replay_buffer")
    # without auto_save no path is derived; a null path counts as absent
    kwargs, _ = buffer_kwargs_from_config(rlinf_config(tmp_path, rlinf_node(auto_save_path=None)))
    assert "auto_save_path" not in kwargs


def test_auto_save_without_any_path_is_the_constructors_error():
    with pytest.raises(InvalidArgumentError, match="auto_save_path"):
        buffer_from_config(rlinf_node(auto_save=True))


def test_demo_buffer_section_with_load_path(tmp_path):
    demo = {
        "enable_cache": True,
        "cache_size": 80,
        "sample_window_size": 100,
        "min_buffer_size": 1,
        "auto_save": False,
        "load_path": str(tmp_path / "demos"),
    }
    cfg = OmegaConf.create(rlinf_config(tmp_path, demo_buffer=demo))
    kwargs, extras = buffer_kwargs_from_config(cfg, section="demo_buffer")
    assert kwargs == {
        "enable_cache": True,
        "cache_size": 80,
        "sample_window_size": 100,
        "auto_save": False,
        "seed": 42,
    }
    assert extras == BufferConfigExtras(
        min_buffer_size=1, load_path=str(tmp_path / "demos"), source="algorithm.demo_buffer"
    )
    with pytest.raises(InvalidArgumentError, match="no algorithm.demo_buffer"):
        buffer_kwargs_from_config(rlinf_config(tmp_path), section="demo_buffer")
    with pytest.raises(InvalidArgumentError, match="no algorithm.demo_buffer"):
        buffer_kwargs_from_config(rlinf_config(tmp_path, demo_buffer=None), section="demo_buffer")
    with pytest.raises(InvalidArgumentError, match="demo_buffer"):  # the algorithm node
        buffer_kwargs_from_config(rlinf_config(tmp_path)["algorithm"], section="demo_buffer")
    with pytest.raises(InvalidArgumentError, match="section must be one of"):
        buffer_kwargs_from_config(rlinf_config(tmp_path), section="buffer")


# -- extras ----------------------------------------------------------------------------------


def test_extras_returned_and_attached(close_after):
    node = rlinf_node(min_buffer_size=0, enable_preload=True, prefetch_size=10)
    kwargs, extras = buffer_kwargs_from_config(node)
    assert not set(kwargs) & set(EXTRA_KEYS)
    assert extras == BufferConfigExtras(
        min_buffer_size=0, enable_preload=True, prefetch_size=10, source="the buffer config"
    )
    buf = buffer_from_config(node)
    close_after(buf)
    assert buf.min_buffer_size == 0
    assert buf.config_extras is not None and buf.config_extras.enable_preload is True


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("min_buffer_size", -1),
        ("min_buffer_size", "3"),
        ("min_buffer_size", True),
        ("prefetch_size", 0),
        ("enable_preload", "yes"),
        ("load_path", ""),
        ("load_path", 5),
    ],
)
def test_bad_extra_values(key, value):
    with pytest.raises(InvalidArgumentError, match=key):
        buffer_kwargs_from_config(rlinf_node(**{key: value}))


# -- RLinf's earlier key names ---------------------------------------------------------------


def test_legacy_keys_are_translated(tmp_path, close_after):
    # examples/embodiment/config/maniskill_sac_mlp.yaml once had `save_trajectories: False`
    kwargs, _ = buffer_kwargs_from_config(rlinf_node(save_trajectories=False))
    assert kwargs["auto_save"] is False
    node = {"save_trajectories": True, "storage_dir": str(tmp_path / "s"), "storage_format": "pkl"}
    node.pop("auto_save", None)
    buf = buffer_from_config(node)
    close_after(buf)
    assert (buf.auto_save, buf.auto_save_path, buf.trajectory_format) == (True, str(tmp_path / "s"), "pkl")
    assert set(LEGACY_KEYS) <= set(accepted_keys())


def test_legacy_key_conflicting_with_new_name_is_an_error():
    with pytest.raises(InvalidArgumentError, match="auto_save=False.*save_trajectories=True"):
        buffer_kwargs_from_config(rlinf_node(auto_save=False, save_trajectories=True))
    # the same value twice is fine
    assert (
        buffer_kwargs_from_config(rlinf_node(auto_save=False, save_trajectories=False))[0]["auto_save"]
        is False
    )


# -- overrides -------------------------------------------------------------------------------


def test_overrides_win(tmp_path, close_after):
    cfg = OmegaConf.create(rlinf_config(tmp_path))
    buf = buffer_from_config(cfg, cache_size=3, seed=11, auto_save=True, auto_save_path=str(tmp_path / "o"))
    close_after(buf)
    assert (buf.cache_size, buf.seed, buf.auto_save) == (3, 11, True)
    assert buf.auto_save_path == str(tmp_path / "o")
    assert buf.sample_window_size == 200  # from the config
    # an override of an extra, and of a key given by its earlier name
    buf2 = buffer_from_config(rlinf_node(save_trajectories=False), min_buffer_size=9, auto_save=False)
    close_after(buf2)
    assert buf2.min_buffer_size == 9


def test_unknown_override_is_an_error():
    with pytest.raises(
        InvalidArgumentError, match=r"unknown key in the overrides: 'cache_sise' \(did you mean"
    ):
        buffer_from_config(rlinf_node(), cache_sise=3)


# -- unknown keys and other errors -------------------------------------------------------------


def test_unknown_key_is_warned_with_suggestion_and_dropped(close_after):
    with pytest.warns(UnknownConfigKeysWarning) as record:
        buf = buffer_from_config(rlinf_node(cache_sise=10))
    close_after(buf)
    assert buf.cache_size == 50  # the configured value; the typo is dropped, not applied
    (warning,) = [w for w in record if w.category is UnknownConfigKeysWarning]
    message = str(warning.message)
    assert message.startswith(
        "unknown key in the buffer config: 'cache_sise' (did you mean 'cache_size'?); it is ignored."
    )
    assert warning.filename == __file__  # points at the caller's line
    accepted = message.split("Accepted keys: ")[1]
    for key in (*RLINF_CONSTRUCTOR_KEYS, *EXTRA_KEYS, *IGNORED_KEYS, "cache_max_bytes", "on_corrupt"):
        assert key in accepted


def test_unknown_key_raises_when_asked(tmp_path):
    with pytest.raises(InvalidArgumentError) as info:
        buffer_from_config(rlinf_node(cache_sise=10), unknown_keys="raise")
    message = str(info.value)
    assert "unknown key in the buffer config: 'cache_sise' (did you mean 'cache_size'?)" in message
    assert "Accepted keys: " in message
    # the lower-level call is strict by default
    with pytest.raises(InvalidArgumentError, match="unknown key in the buffer config: 'cache_sise'"):
        buffer_kwargs_from_config(rlinf_node(cache_sise=10))
    with pytest.warns(UnknownConfigKeysWarning, match="'cache_sise'"):
        kwargs, _ = buffer_kwargs_from_config(rlinf_node(cache_sise=10), unknown_keys="warn")
    assert "cache_sise" not in kwargs
    with pytest.raises(InvalidArgumentError, match="unknown_keys must be 'warn' or 'raise'"):
        buffer_kwargs_from_config(rlinf_node(), unknown_keys="ignore")


def test_several_unknown_keys_are_all_named(tmp_path):
    cfg = OmegaConf.create(rlinf_config(tmp_path, rlinf_node(cache_sise=1, sample_windw_size=2, zzz=3)))
    with pytest.raises(InvalidArgumentError) as info:
        buffer_from_config(cfg, unknown_keys="raise")
    message = str(info.value)
    assert message.startswith("unknown keys in algorithm.replay_buffer:")
    assert "'cache_sise' (did you mean 'cache_size'?)" in message
    assert "'sample_windw_size' (did you mean 'sample_window_size'?)" in message
    assert "'zzz'," in message or "'zzz'." in message
    assert "did you mean" not in message.split("'zzz'")[1].split("Accepted")[0]


def test_non_string_key_is_unknown():
    with pytest.raises(InvalidArgumentError, match="unknown key.*: 3"):
        buffer_kwargs_from_config({3: 4})


@pytest.mark.parametrize("cfg", [None, [1, 2], "replay_buffer", 5])
def test_non_mapping_config_is_an_error(cfg):
    with pytest.raises(InvalidArgumentError, match="must be a mapping"):
        buffer_from_config(cfg)


def test_non_mapping_omegaconf_and_sections_are_errors(tmp_path):
    with pytest.raises(InvalidArgumentError, match="must be a mapping.*ListConfig"):
        buffer_from_config(OmegaConf.create([1, 2]))
    with pytest.raises(InvalidArgumentError, match="algorithm.replay_buffer must be a mapping.*list"):
        buffer_from_config(rlinf_config(tmp_path, replay_buffer=[1]))
    with pytest.raises(InvalidArgumentError, match="no algorithm.replay_buffer"):
        buffer_from_config({"algorithm": {"gamma": 0.9}})


def test_constructor_validates_values():
    with pytest.raises(InvalidArgumentError, match="cache_size"):
        buffer_from_config(rlinf_node(cache_size="big"))
    with pytest.raises(InvalidArgumentError, match="enable_cache"):
        buffer_from_config(rlinf_node(enable_cache=None))
    with pytest.raises(InvalidArgumentError, match="on_corrupt"):
        buffer_from_config(rlinf_node(on_corrupt="ignore"))


def test_missing_value_and_bad_interpolation_are_errors(tmp_path):
    cfg = OmegaConf.create(rlinf_config(tmp_path, rlinf_node(cache_size="???")))
    with pytest.raises(InvalidArgumentError, match="cannot resolve algorithm.replay_buffer.*cache_size"):
        buffer_kwargs_from_config(cfg)
    cfg = OmegaConf.create(rlinf_config(tmp_path, rlinf_node(auto_save_path="${runner.nowhere}/b")))
    with pytest.raises(InvalidArgumentError, match="cannot resolve algorithm.replay_buffer"):
        buffer_kwargs_from_config(cfg)


def test_unrelated_broken_interpolations_do_not_matter(tmp_path, monkeypatch):
    monkeypatch.delenv("RLINF_TEST_UNSET_VARIABLE", raising=False)
    raw = rlinf_config(tmp_path)
    raw["env"] = {"video_base_dir": "${oc.env:RLINF_TEST_UNSET_VARIABLE}/video", "x": "???"}
    kwargs, extras = buffer_kwargs_from_config(OmegaConf.create(raw))
    assert kwargs["cache_size"] == 50 and extras.min_buffer_size == 2


def test_struct_mode_dictconfig(tmp_path):
    cfg = OmegaConf.create(rlinf_config(tmp_path))
    OmegaConf.set_struct(cfg, True)
    kwargs, _ = buffer_kwargs_from_config(cfg, section="replay_buffer")
    assert kwargs["cache_size"] == 50
    with pytest.raises(InvalidArgumentError, match="no algorithm.demo_buffer"):
        buffer_kwargs_from_config(cfg, section="demo_buffer")


def test_accepted_keys_cover_the_constructor_signature():
    import inspect

    params = inspect.signature(TrajectoryReplayBuffer.__init__).parameters
    assert set(params) - {"self"} <= set(accepted_keys())
    assert set(RLINF_CONSTRUCTOR_KEYS) <= set(params)


def test_plain_dicts_do_not_import_omegaconf():
    code = (
        "import sys\n"
        "from rlinf_replay_buffer.config import buffer_kwargs_from_config\n"
        "buffer_kwargs_from_config({'algorithm': {'replay_buffer': {'cache_size': 3}}})\n"
        "assert 'omegaconf' not in sys.modules, 'omegaconf was imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr


# -- TrajectoryReplayBuffer.from_config (a thin classmethod over buffer_from_config) ----------

needs_classmethod = pytest.mark.skipif(
    not hasattr(TrajectoryReplayBuffer, "from_config"),
    reason="TrajectoryReplayBuffer.from_config is not defined yet (added separately in buffer.py)",
)


@needs_classmethod
def test_classmethod_builds_from_dictconfig(tmp_path, close_after):
    node = rlinf_node(auto_save=True, auto_save_path="${runner.output_dir}/buffer")
    cfg = OmegaConf.create(rlinf_config(tmp_path, node))
    buf = TrajectoryReplayBuffer.from_config(cfg)
    close_after(buf)
    assert isinstance(buf, TrajectoryReplayBuffer)
    assert (buf.seed, buf.cache_size, buf.sample_window_size) == (42, 50, 200)
    assert buf.auto_save_path == str(tmp_path / "buffer")
    assert buf.min_buffer_size == 2


@needs_classmethod
def test_classmethod_builds_from_plain_node(close_after):
    buf = TrajectoryReplayBuffer.from_config(rlinf_node(trajectory_format="pkl"))
    close_after(buf)
    assert (buf.enable_cache, buf.trajectory_format, buf.auto_save) == (True, "pkl", False)


@needs_classmethod
def test_classmethod_warns_about_unknown_keys(close_after):
    with pytest.warns(UnknownConfigKeysWarning, match=r"'cache_sise' \(did you mean 'cache_size'\?\)"):
        close_after(TrajectoryReplayBuffer.from_config(rlinf_node(cache_sise=1)))
    with pytest.raises(InvalidArgumentError, match=r"'cache_sise' \(did you mean 'cache_size'\?\)"):
        TrajectoryReplayBuffer.from_config(rlinf_node(cache_sise=1), unknown_keys="raise")
    with pytest.raises(InvalidArgumentError, match="must be a mapping"):
        TrajectoryReplayBuffer.from_config([1])


# -- every buffer section of RLinf's own YAML configurations -----------------------------------
#
# What RLinf's configurations hold under buffer sections (main and the v0.3 tag, every *.yaml):
# only `algorithm.replay_buffer` (44 files on main) and `algorithm.demo_buffer` (8 files); no other
# buffer section configures a replay buffer. The sections come in the shapes below; values are
# realistic (the ones those files use), the rest of each configuration is reduced to what the
# buffer reads (runner.logger.log_path, actor.seed).

RLINF_REPLAY_KEYS = {
    "enable_cache",
    "cache_size",
    "sample_window_size",
    "min_buffer_size",
    "auto_save",
    "max_num_samples",  # RLT stage-2 configs only; RLinf's code never reads it
    "enable_preload",  # one e2e config (frankasim_sac_cnn_async)
    "prefetch_size",  # same file
}
RLINF_DEMO_KEYS = {
    "enable_cache",
    "cache_size",
    "sample_window_size",
    "min_buffer_size",
    "auto_save",
    "load_path",
}

_RUN = """
runner:
  logger:
    log_path: {log_path}
actor:
  seed: 1234
"""

RLINF_CONFIGS = {
    # examples/embodiment/config/maniskill_sac_mlp.yaml: SAC on states
    "sac_state": """
algorithm:
  loss_type: embodied_sac
  replay_buffer:
    enable_cache: True
    cache_size: 10000 # number of trajectories cached in memory
    sample_window_size: 10000
    min_buffer_size: 0
    auto_save: False
""",
    # examples/embodiment/config/realworld_peginsertion_rlpd_cnn_async.yaml: SAC on camera
    # images with a demonstration buffer (RLPD)
    "sac_images_with_demo": """
algorithm:
  loss_type: embodied_sac
  replay_buffer:
    enable_cache: True
    cache_size: 200
    min_buffer_size: 2
    sample_window_size: 200
    auto_save: False
  demo_buffer:
    enable_cache: True
    cache_size: 200
    min_buffer_size: 1
    sample_window_size: 200
    load_path: "/path/to/demo_data"
    auto_save: False
""",
    # examples/embodiment/config/maniskill_rlt_stage2_ac_mlp.yaml: RLT, with max_num_samples
    "rlt_max_num_samples": """
algorithm:
  loss_type: rlt_ac
  replay_buffer:
    enable_cache: True
    cache_size: 10000
    sample_window_size: 50000
    max_num_samples: 50000
    min_buffer_size: 1000
    auto_save: False
  rlt_schedule:
    enable: True
    warmup_min_size: 10000
""",
    # tests/e2e_tests/embodied/frankasim_sac_cnn_async.yaml: the preloading dataset
    "sac_preload": """
algorithm:
  loss_type: embodied_sac
  replay_buffer:
    enable_preload: True
    prefetch_size: 5
    enable_cache: True
    cache_size: 20000
    sample_window_size: 20000
    min_buffer_size: 1
    auto_save: False
""",
    # tests/e2e_tests/embodied/dosw1_dummy_sac_mlp_pick.yaml: the one config with auto_save on
    # (no auto_save_path: RLinf writes to <log_path>/replay_buffer/rank_<r>)
    "sac_auto_save": """
algorithm:
  loss_type: embodied_sac
  replay_buffer:
    enable_cache: True
    cache_size: 100
    sample_window_size: 100
    min_buffer_size: 0
    auto_save: True
""",
    # examples/embodiment/config/libero_spatial_dagger_openpi.yaml: DAgger's buffer of
    # intervened trajectories
    "dagger": """
algorithm:
  loss_type: embodied_dagger
  replay_buffer:
    enable_cache: True
    cache_size: 2000
    min_buffer_size: 16
    sample_window_size: 2000
    auto_save: False
""",
}

#: the keys from_config warns about: RLinf reads them nowhere (RLinf's worker keys are silent)
_NOT_FOR_THE_BUFFER = {"max_num_samples"}


def rlinf_sections(log_path: Path) -> list[tuple[str, str, object]]:
    """(config name, section, whole DictConfig) for every buffer section of every config."""
    out = []
    for name, text in RLINF_CONFIGS.items():
        cfg = OmegaConf.create(text + _RUN.format(log_path=log_path / name))
        for section in ("replay_buffer", "demo_buffer"):
            if cfg.algorithm.get(section) is not None:
                out.append((name, section, cfg))
    return out


def test_embedded_sections_cover_every_key_rlinf_configs_use(tmp_path):
    replay_keys: set[str] = set()
    demo_keys: set[str] = set()
    for _, section, cfg in rlinf_sections(tmp_path):
        (replay_keys if section == "replay_buffer" else demo_keys).update(cfg.algorithm[section])
    assert replay_keys == RLINF_REPLAY_KEYS
    assert demo_keys == RLINF_DEMO_KEYS
    assert (RLINF_REPLAY_KEYS | RLINF_DEMO_KEYS) <= set(accepted_keys())


@pytest.mark.parametrize(
    ("name", "section"),
    [(name, section) for name, section, _ in rlinf_sections(Path("/unused"))],
)
def test_every_rlinf_buffer_section_builds_and_names_the_keys_it_does_not_use(
    tmp_path, close_after, name, section
):
    cfg = next(c for n, s, c in rlinf_sections(tmp_path) if (n, s) == (name, section))
    node = cfg.algorithm[section]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        buf = TrajectoryReplayBuffer.from_config(cfg, section=section, rank=0)
    close_after(buf)

    # a warning only for keys RLinf reads nowhere, naming each with the reason
    assert not [w for w in record if issubclass(w.category, UnknownConfigKeysWarning)]
    ignored = [w for w in record if issubclass(w.category, IgnoredConfigKeysWarning)]
    expected = sorted(_NOT_FOR_THE_BUFFER & set(node))
    assert len(ignored) == (1 if expected else 0)
    if expected:
        message = str(ignored[0].message)
        assert message.startswith(f"algorithm.{section}: ")
        assert "max_num_samples (RLinf reads it nowhere" in message

    # the buffer is built as RLinf's worker builds it
    assert buf.seed == 1234  # actor.seed
    assert (buf.enable_cache, buf.cache_size, buf.sample_window_size, buf.auto_save) == (
        node.enable_cache,
        node.cache_size,
        node.sample_window_size,
        node.auto_save,
    )
    assert buf.trajectory_format == "pt"
    extras = buf.config_extras
    assert extras.source == f"algorithm.{section}"
    assert buf.min_buffer_size == extras.min_buffer_size == node.min_buffer_size
    assert extras.enable_preload == node.get("enable_preload")
    assert extras.prefetch_size == node.get("prefetch_size")
    assert extras.load_path == node.get("load_path")
    assert not hasattr(buf, "max_num_samples")

    # auto_save_path: RLinf's default <log_path>/<section>/rank_<r>; none without auto_save
    if node.auto_save:
        assert buf.auto_save_path == str(tmp_path / name / section / "rank_0")
    else:
        assert buf.auto_save_path is None

    # and it works
    buf.add_trajectories([coded_trajectory(i, images=False) for i in range(2)])
    assert buf.sample(16)["rewards"].shape[0] == 16
    if node.auto_save:
        buf.flush()
        assert (tmp_path / name / section / "rank_0" / "trajectory_index.json").is_file()


def test_explicit_auto_save_path_gets_the_rank_directory_like_rlinf(tmp_path, close_after):
    text = RLINF_CONFIGS["sac_auto_save"].replace(
        "auto_save: True", f"auto_save: True\n    auto_save_path: {tmp_path / 'explicit'}"
    )
    cfg = OmegaConf.create(text + _RUN.format(log_path=tmp_path / "logs"))
    buf = TrajectoryReplayBuffer.from_config(cfg, rank=3)
    close_after(buf)
    assert buf.auto_save_path == str(tmp_path / "explicit" / "rank_3")
    buf.add_trajectories([coded_trajectory(0, images=False)])
    buf.flush()
    assert (tmp_path / "explicit" / "rank_3" / "metadata.json").is_file()
    assert not (tmp_path / "logs").exists()


def test_bad_value_of_a_used_key_in_an_rlinf_config_fails_naming_it(tmp_path):
    for key, bad in (("cache_size", "big"), ("sample_window_size", -1), ("min_buffer_size", "2")):
        text = RLINF_CONFIGS["rlt_max_num_samples"]
        old = next(line for line in text.splitlines() if line.strip().startswith(f"{key}:"))
        cfg = OmegaConf.create(text.replace(old, f"    {key}: {bad!r}") + _RUN.format(log_path=tmp_path))
        with pytest.raises(InvalidArgumentError, match=key):
            TrajectoryReplayBuffer.from_config(cfg)


def test_value_of_a_key_rlinf_ignores_is_not_checked(tmp_path, close_after):
    text = RLINF_CONFIGS["rlt_max_num_samples"].replace("max_num_samples: 50000", "max_num_samples: lots")
    cfg = OmegaConf.create(text + _RUN.format(log_path=tmp_path))
    with pytest.warns(IgnoredConfigKeysWarning, match="max_num_samples"):
        buf = TrajectoryReplayBuffer.from_config(cfg)
    close_after(buf)
    assert buf.sample_window_size == 50000


def test_unknown_key_in_an_rlinf_config_is_warned_not_fatal(tmp_path, close_after):
    text = RLINF_CONFIGS["dagger"].replace("auto_save: False", "auto_save: False\n    future_knob: 3")
    cfg = OmegaConf.create(text + _RUN.format(log_path=tmp_path))
    with pytest.warns(UnknownConfigKeysWarning, match="unknown key in algorithm.replay_buffer: 'future_knob"):
        buf = TrajectoryReplayBuffer.from_config(cfg)
    close_after(buf)
    assert buf.cache_size == 2000


def test_config_knows_every_constructor_argument_and_only_those():
    """config.py does not import the buffer, so it lists the constructor's arguments itself."""
    import inspect

    from rlinf_replay_buffer.config import CONSTRUCTOR_KEYS

    own = set(inspect.signature(TrajectoryReplayBuffer.__init__).parameters) - {"self"}
    assert own == set(CONSTRUCTOR_KEYS)


def test_the_constructor_defaults_are_the_settings_defaults():
    """Each default has one home (``BufferSettings``): the constructor's signature agrees."""
    import dataclasses
    import inspect

    from rlinf_replay_buffer import TrajectoryReplayBuffer as Buffer
    from rlinf_replay_buffer.settings import BufferSettings

    fields = {
        f.name: f.default for f in dataclasses.fields(BufferSettings) if f.default is not dataclasses.MISSING
    }
    params = inspect.signature(Buffer.__init__).parameters
    # auto_save_path: RLinf's signature says "", which the settings store as None (no path)
    shared = [name for name in fields if name in params and name != "auto_save_path"]
    assert "max_pending_bytes" in shared and len(shared) > 10
    assert {n: params[n].default for n in shared} == {n: fields[n] for n in shared}
