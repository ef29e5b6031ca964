"""The control loop: how each peer keeps the other's stream decodable, and times the path.

Outgoing, every 50 ms, from the receiving half's state (``receiver.live.LiveReceiver``):

* while the keypoint chain is broken, ``RESYNC`` (with the recent loss), again about once per
  round trip (at least every 100 ms) until a resync unit arrives;
* while frames refer to a keyframe that is missing, ``KEYFRAME`` naming it, once a second;
* every ``ping_interval`` seconds a ``PING`` carrying this sender's capture-to-send delay.

Incoming, the other peer's requests go to the sending half (``request_resync``,
``request_keyframe``: it decides when to answer), a ``PING`` is answered with a ``PONG``, and a
``PONG`` gives the round trip. Messages are ``iwcodec.call.control``'s; the numbers go to
``iwcodec.call.stats.CallStats``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from iwcodec.call import control
from iwcodec.call.control import KeyframeRequest, Ping, Pong, ResyncRequest
from iwcodec.call.halves import OutgoingHalf
from iwcodec.call.stats import CallStats
from iwcodec.errors import CallError
from receiver.live import LiveReceiver

TICK = 0.05  # seconds between looks at the receiving half
MIN_RESYNC_INTERVAL = 0.1  # ... and RESYNC at most this often, else once per round trip
KEYFRAME_REQUEST_INTERVAL = 1.0
MAX_RTT = 60.0  # a PONG later than this is not a round trip but a stale echo


def _now_ms() -> int:
    return int(time.monotonic() * 1000) & 0xFFFFFFFF


class ControlLoop:
    """Both directions of the ``ctl`` channel for one call (see the module docstring).

    Args:
        send: writes one control message's bytes on the ``ctl`` channel.
        receiving: this peer's receiving half (read: does it need a resync or a keyframe?).
        outgoing: this peer's sending half (told what the other peer asks for).
        stats: where requests, pings, the round trip and bad messages are counted.
        ping_interval: seconds between round-trip probes.
    """

    def __init__(
        self,
        send: Callable[[bytes], None],
        receiving: LiveReceiver,
        outgoing: OutgoingHalf,
        stats: CallStats,
        ping_interval: float,
    ) -> None:
        self._send = send
        self.receiving = receiving
        self.outgoing = outgoing
        self.stats = stats
        self.ping_interval = ping_interval

    def send(self, msg: control.ControlMessage) -> None:
        self._send(control.to_bytes(msg))

    # ------------------------------------------------------------------------------ incoming
    def on_message(self, data: bytes) -> None:
        """One message from the ``ctl`` channel; malformed ones are counted and dropped."""
        try:
            msg = control.parse_message(data)
        except CallError:
            self.stats.events.bad_control += 1
            return
        events = self.stats.events
        if isinstance(msg, Ping):
            self.stats.remote_send_delay = msg.send_delay_ms / 1000
            self.send(Pong(msg.seq, msg.t_ms))
        elif isinstance(msg, Pong):
            rtt = ((_now_ms() - msg.t_ms) & 0xFFFFFFFF) / 1000
            if rtt < MAX_RTT:
                events.pongs += 1
                self.stats.smooth_rtt(rtt)
        elif isinstance(msg, ResyncRequest):
            events.resync_requests_received += 1
            self.outgoing.request_resync(msg.loss_permille)
        elif isinstance(msg, KeyframeRequest):
            events.keyframe_requests_received += 1
            self.outgoing.request_keyframe(msg.keyframe_id)

    # ------------------------------------------------------------------------------ outgoing
    async def run(self) -> None:
        """Ask for what the receiving half lacks, and probe the round trip, until cancelled."""
        last_resync = last_keyframe = last_ping = -math.inf
        seq = 0
        events = self.stats.events
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            rx = self.receiving
            if rx.needs_resync and now - last_resync >= max(
                MIN_RESYNC_INTERVAL, self.stats.rtt or 2 * MIN_RESYNC_INTERVAL
            ):
                self.send(ResyncRequest(rx.loss_permille))
                events.resync_requests_sent += 1
                last_resync = now
            missing = rx.missing_keyframe
            if missing is not None and now - last_keyframe >= KEYFRAME_REQUEST_INTERVAL:
                self.send(KeyframeRequest(missing))
                events.keyframe_requests_sent += 1
                last_keyframe = now
            if now - last_ping >= self.ping_interval:
                delay_ms = int(self.outgoing.stats.send_delay * 1000)
                self.send(Ping(seq & 0xFFFF, int(now * 1000) & 0xFFFFFFFF, delay_ms))
                events.pings += 1
                seq += 1
                last_ping = now


__all__ = ["ControlLoop"]
