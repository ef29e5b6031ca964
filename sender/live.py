"""Live inputs of a call: video frames at their real pace, and an Opus audio track.

Video (:class:`FileSource`, :class:`CameraSource`) is read on the caller's thread through
``frames(stop)``, a blocking iterator of :class:`CapturedFrame` s stamped with the wall-clock
time they were captured (``time.time()``, so the latency can be measured against the far side's
display time on the same machine). A file plays in a loop at its nominal frame rate; a camera is
opened through PyAV (v4l2 on Linux, avfoundation on macOS, dshow on Windows).

Audio (:class:`OpusTrack`) is an aiortc track that hands out Opus packets encoded here rather
than raw frames: aiortc's own encoder runs at 96 kbit/s with 20 ms packets, whose headers alone
(IP/UDP 28 + RTP/SRTP ~34 bytes, 50 times a second) cost more than the whole keypoint stream.
Speech at ``DEFAULT_AUDIO_BITRATE`` in 60 ms packets is the default (measured in
docs/calls.md). The PCM comes from the file's own audio, a microphone, a test tone or silence.
"""

from __future__ import annotations

import abc
import asyncio
import fractions
import logging
import math
import queue
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from iwcodec.errors import InputError
from sender.video import iter_frames, probe_video

log = logging.getLogger(__name__)

SAMPLE_RATE = 48000
DEFAULT_AUDIO_BITRATE = 16000
DEFAULT_AUDIO_FRAME_MS = 60


@dataclass(frozen=True)
class CapturedFrame:
    """One picture from a live source: ``rgb`` (H, W, 3) uint8, taken at ``t`` (time.time())."""

    index: int
    t: float
    rgb: np.ndarray


class FileSource:
    """A video file played in real time, in a loop (or once with ``loop=False``).

    Frame k of the (looped) playback is due ``k / fps`` after the first one; the iterator
    sleeps until then, so a consumer sees camera-like timing. InputError on an unusable file.
    """

    def __init__(self, path: str | Path, loop: bool = True) -> None:
        self.path = Path(path)
        self.info = probe_video(self.path)
        self.fps: Fraction = self.info.fps
        self.loop = loop

    def frames(self, stop: threading.Event) -> Iterator[CapturedFrame]:
        k = 0
        t0 = time.time()
        period = 1.0 / float(self.fps)
        while not stop.is_set():
            for frame in iter_frames(self.path):
                due = t0 + k * period
                wait = due - time.time()
                if wait > 0 and stop.wait(wait):
                    return
                if stop.is_set():
                    return
                yield CapturedFrame(k, time.time(), frame.rgb)
                k += 1
            if not self.loop:
                return


def _camera_format() -> str:
    if sys.platform.startswith("linux"):
        return "v4l2"
    if sys.platform == "darwin":
        return "avfoundation"
    if sys.platform.startswith("win"):
        return "dshow"
    raise InputError(f"no camera support for {sys.platform} (use --input FILE)")


class CameraSource:
    """A camera through PyAV: ``device`` is e.g. ``/dev/video0`` (Linux), ``0`` (macOS) or
    ``video=NAME`` (Windows). Frames carry the time they were decoded."""

    def __init__(self, device: str, fps: int = 30, size: str | None = "640x480") -> None:
        self.device = device
        self.fps = Fraction(fps)
        options = {"framerate": str(fps)}
        if size:
            options["video_size"] = size
        fmt = _camera_format()
        try:
            self._container = av.open(device, format=fmt, options=options)
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise InputError(f"camera {device!r} cannot be opened ({fmt}: {exc})") from None
        if not self._container.streams.video:
            self._container.close()
            raise InputError(f"camera {device!r} has no video stream")
        rate = self._container.streams.video[0].average_rate
        if rate and 0 < rate <= 240:
            self.fps = Fraction(rate).limit_denominator(1001)

    def frames(self, stop: threading.Event) -> Iterator[CapturedFrame]:
        k = 0
        try:
            for frame in self._container.decode(video=0):
                if stop.is_set():
                    return
                yield CapturedFrame(k, time.time(), frame.to_ndarray(format="rgb24"))
                k += 1
        except av.FFmpegError as exc:
            raise InputError(f"camera {self.device!r} stopped ({exc})") from None
        finally:
            self._container.close()


