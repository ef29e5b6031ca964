"""sender/crop.py: face boxes that hold still, follow real motion, and never leave the frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _media import SAMPLE, write_exact_clip

from iwcodec.errors import NoFaceError
from sender.crop import (
    CropConfig,
    Detection,
    FaceDetector,
    FaceTracker,
    box_jitter,
    choose_face,
    crop_video,
    cut_square,
    fill_gaps,
    fit_in_frame,
    hold_still,
    resize_square,
)
from sender.video import iter_frames

CANVAS = (360, 480)  # H, W of the synthetic scenes


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """A real 256x256 face picture (first frame of the sample clip)."""
    return next(iter_frames(SAMPLE)).rgb


def scene(face: np.ndarray, x: float, y: float) -> np.ndarray:
    """Grey canvas with the face picture's top-left corner at (x, y)."""
    img = np.full((*CANVAS, 3), 96, np.uint8)
    xi, yi = int(round(x)), int(round(y))
    img[yi : yi + face.shape[0], xi : xi + face.shape[1]] = face
    return img


def jittered_path(
    n: int, x: float, y: float, amp: float, seed: int = 0
) -> list[tuple[float, float]]:
    rng = np.random.default_rng(seed)
    return [(x + rng.uniform(-amp, amp), y + rng.uniform(-amp, amp)) for _ in range(n)]


# ---------------------------------------------------------------- whole clips


def test_offline_box_holds_still_under_wobble(tmp_path: Path, face: np.ndarray) -> None:
    pos = jittered_path(30, 110, 50, amp=3)
    path = write_exact_clip(tmp_path / "wobble.mp4", [scene(face, x, y) for x, y in pos])
    clip = crop_video(path, size=64)
    assert clip.frames.shape == (30, 64, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.detected.all()
    assert np.ptp(clip.boxes, axis=0).max() < 0.5  # the wobble never moves the box
    # framing: crop center shift_up face-box sides above the face center, side scale x box
    with FaceDetector() as det:
        (f,) = det.detect(scene(face, 110, 50))
    cx, cy, side = clip.boxes[0]
    cfg = CropConfig()
    assert abs(cx - f.cx) < 4 and abs(cy - (f.cy - cfg.shift_up * f.side)) < 4
    assert abs(side - min(cfg.scale * f.side, CANVAS[0])) < 6
    np.testing.assert_allclose(clip.pts, np.arange(30) / 25, atol=1e-6)


def test_offline_box_follows_real_motion_smoothly(tmp_path: Path, face: np.ndarray) -> None:
    xs = [10.0] * 10 + list(np.linspace(10, 130, 25)) + [130.0] * 15
    path = write_exact_clip(tmp_path / "move.mp4", [scene(face, x, 50) for x in xs])
    clip = crop_video(path, size=64)
    b = clip.boxes
    assert abs((b[-1, 0] - b[0, 0]) - 120) < 6  # travelled with the face
    assert np.abs(np.diff(b[:, 0])).max() < 15  # no jumps: under two face-steps per frame
    assert np.ptp(b[:5], axis=0).max() < 0.5 and np.ptp(b[-5:], axis=0).max() < 0.5
    side = b[:, 2]
    assert (b[:, 0] - side / 2 >= 0).all() and (b[:, 0] + side / 2 <= CANVAS[1]).all()


def test_frames_without_face_hold_the_box(tmp_path: Path, face: np.ndarray) -> None:
    blank = np.full((*CANVAS, 3), 96, np.uint8)
    frames = [scene(face, 110, 50)] * 8 + [blank] * 4 + [scene(face, 110, 50)] * 8
    clip = crop_video(write_exact_clip(tmp_path / "gap.mp4", frames), size=32)
    assert clip.detected.tolist() == [True] * 8 + [False] * 4 + [True] * 8
    assert np.ptp(clip.boxes, axis=0).max() < 0.5


def test_no_face_raises_naming_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(6)]
    path = write_exact_clip(tmp_path / "noise_only.mp4", frames)
    with pytest.raises(NoFaceError, match="noise_only.mp4"):
        crop_video(path)


