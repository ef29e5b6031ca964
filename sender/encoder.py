"""The offline encoder: a video file in, an iwcodec stream (``.iwc``) out.

Pipeline (each stage a function, ``encode_file`` chains them):

1. :func:`stream_crops`: the first pass finds the face in every frame and smooths the crop
   boxes (``sender.crop``); which frames are coded as faces follows from it
   (``sender.core.face_mask``); the second pass cuts the crops at the model's resolution,
   with each frame's real time;
2. :func:`detect_batch`: the model's keypoint detector, a batch of crops at a time (paper
   section 3: K locations and a strength per keypoint);
3. :func:`encode_crops`: a parameter unit, then keyframes (an image codec through PyAV),
   entropy-coded keypoint units and NO_FACE units in frame order (``sender.core.SendCore``,
   shared with calls), an end unit.

The first keyframe is the first frame with a face, and each face that comes back after a
stretch without one starts with a keyframe of its own. Further keyframes follow a policy
(``sender.keyframes``; ``EncodeOptions.keyframe_policy``): by default the frames named in
``EncodeOptions.keyframe_indices`` (the evaluation's "2 sources" operating point: first +
middle frame); or one every N seconds, or where the sender's quality estimate says the
receiver's picture has drifted from the true frame (within a keyframe budget or not). Each is
written just before the first unit that uses it, and every frame is rebuilt from the 1-3
keyframes of its face segment nearest in pose (paper section 3: attention over the keys of
several source frames at once), so the stream stays causal. Byte counts come from the bytes
the stream writer really wrote.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    KEYFRAME_SLOTS,
    TIMESCALE,
    EntropyModel,
    Fill,
    ImageCodec,
    KeyframePacer,
    KeyframeUnit,
    KeypointUnit,
    NoFaceUnit,
    ParamsUnit,
    Predictor,
    StreamWriter,
    load_prior,
)
from bitstream.quant import DEFAULT_S_STEPS, DEFAULT_XY_STEPS
from bitstream.units import MAX_REFS
from codec.inference import to_images
from codec.model import ImplicitWarpingModel
from iwcodec.errors import (
    BitstreamError,
    InputError,
    IWCodecError,
    ModelMismatchError,
    NoFaceError,
)
from iwcodec.keyframe import DEFAULT_CODEC, DEFAULT_QUALITY
from iwcodec.outputs import check_output
from sender.core import Face, SendCore, face_mask, frame_ticks
from sender.crop import CropConfig, CroppedClip, crop_video, iter_crops, track_video
from sender.keyframes import FixedKeyframes, KeyframePolicy, KeyframeSet
from sender.render_check import LocalRender

KEYFRAME_ID = 0


@dataclass(frozen=True)
class EncodeOptions:
    """Runtime options of the encoder (the model's own settings come with its weights).

    Attributes:
        keyframe_codec, keyframe_quality: image codec of the keyframe and its quality
            (``iwcodec.keyframe`` defaults, chosen by the keyframe codec study).
        xy_steps, s_steps: keypoint quantization (docs/bitstream.md 5.1).
        entropy_table: shipped prior table (``bitstream.load_prior``); ``None`` picks the one
            fitted for ``xy_steps``/``s_steps`` when it exists, else the default table.
        predictor, frames_per_unit, resync_period: keypoint coding (docs/bitstream.md 5, 7).
        batch_size: frames per keypoint-detector call.
        max_frames: encode at most this many frames (``None``: all).
        progress: show a progress bar on a terminal.
        keyframe_indices: frames sent as keyframes, increasing, starting with 0 (at most 16);
            frame i is rebuilt from every keyframe of its face segment at or before i. A frame
            without a face is never a keyframe: the first face frame after it is.
        no_face: what the receiver shows for frames without a face (``bitstream.Fill``).
        keyframe_policy: makes the policy of further keyframes (``sender.keyframes``, e.g.
            ``QualityKeyframes`` or ``functools.partial(BudgetKeyframes, 2.0)``); None: the
            frames of ``keyframe_indices``.
        keyframe_set: keyframes the receiver keeps for this stream, 1..16; new ones replace
            the least recently used (``sender.keyframes.KeyframeSet``).
        render_check: render every frame as the receiver will, and send the nearest keyframe's
            own pose unless the render beats its decoded picture on both PSNR and LPIPS
            (``sender.render_check``; one render per frame: meant for a GPU).
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
    no_face: Fill = Fill.BLANK
    keyframe_policy: Callable[[], KeyframePolicy] | None = None
    keyframe_set: int = KEYFRAME_SLOTS
    render_check: bool = False


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
    no_face_frames: int = 0  # frames coded as NO_FACE units
    frames_as_keyframe: int = 0  # sent with their keyframe's own pose (render_check)
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
        coded = self.frames - self.no_face_frames
        per_frame = self.bytes_keypoints / coded if coded else 0.0
        return (
            f"{self.frames} frames ({self.duration:.2f} s at {fps} fps, {self.width}x{self.height}"
            f" face crop) in {self.bytes_total} bytes: {self.kbps_total:.2f} kbps = keyframe "
            f"{self.kbps_keyframes:.2f} ({self.bytes_keyframes} B) + keypoints "
            f"{self.kbps_keypoints:.2f} ({per_frame:.2f} B/frame) + headers "
            f"{self.kbps(self.bytes_params + self.bytes_end):.2f}"
            + (f"; {self.no_face_frames} frames without a face" if self.no_face_frames else "")
            + (
                f"; {self.frames_as_keyframe} frames shown as their keyframe (render check)"
                if self.frames_as_keyframe
                else ""
            )
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


def send_core(
    model: ImplicitWarpingModel,
    params: ParamsUnit,
    table: EntropyModel,
    options: EncodeOptions,
    frames_per_unit: int,
    pacer: KeyframePacer | None = None,
) -> SendCore:
    """The send core of a stream coded with ``options`` (files and calls alike), closed on the
    model's own detector: a keyframe's frame is sent with the keypoints of the decoded keyframe.
    ``frames_per_unit`` and ``pacer`` are the use's (files: ``options.frames_per_unit`` and no
    pacing; calls: a message's frames and ``bitstream.pacing.SENDER``)."""
    return SendCore(
        params,
        table,
        frames_per_unit=frames_per_unit,
        resync_period=options.resync_period,
        keyframe_codec=options.keyframe_codec,
        keyframe_quality=options.keyframe_quality,
        fill=options.no_face,
        detect=lambda picture: detect_batch(model, picture[None])[0],
        pacer=pacer,
        policy=keyframe_policy(options),
        keyframes=KeyframeSet(options.keyframe_set, image_size=params.width),
        local=LocalRender(model) if options.render_check else None,
    )


def keyframe_policy(options: EncodeOptions) -> KeyframePolicy:
    """A fresh policy of further keyframes for one stream (policies keep state)."""
    if options.keyframe_policy is None:
        return FixedKeyframes(check_keyframe_indices(options.keyframe_indices))
    return options.keyframe_policy()


@torch.inference_mode()
def detect_batch(model: ImplicitWarpingModel, frames: np.ndarray) -> np.ndarray:
    """Keypoints of a batch: (B, H, W, 3) uint8 -> (B, K, 3) float32 rows (x, y, strength),
    x and y in [-1, 1], strength in [0, 1] (paper section 3), on the model's device."""
    kp, strength = model.detect(to_images(frames, device_of(model)))  # (B, K, 2), (B, K)
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


def check_keyframe_indices(indices: Sequence[int]) -> tuple[int, ...]:
    """The keyframe policy's frame indices: increasing, starting with 0, at most 16."""
    out = tuple(int(i) for i in indices)
    if not out or out[0] != 0 or any(b <= a for a, b in zip(out, out[1:])):
        raise InputError(f"keyframe indices must increase and start with 0, got {list(indices)}")
    if len(out) > MAX_REFS:
        raise InputError(f"at most {MAX_REFS} keyframes can be referred to, got {len(out)}")
    return out


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
    face: Sequence[bool] | np.ndarray | None = None,
    seconds: Sequence[float] | None = None,
) -> EncodeStats:
    """Encode face crops, each (S, S, 3) uint8 at the model's size ``S``, into a complete
    stream on ``out``: PARAMS, then KEYFRAME, KEYPOINTS and NO_FACE units in frame order
    (``sender.core.SendCore``), END.

    ``face`` (T,) bool marks the frames coded as faces (``sender.core.face_mask``; ``None``:
    all of them); ``seconds`` gives each frame's time (``None``: the nominal times at ``fps``;
    real times make a variable-rate input decode at its own times). ``crops`` is consumed once,
    a batch at a time, and units are written as they are made, so a long clip is never held
    in memory. ``total`` (the expected count) only sizes the progress bar. Returns the bytes
    written per unit type.
    """
    start = time.perf_counter()
    size = model.cfg.image_size
    indices = check_keyframe_indices(options.keyframe_indices)
    table = entropy_model(options)
    params = stream_params(model, fps, options, table)
    core = send_core(model, params, table, options, options.frames_per_unit)
    writer = StreamWriter(out)
    counts = dict.fromkeys(("params", "keyframes", "keypoints", "end"), 0)
    counts["params"] = sum(writer.write(unit) for unit in core.start())
    units_written = frames = faces = 0

    def write(units: list) -> None:
        nonlocal units_written
        for unit in units:
            n = writer.write(unit)
            kind = "keyframes" if isinstance(unit, KeyframeUnit) else "keypoints"
            counts[kind] += n
            units_written += isinstance(unit, (KeypointUnit, NoFaceUnit))

    last_pts = -1
    with tqdm(
        total=total, desc="encoding", unit="frame", disable=None if options.progress else True
    ) as bar:
        for batch in batches((check_crop(c, size) for c in crops), options.batch_size):
            kp = detect_batch(model, batch)  # (B, K, 3)
            for crop, keypoints in zip(batch, kp):
                i = frames
                frames += 1
                pts = params.nominal_pts(i)
                if seconds is not None:  # (a list that the crops' reader fills as it goes)
                    pts = frame_ticks(seconds[i], i, params, last_pts)
                last_pts = pts
                if face is not None and i >= len(face):
                    raise InputError(f"{len(face)} face flags for more frames")
                if face is not None and not face[i]:
                    write(core.frame(i, pts, None))
                    continue
                write(core.frame(i, pts, Face(crop, keypoints), t=pts / TIMESCALE))
                faces += 1
            bar.update(len(batch))
    if frames == 0:
        raise InputError("no frames to encode")
    if faces == 0:
        raise NoFaceError("no frame has a face: there is nothing to encode")
    if face is not None and len(face) != frames:
        raise InputError(f"{len(face)} face flags for {frames} frames")
    if indices[-1] >= frames:
        raise InputError(f"keyframe at frame {indices[-1]}, but the clip has {frames} frames")
    write(core.flush())
    counts["end"] = writer.finish()
    return EncodeStats(
        frames=frames,
        fps=params.fps,
        width=params.width,
        height=params.height,
        keyframes=core.keyframes_sent,
        keypoint_units=units_written,
        bytes_params=counts["params"],
        bytes_keyframes=counts["keyframes"],
        bytes_keypoints=counts["keypoints"],
        bytes_end=counts["end"],
        no_face_frames=frames - faces,
        frames_as_keyframe=core.frames_held_to_keyframe,
        seconds=time.perf_counter() - start,
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


@dataclass
class CropStream:
    """A file's face crops, streamed (:func:`stream_crops`): ``crops`` yields (S, S, 3) uint8
    once; ``face`` (T,) bool marks the frames coded as faces; ``seconds`` fills with each
    frame's time as ``crops`` is consumed."""

    fps: Fraction
    count: int
    face: np.ndarray
    crops: Iterator[np.ndarray]
    seconds: list[float]


def stream_crops(path: str | Path, size: int, max_frames: int | None = None) -> CropStream:
    """The face crops of a video file, streamed. Two passes over the file, like
    ``sender.crop.crop_video`` (boxes first, smoothed without lag, then the cuts), but only
    the boxes are held in memory."""
    check_max_frames(max_frames)
    boxes, detected, fps = track_video(path, CropConfig(size=size))
    count = len(boxes) if max_frames is None else min(len(boxes), max_frames)
    seconds: list[float] = []

    def crops() -> Iterator[np.ndarray]:
        for t, crop in iter_crops(path, boxes[:count], size):
            seconds.append(t)
            yield crop
        if len(seconds) != count:
            raise InputError(
                f"{path}: decoded {len(seconds)} frames on the second pass, {count} on the first"
            )

    face = face_mask(detected[:count], float(fps))
    return CropStream(fps, count, face, crops(), seconds)


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
    clip = stream_crops(in_path, model.cfg.image_size, options.max_frames)
    return write_atomically(
        out_path,
        lambda f: encode_crops(
            clip.crops, clip.fps, model, f, options, clip.count, clip.face, clip.seconds
        ),
    )


__all__: Sequence[str] = [
    "EncodeOptions",
    "EncodeStats",
    "CropStream",
    "crop_input",
    "stream_crops",
    "detect_keypoints",
    "encode_crops",
    "encode_file",
    "encode_frames",
    "entropy_model",
    "check_keyframe_indices",
    "stream_params",
]
