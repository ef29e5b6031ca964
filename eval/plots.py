"""Rate-distortion plots of an evaluation folder, made from ``results.json`` alone.

For each metric (PSNR, SSIM, MS-SSIM, LPIPS, AKD): ``rd_<metric>.png`` with the mean over
clips (eval/summary.py ``mean_points``) and ``rd_<metric>_per_clip.png`` with one panel per
clip. kbps on a log axis. Classic codecs: one curve per setting family (colour = codec, solid =
low-delay, dashed = best quality); the keyframe-only baseline: a grey curve over keyframe
quality (one keyframe) and grey squares for more keyframes; our operating points: labelled red
stars.

Command line: ``python -m eval.plots DIR``.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from eval.operating_points import IWCODEC, KEYFRAME_ONLY  # noqa: E402
from eval.results import METRICS, clips_of, load_results  # noqa: E402
from eval.summary import mean_points  # noqa: E402

TITLES = {
    "psnr": "PSNR (dB, higher is better)",
    "ssim": "SSIM (higher is better)",
    "ms_ssim": "MS-SSIM (higher is better)",
    "lpips": "LPIPS alex (lower is better)",
    "akd": "AKD, face-mesh px at 256 (lower is better)",
}
COLOURS = {
    "x264": "tab:blue",
    "x265": "tab:orange",
    "vp8": "tab:green",
    "vp9": "tab:purple",
    "svtav1": "tab:brown",
}


def _series(points: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_family: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in points:
        by_family[p["family"]].append(p)
    return {f: sorted(ps, key=lambda p: p["kbps"]) for f, ps in sorted(by_family.items())}


def _draw(ax, points: Sequence[dict[str, Any]], metric: str, annotate: bool = True) -> None:
    for family, ps in _series(points).items():
        ps = [p for p in ps if p[metric] is not None]
        if not ps:
            continue
        xs, ys = [p["kbps"] for p in ps], [p[metric] for p in ps]
        codec = ps[0]["codec"]
        if codec == IWCODEC:
            ax.plot(xs, ys, "*", color="red", markersize=12, label="iwcodec", zorder=5)
            if annotate:
                for p in ps:
                    ax.annotate(
                        p["label"],
                        (p["kbps"], p[metric]),
                        textcoords="offset points",
                        xytext=(5, 4),
                        fontsize=7,
                        color="red",
                    )
        elif codec == KEYFRAME_ONLY:
            one = family.endswith(" 1kf")
            ax.plot(
                xs,
                ys,
                "o:" if one else "s",
                color="grey" if one else "black",
                label=family,
                zorder=4,
            )
        else:
            dashed = family.endswith("best")
            ax.plot(
                xs,
                ys,
                "--" if dashed else "-",
                marker="o" if not dashed else "^",
                markersize=3,
                color=COLOURS.get(codec, "black"),
                label=family,
            )
    ax.set_xscale("log")
    plain = FuncFormatter(lambda x, _: f"{x:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: f"{x:g}" if str(x)[0] in "25" else ""))
    ax.grid(True, which="both", alpha=0.3)


def _flat(p) -> dict[str, Any]:
    """A mean point or a record as one flat dict (kbps, family, codec, label, metrics)."""
    if isinstance(p, dict):
        return p
    return {"kbps": p.kbps, "family": p.family, "codec": p.codec, "label": p.label, **p.metrics}


def write_plots(out_dir: str | Path) -> list[Path]:
    """Write the mean and per-clip RD plots of ``out_dir/results.json``; returns the paths."""
    out_dir = Path(out_dir)
    records = load_results(out_dir)
    means = [_flat(p) for p in mean_points(records)[0]]
    clips = clips_of(records)
    written = []
    for metric in METRICS:
        if not any(r[metric] is not None for r in records):
            continue
        fig, ax = plt.subplots(figsize=(8, 5.5))
        _draw(ax, means, metric)
        ax.set_xlabel("kbps (log)")
        ax.set_ylabel(metric)
        ax.set_title(f"{TITLES[metric]}: mean over {len(clips)} clips")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = out_dir / f"rd_{metric}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

        cols = min(2, len(clips))
        rows = (len(clips) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.5 * rows), squeeze=False)
        for ax, clip in zip(axes.flat, clips):
            _draw(ax, [r for r in records if r["clip"] == clip], metric, annotate=False)
            ax.set_title(clip, fontsize=9)
            ax.set_xlabel("kbps (log)")
            ax.set_ylabel(metric)
        for ax in list(axes.flat)[len(clips) :]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=6)
        fig.suptitle(f"{TITLES[metric]}, per clip")
        fig.tight_layout(rect=(0, 0.06, 1, 0.97))
        path = out_dir / f"rd_{metric}_per_clip.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="RD plots of an eval folder (results.json).")
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    for path in write_plots(args.out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
