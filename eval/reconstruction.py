"""How well the model rebuilds held-out clips from 1, 2 or 3 source frames (issue #3).

This measures the model, not the codec: the sources are the original face crops and the
keypoints are unquantized (the codec's own losses are measured by ``iwcodec eval``). Each clip
is reconstructed from its first frame, and from 2 and 3 sources (the first frame plus evenly
spaced ones, as in the paper's Table 2), and compared with the "frozen keyframe" baselines:
the first frame shown for every frame, and the nearer of the first and middle frames.

    python -m eval.reconstruction /work/shared/data/val/*.mp4 --out results/validation

writes ``validation.json`` (per clip and mean: PSNR, SSIM, LPIPS(alex), AKD, frames) and
``validation.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from codec.inference import reconstruct, to_uint8
from codec.weights import load_model
from eval.akd import face_landmarks
from eval.metrics import Scorers, compute_metrics
from sender.encoder import crop_input

METRICS = ("psnr", "ssim", "lpips", "akd")


def _summary(metrics: dict) -> dict:
    keep = {k: metrics[k] for k in (*METRICS, "frames", "akd_frames", "psnr_inf_frames")}
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in keep.items()}


def evaluate_clip(
    model, path: Path, device: torch.device, scorers: Scorers, max_frames=None, every: int = 1
) -> dict:
    """Every run scored on the same frames: all of them, or every ``every``-th (frame 0, N,
    2N, ...; the sources are still placed on the whole clip). The frames are rebuilt by
    :func:`codec.inference.reconstruct`, 8 at a time."""
    clip = crop_input(path, model.cfg.image_size, max_frames)
    frames = clip.frames
    scored = np.arange(0, len(frames), every)
    ref = frames[scored]
    ref_landmarks = face_landmarks(ref)
    result = {"frames": len(frames), "every": every, "fps": float(clip.fps), "runs": {}}

    def score(name: str, test: np.ndarray) -> None:
        m = compute_metrics(ref, test, device, ref_landmarks=ref_landmarks, scorers=scorers)
        result["runs"][name] = _summary(m)

    frozen = {}  # the frozen-keyframe baselines of the 1- and 2-source runs
    for n in (1, 2, 3):
        t0 = time.time()
        rec = reconstruct(model, frames, n, scored, chunk=8)
        pred = to_uint8(rec.images)
        result.setdefault("render_fps", {})[f"{n}src"] = len(scored) / (time.time() - t0)
        score(f"model_{n}src", pred)
        frozen[n] = frames[rec.frozen]
    score("frozen_first", frozen[1])
    score("frozen_first_middle", frozen[2])
    return result


def mean_over_clips(clips: dict) -> dict:
    """Frame-weighted means of every run's metrics over the clips (AKD over frames with faces)."""
    runs = next(iter(clips.values()))["runs"].keys()
    out = {}
    for run in runs:
        out[run] = {}
        for k in METRICS:
            weight_key = "akd_frames" if k == "akd" else "frames"
            vals = [(c["runs"][run][k], c["runs"][run][weight_key]) for c in clips.values()]
            vals = [(v, w) for v, w in vals if np.isfinite(v) and w > 0]
            weight = sum(w for _, w in vals)  # 0: e.g. no face found in any output (AKD)
            out[run][k] = float(sum(v * w for v, w in vals) / weight) if weight else float("nan")
    return out


def write_report(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "validation.json").write_text(json.dumps(result, indent=1))
    lines = [
        "# Reconstruction on held-out clips",
        "",
        f"Weights `{result['weights']}` (id {result['weights_id']}), {result['machine']}.",
        "Sources are original crops, keypoints unquantized; means are frame-weighted."
        + (
            f" One frame in {result['every']} scored (0, {result['every']}, ...)."
            if result.get("every", 1) > 1
            else ""
        ),
        "",
        "| clip | run | PSNR dB | SSIM | LPIPS | AKD px |",
        "|---|---|---|---|---|---|",
    ]
    for name, clip in [*result["clips"].items(), ("**mean**", {"runs": result["mean"]})]:
        for run, m in clip["runs"].items():
            lines.append(
                f"| {name} | {run} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['lpips']:.3f} | {m['akd']:.2f} |"
            )
    (out / "validation.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.reconstruction", description=__doc__)
    p.add_argument("clips", nargs="+", type=Path)
    p.add_argument("--weights", default=None, help="weights file (default: the shipped weights)")
    p.add_argument("--out", type=Path, default=Path("results/validation"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument(
        "--every", type=int, default=1, help="score every N-th frame only (default: all)"
    )
    args = p.parse_args(argv)
    if args.every < 1:
        p.error("--every must be at least 1")
    device = torch.device(args.device)
    model = load_model(args.weights, device=device)
    scorers = Scorers.load(device, metrics=("lpips",))  # METRICS reports LPIPS(alex) only
    result = {
        "weights": str(model.weights_path),
        "weights_id": model.weights_id.hex(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"{device.type}{' ' + torch.cuda.get_device_name() if device.type == 'cuda' else ''}, torch {torch.__version__}",
        "every": args.every,
        "clips": {},
    }
    for path in args.clips:
        result["clips"][path.stem] = evaluate_clip(
            model, path, device, scorers, args.max_frames, args.every
        )
        print(json.dumps({path.stem: result["clips"][path.stem]["runs"]}), flush=True)
    result["mean"] = mean_over_clips(result["clips"])
    write_report(result, args.out)
    print((args.out / "validation.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
