"""The send core: frames in, units out; the one place that file encoding and calls share.

A stream is a run of *face segments*. Each starts with a keyframe (the first frame of the
segment: keyframes are only ever taken of faces), and every frame of it is rebuilt from the
keyframes sent since the segment began (paper section 3: attention over the keys of every
source at once). Frames in which the sender found no face are coded as NO_FACE units
(docs/bitstream.md 3.5): the receiver shows the sender's fill (a black picture, or the last
picture shown) instead of a face rendered from a keyframe that is not in the picture. When the
face comes back, a new segment starts with a new keyframe and a resync unit (it may be
another person).

:class:`SendCore` is the one place that decides what unit a frame becomes: the parameter
unit first, a keyframe where a face segment starts (or where a caller asks for one, as far as
the keyframe pacing allows), keypoint units, NO_FACE units, resync units (periodic, asked for,
or all of them while a call is losing packets). It holds the stream's state (keypoint coder,
keyframe ids, the frames waiting to be cut into a unit) and cuts units with
``bitstream.UnitCutter``: at a fixed number of frames, at a face / no-face switch, at a
keyframe, where the refs change and where indices jump. Further keyframes follow a policy
(``sender.keyframes``: fixed indices, an interval, a quality threshold on the pose distance to
the nearest keyframe, a keyframe budget), asked on every face frame; the keyframes live in the
sender's mirror of the receiver's keyframe set (``sender.keyframes.KeyframeSet``), which names
each new keyframe's id (its slot) and each frame's refs (the 1-3 nearest in pose). The callers
only say *which* frames have a face and when the other side wants a keyframe: :func:`face_mask`
for a whole file (misses shorter than :data:`NO_FACE_SECONDS` are bridged by the crop
smoother), ``sender.call`` frame by frame with the receiver's requests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bitstream import (
    TIMESCALE,
    EntropyModel,
    Fill,
    ImageCodec,
    KeyframePacer,
    KeyframeUnit,
    KeypointEncoder,
    KeypointFrame,
    NoFaceUnit,
    ParamsUnit,
    Unit,
    UnitCutter,
    requantize,
)
from bitstream.units import MAX_UNIT_FRAMES
from iwcodec.keyframe import decode_keyframe, encode_keyframe
from sender.keyframes import KeyframePolicy, KeyframeSet
from sender.render_check import LocalRender

#: A face missing for at least this long is "no face" (a shorter miss is the detector's, not
#: the camera's: the crop holds its box through it).
NO_FACE_SECONDS = 0.5


def face_mask(detected: np.ndarray, fps: float, min_gap_s: float = NO_FACE_SECONDS) -> np.ndarray:
    """Which frames of a file are coded as faces: (T,) bool detections -> (T,) bool.

    Frames before the first detection have no face (the first keyframe is the first frame
    with a face). After it, a run of frames without a detection is "no face" when it lasts at
    least ``min_gap_s`` (also at the end of the clip); shorter runs are bridged."""
    detected = np.asarray(detected, bool)
    face = detected.copy()
    if not detected.any():
        return face
    min_run = max(1, round(min_gap_s * fps))
    first = int(np.argmax(detected))
    i = first
    n = len(detected)
    while i < n:
        if detected[i]:
            i += 1
            continue
        j = i
        while j < n and not detected[j]:
            j += 1
        if j - i < min_run:
            face[i:j] = True  # a short miss: the smoothed box still holds the face
        i = j
    return face


@dataclass(frozen=True)
class Face:
    """A frame with a face, as the send core takes it: the crop at the model's resolution,
    (S, S, 3) uint8, and its keypoints, (K, 3) rows (x, y, strength)."""

    crop: np.ndarray
    keypoints: np.ndarray


@dataclass(frozen=True)
class _Gap:
    """A frame without a face, waiting for its NO_FACE unit."""

    index: int
    pts: int


class SendCore:
    """Decides what units a sender's frames become (see the module docstring).

    Args:
        params: the stream's parameter unit.
        table: its entropy table.
        frames_per_unit: frames per keypoint or no-face unit (files: 30; calls: a message's).
        resync_period: frames between periodic resync units.
        keyframe_codec, keyframe_quality: the keyframes' image codec (``iwcodec.keyframe``).
        fill: what the receiver shows for frames without a face.
        detect: the model's keypoint detector on one picture, (S, S, 3) uint8 -> (K, 3); with
            it, a keyframe's own frame is sent with the keypoints of the *decoded* keyframe
            (see :meth:`_keyframe`). None: every frame keeps the keypoints it is given.
        pacer: keyframes wait for this token bucket (calls: ``bitstream.pacing.SENDER``, so
            that the receiver drops none); a face that comes back before a keyframe may go is
            sent as no face until one may. None: keyframes go when due (files).
        policy: when a face frame becomes a keyframe besides the start of a face segment
            (``sender.keyframes``: fixed indices, an interval, a quality threshold, a budget);
            None: only there (and where a caller asks).
        keyframes: the sender's mirror of the receiver's keyframe set: the ids of new
            keyframes and the keyframes each frame is rebuilt from (the nearest in pose);
            None: a set of 16 with 3 refs per frame.
        local: renders each frame as the receiver will (``sender.render_check``); unless the
            render beats the decoded keyframe nearest in pose on both PSNR and LPIPS against
            the true frame, the frame is sent with that keyframe's own keypoints (the receiver
            shows the keyframe given back). Needs ``detect``. None: every frame keeps its
            keypoints.

    :meth:`start` gives the stream's first units, :meth:`frame` the units each frame
    completes, :meth:`flush` the rest, in order. Frames are cut into units by
    ``bitstream.UnitCutter`` (the rule ``bitstream.encode_track`` uses too).
    """

    def __init__(
        self,
        params: ParamsUnit,
        table: EntropyModel,
        *,
        frames_per_unit: int,
        resync_period: int,
        keyframe_codec: ImageCodec,
        keyframe_quality: int,
        fill: Fill = Fill.BLANK,
        detect: Callable[[np.ndarray], np.ndarray] | None = None,
        pacer: KeyframePacer | None = None,
        policy: KeyframePolicy | None = None,
        keyframes: KeyframeSet | None = None,
        local: LocalRender | None = None,
    ) -> None:
        if not 1 <= frames_per_unit <= MAX_UNIT_FRAMES:
            raise ValueError(f"frames per unit must be 1..{MAX_UNIT_FRAMES}, got {frames_per_unit}")
        self.params = params
        self.frames_per_unit = frames_per_unit
        self.keyframe_codec = keyframe_codec
        self.keyframe_quality = keyframe_quality
        self.fill = Fill(fill)
        self.encoder = KeypointEncoder(params, table, resync_period=resync_period)
        self.keyframes_sent = 0
        self.keyframe_bytes = 0
        self.keyframe_indices: list[int] = []  # frames sent as keyframes
        self.policy = policy
        self.keyframes = (
            keyframes if keyframes is not None else KeyframeSet(16, image_size=params.width)
        )
        self._in_segment = False  # a face segment is on, with its keyframe sent
        if local is not None and detect is None:
            raise ValueError("a local render needs the detector (the receiver's keypoints)")
        self.local = local
        self.frames_held_to_keyframe = 0  # frames sent as their keyframe (``local``)
        #: every keypoint unit a resync unit (a call on a path that loses packets)
        self.resilient = False
        self.detect = detect
        self.pacer = pacer
        self._cutter: UnitCutter[KeypointFrame | _Gap] = UnitCutter(frames_per_unit)
        #: the last keyframe's own frame: (frame index, its keypoints (K, 3), keyframe id)
        self._keyframe_keypoints: tuple[int, np.ndarray, int] | None = None

    @property
    def needs_keyframe(self) -> bool:
        """True at the start of a face segment, before its first keyframe."""
        return not self._in_segment

    def start(self) -> list[Unit]:
        """The stream's first units: the parameter unit."""
        return [self.params]

    def keyframe_ready(self, t: float) -> bool:
        """Whether a keyframe may go at time ``t`` (seconds; always without a pacer)."""
        return self.pacer is None or self.pacer.ready(t)

    def takes_face(self, t: float) -> bool:
        """Whether a frame with a face at time ``t`` is coded as a face (:meth:`frame` sends it
        as no face while a new face segment waits for the pacer); a caller may skip keypoint
        detection when not."""
        return not self.needs_keyframe or self.keyframe_ready(t)

    def frame(
        self, index: int, pts: int, face: Face | None, *, keyframe: bool = False, t: float = 0.0
    ) -> list[Unit]:
        """One frame in, the units it completes out, in order.

        ``face`` None: the frame has no face (a NO_FACE frame; it ends the face segment). A
        face frame is sent as a keyframe first when its segment has none yet or when
        ``keyframe`` asks for one (a keyframe policy's choice, a receiver's request), as far as
        the pacer lets it at time ``t``."""
        if face is None or not self.takes_face(t):
            return self._no_face(index, pts)
        units = []
        if self.policy is not None:  # asked on every face frame (a fixed list counts them off)
            keyframe |= self.policy.due(index, t, self.keyframes.distance(face.keypoints))
        if (self.needs_keyframe or keyframe) and self.keyframe_ready(t):
            if self.pacer is not None:
                self.pacer.take(t)
            units = self._keyframe(face, index)
            if self.policy is not None:
                self.policy.sent(index, t, len(units[-1].data))
        return units + self._face(index, pts, face)

    def request_resync(self) -> None:
        """Make the next keypoint unit a resync unit (the receiver's chain broke)."""
        self.encoder.request_resync()

    def _keyframe(self, face: Face, index: int) -> list[Unit]:
        """Send ``face.crop`` (S, S, 3) uint8, frame ``index``, as a keyframe of the current
        face segment, in the slot of the keyframe set that :class:`KeyframeSet` frees.

        The receiver holds the *decoded* picture, not ``crop``, and finds its keypoints on
        that. With ``detect``, the sender decodes its own keyframe and sends frame ``index``
        with those very keypoints, so that frame is the keyframe given back (the receiver
        shows the decoded picture itself for a frame with its keyframe's own keypoints:
        docs/bitstream.md 3.2). The detector's keypoints on the coded picture can sit pixels
        away from those on the original (8 px on one clip at AV1 q75), which the model reads
        as motion: 30 dB instead of 52 dB for the keyframe's own frame."""
        units = self.flush()
        image = encode_keyframe(face.crop, codec=self.keyframe_codec, quality=self.keyframe_quality)
        keypoints = np.asarray(face.keypoints, np.float32)  # (K, 3)
        if self.detect is not None:
            picture = decode_keyframe(image, self.keyframe_codec)  # (S, S, 3) as received
            keypoints = np.asarray(self.detect(picture), np.float32)
        keyframe_id = self.keyframes.next_id()
        if self.detect is not None:
            self._keyframe_keypoints = (index, keypoints, keyframe_id)
        units.append(KeyframeUnit(keyframe_id, index, self.keyframe_codec, image))
        self.keyframes.add(keyframe_id, keypoints, index)
        if self.local is not None:
            self.local.add(keyframe_id, picture, self.keyframes.ids)
        self.keyframes_sent += 1
        self.keyframe_bytes += len(image)
        self.keyframe_indices.append(index)
        self._in_segment = True
        return units

    def _face(self, index: int, pts: int, face: Face) -> list[Unit]:
        """One frame with a face: its keypoints (K, 3) rows (x, y, strength) and refs."""
        if self.needs_keyframe:
            raise ValueError(f"frame {index}: a face segment starts with a keyframe")
        if self._keyframe_keypoints is not None and self._keyframe_keypoints[0] == index:
            # the keyframe's own frame, from it alone: the keyframe given back (see _keyframe)
            _, keypoints, keyframe_id = self._keyframe_keypoints
            refs: tuple[int, ...] = (keyframe_id,)
        else:
            keypoints = face.keypoints
            refs = self.keyframes.choose_refs(keypoints, index)
            if self.local is not None:
                keypoints, refs = self._closer_to_truth(face.crop, keypoints, refs)
        frame = KeypointFrame(index, pts, keypoints, refs)
        return self._units(self._cutter.push(frame, refs))

    def _closer_to_truth(
        self, crop: np.ndarray, keypoints: np.ndarray, refs: tuple[int, ...]
    ) -> tuple[np.ndarray, tuple[int, ...]]:
        """The keypoints and refs to send for a frame whose true picture is ``crop``: its own
        where the render the receiver would show beats the nearest keyframe's decoded picture
        on PSNR and LPIPS, else that keyframe's own keypoints with it alone (the receiver then
        shows the keyframe given back)."""
        nearest = self.keyframes.nearest(keypoints)
        # the keypoints as the receiver decodes them (K, 3): its render is this one
        received = requantize(keypoints, self.params.xy_steps, self.params.s_steps)
        if self.local.render_wins(crop, refs, received, nearest):
            return keypoints, refs
        self.frames_held_to_keyframe += 1
        return self.keyframes.keypoints_of(nearest), (nearest,)

    def _no_face(self, index: int, pts: int) -> list[Unit]:
        """One frame without a face: it ends the face segment."""
        if self._in_segment:
            self._in_segment = False
            self.keyframes.new_segment()
        return self._units(self._cutter.push(_Gap(index, pts), "no face"))

    def flush(self) -> list[Unit]:
        """The unit of the frames waiting, if any."""
        return self._units(self._cutter.flush())

    def _units(self, runs: list[list[KeypointFrame | _Gap]]) -> list[Unit]:
        return [self._unit(run) for run in runs]

    def _unit(self, run: list[KeypointFrame | _Gap]) -> Unit:
        if isinstance(run[0], KeypointFrame):
            if self.resilient:
                self.encoder.request_resync()
            return self.encoder.encode(run)
        first = run[0].index
        pts = tuple(gap.pts for gap in run)
        nominal = tuple(self.params.nominal_pts(first + k) for k in range(len(pts)))
        return NoFaceUnit(first, len(pts), self.fill, None if pts == nominal else pts)


def frame_ticks(seconds: float, index: int, params: ParamsUnit, previous: int) -> int:
    """A frame's time in ticks of 1/90000 s (``bitstream.TIMESCALE``), strictly after
    ``previous``. Within half a millisecond of its nominal time (``params.nominal_pts``) it is
    the nominal time, so a constant-rate input whose container rounds timestamps (Matroska:
    1 ms) costs no timestamp bytes."""
    ticks = round(float(seconds) * TIMESCALE)
    nominal = params.nominal_pts(index)
    if abs(ticks - nominal) <= TIMESCALE // 2000:
        ticks = nominal
    return max(ticks, previous + 1)


__all__ = ["NO_FACE_SECONDS", "Face", "SendCore", "face_mask", "frame_ticks"]
