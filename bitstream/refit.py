"""Refitting the keypoint entropy tables to a detector's keypoints (``iwcodec entropy refit``).

A table only changes the rate, never correctness (docs/bitstream.md 6), but a retrained
detector moves its keypoints' statistics, and a table fitted to the old ones costs bits. The
refit, per candidate quantization (``CANDIDATE_STEPS``):

1. :func:`tune`: the adaptation hyper-parameters (radius, prior weight, halving limit) by
   two-fold cross-validation on the training tracks: fit on one half, count the adaptive
   model's ideal bits on the other through the real encoder (file defaults: 30 frames per
   unit, a resync every 60);
2. :func:`fit_table`: the table fitted on all training tracks with them;
3. :func:`measure_rate`: bytes per frame of the stream on held-out tracks, with the shipped
   table and with the refit one.

This module is the numpy half: tracks ``(T, K, 3)`` (x, y in [-1, 1], strength in [0, 1])
in, tables and rates out. The tracks come from the detector (``sender.tracks``), which
needs torch, so the two meet in ``sender.tracks.refit_entropy``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import zstandard

from bitstream.entropy import EntropyModel, collect_statistics, fit_prior
from bitstream.frame import KeypointFrame
from bitstream.keypoints import (
    DEFAULT_FRAMES_PER_UNIT,
    DEFAULT_RESYNC_PERIOD,
    KeypointDecoder,
    KeypointEncoder,
    encode_track,
)
from bitstream.units import KeypointUnit, ParamsUnit, Predictor
from iwcodec.errors import InputError

ZSTD_LEVEL = 19
#: (radius, prior weight, limit) candidates of :func:`tune` (docs/bitstream.md 8.3: all within
#: 1 % of each other under cross-validation on the face-mesh tracks).
TUNE_GRID = tuple(itertools.product((15, 31), (16, 64, 256), (1 << 13, 1 << 16)))


@dataclass(frozen=True)
class Adaptation:
    """How a fitted table adapts: the arguments of ``fit_prior`` besides the statistics."""

    radius: int = 31
    prior_weight: int = 64
    limit: int = 1 << 16
    buckets: int = 32
    increment: int = 32


@dataclass(frozen=True)
class Rate:
    """Per-frame averages over all tracks of one configuration (bytes per frame)."""

    frames_per_unit: int
    resync_period: int
    frames: int
    units: int
    stream: float  # keypoint units, framing included
    payload: float  # range-coder payload alone
    ideal: float  # adaptive model's sum of -log2 p / 8
    zstd_per_unit: float  # zstd -19 of the raw float32 values, one frame per unit's worth
    zstd_stream: float  # the same over the whole track
    raw: float  # float32 values
    encode_ms: float
    decode_ms: float

    @property
    def ratio(self) -> float:
        return self.stream / self.ideal

    def to_json(self) -> dict:
        return asdict(self) | {"ratio": self.ratio}


def read_tracks(directory: str | Path) -> list[tuple[str, np.ndarray]]:
    """Named ``(T, K, 3)`` float32 tracks, one ``<name>.npy`` each, sorted by name."""
    directory = Path(directory)
    tracks = [(p.stem, np.load(p).astype(np.float32)) for p in sorted(directory.glob("*.npy"))]
    for name, track in tracks:
        if track.ndim != 3 or track.shape[-1] != 3 or len(track) == 0:
            raise InputError(f"{directory / name}.npy: not a (T, K, 3) track ({track.shape})")
    if not tracks:
        raise InputError(f"no keypoint tracks (<clip>.npy) in {directory}")
    return tracks


def stream_params(
    model: EntropyModel, k: int, xy_steps: int, s_steps: int, predictor: Predictor, fps: float
) -> ParamsUnit:
    """The parameter unit of a 256 px stream of ``k`` keypoints coded with ``model``."""
    fps_num, fps_den = (round(fps * 1000), 1000) if fps != int(fps) else (int(fps), 1)
    return ParamsUnit(
        width=256, height=256, fps_num=fps_num, fps_den=fps_den, num_keypoints=k,
        weights_id=bytes(8), entropy_id=model.id, xy_steps=xy_steps, s_steps=s_steps,
        predictor=predictor,
    )  # fmt: skip


def code_track(
    track: np.ndarray,
    params: ParamsUnit,
    model: EntropyModel,
    frames_per_unit: int = DEFAULT_FRAMES_PER_UNIT,
    resync_period: int = DEFAULT_RESYNC_PERIOD,
) -> tuple[list[KeypointUnit], float]:
    """One track ``(T, K, 3)`` coded as a file codes it -> (units, ideal bits)."""
    encoder = KeypointEncoder(params, model, resync_period=resync_period)
    frames = [KeypointFrame(i, params.nominal_pts(i), kp) for i, kp in enumerate(track)]
    units, bits = [], 0.0
    for at in range(0, len(frames), frames_per_unit):
        units += encode_track(frames[at : at + frames_per_unit], encoder, frames_per_unit)
        bits += encoder.last_ideal_bits
    return units, bits


def ideal_bits(
    tracks: Sequence[np.ndarray],
    model: EntropyModel,
    xy_steps: int,
    s_steps: int,
    predictor: Predictor,
) -> tuple[float, int]:
    """Adaptive-model ideal bits summed over ``tracks`` at file defaults, and their frames."""
    bits, frames = 0.0, 0
    for track in tracks:
        params = stream_params(model, track.shape[1], xy_steps, s_steps, predictor, 30)
        bits += code_track(track, params, model)[1]
        frames += len(track)
    return bits, frames


def fit_table(
    tracks: Sequence[np.ndarray],
    xy_steps: int,
    s_steps: int,
    predictor: Predictor = Predictor.PREVIOUS,
    adaptation: Adaptation = Adaptation(),
) -> EntropyModel:
    """The table fitted to ``tracks`` (use training clips only, never the ones it is judged on)."""
    stats = collect_statistics(tracks, xy_steps, s_steps, predictor)
    return fit_prior(stats, **asdict(adaptation))


def tune(
    tracks: Sequence[np.ndarray],
    xy_steps: int,
    s_steps: int,
    predictor: Predictor = Predictor.PREVIOUS,
    grid: Sequence[tuple[int, int, int]] = TUNE_GRID,
    report: Callable[[str], None] = lambda line: None,
) -> Adaptation:
    """The (radius, prior weight, limit) of ``grid`` with the fewest held-out ideal bits under
    two-fold cross-validation (even and odd tracks); needs at least two tracks."""
    if len(tracks) < 2:
        raise InputError(f"tuning needs at least two training tracks, got {len(tracks)}")
    folds = (tracks[0::2], tracks[1::2])
    stats = [collect_statistics(f, xy_steps, s_steps, predictor) for f in folds]
    scored = []
    for radius, weight, limit in grid:
        adaptation = Adaptation(radius=radius, prior_weight=weight, limit=limit)
        total, n = 0.0, 0
        for i in (0, 1):
            model = fit_prior(stats[i], **asdict(adaptation))
            bits, frames = ideal_bits(folds[1 - i], model, xy_steps, s_steps, predictor)
            total, n = total + bits, n + frames
        scored.append((total / n / 8, adaptation))
        report(
            f"  radius {radius:3d} prior_weight {weight:4d} limit {limit:6d}: "
            f"{total / n / 8:.3f} B/frame (held-out ideal)"
        )
    return min(scored, key=lambda pair: pair[0])[1]


def measure_rate(
    tracks: Sequence[np.ndarray],
    model: EntropyModel,
    xy_steps: int,
    s_steps: int,
    predictor: Predictor = Predictor.PREVIOUS,
    fps: float = 30.0,
    frames_per_unit: int = DEFAULT_FRAMES_PER_UNIT,
    resync_period: int = DEFAULT_RESYNC_PERIOD,
) -> Rate:
    """What ``tracks`` cost coded with ``model``: the stream, its ideal, raw floats and zstd."""
    zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    n = units = stream = payload = zu = zs = raw = 0
    ideal = t_enc = t_dec = 0.0
    for track in tracks:
        params = stream_params(model, track.shape[1], xy_steps, s_steps, predictor, fps)
        start = time.perf_counter()
        coded, bits = code_track(track, params, model, frames_per_unit, resync_period)
        t_enc += time.perf_counter() - start
        decoder = KeypointDecoder(params, model)
        start = time.perf_counter()
        for unit in coded:
            decoder.decode(unit)
        t_dec += time.perf_counter() - start
        n += len(track)
        units += len(coded)
        ideal += bits / 8
        stream += sum(len(u.to_bytes()) for u in coded)
        payload += sum(len(u.payload) for u in coded)
        f32 = track.astype("<f4")
        raw += f32.nbytes
        zs += len(zstd.compress(f32.tobytes()))
        zu += sum(
            len(zstd.compress(f32[at : at + frames_per_unit].tobytes()))
            for at in range(0, len(track), frames_per_unit)
        )
    return Rate(
        frames_per_unit, resync_period, n, units, stream / n, payload / n, ideal / n, zu / n,
        zs / n, raw / n, 1e3 * t_enc / n, 1e3 * t_dec / n,
    )  # fmt: skip
