"""Unit framing, stream reading, and every kind of bad input the issue lists."""

from __future__ import annotations

import io
import time
import warnings
import zlib

import numpy as np
import pytest

from bitstream import (
    BitstreamWarning,
    EndUnit,
    Fill,
    ImageCodec,
    KeyframeUnit,
    KeypointDecoder,
    KeypointUnit,
    NoFaceUnit,
    ParamsUnit,
    Predictor,
    StreamWriter,
    TruncatedStreamError,
    UnitType,
    load_prior,
    parse_packet,
    parse_unit,
    read_units,
    scan_stream,
)
from bitstream.synthetic import example_params, example_stream
from bitstream.units import MAGIC, START_CODE, VERSION, frame_unit, split_unit
from bitstream.wire import Reader, encode_svarint, encode_uvarint
from iwcodec.errors import BitstreamError, InputError, IWCodecError, UnsupportedStreamError


@pytest.fixture(scope="module")
def model():
    return load_prior()


@pytest.fixture(scope="module")
def small_stream(model):
    return example_stream(
        np.random.default_rng(1), frames=24, frames_per_unit=6, resync_period=12, model=model
    )


def sample_units(model):
    params = example_params(model, predictor=Predictor.HALF_LINEAR, fps_num=30000, fps_den=1001)
    return [
        params,
        KeyframeUnit(7, 120, ImageCodec.AV1, b"\x00\x01" * 40),
        KeypointUnit(5, 3, (7, 2), True, None, b"\x12\x34"),
        KeypointUnit(8, 3, (7,), False, (100, 3103, 9000), b""),
        KeypointUnit(11, 1, (0,), False, (-5,), b"\xff" * 9),
        NoFaceUnit(12, 1024, Fill.HOLD),
        NoFaceUnit(1036, 2, Fill.BLANK, (40_000, 40_300)),
        EndUnit(1038, 1),
    ]


def test_round_trip_every_unit_type(model):
    for unit in sample_units(model):
        data = unit.to_bytes()
        assert data.startswith(START_CODE)
        parsed, rest = type(unit).parse(data + b"tail")
        assert parsed == unit and bytes(rest) == b"tail"
        generic, rest = parse_unit(data)
        assert generic == unit and len(rest) == 0
        assert parsed.to_bytes() == data


def test_packet_with_several_units(model):
    units = sample_units(model)[2:5]
    assert parse_packet(b"".join(u.to_bytes() for u in units)) == units
    with pytest.raises(BitstreamError):
        parse_packet(b"")
    damaged = bytearray(b"".join(u.to_bytes() for u in units))
    damaged[-3] ^= 0x10
    with pytest.raises(BitstreamError, match="CRC"):
        parse_packet(bytes(damaged))


def test_unit_layout_is_as_documented():
    unit = EndUnit(300, 2)
    data = unit.to_bytes()
    body = encode_uvarint(300) + encode_uvarint(2)
    covered = bytes([UnitType.END]) + bytes([len(body)]) + body
    assert data == START_CODE + covered + zlib.crc32(covered).to_bytes(4, "little")


def test_varints_are_canonical():
    for v in (0, 1, 127, 128, 300, 2**32 - 1, 2**47):
        r = Reader(encode_uvarint(v), "t")
        assert r.uvarint("v", 2**48) == v and r.remaining == 0
    for v in (0, -1, 1, -(2**40), 2**40):
        assert Reader(encode_svarint(v), "t").svarint("v", 2**41) == v
    with pytest.raises(BitstreamError, match="minimally"):
        Reader(b"\x80\x00", "t").uvarint("v", 1000)
    with pytest.raises(BitstreamError, match="out of range"):
        Reader(b"\xff" * 20, "t").uvarint("v", 1000)
    with pytest.raises(BitstreamError, match="truncated"):
        Reader(b"\x80", "t").uvarint("v", 1000)


