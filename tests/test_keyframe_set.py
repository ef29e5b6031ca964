"""Closed-loop keyframes (sender/keyframes.py, sender/core.py) and the receiver's keyframe set
(receiver/sources.py): ids and slots agree on both sides, the set stays bounded, loss never
shows a wrong picture, and the policies send keyframes where they should.

A tiny random model (64 px) stands in for the trained one: no reconstruction quality here.
"""

from __future__ import annotations

import functools
import io
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from _media import short_clip, tiny_weights

from bitstream import (
    KEYFRAME_SLOTS,
    BitstreamWarning,
    KeyframeUnit,
    KeypointDecoder,
    KeypointUnit,
    dequantize,
    keyframe_slot,
    read_units,
)
from bitstream.quant import steps_vector
from codec.weights import load_model
from iwcodec.errors import UsageError
from iwcodec.keyframe import decode_keyframe, encode_keyframe
from receiver.decoder import DecodeOptions, Decoder, decode_frames, find_entropy_model
from receiver.sources import SourceSet
from sender.core import Face, SendCore
from sender.encoder import EncodeOptions, crop_input, encode_frames, entropy_model, stream_params
from sender.keyframes import (
    BudgetKeyframes,
    FixedKeyframes,
    IntervalKeyframes,
    KeyframeSet,
    QualityKeyframes,
    pose_distance,
)

K = 10


def kp(x: float, y: float = 0.0) -> np.ndarray:
    """(K, 3) keypoints all at (x, y), strength 0.5."""
    return np.tile(np.array([x, y, 0.5], np.float32), (K, 1))


# -- the sender's mirror ------------------------------------------------------------------------


def test_pose_distance_is_in_crop_pixels() -> None:
    d = pose_distance(kp(0.0), np.stack([kp(0.0), kp(0.5), kp(0.0, -0.25)]), size=256)
    np.testing.assert_allclose(d, [0.0, 64.0, 32.0])


def test_ids_fill_free_slots_in_order_then_replace_the_least_recently_used() -> None:
    s = KeyframeSet(size=3, refs=1, image_size=256)
    for i, x in enumerate([0.0, 0.5, -0.5]):
        kid = s.next_id()
        assert kid == i  # free slots: a stream numbered 0, 1, 2, ...
        s.add(kid, kp(x), index=10 * i)
    # frames near keyframes 0 and 2 use them; keyframe 1 becomes the least recently used
    assert s.choose_refs(kp(0.02), 40) == (0,)
    assert s.choose_refs(kp(-0.48), 41) == (2,)
    new = s.next_id()
    assert keyframe_slot(new) == keyframe_slot(1) and new > 2
    s.add(new, kp(0.9), 50)
    assert sorted(s.ids) == sorted([0, new, 2])


def test_refs_are_the_nearest_in_pose_with_hysteresis() -> None:
    s = KeyframeSet(size=4, refs=2, image_size=256)
    for i, x in enumerate([-0.6, -0.2, 0.2, 0.6]):
        s.add(s.next_id(), kp(x), i)
    assert s.choose_refs(kp(-0.5), 10) == (0, 1)
    # slightly nearer to keyframes 1 and 2 than to 0 and 1: kept (no flapping) ...
    assert s.choose_refs(kp(-0.05), 11) == (0, 1)
    # ... until a keyframe is clearly nearer than the refs in use
    assert s.choose_refs(kp(0.55), 12) == (2, 3)


def test_a_new_face_segment_refers_only_to_its_own_keyframes_and_replaces_old_ones_first() -> None:
    s = KeyframeSet(size=2, refs=3, image_size=256)
    s.add(s.next_id(), kp(0.0), 0)
    s.add(s.next_id(), kp(0.3), 5)
    s.choose_refs(kp(0.0), 6)  # keyframe 0 used most recently
    s.new_segment()
    assert s.distance(kp(0.0)) == float("inf")  # nothing to estimate from: a keyframe is due
    with pytest.raises(ValueError):
        s.choose_refs(kp(0.0), 7)
    a = s.next_id()
    s.add(a, kp(0.0), 8)
    b = s.next_id()  # the other old keyframe goes before the new segment's own
    assert keyframe_slot(b) != keyframe_slot(a)
    s.add(b, kp(0.5), 9)
    assert set(s.choose_refs(kp(0.1), 10)) == {a, b}


