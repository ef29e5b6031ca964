"""CPU tests of the implicit-warping model (issue #3): shapes, ranges, equivariance, weights."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from _media import tiny_weights

from codec.config import ModelConfig, tiny_config
from codec.keypoints import coordinate_grid, keypoint_maps
from codec.losses import RandomWarp, equivariance_loss, keypoint_spread, separation_loss
from codec.model import ImplicitWarpingModel, SourceFeatures, count_parameters
from codec.weights import average_weights, load_model, read_metadata, save_weights, weights_id
from iwcodec.errors import ModelMismatchError


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return ImplicitWarpingModel(tiny_config()).eval()


@pytest.mark.parametrize("n_src", [1, 3])
def test_forward_shapes(tiny, n_src):
    cfg = tiny.cfg
    b, s = 2, cfg.image_size
    with torch.no_grad():
        out = tiny(torch.rand(b, n_src, 3, s, s), torch.rand(b, 3, s, s))
    assert out["prediction"].shape == (b, 3, s, s)
    assert out["kp_driving"].shape == (b, cfg.num_kp, 2)
    assert out["kp_source"].shape == (b, n_src, cfg.num_kp, 2)
    assert out["strength_source"].shape == (b, n_src, cfg.num_kp)
    assert 0 <= out["prediction"].min() and out["prediction"].max() <= 1


def test_keypoints_and_strengths_in_range(tiny):
    # Extreme inputs included: all black, all white, noise.
    s = tiny.cfg.image_size
    images = torch.cat(
        [torch.zeros(1, 3, s, s), torch.ones(1, 3, s, s), torch.rand(2, 3, s, s) * 10 - 5]
    )
    with torch.no_grad():
        kp, strength = tiny.detect(images)
    assert kp.shape == (4, tiny.cfg.num_kp, 2)
    assert kp.abs().max() <= 1.0
    assert strength.min() >= 0 and strength.max() <= 1
    assert torch.isfinite(kp).all() and torch.isfinite(strength).all()


def test_render_matches_forward(tiny):
    """The receiver's path (source features cached, then keypoints only) equals training's."""
    s = tiny.cfg.image_size
    src, drv = torch.rand(1, 2, 3, s, s), torch.rand(1, 3, s, s)
    with torch.no_grad():
        out = tiny(src, drv)
        kp, st = tiny.detect(src[0])
        feats = [
            tiny.encode_source(src[0, i : i + 1], kp[i : i + 1], st[i : i + 1]) for i in range(2)
        ]
        cache = SourceFeatures.concat(feats)
        kp_d, s_d = tiny.detect(drv)
        pred = tiny.render(cache, kp_d, s_d)
    torch.testing.assert_close(pred, out["prediction"], atol=1e-5, rtol=1e-4)


def test_key_bias_drops_keys(tiny):
    """Dropping every source key leaves only the learned extras: output no longer depends on
    the source image."""
    s, f = tiny.cfg.image_size, tiny.cfg.feature_size
    drv = torch.rand(1, 3, s, s)
    bias = torch.full((1, f * f), float("-inf"))
    with torch.no_grad():
        a = tiny(torch.rand(1, 1, 3, s, s), drv, key_bias=bias)["prediction"]
        b = tiny(torch.rand(1, 1, 3, s, s), drv, key_bias=bias)["prediction"]
        c = tiny(torch.rand(1, 1, 3, s, s), drv)["prediction"]
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-4


def test_keypoint_maps_peak_and_strength():
    kp = torch.tensor([[[0.0, 0.0], [0.5, -0.5]]])
    maps = keypoint_maps(kp, torch.tensor([[1.0, 0.25]]), 16, 0.01)
    assert maps.shape == (1, 2, 16, 16)
    grid = coordinate_grid(16, 16)
    peak = grid.view(-1, 2)[maps[0, 1].flatten().argmax()]
    assert (peak - torch.tensor([0.5, -0.5])).abs().max() <= 1 / 16 + 1e-6  # nearest pixel centre
    assert maps[0, 1].max() <= 0.25 + 1e-6


def test_equivariance_zero_for_identity_warp():
    warp = RandomWarp.identity(3)
    kp = torch.rand(3, 20, 2) * 2 - 1
    assert equivariance_loss(kp, kp, warp).item() == pytest.approx(0.0, abs=1e-6)
    img = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(warp.warp_image(img), img, atol=1e-5, rtol=0)


def test_equivariance_detects_a_real_warp():
    g = torch.Generator().manual_seed(1)
    warp = RandomWarp(2, sigma_affine=0.1, sigma_tps=0.01, generator=g)
    kp = torch.rand(2, 20, 2) * 1.6 - 0.8
    assert equivariance_loss(kp, kp, warp).item() > 1e-3
    # A point detected at p in Y sits at T(p) in X: a consistent pair has zero loss.
    assert equivariance_loss(warp.warp_coordinates(kp), kp, warp).item() < 1e-6


def test_warp_image_moves_content_where_coordinates_say():
    """Y(z) = X(T(z)): a bright dot at T(p) in X appears at p in Y."""
    warp = RandomWarp(1, sigma_affine=0.0, sigma_tps=0.0)
    warp.theta[0, :, 2] = torch.tensor([0.25, 0.0])  # T(z) = z + (0.25, 0)
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 16, 20] = 1.0  # at x = (2*20+1)/32-1 = 0.28
    y = warp.warp_image(x)
    col = y[0, 0, 16].argmax().item()
    assert col == 16  # 0.28 - 0.25 = 0.03 -> pixel 16


def test_separation_and_spread():
    spread_out = torch.rand(4, 20, 2) * 1.6 - 0.8
    collapsed = torch.randn(4, 20, 2) * 0.01
    assert keypoint_spread(spread_out) > 0.3 > 0.05 > keypoint_spread(collapsed)
    assert separation_loss(collapsed, 0.05) > 0.9 > 0.2 > separation_loss(spread_out, 0.05)


def test_default_config_budget():
    """Small enough to travel and for real time: <= 8M parameters (issue #3)."""
    with torch.device("meta"):
        m = ImplicitWarpingModel(ModelConfig())
    assert count_parameters(m) <= 8_000_000


def test_weights_round_trip(tmp_path, tiny):
    path = tmp_path / "w.safetensors"
    wid = save_weights(tiny, path, dtype=torch.float32)
    assert wid == weights_id(path) and len(wid) == 8
    m = load_model(path)
    assert m.weights_id == wid
    for (k, a), (_, b) in zip(tiny.state_dict().items(), m.state_dict().items()):
        assert torch.equal(a, b), k


def test_weights_refused_when_not_matching(tmp_path, tiny):
    path = tmp_path / "w.safetensors"
    save_weights(tiny, path)
    with pytest.raises(ModelMismatchError, match="another model config"):
        load_model(path, expected_config=dataclasses.replace(tiny.cfg, num_kp=12))
    # Tensors that disagree with the config stored beside them.
    from safetensors.torch import load_file, save_file

    from codec.weights import read_metadata

    tensors = load_file(str(path))
    tensors["decoder.out.weight"] = torch.zeros(3, 5, 7, 7)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=read_metadata(path))
    with pytest.raises(ModelMismatchError, match="do not match"):
        load_model(bad)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelMismatchError):
        load_model(junk)
    with pytest.raises(ModelMismatchError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other), metadata={"format": "something-else"})
    with pytest.raises(ModelMismatchError, match="not an iwcodec weights file"):
        load_model(other)


