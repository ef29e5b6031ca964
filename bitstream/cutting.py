"""Cutting frames into units: the one rule that files, calls and the call measurements share.

A unit holds a run of frames that a receiver can take as one piece (docs/bitstream.md 3): at
most ``frames_per_unit`` of them, with consecutive indices, all of one *group* (for keypoint
frames: the same keyframes referred to; the send core also keeps face and no-face frames
apart). :class:`UnitCutter` hands a run out as soon as it is complete, so a call sends each
message the moment its last frame is coded, not one frame later.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, Protocol, TypeVar


class Indexed(Protocol):
    """Anything with a frame index (``bitstream.KeypointFrame``, a no-face frame)."""

    @property
    def index(self) -> int: ...


F = TypeVar("F", bound=Indexed)


class UnitCutter(Generic[F]):
    """Cuts a stream of frames into runs, one run per unit.

    ``push(frame, group)`` returns the runs that ``frame`` completes, in order (none, one, or
    two: the run it cannot join and the run it fills); ``flush()`` returns what is waiting. A
    frame starts a new run when the waiting run is of another group or its index does not
    follow the run's last; a run is complete at ``frames_per_unit`` frames.
    """

    def __init__(self, frames_per_unit: int) -> None:
        if frames_per_unit < 1:
            raise ValueError(f"frames_per_unit must be >= 1, got {frames_per_unit}")
        self.frames_per_unit = frames_per_unit
        self._run: list[F] = []
        self._group: Hashable = None

    @property
    def waiting(self) -> bool:
        """True while frames wait for their unit."""
        return bool(self._run)

    def push(self, frame: F, group: Hashable = None) -> list[list[F]]:
        runs = []
        if self._run and (group != self._group or frame.index != self._run[-1].index + 1):
            runs = self.flush()
        self._run.append(frame)
        self._group = group
        if len(self._run) >= self.frames_per_unit:
            runs += self.flush()
        return runs

    def flush(self) -> list[list[F]]:
        run, self._run = self._run, []
        return [run] if run else []


__all__ = ["Indexed", "UnitCutter"]