def test_set_size_and_refs_are_checked() -> None:
    with pytest.raises(UsageError):
        KeyframeSet(size=KEYFRAME_SLOTS + 1)
    with pytest.raises(UsageError):
        KeyframeSet(refs=4)


# -- policies -----------------------------------------------------------------------------------


def test_fixed_interval_and_quality_policies() -> None:
    fixed = FixedKeyframes((0, 10, 20))
    assert [i for i in range(25) if fixed.due(i, i / 10, 0.0)] == [0, 10, 20]
    fixed = FixedKeyframes((0, 10))  # a frame without a face at 10: the next face frame
    assert [i for i in (0, 5, 12, 13) if fixed.due(i, 0.0, 0.0)] == [0, 12]

    every = IntervalKeyframes(1.0)
    sent = []
    for i in range(100):
        if every.due(i, i / 25, 0.0):
            every.sent(i, i / 25, 1000)
            sent.append(i)
    assert sent == [0, 25, 50, 75]

    q = QualityKeyframes(max_distance=5.0, min_seconds=1.0)
    assert not q.due(0, 0.0, 4.9)
    assert q.due(1, 0.04, 5.1)
    q.sent(1, 0.04, 1000)
    assert not q.due(2, 0.5, 50.0)  # too soon after the last one
    assert q.due(30, 1.1, 50.0)
    with pytest.raises(UsageError):
        QualityKeyframes(max_distance=0)


def test_budget_policy_keeps_the_keyframe_rate_under_its_budget() -> None:
    b = BudgetKeyframes(kbps=8.0, max_distance=1.0)
    fps, nbytes, sent = 30, 3000, 0
    for i in range(30 * 60):  # a minute of frames that all want a keyframe
        t = i / fps
        if b.due(i, t, 100.0):
            b.sent(i, t, nbytes)
            sent += 1
    rate_kbps = sent * nbytes * 8 / 60 / 1000
    burst_kbps = b.burst * nbytes * 8 / 60 / 1000  # the bucket starts full
    assert 7.0 <= rate_kbps <= 8.0 + burst_kbps  # spends the budget, and no more
    assert not BudgetKeyframes(kbps=8.0, max_distance=1.0).due(0, 0.0, 0.5)  # below threshold
    with pytest.raises(UsageError):
        BudgetKeyframes(kbps=0)


# -- the receiver's set -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("keyframe_set")


@pytest.fixture(scope="module")
def model(work):
    return load_model(tiny_weights(work / "tiny.safetensors", seed=0))


@pytest.fixture(scope="module")
def clip(work):
    return crop_input(short_clip(work / "clip.mp4", 40, 25), 64)


def params_of(model, clip):
    with io.BytesIO() as f:
        encode_frames(clip.frames[:2], clip.fps, model, f, EncodeOptions(progress=False))
        return next(read_units(f.getvalue()))


def test_receiver_set_is_bounded_and_matches_the_sender_mirror(model, clip) -> None:
    params = params_of(model, clip)
    mirror = KeyframeSet(size=5, refs=3, image_size=64)
    sources = SourceSet(model, params)
    image = encode_keyframe(clip.frames[0])
    rng = np.random.default_rng(0)
    for n in range(20):
        kid = mirror.next_id()
        mirror.add(kid, kp(float(rng.uniform(-1, 1))), n)
        sources.add(KeyframeUnit(kid, n, 2, image))  # 2 = AV1, the default keyframe codec
        mirror.choose_refs(kp(float(rng.uniform(-1, 1))), n)
        assert len(sources) <= KEYFRAME_SLOTS
        assert set(sources.ids) == set(mirror.ids)  # the same set on both sides, every step
    assert len(sources) == 5


