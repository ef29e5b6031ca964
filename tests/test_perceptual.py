"""LPIPS and the VGG16 training loss: properties, loading checks, training-time behaviour."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from codec.perceptual import (
    LPIPS,
    WEIGHT_FILES,
    WEIGHTS_DIR,
    AlexNetFeatures,
    PerceptualLoss,
    PerceptualLossConfig,
    VGG16Features,
)
from iwcodec.errors import InputError, ModelMismatchError


@pytest.fixture(scope="module")
def alex() -> LPIPS:
    return LPIPS("alex")


def _pair(b: int = 2, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, size, size, generator=g) * 2 - 1
    y = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    return x, y


def test_identical_is_zero_and_shape(alex: LPIPS) -> None:
    x, _ = _pair(3)
    d = alex(x, x)
    assert d.shape == (3,)
    assert torch.all(d == 0)


def test_symmetric_and_positive(alex: LPIPS) -> None:
    x, y = _pair()
    d_xy, d_yx = alex(x, y), alex(y, x)
    assert torch.all(d_xy > 0)
    torch.testing.assert_close(d_xy, d_yx, rtol=0, atol=1e-6)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_grows_with_noise(net: str, alex: LPIPS) -> None:
    m = alex if net == "alex" else LPIPS("vgg")
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 48, 48, generator=g) * 2 - 1
    n = torch.randn(x.shape, generator=g)
    d = [m(x, (x + s * n).clamp(-1, 1)).mean().item() for s in (0.02, 0.1, 0.3, 0.8)]
    assert d == sorted(d) and d[0] > 0, d


def test_input_range_declared(alex: LPIPS) -> None:
    x, y = _pair()
    zero_one = LPIPS("alex", inputs="[0,1]")
    torch.testing.assert_close(zero_one((x + 1) / 2, (y + 1) / 2), alex(x, y), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        LPIPS("alex", inputs="0..255")


def test_feature_shapes() -> None:
    x = torch.zeros(1, 3, 256, 256)
    with torch.device("meta"):
        a, v = AlexNetFeatures(), VGG16Features()
        fa, fv = a(x.to("meta")), v(x.to("meta"))
    assert [tuple(f.shape[1:]) for f in fa] == [
        (64, 63, 63), (192, 31, 31), (384, 15, 15), (256, 15, 15), (256, 15, 15)
    ]  # fmt: skip
    assert [tuple(f.shape[1:]) for f in fv] == [
        (64, 256, 256), (128, 128, 128), (256, 64, 64), (512, 32, 32), (512, 16, 16)
    ]  # fmt: skip


def test_bad_inputs(alex: LPIPS) -> None:
    x, y = _pair()
    with pytest.raises(InputError):
        alex(x, y[:1])
    with pytest.raises(InputError):
        alex(x[:, :1], y[:, :1])
    with pytest.raises(InputError):
        alex(x[..., :20, :20], y[..., :20, :20])


def test_frozen(alex: LPIPS) -> None:
    assert not any(p.requires_grad for p in alex.parameters())
    parent = torch.nn.Sequential(alex)
    parent.train()
    assert not alex.training


# --- loading refuses wrong files ---------------------------------------------------------


@pytest.fixture()
def alex_dir(tmp_path: Path) -> Path:
    shutil.copy(WEIGHTS_DIR / WEIGHT_FILES["alex"][0], tmp_path)
    return tmp_path


def _rewrite(path: Path, edit) -> None:
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def test_copy_loads(alex_dir: Path) -> None:
    LPIPS("alex", weights_dir=alex_dir)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelMismatchError, match="missing"):
        LPIPS("alex", weights_dir=tmp_path)


def test_not_safetensors(alex_dir: Path) -> None:
    (alex_dir / WEIGHT_FILES["alex"][0]).write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(ModelMismatchError, match="readable"):
        LPIPS("alex", weights_dir=alex_dir)


def test_truncated_file(alex_dir: Path) -> None:
    p = alex_dir / WEIGHT_FILES["alex"][0]
    p.write_bytes(p.read_bytes()[:-1000])
    with pytest.raises(ModelMismatchError):
        LPIPS("alex", weights_dir=alex_dir)


def test_wrong_shape(alex_dir: Path) -> None:
    def edit(t: dict) -> None:
        t["features.conv2.weight"] = t["features.conv2.weight"][:, :32].contiguous()

    _rewrite(alex_dir / WEIGHT_FILES["alex"][0], edit)
    with pytest.raises(ModelMismatchError, match="features.conv2.weight"):
        LPIPS("alex", weights_dir=alex_dir)


def test_missing_tensor(alex_dir: Path) -> None:
    _rewrite(alex_dir / WEIGHT_FILES["alex"][0], lambda t: t.pop("lins.3.weight"))
    with pytest.raises(ModelMismatchError, match="lins.3.weight"):
        LPIPS("alex", weights_dir=alex_dir)


def test_changed_values(alex_dir: Path) -> None:
    def edit(t: dict) -> None:
        t["lins.0.weight"] = t["lins.0.weight"] * 1.001

    _rewrite(alex_dir / WEIGHT_FILES["alex"][0], edit)
    with pytest.raises(ModelMismatchError, match="other numbers"):
        LPIPS("alex", weights_dir=alex_dir)


def test_vgg_shard_missing(tmp_path: Path) -> None:
    shutil.copy(WEIGHTS_DIR / WEIGHT_FILES["vgg"][0], tmp_path)
    with pytest.raises(ModelMismatchError, match=WEIGHT_FILES["vgg"][1]):
        PerceptualLoss(weights_dir=tmp_path)


def test_weight_files_under_16_mib() -> None:
    for name in (*WEIGHT_FILES["alex"], *WEIGHT_FILES["vgg"]):
        assert (WEIGHTS_DIR / name).stat().st_size < 16 * 2**20, name


# --- the training loss ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_loss() -> PerceptualLoss:
    # Two pyramid levels keep CPU tests quick; the default is four.
    return PerceptualLoss(PerceptualLossConfig(n_scales=2))


def test_loss_zero_for_identical_and_grads_to_pred_only(small_loss: PerceptualLoss) -> None:
    g = torch.Generator().manual_seed(2)
    target = torch.rand(1, 3, 32, 32, generator=g)
    assert small_loss(target, target).item() == 0.0
    pred = (target + 0.1 * torch.randn(target.shape, generator=g)).requires_grad_(True)
    loss = small_loss(pred, target)
    assert loss.ndim == 0 and loss.item() > 0
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in small_loss.parameters())


def test_loss_layer_weights_and_truncation() -> None:
    only_first = PerceptualLoss(PerceptualLossConfig(n_scales=1, layer_weights=(1, 0, 0, 0, 0)))
    assert only_first.features.n_taps == 1
    assert sum(1 for _ in only_first.features.children()) == 2  # conv1_1, conv1_2
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(1, 3, 32, 32, generator=g), torch.rand(1, 3, 32, 32, generator=g)
    # Equals the hand-computed L1 of relu1_2 features.
    s = only_first.scaling
    ref = (only_first.features(s(a))[0] - only_first.features(s(b))[0]).abs().mean()
    torch.testing.assert_close(only_first(a, b), ref)
    with pytest.raises(ValueError):
        PerceptualLoss(PerceptualLossConfig(layer_weights=(0, 0, 0, 0, 0)))
    with pytest.raises(ValueError):
        PerceptualLoss(PerceptualLossConfig(layer_weights=(1, 1, 1)))


def test_loss_pyramid_adds_levels() -> None:
    cfg1 = PerceptualLossConfig(n_scales=1, layer_weights=(1, 1, 0, 0, 0))
    cfg2 = PerceptualLossConfig(n_scales=2, layer_weights=(1, 1, 0, 0, 0))
    one, two = PerceptualLoss(cfg1), PerceptualLoss(cfg2)
    g = torch.Generator().manual_seed(4)
    a, b = torch.rand(1, 3, 32, 32, generator=g), torch.rand(1, 3, 32, 32, generator=g)
    half = one(torch.nn.functional.avg_pool2d(a, 2), torch.nn.functional.avg_pool2d(b, 2))
    torch.testing.assert_close(two(a, b), one(a, b) + half)
    assert two.min_size == 32
    with pytest.raises(InputError):
        two(a[..., :24, :24], b[..., :24, :24])


def test_loss_bf16_autocast() -> None:
    # bf16 convolutions are slow on CPU: three taps, one level.
    loss_fn = PerceptualLoss(PerceptualLossConfig(n_scales=1, layer_weights=(1, 1, 1, 0, 0)))
    g = torch.Generator().manual_seed(5)
    target = torch.rand(1, 3, 32, 32, generator=g)
    pred = (target + 0.1 * torch.randn(target.shape, generator=g)).requires_grad_(True)
    ref = loss_fn(pred, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(pred, target)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert abs(loss.item() - ref.item()) < 0.05 * ref.item()


def test_loss_stays_frozen_in_train_mode(small_loss: PerceptualLoss) -> None:
    small_loss.train()
    assert not small_loss.training and not small_loss.features.training


def test_loss_inside_ddp(tmp_path: Path) -> None:
    import torch.distributed as dist

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.loss = PerceptualLoss(
                PerceptualLossConfig(n_scales=1, layer_weights=(1, 1, 0, 0, 0))
            )

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.loss(self.head(x), y)

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = torch.nn.parallel.DistributedDataParallel(Model())
        model.train()
        g = torch.Generator().manual_seed(6)
        x, y = torch.rand(1, 3, 32, 32, generator=g), torch.rand(1, 3, 32, 32, generator=g)
        model(x, y).backward()
        assert model.module.head.weight.grad.abs().sum() > 0
        assert not model.module.loss.training
    finally:
        dist.destroy_process_group()


def _dists_images() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three 64x64 images in [0, 1]: a smooth pattern, it with noise, and noise."""
    import numpy as np

    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    a = np.stack([xx, yy, 0.5 + 0.3 * np.sin(6 * xx)])
    b = np.clip(a + rng.normal(0, 0.08, a.shape), 0, 1)
    c = rng.random(a.shape)
    return tuple(torch.from_numpy(v).float()[None] for v in (a, b, c))


