"""``iwcodec eval`` end to end on CPU with a tiny random model (64 px crops): results.json,
plots, summary, resuming, and the keyframe policy the "2kf" point uses.

The model is untrained: these tests check bytes, counts, the schema and the run's
bookkeeping, never reconstruction quality.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _media import short_clip, tiny_weights

from bitstream import KeyframeUnit, KeypointUnit, read_units
from eval import run as eval_run
from eval.results import load_results, validate_record
from iwcodec.cli import main

FRAMES = 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("eval")
    return {
        "dir": d,
        "weights": tiny_weights(d / "tiny.safetensors", seed=0),
        "clip": short_clip(d / "talk.mp4", FRAMES),
    }


def _args(setup: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "eval",
        str(setup["clip"]),
        "--out",
        str(out),
        "--weights",
        str(setup["weights"]),
        "--device",
        "cpu",
        "--points",
        "default,2kf",
        "--codecs",
        "x264",
        "--modes",
        "lowdelay",
        "--targets",
        "8,64",
        "--baseline-qualities",
        "75",
        "--quiet",
        *extra,
    ]


@pytest.fixture(scope="module")
def finished(setup: dict[str, Path]) -> Path:
    out = setup["dir"] / "results"
    assert main(_args(setup, out)) == 0
    shutil.copytree(out, setup["dir"] / "first_run")  # kept as it is: later tests change `out`
    return out


@pytest.fixture(scope="module")
def first_run(finished: Path, setup: dict[str, Path]) -> Path:
    """The folder ``finished``'s run wrote, as it wrote it (the tests that rerun into
    ``finished`` replace and add records there)."""
    return setup["dir"] / "first_run"


@pytest.mark.slow
def test_eval_writes_results_plots_and_summary(finished: Path) -> None:
    records = load_results(finished)
    keys = sorted(r["key"] for r in records)
    assert keys == [
        "iwcodec/2kf",
        "iwcodec/default",
        "keyframe-only/av1-q75-1kf",
        "keyframe-only/av1-q75-2kf",
        "x264/lowdelay/64kbps",
        "x264/lowdelay/8kbps",
    ]
    for r in records:
        validate_record(r)
        assert r["clip"] == "talk" and r["frames"] == FRAMES and r["fps"] == 25.0
        assert r["kbps"] == pytest.approx(r["bytes"] * 8 / (FRAMES / 25) / 1000)
        per_frame = np.load(finished / r["per_frame"])
        assert per_frame["lpips"].shape == (FRAMES,)
        assert abs(per_frame["lpips"].mean() - r["lpips"]) < 1e-5
    ours = {r["key"]: r for r in records if r["codec"] == "iwcodec"}
    for r in ours.values():
        stream = finished / r["stream"]
        assert r["bytes"] == stream.stat().st_size == sum(r["bytes_split"].values())
        assert r["params"]["xy_steps"] == 512 and r["decode_fps"] > 0
    units = list(read_units((finished / ours["iwcodec/2kf"]["stream"]).read_bytes()))
    keyframes = [u for u in units if isinstance(u, KeyframeUnit)]
    assert [k.frame_index for k in keyframes] == [0, FRAMES // 2]
    refs = {i: u.refs for u in units if isinstance(u, KeypointUnit) for i in u.indices}
    # the second keyframe's own frame comes from it alone (the keyframe given back); the
    # frames after it from both keyframes
    assert refs[0] == (0,) and refs[FRAMES // 2] == (1,) and refs[FRAMES // 2 + 1] == (0, 1)
    base = {r["params"]["keyframes"]: r for r in records if r["codec"] == "keyframe-only"}
    # The baseline's bytes are the keyframe image alone; our stream adds framing and keypoints.
    assert base[1]["bytes"] < ours["iwcodec/default"]["bytes_split"]["keyframes"]
    assert base[2]["bytes"] > base[1]["bytes"]

    for metric in ("psnr", "ssim", "ms_ssim", "lpips", "akd"):
        assert (finished / f"rd_{metric}.png").stat().st_size > 1000
        assert (finished / f"rd_{metric}_per_clip.png").is_file()
    summary = (finished / "summary.md").read_text()
    assert "Rate each classic setting" in summary and "x264 lowdelay" in summary
    assert "x264 lowdelay" in (finished / "HEADLINE.md").read_text()
    run = json.loads((finished / "run.json").read_text())
    machine = run["machines"][-1]
    assert machine["device"] == "cpu" and machine["torch"] == torch.__version__
    assert machine["cores"] >= 1 and machine["cpu"]
    # Machines that differ only in torch threads are told apart in the report.
    assert f"torch threads {machine['torch_threads']};" in summary
    assert run["clips"]["talk"]["frames"] == FRAMES and run["model"]["image_size"] == 64
    assert (finished / "work" / ".gitignore").read_text() == "*\n"


@pytest.mark.slow
def test_rerun_skips_done_records(finished: Path, setup, monkeypatch) -> None:
    before = (finished / "results.json").read_text()

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished job ran again")

    monkeypatch.setattr(eval_run, "_job", must_not_run)
    assert main(_args(setup, finished)) == 0
    assert (finished / "results.json").read_text() == before

    # Remove one record as an interrupted run would have left it: only that job runs again.
    records = json.loads(before)
    gone = next(r for r in records if r["key"] == "x264/lowdelay/8kbps")
    (finished / "results.json").write_text(json.dumps([r for r in records if r is not gone]))
    calls = []
    monkeypatch.setattr(
        eval_run, "_job", lambda point, *a: calls.append(point.key) or real_job(point, *a)
    )
    assert main(_args(setup, finished)) == 0
    assert calls == ["x264/lowdelay/8kbps"]
    again = {r["key"]: r for r in load_results(finished)}
    assert again["x264/lowdelay/8kbps"]["bytes"] == gone["bytes"]  # the same encode again


real_job = eval_run._job


@pytest.mark.slow
def test_other_weights_are_refused_or_replace_ours(finished: Path, setup, capsys) -> None:
    other = tiny_weights(setup["dir"] / "other.safetensors", seed=1)
    args = _args(setup, finished)
    args[args.index("--weights") + 1] = str(other)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--replace-ours" in err and "iwcodec: error:" in err
    before = {r["key"]: r for r in load_results(finished)}
    assert main([*args, "--replace-ours"]) == 0
    after = {r["key"]: r for r in load_results(finished)}
    assert after.keys() == before.keys()
    assert after["x264/lowdelay/64kbps"] == before["x264/lowdelay/64kbps"]  # kept as it was
    assert after["iwcodec/default"]["weights_id"] != before["iwcodec/default"]["weights_id"]


def test_report_only_needs_no_clips(tmp_path: Path, capsys) -> None:
    assert main(["eval", "--out", str(tmp_path), "--report-only"]) == 2
    assert "no results file" in capsys.readouterr().err
    assert main(["eval", "--out", str(tmp_path)]) == 2
    assert "no clips" in capsys.readouterr().err


def test_reconstruction_validation_scores_the_same_frames_for_every_run(setup, tmp_path):
    from eval import reconstruction

    out = tmp_path / "validation"
    argv = [str(setup["clip"]), "--weights", str(setup["weights"]), "--out", str(out)]
    assert reconstruction.main([*argv, "--every", "3", "--device", "cpu"]) == 0
    result = json.loads((out / "validation.json").read_text())
    clip = result["clips"]["talk"]
    assert clip["frames"] == FRAMES and clip["every"] == 3
    runs = clip["runs"]
    assert set(runs) == {
        "model_1src",
        "model_2src",
        "model_3src",
        "frozen_first",
        "frozen_first_middle",
    }
    assert {r["frames"] for r in runs.values()} == {len(range(0, FRAMES, 3))}
    # frame 0 is scored and is the frozen baseline's own source: one infinite-PSNR frame
    assert runs["frozen_first"]["psnr_inf_frames"] == 1
    assert runs["model_1src"]["psnr_inf_frames"] == 0
    assert set(result["mean"]) == set(runs)
    assert "One frame in 3 scored (0, 3, ...)" in (out / "validation.md").read_text()
    with pytest.raises(SystemExit):
        reconstruction.main([*argv, "--every", "0"])


@pytest.mark.slow
def test_akd_added_later_equals_akd_measured_in_the_run(setup, first_run: Path) -> None:
    """A run made with --no-akd (a GPU machine without MediaPipe) and then --add-akd gives
    our points and the keyframe-only baseline the AKD a full run (the module's first run, a
    superset of these points) measures; classic records, whose outputs are not kept, stay
    without."""
    few = ("--points", "default", "--targets", "8")
    full_dir, later_dir = first_run, setup["dir"] / "akd_later"
    assert main(_args(setup, later_dir, "--no-akd", *few)) == 0
    assert all(r["akd"] is None for r in load_results(later_dir))
    assert main([*_args(setup, later_dir), "--add-akd"]) == 0
    full = {r["key"]: r for r in load_results(full_dir)}
    later = {r["key"]: r for r in load_results(later_dir)}
    for key in ("iwcodec/default", "keyframe-only/av1-q75-1kf"):
        for field in ("akd", "akd_frames", "akd_no_face_ref", "akd_no_face_test"):
            assert later[key][field] == pytest.approx(full[key][field], abs=1e-6), (key, field)
        np.testing.assert_allclose(
            np.load(later_dir / later[key]["per_frame"])["akd"],
            np.load(full_dir / full[key]["per_frame"])["akd"],
        )
    assert later["x264/lowdelay/8kbps"]["akd"] is None
    assert full["x264/lowdelay/8kbps"]["akd"] is not None
