"""Fused implicit-warping attention vs the float64 reference, and the backend dispatch rules.

Small odd shapes. Without CUDA the Triton kernels run on CPU tensors in triton's interpreter:
triton reads TRITON_INTERPRET when it is imported, so this module sets it at import time
(kernels import triton only on first use, after collection). With CUDA the same tests run the
compiled kernels. GPU tests at real shapes live in tests/test_kernels_gpu.py.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kernels
import kernels.dispatch as dispatch
from iwcodec.errors import BackendUnavailableError, InputError
from kernels import warp_attention, warp_attention_reference, warp_attention_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"
    if dispatch._triton_import_problem() is None:  # imports triton: after the variable is set
        dispatch._triton_module()  # decorate the kernels now, whatever a test does to the env

REPO = Path(__file__).resolve().parents[1]

# ||out - ref|| / ||ref|| bounds per input dtype. 16-bit inputs round the probabilities to the
# input dtype before A V, which dominates their error. float32 dots are exact float32 in the
# interpreter and tf32 on the GPU.
F32_TOL = 1e-5 if DEVICE == "cpu" else 5e-3
FWD_TOL = {torch.float32: F32_TOL, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
GRAD_TOL = {torch.float32: 2 * F32_TOL, torch.float16: 3e-3, torch.bfloat16: 2e-2}

needs_triton = pytest.mark.skipif(
    dispatch._triton_import_problem() is not None, reason="triton is not importable here"
)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm()).item()


def make_inputs(
    n_src: int,
    *,
    dtype: torch.dtype,
    batch: int = 2,
    lq: int = 37,
    per_src: int = 50,
    extras: int = 7,
    d: int = 32,
    dv: int = 48,
    dp: int = 3,
    sharpness: float = 2.0,
    seed: int = 0,
) -> tuple[torch.Tensor, ...]:
    """q (B, Lq, D), k (B, Lk, D), v (B, Lk, Dv), p (B, Lk, Dp) with Lk = per_src * n_src + extras.

    sharpness scales q so logits have a std of about `sharpness` (peaky maps like the paper's).
    """
    g = torch.Generator().manual_seed(seed)
    lk = per_src * n_src + extras
    q = torch.randn(batch, lq, d, generator=g) * sharpness
    k = torch.randn(batch, lk, d, generator=g)
    v = torch.randn(batch, lk, dv, generator=g)
    p = torch.rand(batch, lk, dp, generator=g)
    return tuple(t.to(DEVICE, dtype) for t in (q, k, v, p))


def make_bias(batch: int, n_src: int, per_src: int, extras: int, seed: int = 1) -> torch.Tensor:
    """0/-inf (B, Lk): whole sources dropped (all but the last in sample 0, the first in sample
    1), plus random single keys; the extra keys at the end always stay, so every row has one."""
    g = torch.Generator().manual_seed(seed)
    lk = per_src * n_src + extras
    drop = torch.rand(batch, lk, generator=g) < 0.2
    drop[0, : per_src * (n_src - 1)] = True
    if batch > 1:
        drop[1, :per_src] = True
    drop[:, per_src * n_src :] = False
    return torch.zeros(batch, lk).masked_fill(drop, float("-inf")).to(DEVICE)


def reference64(q, k, v, p, bias, grads=None):
    """Outputs (and input gradients for `grads`) of the reference in float64."""
    leaves = [t.detach().double().requires_grad_(grads is not None) for t in (q, k, v, p)]
    outs = warp_attention_reference(*leaves, None if bias is None else bias.double())
    if grads is None:
        return outs, None
    torch.autograd.backward(outs, [g.double() for g in grads])
    return outs, [t.grad for t in leaves]


def run_and_check(ins, bias, dtype, *, grads=True, **launch):
    """Triton forward (and backward) against the float64 reference, per-dtype tolerances."""
    ins = [t.requires_grad_(grads) for t in ins]
    outs = warp_attention_triton(*ins, bias, **launch)
    gen = torch.Generator().manual_seed(7)
    out_grads = [torch.randn(o.shape, generator=gen).to(DEVICE) for o in outs]
    ref_outs, ref_grads = reference64(*ins, bias, out_grads if grads else None)
    for name, out, ref in zip(("out_v", "out_k", "out_p"), outs, ref_outs, strict=True):
        assert out.dtype == dtype and out.shape == ref.shape
        err = rel_err(out, ref)
        assert err < FWD_TOL[dtype], f"{name}: relative error {err:.2e}"
    if grads:
        torch.autograd.backward(outs, [g.to(dtype) for g in out_grads])
        for name, t, ref in zip("qkvp", ins, ref_grads, strict=True):
            assert t.grad.dtype == dtype
            err = rel_err(t.grad, ref)
            assert err < GRAD_TOL[dtype], f"d{name}: relative error {err:.2e}"
    return outs


# --------------------------------------------------------------------------------------------
# Triton kernels in the interpreter
# --------------------------------------------------------------------------------------------


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(
    "n_src, masked",
    [(1, False), (1, True), (2, True), (3, False), (3, True)],
    ids=["1src", "1src-bias", "2src-bias", "3src", "3src-bias"],
)
def test_matches_reference(dtype, n_src, masked):
    """Forward and gradients; n_src key splits, so 1 source runs unsplit and 2, 3 split.

    With a bias, sample 0 keeps only its last source and the extras, so with 3 sources its
    first split of 64 keys is entirely masked."""
    batch = 2 if masked else 1
    ins = make_inputs(n_src, dtype=dtype, batch=batch, seed=n_src)
    bias = make_bias(batch, n_src, 50, 7) if masked else None
    run_and_check(ins, bias, dtype, num_splits=n_src, block_m=32, block_n=32)


@needs_triton
def test_split_equals_unsplit():
    """Combining partials (a fully masked split included) equals one pass over the keys."""
    ins = make_inputs(3, dtype=torch.float32)
    bias = make_bias(2, 3, 50, 7)  # sample 0: keys [0, 100) dropped, so split 0 = [0, 64) is
    split = warp_attention_triton(*ins, bias, num_splits=3, block_m=32, block_n=32)
    unsplit = warp_attention_triton(*ins, bias, num_splits=1, block_m=32, block_n=32)
    for a, b in zip(split, unsplit, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@needs_triton
@pytest.mark.parametrize(
    "dims",
    [
        dict(d=256, dv=200, dp=3, lq=19, per_src=20),  # the widest class, padded Dv
        dict(d=24, dv=40, dp=5, lq=33, per_src=21),  # widths that are no power of two
        dict(d=16, dv=16, dp=1, lq=1, per_src=1, extras=1),  # one query, two keys
        dict(d=16, dv=16, dp=51, lq=17, per_src=16),  # pixels + 4x4 patches (source_patches)
    ],
    ids=["wide", "odd-widths", "two-keys", "source-patches"],
)
def test_odd_shapes(dims):
    ins = make_inputs(1, dtype=torch.float16, batch=1, **dims)
    run_and_check(ins, None, torch.float16)


@needs_triton
def test_default_launch_and_broadcast_keys():
    """Keys, values, pixels and bias shared by the batch (batch 1 broadcasts), default blocks."""
    q, k, v, p = make_inputs(2, dtype=torch.float32, batch=3, lq=45)
    k, v, p = k[:1], v[:1], p[:1]
    bias = make_bias(1, 2, 50, 7)
    run_and_check((q, k, v, p), bias, torch.float32)


@needs_triton
def test_single_key_copies_its_values():
    """With one valid key every output row is exactly that key's v, k and p (softmax = 1)."""
    q, k, v, p = make_inputs(1, dtype=torch.float32, batch=1, lq=20, per_src=40, extras=1)
    bias = torch.full((1, 41), float("-inf"), device=DEVICE)
    bias[0, 17] = 0.0
    out_v, out_k, out_p = warp_attention_triton(
        q, k, v, p, bias, num_splits=2, block_m=16, block_n=16
    )
    torch.testing.assert_close(out_v, v[:, 17:18].expand_as(out_v), rtol=0, atol=1e-6)
    torch.testing.assert_close(out_k, k[:, 17:18].expand_as(out_k), rtol=0, atol=1e-6)
    torch.testing.assert_close(out_p, p[:, 17:18].expand_as(out_p), rtol=0, atol=1e-6)


@needs_triton
def test_explicit_scale():
    ins = make_inputs(1, dtype=torch.float32, batch=1, lq=17, per_src=30)
    outs = warp_attention(*ins, scale=0.3, backend="triton")
    refs = warp_attention_reference(*(t.double() for t in ins), scale=0.3)
    for a, b in zip(outs, refs, strict=True):
        assert rel_err(a, b) < 1e-5


@needs_triton
def test_split_choice():
    mod = dispatch._triton_module()
    # Lq = 4096 in blocks of 128 on a 132-SM H100/H200: four key splits fill one wave.
    assert mod.choose_splits(32, 4096 + 400, 132) == 4
    # Lq = 16384: 128 blocks already fill the GPU.
    assert mod.choose_splits(128, 16384 + 400, 132) == 1
    # A handful of queries: as many splits as keep 4 blocks of 128 keys each, at most 32.
    assert mod.choose_splits(1, 500, 132) == 1
    assert mod.choose_splits(1, 1000, 132) == 2
    assert mod.choose_splits(1, 100_000, 132) == 32


# --------------------------------------------------------------------------------------------
# Dispatch rules
# --------------------------------------------------------------------------------------------


@pytest.fixture
def reference_calls(monkeypatch):
    """Record when the dispatcher takes the reference path."""
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[0].device)
        return warp_attention_reference(*args, **kwargs)

    monkeypatch.setattr(dispatch, "warp_attention_reference", spy)
    return calls


