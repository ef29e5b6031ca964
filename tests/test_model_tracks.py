"""tools/model_tracks.py: keypoint tracks of a crop cache, redone when the weights change."""

from __future__ import annotations

import importlib

import numpy as np
from _media import tiny_weights

model_tracks = importlib.import_module("tools.model_tracks")


def test_tracks_follow_the_weights(tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "tracks"
    cache.mkdir()
    rng = np.random.default_rng(0)
    np.save(cache / "clip.npy", rng.integers(0, 255, (5, 64, 64, 3), dtype=np.uint8))
    np.save(cache / "clip.landmarks.npy", np.zeros((5, 478, 2), np.float32))
    a, b = tiny_weights(tmp_path / "a.safetensors", 1), tiny_weights(tmp_path / "b.safetensors", 2)

    assert model_tracks.main([str(cache), "--out", str(out), "--weights", str(a)]) == 0
    first = np.load(out / "clip.npy")
    assert first.shape == (5, 10, 3) and sorted(p.name for p in out.glob("*.npy")) == ["clip.npy"]
    assert (
        np.abs(first[..., :2]).max() <= 1 and 0 <= first[..., 2].min() <= first[..., 2].max() <= 1
    )

    # same weights: a clip already done is skipped (a marker left in its place stays);
    # other weights: every clip is redone
    np.save(out / "clip.npy", np.zeros_like(first))
    model_tracks.main([str(cache), "--out", str(out), "--weights", str(a)])
    assert not np.load(out / "clip.npy").any()
    model_tracks.main([str(cache), "--out", str(out), "--weights", str(b)])
    redone = np.load(out / "clip.npy")
    assert redone.shape == first.shape and redone.any() and not np.array_equal(redone, first)
