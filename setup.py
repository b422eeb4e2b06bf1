"""Build hook: ship ``rlinf_replay_buffer.pth`` at the top of site-packages.

The ``.pth`` file imports :mod:`rlinf_replay_buffer.rlinf_compat.hook` at interpreter start (every
process, Ray workers included); the hook serves RLinf's module names where RLinf is not installed
and, when ``RLINF_REPLAY_BUFFER`` asks for it, puts this library's classes into an installed
RLinf. Everything else about the package is in ``pyproject.toml``.
"""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "rlinf_replay_buffer.pth"


class BuildWithPth(build_py):
    """``build_py`` that also places the ``.pth`` file beside the package (wheels, editable too)."""

    def run(self) -> None:
        super().run()
        target = os.path.join(self.build_lib, PTH)
        os.makedirs(self.build_lib, exist_ok=True)
        shutil.copyfile(PTH, target)

    def get_outputs(self, include_bytecode: bool = True) -> list:
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, PTH)]

    def get_output_mapping(self) -> dict:
        mapping = dict(super().get_output_mapping())
        mapping[os.path.join(self.build_lib, PTH)] = PTH
        return mapping


class _StrategyWithPth:
    """Wraps setuptools' editable strategy: writes its files, then the ``.pth`` file."""

    def __init__(self, inner: object) -> None:
        self.inner = inner

    def __call__(self, wheel: object, files: list, mapping: dict) -> None:
        self.inner(wheel, files, mapping)
        with open(PTH, encoding="utf-8") as f:
            wheel.writestr(PTH, f.read())

    def __enter__(self) -> "_StrategyWithPth":
        self.inner.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.__exit__(*exc)


class EditableWithPth(editable_wheel):
    """``pip install -e .`` ships the ``.pth`` file too (setuptools' editable wheels otherwise
    hold only its own path hook)."""

    def _select_strategy(self, *args: object, **kwargs: object) -> object:
        return _StrategyWithPth(super()._select_strategy(*args, **kwargs))


setup(cmdclass={"build_py": BuildWithPth, "editable_wheel": EditableWithPth})