def test_auto_on_cpu_uses_reference(monkeypatch, reference_calls):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # auto never picks the interpreter
    ins = [t.cpu() for t in make_inputs(1, dtype=torch.float32, batch=1, lq=5, per_src=6)]
    outs = warp_attention(*ins)
    assert len(reference_calls) == 1
    for a, b in zip(outs, warp_attention_reference(*ins), strict=True):
        torch.testing.assert_close(a, b)


def test_torch_backend_is_the_reference(reference_calls):
    ins = make_inputs(2, dtype=torch.bfloat16, batch=1, lq=5, per_src=6)
    warp_attention(*ins, backend="torch")
    assert len(reference_calls) == 1


@needs_triton
def test_explicit_triton_runs_kernels_in_interpreter(reference_calls):
    ins = make_inputs(1, dtype=torch.float32, batch=1, lq=9, per_src=12)
    outs = warp_attention(*ins, backend="triton")
    assert reference_calls == []
    for a, b in zip(outs, warp_attention_reference(*(t.double() for t in ins)), strict=True):
        assert rel_err(a, b) < 1e-5


def test_explicit_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ins = [t.cpu() for t in make_inputs(1, dtype=torch.float32, batch=1, lq=5, per_src=6)]
    with pytest.raises(BackendUnavailableError, match="CUDA|triton"):
        warp_attention(*ins, backend="triton")


