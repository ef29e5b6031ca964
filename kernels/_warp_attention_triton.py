"""Triton kernels of the implicit-warping attention (forward, split-K reduce, backward).

The op (Mallya et al., NeurIPS 2022, section 3, eq. 1; the contract is ``kernels/reference.py``):

    A     = softmax(Q K^T * scale + key_bias)       # (B, Lq, Lk)
    out_v = A V,   out_k = A K,   out_p = A P

Forward: one pass over the keys with an online softmax (Milakov & Gimelshein 2018; Dao et al.
2022), three accumulators that share the probabilities, and the K tile loaded for the logits
reused as the value tile of ``out_k``. When too few query blocks exist to fill the GPU (batch 1,
Lq = 4096), the keys are split into chunks (flash-decoding): each program writes its partial
(m, l, acc) and ``_reduce_kernel`` combines them.

Backward (FlashAttention-2 style, recomputing A from the saved log-sum-exp):

    dA    = dO_v V^T + dO_k K^T + dO_p P^T                        # (B, Lq, Lk)
    delta = rowsum(dO_v * out_v + dO_k * out_k + dO_p * out_p)    # (B, Lq)
    dS    = A * (dA - delta)
    dQ = scale dS K,   dV = A^T dO_v,   dP = A^T dO_p,   dK = A^T dO_k + scale dS^T Q

``_bwd_dkdv_kernel`` owns a key block and walks the queries; ``_bwd_dq_kernel`` owns a query
block and walks the keys (no atomics, deterministic).

This module imports triton at the top; ``kernels.dispatch`` imports it on first use. Triton
decides between compiling and interpreting (TRITON_INTERPRET=1) when functions are decorated,
its own ``tl.zeros``, ``tl.max``... included: the variable must be set before triton is first
imported, and ``mode_problem`` tells when it was not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from kernels import pinned

_LOG2E = 1.4426950408889634

# Keys per split are a multiple of this (and of every forward BLOCK_N), so only the
# last split has a partial key block.
_SPLIT_GRANULE = 128
# A split must keep at least this many granules, or its fixed costs (loading the query tile,
# writing fp32 partials) outweigh the parallelism gained.
_MIN_GRANULES_PER_SPLIT = 4
_MAX_SPLITS = 32


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _load_tile(ptrs, row_mask, offs_c, C: tl.constexpr, C_PAD: tl.constexpr, UPCAST: tl.constexpr):
    """Rows where row_mask, columns < C; zeros in the padding that tl.dot needs.

    UPCAST (interpreter only): triton's interpreter keeps bfloat16 as raw uint16 bits and
    computes garbage in tl.dot, so 16-bit operands are widened to float32 after loading.
    """
    if C == C_PAD:
        tile = tl.load(ptrs, mask=row_mask[:, None], other=0.0)
    else:
        tile = tl.load(ptrs, mask=row_mask[:, None] & (offs_c[None, :] < C), other=0.0)
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _operand(x, dtype: tl.constexpr, UPCAST: tl.constexpr):
    """x rounded to the input dtype for tl.dot (kept widened to float32 under UPCAST)."""
    y = x.to(dtype)
    if UPCAST:
        y = y.to(tl.float32)
    return y


@triton.jit
def _store_tile(ptrs, val, row_mask, offs_c, C: tl.constexpr, C_PAD: tl.constexpr):
    if C == C_PAD:
        tl.store(ptrs, val, mask=row_mask[:, None])
    else:
        tl.store(ptrs, val, mask=row_mask[:, None] & (offs_c[None, :] < C))


@triton.jit
def _fwd_kernel(
    Q,
    K,
    V,
    P,
    Bias,
    OutV,
    OutK,
    OutP,
    Lse,
    Part,
    PartM,
    PartL,
    stride_qb,
    stride_qm,
    stride_kb,
    stride_kn,
    stride_vb,
    stride_vn,
    stride_pb,
    stride_pn,
    stride_bb,
    Lq,
    Lk,
    chunk,
    n_batch,
    qk_scale,
    D: tl.constexpr,
    DV: tl.constexpr,
    DP: tl.constexpr,
    D_PAD: tl.constexpr,
    DV_PAD: tl.constexpr,
    DP_PAD: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SPLIT: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One query block against the keys [pid_s * chunk, (pid_s + 1) * chunk).

    Logits are kept in log2 units (qk_scale = scale * log2 e) so the softmax uses exp2.
    SPLIT: write unnormalized fp32 partials (acc, m, l); else the normalized outputs and lse.
    """
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    offs_dp = tl.arange(0, DP_PAD)
    mask_m = offs_m < Lq

    q_ptrs = Q + pid_b * stride_qb + offs_m[:, None] * stride_qm + offs_d[None, :]
    q = _load_tile(q_ptrs, mask_m, offs_d, D, D_PAD, UPCAST)  # (BLOCK_M, D_PAD)
    k_base = K + pid_b * stride_kb
    v_base = V + pid_b * stride_vb
    p_base = P + pid_b * stride_pb

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc_v = tl.zeros([BLOCK_M, DV_PAD], tl.float32)
    acc_k = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    acc_p = tl.zeros([BLOCK_M, DP_PAD], tl.float32)

    lo = pid_s * chunk
    hi = tl.minimum(lo + chunk, Lk)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        mask_n = offs_n < hi
        k = _load_tile(
            k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask_n, offs_d, D, D_PAD, UPCAST
        )  # (BLOCK_N, D_PAD)
        # Issued before the logits so their latency hides behind them: P's rows (3 values)
        # are too narrow for the asynchronous copies that pipeline K and V.
        v = _load_tile(
            v_base + offs_n[:, None] * stride_vn + offs_dv[None, :],
            mask_n,
            offs_dv,
            DV,
            DV_PAD,
            UPCAST,
        )  # (BLOCK_N, DV_PAD)
        pp = _load_tile(
            p_base + offs_n[:, None] * stride_pn + offs_dp[None, :],
            mask_n,
            offs_dp,
            DP,
            DP_PAD,
            UPCAST,
        )  # (BLOCK_N, DP_PAD)
        s = tl.dot(q, tl.trans(k)) * qk_scale  # (BLOCK_M, BLOCK_N)
        if HAS_BIAS:
            bias = tl.load(Bias + pid_b * stride_bb + offs_n, mask=mask_n, other=0.0)
            s += bias.to(tl.float32)[None, :] * 1.4426950408889634
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row whose keys so far are all masked has m_new = -inf; shifting by 0 instead keeps
        # exp2(-inf - m) = 0 rather than NaN (a fully masked source in this chunk).
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_use)
        pr = tl.exp2(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(pr, 1)
        m_i = m_new
        pb = _operand(pr, Q.dtype.element_ty, UPCAST)
        acc_v = tl.dot(pb, v, acc_v * alpha[:, None])
        acc_k = tl.dot(pb, k, acc_k * alpha[:, None])
        acc_p = tl.dot(pb, pp, acc_p * alpha[:, None])

    if SPLIT:
        row = (pid_s * n_batch + pid_b) * Lq + offs_m  # row of the (S, B, Lq) partials
        base = Part + row[:, None] * (DV_PAD + D_PAD + DP_PAD)
        tl.store(base + offs_dv[None, :], acc_v, mask=mask_m[:, None])
        tl.store(base + DV_PAD + offs_d[None, :], acc_k, mask=mask_m[:, None])
        tl.store(base + DV_PAD + D_PAD + offs_dp[None, :], acc_p, mask=mask_m[:, None])
        tl.store(PartM + row, m_i, mask=mask_m)
        tl.store(PartL + row, l_i, mask=mask_m)
    else:
        row = pid_b * Lq + offs_m
        inv_l = 1.0 / l_i
        _store_tile(
            OutV + row[:, None] * DV + offs_dv[None, :],
            (acc_v * inv_l[:, None]).to(OutV.dtype.element_ty),
            mask_m,
            offs_dv,
            DV,
            DV_PAD,
        )
        _store_tile(
            OutK + row[:, None] * D + offs_d[None, :],
            (acc_k * inv_l[:, None]).to(OutK.dtype.element_ty),
            mask_m,
            offs_d,
            D,
            D_PAD,
        )
        _store_tile(
            OutP + row[:, None] * DP + offs_dp[None, :],
            (acc_p * inv_l[:, None]).to(OutP.dtype.element_ty),
            mask_m,
            offs_dp,
            DP,
            DP_PAD,
        )
        tl.store(Lse + row, m_i + tl.log2(l_i), mask=mask_m)


@triton.jit
def _combine_into(
    Out,
    Part,
    PartM,
    row0,
    split_stride,
    n_splits,
    m_use,
    inv_l,
    mask_r,
    col0: tl.constexpr,
    C: tl.constexpr,
    C_PAD: tl.constexpr,
    W: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """Out rows = sum_s exp2(m_s - m) acc_s / l over the splits, for one column group."""
    offs_c = tl.arange(0, C_PAD)
    acc = tl.zeros([BLOCK_R, C_PAD], tl.float32)
    for s in range(0, n_splits):
        r = row0 + s * split_stride
        w = tl.exp2(tl.load(PartM + r, mask=mask_r, other=float("-inf")) - m_use)
        part = tl.load(
            Part + r[:, None] * W + col0 + offs_c[None, :], mask=mask_r[:, None], other=0.0
        )
        acc += w[:, None] * part
    _store_tile(
        Out + row0[:, None] * C + offs_c[None, :],
        (acc * inv_l[:, None]).to(Out.dtype.element_ty),
        mask_r,
        offs_c,
        C,
        C_PAD,
    )


@triton.jit
def _reduce_kernel(
    Part,
    PartM,
    PartL,
    OutV,
    OutK,
    OutP,
    Lse,
    Lq,
    n_batch,
    n_splits,
    D: tl.constexpr,
    DV: tl.constexpr,
    DP: tl.constexpr,
    D_PAD: tl.constexpr,
    DV_PAD: tl.constexpr,
    DP_PAD: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """Combine the (m, l, acc) partials of the key splits into normalized outputs and lse."""
    pid_r = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = offs_r < Lq
    row0 = pid_b * Lq + offs_r  # row of split 0; also the output row
    split_stride = n_batch * Lq

    m_max = tl.full([BLOCK_R], float("-inf"), tl.float32)
    for s in range(0, n_splits):
        m_s = tl.load(PartM + row0 + s * split_stride, mask=mask_r, other=float("-inf"))
        m_max = tl.maximum(m_max, m_s)
    m_use = tl.where(m_max == float("-inf"), 0.0, m_max)
    l_tot = tl.zeros([BLOCK_R], tl.float32)
    for s in range(0, n_splits):
        r = row0 + s * split_stride
        m_s = tl.load(PartM + r, mask=mask_r, other=float("-inf"))
        l_s = tl.load(PartL + r, mask=mask_r, other=0.0)
        l_tot += tl.exp2(m_s - m_use) * l_s
    # Rows past Lq would divide by zero; they are never stored.
    l_tot = tl.where(mask_r, l_tot, 1.0)
    inv_l = 1.0 / l_tot
    # Partial rows hold [acc_v | acc_k | acc_p], each padded.
    _combine_into(
        OutV, Part, PartM, row0, split_stride, n_splits, m_use, inv_l, mask_r,
        0, DV, DV_PAD, DV_PAD + D_PAD + DP_PAD, BLOCK_R,
    )  # fmt: skip
    _combine_into(
        OutK, Part, PartM, row0, split_stride, n_splits, m_use, inv_l, mask_r,
        DV_PAD, D, D_PAD, DV_PAD + D_PAD + DP_PAD, BLOCK_R,
    )  # fmt: skip
    _combine_into(
        OutP, Part, PartM, row0, split_stride, n_splits, m_use, inv_l, mask_r,
        DV_PAD + D_PAD, DP, DP_PAD, DV_PAD + D_PAD + DP_PAD, BLOCK_R,
    )  # fmt: skip
    tl.store(Lse + row0, m_max + tl.log2(l_tot), mask=mask_r)


@triton.jit
def _bwd_dkdv_kernel(
    Q,
    K,
    V,
    P,
    Bias,
    DOV,
    DOK,
    DOP,
    Lse,
    Delta,
    DK,
    DVo,
    DPo,
    stride_qb,
    stride_qm,
    stride_kb,
    stride_kn,
    stride_vb,
    stride_vn,
    stride_pb,
    stride_pn,
    stride_bb,
    Lq,
    Lk,
    qk_scale,
    scale,
    D: tl.constexpr,
    DV: tl.constexpr,
    DP: tl.constexpr,
    D_PAD: tl.constexpr,
    DV_PAD: tl.constexpr,
    DP_PAD: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """dK, dV, dP of one key block, walking all query blocks; works in the transposed
    orientation (keys as rows) so every dot operand that needs a transpose is a loaded tile."""
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    offs_dp = tl.arange(0, DP_PAD)
    mask_n = offs_n < Lk

    k = _load_tile(
        K + pid_b * stride_kb + offs_n[:, None] * stride_kn + offs_d[None, :],
        mask_n,
        offs_d,
        D,
        D_PAD,
        UPCAST,
    )  # (BLOCK_N, D_PAD)
    v = _load_tile(
        V + pid_b * stride_vb + offs_n[:, None] * stride_vn + offs_dv[None, :],
        mask_n,
        offs_dv,
        DV,
        DV_PAD,
        UPCAST,
    )  # (BLOCK_N, DV_PAD)
    pp = _load_tile(
        P + pid_b * stride_pb + offs_n[:, None] * stride_pn + offs_dp[None, :],
        mask_n,
        offs_dp,
        DP,
        DP_PAD,
        UPCAST,
    )  # (BLOCK_N, DP_PAD)
    if HAS_BIAS:
        bias = tl.load(Bias + pid_b * stride_bb + offs_n, mask=mask_n, other=0.0)
        bias = bias.to(tl.float32) * 1.4426950408889634

    acc_dk = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    acc_dv = tl.zeros([BLOCK_N, DV_PAD], tl.float32)
    acc_dp = tl.zeros([BLOCK_N, DP_PAD], tl.float32)
    q_base = Q + pid_b * stride_qb
    for start_m in range(0, Lq, BLOCK_M):
        offs_m = start_m + offs_m0
        mask_m = offs_m < Lq
        row = pid_b * Lq + offs_m
        q = _load_tile(
            q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask_m, offs_d, D, D_PAD, UPCAST
        )
        do_v = _load_tile(
            DOV + row[:, None] * DV + offs_dv[None, :], mask_m, offs_dv, DV, DV_PAD, UPCAST
        )
        do_k = _load_tile(
            DOK + row[:, None] * D + offs_d[None, :], mask_m, offs_d, D, D_PAD, UPCAST
        )
        do_p = _load_tile(
            DOP + row[:, None] * DP + offs_dp[None, :], mask_m, offs_dp, DP, DP_PAD, UPCAST
        )
        lse = tl.load(Lse + row, mask=mask_m, other=0.0)
        delta = tl.load(Delta + row, mask=mask_m, other=0.0)

        s_t = tl.dot(k, tl.trans(q)) * qk_scale  # (BLOCK_N, BLOCK_M)
        if HAS_BIAS:
            s_t += bias[:, None]
        a_t = tl.exp2(s_t - lse[None, :])
        a_t = tl.where(mask_m[None, :], a_t, 0.0)
        ab = _operand(a_t, Q.dtype.element_ty, UPCAST)
        acc_dv = tl.dot(ab, do_v, acc_dv)
        acc_dp = tl.dot(ab, do_p, acc_dp)
        acc_dk = tl.dot(ab, do_k, acc_dk)
        da_t = tl.dot(v, tl.trans(do_v))  # (BLOCK_N, BLOCK_M)
        da_t = tl.dot(k, tl.trans(do_k), da_t)
        da_t = tl.dot(pp, tl.trans(do_p), da_t)
        ds_t = a_t * (da_t - delta[None, :]) * scale
        acc_dk = tl.dot(_operand(ds_t, Q.dtype.element_ty, UPCAST), q, acc_dk)

    row_n = pid_b * Lk + offs_n
    _store_tile(
        DK + row_n[:, None] * D + offs_d[None, :],
        acc_dk.to(DK.dtype.element_ty),
        mask_n,
        offs_d,
        D,
        D_PAD,
    )
    _store_tile(
        DVo + row_n[:, None] * DV + offs_dv[None, :],
        acc_dv.to(DVo.dtype.element_ty),
        mask_n,
        offs_dv,
        DV,
        DV_PAD,
    )
    _store_tile(
        DPo + row_n[:, None] * DP + offs_dp[None, :],
        acc_dp.to(DPo.dtype.element_ty),
        mask_n,
        offs_dp,
        DP,
        DP_PAD,
    )


@triton.jit
def _bwd_dq_kernel(
    Q,
    K,
    V,
    P,
    Bias,
    DOV,
    DOK,
    DOP,
    Lse,
    Delta,
    DQ,
    stride_qb,
    stride_qm,
    stride_kb,
    stride_kn,
    stride_vb,
    stride_vn,
    stride_pb,
    stride_pn,
    stride_bb,
    Lq,
    Lk,
    qk_scale,
    scale,
    D: tl.constexpr,
    DV: tl.constexpr,
    DP: tl.constexpr,
    D_PAD: tl.constexpr,
    DV_PAD: tl.constexpr,
    DP_PAD: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """dQ of one query block, walking all key blocks."""
    pid_m = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    offs_dp = tl.arange(0, DP_PAD)
    mask_m = offs_m < Lq
    row = pid_b * Lq + offs_m

    q = _load_tile(
        Q + pid_b * stride_qb + offs_m[:, None] * stride_qm + offs_d[None, :],
        mask_m,
        offs_d,
        D,
        D_PAD,
        UPCAST,
    )
    do_v = _load_tile(
        DOV + row[:, None] * DV + offs_dv[None, :], mask_m, offs_dv, DV, DV_PAD, UPCAST
    )
    do_k = _load_tile(DOK + row[:, None] * D + offs_d[None, :], mask_m, offs_d, D, D_PAD, UPCAST)
    do_p = _load_tile(
        DOP + row[:, None] * DP + offs_dp[None, :], mask_m, offs_dp, DP, DP_PAD, UPCAST
    )
    lse = tl.load(Lse + row, mask=mask_m, other=0.0)
    delta = tl.load(Delta + row, mask=mask_m, other=0.0)

    k_base = K + pid_b * stride_kb
    v_base = V + pid_b * stride_vb
    p_base = P + pid_b * stride_pb
    acc_dq = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    for start_n in range(0, Lk, BLOCK_N):
        offs_n = start_n + offs_n0
        mask_n = offs_n < Lk
        k = _load_tile(
            k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask_n, offs_d, D, D_PAD, UPCAST
        )
        v = _load_tile(
            v_base + offs_n[:, None] * stride_vn + offs_dv[None, :],
            mask_n,
            offs_dv,
            DV,
            DV_PAD,
            UPCAST,
        )
        pp = _load_tile(
            p_base + offs_n[:, None] * stride_pn + offs_dp[None, :],
            mask_n,
            offs_dp,
            DP,
            DP_PAD,
            UPCAST,
        )
        s = tl.dot(q, tl.trans(k)) * qk_scale  # (BLOCK_M, BLOCK_N)
        if HAS_BIAS:
            bias = tl.load(Bias + pid_b * stride_bb + offs_n, mask=mask_n, other=0.0)
            s += bias.to(tl.float32)[None, :] * 1.4426950408889634
        a = tl.exp2(s - lse[:, None])
        a = tl.where(mask_n[None, :], a, 0.0)
        da = tl.dot(do_v, tl.trans(v))
        da = tl.dot(do_k, tl.trans(k), da)
        da = tl.dot(do_p, tl.trans(pp), da)
        ds = a * (da - delta[:, None]) * scale
        acc_dq = tl.dot(_operand(ds, Q.dtype.element_ty, UPCAST), k, acc_dq)

    _store_tile(
        DQ + row[:, None] * D + offs_d[None, :],
        acc_dq.to(DQ.dtype.element_ty),
        mask_m,
        offs_d,
        D,
        D_PAD,
    )


# --------------------------------------------------------------------------------------------
# Tuning lists (compiled mode only). Hopper: BLOCK_M (or BLOCK_N where keys are the rows) a
# multiple of 64 lets tl.dot use wgmma. Chosen from offline sm_90 compiles (triton 3.9, its
# bundled ptxas; docs/kernels.md): configs that spill registers were dropped where others did
# not. Forward at D = Dv = 128: (128, 64, 8 warps) holds both accumulators in 247 registers;
# (64, 64, 4 warps, 2 stages) fits two programs per SM (252 registers, 84 KB shared memory).
# Each list ends with a config that fits shared memory for float32 inputs; the autotuner drops
# configs that run out of resources.
# --------------------------------------------------------------------------------------------

INTERPRETED = not isinstance(_fwd_kernel, JITFunction)
# Decorated when triton was imported; interpreted kernels need an interpreted standard library.
_STDLIB_INTERPRETED = not isinstance(tl.zeros, JITFunction)


def mode_problem(interpret: bool) -> str | None:
    """Why the kernels cannot run compiled (interpret False) or interpreted, or None."""
    if INTERPRETED == _STDLIB_INTERPRETED == interpret:
        return None
    return (
        "TRITON_INTERPRET differs from its value when triton was imported (triton reads it "
        "then): set it, or unset it, in the environment before the process imports triton"
    )


def _cfg(bm: int, bn: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)


_FWD_CONFIGS = {
    # max(D, Dv) padded <= 128
    "narrow": [
        _cfg(128, 64, 8, 2),
        _cfg(128, 64, 8, 3),
        _cfg(64, 64, 4, 2),
        _cfg(64, 64, 8, 2),
        _cfg(64, 32, 4, 3),
    ],
    # <= 256
    "wide": [_cfg(64, 32, 8, 2), _cfg(64, 32, 8, 3), _cfg(64, 64, 8, 2), _cfg(64, 16, 8, 2)],
}
# BLOCK_N counts keys (the rows of dK, dV, dP), BLOCK_M the queries walked per step. The wide
# lists spill registers in every config tried (D = 256 is outside the model's use).
_DKDV_CONFIGS = {
    "narrow": [_cfg(32, 128, 8, 2), _cfg(16, 128, 8, 2), _cfg(16, 64, 4, 3), _cfg(32, 32, 4, 1)],
    "wide": [_cfg(16, 32, 8, 2), _cfg(16, 64, 8, 2), _cfg(32, 64, 8, 2)],
}
_DQ_CONFIGS = {
    "narrow": [_cfg(64, 64, 4, 2), _cfg(128, 64, 8, 2), _cfg(64, 32, 4, 3), _cfg(32, 32, 4, 1)],
    "wide": [_cfg(32, 32, 8, 2), _cfg(64, 16, 8, 2), _cfg(32, 32, 4, 1)],
}
# Nominal query block per width class, used to choose the split count before tuning.
_NOMINAL_BLOCK_M = {"narrow": 128, "wide": 64}
_TUNE_KEY = ["Lq", "Lk", "D", "DV", "DP_PAD", "HAS_BIAS"]


def _tuned(kernel, configs: dict[str, list[triton.Config]], key: list[str]) -> dict:
    if INTERPRETED:
        return {}
    return {
        width: triton.autotune(configs=cfgs, key=key)(kernel) for width, cfgs in configs.items()
    }


_FWD_TUNED = _tuned(_fwd_kernel, _FWD_CONFIGS, [*_TUNE_KEY, "SPLIT"])
_DKDV_TUNED = _tuned(_bwd_dkdv_kernel, _DKDV_CONFIGS, _TUNE_KEY)
_DQ_TUNED = _tuned(_bwd_dq_kernel, _DQ_CONFIGS, _TUNE_KEY)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchConfig:
    """Explicit block sizes instead of autotuning (tests; the interpreter always uses one)."""

    block_m: int = 32
    block_n: int = 32
    num_warps: int = 4
    num_stages: int = 1


# The interpreter runs each program in numpy: bigger blocks mean fewer Python steps.
_INTERPRETER_CONFIG = LaunchConfig(block_m=32, block_n=32)


def _pad(n: int) -> int:
    """Width padded to a power of two of at least 16 (tl.arange and tl.dot need both)."""
    return max(16, triton.next_power_of_2(n))


def _upcast(q: torch.Tensor) -> bool:
    return INTERPRETED and q.dtype != torch.float32


def _width_class(d_pad: int, dv_pad: int) -> str:
    return "narrow" if max(d_pad, dv_pad) <= 128 else "wide"


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def choose_splits(n_query_blocks: int, lk: int, n_sm: int) -> int:
    """Key splits that fill one wave of programs without shrinking a split below a few blocks.

    n_query_blocks counts (batch x query blocks). At Lq = 16384 (128 blocks of 128) on 132 SMs
    this is 1; at Lq = 4096 (32 blocks) it is 4 for Lk >= 2048.
    """
    by_fill = n_sm // max(1, n_query_blocks)
    by_work = triton.cdiv(lk, _SPLIT_GRANULE) // _MIN_GRANULES_PER_SPLIT
    return max(1, min(by_fill, by_work, _MAX_SPLITS))


def _split_chunk(lk: int, n_splits: int, granule: int) -> tuple[int, int]:
    """(keys per split, splits actually used): chunks are whole granules and none is empty."""
    chunk = triton.cdiv(triton.cdiv(lk, n_splits), granule) * granule
    return chunk, triton.cdiv(lk, chunk)


def _bias_args(key_bias: torch.Tensor | None, q: torch.Tensor) -> tuple[torch.Tensor, int]:
    if key_bias is None:
        return q, 0  # never read: HAS_BIAS is False
    return key_bias, key_bias.stride(0)


def _launch_kwargs(config: LaunchConfig | None) -> dict:
    if config is None:
        return {}
    return {
        "BLOCK_M": config.block_m,
        "BLOCK_N": config.block_n,
        "num_warps": config.num_warps,
        "num_stages": config.num_stages,
    }


def _pick(tuned: dict, raw, width: str, config: LaunchConfig | None):
    """The autotuned kernel, or the raw one with explicit blocks (interpreter, tests)."""
    if config is None and INTERPRETED:
        config = _INTERPRETER_CONFIG
    if config is None:
        return tuned[width], {}
    return raw, _launch_kwargs(config)


def target_of(device: torch.device) -> str | None:
    """The pinned table's compile target for tensors on ``device`` (None: none applies)."""
    if INTERPRETED:
        return "interpreter"
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return pinned.cuda_target(index)


def pinned_launch(
    q: torch.Tensor, lk: int, dv: int, dp: int
) -> tuple[LaunchConfig | None, int | None]:
    """(tile, key splits) pinned for this forward shape (kernels/pinned.py), or (None, None):
    the autotuner picks the tile and :func:`choose_splits` the splits."""
    target = target_of(q.device)
    if target is None:
        return None, None
    bsz, lq, d = q.shape
    if bsz != 1:  # the table holds the receiver's batch-1 shapes
        return None, None
    key = pinned.ShapeKey(target, lq, lk, d, dv, dp, pinned.dtype_name(q.dtype))
    found = pinned.lookup(key)
    if found is None:
        return None, None
    tile = LaunchConfig(found.block_m, found.block_n, found.num_warps, found.num_stages)
    return tile, found.num_splits


def forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    p: torch.Tensor,
    key_bias: torch.Tensor | None,
    scale: float,
    *,
    num_splits: int | None = None,
    config: LaunchConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused forward: (out_v, out_k, out_p, lse) with lse in log2 units, (B, Lq) fp32.

    Inputs are prepared by ``kernels.warp_attention``: one dtype, last dim contiguous, batch
    stride possibly 0 (broadcast keys), key_bias (B, Lk) with unit last stride or None.
    num_splits: key splits (None: pinned for the shape, else from the problem size and SM
    count). With neither ``config`` nor ``num_splits`` given, a shape of the pinned table
    (kernels/pinned.py) launches its pinned tile and splits instead of autotuning.
    """
    bsz, lq, d = q.shape
    lk, dv, dp = k.shape[1], v.shape[2], p.shape[2]
    d_pad, dv_pad, dp_pad = _pad(d), _pad(dv), _pad(dp)
    width = _width_class(d_pad, dv_pad)
    dev = q.device
    if config is None and num_splits is None:
        config, num_splits = pinned_launch(q, lk, dv, dp)

    out_v = torch.empty((bsz, lq, dv), dtype=v.dtype, device=dev)
    out_k = torch.empty((bsz, lq, d), dtype=k.dtype, device=dev)
    out_p = torch.empty((bsz, lq, dp), dtype=p.dtype, device=dev)
    lse = torch.empty((bsz, lq), dtype=torch.float32, device=dev)

    kernel, launch = _pick(_FWD_TUNED, _fwd_kernel, width, config)
    if num_splits is None:
        block_m = launch.get("BLOCK_M", _NOMINAL_BLOCK_M[width])
        num_splits = choose_splits(bsz * triton.cdiv(lq, block_m), lk, _sm_count(dev))
    granule = _SPLIT_GRANULE if "BLOCK_N" not in launch else launch["BLOCK_N"]
    chunk, n_splits = _split_chunk(lk, max(1, num_splits), granule)
    split = n_splits > 1
    if split:
        part = torch.empty(
            (n_splits, bsz, lq, dv_pad + d_pad + dp_pad), dtype=torch.float32, device=dev
        )
        part_m = torch.empty((n_splits, bsz, lq), dtype=torch.float32, device=dev)
        part_l = torch.empty_like(part_m)
    else:
        part, part_m, part_l = lse, lse, lse  # never read: SPLIT is False
    bias, stride_bb = _bias_args(key_bias, q)

    def grid(meta):
        return (triton.cdiv(lq, meta["BLOCK_M"]), n_splits, bsz)

    kernel[grid](
        q, k, v, p, bias,
        out_v, out_k, out_p, lse,
        part, part_m, part_l,
        q.stride(0), q.stride(1),
        k.stride(0), k.stride(1),
        v.stride(0), v.stride(1),
        p.stride(0), p.stride(1),
        stride_bb,
        lq, lk, chunk, bsz, scale * _LOG2E,
        D=d, DV=dv, DP=dp, D_PAD=d_pad, DV_PAD=dv_pad, DP_PAD=dp_pad,
        HAS_BIAS=key_bias is not None, SPLIT=split, UPCAST=_upcast(q),
        **launch,
    )  # fmt: skip
    if split:
        block_r = max(8, 4096 // max(d_pad, dv_pad))
        _reduce_kernel[(triton.cdiv(lq, block_r), bsz)](
            part, part_m, part_l, out_v, out_k, out_p, lse,
            lq, bsz, n_splits,
            D=d, DV=dv, DP=dp, D_PAD=d_pad, DV_PAD=dv_pad, DP_PAD=dp_pad,
            BLOCK_R=block_r, num_warps=4,
        )  # fmt: skip
    return out_v, out_k, out_p, lse


def backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    p: torch.Tensor,
    key_bias: torch.Tensor | None,
    scale: float,
    outs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    lse: torch.Tensor,
    grads: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    config: LaunchConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv, dp) from the saved outputs, lse and the output gradients (dO_v, dO_k, dO_p).

    dk, dv, dp have the full batch even where k, v, p were broadcast; autograd sums them.
    """
    bsz, lq, d = q.shape
    lk, dv, dp = k.shape[1], v.shape[2], p.shape[2]
    d_pad, dv_pad, dp_pad = _pad(d), _pad(dv), _pad(dp)
    width = _width_class(d_pad, dv_pad)
    dev = q.device
    do_v, do_k, do_p = (g.contiguous() for g in grads)
    # delta_i = sum_j A_ij dA_ij, read off the outputs instead of the (Lq, Lk) matrix.
    delta = sum(
        (g.float() * o.float()).sum(-1) for g, o in zip((do_v, do_k, do_p), outs, strict=True)
    )
    delta = delta.contiguous()  # (B, Lq) fp32

    dq = torch.empty((bsz, lq, d), dtype=q.dtype, device=dev)
    dk = torch.empty((bsz, lk, d), dtype=k.dtype, device=dev)
    dvv = torch.empty((bsz, lk, dv), dtype=v.dtype, device=dev)
    dpp = torch.empty((bsz, lk, dp), dtype=p.dtype, device=dev)
    bias, stride_bb = _bias_args(key_bias, q)
    strides = (
        q.stride(0), q.stride(1),
        k.stride(0), k.stride(1),
        v.stride(0), v.stride(1),
        p.stride(0), p.stride(1),
        stride_bb,
    )  # fmt: skip
    meta = dict(
        D=d, DV=dv, DP=dp, D_PAD=d_pad, DV_PAD=dv_pad, DP_PAD=dp_pad,
        HAS_BIAS=key_bias is not None, UPCAST=_upcast(q),
    )  # fmt: skip

    kernel, launch = _pick(_DKDV_TUNED, _bwd_dkdv_kernel, width, config)
    kernel[lambda m: (triton.cdiv(lk, m["BLOCK_N"]), bsz)](
        q, k, v, p, bias, do_v, do_k, do_p, lse, delta, dk, dvv, dpp,
        *strides, lq, lk, scale * _LOG2E, scale, **meta, **launch,
    )  # fmt: skip
    kernel, launch = _pick(_DQ_TUNED, _bwd_dq_kernel, width, config)
    kernel[lambda m: (triton.cdiv(lq, m["BLOCK_M"]), bsz)](
        q, k, v, p, bias, do_v, do_k, do_p, lse, delta, dq,
        *strides, lq, lk, scale * _LOG2E, scale, **meta, **launch,
    )  # fmt: skip
    return dq, dk, dvv, dpp


class WarpAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: fused forward, recomputing backward; no gradient for key_bias."""

    @staticmethod
    def forward(ctx, q, k, v, p, key_bias, scale, num_splits, config):
        out_v, out_k, out_p, lse = forward(
            q, k, v, p, key_bias, scale, num_splits=num_splits, config=config
        )
        ctx.save_for_backward(q, k, v, p, key_bias, out_v, out_k, out_p, lse)
        ctx.scale = scale
        ctx.config = config
        return out_v, out_k, out_p

    @staticmethod
    def backward(ctx, do_v, do_k, do_p):
        q, k, v, p, key_bias, out_v, out_k, out_p, lse = ctx.saved_tensors
        dq, dk, dv, dp = backward(
            q,
            k,
            v,
            p,
            key_bias,
            ctx.scale,
            (out_v, out_k, out_p),
            lse,
            (do_v, do_k, do_p),
            config=ctx.config,
        )
        return dq, dk, dv, dp, None, None, None, None


def tuning_report() -> dict[str, str]:
    """The configs the autotuner chose so far, per kernel and tuning key (for benchmark JSON)."""
    report = {}
    for name, tuned in (("fwd", _FWD_TUNED), ("bwd_dkdv", _DKDV_TUNED), ("bwd_dq", _DQ_TUNED)):
        for width, tuner in tuned.items():
            for key, cfg in getattr(tuner, "cache", {}).items():
                report[f"{name}/{width}/{key}"] = str(cfg)
    return report
