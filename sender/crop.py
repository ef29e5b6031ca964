"""Face detection and a steady square crop around one talking head.

The codec works on square face crops (VoxCeleb-like framing, 256 px by default). This module
finds the face with MediaPipe's bundled detectors, turns each detection into a square box,
keeps that box still while the head only wobbles and moves it smoothly when the head really
moves, then cuts and resizes the crop with anti-aliasing.

Two flavours share the face choice, the geometry and the dead-zone width:

- offline, :func:`crop_video`: the whole clip is known, so boxes are filtered without lag
  (running median, still stretches flattened to their median, zero-phase Gaussian);
- live, :class:`FaceTracker`: causal, one frame at a time (median of recent detections, a
  dead zone with hysteresis, then exponential easing toward the held target).

Framing (calibrated on the VoxCeleb-style 256 px clips of the training set, see
docs/cropping.md): the crop side is ``CropConfig.scale`` (2.0) times the side of MediaPipe's
short-range face box, which spans roughly brow to chin and cheek to cheek; its center sits
``CropConfig.shift_up`` (0.10) box sides above the box center so the whole head, some margin
and the top of the shoulders are in. A box larger than the frame is shrunk to the frame's
shorter side and every box is slid back inside the picture, so crops hold no invented pixels;
:func:`cut_square` still pads by edge replication when handed a box that leaves the frame.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from iwcodec.errors import InputError, NoFaceError
from iwcodec.native_logs import quiet_native_stderr, warm_up
from sender.video import VideoFrame, iter_frames, probe_video

# Full-range boxes are drawn larger and higher than short-range ones on the same face
# (medians over 193 frames of the training clips where both found one face: side x1.065,
# center 0.054 short-range sides higher);
# undoing that keeps the box from hopping when one frame falls back to the other model.
_FULL_RANGE_SIDE = 1 / 1.065
_FULL_RANGE_DOWN = 0.054


@dataclass(frozen=True)
class CropConfig:
    """Settings of the crop; saved with every crop cache so caches can be compared.

    Distances relative to the box are fractions of the crop side; times are in seconds so the
    behaviour does not change with the frame rate.
    """

    size: int = 256  # output side in pixels
    scale: float = 2.0  # crop side / detection box side
    shift_up: float = 0.10  # crop center above detection center, in detection box sides
    min_score: float = 0.5  # MediaPipe confidence to keep following the tracked face
    acquire_score: float = 0.75  # confidence needed to start tracking a face
    dead_zone: float = 0.06  # center moves under this fraction of the side are ignored
    zoom_dead_zone: float = 0.08  # |log side| changes under this are ignored
    median_s: float = 0.3  # outlier-rejecting median window
    hold_s: float = 0.4  # offline: a still stretch at least this long is held exactly still
    smooth_s: float = 0.2  # offline: Gaussian sigma; live: easing time constant
    lost_s: float = 1.0  # after this long without the tracked face, another face may be taken

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Detection:
    """One face found in a frame: square box center and side, in source pixels."""

    cx: float
    cy: float
    side: float
    score: float


@dataclass(frozen=True)
class CroppedClip:
    """A clip cut to the face.

    frames: (T, S, S, 3) uint8; pts: (T,) float64 seconds; boxes: (T, 3) float32
    (cx, cy, side) in source pixels, the square actually cut from each frame.
    """

    path: str
    frames: np.ndarray
    fps: Fraction
    pts: np.ndarray
    boxes: np.ndarray
    detected: np.ndarray  # (T,) bool: a face detection was used on this frame
    config: CropConfig


class FaceDetector:
    """MediaPipe's bundled BlazeFace detectors: short-range first, full-range when it finds
    nothing (small or far faces). Works on RGB uint8 (H, W, 3); close() or use ``with``."""

    def __init__(self, min_score: float = 0.5) -> None:
        # Imported here: mediapipe takes seconds to import, and the receiver, the scoring half
        # of the evaluation and the crop-rebuilding path need only the boxes.
        import mediapipe as mp

        fd = mp.solutions.face_detection
        with quiet_native_stderr():  # MediaPipe's C++ start-up lines (iwcodec.native_logs)
            self._short = fd.FaceDetection(model_selection=0, min_detection_confidence=min_score)
            self._full = fd.FaceDetection(model_selection=1, min_detection_confidence=min_score)
            warm_up(self._short, self._full)

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        h, w = rgb.shape[:2]
        rgb = np.ascontiguousarray(rgb)
        found = _mp_detections(self._short.process(rgb), w, h, 1.0, 0.0)
        if not found:
            found = _mp_detections(
                self._full.process(rgb), w, h, _FULL_RANGE_SIDE, _FULL_RANGE_DOWN
            )
        return found

    def close(self) -> None:
        self._short.close()
        self._full.close()

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _mp_detections(result, w: int, h: int, side_gain: float, down: float) -> list[Detection]:
    out = []
    for det in result.detections or []:
        rb = det.location_data.relative_bounding_box
        bw, bh = rb.width * w, rb.height * h
        side = max(bw, bh) * side_gain
        cx = (rb.xmin + rb.width / 2) * w
        cy = (rb.ymin + rb.height / 2) * h + down * side
        if side > 1 and math.isfinite(cx) and math.isfinite(cy):
            out.append(Detection(cx, cy, side, float(det.score[0])))
    return out


# ---------------------------------------------------------------- choosing one face


def _prominence(det: Detection, w: int, h: int) -> float:
    """Large and central wins; a face at a corner counts half as much as one in the middle."""
    off = math.hypot((det.cx - w / 2) / (w / 2), (det.cy - h / 2) / (h / 2)) / math.sqrt(2)
    return det.side * (1.0 - 0.5 * min(off, 1.0)) * det.score


def choose_face(
    dets: list[Detection],
    tracked: Detection | None,
    w: int,
    h: int,
    acquire_score: float = 0.75,
    missed_s: float = 0.0,
) -> Detection | None:
    """The tracked person's detection if one lies near it, else (no track) the most
    prominent face scoring at least ``acquire_score``. Returns None when a track exists but
    no detection belongs to it, so a second person in the frame never takes over while the
    first is briefly missed. The reach around the tracked face (0.6 box sides) widens while
    the face is missed (by 4 sides per second, up to 1.5), since the head moves meanwhile.

    Confidence has hysteresis: real faces in the training clips score >= 0.65 (median ~0.9)
    while textures and noise reach 0.5-0.67, so a track starts only on a confident detection
    and then follows weaker ones (turned heads, blur)."""
    if not dets:
        return None
    if tracked is None:
        strong = [d for d in dets if d.score >= acquire_score]
        return max(strong, key=lambda d: _prominence(d, w, h)) if strong else None

    def dist(d: Detection) -> float:
        return math.hypot(d.cx - tracked.cx, d.cy - tracked.cy) / tracked.side

    reach = min(0.6 + 4.0 * missed_s, 1.5)
    near = [d for d in dets if dist(d) < reach and 0.6 < d.side / tracked.side < 1.6]
    return min(near, key=dist) if near else None


def detect_track(
    frames: Iterable[np.ndarray], fps: float, config: CropConfig
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Detections of one person through a clip.

    Returns raw (T, 3) float64 (cx, cy, side) of the face box, NaN where the person was not
    found; segment (T,) int, incremented where the track was re-acquired on another face
    (a cut, or the person left); and the frame size (W, H).
    """
    lost_frames = max(1, round(config.lost_s * fps))
    raw, segment = [], []
    tracked: Detection | None = None
    missed, seg = 0, 0
    size = (0, 0)
    with FaceDetector(config.min_score) as detector:
        for rgb in frames:
            h, w = rgb.shape[:2]
            size = (w, h)
            dets = detector.detect(rgb)
            pick = choose_face(dets, tracked, w, h, config.acquire_score, missed / fps)
            if pick is None and tracked is not None and missed >= lost_frames and dets:
                pick = choose_face(dets, None, w, h, config.acquire_score)
                seg += 0 if pick is None else 1
            if pick is None:
                missed += 1
                raw.append((np.nan, np.nan, np.nan))
            else:
                tracked, missed = pick, 0
                raw.append((pick.cx, pick.cy, pick.side))
            segment.append(seg)
    return np.asarray(raw, np.float64).reshape(-1, 3), np.asarray(segment, np.int64), size