def test_average_weights_is_the_mean_of_its_parts(tmp_path):
    paths = [tiny_weights(tmp_path / f"w{seed}.safetensors", seed) for seed in (1, 2, 3)]
    parts = [load_model(p).state_dict() for p in paths]
    soup = tmp_path / "soup.safetensors"
    wid = average_weights(paths, soup)
    got = load_model(soup)
    assert got.weights_id == wid
    for k, v in got.state_dict().items():
        mean = sum(s[k] for s in parts) / 3
        assert torch.allclose(v, mean, rtol=1e-3, atol=1e-4), k
        if v.is_floating_point() and not torch.equal(parts[0][k], parts[1][k]):
            assert not torch.equal(v, parts[0][k]), k
    extra = json.loads(read_metadata(soup)["extra"])["averaged_from"]
    assert [e["file"] for e in extra] == [p.name for p in paths]
    assert [e["id"] for e in extra] == [weights_id(p).hex() for p in paths]
    # One file averaged with itself gives its own tensors back, bit for bit.
    alone = tmp_path / "alone.safetensors"
    average_weights([paths[0], paths[0]], alone)
    for (k, a), (_, b) in zip(parts[0].items(), load_model(alone).state_dict().items()):
        assert torch.equal(a, b), k


def test_average_weights_refuses_other_configs(tmp_path, tiny):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_weights(tiny, a)
    save_weights(ImplicitWarpingModel(dataclasses.replace(tiny.cfg, num_kp=12)), b)
    with pytest.raises(ModelMismatchError, match="another model config"):
        average_weights([a, b], tmp_path / "soup.safetensors")
    assert not (tmp_path / "soup.safetensors").exists()


