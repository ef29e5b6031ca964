"""Pinned launch configurations of the fused forward (kernels/pinned.py, kernels/pinned_table.py).

Without CUDA the kernels run in triton's interpreter (as tests/test_kernels.py sets up): a
shape pinned for the ``interpreter`` target must launch its pinned tile and split count and
give the reference's outputs; every launch of the committed table is run the same way at a
small shape, so a committed tile that computes wrong results fails here, on the CPU.
"""

from __future__ import annotations

import os

import pytest
import torch

import kernels.dispatch as dispatch
from kernels import pinned, pinned_table, warp_attention, warp_attention_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"
    if dispatch._triton_import_problem() is None:  # imports triton after the variable is set
        dispatch._triton_module()

needs_interpreter = pytest.mark.skipif(
    DEVICE != "cpu" or dispatch._triton_import_problem() is not None,
    reason="runs pinned tiles in triton's interpreter (CPU with triton importable)",
)

LQ, PER_SRC, EXTRAS, D, DV, DP = 37, 50, 7, 32, 48, 3


def small_inputs(n_src: int = 3, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lk = PER_SRC * n_src + EXTRAS
    q = torch.randn(1, LQ, D, generator=g) * 2
    k, v = torch.randn(1, lk, D, generator=g), torch.randn(1, lk, DV, generator=g)
    p = torch.rand(1, lk, DP, generator=g)
    return tuple(t.to(dtype) for t in (q, k, v, p))


def row(launch: pinned.PinnedLaunch, lk: int, dtype: str = "float32") -> dict:
    key = pinned.ShapeKey("interpreter", LQ, lk, D, DV, DP, dtype)
    return pinned.as_row(key, launch)


@pytest.fixture
def installed():
    yield pinned.install
    pinned.install([])


@pytest.fixture
def launches(monkeypatch):
    """Record (keys, splits used, key granule) of each forward launch."""
    module = dispatch._triton_module()
    seen = []
    original = module._split_chunk

    def spy(lk, n_splits, granule):
        chunk, used = original(lk, n_splits, granule)
        seen.append((lk, used, granule))
        return chunk, used

    monkeypatch.setattr(module, "_split_chunk", spy)
    return seen


def check_against_reference(outs, ins, tol=1e-5):
    refs = warp_attention_reference(*(t.double() for t in ins))
    for out, ref in zip(outs, refs, strict=True):
        err = ((out.double() - ref).norm() / ref.norm()).item()
        assert err < tol, err


@needs_interpreter
def test_a_pinned_shape_launches_its_tile_and_splits(installed, launches):
    ins = small_inputs()
    lk = ins[1].shape[1]
    installed([row(pinned.PinnedLaunch(16, 16, 4, 1, 3), lk)])
    module = dispatch._triton_module()
    tile, splits = module.pinned_launch(ins[0], lk, DV, DP)
    assert (tile.block_m, tile.block_n, splits) == (16, 16, 3)
    outs = warp_attention(*ins, backend="triton")
    assert launches == [(lk, 3, 16)]  # three splits of whole 16-key blocks
    check_against_reference(outs, ins)


@needs_interpreter
def test_other_shapes_and_explicit_launches_ignore_the_table(installed, launches):
    ins = small_inputs()
    lk = ins[1].shape[1]
    installed([row(pinned.PinnedLaunch(16, 16, 4, 1, 3), lk, dtype="bfloat16")])  # other dtype
    warp_attention(*ins, backend="triton")
    installed([row(pinned.PinnedLaunch(16, 16, 4, 1, 3), lk)])
    dispatch.warp_attention_triton(*ins, num_splits=2, block_m=32, block_n=32)
    # interpreter default (32 x 32 blocks, one split on one "SM"); then the explicit launch
    assert launches == [(lk, 1, 32), (lk, 2, 32)]


def committed_launches() -> list[pinned.PinnedLaunch]:
    return sorted(set(pinned.committed().values()), key=str)


@needs_interpreter
@pytest.mark.parametrize("launch", committed_launches(), ids=str)
def test_every_committed_launch_computes_the_reference(installed, launch):
    """The committed tiles (blocks up to 128 x 128) at a small shape: one query block, so the
    interpreter stays fast; the split count as committed."""
    ins = small_inputs(dtype=torch.bfloat16)
    installed([row(launch, ins[1].shape[1], "bfloat16")])
    check_against_reference(warp_attention(*ins, backend="triton"), ins, tol=1.5e-2)


def test_committed_table_loads_and_covers_the_codec_shapes():
    table = pinned.committed()
    if not table:
        pytest.skip("the pinned table is empty until the first tuning run on an H200")
    shapes = {(k.target, k.lq, k.lk, k.d, k.dv, k.dp, k.dtype) for k in table}
    for dtype in ("float32", "bfloat16"):
        for n in (1, 3):  # 256 px, the main attention and the flow pass of warp_sources
            assert ("sm_90", 4096, 4096 * n + 400, 128, 128, 3, dtype) in shapes
            assert ("sm_90", 4096, 4096 * n + 400, 128, 3 * n, 3 * n, dtype) in shapes


def test_table_source_round_trips():
    rows = [
        row(pinned.PinnedLaunch(128, 64, 8, 2, 4), 4496) | {"median_ms": 0.1, "spread": 0.02},
        row(pinned.PinnedLaunch(64, 64, 4, 2, 1), 12688, "bfloat16"),
    ]
    text = pinned.format_table(rows, {"device": "test"})
    namespace: dict = {}
    exec(compile(text, "pinned_table.py", "exec"), namespace)
    assert namespace["ENTRIES"] == rows and namespace["PROVENANCE"] == {"device": "test"}
    assert set(pinned.parse_rows(namespace["ENTRIES"]).values()) == {
        pinned.PinnedLaunch(128, 64, 8, 2, 4),
        pinned.PinnedLaunch(64, 64, 4, 2, 1),
    }
    assert pinned.parse_rows(pinned_table.ENTRIES) == pinned.committed()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"block_m": 48}, "power of two"),
        ({"block_n": 8}, "power of two"),
        ({"num_splits": 0}, "num_splits"),
    ],
)
def test_bad_rows_are_refused(change, message):
    good = row(pinned.PinnedLaunch(64, 64, 4, 2, 1), 4496)
    with pytest.raises(ValueError, match=message):
        pinned.parse_rows([good | change])
    with pytest.raises(ValueError, match="twice"):
        pinned.parse_rows([good, good])
