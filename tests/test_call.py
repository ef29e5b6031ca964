"""Live calls: two peers in one process on loopback, through the signaling server.

A tiny random model (64 px) stands in for the trained one: these tests check that what the far
side shows is exactly what an offline decode of the sent units gives, that the statistics are
recorded, and that a call survives a hostile peer; never picture quality. The harness
(``iwcodec.call.loopback``) is the one the measurements in docs/calls.md use.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import av
import numpy as np
import pytest
from _call import needs_host_address, one_torch_thread

from bitstream import KeyframeUnit, ParamsUnit, parse_packet
from iwcodec.call import control
from iwcodec.call.halves import CallHooks
from iwcodec.call.loopback import SAMPLE, TOKEN, Peer, run_pair, tiny_model
from iwcodec.call.measure import latency_stats
from iwcodec.call.media import SenderLink
from iwcodec.call.session import CallOptions, run_call
from iwcodec.call.signaling import SignalingClient, SignalingServer
from iwcodec.errors import CallError
from receiver.decoder import Decoder
from sender.call import CallSender, SendOptions
from sender.live import FileSource

CALL_SECONDS = 6.0


pytestmark = needs_host_address


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("w") / "tiny.safetensors", seed=0)


@pytest.fixture(autouse=True)
def torch_threads():
    # both peers run the model on two threads each, as a call sets up
    with one_torch_thread():
        yield


def read_mkv(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def assert_ended_by_the_clock(*reports) -> None:
    """Each side's clock starts when it joins the call, so the side that joined first reaches
    the duration first and hangs up; the other sees that. Any other ending is a failure."""
    endings = [r.ended for r in reports]
    assert "duration reached" in endings, endings
    assert set(endings) <= {"duration reached", "the other peer hung up"}, endings


@pytest.mark.slow
def test_loopback_call_shows_exactly_the_offline_decode_of_the_sent_units(model, tmp_path):
    sent: list[tuple[str, bytes]] = []
    received: list[tuple[str, bytes]] = []
    shown: dict[int, np.ndarray] = {}
    audio: list[np.ndarray] = []
    a = Peer(model, hooks=CallHooks(on_sent=lambda ch, d: sent.append((ch, d))))
    b = Peer(
        model,
        hooks=CallHooks(
            on_received=lambda ch, d: received.append((ch, d)),
            on_shown=lambda f, t: shown.__setitem__(f.index, f.rgb),
            on_audio=audio.append,
        ),
        record=tmp_path / "a_seen_by_b.mkv",
    )
    ra, rb = asyncio.run(run_pair(a, b, CALL_SECONDS, timeline=True))
    assert not isinstance(ra, BaseException), ra
    assert not isinstance(rb, BaseException), rb
    assert_ended_by_the_clock(ra, rb)
    assert {ra.role, rb.role} == {"offerer", "answerer"}

    # loopback loses nothing: the far side got exactly the messages that were sent
    for channel in ("kp", "kf"):
        mine = sorted(d for ch, d in sent if ch == channel)
        theirs = sorted(d for ch, d in received if ch == channel)
        assert mine == theirs and mine, channel

    # offline decode of the sent units, fresh state, the file decoder's own path
    units = [u for ch, d in sent if ch in ("kf", "kp") for u in parse_packet(d)]
    assert isinstance(units[0], ParamsUnit) and isinstance(units[1], KeyframeUnit)
    decoder = Decoder(model, units[0], batch_size=1)
    offline = {f.index: f.rgb for u in units[1:] for f in decoder.push(u) if not f.held}
    assert len(shown) >= 40, f"only {len(shown)} frames shown in {CALL_SECONDS} s"
    assert set(shown) <= set(offline)
    for index, rgb in shown.items():
        assert np.array_equal(rgb, offline[index]), f"frame {index} differs from the offline decode"
    moving = [i for i in sorted(shown)[1:] if not np.array_equal(shown[i], shown[sorted(shown)[0]])]
    assert moving, "every shown frame is the same picture"

    # the recording holds the shown frames at their places (lossless .mkv)
    recorded = read_mkv(tmp_path / "a_seen_by_b.mkv")
    first = min(shown)
    assert len(recorded) == max(shown) - first + 1
    for index, rgb in shown.items():
        assert np.array_equal(recorded[index - first], rgb)

    # statistics: wire above payload above zero, both directions, audio arrived
    for report in (ra, rb):
        steady = report.summary["steady"]
        for direction in ("sent", "received"):
            wire = steady[f"wire_kbps_{direction}_data"]
            payload = steady[f"payload_kbps_{direction}"]
            assert wire > payload > 0.5, (direction, wire, payload)
        assert steady["wire_kbps_sent_audio"] > 5
        assert steady["fps_shown"] > 5
        totals = report.summary["totals"]
        assert totals["keyframes_sent"] == 1 and totals["rx_keyframes"] == 1
        assert totals["rx_damaged_messages"] == 0
        assert report.summary["sack"]["bundled"] > 0
        assert report.summary["rtt_ms"] is not None
        assert set(report.timeline) == {"capture", "arrival", "ready", "shown"}
    pcm = np.concatenate(audio[20:]).astype(np.float64)  # after the jitter buffer filled
    assert np.sqrt(np.mean(pcm**2)) > 1000, "the tone did not come through"
    latency = latency_stats(ra, rb, skip_s=1.0)
    assert latency["frames"] > 20 and latency["median_ms"] > 0


@pytest.mark.slow
def test_different_weights_are_refused_on_both_sides(model, tmp_path):
    other = tiny_model(tmp_path / "other.safetensors", seed=1)
    assert other.weights_id != model.weights_id

    async def scenario():
        server = SignalingServer(TOKEN)  # run_pair's token
        await server.start()
        try:
            results = await run_pair(Peer(model), Peer(other), 5.0, server=server)
            # the server keeps serving: a next pair meets in the same room
            async with SignalingClient(server.url) as c1, SignalingClient(server.url) as c2:
                await c1.join("room", TOKEN, {"x": 1})
                joined = await c2.join("room", TOKEN, {"x": 2})
                assert joined.peer == {"x": 1}
            return results
        finally:
            await server.stop()

    results = asyncio.run(scenario())
    for exc in results:
        assert isinstance(exc, CallError), exc
        text = str(exc)
        assert "model mismatch" in text or "refused the call" in text
    texts = " ".join(str(e) for e in results)
    assert model.weights_id.hex() in texts and other.weights_id.hex() in texts


def test_wrong_token_is_refused(model):
    async def scenario():
        server = SignalingServer("the-right-token-16")
        url = await server.start()
        try:
            sender = Peer(model).sender()
            options = CallOptions(room="r", signal_url=url, token="wrong", view_port=None)
            with pytest.raises(CallError, match="token"):
                await run_call(options, model, sender)
        finally:
            await server.stop()

    asyncio.run(scenario())


class HostileSender(CallSender):
    """Sends its real stream, and every few messages something a receiver must refuse."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.injected: dict[str, int] = {"media": 0, "control": 0}
        self.last_injection = 0.0

    async def run(self, link, on_error=None) -> None:
        await super().run(_HostileLink(link, self), on_error)


