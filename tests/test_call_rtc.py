"""iwcodec/call/rtc.py on real aiortc connections: the SCTP acknowledgement policies and the wire
counter (plain data channels, no model).

Both peers send a 66-byte message 10 times a second (a 3-frame keypoint unit at 30 fps). Stock
aiortc answers every data packet with a SACK packet of its own; the bundled policy puts the
acknowledgement into the peer's next data packet instead, halving the packets on the wire.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from _call import needs_host_address
from aiortc import RTCPeerConnection

from iwcodec.call.rtc import (
    SackPolicy,
    WireCounter,
    install_sack_policy,
    rtc_configuration,
)

pytestmark = [needs_host_address, pytest.mark.realtime]

RATE, SIZE, SECONDS = 10, 66, 2.0


async def exchange(policy: SackPolicy) -> dict:
    a, b = RTCPeerConnection(rtc_configuration()), RTCPeerConnection(rtc_configuration())
    spec = {"ordered": False, "maxRetransmits": 0, "negotiated": True, "id": 1}
    ca = a.createDataChannel("kp", **spec)
    got = {"a": 0, "b": 0}
    ca.on("message", lambda m: got.__setitem__("a", got["a"] + 1))
    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    cb = b.createDataChannel("kp", **spec)
    cb.on("message", lambda m: got.__setitem__("b", got["b"] + 1))
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)
    wa = WireCounter()
    for _ in range(500):
        if ca.readyState == cb.readyState == "open":
            break
        await asyncio.sleep(0.02)
    assert wa.attach(a)
    adapter = install_sack_policy(a, policy), install_sack_policy(b, policy)
    await asyncio.sleep(0.5)
    before = wa.snapshot()
    start, sent = time.monotonic(), 0
    while time.monotonic() - start < SECONDS:
        ca.send(bytes(SIZE))
        cb.send(bytes(SIZE))
        sent += 1
        await asyncio.sleep(max(0.0, start + sent / RATE - time.monotonic()))
    after = wa.snapshot()
    await asyncio.sleep(0.3)
    seconds = after.t - before.t
    data = {
        direction: (
            after.total(direction, ["dtls"]).packets - before.total(direction, ["dtls"]).packets,
            after.total(direction, ["dtls"]).bytes - before.total(direction, ["dtls"]).bytes,
        )
        for direction in ("sent", "received")
    }
    await a.close()
    await b.close()
    return {
        "pps_sent": data["sent"][0] / seconds,
        "pps_received": data["received"][0] / seconds,
        "kbps_sent": data["sent"][1] * 8 / seconds / 1000,
        "delivered": got,
        "sent": sent,
        "adapters": adapter,
    }


async def side_by_side() -> list[dict]:
    """Both policies at once, on two independent pairs of connections: each pair has its own
    sockets, wire counter and SACK adapters, so the two measure what they would one after the
    other, in the time of one."""
    return await asyncio.gather(exchange(SackPolicy.IMMEDIATE), exchange(SackPolicy.BUNDLED))


@pytest.mark.slow
def test_bundled_acknowledgements_halve_the_packets_on_the_wire():
    stock, bundled = asyncio.run(side_by_side())
    for run in (stock, bundled):
        assert run["delivered"]["a"] >= run["sent"] - 1 and run["delivered"]["b"] >= run["sent"] - 1
    # stock: a data packet and a SACK packet per message; bundled: the data packet only
    assert 1.7 * RATE < stock["pps_sent"] < 2.3 * RATE, stock
    assert 0.9 * RATE < bundled["pps_sent"] < 1.25 * RATE, bundled
    assert 0.9 * RATE < bundled["pps_received"] < 1.25 * RATE, bundled
    assert bundled["adapters"][0].bundled > 0.8 * bundled["sent"]
    # bytes: IP/UDP 28 + DTLS 37 + SCTP 12 + DATA 16 + 68 payload (+ 16 for a bundled SACK)
    assert bundled["kbps_sent"] < 16.0 < stock["kbps_sent"], (bundled, stock)
    per_packet = bundled["kbps_sent"] * 1000 / 8 / bundled["pps_sent"]
    assert 28 + 12 + 16 + 68 + 20 < per_packet < 28 + 12 + 16 + 68 + 16 + 60
