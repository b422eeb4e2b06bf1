"""Command lines of RLinf's two trajectory viewers, on this library's pictures.

``toolkits/replay_buffer/visualize.py`` (:func:`main`) and
``toolkits/replay_buffer/visualize_headless.py`` (:func:`headless_main`) take RLinf's arguments
(``--replay_dir``, ``--camera``, ``--save_image``, ``--output``, ``--no_display``; the headless one
``--replay_dir``, ``--camera``, ``--output``) and draw with :func:`.view.render_trajectory`: one
PNG per view showing every step of one env column of one trajectory (frames of the chosen camera
above actions, rewards and done flags), where RLinf's viewer shows one step at a time.

Differences from RLinf's viewers, on purpose:

* **No window.** RLinf's ``visualize.py`` opens an interactive matplotlib window unless
  ``--no_display``. This library draws with the Agg canvas only (machines running the buffer
  are usually headless), so the view is always saved to ``--output`` and the tool says so;
  ``--save_image`` and ``--no_display`` are accepted with RLinf's rules (``--no_display``
  requires ``--save_image``). It draws the first trajectory (env 0), as RLinf's window opens on;
  ``rlinf-buffer view DIR --trajectory ID --env B --out FILE`` draws any other.
* **Steps are not navigated**: the picture already holds every step. The headless viewer reads
  RLinf's commands from standard input and re-draws ``--output`` after each: ``nt``/``pt``
  (next/previous trajectory), ``nb``/``pb`` (next/previous env column, RLinf's "batch"),
  ``j <id>``, ``info``, ``q``; RLinf's step commands (``n``, ``p``, ``home``, ``end``) only say
  that every step is shown. End of input ends it, as ``q`` does.
* ``--camera`` picks the ``curr_obs`` field whose frames are drawn; if it is missing, the first
  of ``main_images``, ``wrist_images``, ``extra_view_images`` present is used (RLinf's fallback),
  with a note; with none, only the plots are drawn. ``next_obs`` frames are not drawn (they are
  the next step's ``curr_obs``).
* ``--output`` must end in ``.png``. Errors are one line on stderr, exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from ..cli import command_line_message
from ..directory import read_directory
from ..errors import ReplayBufferError
from . import view

CAMERAS = ("main_images", "wrist_images", "extra_view_images")
DEFAULT_OUTPUT = "replay_buffer_viz.png"
VISUALIZE = "python toolkits/replay_buffer/visualize.py"
HEADLESS = "python toolkits/replay_buffer/visualize_headless.py"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--replay_dir",
        required=True,
        help="the replay buffer directory (metadata.json, trajectory_index.json, trajectory files)",
    )
    p.add_argument(
        "--camera",
        default="main_images",
        choices=CAMERAS,
        help="the curr_obs camera whose frames are drawn (default: main_images)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``visualize.py`` (RLinf's arguments)."""
    p = argparse.ArgumentParser(
        prog=VISUALIZE,
        allow_abbrev=False,
        description="Draw the first trajectory of a replay buffer directory (env 0): the chosen "
        "camera's frames over time above its actions, rewards and done flags. No window is "
        "opened: the picture is saved to --output.",
        epilog=f"Other trajectories: rlinf-buffer view DIR --trajectory ID --out FILE.png, or "
        f"{HEADLESS} to step through them.",
    )
    _common(p)
    p.add_argument(
        "--save_image",
        action="store_true",
        help="save the view to --output (always done here: there is no window)",
    )
    p.add_argument("--output", default=DEFAULT_OUTPUT, help=f"the PNG to write (default: {DEFAULT_OUTPUT})")
    p.add_argument(
        "--no_display",
        action="store_true",
        help="no interactive window (requires --save_image; there is never one here)",
    )
    return p


def build_headless_parser() -> argparse.ArgumentParser:
    """The argument parser of ``visualize_headless.py`` (RLinf's arguments)."""
    p = argparse.ArgumentParser(
        prog=HEADLESS,
        allow_abbrev=False,
        description="Step through the trajectories of a replay buffer directory from the command "
        "line: each command re-draws --output (nt/pt: next/previous trajectory, nb/pb: "
        "next/previous env column, j ID: jump to a trajectory, info, q: quit).",
    )
    _common(p)
    p.add_argument("--output", default=DEFAULT_OUTPUT, help=f"the PNG to write (default: {DEFAULT_OUTPUT})")
    return p


