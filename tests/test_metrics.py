"""Evaluation metrics on inputs with known answers (eval/metrics.py, eval/akd.py)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from _media import SAMPLE

from eval.akd import AKD_SIZE, N_LANDMARKS, akd, akd_from_landmarks, face_landmarks
from eval.metrics import (
    Scorers,
    as_uint8_frames,
    compute_metrics,
    ms_ssim_window,
    psnr_per_frame,
)
from iwcodec.errors import InputError


def _clip(t: int = 3, size: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth mid-range content, (T, H, W, 3) uint8: noise added later rarely clips."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    frames = []
    for _ in range(t):
        a = rng.uniform(0, 2 * np.pi, 3)
        rgb = [128 + 50 * np.sin(4 * xx + 3 * yy + a[c]) for c in range(3)]
        frames.append(np.stack(rgb, -1))
    return np.round(np.stack(frames)).astype(np.uint8)


def _noisy(frames: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(frames + rng.normal(0, sigma, frames.shape)), 0, 255).astype(np.uint8)


def test_identical_frames() -> None:
    ref = _clip()
    m = compute_metrics(ref, ref.copy(), with_akd=False)
    assert m["psnr"] == math.inf and m["psnr_inf_frames"] == 3
    assert np.all(np.isinf(m["per_frame"]["psnr"]))
    assert m["lpips"] == 0.0 and m["lpips_vgg"] == 0.0
    assert abs(m["dists"]) < 1e-6
    assert m["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert m["ms_ssim"] == pytest.approx(1.0, abs=1e-6)
    assert m["frames"] == 3 and m["per_frame"]["lpips"].shape == (3,)


@pytest.mark.parametrize("sigma", [2.0, 5.0, 12.0])
def test_gaussian_noise_psnr(sigma: float) -> None:
    ref = _clip()
    test = _noisy(ref, sigma)
    # Rounding to integers adds uniform noise of variance 1/12; clipping is negligible here.
    expected = 10 * math.log10(255**2 / (sigma**2 + 1 / 12))
    m = compute_metrics(ref, test, with_akd=False)
    assert m["psnr"] == pytest.approx(expected, abs=0.1)
    assert m["psnr_inf_frames"] == 0


def test_metrics_order_with_noise() -> None:
    ref = _clip()
    ms = [compute_metrics(ref, _noisy(ref, s), with_akd=False) for s in (3.0, 10.0, 30.0)]
    for key, better_is_higher in (
        ("psnr", True),
        ("ssim", True),
        ("ms_ssim", True),
        ("lpips", False),
        ("lpips_vgg", False),
        ("dists", False),
    ):
        vals = [m[key] for m in ms]
        assert vals == sorted(vals, reverse=better_is_higher), (key, vals)


def test_psnr_mean_of_finite_frames() -> None:
    ref = _clip()
    test = ref.copy()
    test[1] = _noisy(ref[1:2], 5.0)[0]
    per = psnr_per_frame(ref, test)
    m = compute_metrics(ref, test, with_akd=False)
    assert m["psnr_inf_frames"] == 2
    assert m["psnr"] == pytest.approx(per[1])


def test_float_tensor_input_matches_uint8() -> None:
    ref = _clip()
    test = _noisy(ref, 8.0)
    as_float = torch.from_numpy(test).permute(0, 3, 1, 2).float() / 255  # (T, 3, H, W)
    np.testing.assert_array_equal(as_uint8_frames(as_float), test)
    a = compute_metrics(ref, test, with_akd=False)
    b = compute_metrics(torch.from_numpy(ref), as_float, with_akd=False)
    for key in ("psnr", "ssim", "ms_ssim", "lpips", "lpips_vgg", "dists"):
        assert a[key] == pytest.approx(b[key], rel=1e-6)


def test_a_subset_of_scorers_scores_only_its_metrics() -> None:
    """A caller that reports LPIPS(alex) only loads and runs only AlexNet; its values equal
    the full set's."""
    from eval.metrics import Scorers

    ref, test = _clip(), _noisy(_clip(), 8.0)
    only = Scorers.load(metrics=("lpips",))
    assert list(only.nets) == ["lpips"] and only.device == torch.device("cpu")
    a = compute_metrics(ref, test, with_akd=False, scorers=only)
    assert "lpips_vgg" not in a and "dists" not in a
    assert a["lpips"] == pytest.approx(compute_metrics(ref, test, with_akd=False)["lpips"])
    with pytest.raises(ValueError, match="perceptual metrics"):
        Scorers.load(metrics=("lpips", "fid"))


