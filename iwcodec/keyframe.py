"""Keyframe image codec, both ways: one RGB picture to the bytes of a standard image codec and
back, through PyAV. The sender encodes (and decodes its own keyframes, to know the picture the
receiver holds); the receiver decodes.

The keyframe is the only picture the receiver gets (implicit warping paper, Sec. 3: the
source frame(s) whose features every later frame is warped from), so its quality bounds the
whole call's. Codecs are named by :class:`bitstream.units.ImageCodec`; each payload is a
complete stand-alone picture that :func:`decode_keyframe` decodes with fresh state:

- WEBP: a RIFF/WebP file (libwebp, lossy VP8, 4:2:0);
- AV1: one AV1 temporal unit (libsvtav1, intra only): temporal delimiter, sequence header
  and frame OBUs, so no container or extradata is needed;
- JPEG: a baseline JFIF picture (FFmpeg's mjpeg, full-range 4:2:0, optimal Huffman tables);
- PNG: lossless, for tests and references.

``quality`` is one scale for all codecs, 1 (smallest) to 100 (best), mapped to each codec's
own knob by :func:`native_setting` (WebP quality as is; AV1 crf = 63 * (1 - q / 100), at
least 1; JPEG qscale = 31 * (1 - q / 100), at least 1).

Default AV1 at quality 75 (crf 16), from a one-off study on the validation crops
(results/keyframe_codecs.json, made by tools/keyframe_codec_study.py at commit d97f135): ~3.9
KB at 40.7 dB PSNR / SSIM 0.978 for 256x256. AV1 needs ~55 % fewer bytes than JPEG and ~35 %
fewer than WebP at equal PSNR; past ~41 dB each extra dB costs ~30 % more bytes, beyond what
the warped reconstruction can show.

Decoding (:func:`decode_keyframe`) uses a fresh decoder per call, so a damaged keyframe cannot
poison the next one. The bytes come from the network or a file, so they are checked before
anything large is allocated:

- the picture size is read from the header (WebP, JPEG, PNG) and refused above ``max_side``;
- the decoder itself is capped at ``max_side`` squared pixels (FFmpeg's ``max_pixels``), which
  also covers AV1, whose size sits in a bit-packed sequence header;
- truncation that a decoder would silently conceal is caught where the format allows it: a
  WebP's RIFF length must match, a JPEG must end with its EOI marker.

Every decoding failure is a :class:`iwcodec.errors.BitstreamError` naming the codec.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable, Iterator
from fractions import Fraction

import av
import numpy as np

from bitstream.units import ImageCodec
from iwcodec.errors import BitstreamError, InputError

DEFAULT_CODEC = ImageCodec.AV1
DEFAULT_QUALITY = 75
MIN_SIDE = 16
MAX_SIDE = 2048
AV1_PRESET = (
    4  # SVT-AV1 speed: ~14 % smaller than preset 8 at equal PSNR, ~40 ms vs ~16 ms at 256 px
)


def _lookup(codec: ImageCodec | str | int) -> ImageCodec | None:
    """ImageCodec from itself, its name (any case) or its number; None when it is none."""
    if isinstance(codec, ImageCodec):
        return codec
    try:
        if isinstance(codec, str):
            return ImageCodec[codec.strip().upper()]
        return ImageCodec(int(codec))
    except (KeyError, ValueError, TypeError):
        return None


def parse_codec(codec: ImageCodec | str | int) -> ImageCodec:
    """A codec a user names (:func:`_lookup`); InputError when it is none."""
    found = _lookup(codec)
    if found is None:
        names = ", ".join(c.name.lower() for c in ImageCodec)
        raise InputError(f"unknown keyframe codec {codec!r} (known: {names})")
    return found


def native_setting(codec: ImageCodec | str | int, quality: int) -> dict[str, int]:
    """The codec's own setting for ``quality`` in 1..100 (higher is better)."""
    codec = parse_codec(codec)
    if not 1 <= int(quality) <= 100:
        raise InputError(f"keyframe quality must be within 1..100, got {quality}")
    q = int(quality)
    if codec is ImageCodec.WEBP:
        return {"quality": q}
    if codec is ImageCodec.AV1:
        return {"crf": max(1, round(63 * (1 - q / 100)))}  # SVT-AV1 reads crf 0 as "unset"
    if codec is ImageCodec.JPEG:
        return {"qscale": max(1, round(31 * (1 - q / 100)))}
    return {}


