"""Writing decoded frames to a video file through PyAV.

The output is constant frame rate at exactly the stream's rate (a fraction, e.g. 30000/1001),
one picture per decoded frame, so a player shows the clip at its original speed and a reader
counts the same frames the stream carried. A stream that carries its own frame times (a
variable-rate input, docs/bitstream.md 3.3) is written with ``timestamps=True``: every frame
at its own time, in ticks of 1/90000 s from the first frame.

Formats, chosen by the file name's extension:

| extension | codec | use |
|---|---|---|
| ``.mp4``, ``.mov`` | H.264 (libx264, CRF 12, yuv420p) | plays everywhere; near transparent |
| ``.mkv`` | FFV1 (RGB, lossless) | exact pixels, for evaluation |

The file is written under a temporary name next to the target and renamed only by
:meth:`VideoWriter.close` after the last frame was written, so a decode that fails never
leaves a half-written file that looks complete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from bitstream.frame import TIMESCALE
from iwcodec.errors import IWCodecError


@dataclass(frozen=True)
class OutputFormat:
    """How one kind of output file is written."""

    container: str  # FFmpeg muxer name
    codec: str  # encoder name
    pix_fmt: str
    options: dict[str, str]


# CRF 12 keeps the H.264 step below the visible level at 256 px (it is a viewing copy: the
# reconstruction's own error is far larger); yuv420p because 4:4:4 H.264 does not play in
# browsers or QuickTime.
H264 = OutputFormat("mp4", "libx264", "yuv420p", {"crf": "12", "preset": "medium"})
FFV1 = OutputFormat("matroska", "ffv1", "bgr0", {"level": "3"})
FORMATS = {
    ".mp4": H264,
    ".mov": OutputFormat("mov", H264.codec, H264.pix_fmt, H264.options),
    ".mkv": FFV1,
}


def output_format(path: str | Path) -> OutputFormat:
    """The format for ``path``'s extension; IWCodecError naming the supported ones otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise IWCodecError(
            f"{path}: cannot write {suffix or 'files without an extension'}; "
            f"use one of {', '.join(FORMATS)} (.mkv is lossless)"
        )
    return FORMATS[suffix]


def temporary_path(path: Path) -> Path:
    """Where the file is written until it is complete: same folder, so the rename is atomic."""
    return path.with_name(f".{path.name}.part")


class VideoWriter:
    """Writes RGB uint8 (H, W, 3) frames at a constant rate; use as a context manager.

    Leaving the ``with`` block normally finishes the file and moves it into place; leaving it
    through an exception deletes the temporary file. ``close()`` / ``abort()`` do the same
    explicitly.
    """

    def __init__(
        self, path: str | Path, width: int, height: int, fps: Fraction, timestamps: bool = False
    ) -> None:
        self.path = Path(path)
        self.format = output_format(self.path)
        fps = Fraction(fps)
        if fps <= 0:
            raise IWCodecError(f"{self.path}: frame rate must be positive, got {fps}")
        if self.format.pix_fmt == "yuv420p" and (width % 2 or height % 2):
            raise IWCodecError(
                f"{self.path}: H.264 needs even frame sizes, got {width}x{height}; use .mkv"
            )
        if self.path.is_dir():
            raise IWCodecError(f"{self.path}: is a folder; name a video file to write")
        if not self.path.parent.is_dir():
            raise IWCodecError(f"{self.path}: the folder {self.path.parent} does not exist")
        self.width, self.height, self.fps = width, height, fps
        self.frames = 0
        self._tmp = temporary_path(self.path)
        try:
            self._container = av.open(str(self._tmp), mode="w", format=self.format.container)
        except (av.FFmpegError, OSError) as exc:
            raise IWCodecError(f"{self.path}: cannot be written ({exc})") from None
        stream = self._container.add_stream(self.format.codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = self.format.pix_fmt
        stream.options = dict(self.format.options)
        # One tick per frame: pts = frame number gives an exactly constant rate; with
        # timestamps, ticks of 1/90000 s (bitstream.TIMESCALE).
        self.timestamps = timestamps
        tick = Fraction(1, TIMESCALE) if timestamps else Fraction(fps.denominator, fps.numerator)
        stream.codec_context.time_base = tick
        if timestamps:
            stream.time_base = tick
        self._stream = stream
        self._first_pts: int | None = None
        self._last_pts = -1
        self._open = True

    def write(self, rgb: np.ndarray, pts: int | None = None) -> None:
        """Append one frame, (H, W, 3) uint8 RGB; ``pts`` (ticks of 1/90000 s) is its time when
        the writer keeps timestamps (a time not after the previous frame's moves one tick on)."""
        if not self._open:
            raise IWCodecError(f"{self.path}: writer is already closed")
        if rgb.shape != (self.height, self.width, 3) or rgb.dtype != np.uint8:
            raise ValueError(
                f"frame must be ({self.height}, {self.width}, 3) uint8, got {rgb.shape} {rgb.dtype}"
            )
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames
        if self.timestamps:
            if pts is None:
                raise ValueError("this writer keeps timestamps: every frame needs its pts")
            if self._first_pts is None:
                self._first_pts = pts
            frame.pts = self._last_pts = max(pts - self._first_pts, self._last_pts + 1)
        self._mux(self._stream.encode(frame))
        self.frames += 1

    def _mux(self, packets: list[av.Packet]) -> None:
        try:
            for packet in packets:
                self._container.mux(packet)
        except (av.FFmpegError, OSError) as exc:
            self.abort()
            raise IWCodecError(f"{self.path}: writing failed ({exc})") from None

    def close(self) -> Path:
        """Flush the encoder, finish the file and move it to its final name."""
        if not self._open:
            return self.path
        self._mux(self._stream.encode(None))
        self._container.close()
        self._open = False
        try:
            os.replace(self._tmp, self.path)
        except OSError as exc:  # e.g. a folder was created under the name meanwhile
            self._tmp.unlink(missing_ok=True)
            raise IWCodecError(f"{self.path}: cannot be written ({exc.strerror or exc})") from None
        return self.path

    def abort(self) -> None:
        """Drop the temporary file; the final name is never created."""
        if self._open:
            self._open = False
            try:
                self._container.close()
            except (av.FFmpegError, OSError):
                pass
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(path: str | Path, frames: np.ndarray, fps: Fraction) -> Path:
    """Write all of ``frames`` (T, H, W, 3) uint8 RGB to ``path`` at ``fps``."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or len(frames) == 0:
        raise ValueError(f"frames must be (T, H, W, 3) with T >= 1, got {frames.shape}")
    with VideoWriter(path, frames.shape[2], frames.shape[1], fps) as writer:
        for rgb in frames:
            writer.write(rgb)
    return Path(path)