class _HostileLink:
    def __init__(self, link: SenderLink, owner: HostileSender) -> None:
        self.link, self.owner, self.n = link, owner, 0
        self.rng = np.random.default_rng(0)
        params = owner.params
        forged = ParamsUnit(**{**params.__dict__, "weights_id": b"\x01" * 8})
        self.garbage_media = [
            ("kp", self.rng.bytes(40)),  # random bytes
            ("kf", self.rng.bytes(50_000)),  # large and random (it delays only its own sender)
            ("kp", self.rng.bytes(20_000)),  # too large for a keypoint message
            ("kp", KeyframeUnit(0, 0, owner.options.coding.keyframe_codec, b"x" * 50).to_bytes()),
            ("kf", forged.to_bytes()),  # a second, different parameter unit
            ("kp", b"\x8aIW\x03\x05" + b"\x00" * 9),  # a unit header with a bad CRC
        ]
        self.garbage_control = [
            b"\x09\x00",
            b"\x01\x00",
            control.to_bytes(control.Pong(1, 2)) + b"!",
        ]

    def send_reliable(self, data: bytes) -> None:
        self.link.send_reliable(data)

    def send_keypoints(self, data: bytes) -> None:
        self.link.send_keypoints(data)
        self.n += 1
        if self.n % 3 == 0 and self.n // 3 <= len(self.garbage_media):
            channel, junk = self.garbage_media[self.n // 3 - 1]
            channels = self.link.channels
            channels.send(channel, junk)
            self.owner.injected["media"] += 1
            channels.send("ctl", self.garbage_control[self.n // 3 % len(self.garbage_control)])
            channels.send_text("ctl", "text instead of bytes")
            self.owner.injected["control"] += 2
            self.owner.last_injection = time.time()

    def show_local(self, rgb, index) -> None:
        self.link.show_local(rgb, index)


@pytest.mark.slow
def test_a_hostile_peer_does_not_break_the_call(model):
    shown_at: list[float] = []
    hostile = HostileSender(model, FileSource(SAMPLE), None, SendOptions())
    victim = Peer(model, audio="off", hooks=CallHooks(on_shown=lambda f, t: shown_at.append(t)))
    honest_sender = victim.sender()
    rh, rv = asyncio.run(
        run_pair(Peer(model), victim, CALL_SECONDS, senders=(hostile, honest_sender))
    )
    assert not isinstance(rv, BaseException), rv
    assert not isinstance(rh, BaseException), rh
    assert_ended_by_the_clock(rh, rv)
    totals = rv.summary["totals"]
    assert hostile.injected["media"] == 6
    assert totals["rx_damaged_messages"] >= hostile.injected["media"]
    assert totals["bad_control"] >= hostile.injected["control"]
    # frames kept coming after the last piece of garbage
    after = [t for t in shown_at if t > hostile.last_injection + 0.5]
    assert len(after) > 20, f"{len(after)} frames shown after the garbage stopped"
