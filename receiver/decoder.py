"""The receiver: an iwcodec stream in, rebuilt frames out.

:class:`Decoder` is incremental (feed units in arrival order, get frames in index order), so the
offline decoder and a live call share it. Per stream it:

1. refuses a stream made for other weights, another resolution or another K
   (:class:`ModelMismatchError`, naming both sides);
2. keeps the stream's keyframe set (``receiver.sources.SourceSet``, the receive core it
   shares with a call's receiver): each keyframe decoded once, its keypoints and source keys /
   values / pixels cached in the slot its id names;
3. decodes the keypoint units (``bitstream.KeypointDecoder``) and renders every frame from the
   keyframes its unit refers to (``SourceSet.render``: ``model.render``, eq. 1), in batches,
   under ``torch.inference_mode`` on the model's device;
4. shows every lost frame (damaged or missing units, a missing keyframe) as the last frame
   shown before it ("held"), counted and reported with a :class:`BitstreamWarning`, so the
   output keeps the stream's frame count and timing;
5. shows the frames of a NO_FACE unit as the sender chose (``bitstream.Fill``: a black
   picture, or the last picture shown), never a face rendered from a keyframe that is not in
   the picture.

Files (:func:`decode_file`): a stream without its end unit is truncated, and its true length
is unknown. The decoder then writes no output and raises :class:`TruncatedStreamError`;
with ``DecodeOptions(partial=True)`` it writes the frames it could decode and still raises, so a
cut file never turns into an output that looks complete (docs/usage.md).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bitstream import (
    BitstreamWarning,
    EndUnit,
    EntropyModel,
    Fill,
    KeyframeUnit,
    KeypointDecoder,
    KeypointFrame,
    KeypointUnit,
    NoFaceUnit,
    ParamsUnit,
    TruncatedStreamError,
    Unit,
    UnitRecord,
    UnitType,
    load_prior,
    scan_stream,
)
from bitstream.budget import DEFAULT_MAX_GAP_SECONDS, FrameBudget
from bitstream.stream import Source
from codec.model import ImplicitWarpingModel
from iwcodec.errors import BitstreamError, InputError, IWCodecError, ModelMismatchError
from receiver.audit import StreamAudit, nothing_to_show, warn_bad_keyframe
from receiver.sources import SourceSet, device_of
from receiver.writer import VideoWriter, output_format


@dataclass(frozen=True)
class DecodeOptions:
    """Runtime options of the decoder.

    Attributes:
        batch_size: frames per ``model.render`` call; ``None`` picks one for the model's device
            (:func:`default_batch_size`: small on a CPU, where a batch costs memory, not time).
        max_gap_seconds: a stream that skips more than this much video at once (a lost run
            longer than any damage a real file shows, or a forged frame index), or that loses
            more frames than it decodes by more than this, is refused rather than filled with
            held frames (``bitstream.budget.FrameBudget``).
        partial: on a truncated file, write the frames decoded so far (and still raise).
        progress: show a progress bar on a terminal.
    """

    batch_size: int | None = None
    max_gap_seconds: float = DEFAULT_MAX_GAP_SECONDS
    partial: bool = False
    progress: bool = True


@dataclass(frozen=True)
class DecodedFrame:
    """One output picture. ``rgb`` (H, W, 3) uint8 is read-only and may be shared between held
    frames; ``held`` marks a lost frame shown as the picture before it, ``no_face`` a frame the
    sender found no face in (shown as its NO_FACE unit says)."""

    index: int
    pts: int
    rgb: np.ndarray = field(repr=False)
    held: bool = False
    no_face: bool = False


@dataclass
class DecodeStats:
    """Counts of a decode; ``frames = rendered + held + no_face``."""

    width: int
    height: int
    fps: Fraction
    frames: int = 0
    rendered: int = 0
    held: int = 0
    no_face: int = 0
    keyframes: int = 0
    bad_keyframes: int = 0
    damaged_regions: int = 0  # stretches of bytes the reader skipped
    damaged_bytes: int = 0
    truncated: bool = False
    seconds: float = 0.0

    @property
    def duration(self) -> float:
        return self.frames / float(self.fps)

    def summary(self) -> str:
        """One line for the command line."""
        speed = self.rendered / self.seconds if self.seconds else 0.0
        text = (
            f"{self.frames} frames ({self.duration:.2f} s at {_fps_text(self.fps)} fps, "
            f"{self.width}x{self.height}), {speed:.1f} frames/s"
        )
        if self.held:
            text += f"; {self.held} lost frames show the frame before them"
        if self.no_face:
            text += f"; {self.no_face} frames without a face"
        if self.damaged_regions:
            text += f"; {self.damaged_bytes} damaged bytes skipped"
        return text


def shipped_entropy_models() -> dict[bytes, tuple[str, EntropyModel]]:
    """Every prior table shipped in ``bitstream/tables``, by id."""
    found = {}
    for entry in (resources.files("bitstream") / "tables").iterdir():
        if entry.name.endswith(".json"):
            name = entry.name[: -len(".json")]
            model = load_prior(name)
            found[model.id] = (name, model)
    return found


def find_entropy_model(entropy_id: bytes) -> EntropyModel:
    """The shipped prior table with this id; ModelMismatchError when there is none."""
    models = shipped_entropy_models()
    if entropy_id not in models:
        have = ", ".join(f"{name} ({i.hex()})" for i, (name, _) in sorted(models.items()))
        raise ModelMismatchError(
            f"the stream was coded with entropy table {entropy_id.hex()}, which this "
            f"installation does not have (it has {have})"
        )
    return models[entropy_id][1]


#: Frames per render call by device type. On a CPU a batch buys no speed (the 256 px model
#: decodes 1.5-1.6 frames/s at batches of 1-4 on 2 cores, 0.9 at 16) but costs ~0.17 GB of
#: peak memory per frame (0.8 GB at 2, 3.3 GB at 16): docs/usage.md "Memory".
DEFAULT_BATCH_SIZE = {"cpu": 2}
DEFAULT_BATCH_SIZE_ACCELERATOR = 16
MAX_BATCH_SIZE = 256


def default_batch_size(device: torch.device) -> int:
    """Frames per render call when none is given: small on a CPU, 16 on a GPU."""
    return DEFAULT_BATCH_SIZE.get(device.type, DEFAULT_BATCH_SIZE_ACCELERATOR)


def check_batch_size(batch_size: int | None, device: torch.device) -> int:
    """``batch_size`` checked (1..256), or the device's default for ``None``."""
    if batch_size is None:
        return default_batch_size(device)
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise IWCodecError(f"batch size must be 1..{MAX_BATCH_SIZE} frames, got {batch_size}")
    return batch_size