def test_loss_holds_frames_never_a_wrong_picture(work, model, clip) -> None:
    """Keyframes 0 and 1 are sent; 1 is lost. Frames that refer to 1 are held as the last
    picture shown (and warned about); frames that refer to 0 render."""
    options = EncodeOptions(
        progress=False, frames_per_unit=5, keyframe_indices=(0, 20), resync_period=5
    )
    buf = io.BytesIO()
    encode_frames(clip.frames[:40], clip.fps, model, buf, options)
    units = list(read_units(buf.getvalue()))
    assert [u.keyframe_id for u in units if isinstance(u, KeyframeUnit)] == [0, 1]
    decoder = Decoder(model, units[0], batch_size=4)
    frames = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BitstreamWarning)
        for u in units[1:]:
            if isinstance(u, KeyframeUnit) and u.keyframe_id == 1:
                continue  # lost
            frames += decoder.push(u)
    assert [f.index for f in frames] == list(range(40))
    refs_of = {
        i: u.refs
        for u in units
        if isinstance(u, KeypointUnit)
        for i in range(u.first_index, u.first_index + u.count)
    }
    for f in frames:
        if 1 in refs_of[f.index]:
            assert f.held
            np.testing.assert_array_equal(f.rgb, frames[19].rgb)  # the last frame rendered
        else:
            assert not f.held
    assert any("does not hold" in str(w.message) for w in caught)


def test_a_unit_that_refers_to_a_replaced_keyframe_is_held(model, clip) -> None:
    params = params_of(model, clip)
    sources = SourceSet(model, params)
    image = encode_keyframe(clip.frames[0])
    sources.add(KeyframeUnit(3, 0, 2, image))
    sources.add(KeyframeUnit(3 + KEYFRAME_SLOTS, 1, 2, image))  # same slot: replaces 3
    assert 3 not in sources and sources.missing((3,)) == [3]
    assert sources.render((3,), kp(0.0)[None]) is None
    assert sources.render((3 + KEYFRAME_SLOTS,), kp(0.0)[None]).shape == (1, 64, 64, 3)


def test_a_frame_within_one_step_of_its_keyframe_is_that_keyframe(model, clip) -> None:
    """The receiver shows the decoded keyframe for a frame sent with that keyframe's own
    keypoints, also when the sender's detector put a value one quantization step away (two runs
    of the detector can differ in the last bit at a rounding boundary); two steps away, or with
    a second ref, the frame is rendered."""
    params = params_of(model, clip)
    sources = SourceSet(model, params)
    keyframe = sources.add(KeyframeUnit(0, 0, 2, encode_keyframe(clip.frames[0])))
    steps = steps_vector(params.xy_steps, params.s_steps)
    own = keyframe.own_steps  # (K, 3) int64
    inner = (own > 1) & (own < steps - 1)  # values that can move two steps either way
    k, c = np.argwhere(inner)[0]

    def moved(by: int) -> np.ndarray:
        q = own.copy()
        q[k, c] += by
        return dequantize(q, params.xy_steps, params.s_steps)  # (K, 3) as a unit carries them

    frames = sources.render((0,), np.stack([moved(0), moved(1), moved(-1), moved(2)]))
    for i in range(3):
        np.testing.assert_array_equal(frames[i], keyframe.picture)
    assert not np.array_equal(frames[3], keyframe.picture)  # rendered by the model
    sources.add(KeyframeUnit(1, 1, 2, encode_keyframe(clip.frames[1])))
    assert not np.array_equal(sources.render((0, 1), moved(0)[None])[0], keyframe.picture)


# -- end to end: a face that changes --------------------------------------------------------------


