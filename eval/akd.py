"""Average keypoint distance (AKD) between face-mesh landmarks of decoded and original frames.

AKD is the usual talking-head motion-fidelity score (FOMM, Siarohin et al. 2019, section 4.1;
Implicit Warping, Mallya et al. 2022, section 4 "Metrics"): run a fixed landmark detector on the
original and on the reconstruction and average the distance between matching points. Here the
detector is MediaPipe's 478-point face mesh (468 mesh points + 10 iris points,
``refine_landmarks=True``) from the bundled mediapipe 0.10.21 models (sender.face_mesh), run
on every frame independently (not tracking) so a frame's landmarks do not depend on earlier
ones.

Definition, per frame t where both frames have a face:

    AKD_t = mean_{i < 478} || 256 * (p_i(ref_t) - p_i(test_t)) ||_2

with p_i the landmark's (x, y) in MediaPipe's normalized image coordinates (z is dropped), so the
distance is in pixels of the frame resized to 256x256 (for square crops: pixels at 256 px).
Frames where either side has no face get NaN; they are counted, never silently dropped
(:class:`AKDResult`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iwcodec.errors import InputError
from sender.face_mesh import N_LANDMARKS, FaceMesh

AKD_SIZE = 256  # distances are in pixels of a 256x256 frame


def face_landmarks(frames: np.ndarray) -> np.ndarray:
    """Landmarks of every frame: (T, H, W, 3) uint8 RGB -> (T, 478, 2) normalized (x, y).

    Rows of frames without a face are NaN.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InputError(
            f"face_landmarks needs uint8 RGB frames (T, H, W, 3), got {frames.dtype} {frames.shape}"
        )
    out = np.full((len(frames), N_LANDMARKS, 2), np.nan)
    with FaceMesh(tracking=False) as mesh:  # each frame on its own
        for t, frame in enumerate(frames):
            pts = mesh.points(frame)
            if pts is not None:
                out[t] = pts
    return out


@dataclass(frozen=True)
class AKDResult:
    """AKD of a clip.

    per_frame: (T,) pixels at 256x256, NaN where either side has no face.
    mean: mean over the frames where both have a face (NaN if there is none).
    frames: frames where both have a face (the frames ``mean`` averages).
    no_face_ref / no_face_test: frames whose original / decoded frame has no face (a frame
        can count in both).
    """

    per_frame: np.ndarray
    mean: float
    frames: int
    no_face_ref: int
    no_face_test: int


def akd_from_landmarks(ref: np.ndarray, test: np.ndarray) -> AKDResult:
    """AKD from two (T, N, 2) landmark arrays in normalized coordinates (NaN rows: no face)."""
    if ref.shape != test.shape or ref.ndim != 3 or ref.shape[-1] != 2:
        raise InputError(f"landmark arrays differ or are not (T, N, 2): {ref.shape}, {test.shape}")
    ref_face = ~np.isnan(ref).any(axis=(1, 2))  # (T,)
    test_face = ~np.isnan(test).any(axis=(1, 2))
    dist = np.linalg.norm((ref - test) * AKD_SIZE, axis=-1).mean(axis=-1)  # (T,), NaN propagates
    both = ref_face & test_face
    dist[~both] = np.nan
    return AKDResult(
        per_frame=dist,
        mean=float(dist[both].mean()) if both.any() else float("nan"),
        frames=int(both.sum()),
        no_face_ref=int((~ref_face).sum()),
        no_face_test=int((~test_face).sum()),
    )


def akd(
    ref_frames: np.ndarray, test_frames: np.ndarray, ref_landmarks: np.ndarray | None = None
) -> AKDResult:
    """AKD between two clips of uint8 RGB frames (T, H, W, 3).

    ``ref_landmarks`` (from :func:`face_landmarks`) skips re-running the mesh on the original
    when several codecs are scored against one clip.
    """
    if ref_frames.shape != test_frames.shape:
        raise InputError(f"clips differ in shape: {ref_frames.shape} vs {test_frames.shape}")
    if ref_landmarks is None:
        ref_landmarks = face_landmarks(ref_frames)
    elif ref_landmarks.shape != (len(ref_frames), N_LANDMARKS, 2):
        raise InputError(
            f"ref_landmarks is {ref_landmarks.shape}, expected {(len(ref_frames), N_LANDMARKS, 2)}"
        )
    return akd_from_landmarks(ref_landmarks, face_landmarks(test_frames))
