"""The markdown summary of an evaluation folder, made from ``results.json`` alone.

Means over clips: a point (eval/operating_points.py ``key``) is averaged over the clips only
when it has a record for every clip of the folder (each clip weighs the same: kbps and every
metric are plain means of the per-clip values); points missing a clip are listed, not averaged.
A metric's mean is empty ("-") when a clip has no value for it (AKD where no decoded frame
shows a face; PSNR of a clip decoded without any loss); AKD cells say how many decoded frames
had no face (AKD averages only frames where both sides show one).

Rate needed to equal our LPIPS, per classic setting family (a curve of mean points):

1. sort the family's points by mean kbps and take the running minimum of LPIPS (the best
   quality reachable at or below each rate: a codec's rate floor often makes several targets
   land on the same rate, and a lower target can always be chosen);
2. find the first point whose running minimum is <= our LPIPS and interpolate linearly in
   log(kbps) between it and the point before;
3. ratio = that rate / our kbps. If the family's lowest rate already reaches our LPIPS, the
   rate needed is at most that lowest rate ("<="); if no point reaches it, more than its
   highest rate (">"): our LPIPS is outside its curve, and the ratio is a bound.

Command line: ``python -m eval.summary DIR`` rewrites ``DIR/summary.md``, ``DIR/HEADLINE.md``
and ``DIR/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eval.operating_points import HEADLINE_POINT, IWCODEC, KEYFRAME_ONLY
from eval.results import METRICS, OPTIONAL_METRICS, clips_of, load_results, write_json_atomically

SUMMARY_FILE = "summary.md"
HEADLINE_FILE = "HEADLINE.md"
SUMMARY_JSON = "summary.json"
RUN_FILE = "run.json"


@dataclass(frozen=True)
class MeanPoint:
    """One operating point averaged over clips (plain means of the per-clip values)."""

    key: str
    codec: str
    family: str
    label: str
    params: dict[str, Any]
    clips: tuple[str, ...]
    kbps: float
    metrics: dict[str, float | None]
    decode_fps: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RateMatch:
    """The rate a curve needs to reach a quality: ``relation`` "=" (interpolated), "<=" (its
    lowest rate already reaches it) or ">" (none of its rates does)."""

    kbps: float
    relation: str
    ratio: float

    def text(self, digits: int = 1) -> str:
        rel = "" if self.relation == "=" else self.relation + " "
        return f"{rel}{self.kbps:.{digits}f}"

    def ratio_text(self) -> str:
        rel = "" if self.relation == "=" else self.relation + " "
        return f"{rel}{self.ratio:.2f}x"


def _mean(values: Iterable[float | None]) -> float | None:
    """Mean of the clips' values; None if a clip has none (e.g. AKD where no decoded frame
    shows a face): a mean over the other clips would flatter the codec."""
    vals = list(values)
    return float(np.mean(vals)) if vals and all(v is not None for v in vals) else None


def mean_points(
    records: Sequence[dict[str, Any]], clips: Sequence[str] | None = None
) -> tuple[list[MeanPoint], list[str]]:
    """(points averaged over ``clips`` (default: every clip in the records), keys left out
    because they miss a clip)."""
    clips = list(clips) if clips is not None else clips_of(records)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[r.get("key", f"{r['codec']}/{json.dumps(r['params'], sort_keys=True)}")].append(r)
    points, incomplete = [], []
    for key, rs in groups.items():
        by_clip = {r["clip"]: r for r in rs}
        if any(c not in by_clip for c in clips):
            incomplete.append(key)
            continue
        rs = [by_clip[c] for c in clips]
        first = rs[0]
        extra: dict[str, Any] = {}
        if all("bytes_split" in r for r in rs):
            extra["kbps_split"] = {
                part: float(
                    np.mean([r["bytes_split"][part] * 8 / r["duration_s"] / 1000 for r in rs])
                )
                for part in first["bytes_split"]
            }
        for name in ("akd_no_face_test", "psnr_inf_frames"):
            if all(name in r for r in rs):
                extra[name] = int(sum(r[name] or 0 for r in rs))
        for name in FIDELITY_FIELDS:  # ours: the keyframes' ceiling and floor
            if all(r.get(name) is not None for r in rs):
                values = [r[name] for r in rs]
                extra[name] = float(np.mean(values))
                extra[name + "_min"] = float(np.min(values))
                extra[name + "_median"] = float(np.median(values))
        points.append(
            MeanPoint(
                key=key,
                codec=first["codec"],
                family=first.get("family", first["codec"]),
                label=first.get("label", key),
                params=first["params"],
                clips=tuple(clips),
                kbps=float(np.mean([r["kbps"] for r in rs])),
                metrics={m: _mean(r.get(m) for r in rs) for m in (*METRICS, *OPTIONAL_METRICS)},
                decode_fps=_mean(r.get("decode_fps") for r in rs),
                extra=extra,
            )
        )
    return points, sorted(incomplete)


def families(points: Iterable[MeanPoint], codec_filter=None) -> dict[str, list[MeanPoint]]:
    """Points by family, each sorted by rate."""
    out: dict[str, list[MeanPoint]] = defaultdict(list)
    for p in points:
        if codec_filter is None or codec_filter(p.codec):
            out[p.family].append(p)
    return {f: sorted(ps, key=lambda p: p.kbps) for f, ps in sorted(out.items())}


def is_classic(codec: str) -> bool:
    return codec not in (IWCODEC, KEYFRAME_ONLY)


def rate_to_match(
    rates: Sequence[float], values: Sequence[float], target: float, reference_kbps: float
) -> RateMatch | None:
    """The rate at which a curve (``rates`` kbps, ``values`` lower-is-better) first reaches
    ``target``, interpolated in log-rate on its running minimum; see the module docstring.
    None for an empty curve."""
    pts = sorted((r, v) for r, v in zip(rates, values) if v is not None and r > 0)
    if not pts:
        return None
    env = np.minimum.accumulate([v for _, v in pts])
    logs = [math.log(r) for r, _ in pts]
    if env[0] <= target:
        rate, rel = pts[0][0], "<="
    elif env[-1] > target:
        rate, rel = pts[-1][0], ">"
    else:
        i = int(np.argmax(env <= target))
        t = (env[i - 1] - target) / (env[i - 1] - env[i])
        rate, rel = math.exp(logs[i - 1] + t * (logs[i] - logs[i - 1])), "="
    return RateMatch(rate, rel, rate / reference_kbps)


def value_at_rate(rates: Sequence[float], values: Sequence[float], rate: float) -> float | None:
    """A curve's value at ``rate``, interpolated in log-rate between the two nearest points
    around it (curve sorted by rate); None when ``rate`` is outside the curve's range."""
    pts = sorted((r, v) for r, v in zip(rates, values) if v is not None and r > 0)
    if not pts or not pts[0][0] <= rate <= pts[-1][0]:
        return None
    for (r0, v0), (r1, v1) in zip(pts, pts[1:]):
        if r0 <= rate <= r1:
            if r1 == r0:
                return min(v0, v1)
            t = (math.log(rate) - math.log(r0)) / (math.log(r1) - math.log(r0))
            return v0 + t * (v1 - v0)
    return pts[0][1]


