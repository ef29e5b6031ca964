"""PSNR lost to keypoint quantization (issue #2: the default must lose <= 0.1 dB on val).

    python tools/quantization_loss.py .cache/crops_val_256 --every 4 --json results/quantization_loss.json

For every ``--every``-th frame of each clip, rebuilds it from the clip's first frame with the
detector's keypoints as they are and as the receiver decodes them after quantization
(``bitstream.reconstruct``) at each candidate step setting, and reports PSNR against the
original crop: unquantized, quantized, and the difference, per clip and frame-weighted mean.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from bitstream import CANDIDATE_STEPS, reconstruct
from codec.weights import load_model


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR of uint8-rounded images in [0, 1]: (B, 3, H, W) -> (B,)"""
    a, b = (a * 255).round(), (b * 255).round()
    mse = (a - b).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return 10 * torch.log10(255.0**2 / mse)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("cache", type=Path)
    p.add_argument("--every", type=int, default=4)
    p.add_argument("--weights", default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    model = load_model(args.weights)
    per_clip = {}
    for path in sorted(args.cache.glob("*.npy")):
        if path.name.endswith(".landmarks.npy"):
            continue
        frames = np.load(path, mmap_mode="r")
        x = torch.from_numpy(np.array(frames[:: args.every])).permute(0, 3, 1, 2).float() / 255
        src = torch.from_numpy(np.array(frames[:1])).permute(0, 3, 1, 2).float() / 255
        scores = {name: [] for name in ["unquantized", *CANDIDATE_STEPS]}
        with torch.inference_mode():
            kp_s, s_s = model.detect(src)
            feats = model.encode_source(src, kp_s, s_s)
            for part in x.split(8):
                kp, s = model.detect(part)
                raw = torch.cat([kp, s[..., None]], -1).numpy()
                scores["unquantized"].append(psnr(model.render(feats, kp, s), part))
                for name, (xy, st) in CANDIDATE_STEPS.items():
                    q = torch.from_numpy(reconstruct(raw, xy, st))
                    scores[name].append(psnr(model.render(feats, q[..., :2], q[..., 2]), part))
        res = {k: torch.cat(v).mean().item() for k, v in scores.items()}
        res["frames"] = len(x)
        per_clip[path.stem] = res
        print(path.stem, json.dumps(res), flush=True)
    n = sum(r["frames"] for r in per_clip.values())
    mean = {
        k: sum(r[k] * r["frames"] for r in per_clip.values()) / n
        for k in ["unquantized", *CANDIDATE_STEPS]
    }
    print(f"{'setting':10s} {'xy/s steps':>10s} {'PSNR dB':>8s} {'loss dB':>8s}   ({n} frames)")
    print(f"{'none':10s} {'-':>10s} {mean['unquantized']:8.3f} {0:8.3f}")
    for name, (xy, st) in CANDIDATE_STEPS.items():
        print(
            f"{name:10s} {f'{xy}/{st}':>10s} {mean[name]:8.3f} {mean['unquantized'] - mean[name]:8.3f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "every": args.every,
                    "frames": n,
                    "mean": mean,
                    "clips": per_clip,
                    "weights_id": model.weights_id.hex(),
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