# ---------------------------------------------------------------- geometry


def face_to_crop(raw: np.ndarray, config: CropConfig) -> np.ndarray:
    """Face boxes (..., 3) (cx, cy, side) -> crop boxes with the VoxCeleb-like framing."""
    out = np.array(raw, np.float64, copy=True)
    out[..., 1] = raw[..., 1] - config.shift_up * raw[..., 2]
    out[..., 2] = raw[..., 2] * config.scale
    return out


def fit_in_frame(boxes: np.ndarray, w: int, h: int) -> np.ndarray:
    """Shrink boxes (..., 3) to the frame's shorter side and slide them inside the frame.

    Both steps are continuous in the box, so a smooth path stays smooth."""
    out = np.array(boxes, np.float64, copy=True)
    side = np.minimum(out[..., 2], min(w, h))
    out[..., 2] = side
    out[..., 0] = np.clip(out[..., 0], side / 2, w - side / 2)
    out[..., 1] = np.clip(out[..., 1], side / 2, h - side / 2)
    return out


def cut_square(
    rgb: np.ndarray, box: np.ndarray | tuple[float, float, float], size: int
) -> np.ndarray:
    """Cut the square ``box`` (cx, cy, side) from rgb (H, W, 3) uint8 and resize it to
    (size, size, 3) uint8 with anti-aliased bicubic filtering.

    The box snaps to whole source pixels (a sub-pixel step is under one output pixel when
    side >= size). Parts outside the frame replicate the edge pixels."""
    h, w = rgb.shape[:2]
    cx, cy, side = (float(v) for v in box)
    s = max(1, int(round(side)))
    x0 = int(round(cx - s / 2))
    y0 = int(round(cy - s / 2))
    xa, ya = max(x0, 0), max(y0, 0)
    xb, yb = min(x0 + s, w), min(y0 + s, h)
    if xb <= xa or yb <= ya:
        # the box misses the frame entirely: replicate the nearest edge pixel
        xa, ya = min(max(x0, 0), w - 1), min(max(y0, 0), h - 1)
        xb, yb = xa + 1, ya + 1
    patch = rgb[ya:yb, xa:xb]
    pad = ((ya - y0, y0 + s - yb), (xa - x0, x0 + s - xb), (0, 0))
    if any(p for pair in pad for p in pair):
        patch = np.pad(patch, tuple((max(a, 0), max(b, 0)) for a, b in pad), mode="edge")
    return resize_square(patch, size)


