"""Typed, self-delimiting units: the one wire format for files and network packets.

Every unit is framed the same way (docs/bitstream.md, "Unit framing")::

    start code  3 bytes  8A 49 57 ("\\x8aIW")
    type        u8       UnitType
    body_len    uvarint  bytes in body, bounded per type
    body        body_len bytes
    crc         u32 LE   CRC-32 (zlib/IEEE) of type + body_len bytes + body

Each unit class is a frozen dataclass with ``to_bytes()`` and ``parse(data) -> (unit, rest)``.
``parse`` raises :class:`BitstreamError` on truncation, a CRC mismatch or a field out of bounds,
and :class:`UnsupportedStreamError` on a parameter unit with a foreign magic or version. Every
length and count is checked against a fixed limit before anything is allocated for it.
"""

from __future__ import annotations

import operator
import zlib
from dataclasses import dataclass
from enum import IntEnum
from fractions import Fraction
from typing import ClassVar, Union

from bitstream.frame import TIMESCALE
from bitstream.quant import DEFAULT_S_STEPS, DEFAULT_XY_STEPS
from bitstream.wire import Reader, encode_svarint, encode_uvarint
from iwcodec.errors import BitstreamError, UnsupportedStreamError

START_CODE = b"\x8aIW"
MAGIC = b"IWKP"
VERSION = 1

# Limits a parser enforces before allocating (docs/bitstream.md, "Limits").
MAX_DIMENSION = 4096
MAX_FPS_TERM = 1_000_000  # fps numerator and denominator
MIN_FPS, MAX_FPS = Fraction(1, 100), Fraction(1000)
MAX_KEYPOINTS = 256
MAX_STEPS = 65_535
MAX_FRAME_INDEX = 2**32 - 1
MAX_ID = 2**32 - 1
MAX_UNIT_FRAMES = 1024
MAX_REFS = 16
#: The receiver's keyframe set (docs/bitstream.md 3.2): keyframe ``k`` lives in slot
#: ``k mod KEYFRAME_SLOTS`` and replaces the keyframe held there, so the sender chooses which
#: keyframe a new one replaces by choosing its id, and both sides agree without more syntax.
KEYFRAME_SLOTS = 16
MAX_ABS_PTS = 2**47
MAX_KEYFRAME_BYTES = 16 * 2**20
MAX_KEYPOINT_BODY = 8 * 2**20
ID_BYTES = 8

_CRC_BYTES = 4


def keyframe_slot(keyframe_id: int) -> int:
    """The slot of the receiver's keyframe set that keyframe ``keyframe_id`` occupies."""
    return keyframe_id % KEYFRAME_SLOTS


class UnitType(IntEnum):
    PARAMS = 1
    KEYFRAME = 2
    KEYPOINTS = 3
    END = 4
    NO_FACE = 5


class Fill(IntEnum):
    """What a receiver shows for frames without a face (a NO_FACE unit): the sender's choice."""

    BLANK = 0  # a black picture
    HOLD = 1  # the last picture shown (black when there is none yet)


class ImageCodec(IntEnum):
    """Codec of a keyframe's bytes; the sender and receiver code them through PyAV."""

    WEBP = 1
    AV1 = 2
    JPEG = 3
    PNG = 4


class Predictor(IntEnum):
    """Temporal prediction of a keypoint's quantized value from earlier decoded frames."""

    PREVIOUS = 1  # q[t-1]
    LINEAR = 2  # 2 q[t-1] - q[t-2]
    HALF_LINEAR = 3  # q[t-1] + floor((q[t-1] - q[t-2]) / 2)


# Largest body per type; unknown types (a newer writer) may be skipped up to MAX_BODY_UNKNOWN.
MAX_BODY = {
    UnitType.PARAMS: 64,
    UnitType.KEYFRAME: MAX_KEYFRAME_BYTES + 32,
    UnitType.KEYPOINTS: MAX_KEYPOINT_BODY,
    UnitType.END: 32,
    UnitType.NO_FACE: 16 + 8 * MAX_UNIT_FRAMES,
}
MAX_BODY_UNKNOWN = 16 * 2**20


