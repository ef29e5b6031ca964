"""Fit the keypoint entropy model's prior tables to keypoint tracks.

    /work/venv/bin/python tools/bitstream_fit_prior.py .cache/tracks_train --tune \\
        --xy-steps 512 --s-steps 64 --out bitstream/tables/xy512_s64.json

Fits on the given tracks (use training clips only, never val). With ``--tune`` it first picks
the adaptation hyper-parameters (radius, prior weight, halving limit) by two-fold
cross-validation on those tracks: fit on one half, measure the adaptive model's ideal bits
on the other, through the real encoder (units of 30 frames, resync every 60).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bitstream_tracks import load_tracks  # noqa: E402

from bitstream import (  # noqa: E402
    EntropyModel,
    KeypointEncoder,
    KeypointFrame,
    ParamsUnit,
    Predictor,
    collect_statistics,
    encode_track,
    fit_prior,
)


def ideal_bits(
    tracks: list[np.ndarray],
    model: EntropyModel,
    xy_steps: int,
    s_steps: int,
    predictor: Predictor,
    frames_per_unit: int = 30,
    resync_period: int = 60,
) -> tuple[float, int]:
    """Adaptive-model ideal bits summed over tracks, and the number of frames."""
    bits, frames = 0.0, 0
    for track in tracks:
        params = ParamsUnit(
            width=256, height=256, fps_num=30, fps_den=1, num_keypoints=track.shape[1],
            weights_id=bytes(8), entropy_id=model.id, xy_steps=xy_steps, s_steps=s_steps,
            predictor=predictor,
        )  # fmt: skip
        enc = KeypointEncoder(params, model, resync_period=resync_period)
        kf = [KeypointFrame(i, params.nominal_pts(i), kp) for i, kp in enumerate(track)]
        for start in range(0, len(kf), frames_per_unit):
            encode_track(kf[start : start + frames_per_unit], enc, frames_per_unit)
            bits += enc.last_ideal_bits
        frames += len(track)
    return bits, frames


def tune(tracks, xy_steps, s_steps, predictor, buckets, increment):
    folds = (tracks[0::2], tracks[1::2])
    stats = [collect_statistics(f, xy_steps, s_steps, predictor) for f in folds]
    grid = itertools.product((15, 31), (16, 64, 256), (1 << 13, 1 << 16))
    results = []
    for radius, weight, limit in grid:
        total, n = 0.0, 0
        for i in (0, 1):
            model = fit_prior(
                stats[i], radius=radius, buckets=buckets, increment=increment,
                limit=limit, prior_weight=weight,
            )  # fmt: skip
            b, f = ideal_bits(folds[1 - i], model, xy_steps, s_steps, predictor)
            total, n = total + b, n + f
        results.append((total / n / 8, radius, weight, limit))
        print(f"  radius {radius:3d} prior_weight {weight:4d} limit {limit:6d}: "
              f"{total / n / 8:.3f} B/frame (held-out ideal)")  # fmt: skip
    return min(results)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tracks", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--xy-steps", type=int, default=512)
    ap.add_argument("--s-steps", type=int, default=64)
    ap.add_argument("--predictor", choices=[p.name for p in Predictor], default="PREVIOUS")
    ap.add_argument("--radius", type=int, default=31)
    ap.add_argument("--buckets", type=int, default=32)
    ap.add_argument("--increment", type=int, default=32)
    ap.add_argument("--limit", type=int, default=1 << 16)
    ap.add_argument("--prior-weight", type=int, default=64)
    ap.add_argument("--tune", action="store_true", help="pick radius/prior weight/limit by CV")
    args = ap.parse_args(argv)
    tracks = [t for _, t in load_tracks(args.tracks)]
    predictor = Predictor[args.predictor]
    radius, weight, limit = args.radius, args.prior_weight, args.limit
    if args.tune:
        best = tune(tracks, args.xy_steps, args.s_steps, predictor, args.buckets, args.increment)
        _, radius, weight, limit = best
        print(f"chosen: radius {radius}, prior_weight {weight}, limit {limit}")
    stats = collect_statistics(tracks, args.xy_steps, args.s_steps, predictor)
    model = fit_prior(
        stats, radius=radius, buckets=args.buckets, increment=args.increment, limit=limit,
        prior_weight=weight,
    )  # fmt: skip
    model.save(args.out)
    print(f"{args.out}: id {model.id.hex()}, {len(model.to_bytes())} bytes, "
          f"fitted on {len(tracks)} tracks / {sum(len(t) for t in tracks)} frames")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