def _check_picture(rgb: np.ndarray) -> np.ndarray:
    if (
        not isinstance(rgb, np.ndarray)
        or rgb.dtype != np.uint8
        or rgb.ndim != 3
        or rgb.shape[2] != 3
    ):
        what = getattr(rgb, "dtype", type(rgb).__name__), getattr(rgb, "shape", "")
        raise InputError(f"a keyframe must be a uint8 (H, W, 3) RGB array, got {what}")
    h, w = rgb.shape[:2]
    if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise InputError(f"keyframe size {w}x{h} is outside {MIN_SIDE}..{MAX_SIDE} px")
    if w % 2 or h % 2:
        raise InputError(f"keyframe size {w}x{h}: width and height must be even (4:2:0 chroma)")
    return np.ascontiguousarray(rgb)


def _run_encoder(name: str, pix_fmt: str, rgb: np.ndarray, options: dict[str, str]) -> bytes:
    """Encode one picture with a fresh encoder and return all of its packets' bytes."""
    ctx = av.CodecContext.create(name, "w")
    ctx.width, ctx.height = rgb.shape[1], rgb.shape[0]
    ctx.pix_fmt = pix_fmt
    ctx.time_base = Fraction(1, 25)
    ctx.framerate = Fraction(25)
    ctx.options = options
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
    frame.pts = 0
    try:
        packets = list(ctx.encode(frame)) + list(ctx.encode(None))
    except av.FFmpegError as exc:
        raise InputError(
            f"{name} could not encode a {ctx.width}x{ctx.height} keyframe ({exc})"
        ) from None
    data = b"".join(bytes(p) for p in packets)
    if not data:
        raise InputError(f"{name} produced no data for the keyframe")
    return data


def _encode_webp(rgb: np.ndarray, quality: int) -> bytes:
    # compression_level 6: libwebp's slowest, smallest method; ~10 ms at 256 px
    opts = {
        "quality": str(native_setting(ImageCodec.WEBP, quality)["quality"]),
        "compression_level": "6",
    }
    return _run_encoder("libwebp", "yuv420p", rgb, opts)


@contextlib.contextmanager
def _own_scheduling() -> Iterator[None]:
    """Give the calling thread its scheduling policy back afterwards. SVT-AV1, allowed to (as
    root), switches the thread that opens an encoder to real-time scheduling (SCHED_FIFO,
    priority 99) and leaves it there; every thread and process started from it afterwards
    inherits that, so a sender's workers could starve the rest of the machine."""
    if not hasattr(os, "sched_getscheduler"):  # not Linux
        yield
        return
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if (os.sched_getscheduler(0), os.sched_getparam(0)) != (policy, param):
            os.sched_setscheduler(0, policy, param)  # lowering is always allowed


def _encode_av1(rgb: np.ndarray, quality: int) -> bytes:
    # SVT-AV1 prints a banner per encoder to stderr unless told otherwise
    os.environ.setdefault("SVT_LOG", "1")
    crf = native_setting(ImageCodec.AV1, quality)["crf"]
    options = {"crf": str(crf), "preset": str(AV1_PRESET)}
    with _own_scheduling():
        return _run_encoder("libsvtav1", "yuv420p", rgb, options)


def _encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    q = str(native_setting(ImageCodec.JPEG, quality)["qscale"])
    # a fixed quantizer: qmin = qmax pins FFmpeg's rate control to it
    return _run_encoder("mjpeg", "yuvj420p", rgb, {"qmin": q, "qmax": q, "huffman": "optimal"})


def _encode_png(rgb: np.ndarray, quality: int) -> bytes:
    return _run_encoder("png", "rgb24", rgb, {})


_ENCODERS: dict[ImageCodec, Callable[[np.ndarray, int], bytes]] = {
    ImageCodec.WEBP: _encode_webp,
    ImageCodec.AV1: _encode_av1,
    ImageCodec.JPEG: _encode_jpeg,
    ImageCodec.PNG: _encode_png,
}


def encode_keyframe(
    rgb: np.ndarray, codec: ImageCodec | str | int = DEFAULT_CODEC, quality: int = DEFAULT_QUALITY
) -> bytes:
    """rgb (H, W, 3) uint8, even sides within 16..2048 -> a stand-alone picture in ``codec``.

    Raises InputError for a bad picture, an unknown codec or a quality outside 1..100."""
    codec = parse_codec(codec)
    native_setting(codec, quality)  # validates quality
    return _ENCODERS[codec](_check_picture(rgb), int(quality))


# -- decoding ---------------------------------------------------------------------------------
_DECODERS = {
    ImageCodec.WEBP: "webp",
    ImageCodec.AV1: "libdav1d",
    ImageCodec.JPEG: "mjpeg",
    ImageCodec.PNG: "png",
}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers: C0..CF except DHT (C4), JPG (C8) and DAC (CC)
_JPEG_SOF = {m for m in range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}


