"""``iwcodec bench``: what a frame costs at the receiver and at the sender on one device, and how
many streams one GPU renders (issue 20). Everything runs the project's own code paths.

    iwcodec bench --out DIR                      # shipped weights; the GPU when there is one
    iwcodec bench --out DIR --smoke              # tiny random model, tiny sizes (CI, a CPU)
    iwcodec bench --out DIR --parts sender --device cpu --threads 2   # a 2-core sender

**receiver** (per keyframe count N in ``--sources``; a synthetic stream of ``--frames``
frames: the model's size, a smooth random keyframe per source, keypoints of
``bitstream.synthetic.synthetic_track``, one frame per keypoint unit as a call sends them):

- ``keypoint_decode``: ``bitstream.KeypointDecoder.decode`` per unit (the CPU's share);
- ``end_to_end``: ``SourceSet.render`` (keypoints in, RGB uint8 on the host out) per call, wall
  clock, batch 1 and ``--batch``: eager, from CUDA graphs (``receiver.graphs``, what the
  receive core runs on a GPU) and from graphs under bf16 autocast; the first graph call
  (capture) is reported apart; frames/s counts decode + render;
- ``stages``: the eager batch-1 render split into its stages (eval/render_stages.py: CUDA
  events, launch gaps included), and on a GPU ``kernel_stages``: the GPU kernel time each
  stage launches (torch.profiler), which is what a graph replay still pays;
- ``decoder``: the file decoder (``receiver.decoder.Decoder``) over the whole stream at batch
  1, eager and with graphs: frames/s end to end, keyframe decode included;
- ``compiled`` (``--compile``, GPU): ``torch.compile(model.render, mode="reduce-overhead")``,
  with the attention as one opaque custom op (kernels/ops.py).

**streams** (``--streams``, e.g. 1, 10, 100): that many receivers on this device, each with
its own keyframe, rendered together by ``receiver.batching.BatchRenderer`` (chunks of at most
``--max-batch``). Saturated: every stream's next frame is rendered as soon as the last tick's
are done: aggregate frames/s. Paced at ``--stream-fps`` (30): ticks every 1/30 s; a frame's
latency is from its tick to its pixels on the host; per-stream p50 and p99.

**sender** (the bundled sample clip, ``--sender-frames``): the stages of one frame as a call's
sender runs them (``sender.call.CallSender._step``): face tracking (MediaPipe,
``FaceTracker.update``), the crop (``cut_square``), the keypoint detector (``detect_batch``,
batch 1 and ``--batch``), coding (``SendCore.frame`` and the units' bytes); then live: frames
paced at 30 frames/s for ``--live-seconds``, the process's CPU time over wall time (cores used).

Times on a GPU are wall clock around calls that end on the host (each synchronises), or CUDA
events (stages); medians, with p90 and means where tails matter. JSON: DIR/bench_<device>.json
with the device, torch, triton and git commit; a table is printed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from bitstream import (
    ImageCodec,
    KeyframeUnit,
    KeypointDecoder,
    KeypointEncoder,
    KeypointFrame,
    encode_track,
    load_prior,
)
from bitstream.synthetic import example_params, synthetic_track
from codec.model import ImplicitWarpingModel
from eval.render_stages import kernel_times, stage_times
from iwcodec.errors import InputError
from iwcodec.keyframe import encode_keyframe
from kernels.environment import environment
from receiver.batching import BatchRenderer, FrameJob, chunks
from receiver.decoder import Decoder
from receiver.graphs import RenderGraphs
from receiver.sources import SourceSet

PARTS = ("receiver", "streams", "sender")


@dataclass(frozen=True)
class BenchOptions:
    """What ``iwcodec bench`` measures and how long (defaults: a GPU run of a few minutes)."""

    parts: tuple[str, ...] = PARTS
    sources: tuple[int, ...] = (1, 3)
    batch: int = 8
    warmup: int = 20
    reps: int = 200
    frames: int = 300
    profile: bool = True
    compile: bool = False
    streams: tuple[int, ...] = (1, 10, 100)
    stream_seconds: float = 2.0
    stream_fps: float = 30.0
    max_batch: int = 32
    stream_bf16: bool = True
    sender_frames: int = 90
    live_seconds: float = 10.0
    threads: int | None = None
    clip: Path | None = None

    @classmethod
    def smoke(cls, **overrides) -> BenchOptions:
        """Seconds on a CPU with the tiny model: every path runs, the timings mean nothing."""
        fields = dict(
            batch=3, warmup=1, reps=3, frames=12, streams=(1, 3), stream_seconds=0.2,
            sender_frames=6, live_seconds=0.3, profile=False,
        )  # fmt: skip
        fields.update(overrides)
        return cls(**fields)


# --------------------------------------------------------------------------------------------
# Environment and statistics
# --------------------------------------------------------------------------------------------


def summary(ms: Sequence[float]) -> dict[str, float]:
    """median, p90, p99, mean, min of a list of milliseconds."""
    a = np.asarray(ms, dtype=np.float64)
    return {
        "median": float(np.median(a)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
        "min": float(a.min()),
        "n": int(a.size),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall_ms(fn: Callable[[], object], reps: int, warmup: int, device: torch.device) -> list[float]:
    """Wall milliseconds of ``reps`` calls after ``warmup`` (each call ends synchronised)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