def test_dists_matches_reference_scores() -> None:
    """Scores pinned from DISTS_pytorch 0.1 itself (its own code, its weights.pt, this
    repository's VGG16 weights) on the same three images; ours must agree to 1e-5."""
    from codec.perceptual import DISTS

    dists = DISTS()
    a, b, c = _dists_images()
    got = dists(torch.cat([a, a, b]), torch.cat([b, c, c]))
    want = torch.tensor([0.2865266799926758, 0.4888891577720642, 0.42375439405441284])
    assert torch.allclose(got, want, atol=1e-5), got
    assert torch.all(dists(a, a).abs() < 1e-6)
    assert torch.allclose(dists(b, a), dists(a, b), atol=1e-6)


def test_l2_pool_of_constant_is_constant() -> None:
    from codec.perceptual import l2_pool

    x = torch.full((1, 2, 16, 16), 0.5)
    y = l2_pool(x)
    assert y.shape == (1, 2, 8, 8)
    # the Hann window sums to 1 in the interior; borders see zero padding and fall below
    assert torch.allclose(y[..., 2:-2, 2:-2], torch.full_like(y[..., 2:-2, 2:-2], 0.5), atol=1e-5)


def test_dists_changed_weights_refused(tmp_path: Path) -> None:
    from codec.perceptual import DISTS

    for f in WEIGHTS_DIR.glob("*.safetensors"):
        if f.name.startswith(("vgg16", "dists")):
            shutil.copy(f, tmp_path / f.name)
    state = load_file(tmp_path / "dists_alpha_beta.safetensors")
    state["alpha"] = state["alpha"] * 1.01
    save_file(state, tmp_path / "dists_alpha_beta.safetensors")
    with pytest.raises(ModelMismatchError, match="DISTS"):
        DISTS(tmp_path)