def _codec(codec: ImageCodec | str | int) -> ImageCodec:
    """A codec a stream names (:func:`_lookup`); BitstreamError when it is none."""
    found = _lookup(codec)
    if found is None:
        raise BitstreamError(f"keyframe: unknown image codec {codec!r}")
    return found


def _webp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise BitstreamError("WebP keyframe: no RIFF/WEBP header")
    riff = struct.unpack_from("<I", data, 4)[0]
    if riff + 8 != len(data):
        raise BitstreamError(
            f"WebP keyframe: RIFF says {riff + 8} bytes, got {len(data)} (truncated or padded)"
        )
    fourcc = data[12:16]
    if fourcc == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise BitstreamError("WebP keyframe: bad VP8 start code")
        w, h = struct.unpack_from("<HH", data, 26)
        return w & 0x3FFF, h & 0x3FFF
    if fourcc == b"VP8L":
        if data[20] != 0x2F:
            raise BitstreamError("WebP keyframe: bad VP8L signature")
        bits = struct.unpack_from("<I", data, 21)[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if fourcc == b"VP8X":
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    raise BitstreamError(f"WebP keyframe: unknown chunk {fourcc!r}")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    if data[:2] != b"\xff\xd8":
        raise BitstreamError("JPEG keyframe: no start-of-image marker")
    if data[-2:] != b"\xff\xd9":
        raise BitstreamError("JPEG keyframe: no end-of-image marker (truncated)")
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise BitstreamError(f"JPEG keyframe: marker expected at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        seg = struct.unpack_from(">H", data, i + 2)[0]
        if marker in _JPEG_SOF:
            if i + 9 > len(data):
                break
            h, w = struct.unpack_from(">HH", data, i + 5)
            return w, h
        if marker == 0xDA:
            break
        i += 2 + seg
    raise BitstreamError("JPEG keyframe: no frame header before the image data")


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise BitstreamError("PNG keyframe: no PNG signature and header")
    w, h = struct.unpack_from(">II", data, 16)
    return w, h


def keyframe_size(data: bytes, codec: ImageCodec | str | int) -> tuple[int, int] | None:
    """(width, height) from the picture header, or None where it is not read here (AV1).

    Raises BitstreamError when the header is malformed."""
    codec = _codec(codec)
    if codec is ImageCodec.WEBP:
        return _webp_size(data)
    if codec is ImageCodec.JPEG:
        return _jpeg_size(data)
    if codec is ImageCodec.PNG:
        return _png_size(data)
    return None


def decode_keyframe(
    data: bytes | bytearray | memoryview, codec: ImageCodec | str | int, max_side: int = MAX_SIDE
) -> np.ndarray:
    """Decode one keyframe -> RGB uint8 (H, W, 3), with a fresh decoder.

    Raises BitstreamError for empty, corrupt or truncated data, for a picture wider or taller
    than ``max_side``, or for data that decodes to no picture."""
    codec = _codec(codec)
    data = bytes(data)
    if not data:
        raise BitstreamError(f"{codec.name} keyframe: no data")
    size = keyframe_size(data, codec)
    if size is not None:
        w, h = size
        if not (0 < w <= max_side and 0 < h <= max_side):
            raise BitstreamError(f"{codec.name} keyframe: size {w}x{h} outside 1..{max_side} px")
    ctx = av.CodecContext.create(_DECODERS[codec], "r")
    ctx.options = {"max_pixels": str(max_side * max_side)}
    try:
        frames = list(ctx.decode(av.Packet(data))) + list(ctx.decode(None))
    except (av.FFmpegError, OverflowError, ValueError) as exc:
        raise BitstreamError(
            f"{codec.name} keyframe: cannot be decoded, corrupt or too large ({exc})"
        ) from None
    if len(frames) != 1:
        raise BitstreamError(
            f"{codec.name} keyframe: decoded to {len(frames)} pictures, expected 1"
        )
    frame = frames[0]
    if not (0 < frame.width <= max_side and 0 < frame.height <= max_side):
        raise BitstreamError(
            f"{codec.name} keyframe: size {frame.width}x{frame.height} outside 1..{max_side} px"
        )
    if size is not None and (frame.width, frame.height) != size:
        raise BitstreamError(
            f"{codec.name} keyframe: header says {size[0]}x{size[1]}, picture is {frame.width}x{frame.height}"
        )
    try:
        return frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, ValueError) as exc:
        raise BitstreamError(f"{codec.name} keyframe: cannot convert to RGB ({exc})") from None