@dataclass(frozen=True)
class FamilyComparison:
    """A classic family against one of our points (LPIPS)."""

    family: str
    lowest_kbps: float
    lpips_at_lowest: float | None
    lpips_at_our_rate: float | None
    match: RateMatch | None


def compare(ours: MeanPoint, curve: Sequence[MeanPoint]) -> FamilyComparison:
    rates = [p.kbps for p in curve]
    lp = [p.metrics["lpips"] for p in curve]
    lowest = min(curve, key=lambda p: p.kbps)
    return FamilyComparison(
        family=curve[0].family,
        lowest_kbps=lowest.kbps,
        lpips_at_lowest=lowest.metrics["lpips"],
        lpips_at_our_rate=value_at_rate(rates, lp, ours.kbps),
        match=rate_to_match(rates, lp, ours.metrics["lpips"], ours.kbps),
    )


# -- markdown -----------------------------------------------------------------------------------
def _f(x: float | None, digits: int = 2) -> str:
    return (
        "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"
    )


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _metric_cells(p: MeanPoint) -> list[str]:
    m = p.metrics
    return [
        _f(m["psnr"]),
        _f(m["ssim"], 4),
        _f(m["ms_ssim"], 4),
        _f(m["lpips"], 4),
        _f(m.get("lpips_vgg"), 4),
        _f(m.get("dists"), 4),
        _f(m["akd"], 2) + _faceless(p),
    ]


