"""Plain-torch reference of the implicit-warping attention (the op the Triton kernels match).

Implicit warping (Mallya et al., NeurIPS 2022, section 3, eq. 1 and Fig. 3) applies one
softmax over the keys to two value sets:

    A     = softmax(Q K^T * scale + key_bias)          # (B, Lq, Lk)
    out_v = A V                                         # warped source features
    out_k = A K                                         # warped keys     } the residual
    out_p = A P                                         # warped pixels   } branch's input

Keys are those of 1..N source images concatenated, plus the learned extra key/value pairs;
``key_bias`` (0 or -inf per key) drops keys (semantic dropout, padding).

Shapes:
    q: (B, Lq, D)      k: (B, Lk, D)      v: (B, Lk, Dv)      p: (B, Lk, Dp)
    key_bias: (B, Lk) float or None
    returns out_v (B, Lq, Dv), out_k (B, Lq, D), out_p (B, Lq, Dp)
"""

from __future__ import annotations

import math

import torch


def default_scale(d: int) -> float:
    """The paper's scaling factor c of eq. 1, taken as sqrt(d) (Vaswani et al.)."""
    return 1.0 / math.sqrt(d)


def warp_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    p: torch.Tensor,
    key_bias: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference implementation; softmax in float32 (float64 if the inputs are float64)."""
    if scale is None:
        scale = default_scale(q.shape[-1])
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale  # (B, Lq, Lk)
    if key_bias is not None:
        s = s + key_bias.to(acc)[:, None, :]
    a = torch.softmax(s, dim=-1)
    out_v = torch.matmul(a, v.to(acc)).to(v.dtype)
    out_k = torch.matmul(a, k.to(acc)).to(k.dtype)
    out_p = torch.matmul(a, p.to(acc)).to(p.dtype)
    return out_v, out_k, out_p
