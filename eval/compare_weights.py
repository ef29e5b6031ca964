"""Weigh weights files on a crop cache: which checkpoint to ship, and where the model loses
(``iwcodec weights compare``).

For every ``every``-th frame of each clip (frame 0, N, 2N, ...), PSNR, SSIM and LPIPS(alex)
of three reconstructions, frame-weighted over the clips:

- ``1src``: from the clip's first frame (as the validation, eval.reconstruction);
- ``2src``: from the first and middle frames;
- ``self``: each frame from itself as the only source. Nothing has to move, so this is the
  ceiling of the synthesis path (keypoints -> attention -> decoder) on these faces: what the
  model loses even with perfect motion transfer.

Quicker than ``python -m eval.reconstruction`` (no AKD, which needs face-mesh on every output,
and crops read from the cache instead of cut from the video again), so several checkpoints can
be weighed on a CPU. ``clip_names`` picks a few clips of a cache, e.g. training clips to
measure the gap between seen and unseen faces.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from codec.data import Clip, load_crop_cache
from codec.inference import self_reconstruct
from codec.weights import load_model
from eval.metrics import Scorers, image_metrics_per_frame, mean_finite_psnr
from eval.reconstruction import reconstruct_clip, source_indices
from iwcodec.errors import InputError
from sender.encoder import to_tensor

RUNS = ("1src", "2src", "self")
METRICS = ("psnr", "ssim", "lpips")


def select_clips(clips: list[Clip], names: Sequence[str]) -> list[Clip]:
    """The clips named (all of them when ``names`` is empty); InputError names any missing."""
    if not names:
        return clips
    missing = sorted(set(names) - {c.name for c in clips})
    if missing:
        raise InputError(f"no clip named {', '.join(missing)} in the crop cache")
    return [c for c in clips if c.name in names]


def self_reconstruction(model, frames: np.ndarray, device: torch.device) -> np.ndarray:
    """(T, S, S, 3) uint8 -> each frame rebuilt from itself as the single source, uint8."""
    pred = self_reconstruct(model, to_tensor(frames, device))  # (T, 3, S, S) in [0, 1]
    return (pred * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def score_clip(
    model, frames: np.ndarray, every: int, device: torch.device, scorers: Scorers
) -> dict:
    """{run: {metric: mean over the scored frames}, "frames": n} for one clip."""
    scored = np.arange(0, len(frames), every)
    ref = frames[scored]
    out = {"frames": len(scored)}
    for run in RUNS:
        if run == "self":
            pred = self_reconstruction(model, ref, device)
        else:
            sources = source_indices(len(frames), int(run[0]))
            pred = reconstruct_clip(model, frames, sources, device, targets=scored)
        m = image_metrics_per_frame(ref, pred, device, scorers=scorers)
        out[run] = {
            "psnr": mean_finite_psnr(m["psnr"]),
            "ssim": float(m["ssim"].mean()),
            "lpips": float(m["lpips"].mean()),
        }
    return out


def weighted_mean(clips: dict) -> dict:
    """{run: {metric: mean}} over the clips of :func:`score_clip`, weighted by frames scored."""
    total = sum(c["frames"] for c in clips.values())
    return {
        run: {k: sum(c[run][k] * c["frames"] for c in clips.values()) / total for k in METRICS}
        for run in RUNS
    }


def table_header() -> list[str]:
    """The two header lines of the markdown table :func:`table_row` continues."""
    return [
        f"| weights | {' | '.join(f'{r} PSNR / SSIM / LPIPS' for r in RUNS)} |",
        "|---|" + "---|" * len(RUNS),
    ]


def table_row(name: str, mean: dict) -> str:
    cells = [
        f"{mean[r]['psnr']:.2f} / {mean[r]['ssim']:.3f} / {mean[r]['lpips']:.4f}" for r in RUNS
    ]
    return f"| {name} | {' | '.join(cells)} |"


def compare_weights(
    cache: str | Path,
    weights: Sequence[str | Path],
    device: torch.device,
    every: int = 8,
    clip_names: Sequence[str] = (),
    report: Callable[[str], None] = lambda line: None,
) -> dict:
    """Score every weights file on the same frames of the cache's clips.

    ``report`` gets the markdown table line by line, one row as each file is done (a long
    comparison shows its first results early). Returns {"cache", "every", "device",
    "weights": {path: {"id", "mean": {run: {metric}}, "clips": {clip: score_clip(...)}}}}.
    """
    if every < 1:
        raise InputError(f"every must be at least 1, got {every}")
    clips = select_clips(load_crop_cache(cache), clip_names)
    scorers = Scorers.load(device, metrics=("lpips",))  # the table reports LPIPS(alex)
    result = {"cache": str(cache), "every": every, "device": device.type, "weights": {}}
    for line in table_header():
        report(line)
    for path in weights:
        model = load_model(path, device=device)
        per_clip = {
            c.name: score_clip(model, np.asarray(c.frames), every, device, scorers) for c in clips
        }
        mean = weighted_mean(per_clip)
        result["weights"][str(path)] = {
            "id": model.weights_id.hex(),
            "mean": mean,
            "clips": per_clip,
        }
        report(table_row(str(path), mean))
    return result
