"""Which image codec should carry the keyframe? Bytes vs PSNR / SSIM / MS-SSIM at 256 px.

Takes face crops from a crop cache (by default the validation clips, never used for
training): the first frame of each clip plus ``--extra`` evenly spaced frames. Each codec of
``iwcodec.keyframe`` is swept over its quality scale; every payload is decoded with
``iwcodec.keyframe.decode_keyframe`` (fresh decoder, as the receiver does) and scored against
the crop. Curves are compared at fixed sizes (3, 5, 8, 12, 15 KB) by interpolating each
codec's mean PSNR over log-bytes, and BD-rate style as the mean size ratio at equal PSNR.

    python tools/keyframe_codec_study.py --cache .cache/crops_val_256 --out results/keyframe_codecs.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
import torch
from pytorch_msssim import ms_ssim, ssim

import iwcodec.keyframe as skf
from bitstream.units import ImageCodec
from iwcodec.keyframe import decode_keyframe

QUALITIES = {
    ImageCodec.WEBP: [5, 15, 25, 35, 45, 55, 65, 75, 85, 92, 97, 100],
    ImageCodec.AV1: [20, 30, 40, 50, 55, 60, 65, 70, 75, 80, 85, 90, 95, 100],
    ImageCodec.JPEG: [40, 55, 65, 72, 78, 84, 88, 91, 94, 97],
}
TARGETS_KB = [3, 5, 8, 12, 15]


def load_images(cache: Path, extra: int) -> list[tuple[str, np.ndarray]]:
    """First frame of every clip in the cache plus ``extra`` more, evenly spaced."""
    index = json.loads((cache / "index.json").read_text())
    images = []
    for name in sorted(index["clips"]):
        frames = np.load(cache / f"{name}.npy", mmap_mode="r")
        picks = np.unique(np.linspace(0, len(frames) - 1, extra + 2).round().astype(int)[:-1])
        images += [(f"{name}#{int(i)}", np.array(frames[i])) for i in picks]
    return images


def scores(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    mse = float(np.mean((ref.astype(np.float64) - out.astype(np.float64)) ** 2))
    x = torch.from_numpy(ref).permute(2, 0, 1)[None].double()  # (1, 3, H, W)
    y = torch.from_numpy(out).permute(2, 0, 1)[None].double()
    return {
        "psnr": 10 * np.log10(255.0**2 / max(mse, 1e-10)),
        "ssim": float(ssim(x, y, data_range=255)),
        "ms_ssim": float(ms_ssim(x, y, data_range=255)),
    }


def measure(codec: ImageCodec, quality: int, images: list[tuple[str, np.ndarray]]) -> dict:
    rows = []
    for _, img in images:
        t0 = time.perf_counter()
        data = skf.encode_keyframe(img, codec, quality)
        t1 = time.perf_counter()
        out = decode_keyframe(data, codec)
        t2 = time.perf_counter()
        rows.append({"bytes": len(data), "enc_s": t1 - t0, "dec_s": t2 - t1, **scores(img, out)})
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    return {
        "codec": codec.name,
        "quality": quality,
        "native": skf.native_setting(codec, quality),
        **mean,
        "bytes_min": int(min(r["bytes"] for r in rows)),
        "bytes_max": int(max(r["bytes"] for r in rows)),
    }


def at_size(curve: list[dict], kb: float, metric: str) -> float | None:
    """Metric interpolated at ``kb`` kilobytes over log-bytes (None outside the curve)."""
    pts = sorted((np.log(c["bytes"]), c[metric]) for c in curve)
    xs, ys = zip(*pts, strict=True)
    x = np.log(kb * 1000)
    if not xs[0] <= x <= xs[-1]:
        return None
    return float(np.interp(x, xs, ys))


def size_at(curve: list[dict], psnr: float) -> float | None:
    pts = sorted((c["psnr"], np.log(c["bytes"])) for c in curve)
    xs, ys = zip(*pts, strict=True)
    if not xs[0] <= psnr <= xs[-1]:
        return None
    return float(np.exp(np.interp(psnr, xs, ys)))


def rate_saving(curve: list[dict], anchor: list[dict], lo: float, hi: float) -> float | None:
    """Mean size ratio (curve / anchor) at equal PSNR over [lo, hi] dB, as a percentage change."""
    ratios = []
    for p in np.linspace(lo, hi, 21):
        a, b = size_at(curve, p), size_at(anchor, p)
        if a is not None and b is not None:
            ratios.append(np.log(a / b))
    return None if not ratios else float((np.exp(np.mean(ratios)) - 1) * 100)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=".cache/crops_val_256")
    ap.add_argument("--extra", type=int, default=3, help="frames per clip besides the first")
    ap.add_argument("--out", default="results/keyframe_codecs.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    images = load_images(Path(args.cache), args.extra)
    print(f"{len(images)} crops of {images[0][1].shape[1]} px from {args.cache}", flush=True)

    curves: dict[str, list[dict]] = {}
    for codec, qualities in QUALITIES.items():
        curves[codec.name] = [measure(codec, q, images) for q in qualities]
    # AV1 at a faster encoder preset, to show what the slower default buys
    default_preset = skf.AV1_PRESET
    skf.AV1_PRESET = 8
    try:
        curves["AV1_preset8"] = [
            measure(ImageCodec.AV1, q, images) for q in QUALITIES[ImageCodec.AV1]
        ]
    finally:
        skf.AV1_PRESET = default_preset
    png = measure(ImageCodec.PNG, 100, images)

    print(
        f"\n{'codec':12s} {'q':>3s} {'native':>12s} {'KB':>6s} {'PSNR':>6s} {'SSIM':>6s} {'MS-SSIM':>7s} {'enc ms':>7s} {'dec ms':>7s}"
    )
    for name, curve in curves.items():
        for c in curve:
            native = ",".join(f"{k}={v}" for k, v in c["native"].items())
            print(
                f"{name:12s} {c['quality']:3d} {native:>12s} {c['bytes'] / 1000:6.2f} {c['psnr']:6.2f} "
                f"{c['ssim']:6.4f} {c['ms_ssim']:7.4f} {c['enc_s'] * 1e3:7.1f} {c['dec_s'] * 1e3:7.1f}"
            )
    print(f"{'PNG':12s} lossless {png['bytes'] / 1000:.1f} KB")

    table = {}
    print("\nat equal size (interpolated over log-bytes): PSNR dB / SSIM")
    print(f"{'KB':>4s} " + " ".join(f"{n:>18s}" for n in curves))
    for kb in TARGETS_KB:
        row = {
            n: {m: at_size(c, kb, m) for m in ("psnr", "ssim", "ms_ssim")}
            for n, c in curves.items()
        }
        table[str(kb)] = row
        cells = []
        for n in curves:
            p, s = row[n]["psnr"], row[n]["ssim"]
            cells.append(f"{p:8.2f} / {s:.4f}" if p is not None else f"{'-':>18s}")
        print(f"{kb:4d} " + " ".join(f"{c:>18s}" for c in cells))

    lo = max(min(c["psnr"] for c in curves[n]) for n in ("WEBP", "AV1", "JPEG"))
    hi = min(max(c["psnr"] for c in curves[n]) for n in ("WEBP", "AV1", "JPEG"))
    savings = {n: rate_saving(curves[n], curves["JPEG"], lo, hi) for n in curves}
    print(
        f"\nsize change vs JPEG at equal PSNR over {lo:.1f}-{hi:.1f} dB: "
        + ", ".join(f"{n} {v:+.1f}%" for n, v in savings.items() if v is not None)
    )

    result = {
        "what": "keyframe image codecs at 256x256: mean bytes and quality over val face crops",
        "images": [name for name, _ in images],
        "cache": args.cache,
        "av1_preset": skf.AV1_PRESET,
        "curves": curves,
        "png_lossless": png,
        "at_size_kb": table,
        "size_change_vs_jpeg_pct": {"psnr_range_db": [lo, hi], **savings},
        "default": {"codec": skf.DEFAULT_CODEC.name, "quality": skf.DEFAULT_QUALITY},
        "versions": {
            "av": av.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "command": "python tools/keyframe_codec_study.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
