"""The implicit-warping generator (Mallya et al., NeurIPS 2022, section 3 and Fig. 3).

Data path for one driving frame, with N source images (keyframes):

    driving keypoints -> keypoint maps -> query U-Net -> Q (B, S*S, d) + pos
    each source: [image/4, its keypoint maps] -> key U-Net -> K (B, S*S, d) + pos
                 full-res image -> value encoder -> V (B, S*S, d')
                 image/4 -> P (B, S*S, 3)                  (pixels for the residual branch)
    keys/values of all sources concatenated, plus ``num_extra_kv`` learned pairs
    A = softmax(Q K^T / sqrt(d));  warped = A V + MLP([A K, A P, Q])      (eq. 1, Fig. 3)
    decoder(warped) -> image (B, 3, H, W)

Everything that depends only on the sources is computed once per keyframe
(:meth:`ImplicitWarpingModel.encode_source`) and reused for every frame
(:meth:`ImplicitWarpingModel.render`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from codec.blocks import ConvNormAct, ResBlock, UNet, UpBlock, norm
from codec.config import ModelConfig
from codec.keypoints import KeypointDetector, keypoint_maps


@dataclass
class SourceFeatures:
    """Keys, values and pixels of one or more source images, ready for attention.

    keys: (B, L, d), values: (B, L, d'), pixels: (B, L, 3) with L = S*S per source.
    """

    keys: torch.Tensor
    values: torch.Tensor
    pixels: torch.Tensor

    @property
    def length(self) -> int:
        return self.keys.shape[1]

    @staticmethod
    def concat(parts: list[SourceFeatures]) -> SourceFeatures:
        if len(parts) == 1:
            return parts[0]
        return SourceFeatures(
            torch.cat([p.keys for p in parts], 1),
            torch.cat([p.values for p in parts], 1),
            torch.cat([p.pixels for p in parts], 1),
        )


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C)"""
    return x.flatten(2).transpose(1, 2)


class ValueEncoder(nn.Sequential):
    """Supplementary C: "a simple 3-layer network" on the full-resolution source, with "two
    downsampling convolution layers" (section 3) down to 1/4 resolution."""

    def __init__(self, value_dim: int) -> None:
        mid = max(value_dim // 2, 8)
        super().__init__(
            ConvNormAct(3, mid // 2, kernel=7),
            nn.Conv2d(mid // 2, mid, 3, stride=2, padding=1),
            norm(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, value_dim, 3, stride=2, padding=1),
        )


class Decoder(nn.Module):
    """Residual blocks then 2 upsampling blocks to the output image (supplementary C)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c1, c2 = cfg.decoder_channels
        self.res = nn.Sequential(*[ResBlock(cfg.value_dim) for _ in range(cfg.decoder_res_blocks)])
        self.up = nn.Sequential(UpBlock(cfg.value_dim, c1), UpBlock(c1, c2))
        self.out = nn.Conv2d(c2, 3, 7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.out(self.up(self.res(x))))


class ImplicitWarpingModel(nn.Module):
    def __init__(self, cfg: ModelConfig, attention_backend: str = "auto") -> None:
        super().__init__()
        self.cfg = cfg
        self.attention_backend = attention_backend
        # Set by codec.weights.load_model: id of the weights file (goes into the bitstream).
        self.weights_id: bytes | None = None
        self.weights_path = None
        s, d, dv, k = cfg.feature_size, cfg.attn_dim, cfg.value_dim, cfg.num_kp
        self.kp_detector = KeypointDetector(cfg)
        self.query_unet = UNet(
            k, cfg.unet_block_expansion, cfg.unet_num_blocks, cfg.unet_max_features
        )
        self.query_proj = nn.Conv2d(self.query_unet.out_channels, d, 1)
        self.key_unet = UNet(
            3 + k, cfg.unet_block_expansion, cfg.unet_num_blocks, cfg.unet_max_features
        )
        self.key_proj = nn.Conv2d(self.key_unet.out_channels, d, 1)
        self.value_encoder = ValueEncoder(dv)
        # Learnable position embeddings on queries and keys (section 3). Zero at start so the
        # network cannot begin by copying the source through a positional identity match.
        self.pos_embed = nn.Parameter(torch.zeros(1, s * s, d))
        # Image-independent key/value pairs for content missing from every source (section 3).
        self.extra_keys = nn.Parameter(torch.randn(cfg.num_extra_kv, d) * d**-0.5)
        self.extra_values = nn.Parameter(torch.randn(cfg.num_extra_kv, dv) * 0.02)
        self.extra_pixels = nn.Parameter(torch.zeros(cfg.num_extra_kv, 3))
        # Residual branch (Fig. 3, purple): MLP([A K, A P, Q]) added to A V.
        self.residual_mlp = nn.Sequential(
            nn.Linear(2 * d + 3, cfg.residual_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.residual_hidden, dv),
        )
        self.decoder = Decoder(cfg)

    # -- sender side --------------------------------------------------------------------------
    def detect(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B, 3, H, W) in [0, 1] -> keypoints (B, K, 2), strength (B, K)."""
        return self.kp_detector(image)

    # -- receiver side ------------------------------------------------------------------------
    def _downsample(self, image: torch.Tensor) -> torch.Tensor:
        s = self.cfg.feature_size
        return F.interpolate(
            image, size=(s, s), mode="bilinear", antialias=True, align_corners=False
        )

    def encode_source(
        self, image: torch.Tensor, kp: torch.Tensor, strength: torch.Tensor
    ) -> SourceFeatures:
        """Source images (B, 3, H, W) and their keypoints (B, K, 2), (B, K) -> features
        (keys, values and pixels of one source each; computed once per keyframe)."""
        s = self.cfg.feature_size
        small = self._downsample(image)  # (B, 3, S, S)
        maps = keypoint_maps(kp, strength, s, self.cfg.kp_variance).to(small.dtype)  # (B, K, S, S)
        keys = _to_tokens(self.key_proj(self.key_unet(torch.cat([small, maps], 1))))  # (B, S*S, d)
        values = _to_tokens(self.value_encoder(image))  # (B, S*S, d')
        pixels = _to_tokens(small * 2 - 1)  # (B, S*S, 3) in [-1, 1]
        return SourceFeatures(keys + self.pos_embed.to(keys.dtype), values, pixels)

    def with_extras(self, src: SourceFeatures) -> SourceFeatures:
        """Append the learned extra key/value pairs: (B, L, .) -> (B, L + num_extra_kv, .)."""
        b = src.keys.shape[0]
        extra = SourceFeatures(
            self.extra_keys.to(src.keys.dtype).expand(b, -1, -1),
            self.extra_values.to(src.values.dtype).expand(b, -1, -1),
            self.extra_pixels.to(src.pixels.dtype).expand(b, -1, -1),
        )
        return SourceFeatures.concat([src, extra])

    def queries(self, kp: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        """Driving keypoints (B, K, 2), (B, K) -> queries (B, S*S, d)."""
        s = self.cfg.feature_size
        maps = keypoint_maps(kp, strength, s, self.cfg.kp_variance)  # (B, K, S, S)
        q = _to_tokens(self.query_proj(self.query_unet(maps.to(self.query_proj.weight.dtype))))
        return q + self.pos_embed.to(q.dtype)  # (B, S*S, d)

    def render(
        self,
        src: SourceFeatures,
        kp: torch.Tensor,
        strength: torch.Tensor,
        key_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Rebuild the driving frame from source features that already include the extras.

        src: keys (B, Lk, d), values (B, Lk, d'), pixels (B, Lk, 3); kp (B, K, 2);
        strength (B, K); key_bias (B, Lk) of 0/-inf -> image (B, 3, H, W) in [0, 1]
        """
        q = self.queries(kp, strength)  # (B, Lq, d)
        keys, values, pixels = (t.to(q.dtype) for t in (src.keys, src.values, src.pixels))
        out_v, out_k, out_p = kernels.warp_attention(
            q, keys, values, pixels, key_bias=key_bias, backend=self.attention_backend
        )
        warped = out_v + self.residual_mlp(torch.cat([out_k, out_p, q], -1))  # (B, Lq, d')
        s = self.cfg.feature_size
        warped = warped.transpose(1, 2).reshape(q.shape[0], -1, s, s)  # (B, d', S, S)
        return self.decoder(warped)

    # -- training -----------------------------------------------------------------------------
    def forward(
        self,
        sources: torch.Tensor,
        driving: torch.Tensor,
        key_bias: torch.Tensor | None = None,
        extra_detect: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Reconstruct ``driving`` from ``sources`` (training).

        sources (B, N, 3, H, W), driving (B, 3, H, W), key_bias (B, N*S*S) or None.
        ``extra_detect`` (B', 3, H, W): more images to run the keypoint detector on in the same
        batch (the warped frames of the equivariance loss); their results come back as
        ``kp_extra`` / ``strength_extra``.
        """
        b, n = sources.shape[:2]
        images = [sources.flatten(0, 1), driving] + (
            [extra_detect] if extra_detect is not None else []
        )
        kp_all, s_all = self.detect(torch.cat(images, 0))
        kp_src, s_src = kp_all[: b * n], s_all[: b * n]
        kp_drv, s_drv = kp_all[b * n : b * n + b], s_all[b * n : b * n + b]
        feats = self.encode_source(sources.flatten(0, 1), kp_src, s_src)  # (B*N, L, .)
        # (B*N, L, .) -> (B, N*L, .): the sources of one example form one key set.
        feats = SourceFeatures(
            *(
                t.reshape(b, n * t.shape[1], t.shape[2])
                for t in (feats.keys, feats.values, feats.pixels)
            )
        )
        src = self.with_extras(feats)
        if key_bias is not None:
            key_bias = torch.cat([key_bias, key_bias.new_zeros(b, self.cfg.num_extra_kv)], 1)
        out = {
            "prediction": self.render(src, kp_drv, s_drv, key_bias),
            "kp_driving": kp_drv,
            "strength_driving": s_drv,
            "kp_source": kp_src.view(b, n, -1, 2),
            "strength_source": s_src.view(b, n, -1),
        }
        if extra_detect is not None:
            out["kp_extra"], out["strength_extra"] = kp_all[b * n + b :], s_all[b * n + b :]
        return out


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
