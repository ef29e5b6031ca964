"""Closed-loop keyframes: when the sender sends one, and which keyframes each frame uses.

One keyframe decays as the head turns, the mouth opens wider than in the keyframe, or the
light changes. The sender holds the true frame and the keyframes the receiver holds, so it
can tell when the receiver's picture gets poor and send a new keyframe only then; and the
receiver can keep several keyframes and attend over the ones nearest in pose (implicit
warping's pick-and-choose over a set of sources, paper section 3).

:class:`KeyframeSet` is the sender's mirror of the receiver's set (``receiver.sources.
SourceSet``; the rule in docs/bitstream.md 3.2): it gives each new keyframe the id whose slot
frees the least useful keyframe, and picks per frame the 1-3 keyframes nearest in pose.

The **quality estimate** is cheap enough for a CPU-only sender at 30 frames/s: the pose
distance from the frame's keypoints to the nearest keyframe's, in pixels of the model's crop
(:func:`pose_distance`). The receiver rebuilds a frame from keypoints alone, so what it can
get wrong grows with how far the keypoints moved from the keyframe's; the distance is also
what picks the refs. Its calibration against the true per-frame LPIPS and PSNR is measured
by ``python -m eval.keyframe_policies`` (results/keyframe_policies/).

**Policies** (:class:`KeyframePolicy`), asked once per face frame:

- :class:`FixedKeyframes`: keyframes at given frame indices (the files' old behaviour, and the
  baseline);
- :class:`IntervalKeyframes`: one every N seconds;
- :class:`QualityKeyframes`: when the estimate crosses a threshold (at most one per
  ``min_seconds``);
- :class:`BudgetKeyframes`: the same threshold, within a keyframe budget in kbps (a token
  bucket of bytes that a keyframe spends).

A new face (the face came back after frames without one: maybe another person) always starts
with a keyframe: that is the send core's rule, not a policy's (``sender.core``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from bitstream import KEYFRAME_SLOTS, keyframe_slot
from iwcodec.errors import UsageError

#: Keyframes the sender keeps referable (the receiver holds up to KEYFRAME_SLOTS).
DEFAULT_SET_SIZE = 4
#: Keyframes one frame is rebuilt from (the model was trained with 1..3 sources).
DEFAULT_REFS = 3
#: A frame switches to another set of refs only when its nearest keyframe is this much nearer
#: than the nearest of the refs it uses (fewer unit cuts, no flapping between equals).
REFS_HYSTERESIS = 0.8


def pose_distance(keypoints: np.ndarray, others: np.ndarray, size: int) -> np.ndarray:
    """Mean distance of the keypoints' positions, in pixels of a ``size`` crop.

    ``keypoints`` (K, 3) rows (x, y, strength) in [-1, 1]; ``others`` (N, K, 3) -> (N,)."""
    d = np.linalg.norm(others[:, :, :2] - keypoints[None, :, :2], axis=-1)  # (N, K)
    return d.mean(axis=1) * (size / 2)


@dataclass
class _Held:
    keyframe_id: int
    keypoints: np.ndarray  # (K, 3), as the receiver finds them on the decoded keyframe
    segment: int  # the face segment it was taken in
    last_used: int  # last frame index it was a ref of


class KeyframeSet:
    """The sender's mirror of the receiver's keyframe set.

    Args:
        size: keyframes kept referable, 1..16 (``bitstream.KEYFRAME_SLOTS``): the sender uses
            slots 0..size-1 only, so the receiver holds at most ``size`` that matter.
        refs: keyframes per frame, 1..3.
        image_size: the crop's side in pixels (distances are in its pixels).
    """

    def __init__(
        self, size: int = DEFAULT_SET_SIZE, refs: int = DEFAULT_REFS, image_size: int = 256
    ) -> None:
        if not 1 <= size <= KEYFRAME_SLOTS:
            raise UsageError(f"the keyframe set holds 1..{KEYFRAME_SLOTS} keyframes, got {size}")
        if not 1 <= refs <= 3:
            raise UsageError(f"a frame is rebuilt from 1..3 keyframes, got {refs}")
        self.size = size
        self.refs = refs
        self.image_size = image_size
        self.segment = 0
        self._held: dict[int, _Held] = {}  # slot -> keyframe
        self._last_id: int | None = None
        self._current: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self._held)

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(self._held[s].keyframe_id for s in sorted(self._held))

    def new_segment(self) -> None:
        """A new face segment (the face came back): earlier keyframes may show another person,
        so frames stop referring to them; they are the first to be replaced."""
        self.segment += 1
        self._current = ()

    def next_id(self) -> int:
        """The id of the next keyframe: the next id above the last one sent whose slot is a
        free one, else the slot of a keyframe of an earlier segment, else of the one least
        recently used as a ref."""
        free = [s for s in range(self.size) if s not in self._held]
        if free:
            slot = free[0]
        else:
            slot = min(
                self._held,
                key=lambda s: (self._held[s].segment == self.segment, self._held[s].last_used),
            )
        start = 0 if self._last_id is None else self._last_id + 1
        return start + (slot - keyframe_slot(start)) % KEYFRAME_SLOTS

    def add(self, keyframe_id: int, keypoints: np.ndarray, index: int) -> None:
        """Keyframe ``keyframe_id`` was sent at frame ``index``; ``keypoints`` (K, 3) are the
        ones the receiver finds on it."""
        if self._last_id is not None and keyframe_id <= self._last_id:
            raise ValueError(f"keyframe ids must increase: {keyframe_id} after {self._last_id}")
        slot = keyframe_slot(keyframe_id)
        self._held[slot] = _Held(
            keyframe_id, np.asarray(keypoints, np.float32), self.segment, index
        )
        self._last_id = keyframe_id
        self._current = (keyframe_id,)  # the frames after a keyframe start from it

    def _distances(self, keypoints: np.ndarray) -> tuple[list[_Held], np.ndarray]:
        """This face segment's keyframes and their pose distances to ``keypoints`` (K, 3)."""
        held = [h for h in self._held.values() if h.segment == self.segment]
        if not held:
            return held, np.empty(0)
        others = np.stack([h.keypoints for h in held])  # (N, K, 3)
        return held, pose_distance(keypoints, others, self.image_size)

    def distance(self, keypoints: np.ndarray) -> float:
        """The quality estimate: pose distance (crop pixels) to the nearest keyframe of this
        face segment; infinite when it has none."""
        _, d = self._distances(keypoints)
        return float(d.min()) if len(d) else float("inf")

    def nearest(self, keypoints: np.ndarray) -> int:
        """The id of this face segment's keyframe nearest in pose to ``keypoints`` (K, 3)."""
        held, d = self._distances(keypoints)
        return held[int(np.argmin(d))].keyframe_id

    def keypoints_of(self, keyframe_id: int) -> np.ndarray:
        """The keypoints (K, 3) the receiver finds on keyframe ``keyframe_id``."""
        return self._held[keyframe_slot(keyframe_id)].keypoints

    def choose_refs(self, keypoints: np.ndarray, index: int) -> tuple[int, ...]:
        """The keyframes frame ``index`` is rebuilt from: the ``refs`` nearest in pose, in id
        order; kept while none is much nearer (:data:`REFS_HYSTERESIS`)."""
        held, d = self._distances(keypoints)
        if not held:
            raise ValueError(f"frame {index}: no keyframe to rebuild it from")
        by_id = {h.keyframe_id: float(x) for h, x in zip(held, d)}
        order = sorted(by_id, key=lambda k: (by_id[k], k))
        best = tuple(sorted(order[: self.refs]))
        current = tuple(r for r in self._current if r in by_id)
        if current and len(current) == min(self.refs, len(by_id)):
            if by_id[order[0]] >= REFS_HYSTERESIS * min(by_id[r] for r in current):
                best = current
        self._current = best
        for h in held:
            if h.keyframe_id in best:
                h.last_used = index
        return best


