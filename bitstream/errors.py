"""Diagnostics of the bitstream package that are not in :mod:`iwcodec.errors`.

Errors that stop a read are :class:`iwcodec.errors.BitstreamError` (or a subclass);
damage that a reader can step over is reported with a :class:`BitstreamWarning`.
"""

from __future__ import annotations

from iwcodec.errors import BitstreamError


class BitstreamWarning(UserWarning):
    """A damaged, unknown or undecodable unit was skipped, or frames were lost; decoding went on."""


class TruncatedStreamError(BitstreamError):
    """The stream ended without its end unit: frames may be missing at the end.

    Raised by :func:`bitstream.read_units` only after every readable unit has been yielded,
    so a caller that wants a best-effort result can keep what it got and still knows the
    output is incomplete.
    """
