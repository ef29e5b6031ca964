"""What decoding a stream would find, found without the model: ``iwcodec info`` reports it, and
``iwcodec decode`` runs it before rendering anything, so both say the same about a stream.

:class:`StreamAudit` takes the units as the reader yields them and does everything the decoder
does except rendering: it decodes every keypoint unit (``bitstream.KeypointDecoder``), every
keyframe picture (``check_keyframe``, the decoder's own check), and applies the decoder's
bound on lost frames (``bitstream.budget.FrameBudget``). It costs a fraction of a millisecond
per frame. Its verdict, ``problem``, is the error the decoder would raise (None: the stream
decodes, possibly with held frames and warnings).
"""

from __future__ import annotations

import warnings

import numpy as np

from bitstream import (
    BitstreamWarning,
    EndUnit,
    EntropyModel,
    KeyframeUnit,
    KeypointDecoder,
    KeypointUnit,
    NoFaceUnit,
    ParamsUnit,
    Unit,
)
from bitstream.budget import DEFAULT_MAX_GAP_SECONDS, FrameBudget
from iwcodec.errors import BitstreamError
from iwcodec.keyframe import decode_keyframe


def check_keyframe(unit: KeyframeUnit, params: ParamsUnit) -> np.ndarray:
    """The keyframe's picture, (H, W, 3) uint8 at the stream's size; BitstreamError saying why
    it cannot be used otherwise."""
    rgb = decode_keyframe(unit.data, unit.codec)
    if rgb.shape != (params.height, params.width, 3):
        raise BitstreamError(
            f"image is {rgb.shape[1]}x{rgb.shape[0]}, the stream is {params.width}x{params.height}"
        )
    return rgb


def warn_bad_keyframe(unit: KeyframeUnit, why: str, stacklevel: int = 3) -> None:
    warnings.warn(
        f"keyframe {unit.keyframe_id} cannot be used ({why}); frames that refer to it are held",
        BitstreamWarning,
        stacklevel=stacklevel,
    )


def nothing_to_show(frames: int) -> BitstreamError:
    """The error of a stream whose frames have no picture to be rebuilt from."""
    return BitstreamError(
        f"no frame could be rebuilt: the stream's keyframe is missing or damaged "
        f"({frames} frames have nothing to show)"
    )


class StreamAudit:
    """Feed it every unit after the parameter unit (``add``); ``problem`` is the first error
    a decoder would raise, ``None`` while the stream is fine.

    Args:
        params: the stream's parameter unit.
        entropy: its entropy table; ``None`` when this installation lacks it (keypoints are then
            not decoded and frames are counted from the units' indices).
        max_gap_seconds: the decoder's bound on lost frames (``FrameBudget``).
    """

    def __init__(
        self,
        params: ParamsUnit,
        entropy: EntropyModel | None,
        max_gap_seconds: float = DEFAULT_MAX_GAP_SECONDS,
    ) -> None:
        self.params = params
        self.budget = FrameBudget.for_rate(params.fps, max_gap_seconds)
        self._keypoints = KeypointDecoder(params, entropy) if entropy is not None else None
        self.usable_keyframes = 0
        self.bad_keyframes = 0
        self.indexed_frames = 0  # frames the units' indices reach, decoded or not
        self.no_face = 0  # frames of NO_FACE units (shown without a keyframe)
        self.end: EndUnit | None = None
        self.problem: BitstreamError | None = None

    @property
    def decoded(self) -> int:
        return self.budget.decoded

    @property
    def lost(self) -> int:
        return self.budget.lost

    @property
    def frames(self) -> int:
        """Frames a decoder would output (decoded and held); without the entropy table, the
        frames the units' indices and the end unit reach."""
        if self._keypoints is not None:
            return self.budget.frames
        return max(self.indexed_frames, self.end.total_frames if self.end is not None else 0)

    def add(self, unit: Unit) -> None:
        """Take the next unit; after the first problem, units are only counted."""
        if isinstance(unit, (KeypointUnit, NoFaceUnit)):
            self.indexed_frames = max(self.indexed_frames, unit.first_index + unit.count)
        elif isinstance(unit, EndUnit):
            self.end = unit
        if self.problem is not None:
            return
        try:
            self._check(unit)
        except BitstreamError as exc:
            self.problem = exc

    def _check(self, unit: Unit) -> None:
        if isinstance(unit, KeyframeUnit):
            try:
                check_keyframe(unit, self.params)
                self.usable_keyframes += 1
            except BitstreamError as exc:
                self.bad_keyframes += 1
                warn_bad_keyframe(unit, str(exc), stacklevel=4)
        elif isinstance(unit, KeypointUnit) and self._keypoints is not None:
            result = self._keypoints.decode(unit)
            self.budget.add(len(result.frames), result.lost)
        elif isinstance(unit, NoFaceUnit) and self._keypoints is not None:
            result = self._keypoints.skip(unit)
            self.budget.add(len(result.no_face), result.lost)
            self.no_face += len(result.no_face)
        elif isinstance(unit, EndUnit):
            if self._keypoints is not None:
                self.budget.add(0, self._keypoints.finish(unit.total_frames).lost)
            if self.frames == 0:
                raise BitstreamError("the stream holds no frames")
            if self.usable_keyframes == 0 and self.frames > self.no_face:
                raise nothing_to_show(self.frames - self.no_face)


__all__ = ["StreamAudit", "check_keyframe", "nothing_to_show", "warn_bad_keyframe"]
