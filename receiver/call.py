"""One peer of a two-party call over WebRTC (aiortc), from signaling to hang-up.

:func:`run_call` does, in order:

1. serves the viewer page (``receiver.viewer``), if asked;
2. joins the room on the signaling server (``receiver.signaling``) and waits for the other
   peer; checks the other peer's *hello*: same model weights (``weights_id``) and an entropy
   table this installation holds. A mismatch ends the call on both sides with a
   :class:`CallError` naming both ids (each side checks, and tells the other why);
3. negotiates one bundled peer connection: an Opus audio transceiver and three pre-negotiated
   data channels,

   | channel | id | delivery | carries |
   |---|---|---|---|
   | ``kp`` | 1 | unordered, no retransmission | KEYPOINTS units, a few frames per message |
   | ``kf`` | 2 | reliable, ordered | the PARAMS unit and KEYFRAME units |
   | ``ctl`` | 3 | unordered, no retransmission | control messages (``receiver.control``) |

   and sets the SCTP acknowledgement policy (``receiver.rtc``);
4. runs the two halves: the *outgoing* half (``sender.call.CallSender``, handed in by the
   caller so that ``receiver`` never imports ``sender``) writes through a link; the incoming
   messages go to :class:`receiver.live.LiveReceiver`, whose frames are paced by
   :class:`receiver.live.Playout`, shown on the page and recorded. A control loop asks the far
   sender for a resync unit while the keypoint chain is broken, for a keyframe when one is
   missing, and measures the round trip;
5. ends on ``duration``, when the other peer hangs up or the connection fails, and returns a
   :class:`CallReport` (statistics, optionally per-frame timelines).

Heavy work never runs on the event loop: keypoint detection and coding on the sender's worker
thread, decoding and rendering on the receiver's, JPEG coding and recording on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.exceptions import InvalidStateError
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from codec.model import ImplicitWarpingModel
from iwcodec.errors import CallError, IWCodecError
from receiver import control
from receiver.control import KeyframeRequest, Ping, Pong, ResyncRequest
from receiver.decoder import shipped_entropy_models
from receiver.live import LiveReceiver, Playout, Recorder, RenderedFrame
from receiver.rtc import (
    SackPolicy,
    WireCounter,
    can_gather_host_candidates,
    install_sack_policy,
    rtc_configuration,
)
from receiver.signaling import SignalingClient
from receiver.viewer import KIND_LOCAL, KIND_REMOTE, Viewer

log = logging.getLogger(__name__)

PROTOCOL = 1  # version of the hello and of the channel layout
CHANNELS = {
    "kp": {"id": 1, "ordered": False, "maxRetransmits": 0},
    "kf": {"id": 2, "ordered": True},
    "ctl": {"id": 3, "ordered": False, "maxRetransmits": 0},
}
MAX_SDP_BYTES = 60_000
STATS_WINDOW = 2.0  # seconds over which the page's rates are computed


class OutgoingHalf(Protocol):
    """What the call needs from the sending half (``sender.call.CallSender`` is one)."""

    audio_track: MediaStreamTrack | None
    stats: Any

    def hello(self) -> dict: ...

    async def run(self, link: Any) -> None: ...

    def request_resync(self, loss_permille: int = 0) -> None: ...

    def request_keyframe(self, keyframe_id: int | None = None) -> None: ...


@dataclass(frozen=True)
class CallOptions:
    """How to run one peer.

    Attributes:
        room, signal_url, token: where to meet the other peer (``iwcodec signal``).
        ice_servers: ``stun:``/``turn:`` URLs (receiver.rtc.parse_ice_server); none by default.
        view_host, view_port: the viewer page (port 0: any free port; None: no page).
        record: write the other peer's reconstructed video here (.mp4/.mkv).
        duration: hang up after this many seconds of connected call (None: run until the other
            peer hangs up or the process is interrupted).
        wait_timeout: give up if the other peer has not joined by then (None: wait).
        connect_timeout: seconds for offer/answer, ICE and DTLS once both peers are in.
        sack_policy, sack_delay: SCTP acknowledgements (receiver.rtc).
        stats_path: write the final :class:`CallReport` there as JSON.
        timeline: keep per-frame capture / arrival / display times in the report.
        ping_interval: seconds between round-trip probes.
        render: False decodes the other side's keypoints but renders nothing (transport
            measurements on a machine too slow to render).
        status: where one-line status messages go (None: nowhere).
    """

    room: str
    signal_url: str
    token: str
    ice_servers: tuple[str, ...] = ()
    view_host: str = "127.0.0.1"
    view_port: int | None = 0
    record: Path | None = None
    duration: float | None = None
    wait_timeout: float | None = None
    connect_timeout: float = 30.0
    sack_policy: SackPolicy = SackPolicy.BUNDLED
    sack_delay: float = 0.2
    stats_path: Path | None = None
    timeline: bool = False
    ping_interval: float = 5.0
    render: bool = True
    status: Callable[[str], None] | None = None


@dataclass
class CallHooks:
    """Observers for tests and measurements (all optional, called on the loop's thread)."""

    on_sent: Callable[[str, bytes], None] | None = None  # channel, message
    on_received: Callable[[str, bytes], None] | None = None
    on_shown: Callable[[RenderedFrame, float], None] | None = None  # frame, display time
    on_connected: Callable[[Call], None] | None = None
    on_audio: Callable[[np.ndarray], None] | None = None  # mono int16 PCM of the other peer


@dataclass
class CallReport:
    """What a call did: ``summary`` (averages), ``series`` (cumulative counters once a second),
    ``timeline`` (per-frame times, when asked)."""

    room: str
    role: str
    ended: str
    seconds: float
    peer: dict
    summary: dict
    series: list[dict] = field(default_factory=list)
    timeline: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)


