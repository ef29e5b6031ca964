"""``iwcodec entropy refit``: the detector's tracks of a crop cache (sender/tracks.py), tables
fitted and tuned on them and their rate (bitstream/refit.py)."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
from _media import tiny_weights

from bitstream import EntropyModel, Predictor, collect_statistics, fit_prior, load_prior
from bitstream.refit import Adaptation, fit_table, ideal_bits, measure_rate, read_tracks, tune
from bitstream.synthetic import synthetic_track
from codec.weights import load_model
from iwcodec.cli import main
from iwcodec.errors import InputError
from sender.tracks import cache_tracks


@pytest.fixture(scope="module")
def tracks():
    rng = np.random.default_rng(0)
    return [synthetic_track(rng, n) for n in (90, 60, 45, 30)]


def test_rate_of_a_track_against_raw_and_zstd(tracks):
    model = load_prior("xy512_s64")
    rate = measure_rate(tracks[:1], model, 512, 64)
    assert rate.raw == 240.0 and rate.frames == 90 and rate.units == 3
    assert rate.ideal < rate.stream < rate.zstd_stream < rate.raw
    assert rate.payload < rate.stream and rate.ratio == rate.stream / rate.ideal
    one = measure_rate(tracks[:1], model, 512, 64, frames_per_unit=1)
    assert one.units == 90 and one.stream > rate.stream  # framing amortizes over a unit
    # the same coder and bits as a file (fits the ideal it reports)
    bits, frames = ideal_bits(tracks[:1], model, 512, 64, Predictor.PREVIOUS)
    assert frames == 90 and bits / 8 / 90 == pytest.approx(rate.ideal)


def test_fit_uses_the_adaptation(tracks):
    adaptation = Adaptation(radius=7, prior_weight=16, limit=1 << 13)
    table = fit_table(tracks, 512, 64, Predictor.PREVIOUS, adaptation)
    assert (table.radius, table.limit) == (7, 1 << 13)
    stats = collect_statistics(tracks, 512, 64, Predictor.PREVIOUS)
    assert table.id == fit_prior(stats, **asdict(adaptation)).id


def test_tune_picks_the_fewest_held_out_bits(tracks):
    grid = [(7, 16, 1 << 13), (31, 256, 1 << 16)]
    lines = []
    best = tune(tracks, 512, 64, grid=grid, report=lines.append)
    assert len(lines) == 2 and (best.radius, best.prior_weight, best.limit) in grid
    folds = (tracks[0::2], tracks[1::2])

    def held_out_bits(radius, weight, limit) -> float:
        adaptation = Adaptation(radius=radius, prior_weight=weight, limit=limit)
        tables = [fit_table(f, 512, 64, adaptation=adaptation) for f in folds]
        return sum(
            ideal_bits(folds[1 - i], tables[i], 512, 64, Predictor.PREVIOUS)[0] for i in (0, 1)
        )

    held_out = [held_out_bits(*g) for g in grid]
    assert grid[int(np.argmin(held_out))] == (best.radius, best.prior_weight, best.limit)
    with pytest.raises(InputError, match="two training tracks"):
        tune(tracks[:1], 512, 64)


def test_read_tracks_refuses_what_is_no_track(tmp_path):
    with pytest.raises(InputError, match="no keypoint tracks"):
        read_tracks(tmp_path)
    np.save(tmp_path / "flat.npy", np.zeros((5, 10)))
    with pytest.raises(InputError, match="not a \\(T, K, 3\\) track"):
        read_tracks(tmp_path)


def _cache(directory, seed: int, clips=("a", "b"), frames: int = 12):
    directory.mkdir()
    rng = np.random.default_rng(seed)
    for name in clips:
        np.save(directory / f"{name}.npy", rng.integers(0, 255, (frames, 64, 64, 3), np.uint8))
        np.save(directory / f"{name}.landmarks.npy", np.zeros((frames, 478, 2), np.float16))
    return directory


def test_tracks_follow_the_weights(tmp_path):
    cache, out = _cache(tmp_path / "cache", 0, clips=("clip",), frames=5), tmp_path / "tracks"
    a, b = tiny_weights(tmp_path / "a.safetensors", 1), tiny_weights(tmp_path / "b.safetensors", 2)
    model_a, model_b = load_model(a), load_model(b)

    ((name, first),) = cache_tracks(cache, out, model_a)
    assert name == "clip" and first.shape == (5, 10, 3)
    assert sorted(p.name for p in out.glob("*.npy")) == ["clip.npy"]
    assert (
        np.abs(first[..., :2]).max() <= 1 and 0 <= first[..., 2].min() <= first[..., 2].max() <= 1
    )

    # same weights: a clip already done is skipped (a marker left in its place stays);
    # other weights: every clip is redone
    np.save(out / "clip.npy", np.zeros_like(first))
    assert not cache_tracks(cache, out, model_a)[0][1].any()
    redone = cache_tracks(cache, out, model_b)[0][1]
    assert redone.shape == first.shape and redone.any() and not np.array_equal(redone, first)


def test_refit_command_writes_tables_and_rates(tmp_path, capsys):
    train, val = _cache(tmp_path / "train", 0), _cache(tmp_path / "val", 1, clips=("v",))
    weights = tiny_weights(tmp_path / "w.safetensors", 1)
    out, tracks, report = tmp_path / "tables", tmp_path / "tracks", tmp_path / "refit.json"
    argv = ["entropy", "refit", str(train), "--val", str(val), "--out", str(out)]
    argv += ["--tracks", str(tracks), "--steps", "coarse,default", "--json", str(report)]
    assert main([*argv, "--weights", str(weights), "--device", "cpu", "--quiet"]) == 0
    text = capsys.readouterr().out
    result = json.loads(report.read_text())
    assert sorted(p.name for p in out.iterdir()) == ["xy256_s32.json", "xy512_s64.json"]
    assert result["train"]["frames"] == 24 and result["val"]["frames"] == 12
    train_tracks = [t for _, t in read_tracks(tracks / "train")]
    for name, xy, s in (("coarse", 256, 32), ("default", 512, 64)):
        entry = result["tables"][name]
        table = EntropyModel.load(out / f"xy{xy}_s{s}.json")
        assert entry["id"] == table.id.hex() and table.id.hex() in text
        # tuned on the training tracks the command kept, then fitted on all of them
        best = tune(train_tracks, xy, s)
        assert entry["adaptation"] == asdict(best)
        assert table.id == fit_table(train_tracks, xy, s, adaptation=best).id
        shipped, refit = entry["rate"]["shipped"], entry["rate"]["refit"]
        assert shipped["frames"] == refit["frames"] == 12 and shipped != refit
        assert f"| {name} | refit | {refit['stream']:.2f}" in text


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--steps", "medium"], ("--steps", "coarse, default, fine")),
        (["--fps", "0"], ("--fps", "frame rate")),
    ],
)
def test_refit_usage_errors(tmp_path, capsys, extra, words):
    train = _cache(tmp_path / "train", 0)
    assert main(["entropy", "refit", str(train), "--out", str(tmp_path / "t"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("iwcodec: error: entropy refit:") and all(w in err for w in words), err


def test_refit_of_a_folder_without_crops(tmp_path, capsys):
    weights = tiny_weights(tmp_path / "w.safetensors", 1)
    (tmp_path / "empty").mkdir()
    argv = ["entropy", "refit", str(tmp_path / "empty"), "--out", str(tmp_path / "t")]
    assert main([*argv, "--weights", str(weights), "--device", "cpu"]) == 2
    assert "no crop cache in" in capsys.readouterr().err and not (tmp_path / "t").exists()