# --------------------------------------------------------------------------------------- audio


class AudioInput:
    """Mono int16 PCM at 48 kHz, pulled ``read(n)`` samples at a time by the audio track.

    Subclasses that capture or decode fill ``self._chunks`` from a thread; when they run dry
    the track gets silence (and ``underruns`` counts it) rather than waiting.
    """

    name = "audio"

    def __init__(self) -> None:
        self._chunks: queue.Queue[np.ndarray] = queue.Queue(maxsize=64)
        self._pending = np.zeros(0, np.int16)
        self.underruns = 0

    def read(self, n: int) -> np.ndarray:
        parts = [self._pending]
        have = len(self._pending)
        while have < n:
            try:
                chunk = self._chunks.get_nowait()
            except queue.Empty:
                self.underruns += 1
                parts.append(np.zeros(n - have, np.int16))
                have = n
                break
            parts.append(chunk)
            have += len(chunk)
        data = np.concatenate(parts)
        self._pending = data[n:]
        return data[:n]

    def start(self) -> None:
        """Begin capturing (threads start here, not in the constructor)."""

    def close(self) -> None:
        """Stop capturing."""


class SilenceInput(AudioInput):
    name = "silence"

    def read(self, n: int) -> np.ndarray:
        return np.zeros(n, np.int16)


class ToneInput(AudioInput):
    """A sine tone (a test signal that shows the audio path works end to end)."""

    name = "tone"

    def __init__(self, freq: float = 440.0, level: float = 0.1) -> None:
        super().__init__()
        self.freq = freq
        self.level = level
        self._t = 0

    def read(self, n: int) -> np.ndarray:
        t = (self._t + np.arange(n)) / SAMPLE_RATE
        self._t += n
        return (np.sin(2 * math.pi * self.freq * t) * self.level * 32767).astype(np.int16)


class _ThreadedInput(AudioInput, abc.ABC):
    """Runs ``_produce()`` on a thread that fills the chunk queue (blocking when it is full)."""

    def __init__(self) -> None:
        super().__init__()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"audio-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._produce()
        except InputError as exc:
            log.warning("%s: %s; sending silence", self.name, exc)

    @abc.abstractmethod
    def _produce(self) -> None:
        """Decode or capture PCM and ``_put`` it until ``_stop`` is set."""

    def _put(self, pcm: np.ndarray) -> bool:
        while not self._stop.is_set():
            try:
                self._chunks.put(pcm, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)


def _resampler() -> av.AudioResampler:
    return av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)


def _pcm(frames: list[av.AudioFrame]) -> np.ndarray:
    if not frames:
        return np.zeros(0, np.int16)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.int16)


def has_audio(path: str | Path) -> bool:
    try:
        with av.open(str(path)) as c:
            return bool(c.streams.audio)
    except (av.FFmpegError, OSError, ValueError):
        return False


class FileAudioInput(_ThreadedInput):
    """The first audio stream of a file, looped like its video."""

    name = "file audio"

    def __init__(self, path: str | Path, loop: bool = True) -> None:
        super().__init__()
        self.path = Path(path)
        self.loop = loop
        if not has_audio(self.path):
            raise InputError(f"{self.path}: has no audio stream")

    def _produce(self) -> None:
        while not self._stop.is_set():
            try:
                with av.open(str(self.path)) as c:
                    resample = _resampler()
                    for frame in c.decode(audio=0):
                        if not self._put(_pcm(resample.resample(frame))):
                            return
            except av.FFmpegError as exc:
                raise InputError(f"{self.path}: audio cannot be decoded ({exc})") from None
            if not self.loop:
                return


