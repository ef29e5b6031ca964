"""The measurement tools run on small track files (tools/bitstream_*.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from bitstream import EntropyModel
from bitstream.synthetic import synthetic_track

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def track_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracks")
    rng = np.random.default_rng(0)
    np.save(root / "one.npy", synthetic_track(rng, 90))
    np.save(root / "batch.npy", np.stack([synthetic_track(rng, 40) for _ in range(2)]))
    np.savez(root / "bundle.npz", a=synthetic_track(rng, 30), fps_a=np.float64(25))
    return root


def test_load_tracks_formats(track_files):
    tracks = load_tool("bitstream_tracks").load_tracks(
        [track_files / "one.npy", track_files / "batch.npy", track_files / "bundle.npz"]
    )
    assert [t.shape[0] for _, t in tracks] == [90, 40, 40, 30]
    assert len(load_tool("bitstream_tracks").load_tracks([track_files])) == 3  # dir: .npy only


def test_rate_tool(track_files, tmp_path, capsys):
    out = tmp_path / "rate.json"
    rate = load_tool("bitstream_rate")
    assert rate.main([str(track_files / "one.npy"), "--fps", "30", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for label in ("our stream", "adaptive model ideal", "raw float32", "zstd", "ratio ours"):
        assert label in text
    results = json.loads(out.read_text())
    main = results["main"]
    assert main["raw"] == 240.0 and main["frames"] == 90
    assert main["ideal"] < main["stream"] < main["zstd_stream"] < main["raw"]
    assert [r["frames_per_unit"] for r in results["frames_per_unit"]][:3] == [1, 2, 3]
    one, thirty = results["frames_per_unit"][0], results["frames_per_unit"][6]
    assert one["stream"] > thirty["stream"]  # framing amortizes
    assert set(results["candidates"]) == {"coarse", "default", "fine"}


def test_fit_prior_tool(track_files, tmp_path, capsys):
    out = tmp_path / "table.json"
    fit = load_tool("bitstream_fit_prior")
    assert fit.main([str(track_files), "--out", str(out), "--radius", "7"]) == 0
    model = EntropyModel.load(out)
    assert model.radius == 7 and model.id.hex() in capsys.readouterr().out
