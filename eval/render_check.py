"""The sender's render check, measured: each clip encoded with and without
``EncodeOptions.render_check`` (streams really written), every frame decoded from the stream,
scored beside the keyframe-only baseline (the same decoded keyframe shown for every frame).

``python -m eval.render_check VIDEO... --out DIR [--clip-cache DIR] [--device cpu]`` writes
``results.json`` and ``summary.md``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from codec.weights import load_model
from eval.keyframe_policies import Clip, coded, keyframe_only, scored
from eval.metrics import Scorers
from eval.run import prepare_clip
from iwcodec.keyframe import DEFAULT_QUALITY
from sender.encoder import EncodeOptions


def measure(model, clip: Clip, scorers: Scorers) -> list[dict]:
    """One record per variant: plain, render check, keyframe only (``eval.keyframe_policies``'
    scoring: streams written in memory, every frame decoded)."""
    out = [
        coded(model, clip, scorers, "plain", EncodeOptions(progress=False)),
        coded(
            model, clip, scorers, "render check", EncodeOptions(progress=False, render_check=True)
        ),
    ]
    shown, nbytes = keyframe_only(clip, [0], DEFAULT_QUALITY)
    return out + [scored(clip, scorers, "keyframe only", nbytes, shown, [0])]


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
