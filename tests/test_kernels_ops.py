"""The warp attention as a torch.library custom op (kernels/ops.py), on the CPU.

torch.library.opcheck checks the schema, the fake (meta) implementation, the autograd
registration and AOT dispatch; a compiled function that calls the op must give the eager
results and gradients; kernels.warp_attention must trace without graph breaks.
"""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels import warp_attention_reference
from kernels.ops import warp_attention_backward_op, warp_attention_op

LOG2E = 1.4426950408889634


def inputs(batch=2, lq=5, lk=7, d=8, dv=6, dp=3, grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    ts = (
        torch.randn(batch, lq, d, generator=g),
        torch.randn(batch, lk, d, generator=g),
        torch.randn(batch, lk, dv, generator=g),
        torch.rand(batch, lk, dp, generator=g),
    )
    return tuple(t.requires_grad_(grad) for t in ts)


def bias(batch=2, lk=7):
    b = torch.zeros(batch, lk)
    b[0, :3] = float("-inf")  # sample 0 drops three keys
    return b


@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
def test_opcheck(with_bias):
    q, k, v, p = inputs(grad=True)
    torch.library.opcheck(
        warp_attention_op, (q, k, v, p, bias() if with_bias else None, 0.4, False)
    )


def test_opcheck_broadcast_keys():
    q = inputs(batch=3)[0].requires_grad_(True)
    _, k, v, p = inputs(batch=1, grad=True)
    torch.library.opcheck(warp_attention_op, (q, k, v, p, None, 0.35, False))


def test_opcheck_backward_op():
    q, k, v, p = inputs()
    out_v, out_k, out_p, lse = warp_attention_op(q, k, v, p, None, 0.3, False)
    grads = tuple(torch.randn_like(o) for o in (out_v, out_k, out_p))
    args = (q, k, v, p, None, 0.3, out_v, out_k, out_p, lse, *grads)
    torch.library.opcheck(warp_attention_backward_op, args)


def test_op_is_the_reference_and_lse_is_log2_of_the_denominator():
    q, k, v, p = inputs()
    b = bias()
    out_v, out_k, out_p, lse = torch.ops.iwcodec.warp_attention(q, k, v, p, b, 0.4, False)
    for got, ref in zip((out_v, out_k, out_p), warp_attention_reference(q, k, v, p, b, 0.4)):
        torch.testing.assert_close(got, ref)
    logits = q @ k.transpose(1, 2) * 0.4 + b[:, None]
    torch.testing.assert_close(lse, torch.logsumexp(logits, -1) * LOG2E)


def test_gradients_match_the_reference():
    q, k, v, p = inputs(grad=True)
    outs = torch.ops.iwcodec.warp_attention(q, k, v, p, bias(), 0.4, False)[:3]
    seeds = [torch.randn_like(o) for o in outs]
    got = torch.autograd.grad(outs, (q, k, v, p), seeds)
    ref = torch.autograd.grad(
        warp_attention_reference(q, k, v, p, bias(), 0.4), (q, k, v, p), seeds
    )
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b)


def test_compiled_call_of_the_op_equals_eager():
    """aot_eager: dynamo and AOT autograd around the opaque op (no C++ compiler needed)."""

    def fn(q, k, v, p, key_bias):
        out_v, out_k, out_p, _ = torch.ops.iwcodec.warp_attention(q, k, v, p, key_bias, 0.4, False)
        return (out_v * 2).sum() + out_k.square().mean() + out_p.sum()

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    eager_in, compiled_in = inputs(grad=True), inputs(grad=True)
    expected = fn(*eager_in, bias())
    got = compiled(*compiled_in, bias())
    torch.testing.assert_close(got, expected)
    expected.backward()
    got.backward()
    for a, b in zip(compiled_in, eager_in, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_public_entry_traces_without_graph_breaks_on_cpu():
    """Under torch.compile, CPU inputs take the reference (traced), whatever the backend."""

    def fn(q, k, v, p):
        return kernels.warp_attention(q, k, v, p, scale=0.4, backend="auto")

    q, k, v, p = inputs()
    got = torch.compile(fn, backend="eager", fullgraph=True)(q, k, v, p)
    for a, b in zip(got, warp_attention_reference(q, k, v, p, None, 0.4), strict=True):
        torch.testing.assert_close(a, b)
