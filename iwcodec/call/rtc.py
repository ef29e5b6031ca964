"""aiortc plumbing for calls: ICE servers, the SCTP acknowledgement policy, byte counting.

Upstream aiortc is used as it is; nothing here replaces a class of it. Two adapters attach to
one peer connection's objects (never to aiortc's classes, so other connections in the process
keep the stock behaviour):

* :func:`install_sack_policy` changes when the SCTP association below the data channels sends
  its selective acknowledgements (SACK). Stock aiortc sends one SACK packet for every packet
  that carried data: at 10 keypoint messages per second that is 10 more packets of 93 bytes
  each way (IP/UDP 28 + DTLS record 37 + SCTP common header 12 + SACK chunk 16), as much as the
  keypoints themselves. ``DELAYED`` waits up to 200 ms (RFC 4960 section 6.2's bound) so one
  SACK covers several packets; ``BUNDLED`` also puts a pending SACK chunk into the next packet
  that carries our own data (RFC 4960 section 6.10 bundling), so in a call, where both sides
  send, acknowledgements cost 16 bytes instead of a packet. docs/calls.md has the measurements.
* :class:`WireCounter` counts the UDP datagrams the ICE sockets send and receive, by kind
  (STUN, DTLS/SCTP, SRTP/SRTCP; RFC 7983 demultiplexing by first byte), adding the IP and UDP
  headers, so "wire kbps" is what a network link carries.

Both reach aiortc / aioice internals (named below). They check that those exist and leave the
connection on stock behaviour (with a warning, or wire counts of ``None``) when an aiortc
release has moved them; the call itself never depends on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.rtcicetransport import parse_stun_turn_uri

from iwcodec.errors import CallError

log = logging.getLogger(__name__)

IPV4_UDP_HEADER = 28  # 20 (IPv4) + 8 (UDP)
IPV6_UDP_HEADER = 48  # 40 (IPv6) + 8 (UDP)
#: RFC 4960 section 6.2: a SACK may be delayed, but by no more than 200 ms.
DEFAULT_SACK_DELAY = 0.2


# ---------------------------------------------------------------------------------- ICE servers


def parse_ice_server(url: str) -> RTCIceServer:
    """``stun:HOST[:PORT]``, ``turn:[USER:PASSWORD@]HOST[:PORT][?transport=udp|tcp]`` or
    ``turns:...`` -> an RTCIceServer; CallError for anything else."""
    scheme, sep, rest = url.partition(":")
    if not sep or scheme not in ("stun", "stuns", "turn", "turns"):
        raise CallError(
            f"ICE server {url!r}: expected stun:HOST[:PORT] or turn:[USER:PASSWORD@]HOST[:PORT]"
        )
    username = credential = None
    if "@" in rest:
        creds, rest = rest.rsplit("@", 1)
        username, sep, credential = creds.partition(":")
        if not sep or not username:
            raise CallError(f"ICE server {url!r}: credentials must be USER:PASSWORD@")
    plain = f"{scheme}:{rest}"
    try:
        parse_stun_turn_uri(plain)
    except ValueError as exc:
        raise CallError(f"ICE server {url!r}: {exc}") from None
    if scheme.startswith("turn") and username is None:
        raise CallError(f"ICE server {url!r}: a TURN server needs USER:PASSWORD@ before the host")
    return RTCIceServer(urls=plain, username=username, credential=credential)


def rtc_configuration(ice_servers: Sequence[str] = ()) -> RTCConfiguration:
    """Peer connection settings: the given ICE servers only (none by default: aiortc would
    otherwise ask a public STUN host), and one bundled transport for audio and data."""
    return RTCConfiguration(
        iceServers=[parse_ice_server(u) for u in ice_servers],
        bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
    )


def can_gather_host_candidates() -> bool:
    """Whether aioice will find an address to offer: it skips 127.0.0.1 (and ::1), so on a
    machine (or network namespace) with nothing but loopback no peer can be reached."""
    import ifaddr

    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and ip.ip != "127.0.0.1":
                return True
            if isinstance(ip.ip, tuple) and ip.ip[0] != "::1" and ip.ip[2] == 0:
                return True
    return False


# ------------------------------------------------------------------------------- SACK policy


class SackPolicy(enum.Enum):
    """When the SCTP association acknowledges received data (see the module docstring)."""

    IMMEDIATE = "immediate"  # aiortc's own: a SACK packet after every packet with data
    DELAYED = "delayed"  # one SACK packet within DEFAULT_SACK_DELAY
    BUNDLED = "bundled"  # DELAYED, and a pending SACK rides in our next data packet


class _Chunks:
    """Several SCTP chunks serialized back to back (each pads itself to 4 bytes), so that
    aiortc's own ``serialize_packet`` writes the common header and checksum around them."""

    def __init__(self, *chunks: object) -> None:
        self.chunks = chunks

    def __bytes__(self) -> bytes:
        return b"".join(bytes(c) for c in self.chunks)


