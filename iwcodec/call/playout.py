"""Playout: the other peer's rebuilt frames shown at their own pace, and recorded.

The receiving half hands each rendered frame over as soon as it is ready; the frames of one
bundled message are ready together. :class:`Screen` asks :class:`Playout` when each
is due (its stream time plus a delay that follows the path), shows it then on the page, adds
it to the recording (:class:`Recorder`, opened at the stream's rate with the first
frame) and passes it to the ``on_shown`` hook. A frame that comes after a later one was shown
is dropped and counted. It also keeps the page's glass-to-glass estimate, which needs no
shared clock: the other side's capture-to-send delay (sent in its PING), half the round trip,
and this side's arrival-to-display time.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

from bitstream import TIMESCALE
from iwcodec.call.halves import CallHooks
from iwcodec.call.stats import MAX_TIMELINE, CallStats
from iwcodec.call.viewer import KIND_REMOTE, Viewer
from iwcodec.errors import IWCodecError
from receiver.live import RenderedFrame
from receiver.writer import VideoWriter


class Playout:
    """When to show each rendered frame: at ``base + pts``, with ``base`` a high percentile of
    recent ``ready - pts`` plus a margin.

    Frames bundled into one message are ready together; showing frame i at ``base + pts_i``
    spreads them out at the stream's own rate. ``base`` rises at once when frames start coming
    later and creeps down when the path gets faster, so the latency follows the path without
    jerky motion. The percentile (not the maximum) keeps one stalled frame (a CPU hiccup) from
    setting everyone's delay; that frame is shown as soon as it is ready. At 90 the first
    frame of each bundle (which waited longest) still sets the delay for bundles of up to 9.
    """

    def __init__(
        self,
        window: float = 2.0,
        percentile: float = 90.0,
        margin: float = 0.004,
        decay: float = 0.02,
    ) -> None:
        self.window = window
        self.percentile = percentile
        self.margin = margin
        self.decay = decay
        self.base: float | None = None
        self._seen: deque[tuple[float, float]] = deque()  # (ready, ready - pts)

    def due(self, ready: float, pts: int) -> float:
        """Display time (``time.time()`` clock) of a frame ready at ``ready``: never before
        ``ready`` (a frame later than the percentile is shown as soon as it is ready)."""
        pts_s = pts / TIMESCALE
        self._seen.append((ready, ready - pts_s))
        while self._seen and self._seen[0][0] < ready - self.window:
            self._seen.popleft()
        delays = np.fromiter((d for _, d in self._seen), np.float64, len(self._seen))
        target = float(np.percentile(delays, self.percentile)) + self.margin
        if self.base is None or target > self.base:
            self.base = target
        else:
            self.base += self.decay * (target - self.base)
        return max(ready, self.base + pts_s)


class Recorder:
    """Writes the shown frames to a video file on its own thread, at the remote stream's rate.

    Frames that were never shown (lost, skipped) repeat the picture before them, so the file
    keeps the stream's timing; a jump of more than ``max_hold`` frames is not filled.
    """

    def __init__(self, path: str | Path, max_hold_seconds: float = 10.0) -> None:
        self.path = Path(path)
        self.max_hold_seconds = max_hold_seconds
        self._queue: queue.Queue[tuple[int, np.ndarray] | None] = queue.Queue(maxsize=256)
        self._writer: VideoWriter | None = None
        self._thread: threading.Thread | None = None
        self._fps: Fraction | None = None
        self.error: IWCodecError | None = None
        self.frames = 0
        self.dropped = 0

    def open(self, width: int, height: int, fps: Fraction) -> None:
        self._writer = VideoWriter(self.path, width, height, fps)
        self._fps = fps
        self._thread = threading.Thread(target=self._run, name="iwcodec-record", daemon=True)
        self._thread.start()

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    def add(self, index: int, rgb: np.ndarray) -> None:
        try:
            self._queue.put_nowait((index, rgb))
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        assert self._writer is not None and self._fps is not None
        max_hold = int(self.max_hold_seconds * float(self._fps))
        last: tuple[int, np.ndarray] | None = None
        try:
            while (item := self._queue.get()) is not None:
                index, rgb = item
                if last is not None and 1 < index - last[0] <= max_hold:
                    for _ in range(index - last[0] - 1):
                        self._writer.write(last[1])
                        self.frames += 1
                self._writer.write(rgb)
                self.frames += 1
                last = item
        except IWCodecError as exc:
            self.error = exc
            self._writer.abort()

    def close(self) -> Path | None:
        """Finish the file (it appears under its name only now); None if nothing was written."""
        if self._writer is None:
            return None
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(30)
        if self.error is not None:
            raise self.error
        if self.frames == 0:
            self._writer.abort()
            return None
        return self._writer.close()


class Screen:
    """Shows and records the other peer's frames (see the module docstring).

    Args:
        stats: counts shown and late frames, keeps the display times and the latency estimate.
        hooks: ``on_shown`` is called with each frame shown and its display time.
        stream_fps: the remote stream's frame rate once known (for the recording).
        on_error: called with an error that ends the call (the recording cannot be written).
        record: write the shown frames to this video file.
        timeline: keep each frame's display time.
    """

    def __init__(
        self,
        stats: CallStats,
        hooks: CallHooks,
        stream_fps: Callable[[], Fraction | None],
        on_error: Callable[[BaseException], None],
        record: Path | None = None,
        timeline: bool = False,
    ) -> None:
        self.stats = stats
        self.hooks = hooks
        self.stream_fps = stream_fps
        self.on_error = on_error
        self.timeline = timeline
        self.viewer: Viewer | None = None  # set once the page is served
        self.playout = Playout()
        self.recorder = Recorder(record) if record is not None else None
        self.last_shown = -1
        self._closing = False

    def on_rendered(self, frame: RenderedFrame) -> None:
        """A frame the receiving half rendered: show it when it is due."""
        delay = self.playout.due(frame.ready, frame.pts) - time.time()
        asyncio.get_running_loop().call_later(max(0.0, delay), self.show, frame)

    def show(self, frame: RenderedFrame) -> None:
        """Show ``frame`` now (unless a later one was shown, or the call is closing)."""
        if self._closing:
            return
        if frame.index <= self.last_shown:
            self.stats.events.late_frames += 1
            return
        now = time.time()
        self.last_shown = frame.index
        self.stats.frames_shown += 1
        if self.timeline and len(self.stats.shown_at) < MAX_TIMELINE:
            self.stats.shown_at[frame.index] = now
            self.stats.ready_at[frame.index] = frame.ready
        if self.stats.rtt is not None:
            far = self.stats.remote_send_delay + self.stats.rtt / 2
            self.stats.smooth_latency(far + (now - frame.arrival))
        if self.viewer is not None:
            self.viewer.show(KIND_REMOTE, frame.rgb, frame.index)
        if self.recorder is not None and not self._record(frame):
            return
        if self.hooks.on_shown is not None:
            self.hooks.on_shown(frame, now)

    def _record(self, frame: RenderedFrame) -> bool:
        assert self.recorder is not None
        fps = self.stream_fps()
        if not self.recorder.is_open and fps is not None:
            h, w = frame.rgb.shape[:2]
            try:
                self.recorder.open(w, h, fps)
            except IWCodecError as exc:
                self.on_error(exc)
                return False
        self.recorder.add(frame.index, frame.rgb)
        return True

    def close(self) -> None:
        """Show nothing from now on. Frames already timed for display (``call_later``) would
        otherwise still be shown while the call closes, after the recording has ended: shown
        but not recorded."""
        self._closing = True

    async def finish_recording(self) -> Path | None:
        """Close the recording (on a worker thread); its path, or None if nothing was recorded
        or there is no recording. Raises the recorder's IWCodecError."""
        if self.recorder is None:
            return None
        return await asyncio.get_running_loop().run_in_executor(None, self.recorder.close)


__all__ = ["Screen"]
