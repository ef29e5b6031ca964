"""Classic codecs through PyAV: byte accounting, fresh decoding, settings (eval/classic.py)."""

from __future__ import annotations

import numpy as np
import pytest

from eval.classic import (
    CODECS,
    MODES,
    available_settings,
    decode_packets,
    encode_decode,
)
from eval.metrics import psnr_per_frame
from iwcodec.errors import InputError, IWCodecError

FPS = 25.0


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    """8 frames of smooth moving colour bands, (8, 64, 96, 3) uint8."""
    t, h, w = 8, 64, 96
    yy, xx = np.mgrid[:h, :w]
    frames = [
        np.stack(
            [
                128 + 90 * np.sin((xx + 2 * i) / 9),
                128 + 90 * np.cos((yy - i) / 7),
                128 + 50 * np.sin((xx + yy + 3 * i) / 13),
            ],
            -1,
        )
        for i in range(t)
    ]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def test_every_codec_has_a_setting() -> None:
    codecs = {c for c, _ in available_settings()}
    assert codecs == set(CODECS)
    assert all(m in MODES for _, m in available_settings())


@pytest.mark.parametrize(("codec", "mode"), available_settings())
def test_encode_decode(clip: np.ndarray, codec: str, mode: str) -> None:
    r = encode_decode(clip, FPS, codec, mode, 150.0)
    assert r.decoded.shape == clip.shape and r.decoded.dtype == np.uint8
    assert r.frames == len(clip) and r.keyframes == 1
    assert r.bytes == sum(r.packet_sizes) + r.header_bytes == r.packet_bytes + r.header_bytes
    assert r.kbps == pytest.approx(r.bytes * 8 / (len(clip) / FPS) / 1000)
    # Real pictures came back: smooth content at 150 kbps is easily above 28 dB.
    assert psnr_per_frame(clip, r.decoded).mean() > 28
    assert r.params["passes"] == (2 if (codec, mode) in {("x264", "best"), ("x265", "best")} else 1)


def test_more_bits_for_higher_target(clip: np.ndarray) -> None:
    low = encode_decode(clip, FPS, "x264", "lowdelay", 20.0)
    high = encode_decode(clip, FPS, "x264", "lowdelay", 400.0)
    assert high.bytes > 2 * low.bytes
    assert psnr_per_frame(clip, high.decoded).mean() > psnr_per_frame(clip, low.decoded).mean()


@pytest.mark.parametrize(("codec", "marker"), [("x264", b"x264 - core"), ("x265", b"x265 (build")])
def test_version_sei_not_counted(clip: np.ndarray, codec: str, marker: bytes) -> None:
    # Hundreds of bytes of encoder name and options that no call would send.
    r = encode_decode(clip, FPS, codec, "lowdelay", 100.0)
    assert not any(marker in p.data for p in r.packets)
    assert r.packet_sizes == [len(p.data) for p in r.packets]


def test_x264_two_pass_floor(clip: np.ndarray) -> None:
    # x264's second pass refuses targets below its own estimate of the minimum: the rate is
    # stepped up until it accepts, and the rate used is reported.
    r = encode_decode(clip, FPS, "x264", "best", 1.0)
    assert r.params["bit_rate_kbps"] > 1.0 and r.params["target_kbps"] == 1.0
    assert r.decoded.shape == clip.shape
    assert encode_decode(clip, FPS, "x264", "best", 300.0).params["bit_rate_kbps"] == 300.0


def test_decoder_checks_frame_count(clip: np.ndarray) -> None:
    r = encode_decode(clip, FPS, "vp8", "lowdelay", 100.0)
    again = decode_packets("vp8", r.packets, r.extradata, len(clip))
    np.testing.assert_array_equal(again, r.decoded)
    with pytest.raises(IWCodecError, match="decoded 6 frames"):
        decode_packets("vp8", r.packets[:6], r.extradata, len(clip))


def test_bad_inputs(clip: np.ndarray) -> None:
    with pytest.raises(InputError):
        encode_decode(clip[:, :63], FPS, "x264", "lowdelay", 50.0)  # odd height
    with pytest.raises(InputError):
        encode_decode(clip.astype(np.float32), FPS, "x264", "lowdelay", 50.0)
    with pytest.raises(InputError):
        encode_decode(clip, FPS, "mpeg2", "lowdelay", 50.0)
    with pytest.raises(InputError):
        encode_decode(clip, FPS, "vp8", "best", 50.0)
    with pytest.raises(InputError):
        encode_decode(clip, FPS, "x264", "lowdelay", 0.0)
    with pytest.raises(InputError):
        encode_decode(clip, 0.0, "x264", "lowdelay", 50.0)
