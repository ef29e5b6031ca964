"""Per-frame and per-clip quality metrics between original and decoded frames.

Every metric is computed on 8-bit RGB frames, the pictures a viewer would see: float inputs are
rounded to uint8 first, so every codec is scored on equal terms. Definitions (docs/metrics.md):

- PSNR: 10 log10(255^2 / MSE) per frame, MSE over all pixels and the three RGB channels;
  identical frames give +inf. The clip value is the mean of the finite per-frame values, and
  the number of infinite frames is reported beside it (``psnr_inf_frames``); a clip whose frames
  are all identical gets +inf.
- SSIM: pytorch-msssim's SSIM (11-tap Gaussian window, sigma 1.5, K1 0.01, K2 0.03) on RGB with
  data range 255, averaged over channels, per frame.
- MS-SSIM: pytorch-msssim's 5-scale MS-SSIM with the standard weights. Its coarsest scale must
  be larger than the window, i.e. min(H, W) > 16 (win - 1); the window is the largest odd
  size <= 11 that fits (11 for >= 161 px, 7 for 128 px) and is reported as ``ms_ssim_win``.
- LPIPS: LPIPS v0.1 with AlexNet (Zhang et al. 2018), offline weights (codec/perceptual.py).
- LPIPS(vgg) and DISTS (Ding et al. 2020): the perceptual metrics of the JVET test conditions
  for generative face video coding (``lpips_vgg``, ``dists``), same offline weights.
- AKD: face-mesh landmark distance in pixels at 256x256 (eval/akd.py); frames without a face
  on either side are counted, not averaged.

Clip values of SSIM, MS-SSIM, LPIPS, LPIPS(vgg) and DISTS are plain means over frames.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pytorch_msssim import ms_ssim, ssim
from torch import nn

from codec.perceptual import DISTS, LPIPS
from eval.akd import akd
from iwcodec.errors import InputError

MAX_MS_SSIM_WIN = 11


def as_uint8_frames(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """Frames in one layout: (T, H, W, 3) uint8 RGB.

    Accepts numpy or torch uint8 (T, H, W, 3), or float torch/numpy (T, 3, H, W) in [0, 1]
    (the model's output), which is rounded to uint8.
    """
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu()
        if frames.is_floating_point():
            if frames.ndim != 4 or frames.shape[1] != 3:
                raise InputError(
                    f"float frames must be (T, 3, H, W) in [0, 1], got {tuple(frames.shape)}"
                )
            frames = (frames.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        frames = frames.numpy()
    frames = np.asarray(frames)
    if np.issubdtype(frames.dtype, np.floating):
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise InputError(f"float frames must be (T, 3, H, W) in [0, 1], got {frames.shape}")
        frames = np.round(np.clip(frames, 0, 1) * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(
            f"frames must be uint8 RGB (T, H, W, 3), got {frames.dtype} {frames.shape}"
        )
    if len(frames) == 0:
        raise InputError("no frames to score")
    return np.ascontiguousarray(frames)


def psnr_per_frame(ref: np.ndarray, test: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 pair -> (T,) float64 PSNR in dB, +inf for identical frames."""
    mse = ((ref.astype(np.float64) - test.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))  # (T,)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0**2 / mse)


def ms_ssim_window(height: int, width: int) -> int:
    """Largest odd Gaussian window <= 11 that pytorch-msssim accepts at 5 scales."""
    side = min(height, width)
    for win in range(MAX_MS_SSIM_WIN, 2, -2):
        if side > (win - 1) * 16:
            return win
    raise InputError(f"frames of {height}x{width} px are too small for MS-SSIM (need > 32 px)")


#: The perceptual metrics, by the name their values take in results.
SCORER_METRICS: tuple[str, ...] = ("lpips", "lpips_vgg", "dists")
_SCORER_NETS: dict[str, Callable[[], nn.Module]] = {
    "lpips": lambda: LPIPS("alex", inputs="[0,1]"),
    "lpips_vgg": lambda: LPIPS("vgg", inputs="[0,1]"),
    "dists": DISTS,
}


@dataclass(frozen=True)
class Scorers:
    """The frozen perceptual networks a scoring run loads once, by metric name (a subset of
    :data:`SCORER_METRICS`: a caller that reports LPIPS(alex) only loads and runs only it)."""

    nets: dict[str, nn.Module]

    @classmethod
    def load(
        cls, device: str | torch.device = "cpu", metrics: Sequence[str] = SCORER_METRICS
    ) -> Scorers:
        unknown = sorted(set(metrics) - set(_SCORER_NETS))
        if unknown or not metrics:
            raise ValueError(f"perceptual metrics are some of {SCORER_METRICS}, got {metrics}")
        return cls({m: _SCORER_NETS[m]().to(device) for m in metrics})

    @property
    def device(self) -> torch.device:
        return next(iter(self.nets.values())).scaling.shift.device

    def __call__(self, ref: torch.Tensor, test: torch.Tensor) -> dict[str, torch.Tensor]:
        """ref, test (B, 3, H, W) in [0, 1] -> {metric: (B,)} for each loaded network."""
        return {m: net(ref, test) for m, net in self.nets.items()}


def _to_float(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    # (T, H, W, 3) uint8 -> (T, 3, H, W) float32 in [0, 255]
    return torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float()


@torch.inference_mode()
def image_metrics_per_frame(
    ref: np.ndarray,
    test: np.ndarray,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    scorers: Scorers | None = None,
) -> dict[str, np.ndarray]:
    """PSNR, SSIM, MS-SSIM, LPIPS(alex), LPIPS(vgg), DISTS per frame of two (T, H, W, 3)
    uint8 clips.

    Returns {"psnr", "ssim", "ms_ssim"} and one entry per network of ``scorers`` (default:
    all of :data:`SCORER_METRICS`): (T,) float64 each.
    """
    device = torch.device(device)
    scorers = scorers if scorers is not None else Scorers.load(device)
    win = ms_ssim_window(*ref.shape[1:3])
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("ssim", "ms_ssim", *scorers.nets)}
    for start in range(0, len(ref), batch_size):
        r = _to_float(ref[start : start + batch_size], device)  # (b, 3, H, W)
        t = _to_float(test[start : start + batch_size], device)
        out["ssim"].append(ssim(r, t, data_range=255, size_average=False).cpu().numpy())
        out["ms_ssim"].append(
            ms_ssim(r, t, data_range=255, size_average=False, win_size=win).cpu().numpy()
        )
        for name, value in scorers(r / 255, t / 255).items():
            out[name].append(value.cpu().numpy())
    metrics = {k: np.concatenate(v).astype(np.float64) for k, v in out.items()}
    metrics["psnr"] = psnr_per_frame(ref, test)
    return metrics


def mean_finite_psnr(psnr: np.ndarray) -> float:
    """Mean of the finite per-frame PSNRs; +inf if every frame is identical."""
    finite = psnr[np.isfinite(psnr)]
    return float(finite.mean()) if len(finite) else float("inf")


def compute_metrics(
    ref_frames: np.ndarray | torch.Tensor,
    test_frames: np.ndarray | torch.Tensor,
    device: str | torch.device = "cpu",
    *,
    batch_size: int = 16,
    with_akd: bool = True,
    ref_landmarks: np.ndarray | None = None,
    scorers: Scorers | None = None,
) -> dict[str, Any]:
    """All metrics of a decoded clip against its original.

    ref_frames, test_frames: (T, H, W, 3) uint8 RGB (numpy or torch) or float (T, 3, H, W) in
        [0, 1]; both the same shape.
    ref_landmarks: optional (T, 478, 2) from eval.akd.face_landmarks(ref), reused across codecs.
    scorers: optional perceptual networks (:class:`Scorers`) to reuse across calls.

    Returns a dict with the clip values ``frames, psnr, psnr_inf_frames, ssim, ms_ssim,
    ms_ssim_win``, one per network of ``scorers`` (default: ``lpips, lpips_vgg, dists``) and,
    with AKD, ``akd, akd_frames, akd_no_face_ref, akd_no_face_test``
    (plain Python numbers, JSON-ready), plus ``per_frame``: a dict of (T,) float64 numpy arrays
    with the same metric names (``akd`` NaN where a side has no face).
    """
    ref = as_uint8_frames(ref_frames)
    test = as_uint8_frames(test_frames)
    if ref.shape != test.shape:
        raise InputError(f"original and decoded clips differ in shape: {ref.shape} vs {test.shape}")
    per_frame = image_metrics_per_frame(ref, test, device, batch_size, scorers)
    result: dict[str, Any] = {
        "frames": len(ref),
        "psnr": mean_finite_psnr(per_frame["psnr"]),
        "psnr_inf_frames": int(np.isinf(per_frame["psnr"]).sum()),
        "ssim": float(per_frame["ssim"].mean()),
        "ms_ssim": float(per_frame["ms_ssim"].mean()),
        "ms_ssim_win": ms_ssim_window(*ref.shape[1:3]),
        **{m: float(per_frame[m].mean()) for m in SCORER_METRICS if m in per_frame},
    }
    if with_akd:
        a = akd(ref, test, ref_landmarks)
        per_frame["akd"] = a.per_frame
        result.update(
            akd=a.mean,
            akd_frames=a.frames,
            akd_no_face_ref=a.no_face_ref,
            akd_no_face_test=a.no_face_test,
        )
    result["per_frame"] = per_frame
    return result
