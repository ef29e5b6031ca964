"""Many receivers on one GPU: the frames of concurrent streams rendered in shared batches.

Why: one frame at a time a render is bound by kernel launches (receiver.graphs), and a server
that rebuilds the video of many calls would pay that per stream. ``model.render`` takes source
features with a batch dimension, so frames of *different* streams, each with its own keyframe
set, can share one call: the keyframe sets are stacked along the batch (keys (B, N*L, d),
values (B, N*L, d'), pixels (B, N*L, 3 + P), keypoints (B, N, K, 2); ``SourceFeatures``), one
stream per row. Every row attends only to its own keys (the attention is batched, eq. 1 per
row), so a frame rendered in a batch is the frame rendered alone, up to float rounding.

Stacking needs equal key lengths: frames are grouped by their number of keyframes N (1-3 in
practice) and each group is cut into balanced chunks of at most ``max_batch`` frames; one
render call per chunk, one copy to the host per chunk. A stack is reused while the same
streams come in the same order with the same keyframe sets (a server's steady state: every
stream sends its next frame each tick), so the copy that builds it is paid once per keyframe
change, not per frame.

:class:`BatchRenderer` renders :class:`FrameJob` s (features and keypoints);
:meth:`BatchRenderer.render_streams` takes ``(SourceSet, refs, keypoints)`` triples, as the
receive core holds them, and answers None where a stream lacks a keyframe of its refs.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from codec.inference import check_finite, to_uint8
from codec.model import ImplicitWarpingModel, SourceFeatures
from receiver.sources import SourceSet, device_of

_FIELDS = ("keys", "values", "pixels", "kp", "strength")


@dataclass(frozen=True)
class FrameJob:
    """One frame of one stream: its keyframe set's features (batch 1, N sources) and its
    keypoints (K, 3) rows (x, y, strength)."""

    features: SourceFeatures
    keypoints: np.ndarray


def chunks(n: int, max_batch: int) -> list[range]:
    """``n`` frames in the fewest chunks of at most ``max_batch``, sizes within one of each
    other (100 at 32 -> 25, 25, 25, 25, not 32, 32, 32, 4: no chunk waits on a long one)."""
    count = -(-n // max_batch)
    bounds = [round(i * n / count) for i in range(count + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


class BatchRenderer:
    """Renders frames of many streams in shared calls (see the module docstring).

    Args:
        model: the model (eval mode, on the device to render on).
        max_batch: frames per render call at most.
        bf16: render under bfloat16 autocast (CUDA), as the batched renders of
            ``benchmarks.render`` measure it; float32 otherwise (the receive core's precision).
        cached_stacks: stacked keyframe sets kept for reuse.
    """

    def __init__(
        self,
        model: ImplicitWarpingModel,
        *,
        max_batch: int = 32,
        bf16: bool = False,
        cached_stacks: int = 8,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model
        self.max_batch = max_batch
        self.bf16 = bf16
        self.device = device_of(model)
        self.cached_stacks = cached_stacks
        self.calls = 0  # render calls made
        self.stacks_built = 0
        self._stacks: OrderedDict[tuple[int, ...], tuple[list, SourceFeatures]] = OrderedDict()

    @torch.inference_mode()
    def render_images(self, jobs: Sequence[FrameJob]) -> list[torch.Tensor]:
        """Frames as float images (3, H, W) in [0, 1], in the order of ``jobs``."""
        out: list[torch.Tensor | None] = [None] * len(jobs)
        for idx, images in self._render(jobs):
            for i, image in zip(idx, images):
                out[i] = image
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def render(self, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        """Frames as (H, W, 3) uint8 (rounded as the receive core rounds), in job order;
        ModelMismatchError if the model renders NaN or infinite values."""
        out: list[np.ndarray | None] = [None] * len(jobs)
        for idx, images in self._render(jobs):
            check_finite(images, "rendered frames")
            for i, rgb in zip(idx, to_uint8(images)):
                out[i] = rgb
        return out  # type: ignore[return-value]

    def render_streams(
        self, requests: Sequence[tuple[SourceSet, tuple[int, ...], np.ndarray]]
    ) -> list[np.ndarray | None]:
        """``(stream's SourceSet, refs, keypoints (K, 3))`` per frame -> (H, W, 3) uint8, or
        None where the stream does not hold a keyframe of ``refs`` (its receiver holds)."""
        jobs, where = [], []
        for i, (sources, refs, keypoints) in enumerate(requests):
            features = sources.features(refs)
            if features is not None:
                jobs.append(FrameJob(features, keypoints))
                where.append(i)
        out: list[np.ndarray | None] = [None] * len(requests)
        for i, rgb in zip(where, self.render(jobs)):
            out[i] = rgb
        return out

    # ---------------------------------------------------------------------------------------
    def _render(self, jobs: Sequence[FrameJob]):
        """Yield (job indices, images (b, 3, H, W)) per render call."""
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            f = job.features
            groups.setdefault((f.num_sources, f.keys.shape[1], f.keys.dtype), []).append(i)
        for members in groups.values():
            for part in chunks(len(members), self.max_batch):
                idx = [members[j] for j in part]
                yield idx, self._call([jobs[i] for i in idx])

    def _call(self, jobs: list[FrameJob]) -> torch.Tensor:
        src = self._stack([j.features for j in jobs])
        kp = torch.from_numpy(np.stack([np.asarray(j.keypoints) for j in jobs]))  # (B, K, 3)
        kp = kp.to(self.device, non_blocking=True)
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.bf16
            else contextlib.nullcontext()
        )
        with autocast:
            images = self.model.render(src, kp[..., :2], kp[..., 2])  # (B, 3, H, W)
        self.calls += 1
        return images.float()

    def _stack(self, parts: list[SourceFeatures]) -> SourceFeatures:
        """The keyframe sets of one chunk stacked along the batch (B, ...), reused while the
        chunk holds the same feature objects in the same order."""
        if len(parts) == 1:
            return parts[0]
        key = tuple(id(p) for p in parts)
        held = self._stacks.get(key)
        if held is not None and all(a is b for a, b in zip(held[0], parts)):
            self._stacks.move_to_end(key)
            return held[1]
        stacked = SourceFeatures(*(torch.cat([getattr(p, f) for p in parts]) for f in _FIELDS))
        self._stacks[key] = (list(parts), stacked)  # the parts are held: their ids stay theirs
        while len(self._stacks) > self.cached_stacks:
            self._stacks.popitem(last=False)
        self.stacks_built += 1
        return stacked


__all__ = ["BatchRenderer", "FrameJob", "chunks"]