class Decoder:
    """Incremental receiver: ``push(unit)`` returns the frames it completes, in index order.

    Args:
        model: the implicit-warping model (eval mode, on the device to render on).
        params: the stream's parameter unit.
        first_index: index the stream starts at (0 for files; ``None`` joins a call late).
        batch_size: frames per render call (``None``: :func:`default_batch_size`).
        budget: bound on lost frames, per run and in all, of a file
            (``bitstream.budget.FrameBudget``: it bounds the output of a forged index);
            ``None`` in a call, where loss is a matter of the network.

    Every frame index from the first to the last one seen comes out exactly once: rendered, or
    held (the previous picture; before any picture exists, the keyframe it refers to).
    """

    def __init__(
        self,
        model: ImplicitWarpingModel,
        params: ParamsUnit,
        *,
        first_index: int | None = 0,
        batch_size: int | None = None,
        budget: FrameBudget | None = None,
    ) -> None:
        self.sources = SourceSet(model, params)  # refuses a stream the model cannot rebuild
        self.params = params
        self.batch_size = check_batch_size(batch_size, device_of(model))
        self.budget = budget
        self.stats = DecodeStats(params.width, params.height, params.fps)
        self._keypoints = KeypointDecoder(
            params, find_entropy_model(params.entropy_id), first_index=first_index
        )
        self._last: np.ndarray | None = None  # last picture shown
        self._black: np.ndarray | None = None  # (H, W, 3) zeros, made once
        self._waiting: list[range] = []  # frames lost before any picture existed
        self.finished = False

    @property
    def needs_resync(self) -> bool:
        """True while only a resync unit can be decoded (a call asks the sender for one)."""
        return self._keypoints.needs_resync

    # -- units ----------------------------------------------------------------------------------
    def push(self, unit: Unit) -> list[DecodedFrame]:
        """Take one unit; returns the frames it completes (possibly none)."""
        if isinstance(unit, KeyframeUnit):
            self.add_keyframe(unit)
            return self._release_waiting()
        if isinstance(unit, KeypointUnit):
            result = self._keypoints.decode(unit)
            if self.budget is not None:
                self.budget.add(len(result.frames), result.lost)
            return self._emit(result.frames, result.lost)
        if isinstance(unit, NoFaceUnit):
            result = self._keypoints.skip(unit)
            if self.budget is not None:
                self.budget.add(len(result.no_face), result.lost)
            return self._emit((), result.lost) + self._no_face(unit, result.no_face)
        if isinstance(unit, EndUnit):
            return self.finish(unit.total_frames)
        if isinstance(unit, ParamsUnit):
            if unit != self.params:
                warnings.warn(
                    "a parameter unit that differs from the stream's first was ignored",
                    BitstreamWarning,
                    stacklevel=2,
                )
            return []
        raise TypeError(f"not a unit: {type(unit).__name__}")

    def finish(self, total_frames: int) -> list[DecodedFrame]:
        """End of stream with ``total_frames`` coded: frames missing at the end are held.

        Raises BitstreamError when no frame could be rebuilt at all (no usable keyframe)."""
        result = self._keypoints.finish(total_frames)
        if self.budget is not None:
            self.budget.add(0, result.lost)
        frames = self._emit((), result.lost)
        self.finished = True
        if self._waiting:
            raise nothing_to_show(sum(len(r) for r in self._waiting))
        if self.stats.frames != total_frames:
            warnings.warn(
                f"the end unit says {total_frames} frames were coded, {self.stats.frames} came out",
                BitstreamWarning,
                stacklevel=2,
            )
        return frames

    def add_keyframe(self, unit: KeyframeUnit) -> None:
        """Decode a keyframe into the keyframe set (``receiver.sources.SourceSet``); an
        unusable one is counted and warned about, and frames that refer to it are held."""
        try:
            self.sources.add(unit)
        except BitstreamError as exc:
            self._bad_keyframe(unit, str(exc))
            return
        self.stats.keyframes += 1

    def _bad_keyframe(self, unit: KeyframeUnit, why: str) -> None:
        self.stats.bad_keyframes += 1
        warn_bad_keyframe(unit, why, stacklevel=4)

    # -- frames ---------------------------------------------------------------------------------
    def _emit(self, frames: Iterable[KeypointFrame], lost: Iterable[range]) -> list[DecodedFrame]:
        """Render ``frames`` and hold ``lost`` indices, all in index order."""
        frames = list(frames)
        lost = sorted((r for r in lost if len(r)), key=lambda r: r.start)
        # KeypointDecoder reports lost frames before the unit's own (a gap), or instead of them.
        out: list[DecodedFrame] = []
        for r in lost:
            out += self._hold(r, refs=frames[0].refs if frames else None)
        if frames:
            out += self._render_frames(frames)
        return out

    def _no_face(self, unit: NoFaceUnit, indices: range) -> list[DecodedFrame]:
        """The frames of a NO_FACE unit (``indices``: all of them, or none when it came late)."""
        if not indices:
            return []
        out = self._release_waiting()
        picture = self._last if unit.fill == Fill.HOLD else None
        if picture is None:
            picture = self.sources.blank()
        self._last = picture
        self.stats.no_face += len(indices)
        self.stats.frames += len(indices)
        pts = unit.frame_pts(self.params)
        return out + [DecodedFrame(i, p, picture, no_face=True) for i, p in zip(indices, pts)]

    def _hold(self, lost: range, refs: tuple[int, ...] | None) -> list[DecodedFrame]:
        picture = self._last
        if picture is None:
            picture = self.sources.picture(refs)
        if picture is None:
            self._waiting.append(lost)  # a range: memory does not grow with its length
            return []
        self.stats.held += len(lost)
        self.stats.frames += len(lost)
        return [DecodedFrame(i, self.params.nominal_pts(i), picture, held=True) for i in lost]

    def _release_waiting(self) -> list[DecodedFrame]:
        """Frames lost before any picture existed, now that a keyframe gives one."""
        picture = self.sources.picture()
        if not self._waiting or picture is None:
            return []
        waiting, self._waiting = self._waiting, []
        out = []
        for lost in waiting:
            self.stats.held += len(lost)
            self.stats.frames += len(lost)
            out += [DecodedFrame(i, self.params.nominal_pts(i), picture, held=True) for i in lost]
        return out

    def _render_frames(self, frames: list[KeypointFrame]) -> list[DecodedFrame]:
        out = self._release_waiting()
        refs = frames[0].refs  # a unit's frames share their refs
        missing = self.sources.missing(refs)
        if missing:
            warnings.warn(
                f"{len(frames)} frames ({frames[0].index}..{frames[-1].index}) refer to "
                f"keyframe {missing}, which this receiver does not hold (it never arrived "
                "intact, or a later keyframe replaced it); held",
                BitstreamWarning,
                stacklevel=4,
            )
            return out + self._hold(range(frames[0].index, frames[-1].index + 1), refs)
        for start in range(0, len(frames), self.batch_size):
            part = frames[start : start + self.batch_size]
            images = self.sources.render(refs, np.stack([f.keypoints for f in part]))
            for f, rgb in zip(part, images):
                rgb.setflags(write=False)
                out.append(DecodedFrame(f.index, f.pts, rgb))
            self._last = images[-1]
        self.stats.rendered += len(frames)
        self.stats.frames += len(frames)
        return out


