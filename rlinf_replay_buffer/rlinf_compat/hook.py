"""The import hook behind RLinf's module names (run at interpreter start by ``rlinf_replay_buffer.pth``).

Two finders, both installed by :func:`install`:

* **The fallback** (last on ``sys.meta_path``): when no installed package provides ``rlinf``, it
  serves the names RLinf's code and the seed tutorial import (``rlinf.data.replay_buffer``,
  ``rlinf.data.storage.replay``, ...) from this library, so ``from rlinf.data.replay_buffer import
  TrajectoryReplayBuffer`` works without RLinf. It never serves anything under an ``rlinf`` that
  another package (RLinf itself, or a checkout's ``rlinf/`` folder) provides.
* **The switch** (first on ``sys.meta_path``, only when ``RLINF_REPLAY_BUFFER=rlinf_replay_buffer``
  is set, or after :func:`use_in_rlinf`): RLinf's own buffer modules load as usual, then the buffer,
  dataset and priority classes in them are replaced by this library's (:data:`MODULES`). Not a byte
  of RLinf changes on disk; with the switch off RLinf runs untouched.

The environment variable is read in every new interpreter, so Ray workers started by a driver that
has it (``ray.init`` passes the driver's environment to a local cluster's workers) switch too.

This module is imported by every Python process of the environment: it imports nothing heavy
(no torch) until a served module is actually imported.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
from types import ModuleType

#: the environment variable of the switch, and the value that turns it on
ENV = "RLINF_REPLAY_BUFFER"
ON = "rlinf_replay_buffer"
_ON_VALUES = frozenset({ON, "1", "true", "on", "yes"})
_OFF_VALUES = frozenset({"", "rlinf", "0", "false", "off", "no"})

_COMPAT = "rlinf_replay_buffer.rlinf_compat"

#: RLinf module name -> (this library's module serving it, names that replace RLinf's under the switch).
#: The first group is RLinf 0.3.x (the seed's layout), the second RLinf's main branch (since 2026-08).
MODULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "rlinf.data.replay_buffer": (f"{_COMPAT}.replay_buffer", ("TrajectoryReplayBuffer", "TrajectoryCache")),
    "rlinf.data.embodied_buffer_dataset": (
        f"{_COMPAT}.dataset",
        ("ReplayBufferDataset", "PreloadReplayBufferDataset"),
    ),
    "rlinf.data.priority_store": (f"{_COMPAT}.priority_store", ("PriorityStore",)),
    "rlinf.data.storage.replay": (
        f"{_COMPAT}.storage_replay",
        (
            "TrajectoryReplayBuffer",
            "TrajectoryCache",
            "PriorityStore",
            "ReplayBufferDataset",
            "PreloadReplayBufferDataset",
        ),
    ),
    "rlinf.data.storage.replay.buffer": (
        f"{_COMPAT}.replay_buffer",
        ("TrajectoryReplayBuffer", "TrajectoryCache", "PriorityStore"),
    ),
    "rlinf.data.storage.replay.dataset": (
        f"{_COMPAT}.dataset",
        ("ReplayBufferDataset", "PreloadReplayBufferDataset"),
    ),
}

#: served by the fallback only (names of this library's own, or RLinf's record types where RLinf
#: is absent); the switch never replaces these in RLinf
FALLBACK_ONLY: dict[str, str] = {
    "rlinf.data.ray_replay_buffer": f"{_COMPAT}.ray_replay_buffer",
    "rlinf.data.embodied_io_struct": f"{_COMPAT}.types",
    "rlinf.data.schema.embodied_types": f"{_COMPAT}.types",
}

_MARK = "__rlinf_replay_buffer__"  # set on every module this hook made or changed


def switch_value(environ: dict[str, str] | None = None) -> bool:
    """Whether the switch is on in ``environ`` (default ``os.environ``).

    An unknown value is reported on stderr once and counts as off, so a typo is seen, not silent.
    """
    raw = (os.environ if environ is None else environ).get(ENV, "")
    value = raw.strip().lower()
    if value in _ON_VALUES:
        return True
    if value not in _OFF_VALUES:
        sys.stderr.write(
            f"rlinf_replay_buffer: ignoring {ENV}={raw!r}; set {ENV}={ON} to run RLinf on this "
            f"library's buffer, or unset it to run RLinf's own\n"
        )
    return False


def _served() -> dict[str, str]:
    names = {name: home for name, (home, _) in MODULES.items()}
    names.update(FALLBACK_ONLY)
    return names


def _packages(names: dict[str, str]) -> set[str]:
    """Every proper prefix of a served name (``rlinf``, ``rlinf.data``, ...) is a package."""
    out = set()
    for name in names:
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return out


class _AliasLoader:
    """Makes a fresh module holding the public names of one of this library's modules."""

    def __init__(self, home: str | None) -> None:
        self.home = home

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        setattr(module, _MARK, "fallback")
        if self.home is None:  # a parent package with nothing of its own
            module.__doc__ = "Served by rlinf_replay_buffer: RLinf is not installed here."
            return
        source = importlib.import_module(self.home)
        public = list(getattr(source, "__all__", ()))
        module.__dict__.update({name: getattr(source, name) for name in public})
        module.__all__ = public
        module.__doc__ = source.__doc__