@dataclass
class _Viewer:
    """What is drawn: a directory, its trajectory ids and env counts, a position, a camera."""

    path: str
    ids: list[int]
    envs: list[int]  # B of each trajectory
    camera: str | None
    output: str
    position: int = 0  # index into ids
    env: int = 0

    @classmethod
    def open(cls, path: str, camera: str, output: str) -> _Viewer:
        contents, schema = read_directory(path)
        if not contents.records:
            raise ReplayBufferError(f"{contents.path} holds no trajectory: nothing to draw")
        present = [] if schema is None else [c.key[1] for c in view.find_cameras(schema)]
        chosen: str | None = camera
        if camera not in present:
            chosen = next((name for name in CAMERAS if name in present), None)
            if chosen is None:
                print(f"note: no camera images in curr_obs (asked for {camera}); drawing the plots only")
            else:
                print(f"note: {camera} is not in curr_obs; showing {chosen}")
        records = contents.records
        ids = [r.trajectory_id for r in records]
        total = sum(r.num_transitions for r in records)
        print(f"loaded {contents.path}: {len(ids)} trajectories, {total} transitions")
        print(f"camera: {chosen or 'none'}; trajectory ids: {view.id_ranges(ids)}")
        return cls(contents.path, ids, [r.num_envs for r in records], chosen, output)

    def draw(self) -> None:
        tid = self.ids[self.position]
        result = view.render_trajectory(
            self.path,
            tid,
            self.output,
            env=self.env,
            cameras=[] if self.camera is None else [self.camera],
        )
        print(
            f"trajectory {tid} (#{self.position} of {len(self.ids)}), env {self.env} of "
            f"{self.envs[self.position]}: wrote {result.out} ({result.width}x{result.height} px)"
        )

    def info(self) -> None:
        print(
            f"trajectory {self.ids[self.position]} (#{self.position} of {len(self.ids)}), env "
            f"{self.env} of {self.envs[self.position]}, camera {self.camera or 'none'}, picture "
            f"{self.output}"
        )

    def move(self, position: int) -> bool:
        if not 0 <= position < len(self.ids):
            print("no trajectory " + ("after" if position >= len(self.ids) else "before") + " this one")
            return False
        self.position, self.env = position, 0
        return True

    def move_env(self, step: int) -> bool:
        env = self.env + step
        if not 0 <= env < self.envs[self.position]:
            print(f"no env column {env}: trajectory {self.ids[self.position]} has {self.envs[self.position]}")
            return False
        self.env = env
        return True

    def jump(self, text: str) -> bool:
        try:
            tid = int(text)
        except ValueError:
            print(f"not a trajectory id: {text!r}")
            return False
        if tid not in self.ids:
            print(f"no trajectory {tid}; ids: {view.id_ranges(self.ids)}")
            return False
        return self.move(self.ids.index(tid))


#: the library's argument names -> these tools' flags, in error messages
_FLAGS = {"out": "--output"}


def _run(call: Callable[[], int]) -> int:
    try:
        return call()
    except (ReplayBufferError, OSError) as exc:
        print(f"error: {command_line_message(str(exc), _FLAGS)}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``visualize.py``; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.no_display and not args.save_image:
        parser.error("--no_display requires --save_image")

    def run() -> int:
        viewer = _Viewer.open(args.replay_dir, args.camera, args.output)
        viewer.draw()
        if not args.no_display:
            print(f"no window is opened (drawn without a display): open {viewer.output} to see the view")
        return 0

    return _run(run)


_HELP = """commands (each re-draws the picture):
  nt / nexttraj    next trajectory        pt / prevtraj    previous trajectory
  nb / nextbatch   next env column        pb / prevbatch   previous env column
  j <id>           jump to a trajectory   info             where am I
  q / quit / exit  stop (end of input stops too)
  (n, p, home, end: the picture already shows every step of the trajectory)"""


def headless_main(argv: list[str] | None = None) -> int:
    """Entry point of ``visualize_headless.py``: draw, then read commands from standard input
    until ``q`` or its end; returns the process exit status."""
    args = build_headless_parser().parse_args(argv)

    def run() -> int:
        viewer = _Viewer.open(args.replay_dir, args.camera, args.output)
        viewer.draw()
        print(f"open {viewer.output} to see the view; it is re-drawn after each command")
        print(_HELP)
        while True:
            try:
                line = input("command: ")
            except EOFError:
                print()
                return 0
            except KeyboardInterrupt:
                print()
                return 0
            words = line.strip().lower().split()
            if not words:
                continue
            cmd, rest = words[0], words[1:]
            if cmd in ("q", "quit", "exit"):
                return 0
            if cmd in ("nt", "nexttraj"):
                changed = viewer.move(viewer.position + 1)
            elif cmd in ("pt", "prevtraj"):
                changed = viewer.move(viewer.position - 1)
            elif cmd in ("nb", "nextbatch"):
                changed = viewer.move_env(1)
            elif cmd in ("pb", "prevbatch"):
                changed = viewer.move_env(-1)
            elif cmd in ("j", "jump"):
                changed = viewer.jump(rest[0]) if len(rest) == 1 else False
                if len(rest) != 1:
                    print("usage: j <trajectory id>")
            elif cmd == "info":
                viewer.info()
                changed = False
            elif cmd in ("n", "next", "p", "prev", "home", "end"):
                print("the picture shows every step of the trajectory; nt/pt change the trajectory")
                changed = False
            else:
                print(f"unknown command {cmd!r}")
                print(_HELP)
                changed = False
            if changed:
                viewer.draw()

    return _run(run)
