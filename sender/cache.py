"""The crop cache: face crops and landmarks of video clips, stored for training.

Layout of ``out_dir`` (read by codec/ training, which never imports sender/):

- ``<name>.npy``            uint8 (T, S, S, 3) RGB face crops (see sender/crop.py for framing)
- ``<name>.landmarks.npy``  float16 (T, 478, 2) MediaPipe face-mesh points (x, y) on the crop,
  in [-1, 1] with -1/+1 at the outer edges of the crop (grid_sample align_corners=False);
  NaN on frames where the mesh found no face
- ``<name>.track.npz``      pts (T,) float64 seconds, boxes (T, 3) float32 (cx, cy, side) of
  the crop in source pixels, detected (T,) bool
- ``index.json``            {"version", "clips": {name: {source, sha256, fps, fps_float,
  frames, size, crop, landmarks, detected_fraction, landmark_fraction}}, "failed": {...}}

Re-running skips clips whose source hash and settings match the index and whose files are
present, so an interrupted run resumes. Command line:
``python -m sender.cache SRC_DIR_OR_FILE... --out DIR --size 256``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from iwcodec.errors import InputError
from sender.crop import CropConfig, iter_crops, track_video
from sender.face_mesh import N_LANDMARKS, FaceMesh

CACHE_VERSION = 1
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".flv"}
# What the landmark files hold; part of the settings a cached clip must match to be reused.
LANDMARK_SETTINGS = {"model": "mediapipe-0.10.21 face_mesh refine_landmarks", "points": 478}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_videos(sources: Iterable[str | Path]) -> list[Path]:
    """Video files named directly or found (not recursively) in the given folders, sorted."""
    found: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            found += sorted(q for q in p.iterdir() if q.suffix.lower() in VIDEO_SUFFIXES)
        elif p.exists():
            found.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    return found


def clip_names(paths: Sequence[Path]) -> list[str]:
    """Cache names: the file stem, or the whole file name where two stems collide."""
    stems = [p.stem for p in paths]
    return [p.stem if stems.count(p.stem) == 1 else p.name for p in paths]


def _settings(config: CropConfig) -> dict:
    return {"crop": config.as_dict(), "landmarks": LANDMARK_SETTINGS, "version": CACHE_VERSION}


def load_index(out_dir: Path) -> dict:
    path = out_dir / "index.json"
    if not path.exists():
        return {"version": CACHE_VERSION, "clips": {}, "failed": {}}
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable cache index ({exc})") from None
    index.setdefault("clips", {})
    index.setdefault("failed", {})
    return index


def _save_index(out_dir: Path, index: dict) -> None:
    tmp = out_dir / "index.json.tmp"
    tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
    os.replace(tmp, out_dir / "index.json")


def is_cached(out_dir: Path, entry: dict | None, sha: str, config: CropConfig) -> bool:
    """Whether a clip is already in the cache with this source content and these settings."""
    if not entry or entry.get("sha256") != sha:
        return False
    want = _settings(config)
    if any(entry.get(k) != v for k, v in want.items()):
        return False
    name = entry["name"]
    try:
        frames = np.load(out_dir / f"{name}.npy", mmap_mode="r")
        marks = np.load(out_dir / f"{name}.landmarks.npy", mmap_mode="r")
    except (OSError, ValueError):
        return False
    s = config.size
    return (
        frames.shape == (entry["frames"], s, s, 3)
        and marks.shape == (entry["frames"], N_LANDMARKS, 2)
        and (out_dir / f"{name}.track.npz").exists()
    )


def cache_clip(path: Path, name: str, out_dir: Path, config: CropConfig) -> dict:
    """Crop one clip into the cache (streaming: one frame in memory besides the memmap).

    Returns its index entry. Raises InputError / NoFaceError for unusable clips."""
    boxes, detected, fps = track_video(path, config)
    t = len(boxes)
    s = config.size
    tmp_frames = out_dir / f"{name}.npy.tmp"
    frames = np.lib.format.open_memmap(tmp_frames, mode="w+", dtype=np.uint8, shape=(t, s, s, 3))
    marks = np.full((t, N_LANDMARKS, 2), np.nan, np.float16)
    pts = np.zeros(t, np.float64)
    n = 0
    with FaceMesh(tracking=True) as mesh:  # one per clip: no tracking state across clips
        for n, (ts, crop) in enumerate(iter_crops(path, boxes, s), start=1):
            frames[n - 1] = crop
            pts[n - 1] = ts
            xy = mesh.points(crop)  # (478, 2) in [0, 1] of the crop, or None
            if xy is not None:
                marks[n - 1] = (xy.astype(np.float32) * 2.0 - 1.0).astype(np.float16)
    frames.flush()
    del frames
    if n != t:
        tmp_frames.unlink(missing_ok=True)
        raise InputError(f"{path}: decoded {n} frames on the second pass, {t} on the first")
    np.save(out_dir / f"{name}.landmarks.npy", marks)
    np.savez(
        out_dir / f"{name}.track.npz", pts=pts, boxes=boxes.astype(np.float32), detected=detected
    )
    os.replace(tmp_frames, out_dir / f"{name}.npy")
    return {
        "name": name,
        "source": str(path),
        "fps": f"{fps.numerator}/{fps.denominator}",
        "fps_float": float(fps),
        "frames": t,
        "size": s,
        "detected_fraction": round(float(detected.mean()), 4),
        "landmark_fraction": round(float(np.isfinite(marks[:, 0, 0]).mean()), 4),
        **_settings(config),
    }


def write_crop_cache(
    video_paths: Iterable[str | Path],
    out_dir: str | Path,
    size: int = 256,
    config: CropConfig | None = None,
    progress: bool = True,
) -> dict:
    """Crop every clip (files, or folders of them) into ``out_dir``; return the index.

    Clips already cached with the same source hash and settings are skipped. Clips that fail
    (not a video, no face) are listed under ``index["failed"]`` and the others go on."""
    config = CropConfig(size=size) if config is None else config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = find_videos(video_paths)
    index = load_index(out)
    bar = tqdm(list(zip(paths, clip_names(paths))), disable=not progress, unit="clip")
    for path, name in bar:
        bar.set_postfix_str(name[:40])
        sha = sha256_of(path)
        entry = index["clips"].get(name)
        if is_cached(out, entry, sha, config):
            continue
        try:
            entry = cache_clip(path, name, out, config)
        except InputError as exc:
            index["clips"].pop(name, None)
            index["failed"][name] = {"source": str(path), "sha256": sha, "error": str(exc)}
            tqdm.write(f"skipped {name}: {exc}")
        else:
            entry["sha256"] = sha
            index["clips"][name] = entry
            index["failed"].pop(name, None)
        index["version"] = CACHE_VERSION
        _save_index(out, index)
    return index


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sender.cache", description=__doc__.split("\n")[0])
    ap.add_argument("sources", nargs="+", help="video files or folders of them")
    ap.add_argument("--out", required=True, help="cache folder")
    ap.add_argument("--size", type=int, default=256, help="crop side in pixels")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if not 16 <= args.size <= 2048:
        ap.error("--size must be between 16 and 2048")
    try:
        index = write_crop_cache(args.sources, args.out, args.size, progress=not args.quiet)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    clips = index["clips"].values()
    print(
        f"{len(index['clips'])} clips, {sum(c['frames'] for c in clips)} frames in {args.out}"
        + (f"; {len(index['failed'])} failed" if index["failed"] else "")
    )
    return 1 if index["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
