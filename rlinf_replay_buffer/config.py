"""Read a buffer configuration (a plain mapping or an OmegaConf node) into constructor arguments.

RLinf's YAML describes a buffer under ``algorithm.replay_buffer`` (and a demonstration buffer
under ``algorithm.demo_buffer``)::

    algorithm:
      replay_buffer:
        enable_cache: True
        cache_size: 5000
        sample_window_size: 20000
        min_buffer_size: 1
        auto_save: False
        auto_save_path: ${runner.output_dir}/buffer   # optional
        trajectory_format: pt                          # optional

:func:`buffer_kwargs_from_config` accepts the whole configuration, the ``algorithm`` node or the
buffer node itself, checks every key, and returns the constructor's keyword arguments and the
extras; :meth:`TrajectoryReplayBuffer.from_config <.buffer.TrajectoryReplayBuffer.from_config>`
(and :func:`buffer_from_config`, its function form) builds the buffer from them. This module
uses nothing of :mod:`.buffer` and does not import it at module level: the dependency is
one-way, buffer -> config. (``buffer_from_config`` is defined in :mod:`.buffer`; the name is
forwarded from here, on first use, so ``from rlinf_replay_buffer.config import
buffer_from_config`` keeps working.) Every key found under a buffer section of RLinf's
configurations (0.3 and main) is accepted. Keys fall in five groups:

* constructor arguments (:data:`CONSTRUCTOR_KEYS`): ``seed``, ``enable_cache``, ``cache_size``,
  ``sample_window_size``, ``auto_save``, ``auto_save_path``, ``trajectory_format`` (what RLinf's
  workers pass) and every keyword-only extra of this library's constructor
  (``cache_max_bytes``, ``check_finite``, ``reserve_bytes``, ``max_pending_bytes``,
  ``on_corrupt``, ...; :mod:`.buffer` checks at import that the list matches its signature).
  Their values are checked by the constructor: a bad one raises :class:`InvalidArgumentError`
  naming the key.
* keys RLinf's *worker* reads, not its buffer constructor, returned as
  :class:`BufferConfigExtras`: ``min_buffer_size`` (trajectories before training starts),
  ``enable_preload`` and ``prefetch_size`` (which dataset feeds the learner), ``load_path`` (a
  checkpoint RLinf loads into the demo buffer after building it; not loaded here). Their
  values are checked.
* keys RLinf itself reads nowhere (``max_num_samples``, in its RLT configurations): accepted,
  named with the reason in one :class:`IgnoredConfigKeysWarning`, and dropped.
* RLinf's earlier names, translated: ``save_trajectories`` -> ``auto_save``, ``storage_dir`` ->
  ``auto_save_path``, ``storage_format`` -> ``trajectory_format``.
* anything else: an :class:`UnknownConfigKeysWarning` naming every unknown key with the closest
  accepted one (``unknown_keys="raise"`` makes it an :class:`InvalidArgumentError`), and the key
  is dropped. Keyword overrides are code, not configuration: an unknown one always raises.

omegaconf is optional: it is never imported here. A ``DictConfig`` can only exist if the caller
imported omegaconf, so it is recognised through ``sys.modules``.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import (
    ConfigKeyWarning,
    IgnoredConfigKeysWarning,
    InvalidArgumentError,
    UnknownConfigKeysWarning,
)
from .validate import check_bool, check_int

__all__ = [
    "CONSTRUCTOR_KEYS",
    "EXTRA_KEYS",
    "IGNORED_KEYS",
    "LEGACY_KEYS",
    "RLINF_CONSTRUCTOR_KEYS",
    "BufferConfigExtras",
    "ConfigKeyWarning",
    "IgnoredConfigKeysWarning",
    "UnknownConfigKeysWarning",
    "accepted_keys",
    "attach_extras",
    "buffer_from_config",  # noqa: F822 - defined in .buffer, loaded by __getattr__ below
    "buffer_kwargs_from_config",
]

#: constructor arguments RLinf's workers pass from ``algorithm.replay_buffer`` (``seed`` comes
#: from ``actor.seed`` in RLinf, but is accepted in the buffer node too)
RLINF_CONSTRUCTOR_KEYS = (
    "seed",
    "enable_cache",
    "cache_size",
    "sample_window_size",
    "auto_save",
    "auto_save_path",
    "trajectory_format",
)
#: every keyword argument of ``TrajectoryReplayBuffer(...)``: RLinf's, then this library's
#: keyword-only extras (:mod:`.buffer` checks at import that they match its signature)
CONSTRUCTOR_KEYS = (
    *RLINF_CONSTRUCTOR_KEYS,
    "cache_max_bytes",
    "check_finite",
    "reserve_bytes",
    "max_pending_bytes",
    "on_corrupt",
    "max_trajectories",
    "max_transitions",
    "max_disk_bytes",
    "prioritized",
    "priority_alpha",
    "priority_beta",
    "priority_eps",
    "max_staleness",
    "rate_limiter",
    "rate_limit_timeout",
    "sampling_copies",
    "sampling_copy_dir",
    "dedup_next_obs",
)
#: keys RLinf reads from the buffer node that are not constructor arguments
EXTRA_KEYS = ("min_buffer_size", "enable_preload", "prefetch_size", "load_path")
#: keys found in RLinf's buffer sections that RLinf's code never reads, and why they are dropped
IGNORED_KEYS = {
    "max_num_samples": "RLinf reads it nowhere (its buffer has no sample cap); dropped; for a cap "
    "use max_transitions",
}
#: RLinf's earlier key names and the constructor argument each one means
LEGACY_KEYS = {
    "save_trajectories": "auto_save",
    "storage_dir": "auto_save_path",
    "storage_format": "trajectory_format",
}

_SECTIONS = ("replay_buffer", "demo_buffer")
_UNKNOWN_MODES = ("warn", "raise")


@dataclass(frozen=True)
class BufferConfigExtras:
    """The keys of a buffer configuration that are not constructor arguments.

    ``None`` means the key was not in the configuration (or was null); the caller then applies
    its own default (RLinf's SAC worker uses ``min_buffer_size`` 100, ``enable_preload`` False
    and ``prefetch_size`` 10).

    Attributes:
        min_buffer_size: trajectories the buffer must hold before training starts (RLinf
            calls ``buffer.is_ready(min_buffer_size)`` and passes it to the dataset as
            ``min_replay_buffer_size`` / ``min_demo_buffer_size``).
        enable_preload: feed the learner with ``PreloadReplayBufferDataset`` (True) or
            ``ReplayBufferDataset`` (False).
        prefetch_size: batches the preloading dataset keeps ready.
        load_path: a checkpoint to load after construction (RLinf does this for the demo
            buffer: ``load_checkpoint(load_path, is_distributed=True, local_rank=rank,
            world_size=world_size)``). The buffer is not loaded by ``from_config``.
        source: where the buffer settings were found, e.g. ``"algorithm.replay_buffer"``.
    """

    min_buffer_size: int | None = None
    enable_preload: bool | None = None
    prefetch_size: int | None = None
    load_path: str | None = None
    source: str = "config"


def accepted_keys() -> tuple[str, ...]:
    """Every key a buffer configuration may hold without an unknown-key warning, sorted."""
    return tuple(sorted({*CONSTRUCTOR_KEYS, *EXTRA_KEYS, *IGNORED_KEYS, *LEGACY_KEYS}))


def buffer_kwargs_from_config(
    cfg: Any,
    *,
    section: str = "replay_buffer",
    rank: int | None = None,
    unknown_keys: str = "raise",
    **overrides: Any,
) -> tuple[dict[str, Any], BufferConfigExtras]:
    """Constructor keyword arguments and extras from a buffer configuration.

    Args:
        cfg: a mapping or OmegaConf ``DictConfig``: the whole configuration (has
            ``algorithm``), the ``algorithm`` node (has ``replay_buffer``) or the buffer node
            itself. Interpolations are resolved; a missing mandatory value (``???``) is an error.
        section: the buffer node looked up under ``algorithm``: ``"replay_buffer"`` or
            ``"demo_buffer"``. Ignored when ``cfg`` is the buffer node itself.
        rank: as RLinf does for each actor rank, write to ``<auto_save_path>/rank_<rank>``.
            ``None`` (default) uses ``auto_save_path`` as it is.
        unknown_keys: ``"raise"`` (default here: this lower-level call stays strict) or
            ``"warn"`` (``from_config``'s default): what a key nobody knows does.
        overrides: keys that take precedence over the configuration; they accept the same
            keys (an unknown one is always an error: overrides are code, not configuration).

    Keys RLinf reads nowhere are named in one :class:`IgnoredConfigKeysWarning`. Only keys
    present in the configuration are returned (the constructor's defaults apply to the rest),
    plus what the whole configuration implies the way RLinf reads it: ``seed`` from
    ``actor.seed`` when the buffer node has none, and, with ``auto_save`` on and no
    ``auto_save_path``, ``<runner.logger.log_path>/<section>``. A null
    ``auto_save_path`` counts as absent.

    Raises:
        InvalidArgumentError: ``cfg`` is not a mapping, the section is missing, a key is
            unknown and ``unknown_keys="raise"`` (all are named, with suggestions), an
            interpolation cannot be resolved, or an extra has a bad value. Constructor values
            are checked by the constructor.
    """
    return _kwargs_and_extras(cfg, section, rank, overrides, unknown_keys)


def attach_extras(buffer: Any, extras: BufferConfigExtras) -> None:
    """Store ``extras`` on ``buffer`` as ``config_extras`` and ``min_buffer_size``."""
    buffer.config_extras = extras
    buffer.min_buffer_size = extras.min_buffer_size


#: public names of this module defined in another one (which imports this one): loaded on first use
_ELSEWHERE = {"buffer_from_config": "buffer"}


def __getattr__(name: str) -> Any:
    home = _ELSEWHERE.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__package__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ELSEWHERE))


# -- implementation ---------------------------------------------------------------------------


def _omegaconf() -> Any:
    """The omegaconf module if the caller imported it, else ``None`` (never imports it)."""
    return sys.modules.get("omegaconf")


def _is_dictconfig(obj: Any) -> bool:
    om = _omegaconf()
    return om is not None and isinstance(obj, om.DictConfig)


def _to_dict(node: Any, where: str) -> dict[Any, Any]:
    """A plain, resolved, shallow ``dict`` of a mapping or ``DictConfig`` node."""
    if _is_dictconfig(node):
        om = _omegaconf()
        try:
            out = om.OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
        except om.errors.OmegaConfBaseException as exc:
            raise InvalidArgumentError(f"cannot resolve {where}: {_one_line(exc)}") from exc
        return dict(out)
    if isinstance(node, Mapping):
        return dict(node)
    raise InvalidArgumentError(
        f"{where} must be a mapping (a dict or an OmegaConf DictConfig), got {type(node).__name__}"
    )


def _get(node: Any, key: str, where: str) -> Any:
    """``node[key]`` if present, else ``None``; resolves an OmegaConf interpolation."""
    if not isinstance(node, Mapping) or key not in node:
        return None
    try:
        return node[key]
    except Exception as exc:  # an OmegaConf interpolation that does not resolve
        om = _omegaconf()
        if om is not None and isinstance(exc, om.errors.OmegaConfBaseException):
            raise InvalidArgumentError(f"cannot resolve {where}.{key}: {_one_line(exc)}") from exc
        raise


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _select(cfg: Any, section: str) -> tuple[Any, str, Any]:
    """(buffer node, where it was found, whole config or ``None``)."""
    if not isinstance(cfg, Mapping):
        raise InvalidArgumentError(
            "cfg must be a mapping (a dict or an OmegaConf DictConfig): the whole config, its "
            f"'algorithm' node or the buffer node; got {type(cfg).__name__}"
        )
    if section not in _SECTIONS:
        raise InvalidArgumentError(f"section must be one of {', '.join(_SECTIONS)}; got {section!r}")
    if "algorithm" in cfg:
        algorithm = _get(cfg, "algorithm", "cfg")
        node = _get(algorithm, section, "algorithm")
        if node is None:
            raise InvalidArgumentError(
                f"the config has no algorithm.{section} section (or it is null); pass the buffer "
                "node itself to use another one"
            )
        return node, f"algorithm.{section}", cfg
    if any(name in cfg for name in _SECTIONS):  # the algorithm node
        node = _get(cfg, section, "algorithm")
        if node is None:
            raise InvalidArgumentError(f"the algorithm node has no {section} section (or it is null)")
        return node, f"algorithm.{section}", None
    return cfg, "the buffer config", None


def _check_keys(keys: list[Any], accepted: tuple[str, ...], where: str, mode: str = "raise") -> list[Any]:
    """The unknown keys among ``keys``: raised as one :class:`InvalidArgumentError` (``mode``
    ``"raise"``) or warned about as one :class:`UnknownConfigKeysWarning` and returned."""
    unknown = [k for k in keys if not isinstance(k, str) or k not in accepted]
    if not unknown:
        return []
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, accepted, n=1) if isinstance(key, str) else []
        parts.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    noun = "key" if len(unknown) == 1 else "keys"
    message = f"unknown {noun} in {where}: {', '.join(parts)}"
    if mode == "raise":
        raise InvalidArgumentError(f"{message}. Accepted keys: {', '.join(accepted)}")
    they = "it is" if len(unknown) == 1 else "they are"
    warnings.warn(
        f"{message}; {they} ignored. Accepted keys: {', '.join(accepted)}",
        UnknownConfigKeysWarning,
        stacklevel=_stacklevel(),
    )
    return unknown


def _warn_ignored(keys: list[str], where: str) -> None:
    """One :class:`IgnoredConfigKeysWarning` naming the keys RLinf reads nowhere."""
    if not keys:
        return
    reasons = IGNORED_KEYS
    noun = "key" if len(keys) == 1 else "keys"
    named = "; ".join(f"{key} ({reasons[key]})" for key in keys)
    warnings.warn(
        f"{where}: {noun} not used to build the buffer: {named}",
        IgnoredConfigKeysWarning,
        stacklevel=_stacklevel(),
    )


def _stacklevel() -> int:
    """``stacklevel`` for :func:`warnings.warn` that names the first caller outside this package
    (the line that called ``from_config``), whichever entry point was used."""
    package = __name__.rpartition(".")[0]
    frame = sys._getframe(1)  # the function about to warn
    level = 1
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name != package and not name.startswith(package + "."):
            return level
        frame = frame.f_back
        level += 1
    return 1


def _canonical(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Translate RLinf's earlier key names; a name given twice with different values is an error."""
    out = {k: v for k, v in values.items() if k not in LEGACY_KEYS}
    for old, new in LEGACY_KEYS.items():
        if old not in values:
            continue
        if new in values and values[new] != values[old]:
            raise InvalidArgumentError(
                f"{where} sets both {new}={values[new]!r} and its earlier name "
                f"{old}={values[old]!r}; keep only {new}"
            )
        out[new] = values[old]
    return out


def _extras(values: dict[str, Any], source: str) -> BufferConfigExtras:
    preload = check_bool("enable_preload", values.get("enable_preload"), allow_none=True)
    load_path = values.get("load_path")
    if load_path is not None:
        if not isinstance(load_path, str | os.PathLike) or not os.fspath(load_path):
            raise InvalidArgumentError(f"load_path must be a non-empty path, got {load_path!r}")
        load_path = os.fspath(load_path)
    return BufferConfigExtras(
        min_buffer_size=check_int("min_buffer_size", values.get("min_buffer_size"), 0, allow_none=True),
        enable_preload=preload,
        prefetch_size=check_int("prefetch_size", values.get("prefetch_size"), 1, allow_none=True),
        load_path=load_path,
        source=source,
    )


def _kwargs_and_extras(
    cfg: Any, section: str, rank: int | None, overrides: dict[str, Any], unknown_keys: str
) -> tuple[dict[str, Any], BufferConfigExtras]:
    if unknown_keys not in _UNKNOWN_MODES:
        raise InvalidArgumentError(f"unknown_keys must be 'warn' or 'raise', got {unknown_keys!r}")
    rank = check_int("rank", rank, 0, allow_none=True)
    node, where, whole = _select(cfg, section)
    values = _to_dict(node, where)
    accepted = accepted_keys()
    _check_keys(list(overrides), accepted, "the overrides")
    for key in _check_keys(list(values), accepted, where, unknown_keys):
        del values[key]
    _warn_ignored([k for k in values if k in IGNORED_KEYS], where)
    for key in IGNORED_KEYS:
        values.pop(key, None)
        overrides.pop(key, None)
    values = _canonical(values, where)
    values.update(_canonical(overrides, "the overrides"))
    if values.get("auto_save_path") is None:
        values.pop("auto_save_path", None)

    if whole is not None:  # what RLinf's workers take from the rest of the config
        if "seed" not in values:
            seed = _get(_get(whole, "actor", "cfg"), "seed", "actor")
            if seed is not None:
                values["seed"] = seed
        auto_save = values.get("auto_save")
        if isinstance(auto_save, bool | np.bool_) and auto_save and "auto_save_path" not in values:
            logger = _get(_get(whole, "runner", "cfg"), "logger", "runner")
            log_path = _get(logger, "log_path", "runner.logger")
            if isinstance(log_path, str | os.PathLike) and os.fspath(log_path):
                values["auto_save_path"] = os.path.join(os.fspath(log_path), section)
    if rank is not None and isinstance(values.get("auto_save_path"), str | os.PathLike):
        values["auto_save_path"] = os.path.join(os.fspath(values["auto_save_path"]), f"rank_{rank}")

    extras = _extras({k: values.pop(k) for k in EXTRA_KEYS if k in values}, where)
    return values, extras
