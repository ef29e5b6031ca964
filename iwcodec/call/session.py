"""One peer of a two-party call, from signaling to hang-up: the parts, put together.

:func:`run_call` (a :class:`Call`) does, in order:

1. serves the viewer page (``iwcodec.call.viewer``), if asked;
2. meets the other peer and checks it (``iwcodec.call.negotiation.meet``);
3. builds the receiving half (``receiver.live.LiveReceiver``) and the control loop before any
   channel exists (the other side may send first), then connects one peer connection
   (``negotiation.connect``) with the audio track and the data channels
   (``iwcodec.call.media``), and sets the SCTP acknowledgement policy (``iwcodec.call.rtc``);
4. runs the two halves: the sending half (an :class:`~iwcodec.call.halves.OutgoingHalf`,
   e.g. ``sender.call.CallSender``) writes through a ``media.SenderLink``; arriving media
   go to the receiving half, whose frames the screen (``iwcodec.call.playout``) paces, shows
   and records; the control loop (``iwcodec.call.control_loop``) keeps both streams
   decodable; statistics (``iwcodec.call.stats``) go to the page twice a second;
5. ends on ``duration``, when the other peer hangs up, the input ends or the connection
   fails, and returns a :class:`~iwcodec.call.stats.CallReport`.

Heavy work never runs on the event loop: keypoint detection and coding on the sender's worker
thread, decoding and rendering on the receiver's, JPEG coding and recording on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path

import torch
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack

from codec.model import ImplicitWarpingModel
from iwcodec.call import negotiation, stats
from iwcodec.call.control_loop import ControlLoop
from iwcodec.call.halves import CallHooks, OutgoingHalf
from iwcodec.call.media import CHANNELS, Channels, Inbound, SenderLink, play_audio
from iwcodec.call.playout import Screen
from iwcodec.call.rtc import SackAdapter, SackPolicy, install_sack_policy, rtc_configuration
from iwcodec.call.signaling import SignalingClient
from iwcodec.call.stats import CallReport, CallStats
from iwcodec.call.viewer import Viewer
from iwcodec.errors import CallError, IWCodecError
from receiver.live import LiveReceiver

log = logging.getLogger(__name__)

STATS_INTERVAL = 0.5  # seconds between the page's figures
STATUS_EVERY = 10  # ... and a status line every this many of them


@dataclass(frozen=True)
class CallOptions:
    """How to run one peer.

    Attributes:
        room, signal_url, token: where to meet the other peer (``iwcodec signal``).
        ice_servers: ``stun:``/``turn:`` URLs (``iwcodec.call.rtc.parse_ice_server``); none
            by default.
        view_host, view_port: the viewer page (port 0: any free port; None: no page).
        record: write the other peer's reconstructed video here (.mp4/.mkv).
        duration: hang up after this many seconds of connected call (None: run until the other
            peer hangs up or the process is interrupted).
        wait_timeout: give up if the other peer has not joined by then (None: wait).
        connect_timeout: seconds for offer/answer, ICE and DTLS once both peers are in.
        sack_policy, sack_delay: SCTP acknowledgements (``iwcodec.call.rtc``).
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


def configure_threads(model: ImplicitWarpingModel) -> None:
    """On a CPU the sending and receiving halves run the model on two threads at once; torch's
    own intra-op threads would then fight over the cores (measured: 10-50x slower on 2 cores),
    so each call gets a share of them."""
    if next(model.parameters()).device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))


