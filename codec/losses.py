"""Training losses other than the perceptual one (that lives in codec/perceptual.py).

* Equivariance (FOMM section 3.3, eq. 7): for a known warp T with Y(z) = X(T(z)), the
  keypoints must satisfy kp_X = T(kp_Y). T is a random affine transform plus a thin-plate
  spline on a 5x5 control grid (FOMM appendix: sigma_affine 0.05, sigma_tps 0.005).
* Keypoint separation: a Gaussian repulsion between keypoints of one image, so the keypoints
  cannot all collapse onto one spot (the failure a short training run showed: a cluster of
  spread 0.05 while the loss kept falling).
* GAN: a multi-scale patch discriminator (pix2pixHD / face-vid2vid style) with hinge loss and
  feature matching (supplementary D: "we reuse the discriminator architecture from
  face-vid2vid").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from codec.keypoints import coordinate_grid


class RandomWarp:
    """A batch of random affine + TPS warps acting on coordinates in [-1, 1].

    ``warp_coordinates(c)`` maps points of the warped image Y to points of X: Y(z) = X(T(z)).
    """

    def __init__(
        self,
        batch: int,
        sigma_affine: float = 0.05,
        sigma_tps: float = 0.005,
        points_tps: int = 5,
        device=None,
        generator: torch.Generator | None = None,
    ) -> None:
        def randn(*shape):
            return torch.randn(*shape, device=device, generator=generator)

        self.theta = randn(batch, 2, 3) * sigma_affine  # (B, 2, 3)
        self.theta[:, :, :2] += torch.eye(2, device=device)
        # TPS control points on a regular grid spanning [-1, 1] including the borders.
        lin = torch.linspace(-1, 1, points_tps, device=device)
        gy, gx = torch.meshgrid(lin, lin, indexing="ij")
        self.control_points = torch.stack([gx, gy], -1).view(1, -1, 2)  # (1, P, 2)
        self.control_params = randn(batch, 1, points_tps**2) * sigma_tps  # (B, 1, P)

    @classmethod
    def identity(cls, batch: int, device=None) -> RandomWarp:
        return cls(batch, sigma_affine=0.0, sigma_tps=0.0, device=device)

    def warp_coordinates(self, coords: torch.Tensor) -> torch.Tensor:
        """coords (B, N, 2) -> (B, N, 2)"""
        theta = self.theta.to(coords.dtype)
        out = coords @ theta[:, :, :2].transpose(1, 2) + theta[:, None, :, 2]  # (B, N, 2)
        d = coords[:, :, None, :] - self.control_points.to(coords.dtype)[:, None]  # (B, N, P, 2)
        r2 = d.pow(2).sum(-1)  # (B, N, P)
        u = r2 * torch.log(r2 + 1e-6)  # TPS radial basis r^2 log r^2
        tps = (u * self.control_params.to(coords.dtype)).sum(-1, keepdim=True)  # (B, N, 1)
        return out + tps

    def warp_image(self, image: torch.Tensor) -> torch.Tensor:
        """X (B, C, H, W) -> Y (B, C, H, W) with Y(z) = X(T(z))."""
        b, _, h, w = image.shape
        grid = coordinate_grid(h, w, device=image.device).view(1, -1, 2).expand(b, -1, -1)
        src = self.warp_coordinates(grid).view(b, h, w, 2).to(image.dtype)
        return F.grid_sample(
            image, src, mode="bilinear", padding_mode="reflection", align_corners=False
        )


def equivariance_loss(kp_x: torch.Tensor, kp_y: torch.Tensor, warp: RandomWarp) -> torch.Tensor:
    """FOMM eq. 7 with an L1 penalty: kp_x (B, K, 2) should equal T(kp_y)."""
    return (kp_x - warp.warp_coordinates(kp_y)).abs().mean()


def lowpass_l1(pred: torch.Tensor, target: torch.Tensor, block: int = 8) -> torch.Tensor:
    """L1 of the 8x8 block means of pred and target (B, 3, H, W): colour and exposure.

    A global drift in brightness, contrast or white balance costs the perceptual loss little
    (VGG features are fairly invariant to it) and PSNR a lot; the block means see only it."""
    return (F.avg_pool2d(pred, block) - F.avg_pool2d(target, block)).abs().mean()


def floor_loss(
    pred: torch.Tensor, target: torch.Tensor, frozen: torch.Tensor, block: int = 4
) -> torch.Tensor:
    """Mean excess of pred's error over a frozen frame's: pred, target, frozen (B, 3, H, W).

    Errors are L1 over channels, averaged in ``block`` x ``block`` blocks (a pixel's error is
    noisy; a blurred lip or eye is a block's); the loss is the mean of
    relu(err(pred) - err(frozen)). It is 0 wherever the prediction is at least as close to
    the target as the frozen frame is, so on large motions (where the frozen keyframe is far
    off) it is silent, and on a frame near its keyframe it asks for the keyframe's pixels."""
    err_pred = F.avg_pool2d((pred - target).abs().mean(1, keepdim=True), block)  # (B, 1, h, w)
    err_frozen = F.avg_pool2d((frozen - target).abs().mean(1, keepdim=True), block)
    return F.relu(err_pred - err_frozen.detach()).mean()


def separation_loss(kp: torch.Tensor, sigma: float) -> torch.Tensor:
    """Mean Gaussian repulsion over keypoint pairs of one image; kp (B, K, 2)."""
    k = kp.shape[1]
    d2 = (kp[:, :, None] - kp[:, None]).pow(2).sum(-1)  # (B, K, K)
    off = ~torch.eye(k, dtype=torch.bool, device=kp.device)
    return torch.exp(-d2[:, off] / (2 * sigma**2)).mean()


def keypoint_spread(kp: torch.Tensor) -> torch.Tensor:
    """RMS distance of the keypoints from their centroid, averaged over the batch; kp (B, K, 2).

    About 0.3-0.5 for keypoints spread over a face crop; near 0 when they collapse."""
    return (kp - kp.mean(1, keepdim=True)).pow(2).sum(-1).mean(1).sqrt().mean()


class _DiscBlock(nn.Module):
    def __init__(self, cin: int, cout: int, norm: bool, pool: bool) -> None:
        super().__init__()
        self.conv = nn.utils.parametrizations.spectral_norm(nn.Conv2d(cin, cout, 4, padding=1))
        self.norm = nn.InstanceNorm2d(cout, affine=True) if norm else nn.Identity()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.norm(self.conv(x)), 0.2)
        return F.avg_pool2d(x, 2) if self.pool else x


