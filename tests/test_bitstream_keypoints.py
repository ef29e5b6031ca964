"""Keypoint quantization, entropy coding round trips, and loss recovery."""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import pytest

from bitstream import (
    CANDIDATE_STEPS,
    BitstreamWarning,
    EntropyModel,
    KeypointDecoder,
    KeypointEncoder,
    KeypointFrame,
    KeypointUnit,
    Predictor,
    collect_statistics,
    dequantize,
    encode_track,
    fit_prior,
    load_prior,
    quantize,
    requantize,
)
from bitstream.entropy import SymbolDecoder, SymbolEncoder
from bitstream.synthetic import example_params, synthetic_track
from iwcodec.errors import BitstreamError, ModelMismatchError


@pytest.fixture(scope="module")
def model():
    return load_prior()


def frames_of(track: np.ndarray, params, refs=(0,), start: int = 0) -> list[KeypointFrame]:
    return [
        KeypointFrame(start + i, params.nominal_pts(start + i), kp, refs)
        for i, kp in enumerate(track)
    ]


def decode_all(decoder: KeypointDecoder, units) -> tuple[dict[int, KeypointFrame], set[int]]:
    decoded: dict[int, KeypointFrame] = {}
    lost: set[int] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BitstreamWarning)
        for unit in units:
            res = decoder.decode(unit)
            for f in res.frames:
                assert f.index not in decoded
                decoded[f.index] = f
            for r in res.lost:
                lost.update(r)
    return decoded, lost


@pytest.mark.parametrize("name", sorted(CANDIDATE_STEPS))
def test_quantization_is_exact_and_idempotent(name):
    xy, s = CANDIDATE_STEPS[name]
    rng = np.random.default_rng(0)
    kp = np.concatenate([rng.uniform(-1, 1, (500, 2)), rng.uniform(0, 1, (500, 1))], axis=1)
    q = quantize(kp, xy, s)
    assert q.min() >= 0 and q[:, :2].max() <= xy and q[:, 2].max() <= s
    back = dequantize(q, xy, s)
    assert back.dtype == np.float32
    assert np.abs(back[:, :2] - kp[:, :2]).max() <= 1 / xy + 1e-6  # half a step of 2/xy
    assert np.abs(back[:, 2] - kp[:, 2]).max() <= 0.5 / s + 1e-6
    n = max(xy, s) + 1
    all_q = np.stack(
        [np.arange(n) % (xy + 1), np.arange(n)[::-1] % (xy + 1), np.arange(n) % (s + 1)], -1
    )
    assert np.array_equal(quantize(dequantize(all_q, xy, s), xy, s), all_q)
    assert np.array_equal(requantize(back, xy, s), back)


def test_quantize_clips_and_refuses_nan():
    q = quantize(np.array([[-1.5, 1.2, 2.0], [1.0, -1.0, -0.1]]), 512, 64)
    assert q.tolist() == [[0, 512, 64], [512, 0, 0]]
    with pytest.raises(ValueError, match="NaN"):
        quantize(np.array([[0.0, np.nan, 0.5]]), 512, 64)
    with pytest.raises(ValueError, match="shape"):
        quantize(np.zeros((3, 2)), 512, 64)


def roundtrip(track, params, model, frames_per_unit, resync_period=60, refs=(0,)):
    frames = frames_of(track, params, refs)
    enc = KeypointEncoder(params, model, resync_period=resync_period)
    units = encode_track(frames, enc, frames_per_unit)
    units = [KeypointUnit.parse(u.to_bytes())[0] for u in units]  # through the wire
    decoded, lost = decode_all(KeypointDecoder(params, model), units)
    assert not lost
    assert sorted(decoded) == [f.index for f in frames]
    for f in frames:
        d = decoded[f.index]
        want = requantize(f.keypoints, params.xy_steps, params.s_steps)
        assert np.array_equal(d.keypoints, want), f.index
        assert d.pts == f.pts and d.refs == f.refs
    return units


@pytest.mark.parametrize("predictor", list(Predictor))
@pytest.mark.parametrize("frames_per_unit", [1, 7, 30])
def test_round_trip_realistic_tracks(model, predictor, frames_per_unit):
    params = example_params(model, predictor=predictor)
    track = synthetic_track(np.random.default_rng(frames_per_unit), 90)
    roundtrip(track, params, model, frames_per_unit)