def configure_threads(model: ImplicitWarpingModel) -> None:
    """On a CPU the sending and receiving halves run the model on two threads at once; torch's
    own intra-op threads would then fight over the cores (measured: 10-50x slower on 2 cores),
    so each call gets a share of them."""
    if next(model.parameters()).device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))


def check_peer(mine: dict, theirs: Any) -> None:
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


def _kbps(nbytes: float, seconds: float) -> float | None:
    return nbytes * 8 / seconds / 1000 if seconds > 0 else None


class _Link:
    """The sending half's way out: data channels and the local preview."""

    def __init__(self, call: Call) -> None:
        self.call = call

    def _send(self, name: str, data: bytes) -> None:
        channel = self.call.channels.get(name)
        if channel is None or channel.readyState != "open":
            return
        try:
            channel.send(data)
        except (InvalidStateError, ConnectionError, ValueError):
            return
        self.call.payload_sent[name] += len(data)
        if self.call.hooks.on_sent is not None:
            self.call.hooks.on_sent(name, data)

    def send_reliable(self, data: bytes) -> None:
        self._send("kf", data)

    def send_keypoints(self, data: bytes) -> None:
        self._send("kp", data)

    def show_local(self, rgb: np.ndarray, index: int) -> None:
        if self.call.viewer is not None:
            self.call.viewer.show(KIND_LOCAL, rgb, index)


