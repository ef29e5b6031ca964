"""Fused implicit-warping attention against the best PyTorch composition (issue #4).

    python -m benchmarks.attention --out DIR           # full GPU run (~5 min)
    python -m benchmarks.attention --out DIR --quick   # 2 cases, shorter timing
    python -m benchmarks.attention --out DIR --check   # correctness sweep only
    python -m benchmarks.attention --out DIR --smoke   # tiny shapes; CPU: interpreter
    python -m benchmarks.attention --out DIR --quick --cases "256px N=1,256px N=3" \
        --no-backward --fresh-processes 5             # median and spread over 5 processes

The op is ``kernels.warp_attention``: A = softmax(Q K^T * scale), out_v = A V, out_k = A K,
out_p = A P. Every method below produces those three outputs from bf16 inputs at batch 1, one
head, no key_bias. Key-side tensors (concatenations, zero padding of k, V or P) depend only on
the source frames, which the receiver caches, so they are prepared before timing; anything that
depends on the queries (padding q) is timed. Methods:

- fused: ``warp_attention(..., backend="triton")`` (public entry: input checks + kernels).
- sdpa-<backend> (flash, cudnn, efficient, math; forced with torch.nn.attention.sdpa_kernel):
  * 1 call:     V' = [V | K | P | 0] (width padded to a multiple of 8), one call; needs Dv != D.
  * 2 calls:    V, then [K | P | 0] (padded to a multiple of 8); the second needs Dv != D.
  * 2 calls qk: V, then [K | P | 0] with q and k zero-padded to the same width (zeros add
                nothing to the logits; the scale is passed explicitly): equal widths, for flash.
  * 3 calls:    V, K, then P zero-padded to D: equal widths, for flash when D + 3 > 256.
- matmul: S = Q K^T (bf16) * scale, softmax in float32, cast to bf16, A [V | K | P] in one matmul.

A method counts only if its outputs match the float64 reference (relative error below 2e-2).
Times are medians of triton.testing.do_bench (L2 flushed before each call) over rotating input
sets. TFLOP/s count 2 Lq Lk (D + Dv + D + Dp) flops forward; forward+backward adds
2 Lq Lk (2 Dv + 4 D + 2 Dp) (dA, dV, dP, the two dK terms, dQ; recomputation not counted).
The peak is a bf16 8192^3 matmul timed in the same run. Results go to
DIR/attention_<device>.json (--check: DIR/attention_check_<device>.json).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import kernels
from benchmarks import fresh
from iwcodec.errors import IWCodecError
from kernels import pinned_table, warp_attention, warp_attention_reference
from kernels.environment import environment as kernels_environment

VALID_TOL = 2e-2  # composition outputs (bf16) against float64
GOAL_RATIO = 0.8  # fused time / best composition time
GOAL_PEAK = 0.6  # fraction of the measured matmul peak, at 512^2
REF_CHUNK = 2048  # query rows per float64 reference chunk


@dataclass(frozen=True)
class Case:
    label: str
    lq: int
    per_src: int
    n_src: int
    d: int = 128
    dv: int = 128
    dp: int = 3
    extras: int = 400
    batch: int = 1

    @property
    def lk(self) -> int:
        return self.per_src * self.n_src + self.extras

    @property
    def flops_fwd(self) -> float:
        return 2.0 * self.batch * self.lq * self.lk * (2 * self.d + self.dv + self.dp)

    @property
    def flops_fwdbwd(self) -> float:
        bwd = 2.0 * self.batch * self.lq * self.lk * (2 * self.dv + 4 * self.d + 2 * self.dp)
        return self.flops_fwd + bwd


FULL_CASES = [
    Case("256px N=1", 4096, 4096, 1),
    Case("256px N=3", 4096, 4096, 3),
    Case("512px N=1", 16384, 16384, 1),
    Case("512px N=3", 16384, 16384, 3),
    Case("256px N=1 D=256", 4096, 4096, 1, d=256, dv=256),
    Case("512px N=1 D=256", 16384, 16384, 1, d=256, dv=256),
]
QUICK_CASES = [FULL_CASES[0], FULL_CASES[2]]
SMOKE_CASES = [
    Case("smoke N=1", 64, 64, 1, d=32, dv=32, extras=16),
    Case("smoke N=3 D=48", 40, 24, 3, d=48, dv=48, extras=7),
]


# --------------------------------------------------------------------------------------------
# Inputs and reference
# --------------------------------------------------------------------------------------------

Inputs = dict[str, torch.Tensor]
Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def make_inputs(case: Case, device: str, dtype: torch.dtype, seed: int) -> Inputs:
    """q (B, Lq, D), k (B, Lk, D), v (B, Lk, Dv), p (B, Lk, Dp): unit-variance logits."""
    g = torch.Generator(device=device).manual_seed(seed)
    b, lk = case.batch, case.lk

    def randn(*shape):
        return torch.randn(*shape, device=device, generator=g).to(dtype)

    p = torch.rand(b, lk, case.dp, device=device, generator=g).to(dtype)
    return {
        "q": randn(b, case.lq, case.d),
        "k": randn(b, lk, case.d),
        "v": randn(b, lk, case.dv),
        "p": p,
    }


def reference64(inp: Inputs, scale: float, bias=None, out_grads=None) -> tuple[list, list | None]:
    """Float64 outputs (and input gradients for out_grads), computed on query chunks."""
    leaves = [inp[n].detach().double().requires_grad_(out_grads is not None) for n in "qkvp"]
    b64 = None if bias is None else bias.double()
    outs: list[list[torch.Tensor]] = [[], [], []]
    for start in range(0, leaves[0].shape[1], REF_CHUNK):
        rows = slice(start, start + REF_CHUNK)
        with torch.set_grad_enabled(out_grads is not None):
            chunk = warp_attention_reference(leaves[0][:, rows], *leaves[1:], b64, scale)
            if out_grads is not None:
                torch.autograd.backward(chunk, [g[:, rows].double() for g in out_grads])
        for acc, o in zip(outs, chunk, strict=True):
            acc.append(o.detach())
    grads = None if out_grads is None else [t.grad for t in leaves]
    return [torch.cat(o, 1) for o in outs], grads


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm()).item()


# --------------------------------------------------------------------------------------------
# Methods: each builds, from one input set, a call returning (out_v, out_k, out_p)
# --------------------------------------------------------------------------------------------


class NotApplicable(Exception):
    """The method does not apply to this case (recorded, not an error)."""


@dataclass(frozen=True)
class Method:
    name: str
    family: str
    build: Callable[[Inputs, float], Callable[[], Outputs]]
    sdpa_backend: object = None  # forced around the warm-up call and the timing

    def context(self):
        if self.sdpa_backend is None:
            return contextlib.nullcontext()
        from torch.nn.attention import sdpa_kernel

        return sdpa_kernel([self.sdpa_backend])


def _round8(n: int) -> int:
    return (n + 7) // 8 * 8


def _pad_cols(x: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(x, (0, width - x.shape[-1])) if width > x.shape[-1] else x


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, L, E) tensors through SDPA as one head: (B, 1, L, E)."""
    out = F.scaled_dot_product_attention(
        q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=scale
    )
    return out.squeeze(1)