def _faceless(p: MeanPoint) -> str:
    # AKD averages only frames where both sides show a face: say how many decoded ones did not.
    n = p.extra.get("akd_no_face_test", 0)
    return f" ({n} faceless)" if n else ""


METRIC_HEADER = ["PSNR dB", "SSIM", "MS-SSIM", "LPIPS", "LPIPS(vgg)", "DISTS", "AKD px"]
#: Record fields of our codec about its keyframes (eval/run.py keyframe_fidelity).
FIDELITY_FIELDS = ("self_psnr", "self_lpips", "keyframe_psnr", "keyframe_lpips")


def headline_lines(
    ours: MeanPoint,
    comparisons: Sequence[FamilyComparison],
    baseline: MeanPoint | None,
    n_clips: int,
    where: str,
    crop_size: int | None = None,
) -> list[str]:
    """The README snippet: our point next to each classic family."""
    crops = f"{crop_size}x{crop_size} face crops" if crop_size else "face crops"
    lines = [
        f"Mean over {n_clips} clips ({crops}; rates from the bytes really written; full "
        f"results in `{where}/summary.md`). LPIPS(alex), lower is better.",
        "",
    ]
    rows = [
        [
            f"**iwcodec ({ours.label})**",
            f"**{ours.kbps:.2f}**",
            f"**{_f(ours.metrics['lpips'], 4)}**",
            "-",
            "-",
            "-",
        ]
    ]
    if baseline is not None:
        rows.append(
            [
                f"keyframe only ({baseline.params.get('keyframe_codec', '')} "
                f"q{baseline.params.get('keyframe_quality', '')}, no motion)",
                f"{baseline.kbps:.2f}",
                _f(baseline.metrics["lpips"], 4),
                "-",
                "-",
                "-",
            ]
        )
    for c in comparisons:
        rows.append(
            [
                c.family,
                f"{c.lowest_kbps:.2f}",
                _f(c.lpips_at_lowest, 4),
                _f(c.lpips_at_our_rate, 4)
                if c.lpips_at_our_rate is not None
                else "below its floor",
                c.match.text() if c.match else "-",
                c.match.ratio_text() if c.match else "-",
            ]
        )
    lines += _table(
        [
            "codec",
            "kbps (lowest reached)",
            "LPIPS there",
            f"LPIPS at {ours.kbps:.2f} kbps",
            "kbps to equal our LPIPS",
            "rate ratio",
        ],
        rows,
    )
    lines += [
        "",
        'Classic codecs at targets from 2 kbps up; "lowest reached" is the lowest mean rate '
        "any target gave (their floor). The rate to equal our LPIPS is interpolated in log-rate "
        "on each codec's curve; `<=` / `>`: our LPIPS lies outside its measured curve (reached "
        "already at its lowest rate / not reached at its highest), so the ratio is a bound.",
    ]
    return lines