def test_bad_inputs() -> None:
    ref = _clip()
    with pytest.raises(InputError):
        compute_metrics(ref, ref[:2], with_akd=False)
    with pytest.raises(InputError):
        compute_metrics(ref.astype(np.int16), ref, with_akd=False)
    with pytest.raises(InputError):
        compute_metrics(ref[:0], ref[:0], with_akd=False)
    with pytest.raises(InputError):
        ms_ssim_window(32, 32)


def test_ms_ssim_window() -> None:
    assert ms_ssim_window(256, 256) == 11
    assert ms_ssim_window(128, 128) == 7
    assert ms_ssim_window(64, 80) == 3


# --- AKD ------------------------------------------------------------------------------------


def test_akd_from_landmarks_counts_missing_faces() -> None:
    rng = np.random.default_rng(0)
    ref = rng.uniform(0.2, 0.8, (5, N_LANDMARKS, 2))
    test = ref + np.array([3.0, 4.0]) / AKD_SIZE  # every point moved by 5 px at 256x256
    ref[1] = np.nan  # no face in the original
    test[3] = np.nan  # no face in the decoded frame
    test[1] = np.nan  # neither
    r = akd_from_landmarks(ref, test)
    assert r.frames == 3 and r.no_face_ref == 1 and r.no_face_test == 2
    assert r.mean == pytest.approx(5.0)
    assert np.isnan(r.per_frame[[1, 3]]).all()
    np.testing.assert_allclose(r.per_frame[[0, 2, 4]], 5.0)


def test_akd_no_frames_with_faces() -> None:
    nan = np.full((2, N_LANDMARKS, 2), np.nan)
    r = akd_from_landmarks(nan, nan)
    assert math.isnan(r.mean) and r.frames == 0 and r.no_face_ref == 2


def _face_clip() -> np.ndarray | None:
    """A few frames with a real face: IWCODEC_FACE_CLIP if set, else the bundled sample clip
    (so these tests also run where the project's data folder is absent, as on CI)."""
    import av

    candidates = [os.environ.get("IWCODEC_FACE_CLIP", ""), str(SAMPLE)]
    for c in candidates:
        if c and Path(c).is_file():
            with av.open(c) as container:
                frames = [
                    f.to_ndarray(format="rgb24")
                    for _, f in zip(range(4), container.decode(video=0), strict=False)
                ]
            step = max(1, min(frames[0].shape[:2]) // 256)  # about 256 px keeps the test quick
            return np.ascontiguousarray(np.stack(frames)[:, ::step, ::step])
    return None


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    frames = _face_clip()
    if frames is None:
        pytest.skip("no face clip: set IWCODEC_FACE_CLIP to a video with a face")
    return frames


def test_akd_identical_and_shifted(face: np.ndarray) -> None:
    ref_lm = face_landmarks(face)
    assert not np.isnan(ref_lm).any(), "the sample clip should show a face in every frame"
    same = akd(face, face.copy(), ref_lm)
    assert same.mean == 0.0 and same.frames == len(face)
    shift = 6
    shifted = np.roll(face, shift, axis=2)  # content moves right by `shift` px
    shifted[:, :, :shift] = face[:, :, :1]
    r = akd(face, shifted, ref_lm)
    expected = shift * AKD_SIZE / face.shape[2]
    assert r.mean == pytest.approx(expected, abs=0.3 * expected)


def test_akd_counts_faceless_decoded_frame(face: np.ndarray) -> None:
    test = face.copy()
    test[1] = 128  # a flat grey frame: no face
    # AKD is what is checked here: one perceptual network is enough (the two VGG ones take
    # about 3 s on these 256 px frames on a CPU; the default set is scored on small frames above)
    m = compute_metrics(face, test, scorers=Scorers.load(metrics=("lpips",)))
    assert m["akd_no_face_test"] == 1 and m["akd_no_face_ref"] == 0
    assert m["akd_frames"] == len(face) - 1
    assert m["akd"] == 0.0 and np.isnan(m["per_frame"]["akd"][1])
