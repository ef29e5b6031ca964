"""``iwcodec bench`` (eval/bench.py) and the per-stage render timing (eval/render_stages.py),
with the tiny random model on the CPU: every part runs and the report holds what
docs/performance.md cites; timings mean nothing here."""

from __future__ import annotations

import json

import pytest
import torch
from _media import tiny_weights

import kernels
from codec.weights import load_model
from eval.bench import synthetic_stream
from eval.render_stages import STAGES, Marks, instrument, stage_times
from iwcodec.cli import main


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(tiny_weights(tmp_path_factory.mktemp("bench") / "tiny.safetensors", 2))


def inputs(model, n_sources=2):
    g = torch.Generator().manual_seed(0)
    size, k = model.cfg.image_size, model.cfg.num_kp
    images = torch.rand(n_sources, 3, size, size, generator=g)
    with torch.inference_mode():
        kp_s, s_s = model.detect(images)
        src = model.encode_source(images, kp_s, s_s).regroup(1)
    kp = torch.rand(1, k, 2, generator=g) * 1.6 - 0.8
    return src, kp, torch.rand(1, k, generator=g)


def test_instrumented_render_is_the_render_and_leaves_the_model_as_it_was(model):
    src, kp, strength = inputs(model)
    with torch.inference_mode():
        plain = model.render(src, kp, strength)
        marks = Marks(torch.device("cpu"))
        with instrument(model, marks):
            marks.mark("start")
            timed = model.render(src, kp, strength)
            marks.mark("end")
        again = model.render(src, kp, strength)
    torch.testing.assert_close(timed, plain, rtol=0, atol=0)
    torch.testing.assert_close(again, plain, rtol=0, atol=0)
    assert "queries" not in vars(model) and "warp_sources" not in vars(model)
    assert kernels.warp_attention is kernels.dispatch.warp_attention
    assert not model.decoder._forward_hooks and not model.decoder._forward_pre_hooks
    labels = [label for label, _ in marks._marks]
    assert labels == [
        "start", "queries>", "attn<", "attn>", "warp<", "attn2<", "attn2>", "warp>",
        "prior<", "prior>", "dec<", "dec>", "end",
    ]  # fmt: skip


def test_stages_add_up_and_each_model_stage_is_seen(model):
    src, kp, strength = inputs(model, n_sources=1)
    with torch.inference_mode():
        per = stage_times(model, lambda: model.render(src, kp, strength), reps=3, warmup=1)
    assert set(per) == {*STAGES, "total"}
    assert per["total"] == pytest.approx(sum(v for k, v in per.items() if k != "total"))
    for stage in STAGES[:-2]:  # the model's own stages (not the caller's tail or glue)
        assert per[stage] > 0, stage


def test_synthetic_stream_decodes_to_its_frames(model):
    from bitstream import KeypointDecoder, load_prior

    stream = synthetic_stream(model, n_sources=2, frames=5)
    assert stream.refs == (0, 1) and len(stream.units) == 5
    decoder = KeypointDecoder(stream.params, load_prior())
    decoded = [f for u in stream.units for f in decoder.decode(u).frames]
    assert [f.index for f in decoded] == [0, 1, 2, 3, 4] and decoded[0].refs == (0, 1)


def test_bench_smoke_writes_the_report(tmp_path, capsys):
    argv = ["bench", "--smoke", "--device", "cpu", "--out", str(tmp_path), "--sources", "1,2"]
    assert main(argv) == 0
    report = json.loads(next(tmp_path.glob("bench_*.json")).read_text())
    env = report["environment"]
    assert env["torch"] == torch.__version__ and "git_commit" in env and "triton" in env
    assert set(report["receiver"]) == {"1 keyframe", "2 keyframes"}
    for case in report["receiver"].values():
        assert case["keypoint_decode_ms"]["median"] > 0
        assert {"eager, batch 1", "eager, batch 3"} <= set(case["end_to_end"])
        row = case["end_to_end"]["eager, batch 1"]
        assert row["frames_per_s"] == pytest.approx(
            1e3 / (row["median"] + case["keypoint_decode_ms"]["median"])
        )
        stages = case["stages"]
        assert stages["total"] == pytest.approx(sum(v for k, v in stages.items() if k != "total"))
        assert case["decoder"]["eager"]["frames"] == 12
    assert set(report["streams"]) == {"max_batch", "float32, 1 streams", "float32, 3 streams"}
    run = report["streams"]["float32, 3 streams"]["saturated"]
    assert run["frames"] == 3 * run["ticks"] and run["aggregate_frames_per_s"] > 0
    sender = report["sender"]
    if "skipped" not in sender:  # MediaPipe present
        assert sender["faces"] == sender["frames"] == 6
        assert {"face tracking", "crop", "keypoint detector", "coding"} <= set(sender["stages_ms"])
        assert sender["live"]["frames"] > 0 and sender["live"]["cpu_cores_used"] > 0
    out = capsys.readouterr().out
    assert "end to end" in out and "streams" in out and "wrote" in out


def test_unknown_part_is_a_usage_error(tmp_path, capsys):
    argv = ["bench", "--smoke", "--device", "cpu", "--out", str(tmp_path), "--parts", "gpu"]
    assert main(argv) == 2
    assert "unknown bench part" in capsys.readouterr().err


def test_the_sender_part_says_why_it_cannot_run(monkeypatch, model):
    """A bare GPU machine has no MediaPipe: the sender part is skipped with the reason."""
    import sys

    from eval.bench import BenchOptions, measure_sender

    monkeypatch.setitem(sys.modules, "mediapipe", None)
    out = measure_sender(model, BenchOptions.smoke())
    assert set(out) == {"skipped"} and "mediapipe" in out["skipped"]
