"""Pictures and videos of trajectories: camera frames over time above plots of states, actions,
rewards and flags.

:func:`render_trajectory` draws one env column of one stored trajectory:

* a title with the trajectory id, the env, ``T``, ``B``, ``model_update_count``, the weights
  id, the format and the directory;
* per camera, a strip of up to ``max_frames`` frames at evenly spaced steps (first and last
  included), each labelled with its step, the env, its reward and its done flag
  (``step 12 · env 0`` / ``r 0.5 · done 1``);
* panels sharing one time axis (steps ``0 .. T-1``): every dimension of each state field
  (:func:`find_states`) and of the actions as a line, the rewards, and the flags (``dones``,
  ``terminations``, ``truncations``, ``intervene_flags``) as markers. A dashed line after every
  step whose episode ended runs through all panels, and small triangles on the top edge of the
  first panel mark the steps the frames show.

:func:`render_video` plays one env column of one trajectory as a video (``.mp4``, ``.gif``,
``.mkv``, ``.webm``; :mod:`.video`), one video frame per step: a label (trajectory, env, step,
reward, done), the step's camera images side by side (small images scaled up by a whole factor,
nearest neighbour), and under them the same panels over the whole trajectory with a cursor at
the step.

:func:`render_sample` draws ``num`` transitions sampled by a :class:`TrajectoryReplayBuffer`
(``sample_window_size=0``: the whole directory): the camera frames of the first ``max_frames``
samples, and the same panels indexed by sample number (draws are independent: there is no
time axis, and points are not joined by lines).

**States** are the other ``curr_obs`` fields whose per-step value has 1 to 64 elements (of a
real, integer or bool dtype): up to 4 of them are plotted, each in its own panel.

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

The PNG and the video are written atomically (temporary file in the same directory, then
renamed): ``out`` is either the complete old file or the complete new one. matplotlib and pillow
are imported only when a picture is drawn (``pip install rlinf-replay-buffer[tools]``), PyAV only
when a video is written (``pip install rlinf-replay-buffer[video]``); the figure is drawn with
the Agg canvas directly, so pyplot's state and the global backend are left alone.
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
from ..fsio import atomic_write, make_dirs
from ..record import Record
from ..schema import Schema
from ..trajectory import Key, key_name
from ..validate import check_int
from . import video

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
_STATE_MAX_ELEMENTS = 64  # a curr_obs field with more elements per step is not a state
_MAX_STATE_PANELS = 4

# layout, in inches
_LEFT, _RIGHT, _TOP, _BOTTOM = 1.15, 1.55, 0.95, 0.6
_LINE, _CHAR_INCHES, _SEP = 0.21, 0.085, "   ·   "  # subtitle line height, width of a 10 pt character
_CAM_HEADER, _FRAME_LABEL, _FRAME_GAP, _MAX_FRAME_HEIGHT = 0.3, 0.26, 0.06, 3.0
_LABEL_LINE = 0.16  # each further line of a frame label
_PANEL_TITLE, _PANEL_GAP, _BLOCK_GAP = 0.28, 0.1, 0.2
_ACTIONS_H, _REWARDS_H, _FLAG_ROW_H = 2.1, 1.3, 0.3


@dataclass
class RenderResult:
    """What a render call drew.

    Attributes:
        out: absolute path of the PNG.
        width, height: its size in pixels (``round(inches * dpi)``).
        frames: camera frames drawn (all cameras together).
        fields: the fields plotted under the frames (states such as ``curr_obs.states``,
            ``actions``, ``rewards``, flags).
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


