"""Frames without a face and real frame times, end to end (issue: no ghost faces, VFR in/out).

A clip that starts without a face (a fade-in from black) must not take a black frame as its
keyframe; a face that leaves the picture must decode to what the sender chose (a blank
picture), not a ghost of the last face; the face that comes back gets a keyframe of its own.
A variable-rate input keeps its frame times through the stream into the decoded file.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from _media import sample_frames, tiny_weights

from bitstream import (
    Fill,
    KeyframeUnit,
    KeypointUnit,
    NoFaceUnit,
    read_units,
)
from codec.weights import load_model
from iwcodec.cli import main
from receiver.decoder import DecodeOptions, decode_file, decode_frames, inspect_stream
from sender.core import face_mask
from sender.encoder import EncodeOptions, encode_file

FPS = 25
QUIET = EncodeOptions(progress=False, frames_per_unit=10)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("noface")


@pytest.fixture(scope="module")
def model(work: Path):
    return load_model(tiny_weights(work / "tiny.safetensors", seed=3))


def write_timed(path: Path, frames: list[np.ndarray], times_ms: list[int]) -> Path:
    """H.264 (near lossless) at the given frame times, in ms (a variable-rate clip)."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=FPS)
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "10"}
        s.codec_context.time_base = s.time_base = Fraction(1, 1000)
        for rgb, t in zip(frames, times_ms):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            out.mux(s.encode(frame))
        out.mux(s.encode(None))
    return path


def frame_times(path: Path) -> list[float]:
    with av.open(str(path)) as c:
        return [float(f.time) for f in c.decode(video=0)]


@pytest.fixture(scope="module")
def dark_clip(work: Path) -> tuple[Path, int, range]:
    """20 black frames, 30 frames of a face, 20 black frames (0.8 s), 30 frames of the face."""
    face = sample_frames(60)
    black = np.zeros_like(face[0])
    frames = [black] * 20 + face[:30] + [black] * 20 + face[30:]
    path = write_timed(work / "dark.mp4", frames, [40 * i for i in range(len(frames))])
    return path, len(frames), range(50, 70)


@pytest.fixture(scope="module")
def dark_stream(work: Path, dark_clip, model):
    path, _, _ = dark_clip
    out = work / "dark.iwc"
    stats = encode_file(path, out, model, QUIET)
    return out, stats


def test_face_mask_bridges_short_misses_only() -> None:
    det = np.array([0, 0, 1, 1, 0, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0], bool)
    # at 4 fps the minimum gap is 2 frames: the leading run is always no face, a 1-frame miss
    # is bridged, the 4-frame and the trailing 2-frame runs are not
    want = np.array([0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0], bool)
    np.testing.assert_array_equal(face_mask(det, fps=4.0, min_gap_s=0.5), want)
    assert not face_mask(np.zeros(5, bool), 4.0).any()


def test_first_keyframe_is_the_first_face_and_a_returning_face_gets_its_own(
    dark_clip, dark_stream
) -> None:
    _, n, gap = dark_clip
    path, stats = dark_stream
    units = list(read_units(path))
    keyframes = [u for u in units if isinstance(u, KeyframeUnit)]
    no_face = [u for u in units if isinstance(u, NoFaceUnit)]
    # the detector may need a frame or two after a cut; never a keyframe of a black frame
    assert 20 <= keyframes[0].frame_index <= 22
    assert gap.stop <= keyframes[1].frame_index <= gap.stop + 2
    assert len(keyframes) == stats.keyframes == 2
    covered = {i for u in no_face for i in u.indices}
    assert set(range(20)) <= covered and set(gap) <= covered
    assert stats.no_face_frames == len(covered) and stats.frames == n
    # frames of the second face refer only to the second keyframe, starting with a resync
    after = [u for u in units if isinstance(u, KeypointUnit) and u.first_index >= gap.stop]
    assert after[0].resync and {r for u in after for r in u.refs} == {keyframes[1].keyframe_id}


def test_frames_without_a_face_decode_blank_not_as_a_ghost(dark_clip, dark_stream, model) -> None:
    _, n, gap = dark_clip
    path, _ = dark_stream
    frames, stats = decode_frames(path, model, DecodeOptions(progress=False))
    assert len(frames) == n and stats.held == 0
    assert stats.no_face >= 40
    assert not frames[:20].any() and not frames[gap.start : gap.stop].any()  # black
    assert frames[30:45].mean() > 20 and frames[gap.stop + 5 :].mean() > 20  # rendered faces
    info = inspect_stream(path)
    assert info.complete == "yes" and info.no_face_frames == stats.no_face
    assert "no face:" in info.summary()


def test_hold_fill_repeats_the_last_picture(work, dark_clip, model) -> None:
    path, _, gap = dark_clip
    out = work / "hold.iwc"
    weights = str(model.weights_path)
    assert (
        main(
            [
                "encode",
                str(path),
                "-o",
                str(out),
                "--no-face",
                "hold",
                "--weights",
                weights,
                "--quiet",
            ]
        )
        == 0
    )
    assert {u.fill for u in read_units(out.read_bytes()) if isinstance(u, NoFaceUnit)} == {
        Fill.HOLD
    }
    frames, _ = decode_frames(out, model, DecodeOptions(progress=False))
    assert not frames[:20].any()  # nothing to hold before the first face: blank
    np.testing.assert_array_equal(frames[gap.start], frames[gap.start - 1])
    np.testing.assert_array_equal(frames[gap.stop - 1], frames[gap.start - 1])


def test_clip_without_any_face_is_refused(work, model) -> None:
    from iwcodec.errors import NoFaceError

    black = [np.zeros((64, 64, 3), np.uint8)] * 10
    path = write_timed(work / "black.mp4", black, [40 * i for i in range(10)])
    with pytest.raises(NoFaceError, match="no face"):
        encode_file(path, work / "black.iwc", model, QUIET)
    assert not (work / "black.iwc").exists()


def test_variable_frame_rate_survives_encode_and_decode(work, model) -> None:
    face = sample_frames(40)
    times = [40 * i for i in range(20)] + [40 * i + 600 for i in range(20, 40)]  # a 600 ms pause
    path = write_timed(work / "vfr.mp4", face, times)
    stream = work / "vfr.iwc"
    encode_file(path, stream, model, QUIET)
    assert any(u.pts is not None for u in read_units(stream) if isinstance(u, KeypointUnit))
    assert inspect_stream(stream).explicit_pts
    for name in ("vfr.mp4", "vfr.mkv"):
        out = decode_file(stream, work / f"out_{name}", model, DecodeOptions(progress=False))
        assert out.frames == 40
        got = frame_times(work / f"out_{name}")
        np.testing.assert_allclose(got, [t / 1000 for t in times], atol=0.0015)


def test_constant_rate_input_carries_no_timestamps(work, model) -> None:
    face = sample_frames(20)
    path = write_timed(work / "cfr.mp4", face, [40 * i for i in range(20)])
    stream = work / "cfr.iwc"
    encode_file(path, stream, model, QUIET)
    assert all(u.pts is None for u in read_units(stream) if isinstance(u, KeypointUnit))
    assert not inspect_stream(stream).explicit_pts