def _masks_learn(model: ImplicitWarpingModel) -> None:
    """Forward with 1 and 3 sources; both masks' zero-started last convolutions get a
    gradient (with the masks at zero, only through their own output: they can open)."""
    s = model.cfg.image_size
    for n_src in (1, 3):
        out = model(torch.rand(2, n_src, 3, s, s), torch.rand(2, 3, s, s))
        assert out["prediction"].shape == (2, 3, s, s)
        assert out["warped_source"].shape == (2, 3, s, s)
    out["prediction"].mean().backward()
    for stage in (model.decoder.blend, model.decoder.prior_blend):
        assert not stage[-1].weight.detach().any()  # still at their start
        assert stage[-1].weight.grad.abs().sum() > 0


def test_source_warp_blends_in_the_source_sampled_at_the_attention_flow(monkeypatch):
    """The source warp: a second, sharpened attention pass averages the source tokens'
    positions into a flow, with which the full-resolution source is sampled. Under an identity
    attention that flow is the identity, so with the blend mask forced to 1 the output is the
    source itself, pixel for pixel. The mask starts at 0 but learns, and through it the flow's
    sharpness and the keys get a gradient. (That weights from before the mask render as they
    did: test_weights_from_before_a_refinement_load_with_it_at_its_start.)"""
    torch.manual_seed(0)
    model = ImplicitWarpingModel(tiny_config())
    _masks_learn(model)
    s, n_tok = model.cfg.image_size, model.cfg.feature_size**2

    # Mask 1 everywhere: the sharpness and the keys now reach the output through the flow.
    with torch.no_grad():
        model.decoder.blend[-1].bias.fill_(1.0)
    model.zero_grad()
    image = torch.rand(1, 3, s, s)
    kp, st = model.detect(image)
    model.render(model.encode_source(image, kp, st), kp.detach(), st.detach()).mean().backward()
    assert model.warp_log_sharpness.grad.abs() > 0
    assert model.key_proj.weight.grad.abs().sum() > 0

    def identity_attention(q, k, v, p, key_bias=None, backend="auto"):
        return v[:, :n_tok], k[:, :n_tok], p[:, :n_tok]  # query i takes key i of source 0

    monkeypatch.setattr("kernels.warp_attention", identity_attention)
    with torch.no_grad():
        kp, st = model.detect(image)
        src = model.encode_source(image, kp, st)
        torch.testing.assert_close(model.render(src, kp, st), image)


def test_prior_warp_gives_the_keyframe_back_when_nothing_moved():
    """The prior warp: the source nearest in pose, warped by the keypoints' own motion. With
    the driving keypoints equal to a source's, that motion is exactly zero and the warp is the
    source itself, pixel for pixel; with the prior mask forced to 1 the output is the keyframe.
    The mask starts at 0 (renders as without it) and gets a gradient; with motion, the
    gradient reaches the driving keypoints through the warp."""
    torch.manual_seed(0)
    cfg = tiny_config()
    model = ImplicitWarpingModel(cfg).eval()
    s = cfg.image_size
    a, b = torch.rand(1, 3, s, s), torch.rand(1, 3, s, s)
    with torch.no_grad():
        kp, st = model.detect(torch.cat([a, b]))
        two = model.encode_source(torch.cat([a, b]), kp, st).regroup(1)  # one set: a, b
        for i, image in enumerate((a, b)):
            prior = model.prior_warp(two, kp[i : i + 1], st[i : i + 1])
            torch.testing.assert_close(prior[:, :3], image * 2 - 1)  # the nearest: itself
            assert (prior[:, 3] == -1).all()  # no motion anywhere
        flow = model.prior_flow(two.kp, two.strength, kp[:1] + 0.1, st[:1])
        assert flow.shape == (1, 2, cfg.feature_size**2, 2) and flow.abs().amax() > 0.01
        without = model.render(two, kp[:1], st[:1])
        model.decoder.prior_blend[-1].bias.fill_(1.0)
        torch.testing.assert_close(model.render(two, kp[:1], st[:1]), a)
        model.decoder.prior_blend[-1].bias.zero_()
        torch.testing.assert_close(model.render(two, kp[:1], st[:1]), without)

    model.train()
    with torch.no_grad():
        model.decoder.prior_blend[-1].bias.fill_(1.0)
    kp_d = (kp[:1] + 0.05 * torch.randn_like(kp[:1])).requires_grad_(True)
    model.render(two, kp_d, st[:1].clone()).mean().backward()
    assert kp_d.grad.abs().sum() > 0
    assert model.decoder.prior_blend[-1].weight.grad.abs().sum() > 0


