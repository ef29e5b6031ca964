"""Reading video files as a stream of RGB frames.

Every way a user's file can be unusable (missing, a directory, not a container FFmpeg knows,
a still image, audio only, no decodable frame, damaged mid-stream) ends as an
:class:`iwcodec.errors.InputError` naming the file; no ``av`` exception escapes this module.
Frames are decoded one at a time, so memory does not grow with the clip's length.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from iwcodec.errors import InputError

# Demuxers that turn a single picture into a one-frame "video": a still image is not a clip.
_IMAGE_DEMUXERS = ("image2", "_pipe")
# Frame sizes past this are not camera video; refusing them bounds the memory one frame takes.
MAX_SIDE = 8192
_FALLBACK_FPS = Fraction(25)


@dataclass(frozen=True)
class VideoInfo:
    """What is known about a clip before decoding it.

    ``width`` / ``height`` are the displayed size (after rotation metadata is applied);
    ``frame_count`` is the container's claim (0 when it does not say), not a promise.
    """

    path: str
    width: int
    height: int
    fps: Fraction
    frame_count: int
    rotation: int  # degrees counter-clockwise applied to decoded pictures, one of 0/90/180/270


@dataclass(frozen=True)
class VideoFrame:
    """One decoded picture: ``rgb`` uint8 (H, W, 3), ``pts`` in seconds from the clip start."""

    index: int
    pts: float
    rgb: np.ndarray  # (H, W, 3) uint8


def _open_container(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a video file")
    if not path.is_file():
        raise InputError(
            f"{path}: is not a regular file (a device, pipe or socket): the encoder reads its "
            "input twice, so save the video to a file first"
        )
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    try:
        return av.open(str(path), mode="r")
    except av.FFmpegError as exc:
        raise InputError(
            f"{path}: not a video file FFmpeg can read, or truncated ({exc.strerror or exc})"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: cannot be opened ({exc})") from None


def _video_stream(
    container: av.container.InputContainer, path: Path
) -> av.video.stream.VideoStream:
    fmt = container.format.name
    if any(tag in fmt for tag in _IMAGE_DEMUXERS):
        raise InputError(f"{path}: is a still image ({fmt}), not a video")
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        raise InputError(f"{path}: has no video stream (found: {', '.join(kinds)})")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if ctx.width > MAX_SIDE or ctx.height > MAX_SIDE:
        raise InputError(f"{path}: frame size {ctx.width}x{ctx.height} exceeds {MAX_SIDE} px")
    return stream


def _stream_fps(stream: av.video.stream.VideoStream) -> Fraction:
    """Nominal frame rate, falling back to duration/frames, then to 25 fps when the
    container gives nothing usable (rates of 0 or > 1000 happen in broken muxes)."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and 0 < rate <= 1000:
            return Fraction(rate).limit_denominator(1_000_000)
    if stream.frames and stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
        if seconds > 0:
            return Fraction(stream.frames / seconds).limit_denominator(1001)
    return _FALLBACK_FPS


def _quarter_turns(degrees: float) -> int:
    """Display-matrix rotation (degrees counter-clockwise, FFmpeg's av_display_rotation_get
    convention) to a count of ``np.rot90`` quarter turns; non-right angles are ignored."""
    if not math.isfinite(degrees):
        return 0
    turns = degrees / 90.0
    if abs(turns - round(turns)) > 0.05:
        return 0
    return int(round(turns)) % 4


def rotate_picture(rgb: np.ndarray, degrees: float) -> np.ndarray:
    """Apply display-matrix rotation so the picture is upright as players show it.

    FFmpeg reports phone portrait video ("rotate=90" tag) as -90 here; rotating
    counter-clockwise by -90 means a quarter turn clockwise.
    """
    k = _quarter_turns(degrees)
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


def _first_rotation(container: av.container.InputContainer, path: Path) -> tuple[int, bool]:
    """Rotation of the first decodable frame, and whether there was one at all."""
    for frame in _decode(container, path):
        return _quarter_turns(frame.rotation) * 90, True
    return 0, False


def _decode(container: av.container.InputContainer, path: Path) -> Iterator[av.VideoFrame]:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    try:
        yield from container.decode(stream)
    except av.FFmpegError as exc:
        raise InputError(f"{path}: the video data is damaged ({exc.strerror or exc})") from None
    except (MemoryError, ValueError) as exc:
        raise InputError(f"{path}: cannot be decoded ({exc})") from None


def probe_video(path: str | Path) -> VideoInfo:
    """Open ``path``, check that it holds at least one decodable video frame, and describe it.

    Raises InputError for a missing/empty file, a non-video, or a clip without frames.
    """
    path = Path(path)
    container = _open_container(path)
    try:
        stream = _video_stream(container, path)
        fps = _stream_fps(stream)
        width, height = stream.codec_context.width, stream.codec_context.height
        frame_count = int(stream.frames or 0)
        rotation, any_frame = _first_rotation(container, path)
        if not any_frame:
            raise InputError(f"{path}: contains no decodable video frame")
    finally:
        container.close()
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(str(path), width, height, fps, frame_count, rotation)


def iter_frames(path: str | Path, max_frames: int | None = None) -> Iterator[VideoFrame]:
    """Decode ``path`` frame by frame as upright RGB uint8 (H, W, 3) with pts in seconds.

    pts come from the stream's timestamps (relative to the first frame), or from the
    frame index and nominal fps where the container has none. Raises InputError when the
    file yields no frame at all or breaks while decoding; only one frame is held at a time.
    """
    path = Path(path)
    container = _open_container(path)
    try:
        stream = _video_stream(container, path)
        fps = _stream_fps(stream)
        t0: float | None = None
        count = 0
        for frame in _decode(container, path):
            if max_frames is not None and count >= max_frames:
                break
            if frame.pts is not None and frame.time_base is not None:
                seconds = float(frame.pts * frame.time_base)
                t0 = seconds if t0 is None else t0
                pts = seconds - t0
            else:
                pts = count / float(fps)
            try:
                rgb = frame.to_ndarray(format="rgb24")
            except (av.FFmpegError, ValueError) as exc:
                raise InputError(f"{path}: frame {count} cannot be converted ({exc})") from None
            yield VideoFrame(count, pts, rotate_picture(rgb, frame.rotation))
            count += 1
        if count == 0:
            raise InputError(f"{path}: contains no decodable video frame")
    finally:
        container.close()
