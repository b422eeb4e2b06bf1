"""Pictures of trajectories: camera frames over time above plots of actions, rewards and flags.

:func:`render_trajectory` draws one env column of one stored trajectory:

* a title with the trajectory id, the env, ``T``, ``B``, ``model_update_count``, the weights
  id, the format and the directory;
* per camera, a strip of up to ``max_frames`` frames at evenly spaced steps (first and last
  included), each labelled with its step;
* panels sharing one time axis (steps ``0 .. T-1``): every action dimension as a line,
  the rewards, and the flags (``dones``, ``terminations``, ``truncations``, ``intervene_flags``)
  as markers. A dashed line after every step whose episode ended runs through all panels,
  and small triangles on the top edge of the first panel mark the steps the frames show.

:func:`render_sample` draws ``num`` transitions sampled by a :class:`TrajectoryReplayBuffer`
(``sample_window_size=0``: the whole directory): the camera frames of the first ``max_frames``
samples, and the same panels indexed by sample number (draws are independent: there is no
time axis, and points are not joined by lines).

**Cameras** are the ``curr_obs`` fields whose dtype is ``uint8`` or floating point and whose
per-step shape is one of

* ``[H, W, C]`` with ``C`` in {1, 3, 4} (channels last, tried first),
* ``[C, H, W]`` with ``C`` in {1, 3, 4} (channels first),
* ``[V, H, W, C]`` with ``C`` in {1, 3, 4}: ``V`` cameras stacked in one field (RLinf's
  ``extra_view_images``), shown as ``name[0]``, ``name[1]``, ...

with ``H, W >= 4``. ``C == 1`` is drawn in grey, ``C == 4`` without its alpha channel. Float
frames within ``[0, 1]`` are drawn as they are, within ``[0, 255]`` divided by 255, otherwise
stretched from their minimum to their maximum (over the frames shown). ``next_obs`` is not
drawn (its frames are the next step's ``curr_obs``).

The PNG is written atomically (temporary file in the same directory, then renamed): ``out``
is either the complete old file or the complete new one. matplotlib and pillow are imported
only when a picture is drawn (``pip install rlinf-replay-buffer[tools]``); the figure is drawn
with the Agg canvas directly, so pyplot's state and the global backend are left alone.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..buffer import TrajectoryReplayBuffer
from ..checkpoint import read_rows
from ..directory import read_directory
from ..errors import InvalidArgumentError, MissingDependencyError, ReplayBufferError
from ..errors import ToolsNotInstalledError as ToolsNotInstalledError  # its earlier home: re-exported
from ..fsio import atomic_write
from ..record import Record
from ..schema import Schema
from ..trajectory import Key, key_name
from ..validate import check_int

EXTRA = "rlinf-replay-buffer[tools]"
FLAG_FIELDS = ("dones", "terminations", "truncations", "intervene_flags")
_FLAG_LABEL = {"intervene_flags": "intervened"}
_FLAG_COLOR = {
    "dones": "#222222",
    "terminations": "#d62728",
    "truncations": "#ff7f0e",
    "intervene_flags": "#9467bd",
}
_IMAGE_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64)
_CHANNELS = (1, 3, 4)
_MIN_SIDE = 4
_FRAMES_PER_ROW = 12
_MAX_PIXELS = 20000  # picture width
_LEGEND_MAX = 10  # action dimensions beyond this get no legend

# layout, in inches
_LEFT, _RIGHT, _TOP, _BOTTOM = 1.15, 1.55, 0.95, 0.6
_LINE, _CHAR_INCHES, _SEP = 0.21, 0.085, "   ·   "  # subtitle line height, width of a 10 pt character
_CAM_HEADER, _FRAME_LABEL, _FRAME_GAP, _MAX_FRAME_HEIGHT = 0.3, 0.26, 0.06, 3.0
_PANEL_TITLE, _PANEL_GAP, _BLOCK_GAP = 0.28, 0.1, 0.2
_ACTIONS_H, _REWARDS_H, _FLAG_ROW_H = 2.1, 1.3, 0.3


@dataclass
class RenderResult:
    """What a render call drew.

    Attributes:
        out: absolute path of the PNG.
        width, height: its size in pixels (``round(inches * dpi)``).
        frames: camera frames drawn (all cameras together).
        fields: the fields plotted under the frames (``actions``, ``rewards``, flags).
        cameras: the camera names (``curr_obs.main_images``, ``curr_obs.extra_view_images[1]``).
        frame_indices: the steps (trajectory) or sample numbers (sample) the frames show.
    """

    out: str
    width: int
    height: int
    frames: int
    fields: list[str]
    cameras: list[str] = field(default_factory=list)
    frame_indices: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Camera:
    """An image field of ``curr_obs``: ``layout`` is ``"hwc"``, ``"chw"`` or ``"vhwc"`` (view
    ``view`` of a stacked field)."""

    key: Key
    layout: str
    view: int | None = None

    @property
    def name(self) -> str:
        return key_name(self.key) + (f"[{self.view}]" if self.view is not None else "")


def find_cameras(schema: Mapping[Key, Any]) -> list[Camera]:
    """The cameras among the ``curr_obs`` columns of a schema (see the module docstring).

    ``schema`` maps column keys to :class:`~rlinf_replay_buffer.schema.ColumnSpec` (``dtype``,
    ``row_shape``).
    """
    cameras: list[Camera] = []
    for key, spec in schema.items():
        if len(key) != 2 or key[0] != "curr_obs" or spec.dtype not in _IMAGE_DTYPES:
            continue
        shape = tuple(spec.row_shape)
        if len(shape) == 3 and shape[2] in _CHANNELS and min(shape[:2]) >= _MIN_SIDE:
            cameras.append(Camera(key, "hwc"))
        elif len(shape) == 3 and shape[0] in _CHANNELS and min(shape[1:]) >= _MIN_SIDE:
            cameras.append(Camera(key, "chw"))
        elif len(shape) == 4 and shape[3] in _CHANNELS and min(shape[1:3]) >= _MIN_SIDE and shape[0] >= 1:
            cameras.extend(Camera(key, "vhwc", v) for v in range(shape[0]))
    return cameras


def frame_array(camera: Camera, rows: torch.Tensor) -> np.ndarray:
    """Frames ``[n, H, W, C']`` ready for ``imshow``: ``uint8`` or float in ``[0, 1]``, ``C'``
    1 or 3 (alpha dropped)."""
    x = rows
    if camera.layout == "vhwc":
        x = x[:, camera.view]
    elif camera.layout == "chw":
        x = x.permute(0, 2, 3, 1)
    x = x[..., :3]
    if x.dtype == torch.uint8:
        return x.contiguous().numpy()
    a = x.to(torch.float32).numpy()
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 1.0)
    if lo >= 0.0 and hi <= 1.0:
        return a
    if lo >= 0.0 and hi <= 255.0:
        return a / 255.0
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def id_ranges(ids: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0..2, 5, 7..8"``."""
    out: list[str] = []
    ordered = sorted(set(ids))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}..{ordered[j]}")
        i = j + 1
    return ", ".join(out)