@pytest.mark.parametrize("xy, s", [(1, 1), (3, 2), (256, 32), (1024, 128), (65535, 65535)])
def test_round_trip_random_tracks_any_steps(model, xy, s):
    """Uniform random keypoints: every residual escapes; extreme and tiny steps."""
    rng = np.random.default_rng(xy)
    track = np.concatenate([rng.uniform(-1, 1, (25, 20, 2)), rng.uniform(0, 1, (25, 20, 1))], -1)
    track[3] = [-1, -1, 0]
    track[4] = [1, 1, 1]
    params = example_params(model, xy_steps=xy, s_steps=s)
    roundtrip(track.astype(np.float32), params, model, frames_per_unit=5, resync_period=10)


@pytest.mark.parametrize("k", [1, 2, 64])
def test_round_trip_other_keypoint_counts(model, k):
    params = example_params(model, k=k)
    roundtrip(synthetic_track(np.random.default_rng(k), 40, k), params, model, 8)


def test_irregular_timestamps_and_refs(model):
    params = example_params(model, fps_num=30000, fps_den=1001)
    track = synthetic_track(np.random.default_rng(3), 12)
    frames = [KeypointFrame(i, 1000 + 3003 * i + (i % 3), kp, (4, 9)) for i, kp in enumerate(track)]
    enc = KeypointEncoder(params, model)
    unit = enc.encode(frames)
    assert unit.pts is not None
    decoded, _ = decode_all(
        KeypointDecoder(params, model), [KeypointUnit.parse(unit.to_bytes())[0]]
    )
    assert [decoded[i].pts for i in range(12)] == [f.pts for f in frames]
    assert decoded[0].refs == (4, 9)
    regular = enc.encode(frames_of(track, params, start=12))
    assert regular.pts is None  # nominal timestamps cost no bytes


def test_encoder_rejects_bad_runs(model):
    params = example_params(model)
    frames = frames_of(synthetic_track(np.random.default_rng(0), 4), params)
    enc = KeypointEncoder(params, model)
    with pytest.raises(ValueError, match="consecutive"):
        enc.encode([frames[0], frames[2]])
    with pytest.raises(ValueError, match="share refs"):
        enc.encode([frames[0], KeypointFrame(1, 3000, frames[1].keypoints, (1,))])
    with pytest.raises(ValueError, match="keypoints"):
        enc.encode([KeypointFrame(0, 0, np.zeros((5, 3)))])
    with pytest.raises(ValueError):
        enc.encode([])
    # Failed calls leave the encoder as it was: the chain still decodes exactly.
    units = [enc.encode(frames[:2])]
    nan = frames[2].keypoints.copy()
    nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        enc.encode([KeypointFrame(2, frames[2].pts, nan)])
    with pytest.raises(BitstreamError, match="increase"):
        enc.encode([frames[2], KeypointFrame(3, frames[2].pts, frames[3].keypoints)])
    units.append(enc.encode(frames[2:]))
    assert not units[1].resync
    decoded, lost = decode_all(KeypointDecoder(params, model), units)
    assert not lost and len(decoded) == 4


def test_entropy_model_mismatch(model):
    params = example_params(model, entropy_id=b"otherid!")
    with pytest.raises(ModelMismatchError, match="entropy model"):
        KeypointDecoder(params, model)
    with pytest.raises(ModelMismatchError):
        KeypointEncoder(params, model)


def test_resync_policy(model):
    params = example_params(model)
    frames = frames_of(synthetic_track(np.random.default_rng(2), 100), params)
    enc = KeypointEncoder(params, model, resync_period=20)
    flags = [u.resync for u in encode_track(frames[:60], enc, 10)]
    assert flags == [True, False, True, False, True, False]
    enc.request_resync()
    assert enc.encode(frames[60:70]).resync
    assert not enc.encode(frames[70:80]).resync
    assert enc.encode(frames[85:90]).resync  # a gap in indices forces one


def test_lossy_channel_recovers_at_next_resync(model):
    """Drop units at random; after the next resync every frame is exactly the encoder's."""
    rng = np.random.default_rng(11)
    params = example_params(model)
    frames = frames_of(synthetic_track(rng, 600), params)
    enc = KeypointEncoder(params, model, resync_period=30)
    units = encode_track(frames, enc, 3)  # call-like: 3 frames per message
    kept = [u for u in units if rng.random() > 0.1]
    decoded, lost = decode_all(KeypointDecoder(params, model), kept)
    expected, intact, nxt = set(), False, 0
    for u in kept:
        intact = u.resync or (intact and u.first_index == nxt)
        if intact:
            expected.update(u.indices)
        nxt = u.first_index + u.count
    assert set(decoded) == expected
    assert len(expected) > 250 and len(lost) > 100
    last = kept[-1].first_index + kept[-1].count
    assert lost == set(range(last)) - expected  # every index accounted for exactly once
    for i, f in decoded.items():
        want = requantize(frames[i].keypoints, params.xy_steps, params.s_steps)
        assert np.array_equal(f.keypoints, want)


