"""Training data: the sender's face-crop cache, held on the GPU, sampled into source/driving sets.

The cache (written by ``python -m sender.cache``) holds per clip ``<name>.npy``, uint8
(T, S, S, 3) face crops, and optionally ``<name>.landmarks.npy``, float16 (T, 478, 2)
face-mesh landmarks in [-1, 1] (NaN where no face was found). This module reads only numpy
files, so ``codec/`` never imports ``sender/``.

Every frame of the training set fits in GPU memory (20k crops of 256x256 are 4 GB), so a
batch is a gather plus one ``grid_sample``: no loader processes, no host round trips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from iwcodec.errors import InputError


@dataclass
class Clip:
    name: str
    frames: np.ndarray  # (T, S, S, 3) uint8
    landmarks: np.ndarray | None  # (T, 478, 2) float16 or None


def load_crop_cache(directory: str | Path, mmap: bool = True) -> list[Clip]:
    """All clips of a crop cache, sorted by name."""
    directory = Path(directory)
    paths = sorted(p for p in directory.glob("*.npy") if not p.name.endswith(".landmarks.npy"))
    if not paths:
        raise InputError(
            f"no crop cache in {directory} (expected <clip>.npy files; write one with python -m sender.cache)"
        )
    clips = []
    for p in paths:
        frames = np.load(p, mmap_mode="r" if mmap else None)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise InputError(f"{p} is not a (T, S, S, 3) uint8 crop array")
        lm_path = p.with_name(p.stem + ".landmarks.npy")
        landmarks = np.load(lm_path, mmap_mode="r" if mmap else None) if lm_path.exists() else None
        keep = _frames_with_face(p, len(frames), landmarks)
        if keep is not None:
            if not keep.any():
                continue
            frames = frames[keep]
            landmarks = landmarks[keep] if landmarks is not None else None
        clips.append(Clip(p.stem, frames, landmarks))
    return clips


def _frames_with_face(path: Path, n: int, landmarks: np.ndarray | None) -> np.ndarray | None:
    """Mask of the frames where the cropper saw a face (``<clip>.track.npz`` "detected") and the
    face mesh was found; None when the cache holds neither. Title cards, fades to black and
    cuts to graphics are no training pairs."""
    keep = None
    track = path.with_name(path.stem + ".track.npz")
    if track.exists():
        with np.load(track) as t:
            if "detected" in t and len(t["detected"]) == n:
                keep = np.asarray(t["detected"], bool)
    if landmarks is not None:
        mesh = np.isfinite(np.asarray(landmarks[:, 0, 0], np.float32))
        keep = mesh if keep is None else keep & mesh
    return keep


def _rand(gen: torch.Generator, *shape, device) -> torch.Tensor:
    return torch.rand(*shape, generator=gen, device=device)


def _affine(scale, angle, tx, ty, flip) -> torch.Tensor:
    """Output->input sampling matrices (B, 2, 3) for F.affine_grid from per-sample params (B,)."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    sx = scale * torch.where(flip, -1.0, 1.0)
    row0 = torch.stack([cos * sx, -sin * scale, tx], -1)
    row1 = torch.stack([sin * sx, cos * scale, ty], -1)
    return torch.stack([row0, row1], 1)