class KeyframePolicy(Protocol):
    """When a face frame becomes a keyframe. ``distance``: the quality estimate
    (:meth:`KeyframeSet.distance`); ``t``: the frame's time in seconds."""

    def due(self, index: int, t: float, distance: float) -> bool: ...

    def sent(self, index: int, t: float, nbytes: int) -> None: ...


@dataclass
class FixedKeyframes:
    """Keyframes at the given frame indices (the first face frame at or after each)."""

    indices: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        self._pending = sorted(self.indices)

    def due(self, index: int, t: float, distance: float) -> bool:
        due = bool(self._pending) and self._pending[0] <= index
        while self._pending and self._pending[0] <= index:
            self._pending.pop(0)
        return due

    def sent(self, index: int, t: float, nbytes: int) -> None:
        pass


@dataclass
class IntervalKeyframes:
    """One keyframe every ``seconds``."""

    seconds: float

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise UsageError(f"the keyframe interval must be positive, got {self.seconds} s")
        self._last = -float("inf")

    def due(self, index: int, t: float, distance: float) -> bool:
        return t - self._last >= self.seconds - 1e-9

    def sent(self, index: int, t: float, nbytes: int) -> None:
        self._last = t


#: Default threshold of the quality policy, pixels of pose distance at 256 px. Measured on
#: val-12 (results/keyframe_policies/README.md, four thresholds tried): at 30 px a face that
#: changes (two people joined) gets its keyframe on the very frame of the change in 4 of 4
#: pairs, while one person alone triggers one in 1 of 12 clips (+0.4 kbps on average); lower
#: thresholds send keyframes for ordinary head motion, at 4.5 KB each more than they buy.
DEFAULT_MAX_DISTANCE = 30.0
DEFAULT_MIN_SECONDS = 1.0