def test_real_clip(face: np.ndarray) -> None:
    clip = crop_video(SAMPLE, size=96)
    assert clip.frames.shape == (150, 96, 96, 3)
    assert clip.detected.mean() > 0.95
    assert float(clip.fps) == 35.0
    # an already-cropped 256 clip: the box is the whole frame
    np.testing.assert_allclose(clip.boxes[:, 2], 256, atol=0.5)


# ---------------------------------------------------------------- live tracker


def test_face_tracker_is_causal_steady_and_follows(face: np.ndarray) -> None:
    pos = (
        jittered_path(20, 10, 50, amp=3)
        + [(10 + 6 * k, 50) for k in range(1, 21)]
        + [(130, 50)] * 25
    )
    with FaceTracker(CropConfig(size=64)) as tracker:
        boxes = [tracker.update(scene(face, x, y), t=i / 25) for i, (x, y) in enumerate(pos)]
        held = tracker.update(np.full((*CANVAS, 3), 96, np.uint8), t=len(pos) / 25)
    b = np.stack(boxes)
    assert np.ptp(b[3:20], axis=0).max() < 1.0  # wobble ignored once the median has filled
    assert np.abs(np.diff(b[:, 0])).max() < 20
    assert abs((b[-1, 0] - b[0, 0]) - 120) < 0.06 * b[-1, 2] + 2  # ends within the dead zone
    np.testing.assert_allclose(held, b[-1], atol=0.5)  # a frame without face holds the box
    assert box_jitter(b) < box_jitter(np.array([[x, y, 1.0] for x, y in pos]))


def test_face_tracker_returns_none_before_any_face() -> None:
    with FaceTracker() as tracker:
        assert tracker.update(np.full((120, 160, 3), 30, np.uint8), t=0.0) is None


# ---------------------------------------------------------------- pieces


def test_choose_face_prefers_prominent_then_sticks_to_the_track() -> None:
    w, h = 1280, 720
    left = Detection(300, 360, 150, 0.9)
    centre_big = Detection(640, 360, 220, 0.9)
    corner_bigger = Detection(1200, 60, 240, 0.9)
    assert choose_face([left, centre_big, corner_bigger], None, w, h) == centre_big
    # once tracking the left person, a bigger face elsewhere does not steal the crop
    near_left = Detection(310, 355, 155, 0.8)
    assert choose_face([centre_big, near_left], left, w, h) == near_left
    assert choose_face([centre_big], left, w, h) is None
    assert choose_face([], None, w, h) is None


def test_hold_still_flattens_wobble_and_keeps_moves() -> None:
    x = np.array([0.0, 0.5, -0.5, 0.9, 3.0, 6.0, 9.0, 9.2, 8.8, 9.1])
    y = hold_still(x, 1.0, min_len=3)
    np.testing.assert_allclose(y, [0.25] * 4 + [3.0, 6.0] + [9.05] * 4)


def test_fit_in_frame_shrinks_and_slides_inside() -> None:
    boxes = np.array([[10.0, 10.0, 100.0], [630.0, 200.0, 100.0], [320.0, 240.0, 900.0]])
    out = fit_in_frame(boxes, 640, 480)
    np.testing.assert_allclose(out, [[50, 50, 100], [590, 200, 100], [320, 240, 480]])


def test_cut_square_pads_outside_by_edge_replication() -> None:
    img = np.zeros((10, 10, 3), np.uint8)
    img[:, :5] = 200
    crop = cut_square(img, (2.0, 5.0, 10.0), size=10)  # box spans x -3..7
    assert crop.shape == (10, 10, 3)
    assert (crop[:, :3] == 200).all()  # replicated left edge, not black
    assert (crop[:, 8:] == 0).all()


def test_resize_square_is_antialiased() -> None:
    checker = ((np.indices((256, 256)).sum(0) % 2) * 255).astype(np.uint8)
    small = resize_square(np.repeat(checker[..., None], 3, axis=2), 64)
    assert small.shape == (64, 64, 3)
    assert np.abs(small.astype(float) - 127.5).max() < 4  # aliasing would leave 0/255 stripes


def test_fill_gaps_holds_previous_and_first() -> None:
    raw = np.array([[np.nan] * 3, [1, 2, 3], [np.nan] * 3, [4, 5, 6]], float)
    np.testing.assert_array_equal(fill_gaps(raw), [[1, 2, 3], [1, 2, 3], [1, 2, 3], [4, 5, 6]])