# --------------------------------------------------------------------------------------------
# A synthetic stream for the receiver
# --------------------------------------------------------------------------------------------


def smooth_picture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random (size, size, 3) uint8 picture: what it shows does not change the cost."""
    coarse = torch.from_numpy(rng.uniform(0, 1, (1, 3, 8, 8)).astype(np.float32))
    big = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic")
    return (big[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


@dataclass
class SyntheticStream:
    """A stream's units without a sender: params, N keyframes, keypoint units of one frame."""

    params: object
    keyframes: list[KeyframeUnit]
    units: list
    frames: list[KeypointFrame]

    @property
    def refs(self) -> tuple[int, ...]:
        return tuple(k.keyframe_id for k in self.keyframes)


def synthetic_stream(
    model: ImplicitWarpingModel, n_sources: int, frames: int, seed: int = 0
) -> SyntheticStream:
    table = load_prior()
    size, k = model.cfg.image_size, model.cfg.num_kp
    params = example_params(
        table, k=k, width=size, height=size, weights_id=model.weights_id or b"no-file!"
    )
    rng = np.random.default_rng(seed)
    keyframes = [
        KeyframeUnit(i, 0, ImageCodec.PNG, encode_keyframe(smooth_picture(rng, size), "png"))
        for i in range(n_sources)
    ]
    refs = tuple(range(n_sources))
    track = synthetic_track(rng, frames, k)
    kframes = [KeypointFrame(i, params.nominal_pts(i), kp, refs=refs) for i, kp in enumerate(track)]
    units = encode_track(kframes, KeypointEncoder(params, table), frames_per_unit=1)
    return SyntheticStream(params, keyframes, units, kframes)


def source_set(model: ImplicitWarpingModel, stream: SyntheticStream) -> SourceSet:
    sources = SourceSet(model, stream.params)
    for unit in stream.keyframes:
        sources.add(unit)
    return sources


# --------------------------------------------------------------------------------------------
# Receiver
# --------------------------------------------------------------------------------------------


def measure_receiver(model: ImplicitWarpingModel, opts: BenchOptions) -> dict[str, object]:
    device = next(model.parameters()).device
    out: dict[str, object] = {}
    for n in opts.sources:
        stream = synthetic_stream(model, n, max(opts.frames, opts.batch))
        out[f"{n} keyframe{'s' if n > 1 else ''}"] = _receiver_case(model, stream, opts, device)
    return out