def max_body(type_code: int) -> int:
    try:
        return MAX_BODY[UnitType(type_code)]
    except ValueError:
        return MAX_BODY_UNKNOWN


def frame_unit(type_code: int, body: bytes) -> bytes:
    """Wrap ``body`` in start code, type, length and CRC."""
    if len(body) > max_body(type_code):
        raise BitstreamError(
            f"unit type {type_code}: body of {len(body)} bytes exceeds the limit of "
            f"{max_body(type_code)}"
        )
    covered = bytes([type_code]) + encode_uvarint(len(body)) + body
    return START_CODE + covered + zlib.crc32(covered).to_bytes(_CRC_BYTES, "little")


@dataclass(frozen=True)
class RawUnit:
    """A framed unit whose CRC checked out, before its body is interpreted."""

    type_code: int
    body: bytes
    size: int  # bytes on the wire, framing included


def split_unit(data: bytes | bytearray | memoryview) -> tuple[RawUnit, memoryview]:
    """Check the framing and CRC of the unit at the start of ``data``.

    Raises :class:`BitstreamError` if the start code is missing, the declared length exceeds
    the type's limit or the data, or the CRC does not match.
    """
    view = memoryview(data)
    if len(view) == 0:
        raise BitstreamError("unit: no data")
    if bytes(view[: len(START_CODE)]) != START_CODE[: min(len(view), len(START_CODE))]:
        raise BitstreamError("unit: no start code here (not an iwcodec unit, or damaged)")
    r = Reader(view, "unit")
    r.take(len(START_CODE), "start code")
    type_code = r.u8("type")
    limit = max_body(type_code)
    body_len = r.uvarint("body length", limit)
    covered_start = len(START_CODE)
    body = r.take(body_len, "body")
    covered_end = r.pos
    crc = int.from_bytes(r.take(_CRC_BYTES, "CRC"), "little")
    if zlib.crc32(view[covered_start:covered_end]) != crc:
        raise BitstreamError(f"{_type_name(type_code)} unit: CRC mismatch, the unit is damaged")
    return RawUnit(type_code, body, r.pos), view[r.pos :]


def _parse_typed(cls, data) -> tuple:
    raw, rest = split_unit(data)
    if raw.type_code != cls.TYPE:
        raise BitstreamError(
            f"expected a {cls.TYPE.name.lower()} unit, found unit type {raw.type_code}"
        )
    return cls.from_body(raw.body), rest


def _no_trailing(r: Reader) -> None:
    if r.remaining:
        raise r.fail(f"{r.remaining} unexpected bytes after the last field")


def _check_range(what: str, field: str, value: int, lo: int, hi: int) -> int:
    """``value`` as a plain int in ``[lo, hi]`` (numpy integers accepted), else BitstreamError."""
    try:
        value = operator.index(value)
    except TypeError:
        raise BitstreamError(f"{what}: {field} must be an integer, got {value!r}") from None
    if not lo <= value <= hi:
        raise BitstreamError(f"{what}: {field} = {value} is out of range [{lo}, {hi}]")
    return value


def _set_int(obj: object, what: str, field: str, lo: int, hi: int, label: str = "") -> None:
    value = _check_range(what, label or field, getattr(obj, field), lo, hi)
    object.__setattr__(obj, field, value)


def _type_name(type_code: int) -> str:
    try:
        return UnitType(type_code).name.lower()
    except ValueError:
        return f"type {type_code}"