def test_the_default_config_is_the_shipped_model():
    """ModelConfig() is the config stored in the shipped weights, and the switches earlier
    versions had are fixed at the shipped weights' values."""
    from codec.config import RETIRED_SWITCHES
    from codec.weights import DEFAULT_WEIGHTS, read_config

    stored = json.loads(read_metadata(DEFAULT_WEIGHTS)["config"])
    assert read_config(DEFAULT_WEIGHTS) == (ModelConfig(), ())
    assert {k: stored[k] for k in RETIRED_SWITCHES} == RETIRED_SWITCHES
    assert not set(RETIRED_SWITCHES) & set(ModelConfig().to_dict())


def test_saved_weights_read_as_having_every_refinement(tmp_path, tiny):
    """A weights file written now names the retired switches, so it is not read as predating
    the zero-start refinements (run20's and run21's files, written without them, were)."""
    from codec.weights import read_config, save_weights

    path = tmp_path / "w.safetensors"
    save_weights(tiny, path)
    assert read_config(path) == (tiny.cfg, ())


def _weights_from_before(model, path, refinements, off: bool) -> None:
    """``model``'s weights as a version before ``refinements`` wrote them: without those
    layers, and their switches off (``off``) or not named at all (older still)."""
    from safetensors.torch import save_file

    from codec.model import REFINEMENT_LAYERS
    from codec.weights import FORMAT, FORMAT_VERSION

    grown = tuple(prefix for r in refinements for prefix in REFINEMENT_LAYERS[r])
    tensors = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith(grown)}
    config = model.cfg.to_dict() | ({r: False for r in refinements} if off else {})
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": json.dumps(config)}
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize(
    "refinements, off",
    [(("prior_warp",), True), (("prior_warp",), False), (("source_warp", "prior_warp"), False)],
)
def test_weights_from_before_a_refinement_load_with_it_at_its_start(
    tmp_path, tiny, refinements, off
):
    """Weights written before a zero-start refinement (run16 grew the prior warp from such a
    file) load with its layers at their start and render exactly as with those layers."""
    path = tmp_path / "old.safetensors"
    _weights_from_before(tiny, path, refinements, off)
    old = load_model(path)
    assert old.cfg == tiny.cfg
    s = tiny.cfg.image_size
    src, drv = torch.rand(1, 2, 3, s, s), torch.rand(2, 3, s, s)
    with torch.no_grad():
        want = tiny(src.expand(2, -1, -1, -1, -1), drv)["prediction"]
        got = old(src.expand(2, -1, -1, -1, -1), drv)["prediction"]
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    # a file that lacks other tensors is refused, from before or not
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    del tensors["decoder.out.weight"]
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=read_metadata(path))
    with pytest.raises(ModelMismatchError, match="missing"):
        load_model(tmp_path / "bad.safetensors")


@pytest.mark.parametrize(
    "switch, value",
    [
        ("source_patches", True),
        ("residual_query", True),
        ("kp_offsets", True),
        ("motion_prior", False),
    ],
)
def test_weights_with_a_retired_variant_are_refused(tmp_path, tiny, switch, value):
    """A weights file of a variant the model no longer has (run4's source patches) is refused
    with the switch named; the same switch at the value the model has loads."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in tiny.state_dict().items()}
    for v, ok in ((value, False), (not value, True)):
        config = json.dumps(tiny.cfg.to_dict() | {switch: v})
        meta = {"format": "iwcodec-weights", "format_version": "1", "config": config}
        path = tmp_path / f"{switch}-{v}.safetensors"
        save_file(tensors, str(path), metadata=meta)
        if ok:
            assert load_model(path).cfg == tiny.cfg
        else:
            with pytest.raises(ModelMismatchError, match=switch):
                load_model(path)
