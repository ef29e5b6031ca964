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
import torch
from _call import needs_host_address, one_torch_thread

from bitstream import KeyframeUnit, KeypointUnit, ParamsUnit, parse_packet
from iwcodec.call import control
from iwcodec.call.halves import CallHooks
from iwcodec.call.loopback import SAMPLE, TOKEN, Peer, run_pair, tiny_model
from iwcodec.call.measure import latency_stats
from iwcodec.call.media import SenderLink
from iwcodec.call.session import CallOptions, run_call
from iwcodec.call.signaling import SignalingClient, SignalingServer
from iwcodec.errors import CallError
from iwcodec.keyframe import decode_keyframe
from receiver.decoder import Decoder
from sender.call import CallSender, SendOptions
from sender.encoder import crop_input
from sender.live import FileSource

#: Long enough for what the calls check: the report's steady part (after its first 3 s), the
#: six pieces of garbage (sent within 2 s) and 20 frames after them; about 35 frames/s arrive.
CALL_SECONDS = 4.5


pytestmark = [needs_host_address, pytest.mark.realtime]


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


class ColourKeypoints(torch.nn.Module):
    """Stands in for the keypoint detector on the sending side: every keypoint moves along x
    with the crop's mean colour, from -0.6 for person A's colours to +0.6 for person B's. The
    tiny random detector's keypoints do not tell two people apart; this one does, from the
    pixels the sender really captured, so the keyframe policy sees the change when the picture
    changes (same weights id and config as ``model``, so the far side accepts the stream)."""

    def __init__(self, model, colour_a: np.ndarray, colour_b: np.ndarray) -> None:
        super().__init__()
        self.model, self.cfg, self.weights_id = model, model.cfg, model.weights_id
        self.a = torch.tensor(colour_a, dtype=torch.float32)  # (3,) mean RGB in [0, 1]
        self.axis = torch.tensor(colour_b - colour_a, dtype=torch.float32)
        k = model.cfg.num_kp
        self.offsets = torch.stack([torch.zeros(k), torch.linspace(-0.5, 0.5, k)], -1)  # (K, 2)

    def parameters(self, recurse: bool = True):
        return self.model.parameters(recurse)

    def detect(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = image.float().mean(dim=(2, 3)).cpu()  # (B, 3)
        u = ((mean - self.a) @ self.axis) / (self.axis @ self.axis)  # (B,): 0 for A, 1 for B
        x = (-0.6 + 1.2 * u).clamp(-0.9, 0.9)
        kp = self.offsets[None].repeat(len(x), 1, 1)  # (B, K, 2)
        kp[..., 0] += x[:, None]
        return kp, torch.full(kp.shape[:2], 0.5)


def joined_clip(path: Path, frames_each: int) -> Path:
    """The bundled sample (person A) then the demo clip (person B), at 35 fps, no gap."""
    demo = SAMPLE.with_name("demo.mp4")
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=35)
        stream.width = stream.height = 256
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": "12"}
        for source in (SAMPLE, demo):
            with av.open(str(source)) as src:
                for i, frame in enumerate(src.decode(video=0)):
                    if i == frames_each:
                        break
                    rgb = frame.to_ndarray(format="rgb24")
                    new = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv444p")
                    out.mux(stream.encode(new))
        out.mux(stream.encode())
    return path


@pytest.mark.slow
def test_a_new_person_mid_call_gets_a_keyframe_within_half_a_second(model, tmp_path):
    """Person A, then person B without a gap (issue 19): the sender's default keyframe policy
    sends a keyframe of B within 0.5 s of the change; the far side shows B's frames rebuilt from
    it (equal to the offline decode of the sent units; the units name B's keyframe, beside A's
    while it is among the 3 nearest), and when the clip loops back to A, A's keyframe is still
    in the set: no third keyframe."""
    n = 60  # frames of each person
    clip = joined_clip(tmp_path / "ab.mp4", n)
    crops = crop_input(clip, model.cfg.image_size).frames.astype(np.float64) / 255
    colour_a, colour_b = crops[:n].mean(axis=(0, 1, 2)), crops[n:].mean(axis=(0, 1, 2))
    detector = ColourKeypoints(model, colour_a, colour_b)
    sent: list[tuple[str, bytes]] = []
    shown: dict[int, np.ndarray] = {}
    a = Peer(model, input=clip, hooks=CallHooks(on_sent=lambda ch, d: sent.append((ch, d))))
    b = Peer(model, hooks=CallHooks(on_shown=lambda f, t: shown.__setitem__(f.index, f.rgb)))
    sender_a = CallSender(detector, FileSource(clip), None, SendOptions())
    ra, rb = asyncio.run(run_pair(a, b, 5.0, senders=(sender_a, b.sender())))
    assert not isinstance(ra, BaseException), ra
    assert not isinstance(rb, BaseException), rb

    units = [u for ch, d in sent if ch in ("kf", "kp") for u in parse_packet(d)]
    keyframes = [u for u in units if isinstance(u, KeyframeUnit)]
    assert len(keyframes) == 2, [k.frame_index for k in keyframes]
    first, second = keyframes
    assert first.frame_index < n <= second.frame_index <= n + 35 // 2  # within 0.5 s
    picture = decode_keyframe(second.data, second.codec).astype(np.float64) / 255
    colour = picture.mean(axis=(0, 1))
    assert np.linalg.norm(colour - colour_b) < np.linalg.norm(colour - colour_a)  # B's face
    after = [
        u
        for u in units
        if isinstance(u, KeypointUnit) and second.frame_index <= u.first_index < 2 * n
    ]
    assert after and all(second.keyframe_id in u.refs for u in after)
    looped = [u for u in units if isinstance(u, KeypointUnit) and u.first_index >= 2 * n + 5]
    assert looped and all(first.keyframe_id in u.refs for u in looped)  # A again: its own

    decoder = Decoder(model, units[0], batch_size=1)
    offline = {f.index: f.rgb for u in units[1:] for f in decoder.push(u) if not f.held}
    of_b = [i for i in shown if second.frame_index <= i < 2 * n]
    assert len(of_b) >= 5, f"only {len(of_b)} frames of person B shown"
    for i in of_b:
        assert np.array_equal(shown[i], offline[i])