def test_loss_is_reported_with_warning_and_ranges(model):
    params = example_params(model)
    frames = frames_of(synthetic_track(np.random.default_rng(4), 40), params)
    units = encode_track(frames, KeypointEncoder(params, model, resync_period=20), 10)
    dec = KeypointDecoder(params, model)
    dec.decode(units[0])
    with pytest.warns(BitstreamWarning, match="lost"):
        res = dec.decode(units[2])  # units[1] never arrived; units[2] is a resync
    assert res.lost == (range(10, 20),) and len(res.frames) == 10
    with pytest.warns(BitstreamWarning, match="ignored"):
        assert dec.decode(units[1]).frames == ()  # arrives late
    with pytest.warns(BitstreamWarning, match="end"):
        tail = dec.finish(50)
    assert tail.lost == (range(30, 50),) and tail.num_lost == 20
    hostile = KeypointUnit(2**32 - 5, 2, (0,), False, None, b"")
    with pytest.warns(BitstreamWarning):
        assert dec.decode(hostile).num_lost == 2**32 - 5 - 50 + 2  # ranges: no allocation


def test_late_join(model):
    params = example_params(model)
    frames = frames_of(synthetic_track(np.random.default_rng(6), 60), params)
    units = encode_track(frames, KeypointEncoder(params, model, resync_period=30), 10)
    decoded, lost = decode_all(KeypointDecoder(params, model, first_index=None), units[1:])
    assert lost == set(range(10, 30)) and set(decoded) == set(range(30, 60))


def test_corrupt_payload_is_lost_not_raised(model):
    """A payload that passed the CRC but is garbage (hostile writer): frames lost, no raise."""
    params = example_params(model)
    frames = frames_of(synthetic_track(np.random.default_rng(8), 40), params)
    units = encode_track(frames, KeypointEncoder(params, model, resync_period=20), 10)
    rng = np.random.default_rng(9)
    for _ in range(100):
        bad = KeypointUnit(0, 10, (0,), True, None, rng.bytes(int(rng.integers(0, 80))))
        dec = KeypointDecoder(params, model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BitstreamWarning)
            res = dec.decode(bad)
            assert len(res.frames) + res.num_lost == 10
            res = dec.decode(units[1])
            assert len(res.frames) + res.num_lost == 10
            assert len(dec.decode(units[2]).frames) == 10  # resync recovers


def test_symbol_coder_trimming_is_exact():
    rng = np.random.default_rng(0)
    saved = 0
    for _ in range(300):
        n = int(rng.integers(1, 40))
        probs = rng.random((n, 6)) + 0.01
        probs /= probs.sum(1, keepdims=True)
        symbols = rng.integers(0, 6, n)
        sizes = rng.integers(2, 1000, n)
        values = rng.integers(0, sizes)
        enc = SymbolEncoder()
        enc.categorical(symbols, probs)
        enc.uniform(values, sizes)
        data = enc.finish()
        saved += 4 * enc._coder.num_words() - len(data)
        dec = SymbolDecoder(data)
        assert np.array_equal(dec.categorical(probs), symbols)
        assert np.array_equal(dec.uniform(sizes), values)
    assert saved > 300  # the final-word trim saves more than a byte per message on average


def test_rate_close_to_ideal(model):
    """Framing + coder flush: the file default stays within 10% of the model's ideal."""
    params = example_params(model)
    frames = frames_of(synthetic_track(np.random.default_rng(12), 300), params)
    enc = KeypointEncoder(params, model)
    total, ideal = 0, 0.0
    for start in range(0, 300, 30):
        unit = enc.encode(frames[start : start + 30])
        total += len(unit.to_bytes())
        ideal += enc.last_ideal_bits / 8
        assert len(unit.payload) <= enc.last_ideal_bits / 8 + 4
    assert total <= 1.10 * ideal, (total, ideal)