def test_no_face_unit_bounds_and_damage():
    for kwargs, message in [
        (dict(first_index=0, count=0), "frame count"),
        (dict(first_index=0, count=1025), "frame count"),
        (dict(first_index=0, count=1, fill=7), "unknown fill"),
        (dict(first_index=0, count=2, pts=(1,)), "1 timestamps for 2 frames"),
    ]:
        with pytest.raises(BitstreamError, match=message):
            NoFaceUnit(**kwargs)
    data = NoFaceUnit(5, 3, Fill.BLANK).to_bytes()
    for cut in range(len(data)):
        with pytest.raises(BitstreamError):
            NoFaceUnit.parse(data[:cut])
    with pytest.raises(BitstreamError, match="truncated"):
        NoFaceUnit.parse(data[:-1])
    # A body with a valid CRC but a forged fill byte or count is refused, not trusted.
    body = bytes([0]) + encode_uvarint(5) + encode_uvarint(3)
    for tail, message in [(b"\x09", "fill"), (b"", "truncated"), (b"\x00\x00", "unexpected bytes")]:
        with pytest.raises(BitstreamError, match=message):
            NoFaceUnit.parse(frame_unit(UnitType.NO_FACE, body + tail))
    forged = bytes([0]) + encode_uvarint(5) + encode_uvarint(5000) + b"\x00"
    with pytest.raises(BitstreamError, match="count"):
        NoFaceUnit.parse(frame_unit(UnitType.NO_FACE, forged))


def test_keypoint_chain_restarts_after_no_face(model):
    """A NO_FACE unit ends the keypoint chain: the decoder reports its frames as no-face (not
    lost), and the next keypoint unit must be a resync unit; a non-resync one is lost."""
    data, _ = example_stream(
        np.random.default_rng(2), frames=12, frames_per_unit=4, resync_period=8, model=model
    )
    units = list(read_units(data))
    params = units[0]
    kps = [u for u in units if isinstance(u, KeypointUnit)]
    assert [u.resync for u in kps] == [True, False, True]
    dec = KeypointDecoder(params, model)
    assert len(dec.decode(kps[0]).frames) == 4
    gone = dec.skip(NoFaceUnit(4, 4))
    assert gone.no_face == range(4, 8) and not gone.lost and not dec.needs_resync
    shifted = KeypointUnit(8, 4, kps[1].refs, False, None, kps[1].payload)
    with pytest.warns(BitstreamWarning, match="resync"):
        result = dec.decode(shifted)
    assert not result.frames and result.lost == (range(8, 12),)
    fresh = KeypointDecoder(params, model)
    fresh.decode(kps[0])
    fresh.skip(NoFaceUnit(4, 4))
    assert [f.index for f in fresh.decode(kps[2]).frames] == [8, 9, 10, 11]


def test_wrong_type_for_class(model):
    with pytest.raises(BitstreamError, match="expected a keyframe unit"):
        KeyframeUnit.parse(EndUnit(1, 1).to_bytes())


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(width=100_000, height=100_000), "width = 100000 is out of range"),
        (dict(width=0), "width"),
        (dict(num_keypoints=100_000), "keypoints per frame"),
        (dict(xy_steps=0), "xy_steps"),
        (dict(fps_num=1, fps_den=1000), "frame rate"),
        (dict(weights_id=b"short"), "weights_id"),
        (dict(predictor=9), "predictor"),
    ],
)
def test_params_out_of_bounds(model, fields, message):
    with pytest.raises(BitstreamError, match=message):
        example_params(model, **fields)


def _params_body(width: int, height: int) -> bytes:
    return (
        MAGIC
        + bytes([VERSION])
        + encode_uvarint(width)
        + encode_uvarint(height)
        + b"".join(encode_uvarint(v) for v in (30, 1, 20, 512, 64))
        + bytes([1])
        + bytes(16)
    )


def test_header_asking_for_100000x100000_frames():
    """A hand-made, CRC-correct header: refused with a clear message before any allocation."""
    data = frame_unit(UnitType.PARAMS, _params_body(100_000, 100_000))
    with pytest.raises(BitstreamError, match=r"width = 100000 is out of range \(at most 4096\)"):
        ParamsUnit.parse(data)
    with pytest.raises(BitstreamError, match="width"):
        list(read_units(data + EndUnit(0, 0).to_bytes()))


def test_huge_declared_lengths_refused_before_reading():
    body_len = encode_uvarint(2**27)
    with pytest.raises(BitstreamError, match="out of range"):
        split_unit(START_CODE + bytes([UnitType.KEYPOINTS]) + body_len + b"\0" * 16)
    with pytest.raises(BitstreamError, match="out of range"):
        split_unit(START_CODE + bytes([UnitType.PARAMS]) + encode_uvarint(65) + b"\0" * 70)


def test_keypoint_unit_bounds():
    with pytest.raises(BitstreamError, match="frame count"):
        KeypointUnit(0, 5000, (0,), True, None, b"")
    with pytest.raises(BitstreamError, match="refs"):
        KeypointUnit(0, 1, (), True, None, b"")
    with pytest.raises(BitstreamError, match="increase"):
        KeypointUnit(0, 2, (0,), True, (10, 10), b"")
    with pytest.raises(BitstreamError, match="past"):
        KeypointUnit(2**32 - 1, 2, (0,), True, None, b"")


