"""Frames of many streams rendered in shared batches (receiver/batching.py) equal each stream's
own render, on the CPU with a tiny random model: streams with different keyframes, one with
two keyframes (another group), chunks of a few frames, a stream missing its keyframe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _frames import SIZE, keyframe, keypoints
from _media import tiny_weights

from bitstream import load_prior
from bitstream.synthetic import example_params
from codec.weights import load_model
from receiver.batching import BatchRenderer, FrameJob, chunks
from receiver.sources import SourceSet


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(tiny_weights(tmp_path_factory.mktemp("batching") / "tiny.safetensors", 1))


@pytest.fixture(scope="module")
def streams(model):
    """Five receivers: four with one keyframe each (own pictures), one with two."""
    params = example_params(
        load_prior(), k=model.cfg.num_kp, width=SIZE, height=SIZE, weights_id=model.weights_id
    )
    out = []
    for s in range(5):
        sources = SourceSet(model, params)
        sources.add(keyframe(0, seed=10 + s))
        if s == 4:
            sources.add(keyframe(1, seed=20))
        out.append((sources, (0, 1) if s == 4 else (0,)))
    return out


def requests(model, streams, seed: int):
    kp = keypoints(len(streams), model.cfg.num_kp, seed)
    return [(sources, refs, kp[i]) for i, (sources, refs) in enumerate(streams)]


@pytest.mark.parametrize("max_batch", [2, 32])
def test_batched_frames_equal_each_streams_own(model, streams, max_batch):
    renderer = BatchRenderer(model, max_batch=max_batch)
    reqs = requests(model, streams, seed=0)
    got = renderer.render_streams(reqs)
    for (sources, refs, kp), rgb in zip(reqs, got, strict=True):
        alone = sources.render(refs, kp[None])[0]
        assert rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.uint8
        assert np.abs(rgb.astype(int) - alone.astype(int)).max() <= 1
    # four one-keyframe frames in chunks of max_batch, plus the two-keyframe group
    assert renderer.calls == (2 + 1 if max_batch == 2 else 1 + 1)


def test_batched_float_images_match_single_renders(model, streams):
    renderer = BatchRenderer(model, max_batch=3)
    reqs = requests(model, streams, seed=1)
    jobs = [FrameJob(s.features(r), kp) for s, r, kp in reqs]
    images = renderer.render_images(jobs)
    with torch.inference_mode():
        for job, image in zip(jobs, images, strict=True):
            kp = torch.from_numpy(np.array(job.keypoints))[None]
            alone = model.render(job.features, kp[..., :2], kp[..., 2])[0]
            torch.testing.assert_close(image, alone, rtol=1e-5, atol=1e-5)


def test_stacks_are_reused_until_a_keyframe_changes(model, streams):
    renderer = BatchRenderer(model, max_batch=8)
    for seed in range(3):
        renderer.render_streams(requests(model, streams, seed))
    assert renderer.stacks_built == 1  # the four one-keyframe streams; the fifth renders alone
    streams[0][0].add(keyframe(0, seed=99))  # a new keyframe in stream 0
    reqs = requests(model, streams, 3)
    got = renderer.render_streams(reqs)
    assert renderer.stacks_built == 2
    alone = streams[0][0].render((0,), reqs[0][2][None])[0]
    assert np.abs(got[0].astype(int) - alone.astype(int)).max() <= 1


def test_a_stream_missing_its_keyframe_gets_none(model, streams):
    sources, _ = streams[1]
    reqs = requests(model, streams, 4)
    reqs[1] = (sources, (5,), reqs[1][2])  # keyframe 5 never arrived
    got = BatchRenderer(model).render_streams(reqs)
    assert got[1] is None and all(g is not None for i, g in enumerate(got) if i != 1)


def test_chunks_are_balanced():
    assert [len(c) for c in chunks(100, 32)] == [25, 25, 25, 25]
    assert [len(c) for c in chunks(10, 32)] == [10]
    assert [len(c) for c in chunks(33, 32)] == [16, 17]
    assert sum(len(c) for c in chunks(101, 7)) == 101