def find_states(schema: Mapping[Key, Any]) -> list[Key]:
    """The state fields among the ``curr_obs`` columns of a schema: those that are not cameras
    (:func:`find_cameras`) and whose per-step value has 1 to 64 elements of a real, integer or
    bool dtype, in schema order."""
    cameras = {camera.key for camera in find_cameras(schema)}
    return [
        key
        for key, spec in schema.items()
        if len(key) == 2
        and key[0] == "curr_obs"
        and key not in cameras
        and not spec.dtype.is_complex
        and 1 <= math.prod(spec.row_shape) <= _STATE_MAX_ELEMENTS
    ]


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

    def frame_rows(
        self, count: int, aspect: float, per_row: int, label_lines: int = 1
    ) -> list[tuple[float, float]]:
        """Reserve a camera block (header, rows of frames with their labels of ``label_lines``
        lines); return the top-left ``(x, y)`` of each frame (all of size ``frame_size``)."""
        self.y += _CAM_HEADER
        fw = (self.content - (per_row - 1) * _FRAME_GAP) / per_row
        fh = min(fw * aspect, _MAX_FRAME_HEIGHT)
        label = _FRAME_LABEL + _LABEL_LINE * (label_lines - 1)
        self.frame_size = (fw, fh)
        spots = []
        for i in range(count):
            row, col = divmod(i, per_row)
            if col == 0 and row > 0:
                self.y += fh + label
            spots.append((_LEFT + col * (fw + _FRAME_GAP), self.y))
        self.y += fh + label + _BLOCK_GAP
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

    def text(self, x: float, y: float, s: str, **kwargs: Any) -> Any:
        return self.fig.text(x / self.width, 1 - y / self.height, s, **kwargs)


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
    states: list[Key]  # the state fields of columns to plot, in order
    cameras: list[tuple[Camera, str, np.ndarray]]  # camera, header text, frames [k, H, W, C]
    frame_labels: list[tuple[str, str]]  # per frame: its label (lines), and a short one for narrow frames
    frame_positions: list[int]  # x of each frame on the shared axis
    x_label: str
    time_axis: bool  # join points by lines and draw episode boundaries
    per_row: int


#: a panel: (kind, the field plotted or None for the flags, top, height), inches
_Panel = tuple[str, Key | None, float, float]


def _plan_panels(
    page: _Page, cols: Mapping[Key, Any], states: Sequence[Key], flags: Mapping[str, Any], scale: float = 1.0
) -> list[_Panel]:
    """Reserve the plot panels on ``page``: one per state field, the actions (if present), the
    rewards, the flags (if any); heights are the picture's times ``scale``."""
    lines, rewards = _ACTIONS_H * scale, _REWARDS_H * scale
    panels: list[_Panel] = [("state", key, page.panel(lines), lines) for key in states]
    if ("actions",) in cols:
        panels.append(("actions", ("actions",), page.panel(lines), lines))
    panels.append(("rewards", ("rewards",), page.panel(rewards), rewards))
    if flags:
        h = _FLAG_ROW_H * len(flags) + 0.25
        panels.append(("flags", None, page.panel(h), h))
    return panels


def _episode_ends(flags: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """Boolean ``[n]``: the steps after which an episode ended (``dones``, ``terminations`` or
    ``truncations``); ``None`` if none of these fields is present."""
    episode = [v for name, v in flags.items() if name != "intervene_flags"]
    return np.any(episode, axis=0) if episode else None


def _draw_panels(
    f: _Figure,
    page: _Page,
    panels: Sequence[_Panel],
    cols: Mapping[Key, torch.Tensor],
    flags: Mapping[str, np.ndarray],
    *,
    time_axis: bool,
    x_label: str,
    markers: Sequence[int] = (),
) -> tuple[list[str], list[Any]]:
    """Draw the planned panels on one shared x axis (``0 .. n-1``); small triangles on the top
    edge of the first panel mark ``markers``. Returns the fields plotted and the axes."""
    from matplotlib.ticker import MaxNLocator

    n = int(cols[("rewards",)].shape[0])
    ends = _episode_ends(flags) if time_axis else None
    ends_at = [] if ends is None else np.flatnonzero(ends).tolist()
    x = np.arange(n)
    plotted: list[str] = []
    axes: list[Any] = []
    for i, (kind, key, top, h) in enumerate(panels):
        ax = f.axes(_LEFT, top, page.content, h, sharex=axes[0] if axes else None)
        if kind == "state" and key is not None:
            _plot_dims(ax, x, _as_2d(cols[key]), time_axis, key_name(key), "s", "state")
            plotted.append(key_name(key))
        elif kind == "actions":
            _plot_dims(ax, x, _as_2d(cols[("actions",)]), time_axis, "actions", "a", "action")
            plotted.append("actions")
        elif kind == "rewards":
            _plot_rewards(ax, x, _as_2d(cols[("rewards",)]), time_axis)
            plotted.append("rewards")
        else:
            _plot_flags(ax, x, flags, time_axis)
            plotted.extend(flags)
        if i == 0 and markers:
            ax.plot(
                markers,
                [1.0] * len(markers),
                "v",
                color="#555555",
                markersize=5,
                transform=ax.get_xaxis_transform(),
                clip_on=False,
                label="frame shown",
            )
            _legend(ax, time_axis)
        for t in ends_at:
            ax.axvline(t + 0.5, color="#666666", linestyle="--", linewidth=0.9, zorder=0, clip_on=False)
        ax.set_xlim(-0.5, n - 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=max(4, int(page.content * 1.4)), integer=True))
        ax.grid(axis="x", color="#eeeeee", linewidth=0.6)
        ax.set_axisbelow(True)
        if i == len(panels) - 1:
            ax.set_xlabel(x_label)
        else:
            ax.tick_params(axis="x", labelbottom=False)
        axes.append(ax)
    return plotted, axes


