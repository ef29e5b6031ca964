"""sender/cache.py: the crop cache layout, resuming, failures, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _media import SAMPLE, write_exact_clip

import sender.cache as cache
from sender.video import iter_frames


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with one short face clip (real face pasted on a canvas), one without a face,
    and a text file that is not a video."""
    d = tmp_path_factory.mktemp("src")
    face = [f.rgb for f in iter_frames(SAMPLE, max_frames=8)]
    canvas = []
    for k, rgb in enumerate(face):
        img = np.full((300, 400, 3), 80, np.uint8)
        img[20 + k : 276 + k, 60:316] = rgb
        canvas.append(img)
    write_exact_clip(d / "talker.mp4", canvas)
    rng = np.random.default_rng(3)
    write_exact_clip(
        d / "wall.mp4", [np.full((64, 64, 3), c, np.uint8) for c in rng.integers(0, 255, 5)]
    )
    (d / "readme.mov").write_text("not a video")
    return d


def test_cache_layout_resume_and_failures(sources: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "crops"
    index = cache.write_crop_cache([sources], out, size=96, progress=False)
    assert set(index["clips"]) == {"talker"}
    assert set(index["failed"]) == {"wall", "readme"}
    assert "no face" in index["failed"]["wall"]["error"]

    frames = np.load(out / "talker.npy")
    marks = np.load(out / "talker.landmarks.npy")
    track = np.load(out / "talker.track.npz")
    assert frames.shape == (8, 96, 96, 3) and frames.dtype == np.uint8
    assert marks.shape == (8, 478, 2) and marks.dtype == np.float16
    found = np.isfinite(marks).all(axis=(1, 2))
    assert found.mean() > 0.7 and (np.isnan(marks[~found])).all()
    assert np.abs(marks[found]).max() < 1.5  # normalized to the crop, not pixels
    # nose tip (mesh point 1) near the crop's middle, below its center: vox-like framing
    nose = marks[found][:, 1].astype(np.float32).mean(axis=0)
    assert abs(nose[0]) < 0.25 and 0.0 < nose[1] < 0.45
    assert track["boxes"].shape == (8, 3) and track["pts"].shape == (8,)

    entry = json.loads((out / "index.json").read_text())["clips"]["talker"]
    assert entry["frames"] == 8 and entry["size"] == 96 and entry["fps"] == "25/1"
    assert entry["sha256"] == cache.sha256_of(sources / "talker.mp4")
    assert entry["crop"]["scale"] == 2.0

    # the cached clip is skipped; failed ones are retried (and fail again)
    monkeypatch.setattr(cache, "cache_clip", _only_failures(cache.cache_clip))
    again = cache.write_crop_cache([sources], out, size=96, progress=False)
    assert set(again["clips"]) == {"talker"} and set(again["failed"]) == {"wall", "readme"}


def _only_failures(real):
    def run(path, *args):
        if path.stem == "talker":
            raise AssertionError("a cached clip was processed again")
        return real(path, *args)

    return run


def test_changed_settings_redo_the_clip(sources: Path, tmp_path: Path) -> None:
    out = tmp_path / "crops"
    cache.write_crop_cache([sources / "talker.mp4"], out, size=64, progress=False)
    cache.write_crop_cache([sources / "talker.mp4"], out, size=80, progress=False)
    assert np.load(out / "talker.npy").shape[1:] == (80, 80, 3)


def test_command_line(sources: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    assert (
        cache.main([str(sources / "talker.mp4"), "--out", str(out), "--size", "64", "--quiet"]) == 0
    )
    assert "1 clips, 8 frames" in capsys.readouterr().out
    assert cache.main([str(sources), "--out", str(out), "--size", "64", "--quiet"]) == 1  # 2 failed
    assert cache.main([str(tmp_path / "nowhere"), "--out", str(out), "--quiet"]) == 2
    assert "no such file" in capsys.readouterr().err