def build_fused(inp: Inputs, scale: float):
    q, k, v, p = (inp[n] for n in "qkvp")
    return lambda: warp_attention(q, k, v, p, scale=scale, backend="triton")


def build_sdpa_one_call(inp: Inputs, scale: float):
    q, k, v, p = (inp[n] for n in "qkvp")
    d, dv, dp = k.shape[-1], v.shape[-1], p.shape[-1]
    vkp = _pad_cols(torch.cat([v, k, p], -1), _round8(dv + d + dp))

    def run():
        o = _sdpa(q, k, vkp, scale)
        return o[..., :dv], o[..., dv : dv + d], o[..., dv + d : dv + d + dp]

    return run


def build_sdpa_two_calls(inp: Inputs, scale: float):
    q, k, v, p = (inp[n] for n in "qkvp")
    d, dp = k.shape[-1], p.shape[-1]
    kp = _pad_cols(torch.cat([k, p], -1), _round8(d + dp))

    def run():
        okp = _sdpa(q, k, kp, scale)
        return _sdpa(q, k, v, scale), okp[..., :d], okp[..., d : d + dp]

    return run


def build_sdpa_two_calls_padded_qk(inp: Inputs, scale: float):
    q, k, v, p = (inp[n] for n in "qkvp")
    d, dv, dp = k.shape[-1], v.shape[-1], p.shape[-1]
    if dv != d:
        raise NotApplicable("needs Dv == D for the first call")
    width = _round8(d + dp)
    k_pad, kp = _pad_cols(k, width), _pad_cols(torch.cat([k, p], -1), width)

    def run():
        okp = _sdpa(_pad_cols(q, width), k_pad, kp, scale)
        return _sdpa(q, k, v, scale), okp[..., :d], okp[..., d : d + dp]

    return run


