"""Rate-distortion plots of an evaluation folder, made from ``results.json`` alone.

For each metric (PSNR, SSIM, MS-SSIM, LPIPS, AKD): ``rd_<metric>.png`` with the mean over
clips (eval/summary.py ``mean_points``) and ``rd_<metric>_per_clip.png`` with one panel per
clip. kbps on a log axis. Classic codecs: one curve per setting family (colour = codec, solid =
low-delay, dashed = best quality); the keyframe-only baseline: a grey curve over keyframe
quality (one keyframe) and grey squares for more keyframes; our operating points: labelled red
stars.

Drawing is most of a report's time (about 0.1 s a figure on a CPU core, ten figures), so a
figure is drawn only when what it shows changed: each PNG carries the digest of its drawn
data, titles, this module's code and the matplotlib version (a PNG text chunk), and a
figure whose digest is already on disk is left as it is. A resumed run, ``--report-only`` on
unchanged results, or ``--add-akd`` (only the AKD figures change) redraws nothing else.
Figures are made with ``matplotlib.figure.Figure`` and saved through the Agg renderer, without
pyplot: importing this module leaves the caller's matplotlib backend alone.

Command line: ``python -m eval.plots DIR``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from eval.operating_points import IWCODEC, KEYFRAME_ONLY
from eval.results import METRICS, clips_of, load_results
from eval.summary import mean_points

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
DIGEST_KEY = "iwcodec-plot-digest"  # the PNG text chunk that holds a figure's digest

Curves = list[tuple[str, list[dict[str, Any]]]]  # (family, its points by kbps), drawing order


def _series(points: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_family: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in points:
        by_family[p["family"]].append(p)
    return {f: sorted(ps, key=lambda p: p["kbps"]) for f, ps in sorted(by_family.items())}


def _curves(points: Sequence[dict[str, Any]], metric: str) -> Curves:
    """The curves ``_draw`` puts on an axes, reduced to the fields it reads: what a figure shows
    (and what its digest covers), in drawing order."""
    out = []
    for family, ps in _series(points).items():
        kept = [
            {"kbps": p["kbps"], "value": p[metric], "codec": p["codec"], "label": p.get("label")}
            for p in ps
            if p[metric] is not None
        ]
        if kept:
            out.append((family, kept))
    return out


def _draw(ax, curves: Curves, annotate: bool = True) -> None:
    from matplotlib.ticker import FuncFormatter

    for family, ps in curves:
        xs, ys = [p["kbps"] for p in ps], [p["value"] for p in ps]
        codec = ps[0]["codec"]
        if codec == IWCODEC:
            ax.plot(xs, ys, "*", color="red", markersize=12, label="iwcodec", zorder=5)
            if annotate:
                for p in ps:
                    ax.annotate(
                        p["label"],
                        (p["kbps"], p["value"]),
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


def _mean_figure(metric: str, curves: Curves, clips: int):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5.5))
    ax = fig.subplots()
    _draw(ax, curves)
    ax.set_xlabel("kbps (log)")
    ax.set_ylabel(metric)
    ax.set_title(f"{TITLES[metric]}: mean over {clips} clips")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def _per_clip_figure(metric: str, per_clip: list[tuple[str, Curves]]):
    from matplotlib.figure import Figure

    cols = min(2, len(per_clip))
    rows = (len(per_clip) + cols - 1) // cols
    fig = Figure(figsize=(6.5 * cols, 4.5 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (clip, curves) in zip(axes.flat, per_clip):
        _draw(ax, curves, annotate=False)
        ax.set_title(clip, fontsize=9)
        ax.set_xlabel("kbps (log)")
        ax.set_ylabel(metric)
    for ax in list(axes.flat)[len(per_clip) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=6)
    fig.suptitle(f"{TITLES[metric]}, per clip")
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    return fig


@functools.cache
def _style() -> list[str]:
    """What decides a figure's look besides its data: this module's code, matplotlib's version."""
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    return [code, metadata.version("matplotlib")]


def _digest(*drawn: Any) -> str:
    text = json.dumps([_style(), *drawn], sort_keys=True, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _on_disk(path: Path, digest: str) -> bool:
    """Whether ``path`` is a PNG this module wrote from data with ``digest``."""
    from PIL import Image

    try:
        with Image.open(path) as image:  # reads the chunks before the pixels only
            return image.info.get(DIGEST_KEY) == digest
    except OSError:  # missing, or not a PNG any more
        return False


def _write(path: Path, dpi: int, build: Callable[..., Any], *args: Any) -> Path:
    """Save the figure ``build(*args)`` draws at ``path``, unless ``path`` already shows it
    (``args`` are all the data a figure builder reads)."""
    digest = _digest(path.name, dpi, build.__name__, *args)
    if not _on_disk(path, digest):
        build(*args).savefig(path, dpi=dpi, metadata={DIGEST_KEY: digest})
    return path


def write_plots(out_dir: str | Path) -> list[Path]:
    """Write the mean and per-clip RD plots of ``out_dir/results.json``; returns the paths
    (those already showing the current data are kept, not drawn again)."""
    out_dir = Path(out_dir)
    records = load_results(out_dir)
    means = [_flat(p) for p in mean_points(records)[0]]
    clips = clips_of(records)
    written = []
    for metric in METRICS:
        if not any(r[metric] is not None for r in records):
            continue
        path = out_dir / f"rd_{metric}.png"
        written.append(_write(path, 110, _mean_figure, metric, _curves(means, metric), len(clips)))
        per_clip = [(c, _curves([r for r in records if r["clip"] == c], metric)) for c in clips]
        path = out_dir / f"rd_{metric}_per_clip.png"
        written.append(_write(path, 90, _per_clip_figure, metric, per_clip))
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