def _check_common(out: Any, max_frames: Any, dpi: Any, width_inches: Any) -> str:
    check_int("max_frames", max_frames, 1)
    check_int("dpi", dpi, 10)
    if (
        isinstance(width_inches, bool)
        or not isinstance(width_inches, int | float)
        or not math.isfinite(width_inches)
        or not 6 <= width_inches <= 100
    ):
        raise InvalidArgumentError(f"width_inches must be a number in [6, 100], got {width_inches!r}")
    if width_inches * dpi > _MAX_PIXELS:
        raise InvalidArgumentError(
            f"width_inches * dpi = {width_inches * dpi:g} pixels is more than {_MAX_PIXELS}; lower the dpi"
        )
    if not isinstance(out, str | os.PathLike) or not os.fspath(out):
        raise InvalidArgumentError(f"out must be a file path ending in .png, got {out!r}")
    out = os.path.abspath(os.fspath(out))
    if not out.lower().endswith(".png"):
        raise InvalidArgumentError(f"out must end in .png (the picture is a PNG), got {out!r}")
    if os.path.isdir(out):
        raise InvalidArgumentError(f"out {out!r} is a directory; give a file name ending in .png")
    return out


def _import_matplotlib() -> tuple[Any, Any, Any]:
    """``(matplotlib, Figure, FigureCanvasAgg)``, or a clear error naming the extra to install."""
    try:
        import matplotlib
        import PIL.Image  # noqa: F401 - matplotlib writes PNGs with pillow; checked here for the message
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError(
            f"drawing pictures needs matplotlib and pillow ({exc}); install them with `pip install {EXTRA}`"
        ) from exc
    return matplotlib, Figure, FigureCanvasAgg