def build_sdpa_three_calls(inp: Inputs, scale: float):
    q, k, v, p = (inp[n] for n in "qkvp")
    d, dv, dp = k.shape[-1], v.shape[-1], p.shape[-1]
    if dv != d:
        raise NotApplicable("needs Dv == D")
    p_pad = _pad_cols(p, d)

    def run():
        return _sdpa(q, k, v, scale), _sdpa(q, k, k, scale), _sdpa(q, k, p_pad, scale)[..., :dp]

    return run


def build_matmul(inp: Inputs, scale: float):
    q, k, v, p = (inp[n] for n in "qkvp")
    d, dv = k.shape[-1], v.shape[-1]
    vkp = torch.cat([v, k, p], -1)

    def run():
        s = torch.matmul(q, k.transpose(1, 2)).mul_(scale)  # (B, Lq, Lk)
        a = torch.softmax(s, -1, dtype=torch.float32).to(q.dtype)
        o = torch.matmul(a, vkp)
        return o[..., :dv], o[..., dv : dv + d], o[..., dv + d :]

    return run


def sdpa_backends() -> dict[str, object]:
    from torch.nn.attention import SDPBackend

    names = {
        "flash": "FLASH_ATTENTION",
        "cudnn": "CUDNN_ATTENTION",
        "efficient": "EFFICIENT_ATTENTION",
        "math": "MATH",
    }
    return {
        short: getattr(SDPBackend, attr)
        for short, attr in names.items()
        if hasattr(SDPBackend, attr)
    }


SDPA_STRATEGIES = {
    "1 call [V|K|P]": build_sdpa_one_call,
    "2 calls V; [K|P]": build_sdpa_two_calls,
    "2 calls V; [K|P], q,k padded": build_sdpa_two_calls_padded_qk,
    "3 calls V; K; P padded": build_sdpa_three_calls,
}


def forward_methods() -> list[Method]:
    methods = [Method("fused (triton)", "fused", build_fused)]
    for short, backend in sdpa_backends().items():
        for strategy, build in SDPA_STRATEGIES.items():
            methods.append(Method(f"sdpa-{short}: {strategy}", f"sdpa-{short}", build, backend))
    methods.append(Method("matmul + softmax", "matmul", build_matmul))
    return methods


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def make_timer(device: str, warmup_ms: int, rep_ms: int) -> Callable[..., float]:
    """fn -> milliseconds. GPU: the median of triton.testing.do_bench; CPU (smoke): one wall run."""
    if device == "cuda":
        from triton.testing import do_bench

        def gpu_time(fn, grad_to_none=None):
            return float(
                do_bench(
                    fn,
                    warmup=warmup_ms,
                    rep=rep_ms,
                    grad_to_none=grad_to_none,
                    return_mode="median",
                )
            )

        return gpu_time

    def cpu_time(fn, grad_to_none=None):
        # Only --smoke runs on a CPU, through triton's interpreter, and its times mean nothing:
        # one run shows the call works; warm-up and repeats would only run the interpreter again.
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    return cpu_time


def _rotating(calls: list[Callable]) -> Callable:
    cycle = itertools.cycle(calls)
    return lambda: next(cycle)()


def measure_matmul_peak(device: str, timer, smoke: bool) -> dict:
    n = 256 if smoke else 8192
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = timer(lambda: torch.matmul(a, b))
    return {"n": n, "dtype": str(dtype), "ms": ms, "tflops": 2.0 * n**3 / (ms * 1e-3) / 1e12}


def _error_text(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:300]}"


