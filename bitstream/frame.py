"""The one object that crosses folder boundaries: a frame's keypoints.

Shapes follow the implicit-warping paper (Mallya et al., NeurIPS 2022, section 3,
"Learning queries, keys, and values"): K keypoints, each with a location (x, y)
and a scalar strength in [0, 1]; no Jacobians, so 3 values per keypoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: RTP's video clock: timestamps are integer ticks of 1/90000 s.
TIMESCALE = 90_000


@dataclass(frozen=True)
class KeypointFrame:
    """Keypoints of one driving frame.

    Attributes:
        index: frame number in the stream, 0-based.
        pts: presentation time in ticks of 1/``TIMESCALE`` seconds.
        keypoints: ``(K, 3)`` float32; columns x, y in [-1, 1] (image coordinates,
            x to the right, y down, -1/+1 at the outer pixel edges) and strength in [0, 1].
        refs: ids of the keyframes (source images) this frame is rebuilt from.
    """

    index: int
    pts: int
    keypoints: np.ndarray = field(repr=False)
    refs: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        kp = np.asarray(self.keypoints, dtype=np.float32)
        if kp.ndim != 2 or kp.shape[1] != 3:
            raise ValueError(f"keypoints must have shape (K, 3), got {kp.shape}")
        kp.setflags(write=False)
        object.__setattr__(self, "keypoints", kp)
        object.__setattr__(self, "refs", tuple(int(r) for r in self.refs))

    @property
    def num_keypoints(self) -> int:
        return int(self.keypoints.shape[0])

    @property
    def xy(self) -> np.ndarray:
        """``(K, 2)`` locations in [-1, 1]."""
        return self.keypoints[:, :2]

    @property
    def strength(self) -> np.ndarray:
        """``(K,)`` strengths in [0, 1]."""
        return self.keypoints[:, 2]

    @property
    def seconds(self) -> float:
        return self.pts / TIMESCALE