def _as_2d(x: torch.Tensor) -> np.ndarray:
    """``[n, ...]`` -> float ``[n, k]`` (trailing dims flattened)."""
    return x.reshape(x.shape[0], -1).to(torch.float32).numpy()


def _flags(columns: Mapping[Key, torch.Tensor]) -> dict[str, np.ndarray]:
    """Present flag fields as boolean ``[n]`` (any over their trailing dims)."""
    return {
        name: (columns[(name,)].reshape(columns[(name,)].shape[0], -1) != 0).any(dim=1).numpy()
        for name in FLAG_FIELDS
        if (name,) in columns
    }


def _wrap(parts: Sequence[str], limit: int) -> list[str]:
    """Join ``parts`` with separators into lines of at most ``limit`` characters (a part longer
    than that gets a line of its own)."""
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + len(_SEP) + len(part) <= limit:
            lines[-1] += _SEP + part
        else:
            lines.append(part)
    return lines or [""]


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


class _Page:
    """Axes placed top-down in inches on a figure of fixed width; height follows the content."""

    def __init__(self, width: float, top: float) -> None:
        self.width = width
        self.content = width - _LEFT - _RIGHT
        self.y = top
        self.frame_size = (0.0, 0.0)

    def frame_rows(self, count: int, aspect: float, per_row: int) -> list[tuple[float, float]]:
        """Reserve a camera block (header, rows of frames with their labels); return the top-left
        ``(x, y)`` of each frame (all of size ``frame_size``)."""
        self.y += _CAM_HEADER
        fw = (self.content - (per_row - 1) * _FRAME_GAP) / per_row
        fh = min(fw * aspect, _MAX_FRAME_HEIGHT)
        self.frame_size = (fw, fh)
        spots = []
        for i in range(count):
            row, col = divmod(i, per_row)
            if col == 0 and row > 0:
                self.y += fh + _FRAME_LABEL
            spots.append((_LEFT + col * (fw + _FRAME_GAP), self.y))
        self.y += fh + _FRAME_LABEL + _BLOCK_GAP
        return spots

    def panel(self, height: float) -> float:
        """Reserve a plot panel (with room for its title above); return its top."""
        self.y += _PANEL_TITLE
        top = self.y
        self.y += height + _PANEL_GAP
        return top


class _Figure:
    """A matplotlib figure built from a :class:`_Page` layout (inches -> figure fractions)."""

    def __init__(self, figure_cls: Any, canvas_cls: Any, width: float, height: float, dpi: int) -> None:
        self.width, self.height = width, height
        self.fig = figure_cls(figsize=(width, height), dpi=dpi)
        canvas_cls(self.fig)

    def axes(self, x: float, y: float, w: float, h: float, **kwargs: Any) -> Any:
        return self.fig.add_axes(
            (x / self.width, 1 - (y + h) / self.height, w / self.width, h / self.height), **kwargs
        )

    def text(self, x: float, y: float, s: str, **kwargs: Any) -> None:
        self.fig.text(x / self.width, 1 - y / self.height, s, **kwargs)


_RC = {
    "font.size": 10,
    "axes.titlesize": 10.5,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 8.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.facecolor": "white",
    "figure.facecolor": "white",
}


@dataclass
class _Content:
    """What one picture shows, independent of where it came from."""

    title: str
    facts: list[str]  # the subtitle, in parts (wrapped at part boundaries)
    columns: Mapping[Key, torch.Tensor]  # [n, ...] per field (all steps or all samples)
    cameras: list[tuple[Camera, str, np.ndarray]]  # camera, header text, frames [k, H, W, C]
    frame_prefix: str  # "step " or "sample " (dropped where frames are too narrow for it)
    frame_positions: list[int]  # x of each frame on the shared axis
    x_label: str
    time_axis: bool  # join points by lines and draw episode boundaries
    per_row: int


