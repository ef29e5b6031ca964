"""Negotiation: from "two peers in a room" to one connected WebRTC session.

1. :func:`meet`: join the room on the signaling server (``iwcodec.call.signaling``) with this
   peer's *hello*, wait for the other peer, and check its hello (:func:`check_peer`: the same
   model weights, an entropy table this installation holds, the same call protocol). A
   mismatch ends the call on both sides with a :class:`CallError` naming both ids: the side
   that notices tells the other why before it leaves. The peer that joined second offers.
2. :func:`connect`: one bundled peer connection, the audio transceiver first (with
   max-bundle the data channels then share its transport), the data channels
   (``iwcodec.call.media``), the SDP offer and answer relayed through the server, then wait
   until every channel is open. The wire counter is attached as soon as ICE sockets exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiortc import RTCPeerConnection, RTCRtpSender, RTCRtpTransceiver, RTCSessionDescription
from aiortc.exceptions import InvalidStateError
from aiortc.mediastreams import MediaStreamTrack

from iwcodec.call.rtc import WireCounter, can_gather_host_candidates
from iwcodec.call.signaling import SignalingClient
from iwcodec.call.stats import CallEvents
from iwcodec.errors import CallError
from receiver.decoder import shipped_entropy_models

log = logging.getLogger(__name__)

PROTOCOL = 1  # version of the hello and of the channel layout
MAX_SDP_BYTES = 60_000
OFFERER, ANSWERER = "offerer", "answerer"

#: A peer's hello: what it says about itself at connect time (JSON values).
Hello = dict[str, object]


@dataclass(frozen=True)
class Meeting:
    """Who the other peer is, and which side of the offer/answer exchange this peer takes."""

    role: str  # OFFERER or ANSWERER
    peer: Hello


def check_peer(mine: Hello, theirs: object) -> None:
    """Refuse a peer whose stream this side cannot decode, or that cannot decode ours."""
    if not isinstance(theirs, dict) or not isinstance(theirs.get("weights_id"), str):
        raise CallError(
            "the other peer did not say which model it uses: it is not an iwcodec peer, or one "
            "of an incompatible version"
        )
    if theirs.get("protocol") != PROTOCOL:
        raise CallError(
            f"the other peer speaks call protocol {str(theirs.get('protocol'))[:20]}, this one "
            f"{PROTOCOL}: update both sides to the same iwcodec version"
        )
    if theirs["weights_id"] != mine["weights_id"]:
        raise CallError(
            f"model mismatch: this peer runs weights {mine['weights_id']}, the other peer "
            f"{theirs['weights_id'][:32]}; both sides must load the same weights (--weights)"
        )
    held = {i.hex() for i in shipped_entropy_models()}
    entropy = theirs.get("entropy_id")
    if not isinstance(entropy, str) or entropy not in held:
        raise CallError(
            f"model mismatch: the other peer codes keypoints with entropy table "
            f"{str(entropy)[:32]}, which this installation does not have ({', '.join(sorted(held))})"
        )


async def meet(
    sig: SignalingClient,
    room: str,
    token: str,
    hello: Hello,
    wait_timeout: float | None,
    say: Callable[[str], None],
) -> Meeting:
    """Join ``room`` and wait (at most ``wait_timeout`` s) for the other peer; check it."""
    joined = await sig.join(room, token, hello)
    peer = joined.peer
    if peer is None:
        say(f"waiting for the other peer in room {room!r}")
        peer = await _wait_for_peer(sig, room, wait_timeout)
    try:
        check_peer(hello, peer)
    except CallError as exc:
        with contextlib.suppress(CallError):
            await sig.relay({"kind": "refuse", "reason": str(exc)[:500]})
        raise
    assert isinstance(peer, dict)
    return Meeting(OFFERER if joined.peer is not None else ANSWERER, peer)


async def _wait_for_peer(sig: SignalingClient, room: str, wait_timeout: float | None) -> object:
    deadline = None if wait_timeout is None else time.monotonic() + wait_timeout
    while True:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            msg = await sig.recv(timeout=timeout)
        except asyncio.TimeoutError:
            raise CallError(f"nobody joined room {room!r} within {wait_timeout:.0f} s") from None
        if msg["type"] == "peer":
            return msg.get("hello")


def check_network(ice_servers: tuple[str, ...]) -> None:
    """Refuse up front a machine that no peer can reach (aioice offers no 127.0.0.1)."""
    if not ice_servers and not can_gather_host_candidates():
        raise CallError(
            "this machine has no network address besides 127.0.0.1, which WebRTC (aioice) "
            "does not offer: connect a network or give a TURN server with --ice-server"
        )


async def connect(
    sig: SignalingClient,
    pc: RTCPeerConnection,
    role: str,
    audio: MediaStreamTrack | None,
    open_channels: Callable[[RTCPeerConnection], None],
    channels_ready: Callable[[], bool],
    wire: WireCounter,
    events: CallEvents,
) -> None:
    """Offer or answer on ``pc`` (see the module docstring) and wait until the data channels
    that ``open_channels`` creates are open (``channels_ready``); CallError when the other
    peer's description is invalid or the connection fails."""
    if role == OFFERER:
        transceiver = pc.addTransceiver("audio", direction="sendrecv")
        _prefer_opus(transceiver)
        if audio is not None:
            transceiver.sender.replaceTrack(audio)
        open_channels(pc)
        await pc.setLocalDescription(await pc.createOffer())
        wire.attach(pc)
        await sig.relay({"kind": "sdp", "type": "offer", "sdp": pc.localDescription.sdp})
        await _describe(pc, await _setup_message(sig, "answer", events), "answer")
    else:
        await _describe(pc, await _setup_message(sig, "offer", events), "offer")
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "audio":
                _prefer_opus(transceiver)
        if audio is not None:
            pc.addTrack(audio)
        open_channels(pc)
        await pc.setLocalDescription(await pc.createAnswer())
        wire.attach(pc)
        await sig.relay({"kind": "sdp", "type": "answer", "sdp": pc.localDescription.sdp})
    while not channels_ready():
        if pc.connectionState in ("failed", "closed"):
            raise CallError(_connect_failure(pc))
        await asyncio.sleep(0.02)
    wire.attach(pc)  # sockets made during the checks


