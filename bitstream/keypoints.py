"""Keypoint coding: quantize, predict, entropy-code; and the loss-aware decoder.

Procedure per frame (docs/bitstream.md, "Keypoint payload"); paper section 3 defines the
payload itself: K keypoints of (x, y, strength) per driving frame.

* The first frame of a resync unit is *intra*: each quantized value ``q`` is coded as a bucket
  ``q // w`` (static prior) plus an offset ``q % w`` (uniform).
* Every other frame is *predicted*: ``r = q - predict(previous decoded frames)``; the frame's
  common motion ``g = lower median of r over keypoints`` (per channel) is coded first, then every
  ``r - g``; values outside ``[-radius, radius]`` are coded as an escape symbol followed by the
  raw value (``g + steps`` uniform over ``2 steps + 1``, or ``q`` uniform over ``steps + 1``).
* Shift and residual symbols use adaptive per-channel counts (``AdaptiveState``) that are
  updated after each frame; they persist across the units of one chain and reset at resync.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bitstream.cutting import UnitCutter
from bitstream.entropy import (
    NUM_CHANNELS,
    AdaptiveState,
    EntropyModel,
    SymbolDecoder,
    SymbolEncoder,
    bucket_width,
)
from bitstream.errors import BitstreamWarning
from bitstream.frame import KeypointFrame
from bitstream.predict import frame_shift, predict
from bitstream.quant import dequantize, quantize, steps_vector
from bitstream.units import MAX_UNIT_FRAMES, KeypointUnit, NoFaceUnit, ParamsUnit
from iwcodec.errors import BitstreamError, ModelMismatchError

#: Frames per keypoint unit in files: 1 s at 30 fps keeps framing + coder flush under 5%.
DEFAULT_FRAMES_PER_UNIT = 30
#: A resync unit at least every this many frames (2 s at 30 fps).
DEFAULT_RESYNC_PERIOD = 60


class _Chain:
    """State shared by encoder and decoder: the last two decoded frames and the adaptive counts."""

    def __init__(self, params: ParamsUnit, model: EntropyModel) -> None:
        if model.id != params.entropy_id:
            raise ModelMismatchError(
                f"stream was coded with entropy model {params.entropy_id.hex()}, "
                f"this one is {model.id.hex()}"
            )
        self.params = params
        self.model = model
        self.k = params.num_keypoints
        self.steps = steps_vector(params.xy_steps, params.s_steps)  # (3,)
        # Symbol layout of a predicted frame: 3 shifts, then K keypoints x 3 channels.
        self.rows = np.concatenate(
            [AdaptiveState.SHIFT_ROWS, np.tile(AdaptiveState.RESIDUAL_ROWS, self.k)]
        )
        width = np.array([bucket_width(int(s), model.buckets) for s in self.steps])
        self.bucket_width = np.tile(width, self.k)  # (3K,)
        self.steps_flat = np.tile(self.steps, self.k)  # (3K,)
        intra = model.intra.astype(np.float64)
        intra /= intra.sum(axis=1, keepdims=True)
        self.intra_probs = np.tile(intra, (self.k, 1))  # (3K, B)
        self.state: AdaptiveState | None = None
        self.prev: np.ndarray | None = None  # (K, 3) int64
        self.prev2: np.ndarray | None = None

    def reset(self) -> None:
        self.state = AdaptiveState(self.model)
        self.prev = self.prev2 = None

    def push(self, q: np.ndarray) -> None:
        self.prev2, self.prev = self.prev, q

    def prediction(self) -> np.ndarray:
        return predict(self.params.predictor, self.prev, self.prev2, self.steps)

    def offset_sizes(self, buckets: np.ndarray) -> np.ndarray:
        """Size of the uniform offset inside each bucket (the last bucket may be cut short)."""
        return np.minimum(self.bucket_width, self.steps_flat + 1 - buckets * self.bucket_width)


def _encode_intra(chain: _Chain, coder: SymbolEncoder, q: np.ndarray) -> None:
    flat = q.reshape(-1)  # (3K,) keypoint-major
    buckets = flat // chain.bucket_width
    coder.categorical(buckets, chain.intra_probs)
    sizes = chain.offset_sizes(buckets)
    coded = sizes >= 2
    coder.uniform((flat % chain.bucket_width)[coded], sizes[coded])


def _decode_intra(chain: _Chain, dec: SymbolDecoder) -> np.ndarray:
    buckets = dec.categorical(chain.intra_probs)
    sizes = chain.offset_sizes(buckets)
    if np.any(sizes < 1):
        raise BitstreamError("keypoint payload: intra value out of range")
    coded = sizes >= 2
    offsets = np.zeros_like(buckets)
    offsets[coded] = dec.uniform(sizes[coded])
    return (buckets * chain.bucket_width + offsets).reshape(chain.k, NUM_CHANNELS)


def _encode_predicted(chain: _Chain, coder: SymbolEncoder, q: np.ndarray) -> None:
    m = chain.model
    r = q - chain.prediction()  # (K, 3)
    g = frame_shift(r)  # (3,)
    values = np.concatenate([g, (r - g).reshape(-1)])  # (3 + 3K,)
    symbols = np.where(np.abs(values) <= m.radius, values + m.radius, m.escape)
    coder.categorical(symbols, chain.state.probabilities(chain.rows))
    esc = symbols == m.escape
    raw = np.concatenate([g + chain.steps, q.reshape(-1)])
    sizes = np.concatenate([2 * chain.steps + 1, chain.steps_flat + 1])
    coder.uniform(raw[esc], sizes[esc])
    chain.state.update(chain.rows, symbols)


def _decode_predicted(chain: _Chain, dec: SymbolDecoder) -> np.ndarray:
    m = chain.model
    symbols = dec.categorical(chain.state.probabilities(chain.rows))
    esc = symbols == m.escape
    sizes = np.concatenate([2 * chain.steps + 1, chain.steps_flat + 1])
    raw = np.zeros_like(symbols)
    raw[esc] = dec.uniform(sizes[esc])
    g = np.where(esc[:3], raw[:3] - chain.steps, symbols[:3] - m.radius)  # (3,)
    pred = chain.prediction().reshape(-1)  # (3K,)
    g_flat = np.tile(g, chain.k)
    q = np.where(esc[3:], raw[3:], pred + g_flat + symbols[3:] - m.radius)
    if np.any(q < 0) or np.any(q > chain.steps_flat):
        raise BitstreamError("keypoint payload: decoded value out of range")
    chain.state.update(chain.rows, symbols)
    return q.reshape(chain.k, NUM_CHANNELS)


class KeypointEncoder:
    """Turns runs of :class:`KeypointFrame` into :class:`KeypointUnit` s.

    A unit is a resync unit when it is the first, when ``request_resync()`` was called, when
    its first frame does not follow the previous unit's last, or when ``resync_period`` frames
    have passed since the last resync (checked at unit starts, so the period rounds up to a
    whole unit).

    Attributes:
        last_ideal_bits: ``sum(-log2 p)`` of the last unit's symbols under the adaptive model.
    """

    def __init__(
        self,
        params: ParamsUnit,
        model: EntropyModel,
        *,
        resync_period: int = DEFAULT_RESYNC_PERIOD,
    ) -> None:
        if resync_period < 1:
            raise ValueError(f"resync_period must be >= 1, got {resync_period}")
        self._chain = _Chain(params, model)
        self.resync_period = resync_period
        self._next_index: int | None = None
        self._since_resync = 0
        self._resync_requested = True
        self.last_ideal_bits = 0.0

    @property
    def params(self) -> ParamsUnit:
        return self._chain.params

    def request_resync(self) -> None:
        """Make the next unit a resync unit (a receiver reported loss)."""
        self._resync_requested = True

    def encode(self, frames: Sequence[KeypointFrame]) -> KeypointUnit:
        """Code consecutive frames that share their refs into one unit."""
        self._check(frames)
        chain = self._chain
        # Quantize first: a bad value must raise before any state changes.
        q_all = quantize(
            np.stack([f.keypoints for f in frames]), chain.params.xy_steps, chain.params.s_steps
        )  # (T, K, 3)
        first = frames[0].index
        resync = (
            self._resync_requested
            or first != self._next_index
            or self._since_resync >= self.resync_period
        )
        pts = tuple(f.pts for f in frames)
        nominal = tuple(chain.params.nominal_pts(f.index) for f in frames)
        # Built before coding so that bad timestamps raise before the chain advances.
        header = KeypointUnit(
            first_index=first,
            count=len(frames),
            refs=frames[0].refs,
            resync=resync,
            pts=None if pts == nominal else pts,
            payload=b"",
        )
        if resync:
            chain.reset()
            self._since_resync = 0
        coder = SymbolEncoder()
        for t, q in enumerate(q_all):
            if t == 0 and resync:
                _encode_intra(chain, coder, q)
            else:
                _encode_predicted(chain, coder, q)
            chain.push(q)
        self.last_ideal_bits = coder.ideal_bits
        self._next_index = first + len(frames)
        self._since_resync += len(frames)
        self._resync_requested = False
        return dataclasses.replace(header, payload=coder.finish())

    def _check(self, frames: Sequence[KeypointFrame]) -> None:
        if not 1 <= len(frames) <= MAX_UNIT_FRAMES:
            raise ValueError(f"a unit holds 1..{MAX_UNIT_FRAMES} frames, got {len(frames)}")
        first = frames[0]
        for i, f in enumerate(frames):
            if f.index != first.index + i:
                raise ValueError(
                    f"frame indices must be consecutive: {first.index}+{i} != {f.index}"
                )
            if f.refs != first.refs:
                raise ValueError("all frames of a unit must share refs: start a new unit there")
            if f.num_keypoints != self._chain.k:
                raise ValueError(
                    f"frame {f.index} has {f.num_keypoints} keypoints, stream has {self._chain.k}"
                )


@dataclass(frozen=True)
class DecodeResult:
    """Frames decoded from one unit, and frames known to be lost.

    Attributes:
        frames: decoded frames, in index order.
        lost: ranges of frame indices that will never be decoded: a gap before this unit
            (units that never arrived or were damaged) and, when the chain was broken and this
            is not a resync unit, this unit's own frames. Ranges, not lists, so a hostile index
            jump costs no memory.
        no_face: frames of a NO_FACE unit (:meth:`KeypointDecoder.skip`): coded, with nothing
            to rebuild.
    """

    frames: tuple[KeypointFrame, ...]
    lost: tuple[range, ...] = ()
    no_face: range = range(0)

    @property
    def num_lost(self) -> int:
        return sum(len(r) for r in self.lost)


class KeypointDecoder:
    """Decodes :class:`KeypointUnit` s in arrival order and tracks the prediction chain.

    Args:
        first_index: index the stream is expected to start at (0 for files); ``None`` accepts
            whatever the first unit says (joining a call late).

    A unit is decodable when it is a resync unit, or when it directly follows the last decoded
    unit of an intact chain. Otherwise its frames are reported lost (``DecodeResult.lost``,
    plus a :class:`BitstreamWarning`) until the next resync unit. Units that start before the
    expected index (late or duplicated messages) are ignored with a warning. A unit whose
    payload does not decode is treated as lost and breaks the chain; nothing raises for that.
    """

    def __init__(
        self, params: ParamsUnit, model: EntropyModel, *, first_index: int | None = 0
    ) -> None:
        self._chain = _Chain(params, model)
        self._next_index = first_index
        self._intact = False
        self._face_gone = False  # a NO_FACE unit came last: the next unit is a resync unit

    @property
    def params(self) -> ParamsUnit:
        return self._chain.params

    @property
    def next_index(self) -> int | None:
        """Index the next unit should start at."""
        return self._next_index

    @property
    def needs_resync(self) -> bool:
        """True while only a resync unit can be decoded (ask the sender for one). False
        after a NO_FACE unit: the sender starts the next face with a resync unit anyway."""
        return not self._intact and not self._face_gone

    def decode(self, unit: KeypointUnit) -> DecodeResult:
        lost = self._advance(unit, "keypoint unit")
        if lost is None:
            return DecodeResult(())
        self._face_gone = False
        if unit.resync or self._intact:
            try:
                frames = self._decode_payload(unit)
            except BitstreamError as exc:
                self._intact = False
                lost.append(unit.indices)
                self._warn_lost(lost, f"undecodable unit ({exc})")
                return DecodeResult((), tuple(lost))
            self._intact = True
            if lost:
                self._warn_lost(lost, "missing units")
            return DecodeResult(frames, tuple(lost))
        lost.append(unit.indices)
        self._warn_lost(lost, "waiting for a resync unit")
        return DecodeResult((), tuple(lost))

    def skip(self, unit: NoFaceUnit) -> DecodeResult:
        """Frames without a face: nothing to decode; the chain ends here (the sender's next
        keypoint unit is a resync unit)."""
        lost = self._advance(unit, "no-face unit")
        if lost is None:
            return DecodeResult(())
        if lost:
            self._warn_lost(lost, "missing units")
        self._intact = False
        self._face_gone = True
        return DecodeResult((), tuple(lost), unit.indices)

    def _advance(self, unit: KeypointUnit | NoFaceUnit, what: str) -> list[range] | None:
        """Move the expected index past ``unit``; the gap before it is lost (and breaks the
        chain). None for a unit that starts before the expected index (late or duplicate)."""
        lost: list[range] = []
        expected = self._next_index
        if expected is not None and unit.first_index < expected:
            warnings.warn(
                f"{what} for frames {unit.first_index}..{unit.indices[-1]} arrived after "
                f"frame {expected - 1} was due; ignored",
                BitstreamWarning,
                stacklevel=3,
            )
            return None
        if expected is not None and unit.first_index > expected:
            lost.append(range(expected, unit.first_index))
            self._intact = False
            self._face_gone = False
        self._next_index = unit.first_index + unit.count
        return lost

    def finish(self, total_frames: int) -> DecodeResult:
        """Report frames lost after the last unit, given the end unit's frame count."""
        if self._next_index is None or self._next_index >= total_frames:
            return DecodeResult(())
        lost = (range(self._next_index, total_frames),)
        self._next_index = total_frames
        self._warn_lost(list(lost), "missing units at the end")
        return DecodeResult((), lost)

    def _decode_payload(self, unit: KeypointUnit) -> tuple[KeypointFrame, ...]:
        chain = self._chain
        if unit.resync:
            chain.reset()
        dec = SymbolDecoder(unit.payload)
        qs = []
        for t in range(unit.count):
            q = (
                _decode_intra(chain, dec)
                if t == 0 and unit.resync
                else _decode_predicted(chain, dec)
            )
            chain.push(q)
            qs.append(q)
        kp = dequantize(np.stack(qs), chain.params.xy_steps, chain.params.s_steps)  # (T, K, 3)
        pts = unit.frame_pts(chain.params)
        return tuple(
            KeypointFrame(index=i, pts=p, keypoints=k, refs=unit.refs)
            for i, p, k in zip(unit.indices, pts, kp)
        )

    @staticmethod
    def _warn_lost(lost: list[range], why: str) -> None:
        n = sum(len(r) for r in lost)
        spans = ", ".join(f"{r.start}..{r.stop - 1}" for r in lost)
        warnings.warn(f"{n} keypoint frames lost ({spans}): {why}", BitstreamWarning, stacklevel=3)


def encode_track(
    frames: Sequence[KeypointFrame],
    encoder: KeypointEncoder,
    frames_per_unit: int = DEFAULT_FRAMES_PER_UNIT,
) -> list[KeypointUnit]:
    """Cut ``frames`` into units of at most ``frames_per_unit`` and encode them.

    Cuts also where refs change or indices jump (``bitstream.cutting.UnitCutter``, the rule
    the send core uses too). Resyncs land every ``encoder.resync_period`` frames when that is
    a multiple of ``frames_per_unit`` (else at the next unit start).
    """
    cutter: UnitCutter[KeypointFrame] = UnitCutter(frames_per_unit)
    runs = [run for f in frames for run in cutter.push(f, f.refs)] + cutter.flush()
    return [encoder.encode(run) for run in runs]
