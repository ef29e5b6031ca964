"""The detector's keypoint tracks over a crop cache, and the entropy-table refit that reads
them (``iwcodec entropy refit``; the fitting itself is ``bitstream.refit``, which has no torch).

    tracks = cache_tracks(".cache/crops_train_256", ".cache/tracks/crops_train_256", model)

writes one ``<clip>.npy`` of shape (T, K, 3) (x, y in [-1, 1], strength in [0, 1]: what the
sender quantizes and codes) per clip and ``weights_id.txt``. A rerun skips the clips already
done with the same weights and redoes them all when the weights changed (tracks of other
weights are other keypoints).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from bitstream import CANDIDATE_STEPS, Predictor, load_prior
from bitstream.refit import Adaptation, fit_table, measure_rate, tune
from codec.inference import to_images
from iwcodec.errors import InputError

STAMP = "weights_id.txt"


def crop_files(cache: str | Path) -> list[Path]:
    """The ``<clip>.npy`` crop arrays of a crop cache (``python -m sender.cache``), by name."""
    cache = Path(cache)
    paths = sorted(p for p in cache.glob("*.npy") if not p.name.endswith(".landmarks.npy"))
    if not paths:
        raise InputError(
            f"no crop cache in {cache} (expected <clip>.npy files; write one with "
            "python -m sender.cache)"
        )
    return paths


@torch.inference_mode()
def detect_track(model, frames: np.ndarray, batch: int = 32) -> np.ndarray:
    """(T, S, S, 3) uint8 crops -> (T, K, 3) float32 keypoints and strengths, as the sender
    computes them."""
    device = next(model.parameters()).device
    parts = []
    for i in range(0, len(frames), batch):
        kp, strength = model.detect(to_images(frames[i : i + batch], device))
        parts.append(torch.cat([kp, strength[..., None]], -1).float().cpu().numpy())
    return np.concatenate(parts).astype(np.float32)


def _start_over_for_other_weights(out: Path, weights_id: bytes) -> None:
    stamp = out / STAMP
    if stamp.is_file() and stamp.read_text().strip() == weights_id.hex():
        return
    for old in out.glob("*.npy"):
        old.unlink()
    stamp.write_text(weights_id.hex() + "\n")


def cache_tracks(
    cache: str | Path,
    out: str | Path,
    model,
    batch: int = 32,
    report: Callable[[str], None] = lambda line: None,
) -> list[tuple[str, np.ndarray]]:
    """The detector's track of every clip of ``cache``, kept in ``out`` for the next run."""
    out = Path(out)
    paths = crop_files(cache)
    out.mkdir(parents=True, exist_ok=True)
    _start_over_for_other_weights(out, model.weights_id)
    tracks = []
    for path in paths:
        done = out / path.name
        if not done.exists():
            track = detect_track(model, np.load(path, mmap_mode="r"), batch)
            np.save(done, track)
            report(f"{path.stem}: {len(track)} frames")
        tracks.append((path.stem, np.load(done)))
    return tracks


def _check_steps(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in CANDIDATE_STEPS]
    if unknown or not names:
        raise InputError(
            f"unknown keypoint steps {', '.join(unknown) or '(none)'}: name some of "
            f"{', '.join(CANDIDATE_STEPS)}"
        )


def _rate_lines(name: str, rates: dict, fps: float) -> list[str]:
    kbps = 8 * fps / 1000
    return [
        f"| {name} | {which} | {r.stream:.2f} ({r.stream * kbps:.2f} kbps) | {r.ideal:.2f} | "
        f"{r.ratio:.3f} |"
        for which, r in rates.items()
    ]


def _refit_one(
    name: str,
    train: list[np.ndarray],
    val: list[np.ndarray] | None,
    out_dir: Path,
    tuned: bool,
    predictor: Predictor,
    fps: float,
    report: Callable[[str], None],
) -> tuple[dict, list[str]]:
    """Tune, fit and write the table of one quantization; its JSON entry and rate rows."""
    xy, s = CANDIDATE_STEPS[name]
    if tuned:
        report(f"tuning {name} (xy_steps {xy}, s_steps {s}) by two-fold cross-validation:")
    adaptation = tune(train, xy, s, predictor, report=report) if tuned else Adaptation()
    table = fit_table(train, xy, s, predictor, adaptation)
    path = out_dir / f"xy{xy}_s{s}.json"
    table.save(path)
    report(
        f"{path}: id {table.id.hex()}, radius {adaptation.radius}, prior weight "
        f"{adaptation.prior_weight}, limit {adaptation.limit}{' (tuned)' if tuned else ''}; "
        f"fitted on {len(train)} tracks / {sum(map(len, train))} frames"
    )
    entry = {"file": str(path), "id": table.id.hex(), "adaptation": asdict(adaptation)}
    if val is None:
        return entry, []
    rates = {
        "shipped": measure_rate(val, load_prior(f"xy{xy}_s{s}"), xy, s, predictor, fps),
        "refit": measure_rate(val, table, xy, s, predictor, fps),
    }
    entry["rate"] = {which: r.to_json() for which, r in rates.items()}
    return entry, _rate_lines(name, rates, fps)


def refit_entropy(
    model,
    train_cache: str | Path,
    out_dir: str | Path,
    tracks_dir: str | Path,
    *,
    val_cache: str | Path | None = None,
    steps: Sequence[str] = tuple(CANDIDATE_STEPS),
    tuned: bool = True,
    predictor: Predictor = Predictor.PREVIOUS,
    fps: float = 30.0,
    report: Callable[[str], None] = lambda line: None,
) -> dict:
    """Fit a table per named quantization (``steps``) to ``model``'s keypoints on the training
    crops and write it to ``out_dir/xy<XY>_s<S>.json`` (the name ``load_prior`` reads); with
    ``val_cache``, measure the rate of the shipped table and of the new one on those crops.

    Tracks are kept under ``tracks_dir/<cache folder name>``. Returns every number (JSON-able).
    """
    _check_steps(steps)
    tracks_dir, out_dir = Path(tracks_dir), Path(out_dir)
    caches = {"train": train_cache} | ({"val": val_cache} if val_cache is not None else {})
    tracks = {
        role: [t for _, t in cache_tracks(c, tracks_dir / Path(c).name, model, report=report)]
        for role, c in caches.items()
    }
    result = {"weights_id": model.weights_id.hex(), "predictor": predictor.name, "tables": {}}
    for role, cache in caches.items():
        result[role] = {
            "cache": str(cache),
            "clips": len(tracks[role]),
            "frames": sum(map(len, tracks[role])),
        }
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in steps:
        entry, lines = _refit_one(
            name, tracks["train"], tracks.get("val"), out_dir, tuned, predictor, fps, report
        )
        result["tables"][name] = entry
        rows += lines
    if rows:
        report(
            f"\nrate on {result['val']['clips']} val tracks / {result['val']['frames']} frames "
            f"at {fps:g} fps (file defaults; bytes per frame, framing included):"
        )
        for line in ["| steps | table | stream | ideal | ratio |", "|---|---|---|---|---|", *rows]:
            report(line)
    return result