# aiortc internals the policy relies on (RTCSctpTransport, aiortc 1.9 .. 1.16)
_SCTP_ATTRS = (
    "_send_sack",
    "_send_chunk",
    "_sack_needed",
    "_local_port",
    "_remote_port",
    "_remote_verification_tag",
)


class SackAdapter:
    """Per-association replacement of ``_send_sack`` (arm a timer instead of sending) and, for
    BUNDLED, of ``_send_chunk`` (put the pending SACK in front of an outgoing DATA chunk)."""

    def __init__(self, sctp, policy: SackPolicy, delay: float) -> None:
        from aiortc import rtcsctptransport

        self.sctp = sctp
        self.delay = delay
        self.bundle = policy is SackPolicy.BUNDLED
        self._module = rtcsctptransport
        self._send_sack = sctp._send_sack  # bound stock methods
        self._send_chunk = sctp._send_chunk
        self._timer: asyncio.TimerHandle | None = None
        self._captured: object | None = None
        self._capturing = False
        self.bundled = 0  # SACKs that rode along with data
        self.alone = 0  # SACKs sent in a packet of their own
        sctp._send_sack = self.send_sack_later
        sctp._send_chunk = self.send_chunk

    async def send_sack_later(self) -> None:
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        if not self.sctp._sack_needed:
            return
        with contextlib.suppress(ConnectionError):  # the association closed meanwhile
            await self._send_sack()
            self.alone += 1

    async def send_chunk(self, chunk) -> None:
        if self._capturing:
            self._captured = chunk
            return
        if self.bundle and isinstance(chunk, self._module.DataChunk) and self.sctp._sack_needed:
            # The stock builder makes the SACK and hands it to _send_chunk, i.e. back here.
            self._capturing = True
            try:
                await self._send_sack()
            finally:
                self._capturing = False
            sack, self._captured = self._captured, None
            if sack is not None:
                sctp = self.sctp
                packet = self._module.serialize_packet(
                    sctp._local_port,
                    sctp._remote_port,
                    sctp._remote_verification_tag,
                    _Chunks(sack, chunk),  # control chunks go first (RFC 4960 6.10)
                )
                await sctp.transport._send_data(packet)
                self.bundled += 1
                self._cancel_timer()  # acknowledged; new data arms it again
                return
        await self._send_chunk(chunk)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self._cancel_timer()


def install_sack_policy(
    pc: RTCPeerConnection, policy: SackPolicy, delay: float = DEFAULT_SACK_DELAY
) -> SackAdapter | None:
    """Apply ``policy`` to ``pc``'s SCTP association; returns the adapter (its ``bundled`` and
    ``alone`` count SACKs), or None for IMMEDIATE or when aiortc lacks the internals."""
    if policy is SackPolicy.IMMEDIATE or pc.sctp is None:
        return None
    missing = [a for a in _SCTP_ATTRS if not hasattr(pc.sctp, a)]
    if missing:
        log.warning(
            "this aiortc has no %s: SCTP acknowledgements stay immediate (more wire bytes)",
            ", ".join(missing),
        )
        return None
    return SackAdapter(pc.sctp, policy, delay)


