"""Streams that ask for more than they carry (issue 17, rows 4 and 7).

Forged counts and indices with valid CRCs, a keyframe that is random bytes, two streams in one
file: ``iwcodec info`` and ``iwcodec decode`` must reach the same verdict (both decode, or both
refuse with the same message), the refusal must come before anything is rendered, and
``info``'s rows must add up to the file size. A tiny random model (64 px) decodes.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from _media import sample_frames, tiny_weights, write_clip

from bitstream import KeyframeUnit, ParamsUnit, scan_stream
from bitstream.budget import FrameBudget, max_gap_frames
from bitstream.synthetic import forged_gap_stream
from iwcodec.cli import main
from iwcodec.errors import BitstreamError
from receiver.decoder import inspect_stream


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bounds")


@pytest.fixture(scope="module")
def weights(work: Path) -> Path:
    return tiny_weights(work / "tiny.safetensors", seed=0)


@pytest.fixture(scope="module")
def encoded(work: Path, weights: Path) -> Path:
    clip = write_clip(work / "face.mp4", sample_frames(16), fps=25)
    out = work / "face.iwc"
    assert main(["encode", str(clip), "-o", str(out), "--weights", str(weights), "--quiet"]) == 0
    return out


def _head(encoded: Path, fps: int | None = None) -> tuple[ParamsUnit, list[KeyframeUnit]]:
    units = [r.unit for r in scan_stream(encoded)]
    params = units[0]
    if fps is not None:
        params = ParamsUnit(**{**params.__dict__, "fps_num": fps, "fps_den": 1})
    return params, [u for u in units if isinstance(u, KeyframeUnit)]


def run(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out = capsys.readouterr()
    return status, out.out, out.err


def error_line(err: str) -> str:
    """The ``iwcodec: error:`` message without the file name a command puts in front of it."""
    lines = [line for line in err.splitlines() if line.startswith("iwcodec: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return re.sub(r"^iwcodec: error: (\S+\.iwc: )?", "", lines[0])


def verdicts(capsys, work: Path, weights: Path, name: str, data: bytes):
    """(info status, info stdout, info error, decode status, decode error) for ``data``."""
    src = work / f"{name}.iwc"
    src.write_bytes(data)
    out = work / f"{name}.mkv"
    i_status, i_out, i_err = run(capsys, "info", src)
    d_status, d_out, d_err = run(capsys, "decode", src, "-o", out, "--weights", weights, "--quiet")
    assert i_status == d_status, (i_err, d_err)
    assert out.exists() == (d_status == 0)
    assert not list(work.glob(".*.part"))
    if d_status == 0:
        frames = int(re.search(r"(\d+) frames", d_out)[1])
        assert f"frames:      {frames} (" in i_out and "complete: yes" in i_out
        return i_status, i_out, None
    assert "complete: NO" in i_out
    # the same verdict; decode may add what it could have rebuilt (and --partial)
    assert error_line(d_err).startswith(error_line(i_err))
    return i_status, i_out, error_line(i_err)


def rows_add_up(stdout: str, size: int) -> None:
    rows = dict(
        (m[1], int(m[2]))
        for m in re.finditer(r"^(\w[\w ]*?)\s+(?:\d+\s+)?(\d+)(?:\s+[\d.]+)?$", stdout, re.M)
    )
    total = rows.pop("total")
    assert total == size and sum(rows.values()) == size, rows


def test_frame_budget_bounds_gaps_and_the_total() -> None:
    budget = FrameBudget(max_gap=100)
    budget.add(10, [range(10, 110)])  # a gap of exactly max_gap
    budget.add(5)
    with pytest.raises(BitstreamError, match="skips 101 frames at once"):
        FrameBudget(max_gap=100).add(1, [range(1, 102)])
    # lost may exceed decoded by max_gap, not by one more
    budget.add(0, [range(200, 215)])  # lost 115 = decoded 15 + 100
    assert (budget.decoded, budget.lost, budget.frames) == (15, 115, 130)
    with pytest.raises(BitstreamError, match="lost 116 frames against 15 decoded"):
        budget.add(0, [range(300, 301)])
    assert max_gap_frames(35) == 2100 and max_gap_frames(0.01) == 1


def test_three_resync_units_2000_frames_apart(capsys, work, weights, encoded) -> None:
    # 35 fps: each 1,999-frame gap is within the 60 s per-gap bound (2,100 frames), the total
    # is not: 3 frames carried cannot stand for 4,001.
    params, keyframes = _head(encoded, fps=35)
    data = forged_gap_stream(params, keyframes, units=3, spacing=2000)
    assert len(data) < 1200
    status, stdout, message = verdicts(capsys, work, weights, "three", data)
    assert status == 2
    assert message.startswith("the stream has lost 3998 frames against 3 decoded")
    assert "forged" in message
    rows_add_up(stdout, len(data))


def test_a_thousand_units_cannot_ask_for_two_million_frames(capsys, work, weights, encoded):
    params, keyframes = _head(encoded)  # 25 fps: a 1,999-frame gap is over the per-gap bound
    data = forged_gap_stream(params, keyframes, units=1000, spacing=2000)
    status, stdout, message = verdicts(capsys, work, weights, "thousand", data)
    assert status == 2 and "skips 1999 frames at once" in message
    rows_add_up(stdout, len(data))
    assert inspect_stream(data).audit.frames <= 1 + max_gap_frames(25)


def test_gaps_a_real_stream_can_have_decode_as_held_frames(capsys, work, weights, encoded):
    params, keyframes = _head(encoded)
    data = forged_gap_stream(params, keyframes, units=3, spacing=40, frames_per_unit=30)
    status, stdout, message = verdicts(capsys, work, weights, "gaps", data)
    assert status == 0 and message is None
    assert "frames:      110 (4.40 s)" in stdout and "lost:        20 frames" in stdout


@pytest.mark.parametrize(
    ("end_total", "ok"),
    [(95, True), (90 + max_gap_frames(25), True), (91 + max_gap_frames(25), False), (2**32, False)],
)
def test_the_end_unit_cannot_add_more_than_the_bound(
    capsys, work, weights, encoded, end_total, ok
) -> None:
    params, keyframes = _head(encoded)
    data = forged_gap_stream(
        params, keyframes, units=3, spacing=30, frames_per_unit=30, end_total=end_total
    )
    status, stdout, message = verdicts(capsys, work, weights, f"end{end_total}", data)
    assert (status == 0) == ok, message
    if ok:
        assert f"frames:      {end_total} (" in stdout


def test_keyframe_of_random_bytes(capsys, work, weights, encoded) -> None:
    data = bytearray(encoded.read_bytes())
    records = list(scan_stream(encoded))
    key = records[1]
    assert isinstance(key.unit, KeyframeUnit)
    data[key.offset : key.offset + key.size] = np.random.default_rng(0).bytes(key.size)
    status, stdout, message = verdicts(capsys, work, weights, "randkf", bytes(data))
    assert status == 2 and message.startswith("no frame could be rebuilt")
    assert "keyframes:   0" in stdout
    rows_add_up(stdout, len(data))


def test_keyframe_with_a_valid_crc_and_a_random_picture(capsys, work, weights, encoded) -> None:
    params, keyframes = _head(encoded)
    junk = KeyframeUnit(0, 0, keyframes[0].codec, np.random.default_rng(1).bytes(500))
    data = forged_gap_stream(params, [junk], units=1, frames_per_unit=16)
    status, stdout, message = verdicts(capsys, work, weights, "junkkf", data)
    assert status == 2 and message.startswith("no frame could be rebuilt")
    assert "(1 av1, 1 unusable)" in stdout


def test_truncation_and_damage_agree(capsys, work, weights, encoded) -> None:
    data = encoded.read_bytes()
    status, _, message = verdicts(capsys, work, weights, "cut", data[:-5])
    assert status == 2 and "stream ends" in message
    hurt = bytearray(data)
    key = list(scan_stream(encoded))[2]
    hurt[key.offset + key.size // 2] ^= 0x10
    status, stdout, _ = verdicts(capsys, work, weights, "hurt", bytes(hurt))
    assert status == 0 and "lost:        16 frames" in stdout


def test_two_streams_in_one_file_are_refused_and_info_adds_up(capsys, work, weights, encoded):
    data = encoded.read_bytes()
    status, stdout, message = verdicts(capsys, work, weights, "twice", data + data)
    assert status == 2
    assert message.startswith(f"a second stream starts at byte {len(data)}"), message
    assert re.search(rf"^after end\s+{len(data)}$", stdout, re.M), stdout
    rows_add_up(stdout, 2 * len(data))