def summary_lines(
    out_dir: Path,
    points: Sequence[MeanPoint],
    incomplete: Sequence[str],
    records: Sequence[dict[str, Any]],
    run: dict[str, Any],
    headline: list[str],
) -> tuple[list[str], dict[str, Any]]:
    clips = clips_of(records)
    ours = [p for p in points if p.codec == IWCODEC]
    base = [p for p in points if p.codec == KEYFRAME_ONLY]
    classic = families(points, is_classic)
    lines = [f"# Rate-quality evaluation: {out_dir.name}", ""]
    data: dict[str, Any] = {"clips": clips, "points": [asdict(p) for p in points]}

    lines += ["## Run", ""]
    if run:
        lines.append(f"- weights: `{run.get('weights')}` (id `{run.get('weights_id')}`)")
        lines.append(f"- code commit: `{run.get('code_commit')}`")
        for m in run.get("machines", []):
            lines.append(
                f"- machine: {m.get('cpu')}, {m.get('cores')} cores, device {m.get('device')}"
                + (f" ({m['gpu']})" if m.get("gpu") else "")
                + (f", torch threads {m['torch_threads']}" if m.get("torch_threads") else "")
                + f"; torch {m.get('torch')}, PyAV {m.get('av')}, mediapipe {m.get('mediapipe')}"
            )
    lines.append(f"- records: {len(records)}; clips: {len(clips)}")
    lines.append("")
    clip_info = run.get("clips", {}) if run else {}
    lines += _table(
        ["clip", "frames", "fps", "seconds"],
        [
            [
                c,
                str(clip_info.get(c, {}).get("frames", "-")),
                str(clip_info.get(c, {}).get("fps", "-")),
                _f(clip_info.get(c, {}).get("duration_s")),
            ]
            for c in clips
        ],
    )
    if incomplete:
        lines += ["", f"Not averaged (missing a clip): {', '.join(incomplete)}"]

    if headline:
        lines += ["", "## Headline", "", *headline]

    lines += ["", "## Our operating points (mean over clips)", ""]
    rows = []
    for p in ours:
        split = p.extra.get("kbps_split", {})
        par = p.params
        rows.append(
            [
                p.label,
                f"{par.get('steps')} ({par.get('xy_steps')}/{par.get('s_steps')})",
                f"{par.get('keyframe_codec')} q{par.get('keyframe_quality')}",
                str(par.get("keyframes")),
                f"{p.kbps:.2f}",
                _f(split.get("keyframes")),
                _f(split.get("keypoints")),
                *_metric_cells(p),
                _f(p.decode_fps, 2),
            ]
        )
    lines += _table(
        [
            "point",
            "keypoint steps",
            "keyframe",
            "keyframes",
            "kbps",
            "keyframe kbps",
            "keypoint kbps",
            *METRIC_HEADER,
            "decode fps",
        ],
        rows,
    )

    lines += ["", "## Keyframe-only baseline (the keyframe shown for every frame)", ""]
    lines += _table(
        ["keyframe", "keyframes", "kbps", *METRIC_HEADER],
        [
            [
                f"{p.params.get('keyframe_codec')} q{p.params.get('keyframe_quality')}",
                str(p.params.get("keyframes")),
                f"{p.kbps:.2f}",
                *_metric_cells(p),
            ]
            for p in sorted(base, key=lambda p: p.kbps)
        ],
    )
    verdicts = []
    for p in ours:
        twin = _baseline_twin(p, base)
        if twin is None:
            continue
        d_lp = p.metrics["lpips"] - twin.metrics["lpips"]
        d_akd = (
            p.metrics["akd"] - twin.metrics["akd"]
            if p.metrics["akd"] is not None and twin.metrics["akd"] is not None
            else None
        )
        verdicts.append(
            [
                p.label,
                twin.label + f" ({twin.params.get('keyframes')} kf)",
                f"{p.kbps - twin.kbps:+.2f}",
                f"{d_lp:+.4f}",
                _f(p.metrics["psnr"] - twin.metrics["psnr"])
                if p.metrics["psnr"] is not None and twin.metrics["psnr"] is not None
                else "-",
                _f(d_akd) if d_akd is not None else "-",
                "yes" if d_lp < 0 else "**no**",
            ]
        )
        data.setdefault("versus_keyframe_only", {})[p.key] = {
            "baseline": twin.key,
            "delta_kbps": p.kbps - twin.kbps,
            "delta_lpips": d_lp,
            "delta_akd": d_akd,
        }
    if verdicts:
        lines += [
            "",
            "Each of our points against the keyframe-only baseline with the same keyframe(s) "
            "(the extra rate pays for the keypoints; a point that does not lower LPIPS is not "
            "worth sending):",
            "",
        ]
        lines += _table(
            [
                "our point",
                "baseline",
                "extra kbps",
                "LPIPS change",
                "PSNR change",
                "AKD change",
                "beats it (LPIPS)",
            ],
            verdicts,
        )

    fidelity, fidelity_data = _fidelity_lines(records, clips, ours, base)
    lines += fidelity
    if fidelity_data:
        data["per_clip_versus_keyframe_only"] = fidelity_data
    subsets = run.get("subsets", {}) if run else {}
    for name, members in subsets.items():
        sub_lines, sub_data = _subset_lines(name, members, records)
        lines += sub_lines
        data.setdefault("subsets", {})[name] = sub_data

    if ours and classic:
        lines += [
            "",
            "## Rate each classic setting needs to equal our LPIPS (ratio to our rate)",
            "",
        ]
        rows = []
        data["rate_ratios"] = {}
        for fam, curve in classic.items():
            row = [fam]
            for p in ours:
                c = compare(p, curve)
                row.append(f"{c.match.text()} ({c.match.ratio_text()})" if c.match else "-")
                data["rate_ratios"].setdefault(p.key, {})[fam] = (
                    asdict(c.match) if c.match else None
                )
            rows.append(row)
        lines += _table(
            ["classic setting"]
            + [f"{p.label}: {p.kbps:.2f} kbps, LPIPS {_f(p.metrics['lpips'], 4)}" for p in ours],
            rows,
        )
        lines += _per_clip_ratios(records, clips, ours)

    if classic:
        lines += ["", "## Classic codecs (mean over clips per target)", ""]
        rows = []
        for fam, curve in classic.items():
            for p in sorted(curve, key=lambda p: p.params.get("target_kbps", 0)):
                rows.append(
                    [
                        fam,
                        _f(p.params.get("target_kbps"), 0),
                        f"{p.kbps:.2f}",
                        *_metric_cells(p),
                        _f(p.decode_fps, 0),
                    ]
                )
        lines += _table(["setting", "target kbps", "kbps", *METRIC_HEADER, "decode fps"], rows)
    lines += [
        "",
        "Definitions: docs/evaluation.md (pipeline, rates, ratios) and docs/metrics.md "
        "(metrics, classic codec settings). Plots: `rd_<metric>.png` (mean over clips) and "
        "`rd_<metric>_per_clip.png`.",
    ]
    return lines, data