def read_header(records: Iterator[UnitRecord], source: Source) -> UnitRecord:
    """The parameter unit's record; header errors name the file they come from."""
    try:
        return next(records)
    except BitstreamError as exc:
        if isinstance(source, (str, os.PathLike)):
            raise type(exc)(f"{os.fspath(source)}: {exc}") from None
        raise


class StreamDecoding:
    """Decoding one stream (bytes, a file object or a path), frame by frame.

    ``params`` is known on construction (so an output can be opened before the first frame);
    iterating yields :class:`DecodedFrame` s in index order. Iteration raises
    :class:`TruncatedStreamError` at the end of a stream without an end unit, after every
    decodable frame was yielded. ``stats`` counts what came out and what the reader skipped.
    """

    def __init__(
        self, source: Source, model: ImplicitWarpingModel, options: DecodeOptions = DecodeOptions()
    ) -> None:
        self._records = scan_stream(source)
        first = read_header(self._records, source)
        self.params: ParamsUnit = first.unit
        self.decoder = Decoder(
            model,
            self.params,
            batch_size=options.batch_size,
            budget=FrameBudget.for_rate(self.params.fps, options.max_gap_seconds),
        )
        self.stats = self.decoder.stats
        self._offset = first.size

    def __iter__(self) -> Iterator[DecodedFrame]:
        start = time.perf_counter()
        try:
            for record in self._records:
                if record.offset != self._offset:
                    self.stats.damaged_regions += 1
                    self.stats.damaged_bytes += record.offset - self._offset
                self._offset = record.offset + record.size
                yield from self.decoder.push(record.unit)
        except TruncatedStreamError:
            self.stats.truncated = True
            raise
        finally:
            self.stats.seconds += time.perf_counter() - start