def _exact_size(width: float, height: float, dpi: int) -> tuple[int, int, float, float]:
    """Whole pixel sizes at ``dpi`` and the inches that give them: ``(w_px, h_px, w_in, h_in)``
    (Agg truncates inches * dpi to whole pixels: aim a hair above the intended count)."""
    width_px, height_px = round(width * dpi), round(height * dpi)
    return width_px, height_px, (width_px + 1e-3) / dpi, (height_px + 1e-3) / dpi


def _draw(content: _Content, out: str, dpi: int, width: float) -> RenderResult:
    matplotlib, figure_cls, canvas_cls = _import_matplotlib()

    cols = content.columns
    flags = _flags(cols)
    subtitle = _wrap(content.facts, int((width - _LEFT - 0.2) / _CHAR_INCHES))
    page = _Page(width, _TOP + _LINE * (len(subtitle) - 1))
    label_lines = max((label.count("\n") + 1 for label, _ in content.frame_labels), default=1)
    frame_boxes = []
    for _, _, frames in content.cameras:
        spots = page.frame_rows(
            frames.shape[0], frames.shape[1] / frames.shape[2], content.per_row, label_lines
        )
        frame_boxes.append((spots, page.frame_size))
    panels = _plan_panels(page, cols, content.states, flags)
    _, _, width, height = _exact_size(width, page.y - _PANEL_GAP + _BOTTOM, dpi)

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
                _frame_label(f, x + fw / 2, y + fh + 0.04, fw, *content.frame_labels[i])
                drawn += 1
        markers = content.frame_positions if content.cameras else []
        plotted, _ = _draw_panels(
            f,
            page,
            panels,
            cols,
            flags,
            time_axis=content.time_axis,
            x_label=content.x_label,
            markers=markers,
        )
        buf = io.BytesIO()
        f.fig.savefig(buf, format="png", dpi=dpi)
    data = buf.getvalue()
    w_px, h_px = _png_size(data)
    make_dirs(os.path.dirname(out))
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


def _frame_label(f: _Figure, x: float, y: float, width: float, label: str, short: str) -> None:
    """A frame's label centred under it: 9 pt, shrunk down to 6 pt to fit ``width`` inches;
    ``short`` where even that is too wide."""
    chars = max(len(line) for line in label.split("\n"))
    size = max(6.0, min(9.0, width * 72 / (0.6 * max(chars, 1))))
    if chars * size * 0.6 / 72 > width:
        label, size = short, 9.0
    f.text(x, y, label, fontsize=size, ha="center", va="top", linespacing=1.25)


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


def _plot_dims(
    ax: Any, x: np.ndarray, a: np.ndarray, time_axis: bool, name: str, symbol: str, y_label: str
) -> None:
    """Every dimension of ``a`` (``[n, k]``) as a line (dots without a time axis), labelled
    ``symbol[d]``, under the title ``name (k dims)``."""
    k = a.shape[1]
    hide = "_" if k > _LEGEND_MAX else ""
    for d, color in zip(range(k), _colors(k), strict=True):
        if time_axis:
            ax.plot(x, a[:, d], color=color, linewidth=1.3, label=f"{hide}{symbol}[{d}]")
        else:
            ax.plot(x, a[:, d], "o", color=color, markersize=3, label=f"{hide}{symbol}[{d}]")
    _title(ax, f"{name} ({k} dim{'s' if k != 1 else ''})")
    ax.set_ylabel(y_label)
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


