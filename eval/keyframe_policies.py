"""Keyframe policies, measured (issue 19): the sender's quality estimate against the true
per-frame quality, and adaptive against fixed keyframes at equal bytes.

1. **Calibration** (:func:`calibrate`): on clips of the training set, every frame rebuilt from
   the clip's first frame sent as a keyframe (coded and decoded with the keyframe codec, its
   keypoints found on the decoded picture, as the receiver does), scored with LPIPS(alex) and
   PSNR, beside the sender's estimate (``sender.keyframes.pose_distance`` to the keyframe). A
   line LPIPS = a + b * distance is fitted there; the correlations are reported on train and,
   held out, on val.
2. **Policies** (:func:`compare_policies`): each clip encoded to a stream in memory (bytes
   really written) with one keyframe, with the quality policy at each threshold, and with a
   fixed policy that sends as many keyframes, evenly spaced (equal keyframe count: equal bytes
   up to the keyframes' own sizes); one keyframe at higher keyframe qualities gives the
   single-keyframe curve at higher rates; the keyframe-only baseline shows the adaptive
   policy's decoded keyframes. Every frame is decoded from the stream and scored.
3. Cases: the val clips one by one, and pairs of val clips of different people joined end to
   end (the face changes at the join).

``python -m eval.keyframe_policies --val VAL_DIR --train-cache CROPS --out DIR`` writes
``results.json``, ``summary.md`` and ``plots/`` (LPIPS and PSNR over time per case, keyframes
marked). Needs a GPU for a run on all of val in minutes; ``--max-frames`` bounds the work.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from bitstream import KeyframeUnit, read_units
from codec.data import load_crop_cache
from codec.inference import picture_source, render_frames
from codec.model import ImplicitWarpingModel
from codec.weights import load_model
from eval.metrics import Scorers, image_metrics_per_frame
from eval.run import prepare_clip
from iwcodec.keyframe import DEFAULT_CODEC, DEFAULT_QUALITY, decode_keyframe, encode_keyframe
from receiver.decoder import DecodeOptions, decode_frames
from sender.encoder import EncodeOptions, detect_batch, encode_frames
from sender.keyframes import QualityKeyframes, pose_distance

VAL4 = (
    "KwaiVGI__LivePortrait__d10",
    "OpenTalker__video-retalking__2",
    "Weizhi-Zhong__IP_LAP__129",
    "harlanhong__CVPR2022-DaGAN__driving",
)
#: A just-noticeable step of LPIPS(alex): the default threshold is the pose distance at which
#: the train fit predicts this much more than at distance 0 (a rule fixed before val is seen).
JND_LPIPS = 0.02


@dataclass
class Clip:
    name: str
    frames: np.ndarray  # (T, S, S, 3) uint8 face crops
    fps: Fraction
    joined_at: int | None = None  # first frame of the second person (joined cases)


# -- calibration --------------------------------------------------------------------------------


@torch.inference_mode()
def rebuild_from_first(
    model: ImplicitWarpingModel, frames: np.ndarray, batch: int = 16
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames rebuilt from the first one sent as a keyframe (AV1 q75, decoded): returns the
    rebuilt frames (T, S, S, 3) uint8, the decoded keyframe (S, S, 3) and the pose distance of
    each frame to it (T,), crop pixels."""
    picture = decode_keyframe(encode_keyframe(frames[0]), DEFAULT_CODEC)  # (S, S, 3)
    src, kp0 = picture_source(model, picture)  # as the receiver computes them; kp0 (K, 3)
    out, dist = [], []
    for start in range(0, len(frames), batch):
        kp = detect_batch(model, frames[start : start + batch])  # (B, K, 3)
        dist.append(pose_distance(kp0, kp, frames.shape[1]))
        out.append(render_frames(model, src, kp))  # (B, S, S, 3) uint8
    return np.concatenate(out), picture, np.concatenate(dist)


