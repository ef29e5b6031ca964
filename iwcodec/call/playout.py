"""Playout: the other peer's rebuilt frames shown at their own pace, and recorded.

The receiving half hands each rendered frame over as soon as it is ready; the frames of one
bundled message are ready together. :class:`Screen` asks ``receiver.live.Playout`` when each
is due (its stream time plus a delay that follows the path), shows it then on the page, adds
it to the recording (``receiver.live.Recorder``, opened at the stream's rate with the first
frame) and passes it to the ``on_shown`` hook. A frame that comes after a later one was shown
is dropped and counted. It also keeps the page's glass-to-glass estimate, which needs no
shared clock: the other side's capture-to-send delay (sent in its PING), half the round trip,
and this side's arrival-to-display time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

from iwcodec.call.halves import CallHooks
from iwcodec.call.stats import MAX_TIMELINE, CallStats
from iwcodec.call.viewer import KIND_REMOTE, Viewer
from iwcodec.errors import IWCodecError
from receiver.live import Playout, Recorder, RenderedFrame


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