class Call:
    """State of one running call (see :func:`run_call`)."""

    def __init__(
        self,
        options: CallOptions,
        model: ImplicitWarpingModel,
        outgoing: OutgoingHalf,
        hooks: CallHooks | None = None,
    ) -> None:
        self.options = options
        self.model = model
        self.outgoing = outgoing
        self.hooks = hooks or CallHooks()
        self.hello = {"app": "iwcodec", "protocol": PROTOCOL, **outgoing.hello()}
        self.viewer: Viewer | None = None
        self.pc: RTCPeerConnection | None = None
        self.channels: dict[str, Any] = {}
        self.wire = WireCounter()
        self.receiver: LiveReceiver | None = None
        self.playout = Playout()
        self.recorder = Recorder(options.record) if options.record else None
        self.role = "?"
        self.peer: dict = {}
        self.payload_sent = {name: 0 for name in CHANNELS}
        self.payload_received = {name: 0 for name in CHANNELS}
        self.counts = {
            "resync_requests_sent": 0,
            "keyframe_requests_sent": 0,
            "resync_requests_received": 0,
            "keyframe_requests_received": 0,
            "bad_control": 0,
            "bad_setup_messages": 0,
            "late_frames": 0,
            "audio_frames": 0,
            "audio_samples": 0,
            "pings": 0,
            "pongs": 0,
        }
        self.rtt: float | None = None
        self.remote_send_delay = 0.0
        self.latency: float | None = None
        self.shown = 0
        self.last_shown = -1
        self._closing = False  # set when the call starts closing: no frame is shown after
        self._shown_times: deque[float] = deque()
        self.shown_at: dict[int, float] = {}
        self.ready_at: dict[int, float] = {}
        self._end: asyncio.Future[str] | None = None
        self._error: BaseException | None = None
        self._tasks: list[asyncio.Task] = []
        self._sack = None
        self._connected_at: float | None = None
        self._series: list[dict] = []

    # ------------------------------------------------------------------------------ helpers
    def say(self, text: str) -> None:
        if self.options.status is not None:
            self.options.status(text)
        if self.viewer is not None:
            self.viewer.set_status(text)

    def finish(self, reason: str) -> None:
        """End the call (idempotent); ``run`` returns with ``reason``."""
        if self._end is not None and not self._end.done():
            self._end.set_result(reason)

    def fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self.finish("error")

    # ------------------------------------------------------------------------------ running
    async def run(self) -> CallReport:
        loop = asyncio.get_running_loop()
        self._end = loop.create_future()
        started = time.monotonic()
        ended = "error"
        try:
            if self.options.view_port is not None:
                self.viewer = Viewer(self.options.view_host, self.options.view_port)
                url = await self.viewer.start()
                self.say(f"viewer at {url}")
            async with SignalingClient(self.options.signal_url) as sig:
                await self._meet(sig)
                await asyncio.wait_for(self._connect(sig), self.options.connect_timeout)
                ended = await self._talk(sig)
        except asyncio.TimeoutError:
            raise CallError(
                f"could not connect to the other peer within {self.options.connect_timeout:.0f} s "
                "(no network path between the peers: give a STUN/TURN server with --ice-server)"
            ) from None
        finally:
            await self._close()
        if self._error is not None:
            raise self._error
        report = self._report(ended, time.monotonic() - started)
        if self.options.stats_path is not None:
            self.options.stats_path.write_text(report.to_json())
        return report

    async def _meet(self, sig: SignalingClient) -> None:
        joined = await sig.join(self.options.room, self.options.token, self.hello)
        peer = joined.peer
        if peer is None:
            self.say(f"waiting for the other peer in room {self.options.room!r}")
            peer = await self._wait_for_peer(sig)
        self.role = "offerer" if joined.peer is not None else "answerer"
        try:
            check_peer(self.hello, peer)
        except CallError as exc:
            with contextlib.suppress(CallError):
                await sig.relay({"kind": "refuse", "reason": str(exc)[:500]})
            raise
        self.peer = peer

    async def _wait_for_peer(self, sig: SignalingClient) -> dict:
        deadline = (
            None
            if self.options.wait_timeout is None
            else time.monotonic() + self.options.wait_timeout
        )
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                msg = await sig.recv(timeout=timeout)
            except asyncio.TimeoutError:
                raise CallError(
                    f"nobody joined room {self.options.room!r} within {self.options.wait_timeout:.0f} s"
                ) from None
            if msg["type"] == "peer":
                return msg.get("hello")

    async def _setup_message(self, sig: SignalingClient, want: str) -> str:
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
            self.counts["bad_setup_messages"] += 1
            log.warning("ignored a malformed setup message from the other peer")

    async def _describe(self, pc: RTCPeerConnection, sdp: str, kind: str) -> None:
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        except (ValueError, KeyError, IndexError, TypeError, InvalidStateError) as exc:
            raise CallError(
                f"the other peer's session description ({kind}) is invalid: {exc}"
            ) from None

    def _add_channels(self, pc: RTCPeerConnection) -> None:
        for name, spec in CHANNELS.items():
            channel = pc.createDataChannel(
                name,
                ordered=spec["ordered"],
                maxRetransmits=spec.get("maxRetransmits"),
                negotiated=True,
                id=spec["id"],
            )
            channel.on("message", lambda data, name=name: self._on_message(name, data))
            self.channels[name] = channel

    @staticmethod
    def _prefer_opus(transceiver) -> None:
        opus = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.name == "opus"]
        transceiver.setCodecPreferences(opus)

    async def _connect(self, sig: SignalingClient) -> None:
        self.say("connecting")
        if not self.options.ice_servers and not can_gather_host_candidates():
            raise CallError(
                "this machine has no network address besides 127.0.0.1, which WebRTC (aioice) "
                "does not offer: connect a network or give a TURN server with --ice-server"
            )
        # the receiver exists before any channel does: the other side may send first
        self.receiver = LiveReceiver(
            self.model,
            asyncio.get_running_loop(),
            self._on_rendered,
            self.fail,
            timeline=self.options.timeline,
            render=self.options.render,
        )
        self.receiver.start()
        pc = self.pc = RTCPeerConnection(rtc_configuration(self.options.ice_servers))
        pc.on("track", self._on_track)
        track = self.outgoing.audio_track
        if self.role == "offerer":
            # audio first: with max-bundle the data channels then share its transport
            transceiver = pc.addTransceiver("audio", direction="sendrecv")
            self._prefer_opus(transceiver)
            if track is not None:
                transceiver.sender.replaceTrack(track)
            self._add_channels(pc)
            await pc.setLocalDescription(await pc.createOffer())
            self.wire.attach(pc)
            await sig.relay({"kind": "sdp", "type": "offer", "sdp": pc.localDescription.sdp})
            await self._describe(pc, await self._setup_message(sig, "answer"), "answer")
        else:
            await self._describe(pc, await self._setup_message(sig, "offer"), "offer")
            for transceiver in pc.getTransceivers():
                if transceiver.kind == "audio":
                    self._prefer_opus(transceiver)
            if track is not None:
                pc.addTrack(track)
            self._add_channels(pc)
            await pc.setLocalDescription(await pc.createAnswer())
            self.wire.attach(pc)
            await sig.relay({"kind": "sdp", "type": "answer", "sdp": pc.localDescription.sdp})
        while not all(c.readyState == "open" for c in self.channels.values()):
            if pc.connectionState in ("failed", "closed"):
                raise CallError(self._connect_failure(pc))
            await asyncio.sleep(0.02)
        self.wire.attach(pc)  # sockets made during the checks
        self._sack = install_sack_policy(pc, self.options.sack_policy, self.options.sack_delay)

    @staticmethod
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

    async def _talk(self, sig: SignalingClient) -> str:
        self._connected_at = time.time()
        self.pc.on("connectionstatechange", self._on_state)
        self.say("in the call")
        if self.hooks.on_connected is not None:
            self.hooks.on_connected(self)
        sender = asyncio.ensure_future(self.outgoing.run(_Link(self)))
        sender.add_done_callback(self._sender_done)
        self._tasks += [
            sender,
            asyncio.ensure_future(self._control_loop()),
            asyncio.ensure_future(self._stats_loop()),
            asyncio.ensure_future(self._signaling_loop(sig)),
        ]
        timeout = self.options.duration
        try:
            return await asyncio.wait_for(asyncio.shield(self._end), timeout)
        except asyncio.TimeoutError:
            return "duration reached"

    def _sender_done(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.fail(
                exc if isinstance(exc, CallError) else CallError(f"the sender stopped: {exc}")
            )
        else:
            self.finish("input ended")

    def _on_state(self) -> None:
        if self.pc is not None and self.pc.connectionState in ("failed", "closed"):
            self.finish("connection lost")

    async def _signaling_loop(self, sig: SignalingClient) -> None:
        while True:
            try:
                msg = await sig.recv()
            except CallError as exc:
                log.info("signaling ended during the call (%s); the call goes on", exc)
                return
            if msg["type"] == "peer-left":
                self.finish("the other peer hung up")
                return

    async def _close(self) -> None:
        # Frames already timed for display (call_later) would otherwise still be shown while
        # the awaits below run, after the recorder has been closed: shown but not recorded.
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._sack is not None:
            self._sack.close()
        if self.receiver is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.receiver.stop)
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await self.pc.close()
        if self.outgoing.audio_track is not None:
            self.outgoing.audio_track.stop()
        if self.recorder is not None:
            try:
                path = await asyncio.get_running_loop().run_in_executor(None, self.recorder.close)
                if path is not None:
                    self.say(f"recorded {self.recorder.frames} frames to {path}")
            except IWCodecError as exc:
                self.fail(exc)
        if self.viewer is not None:
            await self.viewer.stop()

    # --------------------------------------------------------------------------- incoming
    def _on_message(self, name: str, data: bytes | str) -> None:
        # aiortc runs this inside its DTLS receive loop, where an exception would tear the
        # connection down: nothing the other peer sends may raise here
        try:
            self._take_message(name, data)
        except Exception:
            log.exception("a message on channel %s could not be handled", name)
            self.counts["bad_control"] += 1

    def _take_message(self, name: str, data: bytes | str) -> None:
        if isinstance(data, str):
            self.counts["bad_control"] += 1
            return
        self.payload_received[name] += len(data)
        if self.hooks.on_received is not None:
            self.hooks.on_received(name, data)
        if name == "kp":
            self.receiver.push_keypoints(data)
        elif name == "kf":
            self.receiver.push_reliable(data)
        else:
            self._on_control(data)

    def _on_control(self, data: bytes) -> None:
        try:
            msg = control.parse_message(data)
        except CallError:
            self.counts["bad_control"] += 1
            return
        now_ms = int(time.monotonic() * 1000) & 0xFFFFFFFF
        if isinstance(msg, Ping):
            self.remote_send_delay = msg.send_delay_ms / 1000
            self._send_control(Pong(msg.seq, msg.t_ms))
        elif isinstance(msg, Pong):
            rtt = ((now_ms - msg.t_ms) & 0xFFFFFFFF) / 1000
            if rtt < 60:
                self.counts["pongs"] += 1
                self.rtt = rtt if self.rtt is None else self.rtt + 0.3 * (rtt - self.rtt)
        elif isinstance(msg, ResyncRequest):
            self.counts["resync_requests_received"] += 1
            self.outgoing.request_resync(msg.loss_permille)
        elif isinstance(msg, KeyframeRequest):
            self.counts["keyframe_requests_received"] += 1
            self.outgoing.request_keyframe(msg.keyframe_id)

    def _send_control(self, msg: control.ControlMessage) -> None:
        _Link(self)._send("ctl", control.to_bytes(msg))

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._tasks.append(asyncio.ensure_future(self._play_audio(track)))

    async def _play_audio(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels)).mean(axis=1)
            pcm = pcm.astype(np.int16)
            self.counts["audio_frames"] += 1
            self.counts["audio_samples"] += len(pcm)
            if self.viewer is not None:
                self.viewer.push_audio(pcm)
            if self.hooks.on_audio is not None:
                self.hooks.on_audio(pcm)

    # ----------------------------------------------------------------------------- frames
    def _on_rendered(self, frame: RenderedFrame) -> None:
        due = self.playout.due(frame.ready, frame.pts)
        delay = due - time.time()
        asyncio.get_running_loop().call_later(max(0.0, delay), self._show, frame)

    def _show(self, frame: RenderedFrame) -> None:
        if self._closing:
            return
        if frame.index <= self.last_shown:
            self.counts["late_frames"] += 1
            return
        now = time.time()
        self.last_shown = frame.index
        self.shown += 1
        self._shown_times.append(now)
        if self.options.timeline and len(self.shown_at) < 1_000_000:
            self.shown_at[frame.index] = now
            self.ready_at[frame.index] = frame.ready
        # glass to glass without shared clocks: the far side's capture-to-send delay, half the
        # round trip, and our arrival-to-display time
        if self.rtt is not None:
            estimate = self.remote_send_delay + self.rtt / 2 + (now - frame.arrival)
            self.latency = (
                estimate if self.latency is None else self.latency + 0.1 * (estimate - self.latency)
            )
        if self.viewer is not None:
            self.viewer.show(KIND_REMOTE, frame.rgb, frame.index)
        if self.recorder is not None:
            if not self.recorder.is_open and self.receiver.fps is not None:
                h, w = frame.rgb.shape[:2]
                try:
                    self.recorder.open(w, h, self.receiver.fps)
                except IWCodecError as exc:
                    self.fail(exc)
                    return
            self.recorder.add(frame.index, frame.rgb)
        if self.hooks.on_shown is not None:
            self.hooks.on_shown(frame, now)

    # ---------------------------------------------------------------------- control loop
    async def _control_loop(self) -> None:
        last_resync = last_keyframe = last_ping = -math.inf
        seq = 0
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            rx = self.receiver
            # ask again while the chain stays broken, about once per round trip
            if rx.needs_resync and now - last_resync >= max(0.1, self.rtt or 0.2):
                self._send_control(ResyncRequest(rx.loss_permille))
                self.counts["resync_requests_sent"] += 1
                last_resync = now
            if rx.missing_keyframe is not None and now - last_keyframe >= 1.0:
                self._send_control(KeyframeRequest(rx.missing_keyframe))
                self.counts["keyframe_requests_sent"] += 1
                last_keyframe = now
            if now - last_ping >= self.options.ping_interval:
                delay_ms = int(getattr(self.outgoing.stats, "send_delay", 0.0) * 1000)
                self._send_control(Ping(seq & 0xFFFF, int(now * 1000) & 0xFFFFFFFF, delay_ms))
                self.counts["pings"] += 1
                seq += 1
                last_ping = now

    # ----------------------------------------------------------------------------- stats
    def counters(self) -> dict:
        """Cumulative counters now (bytes, packets, frames)."""
        snap = self.wire.snapshot()
        out: dict[str, Any] = {"t": time.time()}
        for direction in ("sent", "received"):
            table = snap.sent if direction == "sent" else snap.received
            for kind, tally in table.items():
                out[f"wire_{direction}_{kind}_bytes"] = tally.bytes
                out[f"wire_{direction}_{kind}_packets"] = tally.packets
        for name in CHANNELS:
            out[f"payload_sent_{name}"] = self.payload_sent[name]
            out[f"payload_received_{name}"] = self.payload_received[name]
        s, r = self.outgoing.stats, self.receiver.stats if self.receiver else None
        out["frames_sent"] = getattr(s, "frames_sent", 0)
        out["keyframes_sent"] = getattr(s, "keyframes", 0)
        out["resync_units_sent"] = getattr(s, "resync_units", 0)
        out["frames_shown"] = self.shown
        if r is not None:
            for key in (
                "frames_decoded",
                "frames_lost",
                "frames_rendered",
                "frames_skipped",
                "keyframes",
                "damaged_messages",
                "resync_units",
                "frames_without_keyframe",
                "early_units",
                "dropped_keyframes",
                "overflow",
            ):
                out[f"rx_{key}"] = getattr(r, key)
        out.update(self.counts)
        return out

    def _rates(self, a: dict, b: dict) -> dict:
        dt = b["t"] - a["t"]

        def diff(*keys: str) -> float:
            return sum(b.get(k, 0) - a.get(k, 0) for k in keys)

        def wire(direction: str, kinds: tuple[str, ...]) -> float | None:
            return _kbps(diff(*(f"wire_{direction}_{k}_bytes" for k in kinds)), dt)

        all_kinds = ("stun", "dtls", "srtp", "other")
        return {
            "payload_kbps_sent": _kbps(diff(*(f"payload_sent_{n}" for n in CHANNELS)), dt),
            "payload_kbps_received": _kbps(diff(*(f"payload_received_{n}" for n in CHANNELS)), dt),
            "payload_kbps_sent_keypoints": _kbps(diff("payload_sent_kp"), dt),
            "wire_kbps_sent": wire("sent", all_kinds),
            "wire_kbps_received": wire("received", all_kinds),
            "wire_kbps_sent_data": wire("sent", ("dtls",)),
            "wire_kbps_received_data": wire("received", ("dtls",)),
            "wire_kbps_sent_audio": wire("sent", ("srtp",)),
            "wire_kbps_received_audio": wire("received", ("srtp",)),
            "wire_packets_per_s_sent": diff(*(f"wire_sent_{k}_packets" for k in all_kinds)) / dt
            if dt > 0
            else None,
            "fps_sent": diff("frames_sent") / dt if dt > 0 else None,
            "fps_shown": diff("frames_shown") / dt if dt > 0 else None,
        }

    def live_stats(self) -> dict:
        now = self.counters()
        self._series.append(now)
        while len(self._series) > 1 and self._series[0]["t"] < now["t"] - 3600:
            self._series.pop(0)
        window = [c for c in self._series if c["t"] >= now["t"] - STATS_WINDOW]
        rates = self._rates(window[0], now) if len(window) > 1 else {}
        r = self.receiver.stats
        device = next(self.model.parameters()).device
        note = ""
        if device.type == "cpu" and r.render_seconds > 0:
            note = (
                f"rendering on the CPU: at most {1 / r.render_seconds:.1f} frames per second "
                "(a GPU renders every frame)"
            )
        return {
            **rates,
            "keyframes_sent": now["keyframes_sent"],
            "keyframes_received": r.keyframes,
            "frames_lost": r.frames_lost,
            "resync_requests": self.counts["resync_requests_sent"],
            "latency_ms": None if self.latency is None else self.latency * 1000,
            "rtt_ms": None if self.rtt is None else self.rtt * 1000,
            "device": str(device),
            "device_note": note,
            "resilient": bool(getattr(self.outgoing, "resilient", False)),
        }

    async def _stats_loop(self) -> None:
        tick = 0
        while True:
            await asyncio.sleep(0.5)
            stats = self.live_stats()
            if self.viewer is not None:
                self.viewer.push_stats(stats)
            tick += 1
            if tick % 10 == 0 and self.options.status is not None:
                self.options.status(_status_line(stats))

    def _report(self, ended: str, seconds: float) -> CallReport:
        series = self._series[::2] if self._series else []  # one per second
        last = self.counters() if self.receiver is not None else {}
        summary: dict[str, Any] = {"ended": ended}
        if series and last:
            summary["whole_call"] = self._rates(series[0], last)
            steady = [c for c in series if c["t"] >= series[0]["t"] + 3.0]
            if steady:
                summary["steady"] = self._rates(steady[0], last)
            summary["totals"] = last
            r = self.receiver.stats
            summary["outages_s"] = list(r.outages)
            summary["render_ms"] = r.render_seconds * 1000
            summary["rtt_ms"] = None if self.rtt is None else self.rtt * 1000
            summary["latency_estimate_ms"] = None if self.latency is None else self.latency * 1000
            summary["sack"] = {
                "policy": self.options.sack_policy.value,
                "bundled": getattr(self._sack, "bundled", None),
                "alone": getattr(self._sack, "alone", None),
            }
            summary["frames_per_message"] = self.hello.get("frames_per_message")
            summary["connected_at"] = self._connected_at  # wall clock, like the timeline
        timeline = {}
        if self.options.timeline:
            timeline = {
                "capture": {
                    str(k): v for k, v in getattr(self.outgoing.stats, "capture_times", {}).items()
                },
                "arrival": {
                    str(k): v
                    for k, v in (self.receiver.stats.arrivals if self.receiver else {}).items()
                },
                "ready": {str(k): v for k, v in self.ready_at.items()},
                "shown": {str(k): v for k, v in self.shown_at.items()},
            }
        return CallReport(
            room=self.options.room,
            role=self.role,
            ended=ended,
            seconds=seconds,
            peer=self.peer,
            summary=summary,
            series=series,
            timeline=timeline,
        )


def _status_line(s: dict) -> str:
    def f(x, d=1):
        return "-" if x is None else f"{x:.{d}f}"

    return (
        f"sent {f(s.get('payload_kbps_sent'), 2)} kbps payload / {f(s.get('wire_kbps_sent_data'), 1)} "
        f"kbps wire (keypoints) / {f(s.get('wire_kbps_sent'), 1)} kbps wire (all); received "
        f"{f(s.get('fps_shown'))} fps shown, latency {f(s.get('latency_ms'), 0)} ms, "
        f"{s.get('frames_lost', 0)} frames lost"
    )


async def run_call(
    options: CallOptions,
    model: ImplicitWarpingModel,
    outgoing: OutgoingHalf,
    hooks: CallHooks | None = None,
) -> CallReport:
    """Run one peer of a call until it ends (see the module docstring); CallError when it is
    refused or breaks."""
    return await Call(options, model, outgoing, hooks).run()


def stderr_status(text: str) -> None:
    print(f"iwcodec call: {text}", file=sys.stderr, flush=True)
