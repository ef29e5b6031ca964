"""The receiving half of a call: messages in, rendered frames out, on a worker thread.

:class:`LiveReceiver` takes the messages of the two media channels as they arrive (from the
event loop, which only enqueues them) and, on its own thread:

1. parses each message into units (``bitstream.parse_packet``; a damaged message is dropped
   whole and counted);
2. checks the parameter unit against the loaded model (other weights, size or K end the call
   with a :class:`CallError`) and keeps the keyframe set (``receiver.sources.SourceSet``, the
   receive core the file decoder uses too);
3. decodes every keypoint unit (``bitstream.KeypointDecoder``, joining at whatever index comes
   first) and keeps track of lost frames and of whether the chain needs a resync;
4. renders the decoded frames one at a time (``SourceSet.render``: the same call, on the same
   features, as the file decoder with ``batch_size=1``, so frames equal an offline decode of
   the same units). When rendering is slower than the stream (the full model on a CPU), older
   frames are skipped and the newest ones shown: a lower frame rate, never a growing delay.

Rendered frames go back to the loop, where the call (``iwcodec.call.playout``) spaces them out
at the stream's own rate (bundled frames arrive together), shows and records them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from bitstream import (
    Fill,
    KeyframePacer,
    KeyframeUnit,
    KeypointDecoder,
    KeypointUnit,
    NoFaceUnit,
    ParamsUnit,
    pacing,
    parse_packet,
)
from codec.model import ImplicitWarpingModel
from iwcodec.errors import BitstreamError, CallError, ModelMismatchError
from receiver.decoder import find_entropy_model
from receiver.sources import SourceSet

log = logging.getLogger(__name__)

#: Largest message accepted per channel; aiortc itself advertises 256 KiB messages.
MAX_RELIABLE_BYTES = 256 * 1024
MAX_KEYPOINT_BYTES = 8 * 1024
#: How long frames may refer to a keyframe that has not arrived before one is asked for.
KEYFRAME_GRACE = 2.0
#: Messages waiting for the worker; beyond this a flood is dropped, not queued.
MAX_INBOX = 1000
LOSS_WINDOW = 3.0  # seconds over which the reported loss fraction is computed


@dataclass(frozen=True)
class RenderedFrame:
    """A reconstructed picture: ``rgb`` (H, W, 3) uint8 (read-only), frame ``index`` and
    ``pts`` (1/90000 s) of the remote stream, ``arrival`` of its message and ``ready`` time
    (both ``time.time()``)."""

    index: int
    pts: int
    rgb: np.ndarray = field(repr=False)
    arrival: float
    ready: float


@dataclass
class ReceiverStats:
    """Counters of the receiving half (written by the worker, read by the loop)."""

    keypoint_messages: int = 0
    keypoint_bytes: int = 0
    reliable_messages: int = 0
    reliable_bytes: int = 0
    damaged_messages: int = 0  # unparsable, oversized or of the wrong kind
    early_units: int = 0  # keypoints before the parameter unit
    frames_decoded: int = 0
    frames_lost: int = 0
    frames_rendered: int = 0
    frames_no_face: int = 0  # shown as the sender's fill (NO_FACE units)
    frames_skipped: int = 0  # decoded but not rendered: rendering is behind
    frames_without_keyframe: int = 0
    keyframes: int = 0
    bad_keyframes: int = 0
    dropped_keyframes: int = 0  # too soon after the previous one
    overflow: int = 0  # messages dropped because the worker was too far behind
    resync_units: int = 0
    render_seconds: float = 0.0  # moving mean per frame
    # per loss: seconds from the last message decoded before it to the first decoded after it
    outages: list[float] = field(default_factory=list)
    arrivals: dict[int, float] = field(default_factory=dict)  # index -> arrival (timeline)


class LiveReceiver:
    """Decodes and renders one remote stream on a worker thread (see the module docstring).

    Args:
        model: the loaded model, shared with the sending half (inference only).
        on_frame: called on the event loop's thread with each :class:`RenderedFrame`.
        on_error: called on the loop's thread with a CallError that ends the call (model
            mismatch).
        timeline: keep each frame's arrival time (latency measurements).
        render: False decodes keypoints but renders nothing (measuring the transport on a
            machine that cannot render in real time).
    """

    def __init__(
        self,
        model: ImplicitWarpingModel,
        loop: asyncio.AbstractEventLoop,
        on_frame: Callable[[RenderedFrame], None],
        on_error: Callable[[BaseException], None],
        timeline: bool = False,
        render: bool = True,
    ) -> None:
        self.model = model
        self.render = render
        self.loop = loop
        self.on_frame = on_frame
        self.on_error = on_error
        self.timeline = timeline
        self.stats = ReceiverStats()
        self.params: ParamsUnit | None = None
        self.sources: SourceSet | None = None
        self._keypoints: KeypointDecoder | None = None
        self._inbox: queue.Queue[tuple[str, bytes, float] | None] = queue.Queue(MAX_INBOX)
        self._halt = threading.Event()
        # keyframes beyond bitstream.pacing.RECEIVER are dropped (each costs a decode here)
        self._keyframe_pacer = KeyframePacer(pacing.RECEIVER)
        # (index, pts, keypoints (K, 3) or None for a frame without a face, refs, arrival)
        self._pending: deque[tuple[int, int, np.ndarray | None, tuple[int, ...], float]] = deque()
        self._no_face_fill = Fill.BLANK
        self._shown: np.ndarray | None = None  # the last picture handed out
        self._backlog = 2
        self._thread: threading.Thread | None = None
        self._broken_since: float | None = None
        self._last_good: float | None = None  # arrival of the last message that decoded
        self._missing: dict[int, float] = {}  # keyframe id -> first time a frame needed it
        self._bad_keyframe: int | None = None
        self._loss: deque[tuple[float, int, int]] = deque()  # (t, decoded, lost)
        # read by the loop's thread; plain values written by the worker
        self.needs_resync = False
        self.missing_keyframe: int | None = None
        self.loss_permille = 0
        self.handled = 0  # messages taken from the inbox and processed

    # ----------------------------------------------------------------------- loop side
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="iwcodec-receive", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._halt.set()
            with contextlib.suppress(queue.Full):
                self._inbox.put_nowait(None)  # wakes a waiting worker
            self._thread.join(timeout)
            self._thread = None

    def push_reliable(self, data: bytes) -> None:
        self._push(("reliable", data, time.time()))

    def push_keypoints(self, data: bytes) -> None:
        self._push(("keypoints", data, time.time()))

    def _push(self, item: tuple[str, bytes, float]) -> None:
        try:
            self._inbox.put_nowait(item)
        except queue.Full:
            self.stats.overflow += 1

    @property
    def fps(self) -> Fraction | None:
        return self.params.fps if self.params is not None else None

    # ---------------------------------------------------------------------- worker side
    def _run(self) -> None:
        try:
            while not self._halt.is_set():
                try:
                    item = self._inbox.get(timeout=None if not self._pending else 0)
                except queue.Empty:
                    item = ()
                # take every waiting message first (decoding keypoints is cheap), then render
                while item:
                    self._handle(*item)
                    self.handled += 1
                    try:
                        item = self._inbox.get_nowait()
                    except queue.Empty:
                        item = ()
                if self._halt.is_set():
                    return
                self._render_next()
        except CallError as exc:
            self._report(exc)
        except Exception as exc:  # a bug: end the call with it rather than hang
            log.exception("receiver worker failed")
            self._report(CallError(f"the receiver failed: {exc.__class__.__name__}: {exc}"))

    def _report(self, exc: BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.on_error, exc)
        except RuntimeError:
            pass

    def _handle(self, channel: str, data: bytes, t: float) -> None:
        if channel == "reliable":
            self.stats.reliable_messages += 1
            self.stats.reliable_bytes += len(data)
            limit = MAX_RELIABLE_BYTES
        else:
            self.stats.keypoint_messages += 1
            self.stats.keypoint_bytes += len(data)
            limit = MAX_KEYPOINT_BYTES
        if len(data) > limit:
            self.stats.damaged_messages += 1
            return
        try:
            units = parse_packet(data)
        except BitstreamError:
            self.stats.damaged_messages += 1
            if channel == "keypoints":
                self._chain_broken(t)
            return
        for unit in units:
            if isinstance(unit, ParamsUnit):
                self._params(unit)
            elif isinstance(unit, KeyframeUnit) and channel == "reliable":
                self._keyframe(unit)
            elif isinstance(unit, KeypointUnit) and channel == "keypoints":
                self._keypoint_unit(unit, t)
            elif isinstance(unit, NoFaceUnit) and channel == "keypoints":
                self._no_face_unit(unit, t)
            else:
                self.stats.damaged_messages += 1  # a unit on a channel it does not belong to

    def _params(self, unit: ParamsUnit) -> None:
        if self.params is not None:
            if unit != self.params:
                self.stats.damaged_messages += 1
            return
        try:
            self.sources = SourceSet(self.model, unit)
            table = find_entropy_model(unit.entropy_id)
        except ModelMismatchError as exc:
            raise CallError(f"the other peer's stream does not fit this model: {exc}") from None
        self._keypoints = KeypointDecoder(unit, table, first_index=None)
        self.params = unit

    def _keyframe(self, unit: KeyframeUnit) -> None:
        if self.sources is None:
            self.stats.damaged_messages += 1
            return
        if not self._keyframe_pacer.take(time.monotonic()):
            self.stats.dropped_keyframes += 1
            return
        try:
            self.sources.add(unit)
        except BitstreamError as exc:
            log.warning(
                "keyframe %d cannot be used (%s); asking for another", unit.keyframe_id, exc
            )
            self.stats.bad_keyframes += 1
            self.missing_keyframe = unit.keyframe_id
            return
        self.stats.keyframes += 1
        self._missing.pop(unit.keyframe_id, None)
        if self.missing_keyframe is not None and self.missing_keyframe <= unit.keyframe_id:
            self.missing_keyframe = None

    def _keypoint_unit(self, unit: KeypointUnit, t: float) -> None:
        if self._keypoints is None:
            self.stats.early_units += 1
            self._chain_broken(t)
            return
        result = self._keypoints.decode(unit)
        lost = result.num_lost
        self.stats.frames_lost += lost
        if lost:
            self._chain_broken(t)
        if result.frames:
            self.stats.frames_decoded += len(result.frames)
            self.stats.resync_units += int(unit.resync)
            if self._broken_since is not None and not self._keypoints.needs_resync:
                self.stats.outages.append(t - self._broken_since)
                self._broken_since = None
            self._last_good = t
            self._backlog = max(2, unit.count)
            for f in result.frames:
                self._pending.append((f.index, f.pts, f.keypoints, f.refs, t))
                if self.timeline and len(self.stats.arrivals) < 1_000_000:
                    self.stats.arrivals[f.index] = t
        self._note_loss(t, len(result.frames), lost)
        self.needs_resync = self._keypoints.needs_resync

    def _no_face_unit(self, unit: NoFaceUnit, t: float) -> None:
        """Frames the sender found no face in: shown as the unit's fill, never rendered."""
        if self._keypoints is None:
            self.stats.early_units += 1
            return
        result = self._keypoints.skip(unit)
        self.stats.frames_lost += result.num_lost
        self.stats.frames_no_face += len(result.no_face)
        if result.num_lost:
            self._chain_broken(t)
        self._no_face_fill = unit.fill
        for i, pts in zip(result.no_face, unit.frame_pts(self.params)):
            self._pending.append((i, pts, None, (), t))
        if result.no_face:
            self._backlog = max(2, unit.count)
            self._last_good = t
        self._note_loss(t, len(result.no_face), result.num_lost)
        self.needs_resync = self._keypoints.needs_resync

    def _chain_broken(self, t: float) -> None:
        if self._broken_since is None:
            self._broken_since = self._last_good if self._last_good is not None else t
        self.needs_resync = True

    def _note_loss(self, t: float, decoded: int, lost: int) -> None:
        self._loss.append((t, decoded, lost))
        while self._loss and self._loss[0][0] < t - LOSS_WINDOW:
            self._loss.popleft()
        total = sum(d + n for _, d, n in self._loss)
        self.loss_permille = round(1000 * sum(n for _, _, n in self._loss) / total) if total else 0

    def _render_next(self) -> None:
        if not self.render:
            self._pending.clear()
            return
        while len(self._pending) > self._backlog:
            self._pending.popleft()
            self.stats.frames_skipped += 1
        if not self._pending or self.sources is None:
            return
        index, pts, kp, refs, arrival = self._pending.popleft()
        if kp is None:  # no face: the sender's fill, nothing to render
            rgb = self._shown if self._no_face_fill == Fill.HOLD else None
            self._hand_out(index, pts, rgb if rgb is not None else self.sources.blank(), arrival)
            return
        start = time.perf_counter()
        images = self.sources.render(refs, kp[None])  # (1, H, W, 3) uint8; None: refs missing
        if images is None:
            self.stats.frames_without_keyframe += 1
            now = time.time()
            for ref in self.sources.missing(refs):  # not the refs it holds
                first = self._missing.setdefault(ref, now)
                if now - first >= KEYFRAME_GRACE:
                    self.missing_keyframe = ref
            return
        rgb = images[0]
        took = time.perf_counter() - start
        self.stats.render_seconds += 0.1 * (took - self.stats.render_seconds)
        rgb.setflags(write=False)
        self.stats.frames_rendered += 1
        self._hand_out(index, pts, rgb, arrival)

    def _hand_out(self, index: int, pts: int, rgb: np.ndarray, arrival: float) -> None:
        self._shown = rgb
        frame = RenderedFrame(index, pts, rgb, arrival, time.time())
        try:
            self.loop.call_soon_threadsafe(self.on_frame, frame)
        except RuntimeError:  # the loop is gone: the call ended
            pass
