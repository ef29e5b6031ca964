"""Realistic keypoint tracks for bitstream measurements, before the trained detector exists.

Runs mediapipe's face mesh on each clip, keeps 20 well-spread landmarks, and normalises them
to [-1, 1] inside one fixed square box per clip (centred on the clip's mean face centre, side
``--box`` times the largest face extent seen), so the motion is the head's motion inside a
static crop. Strength is synthesised: a slow sinusoid per keypoint plus a little noise,
clipped to [0, 1]. Output: one ``(T, 20, 3)`` float32 ``.npy`` per clip and an ``.npz`` with
all of them plus their frame rates (``fps_<name>``).

    /work/venv/bin/python tools/bitstream_tracks.py /work/shared/data/val/*.mp4 --out .cache/tracks
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

# Face-mesh indices: forehead, brows, eye corners, nose, cheeks, mouth corners and lips, jaw, chin.
LANDMARKS = (
    10,
    70,
    105,
    300,
    334,
    33,
    133,
    362,
    263,
    1,
    234,
    454,
    61,
    291,
    13,
    14,
    172,
    397,
    152,
    4,
)


def load_tracks(paths: list[Path]) -> list[tuple[str, np.ndarray]]:
    """Named ``(T, K, 3)`` float32 tracks from .npy files ((T, K, 3) or (N, T, K, 3)), .npz files
    (every 3-d array) or directories of .npy files."""
    out: list[tuple[str, np.ndarray]] = []
    for path in paths:
        if path.is_dir():
            out += load_tracks(sorted(path.glob("*.npy")))
        elif path.suffix == ".npz":
            with np.load(path) as z:
                out += [(f"{path.stem}:{k}", z[k]) for k in z.files if z[k].ndim == 3]
        else:
            arr = np.load(path)
            if arr.ndim == 3:
                out.append((path.stem, arr))
            elif arr.ndim == 4:
                out += [(f"{path.stem}[{i}]", a) for i, a in enumerate(arr)]
            else:
                raise SystemExit(f"{path}: want (T, K, 3) or (N, T, K, 3), got {arr.shape}")
    for name, arr in out:
        if arr.shape[-1] != 3:
            raise SystemExit(f"{name}: last axis must be (x, y, strength), got {arr.shape}")
    return [(name, arr.astype(np.float32)) for name, arr in out]


def _landmarks(path: Path) -> tuple[np.ndarray, float]:
    import av
    import mediapipe as mp

    mesh = mp.solutions.face_mesh.FaceMesh(
        static_image_mode=False, max_num_faces=1, refine_landmarks=False
    )
    out: list[np.ndarray] = []
    last = None
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        for frame in container.decode(stream):
            rgb = frame.to_ndarray(format="rgb24")
            h, w = rgb.shape[:2]
            res = mesh.process(rgb)
            if res.multi_face_landmarks:
                lm = res.multi_face_landmarks[0].landmark
                last = np.array([[lm[i].x * w, lm[i].y * h] for i in LANDMARKS], np.float64)
            if last is not None:
                out.append(last)
    mesh.close()
    if not out:
        raise SystemExit(f"{path}: no face found")
    return np.stack(out), fps  # (T, 20, 2) pixels


def make_track(path: Path, box: float, seed: int) -> tuple[np.ndarray, float]:
    """``(T, 20, 3)`` float32 track of one clip and its frame rate."""
    px, fps = _landmarks(path)
    centre = px.reshape(-1, 2).mean(axis=0)
    extent = (px.max(axis=1) - px.min(axis=1)).max()
    half = 0.5 * box * extent
    xy = (px - centre) / half  # (T, 20, 2)
    t = np.arange(len(px))[:, None] / fps
    rng = np.random.default_rng(seed)
    k = len(LANDMARKS)
    base = rng.uniform(0.3, 0.8, k)
    amp = rng.uniform(0.05, 0.2, k)
    period = rng.uniform(2.0, 8.0, k)
    phase = rng.uniform(0, 2 * np.pi, k)
    s = base + amp * np.sin(2 * np.pi * t / period + phase) + rng.normal(0, 0.004, (len(t), k))
    track = np.concatenate([np.clip(xy, -1, 1), np.clip(s, 0, 1)[..., None]], axis=-1)
    return track.astype(np.float32), fps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("videos", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--box", type=float, default=1.6, help="box side / largest face extent")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    bundle: dict[str, np.ndarray] = {}
    for i, video in enumerate(args.videos):
        track, fps = make_track(video, args.box, seed=i)
        name = video.stem
        np.save(args.out / f"{name}.npy", track)
        bundle[name] = track
        bundle[f"fps_{name}"] = np.float64(fps)
        step = np.abs(np.diff(track[..., :2], axis=0)) * 128  # pixels at 256 px per frame
        print(
            f"{name}: {track.shape[0]} frames at {fps:g} fps, xy range "
            f"[{track[..., :2].min():.2f}, {track[..., :2].max():.2f}], "
            f"mean |dxy| {step.mean():.2f} px/frame at 256 px"
        )
    np.savez(args.out / "tracks.npz", **bundle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
