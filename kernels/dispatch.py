"""Public entry of the implicit-warping attention: input checks and backend dispatch.

    warp_attention(q, k, v, p, key_bias=None, scale=None, backend="auto") -> (out_v, out_k, out_p)

is eq. 1 of Mallya et al. (NeurIPS 2022, section 3) with two value sets, see
``kernels/reference.py``. Backends:

- ``"torch"``: the plain-torch reference (any device and float dtype, materializes A).
- ``"triton"``: the fused Triton kernels (``kernels/_warp_attention_triton.py``) on CUDA tensors,
  or, when ``TRITON_INTERPRET=1`` was set before triton was first imported, in triton's
  interpreter (CPU tensors too; correct, about 1000x slower: for tests). Raises
  ``BackendUnavailableError`` when it cannot run (triton missing, no GPU driver, CPU tensors
  without the interpreter, unsupported dtype or width, key_bias needing a gradient).
- ``"auto"``: ``"triton"`` for CUDA tensors it can run, ``"torch"`` for everything else.

Triton is imported only when a Triton run is asked for, so this module imports cleanly
without triton or without a GPU driver.

Under ``torch.compile`` CUDA inputs go through the custom op ``torch.ops.iwcodec.warp_attention``
(``kernels/ops.py``), which the compiler treats as one opaque op; CPU inputs (backends "auto"
and "torch") through the reference, which it traces.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
import numbers
import os
from types import ModuleType

import torch

from iwcodec.errors import BackendUnavailableError, InputError
from kernels.ops import warp_attention_compiled
from kernels.reference import default_scale, warp_attention_reference

BACKENDS = ("auto", "triton", "torch")
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_TRITON_WIDTH = 256  # D, Dv and Dp each

Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def warp_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    p: torch.Tensor,
    key_bias: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> Outputs:
    """Implicit-warping attention: softmax(Q K^T * scale + key_bias) applied to V, K and P.

    q (B, Lq, D), k (B, Lk, D), v (B, Lk, Dv), p (B, Lk, Dp), key_bias (B, Lk) of 0/-inf or None;
    a batch size of 1 in any of them broadcasts. scale defaults to 1/sqrt(D).
    Returns out_v (B, Lq, Dv), out_k (B, Lq, D), out_p (B, Lq, Dp). Differentiable in q, k, v, p
    with every backend; the Triton backend gives no gradient for key_bias (it refuses a key_bias
    that requires one, and "auto" then uses the reference).
    """
    if backend not in BACKENDS:
        raise BackendUnavailableError(
            f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}"
        )
    _check_inputs(q, k, v, p, key_bias, scale)
    if backend == "torch":
        return warp_attention_reference(q, k, v, p, key_bias, scale)
    if torch.compiler.is_compiling():
        return _compiled(q, k, v, p, key_bias, scale, backend)
    problem = _triton_problem(q, k, v, p, key_bias, allow_interpreter=backend == "triton")
    if problem is None:
        return _run_triton(q, k, v, p, key_bias, scale, num_splits=None, config=None)
    if backend == "triton":
        raise BackendUnavailableError(
            f"the Triton attention backend cannot run here: {problem}. "
            "Use backend='torch' (or 'auto', which falls back to it)."
        )
    return warp_attention_reference(q, k, v, p, key_bias, scale)


def _compiled(q, k, v, p, key_bias, scale, backend: str) -> Outputs:
    """Under ``torch.compile``: CUDA tensors go through the opaque custom op
    (``kernels/ops.py``), whose CUDA implementation runs the Triton kernels when they can run
    (else the reference, or BackendUnavailableError for backend "triton"); anything else, and a
    key_bias that needs a gradient (the kernels give none), is the plain-torch reference, which
    the compiler traces like any other torch code."""
    needs_bias_grad = key_bias is not None and key_bias.requires_grad and torch.is_grad_enabled()
    if q.is_cuda and not needs_bias_grad:
        return warp_attention_compiled(q, k, v, p, key_bias, scale, backend == "triton")
    return warp_attention_reference(q, k, v, p, key_bias, scale)


def warp_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    p: torch.Tensor,
    key_bias: torch.Tensor | None = None,
    scale: float | None = None,
    *,
    num_splits: int | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int = 4,
    num_stages: int = 1,
) -> Outputs:
    """The Triton backend with its launch choices exposed (tests, benchmarks).

    num_splits: key splits of the forward (None: chosen from the problem size and SM count).
    block_m, block_n: fixed blocks instead of autotuning (both or neither; powers of two >= 16).
    """
    _check_inputs(q, k, v, p, key_bias, scale)
    problem = _triton_problem(q, k, v, p, key_bias, allow_interpreter=True)
    if problem is not None:
        raise BackendUnavailableError(f"the Triton attention backend cannot run here: {problem}")
    if (block_m is None) != (block_n is None):
        raise InputError("give both block_m and block_n, or neither")
    if num_splits is not None and num_splits < 1:
        raise InputError(f"num_splits must be >= 1, got {num_splits}")
    config = None
    if block_m is not None:
        for name, val in (("block_m", block_m), ("block_n", block_n)):
            if val < 16 or val & (val - 1):
                raise InputError(f"{name} must be a power of two >= 16, got {val}")
        config = (block_m, block_n, num_warps, num_stages)
    return _run_triton(q, k, v, p, key_bias, scale, num_splits=num_splits, config=config)


def backends(device: torch.device | str | None = None) -> dict[str, str | None]:
    """Backends usable for tensors on ``device``: name -> None if usable, else why not.

    device defaults to the current CUDA device when there is one, else the CPU. "auto" is
    always usable (it falls back to "torch").
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    return {
        "auto": None,
        "triton": _triton_environment_problem(device, allow_interpreter=True),
        "torch": None,
    }


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def _check_inputs(q, k, v, p, key_bias, scale) -> None:
    """Raise InputError for inputs outside the contract (whatever the backend)."""
    named = {"q": q, "k": k, "v": v, "p": p}
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3:
            raise InputError(f"{name} must have shape (B, L, C), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise InputError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if k.shape[2] != q.shape[2]:
        raise InputError(f"q and k widths differ: q {tuple(q.shape)}, k {tuple(k.shape)}")
    lk = k.shape[1]
    if lk == 0:
        raise InputError("attention needs at least one key (k has length 0)")
    for name in ("v", "p"):
        if named[name].shape[1] != lk:
            raise InputError(
                f"{name} must have one row per key ({lk}), got {tuple(named[name].shape)}"
            )
    devices = {t.device for t in named.values()}
    if key_bias is not None:
        if not isinstance(key_bias, torch.Tensor):
            raise InputError(f"key_bias must be a tensor or None, got {type(key_bias).__name__}")
        if key_bias.dim() != 2 or key_bias.shape[1] != lk:
            raise InputError(f"key_bias must have shape (B, {lk}), got {tuple(key_bias.shape)}")
        if not key_bias.is_floating_point():
            raise InputError(
                f"key_bias must be float (0 keeps a key, -inf drops it), got {key_bias.dtype}"
            )
        devices.add(key_bias.device)
    if len(devices) > 1:
        raise InputError(f"inputs are on different devices: {sorted(map(str, devices))}")
    batches = {t.shape[0] for t in named.values()}
    if key_bias is not None:
        batches.add(key_bias.shape[0])
    if len(batches - {1}) > 1:
        raise InputError(f"batch sizes differ and are not 1: {sorted(batches)}")
    if scale is not None:
        if (
            isinstance(scale, bool)
            or not isinstance(scale, numbers.Real)
            or not math.isfinite(scale)
        ):
            raise InputError(f"scale must be a finite number or None, got {scale!r}")


def _interpreter_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def _triton_problem(q, k, v, p, key_bias, *, allow_interpreter: bool) -> str | None:
    """Why the Triton kernels cannot run these (checked) inputs here, or None."""
    problem = _triton_environment_problem(q.device, allow_interpreter)
    if problem is not None:
        return problem
    dtypes = {t.dtype for t in (q, k, v, p)}
    if len(dtypes) > 1:
        return f"q, k, v, p must share one dtype, got {sorted(map(str, dtypes))}"
    if q.dtype not in TRITON_DTYPES:
        return f"dtype {q.dtype} is not supported (float32, float16, bfloat16 are)"
    widths = {"D": q.shape[2], "Dv": v.shape[2], "Dp": p.shape[2]}
    too_wide = {n: w for n, w in widths.items() if w > MAX_TRITON_WIDTH}
    if too_wide:
        return f"widths above {MAX_TRITON_WIDTH} are not supported: {too_wide}"
    if key_bias is not None and key_bias.requires_grad and torch.is_grad_enabled():
        return "it gives no gradient for key_bias, which requires one"
    return None


def _triton_environment_problem(device: torch.device, allow_interpreter: bool) -> str | None:
    problem = _triton_import_problem()
    if problem is not None:
        return problem
    interpret = _interpreter_requested()
    if device.type != "cuda" and not (interpret and allow_interpreter):
        return _NEEDS_CUDA.format(device=device.type)
    problem = _triton_module().mode_problem(interpret)
    if problem is not None or interpret:
        return problem
    return _gpu_driver_problem(
        device.index if device.index is not None else torch.cuda.current_device()
    )


_NEEDS_CUDA = (
    "the tensors are on {device} and the Triton kernels need CUDA tensors (for tests, "
    "TRITON_INTERPRET=1 set before triton is imported runs them on the CPU in triton's interpreter)"
)


@functools.lru_cache(maxsize=1)
def _triton_import_problem() -> str | None:
    try:
        importlib.import_module("triton")
    except ImportError as exc:
        return f"triton is not installed ({exc})"
    except Exception as exc:  # a broken install can fail in many ways; report, never crash
        return f"triton failed to import ({type(exc).__name__}: {exc})"
    return None


@functools.lru_cache(maxsize=8)
def _gpu_driver_problem(index: int) -> str | None:
    if not torch.cuda.is_available():
        return "CUDA is not available to torch"
    try:
        import triton

        triton.runtime.driver.active.get_current_target()
    except Exception as exc:
        return f"triton found no usable GPU driver ({type(exc).__name__}: {exc})"
    major, minor = torch.cuda.get_device_capability(index)
    if (major, minor) < (8, 0):
        return f"GPU compute capability {major}.{minor} is below the 8.0 the kernels need"
    return None


# --------------------------------------------------------------------------------------------
# Running the Triton kernels
# --------------------------------------------------------------------------------------------


def _triton_module() -> ModuleType:
    """The kernel module, imported on first use (this is where triton gets imported)."""
    return importlib.import_module("kernels._warp_attention_triton")


def _run_triton(q, k, v, p, key_bias, scale, *, num_splits, config) -> Outputs:
    bsz = max(t.shape[0] for t in (q, k, v, p))
    if key_bias is not None:
        bsz = max(bsz, key_bias.shape[0])
    if bsz == 0 or q.shape[1] == 0:
        return warp_attention_reference(q, k, v, p, key_bias, scale)
    module = _triton_module()
    # Broadcast batches become stride-0 views (no copy); the kernels want unit last strides.
    q, k, v, p = (_unit_last_stride(t).expand(bsz, -1, -1) for t in (q, k, v, p))
    if key_bias is not None:
        key_bias = _unit_last_stride(key_bias.detach()).expand(bsz, -1)
    scale = default_scale(q.shape[2]) if scale is None else float(scale)
    launch = None if config is None else module.LaunchConfig(*config)
    # Triton launches on the current device: make it the tensors' one.
    guard = torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext()
    with guard:
        return module.WarpAttentionFunction.apply(q, k, v, p, key_bias, scale, num_splits, launch)


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()
