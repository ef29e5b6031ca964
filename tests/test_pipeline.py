"""sender/encoder.py + receiver/decoder.py + receiver/writer.py: the offline codec end to end.

A tiny random model (64 px) stands in for the trained one: these tests check frame counts,
rates, byte accounting, model checks and damage handling, never reconstruction quality.
"""

from __future__ import annotations

import io
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from _media import short_clip, tiny_weights

from bitstream import (
    BitstreamWarning,
    EndUnit,
    KeyframeUnit,
    KeypointEncoder,
    KeypointFrame,
    KeypointUnit,
    ParamsUnit,
    StreamWriter,
    TruncatedStreamError,
    read_units,
    requantize,
    scan_stream,
)
from codec.model import ImplicitWarpingModel
from codec.weights import load_model
from iwcodec.errors import BitstreamError, IWCodecError, ModelMismatchError
from iwcodec.keyframe import decode_keyframe
from receiver.decoder import (
    DecodeOptions,
    Decoder,
    decode_file,
    decode_frames,
    find_entropy_model,
    inspect_stream,
)
from receiver.writer import VideoWriter, temporary_path, write_video
from sender.encoder import EncodeOptions, crop_input, encode_file, encode_frames

CLIP_FRAMES = 24
CLIP_FPS = Fraction(30000, 1001)
QUIET_ENC = EncodeOptions(progress=False, frames_per_unit=8, resync_period=8)
QUIET_DEC = DecodeOptions(progress=False)


def read_video(path: Path) -> tuple[np.ndarray, Fraction]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(s)])
        return frames, Fraction(s.average_rate)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pipeline")


@pytest.fixture(scope="module")
def model(work: Path) -> ImplicitWarpingModel:
    return load_model(tiny_weights(work / "tiny.safetensors", seed=0))


@pytest.fixture(scope="module")
def clip(work: Path):
    return crop_input(short_clip(work / "clip.mp4", CLIP_FRAMES, CLIP_FPS), 64)


@pytest.fixture(scope="module")
def stream(work: Path, clip, model) -> tuple[Path, object]:
    path = work / "clip.iwc"
    with open(path, "wb") as f:
        stats = encode_frames(clip.frames, clip.fps, model, f, QUIET_ENC)
    return path, stats


def units_of(path: Path) -> list:
    return list(scan_stream(path))


# -- round trip -------------------------------------------------------------------------------


def test_encode_file_round_trip_keeps_frame_count_and_rational_fps(work, model, clip) -> None:
    out = work / "rt.iwc"
    stats = encode_file(work / "clip.mp4", out, model, QUIET_ENC)
    assert stats.frames == len(clip.frames) == CLIP_FRAMES
    assert stats.fps == clip.fps == CLIP_FPS
    assert stats.bytes_total == out.stat().st_size
    # streaming from the file codes exactly the crops crop_input gives evaluation
    buf = io.BytesIO()
    encode_frames(clip.frames, clip.fps, model, buf, QUIET_ENC)
    assert buf.getvalue() == out.read_bytes()
    params = next(read_units(out))
    assert (params.width, params.height, params.num_keypoints) == (64, 64, 10)
    assert params.weights_id == model.weights_id
    assert (params.fps_num, params.fps_den) == (30000, 1001)

    video = work / "rt.mkv"
    dstats = decode_file(out, video, model, QUIET_DEC)
    frames, fps = read_video(video)
    assert len(frames) == dstats.frames == CLIP_FRAMES and dstats.held == 0
    assert fps == CLIP_FPS
    assert frames.shape[1:] == (64, 64, 3)
    # .mkv is lossless: the file holds exactly the frames the decoder produced
    decoded, _ = decode_frames(out, model, QUIET_DEC)
    np.testing.assert_array_equal(frames, decoded)
    assert not list(work.glob(".*.part"))


def test_mp4_output_has_exact_count_and_rate(work, stream, model) -> None:
    path, _ = stream
    video = work / "out.mp4"
    decode_file(path, video, model, QUIET_DEC)
    frames, fps = read_video(video)
    assert len(frames) == CLIP_FRAMES and fps == CLIP_FPS