def _draw(content: _Content, out: str, dpi: int, width: float) -> RenderResult:
    matplotlib, figure_cls, canvas_cls = _import_matplotlib()
    from matplotlib.ticker import MaxNLocator

    cols = content.columns
    n = int(cols[("rewards",)].shape[0])
    flags = _flags(cols)
    subtitle = _wrap(content.facts, int((width - _LEFT - 0.2) / _CHAR_INCHES))
    page = _Page(width, _TOP + _LINE * (len(subtitle) - 1))
    frame_boxes = []
    for _, _, frames in content.cameras:
        spots = page.frame_rows(frames.shape[0], frames.shape[1] / frames.shape[2], content.per_row)
        frame_boxes.append((spots, page.frame_size))
    panels: list[tuple[str, float, float]] = []
    if ("actions",) in cols:
        panels.append(("actions", page.panel(_ACTIONS_H), _ACTIONS_H))
    panels.append(("rewards", page.panel(_REWARDS_H), _REWARDS_H))
    if flags:
        h = _FLAG_ROW_H * len(flags) + 0.25
        panels.append(("flags", page.panel(h), h))
    height = page.y - _PANEL_GAP + _BOTTOM
    # exact pixel sizes: round both sides to whole pixels at this dpi
    # (Agg truncates inches * dpi to whole pixels: aim a hair above the intended count)
    width_px, height_px = round(width * dpi), round(height * dpi)
    width, height = (width_px + 1e-3) / dpi, (height_px + 1e-3) / dpi

    with matplotlib.rc_context(_RC):
        f = _Figure(figure_cls, canvas_cls, width, height, dpi)
        f.text(_LEFT, 0.28, content.title, fontsize=15, fontweight="bold", va="top")
        f.text(_LEFT, 0.62, "\n".join(subtitle), fontsize=10, color="#444444", va="top", linespacing=1.5)
        drawn = 0
        for (_, header, frames), (spots, (fw, fh)) in zip(content.cameras, frame_boxes, strict=True):
            hx, hy = spots[0][0], spots[0][1] - _CAM_HEADER
            f.text(hx, hy + 0.08, header, fontsize=10.5, fontweight="bold", va="top")
            gray = frames.shape[-1] == 1
            for i, (x, y) in enumerate(spots):
                ax = f.axes(x, y, fw, fh)
                img = frames[i, ..., 0] if gray else frames[i]
                vmax = 255 if frames.dtype == np.uint8 else 1.0
                ax.imshow(img, cmap="gray" if gray else None, vmin=0, vmax=vmax, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(True)
                    spine.set_color("#999999")
                    spine.set_linewidth(0.6)
                number = str(content.frame_positions[i])
                label = content.frame_prefix + number
                if len(label) * _CHAR_INCHES * 0.9 > fw:
                    label = number
                f.text(x + fw / 2, y + fh + 0.04, label, fontsize=9, ha="center", va="top")
                drawn += 1
        plotted: list[str] = []
        share = None
        ends: list[int] = []  # steps after which an episode ended
        episode_flags = [v for name, v in flags.items() if name != "intervene_flags"]
        if content.time_axis and episode_flags:
            ends = np.flatnonzero(np.any(episode_flags, axis=0)).tolist()
        x = np.arange(n)
        for i, (kind, top, h) in enumerate(panels):
            ax = f.axes(_LEFT, top, page.content, h, sharex=share)
            share = share or ax
            last = i == len(panels) - 1
            if kind == "actions":
                _plot_actions(ax, x, _as_2d(cols[("actions",)]), content.time_axis)
                plotted.append("actions")
                if content.frame_positions and content.cameras:
                    ax.plot(
                        content.frame_positions,
                        [1.0] * len(content.frame_positions),
                        "v",
                        color="#555555",
                        markersize=5,
                        transform=ax.get_xaxis_transform(),
                        clip_on=False,
                        label="frame shown",
                    )
                    _legend(ax, content.time_axis)
            elif kind == "rewards":
                _plot_rewards(ax, x, _as_2d(cols[("rewards",)]), content.time_axis)
                plotted.append("rewards")
            else:
                _plot_flags(ax, x, flags, content.time_axis)
                plotted.extend(flags)
            for t in ends:
                ax.axvline(t + 0.5, color="#666666", linestyle="--", linewidth=0.9, zorder=0, clip_on=False)
            ax.set_xlim(-0.5, n - 0.5)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=max(4, int(page.content * 1.4)), integer=True))
            ax.grid(axis="x", color="#eeeeee", linewidth=0.6)
            ax.set_axisbelow(True)
            if last:
                ax.set_xlabel(content.x_label)
            else:
                ax.tick_params(axis="x", labelbottom=False)
        buf = io.BytesIO()
        f.fig.savefig(buf, format="png", dpi=dpi)
    data = buf.getvalue()
    w_px, h_px = _png_size(data)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    atomic_write(out, lambda fh: fh.write(data))
    return RenderResult(
        out=out,
        width=w_px,
        height=h_px,
        frames=drawn,
        fields=plotted,
        cameras=[c.name for c, _, _ in content.cameras],
        frame_indices=list(content.frame_positions) if content.cameras else [],
    )


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ReplayBufferError("matplotlib did not produce a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _colors(k: int) -> list[Any]:
    from matplotlib import colormaps

    if k <= 10:
        return [colormaps["tab10"](i) for i in range(k)]
    return [colormaps["viridis"](i / max(k - 1, 1)) for i in range(k)]


def _legend(ax: Any, time_axis: bool) -> None:
    """A legend in the right margin, next to the panel (drawn again if entries were added)."""
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        frameon=False,
        borderaxespad=0.0,
        markerscale=1.0 if time_axis else 1.8,
        handlelength=1.6,
    )


