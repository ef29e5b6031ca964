"""The sender's render check, measured: each clip encoded with and without
``EncodeOptions.render_check`` (streams really written), every frame decoded from the stream,
scored beside the keyframe-only baseline (the same decoded keyframe shown for every frame).

``python -m eval.render_check VIDEO... --out DIR [--clip-cache DIR] [--device cpu]`` writes
``results.json`` and ``summary.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from codec.weights import load_model
from eval.keyframe_policies import Clip, keyframe_only
from eval.metrics import Scorers, image_metrics_per_frame
from eval.run import prepare_clip
from iwcodec.keyframe import DEFAULT_QUALITY
from receiver.decoder import DecodeOptions, decode_frames
from sender.encoder import EncodeOptions, encode_frames


def measure(model, clip: Clip, scorers: Scorers) -> list[dict]:
    """One record per variant: plain, render check, keyframe only."""
    import io

    seconds = len(clip.frames) / float(clip.fps)
    out = []

    def score(variant: str, nbytes: int, shown: np.ndarray, **extra) -> dict:
        m = image_metrics_per_frame(clip.frames, shown, scorers.device, scorers=scorers)
        return {
            "clip": clip.name,
            "variant": variant,
            "frames": len(clip.frames),
            "kbps": nbytes * 8 / seconds / 1000,
            "psnr": float(np.minimum(m["psnr"], 100).mean()),
            "lpips": float(m["lpips"].mean()),
            **extra,
        }

    for variant, options in (
        ("plain", EncodeOptions(progress=False)),
        ("render check", EncodeOptions(progress=False, render_check=True)),
    ):
        start = time.perf_counter()
        with io.BytesIO() as f:
            stats = encode_frames(clip.frames, clip.fps, model, f, options)
            data = f.getvalue()
        encode_s = time.perf_counter() - start
        decoded, _ = decode_frames(data, model, DecodeOptions(progress=False))
        out.append(
            score(
                variant,
                len(data),
                decoded,
                frames_as_keyframe=stats.frames_as_keyframe,
                encode_s=encode_s,
            )
        )
    shown, nbytes = keyframe_only(clip, [0], DEFAULT_QUALITY)
    out.append(score("keyframe only", nbytes, shown))
    return out


def summary(records: list[dict]) -> str:
    lines = [
        "| clip | variant | kbps | PSNR dB | LPIPS | frames shown as keyframe |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        held = r.get("frames_as_keyframe", "-")
        lines.append(
            f"| {r['clip']} | {r['variant']} | {r['kbps']:.2f} | {r['psnr']:.2f} | "
            f"{r['lpips']:.4f} | {held} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.render_check", description=__doc__)
    p.add_argument("videos", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--clip-cache", type=Path, default=None)
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.weights, device=args.device)
    scorers = Scorers.load(args.device, ("lpips",))
    cache = args.clip_cache if args.clip_cache is not None else args.out / "clips"
    records: list[dict] = []
    for video in args.videos:
        c = prepare_clip(video, video.stem, model.cfg.image_size, cache, with_akd=False)
        records += measure(model, Clip(video.stem, c.frames, c.fps), scorers)
        (args.out / "results.json").write_text(json.dumps(records, indent=1))
        (args.out / "summary.md").write_text(summary(records))
        print(summary(records[-3:]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
