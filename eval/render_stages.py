"""Where the time of one ``model.render`` goes, stage by stage, measured from outside the model.

The stages are those of ``ImplicitWarpingModel.render_with_warp`` (codec/model.py), in order:

| stage | what runs |
|---|---|
| query U-Net | keypoint maps of the driving keypoints, the query U-Net, its projection, + pe(z) |
| key positions | the motion prior (``source_positions``), pe(T(z')) added to the cached keys, the learned extra keys, values and pixels appended |
| attention pass 1 | ``kernels.warp_attention``: A V, A K, A P (eq. 1) |
| residual MLP | MLP([A K, A P]) added to A V, reshaped to the feature map |
| attention pass 2 (flow) | the sharpened attention of ``warp_sources`` over the token tracks |
| source warp | the token tracks before it; after it the flow upsampled and ``grid_sample`` of the full-resolution sources |
| prior warp | ``prior_warp``: the nearest source warped by the keypoints' own motion |
| decoder | ``ConvDecoder``: residual blocks, two up blocks, the output and the two masks |
| finite check, uint8, copy to host | after the model returns, until the caller's end mark (``SourceSet.render``: NaN check, uint8, ``.cpu()``) |
| other | what runs between these calls (glue) |

How: the model is not edited. For the length of a ``with instrument(model, marks)`` block, its
methods ``queries``, ``warp_sources`` and ``prior_warp``, the decoder (forward hooks) and
``kernels.warp_attention`` (which codec.model calls through the ``kernels`` module) are
wrapped so that each entry and exit records a mark: a CUDA event on the GPU (in stream order,
so a segment's time is what the GPU timeline spent there, launch gaps included: where the
eager path waits on the CPU), ``time.perf_counter`` on a CPU. Consecutive marks bound the
segments, so the stages add up to the whole call exactly. :func:`kernel_times` instead sums,
with ``torch.profiler``, the GPU time of the kernels each stage launched: what the stage costs
once launch overhead is gone (a CUDA graph's replay).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import torch

import kernels
from codec.model import ImplicitWarpingModel

STAGES = (
    "query U-Net",
    "key positions",
    "attention pass 1",
    "residual MLP",
    "attention pass 2 (flow)",
    "source warp",
    "prior warp",
    "decoder",
    "finite check, uint8, copy to host",
    "other",
)
# (mark before, mark after) -> stage; pairs not listed are "other"
_SEGMENTS = {
    ("start", "queries>"): "query U-Net",
    ("queries>", "attn<"): "key positions",
    ("attn<", "attn>"): "attention pass 1",
    ("attn>", "warp<"): "residual MLP",
    ("warp<", "attn2<"): "source warp",
    ("attn2<", "attn2>"): "attention pass 2 (flow)",
    ("attn2>", "warp>"): "source warp",
    ("prior<", "prior>"): "prior warp",
    ("dec<", "dec>"): "decoder",
    # from the model's return to the caller's "end": SourceSet.render's finite check, the
    # conversion to uint8 and the copy to the host (what a receiver does after the model)
    ("dec>", "end"): "finite check, uint8, copy to host",
}


class Marks:
    """Labelled timestamps of one or more renders (CUDA events or perf_counter)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._marks: list[tuple[str, object]] = []
        self.on_mark: Callable[[str], None] | None = None  # e.g. a profiler range switch

    def mark(self, label: str) -> None:
        if self.on_mark is not None:
            self.on_mark(label)
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks.append((label, event))
        else:
            self._marks.append((label, time.perf_counter()))

    def stages(self) -> dict[str, float]:
        """Milliseconds per stage, summed over every render recorded (after they finished)."""
        if self.cuda:
            torch.cuda.synchronize()
        out = dict.fromkeys(STAGES, 0.0)
        for (a, ta), (b, tb) in zip(self._marks, self._marks[1:]):
            if b == "start":  # the gap between two renders belongs to none
                continue
            name = _SEGMENTS.get((a, b), "other")
            out[name] += ta.elapsed_time(tb) if self.cuda else (tb - ta) * 1e3
        return out

    def clear(self) -> None:
        self._marks.clear()


