"""The per-frame render replayed from CUDA graphs, one per keyframe set and batch size.

Why: one frame at a time, ``model.render`` on an H200 took 4.8-5.5 ms eagerly and 2.4 ms when
replayed from a CUDA graph, with identical output (issue 20): at batch 1 more than half of the
time is the CPU launching some hundred small kernels. A graph launches them all at once.

What is captured: the whole per-frame path of ``SourceSet.render`` on the device, from
keypoints to pixels: ``model.render`` from the keyframes' cached source features, the
finiteness check and the conversion to (B, H, W, 3) uint8. A graph reads its inputs from, and
writes its outputs to, fixed ("static") tensors, and the source features by address, so one
graph serves one keyframe set (``refs``) at one batch size:

- per call, the keypoints are copied into the graph's static input (through pinned memory),
  the graph is replayed, and the pixels and the finite flag are copied back to pinned host
  memory (one synchronisation per call, as the eager path's ``.cpu()``);
- a graph is captured the first time a set of refs is rendered at a batch size, and again when
  a keyframe of the set changed: the caller passes the objects it holds for the refs
  (``owners``, e.g. ``SourceSet``'s keyframes), and a graph is reused only while every one of
  them is the very object it was captured with (a slot that ``SourceSet.add`` replaced holds a
  new object, so the stale graph is re-captured, never replayed on old features);
- batch sizes are rounded up to a power of two (at most ``max_batch``; the extra rows render
  stale keypoints and are dropped), so a decoder's batches need a few graphs, not one per size;
- at most ``max_graphs`` graphs are kept (least recently used dropped); they share one memory
  pool, safe because calls are sequential and each call's outputs are copied out before the
  next replay.

Capture costs a few warm-up renders (cuDNN and Triton choose their kernels outside the
capture) plus the capture; a keyframe change thus costs a few frames' time once. A capture
that fails (an op that cannot be captured, another CUDA version's limits) disables the graphs
of this renderer with a logged warning, and the caller renders eagerly, as before.

``capture`` is pluggable: :func:`cuda_graph` on a GPU; :func:`eager_replay` re-runs the body
into the same static outputs, which keeps every bookkeeping step above testable on a CPU.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from codec.model import ImplicitWarpingModel, SourceFeatures

log = logging.getLogger(__name__)

Outputs = tuple[torch.Tensor, torch.Tensor]  # rgb (B, H, W, 3) uint8, finite () bool
#: capture(body, pool) -> (static outputs, replay): body reads the static inputs and returns
#: fresh outputs; after replay() the static outputs hold what body would return now.
Capture = Callable[[Callable[[], Outputs], object], tuple[Outputs, Callable[[], None]]]

WARMUP_RENDERS = 2


def cuda_graph(body: Callable[[], Outputs], pool: object) -> tuple[Outputs, Callable[[], None]]:
    """Capture ``body`` in a CUDA graph (after warm-up runs on a side stream, where cuDNN and
    Triton pick their kernels); ``capture_error_mode="thread_local"`` lets other threads (a
    call's sender) keep using the GPU meanwhile."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_RENDERS):
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        outputs = body()
    return outputs, graph.replay


def eager_replay(body: Callable[[], Outputs], pool: object) -> tuple[Outputs, Callable[[], None]]:
    """A stand-in for :func:`cuda_graph` with the same contract (static outputs refreshed by
    replay), running ``body`` eagerly: for CPU tests of the bookkeeping."""
    outputs = body()

    def replay() -> None:
        for static, fresh in zip(outputs, body(), strict=True):
            static.copy_(fresh)

    return outputs, replay


def render_body(
    model: ImplicitWarpingModel, src: SourceFeatures, keypoints: torch.Tensor, bf16: bool = False
) -> Outputs:
    """The captured work: keypoints (B, K, 3) rows (x, y, strength) -> rgb (B, H, W, 3) uint8
    (rounded like ``codec.inference.to_uint8``) and whether every rendered value was finite.
    ``bf16``: under bfloat16 autocast (measured beside float32; not the receive core's)."""
    autocast = torch.autocast(keypoints.device.type, dtype=torch.bfloat16, enabled=bf16)
    with autocast:
        images = model.render(src, keypoints[..., :2], keypoints[..., 2])  # (B, 3, H, W)
    finite = torch.isfinite(images).all()
    rgb = images.float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return rgb.permute(0, 2, 3, 1).contiguous(), finite


def bucket(batch: int) -> int:
    """The captured batch size for ``batch`` frames: the next power of two."""
    return 1 << (batch - 1).bit_length()


@dataclass
class _Graph:
    owners: tuple[object, ...]  # held, so identity checks cannot be fooled by a reused id
    src: SourceFeatures  # held: the graph reads these tensors by address
    keypoints: torch.Tensor  # (Bb, K, 3) static input on the device
    outputs: Outputs  # static outputs on the device
    replay: Callable[[], None]
    host_keypoints: torch.Tensor  # (Bb, K, 3) staging (pinned on CUDA)
    host_rgb: torch.Tensor  # (Bb, H, W, 3) uint8 (pinned on CUDA)
    host_finite: torch.Tensor  # () bool (pinned on CUDA)


class RenderGraphs:
    """Captured renders of one model, keyed by the caller's key (refs) and batch bucket.

    Args:
        model: the model to render with (eval mode, on its device).
        capture: how to capture (:func:`cuda_graph`; tests: :func:`eager_replay`).
        max_graphs: graphs kept at once (least recently used dropped).
        max_batch: larger batches are not captured (:meth:`takes` says False).
        bf16: render under bfloat16 autocast (benchmarks; the receive core renders float32,
            the eager path's pixels).
    """

    def __init__(
        self,
        model: ImplicitWarpingModel,
        *,
        capture: Capture = cuda_graph,
        max_graphs: int = 8,
        max_batch: int = 16,
        bf16: bool = False,
    ) -> None:
        self.model = model
        self.bf16 = bf16
        self.capture = capture
        self.max_graphs = max_graphs
        self.max_batch = max_batch
        self.device = next(model.parameters()).device
        self.captures = 0  # how many graphs were captured (each keyframe set and bucket)
        self.replays = 0
        self.broken: str | None = None  # why capturing failed; then takes() is False
        self._graphs: OrderedDict[tuple[Hashable, int, str], _Graph] = OrderedDict()
        self._pool = torch.cuda.graph_pool_handle() if self.device.type == "cuda" else None
        self._pin = self.device.type == "cuda"

    @classmethod
    def for_model(cls, model: ImplicitWarpingModel) -> RenderGraphs | None:
        """Graphs on a CUDA device, None elsewhere (the caller renders eagerly)."""
        device = next(model.parameters()).device
        return cls(model) if device.type == "cuda" and torch.cuda.is_available() else None

    def __len__(self) -> int:
        return len(self._graphs)

    def takes(self, batch: int) -> bool:
        """Whether :meth:`render` serves a batch of this size."""
        return self.broken is None and 1 <= batch <= self.max_batch

    @torch.inference_mode()
    def render(
        self,
        key: Hashable,
        owners: Sequence[object],
        src: SourceFeatures,
        keypoints: np.ndarray,
    ) -> tuple[np.ndarray, bool] | None:
        """Frames of one keyframe set: keypoints (B, K, 3) -> ((B, H, W, 3) uint8, all finite),
        from the graph of (``key``, batch bucket), captured first if it is missing or was made
        with other ``owners``; None if capturing failed (render eagerly; see ``broken``)."""
        b = keypoints.shape[0]
        size = bucket(b)
        slot = (key, size, str(keypoints.dtype))
        graph = self._graphs.get(slot)
        if graph is None or not _same(graph.owners, owners):
            self._graphs.pop(slot, None)  # drop the stale one first: its memory goes back
            graph = self._capture(tuple(owners), src, keypoints, size)
            if graph is None:
                return None
            self._graphs[slot] = graph
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(slot)
        return self._run(graph, keypoints)

    def clear(self) -> None:
        self._graphs.clear()

    # ---------------------------------------------------------------------------------------
    def _run(self, graph: _Graph, keypoints: np.ndarray) -> tuple[np.ndarray, bool]:
        b = keypoints.shape[0]
        graph.host_keypoints[:b].numpy()[...] = keypoints
        graph.keypoints.copy_(graph.host_keypoints, non_blocking=self._pin)
        graph.replay()
        rgb, finite = graph.outputs
        graph.host_rgb.copy_(rgb, non_blocking=self._pin)
        graph.host_finite.copy_(finite, non_blocking=self._pin)
        if self._pin:
            torch.cuda.current_stream(self.device).synchronize()
        self.replays += 1
        # a copy: the host buffer is overwritten by the next call, the frames are kept
        return graph.host_rgb[:b].numpy().copy(), bool(graph.host_finite)

    def _capture(
        self, owners: tuple[object, ...], src: SourceFeatures, keypoints: np.ndarray, size: int
    ) -> _Graph | None:
        first = torch.from_numpy(np.array(keypoints))  # (B, K, 3), a writable copy
        # rows past the batch repeat its first frame, so the warm-up renders real keypoints
        padded = torch.cat([first, first[:1].expand(size - len(first), -1, -1)])
        host_kp = self._host_empty(padded.shape, padded.dtype)
        host_kp.copy_(padded)
        static_kp = padded.to(self.device)
        try:
            outputs, replay = self.capture(
                lambda: render_body(self.model, src, static_kp, self.bf16), self._pool
            )
        except RuntimeError as exc:  # not capturable here (CUDA errors are RuntimeErrors): eager
            self.broken = f"{type(exc).__name__}: {exc}"
            self._graphs.clear()
            log.warning("rendering without CUDA graphs: capturing failed (%s)", self.broken)
            return None
        self.captures += 1
        rgb, finite = outputs
        return _Graph(
            owners=owners,
            src=src,
            keypoints=static_kp,
            outputs=outputs,
            replay=replay,
            host_keypoints=host_kp,
            host_rgb=self._host_empty(rgb.shape, rgb.dtype),
            host_finite=self._host_empty(finite.shape, finite.dtype),
        )

    def _host_empty(self, shape, dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=self._pin)


def _same(held: tuple[object, ...], owners: Sequence[object]) -> bool:
    return len(held) == len(owners) and all(a is b for a, b in zip(held, owners))


__all__ = ["RenderGraphs", "bucket", "cuda_graph", "eager_replay", "render_body"]
