"""Weigh weights files on a crop cache: which checkpoint to ship, and where the model loses
(``iwcodec weights compare``).

For every ``every``-th frame of each clip (frame 0, N, 2N, ...), PSNR, SSIM and LPIPS(alex)
of three reconstructions, frame-weighted over the clips:

- ``1src``: from the clip's first frame (as the validation, eval.reconstruction);
- ``2src``: from the first and middle frames;
- ``self``: each frame from itself as the only source. Nothing has to move, so this is the
  ceiling of the synthesis path (keypoints -> attention -> decoder) on these faces: what the
  model loses even with perfect motion transfer;
- with ``steps``, ``1src-<name>`` for each keypoint quantization of ``CANDIDATE_STEPS``: as
  ``1src``, with the keypoints the receiver decodes (``bitstream.requantize``), so the
  difference to ``1src`` is what the quantization costs these weights (issue #2: the default
  must lose at most 0.1 dB; weights that follow the keypoints more closely lose more).

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

from bitstream import CANDIDATE_STEPS, requantize
from codec import inference
from codec.data import Clip, load_crop_cache
from codec.weights import load_model
from eval.metrics import Scorers, image_metrics_per_frame, mean_finite_psnr
from iwcodec.errors import InputError

RUNS = ("1src", "2src", "self")
STEP_RUNS = tuple(f"1src-{name}" for name in CANDIDATE_STEPS)
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
    return inference.to_uint8(inference.self_reconstruct(model, frames))


@torch.inference_mode()
def quantized_reconstruction(
    model, frames: np.ndarray, targets: np.ndarray, device: torch.device, steps: str, chunk: int = 8
) -> np.ndarray:
    """The frames at ``targets`` rebuilt from the clip's first frame as the receiver rebuilds
    them: their keypoints quantized at ``CANDIDATE_STEPS[steps]`` and dequantized (the
    source's own keypoints are detected on the keyframe, unquantized).
    -> (len(targets), S, S, 3) uint8"""
    xy_steps, s_steps = CANDIDATE_STEPS[steps]
    src = inference.to_images(frames[:1], device)  # (1, 3, S, S)
    features = model.encode_source(src, *model.detect(src))
    out = []
    for start in range(0, len(targets), chunk):
        part = inference.to_images(frames[targets[start : start + chunk]], device)
        kp, strength = model.detect(part)
        raw = torch.cat([kp, strength[..., None]], -1).float().cpu().numpy()  # (B, K, 3)
        q = torch.from_numpy(requantize(raw, xy_steps, s_steps)).float().to(device)
        out.append(inference.to_uint8(model.render(features, q[..., :2], q[..., 2]).clamp(0, 1)))
    return np.concatenate(out)


def reconstruction(
    model, frames: np.ndarray, scored: np.ndarray, run: str, device: torch.device
) -> np.ndarray:
    """The frames at ``scored`` as run ``run`` (of RUNS or STEP_RUNS) rebuilds them, uint8."""
    if run == "self":
        return self_reconstruction(model, frames[scored], device)
    if run in STEP_RUNS:
        return quantized_reconstruction(model, frames, scored, device, run.split("-", 1)[1])
    rebuilt = inference.reconstruct(model, frames, int(run[0]), scored, chunk=8)
    return inference.to_uint8(rebuilt.images)


def score_clip(
    model,
    frames: np.ndarray,
    every: int,
    device: torch.device,
    scorers: Scorers,
    runs: Sequence[str] = RUNS,
) -> dict:
    """{run: {metric: mean over the scored frames}, "frames": n} for one clip."""
    scored = np.arange(0, len(frames), every)
    ref = frames[scored]
    out = {"frames": len(scored)}
    for run in runs:
        pred = reconstruction(model, frames, scored, run, device)
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
    runs = [r for r in next(iter(clips.values())) if r != "frames"]
    return {
        run: {k: sum(c[run][k] * c["frames"] for c in clips.values()) / total for k in METRICS}
        for run in runs
    }


def table_header(runs: Sequence[str] = RUNS) -> list[str]:
    """The two header lines of the markdown table :func:`table_row` continues."""
    return [
        f"| weights | {' | '.join(f'{r} PSNR / SSIM / LPIPS' for r in runs)} |",
        "|---|" + "---|" * len(runs),
    ]


def table_row(name: str, mean: dict) -> str:
    cells = [f"{m['psnr']:.2f} / {m['ssim']:.3f} / {m['lpips']:.4f}" for m in mean.values()]
    return f"| {name} | {' | '.join(cells)} |"


def compare_weights(
    cache: str | Path,
    weights: Sequence[str | Path],
    device: torch.device,
    every: int = 8,
    clip_names: Sequence[str] = (),
    report: Callable[[str], None] = lambda line: None,
    steps: bool = False,
) -> dict:
    """Score every weights file on the same frames of the cache's clips.

    ``report`` gets the markdown table line by line, one row as each file is done (a long
    comparison shows its first results early); ``steps`` adds the runs of STEP_RUNS. Returns
    {"cache", "every", "device", "weights": {path: {"id", "mean": {run: {metric}},
    "clips": {clip: score_clip(...)}}}}.
    """
    if every < 1:
        raise InputError(f"every must be at least 1, got {every}")
    clips = select_clips(load_crop_cache(cache), clip_names)
    scorers = Scorers.load(device, metrics=("lpips",))  # the table reports LPIPS(alex)
    runs = RUNS + STEP_RUNS if steps else RUNS
    result = {"cache": str(cache), "every": every, "device": device.type, "weights": {}}
    for line in table_header(runs):
        report(line)
    for path in weights:
        model = load_model(path, device=device)
        per_clip = {
            c.name: score_clip(model, np.asarray(c.frames), every, device, scorers, runs)
            for c in clips
        }
        mean = weighted_mean(per_clip)
        result["weights"][str(path)] = {
            "id": model.weights_id.hex(),
            "mean": mean,
            "clips": per_clip,
        }
        report(table_row(str(path), mean))
    return result