def _truncated_message(
    path: Path, stats: DecodeStats | StreamInfo, exc: Exception, out: Path | None
) -> str:
    done = f"{stats.frames} frames ({stats.duration:.2f} s) could be decoded"
    if out is None:
        return f"{path}: {exc}. {done}; no output was written (--partial keeps them)"
    return f"{path}: {exc}. {done} and were written to {out}, which is INCOMPLETE"


def decode_file(
    in_path: str | Path,
    out_path: str | Path,
    model: ImplicitWarpingModel,
    options: DecodeOptions = DecodeOptions(),
    on_frame: Callable[[DecodedFrame], None] | None = None,
) -> DecodeStats:
    """``.iwc`` stream -> video file (``.mp4`` H.264, ``.mkv`` lossless FFV1).

    The output appears only when it is complete. A truncated stream raises
    :class:`TruncatedStreamError`; with ``options.partial`` the frames decoded so far are
    written first (the message says the output is incomplete). ``on_frame`` sees every frame
    as it is written (e.g. to score the exact pixels before the video codec).
    """
    in_path, out_path = Path(in_path), Path(out_path)
    output_format(out_path)  # refuse an unknown extension before any work
    stream = StreamDecoding(in_path, model, options)
    info = audit_file(in_path, options)
    p = stream.params
    with VideoWriter(out_path, p.width, p.height, p.fps, info.explicit_pts) as writer:
        bar = tqdm(desc="decoding", unit="frame", disable=None if options.progress else True)
        try:
            for frame in stream:
                writer.write(frame.rgb, frame.pts)
                if on_frame is not None:
                    on_frame(frame)
                bar.update()
        except TruncatedStreamError as exc:
            if not options.partial or writer.frames == 0:
                raise TruncatedStreamError(
                    _truncated_message(in_path, stream.stats, exc, None)
                ) from None
            writer.close()
            raise TruncatedStreamError(
                _truncated_message(in_path, stream.stats, exc, out_path)
            ) from None
        finally:
            bar.close()
    return stream.stats