def _fidelity_lines(
    records: Sequence[dict[str, Any]],
    clips: Sequence[str],
    ours: Sequence[MeanPoint],
    base: Sequence[MeanPoint],
) -> tuple[list[str], dict[str, Any]]:
    """Per clip and for each of our points: the ceiling (self-reconstruction: each keyframe
    rendered from its own keypoints, against the decoded keyframe; and the keyframe against
    the original) and the floor (the keyframe-only baseline with the same keyframes): does
    the codec beat showing its keyframe, on LPIPS and on PSNR?"""
    lines: list[str] = []
    data: dict[str, Any] = {}
    by_key_clip = {(r.get("key"), r["clip"]): r for r in records}
    for p in ours:
        twin = _baseline_twin(p, base)
        rows, per_clip = [], {}
        for clip in clips:
            mine = by_key_clip.get((p.key, clip))
            other = by_key_clip.get((twin.key, clip)) if twin is not None else None
            if mine is None:
                continue
            verdict: dict[str, Any] = {
                k: mine.get(k)
                for k in ("kbps", "psnr", "lpips", "frames_as_keyframe", *FIDELITY_FIELDS)
            }
            if other is not None:
                verdict["baseline_kbps"] = other["kbps"]
                for m in ("psnr", "lpips"):
                    verdict[f"baseline_{m}"] = other[m]
                verdict["better_lpips"] = _better(mine["lpips"], other["lpips"], lower=True)
                verdict["better_psnr"] = _better(mine["psnr"], other["psnr"], lower=False)
            per_clip[clip] = verdict
            rows.append(
                [
                    clip,
                    f"{mine['kbps']:.2f}",
                    _f(mine["psnr"]),
                    _f(verdict.get("baseline_psnr")),
                    _f(mine["lpips"], 4),
                    _f(verdict.get("baseline_lpips"), 4),
                    _f(mine.get("self_psnr")),
                    _f(mine.get("self_lpips"), 4),
                    _f(mine.get("keyframe_psnr")),
                    _yes_no(verdict.get("better_lpips")),
                    _yes_no(verdict.get("better_psnr")),
                ]
            )
        if not rows:
            continue
        judged = [v for v in per_clip.values() if "better_lpips" in v]
        both = sum(1 for v in judged if v["better_lpips"] and v["better_psnr"])
        selfs = [v["self_psnr"] for v in per_clip.values() if v.get("self_psnr") is not None]
        data[p.key] = {
            "clips": per_clip,
            "baseline": twin.key if twin is not None else None,
            "clips_judged": len(judged),
            "better_lpips": sum(1 for v in judged if v["better_lpips"]),
            "better_psnr": sum(1 for v in judged if v["better_psnr"]),
            "better_both": both,
            "self_psnr_min": float(np.min(selfs)) if selfs else None,
            "self_psnr_median": float(np.median(selfs)) if selfs else None,
        }
        d = data[p.key]
        lines += [
            "",
            f"## `{p.label}` per clip: ceiling and floor",
            "",
            "Self-reconstruction: each keyframe rendered from its own (quantized) keypoints, "
            "scored against the decoded keyframe it was rendered from (the model's ceiling); "
            "keyframe PSNR: the decoded keyframe against the original crop (the image codec's "
            "loss). The floor: the keyframe-only baseline with the same keyframe(s)"
            + (f" (`{twin.label}`)" if twin is not None else " (not in this run)")
            + f". Beats it on LPIPS on {d['better_lpips']} of {d['clips_judged']} clips, on "
            f"PSNR on {d['better_psnr']}, on both on {both}; self-reconstruction PSNR min "
            f"{_f(d['self_psnr_min'])} dB, median {_f(d['self_psnr_median'])} dB.",
            "",
        ]
        lines += _table(
            [
                "clip",
                "kbps",
                "PSNR",
                "baseline PSNR",
                "LPIPS",
                "baseline LPIPS",
                "self PSNR",
                "self LPIPS",
                "keyframe PSNR",
                "beats baseline (LPIPS)",
                "beats baseline (PSNR)",
            ],
            rows,
        )
    return lines, data


