"""CPU tests of training (issue #3): a few steps lower the loss; checkpoints resume."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from codec.config import ZERO_START_REFINEMENTS
from codec.data import load_crop_cache, semantic_dropout_bias
from codec.train import Dist, Trainer, main, parse_args
from iwcodec.errors import InputError, ModelMismatchError, UsageError


def _write_fake_cache(directory, clips=2, frames=12, size=64):
    """Moving bright blobs on gradients: motion the keypoints can follow."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    for c in range(clips):
        out = np.zeros((frames, size, size, 3), np.uint8)
        for t in range(frames):
            cx = size / 2 + size / 6 * np.sin(t / 2 + c)
            cy = size / 2 + size / 8 * np.cos(t / 3 + c)
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (size / 4) ** 2)
            img = np.stack([blob * 255, xx / size * 200, yy / size * 150 + 50], -1)
            out[t] = (img + rng.normal(0, 2, img.shape)).clip(0, 255).astype(np.uint8)
        np.save(directory / f"clip{c}.npy", out)


@pytest.fixture()
def trainer(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    _write_fake_cache(cache)
    mc, tc = parse_args(
        [
            "--tiny",
            "--cache",
            str(cache),
            "--out",
            str(tmp_path / "run"),
            "--batch-size",
            "2",
            "--gan-start-step",
            "0",
            "--lr",
            "0.001",
            "--source-counts",
            "1,3",
        ]
    )
    return Trainer(mc, tc, Dist(), load_crop_cache(cache), None)


def test_bank_samples_in_range(trainer):
    gen = torch.Generator().manual_seed(0)
    src, drv, lm = trainer.bank.sample(3, 2, gen)
    assert src.shape == (3, 2, 3, 64, 64) and drv.shape == (3, 3, 64, 64) and lm is None
    assert 0 <= src.min() and src.max() <= 1


def test_semantic_dropout_keeps_most_keys():
    gen = torch.Generator().manual_seed(0)
    bias = semantic_dropout_bias(64, 2, 16, 1.0, gen, torch.device("cpu"))
    dropped = torch.isinf(bias).float().mean().item()
    assert bias.shape == (64, 2 * 256)
    assert 0.01 < dropped < 0.5
    assert semantic_dropout_bias(4, 1, 16, 0.0, gen, torch.device("cpu")) is None


@pytest.mark.slow
def test_a_few_steps_lower_the_loss(trainer):
    """On one fixed batch, 12 updates must bring the generator loss well down."""
    batch = trainer.sample_batch(0)

    def loss():
        with torch.no_grad():
            losses, _ = trainer.generator_losses(batch, use_gan=False)
        return sum(losses.values()).item()

    before = loss()
    for _ in range(12):
        stats = trainer.optimize(batch)
        trainer.step += 1
    after = loss()
    assert "gan" in stats and "disc" in stats  # the GAN path ran too
    assert after < 0.8 * before, (before, after)


def test_checkpoint_resume(trainer, tmp_path):
    trainer.optimize(trainer.sample_batch(0))
    trainer.step = 1
    trainer.save()
    mc, tc = trainer.mc, trainer.tc
    other = Trainer(mc, tc, Dist(), load_crop_cache(tc.cache), None)
    other.load(tmp_path / "run" / "last.pt")
    assert other.step == 1
    for a, b in zip(trainer.model.state_dict().values(), other.model.state_dict().values()):
        assert torch.equal(a, b)
    assert other.g_opt.state_dict()["state"].keys() == trainer.g_opt.state_dict()["state"].keys()


def test_export_and_continue(trainer, tmp_path):
    """A run exported in returnable shards continues elsewhere with the same weights and step."""
    from codec.train import export_run

    trainer.optimize(trainer.sample_batch(0))
    trainer.step = 5
    trainer.out.mkdir(parents=True, exist_ok=True)
    (trainer.out / "config.json").write_text(
        json.dumps({"model": trainer.mc.to_dict(), "train": {}, "world": 1})
    )
    trainer.save()
    export_run(trainer.out, tmp_path / "moved")
    files = list((tmp_path / "moved").iterdir())
    assert len(files) <= 8 and all(f.stat().st_size <= 16 * 2**20 for f in files)
    mc, tc = parse_args(
        [
            "--init-from",
            str(tmp_path / "moved"),
            "--cache",
            trainer.tc.cache,
            "--out",
            str(tmp_path / "run2"),
            "--batch-size",
            "2",
        ]
    )
    assert mc == trainer.mc
    other = Trainer(mc, tc, Dist(), load_crop_cache(tc.cache), None)
    other.load_exported(tmp_path / "moved")
    assert other.step == 5
    for a, b in zip(trainer.model.state_dict().values(), other.model.state_dict().values()):
        assert torch.equal(a, b)


def test_start_from_a_weights_file(trainer, tmp_path):
    """--init-from a weights file: the generator's weights (to float16 precision) and the
    step and best LPIPS recorded in its metadata; the discriminator starts fresh."""
    from codec.weights import save_weights

    trainer.optimize(trainer.sample_batch(0))
    path = tmp_path / "w.safetensors"
    save_weights(
        trainer.model, path, extra={"step": 7, "elapsed": 12.5, "val": {"lpips_1src": 0.2}}
    )
    mc, tc = parse_args(
        ["--init-from", str(path), "--cache", trainer.tc.cache, "--out", str(tmp_path / "r")]
    )
    assert mc == trainer.mc
    other = Trainer(mc, tc, Dist(), load_crop_cache(tc.cache), None)
    other.load_init(path)
    assert (other.step, other.elapsed, other.best_lpips) == (7, 12.5, 0.2)
    for k, v in trainer.model.state_dict().items():
        w = other.model.state_dict()[k]
        assert torch.equal(w, v.half().to(v.dtype)) if v.is_floating_point() else torch.equal(w, v)


def test_start_with_a_given_discriminator(trainer, tmp_path):
    """--init-discriminator: the discriminator of an exported run (bfloat16) beside a weights
    file; a file of other tensors is refused with a clear error."""
    from safetensors.torch import save_file

    from codec.train import save_shards
    from codec.weights import save_weights

    trainer.tc.gan_start_step = 0
    trainer.optimize(trainer.sample_batch(0))
    weights = tmp_path / "w.safetensors"
    save_weights(trainer.model, weights, extra={"step": 1})
    disc = {k: v.to(torch.bfloat16) for k, v in trainer.disc.state_dict().items()}
    (shard,) = save_shards(disc, tmp_path, "discriminator")
    args = ["--init-from", str(weights), "--init-discriminator", str(shard)]
    mc, tc = parse_args([*args, "--cache", trainer.tc.cache, "--out", str(tmp_path / "r")])
    other = Trainer(mc, tc, Dist(), load_crop_cache(tc.cache), None)
    fresh = {k: v.clone() for k, v in other.disc.state_dict().items()}
    other.load_init(weights)
    other.load_discriminator(shard)
    changed = 0
    for k, v in other.disc.state_dict().items():
        assert torch.equal(v, disc[k].float())
        changed += not torch.equal(v, fresh[k])
    assert changed > 0
    save_file({"x": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelMismatchError, match="not this discriminator"):
        other.load_discriminator(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(InputError, match="not a readable safetensors"):
        other.load_discriminator(tmp_path / "junk.safetensors")
    with pytest.raises(SystemExit):
        parse_args(["--init-discriminator", str(shard)])


@pytest.mark.parametrize("field", ZERO_START_REFINEMENTS)
def test_grow_from_weights_without(trainer, tmp_path, field):
    """--init-from FILE --model prior_warp=true (run16's recipe, from weights written before
    the prior warp; or source_warp): the file's tensors, the new layers at this run's start, so
    the grown model renders exactly as the file's; switching a refinement off is refused."""
    from safetensors.torch import save_file

    from codec.inference import reconstruct
    from codec.model import REFINEMENT_LAYERS
    from codec.weights import FORMAT, FORMAT_VERSION, load_model

    # the file as a version before the refinement wrote it (the prior warp needs the source
    # warp, so both go when the source warp does)
    before = ZERO_START_REFINEMENTS[ZERO_START_REFINEMENTS.index(field) :]
    grown_keys = tuple(prefix for r in before for prefix in REFINEMENT_LAYERS[r])
    trainer.optimize(trainer.sample_batch(0))
    state = trainer.model.state_dict()
    tensors = {k: v.half().contiguous() for k, v in state.items() if not k.startswith(grown_keys)}
    config = json.dumps(trainer.mc.to_dict() | {r: False for r in before})
    path = tmp_path / "w.safetensors"
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config}
    save_file(tensors, str(path), metadata=meta | {"extra": json.dumps({"step": 3})})
    base = ["--init-from", str(path), "--cache", trainer.tc.cache]
    mc, tc = parse_args([*base, "--model", f"{field}=true", "--out", str(tmp_path / "r")])
    assert mc == trainer.mc
    grown = Trainer(mc, tc, Dist(), load_crop_cache(tc.cache), None)
    fresh = {k: v.clone() for k, v in grown.model.state_dict().items()}
    grown.load_init(path)
    assert grown.step == 3
    for k, v in grown.model.state_dict().items():
        want = fresh[k] if k.startswith(grown_keys) else tensors[k].to(v.dtype)
        assert torch.equal(v, want), k
    clip = (torch.rand(5, mc.image_size, mc.image_size, 3) * 255).byte().numpy()
    want = reconstruct(load_model(path), clip, 2).images
    got = reconstruct(grown.model.eval(), clip, 2).images
    torch.testing.assert_close(got, want, atol=0, rtol=0)

    with pytest.raises(UsageError, match=f"always has {field}=True"):
        parse_args([*base, "--model", f"{field}=false"])
    other = Trainer(dataclasses.replace(mc, num_kp=4), tc, Dist(), load_crop_cache(tc.cache), None)
    with pytest.raises(ModelMismatchError, match="another model config"):
        other.load_init(path)


def test_model_overrides_are_checked(trainer):
    """--model: known fields take new values; an unknown field, a bad value or a config the
    model cannot take is a usage error, which the command line reports with exit status 2."""
    base = ["--tiny", "--cache", trainer.tc.cache, "--out", trainer.tc.out]
    mc, _ = parse_args([*base, "--model", "attn_dim=32,decoder_channels=16/4,prior_warp=true"])
    assert (mc.attn_dim, mc.decoder_channels) == (32, (16, 4))
    for bad in ("no_such_field=1", "attn_dim=many", "feature_stride=2", "source_patches=true"):
        with pytest.raises(UsageError, match="--model"):
            parse_args([*base, "--model", bad])


def test_main_turns_the_projects_errors_into_exit_status_2(trainer, tmp_path, capsys):
    """Library code raises the project's errors; only the command line makes them an exit
    status and a one-line message (no traceback)."""
    base = ["--tiny", "--cache", trainer.tc.cache, "--out", str(tmp_path / "r")]
    assert main([*base, "--model", "kp_offsets=true"]) == 2
    assert "iwcodec: error: --model kp_offsets=true" in capsys.readouterr().err
    assert main([*base, "--model", "image_size=128"]) == 2  # the cache holds 64 px crops
    assert "crop cache holds 64 px crops" in capsys.readouterr().err
    assert main([*base, "--init-from", str(tmp_path / "nothing")]) == 2
    assert "not an exported run or a weights file" in capsys.readouterr().err


def test_learning_rate_decays_linearly_at_the_end(trainer):
    trainer.tc.max_steps, trainer.tc.lr_decay_steps, trainer.tc.lr_final = 100, 40, 0.1
    lr = trainer.tc.lr
    rates = {}
    for step in (0, 60, 80, 100, 120):
        trainer.step = step
        rates[step] = trainer.learning_rate()
    assert rates[0] == rates[60] == lr
    assert rates[80] == pytest.approx(lr * 0.55)
    assert rates[100] == rates[120] == pytest.approx(lr * 0.1)
    stats = trainer.optimize(trainer.sample_batch(0))
    assert stats["lr"].item() == pytest.approx(lr * 0.1)
    assert all(g["lr"] == pytest.approx(lr * 0.1) for g in trainer.d_opt.param_groups)


def test_warmup_ramps_up_from_the_first_step_of_the_run(trainer):
    """--lr-warmup-steps ramps from the step the run started at (e.g. a weights file's)."""
    trainer.tc.lr_warmup_steps, trainer.tc.max_steps = 10, 1000
    lr = trainer.tc.lr
    trainer.init_step = trainer.step = 500
    assert trainer.learning_rate() == pytest.approx(lr * 0.1)
    trainer.step = 504
    assert trainer.learning_rate() == pytest.approx(lr * 0.5)
    trainer.step = 520
    assert trainer.learning_rate() == lr


def _ema_trainer(trainer, decay=0.75):
    tc = dataclasses.replace(trainer.tc, ema_decay=decay)
    return Trainer(trainer.mc, tc, Dist(), load_crop_cache(tc.cache), None)


def test_ema_averages_the_weights_and_travels_with_the_run(trainer, tmp_path):
    """--ema-decay: after each step the average moves (1 - decay) of the way to the new weights;
    the training weights are unchanged by it; checkpoints and exports keep the average."""
    import json

    from codec.train import export_run
    from codec.weights import load_model

    t = _ema_trainer(trainer)
    before = {k: v.clone() for k, v in t.model.named_parameters()}
    t.optimize(t.sample_batch(0))
    t.step = 1
    trainer.optimize(trainer.sample_batch(0))  # the same seed and step without the average
    plain = dict(trainer.model.named_parameters())
    ema = dict(t.ema.named_parameters())
    moved = 0
    for k, v in t.model.named_parameters():
        assert torch.equal(v, plain[k])
        assert torch.allclose(ema[k], before[k] + 0.25 * (v - before[k]), atol=1e-6)
        moved += not torch.equal(v, before[k])
    assert moved > 0 and not ema["decoder.out.weight"].requires_grad
    t.out.mkdir(parents=True, exist_ok=True)
    (t.out / "config.json").write_text(
        json.dumps({"model": t.mc.to_dict(), "train": {}, "world": 1})
    )
    t.save()
    resumed = _ema_trainer(trainer)
    resumed.load(t.out / "last.pt")
    for a, b in zip(t.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)
    export_run(t.out, tmp_path / "moved")
    files = list((tmp_path / "moved").iterdir())
    assert len(files) <= 8 and (tmp_path / "moved" / "ema.safetensors").exists()
    averaged = load_model(tmp_path / "moved" / "ema.safetensors").float().state_dict()
    for k, v in t.ema.state_dict().items():
        assert torch.equal(averaged[k], v.half().to(v.dtype) if v.is_floating_point() else v)
    continued = _ema_trainer(trainer)
    continued.load_init(tmp_path / "moved")
    assert continued.init_step == 1
    for k, v in continued.ema.state_dict().items():
        assert torch.equal(v, averaged[k])


def test_best_weights_are_the_validated_average(trainer):
    """With --ema-decay the run validates the average and best.safetensors holds it, not the
    raw weights."""
    from codec.weights import load_model

    tc = dataclasses.replace(
        trainer.tc,
        ema_decay=0.5,
        max_steps=2,
        val_every=1,
        val_frames_per_clip=4,
        keep_validated=True,
    )
    clips = load_crop_cache(tc.cache)
    t = Trainer(trainer.mc, tc, Dist(), clips, clips)
    t.run()
    best = load_model(t.out / "best.safetensors").float().state_dict()
    ema, raw = t.ema.state_dict(), t.model.state_dict()
    key = "decoder.out.weight"
    assert not torch.equal(best[key], raw[key].half().float())
    # --keep-validated: every validation's weights are kept, the last being the current average.
    kept = sorted(p.name for p in t.out.glob("validated-*.safetensors"))
    assert kept == ["validated-1.safetensors", "validated-2.safetensors"]
    last = load_model(t.out / "validated-2.safetensors").float().state_dict()
    assert torch.equal(last[key], ema[key].half().float())
    first = load_model(t.out / "validated-1.safetensors").float().state_dict()
    assert any(torch.equal(best[key], w[key]) for w in (first, last))


def test_warp_loss_scores_the_warped_source_and_trains_the_flow(trainer):
    """--warp-weight W: W * L1(warped source, driving) joins the generator losses, and its
    gradient reaches what makes the flow (the query U-Net and the warp pass's sharpness)."""
    args = [
        "--tiny",
        "--cache",
        trainer.tc.cache,
        "--out",
        trainer.tc.out,
        "--batch-size",
        "2",
        "--warp-weight",
        "5",
        "--model",
        "source_warp=true",  # as run6's recipe says: the model always has the source warp
    ]
    mc, tc = parse_args(args)
    assert tc.weights.warp == 5.0
    t = Trainer(mc, tc, Dist(), load_crop_cache(tc.cache), None)
    batch = t.sample_batch(0)
    losses, out = t.generator_losses(batch, use_gan=False)
    warped = out["warped_source"]
    assert warped.shape == batch.driving.shape
    expected = 5.0 * (warped.float() - batch.driving).abs().mean()
    assert torch.allclose(losses["warp"], expected)
    t.model.zero_grad()
    losses["warp"].backward()
    assert t.model.warp_log_sharpness.grad.abs() > 0
    grads = [p.grad for p in t.model.query_unet.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0
    # A model without the source warp is no longer there to ask for.
    with pytest.raises(UsageError):
        parse_args([*args[:-2], "--model", "source_warp=false,prior_warp=false"])
    # Off by default: no such loss.
    no_warp, _ = trainer.generator_losses(trainer.sample_batch(0), use_gan=False)
    assert "warp" not in no_warp


def test_hue_rotation_keeps_grey_and_is_a_rotation():
    from codec.data import hue_rotation

    r = hue_rotation(torch.tensor([0.0, 0.7, math.pi]))
    assert torch.allclose(r[0], torch.eye(3), atol=1e-6)
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-5)
    grey = torch.full((3,), 0.4)
    assert torch.allclose(r @ grey, grey.expand(3, 3), atol=1e-6)
    red = torch.tensor([1.0, 0.0, 0.0])
    assert torch.allclose(r[2] @ red, torch.tensor([-1 / 3, 2 / 3, 2 / 3]), atol=1e-5)


def test_identity_augment_recolours_and_stretches_with_the_landmarks():
    """One clip of one frame, so source and driving are the same picture: the colour change
    must be alike in all frames of an example and keep greys; the stretch must move the
    landmarks with the picture."""
    from codec.data import Clip, FrameBank, IdentityAugment

    size = 32
    yy, xx = np.mgrid[0:size, 0:size]
    frame = np.stack([xx * 8, yy * 8, np.full_like(xx, 60)], -1).clip(0, 255).astype(np.uint8)
    frame[:8] = 128  # a grey band stays grey under any hue rotation
    dot = np.array([[[0.5, 0.25]]], np.float32)  # one landmark, [-1, 1] coordinates
    clip = Clip("one", frame[None], dot)
    cpu = torch.device("cpu")
    src0, _, lm0 = FrameBank([clip], cpu, 0.0).sample(8, 1, torch.Generator().manual_seed(1))

    colour = IdentityAugment(hue=math.pi, grey=0.25)
    src, drv, _ = FrameBank([clip], cpu, 0.0, colour).sample(8, 1, torch.Generator().manual_seed(1))
    assert src.shape == src0.shape and 0 <= src.min() and src.max() <= 1
    assert torch.allclose(src[:, 0], drv, atol=1e-6)  # the same change for every frame
    assert (src - src0).abs().amax() > 0.2  # it does change the picture
    band = src[:, 0, :, :3, 4:-4]  # rows inside the grey band after any zoom and shift
    assert (band.amax(1) - band.amin(1)).amax() < 0.02  # grey stays grey

    # Stretch only, on a picture of one bright blob where the landmark is: the blob's centroid
    # in the augmented picture must be where the landmark moved to.
    x0, y0 = ((dot[0, 0] + 1) * size - 1) / 2  # pixel coordinates of the landmark
    blob = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 4.0) * 250
    clip = Clip("blob", np.repeat(blob[..., None], 3, -1).astype(np.uint8)[None], dot)
    gen = torch.Generator().manual_seed(1)
    _, _, lm0 = FrameBank([clip], cpu, 0.0).sample(8, 1, gen)
    stretch = IdentityAugment(aspect=0.3)
    src, _, lm = FrameBank([clip], cpu, 0.0, stretch).sample(8, 1, torch.Generator().manual_seed(1))
    assert (lm - lm0).abs().amax() > 0.02  # the stretch moved it (zoom, shift, flip alike)
    w = src[:, 0, 0].clamp_min(0.2) - 0.2  # (B, S, S) the blob's core
    grid = torch.arange(size, dtype=torch.float32)
    cx = (w.sum(1) * grid).sum(-1) / w.sum((1, 2))
    cy = (w.sum(2) * grid).sum(-1) / w.sum((1, 2))
    moved = ((lm[:, 0, 0] + 1) * size - 1) / 2  # (B, 2) pixels
    assert torch.allclose(torch.stack([cx, cy], -1), moved, atol=0.3), (cx, cy, moved)
    assert not IdentityAugment().active and stretch.active

    # Dim examples: darker and lower in contrast, alike in every frame of the example.
    plain, _, _ = FrameBank([clip], cpu, 0.0).sample(16, 1, torch.Generator().manual_seed(2))
    dim = IdentityAugment(dark=1.0)
    src, drv, _ = FrameBank([clip], cpu, 0.0, dim).sample(16, 1, torch.Generator().manual_seed(2))
    torch.testing.assert_close(src[:, 0], drv)
    ratio = src.mean((1, 2, 3, 4)) / plain.mean((1, 2, 3, 4))  # (B,) per example
    assert (ratio < 0.85).all() and (ratio > 0.05).all(), ratio
    assert ratio.std() > 0.02  # drawn per example


def test_codec_pairs_give_the_source_itself_and_near_frames_under_its_framing():
    """CodecPairs: identity pairs drive with source 0 itself (same frame, same framing, same
    colours); near pairs with a frame at most near_frames away under source 0's framing; the
    rest as before. The clip's frames are numbered in their pixels to see which one came."""
    from codec.data import Clip, CodecPairs, FrameBank

    size, t = 16, 40
    frames = np.zeros((t, size, size, 3), np.uint8)
    frames[:] = (np.arange(t) * 6)[:, None, None, None]  # frame i is flat grey 6 * i
    frames[:, :, : size // 2, 1] = 255  # and half green: the framing shows
    clip = Clip("numbered", frames, None)
    cpu = torch.device("cpu")

    def which(x):  # (..., 3, S, S) -> frame number read off the red channel's mean
        return x[..., 0, 4:-4, 4:-4].mean((-1, -2))

    same = FrameBank([clip], cpu, 0.08, pairs=CodecPairs(identity=1.0))
    src, drv, _ = same.sample(32, 2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(drv, src[:, 0])
    assert (src[:, 0] - src[:, 1]).abs().amax() > 0.01  # the other source is another frame

    near = FrameBank([clip], cpu, 0.08, pairs=CodecPairs(near=1.0, near_frames=3))
    src, drv, _ = near.sample(64, 1, torch.Generator().manual_seed(0))
    gap = ((which(drv) - which(src[:, 0])) * 255 / 6).abs()  # colour jitter scales both alike
    # 1..3 frames away (0 where the clip's end clamps it; the colour jitter blurs the count)
    assert (gap < 3.5 * 1.2).all() and (gap > 0.5).float().mean() > 0.8, gap
    green = drv[:, 1] - src[:, 0, 1]  # same framing: the green half did not move
    assert (
        green.abs().mean()
        < (
            src[:, 0, 1]
            - FrameBank([clip], cpu, 0.08).sample(64, 1, torch.Generator().manual_seed(0))[1][:, 1]
        )
        .abs()
        .mean()
    )

    plain = FrameBank([clip], cpu, 0.08, pairs=CodecPairs())
    assert plain.pairs is None
    with pytest.raises(ValueError):
        CodecPairs(identity=0.7, near=0.5)


def test_lowpass_and_floor_losses_and_discriminator_warmup(trainer):
    """--lowpass-weight W adds W * L1 of 8x8 block means; --floor-weight W the prediction's
    error in excess of the frozen source's; --gan-warmup-steps N trains a fresh
    discriminator alone for the run's first N steps, then its loss reaches the generator."""
    from codec.losses import floor_loss, lowpass_l1

    x = torch.rand(2, 3, 16, 16)
    assert lowpass_l1(x, x) == 0
    assert torch.isclose(lowpass_l1(x + 0.1, x), torch.tensor(0.1))
    noise = torch.randn(2, 3, 16, 16) * 0.1  # zero-mean detail: barely seen
    assert lowpass_l1(x + noise, x) < 0.3 * noise.abs().mean()

    # floor: silent where the prediction beats the frozen frame, the excess where it does not
    far = x.flip(-1)  # a frozen frame far from the target
    assert floor_loss(x + noise, x, far) == 0
    assert torch.isclose(floor_loss(x + 0.1, x, x), torch.tensor(0.1))
    half = x.clone()
    half[..., :8] += 0.2  # worse than the frozen frame (x + 0.1) on the left half only
    assert torch.isclose(floor_loss(half, x, x + 0.1), torch.tensor(0.05), atol=1e-6)
    pred = (x + 0.1).requires_grad_()
    floor_loss(pred, x, x).backward()
    assert pred.grad.abs().sum() > 0

    mc, tc = parse_args(
        [
            "--tiny",
            "--cache",
            trainer.tc.cache,
            "--out",
            trainer.tc.out,
            "--batch-size",
            "2",
            "--lowpass-weight",
            "7",
            "--floor-weight",
            "3",
            "--aug-dark",
            "0.5",
            "--gan-start-step",
            "0",
            "--gan-warmup-steps",
            "2",
        ]
    )
    t = Trainer(mc, tc, Dist(), load_crop_cache(tc.cache), None)
    stats = [t.train_step() for _ in range(3)]
    assert all("lowpass" in s and "floor" in s and "disc" in s for s in stats)
    assert t.bank.identity.dark == 0.5
    assert ["gan" in s for s in stats] == [False, False, True]


def test_lpips_loss(trainer):
    """--lpips-weight W adds W * LPIPS(alex) of the prediction against the driving frame (the
    metric the codec is scored on), and its gradient reaches the generator; off by default."""
    from codec.perceptual import LPIPS

    assert "lpips" not in trainer.generator_losses(trainer.sample_batch(0), use_gan=False)[0]
    args = ["--tiny", "--cache", trainer.tc.cache, "--out", trainer.tc.out, "--batch-size", "2"]
    mc, tc = parse_args([*args, "--lpips-weight", "4"])
    assert tc.weights.lpips == 4
    t = Trainer(mc, tc, Dist(), load_crop_cache(tc.cache), None)
    assert isinstance(t.lpips, LPIPS)
    batch = t.sample_batch(0)
    losses, out = t.generator_losses(batch, use_gan=False)
    want = 4 * t.lpips(out["prediction"].float(), batch.driving).mean()
    torch.testing.assert_close(losses["lpips"], want)
    assert losses["lpips"] > 0
    t.g_opt.zero_grad()
    losses["lpips"].backward()
    grads = [p.grad for p in t.model.decoder.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0


def test_validation_reports_the_self_reconstruction_ceiling(trainer, tmp_path):
    """Validation scores frames rebuilt from themselves (the codec's ceiling) per clip, and
    the lowest clip; with the prior warp's mask open they come back exactly."""
    from codec.inference import self_reconstruct, to_images
    from codec.model import ImplicitWarpingModel

    trainer.val_clips = load_crop_cache(trainer.tc.cache)
    trainer.lpips = _TinyLpips()
    val = trainer.validate()
    assert {"self_psnr", "self_lpips"} <= set(val["clips"]["clip0"])
    assert val["mean"]["self_psnr_min"] <= val["mean"]["self_psnr"]

    model = ImplicitWarpingModel(trainer.mc).eval()
    with torch.no_grad():
        model.decoder.prior_blend[-1].bias.fill_(1.0)
    size = trainer.mc.image_size
    clip = (torch.rand(5, size, size, 3) * 255).byte().numpy()
    want = to_images(clip[[0, 3]], torch.device("cpu"))
    torch.testing.assert_close(self_reconstruct(model, clip, np.array([0, 3])), want)


class _TinyLpips(torch.nn.Module):
    """A stand-in distance for validation plumbing tests (the real LPIPS is tested elsewhere)."""

    def forward(self, a, b):
        return (a - b).abs().mean((1, 2, 3))
