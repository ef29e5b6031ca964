"""Keypoint quantization: the exact values a receiver sees (docs/bitstream.md, "Quantization").

x and y live in [-1, 1] (paper section 3: keypoint locations in normalised image coordinates),
strength in [0, 1]. With ``xy_steps`` steps across [-1, 1] a location becomes the integer
``q = round((x + 1) / 2 * xy_steps)`` in ``[0, xy_steps]``; strength becomes
``round(s * s_steps)`` in ``[0, s_steps]``. Dequantization is ``x = (2 q - xy_steps) / xy_steps``
and ``s = q / s_steps``, computed in float64 and rounded once to float32, so the sender can
reproduce bit for bit what the receiver will feed its model.
"""

from __future__ import annotations

import numpy as np

#: Candidate settings (xy_steps, s_steps); 256 xy steps = 1 pixel at 256 px.
CANDIDATE_STEPS = {"coarse": (256, 32), "default": (512, 64), "fine": (1024, 128)}
DEFAULT_XY_STEPS, DEFAULT_S_STEPS = CANDIDATE_STEPS["default"]


def steps_vector(xy_steps: int, s_steps: int) -> np.ndarray:
    """``(3,)`` int64 steps per channel (x, y, strength)."""
    return np.array([xy_steps, xy_steps, s_steps], dtype=np.int64)


def quantize(keypoints: np.ndarray, xy_steps: int, s_steps: int) -> np.ndarray:
    """``(..., K, 3)`` float keypoints -> ``(..., K, 3)`` int64 in ``[0, steps]`` per channel.

    Values outside the ranges are clipped (a soft-argmax can land a hair outside [-1, 1]).
    Raises ValueError on NaN or infinity: that is a bug upstream, not something to transmit.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.shape[-1:] != (3,):
        raise ValueError(f"keypoints must have shape (..., K, 3), got {kp.shape}")
    if not np.all(np.isfinite(kp)):
        raise ValueError("keypoints contain NaN or infinity")
    steps = steps_vector(xy_steps, s_steps)
    unit = np.concatenate(
        [(kp[..., :2] + 1.0) * 0.5, kp[..., 2:]], axis=-1
    )  # (..., K, 3) in [0, 1]
    return np.clip(np.rint(unit * steps), 0, steps).astype(np.int64)


def dequantize(q: np.ndarray, xy_steps: int, s_steps: int) -> np.ndarray:
    """``(..., K, 3)`` integers -> ``(..., K, 3)`` float32 keypoints."""
    q = np.asarray(q, dtype=np.float64)
    steps = steps_vector(xy_steps, s_steps).astype(np.float64)
    out = q / steps
    out[..., :2] = (2.0 * q[..., :2] - steps[:2]) / steps[:2]
    return out.astype(np.float32)


def requantize(keypoints: np.ndarray, xy_steps: int, s_steps: int) -> np.ndarray:
    """What the receiver will decode for ``keypoints``: ``dequantize(quantize(...))``."""
    return dequantize(quantize(keypoints, xy_steps, s_steps), xy_steps, s_steps)
