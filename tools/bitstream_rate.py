"""Keypoint bitrate of the bitstream on real tracks, against ideal, raw float32 and zstd.

    /work/venv/bin/python tools/bitstream_rate.py TRACKS.npy [more tracks] --fps 30

TRACKS: ``(T, K, 3)`` or ``(N, T, K, 3)`` float .npy files (x, y in [-1, 1], strength in
[0, 1]), .npz files of such arrays, or directories of .npy files; e.g. the output of
tools/bitstream_tracks.py, or keypoints of the trained detector. Prints bytes per frame of the
keypoint units (framing included), the adaptive model's ideal (``sum -log2 p / 8``), raw
float32, zstd of the raw floats per unit and per stream, then the effect of frames per unit
and of the resync period, and the quantization candidates. ``--json`` saves every number.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bitstream_tracks import load_tracks  # noqa: E402

from bitstream import (  # noqa: E402
    CANDIDATE_STEPS,
    DEFAULT_FRAMES_PER_UNIT,
    DEFAULT_RESYNC_PERIOD,
    EntropyModel,
    KeypointDecoder,
    KeypointEncoder,
    KeypointFrame,
    ParamsUnit,
    Predictor,
    encode_track,
    load_prior,
)

ZSTD_LEVEL = 19


@dataclass
class Rate:
    """Per-frame averages over all tracks of one configuration."""

    frames_per_unit: int
    resync_period: int
    frames: int
    units: int
    stream: float  # bytes/frame of keypoint units, framing included
    payload: float  # bytes/frame of range-coder payload alone
    ideal: float  # bytes/frame, adaptive model's -log2 p / 8
    zstd_per_unit: float
    zstd_stream: float
    raw: float
    encode_ms: float
    decode_ms: float

    @property
    def ratio(self) -> float:
        return self.stream / self.ideal


def measure(
    tracks: list[np.ndarray],
    model: EntropyModel,
    fps: float,
    xy_steps: int,
    s_steps: int,
    predictor: Predictor,
    frames_per_unit: int,
    resync_period: int,
) -> Rate:
    zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    fps_num, fps_den = (round(fps * 1000), 1000) if fps != int(fps) else (int(fps), 1)
    n = units = stream = payload = zu = zs = raw = 0
    ideal = t_enc = t_dec = 0.0
    for track in tracks:
        k = track.shape[1]
        params = ParamsUnit(
            width=256, height=256, fps_num=fps_num, fps_den=fps_den, num_keypoints=k,
            weights_id=bytes(8), entropy_id=model.id, xy_steps=xy_steps, s_steps=s_steps,
            predictor=predictor,
        )  # fmt: skip
        frames = [KeypointFrame(i, params.nominal_pts(i), kp) for i, kp in enumerate(track)]
        enc = KeypointEncoder(params, model, resync_period=resync_period)
        start = time.perf_counter()
        coded = []
        for at in range(0, len(frames), frames_per_unit):
            coded += encode_track(frames[at : at + frames_per_unit], enc, frames_per_unit)
            ideal += enc.last_ideal_bits / 8
        t_enc += time.perf_counter() - start
        dec = KeypointDecoder(params, model)
        start = time.perf_counter()
        for unit in coded:
            dec.decode(unit)
        t_dec += time.perf_counter() - start
        n += len(track)
        units += len(coded)
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


def _model_for(xy_steps: int, s_steps: int, table: str | None) -> EntropyModel:
    if table and Path(table).exists():
        return EntropyModel.load(table)
    return load_prior(table or f"xy{xy_steps}_s{s_steps}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tracks", nargs="+", type=Path)
    ap.add_argument("--fps", type=float, default=30.0, help="frame rate the tracks are coded at")
    ap.add_argument("--xy-steps", type=int, default=CANDIDATE_STEPS["default"][0])
    ap.add_argument("--s-steps", type=int, default=CANDIDATE_STEPS["default"][1])
    ap.add_argument("--table", help="shipped table name or a .json path (default: match steps)")
    ap.add_argument("--predictor", choices=[p.name for p in Predictor], default="PREVIOUS")
    ap.add_argument("--frames-per-unit", type=int, default=DEFAULT_FRAMES_PER_UNIT)
    ap.add_argument("--resync-period", type=int, default=DEFAULT_RESYNC_PERIOD)
    ap.add_argument("--quick", action="store_true", help="only the main configuration")
    ap.add_argument("--json", type=Path, help="write every number here")
    args = ap.parse_args(argv)
    tracks = [t for _, t in load_tracks(args.tracks)]
    if not tracks:
        raise SystemExit("no tracks found")
    predictor = Predictor[args.predictor]
    model = _model_for(args.xy_steps, args.s_steps, args.table)
    k = tracks[0].shape[1]
    fps = args.fps

    def run(fpu, period, xy=args.xy_steps, s=args.s_steps, m=model, pred=predictor) -> Rate:
        return measure(tracks, m, fps, xy, s, pred, fpu, period)

    main_rate = run(args.frames_per_unit, args.resync_period)
    kbps = 8 * fps / 1000
    print(f"{len(tracks)} tracks, {main_rate.frames} frames, K={k}, coded at {fps:g} fps; "
          f"xy_steps {args.xy_steps}, s_steps {args.s_steps}, predictor {predictor.name}, "
          f"{args.frames_per_unit} frames/unit, resync every {args.resync_period} frames")  # fmt: skip
    rows = [
        ("our stream (keypoint units, framing incl.)", main_rate.stream),
        ("  of which range-coder payload", main_rate.payload),
        ("adaptive model ideal (sum -log2 p / 8)", main_rate.ideal),
        ("raw float32", main_rate.raw),
        (f"zstd -{ZSTD_LEVEL} of raw float32, per unit", main_rate.zstd_per_unit),
        (f"zstd -{ZSTD_LEVEL} of raw float32, whole stream", main_rate.zstd_stream),
    ]
    for label, value in rows:
        print(f"  {label:48s} {value:8.2f} B/frame  {value * kbps:7.2f} kbps")
    print(f"  ratio ours / ideal                               {main_rate.ratio:8.3f}")
    print(f"  encode {main_rate.encode_ms:.2f} ms/frame, decode {main_rate.decode_ms:.2f} ms/frame")
    results = {"main": asdict(main_rate) | {"ratio": main_rate.ratio}}
    if not args.quick:
        print(f"\nframes per unit (resync every {args.resync_period} frames or next unit start):")
        print("  frames/unit  B/frame  payload  ideal  ratio  zstd/unit")
        results["frames_per_unit"] = []
        for fpu in (1, 2, 3, 5, 10, 15, 30, 60, 120):
            r = run(fpu, args.resync_period)
            results["frames_per_unit"].append(asdict(r) | {"ratio": r.ratio})
            print(f"  {fpu:11d} {r.stream:8.2f} {r.payload:8.2f} {r.ideal:6.2f} {r.ratio:6.3f}"
                  f" {r.zstd_per_unit:9.2f}")  # fmt: skip
        print(f"\nresync period ({args.frames_per_unit} frames/unit):")
        print("  period (frames)  seconds  B/frame  ideal  ratio")
        results["resync_period"] = []
        for period in (15, 30, 60, 90, 120, 300, 10**9):
            r = run(args.frames_per_unit, period)
            results["resync_period"].append(asdict(r) | {"ratio": r.ratio})
            label = "never" if period >= 10**9 else str(period)
            secs = "-" if period >= 10**9 else f"{period / fps:.1f}"
            print(f"  {label:>15s} {secs:>8s} {r.stream:8.2f} {r.ideal:6.2f} {r.ratio:6.3f}")
        print("\ncall setting (resync every 30 frames):")
        for fpu in (1, 2, 3):
            r = run(fpu, 30)
            print(f"  {fpu} frames/message: {r.stream:6.2f} B/frame ({r.stream * kbps:.2f} kbps), "
                  f"ideal {r.ideal:.2f}, ratio {r.ratio:.3f}")  # fmt: skip
        print("\nquantization candidates (shipped tables, default unit/resync):")
        results["candidates"] = {}
        for name, (xy, s) in CANDIDATE_STEPS.items():
            r = run(args.frames_per_unit, args.resync_period, xy, s, load_prior(f"xy{xy}_s{s}"))
            results["candidates"][name] = asdict(r) | {
                "ratio": r.ratio,
                "xy_steps": xy,
                "s_steps": s,
            }
            print(f"  {name:8s} xy_steps {xy:5d} ({256 / xy:.3g} px at 256 px) s_steps {s:4d}:"
                  f" {r.stream:6.2f} B/frame ({r.stream * kbps:.2f} kbps), ratio {r.ratio:.3f}")  # fmt: skip
        print("\npredictors (default steps; table fitted for PREVIOUS):")
        for pred in Predictor:
            r = run(args.frames_per_unit, args.resync_period, pred=pred)
            print(f"  {pred.name:12s} {r.stream:6.2f} B/frame, ideal {r.ideal:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
