"""Small receiver inputs shared by the receive-path tests (graphs, batching, bench): smooth
random keyframe pictures, keyframe units and keypoints at the tiny model's 64 px.
(pytest puts this folder on ``sys.path``: ``from _frames import``.)"""

from __future__ import annotations

import numpy as np

from bitstream import ImageCodec, KeyframeUnit
from iwcodec.keyframe import encode_keyframe

SIZE = 64


def picture(seed: int, size: int = SIZE) -> np.ndarray:
    """A smooth random (size, size, 3) uint8 picture (PNG codes it losslessly)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (8, 8, 3))
    return np.kron(coarse, np.ones((size // 8, size // 8, 1))).astype(np.uint8)


def keyframe(kid: int, seed: int) -> KeyframeUnit:
    return KeyframeUnit(kid, 0, ImageCodec.PNG, encode_keyframe(picture(seed), codec="png"))


def keypoints(batch: int, k: int, seed: int) -> np.ndarray:
    """(batch, k, 3) read-only rows (x, y, strength), as decoded keypoints come."""
    rng = np.random.default_rng(seed)
    kp = rng.uniform(-0.8, 0.8, (batch, k, 3)).astype(np.float32)
    kp[..., 2] = rng.uniform(0.2, 1.0, (batch, k))
    kp.setflags(write=False)
    return kp
