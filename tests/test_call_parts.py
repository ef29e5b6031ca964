"""The pieces of a call without a network: control messages, ICE server options, the peer
check, bundling, playout timing, and the live receiver under loss and resync (an in-memory
channel that drops messages, as aiortc's own tests do for media)."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction

import numpy as np
import pytest
import torch
from _call import one_torch_thread

from bitstream import (
    TIMESCALE,
    ImageCodec,
    KeyframePacer,
    KeyframeUnit,
    KeypointEncoder,
    KeypointFrame,
    pacing,
)
from bitstream.synthetic import synthetic_track
from iwcodec.call import control
from iwcodec.call.loopback import tiny_model
from iwcodec.call.negotiation import PROTOCOL, check_peer
from iwcodec.call.playout import Playout
from iwcodec.call.rtc import datagram_kind, parse_ice_server, rtc_configuration
from iwcodec.errors import CallError
from iwcodec.keyframe import encode_keyframe
from receiver.decoder import Decoder
from receiver.live import LiveReceiver
from sender.call import auto_frames_per_message
from sender.core import Face, SendCore
from sender.encoder import EncodeOptions, entropy_model, stream_params

MESSAGES = [
    control.Ping(7, 123456, 80),
    control.Pong(65535, 2**32 - 1),
    control.ResyncRequest(1000),
    control.KeyframeRequest(3),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_control_messages_round_trip_and_refuse_every_truncation(msg):
    data = control.to_bytes(msg)
    assert control.parse_message(data) == msg
    parsed, rest = control.parse(data + b"tail")
    assert parsed == msg and bytes(rest) == b"tail"
    for cut in range(len(data)):
        with pytest.raises(CallError):
            control.parse_message(data[:cut])
    with pytest.raises(CallError, match="trailing"):
        control.parse_message(data + b"\x00")


def test_control_messages_refuse_junk():
    with pytest.raises(CallError, match="unknown type"):
        control.parse_message(b"\x63\x00\x00")
    with pytest.raises(CallError, match="out of range"):
        control.parse_message(b"\x03\x03\xe9")  # loss 1001 per mille
    with pytest.raises(CallError, match="at most"):
        control.parse_message(b"\x01" * 100)
    assert control.to_bytes(control.Ping(1, 2, 10**9)) == control.to_bytes(
        control.Ping(1, 2, 65535)
    )


def test_ice_servers_from_options():
    assert rtc_configuration().iceServers == []  # never a public STUN host by default
    stun = parse_ice_server("stun:stun.example.org:3478")
    assert stun.urls == "stun:stun.example.org:3478" and stun.username is None
    turn = parse_ice_server("turn:alice:pa:ss@turn.example.org:3478?transport=tcp")
    assert (turn.urls, turn.username, turn.credential) == (
        "turn:turn.example.org:3478?transport=tcp",
        "alice",
        "pa:ss",
    )
    for bad in ("http://x", "stun", "turn:turn.example.org", "stun:a:b:c", "turn:@host"):
        with pytest.raises(CallError):
            parse_ice_server(bad)


def test_datagram_kinds():
    assert datagram_kind(b"\x00\x01") == "stun"
    assert datagram_kind(b"\x17\xfe\xfd") == "dtls"
    assert datagram_kind(b"\x80\x6f") == "srtp"
    assert datagram_kind(b"") == "other"


def test_peer_check_names_what_differs():
    mine = {"protocol": PROTOCOL, "weights_id": "aa" * 8, "entropy_id": None}
    from receiver.decoder import shipped_entropy_models

    held = next(iter(shipped_entropy_models())).hex()
    mine["entropy_id"] = held
    check_peer(mine, dict(mine))
    with pytest.raises(CallError, match="not an iwcodec peer"):
        check_peer(mine, ["garbage"])
    with pytest.raises(CallError, match="protocol"):
        check_peer(mine, {**mine, "protocol": 99})
    with pytest.raises(CallError, match=f"model mismatch.*{'aa' * 8}.*{'bb' * 8}"):
        check_peer(mine, {**mine, "weights_id": "bb" * 8})
    with pytest.raises(CallError, match="entropy table 0123"):
        check_peer(mine, {**mine, "entropy_id": "0123"})


def test_automatic_bundling_keeps_messages_at_ten_per_second():
    assert [auto_frames_per_message(f) for f in (10, 24, 25, 30, 35, 60)] == [1, 3, 3, 3, 4, 6]
    assert auto_frames_per_message(30000 / 1001) == 3


def test_playout_spreads_bundled_frames_at_the_stream_rate():
    fps, n, path = 30, 3, 0.02
    play = Playout()

    def capture(i: int) -> float:
        return 1000.0 + i / fps

    def pts(i: int) -> int:
        return round(i * TIMESCALE / fps)

    shown = []
    for k in range(60):  # a bundle of n frames, ready together once its last one is captured
        ready = capture(k * n + n - 1) + path
        shown += [play.due(ready, pts(i)) for i in range(k * n, k * n + n)]
    steps = np.diff(shown[30:])
    assert np.allclose(steps, 1 / fps, atol=1e-3), steps[:10]
    # each frame waits for its bundle ((n - 1) frame periods) and the path, not more
    latency = np.array(shown[30:]) - np.array([capture(i) for i in range(30, len(shown))])
    expected = (n - 1) / fps + path
    assert np.all(latency >= expected - 1e-6) and np.all(latency < expected + 0.01), latency[:5]

    # a 0.5 s stall (the renderer, or the path, hiccups): the frames behind it are shown late,
    # then the delay comes back down within a few seconds instead of staying up
    ready_prev = 0.0
    late_shown = []
    for k in range(60, 240):
        arrival = capture(k * n + n - 1) + path + (0.5 if k == 70 else 0.0)
        ready_prev = max(arrival, ready_prev)  # one worker: frames are ready in order
        late_shown += [(i, play.due(ready_prev, pts(i))) for i in range(k * n, k * n + n)]
    delay = {i: t - capture(i) for i, t in late_shown}
    assert max(delay.values()) > 0.5  # the stalled frames waited
    assert all(t >= capture(i) for i, t in late_shown)
    assert delay[239 * n] < expected + 0.05  # 5 s later the delay is back down


@pytest.fixture(autouse=True)
def torch_threads():
    # two threads (worker, test) share the cores, as in a call
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("w") / "tiny.safetensors")


def run_receiver(model, messages, answer_resync):
    """Feed (channel, bytes) messages to a LiveReceiver in order; ``answer_resync()`` is called
    after each one while the receiver wants a resync. Returns rendered frames and stats."""
    frames = {}

    async def scenario():
        loop = asyncio.get_running_loop()
        errors = []
        rx = LiveReceiver(model, loop, lambda f: frames.__setitem__(f.index, f), errors.append)
        rx.start()
        try:
            for pushed, (channel, data) in enumerate(messages(), start=1):
                if channel == "kf":
                    rx.push_reliable(data)
                else:
                    rx.push_keypoints(data)
                await idle(rx, pushed)
                if rx.needs_resync:
                    answer_resync()
        finally:
            rx.stop()
        await asyncio.sleep(0)
        assert not errors, errors
        return rx

    async def idle(rx, pushed):
        # the worker renders a message's frames before it takes the next one
        for _ in range(5000):
            if rx.handled == pushed and not rx._pending:
                return
            await asyncio.sleep(0.001)
        raise AssertionError("the receiver did not keep up")

    rx = asyncio.run(scenario())
    return frames, rx


def live_stream(model, seed: int, frames: int):
    """A 30 frames/s stream with the default options, as the live receiver tests feed it: the
    parameter unit, a synthetic track (frames, K, 3), a PNG keyframe of noise (id 0) and a
    keypoint encoder that sends no periodic resync (the tests choose what is lost)."""
    table = entropy_model(EncodeOptions())
    params = stream_params(model, Fraction(30), EncodeOptions(), table)
    rng = np.random.default_rng(seed)
    track = synthetic_track(rng, frames, model.cfg.num_kp)
    image = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    keyframe = KeyframeUnit(0, 0, ImageCodec.PNG, encode_keyframe(image, ImageCodec.PNG))
    return params, track, keyframe, KeypointEncoder(params, table, resync_period=10_000)


def test_live_receiver_recovers_through_resync_and_matches_the_offline_decode(model):
    torch.manual_seed(0)
    params, track, keyframe, encoder = live_stream(model, seed=1, frames=60)  # track (60, K, 3)
    dropped = {4, 11, 12}  # a lone loss and a burst
    delivered = [params, keyframe]

    def messages():
        yield "kf", params.to_bytes() + keyframe.to_bytes()
        for u in range(20):
            frames = [
                KeypointFrame(i, params.nominal_pts(i), track[i], (0,))
                for i in range(3 * u, 3 * u + 3)
            ]
            unit = encoder.encode(frames)
            if u in dropped:
                continue
            delivered.append(unit)
            yield "kp", unit.to_bytes()

    frames, rx = run_receiver(model, messages, encoder.request_resync)
    # lost: the dropped units and the ones after them until the requested resync arrived
    lost = {i for u in dropped for i in range(3 * u, 3 * u + 3)}
    assert rx.stats.frames_lost >= len(lost)
    assert len(rx.stats.outages) == 2
    decoder = Decoder(model, params, batch_size=1)
    offline = {f.index: f.rgb for unit in delivered[1:] for f in decoder.push(unit) if not f.held}
    assert set(frames) == set(offline)
    assert 60 - len(frames) == rx.stats.frames_lost
    for index, f in frames.items():
        assert np.array_equal(f.rgb, offline[index])
    # every chain break cost exactly one unit beyond the dropped ones: the next is a resync
    assert rx.stats.frames_lost == len(lost) + 3 * 2


def test_send_core_decides_the_units_of_a_call(model):
    """What the call sender gets from the send core: the parameter unit first, a keypoint
    unit the moment its last frame is in, keyframes within the sender's pacing (a face that
    comes back before a keyframe may go is sent as no face), and in resilient mode every
    keypoint unit a resync unit."""
    options = EncodeOptions(keyframe_codec=ImageCodec.PNG)
    table = entropy_model(options)
    params = stream_params(model, Fraction(30), options, table)
    core = SendCore(
        params,
        table,
        frames_per_unit=3,
        resync_period=options.resync_period,
        keyframe_codec=options.keyframe_codec,
        keyframe_quality=options.keyframe_quality,
        pacer=KeyframePacer(pacing.SENDER),
    )
    rng = np.random.default_rng(4)
    track = synthetic_track(rng, 40, model.cfg.num_kp)  # (40, K, 3)
    crop = (rng.random((64, 64, 3)) * 255).astype(np.uint8)

    def face(i: int) -> Face:
        return Face(crop, track[i])

    def kinds(units) -> list[str]:
        return [type(u).__name__ for u in units]

    assert core.start() == [params]
    assert kinds(core.frame(0, 0, face(0), t=0.0)) == ["KeyframeUnit"]
    assert core.frame(1, 1, face(1), t=0.03) == []
    (unit,) = core.frame(2, 2, face(2), t=0.06)  # the unit is out with its last frame
    assert list(unit.indices) == [0, 1, 2] and unit.resync
    # a requested keyframe spends the second token of the burst
    assert kinds(core.frame(3, 3, face(3), keyframe=True, t=0.1)) == ["KeyframeUnit"]
    assert not core.keyframe_ready(0.2)
    # the face leaves and comes back at once: no keyframe may go yet, so it stays "no face"
    out = core.frame(4, 4, None, t=0.2)  # ends the face segment: its unit goes out
    assert kinds(out) == ["KeypointUnit"] and list(out[0].indices) == [3]
    assert not core.takes_face(0.3)
    assert kinds(core.frame(5, 5, face(5), t=0.3)) == []
    assert kinds(core.frame(6, 6, face(6), t=1.6)) == ["NoFaceUnit", "KeyframeUnit"]
    # resilient: every keypoint unit a resync unit; else only after the period
    core.frame(7, 7, face(7), t=1.7)
    core.frame(8, 8, face(8), t=1.8)
    plain = [u for i in range(9, 30) for u in core.frame(i, i, face(i), t=2.0)]
    assert [u.resync for u in plain] == [False] * 7
    assert all(u.refs == (2,) for u in plain)  # the face that came back: its own keyframe only
    core.resilient = True
    tough = [u for i in range(30, 39) for u in core.frame(i, i, face(i), t=3.0)]
    assert len(tough) == 3 and all(u.resync for u in tough)
    core.resilient = False
    core.request_resync()
    assert [u.resync for u in core.frame(39, 39, face(39), t=3.0) + core.flush()] == [True]


def test_live_receiver_shows_no_face_frames_as_the_senders_fill(model):
    """Face, face lost, face back (a new keyframe): the live receiver shows the lost stretch
    blank, never a face rendered from the old keyframe, and the rest as the file decoder."""
    params = stream_params(model, Fraction(30), EncodeOptions(), entropy_model(EncodeOptions()))
    core = SendCore(
        params,
        entropy_model(EncodeOptions()),
        frames_per_unit=3,
        resync_period=30,
        keyframe_codec=ImageCodec.PNG,
        keyframe_quality=90,
    )
    rng = np.random.default_rng(3)
    track = synthetic_track(rng, 18, model.cfg.num_kp)  # (18, K, 3)
    faces = [(rng.random((64, 64, 3)) * 255).astype(np.uint8) for _ in range(2)]
    units = []
    for i in range(18):
        face = None if 6 <= i < 12 else Face(faces[i // 12], track[i])
        units += core.frame(i, params.nominal_pts(i), face)
    units += core.flush()
    assert [type(u).__name__ for u in units].count("KeyframeUnit") == 2

    def messages():
        yield "kf", params.to_bytes()
        for u in units:
            yield ("kf" if isinstance(u, KeyframeUnit) else "kp"), u.to_bytes()

    frames, rx = run_receiver(model, messages, lambda: None)
    assert sorted(frames) == list(range(18)), rx.stats and rx.stats.frames_no_face == 6
    decoder = Decoder(model, params, batch_size=1)
    offline = {f.index: f for unit in units for f in decoder.push(unit)}
    for i in range(18):
        assert np.array_equal(frames[i].rgb, offline[i].rgb), i
        assert (frames[i].rgb.max() == 0) == (6 <= i < 12) == offline[i].no_face, i


def test_live_receiver_refuses_junk_and_a_stream_for_other_weights(model, tmp_path):
    other = tiny_model(tmp_path / "other.safetensors", seed=5)
    params = stream_params(other, Fraction(30), EncodeOptions(), entropy_model(EncodeOptions()))

    async def scenario():
        loop = asyncio.get_running_loop()
        errors: list[BaseException] = []
        rx = LiveReceiver(model, loop, lambda f: None, errors.append)
        rx.start()
        rx.push_keypoints(b"garbage")
        rx.push_keypoints(b"\x8aIW" + bytes(10_000))
        rx.push_reliable(b"\x8aIW\x01")
        rx.push_reliable(params.to_bytes())
        for _ in range(500):
            if errors:
                break
            await asyncio.sleep(0.01)
        rx.stop()
        return rx, errors

    rx, errors = asyncio.run(scenario())
    assert rx.stats.damaged_messages == 3
    assert len(errors) == 1 and isinstance(errors[0], CallError)
    assert "does not fit this model" in str(errors[0]) and other.weights_id.hex() in str(errors[0])


def test_live_receiver_skips_to_the_newest_frames_when_rendering_is_slow(model):
    params = stream_params(model, Fraction(30), EncodeOptions(), entropy_model(EncodeOptions()))
    table = entropy_model(EncodeOptions())
    track = synthetic_track(np.random.default_rng(2), 60, model.cfg.num_kp)
    image = (np.random.default_rng(3).random((64, 64, 3)) * 255).astype(np.uint8)
    keyframe = KeyframeUnit(0, 0, ImageCodec.PNG, encode_keyframe(image, ImageCodec.PNG))
    encoder = KeypointEncoder(params, table)
    shown: list[int] = []

    async def scenario():
        loop = asyncio.get_running_loop()
        rx = LiveReceiver(model, loop, lambda f: shown.append(f.index), lambda e: None)
        slow_render = rx._render_next

        def render_slowly():
            time.sleep(0.02)  # a renderer slower than the messages come
            slow_render()

        rx._render_next = render_slowly
        rx.start()
        rx.push_reliable(params.to_bytes() + keyframe.to_bytes())
        for u in range(20):
            frames = [
                KeypointFrame(i, params.nominal_pts(i), track[i], (0,))
                for i in range(3 * u, 3 * u + 3)
            ]
            rx.push_keypoints(encoder.encode(frames).to_bytes())
        for _ in range(300):
            await asyncio.sleep(0.01)
            if rx._inbox.empty() and not rx._pending:
                break
        rx.stop()
        await asyncio.sleep(0.01)
        return rx

    rx = asyncio.run(scenario())
    assert rx.stats.frames_decoded == 60
    assert rx.stats.frames_skipped > 0
    assert shown == sorted(shown) and shown[-1] == 59
    assert rx.stats.frames_rendered + rx.stats.frames_skipped == 60


def test_no_frame_is_shown_after_the_call_starts_closing(tmp_path):
    """A frame timed for display just as the call closes must not be shown after the recorder
    has finished: every shown frame is in the recording."""
    from types import SimpleNamespace

    import av

    from iwcodec.call.halves import CallHooks
    from iwcodec.call.session import Call, CallOptions
    from receiver.live import RenderedFrame

    shown = []
    outgoing = SimpleNamespace(audio_track=None, stats=None, hello=lambda: {})
    options = CallOptions(
        room="r", signal_url="ws://x", token="t", view_port=None, record=tmp_path / "r.mkv"
    )
    call = Call(options, None, outgoing, CallHooks(on_shown=lambda f, t: shown.append(f.index)))
    call.receiver = SimpleNamespace(fps=Fraction(25), stop=lambda: None)
    rgb = np.zeros((16, 16, 3), np.uint8)

    def frame(i):
        return RenderedFrame(index=i, pts=i * 3600, rgb=rgb + i, arrival=0.0, ready=0.0)

    async def scenario():
        call.screen.show(frame(0))
        asyncio.get_running_loop().call_later(0, call.screen.show, frame(1))  # due during the close
        await call._close()

    asyncio.run(scenario())
    assert shown == [0]
    with av.open(str(tmp_path / "r.mkv")) as c:
        assert len(list(c.decode(video=0))) == len(shown)


def test_live_receiver_asks_for_the_keyframe_it_lacks_not_one_it_holds(model, monkeypatch):
    """Units that name keyframes 5 and 0 when only 0 arrived: nothing is rendered from a set
    that lacks 5, and the receiver asks for 5 (after the grace period, here none)."""
    import receiver.live

    monkeypatch.setattr(receiver.live, "KEYFRAME_GRACE", 0.0)
    params, track, keyframe, encoder = live_stream(model, seed=2, frames=9)  # track (9, K, 3)

    def messages():
        yield "kf", params.to_bytes() + keyframe.to_bytes()
        for u in range(3):
            frames = [
                KeypointFrame(i, params.nominal_pts(i), track[i], (5, 0))
                for i in range(3 * u, 3 * u + 3)
            ]
            yield "kp", encoder.encode(frames).to_bytes()

    frames, rx = run_receiver(model, messages, encoder.request_resync)
    assert frames == {} and rx.stats.frames_without_keyframe > 0
    assert rx.missing_keyframe == 5
