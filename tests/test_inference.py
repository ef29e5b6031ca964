"""codec.inference: the one "rebuild from N sources and compare with the frozen frame" that
the trainer's validation, eval.reconstruction and ``iwcodec weights compare`` share."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codec.config import tiny_config
from codec.inference import (
    nearest_source,
    reconstruct,
    self_reconstruct,
    source_indices,
    to_images,
    to_uint8,
)
from codec.model import ImplicitWarpingModel, SourceFeatures


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ImplicitWarpingModel(tiny_config()).eval()


@pytest.fixture(scope="module")
def clip():
    size = tiny_config().image_size
    return np.random.default_rng(0).integers(0, 256, (11, size, size, 3), dtype=np.uint8)


def test_sources_are_the_first_frame_and_evenly_spaced_ones():
    assert source_indices(270, 1) == [0]
    assert source_indices(270, 2) == [0, 135]
    assert source_indices(10, 3) == [0, 3, 6]


def test_the_frozen_baseline_shows_the_nearest_source():
    targets = np.arange(10)
    assert nearest_source([0], targets).tolist() == [0] * 10
    # ties (frame 3 between 0 and 6) go to the earlier source
    assert nearest_source([0, 6], targets).tolist() == [0, 0, 0, 0, 6, 6, 6, 6, 6, 6]
    assert nearest_source([0, 5], np.array([9, 2])).tolist() == [5, 0]


def test_images_round_trip_through_uint8(clip):
    images = to_images(clip, torch.device("cpu"))
    assert images.shape == (11, 3, clip.shape[1], clip.shape[2]) and images.dtype == torch.float32
    assert np.array_equal(to_uint8(images), clip)


def test_reconstruct_renders_as_the_receiver_does(model, clip):
    """Sources encoded once, then each target from its detected keypoints: the same pixels as
    the model's own steps, for any split of the targets into calls of whole chunks."""
    targets = np.array([1, 2, 4, 7, 8, 10])
    rec = reconstruct(model, clip, 2, targets, chunk=2)
    assert rec.sources == [0, 5]
    assert np.array_equal(rec.frozen, [0, 0, 5, 5, 5, 5])
    assert rec.images.shape == (6, 3, clip.shape[1], clip.shape[2])
    assert rec.kp_sources.shape == (2, model.cfg.num_kp, 2)
    with torch.no_grad():
        src_images = to_images(clip[[0, 5]], torch.device("cpu"))
        kp, st = model.detect(src_images)
        feats = SourceFeatures.concat(
            [
                model.encode_source(src_images[i : i + 1], kp[i : i + 1], st[i : i + 1])
                for i in (0, 1)
            ]
        )
        for i in range(0, 6, 2):
            drv = to_images(clip[targets[i : i + 2]], torch.device("cpu"))
            kp_d, s_d = model.detect(drv)
            want = model.render(feats, kp_d, s_d).clamp(0, 1)
            torch.testing.assert_close(rec.images[i : i + 2], want, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(rec.kp_targets[i : i + 2], kp_d)
    halves = [
        reconstruct(model, clip, 2, part, chunk=2).images for part in (targets[:4], targets[4:])
    ]
    assert torch.equal(torch.cat(halves), rec.images)


def test_reconstruct_renders_from_the_keypoints_the_receiver_gets(model, clip):
    """``keypoints`` stands for the channel (e.g. quantization): the targets are rendered from
    what it returns, the sources keep their own keypoints."""
    calls = []

    def still(kp, strength):
        calls.append(len(kp))
        return torch.zeros_like(kp), strength

    moved = reconstruct(model, clip, 1, np.arange(5), chunk=4, keypoints=still)
    assert calls == [4, 1]
    assert torch.equal(moved.kp_targets, torch.zeros(5, model.cfg.num_kp, 2))
    plain = reconstruct(model, clip, 1, np.arange(5), chunk=4)
    assert not torch.equal(moved.images, plain.images)
    same = reconstruct(model, clip, 1, np.arange(5), chunk=4, keypoints=lambda k, s: (k, s))
    assert torch.equal(same.images, plain.images)


def test_self_reconstruction_is_each_frame_from_itself(model, clip):
    """The ceiling: a frame rebuilt from itself alone equals reconstruct with that one frame as
    the clip's only source (chunk 1 on both sides: the same batches)."""
    got = self_reconstruct(model, clip, np.array([3, 6]), chunk=1)
    for row, t in enumerate((3, 6)):
        alone = reconstruct(model, clip[t : t + 1], 1, np.array([0]), chunk=1).images
        assert torch.equal(got[row : row + 1], alone)