async def _setup_message(sig: SignalingClient, want: str, events: CallEvents) -> str:
    """The other peer's SDP of type ``want``; invalid relays are counted and skipped."""
    while True:
        msg = await sig.recv()
        if msg["type"] == "peer-left":
            raise CallError("the other peer left before the call was set up")
        if msg["type"] != "relay":
            continue
        data = msg.get("data")
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind == "refuse":
            raise CallError(f"the other peer refused the call: {str(data.get('reason'))[:500]}")
        sdp = data.get("sdp") if isinstance(data, dict) else None
        if (
            kind == "sdp"
            and data.get("type") == want
            and isinstance(sdp, str)
            and 0 < len(sdp) <= MAX_SDP_BYTES
        ):
            return sdp
        events.bad_setup_messages += 1
        log.warning("ignored a malformed setup message from the other peer")


async def _describe(pc: RTCPeerConnection, sdp: str, kind: str) -> None:
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
    except (ValueError, KeyError, IndexError, TypeError, InvalidStateError) as exc:
        raise CallError(
            f"the other peer's session description ({kind}) is invalid: {exc}"
        ) from None


def _prefer_opus(transceiver: RTCRtpTransceiver) -> None:
    opus = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.name == "opus"]
    transceiver.setCodecPreferences(opus)


def _connect_failure(pc: RTCPeerConnection) -> str:
    dtls = pc.sctp.transport.state if pc.sctp is not None else "?"
    if pc.iceConnectionState == "failed":
        return (
            "could not connect to the other peer: no network path between the two (ICE "
            "failed; behind NAT give a STUN/TURN server with --ice-server)"
        )
    return (
        f"could not connect to the other peer: the secure session failed (ICE "
        f"{pc.iceConnectionState}, DTLS {dtls})"
    )


__all__ = ["PROTOCOL", "Hello", "Meeting", "check_network", "check_peer", "connect", "meet"]
