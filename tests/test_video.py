"""Video files: frames written one at a time come back with their count, size, rate and colours."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from rlinf_replay_buffer.errors import (
    BufferNotFoundError,
    CorruptBufferError,
    InvalidArgumentError,
    MissingDependencyError,
)
from rlinf_replay_buffer.tools.video import read_video, video_info, write_video

pytest.importorskip("av")

N = 6


def smooth_frames(n: int = N, height: int = 48, width: int = 64):
    """A generator of ``n`` smooth RGB frames that change from frame to frame."""
    y, x = np.mgrid[0:height, 0:width]
    for i in range(n):
        red = 128 + 90 * np.sin((x + 4 * i) / 11)
        green = 128 + 90 * np.cos((y + 3 * i) / 9)
        blue = np.full_like(red, 40 + 25 * i)
        yield np.stack([red, green, blue], axis=-1).astype(np.uint8)


def mean_abs_error(got: list[np.ndarray], height: int, width: int) -> float:
    expected = list(smooth_frames(len(got), height, width))
    return max(
        float(np.abs(g[:height, :width].astype(np.int16) - e.astype(np.int16)).mean())
        for g, e in zip(got, expected, strict=True)
    )


@pytest.mark.parametrize(
    ("name", "codec", "info_codec"),
    [("clip.mp4", None, "h264"), ("clip.gif", None, "gif"), ("clip.mp4", "libsvtav1", "av1")],
)
def test_frames_round_trip_with_their_count_size_rate_and_colours(tmp_path, name, codec, info_codec):
    path = str(tmp_path / name)
    write_video(smooth_frames(), path, fps=10, codec=codec)
    info = video_info(path)
    assert (info["frames"], info["fps"], info["width"], info["height"]) == (N, 10.0, 64, 48)
    assert info["codec"] == info_codec
    assert info["channels"] == 3 and info["is_depth_map"] is False and info["has_audio"] is False
    got = list(read_video(path))
    assert len(got) == N
    assert all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in got)
    assert mean_abs_error(got, 48, 64) < 8


def test_av1_stores_yuv420p_as_lerobot_does(tmp_path):
    path = str(tmp_path / "clip.mp4")
    write_video(smooth_frames(), path, fps=30, codec="libsvtav1", pix_fmt="yuv420p", crf=30)
    info = video_info(path)
    assert (info["codec"], info["pix_fmt"], info["fps"], info["frames"]) == ("av1", "yuv420p", 30.0, N)


@pytest.mark.parametrize("name", ["clip.webm", "clip.mkv"])
def test_webm_and_mkv_report_their_frame_count(tmp_path, name):
    path = str(tmp_path / name)
    write_video(smooth_frames(), path, fps=5)
    assert video_info(path)["frames"] == N
    assert mean_abs_error(list(read_video(path)), 48, 64) < 8


def test_odd_sized_mp4_frames_are_padded_to_even_at_the_bottom_and_right(tmp_path):
    path = str(tmp_path / "odd.mp4")
    write_video(smooth_frames(height=37, width=51), path, fps=10)
    info = video_info(path)
    assert (info["width"], info["height"]) == (52, 38)
    got = list(read_video(path))
    assert got[0].shape == (38, 52, 3)
    assert mean_abs_error(got, 37, 51) < 8


@pytest.mark.parametrize(("name", "codec"), [("odd.gif", None), ("odd.mp4", "libsvtav1"), ("odd.webm", None)])
def test_odd_sizes_keep_their_size_in_other_codecs(tmp_path, name, codec):
    path = str(tmp_path / name)
    write_video(smooth_frames(height=37, width=51), path, fps=10, codec=codec)
    got = list(read_video(path))
    assert got[0].shape == (37, 51, 3)
    assert mean_abs_error(got, 37, 51) < 8


def test_a_generator_is_consumed_frame_by_frame(tmp_path):
    pulled = []

    def frames():
        for i, frame in enumerate(smooth_frames(40)):
            pulled.append(i)
            yield frame

    path = str(tmp_path / "long.mp4")
    write_video(frames(), path, fps=25)
    assert pulled == list(range(40))
    reader = read_video(path)
    first = next(reader)
    assert first.shape == (48, 64, 3)
    assert sum(1 for _ in reader) == 39
    assert video_info(path)["frames"] == 40


def test_an_existing_file_is_replaced_and_no_temporary_file_is_left(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"old")
    write_video(smooth_frames(3), str(path), fps=10)
    assert video_info(str(path))["frames"] == 3
    assert os.listdir(tmp_path) == ["clip.mp4"]


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"old")

    def frames():
        yield np.zeros((8, 8, 3), np.uint8)
        yield np.zeros((8, 10, 3), np.uint8)

    with pytest.raises(InvalidArgumentError, match=r"frame 1 is \[8, 10, 3\] but frame 0 was \[8, 8, 3\]"):
        write_video(frames(), str(path), fps=10)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["clip.mp4"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"path": "clip.avi"}, r"unknown video suffix '\.avi'.*\.mp4"),
        ({"path": "clip"}, r"unknown video suffix '\(none\)'"),
        ({"fps": 0}, r"fps must be > 0"),
        ({"fps": float("nan")}, r"fps must be"),
        ({"codec": "no-such-codec"}, r"no video encoder named 'no-such-codec'"),
        ({"codec": "gif"}, r"cannot encode 64x48 frames with gif \(pal8\) into \.mp4"),
        ({"crf": 23, "codec": "mpeg4"}, r"crf applies to .* not to 'mpeg4'"),
        ({"crf": -1}, r"crf must be an int in \[0, 63\]"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, kwargs, match):
    args = {"path": "clip.mp4", "fps": 10, **kwargs}
    args["path"] = str(tmp_path / args["path"])
    with pytest.raises(InvalidArgumentError, match=match):
        write_video(smooth_frames(), **args)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (np.zeros((8, 8), np.uint8), r"frame 0 must be a uint8 array \[H, W, 3\].*got uint8 \[8, 8\]"),
        (np.zeros((8, 8, 4), np.uint8), r"got uint8 \[8, 8, 4\]"),
        (np.zeros((8, 8, 3), np.float32), r"got float32 \[8, 8, 3\]"),
    ],
)
def test_frames_must_be_uint8_rgb(tmp_path, frame, match):
    with pytest.raises(InvalidArgumentError, match=match):
        write_video([frame], str(tmp_path / "clip.mp4"), fps=10)


def test_no_frames_is_an_error(tmp_path):
    with pytest.raises(InvalidArgumentError, match=r"no frames to write"):
        write_video([], str(tmp_path / "clip.mp4"), fps=10)


def test_reading_a_missing_or_broken_file_names_it(tmp_path):
    with pytest.raises(BufferNotFoundError, match=r"missing\.mp4: no such video file"):
        read_video(str(tmp_path / "missing.mp4"))
    with pytest.raises(BufferNotFoundError, match=r"no such video file"):
        video_info(str(tmp_path / "missing.mp4"))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with pytest.raises(CorruptBufferError, match=r"broken\.mp4: not a readable video file"):
        video_info(str(broken))
    with pytest.raises(CorruptBufferError, match=r"broken\.mp4: not a readable video file"):
        next(read_video(str(broken)))


def test_missing_pyav_names_the_video_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(MissingDependencyError, match=r"needs PyAV.*pip install rlinf-replay-buffer\[video\]"):
        write_video(smooth_frames(), str(tmp_path / "clip.mp4"), fps=10)
    with pytest.raises(ImportError, match=r"rlinf-replay-buffer\[video\]"):
        read_video(str(tmp_path / "clip.mp4"))
    with pytest.raises(MissingDependencyError, match=r"rlinf-replay-buffer\[video\]"):
        video_info(str(tmp_path / "clip.mp4"))
    assert os.listdir(tmp_path) == []
