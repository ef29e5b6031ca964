"""Pin the fused attention forward's launch at the codec's shapes (kernels/pinned.py).

    python -m benchmarks.tune --out DIR --processes 5 --write-table    # GPU, ~2.5 min
    python -m benchmarks.tune --out DIR --smoke                        # plumbing; CPU interpreter

Why fresh processes: the autotuner's choice at 256 px changed from one process to the next
(results/attention_spread/), so a choice made in one process is not a result. Here every
candidate launch (a tile of BLOCK_M x BLOCK_N with its warps and stages, and a key-split
count) is timed at every pinned shape in each of ``--processes`` fresh processes, and the
candidate with the lowest median over the processes is pinned; the autotuner's own choice is
timed beside them in every process ("autotune"), for the before. A candidate counts only if
its outputs match the reference (float32 softmax) within the dtype's tolerance.

Shapes (batch 1, D = 128, 400 learned extra keys): 256 px (q = 4096, k = 4096 N + 400, N = 1,
2, 3) for the main attention (Dv = 128, Dp = 3) and the flow pass of ``warp_sources`` (Dv = Dp
= 3N), float32 (what the receiver runs) and bfloat16 (bf16 autocast and the kernel
benchmark); 512 px (q = 16384, N = 1) for the main attention. Before the timed processes a
pool of processes compiles every candidate once, in parallel, into triton's on-disk cache.

Writes DIR/tune_<device>.json (every candidate's times per process, median, spread
(max - min) / median, the choice) and DIR/pinned_table.py; ``--write-table`` also writes
kernels/pinned_table.py, which is what the forward then launches.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import kernels
from benchmarks import fresh
from benchmarks.attention import environment, slug
from kernels import pinned

EXTRAS = 400
TILES = (  # (BLOCK_M, BLOCK_N, warps, stages): the spill-free sm_90 list of docs/kernels.md
    (128, 64, 8, 2),
    (128, 64, 8, 3),
    (64, 64, 4, 2),
    (64, 64, 8, 2),
    (64, 32, 4, 3),
)
SPLITS = {4096: (1, 2, 4, 8), 16384: (1, 2)}
TOLERANCE = {"float32": 5e-3, "bfloat16": 1.5e-2, "float16": 3e-3}
AUTOTUNE = "autotune"


@dataclass(frozen=True)
class Shape:
    label: str
    lq: int
    lk: int
    d: int
    dv: int
    dp: int
    dtype: str


def shapes(smoke: bool) -> list[Shape]:
    if smoke:
        return [Shape("smoke", 40, 3 * 48 + 7, 32, 32, 3, "float32")]
    out = []
    for dtype in ("float32", "bfloat16"):
        for n in (1, 2, 3):
            lk = 4096 * n + EXTRAS
            out.append(Shape(f"256px N={n} main {dtype}", 4096, lk, 128, 128, 3, dtype))
            out.append(Shape(f"256px N={n} flow {dtype}", 4096, lk, 128, 3 * n, 3 * n, dtype))
        out.append(Shape(f"512px N=1 main {dtype}", 16384, 16384 + EXTRAS, 128, 128, 3, dtype))
    return out


def candidates(shape: Shape, smoke: bool) -> list[pinned.PinnedLaunch]:
    if smoke:
        return [pinned.PinnedLaunch(16, 16, 4, 1, s) for s in (1, 2)] + [
            pinned.PinnedLaunch(32, 32, 4, 1, 1)
        ]
    return [
        pinned.PinnedLaunch(*tile, splits)
        for tile in TILES
        for splits in SPLITS.get(shape.lq, (1,))
    ]


def cand_name(c: pinned.PinnedLaunch | None) -> str:
    if c is None:
        return AUTOTUNE
    return f"{c.block_m}x{c.block_n} w{c.num_warps} s{c.num_stages} split{c.num_splits}"


def make_inputs(shape: Shape, device: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """q, k, v, p at unit-variance logits (q scaled by 1/sqrt(D) through the default scale)."""
    g = torch.Generator(device=device).manual_seed(seed)
    dtype = getattr(torch, shape.dtype)

    def randn(*s):
        return torch.randn(*s, device=device, generator=g).to(dtype)

    return (
        randn(1, shape.lq, shape.d),
        randn(1, shape.lk, shape.d),
        randn(1, shape.lk, shape.dv),
        torch.rand(1, shape.lk, shape.dp, device=device, generator=g).to(dtype),
    )


def run(ins, cand: pinned.PinnedLaunch | None):
    if cand is None:
        with pinned.bypass():
            return kernels.warp_attention_triton(*ins)
    return kernels.warp_attention_triton(
        *ins,
        num_splits=cand.num_splits,
        block_m=cand.block_m,
        block_n=cand.block_n,
        num_warps=cand.num_warps,
        num_stages=cand.num_stages,
    )


def rel_err(outs, refs) -> float:
    return max(
        ((o.double() - r.double()).norm() / r.double().norm()).item()
        for o, r in zip(outs, refs, strict=True)
    )


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


# --------------------------------------------------------------------------------------------
# Workers (each a fresh process)
# --------------------------------------------------------------------------------------------


def compile_worker(args: argparse.Namespace) -> int:
    """Run each candidate of this slice once (its compile lands in triton's disk cache)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    index, count = args.slice
    for shape, cand in _compile_jobs(args.smoke)[index::count]:
        ins = make_inputs(shape, device)
        try:
            run(ins, cand)
        except Exception:  # noqa: BLE001 - a tile that cannot run is recorded by the timing
            pass
    if device == "cuda":
        torch.cuda.synchronize()
    return 0


def _compile_jobs(smoke: bool) -> list[tuple[Shape, pinned.PinnedLaunch]]:
    """One (shape, candidate) per compiled variant: the tile, split or not, the widths and the
    dtype (lengths are no constexpr), so no two workers compile the same kernel."""
    seen, out = set(), []
    for shape in shapes(smoke):
        for c in candidates(shape, smoke):
            tile = (c.block_m, c.block_n, c.num_warps, c.num_stages, c.num_splits > 1)
            key = (*tile, shape.d, shape.dv, shape.dp, shape.dtype)
            if key not in seen:
                seen.add(key)
                out.append((shape, c))
    return out


def time_worker(args: argparse.Namespace) -> int:
    """Time every candidate (and the autotuner's choice) at every shape; JSON to args.json."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    timer = _timer(device, args)
    result: dict[str, dict[str, dict]] = {}
    for shape in shapes(args.smoke):
        ins = make_inputs(shape, device)
        refs = kernels.warp_attention_reference(*ins)
        per: dict[str, dict] = {}
        for cand in [None, *candidates(shape, args.smoke)]:
            entry: dict = {}
            try:
                err = rel_err(run(ins, cand), refs)
                entry["rel_err"] = err
                if err < TOLERANCE[shape.dtype]:
                    entry["ms"] = timer(lambda c=cand, x=ins: run(x, c))
            except Exception as exc:  # noqa: BLE001 - out of resources, too many splits...
                entry["error"] = _error(exc)
            per[cand_name(cand)] = entry
        if device == "cuda":
            module = kernels.dispatch._triton_module()
            per[AUTOTUNE]["choice"] = {
                k: v for k, v in module.tuning_report().items() if k.startswith("fwd/")
            }
        result[shape.label] = per
        del ins, refs
    Path(args.json).write_text(json.dumps(result))
    return 0


def _timer(device: str, args: argparse.Namespace):
    if device == "cuda":
        from triton.testing import do_bench

        return lambda fn: float(
            do_bench(fn, warmup=args.warmup_ms, rep=args.rep_ms, return_mode="median")
        )

    def cpu(fn):  # --smoke under the interpreter: one run shows the launch works (attention.py)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    return cpu


# --------------------------------------------------------------------------------------------
# Parent: compile pool, timed processes, choice
# --------------------------------------------------------------------------------------------


def _shared_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--warmup-ms", str(args.warmup_ms), "--rep-ms", str(args.rep_ms)]
    return flags + (["--smoke"] if args.smoke else [])


def _failed(runs: list[subprocess.CompletedProcess], what: str) -> None:
    for i, r in enumerate(runs):
        if r.returncode != 0:
            raise RuntimeError(f"{what} {i + 1} failed:\n{r.stderr[-3000:]}")


def precompile(args: argparse.Namespace, env: dict[str, str]) -> float:
    """The compile pool: ``--compile-workers`` processes at once, each a slice of the jobs."""
    start = time.perf_counter()
    n = max(1, args.compile_workers)
    argvs = [
        ["--out", str(args.out), "--worker", "compile", "--slice", f"{i}/{n}"] + _shared_flags(args)
        for i in range(n)
    ]
    _failed(fresh.run_module("benchmarks.tune", argvs, together=True, env=env), "compile worker")
    seconds = time.perf_counter() - start
    print(f"compiled the candidates in {seconds:.1f} s", flush=True)
    return seconds


def timed_processes(
    args: argparse.Namespace, env: dict[str, str], tmp: Path, together: bool
) -> list[dict]:
    """The timed processes' results; ``together``: at the same time (benchmarks/fresh.py)."""
    paths = [tmp / f"time_{i}.json" for i in range(args.processes)]
    argvs = [
        ["--out", str(args.out), "--worker", "time", "--json", str(path)] + _shared_flags(args)
        for path in paths
    ]

    def done(i: int) -> None:
        print(f"process {i + 1}/{args.processes} done", flush=True)

    runs = fresh.run_module("benchmarks.tune", argvs, together, env, done)
    _failed(runs, "timing process")
    return [json.loads(path.read_text()) for path in paths]


def compile_and_time(
    args: argparse.Namespace, env: dict[str, str], tmp: Path, cuda: bool
) -> tuple[float, list[dict]]:
    """The compile pool's seconds and the timed processes' results. On a GPU the timed
    processes start once the pool has filled triton's disk cache, one after another; under the
    interpreter nothing is compiled to wait for and the times mean nothing, so the pool and the
    timed processes all run at once (benchmarks/fresh.py)."""
    if cuda:
        return precompile(args, env), timed_processes(args, env, tmp, together=False)
    with ThreadPoolExecutor(1) as pool:
        compiling = pool.submit(precompile, args, env)
        runs = timed_processes(args, env, tmp, together=True)
        return compiling.result(), runs


def spread(values: list[float]) -> float:
    med = statistics.median(values)
    return (max(values) - min(values)) / med if med > 0 else math.inf


def summarize(shape_list: list[Shape], runs: list[dict], smoke: bool) -> list[dict]:
    """Per shape: every candidate's times over the processes, median, spread; the choice."""
    out = []
    for shape in shape_list:
        per_cand = {}
        for cand in [None, *candidates(shape, smoke)]:
            name = cand_name(cand)
            entries = [run[shape.label][name] for run in runs]
            times = [e["ms"] for e in entries if "ms" in e]
            row: dict = {"candidate": name, "ms": times}
            if cand is not None:
                row["launch"] = asdict(cand)
            if len(times) == len(entries):
                row.update(median_ms=statistics.median(times), spread=spread(times))
            else:
                row["failed"] = next(
                    (
                        e.get("error") or f"rel_err {e.get('rel_err')}"
                        for e in entries
                        if "ms" not in e
                    ),
                    None,
                )
            if cand is None:
                row["choices"] = [e.get("choice") for e in entries]
            per_cand[name] = row
        pinned_ok = [r for n, r in per_cand.items() if n != AUTOTUNE and "median_ms" in r]
        best = min(pinned_ok, key=lambda r: r["median_ms"]) if pinned_ok else None
        out.append(
            {
                "shape": asdict(shape),
                "candidates": list(per_cand.values()),
                "chosen": best["candidate"] if best else None,
                "chosen_median_ms": best["median_ms"] if best else None,
                "chosen_spread": best["spread"] if best else None,
                "autotune_median_ms": per_cand[AUTOTUNE].get("median_ms"),
                "autotune_spread": per_cand[AUTOTUNE].get("spread"),
            }
        )
    return out


def table_rows(summary: list[dict], target: str) -> list[dict]:
    rows = []
    for s in summary:
        if s["chosen"] is None:
            continue
        best = next(c for c in s["candidates"] if c["candidate"] == s["chosen"])
        shape = s["shape"]
        key = pinned.ShapeKey(
            target, shape["lq"], shape["lk"], shape["d"], shape["dv"], shape["dp"], shape["dtype"]
        )
        launch = pinned.PinnedLaunch(**best["launch"])
        rows.append(
            pinned.as_row(
                key,
                launch,
                median_ms=round(s["chosen_median_ms"], 5),
                spread=round(s["chosen_spread"], 4),
            )
        )
    return rows


def print_summary(summary: list[dict]) -> None:
    print(f"\n{'shape':30s} {'chosen':28s} {'median ms':>9s} {'spread':>7s}   {'autotune ms':>11s} {'spread':>7s}")  # fmt: skip
    for s in summary:
        auto = s["autotune_median_ms"]
        print(
            f"{s['shape']['label']:30s} {s['chosen'] or '-':28s} "
            f"{s['chosen_median_ms'] or math.nan:9.4f} {100 * (s['chosen_spread'] or math.nan):6.1f}%   "
            f"{auto if auto is not None else math.nan:11.4f} "
            f"{100 * (s['autotune_spread'] if s['autotune_spread'] is not None else math.nan):6.1f}%"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="folder for the results")
    ap.add_argument("--processes", type=int, default=5, help="fresh timed processes")
    ap.add_argument("--compile-workers", type=int, default=8, help="parallel compile processes")
    ap.add_argument("--warmup-ms", type=int, default=5)
    ap.add_argument("--rep-ms", type=int, default=20)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (CPU: interpreter)")
    ap.add_argument("--write-table", action="store_true", help="also write kernels/pinned_table.py")
    ap.add_argument("--worker", choices=("compile", "time"), help=argparse.SUPPRESS)
    ap.add_argument(
        "--slice",
        type=lambda t: tuple(int(x) for x in t.split("/")),
        default=(0, 1),
        help=argparse.SUPPRESS,
    )
    ap.add_argument("--json", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda:
        if not args.smoke:
            print("no CUDA device: only --smoke runs on the CPU (interpreter)", file=sys.stderr)
            return 2
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    if args.worker == "compile":
        return compile_worker(args)
    if args.worker == "time":
        return time_worker(args)
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        compile_s, runs = compile_and_time(args, env, Path(tmp), cuda)
    shape_list = shapes(args.smoke)
    summary = summarize(shape_list, runs, args.smoke)
    print_summary(summary)
    device = environment("cuda" if cuda else "cpu")
    target = pinned.cuda_target(torch.cuda.current_device()) if cuda else "interpreter"
    rows = table_rows(summary, target)
    provenance = {
        "device": device["device"],
        "torch": device["torch"],
        "triton": device["triton"],
        "git_commit": device["git_commit"],
        "command": f"python -m benchmarks.tune --processes {args.processes}",
        "rule": f"lowest median of {args.processes} fresh processes",
        "date": time.strftime("%Y-%m-%d"),
    }
    name = slug(device["device"] if cuda else "cpu-smoke")
    report = {
        "environment": device,
        "processes": args.processes,
        "timing": {"warmup_ms": args.warmup_ms, "rep_ms": args.rep_ms, "how": "do_bench median"},
        "compile_seconds": compile_s,
        "seconds": time.perf_counter() - started,
        "shapes": summary,
        "table": rows,
    }
    (args.out / f"tune_{name}.json").write_text(json.dumps(report, indent=1))
    source = pinned.format_table(rows, provenance)
    (args.out / "pinned_table.py").write_text(source)
    if args.write_table:
        path = Path(kernels.__file__).parent / "pinned_table.py"
        path.write_text(source)
        print(f"wrote {path}")
    print(f"wrote {args.out / f'tune_{name}.json'} and {args.out / 'pinned_table.py'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
