"""The fresh-process kernel benchmarks: the tuner that pins launches (benchmarks/tune.py) and
the attention benchmark's --fresh-processes summary. The choice and the statistics are checked
on made-up timings; the --smoke runs (tiny shapes, triton's interpreter on a CPU) check the
plumbing: child processes, JSON, a table the kernels can load."""

from __future__ import annotations

import json
import os
import statistics

import pytest
import torch

import benchmarks.attention as attention
import benchmarks.fresh as fresh
import benchmarks.tune as tune
import kernels.dispatch as dispatch
from iwcodec.errors import IWCodecError
from kernels import pinned

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (tests/test_kernels.py)

needs_triton = pytest.mark.skipif(
    dispatch._triton_import_problem() is not None, reason="triton is not importable here"
)


def fake_runs(times: dict[str, list[float]], shape: tune.Shape, fail: str | None = None):
    """Per-process results as time_worker writes them: candidate name -> entry."""
    n = len(next(iter(times.values())))
    runs = []
    for i in range(n):
        per = {name: {"ms": ms[i], "rel_err": 1e-6} for name, ms in times.items()}
        if fail:
            per[fail] = {"error": "OutOfResources: shared memory"}
        runs.append({shape.label: per})
    return runs


def test_the_lowest_median_over_processes_is_pinned():
    shape = tune.shapes(smoke=True)[0]
    names = [tune.cand_name(c) for c in tune.candidates(shape, smoke=True)]
    times = {
        tune.AUTOTUNE: [1.0, 3.0, 2.0],
        names[0]: [1.0, 5.0, 5.0],  # best single time, worst median
        names[1]: [2.0, 2.1, 1.9],  # lowest median
    }
    summary = tune.summarize([shape], fake_runs(times, shape, fail=names[2]), smoke=True)
    (s,) = summary
    assert s["chosen"] == names[1]
    assert s["chosen_median_ms"] == 2.0
    assert s["chosen_spread"] == pytest.approx((2.1 - 1.9) / 2.0)
    assert s["autotune_median_ms"] == 2.0 and s["autotune_spread"] == pytest.approx(1.0)
    failed = next(c for c in s["candidates"] if c["candidate"] == names[2])
    assert "OutOfResources" in failed["failed"] and "median_ms" not in failed
    rows = tune.table_rows(summary, "sm_90")
    (launch,) = pinned.parse_rows(rows).values()
    assert tune.cand_name(launch) == names[1]


def test_attention_spread_summary():
    def report(fused, best, name):
        return {
            "cases": [
                {
                    "case": {"label": "256px N=1"},
                    "methods": [
                        {"method": "fused (triton)", "family": "fused", "ms": fused},
                        {"method": name, "family": "sdpa-flash", "ms": best},
                    ],
                    "best_composition": name,
                    "ratio_fused_over_best": fused / best,
                }
            ]
        }

    reports = [report(0.10, 0.12, "a"), report(0.11, 0.13, "b"), report(0.09, 0.12, "a")]
    (s,) = attention.spread_summary(reports)
    assert s["fused_ms"]["median"] == 0.10
    assert s["fused_ms"]["spread"] == pytest.approx(0.2)
    assert s["best_composition_ms"]["values"] == [0.12, 0.13, 0.12]
    assert s["ratio_fused_over_best"]["median"] == statistics.median(
        [0.10 / 0.12, 0.11 / 0.13, 0.09 / 0.12]
    )
    assert s["goal_ratio_le_0.8"] is False and s["goal_spread_le_10pct"] is False


def test_unknown_case_label_is_refused(tmp_path):
    with pytest.raises(IWCodecError, match="unknown case"):
        attention.main(["--smoke", "--out", str(tmp_path), "--cases", "256px N=9"])


@pytest.mark.parametrize("together", [False, True])
def test_fresh_children_in_order_up_to_the_first_failure(tmp_path, together):
    """benchmarks/fresh.py with small children (``python -m json.tool IN OUT``): results in the
    given order up to the first failure; one after another (a GPU's timed children), the ones
    after a failure never start; together (the interpreter's), all of them ran."""
    (tmp_path / "in.json").write_text('{"a": 1}')
    names = ["in.json", "missing.json", "in.json"]
    argvs = [[str(tmp_path / n), str(tmp_path / f"out{i}.json")] for i, n in enumerate(names)]
    finished: list[int] = []
    runs = fresh.run_module("json.tool", argvs, together, done=finished.append)
    assert [r.returncode != 0 for r in runs] == [False, True] and finished == [0]
    assert json.loads((tmp_path / "out0.json").read_text()) == {"a": 1}
    assert (tmp_path / "out2.json").exists() == together


@pytest.mark.slow
@needs_triton
def test_tune_smoke_writes_a_loadable_table(tmp_path):
    args = ["--smoke", "--out", str(tmp_path), "--processes", "2", "--compile-workers", "1"]
    assert tune.main(args) == 0
    report = json.loads(next(tmp_path.glob("tune_*.json")).read_text())
    (shape,) = report["shapes"]
    assert shape["chosen"] is not None
    auto = next(c for c in shape["candidates"] if c["candidate"] == tune.AUTOTUNE)
    assert len(auto["ms"]) == 2  # the autotuner's choice timed in both processes
    namespace: dict = {}
    exec((tmp_path / "pinned_table.py").read_text(), namespace)
    (key,) = pinned.parse_rows(namespace["ENTRIES"])
    assert key.target == "interpreter" and key.lq == shape["shape"]["lq"]


@pytest.mark.slow
@needs_triton
def test_attention_fresh_processes_smoke(tmp_path):
    argv = ["--smoke", "--out", str(tmp_path), "--no-backward", "--cases", "smoke N=1"]
    assert attention.main([*argv, "--fresh-processes", "2"]) == 0
    result = json.loads(next(tmp_path.glob("attention_spread_*.json")).read_text())
    (case,) = result["cases"]
    assert case["case"]["label"] == "smoke N=1" and len(case["fused_ms"]["values"]) == 2
    assert result["processes"] == 2 and len(result["runs"]) == 2
