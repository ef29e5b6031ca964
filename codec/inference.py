"""Rebuilding a clip's frames from some of its own frames, as the receiver does.

"Rebuild from N sources and compare with the frozen frame" is what the trainer's validation
(:func:`codec.train.validate`), ``python -m eval.reconstruction`` and the comparison of weights
files all measure. :func:`reconstruct` is the one place it is done: it places the sources
(:func:`source_indices`), rebuilds the wanted frames from them (source features once, then
keypoints only, as a receiver renders) and names, for each frame, the source the
frozen-keyframe baseline would show instead (:func:`nearest_source`). Each caller scores what
it returns with its own metrics. :func:`self_reconstruct` is the ceiling: each frame from
itself.

This measures the model, not the codec: sources are original frames, keypoints unquantized.
No training code here (codec/ imports neither sender/ nor eval/: clips come in as uint8
arrays).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from codec.model import ImplicitWarpingModel, SourceFeatures
from iwcodec.errors import ModelMismatchError

#: Driving keypoints (B, K, 2) and strengths (B, K) as detected -> as the receiver gets them.
KeypointChannel = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def source_indices(num_frames: int, num_sources: int) -> list[int]:
    """The first frame plus evenly spaced ones, ``i * T // n``: 1 -> [0], 2 -> [0, T/2],
    3 -> [0, T/3, 2T/3] (as the paper's Table 2 places its sources)."""
    return [i * num_frames // num_sources for i in range(num_sources)]


def nearest_source(sources: Sequence[int], targets: np.ndarray) -> np.ndarray:
    """The frozen-keyframe baseline: for each frame index in ``targets`` (M,), the index of
    the nearest source frame (the earlier one on a tie), (M,) int64."""
    s = np.asarray(sources, dtype=np.int64)
    t = np.asarray(targets, dtype=np.int64)
    return s[np.abs(t[:, None] - s[None]).argmin(1)]


def to_images(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """(T, S, S, 3) uint8 -> (T, 3, S, S) float32 in [0, 1] on ``device``."""
    x = torch.from_numpy(np.array(frames)).to(device)  # a copy: cached clips are read-only
    return x.permute(0, 3, 1, 2).float().div_(255)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(T, 3, S, S) float in [0, 1] -> (T, S, S, 3) uint8, clamped and rounded like
    eval.metrics does."""
    x = images.float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def check_finite(values: torch.Tensor, what: str) -> None:
    """Refuse NaN or infinite model outputs: they would become black frames silently."""
    if not bool(torch.isfinite(values).all()):
        raise not_finite(what)


def not_finite(what: str) -> ModelMismatchError:
    return ModelMismatchError(
        f"the model's {what} contains NaN or infinite values: the weights are broken "
        "(e.g. a diverged training run); decode with other weights (--weights)"
    )


@torch.inference_mode()
def picture_source(
    model: ImplicitWarpingModel, rgb: np.ndarray
) -> tuple[SourceFeatures, np.ndarray]:
    """A keyframe's source features, as a receiver computes them once per keyframe: its
    keypoints found on the picture itself, then keys / values / pixels (paper section 3,
    "Learning queries, keys, and values"). ``rgb`` (S, S, 3) uint8 -> features of batch 1 and
    the keypoints (K, 3) rows (x, y, strength). Both halves use it: the receiver's keyframe
    set, and a sender that renders what the receiver will show."""
    image = to_images(rgb[None], next(model.parameters()).device)  # (1, 3, S, S)
    kp, strength = model.detect(image)  # (1, K, 2), (1, K)
    check_finite(torch.cat([kp.flatten(), strength.flatten()]), "keypoints of the keyframe")
    own = torch.cat([kp[0], strength[0, :, None]], -1).float().cpu().numpy()  # (K, 3)
    return model.encode_source(image, kp, strength), own  # (1, L, .)


@torch.inference_mode()
def render_frames(
    model: ImplicitWarpingModel, src: SourceFeatures, keypoints: np.ndarray
) -> np.ndarray:
    """Frames from source features (batch 1, one or more keyframes' tokens) and keypoints
    (B, K, 3) rows (x, y, strength) -> (B, S, S, 3) uint8 (eq. 1, then the decoder)."""
    device = next(model.parameters()).device
    kp = torch.tensor(keypoints, device=device)  # a copy: decoded arrays may be read-only
    images = model.render(src, kp[..., :2], kp[..., 2])  # (B, 3, S, S)
    check_finite(images, "rendered frames")
    return to_uint8(images)


@dataclass(frozen=True)
class Reconstruction:
    """Frames of a clip rebuilt from some of its own frames.

    sources: the N frame indices used as sources; targets: (M,) the indices rebuilt;
    images: (M, 3, S, S) float in [0, 1] on the model's device, the rebuilt frames;
    frozen: (M,) for each target the source index the frozen-keyframe baseline shows;
    kp_sources: (N, K, 2) and kp_targets: (M, K, 2) float32, the keypoints rendered from.
    """

    sources: list[int]
    targets: np.ndarray
    images: torch.Tensor
    frozen: np.ndarray
    kp_sources: torch.Tensor
    kp_targets: torch.Tensor


@torch.inference_mode()
def reconstruct(
    model: ImplicitWarpingModel,
    clip: np.ndarray,
    num_sources: int,
    targets: np.ndarray | None = None,
    chunk: int = 16,
    keypoints: KeypointChannel | None = None,
) -> Reconstruction:
    """Rebuild the frames at ``targets`` (default: every frame) of ``clip`` (T, S, S, 3) uint8
    from ``num_sources`` of its frames placed by :func:`source_indices`: the sources' features
    once, then ``chunk`` targets per render (the batch size: on some devices results differ in
    the last bits from one batch size to another). ``keypoints``: what reaches the receiver of
    each target's detected keypoints (e.g. quantized and back, as a stream carries them);
    default: the keypoints as detected."""
    device = next(model.parameters()).device
    sources = source_indices(len(clip), num_sources)
    targets = np.arange(len(clip)) if targets is None else np.asarray(targets)
    source_images = to_images(clip[sources], device)  # (N, 3, S, S)
    kp_s, s_s = model.detect(source_images)
    src = model.encode_source(source_images, kp_s, s_s).regroup(1)  # one set of N sources
    images, kps = [], []
    for start in range(0, len(targets), chunk):
        part = to_images(clip[targets[start : start + chunk]], device)
        kp_d, s_d = model.detect(part)
        if keypoints is not None:
            kp_d, s_d = keypoints(kp_d, s_d)
        images.append(model.render(src, kp_d, s_d).float().clamp(0, 1))
        kps.append(kp_d.float())
    return Reconstruction(
        sources,
        targets,
        torch.cat(images),
        nearest_source(sources, targets),
        kp_s.float(),
        torch.cat(kps),
    )


@torch.inference_mode()
def self_reconstruct(
    model: ImplicitWarpingModel,
    clip: np.ndarray,
    targets: np.ndarray | None = None,
    chunk: int = 16,
) -> torch.Tensor:
    """Each frame at ``targets`` (default: every frame) of ``clip`` (T, S, S, 3) uint8 rebuilt
    from itself as its only source and its own keypoints: the easiest case a codec meets (the
    frame shows the face where the keyframe does), so the ceiling of everything else.
    -> (M, 3, S, S) float in [0, 1] on the model's device"""
    device = next(model.parameters()).device
    targets = np.arange(len(clip)) if targets is None else np.asarray(targets)
    images = []
    for start in range(0, len(targets), chunk):
        part = to_images(clip[targets[start : start + chunk]], device)
        kp, strength = model.detect(part)
        src = model.encode_source(part, kp, strength)  # one set of one source per frame
        images.append(model.render(src, kp, strength).float().clamp(0, 1))
    return torch.cat(images)