@dataclass
class QualityKeyframes:
    """A keyframe when the frame's pose distance to the nearest keyframe exceeds
    ``max_distance`` pixels, at most one per ``min_seconds``."""

    max_distance: float = DEFAULT_MAX_DISTANCE
    min_seconds: float = DEFAULT_MIN_SECONDS

    def __post_init__(self) -> None:
        if not self.max_distance > 0:
            raise UsageError(f"the keyframe threshold must be positive, got {self.max_distance}")
        if not self.min_seconds >= 0:
            raise UsageError(f"the minimum keyframe spacing must be >= 0, got {self.min_seconds}")
        self._last = -float("inf")

    def due(self, index: int, t: float, distance: float) -> bool:
        return distance > self.max_distance and t - self._last >= self.min_seconds - 1e-9

    def sent(self, index: int, t: float, nbytes: int) -> None:
        self._last = t


@dataclass
class BudgetKeyframes:
    """The quality policy within a keyframe budget: ``kbps`` of keyframe bytes accrue in a
    bucket of at most ``burst`` keyframes (the size of the last one); a keyframe is due when
    the estimate crosses ``max_distance`` and the bucket holds as many bytes as the last
    keyframe cost. The bucket starts full (the stream's first keyframe leaves ``burst - 1`` in
    it), so a face that changes early in a call still gets its keyframe at once; over a long
    stream keyframes cost at most ``kbps`` plus ``burst`` keyframes."""

    kbps: float
    max_distance: float = DEFAULT_MAX_DISTANCE
    burst: float = 2.0

    def __post_init__(self) -> None:
        if not self.kbps > 0:
            raise UsageError(f"the keyframe budget must be positive, got {self.kbps} kbps")
        self._bucket = 0.0
        self._t: float | None = None
        self._last_bytes = 0

    def _fill(self, t: float) -> None:
        if self._t is not None:
            self._bucket += max(0.0, t - self._t) * self.kbps * 1000 / 8
            if self._last_bytes:
                self._bucket = min(self._bucket, self.burst * self._last_bytes)
        self._t = t

    def due(self, index: int, t: float, distance: float) -> bool:
        self._fill(t)
        return distance > self.max_distance and self._bucket >= self._last_bytes

    def sent(self, index: int, t: float, nbytes: int) -> None:
        self._fill(t)
        if not self._last_bytes:  # the first keyframe: the bucket was full
            self._bucket = self.burst * nbytes
        self._bucket -= nbytes
        self._last_bytes = nbytes


__all__ = [
    "DEFAULT_MAX_DISTANCE",
    "DEFAULT_REFS",
    "DEFAULT_SET_SIZE",
    "BudgetKeyframes",
    "FixedKeyframes",
    "IntervalKeyframes",
    "KeyframePolicy",
    "KeyframeSet",
    "QualityKeyframes",
    "pose_distance",
]
