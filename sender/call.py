"""The sending half of a call: live frames in, keypoint and keyframe messages out.

Per captured frame (on one worker thread, so the event loop never waits on the model):

1. the causal face tracker (``sender.crop.FaceTracker``) gives the crop box; the crop is cut at
   the model's resolution;
2. the model's keypoint detector gives K keypoints (paper section 3);
3. ``sender.core.SendCore`` (shared with file encoding) decides what units the frame
   becomes: the parameter unit first; a keyframe for the first frame with a face, for a face
   that comes back after ``sender.core.NO_FACE_SECONDS`` without one, and for a frame the
   receiver asks for (like RTCP PLI), within the keyframe pacing both ends share; NO_FACE
   units for frames without a face (the receiver shows a blank picture, not a ghost of the
   last face); keypoint units, ``frames_per_message`` frames each, out the moment their last
   frame is in. Parameter and keyframe units go on the reliable channel, the others on the
   unordered channel without retransmissions. Bundling is what keeps the wire rate low: each
   message costs ~109 bytes of IP/UDP/DTLS/SCTP headers (docs/calls.md).

Loss: when the receiver reports a broken keypoint chain (:meth:`CallSender.request_resync`),
the next unit is a resync unit, and for ``resilient_seconds`` every unit is one (the send
core's resilient mode), so that each message decodes on its own while the path is losing
packets and a loss costs only its own frames instead of a round trip's worth.

The peer connection is not this module's business: :meth:`CallSender.run` writes through a
*link* with ``send_reliable(bytes)``, ``send_keypoints(bytes)`` and ``show_local(rgb, index)``
(``iwcodec.call.media.SenderLink`` is the call's), called on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from bitstream import KeyframePacer, KeyframeUnit, KeypointUnit, ParamsUnit, Unit, pacing
from codec.model import ImplicitWarpingModel
from iwcodec.errors import InputError
from sender.core import NO_FACE_SECONDS, Face
from sender.crop import CropConfig, FaceTracker, cut_square
from sender.encoder import EncodeOptions, detect_batch, entropy_model, send_core, stream_params
from sender.keyframes import BudgetKeyframes
from sender.live import (
    DEFAULT_AUDIO_BITRATE,
    DEFAULT_AUDIO_FRAME_MS,
    AudioInput,
    CameraSource,
    CapturedFrame,
    FileSource,
    OpusTrack,
)

#: Messages per second the automatic bundling aims at (docs/calls.md, trade-off table).
MAX_MESSAGES_PER_SECOND = 10.0
#: A peer cannot make us send keyframes it asks for faster than this (each is kilobytes); all
#: keyframes, also those of a face that comes back, keep to ``bitstream.pacing.SENDER``.
MIN_KEYFRAME_INTERVAL = 2.0


def auto_frames_per_message(fps: float, max_rate: float = MAX_MESSAGES_PER_SECOND) -> int:
    """Fewest frames per message that keep messages at or under ``max_rate`` per second."""
    return max(1, math.ceil(fps / max_rate - 1e-9))


#: Keyframe budget of a call: with the keypoints (about 3-4 kbps) and the framing, the data
#: channels stay under 16 kbps; a face that changes (another person, pose distance over
#: ``sender.keyframes.DEFAULT_MAX_DISTANCE``) gets a keyframe at once when the budget holds one.
CALL_KEYFRAME_KBPS = 4.0
CALL_CODING = EncodeOptions(
    keyframe_policy=functools.partial(BudgetKeyframes, CALL_KEYFRAME_KBPS), keyframe_set=4
)


@dataclass(frozen=True)
class SendOptions:
    """Settings of the sending half.

    Attributes:
        frames_per_message: keypoint frames per message; None picks
            :func:`auto_frames_per_message` for the input's frame rate (3 at 25-30 fps).
        coding: the stream's coding, as for files (``sender.encoder.EncodeOptions``: keyframe
            codec and quality, quantization, prior table, resync period on a clean path, what
            the receiver shows without a face, the keyframe policy and set); its file-only
            fields are not used. By default (:data:`CALL_CODING`) keyframes follow the quality
            policy within a budget of :data:`CALL_KEYFRAME_KBPS`.
        resilient_seconds: after a reported loss, every unit is a resync unit this long.
        audio_bitrate, audio_frame_ms: the Opus stream.
        timeline: keep each frame's capture time (for latency measurements).
    """

    frames_per_message: int | None = None
    coding: EncodeOptions = CALL_CODING
    resilient_seconds: float = 10.0
    audio_bitrate: int = DEFAULT_AUDIO_BITRATE
    audio_frame_ms: int = DEFAULT_AUDIO_FRAME_MS
    timeline: bool = False


@dataclass
class SenderStats:
    """Counters of the sending half (read on the event loop's thread)."""

    captured: int = 0
    dropped: int = 0  # frames the worker could not keep up with
    no_face: int = 0
    frames_sent: int = 0
    keypoint_messages: int = 0
    keypoint_bytes: int = 0
    resync_units: int = 0
    keyframes: int = 0
    reliable_bytes: int = 0
    send_delay: float = 0.0  # moving mean, seconds from capture to sending a frame's keypoints
    capture_times: dict[int, float] = field(default_factory=dict)  # stream index -> time.time()


class Link(Protocol):
    """Where the sending half writes (implemented by the call runner)."""

    def send_reliable(self, data: bytes) -> None: ...

    def send_keypoints(self, data: bytes) -> None: ...

    def show_local(self, rgb: np.ndarray, index: int) -> None: ...


@dataclass
class _StepResult:
    messages: list[tuple[str, bytes, tuple[float, ...]]]  # (channel, bytes, capture times)
    crop: np.ndarray | None
    index: int


class CallSender:
    """Turns a live video source into the messages of a call (see the module docstring).

    Args:
        model: the loaded model (its detector runs here; its weights id goes into the stream).
        video: a :class:`FileSource` or :class:`CameraSource`.
        audio: PCM for the Opus track, or None for no audio track.
    """

    def __init__(
        self,
        model: ImplicitWarpingModel,
        video: FileSource | CameraSource,
        audio: AudioInput | None,
        options: SendOptions = SendOptions(),
    ) -> None:
        self.model = model
        self.video = video
        self.options = options
        coding = options.coding
        self.table = entropy_model(coding)
        self.params: ParamsUnit = stream_params(model, video.fps, coding, self.table)
        self.frames_per_message = options.frames_per_message or auto_frames_per_message(
            float(self.params.fps)
        )
        if not 1 <= self.frames_per_message <= 64:
            raise InputError(f"frames per message must be 1..64, got {self.frames_per_message}")
        self.audio_track = (
            OpusTrack(audio, options.audio_bitrate, options.audio_frame_ms) if audio else None
        )
        self.stats = SenderStats()
        self._core = send_core(
            model,
            self.params,
            self.table,
            coding,
            self.frames_per_message,
            KeyframePacer(pacing.SENDER),
        )
        self._tracker: FaceTracker | None = None
        self._stream_start: int | None = None  # source index of stream frame 0
        self._times: dict[int, float] = {}  # capture times of frames not yet sent, by index
        self._last_keyframe_t = -math.inf
        # requests arrive on the loop's thread and are applied on the worker's
        self._lock = threading.Lock()
        self._keyframe_wanted = False
        self._resync_wanted = False
        self._resilient_until = 0.0
        self._stop = threading.Event()

    # ------------------------------------------------------------------------ peer facing
    def hello(self) -> dict[str, object]:
        """What this peer tells the other one at connect time (checked there)."""
        return {
            "weights_id": self.params.weights_id.hex(),
            "entropy_id": self.params.entropy_id.hex(),
            "image_size": self.params.width,
            "num_kp": self.params.num_keypoints,
            "fps": f"{self.params.fps_num}/{self.params.fps_den}",
            "frames_per_message": self.frames_per_message,
            "device": str(next(self.model.parameters()).device),
        }

    def request_resync(self, loss_permille: int = 0) -> None:
        """The receiver's keypoint chain broke: next unit resync, then a resilient stretch."""
        with self._lock:
            self._resync_wanted = True
            self._resilient_until = time.monotonic() + self.options.resilient_seconds

    def request_keyframe(self, keyframe_id: int | None = None) -> None:
        """The receiver lacks keyframe ``keyframe_id`` (or any): send a new one (rate-limited)."""
        with self._lock:
            if keyframe_id is None or keyframe_id < self._core.keyframes_sent:
                self._keyframe_wanted = True

    @property
    def resilient(self) -> bool:
        return time.monotonic() < self._resilient_until

    # ----------------------------------------------------------------------------- running
    async def run(
        self, link: Link, on_error: Callable[[BaseException], None] | None = None
    ) -> None:
        """Capture, process and send until cancelled (or a file source ends)."""
        loop = asyncio.get_running_loop()
        frames: asyncio.Queue[CapturedFrame | BaseException | None] = asyncio.Queue()

        def offer(item: CapturedFrame | BaseException | None) -> None:
            # keep only the newest frames when the worker falls behind
            if isinstance(item, CapturedFrame):
                self.stats.captured += 1
                while frames.qsize() >= 2:
                    frames.get_nowait()
                    self.stats.dropped += 1
            frames.put_nowait(item)

        capture = threading.Thread(
            target=self._capture, args=(loop, offer), name="iwcodec-capture", daemon=True
        )
        pool = ThreadPoolExecutor(1, thread_name_prefix="iwcodec-send")
        capture.start()
        try:
            while True:
                item = await frames.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                result = await loop.run_in_executor(pool, self._step, item)
                self._deliver(link, result)
        finally:
            self._stop.set()
            await loop.run_in_executor(pool, self._close_tracker)
            pool.shutdown(wait=False)
            if self.audio_track is not None:
                self.audio_track.stop()

    def _capture(self, loop: asyncio.AbstractEventLoop, offer) -> None:
        try:
            for frame in self.video.frames(self._stop):
                if self._stop.is_set():
                    return
                loop.call_soon_threadsafe(offer, frame)
            loop.call_soon_threadsafe(offer, None)
        except InputError as exc:
            loop.call_soon_threadsafe(offer, exc)
        except RuntimeError:  # the loop closed under us: the call is over
            return

    def _deliver(self, link: Link, result: _StepResult) -> None:
        now = time.time()
        for channel, data, times in result.messages:
            if channel == "reliable":
                link.send_reliable(data)
                self.stats.reliable_bytes += len(data)
                continue
            link.send_keypoints(data)
            self.stats.keypoint_messages += 1
            self.stats.keypoint_bytes += len(data)
            self.stats.frames_sent += len(times)
            for t in times:
                delay = now - t
                self.stats.send_delay += 0.05 * (delay - self.stats.send_delay)
        if result.crop is not None:
            link.show_local(result.crop, result.index)

    # -------------------------------------------------------------------- worker thread
    def _close_tracker(self) -> None:
        if self._tracker is not None:
            self._tracker.close()
            self._tracker = None

    def _step(self, frame: CapturedFrame) -> _StepResult:
        """One captured frame in, its messages out; the send core decides what units."""
        size = self.params.width
        if self._tracker is None:  # MediaPipe graphs stay on the thread that made them
            self._tracker = FaceTracker(CropConfig(size=size))
        box = self._tracker.update(frame.rgb, frame.t)
        messages: list[tuple[str, bytes, tuple[float, ...]]] = []
        if self._stream_start is None:  # the stream starts with the first captured frame
            self._stream_start = frame.index
            messages += self._messages(self._core.start())
        index = frame.index - self._stream_start
        pts = self.params.nominal_pts(index)
        self._times[index] = frame.t
        if self.options.timeline and len(self.stats.capture_times) < 1_000_000:
            self.stats.capture_times[index] = frame.t
        self._apply_requests()
        face = None
        if (
            box is not None
            and self._tracker.lost_for(frame.t) < NO_FACE_SECONDS
            and self._core.takes_face(frame.t)  # else no keypoints are needed
        ):
            crop = cut_square(frame.rgb, box, size)
            face = Face(crop, detect_batch(self.model, crop[None])[0])  # keypoints (K, 3)
        wanted = face is not None and self._keyframe_requested(frame.t)
        units = self._core.frame(index, pts, face, keyframe=wanted, t=frame.t)
        if any(isinstance(u, KeyframeUnit) for u in units):
            self._last_keyframe_t = frame.t
        if face is None:
            self.stats.no_face += 1
        messages += self._messages(units)
        return _StepResult(messages, None if face is None else face.crop, index)

    def _keyframe_requested(self, t: float) -> bool:
        """A receiver's request is served at most every ``MIN_KEYFRAME_INTERVAL`` and when the
        send core's pacing lets a keyframe go (else it waits, not lost)."""
        with self._lock:
            if (
                self._keyframe_wanted
                and t - self._last_keyframe_t >= MIN_KEYFRAME_INTERVAL
                and self._core.keyframe_ready(t)
            ):
                self._keyframe_wanted = False
                return True
        return False

    def _apply_requests(self) -> None:
        """A resync the receiver asked for, and the resilient stretch after a loss."""
        with self._lock:
            resync, self._resync_wanted = self._resync_wanted, False
            resilient = time.monotonic() < self._resilient_until
        if resync:
            self._core.request_resync()
        self._core.resilient = resilient

    def _messages(self, units: list[Unit]) -> list[tuple[str, bytes, tuple[float, ...]]]:
        """Units -> (channel, bytes, capture times): the parameter and keyframe units go on the
        reliable channel, keypoint and no-face units on the keypoint channel."""
        out = []
        for unit in units:
            if isinstance(unit, (ParamsUnit, KeyframeUnit)):
                self.stats.keyframes += isinstance(unit, KeyframeUnit)
                out.append(("reliable", unit.to_bytes(), ()))
                continue
            times = tuple(self._times.pop(i) for i in unit.indices if i in self._times)
            self.stats.resync_units += isinstance(unit, KeypointUnit) and unit.resync
            out.append(("keypoints", unit.to_bytes(), times))
        if len(self._times) > 4 * self.frames_per_message:  # frames dropped before a unit
            for i in sorted(self._times)[: -self.frames_per_message]:
                del self._times[i]
        return out