def audit_file(path: Path, options: DecodeOptions = DecodeOptions()) -> StreamInfo:
    """Refuse, before anything is rendered, a stream that decoding would refuse at some point
    (``iwcodec info``'s verdict: forged counts, no usable keyframe, a second stream, a cut end
    unless ``options.partial``), so a long decode never fails at its end."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BitstreamWarning)  # the decode itself reports them
        info = inspect_stream(path, options.max_gap_seconds)
    problem = info.problem
    if isinstance(problem, TruncatedStreamError):
        if not options.partial:
            raise TruncatedStreamError(_truncated_message(path, info, problem, None))
    elif problem is not None:
        raise type(problem)(f"{path}: {problem}")
    return info


def decode_frames(
    source: Source, model: ImplicitWarpingModel, options: DecodeOptions = DecodeOptions()
) -> tuple[np.ndarray, DecodeStats]:
    """A whole stream in memory: (T, H, W, 3) uint8 frames and the stats (for evaluation).

    Raises TruncatedStreamError on a cut stream."""
    stream = StreamDecoding(source, model, options)
    frames = [f.rgb for f in stream]
    if not frames:
        raise BitstreamError("the stream holds no frames")
    return np.stack(frames), stream.stats


# -- iwcodec info ---------------------------------------------------------------------------------
_TYPE_LABELS = {
    UnitType.PARAMS: "params",
    UnitType.KEYFRAME: "keyframe",
    UnitType.KEYPOINTS: "keypoints",
    UnitType.NO_FACE: "no-face",
    UnitType.END: "end",
}


@dataclass
class StreamInfo:
    """What ``iwcodec info`` reports: units and bytes per type, damage, rates, and the verdict
    a decode would reach (``problem``: the error it would raise; ``None``: it decodes).

    ``units`` / ``bytes`` are keyed by type label (params, keyframe, keypoints, end);
    ``sum(bytes.values()) + damaged_bytes + tail_bytes + after_end_bytes == file_bytes``.
    """

    file_bytes: int
    params: ParamsUnit | None = None
    units: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_TYPE_LABELS.values(), 0))
    bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_TYPE_LABELS.values(), 0))
    keypoint_frames: int = 0  # frames the indices of the keypoint and no-face units reach
    coded_frames: int = 0  # frames carried by keypoint units (for bytes per frame)
    explicit_pts: bool = False  # some unit carries its frames' own times (variable rate)
    no_face_frames: int = 0  # frames carried by no-face units
    end: EndUnit | None = None
    damaged_regions: int = 0
    damaged_bytes: int = 0
    tail_bytes: int = 0  # unreadable bytes at the end of a truncated stream
    after_end_bytes: int = 0  # bytes after the end unit: ignored, or a second stream
    keyframe_codecs: dict[str, int] = field(default_factory=dict)
    audit: StreamAudit | None = None  # what decoding finds (receiver.audit)
    problem: IWCodecError | None = None  # the error a decode would raise, if any

    @property
    def frames(self) -> int:
        """Frames a decode outputs (decoded and held), as far as the stream could be read."""
        if self.audit is not None:
            return self.audit.frames
        return self.end.total_frames if self.end is not None else self.keypoint_frames

    @property
    def lost_frames(self) -> int:
        return self.audit.lost if self.audit is not None else 0

    @property
    def duration(self) -> float:
        if self.params is None or self.frames == 0:
            return 0.0
        return self.frames / float(self.params.fps)

    def kbps(self, nbytes: int) -> float:
        return nbytes * 8 / self.duration / 1000 if self.duration else 0.0

    @property
    def complete(self) -> str:
        """yes (decodes), NO (decoding fails), unknown (this installation cannot tell)."""
        if self.problem is None:
            return "yes"
        return "unknown" if isinstance(self.problem, ModelMismatchError) else "NO"

    def summary(self) -> str:
        """The human-readable report of ``iwcodec info``."""
        p = self.params
        lines = []
        if p is not None:
            lines += [
                f"stream:      {p.width}x{p.height}, {_fps_text(p.fps)} fps, K={p.num_keypoints}, "
                f"steps xy {p.xy_steps} / strength {p.s_steps}, predictor "
                f"{p.predictor.name.lower()}",
                f"weights id:  {p.weights_id.hex()}   entropy table id: {p.entropy_id.hex()}",
            ]
        codecs = [f"{n} {c}" for c, n in sorted(self.keyframe_codecs.items())]
        bad = self.audit.bad_keyframes if self.audit is not None else 0
        if bad:
            codecs.append(f"{bad} unusable")
        lines += [
            f"frames:      {self.frames} ({self.duration:.2f} s)   complete: {self.complete}",
            f"keyframes:   {self.units['keyframe']}"
            + (f" ({', '.join(codecs)})" if codecs else ""),
        ]
        if self.lost_frames:
            lines.append(
                f"lost:        {self.lost_frames} frames (held: shown as the frame before)"
            )
        if self.no_face_frames:
            lines.append(f"no face:     {self.no_face_frames} frames (nothing rebuilt)")
        if self.explicit_pts:
            lines.append("timing:      variable (the stream carries its frames' own times)")
        if self.end is not None and self.end.total_frames != self.frames:
            lines.append(f"end unit:    says {self.end.total_frames} frames")
        lines += ["", f"{'unit type':<12}{'units':>7}{'bytes':>11}{'kbps':>10}"]
        for label in _TYPE_LABELS.values():
            n, b = self.units[label], self.bytes[label]
            lines.append(f"{label:<12}{n:>7}{b:>11}{self.kbps(b):>10.2f}")
        if self.damaged_bytes or self.damaged_regions:
            lines.append(
                f"{'damaged':<12}{'':>7}{self.damaged_bytes:>11}"
                f"{self.kbps(self.damaged_bytes):>10.2f}"
            )
        if self.tail_bytes:
            lines.append(f"{'cut tail':<12}{'':>7}{self.tail_bytes:>11}")
        if self.after_end_bytes:
            lines.append(f"{'after end':<12}{'':>7}{self.after_end_bytes:>11}")
        lines.append(
            f"{'total':<12}{sum(self.units.values()):>7}{self.file_bytes:>11}"
            f"{self.kbps(self.file_bytes):>10.2f}"
        )
        kp_bytes = self.bytes["keypoints"]
        per_frame = kp_bytes / self.coded_frames if self.coded_frames else 0.0
        lines += [
            "",
            f"keyframes {self.kbps(self.bytes['keyframe']):.2f} kbps + keypoints "
            f"{self.kbps(kp_bytes):.2f} kbps ({per_frame:.2f} B/frame) + headers "
            f"{self.kbps(self.bytes['params'] + self.bytes['end']):.2f} kbps",
        ]
        if self.damaged_regions:
            lines.append(
                f"damage: {self.damaged_regions} damaged region(s), {self.damaged_bytes} bytes "
                "skipped"
            )
        return "\n".join(lines)


def _fps_text(fps: Fraction) -> str:
    return str(fps.numerator) if fps.denominator == 1 else f"{fps} (= {float(fps):.3f})"


def inspect_stream(
    source: str | Path | bytes, max_gap_seconds: float = DEFAULT_MAX_GAP_SECONDS
) -> StreamInfo:
    """Read a stream without rendering (``iwcodec info``; ``iwcodec decode`` before rendering).

    Every unit is checked as the decoder would (``receiver.audit.StreamAudit``); the error a
    decode would raise, and errors after the header (a cut or damaged end, a second stream),
    are kept in ``problem`` so that the numbers of what could be read are still reported. An
    unreadable header raises.
    """
    if isinstance(source, (bytes, bytearray)):
        file_bytes = len(source)
    else:
        source = Path(source)
        try:
            file_bytes = source.stat().st_size
        except OSError as exc:
            raise InputError(f"cannot read {source}: {exc.strerror}") from None
    info = StreamInfo(file_bytes)
    records = scan_stream(source)
    first = read_header(records, source)
    info.params = first.unit
    try:
        entropy, missing = find_entropy_model(first.unit.entropy_id), None
    except ModelMismatchError as exc:
        entropy, missing = None, exc
    info.audit = audit = StreamAudit(first.unit, entropy, max_gap_seconds)
    offset = _account(info, first.offset, first.size, first.unit, 0)
    unreadable = None
    try:
        for record in records:
            offset = _account(info, record.offset, record.size, record.unit, offset)
            audit.add(record.unit)
    except BitstreamError as exc:
        unreadable = exc
    if info.end is not None:
        info.after_end_bytes = file_bytes - offset
    else:
        info.tail_bytes = file_bytes - offset
    info.problem = missing or audit.problem or unreadable
    return info


def _account(info: StreamInfo, at: int, size: int, unit: Unit, offset: int) -> int:
    if at != offset:
        info.damaged_regions += 1
        info.damaged_bytes += at - offset
    label = _TYPE_LABELS[unit.TYPE]
    info.units[label] += 1
    info.bytes[label] += size
    if isinstance(unit, (KeypointUnit, NoFaceUnit)):
        info.keypoint_frames = max(info.keypoint_frames, unit.first_index + unit.count)
        info.explicit_pts |= unit.pts is not None
        if isinstance(unit, KeypointUnit):
            info.coded_frames += unit.count
        else:
            info.no_face_frames += unit.count
    elif isinstance(unit, KeyframeUnit):
        name = unit.codec.name.lower()
        info.keyframe_codecs[name] = info.keyframe_codecs.get(name, 0) + 1
    elif isinstance(unit, EndUnit):
        info.end = unit
    return at + size