@dataclass(frozen=True)
class ParamsUnit:
    """Stream parameters, sent once at the start of a file or a call.

    Attributes:
        width, height: output resolution in pixels (each 1..4096; which sizes the model
            supports is the receiver's business).
        fps_num, fps_den: nominal frame rate as a fraction, e.g. 30000/1001.
        num_keypoints: K, keypoints per frame (1..256).
        xy_steps: quantization steps across [-1, 1] for x and y (``q = round((x + 1) / 2 *
            xy_steps)``); 256 steps = 1 pixel at 256 px.
        s_steps: quantization steps across [0, 1] for strength.
        predictor: temporal predictor of the keypoint coder.
        weights_id: 8 bytes naming the model weights, given by the caller.
        entropy_id: 8 bytes naming the entropy model (``EntropyModel.id``).
    """

    TYPE: ClassVar[UnitType] = UnitType.PARAMS

    width: int
    height: int
    fps_num: int
    fps_den: int
    num_keypoints: int
    weights_id: bytes
    entropy_id: bytes
    xy_steps: int = DEFAULT_XY_STEPS
    s_steps: int = DEFAULT_S_STEPS
    predictor: Predictor = Predictor.PREVIOUS

    def __post_init__(self) -> None:
        w = "parameter unit"
        _set_int(self, w, "width", 1, MAX_DIMENSION)
        _set_int(self, w, "height", 1, MAX_DIMENSION)
        _set_int(self, w, "fps_num", 1, MAX_FPS_TERM, "fps numerator")
        _set_int(self, w, "fps_den", 1, MAX_FPS_TERM, "fps denominator")
        if not MIN_FPS <= self.fps <= MAX_FPS:
            raise BitstreamError(f"{w}: frame rate {float(self.fps):g} is out of range")
        _set_int(self, w, "num_keypoints", 1, MAX_KEYPOINTS, "keypoints per frame")
        _set_int(self, w, "xy_steps", 1, MAX_STEPS)
        _set_int(self, w, "s_steps", 1, MAX_STEPS)
        try:
            object.__setattr__(self, "predictor", Predictor(self.predictor))
        except ValueError:
            raise BitstreamError(f"{w}: unknown predictor {self.predictor!r}") from None
        for name in ("weights_id", "entropy_id"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != ID_BYTES:
                raise BitstreamError(f"{w}: {name} must be {ID_BYTES} bytes, got {value!r}")

    @property
    def fps(self) -> Fraction:
        return Fraction(self.fps_num, self.fps_den)

    def nominal_pts(self, index: int) -> int:
        """pts of frame ``index`` at the nominal rate, rounded half up (``TIMESCALE`` ticks)."""
        return (index * TIMESCALE * self.fps_den + self.fps_num // 2) // self.fps_num

    def body(self) -> bytes:
        return b"".join(
            [
                MAGIC,
                bytes([VERSION]),
                encode_uvarint(self.width),
                encode_uvarint(self.height),
                encode_uvarint(self.fps_num),
                encode_uvarint(self.fps_den),
                encode_uvarint(self.num_keypoints),
                encode_uvarint(self.xy_steps),
                encode_uvarint(self.s_steps),
                bytes([int(self.predictor)]),
                self.weights_id,
                self.entropy_id,
            ]
        )

    def to_bytes(self) -> bytes:
        return frame_unit(self.TYPE, self.body())

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> tuple[ParamsUnit, memoryview]:
        check_magic(data)
        return _parse_typed(cls, data)

    @classmethod
    def from_body(cls, body: bytes) -> ParamsUnit:
        r = Reader(body, "parameter unit")
        magic = r.take(len(MAGIC), "magic")
        if magic != MAGIC:
            raise UnsupportedStreamError(f"not an iwcodec stream (magic {magic!r}, want {MAGIC!r})")
        version = r.u8("version")
        if version != VERSION:
            raise UnsupportedStreamError(
                f"stream format version {version} is not supported (this reader reads {VERSION})"
            )
        width = r.uvarint("width", MAX_DIMENSION)
        height = r.uvarint("height", MAX_DIMENSION)
        if width == 0 or height == 0:
            raise r.fail(f"resolution {width}x{height} is empty")
        fps_num = r.uvarint("fps numerator", MAX_FPS_TERM)
        fps_den = r.uvarint("fps denominator", MAX_FPS_TERM)
        k = r.uvarint("keypoints per frame", MAX_KEYPOINTS)
        xy_steps = r.uvarint("xy_steps", MAX_STEPS)
        s_steps = r.uvarint("s_steps", MAX_STEPS)
        predictor = r.u8("predictor")
        weights_id = r.take(ID_BYTES, "weights_id")
        entropy_id = r.take(ID_BYTES, "entropy_id")
        _no_trailing(r)
        return cls(
            width=width,
            height=height,
            fps_num=fps_num,
            fps_den=fps_den,
            num_keypoints=k,
            weights_id=weights_id,
            entropy_id=entropy_id,
            xy_steps=xy_steps,
            s_steps=s_steps,
            predictor=predictor,
        )


def check_magic(data: bytes | bytearray | memoryview) -> None:
    """Raise :class:`UnsupportedStreamError` unless ``data`` starts like a version-1 stream.

    Looks only at fixed offsets (start code, type, magic, version) so that a stream of a
    future version is named as such even if the rest of its layout changed. Bytes that are
    not there yet are not judged.
    """
    view = bytes(memoryview(data)[:16])
    n = len(START_CODE)
    if view[:n] != START_CODE[: len(view[:n])]:
        raise UnsupportedStreamError("not an iwcodec stream (no start code at byte 0)")
    if len(view) > n and view[n] != UnitType.PARAMS:
        raise UnsupportedStreamError(
            f"not an iwcodec stream (first unit has type {view[n]}, want a parameter unit)"
        )
    r = Reader(view, "parameter unit")
    try:
        r.take(n + 1, "header")
        r.uvarint("body length", MAX_BODY[UnitType.PARAMS])
    except BitstreamError:
        return
    magic = view[r.pos : r.pos + len(MAGIC)]
    if magic != MAGIC[: len(magic)]:
        raise UnsupportedStreamError(f"not an iwcodec stream (magic {magic!r}, want {MAGIC!r})")
    version_at = r.pos + len(MAGIC)
    if version_at < len(view) and view[version_at] != VERSION:
        raise UnsupportedStreamError(
            f"stream format version {view[version_at]} is not supported "
            f"(this reader reads {VERSION})"
        )


@dataclass(frozen=True)
class KeyframeUnit:
    """A source image the receiver rebuilds frames from.

    Attributes:
        keyframe_id: id that keypoint units refer to.
        frame_index: index of the frame it was taken at.
        codec: how ``data`` is coded (the sender and receiver do the image coding).
        data: the coded image, 1 .. 16 MiB.
    """

    TYPE: ClassVar[UnitType] = UnitType.KEYFRAME

    keyframe_id: int
    frame_index: int
    codec: ImageCodec
    data: bytes

    def __post_init__(self) -> None:
        w = "keyframe unit"
        _set_int(self, w, "keyframe_id", 0, MAX_ID)
        _set_int(self, w, "frame_index", 0, MAX_FRAME_INDEX)
        try:
            object.__setattr__(self, "codec", ImageCodec(self.codec))
        except ValueError:
            raise BitstreamError(f"{w}: unknown image codec {self.codec!r}") from None
        if not isinstance(self.data, bytes) or not 1 <= len(self.data) <= MAX_KEYFRAME_BYTES:
            raise BitstreamError(f"{w}: image data must be 1..{MAX_KEYFRAME_BYTES} bytes")

    def to_bytes(self) -> bytes:
        body = (
            encode_uvarint(self.keyframe_id)
            + encode_uvarint(self.frame_index)
            + bytes([int(self.codec)])
            + self.data
        )
        return frame_unit(self.TYPE, body)

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> tuple[KeyframeUnit, memoryview]:
        return _parse_typed(cls, data)

    @classmethod
    def from_body(cls, body: bytes) -> KeyframeUnit:
        r = Reader(body, "keyframe unit")
        keyframe_id = r.uvarint("keyframe_id", MAX_ID)
        frame_index = r.uvarint("frame_index", MAX_FRAME_INDEX)
        codec = r.u8("codec")
        if r.remaining == 0:
            raise r.fail("no image data")
        return cls(keyframe_id, frame_index, codec, r.take(r.remaining, "image data"))


_FLAG_RESYNC = 0x01
_FLAG_EXPLICIT_PTS = 0x02


def _set_pts(unit: KeypointUnit | NoFaceUnit, what: str) -> None:
    """Check a unit's optional per-frame timestamps: one per frame, strictly increasing."""
    if unit.pts is None:
        return
    pts = tuple(_check_range(what, "pts", p, -MAX_ABS_PTS, MAX_ABS_PTS) for p in unit.pts)
    if len(pts) != unit.count:
        raise BitstreamError(f"{what}: {len(pts)} timestamps for {unit.count} frames")
    if any(b <= a for a, b in zip(pts, pts[1:])):
        raise BitstreamError(f"{what}: timestamps must increase")
    object.__setattr__(unit, "pts", pts)


def _frame_pts(pts: tuple[int, ...] | None, indices: range, params: ParamsUnit) -> tuple[int, ...]:
    return pts if pts is not None else tuple(params.nominal_pts(i) for i in indices)


def _pts_bytes(pts: tuple[int, ...] | None) -> bytes:
    """EXPLICIT_PTS timestamps: the first as svarint, then the (positive) deltas as uvarints."""
    if pts is None:
        return b""
    deltas = (encode_uvarint(b - a) for a, b in zip(pts, pts[1:]))
    return encode_svarint(pts[0]) + b"".join(deltas)


def _read_pts(r: Reader, count: int) -> tuple[int, ...]:
    values = [r.svarint("first pts", MAX_ABS_PTS)]
    for _ in range(count - 1):
        values.append(values[-1] + r.uvarint("pts delta", 2 * MAX_ABS_PTS))
    return tuple(values)


@dataclass(frozen=True)
class KeypointUnit:
    """Entropy-coded keypoints of ``count`` consecutive frames.

    Attributes:
        first_index: index of the first frame.
        count: number of frames (1..1024).
        refs: keyframe ids every frame of the unit is rebuilt from (1..16).
        resync: coded without reference to any earlier unit (adaptive state reset, first frame
            coded without prediction); a decoder that lost the chain restarts here.
        pts: per-frame timestamps, or ``None`` when every frame sits at its nominal time
            ``ParamsUnit.nominal_pts(index)`` (then no timestamp bytes are written).
        payload: range-coder output (docs/bitstream.md, "Keypoint payload").
    """

    TYPE: ClassVar[UnitType] = UnitType.KEYPOINTS

    first_index: int
    count: int
    refs: tuple[int, ...]
    resync: bool
    pts: tuple[int, ...] | None
    payload: bytes

    def __post_init__(self) -> None:
        w = "keypoint unit"
        _set_int(self, w, "first_index", 0, MAX_FRAME_INDEX)
        _set_int(self, w, "count", 1, MAX_UNIT_FRAMES, "frame count")
        if self.first_index + self.count - 1 > MAX_FRAME_INDEX:
            raise BitstreamError(f"{w}: frame indices run past {MAX_FRAME_INDEX}")
        refs = tuple(_check_range(w, "keyframe ref", ref, 0, MAX_ID) for ref in self.refs)
        if not 1 <= len(refs) <= MAX_REFS:
            raise BitstreamError(f"{w}: needs 1..{MAX_REFS} keyframe refs, got {len(refs)}")
        object.__setattr__(self, "refs", refs)
        object.__setattr__(self, "resync", bool(self.resync))
        _set_pts(self, w)
        if not isinstance(self.payload, bytes) or len(self.payload) > MAX_KEYPOINT_BODY:
            raise BitstreamError(f"{w}: payload must be bytes of at most {MAX_KEYPOINT_BODY}")

    @property
    def indices(self) -> range:
        return range(self.first_index, self.first_index + self.count)

    def frame_pts(self, params: ParamsUnit) -> tuple[int, ...]:
        return _frame_pts(self.pts, self.indices, params)

    def to_bytes(self) -> bytes:
        flags = (_FLAG_RESYNC if self.resync else 0) | (
            _FLAG_EXPLICIT_PTS if self.pts is not None else 0
        )
        parts = [
            bytes([flags]),
            encode_uvarint(self.first_index),
            encode_uvarint(self.count),
            bytes([len(self.refs)]),
            *(encode_uvarint(ref) for ref in self.refs),
            _pts_bytes(self.pts),
            self.payload,
        ]
        return frame_unit(self.TYPE, b"".join(parts))

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> tuple[KeypointUnit, memoryview]:
        return _parse_typed(cls, data)

    @classmethod
    def from_body(cls, body: bytes) -> KeypointUnit:
        r = Reader(body, "keypoint unit")
        flags = r.u8("flags")
        if flags & ~(_FLAG_RESYNC | _FLAG_EXPLICIT_PTS):
            raise r.fail(f"unknown flags 0x{flags:02x}")
        first_index = r.uvarint("first_index", MAX_FRAME_INDEX)
        count = r.uvarint("frame count", MAX_UNIT_FRAMES)
        num_refs = r.u8("number of refs")
        if not 1 <= num_refs <= MAX_REFS:
            raise r.fail(f"number of refs {num_refs} is out of range [1, {MAX_REFS}]")
        refs = tuple(r.uvarint("keyframe ref", MAX_ID) for _ in range(num_refs))
        pts = _read_pts(r, count) if flags & _FLAG_EXPLICIT_PTS else None
        payload = r.take(r.remaining, "payload")
        return cls(first_index, count, refs, bool(flags & _FLAG_RESYNC), pts, payload)


@dataclass(frozen=True)
class EndUnit:
    """Last unit of a file: totals that let a reader tell a complete stream from a cut one."""

    TYPE: ClassVar[UnitType] = UnitType.END

    total_frames: int
    total_keyframes: int

    def __post_init__(self) -> None:
        _set_int(self, "end unit", "total_frames", 0, MAX_FRAME_INDEX + 1)
        _set_int(self, "end unit", "total_keyframes", 0, MAX_ID + 1)

    def to_bytes(self) -> bytes:
        body = encode_uvarint(self.total_frames) + encode_uvarint(self.total_keyframes)
        return frame_unit(self.TYPE, body)

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> tuple[EndUnit, memoryview]:
        return _parse_typed(cls, data)

    @classmethod
    def from_body(cls, body: bytes) -> EndUnit:
        r = Reader(body, "end unit")
        total_frames = r.uvarint("total_frames", MAX_FRAME_INDEX + 1)
        total_keyframes = r.uvarint("total_keyframes", MAX_ID + 1)
        _no_trailing(r)
        return cls(total_frames, total_keyframes)


@dataclass(frozen=True)
class NoFaceUnit:
    """Frames in which the sender found no face: nothing is rebuilt for them.

    The receiver shows ``fill`` for each (docs/bitstream.md 3.5) instead of rendering a face
    from a keyframe that is not in the picture. The keypoint unit that follows a NO_FACE unit
    starts a new chain (it is a resync unit), normally right after a new keyframe.

    Attributes:
        first_index: index of the first frame.
        count: number of frames (1..1024).
        fill: what to show (:class:`Fill`).
        pts: per-frame timestamps, or ``None`` for the nominal ones (as in a keypoint unit).
    """

    TYPE: ClassVar[UnitType] = UnitType.NO_FACE

    first_index: int
    count: int
    fill: Fill = Fill.BLANK
    pts: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        w = "no-face unit"
        _set_int(self, w, "first_index", 0, MAX_FRAME_INDEX)
        _set_int(self, w, "count", 1, MAX_UNIT_FRAMES, "frame count")
        if self.first_index + self.count - 1 > MAX_FRAME_INDEX:
            raise BitstreamError(f"{w}: frame indices run past {MAX_FRAME_INDEX}")
        try:
            object.__setattr__(self, "fill", Fill(self.fill))
        except ValueError:
            raise BitstreamError(f"{w}: unknown fill {self.fill!r}") from None
        _set_pts(self, w)

    @property
    def indices(self) -> range:
        return range(self.first_index, self.first_index + self.count)

    def frame_pts(self, params: ParamsUnit) -> tuple[int, ...]:
        return _frame_pts(self.pts, self.indices, params)

    def to_bytes(self) -> bytes:
        flags = _FLAG_EXPLICIT_PTS if self.pts is not None else 0
        body = (
            bytes([flags])
            + encode_uvarint(self.first_index)
            + encode_uvarint(self.count)
            + bytes([int(self.fill)])
            + _pts_bytes(self.pts)
        )
        return frame_unit(self.TYPE, body)

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> tuple[NoFaceUnit, memoryview]:
        return _parse_typed(cls, data)

    @classmethod
    def from_body(cls, body: bytes) -> NoFaceUnit:
        r = Reader(body, "no-face unit")
        flags = r.u8("flags")
        if flags & ~_FLAG_EXPLICIT_PTS:
            raise r.fail(f"unknown flags 0x{flags:02x}")
        first_index = r.uvarint("first_index", MAX_FRAME_INDEX)
        count = r.uvarint("frame count", MAX_UNIT_FRAMES)
        fill = r.u8("fill")
        if fill not in Fill.__members__.values():
            raise r.fail(f"unknown fill {fill}")
        pts = _read_pts(r, count) if flags & _FLAG_EXPLICIT_PTS else None
        _no_trailing(r)
        return cls(first_index, count, Fill(fill), pts)


Unit = Union[ParamsUnit, KeyframeUnit, KeypointUnit, NoFaceUnit, EndUnit]  # noqa: UP007

UNIT_CLASSES: dict[UnitType, type] = {
    UnitType.PARAMS: ParamsUnit,
    UnitType.KEYFRAME: KeyframeUnit,
    UnitType.KEYPOINTS: KeypointUnit,
    UnitType.END: EndUnit,
    UnitType.NO_FACE: NoFaceUnit,
}


def unit_from_raw(raw: RawUnit) -> Unit:
    """Interpret a CRC-checked unit; unknown types raise :class:`BitstreamError`."""
    try:
        cls = UNIT_CLASSES[UnitType(raw.type_code)]
    except ValueError:
        raise BitstreamError(f"unknown unit type {raw.type_code}") from None
    return cls.from_body(raw.body)


def parse_unit(data: bytes | bytearray | memoryview) -> tuple[Unit, memoryview]:
    """Parse whichever unit starts ``data``; returns it and the bytes after it."""
    raw, rest = split_unit(data)
    return unit_from_raw(raw), rest


def parse_packet(data: bytes | bytearray | memoryview) -> list[Unit]:
    """All units of one network message; any damage rejects the whole message.

    A datagram is lost or delivered whole, so there is nothing to resynchronise on inside
    it: the caller treats a :class:`BitstreamError` here as a lost message.
    """
    units: list[Unit] = []
    rest = memoryview(data)
    if len(rest) == 0:
        raise BitstreamError("empty packet")
    while len(rest):
        unit, rest = parse_unit(rest)
        units.append(unit)
    return units
