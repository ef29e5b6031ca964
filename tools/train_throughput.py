"""Training throughput per GPU and its scaling over GPUs, from the logs of training runs.

Each RUN_DIR is a ``codec.train`` output folder (``config.json`` with the world size,
``log.jsonl`` with ``examples_per_s_per_gpu`` per logging window). The first ``--skip``
windows of each run (start-up: cuDNN autotuning, the first all-reduces) are dropped and the
median of the rest is taken, which also drops the windows that held a validation pass.

    python tools/train_throughput.py RUN_DIR... --device "4x NVIDIA H200" \\
        --json results/training/throughput.json

prints a table (GPUs, images/s per GPU, images/s in all, scaling against the 1-GPU run) and
writes it as JSON with the device name.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def run_throughput(run_dir: Path, skip: int) -> dict:
    config = json.loads((run_dir / "config.json").read_text())
    windows = [
        json.loads(line)
        for line in (run_dir / "log.jsonl").read_text().splitlines()
        if line.strip() and "examples_per_s_per_gpu" in line
    ]
    steady = [w["examples_per_s_per_gpu"] for w in windows[skip:]]
    if not steady:
        raise SystemExit(f"{run_dir}: no logging windows after the first {skip}")
    per_gpu = statistics.median(steady)
    return {
        "run": run_dir.name,
        "gpus": int(config["world"]),
        "batch_per_gpu": int(config["train"]["batch_size"]),
        "windows": len(steady),
        "images_per_s_per_gpu": round(per_gpu, 1),
        "images_per_s": round(per_gpu * int(config["world"]), 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--device", required=True, help="the machine the runs ran on")
    p.add_argument("--skip", type=int, default=2, help="start-up windows to drop per run")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    rows = sorted((run_throughput(r, args.skip) for r in args.runs), key=lambda r: r["gpus"])
    base = next((r for r in rows if r["gpus"] == 1), None)
    print(f"device: {args.device}")
    print("| GPUs | images/s per GPU | images/s | scaling vs 1 GPU | efficiency |")
    print("|---|---|---|---|---|")
    for r in rows:
        if base:
            r["speedup"] = round(r["images_per_s"] / base["images_per_s"], 2)
            r["efficiency"] = round(r["speedup"] / r["gpus"], 3)
        print(
            f"| {r['gpus']} | {r['images_per_s_per_gpu']} | {r['images_per_s']} | "
            f"{r.get('speedup', '-')}x | {r.get('efficiency', '-')} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": args.device, "runs": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