def _header(camera: Camera, frames: np.ndarray, dtype: torch.dtype, sep: str = "   ") -> str:
    h, w = frames.shape[1:3]
    return f"{camera.name}{sep}{h}×{w}   {str(dtype).removeprefix('torch.')}"


@dataclass
class _EnvColumn:
    """One env column of one stored trajectory, read."""

    record: Record
    directory: str
    schema: Schema
    rows: Mapping[Key, torch.Tensor]  # every stored row [T * B, ...]
    picks: torch.Tensor  # the row of each step of the env: step * B + env
    cameras: list[Camera]  # the cameras to show
    states: list[Key]  # every state field
    columns: dict[Key, torch.Tensor]  # [T, ...]: the fields that are not observations, and the states

    def frames(self, camera: Camera, steps: Sequence[int]) -> np.ndarray:
        """``camera``'s frames at ``steps``, as :func:`frame_array` gives them."""
        return frame_array(camera, self.rows[camera.key][self.picks[list(steps)]])

    def facts(self) -> list[str]:
        record = self.record
        facts = [
            f"T = {record.num_steps} steps",
            f"B = {record.num_envs} envs",
            f"model_update_count = {record.model_update_count}",
            f"model_weights_id = {_short(record.model_weights_id, 24)}",
            f"max_episode_length = {record.max_episode_length}",
            f"format {record.fmt}",
            _short(self.directory, 70),
        ]
        if len(self.states) > _MAX_STATE_PANELS:
            facts.append(f"{len(self.states) - _MAX_STATE_PANELS} more state fields not plotted")
        if not self.cameras:
            facts.append("no camera fields in curr_obs")
        return facts


def _read_env_column(path: str, trajectory_id: Any, env: Any, cameras: Sequence[str] | None) -> _EnvColumn:
    record, schema, contents = _find_record(path, trajectory_id)
    b = record.num_envs
    if isinstance(env, bool) or not isinstance(env, int) or not 0 <= env < b:
        raise InvalidArgumentError(
            f"env {env!r} is out of range: trajectory {trajectory_id} has B={b} env"
            f"{'s' if b != 1 else ''} (valid: 0..{b - 1})"
        )
    rows = read_rows(record, schema)
    picks = torch.arange(record.num_steps) * b + env  # row = step * B + env
    states = find_states(schema)
    columns = {k: v[picks] for k, v in rows.items() if k[0] not in ("curr_obs", "next_obs") or k in states}
    wanted = None if cameras is None else set(cameras)
    shown = [c for c in find_cameras(schema) if wanted is None or c.key[1] in wanted]
    return _EnvColumn(record, contents.path, schema, rows, picks, shown, states, columns)


