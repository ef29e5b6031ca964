"""The project's own exception types.

Every failure a user can cause (bad input file, damaged stream, wrong weights,
a backend that cannot load) surfaces as an :class:`IWCodecError` subclass with
a message that names the problem in the user's terms. The command line prints
the message and exits with status 2; it never shows a traceback for these.
"""

from __future__ import annotations


class IWCodecError(Exception):
    """Base of every error this project raises on purpose."""


class BitstreamError(IWCodecError):
    """A stream or unit is truncated, corrupt, or asks for something out of bounds."""


class UnsupportedStreamError(BitstreamError):
    """Not an iwcodec stream, or one written by an incompatible version."""


class ModelMismatchError(IWCodecError):
    """Weights or entropy tables differ from the ones the stream (or peer) was made with,
    or a weights file does not match its model config."""


class InputError(IWCodecError):
    """An input file that cannot be used: missing, not a video, empty."""


class NoFaceError(InputError):
    """No face was found in the input video."""


class BackendUnavailableError(IWCodecError):
    """An explicitly requested compute backend (e.g. Triton) cannot be used here."""


class CallError(IWCodecError):
    """A live call was refused or broke: bad token, model mismatch, signaling failure."""


class UsageError(IWCodecError):
    """A command line the program cannot run: a missing argument, a value out of range."""
