"""Keypoint detector and spatial keypoint maps.

Implicit warping (Mallya et al. 2022, section 3, "Learning queries, keys, and values"): the
encoder "reuses the architecture from FOMM" with "a branch to also predict a scalar keypoint
strength per keypoint" (supplementary Fig. 8); K Gaussians of fixed variance, one channel per
keypoint, each multiplied by its strength, form the spatial representation.

Coordinates: (x, y) in [-1, 1], x to the right, y down, -1/+1 on the outer pixel edges
(``F.grid_sample(align_corners=False)``'s convention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from codec.blocks import UNet
from codec.config import ModelConfig


def coordinate_grid(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel-centre coordinates, ``(H, W, 2)`` with [..., 0] = x and [..., 1] = y."""
    ys = (torch.arange(h, device=device, dtype=dtype) * 2 + 1) / h - 1
    xs = (torch.arange(w, device=device, dtype=dtype) * 2 + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def keypoint_maps(
    kp: torch.Tensor, strength: torch.Tensor, size: int, variance: float
) -> torch.Tensor:
    """Gaussian per keypoint times its strength.

    kp: (B, K, 2), strength: (B, K) -> (B, K, size, size)
    """
    grid = coordinate_grid(size, size, device=kp.device, dtype=kp.dtype)  # (S, S, 2)
    diff = grid[None, None] - kp[:, :, None, None, :]  # (B, K, S, S, 2)
    gauss = torch.exp(-0.5 * diff.pow(2).sum(-1) / variance)  # (B, K, S, S)
    return gauss * strength[:, :, None, None]


class KeypointDetector(nn.Module):
    """FOMM keypoint detector plus a strength branch.

    image (B, 3, H, W) in [0, 1] -> keypoints (B, K, 2) in [-1, 1], strength (B, K) in [0, 1].
    Keypoints are the expectation of a softmax heatmap (temperature 0.1, FOMM section 3);
    the strength is a sigmoid of a per-keypoint logit map pooled under the same heatmap.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.hourglass = UNet(3, cfg.kp_block_expansion, cfg.kp_num_blocks, cfg.kp_max_features)
        c = self.hourglass.out_channels
        self.heatmap = nn.Conv2d(c, cfg.num_kp, 7, padding=3)
        self.strength = nn.Conv2d(c, cfg.num_kp, 7, padding=3)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.cfg.feature_size
        x = F.interpolate(
            image, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        feat = self.hourglass(x)  # (B, C, S, S)
        logits = self.heatmap(feat).float()  # (B, K, S, S)
        b, k, h, w = logits.shape
        heat = torch.softmax(logits.view(b, k, -1) / self.cfg.kp_temperature, dim=-1)  # (B, K, S*S)
        grid = coordinate_grid(h, w, device=image.device).view(1, 1, -1, 2)
        kp = (heat[..., None] * grid).sum(2)  # (B, K, 2)
        s_logit = (heat * self.strength(feat).float().view(b, k, -1)).sum(-1)  # (B, K)
        return kp, torch.sigmoid(s_logit)
