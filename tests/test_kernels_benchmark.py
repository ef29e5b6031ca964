"""The attention benchmark's plumbing in --smoke mode (tiny shapes; CPU: triton's interpreter).

Timings here mean nothing; what is checked is that every method runs or records why not, that
the fused outputs and gradients match the reference, and that the JSON has what the report needs.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

import benchmarks.attention as bench
import kernels.dispatch as dispatch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (see tests/test_kernels.py)

needs_triton = pytest.mark.skipif(
    dispatch._triton_import_problem() is not None, reason="triton is not importable here"
)


@pytest.mark.slow
@needs_triton
def test_smoke_run_writes_complete_json(tmp_path, capsys):
    assert bench.main(["--smoke", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("attention_*.json")
    report = json.loads(path.read_text())
    assert report["mode"] == "smoke"
    assert report["environment"]["torch"] == torch.__version__
    assert report["matmul_peak"]["tflops"] > 0
    assert [c["case"]["label"] for c in report["cases"]] == [c.label for c in bench.SMOKE_CASES]
    for case in report["cases"]:
        methods = {m["method"]: m for m in case["methods"]}
        assert len(methods) == len(bench.forward_methods())
        fused = methods["fused (triton)"]
        assert fused["valid"] and max(fused["rel_err"].values()) < 1.5e-2 and fused["ms"] > 0
        for m in methods.values():  # each method ran, or says why it did not
            assert ("ms" in m) != bool(m.get("error") or m.get("skipped")), m
        assert methods["matmul + softmax"]["valid"]
        assert case["best_composition"] in methods and case["ratio_fused_over_best"] > 0
        grads = case["fwdbwd"]["fused_grad_rel_err"]
        assert set(grads) == {"dq", "dk", "dv", "dp"} and max(grads.values()) < 3e-2
        assert case["fwdbwd"]["reference"]["ms"] > 0
    assert set(report["goals"]) == {c.label for c in bench.SMOKE_CASES}
    assert "fused/best" in capsys.readouterr().out


@pytest.mark.slow
@needs_triton
def test_smoke_check_passes(tmp_path):
    assert bench.main(["--smoke", "--check", "--out", str(tmp_path)]) == 0
    report = json.loads(next(tmp_path.glob("attention_check_*.json")).read_text())
    assert report["results"] and all(r["ok"] for r in report["results"])


def test_flop_count_and_cases():
    case = bench.Case("x", lq=4096, per_src=4096, n_src=1)
    assert case.lk == 4496
    assert case.flops_fwd == 2 * 4096 * 4496 * (128 + 128 + 128 + 3)
    labels = {c.label for c in bench.FULL_CASES}
    assert {"256px N=1", "256px N=3", "512px N=1", "512px N=3", "512px N=1 D=256"} <= labels


def test_needs_smoke_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert bench.main(["--out", str(tmp_path)]) == 2


def test_device_slug():
    assert bench.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