def _free(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def time_forward(
    case: Case, method: Method, sets: list[Inputs], ref: list, scale: float, timer, device
) -> dict:
    entry: dict = {"method": method.name, "family": method.family}
    try:
        calls = [method.build(inp, scale) for inp in sets]
        # SDPA warns for every backend that declines a shape; the error below says it once.
        with method.context(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            outs = calls[0]()
            errs = {
                n: rel_err(o, r)
                for n, o, r in zip(("out_v", "out_k", "out_p"), outs, ref, strict=True)
            }
            entry["rel_err"] = errs
            entry["valid"] = max(errs.values()) < VALID_TOL
            del outs
            entry["ms"] = timer(_rotating(calls))
        entry["tflops"] = case.flops_fwd / (entry["ms"] * 1e-3) / 1e12
    except NotApplicable as exc:
        entry["skipped"] = str(exc)
    except (RuntimeError, ValueError, TypeError, NotImplementedError, IWCodecError) as exc:
        # A backend that cannot run this shape raises here; record why and go on.
        entry["error"] = _error_text(exc)
    finally:
        calls = None
        _free(device)
    return entry


def time_fwdbwd(case: Case, sets: list[Inputs], scale: float, timer, device) -> dict:
    """Fused autograd vs the reference's autograd (bf16 inputs, float32 softmax inside)."""
    leaves = [{n: t.detach().clone().requires_grad_() for n, t in inp.items()} for inp in sets]
    g = torch.Generator(device=device).manual_seed(99)
    shapes = [
        (case.batch, case.lq, case.dv),
        (case.batch, case.lq, case.d),
        (case.batch, case.lq, case.dp),
    ]
    dtype = sets[0]["q"].dtype
    out_grads = [torch.randn(*s, device=device, generator=g).to(dtype) for s in shapes]
    all_leaves = [t for lv in leaves for t in lv.values()]
    result: dict = {}

    def caller(fn, lv):
        return lambda: torch.autograd.backward(fn(lv["q"], lv["k"], lv["v"], lv["p"]), out_grads)

    def fused(q, k, v, p):
        return warp_attention(q, k, v, p, scale=scale, backend="triton")

    def reference(q, k, v, p):
        return warp_attention_reference(q, k, v, p, None, scale)

    for name, fn in (("fused", fused), ("reference", reference)):
        try:
            if name == "fused":  # gradients checked once against float64
                caller(fn, leaves[0])()
                _, ref_grads = reference64(sets[0], scale, out_grads=out_grads)
                result["fused_grad_rel_err"] = {
                    f"d{n}": rel_err(leaves[0][n].grad, r)
                    for n, r in zip("qkvp", ref_grads, strict=True)
                }
                del ref_grads
            ms = timer(_rotating([caller(fn, lv) for lv in leaves]), grad_to_none=all_leaves)
            result[name] = {"ms": ms, "tflops": case.flops_fwdbwd / (ms * 1e-3) / 1e12}
        except (RuntimeError, ValueError, TypeError, IWCodecError) as exc:
            result[name] = {"error": _error_text(exc)}
        finally:
            for t in all_leaves:
                t.grad = None
            _free(device)
    if "ms" in result.get("fused", {}) and "ms" in result.get("reference", {}):
        result["speedup_vs_reference"] = result["reference"]["ms"] / result["fused"]["ms"]
    return result


def split_count(case: Case, device: str) -> int | None:
    """The key split count the launcher picks for this case (GPU only)."""
    if device != "cuda":
        return None
    from kernels import dispatch

    mod = dispatch._triton_module()
    width = mod._width_class(mod._pad(case.d), mod._pad(case.dv))
    blocks = case.batch * -(-case.lq // mod._NOMINAL_BLOCK_M[width])
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    return mod.choose_splits(blocks, case.lk, sms)


def run_case(case: Case, args, device: str, timer, peak: float, with_backward: bool) -> dict:
    dtype = torch.bfloat16
    scale = 1.0 / math.sqrt(case.d)
    sets = [make_inputs(case, device, dtype, seed=i) for i in range(args.rotate)]
    ref, _ = reference64(sets[0], scale)
    results = [time_forward(case, m, sets, ref, scale, timer, device) for m in forward_methods()]
    del ref
    fused = results[0]
    comps = [r for r in results[1:] if r.get("valid") and "ms" in r]
    best = min(comps, key=lambda r: r["ms"]) if comps else None
    summary: dict = {
        "case": {**asdict(case), "lk": case.lk},
        "flops_fwd": case.flops_fwd,
        "splits": split_count(case, device),
        "methods": results,
        "best_composition": best["method"] if best else None,
    }
    if "ms" in fused and best:
        summary["ratio_fused_over_best"] = fused["ms"] / best["ms"]
    if "tflops" in fused and peak:
        summary["fused_fraction_of_peak"] = fused["tflops"] / peak
    if with_backward:
        summary["fwdbwd"] = time_fwdbwd(case, sets, scale, timer, device)
        summary["flops_fwdbwd"] = case.flops_fwdbwd
    del sets
    _free(device)
    return summary


def time_plain_attention(case: Case, device: str, timer) -> dict:
    """One SDPA call q, k, V per backend (not the op: only for comparison with known anchors)."""
    inp = make_inputs(case, device, torch.bfloat16, seed=0)
    scale = 1.0 / math.sqrt(case.d)
    flops = 4.0 * case.batch * case.lq * case.lk * case.d
    out = {}
    from torch.nn.attention import sdpa_kernel

    for short, backend in sdpa_backends().items():
        try:
            with sdpa_kernel([backend]), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                ms = timer(lambda: _sdpa(inp["q"], inp["k"], inp["v"], scale))
            out[short] = {"ms": ms, "tflops": flops / (ms * 1e-3) / 1e12}
        except (RuntimeError, ValueError, TypeError) as exc:
            out[short] = {"error": _error_text(exc)}
        finally:
            _free(device)
    return out


# --------------------------------------------------------------------------------------------
# Correctness sweep (--check): the GPU tests without pytest
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckItem:
    case: Case
    dtype: str = "bfloat16"
    masked: bool = False
    grads: bool = False
    num_splits: int | None = None


CHECK_TOL = {"bfloat16": (1.5e-2, 5e-2), "float16": (3e-3, 1e-2), "float32": (5e-3, 1e-2)}


def check_items(smoke: bool) -> list[CheckItem]:
    if smoke:
        small = Case("smoke", 37, 50, 3, d=32, dv=48, extras=7)
        return [
            CheckItem(small, masked=True, grads=True),
            CheckItem(small, "float32", masked=True, grads=True, num_splits=2),
        ]
    items = []
    for lq in (4096, 16384):
        for n in (1, 2, 3):
            for masked in (False, True):
                items.append(CheckItem(Case(f"{lq}q N={n}", lq, lq, n), masked=masked))
    for n in (1, 2, 3):
        items.append(CheckItem(Case(f"4096q N={n}", 4096, 4096, n), masked=True, grads=True))
    items.append(CheckItem(Case("16384q N=1", 16384, 16384, 1), masked=True, grads=True))
    for dtype in ("float16", "float32"):
        items.append(CheckItem(Case("4096q N=2", 4096, 4096, 2), dtype, masked=True, grads=True))
    items.append(
        CheckItem(Case("4096q N=1 D=256", 4096, 4096, 1, d=256, dv=256), masked=True, grads=True)
    )
    items.append(CheckItem(Case("4096q N=1 B=8", 4096, 4096, 1, batch=8), masked=True, grads=True))
    for splits in (1, 2, 7):
        items.append(CheckItem(Case("4096q N=3", 4096, 4096, 3), masked=True, num_splits=splits))
    return items


def _check_bias(case: Case, device: str, seed: int) -> torch.Tensor:
    """Sample 0 drops its first source (N > 1); 20% of source keys dropped; extras kept."""
    g = torch.Generator(device=device).manual_seed(seed)
    drop = torch.rand(case.batch, case.lk, device=device, generator=g) < 0.2
    if case.n_src > 1:
        drop[0, : case.per_src] = True
    drop[:, case.per_src * case.n_src :] = False
    return torch.zeros(case.batch, case.lk, device=device).masked_fill(drop, float("-inf"))


def run_check(item: CheckItem, device: str) -> dict:
    dtype = getattr(torch, item.dtype)
    case = item.case
    scale = 1.0 / math.sqrt(case.d)
    inp = make_inputs(case, device, dtype, seed=case.lq + 10 * case.n_src + int(item.masked))
    if item.masked:
        inp["q"] = inp["q"] * 4  # peaky maps
    bias = _check_bias(case, device, 5) if item.masked else None
    leaves = {n: t.detach().requires_grad_(item.grads) for n, t in inp.items()}
    entry: dict = {**asdict(item), "case": {**asdict(case), "lk": case.lk}}
    try:
        outs = kernels.warp_attention_triton(
            leaves["q"],
            leaves["k"],
            leaves["v"],
            leaves["p"],
            bias,
            scale,
            num_splits=item.num_splits,
        )
        out_grads = [torch.randn_like(o) for o in outs] if item.grads else None
        ref, ref_grads = reference64(inp, scale, bias, out_grads)
        entry["rel_err"] = {
            n: rel_err(o, r) for n, o, r in zip(("out_v", "out_k", "out_p"), outs, ref, strict=True)
        }
        fwd_tol, grad_tol = CHECK_TOL[item.dtype]
        ok = max(entry["rel_err"].values()) < fwd_tol
        if item.grads:
            torch.autograd.backward(outs, out_grads)
            entry["grad_rel_err"] = {
                f"d{n}": rel_err(leaves[n].grad, r) for n, r in zip("qkvp", ref_grads, strict=True)
            }
            ok = ok and max(entry["grad_rel_err"].values()) < grad_tol
        entry["ok"] = ok
    except (RuntimeError, ValueError, TypeError, IWCodecError) as exc:
        entry["ok"] = False
        entry["error"] = _error_text(exc)
    finally:
        _free(device)
    return entry


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def environment(device: str) -> dict:
    """The run's environment (``kernels.environment``) and the attention backends here."""
    return {**kernels_environment(device), "backends_here": kernels.backends(device)}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_case(summary: dict, peak: float) -> None:
    c = summary["case"]
    print(f"\n== {c['label']}: B={c['batch']} Lq={c['lq']} Lk={c['lk']} D={c['d']} Dv={c['dv']} Dp={c['dp']}"
          f"  (key splits: {summary['splits']})")  # fmt: skip
    fused_ms = next((r.get("ms") for r in summary["methods"] if r["family"] == "fused"), None)
    print(
        f"{'method':44s} {'ms':>9s} {'TFLOP/s':>8s} {'%peak':>6s} {'x fused':>8s} {'max rel err':>11s}"
    )
    for r in summary["methods"]:
        if "ms" not in r:
            why = r.get("skipped") or r.get("error", "")
            print(f"{r['method']:44s} {'n/a':>9s}  {why[:90]}")
            continue
        mark = "" if r.get("valid") else "  (INVALID: wrong outputs)"
        rel = (r["ms"] / fused_ms) if fused_ms else None
        print(f"{r['method']:44s} {r['ms']:9.4f} {r['tflops']:8.1f} {100 * r['tflops'] / peak:6.1f} "
              f"{_fmt(rel, '8.2f')} {max(r['rel_err'].values()):11.2e}{mark}")  # fmt: skip
    print(f"best composition: {summary['best_composition']}; "
          f"fused/best = {_fmt(summary.get('ratio_fused_over_best'), '.3f')} (goal <= {GOAL_RATIO}); "
          f"fused = {_fmt(100 * summary['fused_fraction_of_peak'] if 'fused_fraction_of_peak' in summary else None, '.1f')}% "
          "of matmul peak")  # fmt: skip
    fb = summary.get("fwdbwd")
    if fb:
        for name in ("fused", "reference"):
            r = fb.get(name, {})
            text = (
                f"{r['ms']:.4f} ms, {r['tflops']:.1f} TFLOP/s" if "ms" in r else r.get("error", "")
            )
            print(f"fwd+bwd {name:9s}: {text}")
        if "fused_grad_rel_err" in fb:
            print(f"fwd+bwd fused grad rel err: {max(fb['fused_grad_rel_err'].values()):.2e}; "
                  f"speedup vs reference: {_fmt(fb.get('speedup_vs_reference'), '.2f')}x")  # fmt: skip


def goals(cases: list[dict]) -> dict:
    out = {}
    for s in cases:
        label = s["case"]["label"]
        g = {"ratio_le_0.8": None, "peak_ge_60pct": None}
        if "ratio_fused_over_best" in s:
            g["ratio_le_0.8"] = s["ratio_fused_over_best"] <= GOAL_RATIO
        if "fused_fraction_of_peak" in s and s["case"]["lq"] >= 16384:
            g["peak_ge_60pct"] = s["fused_fraction_of_peak"] >= GOAL_PEAK
        out[label] = g
    return out


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="folder for the JSON results")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_true", help="256^2 and 512^2 with N=1, shorter timing"
    )
    mode.add_argument(
        "--smoke", action="store_true", help="tiny shapes; on CPU via TRITON_INTERPRET=1"
    )
    ap.add_argument("--check", action="store_true", help="correctness sweep only, no timing")
    ap.add_argument("--rotate", type=int, default=None, help="input sets cycled while timing")
    ap.add_argument("--warmup-ms", type=int, default=None)
    ap.add_argument("--rep-ms", type=int, default=None)
    ap.add_argument("--no-backward", action="store_true", help="skip forward+backward timing")
    ap.add_argument(
        "--cases",
        type=lambda t: [c.strip() for c in t.split(",") if c.strip()],
        default=None,
        help="comma-separated case labels (e.g. '256px N=1,256px N=3'); default: the mode's",
    )
    ap.add_argument(
        "--fresh-processes",
        type=int,
        default=0,
        metavar="N",
        help="run the benchmark in N fresh processes and report median and spread per case",
    )
    args = ap.parse_args(argv)
    fast = args.quick or args.smoke
    args.rotate = args.rotate or (2 if fast else 4)
    args.warmup_ms = args.warmup_ms or (10 if fast else 25)
    args.rep_ms = args.rep_ms or (40 if fast else 100)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        if not args.smoke:
            print(
                "no CUDA device: only --smoke runs on the CPU (triton's interpreter)",
                file=sys.stderr,
            )
            return 2
        # Triton reads this when it is first imported, which has not happened yet here.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    select_cases(args)  # an unknown label fails before any child runs
    if args.fresh_processes:
        return _main_fresh(args, device)
    env = environment(device)
    print(
        f"device: {env['device']}  torch {env['torch']}  triton {env['triton']}  cuda {env['cuda']}"
    )
    name = slug(env["device"] if device == "cuda" else "cpu-smoke")
    if args.check:
        return _main_check(args, device, env, name)
    return _main_bench(args, device, env, name)


def select_cases(args) -> list[Case]:
    """The mode's cases, or those ``--cases`` names (from every list; IWCodecError if unknown)."""
    default = SMOKE_CASES if args.smoke else QUICK_CASES if args.quick else FULL_CASES
    if not args.cases:
        return default
    known = {c.label: c for c in [*FULL_CASES, *SMOKE_CASES]}
    unknown = [c for c in args.cases if c not in known]
    if unknown:
        raise IWCodecError(f"unknown case {unknown}; cases: {', '.join(known)}")
    return [known[c] for c in args.cases]


def _child_argv(args, out: Path) -> list[str]:
    """This run's options for one fresh child process (without --fresh-processes)."""
    argv = ["--out", str(out), "--rotate", str(args.rotate)]
    argv += ["--warmup-ms", str(args.warmup_ms), "--rep-ms", str(args.rep_ms)]
    for flag in ("quick", "smoke", "no_backward"):
        if getattr(args, flag):
            argv.append("--" + flag.replace("_", "-"))
    if args.cases:
        argv += ["--cases", ",".join(args.cases)]
    return argv


def spread_summary(reports: list[dict]) -> list[dict]:
    """Per case over the processes: fused ms, best composition ms, their ratio; median and
    spread (max - min) / median of each."""

    def stats(values: list[float]) -> dict:
        med = statistics.median(values)
        return {
            "values": values,
            "median": med,
            "spread": (max(values) - min(values)) / med if med else None,
        }

    out = []
    for i, case in enumerate(reports[0]["cases"]):
        per = [r["cases"][i] for r in reports]
        fused = [next(m["ms"] for m in c["methods"] if m["family"] == "fused") for c in per]
        best = [
            next(m["ms"] for m in c["methods"] if m["method"] == c["best_composition"]) for c in per
        ]
        ratio = [c["ratio_fused_over_best"] for c in per]
        out.append(
            {
                "case": case["case"],
                "fused_ms": stats(fused),
                "best_composition_ms": stats(best),
                "best_composition": [c["best_composition"] for c in per],
                "ratio_fused_over_best": stats(ratio),
                "goal_ratio_le_0.8": statistics.median(ratio) <= GOAL_RATIO,
                "goal_spread_le_10pct": stats(fused)["spread"] <= 0.10,
            }
        )
    return out


def _main_fresh(args, device: str) -> int:
    """The benchmark in N fresh processes (a result one process produced is not a result): one
    after another on a GPU, at the same time under the interpreter (benchmarks/fresh.py)."""
    import tempfile

    def done(i: int) -> None:
        print(f"process {i + 1}/{args.fresh_processes} done", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"p{i}" for i in range(args.fresh_processes)]
        argvs = [_child_argv(args, out) for out in outs]
        runs = fresh.run_module("benchmarks.attention", argvs, device == "cpu", done=done)
        for run in runs:
            if run.returncode != 0:
                print(run.stdout[-2000:], run.stderr[-3000:], file=sys.stderr)
                return run.returncode or 1
        reports = []
        for out in outs:
            (path,) = out.glob("attention_*.json")
            reports.append(json.loads(path.read_text()))
    env = reports[0]["environment"]
    summary = spread_summary(reports)
    print(
        f"\n{'case':22s} {'fused ms (median, spread)':28s} {'best PyTorch ms':18s} {'fused/best':>10s}"
    )
    for s in summary:
        f, b, r = s["fused_ms"], s["best_composition_ms"], s["ratio_fused_over_best"]
        print(f"{s['case']['label']:22s} {f['median']:9.4f} ({100 * f['spread']:5.1f} %)        "
              f"{b['median']:9.4f} ({100 * b['spread']:4.1f} %) {r['median']:10.3f}")  # fmt: skip
    name = slug(env["device"] if device == "cuda" else "cpu-smoke")
    path = args.out / f"attention_spread_{name}.json"
    result = {
        "environment": env,
        "command": "python -m benchmarks.attention " + " ".join(_child_argv(args, Path("DIR"))),
        "processes": args.fresh_processes,
        "cases": summary,
        "tuning": [r.get("tuning", {}) for r in reports],
        "runs": reports,
    }
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return 0


def _main_check(args, device: str, env: dict, name: str) -> int:
    results = []
    for item in check_items(args.smoke):
        entry = run_check(item, device)
        results.append(entry)
        errs = {**entry.get("rel_err", {}), **entry.get("grad_rel_err", {})}
        worst = max(errs.values()) if errs else None
        print(f"{'ok  ' if entry['ok'] else 'FAIL'} {item.case.label:18s} {item.dtype:9s} "
              f"bias={item.masked!s:5s} grads={item.grads!s:5s} splits={item.num_splits!s:4s} "
              f"worst rel err {_fmt(worst, '.2e')} {entry.get('error', '')}")  # fmt: skip
    path = args.out / f"attention_check_{name}.json"
    path.write_text(json.dumps({"environment": env, "results": results}, indent=2))
    failed = sum(not r["ok"] for r in results)
    print(f"{len(results) - failed}/{len(results)} passed; wrote {path}")
    return 1 if failed else 0


def _main_bench(args, device: str, env: dict, name: str) -> int:
    timer = make_timer(device, args.warmup_ms, args.rep_ms)
    peak = measure_matmul_peak(device, timer, args.smoke)
    print(f"matmul peak ({peak['n']}^3 {peak['dtype']}): {peak['tflops']:.1f} TFLOP/s")
    cases = select_cases(args)
    summaries = []
    for i, case in enumerate(cases):
        with_backward = not args.no_backward and (i == 0 or not args.quick)
        summary = run_case(case, args, device, timer, peak["tflops"], with_backward)
        summaries.append(summary)
        print_case(summary, peak["tflops"])
    anchors = {}
    if not args.smoke:
        for case in (c for c in cases if c.d == 256):
            anchors[case.label] = time_plain_attention(case, device, timer)
    tuning = {}
    if device == "cuda":
        from kernels import dispatch

        tuning = dispatch._triton_module().tuning_report()
    report = {
        "environment": env,
        "mode": "smoke" if args.smoke else "quick" if args.quick else "full",
        "timing": {"warmup_ms": args.warmup_ms, "rep_ms": args.rep_ms, "rotate": args.rotate,
                   "note": "timings meaningless in smoke mode" if args.smoke else "do_bench median"},
        "matmul_peak": peak,
        "cases": summaries,
        "plain_attention_anchors": anchors,
        "goals": goals(summaries),
        "tuning": tuning,
        "pinned": {"provenance": pinned_table.PROVENANCE, "rows": len(pinned_table.ENTRIES)},
    }  # fmt: skip
    path = args.out / f"attention_{name}.json"
    path.write_text(json.dumps(report, indent=2))
    if anchors:
        print("\nplain attention (q, k, V only; for the anchors):")
        for label, per in anchors.items():
            for short, r in per.items():
                text = f"{r['ms']:.4f} ms, {r['tflops']:.1f} TFLOP/s" if "ms" in r else r["error"]
                print(f"  {label:18s} sdpa-{short:10s} {text}")
    print(f"\ngoals: {json.dumps(report['goals'])}\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