def _compose(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Affine (B, 2, 3) of x -> a(b(x))."""
    pad = torch.tensor([0.0, 0.0, 1.0], device=a.device).expand(a.shape[0], 1, 3)
    return (torch.cat([a, pad], 1) @ torch.cat([b, pad], 1))[:, :2]


@dataclass(frozen=True)
class IdentityAugment:
    """Per-example changes of who the person seems to be (all frames of an example alike).

    The model overfits the 67 training people after 1-2k steps of any continuation
    (docs/model.md, run3-run6); these make new-looking people out of them:

    - ``aspect``: the log of a width/height stretch, drawn in [-aspect, aspect] (one axis
      magnified by e^|u|): faces and heads wider or narrower than any in the set;
    - ``hue``: a rotation of the colours about the grey axis, by an angle drawn in
      [-hue, hue] radians (pi: any hue), so skin, hair and background take other colours;
    - ``grey``: the probability of a grey (luma only) example;
    - ``dark``: the probability of a dim example, as a room lit by a screen or a camera at
      its limit shows a face (val-12's worst clip, polimi dfdc, is one): every frame of the
      example becomes ``gain * x ** gamma``, gain in [0.3, 0.8] and gamma in [1, 1.6]; the
      model must keep such a face as dim as it is (no exposure drift) and still follow it.
    """

    aspect: float = 0.0
    hue: float = 0.0
    grey: float = 0.0
    dark: float = 0.0

    @property
    def active(self) -> bool:
        return self.aspect > 0 or self.hue > 0 or self.grey > 0 or self.dark > 0

    def recolour(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """x (B, F, 3, S, S) in [0, 1] -> the same, hue-rotated, greyed and/or dimmed per
        example."""
        b, dev = x.shape[0], x.device
        if self.hue > 0:
            angle = (_rand(gen, b, device=dev) * 2 - 1) * self.hue  # (B,)
            x = torch.einsum("bij,bfjhw->bfihw", hue_rotation(angle), x)
        if self.grey > 0:
            grey = (_rand(gen, b, device=dev) < self.grey).view(b, 1, 1, 1, 1)
            luma = (x * _LUMA.to(dev).view(1, 1, 3, 1, 1)).sum(2, keepdim=True)
            x = torch.where(grey, luma.expand_as(x), x)
        if self.dark > 0:
            dim = (_rand(gen, b, device=dev) < self.dark).view(b, 1, 1, 1, 1)
            gain = 0.3 + 0.5 * _rand(gen, b, device=dev).view(b, 1, 1, 1, 1)
            gamma = 1 + 0.6 * _rand(gen, b, device=dev).view(b, 1, 1, 1, 1)
            x = torch.where(dim, gain * x.clamp(0, 1) ** gamma, x)
        return x.clamp_(0, 1)


_LUMA = torch.tensor([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class CodecPairs:
    """Examples a codec meets and an animation model never does (off by default).

    The per-frame jitter of :class:`FrameBank` makes "copy the source where it is" always
    wrong, which teaches a model to follow the keypoints; but a codec's receiver holds the
    keyframe, and a frame where the face sits where the keyframe shows it should come out as
    the keyframe's own pixels. So, per example:

    - ``identity``: the probability that the driving frame *is* source 0 (same frame, same
      framing): the ceiling, "give the keyframe back";
    - ``near``: the probability that it is a frame up to ``near_frames`` steps away from
      source 0 in the clip, under source 0's framing (the crop is held still while the head
      only wobbles, sender/crop.py): small motions;
    - the rest are the usual pairs (any frame of the clip, independent framing).
    """

    identity: float = 0.0
    near: float = 0.0
    near_frames: int = 6

    def __post_init__(self) -> None:
        if not (0 <= self.identity and 0 <= self.near and self.identity + self.near <= 1):
            raise ValueError("codec pair probabilities must be >= 0 and sum to at most 1")
        if self.near_frames < 1:
            raise ValueError("near_frames must be at least 1")

    @property
    def active(self) -> bool:
        return self.identity > 0 or self.near > 0


def hue_rotation(angle: torch.Tensor) -> torch.Tensor:
    """(B,) radians -> (B, 3, 3) rotations of RGB about the grey axis (1, 1, 1)/sqrt(3)
    (Rodrigues' formula): greys stay grey, saturation and the channel mean are kept."""
    n = torch.full((3,), 3**-0.5, device=angle.device)
    cross = (
        torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]], device=angle.device)
        * 3**-0.5
    )  # [n]_x
    outer = n[:, None] * n[None, :]
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
    return cos * torch.eye(3, device=angle.device) + sin * cross + (1 - cos) * outer


