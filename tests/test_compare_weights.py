"""tools/compare_weights.py and tools/average_weights.py: weighing checkpoints on a crop cache
(with the no-motion ceiling), and averaging them."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
from _media import tiny_weights

compare_weights = importlib.import_module("tools.compare_weights")
average_weights = importlib.import_module("tools.average_weights")


def _cache(directory, rng):
    directory.mkdir()
    moving = rng.integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)
    still = np.repeat(rng.integers(0, 255, (1, 64, 64, 3), dtype=np.uint8), 5, axis=0)
    for name, frames in (("moving", moving), ("still", still)):
        np.save(directory / f"{name}.npy", frames)
        np.save(directory / f"{name}.landmarks.npy", np.zeros((len(frames), 478, 2), np.float32))
    return directory


def test_compare_two_checkpoints(tmp_path):
    cache = _cache(tmp_path / "cache", np.random.default_rng(0))
    a, b = tiny_weights(tmp_path / "a.safetensors", 1), tiny_weights(tmp_path / "b.safetensors", 2)
    out = tmp_path / "cmp.json"
    args = [str(cache), str(a), str(b), "--every", "2", "--json", str(out)]
    assert compare_weights.main(args) == 0
    result = json.loads(out.read_text())
    assert list(result["weights"]) == [str(a), str(b)]
    ra, rb = (result["weights"][str(p)] for p in (a, b))
    assert ra["id"] != rb["id"] and ra["mean"] != rb["mean"]
    for r in (ra, rb):
        assert {c: r["clips"][c]["frames"] for c in r["clips"]} == {"moving": 3, "still": 3}
        for run in compare_weights.RUNS:
            m = r["mean"][run]
            assert np.isfinite(m["psnr"]) and m["lpips"] > 0 and -1 <= m["ssim"] <= 1
            clips = r["clips"]
            assert m["lpips"] == pytest.approx(
                (clips["moving"][run]["lpips"] + clips["still"][run]["lpips"]) / 2
            )
        # nothing moves in "still": its one source is each frame itself, so 1src is the
        # ceiling (up to a few pixels rounded the other way: batched against one by one)
        still = r["clips"]["still"]
        for k in compare_weights.METRICS:
            assert still["1src"][k] == pytest.approx(still["self"][k], rel=1e-3, abs=1e-4)
        assert r["clips"]["moving"]["1src"] != r["clips"]["moving"]["self"]


def test_pick_clips(tmp_path, capsys):
    cache = _cache(tmp_path / "cache", np.random.default_rng(1))
    a = tiny_weights(tmp_path / "a.safetensors", 1)
    out = tmp_path / "cmp.json"
    compare_weights.main(
        [str(cache), str(a), "--clips", "still", "--every", "5", "--json", str(out)]
    )
    assert list(json.loads(out.read_text())["weights"][str(a)]["clips"]) == ["still"]
    assert str(a) in capsys.readouterr().out
    with pytest.raises(SystemExit):
        compare_weights.main([str(cache), str(a), "--clips", "nobody"])


def test_average_weights_tool(tmp_path, capsys):
    a, b = tiny_weights(tmp_path / "a.safetensors", 1), tiny_weights(tmp_path / "b.safetensors", 2)
    out = tmp_path / "soup.safetensors"
    assert average_weights.main([str(out), str(a), str(b)]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a clear argparse error, not a traceback
        average_weights.main([str(tmp_path / "x.safetensors"), str(a), str(tmp_path / "missing")])
    assert "weights file not found" in capsys.readouterr().err
