"""tools/train_throughput.py: images/s per GPU from training logs, and scaling over GPUs."""

from __future__ import annotations

import importlib
import json

import pytest

train_throughput = importlib.import_module("tools.train_throughput")


def _run(directory, world, rates):
    directory.mkdir()
    (directory / "config.json").write_text(
        json.dumps({"world": world, "train": {"batch_size": 16}, "model": {}})
    )
    lines = [{"step": 50 * (i + 1), "examples_per_s_per_gpu": r} for i, r in enumerate(rates)]
    lines.insert(3, {"step": 150, "val": {"lpips_1src": 0.1}})  # validation records are skipped
    (directory / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return directory


def test_scaling_table_from_logs(tmp_path, capsys):
    one = _run(tmp_path / "one", 1, [20.0, 90.0, 100.0, 102.0, 98.0])
    four = _run(tmp_path / "four", 4, [30.0, 80.0, 95.0, 20.0, 95.0, 96.0])
    out = tmp_path / "tp.json"
    assert train_throughput.main([str(four), str(one), "--device", "test", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["device"] == "test"
    r1, r4 = result["runs"]
    # start-up windows dropped, median of the rest (the slow window of a validation pass too)
    assert (r1["gpus"], r1["images_per_s_per_gpu"], r1["windows"]) == (1, 100.0, 3)
    assert (r4["gpus"], r4["images_per_s_per_gpu"], r4["images_per_s"]) == (4, 95.0, 380.0)
    assert r4["speedup"] == 3.8 and r4["efficiency"] == 0.95
    assert "| 4 | 95.0 | 380.0 | 3.8x | 0.95 |" in capsys.readouterr().out


def test_a_run_too_short_to_measure_is_refused(tmp_path):
    short = _run(tmp_path / "short", 1, [10.0, 20.0])
    with pytest.raises(SystemExit, match="no logging windows"):
        train_throughput.main([str(short), "--device", "test"])