def resize_square(patch: np.ndarray, size: int) -> np.ndarray:
    """(s, s, 3) uint8 -> (size, size, 3) uint8, anti-aliased bicubic."""
    if patch.shape[0] == size and patch.shape[1] == size:
        return np.ascontiguousarray(patch)
    x = torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1)[None].float()  # (1,3,s,s)
    y = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()


# ---------------------------------------------------------------- smoothing


def hold_still(x: np.ndarray, width: np.ndarray | float, min_len: int) -> np.ndarray:
    """Flatten the stretches where a signal (T,) stays within a band of +-``width``.

    Greedy left to right: a stretch grows while max - min <= 2 * width; stretches of at least
    ``min_len`` samples become their median (the box holds still while the head wobbles),
    shorter ones (the head is really moving) keep the signal. The steps this leaves where a
    stretch ends are rounded off afterwards by the Gaussian in :func:`smooth_offline`."""
    x = np.asarray(x, np.float64)
    width = np.broadcast_to(np.asarray(width, np.float64), x.shape)
    out = x.copy()
    start, lo, hi = 0, x[0], x[0]
    for t in range(1, len(x) + 1):
        if t < len(x):
            lo2, hi2 = min(lo, x[t]), max(hi, x[t])
            if hi2 - lo2 <= 2 * width[t]:
                lo, hi = lo2, hi2
                continue
        if t - start >= min_len:
            out[start:t] = np.median(x[start:t])
        if t < len(x):
            start, lo, hi = t, x[t], x[t]
    return out


def _odd(n: float) -> int:
    n = max(1, int(round(n)))
    return n if n % 2 else n + 1


def _median_filter(x: np.ndarray, win: int) -> np.ndarray:
    """Centered running median of (T,) with edge replication."""
    if win <= 1 or len(x) < 2:
        return x.copy()
    r = win // 2
    padded = np.pad(x, r, mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, win), axis=-1)


