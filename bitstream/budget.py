"""How much output a stream may ask for (docs/bitstream.md 4.1).

A keypoint unit carries at most 1024 frames, but a stream can also *name* frames that it does
not carry: a unit that starts after the expected index leaves a gap, a unit whose payload does
not decode (or that waits for a resync) loses its own frames, and the end unit can count
frames past the last unit. A decoder shows every lost frame as the picture before it, so that
the output keeps the stream's length; without a bound, a few hundred bytes with valid CRCs
could ask for hours of output (three resync units 2,000 frames apart make 4,002 frames, a
thousand of them 2 million).

:class:`FrameBudget` is the one bound that the file decoder, ``iwcodec info`` and the fuzzing
tool all apply, so they agree on which streams are refused. Frames are *decoded* (their
keypoints came out of a unit) or *lost*; a stream is refused as soon as

* one lost run is longer than ``max_gap`` frames (60 s at the stream's rate by default), or
* the lost frames so far outnumber the decoded ones by more than ``max_gap``.

So a file never makes more than ``2 * decoded + max_gap`` frames, and ``decoded`` is at most
1024 per keypoint unit present. Real damage stays far inside: a damaged unit costs its own
frames and those up to the next resync (2 s by default).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from iwcodec.errors import BitstreamError

#: Longest run of lost frames a file may hold, in seconds of video.
DEFAULT_MAX_GAP_SECONDS = 60.0


def max_gap_frames(fps: Fraction | float, seconds: float = DEFAULT_MAX_GAP_SECONDS) -> int:
    """``seconds`` of video at ``fps``, in frames (at least 1)."""
    return max(1, math.ceil(seconds * float(fps)))


@dataclass
class FrameBudget:
    """Counts decoded and lost frames of one stream and refuses it when the lost ones exceed
    the bound above (:class:`BitstreamError`, before anything is shown for them).

    Attributes:
        max_gap: longest lost run, and the lost frames allowed beyond the decoded ones.
        fps: the stream's rate, only to say the bound in seconds.
    """

    max_gap: int
    fps: Fraction | float = 0.0
    decoded: int = 0
    lost: int = 0

    @classmethod
    def for_rate(cls, fps: Fraction, seconds: float = DEFAULT_MAX_GAP_SECONDS) -> FrameBudget:
        return cls(max_gap_frames(fps, seconds), fps)

    @property
    def frames(self) -> int:
        """Frames a decoder outputs for what was counted: decoded and held."""
        return self.decoded + self.lost

    def add(self, decoded: int, lost: Iterable[range] = ()) -> None:
        """Count one unit's decoded frames and lost ranges; raises BitstreamError past the bound."""
        lost = [r for r in lost if len(r)]
        for r in lost:
            if len(r) > self.max_gap:
                raise BitstreamError(
                    f"the stream skips {len(r)} frames at once ({r.start}..{r.stop - 1}), "
                    f"more than {self._allowance()}: it is too damaged, or forged to ask for "
                    "output it does not carry"
                )
        total_decoded = self.decoded + decoded
        total_lost = self.lost + sum(len(r) for r in lost)
        if total_lost > total_decoded + self.max_gap:  # refused before it is counted
            raise BitstreamError(
                f"the stream has lost {total_lost} frames against {total_decoded} decoded ones "
                f"(by frame {max((r.stop for r in lost), default=self.frames) - 1}); a stream may "
                f"lose at most its decoded frames plus {self._allowance()}: it is too damaged, "
                "or forged to ask for output it does not carry"
            )
        self.decoded, self.lost = total_decoded, total_lost

    def _allowance(self) -> str:
        if self.fps:
            return f"{self.max_gap} frames ({self.max_gap / float(self.fps):.3g} s)"
        return f"{self.max_gap} frames"


__all__ = ["DEFAULT_MAX_GAP_SECONDS", "FrameBudget", "max_gap_frames"]