class FrameBank:
    """All crops on one device plus the sampling of training examples.

    ``sample`` returns sources (B, N, 3, S, S) and driving (B, 3, S, S) in [0, 1], all frames of
    one example from one clip, augmented:
      * per example (same for all its frames): horizontal flip, colour jitter, a small global
        zoom/shift (other crop framings);
      * per frame: an independent small rotation/zoom/shift, so that "copy the source at the
        same position" is never the right answer and the network must follow the keypoints;
      * optionally, per example, changes that make one of the 67 training people look like
        someone else (off by default, :class:`IdentityAugment`): a squeeze or stretch of the
        whole frame (a wider or narrower face), a hue rotation, a grey frame.
    """

    def __init__(
        self,
        clips: list[Clip],
        device: torch.device,
        independent_affine: float = 0.08,
        identity: IdentityAugment | None = None,
        pairs: CodecPairs | None = None,
    ) -> None:
        if not clips:
            raise InputError("empty crop cache")
        self.device = device
        self.size = clips[0].frames.shape[1]
        self.frames = torch.cat([torch.from_numpy(np.array(c.frames)) for c in clips]).to(device)
        lengths = torch.tensor([len(c.frames) for c in clips])
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]]).to(
            device
        )
        self.lengths = lengths.to(device)
        # Clips are drawn with weight sqrt(length): long clips count more, not overwhelmingly.
        self.clip_weights = lengths.float().sqrt().to(device)
        if all(c.landmarks is not None for c in clips):
            lm = torch.cat(
                [torch.from_numpy(np.asarray(c.landmarks, dtype=np.float32)) for c in clips]
            )
            self.landmarks = lm.to(device)  # (N, 478, 2)
        else:
            self.landmarks = None
        self.independent_affine = independent_affine
        self.identity = identity if identity is not None and identity.active else None
        self.pairs = pairs if pairs is not None and pairs.active else None

    def __len__(self) -> int:
        return self.frames.shape[0]

    def sample(
        self, batch: int, n_src: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """-> sources (B, N, 3, S, S), driving (B, 3, S, S), landmarks (B, N, 478, 2) or None.

        Landmarks are those of the sources, moved by the same augmentation as their frames."""
        dev, nf = self.device, n_src + 1
        clip = torch.multinomial(self.clip_weights, batch, replacement=True, generator=gen)
        length = self.lengths[clip]
        idx = (
            (_rand(gen, batch, nf, device=dev) * length[:, None])
            .long()
            .clamp_max(length[:, None] - 1)
        )
        # Codec pairs (CodecPairs): the driving frame is source 0 itself, or a frame a few
        # steps from it, under source 0's framing.
        same, near = self._codec_pairs(batch, gen)  # (B,) bool each
        if same is not None:
            step = (_rand(gen, batch, device=dev) * 2 - 1) * self.pairs.near_frames
            step = torch.where(step < 0, step.floor(), step.ceil()).long()  # +-1..near_frames
            close = torch.minimum((idx[:, 0] + step).clamp_min(0), length - 1)
            idx[:, -1] = torch.where(same, idx[:, 0], torch.where(near, close, idx[:, -1]))
        idx = idx + self.offsets[clip][:, None]  # (B, F) global frame indices
        x = self.frames[idx.flatten()].permute(0, 3, 1, 2).float().div_(255)  # (B*F, 3, S, S)

        # Per-example global transform, repeated over its frames; then per-frame jitter.
        def per_example(t):
            return t.repeat_interleave(nf, dim=0)

        zoom = per_example(1 + (_rand(gen, batch, device=dev) - 0.5) * 0.2)
        shift = per_example((_rand(gen, batch, 2, device=dev) - 0.5) * 0.1)
        flip = per_example(_rand(gen, batch, device=dev) < 0.5)
        g = _affine(zoom, torch.zeros_like(zoom), shift[:, 0], shift[:, 1], flip)
        if self.identity is not None and self.identity.aspect > 0:
            # u in [-a, a]: u < 0 samples a narrower band of x (the face drawn wider), u > 0 a
            # narrower band of y (drawn taller); never past the frame's edges
            u = per_example((_rand(gen, batch, device=dev) * 2 - 1) * self.identity.aspect)
            scale = torch.stack([u.clamp(max=0).exp(), (-u).clamp(max=0).exp()], -1)  # (B*F, 2)
            g = g * scale[:, :, None]  # scales the rows of the 2x3: input x and y
        a = self.independent_affine
        n = batch * nf
        local = _affine(
            1 + (_rand(gen, n, device=dev) - 0.5) * 2 * a,
            (_rand(gen, n, device=dev) - 0.5) * 2 * a,  # radians: +-4.6 degrees at a=0.08
            (_rand(gen, n, device=dev) - 0.5) * 2 * a,
            (_rand(gen, n, device=dev) - 0.5) * 2 * a,
            torch.zeros(n, dtype=torch.bool, device=dev),
        )
        if same is not None:  # the driving frame keeps source 0's framing
            local = local.view(batch, nf, 2, 3)
            shared = (same | near).view(batch, 1, 1)
            local[:, -1] = torch.where(shared, local[:, 0], local[:, -1])
            local = local.view(n, 2, 3)
        theta = _compose(g, local)  # (B*F, 2, 3) output -> input coordinates
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        x = self._colour_jitter(x.view(batch, nf, 3, self.size, self.size), gen)
        if self.identity is not None:
            x = self.identity.recolour(x, gen)

        landmarks = None
        if self.landmarks is not None:
            lm = self.landmarks[idx.flatten()]  # (B*F, P, 2) input coordinates
            pad = torch.tensor([0.0, 0.0, 1.0], device=dev).expand(n, 1, 3)
            inv = torch.linalg.inv(torch.cat([theta, pad], 1))[:, :2]  # input -> output
            lm = lm @ inv[:, :, :2].transpose(1, 2) + inv[:, None, :, 2]
            landmarks = lm.view(batch, nf, -1, 2)[:, :n_src]
        return x[:, :n_src].contiguous(), x[:, n_src].contiguous(), landmarks

    def _codec_pairs(
        self, batch: int, gen: torch.Generator
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Which examples are identity pairs and which near pairs: (B,) bool each, or None."""
        if self.pairs is None:
            return None, None
        u = _rand(gen, batch, device=self.device)
        same = u < self.pairs.identity
        near = (u >= self.pairs.identity) & (u < self.pairs.identity + self.pairs.near)
        return same, near

    @staticmethod
    def _colour_jitter(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """x (B, F, 3, S, S): brightness, contrast and saturation, the same for all frames of
        an example (a camera's colour is consistent within a call)."""
        b, dev = x.shape[0], x.device

        def factor(spread):
            return (1 + (_rand(gen, b, device=dev) - 0.5) * 2 * spread).view(b, 1, 1, 1, 1)

        x = x * factor(0.15)
        mean = x.mean(dim=(2, 3, 4), keepdim=True)
        x = (x - mean) * factor(0.15) + mean
        grey = x.mean(dim=2, keepdim=True)
        x = (x - grey) * factor(0.2) + grey
        return x.clamp_(0, 1)


def semantic_dropout_bias(
    batch: int,
    n_src: int,
    size: int,
    prob: float,
    gen: torch.Generator,
    device: torch.device,
    landmarks: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Key bias (B, N*S*S) of 0 / -inf dropping 1-3 face regions of each source.

    Section 3: "randomly dropping out keys and values corresponding to different facial
    regions" so the learned extra key/values learn to fill gaps. A region is a rectangle on
    the S x S key grid centred on a random face-mesh landmark (lips, eyes, brows, ... are where
    landmarks are dense) or, without landmarks, at a random place.
    """
    if prob <= 0:
        return None
    drop = torch.zeros(batch, n_src, size, size, dtype=torch.bool, device=device)
    coords = (torch.arange(size, device=device) * 2 + 1) / size - 1  # pixel centres in [-1, 1]
    active = _rand(gen, batch, device=device) < prob
    for _ in range(3):
        if landmarks is not None:
            pick = (_rand(gen, batch, n_src, device=device) * landmarks.shape[2]).long()
            centre = torch.gather(landmarks, 2, pick[..., None, None].expand(-1, -1, 1, 2))[:, :, 0]
            centre = torch.nan_to_num(centre, nan=0.0).clamp(-1, 1)  # (B, N, 2)
        else:
            centre = _rand(gen, batch, n_src, 2, device=device) * 1.6 - 0.8
        half = 0.08 + _rand(gen, batch, n_src, 2, device=device) * 0.2  # 5..18 cells of 64
        inside_x = (coords.view(1, 1, 1, -1) - centre[..., 0:1, None]).abs() <= half[..., 0:1, None]
        inside_y = (coords.view(1, 1, -1, 1) - centre[..., 1:2, None]).abs() <= half[..., 1:2, None]
        keep_region = _rand(gen, batch, n_src, 1, 1, device=device) < 0.7
        drop |= inside_x & inside_y & keep_region
    drop &= active.view(batch, 1, 1, 1)
    bias = torch.zeros(batch, n_src * size * size, device=device)
    return bias.masked_fill_(drop.view(batch, -1), -math.inf)
