"""Keyframe decoding: the bytes of one standard-codec picture back to RGB, through PyAV.

Counterpart of ``sender.keyframe.encode_keyframe`` (codec ids: :class:`bitstream.units.ImageCodec`).
Each call uses a fresh decoder, so a damaged keyframe cannot poison the next one. The bytes come
from the network or a file, so they are checked before anything large is allocated:

- the picture size is read from the header (WebP, JPEG, PNG) and refused above ``max_side``;
- the decoder itself is capped at ``max_side`` squared pixels (FFmpeg's ``max_pixels``), which
  also covers AV1, whose size sits in a bit-packed sequence header;
- truncation that a decoder would silently conceal is caught where the format allows it: a
  WebP's RIFF length must match, a JPEG must end with its EOI marker.

Every failure is a :class:`iwcodec.errors.BitstreamError` naming the codec.
"""

from __future__ import annotations

import struct

import av
import numpy as np

from bitstream.units import ImageCodec
from iwcodec.errors import BitstreamError

MAX_SIDE = 2048

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
    try:
        if isinstance(codec, ImageCodec):
            return codec
        if isinstance(codec, str):
            return ImageCodec[codec.strip().upper()]
        return ImageCodec(int(codec))
    except (KeyError, ValueError, TypeError):
        raise BitstreamError(f"keyframe: unknown image codec {codec!r}") from None


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
