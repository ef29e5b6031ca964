"""The receive path on a CUDA GPU (skipped without one): frames replayed from CUDA graphs equal
the eager frames, a keyframe change re-captures, a worker thread can capture while another
thread uses the GPU; the attention custom op passes opcheck on CUDA and lets torch.compile
(Inductor) compile the render; the pinned launches of the committed table compute the
reference at the codec's shapes.

Run: ``PYTHONPATH=. python3 -m pytest tests/test_render_gpu.py -q`` (benchmarks/gpu_visit.sh).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from _frames import keyframe

import kernels
from codec.config import tiny_config
from codec.model import ImplicitWarpingModel
from codec.weights import DEFAULT_WEIGHTS, load_model, save_weights
from eval.bench import source_set, synthetic_stream
from kernels import pinned

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def shipped():
    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip("the shipped weights are not here")
    return load_model(DEFAULT_WEIGHTS, device=torch.device("cuda"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gpu") / "tiny.safetensors"
    save_weights(ImplicitWarpingModel(tiny_config()), path)
    return load_model(path, device=torch.device("cuda"))


def frames_both_ways(model, n_sources: int, batch: int, count: int = 6):
    stream = synthetic_stream(model, n_sources, frames=count * batch)
    kp = np.stack([f.keypoints for f in stream.frames])
    graphed, eager = source_set(model, stream), source_set(model, stream)
    eager.graphs = None
    assert graphed.graphs is not None  # the receive core's default on CUDA
    pairs = []
    for i in range(count):
        part = kp[i * batch : (i + 1) * batch]
        pairs.append((graphed.render(stream.refs, part), eager.render(stream.refs, part)))
    return graphed.graphs, pairs


@pytest.mark.parametrize("n_sources", [1, 3])
def test_graph_frames_equal_eager_frames_shipped(shipped, n_sources):
    graphs, pairs = frames_both_ways(shipped, n_sources, batch=1)
    assert graphs.broken is None and graphs.captures == 1 and graphs.replays == len(pairs)
    for got, want in pairs:
        np.testing.assert_array_equal(got, want)


def test_batched_graph_frames_match_eager_shipped(shipped):
    """Three frames ride in a graph of four (a power-of-two bucket)."""
    graphs, pairs = frames_both_ways(shipped, 1, batch=3, count=3)
    assert graphs.captures == 1
    for got, want in pairs:
        diff = np.abs(got.astype(int) - want.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_a_new_keyframe_recaptures_on_the_gpu(tiny):
    stream = synthetic_stream(tiny, 1, frames=4)
    graphed, eager = source_set(tiny, stream), source_set(tiny, stream)
    eager.graphs = None
    kp = np.stack([f.keypoints for f in stream.frames])[:1]
    graphed.render((0,), kp)
    for s in (graphed, eager):
        s.add(keyframe(0, seed=42))  # 64 px, the tiny model's size
    np.testing.assert_array_equal(graphed.render((0,), kp), eager.render((0,), kp))
    assert graphed.graphs.captures == 2


def test_capture_on_a_worker_thread_while_another_thread_uses_the_gpu(tiny):
    """A call renders on the receiver's thread while its sender detects on another."""
    stream = synthetic_stream(tiny, 1, frames=8)
    sources = source_set(tiny, stream)
    kp = np.stack([f.keypoints for f in stream.frames])
    stop = threading.Event()

    def busy():
        x = torch.randn(256, 256, device="cuda")
        while not stop.is_set():
            x = (x @ x).tanh()
        torch.cuda.synchronize()

    other = threading.Thread(target=busy)
    other.start()
    out: list = []
    worker = threading.Thread(
        target=lambda: out.extend(sources.render((0,), kp[i : i + 1]) for i in range(8))
    )
    worker.start()
    worker.join(120)
    stop.set()
    other.join(60)
    assert len(out) == 8 and sources.graphs.broken is None and sources.graphs.captures == 1


def test_custom_op_opcheck_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 64, 32, device="cuda", generator=g, requires_grad=True)
    k = torch.randn(2, 80, 32, device="cuda", generator=g, requires_grad=True)
    v = torch.randn(2, 80, 48, device="cuda", generator=g, requires_grad=True)
    p = torch.rand(2, 80, 3, device="cuda", generator=g, requires_grad=True)
    torch.library.opcheck(kernels.ops.warp_attention_op, (q, k, v, p, None, 0.3, True))


def test_torch_compile_of_the_render_runs_and_matches_eager(tiny):
    """Inductor used to fail inside our Triton kernel (issue 20); with the attention as an
    opaque custom op it compiles the rest of the render."""
    stream = synthetic_stream(tiny, 2, frames=2)
    sources = source_set(tiny, stream)
    src = sources.features(stream.refs)
    kp = torch.from_numpy(np.stack([f.keypoints for f in stream.frames])).cuda()
    compiled = torch.compile(tiny.render)
    with torch.inference_mode():
        want = tiny.render(src, kp[..., :2], kp[..., 2])
        got = compiled(src, kp[..., :2], kp[..., 2])
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def codec_shapes() -> list[pinned.ShapeKey]:
    if not torch.cuda.is_available():
        return []
    target = pinned.cuda_target(torch.cuda.current_device())
    return [k for k in pinned.committed() if k.target == target]


@pytest.mark.parametrize("key", codec_shapes(), ids=lambda k: f"{k.lq}x{k.lk}-{k.dv}-{k.dtype}")
def test_pinned_launches_compute_the_reference(key):
    g = torch.Generator(device="cuda").manual_seed(1)
    dtype = getattr(torch, key.dtype)
    q = torch.randn(1, key.lq, key.d, device="cuda", generator=g).to(dtype)
    k = torch.randn(1, key.lk, key.d, device="cuda", generator=g).to(dtype)
    v = torch.randn(1, key.lk, key.dv, device="cuda", generator=g).to(dtype)
    p = torch.rand(1, key.lk, key.dp, device="cuda", generator=g).to(dtype)
    module = kernels.dispatch._triton_module()
    assert module.pinned_launch(q, key.lk, key.dv, key.dp)[0] is not None
    outs = kernels.warp_attention(q, k, v, p, backend="triton")
    refs = kernels.warp_attention_reference(q, k, v, p)
    tol = {"float32": 5e-3, "bfloat16": 1.5e-2, "float16": 3e-3}[key.dtype]
    for o, r in zip(outs, refs, strict=True):
        err = ((o.double() - r.double()).norm() / r.double().norm()).item()
        assert err < tol, err
