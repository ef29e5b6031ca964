"""iwcodec/keyframe.py: round trips per codec, and damaged bytes -> BitstreamError."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from _media import SAMPLE

from bitstream.units import ImageCodec
from iwcodec.errors import BitstreamError, InputError
from iwcodec.keyframe import (
    DEFAULT_CODEC,
    DEFAULT_QUALITY,
    decode_keyframe,
    encode_keyframe,
    keyframe_size,
    native_setting,
    parse_codec,
)
from sender.video import iter_frames

LOSSY = [ImageCodec.WEBP, ImageCodec.AV1, ImageCodec.JPEG]


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    return next(iter_frames(SAMPLE)).rgb  # (256, 256, 3)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.mark.parametrize("codec", LOSSY, ids=lambda c: c.name)
def test_lossy_round_trip_and_quality_scale(face: np.ndarray, codec: ImageCodec) -> None:
    low, high = encode_keyframe(face, codec, 20), encode_keyframe(face, codec, 90)
    out_low, out_high = decode_keyframe(low, codec), decode_keyframe(high, codec)
    assert out_high.shape == face.shape and out_high.dtype == np.uint8
    assert len(low) < len(high)
    assert psnr(face, out_low) < psnr(face, out_high)
    assert psnr(face, out_high) > 38
    assert keyframe_size(high, codec) in (None, (256, 256))


def test_png_is_lossless_and_names_work(face: np.ndarray) -> None:
    data = encode_keyframe(face[:64, :96], "png", 100)
    np.testing.assert_array_equal(decode_keyframe(data, "PNG"), face[:64, :96])
    assert keyframe_size(data, 4) == (96, 64)
    assert parse_codec("webp") is ImageCodec.WEBP and parse_codec(2) is ImageCodec.AV1


def test_default_is_compact_and_good(face: np.ndarray) -> None:
    data = encode_keyframe(face)
    assert 1500 < len(data) < 15000
    assert psnr(face, decode_keyframe(data, DEFAULT_CODEC)) > 34
    assert 1 <= DEFAULT_QUALITY <= 100


def test_quality_maps_to_native_knobs() -> None:
    assert native_setting("webp", 80) == {"quality": 80}
    assert native_setting("av1", 100) == {"crf": 1} and native_setting("av1", 1) == {"crf": 62}
    assert native_setting("jpeg", 100) == {"qscale": 1} and native_setting("jpeg", 1) == {
        "qscale": 31
    }


@pytest.mark.parametrize(
    "picture, quality, codec",
    [
        (np.zeros((64, 64, 3), np.float32), 50, "webp"),
        (np.zeros((64, 64), np.uint8), 50, "webp"),
        (np.zeros((63, 64, 3), np.uint8), 50, "av1"),
        (np.zeros((8, 8, 3), np.uint8), 50, "jpeg"),
        (np.zeros((64, 64, 3), np.uint8), 0, "webp"),
        (np.zeros((64, 64, 3), np.uint8), 50, "gif"),
    ],
    ids=["float", "grey", "odd", "tiny", "quality0", "unknown-codec"],
)
def test_bad_encoder_input_is_input_error(picture, quality, codec) -> None:
    with pytest.raises(InputError):
        encode_keyframe(picture, codec, quality)


@pytest.mark.parametrize("codec", [*LOSSY, ImageCodec.PNG], ids=lambda c: c.name)
def test_damaged_bytes_raise_bitstream_error(face: np.ndarray, codec: ImageCodec) -> None:
    data = encode_keyframe(face[:128, :128], codec, 60)
    for bad in (b"", data[: len(data) // 2], data[:-1], bytes(40), bytes(reversed(data))):
        with pytest.raises(BitstreamError):
            decode_keyframe(bad, codec)
    decode_keyframe(data, codec)  # the intact bytes still decode: no state left behind


@pytest.mark.parametrize("codec", [*LOSSY, ImageCodec.PNG], ids=lambda c: c.name)
def test_pictures_above_the_limit_are_refused(face: np.ndarray, codec: ImageCodec) -> None:
    data = encode_keyframe(face, codec, 30)
    with pytest.raises(BitstreamError, match="outside|too large"):
        decode_keyframe(data, codec, max_side=128)


def test_absurd_header_sizes_are_refused_before_decoding(face: np.ndarray) -> None:
    png = bytearray(encode_keyframe(face[:32, :32], "png", 100))
    png[16:24] = struct.pack(">II", 100_000, 100_000)
    with pytest.raises(BitstreamError, match="100000x100000"):
        decode_keyframe(bytes(png), "png")
    webp = bytearray(encode_keyframe(face[:32, :32], "webp", 50))
    assert webp[12:16] == b"VP8 "
    webp[26:30] = struct.pack("<HH", 16000, 16000)
    with pytest.raises(BitstreamError, match="16000x16000"):
        decode_keyframe(bytes(webp), "webp")
    jpeg = bytearray(encode_keyframe(face[:32, :32], "jpeg", 50))
    sof = jpeg.find(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 40000, 40000)
    with pytest.raises(BitstreamError, match="40000x40000"):
        decode_keyframe(bytes(jpeg), "jpeg")


def test_unknown_codec_on_receive_is_bitstream_error() -> None:
    with pytest.raises(BitstreamError):
        decode_keyframe(b"abc", 99)


@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="Linux scheduling calls")
@pytest.mark.parametrize("codec", list(ImageCodec))
def test_encoding_leaves_the_threads_scheduling_as_it_was(face: np.ndarray, codec) -> None:
    """SVT-AV1 run as root switches its calling thread to SCHED_FIFO 99 and keeps it there;
    the encoder must hand the thread back as it found it (threads started later inherit it)."""
    before = os.sched_getscheduler(0), os.sched_getparam(0)
    encode_keyframe(face, codec)
    assert (os.sched_getscheduler(0), os.sched_getparam(0)) == before
