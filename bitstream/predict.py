"""Temporal prediction of quantized keypoints (docs/bitstream.md, "Prediction").

Everything here works on integers only, so encoder and decoder compute identical predictions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bitstream.units import Predictor


def predict(
    predictor: int, prev: np.ndarray, prev2: np.ndarray | None, steps: Sequence[int]
) -> np.ndarray:
    """``(K, 3)`` int64 prediction of the next frame from the last one or two decoded frames.

    With only one earlier frame in the chain (right after a resync) every predictor falls back
    to ``prev``. The result is clipped to ``[0, steps]`` per channel.
    """
    if prev2 is None or predictor == Predictor.PREVIOUS:
        return prev
    if predictor == Predictor.LINEAR:
        pred = 2 * prev - prev2
    elif predictor == Predictor.HALF_LINEAR:
        pred = prev + (prev - prev2) // 2  # floor division: same result on every platform
    else:
        raise ValueError(f"unknown predictor {predictor}")
    return np.clip(pred, 0, np.asarray(steps, dtype=np.int64))


def frame_shift(residual: np.ndarray) -> np.ndarray:
    """``(K, 3)`` residuals -> ``(3,)`` per-channel lower median: the frame's common motion.

    Head motion moves all keypoints together; coding it once per frame and the per-keypoint
    remainder separately saves about 20% on face tracks (docs/bitstream.md, "Measurements").
    """
    k = residual.shape[0]
    return np.sort(residual, axis=0)[(k - 1) // 2]