def test_decoder_renders_from_the_decoded_keyframe_and_quantized_keypoints(
    stream, model, clip
) -> None:
    """An independent recomputation of the receiver's path: keyframe decoded from the stream,
    its keypoints by the detector, driving keypoints exactly as quantized; the keyframe's own
    frame is sent with the decoded keyframe's keypoints (the sender's closed loop), and a frame
    with its keyframe's own keypoints is that keyframe: the decoded picture itself."""
    path, _ = stream
    decoded, _ = decode_frames(path, model, QUIET_DEC)
    units = list(read_units(path))
    params = units[0]
    key = next(u for u in units if isinstance(u, KeyframeUnit))
    with torch.inference_mode():
        src_img = torch.from_numpy(decode_keyframe(key.data, key.codec)).permute(2, 0, 1)[None]
        src_img = src_img.float() / 255
        kp_s, s_s = model.detect(src_img)
        src = model.encode_source(src_img, kp_s, s_s)
        drv = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float() / 255
        kp, s = model.detect(drv)
        kp[key.frame_index], s[key.frame_index] = kp_s[0], s_s[0]
        q = requantize(
            torch.cat([kp, s[..., None]], -1).numpy(), params.xy_steps, params.s_steps
        )  # (T, K, 3) what the receiver sees
        q = torch.from_numpy(q)
        expected = model.render(src, q[..., :2], q[..., 2])
    expected = (expected.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    expected[key.frame_index] = decode_keyframe(key.data, key.codec)
    diff = np.abs(decoded.astype(int) - expected.astype(int))
    assert diff.max() <= 1  # batching may flip a rounding


def test_stats_and_info_add_up_to_the_file_size(stream) -> None:
    path, stats = stream
    info = inspect_stream(path)
    size = path.stat().st_size
    assert stats.bytes_total == size == info.file_bytes
    assert sum(info.bytes.values()) == size
    assert info.bytes["keyframe"] == stats.bytes_keyframes
    assert info.bytes["keypoints"] == stats.bytes_keypoints
    assert info.units == {"params": 1, "keyframe": 1, "keypoints": 3, "no-face": 0, "end": 1}
    assert info.frames == CLIP_FRAMES and info.problem is None
    assert info.kbps(size) == pytest.approx(size * 8 / (CLIP_FRAMES / float(CLIP_FPS)) / 1000)


def test_encoder_refuses_frames_of_another_size(model) -> None:
    with pytest.raises(IWCodecError, match="model's resolution"):
        encode_frames(np.zeros((3, 32, 32, 3), np.uint8), Fraction(25), model, io.BytesIO())


# -- model checks -----------------------------------------------------------------------------


def test_stream_from_other_weights_is_refused_naming_both(work, stream) -> None:
    path, _ = stream
    other = load_model(tiny_weights(work / "other.safetensors", seed=1))
    mine = next(read_units(path)).weights_id
    with pytest.raises(ModelMismatchError) as err:
        decode_file(path, work / "never.mp4", other, QUIET_DEC)
    assert mine.hex() in str(err.value) and other.weights_id.hex() in str(err.value)
    assert not (work / "never.mp4").exists()


@pytest.mark.parametrize(
    ("change", "words"),
    [({"width": 128, "height": 128}, "128x128"), ({"num_keypoints": 20}, "20 keypoints")],
)
def test_stream_of_other_resolution_or_k_is_refused(stream, model, change, words) -> None:
    params = next(read_units(stream[0]))
    fields = {**params.__dict__, **change}
    with pytest.raises(ModelMismatchError, match=words):
        Decoder(model, ParamsUnit(**fields))


def test_unknown_entropy_table_is_a_model_mismatch() -> None:
    with pytest.raises(ModelMismatchError, match="entropy table 0102030405060708"):
        find_entropy_model(bytes(range(1, 9)))


# -- damage -----------------------------------------------------------------------------------


def test_truncated_stream_writes_nothing_unless_partial(work, stream, model) -> None:
    path, _ = stream
    data = path.read_bytes()
    records = units_of(path)
    rng = np.random.default_rng(0)
    cuts = [r.offset for r in records[1:]] + [len(data) - 1]
    cuts += list(rng.integers(records[2].offset, len(data), 3))
    for cut in cuts:
        cut_path = work / f"cut{cut}.iwc"
        cut_path.write_bytes(data[:cut])
        out = work / f"cut{cut}.mp4"
        with pytest.raises(TruncatedStreamError, match="no output was written"):
            decode_file(cut_path, out, model, QUIET_DEC)
        assert not out.exists() and not temporary_path(out).exists()
    # partial: the frames decoded so far, and still an error that says so
    cut = records[3].offset  # params, keyframe, one keypoint unit (8 frames)
    cut_path = work / "partial.iwc"
    cut_path.write_bytes(data[:cut])
    out = work / "partial.mkv"
    with pytest.raises(TruncatedStreamError, match="INCOMPLETE"):
        decode_file(cut_path, out, model, DecodeOptions(progress=False, partial=True))
    frames, _ = read_video(out)
    assert len(frames) == 8


def test_damaged_middle_unit_warns_and_keeps_every_frame(work, stream, model) -> None:
    path, _ = stream
    data = bytearray(path.read_bytes())
    middle = units_of(path)[3]  # the second keypoint unit: frames 8..15
    assert isinstance(middle.unit, KeypointUnit) and middle.unit.first_index == 8
    data[middle.offset + middle.size // 2] ^= 0x40
    damaged = work / "damaged.iwc"
    damaged.write_bytes(bytes(data))
    clean, _ = decode_frames(path, model, QUIET_DEC)
    with pytest.warns(BitstreamWarning):
        frames, stats = decode_frames(damaged, model, QUIET_DEC)
    assert len(frames) == CLIP_FRAMES
    assert stats.held == 8 and stats.damaged_regions == 1
    # lost frames hold the last good one; the next (resync) unit decodes as before
    for i in range(8, 16):
        np.testing.assert_array_equal(frames[i], clean[7])
    np.testing.assert_array_equal(frames[16:], clean[16:])
    with pytest.warns(BitstreamWarning):
        info = inspect_stream(damaged)
    assert info.damaged_bytes == middle.size and sum(info.bytes.values()) + middle.size == len(data)


def test_damaged_keyframe_is_an_error_not_garbage(work, stream, model) -> None:
    path, _ = stream
    data = bytearray(path.read_bytes())
    key = units_of(path)[1]
    data[key.offset + key.size // 2] ^= 0x01
    bad = work / "badkey.iwc"
    bad.write_bytes(bytes(data))
    with pytest.warns(BitstreamWarning), pytest.raises(BitstreamError, match="keyframe"):
        decode_frames(bad, model, QUIET_DEC)


def test_forged_frame_index_cannot_inflate_the_output(stream, model) -> None:
    params = next(read_units(stream[0]))
    key = next(u for u in read_units(stream[0]) if isinstance(u, KeyframeUnit))
    enc = KeypointEncoder(params, find_entropy_model(params.entropy_id))
    kp = np.full((10, 3), 0.5, np.float32)
    far = 2**31
    buf = io.BytesIO()
    w = StreamWriter(buf)
    w.write(params)
    w.write(key)
    w.write(enc.encode([KeypointFrame(far, params.nominal_pts(far), kp)]))
    w.finish()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BitstreamWarning)
        with pytest.raises(BitstreamError, match="skips"):
            decode_frames(buf.getvalue(), model, QUIET_DEC)


def test_incremental_decoder_holds_lost_units_in_order(stream, model) -> None:
    """Live-call use: units fed one by one, some never arrive."""
    units = list(read_units(stream[0]))
    clean = Decoder(model, units[0])
    ref = [f for u in units[1:] for f in clean.push(u)]
    dec = Decoder(model, units[0])
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BitstreamWarning)
        for u in units[1:]:
            if isinstance(u, KeypointUnit) and u.first_index == 0:
                continue  # the first keypoint unit is lost: nothing shown yet
            out += dec.push(u)
    assert [f.index for f in out] == list(range(CLIP_FRAMES))
    assert all(f.held for f in out[:8]) and not any(f.held for f in out[8:])
    keyframe = decode_keyframe(units[1].data, units[1].codec)
    for f in out[:8]:
        np.testing.assert_array_equal(f.rgb, keyframe)  # before any rendered frame
    for a, b in zip(out[8:], ref[8:]):
        np.testing.assert_array_equal(a.rgb, b.rgb)
    assert dec.stats.held == 8 and dec.stats.rendered == 16 and dec.finished
    assert isinstance(units[-1], EndUnit)


# -- writer -----------------------------------------------------------------------------------


def test_writer_failure_leaves_no_file(tmp_path: Path) -> None:
    out = tmp_path / "x.mp4"
    with pytest.raises(RuntimeError), VideoWriter(out, 64, 64, Fraction(25)) as w:
        w.write(np.zeros((64, 64, 3), np.uint8))
        raise RuntimeError("decode failed")
    assert not out.exists() and not temporary_path(out).exists()


def test_writer_refuses_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(IWCodecError, match=r"\.avi"):
        write_video(tmp_path / "x.avi", np.zeros((1, 64, 64, 3), np.uint8), Fraction(25))