def test_entropy_model_serialisation(model):
    data = model.to_bytes()
    assert model.id == hashlib.sha256(data).digest()[:8]
    again = EntropyModel.from_bytes(data)
    assert again.to_bytes() == data and again.id == model.id
    spaced = data.decode().replace(",", ", ").encode()  # same tables, other whitespace
    assert EntropyModel.from_bytes(spaced).id == model.id
    ids = {load_prior(f"xy{xy}_s{s}").id for xy, s in CANDIDATE_STEPS.values()}
    assert len(ids) == 3

    def edited(**changes) -> bytes:
        obj = json.loads(data)
        obj.update(changes)
        return json.dumps(obj).encode()

    obj = json.loads(data)
    for bad, msg in [
        (b"not json", "JSON"),
        (b"[]", "not an iwcodec"),
        (edited(radius=0), "radius"),
        (edited(limit="big"), "integers"),
        (edited(residual=[[0] + r[1:] for r in obj["residual"]]), ">= 1"),
        (edited(shift=[r[:-1] for r in obj["shift"]]), "columns"),
        (edited(intra=[obj["intra"][0], obj["intra"][1][:-1], obj["intra"][2]]), "differ"),
        (edited(intra=[[1.5] * 4] * 3), "integers"),
        (b" " * (2 << 20), "larger"),
    ]:
        with pytest.raises(BitstreamError, match=msg):
            EntropyModel.from_bytes(bad)
    missing = json.loads(data)
    del missing["limit"]
    with pytest.raises(BitstreamError, match="limit"):
        EntropyModel.from_bytes(json.dumps(missing).encode())
    with pytest.raises(BitstreamError, match="no shipped"):
        load_prior("nope")


def test_fit_prior_tracks_statistics(model):
    tracks = [synthetic_track(np.random.default_rng(i), 60) for i in range(3)]
    stats = collect_statistics(tracks, 512, 64, Predictor.PREVIOUS)
    assert len(stats.residuals[0]) == 3 * 59 * 20 and len(stats.shifts[2]) == 3 * 59
    fitted = fit_prior(stats, radius=7, buckets=16, prior_weight=32)
    assert fitted.residual.shape == (3, 16) and fitted.intra.shape == (3, 16)
    # The fitted prior codes these tracks better than a flat one; resyncing every 5 frames
    # keeps the adaptive counts near the prior, so the prior's quality shows.
    flat = EntropyModel(7, 32, 1 << 16, np.ones((3, 16), np.int64), np.ones((3, 16), np.int64),
                        np.ones((3, 16), np.int64))  # fmt: skip
    bits = {}
    for name, m in (("fitted", fitted), ("flat", flat)):
        params = example_params(m)
        enc = KeypointEncoder(params, m, resync_period=5)
        bits[name] = 0.0
        for t in tracks:
            frames = frames_of(t, params)
            for start in range(0, len(frames), 5):
                enc.encode(frames[start : start + 5])
                bits[name] += enc.last_ideal_bits
    assert bits["fitted"] < 0.85 * bits["flat"], bits


def test_format_is_stable():
    """Golden vector: these exact bytes must keep decoding the same way. If this fails after a
    dependency upgrade (constriction's model quantization or range coder changed) or a code
    change, the wire format changed: bump units.VERSION instead of updating the hash."""
    counts = np.arange(1, 9, dtype=np.int64)
    model = EntropyModel(3, 16, 1 << 12, np.tile(counts, (3, 1)), np.tile(counts[::-1], (3, 1)),
                         np.tile(np.arange(1, 5, dtype=np.int64), (3, 1)))  # fmt: skip
    params = example_params(model, k=4, xy_steps=64, s_steps=8, predictor=Predictor.HALF_LINEAR)
    # Integer tracks (small steps, one big jump for the escapes), exact after dequantization.
    t, k = np.arange(12)[:, None], np.arange(4)[None, :]
    q = np.stack([(20 + 3 * t + 5 * k) % 65, 30 + (t * t) // 4 - k, (t + k) % 9], axis=-1)
    q[6, 1, 0] = 0
    kp = dequantize(q, 64, 8)
    enc = KeypointEncoder(params, model, resync_period=8)
    units = encode_track(frames_of(kp, params), enc, 4)
    data = params.to_bytes() + b"".join(u.to_bytes() for u in units)
    assert hashlib.sha256(data).hexdigest()[:16] == GOLDEN
    decoded, lost = decode_all(KeypointDecoder(params, model), units)
    assert not lost and len(decoded) == 12


GOLDEN = "5b642c9b24ca87a2"