def _title(ax: Any, text: str) -> None:
    """A panel title on the left, shrunk (down to 7 pt) to fit the panel's width."""
    width = ax.get_position().width * ax.figure.get_figwidth()
    size = max(7.0, min(10.5, width * 72 / (0.6 * max(len(text), 1))))
    ax.set_title(text, loc="left", fontsize=size)


def _plot_actions(ax: Any, x: np.ndarray, a: np.ndarray, time_axis: bool) -> None:
    k = a.shape[1]
    hide = "_" if k > _LEGEND_MAX else ""
    for d, color in zip(range(k), _colors(k), strict=True):
        if time_axis:
            ax.plot(x, a[:, d], color=color, linewidth=1.3, label=f"{hide}a[{d}]")
        else:
            ax.plot(x, a[:, d], "o", color=color, markersize=3, label=f"{hide}a[{d}]")
    _title(ax, f"actions ({k} dim{'s' if k != 1 else ''})")
    ax.set_ylabel("action")
    if k <= _LEGEND_MAX:
        _legend(ax, time_axis)
    else:
        ax.text(
            1.01,
            0.8,
            f"{k} dims:\nno legend\n(colours run\ndark to light)",
            transform=ax.transAxes,
            va="top",
            fontsize=8.5,
        )


def _plot_rewards(ax: Any, x: np.ndarray, r: np.ndarray, time_axis: bool) -> None:
    k = r.shape[1]
    for d, color in zip(range(k), _colors(k), strict=True):
        label = "reward" if k == 1 else f"r[{d}]"
        col = r[:, d]
        if time_axis:
            ax.plot(x, col, color=color, linewidth=1.2, drawstyle="steps-mid", label=label)
            hits = np.flatnonzero(col != 0)
            if 0 < len(hits) <= max(len(col) // 4, 1):  # sparse: make every nonzero reward visible
                ax.plot(hits, col[hits], "o", color=color, markersize=4.5, label="_nonzero")
        else:
            ax.plot(x, col, "o", color=color, markersize=3.5, label=label)
    total = float(np.nansum(r))
    nonzero = int(np.count_nonzero(np.any(r != 0, axis=1)))
    where = "steps" if time_axis else "samples"
    _title(ax, f"rewards (sum {total:.4g}; nonzero at {nonzero} of {len(r)} {where})")
    ax.set_ylabel("reward")
    if k > 1:
        _legend(ax, time_axis)


def _plot_flags(ax: Any, x: np.ndarray, flags: Mapping[str, np.ndarray], time_axis: bool) -> None:
    names = list(flags)
    for row, name in enumerate(names):
        y = len(names) - 1 - row
        hits = np.flatnonzero(flags[name])
        ax.plot(
            hits,
            [y] * len(hits),
            "|" if time_axis else "o",
            color=_FLAG_COLOR[name],
            markersize=12 if time_axis else 4.5,
            markeredgewidth=2.2 if time_axis else 1.0,
        )
        ax.axhline(y, color="#eeeeee", linewidth=0.8, zorder=0)
    ax.set_yticks(range(len(names)), [_FLAG_LABEL.get(n, n) for n in reversed(names)])
    ax.set_ylim(-0.6, len(names) - 0.4)
    counts = ", ".join(f"{_FLAG_LABEL.get(n, n)} {int(flags[n].sum())}" for n in names)
    where = "steps" if time_axis else "samples"
    _title(ax, f"flags (true at: {counts} {where})")
    if time_axis and any(flags[n].any() for n in names if n != "intervene_flags"):
        ax.plot([], [], color="#666666", linestyle="--", linewidth=0.9, label="episode end\n(after the step)")
        _legend(ax, time_axis)
    ax.spines["left"].set_visible(False)
    ax.tick_params(axis="y", length=0)


def _frame_steps(num_steps: int, max_frames: int) -> list[int]:
    """Up to ``max_frames`` evenly spaced steps, first and last included."""
    k = min(max_frames, num_steps)
    return sorted({round(v) for v in np.linspace(0, num_steps - 1, k)})


def _per_row(max_frames: int) -> int:
    """Frames per row: ``max_frames`` up to 12 (frames keep one size whatever ``T`` is)."""
    return min(max_frames, _FRAMES_PER_ROW)


def _find_record(path: str, trajectory_id: Any) -> tuple[Record, Schema, Any]:
    trajectory_id = check_int("trajectory id", trajectory_id)
    contents, schema = read_directory(path)
    for record in contents.records:
        if record.trajectory_id == trajectory_id:
            assert schema is not None
            return record, schema, contents
    held = id_ranges([r.trajectory_id for r in contents.records])
    raise InvalidArgumentError(
        f"{contents.path}: no trajectory {trajectory_id}; "
        + (f"the directory holds ids {held}" if held else "the directory holds no trajectory")
    )


def _header(camera: Camera, frames: np.ndarray, dtype: torch.dtype) -> str:
    h, w = frames.shape[1:3]
    return f"{camera.name}   {h}×{w}   {str(dtype).removeprefix('torch.')}"


def render_trajectory(
    path: str,
    trajectory_id: int,
    out: str,
    *,
    env: int = 0,
    max_frames: int = 12,
    dpi: int = 100,
    width_inches: float = 16.0,
    cameras: Sequence[str] | None = None,
) -> RenderResult:
    """Draw one env column of one trajectory of a buffer directory into a PNG.

    Args:
        path: a buffer directory (``pt``, ``pkl`` or ``segment``; written by this library or
            by RLinf).
        trajectory_id: the trajectory's id in the directory's index.
        out: the PNG to write (``.png``; its directory is created; replaced atomically).
        env: the env column ``0 .. B-1`` to draw.
        max_frames: frames per camera, at evenly spaced steps (first and last included); more
            than 12 wrap onto further rows.
        dpi: pixels per inch; the picture is ``round(width_inches * dpi)`` pixels wide.
        width_inches: figure width; the height follows from the content.
        cameras: the ``curr_obs`` fields to draw frames of (e.g. ``["main_images"]``);
            ``None`` (default) draws every camera. A name that is not a camera draws nothing.

    Returns:
        A :class:`RenderResult`.

    Raises:
        InvalidArgumentError: no such trajectory (the message lists the ids present), ``env``
            out of range, bad ``max_frames``/``dpi``/``width_inches``/``out``.
        BufferNotFoundError, CorruptBufferError: the directory is missing or damaged.
        MissingDependencyError: matplotlib or pillow is missing.
    """
    out = _check_common(out, max_frames, dpi, width_inches)
    _import_matplotlib()  # fail before reading anything if the extra is missing
    record, schema, contents = _find_record(path, trajectory_id)
    b = record.num_envs
    if isinstance(env, bool) or not isinstance(env, int) or not 0 <= env < b:
        raise InvalidArgumentError(
            f"env {env!r} is out of range: trajectory {trajectory_id} has B={b} env"
            f"{'s' if b != 1 else ''} (valid: 0..{b - 1})"
        )
    rows = read_rows(record, schema)
    t = record.num_steps
    picks = torch.arange(t) * b + env  # row = step * B + env
    columns = {k: v[picks] for k, v in rows.items() if k[0] != "curr_obs" and k[0] != "next_obs"}
    steps = _frame_steps(t, max_frames)
    wanted = None if cameras is None else set(cameras)
    cameras = []
    for camera in find_cameras(schema):
        if wanted is not None and camera.key[1] not in wanted:
            continue
        frames = frame_array(camera, rows[camera.key][torch.tensor(steps) * b + env])
        cameras.append((camera, _header(camera, frames, schema[camera.key].dtype), frames))
    facts = [
        f"T = {t} steps",
        f"B = {b} envs",
        f"model_update_count = {record.model_update_count}",
        f"model_weights_id = {_short(record.model_weights_id, 24)}",
        f"max_episode_length = {record.max_episode_length}",
        f"format {record.fmt}",
        _short(contents.path, 70),
    ]
    if not cameras:
        facts.append("no camera fields in curr_obs")
    content = _Content(
        title=f"trajectory {record.trajectory_id}  ·  env {env} of {b}",
        facts=facts,
        columns=columns,
        cameras=cameras,
        frame_prefix="step ",
        frame_positions=steps,
        x_label="step (transition t of the trajectory; env column fixed)",
        time_axis=True,
        per_row=_per_row(max_frames),
    )
    return _draw(content, out, dpi, float(width_inches))


def render_sample(
    path: str,
    num: int,
    out: str,
    *,
    seed: int = 0,
    max_frames: int = 12,
    dpi: int = 100,
    width_inches: float = 16.0,
) -> RenderResult:
    """Sample ``num`` transitions from a buffer directory and draw them into a PNG.

    The transitions are drawn by a :class:`TrajectoryReplayBuffer` (``seed``,
    ``sample_window_size=0``: every trajectory of the directory), exactly as ``sample(num)``
    returns them. The picture shows the ``curr_obs`` camera frames of the first
    ``max_frames`` samples and plots of actions, rewards and flags by sample number.

    Args:
        path: a buffer directory (any format, ours or RLinf's).
        num: transitions to sample (>= 1).
        out: the PNG to write (``.png``; replaced atomically).
        seed: the buffer's seed (the same seed draws the same transitions).
        max_frames, dpi, width_inches: as for :func:`render_trajectory`.

    Raises:
        InvalidArgumentError: ``num`` < 1, bad ``seed``/``max_frames``/``dpi``/``width_inches``/``out``.
        BufferNotFoundError, CorruptBufferError: the directory is missing or damaged.
        EmptyBufferError: the directory holds no transition.
        MissingDependencyError: matplotlib or pillow is missing.
    """
    num = check_int("num", num, 1)
    seed = check_int("seed", seed, 0)
    out = _check_common(out, max_frames, dpi, width_inches)
    _import_matplotlib()
    with TrajectoryReplayBuffer(
        seed=seed, enable_cache=False, sample_window_size=0, auto_save=False
    ) as buffer:
        buffer.load_checkpoint(path)
        batch = buffer.sample(num)
        stats = buffer.get_stats()
    columns: dict[Key, torch.Tensor] = {}
    for name, value in batch.items():
        if isinstance(value, dict):
            columns.update({(name, sub): v for sub, v in value.items()})
        else:
            columns[(name,)] = value
    schema = Schema.of_columns(columns, lead_dims=1)
    k = min(num, max_frames)
    cameras = []
    for camera in find_cameras(schema):
        frames = frame_array(camera, columns[camera.key][:k])
        cameras.append((camera, _header(camera, frames, schema[camera.key].dtype), frames))
    content = _Content(
        title=f"{num} sampled transition{'s' if num != 1 else ''}  ·  seed {seed}",
        facts=[
            f"drawn uniformly, with replacement, from the {stats['total_samples']} transitions of "
            f"{stats['size']} trajectories (whole directory)",
            f"frames of samples 0..{k - 1}" if cameras else "no camera fields in curr_obs",
            _short(os.path.abspath(path), 70),
        ],
        columns={key: v for key, v in columns.items() if key[0] not in ("curr_obs", "next_obs")},
        cameras=cameras,
        frame_prefix="sample ",
        frame_positions=list(range(k)),
        x_label="sample number (independent random draws: not a time axis)",
        time_axis=False,
        per_row=_per_row(max_frames),
    )
    return _draw(content, out, dpi, float(width_inches))
