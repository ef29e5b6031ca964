"""Streams of units: writing a file, and reading one back through damage.

A file is a parameter unit, then keyframe and keypoint units in any order, then an end unit
(docs/bitstream.md, "Streams"). The reader:

* refuses an empty file (``BitstreamError("empty file")``), a file that does not start like an
  iwcodec stream or has another version (``UnsupportedStreamError``), and a damaged or
  out-of-bounds parameter unit (``BitstreamError``): without it nothing can be decoded;
* after that, skips any damaged unit with a :class:`BitstreamWarning`: it looks for the next
  start code at which a whole unit with a correct CRC begins, and goes on from there;
* skips unknown unit types (a newer writer) and repeats of the parameter unit;
* stops at the end unit; if the data ends without one it raises
  :class:`TruncatedStreamError` *after* yielding every good unit, so a caller never mistakes a
  cut file for a complete one.

Memory stays bounded by the largest unit a type allows plus one read chunk, and the work spent
looking for start codes in damaged regions is bounded by a budget proportional to the input.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Union

from bitstream.errors import BitstreamWarning, TruncatedStreamError
from bitstream.units import (
    START_CODE,
    EndUnit,
    KeyframeUnit,
    KeypointUnit,
    NoFaceUnit,
    ParamsUnit,
    RawUnit,
    Unit,
    UnitType,
    check_magic,
    max_body,
    split_unit,
    unit_from_raw,
)
from iwcodec.errors import BitstreamError, InputError

_CHUNK = 1 << 16
_HEADER_MAX = len(START_CODE) + 1 + 4  # start code, type, a body_len of up to 4 bytes
# Bytes read and CRC-checked while hunting for the next good unit may not exceed this many per
# byte of input, plus a constant: a file crafted with a false start code every few bytes
# cannot make the reader quadratic.
_SCAN_BUDGET_FACTOR = 16
_SCAN_BUDGET_BASE = 64 << 20


class StreamWriter:
    """Writes units to a binary file object; ``write`` returns the bytes it wrote.

    The first unit must be the parameter unit. ``finish()`` appends the end unit with the
    frame and keyframe totals seen so far; nothing may be written after it.
    """

    def __init__(self, fileobj: BinaryIO) -> None:
        self._f = fileobj
        self.bytes_written = 0
        self.total_frames = 0
        self.total_keyframes = 0
        self._started = False
        self._finished = False

    def write(self, unit: Unit) -> int:
        if self._finished:
            raise BitstreamError("stream already finished: nothing may follow the end unit")
        if not self._started and not isinstance(unit, ParamsUnit):
            raise BitstreamError("a stream must start with its parameter unit")
        if isinstance(unit, EndUnit):
            self._finished = True
        elif isinstance(unit, (KeypointUnit, NoFaceUnit)):
            self.total_frames = max(self.total_frames, unit.first_index + unit.count)
        elif isinstance(unit, KeyframeUnit):
            self.total_keyframes += 1
        self._started = True
        data = unit.to_bytes()
        self._f.write(data)
        self.bytes_written += len(data)
        return len(data)

    def finish(self) -> int:
        """Write the end unit; returns its size."""
        return self.write(EndUnit(self.total_frames, self.total_keyframes))


@dataclass(frozen=True)
class UnitRecord:
    """A unit read from a stream, with where it sat (for ``iwcodec info``)."""

    offset: int
    size: int
    unit: Unit


class _Buffer:
    """Sliding window over bytes or a file object; holds at most one unit plus a chunk."""

    def __init__(self, source: bytes | bytearray | memoryview | BinaryIO) -> None:
        if isinstance(source, (bytes, bytearray, memoryview)):
            self._data = bytearray(source) if isinstance(source, memoryview) else source
            self._file = None
            self.eof = True
        else:
            self._data = bytearray()
            self._file = source
            self.eof = False
        self.base = 0  # absolute offset of self._data[0]

    @property
    def end(self) -> int:
        """Absolute offset of the last byte read so far, plus one."""
        return self.base + len(self._data)

    def ensure(self, offset: int, n: int) -> bool:
        """Make bytes ``[offset, offset + n)`` available; False if the input ends first."""
        while self.end < offset + n and not self.eof:
            chunk = self._file.read(max(_CHUNK, offset + n - self.end))
            if not chunk:
                self.eof = True
                break
            self._data += chunk
        return self.end >= offset + n

    def view(self, offset: int, n: int) -> memoryview:
        start = offset - self.base
        return memoryview(self._data)[start : start + n]

    def find(self, needle: bytes, offset: int) -> int:
        """Absolute offset of the next ``needle`` at or after ``offset``, or -1 at end of input."""
        while True:
            hit = self._data.find(needle, offset - self.base)
            if hit >= 0:
                return self.base + hit
            if self.eof:
                return -1
            self.release(max(offset, self.end - len(needle) + 1))
            offset = max(offset, self.end - len(needle) + 1)
            if not self.ensure(self.end, 1):
                return -1

    def release(self, offset: int) -> None:
        """Forget bytes before ``offset`` (only for file input; bytes input is already held)."""
        if self._file is None:
            return
        drop = offset - self.base
        if drop > 0:
            del self._data[:drop]
            self.base = offset


@dataclass(frozen=True)
class _Attempt:
    raw: RawUnit | None
    error: str = ""
    past_end: bool = False  # the declared unit runs past the end of the input
    cost: int = _HEADER_MAX  # bytes read and checked for this attempt


def _try_unit(buf: _Buffer, offset: int) -> _Attempt:
    buf.ensure(offset, _HEADER_MAX)
    head = bytes(buf.view(offset, _HEADER_MAX))
    if not head.startswith(START_CODE):
        if START_CODE.startswith(head):
            return _Attempt(None, "input ends inside a unit header", past_end=True)
        return _Attempt(None, "no start code")
    if len(head) <= len(START_CODE):
        return _Attempt(None, "input ends inside a unit header", past_end=True)
    # Read the declared length cheaply, so we fetch exactly one unit (bounded per type).
    body_len, pos = 0, len(START_CODE) + 1
    limit = max_body(head[len(START_CODE)])
    for shift in range(0, 28, 7):
        if pos >= len(head):
            return _Attempt(None, "input ends inside a unit header", past_end=True)
        byte = head[pos]
        pos += 1
        body_len |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
    else:
        return _Attempt(None, "unit length field is too long")
    if body_len > limit:
        return _Attempt(None, f"declared length {body_len} exceeds the limit {limit}")
    total = pos + body_len + 4
    if not buf.ensure(offset, total):
        return _Attempt(None, "input ends inside a unit", past_end=True, cost=total)
    try:
        raw, _ = split_unit(buf.view(offset, total))
    except BitstreamError as exc:
        return _Attempt(None, str(exc), cost=total)
    return _Attempt(raw, cost=total)


Source = Union[bytes, bytearray, memoryview, BinaryIO, str, os.PathLike]  # noqa: UP007


def scan_stream(source: Source) -> Iterator[UnitRecord]:
    """Every readable unit of a stream with its offset and size (see the module docstring).

    ``source``: the stream's bytes, a binary file object, or a path.
    """
    if isinstance(source, (str, os.PathLike)):
        try:
            f = open(source, "rb")  # noqa: SIM115 -- closed below, after the generator ends
        except OSError as exc:
            raise InputError(f"cannot read {os.fspath(source)}: {exc.strerror}") from None
        with f:
            yield from _scan(_Buffer(f))
        return
    yield from _scan(_Buffer(source))


def _scan(buf: _Buffer) -> Iterator[UnitRecord]:
    if not buf.ensure(0, 1):
        raise BitstreamError("empty file")
    buf.ensure(0, 16)
    check_magic(buf.view(0, 16))
    first = _try_unit(buf, 0)
    if first.raw is None:
        if first.past_end:
            raise TruncatedStreamError("stream is truncated inside its parameter unit")
        raise BitstreamError(f"stream header (parameter unit) is damaged: {first.error}")
    params = unit_from_raw(first.raw)  # ParamsUnit: check_magic saw its type byte
    yield UnitRecord(0, first.raw.size, params)
    offset = first.raw.size
    work = 0
    count = 1
    while True:
        buf.release(offset)
        if not buf.ensure(offset, 1):
            raise TruncatedStreamError(
                f"stream ends at byte {offset} without an end unit: the file is truncated "
                f"(or its end is damaged); {count} units were read"
            )
        attempt = _try_unit(buf, offset)
        if attempt.raw is None:
            resume, work = _resync(buf, offset, attempt, work)
            if resume < 0:
                raise TruncatedStreamError(
                    f"stream ends without an end unit (unreadable from byte {offset}: "
                    f"{attempt.error}): the file is truncated or damaged at its end; "
                    f"{count} units were read"
                )
            offset = resume
            continue
        raw, at = attempt.raw, offset
        offset += raw.size
        try:
            unit = unit_from_raw(raw)
        except BitstreamError as exc:
            warnings.warn(f"unit at byte {at} skipped: {exc}", BitstreamWarning, stacklevel=2)
            continue
        if isinstance(unit, ParamsUnit):
            if unit != params:
                warnings.warn(
                    f"parameter unit at byte {at} differs from the stream's first; skipped",
                    BitstreamWarning,
                    stacklevel=2,
                )
            continue
        count += 1
        yield UnitRecord(at, raw.size, unit)
        if isinstance(unit, EndUnit):
            if buf.ensure(offset, 1):
                _refuse_second_stream(buf, offset)
                warnings.warn(
                    f"data after the end unit (from byte {offset}) ignored",
                    BitstreamWarning,
                    stacklevel=2,
                )
            return


def _refuse_second_stream(buf: _Buffer, offset: int) -> None:
    """Bytes after an end unit that begin with a good parameter unit are a second stream (two
    files concatenated): refused, so that a decoder neither drops it silently nor mixes the two
    streams' keyframe ids and frame indices."""
    attempt = _try_unit(buf, offset)
    if attempt.raw is not None and attempt.raw.type_code == UnitType.PARAMS:
        raise BitstreamError(
            f"a second stream starts at byte {offset}, after the end unit of the first: a file "
            f"holds one stream (the first {offset} bytes are one; split the file there to read "
            "each)"
        )