def calibrate(
    model: ImplicitWarpingModel, clips: Sequence[Clip], scorers: Scorers
) -> dict[str, np.ndarray]:
    """Per frame of every clip: pose distance, LPIPS and PSNR of the rebuilt frame and of the
    frozen keyframe. (N,) arrays, frames of all clips together; ``clip`` names each frame's."""
    rows: dict[str, list[np.ndarray]] = {
        k: [] for k in ("distance", "lpips", "psnr", "frozen_lpips", "clip")
    }
    for i, clip in enumerate(clips):
        rebuilt, picture, dist = rebuild_from_first(model, clip.frames)
        m = image_metrics_per_frame(clip.frames, rebuilt, scorers.device, scorers=scorers)
        frozen = np.broadcast_to(picture, clip.frames.shape)
        f = image_metrics_per_frame(
            clip.frames, np.ascontiguousarray(frozen), scorers.device, scorers=scorers
        )
        rows["distance"].append(dist)
        rows["lpips"].append(m["lpips"])
        rows["psnr"].append(np.minimum(m["psnr"], 100.0))
        rows["frozen_lpips"].append(f["lpips"])
        rows["clip"].append(np.full(len(dist), i))
    return {k: np.concatenate(v) for k, v in rows.items()}


def fit(cal: dict[str, np.ndarray]) -> dict[str, float]:
    """LPIPS = a + b * distance (least squares) and the correlations of the estimate with the
    true LPIPS and PSNR (Pearson, and Spearman on ranks)."""
    d, lp, ps = cal["distance"], cal["lpips"], cal["psnr"]
    b, a = np.polyfit(d, lp, 1)
    rank = lambda x: np.argsort(np.argsort(x))  # noqa: E731
    return {
        "a": float(a),
        "b": float(b),
        "frames": int(len(d)),
        "pearson_lpips": float(np.corrcoef(d, lp)[0, 1]),
        "spearman_lpips": float(np.corrcoef(rank(d), rank(lp))[0, 1]),
        "pearson_psnr": float(np.corrcoef(d, ps)[0, 1]),
        "spearman_psnr": float(np.corrcoef(rank(d), rank(ps))[0, 1]),
    }


# -- policies -----------------------------------------------------------------------------------


def keyframe_only(clip: Clip, indices: Sequence[int], quality: int) -> tuple[np.ndarray, int]:
    """Each decoded keyframe shown until the next: frames (T, S, S, 3) and the images' bytes."""
    shown = np.empty_like(clip.frames)
    total = 0
    bounds = [*indices, len(clip.frames)]
    for start, end in zip(bounds[:-1], bounds[1:]):
        data = encode_keyframe(clip.frames[start], quality=quality)
        total += len(data)
        shown[start:end] = decode_keyframe(data, DEFAULT_CODEC)
    return shown, total


