"""What the model costs per frame at the sender and the receiver, on one device.

    python -m benchmarks.render --out results/render            # GPU (~1 min)
    python -m benchmarks.render --out DIR --smoke               # tiny model, CPU

The parts timed are the ones the pipeline runs (docs/model.md, "what is computed when"):

- ``detect``: the keypoint detector on one 256x256 frame (the sender, every frame; the
  receiver, once per keyframe).
- ``encode_source``: the features of one keyframe (the receiver, once per keyframe).
- ``render N src, batch B``: ``model.render`` from N cached keyframes for B frames at once
  (the receiver, every frame: query U-Net, key positions, the attention, the second
  attention pass and the warps of the full-resolution sources, the decoder and its masks).
  Reported per call and per frame.

The inputs are random images (the cost does not depend on what they show). Each part runs
as the receiver runs it (float32 weights, ``torch.inference_mode``), and
under bf16 autocast beside it (``--no-bf16`` skips that). Times are medians of CUDA-event
timed calls after a warmup (CPU: wall clock). The shipped weights are used unless
``--weights`` names others; ``--smoke`` builds a tiny random model instead (timings then
mean nothing: only the plumbing is exercised). Results go to DIR/render_<device>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.attention import slug
from codec.config import tiny_config
from codec.model import ImplicitWarpingModel
from kernels.environment import environment


def timer(device: torch.device, warmup: int, reps: int) -> Callable[[Callable[[], object]], float]:
    """fn -> median milliseconds over ``reps`` calls after ``warmup`` calls."""

    def median_ms(fn: Callable[[], object]) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    return median_ms


def build_model(args: argparse.Namespace, device: torch.device) -> ImplicitWarpingModel:
    if args.smoke:
        torch.manual_seed(0)
        return ImplicitWarpingModel(tiny_config(), attention_backend="torch").to(device).eval()
    from codec.weights import load_model

    return load_model(args.weights, device=device)


def measure(model, device: torch.device, args: argparse.Namespace, bf16: bool) -> list[dict]:
    """Rows of {part, sources, batch, ms, ms_per_frame} for one precision."""
    size = model.cfg.image_size
    gen = torch.Generator(device="cpu").manual_seed(0)
    frames = torch.rand(max(args.batches), 3, size, size, generator=gen).to(device)
    keyframes = torch.rand(max(args.sources), 3, size, size, generator=gen).to(device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    )
    time_ms = timer(device, args.warmup, args.reps)
    rows = []
    with torch.inference_mode(), autocast:
        ms = time_ms(lambda: model.detect(frames[:1]))
        rows.append({"part": "detect", "sources": None, "batch": 1, "ms": ms, "ms_per_frame": ms})
        kp_s, s_s = model.detect(keyframes)
        ms = time_ms(lambda: model.encode_source(keyframes[:1], kp_s[:1], s_s[:1]))
        rows.append(
            {"part": "encode_source", "sources": 1, "batch": 1, "ms": ms, "ms_per_frame": None}
        )
        kp_d, s_d = model.detect(frames)
        for n in args.sources:
            src = model.encode_source(keyframes[:n], kp_s[:n], s_s[:n]).regroup(1)
            for b in args.batches:
                ms = time_ms(lambda src=src, b=b: model.render(src, kp_d[:b], s_d[:b]))
                rows.append(
                    {"part": "render", "sources": n, "batch": b, "ms": ms, "ms_per_frame": ms / b}
                )
    return rows


def print_table(results: dict) -> None:
    print(f"device: {results['environment']['device']}  weights: {results['weights']}")
    print(f"{'precision':9s} {'part':14s} {'sources':>7s} {'batch':>5s} {'ms':>9s} {'ms/frame':>9s} {'frames/s':>9s}")  # fmt: skip
    for precision, rows in results["timings"].items():
        for r in rows:
            per = r["ms_per_frame"]
            fps = "" if per is None else f"{1e3 / per:9.0f}"
            print(f"{precision:9s} {r['part']:14s} {r['sources'] or '':>7} {r['batch']:5d} "
                  f"{r['ms']:9.2f} {'' if per is None else f'{per:9.2f}':>9s} {fps:>9s}")  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="folder for the JSON results")
    ap.add_argument("--weights", type=Path, default=None, help="weights file (default: shipped)")
    ap.add_argument("--smoke", action="store_true", help="a tiny random model, few repetitions")
    ap.add_argument("--device", default="auto", help="cpu, cuda, or auto (default)")
    ap.add_argument("--no-bf16", action="store_true", help="float32 only")
    args = ap.parse_args(argv)
    args.sources = (1, 2, 3)
    args.batches = (1, 4) if args.smoke else (1, 8)
    args.warmup, args.reps = (2, 3) if args.smoke else (20, 100)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = torch.device("cpu" if name == "auto" else name)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; use --device cpu (slow) or --smoke", file=sys.stderr)
        return 2
    model = build_model(args, device)
    precisions = {"float32": False}
    if not args.no_bf16:
        precisions["bf16"] = True
    results = {
        "environment": environment(device),
        "weights": "tiny random (smoke)" if args.smoke else str(model.weights_path),
        "config": model.cfg.to_dict(),
        "warmup": args.warmup,
        "reps": args.reps,
        "timings": {k: measure(model, device, args, bf16) for k, bf16 in precisions.items()},
    }
    print_table(results)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"render_{slug(results['environment']['device'])}.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
