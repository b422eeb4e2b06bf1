"""Video files of RGB frames, written and read one frame at a time (PyAV, the ``video`` extra).

:func:`write_video` encodes an iterable of frames (``uint8`` arrays ``[H, W, 3]``, RGB, all of
one shape) into a video file; :func:`read_video` decodes one back, frame by frame, and
:func:`video_info` reports a file's properties (frames per second, frame count, size, codec,
pixel format). Neither keeps more than one frame in memory: a generator of frames of any length
can be written.

The container, and the codec when none is given, follow from the file name's suffix:

========  ===========  ==============  =================
suffix    container    default codec   default pix_fmt
========  ===========  ==============  =================
``.mp4``  MP4          ``libx264``     ``yuv420p``
``.mkv``  Matroska     ``libx264``     ``yuv420p``
``.webm`` WebM         ``libvpx-vp9``  ``yuv420p``
``.gif``  GIF          ``gif``         ``pal8``
========  ===========  ==============  =================

``codec="libsvtav1"`` (AV1 in ``.mp4``, ``.mkv`` or ``.webm``; pixel format ``yuv420p``) is
what LeRobot datasets use by default. Other encoders of the installed FFmpeg can be named too
(e.g. ``mpeg4``).

* **Odd sizes.** H.264 (``libx264``) in a chroma-subsampled pixel format (``yuv420p``,
  ``yuv422p``) needs an even width and height: frames of odd size are padded by repeating
  their last column and/or row, so the video is ``[H + H % 2, W + W % 2]`` and the original
  frame is its top-left ``[:H, :W]``. The other codecs keep the size as it is.
* **GIF** frames get a palette of up to 256 colours each, computed from the frame itself
  (FFmpeg's ``palettegen``/``paletteuse`` filters). GIF stores frame durations in
  hundredths of a second: ``fps`` is rounded to ``100 / round(100 / fps)`` (10, 20, 25, 50
  are exact), and players slow down frames shorter than 2/100 s, so keep ``fps <= 50``.
* **Quality.** ``crf`` (the constant rate factor: lower is better and bigger) applies to
  ``libx264`` (0..51, its default 23), ``libsvtav1`` (0..63, default 35) and ``libvpx-vp9``
  (0..63); ``None`` keeps the encoder's default. The codecs are lossy (GIF by its palette).

The file is written atomically (a temporary file in the same directory, fsync'd, renamed, and
the directory fsync'd: :func:`~rlinf_replay_buffer.fsio.atomic_file`): ``path`` is either the
complete old file or the complete new one; if encoding fails it is untouched. PyAV is imported
only when a video is written or read; without it the calls raise
:class:`~rlinf_replay_buffer.errors.MissingDependencyError` naming ``pip install
rlinf-replay-buffer[video]``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from fractions import Fraction
from typing import Any

import numpy as np

from ..errors import BufferNotFoundError, CorruptBufferError, InvalidArgumentError, MissingDependencyError
from ..fsio import atomic_file, make_dirs
from ..validate import check_float, check_int

__all__ = [
    "CONTAINERS",
    "INSTALL_HINT",
    "check_fps",
    "read_video",
    "require_pyav",
    "video_info",
    "video_suffix",
    "write_video",
]

INSTALL_HINT = "pip install rlinf-replay-buffer[video]"

#: file suffix -> (FFmpeg container format, default codec)
CONTAINERS: dict[str, tuple[str, str]] = {
    ".mp4": ("mp4", "libx264"),
    ".mkv": ("matroska", "libx264"),
    ".webm": ("webm", "libvpx-vp9"),
    ".gif": ("gif", "gif"),
}
_DEFAULT_PIX_FMT = {"gif": "pal8"}  # every other codec: yuv420p
_CRF_CODECS = frozenset({"libx264", "libsvtav1", "libvpx-vp9"})
_FULL_CHROMA = ("yuv444", "yuvj444", "gray", "rgb", "bgr", "gbr")  # libx264 formats without an even-size rule
_MAX_FPS = 1000.0


def _import_av() -> Any:
    """The ``av`` module, or a clear error naming the extra to install."""
    try:
        import av
    except ImportError as exc:
        raise MissingDependencyError(
            f"writing and reading videos needs PyAV, which is not installed ({exc}); install the "
            f"video extra: {INSTALL_HINT}"
        ) from exc
    return av


def require_pyav() -> None:
    """Check that PyAV can be imported (before long work that ends in writing a video).

    Raises:
        MissingDependencyError: PyAV is not installed.
    """
    _import_av()


def check_fps(fps: Any) -> float:
    """``fps`` (frames per second) as a float in ``(0, 1000]``.

    Raises:
        InvalidArgumentError: it is not a real number in that range.
    """
    fps = check_float("fps", fps, 0.0, _MAX_FPS)
    if fps <= 0:
        raise InvalidArgumentError(f"fps must be > 0 (frames per second), got {fps!r}")
    return fps


def video_suffix(path: str) -> str:
    """The lower-case suffix of ``path`` if it is one of :data:`CONTAINERS`' (``".mp4"``, ...).

    Raises:
        InvalidArgumentError: ``path`` is not a string or path, or has another suffix.
    """
    if not isinstance(path, str | os.PathLike) or not os.fspath(path):
        raise InvalidArgumentError(f"a video path must be a non-empty file path, got {path!r}")
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in CONTAINERS:
        raise InvalidArgumentError(
            f"{os.fspath(path)!r}: unknown video suffix {suffix or '(none)'!r}; use one of "
            + ", ".join(CONTAINERS)
        )
    return suffix


def _check_frame(frame: Any, shape: tuple[int, ...] | None, index: int) -> np.ndarray:
    """``frame`` as a C-contiguous ``uint8`` array ``[H, W, 3]`` (of ``shape`` if given)."""
    a = np.asarray(frame)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or min(a.shape[:2]) < 1:
        raise InvalidArgumentError(
            f"frame {index} must be a uint8 array [H, W, 3] (RGB), got {a.dtype} {list(a.shape)}"
        )
    if shape is not None and a.shape != shape:
        raise InvalidArgumentError(
            f"frame {index} is {list(a.shape)} but frame 0 was {list(shape)}: all frames of a video "
            "have one size"
        )
    return np.ascontiguousarray(a)


def _needs_even_size(codec: str, pix_fmt: str) -> bool:
    return codec == "libx264" and not pix_fmt.startswith(_FULL_CHROMA)


class _Encoder:
    """One video stream of an open output container, fed one RGB frame at a time."""

    def __init__(
        self, av: Any, container: Any, codec: str, pix_fmt: str, crf: int | None, rate: Fraction, size: Any
    ) -> None:
        height, width = size
        self.av, self.container = av, container
        self.pad = (height % 2, width % 2) if _needs_even_size(codec, pix_fmt) else (0, 0)
        self.stream = container.add_stream(codec, rate=rate)
        self.stream.width, self.stream.height = width + self.pad[1], height + self.pad[0]
        self.stream.pix_fmt = pix_fmt
        if crf is not None:
            self.stream.options = {"crf": str(crf), **({"b": "0"} if codec == "libvpx-vp9" else {})}
        self.palette = self._palette_graph(rate, width, height) if pix_fmt == "pal8" else None
        self.count = 0

    def _palette_graph(self, rate: Fraction, width: int, height: int) -> Any:
        """A filter graph giving each RGB frame its own 256-colour palette (``pal8``)."""
        graph = self.av.filter.Graph()
        source = graph.add_buffer(width=width, height=height, format="rgb24", time_base=1 / rate)
        split = graph.add("split")
        generate = graph.add("palettegen", "stats_mode=single")
        use = graph.add("paletteuse", "new=1")
        source.link_to(split)
        split.link_to(generate, 0, 0)
        split.link_to(use, 1, 0)
        generate.link_to(use, 0, 1)
        use.link_to(graph.add("buffersink"))
        graph.configure()
        return graph

    def add(self, frame: np.ndarray) -> None:
        if any(self.pad):
            frame = np.pad(frame, ((0, self.pad[0]), (0, self.pad[1]), (0, 0)), mode="edge")
        video_frame = self.av.VideoFrame.from_ndarray(frame, format="rgb24")
        video_frame.pts = self.count
        self.count += 1
        if self.palette is None:
            self._encode(video_frame)
            return
        self.palette.push(video_frame)
        self._drain_palette()

    def _drain_palette(self) -> None:
        while True:
            try:
                self._encode(self.palette.pull())
            except (self.av.BlockingIOError, self.av.EOFError):
                return

    def _encode(self, frame: Any) -> None:
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def finish(self) -> None:
        if self.palette is not None:
            self.palette.push(None)
            self._drain_palette()
        self._encode(None)


def write_video(
    frames: Iterable[np.ndarray],
    path: str,
    fps: float,
    codec: str | None = None,
    pix_fmt: str | None = None,
    crf: int | None = None,
) -> None:
    """Encode ``frames`` into the video file ``path``, one frame at a time, atomically.

    Args:
        frames: ``uint8`` arrays ``[H, W, 3]`` (RGB), all of one shape; any iterable (a
            generator is consumed once, frame by frame, and never held whole).
        path: the file to write; its suffix (``.mp4``, ``.mkv``, ``.webm``, ``.gif``) picks the
            container. Its directory is created if missing; an existing file is replaced.
        fps: frames per second (``0 < fps <= 1000``; see the module docstring for GIF).
        codec: an FFmpeg encoder name (``"libx264"``, ``"libsvtav1"``, ``"libvpx-vp9"``,
            ``"gif"``, ...); ``None``: the suffix's default.
        pix_fmt: the stored pixel format (``"yuv420p"``, ...); ``None``: ``pal8`` for GIF,
            ``yuv420p`` otherwise.
        crf: constant rate factor (``libx264``, ``libsvtav1``, ``libvpx-vp9`` only); ``None``:
            the encoder's default.

    Raises:
        InvalidArgumentError: an unknown suffix or encoder, no frames, a frame that is not
            ``uint8 [H, W, 3]`` or differs in shape from the first, a bad ``fps`` or ``crf``,
            or a codec/pixel format/container combination FFmpeg refuses. ``path`` is then
            untouched.
        MissingDependencyError: PyAV is not installed.
    """
    av = _import_av()
    suffix = video_suffix(path)
    path = os.path.abspath(os.fspath(path))
    fps = check_fps(fps)
    container_format, default_codec = CONTAINERS[suffix]
    codec = default_codec if codec is None else codec
    if not isinstance(codec, str):
        raise InvalidArgumentError(f"codec must be an FFmpeg encoder name or None, got {codec!r}")
    try:
        av.codec.Codec(codec, "w")
    except Exception as exc:  # PyAV raises its UnknownCodecError (a ValueError) or FFmpeg errors
        raise InvalidArgumentError(f"no video encoder named {codec!r} in this FFmpeg ({exc})") from None
    pix_fmt = _DEFAULT_PIX_FMT.get(codec, "yuv420p") if pix_fmt is None else pix_fmt
    if not isinstance(pix_fmt, str):
        raise InvalidArgumentError(f"pix_fmt must be a pixel format name or None, got {pix_fmt!r}")
    crf = check_int("crf", crf, 0, 63, allow_none=True)
    if crf is not None and codec not in _CRF_CODECS:
        raise InvalidArgumentError(f"crf applies to {', '.join(sorted(_CRF_CODECS))}, not to {codec!r}")
    if os.path.isdir(path):
        raise InvalidArgumentError(f"{path!r} is a directory; give a video file name")
    rate = Fraction(fps).limit_denominator(1001)
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise InvalidArgumentError(f"{path}: no frames to write (a video needs at least one)")
    first = _check_frame(first, None, 0)
    make_dirs(os.path.dirname(path))
    with atomic_file(path) as f, av.open(f, "w", format=container_format) as container:
        try:
            encoder = _Encoder(av, container, codec, pix_fmt, crf, rate, first.shape[:2])
            encoder.add(first)
        except (av.FFmpegError, ValueError) as exc:
            raise InvalidArgumentError(
                f"{path}: cannot encode {first.shape[1]}x{first.shape[0]} frames with {codec} "
                f"({pix_fmt}) into {suffix} ({exc})"
            ) from exc
        for index, frame in enumerate(it, 1):
            encoder.add(_check_frame(frame, first.shape, index))
        encoder.finish()


def _input(av: Any, path: str) -> tuple[Any, Any]:
    """``(container, its first video stream)`` of an existing video file."""
    try:
        container = av.open(path)
    except av.FFmpegError as exc:
        raise CorruptBufferError(f"{path}: not a readable video file ({exc})") from None
    if not container.streams.video:
        container.close()
        raise CorruptBufferError(f"{path}: the file holds no video stream")
    return container, container.streams.video[0]


def _existing(path: Any) -> str:
    if not isinstance(path, str | os.PathLike) or not os.fspath(path):
        raise InvalidArgumentError(f"a video path must be a non-empty file path, got {path!r}")
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise BufferNotFoundError(f"{path}: no such video file")
    return path


def read_video(path: str) -> Iterator[np.ndarray]:
    """Decode the video file ``path`` frame by frame.

    Yields:
        ``uint8`` arrays ``[H, W, 3]`` (RGB), one per frame, in display order. Only the frame
        being yielded is held; the file is closed when the iterator is exhausted or closed.

    Raises:
        BufferNotFoundError: ``path`` does not exist (raised by the call itself).
        CorruptBufferError: the file is not a video or cannot be decoded (raised while
            iterating).
        MissingDependencyError: PyAV is not installed.
    """
    av = _import_av()
    return _decode(av, _existing(path))


def _decode(av: Any, path: str) -> Iterator[np.ndarray]:
    container, stream = _input(av, path)
    with container:
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except av.FFmpegError as exc:
            raise CorruptBufferError(f"{path}: cannot decode the video ({exc})") from None


def video_info(path: str) -> dict[str, Any]:
    """The properties of the video file ``path`` (its first video stream).

    Returns:
        A dict with ``fps`` (float, frames per second), ``frames`` (int, the frame count),
        ``width`` and ``height`` (pixels of the stored frames), ``channels`` (3: frames decode
        to RGB), ``codec`` (FFmpeg's codec name: ``"h264"``, ``"av1"``, ``"vp9"``, ``"gif"``,
        ...), ``pix_fmt`` (the decoded pixel format, e.g. ``"yuv420p"``), ``is_depth_map``
        (False) and ``has_audio`` (whether the file also holds an audio stream): what
        LeRobot's ``info.json`` records per camera as ``video.fps``, ``video.height``, ...

    Raises:
        BufferNotFoundError: ``path`` does not exist.
        CorruptBufferError: the file is not a readable video.
        MissingDependencyError: PyAV is not installed.
    """
    av = _import_av()
    path = _existing(path)
    container, stream = _input(av, path)
    with container:
        context = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        frames = stream.frames
        if not frames:  # the container keeps no count (Matroska, WebM): count the packets
            try:
                frames = sum(1 for packet in container.demux(stream) if packet.size)
            except av.FFmpegError as exc:
                raise CorruptBufferError(f"{path}: cannot read the video's packets ({exc})") from None
        return {
            "fps": float(rate) if rate else 0.0,
            "frames": int(frames),
            "width": int(context.width),
            "height": int(context.height),
            "channels": 3,
            "codec": context.codec.canonical_name,
            "pix_fmt": context.pix_fmt,
            "is_depth_map": False,
            "has_audio": bool(container.streams.audio),
        }
