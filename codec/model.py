"""The implicit-warping generator (Mallya et al., NeurIPS 2022, section 3 and Fig. 3).

Data path for one driving frame, with N source images (keyframes):

    driving keypoints -> keypoint maps -> query U-Net -> Q (B, S*S, d) + pe(z)
    each source: [image/4, its keypoint maps] -> key U-Net -> K (B, S*S, d) + pe(T(z'))
                 full-res image -> value encoder -> V (B, S*S, d')
                 image/4 -> P (B, S*S, 3)                  (pixels for the residual branch)
                 full-res 4x4 patches -> (B, S*S, 48)      (pixels for the source warps)
    keys/values of all sources concatenated, plus ``num_extra_kv`` learned pairs
    A = softmax(Q K^T / sqrt(d));  warped = A V + MLP([A K, A P])        (eq. 1, Fig. 3)
    decoder(warped) -> image (B, 3, H, W), then two masks blend in the full-resolution source
    warped by the attention's implicit flow (:meth:`ImplicitWarpingModel.warp_sources`) and by
    the keypoints' own motion (:meth:`ImplicitWarpingModel.prior_warp`)

pe is the learnable position embedding (a Fourier-feature function of position); T(z') moves
each source position by the keypoints' displacement (``source_positions``), a motion prior
the attention refines. Everything that depends only on the sources is computed once per
keyframe (:meth:`ImplicitWarpingModel.encode_source`); per frame only the queries, the
positional term of the keys and the attention run (:meth:`ImplicitWarpingModel.render`).

This is the shipped model, with no switches: the motion prior and the two source warps are
not in the paper (docs/model.md, "Where this differs from the paper"). The two warps' masks
start at zero (:data:`REFINEMENT_LAYERS`), so weights from before them load and render as
they did (codec.weights.load_model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from codec.blocks import ConvNormAct, ResBlock, UNet, UpBlock, norm
from codec.config import ModelConfig
from codec.keypoints import KeypointDetector, coordinate_grid, keypoint_maps


@dataclass
class SourceFeatures:
    """What the receiver keeps per keyframe: everything attention needs from the sources except
    the per-frame positional term (which depends on the driving keypoints).

    keys: (B, N*L, d) content keys, values: (B, N*L, d'), pixels: (B, N*L, 3 + P) (the token's
    pixel at S x S, then its full-resolution patch of P = cfg.patch_channels values), with
    L = S*S tokens per source, sources in order; kp: (B, N, K, 2) and strength: (B, N, K) of
    the sources.
    """

    keys: torch.Tensor
    values: torch.Tensor
    pixels: torch.Tensor
    kp: torch.Tensor
    strength: torch.Tensor

    @property
    def num_sources(self) -> int:
        return self.kp.shape[1]

    @staticmethod
    def concat(parts: list[SourceFeatures]) -> SourceFeatures:
        """Several sources (same batch) as one key set, in the given order."""
        if len(parts) == 1:
            return parts[0]
        return SourceFeatures(*(torch.cat([getattr(p, f) for p in parts], 1) for f in _FIELDS))

    def regroup(self, batch: int) -> SourceFeatures:
        """``batch * n`` one-source entries -> ``batch`` sets of ``n`` sources each
        (keys (B*N, L, d) -> (B, N*L, d), kp (B*N, 1, K, 2) -> (B, N, K, 2))."""
        return SourceFeatures(
            *(getattr(self, f).reshape(batch, -1, *getattr(self, f).shape[2:]) for f in _FIELDS)
        )

    def expand(self, batch: int) -> SourceFeatures:
        """Broadcast a batch-1 set over ``batch`` frames (no copy)."""
        if self.keys.shape[0] == batch:
            return self
        return SourceFeatures(
            *(getattr(self, f).expand(batch, *getattr(self, f).shape[1:]) for f in _FIELDS)
        )


_FIELDS = ("keys", "values", "pixels", "kp", "strength")


def fourier_frequencies(dim: int, sigma: float) -> torch.Tensor:
    """(dim/2, 2) random frequencies for :class:`PositionEncoding` (Rahimi & Recht 2007)."""
    gen = torch.Generator().manual_seed(1234)
    return torch.randn(dim // 2, 2, generator=gen) / sigma


class PositionEncoding(nn.Module):
    """Learnable position embeddings (section 3) as a function of continuous positions.

    pe(z) = a [cos(F z), sin(F z)] with learnable frequencies F (dim/2, 2) and gain a. Random
    Fourier features make pe(z) . pe(z') an RBF kernel: about ``peak_logit * sqrt(dim) *
    exp(-|z - z'|^2 / (2 sigma^2))``, so after the attention's 1/sqrt(dim) scaling a query
    favours keys near its own position with logits up to ``peak_logit``. Being a function, it
    can be evaluated at moved positions (see ``ImplicitWarpingModel.source_positions``).
    """

    def __init__(self, dim: int, sigma: float, peak_logit: float) -> None:
        super().__init__()
        self.freqs = nn.Parameter(fourier_frequencies(dim, sigma))
        self.log_gain = nn.Parameter(
            torch.tensor(0.5 * math.log(peak_logit * math.sqrt(dim) / (dim // 2)))
        )

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """coords (..., 2) in [-1, 1] -> (..., dim)"""
        phase = coords.float() @ self.freqs.T  # (..., dim/2)
        return self.log_gain.exp() * torch.cat([phase.cos(), phase.sin()], -1)


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


# The layers of each refinement whose start is a no-op (state-dict key prefixes), by the config
# name earlier versions switched it with (codec.config.ZERO_START_REFINEMENTS): weights from
# before it lack these tensors and load with them at their start.
REFINEMENT_LAYERS = {
    "source_warp": ("warp_log_sharpness", "decoder.blend."),
    "prior_warp": ("decoder.prior_blend.",),
}


class ConvDecoder(nn.Module):
    """The paper's decoder (supplementary C: residual blocks, then 2 upsampling blocks to the
    output image), and two masks after it (not in the paper), like the occlusion masks of FOMM
    (section 3.3) and TPSMM:

    - ``blend`` sees the decoder's features and output beside the source warped by the
      attention's implicit flow (and the attention mass that flow rests on) and predicts a mask
      alpha in [0, 1] that blends that warped source into the output;
    - ``prior_blend`` then does the same with the source warped by the keypoints' own motion
      (and that motion's size), so a frame that shows the face where the keyframe shows it
      gets the keyframe's own pixels back.

    Each mask's last convolution starts at zero (alpha = 0: no change), so weights trained
    without a mask render unchanged with it (:data:`REFINEMENT_LAYERS`). (Named apart from
    ``receiver.decoder.Decoder``, which decodes streams; the attribute and its weights keep
    the paper's name, ``decoder``.)
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c1, c2 = cfg.decoder_channels
        self.res = nn.Sequential(*[ResBlock(cfg.value_dim) for _ in range(cfg.decoder_res_blocks)])
        self.up = nn.Sequential(UpBlock(cfg.value_dim, c1), UpBlock(c1, c2))
        self.out = nn.Conv2d(c2, 3, 7, padding=3)
        # input of each mask: features (c2), output so far (3), warped source (3), and the
        # attention mass (blend) or the motion's size (prior_blend) (1)
        self.blend = _mask_stage(c2 + 3 + 4, c2)
        self.prior_blend = _mask_stage(c2 + 3 + 4, c2)

    def forward(self, x: torch.Tensor, warped: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """x (B, d', S, S); warped (B, 4, H, W) the source warped by the attention and its mass
        (:meth:`ImplicitWarpingModel.warp_sources`), prior (B, 4, H, W) the source warped by
        the keypoints' motion and that motion's size (:meth:`ImplicitWarpingModel.prior_warp`),
        both in [-1, 1] -> image (B, 3, H, W) in [0, 1]"""
        h = self.up(self.res(x))  # (B, c2, H, W)
        image = torch.sigmoid(self.out(h))  # (B, 3, H, W)
        warped = warped.to(h.dtype)
        alpha = self.blend(torch.cat([h, image * 2 - 1, warped], 1)).clamp(0, 1)  # (B, 1, H, W)
        image = image + alpha * ((warped[:, :3] + 1) / 2 - image)
        prior = prior.to(h.dtype)
        beta = self.prior_blend(torch.cat([h, image * 2 - 1, prior], 1)).clamp(0, 1)
        return image + beta * ((prior[:, :3] + 1) / 2 - image)  # (B, 3, H, W)


def _mask_stage(channels: int, hidden: int) -> nn.Sequential:
    """Two 3x3 conv-norm-ReLU layers, then a 3x3 conv to one channel that starts at zero."""
    stage = nn.Sequential(
        ConvNormAct(channels, hidden, kernel=3),
        ConvNormAct(hidden, hidden, kernel=3),
        nn.Conv2d(hidden, 1, 3, padding=1),
    )
    nn.init.zeros_(stage[-1].weight)
    nn.init.zeros_(stage[-1].bias)
    return stage


class ImplicitWarpingModel(nn.Module):
    def __init__(self, cfg: ModelConfig, attention_backend: str = "auto") -> None:
        super().__init__()
        self.cfg = cfg
        self.attention_backend = attention_backend
        # Set by codec.weights.load_model: id of the weights file (goes into the bitstream).
        self.weights_id: bytes | None = None
        self.weights_path = None
        d, dv, k = cfg.attn_dim, cfg.value_dim, cfg.num_kp
        self.kp_detector = KeypointDetector(cfg)
        unet = (cfg.unet_block_expansion, cfg.unet_num_blocks, cfg.unet_max_features)
        self.query_unet = UNet(k, *unet)
        self.query_proj = nn.Conv2d(self.query_unet.out_channels, d, 1)
        self.key_unet = UNet(3 + k, *unet)
        self.key_proj = nn.Conv2d(self.key_unet.out_channels, d, 1)
        self.value_encoder = ValueEncoder(dv)
        self.pos = PositionEncoding(d, cfg.pos_init_sigma, cfg.pos_init_logit)
        self.register_buffer(
            "grid",
            coordinate_grid(cfg.feature_size, cfg.feature_size).view(-1, 2),
            persistent=False,
        )
        # Image-independent key/value pairs for content missing from every source (section 3).
        self.extra_keys = nn.Parameter(torch.randn(cfg.num_extra_kv, d) * d**-0.5)
        self.extra_values = nn.Parameter(torch.randn(cfg.num_extra_kv, dv) * 0.02)
        self.extra_pixels = nn.Parameter(torch.zeros(cfg.num_extra_kv, 3))
        # log of the warp attention's sharpness (warp_sources)
        self.warp_log_sharpness = nn.Parameter(torch.tensor(math.log(4.0)))
        # Residual branch (Fig. 3, purple): MLP([A K, A P]) added to A V.
        self.residual_mlp = nn.Sequential(
            nn.Linear(d + 3, cfg.residual_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.residual_hidden, dv),
        )
        self.decoder = ConvDecoder(cfg)

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

    def _kp_representation(self, kp: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        """(B, K, 2), (B, K) -> (B, K, S, S): Gaussians times strength (section 3)."""
        return keypoint_maps(kp, strength, self.cfg.feature_size, self.cfg.kp_variance)

    def encode_source(
        self, image: torch.Tensor, kp: torch.Tensor, strength: torch.Tensor
    ) -> SourceFeatures:
        """Source images (B, 3, H, W) and their keypoints (B, K, 2), (B, K) -> features of one
        source each (B, 1 source); computed once per keyframe."""
        small = self._downsample(image)  # (B, 3, S, S)
        maps = self._kp_representation(kp, strength).to(small.dtype)  # (B, K, S, S)
        keys = _to_tokens(self.key_proj(self.key_unet(torch.cat([small, maps], 1))))  # (B, L, d)
        values = _to_tokens(self.value_encoder(image))  # (B, L, d')
        pixels = _to_tokens(small * 2 - 1)  # (B, L, 3) in [-1, 1]
        # the full-resolution patch of each token, for the source warps
        patches = F.pixel_unshuffle(image * 2 - 1, self.cfg.feature_stride)  # (B, 3*f*f, S, S)
        pixels = torch.cat([pixels, _to_tokens(patches).to(pixels.dtype)], -1)  # (B, L, 3+P)
        return SourceFeatures(keys, values, pixels, kp[:, None], strength[:, None])

    def queries(self, kp: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        """Driving keypoints (B, K, 2), (B, K) -> queries (B, L, d) with position embeddings."""
        maps = self._kp_representation(kp, strength)  # (B, K, S, S)
        q = _to_tokens(self.query_proj(self.query_unet(maps.to(self.query_proj.weight.dtype))))
        return q + self.pos(self.grid).to(q.dtype)

    def source_positions(
        self, kp_s: torch.Tensor, s_s: torch.Tensor, kp_d: torch.Tensor, s_d: torch.Tensor
    ) -> torch.Tensor:
        """Where each source token is expected in the driving frame: (B, N, L, 2).

        A zeroth-order motion prior (Monkey-Net; FOMM section 3 with J = 1): a source position
        moves by the displacement kp_d - kp_s of nearby keypoints, Gaussian-weighted (width
        ``motion_sigma``) and by both strengths, against a still background term. The keys'
        position embeddings are taken at these positions, so attention starts out as a
        keypoint-driven warp that the learned keys and queries refine; the reconstruction
        loss reaches the keypoints through it. Not in the paper: see docs/model.md.

        kp_s (B, N, K, 2), s_s (B, N, K), kp_d (B, K, 2), s_d (B, K)
        """
        grid = self.grid[None, None, :, None, :]  # (1, 1, L, 1, 2)
        kp_s, s_s, kp_d, s_d = kp_s.float(), s_s.float(), kp_d.float(), s_d.float()
        d2 = (grid - kp_s[:, :, None]).pow(2).sum(-1)  # (B, N, L, K)
        w = torch.exp(-d2 / (2 * self.cfg.motion_sigma**2)) * (s_s[:, :, None] * s_d[:, None, None])
        shift = kp_d[:, None, None] - kp_s[:, :, None]  # (B, N, 1, K, 2)
        background = math.exp(-(self.cfg.motion_background**2) / 2)
        moved = (w[..., None] * shift).sum(3) / (w.sum(3, keepdim=True) + background)
        return grid[:, :, :, 0] + moved  # (B, N, L, 2)

    def render(
        self,
        src: SourceFeatures,
        kp: torch.Tensor,
        strength: torch.Tensor,
        key_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Rebuild driving frames from cached source features.

        src: features of N sources (batch B or 1); kp (B, K, 2); strength (B, K);
        key_bias (B, N*L) of 0/-inf (dropped source keys) -> image (B, 3, H, W) in [0, 1]
        """
        return self.render_with_warp(src, kp, strength, key_bias)[0]

    def render_with_warp(
        self,
        src: SourceFeatures,
        kp: torch.Tensor,
        strength: torch.Tensor,
        key_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`render`, and beside the image the sources warped by the attention's implicit
        flow and their mass, (B, 4, H, W) in [-1, 1] (:meth:`warp_sources`; training scores
        the warp alone too)."""
        b = kp.shape[0]
        src = src.expand(b)
        q = self.queries(kp, strength)  # (B, L, d)
        pos = self.pos(self.source_positions(src.kp, src.strength, kp, strength))  # (B, N, L, d)
        keys = src.keys + pos.flatten(1, 2).to(src.keys.dtype)  # (B, N*L, d)

        def with_extra(x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
            return torch.cat([x.to(q.dtype), extra.to(q.dtype).expand(b, -1, -1)], 1)

        keys = with_extra(keys, self.extra_keys)  # (B, N*L + E, d)
        values = with_extra(src.values, self.extra_values)  # (B, N*L + E, d')
        # the pixels at S x S only: the patches reach the output through warp_sources
        pixels = with_extra(src.pixels[..., :3], self.extra_pixels)  # (B, N*L + E, 3)
        if key_bias is not None:
            key_bias = torch.cat([key_bias, key_bias.new_zeros(b, self.cfg.num_extra_kv)], 1)
        out_v, out_k, out_p = kernels.warp_attention(
            q, keys, values, pixels, key_bias=key_bias, backend=self.attention_backend
        )  # (B, L, d'), (B, L, d), (B, L, 3)
        warped = out_v + self.residual_mlp(torch.cat([out_k, out_p], -1))  # (B, L, d')
        s = self.cfg.feature_size
        warped = warped.transpose(1, 2).reshape(b, -1, s, s)  # (B, d', S, S)
        flowed = self.warp_sources(src, q, keys, key_bias)  # (B, 4, H, W)
        prior = self.prior_warp(src, kp, strength)  # (B, 4, H, W)
        return self.decoder(warped, flowed, prior), flowed

    def prior_flow(
        self, kp_s: torch.Tensor, s_s: torch.Tensor, kp_d: torch.Tensor, s_d: torch.Tensor
    ) -> torch.Tensor:
        """Where each driving token's content sits in each source under the keypoints' own
        motion, as a displacement: (B, N, L, 2), source position = z + displacement.

        The backward form of :meth:`source_positions` (FOMM's zeroth-order motion model,
        section 3, with J = 1): a driving position moves back by the displacement
        kp_d - kp_s of the driving keypoints near it (Gaussian width ``motion_sigma``, weighed
        by both strengths), against a still background term. Exactly zero when the driving
        keypoints are the source's. kp_s (B, N, K, 2), s_s (B, N, K), kp_d (B, K, 2), s_d (B, K)
        """
        kp_s, s_s, kp_d, s_d = kp_s.float(), s_s.float(), kp_d.float(), s_d.float()
        grid = self.grid[None, :, None, :]  # (1, L, 1, 2)
        d2 = (grid - kp_d[:, None]).pow(2).sum(-1)  # (B, L, K)
        w = torch.exp(-d2 / (2 * self.cfg.motion_sigma**2))[:, None] * (
            s_s[:, :, None] * s_d[:, None, None]
        )  # (B, N, L, K)
        shift = kp_s[:, :, None] - kp_d[:, None, None]  # (B, N, 1, K, 2): driving -> source
        background = math.exp(-(self.cfg.motion_background**2) / 2)
        return (w[..., None] * shift).sum(3) / (w.sum(3, keepdim=True) + background)

    def prior_warp(self, src: SourceFeatures, kp: torch.Tensor, strength: torch.Tensor):
        """The source nearest in pose warped by :meth:`prior_flow`.

        src: N sources (batch B); kp (B, K, 2), strength (B, K) of the driving frame.
        -> (B, 4, H, W) in [-1, 1]: the warped source (3) and tanh(10 |displacement|) (1), so
        the mask that blends it in (``ConvDecoder.prior_blend``) sees where the keypoints say the
        face has not moved. Per frame the source whose keypoints are nearest to the driving
        ones (strength-weighted mean distance) is taken, one pick for the whole frame. The
        displacement is upsampled from S x S to H x W as in :meth:`warp_sources`, so zero
        motion gives the source back exactly.
        """
        b, n = kp.shape[0], src.num_sources
        s, f = self.cfg.feature_size, self.cfg.feature_stride
        size = s * f
        w = (src.strength * strength[:, None]).float()  # (B, N, K)
        dist = ((src.kp.float() - kp[:, None].float()).norm(dim=-1) * w).sum(-1) / (
            w.sum(-1) + 1e-6
        )  # (B, N)
        pick = dist.argmin(1)  # (B,)
        rows = torch.arange(b, device=kp.device)
        flow = self.prior_flow(
            src.kp[rows, pick][:, None], src.strength[rows, pick][:, None], kp, strength
        )[:, 0]  # (B, L, 2)
        flow = flow.transpose(1, 2).reshape(b, 2, s, s)
        flow = F.interpolate(flow, size=(size, size), mode="bilinear", align_corners=False)
        patches = src.pixels[..., 3:].float().reshape(b, n, s * s, -1)[rows, pick]  # (B, L, P)
        source = F.pixel_shuffle(patches.transpose(1, 2).reshape(b, -1, s, s), f)  # (B, 3, H, W)
        grid = coordinate_grid(size, size, device=kp.device)[None] + flow.permute(0, 2, 3, 1)
        warped = F.grid_sample(
            source, grid, mode="bilinear", padding_mode="border", align_corners=False
        )  # (B, 3, H, W) in [-1, 1]
        motion = torch.tanh(10 * flow.norm(dim=1, keepdim=True))  # (B, 1, H, W) in [0, 1)
        return torch.cat([warped, motion * 2 - 1], 1)

    def _token_tracks(self, n: int) -> torch.Tensor:
        """(N*L, 3N): source i's tokens carry (x, y, 1) in columns 3i..3i+2, zeros elsewhere;
        averaged by the attention, (x, y) / 1 is where a driving token's content comes from in
        source i, and the 1s the attention mass on source i."""
        one = torch.cat([self.grid, torch.ones_like(self.grid[:, :1])], -1)  # (L, 3)
        return torch.block_diag(*[one] * n)

    def warp_sources(
        self,
        src: SourceFeatures,
        q: torch.Tensor,
        keys: torch.Tensor,
        key_bias: torch.Tensor | None,
    ) -> torch.Tensor:
        """The full-resolution sources warped by the attention's implicit flow.

        src: the N sources (batch B); q (B, L, d), keys (B, N*L + E, d) and key_bias
        (B, N*L + E) or None as in the main attention.
        -> (B, 4, H, W) in [-1, 1]: sum_i m_i * source_i sampled at p_i / m_i, where (p_i, m_i)
        are source i's (x, y) and mass averaged by the attention (:meth:`_token_tracks`; the
        rest of the mass, on the extra keys, adds grey 0), then the total mass * 2 - 1.

        This attention is the main one with its logits multiplied by a learned sharpness (4 at
        the start): averaging positions over a soft attention pulls them together (with the
        shipped weights the warp alone scored 20.3 dB, LPIPS 0.172 from 1 source on val, worse
        than the frozen first frame), a sharper one keeps the flow (4x: 24.3 dB, LPIPS 0.102;
        16x 24.2 / 0.106, argmax 24.1 / 0.113; every 16th val frame). Bilinear sampling keeps
        the source's detail where averaging pixels would blur it. The displacement
        p_i / m_i - z (z: the driving token's own position) is what gets upsampled to full
        resolution, so an identity attention gives the source itself up to the edges;
        dividing by m_i + eps bounds the gradient where a source gets no mass.
        """
        b, n = q.shape[0], src.num_sources
        tracks = self._token_tracks(n).to(q.dtype).expand(b, -1, -1)  # (B, N*L, 3N)
        tracks = torch.cat([tracks, tracks.new_zeros(b, self.cfg.num_extra_kv, 3 * n)], 1)
        sharp = q * self.warp_log_sharpness.exp().to(q.dtype)  # logits times the sharpness
        _, _, tracks = kernels.warp_attention(
            sharp, keys, tracks, tracks, key_bias=key_bias, backend=self.attention_backend
        )  # (B, L, 3N)
        s, f = self.cfg.feature_size, self.cfg.feature_stride
        size = s * f
        patches = src.pixels[..., 3:].float().reshape(b, n, s * s, -1)  # (B, N, L, P)
        patches = patches.permute(0, 1, 3, 2)  # (B, N, P, L)
        sources = F.pixel_shuffle(patches.reshape(b * n, -1, s, s), f)  # (B*N, 3, H, W)
        tracks = tracks.float().reshape(b, s * s, n, 3).permute(0, 2, 3, 1)  # (B, N, 3, L)
        tracks = tracks.reshape(b * n, 3, s, s)
        mass = tracks[:, 2:]  # (B*N, 1, S, S)
        grid = self.grid.T.reshape(1, 2, s, s)  # (1, 2, S, S) token positions
        # Displacement from each driving token's own position, upsampled (identity stays exact).
        moved = torch.cat([(tracks[:, :2] - mass * grid) / (mass + 1e-3), mass], 1)
        moved = F.interpolate(moved, size=(size, size), mode="bilinear", align_corners=False)
        mass = moved[:, 2:]  # (B*N, 1, H, W)
        full_grid = coordinate_grid(size, size, device=moved.device)  # (H, W, 2)
        flow = full_grid + moved[:, :2].permute(0, 2, 3, 1)  # (B*N, H, W, 2)
        warped = F.grid_sample(
            sources, flow, mode="bilinear", padding_mode="border", align_corners=False
        )  # (B*N, 3, H, W)
        warped = (mass * warped).reshape(b, n, 3, size, size).sum(1)  # (B, 3, H, W)
        total = mass.reshape(b, n, size, size).sum(1, keepdim=True)  # (B, 1, H, W)
        return torch.cat([warped, total * 2 - 1], 1)

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
        ``kp_extra`` / ``strength_extra``. The sources warped by the attention's implicit flow
        come back too, as ``warped_source`` (B, 3, H, W) in [0, 1] (mass on the extra keys is
        grey): training scores it against ``driving``.
        """
        b, n = sources.shape[:2]
        images = [sources.flatten(0, 1), driving] + (
            [extra_detect] if extra_detect is not None else []
        )
        kp_all, s_all = self.detect(torch.cat(images, 0))
        kp_src, s_src = kp_all[: b * n], s_all[: b * n]
        kp_drv, s_drv = kp_all[b * n : b * n + b], s_all[b * n : b * n + b]
        src = self.encode_source(sources.flatten(0, 1), kp_src, s_src).regroup(b)  # B sets of N
        prediction, flowed = self.render_with_warp(src, kp_drv, s_drv, key_bias)
        out = {
            "prediction": prediction,
            "kp_driving": kp_drv,
            "strength_driving": s_drv,
            "kp_source": src.kp,  # (B, N, K, 2)
            "strength_source": src.strength,
            "warped_source": (flowed[:, :3] + 1) / 2,  # (B, 3, H, W) in [0, 1]
        }
        if extra_detect is not None:
            out["kp_extra"], out["strength_extra"] = kp_all[b * n + b :], s_all[b * n + b :]
        return out


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