def evenly(n_frames: int, n: int) -> tuple[int, ...]:
    return tuple(i * n_frames // n for i in range(n))


def scored(
    clip: Clip,
    scorers: Scorers,
    variant: str,
    data_bytes: int,
    shown: np.ndarray,
    keyframes: list[int],
    **extra,
) -> dict:
    """One record: the frames ``shown`` (T, S, S, 3) scored against the clip, with the rate of
    ``data_bytes`` and per-frame PSNR and LPIPS."""
    seconds = len(clip.frames) / float(clip.fps)
    m = image_metrics_per_frame(clip.frames, shown, scorers.device, scorers=scorers)
    psnr = np.minimum(m["psnr"], 100.0)
    return {
        "clip": clip.name,
        "variant": variant,
        "frames": len(clip.frames),
        "seconds": seconds,
        "bytes": data_bytes,
        "kbps": data_bytes * 8 / seconds / 1000,
        "keyframes": keyframes,
        "psnr": float(psnr.mean()),
        "lpips": float(m["lpips"].mean()),
        "per_frame": {"psnr": psnr.round(3).tolist(), "lpips": m["lpips"].round(5).tolist()},
        "joined_at": clip.joined_at,
        **extra,
    }


def coded(
    model: ImplicitWarpingModel,
    clip: Clip,
    scorers: Scorers,
    variant: str,
    options: EncodeOptions,
    **extra,
) -> dict:
    """The clip encoded with ``options`` to a stream in memory, every frame decoded from it and
    scored (:func:`scored`); ``encode_s`` and ``frames_as_keyframe`` from the encoder."""
    start = time.perf_counter()
    with io.BytesIO() as f:
        stats = encode_frames(clip.frames, clip.fps, model, f, options)
        data = f.getvalue()
    encode_s = time.perf_counter() - start
    keyframes = [u.frame_index for u in read_units(data) if isinstance(u, KeyframeUnit)]
    decoded, _ = decode_frames(data, model, DecodeOptions(progress=False))
    extra = {"encode_s": encode_s, "frames_as_keyframe": stats.frames_as_keyframe, **extra}
    return scored(clip, scorers, variant, len(data), decoded, keyframes, **extra)


def compare_policies(
    model: ImplicitWarpingModel,
    clip: Clip,
    scorers: Scorers,
    thresholds: Sequence[float],
    one_qualities: Sequence[int],
) -> list[dict]:
    """The clip coded each way (module docstring, 2); one record per variant."""
    coded_ = functools.partial(coded, model, clip, scorers)
    base = EncodeOptions(progress=False, keyframe_set=4)
    out = [coded_("one", base, quality=DEFAULT_QUALITY)]
    out += [
        coded_(f"one-q{q}", EncodeOptions(progress=False, keyframe_quality=q), quality=q)
        for q in one_qualities
    ]
    for t in thresholds:
        policy = functools.partial(QualityKeyframes, t, 1.0)
        adaptive = coded_(
            f"adaptive-{t:g}px",
            EncodeOptions(progress=False, keyframe_policy=policy, keyframe_set=4),
            threshold=t,
        )
        n = len(adaptive["keyframes"])
        fixed = coded_(
            f"fixed-{t:g}px",
            EncodeOptions(
                progress=False, keyframe_indices=evenly(len(clip.frames), n), keyframe_set=4
            ),
            threshold=t,
        )
        shown, nbytes = keyframe_only(clip, adaptive["keyframes"], DEFAULT_QUALITY)
        out += [
            adaptive,
            fixed,
            scored(
                clip,
                scorers,
                f"keyframe-only-{t:g}px",
                nbytes,
                shown,
                adaptive["keyframes"],
                threshold=t,
            ),
        ]
    return out


# -- report -------------------------------------------------------------------------------------


def _mean(records: list[dict], variant: str, names: Sequence[str], key: str) -> float:
    vals = [r[key] for r in records if r["variant"] == variant and r["clip"] in names]
    return float(np.mean(vals)) if vals else float("nan")


def summary(
    records: list[dict], calibration: dict, sets: dict[str, list[str]], thresholds: Sequence[float]
) -> str:
    variants = list(dict.fromkeys(r["variant"] for r in records))
    lines = ["# Keyframe policies (issue 19)", ""]
    lines += [
        "## The sender's estimate (pose distance to the nearest keyframe) against the true quality",
        "",
    ]
    lines += [
        "| set | frames | fit LPIPS = a + b d | Pearson d~LPIPS | Spearman d~LPIPS | Pearson d~PSNR | Spearman d~PSNR |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in calibration.items():
        lines.append(
            f"| {name} | {c['frames']} | {c['a']:.4f} + {c['b']:.5f} d | {c['pearson_lpips']:.3f} | "
            f"{c['spearman_lpips']:.3f} | {c['pearson_psnr']:.3f} | {c['spearman_psnr']:.3f} |"
        )
    for set_name, names in sets.items():
        lines += ["", f"## {set_name}: mean over {len(names)} clips", ""]
        lines += ["| variant | kbps | keyframes/clip | PSNR dB | LPIPS |", "|---|---|---|---|---|"]
        for v in variants:
            kfs = [len(r["keyframes"]) for r in records if r["variant"] == v and r["clip"] in names]
            lines.append(
                f"| {v} | {_mean(records, v, names, 'kbps'):.2f} | {np.mean(kfs):.2f} | "
                f"{_mean(records, v, names, 'psnr'):.2f} | {_mean(records, v, names, 'lpips'):.4f} |"
            )
        for t in thresholds:
            a, f, o = f"adaptive-{t:g}px", f"fixed-{t:g}px", "one"
            lines.append(
                f"\nThreshold {t:g} px: adaptive / fixed LPIPS ratio "
                f"{_mean(records, a, names, 'lpips') / _mean(records, f, names, 'lpips'):.3f}, PSNR "
                f"{_mean(records, a, names, 'psnr') - _mean(records, f, names, 'psnr'):+.2f} dB at "
                f"{_mean(records, a, names, 'kbps'):.2f} vs {_mean(records, f, names, 'kbps'):.2f} kbps; "
                f"adaptive / one keyframe LPIPS ratio "
                f"{_mean(records, a, names, 'lpips') / _mean(records, o, names, 'lpips'):.3f}, PSNR "
                f"{_mean(records, a, names, 'psnr') - _mean(records, o, names, 'psnr'):+.2f} dB."
            )
    lines += ["", "## Per clip (PSNR dB / LPIPS / kbps / keyframes)", ""]
    lines += ["| clip | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
    for clip in dict.fromkeys(r["clip"] for r in records):
        cells = []
        for v in variants:
            r = next((r for r in records if r["clip"] == clip and r["variant"] == v), None)
            cells.append(
                "-"
                if r is None
                else f"{r['psnr']:.2f} / {r['lpips']:.4f} / {r['kbps']:.2f} / {len(r['keyframes'])}"
            )
        lines.append(f"| {clip} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(records: list[dict], out: Path, threshold: float) -> list[Path]:
    """LPIPS and PSNR over time per clip: one keyframe, fixed and adaptive (keyframes marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    styles = {
        "one": ("tab:gray", "one keyframe"),
        f"fixed-{threshold:g}px": ("tab:blue", "fixed"),
        f"adaptive-{threshold:g}px": ("tab:red", "adaptive"),
    }
    for clip in dict.fromkeys(r["clip"] for r in records):
        fig, axes = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
        for variant, (color, label) in styles.items():
            r = next((r for r in records if r["clip"] == clip and r["variant"] == variant), None)
            if r is None:
                continue
            t = np.arange(r["frames"]) / (r["frames"] / r["seconds"])
            for ax, key in zip(axes, ("lpips", "psnr")):
                ax.plot(
                    t,
                    r["per_frame"][key],
                    color=color,
                    lw=1,
                    label=f"{label} ({r['kbps']:.1f} kbps)",
                )
                for k in r["keyframes"]:
                    ax.axvline(
                        k * r["seconds"] / r["frames"],
                        color=color,
                        ls=":" if variant == "one" else "--",
                        lw=0.8,
                    )
            if r.get("joined_at"):
                for ax in axes:
                    ax.axvline(r["joined_at"] * r["seconds"] / r["frames"], color="k", lw=1.5)
        axes[0].set_ylabel("LPIPS (alex)")
        axes[1].set_ylabel("PSNR dB")
        axes[1].set_xlabel("seconds")
        axes[0].legend(fontsize=7)
        axes[0].set_title(clip, fontsize=9)
        fig.tight_layout()
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in clip)
        path = out / f"{safe[:100]}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m eval.keyframe_policies", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--val", type=Path, required=True, help="folder of val videos")
    p.add_argument(
        "--train-cache",
        type=Path,
        required=True,
        help="crop cache of train clips (python -m sender.cache)",
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument(
        "--clip-cache",
        type=Path,
        default=None,
        help="iwcodec eval's clip cache (work/clips; boxes travel without crops)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--train-clips", type=int, default=40, help="train clips for the calibration")
    p.add_argument(
        "--calib-frames", type=int, default=90, help="frames per clip for the calibration"
    )
    p.add_argument(
        "--thresholds",
        default="",
        help="comma-separated pose distances (px); default: from the train fit",
    )
    p.add_argument(
        "--one-qualities", default="90,97", help="keyframe qualities of the one-keyframe curve"
    )
    p.add_argument("--joined", type=int, default=6, help="pairs of val clips joined end to end")
    p.add_argument(
        "--max-frames",
        type=int,
        default=450,
        help="frames per clip (each half of a joined pair: half)",
    )
    args = p.parse_args(argv)
    started = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.weights, device=args.device)
    scorers = Scorers.load(args.device, ("lpips",))

    train = load_crop_cache(args.train_cache)
    step = max(1, len(train) // args.train_clips)
    train_clips = [
        Clip(c.name, np.asarray(c.frames[: args.calib_frames]), Fraction(25))
        for c in train[::step][: args.train_clips]
    ]
    val_clips = []
    clip_cache = args.clip_cache if args.clip_cache is not None else args.out / "clips"
    videos = (".mp4", ".mpg", ".mkv", ".avi", ".mov")
    for video in sorted(v for v in args.val.iterdir() if v.suffix in videos):
        c = prepare_clip(video, video.stem, model.cfg.image_size, clip_cache, with_akd=False)
        val_clips.append(Clip(video.stem, c.frames[: args.max_frames], c.fps))
    print(
        f"{len(train_clips)} train clips, {len(val_clips)} val clips ({time.time() - started:.0f} s)",
        flush=True,
    )

    cal_train = calibrate(model, train_clips, scorers)
    fits = {"train": fit(cal_train)}
    cal_val = calibrate(
        model, [Clip(c.name, c.frames[: args.calib_frames], c.fps) for c in val_clips], scorers
    )
    fits["val-12 (held out)"] = fit(cal_val)
    b = fits["train"]["b"]
    default = JND_LPIPS / b if b > 0 else float("nan")
    thresholds = [float(x) for x in args.thresholds.split(",") if x] or [
        round(default, 1),
        round(2 * default, 1),
    ]
    print(
        f"calibration {fits}; thresholds {thresholds} ({time.time() - started:.0f} s)", flush=True
    )

    half = args.max_frames // 2
    joined = []
    for i in range(min(args.joined, len(val_clips) // 2)):
        x, y = val_clips[i], val_clips[len(val_clips) - 1 - i]
        frames = np.concatenate([x.frames[:half], y.frames[:half]])
        joined.append(
            Clip(f"joined: {x.name} + {y.name}", frames, x.fps, joined_at=min(half, len(x.frames)))
        )
    records: list[dict] = []
    qualities = [int(q) for q in args.one_qualities.split(",") if q]
    for clip in [*val_clips, *joined]:
        records += compare_policies(model, clip, scorers, thresholds, qualities)
        (args.out / "results.json").write_text(
            json.dumps({"calibration": fits, "thresholds": thresholds, "records": records})
        )
        print(f"{clip.name}: done ({time.time() - started:.0f} s)", flush=True)
    sets = {
        "val-12": [c.name for c in val_clips],
        "val-4": [c.name for c in val_clips if c.name in VAL4],
        "joined pairs (the face changes)": [c.name for c in joined],
    }
    (args.out / "summary.md").write_text(summary(records, fits, sets, thresholds))
    plot(records, args.out / "plots", thresholds[0])
    np.savez_compressed(
        args.out / "calibration.npz",
        **{f"train_{k}": v for k, v in cal_train.items()},
        **{f"val_{k}": v for k, v in cal_val.items()},
    )
    print((args.out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