def _gaussian_filter(x: np.ndarray, sigma: float) -> np.ndarray:
    """Zero-phase Gaussian smoothing of (T,) with edge replication."""
    if sigma <= 0.3 or len(x) < 2:
        return x.copy()
    r = int(math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    return np.convolve(np.pad(x, r, mode="edge"), k, mode="valid")


def fill_gaps(raw: np.ndarray) -> np.ndarray:
    """Frames without a detection hold the last box (the first box before any detection)."""
    out = np.array(raw, np.float64, copy=True)
    valid = np.isfinite(out).all(axis=1)
    if not valid.any():
        raise ValueError("no valid box to fill from")
    idx = np.where(valid, np.arange(len(out)), -1)
    idx = np.maximum.accumulate(idx)
    idx[idx < 0] = int(np.argmax(valid))
    return out[idx]


def smooth_offline(raw: np.ndarray, fps: float, config: CropConfig) -> np.ndarray:
    """Non-causal smoothing of one track segment, face boxes (T, 3) with no NaN.

    Running median (drops outlier detections) -> :func:`hold_still` (still stretches become
    exactly constant, centred on the data) -> zero-phase Gaussian (no lag; rounds off the
    starts and stops of moves). Side is smoothed in log space."""
    med = _odd(config.median_s * fps)
    hold = max(2, round(config.hold_s * fps))
    sigma = config.smooth_s * fps
    cx, cy = (_median_filter(raw[:, i], med) for i in (0, 1))
    log_side = _median_filter(np.log(raw[:, 2]), med)
    band = config.dead_zone * config.scale * np.exp(log_side)
    out = np.empty_like(raw)
    for i, (sig, width) in enumerate(((cx, band), (cy, band), (log_side, config.zoom_dead_zone))):
        out[:, i] = _gaussian_filter(hold_still(sig, width, hold), sigma)
    out[:, 2] = np.exp(out[:, 2])
    return out


def offline_boxes(
    raw: np.ndarray, segment: np.ndarray, fps: float, size: tuple[int, int], config: CropConfig
) -> np.ndarray:
    """Raw face detections (T, 3) with NaN gaps -> crop boxes (T, 3) inside the frame.

    Each track segment is smoothed on its own, so a cut to another person is a clean switch
    rather than a slow pan across the room."""
    filled = fill_gaps(raw)
    faces = np.empty_like(filled)
    for seg in np.unique(segment):
        sel = segment == seg
        faces[sel] = smooth_offline(filled[sel], fps, config)
    return fit_in_frame(face_to_crop(faces, config), *size)


def box_jitter(boxes: np.ndarray, size: int | None = None) -> float:
    """Mean absolute frame-to-frame change of the box center, in source pixels, or in
    output pixels (scaled by size / side) when ``size`` is given. NaN rows are skipped."""
    b = np.asarray(boxes, np.float64)
    if len(b) < 2:
        return 0.0
    step = np.hypot(np.diff(b[:, 0]), np.diff(b[:, 1]))
    if size is not None:
        step = step * size / b[1:, 2]
    step = step[np.isfinite(step)]
    return float(step.mean()) if len(step) else 0.0


# ---------------------------------------------------------------- offline


def _rgb_frames(frames: Iterable[VideoFrame]) -> Iterator[np.ndarray]:
    for f in frames:
        yield f.rgb


def track_video(
    path: str | Path, config: CropConfig = CropConfig(), max_frames: int | None = None
) -> tuple[np.ndarray, np.ndarray, Fraction]:
    """First pass over a file (or its first ``max_frames`` frames): smoothed crop boxes (T, 3),
    detected (T,) bool, fps.

    Raises NoFaceError naming the file when no frame has a face."""
    info = probe_video(path)
    frames = _rgb_frames(iter_frames(path, max_frames))
    raw, segment, size = detect_track(frames, float(info.fps), config)
    detected = np.isfinite(raw).all(axis=1)
    if not detected.any():
        raise NoFaceError(f"{path}: no face found in any of its {len(raw)} frames")
    return offline_boxes(raw, segment, float(info.fps), size, config), detected, info.fps


def iter_crops(
    path: str | Path, boxes: np.ndarray, size: int
) -> Iterator[tuple[float, np.ndarray]]:
    """Second pass: (pts seconds, crop (size, size, 3) uint8) per frame, cut at ``boxes``."""
    for f in iter_frames(path, max_frames=len(boxes)):
        yield f.pts, cut_square(f.rgb, boxes[f.index], size)


def crop_video(
    path: str | Path,
    size: int = 256,
    config: CropConfig | None = None,
    max_frames: int | None = None,
) -> CroppedClip:
    """Whole clip -> face crops, all in memory: (T, size, size, 3) uint8.

    ``max_frames``: only the first N frames are read, tracked and cut, as if the clip ended
    there (the smoothing sees no later frame, so the last boxes can differ from a whole-clip
    crop's). Raises InputError for unusable files and NoFaceError when no face is found."""
    config = CropConfig(size=size) if config is None else config
    boxes, detected, fps = track_video(path, config, max_frames)
    frames = np.empty((len(boxes), config.size, config.size, 3), np.uint8)
    pts = np.zeros(len(boxes), np.float64)
    n = 0
    for n, (t, crop) in enumerate(iter_crops(path, boxes, config.size), start=1):
        frames[n - 1], pts[n - 1] = crop, t
    if n != len(boxes):
        raise InputError(
            f"{path}: decoded {n} frames on the second pass, {len(boxes)} on the first"
        )
    return CroppedClip(str(path), frames, fps, pts, boxes.astype(np.float32), detected, config)


# ---------------------------------------------------------------- live


class FaceTracker:
    """Causal crop box for live video: feed frames in order, get the box to cut.

    Detections pass a short running median (kills one-frame outliers), then a dead zone with
    hysteresis (the target holds while the head wobbles and re-centres on the face once it
    leaves the zone), then the box eases toward the target
    with time constant ``config.smooth_s``. A lost face holds the box; after
    ``config.lost_s`` another face may be taken, and the box then jumps to it (a new shot).
    """

    def __init__(
        self, config: CropConfig = CropConfig(), detector: FaceDetector | None = None
    ) -> None:
        self.config = config
        self._detector = detector or FaceDetector(config.min_score)
        self._own_detector = detector is None
        self._recent: deque[np.ndarray] = deque()
        self._tracked: Detection | None = None
        self._target: np.ndarray | None = None  # face box (cx, cy, log side)
        self._box: np.ndarray | None = None
        self._last_t: float | None = None
        self._lost_since: float | None = None

    def lost_for(self, t: float) -> float:
        """Seconds at time ``t`` since the tracked face was last seen (0 while it is seen)."""
        return 0.0 if self._lost_since is None else max(0.0, t - self._lost_since)

    @property
    def box(self) -> np.ndarray | None:
        """Current crop box (cx, cy, side) in source pixels (before fitting), or None."""
        return None if self._box is None else face_to_crop(self._face_box(self._box), self.config)

    @staticmethod
    def _face_box(state: np.ndarray) -> np.ndarray:
        return np.array([state[0], state[1], math.exp(state[2])])

    def update(self, rgb: np.ndarray, t: float) -> np.ndarray | None:
        """Process frame rgb (H, W, 3) uint8 at time ``t`` seconds; return the crop box
        (cx, cy, side) fitted inside the frame, or None until a face has been seen."""
        h, w = rgb.shape[:2]
        dt = 0.0 if self._last_t is None else max(0.0, t - self._last_t)
        self._last_t = t
        dets = self._detector.detect(rgb)
        acquire = self.config.acquire_score
        missed_s = 0.0 if self._lost_since is None else t - self._lost_since
        pick = choose_face(dets, self._tracked, w, h, acquire, missed_s)
        new_shot = False
        if (
            pick is None
            and dets
            and (
                self._tracked is None
                or (self._lost_since is not None and t - self._lost_since >= self.config.lost_s)
            )
        ):
            pick = choose_face(dets, None, w, h, acquire)
            new_shot = pick is not None
        if pick is None:
            if self._lost_since is None:
                self._lost_since = t
        else:
            self._lost_since = None
            self._tracked = pick
            self._observe(np.array([pick.cx, pick.cy, math.log(pick.side)]), new_shot)
        if self._box is None:
            return None
        self._ease(dt)
        crop = face_to_crop(self._face_box(self._box), self.config)
        return fit_in_frame(crop, w, h)

    def _observe(self, obs: np.ndarray, new_shot: bool) -> None:
        cfg = self.config
        if new_shot:
            self._recent.clear()
        self._recent.append(obs)
        while len(self._recent) > 5:
            self._recent.popleft()
        med = np.median(np.stack(self._recent), axis=0)
        if new_shot or self._target is None:
            self._target = med.copy()
            self._box = med.copy()
            return
        crop_side = cfg.scale * math.exp(self._target[2])
        widths = (cfg.dead_zone * crop_side, cfg.dead_zone * crop_side, cfg.zoom_dead_zone)
        for i, wd in enumerate(widths):
            # hysteresis: re-centre fully once outside the dead zone, so the box does not
            # settle a dead zone's width off the face after a move
            if abs(med[i] - self._target[i]) > wd:
                self._target[i] = med[i]

    def _ease(self, dt: float) -> None:
        if self._target is None or self._box is None:
            return
        alpha = 1.0 - math.exp(-dt / max(self.config.smooth_s, 1e-6)) if dt > 0 else 0.0
        self._box = self._box + alpha * (self._target - self._box)

    def close(self) -> None:
        if self._own_detector:
            self._detector.close()

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