class Call:
    """State of one running call (see the module docstring)."""

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
        self.hello: negotiation.Hello = {
            "app": "iwcodec",
            "protocol": negotiation.PROTOCOL,
            **outgoing.hello(),
        }
        self.stats = CallStats(tuple(CHANNELS))
        self.viewer = (
            Viewer(options.view_host, options.view_port) if options.view_port is not None else None
        )
        self.channels = Channels(self.stats, self.hooks)
        self.screen = Screen(
            self.stats,
            self.hooks,
            lambda: self.receiver.fps if self.receiver is not None else None,
            self.fail,
            options.record,
            options.timeline,
        )
        self.screen.viewer = self.viewer
        self.receiver: LiveReceiver | None = None
        self.control: ControlLoop | None = None
        self.pc: RTCPeerConnection | None = None
        self.meeting: negotiation.Meeting | None = None
        self._end: asyncio.Future[str] | None = None
        self._error: BaseException | None = None
        self._tasks: list[asyncio.Task] = []
        self._sack: SackAdapter | None = None

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
        self._end = asyncio.get_running_loop().create_future()
        started = time.monotonic()
        ended = "error"
        try:
            if self.viewer is not None:
                self.say(f"viewer at {await self.viewer.start()}")
            async with SignalingClient(self.options.signal_url) as sig:
                self.meeting = await negotiation.meet(
                    sig,
                    self.options.room,
                    self.options.token,
                    self.hello,
                    self.options.wait_timeout,
                    self.say,
                )
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

    async def _connect(self, sig: SignalingClient) -> None:
        assert self.meeting is not None
        self.say("connecting")
        negotiation.check_network(self.options.ice_servers)
        # the receiving half exists before any channel does: the other side may send first
        receiver = self.receiver = LiveReceiver(
            self.model,
            asyncio.get_running_loop(),
            self.screen.on_rendered,
            self.fail,
            timeline=self.options.timeline,
            render=self.options.render,
        )
        receiver.start()
        control = self.control = ControlLoop(
            lambda data: self.channels.send("ctl", data),
            receiver,
            self.outgoing,
            self.stats,
            self.options.ping_interval,
        )
        inbound = Inbound(receiver.push_keypoints, receiver.push_reliable, control.on_message)
        pc = self.pc = RTCPeerConnection(rtc_configuration(self.options.ice_servers))
        pc.on("track", self._on_track)
        await negotiation.connect(
            sig,
            pc,
            self.meeting.role,
            self.outgoing.audio_track,
            lambda pc: self.channels.open(pc, inbound),
            lambda: self.channels.ready,
            self.stats.wire,
            self.stats.events,
        )
        self._sack = install_sack_policy(pc, self.options.sack_policy, self.options.sack_delay)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._spawn(play_audio(track, self.stats, self.viewer, self.hooks))

    def _spawn(self, work: Coroutine[object, object, object]) -> asyncio.Task:
        task = asyncio.ensure_future(work)
        self._tasks.append(task)
        return task

    async def _talk(self, sig: SignalingClient) -> str:
        assert self.pc is not None and self.control is not None and self._end is not None
        self.stats.connected_at = time.time()
        self.pc.on("connectionstatechange", self._on_state)
        self.say("in the call")
        if self.hooks.on_connected is not None:
            self.hooks.on_connected(None if self.viewer is None else self.viewer.url)
        sender = self._spawn(self.outgoing.run(SenderLink(self.channels, self.viewer)))
        sender.add_done_callback(self._sender_done)
        self._spawn(self.control.run())
        self._spawn(self._stats_loop())
        self._spawn(self._signaling_loop(sig))
        try:
            return await asyncio.wait_for(asyncio.shield(self._end), self.options.duration)
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

    async def _stats_loop(self) -> None:
        tick = 0
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            figures = self.live_stats()
            if self.viewer is not None:
                self.viewer.push_stats(figures)
            tick += 1
            if tick % STATUS_EVERY == 0 and self.options.status is not None:
                self.options.status(stats.status_line(figures))

    def live_stats(self) -> stats.Figures:
        """The page's figures now."""
        assert self.receiver is not None
        device = str(next(self.model.parameters()).device)
        return stats.live(
            self.stats, self.outgoing.stats, self.receiver.stats, device, self.outgoing.resilient
        )

    async def _close(self) -> None:
        self.screen.close()  # first: nothing is shown after this, so all shown is recorded
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
        try:
            path = await self.screen.finish_recording()
            if path is not None and self.screen.recorder is not None:
                self.say(f"recorded {self.screen.recorder.frames} frames to {path}")
        except IWCodecError as exc:
            self.fail(exc)
        if self.viewer is not None:
            await self.viewer.stop()

    def _report(self, ended: str, seconds: float) -> CallReport:
        received = self.receiver.stats if self.receiver is not None else None
        summary, series = stats.summary(self.stats, self.outgoing.stats, received)
        if summary:
            summary["sack"] = {
                "policy": self.options.sack_policy.value,
                "bundled": None if self._sack is None else self._sack.bundled,
                "alone": None if self._sack is None else self._sack.alone,
            }
            summary["frames_per_message"] = self.hello.get("frames_per_message")
        timeline = (
            stats.timeline(self.stats, self.outgoing.stats, received)
            if self.options.timeline
            else {}
        )
        return CallReport(
            room=self.options.room,
            role=self.meeting.role if self.meeting is not None else "?",
            ended=ended,
            seconds=seconds,
            peer=self.meeting.peer if self.meeting is not None else {},
            summary={"ended": ended, **summary},
            series=series,
            timeline=timeline,
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


__all__ = ["Call", "CallOptions", "configure_threads", "run_call", "stderr_status"]
