"""The ``iwcodec`` command: parses arguments and calls sender, receiver, eval and codec.

    iwcodec encode IN -o OUT.iwc        video file -> iwcodec stream
    iwcodec decode IN.iwc -o OUT.mp4    stream -> video (.mp4 H.264, .mkv lossless)
    iwcodec info IN.iwc                 units, bytes and kbps per unit type
    iwcodec demo                        bundled demo clip -> encode -> decode -> side by side
    iwcodec eval CLIP... --out DIR      rate-quality evaluation against classic codecs
    iwcodec train ...                   train the model (codec.train)
    iwcodec signal --token T            signaling server for calls (rooms, shared token)
    iwcodec call --room R --signal URL  one peer of a live call (docs/calls.md)
    iwcodec weights average W... -o OUT average weights files of one config (a model soup)
    iwcodec weights compare CACHE W...  weigh weights files on a crop cache
    iwcodec entropy refit CACHE --out D refit the keypoint entropy tables to the detector
    iwcodec cache pack|unpack ...       a crop cache packed small for upload, and back
    iwcodec fuzz --inputs N             mutation-fuzz the stream parser and decoder
    iwcodec bench --out DIR             what a frame costs: receiver stages, many streams, sender

Every :class:`IWCodecError` is printed as ``iwcodec: error: <message>`` with exit status 2 and
no traceback; :class:`BitstreamWarning` s as ``iwcodec: warning: <message>`` lines. Usage and
examples: docs/usage.md.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from iwcodec import __version__, native_logs
from iwcodec.errors import BackendUnavailableError, IWCodecError, UsageError
from iwcodec.outputs import check_output

if TYPE_CHECKING:
    from sender.keyframes import KeyframePolicy

EXIT_ERROR = 2

# MediaPipe's TFLite runtime logs through glog; keep its INFO/WARNING lines off the user's screen.
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class _Parser(argparse.ArgumentParser):
    """Usage errors read like every other error: one ``iwcodec: error:`` line, status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.removeprefix("iwcodec").strip()
        raise UsageError(f"{command + ': ' if command else ''}{message} (see {self.prog} --help)")


# -- values of numeric options: each names its range in the error ---------------------------------
def _whole(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < lo or (hi is not None and value > hi):
            want = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"must be a whole number {want}, got {text!r}")
        return value

    return parse


