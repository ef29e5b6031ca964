"""``iwcodec weights compare`` and ``iwcodec weights average``: weighing checkpoints on a crop
cache (with the no-motion ceiling), and averaging them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _media import tiny_weights

import eval.compare_weights as compare_weights
from codec.weights import load_model, read_metadata
from eval.compare_weights import METRICS, RUNS, STEP_RUNS
from iwcodec.cli import main


def _cache(directory, rng):
    directory.mkdir()
    moving = rng.integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)
    still = np.repeat(rng.integers(0, 255, (1, 64, 64, 3), dtype=np.uint8), 5, axis=0)
    for name, frames in (("moving", moving), ("still", still)):
        np.save(directory / f"{name}.npy", frames)
        np.save(directory / f"{name}.landmarks.npy", np.zeros((len(frames), 478, 2), np.float32))
    return directory


def test_compare_two_checkpoints(tmp_path, capsys):
    cache = _cache(tmp_path / "cache", np.random.default_rng(0))
    a, b = tiny_weights(tmp_path / "a.safetensors", 1), tiny_weights(tmp_path / "b.safetensors", 2)
    out = tmp_path / "cmp.json"
    args = ["weights", "compare", str(cache), str(a), str(b), "--every", "2", "--json", str(out)]
    assert main([*args, "--device", "cpu"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| weights | 1src PSNR") and len(table) == 4
    result = json.loads(out.read_text())
    assert list(result["weights"]) == [str(a), str(b)] and result["device"] == "cpu"
    ra, rb = (result["weights"][str(p)] for p in (a, b))
    assert ra["id"] != rb["id"] and ra["mean"] != rb["mean"]
    for path, r in ((a, ra), (b, rb)):
        assert table[2 if path == a else 3].startswith(
            f"| {path} | {r['mean']['1src']['psnr']:.2f}"
        )
        assert {c: r["clips"][c]["frames"] for c in r["clips"]} == {"moving": 3, "still": 3}
        for run in RUNS:
            m = r["mean"][run]
            assert np.isfinite(m["psnr"]) and m["lpips"] > 0 and -1 <= m["ssim"] <= 1
            clips = r["clips"]
            assert m["lpips"] == pytest.approx(
                (clips["moving"][run]["lpips"] + clips["still"][run]["lpips"]) / 2
            )
        # nothing moves in "still": its one source is each frame itself, so 1src is the
        # ceiling (up to a few pixels rounded the other way: batched against one by one)
        still = r["clips"]["still"]
        for k in METRICS:
            assert still["1src"][k] == pytest.approx(still["self"][k], rel=1e-3, abs=1e-4)
        assert r["clips"]["moving"]["1src"] != r["clips"]["moving"]["self"]


def test_pick_clips(tmp_path, capsys):
    cache = _cache(tmp_path / "cache", np.random.default_rng(1))
    a = tiny_weights(tmp_path / "a.safetensors", 1)
    out = tmp_path / "cmp.json"
    compare = ["weights", "compare", str(cache), str(a), "--device", "cpu"]
    assert main([*compare, "--clips", "still", "--every", "5", "--json", str(out)]) == 0
    assert list(json.loads(out.read_text())["weights"][str(a)]["clips"]) == ["still"]
    assert str(a) in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--clips", "nobody,still"], ("no clip named nobody",)),
        (["--every", "0"], ("--every", "whole number >= 1")),
        (["--json", "cmp.txt"], ("cmp.txt", ".json")),
    ],
)
def test_compare_user_errors(tmp_path, capsys, monkeypatch, extra, words):
    monkeypatch.chdir(tmp_path)
    cache = _cache(tmp_path / "cache", np.random.default_rng(1))
    a = tiny_weights(tmp_path / "a.safetensors", 1)
    assert main(["weights", "compare", str(cache), str(a), "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("iwcodec: error:") and all(w in err for w in words), err


def test_compare_an_empty_folder_says_what_a_cache_is(tmp_path, capsys):
    a = tiny_weights(tmp_path / "a.safetensors", 1)
    assert main(["weights", "compare", str(tmp_path), str(a), "--device", "cpu"]) == 2
    assert "no crop cache in" in capsys.readouterr().err


def test_average_writes_the_mean(tmp_path, capsys):
    a, b = tiny_weights(tmp_path / "a.safetensors", 1), tiny_weights(tmp_path / "b.safetensors", 2)
    out = tmp_path / "soup.safetensors"
    assert main(["weights", "average", str(a), str(b), "-o", str(out)]) == 0
    soup, ma, mb = (load_model(p) for p in (out, a, b))
    assert f"{out}: id {soup.weights_id.hex()}" in capsys.readouterr().out
    name, tensor = next((k, v) for k, v in soup.state_dict().items() if v.is_floating_point())
    mean = (ma.state_dict()[name] + mb.state_dict()[name]) / 2
    torch.testing.assert_close(tensor, mean.half().float(), atol=1e-3, rtol=1e-3)
    assert "averaged_from" in read_metadata(out)["extra"]


def test_average_user_errors(tmp_path, capsys):
    a = tiny_weights(tmp_path / "a.safetensors", 1)
    out = tmp_path / "x.safetensors"
    assert main(["weights", "average", str(a), str(tmp_path / "missing"), "-o", str(out)]) == 2
    assert "weights file not found" in capsys.readouterr().err and not out.exists()
    # the output is one of the inputs: refused before any work, the input stays
    before = a.read_bytes()
    assert main(["weights", "average", str(a), str(a), "-o", str(a)]) == 2
    assert "is the input file" in capsys.readouterr().err and a.read_bytes() == before


def test_quantized_runs_cost_what_the_quantization_costs(tmp_path, capsys, monkeypatch):
    cache = _cache(tmp_path / "cache", np.random.default_rng(2))
    a = tiny_weights(tmp_path / "a.safetensors", 1)
    out = tmp_path / "cmp.json"
    argv = ["weights", "compare", str(cache), str(a), "--every", "2", "--device", "cpu"]
    assert main([*argv, "--quantized", "--json", str(out)]) == 0
    assert "1src-coarse PSNR" in capsys.readouterr().out
    mean = json.loads(out.read_text())["weights"][str(a)]["mean"]
    assert list(mean) == [*RUNS, *STEP_RUNS]
    assert mean["1src-coarse"]["psnr"] != mean["1src"]["psnr"]
    # with keypoints that come back as they went, each quantized run is the 1src run
    monkeypatch.setattr(compare_weights, "requantize", lambda kp, xy_steps, s_steps: kp)
    assert main([*argv, "--quantized", "--json", str(out)]) == 0
    mean = json.loads(out.read_text())["weights"][str(a)]["mean"]
    for run in STEP_RUNS:
        for k in METRICS:
            assert mean[run][k] == pytest.approx(mean["1src"][k], rel=1e-3, abs=1e-4)
