"""Synthetic keypoint tracks and example streams, for tests, fuzzing and tools.

The tracks imitate a talking head inside a static crop: a smooth random walk of the whole head
(translation and scale), small per-keypoint jitter, a mouth-like oscillation on a few
keypoints, and slowly varying strengths. Not a substitute for real tracks when measuring rate.
"""

from __future__ import annotations

import io

import numpy as np

from bitstream.entropy import EntropyModel, load_prior
from bitstream.frame import KeypointFrame
from bitstream.keypoints import KeypointEncoder, encode_track
from bitstream.stream import StreamWriter
from bitstream.units import EndUnit, ImageCodec, KeyframeUnit, ParamsUnit


def synthetic_track(rng: np.random.Generator, frames: int, k: int = 20) -> np.ndarray:
    """``(frames, k, 3)`` float32 track: x, y in [-1, 1], strength in [0, 1]."""
    layout = rng.uniform(-0.6, 0.6, (k, 2))  # (k, 2)
    velocity = np.zeros(2)
    head = np.zeros((frames, 2))
    for t in range(1, frames):
        velocity = 0.9 * velocity + rng.normal(0, 0.0015, 2)
        head[t] = 0.995 * head[t - 1] + velocity
    scale = 1 + 0.05 * np.sin(np.arange(frames) / 40 + rng.uniform(0, 6))  # (frames,)
    xy = layout[None] * scale[:, None, None] + head[:, None, :]  # (frames, k, 2)
    mouth = rng.choice(k, size=min(4, k), replace=False)
    xy[:, mouth, 1] += 0.03 * np.sin(np.arange(frames) / 3.0)[:, None]
    xy += rng.normal(0, 0.002, xy.shape)  # detector jitter, ~0.25 px at 256 px
    phase = rng.uniform(0, 2 * np.pi, k)
    s = (
        0.55
        + 0.2 * np.sin(np.arange(frames)[:, None] / 50 + phase)
        + rng.normal(0, 0.004, (frames, k))
    )
    out = np.concatenate([np.clip(xy, -1, 1), np.clip(s, 0, 1)[..., None]], axis=-1)
    return out.astype(np.float32)


def example_params(model: EntropyModel, k: int = 20, **overrides) -> ParamsUnit:
    fields = dict(
        width=256, height=256, fps_num=30, fps_den=1, num_keypoints=k,
        weights_id=b"weights!", entropy_id=model.id,
    )  # fmt: skip
    fields.update(overrides)
    return ParamsUnit(**fields)


def example_stream(
    rng: np.random.Generator,
    frames: int = 40,
    k: int = 20,
    frames_per_unit: int = 10,
    resync_period: int = 20,
    model: EntropyModel | None = None,
) -> tuple[bytes, list[KeypointFrame]]:
    """A complete small file (params, keyframe, keypoint units, end) and the frames in it."""
    model = model or load_prior()
    params = example_params(model, k)
    track = synthetic_track(rng, frames, k)
    kf = [KeypointFrame(i, params.nominal_pts(i), kp, refs=(0,)) for i, kp in enumerate(track)]
    out = io.BytesIO()
    writer = StreamWriter(out)
    writer.write(params)
    writer.write(KeyframeUnit(0, 0, ImageCodec.WEBP, rng.bytes(int(rng.integers(8, 64)))))
    encoder = KeypointEncoder(params, model, resync_period=resync_period)
    for unit in encode_track(kf, encoder, frames_per_unit):
        writer.write(unit)
    writer.finish()
    return out.getvalue(), kf


def forged_gap_stream(
    params: ParamsUnit,
    keyframes: list[KeyframeUnit],
    model: EntropyModel | None = None,
    *,
    units: int = 3,
    spacing: int = 2000,
    frames_per_unit: int = 1,
    end_total: int | None = None,
    rng: np.random.Generator | None = None,
) -> bytes:
    """A hostile stream with valid CRCs everywhere (issue 17, row 4): ``params``, the
    ``keyframes``, then ``units`` resync units of ``frames_per_unit`` frames each, one every
    ``spacing`` frames, and an end unit that counts to the last frame (or says ``end_total``).

    The file carries ``units * frames_per_unit`` frames but names about ``units * spacing``:
    three units 2,000 frames apart are a few hundred bytes (plus the keyframe) that ask for
    4,000 frames, a thousand of them for 2 million. Decoders must refuse what the units cannot
    stand for (``bitstream.budget.FrameBudget``).
    """
    model = model or load_prior()
    rng = rng or np.random.default_rng(0)
    refs = (keyframes[0].keyframe_id,) if keyframes else (0,)
    track = synthetic_track(rng, frames_per_unit, params.num_keypoints)
    out = io.BytesIO()
    writer = StreamWriter(out)
    writer.write(params)
    for unit in keyframes:
        writer.write(unit)
    encoder = KeypointEncoder(params, model)
    for u in range(units):
        first = u * spacing
        frames = [
            KeypointFrame(first + t, params.nominal_pts(first + t), kp, refs=refs)
            for t, kp in enumerate(track)
        ]
        writer.write(encoder.encode(frames))  # an index jump: always a resync unit
    if end_total is None:
        writer.finish()
    else:
        writer.write(EndUnit(end_total, len(keyframes)))
    return out.getvalue()