def _positive(what: str, hi: float | None = None) -> Callable[[str], float]:
    """An argparse type: a finite number above 0 (and at most ``hi``); ``what`` names it in
    the error ("must be <what>")."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0 and (hi is None or value <= hi)):
            most = f" and at most {hi:g}" if hi is not None else ""
            raise argparse.ArgumentTypeError(f"must be {what}{most}, got {text!r}")
        return value

    return parse


_seconds = _positive("a positive number of seconds")
_megabytes = _positive("a positive number of MiB")
_frame_rate = _positive("a frame rate above 0", hi=1000)


_frames = _whole(1)
_port = _whole(0, 65535)
_quality = _whole(1, 100)


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="model weights (.safetensors); default: the shipped codec/weights/iwcodec-256",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:N, or auto (the GPU when there is one; default)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="iwcodec",
        description="Neural talking-head video codec: one keyframe, then 20 keypoints per frame.",
    )
    parser.add_argument("--version", action="version", version=f"iwcodec {__version__}")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="let third-party log lines through (MediaPipe, TFLite; silenced by default)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("encode", help="encode a video file to an iwcodec stream (.iwc)")
    p.add_argument("input", type=Path, help="any video file FFmpeg reads, with one face")
    p.add_argument("-o", "--output", type=Path, required=True, help="stream to write (.iwc)")
    p.add_argument("--keyframe-codec", default=None, help="webp, av1, jpeg or png (default: av1)")
    p.add_argument(
        "--keyframe-quality", type=_quality, default=None, help="1 (smallest) .. 100 (best)"
    )
    p.add_argument(
        "--steps",
        choices=("coarse", "default", "fine"),
        default="default",
        help="keypoint quantization (docs/bitstream.md 8.2)",
    )
    p.add_argument(
        "--max-frames", type=_frames, default=None, help="encode only the first N frames"
    )
    p.add_argument(
        "--keyframes",
        choices=("one", "fixed", "quality", "budget"),
        default="quality",
        help="when to send further keyframes: where the pose drifts more than "
        "--keyframe-distance pixels from every keyframe, e.g. another person (quality, the "
        "default), that within a keyframe budget of --keyframe-kbps (budget), every "
        "--keyframe-interval seconds (fixed), or never (one); a face that comes back after "
        "frames without one always gets one (docs/usage.md, Keyframes)",
    )
    p.add_argument(
        "--keyframe-interval", type=float, default=10.0, help="seconds, for --keyframes fixed"
    )
    p.add_argument(
        "--keyframe-distance",
        type=float,
        default=None,
        help="pose distance in crop pixels that triggers a keyframe (quality, budget; "
        "default: sender.keyframes.DEFAULT_MAX_DISTANCE)",
    )
    p.add_argument(
        "--keyframe-kbps", type=float, default=2.0, help="keyframe budget, for --keyframes budget"
    )
    p.add_argument(
        "--render-check",
        action="store_true",
        help="render every frame as the receiver will and, unless that render beats the "
        "nearest keyframe on both PSNR and LPIPS against the true frame, send the keyframe's own "
        "pose (the receiver shows the keyframe given back); one render per frame, meant for a GPU",
    )
    p.add_argument(
        "--keyframe-set",
        type=int,
        default=4,
        help="keyframes the receiver keeps and frames pick from, 1..16 (default 4)",
    )
    p.add_argument(
        "--no-face",
        choices=("blank", "hold"),
        default="blank",
        help="what the receiver shows where the clip has no face: a black frame (default) or "
        "the last picture (docs/bitstream.md 3.5)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write even where the output is the input or has another kind's extension",
    )
    _model_options(p)

    p = sub.add_parser("decode", help="decode an iwcodec stream to a video file")
    p.add_argument("input", type=Path, help="iwcodec stream (.iwc)")
    p.add_argument(
        "-o", "--output", type=Path, required=True, help="video to write: .mp4 or .mkv (lossless)"
    )
    p.add_argument(
        "--partial",
        action="store_true",
        help="if the stream is truncated, still write the frames decoded (exit status stays 2)",
    )
    p.add_argument(
        "--batch-size",
        type=_whole(1, 256),
        default=None,
        help="frames rendered per batch, 1..256 (default: 2 on a CPU, 16 on a GPU)",
    )
    p.add_argument(
        "--force", action="store_true", help="write even where the output is the input file"
    )
    _model_options(p)

    p = sub.add_parser("info", help="describe an iwcodec stream: units, bytes, kbps")
    p.add_argument("input", type=Path, help="iwcodec stream (.iwc)")

    p = sub.add_parser(
        "demo",
        help="run the bundled demo clip (a person the model never saw) through the codec and score it",
    )
    p.add_argument(
        "--out-dir", type=Path, default=Path("iwcodec-demo"), help="default: ./iwcodec-demo"
    )
    p.add_argument(
        "--input", type=Path, default=None, help="another video instead of the bundled demo clip"
    )
    p.add_argument("--max-frames", type=_frames, default=None, help="use only the first N frames")
    _model_options(p)

    p = sub.add_parser(
        "eval",
        help="rate-quality evaluation: our codec, classic codecs, keyframe-only baseline",
        description="Every clip is face-cropped once; our codec, x264/x265/VP8/VP9/SVT-AV1 and "
        "the keyframe-only baseline are scored on the same crops. Resumable: a rerun with the "
        "same --out skips what is done. Details: docs/evaluation.md.",
    )
    p.add_argument("clips", nargs="*", type=Path, help="video files or folders of them")
    p.add_argument("--out", type=Path, required=True, help="results folder")
    p.add_argument(
        "--points",
        type=_names,
        default=None,
        help="our operating points, comma-separated (default: default,coarse,kf-q50,kf-q90,"
        "2kf,low; also: fine; none)",
    )
    p.add_argument(
        "--codecs",
        type=_names,
        default=None,
        help="classic codecs (default: x264,x265,vp8,vp9,svtav1; none: skip them)",
    )
    p.add_argument("--modes", type=_names, default=None, help="lowdelay,best (default: both)")
    p.add_argument(
        "--targets",
        type=_rates,
        default=None,
        help="classic target kbps, comma-separated (default: 2,4,8,12,16,24,32,48,64)",
    )
    p.add_argument(
        "--baseline-qualities",
        type=_qualities,
        default=None,
        help="keyframe qualities 1..100 of the keyframe-only baseline (default: 50,75,90; none)",
    )
    p.add_argument("--max-frames", type=_frames, default=None, help="use only the first N frames")
    p.add_argument("--no-akd", action="store_true", help="skip the landmark distance (AKD)")
    p.add_argument(
        "--subset",
        action="append",
        type=_subset,
        default=[],
        metavar="NAME=CLIP,CLIP",
        help="also average over these clips (file stems) on their own in the summary, e.g. "
        "val-4=KwaiVGI__LivePortrait__d10,...; repeatable",
    )
    p.add_argument(
        "--replace-ours",
        action="store_true",
        help="DIR was made with other weights: drop our codec's records there and run them "
        "again (classic and baseline records are kept)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="only rewrite summary.md, HEADLINE.md and the plots from DIR/results.json",
    )
    p.add_argument(
        "--add-akd",
        action="store_true",
        help="fill in AKD for DIR's records made with --no-akd (ours from the kept streams, "
        "the keyframe-only baseline coded again), then rewrite the report",
    )
    _model_options(p)

    sub.add_parser("train", help="train the model (iwcodec train --help)", add_help=False)

    p = sub.add_parser("signal", help="run the signaling server for calls (docs/calls.md)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    p.add_argument(
        "--port", type=_port, default=8765, help="0..65535 (0: any free one; default 8765)"
    )
    p.add_argument(
        "--token",
        default=None,
        help="room token, at least 16 characters (default: $IWCODEC_TOKEN, else a random one)",
    )
    p.add_argument("--tls-cert", default=None, help="PEM certificate: serve wss:// instead")
    p.add_argument("--tls-key", default=None, help="PEM key of --tls-cert")

    p = sub.add_parser("call", help="join a live call (docs/calls.md)")
    p.add_argument("--room", required=True, help="room name, the same on both sides")
    p.add_argument("--signal", required=True, help="signaling server, ws://HOST:PORT/ws")
    p.add_argument("--token", default=None, help="room token (default: $IWCODEC_TOKEN)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=Path, default=None, help="a video file, played in a loop")
    source.add_argument("--camera", default=None, help="a camera, e.g. /dev/video0")
    p.add_argument(
        "--audio",
        default="auto",
        help="auto (the file's audio or the microphone, else silence), tone, silence, off, "
        "mic:DEVICE",
    )
    p.add_argument(
        "--audio-bitrate",
        type=_whole(6000, 128000),
        default=None,
        help="Opus bit/s, 6000..128000 (default 16000)",
    )
    p.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="stun:HOST[:PORT] or turn:USER:PASS@HOST[:PORT] (repeatable; default: none)",
    )
    p.add_argument("--record", type=Path, default=None, help="record the other side (.mp4/.mkv)")
    p.add_argument(
        "--view-port", type=_port, default=8080, help="viewer page port on 127.0.0.1 (0: any)"
    )
    p.add_argument("--no-view", action="store_true", help="serve no viewer page")
    p.add_argument("--duration", type=_seconds, default=None, help="hang up after S seconds")
    p.add_argument("--wait", type=_seconds, default=None, help="give up if nobody joins in S s")
    p.add_argument(
        "--frames-per-message",
        type=_whole(1, 64),
        default=None,
        help="keypoint frames per message, 1..64 (default: as many as keep <= 10 messages/s)",
    )
    p.add_argument(
        "--sack",
        choices=("bundled", "delayed", "immediate"),
        default="bundled",
        help="SCTP acknowledgements (docs/calls.md; default: bundled)",
    )
    p.add_argument("--stats", type=Path, default=None, help="write the call's numbers (JSON)")
    p.add_argument(
        "--timeline", action="store_true", help="with --stats: per-frame times (latency)"
    )
    _model_options(p)

    _weights_parsers(sub)
    _entropy_parsers(sub)
    _cache_parsers(sub)

    p = sub.add_parser(
        "fuzz",
        help="mutation-fuzz the stream parser and keypoint decoder (docs/bitstream.md 8.4)",
        description="Mutated and forged streams through the parser, the keypoint decoder and "
        "the decoder's frame budget, each input in a watched worker process. Prints a JSON "
        "summary; exit status 1 if any input crashed, hung or ran out of memory (those inputs "
        "are saved under --out).",
    )
    p.add_argument("--inputs", type=_whole(1), default=100_000, help="inputs to run (100000)")
    p.add_argument("--workers", type=_whole(1, 256), default=2, help="worker processes (2)")
    p.add_argument("--seed", type=_whole(0), default=1, help="input i is a function of (seed, i)")
    p.add_argument("--timeout", type=_seconds, default=5.0, help="seconds one input may take (5)")
    p.add_argument(
        "--rss-mb", type=_megabytes, default=1024.0, help="memory bound per worker (1024)"
    )
    p.add_argument(
        "--out", type=Path, default=Path(".cache/fuzz"), help="where bad inputs are saved"
    )
    _bench_parser(sub)
    return parser


def _weights_parsers(sub) -> None:
    group = sub.add_parser(
        "weights", help="average weights files, or weigh them against each other on crops"
    )
    actions = group.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    p = actions.add_parser(
        "average",
        help="the uniform average of weights files of one model config (a model soup)",
        description="Writes the mean of the files' parameters (codec.weights.average_weights): "
        "e.g. the last weights of sibling runs. Weigh the result against its parts with "
        "iwcodec weights compare before shipping it.",
    )
    p.add_argument("weights", nargs="+", type=Path, help="weights files to average")
    p.add_argument("-o", "--output", type=Path, required=True, help="weights file to write")
    p.add_argument("--force", action="store_true", help="write even over one of the inputs")
    p = actions.add_parser(
        "compare",
        help="PSNR/SSIM/LPIPS of weights files on a crop cache (1src, 2src, self)",
        description="Rebuilds every N-th frame of each clip from its first frame (1src), from "
        "the first and middle frames (2src) and from itself (self: the ceiling with perfect "
        "motion) with each weights file, and prints a table (eval/compare_weights.py).",
    )
    p.add_argument("cache", type=Path, help="crop cache (python -m sender.cache)")
    p.add_argument("weights", nargs="+", type=Path, help="weights files to compare")
    p.add_argument("--every", type=_whole(1), default=8, help="score every N-th frame (8)")
    p.add_argument("--clips", type=_names, default=(), help="comma-separated clip names (all)")
    p.add_argument(
        "--quantized",
        action="store_true",
        help="also 1src with the keypoints quantized at each step (coarse, default, fine) as "
        "the receiver decodes them: what the quantization costs",
    )
    p.add_argument("--json", type=Path, default=None, help="write every number here")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (default)")


def _entropy_parsers(sub) -> None:
    group = sub.add_parser("entropy", help="refit the keypoint entropy tables after retraining")
    actions = group.add_subparsers(dest="entropy_command", required=True, metavar="ACTION")
    p = actions.add_parser(
        "refit",
        help="fit the tables to the detector's keypoints on training crops (docs/bitstream.md 6)",
        description="Runs the keypoint detector over a training crop cache, fits one table per "
        "keypoint quantization to its tracks (adaptation tuned by two-fold cross-validation) "
        "and writes them to --out as xy<XY>_s<S>.json, the names bitstream/tables/ ships; "
        "with --val, measures the rate of the shipped and the new tables on held-out crops.",
    )
    p.add_argument("train", type=Path, help="training crop cache (python -m sender.cache)")
    p.add_argument("--out", type=Path, required=True, help="folder for the tables")
    p.add_argument("--val", type=Path, default=None, help="held-out crop cache: measure the rate")
    p.add_argument(
        "--steps",
        type=_step_names,
        default=("coarse", "default", "fine"),
        help="quantizations to refit, comma-separated (default: coarse,default,fine)",
    )
    p.add_argument(
        "--no-tune",
        action="store_true",
        help="fixed adaptation (radius 31, prior weight 64, limit 65536) instead of tuning",
    )
    p.add_argument(
        "--tracks",
        type=Path,
        default=Path(".cache/tracks"),
        help="where the detector's tracks are kept between runs (default .cache/tracks)",
    )
    p.add_argument(
        "--fps", type=_frame_rate, default=30.0, help="frame rate the rate is reported at (30)"
    )
    p.add_argument("--json", type=Path, default=None, help="write every number here")
    _model_options(p)


def _cache_parsers(sub) -> None:
    group = sub.add_parser(
        "cache",
        help="pack a crop cache small for upload, unpack it on the training machine",
        description="A crop cache (python -m sender.cache) as H.264 4:4:4 clips and LZMA'd "
        "landmarks, and back (sender/cache_transport.py; docs/cropping.md). Unpacking needs "
        "PyAV or OpenCV only, and runs from a checkout as python3 -m iwcodec cache unpack.",
    )
    actions = group.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    p = actions.add_parser("pack", help="crop cache -> compact folder")
    p.add_argument("cache", type=Path, help="crop cache folder")
    p.add_argument("out", type=Path, help="folder to write the packed part to")
    p.add_argument(
        "--crf", type=_whole(0, 51), default=16, help="x264 quality 0..51 (lower: better, bigger)"
    )
    p.add_argument("--part", type=_part, default=(1, 1), help="pack share i of n, e.g. 1/2")
    p = actions.add_parser("unpack", help="packed folder(s) -> crop cache")
    p.add_argument("packed", nargs="+", type=Path, help="packed folders")
    p.add_argument("cache", type=Path, help="crop cache folder to rebuild (merged into)")
    p.add_argument("--cv2", action="store_true", help="decode with OpenCV even if PyAV is here")


def _part(text: str) -> tuple[int, int]:
    from sender.cache_transport import parse_part

    try:
        return parse_part(text)
    except IWCodecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _step_names(text: str) -> tuple[str, ...]:
    """Comma-separated names of keypoint quantizations (bitstream.CANDIDATE_STEPS)."""
    from bitstream import CANDIDATE_STEPS

    names = _names(text)
    if not names or any(n not in CANDIDATE_STEPS for n in names):
        raise argparse.ArgumentTypeError(
            f"must be comma-separated names of {', '.join(CANDIDATE_STEPS)}, got {text!r}"
        )
    return names


def _names(text: str) -> tuple[str, ...]:
    """Comma-separated names; "none" is the empty list."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    return () if names == ("none",) else names


