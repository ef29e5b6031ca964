"""Call control messages: the few bytes peers send each other besides the media.

They travel on their own data channel (unordered, no retransmission: a lost request is simply
sent again while still needed). Every message is ``type (u8)`` then fixed big-endian fields:

| type | message | fields | bytes |
|---|---|---|---|
| 1 | PING | seq u16, t_ms u32 (sender's clock, ms, mod 2^32), send_delay_ms u16 | 9 |
| 2 | PONG | seq u16, t_ms u32 (echoed from the PING) | 7 |
| 3 | RESYNC | loss_permille u16 (keypoint frames lost lately, per mille) | 3 |
| 4 | KEYFRAME | keyframe_id u32 (the keyframe the receiver lacks) | 5 |

RESYNC asks for the next keypoint unit to be a resync unit (docs/bitstream.md 7): the
receiver sends it while its keypoint chain is broken. KEYFRAME asks for a new keyframe (like
RTCP PLI). PING/PONG measure the round trip; ``send_delay_ms`` is the PING sender's mean time
from capturing a frame to sending its keypoints, which lets the other side estimate the
glass-to-glass latency without synchronised clocks.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Union

from iwcodec.errors import CallError

MAX_CONTROL_BYTES = 16


@dataclass(frozen=True)
class Ping:
    TYPE: ClassVar[int] = 1
    FORMAT: ClassVar[str] = ">HIH"
    seq: int
    t_ms: int
    send_delay_ms: int


@dataclass(frozen=True)
class Pong:
    TYPE: ClassVar[int] = 2
    FORMAT: ClassVar[str] = ">HI"
    seq: int
    t_ms: int


@dataclass(frozen=True)
class ResyncRequest:
    TYPE: ClassVar[int] = 3
    FORMAT: ClassVar[str] = ">H"
    loss_permille: int


@dataclass(frozen=True)
class KeyframeRequest:
    TYPE: ClassVar[int] = 4
    FORMAT: ClassVar[str] = ">I"
    keyframe_id: int


ControlMessage = Union[Ping, Pong, ResyncRequest, KeyframeRequest]  # noqa: UP007
_TYPES = {cls.TYPE: cls for cls in (Ping, Pong, ResyncRequest, KeyframeRequest)}
_LIMITS = {
    "seq": 0xFFFF,
    "t_ms": 0xFFFFFFFF,
    "send_delay_ms": 0xFFFF,
    "loss_permille": 1000,
    "keyframe_id": 0xFFFFFFFF,
}


def to_bytes(msg: ControlMessage) -> bytes:
    """Serialise; fields are clipped into their range (a delay above 65 s reads as 65 s)."""
    values = [min(max(int(v), 0), _LIMITS[k]) for k, v in vars(msg).items()]
    return bytes([msg.TYPE]) + struct.pack(msg.FORMAT, *values)


def parse(data: bytes | bytearray | memoryview) -> tuple[ControlMessage, memoryview]:
    """One message from the start of ``data`` and the bytes after it; CallError on unknown
    types, truncation or out-of-range fields."""
    view = memoryview(data)
    if len(view) == 0:
        raise CallError("control message: empty")
    cls = _TYPES.get(view[0])
    if cls is None:
        raise CallError(f"control message: unknown type {view[0]}")
    size = struct.calcsize(cls.FORMAT)
    if len(view) < 1 + size:
        raise CallError(
            f"control message {cls.__name__}: truncated ({len(view)} of {1 + size} bytes)"
        )
    values = struct.unpack(cls.FORMAT, view[1 : 1 + size])
    msg = cls(*values)
    for k, v in vars(msg).items():
        if v > _LIMITS[k]:
            raise CallError(f"control message {cls.__name__}: {k} = {v} is out of range")
    return msg, view[1 + size :]


def parse_message(data: bytes | bytearray | memoryview) -> ControlMessage:
    """A whole data-channel message holding exactly one control message."""
    if len(data) > MAX_CONTROL_BYTES:
        raise CallError(f"control message: {len(data)} bytes, at most {MAX_CONTROL_BYTES}")
    msg, rest = parse(data)
    if len(rest):
        raise CallError(f"control message {type(msg).__name__}: {len(rest)} trailing bytes")
    return msg