def _better(ours: float | None, theirs: float | None, lower: bool) -> bool | None:
    if ours is None or theirs is None:
        return None
    return ours < theirs if lower else ours > theirs


def _yes_no(x: bool | None) -> str:
    return "-" if x is None else ("yes" if x else "**no**")


def _subset_lines(
    name: str, members: Sequence[str], records: Sequence[dict[str, Any]]
) -> tuple[list[str], dict[str, Any]]:
    """Means over a named subset of the clips (e.g. "val-4", the clips older results used),
    for our points and the keyframe-only baseline."""
    present = [c for c in members if any(r["clip"] == c for r in records)]
    points, _ = mean_points([r for r in records if r["clip"] in present], present)
    keep = [p for p in points if p.codec in (IWCODEC, KEYFRAME_ONLY)]
    lines = ["", f"## Subset `{name}` ({len(present)} of {len(members)} clips)", ""]
    lines += _table(
        ["point", "kbps", *METRIC_HEADER],
        [[p.label, f"{p.kbps:.2f}", *_metric_cells(p)] for p in keep],
    )
    return lines, {"clips": present, "points": [asdict(p) for p in keep]}


def _baseline_twin(p: MeanPoint, base: Sequence[MeanPoint]) -> MeanPoint | None:
    for b in base:
        if all(
            b.params.get(k) == p.params.get(k)
            for k in ("keyframe_codec", "keyframe_quality", "keyframes")
        ):
            return b
    return None