class MicInput(_ThreadedInput):
    """A microphone through PyAV: ``pulse``/``alsa`` device names on Linux (e.g. ``default``),
    ``:0`` on macOS, ``audio=NAME`` on Windows."""

    name = "microphone"

    def __init__(self, device: str = "default") -> None:
        super().__init__()
        fmt = {"v4l2": "pulse", "avfoundation": "avfoundation", "dshow": "dshow"}[_camera_format()]
        try:
            self._container = av.open(device, format=fmt)
        except (av.FFmpegError, OSError, ValueError) as exc:
            try:
                self._container = av.open(device, format="alsa") if fmt == "pulse" else None
            except (av.FFmpegError, OSError, ValueError):
                self._container = None
            if self._container is None:
                raise InputError(f"microphone {device!r} cannot be opened ({exc})") from None
        if not self._container.streams.audio:
            self._container.close()
            raise InputError(f"microphone {device!r} has no audio stream")

    def _produce(self) -> None:
        resample = _resampler()
        try:
            for frame in self._container.decode(audio=0):
                if not self._put(_pcm(resample.resample(frame))):
                    return
        except av.FFmpegError as exc:
            raise InputError(f"microphone stopped ({exc})") from None
        finally:
            self._container.close()


class OpusTrack(MediaStreamTrack):
    """An aiortc audio track whose ``recv()`` returns Opus packets (aiortc sends pre-encoded
    packets as they are), paced in real time.

    Args:
        source: where the PCM comes from.
        bitrate: Opus target in bit/s (libopus, VoIP mode).
        frame_ms: packet duration, 20/40/60 ms: longer packets carry fewer headers per second.
    """

    kind = "audio"

    def __init__(
        self,
        source: AudioInput,
        bitrate: int = DEFAULT_AUDIO_BITRATE,
        frame_ms: int = DEFAULT_AUDIO_FRAME_MS,
    ) -> None:
        super().__init__()
        if frame_ms not in (20, 40, 60):
            raise InputError(f"audio packets must be 20, 40 or 60 ms long, not {frame_ms}")
        if not 6000 <= bitrate <= 128000:
            raise InputError(f"audio bitrate must be within 6000..128000 bit/s, not {bitrate}")
        self.source = source
        self.samples = SAMPLE_RATE * frame_ms // 1000
        self._codec = av.CodecContext.create("libopus", "w")
        self._codec.sample_rate = SAMPLE_RATE
        self._codec.layout = "mono"
        self._codec.format = "s16"
        self._codec.bit_rate = bitrate
        self._codec.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._codec.options = {"application": "voip", "frame_duration": str(frame_ms)}
        self._start: float | None = None
        self._pts = 0
        self._ready: list[av.Packet] = []
        self.packets = 0
        self.bytes = 0
        self._started = False

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if not self._started:
            self.source.start()
            self._started = True
        while not self._ready:
            self._ready.extend(self._encode_next())
            await self._pace()
        packet = self._ready.pop(0)
        packet.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self.packets += 1
        self.bytes += packet.size
        return packet

    async def _pace(self) -> None:
        # a packet is due once the audio it holds could have been captured
        if self._start is None:
            self._start = time.time()
        wait = self._start + self._pts / SAMPLE_RATE - time.time()
        if wait > 0:
            await asyncio.sleep(wait)

    def _encode_next(self) -> list[av.Packet]:
        pcm = self.source.read(self.samples)
        frame = av.AudioFrame.from_ndarray(pcm[None], format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        self._pts += self.samples
        return list(self._codec.encode(frame))

    def stop(self) -> None:
        super().stop()
        self.source.close()


def audio_input(spec: str, video_file: str | Path | None) -> AudioInput | None:
    """The audio a call sends, from ``--audio``: ``auto`` (the file's own audio, or the
    microphone with a camera; silence when there is none), ``tone``, ``silence``, ``off``
    (no audio track) or ``mic:DEVICE``."""
    if spec == "off":
        return None
    if spec == "silence":
        return SilenceInput()
    if spec == "tone":
        return ToneInput()
    if spec.startswith("mic:"):
        return MicInput(spec[4:] or "default")
    if spec != "auto":
        raise InputError(f"--audio {spec!r}: use auto, tone, silence, off or mic:DEVICE")
    if video_file is not None:
        return FileAudioInput(video_file) if has_audio(video_file) else SilenceInput()
    try:
        return MicInput()
    except InputError as exc:
        log.warning("%s; sending silence", exc)
        return SilenceInput()
