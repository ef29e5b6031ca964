"""Test inputs shared by several test modules: the bundled sample clip, short clips made from
it, and tiny random weights. (pytest puts this folder on ``sys.path``: ``from _media import``.)
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from codec.config import tiny_config
from codec.model import ImplicitWarpingModel
from codec.weights import save_weights

#: The bundled sample (first-order-model 08, 256x256, 35 fps, 150 frames; the same bytes as
#: ``shared/data/train/AliaksandrSiarohin__first-order-model__08.mp4``).
SAMPLE = Path(__file__).resolve().parents[1] / "iwcodec" / "samples" / "sample.mp4"


def tiny_weights(path: Path, seed: int) -> Path:
    """Random weights of the tiny test config, saved to ``path``."""
    torch.manual_seed(seed)
    save_weights(ImplicitWarpingModel(tiny_config()), path)
    return path


def sample_frames(n: int) -> list[np.ndarray]:
    """The first ``n`` frames of the sample, (256, 256, 3) uint8 each."""
    with av.open(str(SAMPLE)) as c:
        out = []
        for f in c.decode(video=0):
            out.append(f.to_ndarray(format="rgb24"))
            if len(out) == n:
                return out
    return out


def write_clip(
    path: Path,
    frames: list[np.ndarray],
    fps: int | Fraction = 25,
    crf: int | None = None,
    pix_fmt: str = "yuv420p",
) -> Path:
    """``frames`` as an H.264 file (ultrafast; x264's default quality unless ``crf``;
    ``pix_fmt="yuv444p"`` keeps full-resolution colour, e.g. for exact crop positions)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pix_fmt
        stream.options = {"preset": "ultrafast", **({"crf": str(crf)} if crf is not None else {})}
        for rgb in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def write_exact_clip(path: Path, frames: list[np.ndarray]) -> Path:
    """``frames`` as near-lossless H.264 (crf 12, full-resolution colour), so crops and face
    detection see the pictures as drawn."""
    return write_clip(path, frames, crf=12, pix_fmt="yuv444p")


def short_clip(path: Path, frames: int, fps: int | Fraction = 25) -> Path:
    """The first ``frames`` pictures of the sample (a real face, so the crop finds one),
    re-encoded at ``fps`` with little loss (crf 14)."""
    return write_clip(path, sample_frames(frames), fps, crf=14)
