"""The warp attention as a ``torch.library`` custom op, so a compiled model treats it as one
opaque op instead of tracing into the Triton launcher.

Why: ``torch.compile(model.render, mode="reduce-overhead")`` failed while Inductor tried to
compile our own Triton kernel (``_fwd_kernel`` at ``tl.dot``; issue 20). As a custom op with a
fake (meta) implementation the compiler only needs output shapes, and runs our kernels as they
are at run time.

    torch.ops.iwcodec.warp_attention(q, k, v, p, key_bias, scale, strict)
        -> (out_v (B, Lq, Dv), out_k (B, Lq, D), out_p (B, Lq, Dp), lse (B, Lq) float32)

is ``kernels.warp_attention`` (the contract is ``kernels/reference.py``); ``lse`` (log2 of the
softmax denominators, logits in log2 units) is what the backward needs, an output only because
a custom op keeps no other state between forward and backward. Batch sizes of 1 broadcast.

Implementations: CUDA tensors run the fused Triton kernels (with ``strict`` False falling back
to the reference where they cannot run, as backend "auto" does); every other device runs the
reference. The backward is a second custom op, ``iwcodec::warp_attention_backward`` (Triton
on CUDA, the reference's autograd elsewhere); key_bias gets no gradient (a 0/-inf mask).

``kernels.warp_attention`` calls this op only while ``torch.compile`` traces (eager calls go
straight to the launcher and skip the dispatcher's overhead); tests call it directly.

Both ops give their schema as text, so it does not depend on how a torch version reads type
hints (tested beside torch 2.11 and 2.13).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kernels.reference import warp_attention_reference

_LOG2E = 1.4426950408889634


def _batch(*tensors: Tensor | None) -> int:
    return max(t.shape[0] for t in tensors if t is not None)


def _reference_with_lse(q, k, v, p, key_bias, scale):
    """The reference's outputs and lse (log2 units), broadcast to the common batch."""
    bsz = _batch(q, k, v, p, key_bias)
    outs = warp_attention_reference(q, k, v, p, key_bias, scale)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale  # (B, Lq, Lk)
    if key_bias is not None:
        s = s + key_bias.to(acc)[:, None, :]
    lse = (torch.logsumexp(s, -1) * _LOG2E).float()  # (B, Lq)
    outs = tuple(o.expand(bsz, -1, -1).contiguous() for o in outs)
    return (*outs, lse.expand(bsz, -1).contiguous())


def _triton_problem(q, k, v, p, key_bias) -> str | None:
    from kernels import dispatch

    return dispatch._triton_problem(q, k, v, p, key_bias, allow_interpreter=False)


def _expanded(q, k, v, p, key_bias):
    """Inputs as the kernels take them: one batch (stride-0 views), unit last strides."""
    bsz = _batch(q, k, v, p, key_bias)

    def unit(t: Tensor) -> Tensor:
        return t if t.stride(-1) == 1 else t.contiguous()

    q, k, v, p = (unit(t).expand(bsz, -1, -1) for t in (q, k, v, p))
    if key_bias is not None:
        key_bias = unit(key_bias).expand(bsz, -1)
    return q, k, v, p, key_bias


@torch.library.custom_op(
    "iwcodec::warp_attention",
    mutates_args=(),
    schema="(Tensor q, Tensor k, Tensor v, Tensor p, Tensor? key_bias, float scale, bool strict)"
    " -> (Tensor, Tensor, Tensor, Tensor)",
)
def warp_attention_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    p: Tensor,
    key_bias: Tensor | None,
    scale: float,
    strict: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Any device but CUDA: the reference (see the module docstring)."""
    return _reference_with_lse(q, k, v, p, key_bias, scale)


@warp_attention_op.register_kernel("cuda")
def _warp_attention_cuda(q, k, v, p, key_bias, scale, strict):
    problem = _triton_problem(q, k, v, p, key_bias)
    if problem is not None:
        if strict:
            from iwcodec.errors import BackendUnavailableError

            raise BackendUnavailableError(
                f"the Triton attention backend cannot run here: {problem}"
            )
        return _reference_with_lse(q, k, v, p, key_bias, scale)
    from kernels import dispatch

    module = dispatch._triton_module()
    q, k, v, p, key_bias = _expanded(q, k, v, p, key_bias)
    with torch.cuda.device(q.device):
        return module.forward(q, k, v, p, key_bias, scale)


@warp_attention_op.register_fake
def _warp_attention_fake(q, k, v, p, key_bias, scale, strict):
    bsz = _batch(q, k, v, p, key_bias)
    lq = q.shape[1]
    return (
        v.new_empty((bsz, lq, v.shape[2])),
        k.new_empty((bsz, lq, k.shape[2])),
        p.new_empty((bsz, lq, p.shape[2])),
        q.new_empty((bsz, lq), dtype=torch.float32),
    )


@torch.library.custom_op(
    "iwcodec::warp_attention_backward",
    mutates_args=(),
    schema="(Tensor q, Tensor k, Tensor v, Tensor p, Tensor? key_bias, float scale, "
    "Tensor out_v, Tensor out_k, Tensor out_p, Tensor lse, Tensor do_v, Tensor do_k, "
    "Tensor do_p) -> (Tensor, Tensor, Tensor, Tensor)",
)
def warp_attention_backward_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    p: Tensor,
    key_bias: Tensor | None,
    scale: float,
    out_v: Tensor,
    out_k: Tensor,
    out_p: Tensor,
    lse: Tensor,
    do_v: Tensor,
    do_k: Tensor,
    do_p: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Any device but CUDA: gradients of the reference (recomputed), shaped like q, k, v, p."""
    return _reference_backward(q, k, v, p, key_bias, scale, do_v, do_k, do_p)


