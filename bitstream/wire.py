"""Byte-level primitives of the wire format (docs/bitstream.md, "Primitive types").

Unsigned varints are LEB128 (7 bits per byte, least significant group first, high bit set on
every byte but the last) and must be minimal: a redundant trailing ``0x80 .. 0x00`` group is
refused, so every value has exactly one encoding and ``to_bytes(parse(x)) == x``. Signed values
are zigzag-mapped first (0, -1, 1, -2, ... -> 0, 1, 2, 3, ...).
"""

from __future__ import annotations

from iwcodec.errors import BitstreamError

_MAX_VARINT_BYTES = 10


def encode_uvarint(value: int) -> bytes:
    if value < 0:
        raise BitstreamError(f"cannot write negative value {value} as an unsigned varint")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def zigzag(value: int) -> int:
    return 2 * value if value >= 0 else -2 * value - 1


def unzigzag(value: int) -> int:
    return value >> 1 if value % 2 == 0 else -((value + 1) >> 1)


def encode_svarint(value: int) -> bytes:
    return encode_uvarint(zigzag(value))


class Reader:
    """Cursor over a byte string; every read checks bounds and raises :class:`BitstreamError`.

    ``what`` names the structure being read, so messages say where a stream broke
    ("keypoint unit: truncated in first_index").
    """

    def __init__(self, data: bytes | bytearray | memoryview, what: str) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.what = what

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def fail(self, message: str) -> BitstreamError:
        return BitstreamError(f"{self.what}: {message}")

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or n > self.remaining:
            raise self.fail(f"truncated in {field} (needs {n} bytes, {self.remaining} left)")
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def uvarint(self, field: str, max_value: int) -> int:
        """A minimal LEB128 value in ``[0, max_value]``.

        At most 10 bytes are looked at (enough to name any 64-bit value in the error), so a
        hostile run of 0xFF bytes costs O(1).
        """
        value = 0
        for i in range(_MAX_VARINT_BYTES):
            if self.pos >= len(self.data):
                raise self.fail(f"truncated in {field}")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if byte == 0 and i > 0:
                    raise self.fail(f"{field} is not minimally encoded")
                if value > max_value:
                    raise self.fail(f"{field} = {value} is out of range (at most {max_value})")
                return value
        raise self.fail(f"{field} is out of range (varint longer than {_MAX_VARINT_BYTES} bytes)")

    def svarint(self, field: str, max_abs: int) -> int:
        value = unzigzag(self.uvarint(field, 2 * max_abs))
        if abs(value) > max_abs:
            raise self.fail(f"{field} = {value} is out of range (|value| <= {max_abs})")
        return value
