"""Keypoint tracks of the trained detector over a crop cache, for the bitstream tools.

    python tools/model_tracks.py .cache/crops_train_256 --out .cache/model_tracks_train

writes one ``<clip>.npy`` of shape (T, K, 3) (x, y in [-1, 1], strength in [0, 1]) per clip,
the format tools/bitstream_fit_prior.py and tools/bitstream_rate.py read, and
``weights_id.txt``. A rerun skips the clips already done with the same weights and redoes
them all when the weights changed (tracks of other weights are other keypoints).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from codec.weights import load_model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("cache", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--weights", default=None)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args(argv)
    model = load_model(args.weights)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = args.out / "weights_id.txt"
    if not (stamp.is_file() and stamp.read_text().strip() == model.weights_id.hex()):
        for old in args.out.glob("*.npy"):
            old.unlink()
        stamp.write_text(model.weights_id.hex() + "\n")
    for path in sorted(args.cache.glob("*.npy")):
        if path.name.endswith(".landmarks.npy") or (args.out / path.name).exists():
            continue
        frames = np.load(path, mmap_mode="r")
        tracks = []
        with torch.inference_mode():
            for i in range(0, len(frames), args.batch):
                x = torch.from_numpy(np.array(frames[i : i + args.batch])).permute(0, 3, 1, 2)
                kp, s = model.detect(x.float() / 255)
                tracks.append(torch.cat([kp, s[..., None]], -1).numpy())
        np.save(args.out / path.name, np.concatenate(tracks).astype(np.float32))
        print(path.stem, len(frames), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
