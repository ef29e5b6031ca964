"""Compare weights files on a crop cache: which checkpoint to ship, and where the model loses.

    python tools/compare_weights.py .cache/crops_val_256 codec/weights/iwcodec-256.safetensors \
        .cache/run3_export/best.safetensors --every 8 --json results/training/run3/candidates_val.json

For every ``--every``-th frame of each clip (frame 0, N, 2N, ...), PSNR, SSIM and LPIPS(alex)
of three reconstructions, frame-weighted over the clips:

- ``1src``: from the clip's first frame (as the validation, eval.reconstruction);
- ``2src``: from the first and middle frames;
- ``self``: each frame from itself as the only source. Nothing has to move, so this is the
  ceiling of the synthesis path (keypoints -> attention -> decoder) on these faces: what the
  model loses even with perfect motion transfer.

Quicker than ``python -m eval.reconstruction`` (no AKD, which needs face-mesh on every output,
and crops read from the cache instead of cut from the video again), so several checkpoints can
be weighed on a CPU. ``--clips`` picks a few clips of a cache, e.g. training clips to measure
the gap between seen and unseen faces.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from codec.data import load_crop_cache
from codec.weights import load_model
from eval.metrics import Scorers, image_metrics_per_frame, mean_finite_psnr
from eval.reconstruction import reconstruct_clip, source_indices

RUNS = ("1src", "2src", "self")
METRICS = ("psnr", "ssim", "lpips")


def self_reconstruction(model, frames: np.ndarray, device: torch.device) -> np.ndarray:
    """(T, S, S, 3) uint8 -> each frame rebuilt from itself as the single source, uint8."""
    return np.concatenate(
        [
            reconstruct_clip(model, frames, [t], device, targets=np.array([t]))
            for t in range(len(frames))
        ]
    )


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
    total = sum(c["frames"] for c in clips.values())
    return {
        run: {k: sum(c[run][k] * c["frames"] for c in clips.values()) / total for k in METRICS}
        for run in RUNS
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("cache", type=Path, help="crop cache (python -m sender.cache)")
    p.add_argument("weights", nargs="+", type=Path, help="weights files to compare")
    p.add_argument("--every", type=int, default=8, help="score every N-th frame")
    p.add_argument("--clips", default="", help="comma-separated clip names (default: all)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.every < 1:
        p.error("--every must be at least 1")
    clips = load_crop_cache(args.cache)
    if args.clips:
        wanted = args.clips.split(",")
        missing = sorted(set(wanted) - {c.name for c in clips})
        if missing:
            p.error(f"not in {args.cache}: {', '.join(missing)}")
        clips = [c for c in clips if c.name in wanted]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scorers = Scorers.load(device, metrics=("lpips",))  # the table reports LPIPS(alex)
    result = {"cache": str(args.cache), "every": args.every, "device": device.type, "weights": {}}
    print(f"| weights | {' | '.join(f'{r} PSNR / SSIM / LPIPS' for r in RUNS)} |")
    print("|---|" + "---|" * len(RUNS))
    for path in args.weights:
        model = load_model(path, device=device)
        per_clip = {
            c.name: score_clip(model, np.asarray(c.frames), args.every, device, scorers)
            for c in clips
        }
        mean = weighted_mean(per_clip)
        result["weights"][str(path)] = {
            "id": model.weights_id.hex(),
            "mean": mean,
            "clips": per_clip,
        }
        cells = [
            f"{mean[r]['psnr']:.2f} / {mean[r]['ssim']:.3f} / {mean[r]['lpips']:.4f}" for r in RUNS
        ]
        print(f"| {path} | {' | '.join(cells)} |", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
