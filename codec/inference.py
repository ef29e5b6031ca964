"""Inference helpers shared by validation, evaluation and tests (no training code)."""

from __future__ import annotations

import torch

from codec.model import ImplicitWarpingModel


@torch.inference_mode()
def reconstruct(
    model: ImplicitWarpingModel, sources: torch.Tensor, targets: torch.Tensor, chunk: int = 16
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rebuild ``targets`` (T, 3, S, S) from ``sources`` (N, 3, S, S) as the receiver does:
    source features once, then keypoints only. -> (pred (T, 3, S, S), kp_src (N, K, 2),
    kp_targets (T, K, 2))."""
    kp_s, s_s = model.detect(sources)
    src = model.encode_source(sources, kp_s, s_s).regroup(1)  # one set of N sources
    preds, kps = [], []
    for part in targets.split(chunk):
        kp_d, s_d = model.detect(part)
        preds.append(model.render(src, kp_d, s_d).float().clamp(0, 1))
        kps.append(kp_d.float())
    return torch.cat(preds), kp_s.float(), torch.cat(kps)


@torch.inference_mode()
def self_reconstruct(
    model: ImplicitWarpingModel, frames: torch.Tensor, chunk: int = 16
) -> torch.Tensor:
    """Each of ``frames`` (T, 3, S, S) rebuilt from itself as its only source and its own
    keypoints: the easiest case a codec meets (the frame shows the face where the keyframe
    does), so the ceiling of everything else. -> (T, 3, S, S) in [0, 1]"""
    preds = []
    for part in frames.split(chunk):
        kp, strength = model.detect(part)
        src = model.encode_source(part, kp, strength)  # T sets of one source each
        preds.append(model.render(src, kp, strength).float().clamp(0, 1))
    return torch.cat(preds)