@contextlib.contextmanager
def instrument(model: ImplicitWarpingModel, marks: Marks) -> Iterator[None]:
    """Marks at the stage boundaries of ``model.render`` while the block runs (see the module
    docstring); the caller marks "start" before and "end" after each render."""
    depth = {"warp": 0}

    def wrap(name: str, before: str | None, after: str):
        original = getattr(model, name)

        def wrapped(*args, **kwargs):
            if before:
                marks.mark(before)
            if name == "warp_sources":
                depth["warp"] += 1
            try:
                return original(*args, **kwargs)
            finally:
                if name == "warp_sources":
                    depth["warp"] -= 1
                marks.mark(after)

        setattr(model, name, wrapped)  # an instance attribute shadows the method

    attention = kernels.warp_attention

    def attention_marked(*args, **kwargs):
        tag = "attn2" if depth["warp"] else "attn"
        marks.mark(tag + "<")
        try:
            return attention(*args, **kwargs)
        finally:
            marks.mark(tag + ">")

    wrap("queries", None, "queries>")
    wrap("warp_sources", "warp<", "warp>")
    wrap("prior_warp", "prior<", "prior>")
    hooks = [
        model.decoder.register_forward_pre_hook(lambda *_: marks.mark("dec<")),
        model.decoder.register_forward_hook(lambda *_: marks.mark("dec>")),
    ]
    kernels.warp_attention = attention_marked
    try:
        yield
    finally:
        kernels.warp_attention = attention
        for h in hooks:
            h.remove()
        for name in ("queries", "warp_sources", "prior_warp"):
            delattr(model, name)


def stage_times(
    model: ImplicitWarpingModel, render: Callable[[], object], reps: int, warmup: int = 2
) -> dict[str, float]:
    """Milliseconds per stage of one ``render()`` call (median-free: the mean over ``reps``
    calls after ``warmup``), plus "total"; ``render`` must call ``model.render`` once."""
    device = next(model.parameters()).device
    marks = Marks(device)
    with instrument(model, marks):
        for _ in range(warmup):
            render()
        if marks.cuda:
            torch.cuda.synchronize()
        marks.clear()
        for _ in range(reps):
            marks.mark("start")
            render()
            marks.mark("end")
    per = {k: v / reps for k, v in marks.stages().items()}
    per["total"] = sum(per.values())
    return per


def kernel_times(
    model: ImplicitWarpingModel, render: Callable[[], object], reps: int, warmup: int = 2
) -> dict[str, float]:
    """GPU kernel milliseconds per stage of one render (torch.profiler; CUDA only): each stage
    is a profiler range, and the time of the kernels launched inside it is summed."""
    from torch.profiler import ProfilerActivity, profile, record_function

    device = next(model.parameters()).device
    marks = Marks(device)
    current: list[record_function] = []

    def switch(label: str) -> None:
        if current:
            current.pop().__exit__(None, None, None)
        stage = _stage_after(label)
        if stage is not None:
            rf = record_function(f"stage: {stage}")
            rf.__enter__()
            current.append(rf)

    with instrument(model, marks):
        for _ in range(warmup):
            render()
        torch.cuda.synchronize()
        marks.on_mark = switch
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                marks.mark("start")
                render()
                marks.mark("end")
            torch.cuda.synchronize()
        marks.on_mark = None
    from torch.autograd import DeviceType

    out = dict.fromkeys(STAGES, 0.0)
    for event in prof.events():
        # the CPU-side range: its device time is the kernels launched inside it (the GPU-side
        # copy of a range spans them, gaps included, and is skipped)
        if event.name.startswith("stage: ") and event.device_type == DeviceType.CPU:
            gpu_us = getattr(event, "device_time_total", None)
            if gpu_us is None:  # older torch
                gpu_us = event.cuda_time_total
            out[event.name.removeprefix("stage: ")] += gpu_us / 1e3 / reps
    out["total"] = sum(out.values())
    return out


_AFTER = {
    "start": "query U-Net",
    "queries>": "key positions",
    "attn<": "attention pass 1",
    "attn>": "residual MLP",
    "warp<": "source warp",
    "attn2<": "attention pass 2 (flow)",
    "attn2>": "source warp",
    "prior<": "prior warp",
    "dec<": "decoder",
    "dec>": "finite check, uint8, copy to host",
}


def _stage_after(label: str) -> str | None:
    """The stage a mark opens (None after the end of a render)."""
    if label == "end":
        return None
    return _AFTER.get(label, "other")


__all__ = ["STAGES", "Marks", "instrument", "kernel_times", "stage_times"]
