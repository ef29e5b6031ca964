"""sender/video.py: decoding real and synthetic clips, and every unusable input -> InputError."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from _media import SAMPLE
from PIL import Image

from iwcodec.errors import InputError
from sender.video import iter_frames, probe_video, rotate_picture


def write_video(
    path: Path, frames: np.ndarray, fps: int = 25, rotation: float | None = None
) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": "10"}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for rgb in frames:
            for pkt in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(pkt)
        for pkt in stream.encode(None):
            out.mux(pkt)
    return path


def test_synthetic_clip_frames_pts_fps(tmp_path: Path) -> None:
    frames = np.zeros((6, 48, 64, 3), np.uint8)
    for i in range(6):
        frames[i, :, :, 0] = 40 * i
    path = write_video(tmp_path / "ramp.mp4", frames, fps=25)
    info = probe_video(path)
    assert (info.width, info.height, info.fps, info.rotation) == (64, 48, Fraction(25), 0)
    got = list(iter_frames(path))
    assert [f.index for f in got] == list(range(6))
    np.testing.assert_allclose([f.pts for f in got], np.arange(6) / 25, atol=1e-6)
    for i, f in enumerate(got):
        assert f.rgb.shape == (48, 64, 3) and f.rgb.dtype == np.uint8
        assert abs(float(f.rgb[..., 0].mean()) - 40 * i) < 3


def test_rotation_metadata_is_applied(tmp_path: Path) -> None:
    frames = np.zeros((3, 32, 64, 3), np.uint8)
    frames[:, :, :16] = 255  # white left band
    # -90 is what phones write for portrait video: shown turned a quarter clockwise
    path = write_video(tmp_path / "rot.mp4", frames, rotation=-90)
    info = probe_video(path)
    assert (info.width, info.height, info.rotation) == (32, 64, 270)
    rgb = next(iter_frames(path)).rgb
    assert rgb.shape == (64, 32, 3)
    assert rgb[:12].mean() > 240 and rgb[20:].mean() < 15  # the left band is now on top


def test_rotate_picture_quarter_turns() -> None:
    img = np.arange(6, dtype=np.uint8).reshape(2, 3, 1).repeat(3, axis=2)
    assert rotate_picture(img, 0) is img
    np.testing.assert_array_equal(rotate_picture(img, 90), np.rot90(img, 1))
    np.testing.assert_array_equal(rotate_picture(img, -90), np.rot90(img, -1))
    np.testing.assert_array_equal(rotate_picture(img, 180.0), np.rot90(img, 2))
    assert rotate_picture(img, 33.0) is img  # non-right angles are not guessed at


def test_real_clip_streams_lazily() -> None:
    got = list(iter_frames(SAMPLE, max_frames=4))
    assert len(got) == 4 and got[0].rgb.shape == (256, 256, 3)
    assert probe_video(SAMPLE).fps == Fraction(35)


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 16000, i * 1024
            for pkt in stream.encode(frame):
                out.mux(pkt)
        for pkt in stream.encode(None):
            out.mux(pkt)
    return path


def _no_frames(path: Path) -> Path:
    """A well-formed mp4 whose coded pictures are all zero bytes: nothing decodes."""
    noise = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    data = bytearray(write_video(path, noise).read_bytes())
    start, end = data.find(b"mdat") + 4, data.find(b"moov") - 4
    assert 0 < start < end
    data[start:end] = bytes(end - start)
    return _write(path, bytes(data))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _png(path: Path) -> Path:
    Image.new("RGB", (32, 32)).save(path)
    return path


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda d: d / "missing.mp4", "no such file"),
        (lambda d: d, "directory"),
        (lambda d: _write(d / "empty.mp4", b""), "empty"),
        (lambda d: _write(d / "notes.mp4", b"hello, not a video\n"), "not a video"),
        (lambda d: _png(d / "still.png"), "still image"),
        (lambda d: _audio_only(d / "voice.m4a"), "no video stream"),
        (lambda d: _write(d / "cut.mp4", SAMPLE.read_bytes()[:3000]), "truncated"),
        (lambda d: _no_frames(d / "hollow.mp4"), "no decodable video frame|damaged"),
    ],
    ids=["missing", "directory", "empty", "text", "png", "audio-only", "truncated", "no-frames"],
)
def test_unusable_inputs_raise_input_error(tmp_path: Path, make, words: str) -> None:
    path = make(tmp_path)
    with pytest.raises(InputError, match=words) as err:
        probe_video(path)
    assert str(path) in str(err.value)
    with pytest.raises(InputError):
        list(iter_frames(path))
