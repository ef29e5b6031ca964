"""eval/results.py, eval/operating_points.py, eval/summary.py and the keyframe-only path of
eval/run.py on inputs with known answers (no model). The metrics themselves are checked in
tests/test_metrics.py; the whole pipeline in tests/test_eval_run.py."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from bitstream import ImageCodec
from eval.metrics import Scorers
from eval.operating_points import (
    DEFAULT_TARGETS_KBPS,
    HEADLINE_POINT,
    ClassicPoint,
    KeyframeOnlyPoint,
    OurPoint,
    classic_points,
    default_plan,
    keyframe_indices,
    our_points,
    plan_from_names,
)
from eval.results import (
    ResultStore,
    json_number,
    kbps,
    load_results,
    validate_record,
)
from eval.run import JobOutput, PreparedClip, make_record, run_keyframe_only, score
from eval.summary import mean_points, rate_to_match, value_at_rate, write_summary
from iwcodec.errors import InputError
from sender.encoder import check_keyframe_indices


def _record(**over) -> dict:
    r = {
        "codec": "x264",
        "params": {"mode": "lowdelay", "target_kbps": 8.0},
        "clip": "a",
        "frames": 250,
        "fps": 25.0,
        "bytes": 1000,
        "kbps": 0.8,
        "psnr": 30.0,
        "ssim": 0.9,
        "ms_ssim": 0.95,
        "lpips": 0.2,
        "akd": 1.5,
        "key": "x264/lowdelay/8kbps",
        "family": "x264 lowdelay",
    }
    r.update(over)
    return r


# -- rates and schema ---------------------------------------------------------------------------
def test_kbps_from_known_byte_counts() -> None:
    assert kbps(1000, 250, 25.0) == pytest.approx(0.8)  # 8000 bits over 10 s
    # 30 frames at 30000/1001 fps last 1.001 s: 3003 bytes are exactly 24 kbit/s.
    assert kbps(3003, 30, float(Fraction(30000, 1001))) == pytest.approx(24.0, rel=1e-12)
    assert kbps(0, 10, 30.0) == 0.0
    with pytest.raises(InputError):
        kbps(100, 0, 25.0)
    with pytest.raises(InputError):
        kbps(100, 10, 0.0)


def test_schema_accepts_a_record_and_refuses_bad_ones() -> None:
    validate_record(_record())
    validate_record(_record(psnr=None, akd=None))  # identical clip / no face
    for bad in (
        {"kbps": 0.9},  # does not follow from bytes
        {"frames": 0},
        {"bytes": 1.5},
        {"frames": True},
        {"codec": 3},
        {"lpips": "0.2"},
    ):
        with pytest.raises(InputError):
            validate_record(_record(**bad))
    broken = _record()
    del broken["clip"]
    with pytest.raises(InputError, match="clip"):
        validate_record(broken)


def test_json_number() -> None:
    assert json_number(float("inf")) is None and json_number(float("nan")) is None
    assert json_number(np.float32(0.5)) == 0.5 and isinstance(json_number(np.int64(3)), int)
    assert json_number(None) is None


def test_store_appends_resumes_and_drops(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.add(_record(), {"lpips": np.array([0.1, 0.3])})
    store.add(_record(clip="b", codec="iwcodec", key="iwcodec/default", family="iwcodec"))
    with pytest.raises(InputError, match="already"):
        store.add(_record())
    data = json.loads((tmp_path / "results.json").read_text())
    assert [r["clip"] for r in data] == ["a", "b"]
    per_frame = np.load(tmp_path / data[0]["per_frame"])
    np.testing.assert_allclose(per_frame["lpips"], [0.1, 0.3], rtol=1e-6)

    again = ResultStore(tmp_path)
    assert again.done("x264/lowdelay/8kbps", "a") and again.done("iwcodec/default", "b")
    assert not again.done("x264/lowdelay/8kbps", "b")
    assert again.drop(lambda r: r["codec"] == "iwcodec") == 1
    assert [r["clip"] for r in load_results(tmp_path)] == ["a"]
    assert not ResultStore(tmp_path).done("iwcodec/default", "b")


def test_load_results_refuses_other_json(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text('{"codec": "x264"}')
    with pytest.raises(InputError, match="list"):
        load_results(tmp_path)
    with pytest.raises(InputError, match="no results"):
        load_results(tmp_path / "elsewhere")


# -- operating points ---------------------------------------------------------------------------
def test_keyframe_placement() -> None:
    assert keyframe_indices(270, 1) == (0,)
    assert keyframe_indices(270, 2) == (0, 135)
    for bad in ((), (1,), (0, 0), (0, 3, 2), tuple(range(17))):
        with pytest.raises(InputError):
            check_keyframe_indices(bad)
    with pytest.raises(InputError):
        keyframe_indices(1, 2)


def test_plan() -> None:
    plan = default_plan()
    keys = [p.key for p in plan]
    assert len(keys) == len(set(keys))
    kinds = [type(p) for p in plan]
    # Baselines first, then our headline point, then the classic codecs.
    assert kinds[0] is KeyframeOnlyPoint
    first_ours = kinds.index(OurPoint)
    assert plan[first_ours].name == HEADLINE_POINT
    assert kinds.index(ClassicPoint) > first_ours
    assert len(classic_points()) == 9 * len(DEFAULT_TARGETS_KBPS)
    assert {p.name for p in our_points()} >= {"default", "coarse", "kf-q50", "2kf"}
    opts = OurPoint("x", steps="coarse", keyframe_quality=50, keyframes=2).encode_options(10)
    assert (opts.xy_steps, opts.s_steps, opts.keyframe_quality) == (256, 32, 50)
    assert opts.keyframe_indices == (0, 5)
    small = plan_from_names(["2kf"], ["x264"], ["lowdelay"], [8], [75])
    assert [p.key for p in small] == [
        "keyframe-only/av1-q75-1kf",
        "keyframe-only/av1-q75-2kf",
        "x264/lowdelay/8kbps",
        "iwcodec/2kf",
    ]
    for bad in (
        lambda: our_points(["nope"]),
        lambda: classic_points(["mpeg2"]),
        lambda: ClassicPoint("vp8", "best", 8),
        lambda: OurPoint("x", steps="huge"),
        lambda: OurPoint("x", keyframe_quality=0),
    ):
        with pytest.raises(InputError):
            bad()


# -- the keyframe-only path and records ---------------------------------------------------------
def _static_clip(t: int = 6, size: int = 64) -> PreparedClip:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    frames = np.repeat(frame[None], t, axis=0)
    return PreparedClip("still", "still.mp4", "0" * 64, frames, Fraction(25), None)


def test_lossless_keyframe_of_a_still_clip_scores_perfectly() -> None:
    clip = _static_clip()
    point = KeyframeOnlyPoint(ImageCodec.PNG, 75, 1)
    out = run_keyframe_only(point, clip)
    np.testing.assert_array_equal(out.decoded, clip.frames)
    metrics = score(clip, out.decoded, Scorers.load(), "cpu")
    record, per_frame = make_record(point, clip, out, metrics, "cpu")
    validate_record(record)
    assert record["psnr"] is None and record["psnr_inf_frames"] == len(clip.frames)
    assert record["lpips"] == 0.0 and record["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert record["bytes"] == out.fields["bytes"] > 0
    assert record["kbps"] == pytest.approx(record["bytes"] * 8 / (6 / 25) / 1000)
    assert np.isinf(per_frame["psnr"]).all()
    json.dumps(record, allow_nan=False)


def test_keyframe_only_shows_each_keyframe_until_the_next() -> None:
    clip = _static_clip(t=7)
    clip.frames[4:] = 255 - clip.frames[4:]  # a cut at frame 4
    out = run_keyframe_only(KeyframeOnlyPoint(ImageCodec.PNG, 75, 2), clip)  # keyframes 0, 3
    np.testing.assert_array_equal(out.decoded[:3], clip.frames[:3])
    np.testing.assert_array_equal(out.decoded[3], clip.frames[3])
    np.testing.assert_array_equal(out.decoded[4:], np.repeat(clip.frames[3:4], 3, 0))
    assert out.fields["keyframes"] == 2 and out.fields["bytes"] == sum(out.fields["keyframe_bytes"])


def test_record_takes_bytes_from_the_job() -> None:
    clip = _static_clip()
    job = JobOutput(clip.frames, {"bytes": 1500, "decode_fps": float("inf")})
    metrics = {"psnr": 30.0, "ssim": 0.9, "ms_ssim": 0.9, "lpips": 0.1, "per_frame": {}}
    record, _ = make_record(OurPoint("default"), clip, job, metrics, "cpu")
    assert record["codec"] == "iwcodec" and record["params"]["xy_steps"] == 512
    assert record["kbps"] == pytest.approx(1500 * 8 / (6 / 25) / 1000)
    assert record["akd"] is None and record["decode_fps"] is None


# -- summary ------------------------------------------------------------------------------------
def test_rate_to_match_interpolates_in_log_rate() -> None:
    rates, lp = [2, 4, 8, 16], [0.4, 0.3, 0.2, 0.1]
    m = rate_to_match(rates, lp, 0.25, reference_kbps=2.0)
    assert m.relation == "=" and m.kbps == pytest.approx(math.sqrt(32))
    assert m.ratio == pytest.approx(math.sqrt(32) / 2)
    assert rate_to_match(rates, lp, 0.3, 1.0).kbps == pytest.approx(4.0)
    low = rate_to_match(rates, lp, 0.5, 1.0)
    assert (low.relation, low.kbps) == ("<=", 2)
    high = rate_to_match(rates, lp, 0.05, 4.0)
    assert (high.relation, high.kbps, high.ratio) == (">", 16, 4.0)
    assert rate_to_match([], [], 0.1, 1.0) is None


def test_rate_to_match_on_a_floored_curve() -> None:
    # Targets below the floor all land near 13 kbps, in no particular order of quality.
    rates, lp = [13.0, 13.5, 13.2, 20.0], [0.30, 0.31, 0.29, 0.20]
    m = rate_to_match(rates, lp, 0.25, 5.0)
    t = (0.29 - 0.25) / (0.29 - 0.20)  # from the best point at <= 13.5 kbps to 20 kbps
    assert m.kbps == pytest.approx(math.exp(math.log(13.5) + t * math.log(20 / 13.5)))


def test_value_at_rate() -> None:
    assert value_at_rate([2, 8], [0.4, 0.2], 4) == pytest.approx(0.3)
    assert value_at_rate([2, 8], [0.4, 0.2], 1.9) is None
    assert value_at_rate([2, 8], [0.4, 0.2], 9) is None


def test_plots_are_drawn_again_only_where_what_they_show_changed(tmp_path, monkeypatch):
    """A figure is drawn when its data changed, or its file shows something else, not on a
    report over unchanged results (eval/plots.py: the digest in each PNG)."""
    from matplotlib.figure import Figure

    from eval import plots

    saved: list[str] = []
    real_savefig = Figure.savefig
    monkeypatch.setattr(
        Figure,
        "savefig",
        lambda fig, path, **kw: saved.append(path.name) or real_savefig(fig, path, **kw),
    )
    no_metric = {m: None for m in ("ssim", "ms_ssim", "lpips")}  # PSNR and AKD figures only
    records = [
        _record(key=f"x264/lowdelay/{t}kbps", bytes=t * 1250, kbps=t, psnr=30.0 + t, **no_metric)
        for t in (8, 16)  # 250 frames at 25 fps
    ]
    (tmp_path / "results.json").write_text(json.dumps(records))
    names = ["rd_psnr.png", "rd_psnr_per_clip.png", "rd_akd.png", "rd_akd_per_clip.png"]
    assert [p.name for p in plots.write_plots(tmp_path)] == names and saved == names

    saved.clear()
    assert [p.name for p in plots.write_plots(tmp_path)] == names and saved == []

    records[1]["akd"] = 2.5
    (tmp_path / "results.json").write_text(json.dumps(records))
    (tmp_path / "rd_psnr.png").write_bytes((tmp_path / "rd_psnr_per_clip.png").read_bytes())
    plots.write_plots(tmp_path)
    assert saved == ["rd_psnr.png", "rd_akd.png", "rd_akd_per_clip.png"]


def test_summary_from_json_alone(tmp_path: Path) -> None:
    records = []
    for clip, scale in (("a", 1.0), ("b", 2.0)):
        for target, lp in ((2, 0.4), (8, 0.3), (32, 0.1)):
            nbytes = int(target * scale * 1000 / 8 * 10)  # 10 s at 25 fps
            records.append(
                _record(
                    clip=clip,
                    params={"mode": "best", "target_kbps": target},
                    key=f"x265/best/{target}kbps",
                    family="x265 best",
                    codec="x265",
                    bytes=nbytes,
                    kbps=kbps(nbytes, 250, 25.0),
                    lpips=lp,
                    akd=None if (clip, target) == ("b", 2) else 1.0,  # no face decoded at all
                )
            )
        nbytes = int(4 * scale * 1000 / 8 * 10)
        records.append(
            _record(
                clip=clip,
                codec="iwcodec",
                params=OurPoint("default").params,
                key="iwcodec/default",
                family="iwcodec",
                label="default",
                bytes=nbytes,
                kbps=kbps(nbytes, 250, 25.0),
                lpips=0.2,
            )
        )
    records.append(_record(clip="a", key="x264/lowdelay/99kbps", bytes=0, kbps=0.0))  # "b" missing
    (tmp_path / "results.json").write_text(json.dumps(records))
    points, incomplete = mean_points(load_results(tmp_path))
    assert incomplete == ["x264/lowdelay/99kbps"]
    by_key = {p.key: p for p in points}
    assert by_key["x265/best/2kbps"].metrics["akd"] is None  # not the mean of clip "a" alone
    assert by_key["x265/best/8kbps"].metrics["akd"] == 1.0
    ours = next(p for p in points if p.codec == "iwcodec")
    assert ours.kbps == pytest.approx(6.0) and ours.metrics["lpips"] == pytest.approx(0.2)
    paths = write_summary(tmp_path)
    assert {p.name for p in paths} == {"summary.md", "HEADLINE.md", "summary.json"}
    data = json.loads((tmp_path / "summary.json").read_text())
    # Mean curve: 2 -> 3 kbps (0.4), 8 -> 12 (0.3), 32 -> 48 (0.1); LPIPS 0.2 halfway 12..48.
    match = data["rate_ratios"]["iwcodec/default"]["x265 best"]
    assert match["relation"] == "=" and match["kbps"] == pytest.approx(24.0)
    assert match["ratio"] == pytest.approx(4.0)
    headline = (tmp_path / "HEADLINE.md").read_text()
    assert "x265 best" in headline and "4.00x" in headline
    assert "not averaged" in (tmp_path / "summary.md").read_text().lower()
