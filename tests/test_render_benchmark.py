"""benchmarks/render.py in --smoke mode (a tiny random model on the CPU): timings mean nothing
here; what is checked is that every part is timed and the JSON holds what docs cite."""

from __future__ import annotations

import json

import benchmarks.render as bench


def test_smoke_run_times_every_part_and_writes_json(tmp_path, capsys):
    assert bench.main(["--smoke", "--device", "cpu", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("render_*.json")
    report = json.loads(path.read_text())
    assert report["config"]["image_size"] == 64  # the tiny config's, recorded with the timings
    assert set(report["timings"]) == {"float32", "bf16"}
    for rows in report["timings"].values():
        parts = {(r["part"], r["sources"], r["batch"]) for r in rows}
        assert ("detect", None, 1) in parts and ("encode_source", 1, 1) in parts
        assert {(n, b) for p, n, b in parts if p == "render"} == {
            (n, b) for n in (1, 2, 3) for b in (1, 4)
        }
        assert all(r["ms"] > 0 for r in rows)
        for r in rows:
            if r["part"] == "render":
                assert r["ms_per_frame"] == r["ms"] / r["batch"]
    out = capsys.readouterr().out
    assert "render" in out and "frames/s" in out


def test_asking_for_a_gpu_that_is_not_there_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    assert bench.main(["--smoke", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