def test_empty_file():
    with pytest.raises(BitstreamError, match="empty file"):
        list(read_units(b""))
    with pytest.raises(BitstreamError, match="empty file"):
        list(read_units(io.BytesIO(b"")))


def test_wrong_magic_and_version(model):
    good = example_params(model).to_bytes()
    body_at = len(START_CODE) + 2
    bad_magic = bytearray(good)
    bad_magic[body_at : body_at + 4] = b"RIFF"
    with pytest.raises(UnsupportedStreamError, match="magic"):
        list(read_units(bytes(bad_magic)))
    with pytest.raises(UnsupportedStreamError, match="magic"):
        ParamsUnit.parse(bytes(bad_magic))
    # A future version with a correct CRC: named as a version problem, not as damage.
    body = bytearray(example_params(model).body())
    body[4] = VERSION + 1
    with pytest.raises(UnsupportedStreamError, match="version 2 is not supported"):
        list(read_units(frame_unit(UnitType.PARAMS, bytes(body))))
    with pytest.raises(UnsupportedStreamError, match="not an iwcodec stream"):
        list(read_units(b"\x1aE\xdf\xa3 this is a matroska file"))
    with pytest.raises(UnsupportedStreamError, match="parameter unit"):
        list(read_units(EndUnit(1, 1).to_bytes()))


def test_random_garbage_gives_project_errors_only():
    rng = np.random.default_rng(5)
    for n in (1, 2, 3, 7, 64, 4096):
        with pytest.raises(IWCodecError):
            list(read_units(rng.bytes(n)))
    # Garbage that starts with a start code goes deeper into the parser.
    for _ in range(200):
        data = START_CODE + rng.bytes(int(rng.integers(0, 200)))
        with pytest.raises(IWCodecError), warnings.catch_warnings():
            warnings.simplefilter("ignore", BitstreamWarning)
            list(read_units(data))


def test_stream_round_trip_from_bytes_and_file(small_stream):
    data, frames = small_stream
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        units = list(read_units(data))
        assert units == list(read_units(io.BytesIO(data)))
    assert isinstance(units[0], ParamsUnit) and isinstance(units[-1], EndUnit)
    assert units[-1] == EndUnit(len(frames), 1)
    records = list(scan_stream(data))
    assert sum(r.size for r in records) == len(data)
    assert [r.offset for r in records][1] == records[0].size


def test_read_from_path(small_stream, tmp_path):
    data, _ = small_stream
    path = tmp_path / "clip.iwc"
    path.write_bytes(data)
    assert list(read_units(path)) == list(read_units(data))
    with pytest.raises(InputError, match="cannot read"):
        list(read_units(tmp_path / "missing.iwc"))
    path.write_bytes(data[:-1])
    with pytest.raises(TruncatedStreamError):
        list(read_units(str(path)))


def _read_all(data: bytes) -> tuple[list, Exception | None, list]:
    units: list = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            for unit in read_units(data):
                units.append(unit)
        except BitstreamError as exc:
            return units, exc, caught
    return units, None, caught


def test_truncation_at_every_byte_offset(small_stream):
    """Every prefix: the truncated-stream error (never another exception, never a silent
    success), after every unit that was complete before the cut."""
    data, _ = small_stream
    records = list(scan_stream(data))
    for cut in range(len(data)):
        units, error, _ = _read_all(data[:cut])
        if cut == 0:
            assert "empty file" in str(error)
            continue
        assert isinstance(error, TruncatedStreamError), (cut, error)
        assert units == [r.unit for r in records if r.offset + r.size <= cut]


def test_truncation_at_every_unit_boundary(small_stream):
    data, _ = small_stream
    records = list(scan_stream(data))
    for rec in records[1:]:
        units, error, caught = _read_all(data[: rec.offset])
        assert isinstance(error, TruncatedStreamError), rec
        assert "without an end unit" in str(error)
        assert len(units) == records.index(rec)  # every unit before the cut was delivered
        assert not caught  # a clean cut is not damage