def _per_clip_ratios(
    records: Sequence[dict[str, Any]], clips: Sequence[str], ours: Sequence[MeanPoint]
) -> list[str]:
    head = next((p for p in ours if p.label == HEADLINE_POINT), ours[0])
    lines = [
        "",
        f"Per clip, our `{head.label}` point (rate ratio, same interpolation on each clip's own "
        "curves):",
        "",
    ]
    rows: dict[str, list[str]] = {}
    header = ["classic setting"]
    for clip in clips:
        recs = [r for r in records if r["clip"] == clip]
        mine = next((r for r in recs if r.get("key") == head.key), None)
        if mine is None:
            continue
        header.append(f"{clip}: {mine['kbps']:.2f} kbps, LPIPS {mine['lpips']:.4f}")
        by_family: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in recs:
            if is_classic(r["codec"]):
                by_family[r.get("family", r["codec"])].append(r)
        for fam in sorted(by_family):
            m = rate_to_match(
                [r["kbps"] for r in by_family[fam]],
                [r["lpips"] for r in by_family[fam]],
                mine["lpips"],
                mine["kbps"],
            )
            rows.setdefault(fam, [fam] + ["-"] * (len(header) - 2))
            rows[fam].append(m.ratio_text() if m else "-")
    for row in rows.values():
        row += ["-"] * (len(header) - len(row))
    return lines + _table(header, rows.values())


def write_summary(out_dir: str | Path) -> list[Path]:
    """Write summary.md, HEADLINE.md and summary.json of a results folder; returns their
    paths (HEADLINE.md only when the folder has our headline point and classic codecs)."""
    out_dir = Path(out_dir)
    records = load_results(out_dir)
    run_path = out_dir / RUN_FILE
    run = json.loads(run_path.read_text()) if run_path.is_file() else {}
    points, incomplete = mean_points(records)
    ours = [p for p in points if p.codec == IWCODEC]
    head = next((p for p in ours if p.label == HEADLINE_POINT), ours[0] if ours else None)
    classic = families(points, is_classic)
    headline: list[str] = []
    written = []
    if head is not None and classic:
        base = [p for p in points if p.codec == KEYFRAME_ONLY]
        comparisons = [compare(head, curve) for curve in classic.values()]
        sizes = {c.get("size") for c in run.get("clips", {}).values()}
        headline = headline_lines(
            head,
            comparisons,
            _baseline_twin(head, base),
            len(clips_of(records)),
            str(out_dir),
            sizes.pop() if len(sizes) == 1 else None,
        )
        (out_dir / HEADLINE_FILE).write_text("\n".join(headline) + "\n")
        written.append(out_dir / HEADLINE_FILE)
    lines, data = summary_lines(out_dir, points, incomplete, records, run, headline)
    (out_dir / SUMMARY_FILE).write_text("\n".join(lines) + "\n")
    write_json_atomically(out_dir / SUMMARY_JSON, _finite(data))
    return [out_dir / SUMMARY_FILE, *written, out_dir / SUMMARY_JSON]


def _finite(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rewrite the summary of an eval folder.")
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    for path in write_summary(args.out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