def _resync(buf: _Buffer, offset: int, attempt: _Attempt, work: int) -> tuple[int, int]:
    """Offset of the next good unit after damage at ``offset`` (-1 if none), and the scan
    work done so far (bytes examined at candidate start codes)."""
    candidate = offset
    while True:
        buf.release(candidate)
        candidate = buf.find(START_CODE, candidate + 1)
        if candidate < 0:
            if not attempt.past_end:  # a unit cut by the end of input is truncation, not damage
                warnings.warn(
                    f"damaged data from byte {offset} to the end skipped ({attempt.error})",
                    BitstreamWarning,
                    stacklevel=3,
                )
            return -1, work
        buf.release(candidate)
        found = _try_unit(buf, candidate)
        work += found.cost
        if found.raw is not None:
            warnings.warn(
                f"damaged unit at byte {offset} skipped ({attempt.error}); "
                f"{candidate - offset} bytes dropped, reading on at byte {candidate}",
                BitstreamWarning,
                stacklevel=3,
            )
            return candidate, work
        if work > _SCAN_BUDGET_BASE + _SCAN_BUDGET_FACTOR * candidate:
            raise BitstreamError(
                f"stream is too damaged to read on: gave up looking for a good unit "
                f"after byte {offset}"
            )


def read_units(source: Source) -> Iterator[Unit]:
    """The units of a stream, damaged ones skipped with a :class:`BitstreamWarning`.

    Raises :class:`BitstreamError` ("empty file", damaged header),
    :class:`UnsupportedStreamError` (not an iwcodec stream, other version) and, at the end,
    :class:`TruncatedStreamError` when no end unit was found.
    """
    for record in scan_stream(source):
        yield record.unit


__all__ = ["StreamWriter", "UnitRecord", "read_units", "scan_stream"]