def test_send_core_quality_policy_sends_a_keyframe_where_the_face_changes(model, clip) -> None:
    """Keypoints that jump at frame 20 (another person sat down): the quality policy sends a
    keyframe there, and the frames after it refer to it alone (the old face's keyframe is
    farther in pose)."""
    options = EncodeOptions(progress=False, frames_per_unit=8)
    table = entropy_model(options)
    params = stream_params(model, Fraction(25), options, table)
    core = SendCore(
        params,
        table,
        frames_per_unit=8,
        resync_period=60,
        keyframe_codec=options.keyframe_codec,
        keyframe_quality=options.keyframe_quality,
        policy=functools.partial(QualityKeyframes, 10.0, 0.0)(),
        keyframes=KeyframeSet(size=4, refs=1, image_size=64),
    )
    units = core.start()
    for i in range(40):
        x = 0.01 * (i % 3) if i < 20 else 0.6 + 0.01 * (i % 3)  # 0.32 px wobble, then 19 px
        units += core.frame(i, params.nominal_pts(i), Face(clip.frames[i], kp(x)), t=i / 25)
    units += core.flush()
    keyframes = [u for u in units if isinstance(u, KeyframeUnit)]
    assert [u.frame_index for u in keyframes] == [0, 20]
    assert core.keyframe_indices == [0, 20]
    for u in units:
        if isinstance(u, KeypointUnit):
            want = keyframes[0].keyframe_id if u.first_index < 20 else keyframes[1].keyframe_id
            assert u.refs == (want,)


def test_interval_policy_end_to_end_decodes_every_frame(model, clip) -> None:
    options = EncodeOptions(
        progress=False, keyframe_policy=functools.partial(IntervalKeyframes, 0.5)
    )
    with io.BytesIO() as f:
        stats = encode_frames(clip.frames, Fraction(25), model, f, options)
        data = f.getvalue()
    units = list(read_units(data))
    keyframes = [u.frame_index for u in units if isinstance(u, KeyframeUnit)]
    assert keyframes == [0, 13, 26, 39]  # 0.5 s = 12.5 frames: due at 0.52 s after the last
    assert stats.keyframes == len(keyframes)
    assert stats.bytes_keyframes > 0
    decoded, dstats = decode_frames(data, model, DecodeOptions(progress=False))
    assert len(decoded) == 40 and dstats.held == 0 and dstats.keyframes == len(keyframes)


# -- the render check: never worse than the keyframe it could show --------------------------------


def test_render_check_sends_the_keyframe_pose_where_the_keyframe_is_closer(model, clip) -> None:
    """A still picture (every frame the keyframe's own crop): the tiny random model's render
    is far from it, the decoded keyframe is close, so every frame after the keyframe is sent
    with the keyframe's own keypoints and decodes to one picture. On a moving clip the count
    the encoder reports is the number of frames whose decoded keypoints are the keyframe's."""
    still = np.repeat(clip.frames[:1], 12, axis=0)
    options = EncodeOptions(progress=False, render_check=True)
    with io.BytesIO() as f:
        stats = encode_frames(still, Fraction(25), model, f, options)
        data = f.getvalue()
    assert stats.frames_as_keyframe == 11
    decoded, _ = decode_frames(data, model, DecodeOptions(progress=False))
    (key,) = [u for u in read_units(data) if isinstance(u, KeyframeUnit)]
    picture = decode_keyframe(key.data, key.codec)
    # a frame sent with its keyframe's own pose is that keyframe, given back exactly
    assert all(np.array_equal(decoded[i], picture) for i in range(12))

    with io.BytesIO() as f:
        moving = encode_frames(clip.frames[:16], Fraction(25), model, f, options)
        data = f.getvalue()
    units = list(read_units(data))
    decoder = KeypointDecoder(units[0], find_entropy_model(units[0].entropy_id))
    frames = [fr for u in units if isinstance(u, KeypointUnit) for fr in decoder.decode(u).frames]
    key = frames[0].keypoints  # frame 0: the keyframe's own pose
    same = sum(np.array_equal(fr.keypoints, key) for fr in frames[1:])
    assert same == moving.frames_as_keyframe
    with io.BytesIO() as f:
        plain = encode_frames(
            clip.frames[:16], Fraction(25), model, f, EncodeOptions(progress=False)
        )
    assert plain.frames_as_keyframe == 0
