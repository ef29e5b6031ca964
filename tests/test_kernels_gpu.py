"""Fused attention at the model's real shapes on a CUDA GPU, against the float64 reference.

256x256 frames give 64x64 = 4096 queries and 4096 keys per source, 512x512 give 16384; the
model adds 400 learned extra keys. D = Dv = 128, Dp = 3, batch 1 (8 in training).
Run: ``PYTHONPATH=. python3 -m pytest tests/test_kernels_gpu.py -q`` (skipped without CUDA).
"""

from __future__ import annotations

import pytest
import torch

import kernels.dispatch as dispatch
from kernels import warp_attention, warp_attention_reference, warp_attention_triton

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

EXTRAS = 400
# ||out - ref|| / ||ref||: 16-bit inputs round the probabilities before A V; float32 inputs
# use tf32 dots (10-bit mantissa). Gradients get more room: delta = rowsum(dO * O) is read off
# the rounded outputs, and dA - delta cancels on the dominant key of a peaky row.
FWD_TOL = {torch.bfloat16: 1.5e-2, torch.float16: 3e-3, torch.float32: 5e-3}
GRAD_TOL = {torch.bfloat16: 5e-2, torch.float16: 1e-2, torch.float32: 1e-2}
QUERY_CHUNK = 4096  # the reference runs on query chunks: rows are independent, memory is not


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm()).item()


def make_case(
    lq, per_src, n_src, *, dtype=torch.bfloat16, batch=1, d=128, dv=128, masked=False, seed=0
):
    """(q, k, v, p, key_bias) on the GPU; with masked, sample 0 drops its first source (if it
    has more than one) and 20% of all source keys; the extras always stay."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    lk = per_src * n_src + EXTRAS
    sharp = 4.0 if masked else 1.0  # peaky maps, as the paper observes, in the masked cases

    def randn(*shape):
        return torch.randn(*shape, device="cuda", generator=g)

    q = (randn(batch, lq, d) * sharp).to(dtype)
    k, v = randn(batch, lk, d).to(dtype), randn(batch, lk, dv).to(dtype)
    p = torch.rand(batch, lk, 3, device="cuda", generator=g).to(dtype)
    bias = None
    if masked:
        drop = torch.rand(batch, lk, device="cuda", generator=g) < 0.2
        if n_src > 1:
            drop[0, :per_src] = True
        drop[:, per_src * n_src :] = False
        bias = torch.zeros(batch, lk, device="cuda").masked_fill(drop, float("-inf"))
    return q, k, v, p, bias


def reference64(q, k, v, p, bias, out_grads=None):
    """Float64 reference outputs and, given output gradients, input gradients (chunked)."""
    leaves = [t.detach().double().requires_grad_(out_grads is not None) for t in (q, k, v, p)]
    b64 = None if bias is None else bias.double()
    outs = [[], [], []]
    for start in range(0, q.shape[1], QUERY_CHUNK):
        rows = slice(start, start + QUERY_CHUNK)
        with torch.set_grad_enabled(out_grads is not None):
            chunk = warp_attention_reference(leaves[0][:, rows], *leaves[1:], b64)
            if out_grads is not None:
                torch.autograd.backward(chunk, [g[:, rows].double() for g in out_grads])
        for acc, o in zip(outs, chunk, strict=True):
            acc.append(o.detach())
    outs = [torch.cat(o, 1) for o in outs]
    grads = None if out_grads is None else [t.grad for t in leaves]
    return outs, grads


def check(case, dtype, *, grads: bool, **launch):
    q, k, v, p, bias = case
    ins = [t.requires_grad_(grads) for t in (q, k, v, p)]
    outs = warp_attention_triton(*ins, bias, **launch)
    out_grads = [torch.randn_like(o) for o in outs] if grads else None
    ref_outs, ref_grads = reference64(*ins, bias, out_grads)
    errs = {}
    for name, out, ref in zip(("out_v", "out_k", "out_p"), outs, ref_outs, strict=True):
        assert out.dtype == dtype and out.shape == ref.shape
        errs[name] = rel_err(out, ref)
    assert all(e < FWD_TOL[dtype] for e in errs.values()), errs
    if grads:
        torch.autograd.backward(outs, out_grads)
        gerrs = {
            f"d{n}": rel_err(t.grad, r) for n, t, r in zip("qkvp", ins, ref_grads, strict=True)
        }
        assert all(e < GRAD_TOL[dtype] for e in gerrs.values()), gerrs


@pytest.mark.parametrize("lq", [4096, 16384], ids=["256px", "512px"])
@pytest.mark.parametrize("n_src", [1, 2, 3])
@pytest.mark.parametrize("masked", [False, True], ids=["nobias", "bias"])
def test_forward_real_shapes(lq, n_src, masked):
    case = make_case(lq, lq, n_src, masked=masked, seed=n_src)
    check(case, torch.bfloat16, grads=False)


@pytest.mark.parametrize(
    "lq, n_src",
    [(4096, 1), (4096, 2), (4096, 3), (16384, 1)],
    ids=["256px-1", "256px-2", "256px-3", "512px-1"],
)
def test_gradients_real_shapes(lq, n_src):
    check(make_case(lq, lq, n_src, masked=True, seed=10 + n_src), torch.bfloat16, grads=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_other_dtypes(dtype):
    check(make_case(4096, 4096, 2, dtype=dtype, masked=True), dtype, grads=True)


def test_wide_heads():
    """D = Dv = 256, the widest the kernels take."""
    check(make_case(4096, 4096, 1, d=256, dv=256, masked=True), torch.bfloat16, grads=True)


def test_training_batch():
    check(make_case(4096, 4096, 1, batch=8, masked=True), torch.bfloat16, grads=True)


@pytest.mark.parametrize("num_splits", [1, 2, 7])
def test_forced_split_counts(num_splits):
    """Unsplit and odd split counts at batch 1 (the automatic choice is 4 on 132 SMs)."""
    check(make_case(4096, 4096, 3, masked=True), torch.bfloat16, grads=False, num_splits=num_splits)


def test_auto_picks_triton_on_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(dispatch, "warp_attention_reference", lambda *a, **kw: calls.append(1))
    q, k, v, p, bias = make_case(256, 300, 1)
    out_v, out_k, out_p = warp_attention(q, k, v, p, bias)
    assert calls == [] and out_v.shape == (1, 256, 128) and out_p.shape == (1, 256, 3)
    assert dispatch.backends("cuda")["triton"] is None
