"""Media routing: which bytes go on which channel, and where arriving ones go.

One bundled peer connection carries an Opus audio track and three pre-negotiated data
channels (ids fixed, so there is no in-band open handshake):

| channel | id | delivery | carries |
|---|---|---|---|
| ``kp`` | 1 | unordered, no retransmission | KEYPOINTS and NO_FACE units, a few frames per message |
| ``kf`` | 2 | reliable, ordered | the PARAMS unit and KEYFRAME units |
| ``ctl`` | 3 | unordered, no retransmission | control messages (``iwcodec.call.control``) |

:class:`Channels` opens them on a connection, sends (counting payload bytes) and hands each
arriving message to its consumer (:class:`Inbound`: the receiving half takes the media, the
control loop the control messages). :class:`SenderLink` is the sending half's way out
(``sender.call.Link``). :func:`play_audio` takes the other peer's audio track to the page.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from aiortc import RTCDataChannel, RTCPeerConnection
from aiortc.exceptions import InvalidStateError
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from iwcodec.call.halves import CallHooks
from iwcodec.call.stats import CallStats
from iwcodec.call.viewer import KIND_LOCAL, Viewer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChannelSpec:
    """How one data channel delivers (RTCDataChannel options)."""

    id: int
    ordered: bool
    max_retransmits: int | None


CHANNELS = {
    "kp": ChannelSpec(1, ordered=False, max_retransmits=0),
    "kf": ChannelSpec(2, ordered=True, max_retransmits=None),
    "ctl": ChannelSpec(3, ordered=False, max_retransmits=0),
}


@dataclass(frozen=True)
class Inbound:
    """Where arriving messages go, by channel (called on the loop's thread; may not block)."""

    keypoints: Callable[[bytes], None]
    reliable: Callable[[bytes], None]
    control: Callable[[bytes], None]


class Channels:
    """The call's data channels on one peer connection (see the module docstring)."""

    def __init__(self, stats: CallStats, hooks: CallHooks) -> None:
        self.stats = stats
        self.hooks = hooks
        self.inbound: Inbound | None = None  # set before the channels open
        self._open: dict[str, RTCDataChannel] = {}

    def open(self, pc: RTCPeerConnection, inbound: Inbound) -> None:
        """Create the channels on ``pc`` (both peers do, with the same ids)."""
        self.inbound = inbound
        for name, spec in CHANNELS.items():
            channel = pc.createDataChannel(
                name,
                ordered=spec.ordered,
                maxRetransmits=spec.max_retransmits,
                negotiated=True,
                id=spec.id,
            )
            channel.on("message", lambda data, name=name: self._on_message(name, data))
            self._open[name] = channel

    @property
    def ready(self) -> bool:
        """True once every channel is open."""
        return bool(self._open) and all(c.readyState == "open" for c in self._open.values())

    def send(self, name: str, data: bytes) -> None:
        """Send one message; dropped when the channel is not (or no longer) open."""
        channel = self._open.get(name)
        if channel is None or channel.readyState != "open":
            return
        try:
            channel.send(data)
        except (InvalidStateError, ConnectionError, ValueError):
            return
        self.stats.payload_sent[name] += len(data)
        if self.hooks.on_sent is not None:
            self.hooks.on_sent(name, data)

    def send_text(self, name: str, text: str) -> None:
        """A text message (no part of the protocol: peers count and drop them)."""
        channel = self._open.get(name)
        if channel is not None and channel.readyState == "open":
            channel.send(text)

    def _on_message(self, name: str, data: bytes | str) -> None:
        # aiortc runs this inside its DTLS receive loop, where an exception would tear the
        # connection down: nothing the other peer sends may raise here
        try:
            self._route(name, data)
        except Exception:
            log.exception("a message on channel %s could not be handled", name)
            self.stats.events.bad_control += 1

    def _route(self, name: str, data: bytes | str) -> None:
        if isinstance(data, str) or self.inbound is None:
            self.stats.events.bad_control += 1
            return
        self.stats.payload_received[name] += len(data)
        if self.hooks.on_received is not None:
            self.hooks.on_received(name, data)
        if name == "kp":
            self.inbound.keypoints(data)
        elif name == "kf":
            self.inbound.reliable(data)
        else:
            self.inbound.control(data)


class SenderLink:
    """The sending half's way out (``sender.call.Link``): the media channels and the local
    preview on the page."""

    def __init__(self, channels: Channels, viewer: Viewer | None) -> None:
        self.channels = channels
        self.viewer = viewer

    def send_reliable(self, data: bytes) -> None:
        self.channels.send("kf", data)

    def send_keypoints(self, data: bytes) -> None:
        self.channels.send("kp", data)

    def show_local(self, rgb: np.ndarray, index: int) -> None:
        if self.viewer is not None:
            self.viewer.show(KIND_LOCAL, rgb, index)


async def play_audio(
    track: MediaStreamTrack, stats: CallStats, viewer: Viewer | None, hooks: CallHooks
) -> None:
    """Hand the other peer's audio, as mono int16 PCM, to the page (and the hooks) until the
    track ends."""
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels)).mean(axis=1)
        pcm = pcm.astype(np.int16)  # (samples,)
        stats.events.audio_frames += 1
        stats.events.audio_samples += len(pcm)
        if viewer is not None:
            viewer.push_audio(pcm)
        if hooks.on_audio is not None:
            hooks.on_audio(pcm)


__all__ = ["CHANNELS", "ChannelSpec", "Channels", "Inbound", "SenderLink", "play_audio"]
