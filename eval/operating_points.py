"""What an evaluation run measures: our codec's operating points, the classic codecs' rate
targets, and the keyframe-only baseline.

Every point has a ``key`` (stable text naming exactly what is run; results are resumed by it),
a ``codec`` (the record's ``codec`` field), a ``family`` (one curve or marker set in the plots)
and ``params`` (JSON-ready, stored in each record).

Our codec's default plan moves one setting at a time away from the shipped defaults (keypoint
quantization "default" = xy 512 / strength 64 steps, AV1 keyframe at quality 75, one keyframe),
plus the lowest-rate corner (coarse steps and a quality-50 keyframe):

=========== ====================== ================ =========
name        keypoint steps         keyframe         keyframes
=========== ====================== ================ =========
default     default (512 / 64)     AV1 q75          1
coarse      coarse (256 / 32)      AV1 q75          1
kf-q50      default                AV1 q50          1
kf-q90      default                AV1 q90          1
2kf         default                AV1 q75          2 (first + middle)
low         coarse                 AV1 q50          1
=========== ====================== ================ =========

Two points are defined but not in the default plan. "fine" steps (1024 / 128): the default
steps already lose <= 0.1 dB against unquantized keypoints (docs/bitstream.md 8.2), so finer
ones only add bits. "render-check" is the default point with the sender's render check on
(``EncodeOptions.render_check``: every frame rendered at the sender as the receiver will, and
sent with its keyframe's own pose where that render is not closer to the true frame than the
frozen keyframe, on PSNR and LPIPS): one render and one LPIPS per frame at the sender, so it is
run on a GPU when asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bitstream import CANDIDATE_STEPS, ImageCodec
from codec.inference import source_indices
from eval.classic import CODECS, MODES, available_settings
from iwcodec.errors import InputError
from iwcodec.keyframe import DEFAULT_CODEC, DEFAULT_QUALITY, native_setting
from sender.encoder import EncodeOptions

#: Classic codec targets (kbps): from below every encoder's floor to ~10x our default point.
DEFAULT_TARGETS_KBPS: tuple[float, ...] = (2, 4, 8, 12, 16, 24, 32, 48, 64)
#: Keyframe qualities of the keyframe-only baseline (the ones our points use).
DEFAULT_BASELINE_QUALITIES: tuple[int, ...] = (50, 75, 90)

IWCODEC = "iwcodec"
KEYFRAME_ONLY = "keyframe-only"


def keyframe_indices(n_frames: int, keyframes: int) -> tuple[int, ...]:
    """Keyframes placed as the model's validation places its sources
    (:func:`codec.inference.source_indices`, ``i * T // n``): 1 -> (0,), 2 -> (0, T // 2)."""
    if keyframes < 1:
        raise InputError(f"at least one keyframe is needed, got {keyframes}")
    if n_frames < keyframes:
        raise InputError(f"{keyframes} keyframes need at least as many frames, got {n_frames}")
    return tuple(source_indices(n_frames, keyframes))


def _fmt_kbps(kbps: float) -> str:
    return f"{kbps:g}"


@dataclass(frozen=True)
class OurPoint:
    """One operating point of our codec."""

    name: str
    steps: str = "default"  # a key of bitstream.CANDIDATE_STEPS
    keyframe_codec: ImageCodec = DEFAULT_CODEC
    keyframe_quality: int = DEFAULT_QUALITY
    keyframes: int = 1
    render_check: bool = False

    def __post_init__(self) -> None:
        if self.steps not in CANDIDATE_STEPS:
            raise InputError(f"unknown keypoint steps {self.steps!r}: {sorted(CANDIDATE_STEPS)}")
        native_setting(self.keyframe_codec, self.keyframe_quality)  # refuses a bad quality
        if not 1 <= self.keyframes <= 16:
            raise InputError(f"keyframes must be within 1..16, got {self.keyframes}")

    codec = IWCODEC
    family = IWCODEC

    @property
    def key(self) -> str:
        return f"{IWCODEC}/{self.name}"

    @property
    def label(self) -> str:
        return self.name

    @property
    def params(self) -> dict[str, Any]:
        xy, s = CANDIDATE_STEPS[self.steps]
        return {
            "point": self.name,
            "steps": self.steps,
            "xy_steps": xy,
            "s_steps": s,
            "keyframe_codec": self.keyframe_codec.name.lower(),
            "keyframe_quality": self.keyframe_quality,
            "keyframes": self.keyframes,
            "render_check": self.render_check,
        }

    def encode_options(self, n_frames: int, progress: bool = False) -> EncodeOptions:
        xy, s = CANDIDATE_STEPS[self.steps]
        return EncodeOptions(
            keyframe_codec=self.keyframe_codec,
            keyframe_quality=self.keyframe_quality,
            xy_steps=xy,
            s_steps=s,
            keyframe_indices=keyframe_indices(n_frames, self.keyframes),
            render_check=self.render_check,
            progress=progress,
        )


@dataclass(frozen=True)
class ClassicPoint:
    """A classic codec in one setting family at one target bitrate (eval/classic.py)."""

    codec: str
    mode: str
    target_kbps: float

    def __post_init__(self) -> None:
        if (self.codec, self.mode) not in available_settings():
            raise InputError(
                f"no classic setting {self.codec}/{self.mode}; "
                f"available: {['/'.join(s) for s in available_settings()]}"
            )

    @property
    def family(self) -> str:
        return f"{self.codec} {self.mode}"

    @property
    def key(self) -> str:
        return f"{self.codec}/{self.mode}/{_fmt_kbps(self.target_kbps)}kbps"

    @property
    def label(self) -> str:
        return f"{_fmt_kbps(self.target_kbps)} kbps"

    @property
    def params(self) -> dict[str, Any]:
        return {"mode": self.mode, "target_kbps": self.target_kbps}


@dataclass(frozen=True)
class KeyframeOnlyPoint:
    """The trivial baseline: the keyframe(s) alone, each shown until the next one.

    Bits = the keyframe images' bytes (no stream framing: the cheapest way to send them)."""

    keyframe_codec: ImageCodec = DEFAULT_CODEC
    keyframe_quality: int = DEFAULT_QUALITY
    keyframes: int = 1

    def __post_init__(self) -> None:
        native_setting(self.keyframe_codec, self.keyframe_quality)
        if not 1 <= self.keyframes <= 16:
            raise InputError(f"keyframes must be within 1..16, got {self.keyframes}")

    codec = KEYFRAME_ONLY

    @property
    def family(self) -> str:
        return f"{KEYFRAME_ONLY} {self.keyframes}kf"

    @property
    def key(self) -> str:
        name = self.keyframe_codec.name.lower()
        return f"{KEYFRAME_ONLY}/{name}-q{self.keyframe_quality}-{self.keyframes}kf"

    @property
    def label(self) -> str:
        return f"q{self.keyframe_quality}"

    @property
    def params(self) -> dict[str, Any]:
        return {
            "keyframe_codec": self.keyframe_codec.name.lower(),
            "keyframe_quality": self.keyframe_quality,
            "keyframes": self.keyframes,
        }


Point = OurPoint | ClassicPoint | KeyframeOnlyPoint

DEFAULT_OUR_POINTS: tuple[OurPoint, ...] = (
    OurPoint("default"),
    OurPoint("coarse", steps="coarse"),
    OurPoint("kf-q50", keyframe_quality=50),
    OurPoint("kf-q90", keyframe_quality=90),
    OurPoint("2kf", keyframes=2),
    OurPoint("low", steps="coarse", keyframe_quality=50),
)
#: Every point our codec can be asked for by name (``--points``).
NAMED_OUR_POINTS: dict[str, OurPoint] = {
    p.name: p
    for p in (
        *DEFAULT_OUR_POINTS,
        OurPoint("fine", steps="fine"),
        OurPoint("render-check", render_check=True),
    )
}
#: The point the headline compares against.
HEADLINE_POINT = "default"


def our_points(names: Sequence[str] | None = None) -> tuple[OurPoint, ...]:
    """Our points by name (``None``: the default plan)."""
    if names is None:
        return DEFAULT_OUR_POINTS
    unknown = [n for n in names if n not in NAMED_OUR_POINTS]
    if unknown:
        raise InputError(f"unknown operating point(s) {unknown}; known: {list(NAMED_OUR_POINTS)}")
    return tuple(NAMED_OUR_POINTS[n] for n in names)


def classic_points(
    codecs: Sequence[str] = CODECS,
    modes: Sequence[str] = MODES,
    targets_kbps: Sequence[float] = DEFAULT_TARGETS_KBPS,
) -> tuple[ClassicPoint, ...]:
    """Every available (codec, mode) of ``codecs`` x ``modes`` at every target."""
    bad = [c for c in codecs if c not in CODECS] + [m for m in modes if m not in MODES]
    if bad:
        raise InputError(f"unknown classic codec or mode {bad}; codecs {CODECS}, modes {MODES}")
    settings = [s for s in available_settings() if s[0] in codecs and s[1] in modes]
    return tuple(ClassicPoint(c, m, float(t)) for c, m in settings for t in targets_kbps)


def baseline_points(
    qualities: Sequence[int] = DEFAULT_BASELINE_QUALITIES, keyframes: Sequence[int] = (1, 2)
) -> tuple[KeyframeOnlyPoint, ...]:
    """The keyframe-only baseline at each quality with one keyframe, and with two keyframes at
    the default quality (the counterpart of our ``2kf`` point)."""
    points = [KeyframeOnlyPoint(keyframe_quality=q) for q in qualities]
    points += [KeyframeOnlyPoint(keyframes=n) for n in keyframes if n != 1]
    return tuple(points)


def default_plan(
    our: Sequence[OurPoint] = DEFAULT_OUR_POINTS,
    classic: Sequence[ClassicPoint] | None = None,
    baseline: Sequence[KeyframeOnlyPoint] | None = None,
) -> tuple[Point, ...]:
    """All points of a run, cheapest first so that a partial run already has every baseline:
    keyframe-only, then our headline point, the classic codecs, then our other points."""
    classic = classic_points() if classic is None else classic
    baseline = baseline_points() if baseline is None else baseline
    head = [p for p in our if p.name == HEADLINE_POINT]
    rest = [p for p in our if p.name != HEADLINE_POINT]
    plan = (*baseline, *head, *classic, *rest)
    keys = [p.key for p in plan]
    if len(set(keys)) != len(keys):
        raise InputError("the plan names a point twice")
    return plan


def plan_from_names(
    points: Sequence[str] | None = None,
    codecs: Sequence[str] = CODECS,
    modes: Sequence[str] = MODES,
    targets_kbps: Sequence[float] = DEFAULT_TARGETS_KBPS,
    baseline_qualities: Sequence[int] = DEFAULT_BASELINE_QUALITIES,
) -> tuple[Point, ...]:
    """The plan of a run from command-line names (``points=None``: our default points)."""
    ours = our_points(points)
    baseline_keyframes = sorted({1, *(p.keyframes for p in ours)}) if baseline_qualities else []
    return default_plan(
        ours,
        classic_points(codecs, modes, targets_kbps),
        baseline_points(baseline_qualities, baseline_keyframes),
    )
