"""The CUDA-graph render path of the receive core (receiver/graphs.py, SourceSet.render), on the
CPU: the graphs' bookkeeping with :func:`receiver.graphs.eager_replay` standing in for CUDA
graph capture (same contract: static inputs and outputs, replay refreshes the outputs).

What must hold: the graph path gives the eager frames; a graph is captured once per refs and
batch bucket and replayed after; a keyframe that replaces one of the refs' slots forces a new
capture (never a replay on old features); the cache stays bounded; a failing capture falls
back to eager rendering; non-finite frames are refused like the eager path refuses them.
The same path on a GPU, with real CUDA graphs: tests/test_render_gpu.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _frames import SIZE, keyframe, keypoints
from _media import tiny_weights

from bitstream import KEYFRAME_SLOTS, load_prior
from bitstream.synthetic import example_params
from codec.weights import load_model
from iwcodec.errors import ModelMismatchError
from receiver.graphs import RenderGraphs, bucket, eager_replay
from receiver.sources import SourceSet


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(tiny_weights(tmp_path_factory.mktemp("graphs") / "tiny.safetensors", 0))


def source_set(model, graphs: RenderGraphs | None, seeds=(0, 1)) -> SourceSet:
    params = example_params(
        load_prior(), k=model.cfg.num_kp, width=SIZE, height=SIZE, weights_id=model.weights_id
    )
    sources = SourceSet(model, params)
    sources.graphs = graphs
    for kid, seed in enumerate(seeds):
        sources.add(keyframe(kid, seed))
    return sources


def test_on_a_cpu_the_receive_core_renders_eagerly(model):
    params = example_params(
        load_prior(), k=model.cfg.num_kp, width=SIZE, height=SIZE, weights_id=model.weights_id
    )
    assert SourceSet(model, params).graphs is None


@pytest.mark.parametrize("batch, refs", [(1, (0,)), (1, (0, 1)), (3, (1,))])
def test_graph_path_gives_the_eager_frames(model, batch, refs):
    graphs = RenderGraphs(model, capture=eager_replay)
    with_graphs, eager = source_set(model, graphs), source_set(model, None)
    for seed in range(3):
        kp = keypoints(batch, model.cfg.num_kp, seed)
        got, want = with_graphs.render(refs, kp), eager.render(refs, kp)
        assert got.shape == want.shape == (batch, SIZE, SIZE, 3) and got.dtype == np.uint8
        if batch == bucket(batch):
            np.testing.assert_array_equal(got, want)
        else:  # rendered inside a batch of 4: the same up to float rounding of a level
            assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert graphs.captures == 1 and graphs.replays == 3


def test_frames_handed_out_are_not_overwritten_by_the_next_call(model):
    sources = source_set(model, RenderGraphs(model, capture=eager_replay))
    first = sources.render((0,), keypoints(1, model.cfg.num_kp, 0))
    kept = first.copy()
    sources.render((0,), keypoints(1, model.cfg.num_kp, 1))
    np.testing.assert_array_equal(first, kept)


def test_one_capture_per_refs_and_batch_bucket(model):
    graphs = RenderGraphs(model, capture=eager_replay)
    sources = source_set(model, graphs)
    k = model.cfg.num_kp
    for batch, refs in [(1, (0,)), (1, (0,)), (2, (0,)), (3, (0,)), (4, (0,)), (1, (0, 1))]:
        sources.render(refs, keypoints(batch, k, batch))
    # (0,) at buckets 1, 2, 4 (3 and 4 share one), and (0, 1) at bucket 1
    assert graphs.captures == 4 and len(graphs) == 4 and graphs.replays == 6


def test_a_replaced_keyframe_is_recaptured_not_replayed(model):
    """Keyframe 0 sent again with another picture: same refs, new features in its slot."""
    graphs = RenderGraphs(model, capture=eager_replay)
    sources, eager = source_set(model, graphs), source_set(model, None)
    kp = keypoints(1, model.cfg.num_kp, 5)
    before = sources.render((0, 1), kp)
    for s in (sources, eager):
        s.add(keyframe(0, seed=7))
    after = sources.render((0, 1), kp)
    assert graphs.captures == 2
    np.testing.assert_array_equal(after, eager.render((0, 1), kp))
    assert not np.array_equal(before, after)  # the new picture shows
    # a keyframe in a slot the refs do not use leaves their graph alone
    sources.add(keyframe(2, seed=8))
    sources.render((0, 1), kp)
    assert graphs.captures == 2


def test_a_slot_taken_by_another_id_drops_the_refs(model):
    graphs = RenderGraphs(model, capture=eager_replay)
    sources = source_set(model, graphs)
    sources.render((0,), keypoints(1, model.cfg.num_kp, 0))
    sources.add(keyframe(KEYFRAME_SLOTS, seed=3))  # slot 0 now holds keyframe 16
    assert sources.render((0,), keypoints(1, model.cfg.num_kp, 0)) is None
    assert sources.render((KEYFRAME_SLOTS,), keypoints(1, model.cfg.num_kp, 0)) is not None
    assert graphs.captures == 2


def test_the_cache_is_bounded_least_recently_used_first(model):
    graphs = RenderGraphs(model, capture=eager_replay, max_graphs=2)
    sources = source_set(model, graphs, seeds=(0, 1, 2))
    kp = keypoints(1, model.cfg.num_kp, 0)
    for refs in [(0,), (1,), (0,), (2,), (0,)]:
        sources.render(refs, kp)
    # (1,) was evicted by (2,): (0,) was used more recently; then (0,) is still held
    assert len(graphs) == 2 and graphs.captures == 3
    sources.render((1,), kp)
    assert graphs.captures == 4


def test_large_batches_render_eagerly(model):
    graphs = RenderGraphs(model, capture=eager_replay, max_batch=2)
    sources = source_set(model, graphs)
    out = sources.render((0,), keypoints(3, model.cfg.num_kp, 0))
    assert out.shape == (3, SIZE, SIZE, 3) and graphs.captures == 0


def test_a_failing_capture_falls_back_to_eager(model, caplog):
    def broken(body, pool):
        raise RuntimeError("operation not permitted when stream is capturing")

    graphs = RenderGraphs(model, capture=broken)
    sources, eager = source_set(model, graphs), source_set(model, None)
    kp = keypoints(1, model.cfg.num_kp, 0)
    np.testing.assert_array_equal(sources.render((0,), kp), eager.render((0,), kp))
    assert graphs.broken and "not permitted" in graphs.broken and not graphs.takes(1)
    assert "without CUDA graphs" in caplog.text


def test_non_finite_frames_are_refused(tmp_path):
    poisoned = load_model(tiny_weights(tmp_path / "tiny.safetensors", 0))
    with torch.no_grad():
        poisoned.decoder.out.bias.fill_(float("nan"))
    sources = source_set(poisoned, RenderGraphs(poisoned, capture=eager_replay))
    with pytest.raises(ModelMismatchError, match="NaN or infinite"):
        sources.render((0,), keypoints(1, poisoned.cfg.num_kp, 0))


def test_bucket():
    assert [bucket(b) for b in (1, 2, 3, 4, 5, 9, 16)] == [1, 2, 4, 4, 8, 16, 16]