@warp_attention_backward_op.register_kernel("cuda")
def _warp_attention_backward_cuda(
    q, k, v, p, key_bias, scale, out_v, out_k, out_p, lse, do_v, do_k, do_p
):
    if _triton_problem(q, k, v, p, None) is not None:
        return _reference_backward(q, k, v, p, key_bias, scale, do_v, do_k, do_p)
    from kernels import dispatch

    module = dispatch._triton_module()
    shapes = [t.shape for t in (q, k, v, p)]
    xq, xk, xv, xp, xbias = _expanded(q, k, v, p, key_bias)
    with torch.cuda.device(q.device):
        grads = module.backward(
            xq, xk, xv, xp, xbias, scale, (out_v, out_k, out_p), lse, (do_v, do_k, do_p)
        )
    # a broadcast input (batch 1) gets the sum of its batch's gradients
    return tuple(
        g.sum(0, keepdim=True) if shape[0] == 1 and g.shape[0] != 1 else g
        for g, shape in zip(grads, shapes, strict=True)
    )


def _reference_backward(q, k, v, p, key_bias, scale, do_v, do_k, do_p):
    """Gradients of the reference's outputs, written out (an op's implementation runs below
    autograd, so it cannot differentiate the reference): float32 (float64 for float64 inputs),
    results in the input dtypes and batch sizes (a broadcast input gets its batch's sum).

        dA = dO_v V^T + dO_k K^T + dO_p P^T,   dS = A * (dA - rowsum(A * dA))
        dQ = scale dS K,   dK = scale dS^T Q + A^T dO_k,   dV = A^T dO_v,   dP = A^T dO_p
    """
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qa, ka, va, pa = (t.to(acc) for t in (q, k, v, p))
    gv, gk, gp = (t.to(acc) for t in (do_v, do_k, do_p))
    s = torch.matmul(qa, ka.transpose(-1, -2)) * scale  # (B, Lq, Lk)
    if key_bias is not None:
        s = s + key_bias.to(acc)[:, None, :]
    a = torch.softmax(s, dim=-1)
    da = gv @ va.transpose(-1, -2) + gk @ ka.transpose(-1, -2) + gp @ pa.transpose(-1, -2)
    ds = a * (da - (a * da).sum(-1, keepdim=True))
    at = a.transpose(-1, -2)
    grads = (
        scale * ds @ ka,
        scale * ds.transpose(-1, -2) @ qa + at @ gk,
        at @ gv,
        at @ gp,
    )
    return tuple(
        (g.sum(0, keepdim=True) if t.shape[0] == 1 and g.shape[0] != 1 else g).to(t.dtype)
        for g, t in zip(grads, (q, k, v, p), strict=True)
    )


@warp_attention_backward_op.register_fake
def _warp_attention_backward_fake(
    q, k, v, p, key_bias, scale, out_v, out_k, out_p, lse, do_v, do_k, do_p
):
    return tuple(torch.empty_like(t) for t in (q, k, v, p))


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, p, key_bias, scale, _strict = inputs
    out_v, out_k, out_p, lse = output
    ctx.save_for_backward(q, k, v, p, key_bias, out_v, out_k, out_p, lse)
    ctx.scale = scale


def _backward(ctx, do_v, do_k, do_p, _dlse):
    q, k, v, p, key_bias, out_v, out_k, out_p, lse = ctx.saved_tensors
    grads = [
        torch.zeros_like(o) if g is None else g.contiguous()
        for g, o in zip((do_v, do_k, do_p), (out_v, out_k, out_p), strict=True)
    ]
    dq, dk, dv, dp = warp_attention_backward_op(
        q, k, v, p, key_bias, ctx.scale, out_v, out_k, out_p, lse, *grads
    )
    return dq, dk, dv, dp, None, None, None


warp_attention_op.register_autograd(_backward, setup_context=_setup_context)


def warp_attention_compiled(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    p: Tensor,
    key_bias: Tensor | None,
    scale: float | None,
    strict: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """What ``kernels.warp_attention`` runs under ``torch.compile``: the op's three outputs."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    out_v, out_k, out_p, _ = warp_attention_op(q, k, v, p, key_bias, scale, strict)
    return out_v, out_k, out_p


__all__ = ["warp_attention_backward_op", "warp_attention_compiled", "warp_attention_op"]