def test_explicit_triton_without_triton_raises(monkeypatch, reference_calls):
    monkeypatch.setattr(dispatch, "_triton_import_problem", lambda: "triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    ins = make_inputs(1, dtype=torch.float32, batch=1, lq=5, per_src=6)
    with pytest.raises(BackendUnavailableError, match="not installed"):
        warp_attention(*ins, backend="triton")
    warp_attention(*ins, backend="auto")
    assert len(reference_calls) == 1
    assert kernels.backends("cpu")["triton"] == "triton is not installed"


def test_cuda_without_gpu_driver_is_reported(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert "CUDA is not available" in dispatch._gpu_driver_problem(0)
    if dispatch._triton_import_problem() is None:
        # Here the kernels were imported interpreted: a compiled run must be refused.
        monkeypatch.delenv("TRITON_INTERPRET")
        problem = dispatch._triton_environment_problem(torch.device("cuda"), allow_interpreter=True)
        assert "TRITON_INTERPRET" in problem


@needs_triton
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda q, k, v, p: (q, k, v.double(), p), "one dtype"),
        (lambda q, k, v, p: (q.double(), k.double(), v.double(), p.double()), "float64"),
        (lambda q, k, v, p: (q, k, torch.zeros(1, k.shape[1], 300, device=DEVICE), p), "256"),
    ],
    ids=["mixed-dtypes", "float64", "too-wide"],
)
def test_explicit_triton_refuses_unsupported_inputs(reference_calls, change, message):
    ins = change(*make_inputs(1, dtype=torch.float32, batch=1, lq=5, per_src=6))
    with pytest.raises(BackendUnavailableError, match=message):
        warp_attention(*ins, backend="triton")
    warp_attention(*ins)  # auto: the reference takes it
    assert len(reference_calls) == 1