def _step_texts(columns: Mapping[Key, torch.Tensor]) -> tuple[list[str], list[bool] | None]:
    """Per step: the reward as text (its value, up to 4 values, or their sum) and whether an
    episode ended there (``None`` without ``dones``/``terminations``/``truncations``)."""
    rewards = _as_2d(columns[("rewards",)])
    k = rewards.shape[1]
    if k == 1:
        texts = [f"{v:.4g}" for v in rewards[:, 0]]
    elif k <= 4:
        texts = ["[" + ", ".join(f"{v:.3g}" for v in row) + "]" for row in rewards]
    else:
        texts = [f"sum {v:.4g}" for v in rewards.sum(axis=1)]
    ends = _episode_ends(_flags(columns))
    return texts, None if ends is None else ends.tolist()


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
    column = _read_env_column(path, trajectory_id, env, cameras)
    record = column.record
    steps = _frame_steps(record.num_steps, max_frames)
    shown = []
    for camera in column.cameras:
        frames = column.frames(camera, steps)
        shown.append((camera, _header(camera, frames, column.schema[camera.key].dtype), frames))
    rewards, ends = _step_texts(column.columns)
    labels = [
        (
            f"step {t} · env {env}\nr {rewards[t]}" + ("" if ends is None else f" · done {int(ends[t])}"),
            str(t),
        )
        for t in steps
    ]
    content = _Content(
        title=f"trajectory {record.trajectory_id}  ·  env {env} of {record.num_envs}",
        facts=column.facts(),
        columns=column.columns,
        states=column.states[:_MAX_STATE_PANELS],
        cameras=shown,
        frame_labels=labels,
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
    ``max_frames`` samples and plots of states, actions, rewards and flags by sample number.

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
    states = find_states(schema)
    k = min(num, max_frames)
    cameras = []
    for camera in find_cameras(schema):
        frames = frame_array(camera, columns[camera.key][:k])
        cameras.append((camera, _header(camera, frames, schema[camera.key].dtype), frames))
    facts = [
        f"drawn uniformly, with replacement, from the {stats['total_samples']} transitions of "
        f"{stats['size']} trajectories (whole directory)",
        f"frames of samples 0..{k - 1}" if cameras else "no camera fields in curr_obs",
        _short(os.path.abspath(path), 70),
    ]
    if len(states) > _MAX_STATE_PANELS:
        facts.append(f"{len(states) - _MAX_STATE_PANELS} more state fields not plotted")
    content = _Content(
        title=f"{num} sampled transition{'s' if num != 1 else ''}  ·  seed {seed}",
        facts=facts,
        columns={
            key: v for key, v in columns.items() if key[0] not in ("curr_obs", "next_obs") or key in states
        },
        states=states[:_MAX_STATE_PANELS],
        cameras=cameras,
        frame_labels=[(f"sample {i}", str(i)) for i in range(k)],
        frame_positions=list(range(k)),
        x_label="sample number (independent random draws: not a time axis)",
        time_axis=False,
        per_row=_per_row(max_frames),
    )
    return _draw(content, out, dpi, float(width_inches))


# -- videos -------------------------------------------------------------------------------------
_VIDEO_DPI = 100
_VIDEO_MIN_WIDTH = 1024  # pixels
_VIDEO_CAMERA_HEIGHT = 240  # smaller frames are scaled up by a whole factor to about this height
_VIDEO_MAX_CAMERA_HEIGHT = 480  # taller frames are scaled down to it
_VIDEO_MAX_STRIP = 2400  # the cameras side by side are scaled down to fit this width
_VIDEO_CAMERA_GAP = 0.12  # inches
_VIDEO_PANEL_SCALE = 0.7  # panel heights, relative to the picture's
_VIDEO_TOP = 0.75  # inches: the label and the facts above the cameras
_VIDEO_CAM_HEADER = 0.45  # inches: a camera's name and size, on two lines
_CURSOR = "#d62728"


@dataclass
class VideoResult:
    """What :func:`render_video` wrote.

    Attributes:
        out: absolute path of the video file.
        width, height: size of each video frame, in pixels.
        frames: video frames written: one per step of the trajectory.
        fps: frames per second.
        fields: the fields plotted under the cameras (states, ``actions``, ``rewards``, flags).
        cameras: the camera names shown (``curr_obs.main_images``, ...).
        camera_boxes: where each camera's image is in a frame: ``(top, left, height, width)`` in
            pixels, in the order of ``cameras``.
    """

    out: str
    width: int
    height: int
    frames: int
    fps: float
    fields: list[str]
    cameras: list[str] = field(default_factory=list)
    camera_boxes: list[tuple[int, int, int, int]] = field(default_factory=list)


def _rgb8(frames: np.ndarray) -> np.ndarray:
    """:func:`frame_array`'s frames (``uint8`` or float in ``[0, 1]``, 1 or 3 channels) as
    ``uint8`` ``[n, H, W, 3]``."""
    if frames.dtype != np.uint8:
        frames = np.round(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames


def _scaled_size(height: int, width: int) -> tuple[int, int]:
    """The shown size of a camera frame: small frames scaled up by a whole factor to about
    240 pixels high, frames over 480 pixels high scaled down to 480."""
    if height <= _VIDEO_CAMERA_HEIGHT:
        factor = _VIDEO_CAMERA_HEIGHT // height
        return height * factor, width * factor
    if height <= _VIDEO_MAX_CAMERA_HEIGHT:
        return height, width
    return _VIDEO_MAX_CAMERA_HEIGHT, max(1, round(width * _VIDEO_MAX_CAMERA_HEIGHT / height))


def _nearest(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` ``[h, w, C]`` resized to ``size`` ``(H, W)`` by nearest neighbour (a whole
    factor up repeats each pixel)."""
    h, w = image.shape[:2]
    rows = np.arange(size[0]) * h // size[0]
    cols = np.arange(size[1]) * w // size[1]
    return image[rows[:, None], cols[None, :]]


class _Movie:
    """The frames of a trajectory video. The figure (facts, camera names, panels) is drawn
    once; each frame restores it, draws the step's label and the cursors over it and pastes the
    step's camera images into their boxes."""

    def __init__(self, column: _EnvColumn, env: int, cameras: list[tuple[Camera, np.ndarray]]) -> None:
        matplotlib, figure_cls, canvas_cls = _import_matplotlib()
        record = column.record
        self.column, self.cameras = column, cameras
        self.rewards, self.ends = _step_texts(column.columns)
        sizes = [_scaled_size(*frames.shape[1:3]) for _, frames in cameras]
        gap = round(_VIDEO_CAMERA_GAP * _VIDEO_DPI)
        strip = sum(w for _, w in sizes) + gap * max(len(sizes) - 1, 0)
        if strip > _VIDEO_MAX_STRIP:  # too wide side by side: scale every camera down alike
            shrink = _VIDEO_MAX_STRIP / strip
            sizes = [(max(1, int(h * shrink)), max(1, int(w * shrink))) for h, w in sizes]
            strip = sum(w for _, w in sizes) + gap * max(len(sizes) - 1, 0)
        width_px = max(_VIDEO_MIN_WIDTH, round((_LEFT + _RIGHT) * _VIDEO_DPI) + strip)
        width_px += width_px % 2
        width = width_px / _VIDEO_DPI
        subtitle = _wrap(column.facts(), int((width - _LEFT - 0.2) / _CHAR_INCHES))
        page = _Page(width, _VIDEO_TOP + _LINE * (len(subtitle) - 1))
        self.boxes: list[tuple[int, int, int, int]] = []  # top, left, height, width of each camera, pixels
        if cameras:
            page.y += _VIDEO_CAM_HEADER
            x = round(_LEFT * _VIDEO_DPI)
            top = round(page.y * _VIDEO_DPI)
            for h, w in sizes:
                self.boxes.append((top, x, h, w))
                x += w + gap
            page.y += max(h for h, _ in sizes) / _VIDEO_DPI + _BLOCK_GAP
        flags = _flags(column.columns)
        panels = _plan_panels(
            page, column.columns, column.states[:_MAX_STATE_PANELS], flags, _VIDEO_PANEL_SCALE
        )
        height_px = round((page.y - _PANEL_GAP + _BOTTOM) * _VIDEO_DPI)
        height_px += height_px % 2
        self.width, self.height, width, height = _exact_size(
            width_px / _VIDEO_DPI, height_px / _VIDEO_DPI, _VIDEO_DPI
        )
        with matplotlib.rc_context(_RC):
            f = _Figure(figure_cls, canvas_cls, width, height, _VIDEO_DPI)
            self.label = f.text(_LEFT, 0.14, "", fontsize=14, fontweight="bold", va="top", animated=True)
            f.text(_LEFT, 0.48, "\n".join(subtitle), fontsize=10, color="#444444", va="top", linespacing=1.5)
            for (camera, frames), (y, x, _, w) in zip(cameras, self.boxes, strict=True):
                header = _header(camera, frames, column.schema[camera.key].dtype, sep="\n")
                size = min(10.5, w / _VIDEO_DPI * 72 / (0.6 * len(camera.name)))
                top = y / _VIDEO_DPI - _VIDEO_CAM_HEADER + 0.06
                f.text(x / _VIDEO_DPI, top, header, fontsize=max(size, 6.0), va="top", linespacing=1.3)
            self.fields, axes = _draw_panels(
                f,
                page,
                panels,
                column.columns,
                flags,
                time_axis=True,
                x_label="step (transition t of the trajectory; env column fixed)",
            )
            self.cursors = [
                (ax, ax.axvline(0, color=_CURSOR, linewidth=1.6, zorder=5, animated=True)) for ax in axes
            ]
            self.fig, self.canvas = f.fig, f.fig.canvas
            self.canvas.draw()
            self.background = self.canvas.copy_from_bbox(self.fig.bbox)
        self.title = f"trajectory {record.trajectory_id}  ·  env {env} of {record.num_envs}"

    def frame(self, step: int) -> np.ndarray:
        """The video frame of ``step``: ``uint8`` ``[height, width, 3]`` (RGB)."""
        self.canvas.restore_region(self.background)
        done = "" if self.ends is None else f"  ·  done: {'yes' if self.ends[step] else 'no'}"
        total = self.column.record.num_steps
        self.label.set_text(f"{self.title}  ·  step {step} of {total}  ·  reward {self.rewards[step]}{done}")
        self.fig.draw_artist(self.label)
        for ax, cursor in self.cursors:
            cursor.set_xdata([step, step])
            ax.draw_artist(cursor)
        image = np.asarray(self.canvas.buffer_rgba())[..., :3].copy()  # the renderer's buffer is reused
        for (_, frames), (y, x, h, w) in zip(self.cameras, self.boxes, strict=True):
            image[y : y + h, x : x + w] = _nearest(frames[step], (h, w))
        return image


def render_video(
    path: str,
    trajectory_id: int,
    out: str,
    *,
    env: int = 0,
    fps: float = 10.0,
    cameras: Sequence[str] | None = None,
    codec: str | None = None,
    crf: int | None = None,
) -> VideoResult:
    """Play one env column of one trajectory of a buffer directory as a video, one frame per step.

    Each frame (``uint8`` RGB, the same size for every step; width and height even) shows, top
    down: a label (trajectory, env, step, reward, done), the facts of :func:`render_trajectory`'s
    subtitle, the step's camera images side by side (small images scaled up by a whole factor
    to about 240 pixels high, nearest neighbour; over 480 pixels scaled down to 480), and the
    panels of :func:`render_trajectory` (states, actions, rewards, flags over the whole
    trajectory) with a red cursor at the step. Without cameras the frames show the plots only.
    Frames are rendered and encoded one at a time.

    Args:
        path, trajectory_id, env, cameras: as for :func:`render_trajectory`.
        out: the video file to write; its suffix picks the container and the default codec
            (``.mp4``: H.264, ``.gif``, ``.mkv``, ``.webm``; see :mod:`.video`). Its directory
            is created; an existing file is replaced atomically.
        fps: frames (steps) per second.
        codec, crf: passed to :func:`.video.write_video` (``None``: the suffix's default codec,
            the encoder's default quality).

    Returns:
        A :class:`VideoResult`.

    Raises:
        InvalidArgumentError: no such trajectory (the message lists the ids present), ``env``
            out of range, an unknown suffix, a bad ``fps``, ``codec`` or ``crf``.
        BufferNotFoundError, CorruptBufferError: the directory is missing or damaged.
        MissingDependencyError: matplotlib, pillow or PyAV is missing.
    """
    video.video_suffix(out)
    out = os.path.abspath(os.fspath(out))
    fps = video.check_fps(fps)
    _import_matplotlib()
    video.require_pyav()
    column = _read_env_column(path, trajectory_id, env, cameras)
    steps = range(column.record.num_steps)
    shown = [(camera, _rgb8(column.frames(camera, steps))) for camera in column.cameras]
    movie = _Movie(column, env, shown)
    video.write_video((movie.frame(t) for t in steps), out, fps, codec=codec, crf=crf)
    return VideoResult(
        out=out,
        width=movie.width,
        height=movie.height,
        frames=len(steps),
        fps=fps,
        fields=movie.fields,
        cameras=[camera.name for camera, _ in shown],
        camera_boxes=list(movie.boxes),
    )