# ------------------------------------------------------------------------------ wire counting


def datagram_kind(data: bytes) -> str:
    """RFC 7983: STUN 0..3, DTLS 20..63, RTP/RTCP 128..191."""
    if not data:
        return "other"
    b = data[0]
    if b < 4:
        return "stun"
    if 20 <= b < 64:
        return "dtls"
    if 128 <= b < 192:
        return "srtp"
    return "other"


@dataclass
class Tally:
    packets: int = 0
    bytes: int = 0  # IP and UDP headers included


@dataclass
class WireSnapshot:
    """Totals at one moment: per direction and kind."""

    t: float
    sent: dict[str, Tally] = field(default_factory=dict)
    received: dict[str, Tally] = field(default_factory=dict)

    def total(self, direction: str, kinds: Sequence[str] | None = None) -> Tally:
        table = self.sent if direction == "sent" else self.received
        out = Tally()
        for kind, t in table.items():
            if kinds is None or kind in kinds:
                out.packets += t.packets
                out.bytes += t.bytes
        return out


class WireCounter:
    """Counts every datagram of a peer connection's ICE sockets, IP/UDP headers included.

    Attach once the local description is set (candidates gathered); STUN checks, DTLS and
    SCTP (data channels), SRTP/SRTCP (audio) are told apart by their first byte.
    """

    def __init__(self) -> None:
        self.sent: dict[str, Tally] = {}
        self.received: dict[str, Tally] = {}
        self._wrapped: set[int] = set()
        self.available = False

    def attach(self, pc: RTCPeerConnection) -> bool:
        """Wrap the sockets of ``pc``'s ICE transports (aioice ``Connection._protocols``);
        False when this aioice keeps them elsewhere."""
        for transport in _ice_transports(pc):
            conn = getattr(transport, "_connection", None)
            for protocol in getattr(conn, "_protocols", None) or ():
                if id(protocol) in self._wrapped or getattr(protocol, "transport", None) is None:
                    continue
                self._wrap(protocol)
                self._wrapped.add(id(protocol))
                self.available = True
        return self.available

    def _wrap(self, protocol) -> None:
        host = getattr(getattr(protocol, "local_candidate", None), "host", "") or ""
        header = IPV6_UDP_HEADER if ":" in host else IPV4_UDP_HEADER
        udp = protocol.transport
        sendto = udp.sendto
        received = protocol.datagram_received

        def counted_sendto(data, addr=None):
            self._add(self.sent, data, header)
            return sendto(data, addr)

        def counted_received(data, addr):
            self._add(self.received, data, header)
            return received(data, addr)

        udp.sendto = counted_sendto
        protocol.datagram_received = counted_received

    @staticmethod
    def _add(table: dict[str, Tally], data: bytes, header: int) -> None:
        t = table.setdefault(datagram_kind(data), Tally())
        t.packets += 1
        t.bytes += len(data) + header

    def snapshot(self) -> WireSnapshot:
        def copy(table: dict[str, Tally]) -> dict[str, Tally]:
            return {k: Tally(v.packets, v.bytes) for k, v in table.items()}

        return WireSnapshot(time.monotonic(), copy(self.sent), copy(self.received))


def _ice_transports(pc: RTCPeerConnection) -> list:
    found = {}
    candidates = [pc.sctp.transport if pc.sctp is not None else None]
    for tr in pc.getTransceivers():
        candidates.append(tr.sender.transport)
    for dtls in candidates:
        ice = getattr(dtls, "transport", None)
        if ice is not None:
            found[id(ice)] = ice
    return list(found.values())
