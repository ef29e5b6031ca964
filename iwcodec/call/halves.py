"""What a call needs of the two halves it joins, and the observers it offers.

The halves live in their own folders and know nothing of the call: the sending half
(``sender.call.CallSender``) turns a camera or file into messages and writes them through a
``sender.call.Link``; the receiving half (``receiver.live.LiveReceiver``) turns messages into
rendered frames. The call (``iwcodec.call.session``) builds the receiving half itself and
takes the sending half from its caller as an :class:`OutgoingHalf`, so that a measurement can
hand in a stand-in (``iwcodec.call.loopback.SilentSender``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from aiortc.mediastreams import MediaStreamTrack

from receiver.live import RenderedFrame
from sender.call import Link, SenderStats


class OutgoingHalf(Protocol):
    """The sending half as the call sees it (``sender.call.CallSender`` is one)."""

    @property
    def audio_track(self) -> MediaStreamTrack | None: ...

    @property
    def stats(self) -> SenderStats: ...

    @property
    def resilient(self) -> bool:
        """True while every unit is a resync unit (after a reported loss)."""
        ...

    def hello(self) -> dict[str, object]:
        """What this peer tells the other one at connect time (JSON values)."""
        ...

    async def run(self, link: Link) -> None:
        """Capture, code and send through ``link`` until cancelled or the input ends."""
        ...

    def request_resync(self, loss_permille: int = 0) -> None: ...

    def request_keyframe(self, keyframe_id: int | None = None) -> None: ...


@dataclass
class CallHooks:
    """Observers for tests and measurements (all optional, called on the loop's thread)."""

    on_sent: Callable[[str, bytes], None] | None = None  # channel, message
    on_received: Callable[[str, bytes], None] | None = None
    on_shown: Callable[[RenderedFrame, float], None] | None = None  # frame, display time
    on_connected: Callable[[str | None], None] | None = None  # the viewer page's address
    on_audio: Callable[[np.ndarray], None] | None = None  # mono int16 PCM of the other peer


__all__ = ["CallHooks", "OutgoingHalf"]