class PatchDiscriminator(nn.Module):
    """image (B, 3, H, W) -> (list of features, patch logits (B, 1, h, w))."""

    def __init__(
        self, block_expansion: int = 64, num_blocks: int = 4, max_features: int = 512
    ) -> None:
        super().__init__()
        chans = [3] + [min(max_features, block_expansion * 2**i) for i in range(num_blocks)]
        self.blocks = nn.ModuleList(
            _DiscBlock(chans[i], chans[i + 1], norm=i > 0, pool=i < num_blocks - 1)
            for i in range(num_blocks)
        )
        self.head = nn.Conv2d(chans[-1], 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats, self.head(x)


class MultiScaleDiscriminator(nn.Module):
    """Patch discriminators on the image at scales 1 and 1/2."""

    def __init__(self, scales: tuple[float, ...] = (1.0, 0.5), **kw) -> None:
        super().__init__()
        self.scales = scales
        self.discs = nn.ModuleList(PatchDiscriminator(**kw) for _ in scales)

    def forward(self, image: torch.Tensor) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
        outs = []
        for scale, disc in zip(self.scales, self.discs):
            x = (
                image
                if scale == 1
                else F.interpolate(image, scale_factor=scale, mode="bilinear", antialias=True)
            )
            outs.append(disc(x * 2 - 1))
        return outs


def generator_gan_loss(fake_outs) -> torch.Tensor:
    return sum(-logits.float().mean() for _, logits in fake_outs) / len(fake_outs)


def discriminator_hinge_loss(real_outs, fake_outs) -> torch.Tensor:
    loss = 0.0
    for (_, real), (_, fake) in zip(real_outs, fake_outs):
        loss = loss + F.relu(1 - real.float()).mean() + F.relu(1 + fake.float()).mean()
    return loss / len(real_outs)


def feature_matching_loss(real_outs, fake_outs) -> torch.Tensor:
    loss = 0.0
    n = 0
    for (real_feats, _), (fake_feats, _) in zip(real_outs, fake_outs):
        for r, f in zip(real_feats, fake_feats):
            loss = loss + (r.detach().float() - f.float()).abs().mean()
            n += 1
    return loss / n