def test_bit_flip_in_middle_unit_is_skipped_with_warning(small_stream, model):
    data, frames = small_stream
    records = list(scan_stream(data))
    kp_records = [r for r in records if isinstance(r.unit, KeypointUnit)]
    victim = kp_records[1]
    for bit in range(0, victim.size * 8, 7):
        damaged = bytearray(data)
        damaged[victim.offset + bit // 8] ^= 1 << (bit % 8)
        units, error, caught = _read_all(bytes(damaged))
        assert error is None
        assert any(issubclass(w.category, BitstreamWarning) for w in caught)
        assert victim.unit not in units
        others = [r.unit for r in records if r is not victim]
        assert units == others, bit


def test_damaged_header_is_an_error(small_stream):
    data, _ = small_stream
    damaged = bytearray(data)
    damaged[20] ^= 0x04  # inside the parameter unit's ids
    with pytest.raises(BitstreamError, match="stream header"):
        list(read_units(bytes(damaged)))


def test_damage_then_decode_rest(small_stream, model):
    """The frames after a damaged keypoint unit decode again from the next resync unit."""
    data, frames = small_stream
    records = list(scan_stream(data))
    kp = [r for r in records if isinstance(r.unit, KeypointUnit)]
    victim = kp[0]  # the first (resync) unit: the next one is not decodable without it
    damaged = bytearray(data)
    damaged[victim.offset + victim.size // 2] ^= 0xFF
    units, error, _ = _read_all(bytes(damaged))
    assert error is None
    params = units[0]
    dec = KeypointDecoder(params, model)
    decoded, lost = {}, set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BitstreamWarning)
        for unit in units:
            if isinstance(unit, KeypointUnit):
                res = dec.decode(unit)
                decoded.update({f.index: f for f in res.frames})
                lost.update(i for r in res.lost for i in r)
            elif isinstance(unit, EndUnit):
                assert dec.finish(unit.total_frames).num_lost == 0
    first_resync = next(r.unit for r in kp[1:] if r.unit.resync)
    assert lost == set(range(first_resync.first_index))
    assert set(decoded) == set(range(first_resync.first_index, len(frames)))


def test_unknown_unit_type_and_repeated_params_are_skipped(small_stream, model):
    data, _ = small_stream
    records = list(scan_stream(data))
    extra = frame_unit(99, b"from the future") + records[0].unit.to_bytes()
    other = example_params(model, width=128).to_bytes()
    at = records[2].offset
    spliced = data[:at] + extra + other + data[at:]
    units, error, caught = _read_all(spliced)
    assert error is None
    assert units == [r.unit for r in records]
    messages = [str(w.message) for w in caught]
    assert any("unknown unit type 99" in m for m in messages)
    assert any("differs" in m for m in messages)


def test_data_after_end_is_reported(small_stream):
    data, _ = small_stream
    units, error, caught = _read_all(data + b"junk")
    assert error is None and isinstance(units[-1], EndUnit)
    assert any("after the end unit" in str(w.message) for w in caught)


def test_writer_rules(model):
    out = io.BytesIO()
    w = StreamWriter(out)
    with pytest.raises(BitstreamError, match="parameter unit"):
        w.write(EndUnit(0, 0))
    n = w.write(example_params(model))
    assert n == len(out.getvalue()) == w.bytes_written
    w.finish()
    with pytest.raises(BitstreamError, match="finished"):
        w.write(EndUnit(0, 0))


def test_false_start_codes_do_not_make_reading_quadratic(model):
    """Damage full of start codes claiming large units: bounded work, then a clear error."""
    params = example_params(model).to_bytes()
    fake = START_CODE + bytes([UnitType.KEYFRAME]) + encode_uvarint(60_000)
    end = EndUnit(0, 0).to_bytes()
    units, error, caught = _read_all(params + fake * 50 + end)  # a few: read through
    assert error is None and units[-1] == EndUnit(0, 0) and len(caught) == 1
    start = time.perf_counter()
    units, error, caught = _read_all(params + fake * 50_000 + end)  # 3.4 GB of CRC if naive
    assert time.perf_counter() - start < 10
    assert isinstance(error, BitstreamError) and "too damaged" in str(error)


def test_keyframe_pacing_sender_never_outruns_the_receiver():
    """Whatever an honest sender lets through, the receiver keeps, even when arrivals bunch
    up by up to a second; and a flood is cut to the receiver's rate."""
    from bitstream import KeyframePacer, pacing

    rng = np.random.default_rng(4)
    for _ in range(50):
        sender = KeyframePacer(pacing.SENDER)
        sent = [t for t in np.cumsum(rng.exponential(0.4, 200)) if sender.take(float(t))]
        arrivals = sorted(t + rng.uniform(0.0, 1.0) for t in sent)
        receiver = KeyframePacer(pacing.RECEIVER)
        assert all(receiver.take(t) for t in arrivals)
    flood = KeyframePacer(pacing.RECEIVER)
    kept = sum(flood.take(k * 0.01) for k in range(1000))  # 100 keyframes/s for 9.99 s
    assert kept == pacing.RECEIVER.burst + 9  # the burst, then one a second