@needs_triton
def test_key_bias_needing_grad_is_refused_by_triton():
    ins = make_inputs(1, dtype=torch.float32, batch=1, lq=5, per_src=6)
    bias = torch.zeros(1, ins[1].shape[1], device=DEVICE, requires_grad=True)
    with pytest.raises(BackendUnavailableError, match="key_bias"):
        warp_attention(*ins, bias, backend="triton")
    with torch.no_grad():
        warp_attention(*ins, bias, backend="triton")


def test_unknown_backend_raises():
    ins = make_inputs(1, dtype=torch.float32, batch=1, lq=5, per_src=6)
    with pytest.raises(BackendUnavailableError, match="cuda-graphs"):
        warp_attention(*ins, backend="cuda-graphs")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda q, k, v, p, b: (q[0], k, v, p, b), "shape"),
        (lambda q, k, v, p, b: (q, k[..., :-1], v, p, b), "widths differ"),
        (lambda q, k, v, p, b: (q, k, v[:, :-1], p, b), "one row per key"),
        (lambda q, k, v, p, b: (q, k[:, :0], v[:, :0], p[:, :0], None), "at least one key"),
        (lambda q, k, v, p, b: (q, k, v, p, b[:, :-1]), "key_bias"),
        (lambda q, k, v, p, b: (q, k, v, p, b == 0), "float"),
        (lambda q, k, v, p, b: (q.repeat(2, 1, 1), k.repeat(3, 1, 1), v, p, b), "batch"),
        (lambda q, k, v, p, b: (q.long(), k, v, p, b), "floating"),
    ],
    ids=["rank", "width", "lengths", "no-keys", "bias-shape", "bias-dtype", "batch", "int"],
)
def test_bad_inputs_raise_input_error(change, message):
    q, k, v, p = make_inputs(1, dtype=torch.float32, batch=1, lq=5, per_src=6)
    bias = torch.zeros(1, k.shape[1], device=DEVICE)
    with pytest.raises(InputError, match=message):
        warp_attention(*change(q, k, v, p, bias))


@pytest.mark.parametrize("scale", [float("nan"), "0.1", True])
def test_bad_scale_raises(scale):
    ins = make_inputs(1, dtype=torch.float32, batch=1, lq=5, per_src=6)
    with pytest.raises(InputError, match="scale"):
        warp_attention(*ins, scale=scale)


def test_backends_report(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    status = kernels.backends("cpu")
    assert status["torch"] is None and status["auto"] is None
    assert isinstance(status["triton"], str)  # CPU tensors need the interpreter
    if DEVICE == "cpu" and dispatch._triton_import_problem() is None:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert kernels.backends("cpu")["triton"] is None


def test_imports_and_falls_back_without_triton():
    """`import kernels` must work where triton is missing; auto uses the reference."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, kernels\n"
        "from iwcodec.errors import BackendUnavailableError\n"
        "q = torch.randn(1, 4, 8); k = torch.randn(1, 6, 8)\n"
        "out = kernels.warp_attention(q, k, k, k[..., :3])\n"
        "assert out[2].shape == (1, 4, 3)\n"
        "try:\n"
        "    kernels.warp_attention(q, k, k, k[..., :3], backend='triton')\n"
        "except BackendUnavailableError as e:\n"
        "    print('refused:', e)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert "refused:" in res.stdout and "triton" in res.stdout


def test_default_scale():
    assert math.isclose(kernels.default_scale(128), 1 / math.sqrt(128))
