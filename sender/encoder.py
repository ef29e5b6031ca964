"""The offline encoder: a video file in, an iwcodec stream (``.iwc``) out.

Pipeline (each stage a function, ``encode_file`` chains them):

1. :func:`crop_input`: decode the file and cut the steady square face crop at the model's
   resolution (``sender.crop.crop_video``, the offline smoother);
2. :func:`detect_keypoints`: the model's keypoint detector on every crop, in batches
   (paper section 3: K locations and a strength per keypoint);
3. :func:`keypoint_frames`: one :class:`bitstream.KeypointFrame` per frame, at its nominal time;
4. :func:`encode_frames`: a parameter unit, the first frame as the keyframe (an image codec
   through PyAV), the keypoints as entropy-coded units, an end unit.

The keyframe is the first frame. ``EncodeOptions.keyframe_indices`` can name further frames to
send as keyframes (the evaluation's "2 sources" operating point: first + middle frame); each is
written just before the first keypoint unit that uses it, and every frame from it on is rebuilt
from all keyframes sent so far (paper section 3: attention over the keys of several source
frames at once), so the stream stays causal. A smarter policy is a separate piece of work. Byte
counts come from the bytes the stream writer really wrote.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from tqdm import tqdm

from bitstream import (
    DEFAULT_FRAMES_PER_UNIT,
    DEFAULT_RESYNC_PERIOD,
    EntropyModel,
    ImageCodec,
    KeyframeUnit,
    KeypointEncoder,
    KeypointFrame,
    ParamsUnit,
    Predictor,
    StreamWriter,
    encode_track,
    load_prior,
)
from bitstream.quant import DEFAULT_S_STEPS, DEFAULT_XY_STEPS
from bitstream.units import MAX_REFS
from codec.model import ImplicitWarpingModel
from iwcodec.errors import BitstreamError, InputError, IWCodecError, ModelMismatchError
from iwcodec.outputs import check_output
from sender.crop import CropConfig, CroppedClip, crop_video, iter_crops, track_video
from sender.keyframe import DEFAULT_CODEC, DEFAULT_QUALITY, encode_keyframe

KEYFRAME_ID = 0


@dataclass(frozen=True)
class EncodeOptions:
    """Runtime options of the encoder (the model's own settings come with its weights).

    Attributes:
        keyframe_codec, keyframe_quality: image codec of the keyframe and its quality
            (``sender.keyframe`` defaults, chosen by the keyframe codec study).
        xy_steps, s_steps: keypoint quantization (docs/bitstream.md 5.1).
        entropy_table: shipped prior table (``bitstream.load_prior``); ``None`` picks the one
            fitted for ``xy_steps``/``s_steps`` when it exists, else the default table.
        predictor, frames_per_unit, resync_period: keypoint coding (docs/bitstream.md 5, 7).
        batch_size: frames per keypoint-detector call.
        max_frames: encode at most this many frames (``None``: all).
        progress: show a progress bar on a terminal.
        keyframe_indices: frames sent as keyframes, increasing, starting with 0 (at most 16);
            frame i is rebuilt from every keyframe at or before i.
    """

    keyframe_codec: ImageCodec = DEFAULT_CODEC
    keyframe_quality: int = DEFAULT_QUALITY
    xy_steps: int = DEFAULT_XY_STEPS
    s_steps: int = DEFAULT_S_STEPS
    entropy_table: str | None = None
    predictor: Predictor = Predictor.PREVIOUS
    frames_per_unit: int = DEFAULT_FRAMES_PER_UNIT
    resync_period: int = DEFAULT_RESYNC_PERIOD
    batch_size: int = 32
    max_frames: int | None = None
    progress: bool = True
    keyframe_indices: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class EncodeStats:
    """What was written: bytes per unit type (framing included), frames and timing."""

    frames: int
    fps: Fraction
    width: int
    height: int
    keyframes: int
    keypoint_units: int
    bytes_params: int
    bytes_keyframes: int
    bytes_keypoints: int
    bytes_end: int
    seconds: float = field(default=0.0, compare=False)  # wall time of the encode

    @property
    def bytes_total(self) -> int:
        return self.bytes_params + self.bytes_keyframes + self.bytes_keypoints + self.bytes_end

    @property
    def duration(self) -> float:
        """Seconds of video at the nominal rate."""
        return self.frames / float(self.fps)

    def kbps(self, nbytes: int) -> float:
        """``nbytes`` spread over the clip's duration, in kbit/s."""
        return nbytes * 8 / self.duration / 1000 if self.frames else 0.0

    @property
    def kbps_total(self) -> float:
        return self.kbps(self.bytes_total)

    @property
    def kbps_keyframes(self) -> float:
        return self.kbps(self.bytes_keyframes)

    @property
    def kbps_keypoints(self) -> float:
        """Keypoint units only (parameter and end units are counted in the total)."""
        return self.kbps(self.bytes_keypoints)

    def summary(self) -> str:
        """One paragraph for the command line."""
        fps = str(self.fps) if self.fps.denominator == 1 else f"{float(self.fps):.3f}"
        per_frame = self.bytes_keypoints / self.frames if self.frames else 0.0
        return (
            f"{self.frames} frames ({self.duration:.2f} s at {fps} fps, {self.width}x{self.height}"
            f" face crop) in {self.bytes_total} bytes: {self.kbps_total:.2f} kbps = keyframe "
            f"{self.kbps_keyframes:.2f} ({self.bytes_keyframes} B) + keypoints "
            f"{self.kbps_keypoints:.2f} ({per_frame:.2f} B/frame) + headers "
            f"{self.kbps(self.bytes_params + self.bytes_end):.2f}"
        )


def device_of(model: ImplicitWarpingModel) -> torch.device:
    return next(model.parameters()).device


def crop_input(path: str | Path, size: int, max_frames: int | None = None) -> CroppedClip:
    """Face crops of a video file, (T, size, size, 3) uint8, as the encoder codes them.

    Raises InputError for an unusable file and NoFaceError when no face is found.
    """
    check_max_frames(max_frames)
    clip = crop_video(path, size=size)
    if max_frames is not None and max_frames < len(clip.frames):
        clip = CroppedClip(
            clip.path,
            clip.frames[:max_frames],
            clip.fps,
            clip.pts[:max_frames],
            clip.boxes[:max_frames],
            clip.detected[:max_frames],
            clip.config,
        )
    return clip


def check_max_frames(max_frames: int | None) -> None:
    if max_frames is not None and max_frames < 1:
        raise InputError(f"the number of frames to encode must be at least 1, got {max_frames}")


def check_finite_keypoints(keypoints: np.ndarray) -> np.ndarray:
    """Refuse NaN or infinite keypoints (broken weights): no quantizer can code them."""
    if not np.isfinite(keypoints).all():
        raise ModelMismatchError(
            "the model's keypoint detector gives NaN or infinite values: the weights are broken "
            "(e.g. a diverged training run); encode with other weights (--weights)"
        )
    return keypoints


def to_tensor(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, H, W) float32 in [0, 1] on ``device``."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    return x.permute(0, 3, 1, 2).float().div_(255)


def batches(frames: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Consecutive frames stacked into (<= size, H, W, 3) arrays."""
    batch: list[np.ndarray] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


@torch.inference_mode()
def detect_batch(model: ImplicitWarpingModel, frames: np.ndarray) -> np.ndarray:
    """Keypoints of a batch: (B, H, W, 3) uint8 -> (B, K, 3) float32 rows (x, y, strength),
    x and y in [-1, 1], strength in [0, 1] (paper section 3), on the model's device."""
    kp, strength = model.detect(to_tensor(frames, device_of(model)))  # (B, K, 2), (B, K)
    out = check_finite_keypoints(torch.cat([kp, strength[..., None]], -1).float().cpu().numpy())
    # The detector's softmax expectation keeps x, y inside [-1, 1] and its strength is a
    # sigmoid; the clip only guards against float round-off before quantization.
    out[..., :2] = np.clip(out[..., :2], -1, 1)
    out[..., 2] = np.clip(out[..., 2], 0, 1)
    return out


def detect_keypoints(
    model: ImplicitWarpingModel,
    frames: Iterable[np.ndarray],
    batch_size: int = 32,
    progress: bool = True,
    total: int | None = None,
) -> np.ndarray:
    """Keypoints of every frame (an array (T, H, W, 3) uint8 or any iterable of (H, W, 3)
    frames, consumed one batch at a time) -> (T, K, 3) float32."""
    total = len(frames) if total is None and hasattr(frames, "__len__") else total
    out = []
    with tqdm(
        total=total, desc="keypoints", unit="frame", disable=None if progress else True
    ) as bar:
        for batch in batches(frames, batch_size):
            out.append(detect_batch(model, batch))
            bar.update(len(batch))
    if not out:
        raise InputError("no frames to encode")
    return np.concatenate(out)  # (T, K, 3)


def keypoint_frames(
    keypoints: np.ndarray,
    params: ParamsUnit,
    refs: tuple[int, ...] = (KEYFRAME_ID,),
    frame_refs: Sequence[tuple[int, ...]] | None = None,
) -> list[KeypointFrame]:
    """(T, K, 3) keypoints -> frames at their nominal times ``params.nominal_pts(i)``, each
    referring to ``refs`` (or to ``frame_refs[i]`` when given, e.g. from :func:`refs_per_frame`).

    The offline codec is constant frame rate: the decoder writes frame i at i / fps, so
    variable-rate input is retimed to its nominal rate (as the crop already treats it).
    """
    return [
        KeypointFrame(
            index=i,
            pts=params.nominal_pts(i),
            keypoints=kp,
            refs=refs if frame_refs is None else frame_refs[i],
        )
        for i, kp in enumerate(keypoints)
    ]


def check_keyframe_indices(indices: Sequence[int]) -> tuple[int, ...]:
    """The keyframe policy's frame indices: increasing, starting with 0, at most 16."""
    out = tuple(int(i) for i in indices)
    if not out or out[0] != 0 or any(b <= a for a, b in zip(out, out[1:])):
        raise InputError(f"keyframe indices must increase and start with 0, got {list(indices)}")
    if len(out) > MAX_REFS:
        raise InputError(f"at most {MAX_REFS} keyframes can be referred to, got {len(out)}")
    return out


def refs_per_frame(n_frames: int, keyframe_indices: Sequence[int]) -> list[tuple[int, ...]]:
    """Keyframe ids each frame is rebuilt from: keyframe j (sent at ``keyframe_indices[j]``)
    serves every frame from its own on, so no frame waits for a later picture."""
    refs, sent = [], 0
    for i in range(n_frames):
        while sent < len(keyframe_indices) and keyframe_indices[sent] <= i:
            sent += 1
        refs.append(tuple(range(sent)))
    return refs


def entropy_model(options: EncodeOptions) -> EntropyModel:
    """The prior table for the options' quantization (see ``EncodeOptions.entropy_table``)."""
    if options.entropy_table is not None:
        return load_prior(options.entropy_table)
    try:
        return load_prior(f"xy{options.xy_steps}_s{options.s_steps}")
    except BitstreamError:
        return load_prior()


def stream_params(
    model: ImplicitWarpingModel, fps: Fraction, options: EncodeOptions, table: EntropyModel
) -> ParamsUnit:
    """The parameter unit: the model's resolution and K, the input's rate, the ids of the
    weights and of the entropy table."""
    if model.weights_id is None:
        raise ModelMismatchError(
            "the model has no weights id: load it from a weights file (codec.weights.load_model)"
        )
    fps = Fraction(fps).limit_denominator(1_000_000)
    size = model.cfg.image_size
    return ParamsUnit(
        width=size,
        height=size,
        fps_num=fps.numerator,
        fps_den=fps.denominator,
        num_keypoints=model.cfg.num_kp,
        weights_id=model.weights_id,
        entropy_id=table.id,
        xy_steps=options.xy_steps,
        s_steps=options.s_steps,
        predictor=options.predictor,
    )


def check_crop(frame: np.ndarray, size: int) -> np.ndarray:
    if frame.shape != (size, size, 3) or frame.dtype != np.uint8:
        raise InputError(
            f"frames must be ({size}, {size}, 3) uint8 crops at the model's resolution, "
            f"got {frame.dtype} {frame.shape}"
        )
    return frame


def encode_crops(
    crops: Iterable[np.ndarray],
    fps: Fraction,
    model: ImplicitWarpingModel,
    out: BinaryIO,
    options: EncodeOptions = EncodeOptions(),
    total: int | None = None,
) -> EncodeStats:
    """Encode face crops, each (S, S, 3) uint8 at the model's size ``S``, into a complete
    stream on ``out``: PARAMS, one KEYFRAME (the first crop), KEYPOINTS units, END.

    ``crops`` is consumed once, a batch at a time, so a long clip is never held in memory
    (only the crops named by ``options.keyframe_indices`` are kept); ``total`` (the expected
    count) only sizes the progress bar. Returns the bytes written per unit type.
    """
    start = time.perf_counter()
    size = model.cfg.image_size
    indices = check_keyframe_indices(options.keyframe_indices)
    pictures: dict[int, np.ndarray] = {}  # later keyframes' crops, by frame index

    def checked() -> Iterator[np.ndarray]:
        for i, crop in enumerate(crops):
            crop = check_crop(crop, size)
            if i in indices[1:]:
                pictures[i] = crop
            yield crop

    frames = checked()
    first = next(frames, None)
    if first is None:
        raise InputError("no frames to encode")
    table = entropy_model(options)
    params = stream_params(model, fps, options, table)
    writer = StreamWriter(out)
    bytes_params = writer.write(params)
    bytes_keyframes = writer.write(keyframe_unit(KEYFRAME_ID, 0, first, options))
    kp = detect_keypoints(
        model, itertools.chain([first], frames), options.batch_size, options.progress, total
    )  # (T, K, 3)
    if indices[-1] >= len(kp):
        raise InputError(f"keyframe at frame {indices[-1]}, but the clip has {len(kp)} frames")
    later = [
        keyframe_unit(KEYFRAME_ID + j, i, pictures[i], options)
        for j, i in enumerate(indices[1:], start=1)
    ]
    coder = KeypointEncoder(params, table, resync_period=options.resync_period)
    track = keypoint_frames(kp, params, frame_refs=refs_per_frame(len(kp), indices))
    units = encode_track(track, coder, options.frames_per_unit)
    bytes_keypoints = 0
    for unit in units:
        # A keyframe goes out just before the first unit that refers to it.
        while later and later[0].frame_index <= unit.first_index:
            bytes_keyframes += writer.write(later.pop(0))
        bytes_keypoints += writer.write(unit)
    bytes_end = writer.finish()
    return EncodeStats(
        frames=len(kp),
        fps=params.fps,
        width=params.width,
        height=params.height,
        keyframes=len(indices),
        keypoint_units=len(units),
        bytes_params=bytes_params,
        bytes_keyframes=bytes_keyframes,
        bytes_keypoints=bytes_keypoints,
        bytes_end=bytes_end,
        seconds=time.perf_counter() - start,
    )


def keyframe_unit(
    keyframe_id: int, frame_index: int, crop: np.ndarray, options: EncodeOptions
) -> KeyframeUnit:
    """One crop (S, S, 3) uint8 coded as a keyframe with the options' image codec."""
    image = encode_keyframe(crop, codec=options.keyframe_codec, quality=options.keyframe_quality)
    return KeyframeUnit(
        keyframe_id=keyframe_id, frame_index=frame_index, codec=options.keyframe_codec, data=image
    )


def encode_frames(
    frames: np.ndarray,
    fps: Fraction,
    model: ImplicitWarpingModel,
    out: BinaryIO,
    options: EncodeOptions = EncodeOptions(),
) -> EncodeStats:
    """Encode face crops held in memory, (T, S, S, 3) uint8 (e.g. ``crop_input(...).frames``,
    so that evaluation compares against exactly what was coded)."""
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise InputError(f"frames must be (T, S, S, 3) uint8, got {frames.dtype} {frames.shape}")
    return encode_crops(iter(frames), fps, model, out, options, total=len(frames))


def write_atomically(path: Path, write) -> EncodeStats:
    """Run ``write(fileobj)`` on a temporary file next to ``path``; rename it on success."""
    tmp = path.with_name(f".{path.name}.part")
    try:
        with open(tmp, "wb") as f:
            stats = write(f)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise IWCodecError(f"{path}: cannot be written ({exc.strerror or exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return stats


def stream_crops(path: str | Path, size: int, max_frames: int | None = None):
    """The face crops of a video file, streamed: (fps, expected count, iterator of
    (size, size, 3) uint8). Two passes over the file, like ``sender.crop.crop_video`` (boxes
    first, smoothed without lag, then the cuts), but only the boxes are held in memory."""
    check_max_frames(max_frames)
    boxes, _, fps = track_video(path, CropConfig(size=size))
    count = len(boxes) if max_frames is None else min(len(boxes), max_frames)

    def crops() -> Iterator[np.ndarray]:
        n = 0
        for _, crop in iter_crops(path, boxes[:count], size):
            n += 1
            yield crop
        if n != count:
            raise InputError(f"{path}: decoded {n} frames on the second pass, {count} on the first")

    return fps, count, crops()


def encode_file(
    in_path: str | Path,
    out_path: str | Path,
    model: ImplicitWarpingModel,
    options: EncodeOptions = EncodeOptions(),
) -> EncodeStats:
    """Video file -> ``.iwc`` stream: crop, detect keypoints, code. Memory does not grow with
    the clip's length; the output appears only when it is complete."""
    out_path = check_output(out_path)  # not a folder
    if not out_path.parent.is_dir():
        raise IWCodecError(f"{out_path}: the folder {out_path.parent} does not exist")
    fps, count, crops = stream_crops(in_path, model.cfg.image_size, options.max_frames)
    return write_atomically(
        out_path, lambda f: encode_crops(crops, fps, model, f, options, total=count)
    )


__all__: Sequence[str] = [
    "EncodeOptions",
    "EncodeStats",
    "crop_input",
    "stream_crops",
    "detect_keypoints",
    "encode_crops",
    "encode_file",
    "encode_frames",
    "entropy_model",
    "keypoint_frames",
    "keyframe_unit",
    "refs_per_frame",
    "check_keyframe_indices",
    "stream_params",
]