class FallbackFinder:
    """Serves RLinf's module names from this library where nothing else provides ``rlinf``."""

    def __init__(self) -> None:
        self.names = _served()
        self.packages = _packages(self.names)

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "rlinf":
            root = sys.modules.get("rlinf")
            if root is None or getattr(root, _MARK, None) != "fallback":
                return None  # RLinf (or a checkout's rlinf/) provides the package: never graft into it
        if fullname not in self.names and fullname not in self.packages:
            return None
        is_package = fullname in self.packages
        spec = importlib.machinery.ModuleSpec(
            fullname, _AliasLoader(self.names.get(fullname)), is_package=is_package
        )
        if is_package:
            spec.submodule_search_locations = []
        return spec


class _PatchingLoader:
    """Runs RLinf's own module, then puts this library's classes in place of RLinf's."""

    def __init__(self, loader: object, fullname: str) -> None:
        self.loader = loader
        self.fullname = fullname

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        create = getattr(self.loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)  # type: ignore[attr-defined]
        patch_module(module, self.fullname)

    def __getattr__(self, name: str) -> object:  # get_source, get_filename, ... of the real loader
        return getattr(self.loader, name)


def patch_module(module: ModuleType, fullname: str) -> list[str]:
    """Replace, in RLinf's already executed ``module``, the names :data:`MODULES` lists for it by
    this library's classes; returns the names replaced (only those RLinf's module defines)."""
    home, names = MODULES[fullname]
    source = importlib.import_module(home)
    replaced = []
    for name in names:
        if hasattr(module, name):
            setattr(module, name, getattr(source, name))
            replaced.append(name)
    setattr(module, _MARK, "switched")
    return replaced


class SwitchFinder:
    """First on ``sys.meta_path`` while the switch is on: wraps the loaders of RLinf's buffer modules."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES:
            return None
        for finder in sys.meta_path:
            if finder is self or isinstance(finder, FallbackFinder):
                continue
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None  # RLinf has no such module (another layout): nothing to switch
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _PatchingLoader(spec.loader, fullname)
        return spec


def _installed(kind: type) -> bool:
    return any(isinstance(f, kind) for f in sys.meta_path)


def install(environ: dict[str, str] | None = None) -> None:
    """Install the fallback, and the switch if ``RLINF_REPLAY_BUFFER`` asks for it (idempotent).

    Called by ``rlinf_replay_buffer.pth`` at interpreter start; never raises there.
    """
    try:
        if not _installed(FallbackFinder):
            sys.meta_path.append(FallbackFinder())
        if switch_value(environ) and not _installed(SwitchFinder):
            sys.meta_path.insert(0, SwitchFinder())
    except Exception as exc:  # noqa: BLE001 - an interpreter must start whatever happens here
        sys.stderr.write(f"rlinf_replay_buffer: import hook not installed: {exc!r}\n")


def use_in_rlinf() -> list[str]:
    """Turn the switch on from Python: RLinf's code imported from now on uses this library's classes.

    Sets ``RLINF_REPLAY_BUFFER`` in ``os.environ`` (so processes started later, Ray workers of a
    cluster this process starts included, switch at their start), installs the switch, and patches
    RLinf's buffer modules already imported. Names other modules copied out of those modules before
    this call keep RLinf's classes: call it before importing RLinf's workers. Returns the names of
    the RLinf modules switched now.
    """
    os.environ[ENV] = ON
    if not _installed(SwitchFinder):
        sys.meta_path.insert(0, SwitchFinder())
    if not _installed(FallbackFinder):
        sys.meta_path.append(FallbackFinder())
    switched = []
    for fullname in MODULES:
        module = sys.modules.get(fullname)
        if module is not None and getattr(module, _MARK, None) is None:
            patch_module(module, fullname)
            switched.append(fullname)
    return switched


def status() -> dict[str, str]:
    """Which implementation each imported RLinf buffer module name has in this process:
    ``"rlinf"`` (RLinf's own), ``"switched"`` (RLinf's module with this library's classes),
    ``"fallback"`` (served by this library, RLinf absent); names not imported are left out."""
    out = {}
    for fullname in [*MODULES, *FALLBACK_ONLY]:
        module = sys.modules.get(fullname)
        if module is not None:
            out[fullname] = getattr(module, _MARK, "rlinf")
    return out