def _receiver_case(model, stream: SyntheticStream, opts: BenchOptions, device) -> dict:
    decode = _decode_ms(stream)
    kp = np.stack([f.keypoints for f in stream.frames])  # (T, K, 3)
    sources = source_set(model, stream)
    refs = stream.refs
    case: dict[str, object] = {"keypoint_decode_ms": decode, "end_to_end": {}}
    variants: dict[str, RenderGraphs | None] = {"eager": None}
    if device.type == "cuda":
        variants["graph"] = RenderGraphs(model)
        variants["graph bf16"] = RenderGraphs(model, bf16=True)
    for batch in (1, opts.batch):
        calls = _frame_calls(kp, batch)
        for name, graphs in variants.items():
            sources.graphs = graphs
            first = None
            if graphs is not None:  # the capture, on the first call of this refs and bucket
                t0 = time.perf_counter()
                sources.render(refs, calls[0])
                first = (time.perf_counter() - t0) * 1e3
            it = iter(calls * (1 + (opts.reps + opts.warmup) // len(calls)))
            times = wall_ms(
                lambda it=it: sources.render(refs, next(it)), opts.reps, opts.warmup, device
            )
            row = {"batch": batch, **summary([t / batch for t in times]), "call_ms": summary(times)}
            if first is not None:
                row["first_call_ms"] = first
                row["graphs_broken"] = graphs.broken
            per_frame = row["median"] + decode["median"]
            row["frames_per_s"] = 1e3 / per_frame
            case["end_to_end"][f"{name}, batch {batch}"] = row
    sources.graphs = None
    it = iter(_frame_calls(kp, 1) * (opts.reps + opts.warmup + 4))
    render = lambda: sources.render(refs, next(it))  # noqa: E731
    case["stages"] = stage_times(model, render, opts.reps, opts.warmup)
    if device.type == "cuda" and opts.profile:
        try:
            case["kernel_stages"] = kernel_times(model, render, min(opts.reps, 50), opts.warmup)
        except Exception as exc:  # noqa: BLE001 - the profiler is a nicety; say why it failed
            case["kernel_stages"] = {"error": f"{type(exc).__name__}: {exc}"}
    case["decoder"] = _decoder_runs(model, stream, device)
    if opts.compile and device.type == "cuda":
        case["compiled"] = _compiled(model, sources, refs, kp, opts, device)
    return case


def _frame_calls(kp: np.ndarray, batch: int) -> list[np.ndarray]:
    calls = [kp[i : i + batch] for i in range(0, len(kp) - batch + 1, batch)]
    for c in calls:
        c.setflags(write=False)
    return calls


def _decode_ms(stream: SyntheticStream) -> dict[str, float]:
    """Milliseconds per frame of decoding the keypoint units (one frame each), twice over."""
    times = []
    for _ in range(2):
        decoder = KeypointDecoder(stream.params, load_prior())
        for unit in stream.units:
            t0 = time.perf_counter()
            result = decoder.decode(unit)
            times.append((time.perf_counter() - t0) * 1e3 / max(1, len(result.frames)))
    return summary(times)


def _decoder_runs(model, stream: SyntheticStream, device) -> dict[str, object]:
    """The file decoder at batch 1 over the stream: eager, and with graphs on a GPU."""
    runs: dict[str, object] = {}
    modes = ("eager", "graph") if device.type == "cuda" else ("eager",)
    for mode in modes:
        for _pass in ("warm", "timed"):  # the first pass warms cuDNN and Triton
            decoder = Decoder(model, stream.params, batch_size=1)
            if mode == "eager":
                decoder.sources.graphs = None
            t0 = time.perf_counter()
            for unit in stream.keyframes:
                decoder.push(unit)
            _sync(device)
            t1 = time.perf_counter()
            frames = 0
            for unit in stream.units:
                frames += len(decoder.push(unit))
            _sync(device)
            t2 = time.perf_counter()
        runs[mode] = {
            "frames": frames,
            "keyframes_s": t1 - t0,
            "frames_s": t2 - t1,
            "frames_per_s": frames / (t2 - t1),
            "captures": getattr(decoder.sources.graphs, "captures", 0),
        }
    return runs


def _compiled(model, sources: SourceSet, refs, kp: np.ndarray, opts, device) -> dict[str, object]:
    """``torch.compile(model.render, mode="reduce-overhead")`` at batch 1 (ms per frame)."""
    src = sources.features(refs)
    k = torch.from_numpy(np.array(kp[:1])).to(device)
    t0 = time.perf_counter()
    try:
        fn = torch.compile(model.render, mode="reduce-overhead")
        with torch.inference_mode():
            for _ in range(3):
                fn(src, k[..., :2], k[..., 2])
            _sync(device)
            compile_s = time.perf_counter() - t0
            eager = model.render(src, k[..., :2], k[..., 2])
            diff = (fn(src, k[..., :2], k[..., 2]) - eager).abs().max().item()
            times = wall_ms(lambda: fn(src, k[..., :2], k[..., 2]), opts.reps, 5, device)
    except Exception as exc:  # noqa: BLE001 - report why compiling failed, keep the rest
        return {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
    return {"compile_s": compile_s, "max_abs_diff_vs_eager": diff, **summary(times)}


# --------------------------------------------------------------------------------------------
# Many streams
# --------------------------------------------------------------------------------------------


def measure_streams(model: ImplicitWarpingModel, opts: BenchOptions) -> dict[str, object]:
    device = next(model.parameters()).device
    precisions = {"float32": False}
    if opts.stream_bf16 and device.type == "cuda":
        precisions["bf16"] = True
    out: dict[str, object] = {"max_batch": opts.max_batch}
    features = _stream_features(model, max(opts.streams))
    rng = np.random.default_rng(1)
    tracks = [synthetic_track(rng, 64, model.cfg.num_kp) for _ in range(max(opts.streams))]
    for name, bf16 in precisions.items():
        renderer = BatchRenderer(model, max_batch=opts.max_batch, bf16=bf16)
        for s in opts.streams:
            out[f"{name}, {s} streams"] = {
                "saturated": _stream_run(renderer, features[:s], tracks, opts, None, device),
                "paced": _stream_run(renderer, features[:s], tracks, opts, opts.stream_fps, device),
            }
    return out


def _stream_features(model: ImplicitWarpingModel, count: int) -> list:
    """One keyframe's source features per stream (each its own picture and keypoints)."""
    rng = np.random.default_rng(0)
    size = model.cfg.image_size
    out = []
    with torch.inference_mode():
        for _ in range(count):
            image = torch.from_numpy(smooth_picture(rng, size)).to(next(model.parameters()).device)
            image = image.permute(2, 0, 1)[None].float() / 255
            kp, strength = model.detect(image)
            out.append(model.encode_source(image, kp, strength))
    return out


def _stream_run(
    renderer: BatchRenderer, features: list, tracks: list, opts: BenchOptions, fps, device
) -> dict[str, object]:
    """Ticks of one frame per stream for ``opts.stream_seconds`` (after a warm-up tick):
    saturated (fps None: the next tick when this one is done) or paced at ``fps``."""
    s = len(features)

    def jobs(tick: int) -> list[FrameJob]:
        return [FrameJob(f, tracks[i][tick % len(tracks[i])]) for i, f in enumerate(features)]

    def tick_once(tick: int, due: float) -> list[float]:
        """Render one tick chunk by chunk; each frame's latency from ``due`` (ms)."""
        todo, lat = jobs(tick), [0.0] * s
        for part in chunks(s, opts.max_batch):
            renderer.render([todo[i] for i in part])  # ends with its frames on the host
            done = (time.perf_counter() - due) * 1e3
            for i in part:
                lat[i] = done
        return lat

    tick_once(0, time.perf_counter())  # warm-up: kernels chosen, stacks built
    _sync(device)
    latencies: list[list[float]] = [[] for _ in range(s)]
    start = time.perf_counter()
    tick = 1
    while time.perf_counter() - start < opts.stream_seconds:
        due = start + (tick - 1) / fps if fps else time.perf_counter()
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        for i, ms in enumerate(tick_once(tick, due)):
            latencies[i].append(ms)
        tick += 1
    elapsed = time.perf_counter() - start
    frames = s * (tick - 1)
    p50 = [float(np.percentile(lat, 50)) for lat in latencies]
    p99 = [float(np.percentile(lat, 99)) for lat in latencies]
    every = [ms for lat in latencies for ms in lat]
    return {
        "streams": s,
        "fps_target": fps,
        "ticks": tick - 1,
        "frames": frames,
        "seconds": elapsed,
        "aggregate_frames_per_s": frames / elapsed,
        "per_stream_frames_per_s": frames / elapsed / s,
        "latency_ms_p50_median_stream": statistics.median(p50),
        "latency_ms_p99_worst_stream": max(p99),
        "latency_ms_p99_all": float(np.percentile(every, 99)),
        "render_calls_per_tick": len(chunks(s, opts.max_batch)),
    }


# --------------------------------------------------------------------------------------------
# Sender
# --------------------------------------------------------------------------------------------


def measure_sender(model: ImplicitWarpingModel, opts: BenchOptions) -> dict[str, object]:
    """The stages of a call's sender per frame, then live at 30 frames/s (see the docstring)."""
    try:
        import mediapipe  # noqa: F401 - the face tracker imports it when it starts

        from sender.crop import CropConfig, FaceTracker, cut_square
    except Exception as exc:  # noqa: BLE001 - missing or broken (e.g. a bare GPU machine)
        return {"skipped": f"the sender cannot run here: {type(exc).__name__}: {exc}"}
    frames = _clip_frames(opts)
    step = _SenderStep(model, FaceTracker, CropConfig, cut_square, fps=30.0)
    times: dict[str, list[float]] = {k: [] for k in _SenderStep.STAGES}
    for i, rgb in enumerate(frames):
        for name, ms in step(i, rgb, i / 30.0).items():
            times[name].append(ms)
    out: dict[str, object] = {
        "frames": len(frames),
        "faces": step.faces,
        "stages_ms": {k: summary(v) for k, v in times.items() if v},
        "keyframes": step.keyframes,
    }
    if step.crops:
        from sender.encoder import detect_batch

        device = next(model.parameters()).device
        repeats = 1 + opts.batch // len(step.crops)
        b = np.stack((step.crops * repeats)[: opts.batch])  # (batch, S, S, 3)
        batched = wall_ms(lambda: detect_batch(model, b), 5, 2, device)
        out["detector_batched_ms_per_frame"] = statistics.median(batched) / len(b)
        out["detector_batch"] = len(b)
    out["live"] = _sender_live(model, frames, opts, FaceTracker, CropConfig, cut_square)
    step.close()
    return out


def _clip_frames(opts: BenchOptions) -> list[np.ndarray]:
    from importlib import resources

    from sender.video import iter_frames

    path = opts.clip or Path(str(resources.files("iwcodec") / "samples" / "sample.mp4"))
    frames = [f.rgb for f in iter_frames(path, max_frames=opts.sender_frames)]
    if not frames:
        raise InputError(f"{path}: no frames")
    return frames


class _SenderStep:
    """One captured frame through the sender, as ``sender.call.CallSender._step`` runs it,
    timed per stage (milliseconds)."""

    STAGES = ("face tracking", "crop", "keypoint detector", "coding")

    def __init__(self, model, tracker_cls, config_cls, cut, fps: float) -> None:
        from bitstream import KeyframePacer, pacing
        from sender.encoder import EncodeOptions, entropy_model, send_core, stream_params

        options = EncodeOptions()
        table = entropy_model(options)
        self.model = model
        self.size = model.cfg.image_size
        self.params = stream_params(model, Fraction(fps).limit_denominator(1000), options, table)
        self.core = send_core(model, self.params, table, options, 3, KeyframePacer(pacing.SENDER))
        self.tracker = tracker_cls(config_cls(size=self.size))
        self.cut = cut
        self.faces = 0
        self.keyframes = 0
        self.crops: list[np.ndarray] = []
        self._started = False

    def __call__(self, index: int, rgb: np.ndarray, t: float) -> dict[str, float]:
        from sender.core import Face
        from sender.encoder import detect_batch

        times: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            times[name] = (now - clock) * 1e3
            clock = now

        box = self.tracker.update(rgb, t)
        lap("face tracking")
        units = [] if self._started else self.core.start()
        self._started = True
        face = None
        if box is not None and self.core.takes_face(t):
            crop = self.cut(rgb, box, self.size)
            lap("crop")
            face = Face(crop, detect_batch(self.model, crop[None])[0])
            lap("keypoint detector")
            self.faces += 1
            if len(self.crops) < 32:
                self.crops.append(crop)
        units += self.core.frame(index, self.params.nominal_pts(index), face, t=t)
        wire = [u.to_bytes() for u in units]
        self.keyframes += sum(isinstance(u, KeyframeUnit) for u in units)
        lap("coding")
        del wire
        return times

    def close(self) -> None:
        self.tracker.close()


def _sender_live(model, frames, opts: BenchOptions, tracker_cls, config_cls, cut) -> dict:
    """Frames paced at 30 frames/s through a fresh sender: cores used, frames late."""
    step = _SenderStep(model, tracker_cls, config_cls, cut, fps=30.0)
    period = 1 / 30.0
    cpu0, start = time.process_time(), time.perf_counter()
    n = late = 0
    busy = []
    while time.perf_counter() - start < opts.live_seconds:
        due = start + n * period
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        t0 = time.perf_counter()
        step(n, frames[n % len(frames)], due - start)
        busy.append((time.perf_counter() - t0) * 1e3)
        late += busy[-1] > period * 1e3
        n += 1
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    step.close()
    return {
        "seconds": wall,
        "frames": n,
        "frames_per_s": n / wall,
        "cpu_cores_used": cpu / wall,
        "frames_over_budget": late,
        "step_ms": summary(busy),
        "torch_threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------------------------
# Running and reporting
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def torch_threads(n: int | None):
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_bench(model: ImplicitWarpingModel, opts: BenchOptions, weights: str) -> dict[str, object]:
    """Every part of ``opts.parts``; the report (see the module docstring)."""
    unknown = set(opts.parts) - set(PARTS)
    if unknown:
        raise InputError(f"unknown bench part(s) {sorted(unknown)}; parts: {', '.join(PARTS)}")
    device = next(model.parameters()).device
    report: dict[str, object] = {
        "environment": environment(device),
        "weights": weights,
        "config": {"image_size": model.cfg.image_size, "num_kp": model.cfg.num_kp},
        "options": {
            k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
            for k, v in dataclasses.asdict(opts).items()
        },
    }
    with torch_threads(opts.threads):
        report["environment"]["torch_threads"] = torch.get_num_threads()
        for part, fn in (
            ("receiver", measure_receiver),
            ("streams", measure_streams),
            ("sender", measure_sender),
        ):
            if part in opts.parts:
                t0 = time.perf_counter()
                report[part] = fn(model, opts)
                report[part + "_seconds"] = time.perf_counter() - t0
    return report


def tiny_model(directory: Path, device: torch.device) -> ImplicitWarpingModel:
    """The tiny random test model, saved and loaded back so it has a weights id."""
    from codec.config import tiny_config
    from codec.weights import load_model, save_weights

    torch.manual_seed(0)
    path = directory / "tiny.safetensors"
    save_weights(ImplicitWarpingModel(tiny_config()), path)
    return load_model(path, device=device)


def write_report(report: dict[str, object], out: Path, name: str | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    device = str(report["environment"]["device"])
    slug = "".join(c if c.isalnum() else "-" for c in device.lower()).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    path = out / (name or f"bench_{slug}.json")
    path.write_text(json.dumps(report, indent=1))
    return path


def format_table(report: dict[str, object]) -> str:
    env = report["environment"]
    lines = [
        f"device: {env['device']}  torch {env['torch']}  triton {env.get('triton')}  "
        f"commit {str(env.get('git_commit'))[:10]}  weights: {report['weights']}"
    ]
    for case, r in report.get("receiver", {}).items():
        lines.append(
            f"\nreceiver, {case}: keypoint decode {r['keypoint_decode_ms']['median']:.3f} ms/frame"
        )
        lines.append(f"  {'end to end (keypoints in, RGB on host)':40s} {'ms/frame':>9s} {'p90':>7s} {'frames/s':>9s} {'1st call':>9s}")  # fmt: skip
        for name, row in r["end_to_end"].items():
            first = row.get("first_call_ms")
            lines.append(
                f"  {name:40s} {row['median']:9.3f} {row['p90']:7.3f} {row['frames_per_s']:9.0f} "
                f"{'' if first is None else f'{first:8.1f}ms':>9s}"
            )
        kernel = r.get("kernel_stages", {})
        lines.append(f"  {'stage (eager, batch 1)':40s} {'ms':>9s} {'kernel ms':>10s}")
        for stage, ms in r["stages"].items():
            k = kernel.get(stage) if isinstance(kernel, dict) else None
            k_text = f"{k:10.3f}" if isinstance(k, float) else ""
            lines.append(f"  {stage:40s} {ms:9.3f} {k_text}")
        for mode, d in r["decoder"].items():
            lines.append(f"  Decoder batch 1, {mode:8s}: {d['frames_per_s']:8.0f} frames/s ({d['frames']} frames)")  # fmt: skip
        if "compiled" in r:
            c = r["compiled"]
            lines.append("  torch.compile: " + (c["error"] if "error" in c else f"{c['median']:.3f} ms/frame (compile {c['compile_s']:.0f} s)"))  # fmt: skip
    streams = report.get("streams", {})
    if streams:
        lines.append(f"\nstreams (BatchRenderer, chunks <= {streams['max_batch']}):")
        lines.append(f"  {'':26s} {'saturated frames/s':>18s} {'paced frames/s':>15s} {'p50 ms':>7s} {'p99 ms':>7s}")  # fmt: skip
        for name, r in streams.items():
            if name == "max_batch":
                continue
            sat, paced = r["saturated"], r["paced"]
            lines.append(
                f"  {name:26s} {sat['aggregate_frames_per_s']:18.0f} "
                f"{paced['aggregate_frames_per_s']:15.0f} "
                f"{paced['latency_ms_p50_median_stream']:7.1f} {paced['latency_ms_p99_worst_stream']:7.1f}"
            )
    sender = report.get("sender")
    if sender:
        if "skipped" in sender:
            lines.append(f"\nsender: {sender['skipped']}")
        else:
            lines.append(f"\nsender ({sender['frames']} frames, {sender['faces']} with a face):")
            for stage, s in sender["stages_ms"].items():
                lines.append(f"  {stage:40s} {s['median']:9.3f} ms (mean {s['mean']:.3f})")
            if "detector_batched_ms_per_frame" in sender:
                lines.append(f"  {'keypoint detector, batch ' + str(sender['detector_batch']):40s} {sender['detector_batched_ms_per_frame']:9.3f} ms/frame")  # fmt: skip
            live = sender["live"]
            lines.append(
                f"  live at 30 frames/s: {live['frames_per_s']:.1f} frames/s, "
                f"{live['cpu_cores_used']:.2f} cores, {live['frames_over_budget']} frames over 33 ms"
            )
    return "\n".join(lines)


def smoke_model(device: torch.device) -> tuple[ImplicitWarpingModel, str]:
    directory = Path(tempfile.mkdtemp(prefix="iwcodec-bench-"))
    return tiny_model(directory, device), "tiny random (smoke)"


__all__ = [
    "PARTS",
    "BenchOptions",
    "format_table",
    "measure_receiver",
    "measure_sender",
    "measure_streams",
    "run_bench",
    "smoke_model",
    "summary",
    "synthetic_stream",
    "write_report",
]