def _rates(text: str) -> tuple[float, ...]:
    """Comma-separated bit rates in kbps, each positive and finite ("none": empty)."""
    try:
        values = tuple(float(n) for n in _names(text))
    except ValueError:
        values = (math.nan,)
    if not all(math.isfinite(v) and 0 < v <= 100_000 for v in values):
        raise argparse.ArgumentTypeError(
            f"must be comma-separated rates in kbps, each above 0 and at most 100000, got {text!r}"
        )
    return values


def _qualities(text: str) -> tuple[int, ...]:
    """Comma-separated keyframe qualities 1..100 ("none": empty)."""
    try:
        return tuple(_quality(n) for n in _names(text))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated whole numbers 1..100, got {text!r}"
        ) from None


def _subset(text: str) -> tuple[str, tuple[str, ...]]:
    """NAME=CLIP,CLIP -> (NAME, (CLIP, CLIP))."""
    name, sep, clips = text.partition("=")
    members = _names(clips)
    if not sep or not name.strip() or not members:
        raise argparse.ArgumentTypeError(f"expected NAME=CLIP,CLIP..., got {text!r}")
    return name.strip(), members


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise IWCodecError(f"unknown device {name!r} (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(f"--device {name}: no CUDA GPU is available here")
    return device


def load(args: argparse.Namespace):
    from codec.weights import DEFAULT_WEIGHTS, load_model
    from iwcodec.errors import ModelMismatchError

    path = args.weights if args.weights is not None else DEFAULT_WEIGHTS
    if args.weights is None and not path.is_file():
        raise ModelMismatchError(
            f"the shipped model weights are missing ({path}); pass --weights FILE.safetensors "
            "(e.g. one written by `iwcodec train`)"
        )
    return load_model(path, device=resolve_device(args.device))


def cmd_encode(args: argparse.Namespace) -> int:
    from bitstream import CANDIDATE_STEPS, Fill
    from iwcodec.keyframe import DEFAULT_CODEC, DEFAULT_QUALITY, native_setting, parse_codec
    from sender.encoder import EncodeOptions, encode_file

    codec = parse_codec(args.keyframe_codec) if args.keyframe_codec else DEFAULT_CODEC
    quality = args.keyframe_quality if args.keyframe_quality is not None else DEFAULT_QUALITY
    native_setting(codec, quality)  # refuses a bad quality before the slow part
    check_output(
        args.output,
        inputs=[args.input],
        suffixes=(".iwc",),
        kind="an iwcodec stream",
        force=args.force,
    )
    xy, s = CANDIDATE_STEPS[args.steps]
    options = EncodeOptions(
        keyframe_codec=codec,
        keyframe_quality=quality,
        xy_steps=xy,
        s_steps=s,
        max_frames=args.max_frames,
        no_face=Fill[args.no_face.upper()],
        progress=not args.quiet,
        keyframe_policy=keyframe_policy(args),
        keyframe_set=args.keyframe_set,
        render_check=args.render_check,
    )
    stats = encode_file(args.input, args.output, load(args), options)
    print(f"{args.output}: {stats.summary()}")
    return 0


def keyframe_policy(args: argparse.Namespace) -> Callable[[], KeyframePolicy] | None:
    """The keyframe policy of ``iwcodec encode``'s options (None: one keyframe per face);
    built once here so that a bad value is refused before the model loads."""
    from sender import keyframes as kf

    distance = kf.DEFAULT_MAX_DISTANCE if args.keyframe_distance is None else args.keyframe_distance
    make: Callable[[], KeyframePolicy] | None = {
        "one": None,
        "fixed": functools.partial(kf.IntervalKeyframes, args.keyframe_interval),
        "quality": functools.partial(kf.QualityKeyframes, distance),
        "budget": functools.partial(kf.BudgetKeyframes, args.keyframe_kbps, distance),
    }[args.keyframes]
    if make is not None:
        make()
    kf.KeyframeSet(args.keyframe_set)  # refuses a bad size
    return make


def cmd_decode(args: argparse.Namespace) -> int:
    from receiver.decoder import DecodeOptions, decode_file
    from receiver.writer import output_format

    output_format(args.output)  # an unsupported extension fails before the model loads
    check_output(args.output, inputs=[args.input], force=args.force)
    options = DecodeOptions(
        batch_size=args.batch_size, partial=args.partial, progress=not args.quiet
    )
    stats = decode_file(args.input, args.output, load(args), options)
    print(f"{args.output}: {stats.summary()}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from receiver.decoder import inspect_stream

    info = inspect_stream(args.input)
    print(f"{args.input}: {info.file_bytes} bytes")
    print(info.summary())
    if info.problem is not None:
        raise info.problem
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from eval.demo import run_demo

    result = run_demo(
        load(args), args.out_dir, args.input, args.max_frames, progress=not args.quiet
    )
    print(result.summary())
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from eval.run import EvalConfig, run_eval, write_report

    if args.report_only:
        for path in write_report(args.out):
            print(path)
        return 0
    from sender.cache import find_videos

    if args.add_akd:
        from eval.run import add_akd

        updated = add_akd(args.out, find_videos(args.clips), load(args), print)
        print(f"{args.out}: AKD added to {updated} records; summary in {args.out / 'summary.md'}")
        return 0
    from codec.weights import DEFAULT_WEIGHTS
    from eval.classic import CODECS, MODES
    from eval.operating_points import (
        DEFAULT_BASELINE_QUALITIES,
        DEFAULT_TARGETS_KBPS,
        plan_from_names,
    )

    clips = find_videos(args.clips)
    if not clips:
        raise IWCodecError("no clips to evaluate: name video files or folders holding them")
    plan = plan_from_names(
        args.points,
        args.codecs if args.codecs is not None else CODECS,
        args.modes if args.modes is not None else MODES,
        args.targets if args.targets is not None else DEFAULT_TARGETS_KBPS,
        args.baseline_qualities
        if args.baseline_qualities is not None
        else DEFAULT_BASELINE_QUALITIES,
    )
    config = EvalConfig(
        clips=tuple(clips),
        out_dir=args.out,
        plan=plan,
        max_frames=args.max_frames,
        with_akd=not args.no_akd,
        progress=not args.quiet,
        replace_ours=args.replace_ours,
        subsets=dict(args.subset),
    )
    run = run_eval(config, load(args), args.weights if args.weights else DEFAULT_WEIGHTS)
    print(
        f"{args.out}: {len(run.records)} records ({run.done_now} new, {run.skipped} already "
        f"there); summary in {args.out / 'summary.md'}"
    )
    headline = args.out / "HEADLINE.md"
    if headline.is_file():
        print(headline.read_text())
    if run.failures:
        raise IWCodecError(
            f"{len(run.failures)} jobs failed (listed in {args.out / 'failed.json'}); "
            "a rerun retries them"
        )
    return 0


def cmd_train(argv: list[str]) -> int:
    from codec.train import main as train_main

    return train_main(argv)


def _token(args: argparse.Namespace) -> str | None:
    return args.token if args.token is not None else os.environ.get("IWCODEC_TOKEN")


def cmd_signal(args: argparse.Namespace) -> int:
    import asyncio

    from iwcodec.call.signaling import new_token, serve_signaling, tls_context

    token = _token(args)
    if not token:
        token = new_token()
        print(f"iwcodec signal: room token {token}", flush=True)
    ssl_context = tls_context(args.tls_cert, args.tls_key)
    ready = lambda url: print(f"iwcodec signal: listening on {url}", flush=True)  # noqa: E731
    asyncio.run(serve_signaling(token, args.host, args.port, ssl_context, ready))
    return 0


def cmd_call(args: argparse.Namespace) -> int:
    import asyncio

    from bitstream import BitstreamWarning
    from iwcodec.call.rtc import SackPolicy
    from iwcodec.call.session import CallOptions, configure_threads, run_call, stderr_status
    from sender.call import CallSender, SendOptions
    from sender.live import DEFAULT_AUDIO_BITRATE, CameraSource, FileSource, audio_input

    token = _token(args)
    if not token:
        raise IWCodecError("a room token is needed: --token T or IWCODEC_TOKEN")
    # a call reports lost frames in its statistics; one warning per lost unit would flood
    warnings.simplefilter("ignore", BitstreamWarning)
    video = FileSource(args.input) if args.input is not None else CameraSource(args.camera)
    audio = audio_input(args.audio, args.input)
    model = load(args)
    configure_threads(model)
    sender = CallSender(
        model,
        video,
        audio,
        SendOptions(
            frames_per_message=args.frames_per_message,
            audio_bitrate=args.audio_bitrate or DEFAULT_AUDIO_BITRATE,
            timeline=args.timeline,
        ),
    )
    options = CallOptions(
        room=args.room,
        signal_url=args.signal,
        token=token,
        ice_servers=tuple(args.ice_server),
        view_port=None if args.no_view else args.view_port,
        record=args.record,
        duration=args.duration,
        wait_timeout=args.wait,
        sack_policy=SackPolicy(args.sack),
        stats_path=args.stats,
        timeline=args.timeline,
        status=None if args.quiet else stderr_status,
    )
    report = asyncio.run(run_call(options, model, sender))
    print(f"iwcodec call: {report.ended} after {report.seconds:.1f} s")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    actions = {"average": _weights_average, "compare": _weights_compare}
    return actions[args.weights_command](args)


def _weights_average(args: argparse.Namespace) -> int:
    from codec.weights import average_weights

    check_output(
        args.output,
        inputs=args.weights,
        suffixes=(".safetensors",),
        kind="a weights file",
        force=args.force,
    )
    wid = average_weights(args.weights, args.output)
    print(f"{args.output}: id {wid.hex()}, the mean of {len(args.weights)} weights files")
    return 0


def _weights_compare(args: argparse.Namespace) -> int:
    import json

    from eval.compare_weights import compare_weights

    device = resolve_device(args.device)
    if args.json is not None:
        check_output(args.json, suffixes=(".json",), kind="the comparison")
    result = compare_weights(
        args.cache,
        args.weights,
        device,
        args.every,
        args.clips,
        lambda line: print(line, flush=True),
        steps=args.quantized,
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


def cmd_entropy(args: argparse.Namespace) -> int:
    import json

    from sender.tracks import refit_entropy

    if args.json is not None:
        check_output(args.json, suffixes=(".json",), kind="the refit's numbers")
    result = refit_entropy(
        load(args),
        args.train,
        args.out,
        args.tracks,
        val_cache=args.val,
        steps=args.steps,
        tuned=not args.no_tune,
        fps=args.fps,
        report=lambda line: print(line, flush=True),
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from sender.cache_transport import pack, pack_summary, unpack

    report = lambda line: print(line, flush=True)  # noqa: E731
    if args.cache_command == "pack":
        manifest = pack(args.cache, args.out, args.crf, args.part, report)
        print(pack_summary(manifest))
        return 0
    for packed in args.packed:
        names = unpack(packed, args.cache, prefer_av=not args.cv2, report=report)
        print(f"unpacked {len(names)} clips from {packed} into {args.cache}")
    return 0


def cmd_fuzz(args: argparse.Namespace) -> int:
    import json

    from bitstream.fuzz import FuzzOptions, run_fuzz

    # One thread per worker process: the workers, not numpy's thread pools, use the cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    options = FuzzOptions(args.inputs, args.workers, args.seed, args.timeout, args.rss_mb, args.out)
    summary = run_fuzz(options)
    print(json.dumps(summary, indent=1))
    if summary["bad_inputs"]:
        print(
            f"iwcodec fuzz: {len(summary['bad_inputs'])} bad inputs, saved under {args.out}",
            file=sys.stderr,
        )
        return 1
    return 0


def _counts(text: str) -> tuple[int, ...]:
    """Comma-separated whole numbers >= 1, e.g. "1,10,100"."""
    try:
        values = tuple(_whole(1)(n) for n in _names(text))
    except argparse.ArgumentTypeError:
        values = ()
    if not values:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated whole numbers >= 1, got {text!r}"
        )
    return values


def _bench_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="what a frame costs: receiver stages, many streams on one GPU, the sender",
        description="Times the receiver per frame (keypoint decode, render per stage, copy to "
        "the host; eager and from CUDA graphs), many concurrent streams rendered in shared "
        "batches, and the sender's stages (face tracking, keypoint detector, coding), then "
        "writes DIR/bench_<device>.json and prints a table (docs/performance.md).",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the JSON report")
    p.add_argument("--name", default=None, help="report file name (default bench_<device>.json)")
    p.add_argument("--smoke", action="store_true", help="tiny random model, tiny sizes (CI)")
    p.add_argument("--parts", type=_names, default=None, help="receiver,streams,sender (all)")
    p.add_argument("--sources", type=_counts, default=None, help="keyframes per frame (1,3)")
    p.add_argument("--batch", type=_whole(1, 256), default=None, help="batched size (8)")
    p.add_argument("--reps", type=_whole(1), default=None, help="timed calls per case (200)")
    p.add_argument("--frames", type=_whole(1), default=None, help="synthetic stream (300)")
    p.add_argument("--streams", type=_counts, default=None, help="concurrent streams (1,10,100)")
    p.add_argument("--max-batch", type=_whole(1, 256), default=None, help="frames/call (32)")
    p.add_argument("--stream-seconds", type=_seconds, default=None, help="per setting (2)")
    p.add_argument("--live-seconds", type=_seconds, default=None, help="sender live run (10)")
    p.add_argument("--threads", type=_whole(1, 256), default=None, help="torch CPU threads")
    p.add_argument("--clip", type=Path, default=None, help="sender input (the bundled sample)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (GPU)")
    p.add_argument("--no-profile", action="store_true", help="no kernel time per stage")
    _model_options(p)


def cmd_bench(args: argparse.Namespace) -> int:
    from eval.bench import BenchOptions, format_table, run_bench, smoke_model, write_report

    chosen = {
        "parts": args.parts,
        "sources": args.sources,
        "batch": args.batch,
        "reps": args.reps,
        "frames": args.frames,
        "streams": args.streams,
        "max_batch": args.max_batch,
        "stream_seconds": args.stream_seconds,
        "live_seconds": args.live_seconds,
        "threads": args.threads,
        "clip": args.clip,
        "compile": args.compile or None,
        "profile": False if args.no_profile else None,
    }
    overrides = {k: v for k, v in chosen.items() if v is not None}
    device = resolve_device(args.device)
    if args.smoke:
        model, weights = smoke_model(device)
        options = BenchOptions.smoke(**overrides)
    else:
        model = load(args)
        weights = str(model.weights_path)
        options = BenchOptions(**overrides)
    report = run_bench(model, options, weights)
    print(format_table(report))
    print(f"wrote {write_report(report, args.out, args.name)}")
    return 0


COMMANDS = {
    "encode": cmd_encode,
    "decode": cmd_decode,
    "info": cmd_info,
    "demo": cmd_demo,
    "eval": cmd_eval,
    "signal": cmd_signal,
    "call": cmd_call,
    "weights": cmd_weights,
    "entropy": cmd_entropy,
    "cache": cmd_cache,
    "fuzz": cmd_fuzz,
    "bench": cmd_bench,
}


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    from bitstream import BitstreamWarning

    if issubclass(category, BitstreamWarning):
        print(f"iwcodec: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived. Raised in the main thread, it unwinds like Ctrl-C, so every
    temporary ``.part`` file is removed and the last complete output stays."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into :class:`Terminated` while the command runs (only where
    they would kill the process outright: a signal ignored under ``nohup`` stays ignored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, frame: object) -> None:
        raise Terminated(signum)

    previous = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) == signal.SIG_DFL:
            previous[sig] = signal.signal(sig, raise_terminated)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    with terminate_as_interrupt():
        return _run(argv)


def _run(argv: list[str]) -> int:
    try:
        if argv[:1] == ["train"]:
            # codec.train owns its options (and their --help); pass them through untouched.
            return cmd_train(argv[1:])
        args = build_parser().parse_args(argv)
        if args.verbose:
            native_logs.set_verbose(True)
        with warnings.catch_warnings():
            from bitstream import BitstreamWarning

            warnings.simplefilter("always", BitstreamWarning)
            warnings.showwarning = _show_warning
            return COMMANDS[args.command](args)
    except IWCodecError as exc:
        print(f"iwcodec: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except SystemExit as exc:  # argparse (--help, --version, usage: status 2), training
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(f"iwcodec: error: {exc.code}", file=sys.stderr)
        return EXIT_ERROR
    except Terminated as exc:
        print(f"iwcodec: terminated ({signal.Signals(exc.signum).name})", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("iwcodec: interrupted", file=sys.stderr)
        return 130
