"""Classic codec baselines through PyAV: x264, x265, VP8, VP9 and SVT-AV1 at a target bitrate.

Each clip is encoded with one keyframe (a GOP longer than the clip, scene-cut detection off),
yuv420p, in one of two setting families (docs/metrics.md lists every option):

- ``lowdelay``: what a call would use; no lookahead, no B-frames, CBR-like rate control with a
  1 s VBV buffer (x264/x265 ``tune=zerolatency``; VP8/VP9 ``deadline=realtime``, lag 0, CBR;
  SVT-AV1 real-time mode with the low-delay prediction structure and CBR).
- ``best``: the slow, best-quality settings; 2-pass where PyAV can drive it (x264 veryslow and
  x265 slower, both 2-pass ABR through their stats files); VP9 ``deadline=good``, cpu-used 1,
  alt-ref frames with a 25-frame lag, 1-pass VBR; SVT-AV1 preset 3, 1-pass VBR. libvpx and
  libsvtav1 exchange first-pass statistics through ``AVCodecContext.stats_out/stats_in``, which
  PyAV does not expose, so their 2-pass modes are out of reach here.

Bits come from the bytes really produced (the CompressAI / DCVC rule): the sum of the encoded
packets' sizes plus any out-of-band header (``extradata``, empty for all five encoders as set up
here). No container is written, so no container overhead is counted; timestamps travel beside
the packets as a container would carry them. Two pieces of metadata that no call would send are
removed before counting: x264's version/options SEI (~620 bytes, stripped by the
``filter_units=remove_types=6`` bitstream filter) and x265's info SEI (~2.3 KB, ``info=0``).

Every encode is decoded again by a fresh decoder from those bytes alone, and the frame count is
checked.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import av.bitstream
import numpy as np

from iwcodec.errors import InputError, IWCodecError

Codec = Literal["x264", "x265", "vp8", "vp9", "svtav1"]
Mode = Literal["lowdelay", "best"]
CODECS: tuple[str, ...] = ("x264", "x265", "vp8", "vp9", "svtav1")
MODES: tuple[str, ...] = ("lowdelay", "best")

LOWDELAY_VBV_SECONDS = 1.0  # VBV / rate-control buffer of the call settings
# x264 and x265 take whole kbps (libavcodec truncates bit_rate / 1000); 0 kbps is refused.
MIN_KBPS, MAX_KBPS = 1.0, 100_000.0

_DECODERS = {"x264": "h264", "x265": "hevc", "vp8": "vp8", "vp9": "vp9", "svtav1": "libdav1d"}
_ENCODERS = {
    "x264": "libx264",
    "x265": "libx265",
    "vp8": "libvpx",
    "vp9": "libvpx-vp9",
    "svtav1": "libsvtav1",
}


@dataclass(frozen=True)
class EncoderSetup:
    """What PyAV is asked for: the encoder, its options for each pass, and rate targets.

    passes: one options dict per pass (2 entries = 2-pass); values are libavcodec option strings.
    strip_sei: codec name for the filter_units bitstream filter removing SEI NAL units, or None.
    """

    encoder: str
    decoder: str
    bit_rate: int  # bits per second
    gop: int
    passes: tuple[dict[str, str], ...]
    strip_sei: str | None = None


def _vbv(bit_rate: int) -> dict[str, str]:
    # maxrate == bit_rate makes libvpx and libsvtav1 pick CBR, and caps x264/x265 through VBV.
    return {
        "maxrate": str(bit_rate),
        "bufsize": str(int(bit_rate * LOWDELAY_VBV_SECONDS)),
    }


def _x264_lowdelay(bit_rate: int, gop: int, stats: Path) -> EncoderSetup:
    opts = {
        "preset": "medium",
        "tune": "zerolatency",
        "x264-params": "scenecut=0",
        **_vbv(bit_rate),
    }
    return EncoderSetup("libx264", "h264", bit_rate, gop, (opts,), strip_sei="h264")


def _x264_best(bit_rate: int, gop: int, stats: Path) -> EncoderSetup:
    base = {"preset": "veryslow", "x264-params": "scenecut=0", "stats": str(stats)}
    passes = ({**base, "flags": "+pass1"}, {**base, "flags": "+pass2"})
    return EncoderSetup("libx264", "h264", bit_rate, gop, passes, strip_sei="h264")


_X265_COMMON = "scenecut=0:info=0:log-level=error"


def _x265_lowdelay(bit_rate: int, gop: int, stats: Path) -> EncoderSetup:
    opts = {
        "preset": "medium",
        "tune": "zerolatency",
        "x265-params": _X265_COMMON,
        **_vbv(bit_rate),
    }
    return EncoderSetup("libx265", "hevc", bit_rate, gop, (opts,))


def _x265_best(bit_rate: int, gop: int, stats: Path) -> EncoderSetup:
    if ":" in str(stats):
        raise InputError(f"x265 cannot take a stats path containing ':' ({stats})")
    passes = tuple(
        {"preset": "slower", "x265-params": f"{_X265_COMMON}:pass={p}:stats={stats}"}
        for p in (1, 2)
    )
    return EncoderSetup("libx265", "hevc", bit_rate, gop, passes)


def _vpx_lowdelay(encoder: str, decoder: str, cpu_used: int, extra: dict[str, str]):
    def setup(bit_rate: int, gop: int, stats: Path) -> EncoderSetup:
        # Close to libwebrtc's small-resolution settings (cpu-used 4 for VP8, speed 5 for VP9,
        # 15% overshoot), but no frame dropping (every frame is scored) and no cap on the
        # keyframe's size (libwebrtc's max-intra-rate would starve the only keyframe).
        opts = {
            "deadline": "realtime",
            "cpu-used": str(cpu_used),
            "lag-in-frames": "0",
            "drop-threshold": "0",
            "undershoot-pct": "100",
            "overshoot-pct": "15",
            "qmax": "63",
            **_vbv(bit_rate),
            "minrate": str(bit_rate),
            **extra,
        }
        return EncoderSetup(encoder, decoder, bit_rate, gop, (opts,))

    return setup


def _vp9_best(bit_rate: int, gop: int, stats: Path) -> EncoderSetup:
    opts = {
        "deadline": "good",
        "cpu-used": "1",
        "lag-in-frames": "25",
        "auto-alt-ref": "1",
        "row-mt": "1",
        "qmax": "63",
    }
    return EncoderSetup("libvpx-vp9", "vp9", bit_rate, gop, (opts,))


def _svtav1_lowdelay(bit_rate: int, gop: int, stats: Path) -> EncoderSetup:
    opts = {"preset": "10", "svtav1-params": "rtc=1:pred-struct=1:scd=0", **_vbv(bit_rate)}
    return EncoderSetup("libsvtav1", "libdav1d", bit_rate, gop, (opts,))


def _svtav1_best(bit_rate: int, gop: int, stats: Path) -> EncoderSetup:
    opts = {"preset": "3", "svtav1-params": "scd=0"}
    return EncoderSetup("libsvtav1", "libdav1d", bit_rate, gop, (opts,))


_SETUPS: dict[tuple[str, str], Callable[[int, int, Path], EncoderSetup]] = {
    ("x264", "lowdelay"): _x264_lowdelay,
    ("x264", "best"): _x264_best,
    ("x265", "lowdelay"): _x265_lowdelay,
    ("x265", "best"): _x265_best,
    ("vp8", "lowdelay"): _vpx_lowdelay("libvpx", "vp8", 4, {}),
    ("vp9", "lowdelay"): _vpx_lowdelay("libvpx-vp9", "vp9", 5, {"aq-mode": "3", "row-mt": "1"}),
    ("vp9", "best"): _vp9_best,
    ("svtav1", "lowdelay"): _svtav1_lowdelay,
    ("svtav1", "best"): _svtav1_best,
}


def available_settings() -> list[tuple[str, str]]:
    """The (codec, mode) pairs this module can run (VP8 has no separate best mode here)."""
    return list(_SETUPS)


def encoder_setup(
    codec: str, mode: str, target_kbps: float, n_frames: int, stats: Path
) -> EncoderSetup:
    """The setup for ``codec`` in ``mode`` at ``target_kbps``; ``stats`` is the 2-pass log path."""
    if (codec, mode) not in _SETUPS:
        raise InputError(
            f"no classic setting {codec!r}/{mode!r}; available: {sorted(set(_SETUPS))}"
        )
    if not MIN_KBPS <= target_kbps <= MAX_KBPS:
        raise InputError(f"target bitrate {target_kbps} kbps is outside {MIN_KBPS}..{MAX_KBPS}")
    # A GOP one longer than the clip: exactly one keyframe (SVT-AV1 also needs it finite for VBR).
    return _SETUPS[(codec, mode)](round(target_kbps * 1000), n_frames + 1, stats)


@dataclass
class EncodedPacket:
    data: bytes
    pts: int | None
    dts: int | None
    is_keyframe: bool


@dataclass
class ClassicResult:
    """One classic encode, decoded again from its bytes.

    bytes = packet_bytes + header_bytes (extradata; 0 for the setups here); kbps from bytes.
    packets, extradata: exactly what was counted (and decoded).
    decoded: (T, H, W, 3) uint8 RGB from a fresh decoder.
    """

    codec: str
    mode: str
    target_kbps: float
    params: dict[str, Any]
    frames: int
    fps: float
    bytes: int
    packet_bytes: int
    header_bytes: int
    kbps: float
    keyframes: int
    packet_sizes: list[int]
    encode_s: float
    decode_s: float
    packets: list[EncodedPacket] = field(repr=False)
    extradata: bytes = field(repr=False)
    decoded: np.ndarray = field(repr=False)


def check_frames(frames: np.ndarray, fps: float) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4:
        raise InputError("classic codecs need uint8 RGB frames (T, H, W, 3)")
    t, h, w, c = frames.shape
    if c != 3 or t == 0:
        raise InputError(f"classic codecs need uint8 RGB frames (T, H, W, 3), got {frames.shape}")
    if h % 2 or w % 2 or min(h, w) < 64:
        raise InputError(f"frames must have even sides of at least 64 px for yuv420p, got {w}x{h}")
    if not fps > 0:
        raise InputError(f"fps must be positive, got {fps}")


def _rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def _yuv_frames(frames: np.ndarray) -> list[av.VideoFrame]:
    # RGB -> yuv420p with swscale's defaults (BT.601, limited range); the decoder side uses the
    # same conversion back, so the chroma subsampling loss is part of every classic codec's cost.
    out = []
    for i, rgb in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        vf.pts = i
        out.append(vf)
    return out


def _open_encoder(
    setup: EncoderSetup, options: dict[str, str], width: int, height: int, fps: float, bit_rate: int
) -> av.CodecContext:
    cc = av.CodecContext.create(setup.encoder, "w")
    cc.width, cc.height = width, height
    cc.pix_fmt = "yuv420p"
    cc.framerate = _rate(fps)
    cc.time_base = 1 / _rate(fps)
    cc.bit_rate = bit_rate
    cc.gop_size = setup.gop
    cc.options = dict(options)
    cc.open()
    return cc


def _open_at_floor(
    setup: EncoderSetup, options: dict[str, str], width: int, height: int, fps: float
) -> tuple[av.CodecContext, int]:
    """Open the encoder at the target, or at the lowest rate it accepts above it.

    x264's second pass refuses a target below the minimum it estimates from the first pass
    ("requested bitrate is too low"); it fails while opening, so stepping the rate up by 10% until
    it opens is cheap and lands within 10% of that floor. The rate used is reported.
    """
    bit_rate = setup.bit_rate
    while True:
        try:
            return _open_encoder(setup, options, width, height, fps, bit_rate), bit_rate
        except av.error.FFmpegError as e:
            if bit_rate > MAX_KBPS * 1000:
                raise IWCodecError(f"{setup.encoder} refused options {options}: {e}") from None
            bit_rate = int(bit_rate * 1.1) + 1


def _encode_pass(
    setup: EncoderSetup, options: dict[str, str], yuv: list[av.VideoFrame], fps: float
) -> tuple[list[EncodedPacket], bytes, int]:
    """One pass over the clip -> (packets, extradata, bit rate the encoder was opened with)."""
    width, height = yuv[0].width, yuv[0].height
    if "+pass2" in options.get("flags", ""):
        cc, bit_rate = _open_at_floor(setup, options, width, height, fps)
    else:
        bit_rate = setup.bit_rate
        try:
            cc = _open_encoder(setup, options, width, height, fps, bit_rate)
        except av.error.FFmpegError as e:
            raise IWCodecError(f"{setup.encoder} refused options {options}: {e}") from None
    try:
        packets = [p for f in yuv for p in cc.encode(f)]
        packets += cc.encode(None)
    except av.error.FFmpegError as e:
        raise IWCodecError(f"{setup.encoder} failed with options {options}: {e}") from None
    extradata = bytes(cc.extradata or b"")
    if setup.strip_sei:
        bsf = av.bitstream.BitStreamFilterContext("filter_units=remove_types=6", setup.strip_sei)
        packets = [q for p in packets for q in bsf.filter(p)] + bsf.filter(None)
    encoded = [EncodedPacket(bytes(p), p.pts, p.dts, bool(p.is_keyframe)) for p in packets]
    return encoded, extradata, bit_rate


def decode_packets(
    decoder: str, packets: list[EncodedPacket], extradata: bytes, expect_frames: int
) -> np.ndarray:
    """Decode with a fresh ``decoder`` -> (T, H, W, 3) uint8 RGB; checks the frame count."""
    dec = av.CodecContext.create(decoder, "r")
    if extradata:
        dec.extradata = extradata
    frames = []
    for p in packets:
        pkt = av.Packet(p.data)
        pkt.pts, pkt.dts = p.pts, p.dts
        frames += dec.decode(pkt)
    frames += dec.decode(None)
    if len(frames) != expect_frames:
        raise IWCodecError(f"{decoder} decoded {len(frames)} frames, {expect_frames} were encoded")
    return np.stack([f.to_ndarray(format="rgb24") for f in frames])


def encode_decode(
    frames: np.ndarray,
    fps: float,
    codec: str,
    mode: str,
    target_kbps: float,
    workdir: str | Path | None = None,
) -> ClassicResult:
    """Encode (T, H, W, 3) uint8 RGB ``frames`` with ``codec`` in ``mode`` at ``target_kbps``,
    count the bytes, and decode them with a fresh decoder.

    ``workdir`` holds 2-pass statistics files (a temporary folder when None).
    """
    check_frames(frames, fps)
    with tempfile.TemporaryDirectory(dir=workdir, prefix="classic-") as tmp:
        setup = encoder_setup(codec, mode, target_kbps, len(frames), Path(tmp) / "pass.log")
        yuv = _yuv_frames(frames)
        start = time.perf_counter()
        for options in setup.passes:
            packets, extradata, bit_rate = _encode_pass(setup, options, yuv, fps)
        encode_s = time.perf_counter() - start
    start = time.perf_counter()
    decoded = decode_packets(setup.decoder, packets, extradata, len(frames))
    decode_s = time.perf_counter() - start
    sizes = [len(p.data) for p in packets]
    total = sum(sizes) + len(extradata)
    last = {k: v for k, v in setup.passes[-1].items() if k != "stats"}
    params = {
        "encoder": setup.encoder,
        "mode": mode,
        "passes": len(setup.passes),
        "target_kbps": target_kbps,
        # Differs from the target only where the encoder refused it (x264 2-pass floor).
        "bit_rate_kbps": bit_rate / 1000,
        "gop": setup.gop,
        "options": {k: v.split(":stats=")[0] for k, v in last.items()},
        "sei_stripped": setup.strip_sei is not None,
    }
    return ClassicResult(
        codec=codec,
        mode=mode,
        target_kbps=target_kbps,
        params=params,
        frames=len(frames),
        fps=float(fps),
        bytes=total,
        packet_bytes=sum(sizes),
        header_bytes=len(extradata),
        kbps=total * 8 / (len(frames) / fps) / 1000,
        keyframes=sum(p.is_keyframe for p in packets),
        packet_sizes=sizes,
        encode_s=encode_s,
        decode_s=decode_s,
        packets=packets,
        extradata=extradata,
        decoded=decoded,
    )
